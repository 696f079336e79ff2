/* src/ops/gemm.c - kiln's own GEMM kernels (cl_kernels/gemm.cl) and which products
 * kiln__sgemm hands them instead of CLBlast.
 *
 * On CPU devices CLBlast's indirect kernel copies its operands into padded (and, for a
 * transposed B, transposed) temporaries on every call, and its tuned parameters stay well
 * below OpenBLAS: a linear layer's x W^T re-copied the whole weight each step, and the
 * reference CNN's and MLP's fc1 forward ran at a fraction of OpenBLAS's speed. kiln's two
 * kernels read the operands in place, with register blocks that POCL compiles to AVX-512
 * FMAs without spills:
 *   - gemm_nt, A B^T with both K contiguous: dot products of rows, 4 x 4 per work-item;
 *   - gemm_nn, op(A) B with B's rows contiguous: outer products, 8 x 32 per work-item.
 * Together they take every product but op(A)^T B^T on CPUs (README, "Speed", has the
 * figures); GPUs keep CLBlast, whose kernels use local memory as these do not.
 *
 * Measured through POCL on AVX-512 only. On AVX2 a float16 accumulator takes two of the
 * sixteen registers, so they spill; the same loops in C built with clang -mavx2 still ran
 * at a steady fraction of OpenBLAS using AVX-512, where CLBlast through POCL with AVX-512
 * swung from far below that to near OpenBLAS on the same kind of shapes (README.md,
 * "Speed", has the figures): so every CPU takes them. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

#define GEMM_PROGRAM "gemm"
#define GEMM_OPTIONS ""

static size_t blocks(size_t x, size_t b) { return (x + b - 1) / b; }

bool kiln__gemm_own_takes(const kiln_ctx *ctx, bool ta, bool tb, size_t m, size_t n, size_t k, size_t batch,
                          float beta) {
    /* gemm_nn only overwrites C: no caller accumulates into an A B product */
    if ((ta && tb) || (!tb && beta != 0.0f) || m == 0 || n == 0 || k == 0 || batch == 0) return false;
    /* the kernels' dims are ints, and so are a block's first row and column (up to a
     * work-group past m or n) and the flat index over every batch's column blocks */
    size_t nblocks = blocks(n, tb ? 4 : 32), lim = (size_t)INT_MAX - 256;
    if (m > lim || n > lim || k > lim || batch > lim / nblocks) return false;
    /* ctx->hooks.gemm_own (tests, kiln tune): 1 always, -1 never, 0 the device decides */
    int mode = ctx->hooks.gemm_own;
    if (mode != 0) return mode > 0;
    const char *e = getenv("KILN_GEMM_OWN");
    if (e && (strcmp(e, "off") == 0 || strcmp(e, "0") == 0)) return false;
    return ctx->info.type == KILN_DEVICE_CPU;
}

kiln_status kiln__gemm_run(kiln_ctx *ctx, const char *op, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                           cl_mem a, size_t aoff, size_t lda, size_t astride, cl_mem b, size_t boff, size_t ldb,
                           size_t bstride, float beta, cl_mem c, size_t coff, size_t ldc, size_t cstride,
                           size_t batch) {
    /* 4 x 4 (nt) or 8 x 32 (nn) outputs per work-item */
    size_t bm = tb ? 4 : 8, bn = tb ? 4 : 32;
    cl_int cm = (cl_int)m, cn = (cl_int)n, ck = (cl_int)k, nb = (cl_int)blocks(n, bn), cb = (cl_int)batch;
    cl_int cta = ta;
    cl_ulong ao = aoff, al = lda, as = astride, bo = boff, bl = ldb, bs = bstride, co = coff, cl = ldc, cs = cstride;
    kiln__karg nt[] = {KILN__ARG(cm),    KILN__ARG(cn),   KILN__ARG(ck), KILN__ARG(nb), KILN__ARG(cb),
                       KILN__ARG(alpha), KILN__ARG(beta), KILN__ARG(a),  KILN__ARG(ao), KILN__ARG(al),
                       KILN__ARG(as),    KILN__ARG(b),    KILN__ARG(bo), KILN__ARG(bl), KILN__ARG(bs),
                       KILN__ARG(c),     KILN__ARG(co),   KILN__ARG(cl), KILN__ARG(cs)};
    kiln__karg nn[] = {KILN__ARG(cm), KILN__ARG(cn),    KILN__ARG(ck), KILN__ARG(cta), KILN__ARG(nb),
                       KILN__ARG(cb), KILN__ARG(alpha), KILN__ARG(a),  KILN__ARG(ao),  KILN__ARG(al),
                       KILN__ARG(as), KILN__ARG(b),     KILN__ARG(bo), KILN__ARG(bl),  KILN__ARG(bs),
                       KILN__ARG(c),  KILN__ARG(co),    KILN__ARG(cl), KILN__ARG(cs)};
    /* nt: 4 x 4 items per group, neighbouring blocks sharing rows of A and B in cache; nn:
     * 8 column blocks of one row block. The kernels drop the items the rounding adds. */
    size_t lx = tb ? 4 : 1, ly = tb ? 4 : 8;
    size_t global[2] = {blocks(blocks(m, bm), lx) * lx, blocks((size_t)nb * batch, ly) * ly};
    size_t local[2] = {lx, ly};
    if (tb)
        return kiln__launch2(ctx, op, GEMM_PROGRAM, GEMM_OPTIONS, "gemm_nt", sizeof nt / sizeof nt[0], nt, global,
                             local);
    return kiln__launch2(ctx, op, GEMM_PROGRAM, GEMM_OPTIONS, "gemm_nn", sizeof nn / sizeof nn[0], nn, global, local);
}
