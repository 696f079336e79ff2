/* src/ops/shape.c - shape ops that copy: concat, stack, constant padding, index_select and
 * gather, with their backward rules (kernels in cl_kernels/shape.cl). kiln_flatten, of this
 * family (its golden cases are shape.safetensors'), is a reshape and lives with the views
 * in src/ops/view.c, whose slice backward pads.
 *
 * The forward kernels move bits, so concat, stack, index_select and gather take any dtype
 * (the program is built with T of the element's size); pad takes f32, i32 and u8 (its
 * fill value is converted on the host). Gradients flow to f32 inputs only.
 *
 * Backward rules: concat and stack hand each input a slice view of the output gradient;
 * pad's gradient is the output gradient padded by the negated amounts (a crop where the
 * forward padded, zeros where it cropped); index_select and gather have deterministic
 * kernels (no atomics) in which each element of the input gradient sums, in index order,
 * the output-gradient entries whose index points at it.
 *
 * index_select and gather check every index against the size of the indexed dim on the
 * device, without a wait: the forward kernel records a bad index in the context's
 * index-error buffer (src/device/deverr.c) and clamps it, so no read leaves the input's
 * storage; the next call that waits (kiln_to_host, kiln_sync) fails with an error naming
 * the op, the value, its position and the size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_internal.h"

#define SHAPE_PROGRAM "shape"
/* Backward kernels work on float gradients; they live in the f32-sized build. */
#define SHAPE_F32_OPTIONS "-DT=uint"

/* Build options for a bit-moving kernel on elements of dt. */
static const char *bits_options(kiln_dtype dt) {
    switch (kiln_dtype_size(dt)) {
    case 1: return "-DT=uchar";
    case 2: return "-DT=ushort";
    default: return "-DT=uint";
    }
}

/*
 * Kernel shapes. GPUs get a work-item per element (neighbouring work-items touch
 * neighbouring addresses). On CPUs POCL runs a work-group's items one after another and the
 * per-element index arithmetic (integer divisions) costs far more than the copy, so pad and
 * concat give each work-item a run of a row: pad a whole output row when there are
 * ROWS_PER_CU rows per compute unit to share, concat a chunk of up to CAT_CHUNK elements of
 * a row, which runs many times faster on POCL (README.md, "Speed", has the figures).
 */
#define ROWS_PER_CU 16
#define CAT_CHUNK 256

/* Per-row kernels on CPUs; ctx->hooks.shape_layout 1 forces the per-element kernels, 2 the
 * per-row ones, so one device's test run covers both. */
static bool row_layout(const kiln_ctx *ctx) {
    int mode = ctx->hooks.shape_layout;
    return mode ? mode == 2 : ctx->info.type == KILN_DEVICE_CPU;
}

/* ---- autograd node states ----------------------------------------------------------- */

/* Where one input of a concat or stack sits in the output: the slice [start, start + len)
 * along the node's dim; squeeze: the input lacks that dim (a stacked input, len 1). */
typedef struct cat_slice {
    int64_t start, len;
    bool squeeze;
} cat_slice;

/* Concat and stack: in = the parts, any number; part[k] places input k. Allocated with
 * cat_state_size(nin) bytes. */
typedef struct cat_state {
    int dim;
    cat_slice part[];
} cat_state;

static size_t cat_state_size(int nin) { return sizeof(cat_state) + sizeof(cat_slice) * (size_t)nin; }

/* Constant padding: in[0] x; the amounts as kiln_pad took them. */
typedef struct pad_state {
    int npad;
    int64_t pad[2 * KILN_MAX_DIMS];
} pad_state;

/* index_select and gather: in[0] x; saved[0] the index. */
typedef struct idx_state {
    int dim; /* of the input, a 0-d tensor counting as [1] */
} idx_state;

/* "[5, 7, 11]" of a tensor. */
static char *tshape(const kiln_tensor *t, char *buf, size_t cap) {
    return kiln__shape_str(t->ndim, t->shape, buf, cap);
}

/* ---- concat and stack --------------------------------------------------------------- */

/* Copies src (any view) into the region of dst's storage at doff with strides dst_st
 * (src's rank, src's shape). */
static kiln_status copy_region(kiln_ctx *ctx, const char *op, kiln_tensor *src, cl_mem dst, int64_t doff,
                               const int64_t *dst_st) {
    int64_t n = kiln__numel(src->ndim, src->shape);
    if (n == 0) return KILN_OK;
    kiln__geom g;
    int64_t st[2][KILN_MAX_DIMS];
    memset(st, 0, sizeof st);
    for (int d = 0; d < src->ndim; d++) {
        st[0][d] = src->strides[d];
        st[1][d] = dst_st[d];
    }
    kiln__geom_build(&g, src->ndim, src->shape, 2, (const int64_t(*)[KILN_MAX_DIMS])st);
    cl_int soff = (cl_int)src->offset, dof = (cl_int)doff, ni = (cl_int)n;
    const char *opts = bits_options(src->dtype);
    int last = g.ndim - 1;
    if (row_layout(ctx)) {
        /* rows of the last merged dim in chunks; g keeps the dims before it */
        cl_int cols = g.shape[last], ss = g.strides[0][last], ds = g.strides[1][last];
        cl_int chunk = CAT_CHUNK, nchunks = (cols + CAT_CHUNK - 1) / CAT_CHUNK;
        cl_int nitems = (cl_int)(n / cols) * nchunks;
        g.ndim = last;
        kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff),   KILN__ARG(ss),   KILN__ARG(dst),
                             KILN__ARG(dof),          KILN__ARG(ds),     KILN__ARG(cols), KILN__ARG(chunk),
                             KILN__ARG(nchunks),      KILN__ARG(nitems), KILN__ARG(g)};
        return kiln__launch(ctx, op, SHAPE_PROGRAM, opts, "cat_copy_chunks", 11, args, (size_t)nitems, 0);
    }
    if (g.ndim <= 2 && g.strides[0][last] == 1 && g.strides[1][last] == 1) {
        /* contiguous rows: one division per element instead of a walk over the dims */
        cl_int cols = g.shape[last];
        cl_int sld = g.ndim == 2 ? g.strides[0][0] : 0, dld = g.ndim == 2 ? g.strides[1][0] : 0;
        kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(sld),  KILN__ARG(dst),
                             KILN__ARG(dof),          KILN__ARG(dld),  KILN__ARG(cols), KILN__ARG(ni)};
        return kiln__launch(ctx, op, SHAPE_PROGRAM, opts, "cat_copy_rows", 8, args, (size_t)n, 0);
    }
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(dst),
                         KILN__ARG(dof),          KILN__ARG(ni),   KILN__ARG(g)};
    return kiln__launch(ctx, op, SHAPE_PROGRAM, opts, "cat_copy_strided", 6, args, (size_t)n, 0);
}

static kiln_status cat_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const cat_state *st = kiln__node_state_get(n, cat_state_size(n->nin), "cat_state");
    if (!st) return ctx->err;
    int dim = st->dim;
    for (int k = 0; k < n->nin; k++) {
        if (!kiln__input_needs_grad(n, k)) continue;
        const cat_slice *p = &st->part[k];
        int64_t sh[KILN_MAX_DIMS], str[KILN_MAX_DIMS];
        int nd = 0;
        for (int d = 0; d < gout->ndim; d++) {
            if (d == dim && p->squeeze) continue;
            sh[nd] = d == dim ? p->len : gout->shape[d];
            str[nd++] = gout->strides[d];
        }
        kiln_tensor *g = kiln__tensor_view(ctx, gout, nd, sh, str, gout->offset + p->start * gout->strides[dim]);
        if (!g) return ctx->err;
        kiln_status s = kiln__accum(ctx, n, k, g);
        kiln_tensor_free(g);
        if (s != KILN_OK) return s;
    }
    return KILN_OK;
}

/* Records the backward of a concat of the np tensors ts into out: one node over all of
 * them, which hands each its slice of the gradient. */
static bool cat_record(kiln_ctx *ctx, const char *op, kiln_tensor *out, int dim, int np, kiln_tensor *const *ts,
                       const cat_slice *parts) {
    if (!kiln__grad_wanted(ctx, np, ts)) return true;
    kiln__node *n = kiln__node_new(ctx, op, out, np, ts, cat_backward);
    cat_state *st = n ? kiln__node_state_new(n, cat_state_size(np), "cat_state") : NULL;
    if (!st) return false;
    st->dim = dim;
    memcpy(st->part, parts, sizeof *parts * (size_t)np);
    return true;
}

/* Checks the list and the inputs; false with the error set (NULL inputs propagate). */
static bool cat_check_list(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "%s: ctx is NULL", op), false;
    if (n < 1) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: needs at least one tensor (n = %d)", op, n);
        return false;
    }
    if (!ts) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: the tensor list is NULL (n = %d)", op, n);
        return false;
    }
    if (!kiln__check_inputs(ctx, op, n, ts)) return false;
    for (int k = 1; k < n; k++) {
        if (ts[k]->dtype != ts[0]->dtype) {
            char a[160], b[160];
            kiln__fail(ctx, KILN_ERR_DTYPE, "%s: input %d %s has dtype %s but input 0 %s has dtype %s", op, k,
                       tshape(ts[k], a, sizeof a), kiln_dtype_name(ts[k]->dtype), tshape(ts[0], b, sizeof b),
                       kiln_dtype_name(ts[0]->dtype));
            return false;
        }
    }
    return true;
}

/*
 * Concatenates ts along dim of the output. stack: every input has the output's shape
 * without dim (it fills one index of dim); otherwise the inputs have the output's rank and
 * fill consecutive slices of dim.
 */
static kiln_tensor *cat_run(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts, int dim, bool stack,
                            int ondim, const int64_t *oshape) {
    kiln_tensor *out = kiln__tensor_new(ctx, op, ts[0]->dtype, ondim, oshape);
    if (!out) return NULL;
    cat_slice *parts = malloc(sizeof *parts * (size_t)n);
    if (!parts) {
        kiln_tensor_free(out);
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    int64_t dst_st[KILN_MAX_DIMS];
    for (int d = 0, j = 0; d < ondim; d++)
        if (!(stack && d == dim)) dst_st[j++] = out->strides[d];
    int64_t pos = 0;
    for (int k = 0; k < n; k++) {
        int64_t len = stack ? 1 : ts[k]->shape[dim];
        parts[k] = (cat_slice){pos, len, stack};
        if (copy_region(ctx, op, ts[k], out->st->mem, out->offset + pos * out->strides[dim], dst_st) != KILN_OK) {
            free(parts);
            kiln_tensor_free(out);
            return NULL;
        }
        pos += len;
    }
    bool ok = cat_record(ctx, op, out, dim, n, ts, parts);
    free(parts);
    if (!ok) {
        kiln_tensor_free(out);
        return NULL;
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_concat(kiln_ctx *ctx, int n, kiln_tensor *const *ts, int dim) {
    const char *op = "kiln_concat";
    if (!cat_check_list(ctx, op, n, ts)) return NULL;
    char a[160], b[160];
    int nd = ts[0]->ndim;
    for (int k = 0; k < n; k++) {
        if (ts[k]->ndim == 0) {
            kiln__fail(ctx, KILN_ERR_SHAPE,
                       "%s: input %d is zero-dimensional and cannot be concatenated (use "
                       "kiln_stack)",
                       op, k);
            return NULL;
        }
    }
    int d = kiln__axis(dim, nd);
    if (d < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: dim %d out of range for input 0 %s", op, dim,
                   tshape(ts[0], a, sizeof a));
        return NULL;
    }
    int64_t oshape[KILN_MAX_DIMS];
    memcpy(oshape, ts[0]->shape, sizeof oshape);
    oshape[d] = 0;
    for (int k = 0; k < n; k++) {
        bool match = ts[k]->ndim == nd;
        for (int j = 0; j < nd && match; j++) match = j == d || ts[k]->shape[j] == ts[0]->shape[j];
        if (!match) {
            kiln__fail(ctx, KILN_ERR_SHAPE,
                       "%s: input %d has shape %s but input 0 has shape %s; shapes must match "
                       "except in dim %d",
                       op, k, tshape(ts[k], a, sizeof a), tshape(ts[0], b, sizeof b), d);
            return NULL;
        }
        oshape[d] += ts[k]->shape[d];
    }
    return cat_run(ctx, op, n, ts, d, false, nd, oshape);
}

kiln_tensor *kiln_stack(kiln_ctx *ctx, int n, kiln_tensor *const *ts, int dim) {
    const char *op = "kiln_stack";
    if (!cat_check_list(ctx, op, n, ts)) return NULL;
    char a[160], b[160];
    int nd = ts[0]->ndim;
    if (nd == KILN_MAX_DIMS) {
        kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "%s: inputs %s already have %d dims (the most a tensor has)", op,
                   tshape(ts[0], a, sizeof a), KILN_MAX_DIMS);
        return NULL;
    }
    int d = kiln__axis(dim, nd + 1);
    if (d < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: dim %d out of range for stacking inputs %s (%d dims)", op, dim,
                   tshape(ts[0], a, sizeof a), nd);
        return NULL;
    }
    for (int k = 1; k < n; k++) {
        if (ts[k]->ndim != nd || memcmp(ts[k]->shape, ts[0]->shape, sizeof(int64_t) * (size_t)nd) != 0) {
            kiln__fail(ctx, KILN_ERR_SHAPE,
                       "%s: input %d has shape %s but input 0 has shape %s; stacked tensors "
                       "must have equal shapes",
                       op, k, tshape(ts[k], a, sizeof a), tshape(ts[0], b, sizeof b));
            return NULL;
        }
    }
    int64_t oshape[KILN_MAX_DIMS];
    for (int j = 0, s = 0; j <= nd; j++) oshape[j] = j == d ? n : ts[0]->shape[s++];
    return cat_run(ctx, op, n, ts, d, true, nd + 1, oshape);
}

/* ---- constant padding --------------------------------------------------------------- */

/* The padding's geometry as the kernels read it (one argument, by value;
 * cl_kernels/kiln_shared.h). */
typedef kiln_pad_geom pad_geom;

/*
 * x padded to oshape with before[d] elements (negative: cropped) ahead of x along each dim;
 * `bits` is the fill value's bit pattern in x's dtype. Dims without padding that are
 * contiguous with their neighbour in x merge, size-1 dims without padding drop out.
 */
static kiln_tensor *pad_run(kiln_ctx *ctx, const char *op, kiln_tensor *x, const int64_t *before, const int64_t *oshape,
                            uint32_t bits) {
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, x->ndim, oshape);
    if (!out) return NULL;
    int64_t n = kiln__numel(out->ndim, out->shape);
    if (n == 0) return out;
    pad_geom g;
    memset(&g, 0, sizeof g);
    int m = 0;
    for (int d = 0; d < x->ndim; d++) {
        bool plain = before[d] == 0 && oshape[d] == x->shape[d];
        if (plain && x->shape[d] == 1) continue;
        if (plain && m > 0 && g.before[m - 1] == 0 && g.oshape[m - 1] == g.ishape[m - 1] &&
            g.istride[m - 1] == x->strides[d] * x->shape[d]) {
            g.oshape[m - 1] *= (cl_int)x->shape[d];
            g.ishape[m - 1] = g.oshape[m - 1];
            g.istride[m - 1] = (cl_int)x->strides[d];
            continue;
        }
        g.oshape[m] = (cl_int)oshape[d];
        g.ishape[m] = (cl_int)x->shape[d];
        g.before[m] = (cl_int)before[d];
        g.istride[m] = (cl_int)x->strides[d];
        m++;
    }
    if (m == 0) { /* one element */
        g.oshape[0] = g.ishape[0] = 1;
        m = 1;
    }
    g.ndim = m;
    cl_int soff = (cl_int)x->offset, doff = (cl_int)out->offset, ni = (cl_int)n;
    cl_uint b32 = bits;
    cl_ushort b16 = (cl_ushort)bits;
    cl_uchar b8 = (cl_uchar)bits;
    size_t es = kiln_dtype_size(x->dtype);
    kiln__karg v = es == 1 ? KILN__ARG(b8) : es == 2 ? KILN__ARG(b16) : KILN__ARG(b32);
    kiln__karg args[] = {KILN__ARG(x->st->mem),
                         KILN__ARG(soff),
                         KILN__ARG(out->st->mem),
                         KILN__ARG(doff),
                         KILN__ARG(ni),
                         KILN__ARG(g),
                         v};
    /* a work-item per output row on CPUs (see row_layout) */
    cl_int nrows = (cl_int)(n / g.oshape[m - 1]);
    bool rows = ctx->hooks.shape_layout ? ctx->hooks.shape_layout == 2
                                        : row_layout(ctx) && nrows >= ROWS_PER_CU * (cl_int)ctx->info.compute_units;
    kiln_status s;
    if (rows) {
        args[4] = KILN__ARG(nrows);
        s = kiln__launch(ctx, op, SHAPE_PROGRAM, bits_options(x->dtype), "pad_rows", 7, args, (size_t)nrows, 0);
    } else {
        s = kiln__launch(ctx, op, SHAPE_PROGRAM, bits_options(x->dtype), "pad_fwd", 7, args, (size_t)n, 0);
    }
    if (s != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* The gradient is gout padded by the negated amounts with zeros. */
static kiln_status pad_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const pad_state *st = KILN__NODE_STATE(n, pad_state);
    if (!st) return ctx->err;
    kiln_tensor *x = n->in[0];
    int64_t before[KILN_MAX_DIMS] = {0};
    for (int p = 0; p < st->npad / 2; p++) before[x->ndim - 1 - p] = -st->pad[2 * p];
    kiln_tensor *g = pad_run(ctx, "kiln_pad (backward)", gout, before, x->shape, 0);
    if (!g) return ctx->err;
    return kiln__accum_owned(ctx, n, 0, g); /* a new tensor: it becomes the gradient */
}

kiln_tensor *kiln_pad(kiln_ctx *ctx, kiln_tensor *x, int npad, const int64_t *pad, float value) {
    const char *op = "kiln_pad";
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    char a[160];
    if (npad < 0 || npad % 2 != 0 || npad / 2 > x->ndim) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: %d padding amounts for input %s (need an even number, at "
                   "most 2 * %d dims)",
                   op, npad, tshape(x, a, sizeof a), x->ndim);
        return NULL;
    }
    if (npad > 0 && !pad) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: pad is NULL with npad %d", op, npad);
        return NULL;
    }
    uint32_t bits;
    switch (x->dtype) {
    case KILN_F32: memcpy(&bits, &value, sizeof bits); break;
    case KILN_I32: {
        int32_t iv = (int32_t)value;
        memcpy(&bits, &iv, sizeof bits);
        break;
    }
    case KILN_U8: bits = (uint8_t)value; break;
    case KILN_F16: bits = kiln_f32_to_f16(value); break; /* the value rounded as kiln_to_dtype does */
    case KILN_BF16: bits = kiln_f32_to_bf16(value); break;
    default:
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: input %s has dtype %s; pad supports f32, f16, bf16, i32 and u8", op,
                   tshape(x, a, sizeof a), kiln_dtype_name(x->dtype));
        return NULL;
    }
    int64_t before[KILN_MAX_DIMS] = {0}, oshape[KILN_MAX_DIMS];
    memcpy(oshape, x->shape, sizeof oshape);
    for (int p = 0; p < npad / 2; p++) {
        int d = x->ndim - 1 - p;
        int64_t lo = pad[2 * p], hi = pad[2 * p + 1];
        /* bounded so the sums below cannot overflow; a real size never comes close */
        if (lo > INT32_MAX || lo < -(int64_t)INT32_MAX || hi > INT32_MAX || hi < -(int64_t)INT32_MAX ||
            x->shape[d] + lo + hi < 0) {
            kiln__fail(ctx, KILN_ERR_SHAPE,
                       "%s: padding (%lld, %lld) of dim %d (size %lld) of input %s gives a "
                       "negative or too large size",
                       op, (long long)lo, (long long)hi, d, (long long)x->shape[d], tshape(x, a, sizeof a));
            return NULL;
        }
        before[d] = lo;
        oshape[d] = x->shape[d] + lo + hi;
    }
    kiln_tensor *out = pad_run(ctx, op, x, before, oshape, bits);
    if (!out) return NULL;
    if (kiln__grad_wanted(ctx, 1, &x)) {
        kiln__node *n = kiln__node_new(ctx, op, out, 1, &x, pad_backward);
        pad_state *st = n ? KILN__NODE_STATE_NEW(n, pad_state) : NULL;
        if (!st) {
            kiln_tensor_free(out);
            return NULL;
        }
        st->npad = npad;
        for (int k = 0; k < npad; k++) st->pad[k] = pad[k];
    }
    return kiln__finish(ctx, op, out);
}

/* ---- index_select and gather -------------------------------------------------------- */

/* The indexing geometry as the kernels read it (one argument, by value;
 * cl_kernels/kiln_shared.h). */
typedef kiln_idx_geom idx_geom;

/* Fills g for an iteration over shape (ndim dims) with stride arrays sa and sb (sb may be
 * NULL), keeping `dim` as it is: size-1 dims drop out and neighbours on the same side of
 * dim merge where every stride array allows it. */
static void idx_coalesce(idx_geom *g, int ndim, const int64_t *shape, int dim, const int64_t *sa, const int64_t *sb) {
    int m = 0, gd = 0;
    bool last_is_dim = false;
    for (int d = 0; d < ndim; d++) {
        if (d != dim && shape[d] == 1) continue;
        if (d != dim && m > 0 && !last_is_dim && g->sa[m - 1] == sa[d] * shape[d] &&
            (!sb || g->sb[m - 1] == sb[d] * shape[d])) {
            g->shape[m - 1] *= (cl_int)shape[d];
            g->sa[m - 1] = (cl_int)sa[d];
            if (sb) g->sb[m - 1] = (cl_int)sb[d];
            continue;
        }
        if (d == dim) gd = m;
        last_is_dim = d == dim;
        g->shape[m] = (cl_int)shape[d];
        g->sa[m] = (cl_int)sa[d];
        g->sb[m] = sb ? (cl_int)sb[d] : 0;
        m++;
    }
    g->ndim = m;
    g->dim = gd;
}

/* Registers the device-side check of the index values against [0, size) (the forward
 * kernels record a bad one; kiln_to_host or kiln_sync report it): the error names op, the
 * value, its position (row-major in the index), the dim and its size, and the input's
 * shape. */
static bool check_indices(kiln_ctx *ctx, const char *op, kiln_tensor *index, int dim, int64_t size,
                          const kiln_tensor *x, cl_mem *ebuf, cl_int *site) {
    char a[160], b[160], text[400];
    snprintf(text, sizeof text, "of index %s is out of range for dim %d of size %lld (input %s)",
             tshape(index, b, sizeof b), dim, (long long)size, tshape(x, a, sizeof a));
    return kiln__deverr_register(ctx, op, "index", 0, NULL, text, ebuf, site) == KILN_OK;
}

static bool check_index_dtype(kiln_ctx *ctx, const char *op, const kiln_tensor *index) {
    if (index->dtype == KILN_I32) return true;
    char a[160];
    kiln__fail(ctx, KILN_ERR_DTYPE, "%s: index %s has dtype %s; indices must be i32", op, tshape(index, a, sizeof a),
               kiln_dtype_name(index->dtype));
    return false;
}

/* gx = [outer, R, inner] contiguous, gout = [outer, len, inner]. */
static kiln_status index_select_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const idx_state *st = KILN__NODE_STATE(n, idx_state);
    if (!st) return ctx->err;
    kiln_tensor *x = n->in[0], *index = n->saved[0];
    int dim = st->dim;
    kiln_tensor *gx = kiln__tensor_new(ctx, "kiln_index_select (backward)", KILN_F32, x->ndim, x->shape);
    if (!gx) return ctx->err;
    int64_t numel = kiln__numel(x->ndim, x->shape);
    if (numel > 0) {
        int64_t inner = 1;
        for (int d = dim + 1; d < x->ndim; d++) inner *= x->shape[d];
        cl_int R = x->ndim ? (cl_int)x->shape[dim] : 1, ci = (cl_int)inner, ni = (cl_int)numel;
        cl_int len = (cl_int)kiln__numel(index->ndim, index->shape);
        cl_int istride = index->ndim ? (cl_int)index->strides[0] : 0;
        cl_int goff = (cl_int)gout->offset, ioff = (cl_int)index->offset, xoff = (cl_int)gx->offset;
        kiln__karg args[] = {KILN__ARG(gout->st->mem),
                             KILN__ARG(goff),
                             KILN__ARG(index->st->mem),
                             KILN__ARG(ioff),
                             KILN__ARG(istride),
                             KILN__ARG(len),
                             KILN__ARG(gx->st->mem),
                             KILN__ARG(xoff),
                             KILN__ARG(ni),
                             KILN__ARG(R),
                             KILN__ARG(ci)};
        if (kiln__launch(ctx, "kiln_index_select (backward)", SHAPE_PROGRAM, SHAPE_F32_OPTIONS, "index_select_bwd", 11,
                         args, (size_t)numel, 0) != KILN_OK) {
            kiln_tensor_free(gx);
            return ctx->err;
        }
    }
    return kiln__accum_owned(ctx, n, 0, gx);
}

kiln_tensor *kiln_index_select(kiln_ctx *ctx, kiln_tensor *x, int dim, kiln_tensor *index) {
    const char *op = "kiln_index_select";
    kiln_tensor *in[2] = {x, index};
    if (!kiln__check_inputs(ctx, op, 2, in)) return NULL;
    if (!check_index_dtype(ctx, op, index)) return NULL;
    char a[160], b[160];
    if (index->ndim > 1) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: index %s must be 1-D (input %s)", op, tshape(index, b, sizeof b),
                   tshape(x, a, sizeof a));
        return NULL;
    }
    /* a 0-d input counts as [1] and gives a 0-d output, as torch */
    int nd = x->ndim ? x->ndim : 1;
    int d = kiln__axis(dim, nd);
    if (d < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: dim %d out of range for input %s", op, dim,
                   tshape(x, a, sizeof a));
        return NULL;
    }
    int64_t len = kiln__numel(index->ndim, index->shape);
    if (x->ndim == 0 && len != 1) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: index %s of a 0-d input must hold one index", op,
                   tshape(index, b, sizeof b));
        return NULL;
    }
    int64_t xshape[KILN_MAX_DIMS], xst[KILN_MAX_DIMS], oshape[KILN_MAX_DIMS];
    if (x->ndim == 0) {
        xshape[0] = 1;
        xst[0] = 0;
    } else {
        memcpy(xshape, x->shape, sizeof xshape);
        memcpy(xst, x->strides, sizeof xst);
    }
    cl_mem ebuf;
    cl_int site;
    if (!check_indices(ctx, op, index, d, xshape[d], x, &ebuf, &site)) return NULL;
    memcpy(oshape, xshape, sizeof oshape);
    oshape[d] = len;
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, x->ndim, oshape);
    if (!out) return NULL;
    int64_t n = kiln__numel(nd, oshape);
    if (n > 0) {
        idx_geom g;
        memset(&g, 0, sizeof g);
        idx_coalesce(&g, nd, oshape, d, xst, NULL);
        g.xsize = (cl_int)xshape[d];
        cl_int xoff = (cl_int)x->offset, ioff = (cl_int)index->offset, ooff = (cl_int)out->offset, ni = (cl_int)n;
        cl_int istride = index->ndim ? (cl_int)index->strides[0] : 0;
        kiln__karg args[] = {KILN__ARG(x->st->mem), KILN__ARG(xoff),    KILN__ARG(index->st->mem),
                             KILN__ARG(ioff),       KILN__ARG(istride), KILN__ARG(out->st->mem),
                             KILN__ARG(ooff),       KILN__ARG(ni),      KILN__ARG(g),
                             KILN__ARG(ebuf),       KILN__ARG(site)};
        if (kiln__launch(ctx, op, SHAPE_PROGRAM, bits_options(x->dtype), "index_select_fwd", 11, args, (size_t)n, 0) !=
            KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
    }
    if (kiln__grad_wanted(ctx, 1, &x)) {
        kiln__node *node = kiln__node_new(ctx, op, out, 1, &x, index_select_backward);
        idx_state *st = node ? KILN__NODE_STATE_NEW(node, idx_state) : NULL;
        if (!st || kiln__node_save(node, index) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
        st->dim = d;
    }
    return kiln__finish(ctx, op, out);
}

/* The geometry of a gather over x and index with 0-d tensors counted as [1]. */
static void gather_dims(const kiln_tensor *t, int64_t *shape, int64_t *strides) {
    if (t->ndim == 0) {
        shape[0] = 1;
        strides[0] = 0;
        return;
    }
    memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    memcpy(strides, t->strides, sizeof(int64_t) * (size_t)t->ndim);
}

static kiln_status gather_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    const idx_state *st = KILN__NODE_STATE(n, idx_state);
    if (!st) return ctx->err;
    kiln_tensor *x = n->in[0], *index = n->saved[0];
    int dim = st->dim;
    kiln_tensor *gx = kiln__tensor_new(ctx, "kiln_gather (backward)", KILN_F32, x->ndim, x->shape);
    if (!gx) return ctx->err;
    int64_t numel = kiln__numel(x->ndim, x->shape);
    if (numel > 0) {
        int nd = x->ndim ? x->ndim : 1;
        int64_t xshape[KILN_MAX_DIMS], xst[KILN_MAX_DIMS], ishape[KILN_MAX_DIMS], ist[KILN_MAX_DIMS];
        int64_t gst[KILN_MAX_DIMS];
        gather_dims(x, xshape, xst);
        gather_dims(index, ishape, ist);
        kiln__contiguous_strides(nd, ishape, gst);
        idx_geom g;
        memset(&g, 0, sizeof g);
        g.ndim = nd;
        g.dim = dim;
        g.xsize = (cl_int)xshape[dim];
        for (int d = 0; d < nd; d++) {
            g.shape[d] = (cl_int)xshape[d];
            g.shape2[d] = (cl_int)ishape[d];
            g.sa[d] = (cl_int)gst[d];
            g.sb[d] = (cl_int)ist[d];
        }
        cl_int goff = (cl_int)gout->offset, ioff = (cl_int)index->offset, xoff = (cl_int)gx->offset, ni = (cl_int)numel;
        kiln__karg args[] = {KILN__ARG(gout->st->mem),
                             KILN__ARG(goff),
                             KILN__ARG(index->st->mem),
                             KILN__ARG(ioff),
                             KILN__ARG(gx->st->mem),
                             KILN__ARG(xoff),
                             KILN__ARG(ni),
                             KILN__ARG(g)};
        if (kiln__launch(ctx, "kiln_gather (backward)", SHAPE_PROGRAM, SHAPE_F32_OPTIONS, "gather_bwd", 8, args,
                         (size_t)numel, 0) != KILN_OK) {
            kiln_tensor_free(gx);
            return ctx->err;
        }
    }
    return kiln__accum_owned(ctx, n, 0, gx);
}

kiln_tensor *kiln_gather(kiln_ctx *ctx, kiln_tensor *x, int dim, kiln_tensor *index) {
    const char *op = "kiln_gather";
    kiln_tensor *in[2] = {x, index};
    if (!kiln__check_inputs(ctx, op, 2, in)) return NULL;
    if (!check_index_dtype(ctx, op, index)) return NULL;
    char a[160], b[160];
    /* 0-d tensors count as [1], as torch */
    int nd = x->ndim ? x->ndim : 1, ind = index->ndim ? index->ndim : 1;
    if (nd != ind) {
        kiln__fail(ctx, KILN_ERR_SHAPE, "%s: index %s must have as many dims as input %s", op,
                   tshape(index, b, sizeof b), tshape(x, a, sizeof a));
        return NULL;
    }
    int d = kiln__axis(dim, nd);
    if (d < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: dim %d out of range for input %s", op, dim,
                   tshape(x, a, sizeof a));
        return NULL;
    }
    int64_t xshape[KILN_MAX_DIMS], xst[KILN_MAX_DIMS], ishape[KILN_MAX_DIMS], ist[KILN_MAX_DIMS];
    gather_dims(x, xshape, xst);
    gather_dims(index, ishape, ist);
    for (int j = 0; j < nd; j++) {
        if (j != d && ishape[j] > xshape[j]) {
            kiln__fail(ctx, KILN_ERR_SHAPE,
                       "%s: index %s is larger than input %s in dim %d (only dim %d may be "
                       "larger)",
                       op, tshape(index, b, sizeof b), tshape(x, a, sizeof a), j, d);
            return NULL;
        }
    }
    cl_mem ebuf;
    cl_int site;
    if (!check_indices(ctx, op, index, d, xshape[d], x, &ebuf, &site)) return NULL;
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, index->ndim, index->shape);
    if (!out) return NULL;
    int64_t n = kiln__numel(index->ndim, index->shape);
    if (n > 0) {
        idx_geom g;
        memset(&g, 0, sizeof g);
        idx_coalesce(&g, nd, ishape, d, xst, ist);
        g.xsize = (cl_int)xshape[d];
        cl_int xoff = (cl_int)x->offset, ioff = (cl_int)index->offset, ooff = (cl_int)out->offset, ni = (cl_int)n;
        kiln__karg args[] = {KILN__ARG(x->st->mem),
                             KILN__ARG(xoff),
                             KILN__ARG(index->st->mem),
                             KILN__ARG(ioff),
                             KILN__ARG(out->st->mem),
                             KILN__ARG(ooff),
                             KILN__ARG(ni),
                             KILN__ARG(g),
                             KILN__ARG(ebuf),
                             KILN__ARG(site)};
        if (kiln__launch(ctx, op, SHAPE_PROGRAM, bits_options(x->dtype), "gather_fwd", 10, args, (size_t)n, 0) !=
            KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
    }
    if (kiln__grad_wanted(ctx, 1, &x)) {
        kiln__node *node = kiln__node_new(ctx, op, out, 1, &x, gather_backward);
        idx_state *st = node ? KILN__NODE_STATE_NEW(node, idx_state) : NULL;
        if (!st || kiln__node_save(node, index) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
        st->dim = d;
    }
    return kiln__finish(ctx, op, out);
}
