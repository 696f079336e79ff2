/* cl_kernels/gemm.cl - kiln's own GEMM for CPU devices (src/ops/gemm.c decides when, and
 * with which parameters), and gemm_copy, which pads a K operand's leading dim.
 *
 * Both GEMM kernels take their register-block shape, vector width and K unroll as build
 * options (src/ops/gemm.c's table of parameter sets, one per instruction set, passes them
 * as -D):
 *   NT_RM x NT_RN  gemm_nt's outputs per work-item, NT_VW its vector width (2, 4, 8, 16),
 *                  NT_KU the vectors of K per loop iteration;
 *   NN_RM x NN_NV*NN_VW  gemm_nn's outputs per work-item (NN_NV vectors of NN_VW floats
 *                  per row), NN_KU the values of k per loop iteration.
 * The defaults below are the AVX-512 set. Every loop over a block's rows, columns or
 * vectors has a constant trip count, so LLVM unrolls it and keeps the accumulator arrays
 * in registers when the set fits the register file.
 */
#ifndef NT_RM
#define NT_RM 4
#endif
#ifndef NT_RN
#define NT_RN 4
#endif
#ifndef NT_VW
#define NT_VW 16
#endif
#ifndef NT_KU
#define NT_KU 1
#endif
#ifndef NN_RM
#define NN_RM 8
#endif
#ifndef NN_NV
#define NN_NV 2
#endif
#ifndef NN_VW
#define NN_VW 16
#endif
#ifndef NN_KU
#define NN_KU 1
#endif
/* NN_TC 1: gemm_nn stores its result transposed (the A^T B^T path, see gemm_nn); NN_BETA 0:
 * gemm_nn is only run with beta 0 (never reads C). Build options rather than arguments
 * alone: the second store form and the read of C, compiled into every gemm_nn, cost A^T B
 * with a short K (288 x 36864 x 64) 3-4% more CPU time. */
#ifndef NN_TC
#define NN_TC 0
#endif
#ifndef NN_BETA
#define NN_BETA 1
#endif

/* NT_BIAS 1: gemm_nt (and gemm_nn, for a linear layer's product that runs as A (B^T) on a
 * transposed copy of W) adds bias[bias_off + j * bias_st] to output column j as it stores
 * (a linear layer's x W^T + b in one launch; only with beta 0 and gemm_nn's plain store,
 * src/ops/gemm.c); NT_BIAS 2 also applies ReLU to the sum (x < 0 ? 0 : x, as kiln_relu).
 * The extra arguments exist only in those programs. */
#ifndef NT_BIAS
#define NT_BIAS 0
#endif

/* The arguments of the product kernels (gemm_nt, gemm_nn, gemm_ger, gemv_rows, gemv_cols):
 * the three operands, the bias with NT_BIAS, and the scalars packed in three vectors, dims
 * (ints), scal (alpha, beta) and offs (offsets, leading dims and batch strides, in
 * elements); each kernel names what its slots hold. POCL copies each argument of a launch
 * on its own, at the enqueue and again for the worker: twenty scalars had cost a small
 * product's launch more host time than its arithmetic (src/ops/gemm.c, gemm_pack). */
#if NT_BIAS
#define GEMM_BIAS_ARG , __global const BI_S *bias
#else
#define GEMM_BIAS_ARG
#endif
/* gemm_nt and gemm_nn: dims (M, N, K, ta, nblocks, batch), offs (aoff, lda, astride, boff,
 * ldb, bstride, coff, ldc, cstride, bias_off, bias_st) */
#define GEMM_ARGS                                                                          \
    int8 dims, float2 scal, __global const A_S *A, __global const B_S *B, __global C_S *C, \
        ulong16 offs GEMM_BIAS_ARG
#define GEMM_UNPACK                                                                              \
    const int M = dims.s0, N = dims.s1, K = dims.s2, ta = dims.s3, nblocks = dims.s4,            \
              batch = dims.s5;                                                                   \
    const float alpha = scal.s0;                                                                 \
    float beta = scal.s1;                                                                        \
    const ulong aoff = offs.s0, lda = offs.s1, astride = offs.s2, boff = offs.s3, ldb = offs.s4, \
                bstride = offs.s5, coff = offs.s6, ldc = offs.s7, cstride = offs.s8,             \
                bias_off = offs.s9, bias_st = offs.sa;                                           \
    (void)ta, (void)bias_off, (void)bias_st;

#define KCAT_(a, b) a##b
#define KCAT(a, b) KCAT_(a, b)

/* Operand dtypes (src/ops/gemm.c's half path): A_DT, B_DT, C_DT and BI_DT (the bias) are
 * 0 f32, 1 f16 or 4 bf16 (kiln_dtype values). Halves are stored as ushort and read through
 * vload_half (f16) or a shift (bf16) into floats, so every product and sum stays f32; C's
 * halves are stored rounded to nearest, ties to even (common.cl's kiln_f16_rte and
 * kiln_bf16_rte). All f32 (the default) gives the plain
 * float loads and stores below, so the f32 programs compile as before. */
#ifndef A_DT
#define A_DT 0
#endif
#ifndef B_DT
#define B_DT 0
#endif
#ifndef C_DT
#define C_DT 0
#endif
#ifndef BI_DT
#define BI_DT 0
#endif
#define GT_0 float
#define GT_1 ushort
#define GT_4 ushort
/* scalar load of element i of p, vector load of the o-th W-vector at p */
#define GLD_0(p, i) ((p)[i])
#define GLD_1(p, i) vload_half((i), (const __global half *)(p))
#define GLD_4(p, i) kiln_bf16_ld((p)[i])
#define GLDV_0(W, o, p) KCAT(vload, W)(o, p)
#define GLDV_1(W, o, p) KCAT(vload_half, W)(o, (const __global half *)(p))
#define GLDV_4(W, o, p) KCAT(as_float, W)(KCAT(convert_uint, W)(KCAT(vload, W)(o, p)) << 16)
#define GST_0(p, i, v) ((p)[i] = (v))
#define GST_1(p, i, v) ((p)[i] = kiln_f16_rte(v))
#define GST_4(p, i, v) ((p)[i] = kiln_bf16_rte(v))
/* relu of the stored value, as kiln_relu on it would store it (a rounded -0 kept) */
#define GSTR_0(p, i, v) ((p)[i] = kiln_relu_f(v))
#define GSTR_1(p, i, v) ((p)[i] = kiln_relu_bits(kiln_f16_rte(v), 0x7C00u))
#define GSTR_4(p, i, v) ((p)[i] = kiln_relu_bits(kiln_bf16_rte(v), 0x7F80u))
#define GSTV_0(W, v, o, p) KCAT(vstore, W)(v, o, p)
/* half vectors: each lane rounded (common.cl's kiln_f16_rte, kiln_bf16_rte) */
#define GSTV_H(W, v, o, p, RTE)                                                            \
    do {                                                                                   \
        float t_[W];                                                                       \
        KCAT(vstore, W)(v, 0, t_);                                                         \
        for (int l_ = 0; l_ < (W); l_++) (p)[(o) * (W) + l_] = RTE(t_[l_]);                \
    } while (0)
#define GSTV_1(W, v, o, p) GSTV_H(W, v, o, p, kiln_f16_rte)
#define GSTV_4(W, v, o, p) GSTV_H(W, v, o, p, kiln_bf16_rte)
#define A_S KCAT(GT_, A_DT)
#define B_S KCAT(GT_, B_DT)
#define C_S KCAT(GT_, C_DT)
#define BI_S KCAT(GT_, BI_DT)
#define A_LD KCAT(GLD_, A_DT)
#define B_LD KCAT(GLD_, B_DT)
#define C_LD KCAT(GLD_, C_DT)
#define BI_LD KCAT(GLD_, BI_DT)
#define A_LDV KCAT(GLDV_, A_DT)
#define B_LDV KCAT(GLDV_, B_DT)
#define C_LDV KCAT(GLDV_, C_DT)
#define C_ST KCAT(GST_, C_DT)
#define C_ST_RELU KCAT(GSTR_, C_DT)
#define C_STV KCAT(GSTV_, C_DT)
#define NT_T KCAT(float, NT_VW)
#define NN_T KCAT(float, NN_VW)
#define NN_STOREV KCAT(vstore, NN_VW)

/* The lanes of v summed as a tree of half-vector adds (a few shuffles and vector adds per
 * output instead of a store and NT_VW - 1 dependent scalar adds): with a short K the sums
 * are a large part of a work-item's time (README.md, "Speed"). A float16's halves are
 * read back from a private copy: Oclgrind 21.10 loses track of which lanes are
 * initialised through .lo/.hi of a 16-lane vector (it reported the sums as uninitialised;
 * LLVM turns the copy back into shuffles). */
static float nt_hsum(NT_T v) {
#if NT_VW == 2
    return v.x + v.y;
#else
#if NT_VW == 16
    float t[16];
    vstore16(v, 0, t);
    float8 h8 = vload8(0, t) + vload8(1, t);
    float4 h4 = h8.lo + h8.hi;
#elif NT_VW == 8
    float4 h4 = v.lo + v.hi;
#else
    float4 h4 = v;
#endif
    float2 h2 = h4.lo + h4.hi;
    return h2.x + h2.y;
#endif
}

/* gemm_nt: row-major C = alpha A B^T + beta C, A [M, K] and B [N, K] both with K
 * contiguous: every output is a dot product of two contiguous rows. This is the product
 * of a linear layer's forward (x W^T) and of a convolution's weight gradient (gy cols^T),
 * for which CLBlast's indirect kernel copies B into a transposed, padded temporary first.
 *
 * Each work-item computes an NT_RM x NT_RN block of C with one vector accumulator per
 * output, reading NT_RM rows of A and NT_RN of B once per NT_VW k: NT_RM + NT_RN vector
 * loads per NT_RM * NT_RN vector multiply-adds. POCL runs a work-group's items one after
 * another. Dim 0 walks down A's row blocks, so that a block of B rows is used for every row
 * of A while it is in cache: when N is large (a weight gradient's 36864 pixels) that ran
 * the product faster than the other order (README.md, "Speed", has the figures). Rows past
 * M or N are clamped to the last one for the loads and never written, so any M, N >= 1
 * works; K's terms past the last whole vector are added one at a time. Dim 1 holds every
 * batch's column blocks (nblocks per batch); batch b's operands start at
 * aoff + b*astride, ... (elements). */
__kernel void gemm_nt(GEMM_ARGS) {
    GEMM_UNPACK
    int i0 = (int)get_global_id(0) * NT_RM;
    int bi = (int)get_global_id(1) / nblocks;
    int j0 = ((int)get_global_id(1) - bi * nblocks) * NT_RN;
    if (i0 >= M || bi >= batch) return;
    /* this batch's operands; rows past M or N clamped to the last */
    const __global A_S *ab = A + aoff + (ulong)bi * astride;
    const __global B_S *bb = B + boff + (ulong)bi * bstride;
    const __global A_S *a[NT_RM];
    const __global B_S *b[NT_RN];
#pragma unroll
    for (int r = 0; r < NT_RM; r++) a[r] = ab + (ulong)min(i0 + r, M - 1) * lda;
#pragma unroll
    for (int c = 0; c < NT_RN; c++) b[c] = bb + (ulong)min(j0 + c, N - 1) * ldb;
    NT_T acc[NT_RM][NT_RN];
#pragma unroll
    for (int r = 0; r < NT_RM; r++)
#pragma unroll
        for (int c = 0; c < NT_RN; c++) acc[r][c] = 0.0f;
    /* k's vector at offset k of every row: NT_RN of B, then A's rows one by one */
#define NT_STEP(k)                                                                         \
    {                                                                                      \
        NT_T y[NT_RN];                                                                     \
        _Pragma("unroll") for (int c = 0; c < NT_RN; c++) y[c] = B_LDV(NT_VW, 0, b[c] + (k)); \
        _Pragma("unroll") for (int r = 0; r < NT_RM; r++) {                                \
            NT_T x = A_LDV(NT_VW, 0, a[r] + (k));                                          \
            _Pragma("unroll") for (int c = 0; c < NT_RN; c++) acc[r][c] = fma(x, y[c], acc[r][c]); \
        }                                                                                  \
    }
    int k = 0;
    for (; k + NT_VW * NT_KU <= K; k += NT_VW * NT_KU) {
#pragma unroll
        for (int u = 0; u < NT_KU; u++) NT_STEP(k + u * NT_VW)
    }
#if NT_KU > 1
    for (; k + NT_VW <= K; k += NT_VW) NT_STEP(k)
#endif
#undef NT_STEP
    float s[NT_RM][NT_RN];
#pragma unroll
    for (int r = 0; r < NT_RM; r++)
#pragma unroll
        for (int c = 0; c < NT_RN; c++) s[r][c] = nt_hsum(acc[r][c]);
    for (; k < K; k++)
#pragma unroll
        for (int r = 0; r < NT_RM; r++)
#pragma unroll
            for (int c = 0; c < NT_RN; c++) s[r][c] = fma(A_LD(a[r], k), B_LD(b[c], k), s[r][c]);
    __global C_S *crow = C + coff + (ulong)bi * cstride + (ulong)i0 * ldc + j0;
    int rows = min(NT_RM, M - i0), cols = min(NT_RN, N - j0);
#if NT_BIAS
    /* the unfused sum, rounded as kiln_add rounds it: the product in a statement of its
     * own, so that it is not contracted into an fma with the bias */
    for (int c = 0; c < cols; c++) {
        float bc = BI_LD(bias, bias_off + (ulong)(j0 + c) * bias_st);
        for (int r = 0; r < rows; r++) {
            float y = alpha * s[r][c];
            float o = y + bc;
#if NT_BIAS == 2
            C_ST_RELU(crow, (ulong)r * ldc + c, o);
#else
            C_ST(crow, (ulong)r * ldc + c, o);
#endif
        }
    }
#else
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            __global C_S *p = crow + (ulong)r * ldc + c;
            /* beta == 0 never reads C: stale pool memory, even NaN, cannot leak in */
            C_ST(p, 0, beta == 0.0f ? alpha * s[r][c] : fma(beta, C_LD(p, 0), alpha * s[r][c]));
        }
#endif
}

/* gemm_nn: row-major C = alpha op(A) B + beta C, B [K, N] row-major and op(A) [M, K]
 * either A [M, K] (ta == 0) or the transpose of A [K, M] (ta == 1): a convolution's forward
 * (w cols) and input gradient (w^T gy), a linear layer's input and weight gradients. Built
 * with NN_TC 1 it stores the result transposed (C[j, i] for output (i, j)): the host
 * computes A^T B^T, whose transpose is B A, as gemm_nn on (B, A) so built, so that both K
 * operands are read as gemm_nn reads them (src/ops/gemm.c).
 *
 * Each work-item computes an NN_RM x NN_NV*NN_VW block of C as outer products: per k,
 * NN_NV vector loads of B's row k, NN_RM scalars of A broadcast, NN_RM * NN_NV vector
 * multiply-adds into as many accumulators. With the broadcasts folded into the FMAs that
 * is NN_NV vector loads per NN_RM * NN_NV multiply-adds: on the reference CNN's second
 * layer it ran the forward and input-gradient products faster than CLBlast's tuned
 * indirect kernel, which copies and pads its operands first (README.md, "Speed", has the
 * figures). Dim 0 walks A's row blocks, dim 1 every batch's column blocks (nblocks per
 * batch); a work-group is neighbouring column blocks of one row block, which share A's
 * rows. Rows past M are clamped for the loads and never written. The last block of a row,
 * when it reaches past N, computes its vectors shifted back to end at N (overlapping), and
 * a row narrower than one vector one column at a time. */
__kernel void gemm_nn(GEMM_ARGS) {
    GEMM_UNPACK
#if !NN_BETA
    beta = 0.0f; /* so every test of it below folds away */
#endif
    int i0 = (int)get_global_id(0) * NN_RM;
    int bi = (int)get_global_id(1) / nblocks;
    int j0 = ((int)get_global_id(1) - bi * nblocks) * (NN_NV * NN_VW);
    if (i0 >= M || bi >= batch) return;
    /* The last row block, when it has fewer than NN_RM rows and M allows, moves back to end
     * at row M - 1 and stores only its rows from r0 on: the rows before belong to the
     * block before, which computes the same sums in the same order and stores them itself.
     * Then it runs the whole-block loops below instead of the clamped one (with the avx2
     * set's 6-row blocks every M a power of two ends in such a block). */
    int r0 = 0;
    if (M - i0 < NN_RM && M >= NN_RM) {
        r0 = NN_RM - (M - i0);
        i0 = M - NN_RM;
    }
    const __global A_S *ab = A + aoff + (ulong)bi * astride;
    const __global B_S *bp = B + boff + (ulong)bi * bstride + j0;
    /* op(A)[i0 + r, k] = ap[ro[r] + k * ks], rows past M clamped to the last */
    ulong rs = ta ? 1 : lda, ks = ta ? lda : 1;
    int rmax = M - 1 - i0;
    ulong ro[NN_RM];
#pragma unroll
    for (int r = 0; r < NN_RM; r++) ro[r] = (ulong)min(r, rmax) * rs;
    const __global A_S *ap = ab + (ulong)i0 * rs;
    int rows = min(NN_RM, M - i0);
    /* output (i0 + r, j0 + c) at cp[r * crs + c * ccs] */
    ulong crs = NN_TC ? 1 : ldc, ccs = NN_TC ? ldc : 1;
    __global C_S *cp = C + coff + (ulong)bi * cstride + (ulong)i0 * crs + (ulong)j0 * ccs;
    int cols = N - j0;
    /* k's terms: NV vectors of B's row k times each row's broadcast value of op(A), row r's
     * at ap[AO] with AO an expression in r, and ap advancing by KS per k (NV is a literal,
     * so each loop below is compiled for its own number of vectors) */
#define NN_STEP(NV, OFF, AO, KS)                                                           \
    {                                                                                      \
        NN_T x[NV];                                                                        \
        _Pragma("unroll") for (int v = 0; v < NV; v++) x[v] = B_LDV(NN_VW, 0, bk + (OFF)); \
        _Pragma("unroll") for (int r = 0; r < NN_RM; r++) {                                \
            NN_T av = (NN_T)A_LD(ap, AO);                                                  \
            _Pragma("unroll") for (int v = 0; v < NV; v++) acc[r][v] = fma(av, x[v], acc[r][v]); \
        }                                                                                  \
        bk += ldb;                                                                         \
        ap += (KS);                                                                        \
    }
#define NN_LOOP_A(NV, OFF, AO, KS)                                                         \
    {                                                                                      \
        int k = 0;                                                                         \
        for (; k + NN_KU <= K; k += NN_KU) {                                               \
            _Pragma("unroll") for (int u = 0; u < NN_KU; u++) NN_STEP(NV, OFF, AO, KS)     \
        }                                                                                  \
        for (; k < K; k++) NN_STEP(NV, OFF, AO, KS)                                        \
    }
    /* rows past M clamped (ro) */
#define NN_LOOP(NV, OFF) NN_LOOP_A(NV, OFF, ro[r], ks)
    if (cols >= NN_VW) {
        /* a whole block, or a row's last block of NN_VW columns or more but fewer than the
         * block's: its NN_NV vectors end at its last column (so[v] = min(v NN_VW, cols -
         * NN_VW)), overlapping where it has fewer. A column in two vectors gets the same
         * products summed in the same order in both, so the same bits; the stores below
         * read C before they write it and the transposed store writes each column once. (A
         * block's columns past its first vector had been summed one at a time, with scalar
         * loads: with N = 490, 10 columns in 490 took a fifth of the time.) */
        bool wide = cols >= NN_NV * NN_VW;
        int so[NN_NV];
#pragma unroll
        for (int v = 0; v < NN_NV; v++) so[v] = wide ? v * NN_VW : min(v * NN_VW, cols - NN_VW);
        NN_T acc[NN_RM][NN_NV];
#pragma unroll
        for (int r = 0; r < NN_RM; r++)
#pragma unroll
            for (int v = 0; v < NN_NV; v++) acc[r][v] = 0.0f;
        const __global B_S *bk = bp;
        /* (vector v at column v NN_VW of a whole block: a constant offset.) A whole block
         * of rows needs no clamping, and with ta known its NN_RM values of op(A) per k lie
         * at constant offsets from one pointer (A^T) or at multiples of lda: one register
         * to advance instead of NN_RM row pointers, which the runtime ro[] and ks left for
         * LLVM to spill and reload every k. */
        if (wide && rows == NN_RM && ta) {
            NN_LOOP_A(NN_NV, v * NN_VW, r, lda)
        } else if (wide && rows == NN_RM) {
            NN_LOOP_A(NN_NV, v * NN_VW, (ulong)r * lda, 1)
        } else if (wide) {
            NN_LOOP(NN_NV, v * NN_VW)
        } else {
            NN_LOOP(NN_NV, so[v])
        }
        /* beta == 0 never reads C: stale pool memory, even NaN, cannot leak in */
#if NT_BIAS && !NN_TC
        {
            /* bias[j] added to column j (only with beta 0 and the plain store): the unfused
             * sum, the product in a statement of its own as in gemm_nt */
            NN_T bv[NN_NV];
#pragma unroll
            for (int v = 0; v < NN_NV; v++) {
                float bt[NN_VW];
                for (int l = 0; l < NN_VW; l++) bt[l] = BI_LD(bias, bias_off + (ulong)(j0 + so[v] + l) * bias_st);
                bv[v] = KCAT(vload, NN_VW)(0, bt);
            }
#pragma unroll
            for (int r = 0; r < NN_RM; r++)
                if (r >= r0 && r < rows) {
#pragma unroll
                    for (int v = 0; v < NN_NV; v++) {
                        NN_T y = alpha * acc[r][v];
                        NN_T o = y + bv[v];
                        __global C_S *p = cp + (ulong)r * ldc + so[v];
#if C_DT == 0
#if NT_BIAS == 2
                        o = select(o, (NN_T)(0.0f), o < (NN_T)(0.0f)); /* kiln_relu_f's lanes */
#endif
                        C_STV(NN_VW, o, 0, p);
#else
                        float t[NN_VW];
                        NN_STOREV(o, 0, t);
                        for (int l = 0; l < NN_VW; l++) {
#if NT_BIAS == 2
                            C_ST_RELU(p, l, t[l]);
#else
                            C_ST(p, l, t[l]);
#endif
                        }
#endif
                    }
                }
        }
#elif !NN_TC
        {
#pragma unroll
            for (int r = 0; r < NN_RM; r++)
                if (r >= r0 && r < rows) {
                    NN_T y[NN_NV];
#pragma unroll
                    for (int v = 0; v < NN_NV; v++) {
                        y[v] = alpha * acc[r][v];
                        if (beta != 0.0f) y[v] = fma((NN_T)beta, C_LDV(NN_VW, 0, cp + (ulong)r * ldc + so[v]), y[v]);
                    }
#pragma unroll
                    for (int v = 0; v < NN_NV; v++) C_STV(NN_VW, y[v], 0, cp + (ulong)r * ldc + so[v]);
                }
        }
#else
        {
            /* transposed: the block's column j0 + c is C's row, where its rows' values lie
             * side by side. Each of those C rows is written once, with all its values:
             * rows ldc apart can share a cache set, and revisiting them row by row of the
             * block missed the cache every time (1024^3 ran 50% longer). A shifted vector
             * writes only the columns the one before it did not. */
#pragma unroll
            for (int v = 0; v < NN_NV; v++) {
                float t[NN_RM][NN_VW];
#pragma unroll
                for (int r = 0; r < NN_RM; r++) NN_STOREV(alpha * acc[r][v], 0, t[r]);
                int l0 = v == 0 ? 0 : max(0, so[v - 1] + NN_VW - so[v]);
                /* a whole block without beta: constant bounds, so that LLVM keeps t in
                 * registers and writes each C row's NN_RM values as one vector (the
                 * runtime-bounded loop below stores them one float at a time) */
                if (r0 == 0 && rows == NN_RM && beta == 0.0f) {
#pragma unroll
                    for (int l = 0; l < NN_VW; l++)
                        if (l >= l0) {
                            __global C_S *e = cp + (ulong)(so[v] + l) * ldc;
#pragma unroll
                            for (int r = 0; r < NN_RM; r++) C_ST(e, r, t[r][l]);
                        }
                    continue;
                }
                for (int l = l0; l < NN_VW; l++) {
                    __global C_S *e = cp + (ulong)(so[v] + l) * ldc;
                    for (int r = r0; r < rows; r++)
                        C_ST(e, r, beta == 0.0f ? t[r][l] : fma(beta, C_LD(e, r), t[r][l]));
                }
            }
        }
#endif
        return;
    }
    /* the store at e of one output of column j0 + c, y = alpha times its sum: plus the bias
     * (and ReLU of that), or plus beta C; the product y a statement of its own, rounded
     * before the sum as the vector stores round it */
#if NT_BIAS
#define NN_ST1(e, c, y)                                                                                   \
    {                                                                                                    \
        float y_ = (y);                                                                                  \
        float o_ = y_ + BI_LD(bias, bias_off + (ulong)(j0 + (c)) * bias_st);                             \
        NN_ST1_OUT(e, o_);                                                                               \
    }
#if NT_BIAS == 2
#define NN_ST1_OUT(e, o) C_ST_RELU(e, 0, o)
#else
#define NN_ST1_OUT(e, o) C_ST(e, 0, o)
#endif
#else
#define NN_ST1(e, c, y)                                                                                   \
    {                                                                                                    \
        float y_ = (y);                                                                                  \
        C_ST(e, 0, beta == 0.0f ? y_ : fma(beta, C_LD(e, 0), y_));                                       \
    }
#endif
    if (N >= NN_VW) {
        /* a row's last block of fewer than NN_VW columns: one vector ending at the row's
         * last column (its first lanes read the block before, which computes and stores
         * them itself), and the stores take its last `cols` lanes. Each column's sum runs
         * over k in the order of the loop below, so the same bits as that loop's scalars
         * (which had summed these columns one at a time: README.md, "Speed"). */
        NN_T acc[NN_RM][1];
#pragma unroll
        for (int r = 0; r < NN_RM; r++) acc[r][0] = 0.0f;
        const __global B_S *bk = bp;
        NN_LOOP(1, cols - NN_VW)
        int l0 = NN_VW - cols;
        for (int r = r0; r < rows; r++) {
            float t[NN_VW];
            NN_STOREV(alpha * acc[r][0], 0, t);
            for (int c = 0; c < cols; c++) NN_ST1(cp + (ulong)r * crs + (ulong)c * ccs, c, t[l0 + c]);
        }
        return;
    }
#undef NN_STEP
#undef NN_LOOP_A
#undef NN_LOOP
    /* a row narrower than a vector (N < NN_VW): one column at a time */
    for (int c = 0; c < cols; c++) {
        float s[NN_RM];
#pragma unroll
        for (int r = 0; r < NN_RM; r++) s[r] = 0.0f;
        for (int k = 0; k < K; k++) {
            float b = B_LD(bp, (ulong)k * ldb + c);
#pragma unroll
            for (int r = 0; r < NN_RM; r++) s[r] = fma(A_LD(ap, ro[r] + (ulong)k * ks), b, s[r]);
        }
        for (int r = r0; r < rows; r++) NN_ST1(cp + (ulong)r * crs + (ulong)c * ccs, c, alpha * s[r]);
    }
#undef NN_ST1
#undef NN_ST1_OUT
}

/* gemm_ger: C = alpha op(A) op(B) + beta C with K = 1, f32: an outer product, C[i, j] =
 * alpha (a_i b_j) (+ beta C[i, j]), a_i at A[aoff + i * as], b_j at B[boff + j] (contiguous;
 * src/ops/gemm.c's ger_takes). Nothing to sum: the time is C's stores, which gemm_nn's
 * blocks issued far slower than the memory takes them (README.md, "Speed"). Each work-item
 * writes GER_RM rows of one NN_VW-wide vector column, and a work-group neighbouring
 * columns: GER_RM rows written side by side keep as many store streams going. With al
 * (every vector's first element a multiple of NN_VW floats from the buffer's start: C's
 * offset, ldc and cstride multiples of NN_VW, and buffers are aligned to at least 128 bytes)
 * a vector is stored through a pointer to the vector type, which LLVM emits as one store
 * where vstore16 became three. The product rounds as gemm_nn's K = 1 sum: a_i b_j, then
 * times alpha, then fma(beta, C, .). Columns past the last whole vector are stored one at
 * a time; rows past M are never written. Dim 0 holds every batch's row blocks (mblocks
 * per batch), dim 1 the column blocks. */
#define GER_RM 16
__kernel void gemm_ger(int8 dims, float2 scal, __global const float *A, __global const float *B, __global float *C,
                       ulong16 offs) {
    /* dims (M, N, 1, al, mblocks, batch), offs (aoff, as, astride, boff, 1, bstride, coff,
     * ldc, cstride) */
    const int M = dims.s0, N = dims.s1, al = dims.s3, mblocks = dims.s4, batch = dims.s5;
    const float alpha = scal.s0, beta = scal.s1;
    const ulong aoff = offs.s0, as = offs.s1, astride = offs.s2, boff = offs.s3, bstride = offs.s5, coff = offs.s6,
                ldc = offs.s7, cstride = offs.s8;
    /* batch and row block in dim 0, the same for a work-group's items (groups are 1 x LY):
     * its division is done once per group, where in dim 1 (as in gemm_nn) each work-item
     * of a few stores would divide */
    int bi = (int)get_global_id(0) / mblocks;
    int i0 = ((int)get_global_id(0) - bi * mblocks) * GER_RM, j0 = (int)get_global_id(1) * NN_VW;
    if (bi >= batch || j0 >= N) return;
    const __global float *ap = A + aoff + (ulong)bi * astride + (ulong)i0 * as;
    const __global float *bp = B + boff + (ulong)bi * bstride + j0;
    __global float *cp = C + coff + (ulong)bi * cstride + (ulong)i0 * ldc + j0;
    int rows = min(GER_RM, M - i0), cols = N - j0;
    if (cols >= NN_VW) {
        NN_T y = KCAT(vload, NN_VW)(0, bp);
        if (rows == GER_RM && beta == 0.0f) {
            /* a pointer stepped row by row, not unrolled: unrolled, LLVM kept each row's
             * offset on the stack across the work-group's items and reloaded it per store */
            __global float *e = cp;
            if (al) {
                for (int r = 0; r < GER_RM; r++, ap += as, e += ldc) {
                    NN_T p = (NN_T)ap[0] * y;
                    *(__global NN_T *)e = alpha * p;
                }
            } else {
                for (int r = 0; r < GER_RM; r++, ap += as, e += ldc) {
                    NN_T p = (NN_T)ap[0] * y;
                    NN_STOREV(alpha * p, 0, e);
                }
            }
            return;
        }
        for (int r = 0; r < rows; r++) {
            NN_T p = (NN_T)ap[(ulong)r * as] * y;
            NN_T o = alpha * p;
            __global float *e = cp + (ulong)r * ldc;
            if (beta != 0.0f) o = fma((NN_T)beta, KCAT(vload, NN_VW)(0, e), o);
            NN_STOREV(o, 0, e);
        }
        return;
    }
    for (int r = 0; r < rows; r++) {
        float a = ap[(ulong)r * as];
        __global float *e = cp + (ulong)r * ldc;
        for (int c = 0; c < cols; c++) {
            float p = a * bp[c];
            float o = alpha * p;
            e[c] = beta == 0.0f ? o : fma(beta, e[c], o);
        }
    }
}

/* gemm_copy: dst = src for `batch` matrices of rows x cols, src at soff + b * sstride with
 * leading dim sld, dst from doff with leading dim dld (>= cols; batch b at
 * doff + b * rows * dld). src/ops/gemm.c copies a K operand of gemm_nn whose rows lie a
 * multiple of 4096 bytes apart into such a buffer with a padded leading dim: then the rows
 * of a K panel no longer fall into the same cache sets. One work-item per row. */
__kernel void gemm_copy(int rows, int cols, int batch, __global const float *src, ulong soff, ulong sld,
                        ulong sstride, __global float *dst, ulong doff, ulong dld) {
    int g = (int)get_global_id(0);
    if (g >= rows * batch) return;
    int bi = g / rows, r = g - bi * rows;
    const __global float *s = src + soff + (ulong)bi * sstride + (ulong)r * sld;
    __global float *d = dst + doff + ((ulong)bi * (ulong)rows + (ulong)r) * dld;
    int c = 0;
    for (; c + NN_VW <= cols; c += NN_VW) NN_STOREV(KCAT(vload, NN_VW)(0, s + c), 0, d + c);
    for (; c < cols; c++) d[c] = s[c];
}

/* gemm_transpose: dst = src^T for `batch` matrices: src rows x cols at soff + b * sstride with
 * leading dim sld, dst cols x rows from doff with leading dim dld (>= rows; batch b at
 * doff + b * cols * dld). src/ops/gemm.c turns a large A B^T with a short K into A (B^T)
 * through it: gemm_nn ran such products in two thirds of gemm_nt's time, and the copy of B
 * is small beside them. One work-item per row of dst (a column of src); neighbouring
 * work-items read the same cache lines of src one after another. */
__kernel void gemm_transpose(int rows, int cols, int batch, __global const float *src, ulong soff, ulong sld,
                             ulong sstride, __global float *dst, ulong doff, ulong dld) {
    int g = (int)get_global_id(0);
    if (g >= cols * batch) return;
    int bi = g / cols, c = g - bi * cols;
    const __global float *s = src + soff + (ulong)bi * sstride + c;
    __global float *d = dst + doff + ((ulong)bi * (ulong)cols + (ulong)c) * dld;
    for (int r = 0; r < rows; r++) d[r] = s[(ulong)r * sld];
}

/* gemv_rows and gemv_cols: the products with one output row or column (M = 1 or N = 1:
 * the bias gradient of a recurrent layer, 1024 x 1 x 2048 A^T B; a linear layer to one
 * output; a batch of one), which gemm_nn and gemm_nt would compute in blocks of 32 or 4
 * columns of which one is used. src/ops/gemm.c writes each as
 *   y[i * ys] = alpha sum_k P(i, k) x[k * xs] + beta y[i * ys],  i < L,
 * batch b's operands at poff + b * pstride, ... (elements). With NT_BIAS (only from
 * kiln__gemm_run_bias, beta 0) y[i] gets bias[bias_off + i * bias_is] added, and with
 * NT_BIAS 2 ReLU, as gemm_nt stores them. f32 operands only: a product with half operands
 * stays with gemm_nn and gemm_nt, whose loads read halves.
 *
 * gemv_rows: P(i, k) = P[i * pld + k], each row contiguous (A with N = 1, B^T with M = 1).
 * A work-item computes GV_R outputs as gemm_nt computes its block: NT_VW-wide vector
 * accumulators along k, the lanes summed as a tree, the K tail one term at a time; rows
 * past L clamped for the loads and never written. */
#define GV_R 4
/* gemv_rows and gemv_cols: dims (L, K, 1, wide, 1, batch), offs (poff, pld, pstride, xoff,
 * xs, xstride, yoff, ys, ystride, bias_off, bias_is) */
#define GV_ARGS                                                                                  \
    int8 dims, float2 scal, __global const float *P, __global const float *X, __global float *Y, \
        ulong16 offs GEMM_BIAS_ARG
#define GV_UNPACK                                                                                       \
    const int L = dims.s0, K = dims.s1, wide = dims.s3, batch = dims.s5;                                \
    const float alpha = scal.s0, beta = scal.s1;                                                        \
    const ulong poff = offs.s0, pld = offs.s1, pstride = offs.s2, xoff = offs.s3, xs = offs.s4,         \
                xstride = offs.s5, yoff = offs.s6, ys = offs.s7, ystride = offs.s8, bias_off = offs.s9, \
                bias_is = offs.sa;                                                                      \
    (void)wide, (void)bias_off, (void)bias_is;

/* stores alpha s (+ beta y, or + the bias and ReLU) at y[i] */
static void gv_store(__global float *y, int i, float alpha, float beta, float s
#if NT_BIAS
                     , __global const BI_S *bias, ulong bias_off, ulong bias_is
#endif
) {
#if NT_BIAS
    /* the unfused sum: the product in a statement of its own (see gemm_nt) */
    float p = alpha * s;
    float o = p + BI_LD(bias, bias_off + (ulong)i * bias_is);
#if NT_BIAS == 2
    o = o < 0.0f ? 0.0f : o;
#endif
    y[0] = o;
#else
    /* beta == 0 never reads y: stale pool memory, even NaN, cannot leak in */
    y[0] = beta == 0.0f ? alpha * s : fma(beta, y[0], alpha * s);
#endif
}
#if NT_BIAS
#define GV_BIAS_PASS , bias, bias_off, bias_is
#else
#define GV_BIAS_PASS
#endif

__kernel void gemv_rows(GV_ARGS) {
    GV_UNPACK
    int i0 = (int)get_global_id(0) * GV_R, bi = (int)get_global_id(1);
    if (i0 >= L || bi >= batch) return;
    const __global float *pb = P + poff + (ulong)bi * pstride, *x = X + xoff + (ulong)bi * xstride;
    const __global float *p[GV_R];
#pragma unroll
    for (int r = 0; r < GV_R; r++) p[r] = pb + (ulong)min(i0 + r, L - 1) * pld;
    NT_T acc[GV_R];
#pragma unroll
    for (int r = 0; r < GV_R; r++) acc[r] = 0.0f;
    int k = 0;
    if (xs == 1) {
        for (; k + NT_VW <= K; k += NT_VW) {
            NT_T xv = KCAT(vload, NT_VW)(0, x + k);
#pragma unroll
            for (int r = 0; r < GV_R; r++) acc[r] = fma(KCAT(vload, NT_VW)(0, p[r] + k), xv, acc[r]);
        }
    } else {
        for (; k + NT_VW <= K; k += NT_VW) {
            float t[NT_VW];
#pragma unroll
            for (int l = 0; l < NT_VW; l++) t[l] = x[(ulong)(k + l) * xs];
            NT_T xv = KCAT(vload, NT_VW)(0, t);
#pragma unroll
            for (int r = 0; r < GV_R; r++) acc[r] = fma(KCAT(vload, NT_VW)(0, p[r] + k), xv, acc[r]);
        }
    }
    float s[GV_R];
#pragma unroll
    for (int r = 0; r < GV_R; r++) s[r] = nt_hsum(acc[r]);
    for (; k < K; k++) {
        float xv = x[(ulong)k * xs];
#pragma unroll
        for (int r = 0; r < GV_R; r++) s[r] = fma(p[r][k], xv, s[r]);
    }
    __global float *yb = Y + yoff + (ulong)bi * ystride;
    int rows = min(GV_R, L - i0);
    for (int r = 0; r < rows; r++) gv_store(yb + (ulong)(i0 + r) * ys, i0 + r, alpha, beta, s[r] GV_BIAS_PASS);
}

/* gemv_cols: P(i, k) = P[k * pld + i], each k's values contiguous along i (A^T with
 * N = 1, B with M = 1). A work-item computes a strip of neighbouring outputs, reading for
 * every k the strip's stretch of P's row k: with `wide` GV_CV vectors of NN_VW floats (rows
 * a page apart, as the LSTM's 1024 x 1 x 2048 bias gradient has, then give the cache and
 * the prefetcher a whole run of lines per page visited instead of one), else one vector in
 * GV_KU accumulators for GV_KU neighbouring k, added in a fixed order at the end, so that
 * the multiply-adds do not wait on each other (a short L leaves a work-item per vector).
 * Outputs past the last whole vector are summed one at a time, in the narrow form's
 * order. */
#define GV_CV 8
#define GV_KU 4
__kernel void gemv_cols(GV_ARGS) {
    GV_UNPACK
    int w = wide ? GV_CV * NN_VW : NN_VW;
    int i0 = (int)get_global_id(0) * w, bi = (int)get_global_id(1);
    if (i0 >= L || bi >= batch) return;
    const __global float *p = P + poff + (ulong)bi * pstride + i0, *x = X + xoff + (ulong)bi * xstride;
    __global float *yb = Y + yoff + (ulong)bi * ystride;
    if (wide && i0 + w <= L) {
        NN_T acc[GV_CV];
#pragma unroll
        for (int v = 0; v < GV_CV; v++) acc[v] = 0.0f;
        for (int k = 0; k < K; k++) {
            NN_T xv = (NN_T)x[(ulong)k * xs];
            const __global float *pk = p + (ulong)k * pld;
#pragma unroll
            for (int v = 0; v < GV_CV; v++) acc[v] = fma(KCAT(vload, NN_VW)(v, pk), xv, acc[v]);
        }
        for (int v = 0; v < GV_CV; v++) {
            float t[NN_VW];
            NN_STOREV(acc[v], 0, t);
            for (int l = 0; l < NN_VW; l++)
                gv_store(yb + (ulong)(i0 + v * NN_VW + l) * ys, i0 + v * NN_VW + l, alpha, beta, t[l] GV_BIAS_PASS);
        }
        return;
    }
    /* narrow, or a wide strip past L: a vector at a time, then single outputs */
    int end = min(i0 + w, L), i = i0;
    for (; i + NN_VW <= end; i += NN_VW) {
        const __global float *pv = p + (i - i0);
        NN_T acc[GV_KU];
#pragma unroll
        for (int u = 0; u < GV_KU; u++) acc[u] = 0.0f;
        int k = 0;
        for (; k + GV_KU <= K; k += GV_KU)
#pragma unroll
            for (int u = 0; u < GV_KU; u++)
                acc[u] = fma(KCAT(vload, NN_VW)(0, pv + (ulong)(k + u) * pld), (NN_T)x[(ulong)(k + u) * xs], acc[u]);
        for (; k < K; k++) acc[0] = fma(KCAT(vload, NN_VW)(0, pv + (ulong)k * pld), (NN_T)x[(ulong)k * xs], acc[0]);
        float t[NN_VW];
        NN_STOREV((acc[0] + acc[1]) + (acc[2] + acc[3]), 0, t);
        for (int l = 0; l < NN_VW; l++) gv_store(yb + (ulong)(i + l) * ys, i + l, alpha, beta, t[l] GV_BIAS_PASS);
    }
    for (; i < end; i++) {
        const __global float *pv = p + (i - i0);
        float a[GV_KU] = {0.0f, 0.0f, 0.0f, 0.0f};
        int k = 0;
        for (; k + GV_KU <= K; k += GV_KU)
#pragma unroll
            for (int u = 0; u < GV_KU; u++) a[u] = fma(pv[(ulong)(k + u) * pld], x[(ulong)(k + u) * xs], a[u]);
        for (; k < K; k++) a[0] = fma(pv[(ulong)k * pld], x[(ulong)k * xs], a[0]);
        gv_store(yb + (ulong)i * ys, i, alpha, beta, (a[0] + a[1]) + (a[2] + a[3]) GV_BIAS_PASS);
    }
}
