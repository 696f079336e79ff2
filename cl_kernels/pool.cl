/* cl_kernels/pool.cl - 2-D pooling and upsampling over NCHW planes (src/ops/pool.c):
 * max_pool2d (with argmax indices), avg_pool2d, global average pooling, nearest and
 * bilinear upsampling, forward and backward.
 *
 * Forward kernels run one work-item per output element (a 3-D launch over columns, rows and
 * planes: no index divisions), max_pool2d's one per output row (see POOL_ROW_IDS), and
 * read the input through its strides (any view; no copy). Backward kernels use no atomics,
 * so they are deterministic: in general one work-item per input element GATHERS from the
 * outputs whose window (or interpolation stencil) holds it, in the raster order of the
 * outputs (for max/avg pooling the same additions in the same order as PyTorch's CPU
 * scatter); when pooling windows do not overlap, one work-item per output (max: per output
 * row) writes its own box of the input (the *_tile kernels).
 *
 * Built with -DKILN_HALF (src/ops/cast.c), the forward kernels read and write f16 or bf16
 * (KILN_S, common.cl) and compute in f32; gradients are f32 in every build.
 *
 * Contraction of a*b+c into fma is off so that every device rounds alike. */
#pragma OPENCL FP_CONTRACT OFF

/* The pooling geometry, shared with src/ops/pool.c (cl_kernels/kiln_shared.h). */
typedef kiln_pool_geom pool_geom;

/* Index type of the bilinear source coordinates (host's choice: 64-bit only when
 * in * 2 * out could overflow 32 bits). */
#ifdef POOL_WIDE
typedef long pidx;
#else
typedef int pidx;
#endif

/* Offset of plane p (= n*C + c) of the input, through the strides. */
inline int plane_off(const pool_geom *g, int p) {
    return g->xoff + (g->merged ? p * g->xsc : (p / g->C) * g->xsn + (p % g->C) * g->xsc);
}

/* Every kernel but global_avg_pool2d_fwd and the max_pool2d row kernels is launched 3-D:
 * x = column, y = row, z = plane, x and y rounded up to the work-group; the extra
 * work-items return at once. */
#define POOL_IDS(NX, NY)                                                                       \
    int cx = get_global_id(0), cy = get_global_id(1), p = get_global_id(2);                    \
    if (cx >= (NX) || cy >= (NY)) return;

/* ---- max_pool2d --------------------------------------------------------------------- */

/* max_pool2d forward and its tile backward run one work-item per output row (a 1-D launch
 * over the g.n * OH rows, row q = plane * OH + oh) and loop over the row's outputs: POCL
 * runs a work-group's items one after another on a core and vectorises plain inner loops,
 * which a work-item per output (3-D launch) did not give it. */
#define POOL_ROW_IDS                                                                           \
    int q = get_global_id(0);                                                                  \
    if (q >= g.n * g.OH) return;                                                               \
    int p = q / g.OH, oh = q - p * g.OH;

/* As PyTorch's CPU kernel: the window's first valid element is the default index, a value
 * wins when it is greater than the running max or NaN (so NaN propagates, the last NaN's
 * index is kept) and ties keep the first. 2x2 windows with stride 2, no padding or
 * dilation, on rows of unit stride (max_pool2d(2)) take a straight-line form of the same
 * comparisons, in the same order, that vectorises; a row whose windows are clipped (ceil
 * mode) and every other geometry take the general loop. */
#define MAX_POOL_TAKE(v, idx)                                                                  \
    do {                                                                                       \
        bool take_ = ((v) > m) | isnan(v);                                                     \
        m = take_ ? (v) : m;                                                                   \
        mi = take_ ? (idx) : mi;                                                               \
    } while (0)
#define MAX_POOL_FWD(name, WRITE_IDX)                                                          \
    kernel void name(global const KILN_S *x, global KILN_S *y, int yoff, global int *ind, int ioff, \
                     pool_geom g) {                                                            \
        POOL_ROW_IDS                                                                           \
        int hs = oh * g.sh - g.ph, he = min(hs + (g.kh - 1) * g.dh + 1, g.H);                  \
        if (hs < 0) hs += (-hs + g.dh - 1) / g.dh * g.dh;                                      \
        int xb = plane_off(&g, p);                                                             \
        global KILN_S *yr = y + yoff + q * g.OW;                                               \
        global int *ir = ind + ioff + q * g.OW;                                                \
        (void)ir;                                                                              \
        if (g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 &&     \
            g.dh == 1 && g.dw == 1 && g.xsw == 1 && he - hs == 2 && 2 * g.OW <= g.W) {        \
            global const KILN_S *r0 = x + xb + hs * g.xsh, *r1 = r0 + g.xsh;                   \
            int i0 = hs * g.W, i1 = i0 + g.W;                                                  \
            for (int ow = 0; ow < g.OW; ow++) {                                                \
                int c = 2 * ow;                                                                \
                float m = KILN_LD(r0, c);                                                      \
                int mi = i0 + c;                                                               \
                MAX_POOL_TAKE(KILN_LD(r0, c + 1), i0 + c + 1);                                 \
                MAX_POOL_TAKE(KILN_LD(r1, c), i1 + c);                                         \
                MAX_POOL_TAKE(KILN_LD(r1, c + 1), i1 + c + 1);                                 \
                KILN_ST(yr, ow, m);                                                            \
                WRITE_IDX;                                                                     \
            }                                                                                  \
            return;                                                                            \
        }                                                                                      \
        for (int ow = 0; ow < g.OW; ow++) {                                                    \
            int ws = ow * g.sw - g.pw, we = min(ws + (g.kw - 1) * g.dw + 1, g.W);              \
            if (ws < 0) ws += (-ws + g.dw - 1) / g.dw * g.dw;                                  \
            float m = -INFINITY;                                                               \
            int mi = hs * g.W + ws;                                                            \
            for (int h = hs; h < he; h += g.dh)                                                \
                for (int w = ws; w < we; w += g.dw)                                            \
                    MAX_POOL_TAKE(KILN_LD(x, xb + h * g.xsh + w * g.xsw), h * g.W + w);        \
            KILN_ST(yr, ow, m);                                                                \
            WRITE_IDX;                                                                         \
        }                                                                                      \
    }

MAX_POOL_FWD(max_pool2d_fwd, (void)mi)
MAX_POOL_FWD(max_pool2d_fwd_idx, ir[ow] = mi)

/* First output index o with o*s - pad + (k-1)*d >= h (a window reaching h), clamped at 0. */
inline int pool_first(int h, int k, int s, int pad, int d) {
    int a = h + pad - (k - 1) * d;
    return a > 0 ? (a + s - 1) / s : 0;
}

/* gin (contiguous, x's shape) = sum of gout over the windows whose saved argmax is this
 * element. */
kernel void max_pool2d_bwd(global const float *go, int gooff, global const int *ind, int ioff, global float *gi,
                           int gioff, pool_geom g) {
    POOL_IDS(g.W, g.H)
    int w = cx, h = cy;
    int oh0 = pool_first(h, g.kh, g.sh, g.ph, g.dh), oh1 = min((h + g.ph) / g.sh, g.OH - 1);
    int ow0 = pool_first(w, g.kw, g.sw, g.pw, g.dw), ow1 = min((w + g.pw) / g.sw, g.OW - 1);
    int target = h * g.W + w, base = p * g.OH * g.OW;
    float acc = 0.0f;
    for (int oh = oh0; oh <= oh1; oh++) {
        for (int ow = ow0; ow <= ow1; ow++) {
            int o = base + oh * g.OW + ow;
            acc += ind[ioff + o] == target ? go[gooff + o] : 0.0f;
        }
    }
    gi[gioff + (p * g.H + h) * g.W + w] = acc;
}

/* Output (oh, ow)'s box of the input when windows do not overlap (stride >= the window's
 * span on both axes): rows [oh*sh - ph, +sh) and columns [ow*sw - pw, +sw) clipped to the
 * input, the last output row (column) extended to the input's end. The boxes partition
 * the input, so a backward launched over the outputs writes every input element once. */
inline void tile_box(const pool_geom *g, int oh, int ow, int *h0, int *h1, int *w0, int *w1) {
    int hs = oh * g->sh - g->ph, ws = ow * g->sw - g->pw;
    *h0 = max(hs, 0);
    *w0 = max(ws, 0);
    *h1 = oh == g->OH - 1 ? g->H : min(hs + g->sh, g->H);
    *w1 = ow == g->OW - 1 ? g->W : min(ws + g->sw, g->W);
}

/* max_pool2d backward for non-overlapping windows, one work-item per output row (as the
 * forward): the input rows of its boxes (whole rows: the boxes of a row of outputs tile
 * them) are zeroed, then each output's gradient is written at its argmax, which lies in
 * its own box (the same values as the gather). An index outside this work-item's rows is
 * skipped, so no work-item writes another's elements. */
kernel void max_pool2d_bwd_tile(global const float *go, int gooff, global const int *ind, int ioff,
                                global float *gi, int gioff, pool_geom g) {
    POOL_ROW_IDS
    int h0, h1, w0, w1;
    tile_box(&g, oh, 0, &h0, &h1, &w0, &w1);
    global const float *gr = go + gooff + q * g.OW;
    global const int *ir = ind + ioff + q * g.OW;
    global float *gp = gi + gioff + p * g.H * g.W;
    int lo = h0 * g.W, hi = h1 * g.W;
    for (int e = lo; e < hi; e++) gp[e] = 0.0f;
    for (int ow = 0; ow < g.OW; ow++) {
        int mi = ir[ow];
        if (mi >= lo && mi < hi) gp[mi] = gr[ow];
    }
}

/* ---- avg_pool2d --------------------------------------------------------------------- */

/* Window of output (oh, ow) clipped to the input, and its divisor, as PyTorch: the
 * divisor counts the padding the window covers (not beyond it) when count_include_pad. */
inline int avg_window(const pool_geom *g, int oh, int ow, int *hs, int *he, int *ws, int *we) {
    int h0 = oh * g->sh - g->ph, w0 = ow * g->sw - g->pw;
    int h1 = min(h0 + g->kh, g->H + g->ph), w1 = min(w0 + g->kw, g->W + g->pw);
    int pool = (h1 - h0) * (w1 - w0);
    h0 = max(h0, 0);
    w0 = max(w0, 0);
    h1 = min(h1, g->H);
    w1 = min(w1, g->W);
    *hs = h0, *he = h1, *ws = w0, *we = w1;
    return g->flag ? pool : (h1 - h0) * (w1 - w0);
}

kernel void avg_pool2d_fwd(global const KILN_S *x, global KILN_S *y, int yoff, pool_geom g) {
    POOL_IDS(g.OW, g.OH)
    int ow = cx, oh = cy;
    int hs, he, ws, we;
    int div = avg_window(&g, oh, ow, &hs, &he, &ws, &we);
    int xb = plane_off(&g, p);
    float sum = 0.0f;
    for (int h = hs; h < he; h++)
        for (int w = ws; w < we; w++) sum += KILN_LD(x, xb + h * g.xsh + w * g.xsw);
    /* an empty window (only possible in ceil mode at the edge) gives 0 as PyTorch */
    KILN_ST(y, yoff + (p * g.OH + oh) * g.OW + ow, (hs < he && ws < we) ? sum / (float)div : 0.0f);
}

kernel void avg_pool2d_bwd(global const float *go, int gooff, global float *gi, int gioff, pool_geom g) {
    POOL_IDS(g.W, g.H)
    int w = cx, h = cy;
    int oh0 = pool_first(h, g.kh, g.sh, g.ph, 1), oh1 = min((h + g.ph) / g.sh, g.OH - 1);
    int ow0 = pool_first(w, g.kw, g.sw, g.pw, 1), ow1 = min((w + g.pw) / g.sw, g.OW - 1);
    int base = gooff + p * g.OH * g.OW;
    float acc = 0.0f;
    for (int oh = oh0; oh <= oh1; oh++) {
        for (int ow = ow0; ow <= ow1; ow++) {
            int hs, he, ws, we;
            int div = avg_window(&g, oh, ow, &hs, &he, &ws, &we);
            acc += go[base + oh * g.OW + ow] / (float)div;
        }
    }
    gi[gioff + (p * g.H + h) * g.W + w] = acc;
}

/* avg_pool2d backward for non-overlapping windows, one work-item per output: gout/divisor
 * on its window's elements, zero in the rest of its box. */
kernel void avg_pool2d_bwd_tile(global const float *go, int gooff, global float *gi, int gioff, pool_geom g) {
    POOL_IDS(g.OW, g.OH)
    int hs, he, ws, we, h0, h1, w0, w1;
    int div = avg_window(&g, cy, cx, &hs, &he, &ws, &we);
    float v = go[gooff + (p * g.OH + cy) * g.OW + cx] / (float)div;
    tile_box(&g, cy, cx, &h0, &h1, &w0, &w1);
    global float *gp = gi + gioff + p * g.H * g.W;
    for (int h = h0; h < h1; h++)
        for (int w = w0; w < w1; w++) gp[h * g.W + w] = (h >= hs && h < he && w >= ws && w < we) ? v : 0.0f;
}

/* ---- global average pooling ----------------------------------------------------------- */

/* One work-item per plane (1-D launch); each row is summed on its own and the row sums
 * added, so the rounding error grows with H + W rather than H * W. */
kernel void global_avg_pool2d_fwd(global const KILN_S *x, global KILN_S *y, int yoff, pool_geom g) {
    int p = get_global_id(0);
    if (p >= g.n) return;
    int xb = plane_off(&g, p);
    float sum = 0.0f;
    for (int h = 0; h < g.H; h++) {
        float rs = 0.0f;
        for (int w = 0; w < g.W; w++) rs += KILN_LD(x, xb + h * g.xsh + w * g.xsw);
        sum += rs;
    }
    KILN_ST(y, yoff + p, sum / (float)(g.H * g.W));
}

kernel void global_avg_pool2d_bwd(global const float *go, int gooff, global float *gi, int gioff, pool_geom g) {
    POOL_IDS(g.W, g.H)
    gi[gioff + (p * g.H + cy) * g.W + cx] = go[gooff + p] / (float)(g.H * g.W);
}

/* ---- nearest upsampling ------------------------------------------------------------- */

/* PyTorch's 'nearest' source index: the identity and x2 cases exactly, otherwise
 * min(floor(o * scale), in - 1) in float with scale = (float)in / out. */
inline int nearest_src(int o, int in, int out, float scale) {
    if (out == in) return o;
    if (out == 2 * in) return o >> 1;
    return min((int)floor((float)o * scale), in - 1);
}

kernel void upsample_nearest_fwd(global const KILN_S *x, global KILN_S *y, int yoff, pool_geom g, float scale_h,
                                 float scale_w) {
    POOL_IDS(g.OW, g.OH)
    int h = nearest_src(cy, g.H, g.OH, scale_h), w = nearest_src(cx, g.W, g.OW, scale_w);
    /* a copy: a half moves bit for bit */
    y[yoff + (p * g.OH + cy) * g.OW + cx] = x[plane_off(&g, p) + h * g.xsh + w * g.xsw];
}

/* The first output o (0..out) whose source index is >= t: the index is non-decreasing in
 * o, so the outputs that read input i are exactly [first(i), first(i+1)). Starts from
 * floor(t * out / in), within a step or two of the answer (the float scale's rounding). */
inline int nearest_first(int t, int in, int out, float scale) {
    if (t <= 0) return 0;
    if (t >= in) return out;
    int o = (int)min((pidx)t * out / in, (pidx)out);
    while (o > 0 && nearest_src(o - 1, in, out, scale) >= t) o--;
    while (o < out && nearest_src(o, in, out, scale) < t) o++;
    return o;
}

kernel void upsample_nearest_bwd(global const float *go, int gooff, global float *gi, int gioff, pool_geom g,
                                 float scale_h, float scale_w) {
    POOL_IDS(g.W, g.H)
    int w = cx, h = cy;
    int oh0 = nearest_first(h, g.H, g.OH, scale_h), oh1 = nearest_first(h + 1, g.H, g.OH, scale_h);
    int ow0 = nearest_first(w, g.W, g.OW, scale_w), ow1 = nearest_first(w + 1, g.W, g.OW, scale_w);
    global const float *gp = go + gooff + p * g.OH * g.OW;
    float acc = 0.0f;
    for (int oh = oh0; oh < oh1; oh++)
        for (int ow = ow0; ow < ow1; ow++) acc += gp[oh * g.OW + ow];
    gi[gioff + (p * g.H + h) * g.W + w] = acc;
}

/* ---- bilinear upsampling ------------------------------------------------------------ */

/* Source pixels i0, i1 and weights l0, l1 of output o along one axis, as PyTorch
 * (align_corners: src = o*(in-1)/(out-1); else src = (o+0.5)*in/out - 0.5 clamped at 0;
 * i0 = floor(src), i1 = i0+1 inside the input, l1 = src - i0). The source coordinate is
 * computed exactly in integers (a rational num/den) so that the weights carry a single
 * rounding and the backward's stencil test agrees with the forward bit for bit. */
inline void linear_src(int o, int in, int out, int align, int *i0, int *i1, float *l0, float *l1) {
    pidx num, den;
    if (align) {
        den = out > 1 ? out - 1 : 1;
        num = out > 1 ? (pidx)(in - 1) * o : 0;
    } else {
        den = (pidx)2 * out;
        num = (pidx)in * (2 * o + 1) - out;
        if (num < 0) num = 0;
    }
    pidx q = num / den, r = num - q * den;
    *i0 = (int)q;
    *i1 = (int)q + (q < in - 1 ? 1 : 0);
    *l1 = (float)r / (float)den;
    *l0 = 1.0f - *l1;
}

kernel void upsample_bilinear_fwd(global const KILN_S *x, global KILN_S *y, int yoff, pool_geom g) {
    POOL_IDS(g.OW, g.OH)
    int ow = cx, oh = cy;
    int h0, h1, w0, w1;
    float a0, a1, b0, b1;
    linear_src(oh, g.H, g.OH, g.flag, &h0, &h1, &a0, &a1);
    linear_src(ow, g.W, g.OW, g.flag, &w0, &w1, &b0, &b1);
    int xb = plane_off(&g, p);
    float r0 = b0 * KILN_LD(x, xb + h0 * g.xsh + w0 * g.xsw) + b1 * KILN_LD(x, xb + h0 * g.xsh + w1 * g.xsw);
    float r1 = b0 * KILN_LD(x, xb + h1 * g.xsh + w0 * g.xsw) + b1 * KILN_LD(x, xb + h1 * g.xsh + w1 * g.xsw);
    KILN_ST(y, yoff + (p * g.OH + oh) * g.OW + ow, a0 * r0 + a1 * r1);
}

/* The first output o (0..out) whose left tap i0(o) is >= t: i0 is non-decreasing in o,
 * so the outputs whose stencil touches input i are exactly [first(i-1), first(i+1)). */
inline int linear_first(int t, int in, int out, int align) {
    if (t <= 0) return 0;
    if (align) {
        if (in == 1 || out == 1) return out; /* every output reads input 0 */
        pidx num = (pidx)t * (out - 1), den = in - 1;
        return (int)min((num + den - 1) / den, (pidx)out);
    }
    /* in*(2o+1) - out >= 2*out*t  <=>  o >= ((2t+1)*out - in) / (2 in) */
    pidx a = (pidx)(2 * t + 1) * out - in, den = (pidx)2 * in;
    return a <= 0 ? 0 : (int)min((a + den - 1) / den, (pidx)out);
}

/* Weight that output o's stencil along one axis gives input i (both taps may be i at the
 * last pixel; an output left of the first centre gives input 1 a zero weight). */
inline float linear_weight(int o, int i, int in, int out, int align) {
    int i0, i1;
    float l0, l1;
    linear_src(o, in, out, align, &i0, &i1, &l0, &l1);
    return (i0 == i ? l0 : 0.0f) + (i1 == i ? l1 : 0.0f);
}

/* Column weights are computed once per work-item when they fit this many. */
#define LIN_CACHE 8

kernel void upsample_bilinear_bwd(global const float *go, int gooff, global float *gi, int gioff, pool_geom g) {
    POOL_IDS(g.W, g.H)
    int w = cx, h = cy;
    int oh0 = linear_first(h - 1, g.H, g.OH, g.flag), oh1 = linear_first(h + 1, g.H, g.OH, g.flag);
    int ow0 = linear_first(w - 1, g.W, g.OW, g.flag), ow1 = linear_first(w + 1, g.W, g.OW, g.flag);
    int nc = ow1 - ow0;
    bool cached = nc <= LIN_CACHE;
    float wc[LIN_CACHE];
    if (cached)
        for (int j = 0; j < nc; j++) wc[j] = linear_weight(ow0 + j, w, g.W, g.OW, g.flag);
    global const float *gp = go + gooff + p * g.OH * g.OW + ow0;
    float acc = 0.0f;
    for (int oh = oh0; oh < oh1; oh++) {
        float a = linear_weight(oh, h, g.H, g.OH, g.flag), row = 0.0f;
        for (int j = 0; j < nc; j++)
            row += (cached ? wc[j] : linear_weight(ow0 + j, w, g.W, g.OW, g.flag)) * gp[oh * g.OW + j];
        acc += a * row;
    }
    gi[gioff + (p * g.H + h) * g.W + w] = acc;
}
