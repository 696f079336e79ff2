/* tests/test_gemm.c - kiln's own GEMM kernels (cl_kernels/gemm.cl, src/ops/gemm.c) called
 * through the router kiln__sgemm with every argument it takes: each parameter set of the
 * table (the devices' and the odd ones only tests force), each transpose combination
 * (A^T B^T is gemm_nn on (B, A) with a transposed store), alpha and beta, batches with
 * offsets, padded leading dims and batch strides, K operands read through a padded copy;
 * against a double-precision host reference, with every element of C's buffer outside the
 * product checked unchanged. Then the router's choice on this device, and kiln_matmul of
 * transposed views and its backward with kiln's kernels forced and with CLBlast forced.
 *
 * Tolerance: an output is alpha s + beta c with s a dot product of k terms; evaluated in f32
 * in any order it is within gamma_k |alpha| sum |a||b| of the exact value (Higham 3.1), and
 * the scaling by alpha, the product beta c and the final add add a rounding each:
 * |got - ref| <= TOL_C (k + 3) u (|alpha| sum_p |a_ip||b_pj| + |beta c|), u = 2^-24,
 * TOL_C = 2 as in test_matmul.c (the 1/(1 - ku) factor and the reference's own rounding).
 * Inputs are exact floats, so the reference is exact to ~1e-16.
 *
 * KILN_TEST_SMALL=1 (scripts/check oclgrind runs this under Oclgrind) keeps one ragged
 * product, one batch and one k = 0 per set and transpose, and the padded copies with one
 * set: every variant of the kernels still runs once. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "harness.h"
#include "kiln_test_hooks.h"

#define U_F32 (1.0 / 16777216.0)
#define TOL_C 2.0

static bool g_small; /* KILN_TEST_SMALL */

/* One product: geometry in elements, as kiln__sgemm takes it. The pads widen the leading
 * dims and batch strides past the dense ones. */
typedef struct {
    bool ta, tb;
    size_t m, n, k, batch;
    float alpha, beta;
    size_t aoff, lda, astride, boff, ldb, bstride, coff, ldc, cstride;
} gcase;

/* Dense geometry plus pads: ld = dense + lpad, stride = rows * ld + spad, offset off. */
static gcase geom(bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch, float alpha, float beta, size_t off,
                  size_t lpad, size_t spad) {
    gcase g = {ta, tb, m, n, k, batch, alpha, beta, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    g.lda = (ta ? m : k) + lpad;
    g.astride = batch > 1 ? (ta ? k : m) * g.lda + spad : 0;
    g.ldb = (tb ? k : n) + lpad;
    g.bstride = batch > 1 ? (tb ? n : k) * g.ldb + spad : 0;
    g.ldc = n + lpad;
    g.cstride = batch > 1 ? m * g.ldc + spad : 0;
    g.aoff = off, g.boff = 2 * off, g.coff = 3 * off;
    return g;
}

/* Elements a buffer needs for `batch` matrices of rows x cols at off + b * stride. */
static size_t span(size_t off, size_t rows, size_t cols, size_t ld, size_t stride, size_t batch) {
    if (rows == 0 || cols == 0 || batch == 0) return off + 1;
    return off + (batch - 1) * stride + (rows - 1) * ld + cols + 1;
}

/* Runs g through kiln__sgemm on buffers filled with values in [-1, 1) and checks C. With
 * beta == 0 the outputs start as NaN: the kernels must not read them. */
static void run_case(kiln_ctx *ctx, const char *what, const gcase *g) {
    size_t ar = g->ta ? g->k : g->m, ac = g->ta ? g->m : g->k;
    size_t br = g->tb ? g->n : g->k, bc = g->tb ? g->k : g->n;
    size_t na = span(g->aoff, ar, ac, g->lda, g->astride, g->batch);
    size_t nb = span(g->boff, br, bc, g->ldb, g->bstride, g->batch);
    size_t nc = span(g->coff, g->m, g->n, g->ldc, g->cstride, g->batch);
    float *ha = malloc(na * sizeof(float)), *hb = malloc(nb * sizeof(float)), *hc = malloc(nc * sizeof(float));
    float *got = malloc(nc * sizeof(float));
    h_fill(ha, (int64_t)na, -1, 1);
    h_fill(hb, (int64_t)nb, -1, 1);
    h_fill(hc, (int64_t)nc, -1, 1);
    if (g->beta == 0.0f)
        for (size_t b = 0; b < g->batch; b++)
            for (size_t i = 0; i < g->m; i++)
                for (size_t j = 0; j < g->n; j++) hc[g->coff + b * g->cstride + i * g->ldc + j] = NAN;
    kiln_scope_begin(ctx);
    kiln_tensor *ta = kiln_from_host(ctx, ha, KILN_F32, 1, (int64_t[]){(int64_t)na});
    kiln_tensor *tb = kiln_from_host(ctx, hb, KILN_F32, 1, (int64_t[]){(int64_t)nb});
    kiln_tensor *tc = kiln_from_host(ctx, hc, KILN_F32, 1, (int64_t[]){(int64_t)nc});
    CHECK(ta && tb && tc, "%s: upload: %s", what, kiln_error_message(ctx));
    if (ta && tb && tc) {
        int rc = kiln__sgemm(ctx, "test_gemm", g->ta, g->tb, g->m, g->n, g->k, g->alpha, ta->st->mem,
                             (size_t)ta->offset + g->aoff, g->lda, g->astride, tb->st->mem,
                             (size_t)tb->offset + g->boff, g->ldb, g->bstride, g->beta, tc->st->mem,
                             (size_t)tc->offset + g->coff, g->ldc, g->cstride, g->batch);
        CHECK(rc == 0, "%s: kiln__sgemm returned %d: %s", what, rc, kiln_error_message(ctx));
        CHECK(kiln_to_host(tc, got, nc * sizeof(float)) == KILN_OK, "%s: read back: %s", what, kiln_error_message(ctx));
        /* every element: the product's outputs within the bound, the rest unchanged */
        char *in = calloc(nc, 1);
        size_t bad = 0;
        for (size_t b = 0; b < g->batch; b++)
            for (size_t i = 0; i < g->m; i++)
                for (size_t j = 0; j < g->n; j++) {
                    double s = 0, mag = 0;
                    for (size_t p = 0; p < g->k; p++) {
                        double x = ha[g->aoff + b * g->astride + (g->ta ? p * g->lda + i : i * g->lda + p)];
                        double y = hb[g->boff + b * g->bstride + (g->tb ? j * g->ldb + p : p * g->ldb + j)];
                        s += x * y;
                        mag += fabs(x * y);
                    }
                    size_t e = g->coff + b * g->cstride + i * g->ldc + j;
                    in[e] = 1;
                    double c0 = g->beta == 0.0f ? 0.0 : (double)hc[e];
                    double ref = (double)g->alpha * s + (double)g->beta * c0;
                    double tol = TOL_C * (double)(g->k + 3) * U_F32 *
                                 (fabs((double)g->alpha) * mag + fabs((double)g->beta * c0));
                    if (!(fabs((double)got[e] - ref) <= tol) && bad++ == 0)
                        fprintf(stderr, "  %s: batch %zu C[%zu, %zu] = %.9g, reference %.9g (bound %.3g)\n", what, b, i,
                                j, (double)got[e], ref, tol);
                }
        size_t stray = 0;
        for (size_t e = 0; e < nc; e++)
            if (!in[e] && memcmp(&got[e], &hc[e], sizeof(float)) != 0 && stray++ == 0)
                fprintf(stderr, "  %s: element %zu outside the product changed: %.9g, was %.9g\n", what, e,
                        (double)got[e], (double)hc[e]);
        CHECK(bad == 0 && stray == 0,
              "%s (%s%s m=%zu n=%zu k=%zu batch=%zu alpha=%g beta=%g): %zu outputs outside "
              "the bound, %zu elements outside the product written",
              what, g->ta ? "A^T" : "A", g->tb ? " B^T" : " B", g->m, g->n, g->k, g->batch, (double)g->alpha,
              (double)g->beta, bad, stray);
        free(in);
    }
    if (ctx->guard > 0) {
        char msg[256];
        int bad = kiln__check_guards(ctx, msg, sizeof msg);
        CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    free(ha), free(hb), free(hc), free(got);
}

/* floats of sentinels before and after every storage (run: kiln__set_guard) */
#define GUARD 67
static const char *const tnames[4] = {"A B", "A^T B", "A B^T", "A^T B^T"};
static const float alphas[3] = {1.0f, -0.75f, 2.0f}, betas[3] = {0.0f, 0.5f, 1.0f};

/* Each set of the table forced on this device, each transpose combination: m, n and k on
 * each side of the kernel's block, vector and K step (the kernel's M and N are kiln's n and
 * m for A^T B^T), alpha/beta pairs in turn; then batches with offsets, padded leading dims
 * and strides; k = 0 (C = beta C). */
static void test_sets(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    for (int s = 0; s < KILN__GEMM_SETS; s++) {
        const kiln__gemm_params *p = &kiln__gemm_sets[s];
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        CHECK(kiln__gemm_params_of(ctx) == p, "set %d: the hook did not select it", s);
        for (int f = 0; f < 4; f++) {
            bool ta = f & 1, tb = f & 2, nt = tb && !ta;
            /* the kernel's block, vector and K step; its rows are kiln's columns for A^T B^T */
            size_t rm = nt ? (size_t)p->nt_rm : (size_t)p->nn_rm;
            size_t rn = nt ? (size_t)p->nt_rn : (size_t)(p->nn_nv * p->nn_vw);
            size_t vw = nt ? (size_t)p->nt_vw : (size_t)p->nn_vw;
            size_t kstep = nt ? (size_t)(p->nt_vw * p->nt_ku) : (size_t)p->nn_ku;
            size_t km[] = {1, rm, rm + 1, 2 * rm - 1, 3 * rm + 2};
            size_t kn[] = {1, rn, rn + 1, vw + 1, 2 * rn - 1, rn + vw + 3, 9 * rn + 1};
            size_t ks[] = {1, vw > 1 ? vw - 1 : 2, kstep, kstep + 1, kstep + vw + 3, 3 * kstep + vw - 1, 100};
            int c = 0;
            for (size_t i = g_small ? 2 : 0; i < (g_small ? 3 : sizeof km / sizeof km[0]); i++)
                for (size_t j = g_small ? 4 : 0; j < (g_small ? 5 : sizeof ks / sizeof ks[0]); j++, c++) {
                    size_t a = km[i], b = kn[(i + j) % (sizeof kn / sizeof kn[0])];
                    size_t m = ta && tb ? b : a, n = ta && tb ? a : b;
                    gcase g = geom(ta, tb, m, n, ks[j], 1, alphas[c % 3], betas[(c / 3) % 3], 0, 0, 0);
                    char what[96];
                    snprintf(what, sizeof what, "set %s: %s", p->name, tnames[f]);
                    run_case(ctx, what, &g);
                }
            /* batched, at offsets, with padded leading dims and batch strides */
            size_t bm = rm + 1, bn = rn + vw + 1, bk = kstep + 3;
            for (int v = g_small ? 1 : 0; v < (g_small ? 2 : 3); v++) {
                size_t m = ta && tb ? bn : bm, n = ta && tb ? bm : bn;
                gcase g = geom(ta, tb, m, n, bk, 3, alphas[v], betas[v], (size_t)(5 + v), (size_t)(3 * v + 1),
                               (size_t)(7 * v + 2));
                char what[96];
                snprintf(what, sizeof what, "set %s: %s batched", p->name, tnames[f]);
                run_case(ctx, what, &g);
            }
            /* an empty inner dim: C = beta C (and with beta 0, zeros over the NaNs) */
            gcase g = geom(ta, tb, bm, bn, 0, 2, 1.5f, 0.5f, 3, 2, 5);
            char what[96];
            snprintf(what, sizeof what, "set %s: %s k = 0", p->name, tnames[f]);
            run_case(ctx, what, &g);
            g.beta = 0.0f;
            run_case(ctx, what, &g);
        }
    }
    kiln__hooks_of(ctx)->gemm_params = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* K operands whose rows lie a multiple of 4096 bytes apart (leading dim 1024 floats; for
 * the avx2 set's A^T, 1024 bytes) go through gemm_copy into a padded buffer
 * (src/ops/gemm.c, kiln__gemm_pad_wanted): B for A B and A^T B, A for A^T B, kiln's A (the
 * kernel's B) for A^T B^T; batched at offsets.
 * KILN_GEMM_PAD=on pads whenever the rows conflict (small shapes, the device's set and an
 * odd one), =off never; then the automatic choice on shapes large enough to pad. */
static void test_padded(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    CHECK(kiln__gemm_pad_wanted(1024, 130, 16, 16, 1024) && kiln__gemm_pad_wanted(2048, 130, 40, 16, 1024) &&
              !kiln__gemm_pad_wanted(1040, 130, 40, 16, 1024) && !kiln__gemm_pad_wanted(1024, 16, 40, 16, 1024) &&
              !kiln__gemm_pad_wanted(1024, 130, 8, 16, 1024) && kiln__gemm_pad_wanted(1024, 130, 8, 8, 1024) &&
              kiln__gemm_pad_wanted(1024, 64, 1, 1, 1024) && !kiln__gemm_pad_wanted(1024, 63, 1, 1, 1024) &&
              !kiln__gemm_pad_wanted(512, 130, 1, 1, 1024) && kiln__gemm_pad_wanted(512, 130, 1, 1, 256) &&
              kiln__gemm_pad_wanted(768, 130, 1, 1, 256) && !kiln__gemm_pad_wanted(384, 130, 1, 1, 256),
          "kiln__gemm_pad_wanted: not as the tests below assume");
    static const char *const passes[4] = {"KILN_GEMM_PAD=on", "KILN_GEMM_PAD=on, set odd-b", "KILN_GEMM_PAD=off",
                                          "automatic"};
    for (int pass = 0; pass < (g_small ? 1 : 4); pass++) {
        kiln__hooks_of(ctx)->gemm_params = pass == 1 ? KILN__GEMM_SETS : 0; /* odd-b */
        kiln_sync(ctx); /* setenv with nothing running: POCL's threads call getenv */
        if (pass < 3)
            setenv("KILN_GEMM_PAD", pass < 2 ? "on" : "off", 1);
        else
            unsetenv("KILN_GEMM_PAD");
        /* automatic: 16 and more blocks of the widest set (8 x 32) read each panel */
        size_t m = pass == 3 ? 130 : 9, n = pass == 3 ? 520 : 37, k = pass == 3 ? 130 : 20;
        for (int f = 0; f < 4; f++) {
            bool ta = f & 1, tb = f & 2;
            for (size_t batch = g_small || pass == 3 ? 2 : 1; batch <= 2; batch++) {
                gcase g = geom(ta, tb, m, n, k, batch, alphas[f % 3], betas[(f + (int)batch) % 3], 7, 0, 9);
                /* leading dims of 1024 floats for both operands (and C) */
                g.lda = g.ldb = g.ldc = 1024;
                g.astride = batch > 1 ? (ta ? k : m) * 1024 + 9 : 0;
                g.bstride = batch > 1 ? (tb ? n : k) * 1024 + 9 : 0;
                g.cstride = batch > 1 ? m * 1024 + 9 : 0;
                char what[96];
                snprintf(what, sizeof what, "%s: %s, leading dims 1024", passes[pass], tnames[f]);
                run_case(ctx, what, &g);
            }
        }
    }
    kiln_sync(ctx);
    unsetenv("KILN_GEMM_PAD");
    kiln__hooks_of(ctx)->gemm_params = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* A B^T through `route` with every parameter set (the first with KILN_TEST_SMALL): the
 * product of shape one (m, n, k) alone, and of shape two batched twice at offsets with
 * padded leading dims and strides. */
static void nt_every_set(kiln_ctx *ctx, const char *route, const size_t one[3], const size_t two[3]) {
    for (int s = 0; s < (g_small ? 1 : KILN__GEMM_SETS); s++) {
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        char what[96];
        snprintf(what, sizeof what, "set %s: %s", kiln__gemm_sets[s].name, route);
        gcase g = geom(false, true, one[0], one[1], one[2], 1, alphas[s % 3], betas[s % 3], 0, 0, 0);
        run_case(ctx, what, &g);
        snprintf(what, sizeof what, "set %s: %s batched", kiln__gemm_sets[s].name, route);
        g = geom(false, true, two[0], two[1], two[2], 2, alphas[(s + 1) % 3], betas[(s + 1) % 3], 5, 3, 9);
        run_case(ctx, what, &g);
    }
    kiln__hooks_of(ctx)->gemm_params = 0;
}

/* A B^T with M >= 512 and K <= 512 runs as gemm_nn on a transposed copy of B
 * (gemm_transpose, src/ops/gemm.c's nt_as_nn): every set, M, N and K ragged against the
 * blocks, alone and batched at offsets with padded leading dims and strides; such a linear
 * layer's bias is added by gemm_nn's store (kiln__gemm_bias_takes says yes; test_linear_bias
 * checks the results). */
static void test_nt_as_nn(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    CHECK(kiln__gemm_bias_takes(ctx, false, true, 515, 37, 45, 1) &&
              strcmp(kiln__gemm_kernel(false, true, 515, 37, 45), "gemm_nn") == 0 &&
              strcmp(kiln__gemm_kernel(false, true, 511, 37, 45), "gemm_nt") == 0,
          "kiln__gemm_kernel: not as nt_as_nn's rule (M >= 512, K <= 512) says, or no bias epilogue there");
    nt_every_set(ctx, "A B^T as A (B^T)", (const size_t[3]){515, 37, 45},
                 (const size_t[3]){513, 19, g_small ? 70 : 512});
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* A B^T with M < 512, K <= 128, N >= 1024 and M K <= 64 Ki runs as A^T B^T (gemm_nn with
 * the transposed store) on a transposed copy of A (src/ops/gemm.c's nt_as_tc): every set,
 * M, N and K ragged against the blocks, alone and batched at offsets with padded leading
 * dims and strides; such a linear layer adds its bias in a kernel of its own. */
static void test_nt_as_tc(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    CHECK(!kiln__gemm_bias_takes(ctx, false, true, 37, 1030, 45, 1) &&
              kiln__gemm_bias_takes(ctx, false, true, 37, 1030, 129, 1) &&
              kiln__gemm_bias_takes(ctx, false, true, 37, 1023, 45, 1) &&
              strcmp(kiln__gemm_kernel(false, true, 37, 1030, 45), "gemm_nn") == 0 &&
              strcmp(kiln__gemm_kernel(false, true, 37, 1030, 129), "gemm_nt") == 0,
          "kiln__gemm_bias_takes / kiln__gemm_kernel: not as nt_as_tc's rule (M < 512, K <= 128, N >= 1024) says");
    nt_every_set(ctx, "A B^T as (A^T)^T B^T", (const size_t[3]){37, 1030, 45},
                 (const size_t[3]){19, 1024, g_small ? 7 : 128});
    /* the transposed copy the pool cannot hold (A's here; B's of a narrow A B, test_narrow's
     * route): the product fails naming the op, nothing left behind */
    static const struct {
        bool tb;
        size_t m, n, k;
        const char *what;
    } oom[2] = {{true, 9, 1024, 20, "the copy of A"}, {false, 37, 9, 20, "the copy of a narrow B"}};
    for (int i = 0; i < 2; i++) {
        size_t m = oom[i].m, n = oom[i].n, k = oom[i].k;
        kiln_scope_begin(ctx);
        float *h = calloc((m + n) * k + m * n, sizeof(float));
        kiln_tensor *a = kiln_from_host(ctx, h, KILN_F32, 1, (int64_t[]){(int64_t)(m * k)});
        kiln_tensor *b = kiln_from_host(ctx, h, KILN_F32, 1, (int64_t[]){(int64_t)(n * k)});
        kiln_tensor *c = kiln_from_host(ctx, h, KILN_F32, 1, (int64_t[]){(int64_t)(m * n)});
        CHECK(a && b && c, "upload: %s", kiln_error_message(ctx));
        if (a && b && c) {
            int64_t tensors = kiln_ctx_num_tensors(ctx);
            kiln__pool_fail_after(ctx, 1);
            int rc = kiln__sgemm(ctx, "test_gemm_oom", false, oom[i].tb, m, n, k, 1.0f, a->st->mem, (size_t)a->offset,
                                 k, 0, b->st->mem, (size_t)b->offset, oom[i].tb ? k : n, 0, 0.0f, c->st->mem,
                                 (size_t)c->offset, n, 0, 1);
            kiln__pool_fail_after(ctx, 0);
            CHECK(rc == KILN__SGEMM_FAILED && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY &&
                      strstr(kiln_error_message(ctx), "test_gemm_oom"),
                  "%s failing: rc %d, %s", oom[i].what, rc, kiln_error_message(ctx));
            CHECK(kiln_ctx_num_tensors(ctx) == tensors, "%s failing: %lld tensors left behind", oom[i].what,
                  (long long)(kiln_ctx_num_tensors(ctx) - tensors));
            kiln_error_clear(ctx);
        }
        kiln_scope_end(ctx);
        free(h);
    }
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* op(A) B with 2 to 15 columns and more rows (src/ops/gemm.c's narrow_n): A^T B as
 * C^T = B^T A (gemm_nn with the transposed store, reading B transposed), A B in gemm_nt on a
 * transposed copy of B; and A B^T so narrow with M >= 512 stays in gemm_nt (no copy of B for
 * gemm_nn). Every set, M, N and K ragged, alone and batched at offsets with padded leading
 * dims and strides. */
static void test_narrow(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    CHECK(strcmp(kiln__gemm_kernel(false, false, 37, 9, 20), "gemm_nt") == 0 &&
              strcmp(kiln__gemm_kernel(true, false, 37, 9, 20), "gemm_nn") == 0 &&
              strcmp(kiln__gemm_kernel(false, true, 600, 9, 20), "gemm_nt") == 0 &&
              strcmp(kiln__gemm_kernel(false, false, 37, 16, 20), "gemm_nn") == 0 &&
              strcmp(kiln__gemm_kernel(false, false, 9, 15, 20), "gemm_nn") == 0,
          "kiln__gemm_kernel: not as narrow_n's rule (2..15 columns, more rows) says");
    static const size_t ns[] = {2, 3, 7, 9, 15};
    int c = 0;
    for (int s = 0; s < (g_small ? 1 : KILN__GEMM_SETS); s++) {
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        for (int f = 0; f < 3; f++) { /* A B, A^T B, A B^T (M >= 512) */
            bool ta = f == 1, tb = f == 2;
            for (size_t i = g_small ? 3 : 0; i < (g_small ? 4 : sizeof ns / sizeof ns[0]); i++, c++) {
                size_t n = ns[i], m = tb ? 515 : n + 1 + 17 * i, k = 5 + 19 * i;
                char what[96];
                snprintf(what, sizeof what, "set %s: %s, %zu columns (%s)", kiln__gemm_sets[s].name, tnames[f], n,
                         kiln__gemm_kernel(ta, tb, m, n, k));
                gcase g = geom(ta, tb, m, n, k, 1, alphas[c % 3], betas[(c / 3) % 3], 0, 0, 0);
                run_case(ctx, what, &g);
                if (g_small || i % 2) continue;
                snprintf(what, sizeof what, "set %s: %s, %zu columns, batched", kiln__gemm_sets[s].name, tnames[f], n);
                g = geom(ta, tb, m, n, k, 2, alphas[(c + 1) % 3], betas[(c + 1) % 3], 5, 3, 9);
                run_case(ctx, what, &g);
            }
        }
        /* gemm_nn's last block of a row with a vector or more but fewer columns than the
         * block: its vectors shifted back to end at N, overlapping (beta 0.5 and 1: C read
         * before it is written; A^T B^T: the transposed store writes each column once) */
        const kiln__gemm_params *p = &kiln__gemm_sets[s];
        size_t bn = (size_t)(p->nn_nv * p->nn_vw), vw = (size_t)p->nn_vw;
        for (int f = 0; f < 4; f++) {
            if (f == 2) continue; /* A B^T: gemm_nt */
            bool ta = f & 1, tb = f & 2;
            for (int b = 0; b < 3; b++, c++) {
                size_t n = bn + vw + (size_t)b + 1, m = 2 * (size_t)p->nn_rm + 3;
                gcase g = geom(ta, tb, ta && tb ? n : m, ta && tb ? m : n, 7 + (size_t)b, b == 2 ? 2 : 1, alphas[c % 3],
                               betas[b], 3, (size_t)b, 5);
                char what[96];
                snprintf(what, sizeof what, "set %s: %s, shifted last block", p->name, tnames[f]);
                run_case(ctx, what, &g);
            }
        }
    }
    kiln__hooks_of(ctx)->gemm_params = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* K > 1024 through gemm_nn in slices of 512 k adding into C (src/ops/gemm.c,
 * ksplit_wanted): every set and each transpose that gemm_nn runs, m, n and the last slice
 * ragged, beta 0 (C's NaNs never read) and not, alone and batched at offsets. */
static void test_ksplit(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    static const int forms[3] = {0, 1, 3}; /* A B, A^T B, A^T B^T */
    for (int s = 0; s < (g_small ? 1 : KILN__GEMM_SETS); s++) {
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        for (int i = g_small ? 1 : 0; i < (g_small ? 2 : 3); i++) {
            int f = forms[i];
            bool ta = f & 1, tb = f & 2;
            char what[96];
            snprintf(what, sizeof what, "set %s: %s, K in slices", kiln__gemm_sets[s].name, tnames[f]);
            gcase g = geom(ta, tb, 67, 70, 1100, 1, alphas[(s + i) % 3], betas[(s + i) % 3], 0, 0, 0);
            run_case(ctx, what, &g);
            if (g_small) continue;
            snprintf(what, sizeof what, "set %s: %s, K in slices, batched", kiln__gemm_sets[s].name, tnames[f]);
            g = geom(ta, tb, 65, 64, 1537, 2, alphas[(s + i + 1) % 3], betas[(s + i + 1) % 3], 5, 3, 9);
            run_case(ctx, what, &g);
        }
    }
    kiln__hooks_of(ctx)->gemm_params = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* Products with one output row or column (m or n 1) run in gemv_rows or gemv_cols
 * (src/ops/gemm.c's gemv_takes): every set, each transpose, both forms; L (the outputs)
 * on each side of the kernels' vectors and of gemv_cols's wide strips (4 strips of 8
 * vectors and more, with whole vectors and single outputs past the last strip), K past
 * the vector and unroll steps and 0; alone and batched at offsets with padded leading dims
 * and strides, x read with a stride (B's column, A^T's row). */
static void test_gemv(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    for (int s = 0; s < (g_small ? 1 : KILN__GEMM_SETS); s++) {
        const kiln__gemm_params *p = &kiln__gemm_sets[s];
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        size_t vw = (size_t)p->nn_vw, wide = 32 * vw;
        size_t ls[] = {1, 3, vw - 1 > 0 ? vw - 1 : 2, vw + 1, 4 * vw + 5, wide, wide + 8 * vw + vw + 3};
        size_t ks[] = {1, 5, (size_t)p->nt_vw + 3, 37, 300};
        int c = 0;
        for (int f = 0; f < 4; f++)
            for (int col = 0; col < 2; col++)
                for (size_t i = g_small ? 5 : 0; i < sizeof ls / sizeof ls[0]; i++, c++) {
                    bool ta = f & 1, tb = f & 2;
                    size_t L = ls[i], k = ks[(i + (size_t)f) % (sizeof ks / sizeof ks[0])];
                    gcase g = geom(ta, tb, col ? L : 1, col ? 1 : L, k, 1, alphas[c % 3], betas[(c / 3) % 3], 0, 0, 0);
                    char what[96];
                    snprintf(what, sizeof what, "set %s: %s, %s 1 (%s)", p->name, tnames[f], col ? "n" : "m",
                             kiln__gemm_kernel(ta, tb, g.m, g.n, k));
                    run_case(ctx, what, &g);
                    if (g_small || i % 3 != 1) continue;
                    snprintf(what, sizeof what, "set %s: %s, %s 1, batched", p->name, tnames[f], col ? "n" : "m");
                    g = geom(ta, tb, col ? L : 1, col ? 1 : L, k, 3, alphas[(c + 1) % 3], betas[(c + 1) % 3], 5, 3, 9);
                    run_case(ctx, what, &g);
                }
        gcase g = geom(false, false, 1, wide + 1, 0, 2, 1.5f, 0.5f, 3, 2, 5);
        run_case(ctx, "gemv, k = 0", &g);
    }
    kiln__hooks_of(ctx)->gemm_params = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* Products with K = 1 (an outer product) run in gemm_ger (src/ops/gemm.c's ger_takes):
 * every set, each transpose; M below, at and past gemm_ger's 16 rows per work-item; N below
 * one vector (every column one at a time), whole vectors (C's rows aligned to the vector:
 * the kernel's vector-pointer stores) and past them; beta 0 (C's NaNs never read) and not;
 * batched at offsets with padded leading dims (unaligned stores). A B^T whose B has a
 * leading dim above 1 is not a contiguous row of B and stays out of gemm_ger. */
static void test_ger(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    CHECK(strcmp(kiln__gemm_kernel(false, false, 64, 6272, 1), "gemm_ger") == 0 &&
              strcmp(kiln__gemm_kernel(true, true, 3, 2, 1), "gemm_ger") == 0 &&
              strcmp(kiln__gemm_kernel(false, false, 64, 6272, 2), "gemm_nn") == 0 &&
              strcmp(kiln__gemm_kernel(false, false, 1, 6272, 1), "gemv_cols") == 0,
          "kiln__gemm_kernel: not as ger_takes's rule (K = 1, M and N above 1) says");
    for (int s = 0; s < (g_small ? 1 : KILN__GEMM_SETS); s++) {
        const kiln__gemm_params *p = &kiln__gemm_sets[s];
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        size_t vw = (size_t)p->nn_vw;
        size_t ms[] = {2, 15, 16, 37};
        size_t ns[] = {vw - 1 > 1 ? vw - 1 : 2, 4 * vw, 3 * vw + 5};
        int c = 0;
        for (int f = 0; f < 4; f++)
            for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
                for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++, c++) {
                    if (g_small && (i + j + (size_t)f) % 4) continue;
                    bool ta = f & 1, tb = f & 2;
                    gcase g = geom(ta, tb, ms[i], ns[j], 1, 1, alphas[c % 3], betas[(c / 3) % 3], 0, 0, 0);
                    char what[96];
                    snprintf(what, sizeof what, "set %s: %s, k 1, %zu x %zu", p->name, tnames[f], g.m, g.n);
                    run_case(ctx, what, &g);
                    if (j != 2 || i % 2) continue;
                    snprintf(what, sizeof what, "set %s: %s, k 1, batched", p->name, tnames[f]);
                    g = geom(ta, tb, ms[i], ns[j], 1, 3, alphas[(c + 1) % 3], betas[(c + 1) % 3], 5, 3, 9);
                    run_case(ctx, what, &g);
                }
        /* C's rows aligned, batch strides too: vector-pointer stores in every batch (C's
         * storage starts GUARD floats into its buffer) */
        gcase g = geom(false, false, 21, 2 * vw, 1, 2, 1.5f, 0.0f, 0, 0, 0);
        g.coff = 4 * 16 - GUARD % 16;
        g.cstride = 48 * vw;
        CHECK((GUARD + g.coff) % vw == 0, "test_ger: the aligned case's C offset is not aligned");
        run_case(ctx, "k 1, aligned, batched", &g);
        /* B^T with a leading dim of 3: gemm_nt reads it */
        g = geom(false, true, 19, 2 * vw + 1, 1, 1, -0.75f, 0.5f, 0, 2, 0);
        run_case(ctx, "k 1, A B^T with B's leading dim 3", &g);
    }
    kiln__hooks_of(ctx)->gemm_params = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* A padded copy the pool cannot hold fails the product with the pool's message naming
 * the op; a copy made before it is given back (A^T B copies A, then B). */
static void test_pad_oom(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    kiln_sync(ctx);
    setenv("KILN_GEMM_PAD", "on", 1);
    const size_t m = 9, n = 37, k = 20;
    kiln_scope_begin(ctx);
    float *h = calloc(k * 1024 + 1024, sizeof(float));
    kiln_tensor *a = kiln_from_host(ctx, h, KILN_F32, 1, (int64_t[]){(int64_t)(k * 1024)});
    kiln_tensor *b = kiln_from_host(ctx, h, KILN_F32, 1, (int64_t[]){(int64_t)(k * 1024)});
    kiln_tensor *c = kiln_from_host(ctx, h, KILN_F32, 1, (int64_t[]){(int64_t)(m * 1024)});
    CHECK(a && b && c, "upload: %s", kiln_error_message(ctx));
    for (int nth = 1; a && b && c && nth <= 2; nth++) {
        int64_t tensors = kiln_ctx_num_tensors(ctx);
        kiln_pool_stats before, after;
        kiln_pool_stats_get(ctx, &before);
        kiln__pool_fail_after(ctx, nth);
        int rc = kiln__sgemm(ctx, "test_gemm_oom", true, false, m, n, k, 1.0f, a->st->mem, (size_t)a->offset, 1024, 0,
                             b->st->mem, (size_t)b->offset, 1024, 0, 0.0f, c->st->mem, (size_t)c->offset, 1024, 0, 1);
        kiln__pool_fail_after(ctx, 0);
        kiln_pool_stats_get(ctx, &after);
        CHECK(rc == KILN__SGEMM_FAILED && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY &&
                  strstr(kiln_error_message(ctx), "test_gemm_oom") &&
                  strstr(kiln_error_message(ctx), "injected failure"),
              "allocation %d of the padded copies failing: rc %d, %s", nth, rc, kiln_error_message(ctx));
        CHECK(kiln_ctx_num_tensors(ctx) == tensors && after.in_use_bytes == before.in_use_bytes,
              "allocation %d failing: %lld tensors, %lld pool bytes left behind", nth,
              (long long)(kiln_ctx_num_tensors(ctx) - tensors), (long long)(after.in_use_bytes - before.in_use_bytes));
        kiln_error_clear(ctx);
    }
    kiln_scope_end(ctx);
    free(h);
    kiln_sync(ctx);
    unsetenv("KILN_GEMM_PAD");
    kiln__hooks_of(ctx)->gemm_own = 0;
}

/* On a CPU kiln's kernels take every product (any transposes, beta, batch), CLBlast none;
 * elsewhere CLBlast takes them; KILN_GEMM_OWN=off sends them to CLBlast. */
static void test_route(kiln_ctx *ctx) {
    bool cpu = kiln_ctx_device(ctx)->type == KILN_DEVICE_CPU;
    kiln__hooks_of(ctx)->gemm_own = 0;
    for (int f = 0; f < 4; f++)
        for (int bt = 0; bt < 2; bt++) {
            bool own = kiln__gemm_own_takes(ctx, f & 1, f & 2, 37, 53, 101, bt ? 3 : 1, bt ? 1.0f : 0.0f);
            CHECK(own == cpu, "%s batch %d beta %d: kiln's kernels %s it on a %s device", tnames[f], bt ? 3 : 1, bt,
                  own ? "take" : "do not take", cpu ? "CPU" : "non-CPU");
        }
    kiln_sync(ctx);
    setenv("KILN_GEMM_OWN", "off", 1);
    CHECK(!kiln__gemm_own_takes(ctx, true, true, 37, 53, 101, 1, 0.0f), "KILN_GEMM_OWN=off: kiln's kernels took it");
    unsetenv("KILN_GEMM_OWN");
}

/* ---- kiln_matmul of transposed views, and its backward -------------------------------- */

/* Host reference of out[b] = op(X[b]) op(Y[b]) with X [bt, xr, xc] and Y [bt, yr, yc]
 * dense; mag gets sum |x||y| per output. */
static void ref_mm(const float *x, const float *y, size_t bt, size_t m, size_t n, size_t k, bool tx, bool ty,
                   double *out, double *mag) {
    for (size_t b = 0; b < bt; b++)
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < n; j++) {
                double s = 0, a = 0;
                for (size_t p = 0; p < k; p++) {
                    double u = x[b * m * k + (tx ? p * m + i : i * k + p)];
                    double v = y[b * k * n + (ty ? j * k + p : p * n + j)];
                    s += u * v;
                    a += fabs(u * v);
                }
                out[(b * m + i) * n + j] = s;
                mag[(b * m + i) * n + j] = a;
            }
}

static void compare(const char *what, kiln_tensor *t, const double *ref, const double *mag, size_t n, size_t terms) {
    float *got = t ? h_read(t) : NULL;
    size_t bad = 0;
    for (size_t i = 0; got && i < n; i++) {
        double tol = TOL_C * (double)terms * U_F32 * mag[i];
        if (!(fabs((double)got[i] - ref[i]) <= tol) && bad++ == 0)
            fprintf(stderr, "  %s: element %zu = %.9g, reference %.9g (bound %.3g)\n", what, i, (double)got[i], ref[i],
                    tol);
    }
    CHECK(got && bad == 0, "%s: %zu of %zu elements outside the bound", what, bad, n);
    free(got);
}

/* out = a b with a = transpose of A0 [bt, k, m] and b = transpose of B0 [bt, n, k] (the
 * A^T B^T product), and the same through kiln_matmul_ex's flags on A0 and B0; then
 * backward with a seed G: dA0 = (G B0)^T = B0^T G^T, dB0 = (A0 G)^T = G^T A0^T. Run with
 * kiln's kernels forced and with CLBlast forced, each against the host reference (so the
 * two agree within the bound). */
static void test_views(kiln_ctx *ctx) {
    static const size_t shapes[][4] = {{1, 5, 7, 3}, {2, 19, 40, 33}, {1, 37, 53, 101}, {1, 64, 128, 300}};
    for (size_t c = 0; c < (g_small ? 2 : sizeof shapes / sizeof shapes[0]); c++) {
        size_t bt = shapes[c][0], m = shapes[c][1], n = shapes[c][2], k = shapes[c][3];
        float *a0 = malloc(bt * k * m * sizeof(float)), *b0 = malloc(bt * n * k * sizeof(float));
        float *g = malloc(bt * m * n * sizeof(float));
        h_fill(a0, (int64_t)(bt * k * m), -1, 1);
        h_fill(b0, (int64_t)(bt * n * k), -1, 1);
        h_fill(g, (int64_t)(bt * m * n), -1, 1);
        double *out = malloc(bt * m * n * sizeof(double)), *mout = malloc(bt * m * n * sizeof(double));
        double *da = malloc(bt * k * m * sizeof(double)), *mda = malloc(bt * k * m * sizeof(double));
        double *db = malloc(bt * n * k * sizeof(double)), *mdb = malloc(bt * n * k * sizeof(double));
        ref_mm(a0, b0, bt, m, n, k, true, true, out, mout);
        ref_mm(b0, g, bt, k, m, n, true, true, da, mda); /* dA0 [k, m] = B0^T G^T */
        ref_mm(g, a0, bt, n, k, m, true, true, db, mdb); /* dB0 [n, k] = G^T A0^T */
        int nd = bt > 1 ? 3 : 2;
        int64_t sa[3], sb[3], sg[3];
        int64_t *pa = sa, *pb = sb, *pg = sg;
        if (bt > 1) *pa++ = *pb++ = *pg++ = (int64_t)bt;
        pa[0] = (int64_t)k, pa[1] = (int64_t)m, pb[0] = (int64_t)n, pb[1] = (int64_t)k, pg[0] = (int64_t)m,
        pg[1] = (int64_t)n;
        for (int own = 0; own < 2; own++)
            for (int ex = 0; ex < 2; ex++) {
                kiln__hooks_of(ctx)->gemm_own = own ? 1 : -1;
                kiln_scope_begin(ctx);
                kiln_tensor *A0 = kiln_from_host(ctx, a0, KILN_F32, nd, sa);
                kiln_tensor *B0 = kiln_from_host(ctx, b0, KILN_F32, nd, sb);
                kiln_tensor *G = kiln_from_host(ctx, g, KILN_F32, nd, sg);
                kiln_tensor_set_requires_grad(A0, true);
                kiln_tensor_set_requires_grad(B0, true);
                kiln_tensor *o = ex ? kiln_matmul_ex(ctx, A0, B0, KILN_TRANS_A | KILN_TRANS_B)
                                    : kiln_matmul(ctx, kiln_transpose(ctx, A0, nd - 2, nd - 1),
                                                  kiln_transpose(ctx, B0, nd - 2, nd - 1));
                char what[160];
                snprintf(what, sizeof what, "%s, %s [%zu] %zux%zux%zu", own ? "kiln's kernels" : "CLBlast",
                         ex ? "matmul_ex(A0, B0, TRANS_A|TRANS_B)" : "matmul(A0^T, B0^T)", bt, m, n, k);
                CHECK(o != NULL, "%s: %s", what, kiln_error_message(ctx));
                if (o) {
                    char w[200];
                    snprintf(w, sizeof w, "%s output", what);
                    compare(w, o, out, mout, bt * m * n, k);
                    CHECK(kiln_backward_ex(o, G, false) == KILN_OK, "%s backward: %s", what, kiln_error_message(ctx));
                    snprintf(w, sizeof w, "%s dA0", what);
                    compare(w, kiln_tensor_grad(A0), da, mda, bt * k * m, n);
                    snprintf(w, sizeof w, "%s dB0", what);
                    compare(w, kiln_tensor_grad(B0), db, mdb, bt * n * k, m);
                }
                if (ctx->guard > 0) {
                    char msg[256];
                    int bad = kiln__check_guards(ctx, msg, sizeof msg);
                    CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
                }
                kiln_scope_end(ctx);
                CHECK_OK(ctx);
                kiln_error_clear(ctx);
            }
        kiln__hooks_of(ctx)->gemm_own = 0;
        free(a0), free(b0), free(g), free(out), free(mout), free(da), free(mda), free(db), free(mdb);
    }
}

/* A tensor's values as floats (n of them) into out; false (and a failed CHECK) if not. */
static bool host_of(kiln_tensor *t, float *out, size_t n) {
    kiln_status st = t ? kiln_to_host(t, out, n * sizeof(float)) : KILN_ERR_INVALID_ARGUMENT;
    CHECK(st == KILN_OK, "kiln_to_host: %s", t ? kiln_error_message(kiln_tensor_ctx(t)) : "no tensor");
    return st == KILN_OK;
}

/* One linear forward x W^T + b (and its backward): fused (ctx->hooks.gemm_epilogue 1,
 * gemm_nt adds the bias as it stores) or not (-1: kiln_matmul_ex, then kiln_add). The bias
 * is a strided view at an offset (every second element of a longer vector from the
 * second). Returns y, d x, d W, d b in out[0..3] (host copies, caller frees) and the
 * forward's launches in *launches. */
static bool linear_pass(kiln_ctx *ctx, int mode, bool relu, int xnd, const int64_t *xshape, int64_t out,
                        const float *xh, const float *wh, const float *bh, const float *rh, float **res,
                        uint64_t *launches) {
    kiln__hooks_of(ctx)->gemm_epilogue = mode;
    int64_t in = xshape[xnd - 1], rows = 1;
    for (int d = 0; d < xnd - 1; d++) rows *= xshape[d];
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_from_host(ctx, xh, KILN_F32, xnd, xshape);
    kiln_tensor *w = kiln_from_host(ctx, wh, KILN_F32, 2, (int64_t[]){out, in});
    kiln_tensor *bfull = kiln_from_host(ctx, bh, KILN_F32, 1, (int64_t[]){2 * out + 1});
    int64_t yshape[KILN_MAX_DIMS];
    for (int d = 0; d < xnd; d++) yshape[d] = xshape[d];
    yshape[xnd - 1] = out;
    kiln_tensor *r = kiln_from_host(ctx, rh, KILN_F32, xnd, yshape);
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor_set_requires_grad(w, true);
    kiln_tensor_set_requires_grad(bfull, true);
    kiln_tensor *b = kiln_slice(ctx, bfull, 0, 1, 2 * out + 1, 2);
    kiln_ctx_stats s0, s1;
    kiln_ctx_stats_get(ctx, &s0);
    kiln_tensor *y = relu ? kiln__linear_relu(ctx, "test linear", x, w, b) : kiln__linear(ctx, "test linear", x, w, b);
    kiln_ctx_stats_get(ctx, &s1);
    *launches = s1.launches - s0.launches;
    kiln_status st = y ? kiln_backward(kiln_sum(ctx, kiln_mul(ctx, y, r), 0, NULL, false)) : ctx->err;
    CHECK(st == KILN_OK, "linear %s: %s", mode > 0 ? "fused" : "unfused", kiln_error_message(ctx));
    size_t n[4] = {(size_t)(rows * out), (size_t)(rows * in), (size_t)(out * in), (size_t)(2 * out + 1)};
    kiln_tensor *t[4] = {y, kiln_tensor_grad(x), kiln_tensor_grad(w), kiln_tensor_grad(bfull)};
    bool ok = st == KILN_OK;
    for (int i = 0; i < 4; i++) {
        res[i] = malloc(n[i] * sizeof(float));
        ok = ok && res[i] && host_of(t[i], res[i], n[i]);
    }
    kiln_scope_end(ctx);
    kiln__hooks_of(ctx)->gemm_epilogue = 0;
    return ok;
}

/* The bias epilogue (kiln__linear with kiln__gemm_bias_takes; gemm_nt's store, or
 * gemm_nn's where the product runs on a transposed copy of W): one launch fewer, and y and
 * every gradient bit for bit the unfused ones (the kernel rounds the product and
 * then adds the bias, as kiln_add does), for every parameter set, with M and N not
 * multiples of the register block, K not a multiple of the vector step, and the input
 * with leading batch dims folded into M; the same for kiln__linear_relu (one launch
 * instead of three: product, add, relu). */
static void test_linear_bias(kiln_ctx *ctx) {
    kiln__hooks_of(ctx)->gemm_own = 1;
    for (int s = 0; s < KILN__GEMM_SETS; s++) {
        const kiln__gemm_params *p = &kiln__gemm_sets[s];
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        int64_t rm = p->nt_rm, rn = p->nt_rn, vw = p->nt_vw;
        /* gemm_nn's column block and vector, and a whole number of blocks of 16 columns or
         * more (nt_as_nn's products have N >= 16) */
        int64_t blk = p->nn_nv * p->nn_vw, nvw = p->nn_vw, wide = blk * ((16 + blk) / blk);
        /* rows, out, in, dims of x; the third and fourth are gemv_rows's (one output, one
         * row); the last two nt_as_nn's (M >= 512, K <= 512: gemm_nn on a transposed copy of
         * W) with a last block of fewer columns than a vector (one column at a time) and of
         * one more than a vector (vectors shifted back to end at the last column) */
        int64_t shapes[6][4] = {{2 * rm + 1, 3 * rn + 1, 2 * vw + 3, 2},
                                {2, rm + 2, vw + 1, 3},
                                {64 + rm, 1, 4 * vw + 5, 2},
                                {1, 37, vw + 2, 2},
                                {515, wide + nvw / 2 + 1, 45, 2},
                                {103, wide + nvw + 1, 2 * vw + 3, 3}};
        for (int c = 0; c < 6; c++) {
            int xnd = (int)shapes[c][3];
            int64_t out = shapes[c][1], in = shapes[c][2];
            int64_t xshape[3] = {shapes[c][0], xnd == 2 ? in : 5, in};
            int64_t rows = xshape[0] * (xnd == 3 ? xshape[1] : 1);
            float *xh = malloc((size_t)(rows * in) * sizeof(float)), *wh = malloc((size_t)(out * in) * sizeof(float));
            float *bh = malloc((size_t)(2 * out + 1) * sizeof(float)),
                  *rh = malloc((size_t)(rows * out) * sizeof(float));
            float *fu[4] = {0}, *un[4] = {0};
            uint64_t lf = 0, lu = 0;
            if (xh && wh && bh && rh) {
                h_fill(xh, rows * in, -1.0f, 1.0f);
                h_fill(wh, out * in, -1.0f, 1.0f);
                h_fill(bh, 2 * out + 1, -2.0f, 2.0f);
                h_fill(rh, rows * out, -1.0f, 1.0f);
                for (int relu = 0; relu < 2; relu++) {
                    bool ok = linear_pass(ctx, 1, relu, xnd, xshape, out, xh, wh, bh, rh, fu, &lf) &&
                              linear_pass(ctx, -1, relu, xnd, xshape, out, xh, wh, bh, rh, un, &lu);
                    /* (the guard's checks add launches of their own to both) */
                    CHECK(lf + (relu ? 1 : 0) < lu,
                          "set %s, case %d%s: the forward took %llu launches fused, %llu unfused (want %s fewer)",
                          p->name, c, relu ? ", relu" : "", (unsigned long long)lf, (unsigned long long)lu,
                          relu ? "2" : "1");
                    size_t n[4] = {(size_t)(rows * out), (size_t)(rows * in), (size_t)(out * in),
                                   (size_t)(2 * out + 1)};
                    static const char *const what[4] = {"y", "d x", "d W", "d b"};
                    for (int i = 0; ok && i < 4; i++) {
                        size_t bad = 0, zeros = 0;
                        for (size_t e = 0; e < n[i]; e++) {
                            bad += memcmp(&fu[i][e], &un[i][e], sizeof(float)) != 0;
                            zeros += fu[i][e] == 0.0f;
                        }
                        CHECK(bad == 0, "set %s, case %d%s: %s fused differs from unfused in %zu of %zu elements",
                              p->name, c, relu ? ", relu" : "", what[i], bad, n[i]);
                        /* relu's outputs: about half clipped (with one output column, whose
                         * one bias shifts them all, some), so the mask was exercised */
                        if (relu && i == 0)
                            CHECK(zeros > (c == 2 ? 0 : n[0] / 8) && zeros < n[0],
                                  "set %s, case %d: %zu of %zu outputs are 0", p->name, c, zeros, n[0]);
                    }
                    for (int i = 0; i < 4; i++) free(fu[i]), free(un[i]), fu[i] = un[i] = NULL;
                }
            }
            for (int i = 0; i < 4; i++) free(fu[i]), free(un[i]);
            free(xh), free(wh), free(bh), free(rh);
        }
    }
    kiln__hooks_of(ctx)->gemm_params = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
}

static void run(kiln_ctx *ctx) {
    /* sentinels around every storage: a write outside an operand's storage is seen too */
    kiln__set_guard(ctx, GUARD);
    test_route(ctx);
    test_sets(ctx);
    test_padded(ctx);
    test_nt_as_nn(ctx);
    test_nt_as_tc(ctx);
    test_narrow(ctx);
    test_ksplit(ctx);
    test_gemv(ctx);
    test_ger(ctx);
    test_pad_oom(ctx);
    test_views(ctx);
    test_linear_bias(ctx);
    kiln__set_guard(ctx, 0);
}

int main(void) {
    const char *small = getenv("KILN_TEST_SMALL");
    g_small = small && *small && strcmp(small, "0") != 0;
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
