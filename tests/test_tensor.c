/* tests/test_tensor.c - tensor creation, host transfer, fills, views and copies, scopes,
 * the buffer pool; each against values computed independently on the host, and views,
 * contiguous, clone and arange against PyTorch (tests/golden/gen_view.py, gen_copy.py). */
#include "golden.h"
#include "harness.h"

static void test_roundtrip(kiln_ctx *ctx) {
    /* Odd sizes on purpose: 1 element, a prime, a 3-D shape, and an empty tensor. */
    int64_t shapes[][3] = {{1, 1, 1}, {1, 1, 13}, {5, 7, 11}, {0, 3, 2}};
    for (size_t s = 0; s < 4; s++) {
        int64_t n = h_numel(3, shapes[s]);
        float *x = malloc(sizeof(float) * (size_t)(n + 1)), *y = malloc(sizeof(float) * (size_t)(n + 1));
        h_fill(x, n, -3, 3);
        kiln_tensor *t = kiln_from_host(ctx, x, KILN_F32, 3, shapes[s]);
        CHECK(t != NULL, "from_host: %s", kiln_error_message(ctx));
        CHECK(kiln_to_host(t, y, sizeof(float) * (size_t)n) == KILN_OK, "to_host: %s", kiln_error_message(ctx));
        CHECK(n == 0 || memcmp(x, y, sizeof(float) * (size_t)n) == 0, "round trip of %lld floats not bit-exact",
              (long long)n);
        kiln_tensor_free(t);
        free(x);
        free(y);
    }
    int32_t iv[5] = {-7, 0, 1, 2147483647, -2147483647 - 1}, ov[5];
    kiln_tensor *ti = kiln_from_host(ctx, iv, KILN_I32, 1, (int64_t[]){5});
    CHECK(kiln_to_host(ti, ov, sizeof ov) == KILN_OK && memcmp(iv, ov, sizeof iv) == 0, "i32 round trip");
    kiln_tensor_free(ti);
    CHECK_OK(ctx);
}

static void test_fill_arange(kiln_ctx *ctx) {
    kiln_tensor *z = kiln_zeros(ctx, 2, (int64_t[]){3, 5});
    kiln_tensor *o = kiln_ones(ctx, 1, (int64_t[]){17});
    kiln_tensor *f = kiln_full(ctx, -2.5f, 0, NULL);
    float hz[15], ho[17];
    CHECK(kiln_to_host(z, hz, sizeof hz) == KILN_OK, "zeros");
    CHECK(kiln_to_host(o, ho, sizeof ho) == KILN_OK, "ones");
    int bad = 0;
    for (int i = 0; i < 15; i++) bad += hz[i] != 0.0f;
    for (int i = 0; i < 17; i++) bad += ho[i] != 1.0f;
    CHECK(bad == 0, "%d wrong values in zeros/ones", bad);
    CHECK(kiln_tensor_item(f) == -2.5f, "full 0-d gives %g", kiln_tensor_item(f));

    /* arange as torch: count = ceil((end - start) / step). */
    struct {
        double a, b, s;
    } r[] = {{0, 10, 1}, {1, 2, 0.3}, {5, -5, -2.5}, {3, 3, 1}};
    for (int k = 0; k < 4; k++) {
        kiln_tensor *t = kiln_arange(ctx, r[k].a, r[k].b, r[k].s);
        int64_t want = (int64_t)ceil((r[k].b - r[k].a) / r[k].s);
        CHECK(t && kiln_tensor_numel(t) == want, "arange(%g,%g,%g) has %lld elements, want %lld", r[k].a, r[k].b,
              r[k].s, (long long)kiln_tensor_numel(t), (long long)want);
        if (!t || want == 0) continue;
        float *h = h_read(t);
        double ref[16];
        for (int64_t i = 0; i < want; i++) ref[i] = r[k].a + (double)i * r[k].s;
        /* computed in float on the device: one rounding of the product and one of the sum */
        h_compare("arange", h, ref, want, 1e-6, 4e-7);
        free(h);
    }
    CHECK(kiln_arange(ctx, 0, 1, 0) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
          "arange with step 0 must fail");
    kiln_error_clear(ctx);

    /* fill through a strided view writes only the viewed elements */
    float base[4 * 6];
    for (int i = 0; i < 24; i++) base[i] = (float)i;
    kiln_tensor *b = kiln_from_host(ctx, base, KILN_F32, 2, (int64_t[]){4, 6});
    kiln_tensor *v = kiln_slice(ctx, kiln_transpose(ctx, b, 0, 1), 0, 1, 6, 2); /* cols 1,3,5 */
    CHECK(kiln_fill(v, -1.0f) == KILN_OK, "fill view: %s", kiln_error_message(ctx));
    float got[24];
    kiln_to_host(b, got, sizeof got);
    bad = 0;
    for (int i = 0; i < 24; i++) bad += got[i] != ((i % 6) % 2 == 1 ? -1.0f : (float)i);
    CHECK(bad == 0, "fill through a view: %d wrong elements", bad);
    kiln_tensor_free(z);
    kiln_tensor_free(o);
    kiln_tensor_free(f);
    CHECK_OK(ctx);
}

/* Each view op against the host view model, read back through kiln's strided copy. */
static void check_view(kiln_ctx *ctx, const char *what, kiln_tensor *t, const float *base, const h_view *hv) {
    CHECK(t != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!t) return;
    int64_t n = h_numel(hv->ndim, hv->shape);
    CHECK(kiln_tensor_ndim(t) == hv->ndim && memcmp(kiln_tensor_shape(t), hv->shape, sizeof(int64_t) * hv->ndim) == 0,
          "%s: wrong shape", what);
    float *got = h_read(t);
    double *ref = malloc(sizeof(double) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) ref[i] = h_at(base, hv, i);
    h_compare(what, got, ref, n, 0, 0); /* a copy must be exact */
    free(got);
    free(ref);
}

static void test_views(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int64_t shape[3] = {5, 7, 11};
    float base[5 * 7 * 11];
    h_fill(base, 385, -1, 1);
    kiln_tensor *t = kiln_from_host(ctx, base, KILN_F32, 3, shape);
    h_view hv = h_contig(3, shape);

    h_view ht = hv; /* transpose(0, 2) */
    ht.shape[0] = 11, ht.shape[2] = 5, ht.strides[0] = 1, ht.strides[2] = 77;
    kiln_tensor *tt = kiln_transpose(ctx, t, 0, 2);
    check_view(ctx, "transpose(0,2)", tt, base, &ht);
    CHECK(!kiln_tensor_is_contiguous(tt), "a transpose is not contiguous");

    h_view hp = {3, {7, 11, 5}, {11, 1, 77}, 0}; /* permute(1, 2, 0) */
    check_view(ctx, "permute(1,2,0)", kiln_permute(ctx, t, (int[]){1, 2, 0}), base, &hp);

    h_view hs = hv; /* slice dim 1, 1..6 step 2 */
    hs.shape[1] = 3, hs.strides[1] = 22, hs.offset = 11;
    kiln_tensor *ts = kiln_slice(ctx, t, 1, 1, 6, 2);
    check_view(ctx, "slice(1,1,6,2)", ts, base, &hs);
    h_view hn = hv; /* negative bounds clamp as Python */
    hn.shape[2] = 3, hn.offset = 8;
    check_view(ctx, "slice(2,-3,100)", kiln_slice(ctx, t, 2, -3, 100, 1), base, &hn);

    /* views of views: slice of a transpose, then reshape (needs a copy) */
    h_view hst = ht; /* transpose(0,2) then slice dim 0: 2..9 step 3 -> 2,5,8 */
    hst.shape[0] = 3, hst.strides[0] = 3, hst.offset = 2;
    kiln_tensor *tst = kiln_slice(ctx, tt, 0, 2, 9, 3);
    check_view(ctx, "slice of transpose", tst, base, &hst);
    kiln_tensor *flat = kiln_reshape(ctx, tst, 1, (int64_t[]){-1});
    CHECK(flat && kiln_tensor_is_contiguous(flat), "reshape of a strided view copies");
    h_view hflat = h_contig(1, (int64_t[]){105});
    float *stv = h_read(tst);
    check_view(ctx, "reshape(copy)", flat, stv, &hflat);
    free(stv);
    CHECK(kiln_view(ctx, tst, 1, (int64_t[]){-1}) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE,
          "view of a non-viewable layout must fail");
    kiln_error_clear(ctx);

    /* reshape of a contiguous tensor is a view: same storage, no copy */
    kiln_pool_stats before, after;
    kiln_pool_stats_get(ctx, &before);
    kiln_tensor *r = kiln_reshape(ctx, t, 2, (int64_t[]){35, -1});
    kiln_pool_stats_get(ctx, &after);
    CHECK(after.allocs == before.allocs, "reshape of a contiguous tensor allocated");
    h_view hr = h_contig(2, (int64_t[]){35, 11});
    check_view(ctx, "reshape(view)", r, base, &hr);
    /* reshape that merges a transposed pair into one axis is still a view when possible */
    kiln_tensor *sl = kiln_slice(ctx, t, 0, 1, 4, 1); /* [3,7,11] contiguous block at 77 */
    h_view hsl = h_contig(2, (int64_t[]){21, 11});
    hsl.offset = 77;
    check_view(ctx, "reshape of a slice", kiln_view(ctx, sl, 2, (int64_t[]){21, 11}), base, &hsl);

    /* expand / unsqueeze / squeeze */
    float row[7];
    h_fill(row, 7, 0, 1);
    kiln_tensor *rw = kiln_from_host(ctx, row, KILN_F32, 2, (int64_t[]){1, 7});
    h_view he = {3, {4, 3, 7}, {0, 0, 1}, 0};
    check_view(ctx, "expand", kiln_expand(ctx, rw, 3, (int64_t[]){4, 3, -1}), row, &he);
    CHECK(kiln_expand(ctx, rw, 2, (int64_t[]){2, 6}) == NULL && kiln_error_status(ctx) == KILN_ERR_SHAPE,
          "expand 7 -> 6 must fail");
    CHECK(strstr(kiln_error_message(ctx), "[1, 7]") != NULL, "message names the shape: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    h_view hu = {3, {1, 1, 7}, {7, 7, 1}, 0};
    check_view(ctx, "unsqueeze", kiln_unsqueeze(ctx, rw, 0), row, &hu);
    h_view hq = {1, {7}, {1}, 0};
    check_view(ctx, "squeeze", kiln_squeeze(ctx, rw, 0), row, &hq);

    /* views with a contiguous innermost dim of 16 or more (on CPUs a row per work-item):
     * a transpose of the outer dims, and a slice of the last dim that starts past 0 */
    int64_t lshape[3] = {6, 5, 40};
    float lbase[6 * 5 * 40];
    h_fill(lbase, 1200, -1, 1);
    kiln_tensor *lt = kiln_from_host(ctx, lbase, KILN_F32, 3, lshape);
    h_view hlt = {3, {5, 6, 40}, {40, 200, 1}, 0};
    check_view(ctx, "contiguous(transpose(0,1)), rows of 40", kiln_contiguous(ctx, kiln_transpose(ctx, lt, 0, 1)),
               lbase, &hlt);
    h_view hls = {3, {5, 6, 17}, {40, 200, 1}, 3};
    check_view(ctx, "contiguous(slice of a transpose), rows of 17",
               kiln_contiguous(ctx, kiln_slice(ctx, kiln_transpose(ctx, lt, 0, 1), 2, 3, 20, 1)), lbase, &hls);

    /* contiguous() of a transpose copies; of a contiguous tensor it does not */
    kiln_tensor *c = kiln_contiguous(ctx, tt);
    CHECK(c && kiln_tensor_is_contiguous(c), "contiguous");
    check_view(ctx, "contiguous(transpose)", c, base, &ht);
    kiln_tensor *cl = kiln_clone(ctx, t);
    check_view(ctx, "clone", cl, base, &hv);
    kiln_fill(cl, 0.0f);
    check_view(ctx, "base unchanged by filling a clone", t, base, &hv);
    CHECK_OK(ctx);
    kiln_scope_end(ctx);
}

static void test_scopes_and_pool(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_tensor *kept;
    kiln_scope_begin(ctx);
    kiln_tensor *a = kiln_ones(ctx, 1, (int64_t[]){1000});
    kept = kiln_tensor_keep(kiln_slice(ctx, a, 0, 0, 10, 1));
    kiln_scope_begin(ctx);
    kiln_zeros(ctx, 1, (int64_t[]){1000});
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before + 2, "inner scope freed its tensor (%lld live)",
          (long long)kiln_ctx_num_tensors(ctx));
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before + 1, "outer scope kept only the kept tensor");
    /* the kept view keeps its storage alive after its base was freed */
    float h[10];
    CHECK(kiln_to_host(kept, h, sizeof h) == KILN_OK && h[0] == 1.0f && h[9] == 1.0f, "kept view readable");
    kiln_tensor_free(kept);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "all freed");

    /* the pool reuses a freed buffer of the same bucket */
    kiln_pool_stats s0, s1;
    kiln_tensor *x = kiln_zeros(ctx, 1, (int64_t[]){3900}); /* same bucket as 4000 */
    kiln_tensor_free(x);
    kiln_pool_stats_get(ctx, &s0);
    x = kiln_zeros(ctx, 1, (int64_t[]){3900}); /* same bucket as 4000 */
    kiln_pool_stats_get(ctx, &s1);
    CHECK(s1.device_allocs == s0.device_allocs && s1.reuses == s0.reuses + 1, "pool reuse");
    CHECK(s1.in_use_bytes >= 4000 * 4 && s1.peak_in_use_bytes >= s1.in_use_bytes, "pool stats");
    kiln_tensor_free(x);
    kiln_pool_trim(ctx);
    kiln_pool_stats_get(ctx, &s1);
    CHECK(s1.cached_bytes == 0, "trim empties the cache");
    /* buckets: at most 25% over the request */
    for (size_t b = 1; b < (1u << 30); b = b * 3 + 1) {
        size_t k = kiln__pool_bucket(b);
        CHECK(k >= b && (b < 256 || k <= b + b / 4 + 1), "bucket(%zu) = %zu", b, k);
    }
    CHECK_OK(ctx);
}

/* Sentinels around every output: the strided copy, fill and arange kernels must write
 * exactly their elements. */
static void test_guards(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    kiln_scope_begin(ctx);
    float base[5 * 7 * 11];
    h_fill(base, 385, -1, 1);
    kiln_tensor *t = kiln_from_host(ctx, base, KILN_F32, 3, (int64_t[]){5, 7, 11});
    kiln_contiguous(ctx, kiln_permute(ctx, t, (int[]){2, 0, 1}));
    kiln_fill(kiln_slice(ctx, t, 2, 0, 11, 3), 7.0f);
    kiln_arange(ctx, 0, 99, 1);
    kiln_ones(ctx, 1, (int64_t[]){3});
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "%d guard regions overwritten: %s", bad, msg);
    /* the guard check itself works: a write past the end is seen */
    kiln_tensor *g = kiln_zeros(ctx, 1, (int64_t[]){8});
    kiln_tensor *past = kiln__tensor_view(ctx, g, 1, (int64_t[]){9}, (int64_t[]){1}, kiln_tensor_offset(g));
    kiln_fill(past, 1.0f);
    CHECK(kiln__check_guards(ctx, msg, sizeof msg) > 0, "a write past the end must be detected");
    kiln_scope_end(ctx);
    kiln__set_guard(ctx, 0);
    CHECK_OK(ctx);
}

/* ---- PyTorch golden values (tests/golden/gen_view.py, gen_copy.py) ------------------------ */
/*
 * Views and copies move values without arithmetic: outputs and gradients exact, except
 * expand's gradient, a float sum of the seed over the k output elements an input element
 * is broadcast to: k - 1 additions of <= 1 u (u = 2^-24) of sum|g| each, plus torch's
 * float64 result rounded once to float32 (1 u |ref| <= 1 u sum|g|): k u * <case>.mdx.
 * arange: start + (float)i * step in float (cl_kernels/copy.cl) with start and step float32
 * values, which torch also used: two roundings, u |i step| + u |out|, and torch's rounding
 * u |ref|; the test bounds |i step| by (n - 1) |step|.
 */

/* Compares out with <c>.out, runs backward from <c>.g and compares x's gradient with <c>.dx
 * (k > 1: expand's sum of k terms, against <c>.mdx; else exact). */
static void gold_view_case(kiln_ctx *ctx, const golden *g, const char *c, kiln_tensor *x, kiln_tensor *out, int64_t k) {
    char name[160], mname[160], what[200];
    CHECK(out != NULL, "golden %s: %s", c, kiln_error_message(ctx));
    if (!out) return;
    snprintf(name, sizeof name, "%s.out", c);
    snprintf(what, sizeof what, "golden %s output", c);
    golden_compare_scaled(what, out, golden_get(g, name), NULL, 0, 0, 0);
    snprintf(name, sizeof name, "%s.g", c);
    kiln_tensor *seed = golden_upload(ctx, golden_get(g, name));
    CHECK(seed && kiln_backward_ex(out, seed, false) == KILN_OK, "golden %s backward: %s", c, kiln_error_message(ctx));
    snprintf(name, sizeof name, "%s.dx", c);
    snprintf(mname, sizeof mname, "%s.mdx", c);
    snprintf(what, sizeof what, "golden %s dx", c);
    golden_compare_scaled(what, kiln_tensor_grad(x), golden_get(g, name), k > 1 ? golden_get(g, mname) : NULL, 0,
                          k > 1 ? (double)k : 0, 0);
}

/* The leaf <c>.x (transposed (0, 1) when t), requiring grad. */
static kiln_tensor *gold_x(kiln_ctx *ctx, const golden *g, const char *c, bool t) {
    char name[160];
    snprintf(name, sizeof name, "%s.x", c);
    kiln_tensor *x = golden_upload(ctx, golden_get(g, name));
    if (t) x = kiln_transpose(ctx, x, 0, 1);
    if (x) kiln_tensor_set_requires_grad(x, true);
    return x;
}

static void test_golden_views(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "view")) return;
    kiln_scope_begin(ctx);
    kiln_tensor *x;
    x = gold_x(ctx, &g, "reshape.c", false);
    gold_view_case(ctx, &g, "reshape.c", x, kiln_reshape(ctx, x, 2, (int64_t[]){4, -1}), 1);
    x = gold_x(ctx, &g, "reshape.nc", true); /* not viewable: a copy */
    gold_view_case(ctx, &g, "reshape.nc", x, kiln_reshape(ctx, x, 2, (int64_t[]){3, -1}), 1);
    x = gold_x(ctx, &g, "view.c", false);
    gold_view_case(ctx, &g, "view.c", x, kiln_view(ctx, x, 2, (int64_t[]){6, -1}), 1);
    x = gold_x(ctx, &g, "transpose.neg", false);
    gold_view_case(ctx, &g, "transpose.neg", x, kiln_transpose(ctx, x, -1, 0), 1);
    x = gold_x(ctx, &g, "permute.4d", false);
    gold_view_case(ctx, &g, "permute.4d", x, kiln_permute(ctx, x, (int[]){2, 0, 3, 1}), 1);
    x = gold_x(ctx, &g, "slice.neg", false);
    gold_view_case(ctx, &g, "slice.neg", x, kiln_slice(ctx, x, -1, -6, -1, 2), 1);
    x = gold_x(ctx, &g, "slice.clamp", false);
    gold_view_case(ctx, &g, "slice.clamp", x, kiln_slice(ctx, x, 0, 1, 100, 3), 1);
    x = gold_x(ctx, &g, "expand.bc", false);
    gold_view_case(ctx, &g, "expand.bc", x, kiln_expand(ctx, x, 3, (int64_t[]){2, 3, 4}), 8);
    x = gold_x(ctx, &g, "expand.keep", false);
    gold_view_case(ctx, &g, "expand.keep", x, kiln_expand(ctx, x, 2, (int64_t[]){3, -1}), 3);
    x = gold_x(ctx, &g, "unsqueeze.neg", false);
    gold_view_case(ctx, &g, "unsqueeze.neg", x, kiln_unsqueeze(ctx, x, -1), 1);
    x = gold_x(ctx, &g, "unsqueeze.0", false);
    gold_view_case(ctx, &g, "unsqueeze.0", x, kiln_unsqueeze(ctx, x, 0), 1);
    x = gold_x(ctx, &g, "squeeze.neg", false);
    gold_view_case(ctx, &g, "squeeze.neg", x, kiln_squeeze(ctx, x, -2), 1);
    x = gold_x(ctx, &g, "squeeze.all", false);
    gold_view_case(ctx, &g, "squeeze.all", x, kiln_squeeze(ctx, x, -KILN_MAX_DIMS - 1), 1);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    golden_close(&g);
}

static void test_golden_copies(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "copy")) return;
    kiln_scope_begin(ctx);
    kiln_tensor *x = gold_x(ctx, &g, "contiguous.nc", true);
    gold_view_case(ctx, &g, "contiguous.nc", x, kiln_contiguous(ctx, x), 1);
    x = kiln_slice(ctx, golden_upload(ctx, golden_get(&g, "clone.nc.x")), 1, 1, 7, 2);
    if (x) kiln_tensor_set_requires_grad(x, true);
    gold_view_case(ctx, &g, "clone.nc", x, kiln_clone(ctx, x), 1);
    x = gold_x(ctx, &g, "clone.c", false);
    gold_view_case(ctx, &g, "clone.c", x, kiln_clone(ctx, x), 1);
    for (int k = 0; k < 5; k++) {
        char name[64], what[96];
        snprintf(name, sizeof name, "arange.%d.p", k);
        const golden_tensor *p = golden_get(&g, name);
        snprintf(name, sizeof name, "arange.%d.out", k);
        const golden_tensor *ref = golden_get(&g, name);
        if (!p || !ref) continue;
        kiln_tensor *t = kiln_arange(ctx, p->f[0], p->f[1], p->f[2]);
        snprintf(what, sizeof what, "golden arange(%g, %g, %g)", p->f[0], p->f[1], p->f[2]);
        CHECK(t && kiln_tensor_numel(t) == ref->numel, "%s: %lld elements, PyTorch %lld: %s", what,
              t ? (long long)kiln_tensor_numel(t) : -1LL, (long long)ref->numel, kiln_error_message(ctx));
        if (!t || kiln_tensor_numel(t) != ref->numel) continue;
        double u = 0x1p-24, span = (double)(ref->numel - 1) * fabs((double)p->f[2]);
        golden_compare_scaled(what, t, ref, NULL, u * span, 0, 2);
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    golden_close(&g);
}

static void run(kiln_ctx *ctx) {
    test_roundtrip(ctx);
    test_fill_arange(ctx);
    test_views(ctx);
    test_scopes_and_pool(ctx);
    test_guards(ctx);
    test_golden_views(ctx);
    test_golden_copies(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
