/* src/tensor/tensor.c - the tensor handle: creation, lifetime and scopes, host transfer,
 * fills and contiguous copies. The differentiable views (kiln_view, kiln_reshape, ...) are
 * ops: src/ops/view.c. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensor_internal.h"

/* the largest storage a tensor may have, in elements (see tensor_internal.h) */
#define MAX_ELEMS KILN__MAX_ELEMS

int64_t kiln__numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

void kiln__contiguous_strides(int ndim, const int64_t *shape, int64_t *strides) {
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        strides[d] = s;
        s *= shape[d] > 1 ? shape[d] : 1;
    }
}

bool kiln__is_contiguous(const kiln_tensor *t) {
    if (kiln__numel(t->ndim, t->shape) == 0) return true; /* nothing to address */
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->strides[d] != s) return false;
        s *= t->shape[d];
    }
    return true;
}

char *kiln__shape_str(int ndim, const int64_t *shape, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    used += (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && used < cap; d++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (used < cap) snprintf(buf + used, cap - used, "]");
    return buf;
}

int kiln__axis(int axis, int ndim) {
    if (axis < 0) axis += ndim;
    return (axis >= 0 && axis < ndim) ? axis : -1;
}

bool kiln__check_inputs(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts) {
    if (!ctx) {
        kiln__fail_global(KILN_ERR_NULL, "%s: ctx is NULL", op);
        return false;
    }
    for (int i = 0; i < n; i++) {
        if (!ts[i]) {
            if (ctx->err == KILN_OK) kiln__fail(ctx, KILN_ERR_NULL, "%s: input %d is NULL", op, i);
            return false;
        }
        if (ts[i]->ctx != ctx) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: input %d belongs to another context", op, i);
            return false;
        }
    }
    return true;
}

static kiln_status fill_guards(kiln_ctx *ctx, const char *op, kiln_tensor *t);
static void tensors_destroy(kiln_ctx *ctx);

/* ---- lifetime ----------------------------------------------------------------------- */

static kiln_tensor *link_new(kiln_ctx *ctx, const char *op) {
    /* kiln_close frees the tensors left (registered again after the list was empty: a no-op) */
    if (!ctx->tensors && kiln__on_close(ctx, tensors_destroy) != KILN_OK) return NULL;
    kiln_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for a tensor handle", op);
        return NULL;
    }
    t->ctx = ctx;
    t->scope = ctx->scope_depth;
    t->next = ctx->tensors;
    if (ctx->tensors) ctx->tensors->prev = t;
    ctx->tensors = t;
    ctx->ntensors++;
    return t;
}

static void storage_unref(kiln_ctx *ctx, kiln__storage *st) {
    if (!st || --st->refs > 0) return;
    kiln__pool_release(ctx, st->mem, st->bytes);
    free(st);
}

/*
 * Lifetime with autograd: a tensor is freed when its user lets it go (kiln_tensor_free or
 * the end of its scope: "dropped") and no autograd node references it (refs == 0). Freeing
 * one frees its node (through ctx->node_release, the autograd floor's), which drops the
 * node's references to its inputs; those released in turn go on a work list (ctx->dead,
 * linked through dead_next) instead of recursing.
 */
static void release_one(kiln_ctx *ctx, kiln_tensor *t) {
    if (t->prev)
        t->prev->next = t->next;
    else
        ctx->tensors = t->next;
    if (t->next) t->next->prev = t->prev;
    ctx->ntensors--;
    struct kiln__node *n = t->node;
    t->node = NULL;
    if (n) ctx->node_release(ctx, n, false); /* may queue inputs on ctx->dead */
    if (t->grad) {
        kiln_tensor *g = t->grad;
        t->grad = NULL;
        kiln_tensor_free(g);
    }
    if (t->gacc) {
        kiln_tensor *g = t->gacc;
        t->gacc = NULL;
        kiln_tensor_free(g);
    }
    storage_unref(ctx, t->st);
    free(t);
}

void kiln__release_dead(kiln_ctx *ctx) {
    if (ctx->releasing) return; /* the outer call drains the list */
    ctx->releasing = true;
    while (ctx->dead) {
        kiln_tensor *t = ctx->dead;
        ctx->dead = t->dead_next;
        release_one(ctx, t);
    }
    ctx->releasing = false;
}

static void drop(kiln_ctx *ctx, kiln_tensor *t) {
    if (t->dropped) return;
    t->dropped = true;
    t->scope = 0;
    if (t->refs == 0) {
        t->dead_next = ctx->dead;
        ctx->dead = t;
    }
}

void kiln__tensor_unref(kiln_tensor *t) {
    if (--t->refs == 0 && t->dropped) {
        t->dead_next = t->ctx->dead;
        t->ctx->dead = t;
    }
}

void kiln_tensor_free(kiln_tensor *t) {
    if (!t) return;
    drop(t->ctx, t);
    kiln__release_dead(t->ctx);
}

/* kiln_close's hook: every tensor and node of the context. */
static void tensors_destroy(kiln_ctx *ctx) {
    /* Nodes first, without their reference counting: every tensor goes anyway. */
    for (kiln_tensor *t = ctx->tensors; t; t = t->next) {
        if (t->node) ctx->node_release(ctx, t->node, true);
        t->node = NULL;
        t->grad = t->gacc = NULL; /* they are on the list themselves */
        t->refs = 0;
    }
    while (ctx->tensors) {
        kiln_tensor *t = ctx->tensors;
        ctx->tensors = t->next;
        storage_unref(ctx, t->st);
        free(t);
    }
    ctx->ntensors = 0;
    ctx->dead = NULL;
}

void kiln_scope_begin(kiln_ctx *ctx) {
    if (ctx) ctx->scope_depth++;
}

void kiln_scope_end(kiln_ctx *ctx) {
    if (!ctx || ctx->scope_depth == 0) return;
    for (kiln_tensor *t = ctx->tensors; t; t = t->next)
        if (!t->dropped && t->scope >= ctx->scope_depth) drop(ctx, t);
    kiln__release_dead(ctx);
    ctx->scope_depth--;
}

kiln_tensor *kiln_tensor_keep(kiln_tensor *t) {
    if (t) t->scope = 0;
    return t;
}

int64_t kiln_ctx_num_tensors(const kiln_ctx *ctx) { return ctx ? ctx->ntensors : 0; }

kiln_tensor *kiln__tensor_new(kiln_ctx *ctx, const char *op, kiln_dtype dtype, int ndim, const int64_t *shape) {
    char sb[160];
    if ((unsigned)dtype >= KILN_DTYPE_COUNT) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: invalid dtype %d", op, (int)dtype);
        return NULL;
    }
    if (ndim < 0 || ndim > KILN_MAX_DIMS) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %d dims (at most %d)", op, ndim, KILN_MAX_DIMS);
        return NULL;
    }
    if (ndim > 0 && !shape) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: shape is NULL", op);
        return NULL;
    }
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && n > MAX_ELEMS / shape[d])) {
            kiln__fail(ctx, shape[d] < 0 ? KILN_ERR_INVALID_ARGUMENT : KILN_ERR_UNSUPPORTED,
                       "%s: shape %s is negative or has more than %lld elements (kernels index with 32-bit "
                       "ints)",
                       op, kiln__shape_str(ndim, shape, sb, sizeof sb), (long long)MAX_ELEMS);
            return NULL;
        }
        n *= shape[d];
    }
    size_t es = kiln_dtype_size(dtype);
    kiln__storage *st = calloc(1, sizeof *st);
    if (!st) {
        kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    st->guard = ctx->guard;
    st->numel = n;
    st->esize = es;
    st->mem = kiln__pool_alloc(ctx, (size_t)(n + 2 * st->guard) * es, &st->bytes, op);
    if (!st->mem) {
        free(st);
        return NULL;
    }
    st->refs = 1;
    kiln_tensor *t = link_new(ctx, op);
    if (!t) {
        storage_unref(ctx, st);
        return NULL;
    }
    t->st = st;
    t->offset = st->guard;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    kiln__contiguous_strides(ndim, t->shape, t->strides);
    if (st->guard && fill_guards(ctx, op, t) != KILN_OK) {
        kiln_tensor_free(t);
        return NULL;
    }
    return t;
}

kiln_tensor *kiln__tensor_view(kiln_ctx *ctx, kiln_tensor *base, int ndim, const int64_t *shape, const int64_t *strides,
                               int64_t offset) {
    kiln_tensor *t = link_new(ctx, "view");
    if (!t) return NULL;
    t->st = base->st;
    t->st->refs++;
    t->dtype = base->dtype;
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        t->strides[d] = strides[d];
    }
    t->offset = offset;
    return t;
}

/* ---- properties --------------------------------------------------------------------- */

kiln_ctx *kiln_tensor_ctx(const kiln_tensor *t) { return t ? t->ctx : NULL; }
kiln_dtype kiln_tensor_dtype(const kiln_tensor *t) { return t ? t->dtype : KILN_DTYPE_COUNT; }
int kiln_tensor_ndim(const kiln_tensor *t) { return t ? t->ndim : -1; }
const int64_t *kiln_tensor_shape(const kiln_tensor *t) { return t ? t->shape : NULL; }
const int64_t *kiln_tensor_strides(const kiln_tensor *t) { return t ? t->strides : NULL; }
int64_t kiln_tensor_offset(const kiln_tensor *t) { return t ? t->offset : -1; }
int64_t kiln_tensor_numel(const kiln_tensor *t) { return t ? kiln__numel(t->ndim, t->shape) : -1; }
bool kiln_tensor_is_contiguous(const kiln_tensor *t) { return t && kiln__is_contiguous(t); }

char *kiln_tensor_shape_str(const kiln_tensor *t, char *buf, size_t cap) {
    if (!buf || cap == 0) return buf;
    if (!t) {
        snprintf(buf, cap, "(null)");
        return buf;
    }
    return kiln__shape_str(t->ndim, t->shape, buf, cap);
}

/* ---- geometry for strided kernels --------------------------------------------------- */

/* Fills g for an output of `shape` and up to KILN__GEOM_IN inputs' strides (already
 * broadcast to ndim dims). Drops size-1 dims and merges dims that are contiguous in every
 * operand, so the kernels do as little index arithmetic as the layout allows. */
void kiln__geom_build(kiln__geom *g, int ndim, const int64_t *shape, int nin, const int64_t (*strides)[KILN_MAX_DIMS]) {
    memset(g, 0, sizeof *g);
    int64_t sh[KILN_MAX_DIMS], st[KILN__GEOM_IN][KILN_MAX_DIMS];
    int n = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        bool merge = n > 0;
        for (int j = 0; j < nin && merge; j++) merge = st[j][n - 1] == strides[j][d] * shape[d];
        if (merge) {
            sh[n - 1] *= shape[d];
            for (int j = 0; j < nin; j++) st[j][n - 1] = strides[j][d];
            continue;
        }
        sh[n] = shape[d];
        for (int j = 0; j < nin; j++) st[j][n] = strides[j][d];
        n++;
    }
    if (n == 0) { /* a single element */
        sh[0] = 1;
        for (int j = 0; j < nin; j++) st[j][0] = 0;
        n = 1;
    }
    g->ndim = n;
    for (int d = 0; d < n; d++) {
        g->shape[d] = (cl_int)sh[d];
        for (int j = 0; j < nin; j++) g->strides[j][d] = (cl_int)st[j][d];
    }
}

static const char *copy_options(kiln_dtype dt) {
    switch (kiln_dtype_size(dt)) {
    case 1: return "-DT=uchar";
    case 2: return "-DT=ushort";
    default: return "-DT=uint";
    }
}

/* Innermost rows at least this long, contiguous in the source, are copied a row per
 * work-item on CPUs (copy.cl's copy_rows): an LSTM's batch-first transposes took 8% of its
 * step through copy_strided's div/mod per element. ctx->hooks.shape_layout 1 forces the
 * per-element kernel, 2 the rows (as for shape.c's per-row kernels). */
#define COPY_ROWS_MIN 16

static bool copy_by_rows(const kiln_ctx *ctx, const kiln__geom *g) {
    int last = g->ndim - 1;
    if (g->ndim < 2 || g->strides[0][last] != 1 || g->shape[last] < COPY_ROWS_MIN) return false;
    if (ctx->hooks.shape_layout) return ctx->hooks.shape_layout == 2;
    return ctx->info.type == KILN_DEVICE_CPU;
}

static kiln_status copy_into(kiln_ctx *ctx, const char *op, kiln_tensor *src, kiln_tensor *dst) {
    kiln__geom g;
    int64_t st[1][KILN_MAX_DIMS];
    memcpy(st[0], src->strides, sizeof st[0]);
    kiln__geom_build(&g, src->ndim, src->shape, 1, (const int64_t(*)[KILN_MAX_DIMS])st);
    cl_int soff = (cl_int)src->offset, doff = (cl_int)dst->offset, n = (cl_int)kiln__numel(src->ndim, src->shape);
    if (copy_by_rows(ctx, &g)) {
        cl_int len = g.shape[g.ndim - 1], nrows = n / len;
        g.ndim--; /* the outer dims */
        kiln__karg args[] = {
            KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(dst->st->mem), KILN__ARG(doff), KILN__ARG(nrows),
            KILN__ARG(len),          KILN__ARG(g)};
        return kiln__launch(ctx, op, "copy", copy_options(src->dtype), "copy_rows", 7, args, (size_t)nrows, 0);
    }
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(dst->st->mem),
                         KILN__ARG(doff),         KILN__ARG(n),    KILN__ARG(g)};
    return kiln__launch(ctx, op, "copy", copy_options(src->dtype), "copy_strided", 6, args, (size_t)n, 0);
}

kiln_status kiln__copy_into(kiln_ctx *ctx, const char *op, kiln_tensor *src, kiln_tensor *dst) {
    char a[160], b[160];
    if (src->dtype != dst->dtype || src->ndim != dst->ndim ||
        memcmp(src->shape, dst->shape, sizeof(int64_t) * (size_t)src->ndim) != 0)
        return kiln__fail(ctx, KILN_ERR_SHAPE, "%s: cannot copy %s %s into %s %s", op, kiln_dtype_name(src->dtype),
                          kiln__shape_str(src->ndim, src->shape, a, sizeof a), kiln_dtype_name(dst->dtype),
                          kiln__shape_str(dst->ndim, dst->shape, b, sizeof b));
    int64_t n = kiln__numel(src->ndim, src->shape);
    if (n == 0) return KILN_OK;
    if (kiln__is_contiguous(dst)) return copy_into(ctx, op, src, dst);
    kiln__geom g;
    int64_t st[2][KILN_MAX_DIMS];
    memcpy(st[0], src->strides, sizeof st[0]);
    memcpy(st[1], dst->strides, sizeof st[1]);
    kiln__geom_build(&g, src->ndim, src->shape, 2, (const int64_t(*)[KILN_MAX_DIMS])st);
    cl_int soff = (cl_int)src->offset, doff = (cl_int)dst->offset, ni = (cl_int)n;
    kiln__karg args[] = {KILN__ARG(src->st->mem), KILN__ARG(soff), KILN__ARG(dst->st->mem),
                         KILN__ARG(doff),         KILN__ARG(ni),   KILN__ARG(g)};
    return kiln__launch(ctx, op, "copy", copy_options(src->dtype), "copy_view", 6, args, (size_t)n, 0);
}

kiln_tensor *kiln__copy_contiguous(kiln_ctx *ctx, const char *op, kiln_tensor *t) {
    kiln_tensor *out = kiln__tensor_new(ctx, op, t->dtype, t->ndim, t->shape);
    if (!out) return NULL;
    if (copy_into(ctx, op, t, out) != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* ---- creation ----------------------------------------------------------------------- */

kiln_tensor *kiln_empty(kiln_ctx *ctx, kiln_dtype dtype, int ndim, const int64_t *shape) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_empty: ctx is NULL"), NULL;
    return kiln__tensor_new(ctx, "kiln_empty", dtype, ndim, shape);
}

kiln_tensor *kiln_from_host(kiln_ctx *ctx, const void *data, kiln_dtype dtype, int ndim, const int64_t *shape) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_from_host: ctx is NULL"), NULL;
    if (!data) {
        kiln__fail(ctx, KILN_ERR_NULL, "kiln_from_host: data is NULL");
        return NULL;
    }
    kiln_tensor *t = kiln__tensor_new(ctx, "kiln_from_host", dtype, ndim, shape);
    if (!t) return NULL;
    size_t bytes = (size_t)kiln__numel(ndim, shape) * kiln_dtype_size(dtype);
    if (bytes == 0) return t;
    /* Blocking: the caller may reuse `data` as soon as this returns. */
    cl_int err = clEnqueueWriteBuffer(ctx->queue, t->st->mem, CL_TRUE, (size_t)t->offset * kiln_dtype_size(dtype),
                                      bytes, data, 0, NULL, NULL);
    KILN__COUNT(ctx, blocking_writes, 1);
    KILN__COUNT(ctx, bytes_to_device, bytes);
    if (err != CL_SUCCESS) {
        kiln__fail(ctx, kiln__cl_status(err), "kiln_from_host: writing %zu bytes to '%s' failed: %s (%d)", bytes,
                   ctx->info.name, kiln__cl_name(err), err);
        kiln_tensor_free(t);
        return NULL;
    }
    return t;
}

static kiln_status fill_bits(kiln_ctx *ctx, const char *op, kiln_tensor *t, uint32_t bits) {
    cl_int off = (cl_int)t->offset, n = (cl_int)kiln__numel(t->ndim, t->shape);
    const char *opts = copy_options(t->dtype);
    size_t es = kiln_dtype_size(t->dtype);
    cl_uchar b8 = (cl_uchar)bits;
    cl_ushort b16 = (cl_ushort)bits;
    cl_uint b32 = bits;
    kiln__karg v = es == 1 ? KILN__ARG(b8) : es == 2 ? KILN__ARG(b16) : KILN__ARG(b32);
    if (kiln__is_contiguous(t)) {
        kiln__karg args[] = {KILN__ARG(t->st->mem), KILN__ARG(off), KILN__ARG(n), v};
        return kiln__launch(ctx, op, "copy", opts, "fill_contig", 4, args, (size_t)n, 0);
    }
    kiln__geom g;
    int64_t st[1][KILN_MAX_DIMS];
    memcpy(st[0], t->strides, sizeof st[0]);
    kiln__geom_build(&g, t->ndim, t->shape, 1, (const int64_t(*)[KILN_MAX_DIMS])st);
    kiln__karg args[] = {KILN__ARG(t->st->mem), KILN__ARG(off), KILN__ARG(n), KILN__ARG(g), v};
    return kiln__launch(ctx, op, "copy", opts, "fill_strided", 5, args, (size_t)n, 0);
}

static uint32_t value_bits(kiln_dtype dt, float value) {
    uint32_t bits;
    if (dt == KILN_I32) {
        int32_t i = (int32_t)value;
        memcpy(&bits, &i, 4);
    } else if (dt == KILN_U8) {
        bits = (uint8_t)value;
    } else if (dt == KILN_F16) {
        bits = kiln_f32_to_f16(value);
    } else if (dt == KILN_BF16) {
        bits = kiln_f32_to_bf16(value);
    } else {
        memcpy(&bits, &value, 4);
    }
    return bits;
}

kiln_status kiln_fill(kiln_tensor *t, float value) {
    if (!t) return kiln__fail_global(KILN_ERR_NULL, "kiln_fill: tensor is NULL");
    return fill_bits(t->ctx, "kiln_fill", t, value_bits(t->dtype, value));
}

static kiln_tensor *full(kiln_ctx *ctx, const char *op, float value, int ndim, const int64_t *shape) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "%s: ctx is NULL", op), NULL;
    kiln_tensor *t = kiln__tensor_new(ctx, op, KILN_F32, ndim, shape);
    if (t && fill_bits(ctx, op, t, value_bits(KILN_F32, value)) != KILN_OK) {
        kiln_tensor_free(t);
        return NULL;
    }
    return t;
}

kiln_tensor *kiln_full(kiln_ctx *ctx, float value, int ndim, const int64_t *shape) {
    return full(ctx, "kiln_full", value, ndim, shape);
}
kiln_tensor *kiln_zeros(kiln_ctx *ctx, int ndim, const int64_t *shape) {
    return full(ctx, "kiln_zeros", 0.0f, ndim, shape);
}
kiln_tensor *kiln_ones(kiln_ctx *ctx, int ndim, const int64_t *shape) {
    return full(ctx, "kiln_ones", 1.0f, ndim, shape);
}

kiln_tensor *kiln_arange(kiln_ctx *ctx, double start, double end, double step) {
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "kiln_arange: ctx is NULL"), NULL;
    if (step == 0 || !isfinite(start) || !isfinite(end) || !isfinite(step) || (end - start) / step < 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_arange: bad range start=%g end=%g step=%g", start, end, step);
        return NULL;
    }
    double count = ceil((end - start) / step);
    if (count > (double)MAX_ELEMS) {
        kiln__fail(ctx, KILN_ERR_UNSUPPORTED, "kiln_arange: %g elements is too many", count);
        return NULL;
    }
    int64_t n = (int64_t)count;
    kiln_tensor *t = kiln__tensor_new(ctx, "kiln_arange", KILN_F32, 1, &n);
    if (!t) return NULL;
    cl_int off = (cl_int)t->offset, ni = (cl_int)n;
    cl_float s0 = (cl_float)start, st = (cl_float)step;
    kiln__karg args[] = {KILN__ARG(t->st->mem), KILN__ARG(off), KILN__ARG(ni), KILN__ARG(s0), KILN__ARG(st)};
    if (kiln__launch(ctx, "kiln_arange", "copy", "-DT=uint", "arange_f32", 5, args, (size_t)n, 0) != KILN_OK) {
        kiln_tensor_free(t);
        return NULL;
    }
    return t;
}

/* ---- host transfer ------------------------------------------------------------------ */

kiln_status kiln_to_host(kiln_tensor *t, void *dst, size_t dst_bytes) {
    if (!t) return kiln__fail_global(KILN_ERR_NULL, "kiln_to_host: tensor is NULL");
    kiln_ctx *ctx = t->ctx;
    char sb[160];
    size_t es = kiln_dtype_size(t->dtype);
    size_t bytes = (size_t)kiln__numel(t->ndim, t->shape) * es;
    if (!dst) return kiln__fail(ctx, KILN_ERR_NULL, "kiln_to_host: destination is NULL");
    if (dst_bytes < bytes)
        return kiln__fail(
            ctx, KILN_ERR_BUFFER_TOO_SMALL, "kiln_to_host: tensor %s %s needs %zu bytes, destination holds %zu",
            kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), kiln_dtype_name(t->dtype), bytes, dst_bytes);
    if (bytes == 0) return KILN_OK;
    kiln_tensor *src = t;
    if (!kiln__is_contiguous(t)) {
        src = kiln__copy_contiguous(ctx, "kiln_to_host", t);
        if (!src) return ctx->err;
    }
    kiln__deverr_enqueue(ctx); /* index errors the device recorded come back with the data */
    cl_int err =
        clEnqueueReadBuffer(ctx->queue, src->st->mem, CL_TRUE, (size_t)src->offset * es, bytes, dst, 0, NULL, NULL);
    KILN__COUNT(ctx, blocking_reads, 1);
    KILN__COUNT(ctx, bytes_to_host, bytes);
    if (src != t) kiln_tensor_free(src);
    if (err != CL_SUCCESS)
        return kiln__fail(ctx, kiln__cl_status(err), "kiln_to_host: reading %zu bytes from '%s' failed: %s (%d)", bytes,
                          ctx->info.name, kiln__cl_name(err), err);
    return kiln__deverr_check(ctx, "kiln_to_host");
}

kiln_status kiln_copy_from_host(kiln_tensor *t, const void *src, size_t src_bytes) {
    if (!t) return kiln__fail_global(KILN_ERR_NULL, "kiln_copy_from_host: tensor is NULL");
    kiln_ctx *ctx = t->ctx;
    char sb[160];
    size_t es = kiln_dtype_size(t->dtype);
    size_t bytes = (size_t)kiln__numel(t->ndim, t->shape) * es;
    if (!src) return kiln__fail(ctx, KILN_ERR_NULL, "kiln_copy_from_host: source is NULL");
    if (src_bytes != bytes)
        return kiln__fail(ctx, KILN_ERR_SHAPE, "kiln_copy_from_host: tensor %s %s holds %zu bytes, source has %zu",
                          kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), kiln_dtype_name(t->dtype), bytes,
                          src_bytes);
    if (bytes == 0) return KILN_OK;
    if (!kiln__is_contiguous(t)) {
        kiln_tensor *tmp = kiln_from_host(ctx, src, t->dtype, t->ndim, t->shape);
        if (!tmp) return ctx->err;
        kiln_status s = kiln__copy_into(ctx, "kiln_copy_from_host", tmp, t);
        kiln_tensor_free(tmp);
        return s;
    }
    cl_int err =
        clEnqueueWriteBuffer(ctx->queue, t->st->mem, CL_TRUE, (size_t)t->offset * es, bytes, src, 0, NULL, NULL);
    KILN__COUNT(ctx, blocking_writes, 1);
    KILN__COUNT(ctx, bytes_to_device, bytes);
    if (err != CL_SUCCESS)
        return kiln__fail(ctx, kiln__cl_status(err), "kiln_copy_from_host: writing %zu bytes to '%s' failed: %s (%d)",
                          bytes, ctx->info.name, kiln__cl_name(err), err);
    return KILN_OK;
}

kiln_status kiln_copy(kiln_tensor *dst, kiln_tensor *src) {
    if (!dst) return kiln__fail_global(KILN_ERR_NULL, "kiln_copy: dst is NULL");
    if (!src) return kiln__fail(dst->ctx, KILN_ERR_NULL, "kiln_copy: src is NULL");
    if (dst->ctx != src->ctx)
        return kiln__fail(dst->ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_copy: tensors of two contexts");
    return kiln__copy_into(dst->ctx, "kiln_copy", src, dst);
}

float kiln_tensor_item(kiln_tensor *t) {
    if (!t) return kiln__fail_global(KILN_ERR_NULL, "kiln_tensor_item: tensor is NULL"), NAN;
    char sb[160];
    if (kiln__numel(t->ndim, t->shape) != 1) {
        kiln__fail(t->ctx, KILN_ERR_SHAPE, "kiln_tensor_item: tensor %s has %lld elements, not 1",
                   kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), (long long)kiln__numel(t->ndim, t->shape));
        return NAN;
    }
    union {
        float f;
        int32_t i;
        uint8_t u;
        uint16_t h;
    } v;
    if (kiln_to_host(t, &v, sizeof v) != KILN_OK) return NAN;
    switch (t->dtype) {
    case KILN_I32: return (float)v.i;
    case KILN_U8: return (float)v.u;
    case KILN_F16: return kiln_f16_to_f32(v.h);
    case KILN_BF16: return kiln_bf16_to_f32(v.h);
    default: return v.f;
    }
}

/* ---- guard regions (test mode) ------------------------------------------------------ */

#define GUARD_BITS 0x7FA5A5A5u /* a NaN: a kernel that reads a guard poisons its result */

void kiln__set_guard(kiln_ctx *ctx, int64_t n) {
    if (ctx) ctx->guard = n > 0 ? n : 0;
}

static kiln_status fill_guards(kiln_ctx *ctx, const char *op, kiln_tensor *t) {
    const kiln__storage *st = t->st;
    const char *opts = copy_options(t->dtype);
    size_t es = st->esize;
    cl_uint b32 = GUARD_BITS;
    cl_ushort b16 = (cl_ushort)GUARD_BITS;
    cl_uchar b8 = (cl_uchar)GUARD_BITS;
    kiln__karg v = es == 1 ? KILN__ARG(b8) : es == 2 ? KILN__ARG(b16) : KILN__ARG(b32);
    cl_int n = (cl_int)st->guard;
    cl_int offs[2] = {0, (cl_int)(st->guard + st->numel)};
    for (int i = 0; i < 2; i++) {
        kiln__karg args[] = {KILN__ARG(st->mem), KILN__ARG(offs[i]), KILN__ARG(n), v};
        kiln_status s = kiln__launch(ctx, op, "copy", opts, "fill_contig", 4, args, (size_t)n, 0);
        if (s != KILN_OK) return s;
    }
    return KILN_OK;
}

int kiln__check_guards(kiln_ctx *ctx, char *msg, size_t cap) {
    if (!ctx) return -1;
    if (msg && cap) msg[0] = '\0';
    int bad = 0;
    for (kiln_tensor *t = ctx->tensors; t; t = t->next) {
        const kiln__storage *st = t->st;
        if (!st->guard) continue;
        size_t es = st->esize, total = (size_t)(st->numel + 2 * st->guard) * es;
        unsigned char *h = malloc(total);
        if (!h) return -1;
        KILN__COUNT(ctx, blocking_reads, 1);
        KILN__COUNT(ctx, bytes_to_host, total);
        if (clEnqueueReadBuffer(ctx->queue, st->mem, CL_TRUE, 0, total, h, 0, NULL, NULL) != CL_SUCCESS) {
            free(h);
            return -1;
        }
        size_t gb = (size_t)st->guard * es;
        const unsigned char *regions[2] = {h, h + gb + (size_t)st->numel * es};
        for (int r = 0; r < 2; r++) {
            for (size_t i = 0; i < gb; i++) {
                uint32_t bits = GUARD_BITS;
                unsigned char want = ((const unsigned char *)&bits)[i % es];
                if (regions[r][i] == want) continue;
                if (bad == 0 && msg) {
                    char sb[160];
                    snprintf(msg, cap, "tensor %s: guard %s its data overwritten at byte %zu",
                             kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), r ? "after" : "before", i);
                }
                bad++;
                r = 2;
                break;
            }
        }
        free(h);
    }
    return bad;
}
