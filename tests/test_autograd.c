/* tests/test_autograd.c - the autograd core: gradients of the foundation ops (elementwise
 * with broadcasting, reductions, matmul, views) against finite differences of plain-C
 * double references, accumulation, no_grad, detach, retain_graph, the errors of backward
 * and the lifetime of graphs under scopes. */
#include "gradcheck.h"

/* ---- host references ---------------------------------------------------------------- */

/* A binary or unary elementwise op over broadcast shapes given by host views. */
typedef struct ew_case {
    const char *name;
    int nin;
    double (*f)(double, double);
    int ndim[2];
    int64_t shape[2][4];
    float lo, hi; /* input range: keeps log/sqrt/pow/div away from their poles */
    float scalar;
    int oshape_ndim;
    int64_t oshape[4];
} ew_case;

static double f_add(double a, double b) { return a + b; }
static double f_sub(double a, double b) { return a - b; }
static double f_mul(double a, double b) { return a * b; }
static double f_div(double a, double b) { return a / b; }
static double f_pow(double a, double b) { return pow(a, b); }
static double f_maximum(double a, double b) { return a > b ? a : b; }
static double f_minimum(double a, double b) { return a < b ? a : b; }
static double f_neg(double a, double b) {
    (void)b;
    return -a;
}
static double f_exp(double a, double b) {
    (void)b;
    return exp(a);
}
static double f_log(double a, double b) {
    (void)b;
    return log(a);
}
static double f_sqrt(double a, double b) {
    (void)b;
    return sqrt(a);
}
static double f_abs(double a, double b) {
    (void)b;
    return fabs(a);
}
static double f_add_s(double a, double s) { return a + s; }
static double f_mul_s(double a, double s) { return a * s; }
static double f_pow_s(double a, double s) { return pow(a, s); }
static double f_min_s(double a, double s) { return a < s ? a : s; }
static double f_max_s(double a, double s) { return a > s ? a : s; }

typedef struct ew_user {
    const ew_case *c;
    h_view v[2];
} ew_user;

/* out[i] = f(a[bcast i], b[bcast i]) in double, reading the host inputs through views. */
static void ew_ref(void *user, double *const *in, double *out) {
    ew_user *u = user;
    const ew_case *c = u->c;
    int64_t n = h_numel(c->oshape_ndim, c->oshape);
    for (int64_t i = 0; i < n; i++) {
        /* broadcast index i of the output into each input (contiguous host copies) */
        double x[2] = {0, c->scalar};
        for (int j = 0; j < c->nin; j++) {
            int64_t rem = i, off = 0, stride = 1;
            int lead = c->oshape_ndim - c->ndim[j];
            for (int d = c->oshape_ndim - 1; d >= 0; d--) {
                int64_t idx = rem % c->oshape[d];
                rem /= c->oshape[d];
                int jd = d - lead;
                if (jd < 0) continue;
                if (c->shape[j][jd] != 1) off += idx * stride;
                stride *= c->shape[j][jd];
            }
            x[j] = in[j][off];
        }
        out[i] = c->f(x[0], x[1]);
    }
}

static kiln_tensor *ew_kiln(kiln_ctx *ctx, const char *name, kiln_tensor *a, kiln_tensor *b, float s) {
#define E(n, call)                                                                                                     \
    if (strcmp(name, n) == 0) return call
    E("add", kiln_add(ctx, a, b));
    E("sub", kiln_sub(ctx, a, b));
    E("mul", kiln_mul(ctx, a, b));
    E("div", kiln_div(ctx, a, b));
    E("pow", kiln_pow(ctx, a, b));
    E("maximum", kiln_maximum(ctx, a, b));
    E("minimum", kiln_minimum(ctx, a, b));
    E("neg", kiln_neg(ctx, a));
    E("exp", kiln_exp(ctx, a));
    E("log", kiln_log(ctx, a));
    E("sqrt", kiln_sqrt(ctx, a));
    E("abs", kiln_abs(ctx, a));
    E("add_scalar", kiln_add_scalar(ctx, a, s));
    E("mul_scalar", kiln_mul_scalar(ctx, a, s));
    E("pow_scalar", kiln_pow_scalar(ctx, a, s));
    E("minimum_scalar", kiln_minimum_scalar(ctx, a, s));
    E("maximum_scalar", kiln_maximum_scalar(ctx, a, s));
#undef E
    return NULL;
}

#define S2(a, b)                                                                                                       \
    { a, b }
static const ew_case ew_cases[] = {
    {"add", 2, f_add, {2, 1}, {{5, 7}, {7}}, -2, 2, 0, 2, {5, 7}},
    {"sub", 2, f_sub, {3, 3}, {{3, 1, 4}, {1, 5, 1}}, -2, 2, 0, 3, {3, 5, 4}},
    {"mul", 2, f_mul, {2, 2}, {{4, 6}, {4, 1}}, -2, 2, 0, 2, {4, 6}},
    {"div", 2, f_div, {1, 2}, {{6}, {5, 6}}, 0.5f, 2, 0, 2, {5, 6}},
    {"pow", 2, f_pow, {2, 2}, {{3, 4}, {3, 4}}, 0.5f, 2, 0, 2, {3, 4}},
    {"maximum", 2, f_maximum, {2, 2}, {{5, 3}, {1, 3}}, -2, 2, 0, 2, {5, 3}},
    {"minimum", 2, f_minimum, {2, 2}, {{5, 3}, {5, 3}}, -2, 2, 0, 2, {5, 3}},
    {"neg", 1, f_neg, {3}, {{2, 3, 5}}, -2, 2, 0, 3, {2, 3, 5}},
    {"exp", 1, f_exp, {2}, {{7, 3}}, -2, 2, 0, 2, {7, 3}},
    {"log", 1, f_log, {2}, {{7, 3}}, 0.5f, 3, 0, 2, {7, 3}},
    {"sqrt", 1, f_sqrt, {1}, {{11}}, 0.5f, 3, 0, 1, {11}},
    {"abs", 1, f_abs, {2}, {{4, 5}}, -2, 2, 0, 2, {4, 5}},
    {"add_scalar", 1, f_add_s, {2}, {{3, 3}}, -2, 2, 1.5f, 2, {3, 3}},
    {"mul_scalar", 1, f_mul_s, {2}, {{3, 3}}, -2, 2, -2.5f, 2, {3, 3}},
    {"pow_scalar", 1, f_pow_s, {2}, {{3, 3}}, 0.5f, 2, 3.0f, 2, {3, 3}},
    {"minimum_scalar", 1, f_min_s, {2}, {{3, 5}}, -2, 2, 0.3f, 2, {3, 5}},
    {"maximum_scalar", 1, f_max_s, {2}, {{3, 5}}, -2, 2, 0.3f, 2, {3, 5}},
};

/* Inputs bounded away from kinks (|x - kink| > 0.05) so central differences with h = 1e-5
 * never straddle one: abs at 0, min/max where a == b or a == s. */
static void away_from_kinks(const ew_case *c, float *h0, float *h1, int64_t n0, int64_t n1) {
    bool kink = strstr(c->name, "imum") || strcmp(c->name, "abs") == 0;
    if (!kink) return;
    for (int64_t k = 0; k < n0; k++) {
        float ref = c->nin == 2 ? 0.0f : (strcmp(c->name, "abs") == 0 ? 0.0f : c->scalar);
        if (c->nin == 2 && n1 > 0) ref = h1[k % n1];
        if (fabsf(h0[k] - ref) < 0.05f) h0[k] = ref + 0.1f;
    }
}

/* Tolerance for every gradient check here: the kiln gradient is computed in float32 with
 * a handful of roundings per element (a product, a quotient, a pow), so its error is a few
 * ulp of the gradient's scale: atol 1e-5 of max|grad| plus rtol 1e-4. The finite
 * differences are exact to ~1e-10 in double. */
#define GC_ATOL 1e-5
#define GC_RTOL 1e-4

static void test_elementwise_grads(kiln_ctx *ctx) {
    for (size_t ci = 0; ci < sizeof ew_cases / sizeof ew_cases[0]; ci++) {
        const ew_case *c = &ew_cases[ci];
        int64_t t0 = kiln_ctx_num_tensors(ctx);
        kiln_scope_begin(ctx);
        float *hf[2] = {NULL, NULL};
        double *hd[2] = {NULL, NULL};
        kiln_tensor *xs[2] = {NULL, NULL};
        int64_t nn[2] = {0, 0};
        for (int j = 0; j < c->nin; j++) {
            nn[j] = h_numel(c->ndim[j], c->shape[j]);
            hf[j] = malloc(sizeof(float) * (size_t)nn[j]);
            h_fill(hf[j], nn[j], c->lo, c->hi);
        }
        away_from_kinks(c, hf[0], hf[1], nn[0], nn[1]);
        for (int j = 0; j < c->nin; j++) {
            hd[j] = malloc(sizeof(double) * (size_t)nn[j]);
            for (int64_t k = 0; k < nn[j]; k++) hd[j][k] = hf[j][k];
            xs[j] = kiln_from_host(ctx, hf[j], KILN_F32, c->ndim[j], c->shape[j]);
            kiln_tensor_set_requires_grad(xs[j], true);
        }
        kiln_tensor *y = ew_kiln(ctx, c->name, xs[0], xs[1], c->scalar);
        CHECK(kiln_tensor_requires_grad(y) && kiln_tensor_has_grad_fn(y), "kiln_%s: output not recorded", c->name);
        ew_user u = {.c = c};
        bool wanted[2] = {true, true};
        char what[64];
        snprintf(what, sizeof what, "kiln_%s", c->name);
        gc_check(ctx, what, ew_ref, &u, c->nin, xs, hd, wanted, y, GC_ATOL, GC_RTOL);
        for (int j = 0; j < c->nin; j++) {
            free(hf[j]);
            free(hd[j]);
        }
        /* leaves live until freed: their grads with them */
        for (int j = 0; j < c->nin; j++) kiln_tensor_free(xs[j]);
        kiln_scope_end(ctx);
        CHECK(kiln_ctx_num_tensors(ctx) == t0, "kiln_%s: %lld tensors leaked", c->name,
              (long long)(kiln_ctx_num_tensors(ctx) - t0));
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
    }
}

/* ---- reductions --------------------------------------------------------------------- */

typedef struct red_user {
    int kind; /* 0 sum, 1 mean, 2 max, 3 min */
    int ndim;
    int64_t shape[4];
    bool red[4];
} red_user;

static void red_ref(void *user, double *const *in, double *out) {
    red_user *u = user;
    int64_t n = h_numel(u->ndim, u->shape), nout = 1, cnt = 1;
    for (int d = 0; d < u->ndim; d++) {
        if (u->red[d])
            cnt *= u->shape[d];
        else
            nout *= u->shape[d];
    }
    for (int64_t o = 0; o < nout; o++) out[o] = u->kind >= 2 ? NAN : 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t rem = i, o = 0, ostride = 1;
        for (int d = u->ndim - 1; d >= 0; d--) {
            int64_t idx = rem % u->shape[d];
            rem /= u->shape[d];
            if (!u->red[d]) {
                o += idx * ostride;
                ostride *= u->shape[d];
            }
        }
        double v = in[0][i];
        if (u->kind <= 1)
            out[o] += v;
        else if (isnan(out[o]) || (u->kind == 2 ? v > out[o] : v < out[o]))
            out[o] = v;
    }
    if (u->kind == 1)
        for (int64_t o = 0; o < nout; o++) out[o] /= (double)cnt;
}

static void test_reduce_grads(kiln_ctx *ctx) {
    static const struct {
        int ndim;
        int64_t shape[4];
        int naxes, axes[3];
        bool keepdim;
    } cs[] = {
        {2, {5, 7}, 1, {1}, false},
        {3, {3, 4, 5}, 2, {0, 2}, true},
        {3, {2, 3, 4}, 0, {0}, false},
        {1, {11}, 1, {-1}, false},
    };
    const char *names[] = {"sum", "mean", "max", "min"};
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
        for (int kind = 0; kind < 4; kind++) {
            kiln_scope_begin(ctx);
            red_user u = {.kind = kind, .ndim = cs[ci].ndim};
            memcpy(u.shape, cs[ci].shape, sizeof u.shape);
            for (int d = 0; d < u.ndim; d++) u.red[d] = cs[ci].naxes == 0;
            for (int a = 0; a < cs[ci].naxes; a++) u.red[(cs[ci].axes[a] + u.ndim) % u.ndim] = true;
            int64_t n = h_numel(u.ndim, u.shape);
            float *hf = malloc(sizeof(float) * (size_t)n);
            double *hd = malloc(sizeof(double) * (size_t)n);
            /* distinct values (a permutation of a grid) so max/min have no ties and finite
             * differences do not cross a change of the arg-extreme */
            for (int64_t k = 0; k < n; k++) hf[k] = (float)((k * 7919) % n) * 0.25f - 3.0f;
            for (int64_t k = 0; k < n; k++) hd[k] = hf[k];
            kiln_tensor *x = kiln_from_host(ctx, hf, KILN_F32, u.ndim, u.shape);
            kiln_tensor_set_requires_grad(x, true);
            kiln_tensor *y = kind == 0   ? kiln_sum(ctx, x, cs[ci].naxes, cs[ci].axes, cs[ci].keepdim)
                             : kind == 1 ? kiln_mean(ctx, x, cs[ci].naxes, cs[ci].axes, cs[ci].keepdim)
                             : kind == 2 ? kiln_max(ctx, x, cs[ci].naxes, cs[ci].axes, cs[ci].keepdim)
                                         : kiln_min(ctx, x, cs[ci].naxes, cs[ci].axes, cs[ci].keepdim);
            char what[64];
            snprintf(what, sizeof what, "kiln_%s case %zu", names[kind], ci);
            bool wanted[1] = {true};
            gc_check(ctx, what, red_ref, &u, 1, &x, &hd, wanted, y, GC_ATOL, GC_RTOL);
            free(hf);
            free(hd);
            kiln_tensor_free(x);
            kiln_scope_end(ctx);
            CHECK_OK(ctx);
            kiln_error_clear(ctx);
        }
    }
    /* ties: torch.amax splits the gradient evenly among equal maxima */
    kiln_scope_begin(ctx);
    float v[4] = {1, 3, 3, 2};
    kiln_tensor *x = kiln_from_host(ctx, v, KILN_F32, 1, (int64_t[]){4});
    kiln_tensor_set_requires_grad(x, true);
    kiln_backward(kiln_max(ctx, x, 0, NULL, false));
    float g[4] = {0};
    kiln_to_host(kiln_tensor_grad(x), g, sizeof g);
    CHECK(g[0] == 0 && g[1] == 0.5f && g[2] == 0.5f && g[3] == 0, "max ties: grad %g %g %g %g, want 0 .5 .5 0", g[0],
          g[1], g[2], g[3]);
    kiln_tensor_free(x);
    kiln_scope_end(ctx);
}

/* ---- matmul ------------------------------------------------------------------------- */

typedef struct mm_user {
    int64_t batch_a, batch_b, batch, m, k, n;
    bool ta, tb, vec_a, vec_b;
} mm_user;

/* C[b] = op(A[b or 0]) op(B[b or 0]); A stored [m,k] or, with ta, [k,m]; the same for B. */
static void mm_ref(void *user, double *const *in, double *out) {
    mm_user *u = user;
    for (int64_t b = 0; b < u->batch; b++) {
        const double *A = in[0] + (u->batch_a > 1 ? b : 0) * u->m * u->k;
        const double *B = in[1] + (u->batch_b > 1 ? b : 0) * u->k * u->n;
        for (int64_t i = 0; i < u->m; i++)
            for (int64_t j = 0; j < u->n; j++) {
                double s = 0;
                for (int64_t p = 0; p < u->k; p++)
                    s += (u->ta ? A[p * u->m + i] : A[i * u->k + p]) * (u->tb ? B[j * u->k + p] : B[p * u->n + j]);
                out[(b * u->m + i) * u->n + j] = s;
            }
    }
}

static void test_matmul_grads(kiln_ctx *ctx) {
    static const struct {
        int64_t ba, bb, m, k, n;
        bool ta, tb, va, vb;
    } cs[] = {
        {0, 0, 5, 7, 3, false, false, false, false}, /* 2-D */
        {0, 0, 4, 6, 5, true, false, false, false},
        {0, 0, 4, 6, 5, false, true, false, false},
        {0, 0, 3, 2, 4, true, true, false, false},
        {3, 0, 4, 5, 6, false, false, false, false}, /* batched A, shared B (broadcast) */
        {2, 2, 3, 4, 5, false, true, false, false},  /* both batched */
        {0, 3, 2, 5, 3, false, false, false, false}, /* shared A, batched B */
        {0, 0, 1, 7, 4, false, false, true, false},  /* vector @ matrix */
        {0, 0, 5, 6, 1, false, false, false, true},  /* matrix @ vector */
        {0, 0, 1, 9, 1, false, false, true, true},   /* dot product */
    };
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
        kiln_scope_begin(ctx);
        mm_user u = {cs[ci].ba ? cs[ci].ba : 1,
                     cs[ci].bb ? cs[ci].bb : 1,
                     1,
                     cs[ci].m,
                     cs[ci].k,
                     cs[ci].n,
                     cs[ci].ta,
                     cs[ci].tb,
                     cs[ci].va,
                     cs[ci].vb};
        u.batch = u.batch_a > u.batch_b ? u.batch_a : u.batch_b;
        int64_t sa[3], sb[3];
        int nda = 0, ndb = 0;
        if (cs[ci].ba) sa[nda++] = cs[ci].ba;
        if (u.vec_a)
            sa[nda++] = u.k;
        else {
            sa[nda++] = u.ta ? u.k : u.m;
            sa[nda++] = u.ta ? u.m : u.k;
        }
        if (cs[ci].bb) sb[ndb++] = cs[ci].bb;
        if (u.vec_b)
            sb[ndb++] = u.k;
        else {
            sb[ndb++] = u.tb ? u.n : u.k;
            sb[ndb++] = u.tb ? u.k : u.n;
        }
        int64_t na = h_numel(nda, sa), nb = h_numel(ndb, sb);
        float *fa = malloc(sizeof(float) * (size_t)na), *fb = malloc(sizeof(float) * (size_t)nb);
        double *da = malloc(sizeof(double) * (size_t)na), *db = malloc(sizeof(double) * (size_t)nb);
        h_fill(fa, na, -1, 1);
        h_fill(fb, nb, -1, 1);
        for (int64_t k = 0; k < na; k++) da[k] = fa[k];
        for (int64_t k = 0; k < nb; k++) db[k] = fb[k];
        kiln_tensor *xs[2] = {kiln_from_host(ctx, fa, KILN_F32, nda, sa), kiln_from_host(ctx, fb, KILN_F32, ndb, sb)};
        kiln_tensor_set_requires_grad(xs[0], true);
        kiln_tensor_set_requires_grad(xs[1], true);
        int flags = (u.ta ? KILN_TRANS_A : 0) | (u.tb ? KILN_TRANS_B : 0);
        kiln_tensor *y = kiln_matmul_ex(ctx, xs[0], xs[1], flags);
        double *hin[2] = {da, db};
        bool wanted[2] = {true, true};
        char what[64];
        snprintf(what, sizeof what, "kiln_matmul case %zu", ci);
        gc_check(ctx, what, mm_ref, &u, 2, xs, hin, wanted, y, GC_ATOL, GC_RTOL);
        free(fa), free(fb), free(da), free(db);
        kiln_tensor_free(xs[0]);
        kiln_tensor_free(xs[1]);
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
    }
}

/* ---- views -------------------------------------------------------------------------- */

/* y = view(x) for a fixed view; the host reference gathers through an h_view model. */
typedef struct view_user {
    h_view v;
    int64_t n;
} view_user;

static void view_ref(void *user, double *const *in, double *out) {
    view_user *u = user;
    for (int64_t i = 0; i < u->n; i++) {
        int64_t rem = i, off = u->v.offset;
        for (int d = u->v.ndim - 1; d >= 0; d--) {
            off += (rem % u->v.shape[d]) * u->v.strides[d];
            rem /= u->v.shape[d];
        }
        out[i] = in[0][off];
    }
}

static void test_view_grads(kiln_ctx *ctx) {
    const int64_t shape[3] = {4, 5, 6};
    const int64_t n = 120;
    for (int kind = 0; kind < 9; kind++) {
        kiln_scope_begin(ctx);
        float hf[120];
        double hd[120];
        h_fill(hf, n, -1, 1);
        for (int k = 0; k < n; k++) hd[k] = hf[k];
        kiln_tensor *x = kiln_from_host(ctx, hf, KILN_F32, 3, shape);
        kiln_tensor_set_requires_grad(x, true);
        kiln_tensor *y = NULL;
        const char *what = "";
        switch (kind) {
        case 0: y = kiln_reshape(ctx, x, 2, (int64_t[]){10, 12}), what = "kiln_reshape"; break;
        case 1: y = kiln_permute(ctx, x, (int[]){2, 0, 1}), what = "kiln_permute"; break;
        case 2: y = kiln_transpose(ctx, x, 0, 2), what = "kiln_transpose"; break;
        case 3: y = kiln_slice(ctx, x, 1, 1, 5, 2), what = "kiln_slice step 2"; break;
        case 4:
            y = kiln_expand(ctx, kiln_slice(ctx, x, 0, 1, 2, 1), 4, (int64_t[]){3, 2, 5, 6}), what = "kiln_expand";
            break;
        case 5: y = kiln_squeeze(ctx, kiln_unsqueeze(ctx, x, 1), 1), what = "kiln_unsqueeze/squeeze"; break;
        case 6: y = kiln_contiguous(ctx, kiln_transpose(ctx, x, 1, 2)), what = "kiln_contiguous"; break;
        case 7: y = kiln_clone(ctx, kiln_slice(ctx, x, 2, -4, 6, 3)), what = "kiln_clone"; break;
        case 8:
            y = kiln_reshape(ctx, kiln_transpose(ctx, x, 0, 1), 1, (int64_t[]){-1}), what = "kiln_reshape (copy)";
            break;
        }
        view_user u = {.n = y ? kiln_tensor_numel(y) : 0};
        /* the host model of the same view (expand via stride 0) */
        h_view v = h_contig(3, shape);
        switch (kind) {
        case 0: v = h_contig(2, (int64_t[]){10, 12}); break;
        case 1: v = (h_view){3, {6, 4, 5}, {1, 30, 6}, 0}; break;
        case 2: v = (h_view){3, {6, 5, 4}, {1, 6, 30}, 0}; break;
        case 3: v = (h_view){3, {4, 2, 6}, {30, 12, 1}, 6}; break;
        case 4: v = (h_view){4, {3, 2, 5, 6}, {0, 0, 6, 1}, 30}; break;
        case 5: break;
        case 6: v = (h_view){3, {4, 6, 5}, {30, 1, 6}, 0}; break;
        case 7: v = (h_view){3, {4, 5, 2}, {30, 6, 3}, 2}; break;
        case 8: v = (h_view){1, {120}, {1}, 0}; break;
        }
        if (kind == 4) { /* [4,5,6] -> slice rows 1..2 -> [1,5,6] -> [3,2,5,6] */
            v = (h_view){4, {3, 2, 5, 6}, {0, 0, 6, 1}, 30};
        }
        if (kind == 8) { /* transpose(0,1) then flatten: element (j,i,k) of [5,4,6] */
            u.v = (h_view){3, {5, 4, 6}, {6, 30, 1}, 0};
        } else {
            u.v = v;
        }
        double *hin[1] = {hd};
        bool wanted[1] = {true};
        gc_check(ctx, what, view_ref, &u, 1, &x, hin, wanted, y, GC_ATOL, GC_RTOL);
        kiln_tensor_free(x);
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
    }
}

/* ---- semantics ---------------------------------------------------------------------- */

static float item_of(kiln_tensor *t) { return t ? kiln_tensor_item(t) : NAN; }

static void test_semantics(kiln_ctx *ctx) {
    int64_t t0 = kiln_ctx_num_tensors(ctx);
    float wv[3] = {1, 2, 3};
    kiln_tensor *w = kiln_from_host(ctx, wv, KILN_F32, 1, (int64_t[]){3});
    CHECK(kiln_tensor_set_requires_grad(w, true) == KILN_OK, "set_requires_grad");

    /* a tensor used twice accumulates both paths: d/dw sum(w*w + w) = 2w + 1 */
    kiln_scope_begin(ctx);
    kiln_tensor *loss = kiln_sum(ctx, kiln_add(ctx, kiln_mul(ctx, w, w), w), 0, NULL, false);
    CHECK(kiln_backward(loss) == KILN_OK, "backward: %s", kiln_error_message(ctx));
    float g[3];
    kiln_to_host(kiln_tensor_grad(w), g, sizeof g);
    CHECK(g[0] == 3 && g[1] == 5 && g[2] == 7, "diamond: grad %g %g %g, want 3 5 7", g[0], g[1], g[2]);

    /* backward twice through a freed graph is an error naming retain_graph */
    CHECK(kiln_backward(loss) != KILN_OK && strstr(kiln_error_message(ctx), "retain_graph"), "second backward: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == t0 + 2, "after the step scope: %lld tensors (want w and its grad)",
          (long long)(kiln_ctx_num_tensors(ctx) - t0));

    /* gradients accumulate across backward calls until zeroed; retain_graph allows two */
    kiln_scope_begin(ctx);
    loss = kiln_sum(ctx, kiln_mul_scalar(ctx, w, 2.0f), 0, NULL, false);
    CHECK(kiln_backward_ex(loss, NULL, true) == KILN_OK, "retain 1: %s", kiln_error_message(ctx));
    CHECK(kiln_backward_ex(loss, NULL, false) == KILN_OK, "retain 2: %s", kiln_error_message(ctx));
    kiln_to_host(kiln_tensor_grad(w), g, sizeof g);
    CHECK(g[0] == 7 && g[1] == 9 && g[2] == 11, "accumulated: %g %g %g, want 7 9 11", g[0], g[1], g[2]);
    CHECK(kiln_tensor_zero_grad(w) == KILN_OK, "zero_grad");
    kiln_to_host(kiln_tensor_grad(w), g, sizeof g);
    CHECK(g[0] == 0 && g[1] == 0 && g[2] == 0, "zero_grad left %g %g %g", g[0], g[1], g[2]);
    kiln_scope_end(ctx);

    /* backward through an intermediate whose graph an earlier backward freed */
    kiln_scope_begin(ctx);
    kiln_tensor *h = kiln_exp(ctx, w);
    kiln_backward(kiln_sum(ctx, h, 0, NULL, false));
    kiln_tensor *l2 = kiln_sum(ctx, kiln_mul(ctx, h, h), 0, NULL, false);
    kiln_status s = kiln_backward(l2);
    CHECK(s != KILN_OK && strstr(kiln_error_message(ctx), "kiln_exp") == NULL &&
              strstr(kiln_error_message(ctx), "freed") != NULL,
          "backward through freed intermediates: status %d: %s", s, kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);

    /* a non-scalar needs a seed */
    kiln_scope_begin(ctx);
    s = kiln_backward(kiln_mul_scalar(ctx, w, 3.0f));
    CHECK(s == KILN_ERR_SHAPE && strstr(kiln_error_message(ctx), "seed"), "non-scalar: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* a seed of the wrong shape */
    s = kiln_backward_ex(kiln_mul_scalar(ctx, w, 3.0f), kiln_ones(ctx, 1, (int64_t[]){4}), false);
    CHECK(s == KILN_ERR_SHAPE && strstr(kiln_error_message(ctx), "[4]") && strstr(kiln_error_message(ctx), "[3]"),
          "bad seed: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);

    /* no_grad: nothing is recorded, backward says why */
    kiln_scope_begin(ctx);
    CHECK(kiln_ctx_set_grad_enabled(ctx, false) == true, "grad mode was on");
    kiln_tensor *y = kiln_sum(ctx, kiln_mul(ctx, w, w), 0, NULL, false);
    CHECK(!kiln_tensor_requires_grad(y) && !kiln_tensor_has_grad_fn(y), "no_grad recorded an op");
    kiln_ctx_set_grad_enabled(ctx, true);
    s = kiln_backward(y);
    CHECK(s != KILN_OK && strstr(kiln_error_message(ctx), "does not require grad"), "no_grad backward: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* detach cuts the graph */
    kiln_tensor *d = kiln_detach(ctx, w);
    CHECK(!kiln_tensor_requires_grad(d), "detach requires grad");
    CHECK(!kiln_tensor_requires_grad(kiln_mul(ctx, d, d)), "op on a detached tensor requires grad");
    /* comparisons and argmax are not differentiable */
    CHECK(!kiln_tensor_requires_grad(kiln_gt(ctx, w, d)), "comparison requires grad");
    CHECK(!kiln_tensor_requires_grad(kiln_argmax(ctx, w, 0, false)), "argmax requires grad");
    /* only f32 leaves, only leaves */
    kiln_tensor *idx = kiln_argmax(ctx, w, 0, false);
    CHECK(kiln_tensor_set_requires_grad(idx, true) == KILN_ERR_DTYPE, "i32 leaf accepted requires_grad");
    kiln_error_clear(ctx);
    CHECK(kiln_tensor_set_requires_grad(kiln_exp(ctx, w), false) == KILN_ERR_INVALID_ARGUMENT, "non-leaf turned off");
    kiln_error_clear(ctx);
    CHECK(kiln_backward(NULL) == KILN_ERR_NULL, "backward(NULL)");
    kiln_scope_end(ctx);

    /* a kept output keeps its graph alive after the scope; freeing it releases the graph */
    int64_t t1 = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_tensor *kept = kiln_tensor_keep(kiln_sum(ctx, kiln_exp(ctx, kiln_mul_scalar(ctx, w, 0.5f)), 0, NULL, false));
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) > t1 + 1, "the kept tensor's graph was freed with the scope");
    kiln_tensor_zero_grad(w);
    CHECK(kiln_backward(kept) == KILN_OK, "backward after the scope: %s", kiln_error_message(ctx));
    kiln_to_host(kiln_tensor_grad(w), g, sizeof g);
    CHECK(fabs(g[1] - 0.5 * exp(1.0)) < 1e-6, "grad after scope %g, want %g", g[1], 0.5 * exp(1.0));
    kiln_tensor_free(kept);
    CHECK(kiln_ctx_num_tensors(ctx) == t1, "graph not released: %lld extra tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - t1));

    /* a scope that ends after an error still frees everything it made */
    kiln_scope_begin(ctx);
    kiln_tensor *bad = kiln_add(ctx, kiln_mul(ctx, w, w), kiln_ones(ctx, 1, (int64_t[]){4}));
    CHECK(bad == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE, "shape error expected");
    kiln_backward(bad);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == t1, "error scope leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - t1));

    /* KILN_CHECK_NUMERICS names the first op that made a NaN */
    kiln_ctx_set_check_numerics(ctx, true);
    kiln_scope_begin(ctx);
    kiln_tensor *r = kiln_sqrt(ctx, kiln_add_scalar(ctx, w, -2.5f)); /* sqrt of -1.5 */
    CHECK(r == NULL && strstr(kiln_error_message(ctx), "kiln_sqrt") && strstr(kiln_error_message(ctx), "NaN"),
          "numerics: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
    kiln_ctx_set_check_numerics(ctx, false);
    kiln_scope_begin(ctx);
    CHECK(item_of(kiln_sum(ctx, w, 0, NULL, false)) == 6.0f, "w changed");
    kiln_scope_end(ctx);
    kiln_tensor_free(w);
    CHECK(kiln_ctx_num_tensors(ctx) == t0, "semantics: %lld tensors left", (long long)(kiln_ctx_num_tensors(ctx) - t0));
    CHECK_OK(ctx);
}

/* An intermediate freed while a later op's node still references it stays alive for the
 * backward, and goes when the graph does. */
static void test_lifetime(kiln_ctx *ctx) {
    int64_t t0 = kiln_ctx_num_tensors(ctx);
    kiln_tensor *a = kiln_full(ctx, 2.0f, 1, (int64_t[]){2});
    kiln_tensor_set_requires_grad(a, true);
    kiln_tensor *b = kiln_exp(ctx, a);
    kiln_tensor *m = kiln_mul(ctx, b, b);
    kiln_tensor *c = kiln_sum(ctx, m, 0, NULL, false);
    kiln_tensor_free(b); /* referenced by the mul's node: stays until that node goes */
    kiln_tensor_free(m);
    CHECK(kiln_ctx_num_tensors(ctx) == t0 + 4, "a, b, m, c expected alive: %lld",
          (long long)(kiln_ctx_num_tensors(ctx) - t0));
    CHECK(kiln_backward(c) == KILN_OK, "backward: %s", kiln_error_message(ctx));
    float g[2];
    kiln_to_host(kiln_tensor_grad(a), g, sizeof g);
    double want = 2 * exp(4.0);
    CHECK(fabs(g[0] - want) < 1e-6 * want, "d sum(exp(a)^2)/da = %g, want %g", g[0], want);
    /* the backward released the graph: b and m are gone, a, its grad and c remain */
    CHECK(kiln_ctx_num_tensors(ctx) == t0 + 3, "after backward: %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - t0));
    kiln_tensor_free(c);
    kiln_tensor_free(a);
    CHECK(kiln_ctx_num_tensors(ctx) == t0, "lifetime: %lld tensors left", (long long)(kiln_ctx_num_tensors(ctx) - t0));
}

/* Pool requests served so far. */
static uint64_t pool_allocs(kiln_ctx *ctx) {
    kiln_pool_stats st;
    kiln_pool_stats_get(ctx, &st);
    return st.allocs;
}

/* Reads t and compares every element with want[i]; returns the first index that differs
 * or -1. */
static int64_t first_diff(kiln_tensor *t, const float *want, int64_t n) {
    float *h = malloc(sizeof(float) * (size_t)n);
    if (!h || kiln_to_host(t, h, sizeof(float) * (size_t)n) != KILN_OK) {
        free(h);
        return 0;
    }
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; i++)
        if (h[i] != want[i]) bad = i;
    free(h);
    return bad;
}

/*
 * Gradient slots: a gradient a backward rule made itself becomes the slot's tensor as it
 * is (kiln__accum_owned), a gradient that is the output's gradient or a view of it (add,
 * reshape/flatten, permute) is copied, so the slot never shares storage with a tensor the
 * backward loop frees. Checked by reusing the freed buffers (same sizes: the pool hands
 * them out again) and reading the gradients back. Also the copy kernels' paths: a
 * contiguous source, an evenly strided one (one merged dim) and a general view.
 */
static void test_grad_slots(kiln_ctx *ctx) {
    int64_t t0 = kiln_ctx_num_tensors(ctx);
    enum { N = 4 * 3 * 5 };
    int64_t sh[3] = {4, 3, 5};
    float xv[N], sv[N], want[N];
    for (int i = 0; i < N; i++) {
        xv[i] = (float)(i % 7) - 3.0f; /* zeros and both signs */
        sv[i] = 0.25f * (float)(i + 1);
    }
    kiln_tensor *x = kiln_from_host(ctx, xv, KILN_F32, 3, sh);
    kiln_tensor *seed = kiln_from_host(ctx, sv, KILN_F32, 3, sh);
    kiln_tensor_set_requires_grad(x, true);

    /* relu: the seed's copy (the output's gradient) and the rule's result, which becomes
     * x's gradient without a third buffer for a copy */
    kiln_scope_begin(ctx);
    kiln_tensor *y = kiln_relu(ctx, x);
    uint64_t a0 = pool_allocs(ctx);
    CHECK(kiln_backward_ex(y, seed, true) == KILN_OK, "relu backward: %s", kiln_error_message(ctx));
    CHECK(pool_allocs(ctx) - a0 == 2, "relu backward: %llu buffers, want 2 (seed copy, gradient)",
          (unsigned long long)(pool_allocs(ctx) - a0));
    for (int i = 0; i < N; i++) want[i] = xv[i] <= 0.0f ? 0.0f : sv[i];
    for (int k = 0; k < 4; k++) kiln_full(ctx, 99.0f, 3, sh); /* take the freed buffers */
    int64_t bad = first_diff(kiln_tensor_grad(x), want, N);
    CHECK(bad < 0, "relu grad element %lld wrong after buffer reuse", (long long)bad);
    /* a second backward adds into the slot, which must be the gradient's own storage */
    CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "relu backward 2: %s", kiln_error_message(ctx));
    for (int i = 0; i < N; i++) want[i] *= 2.0f;
    for (int k = 0; k < 4; k++) kiln_full(ctx, 99.0f, 3, sh);
    bad = first_diff(kiln_tensor_grad(x), want, N);
    CHECK(bad < 0, "relu grad element %lld wrong after accumulation", (long long)bad);
    kiln_scope_end(ctx);

    /* views of the output's gradient: flatten, permute, and add (g itself); each copied */
    const char *what[3] = {"flatten", "permute", "add"};
    for (int c = 0; c < 3; c++) {
        kiln_tensor_clear_grad(x);
        kiln_scope_begin(ctx);
        kiln_tensor *o = c == 0   ? kiln_flatten(ctx, x, 1, 2)
                         : c == 1 ? kiln_permute(ctx, x, (const int[]){2, 0, 1})
                                  : kiln_add(ctx, x, kiln_zeros(ctx, 0, NULL));
        kiln_tensor *sd = NULL;
        if (c == 1) { /* the seed in the permuted shape: element (k, i, j) = sv[i][j][k] */
            float pv[N];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 3; j++)
                    for (int k = 0; k < 5; k++) pv[(k * 4 + i) * 3 + j] = sv[(i * 3 + j) * 5 + k];
            sd = kiln_from_host(ctx, pv, KILN_F32, 3, (int64_t[]){5, 4, 3});
        } else {
            sd = kiln_from_host(ctx, sv, KILN_F32, kiln_tensor_ndim(o), kiln_tensor_shape(o));
        }
        CHECK(kiln_backward_ex(o, sd, false) == KILN_OK, "%s backward: %s", what[c], kiln_error_message(ctx));
        CHECK(kiln_tensor_is_contiguous(kiln_tensor_grad(x)), "%s: grad not contiguous", what[c]);
        for (int k = 0; k < 4; k++) kiln_full(ctx, 99.0f, 3, sh);
        kiln_copy_from_host(sd, xv, sizeof xv); /* the seed changes: the grad must not */
        bad = first_diff(kiln_tensor_grad(x), sv, N);
        CHECK(bad < 0, "%s grad element %lld wrong after buffer reuse", what[c], (long long)bad);
        kiln_scope_end(ctx);
    }

    /* copies through copy_strided: contiguous, a step-3 slice (one strided dim) and a
     * transposed view; and accumulation from a strided gradient into a filled slot */
    kiln_scope_begin(ctx);
    kiln_tensor *flat = kiln_reshape(ctx, kiln_detach(ctx, x), 1, (int64_t[]){N});
    kiln_tensor *c1 = kiln_contiguous(ctx, kiln_slice(ctx, flat, 0, 1, N, 3));
    float h1[N / 3];
    kiln_to_host(c1, h1, sizeof h1);
    bool ok = kiln_tensor_numel(c1) == N / 3;
    for (int i = 0; ok && i < N / 3; i++) ok = h1[i] == xv[1 + 3 * i];
    CHECK(ok, "contiguous copy of a step-3 slice");
    kiln_tensor *c2 = kiln_contiguous(ctx, kiln_permute(ctx, kiln_detach(ctx, x), (const int[]){2, 0, 1}));
    float h2[N];
    kiln_to_host(c2, h2, sizeof h2);
    ok = true;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 5; k++) ok = ok && h2[(k * 4 + i) * 3 + j] == xv[(i * 3 + j) * 5 + k];
    CHECK(ok, "contiguous copy of a permuted view");
    kiln_scope_end(ctx);

    kiln_tensor *w = kiln_zeros(ctx, 1, (int64_t[]){N});
    kiln_tensor_set_requires_grad(w, true);
    kiln_tensor_zero_grad(w);
    kiln_scope_begin(ctx);
    /* sum(w[1::3] * 2) adds 2 at every third element; the slice's backward and the mul's */
    kiln_tensor *l = kiln_sum(ctx, kiln_mul_scalar(ctx, kiln_slice(ctx, w, 0, 1, N, 3), 2.0f), 0, NULL, false);
    CHECK(kiln_backward(l) == KILN_OK, "slice backward: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    kiln_scope_begin(ctx);
    /* then a gradient that is a strided view of the output's: w + w viewed with step 1 */
    kiln_tensor *two = kiln_reshape(ctx, w, 2, (int64_t[]){N / 3, 3});
    kiln_tensor *l2 =
        kiln_sum(ctx, kiln_mul_scalar(ctx, kiln_permute(ctx, two, (const int[]){1, 0}), 0.5f), 0, NULL, false);
    CHECK(kiln_backward(l2) == KILN_OK, "permute backward: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    for (int i = 0; i < N; i++) want[i] = (i % 3 == 1 ? 2.0f : 0.0f) + 0.5f;
    bad = first_diff(kiln_tensor_grad(w), want, N);
    CHECK(bad < 0, "accumulated grad element %lld wrong", (long long)bad);
    kiln_tensor_free(w);

    kiln_tensor_free(seed);
    kiln_tensor_free(x);
    CHECK(kiln_ctx_num_tensors(ctx) == t0, "grad slots: %lld tensors left",
          (long long)(kiln_ctx_num_tensors(ctx) - t0));
    CHECK_OK(ctx);
}

/*
 * A non-leaf's gradient slot may share its storage with the gradient that flowed into it
 * (an add hands its one gradient to both inputs; a reshape a view of its own): such a slot
 * must not be added into in place while another handle reads the storage. x (leaf), u = 2x,
 * v = 5x, s = u + v, t = s + u, loss = sum(t * 1): t's gradient goes to s and to u; s's to
 * u again and to v. u's gradient is then 2, v's 1 (an in-place add into u's slot would
 * make v's 2 as well), so x's gradient is 2 * 2 + 5 * 1 = 9. The same through reshapes.
 */
static void test_shared_slots(kiln_ctx *ctx) {
    int64_t t0 = kiln_ctx_num_tensors(ctx);
    enum { N = 12 };
    float xv[N], want[N];
    for (int i = 0; i < N; i++) xv[i] = (float)i - 4.0f, want[i] = 9.0f;
    for (int shaped = 0; shaped < 2; shaped++) {
        kiln_tensor *x = kiln_from_host(ctx, xv, KILN_F32, 1, (int64_t[]){N});
        kiln_tensor_set_requires_grad(x, true);
        kiln_scope_begin(ctx);
        kiln_tensor *u = kiln_mul_scalar(ctx, x, 2.0f), *v = kiln_mul_scalar(ctx, x, 5.0f);
        if (shaped) { /* reshape views between the adds */
            u = kiln_reshape(ctx, u, 2, (int64_t[]){3, 4});
            v = kiln_reshape(ctx, v, 2, (int64_t[]){3, 4});
        }
        kiln_tensor *sum_uv = kiln_add(ctx, u, v);
        if (shaped) sum_uv = kiln_reshape(ctx, kiln_reshape(ctx, sum_uv, 1, (int64_t[]){N}), 2, (int64_t[]){3, 4});
        kiln_tensor *t = kiln_add(ctx, sum_uv, u);
        CHECK(kiln_backward(kiln_sum(ctx, t, 0, NULL, false)) == KILN_OK, "shared slots backward: %s",
              kiln_error_message(ctx));
        int64_t bad = first_diff(kiln_tensor_grad(x), want, N);
        CHECK(bad < 0, "shared slots%s: grad element %lld wrong", shaped ? " (reshaped)" : "", (long long)bad);
        kiln_scope_end(ctx);
        kiln_tensor_free(x);
    }
    CHECK(kiln_ctx_num_tensors(ctx) == t0, "shared slots: %lld tensors left",
          (long long)(kiln_ctx_num_tensors(ctx) - t0));
    CHECK_OK(ctx);
}

/*
 * The floors' contract for gradients (src/ops/ops_internal.h): autograd's kiln__grad_add
 * takes only a gradient of exactly its input's shape, and kiln__accum, on the ops floor,
 * sums a broadcast gradient down first. Checked through nodes made by hand, whose backward
 * hands over what the test chose; and the view ops' nodes carry their typed state.
 */
typedef enum { GIVE_SAME, GIVE_TRANSPOSED, GIVE_BROADCAST, GIVE_OWNED_BROADCAST } give_kind;
static give_kind give;

static kiln_status bw_give(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    switch (give) {
    case GIVE_SAME: return kiln__grad_add(ctx, n, 0, g, false);
    case GIVE_TRANSPOSED: {
        /* the gradient's elements in another shape of the same size: no longer accepted */
        kiln_tensor *t = kiln_reshape(ctx, g, 2, (int64_t[]){kiln_tensor_shape(g)[1], kiln_tensor_shape(g)[0]});
        kiln_status s = kiln__grad_add(ctx, n, 0, t, false);
        kiln_tensor_free(t);
        return s;
    }
    case GIVE_BROADCAST: return kiln__accum(ctx, n, 0, g);
    case GIVE_OWNED_BROADCAST: return kiln__accum_owned(ctx, n, 0, kiln_mul_scalar(ctx, g, 2.0f));
    }
    return KILN_ERR_INVALID_ARGUMENT;
}

static void test_grad_contract(kiln_ctx *ctx) {
    int64_t t0 = kiln_ctx_num_tensors(ctx);
    float sv[12];
    for (int i = 0; i < 12; i++) sv[i] = (float)(i + 1);
    kiln_tensor *seed = kiln_from_host(ctx, sv, KILN_F32, 2, (int64_t[]){4, 3});

    /* exactly the input's shape: added as it is */
    kiln_tensor *x = kiln_zeros(ctx, 2, (int64_t[]){4, 3});
    kiln_tensor_set_requires_grad(x, true);
    kiln_scope_begin(ctx);
    kiln_tensor *out = kiln_zeros(ctx, 2, (int64_t[]){4, 3});
    give = GIVE_SAME;
    CHECK(kiln__node_new(ctx, "test_same", out, 1, &x, bw_give) != NULL, "node: %s", kiln_error_message(ctx));
    CHECK(kiln_backward_ex(out, seed, false) == KILN_OK, "same shape: %s", kiln_error_message(ctx));
    CHECK(first_diff(kiln_tensor_grad(x), sv, 12) < 0, "same shape: the gradient is the seed");
    kiln_scope_end(ctx);

    /* the same elements as [3, 4] for an input of [4, 3]: refused, naming op and shapes */
    kiln_tensor_clear_grad(x);
    kiln_scope_begin(ctx);
    out = kiln_zeros(ctx, 2, (int64_t[]){4, 3});
    give = GIVE_TRANSPOSED;
    kiln__node_new(ctx, "test_transposed", out, 1, &x, bw_give);
    CHECK(kiln_backward_ex(out, seed, false) == KILN_ERR_SHAPE, "a gradient of another shape must fail");
    CHECK(strstr(kiln_error_message(ctx), "backward of test_transposed: gradient [3, 4] does not fit input 0 of "
                                          "shape [4, 3]") != NULL,
          "message: %s", kiln_error_message(ctx));
    CHECK(kiln_tensor_grad(x) == NULL, "no gradient after the failure");
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);

    /* broadcast: kiln__accum sums [4, 3] down to [3] and to [4, 1] */
    const int64_t xs[2][2] = {{3, 0}, {4, 1}};
    const int xn[2] = {1, 2};
    for (int c = 0; c < 2; c++) {
        for (int owned = 0; owned < 2; owned++) {
            kiln_tensor *b = kiln_zeros(ctx, xn[c], xs[c]);
            kiln_tensor_set_requires_grad(b, true);
            kiln_scope_begin(ctx);
            out = kiln_zeros(ctx, 2, (int64_t[]){4, 3});
            give = owned ? GIVE_OWNED_BROADCAST : GIVE_BROADCAST;
            kiln__node_new(ctx, "test_broadcast", out, 1, &b, bw_give);
            CHECK(kiln_backward_ex(out, seed, false) == KILN_OK, "broadcast %d: %s", c, kiln_error_message(ctx));
            kiln_scope_end(ctx);
            float want[4], got[4] = {0};
            int64_t nw = c == 0 ? 3 : 4;
            for (int k = 0; k < nw; k++) want[k] = 0;
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 3; j++) want[c == 0 ? j : i] += (owned ? 2.0f : 1.0f) * sv[i * 3 + j];
            CHECK(kiln_tensor_grad(b) && kiln_tensor_ndim(kiln_tensor_grad(b)) == xn[c] &&
                      kiln_to_host(kiln_tensor_grad(b), got, sizeof(float) * (size_t)nw) == KILN_OK,
                  "broadcast %d: no gradient of the input's rank", c);
            for (int k = 0; k < nw; k++)
                CHECK(got[k] == want[k], "broadcast %d%s: grad[%d] = %g, want %g", c, owned ? " (owned)" : "", k,
                      got[k], want[k]);
            kiln_tensor_free(b);
        }
    }

    /* the view ops record typed state (not positional slots), read back by their backward */
    kiln_scope_begin(ctx);
    kiln_tensor *p = kiln_permute(ctx, x, (const int[]){1, 0});
    kiln_tensor *sl = kiln_slice(ctx, x, 0, 1, 4, 2);
    CHECK(p && p->node && p->node->state_type && strcmp(p->node->state_type, "permute_state") == 0,
          "kiln_permute's node carries a permute_state");
    CHECK(sl && sl->node && sl->node->state_type && strcmp(sl->node->state_type, "slice_state") == 0,
          "kiln_slice's node carries a slice_state");
    CHECK(ctx->node_release != NULL, "the autograd floor installed how tensors free their nodes");
    /* a backward can only read the state type its op attached */
    typedef struct other_state {
        int64_t x[3];
    } other_state;
    CHECK(p && KILN__NODE_STATE(p->node, other_state) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "reading another op's state must fail");
    CHECK(strstr(kiln_error_message(ctx), "backward of kiln_permute: expected a other_state state (24 bytes), the node "
                                          "carries permute_state") != NULL,
          "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(p && KILN__NODE_STATE_NEW(p->node, other_state) == NULL &&
              strstr(kiln_error_message(ctx), "kiln_permute: the autograd node already has a permute_state state"),
          "a second state must fail: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_tensor *e = kiln_zeros(ctx, 2, (int64_t[]){4, 3});
    kiln__node *bare = kiln__node_new(ctx, "test_bare", e, 1, &x, bw_give); /* a node without state */
    CHECK(bare && KILN__NODE_STATE(bare, other_state) == NULL &&
              strstr(kiln_error_message(ctx), "the node carries none (0 bytes)"),
          "reading a state from a node without one must fail: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);

    kiln_tensor_free(x);
    kiln_tensor_free(seed);
    CHECK(kiln_ctx_num_tensors(ctx) == t0, "grad contract: %lld tensors left",
          (long long)(kiln_ctx_num_tensors(ctx) - t0));
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    test_elementwise_grads(ctx);
    test_reduce_grads(ctx);
    test_matmul_grads(ctx);
    test_view_grads(ctx);
    test_semantics(ctx);
    test_lifetime(ctx);
    test_grad_slots(ctx);
    test_shared_slots(ctx);
    test_grad_contract(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
