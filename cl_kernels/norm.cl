/* cl_kernels/norm.cl - batch norm, layer norm, dropout and embedding (src/ops/norm.c).
 *
 * Batch norm and layer norm share one layout, "groups": group g (a channel of batch norm,
 * a row of layer norm) owns the M = N * S elements at
 *     g * gstride + n * nstride + s,   n < N, s < S
 * of a contiguous tensor (batch norm on [N, C, S]: gstride S, nstride C * S; layer norm on
 * [R, D]: gstride D, N 1, S D). Either one work-item handles a group (many short groups)
 * or one work-group of L work-items (a power of two) does: work-item l visits the group's
 * elements l, l + L, l + 2L, ... in row-major order (so neighbouring work-items read
 * neighbouring addresses), then the L partial sums are combined in a fixed tree in local
 * memory. No atomics: every result depends only on the shapes and the launch shape the
 * host picks from them, so it is bit-identical from run to run.
 *
 * Statistics are two-pass in float (the mean first, then the mean of squared deviations
 * from it), so the variance of data with a large mean loses nothing to cancellation; the
 * mean itself sums deviations from the group's first element, for the same reason.
 */

/* Sums of one value (two values) per work-item over the work-group; every work-item gets
 * the totals. Called unconditionally by every work-item: barriers only ever sit in
 * uniform straight-line code (POCL miscompiled them inside branches, even uniform ones). */
inline float norm_group_sum(local float *scr, float v) {
    int lid = get_local_id(0), L = get_local_size(0);
    scr[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h) scr[lid] += scr[lid + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = scr[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/* scr holds 2L floats */
inline float2 norm_group_sum2(local float *scr, float a, float b) {
    int lid = get_local_id(0), L = get_local_size(0);
    scr[lid] = a;
    scr[L + lid] = b;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h) {
            scr[lid] += scr[lid + h];
            scr[L + lid] += scr[L + lid + h];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float2 r = (float2)(scr[0], scr[L]);
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/*
 * Two launch shapes share every kernel body below:
 *   *_groups  one work-group of L_ work-items per group (long groups, few of them);
 *   *_rows    one work-item per group (L_ = 1): many short groups, no barriers.
 * The bodies see g (the group), L_ and lid_ (this work-item's index in the group), and a
 * SUM (SUM2) that totals a value (two values) over the group's work-items.
 */
#define NORM_SUM_GROUP(v) norm_group_sum(scr, (v))
#define NORM_SUM2_GROUP(a, b) norm_group_sum2(scr, (a), (b))
#define NORM_SUM_ROW(v) (v)
#define NORM_SUM2_ROW(a, b) ((float2)((a), (b)))
#define NORM_PROLOGUE_GROUPS                                                              \
    int g = get_group_id(0), L_ = get_local_size(0), lid_ = get_local_id(0)
#define NORM_PROLOGUE_ROWS                                                                \
    int g = get_global_id(0), L_ = 1, lid_ = 0;                                           \
    if (g >= G) return

/* Runs BODY for the elements of this work-item in group g: rel is the element's offset in
 * the contiguous tensor, s its position along S. (n, s) advance by L_ elements with one
 * compare instead of a division per element. */
#define NORM_LOOP(rel, s, BODY)                                                           \
    do {                                                                                  \
        if (N > 0 && S > 0) {                                                             \
            int dn_ = L_ / S, ds_ = L_ - dn_ * S;                                         \
            int n_ = lid_ / S, s = lid_ - n_ * S;                                         \
            int gbase_ = g * gstride;                                                     \
            while (n_ < N) {                                                              \
                int rel = gbase_ + n_ * nstride + s;                                      \
                BODY;                                                                     \
                s += ds_;                                                                 \
                n_ += dn_;                                                                \
                if (s >= S) {                                                             \
                    s -= S;                                                               \
                    n_++;                                                                 \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    } while (0)

/* A work-item's float sums run in chunks of NORM_CHUNK terms whose totals are then added:
 * the rounding error grows with n / NORM_CHUNK + NORM_CHUNK instead of n. */
#define NORM_CHUNK 32
#define NORM_ACC_ADD(acc, part, cnt, v)                                                   \
    do {                                                                                  \
        part += (v);                                                                      \
        if (++cnt == NORM_CHUNK) {                                                        \
            acc += part;                                                                  \
            part = 0.0f;                                                                  \
            cnt = 0;                                                                      \
        }                                                                                 \
    } while (0)

/* y = (x - mean) * rstd * w + b over this work-item's elements of group g. wmode
 * (cl_kernels/kiln_shared.h): KILN_NORM_W_GROUP per group (batch norm), KILN_NORM_W_ELEM
 * per s (layer norm); has_w/has_b say which of the two is present. */
#define NORM_WRITE_Y()                                                                    \
    do {                                                                                  \
        float wg = (wmode == KILN_NORM_W_GROUP && has_w) ? w[woff + g] : 1.0f;            \
        float bg = (wmode == KILN_NORM_W_GROUP && has_b) ? b[boff + g] : 0.0f;            \
        float sg = rstd * wg;                                                             \
        if (wmode == KILN_NORM_W_ELEM) {                                                  \
            NORM_LOOP(rel, s, {                                                           \
                float v = (x[xoff + rel] - mean) * rstd;                                  \
                if (has_w) v *= w[woff + s];                                              \
                if (has_b) v += b[boff + s];                                              \
                y[yoff + rel] = v;                                                        \
            });                                                                           \
        } else {                                                                          \
            NORM_LOOP(rel, s, y[yoff + rel] = fma(x[xoff + rel] - mean, sg, bg));         \
        }                                                                                 \
    } while (0)

/*
 * Forward with the batch statistics (batch norm training, layer norm): the mean and biased
 * variance of group g, rstd = 1 / sqrt(var + eps), written to mean_out/rstd_out[g], then
 * y. The mean sums x - k, k the group's first element: far from zero data (|mean| >> std)
 * then sums small, mostly exact differences instead of large values. With update, the
 * running statistics at rm/rv (1-D views: offset, stride) become (1 - momentum) * old +
 * momentum * stat, with the unbiased variance var * M / (M - 1) (torch's rule, in its
 * order of evaluation).
 */
#define NORM_FORWARD_ARGS                                                                 \
    global const float *x, int xoff, global float *y, int yoff, int N, int S, int gstride, int nstride, \
        int wmode, int has_w, global const float *w, int woff, int has_b, global const float *b, int boff, \
        float eps, global float *mean_out, int moff, global float *rstd_out, int roff, int update, \
        float momentum, global float *rm, int rmoff, int rmstr, global float *rv, int rvoff, int rvstr
#define NORM_FORWARD_BODY(SUM)                                                            \
    do {                                                                                  \
        float M = (float)N * (float)S;                                                    \
        float k = x[xoff + g * gstride], acc = 0.0f, part = 0.0f;                         \
        int cnt = 0;                                                                      \
        NORM_LOOP(rel, s, NORM_ACC_ADD(acc, part, cnt, x[xoff + rel] - k));               \
        float mean = k + SUM(acc + part) / M;                                             \
        acc = part = 0.0f;                                                                \
        cnt = 0;                                                                          \
        NORM_LOOP(rel, s, {                                                               \
            float d = x[xoff + rel] - mean;                                               \
            NORM_ACC_ADD(acc, part, cnt, d * d);                                          \
        });                                                                               \
        float var = SUM(acc + part) / M;                                                  \
        float rstd = 1.0f / sqrt(var + eps);                                              \
        if (lid_ == 0) {                                                                  \
            mean_out[moff + g] = mean;                                                    \
            rstd_out[roff + g] = rstd;                                                    \
            if (update) {                                                                 \
                float unbiased = var * (M / (M - 1.0f));                                  \
                int im = rmoff + g * rmstr, iv = rvoff + g * rvstr;                       \
                rm[im] = momentum * mean + (1.0f - momentum) * rm[im];                    \
                rv[iv] = momentum * unbiased + (1.0f - momentum) * rv[iv];                \
            }                                                                             \
        }                                                                                 \
        NORM_WRITE_Y();                                                                   \
    } while (0)

kernel void norm_forward_groups(NORM_FORWARD_ARGS, local float *scr) {
    NORM_PROLOGUE_GROUPS;
    NORM_FORWARD_BODY(NORM_SUM_GROUP);
}

kernel void norm_forward_rows(int G, NORM_FORWARD_ARGS) {
    NORM_PROLOGUE_ROWS;
    NORM_FORWARD_BODY(NORM_SUM_ROW);
}

/* Forward with given statistics (batch norm in eval mode): mean = rm[g], rstd =
 * 1 / sqrt(rv[g] + eps), kept in mean_out/rstd_out for the backward. */
#define NORM_EVAL_ARGS                                                                    \
    global const float *x, int xoff, global float *y, int yoff, int N, int S, int gstride, int nstride, \
        int wmode, int has_w, global const float *w, int woff, int has_b, global const float *b, int boff, \
        float eps, global float *mean_out, int moff, global float *rstd_out, int roff, \
        global const float *rm, int rmoff, int rmstr, global const float *rv, int rvoff, int rvstr
#define NORM_EVAL_BODY()                                                                  \
    do {                                                                                  \
        float mean = rm[rmoff + g * rmstr];                                               \
        float rstd = 1.0f / sqrt(rv[rvoff + g * rvstr] + eps);                            \
        if (lid_ == 0) {                                                                  \
            mean_out[moff + g] = mean;                                                    \
            rstd_out[roff + g] = rstd;                                                    \
        }                                                                                 \
        NORM_WRITE_Y();                                                                   \
    } while (0)

kernel void norm_forward_eval_groups(NORM_EVAL_ARGS) {
    NORM_PROLOGUE_GROUPS;
    NORM_EVAL_BODY();
}

kernel void norm_forward_eval_rows(int G, NORM_EVAL_ARGS) {
    NORM_PROLOGUE_ROWS;
    NORM_EVAL_BODY();
}

/*
 * Backward of the forwards for x, and the per-group sums that are batch norm's weight and
 * bias gradients. With ge = dy * w[s] (layer norm with a weight) or dy, and
 * xhat = (x - mean) * rstd:
 *   A = sum ge, B = sum ge * xhat over the group (written to suma/sumb[g] with sums);
 *   train: dx = scale * (ge - A / M - xhat * B / M)   (the statistics depend on x)
 *   eval:  dx = scale * ge                            (fixed running statistics)
 * scale = rstd * w[g] (batch norm with a weight) or rstd. The sums are always computed
 * (no barrier in a branch); scr holds 2L floats.
 */
#define NORM_BACKWARD_ARGS                                                                \
    global const float *x, int xoff, global const float *dy, int dyoff, global float *dx, int dxoff, int N, \
        int S, int gstride, int nstride, int wmode, int has_w, global const float *w, int woff, \
        global const float *mean_in, int moff, global const float *rstd_in, int roff, int train, int need_dx, \
        int sums, global float *suma, int aoff, global float *sumb, int boff
#define NORM_BACKWARD_BODY(SUM2)                                                          \
    do {                                                                                  \
        float M = (float)N * (float)S;                                                    \
        float mean = mean_in[moff + g], rstd = rstd_in[roff + g];                         \
        bool wps = wmode == KILN_NORM_W_ELEM && has_w;                                    \
        float a = 0.0f, pa = 0.0f, bb = 0.0f, pb = 0.0f;                                  \
        int cnt = 0;                                                                      \
        NORM_LOOP(rel, s, {                                                               \
            float ge = dy[dyoff + rel];                                                   \
            if (wps) ge *= w[woff + s];                                                   \
            float xh = (x[xoff + rel] - mean) * rstd;                                     \
            pa += ge;                                                                     \
            pb = fma(ge, xh, pb);                                                         \
            if (++cnt == NORM_CHUNK) {                                                    \
                a += pa;                                                                  \
                bb += pb;                                                                 \
                pa = pb = 0.0f;                                                           \
                cnt = 0;                                                                  \
            }                                                                             \
        });                                                                               \
        float2 AB = SUM2(a + pa, bb + pb);                                                \
        if (lid_ == 0 && sums) {                                                          \
            suma[aoff + g] = AB.x;                                                        \
            sumb[boff + g] = AB.y;                                                        \
        }                                                                                 \
        if (!need_dx) return;                                                             \
        float scale = (wmode == KILN_NORM_W_GROUP && has_w) ? rstd * w[woff + g] : rstd;  \
        float ma = AB.x / M, mb = AB.y / M;                                               \
        NORM_LOOP(rel, s, {                                                               \
            float ge = dy[dyoff + rel];                                                   \
            if (wps) ge *= w[woff + s];                                                   \
            float v = ge;                                                                 \
            if (train) v = ge - ma - (x[xoff + rel] - mean) * rstd * mb;                  \
            dx[dxoff + rel] = scale * v;                                                  \
        });                                                                               \
    } while (0)

kernel void norm_backward_groups(NORM_BACKWARD_ARGS, local float *scr) {
    NORM_PROLOGUE_GROUPS;
    NORM_BACKWARD_BODY(NORM_SUM2_GROUP);
}

kernel void norm_backward_rows(int G, NORM_BACKWARD_ARGS) {
    NORM_PROLOGUE_ROWS;
    NORM_BACKWARD_BODY(NORM_SUM2_ROW);
}

/*
 * ---- batch norm over planes (CPU) ----
 * Batch norm of a contiguous [N, C, S] tensor with long planes: channel c owns the N planes
 * x[n, c, 0 .. S) of S contiguous floats. Each plane is cut into segments of at most
 * BN_SEG elements, the units of work: unit u = n * nseg + j is segment j of plane n.
 * Work-item l of channel c's work-group visits units l, l + L, ... and reads each one with
 * float8 loads (plain contiguous loops POCL turns into vector code), instead of the group
 * kernels' element-by-element walk. The training forward computes each segment's mean and
 * squared deviations from it in two passes over the segment (the second from the core's
 * cache), combines segments by Chan et al.'s pairwise rule into a work-item's count, mean
 * and M2, and the work-items' triples in a fixed tree; like the group kernels it works on
 * x - k, k the channel's first element, so data far from zero sum small differences.
 * Everything depends only on the shapes and the launch shape: bit-reproducible.
 */
#define BN_SEG 1024

/* The lanes of v summed pairwise, in a fixed order. */
inline float bn_hsum8(float8 v) {
    float4 a = v.lo + v.hi;
    float2 b = a.lo + a.hi;
    return b.x + b.y;
}

/* Segment j of plane n of channel c: its first element's offset from channel c's first
 * element of image 0, and its length. */
#define BN_UNIT(u, nseg, S, C, off, len)                                                  \
    int n_ = (u) / (nseg), j_ = (u) - n_ * (nseg);                                        \
    int off = n_ * (C) * (S) + j_ * BN_SEG, len = min(BN_SEG, (S) - j_ * BN_SEG)

/* y = fma(x - mean, sg, bg) over the len floats at p into q; with act (the fused
 * kiln__batch_norm_relu, src/ops/norm.c) then y + r (when r is not NULL: the residual, at
 * the same offsets as x) and relu, each step computed as the unfused ops compute it (add:
 * y + r, relu: y < 0 ? 0 : y), so the results are the same bits. */
inline void bn_affine_seg(global const float *p, global float *q, int len, float mean, float sg, float bg, int act,
                          global const float *r) {
    int s = 0;
    if (!act) {
        for (; s + 8 <= len; s += 8) vstore8(fma(vload8(0, p + s) - mean, (float8)(sg), (float8)(bg)), 0, q + s);
        for (; s < len; s++) q[s] = fma(p[s] - mean, sg, bg);
        return;
    }
    for (; s + 8 <= len; s += 8) {
        float8 y = fma(vload8(0, p + s) - mean, (float8)(sg), (float8)(bg));
        if (r) y = y + vload8(0, r + s);
        vstore8(select(y, (float8)(0.0f), y < (float8)(0.0f)), 0, q + s);
    }
    for (; s < len; s++) {
        float y = fma(p[s] - mean, sg, bg);
        if (r) y = y + r[s];
        q[s] = y < 0.0f ? 0.0f : y;
    }
}

/*
 * Training forward (norm_forward's arguments for batch norm, with N, C, S): the batch
 * mean and biased variance of channel get_group_id(0), rstd = 1 / sqrt(var + eps) into
 * mean_out/rstd_out, the running statistics' momentum update (unbiased variance, torch's
 * order), then y = (x - mean) * rstd * w + b. scr holds 3L floats. N * S >= 2.
 */
kernel void bn_forward_planes(global const float *x, int xoff, global float *y, int yoff, int N, int C, int S,
                              int has_w, global const float *w, int woff, int has_b, global const float *b, int boff,
                              float eps, global float *mean_out, int moff, global float *rstd_out, int roff,
                              int update, float momentum, global float *rm, int rmoff, int rmstr, global float *rv,
                              int rvoff, int rvstr, int act, int has_r, global const float *res, int resoff,
                              local float *scr) {
    int c = get_group_id(0), L = get_local_size(0), lid = get_local_id(0);
    int nseg = (S + BN_SEG - 1) / BN_SEG, units = N * nseg;
    global const float *xc = x + xoff + c * S;
    float k = xc[0];
    float cnt = 0.0f, mu = 0.0f, m2 = 0.0f; /* of x - k over this work-item's units */
    for (int u = lid; u < units; u += L) {
        BN_UNIT(u, nseg, S, C, off, len);
        global const float *p = xc + off;
        float8 a8 = (float8)(0.0f);
        int s = 0;
        for (; s + 8 <= len; s += 8) a8 += vload8(0, p + s) - k;
        float sum = bn_hsum8(a8);
        for (; s < len; s++) sum += p[s] - k;
        float fl = (float)len, pm = sum / fl;
        float8 q8 = (float8)(0.0f);
        for (s = 0; s + 8 <= len; s += 8) {
            float8 d = (vload8(0, p + s) - k) - pm;
            q8 = fma(d, d, q8);
        }
        float q = bn_hsum8(q8);
        for (; s < len; s++) {
            float d = (p[s] - k) - pm;
            q = fma(d, d, q);
        }
        float nc = cnt + fl, delta = pm - mu;
        mu += delta * (fl / nc);
        m2 += q + delta * delta * (cnt * fl / nc);
        cnt = nc;
    }
    local float *sc = scr, *sm = scr + L, *sq = scr + 2 * L;
    sc[lid] = cnt;
    sm[lid] = mu;
    sq[lid] = m2;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = L >> 1; h > 0; h >>= 1) {
        if (lid < h && sc[lid + h] > 0.0f) {
            float ca = sc[lid], cb = sc[lid + h], nc = ca + cb, delta = sm[lid + h] - sm[lid];
            sm[lid] += delta * (cb / nc);
            sq[lid] += sq[lid + h] + delta * delta * (ca * cb / nc);
            sc[lid] = nc;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float M = (float)N * (float)S;
    float mean = k + sm[0], var = sq[0] / M;
    float rstd = 1.0f / sqrt(var + eps);
    if (lid == 0) {
        mean_out[moff + c] = mean;
        rstd_out[roff + c] = rstd;
        if (update) {
            float unbiased = var * (M / (M - 1.0f));
            int im = rmoff + c * rmstr, iv = rvoff + c * rvstr;
            rm[im] = momentum * mean + (1.0f - momentum) * rm[im];
            rv[iv] = momentum * unbiased + (1.0f - momentum) * rv[iv];
        }
    }
    float sg = has_w ? rstd * w[woff + c] : rstd, bg = has_b ? b[boff + c] : 0.0f;
    global float *yc = y + yoff + c * S;
    global const float *rc = has_r ? res + resoff + c * S : 0;
    for (int u = lid; u < units; u += L) {
        BN_UNIT(u, nseg, S, C, off, len);
        bn_affine_seg(xc + off, yc + off, len, mean, sg, bg, act, rc ? rc + off : 0);
    }
}

/* Eval forward with the running statistics (norm_forward_eval's arguments for batch norm,
 * with N, C, S): one work-item per unit of every channel, no reduction. */
kernel void bn_forward_eval_planes(global const float *x, int xoff, global float *y, int yoff, int N, int C, int S,
                                   int has_w, global const float *w, int woff, int has_b, global const float *b,
                                   int boff, float eps, global float *mean_out, int moff, global float *rstd_out,
                                   int roff, global const float *rm, int rmoff, int rmstr, global const float *rv,
                                   int rvoff, int rvstr, int act, int has_r, global const float *res, int resoff) {
    int q = get_global_id(0), nseg = (S + BN_SEG - 1) / BN_SEG;
    if (q >= N * C * nseg) return;
    int j = q % nseg, nc = q / nseg, c = nc % C;
    float mean = rm[rmoff + c * rmstr], rstd = 1.0f / sqrt(rv[rvoff + c * rvstr] + eps);
    if (q < C * nseg && j == 0) { /* image 0's units: one per channel */
        mean_out[moff + c] = mean;
        rstd_out[roff + c] = rstd;
    }
    float sg = has_w ? rstd * w[woff + c] : rstd, bg = has_b ? b[boff + c] : 0.0f;
    int off = nc * S + j * BN_SEG, len = min(BN_SEG, S - j * BN_SEG);
    bn_affine_seg(x + xoff + off, y + yoff + off, len, mean, sg, bg, act, has_r ? res + resoff + off : 0);
}

/*
 * Backward (norm_backward's arguments for batch norm, with N, C, S), channel
 * get_group_id(0): A = sum dy and B = sum dy * xhat over the channel (to suma/sumb[c] when
 * sums: the bias and weight gradients), then with need_dx
 *   train: dx = scale * (dy - A / M - xhat * B / M),   eval: dx = scale * dy,
 * scale = rstd * w[c] (or rstd). B is rstd * sum dy * (x - mean). scr holds 2L floats.
 * With act (the fused kiln__batch_norm_relu), dy is relu's input gradient, computed from
 * the op's output gradient g and its output yv as relu's backward does (yv <= 0 ? 0 : g),
 * and with need_dr also written to dr (the residual's gradient).
 */
kernel void bn_backward_planes(global const float *x, int xoff, global const float *dy, int dyoff, global float *dx,
                               int dxoff, int N, int C, int S, int has_w, global const float *w, int woff,
                               global const float *mean_in, int moff, global const float *rstd_in, int roff, int train,
                               int need_dx, int sums, global float *suma, int aoff, global float *sumb, int boff,
                               int act, global const float *yv, int yvoff, int need_dr, global float *dr, int droff,
                               local float *scr) {
    int c = get_group_id(0), L = get_local_size(0), lid = get_local_id(0);
    int nseg = (S + BN_SEG - 1) / BN_SEG, units = N * nseg;
    float mean = mean_in[moff + c], rstd = rstd_in[roff + c];
    global const float *xc = x + xoff + c * S, *gc = dy + dyoff + c * S, *vc = yv + yvoff + c * S;
    float ta = 0.0f, tb = 0.0f;
    for (int u = lid; u < units; u += L) {
        BN_UNIT(u, nseg, S, C, off, len);
        global const float *p = xc + off, *g = gc + off, *v = vc + off;
        float8 a8 = (float8)(0.0f), b8 = (float8)(0.0f);
        int s = 0;
        for (; s + 8 <= len; s += 8) {
            float8 d = vload8(0, g + s);
            if (act) d = select(d, (float8)(0.0f), vload8(0, v + s) <= (float8)(0.0f));
            a8 += d;
            b8 = fma(d, vload8(0, p + s) - mean, b8);
        }
        float a = bn_hsum8(a8), bb = bn_hsum8(b8);
        for (; s < len; s++) {
            float d = act && v[s] <= 0.0f ? 0.0f : g[s];
            a += d;
            bb = fma(d, p[s] - mean, bb);
        }
        ta += a;
        tb += bb;
    }
    float2 AB = norm_group_sum2(scr, ta, tb);
    AB.y *= rstd;
    if (lid == 0 && sums) {
        suma[aoff + c] = AB.x;
        sumb[boff + c] = AB.y;
    }
    if (!need_dx && !need_dr) return;
    float M = (float)N * (float)S;
    float scale = has_w ? rstd * w[woff + c] : rstd, ma = AB.x / M, mb = AB.y / M * rstd;
    global float *dc = dx + dxoff + c * S, *rc = dr + droff + c * S;
    for (int u = lid; u < units; u += L) {
        BN_UNIT(u, nseg, S, C, off, len);
        global const float *p = xc + off, *g = gc + off, *v = vc + off;
        global float *q = dc + off, *qr = rc + off;
        int s = 0;
        if (act) {
            for (; s + 8 <= len; s += 8) {
                float8 d = select(vload8(0, g + s), (float8)(0.0f), vload8(0, v + s) <= (float8)(0.0f));
                if (need_dr) vstore8(d, 0, qr + s);
                if (!need_dx) continue;
                if (train)
                    vstore8(scale * (d - ma - (vload8(0, p + s) - mean) * mb), 0, q + s);
                else
                    vstore8(scale * d, 0, q + s);
            }
            for (; s < len; s++) {
                float d = v[s] <= 0.0f ? 0.0f : g[s];
                if (need_dr) qr[s] = d;
                if (need_dx) q[s] = train ? scale * (d - ma - (p[s] - mean) * mb) : scale * d;
            }
        } else if (train) {
            for (; s + 8 <= len; s += 8) {
                float8 v8 = vload8(0, g + s) - ma - (vload8(0, p + s) - mean) * mb;
                vstore8(scale * v8, 0, q + s);
            }
            for (; s < len; s++) q[s] = scale * (g[s] - ma - (p[s] - mean) * mb);
        } else {
            for (; s + 8 <= len; s += 8) vstore8(scale * vload8(0, g + s), 0, q + s);
            for (; s < len; s++) q[s] = scale * g[s];
        }
    }
}

/*
 * ---- layer norm over rows (CPU) ----
 * Layer norm of G contiguous rows of D floats, a work-item per row that reads it with
 * float8 loads. The rows kernels above run a work-item per row too, but POCL vectorises
 * them across work-items: eight rows at once, each lane a gather D floats from the next.
 * Here the row itself is the vector: lane l sums elements l, l + 8, ... (in chunks of
 * NORM_CHUNK, as NORM_ACC_ADD), the lanes are added pairwise and the D % 8 tail last. The
 * statistics are the rows kernels' (the mean of x - x[0] added to x[0], then the mean of
 * squared deviations from the mean), each output and gradient element the same
 * expression; only the order of the sums differs.
 */
#define LN_SUM8(acc, part, cnt, v)                                                        \
    do {                                                                                  \
        part += (v);                                                                      \
        if (++cnt == NORM_CHUNK) {                                                        \
            acc += part;                                                                  \
            part = (float8)0.0f;                                                          \
            cnt = 0;                                                                      \
        }                                                                                 \
    } while (0)

kernel void ln_forward_vec(int G, global const float *restrict x, int xoff, global float *restrict y, int yoff,
                           int D, int has_w, global const float *restrict w, int woff, int has_b,
                           global const float *restrict b, int boff, float eps, global float *restrict mean_out,
                           int moff, global float *restrict rstd_out, int roff) {
    int g = get_global_id(0);
    if (g >= G || D <= 0) return;
    global const float *p = x + xoff + g * D;
    global float *q = y + yoff + g * D;
    int D8 = D & ~7;
    float M = (float)D, k = p[0];
    float8 acc = (float8)0.0f, part = (float8)0.0f;
    int cnt = 0;
    for (int s = 0; s < D8; s += 8) LN_SUM8(acc, part, cnt, vload8(0, p + s) - k);
    float tail = 0.0f;
    for (int s = D8; s < D; s++) tail += p[s] - k;
    float mean = k + (bn_hsum8(acc + part) + tail) / M;
    acc = part = (float8)0.0f;
    cnt = 0;
    for (int s = 0; s < D8; s += 8) {
        float8 d = vload8(0, p + s) - mean;
        LN_SUM8(acc, part, cnt, d * d);
    }
    tail = 0.0f;
    for (int s = D8; s < D; s++) tail += (p[s] - mean) * (p[s] - mean);
    float var = (bn_hsum8(acc + part) + tail) / M;
    float rstd = 1.0f / sqrt(var + eps);
    mean_out[moff + g] = mean;
    rstd_out[roff + g] = rstd;
    int s = 0;
    for (; s < D8; s += 8) {
        float8 v = (vload8(0, p + s) - mean) * rstd;
        if (has_w) v *= vload8(0, w + woff + s);
        if (has_b) v += vload8(0, b + boff + s);
        vstore8(v, 0, q + s);
    }
    for (; s < D; s++) {
        float v = (p[s] - mean) * rstd;
        if (has_w) v *= w[woff + s];
        if (has_b) v += b[boff + s];
        q[s] = v;
    }
}

/* dx of ln_forward_vec's rows: norm_backward_rows' training rule (ge = dy * w, A and B the
 * row's sums of ge and ge * xhat, dx = rstd * (ge - A / D - xhat * B / D)). */
kernel void ln_backward_vec(int G, global const float *restrict x, int xoff, global const float *restrict dy,
                            int dyoff, global float *restrict dx, int dxoff, int D, int has_w,
                            global const float *restrict w, int woff, global const float *restrict mean_in, int moff,
                            global const float *restrict rstd_in, int roff) {
    int g = get_global_id(0);
    if (g >= G || D <= 0) return;
    global const float *p = x + xoff + g * D, *e = dy + dyoff + g * D;
    global float *q = dx + dxoff + g * D;
    global const float *wv = w + woff;
    int D8 = D & ~7;
    float M = (float)D, mean = mean_in[moff + g], rstd = rstd_in[roff + g];
    float8 a8 = (float8)0.0f, pa = (float8)0.0f, b8 = (float8)0.0f, pb = (float8)0.0f;
    int cnt = 0;
    for (int s = 0; s < D8; s += 8) {
        float8 ge = vload8(0, e + s);
        if (has_w) ge *= vload8(0, wv + s);
        float8 xh = (vload8(0, p + s) - mean) * rstd;
        pa += ge;
        pb = fma(ge, xh, pb);
        if (++cnt == NORM_CHUNK) {
            a8 += pa;
            b8 += pb;
            pa = pb = (float8)0.0f;
            cnt = 0;
        }
    }
    float ta = 0.0f, tb = 0.0f;
    for (int s = D8; s < D; s++) {
        float ge = has_w ? e[s] * wv[s] : e[s];
        ta += ge;
        tb = fma(ge, (p[s] - mean) * rstd, tb);
    }
    float ma = (bn_hsum8(a8 + pa) + ta) / M, mb = (bn_hsum8(b8 + pb) + tb) / M;
    int s = 0;
    for (; s < D8; s += 8) {
        float8 ge = vload8(0, e + s);
        if (has_w) ge *= vload8(0, wv + s);
        vstore8(rstd * (ge - ma - (vload8(0, p + s) - mean) * rstd * mb), 0, q + s);
    }
    for (; s < D; s++) {
        float ge = has_w ? e[s] * wv[s] : e[s];
        q[s] = rstd * (ge - ma - (p[s] - mean) * rstd * mb);
    }
}

/* Layer norm's weight and bias gradients of column j of the [R, D] layout, summing over the
 * rows in order (partials of 32 rows, then their total, so the rounding error grows with
 * R / 32 + 32 rather than R). */
inline void ln_param_col(global const float *x, int xoff, global const float *dy, int dyoff, global const float *mean,
                         int moff, global const float *rstd, int roff, int R, int D, int j, int need_w,
                         global float *dw, int dwoff, int need_b, global float *db, int dboff) {
    float tw = 0.0f, tb = 0.0f;
    for (int r0 = 0; r0 < R; r0 += 32) {
        int r1 = min(R, r0 + 32);
        float pw = 0.0f, pb = 0.0f;
        for (int r = r0; r < r1; r++) {
            float d = dy[dyoff + r * D + j];
            pw = fma(d, (x[xoff + r * D + j] - mean[moff + r]) * rstd[roff + r], pw);
            pb += d;
        }
        tw += pw;
        tb += pb;
    }
    if (need_w) dw[dwoff + j] = tw;
    if (need_b) db[dboff + j] = tb;
}

/* One work-item per normalised element j. */
kernel void ln_param_grad(global const float *x, int xoff, global const float *dy, int dyoff,
                          global const float *mean, int moff, global const float *rstd, int roff, int R, int D,
                          int need_w, global float *dw, int dwoff, int need_b, global float *db, int dboff) {
    int j = get_global_id(0);
    if (j < D) ln_param_col(x, xoff, dy, dyoff, mean, moff, rstd, roff, R, D, j, need_w, dw, dwoff, need_b, db, dboff);
}

/* ln_param_grad on CPUs: work-item c takes columns 8c .. 8c + 7 as the lanes of float8s
 * (POCL vectorises neither of ln_param_grad's loops: the row loop is a float reduction, the
 * work-item loop has a loop inside), each lane summing its column in ln_param_col's order,
 * so the results are ln_param_grad's bits; the last work-item takes the D % 8 columns one
 * at a time. */
kernel void ln_param_grad_vec(global const float *restrict x, int xoff, global const float *restrict dy, int dyoff,
                              global const float *restrict mean, int moff, global const float *restrict rstd,
                              int roff, int R, int D, int need_w, global float *restrict dw, int dwoff, int need_b,
                              global float *restrict db, int dboff) {
    int j0 = get_global_id(0) * 8;
    if (j0 >= D) return;
    if (j0 + 8 > D) {
        for (int j = j0; j < D; j++)
            ln_param_col(x, xoff, dy, dyoff, mean, moff, rstd, roff, R, D, j, need_w, dw, dwoff, need_b, db, dboff);
        return;
    }
    float8 tw = (float8)0.0f, tb = (float8)0.0f;
    for (int r0 = 0; r0 < R; r0 += 32) {
        int r1 = min(R, r0 + 32);
        float8 pw = (float8)0.0f, pb = (float8)0.0f;
        for (int r = r0; r < r1; r++) {
            float8 d = vload8(0, dy + dyoff + r * D + j0);
            pw = fma(d, (vload8(0, x + xoff + r * D + j0) - mean[moff + r]) * rstd[roff + r], pw);
            pb += d;
        }
        tw += pw;
        tb += pb;
    }
    if (need_w) vstore8(tw, 0, dw + dwoff + j0);
    if (need_b) vstore8(tb, 0, db + dboff + j0);
}

/* ---- dropout: Philox4x32-10, the same generator and stream as cl_kernels/random.cl ---- */

/* Dropout works on words of NORM_DROP_WORD consecutive elements, one work-item per word
 * (a plain loop the compiler vectorises), and keeps the mask as one bit per element.
 * Element i keeps its value when the uniform (x0 >> 8) * 2^-24 of stream position ctr + i
 * (common.cl's KILN_PHILOX_X01, kiln_rand_uniform's layout: element i owns the block) is
 * >= p. */
#define NORM_DROP_WORD 32

/* dst[i] = src[i] * (u_i >= p ? scale : 0) for the n elements, u_i the value
 * kiln_rand_uniform(0, 1) draws at the same stream position. A multiplication, as torch's
 * input * mask: a dropped NaN or Inf stays NaN. With want_mask, bit j of mask[w] is the
 * keep bit of element w * 32 + j (zero past n), for dropout_mask_apply in the backward.
 * src and dst in KILN_HALF's build are halves (the product in f32, rounded once). */
kernel void dropout_apply(global const KILN_S *restrict src, int soff, global KILN_S *restrict dst, int doff, int n,
                          uint key0, uint key1, uint ctr_lo, uint ctr_hi, float p, float scale, int want_mask,
                          global uint *restrict mask, int moff) {
    int w = get_global_id(0);
    if (w > (n - 1) / NORM_DROP_WORD) return; /* n >= 1: the host launches nothing for n = 0 */
    int i0 = w * NORM_DROP_WORD, cnt = min(NORM_DROP_WORD, n - i0);
    global const KILN_S *s = src + soff + i0;
    global KILN_S *d = dst + doff + i0;
    uint bits = 0u;
    for (int j = 0; j < cnt; j++) {
        uint x0, x1; /* (x1 unused: dead code) */
        KILN_PHILOX_X01(x0, x1, (uint)(i0 + j), key0, key1, ctr_lo, ctr_hi);
        bool keep = (float)(x0 >> 8) * 0x1.0p-24f >= p;
        KILN_ST(d, j, KILN_LD(s, j) * (keep ? scale : 0.0f));
        bits |= (keep ? 1u : 0u) << j;
    }
    if (want_mask) mask[moff + w] = bits;
}

/* The backward: dst[i] = src[i] * (bit i of the forward's mask ? scale : 0). */
kernel void dropout_mask_apply(global const float *restrict src, int soff, global float *restrict dst, int doff,
                               int n, global const uint *restrict mask, int moff, float scale) {
    int w = get_global_id(0);
    if (w > (n - 1) / NORM_DROP_WORD) return; /* n >= 1: the host launches nothing for n = 0 */
    int i0 = w * NORM_DROP_WORD, cnt = min(NORM_DROP_WORD, n - i0);
    global const float *s = src + soff + i0;
    global float *d = dst + doff + i0;
    uint bits = mask[moff + w];
    for (int j = 0; j < cnt; j++) d[j] = s[j] * (((bits >> j) & 1u) ? scale : 0.0f);
}

/* ---- embedding ------------------------------------------------------------------------ */

/* out[r, j] = w[idx[r], j] for the nidx indices and dim columns; w is any 2-D view (offset,
 * strides) of num rows. An index outside [0, num) is recorded in the index-error buffer E
 * as launch `site` (kiln_bad_index; the host reports it at its next wait) and its row of
 * the output is 0: nothing is read out of bounds. */
kernel void embedding_forward(global const float *w, int woff, int ws0, int ws1, global const int *idx, int ioff,
                              global float *out, int ooff, int nidx, int dim, int num, global int *E, int site) {
    int i = get_global_id(0);
    if (i >= nidx * dim) return;
    int r = i / dim, j = i - r * dim;
    int v = idx[ioff + r];
    bool bad = v < 0 || v >= num;
    if (bad && j == 0) kiln_bad_index(E, site, v, r);
    out[ooff + i] = bad ? 0.0f : w[woff + v * ws0 + j * ws1];
}

/* The backward's CSR of positions per weight row, built on the device without atomics:
 * rowptr[r] (r in [0, num]) counts the positions whose index is below r, and position k
 * goes to pos[rowptr[idx[k]] + the positions before k with the same index], so each row's
 * positions are in increasing order, as the host's counting sort put them. Bad indices
 * (recorded by the forward) are left out. O(num * nidx + nidx^2 / 2) comparisons:
 * src/ops/norm.c takes the host's sort above a size. */
kernel void embedding_rowptr(global const int *idx, int ioff, int nidx, int num, global int *rowptr, int rpoff) {
    int r = get_global_id(0);
    if (r > num) return;
    int c = 0;
    for (int k = 0; k < nidx; k++) {
        int v = idx[ioff + k];
        c += v >= 0 && v < r;
    }
    rowptr[rpoff + r] = c;
}

kernel void embedding_positions(global const int *idx, int ioff, int nidx, int num, global const int *rowptr,
                                int rpoff, global int *pos, int poff) {
    int k = get_global_id(0);
    if (k >= nidx) return;
    int v = idx[ioff + k];
    if (v < 0 || v >= num) return;
    int rank = 0;
    for (int j = 0; j < k; j++) rank += idx[ioff + j] == v;
    pos[poff + rowptr[rpoff + v] + rank] = k;
}

/* dw[r, j] = sum of dy[k, j] over the positions k whose index is r, in increasing k:
 * rowptr/pos is the CSR of positions per weight row (built above or on the host). No
 * atomics. */
kernel void embedding_backward(global const float *dy, int dyoff, global const int *rowptr, int rpoff,
                               global const int *pos, int poff, global float *dw, int dwoff, int num, int dim) {
    int i = get_global_id(0);
    if (i >= num * dim) return;
    int r = i / dim, j = i - r * dim;
    float acc = 0.0f;
    int k1 = rowptr[rpoff + r + 1];
    for (int k = rowptr[rpoff + r]; k < k1; k++) acc += dy[dyoff + pos[poff + k] * dim + j];
    dw[dwoff + i] = acc;
}
