/* tests/test_matmul.c - kiln_matmul / kiln_matmul_ex against a double-precision host
 * reference: odd and empty shapes, transposed and sliced views, the transpose flags,
 * batches with broadcasting, vectors, guard regions, and the error paths; and against
 * PyTorch golden outputs and gradients (tests/golden/gen_matmul.py, test_golden).
 *
 * Tolerance: each element must satisfy |got - ref| <= C * k * u * sum_p |a_ip| |b_pj| with
 * u = 2^-24 (f32 unit roundoff) and C = 2. A dot product of k terms evaluated in f32 in ANY
 * order (CLBlast tiles and reorders the sum; fma or separate mul/add) is within
 * gamma_k = k*u / (1 - k*u) of the exact value, relative to sum |a||b| (Higham, Accuracy and
 * Stability of Numerical Algorithms, 3.1); alpha = 1 and beta = 0 add no rounding. C = 2
 * covers the 1/(1 - k*u) factor (< 1.0001 here), the reference's own double rounding, and
 * devices where CLBlast's kernels use mad() (AMD), whose accuracy OpenCL does not pin to
 * one rounding per operation. Inputs are exact floats, so the reference is exact to ~1e-16. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "golden.h"
#include "harness.h"
#include "kiln_test_hooks.h"

#include <clblast_c.h>

#define U_F32 (1.0 / 16777216.0)
#define TOL_C 2.0

static const char *g_pass = ""; /* which pass of the suite runs, for messages */
/* the pass's kiln__hooks_of(ctx)->gemm_own: 1 sends every product it can to kiln's own
 * kernels, -1 none, 0 the device decides */
static int g_own = 0;

/* ---- host views (independent of kiln's stride bookkeeping) ------------------------- */

static h_view hv_transpose(h_view v, int d0, int d1) {
    int64_t s = v.shape[d0], st = v.strides[d0];
    v.shape[d0] = v.shape[d1], v.strides[d0] = v.strides[d1];
    v.shape[d1] = s, v.strides[d1] = st;
    return v;
}

/* start/end within bounds, step >= 1 */
static h_view hv_slice(h_view v, int d, int64_t start, int64_t end, int64_t step) {
    v.offset += start * v.strides[d];
    v.shape[d] = (end - start + step - 1) / step;
    v.strides[d] *= step;
    return v;
}

/* Offset in v of (batch index bi of an nb-dim broadcast batch, row r, col c); v has >= 2
 * dims, its batch dims right-aligned to the nb output batch dims. */
static int64_t hv_off(const h_view *v, int nb, const int64_t *bi, int64_t r, int64_t c) {
    int64_t off = v->offset + r * v->strides[v->ndim - 2] + c * v->strides[v->ndim - 1];
    int vb = v->ndim - 2;
    for (int d = 0; d < vb; d++)
        if (v->shape[d] != 1) off += bi[nb - vb + d] * v->strides[d];
    return off;
}

/* torch.matmul in double: fills oshape (returns its ndim), ref and mag (sum |a||b|); k out. */
static int ref_matmul(const float *A, h_view av, const float *B, h_view bv, int flags, int64_t *oshape, double **ref,
                      double **mag, int64_t *kout) {
    bool a1 = av.ndim == 1, b1 = bv.ndim == 1;
    if ((flags & KILN_TRANS_A) && !a1) av = hv_transpose(av, av.ndim - 2, av.ndim - 1);
    if ((flags & KILN_TRANS_B) && !b1) bv = hv_transpose(bv, bv.ndim - 2, bv.ndim - 1);
    if (a1) av = (h_view){2, {1, av.shape[0]}, {0, av.strides[0]}, av.offset};
    if (b1) bv = (h_view){2, {bv.shape[0], 1}, {bv.strides[0], 0}, bv.offset};
    int nb = (av.ndim > bv.ndim ? av.ndim : bv.ndim) - 2;
    int64_t bs[KILN_MAX_DIMS];
    for (int d = 0; d < nb; d++) {
        int da = d - (nb - (av.ndim - 2)), db = d - (nb - (bv.ndim - 2));
        int64_t x = da >= 0 ? av.shape[da] : 1, y = db >= 0 ? bv.shape[db] : 1;
        bs[d] = x == 1 ? y : x;
    }
    int64_t m = av.shape[av.ndim - 2], k = av.shape[av.ndim - 1], n = bv.shape[bv.ndim - 1];
    int ond = 0;
    for (int d = 0; d < nb; d++) oshape[ond++] = bs[d];
    if (!a1) oshape[ond++] = m;
    if (!b1) oshape[ond++] = n;
    int64_t batch = h_numel(nb, bs), total = batch * m * n;
    *ref = malloc(sizeof(double) * (size_t)(total ? total : 1));
    *mag = malloc(sizeof(double) * (size_t)(total ? total : 1));
    int64_t bi[KILN_MAX_DIMS] = {0};
    for (int64_t q = 0; q < batch; q++) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double s = 0, g = 0;
                for (int64_t p = 0; p < k; p++) {
                    double x = A[hv_off(&av, nb, bi, i, p)], y = B[hv_off(&bv, nb, bi, p, j)];
                    s += x * y;
                    g += fabs(x * y);
                }
                (*ref)[(q * m + i) * n + j] = s;
                (*mag)[(q * m + i) * n + j] = g;
            }
        for (int d = nb - 1; d >= 0 && ++bi[d] == bs[d]; d--) bi[d] = 0;
    }
    *kout = k;
    return ond;
}

/* Runs a (op) b on the device and checks shape, values (bound above) and how many pool
 * allocations it made: 1 for the output plus one per operand that had to be copied. */
static void check_mm(kiln_ctx *ctx, const char *name, kiln_tensor *a, const float *abase, h_view av, kiln_tensor *b,
                     const float *bbase, h_view bv, int flags, int copies) {
    char what[160];
    snprintf(what, sizeof what, "[%s] %s", g_pass, name);
    CHECK(a && b, "%s: building the operands failed: %s", what, kiln_error_message(ctx));
    if (!a || !b) return;
    kiln_pool_stats s0, s1;
    kiln_pool_stats_get(ctx, &s0);
    kiln__hooks_of(ctx)->gemm_scratch = 0;
    kiln_tensor *c = flags ? kiln_matmul_ex(ctx, a, b, flags) : kiln_matmul(ctx, a, b);
    kiln_pool_stats_get(ctx, &s1);
    CHECK(c != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!c) return;
    /* a product split over K (one matrix, or batches folded into M) adds its partials; kiln's
     * kernels' own scratch (a transposed copy of a narrow B for gemm_nt, src/ops/gemm.c) is
     * counted apart from copies of the operands, which views must not need */
    int split = kiln__hooks_of(ctx)->matmul_last_parts > 1;
    int scratch = (int)kiln__hooks_of(ctx)->gemm_scratch;
    CHECK(s1.allocs - s0.allocs == (uint64_t)(1 + copies + split + scratch),
          "%s: %llu pool allocations, expected %d (%s, and %d of the GEMM kernels' scratch)", what,
          (unsigned long long)(s1.allocs - s0.allocs), 1 + copies + split + scratch,
          copies  ? "output + copy"
          : split ? "output + split-K partials, no copy"
                  : "output only, no copy",
          scratch);
    int64_t oshape[KILN_MAX_DIMS], k;
    double *ref, *mag;
    int ond = ref_matmul(abase, av, bbase, bv, flags, oshape, &ref, &mag, &k);
    bool shape_ok = kiln_tensor_ndim(c) == ond && memcmp(kiln_tensor_shape(c), oshape, sizeof(int64_t) * ond) == 0;
    char got_s[160], want_s[160];
    CHECK(shape_ok, "%s: result shape %s, expected %s", what, kiln_tensor_shape_str(c, got_s, sizeof got_s),
          kiln__shape_str(ond, oshape, want_s, sizeof want_s));
    if (shape_ok) {
        int64_t n = h_numel(ond, oshape), bad = 0;
        float *got = h_read(c);
        double worst = 0;
        for (int64_t i = 0; i < n; i++) {
            double bound = TOL_C * (double)k * U_F32 * mag[i], err = fabs((double)got[i] - ref[i]);
            if (!(err <= bound)) { /* NaN fails too */
                if (bad++ == 0)
                    fprintf(stderr, "  %s: element %lld: got %.9g, reference %.9g, bound %.3g\n", what, (long long)i,
                            got[i], ref[i], bound);
            } else if (bound > 0 && err / bound > worst) {
                worst = err / bound;
            }
        }
        CHECK(bad == 0, "%s: %lld of %lld elements outside |err| <= %g*k*u*sum|a||b| (k=%lld)", what, (long long)bad,
              (long long)n, TOL_C, (long long)k);
        free(got);
    }
    if (ctx->guard > 0) {
        char msg[256];
        int bad = kiln__check_guards(ctx, msg, sizeof msg);
        CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
    }
    free(ref);
    free(mag);
    kiln_tensor_free(c);
}

/* A contiguous tensor of `shape` with values in [-1, 1); *host gets its data (caller frees). */
static kiln_tensor *make(kiln_ctx *ctx, int ndim, const int64_t *shape, float **host, h_view *hv) {
    int64_t n = h_numel(ndim, shape);
    *host = malloc(sizeof(float) * (size_t)(n ? n : 1));
    h_fill(*host, n, -1, 1);
    *hv = h_contig(ndim, shape);
    return kiln_from_host(ctx, *host, KILN_F32, ndim, shape);
}

/* Plain contiguous operands of the given shapes. */
static void check_plain(kiln_ctx *ctx, const char *what, int nda, const int64_t *sa, int ndb, const int64_t *sb,
                        int flags) {
    float *ha, *hb;
    h_view va, vb;
    kiln_tensor *a = make(ctx, nda, sa, &ha, &va), *b = make(ctx, ndb, sb, &hb, &vb);
    check_mm(ctx, what, a, ha, va, b, hb, vb, flags, 0);
    kiln_tensor_free(a);
    kiln_tensor_free(b);
    free(ha);
    free(hb);
}

static void test_shapes(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    /* m, k, n: a single element, odd sizes, a square block, a long k, empty k/m/n */
    int64_t mkn[][3] = {{1, 1, 1}, {5, 7, 11}, {13, 3, 2}, {64, 64, 64}, {3, 1000, 5}, {4, 0, 3}, {0, 5, 3}, {3, 5, 0}};
    for (size_t i = 0; i < sizeof mkn / sizeof mkn[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "[%lld,%lld]x[%lld,%lld]", (long long)mkn[i][0], (long long)mkn[i][1],
                 (long long)mkn[i][1], (long long)mkn[i][2]);
        check_plain(ctx, what, 2, (int64_t[]){mkn[i][0], mkn[i][1]}, 2, (int64_t[]){mkn[i][1], mkn[i][2]}, 0);
    }
    /* beta = 0 must not read C, and k = 0 must write zeros: the output reuses a pool buffer
     * that held NaN (created after the operands so the output is what reuses it) */
    int64_t kk[2] = {4, 0};
    for (int i = 0; i < 2; i++) {
        float *ha, *hb;
        h_view va, vb;
        kiln_tensor *a = make(ctx, 2, (int64_t[]){6, kk[i]}, &ha, &va),
                    *b = make(ctx, 2, (int64_t[]){kk[i], 9}, &hb, &vb);
        kiln_tensor_free(kiln_full(ctx, NAN, 2, (int64_t[]){6, 9}));
        check_mm(ctx, i ? "k=0 over reused NaN memory" : "output over reused NaN memory", a, ha, va, b, hb, vb, 0, 0);
        free(ha), free(hb);
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* Long K with few output tiles: on a device whose GEMM tiles kiln knows (POCL's CPU table)
 * a product CLBlast computes is split over K into parts summed after (src/ops/matmul.c,
 * split_parts), with a remainder of K added to part 0 (2500 = 2 x 1248 + 4); every
 * transpose combination, since each moves the parts' offsets differently. Elsewhere, and
 * where kiln's own kernels compute it (every combination), the same products are plain. */
static void test_split_k(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const int64_t m = 5, k = 2500, n = 7;
    static const int flags[] = {0, KILN_TRANS_A, KILN_TRANS_B, KILN_TRANS_A | KILN_TRANS_B};
    static const char *const names[] = {"split K NN", "split K TN", "split K NT", "split K TT"};
    bool own = g_own == 1 || (g_own == 0 && kiln_ctx_device(ctx)->type == KILN_DEVICE_CPU);
    for (int f = 0; f < 4; f++) {
        bool ta = flags[f] & KILN_TRANS_A, tb = flags[f] & KILN_TRANS_B;
        check_plain(ctx, names[f], 2, ta ? (int64_t[]){k, m} : (int64_t[]){m, k}, 2,
                    tb ? (int64_t[]){n, k} : (int64_t[]){k, n}, flags[f]);
        size_t want = own ? 1 : kiln__matmul_split_parts(ctx, (size_t)m, (size_t)n, (size_t)k);
        CHECK(kiln__hooks_of(ctx)->matmul_last_parts == want, "[%s] %s: split into %zu parts, expected %zu", g_pass,
              names[f], kiln__hooks_of(ctx)->matmul_last_parts, want);
    }
    check_plain(ctx, "split K, fc1 forward [64,9216]x[128,9216]^T", 2, (int64_t[]){64, 9216}, 2, (int64_t[]){128, 9216},
                KILN_TRANS_B);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* The shapes at the edges of kiln's own kernels' blocks (cl_kernels/gemm.cl, run on CPUs
 * by default and on every device in the "own kernels" pass): gemm_nt computes A B^T in 4 x
 * 4 blocks, float16 steps of K and a one-term tail; gemm_nn computes A B and A^T B in
 * 8 x 32 blocks with a scalar path for the last partial block of a row. Rows past M are
 * clamped, outputs past M or N never written (the guarded pass sees a stray write).
 * Batches (the launches' dim 1 spans every batch's column blocks), a batch broadcast from
 * B and the folded [B, m, k] x [n, k]^T of a linear layer. */
static void test_own(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    static const int64_t ms[] = {1, 3, 4, 5, 7, 8, 9, 17}, ns[] = {1, 5, 31, 32, 33, 70},
                         ks[] = {1, 15, 16, 17, 33, 100};
    static const int flags[] = {0, KILN_TRANS_A, KILN_TRANS_B};
    static const char *const names[] = {"A B", "A^T B", "A B^T"};
    for (int f = 0; f < 3; f++)
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
            for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
                int64_t m = ms[i], n = ns[(i + j) % 6], k = ks[j];
                bool ta = flags[f] & KILN_TRANS_A, tb = flags[f] & KILN_TRANS_B;
                char name[96];
                snprintf(name, sizeof name, "%s %lldx%lldx%lld", names[f], (long long)m, (long long)n, (long long)k);
                check_plain(ctx, name, 2, ta ? (int64_t[]){k, m} : (int64_t[]){m, k}, 2,
                            tb ? (int64_t[]){n, k} : (int64_t[]){k, n}, flags[f]);
            }
    check_plain(ctx, "A B^T batched [3,5,33]x[3,6,33]^T", 3, (int64_t[]){3, 5, 33}, 3, (int64_t[]){3, 6, 33},
                KILN_TRANS_B);
    check_plain(ctx, "A B batched [3,9,20]x[3,20,40]", 3, (int64_t[]){3, 9, 20}, 3, (int64_t[]){3, 20, 40}, 0);
    check_plain(ctx, "A^T B batched [2,20,9]^T x[2,20,64]", 3, (int64_t[]){2, 20, 9}, 3, (int64_t[]){2, 20, 64},
                KILN_TRANS_A);
    check_plain(ctx, "A B^T broadcast B [2,3,7,40]x[3,9,40]^T", 4, (int64_t[]){2, 3, 7, 40}, 3, (int64_t[]){3, 9, 40},
                KILN_TRANS_B);
    check_plain(ctx, "A B broadcast B [2,3,7,40]x[3,40,33]", 4, (int64_t[]){2, 3, 7, 40}, 3, (int64_t[]){3, 40, 33}, 0);
    check_plain(ctx, "linear [4,6,70]x[13,70]^T", 3, (int64_t[]){4, 6, 70}, 2, (int64_t[]){13, 70}, KILN_TRANS_B);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void test_views(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const int64_t m = 5, k = 7, n = 11;
    float *ha, *hb, *hat, *hbt, *hw, *hv;
    h_view va, vb, vat, vbt, vw, vv;
    kiln_tensor *a = make(ctx, 2, (int64_t[]){m, k}, &ha, &va), *b = make(ctx, 2, (int64_t[]){k, n}, &hb, &vb);
    kiln_tensor *at = make(ctx, 2, (int64_t[]){k, m}, &hat, &vat), *bt = make(ctx, 2, (int64_t[]){n, k}, &hbt, &vbt);

    /* transposed views: read with CLBlast's transpose flag, no copy */
    kiln_tensor *atv = kiln_transpose(ctx, at, 0, 1), *btv = kiln_transpose(ctx, bt, 0, 1);
    h_view vatv = hv_transpose(vat, 0, 1), vbtv = hv_transpose(vbt, 0, 1);
    check_mm(ctx, "transpose(a) x b", atv, hat, vatv, b, hb, vb, 0, 0);
    check_mm(ctx, "a x transpose(b)", a, ha, va, btv, hbt, vbtv, 0, 0);
    check_mm(ctx, "transpose(a) x transpose(b)", atv, hat, vatv, btv, hbt, vbtv, 0, 0);
    /* the flags on contiguous operands, and flag + transposed view (two flips) */
    check_mm(ctx, "TRANS_A", at, hat, vat, b, hb, vb, KILN_TRANS_A, 0);
    check_mm(ctx, "TRANS_B", a, ha, va, bt, hbt, vbt, KILN_TRANS_B, 0);
    check_mm(ctx, "TRANS_A|TRANS_B", at, hat, vat, bt, hbt, vbt, KILN_TRANS_A | KILN_TRANS_B, 0);
    check_mm(ctx, "TRANS_A of transpose(a)", kiln_transpose(ctx, a, 0, 1), ha, hv_transpose(va, 0, 1), b, hb, vb,
             KILN_TRANS_A, 0);
    check_mm(ctx, "TRANS_B of transpose(b)", a, ha, va, kiln_transpose(ctx, b, 0, 1), hb, hv_transpose(vb, 0, 1),
             KILN_TRANS_B, 0);

    /* column slices: an offset and a leading dim larger than the row, no copy */
    kiln_tensor *w = make(ctx, 2, (int64_t[]){m + 2, k + 6}, &hw, &vw);
    kiln_tensor *v = make(ctx, 2, (int64_t[]){k + 3, n + 4}, &hv, &vv);
    kiln_tensor *ws = kiln_slice(ctx, kiln_slice(ctx, w, 1, 2, 2 + k, 1), 0, 1, 1 + m, 1);
    h_view vws = hv_slice(hv_slice(vw, 1, 2, 2 + k, 1), 0, 1, 1 + m, 1);
    kiln_tensor *vs = kiln_slice(ctx, kiln_slice(ctx, v, 1, 3, 3 + n, 1), 0, 2, 2 + k, 1);
    h_view vvs = hv_slice(hv_slice(vv, 1, 3, 3 + n, 1), 0, 2, 2 + k, 1);
    check_mm(ctx, "sliced a (offset, ld > k)", ws, hw, vws, b, hb, vb, 0, 0);
    check_mm(ctx, "sliced a x sliced b", ws, hw, vws, vs, hv, vvs, 0, 0);
    /* a slice of a transpose: column-major with a leading dim larger than the column */
    kiln_tensor *wts = kiln_slice(ctx, kiln_transpose(ctx, w, 0, 1), 0, 3, 3 + k, 1); /* [k, m+2] */
    h_view vwts = hv_slice(hv_transpose(vw, 0, 1), 0, 3, 3 + k, 1);
    check_mm(ctx, "TRANS_A of a sliced transpose", wts, hw, vwts, vs, hv, vvs, KILN_TRANS_A, 0);
    check_mm(ctx, "sliced transpose x TRANS_B sliced", kiln_slice(ctx, wts, 1, 0, m, 1), hw, hv_slice(vwts, 1, 0, m, 1),
             kiln_slice(ctx, kiln_transpose(ctx, v, 0, 1), 1, 1, 1 + k, 1), hv,
             hv_slice(hv_transpose(vv, 0, 1), 1, 1, 1 + k, 1), KILN_TRANS_A | KILN_TRANS_B, 0);

    /* step 2 on the last dim: neither row- nor column-major, copied first */
    kiln_tensor *w2 = kiln_slice(ctx, w, 1, 0, 2 * 6, 2); /* [m+2, 6] */
    h_view vw2 = hv_slice(vw, 1, 0, 12, 2);
    check_mm(ctx, "step-2 slice of a (copy)", w2, hw, vw2, kiln_slice(ctx, b, 0, 0, 6, 1), hb, hv_slice(vb, 0, 0, 6, 1),
             0, 1);
    kiln_tensor *v2 = kiln_slice(ctx, v, 1, 1, 1 + 2 * 5, 2); /* [k+3, 5] */
    check_mm(ctx, "both step-2 slices (two copies)", w2, hw, vw2, kiln_slice(ctx, v2, 0, 0, 6, 1), hv,
             hv_slice(hv_slice(vv, 1, 1, 11, 2), 0, 0, 6, 1), 0, 2);
    /* the inputs are unchanged by the copy path */
    float *back = h_read(w);
    CHECK(memcmp(back, hw, sizeof(float) * (size_t)((m + 2) * (k + 6))) == 0, "matmul modified its input");
    free(back);
    kiln_scope_end(ctx);
    free(ha), free(hb), free(hat), free(hbt), free(hw), free(hv);
    CHECK_OK(ctx);
}

static void test_batches(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    check_plain(ctx, "[3,5,7]x[3,7,4]", 3, (int64_t[]){3, 5, 7}, 3, (int64_t[]){3, 7, 4}, 0);
    check_plain(ctx, "[2,1,5,7]x[3,7,4] broadcast", 4, (int64_t[]){2, 1, 5, 7}, 3, (int64_t[]){3, 7, 4}, 0);
    check_plain(ctx, "[4,5,7]x[7,3] (folded into M)", 3, (int64_t[]){4, 5, 7}, 2, (int64_t[]){7, 3}, 0);
    check_plain(ctx, "[4,1,7]x[7,3] (m=1, folded)", 3, (int64_t[]){4, 1, 7}, 2, (int64_t[]){7, 3}, 0);
    check_plain(ctx, "[5,7]x[4,7,3] (A stride 0)", 2, (int64_t[]){5, 7}, 3, (int64_t[]){4, 7, 3}, 0);
    /* tile-sized batches: CLBlast's strided-batched kernel may use them in place, where it
     * reads no base offset (a guarded pass gives every operand one) */
    check_plain(ctx, "[2,64,64]x[2,64,64] (tile-sized)", 3, (int64_t[]){2, 64, 64}, 3, (int64_t[]){2, 64, 64}, 0);
    check_plain(ctx, "[2,3,5,7]x[2,3,7,4]", 4, (int64_t[]){2, 3, 5, 7}, 4, (int64_t[]){2, 3, 7, 4}, 0);
    check_plain(ctx, "[1,3,5,7]x[2,1,7,4]", 4, (int64_t[]){1, 3, 5, 7}, 4, (int64_t[]){2, 1, 7, 4}, 0);
    check_plain(ctx, "[3,7,5]x[3,4,7] TRANS_A|B", 3, (int64_t[]){3, 7, 5}, 3, (int64_t[]){3, 4, 7},
                KILN_TRANS_A | KILN_TRANS_B);
    check_plain(ctx, "[4,7,5]x[7,3] TRANS_A (not folded)", 3, (int64_t[]){4, 7, 5}, 2, (int64_t[]){7, 3}, KILN_TRANS_A);
    check_plain(ctx, "[2,5,7]x[4,7] TRANS_B (folded)", 3, (int64_t[]){2, 5, 7}, 2, (int64_t[]){4, 7}, KILN_TRANS_B);
    check_plain(ctx, "[2,0,7]x[2,7,3] empty batch rows", 3, (int64_t[]){2, 0, 7}, 3, (int64_t[]){2, 7, 3}, 0);
    check_plain(ctx, "[0,5,7]x[7,3] empty batch", 3, (int64_t[]){0, 5, 7}, 2, (int64_t[]){7, 3}, 0);
    check_plain(ctx, "[2,5,0]x[2,0,3] k=0 batched", 3, (int64_t[]){2, 5, 0}, 3, (int64_t[]){2, 0, 3}, 0);

    /* batch dims that no single stride describes: [3,2] from a permuted [2,3,5,7] store */
    float *hs, *hb, *hr, *he, *hw, *hb3;
    h_view vs, vb, vr, ve, vw, vb3;
    kiln_tensor *s = make(ctx, 4, (int64_t[]){2, 3, 5, 7}, &hs, &vs);
    kiln_tensor *b = make(ctx, 4, (int64_t[]){3, 2, 7, 4}, &hb, &vb);
    check_mm(ctx, "permuted batch dims (loop)", kiln_permute(ctx, s, (int[]){1, 0, 2, 3}), hs,
             (h_view){4, {3, 2, 5, 7}, {35, 105, 7, 1}, 0}, b, hb, vb, 0, 0);
    /* a batch of rows taken with a step: [3,5,7] out of [5,3,7] (batch stride 7, ld 21) */
    kiln_tensor *r = make(ctx, 3, (int64_t[]){5, 3, 7}, &hr, &vr);
    kiln_tensor *b3 = make(ctx, 3, (int64_t[]){3, 7, 4}, &hb3, &vb3);
    check_mm(ctx, "transposed batch and row dims", kiln_transpose(ctx, r, 0, 1), hr, hv_transpose(vr, 0, 1), b3, hb3,
             vb3, 0, 0);
    /* [3] against [3,1]: a batch [3,3] where A varies along the last dim, B along the first */
    check_mm(ctx, "[3,5,7]x[3,1,7,4] cross broadcast", kiln_transpose(ctx, r, 0, 1), hr, hv_transpose(vr, 0, 1),
             kiln_slice(ctx, b, 1, 0, 1, 1), hb, hv_slice(vb, 1, 0, 1, 1), 0, 0);
    /* an expanded (stride 0) batch on both sides */
    kiln_tensor *e = make(ctx, 3, (int64_t[]){1, 5, 7}, &he, &ve);
    kiln_tensor *w = make(ctx, 2, (int64_t[]){7, 3}, &hw, &vw);
    check_mm(ctx, "expanded a x 2-D b", kiln_expand(ctx, e, 3, (int64_t[]){4, 5, 7}), he,
             (h_view){3, {4, 5, 7}, {0, 7, 1}, 0}, w, hw, vw, 0, 0);
    check_mm(ctx, "expanded a x expanded b", kiln_expand(ctx, e, 3, (int64_t[]){4, 5, 7}), he,
             (h_view){3, {4, 5, 7}, {0, 7, 1}, 0}, kiln_expand(ctx, w, 3, (int64_t[]){4, 7, 3}), hw,
             (h_view){3, {4, 7, 3}, {0, 3, 1}, 0}, 0, 0);
    /* a broadcast matrix dim cannot be read in place: copied */
    check_mm(ctx, "expanded rows (copy)", kiln_expand(ctx, kiln_slice(ctx, w, 0, 0, 1, 1), 2, (int64_t[]){5, 3}), hw,
             (h_view){2, {5, 3}, {0, 1}, 0}, kiln_transpose(ctx, w, 0, 1), hw, hv_transpose(vw, 0, 1), 0, 1);
    kiln_scope_end(ctx);
    free(hs), free(hb), free(hr), free(he), free(hw), free(hb3);
    CHECK_OK(ctx);
}

static void test_vectors(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    check_plain(ctx, "[7]x[7,4]", 1, (int64_t[]){7}, 2, (int64_t[]){7, 4}, 0);
    check_plain(ctx, "[5,7]x[7]", 2, (int64_t[]){5, 7}, 1, (int64_t[]){7}, 0);
    check_plain(ctx, "[7]x[7] (dot)", 1, (int64_t[]){7}, 1, (int64_t[]){7}, 0);
    check_plain(ctx, "[7]x[3,7,4]", 1, (int64_t[]){7}, 3, (int64_t[]){3, 7, 4}, 0);
    check_plain(ctx, "[3,5,7]x[7] (folded)", 3, (int64_t[]){3, 5, 7}, 1, (int64_t[]){7}, 0);
    check_plain(ctx, "[0]x[0] (empty dot)", 1, (int64_t[]){0}, 1, (int64_t[]){0}, 0);
    /* flags do nothing to a vector; they still apply to the matrix */
    check_plain(ctx, "[7]x[4,7] TRANS_A|TRANS_B", 1, (int64_t[]){7}, 2, (int64_t[]){4, 7}, KILN_TRANS_A | KILN_TRANS_B);
    /* strided vectors are read in place (as a transposed row / a column with ld = stride) */
    float *hx, *hm;
    h_view vx, vm;
    kiln_tensor *x = make(ctx, 1, (int64_t[]){21}, &hx, &vx);
    kiln_tensor *mt = make(ctx, 2, (int64_t[]){6, 7}, &hm, &vm);
    kiln_tensor *xs = kiln_slice(ctx, x, 0, 1, 21, 3); /* 7 elements, stride 3 */
    h_view vxs = hv_slice(vx, 0, 1, 21, 3);
    check_mm(ctx, "strided vector x matrix", xs, hx, vxs, kiln_transpose(ctx, mt, 0, 1), hm, hv_transpose(vm, 0, 1), 0,
             0);
    check_mm(ctx, "matrix x strided vector", mt, hm, vm, xs, hx, vxs, 0, 0);
    check_mm(ctx, "strided dot", xs, hx, vxs, xs, hx, vxs, 0, 0);
    kiln_scope_end(ctx);
    free(hx), free(hm);
    CHECK_OK(ctx);
}

static bool has(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

/* Expects `call` to return NULL with `status`, its message naming every string in subs
 * (NULL-terminated), and no tensor left behind; then clears the error. */
#define EXPECT_FAIL(ctx, call, status, ...)                                                                            \
    do {                                                                                                               \
        int64_t live_ = kiln_ctx_num_tensors(ctx);                                                                     \
        kiln_tensor *r_ = (call);                                                                                      \
        CHECK(r_ == NULL && kiln_error_status(ctx) == (status), "%s: got %s, want %s (%s)", #call,                     \
              kiln_status_name(kiln_error_status(ctx)), kiln_status_name(status), kiln_error_message(ctx));            \
        CHECK(kiln_ctx_num_tensors(ctx) == live_, "%s left %lld tensors behind", #call,                                \
              (long long)(kiln_ctx_num_tensors(ctx) - live_));                                                         \
        const char *subs_[] = {__VA_ARGS__, NULL};                                                                     \
        for (int i_ = 0; subs_[i_]; i_++)                                                                              \
            CHECK(has(kiln_error_message(ctx), subs_[i_]), "%s: message lacks \"%s\": %s", #call, subs_[i_],           \
                  kiln_error_message(ctx));                                                                            \
        kiln_error_clear(ctx);                                                                                         \
    } while (0)

static void test_errors(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    kiln_tensor *a = kiln_ones(ctx, 2, (int64_t[]){2, 3}), *b = kiln_ones(ctx, 2, (int64_t[]){4, 5});
    kiln_tensor *p = kiln_ones(ctx, 3, (int64_t[]){2, 5, 7}), *q = kiln_ones(ctx, 3, (int64_t[]){3, 7, 4});
    kiln_tensor *s = kiln_full(ctx, 2.0f, 0, NULL), *v = kiln_ones(ctx, 1, (int64_t[]){3});
    int32_t iv[6] = {0};
    kiln_tensor *ti = kiln_from_host(ctx, iv, KILN_I32, 2, (int64_t[]){3, 2});
    CHECK_OK(ctx);

    EXPECT_FAIL(ctx, kiln_matmul(ctx, a, b), KILN_ERR_SHAPE, "kiln_matmul:", "[2, 3]", "[4, 5]", "3 != 4");
    EXPECT_FAIL(ctx, kiln_matmul_ex(ctx, a, b, KILN_TRANS_A), KILN_ERR_SHAPE, "kiln_matmul_ex:", "[2, 3] (transposed)",
                "[4, 5]", "2 != 4");
    EXPECT_FAIL(ctx, kiln_matmul(ctx, v, b), KILN_ERR_SHAPE, "[3]", "[4, 5]", "3 != 4");
    EXPECT_FAIL(ctx, kiln_matmul(ctx, p, q), KILN_ERR_SHAPE, "kiln_matmul:", "[2, 5, 7]", "[3, 7, 4]", "broadcast");
    EXPECT_FAIL(ctx, kiln_matmul(ctx, s, v), KILN_ERR_SHAPE, "kiln_matmul:", "[]", "[3]");
    EXPECT_FAIL(ctx, kiln_matmul(ctx, v, s), KILN_ERR_SHAPE, "kiln_matmul:", "[3]", "[]");
    EXPECT_FAIL(ctx, kiln_matmul(ctx, ti, a), KILN_ERR_DTYPE, "kiln_matmul:", "i32", "[3, 2]");
    EXPECT_FAIL(ctx, kiln_matmul_ex(ctx, a, a, 8), KILN_ERR_INVALID_ARGUMENT, "kiln_matmul_ex:", "flags");
    /* NULL: an error of its own; inside a chain the first error is kept and NULL passes on */
    EXPECT_FAIL(ctx, kiln_matmul(ctx, NULL, a), KILN_ERR_NULL, "kiln_matmul:");
    EXPECT_FAIL(ctx, kiln_matmul(ctx, kiln_matmul(ctx, a, b), q), KILN_ERR_SHAPE, "3 != 4");
    CHECK(kiln_matmul(NULL, a, a) == NULL && kiln_matmul_ex(NULL, a, a, 0) == NULL, "NULL ctx");
    CHECK_OK(ctx);
    /* the context still works after errors */
    kiln_tensor *ok = kiln_matmul_ex(ctx, a, a, KILN_TRANS_B);
    float h[4] = {0};
    CHECK(ok && kiln_to_host(ok, h, sizeof h) == KILN_OK && h[0] == 3 && h[1] == 3 && h[2] == 3 && h[3] == 3,
          "matmul after errors: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* Every parameter set of kiln's own kernels (src/ops/gemm.c's table: the sets devices get
 * and the odd ones only tests force), forced through ctx->hooks.gemm_params on this device:
 * m, n and k on each side of the set's block, vector and K step (k = 1 too), gemm_nn's two
 * transposes and gemm_nt's, batched and with a broadcast B, in the guarded pass (a write
 * past the block is seen). */
static void test_param_sets(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int own0 = kiln__hooks_of(ctx)->gemm_own;
    kiln__hooks_of(ctx)->gemm_own = 1;
    for (int s = 0; s < KILN__GEMM_SETS; s++) {
        const kiln__gemm_params *p = &kiln__gemm_sets[s];
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        CHECK(kiln__gemm_params_of(ctx) == p, "set %d: the hook did not select it", s);
        static const int flags[] = {0, KILN_TRANS_A, KILN_TRANS_B};
        static const char *const names[] = {"A B", "A^T B", "A B^T"};
        for (int f = 0; f < 3; f++) {
            bool ta = flags[f] & KILN_TRANS_A, tb = flags[f] & KILN_TRANS_B;
            int64_t rm = tb ? p->nt_rm : p->nn_rm, rn = tb ? p->nt_rn : p->nn_nv * p->nn_vw;
            int64_t vw = tb ? p->nt_vw : p->nn_vw, kstep = tb ? p->nt_vw * p->nt_ku : p->nn_ku;
            int64_t ms[] = {1, rm, rm + 1, 2 * rm - 1 > 0 ? 2 * rm - 1 : 1, 3 * rm + 2};
            int64_t ns[] = {1, rn, rn + 1, vw + 1, 2 * rn - 1 > 0 ? 2 * rn - 1 : 1, rn + vw + 3, 9 * rn + 1};
            int64_t ks[] = {1, vw - 1 > 0 ? vw - 1 : 2, kstep, kstep + 1, kstep + vw + 3, 3 * kstep + vw - 1, 100};
            for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++)
                for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
                    int64_t m = ms[i], n = ns[(i + j) % (sizeof ns / sizeof ns[0])], k = ks[j];
                    char name[128];
                    snprintf(name, sizeof name, "set %s: %s %lldx%lldx%lld", p->name, names[f], (long long)m,
                             (long long)n, (long long)k);
                    check_plain(ctx, name, 2, ta ? (int64_t[]){k, m} : (int64_t[]){m, k}, 2,
                                tb ? (int64_t[]){n, k} : (int64_t[]){k, n}, flags[f]);
                }
            /* batches: dim 1 of the launch spans every batch's column blocks */
            char name[128];
            int64_t m = rm + 1, n = rn + vw + 1, k = kstep + 3;
            snprintf(name, sizeof name, "set %s: %s batched [3,%lld,%lld]", p->name, names[f], (long long)m,
                     (long long)n);
            check_plain(ctx, name, 3, ta ? (int64_t[]){3, k, m} : (int64_t[]){3, m, k}, 3,
                        tb ? (int64_t[]){3, n, k} : (int64_t[]){3, k, n}, flags[f]);
            snprintf(name, sizeof name, "set %s: %s broadcast B [2,3,%lld,%lld]", p->name, names[f], (long long)m,
                     (long long)n);
            check_plain(ctx, name, 4, ta ? (int64_t[]){2, 3, k, m} : (int64_t[]){2, 3, m, k}, 3,
                        tb ? (int64_t[]){3, n, k} : (int64_t[]){3, k, n}, flags[f]);
        }
    }
    /* a set that does not exist: the product fails, naming the hook and the table's size */
    kiln__hooks_of(ctx)->gemm_params = KILN__GEMM_SETS + 1;
    CHECK(kiln__gemm_params_of(ctx) == NULL, "set %d should not exist", KILN__GEMM_SETS);
    kiln_tensor *a = kiln_ones(ctx, 2, (int64_t[]){3, 4}), *b = kiln_ones(ctx, 2, (int64_t[]){4, 5});
    EXPECT_FAIL(ctx, kiln_matmul(ctx, a, b), KILN_ERR_INVALID_ARGUMENT, "kiln_matmul", "parameter set 7",
                "hooks.gemm_params", "1..6", "m=3 n=5 k=4");
    kiln__hooks_of(ctx)->gemm_params = 0;
    /* KILN_GEMM_PARAMS picks a set by name; a name of none fails the product, naming them.
     * (setenv only with the queue drained: POCL's worker threads call getenv while they run
     * kernels, and glibc's setenv may move the environment under them) */
    kiln_sync(ctx);
    setenv("KILN_GEMM_PARAMS", "odd-b", 1);
    CHECK(kiln__gemm_params_of(ctx) == &kiln__gemm_sets[KILN__GEMM_SETS - 1], "KILN_GEMM_PARAMS=odd-b");
    check_plain(ctx, "KILN_GEMM_PARAMS=odd-b: A B 9x50x20", 2, (int64_t[]){9, 20}, 2, (int64_t[]){20, 50}, 0);
    kiln_sync(ctx);
    setenv("KILN_GEMM_PARAMS", "avx3", 1);
    EXPECT_FAIL(ctx, kiln_matmul(ctx, a, b), KILN_ERR_INVALID_ARGUMENT, "kiln_matmul", "KILN_GEMM_PARAMS='avx3'",
                "avx512, avx2, neon", "m=3 n=5 k=4");
    kiln_sync(ctx);
    unsetenv("KILN_GEMM_PARAMS");
    CHECK(kiln__gemm_params_of(ctx) != NULL, "KILN_GEMM_PARAMS unset: the device's set");
    kiln__hooks_of(ctx)->gemm_own = own0;
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* Which set a device gets: by the LLVM target in POCL's device name, else by its vector
 * width; the target and its instruction set as kiln bench reports them. */
static void test_param_choice(void) {
    static const struct {
        const char *name;
        uint32_t width;
        const char *set, *target, *isa;
    } cases[] = {
        {"pthread-skylake-avx512-AMD EPYC", 16, "avx512", "skylake-avx512", "avx512"},
        {"pthread-haswell-AMD EPYC", 8, "avx2", "haswell", "avx2"},
        {"pthread-skylake-Intel(R) Core(TM) i7", 8, "avx2", "skylake", "avx2"},
        {"cpu-znver3-AMD Ryzen 9 5950X", 8, "avx2", "znver3", "avx2"},
        {"cpu-znver4-AMD Ryzen 9 7950X", 16, "avx512", "znver4", "avx512"},
        {"pthread-cortex-a76-ARM", 4, "neon", "cortex-a76", "neon"},
        {"pthread-neoverse-n1-ARM", 4, "neon", "neoverse-n1", "neon"},
        {"pthread-apple-m1-Apple M1", 4, "neon", "apple-m1", "neon"},
        /* unknown targets and other devices: by vector width */
        {"pthread-futurecore-Some CPU", 16, "avx512", "futurecore", "unknown"},
        {"pthread-futurecore-Some CPU", 8, "avx2", "futurecore", "unknown"},
        {"pthread-futurecore-Some CPU", 4, "vec4", "futurecore", "unknown"},
        {"NVIDIA GeForce RTX 3090", 1, "vec4", "", "unknown"},
        {"pthread-", 8, "avx2", "", "unknown"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kiln_device_info info;
        memset(&info, 0, sizeof info);
        snprintf(info.name, sizeof info.name, "%s", cases[i].name);
        info.preferred_vector_width_float = info.native_vector_width_float = cases[i].width;
        char target[64];
        const char *isa = NULL;
        int s = kiln__gemm_choose(&info, target, sizeof target, &isa);
        CHECK(s >= 0 && s < KILN__GEMM_SETS && strcmp(kiln__gemm_sets[s].name, cases[i].set) == 0 &&
                  strcmp(target, cases[i].target) == 0 && isa && strcmp(isa, cases[i].isa) == 0,
              "'%s' (width %u): set %s, target '%s', isa %s; expected %s, '%s', %s", cases[i].name, cases[i].width,
              s >= 0 && s < KILN__GEMM_SETS ? kiln__gemm_sets[s].name : "?", target, isa ? isa : "NULL", cases[i].set,
              cases[i].target, cases[i].isa);
    }
    char d[128];
    kiln__gemm_describe(&kiln__gemm_sets[0], d, sizeof d);
    CHECK(strcmp(d, "avx512: nt 4x4 float16 k-unroll 1, nn 8x32 float16 k-unroll 1") == 0, "describe: %s", d);
}

/* CLBlast picks a direct GEMM kernel below m*n*k = XGEMM_MIN_INDIRECT_SIZE^3 (per device)
 * and else pads/transposes into temporaries for its fast kernel, which reads offsets,
 * leading dims and batch strides differently: setting the threshold to 1 makes the second
 * pass take the indirect path for every shape. It stays set for the rest of the process. */
static bool force_indirect_gemm(kiln_ctx *ctx) {
    const char *names[1] = {"XGEMM_MIN_INDIRECT_SIZE"};
    size_t values[1] = {1};
    CLBlastStatusCode s =
        CLBlastOverrideParameters(ctx->device, "GemmRoutine", CLBlastPrecisionSingle, 1, names, values);
    CHECK(s == CLBlastSuccess, "CLBlastOverrideParameters(GemmRoutine) returned %d", (int)s);
    return s == CLBlastSuccess;
}

/* ---- PyTorch golden values (tests/golden/gen_matmul.py) ----------------------------------- */
/*
 * The cases of gen_matmul.py (CASES there): batch broadcasting of both operands, vectors on
 * either side, a transposed and a sliced operand, each flag of kiln_matmul_ex. The header's
 * bound with torch's float64 result rounded once to float32 (1 u |ref|): an output element
 * is a dot product of k terms, |got - ref| <= TOL_C k u * mag + u |ref| with mag the sum of
 * |a||b| over its terms (<case>.mout). A gradient element is a dot product as well (kiln's
 * backward is two matmul_ex calls, and a sum over the batch dims an operand was broadcast
 * over): its numel(out) * k / numel(operand) terms, each a product of a seed and an operand
 * element (<case>.mda, .mdb: the same products of |g| and |operand|).
 */
static const struct {
    const char *c;
    bool ex; /* kiln_matmul_ex with flags, else kiln_matmul */
    int flags;
    int64_t k; /* the inner dimension */
    bool nc;   /* a = transpose(0, 1) of its base, b = every other column of its base */
} gold_mm_cases[] = {
    {"matmul.2d", false, 0, 5, false},
    {"matmul.bb", false, 0, 5, false},
    {"matmul.nc", false, 0, 5, true},
    {"matmul.vl", false, 0, 5, false},
    {"matmul.vr", false, 0, 5, false},
    {"matmul_ex.f0", true, 0, 5, false},
    {"matmul_ex.f1", true, KILN_TRANS_A, 5, false},
    {"matmul_ex.f2", true, KILN_TRANS_B, 5, false},
    {"matmul_ex.f3", true, KILN_TRANS_A | KILN_TRANS_B, 5, false},
    {"matmul_ex.f2w", true, KILN_TRANS_B, 5, false},
};

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "matmul")) return;
    for (size_t k = 0; k < sizeof gold_mm_cases / sizeof gold_mm_cases[0]; k++) {
        const char *c = gold_mm_cases[k].c;
        char name[160], mname[160], what[200];
        kiln_scope_begin(ctx);
        snprintf(name, sizeof name, "%s.a", c);
        kiln_tensor *a = golden_upload(ctx, golden_get(&g, name));
        snprintf(name, sizeof name, "%s.b", c);
        kiln_tensor *b = golden_upload(ctx, golden_get(&g, name));
        if (gold_mm_cases[k].nc) {
            a = kiln_transpose(ctx, a, 0, 1);
            b = kiln_slice(ctx, b, 1, 0, 8, 2);
        }
        kiln_tensor_set_requires_grad(a, true);
        kiln_tensor_set_requires_grad(b, true);
        kiln_tensor *out =
            gold_mm_cases[k].ex ? kiln_matmul_ex(ctx, a, b, gold_mm_cases[k].flags) : kiln_matmul(ctx, a, b);
        CHECK(out != NULL, "[%s] golden %s: %s", g_pass, c, kiln_error_message(ctx));
        if (out) {
            double kk = (double)gold_mm_cases[k].k, no = (double)kiln_tensor_numel(out);
            snprintf(name, sizeof name, "%s.out", c);
            snprintf(mname, sizeof mname, "%s.mout", c);
            snprintf(what, sizeof what, "[%s] golden %s output", g_pass, c);
            golden_compare_scaled(what, out, golden_get(&g, name), golden_get(&g, mname), 0, TOL_C * kk, 1);
            snprintf(name, sizeof name, "%s.g", c);
            kiln_tensor *seed = golden_upload(ctx, golden_get(&g, name));
            CHECK(seed && kiln_backward_ex(out, seed, false) == KILN_OK, "[%s] golden %s backward: %s", g_pass, c,
                  kiln_error_message(ctx));
            kiln_tensor *in[2] = {a, b};
            for (int i = 0; i < 2; i++) {
                double terms = no * kk / (double)kiln_tensor_numel(in[i]);
                snprintf(name, sizeof name, "%s.d%c", c, "ab"[i]);
                snprintf(mname, sizeof mname, "%s.md%c", c, "ab"[i]);
                snprintf(what, sizeof what, "[%s] golden %s d%c", g_pass, c, "ab"[i]);
                golden_compare_scaled(what, kiln_tensor_grad(in[i]), golden_get(&g, name), golden_get(&g, mname), 0,
                                      TOL_C * terms, 1);
            }
        }
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
    }
    golden_close(&g);
}

static void run_pass(kiln_ctx *ctx, const char *pass, int64_t guard) {
    g_pass = pass;
    /* guard > 0: sentinels around every storage (a GEMM writing outside its output is
     * seen) and every tensor starts at a non-zero offset; 0: offsets are 0 and CLBlast's
     * indirect path can skip its temporaries */
    kiln__set_guard(ctx, guard);
    test_shapes(ctx);
    test_split_k(ctx);
    test_own(ctx);
    test_views(ctx);
    test_batches(ctx);
    test_vectors(ctx);
    test_golden(ctx);
    kiln__set_guard(ctx, 0);
}

static void run(kiln_ctx *ctx) {
    run_pass(ctx, "guarded", 67);
    run_pass(ctx, "offset 0", 0);
    kiln__set_guard(ctx, 67);
    g_pass = "errors";
    test_errors(ctx);
    kiln__set_guard(ctx, 0);
    /* kiln's own GEMM kernels run by default on CPUs only: forced here on every device, and
     * turned off for the CLBlast passes, so that CLBlast's paths stay checked on CPUs too */
    kiln__hooks_of(ctx)->gemm_own = g_own = 1;
    run_pass(ctx, "own kernels, guarded", 67);
    kiln__hooks_of(ctx)->gemm_own = g_own = -1;
    run_pass(ctx, "CLBlast only, guarded", 67);
    if (force_indirect_gemm(ctx)) {
        run_pass(ctx, "indirect, guarded", 67);
        run_pass(ctx, "indirect, offset 0", 0);
    }
    kiln__hooks_of(ctx)->gemm_own = g_own = 0;
    kiln__set_guard(ctx, 67);
    g_pass = "parameter sets, guarded";
    test_param_sets(ctx);
    kiln__set_guard(ctx, 0);
}

int main(void) {
    test_param_choice();
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
