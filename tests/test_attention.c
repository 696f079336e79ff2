/* tests/test_attention.c - kiln_scaled_dot_product_attention: the fused kernels and the
 * composed path against PyTorch golden files (tests/golden/gen_attention.py), against a
 * plain-C double reference (views, broadcast operands) and finite differences of it;
 * dropout (reproducible by seed, the composed path's mask, its rate); the device memory
 * of both paths at L = S = 1024 and 2048; every error path. */
#include "golden.h"
#include "gradcheck.h"

/* ---- the double-precision reference ----------------------------------------------------- */

/* Contiguous q [B, L, E], k [B, S, E], v [B, S, EV]; mask (optional) [L, S]: kind 1 boolean
 * (nonzero takes part), 2 additive; z (optional) [B, L, S] dropout factors. */
typedef struct ref_case {
    int64_t B, L, S, E, EV;
    int mask_kind;
    const double *mask;
    bool causal;
    double scale;
    const double *z;
} ref_case;

static void ref_sdpa(void *user, double *const *in, double *out) {
    const ref_case *c = user;
    const double *q = in[0], *k = in[1], *v = in[2];
    double *w = malloc(sizeof(double) * (size_t)c->S);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t i = 0; i < c->L; i++) {
            double mx = -INFINITY;
            for (int64_t j = 0; j < c->S; j++) {
                double s = 0;
                for (int64_t e = 0; e < c->E; e++) s += q[(b * c->L + i) * c->E + e] * k[(b * c->S + j) * c->E + e];
                s *= c->scale;
                if (c->mask_kind == 1 && c->mask[i * c->S + j] == 0) s = -INFINITY;
                if (c->mask_kind == 2) s += c->mask[i * c->S + j];
                if (c->causal && j > i) s = -INFINITY;
                w[j] = s;
                mx = fmax(mx, s);
            }
            double sum = 0;
            for (int64_t j = 0; j < c->S; j++) sum += w[j] = mx == -INFINITY ? 0 : exp(w[j] - mx);
            for (int64_t e = 0; e < c->EV; e++) {
                double a = 0;
                for (int64_t j = 0; j < c->S; j++) {
                    double p = sum > 0 ? w[j] / sum : 0;
                    if (c->z) p *= c->z[(b * c->L + i) * c->S + j];
                    a += p * v[(b * c->S + j) * c->EV + e];
                }
                out[(b * c->L + i) * c->EV + e] = a;
            }
        }
    free(w);
}

static kiln_tensor *upload_d(kiln_ctx *ctx, const double *h, int64_t n, int ndim, const int64_t *shape, bool grad) {
    float *f = malloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) f[i] = (float)h[i];
    kiln_tensor *t = kiln_from_host(ctx, f, KILN_F32, ndim, shape);
    free(f);
    if (t && grad) kiln_tensor_set_requires_grad(t, true);
    return t;
}

/* Values exactly representable in float, so host and device see the same inputs. */
static double *rnd_d(int64_t n, float lo, float hi) {
    size_t cnt = n > 0 ? (size_t)n : 1;
    double *d = malloc(sizeof(double) * cnt);
    for (size_t i = 0; i < (size_t)n; i++) d[i] = h_uniform(lo, hi);
    return d;
}

/* Largest |x| of n doubles (1 when all are 0): tolerances are relative to a tensor's scale. */
static double maxabs(const double *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m > 0 ? m : 1;
}

static kiln_sdpa_opts opts_of(kiln_sdpa_impl impl, bool causal, double scale, float p) {
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    o.impl = impl, o.is_causal = causal, o.scale = (float)scale, o.dropout_p = p;
    return o;
}

static const char *impl_name(kiln_sdpa_impl impl) { return impl == KILN_SDPA_FUSED ? "fused" : "composed"; }

/* ---- PyTorch golden cases --------------------------------------------------------------------- */

/* Tolerances: every output and gradient element is a softmax-weighted sum over S keys of
 * products of E-term float32 dot products (inputs ~N(0, 1)); float32 rounding of those sums
 * gives errors of a few 1e-7 relative to the terms' magnitude, and exp's ulp error (OpenCL:
 * 3 ulp) adds the same order. 2e-5 of the tensor's largest magnitude plus 1e-4 relative is
 * far above that and far below any wrong term (a missed key moves values by 1e-2 or more). */
#define G_ATOL 2e-5
#define G_RTOL 1e-4

static void golden_case(kiln_ctx *ctx, const golden *g, const char *name, kiln_sdpa_impl impl) {
    char key[160], what[200];
#define GT(field) (snprintf(key, sizeof key, "sdpa.%s." field, name), golden_get(g, key))
    const golden_tensor *gq = GT("q"), *gk = GT("k"), *gv = GT("v"), *gy = GT("y"), *ggy = GT("gy");
    const golden_tensor *gdq = GT("gq"), *gdk = GT("gk"), *gdv = GT("gv"), *gp = GT("p"), *gs = GT("scale");
    if (!gq || !gk || !gv || !gy || !ggy || !gdq || !gdk || !gdv || !gp || !gs) return;
    int kind = gp->i[0];
    bool causal = gp->i[1] != 0, has_scale = gp->i[2] != 0;
    kiln_scope_begin(ctx);
    kiln_tensor *mask = NULL;
    if (kind) {
        const golden_tensor *gm = GT("mask");
        if (!gm) goto out;
        if (kind == 1) {
            uint8_t *u = malloc((size_t)gm->numel);
            for (int64_t i = 0; i < gm->numel; i++) u[i] = gm->i[i] != 0;
            mask = kiln_from_host(ctx, u, KILN_U8, gm->ndim, gm->shape);
            free(u);
        } else {
            mask = golden_upload(ctx, gm);
        }
    }
#undef GT
    kiln_tensor *q = golden_upload(ctx, gq), *k = golden_upload(ctx, gk), *v = golden_upload(ctx, gv);
    kiln_tensor_set_requires_grad(q, true);
    kiln_tensor_set_requires_grad(k, true);
    kiln_tensor_set_requires_grad(v, true);
    kiln_sdpa_opts o = opts_of(impl, causal, has_scale ? gs->f[0] : NAN, 0.0f);
    kiln_tensor *y = kiln_scaled_dot_product_attention(ctx, q, k, v, mask, &o);
    snprintf(what, sizeof what, "sdpa %s %s output", impl_name(impl), name);
    CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!y) goto out;
    double sy = 0, sq = 0, sk = 0, sv = 0;
    for (int64_t i = 0; i < gy->numel; i++) sy = fmax(sy, fabs(gy->f[i]));
    for (int64_t i = 0; i < gdq->numel; i++) sq = fmax(sq, fabs(gdq->f[i]));
    for (int64_t i = 0; i < gdk->numel; i++) sk = fmax(sk, fabs(gdk->f[i]));
    for (int64_t i = 0; i < gdv->numel; i++) sv = fmax(sv, fabs(gdv->f[i]));
    golden_compare(what, y, gy, G_ATOL * sy, G_RTOL);
    kiln_tensor *seed = golden_upload(ctx, ggy);
    CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "%s backward: %s", what, kiln_error_message(ctx));
    snprintf(what, sizeof what, "sdpa %s %s d/dquery", impl_name(impl), name);
    golden_compare(what, kiln_tensor_grad(q), gdq, G_ATOL * sq, G_RTOL);
    snprintf(what, sizeof what, "sdpa %s %s d/dkey", impl_name(impl), name);
    golden_compare(what, kiln_tensor_grad(k), gdk, G_ATOL * sk, G_RTOL);
    snprintf(what, sizeof what, "sdpa %s %s d/dvalue", impl_name(impl), name);
    golden_compare(what, kiln_tensor_grad(v), gdv, G_ATOL * sv, G_RTOL);
out:
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "attention")) return;
    static const char *const cases[] = {"plain", "twod",        "bool", "float",       "causal",
                                        "bcast", "causal_tall", "long", "long_causal", "fullmask"};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        golden_case(ctx, &g, cases[c], KILN_SDPA_FUSED);
        /* the composed path's softmax gives NaN for a row with no visible key (torch < 2.5);
         * the fused path's 0 is checked above */
        if (strcmp(cases[c], "fullmask") != 0) golden_case(ctx, &g, cases[c], KILN_SDPA_COMPOSED);
    }
    golden_close(&g);
}

/* ---- views and broadcast operands against the double reference --------------------------------- */

/* q read through a transposed view ([B, E, L] storage), k a slice with a step, v expanded
 * over the batch from [1, S, EV], a float mask [L, S] transposed: both paths. */
static void test_views(kiln_ctx *ctx) {
    enum { B = 3, L = 21, S = 40, E = 8, EV = 5 };
    kiln_scope_begin(ctx);
    double *qh = rnd_d(B * L * E, -1, 1), *kh = rnd_d(B * 2 * S * E, -1, 1), *vh = rnd_d(S * EV, -1, 1);
    double *mh = rnd_d(L * S, -2, 2);
    /* host copies in the reference's contiguous layout */
    double *q = malloc(sizeof(double) * B * L * E), *k = malloc(sizeof(double) * B * S * E);
    double *v = malloc(sizeof(double) * B * S * EV), *m = malloc(sizeof(double) * L * S);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < L; i++)
            for (int e = 0; e < E; e++) q[(b * L + i) * E + e] = qh[(b * E + e) * L + i];
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S; j++)
            for (int e = 0; e < E; e++) k[(b * S + j) * E + e] = kh[(b * 2 * S + 2 * j + 1) * E + e];
    for (int b = 0; b < B; b++) memcpy(v + b * S * EV, vh, sizeof(double) * S * EV);
    for (int i = 0; i < L; i++)
        for (int j = 0; j < S; j++) m[i * S + j] = mh[j * L + i];
    kiln_tensor *qs = upload_d(ctx, qh, B * L * E, 3, (int64_t[]){B, E, L}, true);
    kiln_tensor *ks = upload_d(ctx, kh, B * 2 * S * E, 3, (int64_t[]){B, 2 * S, E}, true);
    kiln_tensor *vs = upload_d(ctx, vh, S * EV, 3, (int64_t[]){1, S, EV}, true);
    kiln_tensor *ms = upload_d(ctx, mh, L * S, 2, (int64_t[]){S, L}, false);
    kiln_tensor *qv = kiln_transpose(ctx, qs, 1, 2), *kv = kiln_slice(ctx, ks, 1, 1, 2 * S, 2);
    kiln_tensor *mv = kiln_transpose(ctx, ms, 0, 1);
    ref_case rc = {B, L, S, E, EV, 2, m, false, 0.4, NULL};
    double *y = malloc(sizeof(double) * B * L * EV);
    ref_sdpa(&rc, (double *[]){q, k, v}, y);
    for (int impl = 0; impl < 2; impl++) {
        kiln_sdpa_opts o = opts_of((kiln_sdpa_impl)impl, false, 0.4, 0);
        kiln_tensor *out = kiln_scaled_dot_product_attention(ctx, qv, kv, vs, mv, &o);
        char what[120];
        snprintf(what, sizeof what, "sdpa %s views", impl_name((kiln_sdpa_impl)impl));
        CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
        if (!out) continue;
        CHECK(kiln_tensor_ndim(out) == 3 && kiln_tensor_shape(out)[0] == B && kiln_tensor_shape(out)[2] == EV,
              "%s: shape", what);
        float *got = h_read(out);
        h_compare(what, got, y, B * L * EV, G_ATOL * maxabs(y, B * L * EV), G_RTOL);
        free(got);
    }
    free(y);
    free(q), free(k), free(v), free(m), free(qh), free(kh), free(vh), free(mh);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* The heads of a Transformer: q, k and v sliced from one [B, L, 3 C] projection, each viewed
 * as [B, L, H, E] and permuted to [B, H, L, E] (torch_ref.py's GPT, tools/bench.c), causal,
 * the output merged back by the inverse permute. The fused output is laid out like the
 * query ([B, L, H, E] memory), so the merge is a contiguous view; it and the projection's
 * gradient (through the three slices, reshapes and permutes) match the composed path. L is
 * not a multiple of the tiles. */
static void test_heads(kiln_ctx *ctx) {
    enum { B = 2, L = 21, H = 3, E = 8, C = H * E };
    kiln_scope_begin(ctx);
    double *xh = rnd_d(B * L * 3 * C, -1, 1), *gh = rnd_d(B * L * C, -1, 1);
    float *y[2] = {NULL, NULL}, *dx[2] = {NULL, NULL};
    for (int impl = 0; impl < 2; impl++) {
        kiln_tensor *x = upload_d(ctx, xh, B * L * 3 * C, 3, (int64_t[]){B, L, 3 * C}, true), *h[3];
        for (int i = 0; i < 3; i++)
            h[i] = kiln_permute(
                ctx, kiln_reshape(ctx, kiln_slice(ctx, x, 2, i * C, (i + 1) * C, 1), 4, (int64_t[]){B, L, H, E}),
                (const int[]){0, 2, 1, 3});
        kiln_sdpa_opts o = opts_of((kiln_sdpa_impl)impl, true, NAN, 0);
        kiln_tensor *a = kiln_scaled_dot_product_attention(ctx, h[0], h[1], h[2], NULL, &o);
        kiln_tensor *merged = kiln_permute(ctx, a, (const int[]){0, 2, 1, 3});
        CHECK(merged != NULL, "sdpa %s heads: %s", impl_name((kiln_sdpa_impl)impl), kiln_error_message(ctx));
        if (!merged) continue;
        if (impl == KILN_SDPA_FUSED)
            CHECK(kiln_tensor_is_contiguous(merged), "sdpa fused heads: the output is not laid out like the query");
        kiln_tensor *seed = upload_d(ctx, gh, B * L * C, 4, (int64_t[]){B, L, H, E}, false);
        CHECK(kiln_backward_ex(merged, seed, false) == KILN_OK, "sdpa %s heads backward: %s",
              impl_name((kiln_sdpa_impl)impl), kiln_error_message(ctx));
        y[impl] = h_read(merged);
        dx[impl] = h_read(kiln_tensor_grad(x));
    }
    if (y[0] && y[1] && dx[0] && dx[1]) {
        double *ry = malloc(sizeof(double) * B * L * C), *rdx = malloc(sizeof(double) * B * L * 3 * C);
        for (int i = 0; i < B * L * C; i++) ry[i] = y[KILN_SDPA_COMPOSED][i];
        for (int i = 0; i < B * L * 3 * C; i++) rdx[i] = dx[KILN_SDPA_COMPOSED][i];
        h_compare("sdpa heads: fused output against composed", y[KILN_SDPA_FUSED], ry, B * L * C,
                  G_ATOL * maxabs(ry, B * L * C), G_RTOL);
        h_compare("sdpa heads: fused d/dprojection against composed", dx[KILN_SDPA_FUSED], rdx, B * L * 3 * C,
                  G_ATOL * maxabs(rdx, B * L * 3 * C), G_RTOL);
        free(ry), free(rdx);
    }
    for (int i = 0; i < 2; i++) free(y[i]), free(dx[i]);
    free(xh), free(gh);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- finite differences --------------------------------------------------------------------- */

/* Tiny cases (2 x 3 x 5, E 4, Ev 3; one with 40 keys over two tiles), every mask kind and
 * causal, gradients of q, k and v against central differences of the double reference.
 * Tolerance as gradcheck.h: float32 sums of <= S*E terms, 1e-4 of the gradient's scale. */
static void test_gradcheck(kiln_ctx *ctx) {
    static const struct {
        const char *name;
        int L, S, kind;
        bool causal;
    } cases[] = {{"plain", 3, 5, 0, false},
                 {"bool mask", 3, 5, 1, false},
                 {"float mask", 3, 5, 2, false},
                 {"causal", 5, 3, 0, true},
                 {"two tiles", 3, 40, 1, false}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int impl = 0; impl < 2; impl++) {
            kiln_scope_begin(ctx);
            int64_t B = 2, L = cases[c].L, S = cases[c].S, E = 4, EV = 3;
            double *q = rnd_d(B * L * E, -1, 1), *k = rnd_d(B * S * E, -1, 1), *v = rnd_d(B * S * EV, -1, 1);
            double *m = rnd_d(L * S, -1, 1);
            uint8_t *mb = malloc((size_t)L * (size_t)S);
            for (int64_t i = 0; i < L * S; i++) {
                mb[i] = (i % S) == 0 || m[i] > -0.3; /* every row keeps key 0 */
                if (cases[c].kind == 1) m[i] = mb[i];
            }
            kiln_tensor *tq = upload_d(ctx, q, B * L * E, 3, (int64_t[]){B, L, E}, true);
            kiln_tensor *tk = upload_d(ctx, k, B * S * E, 3, (int64_t[]){B, S, E}, true);
            kiln_tensor *tv = upload_d(ctx, v, B * S * EV, 3, (int64_t[]){B, S, EV}, true);
            kiln_tensor *tm = cases[c].kind == 1   ? kiln_from_host(ctx, mb, KILN_U8, 2, (int64_t[]){L, S})
                              : cases[c].kind == 2 ? upload_d(ctx, m, L * S, 2, (int64_t[]){L, S}, false)
                                                   : NULL;
            ref_case rc = {B, L, S, E, EV, cases[c].kind, m, cases[c].causal, 1.0 / sqrt((double)E), NULL};
            kiln_sdpa_opts o = opts_of((kiln_sdpa_impl)impl, cases[c].causal, NAN, 0);
            kiln_tensor *y = kiln_scaled_dot_product_attention(ctx, tq, tk, tv, tm, &o);
            char what[120];
            snprintf(what, sizeof what, "sdpa %s gradcheck %s", impl_name((kiln_sdpa_impl)impl), cases[c].name);
            gc_check(ctx, what, ref_sdpa, &rc, 3, (kiln_tensor *[]){tq, tk, tv}, (double *[]){q, k, v},
                     (bool[]){true, true, true}, y, 1e-4, 1e-3);
            free(q), free(k), free(v), free(m), free(mb);
            kiln_scope_end(ctx);
            CHECK_OK(ctx);
            kiln_error_clear(ctx);
        }
}

/* ---- dropout --------------------------------------------------------------------------------- */

static bool same_bits(kiln_tensor *a, kiln_tensor *b) {
    if (!a || !b || kiln_tensor_numel(a) != kiln_tensor_numel(b)) return false;
    float *x = h_read(a), *y = h_read(b);
    bool same = memcmp(x, y, sizeof(float) * (size_t)kiln_tensor_numel(a)) == 0;
    free(x), free(y);
    return same;
}

static void test_dropout(kiln_ctx *ctx) {
    const float p = 0.3f;
    kiln_scope_begin(ctx);
    /* 1. the mask itself: q = 0 makes the weights 1/S, v = the S x S identity, so
     *    out[b, i, j] = z_ij / S; z must be kiln_dropout's mask over [B, L, S] at the same
     *    stream position, and its drop rate p */
    enum { B = 2, L = 64, S = 50 };
    kiln_tensor *q0 = kiln_zeros(ctx, 3, (int64_t[]){B, L, 8}), *k0 = kiln_ones(ctx, 3, (int64_t[]){B, S, 8});
    float *eye = calloc(S * S, sizeof(float));
    for (int j = 0; j < S; j++) eye[j * S + j] = 1;
    kiln_tensor *id = kiln_from_host(ctx, eye, KILN_F32, 3, (int64_t[]){1, S, S});
    free(eye);
    kiln_sdpa_opts o = opts_of(KILN_SDPA_FUSED, false, NAN, p);
    kiln_manual_seed(ctx, 1234);
    kiln_tensor *y = kiln_scaled_dot_product_attention(ctx, q0, k0, id, NULL, &o);
    kiln_manual_seed(ctx, 1234);
    kiln_tensor *z = kiln_dropout(ctx, kiln_ones(ctx, 3, (int64_t[]){B, L, S}), p, true);
    CHECK(y && z, "sdpa dropout mask: %s", kiln_error_message(ctx));
    if (y && z) {
        float *hy = h_read(y), *hz = h_read(z);
        int64_t dropped = 0, differ = 0;
        for (int64_t t = 0; t < B * L * S; t++) {
            dropped += hz[t] == 0;
            differ += fabsf(hy[t] * S - hz[t]) > 1e-5f * hz[t] + 1e-6f;
        }
        CHECK(differ == 0, "sdpa dropout: %lld of %d weights differ from kiln_dropout's mask at the same seed",
              (long long)differ, B * L * S);
        /* 6400 independent draws: the rate's standard deviation is sqrt(p (1-p) / n) =
         * 0.0057; 5 of them bound it */
        double rate = (double)dropped / (B * L * S);
        CHECK(fabs(rate - p) < 5 * sqrt(p * (1 - p) / (B * L * S)), "sdpa dropout rate %.4f, p = %.2f", rate,
              (double)p);
        free(hy), free(hz);
    }
    /* 2. same seed, same result (forward and gradients); the stream advances */
    enum { L2 = 33, S2 = 45, E2 = 8 };
    kiln_tensor *q = kiln_rand_normal(ctx, 0, 1, 3, (int64_t[]){B, L2, E2});
    kiln_tensor *k = kiln_rand_normal(ctx, 0, 1, 3, (int64_t[]){B, S2, E2});
    kiln_tensor *v = kiln_rand_normal(ctx, 0, 1, 3, (int64_t[]){B, S2, E2});
    kiln_tensor_set_requires_grad(q, true);
    kiln_tensor_set_requires_grad(k, true);
    kiln_tensor_set_requires_grad(v, true);
    kiln_tensor *gy = kiln_rand_normal(ctx, 0, 1, 3, (int64_t[]){B, L2, E2});
    kiln_tensor *ys[3], *gs[3][3];
    static const kiln_sdpa_impl impls[3] = {KILN_SDPA_FUSED, KILN_SDPA_FUSED, KILN_SDPA_COMPOSED};
    for (int r = 0; r < 3; r++) {
        kiln_manual_seed(ctx, 77);
        o.impl = impls[r];
        ys[r] = kiln_scaled_dot_product_attention(ctx, q, k, v, NULL, &o);
        CHECK(ys[r] && kiln_backward_ex(ys[r], gy, false) == KILN_OK, "sdpa dropout run %d: %s", r,
              kiln_error_message(ctx));
        kiln_tensor *in[3] = {q, k, v};
        for (int t = 0; t < 3; t++) {
            gs[r][t] = kiln_clone(ctx, kiln_tensor_grad(in[t]));
            kiln_tensor_clear_grad(in[t]);
        }
    }
    CHECK(same_bits(ys[0], ys[1]), "sdpa dropout: the same seed gives another output");
    for (int t = 0; t < 3; t++) CHECK(same_bits(gs[0][t], gs[1][t]), "sdpa dropout: same seed, gradient %d differs", t);
    kiln_tensor *y3 = kiln_scaled_dot_product_attention(ctx, q, k, v, NULL, &o); /* the stream moved on */
    CHECK(!same_bits(ys[0], y3), "sdpa dropout: a second call draws the same mask");
    /* 3. the composed path draws the same mask (kiln_dropout at the same positions): output and
     *    gradients match the fused path's to rounding */
    float *f = h_read(ys[0]), *c = h_read(ys[2]);
    double *cd = malloc(sizeof(double) * B * L2 * E2);
    for (int64_t t = 0; t < B * L2 * E2; t++) cd[t] = c[t];
    h_compare("sdpa dropout fused vs composed output", f, cd, B * L2 * E2, G_ATOL * maxabs(cd, B * L2 * E2), G_RTOL);
    free(f), free(c);
    static const char *const gname[3] = {"query", "key", "value"};
    for (int t = 0; t < 3; t++) {
        float *gf = h_read(gs[0][t]), *gc = h_read(gs[2][t]);
        int64_t n = kiln_tensor_numel(gs[0][t]);
        double *gd = malloc(sizeof(double) * (size_t)n);
        for (int64_t i = 0; i < n; i++) gd[i] = gc[i];
        char what[120];
        snprintf(what, sizeof what, "sdpa dropout fused vs composed d/d%s", gname[t]);
        h_compare(what, gf, gd, n, G_ATOL * maxabs(gd, n), G_RTOL);
        free(gf), free(gc), free(gd);
    }
    free(cd);
    /* 4. p = 1 drops everything: output 0 */
    o.dropout_p = 1.0f;
    o.impl = KILN_SDPA_FUSED;
    kiln_tensor *y1 = kiln_scaled_dot_product_attention(ctx, q, k, v, NULL, &o);
    CHECK(y1 != NULL, "sdpa dropout p = 1: %s", kiln_error_message(ctx));
    if (y1) {
        float *h = h_read(y1);
        int64_t nz = 0;
        for (int64_t t = 0; t < B * L2 * E2; t++) nz += h[t] != 0;
        CHECK(nz == 0, "sdpa dropout p = 1: %lld nonzero outputs", (long long)nz);
        free(h);
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

/* Dropout's gradients against finite differences of the reference with the same mask
 * (kiln_dropout's at the same stream position, checked equal to the op's above). */
static void test_dropout_gradcheck(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int64_t B = 2, L = 4, S = 6, E = 4, EV = 3;
    const float p = 0.4f;
    double *q = rnd_d(B * L * E, -1, 1), *k = rnd_d(B * S * E, -1, 1), *v = rnd_d(B * S * EV, -1, 1);
    kiln_manual_seed(ctx, 5);
    kiln_tensor *zt = kiln_dropout(ctx, kiln_ones(ctx, 3, (int64_t[]){B, L, S}), p, true);
    float *zf = h_read(zt);
    double *z = malloc(sizeof(double) * (size_t)(B * L * S));
    for (int64_t t = 0; t < B * L * S; t++) z[t] = zf[t];
    free(zf);
    kiln_tensor *tq = upload_d(ctx, q, B * L * E, 3, (int64_t[]){B, L, E}, true);
    kiln_tensor *tk = upload_d(ctx, k, B * S * E, 3, (int64_t[]){B, S, E}, true);
    kiln_tensor *tv = upload_d(ctx, v, B * S * EV, 3, (int64_t[]){B, S, EV}, true);
    kiln_manual_seed(ctx, 5);
    kiln_sdpa_opts o = opts_of(KILN_SDPA_FUSED, true, NAN, p);
    kiln_tensor *y = kiln_scaled_dot_product_attention(ctx, tq, tk, tv, NULL, &o);
    ref_case rc = {B, L, S, E, EV, 0, NULL, true, 0.5, z};
    gc_check(ctx, "sdpa fused gradcheck causal dropout", ref_sdpa, &rc, 3, (kiln_tensor *[]){tq, tk, tv},
             (double *[]){q, k, v}, (bool[]){true, true, true}, y, 1e-4, 1e-3);
    free(q), free(k), free(v), free(z);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

/* ---- device memory: linear for the fused path, quadratic for the composed one ------------------ */

/* Peak pool bytes of forward + backward at L = S = n (batch 1, E = Ev = 16), in a fresh
 * context on the same device so that nothing earlier counts. */
static uint64_t peak_bytes(const char *spec, kiln_sdpa_impl impl, int64_t n) {
    kiln_ctx *c;
    if (kiln_open(&c, spec) != KILN_OK) {
        CHECK(0, "kiln_open(%s): %s", spec, kiln_last_error());
        return 0;
    }
    kiln_tensor *q = kiln_rand_normal(c, 0, 1, 3, (int64_t[]){1, n, 16});
    kiln_tensor *k = kiln_rand_normal(c, 0, 1, 3, (int64_t[]){1, n, 16});
    kiln_tensor *v = kiln_rand_normal(c, 0, 1, 3, (int64_t[]){1, n, 16});
    kiln_tensor_set_requires_grad(q, true);
    kiln_tensor_set_requires_grad(k, true);
    kiln_tensor_set_requires_grad(v, true);
    kiln_sdpa_opts o = opts_of(impl, true, NAN, 0);
    kiln_tensor *y = kiln_scaled_dot_product_attention(c, q, k, v, NULL, &o);
    kiln_tensor *l = kiln_sum(c, y, 0, NULL, false);
    kiln_status s = l ? kiln_backward(l) : kiln_error_status(c);
    float g0 = s == KILN_OK ? kiln_tensor_item(kiln_sum(c, kiln_tensor_grad(k), 0, NULL, false)) : NAN;
    CHECK(s == KILN_OK && isfinite(g0), "sdpa %s memory run n=%lld: %s", impl_name(impl), (long long)n,
          kiln_error_message(c));
    kiln_pool_stats st;
    kiln_pool_stats_get(c, &st);
    kiln_close(c);
    return st.peak_in_use_bytes;
}

static void test_memory(kiln_ctx *ctx) {
    const kiln_device_info *d = kiln_ctx_device(ctx);
    char spec[32];
    snprintf(spec, sizeof spec, "%d:%d", d->platform_index, d->device_index);
    uint64_t f1 = peak_bytes(spec, KILN_SDPA_FUSED, 1024), f2 = peak_bytes(spec, KILN_SDPA_FUSED, 2048);
    uint64_t c1 = peak_bytes(spec, KILN_SDPA_COMPOSED, 1024), c2 = peak_bytes(spec, KILN_SDPA_COMPOSED, 2048);
    printf("sdpa peak device memory, forward + backward, L = S, E = 16, causal:\n"
           "  fused     L=1024 %10llu bytes  L=2048 %10llu bytes  x%.2f\n"
           "  composed  L=1024 %10llu bytes  L=2048 %10llu bytes  x%.2f\n",
           (unsigned long long)f1, (unsigned long long)f2, f1 ? (double)f2 / (double)f1 : 0, (unsigned long long)c1,
           (unsigned long long)c2, c1 ? (double)c2 / (double)c1 : 0);
    /* linear: twice the length, twice the memory (pool buckets round up, so allow 2.5);
     * the composed path holds L x S matrices: x4 (allow down to 3.5) */
    CHECK(f1 && (double)f2 / (double)f1 <= 2.5, "sdpa fused memory grows x%.2f from L=1024 to 2048, not linearly",
          f1 ? (double)f2 / (double)f1 : 0);
    CHECK(c1 && (double)c2 / (double)c1 >= 3.5, "sdpa composed memory grows only x%.2f from L=1024 to 2048",
          c1 ? (double)c2 / (double)c1 : 0);
    CHECK(f2 * 8 < c2, "sdpa fused peak %llu bytes is not far below the composed %llu at L=2048",
          (unsigned long long)f2, (unsigned long long)c2);
}

/* A long sequence of four heads (L = S = 8192, E = 64): the fused forward and backward run
 * (left to the driver, POCL made the row kernels' work-groups 4096 items big and crashed),
 * and a few output rows match a double-precision softmax(q k^T / 8) v computed here. */
static void test_long(kiln_ctx *ctx) {
    enum { H = 4, L = 8192, E = 64 };
    int64_t shape[4] = {1, H, L, E}, n = (int64_t)H * L * E;
    float *hq = malloc(sizeof(float) * (size_t)n), *hk = malloc(sizeof(float) * (size_t)n),
          *hv = malloc(sizeof(float) * (size_t)n), *ho = malloc(sizeof(float) * (size_t)n);
    if (!hq || !hk || !hv || !ho) {
        free(hq), free(hk), free(hv), free(ho);
        CHECK(false, "long sdpa: out of host memory");
        return;
    }
    h_fill(hq, n, -1, 1);
    h_fill(hk, n, -1, 1);
    h_fill(hv, n, -1, 1);
    kiln_scope_begin(ctx);
    kiln_tensor *q = kiln_from_host(ctx, hq, KILN_F32, 4, shape), *k = kiln_from_host(ctx, hk, KILN_F32, 4, shape),
                *v = kiln_from_host(ctx, hv, KILN_F32, 4, shape);
    kiln_tensor_set_requires_grad(q, true);
    kiln_tensor_set_requires_grad(k, true);
    kiln_tensor_set_requires_grad(v, true);
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    o.impl = KILN_SDPA_FUSED;
    kiln_tensor *y = kiln_scaled_dot_product_attention(ctx, q, k, v, NULL, &o);
    CHECK(y && kiln_backward(kiln_sum(ctx, y, 0, NULL, false)) == KILN_OK && kiln_tensor_grad(q) &&
              kiln_to_host(kiln_contiguous(ctx, y), ho, sizeof(float) * (size_t)n) == KILN_OK,
          "long sdpa: %s", kiln_error_message(ctx));
    static const int rows[4][2] = {{0, 0}, {1, 4095}, {2, 8000}, {3, 8191}};
    double worst = 0;
    for (int r = 0; r < 4; r++) {
        int64_t hb = (int64_t)rows[r][0] * L * E, i = rows[r][1];
        double *w = malloc(sizeof(double) * L), mx = -INFINITY, sum = 0;
        if (!w) break;
        for (int j = 0; j < L; j++) {
            double d = 0;
            for (int e = 0; e < E; e++) d += (double)hq[hb + i * E + e] * hk[hb + (int64_t)j * E + e];
            w[j] = d / 8.0;
            if (w[j] > mx) mx = w[j];
        }
        for (int j = 0; j < L; j++) sum += (w[j] = exp(w[j] - mx));
        for (int e = 0; e < E; e++) {
            double ref = 0;
            for (int j = 0; j < L; j++) ref += w[j] * hv[hb + (int64_t)j * E + e];
            ref /= sum;
            double err = fabs(ho[hb + i * E + e] - ref);
            if (err > worst) worst = err;
        }
        free(w);
    }
    CHECK(worst < 1e-5, "long sdpa: output off the double reference by %.3g", worst);
    kiln_scope_end(ctx);
    free(hq), free(hk), free(hv), free(ho);
}

/* ---- errors ---------------------------------------------------------------------------------- */

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
    static const char op[] = "kiln_scaled_dot_product_attention";
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_tensor *q = kiln_ones(ctx, 3, (int64_t[]){2, 5, 8}), *k = kiln_ones(ctx, 3, (int64_t[]){2, 7, 8});
    kiln_tensor *v = kiln_ones(ctx, 3, (int64_t[]){2, 7, 6});
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    kiln_tensor *r;
    r = kiln_scaled_dot_product_attention(ctx, NULL, k, v, NULL, NULL);
    expect_err(ctx, r, KILN_ERR_NULL, "sdpa NULL query", op, NULL, NULL);
    r = kiln_scaled_dot_product_attention(ctx, q, kiln_ones(ctx, 3, (int64_t[]){2, 7, 4}), v, NULL, NULL);
    expect_err(ctx, r, KILN_ERR_SHAPE, "sdpa mismatched E", op, "query [2, 5, 8]", "key [2, 7, 4]");
    r = kiln_scaled_dot_product_attention(ctx, q, k, kiln_ones(ctx, 3, (int64_t[]){2, 6, 6}), NULL, NULL);
    expect_err(ctx, r, KILN_ERR_SHAPE, "sdpa mismatched S", op, "sequence dim S", "value [2, 6, 6]");
    r = kiln_scaled_dot_product_attention(ctx, q, kiln_ones(ctx, 3, (int64_t[]){3, 7, 8}),
                                          kiln_ones(ctx, 3, (int64_t[]){3, 7, 6}), NULL, NULL);
    expect_err(ctx, r, KILN_ERR_SHAPE, "sdpa batch dims", op, "do not broadcast", "key [3, 7, 8]");
    r = kiln_scaled_dot_product_attention(ctx, kiln_ones(ctx, 1, (int64_t[]){8}), k, v, NULL, NULL);
    expect_err(ctx, r, KILN_ERR_SHAPE, "sdpa 1-D query", op, "at least 2 dims", "query [8]");
    r = kiln_scaled_dot_product_attention(ctx, kiln_ones(ctx, 3, (int64_t[]){2, 5, 0}),
                                          kiln_ones(ctx, 3, (int64_t[]){2, 7, 0}), v, NULL, NULL);
    expect_err(ctx, r, KILN_ERR_SHAPE, "sdpa E = 0", op, ">= 1", "query [2, 5, 0]");
    kiln_tensor *qi = kiln_from_host(ctx, (int32_t[]){1, 2}, KILN_I32, 2, (int64_t[]){1, 2});
    r = kiln_scaled_dot_product_attention(ctx, qi, k, v, NULL, NULL);
    expect_err(ctx, r, KILN_ERR_DTYPE, "sdpa i32 query", op, "i32", "query [1, 2]");
    /* masks: not broadcastable (a dim of another size; more dims than the weights), bad dtype */
    r = kiln_scaled_dot_product_attention(ctx, q, k, v, kiln_zeros(ctx, 2, (int64_t[]){5, 6}), NULL);
    expect_err(ctx, r, KILN_ERR_SHAPE, "sdpa mask [5, 6]", op, "attn_mask [5, 6]", "[2, 5, 7]");
    r = kiln_scaled_dot_product_attention(ctx, q, k, v, kiln_zeros(ctx, 4, (int64_t[]){1, 1, 5, 7}), NULL);
    expect_err(ctx, r, KILN_ERR_SHAPE, "sdpa mask of more dims", op, "attn_mask [1, 1, 5, 7]", "does not broadcast");
    r = kiln_scaled_dot_product_attention(ctx, q, k, v, kiln_zeros(ctx, 3, (int64_t[]){3, 5, 7}), NULL);
    expect_err(ctx, r, KILN_ERR_SHAPE, "sdpa mask batch 3", op, "attn_mask [3, 5, 7]", NULL);
    kiln_tensor *mi = kiln_from_host(ctx, (int32_t[]){1, 0, 1, 1, 0, 1, 1}, KILN_I32, 1, (int64_t[]){7});
    r = kiln_scaled_dot_product_attention(ctx, q, k, v, mi, NULL);
    expect_err(ctx, r, KILN_ERR_DTYPE, "sdpa i32 mask", op, "u8 (boolean) or f32", "attn_mask [7]");
    /* options */
    o.is_causal = true;
    r = kiln_scaled_dot_product_attention(ctx, q, k, v, kiln_zeros(ctx, 2, (int64_t[]){5, 7}), &o);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "sdpa causal + mask", op, "is_causal", "attn_mask [5, 7]");
    o = kiln_sdpa_defaults();
    static const float bad_p[3] = {-0.1f, 1.5f, NAN};
    for (int t = 0; t < 3; t++) {
        o.dropout_p = bad_p[t];
        r = kiln_scaled_dot_product_attention(ctx, q, k, v, NULL, &o);
        expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "sdpa dropout_p", op, "dropout_p", "outside [0, 1]");
    }
    o = kiln_sdpa_defaults();
    o.scale = INFINITY;
    r = kiln_scaled_dot_product_attention(ctx, q, k, v, NULL, &o);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "sdpa infinite scale", op, "scale", "kiln_sdpa_defaults");
    o = kiln_sdpa_defaults();
    o.impl = (kiln_sdpa_impl)7;
    r = kiln_scaled_dot_product_attention(ctx, q, k, v, NULL, &o);
    expect_err(ctx, r, KILN_ERR_INVALID_ARGUMENT, "sdpa impl", op, "impl = 7", "kiln_sdpa_defaults");
    /* defaults are torch's */
    o = kiln_sdpa_defaults();
    CHECK(o.dropout_p == 0 && !o.is_causal && isnan(o.scale) && o.impl == KILN_SDPA_FUSED, "kiln_sdpa_defaults");
    /* a failed call leaves the context usable */
    r = kiln_scaled_dot_product_attention(ctx, q, k, v, NULL, NULL);
    CHECK(r != NULL && kiln_error_status(ctx) == KILN_OK, "sdpa after errors: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "sdpa errors: %lld tensors left",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
    kiln_error_clear(ctx);
}

static void run(kiln_ctx *ctx) {
    test_errors(ctx);
    test_golden(ctx);
    test_views(ctx);
    test_heads(ctx);
    test_gradcheck(ctx);
    test_dropout(ctx);
    test_dropout_gradcheck(ctx);
    test_memory(ctx);
    test_long(ctx);
    CHECK_OK(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
