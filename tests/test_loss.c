/* tests/test_loss.c - the losses (mse, l1, smooth_l1, bce, bce_with_logits, lsgan,
 * cross_entropy with weights / ignore_index / label smoothing, nll) and the L1/L2
 * penalties: forward against a plain-C double reference over odd shapes, views and every
 * reduction; NaN/Inf and extreme logits; gradients by finite differences (gradcheck.h);
 * PyTorch 1.13's values and gradients (tests/golden/loss.safetensors); determinism;
 * guard regions; the error paths and leak checks.
 *
 * References read the inputs through the harness's own view model (h_view), not through
 * kiln's strides.
 *
 * Tolerances, u = 2^-24 (the unit roundoff of float):
 * - reduction none: each element is a short formula; its bound is k u * mag, mag the sum of
 *   the magnitudes of the terms the formula adds (so cancellation, as in bce_with_logits'
 *   (1 - t) x + lw softplus(-x), is covered), k counts the rounded operations: 8 for mse, l1,
 *   smooth_l1, lsgan (a sub, a mul or two, the weight); 24 for bce / bce_with_logits (log,
 *   log1p and exp are allowed 3 ulp = 6 u each in OpenCL's full profile, plus ~6 operations);
 *   for cross-entropy (C + 24): the row's sum of C exponentials (each 6 u) gives lse an
 *   absolute error of about (C + 6) u, the rest a few operations.
 * - mean / sum: the terms are then summed by the kernels in runs of c = ceil(n / (G L))
 *   terms per work-item followed by a tree over L work-items, and, when G > 1 groups were
 *   used, a second run-and-tree over the G partials (src/ops/loss.c picks G and L; the test
 *   recomputes them from the device's figures). Every term meets at most
 *   d = c + 2 log2 L + 4 additions, so the sum is off by at most gamma_d * sum|terms|,
 *   gamma_d = d u / (1 - d u) (Higham, eq. 4.4), on top of the terms' own errors. The mean
 *   multiplies by float(1/n) (2 u) or divides by a sum of weights computed the same way
 *   (gamma_d + 5 u for the float division's 2.5 ulp).
 * - gradients against finite differences of the double reference: the difference is
 *   accurate to ~1e-10; kiln's gradient is a short formula per element (cross-entropy: exp of
 *   x - lse, with lse's error ~ (C + 6) u, times a few operations), so 1e-5 of the gradient's
 *   largest magnitude (atol) plus 1e-4 relative covers float rounding with a margin of ~10
 *   and still fails on any wrong term (a missing weight, a wrong 1/n, a sign).
 * - PyTorch golden values: torch computes in float too, in another order; both are within
 *   the bounds above of the exact value, so kiln vs torch is bounded by their sum: outputs
 *   atol 1e-5 rtol 2e-5 (values O(1), sums of <= 72 terms: 2 * 80 u ~ 1e-5), gradients
 *   atol 1e-6 rtol 2e-5 (a few operations each; bce's 1/(x(1-x)) reaches 50, hence rtol).
 */
#include <float.h>

#include "gradcheck.h"
#include "golden.h"
#include "kiln_test_hooks.h"

#define U_F32 0x1p-24

enum { OP_MSE, OP_L1, OP_SL1, OP_BCE, OP_BCEL, OP_LSGAN, OP_CE, OP_NLL, OP_PEN1, OP_PEN2 };
static const char *const op_names[] = {"mse",   "l1", "smooth_l1", "bce",        "bce_with_logits",
                                       "lsgan", "ce", "nll",       "l1_penalty", "l2_penalty"};
static const char *const red_names[] = {"mean", "sum", "none"};

static size_t cap1(int64_t n) { return n > 0 ? (size_t)n : 1; }

/* ---- operands: a host base buffer, a kiln view of it and the harness's model -------- */

enum { VW_NONE, VW_T, VW_S, VW_P };
typedef struct vw {
    int kind; /* VW_T: transpose(a, b); VW_S: slice(dim a, start, end, step); VW_P: permute(perm) */
    int a, b;
    int64_t start, end, step;
    int perm[KILN_MAX_DIMS];
} vw;

typedef struct opnd {
    void *base; /* float or int32 */
    h_view hv;
    kiln_tensor *t;
    int64_t n; /* elements of the view */
    double *v; /* the view's values, row-major */
} opnd;

static void opnd_free(opnd *o) {
    free(o->base);
    free(o->v);
    memset(o, 0, sizeof *o);
}

/* A base tensor of bshape filled by gen (float) or with labels in [lo, hi) (is_int), viewed
 * through v. */
static bool mk(kiln_ctx *ctx, opnd *o, int ndim, const int64_t *bshape, vw v, bool is_int, float lo, float hi) {
    memset(o, 0, sizeof *o);
    int64_t nb = h_numel(ndim, bshape);
    o->base = calloc(cap1(nb), 4);
    for (int64_t i = 0; i < nb; i++) {
        if (is_int)
            ((int32_t *)o->base)[i] = (int32_t)floorf(h_uniform(lo, hi));
        else
            ((float *)o->base)[i] = h_uniform(lo, hi);
    }
    o->t = kiln_from_host(ctx, o->base, is_int ? KILN_I32 : KILN_F32, ndim, bshape);
    o->hv = h_contig(ndim, bshape);
    h_view *h = &o->hv;
    h_tf f = {TF_NONE, {0}}; /* the harness's view step */
    if (v.kind == VW_T) f = (h_tf){TF_T, {v.a, v.b}};
    if (v.kind == VW_S) f = (h_tf){TF_S, {v.a, v.start, v.end, v.step}};
    if (v.kind == VW_P) {
        f.kind = TF_P;
        for (int d = 0; d < ndim; d++) f.p[d] = v.perm[d];
    }
    o->t = h_view_apply(ctx, o->t, h, &f);
    CHECK(o->t != NULL, "making an operand: %s", kiln_error_message(ctx));
    o->n = h_numel(h->ndim, h->shape);
    o->v = malloc(sizeof(double) * cap1(o->n));
    for (int64_t i = 0; i < o->n; i++) {
        int64_t off = h->offset, rem = i;
        for (int d = h->ndim - 1; d >= 0; d--) {
            off += (rem % h->shape[d]) * h->strides[d];
            rem /= h->shape[d];
        }
        o->v[i] = is_int ? (double)((int32_t *)o->base)[off] : (double)((float *)o->base)[off];
    }
    return o->t != NULL;
}

/* Values of a float tensor broadcast (right-aligned) to an output of ndim/shape. */
static double *bcast_vals(const opnd *o, int ndim, const int64_t *shape) {
    int64_t n = h_numel(ndim, shape);
    double *r = malloc(sizeof(double) * cap1(n));
    const h_view *h = &o->hv;
    for (int64_t i = 0; i < n; i++) {
        int64_t rem = i, idx = 0, mul = 1;
        for (int d = ndim - 1; d >= 0; d--) {
            int64_t id = rem % shape[d];
            rem /= shape[d];
            int hd = d - (ndim - h->ndim);
            if (hd >= 0) {
                if (h->shape[hd] != 1) idx += id * mul;
                mul *= h->shape[hd];
            }
        }
        r[i] = o->v[idx];
    }
    return r;
}

/* |got - ref| <= bound[i] elementwise (NaN/Inf must match exactly); one check. */
static void compare_bounds(const char *what, const float *got, const double *ref, const double *bound, int64_t n) {
    int64_t bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], r = ref[i], e;
        if (g == r)
            e = 0;
        else if (isnan(r) || isnan(g))
            e = isnan(r) && isnan(g) ? 0 : INFINITY;
        else if (isinf(r) || isinf(g))
            e = INFINITY;
        else
            e = fabs(g - r) / (bound[i] + FLT_MIN);
        if (e > worst) worst = e;
        if (e > 1 && bad++ == 0)
            fprintf(stderr, "  %s: element %lld: got %.9g, reference %.9g (bound %.3g)\n", what, (long long)i, g, r,
                    bound[i]);
    }
    CHECK(bad == 0, "%s: %lld of %lld elements outside the bound (worst normalised error %.3g)", what, (long long)bad,
          (long long)n, worst);
}

/* ---- the reduction error model (see the header) ------------------------------------- */

static int test_L(kiln_ctx *ctx) {
    size_t w = 256, m = (size_t)kiln_ctx_device(ctx)->max_work_group_size;
    if (m > 0 && m < w) w = m;
    int p = 1;
    while ((size_t)p * 2 <= w) p *= 2;
    return p;
}

static double sum_gamma(kiln_ctx *ctx, int64_t n) {
    int64_t L = test_L(ctx), cu = kiln_ctx_device(ctx)->compute_units;
    if (cu < 1) cu = 1;
    int64_t G = (n + L * 32 - 1) / (L * 32);
    if (G > 4 * cu) G = 4 * cu;
    if (G > 256) G = 256;
    if (G < 1) G = 1;
    int64_t c = (n + G * L - 1) / (G * L);
    int lg = 0;
    while ((1LL << lg) < L) lg++;
    double d = (double)c + 2 * lg + 4;
    return d * U_F32 / (1 - d * U_F32);
}

/* ---- elementwise losses: reference --------------------------------------------------- */

/* The loss term (unweighted) and the magnitude of what it adds up. */
static double el_ref(int op, double x, double t, double pw, double p, double *mag) {
    double d = x - t;
    switch (op) {
    case OP_MSE: *mag = d * d; return d * d;
    case OP_L1: *mag = fabs(d); return fabs(d);
    case OP_SL1: {
        double z = fabs(d), v = z < p ? 0.5 * d * d / p : z - 0.5 * p;
        *mag = z + 0.5 * p;
        return v;
    }
    case OP_BCE: {
        double a = (t - 1) * fmax(log1p(-x), -100), b = -t * fmax(log(x), -100);
        *mag = fabs(a) + fabs(b);
        return a + b;
    }
    case OP_BCEL: {
        double sp = fmax(-x, 0) + log1p(exp(-fabs(x))), lw = 1 + (pw - 1) * t;
        *mag = fabs((1 - t) * x) + fabs(lw * sp);
        return (1 - t) * x + lw * sp;
    }
    case OP_LSGAN: *mag = 0.5 * (x - p) * (x - p); return 0.5 * (x - p) * (x - p);
    case OP_PEN1: *mag = fabs(x); return fabs(x);
    case OP_PEN2: *mag = x * x; return x * x;
    }
    return NAN;
}

static double el_k(int op) { return op == OP_BCE || op == OP_BCEL ? 24 : 8; }

/* The context of an elementwise loss for references and gradcheck. */
typedef struct el_user {
    int op, red;
    double p;
    int64_t n;
    double *w, *pw; /* broadcast to n, or NULL */
} el_user;

static void el_forward_ref(void *user, double *const *in, double *out) {
    const el_user *u = user;
    double s = 0, mag;
    for (int64_t i = 0; i < u->n; i++) {
        double t = (u->op == OP_LSGAN || u->op >= OP_PEN1) ? 0 : in[1][i];
        double v = el_ref(u->op, in[0][i], t, u->pw ? u->pw[i] : 1, u->p, &mag) * (u->w ? u->w[i] : 1);
        if (u->red == KILN_NONE)
            out[i] = v;
        else
            s += v;
    }
    if (u->red == KILN_MEAN) out[0] = s / (double)u->n;
    if (u->red == KILN_SUM) out[0] = s;
}

static kiln_tensor *run_el(kiln_ctx *ctx, int op, kiln_tensor *x, kiln_tensor *t, kiln_tensor *w, kiln_tensor *pw,
                           double p, int red) {
    switch (op) {
    case OP_MSE: return kiln_mse_loss(ctx, x, t, red);
    case OP_L1: return kiln_l1_loss(ctx, x, t, red);
    case OP_SL1: return kiln_smooth_l1_loss(ctx, x, t, red, (float)p);
    case OP_BCE: return kiln_bce_loss(ctx, x, t, w, red);
    case OP_BCEL: return kiln_bce_with_logits(ctx, x, t, w, pw, red);
    case OP_LSGAN: return kiln_lsgan_loss(ctx, x, (float)p, red);
    }
    return NULL;
}

/* One elementwise op configuration of the forward table. */
typedef struct el_cfg {
    int op;
    double p;
    bool w, pw;
    float xlo, xhi, tlo, thi;
} el_cfg;

static const el_cfg el_cfgs[] = {
    {OP_MSE, 0, false, false, -2, 2, -2, 2},      {OP_L1, 0, false, false, -2, 2, -2, 2},
    {OP_SL1, 1.0, false, false, -2, 2, -2, 2},    {OP_SL1, 0.5, false, false, -2, 2, -2, 2},
    {OP_SL1, 0.0, false, false, -2, 2, -2, 2},    {OP_BCE, 0, false, false, 0.02f, 0.98f, 0, 1},
    {OP_BCE, 0, true, false, 0.02f, 0.98f, 0, 1}, {OP_BCEL, 0, false, false, -6, 6, 0, 1},
    {OP_BCEL, 0, true, true, -6, 6, 0, 1},        {OP_BCEL, 0, false, true, -6, 6, 0, 1},
    {OP_LSGAN, 1.0, false, false, -2, 2, 0, 0},   {OP_LSGAN, 0.0, false, false, -2, 2, 0, 0},
};
#define N_EL_CFGS (sizeof el_cfgs / sizeof el_cfgs[0])

/* Shapes: the input's base shape and view, the target's base shape and view. */
typedef struct el_shape {
    const char *name;
    int nd;
    int64_t xs[4];
    vw xv;
    int64_t ts[4];
    vw tv;
} el_shape;

static const el_shape el_shapes[] = {
    {"0-d", 0, {0}, {0}, {0}, {0}},
    {"[1]", 1, {1}, {0}, {1}, {0}},
    {"[13]", 1, {13}, {0}, {13}, {0}},
    {"5x7x11", 3, {5, 7, 11}, {0}, {5, 7, 11}, {0}},
    {"empty [0, 3]", 2, {0, 3}, {0}, {0, 3}, {0}},
    {"input transposed", 2, {11, 7}, {VW_T, 0, 1, 0, 0, 0, {0}}, {7, 11}, {0}},
    {"input sliced, target transposed",
     3,
     {5, 14, 11},
     {VW_S, 1, 0, 0, 14, 2, {0}},
     {5, 11, 7},
     {VW_T, 1, 2, 0, 0, 0, {0}}},
    {"several work-groups [100003]", 1, {100003}, {0}, {100003}, {0}},
};
#define N_EL_SHAPES (sizeof el_shapes / sizeof el_shapes[0])

/* Shape of a view after vw (for the weights: the view's last dim). */
static int64_t view_last(const opnd *o) { return o->hv.ndim ? o->hv.shape[o->hv.ndim - 1] : 1; }

static void el_forward_case(kiln_ctx *ctx, const el_cfg *c, const el_shape *s, int red, int variant) {
    char what[256];
    snprintf(what, sizeof what, "kiln_%s (p %g%s%s), %s, %s", op_names[c->op], c->p, c->w ? ", weight" : "",
             c->pw ? ", pos_weight" : "", s->name, red_names[red]);
    opnd x, t = {0}, w = {0}, pw = {0};
    bool ok = mk(ctx, &x, s->nd, s->xs, s->xv, false, c->xlo, c->xhi);
    bool has_t = c->op != OP_LSGAN;
    if (has_t) ok &= mk(ctx, &t, s->nd, s->ts, s->tv, false, c->tlo, c->thi);
    /* weights over the last dim: every other case a strided (sliced) view */
    int64_t last = view_last(&x);
    int wnd = x.hv.ndim ? 1 : 0;
    int64_t w2[1] = {2 * last};
    vw wv = {VW_S, 0, 0, 0, 2 * last, 2, {0}};
    if (c->w)
        ok &= (variant & 1) && wnd ? mk(ctx, &w, 1, w2, wv, false, 0.5f, 1.5f)
                                   : mk(ctx, &w, wnd, &last, (vw){0}, false, 0.5f, 1.5f);
    if (c->pw)
        ok &= (variant & 1) && wnd ? mk(ctx, &pw, 1, w2, wv, false, 0.25f, 3)
                                   : mk(ctx, &pw, wnd, &last, (vw){0}, false, 0.25f, 3);
    if (ok) {
        int64_t n = x.n;
        double *wb = c->w ? bcast_vals(&w, x.hv.ndim, x.hv.shape) : NULL;
        double *pwb = c->pw ? bcast_vals(&pw, x.hv.ndim, x.hv.shape) : NULL;
        kiln_tensor *y = run_el(ctx, c->op, x.t, t.t, w.t, pw.t, c->p, red);
        CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
        if (y) {
            int ond = red == KILN_NONE ? x.hv.ndim : 0;
            CHECK(kiln_tensor_ndim(y) == ond &&
                      (ond == 0 || memcmp(kiln_tensor_shape(y), x.hv.shape, sizeof(int64_t) * (size_t)ond) == 0),
                  "%s: wrong output shape", what);
            int64_t no = red == KILN_NONE ? n : 1;
            double *ref = malloc(sizeof(double) * cap1(no)), *bound = malloc(sizeof(double) * cap1(no));
            double s_ref = 0, s_mag = 0;
            for (int64_t i = 0; i < n; i++) {
                double mag, wi = wb ? wb[i] : 1;
                double v = el_ref(c->op, x.v[i], has_t ? t.v[i] : 0, pwb ? pwb[i] : 1, c->p, &mag) * wi;
                mag *= fabs(wi);
                if (red == KILN_NONE) {
                    ref[i] = v;
                    bound[i] = el_k(c->op) * U_F32 * mag;
                }
                s_ref += v;
                s_mag += mag;
            }
            if (red != KILN_NONE) {
                double gam = sum_gamma(ctx, n);
                double b = (el_k(c->op) * U_F32 + gam) * s_mag;
                if (red == KILN_MEAN) {
                    ref[0] = s_ref / (double)n;
                    bound[0] = b / (double)n + 2 * U_F32 * fabs(ref[0]);
                } else {
                    ref[0] = s_ref;
                    bound[0] = b;
                }
            }
            float *got = h_read(y);
            compare_bounds(what, got, ref, bound, no);
            free(got);
            free(ref);
            free(bound);
        }
        free(wb);
        free(pwb);
    }
    kiln_error_clear(ctx);
    opnd_free(&x);
    opnd_free(&t);
    opnd_free(&w);
    opnd_free(&pw);
}

static void test_el_forward(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    int variant = 0;
    for (size_t c = 0; c < N_EL_CFGS; c++)
        for (size_t s = 0; s < N_EL_SHAPES; s++)
            for (int red = 0; red < 3; red++) {
                kiln_scope_begin(ctx);
                el_forward_case(ctx, &el_cfgs[c], &el_shapes[s], red, variant++);
                char msg[256];
                int bad = kiln__check_guards(ctx, msg, sizeof msg);
                CHECK(bad == 0, "kiln_%s, %s: %d guard regions overwritten: %s", op_names[el_cfgs[c].op],
                      el_shapes[s].name, bad, msg);
                kiln_scope_end(ctx);
            }
    kiln__set_guard(ctx, 0);
    CHECK_OK(ctx);
}

/* ---- cross-entropy / nll: reference --------------------------------------------------- */

typedef struct ce_user {
    bool nll;
    int N, C, S, red, ignore;
    double ls;
    const int32_t *y; /* N*S labels, row r = n*S + s */
    const double *w;  /* C weights or NULL */
} ce_user;

/* Row losses (and row weights, magnitudes for the bound); x is [N, C, S] row-major. */
static void ce_rows_ref(const ce_user *u, const double *x, double *loss, double *rw, double *mag) {
    for (int n = 0; n < u->N; n++)
        for (int s = 0; s < u->S; s++) {
            int r = n * u->S + s, y = u->y[r];
            const double *xr = x + (int64_t)n * u->C * u->S + s;
            if (y == u->ignore) {
                loss[r] = rw[r] = mag[r] = 0;
                continue;
            }
            double wy = u->w ? u->w[y] : 1;
            rw[r] = wy;
            if (u->nll) {
                loss[r] = -wy * xr[(int64_t)y * u->S];
                mag[r] = fabs(loss[r]);
                continue;
            }
            double m = -INFINITY, se = 0;
            for (int c = 0; c < u->C; c++) m = fmax(m, xr[(int64_t)c * u->S]);
            for (int c = 0; c < u->C; c++) se += exp(xr[(int64_t)c * u->S] - m);
            double lz = log(se), lse = m + lz;
            double l = (1 - u->ls) * wy * (lse - xr[(int64_t)y * u->S]);
            double mg = (1 - u->ls) * fabs(wy) * (lz + fabs(xr[(int64_t)y * u->S] - m) + 1);
            if (u->ls > 0) {
                double sm = 0, smag = 0;
                for (int c = 0; c < u->C; c++) {
                    double wc = u->w ? u->w[c] : 1;
                    sm += wc * (lse - xr[(int64_t)c * u->S]);
                    smag += fabs(wc) * (lz + fabs(xr[(int64_t)c * u->S] - m) + 1);
                }
                l += u->ls / u->C * sm;
                mg += u->ls / u->C * smag;
            }
            loss[r] = l;
            mag[r] = mg;
        }
}

static void ce_forward_ref(void *user, double *const *in, double *out) {
    const ce_user *u = user;
    int64_t rows = (int64_t)u->N * u->S;
    double *l = malloc(sizeof(double) * cap1(rows)), *rw = malloc(sizeof(double) * cap1(rows)),
           *mg = malloc(sizeof(double) * cap1(rows));
    ce_rows_ref(u, in[0], l, rw, mg);
    double sl = 0, sw = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (u->red == KILN_NONE) out[r] = l[r];
        sl += l[r];
        sw += rw[r];
    }
    if (u->red == KILN_MEAN) out[0] = sl / sw;
    if (u->red == KILN_SUM) out[0] = sl;
    free(l);
    free(rw);
    free(mg);
}

/* A cross-entropy / nll configuration: logits base shape and view (the view's shape is
 * [N, C, d...]); labels as a [N, d...] tensor, or through a transposed base. */
typedef struct ce_case {
    const char *name;
    int nd;
    int64_t xs[4];
    vw xv;
    bool labels_transposed; /* labels made as the transpose of [d1, N] (2-D targets only) */
} ce_case;

static const ce_case ce_cases[] = {
    {"[1, 1]", 2, {1, 1}, {0}, false},
    {"[7, 13]", 2, {7, 13}, {0}, false},
    {"[64, 10]", 2, {64, 10}, {0}, false},
    {"[C] = [11]", 1, {11}, {0}, false},
    {"[5, 7, 3]", 3, {5, 7, 3}, {0}, false},
    {"[2, 4, 3, 5]", 4, {2, 4, 3, 5}, {0}, false},
    {"empty [0, 5]", 2, {0, 5}, {0}, false},
    {"transposed [13, 7] -> [7, 13]", 2, {13, 7}, {VW_T, 0, 1, 0, 0, 0, {0}}, false},
    {"sliced classes [6, 17] step 2", 2, {6, 17}, {VW_S, 1, 0, 1, 17, 2, {0}}, false},
    {"permuted [2,5,3,4] (0,3,2,1): the copy path", 4, {2, 5, 3, 4}, {VW_P, 0, 0, 0, 0, 0, {0, 3, 2, 1}}, false},
    {"[7, 5, 4], labels transposed", 3, {7, 5, 4}, {0}, true},
    {"many rows [9001, 3]", 2, {9001, 3}, {0}, false},
};
#define N_CE_CASES (sizeof ce_cases / sizeof ce_cases[0])

/* The option sets the table runs with: weight, ignore_index (-100, or 1 = a valid class),
 * the fraction of labels set to ignore_index, label smoothing. */
typedef struct ce_opt {
    bool w;
    int ignore;
    float frac_ignored;
    float ls;
} ce_opt;

static const ce_opt ce_opts[] = {
    {false, -100, 0, 0},      {false, -100, 0.3f, 0}, {true, -100, 0.3f, 0}, {false, -100, 0, 0.2f},
    {true, -100, 0.3f, 0.2f}, {true, 1, 0, 0.1f},     {false, 1, 0, 0},      {true, -100, 0, 1.0f},
};
#define N_CE_OPTS (sizeof ce_opts / sizeof ce_opts[0])

/* Logits and labels of a case: x (the view), y as a kiln tensor, host labels (row-major of
 * the target), N, C, S, and the logits' values laid out [N, C, S]. */
typedef struct ce_data {
    opnd x, yo;
    int32_t *y;
    int N, C, S;
    double *w;
    opnd wt;
} ce_data;

static void ce_data_free(ce_data *d) {
    opnd_free(&d->x);
    opnd_free(&d->yo);
    opnd_free(&d->wt);
    free(d->y);
    free(d->w);
}

static bool ce_make(kiln_ctx *ctx, ce_data *d, const ce_case *c, const ce_opt *o, bool nll, float xlo, float xhi) {
    memset(d, 0, sizeof *d);
    bool ok = mk(ctx, &d->x, c->nd, c->xs, c->xv, false, xlo, xhi);
    if (!ok) return false;
    /* nll is linear in its input: any values serve as log-probabilities */
    (void)nll;
    const h_view *h = &d->x.hv;
    d->C = (int)(h->ndim == 1 ? h->shape[0] : h->shape[1]);
    d->N = h->ndim == 1 ? 1 : (int)h->shape[0];
    d->S = 1;
    for (int k = 2; k < h->ndim; k++) d->S *= (int)h->shape[k];
    int64_t rows = (int64_t)d->N * d->S;
    d->y = malloc(sizeof(int32_t) * cap1(rows));
    for (int64_t r = 0; r < rows; r++) {
        int32_t v = (int32_t)floorf(h_uniform(0, (float)d->C));
        if (v >= d->C) v = d->C - 1;
        if (o->frac_ignored > 0 && h_uniform(0, 1) < o->frac_ignored) v = o->ignore;
        d->y[r] = v;
    }
    int64_t tshape[KILN_MAX_DIMS];
    int tnd = 0;
    for (int k = 0; k < h->ndim; k++)
        if (k != (h->ndim == 1 ? 0 : 1)) tshape[tnd++] = h->shape[k];
    if (c->labels_transposed && tnd == 2) {
        int64_t bs[2] = {tshape[1], tshape[0]};
        int32_t *b = malloc(sizeof(int32_t) * cap1(rows));
        for (int64_t i = 0; i < tshape[0]; i++)
            for (int64_t j = 0; j < tshape[1]; j++) b[j * tshape[0] + i] = d->y[i * tshape[1] + j];
        kiln_tensor *base = kiln_from_host(ctx, b, KILN_I32, 2, bs);
        d->yo.t = kiln_transpose(ctx, base, 0, 1);
        free(b);
    } else {
        d->yo.t = kiln_from_host(ctx, d->y, KILN_I32, tnd, tshape);
    }
    ok = d->yo.t != NULL;
    if (o->w) {
        int64_t C = d->C;
        /* half the cases read the weights through a strided view */
        int64_t C2 = 2 * C;
        if (d->C & 1)
            ok &= mk(ctx, &d->wt, 1, &C2, (vw){VW_S, 0, 0, 1, C2, 2, {0}}, false, 0.25f, 1.75f);
        else
            ok &= mk(ctx, &d->wt, 1, &C, (vw){0}, false, 0.25f, 1.75f);
        d->w = malloc(sizeof(double) * cap1(C));
        for (int k = 0; k < d->C; k++) d->w[k] = d->wt.v[k];
    }
    CHECK(ok, "making cross-entropy operands: %s", kiln_error_message(ctx));
    return ok;
}

/* The logits' values row-major are already [N, C, S] (the view's shape is [N, C, d...]). */
static void ce_forward_case(kiln_ctx *ctx, const ce_case *c, const ce_opt *o, int red, bool nll) {
    char what[320];
    snprintf(what, sizeof what, "kiln_%s, %s, weight %d, ignore_index %d (%.0f%% ignored), ls %g, %s",
             nll ? "nll_loss" : "cross_entropy_ex", c->name, o->w, o->ignore, 100.0 * o->frac_ignored, (double)o->ls,
             red_names[red]);
    ce_data d;
    if (!ce_make(ctx, &d, c, o, nll, -4, 4)) {
        ce_data_free(&d);
        kiln_error_clear(ctx);
        return;
    }
    ce_user u = {nll, d.N, d.C, d.S, red, o->ignore, nll ? 0 : o->ls, d.y, d.w};
    kiln_tensor *y = nll ? kiln_nll_loss(ctx, d.x.t, d.yo.t, d.wt.t, o->ignore, red)
                         : kiln_cross_entropy_ex(ctx, d.x.t, d.yo.t, d.wt.t, o->ignore, o->ls, red);
    CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (y) {
        int64_t rows = (int64_t)d.N * d.S;
        int64_t no = red == KILN_NONE ? rows : 1;
        CHECK(kiln_tensor_numel(y) == no, "%s: %lld elements, expected %lld", what, (long long)kiln_tensor_numel(y),
              (long long)no);
        double *l = malloc(sizeof(double) * cap1(rows)), *rw = malloc(sizeof(double) * cap1(rows)),
               *mg = malloc(sizeof(double) * cap1(rows)), *ref = malloc(sizeof(double) * cap1(no)),
               *bound = malloc(sizeof(double) * cap1(no));
        ce_rows_ref(&u, d.x.v, l, rw, mg);
        double k = nll ? 8 : d.C + 24, sl = 0, sw = 0, sm = 0, swm = 0;
        for (int64_t r = 0; r < rows; r++) {
            if (red == KILN_NONE) {
                ref[r] = l[r];
                bound[r] = k * U_F32 * mg[r];
            }
            sl += l[r];
            sw += rw[r];
            sm += mg[r];
            swm += fabs(rw[r]);
        }
        if (red != KILN_NONE) {
            double gam = sum_gamma(ctx, rows), b = (k * U_F32 + gam) * sm;
            if (red == KILN_SUM) {
                ref[0] = sl;
                bound[0] = b;
            } else {
                ref[0] = sl / sw;
                /* numerator's error / den, plus den's relative error and the division */
                bound[0] = b / fabs(sw) + fabs(ref[0]) * (gam * swm / fabs(sw) + 5 * U_F32);
            }
        }
        float *got = h_read(y);
        if (kiln_tensor_numel(y) == no) compare_bounds(what, got, ref, bound, no);
        free(got);
        free(l);
        free(rw);
        free(mg);
        free(ref);
        free(bound);
    }
    kiln_error_clear(ctx);
    ce_data_free(&d);
}

static void test_ce_forward(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    for (size_t c = 0; c < N_CE_CASES; c++)
        for (size_t o = 0; o < N_CE_OPTS; o++)
            for (int red = 0; red < 3; red++)
                for (int nll = 0; nll < 2; nll++) {
                    if (nll && ce_opts[o].ls > 0) continue;
                    kiln_scope_begin(ctx);
                    ce_forward_case(ctx, &ce_cases[c], &ce_opts[o], red, nll);
                    char msg[256];
                    int bad = kiln__check_guards(ctx, msg, sizeof msg);
                    CHECK(bad == 0, "%s %s: %d guard regions overwritten: %s", nll ? "nll" : "ce", ce_cases[c].name,
                          bad, msg);
                    kiln_scope_end(ctx);
                }
    /* kiln_cross_entropy is cross_entropy_ex with torch's defaults */
    kiln_scope_begin(ctx);
    ce_data d;
    ce_opt o = {false, -100, 0, 0};
    if (ce_make(ctx, &d, &ce_cases[1], &o, false, -4, 4)) {
        for (int red = 0; red < 3; red++) {
            kiln_tensor *a = kiln_cross_entropy(ctx, d.x.t, d.yo.t, red);
            kiln_tensor *b = kiln_cross_entropy_ex(ctx, d.x.t, d.yo.t, NULL, -100, 0.0f, red);
            float *ga = h_read(a), *gb = h_read(b);
            CHECK(memcmp(ga, gb, sizeof(float) * (size_t)kiln_tensor_numel(a)) == 0,
                  "kiln_cross_entropy differs from kiln_cross_entropy_ex with the defaults (%s)", red_names[red]);
            free(ga);
            free(gb);
        }
    }
    ce_data_free(&d);
    kiln_scope_end(ctx);
    kiln__set_guard(ctx, 0);
    CHECK_OK(ctx);
}

/* ---- NaN, Inf and extreme values ------------------------------------------------------ */

static void expect_vals(kiln_ctx *ctx, const char *what, kiln_tensor *y, const double *ref, int64_t n, double rtol) {
    CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!y) return;
    float *got = h_read(y);
    h_compare(what, got, ref, n, FLT_MIN, rtol);
    free(got);
}

static void test_specials(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int64_t n4[1] = {4};
    /* NaN and Inf pass through mse / l1 (elementwise and into the mean) */
    float xs[4] = {1, NAN, INFINITY, 2}, ts[4] = {0, 0, 0, 2};
    kiln_tensor *x = kiln_from_host(ctx, xs, KILN_F32, 1, n4), *t = kiln_from_host(ctx, ts, KILN_F32, 1, n4);
    expect_vals(ctx, "mse none with NaN/Inf", kiln_mse_loss(ctx, x, t, KILN_NONE), (double[]){1, NAN, INFINITY, 0}, 4,
                0);
    expect_vals(ctx, "mse mean with NaN", kiln_mse_loss(ctx, x, t, KILN_MEAN), (double[]){NAN}, 1, 0);
    expect_vals(ctx, "l1 none with NaN/Inf", kiln_l1_loss(ctx, x, t, KILN_NONE), (double[]){1, NAN, INFINITY, 0}, 4, 0);
    float xi[4] = {1, INFINITY, 3, 2};
    kiln_tensor *xin = kiln_from_host(ctx, xi, KILN_F32, 1, n4);
    expect_vals(ctx, "l1 sum with Inf", kiln_l1_loss(ctx, xin, t, KILN_SUM), (double[]){INFINITY}, 1, 0);

    /* bce: the logs are clamped at -100 */
    float bp[4] = {0, 1, 0, 1}, bt[4] = {1, 0, 0, 1};
    kiln_tensor *p = kiln_from_host(ctx, bp, KILN_F32, 1, n4), *pt = kiln_from_host(ctx, bt, KILN_F32, 1, n4);
    expect_vals(ctx, "bce clamped logs", kiln_bce_loss(ctx, p, pt, NULL, KILN_NONE), (double[]){100, 100, 0, 0}, 4,
                4 * FLT_EPSILON);

    /* bce_with_logits is stable for huge logits (no exp overflow) */
    float lx[6] = {100, -100, 1e4f, -1e4f, 100, 88.8f}, lt[6] = {0, 1, 0, 1, 1, 0};
    int64_t n6[1] = {6};
    kiln_tensor *l = kiln_from_host(ctx, lx, KILN_F32, 1, n6), *ltt = kiln_from_host(ctx, lt, KILN_F32, 1, n6);
    double lref[6];
    for (int i = 0; i < 6; i++) {
        double xx = lx[i], tt = lt[i];
        lref[i] = (1 - tt) * xx + fmax(-xx, 0) + log1p(exp(-fabs(xx)));
    }
    expect_vals(ctx, "bce_with_logits huge logits", kiln_bce_with_logits(ctx, l, ltt, NULL, NULL, KILN_NONE), lref, 6,
                8 * FLT_EPSILON);

    /* cross-entropy: -inf logits (masked classes) are fine unless they are the target;
     * huge logits do not overflow; a NaN spoils its row only */
    float cx[5 * 3] = {-INFINITY, 1, 2, 0, -INFINITY, 0, 1e4f, -1e4f, 3e4f, -3e4f, -3e4f, 5, NAN, 0, 1};
    int32_t cy[5] = {2, 1, 0, 2, 1};
    kiln_tensor *cl = kiln_from_host(ctx, cx, KILN_F32, 2, (int64_t[]){5, 3});
    kiln_tensor *cyt = kiln_from_host(ctx, cy, KILN_I32, 1, (int64_t[]){5});
    double cref[5] = {
        log(exp(1.0) + exp(2.0)) - 2, /* the -inf class contributes nothing */
        INFINITY,                     /* the target's logit is -inf */
        3e4 - 1e4,                    /* lse = 3e4: exp(x - max) never overflows */
        0,                            /* lse = 5, the others underflow to 0 */
        NAN,                          /* a NaN logit */
    };
    expect_vals(ctx, "cross_entropy extreme logits", kiln_cross_entropy(ctx, cl, cyt, KILN_NONE), cref, 5,
                8 * FLT_EPSILON);
    /* with label smoothing a -inf logit makes its row infinite, as torch */
    kiln_tensor *ls = kiln_cross_entropy_ex(ctx, cl, cyt, NULL, -100, 0.1f, KILN_NONE);
    CHECK(ls != NULL, "ce smoothing on -inf: %s", kiln_error_message(ctx));
    if (ls) {
        float *g = h_read(ls);
        CHECK(isinf(g[0]) && g[0] > 0 && isfinite(g[2]) && isnan(g[4]), "ce smoothing on -inf logits: %g %g %g",
              (double)g[0], (double)g[2], (double)g[4]);
        free(g);
    }
    /* every label ignored: the mean is 0/0 = NaN (as torch), the sum 0 */
    int32_t ign[5] = {-100, -100, -100, -100, -100};
    kiln_tensor *yi = kiln_from_host(ctx, ign, KILN_I32, 1, (int64_t[]){5});
    expect_vals(ctx, "cross_entropy all ignored, mean", kiln_cross_entropy(ctx, cl, yi, KILN_MEAN), (double[]){NAN}, 1,
                0);
    expect_vals(ctx, "cross_entropy all ignored, sum", kiln_cross_entropy(ctx, cl, yi, KILN_SUM), (double[]){0}, 1, 0);
    /* empty batch: mean NaN, sum 0, none empty */
    kiln_tensor *e = kiln_empty(ctx, KILN_F32, 2, (int64_t[]){0, 4});
    kiln_tensor *ey = kiln_empty(ctx, KILN_I32, 1, (int64_t[]){0});
    expect_vals(ctx, "cross_entropy empty, mean", kiln_cross_entropy(ctx, e, ey, KILN_MEAN), (double[]){NAN}, 1, 0);
    expect_vals(ctx, "cross_entropy empty, sum", kiln_cross_entropy(ctx, e, ey, KILN_SUM), (double[]){0}, 1, 0);
    kiln_tensor *en = kiln_cross_entropy(ctx, e, ey, KILN_NONE);
    CHECK(en && kiln_tensor_numel(en) == 0, "cross_entropy empty, none: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- gradients ---------------------------------------------------------------------- */

#define GC_ATOL 1e-5
#define GC_RTOL 1e-4

static void grad_el_case(kiln_ctx *ctx, const el_cfg *c, int red, bool views) {
    char what[256];
    snprintf(what, sizeof what, "grad kiln_%s (p %g%s%s), %s%s", op_names[c->op], c->p, c->w ? ", weight" : "",
             c->pw ? ", pos_weight" : "", red_names[red], views ? ", views" : "");
    kiln_scope_begin(ctx);
    /* [5, 7] or a transposed [7, 5] input with a sliced target */
    int64_t xs[2] = {views ? 7 : 5, views ? 5 : 7}, ts[2] = {5, views ? 14 : 7}, ws[1] = {7};
    vw xv = views ? (vw){VW_T, 0, 1, 0, 0, 0, {0}} : (vw){0};
    vw tv = views ? (vw){VW_S, 1, 0, 1, 14, 2, {0}} : (vw){0};
    opnd x, t = {0}, w = {0}, pw = {0};
    bool has_t = c->op != OP_LSGAN;
    bool ok = mk(ctx, &x, 2, xs, xv, false, c->xlo, c->xhi);
    if (has_t) ok &= mk(ctx, &t, 2, ts, tv, false, c->tlo, c->thi);
    if (c->w) ok &= mk(ctx, &w, 1, ws, (vw){0}, false, 0.5f, 1.5f);
    if (c->pw) ok &= mk(ctx, &pw, 1, ws, (vw){0}, false, 0.25f, 3);
    if (ok) {
        /* l1 (and smooth_l1 with beta 0) has a kink at x = t; random floats land within
         * the difference step (1e-5) of it with probability ~1e-5 per element */
        ok &= kiln_tensor_set_requires_grad(x.t, true) == KILN_OK;
        if (has_t) ok &= kiln_tensor_set_requires_grad(t.t, true) == KILN_OK;
        CHECK(ok, "%s: set_requires_grad: %s", what, kiln_error_message(ctx));
    }
    if (ok) {
        el_user u = {c->op,
                     red,
                     c->p,
                     x.n,
                     c->w ? bcast_vals(&w, 2, x.hv.shape) : NULL,
                     c->pw ? bcast_vals(&pw, 2, x.hv.shape) : NULL};
        kiln_tensor *y = run_el(ctx, c->op, x.t, t.t, w.t, pw.t, c->p, red);
        kiln_tensor *xs_[2] = {x.t, t.t};
        double *hin[2] = {x.v, t.v};
        bool wanted[2] = {true, has_t};
        gc_check(ctx, what, el_forward_ref, &u, has_t ? 2 : 1, xs_, hin, wanted, y, GC_ATOL, GC_RTOL);
        free(u.w);
        free(u.pw);
    }
    kiln_error_clear(ctx);
    opnd_free(&x);
    opnd_free(&t);
    opnd_free(&w);
    opnd_free(&pw);
    kiln_scope_end(ctx);
}

static void grad_ce_case(kiln_ctx *ctx, const ce_case *c, const ce_opt *o, int red, bool nll) {
    char what[320];
    snprintf(what, sizeof what, "grad kiln_%s, %s, weight %d, ignore_index %d, ls %g, %s",
             nll ? "nll_loss" : "cross_entropy_ex", c->name, o->w, o->ignore, (double)o->ls, red_names[red]);
    kiln_scope_begin(ctx);
    ce_data d;
    if (ce_make(ctx, &d, c, o, nll, -3, 3)) {
        CHECK(kiln_tensor_set_requires_grad(d.x.t, true) == KILN_OK, "%s: %s", what, kiln_error_message(ctx));
        ce_user u = {nll, d.N, d.C, d.S, red, o->ignore, nll ? 0 : o->ls, d.y, d.w};
        kiln_tensor *y = nll ? kiln_nll_loss(ctx, d.x.t, d.yo.t, d.wt.t, o->ignore, red)
                             : kiln_cross_entropy_ex(ctx, d.x.t, d.yo.t, d.wt.t, o->ignore, o->ls, red);
        bool all_ignored = true;
        for (int64_t r = 0; r < (int64_t)d.N * d.S; r++) all_ignored &= d.y[r] == o->ignore;
        if (all_ignored && red == KILN_MEAN) {
            /* the mean is 0/0 = NaN and so is any finite difference of it; the gradient is
             * zero, as torch's (the golden case ce.allignored checks it) */
            float *g = y ? h_read(y) : NULL;
            CHECK(g && isnan(g[0]), "%s: every label ignored, the mean should be NaN", what);
            free(g);
            ce_data_free(&d);
            kiln_error_clear(ctx);
            kiln_scope_end(ctx);
            return;
        }
        kiln_tensor *xs_[1] = {d.x.t};
        double *hin[1] = {d.x.v};
        bool wanted[1] = {true};
        gc_check(ctx, what, ce_forward_ref, &u, 1, xs_, hin, wanted, y, GC_ATOL, GC_RTOL);
    }
    kiln_error_clear(ctx);
    ce_data_free(&d);
    kiln_scope_end(ctx);
}

typedef struct pen_user {
    int op, n;
    const int64_t *sizes;
} pen_user;

static void pen_ref(void *user, double *const *in, double *out) {
    const pen_user *u = user;
    double s = 0, mag;
    for (int j = 0; j < u->n; j++)
        for (int64_t i = 0; i < u->sizes[j]; i++) s += el_ref(u->op, in[j][i], 0, 1, 0, &mag);
    out[0] = s;
}

/* gc_check takes any number of inputs; the penalties are checked with 1, 6 and 9 tensors
 * (one autograd node over all of them), one a transposed view. The penalty adds its
 * output and no other tensor (no per-chunk partial results held by the graph). */
static void grad_penalty(kiln_ctx *ctx, int op, int n) {
    char what[128];
    snprintf(what, sizeof what, "grad kiln_%s over %d tensors", op_names[op], n);
    kiln_scope_begin(ctx);
    static const int64_t shapes[9][2] = {{3, 4}, {5, 1}, {2, 3}, {1, 1}, {7, 1}, {4, 3}, {2, 2}, {1, 5}, {6, 1}};
    opnd ps[9];
    kiln_tensor *ts[9];
    double *hin[9];
    bool wanted[9];
    int64_t sizes[9];
    bool ok = true;
    for (int j = 0; j < n; j++) {
        vw v = j == 5 ? (vw){VW_T, 0, 1, 0, 0, 0, {0}} : (vw){0};
        ok &= mk(ctx, &ps[j], 2, shapes[j], v, false, -2, 2);
        ok &= ps[j].t && kiln_tensor_set_requires_grad(ps[j].t, true) == KILN_OK;
        ts[j] = ps[j].t;
        hin[j] = ps[j].v;
        wanted[j] = true;
        sizes[j] = ps[j].n;
    }
    if (ok) {
        pen_user u = {op, n, sizes};
        int64_t live = kiln_ctx_num_tensors(ctx);
        kiln_tensor *y = op == OP_PEN1 ? kiln_l1_penalty(ctx, n, ts) : kiln_l2_penalty(ctx, n, ts);
        CHECK(kiln_ctx_num_tensors(ctx) == live + 1, "%s: %lld tensors made, only the output expected", what,
              (long long)(kiln_ctx_num_tensors(ctx) - live));
        gc_check(ctx, what, pen_ref, &u, n, ts, hin, wanted, y, GC_ATOL, GC_RTOL);
    }
    for (int j = 0; j < n; j++) opnd_free(&ps[j]);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

static void test_gradients(kiln_ctx *ctx) {
    for (size_t c = 0; c < N_EL_CFGS; c++)
        for (int red = 0; red < 3; red++)
            for (int views = 0; views < 2; views++) grad_el_case(ctx, &el_cfgs[c], red, views);
    /* cross-entropy / nll on odd shapes, views (a transposed [N, C], the copy path of a
     * permuted 4-D tensor, transposed labels) and option sets */
    static const int gc_cases[] = {1, 3, 4, 5, 7, 9, 10};
    for (size_t k = 0; k < sizeof gc_cases / sizeof gc_cases[0]; k++)
        for (size_t o = 0; o < N_CE_OPTS; o++)
            for (int red = 0; red < 3; red++)
                for (int nll = 0; nll < 2; nll++) {
                    if (nll && ce_opts[o].ls > 0) continue;
                    grad_ce_case(ctx, &ce_cases[gc_cases[k]], &ce_opts[o], red, nll);
                }
    static const int pen_counts[] = {1, 6, 9};
    for (size_t k = 0; k < sizeof pen_counts / sizeof pen_counts[0]; k++) {
        grad_penalty(ctx, OP_PEN1, pen_counts[k]);
        grad_penalty(ctx, OP_PEN2, pen_counts[k]);
    }
    CHECK_OK(ctx);
}

/* The gradient of a composite: loss = ce(x) + 0.5 * mse(x, t) through the autograd core
 * (two nodes reading the same leaf accumulate into one gradient). */
static void test_composite(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    float xv[6] = {0.5f, -1, 2, 0.25f, 1.5f, -0.75f}, tv[6] = {0, 1, 0, 1, 0, 1};
    int32_t yv[2] = {2, 0};
    kiln_tensor *x = kiln_from_host(ctx, xv, KILN_F32, 2, (int64_t[]){2, 3});
    kiln_tensor *t = kiln_from_host(ctx, tv, KILN_F32, 2, (int64_t[]){2, 3});
    kiln_tensor *y = kiln_from_host(ctx, yv, KILN_I32, 1, (int64_t[]){2});
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *a = kiln_cross_entropy(ctx, x, y, KILN_MEAN);
    kiln_tensor *b = kiln_mse_loss(ctx, x, t, KILN_SUM);
    kiln_tensor *l = kiln_add(ctx, a, kiln_mul_scalar(ctx, b, 0.5f));
    CHECK(kiln_backward(l) == KILN_OK, "composite backward: %s", kiln_error_message(ctx));
    float *g = kiln_tensor_grad(x) ? h_read(kiln_tensor_grad(x)) : NULL;
    CHECK(g != NULL, "composite: no gradient");
    if (g) {
        double ref[6];
        for (int r = 0; r < 2; r++) {
            double m = -INFINITY, se = 0;
            for (int c = 0; c < 3; c++) m = fmax(m, xv[r * 3 + c]);
            for (int c = 0; c < 3; c++) se += exp(xv[r * 3 + c] - m);
            for (int c = 0; c < 3; c++) {
                double sm = exp(xv[r * 3 + c] - m) / se;
                ref[r * 3 + c] = (sm - (c == yv[r])) / 2 + (xv[r * 3 + c] - tv[r * 3 + c]);
            }
        }
        h_compare("composite ce + mse gradient", g, ref, 6, 1e-6, 1e-5);
        free(g);
    }
    /* no_grad records nothing */
    bool prev = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *ng = kiln_cross_entropy(ctx, x, y, KILN_MEAN);
    CHECK(ng && !kiln_tensor_requires_grad(ng), "no_grad: cross_entropy's output requires grad");
    kiln_ctx_set_grad_enabled(ctx, prev);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- PyTorch golden values ----------------------------------------------------------- */

static void golden_case(kiln_ctx *ctx, const golden *g, const char *name) {
    char key[160], what[200];
#define GKEY(suffix) (snprintf(key, sizeof key, "%s.%s", name, suffix), key)
    const golden_tensor *cfg = golden_get(g, GKEY("cfg")), *pp = golden_get(g, GKEY("p"));
    if (!cfg || !pp) return;
    int op = cfg->i[0], red = cfg->i[1], ignore = cfg->i[2];
    bool has_w = cfg->i[3], has_pw = cfg->i[4];
    int extra = cfg->i[5];
    float p = pp->f[0];
    kiln_scope_begin(ctx);
    const golden_tensor *gout = golden_get(g, GKEY("out")), *gseed = golden_get(g, GKEY("seed"));
    kiln_tensor *seed = golden_upload(ctx, gseed);
    if (op == OP_PEN1 || op == OP_PEN2) {
        kiln_tensor *ps[16];
        for (int k = 0; k < extra && k < 16; k++) {
            snprintf(key, sizeof key, "%s.x%d", name, k);
            ps[k] = golden_upload(ctx, golden_get(g, key));
            kiln_tensor_set_requires_grad(ps[k], true);
        }
        kiln_tensor *y = op == OP_PEN1 ? kiln_l1_penalty(ctx, extra, ps) : kiln_l2_penalty(ctx, extra, ps);
        snprintf(what, sizeof what, "golden %s", name);
        golden_compare(what, y, gout, 1e-5, 2e-5);
        CHECK(y && kiln_backward_ex(y, seed, false) == KILN_OK, "%s backward: %s", what, kiln_error_message(ctx));
        for (int k = 0; k < extra && k < 16; k++) {
            snprintf(key, sizeof key, "%s.g%d", name, k);
            snprintf(what, sizeof what, "golden %s grad %d", name, k);
            golden_compare(what, kiln_tensor_grad(ps[k]), golden_get(g, key), 1e-6, 2e-5);
        }
        kiln_scope_end(ctx);
        return;
    }
    kiln_tensor *x = golden_upload(ctx, golden_get(g, GKEY("x")));
    kiln_tensor *t = op == OP_LSGAN ? NULL : golden_upload(ctx, golden_get(g, GKEY("t")));
    kiln_tensor *w = has_w ? golden_upload(ctx, golden_get(g, GKEY("w"))) : NULL;
    kiln_tensor *pw = has_pw ? golden_upload(ctx, golden_get(g, GKEY("pw"))) : NULL;
    kiln_tensor_set_requires_grad(x, true);
    if (extra) kiln_tensor_set_requires_grad(t, true);
    kiln_tensor *y;
    if (op == OP_CE)
        y = kiln_cross_entropy_ex(ctx, x, t, w, ignore, p, red);
    else if (op == OP_NLL)
        y = kiln_nll_loss(ctx, x, t, w, ignore, red);
    else
        y = run_el(ctx, op, x, t, w, pw, p, red);
    snprintf(what, sizeof what, "golden %s", name);
    CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
    golden_compare(what, y, gout, 1e-5, 2e-5);
    if (y) {
        CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "%s backward: %s", what, kiln_error_message(ctx));
        snprintf(what, sizeof what, "golden %s d/dinput", name);
        golden_compare(what, kiln_tensor_grad(x), golden_get(g, GKEY("gx")), 1e-6, 2e-5);
        if (extra) {
            snprintf(what, sizeof what, "golden %s d/dtarget", name);
            golden_compare(what, kiln_tensor_grad(t), golden_get(g, GKEY("gt")), 1e-6, 2e-5);
        }
    }
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
#undef GKEY
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "loss")) return;
    int cases = 0;
    for (int k = 0; k < g.n; k++) {
        size_t len = strlen(g.t[k].name);
        if (len < 5 || strcmp(g.t[k].name + len - 4, ".out") != 0) continue;
        char name[128];
        memcpy(name, g.t[k].name, len - 4);
        name[len - 4] = 0;
        golden_case(ctx, &g, name);
        cases++;
    }
    CHECK(cases == 80, "golden: %d cases found, gen_loss.py writes 80", cases);
    golden_close(&g);
    CHECK_OK(ctx);
}

/* ---- determinism ------------------------------------------------------------------- */

static void test_determinism(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int64_t n = 100003, rows = 9001, C = 7;
    float *a = malloc(sizeof(float) * (size_t)n), *b = malloc(sizeof(float) * (size_t)n);
    h_fill(a, n, -3, 3);
    h_fill(b, n, -3, 3);
    int32_t *y = malloc(sizeof(int32_t) * (size_t)rows);
    for (int64_t r = 0; r < rows; r++) y[r] = (int32_t)(r * 5 % C);
    kiln_tensor *x = kiln_from_host(ctx, a, KILN_F32, 1, &n), *t = kiln_from_host(ctx, b, KILN_F32, 1, &n);
    kiln_tensor *lg = kiln_from_host(ctx, a, KILN_F32, 2, (int64_t[]){rows, C});
    kiln_tensor *yt = kiln_from_host(ctx, y, KILN_I32, 1, &rows);
    float v[2][3];
    for (int k = 0; k < 2; k++) {
        v[k][0] = kiln_tensor_item(kiln_mse_loss(ctx, x, t, KILN_MEAN));
        v[k][1] = kiln_tensor_item(kiln_cross_entropy_ex(ctx, lg, yt, NULL, -100, 0.1f, KILN_MEAN));
        kiln_tensor *ps[2] = {x, t};
        v[k][2] = kiln_tensor_item(kiln_l2_penalty(ctx, 2, ps));
    }
    CHECK(memcmp(v[0], v[1], sizeof v[0]) == 0, "repeated reductions differ: %.9g/%.9g %.9g/%.9g %.9g/%.9g",
          (double)v[0][0], (double)v[1][0], (double)v[0][1], (double)v[1][1], (double)v[0][2], (double)v[1][2]);
    free(a);
    free(b);
    free(y);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- errors and leaks ----------------------------------------------------------------- */

static void expect_err(kiln_ctx *ctx, kiln_tensor *r, kiln_status st, const char *what, const char *const *needles) {
    CHECK(r == NULL, "%s: expected an error, got a tensor", what);
    CHECK(kiln_error_status(ctx) == st, "%s: status %s, expected %s (%s)", what,
          kiln_status_name(kiln_error_status(ctx)), kiln_status_name(st), kiln_error_message(ctx));
    for (int k = 0; needles && needles[k]; k++)
        CHECK(strstr(kiln_error_message(ctx), needles[k]) != NULL, "%s: message \"%s\" lacks \"%s\"", what,
              kiln_error_message(ctx), needles[k]);
    kiln_error_clear(ctx);
}

#define NEEDLES(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Labels are checked on the device: the op returns its tensor and the next call that waits
 * (here kiln_tensor_item of its sum) reports a bad one. NULL when that call failed, else t. */
static kiln_tensor *waited(kiln_ctx *ctx, kiln_tensor *t) {
    if (!t) return NULL;
    kiln_tensor *s = kiln_sum(ctx, t, 0, NULL, false);
    float v = s ? kiln_tensor_item(s) : NAN;
    kiln_tensor_free(s);
    if (kiln_error_status(ctx) == KILN_OK && !isnan(v)) return t;
    kiln_tensor_free(t);
    return NULL;
}

static void test_errors(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    float v[30] = {0};
    kiln_tensor *x23 = kiln_from_host(ctx, v, KILN_F32, 2, (int64_t[]){2, 3});
    kiln_tensor *x32 = kiln_from_host(ctx, v, KILN_F32, 2, (int64_t[]){3, 2});
    int32_t lab[6] = {0, 5, 1, 2, 3, 4};
    kiln_tensor *i23 = kiln_from_host(ctx, lab, KILN_I32, 2, (int64_t[]){2, 3});
    kiln_tensor *x35 = kiln_from_host(ctx, v, KILN_F32, 2, (int64_t[]){3, 5});
    kiln_tensor *y3 = kiln_from_host(ctx, lab, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor *w4 = kiln_from_host(ctx, v, KILN_F32, 1, (int64_t[]){4});
    int64_t live = kiln_ctx_num_tensors(ctx);

    expect_err(ctx, kiln_mse_loss(ctx, x23, x32, KILN_MEAN), KILN_ERR_SHAPE, "mse shapes",
               NEEDLES("kiln_mse_loss", "[2, 3]", "[3, 2]"));
    expect_err(ctx, kiln_l1_loss(ctx, x23, x32, KILN_SUM), KILN_ERR_SHAPE, "l1 shapes",
               NEEDLES("kiln_l1_loss", "[2, 3]", "[3, 2]"));
    expect_err(ctx, kiln_smooth_l1_loss(ctx, x23, x32, KILN_SUM, 1), KILN_ERR_SHAPE, "smooth_l1 shapes",
               NEEDLES("kiln_smooth_l1_loss", "[2, 3]", "[3, 2]"));
    expect_err(ctx, kiln_bce_loss(ctx, x23, x32, NULL, KILN_MEAN), KILN_ERR_SHAPE, "bce shapes",
               NEEDLES("kiln_bce_loss", "[2, 3]", "[3, 2]"));
    expect_err(ctx, kiln_bce_with_logits(ctx, x23, x32, NULL, NULL, KILN_MEAN), KILN_ERR_SHAPE, "bcel shapes",
               NEEDLES("kiln_bce_with_logits", "[2, 3]", "[3, 2]"));
    expect_err(ctx, kiln_mse_loss(ctx, x23, i23, KILN_MEAN), KILN_ERR_DTYPE, "mse int target",
               NEEDLES("kiln_mse_loss", "i32"));
    expect_err(ctx, kiln_bce_loss(ctx, x23, x23, w4, KILN_MEAN), KILN_ERR_SHAPE, "bce weight",
               NEEDLES("kiln_bce_loss", "weight [4]", "[2, 3]"));
    expect_err(ctx, kiln_bce_with_logits(ctx, x23, x23, NULL, w4, KILN_MEAN), KILN_ERR_SHAPE, "bcel pos_weight",
               NEEDLES("kiln_bce_with_logits", "pos_weight [4]", "[2, 3]"));
    expect_err(ctx, kiln_smooth_l1_loss(ctx, x23, x23, KILN_MEAN, -1), KILN_ERR_RANGE, "smooth_l1 beta",
               NEEDLES("kiln_smooth_l1_loss", "beta"));
    expect_err(ctx, kiln_mse_loss(ctx, x23, x23, (kiln_reduction)7), KILN_ERR_INVALID_ARGUMENT, "bad reduction",
               NEEDLES("kiln_mse_loss", "reduction 7"));
    expect_err(ctx, kiln_lsgan_loss(ctx, i23, 1, KILN_MEAN), KILN_ERR_DTYPE, "lsgan int", NEEDLES("kiln_lsgan_loss"));

    /* cross-entropy: labels, shapes, dtypes, weight, label smoothing */
    expect_err(ctx, kiln_cross_entropy(ctx, x23, i23, KILN_MEAN), KILN_ERR_SHAPE, "ce target shape",
               NEEDLES("kiln_cross_entropy", "[2, 3]", "expected target [2]"));
    expect_err(ctx, kiln_cross_entropy(ctx, x23, x23, KILN_MEAN), KILN_ERR_DTYPE, "ce float target",
               NEEDLES("kiln_cross_entropy", "target"));
    /* labels {0, 5, 1} against C = 5: label 5 at position [1] */
    expect_err(ctx, waited(ctx, kiln_cross_entropy(ctx, x35, y3, KILN_MEAN)), KILN_ERR_RANGE, "ce label range",
               NEEDLES("kiln_cross_entropy", "label 5", "position [1]", "C = 5"));
    int32_t neg[3] = {0, 1, -1};
    kiln_tensor *yneg = kiln_from_host(ctx, neg, KILN_I32, 1, (int64_t[]){3});
    expect_err(ctx, waited(ctx, kiln_cross_entropy(ctx, x35, yneg, KILN_SUM)), KILN_ERR_RANGE, "ce negative label",
               NEEDLES("label -1", "position [2]"));
    kiln_tensor *ok = kiln_cross_entropy_ex(ctx, x35, yneg, NULL, -1, 0, KILN_SUM);
    CHECK(ok != NULL, "ce: label == ignore_index -1 must be accepted: %s", kiln_error_message(ctx));
    kiln_tensor_free(ok);
    kiln_tensor_free(yneg);
    /* [N, C, d] with the bad label at [1, 0, 2] */
    float z[2 * 3 * 4] = {0};
    int32_t l3[2 * 4] = {0, 1, 2, 0, 1, 2, 0, 1};
    l3[1 * 4 + 2] = 3;
    kiln_tensor *x3 = kiln_from_host(ctx, z, KILN_F32, 3, (int64_t[]){2, 3, 4});
    kiln_tensor *y3d = kiln_from_host(ctx, l3, KILN_I32, 2, (int64_t[]){2, 4});
    kiln_tensor *y3v = kiln_unsqueeze(ctx, y3d, 1);
    expect_err(ctx, kiln_nll_loss(ctx, x3, y3v, NULL, -100, KILN_MEAN), KILN_ERR_SHAPE, "nll target rank",
               NEEDLES("kiln_nll_loss", "[2, 1, 4]", "[2, 3, 4]"));
    kiln_tensor_free(y3v);
    expect_err(ctx, waited(ctx, kiln_nll_loss(ctx, x3, y3d, NULL, -100, KILN_MEAN)), KILN_ERR_RANGE, "nll label range",
               NEEDLES("kiln_nll_loss", "label 3", "position [1, 2]", "C = 3"));
    kiln_tensor_free(x3);
    kiln_tensor_free(y3d);
    int32_t good[3] = {0, 1, 2};
    kiln_tensor *yg = kiln_from_host(ctx, good, KILN_I32, 1, (int64_t[]){3});
    expect_err(ctx, kiln_cross_entropy_ex(ctx, x35, yg, w4, -100, 0, KILN_MEAN), KILN_ERR_SHAPE, "ce weight",
               NEEDLES("kiln_cross_entropy_ex", "weight [4]", "[5]"));
    expect_err(ctx, kiln_cross_entropy_ex(ctx, x35, yg, NULL, -100, 1.5f, KILN_MEAN), KILN_ERR_RANGE, "ce ls > 1",
               NEEDLES("label_smoothing"));
    expect_err(ctx, kiln_cross_entropy_ex(ctx, x35, yg, NULL, -100, -0.1f, KILN_MEAN), KILN_ERR_RANGE, "ce ls < 0",
               NEEDLES("label_smoothing"));
    expect_err(ctx, kiln_cross_entropy_ex(ctx, x35, yg, NULL, -100, NAN, KILN_MEAN), KILN_ERR_RANGE, "ce ls NaN",
               NEEDLES("label_smoothing"));
    expect_err(ctx, kiln_cross_entropy(ctx, x35, yg, (kiln_reduction)-1), KILN_ERR_INVALID_ARGUMENT, "ce bad reduction",
               NEEDLES("reduction"));
    kiln_tensor_free(yg);

    /* NULL inputs: an error of their own, or propagation of an earlier one */
    expect_err(ctx, kiln_mse_loss(ctx, NULL, x23, KILN_MEAN), KILN_ERR_NULL, "mse NULL", NEEDLES("kiln_mse_loss"));
    expect_err(ctx, kiln_cross_entropy(ctx, x35, NULL, KILN_MEAN), KILN_ERR_NULL, "ce NULL",
               NEEDLES("kiln_cross_entropy"));
    kiln_tensor *bad = kiln_mse_loss(ctx, x23, x32, KILN_MEAN);
    kiln_tensor *chain = kiln_cross_entropy(ctx, bad, y3, KILN_MEAN);
    expect_err(ctx, chain, KILN_ERR_SHAPE, "propagation keeps the first error", NEEDLES("kiln_mse_loss"));
    CHECK(kiln_mse_loss(NULL, x23, x23, KILN_MEAN) == NULL, "NULL ctx");
    kiln_tensor *ps[2] = {x23, NULL};
    expect_err(ctx, kiln_l1_penalty(ctx, 2, ps), KILN_ERR_NULL, "penalty NULL param", NEEDLES("kiln_l1_penalty"));
    expect_err(ctx, kiln_l2_penalty(ctx, -1, ps), KILN_ERR_INVALID_ARGUMENT, "penalty n < 0",
               NEEDLES("kiln_l2_penalty"));
    expect_err(ctx, kiln_l2_penalty(ctx, 2, NULL), KILN_ERR_NULL, "penalty params NULL", NEEDLES("kiln_l2_penalty"));
    ps[1] = i23;
    expect_err(ctx, kiln_l2_penalty(ctx, 2, ps), KILN_ERR_DTYPE, "penalty int param",
               NEEDLES("kiln_l2_penalty", "params[1]"));
    /* the device refuses the output (1st allocation) or the buffer of every tensor's
     * partial sums (2nd) of a penalty over 9 tensors: an error, nothing left behind */
    kiln_tensor *nine[9] = {x23, x32, x35, x23, x32, x35, x23, x32, x35};
    for (int nth = 1; nth <= 3; nth++) {
        char what[64];
        snprintf(what, sizeof what, "penalty of 9, allocation %d fails", nth);
        int64_t live = kiln_ctx_num_tensors(ctx);
        kiln__pool_fail_after(ctx, nth);
        kiln_tensor *r = kiln_l2_penalty(ctx, 9, nine);
        kiln__pool_fail_after(ctx, 0);
        if (nth < 3) {
            expect_err(ctx, r, KILN_ERR_OUT_OF_MEMORY, what, NEEDLES("kiln_l2_penalty"));
            CHECK(kiln_ctx_num_tensors(ctx) == live, "%s: %lld tensors left", what,
                  (long long)(kiln_ctx_num_tensors(ctx) - live));
        } else {
            /* two allocations in all: the third would have been the next op's */
            CHECK(r != NULL, "%s: %s", what, kiln_error_message(ctx));
            kiln_tensor_free(r);
        }
    }
    kiln_tensor *zero = kiln_l1_penalty(ctx, 0, ps);
    CHECK(zero && kiln_tensor_item(zero) == 0.0f, "penalty of no tensors is 0: %s", kiln_error_message(ctx));
    kiln_tensor_free(zero);
    CHECK(kiln_ctx_num_tensors(ctx) == live, "error paths leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - live));

    /* forward + backward of every op in a scope: nothing survives the scope but gradients */
    kiln_tensor_set_requires_grad(x35, true);
    kiln_scope_begin(ctx);
    int32_t g3[3] = {0, 4, -100};
    kiln_tensor *yl = kiln_from_host(ctx, g3, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor *wc = kiln_ones(ctx, 1, (int64_t[]){5});
    kiln_tensor *sig = kiln_mul_scalar(ctx, kiln_add_scalar(ctx, x35, 0.5f), 0.5f);
    kiln_tensor *terms[] = {
        kiln_mse_loss(ctx, x35, sig, KILN_MEAN),
        kiln_l1_loss(ctx, x35, sig, KILN_SUM),
        kiln_smooth_l1_loss(ctx, x35, sig, KILN_MEAN, 0.5f),
        kiln_bce_loss(ctx, sig, sig, wc, KILN_MEAN),
        kiln_bce_with_logits(ctx, x35, sig, wc, wc, KILN_SUM),
        kiln_lsgan_loss(ctx, x35, 1, KILN_MEAN),
        kiln_cross_entropy_ex(ctx, x35, yl, wc, -100, 0.1f, KILN_MEAN),
        kiln_nll_loss(ctx, x35, yl, wc, -100, KILN_SUM),
        kiln_l1_penalty(ctx, 1, &x35),
        kiln_l2_penalty(ctx, 1, &x35),
    };
    kiln_tensor *total = terms[0];
    for (size_t k = 1; k < sizeof terms / sizeof terms[0]; k++) total = kiln_add(ctx, total, terms[k]);
    CHECK(total && kiln_backward(total) == KILN_OK, "every loss, backward: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == live + 1, "a scope with every loss leaked %lld tensors (the gradient stays)",
          (long long)(kiln_ctx_num_tensors(ctx) - live - 1));
    kiln_tensor *keep[] = {x23, x32, i23, x35, y3, w4};
    for (size_t k = 0; k < sizeof keep / sizeof keep[0]; k++) kiln_tensor_free(keep[k]);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "test_errors leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* Labels are checked on the device (issue 21): a bad label in step 2 of a small training
 * loop neither stops that step nor reads or writes out of bounds (guards around every
 * storage; its row counts as ignored), and the next kiln_tensor_item reports it, naming the
 * op, the label and its position; the buffer is cleared, so later steps run clean. The
 * steps themselves wait for nothing. */
static void test_deferred_labels(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 16);
    float xv[4 * 6];
    for (int i = 0; i < 24; i++) xv[i] = (float)((i * 7) % 11) / 5.0f - 1.0f;
    kiln_tensor *x = kiln_tensor_keep(kiln_from_host(ctx, xv, KILN_F32, 2, (int64_t[]){4, 6}));
    kiln_tensor_set_requires_grad(x, true);
    int32_t good[4] = {0, 5, 2, 3}, badl[4] = {0, 5, 2, 6};
    kiln_tensor *yg = kiln_tensor_keep(kiln_from_host(ctx, good, KILN_I32, 1, (int64_t[]){4}));
    kiln_tensor *yb = kiln_tensor_keep(kiln_from_host(ctx, badl, KILN_I32, 1, (int64_t[]){4}));
    kiln_ctx_stats a, b;
    kiln_ctx_stats_get(ctx, &a);
    kiln_tensor *keep = NULL;
    for (int step = 0; step < 3; step++) {
        kiln_scope_begin(ctx);
        kiln_tensor *l = kiln_cross_entropy(ctx, x, step == 1 ? yb : yg, KILN_MEAN);
        CHECK(l != NULL && kiln_backward(l) == KILN_OK, "step %d: %s", step, kiln_error_message(ctx));
        if (step == 2) keep = kiln_tensor_keep(l);
        kiln_scope_end(ctx);
    }
    kiln_ctx_stats_get(ctx, &b);
    CHECK(b.host_waits == a.host_waits, "three cross-entropy steps waited %llu times for the device",
          (unsigned long long)(b.host_waits - a.host_waits));
    float v = keep ? kiln_tensor_item(keep) : 0;
    CHECK(isnan(v) && kiln_error_status(ctx) == KILN_ERR_RANGE, "the bad label of step 1 was not reported: %s",
          kiln_error_message(ctx));
    const char *need[] = {"kiln_cross_entropy", "label 6", "position [3]", "C = 6", "kiln_to_host"};
    for (int k = 0; k < 5; k++)
        CHECK(strstr(kiln_error_message(ctx), need[k]), "deferred label: \"%s\" lacks \"%s\"", kiln_error_message(ctx),
              need[k]);
    kiln_error_clear(ctx);
    char msg[256];
    CHECK(kiln__check_guards(ctx, msg, sizeof msg) == 0, "deferred label: guard overwritten: %s", msg);
    /* the gradient of the bad row is zero, the others are cross-entropy's */
    kiln_tensor *g = kiln_tensor_grad(x);
    float gh[24];
    CHECK(g && kiln_to_host(g, gh, sizeof gh) == KILN_OK && isfinite(gh[0]), "gradient: %s", kiln_error_message(ctx));
    /* cleared: a good step and its read succeed */
    kiln_tensor *l = kiln_cross_entropy(ctx, x, yg, KILN_SUM);
    CHECK(l && !isnan(kiln_tensor_item(l)) && kiln_error_status(ctx) == KILN_OK, "after the report: %s",
          kiln_error_message(ctx));
    /* kiln_sync reports too */
    kiln_tensor *l2 = kiln_nll_loss(ctx, x, yb, NULL, -100, KILN_NONE);
    CHECK(l2 && kiln_sync(ctx) == KILN_ERR_RANGE && strstr(kiln_error_message(ctx), "kiln_nll_loss: label 6") &&
              strstr(kiln_error_message(ctx), "kiln_sync"),
          "kiln_sync: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_tensor_free(l);
    kiln_tensor_free(l2);
    kiln_tensor_free(keep);
    kiln_tensor_free(x);
    kiln_tensor_free(yg);
    kiln_tensor_free(yb);
    kiln__set_guard(ctx, 0);
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    /* the reductions once with each way of splitting the terms over work-items: 1 as on a
     * GPU (interleaved), 2 as on a CPU (blocked) */
    for (int layout = 1; layout <= 2; layout++) {
        kiln__hooks_of(ctx)->loss_layout = layout;
        test_el_forward(ctx);
        test_ce_forward(ctx);
        test_determinism(ctx);
    }
    kiln__hooks_of(ctx)->loss_layout = 0;
    test_specials(ctx);
    test_gradients(ctx);
    test_composite(ctx);
    test_golden(ctx);
    test_errors(ctx);
    test_deferred_labels(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
