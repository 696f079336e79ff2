/* cl_kernels/attention.cl - fused scaled-dot-product attention (src/ops/attention.c):
 * a tiled forward with an online softmax (FlashAttention, Dao et al. 2022; the loop order of
 * FlashAttention-2) and its backward, which recomputes the score tiles from q, k and the
 * forward's per-row log-sum-exp instead of keeping the L x S matrix.
 *
 * The kernels are shaped for CPUs, where POCL runs a work-group's items as a loop on one
 * thread: every work-item owns a few rows and a whole loop over the other sequence, with
 * its accumulators in vector registers, and no local memory (on a CPU it is ordinary
 * memory); the one barrier, in the dK/dV kernel, only orders the items' work for the cache.
 * A score tile is computed as outer products, as gemm.cl's gemm_nn computes a block: per
 * feature e, a vector of ATT_KW keys' (or queries') e-th features, read from a transposed
 * copy, times the e-th feature of each of the work-item's rows broadcast. So the tile's
 * scores come out as vectors over keys (queries), and the softmax's exp runs on whole
 * vectors with no horizontal sums; the products with the tile (P V, dS K, ...) are outer
 * products again, a weight broadcast times a row vector of ATT_VW features.
 *
 * The host packs the operands first (sdpa_pack): q (times scale), k, v and dO as rows
 * padded with zeros to whole vectors of ATT_VW features ("rows", [B, n_pad, ATT_EP]) and
 * transposed ("cols", [B, E, n_pad]), with n_pad (Lp, Sp) covering whole tiles and row
 * blocks, so no tile loop has a tail and any strided or broadcast view is read once. Padding keys get
 * score -inf; padding query rows get lse +inf (their weights are 0).
 *
 * Build options (the host sets all of them):
 *   ATT_E, ATT_EV   head dims of query/key and of value
 *   ATT_VW          float vector width of feature rows (rows padded to ATT_EP, ATT_EVP)
 *   ATT_KW          float vector width over keys (forward, dQ) or queries (dK/dV) of a tile
 *   ATT_RM, ATT_QM  query rows per work-item of the forward and of the dQ kernel
 *   ATT_FN, ATT_QN  key vectors (of ATT_KW keys) per tile of the forward and of the dQ kernel
 *   ATT_RN          key rows per work-item of the dK/dV kernel
 *   ATT_DN          query vectors per tile of the dK/dV kernel
 *   ATT_DC          tiles per chunk of the dK/dV kernel's walk over the queries
 *   ATT_MASK        0 none, 1 boolean (uchar, nonzero = takes part), 2 additive float
 *   ATT_CAUSAL      1: query i sees keys j <= i (top-left aligned, as torch)
 *   ATT_DROP        1: dropout on the attention weights
 *
 * The mask is read in place: batch b's at element offset mbase + its batch strides, row
 * and column strides mrs, mcs (0 broadcasts it over L or S). The output, the gradients, lse
 * and D are contiguous ([B, L, dim]; lse and D [B, Lp]). Scores are s = scale q.k + mask
 * (-inf where a boolean mask or the causal rule excludes a key). A row that excludes every
 * key gets output 0, lse +inf and zero gradients.
 *
 * Dropout keeps weight (b, i, j) when the Philox4x32-10 value at stream position
 * counter + (b L + i) S + j (random.cl's generator) is >= p as a uniform [0, 1) float, and
 * scales it by 1 / (1 - p): the same mask kiln_dropout draws for the contiguous [B, L, S]
 * weights at the same stream position, so the composed path reproduces it. The backward
 * draws it again from the same positions; it is never stored. */

#if ATT_MASK == 1
#define ATT_MASK_T uchar
#else
#define ATT_MASK_T float
#endif

#define ATT_PHILOX_M0 0xD2511F53u
#define ATT_PHILOX_M1 0xCD9E8D57u
#define ATT_PHILOX_W0 0x9E3779B9u
#define ATT_PHILOX_W1 0xBB67AE85u

/* Dropout's factor of weight (b, i, j) at stream position pos: dscale or 0. */
inline float att_keep(ulong pos, uint key0, uint key1, uint ctr_lo, uint ctr_hi, float p, float dscale) {
    ulong c = (((ulong)ctr_hi << 32) | (ulong)ctr_lo) + pos;
    uint4 x = (uint4)((uint)c, (uint)(c >> 32), 0u, 0u);
    uint2 k = (uint2)(key0, key1);
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k.x += ATT_PHILOX_W0;
            k.y += ATT_PHILOX_W1;
        }
        uint hi0 = mul_hi(ATT_PHILOX_M0, x.x), lo0 = ATT_PHILOX_M0 * x.x;
        uint hi1 = mul_hi(ATT_PHILOX_M1, x.z), lo1 = ATT_PHILOX_M1 * x.z;
        x = (uint4)(hi1 ^ x.y ^ k.x, lo1, hi0 ^ x.w ^ k.y, lo0);
    }
    return (float)(x.x >> 8) * 0x1.0p-24f >= p ? dscale : 0.0f;
}

#define ATT_CAT_(a, b) a##b
#define ATT_CAT(a, b) ATT_CAT_(a, b)
/* feature rows: ATT_EN (ATT_EVN) vectors of ATT_VW floats, the last zero-padded */
#define EVEC ATT_CAT(float, ATT_VW)
#define EVLOAD ATT_CAT(vload, ATT_VW)
#define EVSTORE ATT_CAT(vstore, ATT_VW)
#define ATT_EN ((ATT_E + ATT_VW - 1) / ATT_VW)
#define ATT_EVN ((ATT_EV + ATT_VW - 1) / ATT_VW)
#define ATT_EP (ATT_EN * ATT_VW)
#define ATT_EVP (ATT_EVN * ATT_VW)
/* tiles: vectors of ATT_KW keys or queries */
#define KVEC ATT_CAT(float, ATT_KW)
#define KIVEC ATT_CAT(int, ATT_KW)
#define KLOAD ATT_CAT(vload, ATT_KW)
#define KSTORE ATT_CAT(vstore, ATT_KW)
#define ATT_FB (ATT_FN * ATT_KW) /* keys per forward tile */
#define ATT_QB (ATT_QN * ATT_KW) /* keys per dQ tile */
#define ATT_DB (ATT_DN * ATT_KW) /* queries per dK/dV tile */
#define ATT_DCQ (ATT_DC * ATT_DB) /* queries per dK/dV chunk */

/* Element offset of batch b of an operand with strides bs over the batch shape bsh (both
 * padded in front to 8 dims: 1s and 0s). */
inline int att_boff(int b, int8 bsh, int8 bs) {
    int sh[8], st[8];
    vstore8(bsh, 0, sh);
    vstore8(bs, 0, st);
    int o = 0;
    for (int d = 7; d >= 0; d--) {
        o += b % sh[d] * st[d];
        b /= sh[d];
    }
    return o;
}

/* The element offsets of batch b for three operands at once (strides s1, s2, s3 over bsh),
 * sharing the divisions; size-1 dims (the padding) cost nothing. Once per work-item: the
 * divisions are not free next to the work of one at short lengths. */
inline int3 att_boff3(int b, int8 bsh, int8 s1, int8 s2, int8 s3) {
    int sh[8], a[8], c[8], e[8];
    vstore8(bsh, 0, sh);
    vstore8(s1, 0, a);
    vstore8(s2, 0, c);
    vstore8(s3, 0, e);
    int3 o = (int3)(0);
    for (int d = 7; d >= 0 && b > 0; d--) {
        if (sh[d] == 1) continue;
        int q = b / sh[d], r = b - q * sh[d];
        o += (int3)(r * a[d], r * c[d], r * e[d]);
        b = q;
    }
    return o;
}

/* Lanes reduced through a private array (Oclgrind 21.10 loses track of which lanes are
 * initialised through .lo/.hi halves; gemm.cl's nt_hsum says more). */
inline float att_kmax(KVEC v) {
    float t[ATT_KW];
    KSTORE(v, 0, t);
    float m = t[0];
    for (int c = 1; c < ATT_KW; c++) m = fmax(m, t[c]);
    return m;
}

inline float att_ksum(KVEC v) {
    float t[ATT_KW];
    KSTORE(v, 0, t);
    float s = t[0];
    for (int c = 1; c < ATT_KW; c++) s += t[c];
    return s;
}

inline KIVEC att_iota(void) {
    int t[ATT_KW];
    for (int c = 0; c < ATT_KW; c++) t[c] = c;
    return ATT_CAT(vload, ATT_KW)(0, t);
}

/* Stores the first n floats of the padded row x (ATT_VW-vectors) at y. */
#define ATT_STORE_ROW(y, x, nv, n, mult)                                                                               \
    {                                                                                                                  \
        float t_[nv * ATT_VW];                                                                                         \
        for (int e_ = 0; e_ < nv; e_++) EVSTORE(x[e_] * (mult), e_, t_);                                               \
        for (int e_ = 0; e_ < n; e_++) (y)[e_] = t_[e_];                                                               \
    }

/* The arguments every attention kernel takes first: the mask and its addressing (bsh: the
 * batch shape padded in front with 1s to 8 dims; mbs: the mask's strides over it, 0 where
 * it broadcasts), the lengths and padded lengths, dropout's parameters, and go: the element
 * offset of every buffer the op allocates (kiln's guard regions in tests; 0 otherwise). */
#define ATT_COMMON                                                                                                     \
    global const ATT_MASK_T *restrict mask, int8 bsh, int8 mbs, int mbase, int mrs, int mcs, int L, int S, int Lp,     \
        int Sp, float p, float dscale, uint key0, uint key1, uint ctr_lo, uint ctr_hi, int go

/* Scores x of query i and keys j .. j + ATT_KW - 1 (the lanes) with the key padding
 * (j >= S), the causal rule and the mask applied. */
inline KVEC att_mask_keys(KVEC x, int i, int j, int L, int S, global const ATT_MASK_T *mask, int mo, int mrs,
                          int mcs) {
    KIVEC jv = (KIVEC)j + att_iota();
    KIVEC out = jv >= (KIVEC)S;
#if ATT_CAUSAL
    out |= jv > (KIVEC)i;
#endif
    x = select(x, (KVEC)(-INFINITY), out);
#if ATT_MASK
    if (i < L) {
        float t[ATT_KW];
        KSTORE(x, 0, t);
        for (int c = 0; c < ATT_KW && j + c < S; c++) {
#if ATT_MASK == 1
            if (!mask[mo + i * mrs + (j + c) * mcs]) t[c] = -INFINITY;
#else
            t[c] += mask[mo + i * mrs + (j + c) * mcs];
#endif
        }
        x = KLOAD(0, t);
    }
#endif
    return x;
}

/* Scores x of key j and queries i .. i + ATT_KW - 1 (the lanes) with the causal rule and
 * the mask applied (padding queries need nothing: their lse is +inf). */
inline KVEC att_mask_queries(KVEC x, int j, int i, int L, int S, global const ATT_MASK_T *mask, int mo, int mrs,
                             int mcs) {
#if ATT_CAUSAL
    x = select(x, (KVEC)(-INFINITY), (KIVEC)j > (KIVEC)i + att_iota());
#endif
#if ATT_MASK
    if (j < S) {
        float t[ATT_KW];
        KSTORE(x, 0, t);
        for (int c = 0; c < ATT_KW && i + c < L; c++) {
#if ATT_MASK == 1
            if (!mask[mo + (i + c) * mrs + j * mcs]) t[c] = -INFINITY;
#else
            t[c] += mask[mo + (i + c) * mrs + j * mcs];
#endif
        }
        x = KLOAD(0, t);
    }
#endif
    return x;
}

#if ATT_DROP
/* Dropout's factors of the weights x at stream positions pos + c step (lane c); 1 where
 * the weight is 0 (no draw needed). */
inline KVEC att_keep_vec(KVEC x, ulong pos, ulong step, uint key0, uint key1, uint ctr_lo, uint ctr_hi, float p,
                         float dscale) {
    float t[ATT_KW];
    KSTORE(x, 0, t);
    for (int c = 0; c < ATT_KW; c++)
        t[c] = t[c] != 0.0f ? att_keep(pos + (ulong)c * step, key0, key1, ctr_lo, ctr_hi, p, dscale) : 1.0f;
    return KLOAD(0, t);
}
#endif

/* s[r][c] = scores of query rows qb (nr packed rows, already scaled) and the n-vector
 * key tile at j0 of the transposed keys kb (row stride Sp). */
#define ATT_ROW_SCORES(s, nr, n, qb, kb, j0)                                                                               \
    {                                                                                                                  \
        _Pragma("unroll") for (int r = 0; r < nr; r++) _Pragma("unroll") for (int c = 0; c < n; c++) s[r][c] =        \
            0.0f;                                                                                                      \
        for (int e = 0; e < ATT_E; e++) {                                                                              \
            KVEC kv[n];                                                                                                \
            _Pragma("unroll") for (int c = 0; c < n; c++) kv[c] = KLOAD(0, kb + e * Sp + j0 + c * ATT_KW);            \
            _Pragma("unroll") for (int r = 0; r < nr; r++) {                                                           \
                KVEC x = (KVEC)qb[r * ATT_EP + e];                                                                     \
                _Pragma("unroll") for (int c = 0; c < n; c++) s[r][c] = fma(x, kv[c], s[r][c]);                        \
            }                                                                                                          \
        }                                                                                                              \
    }

#if ATT_KW == ATT_VW && (ATT_KW == 4 || ATT_KW == 8 || ATT_KW == 16)
/* r[0 .. ATT_KW) (the rows of a square block) becomes its transpose: log2(ATT_KW) rounds
 * of out[2i], out[2i + 1] = the low and high halves of r[i] and r[i + ATT_KW / 2]
 * interleaved, each a two-vector shuffle. */
#define ATT_IL2(x, y) (float4)((x).s0, (y).s0, (x).s1, (y).s1)
#define ATT_IL4(x, y) (float8)(ATT_IL2((x).lo, (y).lo), ATT_IL2((x).hi, (y).hi))
#define ATT_IL8(x, y) (float16)(ATT_IL4((x).lo, (y).lo), ATT_IL4((x).hi, (y).hi))
#if ATT_KW == 4
#define ATT_IL ATT_IL2
#elif ATT_KW == 8
#define ATT_IL ATT_IL4
#else
#define ATT_IL ATT_IL8
#endif
#define ATT_PACK_TRANSPOSE 1
inline __attribute__((always_inline)) void att_transpose(KVEC *r) {
#pragma unroll
    for (int w = 1; w < ATT_KW; w *= 2) {
        KVEC o[ATT_KW];
#pragma unroll
        for (int i = 0; i < ATT_KW / 2; i++) {
            o[2 * i] = ATT_IL(r[i].lo, r[i + ATT_KW / 2].lo);
            o[2 * i + 1] = ATT_IL(r[i].hi, r[i + ATT_KW / 2].hi);
        }
#pragma unroll
        for (int i = 0; i < ATT_KW; i++) r[i] = o[i];
    }
}
#endif

/* Packs rows 0 .. np - 1 of batch b's [n, D] matrix x (row and column strides rs, cs, the
 * batch's offset from bsh and bs): mode bit 0 writes rows [B, np, Dp] (times mult, zero
 * past n and D), bit 1 the transpose [B, D, np]; both at element offset go. A work-item
 * packs ATT_KW rows of one batch (np is a multiple of it), so that it writes the transpose
 * as vectors; rows that are whole vectors (columns contiguous, D a multiple of ATT_VW) it
 * copies a vector at a time (the element loop below does not vectorise on POCL), and
 * where tiles and features are vectors of one width it transposes them a square block at
 * a time in registers (the element loop gathers each element of the transpose). */
kernel void sdpa_pack(global const float *restrict x, int8 bsh, int8 bs, int base, int n, int rs, int cs, int D,
                      int np, int Dp, float mult, int mode, global float *restrict rows, global float *restrict cols,
                      int go) {
    int r0 = get_global_id(0) * ATT_KW, b = get_global_id(1);
    if (r0 >= np) return;
    const global float *xb = x + base + att_boff(b, bsh, bs);
    global float *yr = rows + go + ((long)b * np + r0) * Dp;
    global float *yc = cols + go + (long)b * D * np + r0;
#ifdef ATT_PACK_TRANSPOSE
    if ((mode & 2) && cs == 1 && D == Dp) {
        for (int c = 0; c < Dp; c += ATT_VW) {
            KVEC r[ATT_KW];
#pragma unroll
            for (int u = 0; u < ATT_KW; u++) {
                r[u] = r0 + u < n ? EVLOAD(0, xb + (r0 + u) * rs + c) * mult : (EVEC)0.0f;
                if (mode & 1) EVSTORE(r[u], 0, yr + u * Dp + c);
            }
            att_transpose(r);
#pragma unroll
            for (int f = 0; f < ATT_KW; f++) KSTORE(r[f], 0, yc + (long)(c + f) * np);
        }
        return;
    }
#endif
    if ((mode & 1) && cs == 1 && D == Dp) {
        for (int u = 0; u < ATT_KW; u++) {
            global float *y = yr + u * Dp;
            const global float *xr = xb + (r0 + u) * rs;
            if (r0 + u < n)
                for (int c = 0; c < Dp; c += ATT_VW) EVSTORE(EVLOAD(0, xr + c) * mult, 0, y + c);
            else
                for (int c = 0; c < Dp; c += ATT_VW) EVSTORE((EVEC)0.0f, 0, y + c);
        }
        mode &= 2;
    }
    for (int c = 0; mode && c < Dp; c++) {
        float t[ATT_KW];
        for (int u = 0; u < ATT_KW; u++) {
            t[u] = r0 + u < n && c < D ? xb[(r0 + u) * rs + c * cs] * mult : 0.0f;
            if (mode & 1) yr[u * Dp + c] = t[u];
        }
        if ((mode & 2) && c < D) KSTORE(KLOAD(0, t), 0, yc + (long)c * np);
    }
}

/* Forward: a work-item owns ATT_RM query rows i0.. of batch b = id (., 1) and walks the
 * key tiles (ATT_FB keys) keeping, per row, the running maximum m, the running sum of
 * exp(s - m) (as a vector of partial sums) and the unnormalised output. Writes out
 * [B, L, EV] (row i of batch b at its batch offset over obs + i * ors: the host lays it out
 * like the query) and lse [B, Lp] = m + log l (+inf for padding rows). */
kernel void sdpa_forward(ATT_COMMON, global const float *restrict qp, global const float *restrict kt,
                         global const float *restrict vp, global float *restrict out, int8 obs, int ors,
                         global float *restrict lse) {
    int b = get_global_id(1), i0 = get_global_id(0) * ATT_RM;
    if (i0 >= Lp) return;
    out += go, lse += go;
    if (i0 >= L) {
        for (int r = 0; r < ATT_RM && i0 + r < Lp; r++) lse[(long)b * Lp + i0 + r] = INFINITY;
        return;
    }
    int3 bo = att_boff3(b, bsh, mbs, obs, obs);
    int mo = mbase + bo.x;
    global float *ob = out + bo.y;
    const global float *qb = qp + go + ((long)b * Lp + i0) * ATT_EP, *kb = kt + go + (long)b * ATT_E * Sp;
    const global float *vb = vp + go + (long)b * Sp * ATT_EVP;
    EVEC acc[ATT_RM][ATT_EVN];
    KVEC ls[ATT_RM];
    float m[ATT_RM];
#pragma unroll
    for (int r = 0; r < ATT_RM; r++) {
        m[r] = -INFINITY;
        ls[r] = 0.0f;
#pragma unroll
        for (int e = 0; e < ATT_EVN; e++) acc[r][e] = 0.0f;
    }
    int jend = S;
#if ATT_CAUSAL
    jend = min(S, i0 + ATT_RM); /* later keys are excluded for every row */
#endif
    for (int j0 = 0; j0 < jend; j0 += ATT_FB) {
        KVEC s[ATT_RM][ATT_FN];
        ATT_ROW_SCORES(s, ATT_RM, ATT_FN, qb, kb, j0)
        bool edge = ATT_MASK != 0 || j0 + ATT_FB > S;
#if ATT_CAUSAL
        edge |= j0 + ATT_FB - 1 > i0;
#endif
        if (edge)
#pragma unroll
            for (int r = 0; r < ATT_RM; r++)
#pragma unroll
                for (int c = 0; c < ATT_FN; c++)
                    s[r][c] = att_mask_keys(s[r][c], i0 + r, j0 + c * ATT_KW, L, S, mask, mo, mrs, mcs);
#pragma unroll
        for (int r = 0; r < ATT_RM; r++) {
            KVEC mx = s[r][0];
#pragma unroll
            for (int c = 1; c < ATT_FN; c++) mx = fmax(mx, s[r][c]);
            float mnew = fmax(m[r], att_kmax(mx));
            float ms = mnew == -INFINITY ? 0.0f : mnew; /* every key so far excluded: weights 0 */
            float alpha = exp(m[r] - ms);               /* 0 on the first visible tile */
            m[r] = mnew;
            KVEC t = 0.0f;
#pragma unroll
            for (int c = 0; c < ATT_FN; c++) {
                s[r][c] = exp(s[r][c] - ms);
                t += s[r][c];
#if ATT_DROP
                s[r][c] *= att_keep_vec(s[r][c], ((ulong)b * (ulong)L + (ulong)(i0 + r)) * (ulong)S + (ulong)(j0 + c * ATT_KW), 1,
                                        key0, key1, ctr_lo, ctr_hi, p, dscale);
#endif
            }
            ls[r] = fma(ls[r], (KVEC)alpha, t);
#pragma unroll
            for (int e = 0; e < ATT_EVN; e++) acc[r][e] *= alpha;
        }
        /* acc += P V: per key, its value row times each row's weight broadcast */
        float pw[ATT_RM][ATT_FB];
#pragma unroll
        for (int r = 0; r < ATT_RM; r++)
#pragma unroll
            for (int c = 0; c < ATT_FN; c++) KSTORE(s[r][c], c, pw[r]);
        const global float *vr = vb + (long)j0 * ATT_EVP;
        for (int jj = 0; jj < ATT_FB; jj++, vr += ATT_EVP) {
            EVEC x[ATT_EVN];
#pragma unroll
            for (int e = 0; e < ATT_EVN; e++) x[e] = EVLOAD(e, vr);
#pragma unroll
            for (int r = 0; r < ATT_RM; r++) {
                EVEC w = (EVEC)pw[r][jj];
#pragma unroll
                for (int e = 0; e < ATT_EVN; e++) acc[r][e] = fma(w, x[e], acc[r][e]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ATT_RM; r++) {
        int i = i0 + r;
        if (i >= L) {
            if (i < Lp) lse[(long)b * Lp + i] = INFINITY;
            continue;
        }
        float l = att_ksum(ls[r]), inv = l > 0.0f ? 1.0f / l : 0.0f;
        ATT_STORE_ROW(ob + (long)i * ors, acc[r], ATT_EVN, ATT_EV, inv)
        lse[(long)b * Lp + i] = l > 0.0f ? m[r] + log(l) : INFINITY;
    }
}

/* Backward pre-pass: D[b, i] = sum_e dO[b, i, e] O[b, i, e] (= sum_j P_ij dP_ij) for the
 * B Lp rows, 0 for padding rows; dO from its packed rows. */
kernel void sdpa_backward_d(global const float *restrict dop, global const float *restrict out, int ooff,
                            int8 bsh, int8 obs, int ors, global float *restrict dd, int L, int Lp, int n, int go) {
    int r = get_global_id(0);
    if (r >= n) return;
    int b = r / Lp, i = r - b * Lp;
    float d = 0.0f;
    if (i < L) {
        const global float *a = dop + go + (long)r * ATT_EVP, *o = out + ooff + att_boff3(b, bsh, obs, obs, obs).x + (long)i * ors;
        for (int e = 0; e < ATT_EV; e++) d = fma(a[e], o[e], d);
    }
    dd[r] = d;
}

/* dQ: as the forward, a work-item owns ATT_QM query rows and walks the key tiles; with
 * P = exp(s - lse), dP = z (dO . v) (z the dropout factor) and dS = P (dP - D),
 * dq_i = scale sum_j dS_ij k_j. qp: scale q, kt and vt transposed, kp k's rows, dop dO's
 * rows. */
kernel void sdpa_backward_dq(ATT_COMMON, global const float *restrict qp, global const float *restrict kt,
                             global const float *restrict vt, global const float *restrict kp,
                             global const float *restrict dop, global const float *restrict lse,
                             int lo, global const float *restrict dd, float scale, global float *restrict dq,
                             int8 qbs, int qrs) {
    int b = get_global_id(1), i0 = get_global_id(0) * ATT_QM;
    if (i0 >= L) return;
    lse += lo, dd += go, dq += go;
    int3 bo = att_boff3(b, bsh, mbs, qbs, qbs);
    int mo = mbase + bo.x;
    global float *dqb = dq + bo.y;
    const global float *qb = qp + go + ((long)b * Lp + i0) * ATT_EP, *kb = kt + go + (long)b * ATT_E * Sp;
    const global float *vb = vt + go + (long)b * ATT_EV * Sp, *ob = dop + go + ((long)b * Lp + i0) * ATT_EVP;
    const global float *kr0 = kp + go + (long)b * Sp * ATT_EP;
    EVEC g[ATT_QM][ATT_EN];
    float li[ATT_QM], di[ATT_QM];
#pragma unroll
    for (int r = 0; r < ATT_QM; r++) {
        li[r] = lse[(long)b * Lp + i0 + r];
        di[r] = dd[(long)b * Lp + i0 + r];
#pragma unroll
        for (int e = 0; e < ATT_EN; e++) g[r][e] = 0.0f;
    }
    int jend = S;
#if ATT_CAUSAL
    jend = min(S, i0 + ATT_QM);
#endif
    for (int j0 = 0; j0 < jend; j0 += ATT_QB) {
        KVEC s[ATT_QM][ATT_QN], dp[ATT_QM][ATT_QN];
        ATT_ROW_SCORES(s, ATT_QM, ATT_QN, qb, kb, j0)
#pragma unroll
        for (int r = 0; r < ATT_QM; r++)
#pragma unroll
            for (int c = 0; c < ATT_QN; c++) dp[r][c] = 0.0f;
        for (int e = 0; e < ATT_EV; e++) {
            KVEC x[ATT_QN];
#pragma unroll
            for (int c = 0; c < ATT_QN; c++) x[c] = KLOAD(0, vb + e * Sp + j0 + c * ATT_KW);
#pragma unroll
            for (int r = 0; r < ATT_QM; r++) {
                KVEC w = (KVEC)ob[r * ATT_EVP + e];
#pragma unroll
                for (int c = 0; c < ATT_QN; c++) dp[r][c] = fma(w, x[c], dp[r][c]);
            }
        }
        bool edge = ATT_MASK != 0 || j0 + ATT_QB > S;
#if ATT_CAUSAL
        edge |= j0 + ATT_QB - 1 > i0;
#endif
        float dw[ATT_QM][ATT_QB];
#pragma unroll
        for (int r = 0; r < ATT_QM; r++)
#pragma unroll
            for (int c = 0; c < ATT_QN; c++) {
                KVEC x = s[r][c];
                if (edge) x = att_mask_keys(x, i0 + r, j0 + c * ATT_KW, L, S, mask, mo, mrs, mcs);
                KVEC pr = exp(x - li[r]), d = dp[r][c];
#if ATT_DROP
                d *= att_keep_vec(pr, ((ulong)b * (ulong)L + (ulong)(i0 + r)) * (ulong)S + (ulong)(j0 + c * ATT_KW), 1, key0, key1,
                                  ctr_lo, ctr_hi, p, dscale);
#endif
                KSTORE(pr * (d - di[r]), c, dw[r]);
            }
        const global float *kr = kr0 + (long)j0 * ATT_EP;
        for (int jj = 0; jj < ATT_QB; jj++, kr += ATT_EP) {
            EVEC x[ATT_EN];
#pragma unroll
            for (int e = 0; e < ATT_EN; e++) x[e] = EVLOAD(e, kr);
#pragma unroll
            for (int r = 0; r < ATT_QM; r++) {
                EVEC w = (EVEC)dw[r][jj];
#pragma unroll
                for (int e = 0; e < ATT_EN; e++) g[r][e] = fma(w, x[e], g[r][e]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ATT_QM; r++)
        if (i0 + r < L) ATT_STORE_ROW(dqb + (long)(i0 + r) * qrs, g[r], ATT_EN, ATT_E, scale)
}

/* dK and dV: a work-item owns ATT_RN keys j0.. of batch b and walks the query tiles
 * (ATT_DB queries), the scores as vectors over queries (from q and dO transposed, qt and
 * dot): dv_j = sum_i z P_ij dO_i, dk_j = sum_i dS_ij (scale q_i). Each key's sums belong
 * to one work-item: no atomics. kp, vp: k's and v's rows; qp (scale q) and dop: rows. */
kernel void sdpa_backward_dkv(ATT_COMMON, global const float *restrict kp, global const float *restrict vp,
                              global const float *restrict qt, global const float *restrict dot,
                              global const float *restrict qp, global const float *restrict dop,
                              global const float *restrict lse, int lo, global const float *restrict dd,
                              global float *restrict dk, int8 kbs, int krs, global float *restrict dv, int8 vbs,
                              int vrs) {
    int b = get_global_id(1), j0 = get_global_id(0) * ATT_RN;
    bool live = j0 < S; /* the group's last items may have no keys; they still meet its barriers */
    dk += go, dv += go;
    int3 bo = att_boff3(b, bsh, mbs, kbs, vbs);
    int mo = mbase + bo.x;
    global float *dkb = dk + bo.y, *dvb = dv + bo.z;
    const global float *kb = kp + go + ((long)b * Sp + j0) * ATT_EP, *vb = vp + go + ((long)b * Sp + j0) * ATT_EVP;
    const global float *qtb = qt + go + (long)b * ATT_E * Lp, *otb = dot + go + (long)b * ATT_EV * Lp;
    const global float *qr0 = qp + go + (long)b * Lp * ATT_EP, *or0 = dop + go + (long)b * Lp * ATT_EVP;
    const global float *lb = lse + lo + (long)b * Lp, *db = dd + go + (long)b * Lp;
    EVEC gk[ATT_RN][ATT_EN], gv[ATT_RN][ATT_EVN];
#pragma unroll
    for (int r = 0; r < ATT_RN; r++) {
#pragma unroll
        for (int e = 0; e < ATT_EN; e++) gk[r][e] = 0.0f;
#pragma unroll
        for (int e = 0; e < ATT_EVN; e++) gv[r][e] = 0.0f;
    }
    int istart = 0, gstart = 0;
#if ATT_CAUSAL
    istart = j0 / ATT_DB * ATT_DB; /* earlier queries see none of these keys */
    gstart = (int)(get_group_id(0) * get_local_size(0)) * ATT_RN / ATT_DCQ * ATT_DCQ; /* the group's first */
#endif
    /* The group's items walk the queries chunk by chunk, with a barrier after each: POCL
     * then runs every item on a chunk before the next chunk, which stays in cache, instead of
     * streaming all of q and dO through each item in turn. */
    for (int ic = gstart; ic < L; ic += ATT_DCQ) {
        int iend = min(L, ic + ATT_DCQ);
        for (int i0 = live ? max(ic, istart) : iend; i0 < iend; i0 += ATT_DB) {
        KVEC s[ATT_RN][ATT_DN], dp[ATT_RN][ATT_DN];
#pragma unroll
        for (int r = 0; r < ATT_RN; r++)
#pragma unroll
            for (int c = 0; c < ATT_DN; c++) s[r][c] = dp[r][c] = 0.0f;
        for (int e = 0; e < ATT_E; e++) {
            KVEC x[ATT_DN];
#pragma unroll
            for (int c = 0; c < ATT_DN; c++) x[c] = KLOAD(0, qtb + e * Lp + i0 + c * ATT_KW);
#pragma unroll
            for (int r = 0; r < ATT_RN; r++) {
                KVEC w = (KVEC)kb[r * ATT_EP + e];
#pragma unroll
                for (int c = 0; c < ATT_DN; c++) s[r][c] = fma(w, x[c], s[r][c]);
            }
        }
        for (int e = 0; e < ATT_EV; e++) {
            KVEC x[ATT_DN];
#pragma unroll
            for (int c = 0; c < ATT_DN; c++) x[c] = KLOAD(0, otb + e * Lp + i0 + c * ATT_KW);
#pragma unroll
            for (int r = 0; r < ATT_RN; r++) {
                KVEC w = (KVEC)vb[r * ATT_EVP + e];
#pragma unroll
                for (int c = 0; c < ATT_DN; c++) dp[r][c] = fma(w, x[c], dp[r][c]);
            }
        }
        bool edge = ATT_MASK != 0;
#if ATT_CAUSAL
        edge |= i0 < j0 + ATT_RN - 1;
#endif
        float pw[ATT_RN][ATT_DB], sw[ATT_RN][ATT_DB];
#pragma unroll
        for (int c = 0; c < ATT_DN; c++) {
            KVEC lv = KLOAD(0, lb + i0 + c * ATT_KW), dv_ = KLOAD(0, db + i0 + c * ATT_KW);
#pragma unroll
            for (int r = 0; r < ATT_RN; r++) {
                KVEC x = s[r][c];
                if (edge) x = att_mask_queries(x, j0 + r, i0 + c * ATT_KW, L, S, mask, mo, mrs, mcs);
                KVEC pr = exp(x - lv), d = dp[r][c];
#if ATT_DROP
                KVEC z = att_keep_vec(pr, ((ulong)b * (ulong)L + (ulong)(i0 + c * ATT_KW)) * (ulong)S + (ulong)(j0 + r),
                                      (ulong)S, key0, key1, ctr_lo, ctr_hi, p, dscale);
                KSTORE(pr * z, c, pw[r]);
                d *= z;
#else
                KSTORE(pr, c, pw[r]);
#endif
                KSTORE(pr * (d - dv_), c, sw[r]);
            }
        }
        const global float *qr = qr0 + (long)i0 * ATT_EP, *orr = or0 + (long)i0 * ATT_EVP;
        for (int ii = 0; ii < ATT_DB; ii++, qr += ATT_EP, orr += ATT_EVP) {
            EVEC x[ATT_EVN];
#pragma unroll
            for (int e = 0; e < ATT_EVN; e++) x[e] = EVLOAD(e, orr);
#pragma unroll
            for (int r = 0; r < ATT_RN; r++) {
                EVEC w = (EVEC)pw[r][ii];
#pragma unroll
                for (int e = 0; e < ATT_EVN; e++) gv[r][e] = fma(w, x[e], gv[r][e]);
            }
            EVEC y[ATT_EN];
#pragma unroll
            for (int e = 0; e < ATT_EN; e++) y[e] = EVLOAD(e, qr);
#pragma unroll
            for (int r = 0; r < ATT_RN; r++) {
                EVEC w = (EVEC)sw[r][ii];
#pragma unroll
                for (int e = 0; e < ATT_EN; e++) gk[r][e] = fma(w, y[e], gk[r][e]);
            }
        }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#pragma unroll
    for (int r = 0; r < ATT_RN; r++) {
        if (j0 + r >= S) continue;
        ATT_STORE_ROW(dkb + (long)(j0 + r) * krs, gk[r], ATT_EN, ATT_E, 1.0f)
        ATT_STORE_ROW(dvb + (long)(j0 + r) * vrs, gv[r], ATT_EVN, ATT_EV, 1.0f)
    }
}

/* The composed path's additive bias, dst [n] contiguous: from a contiguous boolean mask
 * (causal 0: 0 where m is nonzero, -inf elsewhere), or the causal rule of an [L, S] matrix
 * (causal 1: -inf where column > row). */
kernel void sdpa_bias(global const uchar *restrict m, int moff, global float *restrict dst, int doff, int n, int S,
                      int causal) {
    int t = get_global_id(0);
    if (t >= n) return;
    bool keep = causal ? t % S <= t / S : m[moff + t] != 0;
    dst[doff + t] = keep ? 0.0f : -INFINITY;
}
