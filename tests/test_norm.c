/* tests/test_norm.c - batch norm, layer norm, dropout and embedding: forward against
 * plain-C double references over odd shapes and views (with sentinels around every
 * storage), gradients against finite differences, running-statistic updates, PyTorch
 * golden values, the dropout mask against the context's Philox stream, and error paths
 * with leak checks.
 *
 * Tolerances (normalised error |got - ref| / (atol + rtol*|ref|) <= 1; NaN/Inf exact;
 * u = 2^-24, the unit roundoff of float):
 *   batch/layer norm forward, FWD_ATOL = FWD_RTOL = 3e-6: the statistics are float sums
 *     (chunks of 32 terms per work-item, then a fixed tree) of at most a few thousand
 *     deviations, so the mean and variance carry errors of a few u times sqrt(terms) of
 *     their scale and 1/sqrt adds a few u; the outputs are O(1) (|xhat| <= ~4 here), so
 *     their error is a few 1e-7. On POCL the worst case stays below 0.15 of the bound.
 *     Data far from zero add the float mean's own half ulp divided by the standard
 *     deviation (stated where used).
 *   running statistics, RUN_ATOL 1e-7, RUN_RTOL 1e-6: one momentum update (3 roundings)
 *     of the float mean and unbiased variance, values O(1).
 *   dropout and embedding forward: exact. Dropout's output is x * scale (or x * 0), one
 *     correctly rounded float multiplication that the reference repeats; embedding copies.
 *   gradients (gc_check): GC_ATOL 1e-5 of the gradient's largest magnitude, GC_RTOL 1e-5.
 *     The input gradient w*rstd*(dy - mean(dy) - xhat*mean(dy*xhat)) is a difference of
 *     O(1) terms, each rounded to a few u: ~1e-6 of the gradient's scale; the central
 *     differences of the double reference are good to ~1e-10. Linear maps (dropout,
 *     embedding) use 1e-6.
 *   golden (PyTorch, which accumulates batch-norm statistics in double on the CPU):
 *     outputs atol 5e-6, rtol 3e-6: the forward bound, plus the "bnnors" case (data
 *     20 +- 0.5: half an ulp of 20 in the float mean is 9.5e-7, times rstd ~2 and |w| <=
 *     ~1.5); gradients atol = rtol = 5e-6.
 */
#include "golden.h"
#include "gradcheck.h"
#include "kiln_test_hooks.h"

#define FWD_ATOL 3e-6 /* batch/layer norm outputs against the double references */
#define FWD_RTOL 3e-6
#define RUN_ATOL 1e-7 /* running statistics after a momentum update */
#define RUN_RTOL 1e-6

/* Every section runs with sentinels around every storage (kiln__set_guard); they are
 * checked per case inside the sections (before inner scopes release their tensors) and
 * for whatever is still alive at the section's end. */
static void check_guards(kiln_ctx *ctx, const char *what) {
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
}

/* ---- operands: a contiguous host base, a kiln view of it, the harness's view model ---- */

enum { VW_NONE = TF_NONE, VW_T = TF_T, VW_S = TF_S }; /* the harness's view steps */
typedef struct vspec {
    int ndim; /* rank of the base tensor */
    int64_t shape[5];
    int kind; /* VW_T: transpose(p0, p1); VW_S: slice(dim p0, start p1, end p2, step p3) */
    int64_t p[4];
} vspec;

typedef struct operand {
    float *base;
    h_view hv;
    kiln_tensor *t;
    double *d; /* logical (row-major) values of the view */
    int64_t n;
} operand;

/* Makes an operand: a base uniform in [lo, hi), viewed as the spec says. */
static bool make_operand(kiln_ctx *ctx, const vspec *s, float lo, float hi, operand *o) {
    int64_t nb = h_numel(s->ndim, s->shape);
    o->base = malloc(sizeof(float) * (size_t)(nb > 0 ? nb : 1));
    h_fill(o->base, nb, lo, hi);
    o->t = kiln_from_host(ctx, o->base, KILN_F32, s->ndim, s->shape);
    o->hv = h_contig(s->ndim, s->shape);
    h_view *v = &o->hv;
    o->t = h_view_apply(ctx, o->t, v, &(h_tf){s->kind, {s->p[0], s->p[1], s->p[2], s->p[3]}});
    o->n = h_numel(v->ndim, v->shape);
    o->d = malloc(sizeof(double) * (size_t)(o->n > 0 ? o->n : 1));
    for (int64_t i = 0; i < o->n; i++) o->d[i] = h_at(o->base, v, i);
    CHECK(o->t != NULL, "making an operand: %s", kiln_error_message(ctx));
    return o->t != NULL;
}

static void free_operand(operand *o) {
    free(o->base);
    free(o->d);
    memset(o, 0, sizeof *o);
}

/* ---- references ---------------------------------------------------------------------- */

typedef struct bn_ref {
    int64_t N, C, S;
    bool train, has_w, has_b;
    double eps;
    const double *rm, *rv; /* eval: running statistics */
} bn_ref;

/* y = (x - mean) / sqrt(var + eps) * w + b per channel; in = {x [N, C, S], w [C], b [C]}.
 * mean/var (optional outputs) get the batch statistics (biased variance). */
static void bn_forward_ref(const bn_ref *r, double *const *in, double *out, double *mean, double *var) {
    int64_t N = r->N, C = r->C, S = r->S, M = N * S;
    for (int64_t c = 0; c < C; c++) {
        double m, v;
        if (r->train) {
            m = 0;
            for (int64_t n = 0; n < N; n++)
                for (int64_t s = 0; s < S; s++) m += in[0][(n * C + c) * S + s];
            m /= (double)M;
            v = 0;
            for (int64_t n = 0; n < N; n++)
                for (int64_t s = 0; s < S; s++) {
                    double d = in[0][(n * C + c) * S + s] - m;
                    v += d * d;
                }
            v /= (double)M;
        } else {
            m = r->rm[c];
            v = r->rv[c];
        }
        if (mean) mean[c] = m;
        if (var) var[c] = v;
        double rs = 1.0 / sqrt(v + r->eps);
        double w = r->has_w ? in[1][c] : 1, b = r->has_b ? in[2][c] : 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t s = 0; s < S; s++) {
                int64_t i = (n * C + c) * S + s;
                out[i] = (in[0][i] - m) * rs * w + b;
            }
    }
}

static void bn_gc_ref(void *user, double *const *in, double *out) { bn_forward_ref(user, in, out, NULL, NULL); }

typedef struct ln_ref {
    int64_t R, D;
    bool has_w, has_b;
    double eps;
} ln_ref;

static void ln_forward_ref(void *user, double *const *in, double *out) {
    const ln_ref *r = user;
    for (int64_t q = 0; q < r->R; q++) {
        const double *x = in[0] + q * r->D;
        double m = 0, v = 0;
        for (int64_t j = 0; j < r->D; j++) m += x[j];
        m /= (double)r->D;
        for (int64_t j = 0; j < r->D; j++) v += (x[j] - m) * (x[j] - m);
        v /= (double)r->D;
        double rs = 1.0 / sqrt(v + r->eps);
        for (int64_t j = 0; j < r->D; j++)
            out[q * r->D + j] = (x[j] - m) * rs * (r->has_w ? in[1][j] : 1) + (r->has_b ? in[2][j] : 0);
    }
}

/* ---- batch norm over a table of shapes and views --------------------------------------- */

typedef struct bn_case {
    const char *name;
    vspec x;
    bool train, affine, running, wview, rview;
} bn_case;

#define VSH(n, ...)                                                                                                    \
    {                                                                                                                  \
        n, {__VA_ARGS__}, VW_NONE, { 0 }                                                                               \
    }
#define VT(n, a, b, ...)                                                                                               \
    {                                                                                                                  \
        n, {__VA_ARGS__}, VW_T, { a, b }                                                                               \
    }
#define VS(n, d, s, e, st, ...)                                                                                        \
    {                                                                                                                  \
        n, {__VA_ARGS__}, VW_S, { d, s, e, st }                                                                        \
    }

static const bn_case bn_cases[] = {
    {"[2, 3]", VSH(2, 2, 3), true, true, true, false, false},
    {"[13, 1] one channel", VSH(2, 13, 1), true, true, true, false, false},
    {"[1, 2, 3, 3] N = 1", VSH(4, 1, 2, 3, 3), true, true, true, false, false},
    {"[5, 7, 11]", VSH(3, 5, 7, 11), true, true, true, false, false},
    {"[5, 7, 11] no affine", VSH(3, 5, 7, 11), true, false, true, false, false},
    {"[5, 7, 11] no running", VSH(3, 5, 7, 11), true, true, false, false, false},
    {"[2, 3, 4, 5, 3] 3 spatial dims", VSH(5, 2, 3, 4, 5, 3), true, true, true, false, false},
    {"[16, 3, 9, 9] long channels", VSH(4, 16, 3, 9, 9), true, true, true, false, false},
    {"[67, 5] many rows", VSH(2, 67, 5), true, true, true, false, false},
    {"transposed [5, 11, 7] -> [5, 7, 11]", VT(3, 1, 2, 5, 11, 7), true, true, true, false, false},
    {"sliced channels with step", VS(4, 1, 1, 8, 2, 3, 9, 4, 5), true, true, true, true, true},
    {"transposed [7, 5] -> [5, 7]", VT(2, 0, 1, 7, 5), true, true, true, true, true},
    {"eval [5, 7, 11]", VSH(3, 5, 7, 11), false, true, true, false, false},
    {"eval [1, 3] N = 1", VSH(2, 1, 3), false, true, true, false, false},
    {"eval transposed, strided params", VT(3, 1, 2, 5, 11, 7), false, true, true, true, true},
    {"eval [2, 3, 4, 5] no affine", VSH(4, 2, 3, 4, 5), false, false, true, false, false},
};

/* A [C] vector: contiguous, or (view) the even elements of a [2C] base whose odd elements
 * hold 1000 + i (*base gets the base tensor, a view of the same storage). */
static kiln_tensor *make_vec(kiln_ctx *ctx, const double *v, int64_t C, bool view, kiln_tensor **base) {
    int64_t nb = view ? 2 * C : C;
    float *h = malloc(sizeof(float) * (size_t)(nb > 0 ? nb : 1));
    for (int64_t i = 0; i < nb; i++) h[i] = view ? (i % 2 ? 1000.0f + (float)i : (float)v[i / 2]) : (float)v[i];
    kiln_tensor *t = kiln_from_host(ctx, h, KILN_F32, 1, &nb);
    free(h);
    if (base) *base = t;
    return view ? kiln_slice(ctx, t, 0, 0, nb, 2) : t;
}

static void run_bn_case(kiln_ctx *ctx, const bn_case *c) {
    char what[200];
    snprintf(what, sizeof what, "kiln_batch_norm, %s", c->name);
    operand x;
    if (!make_operand(ctx, &c->x, -2, 3, &x)) {
        free_operand(&x);
        kiln_error_clear(ctx);
        return;
    }
    const int64_t *sh = x.hv.shape;
    int64_t N = sh[0], C = sh[1], S = 1;
    for (int d = 2; d < x.hv.ndim; d++) S *= sh[d];
    double *w = malloc(sizeof(double) * (size_t)C), *b = malloc(sizeof(double) * (size_t)C);
    double *rm = malloc(sizeof(double) * (size_t)C), *rv = malloc(sizeof(double) * (size_t)C);
    for (int64_t k = 0; k < C; k++) {
        w[k] = h_uniform(0.5f, 1.5f);
        b[k] = h_uniform(-1, 1);
        rm[k] = h_uniform(-0.5f, 0.5f);
        rv[k] = h_uniform(0.5f, 2.0f);
    }
    kiln_tensor *rmb = NULL, *rvb = NULL;
    kiln_tensor *tw = c->affine ? make_vec(ctx, w, C, c->wview, NULL) : NULL;
    kiln_tensor *tb = c->affine ? make_vec(ctx, b, C, c->wview, NULL) : NULL;
    kiln_tensor *trm = c->running ? make_vec(ctx, rm, C, c->rview, &rmb) : NULL;
    kiln_tensor *trv = c->running ? make_vec(ctx, rv, C, c->rview, &rvb) : NULL;
    const float momentum = 0.2f, eps = 1e-5f;
    kiln_tensor *y = kiln_batch_norm(ctx, x.t, trm, trv, tw, tb, c->train, momentum, eps);
    CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (y) {
        bn_ref r = {N, C, S, c->train, c->affine, c->affine, eps, rm, rv};
        double *in[3] = {x.d, w, b};
        double *ref = malloc(sizeof(double) * (size_t)x.n), *mean = malloc(sizeof(double) * (size_t)C),
               *var = malloc(sizeof(double) * (size_t)C);
        bn_forward_ref(&r, in, ref, mean, var);
        CHECK(kiln_tensor_ndim(y) == x.hv.ndim &&
                  memcmp(kiln_tensor_shape(y), sh, sizeof(int64_t) * (size_t)x.hv.ndim) == 0,
              "%s: wrong output shape", what);
        float *got = h_read(y);
        h_compare(what, got, ref, x.n, FWD_ATOL, FWD_RTOL);
        free(got);
        if (c->running) {
            /* training: momentum update with the unbiased variance; eval: untouched */
            double erm[64], erv[64];
            for (int64_t k = 0; k < C; k++) {
                erm[k] = c->train ? (1 - (double)momentum) * rm[k] + momentum * mean[k] : (double)(float)rm[k];
                erv[k] = c->train ? (1 - (double)momentum) * rv[k] + momentum * var[k] * (double)(N * S) / (N * S - 1)
                                  : (double)(float)rv[k];
            }
            char w2[240];
            snprintf(w2, sizeof w2, "%s running_mean", what);
            float *g2 = h_read(trm);
            h_compare(w2, g2, erm, C, c->train ? RUN_ATOL : 0, c->train ? RUN_RTOL : 0);
            free(g2);
            snprintf(w2, sizeof w2, "%s running_var", what);
            g2 = h_read(trv);
            h_compare(w2, g2, erv, C, c->train ? RUN_ATOL : 0, c->train ? RUN_RTOL : 0);
            free(g2);
            if (c->rview) {
                /* the odd elements of the running statistics' bases are untouched */
                kiln_tensor *bases[2] = {rmb, rvb};
                for (int j = 0; j < 2; j++) {
                    float *hb = h_read(bases[j]);
                    int bad = 0;
                    for (int64_t i = 1; i < 2 * C; i += 2) bad += hb[i] != 1000.0f + (float)i;
                    CHECK(bad == 0, "%s: %d elements between the strided running statistics changed", what, bad);
                    free(hb);
                }
            }
            CHECK(!kiln_tensor_requires_grad(trm) && !kiln_tensor_has_grad_fn(trm) && !kiln_tensor_requires_grad(trv),
                  "%s: running statistics became part of the graph", what);
        }
        free(ref);
        free(mean);
        free(var);
    }
    kiln_error_clear(ctx);
    free_operand(&x);
    free(w);
    free(b);
    free(rm);
    free(rv);
}

static void test_batch_norm_forward(kiln_ctx *ctx) {
    for (size_t k = 0; k < sizeof bn_cases / sizeof bn_cases[0]; k++) {
        kiln_scope_begin(ctx);
        run_bn_case(ctx, &bn_cases[k]);
        char msg[256];
        int bad = kiln__check_guards(ctx, msg, sizeof msg);
        CHECK(bad == 0, "kiln_batch_norm, %s: %d guard regions overwritten: %s", bn_cases[k].name, bad, msg);
        kiln_scope_end(ctx);
    }
    CHECK_OK(ctx);
}

/* ---- layer norm over a table of shapes and views ------------------------------------------ */

typedef struct ln_case {
    const char *name;
    vspec x;
    int nnorm;
    bool has_w, has_b;
    vspec w; /* ndim 0: contiguous of the normalised shape */
} ln_case;

#define VNONE                                                                                                          \
    {                                                                                                                  \
        0, {0}, VW_NONE, { 0 }                                                                                         \
    }

static const ln_case ln_cases[] = {
    {"[1, 9] one row", VSH(2, 1, 9), 1, true, true, VNONE},
    {"[1] one element", VSH(1, 1), 1, true, true, VNONE},
    {"[4, 6, 10]", VSH(3, 4, 6, 10), 1, true, true, VNONE},
    {"[5, 7, 11] nnorm 2", VSH(3, 5, 7, 11), 2, true, true, VNONE},
    {"[5, 7, 11] nnorm 3", VSH(3, 5, 7, 11), 3, true, true, VNONE},
    {"[300, 3] many short rows", VSH(2, 300, 3), 1, true, true, VNONE},
    {"[2, 1031] long rows", VSH(2, 2, 1031), 1, true, true, VNONE},
    {"[6, 64] rows of whole float8s", VSH(2, 6, 64), 1, true, true, VNONE},
    {"[5, 7, 11] no affine", VSH(3, 5, 7, 11), 1, false, false, VNONE},
    {"[5, 7, 11] weight only", VSH(3, 5, 7, 11), 1, true, false, VNONE},
    {"[5, 7, 11] bias only", VSH(3, 5, 7, 11), 1, false, true, VNONE},
    {"transposed [5, 11, 7] -> [5, 7, 11]", VT(3, 1, 2, 5, 11, 7), 1, true, true, VNONE},
    {"sliced rows, nnorm 2, transposed weight", VS(3, 1, 0, 13, 2, 5, 13, 11), 2, true, true, VT(2, 0, 1, 11, 7)},
    {"sliced last dim with step", VS(2, 1, 1, 30, 3, 6, 30), 1, true, true, VS(1, 0, 2, 30, 3, 30)},
};

static void run_ln_case(kiln_ctx *ctx, const ln_case *c) {
    char what[200];
    snprintf(what, sizeof what, "kiln_layer_norm, %s", c->name);
    operand x, w = {0}, b = {0};
    bool ok = make_operand(ctx, &c->x, -2, 3, &x);
    int lead = x.hv.ndim - c->nnorm;
    vspec plain = {c->nnorm, {0}, VW_NONE, {0}};
    for (int d = 0; d < c->nnorm; d++) plain.shape[d] = x.hv.shape[lead + d];
    if (c->has_w) ok &= make_operand(ctx, c->w.ndim ? &c->w : &plain, 0.5f, 1.5f, &w);
    if (c->has_b) ok &= make_operand(ctx, &plain, -1, 1, &b);
    if (ok) {
        ln_ref r = {h_numel(lead, x.hv.shape), h_numel(c->nnorm, x.hv.shape + lead), c->has_w, c->has_b, 1e-5};
        kiln_tensor *y = kiln_layer_norm(ctx, x.t, c->nnorm, c->has_w ? w.t : NULL, c->has_b ? b.t : NULL, 1e-5f);
        CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
        if (y) {
            double *in[3] = {x.d, w.d, b.d};
            double *ref = malloc(sizeof(double) * (size_t)x.n);
            ln_forward_ref(&r, in, ref);
            CHECK(kiln_tensor_ndim(y) == x.hv.ndim &&
                      memcmp(kiln_tensor_shape(y), x.hv.shape, sizeof(int64_t) * (size_t)x.hv.ndim) == 0,
                  "%s: wrong output shape", what);
            float *got = h_read(y);
            h_compare(what, got, ref, x.n, FWD_ATOL, FWD_RTOL);
            free(got);
            free(ref);
        }
    }
    kiln_error_clear(ctx);
    free_operand(&x);
    free_operand(&w);
    free_operand(&b);
}

static void test_layer_norm_forward(kiln_ctx *ctx) {
    for (size_t k = 0; k < sizeof ln_cases / sizeof ln_cases[0]; k++) {
        kiln_scope_begin(ctx);
        run_ln_case(ctx, &ln_cases[k]);
        char msg[256];
        int bad = kiln__check_guards(ctx, msg, sizeof msg);
        CHECK(bad == 0, "kiln_layer_norm, %s: %d guard regions overwritten: %s", ln_cases[k].name, bad, msg);
        kiln_scope_end(ctx);
    }
    CHECK_OK(ctx);
}

/* ---- NaN/Inf, data far from zero, empty tensors, determinism ------------------------------ */

static void test_norm_specials(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    /* [4, 3, 5]: a NaN in channel 0, +Inf in channel 2: those channels (batch statistics)
     * become NaN, channel 1 is untouched; layer norm over the last dim: the rows holding
     * them become NaN. In eval mode the Inf stays an Inf (fixed statistics). */
    int64_t shape[3] = {4, 3, 5};
    float xh[60];
    h_fill(xh, 60, -2, 2);
    xh[1 * 15 + 0 * 5 + 2] = NAN;
    xh[2 * 15 + 2 * 5 + 4] = INFINITY;
    double xd[60], ref[60];
    for (int i = 0; i < 60; i++) xd[i] = xh[i];
    double w[3] = {1.5, 0.5, -1}, b[3] = {0.25, -0.5, 1}, rm[3] = {0.1, -0.2, 0.3}, rv[3] = {1, 2, 0.5};
    double *in[3] = {xd, w, b};
    kiln_tensor *x = kiln_from_host(ctx, xh, KILN_F32, 3, shape);
    kiln_tensor *tw = make_vec(ctx, w, 3, false, NULL), *tb = make_vec(ctx, b, 3, false, NULL);
    for (int train = 0; train < 2; train++) {
        kiln_tensor *trm = make_vec(ctx, rm, 3, false, NULL), *trv = make_vec(ctx, rv, 3, false, NULL);
        kiln_tensor *y = kiln_batch_norm(ctx, x, trm, trv, tw, tb, train, 0.1f, 1e-5f);
        bn_ref r = {4, 3, 5, train, true, true, 1e-5, rm, rv};
        bn_forward_ref(&r, in, ref, NULL, NULL);
        float *got = y ? h_read(y) : NULL;
        CHECK(y != NULL, "batch norm with NaN/Inf: %s", kiln_error_message(ctx));
        if (got)
            h_compare(train ? "kiln_batch_norm NaN/Inf, training" : "kiln_batch_norm NaN/Inf, eval", got, ref, 60,
                      FWD_ATOL, FWD_RTOL);
        free(got);
    }
    ln_ref lr = {12, 5, false, false, 1e-5};
    kiln_tensor *y = kiln_layer_norm(ctx, x, 1, NULL, NULL, 1e-5f);
    ln_forward_ref(&lr, in, ref);
    float *got = y ? h_read(y) : NULL;
    CHECK(y != NULL, "layer norm with NaN/Inf: %s", kiln_error_message(ctx));
    if (got) h_compare("kiln_layer_norm NaN/Inf", got, ref, 60, FWD_ATOL, FWD_RTOL);
    free(got);

    /* far from zero: 20 + 0.5 * U(-1, 1). The tolerance adds half an ulp of 20 (the float
     * mean's own rounding, ~1e-6) divided by the standard deviation (~0.29). */
    int64_t s2[3] = {8, 3, 50};
    float *xf = malloc(sizeof(float) * 1200);
    double *xdd = malloc(sizeof(double) * 1200), *r2 = malloc(sizeof(double) * 1200);
    for (int i = 0; i < 1200; i++) xdd[i] = xf[i] = 20.0f + h_uniform(-0.5f, 0.5f);
    kiln_tensor *xb = kiln_from_host(ctx, xf, KILN_F32, 3, s2);
    kiln_tensor *yb = kiln_batch_norm(ctx, xb, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f);
    double *in2[3] = {xdd, NULL, NULL};
    bn_ref r2b = {8, 3, 50, true, false, false, 1e-5, NULL, NULL};
    bn_forward_ref(&r2b, in2, r2, NULL, NULL);
    got = yb ? h_read(yb) : NULL;
    CHECK(yb != NULL, "batch norm far from zero: %s", kiln_error_message(ctx));
    if (got) h_compare("kiln_batch_norm, data 20 +- 0.5", got, r2, 1200, FWD_ATOL + 1e-6 / 0.29, FWD_RTOL);
    free(got);
    kiln_tensor *yl = kiln_layer_norm(ctx, xb, 2, NULL, NULL, 1e-5f);
    ln_ref r2l = {8, 150, false, false, 1e-5};
    ln_forward_ref(&r2l, in2, r2);
    got = yl ? h_read(yl) : NULL;
    CHECK(yl != NULL, "layer norm far from zero: %s", kiln_error_message(ctx));
    if (got) h_compare("kiln_layer_norm, data 20 +- 0.5", got, r2, 1200, FWD_ATOL + 1e-6 / 0.29, FWD_RTOL);
    free(got);

    /* 1000 +- 0.5 over long channels ([64, 2, 100], 6400 per channel): the float mean of
     * the data itself is only good to half an ulp of 1000 (3e-5), so the bound adds
     * 3.1e-5 / 0.29; summing the raw values instead of deviations from the first element
     * would lose ~1e-3 in the mean. */
    {
        int64_t s3[3] = {64, 2, 100};
        const int64_t n3 = 12800;
        float *x3 = malloc(sizeof(float) * n3);
        double *x3d = malloc(sizeof(double) * n3), *r3 = malloc(sizeof(double) * n3);
        for (int64_t i = 0; i < n3; i++) x3d[i] = x3[i] = 1000.0f + h_uniform(-0.5f, 0.5f);
        kiln_tensor *t3 = kiln_from_host(ctx, x3, KILN_F32, 3, s3);
        kiln_tensor *y3 = kiln_batch_norm(ctx, t3, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f);
        double *in3[3] = {x3d, NULL, NULL};
        bn_ref r3b = {64, 2, 100, true, false, false, 1e-5, NULL, NULL};
        bn_forward_ref(&r3b, in3, r3, NULL, NULL);
        float *g3 = y3 ? h_read(y3) : NULL;
        CHECK(y3 != NULL, "batch norm far from zero: %s", kiln_error_message(ctx));
        if (g3) h_compare("kiln_batch_norm, data 1000 +- 0.5", g3, r3, n3, FWD_ATOL + 3.1e-5 / 0.29, FWD_RTOL);
        free(g3);
        free(x3);
        free(x3d);
        free(r3);
    }

    /* determinism: the same call twice gives the same bits */
    kiln_tensor *yb2 = kiln_batch_norm(ctx, xb, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f);
    float *g1 = h_read(yb), *g2 = h_read(yb2);
    CHECK(memcmp(g1, g2, sizeof(float) * 1200) == 0, "kiln_batch_norm is not bit-reproducible");
    free(g1);
    free(g2);
    free(xf);
    free(xdd);
    free(r2);

    /* empty tensors: layer norm of [0, 4] and [3, 0], batch norm eval of [0, 3] */
    kiln_tensor *e1 = kiln_zeros(ctx, 2, (int64_t[]){0, 4}), *e2 = kiln_zeros(ctx, 2, (int64_t[]){3, 0});
    kiln_tensor *ye1 = kiln_layer_norm(ctx, e1, 1, NULL, NULL, 1e-5f);
    kiln_tensor *ye2 = kiln_layer_norm(ctx, e2, 1, NULL, NULL, 1e-5f);
    CHECK(ye1 && ye2 && kiln_tensor_numel(ye1) == 0 && kiln_tensor_numel(ye2) == 0, "layer norm of empty: %s",
          kiln_error_message(ctx));
    kiln_tensor *e3 = kiln_zeros(ctx, 2, (int64_t[]){0, 3});
    kiln_tensor *trm = make_vec(ctx, rm, 3, false, NULL), *trv = make_vec(ctx, rv, 3, false, NULL);
    kiln_tensor *ye3 = kiln_batch_norm(ctx, e3, trm, trv, NULL, NULL, false, 0.1f, 1e-5f);
    CHECK(ye3 && kiln_tensor_numel(ye3) == 0, "batch norm eval of [0, 3]: %s", kiln_error_message(ctx));
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/* ---- gradients against finite differences ---------------------------------------------------- */

#define GC_ATOL 1e-5
#define GC_RTOL 1e-5

/* A leaf for gc_check: the operand's view itself (made from a tensor that does not require
 * grad, so it is a leaf, possibly non-contiguous) marked requires_grad. */
static void mark(kiln_tensor *t) {
    if (t) kiln_tensor_set_requires_grad(t, true);
}

static void gc_bn(kiln_ctx *ctx, const char *name, vspec xs, bool train, bool affine, bool want_x) {
    char what[200];
    snprintf(what, sizeof what, "kiln_batch_norm gradients, %s", name);
    kiln_scope_begin(ctx);
    operand x;
    if (make_operand(ctx, &xs, -2, 2, &x)) {
        int64_t N = x.hv.shape[0], C = x.hv.shape[1], S = x.n / (N * C);
        double w[16], b[16], rm[16], rv[16];
        for (int64_t k = 0; k < C; k++) {
            w[k] = h_uniform(0.5f, 1.5f);
            b[k] = h_uniform(-1, 1);
            rm[k] = h_uniform(-0.5f, 0.5f);
            rv[k] = h_uniform(0.5f, 2);
            /* the reference reads the float values the device holds */
            w[k] = (float)w[k], b[k] = (float)b[k], rm[k] = (float)rm[k], rv[k] = (float)rv[k];
        }
        kiln_tensor *tw = affine ? make_vec(ctx, w, C, false, NULL) : NULL;
        kiln_tensor *tb = affine ? make_vec(ctx, b, C, false, NULL) : NULL;
        kiln_tensor *trm = make_vec(ctx, rm, C, false, NULL), *trv = make_vec(ctx, rv, C, false, NULL);
        if (want_x) mark(x.t);
        mark(tw);
        mark(tb);
        kiln_tensor *y = kiln_batch_norm(ctx, x.t, trm, trv, tw, tb, train, 0.1f, 1e-5f);
        /* the reference's eval statistics are the running ones before this call (eval does
         * not change them) */
        bn_ref r = {N, C, S, train, affine, affine, 1e-5, rm, rv};
        kiln_tensor *xs3[3] = {x.t, tw, tb};
        double *hin[3] = {x.d, w, b};
        bool wanted[3] = {want_x, affine, affine};
        gc_check(ctx, what, bn_gc_ref, &r, 3, xs3, hin, wanted, y, GC_ATOL, GC_RTOL);
        check_guards(ctx, what);
    }
    free_operand(&x);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

static void gc_ln(kiln_ctx *ctx, const char *name, vspec xs, int nnorm, bool has_w, bool has_b, bool want_x) {
    char what[200];
    snprintf(what, sizeof what, "kiln_layer_norm gradients, %s", name);
    kiln_scope_begin(ctx);
    operand x, w = {0}, b = {0};
    bool ok = make_operand(ctx, &xs, -2, 2, &x);
    int lead = x.hv.ndim - nnorm;
    vspec plain = {nnorm, {0}, VW_NONE, {0}};
    for (int d = 0; d < nnorm; d++) plain.shape[d] = x.hv.shape[lead + d];
    if (has_w) ok &= make_operand(ctx, &plain, 0.5f, 1.5f, &w);
    if (has_b) ok &= make_operand(ctx, &plain, -1, 1, &b);
    if (ok) {
        if (want_x) mark(x.t);
        mark(w.t);
        mark(b.t);
        kiln_tensor *y = kiln_layer_norm(ctx, x.t, nnorm, w.t, b.t, 1e-5f);
        ln_ref r = {h_numel(lead, x.hv.shape), h_numel(nnorm, x.hv.shape + lead), has_w, has_b, 1e-5};
        kiln_tensor *xs3[3] = {x.t, w.t, b.t};
        double *hin[3] = {x.d, w.d, b.d};
        bool wanted[3] = {want_x, has_w, has_b};
        gc_check(ctx, what, ln_forward_ref, &r, 3, xs3, hin, wanted, y, GC_ATOL, GC_RTOL);
        check_guards(ctx, what);
    }
    free_operand(&x);
    free_operand(&w);
    free_operand(&b);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

typedef struct mask_ref {
    const double *m;
    int64_t n;
} mask_ref;
static void mask_fn(void *user, double *const *in, double *out) {
    const mask_ref *r = user;
    for (int64_t i = 0; i < r->n; i++) out[i] = in[0][i] * r->m[i];
}

typedef struct emb_ref {
    const int32_t *idx;
    int64_t nidx, dim;
} emb_ref;
static void emb_fn(void *user, double *const *in, double *out) {
    const emb_ref *r = user;
    for (int64_t k = 0; k < r->nidx; k++)
        for (int64_t j = 0; j < r->dim; j++) out[k * r->dim + j] = in[0][r->idx[k] * r->dim + j];
}

static void test_gradients(kiln_ctx *ctx) {
    gc_bn(ctx, "train [5, 3, 4]", (vspec)VSH(3, 5, 3, 4), true, true, true);
    gc_bn(ctx, "train [3, 2] (M = 3)", (vspec)VSH(2, 3, 2), true, true, true);
    gc_bn(ctx, "train [1, 2, 3, 3] N = 1", (vspec)VSH(4, 1, 2, 3, 3), true, true, true);
    gc_bn(ctx, "train transposed [5, 4, 3] -> [5, 3, 4]", (vspec)VT(3, 1, 2, 5, 4, 3), true, true, true);
    gc_bn(ctx, "train [6, 2] no affine", (vspec)VSH(2, 6, 2), true, false, true);
    gc_bn(ctx, "train, weight and bias only", (vspec)VSH(3, 4, 3, 5), true, true, false);
    gc_bn(ctx, "eval [3, 4, 5]", (vspec)VSH(3, 3, 4, 5), false, true, true);
    gc_bn(ctx, "eval sliced view", (vspec)VS(3, 2, 0, 10, 2, 3, 2, 10), false, true, true);

    gc_ln(ctx, "[4, 7]", (vspec)VSH(2, 4, 7), 1, true, true, true);
    gc_ln(ctx, "[1, 9] one row", (vspec)VSH(2, 1, 9), 1, true, true, true);
    gc_ln(ctx, "transposed [3, 6, 5] -> [3, 5, 6] nnorm 2", (vspec)VT(3, 1, 2, 3, 6, 5), 2, true, true, true);
    gc_ln(ctx, "[5, 11] weight only", (vspec)VSH(2, 5, 11), 1, true, false, true);
    gc_ln(ctx, "[5, 11] bias only", (vspec)VSH(2, 5, 11), 1, false, true, true);
    gc_ln(ctx, "[3, 2, 5] no affine", (vspec)VSH(3, 3, 2, 5), 1, false, false, true);
    gc_ln(ctx, "[40, 3] many rows", (vspec)VSH(2, 40, 3), 1, true, true, true);
    gc_ln(ctx, "[6, 4, 5] weight and bias only", (vspec)VSH(3, 6, 4, 5), 2, true, true, false);

    /* dropout: the mask (from kiln_rand_uniform at the same stream position) is fixed */
    kiln_scope_begin(ctx);
    {
        const float p = 0.3f;
        int64_t shape[3] = {5, 7, 11};
        float scale = (float)(1.0 / (1.0 - (double)p));
        kiln_manual_seed(ctx, 77);
        kiln_tensor *u = kiln_rand_uniform(ctx, 0, 1, 3, shape);
        float *uh = h_read(u);
        double m[385];
        for (int i = 0; i < 385; i++) m[i] = uh[i] >= p ? scale : 0;
        free(uh);
        vspec xs = VT(3, 0, 2, 11, 7, 5);
        operand x;
        if (make_operand(ctx, &xs, -2, 2, &x)) {
            mark(x.t);
            kiln_manual_seed(ctx, 77);
            kiln_tensor *y = kiln_dropout(ctx, x.t, p, true);
            mask_ref r = {m, 385};
            bool wanted[1] = {true};
            double *hin[1] = {x.d};
            gc_check(ctx, "kiln_dropout gradient, transposed [5, 7, 11]", mask_fn, &r, 1, &x.t, hin, wanted, y, 1e-6,
                     1e-6);
        }
        free_operand(&x);
        /* eval and p = 0 pass the gradient through; p = 1 gives zeros */
        static const double ones[385] = {0};
        double all1[385];
        for (int i = 0; i < 385; i++) all1[i] = 1;
        struct {
            float p;
            bool train;
            const double *m;
            const char *name;
        } idc[3] = {{0.5f, false, all1, "kiln_dropout gradient, eval"},
                    {0.0f, true, all1, "kiln_dropout gradient, p = 0"},
                    {1.0f, true, ones, "kiln_dropout gradient, p = 1"}};
        for (int k = 0; k < 3; k++) {
            vspec vs = VSH(3, 5, 7, 11);
            operand o;
            if (make_operand(ctx, &vs, -2, 2, &o)) {
                mark(o.t);
                kiln_tensor *y = kiln_dropout(ctx, o.t, idc[k].p, idc[k].train);
                mask_ref r = {idc[k].m, 385};
                bool wanted[1] = {true};
                double *hin[1] = {o.d};
                gc_check(ctx, idc[k].name, mask_fn, &r, 1, &o.t, hin, wanted, y, 1e-6, 1e-6);
            }
            free_operand(&o);
        }
    }
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);

    /* embedding: repeated indices sum their gradient rows; a transposed weight */
    kiln_scope_begin(ctx);
    {
        vspec ws = VT(2, 0, 1, 5, 7); /* weight [7, 5] as a view */
        operand w;
        int32_t idx[12] = {3, 0, 6, 3, 3, 1, 6, 2, 3, 0, 1, 5}; /* row 4 unused, row 3 four times */
        kiln_tensor *ti = kiln_from_host(ctx, idx, KILN_I32, 2, (int64_t[]){3, 4});
        if (make_operand(ctx, &ws, -2, 2, &w)) {
            mark(w.t);
            kiln_tensor *y = kiln_embedding(ctx, w.t, ti);
            emb_ref r = {idx, 12, 5};
            bool wanted[1] = {true};
            double *hin[1] = {w.d};
            gc_check(ctx, "kiln_embedding gradient, transposed weight, [3, 4] indices", emb_fn, &r, 1, &w.t, hin,
                     wanted, y, 1e-6, 1e-6);
        }
        free_operand(&w);
    }
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/* ---- dropout: the mask is the context's Philox stream ---------------------------------------- */

static void test_dropout(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const int64_t n = 100003, m = 37;
    float *xh = malloc(sizeof(float) * (size_t)n);
    h_fill(xh, n, -3, 3);
    kiln_tensor *x = kiln_from_host(ctx, xh, KILN_F32, 1, &n);
    const float ps[] = {0.3f, 0.5f, 0.9f, 1e-3f};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        float p = ps[k], scale = (float)(1.0 / (1.0 - (double)p));
        char what[160];
        /* element i keeps x * scale where kiln_rand_uniform's value at the same stream
         * position is >= p, else x * 0 */
        kiln_manual_seed(ctx, 1234 + k);
        kiln_tensor *u = kiln_rand_uniform(ctx, 0, 1, 1, &n);
        kiln_tensor *tail_ref = kiln_rand_uniform(ctx, 0, 1, 1, &m);
        kiln_manual_seed(ctx, 1234 + k);
        kiln_tensor *y = kiln_dropout(ctx, x, p, true);
        kiln_tensor *tail = kiln_rand_uniform(ctx, 0, 1, 1, &m);
        CHECK(y != NULL, "kiln_dropout p = %g: %s", (double)p, kiln_error_message(ctx));
        if (!y) continue;
        float *uh = h_read(u), *yh = h_read(y);
        double *ref = malloc(sizeof(double) * (size_t)n);
        int64_t kept = 0;
        for (int64_t i = 0; i < n; i++) {
            bool keep = uh[i] >= p;
            kept += keep;
            ref[i] = (double)(keep ? xh[i] * scale : xh[i] * 0.0f);
        }
        snprintf(what, sizeof what, "kiln_dropout p = %g against the Philox stream", (double)p);
        h_compare(what, yh, ref, n, 0, 0);
        /* the kept fraction is 1 - p within 5 standard deviations */
        double frac = (double)kept / (double)n, sd = sqrt((double)p * (1 - p) / (double)n);
        CHECK(fabs(frac - (1 - p)) <= 5 * sd + 1e-12, "kiln_dropout p = %g keeps %.5f of the elements", (double)p,
              frac);
        /* the counter advanced by n: the next draws continue the stream */
        float *t1 = h_read(tail), *t2 = h_read(tail_ref);
        CHECK(memcmp(t1, t2, sizeof(float) * (size_t)m) == 0, "kiln_dropout p = %g: counter not advanced by numel",
              (double)p);
        free(t1);
        free(t2);
        free(uh);
        free(yh);
        free(ref);
    }
    /* a new seed gives another mask; the same seed the same one */
    kiln_manual_seed(ctx, 5);
    kiln_tensor *a = kiln_dropout(ctx, x, 0.5f, true);
    kiln_manual_seed(ctx, 6);
    kiln_tensor *b = kiln_dropout(ctx, x, 0.5f, true);
    kiln_manual_seed(ctx, 5);
    kiln_tensor *c = kiln_dropout(ctx, x, 0.5f, true);
    float *ah = h_read(a), *bh = h_read(b), *ch = h_read(c);
    CHECK(memcmp(ah, bh, sizeof(float) * (size_t)n) != 0, "kiln_dropout: seeds 5 and 6 give the same mask");
    CHECK(memcmp(ah, ch, sizeof(float) * (size_t)n) == 0, "kiln_dropout: seed 5 twice gives different masks");
    free(ah);
    free(bh);
    free(ch);

    /* p = 1, p = 0 and eval draw nothing; p = 1 is x * 0 (NaN stays NaN), the others x */
    float sp[6] = {1.5f, -2.0f, NAN, INFINITY, -0.0f, 3.0f};
    int64_t six = 6;
    kiln_tensor *xs = kiln_from_host(ctx, sp, KILN_F32, 1, &six);
    kiln_manual_seed(ctx, 9);
    kiln_tensor *r0 = kiln_rand_uniform(ctx, 0, 1, 1, &m);
    kiln_manual_seed(ctx, 9);
    kiln_tensor *d1 = kiln_dropout(ctx, xs, 1.0f, true);
    kiln_tensor *d0 = kiln_dropout(ctx, xs, 0.0f, true);
    kiln_tensor *de = kiln_dropout(ctx, xs, 0.7f, false);
    kiln_tensor *r1 = kiln_rand_uniform(ctx, 0, 1, 1, &m);
    float *h0 = h_read(r0), *h1 = h_read(r1);
    CHECK(memcmp(h0, h1, sizeof(float) * (size_t)m) == 0, "kiln_dropout p = 0/1/eval advanced the counter");
    free(h0);
    free(h1);
    double ref1[6], refx[6];
    for (int i = 0; i < 6; i++) {
        ref1[i] = (double)(sp[i] * 0.0f);
        refx[i] = sp[i];
    }
    float *g = h_read(d1);
    h_compare("kiln_dropout p = 1", g, ref1, 6, 0, 0);
    free(g);
    g = h_read(d0);
    h_compare("kiln_dropout p = 0", g, refx, 6, 0, 0);
    free(g);
    g = h_read(de);
    h_compare("kiln_dropout eval", g, refx, 6, 0, 0);
    free(g);
    /* a non-contiguous input: the mask follows the view's row-major order */
    kiln_tensor *base = kiln_from_host(ctx, xh, KILN_F32, 2, (int64_t[]){11, 13});
    kiln_tensor *tv = kiln_transpose(ctx, base, 0, 1);
    kiln_tensor *tc = kiln_contiguous(ctx, tv);
    kiln_manual_seed(ctx, 3);
    kiln_tensor *dv = kiln_dropout(ctx, tv, 0.4f, true);
    kiln_manual_seed(ctx, 3);
    kiln_tensor *dc = kiln_dropout(ctx, tc, 0.4f, true);
    float *vh = h_read(dv), *chh = h_read(dc);
    CHECK(dv && dc && memcmp(vh, chh, sizeof(float) * 143) == 0, "kiln_dropout of a view differs from its copy");
    free(vh);
    free(chh);
    free(xh);
    check_guards(ctx, "kiln_dropout");
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/* ---- embedding ------------------------------------------------------------------------------ */

static void test_embedding(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const int64_t num = 11, dim = 7;
    float wh[77];
    h_fill(wh, 77, -2, 2);
    kiln_tensor *w = kiln_from_host(ctx, wh, KILN_F32, 2, (int64_t[]){num, dim});
    /* weight as a transposed view of a [dim, num] base holding the same values */
    float wt[77];
    for (int r = 0; r < num; r++)
        for (int j = 0; j < dim; j++) wt[j * num + r] = wh[r * dim + j];
    kiln_tensor *wv = kiln_transpose(ctx, kiln_from_host(ctx, wt, KILN_F32, 2, (int64_t[]){dim, num}), 0, 1);
    int32_t idx[30];
    for (int k = 0; k < 30; k++) idx[k] = (k * 7 + k / 3) % (int)num;
    struct {
        const char *name;
        int ndim;
        int64_t shape[3];
        bool transpose;
    } cs[] = {{"0-d index", 0, {0}, false},       {"[1]", 1, {1}, false},
              {"[30]", 1, {30}, false},           {"[5, 6]", 2, {5, 6}, false},
              {"[2, 3, 5]", 3, {2, 3, 5}, false}, {"transposed [6, 5] indices", 2, {6, 5}, true},
              {"[0] no indices", 1, {0}, false},  {"[3, 0]", 2, {3, 0}, false}};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        for (int wk = 0; wk < 2; wk++) {
            char what[160];
            snprintf(what, sizeof what, "kiln_embedding, %s%s", cs[c].name, wk ? ", transposed weight" : "");
            kiln_tensor *ti = kiln_from_host(ctx, idx, KILN_I32, cs[c].ndim, cs[c].shape);
            int64_t ni = h_numel(cs[c].ndim, cs[c].shape);
            int32_t order[30];
            int64_t oshape[4];
            int ond = cs[c].ndim;
            for (int64_t k = 0; k < ni; k++) order[k] = idx[k];
            memcpy(oshape, cs[c].shape, sizeof(int64_t) * 3);
            if (cs[c].transpose) {
                ti = kiln_transpose(ctx, ti, 0, 1);
                int64_t R = cs[c].shape[0], Q = cs[c].shape[1];
                for (int64_t a = 0; a < Q; a++)
                    for (int64_t bb = 0; bb < R; bb++) order[a * R + bb] = idx[bb * Q + a];
                oshape[0] = Q;
                oshape[1] = R;
            }
            oshape[ond] = dim;
            kiln_tensor *y = kiln_embedding(ctx, wk ? wv : w, ti);
            CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
            if (!y) continue;
            CHECK(kiln_tensor_ndim(y) == ond + 1 &&
                      memcmp(kiln_tensor_shape(y), oshape, sizeof(int64_t) * (size_t)(ond + 1)) == 0,
                  "%s: wrong output shape", what);
            double ref[30 * 7];
            for (int64_t k = 0; k < ni; k++)
                for (int64_t j = 0; j < dim; j++) ref[k * dim + j] = wh[order[k] * dim + j];
            float *g = h_read(y);
            h_compare(what, g, ref, ni * dim, 0, 0);
            free(g);
        }
    }
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "kiln_embedding: %d guard regions overwritten: %s", bad, msg);
    /* the backward of a weight no index uses is zero; two lookups accumulate */
    kiln_tensor *wl = kiln_from_host(ctx, wh, KILN_F32, 2, (int64_t[]){num, dim});
    kiln_tensor_set_requires_grad(wl, true);
    int32_t two[2] = {4, 4};
    kiln_tensor *ti = kiln_from_host(ctx, two, KILN_I32, 1, (int64_t[]){2});
    kiln_tensor *y1 = kiln_embedding(ctx, wl, ti);
    kiln_tensor *s = kiln_sum(ctx, y1, 0, NULL, false);
    kiln_backward(s);
    kiln_tensor *gw = kiln_tensor_grad(wl);
    CHECK(gw != NULL, "kiln_embedding: no gradient: %s", kiln_error_message(ctx));
    if (gw) {
        float *g = h_read(gw);
        double ref[77];
        for (int k = 0; k < 77; k++) ref[k] = k / dim == 4 ? 2.0 : 0.0;
        h_compare("kiln_embedding backward, index 4 twice", g, ref, 77, 0, 0);
        free(g);
    }
    /* no indices: the node saves no positions buffer; the gradient is zero */
    kiln_tensor_clear_grad(wl);
    kiln_tensor *none = kiln_from_host(ctx, two, KILN_I32, 1, (int64_t[]){0});
    kiln_tensor *y0 = kiln_embedding(ctx, wl, none);
    CHECK(y0 && kiln_backward(kiln_sum(ctx, y0, 0, NULL, false)) == KILN_OK,
          "kiln_embedding of no indices, backward: %s", kiln_error_message(ctx));
    gw = kiln_tensor_grad(wl);
    CHECK(gw != NULL, "kiln_embedding of no indices: no gradient: %s", kiln_error_message(ctx));
    if (gw) {
        float *g = h_read(gw);
        double ref[77] = {0};
        h_compare("kiln_embedding backward, no indices", g, ref, 77, 0, 0);
        free(g);
    }
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/* ---- PyTorch golden values ---------------------------------------------------------------- */

/* Golden tolerances (see the banner): outputs and running statistics GY_*, gradients
 * GG_*. */
#define GY_ATOL 5e-6
#define GY_RTOL 3e-6
#define GG_ATOL 5e-6
#define GG_RTOL 5e-6

static const golden_tensor *gget(const golden *g, const char *a, const char *b) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", a, b);
    return golden_get(g, name);
}

static kiln_tensor *gleaf(kiln_ctx *ctx, const golden_tensor *t) {
    kiln_tensor *k = golden_upload(ctx, t);
    if (k && !t->is_int) kiln_tensor_set_requires_grad(k, true);
    return k;
}

static void gcmp(const char *name, const char *what, kiln_tensor *got, const golden_tensor *ref, double atol,
                 double rtol) {
    char s[200];
    snprintf(s, sizeof s, "golden %s %s", name, what);
    golden_compare(s, got, ref, atol, rtol);
}

/* A batch-norm case of gen_norm.py: steps calls sharing the running statistics. */
static void golden_bn(kiln_ctx *ctx, const golden *g, const char *name, int steps, bool affine, bool running,
                      bool training, float momentum, float eps) {
    kiln_scope_begin(ctx);
    kiln_tensor *rm = running ? golden_upload(ctx, gget(g, name, "rm0")) : NULL;
    kiln_tensor *rv = running ? golden_upload(ctx, gget(g, name, "rv0")) : NULL;
    for (int s = 0; s < steps; s++) {
        char p[64];
        snprintf(p, sizeof p, "%s.%d", name, s);
        kiln_tensor *x = gleaf(ctx, gget(g, p, "x"));
        kiln_tensor *w = affine ? gleaf(ctx, gget(g, name, "w")) : NULL;
        kiln_tensor *b = affine ? gleaf(ctx, gget(g, name, "b")) : NULL;
        kiln_tensor *y = kiln_batch_norm(ctx, x, rm, rv, w, b, training, momentum, eps);
        CHECK(y != NULL, "golden %s: %s", p, kiln_error_message(ctx));
        if (!y) break;
        gcmp(p, "y", y, gget(g, p, "y"), GY_ATOL, GY_RTOL);
        if (running) {
            gcmp(p, "running_mean", rm, gget(g, p, "rm"), GY_ATOL, GY_RTOL);
            gcmp(p, "running_var", rv, gget(g, p, "rv"), GY_ATOL, GY_RTOL);
        }
        kiln_tensor *gy = golden_upload(ctx, gget(g, p, "gy"));
        CHECK(kiln_backward_ex(y, gy, false) == KILN_OK, "golden %s backward: %s", p, kiln_error_message(ctx));
        gcmp(p, "dx", kiln_tensor_grad(x), gget(g, p, "gx"), GG_ATOL, GG_RTOL);
        if (affine) {
            gcmp(p, "dweight", kiln_tensor_grad(w), gget(g, p, "gw"), GG_ATOL, GG_RTOL);
            gcmp(p, "dbias", kiln_tensor_grad(b), gget(g, p, "gb"), GG_ATOL, GG_RTOL);
        }
    }
    check_guards(ctx, name);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

static void golden_ln(kiln_ctx *ctx, const golden *g, const char *name, int nnorm, bool has_w, bool has_b, float eps) {
    kiln_scope_begin(ctx);
    kiln_tensor *x = gleaf(ctx, gget(g, name, "x"));
    kiln_tensor *w = has_w ? gleaf(ctx, gget(g, name, "w")) : NULL;
    kiln_tensor *b = has_b ? gleaf(ctx, gget(g, name, "b")) : NULL;
    kiln_tensor *y = kiln_layer_norm(ctx, x, nnorm, w, b, eps);
    CHECK(y != NULL, "golden %s: %s", name, kiln_error_message(ctx));
    if (y) {
        gcmp(name, "y", y, gget(g, name, "y"), GY_ATOL, GY_RTOL);
        kiln_tensor *gy = golden_upload(ctx, gget(g, name, "gy"));
        CHECK(kiln_backward_ex(y, gy, false) == KILN_OK, "golden %s backward: %s", name, kiln_error_message(ctx));
        gcmp(name, "dx", kiln_tensor_grad(x), gget(g, name, "gx"), GG_ATOL, GG_RTOL);
        if (has_w) gcmp(name, "dweight", kiln_tensor_grad(w), gget(g, name, "gw"), GG_ATOL, GG_RTOL);
        if (has_b) gcmp(name, "dbias", kiln_tensor_grad(b), gget(g, name, "gb"), GG_ATOL, GG_RTOL);
    }
    check_guards(ctx, name);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "norm")) return;
    golden_bn(ctx, &g, "bn2d", 2, true, true, true, 0.1f, 1e-5f);
    golden_bn(ctx, &g, "bn1d", 2, false, true, true, 0.3f, 1e-5f);
    golden_bn(ctx, &g, "bnnors", 1, true, false, true, 0.1f, 1e-5f);
    golden_bn(ctx, &g, "bneval", 1, true, true, false, 0.1f, 1e-3f);
    golden_bn(ctx, &g, "bnn1", 1, true, true, true, 0.1f, 1e-5f);
    golden_ln(ctx, &g, "ln1", 1, true, true, 1e-5f);
    golden_ln(ctx, &g, "ln2", 2, true, true, 1e-5f);
    golden_ln(ctx, &g, "lnrow", 1, false, false, 1e-5f);
    golden_ln(ctx, &g, "lnw", 1, true, false, 1e-3f);

    /* dropout without randomness: exact (NaN/Inf included) */
    static const struct {
        const char *name;
        float p;
        bool train;
    } dc[] = {{"do_p1", 1.0f, true}, {"do_p0", 0.0f, true}, {"do_eval", 0.5f, false}};
    for (size_t k = 0; k < sizeof dc / sizeof dc[0]; k++) {
        kiln_scope_begin(ctx);
        kiln_tensor *x = gleaf(ctx, golden_get(&g, "do.x"));
        kiln_tensor *y = kiln_dropout(ctx, x, dc[k].p, dc[k].train);
        CHECK(y != NULL, "golden %s: %s", dc[k].name, kiln_error_message(ctx));
        if (y) {
            gcmp(dc[k].name, "y", y, gget(&g, dc[k].name, "y"), 0, 0);
            kiln_tensor *gy = golden_upload(ctx, golden_get(&g, "do.gy"));
            CHECK(kiln_backward_ex(y, gy, false) == KILN_OK, "golden %s backward: %s", dc[k].name,
                  kiln_error_message(ctx));
            gcmp(dc[k].name, "dx", kiln_tensor_grad(x), gget(&g, dc[k].name, "gx"), 0, 0);
        }
        check_guards(ctx, dc[k].name);
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
    }

    /* embedding: forward exact; backward sums of up to 4 rows (rtol 1e-6) */
    static const char *const ec[] = {"emb2d", "emb1d"};
    for (size_t k = 0; k < 2; k++) {
        kiln_scope_begin(ctx);
        kiln_tensor *w = gleaf(ctx, golden_get(&g, "emb.w"));
        kiln_tensor *idx = golden_upload(ctx, gget(&g, ec[k], "idx"));
        kiln_tensor *y = kiln_embedding(ctx, w, idx);
        CHECK(y != NULL, "golden %s: %s", ec[k], kiln_error_message(ctx));
        if (y) {
            gcmp(ec[k], "y", y, gget(&g, ec[k], "y"), 0, 0);
            kiln_tensor *gy = golden_upload(ctx, gget(&g, ec[k], "gy"));
            CHECK(kiln_backward_ex(y, gy, false) == KILN_OK, "golden %s backward: %s", ec[k], kiln_error_message(ctx));
            gcmp(ec[k], "dweight", kiln_tensor_grad(w), gget(&g, ec[k], "gw"), 1e-7, 1e-6);
        }
        check_guards(ctx, ec[k]);
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
    }
    golden_close(&g);
}

/* ---- errors and leaks ---------------------------------------------------------------------- */

/* Expects the op just called to have returned NULL with status st and a message holding
 * every string of want[]; clears the error. */
/* kiln_embedding checks its indices on the device: the op returns its tensor and the next
 * call that waits (kiln_sync here) reports a bad index. NULL when it did. */
static kiln_tensor *waited(kiln_ctx *ctx, kiln_tensor *t) {
    if (t && kiln_sync(ctx) != KILN_OK) {
        kiln_tensor_free(t);
        return NULL;
    }
    return t;
}

static void expect_err(kiln_ctx *ctx, kiln_tensor *got, kiln_status st, const char *what, const char *w1,
                       const char *w2, const char *w3) {
    const char *msg = kiln_error_message(ctx);
    CHECK(got == NULL, "%s: expected an error, got a tensor", what);
    CHECK(kiln_error_status(ctx) == st, "%s: status %s, expected %s (%s)", what,
          kiln_status_name(kiln_error_status(ctx)), kiln_status_name(st), msg);
    const char *ws[3] = {w1, w2, w3};
    for (int k = 0; k < 3; k++)
        if (ws[k]) CHECK(strstr(msg, ws[k]) != NULL, "%s: message \"%s\" lacks \"%s\"", what, msg, ws[k]);
    kiln_error_clear(ctx);
}

static void test_errors(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_ones(ctx, 3, (int64_t[]){4, 3, 5});
    kiln_tensor *v3 = kiln_ones(ctx, 1, (int64_t[]){3});
    kiln_tensor *v4 = kiln_ones(ctx, 1, (int64_t[]){4});
    int32_t ib[3] = {0, 1, 2};
    kiln_tensor *ii = kiln_from_host(ctx, ib, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor *r;

    /* batch norm */
    r = kiln_batch_norm(ctx, NULL, v3, v3, NULL, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_NULL, "batch norm NULL input", "kiln_batch_norm", NULL, NULL);
    kiln__fail(ctx, KILN_ERR_SHAPE, "an earlier failure");
    r = kiln_batch_norm(ctx, NULL, v3, v3, NULL, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_SHAPE, "batch norm NULL propagation keeps the first error", "an earlier failure", NULL,
               NULL);
    r = kiln_batch_norm(NULL, x, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f);
    CHECK(r == NULL, "batch norm with a NULL context");
    r = kiln_batch_norm(ctx, v3, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_SHAPE, "batch norm 1-D", "kiln_batch_norm", "[3]", NULL);
    r = kiln_batch_norm(ctx, x, NULL, NULL, v4, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_SHAPE, "batch norm weight size", "kiln_batch_norm", "[4]", "[4, 3, 5]");
    r = kiln_batch_norm(ctx, x, v4, v4, NULL, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_SHAPE, "batch norm running_mean size", "running_mean", "[4, 3, 5]", NULL);
    r = kiln_batch_norm(ctx, x, NULL, NULL, NULL, ii, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_DTYPE, "batch norm i32 bias", "kiln_batch_norm", "bias", "i32");
    r = kiln_batch_norm(ctx, ii, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_DTYPE, "batch norm i32 input", "kiln_batch_norm", "i32", NULL);
    r = kiln_batch_norm(ctx, x, v3, NULL, NULL, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "batch norm running_mean alone", "running_var", NULL, NULL);
    r = kiln_batch_norm(ctx, x, NULL, NULL, NULL, NULL, false, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "batch norm eval without statistics", "eval", "[4, 3, 5]", NULL);
    r = kiln_batch_norm(ctx, x, NULL, NULL, NULL, NULL, true, 0.1f, -1.0f);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "batch norm negative eps", "eps", NULL, NULL);
    kiln_tensor *one = kiln_ones(ctx, 2, (int64_t[]){1, 3});
    kiln_tensor *one3 = kiln_ones(ctx, 3, (int64_t[]){1, 3, 1});
    r = kiln_batch_norm(ctx, one, v3, v3, NULL, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_SHAPE, "batch norm [1, 3] training", "more than 1 value per channel", "[1, 3]", NULL);
    r = kiln_batch_norm(ctx, one3, NULL, NULL, NULL, NULL, true, 0.1f, 1e-5f);
    expect_err(ctx, r, KILN_ERR_SHAPE, "batch norm [1, 3, 1] training", "more than 1 value per channel", NULL, NULL);
    r = kiln_batch_norm(ctx, one, v3, v3, NULL, NULL, false, 0.1f, 1e-5f); /* eval: fine */
    CHECK(r != NULL, "batch norm [1, 3] eval: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* layer norm */
    r = kiln_layer_norm(ctx, NULL, 1, NULL, NULL, 1e-5f);
    expect_err(ctx, r, KILN_ERR_NULL, "layer norm NULL input", "kiln_layer_norm", NULL, NULL);
    r = kiln_layer_norm(ctx, x, 0, NULL, NULL, 1e-5f);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "layer norm nnorm 0", "kiln_layer_norm", "nnorm 0", "[4, 3, 5]");
    r = kiln_layer_norm(ctx, x, 4, NULL, NULL, 1e-5f);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "layer norm nnorm 4", "kiln_layer_norm", "nnorm 4", NULL);
    r = kiln_layer_norm(ctx, x, 1, v3, NULL, 1e-5f);
    expect_err(ctx, r, KILN_ERR_SHAPE, "layer norm weight shape", "kiln_layer_norm", "weight [3]", "[5]");
    r = kiln_layer_norm(ctx, x, 2, NULL, v3, 1e-5f);
    expect_err(ctx, r, KILN_ERR_SHAPE, "layer norm bias shape", "bias [3]", "[3, 5]", NULL);
    r = kiln_layer_norm(ctx, ii, 1, NULL, NULL, 1e-5f);
    expect_err(ctx, r, KILN_ERR_DTYPE, "layer norm i32", "kiln_layer_norm", "i32", NULL);
    r = kiln_layer_norm(ctx, x, 1, NULL, NULL, NAN);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "layer norm eps NaN", "eps", NULL, NULL);

    /* dropout */
    const float bad_p[] = {-0.1f, 1.5f, NAN, INFINITY};
    for (int k = 0; k < 4; k++) {
        for (int t = 0; t < 2; t++) {
            r = kiln_dropout(ctx, x, bad_p[k], t);
            expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "dropout bad p", "kiln_dropout", "outside [0, 1]",
                       "[4, 3, 5]");
        }
    }
    r = kiln_dropout(ctx, ii, 0.5f, true);
    expect_err(ctx, r, KILN_ERR_DTYPE, "dropout i32", "kiln_dropout", "i32", NULL);
    r = kiln_dropout(ctx, NULL, 0.5f, true);
    expect_err(ctx, r, KILN_ERR_NULL, "dropout NULL", "kiln_dropout", NULL, NULL);

    /* embedding */
    kiln_tensor *w = kiln_ones(ctx, 2, (int64_t[]){3, 4});
    int32_t badi[4] = {0, 2, 3, 1};
    kiln_tensor *bi = kiln_from_host(ctx, badi, KILN_I32, 2, (int64_t[]){2, 2});
    r = waited(ctx, kiln_embedding(ctx, w, bi));
    expect_err(ctx, r, KILN_ERR_RANGE, "embedding index 3", "kiln_embedding", "index 3 at position 2", "[3, 4]");
    badi[2] = -1;
    bi = kiln_from_host(ctx, badi, KILN_I32, 2, (int64_t[]){2, 2});
    r = waited(ctx, kiln_embedding(ctx, w, bi));
    expect_err(ctx, r, KILN_ERR_RANGE, "embedding index -1", "index -1", NULL, NULL);
    /* with the weight's gradient (the backward's positions are sorted on the device) */
    kiln_tensor_set_requires_grad(w, true);
    r = waited(ctx, kiln_embedding(ctx, w, bi));
    expect_err(ctx, r, KILN_ERR_RANGE, "embedding index -1, grad", "kiln_embedding", "index -1 at position 2",
               "[3, 4]");
    kiln_tensor_set_requires_grad(w, false);
    r = kiln_embedding(ctx, w, v3);
    expect_err(ctx, r, KILN_ERR_DTYPE, "embedding f32 indices", "kiln_embedding", "i32", NULL);
    r = kiln_embedding(ctx, v4, ii);
    expect_err(ctx, r, KILN_ERR_SHAPE, "embedding 1-D weight", "kiln_embedding", "[4]", "2-D");
    r = kiln_embedding(ctx, w, NULL);
    expect_err(ctx, r, KILN_ERR_NULL, "embedding NULL indices", "kiln_embedding", NULL, NULL);
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "error paths leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - before));

    /* allocation failures at every step of each op: NULL, an error, no leaked tensor */
    kiln_scope_begin(ctx);
    kiln_tensor *xg = kiln_ones(ctx, 3, (int64_t[]){4, 3, 5});
    kiln_tensor *xt = kiln_transpose(ctx, xg, 1, 2);
    kiln_tensor *rm = kiln_zeros(ctx, 1, (int64_t[]){5}), *rv = kiln_ones(ctx, 1, (int64_t[]){5});
    kiln_tensor *wg = kiln_ones(ctx, 1, (int64_t[]){5}), *bg = kiln_zeros(ctx, 1, (int64_t[]){5});
    kiln_tensor *we = kiln_ones(ctx, 2, (int64_t[]){6, 3});
    ii = kiln_from_host(ctx, ib, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor_set_requires_grad(xg, true);
    kiln_tensor_set_requires_grad(wg, true);
    kiln_tensor_set_requires_grad(we, true);
    int64_t base = kiln_ctx_num_tensors(ctx);
    for (int op = 0; op < 4; op++) {
        for (int nth = 1; nth <= 8; nth++) {
            kiln__pool_fail_after(ctx, nth);
            kiln_tensor *o = op == 0   ? kiln_batch_norm(ctx, xt, rm, rv, wg, bg, true, 0.1f, 1e-5f)
                             : op == 1 ? kiln_layer_norm(ctx, xt, 2, NULL, NULL, 1e-5f)
                             : op == 2 ? kiln_dropout(ctx, xt, 0.5f, true)
                                       : kiln_embedding(ctx, we, ii);
            kiln__pool_fail_after(ctx, 0);
            if (o) {
                kiln_tensor_free(o);
                CHECK_OK(ctx);
            } else {
                CHECK(kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "op %d, failing allocation %d: %s", op, nth,
                      kiln_error_message(ctx));
            }
            kiln_error_clear(ctx);
            CHECK(kiln_ctx_num_tensors(ctx) == base, "op %d, failing allocation %d: %lld tensors leaked", op, nth,
                  (long long)(kiln_ctx_num_tensors(ctx) - base));
        }
    }
    kiln_scope_end(ctx);

    /* a full forward/backward of every op inside a scope leaves nothing behind */
    before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    rm = kiln_zeros(ctx, 1, (int64_t[]){3});
    rv = kiln_ones(ctx, 1, (int64_t[]){3});
    ii = kiln_from_host(ctx, ib, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor *p = kiln_ones(ctx, 3, (int64_t[]){4, 3, 5});
    kiln_tensor_set_requires_grad(p, true);
    kiln_tensor *y = kiln_batch_norm(ctx, p, rm, rv, NULL, NULL, true, 0.1f, 1e-5f);
    y = kiln_layer_norm(ctx, y, 1, NULL, NULL, 1e-5f);
    y = kiln_dropout(ctx, y, 0.2f, true);
    kiln_tensor *ew = kiln_ones(ctx, 2, (int64_t[]){6, 3});
    kiln_tensor_set_requires_grad(ew, true);
    kiln_tensor *e = kiln_embedding(ctx, ew, ii);
    kiln_tensor *s1 = kiln_sum(ctx, y, 0, NULL, false), *s2 = kiln_sum(ctx, e, 0, NULL, false);
    kiln_tensor *loss = kiln_add(ctx, s1, s2);
    CHECK(kiln_backward(loss) == KILN_OK, "backward through every op: %s", kiln_error_message(ctx));
    CHECK(kiln_tensor_grad(p) && kiln_tensor_grad(ew), "missing gradients");
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "a training step leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
    kiln_error_clear(ctx);
}

/* ---- running statistics: two training calls, then eval -------------------------------------- */

/* The running statistics follow torch's rule over two calls (momentum, unbiased variance),
 * also with grad mode off; eval then normalises with them. */
static void test_running(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const int64_t N = 6, C = 4, S = 7, n = N * C * S;
    double rm[4] = {0, 0, 0, 0}, rv[4] = {1, 1, 1, 1};
    kiln_tensor *trm = make_vec(ctx, rm, C, false, NULL), *trv = make_vec(ctx, rv, C, false, NULL);
    const float mom = 0.25f;
    double *xd = malloc(sizeof(double) * (size_t)n), *yref = malloc(sizeof(double) * (size_t)n);
    float *xf = malloc(sizeof(float) * (size_t)n);
    for (int call = 0; call < 3; call++) {
        bool train = call < 2;
        for (int64_t i = 0; i < n; i++) xd[i] = xf[i] = h_uniform(-1, 3) * (float)(call + 1);
        kiln_tensor *x = kiln_from_host(ctx, xf, KILN_F32, 3, (int64_t[]){N, C, S});
        bool prev = kiln_ctx_set_grad_enabled(ctx, call != 1);
        kiln_tensor *y = kiln_batch_norm(ctx, x, trm, trv, NULL, NULL, train, mom, 1e-5f);
        kiln_ctx_set_grad_enabled(ctx, prev);
        double mean[4], var[4];
        bn_ref r = {N, C, S, train, false, false, 1e-5, rm, rv};
        double *in[3] = {xd, NULL, NULL};
        bn_forward_ref(&r, in, yref, mean, var);
        float *g = y ? h_read(y) : NULL;
        CHECK(y != NULL, "running test call %d: %s", call, kiln_error_message(ctx));
        if (g)
            h_compare(train ? "kiln_batch_norm training call" : "kiln_batch_norm eval after two calls", g, yref, n,
                      FWD_ATOL, FWD_RTOL);
        free(g);
        if (train) {
            for (int c = 0; c < C; c++) {
                rm[c] = (1 - (double)mom) * rm[c] + mom * mean[c];
                rv[c] = (1 - (double)mom) * rv[c] + mom * var[c] * (double)(N * S) / (double)(N * S - 1);
            }
        }
        float *hm = h_read(trm), *hv = h_read(trv);
        h_compare("running_mean", hm, rm, C, RUN_ATOL, RUN_RTOL);
        h_compare("running_var", hv, rv, C, RUN_ATOL, RUN_RTOL);
        /* the next reference uses what the device holds */
        for (int c = 0; c < C; c++) {
            rm[c] = hm[c];
            rv[c] = hv[c];
        }
        free(hm);
        free(hv);
    }
    free(xd);
    free(xf);
    free(yref);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/*
 * Batch norm of planes longer than one unit of the plane kernels (norm.cl's BN_SEG 1024:
 * planes of 1100 floats are two segments, the second 76 long, not a multiple of the float8
 * loads), data around 5, in training and eval: output, dx, dw and db against the closed
 * forms in double (train: dx = w*rstd*(dy - mean(dy) - xhat*mean(dy*xhat)), eval: w*rstd*dy;
 * dw = sum dy*xhat, db = sum dy). Forward bound as FWD_ATOL plus half an ulp of 5 in the
 * float mean over the standard deviation 0.58; gradients as gc_check's (1e-5 of the largest
 * magnitude, rtol 1e-5).
 */
static void test_bn_long_planes(kiln_ctx *ctx) {
    const int64_t N = 3, C = 2, S = 1100, M = N * S, n = N * C * S;
    for (int train = 1; train >= 0; train--) {
        kiln_scope_begin(ctx);
        float *xf = malloc(sizeof(float) * (size_t)n), *dyf = malloc(sizeof(float) * (size_t)n);
        double *xd = malloc(sizeof(double) * (size_t)n), *dyd = malloc(sizeof(double) * (size_t)n);
        double *yref = malloc(sizeof(double) * (size_t)n), *dxref = malloc(sizeof(double) * (size_t)n);
        h_fill(xf, n, 4.0f, 6.0f);
        h_fill(dyf, n, -1.0f, 1.0f);
        for (int64_t i = 0; i < n; i++) xd[i] = xf[i], dyd[i] = dyf[i];
        double wv[2] = {0.75, 1.25}, bv[2] = {0.5, -0.25}, rm[2] = {4.9, 5.1}, rv[2] = {0.3, 0.36};
        double mean[2], var[2], dwref[2], dbref[2];
        kiln_tensor *x = kiln_from_host(ctx, xf, KILN_F32, 3, (int64_t[]){N, C, S});
        kiln_tensor *dy = kiln_from_host(ctx, dyf, KILN_F32, 3, (int64_t[]){N, C, S});
        kiln_tensor *w = make_vec(ctx, wv, C, false, NULL), *b = make_vec(ctx, bv, C, false, NULL);
        kiln_tensor *trm = make_vec(ctx, rm, C, false, NULL), *trv = make_vec(ctx, rv, C, false, NULL);
        kiln_tensor_set_requires_grad(x, true);
        kiln_tensor_set_requires_grad(w, true);
        kiln_tensor_set_requires_grad(b, true);
        kiln_tensor *y = kiln_batch_norm(ctx, x, trm, trv, w, b, train, 0.1f, 1e-5f);
        bn_ref r = {N, C, S, train, true, true, 1e-5, rm, rv};
        double *in[3] = {xd, wv, bv};
        bn_forward_ref(&r, in, yref, mean, var);
        for (int64_t c = 0; c < C; c++) {
            double rs = 1.0 / sqrt(var[c] + 1e-5), A = 0, B = 0;
            for (int64_t q = 0; q < N; q++)
                for (int64_t j = 0; j < S; j++) {
                    int64_t i = (q * C + c) * S + j;
                    A += dyd[i];
                    B += dyd[i] * (xd[i] - mean[c]) * rs;
                }
            dbref[c] = A;
            dwref[c] = B;
            for (int64_t q = 0; q < N; q++)
                for (int64_t j = 0; j < S; j++) {
                    int64_t i = (q * C + c) * S + j;
                    double xh = (xd[i] - mean[c]) * rs;
                    dxref[i] = wv[c] * rs * (train ? dyd[i] - A / (double)M - xh * B / (double)M : dyd[i]);
                }
        }
        kiln_tensor *l = y ? kiln_sum(ctx, kiln_mul(ctx, y, dy), 0, NULL, false) : NULL;
        CHECK(l && kiln_backward(l) == KILN_OK, "batch norm of long planes (%s): %s", train ? "train" : "eval",
              kiln_error_message(ctx));
        const char *what = train ? "kiln_batch_norm [3, 2, 1100], training" : "kiln_batch_norm [3, 2, 1100], eval";
        float *got = y ? h_read(y) : NULL;
        if (got) h_compare(what, got, yref, n, FWD_ATOL + 2.4e-7 / 0.58, FWD_RTOL);
        free(got);
        kiln_tensor *grads[3] = {kiln_tensor_grad(x), kiln_tensor_grad(w), kiln_tensor_grad(b)};
        const double *refs[3] = {dxref, dwref, dbref};
        const int64_t cnt[3] = {n, C, C};
        static const char *const names[3] = {"dx", "dw", "db"};
        for (int k = 0; k < 3; k++) {
            CHECK(grads[k] != NULL, "%s: no %s", what, names[k]);
            float *g = grads[k] ? h_read(grads[k]) : NULL;
            double big = 0;
            for (int64_t i = 0; i < cnt[k]; i++) big = fabs(refs[k][i]) > big ? fabs(refs[k][i]) : big;
            char w2[128];
            snprintf(w2, sizeof w2, "%s: %s", what, names[k]);
            if (g) h_compare(w2, g, refs[k], cnt[k], 1e-5 * big, 1e-5);
            free(g);
        }
        free(xf);
        free(dyf);
        free(xd);
        free(dyd);
        free(yref);
        free(dxref);
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
    }
}

/* One run of relu(batch norm(x) + residual) for test_bn_relu: fused (kiln__batch_norm_relu)
 * or as the three ops, from the same host data, with fresh running statistics; the output,
 * the running statistics and the gradients of x, w, b and the residual (a seed dy) read
 * back into out[0..6] (NULL where absent). */
static void bn_relu_run(kiln_ctx *ctx, bool fused, const int64_t *shape, int rmode, bool train, const float *xf,
                        const float *rf, const float *dyf, float **out) {
    const int64_t C = shape[1];
    kiln_scope_begin(ctx);
    float wv[8], bv[8], rmv[8], rvv[8];
    for (int c = 0; c < C; c++)
        wv[c] = c % 2 ? -0.75f + 0.125f * c : 1.25f, bv[c] = 0.25f * (c - 2), rmv[c] = 0.1f * c, rvv[c] = 0.5f + c;
    kiln_tensor *x = kiln_from_host(ctx, xf, KILN_F32, 4, shape);
    kiln_tensor *w = kiln_from_host(ctx, wv, KILN_F32, 1, &C), *b = kiln_from_host(ctx, bv, KILN_F32, 1, &C);
    kiln_tensor *rm = kiln_from_host(ctx, rmv, KILN_F32, 1, &C), *rv = kiln_from_host(ctx, rvv, KILN_F32, 1, &C);
    kiln_tensor *r = NULL;
    if (rmode == 1) r = kiln_from_host(ctx, rf, KILN_F32, 4, shape);
    if (rmode == 2) /* a view: the residual stored with H and W swapped */
        r = kiln_transpose(
            ctx, kiln_from_host(ctx, rf, KILN_F32, 4, (int64_t[]){shape[0], shape[1], shape[3], shape[2]}), 2, 3);
    kiln_tensor *leaves[4] = {x, w, b, r};
    for (int k = 0; k < 4; k++)
        if (leaves[k]) kiln_tensor_set_requires_grad(leaves[k], true);
    kiln_tensor *y;
    if (fused) {
        y = kiln__batch_norm_relu(ctx, x, r, rm, rv, w, b, train, 0.1f, 1e-5f);
    } else {
        y = kiln_batch_norm(ctx, x, rm, rv, w, b, train, 0.1f, 1e-5f);
        y = kiln_relu(ctx, r ? kiln_add(ctx, y, r) : y);
    }
    kiln_tensor *seed = kiln_from_host(ctx, dyf, KILN_F32, 4, shape);
    CHECK(y && kiln_backward_ex(y, seed, false) == KILN_OK, "batch norm + relu (%s): %s", fused ? "fused" : "ops",
          kiln_error_message(ctx));
    kiln_tensor *got[7] = {
        y, rm, rv, kiln_tensor_grad(x), kiln_tensor_grad(w), kiln_tensor_grad(b), r ? kiln_tensor_grad(r) : NULL};
    for (int k = 0; k < 7; k++) out[k] = y && got[k] ? h_read(got[k]) : NULL;
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
}

/* kiln__batch_norm_relu (the fused op of the residual blocks) against the three ops it
 * replaces: bit for bit, forward, running statistics and every gradient, training and
 * eval, without a residual, with one and with a strided view; planes long enough for the
 * plane kernels and too short for them (the three ops run then), half of the outputs
 * clipped by the ReLU and exact zeros before it. */
static void test_bn_relu(kiln_ctx *ctx) {
    static const int64_t shapes[2][4] = {{3, 4, 5, 7}, {2, 3, 2, 3}};
    for (int sh = 0; sh < 2; sh++)
        for (int train = 1; train >= 0; train--)
            for (int rmode = 0; rmode < 3; rmode++) {
                const int64_t *shape = shapes[sh];
                int64_t n = shape[0] * shape[1] * shape[2] * shape[3], C = shape[1];
                float *xf = malloc(sizeof(float) * (size_t)n), *rf = malloc(sizeof(float) * (size_t)n);
                float *dyf = malloc(sizeof(float) * (size_t)n);
                h_fill(xf, n, -1.0f, 1.0f);
                h_fill(rf, n, -1.0f, 1.0f);
                h_fill(dyf, n, -1.0f, 1.0f);
                if (rmode) /* an output exactly 0 before the ReLU: its gradient is 0 */
                    rf[0] = 0.0f, xf[0] = 0.0f;
                float *a[7], *f[7];
                bn_relu_run(ctx, false, shape, rmode, train, xf, rf, dyf, a);
                bn_relu_run(ctx, true, shape, rmode, train, xf, rf, dyf, f);
                static const char *const names[7] = {"output", "running_mean", "running_var", "dx",
                                                     "dw",     "db",           "d residual"};
                const int64_t cnt[7] = {n, C, C, n, C, C, n};
                int zeros = 0;
                for (int64_t i = 0; a[0] && i < n; i++) zeros += a[0][i] == 0.0f;
                CHECK(zeros > n / 8 && zeros < n - n / 8, "batch norm + relu: %d of %lld outputs clipped", zeros,
                      (long long)n);
                for (int k = 0; k < 7; k++) {
                    bool want = k < 6 || rmode;
                    CHECK((a[k] != NULL) == want && (f[k] != NULL) == want, "batch norm + relu: %s missing", names[k]);
                    if (a[k] && f[k])
                        CHECK(memcmp(a[k], f[k], sizeof(float) * (size_t)cnt[k]) == 0,
                              "kiln__batch_norm_relu [%lld, %lld, %lld, %lld] %s, residual %s: %s differs from "
                              "kiln_batch_norm + kiln_add + kiln_relu",
                              (long long)shape[0], (long long)C, (long long)shape[2], (long long)shape[3],
                              train ? "training" : "eval",
                              rmode == 0   ? "none"
                              : rmode == 1 ? "contiguous"
                                           : "a view",
                              names[k]);
                    free(a[k]);
                    free(f[k]);
                }
                free(xf);
                free(rf);
                free(dyf);
            }
}

static void guarded(kiln_ctx *ctx, const char *name, void (*fn)(kiln_ctx *)) {
    kiln__set_guard(ctx, 67);
    kiln_scope_begin(ctx);
    fn(ctx);
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "%s: %d guard regions overwritten: %s", name, bad, msg);
    kiln_scope_end(ctx);
    kiln__set_guard(ctx, 0);
}

static void run_all(kiln_ctx *ctx) {
    /* the batch/layer norm kernels in the layout the device picks, then forced to a
     * work-item per group (1), a work-group per group (2), batch norm's plane kernels (3)
     * and layer norm's float8 rows (4) */
    for (int layout = 0; layout <= 4; layout++) {
        kiln__hooks_of(ctx)->norm_layout = layout;
        fprintf(stderr, "norm layout %d\n", layout);
        guarded(ctx, "batch norm forward", test_batch_norm_forward);
        guarded(ctx, "layer norm forward", test_layer_norm_forward);
        guarded(ctx, "specials", test_norm_specials);
        guarded(ctx, "running statistics", test_running);
        guarded(ctx, "gradients", test_gradients);
        guarded(ctx, "batch norm of long planes", test_bn_long_planes);
        guarded(ctx, "batch norm + relu", test_bn_relu);
    }
    kiln__hooks_of(ctx)->norm_layout = 0;
    guarded(ctx, "dropout", test_dropout);
    guarded(ctx, "embedding", test_embedding);
    guarded(ctx, "golden", test_golden);
    test_errors(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run_all);
    return h_finish();
}
