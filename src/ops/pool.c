/* src/ops/pool.c - 2-D pooling and upsampling over NCHW tensors, as torch.nn.functional:
 * max_pool2d (with return_indices), avg_pool2d, global average pooling (adaptive to 1x1)
 * and interpolate (nearest, bilinear), forward and backward (kernels in cl_kernels/pool.cl).
 *
 * Inputs are [N, C, H, W] or unbatched [C, H, W] (pooling; upsampling takes 4-D only, as
 * torch's interpolate reads a 3-D input as 1-D data). f32, f16 or bf16: halves are read and
 * written as halves and computed in f32; gradients are f32 whatever the dtype. Forward kernels read any view
 * through its strides, so a non-contiguous input costs no copy. Kernels run on 3-D ranges
 * (column, row, plane), which spares them index divisions, except max_pool2d's forward and
 * tile backward: one work-item per output row with plain loops over the row, which POCL
 * vectorises, unlike the branchy window loops of a work-item per output (README.md,
 * "Speed", has the figures).
 *
 * Backward kernels never use atomics, so gradients are bit-for-bit reproducible: in
 * general one work-item per input element gathers from the outputs that read it, in output
 * raster order (for max/avg pooling the same additions in the same order as PyTorch's CPU
 * scatter). When pooling windows do not overlap (stride >= span, as max_pool2d(2)) one
 * work-item per output (for max_pool2d: per output row) writes its own box of the input
 * instead. max_pool2d saves its
 * argmax indices in the node (whether or not the caller asked for them), so the backward
 * reads no input values.
 *
 * Output sizes follow torch's pooling_output_shape: floor((H + 2p - d(k-1) - 1) / s) + 1,
 * or with ceil_mode the ceiling, minus one when the last window would start beyond the
 * input and its left padding. Padding may be at most half the kernel (torch's check).
 * Parameters: stride 0 means the kernel size (torch's default) and dilation 0 means 1, so
 * a params struct with only the kernel set is max_pool2d(k). */
#include <stdio.h>
#include <string.h>

#include "ops_internal.h"

#define POOL_PROGRAM "pool"
#define POOL_OPTIONS ""
#define POOL_OPTIONS_WIDE "-DPOOL_WIDE" /* 64-bit bilinear source coordinates */

/* The geometry as the kernels read it (one argument, by value; cl_kernels/kiln_shared.h). */
typedef kiln_pool_geom pool_geom;

/* What every pooling and upsampling node keeps for its backward. */
typedef struct pool_state {
    pool_geom g;               /* the forward's geometry */
    kiln_upsample_mode mode;   /* kiln_upsample: nearest or bilinear */
    bool wide;                 /* kiln_upsample: 64-bit source coordinates (POOL_WIDE) */
    cl_float scale_h, scale_w; /* kiln_upsample nearest: in / out per axis */
} pool_state;

/* ---- validation ---------------------------------------------------------------------- */

/* x must be [N, C, H, W] (or [C, H, W] when allow3) of f32, f16 or bf16 with C, H, W
 * non-zero (only the batch may be empty, as torch). Fills the input part of g and *nbatch. */
static bool pool_input(kiln_ctx *ctx, const char *op, const kiln_tensor *x, bool allow3, pool_geom *g,
                       int64_t *nbatch) {
    char sb[160];
    kiln__shape_str(x->ndim, x->shape, sb, sizeof sb);
    if (x->dtype != KILN_F32 && !kiln_dtype_is_half(x->dtype)) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: input %s has dtype %s; f32, f16 and bf16 are supported", op, sb,
                   kiln_dtype_name(x->dtype));
        return false;
    }
    if (x->ndim != 4 && !(allow3 && x->ndim == 3)) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s must be %s", op, sb,
                   allow3 ? "[N, C, H, W] or unbatched [C, H, W]" : "[N, C, H, W]");
        return false;
    }
    int b = x->ndim - 3; /* index of the channel dim */
    if (x->shape[b] == 0 || x->shape[b + 1] == 0 || x->shape[b + 2] == 0) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s has an empty channel, height or width (only the batch may be 0)",
                   op, sb);
        return false;
    }
    memset(g, 0, sizeof *g);
    *nbatch = b ? x->shape[0] : 1;
    g->C = (cl_int)x->shape[b];
    g->H = (cl_int)x->shape[b + 1];
    g->W = (cl_int)x->shape[b + 2];
    g->xoff = (cl_int)x->offset;
    g->xsn = b ? (cl_int)x->strides[0] : 0;
    g->xsc = (cl_int)x->strides[b];
    g->xsh = (cl_int)x->strides[b + 1];
    g->xsw = (cl_int)x->strides[b + 2];
    g->merged = *nbatch <= 1 || x->strides[0] == x->shape[b] * x->strides[b];
    return true;
}

/* The forward's build options: its input's dtype (halves: computed in f32, stored in the
 * input's dtype, as torch's pooling of a half tensor returns one) and the 64-bit bilinear
 * coordinates when wide. The backward kernels are f32 in every build. */
static const char *fwd_options(char *buf, size_t cap, kiln_dtype dt, bool wide) {
    snprintf(buf, cap, "%s%s", wide ? POOL_OPTIONS_WIDE : POOL_OPTIONS, kiln__half_options(dt));
    return buf;
}

/* floor(a / b) for b > 0 (torch's div_rtn). */
static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

static int64_t out_size(int64_t in, int64_t k, int64_t pad, int64_t s, int64_t d, bool ceil_mode) {
    int64_t o = floor_div(in + 2 * pad - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0), s) + 1;
    if (ceil_mode && (o - 1) * s >= in + pad) o--;
    return o;
}

kiln_pool2d_params kiln_pool2d_defaults(int kh, int kw) {
    return (kiln_pool2d_params){.kernel = {kh, kw}, .stride = {kh, kw}, .dilation = {1, 1}, .count_include_pad = true};
}

/* Checks p against x (already in g) and fills the window part of g. avg pooling has no
 * dilation (torch's avg_pool2d takes none): it must be 1 (or 0). */
static bool pool_params(kiln_ctx *ctx, const char *op, const kiln_tensor *x, const kiln_pool2d_params *p, bool avg,
                        pool_geom *g) {
    char sb[160];
    kiln__shape_str(x->ndim, x->shape, sb, sizeof sb);
    if (!p) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: params is NULL for input %s (the kernel size is required)", op, sb);
        return false;
    }
    int k[2], s[2], pad[2], d[2];
    for (int a = 0; a < 2; a++) {
        k[a] = p->kernel[a];
        s[a] = p->stride[a];
        pad[a] = p->padding[a];
        d[a] = p->dilation[a];
    }
    char ps[200];
    snprintf(ps, sizeof ps, "kernel [%d, %d], stride [%d, %d], padding [%d, %d], dilation [%d, %d]%s", k[0], k[1], s[0],
             s[1], pad[0], pad[1], d[0], d[1], p->ceil_mode ? ", ceil_mode" : "");
    if (k[0] <= 0 || k[1] <= 0 || s[0] < 1 || s[1] < 1 || pad[0] < 0 || pad[1] < 0 || d[0] < 1 || d[1] < 1) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: input %s, %s: the kernel, stride and dilation must be positive, padding non-negative "
                   "(start from kiln_pool2d_defaults(kh, kw))",
                   op, sb, ps);
        return false;
    }
    if (avg && (d[0] != 1 || d[1] != 1)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: input %s, %s: avg_pool2d has no dilation (it must be 1)", op,
                   sb, ps);
        return false;
    }
    if (pad[0] > k[0] / 2 || pad[1] > k[1] / 2) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: input %s, %s: padding must be at most half the kernel size", op,
                   sb, ps);
        return false;
    }
    int64_t oh = out_size(g->H, k[0], pad[0], s[0], d[0], p->ceil_mode);
    int64_t ow = out_size(g->W, k[1], pad[1], s[1], d[1], p->ceil_mode);
    if (oh < 1 || ow < 1) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: input %s, %s: the output would be %lldx%lld; it must be at least 1x1", op,
                   sb, ps, (long long)oh, (long long)ow);
        return false;
    }
    g->OH = (cl_int)oh;
    g->OW = (cl_int)ow;
    g->kh = k[0], g->kw = k[1];
    g->sh = s[0], g->sw = s[1];
    g->ph = pad[0], g->pw = pad[1];
    g->dh = d[0], g->dw = d[1];
    return true;
}

/* x's shape with the plane replaced by oh x ow. */
static void out_shape(const kiln_tensor *x, int64_t oh, int64_t ow, int64_t *shape) {
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[x->ndim - 2] = oh;
    shape[x->ndim - 1] = ow;
}

/* ---- launches ------------------------------------------------------------------------ */

/*
 * Enqueues `kernel` over nx columns, ny rows and nz planes (a 3-D range: the kernels need
 * no index divisions). Work-groups hold 64 work-items shaped 8x8, 16x4 or 32x2, whichever
 * pads the plane least: POCL compiles a kernel once per work-group shape, so the shapes
 * are few, and each group's work-items share a plane.
 */
static kiln_status launch3(kiln_ctx *ctx, const char *op, const char *options, const char *kernel, size_t nargs,
                           const kiln__karg *args, size_t nx, size_t ny, size_t nz) {
    cl_kernel k = kiln__kernel(ctx, POOL_PROGRAM, options, kernel);
    if (!k) return ctx->err;
    for (size_t a = 0; a < nargs; a++) {
        cl_int err = clSetKernelArg(k, (cl_uint)a, args[a].size, args[a].ptr);
        if (err != CL_SUCCESS)
            return kiln__fail(ctx, kiln__cl_status(err), "%s: setting argument %zu of kernel '%s' failed: %s (%d)", op,
                              a, kernel, kiln__cl_name(err), err);
    }
    if (nx == 0 || ny == 0 || nz == 0) return KILN_OK;
    size_t cap = kiln__wg_size(ctx), kw = 0;
    if (clGetKernelWorkGroupInfo(k, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof kw, &kw, NULL) == CL_SUCCESS &&
        kw > 0 && kw < cap)
        cap = kw;
    static const size_t shapes[3][2] = {{16, 4}, {8, 8}, {32, 2}};
    size_t lx = 1, ly = 1, best = 0;
    for (int s = 0; s < 3; s++) {
        size_t sx = shapes[s][0], sy = shapes[s][1];
        while (sx * sy > cap) { /* a device (or kernel) with smaller groups */
            if (sy > 1)
                sy /= 2;
            else
                sx /= 2;
        }
        size_t area = (nx + sx - 1) / sx * sx * ((ny + sy - 1) / sy * sy);
        if (best == 0 || area < best) best = area, lx = sx, ly = sy;
    }
    size_t global[3] = {(nx + lx - 1) / lx * lx, (ny + ly - 1) / ly * ly, nz}, local[3] = {lx, ly, 1};
    cl_int err = clEnqueueNDRangeKernel(ctx->queue, k, 3, NULL, global, local, 0, NULL, NULL);
    KILN__COUNT(ctx, launches, 1);
    if (err != CL_SUCCESS)
        return kiln__fail(ctx, kiln__cl_status(err), "%s: launching kernel '%s' on '%s' failed: %s (%d)", op, kernel,
                          ctx->info.name, kiln__cl_name(err), err);
    return KILN_OK;
}

/* ---- backward ------------------------------------------------------------------------ */

/* What a backward kernel's work-items run over: input elements, output elements (both
 * 3-D launches) or output rows (1-D, the max_pool2d row kernels). */
typedef enum { OVER_INPUTS, OVER_OUTPUTS, OVER_OUTPUT_ROWS } pool_range;

/* Runs the gather kernel `kernel` (arguments: gout, its offset, [saved[0], its offset,]
 * gin, its offset, geometry, [nf floats]) into a new gradient of input 0's shape and hands
 * it to that input's gradient. */
static kiln_status pool_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout, const char *kernel, bool with_saved,
                                 int nf, pool_range over) {
    if (!kiln__input_needs_grad(n, 0)) return KILN_OK;
    const pool_state *st = KILN__NODE_STATE(n, pool_state);
    if (!st) return ctx->err;
    kiln_tensor *x = n->in[0];
    pool_geom g = st->g;
    kiln_tensor *gi = kiln__tensor_new(ctx, n->op, KILN_F32, x->ndim, x->shape);
    if (!gi) return ctx->err;
    int64_t planes = kiln__numel(x->ndim - 2, x->shape);
    cl_int gooff = (cl_int)gout->offset, gioff = (cl_int)gi->offset, soff = 0;
    cl_float f[2] = {st->scale_h, st->scale_w};
    kiln__karg args[9];
    size_t na = 0;
    args[na++] = KILN__ARG(gout->st->mem);
    args[na++] = KILN__ARG(gooff);
    if (with_saved) {
        soff = (cl_int)n->saved[0]->offset;
        args[na++] = KILN__ARG(n->saved[0]->st->mem);
        args[na++] = KILN__ARG(soff);
    }
    args[na++] = KILN__ARG(gi->st->mem);
    args[na++] = KILN__ARG(gioff);
    args[na++] = KILN__ARG(g);
    for (int j = 0; j < nf; j++) args[na++] = KILN__ARG(f[j]);
    const char *options = st->wide ? POOL_OPTIONS_WIDE : POOL_OPTIONS;
    kiln_status s;
    if (over == OVER_OUTPUT_ROWS)
        s = kiln__launch(ctx, n->op, POOL_PROGRAM, options, kernel, na, args, (size_t)(planes * g.OH), 0);
    else
        s = launch3(ctx, n->op, options, kernel, na, args, (size_t)(over == OVER_OUTPUTS ? g.OW : g.W),
                    (size_t)(over == OVER_OUTPUTS ? g.OH : g.H), (size_t)planes);
    if (s != KILN_OK) {
        kiln_tensor_free(gi);
        return s;
    }
    return kiln__accum_owned(ctx, n, 0, gi); /* gi is new: it becomes the gradient, no copy */
}

/* Windows that do not overlap (stride >= span on both axes, as max_pool2d(2)) let the
 * backward run over the outputs, each writing its own box of the input (tile kernels):
 * no search for the windows that hold an element. */
static bool tiles(const pool_geom *g) { return g->sh >= (g->kh - 1) * g->dh + 1 && g->sw >= (g->kw - 1) * g->dw + 1; }

static kiln_status max_pool2d_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const pool_state *st = KILN__NODE_STATE(n, pool_state);
    if (!st) return ctx->err;
    bool t = tiles(&st->g);
    return pool_backward(ctx, n, gout, t ? "max_pool2d_bwd_tile" : "max_pool2d_bwd", true, 0,
                         t ? OVER_OUTPUT_ROWS : OVER_INPUTS);
}

static kiln_status avg_pool2d_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const pool_state *st = KILN__NODE_STATE(n, pool_state);
    if (!st) return ctx->err;
    bool t = tiles(&st->g);
    return pool_backward(ctx, n, gout, t ? "avg_pool2d_bwd_tile" : "avg_pool2d_bwd", false, 0,
                         t ? OVER_OUTPUTS : OVER_INPUTS);
}

static kiln_status global_avg_pool2d_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    return pool_backward(ctx, n, gout, "global_avg_pool2d_bwd", false, 0, OVER_INPUTS);
}

static kiln_status upsample_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const pool_state *st = KILN__NODE_STATE(n, pool_state);
    if (!st) return ctx->err;
    if (st->mode == KILN_UPSAMPLE_NEAREST)
        return pool_backward(ctx, n, gout, "upsample_nearest_bwd", false, 2, OVER_INPUTS);
    return pool_backward(ctx, n, gout, "upsample_bilinear_bwd", false, 0, OVER_INPUTS);
}

/* Records the node of a one-input op whose backward needs the geometry g (and optionally
 * a saved tensor); *state (optional) gets the node's state for the caller to complete.
 * Returns false (error set) on failure. */
static bool record(kiln_ctx *ctx, const char *op, kiln_tensor *x, kiln_tensor *out, kiln__backward_fn fn,
                   const pool_geom *g, kiln_tensor *saved, pool_state **state) {
    kiln__node *n = kiln__node_new(ctx, op, out, 1, &x, fn);
    if (!n) return false;
    pool_state *st = KILN__NODE_STATE_NEW(n, pool_state);
    if (!st) return false;
    st->g = *g;
    if (kiln__node_save(n, saved) != KILN_OK) return false;
    if (state) *state = st;
    return true;
}

/* ---- forward --------------------------------------------------------------------------- */

kiln_tensor *kiln_max_pool2d(kiln_ctx *ctx, kiln_tensor *x, const kiln_pool2d_params *p, kiln_tensor **indices) {
    const char *op = "kiln_max_pool2d";
    if (indices) *indices = NULL;
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    /* (a half input runs in its dtype, autocast or not, as torch's pooling) */
    pool_geom g;
    int64_t nb;
    if (!pool_input(ctx, op, x, true, &g, &nb) || !pool_params(ctx, op, x, p, false, &g)) return NULL;
    g.n = (cl_int)(nb * g.C); /* the kernels run over the planes' output rows */
    int64_t shape[KILN_MAX_DIMS];
    out_shape(x, g.OH, g.OW, shape);
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, x->ndim, shape);
    if (!out) return NULL;
    bool grad = kiln__grad_wanted(ctx, 1, &x);
    kiln_tensor *ind = NULL;
    if (grad || indices) {
        ind = kiln__tensor_new(ctx, op, KILN_I32, x->ndim, shape);
        if (!ind) {
            kiln_tensor_free(out);
            return NULL;
        }
    }
    {
        cl_int yoff = (cl_int)out->offset, ioff = ind ? (cl_int)ind->offset : 0;
        cl_mem im = ind ? ind->st->mem : out->st->mem; /* unused without indices */
        kiln__karg args[] = {KILN__ARG(x->st->mem), KILN__ARG(out->st->mem), KILN__ARG(yoff),
                             KILN__ARG(im),         KILN__ARG(ioff),         KILN__ARG(g)};
        char o[64];
        if (kiln__launch(ctx, op, POOL_PROGRAM, fwd_options(o, sizeof o, x->dtype, false),
                         ind ? "max_pool2d_fwd_idx" : "max_pool2d_fwd", 6, args, (size_t)(nb * g.C * g.OH),
                         0) != KILN_OK) {
            kiln_tensor_free(ind);
            kiln_tensor_free(out);
            return NULL;
        }
    }
    if (grad && !record(ctx, op, x, out, max_pool2d_backward, &g, ind, NULL)) {
        kiln_tensor_free(ind);
        kiln_tensor_free(out);
        return NULL;
    }
    /* the node holds its own reference to the indices */
    if (!indices) kiln_tensor_free(ind);
    out = kiln__finish(ctx, op, out);
    if (indices) {
        if (out)
            *indices = ind;
        else
            kiln_tensor_free(ind);
    }
    return out;
}

kiln_tensor *kiln_avg_pool2d(kiln_ctx *ctx, kiln_tensor *x, const kiln_pool2d_params *p) {
    const char *op = "kiln_avg_pool2d";
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    /* (a half input runs in its dtype, autocast or not, as torch's pooling) */
    pool_geom g;
    int64_t nb;
    if (!pool_input(ctx, op, x, true, &g, &nb) || !pool_params(ctx, op, x, p, true, &g)) return NULL;
    g.flag = p->count_include_pad ? 1 : 0;
    int64_t shape[KILN_MAX_DIMS];
    out_shape(x, g.OH, g.OW, shape);
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, x->ndim, shape);
    if (!out) return NULL;
    {
        cl_int yoff = (cl_int)out->offset;
        kiln__karg args[] = {KILN__ARG(x->st->mem), KILN__ARG(out->st->mem), KILN__ARG(yoff), KILN__ARG(g)};
        char o[64];
        if (launch3(ctx, op, fwd_options(o, sizeof o, x->dtype, false), "avg_pool2d_fwd", 4, args, (size_t)g.OW,
                    (size_t)g.OH, (size_t)(nb * g.C)) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
    }
    if (kiln__grad_wanted(ctx, 1, &x) && !record(ctx, op, x, out, avg_pool2d_backward, &g, NULL, NULL)) {
        kiln_tensor_free(out);
        return NULL;
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_global_avg_pool2d(kiln_ctx *ctx, kiln_tensor *x) {
    const char *op = "kiln_global_avg_pool2d";
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    pool_geom g;
    int64_t nb;
    if (!pool_input(ctx, op, x, true, &g, &nb)) return NULL;
    g.OH = g.OW = 1;
    int64_t shape[KILN_MAX_DIMS];
    out_shape(x, 1, 1, shape);
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, x->ndim, shape);
    if (!out) return NULL;
    g.n = (cl_int)(nb * g.C);
    if (g.n > 0) {
        cl_int yoff = (cl_int)out->offset;
        kiln__karg args[] = {KILN__ARG(x->st->mem), KILN__ARG(out->st->mem), KILN__ARG(yoff), KILN__ARG(g)};
        char o[64];
        if (kiln__launch(ctx, op, POOL_PROGRAM, fwd_options(o, sizeof o, x->dtype, false), "global_avg_pool2d_fwd", 4,
                         args, (size_t)g.n, 0) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
    }
    if (kiln__grad_wanted(ctx, 1, &x) && !record(ctx, op, x, out, global_avg_pool2d_backward, &g, NULL, NULL)) {
        kiln_tensor_free(out);
        return NULL;
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_upsample(kiln_ctx *ctx, kiln_tensor *x, int out_h, int out_w, kiln_upsample_mode mode,
                           bool align_corners) {
    const char *op = "kiln_upsample";
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    pool_geom g;
    int64_t nb;
    if (!pool_input(ctx, op, x, false, &g, &nb)) return NULL;
    char sb[160];
    kiln__shape_str(x->ndim, x->shape, sb, sizeof sb);
    if (mode != KILN_UPSAMPLE_NEAREST && mode != KILN_UPSAMPLE_BILINEAR) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: input %s: unknown mode %d (nearest 0 or bilinear 1)", op, sb,
                   (int)mode);
        return NULL;
    }
    if (out_h <= 0 || out_w <= 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: input %s: output size %dx%d must be positive", op, sb, out_h,
                   out_w);
        return NULL;
    }
    if (mode == KILN_UPSAMPLE_NEAREST && align_corners) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: input %s: align_corners applies to bilinear only, not nearest (as torch)", op, sb);
        return NULL;
    }
    g.OH = out_h;
    g.OW = out_w;
    g.flag = align_corners ? 1 : 0;
    int64_t shape[KILN_MAX_DIMS];
    out_shape(x, out_h, out_w, shape);
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, x->ndim, shape);
    if (!out) return NULL;
    /* torch: scale = (float)in / out, the source index floor(o * scale) in float */
    cl_float sh = (float)g.H / (float)out_h, sw = (float)g.W / (float)out_w;
    /* the source coordinates need 64 bits when in * (2 out + 1) overflows 32 */
    int64_t span = (int64_t)(g.H > g.W ? g.H : g.W) * (2 * (int64_t)(out_h > out_w ? out_h : out_w) + 1);
    bool wide = span >= INT32_MAX / 2;
    {
        cl_int yoff = (cl_int)out->offset;
        kiln__karg args[] = {KILN__ARG(x->st->mem), KILN__ARG(out->st->mem), KILN__ARG(yoff),
                             KILN__ARG(g),          KILN__ARG(sh),           KILN__ARG(sw)};
        bool nearest = mode == KILN_UPSAMPLE_NEAREST;
        char o[64];
        if (launch3(ctx, op, fwd_options(o, sizeof o, x->dtype, wide),
                    nearest ? "upsample_nearest_fwd" : "upsample_bilinear_fwd", nearest ? 6 : 4, args, (size_t)out_w,
                    (size_t)out_h, (size_t)(nb * g.C)) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
    }
    pool_state *st = NULL;
    if (kiln__grad_wanted(ctx, 1, &x)) {
        if (!record(ctx, op, x, out, upsample_backward, &g, NULL, &st)) {
            kiln_tensor_free(out);
            return NULL;
        }
        st->mode = mode;
        st->wide = wide;
        st->scale_h = sh;
        st->scale_w = sw;
    }
    return kiln__finish(ctx, op, out);
}
