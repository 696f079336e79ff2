/* src/ops/sgemm.c - the GEMM router: every matrix product of kiln's ops goes through
 * kiln__sgemm, which hands it to kiln's own kernels (src/ops/gemm.c) or to CLBlast, in the
 * operand order and with the CLBlast kernel (direct or indirect) that run it fastest. The
 * parameters CLBlast runs with are the device floor's (src/device/tuning.c): this file only
 * reads them, through kiln__tune_route.
 *
 * Row-major C = op(A) op(B) is, byte for byte, column-major C^T = op(B)^T op(A)^T, and
 * CLBlast's indirect kernel treats the two forms differently. Its GEMMK=0 kernel wants A
 * "unrotated" and C column-major, so a row-major call pays a transpose pass over A and
 * another over C around the main kernel, the column-major form only one over the (swapped)
 * B operand, which makes it the faster form with the CPU parameters (README.md, "Speed",
 * has the figures). GEMMK=1 kernels want the opposite, so the column-major form is used
 * only where kiln set GEMMK=0 itself (the built-in table or a stored tuning); elsewhere
 * kiln calls CLBlast as before. KILN_GEMM_LAYOUT=row|col overrides (for measurements). */
#include "ops_internal.h" /* before clblast_c.h: it picks the OpenCL target version */

#include <clblast_c.h>

void kiln__sgemm_tiles(kiln_ctx *ctx, size_t *tm, size_t *tn, size_t *tk) {
    *tm = *tn = *tk = 1;
    kiln__gemm_route r;
    kiln__tune_lock();
    kiln__tune_route(ctx, &r);
    kiln__tune_unlock();
    /* column-major form: CLBlast's m' is kiln's n (tile MWG), its n' kiln's m (NWG) */
    if (r.colmajor && r.known) {
        *tm = r.nwg;
        *tn = r.mwg;
        *tk = r.kwg;
    }
}

static int sgemm(kiln_ctx *ctx, bool col, CLBlastTranspose fa, CLBlastTranspose fb, size_t m, size_t n, size_t k,
                 float alpha, cl_mem a, size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb,
                 size_t bstride, float beta, cl_mem c, size_t coff, size_t ldc, size_t cstride, size_t batch) {
    KILN__COUNT(ctx, library_calls, 1);
    if (col) {
        if (batch == 1)
            return CLBlastSgemm(CLBlastLayoutColMajor, fb, fa, n, m, k, alpha, b, boff, ldb, a, aoff, lda, beta, c,
                                coff, ldc, &ctx->queue, NULL);
        return CLBlastSgemmStridedBatched(CLBlastLayoutColMajor, fb, fa, n, m, k, alpha, b, boff, ldb, bstride, a, aoff,
                                          lda, astride, beta, c, coff, ldc, cstride, batch, &ctx->queue, NULL);
    }
    if (batch == 1)
        return CLBlastSgemm(CLBlastLayoutRowMajor, fa, fb, m, n, k, alpha, a, aoff, lda, b, boff, ldb, beta, c, coff,
                            ldc, &ctx->queue, NULL);
    return CLBlastSgemmStridedBatched(CLBlastLayoutRowMajor, fa, fb, m, n, k, alpha, a, aoff, lda, astride, b, boff,
                                      ldb, bstride, beta, c, coff, ldc, cstride, batch, &ctx->queue, NULL);
}

static double padded(size_t x, size_t tile) { return tile ? (double)((x + tile - 1) / tile * tile) : (double)x; }

/*
 * Whether CLBlast 1.5's strided-batched indirect GEMM might compute this batch wrongly. It
 * uses an operand in place (no padded temporary) when its dims are multiples of the tiles
 * and its leading dim is exact, without looking at the operand's offset or batch stride:
 * its kernel then reads batch i at i * rows * cols from the buffer's start. (kiln's
 * [2, 64, 64] x [2, 64, 64] with non-zero offsets got NaN and wrote outside its output.)
 * Where kiln knows the tiles and calls in the column-major form it predicts CLBlast's test
 * (xgemmstridedbatched.cpp, GEMMK 0: A wanted unrotated, B rotated); elsewhere every
 * operand counts as possibly in place.
 */
static bool batched_unsafe(const kiln__gemm_route *r, bool ta, bool tb, size_t m, size_t n, size_t k, size_t aoff,
                           size_t lda, size_t astride, size_t boff, size_t ldb, size_t bstride, size_t coff, size_t ldc,
                           size_t cstride) {
    bool a_dense = aoff == 0 && astride == (ta ? k * m : m * k) && lda == (ta ? m : k);
    bool b_dense = boff == 0 && bstride == k * n && ldb == (tb ? k : n);
    bool c_dense = coff == 0 && cstride == m * n && ldc == n;
    if (!(r->colmajor && r->known && r->mwg && r->nwg && r->kwg)) return !a_dense || !b_dense || !c_dense;
    /* the column-major call: CLBlast's A is kiln's B, its B kiln's A, m' = n, n' = m */
    bool kin = k % r->kwg == 0;
    bool a_in_place = ta && m % r->nwg == 0 && kin && lda == m;
    bool b_in_place = !tb && n % r->mwg == 0 && kin && ldb == n;
    bool c_in_place = n % r->mwg == 0 && m % r->nwg == 0 && ldc == n;
    return (a_in_place && !a_dense) || (b_in_place && !b_dense) || (c_in_place && !c_dense);
}

/*
 * CLBlast picks its kernel by size alone (direct below XGEMM_MIN_INDIRECT_SIZE^3 flops/2),
 * but what decides on a CPU is padding: the indirect kernel computes whole MWG x NWG x KWG
 * tiles, the direct one whole WGD^3 ones. The reference CNN's first layer (32 x 43264 x 9
 * forward, 9 x 32 x 5408 per weight-gradient part) wastes 7x and 14x in the indirect kernel
 * and 3.6x in a 32-wide direct one, which ran those products faster, while the MLP's
 * 64 x 256 x 512 ran faster indirect: no size threshold serves both. So where kiln set the
 * parameters itself, each call goes to the kernel that pads less (indirect unless it does
 * at least twice the direct kernel's padded work), by switching the threshold around the
 * call: both programs stay compiled in CLBlast's cache, and the device floor's lock keeps
 * concurrent calls from seeing each other's switch. A switch costs host time, so small
 * products keep CLBlast's choice. kiln tune turns the choice off on its context
 * (ctx->hooks.sgemm_fixed) to time each kernel as the parameters force it.
 */
int kiln__sgemm(kiln_ctx *ctx, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, cl_mem a,
                size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb, size_t bstride, float beta,
                cl_mem c, size_t coff, size_t ldc, size_t cstride, size_t batch) {
    if (ctx->hooks.gemm_seen) ctx->hooks.gemm_seen(ctx->hooks.gemm_seen_arg, op, ta, tb, m, n, k, batch);
    if (kiln__gemm_own_takes(ctx, ta, tb, m, n, k, batch, beta))
        return kiln__gemm_run(ctx, op, ta, tb, m, n, k, alpha, a, aoff, lda, astride, b, boff, ldb, bstride, beta, c,
                              coff, ldc, cstride, batch) == KILN_OK
                   ? 0
                   : KILN__SGEMM_FAILED;
    kiln__gemm_route r;
    kiln__tune_lock();
    kiln__tune_route(ctx, &r);
    kiln__tune_unlock();
    if (batch > 1 && batched_unsafe(&r, ta, tb, m, n, k, aoff, lda, astride, boff, ldb, bstride, coff, ldc, cstride)) {
        /* one plain GEMM per batch: CLBlast's single GEMM copies an offset operand first */
        for (size_t i = 0; i < batch; i++) {
            int rc = kiln__sgemm(ctx, op, ta, tb, m, n, k, alpha, a, aoff + i * astride, lda, 0, b, boff + i * bstride,
                                 ldb, 0, beta, c, coff + i * cstride, ldc, 0, 1);
            if (rc != 0) return rc;
        }
        return 0;
    }
    CLBlastTranspose fa = ta ? CLBlastTransposeYes : CLBlastTransposeNo;
    CLBlastTranspose fb = tb ? CLBlastTransposeYes : CLBlastTransposeNo;
    kiln__tune_lock();
    kiln__tune_route(ctx, &r); /* again under the lock held through the call */
    bool col = r.colmajor;
    if (!col || !r.known || ctx->hooks.sgemm_fixed || m == 0 || n == 0 || k == 0) {
        kiln__tune_unlock();
        return sgemm(ctx, col, fa, fb, m, n, k, alpha, a, aoff, lda, astride, b, boff, ldb, bstride, beta, c, coff, ldc,
                     cstride, batch);
    }
    /* CLBlast's view: m' = n, n' = m in the column-major form */
    double mm = (double)n, nn = (double)m, kk = (double)k, flops = mm * nn * kk;
    double thr = (double)r.thr;
    bool clblast_direct = flops < thr * thr * thr;
    double w_ind = padded(n, r.mwg) * padded(m, r.nwg) * padded(k, r.kwg) / flops;
    double w_dir = padded(n, r.wgd) * padded(m, r.wgd) * padded(k, r.wgd) / flops;
    /* a switch costs two CLBlastOverrideParameters (README.md, "Speed", has their time on
     * POCL): only for products whose padded work (>= 2^25 multiply-adds) costs more */
    bool want_direct = clblast_direct;
    if (flops * (double)batch * (clblast_direct ? w_dir : w_ind) >= 33554432.0) want_direct = w_ind >= 2.0 * w_dir;
    int rc;
    if (want_direct == clblast_direct) {
        rc = sgemm(ctx, col, fa, fb, m, n, k, alpha, a, aoff, lda, astride, b, boff, ldb, bstride, beta, c, coff, ldc,
                   cstride, batch);
    } else {
        kiln__tune_threshold(ctx, want_direct ? ((size_t)1 << 20) : 1);
        rc = sgemm(ctx, col, fa, fb, m, n, k, alpha, a, aoff, lda, astride, b, boff, ldb, bstride, beta, c, coff, ldc,
                   cstride, batch);
        kiln__tune_threshold(ctx, r.thr);
    }
    kiln__tune_unlock();
    return rc;
}
