/* cl_kernels/conv.cl - the data movement around the GEMMs of 2-D convolution
 * (src/ops/conv.c): im2col (input patches to a column matrix) and im2col_t (the same,
 * transposed, for the weight gradient), col2im (the columns back to an image, gathering:
 * each image element sums the column entries that touch it, in a fixed order, so results
 * are deterministic without atomics), the permutes between NCHW and [C, N, HW] that let
 * one GEMM span every image of a chunk, a direct weight gradient for kernels with few
 * taps per output channel, and the direct 3x3 convolution (conv3_pad, conv3_phase,
 * conv3_direct, conv3_flat, conv3_bcast, conv3_wgrad) that skips the columns.
 *
 * "Input" and "output" are always those of the convolution (conv_transpose2d runs the same
 * kernels the other way round). A column matrix of a chunk of nb images holds, for group
 * gi, the rows gi*kg + (ci*kh + ki)*kw + kj (ci the channel within the group, kg = cg*kh*kw)
 * and has the images side by side: entry (row, image nl, pixel p) is at
 * (row*nb + nl)*HW + p, HW = ho*wo. Indices are 32-bit: the host keeps every buffer below
 * 2^31 elements.
 *
 * Half precision: built with KILN_HALF (src/ops/conv.c's CONV_DT_OPTIONS), the kernels that
 * read a tensor of the op (input, weight, bias, an output gradient as conv_transpose2d's
 * input) or write its output take it as halves (KILN_S, cl_kernels/common.cl) and convert
 * as they move its elements; scratch (columns, bordered planes, packed weights, the GEMM's
 * result) stays f32, and so does the arithmetic: a half output is f32's rounded once.
 *
 * The kernels give each work-item a whole row or plane and copy with plain inner loops:
 * POCL runs a work-group's items one after another on a core, and these loops are what it
 * vectorises; a work-item per element pays several integer divisions per element (README.md,
 * "Speed", has the measurement). */

/* The convolution's geometry, shared with src/ops/conv.c (cl_kernels/kiln_shared.h). */
typedef kiln_conv_geom conv_geom;

/* First and one-past-last output index o in [0, n) with lo <= o0 + o*st < hi (st >= 1). */
inline int2 conv_range(int o0, int st, int lo, int hi, int n) {
    int a = o0 >= lo ? 0 : (lo - o0 + st - 1) / st;
    int b = o0 >= hi ? 0 : (hi - 1 - o0) / st + 1;
    return (int2)(min(a, n), min(b, n));
}

/*
 * One work-item per (input channel c, kernel row ki, image) of a chunk of nb images starting
 * at image n0: it writes the kw column rows of taps (ki, 0 .. kw-1) of channel c for that
 * image, ho*wo entries each (contiguous), output row by output row as a zero run, a copy and
 * a zero run. x is read through its strides xs (n, c, h, w) from xoff: any view. The
 * images are the outermost index: consecutive work-items read the same image's planes, each
 * while it is still in cache (README.md, "Speed").
 */
#ifndef C3_KERNEL
kernel void conv_im2col(global const KILN_S *restrict x, int xoff, int4 xs, global float *restrict col, int coloff,
                        conv_geom g, int n0, int nb, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int ckh = g.c * g.kh, nl = q / ckh, t = q - nl * ckh; /* t = c*kh + ki for the global channel c */
    int c = t / g.kh, ki = t - c * g.kh;
    int hw = g.ho * g.wo;
    int2 hr = conv_range(ki * g.dh - g.ph, g.sh, 0, g.h, g.ho);
    global const KILN_S *xc = x + xoff + (n0 + nl) * xs.x + c * xs.y;
    int step = g.sw * xs.w;
    for (int kj = 0; kj < g.kw; kj++) {
        global float *dst = col + coloff + ((t * g.kw + kj) * nb + nl) * hw;
        int iw0 = kj * g.dw - g.pw;
        int2 wr = conv_range(iw0, g.sw, 0, g.w, g.wo);
        for (int oh = 0; oh < g.ho; oh++, dst += g.wo) {
            if (oh < hr.x || oh >= hr.y) {
                for (int ow = 0; ow < g.wo; ow++) dst[ow] = 0.0f;
                continue;
            }
            global const KILN_S *s = xc + (oh * g.sh - g.ph + ki * g.dh) * xs.z + (iw0 + wr.x * g.sw) * xs.w;
            for (int ow = 0; ow < wr.x; ow++) dst[ow] = 0.0f;
            if (step == 1)
                for (int ow = wr.x; ow < wr.y; ow++) dst[ow] = KILN_LD(s, ow - wr.x);
            else
                for (int ow = wr.x; ow < wr.y; ow++) dst[ow] = KILN_LD(s, (ow - wr.x) * step);
            for (int ow = max(wr.y, wr.x); ow < g.wo; ow++) dst[ow] = 0.0f;
        }
    }
}

/*
 * One work-item per row (nl, c, h) of images n0 .. n0+nb-1 of the convolution input:
 *   out = bias[c] + sum over (ki, kj) in order of col[row(c, ki, kj), nl, oh*wo + ow]
 * over the kernel taps whose output position (oh, ow) = ((h + ph - ki*dh) / sh, ...) is a
 * whole in-range one. Tap by tap, each output position of the row receives at most one
 * entry, so the row is updated by plain loops; every element still sums its terms in the
 * order (bias, taps in row-major order): deterministic. has_bias 0 starts from 0. Group gi's
 * rows start at row gi*kgp (kgp >= kg: rows padded for the GEMM; the extra rows are unread).
 */
kernel void conv_col2im(global const float *restrict col, int coloff, global KILN_S *restrict out, int outoff,
                        global const KILN_S *restrict bias, int boff, int has_bias, conv_geom g, int kgp, int n0,
                        int nb, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int h = q % g.h, nc = q / g.h;
    int c = nc % g.c, nl = nc / g.c;
    int hw = g.ho * g.wo, kk = g.kh * g.kw;
    global KILN_S *dst = out + outoff + ((n0 * g.c + nc) * g.h + h) * g.w;
    float b0 = has_bias ? KILN_LD(bias, boff + c) : 0.0f;
    int cg = g.c / g.groups, gi = c / cg;
    global const float *base = col + coloff + (gi * kgp + (c - gi * cg) * kk) * nb * hw + nl * hw;
/* acc[w - lo] += every tap's entry for the row's columns w in [lo, hi), taps in order */
#define C2I_TAPS(acc, lo, hi)                                                                                          \
    for (int ki = 0; ki < g.kh; ki++) {                                                                                \
        int th = h + g.ph - ki * g.dh;                                                                                 \
        if (th < 0) break; /* th only decreases with ki */                                                             \
        int oh = th / g.sh;                                                                                            \
        if (oh * g.sh != th || oh >= g.ho) continue;                                                                   \
        for (int kj = 0; kj < g.kw; kj++) {                                                                            \
            /* w = ow*sw + w0 for the output columns ow of this tap */                                                 \
            int w0 = kj * g.dw - g.pw;                                                                                 \
            int2 r = conv_range(w0, g.sw, (lo), (hi), g.wo);                                                           \
            global const float *s = base + (ki * g.kw + kj) * nb * hw + oh * g.wo;                                     \
            if (g.sw == 1)                                                                                             \
                for (int ow = r.x; ow < r.y; ow++) acc[ow + w0 - (lo)] += s[ow];                                       \
            else                                                                                                       \
                for (int ow = r.x; ow < r.y; ow++) acc[ow * g.sw + w0 - (lo)] += s[ow];                                \
        }                                                                                                              \
    }
#ifdef KILN_HALF
    /* halves: pieces of the row summed in float, each element rounded once */
    for (int lo = 0; lo < g.w; lo += 64) {
        int len = min(64, g.w - lo);
        float acc[64];
        for (int i = 0; i < len; i++) acc[i] = b0;
        C2I_TAPS(acc, lo, lo + len)
        for (int i = 0; i < len; i++) KILN_ST(dst, lo + i, acc[i]);
    }
#else
    for (int w = 0; w < g.w; w++) dst[w] = b0;
    C2I_TAPS(dst, 0, g.w)
#endif
#undef C2I_TAPS
}

/*
 * dst[c, nl, p] = src[n0 + nl, c, p / pw_, p % pw_] for a chunk of nb images of an NCHW
 * tensor with channels nc and planes of ph_ x pw_ (any strides ss: n, c, h, w).
 * One work-item per (c, nl) plane.
 */
kernel void conv_to_cnhw(global const KILN_S *restrict src, int soff, int4 ss, global float *restrict dst, int doff,
                         int nc, int ph_, int pw_, int n0, int nb, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int nl = q % nb, c = q / nb;
    global const KILN_S *s = src + soff + (n0 + nl) * ss.x + c * ss.y;
    global float *d = dst + doff + q * ph_ * pw_;
    if (ss.w == 1 && ss.z == pw_) {
        for (int p = 0; p < ph_ * pw_; p++) d[p] = KILN_LD(s, p);
        return;
    }
    for (int hh = 0; hh < ph_; hh++, d += pw_)
        for (int ww = 0; ww < pw_; ww++) d[ww] = KILN_LD(s, hh * ss.z + ww * ss.w);
}

/*
 * dst[n0 + nl, c, :] = src[c, nl, :] + bias[c]: a chunk of the [C, nb, HW] GEMM result back
 * to the contiguous NCHW output (nc channels, planes of hw). has_bias 2 also applies ReLU
 * to the sum (x < 0 ? 0 : x, as kiln_relu: the forward of a convolution then ReLU in one
 * op). One work-item per plane.
 */
kernel void conv_from_cnhw(global const float *restrict src, int soff, global KILN_S *restrict dst, int doff,
                           global const KILN_S *restrict bias, int boff, int has_bias, int nc, int hw, int n0, int nb,
                           int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int c = q % nc, nl = q / nc;
    global const float *s = src + soff + (c * nb + nl) * hw;
    global KILN_S *d = dst + doff + ((n0 + nl) * nc + c) * hw;
    if (has_bias == 2) {
        float b = KILN_LD(bias, boff + c);
        for (int p = 0; p < hw; p++) KILN_ST_RELU(d, p, s[p] + b);
    } else if (has_bias) {
        float b = KILN_LD(bias, boff + c);
        for (int p = 0; p < hw; p++) KILN_ST(d, p, s[p] + b);
    } else {
        for (int p = 0; p < hw; p++) KILN_ST(d, p, s[p]);
    }
}

/*
 * db[c] (+)= sum of row c of the [cout, ld] matrix at src: the bias gradient from the
 * permuted output gradient of a chunk (accumulate 0 for the first chunk). One work-item
 * per channel; 16 running sums over interleaved elements (a loop the compiler vectorises,
 * and each term meets about ld/16 additions instead of ld), combined pairwise.
 */
kernel void conv_bias_grad(global const float *src, int soff, int ld, global float *db, int dboff, int accumulate,
                           int nitems) {
    int c = get_global_id(0);
    if (c >= nitems) return;
    global const float *s = src + soff + c * ld;
    float acc[16];
    for (int k = 0; k < 16; k++) acc[k] = 0.0f;
    int full = ld / 16 * 16;
    for (int j = 0; j < full; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += s[j + k];
    for (int j = full; j < ld; j++) acc[j - full] += s[j];
    for (int w = 8; w >= 1; w /= 2)
        for (int k = 0; k < w; k++) acc[k] += acc[k + w];
    db[dboff + c] = accumulate ? db[dboff + c] + acc[0] : acc[0];
}

/*
 * dst[r, j] (rows of width kg) = sum over s in order of part[s][r, j], where the nparts
 * partials are consecutive [rows, kgp] matrices (kgp >= kg: padded columns, dropped): the
 * weight gradient's split-K partials, or one padded result (nparts 1). With has_db,
 * db[r] = the same sum of column kg (conv_wgrad_small's bias sums). One work-item per row.
 */
kernel void conv_sum_parts(global const float *part, int poff, int nparts, int kg, int kgp, global float *dst, int doff,
                           int has_db, global float *db, int dboff, int nitems) {
    int r = get_global_id(0);
    if (r >= nitems) return;
    global const float *p = part + poff + r * kgp;
    global float *d = dst + doff + r * kg;
    for (int j = 0; j < kg; j++) d[j] = p[j];
    for (int s = 1; s < nparts; s++) {
        global const float *q = p + s * nitems * kgp;
        for (int j = 0; j < kg; j++) d[j] += q[j];
    }
    if (has_db) {
        float b = p[kg];
        for (int s = 1; s < nparts; s++) b += p[s * nitems * kgp + kg];
        db[dboff + r] = b;
    }
}

/*
 * The weight (and bias) gradient of a convolution whose kernel has few taps per output
 * channel (kg <= 32: a first layer on 1 or 3 channels, a depthwise convolution) straight
 * from x and gy, without columns: a GEMM tiles a 32 x 9 result into a handful of tiles
 * padded 7x. One work-item per (output channel co, part s of the images): for images
 * [n*s/nparts, n*(s+1)/nparts) in order, part[s][co][j] = sum of gy[n, co, oh, ow] *
 * x[n, ci, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw] over the pixels (j = (ci*kh + ki)*kw +
 * kj, ci within co's group), and part[s][co][kg] = the sum of gy (the bias gradient). Each
 * row's dot product runs four interleaved sums (fixed order: deterministic).
 */
kernel void conv_wgrad_small(global const float *x, int xoff, int4 xs, global const float *gy, int gyoff, int4 gs,
                             global float *part, int poff, conv_geom g, int nparts, int nitems) {
#pragma OPENCL FP_CONTRACT OFF
    int q = get_global_id(0);
    if (q >= nitems) return;
    int co = q % g.cout, s = q / g.cout;
    int cg = g.c / g.groups, gi = co / (g.cout / g.groups), kk = g.kh * g.kw, kg = cg * kk;
    float acc[33];
    for (int j = 0; j <= kg; j++) acc[j] = 0.0f;
    int na = g.n * s / nparts, ne = g.n * (s + 1) / nparts;
    bool unit = gs.w == 1 && xs.w == 1 && g.sw == 1;
    for (int n = na; n < ne; n++) {
        for (int oh = 0; oh < g.ho; oh++) {
            global const float *gr = gy + gyoff + n * gs.x + co * gs.y + oh * gs.z;
            float b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f;
            int ow = 0;
            for (; ow + 4 <= g.wo; ow += 4) {
                b0 += gr[ow * gs.w];
                b1 += gr[(ow + 1) * gs.w];
                b2 += gr[(ow + 2) * gs.w];
                b3 += gr[(ow + 3) * gs.w];
            }
            for (; ow < g.wo; ow++) b0 += gr[ow * gs.w];
            acc[kg] += (b0 + b1) + (b2 + b3);
            for (int ci = 0; ci < cg; ci++) {
                global const float *xc = x + xoff + n * xs.x + (gi * cg + ci) * xs.y;
                for (int ki = 0; ki < g.kh; ki++) {
                    int ih = oh * g.sh - g.ph + ki * g.dh;
                    if (ih < 0 || ih >= g.h) continue;
                    global const float *xr = xc + ih * xs.z;
                    for (int kj = 0; kj < g.kw; kj++) {
                        int w0 = kj * g.dw - g.pw;
                        int2 r = conv_range(w0, g.sw, 0, g.w, g.wo);
                        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                        int o = r.x;
                        if (unit) {
                            /* the same four sums as float4 lanes (no contraction into
                             * fma in either form: identical results) */
                            float4 a = (float4)(0.0f);
                            for (; o + 4 <= r.y; o += 4) a += vload4(0, gr + o) * vload4(0, xr + o + w0);
                            a0 = a.x;
                            a1 = a.y;
                            a2 = a.z;
                            a3 = a.w;
                        }
                        for (; o + 4 <= r.y; o += 4) {
                            a0 += gr[o * gs.w] * xr[(o * g.sw + w0) * xs.w];
                            a1 += gr[(o + 1) * gs.w] * xr[((o + 1) * g.sw + w0) * xs.w];
                            a2 += gr[(o + 2) * gs.w] * xr[((o + 2) * g.sw + w0) * xs.w];
                            a3 += gr[(o + 3) * gs.w] * xr[((o + 3) * g.sw + w0) * xs.w];
                        }
                        for (; o < r.y; o++) a0 += gr[o * gs.w] * xr[(o * g.sw + w0) * xs.w];
                        acc[(ci * g.kh + ki) * g.kw + kj] += (a0 + a1) + (a2 + a3);
                    }
                }
            }
        }
    }
    global float *d = part + poff + (s * g.cout + co) * (kg + 1);
    for (int j = 0; j <= kg; j++) d[j] = acc[j];
}

/* dst [rows, kgp] = src [rows, kg] (contiguous) with zero columns kg .. kgp-1: a weight
 * matrix padded to the GEMM's tile. One work-item per row. */
kernel void conv_pad_cols(global const float *src, int soff, int kg, int kgp, global float *dst, int doff, int nitems) {
    int r = get_global_id(0);
    if (r >= nitems) return;
    global const float *s = src + soff + r * kg;
    global float *d = dst + doff + r * kgp;
    for (int j = 0; j < kg; j++) d[j] = s[j];
    for (int j = kg; j < kgp; j++) d[j] = 0.0f;
}

/*
 * The transposed column matrix of a chunk of nb images from n0: row (nl, oh, ow) holds, at
 * column gi*kgp + (ci*kh + ki)*kw + kj, the input entry that tap (ki, kj) of channel ci of
 * group gi sees at output pixel (oh, ow), 0 in the padding, and zeros in columns kg .. kgp-1
 * of each group. Rows are groups*kgp long and written whole (contiguous); one work-item per
 * output row (nl, oh). x is read through its strides xs: any view.
 */
kernel void conv_im2col_t(global const KILN_S *restrict x, int xoff, int4 xs, global float *restrict col, int coloff,
                          conv_geom g, int kgp, int n0, int nb, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int oh = q % g.ho, nl = q / g.ho;
    int cg = g.c / g.groups, kg = cg * g.kh * g.kw, ldc = g.groups * kgp;
    global float *dst = col + coloff + q * g.wo * ldc;
    global const KILN_S *xn = x + xoff + (n0 + nl) * xs.x;
    int ih0 = oh * g.sh - g.ph;
    /* tap by tap (column j of every row): a run of zeros, a strided copy, zeros; the
     * block being written (wo rows) stays in the core's cache */
    for (int gi = 0; gi < g.groups; gi++) {
        global float *d = dst + gi * kgp;
        for (int ci = 0; ci < cg; ci++) {
            global const KILN_S *xc = xn + (gi * cg + ci) * xs.y;
            for (int ki = 0; ki < g.kh; ki++) {
                int ih = ih0 + ki * g.dh;
                bool hin = ih >= 0 && ih < g.h;
                global const KILN_S *xr = xc + ih * xs.z;
                for (int kj = 0; kj < g.kw; kj++, d++) {
                    int w0 = kj * g.dw - g.pw;
                    int2 r = hin ? conv_range(w0, g.sw, 0, g.w, g.wo) : (int2)(0, 0);
                    for (int ow = 0; ow < r.x; ow++) d[ow * ldc] = 0.0f;
                    for (int ow = r.x; ow < r.y; ow++) d[ow * ldc] = KILN_LD(xr, (ow * g.sw + w0) * xs.w);
                    for (int ow = max(r.x, r.y); ow < g.wo; ow++) d[ow * ldc] = 0.0f;
                }
            }
        }
        for (int j = kg; j < kgp; j++)
            for (int ow = 0; ow < g.wo; ow++) d[(j - kg) + ow * ldc] = 0.0f;
    }
}
#endif

/* ---- direct 3x3 convolution, stride 1, padding 1 (src/ops/conv.c's "direct" route) ---- */

/* C3_KERNEL (a build option, src/ops/conv.c): which of the direct kernels a build holds, 1
 * conv3_direct, 2 conv3_flat, 3 conv3_bcast (each with conv3_pack), 4 conv3_wgrad, 5
 * conv3_wgradc; without it, the GEMM route's kernels and the direct route's copies. Each
 * choice of the direct kernels' options is a build of its own, and LLVM's time goes into
 * their unrolled loops: one such kernel per build instead of all five. */

/* Build options of conv3_direct (src/ops/conv.c picks them per shape): C3_VW floats per
 * vector, C3_NV vectors along an output row segment (C3_NV * C3_VW pixels), C3_R output
 * rows and C3_CB output channels per work-item. conv3_bcast reads C3_NV as its vectors of
 * output channels (C3_CB = C3_NV * C3_VW) and C3_R as its pixels per work-item. */
#ifndef C3_VW
#define C3_VW 8
#endif
#ifndef C3_NV
#define C3_NV 1
#endif
#ifndef C3_R
#define C3_R 1
#endif
#ifndef C3_CB
#define C3_CB 4
#endif
/* C3_S2 1: conv3_flat, conv3_bcast and conv3_wgrad read the phase planes of a stride-2
 * convolution's input (conv3_phase) instead of bordered planes. */
#ifndef C3_S2
#define C3_S2 0
#endif
/* C3_KJ3 1: conv3_flat (stride 1) reads the three column-shifted planes of conv3_pad3
 * instead of bordered planes. */
#ifndef C3_KJ3
#define C3_KJ3 0
#endif
#define C3CAT_(a, b) a##b
#define C3CAT(a, b) C3CAT_(a, b)
#define C3_T C3CAT(float, C3_VW)
#define C3_LOAD C3CAT(vload, C3_VW)
#define C3_STORE C3CAT(vstore, C3_VW)
/* The direct kernels' store of one output: ReLU (has_bias 2) applied before it in f32's
 * build (on the vectors), in a half build to the stored half (KILN_ST_RELU: as conv then
 * kiln_relu store it, a rounded -0 kept) */
#ifdef KILN_HALF
#define C3_ST(d, i, v)                                                                                                 \
    do {                                                                                                               \
        if (has_bias == 2)                                                                                             \
            KILN_ST_RELU(d, i, v);                                                                                     \
        else                                                                                                           \
            KILN_ST(d, i, v);                                                                                          \
    } while (0)
#define C3_RELU(y)
#else
#define C3_ST(d, i, v) KILN_ST(d, i, v)
#define C3_RELU(y)                                                                                                     \
    if (has_bias == 2) y = select(y, (C3_T)(0.0f), y < (C3_T)(0.0f))
#endif

/*
 * xp [N, C, h + 2, pw] = the planes of x (any view: strides xs, n c h w, from xoff) with a
 * zero border: xp[n, c, r, j] = x[n, c, r - 1, j - 1] inside, 0 elsewhere (columns w + 1 ..
 * pw - 1 too where pw > w + 2). After the last plane, `slack` more zeros (what the last
 * work-items of conv3_direct and conv3_wgrad read past it). One work-item per plane; the
 * last one also writes the slack.
 */
#ifndef C3_KERNEL
kernel void conv3_pad(global const KILN_S *x, int xoff, int4 xs, int c, int h, int w, int pw, global float *xp,
                      int xpoff, int slack, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int n = q / c, ci = q - n * c;
    global const KILN_S *s = x + xoff + n * xs.x + ci * xs.y;
    global float *d = xp + xpoff + q * (h + 2) * pw;
    for (int j = 0; j < pw; j++) d[j] = 0.0f;
    d += pw;
    for (int r = 0; r < h; r++, d += pw) {
        global const KILN_S *sr = s + r * xs.z;
        d[0] = 0.0f;
        if (xs.w == 1)
            for (int j = 0; j < w; j++) d[j + 1] = KILN_LD(sr, j);
        else
            for (int j = 0; j < w; j++) d[j + 1] = KILN_LD(sr, j * xs.w);
        for (int j = w + 1; j < pw; j++) d[j] = 0.0f;
    }
    for (int j = 0; j < pw; j++) d[j] = 0.0f;
    if (q == nitems - 1)
        for (int j = 0; j < slack; j++) d[pw + j] = 0.0f;
}

/*
 * xp [N, C, 3, h + 2, w] = three copies of the planes of x (any view: strides xs, n c h w,
 * from xoff) shifted by a column, with a zero row above and below: xp[n, c, kj, r, j] =
 * x[n, c, r - 1, j + kj - 1] (0 outside x), so that tap (ki, kj) of output (y, j) of a 3x3
 * padding-1 convolution is plane kj at (y + ki, j): along the flat index y*w + j every tap
 * is one load at a fixed offset, with no border columns between the rows (conv3_flat built
 * with C3_KJ3). pw is w. After the last plane, `slack` more zeros. One work-item per
 * (n, c) plane; the last one also writes the slack.
 */
kernel void conv3_pad3(global const KILN_S *x, int xoff, int4 xs, int c, int h, int w, int pw, global float *xp,
                       int xpoff, int slack, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    (void)pw;
    int n = q / c, ci = q - n * c;
    global const KILN_S *s = x + xoff + n * xs.x + ci * xs.y;
    global float *d = xp + xpoff + q * 3 * (h + 2) * w;
    for (int kj = 0; kj < 3; kj++) {
        for (int j = 0; j < w; j++) d[j] = 0.0f;
        d += w;
        /* columns j in [lo, hi) read x's column j + kj - 1 */
        int lo = kj == 0 ? 1 : 0, hi = kj == 2 ? w - 1 : w;
        for (int r = 0; r < h; r++, d += w) {
            global const KILN_S *sr = s + r * xs.z + (kj - 1) * xs.w;
            for (int j = 0; j < lo; j++) d[j] = 0.0f;
            if (xs.w == 1)
                for (int j = lo; j < hi; j++) d[j] = KILN_LD(sr, j);
            else
                for (int j = lo; j < hi; j++) d[j] = KILN_LD(sr, j * xs.w);
            for (int j = max(lo, hi); j < w; j++) d[j] = 0.0f;
        }
        for (int j = 0; j < w; j++) d[j] = 0.0f;
        d += w;
    }
    if (q == nitems - 1)
        for (int j = 0; j < slack; j++) d[j] = 0.0f;
}
#endif

/*
 * wp [ncb, c, 9, C3_CB] = the weights of each block of C3_CB output channels, tap by tap,
 * as conv3_direct and conv3_flat read them: wp[((cb*c + i)*9 + ki*3 + kj)*C3_CB + j] = tap
 * (ki, kj) of output channel o = cb*C3_CB + j (past cout: the last one) and input channel i,
 * which is wt[woff + o*ws.x + i*ws.y + ki*ws.z + kj*ws.w]: a convolution's own weight for its
 * forward (ws its strides), or for its input gradient the channels' roles exchanged and the
 * taps flipped (negative ws.z, ws.w). One work-item per (block, input channel).
 */
#if C3_KERNEL >= 1 && C3_KERNEL <= 3
kernel void conv3_pack(global const KILN_S *wt, int woff, int4 ws, int c, int cout, global float *wp, int wpoff,
                       int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int i = q % c, cb = q / c;
    global float *d = wp + wpoff + q * 9 * C3_CB;
    for (int j = 0; j < C3_CB; j++) {
        global const KILN_S *s = wt + woff + min(cb * C3_CB + j, cout - 1) * ws.x + i * ws.y;
        /* (the offset added to the pointer: the flipped taps' is negative) */
        for (int t = 0; t < 9; t++) d[t * C3_CB + j] = KILN_LD(s + (t / 3) * ws.z + (t % 3) * ws.w, 0);
    }
}
#endif

/*
 * out [N, cout, h, w] (contiguous, from ooff) = the 3x3 convolution, stride 1, padding 1,
 * of the padded planes xp [N, c, h + 2, pw] (conv3_pad) with the weights packed by
 * conv3_pack (so the same kernel computes a convolution's forward and its input gradient:
 * xp = the padded output gradient, the packed weights flipped and transposed), plus
 * bias[o] when has_bias, and with has_bias 2 ReLU of that (as conv_from_cnhw).
 *
 * One work-item per (image, block of C3_CB output channels, block of C3_R output rows,
 * segment of C3_NV * C3_VW pixels of a row): C3_CB * C3_R * C3_NV vector accumulators,
 * held in registers. Per input channel, each of the C3_R + 2 input rows it needs is read
 * once as three shifted vector runs (kj = 0, 1, 2) from the padded plane (no bounds tests:
 * the border is zeros; lanes past the row's end read on into the next row and are dropped
 * at the store) and multiplied by
 * each channel's weight broadcast. Output channels past cout compute the last one's sums
 * and are not stored; rows past h read the next plane or the slack and are not stored. Each
 * output sums its c * 9 products in a fixed order (input channel, then ki, kj): results do
 * not depend on the blocking's split of the work.
 */
#if C3_KERNEL == 1
kernel void conv3_direct(global const float *xp, int xpoff, int c, int h, int w, int pw, int nseg, int nrb, int ncb,
                         global const float *wp, int wpoff, global const KILN_S *bias, int boff, int has_bias, int cout,
                         global KILN_S *out, int ooff, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int sg = q % nseg, t = q / nseg;
    int rb = t % nrb;
    t /= nrb;
    int cb = t % ncb, n = t / ncb;
    int oh0 = rb * C3_R, co0 = cb * C3_CB, ow0 = sg * (C3_NV * C3_VW);
    int plane = (h + 2) * pw;
    global const float *xb = xp + xpoff + n * c * plane + oh0 * pw + ow0;
    C3_T acc[C3_CB][C3_R][C3_NV];
#pragma unroll
    for (int j = 0; j < C3_CB; j++)
#pragma unroll
        for (int r = 0; r < C3_R; r++)
#pragma unroll
            for (int v = 0; v < C3_NV; v++) acc[j][r][v] = (C3_T)(0.0f);
    for (int ci = 0; ci < c; ci++) {
        global const float *xc = xb + ci * plane;
        global const float *wc = wp + wpoff + (cb * c + ci) * 9 * C3_CB;
#pragma unroll
        for (int rr = 0; rr < C3_R + 2; rr++) {
            C3_T xv[3][C3_NV];
#pragma unroll
            for (int kj = 0; kj < 3; kj++)
#pragma unroll
                for (int v = 0; v < C3_NV; v++) xv[kj][v] = C3_LOAD(0, xc + rr * pw + kj + v * C3_VW);
#pragma unroll
            for (int ki = 0; ki < 3; ki++) {
                int r = rr - ki;
                if (r < 0 || r >= C3_R) continue;
#pragma unroll
                for (int kj = 0; kj < 3; kj++)
#pragma unroll
                    for (int j = 0; j < C3_CB; j++) {
                        C3_T wv = (C3_T)(wc[(ki * 3 + kj) * C3_CB + j]);
#pragma unroll
                        for (int v = 0; v < C3_NV; v++) acc[j][r][v] = fma(wv, xv[kj][v], acc[j][r][v]);
                    }
            }
        }
    }
    int cols = min(C3_NV * C3_VW, w - ow0);
    /* (conditions, not breaks: a loop that breaks cannot be unrolled, and acc must stay in
     * registers) */
#pragma unroll
    for (int j = 0; j < C3_CB; j++) {
        int co = co0 + j;
        float b = has_bias && co < cout ? KILN_LD(bias, boff + co) : 0.0f;
#pragma unroll
        for (int r = 0; r < C3_R; r++) {
            if (co >= cout || oh0 + r >= h) continue;
            global KILN_S *d = out + ooff + ((n * cout + co) * h + oh0 + r) * w + ow0;
#pragma unroll
            for (int v = 0; v < C3_NV; v++) {
                C3_T y = acc[j][r][v] + b;
                C3_RELU(y);
#ifdef KILN_HALF
                if (cols > v * C3_VW) {
                    float tl[C3_VW];
                    C3_STORE(y, 0, tl);
                    for (int l = 0; l < min(C3_VW, cols - v * C3_VW); l++) C3_ST(d, v * C3_VW + l, tl[l]);
                }
#else
                if (cols >= (v + 1) * C3_VW) {
                    C3_STORE(y, 0, d + v * C3_VW);
                } else if (cols > v * C3_VW) {
                    float tl[C3_VW];
                    C3_STORE(y, 0, tl);
                    for (int l = 0; l < cols - v * C3_VW; l++) d[v * C3_VW + l] = tl[l];
                }
#endif
            }
        }
    }
}
#endif

/* conv3_bcast's channels per work-item (and conv3_pack's C3_CB where it runs) */
#define C3_BCB (C3_NV * C3_VW)

/*
 * conv3_direct with the vectors along the output channels instead of the pixels, for small
 * planes: the same arguments (nrb: h, one row per work-item; nseg: the row segments of C3_R
 * pixels), the same bordered planes xp and packed weights wp (conv3_pack built with C3_CB =
 * C3_BCB = C3_NV * C3_VW: tap t of the block's channels is C3_NV contiguous vectors).
 *
 * One work-item per (image, block of C3_BCB output channels, output row, segment of C3_R
 * pixels): C3_R * C3_NV vector accumulators, one per pixel and vector of channels. Per
 * input channel and tap, C3_NV vector loads of weights and one broadcast of an input value
 * per pixel, each used by C3_NV multiply-adds. Every lane is an output channel, so a
 * 7 x 7 or 14 x 14 plane wastes no lanes where conv3_direct's row vectors and conv3_flat's
 * border columns did (src/ops/conv.c, c3_choose, says where it runs). Pixels past the row
 * (the last segment) read on into the next row or the slack and are not stored; channels
 * past cout compute the last one's sums (conv3_pack) and are not stored. Each output sums
 * its c * 9 products in conv3_direct's order (input channel, then ki, kj): the same bits.
 * Built with C3_S2, the stride-2 convolution of conv3_phase's phase planes, tap (ki, kj) of
 * output (y, x) read as conv3_flat reads it (h and w the output's).
 */
#if C3_KERNEL == 3
kernel void conv3_bcast(global const float *xp, int xpoff, int c, int h, int w, int pw, int nseg, int nrb, int ncb,
                        global const float *wp, int wpoff, global const KILN_S *bias, int boff, int has_bias, int cout,
                        global KILN_S *out, int ooff, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int sg = q % nseg, t = q / nseg;
    int y = t % nrb;
    t /= nrb;
    int cb = t % ncb, n = t / ncb;
    int x0 = sg * C3_R, co0 = cb * C3_BCB;
#if C3_S2
    /* tap (ki, kj) of output (y, x): phase plane (ki & 1, kj & 1) at (y + (ki >> 1),
     * x + (kj >> 1)) */
    int qplane = (h + 1) * pw, plane = 4 * qplane;
#define C3_TAP(ki, kj) ((((ki)&1) * 2 + ((kj)&1)) * qplane + ((ki) >> 1) * pw + ((kj) >> 1))
#else
    int plane = (h + 2) * pw;
#define C3_TAP(ki, kj) ((ki)*pw + (kj))
#endif
    global const float *xb = xp + xpoff + n * c * plane + y * pw + x0;
    C3_T acc[C3_R][C3_NV];
#pragma unroll
    for (int p = 0; p < C3_R; p++)
#pragma unroll
        for (int v = 0; v < C3_NV; v++) acc[p][v] = (C3_T)(0.0f);
    for (int ci = 0; ci < c; ci++) {
        global const float *xc = xb + ci * plane;
        global const float *wc = wp + wpoff + (cb * c + ci) * 9 * C3_BCB;
#pragma unroll
        for (int ki = 0; ki < 3; ki++)
#pragma unroll
            for (int kj = 0; kj < 3; kj++) {
                C3_T wv[C3_NV];
#pragma unroll
                for (int v = 0; v < C3_NV; v++) wv[v] = C3_LOAD(v, wc + (ki * 3 + kj) * C3_BCB);
#pragma unroll
                for (int p = 0; p < C3_R; p++) {
                    C3_T xs = (C3_T)(xc[C3_TAP(ki, kj) + p]);
#pragma unroll
                    for (int v = 0; v < C3_NV; v++) acc[p][v] = fma(xs, wv[v], acc[p][v]);
                }
            }
    }
    /* each channel's pixels are contiguous in out: the accumulators' lanes through a
     * private array, channel by channel */
    int np = min(C3_R, w - x0);
    float tl[C3_R][C3_BCB];
#pragma unroll
    for (int p = 0; p < C3_R; p++)
#pragma unroll
        for (int v = 0; v < C3_NV; v++) C3_STORE(acc[p][v], v, tl[p]);
    int nco = min(C3_BCB, cout - co0);
    for (int j = 0; j < nco; j++) {
        int co = co0 + j;
        float b = has_bias ? KILN_LD(bias, boff + co) : 0.0f;
        global KILN_S *d = out + ooff + ((n * cout + co) * h + y) * w + x0;
        for (int p = 0; p < np; p++) {
            if (has_bias == 2)
                KILN_ST_RELU(d, p, tl[p][j] + b);
            else
                KILN_ST(d, p, tl[p][j] + b);
        }
    }
}
#endif
#undef C3_TAP

#undef C3_BCB

/*
 * conv3_direct for small planes that conv3_bcast does not take (rows shorter than half a
 * vector with fewer output channels than a vector, or whose column-shifted planes fill whole
 * vectors: src/ops/conv.c's c3_choose), also for stride 2: the same sums with the vectors
 * running along a plane's flat index f = oh * pw + ow instead of along one row, every tap
 * one load at a fixed offset from f. Over the bordered planes (pw = w + 2), tap (ki, kj) of
 * output f is xp's plane at f + ki * pw + kj, and the lanes at the two border columns
 * (ow >= w) are computed and dropped. Built with C3_KJ3, over the column-shifted planes of
 * conv3_pad3 (pw = w), it is plane kj at f + ki * pw: every lane a pixel (src/ops/conv.c
 * takes it where that saves lanes: 8 x 8 planes in 64 lanes rather than 96). Built with
 * C3_S2, the stride-2 convolution (padding 1) of the phase planes xp of conv3_phase (hq =
 * h + 1 rows of pitch pw = w + 2 each, h and w the output's). Lanes past the last row are
 * dropped too. One work-item per (image, block of C3_CB output channels, segment of C3_NV *
 * C3_VW flat positions); reads run up to a segment and 2 floats past an image-channel's
 * planes (the next ones or the slack). Same arguments as conv3_direct (nrb unused: 1), the
 * same order of each output's sum.
 */
#if C3_KERNEL == 2
kernel void conv3_flat(global const float *xp, int xpoff, int c, int h, int w, int pw, int nseg, int nrb, int ncb,
                       global const float *wp, int wpoff, global const KILN_S *bias, int boff, int has_bias, int cout,
                       global KILN_S *out, int ooff, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int sg = q % nseg, t = q / nseg;
    int cb = t % ncb, n = t / ncb;
    int co0 = cb * C3_CB, f0 = sg * (C3_NV * C3_VW);
#if C3_S2
    /* tap (ki, kj) of output f: phase plane (ki & 1, kj & 1) at f + (ki >> 1)*pw + (kj >> 1) */
    int qplane = (h + 1) * pw, plane = 4 * qplane;
#define C3_TAP(ki, kj) ((((ki)&1) * 2 + ((kj)&1)) * qplane + ((ki) >> 1) * pw + ((kj) >> 1))
#elif C3_KJ3
    /* tap (ki, kj) of output f: column-shifted plane kj at f + ki*pw */
    int kplane = (h + 2) * pw, plane = 3 * kplane;
#define C3_TAP(ki, kj) ((kj)*kplane + (ki)*pw)
#else
    int plane = (h + 2) * pw;
#define C3_TAP(ki, kj) ((ki)*pw + (kj))
#endif
    global const float *xb = xp + xpoff + n * c * plane + f0;
    C3_T acc[C3_CB][C3_NV];
#pragma unroll
    for (int j = 0; j < C3_CB; j++)
#pragma unroll
        for (int v = 0; v < C3_NV; v++) acc[j][v] = (C3_T)(0.0f);
    for (int ci = 0; ci < c; ci++) {
        global const float *xc = xb + ci * plane;
        global const float *wc = wp + wpoff + (cb * c + ci) * 9 * C3_CB;
#pragma unroll
        for (int ki = 0; ki < 3; ki++)
#pragma unroll
            for (int kj = 0; kj < 3; kj++) {
                C3_T xv[C3_NV];
#pragma unroll
                for (int v = 0; v < C3_NV; v++) xv[v] = C3_LOAD(0, xc + C3_TAP(ki, kj) + v * C3_VW);
#pragma unroll
                for (int j = 0; j < C3_CB; j++) {
                    C3_T wv = (C3_T)(wc[(ki * 3 + kj) * C3_CB + j]);
#pragma unroll
                    for (int v = 0; v < C3_NV; v++) acc[j][v] = fma(wv, xv[v], acc[j][v]);
                }
            }
    }
    /* flat position f0 is pixel (oh0, ow0); lanes walk it along */
    int oh0 = f0 / pw, ow0 = f0 - oh0 * pw;
#pragma unroll
    for (int j = 0; j < C3_CB; j++) {
        int co = co0 + j;
        if (co >= cout) continue; /* not break: the loop is unrolled */
        float b = has_bias ? KILN_LD(bias, boff + co) : 0.0f;
        global KILN_S *d = out + ooff + (n * cout + co) * h * w;
        float tl[C3_NV * C3_VW];
#pragma unroll
        for (int v = 0; v < C3_NV; v++) {
            C3_T y = acc[j][v] + b;
            C3_RELU(y);
            C3_STORE(y, v, tl);
        }
        int oh = oh0, ow = ow0;
        for (int l = 0; l < C3_NV * C3_VW && oh < h; l++) {
            if (ow < w) C3_ST(d, oh * w + ow, tl[l]);
            if (++ow == pw) ow = 0, oh++;
        }
    }
}
#endif

#undef C3_TAP

/*
 * The phase planes of a stride-2 convolution's input with a zero border of 1 (conv3_flat,
 * conv3_bcast and conv3_wgrad built with C3_S2): xq [N, C, 4, hq, pq] with plane (a, b) of
 * channel (n, c) holding xq[.., a*2 + b, i, j] = x[n, c, 2i + a - 1, 2j + b - 1] (0 outside
 * x), so that tap (ki, kj) of output (y, x) is plane (ki & 1, kj & 1) at (y + (ki >> 1),
 * x + (kj >> 1)). x any view (strides xs). After the last plane, `slack` zeros. One
 * work-item per (n, c).
 */
#ifndef C3_KERNEL
kernel void conv3_phase(global const KILN_S *x, int xoff, int4 xs, int c, int h, int w, int hq, int pq,
                        global float *xq, int xqoff, int slack, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int n = q / c, ci = q - n * c;
    global const KILN_S *s = x + xoff + n * xs.x + ci * xs.y;
    global float *d = xq + xqoff + q * 4 * hq * pq;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 2; b++) {
            /* columns j in [jlo, jhi) read x's column 2j + b - 1, the others are 0 */
            int jlo = 1 - b, jhi = min(pq, (w - b) / 2 + 1);
            for (int i = 0; i < hq; i++, d += pq) {
                int r = 2 * i + a - 1;
                if (r < 0 || r >= h) {
                    for (int j = 0; j < pq; j++) d[j] = 0.0f;
                    continue;
                }
                global const KILN_S *sr = s + r * xs.z;
                int step = 2 * xs.w, o = (b - 1) * xs.w;
                for (int j = 0; j < jlo; j++) d[j] = 0.0f;
                for (int j = jlo; j < jhi; j++) d[j] = KILN_LD(sr, j * step + o);
                for (int j = max(jlo, jhi); j < pq; j++) d[j] = 0.0f;
            }
        }
    if (q == nitems - 1)
        for (int j = 0; j < slack; j++) d[j] = 0.0f;
}
#endif

/* Build option of conv3_wgrad: C3_WB output channels per work-item. */
#ifndef C3_WB
#define C3_WB 2
#endif

/* C3W_SHIFT: conv3_wgrad (stride 1) makes the output gradient's vector shifted right by one
 * and two lanes with clang's __builtin_shufflevector (one lane-align instruction on x86)
 * from it and the vector before, instead of loading them. */
#if defined(__clang__) && !C3_S2
#define C3W_SHIFT 1
#if C3_VW == 16
#define C3_SHR1(a, b) __builtin_shufflevector(a, b, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30)
#define C3_SHR2(a, b) __builtin_shufflevector(a, b, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29)
#elif C3_VW == 8
#define C3_SHR1(a, b) __builtin_shufflevector(a, b, 7, 8, 9, 10, 11, 12, 13, 14)
#define C3_SHR2(a, b) __builtin_shufflevector(a, b, 6, 7, 8, 9, 10, 11, 12, 13)
#else
#define C3_SHR1(a, b) __builtin_shufflevector(a, b, 3, 4, 5, 6)
#define C3_SHR2(a, b) __builtin_shufflevector(a, b, 2, 3, 4, 5)
#endif
#else
#define C3W_SHIFT 0
#endif

/* The sum of v's lanes, halves added pairwise (a fixed order). */
inline float c3_hsum(C3_T v) {
#if C3_VW == 16
    float8 v8 = v.lo + v.hi;
#elif C3_VW == 8
    float8 v8 = v;
#endif
#if C3_VW >= 8
    float4 v4 = v8.lo + v8.hi;
#else
    float4 v4 = v;
#endif
    float2 v2 = v4.lo + v4.hi;
    return v2.x + v2.y;
}

/*
 * The weight gradient of the 3x3 stride-1 padding-1 convolution from the bordered planes
 * (conv3_pad, both with pitch pw = w + 2 and h + 2 rows) of its input, xp [N, c, h+2, pw],
 * and of its output gradient, gp [N, cout, h+2, pw], without columns:
 *   part[s][o][(i*3 + ki)*3 + kj] = sum over images n of part s, pixels (y, x) of
 *       gy[n, o, y, x] * x[n, i, y + ki - 1, x + kj - 1]   (0 outside the plane)
 * Along a plane's flat index f = (y+1)*pw + x+1 of gp, that input is xp at f + (ki-1)*pw +
 * kj-1, and gp's zero border columns cancel the terms whose x wraps into the next row. With
 * e = f - pw - 1 + kj, tap (ki, kj) sums gp[pw + 1 + e - kj] * xp[e + ki*pw] over e: per
 * vector of positions e, three loads of xp (ki = 0, 1, 2) serve every tap, and gp's vector
 * shifted right by kj = 0, 1, 2 lanes (made from it and the vector before: C3W_SHIFT, or
 * loaded) serves every ki. A work-item runs e from 0 in nvec vectors of C3_VW floats, up to
 * C3_VW - 1 positions past the plane's last (e = h*pw - 1): there gp's shifted reads are its
 * zeros (the last row's border, row h+1 and the next plane's row 0: the host requires
 * 2*pw + 1 >= C3_VW; after the last plane, conv3_pad's slack), and its first lanes' kj
 * positions before e = 0 are gp's border zeros too, so products with finite inputs there
 * add 0.
 *
 * One work-item per (part s of the images, block of C3_WB output channels, input channel
 * i): 9 * C3_WB vector accumulators; per vector of positions, C3_WB loads of gp and 3 of xp
 * (2 * C3_WB shuffles) for 9 * C3_WB multiply-adds. Channels past cout repeat the last one
 * and are not stored. Each sum runs in a fixed order (images, positions per lane, then the
 * lanes pairwise): deterministic. Images of part s: [n*s/nparts, n*(s+1)/nparts).
 * Built with C3_S2, the stride-2 convolution's weight gradient: xp holds the phase planes
 * of conv3_phase (hq = h + 1 rows of pitch pw, h the output's height, plane = (h + 2)*pw
 * still gp's), and each tap is one load of xp at a fixed offset from gp's position f = e
 * (f from 0: nvec vectors cover gp's positions up to h*pw - 3, the host requires
 * 2*pw + 3 >= C3_VW).
 */
#if C3_KERNEL == 4
kernel void conv3_wgrad(global const float *xp, int xpoff, global const float *gp, int gpoff, int c, int cout,
                        int plane, int pw, int nvec, int n, int nparts, int ncb, global float *part, int poff,
                        int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int ci = q % c, t = q / c;
    int cb = t % ncb, s = t / ncb;
    int co0 = cb * C3_WB;
    int na = n * s / nparts, ne = n * (s + 1) / nparts;
    int goff[C3_WB];
#pragma unroll
    for (int j = 0; j < C3_WB; j++) goff[j] = min(co0 + j, cout - 1) * plane;
#if C3_S2
    /* x as phase planes of h + 1 rows (h: the output's): tap (ki, kj) of gp's position
     * (y + 1, x + 1) is phase plane (ki & 1, kj & 1) at (y + (ki >> 1), x + (kj >> 1)) */
    int qplane = plane - pw, xplane = 4 * qplane;
#define C3_TAP(ki, kj) ((((ki)&1) * 2 + ((kj)&1)) * qplane + ((ki) >> 1) * pw + ((kj) >> 1))
#else
    int xplane = plane;
#endif
    C3_T acc[C3_WB][9];
#pragma unroll
    for (int j = 0; j < C3_WB; j++)
#pragma unroll
        for (int k = 0; k < 9; k++) acc[j][k] = (C3_T)(0.0f);
    for (int img = na; img < ne; img++) {
        global const float *xc = xp + xpoff + (img * c + ci) * xplane;
        global const float *gc = gp + gpoff + img * cout * plane + pw + 1;
#if C3_S2
        for (int v = 0; v < nvec; v++) {
            int f = v * C3_VW;
            C3_T gv[C3_WB];
#pragma unroll
            for (int j = 0; j < C3_WB; j++) gv[j] = C3_LOAD(0, gc + goff[j] + f);
#pragma unroll
            for (int ki = 0; ki < 3; ki++)
#pragma unroll
                for (int kj = 0; kj < 3; kj++) {
                    C3_T xv = C3_LOAD(0, xc + f + C3_TAP(ki, kj));
#pragma unroll
                    for (int j = 0; j < C3_WB; j++) acc[j][ki * 3 + kj] = fma(gv[j], xv, acc[j][ki * 3 + kj]);
                }
        }
#else
#if C3W_SHIFT
        C3_T gprev[C3_WB]; /* gp's vector before e = 0: only its last two lanes are read (zeros) */
#pragma unroll
        for (int j = 0; j < C3_WB; j++) gprev[j] = (C3_T)(0.0f);
#endif
        for (int v = 0; v < nvec; v++) {
            int e = v * C3_VW;
            /* gs[j][kj]: lanes of gp at e - kj + (0 .. C3_VW - 1) */
            C3_T gs[C3_WB][3];
#pragma unroll
            for (int j = 0; j < C3_WB; j++) {
#if C3W_SHIFT
                C3_T g = C3_LOAD(0, gc + goff[j] + e);
                gs[j][0] = g;
                gs[j][1] = C3_SHR1(gprev[j], g);
                gs[j][2] = C3_SHR2(gprev[j], g);
                gprev[j] = g;
#else
#pragma unroll
                for (int kj = 0; kj < 3; kj++) gs[j][kj] = C3_LOAD(0, gc + goff[j] + e - kj);
#endif
            }
#pragma unroll
            for (int ki = 0; ki < 3; ki++) {
                C3_T xv = C3_LOAD(0, xc + e + ki * pw);
#pragma unroll
                for (int kj = 0; kj < 3; kj++)
#pragma unroll
                    for (int j = 0; j < C3_WB; j++) acc[j][ki * 3 + kj] = fma(gs[j][kj], xv, acc[j][ki * 3 + kj]);
            }
        }
#endif
    }
#pragma unroll
    for (int j = 0; j < C3_WB; j++) {
        if (co0 + j >= cout) continue; /* not break: the loop is unrolled */
        global float *d = part + poff + ((s * cout + co0 + j) * c + ci) * 9;
#pragma unroll
        for (int k = 0; k < 9; k++) d[k] = c3_hsum(acc[j][k]);
    }
}
#endif
#if C3_S2
#undef C3_TAP
#endif

/*
 * gt [N * h * w, cp] = gy [N, cout, h, w] (any view: strides gs, n c h w, from goff) with its
 * channels last and zeros for channels cout .. cp - 1: what conv3_wgradc reads. One
 * work-item per (image, pixel); neighbouring work-items read neighbouring floats of each
 * channel's plane.
 */
#ifndef C3_KERNEL
kernel void conv3_tocl(global const KILN_S *gy, int goff, int4 gs, int cout, int h, int w, int cp, global float *gt,
                       int gtoff, int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int hw = h * w, n = q / hw, p = q - n * hw, y = p / w, x = p - y * w;
    global const KILN_S *s = gy + goff + n * gs.x + y * gs.z + x * gs.w;
    global float *d = gt + gtoff + q * cp;
    int o = 0;
    for (; o < cout; o++) d[o] = KILN_LD(s, o * gs.y);
    for (; o < cp; o++) d[o] = 0.0f;
}
#endif

/*
 * conv3_wgrad (stride 1) with the vectors along the output channels, for small planes,
 * where conv3_wgrad's vectors along a bordered plane's flat index leave lanes idle (a 7 x 7
 * plane: 49 pixels in 64 lanes): every lane is an output channel. Reads x's bordered planes
 * xp [N, c, h+2, pw] (conv3_pad) and the output gradient channels last, gt [N * h * w, cp]
 * (conv3_tocl, cp a multiple of C3_NV * C3_VW):
 *   part[s][o][(i*3 + ki)*3 + kj] = sum over images n of part s, pixels (y, x) of
 *       gt[n, y, x][o] * xp[n, i, y + ki, x + kj]
 * One work-item per (part s, block of C3_NV * C3_VW output channels, input channel i): 9 *
 * C3_NV vector accumulators; per pixel, C3_NV loads of gt and 9 broadcasts of xp for
 * 9 * C3_NV multiply-adds. Each sum runs over images, rows and pixels in order:
 * deterministic (in another order than conv3_wgrad's, so the two routes' sums differ in
 * their last bits).
 */
#if C3_KERNEL == 5
kernel void conv3_wgradc(global const float *xp, int xpoff, global const float *gt, int gtoff, int c, int cout,
                         int cp, int h, int w, int pw, int n, int nparts, int ncb, global float *part, int poff,
                         int nitems) {
    int q = get_global_id(0);
    if (q >= nitems) return;
    int ci = q % c, t = q / c;
    int cb = t % ncb, s = t / ncb;
    int co0 = cb * (C3_NV * C3_VW);
    int na = n * s / nparts, ne = n * (s + 1) / nparts;
    int plane = (h + 2) * pw;
    C3_T acc[9][C3_NV];
#pragma unroll
    for (int k = 0; k < 9; k++)
#pragma unroll
        for (int v = 0; v < C3_NV; v++) acc[k][v] = (C3_T)(0.0f);
    for (int img = na; img < ne; img++) {
        global const float *xc = xp + xpoff + (img * c + ci) * plane;
        global const float *gc = gt + gtoff + img * h * w * cp + co0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                C3_T g[C3_NV];
#pragma unroll
                for (int v = 0; v < C3_NV; v++) g[v] = C3_LOAD(v, gc + (y * w + x) * cp);
                global const float *xr = xc + y * pw + x;
#pragma unroll
                for (int ki = 0; ki < 3; ki++)
#pragma unroll
                    for (int kj = 0; kj < 3; kj++) {
                        C3_T xs = (C3_T)(xr[ki * pw + kj]);
#pragma unroll
                        for (int v = 0; v < C3_NV; v++) acc[ki * 3 + kj][v] = fma(xs, g[v], acc[ki * 3 + kj][v]);
                    }
            }
    }
    float tl[9][C3_NV * C3_VW];
#pragma unroll
    for (int k = 0; k < 9; k++)
#pragma unroll
        for (int v = 0; v < C3_NV; v++) C3_STORE(acc[k][v], v, tl[k]);
    int nco = min(C3_NV * C3_VW, cout - co0);
    for (int j = 0; j < nco; j++) {
        global float *d = part + poff + ((s * cout + co0 + j) * c + ci) * 9;
#pragma unroll
        for (int k = 0; k < 9; k++) d[k] = tl[k][j];
    }
}
#endif
