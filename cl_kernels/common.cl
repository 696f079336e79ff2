/* cl_kernels/common.cl - types and index helpers put in front of every kiln program, after
 * cl_kernels/kiln_shared.h (the structs the host shares: kiln_geom, ...). */

#define KILN_MAX_DIMS KILN_SHARED_DIMS

/* Offset of row-major linear index i of the output in input j. */
inline int kiln_offset(const kiln_geom *g, int j, int i) {
    int off = 0;
    for (int d = g->ndim - 1; d >= 0; d--) {
        int n = g->shape[d];
        off += (i % n) * g->strides[j][d];
        i /= n;
    }
    return off;
}

/* Records bad index `value` at flat position `pos` of launch `site` in the context's
 * index-error buffer E (src/device/deverr.c): the first one recorded keeps its value and
 * position (claimed with a compare-and-swap; a claimed but unfilled record reads -1 and is
 * filled before the kernel ends), every one is counted. The caller then skips the index. */
inline void kiln_bad_index(global int *E, int site, int value, int pos) {
    atomic_inc(&E[KILN_ERRBUF_COUNT]);
    if (atomic_cmpxchg(&E[KILN_ERRBUF_FLAG], 0, -1) == 0) {
        E[KILN_ERRBUF_VALUE] = value;
        E[KILN_ERRBUF_POS] = pos;
        atomic_xchg(&E[KILN_ERRBUF_FLAG], site + 1);
    }
}

/* Half-precision storage, in programs built with -DKILN_HALF=<dtype> (1 f16, 4 bf16: the
 * kiln_dtype values): KILN_S is the storage type (ushort: 16-bit patterns), KILN_LD(p, i)
 * loads element i of p as a float and KILN_ST(p, i, v) stores float v there rounded to
 * nearest, ties to even (KILN_ST_RELU(p, i, v): relu of the stored value, as kiln_relu on
 * it would store it). f16 is read with vload_half (core OpenCL 1.2: no cl_khr_fp16
 * needed) and written by kiln_f16_rte below; bf16 both ways by bit operations (NaN stays
 * NaN). Without KILN_HALF they are plain float accesses, so a program's f32 build compiles
 * as it would without them. */
inline float kiln_bf16_ld(ushort h) { return as_float((uint)h << 16); }
inline ushort kiln_bf16_rte(float v) {
    uint u = as_uint(v);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (ushort)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (ushort)(u >> 16);
}
/* f32 to f16 bits, to nearest with ties to even, overflow to inf, NaN to a quiet NaN
 * (F. Giesen's float_to_half_fast3_rtne, without branches so that it vectorises): the
 * bits vstore_half_rte gives, which POCL runs as a library call per element (a half relu
 * of 1.4M elements took 12.4 ms with it, 2.6 ms with this; f32: 1.6 ms). */
inline ushort kiln_f16_rte(float f) {
    uint u = as_uint(f), sign = (u >> 16) & 0x8000u;
    u &= 0x7FFFFFFFu;
    uint big = u > 0x7F800000u ? 0x7E00u : 0x7C00u;
    uint den = as_uint(as_float(u) + 0.5f) - 0x3F000000u; /* below 2^-14: the addition rounds */
    uint nrm = (u + 0xC8000FFFu + ((u >> 13) & 1u)) >> 13; /* rebias by -112, round to even */
    uint o = u >= 0x47800000u ? big : u < 0x38800000u ? den : nrm;
    return (ushort)(o | sign);
}
/* relu as kiln_relu computes it: x < 0 ? 0 : x, -0 and NaN kept */
inline float kiln_relu_f(float v) { return v < 0.0f ? 0.0f : v; }
/* The bits of kiln_relu_f(x) for the half x of bits h whose exponent field is expf: what
 * kiln_relu stores for a half that a store of v rounded to h (KILN_ST_RELU). */
inline ushort kiln_relu_bits(ushort h, uint expf) {
    uint u = h;
    bool neg = (u & 0x8000u) && (u & 0x7FFFu), nan = (u & expf) == expf && (u & 0x7FFFu & ~expf);
    return neg && !nan ? (ushort)0 : h;
}
#if defined(KILN_HALF) && KILN_HALF == 1
#define KILN_S ushort
#define KILN_LD(p, i) vload_half((i), (const global half *)(p))
#define KILN_ST(p, i, v) ((p)[i] = kiln_f16_rte(v))
#define KILN_ST_RELU(p, i, v) ((p)[i] = kiln_relu_bits(kiln_f16_rte(v), 0x7C00u))
#elif defined(KILN_HALF) && KILN_HALF == 4
#define KILN_S ushort
#define KILN_LD(p, i) kiln_bf16_ld((p)[i])
#define KILN_ST(p, i, v) ((p)[i] = kiln_bf16_rte(v))
#define KILN_ST_RELU(p, i, v) ((p)[i] = kiln_relu_bits(kiln_bf16_rte(v), 0x7F80u))
#else
#define KILN_S float
#define KILN_LD(p, i) ((p)[i])
#define KILN_ST(p, i, v) ((p)[i] = (v))
#define KILN_ST_RELU(p, i, v) ((p)[i] = kiln_relu_f(v))
#endif

/*
 * exp(y) for y <= 0 (gelu's erf, the recurrent layers' gates): straight-line code that
 * vectorises, where POCL's library exp is a scalar call that keeps a work-group's loop
 * from vectorising. Cephes' expf: y = n ln2
 * + r with |r| <= ln2/2 (ln2 in two parts, n by the 1.5 * 2^23 shifter), exp(r) by a
 * degree-7 polynomial, 2^n put into the exponent bits; relative error at most 8.3e-8
 * (1.4 u, u = 2^-24) over [-87.3, 0], measured against double exp (OpenCL's exp may be off
 * by 3 ulp). Below -87.33 (where exp leaves the normal floats) 0, exactly 0 at -inf; NaN
 * stays NaN.
 */
#define KILN_EXP_NEG(T, IT, TO_INT, PICK)                                                      \
    inline __attribute__((always_inline, overloadable)) T kiln_exp_neg(T y) {                  \
        T n = (fmax(y * 1.44269504088896341f, (T)(-127.0f)) + 12582912.0f) - 12582912.0f;      \
        IT k = TO_INT(IT, n); /* NaN: any k, PICK keeps y */                                   \
        T r = fma(n, (T)(-0.693359375f), y);                                                   \
        r = fma(n, (T)(2.12194440e-4f), r);                                                    \
        T p = (T)(1.9875691500e-4f);                                                           \
        p = fma(p, r, (T)(1.3981999507e-3f));                                                  \
        p = fma(p, r, (T)(8.3334519073e-3f));                                                  \
        p = fma(p, r, (T)(4.1665795894e-2f));                                                  \
        p = fma(p, r, (T)(1.6666665459e-1f));                                                  \
        p = fma(p, r, (T)(5.0000001201e-1f));                                                  \
        p = fma(p, r * r, r) + 1.0f;                                                           \
        T e = p * as_##T((k + 127) << 23);                                                     \
        return PICK(T, y, e);                                                                  \
    }
/* float: a cast and conditionals, vectors: convert_intN and select, lane by lane the same
 * bits (the recurrent layers' vectors of hidden units). (With convert_int and select for
 * float too, gelu's backward no longer vectorised on POCL.) */
#define KILN_EXP_NEG_CAST(IT, n) ((IT)(n))
#define KILN_EXP_NEG_CONVERT(IT, n) convert_##IT(n)
#define KILN_EXP_NEG_COND(T, y, e) (isnan(y) ? (y) : (y) < -87.33654f ? 0.0f : (e))
#define KILN_EXP_NEG_SELECT(T, y, e) select(select((e), (T)(0.0f), (y) < -87.33654f), (y), isnan(y))
KILN_EXP_NEG(float, int, KILN_EXP_NEG_CAST, KILN_EXP_NEG_COND)
KILN_EXP_NEG(float2, int2, KILN_EXP_NEG_CONVERT, KILN_EXP_NEG_SELECT)
KILN_EXP_NEG(float4, int4, KILN_EXP_NEG_CONVERT, KILN_EXP_NEG_SELECT)
KILN_EXP_NEG(float8, int8, KILN_EXP_NEG_CONVERT, KILN_EXP_NEG_SELECT)
/* float16 only in the programs whose vectors are 16 floats (activation.cl's ACT_VW,
 * rnn.cl's RNN_VW): built for a target without 16-float registers (haswell code), clang
 * warns of every float16 function that it changes the ABI, and POCL prints the count of
 * those warnings on the application's stderr at each build. */
#if (defined(ACT_VW) && ACT_VW == 16) || (defined(RNN_VW) && RNN_VW == 16)
KILN_EXP_NEG(float16, int16, KILN_EXP_NEG_CONVERT, KILN_EXP_NEG_SELECT)
#endif

/*
 * Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3",
 * SC'11; Random123's philox4x32_R(10, ctr, key)), the context's stream (random.cl): stream
 * position p is the encryption of the 128-bit counter (p as 64 bits, 0, 0) under the key
 * (seed low 32, seed high 32). KILN_PHILOX_X01 sets x0 and x1 to words 0 and 1 of the block
 * at position (ctr_hi:ctr_lo) + i. Macros on plain uints, not functions on a uint4: POCL left
 * such a function as a call, and a call (or uint4 arithmetic) in an element loop keeps the
 * loop from vectorising; the rounds are written out for the same reason (left as a loop,
 * POCL's compiler kept it rolled). One 32 x 32 -> 64-bit product per half (mul_hi vectorises
 * poorly on CPUs). The key is bumped by the Weyl constants after every round (before every
 * round after the first, in Random123's order); the words a caller leaves unused are dead
 * code.
 */
#define KILN_PHILOX_M0 0xD2511F53u
#define KILN_PHILOX_M1 0xCD9E8D57u
#define KILN_PHILOX_W0 0x9E3779B9u
#define KILN_PHILOX_W1 0xBB67AE85u
#define KILN_PHILOX_ROUND()                                                                    \
    do {                                                                                       \
        ulong p0_ = (ulong)KILN_PHILOX_M0 * c0_, p1_ = (ulong)KILN_PHILOX_M1 * c2_;            \
        uint n0_ = (uint)(p1_ >> 32) ^ c1_ ^ k0_, n2_ = (uint)(p0_ >> 32) ^ c3_ ^ k1_;          \
        c1_ = (uint)p1_;                                                                       \
        c3_ = (uint)p0_;                                                                       \
        c0_ = n0_;                                                                             \
        c2_ = n2_;                                                                             \
        k0_ += KILN_PHILOX_W0;                                                                 \
        k1_ += KILN_PHILOX_W1;                                                                 \
    } while (0)
#define KILN_PHILOX_X01(x0, x1, i, key0, key1, ctr_lo, ctr_hi)                                 \
    do {                                                                                       \
        uint c0_ = (ctr_lo) + (i);                                                             \
        uint c1_ = (ctr_hi) + (c0_ < (ctr_lo) ? 1u : 0u), c2_ = 0u, c3_ = 0u;                  \
        uint k0_ = (key0), k1_ = (key1);                                                       \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        KILN_PHILOX_ROUND();                                                                   \
        x0 = c0_;                                                                              \
        x1 = c1_;                                                                              \
    } while (0)
