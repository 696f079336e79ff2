/* cl_kernels/gemm.cl - kiln's own GEMM for CPU devices (src/ops/gemm.c decides when).
 *
 * gemm_nt: row-major C = alpha A B^T + beta C, A [M, K] and B [N, K] both with K
 * contiguous: every output is a dot product of two contiguous rows. This is the product
 * of a linear layer's forward (x W^T) and of a convolution's weight gradient (gy cols^T),
 * for which CLBlast's indirect kernel copies B into a transposed, padded temporary first.
 *
 * Each work-item computes a 4 x 4 block of C with sixteen float16 accumulators, reading
 * four rows of A and four of B once per 16 k: 8 vector loads per 16 vector multiply-adds,
 * which LLVM keeps in registers on AVX-512 (and splits into narrower vectors elsewhere).
 * POCL runs a work-group's items one after another. Dim 0 walks down A's row blocks, so
 * that a block of B rows is used for every row of A while it is in cache: when N is large
 * (a weight gradient's 36864 pixels) that ran the product faster than the other order
 * (README.md, "Speed", has the figures). Rows past M or N are clamped to the last one for
 * the loads and never written, so any M, N >= 1 works; K's last K % 16 terms are added one
 * at a time. Dim 1 holds every batch's column blocks (nblocks per batch); batch b's
 * operands start at aoff + b*astride, ... (elements).
 */

/* The 16 lanes of v, one by one: Oclgrind 21.10 loses track of which lanes are
 * initialised through .lo/.hi halves of a float16 (it reported the sums as uninitialised);
 * the sum runs once per work-item, so its shape costs nothing. */
static float hsum16(float16 v) {
    return v.s0 + v.s1 + v.s2 + v.s3 + v.s4 + v.s5 + v.s6 + v.s7 + v.s8 + v.s9 + v.sa + v.sb + v.sc + v.sd + v.se +
           v.sf;
}
#define HSUM hsum16

__kernel void gemm_nt(int M, int N, int K, int nblocks, int batch, float alpha, float beta,
                      __global const float *A, ulong aoff, ulong lda, ulong astride,
                      __global const float *B, ulong boff, ulong ldb, ulong bstride,
                      __global float *C, ulong coff, ulong ldc, ulong cstride) {
    int i0 = (int)get_global_id(0) * 4;
    int bi = (int)get_global_id(1) / nblocks;
    int j0 = ((int)get_global_id(1) - bi * nblocks) * 4;
    if (i0 >= M || bi >= batch) return;
    /* this batch's operands; rows past M or N clamped to the last */
    const __global float *ab = A + aoff + (ulong)bi * astride, *bb = B + boff + (ulong)bi * bstride;
    const __global float *a0 = ab + (ulong)i0 * lda, *a1 = ab + (ulong)min(i0 + 1, M - 1) * lda;
    const __global float *a2 = ab + (ulong)min(i0 + 2, M - 1) * lda, *a3 = ab + (ulong)min(i0 + 3, M - 1) * lda;
    const __global float *b0 = bb + (ulong)j0 * ldb, *b1 = bb + (ulong)min(j0 + 1, N - 1) * ldb;
    const __global float *b2 = bb + (ulong)min(j0 + 2, N - 1) * ldb, *b3 = bb + (ulong)min(j0 + 3, N - 1) * ldb;
    float16 c00 = 0.0f, c01 = 0.0f, c02 = 0.0f, c03 = 0.0f, c10 = 0.0f, c11 = 0.0f, c12 = 0.0f, c13 = 0.0f;
    float16 c20 = 0.0f, c21 = 0.0f, c22 = 0.0f, c23 = 0.0f, c30 = 0.0f, c31 = 0.0f, c32 = 0.0f, c33 = 0.0f;
    int kv = K / 16 * 16;
    for (int k = 0; k < kv; k += 16) {
        float16 y0 = vload16(0, b0 + k), y1 = vload16(0, b1 + k), y2 = vload16(0, b2 + k), y3 = vload16(0, b3 + k);
        float16 x = vload16(0, a0 + k);
        c00 = fma(x, y0, c00); c01 = fma(x, y1, c01); c02 = fma(x, y2, c02); c03 = fma(x, y3, c03);
        x = vload16(0, a1 + k);
        c10 = fma(x, y0, c10); c11 = fma(x, y1, c11); c12 = fma(x, y2, c12); c13 = fma(x, y3, c13);
        x = vload16(0, a2 + k);
        c20 = fma(x, y0, c20); c21 = fma(x, y1, c21); c22 = fma(x, y2, c22); c23 = fma(x, y3, c23);
        x = vload16(0, a3 + k);
        c30 = fma(x, y0, c30); c31 = fma(x, y1, c31); c32 = fma(x, y2, c32); c33 = fma(x, y3, c33);
    }
    float s[4][4] = {{HSUM(c00), HSUM(c01), HSUM(c02), HSUM(c03)},
                     {HSUM(c10), HSUM(c11), HSUM(c12), HSUM(c13)},
                     {HSUM(c20), HSUM(c21), HSUM(c22), HSUM(c23)},
                     {HSUM(c30), HSUM(c31), HSUM(c32), HSUM(c33)}};
    for (int k = kv; k < K; k++) {
        float x[4] = {a0[k], a1[k], a2[k], a3[k]}, y[4] = {b0[k], b1[k], b2[k], b3[k]};
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 4; c++) s[r][c] = fma(x[r], y[c], s[r][c]);
    }
    __global float *crow = C + coff + (ulong)bi * cstride + (ulong)i0 * ldc + j0;
    int rows = min(4, M - i0), cols = min(4, N - j0);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            __global float *p = crow + (ulong)r * ldc + c;
            /* beta == 0 never reads C: stale pool memory, even NaN, cannot leak in */
            *p = beta == 0.0f ? alpha * s[r][c] : fma(beta, *p, alpha * s[r][c]);
        }
}

/* gemm_nn: row-major C = alpha op(A) B, B [K, N] row-major and op(A) [M, K] either
 * A [M, K] (ta == 0) or the transpose of A [K, M] (ta == 1): a convolution's forward
 * (w cols) and input gradient (w^T gy), a linear layer's input and weight gradients.
 *
 * Each work-item computes an 8 x 32 block of C as outer products: per k, two float16 loads
 * of B's row k, eight scalars of A broadcast, sixteen vector multiply-adds into sixteen
 * float16 accumulators. With the broadcasts folded into the FMAs that is ~2 vector loads
 * per 16 multiply-adds: on the reference CNN's second layer it ran the forward and
 * input-gradient products faster than CLBlast's tuned indirect kernel, which copies and
 * pads its operands first (README.md, "Speed", has the figures). Dim 0 walks A's row
 * blocks, dim 1 every batch's column blocks (nblocks per batch); a work-group is 8
 * neighbouring column blocks of one row block, which share A's rows. Rows past M are
 * clamped for the loads and never written. The last block of a row, when it reaches past N,
 * computes its first 16 columns as vectors (if it has them) and the rest one at a time. */
__kernel void gemm_nn(int M, int N, int K, int ta, int nblocks, int batch, float alpha,
                      __global const float *A, ulong aoff, ulong lda, ulong astride,
                      __global const float *B, ulong boff, ulong ldb, ulong bstride,
                      __global float *C, ulong coff, ulong ldc, ulong cstride) {
    int i0 = (int)get_global_id(0) * 8;
    int bi = (int)get_global_id(1) / nblocks;
    int j0 = ((int)get_global_id(1) - bi * nblocks) * 32;
    if (i0 >= M || bi >= batch) return;
    const __global float *ab = A + aoff + (ulong)bi * astride;
    const __global float *bp = B + boff + (ulong)bi * bstride + j0;
    /* op(A)[i0 + r, k] = ap[r * rs + k * ks], rows past M clamped to the last */
    ulong rs = ta ? 1 : lda, ks = ta ? lda : 1;
    int rmax = M - 1 - i0;
    ulong r1 = (ulong)min(1, rmax) * rs, r2 = (ulong)min(2, rmax) * rs, r3 = (ulong)min(3, rmax) * rs;
    ulong r4 = (ulong)min(4, rmax) * rs, r5 = (ulong)min(5, rmax) * rs, r6 = (ulong)min(6, rmax) * rs;
    ulong r7 = (ulong)min(7, rmax) * rs;
    const __global float *ap = ab + (ulong)i0 * rs;
    int rows = min(8, M - i0);
    __global float *cp = C + coff + (ulong)bi * cstride + (ulong)i0 * ldc + j0;
    int cols = N - j0;
    /* k's terms of row r: 16 columns from x into c_r, and with WIDE 16 more from y into d_r
     * (WIDE is a literal, so each loop below is compiled without the other's work) */
#define NN_ROW(WIDE, r, ar)                                                                \
    a = ap[ar];                                                                            \
    c##r = fma((float16)a, x, c##r);                                                       \
    if (WIDE) d##r = fma((float16)a, y, d##r);
#define NN_LOOP(WIDE)                                                                      \
    for (int k = 0; k < K; k++) {                                                          \
        float16 x = vload16(0, bk), y = WIDE ? vload16(1, bk) : x;                         \
        float a;                                                                           \
        NN_ROW(WIDE, 0, 0) NN_ROW(WIDE, 1, r1) NN_ROW(WIDE, 2, r2) NN_ROW(WIDE, 3, r3)     \
        NN_ROW(WIDE, 4, r4) NN_ROW(WIDE, 5, r5) NN_ROW(WIDE, 6, r6) NN_ROW(WIDE, 7, r7)    \
        bk += ldb;                                                                         \
        ap += ks;                                                                          \
    }
    /* C's row r: cols 0..15 from c_r, 16..31 from d_r (when wide). C is only written: stale
     * pool memory, even NaN, cannot leak in. */
#define NN_STORE(r)                                                                        \
    if (r < rows) {                                                                        \
        vstore16(alpha * c##r, 0, cp + (ulong)(r) * ldc);                                  \
        if (wide) vstore16(alpha * d##r, 1, cp + (ulong)(r) * ldc);                        \
    }
    if (cols >= 16) {
        /* 32 columns; the last block of a row may have 16..31, of which the first 16 go
         * here (wide == false) and the rest to the scalar loop below */
        bool wide = cols >= 32;
        float16 c0 = 0.0f, c1 = 0.0f, c2 = 0.0f, c3 = 0.0f, c4 = 0.0f, c5 = 0.0f, c6 = 0.0f, c7 = 0.0f;
        float16 d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f, d4 = 0.0f, d5 = 0.0f, d6 = 0.0f, d7 = 0.0f;
        const __global float *bk = bp, *ak = ap;
        if (wide) {
            NN_LOOP(1)
        } else {
            NN_LOOP(0)
        }
        ap = ak;
        NN_STORE(0) NN_STORE(1) NN_STORE(2) NN_STORE(3) NN_STORE(4) NN_STORE(5) NN_STORE(6) NN_STORE(7)
        if (wide) return;
    }
#undef NN_ROW
#undef NN_LOOP
#undef NN_STORE
    /* the columns of a row's last block past its first 16: one at a time */
    const ulong ro[8] = {0, r1, r2, r3, r4, r5, r6, r7};
    for (int c = cols >= 16 ? 16 : 0; c < cols; c++) {
        float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int k = 0; k < K; k++) {
            float b = bp[(ulong)k * ldb + c];
            for (int r = 0; r < 8; r++) s[r] = fma(ap[ro[r] + (ulong)k * ks], b, s[r]);
        }
        for (int r = 0; r < rows; r++) cp[(ulong)r * ldc + c] = alpha * s[r];
    }
}
