/* cl_kernels/shape.cl - concat/stack copies, constant padding, index_select and gather
 * with their backward kernels (src/ops/shape.c).
 *
 * The forward kernels move bits: the program is built with T = uchar, ushort or uint by
 * element size, so one build serves every dtype of that size. The backward kernels sum
 * float gradients; they are deterministic (no atomics): each work-item owns one element
 * of the input gradient and visits the entries that point at it in index order.
 * One work-item per element written; `if (i >= n) return;` guards the rounded-up launch.
 */

/* ---- concat / stack ------------------------------------------------------------------ */

/* A block of rows (row strides sld/dld, `cols` contiguous elements each) copied into the
 * output: the layout of a contiguous input concatenated along any dim. */
kernel void cat_copy_rows(global const T *src, int soff, int sld, global T *dst, int doff, int dld, int cols,
                          int n) {
    int i = get_global_id(0);
    if (i >= n) return;
    int r = i / cols, c = i - r * cols;
    dst[doff + r * dld + c] = src[soff + r * sld + c];
}

/* For CPUs: a work-item copies a run of up to `chunk` elements of one row (the last dim:
 * `cols` elements, strides ss and ds); g holds the other dims (g.ndim may be 0). */
kernel void cat_copy_chunks(global const T *src, int soff, int ss, global T *dst, int doff, int ds, int cols,
                            int chunk, int nchunks, int nitems, kiln_geom g) {
    int i = get_global_id(0);
    if (i >= nitems) return;
    int r = i / nchunks, k = i - r * nchunks;
    int c0 = k * chunk, c1 = min(c0 + chunk, cols);
    int s = soff + kiln_offset(&g, 0, r), d = doff + kiln_offset(&g, 1, r);
    if (ss == 1 && ds == 1) {
        for (int c = c0; c < c1; c++) dst[d + c] = src[s + c];
    } else {
        for (int c = c0; c < c1; c++) dst[d + c * ds] = src[s + c * ss];
    }
}

/* Any view into any region: g.strides[0] are the source's, g.strides[1] the destination's. */
kernel void cat_copy_strided(global const T *src, int soff, global T *dst, int doff, int n, kiln_geom g) {
    int i = get_global_id(0);
    if (i >= n) return;
    dst[doff + kiln_offset(&g, 1, i)] = src[soff + kiln_offset(&g, 0, i)];
}

/* ---- constant padding -------------------------------------------------------------------- */

/* The padding's geometry, shared with src/ops/shape.c (cl_kernels/kiln_shared.h). */
typedef kiln_pad_geom pad_geom;

/* out[i] = the input element that lands at i, or v where i lies in the padding. */
kernel void pad_fwd(global const T *src, int soff, global T *dst, int doff, int n, pad_geom g, T v) {
    int i = get_global_id(0);
    if (i >= n) return;
    int rest = i, off = 0;
    bool inside = true;
    for (int d = g.ndim - 1; d >= 0; d--) {
        int c = rest % g.oshape[d] - g.before[d];
        rest /= g.oshape[d];
        inside = inside && c >= 0 && c < g.ishape[d];
        off += c * g.istride[d];
    }
    dst[doff + i] = inside ? src[soff + off] : v;
}

/* One output row (the last dim) per work-item, for CPUs: the row's position is worked
 * out once, then three plain loops write the leading fill, the copied run and the
 * trailing fill. g.ndim >= 1; the last dim is the row. */
kernel void pad_rows(global const T *src, int soff, global T *dst, int doff, int nrows, pad_geom g, T v) {
    int r = get_global_id(0);
    if (r >= nrows) return;
    int L = g.ndim - 1, rest = r, off = soff;
    bool inside = true;
    for (int d = L - 1; d >= 0; d--) {
        int c = rest % g.oshape[d] - g.before[d];
        rest /= g.oshape[d];
        inside = inside && c >= 0 && c < g.ishape[d];
        off += c * g.istride[d];
    }
    int W = g.oshape[L], b = g.before[L], st = g.istride[L];
    /* columns [lo, hi) of the row come from the input */
    int lo = inside ? clamp(b, 0, W) : W;
    int hi = inside ? clamp(b + g.ishape[L], lo, W) : W;
    global T *row = dst + doff + r * W;
    for (int c = 0; c < lo; c++) row[c] = v;
    if (st == 1) {
        int base = off - b;
        for (int c = lo; c < hi; c++) row[c] = src[base + c];
    } else {
        for (int c = lo; c < hi; c++) row[c] = src[off + (c - b) * st];
    }
    for (int c = hi; c < W; c++) row[c] = v;
}

/* ---- index_select / gather ------------------------------------------------------------- */

/* The indexing geometry, shared with src/ops/shape.c (cl_kernels/kiln_shared.h). */
typedef kiln_idx_geom idx_geom;

/* Indices are checked here, on the device: a bad one is recorded in the index-error
 * buffer E as launch `site` (kiln_bad_index; the host reports it at its next wait) and
 * clamped, so the read stays in bounds meanwhile. */
inline int idx_clamp(int v, int size) { return v < 0 ? 0 : (v >= size ? size - 1 : v); }

/* out[.., j, ..] = x[.., index[j], ..] along g.dim; g.shape is the output's shape. A bad
 * index[j] is recorded once, by the work-item whose other coordinates are all 0. */
kernel void index_select_fwd(global const T *x, int xoff, global const int *idx, int ioff, int istride,
                             global T *out, int ooff, int n, idx_geom g, global int *E, int site) {
    int i = get_global_id(0);
    if (i >= n) return;
    int rest = i, off = 0;
    bool lead = true;
    for (int d = g.ndim - 1; d >= 0; d--) {
        int c = rest % g.shape[d];
        rest /= g.shape[d];
        if (d == g.dim) {
            int v = idx[ioff + c * istride];
            if ((v < 0 || v >= g.xsize) && lead && rest == 0) kiln_bad_index(E, site, v, c);
            c = idx_clamp(v, g.xsize);
        } else if (c != 0) {
            lead = false;
        }
        off += c * g.sa[d];
    }
    out[ooff + i] = x[xoff + off];
}

/* out[p] = x[p with p[dim] replaced by index[p]]; g.shape is the index's (= output's). */
kernel void gather_fwd(global const T *x, int xoff, global const int *idx, int ioff, global T *out, int ooff,
                       int n, idx_geom g, global int *E, int site) {
    int i = get_global_id(0);
    if (i >= n) return;
    int rest = i, off = 0, ioffs = 0;
    for (int d = g.ndim - 1; d >= 0; d--) {
        int c = rest % g.shape[d];
        rest /= g.shape[d];
        ioffs += c * g.sb[d];
        if (d != g.dim) off += c * g.sa[d];
    }
    int v = idx[ioff + ioffs];
    if (v < 0 || v >= g.xsize) kiln_bad_index(E, site, v, i);
    off += idx_clamp(v, g.xsize) * g.sa[g.dim];
    out[ooff + i] = x[xoff + off];
}

/* gx[o, r, k] = sum over j with index[j] == r of gout[o, j, k] (gx is [outer, R, inner],
 * gout [outer, len, inner], both contiguous). */
kernel void index_select_bwd(global const float *gout, int goff, global const int *idx, int ioff, int istride,
                             int len, global float *gx, int gxoff, int n, int R, int inner) {
    int p = get_global_id(0);
    if (p >= n) return;
    int k = p % inner, t = p / inner;
    int r = t % R, o = t / R;
    int base = goff + o * len * inner + k;
    float s = 0.0f;
    for (int j = 0; j < len; j++)
        if (idx[ioff + j * istride] == r) s += gout[base + j * inner];
    gx[gxoff + p] = s;
}

/* gx[p] = sum over k along dim of gout[q] where q is p with q[dim] = k and index[q] ==
 * p[dim]; positions of p outside the index's shape get 0. g.shape: the input's shape,
 * g.shape2: the index's, g.sa: gout's contiguous strides, g.sb: the index's strides. */
kernel void gather_bwd(global const float *gout, int goff, global const int *idx, int ioff, global float *gx,
                       int gxoff, int n, idx_geom g) {
    int p = get_global_id(0);
    if (p >= n) return;
    int rest = p, gbase = goff, ibase = ioff, r = 0;
    bool inside = true;
    for (int d = g.ndim - 1; d >= 0; d--) {
        int c = rest % g.shape[d];
        rest /= g.shape[d];
        if (d == g.dim) {
            r = c;
        } else {
            inside = inside && c < g.shape2[d];
            gbase += c * g.sa[d];
            ibase += c * g.sb[d];
        }
    }
    float s = 0.0f;
    if (inside) {
        int len = g.shape2[g.dim], gs = g.sa[g.dim], is = g.sb[g.dim];
        for (int k = 0; k < len; k++)
            if (idx[ibase + k * is] == r) s += gout[gbase + k * gs];
    }
    gx[gxoff + p] = s;
}
