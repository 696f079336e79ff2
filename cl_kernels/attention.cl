/* cl_kernels/attention.cl - fused scaled-dot-product attention (src/ops/attention.c):
 * a tiled forward with an online softmax (FlashAttention, Dao et al. 2022; the loop order of
 * FlashAttention-2) and its backward, which recomputes the score tiles from q, k and the
 * forward's per-row log-sum-exp instead of keeping the L x S matrix.
 *
 * Build options (the host sets all of them):
 *   ATT_E, ATT_EV   head dims of query/key and of value (private arrays of that size)
 *   ATT_BM          query rows per work-group of the forward and dQ kernels; query rows per
 *                   tile of the dK/dV kernel
 *   ATT_BN          key rows per tile of the forward and dQ kernels; key rows per work-group
 *                   of the dK/dV kernel
 *   ATT_MASK        0 none, 1 boolean (uchar, nonzero = takes part), 2 additive float
 *   ATT_CAUSAL      1: query i sees keys j <= i (top-left aligned, as torch)
 *   ATT_DROP        1: dropout on the attention weights
 *
 * Operands: batch b of the (broadcast) batch dims reads q, k, v and the mask at element
 * offsets from the batch shape and each operand's batch strides (so any broadcast or
 * strided view works) with row and column strides per operand (a mask stride of 0 broadcasts it over L or S). The
 * output, the gradients, lse and D are contiguous [B, L or S, dim]. Scores are s = scale q.k + mask
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

/* The score s (already scale q.k) of query i and key j with the mask and the causal rule. */
inline float att_masked(float s, int i, int j, global const ATT_MASK_T *mask, int mo, int mrs, int mcs) {
#if ATT_MASK == 1
    if (!mask[mo + i * mrs + j * mcs]) s = -INFINITY;
#elif ATT_MASK == 2
    s += mask[mo + i * mrs + j * mcs];
#endif
#if ATT_CAUSAL
    if (j > i) s = -INFINITY;
#endif
    return s;
}

/* The arguments every kernel takes, in this order. bsh: the batch shape, padded in front
 * with 1s to 8 dims; qbs, kbs, vbs, mbs: each operand's strides over those dims (0 where it
 * broadcasts); base: the operands' element offsets. */
#define ATT_OPERANDS                                                                                                   \
    global const float *restrict q, global const float *restrict k, global const float *restrict v,                    \
        global const ATT_MASK_T *restrict mask, int8 bsh, int8 qbs, int8 kbs, int8 vbs, int8 mbs, int4 base, int L,    \
        int S, int qrs, int qcs, int krs, int kcs, int vrs, int vcs, int mrs, int mcs, float scale, float p,           \
        float dscale, uint key0, uint key1, uint ctr_lo, uint ctr_hi

/* The element offsets of batch b's query, key, value and mask. */
inline int4 att_offsets(int b, int8 bsh, int8 qbs, int8 kbs, int8 vbs, int8 mbs, int4 base) {
    int sh[8], qs[8], ks[8], vs[8], ms[8];
    vstore8(bsh, 0, sh);
    vstore8(qbs, 0, qs);
    vstore8(kbs, 0, ks);
    vstore8(vbs, 0, vs);
    vstore8(mbs, 0, ms);
    int4 o = base;
    for (int d = 7; d >= 0; d--) {
        int idx = b % sh[d];
        b /= sh[d];
        o += idx * (int4)(qs[d], ks[d], vs[d], ms[d]);
    }
    return o;
}

/* Rows live in vectors of ATT_VW floats (ATT_EN of them for E, ATT_EVN for EV, the last
 * zero-padded): dot products and updates of a row use the CPU's vector units inside each
 * work-item, which POCL's work-group vectoriser does not reach through private arrays. */
#define ATT_CAT_(a, b) a##b
#define ATT_CAT(a, b) ATT_CAT_(a, b)
#define ATT_VEC ATT_CAT(float, ATT_VW)
#define ATT_EN ((ATT_E + ATT_VW - 1) / ATT_VW)
#define ATT_EVN ((ATT_EV + ATT_VW - 1) / ATT_VW)

/* Elements e .. e + ATT_VW - 1 of the row at base with column stride cs and n columns; 0
 * past n. */
inline ATT_VEC att_ld(global const float *x, int base, int cs, int e, int n) {
    float t[ATT_VW];
    for (int c = 0; c < ATT_VW; c++) t[c] = e + c < n ? x[base + (e + c) * cs] : 0.0f;
    return ATT_CAT(vload, ATT_VW)(0, t);
}

/* Stores the elements of v below column n of a contiguous row at x + e. */
inline void att_st(global float *x, int e, int n, ATT_VEC v) {
    float t[ATT_VW];
    ATT_CAT(vstore, ATT_VW)(v, 0, t);
    for (int c = 0; c < ATT_VW && e + c < n; c++) x[e + c] = t[c];
}

inline float att_sum(ATT_VEC v) {
    float t[ATT_VW];
    ATT_CAT(vstore, ATT_VW)(v, 0, t);
    float s = 0.0f;
    for (int c = 0; c < ATT_VW; c++) s += t[c];
    return s;
}

/* Forward: a work-group of ATT_BM query rows of batch b = group (., 1), one row per
 * work-item, walks the key tiles (ATT_BN keys of k and v in local memory) keeping the
 * running maximum m, the running sum l of exp(s - m) and the unnormalised output. Writes
 * out [B, L, EV] and lse [B, L] = m + log l. */
kernel void sdpa_forward(ATT_OPERANDS, global float *restrict out, global float *restrict lse) {
    local ATT_VEC kt[ATT_BN * ATT_EN];
    local ATT_VEC vt[ATT_BN * ATT_EVN];
    int lid = get_local_id(0), b = get_group_id(1);
    int i0 = get_group_id(0) * ATT_BM, i = i0 + lid;
    bool row = i < L;
    int4 ob = att_offsets(b, bsh, qbs, kbs, vbs, mbs, base);
    int qo = ob.x, ko = ob.y, vo = ob.z, mo = ob.w;
    ATT_VEC qr[ATT_EN], acc[ATT_EVN];
    for (int e = 0; e < ATT_EN; e++) qr[e] = row ? att_ld(q, qo + i * qrs, qcs, ATT_VW * e, ATT_E) * scale : 0.0f;
    for (int e = 0; e < ATT_EVN; e++) acc[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int jend = S;
#if ATT_CAUSAL
    jend = min(S, i0 + ATT_BM); /* later keys are excluded for every row of the group */
#endif
    for (int j0 = 0; j0 < jend; j0 += ATT_BN) {
        int nb = min(ATT_BN, S - j0);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int t = lid; t < nb * ATT_EN; t += ATT_BM)
            kt[t] = att_ld(k, ko + (j0 + t / ATT_EN) * krs, kcs, ATT_VW * (t % ATT_EN), ATT_E);
        for (int t = lid; t < nb * ATT_EVN; t += ATT_BM)
            vt[t] = att_ld(v, vo + (j0 + t / ATT_EVN) * vrs, vcs, ATT_VW * (t % ATT_EVN), ATT_EV);
        barrier(CLK_LOCAL_MEM_FENCE);
        if (!row) continue;
        float s[ATT_BN], tmax = -INFINITY;
        for (int jj = 0; jj < nb; jj++) {
            ATT_VEC d = 0.0f;
            for (int e = 0; e < ATT_EN; e++) d = fma(qr[e], kt[jj * ATT_EN + e], d);
            s[jj] = att_masked(att_sum(d), i, j0 + jj, mask, mo, mrs, mcs);
            tmax = fmax(tmax, s[jj]);
        }
        float mnew = fmax(m, tmax);
        if (mnew == -INFINITY) continue; /* every key so far excluded */
        float alpha = exp(m - mnew);     /* 0 on the first visible tile */
        l *= alpha;
        for (int e = 0; e < ATT_EVN; e++) acc[e] *= alpha;
        for (int jj = 0; jj < nb; jj++) {
            float pj = exp(s[jj] - mnew);
            l += pj;
#if ATT_DROP
            pj *= att_keep(((ulong)b * (ulong)L + (ulong)i) * (ulong)S + (ulong)(j0 + jj), key0, key1, ctr_lo, ctr_hi,
                           p, dscale);
#endif
            if (pj == 0.0f) continue;
            for (int e = 0; e < ATT_EVN; e++) acc[e] = fma((ATT_VEC)pj, vt[jj * ATT_EVN + e], acc[e]);
        }
        m = mnew;
    }
    if (!row) return;
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    global float *o = out + (b * L + i) * ATT_EV;
    for (int e = 0; e < ATT_EVN; e++) att_st(o, ATT_VW * e, ATT_EV, acc[e] * inv);
    lse[b * L + i] = l > 0.0f ? m + log(l) : INFINITY;
}

/* Backward pre-pass: D[b, i] = sum_e dO[b, i, e] O[b, i, e] (= sum_j P_ij dP_ij), one
 * work-item per row of the n = B L rows. */
kernel void sdpa_backward_d(global const float *restrict dout, int dooff, global const float *restrict out, int ooff,
                            global float *restrict dd, int n) {
    int r = get_global_id(0);
    if (r >= n) return;
    const global float *a = dout + dooff + r * ATT_EV, *o = out + ooff + r * ATT_EV;
    float d = 0.0f;
    for (int e = 0; e < ATT_EV; e++) d = fma(a[e], o[e], d);
    dd[r] = d;
}

/* dQ: as the forward, a work-group of ATT_BM query rows walks the key tiles; with
 * P = exp(s - lse), dP = z (dO . v) (z the dropout factor) and dS = P (dP - D),
 * dq_i = scale sum_j dS_ij k_j. */
kernel void sdpa_backward_dq(ATT_OPERANDS, global const float *restrict dout, int dooff,
                             global const float *restrict lse, global const float *restrict dd,
                             global float *restrict dq) {
    local ATT_VEC kt[ATT_BN * ATT_EN];
    local ATT_VEC vt[ATT_BN * ATT_EVN];
    int lid = get_local_id(0), b = get_group_id(1);
    int i0 = get_group_id(0) * ATT_BM, i = i0 + lid;
    bool row = i < L;
    int4 ob = att_offsets(b, bsh, qbs, kbs, vbs, mbs, base);
    int qo = ob.x, ko = ob.y, vo = ob.z, mo = ob.w;
    ATT_VEC qr[ATT_EN], dor[ATT_EVN], g[ATT_EN];
    for (int e = 0; e < ATT_EN; e++) qr[e] = row ? att_ld(q, qo + i * qrs, qcs, ATT_VW * e, ATT_E) * scale : 0.0f;
    for (int e = 0; e < ATT_EVN; e++)
        dor[e] = row ? att_ld(dout, dooff + (b * L + i) * ATT_EV, 1, ATT_VW * e, ATT_EV) : 0.0f;
    for (int e = 0; e < ATT_EN; e++) g[e] = 0.0f;
    float li = row ? lse[b * L + i] : INFINITY, di = row ? dd[b * L + i] : 0.0f;
    int jend = S;
#if ATT_CAUSAL
    jend = min(S, i0 + ATT_BM);
#endif
    for (int j0 = 0; j0 < jend; j0 += ATT_BN) {
        int nb = min(ATT_BN, S - j0);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int t = lid; t < nb * ATT_EN; t += ATT_BM)
            kt[t] = att_ld(k, ko + (j0 + t / ATT_EN) * krs, kcs, ATT_VW * (t % ATT_EN), ATT_E);
        for (int t = lid; t < nb * ATT_EVN; t += ATT_BM)
            vt[t] = att_ld(v, vo + (j0 + t / ATT_EVN) * vrs, vcs, ATT_VW * (t % ATT_EVN), ATT_EV);
        barrier(CLK_LOCAL_MEM_FENCE);
        if (!row) continue;
        for (int jj = 0; jj < nb; jj++) {
            ATT_VEC d = 0.0f;
            for (int e = 0; e < ATT_EN; e++) d = fma(qr[e], kt[jj * ATT_EN + e], d);
            float pij = exp(att_masked(att_sum(d), i, j0 + jj, mask, mo, mrs, mcs) - li);
            if (pij == 0.0f) continue;
            ATT_VEC dp4 = 0.0f;
            for (int e = 0; e < ATT_EVN; e++) dp4 = fma(dor[e], vt[jj * ATT_EVN + e], dp4);
            float dp = att_sum(dp4);
#if ATT_DROP
            dp *= att_keep(((ulong)b * (ulong)L + (ulong)i) * (ulong)S + (ulong)(j0 + jj), key0, key1, ctr_lo, ctr_hi,
                           p, dscale);
#endif
            float ds = pij * (dp - di);
            for (int e = 0; e < ATT_EN; e++) g[e] = fma((ATT_VEC)ds, kt[jj * ATT_EN + e], g[e]);
        }
    }
    if (!row) return;
    global float *o = dq + (b * L + i) * ATT_E;
    for (int e = 0; e < ATT_EN; e++) att_st(o, ATT_VW * e, ATT_E, g[e] * scale);
}

/* dK and dV: a work-group of ATT_BN work-items, each holding ATT_KB keys (j and
 * j + ATT_BN, ...: every query vector read from local memory serves all of them), walks
 * the query tiles (ATT_BM rows of scale q, dO, lse and D in local memory):
 * dv_j = sum_i z P_ij dO_i, dk_j = sum_i dS_ij (scale q_i). Each key's sums belong to one
 * work-item: no atomics. */
kernel void sdpa_backward_dkv(ATT_OPERANDS, global const float *restrict dout, int dooff,
                              global const float *restrict lse, global const float *restrict dd,
                              global float *restrict dk, global float *restrict dv) {
    local ATT_VEC qt[ATT_BM * ATT_EN];
    local ATT_VEC ot[ATT_BM * ATT_EVN];
    local float lt[ATT_BM], dt[ATT_BM];
    int lid = get_local_id(0), b = get_group_id(1);
    int j0 = get_group_id(0) * ATT_BN * ATT_KB;
    int4 ob = att_offsets(b, bsh, qbs, kbs, vbs, mbs, base);
    int qo = ob.x, ko = ob.y, vo = ob.z, mo = ob.w;
    ATT_VEC kr[ATT_KB][ATT_EN], vr[ATT_KB][ATT_EVN], gk[ATT_KB][ATT_EN], gv[ATT_KB][ATT_EVN];
    int j[ATT_KB];
    bool col[ATT_KB], any = false;
    for (int u = 0; u < ATT_KB; u++) {
        j[u] = j0 + u * ATT_BN + lid;
        col[u] = j[u] < S;
        any |= col[u];
        for (int e = 0; e < ATT_EN; e++) kr[u][e] = col[u] ? att_ld(k, ko + j[u] * krs, kcs, ATT_VW * e, ATT_E) : 0.0f;
        for (int e = 0; e < ATT_EVN; e++)
            vr[u][e] = col[u] ? att_ld(v, vo + j[u] * vrs, vcs, ATT_VW * e, ATT_EV) : 0.0f;
        for (int e = 0; e < ATT_EN; e++) gk[u][e] = 0.0f;
        for (int e = 0; e < ATT_EVN; e++) gv[u][e] = 0.0f;
    }
    int istart = 0;
#if ATT_CAUSAL
    istart = j0 / ATT_BM * ATT_BM; /* earlier queries see none of this group's keys */
#endif
    for (int i0 = istart; i0 < L; i0 += ATT_BM) {
        int nb = min(ATT_BM, L - i0);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int t = lid; t < nb * ATT_EN; t += ATT_BN)
            qt[t] = att_ld(q, qo + (i0 + t / ATT_EN) * qrs, qcs, ATT_VW * (t % ATT_EN), ATT_E) * scale;
        for (int t = lid; t < nb * ATT_EVN; t += ATT_BN)
            ot[t] = att_ld(dout, dooff + (b * L + i0 + t / ATT_EVN) * ATT_EV, 1, ATT_VW * (t % ATT_EVN), ATT_EV);
        for (int t = lid; t < nb; t += ATT_BN) {
            lt[t] = lse[b * L + i0 + t];
            dt[t] = dd[b * L + i0 + t];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (!any) continue;
        for (int ii = 0; ii < nb; ii++) {
            ATT_VEC d[ATT_KB], dp4[ATT_KB];
            for (int u = 0; u < ATT_KB; u++) d[u] = 0.0f, dp4[u] = 0.0f;
            for (int e = 0; e < ATT_EN; e++) {
                ATT_VEC x = qt[ii * ATT_EN + e];
                for (int u = 0; u < ATT_KB; u++) d[u] = fma(x, kr[u][e], d[u]);
            }
            float pij[ATT_KB];
            bool none = true;
            for (int u = 0; u < ATT_KB; u++) {
                pij[u] = col[u] ? exp(att_masked(att_sum(d[u]), i0 + ii, j[u], mask, mo, mrs, mcs) - lt[ii]) : 0.0f;
                none &= pij[u] == 0.0f;
            }
            if (none) continue;
            for (int e = 0; e < ATT_EVN; e++) {
                ATT_VEC x = ot[ii * ATT_EVN + e];
                for (int u = 0; u < ATT_KB; u++) dp4[u] = fma(x, vr[u][e], dp4[u]);
            }
            float pz[ATT_KB], ds[ATT_KB];
            for (int u = 0; u < ATT_KB; u++) {
                float z = 1.0f;
#if ATT_DROP
                if (pij[u] != 0.0f)
                    z = att_keep(((ulong)b * (ulong)L + (ulong)(i0 + ii)) * (ulong)S + (ulong)j[u], key0, key1, ctr_lo,
                                 ctr_hi, p, dscale);
#endif
                pz[u] = pij[u] * z;
                ds[u] = pij[u] * (att_sum(dp4[u]) * z - dt[ii]);
            }
            for (int e = 0; e < ATT_EVN; e++) {
                ATT_VEC x = ot[ii * ATT_EVN + e];
                for (int u = 0; u < ATT_KB; u++) gv[u][e] = fma((ATT_VEC)pz[u], x, gv[u][e]);
            }
            for (int e = 0; e < ATT_EN; e++) {
                ATT_VEC x = qt[ii * ATT_EN + e];
                for (int u = 0; u < ATT_KB; u++) gk[u][e] = fma((ATT_VEC)ds[u], x, gk[u][e]);
            }
        }
    }
    for (int u = 0; u < ATT_KB; u++) {
        if (!col[u]) continue;
        global float *ok = dk + (b * S + j[u]) * ATT_E, *ov = dv + (b * S + j[u]) * ATT_EV;
        for (int e = 0; e < ATT_EN; e++) att_st(ok, ATT_VW * e, ATT_E, gk[u][e]);
        for (int e = 0; e < ATT_EVN; e++) att_st(ov, ATT_VW * e, ATT_EV, gv[u][e]);
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
