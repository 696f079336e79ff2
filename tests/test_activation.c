/* tests/test_activation.c - relu, leaky_relu, elu, gelu (erf and tanh), sigmoid, tanh,
 * softplus, softmax and log_softmax: forward against plain-C double references over odd
 * shapes and views (read through the harness's own view model), NaN/Inf/signed zeros,
 * gradients against finite differences (tests/gradcheck.h) through views, PyTorch golden
 * outputs and gradients (tests/golden/gen_activation.py), both softmax kernel layouts,
 * guard regions around every storage, autograd bookkeeping, and the error paths.
 *
 * Tolerances. u = 2^-24 (unit roundoff), eps = 2^-23 = FLT_EPSILON. An ulp of a float r
 * is at most eps*|r|. Bounds are those of the OpenCL 1.2 full profile (section 7.4) for
 * single precision: exp, expm1, log 3 ulp, log1p 2 ulp, tanh 5 ulp, erf 16 ulp, division
 * 2.5 ulp, + - * correctly rounded. Each comparison is |got - ref| <= tol with
 *     tol = FLT_MIN + ax*|x| + rtol*|ref|
 * (FLT_MIN: the full profile lets a device flush results below FLT_MIN to zero). NaN and
 * Inf must match exactly. Per op, forward (x the input):
 *   relu, leaky_relu: exact (a selection, or one correctly rounded product x*a).
 *   elu: x > 0 exact; else expm1 (3 ulp) times alpha (0.5 ulp): rtol 4 eps.
 *   gelu (erf): the argument x*(1/sqrt2) is off by <= 1.5 eps relative, which moves erf by
 *     <= 1.5 eps * |u| * 2/sqrt(pi) * exp(-u^2) <= 0.8 eps; kiln's own erf (act_erf in
 *     cl_kernels/activation.cl) is within 1 ulp with an exact exp, 1.5 ulp with the 3 ulp
 *     one the spec allows, so <= 1.5 eps (|erf| <= 1); 1 + erf one rounding: 1 + erf off by
 *     <= 2.8 eps absolutely, which 0.5*x scales: ax = 1.4 eps; two products: rtol 2 eps.
 *     (1 + erf cancels for negative x, hence the bound in |x| rather than |ref|.)
 *   gelu (tanh): the inner sqrt(2/pi)*(x + 0.044715 x^3) carries <= 6 roundings (relative
 *     to its own size v), which move tanh by <= 6 eps * v*sech^2(v) <= 3.6 eps; tanh 5 ulp
 *     <= 5 eps; 1 + t one rounding: 1 + t off by <= 10 eps: ax = 5 eps, rtol 2 eps.
 *   sigmoid: exp 3 ulp, 1 + e one rounding, division 2.5 ulp: rtol 7 eps.
 *   tanh: 5 ulp: rtol 5 eps.
 *   softplus: x*beta is rounded (eps/2 relative), moving exp by eps/2*|x beta| relative;
 *     exp 3 ulp, log1p 2 ulp (log1p(z) has relative condition z/((1+z)log1p(z)) <= 1),
 *     division 2.5 ulp: rtol (8 + |x beta|/2) eps, i.e. ax = |beta|/2 eps, rtol 8 eps.
 *   softmax: y = exp(x - m) / S. x - m is rounded (|x-m| u absolute, so |x-m| u relative on
 *     exp); exp 3 ulp; S, a Kahan sum (2 eps) of such terms, then a tree over a work-group's
 *     partials (<= log2(L) <= 10 additions of positive numbers, 10 u): S off by
 *     (3 + R/2 + 2 + 5) eps relative, R = max - min over the row; division 2.5 ulp:
 *     rtol (13 + R) eps.
 *   log_softmax: (x - m) - log(S): x - m off by R u; log 3 ulp of log S <= log(len) (the
 *     largest term is 1, so 1 <= S <= len); S's relative error (10 + R/2) eps becomes an
 *     absolute one; the last subtraction u*|y| <= u*(R + log(len)):
 *     absolute (11 + 1.5 R + 4 log(len)) eps.
 * Gradients (finite differences of the double references, tests/gradcheck.h: error ~1e-10,
 * so only kiln's float32 arithmetic remains): atol 2e-6 relative to the gradient's
 * largest magnitude and rtol 2e-5 for the elementwise ops (a dozen roundings and erf's 16
 * ulp: <= 30 eps ~ 4e-6 relative at most, 2e-5 leaves room for the multiplications by the
 * seed); softmax/log_softmax atol 1e-5 of the largest magnitude, rtol 1e-5 (y * (g - s)
 * cancels when g ~ s: the absolute error is ~4 eps * max|g|, ~1e-6 of a gradient whose
 * largest entry is ~0.1 or more).
 * Golden (PyTorch float32 on the CPU against kiln float32): both sides carry the errors
 * above, torch's smaller (glibc/SLEEF <= 1-4 ulp); see test_golden.
 */
#include <float.h>

#include "golden.h"
#include "gradcheck.h"
#include "kiln_test_hooks.h"

/* kiln__hooks_of(ctx)->softmax_layout: 1 forces the one-work-item-per-row softmax kernels,
 * 2 the one-work-group-per-row ones with a block of the row per work-item (CPU), 3 the same
 * with every L-th element per work-item (GPU), 0 the device's own choice. */

#define EPS ((double)FLT_EPSILON)

/* ---- elementwise ops and their references ------------------------------------------- */

enum { K_RELU, K_LEAKY, K_ELU, K_GELU, K_GELU_TANH, K_SIGMOID, K_TANH, K_SOFTPLUS };

typedef struct act_desc {
    const char *name;
    int kind;
    float a, b;      /* parameters: slope, alpha, beta/threshold */
    double ax, rtol; /* tolerance: FLT_MIN + ax*|x| + rtol*|ref| */
    bool exact;      /* the reference is rounded to float and must match bit for bit */
} act_desc;

static kiln_tensor *act_call(kiln_ctx *ctx, const act_desc *op, kiln_tensor *x) {
    switch (op->kind) {
    case K_RELU: return kiln_relu(ctx, x);
    case K_LEAKY: return kiln_leaky_relu(ctx, x, op->a);
    case K_ELU: return kiln_elu(ctx, x, op->a);
    case K_GELU: return kiln_gelu(ctx, x, false);
    case K_GELU_TANH: return kiln_gelu(ctx, x, true);
    case K_SIGMOID: return kiln_sigmoid(ctx, x);
    case K_TANH: return kiln_tanh(ctx, x);
    default: return kiln_softplus(ctx, x, op->a, op->b);
    }
}

/* torch's definitions, branch for branch (NaN takes the branch its comparison gives). */
static double act_ref(const act_desc *op, double x) {
    double a = op->a;
    switch (op->kind) {
    case K_RELU: return x < 0 ? 0.0 : x;
    case K_LEAKY: return x > 0 ? x : x * a;
    case K_ELU: return x <= 0 ? a * expm1(x) : x;
    case K_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
    case K_GELU_TANH: return 0.5 * x * (1 + tanh(sqrt(2 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
    case K_SIGMOID: return 1 / (1 + exp(-x));
    case K_TANH: return tanh(x);
    default: {
        /* the branch is decided on the float product, as the kernel does */
        float xb = (float)x * op->a;
        return xb > op->b ? x : log1p(exp(x * a)) / a;
    }
    }
}

#define EX 0.0f /* unused parameter */
static const act_desc ops[] = {
    {"relu", K_RELU, EX, EX, 0, 0, true},
    {"leaky_relu 0.01", K_LEAKY, 0.01f, EX, 0, 0, true},
    {"leaky_relu -0.5", K_LEAKY, -0.5f, EX, 0, 0, true},
    {"elu 1", K_ELU, 1.0f, EX, 0, 4 * EPS, false},
    {"elu 0.5", K_ELU, 0.5f, EX, 0, 4 * EPS, false},
    {"gelu", K_GELU, EX, EX, 1.4 * EPS, 2 * EPS, false},
    {"gelu tanh", K_GELU_TANH, EX, EX, 5 * EPS, 2 * EPS, false},
    {"sigmoid", K_SIGMOID, EX, EX, 0, 7 * EPS, false},
    {"tanh", K_TANH, EX, EX, 0, 5 * EPS, false},
    {"softplus 1 20", K_SOFTPLUS, 1.0f, 20.0f, 0.5 * EPS, 8 * EPS, false},
    {"softplus 2 1", K_SOFTPLUS, 2.0f, 1.0f, 1.0 * EPS, 8 * EPS, false},
    {"softplus -1.5 3", K_SOFTPLUS, -1.5f, 3.0f, 0.75 * EPS, 8 * EPS, false},
};
#define NOPS ((int)(sizeof ops / sizeof ops[0]))

/* Compares with tol = FLT_MIN + ax*|x| + rtol*|ref| per element (one CHECK). */
static void cmp_x(const char *what, const float *got, const double *ref, const double *x, int64_t n, double ax,
                  double rtol) {
    int64_t bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], r = ref[i], e;
        if (g == r)
            e = 0;
        else if (isnan(r) || isnan(g))
            e = (isnan(r) && isnan(g)) ? 0 : INFINITY;
        else if (isinf(r) || isinf(g))
            e = INFINITY;
        else
            e = fabs(g - r) / (FLT_MIN + ax * (isfinite(x[i]) ? fabs(x[i]) : 0) + rtol * fabs(r));
        if (e > worst) worst = e;
        if (e > 1 && bad++ == 0)
            fprintf(stderr, "  %s: element %lld (x = %.9g): got %.9g, reference %.9g (normalised error %.3g)\n", what,
                    (long long)i, x[i], g, r, e);
    }
    if (getenv("ACT_VERBOSE")) fprintf(stderr, "worst %.3f %s\n", worst, what);
    CHECK(bad == 0, "%s: %lld of %lld elements outside the bound (worst normalised error %.3g)", what, (long long)bad,
          (long long)n, worst);
}

/* ---- operands: a host base buffer, a kiln view of it, the harness's model ----------- */

typedef h_tf tf; /* the harness's view steps */

typedef struct vspec {
    const char *name;
    int ndim; /* of the contiguous base */
    int64_t shape[4];
    tf tf[2];
} vspec;

typedef struct operand {
    float *base;
    int64_t nbase;
    h_view hv;
    kiln_tensor *leaf; /* the contiguous base */
    kiln_tensor *t;    /* the view */
    int64_t n;         /* elements of the view */
    double *xv;        /* the view's values in row-major order */
} operand;

static void free_operand(operand *o) {
    free(o->base);
    free(o->xv);
    memset(o, 0, sizeof *o);
}

/* Builds the view of s over fresh data (uniform in [lo, hi), or `fixed` values when not
 * NULL, cycled). grad: the base requires grad. */
static bool make_operand(kiln_ctx *ctx, const vspec *s, float lo, float hi, bool grad, operand *o) {
    memset(o, 0, sizeof *o);
    o->nbase = h_numel(s->ndim, s->shape);
    o->base = malloc(sizeof(float) * (size_t)(o->nbase > 0 ? o->nbase : 1));
    h_fill(o->base, o->nbase, lo, hi);
    o->leaf = kiln_from_host(ctx, o->base, KILN_F32, s->ndim, s->shape);
    if (grad) kiln_tensor_set_requires_grad(o->leaf, true);
    o->t = o->leaf;
    o->hv = h_contig(s->ndim, s->shape);
    o->t = h_view_build(ctx, o->t, &o->hv, 2, s->tf);
    CHECK(o->t != NULL, "making operand %s: %s", s->name, kiln_error_message(ctx));
    if (!o->t) return false;
    o->n = h_numel(o->hv.ndim, o->hv.shape);
    o->xv = malloc(sizeof(double) * (size_t)(o->n > 0 ? o->n : 1));
    for (int64_t i = 0; i < o->n; i++) o->xv[i] = h_at(o->base, &o->hv, i);
    return true;
}

static bool same_shape(kiln_tensor *t, const h_view *v) {
    return t && kiln_tensor_ndim(t) == v->ndim &&
           (v->ndim == 0 || memcmp(kiln_tensor_shape(t), v->shape, sizeof(int64_t) * (size_t)v->ndim) == 0);
}

#define V(nm, n, ...)                                                                                                  \
    {                                                                                                                  \
        nm, n, {__VA_ARGS__}, {                                                                                        \
            { 0 }                                                                                                      \
        }                                                                                                              \
    }
#define VT(nm, n, a, b, ...)                                                                                           \
    {                                                                                                                  \
        nm, n, {__VA_ARGS__}, {                                                                                        \
            {                                                                                                          \
                TF_T, { a, b }                                                                                         \
            }                                                                                                          \
        }                                                                                                              \
    }
#define VS(nm, n, d, s, e, st, ...)                                                                                    \
    {                                                                                                                  \
        nm, n, {__VA_ARGS__}, {                                                                                        \
            {                                                                                                          \
                TF_S, { d, s, e, st }                                                                                  \
            }                                                                                                          \
        }                                                                                                              \
    }

static const vspec shapes[] = {
    V("0-d", 0, 0),
    V("one element", 1, 1),
    V("1-D prime", 1, 13),
    V("5x7x11", 3, 5, 7, 11),
    V("empty", 2, 0, 3),
    V("several work-groups", 1, 4099),
    VT("transposed", 2, 0, 1, 11, 7),
    VT("3-D transposed", 3, 0, 2, 11, 7, 5),
    VS("sliced with step", 3, 1, 0, 14, 2, 5, 14, 11),
    VS("offset slice", 3, 0, 1, 6, 1, 6, 7, 11),
    {"expanded (stride 0)", 2, {1, 11}, {{TF_E, {3, 5, 7, 11}}}},
    {"transposed slice", 3, {11, 7, 10}, {{TF_T, {0, 2}}, {TF_S, {0, 1, 10, 2}}}},
};
#define NSHAPES ((int)(sizeof shapes / sizeof shapes[0]))

/* Every elementwise op over the shape table, with sentinels around every storage. */
static void test_elementwise_shapes(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    for (int k = 0; k < NOPS; k++) {
        const act_desc *op = &ops[k];
        for (int c = 0; c < NSHAPES; c++) {
            char what[200];
            snprintf(what, sizeof what, "kiln_%s, %s", op->name, shapes[c].name);
            kiln_scope_begin(ctx);
            operand o;
            if (make_operand(ctx, &shapes[c], -4, 4, false, &o)) {
                kiln_tensor *y = act_call(ctx, op, o.t);
                CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
                if (y) {
                    CHECK(same_shape(y, &o.hv) && kiln_tensor_is_contiguous(y), "%s: output shape/layout", what);
                    CHECK(!kiln_tensor_requires_grad(y), "%s: output requires grad with no grad input", what);
                    float *got = h_read(y);
                    double *ref = malloc(sizeof(double) * (size_t)(o.n > 0 ? o.n : 1));
                    for (int64_t i = 0; i < o.n; i++) {
                        ref[i] = act_ref(op, o.xv[i]);
                        if (op->exact) ref[i] = (float)ref[i];
                    }
                    cmp_x(what, got, ref, o.xv, o.n, op->ax, op->rtol);
                    free(got);
                    free(ref);
                }
            }
            free_operand(&o);
            char msg[256];
            int bad = kiln__check_guards(ctx, msg, sizeof msg);
            CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
            kiln_scope_end(ctx);
            kiln_error_clear(ctx);
        }
    }
    kiln__set_guard(ctx, 0);
}

static const float specials[] = {NAN,     INFINITY, -INFINITY, 0.0f,  -0.0f,  1.0f,    -1.0f,   100.0f,
                                 -100.0f, 20.5f,    19.5f,     10.0f, -10.0f, 1e-30f,  -1e-30f, 88.0f,
                                 -88.0f,  3.0f,     -3.0f,     0.5f,  1e-40f, -1e-40f, 1e30f,   -1e30f};
#define NSPEC ((int64_t)(sizeof specials / sizeof specials[0]))

/* NaN, Inf, signed zeros, denormals and huge values through every op, plus values spelled
 * out so that a reference bug cannot hide a kernel bug. */
static void test_elementwise_specials(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_from_host(ctx, specials, KILN_F32, 1, (int64_t[]){NSPEC});
    double xd[NSPEC], ref[NSPEC];
    for (int64_t i = 0; i < NSPEC; i++) xd[i] = specials[i];
    for (int k = 0; k < NOPS; k++) {
        const act_desc *op = &ops[k];
        char what[160];
        snprintf(what, sizeof what, "kiln_%s on specials", op->name);
        kiln_tensor *y = act_call(ctx, op, x);
        CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
        if (!y) continue;
        for (int64_t i = 0; i < NSPEC; i++) {
            ref[i] = act_ref(op, xd[i]);
            if (op->exact || (isinf((float)ref[i]) && !isinf(ref[i]))) ref[i] = (float)ref[i];
        }
        float *got = h_read(y);
        cmp_x(what, got, ref, xd, NSPEC, op->ax, op->rtol);
        free(got);
    }
    float h[NSPEC];
    /* relu: NaN stays NaN, -0 stays a zero, Inf/-Inf to Inf/0 */
    kiln_tensor *r = kiln_relu(ctx, x);
    if (r && kiln_to_host(r, h, sizeof h) == KILN_OK)
        CHECK(isnan(h[0]) && isinf(h[1]) && h[2] == 0.0f && h[3] == 0.0f && h[4] == 0.0f && h[6] == 0.0f &&
                  h[7] == 100.0f,
              "relu(NaN)=%g relu(inf)=%g relu(-inf)=%g relu(-1)=%g", h[0], h[1], h[2], h[6]);
    kiln_tensor *s = kiln_sigmoid(ctx, x);
    if (s && kiln_to_host(s, h, sizeof h) == KILN_OK)
        CHECK(isnan(h[0]) && h[1] == 1.0f && h[2] == 0.0f && h[3] == 0.5f, "sigmoid(NaN)=%g (inf)=%g (-inf)=%g (0)=%g",
              h[0], h[1], h[2], h[3]);
    kiln_tensor *sp = kiln_softplus(ctx, x, 1.0f, 20.0f);
    if (sp && kiln_to_host(sp, h, sizeof h) == KILN_OK)
        CHECK(isnan(h[0]) && isinf(h[1]) && h[2] == 0.0f && h[9] == 20.5f && h[7] == 100.0f,
              "softplus(NaN)=%g (inf)=%g (-inf)=%g (20.5, linear)=%g", h[0], h[1], h[2], h[9]);
    /* tanh saturates at exactly +-1 (torch), so gelu_tanh(-Inf) is NaN as -Inf * 0 */
    kiln_tensor *th = kiln_tanh(ctx, x);
    if (th && kiln_to_host(th, h, sizeof h) == KILN_OK)
        CHECK(isnan(h[0]) && h[1] == 1.0f && h[2] == -1.0f && h[7] == 1.0f && h[12] == -1.0f && h[3] == 0.0f,
              "tanh(NaN)=%g (inf)=%.9g (-inf)=%.9g (100)=%.9g (-10)=%.9g", h[0], h[1], h[2], h[7], h[12]);
    kiln_tensor *gt = kiln_gelu(ctx, x, true);
    if (gt && kiln_to_host(gt, h, sizeof h) == KILN_OK)
        CHECK(isnan(h[0]) && isinf(h[1]) && isnan(h[2]) && h[8] == 0.0f && h[7] == 100.0f,
              "gelu_tanh(NaN)=%g (inf)=%g (-inf)=%g (-100)=%g (100)=%g", h[0], h[1], h[2], h[8], h[7]);
    kiln_tensor *ge = kiln_gelu(ctx, x, false);
    if (ge && kiln_to_host(ge, h, sizeof h) == KILN_OK)
        CHECK(isnan(h[0]) && isinf(h[1]) && isnan(h[2]) && h[8] == 0.0f && h[7] == 100.0f,
              "gelu(NaN)=%g (inf)=%g (-inf)=%g (-100)=%g (100)=%g", h[0], h[1], h[2], h[8], h[7]);
    kiln_tensor *el = kiln_elu(ctx, x, 0.5f);
    if (el && kiln_to_host(el, h, sizeof h) == KILN_OK)
        CHECK(isnan(h[0]) && isinf(h[1]) && h[2] == -0.5f && h[3] == 0.0f && h[8] == -0.5f,
              "elu(NaN)=%g (inf)=%g (-inf)=%g (-100)=%g", h[0], h[1], h[2], h[8]);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* Every op on a dense sweep of [-12, 12] (crosses the branch points of kiln's erf at
 * |x| = sqrt2 and 4 sqrt2, tanh's saturation, softplus's thresholds). */
static void test_elementwise_sweep(kiln_ctx *ctx) {
    enum { N = 24001 };
    float *xf = malloc(sizeof(float) * N), *got;
    double *xd = malloc(sizeof(double) * N), *ref = malloc(sizeof(double) * N);
    for (int i = 0; i < N; i++) xd[i] = xf[i] = -12.0f + 24.0f * (float)i / (N - 1);
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_from_host(ctx, xf, KILN_F32, 1, (int64_t[]){N});
    for (int k = 0; k < NOPS; k++) {
        const act_desc *op = &ops[k];
        char what[160];
        snprintf(what, sizeof what, "kiln_%s on a sweep of [-12, 12]", op->name);
        kiln_tensor *y = act_call(ctx, op, x);
        CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
        if (!y) continue;
        for (int i = 0; i < N; i++) {
            ref[i] = act_ref(op, xd[i]);
            if (op->exact) ref[i] = (float)ref[i];
        }
        got = h_read(y);
        cmp_x(what, got, ref, xd, N, op->ax, op->rtol);
        free(got);
    }
    kiln_scope_end(ctx);
    free(xf);
    free(xd);
    free(ref);
    CHECK_OK(ctx);
}

/* ---- gradients of the elementwise ops ----------------------------------------------- */

typedef struct ew_user {
    const act_desc *op;
    const h_view *v; /* the view over the base the op reads */
    int64_t n;
} ew_user;

/* f(base) = act(view(base)) in row-major order of the view. */
static void ew_gref(void *user, double *const *in, double *out) {
    ew_user *u = user;
    for (int64_t i = 0; i < u->n; i++) {
        int64_t rem = i, off = u->v->offset;
        for (int d = u->v->ndim - 1; d >= 0; d--) {
            off += (rem % u->v->shape[d]) * u->v->strides[d];
            rem /= u->v->shape[d];
        }
        out[i] = act_ref(u->op, in[0][off]);
    }
}

static const vspec grad_shapes[] = {
    V("5x7", 2, 5, 7),
    V("1-D prime", 1, 13),
    V("0-d", 0, 0),
    V("empty", 2, 0, 3),
    VT("transposed", 2, 0, 1, 11, 7),
    VS("sliced with step", 3, 1, 0, 8, 3, 3, 8, 5),
    {"expanded (stride 0)", 2, {1, 6}, {{TF_E, {3, 4, 5, 6}}}},
};
#define NGRAD_SHAPES ((int)(sizeof grad_shapes / sizeof grad_shapes[0]))

static void test_elementwise_grads(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    for (int k = 0; k < NOPS; k++) {
        for (int c = 0; c < NGRAD_SHAPES; c++) {
            char what[200];
            snprintf(what, sizeof what, "kiln_%s, %s", ops[k].name, grad_shapes[c].name);
            kiln_scope_begin(ctx);
            operand o;
            /* softplus 2 1 has its (discontinuous) switch at x = 0.5: keep away from it */
            float lo = -3, hi = 3;
            if (make_operand(ctx, &grad_shapes[c], lo, hi, true, &o)) {
                kiln_tensor *y = act_call(ctx, &ops[k], o.t);
                CHECK(y == NULL || kiln_tensor_requires_grad(y), "%s: output does not require grad", what);
                double *hd = malloc(sizeof(double) * (size_t)(o.nbase > 0 ? o.nbase : 1));
                for (int64_t i = 0; i < o.nbase; i++) hd[i] = o.base[i];
                bool near_kink = false;
                for (int64_t i = 0; i < o.nbase; i++)
                    near_kink |= ops[k].kind == K_SOFTPLUS && fabs(hd[i] * ops[k].a - ops[k].b) < 1e-3;
                CHECK(!near_kink, "%s: test data too close to the threshold", what);
                ew_user u = {&ops[k], &o.hv, o.n};
                double *hin[1] = {hd};
                bool wanted[1] = {true};
                gc_check(ctx, what, ew_gref, &u, 1, &o.leaf, hin, wanted, y, 2e-6, 2e-5);
                free(hd);
            }
            free_operand(&o);
            char msg[256];
            int bad = kiln__check_guards(ctx, msg, sizeof msg);
            CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
            kiln_scope_end(ctx);
            CHECK_OK(ctx);
            kiln_error_clear(ctx);
        }
    }
    kiln__set_guard(ctx, 0);
}

/* ---- softmax / log_softmax ---------------------------------------------------------- */

/* Reference over view v (values in row-major order xv) along dim d: y in row-major order.
 * Returns R, the largest (finite) spread max - min of a row, and len. */
static double sm_ref(const double *xv, int ndim, const int64_t *shape, int d, bool lg, double *y) {
    int64_t len = ndim ? shape[d] : 1, inner = 1, outer = 1;
    for (int k = 0; k < ndim; k++) {
        if (k < d) outer *= shape[k];
        if (k > d) inner *= shape[k];
    }
    double spread = 0;
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t i = 0; i < inner; i++) {
            const double *xr = xv + o * len * inner + i;
            double *yr = y + o * len * inner + i;
            double m = -INFINITY, lo = INFINITY, hi = -INFINITY;
            bool nan = false;
            for (int64_t j = 0; j < len; j++) {
                double v = xr[j * inner];
                nan |= isnan(v);
                if (v > m) m = v;
                if (isfinite(v)) lo = fmin(lo, v), hi = fmax(hi, v);
            }
            if (nan) m = NAN;
            if (hi >= lo) spread = fmax(spread, hi - lo);
            double s = 0;
            for (int64_t j = 0; j < len; j++) s += exp(xr[j * inner] - m);
            for (int64_t j = 0; j < len; j++)
                yr[j * inner] = lg ? (xr[j * inner] - m) - log(s) : exp(xr[j * inner] - m) / s;
        }
    }
    return spread;
}

static void sm_compare(const char *what, const float *got, const double *ref, int64_t n, bool lg, double spread,
                       int64_t len) {
    double w;
    if (lg)
        w = h_compare(what, got, ref, n, (11 + 1.5 * spread + 4 * log((double)(len > 1 ? len : 1))) * EPS, 0);
    else
        w = h_compare(what, got, ref, n, FLT_MIN, (13 + spread) * EPS);
    if (getenv("ACT_VERBOSE")) fprintf(stderr, "worst %.3f %s\n", w, what); /* margins, for tuning */
}

typedef struct smcase {
    vspec v;
    int dims[4];
    int ndims;
} smcase;

static const smcase sm_cases[] = {
    {V("1-D prime", 1, 13), {0, -1}, 2},
    {V("0-d", 0, 0), {0, -1}, 2},
    {V("one element", 1, 1), {0}, 1},
    {V("5x7x11", 3, 5, 7, 11), {0, 1, 2, -3}, 4},
    {V("[4, 1]", 2, 4, 1), {1, 0}, 2},
    {V("empty [0, 5]", 2, 0, 5), {0, 1}, 2},
    {V("4-D", 4, 2, 3, 4, 5), {1, 2, 3}, 3},
    {V("long rows [3, 4099]", 2, 3, 4099), {1}, 1},
    {V("long strided rows [1031, 3]", 2, 1031, 3), {0}, 1},
    {V("many rows [700, 33]", 2, 700, 33), {1, 0}, 2},
    {VT("transposed", 2, 0, 1, 11, 7), {0, 1}, 2},
    {VT("3-D transposed", 3, 0, 2, 11, 7, 5), {0, 1, 2}, 3},
    {VS("sliced with step", 3, 1, 0, 14, 2, 5, 14, 11), {0, 1, 2}, 3},
    {{"expanded (stride 0)", 2, {1, 11}, {{TF_E, {3, 5, 7, 11}}}}, {0, 2}, 2},
    {{"transposed slice", 3, {11, 7, 10}, {{TF_T, {0, 2}}, {TF_S, {0, 1, 10, 2}}}}, {0, 1, 2}, 3},
};
#define NSM ((int)(sizeof sm_cases / sizeof sm_cases[0]))

#define NLAYOUTS 4
static const char *const layout_names[NLAYOUTS] = {"auto", "rows", "groups blocked", "groups interleaved"};

static void test_softmax_shapes(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    for (int layout = 0; layout < NLAYOUTS; layout++) {
        kiln__hooks_of(ctx)->softmax_layout = layout;
        for (int c = 0; c < NSM; c++) {
            for (int di = 0; di < sm_cases[c].ndims; di++) {
                for (int lg = 0; lg < 2; lg++) {
                    int dim = sm_cases[c].dims[di];
                    char what[200];
                    snprintf(what, sizeof what, "kiln_%s, %s, dim %d, layout %s", lg ? "log_softmax" : "softmax",
                             sm_cases[c].v.name, dim, layout_names[layout]);
                    kiln_scope_begin(ctx);
                    operand o;
                    if (make_operand(ctx, &sm_cases[c].v, -4, 4, false, &o)) {
                        kiln_tensor *y = lg ? kiln_log_softmax(ctx, o.t, dim) : kiln_softmax(ctx, o.t, dim);
                        CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
                        if (y) {
                            CHECK(same_shape(y, &o.hv) && kiln_tensor_is_contiguous(y), "%s: output shape", what);
                            int nd = o.hv.ndim, d = dim < 0 ? dim + (nd ? nd : 1) : dim;
                            double *ref = malloc(sizeof(double) * (size_t)(o.n > 0 ? o.n : 1));
                            double spread = sm_ref(o.xv, nd, o.hv.shape, d, lg, ref);
                            float *got = h_read(y);
                            sm_compare(what, got, ref, o.n, lg, spread, nd ? o.hv.shape[d] : 1);
                            /* softmax rows sum to 1 (a check independent of the reference) */
                            if (!lg && o.n > 0) {
                                int64_t len = nd ? o.hv.shape[d] : 1, inner = 1;
                                for (int k = d + 1; k < nd; k++) inner *= o.hv.shape[k];
                                double worst = 0;
                                for (int64_t r = 0; r < o.n / len; r++) {
                                    int64_t b = (r / inner) * len * inner + r % inner;
                                    double s = 0;
                                    for (int64_t j = 0; j < len; j++) s += got[b + j * inner];
                                    worst = fmax(worst, fabs(s - 1));
                                }
                                CHECK(worst <= (16 + spread) * EPS * 2, "%s: a row sums to 1 %+g", what, worst);
                            }
                            free(got);
                            free(ref);
                        }
                    }
                    free_operand(&o);
                    char msg[256];
                    int bad = kiln__check_guards(ctx, msg, sizeof msg);
                    CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
                    kiln_scope_end(ctx);
                    kiln_error_clear(ctx);
                }
            }
        }
    }
    kiln__hooks_of(ctx)->softmax_layout = 0;
    kiln__set_guard(ctx, 0);
}

/* Rows with NaN, +-Inf, all -Inf, huge spreads; and a large shift (stability). */
static void test_softmax_specials(kiln_ctx *ctx) {
    static const float rows[6][4] = {
        {1, NAN, 2, 0},        {INFINITY, 1, 2, 0}, {-INFINITY, -INFINITY, -INFINITY, -INFINITY},
        {-INFINITY, 0, 1, -3}, {100, -100, 80, 99}, {1e4f, 1e4f + 1, 1e4f - 2, 1e4f}};
    for (int layout = 0; layout < NLAYOUTS; layout++) {
        kiln__hooks_of(ctx)->softmax_layout = layout;
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_from_host(ctx, rows, KILN_F32, 2, (int64_t[]){6, 4});
        double xd[24], ref[24];
        for (int i = 0; i < 24; i++) xd[i] = rows[i / 4][i % 4];
        for (int lg = 0; lg < 2; lg++) {
            char what[160];
            snprintf(what, sizeof what, "kiln_%s on special rows, layout %s", lg ? "log_softmax" : "softmax",
                     layout_names[layout]);
            kiln_tensor *y = lg ? kiln_log_softmax(ctx, x, 1) : kiln_softmax(ctx, x, -1);
            CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
            if (!y) continue;
            double spread = sm_ref(xd, 2, (int64_t[]){6, 4}, 1, lg, ref);
            float *got = h_read(y);
            sm_compare(what, got, ref, 24, lg, spread, 4);
            /* spelled out: a NaN or +Inf makes the row NaN (as torch); all -Inf is NaN;
             * -Inf among finite values gives 0 (log: -Inf); a shift of 1e4 is harmless */
            int nan_rows = 0;
            for (int i = 0; i < 12; i++) nan_rows += isnan(got[i]);
            CHECK(nan_rows == 12, "%s: %d of the 12 elements of the NaN rows are NaN", what, nan_rows);
            CHECK(lg ? (isinf(got[12]) && got[12] < 0) : got[12] == 0.0f, "%s: exp(-inf) term is %g", what, got[12]);
            CHECK(isfinite(got[20]) && isfinite(got[21]), "%s: shifted row finite", what);
            free(got);
        }
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
    }
    kiln__hooks_of(ctx)->softmax_layout = 0;
}

/* ---- softmax gradients -------------------------------------------------------------- */

typedef struct sm_user {
    const h_view *v;
    int64_t n;
    int d;
    bool lg;
    double *xv, *y;
} sm_user;

static void sm_gref(void *user, double *const *in, double *out) {
    sm_user *u = user;
    for (int64_t i = 0; i < u->n; i++) {
        int64_t rem = i, off = u->v->offset;
        for (int d = u->v->ndim - 1; d >= 0; d--) {
            off += (rem % u->v->shape[d]) * u->v->strides[d];
            rem /= u->v->shape[d];
        }
        u->xv[i] = in[0][off];
    }
    sm_ref(u->xv, u->v->ndim, u->v->shape, u->d, u->lg, out);
}

typedef struct smgcase {
    vspec v;
    int dim;
    int layout;
} smgcase;

static const smgcase smg_cases[] = {
    {V("3x5x7", 3, 3, 5, 7), 0, 0},
    {V("3x5x7", 3, 3, 5, 7), 1, 0},
    {V("3x5x7", 3, 3, 5, 7), -1, 0},
    {V("3x5x7", 3, 3, 5, 7), 1, 2},
    {V("1-D prime", 1, 13), 0, 0},
    {V("1-D prime", 1, 13), 0, 2},
    {V("[2, 300]", 2, 2, 300), 1, 3},
    {V("0-d", 0, 0), 0, 0},
    {V("empty [3, 0]", 2, 3, 0), 0, 0},
    {V("empty [0, 4]", 2, 0, 4), 1, 0},
    {V("[2, 300]", 2, 2, 300), 1, 0},
    {VT("transposed", 2, 0, 1, 7, 5), 1, 0},
    {VT("transposed", 2, 0, 1, 7, 5), 0, 2},
    {VT("transposed", 2, 0, 1, 7, 5), 1, 3},
    {VS("sliced with step", 3, 1, 0, 8, 3, 3, 8, 5), 2, 1},
    {{"expanded (stride 0)", 2, {1, 6}, {{TF_E, {3, 4, 5, 6}}}}, 1, 0},
};

static void test_softmax_grads(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    for (size_t c = 0; c < sizeof smg_cases / sizeof smg_cases[0]; c++) {
        for (int lg = 0; lg < 2; lg++) {
            const smgcase *sc = &smg_cases[c];
            kiln__hooks_of(ctx)->softmax_layout = sc->layout;
            char what[200];
            snprintf(what, sizeof what, "kiln_%s, %s, dim %d, layout %s", lg ? "log_softmax" : "softmax", sc->v.name,
                     sc->dim, layout_names[sc->layout]);
            kiln_scope_begin(ctx);
            operand o;
            if (make_operand(ctx, &sc->v, -3, 3, true, &o)) {
                kiln_tensor *y = lg ? kiln_log_softmax(ctx, o.t, sc->dim) : kiln_softmax(ctx, o.t, sc->dim);
                double *hd = malloc(sizeof(double) * (size_t)(o.nbase > 0 ? o.nbase : 1));
                for (int64_t i = 0; i < o.nbase; i++) hd[i] = o.base[i];
                int nd = o.hv.ndim;
                sm_user u = {&o.hv,
                             o.n,
                             sc->dim < 0 ? sc->dim + (nd ? nd : 1) : sc->dim,
                             lg,
                             malloc(sizeof(double) * (size_t)(o.n > 0 ? o.n : 1)),
                             NULL};
                double *hin[1] = {hd};
                bool wanted[1] = {true};
                gc_check(ctx, what, sm_gref, &u, 1, &o.leaf, hin, wanted, y, 1e-5, 1e-5);
                free(u.xv);
                free(hd);
            }
            free_operand(&o);
            char msg[256];
            int bad = kiln__check_guards(ctx, msg, sizeof msg);
            CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
            kiln_scope_end(ctx);
            CHECK_OK(ctx);
            kiln_error_clear(ctx);
        }
    }
    kiln__hooks_of(ctx)->softmax_layout = 0;
    kiln__set_guard(ctx, 0);
}

/* ---- PyTorch golden file ------------------------------------------------------------ */

typedef struct gold_ew {
    const char *name; /* case name in the file */
    act_desc op;
    double atol, rtol; /* kiln vs torch, outputs and gradients */
} gold_ew;

/*
 * kiln vs torch (both float32): the sum of both sides' errors. relu, leaky_relu: the same
 * selection or correctly rounded product: exact. Others: kiln's bounds above plus torch's
 * (at most the same), with |x| <= 12 for the random inputs (randn * 3) and <= 100 for the
 * specials, where the bound in |x| does not apply (erf and tanh are exactly +-1 beyond
 * |x| ~ 4 and 9, so the error is then relative). For gradients, a few more roundings on
 * each side; the largest relative error of any formula here is erf's and tanh's
 * cancellation in 1 + erf, 1 + tanh, 1 - y^2 (absolute, ~20 eps; torch's vectorised erf
 * is Abramowitz-Stegun 7.1.26, absolute error <= 1.5e-7, i.e. <= 1e-6 after 0.5*x for
 * |x| <= 12), hence
 * atol 4e-6 (~ 32 eps plus the products with a seed gradient of magnitude <= 4) and
 * rtol 4e-6 (~32 eps). elu: torch 1.13 computes exp(x) - 1 where kiln uses expm1, so
 * near 0 torch is off by up to 1 ulp of 1 (alpha * 2^-24 absolute): inside atol.
 */
static const gold_ew gold_ops[] = {
    {"relu", {"relu", K_RELU, 0, 0, 0, 0, true}, 0, 0},
    {"leaky_relu_0.01", {"", K_LEAKY, 0.01f, 0, 0, 0, true}, 0, 0},
    {"leaky_relu_0.2", {"", K_LEAKY, 0.2f, 0, 0, 0, true}, 0, 0},
    {"leaky_relu_-0.5", {"", K_LEAKY, -0.5f, 0, 0, 0, true}, 0, 0},
    {"elu_1", {"", K_ELU, 1.0f, 0, 0, 0, false}, 4e-6, 4e-6},
    {"elu_0.5", {"", K_ELU, 0.5f, 0, 0, 0, false}, 4e-6, 4e-6},
    {"elu_2", {"", K_ELU, 2.0f, 0, 0, 0, false}, 4e-6, 4e-6},
    {"gelu", {"", K_GELU, 0, 0, 0, 0, false}, 4e-6, 4e-6},
    {"gelu_tanh", {"", K_GELU_TANH, 0, 0, 0, 0, false}, 4e-6, 4e-6},
    {"sigmoid", {"", K_SIGMOID, 0, 0, 0, 0, false}, 4e-6, 4e-6},
    {"tanh", {"", K_TANH, 0, 0, 0, 0, false}, 4e-6, 4e-6},
    {"softplus_1_20", {"", K_SOFTPLUS, 1.0f, 20.0f, 0, 0, false}, 4e-6, 4e-6},
    {"softplus_2_1", {"", K_SOFTPLUS, 2.0f, 1.0f, 0, 0, false}, 4e-6, 4e-6},
    {"softplus_0.5_20", {"", K_SOFTPLUS, 0.5f, 20.0f, 0, 0, false}, 4e-6, 4e-6},
    {"softplus_-1_20", {"", K_SOFTPLUS, -1.0f, 20.0f, 0, 0, false}, 4e-6, 4e-6},
};

/* Runs op on <case>.x, backward with <case>.gy, compares .y and .gx. transpose: the op
 * reads x transposed (2-D). */
static void gold_run(kiln_ctx *ctx, const golden *g, const char *cname, const act_desc *op, int sm_dim, int sm_log,
                     bool transpose, double atol, double rtol, double gatol, double grtol) {
    char nx[160], ny[160], ngy[160], ngx[160], what[200];
    snprintf(nx, sizeof nx, "%s.x", cname);
    snprintf(ny, sizeof ny, "%s.y", cname);
    snprintf(ngy, sizeof ngy, "%s.gy", cname);
    snprintf(ngx, sizeof ngx, "%s.gx", cname);
    const golden_tensor *gx = golden_get(g, nx), *gy = golden_get(g, ny), *ggy = golden_get(g, ngy),
                        *ggx = golden_get(g, ngx);
    if (!gx || !gy || !ggy || !ggx) return;
    kiln_scope_begin(ctx);
    kiln_tensor *x = golden_upload(ctx, gx);
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *xin = transpose ? kiln_transpose(ctx, x, 0, 1) : x;
    kiln_tensor *y =
        op ? act_call(ctx, op, xin) : (sm_log ? kiln_log_softmax(ctx, xin, sm_dim) : kiln_softmax(ctx, xin, sm_dim));
    snprintf(what, sizeof what, "golden %s output", cname);
    golden_compare(what, y, gy, atol, rtol);
    kiln_tensor *seed = golden_upload(ctx, ggy);
    kiln_status s = y ? kiln_backward_ex(y, seed, false) : KILN_ERR_NULL;
    CHECK(s == KILN_OK, "golden %s backward: %s", cname, kiln_error_message(ctx));
    snprintf(what, sizeof what, "golden %s gradient", cname);
    if (s == KILN_OK) golden_compare(what, kiln_tensor_grad(x), ggx, gatol, grtol);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "activation")) return;
    for (size_t k = 0; k < sizeof gold_ops / sizeof gold_ops[0]; k++) {
        const gold_ew *o = &gold_ops[k];
        char cname[160];
        gold_run(ctx, &g, o->name, &o->op, 0, 0, false, FLT_MIN + o->atol, o->rtol, o->atol, o->rtol);
        snprintf(cname, sizeof cname, "%s.special", o->name);
        /* specials reach |x| = 100 (gelu's absolute bound in |x| is 100x that of |x| ~ 1;
         * erf/tanh saturate there, so the bound stays relative in practice) */
        gold_run(ctx, &g, cname, &o->op, 0, 0, false, FLT_MIN + o->atol, o->rtol, o->atol, o->rtol);
    }
    /*
     * softmax / log_softmax: inputs randn * 4 (spread R <= ~30 over a row): kiln's bounds
     * above, (13 + R) eps relative for softmax and (11 + 1.5 R + 4 log len) eps absolute for
     * log_softmax, about 5e-6 and 1e-5; torch's are of the same kind. Gradients: y*(g - s)
     * and g - exp(y) s cancel, so absolute bounds of a few eps times max|g| * len-ish sums
     * (seed gradients randn): atol 2e-5, rtol 1e-5.
     */
    static const struct {
        const char *c;
        int dim;
        bool t;
    } sm[] = {{"d0", 0, false}, {"d1", 1, false},   {"d2", 2, false}, {"dm1", -1, false},   {"1d", 0, false},
              {"0d", 0, false}, {"long", 1, false}, {"t", 1, true},   {"special", 1, false}};
    for (int layout = 0; layout < NLAYOUTS; layout++) {
        kiln__hooks_of(ctx)->softmax_layout = layout;
        for (int lg = 0; lg < 2; lg++) {
            for (size_t k = 0; k < sizeof sm / sizeof sm[0]; k++) {
                char cname[160];
                snprintf(cname, sizeof cname, "%s_%s", lg ? "log_softmax" : "softmax", sm[k].c);
                gold_run(ctx, &g, cname, NULL, sm[k].dim, lg, sm[k].t, lg ? 2e-5 : 1e-7, lg ? 0 : 1e-5, 2e-5, 1e-5);
            }
        }
    }
    kiln__hooks_of(ctx)->softmax_layout = 0;
    golden_close(&g);
}

/* ---- autograd bookkeeping ----------------------------------------------------------- */

static void test_autograd(kiln_ctx *ctx) {
    int64_t base = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    float xv[6] = {-1, 0, 2, -0.0f, 3, NAN};
    kiln_tensor *x = kiln_from_host(ctx, xv, KILN_F32, 1, (int64_t[]){6});
    kiln_tensor_set_requires_grad(x, true);
    /* relu's gradient: 0 at 0 and -0, 1 above, and NaN passes the seed through (torch) */
    kiln_tensor *y = kiln_relu(ctx, x);
    kiln_status s = kiln_backward(kiln_sum(ctx, y, 0, NULL, false));
    CHECK(s == KILN_OK, "relu backward: %s", kiln_error_message(ctx));
    float g[6] = {0};
    if (s == KILN_OK && kiln_to_host(kiln_tensor_grad(x), g, sizeof g) == KILN_OK)
        CHECK(g[0] == 0 && g[1] == 0 && g[2] == 1 && g[3] == 0 && g[4] == 1 && g[5] == 1,
              "relu' = %g %g %g %g %g %g (want 0 0 1 0 1 1)", g[0], g[1], g[2], g[3], g[4], g[5]);
    /* elu's gradient: alpha at 0 (x <= 0 branch), NaN at NaN (torch's vectorised rule) */
    kiln_tensor *xe = kiln_from_host(ctx, xv, KILN_F32, 1, (int64_t[]){6});
    kiln_tensor_set_requires_grad(xe, true);
    s = kiln_backward(kiln_sum(ctx, kiln_elu(ctx, xe, 0.5f), 0, NULL, false));
    CHECK(s == KILN_OK, "elu backward: %s", kiln_error_message(ctx));
    if (s == KILN_OK && kiln_to_host(kiln_tensor_grad(xe), g, sizeof g) == KILN_OK)
        CHECK(g[1] == 0.5f && g[3] == 0.5f && g[2] == 1 && g[4] == 1 && isnan(g[5]) &&
                  fabs(g[0] - 0.5 * exp(-1.0)) < 4 * EPS,
              "elu' = %g %g %g %g %g %g", g[0], g[1], g[2], g[3], g[4], g[5]);
    /* accumulation: a second path adds into the same .grad */
    kiln_tensor *x2 = kiln_from_host(ctx, xv, KILN_F32, 1, (int64_t[]){5});
    kiln_tensor_set_requires_grad(x2, true);
    kiln_tensor *l = kiln_add(ctx, kiln_sum(ctx, kiln_sigmoid(ctx, x2), 0, NULL, false),
                              kiln_sum(ctx, kiln_tanh(ctx, x2), 0, NULL, false));
    s = kiln_backward(l);
    CHECK(s == KILN_OK, "sigmoid + tanh backward: %s", kiln_error_message(ctx));
    float g2[5];
    if (s == KILN_OK && kiln_to_host(kiln_tensor_grad(x2), g2, sizeof g2) == KILN_OK) {
        for (int i = 0; i < 5; i++) {
            double sg = 1 / (1 + exp(-(double)xv[i])), th = tanh((double)xv[i]);
            double want = sg * (1 - sg) + (1 - th * th);
            CHECK(fabs(g2[i] - want) <= 16 * EPS * (1 + want), "d(sigmoid + tanh)/dx at %g: %g vs %g", xv[i], g2[i],
                  want);
        }
    }
    /* no_grad: nothing recorded */
    bool prev = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *ng = kiln_softmax(ctx, x2, 0);
    CHECK(ng && !kiln_tensor_requires_grad(ng) && !kiln_tensor_has_grad_fn(ng), "no_grad softmax recorded a node");
    kiln_ctx_set_grad_enabled(ctx, prev);
    kiln_tensor *wg = kiln_log_softmax(ctx, x2, 0);
    CHECK(wg && kiln_tensor_requires_grad(wg) && kiln_tensor_has_grad_fn(wg), "log_softmax output has no grad_fn");
    /* chained activations on one input, then everything freed with the scope */
    kiln_tensor *chain =
        kiln_softplus(ctx, kiln_gelu(ctx, kiln_elu(ctx, kiln_leaky_relu(ctx, x2, 0.1f), 1.0f), true), 1.0f, 20.0f);
    chain = kiln_log_softmax(ctx, kiln_softmax(ctx, chain, 0), -1);
    s = kiln_backward(kiln_sum(ctx, chain, 0, NULL, false));
    CHECK(s == KILN_OK, "chain backward: %s", kiln_error_message(ctx));
    CHECK(kiln_ctx_num_tensors(ctx) > base, "tensors exist inside the scope");
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == base, "scope end left %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - base));
    CHECK_OK(ctx);
}

/* A backward reads its node's typed state only when the node carries that type: a node
 * whose state was relabelled (as a mix-up of op families would) fails naming both. */
static void test_state_checked(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_rand_uniform(ctx, -1, 1, 2, (int64_t[]){2, 3});
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *ys[2] = {kiln_leaky_relu(ctx, x, 0.1f), kiln_log_softmax(ctx, x, 1)};
    static const char *const own[2] = {"act_state", "softmax_state"}, *const other[2] = {"softmax_state", "act_state"};
    static const char *const ops[2] = {"kiln_leaky_relu", "kiln_log_softmax"};
    for (int k = 0; k < 2; k++) {
        CHECK(ys[k] && ys[k]->node && ys[k]->node->state_type && strcmp(ys[k]->node->state_type, own[k]) == 0,
              "%s: node state %s, expected %s", ops[k], ys[k] && ys[k]->node ? ys[k]->node->state_type : "(none)",
              own[k]);
        if (!ys[k] || !ys[k]->node) continue;
        ys[k]->node->state_type = other[k];
        kiln_status s = kiln_backward_ex(ys[k], kiln_ones(ctx, 2, (int64_t[]){2, 3}), true);
        const char *msg = kiln_error_message(ctx);
        CHECK(s == KILN_ERR_INVALID_ARGUMENT && strstr(msg, ops[k]) && strstr(msg, own[k]) && strstr(msg, other[k]),
              "%s backward with a %s state: %s: %s", ops[k], other[k], kiln_status_name(s), msg);
        kiln_error_clear(ctx);
        ys[k]->node->state_type = own[k];
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* Inputs are read, never written. */
static void test_inputs_untouched(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    float x[35], got[35];
    h_fill(x, 35, -3, 3);
    kiln_tensor *a = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){5, 7});
    for (int k = 0; k < NOPS; k++) act_call(ctx, &ops[k], a);
    kiln_softmax(ctx, a, 0);
    kiln_log_softmax(ctx, a, 1);
    CHECK(kiln_to_host(a, got, sizeof got) == KILN_OK && memcmp(got, x, sizeof x) == 0, "input changed");
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- errors ------------------------------------------------------------------------- */

static void test_errors(kiln_ctx *ctx) {
    kiln_error_clear(ctx);
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_tensor *a = kiln_ones(ctx, 2, (int64_t[]){2, 3});
    int32_t iv[6] = {1, 2, 3, 4, 5, 6};
    kiln_tensor *ti = kiln_from_host(ctx, iv, KILN_I32, 2, (int64_t[]){2, 3});
    int64_t live = kiln_ctx_num_tensors(ctx);

    /* dtype: only f32, the message names the op, the shape and the dtype */
    static const char *const names[] = {"kiln_relu", "kiln_leaky_relu", "kiln_elu",  "kiln_gelu",
                                        "kiln_gelu", "kiln_sigmoid",    "kiln_tanh", "kiln_softplus"};
    for (int kind = K_RELU; kind <= K_SOFTPLUS; kind++) {
        act_desc d = {"", kind, 1.0f, 20.0f, 0, 0, false};
        kiln_tensor *r = act_call(ctx, &d, ti);
        const char *m = kiln_error_message(ctx);
        CHECK(r == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE && strstr(m, names[kind]) && strstr(m, "i32") &&
                  strstr(m, "[2, 3]"),
              "%s(i32): %s", names[kind], m);
        kiln_error_clear(ctx);
    }
    CHECK(kiln_softmax(ctx, ti, 0) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE &&
              strstr(kiln_error_message(ctx), "kiln_softmax") && strstr(kiln_error_message(ctx), "i32"),
          "softmax(i32): %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_log_softmax(ctx, ti, 0) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE &&
              strstr(kiln_error_message(ctx), "kiln_log_softmax"),
          "log_softmax(i32): %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* dim out of range: names op, dim and shape */
    static const int bad_dims[] = {2, -3, 100, -100};
    for (int k = 0; k < 4; k++) {
        char dimstr[32];
        snprintf(dimstr, sizeof dimstr, "dim %d", bad_dims[k]);
        CHECK(kiln_softmax(ctx, a, bad_dims[k]) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
                  strstr(kiln_error_message(ctx), "kiln_softmax") && strstr(kiln_error_message(ctx), dimstr) &&
                  strstr(kiln_error_message(ctx), "[2, 3]"),
              "softmax dim %d: %s", bad_dims[k], kiln_error_message(ctx));
        kiln_error_clear(ctx);
        CHECK(kiln_log_softmax(ctx, a, bad_dims[k]) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
                  strstr(kiln_error_message(ctx), "kiln_log_softmax"),
              "log_softmax dim %d: %s", bad_dims[k], kiln_error_message(ctx));
        kiln_error_clear(ctx);
    }
    float one = 1;
    kiln_tensor *scalar = kiln_from_host(ctx, &one, KILN_F32, 0, NULL);
    live = kiln_ctx_num_tensors(ctx);
    CHECK(kiln_softmax(ctx, scalar, 1) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "0-d softmax dim 1 must fail");
    kiln_error_clear(ctx);

    /* softplus parameters */
    static const float bad_beta[] = {0.0f, -0.0f, INFINITY, NAN};
    for (int k = 0; k < 4; k++) {
        CHECK(kiln_softplus(ctx, a, bad_beta[k], 20) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT &&
                  strstr(kiln_error_message(ctx), "kiln_softplus") && strstr(kiln_error_message(ctx), "beta"),
              "softplus beta %g: %s", bad_beta[k], kiln_error_message(ctx));
        kiln_error_clear(ctx);
    }
    CHECK(kiln_softplus(ctx, a, 1, NAN) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "softplus threshold NaN");
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == live, "failed ops left %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - live));

    /* NULL: NULL context, NULL input (error KILN_ERR_NULL), and a chain keeps the root cause */
    CHECK(kiln_relu(NULL, a) == NULL && kiln_softmax(NULL, a, 0) == NULL, "NULL context");
    CHECK(kiln_gelu(ctx, NULL, false) == NULL && kiln_error_status(ctx) == KILN_ERR_NULL &&
              strstr(kiln_error_message(ctx), "kiln_gelu"),
          "gelu(NULL): %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_tensor *bad = kiln_softmax(ctx, a, 5);
    char saved[512];
    snprintf(saved, sizeof saved, "%s", kiln_error_message(ctx));
    kiln_tensor *chain = kiln_tanh(ctx, kiln_sigmoid(ctx, kiln_log_softmax(ctx, kiln_relu(ctx, bad), 0)));
    chain = kiln_softplus(ctx, kiln_elu(ctx, kiln_leaky_relu(ctx, chain, 0.1f), 1), 1, 20);
    CHECK(chain == NULL && strcmp(kiln_error_message(ctx), saved) == 0, "a chain keeps the first error: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* a tensor of another context */
    kiln_ctx *other;
    char spec[16];
    snprintf(spec, sizeof spec, "%d:%d", kiln_ctx_device(ctx)->platform_index, kiln_ctx_device(ctx)->device_index);
    if (kiln_open(&other, spec) == KILN_OK) {
        kiln_tensor *f = kiln_from_host(other, &one, KILN_F32, 0, NULL);
        CHECK(kiln_relu(ctx, f) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT, "foreign tensor");
        kiln_error_clear(ctx);
        CHECK(kiln_softmax(ctx, f, 0) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
              "foreign tensor softmax");
        kiln_error_clear(ctx);
        kiln_close(other);
    }

    /* an exhausted pool: the output allocation fails cleanly, in forward and in backward */
    live = kiln_ctx_num_tensors(ctx);
    kiln__pool_fail_after(ctx, 1);
    CHECK(kiln_gelu(ctx, a, false) == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "OOM gelu: %s",
          kiln_status_name(kiln_error_status(ctx)));
    kiln__pool_fail_after(ctx, 0);
    kiln_error_clear(ctx);
    kiln__pool_fail_after(ctx, 1);
    CHECK(kiln_softmax(ctx, a, 1) == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "OOM softmax");
    kiln__pool_fail_after(ctx, 0);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == live, "OOM left tensors behind");
    kiln_tensor *p = kiln_ones(ctx, 2, (int64_t[]){2, 3});
    kiln_tensor_set_requires_grad(p, true);
    kiln_tensor *sy = kiln_softmax(ctx, p, 1);
    kiln_tensor *seed = kiln_ones(ctx, 2, (int64_t[]){2, 3});
    kiln__pool_fail_after(ctx, 1);
    kiln_status s = kiln_backward_ex(sy, seed, false);
    kiln__pool_fail_after(ctx, 0);
    CHECK(s == KILN_ERR_OUT_OF_MEMORY, "OOM in softmax backward: %s", kiln_status_name(s));
    kiln_error_clear(ctx);

    /* usable after the errors */
    kiln_tensor *ok = kiln_softmax(ctx, kiln_relu(ctx, a), 1);
    float h[6];
    CHECK(ok && kiln_to_host(ok, h, sizeof h) == KILN_OK && fabsf(h[0] - 1.0f / 3) < 1e-6f,
          "context unusable after errors: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "test_errors leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
    CHECK_OK(ctx);
}

/* gelu's vector kernels (a work-item per 2, 4, 8 or 16 floats, kiln__hooks_of(ctx)->act_vw)
 * against the element kernels (act_vw 1): forward and backward, bit for bit, on lengths
 * around the widths (the last work-item's tail) and values across the branch points of
 * kiln's erf (|x| / sqrt2 = 1 and 4) with NaN, +-Inf and -0. */
static void test_gelu_vector_kernels(kiln_ctx *ctx) {
    static const float specials[] = {NAN,          INFINITY,    -INFINITY,    -0.0f,  0.0f,    1.41421354f,
                                     -1.41421366f, 5.65685415f, -5.65685463f, 100.0f, -100.0f, 1e-30f};
    static const int64_t lens[] = {1, 7, 16, 17, 33, 1003};
    int nspec = (int)(sizeof specials / sizeof specials[0]);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int64_t n = lens[li];
        float *xh = malloc(sizeof(float) * (size_t)n), *gh = malloc(sizeof(float) * (size_t)n);
        h_fill(xh, n, -8.0f, 8.0f);
        h_fill(gh, n, -1.0f, 1.0f);
        for (int64_t i = 0; i < n && i < nspec; i++) xh[(i * 7) % n] = specials[i];
        float *ref[2] = {NULL, NULL};
        for (int w = 1; w <= 16; w *= 2) {
            kiln__hooks_of(ctx)->act_vw = w;
            kiln_scope_begin(ctx);
            kiln_tensor *x = kiln_from_host(ctx, xh, KILN_F32, 1, &n);
            kiln_tensor_set_requires_grad(x, true);
            kiln_tensor *y = kiln_gelu(ctx, x, false), *seed = kiln_from_host(ctx, gh, KILN_F32, 1, &n);
            kiln_status s = y ? kiln_backward_ex(y, seed, false) : KILN_ERR_NULL;
            CHECK(s == KILN_OK, "gelu with %d floats per work-item: %s", w, kiln_error_message(ctx));
            float *got[2] = {s == KILN_OK ? h_read(y) : NULL, s == KILN_OK ? h_read(kiln_tensor_grad(x)) : NULL};
            for (int k = 0; k < 2; k++) {
                if (w == 1) {
                    ref[k] = got[k];
                    continue;
                }
                int64_t bad = 0, first = -1;
                for (int64_t i = 0; got[k] && ref[k] && i < n; i++)
                    if (memcmp(&got[k][i], &ref[k][i], sizeof(float)) != 0 && bad++ == 0) first = i;
                CHECK(got[k] && ref[k] && bad == 0,
                      "gelu %s of %lld elements, %d floats per work-item: %lld values differ from the element "
                      "kernel's (first at %lld: x %g)",
                      k ? "backward" : "forward", (long long)n, w, (long long)bad, (long long)first,
                      first >= 0 ? (double)xh[first] : 0.0);
                free(got[k]);
            }
            kiln_scope_end(ctx);
        }
        kiln__hooks_of(ctx)->act_vw = 0;
        free(ref[0]);
        free(ref[1]);
        free(xh);
        free(gh);
    }
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    test_elementwise_shapes(ctx);
    test_elementwise_specials(ctx);
    test_elementwise_sweep(ctx);
    test_elementwise_grads(ctx);
    test_gelu_vector_kernels(ctx);
    test_softmax_shapes(ctx);
    test_softmax_specials(ctx);
    test_softmax_grads(ctx);
    test_golden(ctx);
    test_autograd(ctx);
    test_state_checked(ctx);
    test_inputs_untouched(ctx);
    test_errors(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
