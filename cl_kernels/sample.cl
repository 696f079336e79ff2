/* cl_kernels/sample.cl - drawing ids from logits: softmax(logits / temperature) over all
 * entries or over the top_k largest (src/ops/sample.c).
 *
 * One work-group per row, each work-item a contiguous block of the row (blocks of
 * ceil(V / L) entries). The uniform number u of the row comes from the host's Philox draw
 * (kiln_rand_uniform), so the id is a function of (seed, counter, logits) only:
 *   1. m = the row's maximum (a tree over the work-group); a NaN or +inf anywhere, or a row
 *      of -inf only, has no distribution: the id is -1.
 *   2. top_k: the k-th largest value, found exactly by a radix select over the order-
 *      preserving 32-bit keys of the floats (four passes of 8 bits, a local histogram
 *      each); entries whose key is below it get weight 0 (ties with it are kept).
 *   3. w_i = exp((x_i - m) / temperature); each block sums its weights in order; work-item
 *      0 scans the block sums for the block holding u * total, and that block's work-item
 *      walks its entries, summing in the same order, to the first i whose running sum
 *      passes the remainder. Rounding can leave u * total at the very end: then the last
 *      entry of positive weight is taken, so the id always has positive weight. */

/* Float order as unsigned order (NaN excluded): negative floats flipped, positive ones
 * above them. */
inline uint sample_key(float v) {
    uint b = as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* x[xoff + b * rs + i * cs] for row b < gridsize / L, entry i < V; u[uoff + b] in [0, 1);
 * out[ooff + b] the id. lf: L floats; lu: max(L, 256) uints. */
kernel void sample_logits(global const float *x, int xoff, int rs, int cs, int V, global const float *u, int uoff,
                          global int *out, int ooff, float temperature, int top_k, local float *lf, local uint *lu) {
    local uint digit_sh, below_sh;
    local int sel_sh;
    local float rem_sh;
    int b = (int)get_group_id(0);
    int lid = (int)get_local_id(0), L = (int)get_local_size(0);
    int chunk = (V + L - 1) / L;
    int i0 = min(V, lid * chunk), i1 = min(V, i0 + chunk);
    global const float *row = x + xoff + (long)b * rs;

    /* 1. the maximum, and whether the row holds a NaN or +inf */
    float m = -INFINITY;
    uint bad = 0;
    for (int i = i0; i < i1; i++) {
        float v = row[(long)i * cs];
        bad |= (isnan(v) || v == INFINITY) ? 1u : 0u;
        m = fmax(m, v);
    }
    lf[lid] = m;
    lu[lid] = bad;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = L / 2; s > 0; s >>= 1) {
        if (lid < s) {
            lf[lid] = fmax(lf[lid], lf[lid + s]);
            lu[lid] |= lu[lid + s];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = lf[0];
    bad = lu[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    /* no early return: every work-item reaches every barrier below (POCL needs that) */
    bool valid = !bad && m != -INFINITY;

    /* 2. the key of the k-th largest entry: keep keys >= thr */
    uint thr = 0;
    if (valid && top_k > 0 && top_k < V) {
        uint prefix = 0, mask = 0, k = (uint)top_k;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int d = lid; d < 256; d += L) lu[d] = 0;
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int i = i0; i < i1; i++) {
                uint key = sample_key(row[(long)i * cs]);
                if ((key & mask) == prefix) atomic_inc(&lu[(key >> shift) & 255u]);
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            if (lid == 0) {
                /* the digit at which the count from the top reaches k */
                uint cum = 0;
                int d = 255;
                for (; d > 0; d--) {
                    if (cum + lu[d] >= k) break;
                    cum += lu[d];
                }
                digit_sh = (uint)d;
                below_sh = cum;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            prefix |= digit_sh << shift;
            mask |= 255u << shift;
            k -= below_sh;
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        thr = prefix;
    }

    /* 3. the block sums, the block holding u * total, the entry within it */
    float p = 0.0f;
    for (int i = i0; valid && i < i1; i++) {
        float v = row[(long)i * cs];
        p += sample_key(v) >= thr ? exp((v - m) / temperature) : 0.0f;
    }
    lf[lid] = p;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0 && !valid) out[ooff + b] = -1;
    if (lid == 0 && valid) {
        float total = 0.0f;
        int last = 0;
        for (int j = 0; j < L; j++) {
            total += lf[j];
            if (lf[j] > 0.0f) last = j;
        }
        float target = u[uoff + b] * total, cum = 0.0f;
        int sel = -1;
        for (int j = 0; j < L && sel < 0; j++) {
            if (target < cum + lf[j])
                sel = j;
            else
                cum += lf[j];
        }
        if (sel < 0) { /* rounding put the target at the end: the last positive block's end */
            sel = last;
            rem_sh = lf[last];
        } else {
            rem_sh = target - cum;
        }
        sel_sh = sel;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (valid && lid == sel_sh) {
        float r = rem_sh, acc = 0.0f;
        int pick = -1, lastw = -1;
        for (int i = i0; i < i1; i++) {
            float v = row[(long)i * cs];
            float w = sample_key(v) >= thr ? exp((v - m) / temperature) : 0.0f;
            if (w > 0.0f) {
                acc += w;
                lastw = i;
                if (r < acc) {
                    pick = i;
                    break;
                }
            }
        }
        out[ooff + b] = pick >= 0 ? pick : lastw;
    }
}
