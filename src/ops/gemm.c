/* src/ops/gemm.c - kiln's own GEMM kernels (cl_kernels/gemm.cl) and which products
 * kiln__sgemm hands them instead of CLBlast.
 *
 * On CPU devices CLBlast's indirect kernel copies op(B) into a transposed, padded
 * temporary whenever B is transposed: a linear layer's x W^T re-copies the whole weight on
 * every call, and the reference CNN's fc1 (64 x 128 x 9216) ran at 0.36x OpenBLAS, the
 * MLP's fc1 (64 x 512 x 784) at 0.28x. With both operands' K contiguous each output is a
 * dot product of two rows, which gemm_nt computes in place at OpenBLAS's speed (README,
 * "Performance"). Every other product, and every product on a GPU, stays with CLBlast. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../kiln_internal.h"

#define GEMM_PROGRAM "gemm"
#define GEMM_OPTIONS ""
#define BLOCK 4 /* rows and columns of C per work-item */

/* -1: the device type decides (CPU); 0: never; 1: always (test hook). */
static _Atomic int forced = -1;

void kiln__gemm_own(int mode) { forced = mode < 0 ? -1 : mode > 0; }

bool kiln__gemm_own_takes(const kiln_ctx *ctx, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch) {
    if (ta || !tb || m == 0 || n == 0 || k == 0 || batch == 0) return false;
    /* the kernel's dims are ints, and so is its flat index over every batch's column blocks */
    size_t nblocks = (n + BLOCK - 1) / BLOCK;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX || batch > INT_MAX / nblocks) return false;
    int mode = forced;
    if (mode >= 0) return mode == 1;
    const char *e = getenv("KILN_GEMM_OWN");
    if (e && (strcmp(e, "off") == 0 || strcmp(e, "0") == 0)) return false;
    return ctx->info.type == KILN_DEVICE_CPU;
}

kiln_status kiln__gemm_nt(kiln_ctx *ctx, const char *op, size_t m, size_t n, size_t k, float alpha, cl_mem a,
                          size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb, size_t bstride,
                          float beta, cl_mem c, size_t coff, size_t ldc, size_t cstride, size_t batch) {
    cl_int cm = (cl_int)m, cn = (cl_int)n, ck = (cl_int)k, nb = (cl_int)((n + BLOCK - 1) / BLOCK);
    cl_int cb = (cl_int)batch;
    cl_ulong ao = aoff, al = lda, as = astride, bo = boff, bl = ldb, bs = bstride, co = coff, cl = ldc, cs = cstride;
    kiln__karg args[] = {KILN__ARG(cm), KILN__ARG(cn), KILN__ARG(ck), KILN__ARG(nb), KILN__ARG(cb),
                         KILN__ARG(alpha), KILN__ARG(beta), KILN__ARG(a), KILN__ARG(ao), KILN__ARG(al),
                         KILN__ARG(as), KILN__ARG(b), KILN__ARG(bo), KILN__ARG(bl), KILN__ARG(bs),
                         KILN__ARG(c), KILN__ARG(co), KILN__ARG(cl), KILN__ARG(cs)};
    /* 4 x 4 items per group: neighbouring blocks share rows of A and B in cache; the
     * kernel drops the items the rounding adds */
    size_t local[2] = {4, 4};
    size_t global[2] = {((m + BLOCK - 1) / BLOCK + 3) / 4 * 4, ((size_t)nb * batch + 3) / 4 * 4};
    return kiln__launch2(ctx, op, GEMM_PROGRAM, GEMM_OPTIONS, "gemm_nt", sizeof args / sizeof args[0], args, global,
                         local);
}
