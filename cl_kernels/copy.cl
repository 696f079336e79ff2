/* cl_kernels/copy.cl - strided copies, fills and arange. Built with T = uchar, ushort or
 * uint: copies move bits, so one build serves every dtype of that size. */

/* dst[doff + i] = src[soff + offset(i)]: gathers any view into contiguous memory. A source
 * whose dims merge into one (contiguous, or evenly strided) takes a branch without
 * kiln_offset's div/mod: the same for every work-item, so POCL still vectorises it, and a
 * contiguous copy runs as fast as any contiguous elementwise kernel (an order of magnitude
 * faster than through kiln_offset on a CPU; README.md, "Speed", has the figures). */
kernel void copy_strided(global const T *src, int soff, global T *dst, int doff, int n, kiln_geom g) {
    int i = get_global_id(0);
    if (i >= n) return;
    if (g.ndim == 1) dst[doff + i] = src[soff + i * g.strides[0][0]];
    else dst[doff + i] = src[soff + kiln_offset(&g, 0, i)];
}

/* dst[doff + r * len + k] = src[soff + offset(r) + k]: a view whose innermost dim is
 * contiguous (len elements a row) into contiguous memory, a work-item per row (CPUs: the
 * row's offset from kiln_offset once instead of per element, and a plain copy loop POCL
 * vectorises; a transposed [T, B, H] view of [B, T, H] is this). g holds the outer dims. */
kernel void copy_rows(global const T *restrict src, int soff, global T *restrict dst, int doff, int nrows, int len,
                      kiln_geom g) {
    int r = get_global_id(0);
    if (r >= nrows) return;
    global const T *s = src + soff + kiln_offset(&g, 0, r);
    global T *d = dst + doff + r * len;
    for (int k = 0; k < len; k++) d[k] = s[k];
}

kernel void fill_contig(global T *dst, int off, int n, T v) {
    int i = get_global_id(0);
    if (i < n) dst[off + i] = v;
}

/* Writes v to every element of a view (strides in g.strides[0]). */
kernel void fill_strided(global T *dst, int off, int n, kiln_geom g, T v) {
    int i = get_global_id(0);
    if (i < n) dst[off + kiln_offset(&g, 0, i)] = v;
}

kernel void arange_f32(global float *dst, int off, int n, float start, float step) {
    int i = get_global_id(0);
    if (i < n) dst[off + i] = start + (float)i * step;
}

/* dst[doff + offset1(i)] = src[soff + offset0(i)]: copies a view into another view of the
 * same shape (g.strides[0] for src, g.strides[1] for dst). */
kernel void copy_view(global const T *src, int soff, global T *dst, int doff, int n, kiln_geom g) {
    int i = get_global_id(0);
    if (i < n) dst[doff + kiln_offset(&g, 1, i)] = src[soff + kiln_offset(&g, 0, i)];
}
