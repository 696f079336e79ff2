/* src/ops/cast.c - dtype conversions between f32, f16 and bf16 (kiln_to_dtype, kernels in
 * cl_kernels/cast.cl), and the ops floor's half-precision helpers: the conversion without
 * autograd that ops use to promote mixed inputs, and autocast's casts (include/kiln/amp.h).
 *
 * Gradients on kiln's tape are f32 whatever the forward's dtype (every backward rule reads
 * and writes f32: src/ops/ops_internal.h), so the backward of a conversion hands the
 * output's f32 gradient to its input unchanged: for an f32 input that is the gradient
 * converted back to the input's dtype; a half input cannot be a leaf that requires grad
 * (kiln_tensor_set_requires_grad refuses it) and its gradient stays f32 on the tape. */
#include <stdio.h>
#include <string.h>

#include "ops_internal.h"

#define CAST_PROGRAM "cast"

static bool is_float(kiln_dtype dt) { return dt == KILN_F32 || dt == KILN_F16 || dt == KILN_BF16; }

kiln_tensor *kiln__convert(kiln_ctx *ctx, const char *op, kiln_tensor *t, kiln_dtype dtype) {
    char sb[160];
    if (!is_float(t->dtype) || !is_float(dtype)) {
        kiln__fail(ctx, KILN_ERR_DTYPE, "%s: cannot convert %s %s to %s (f32, f16 and bf16 convert)", op,
                   kiln__shape_str(t->ndim, t->shape, sb, sizeof sb), kiln_dtype_name(t->dtype),
                   kiln_dtype_name(dtype));
        return NULL;
    }
    kiln_tensor *out = kiln__tensor_new(ctx, op, dtype, t->ndim, t->shape);
    if (!out) return NULL;
    int64_t n = kiln__numel(t->ndim, t->shape);
    if (n == 0) return out;
    kiln__geom g;
    int64_t st[1][KILN_MAX_DIMS];
    memcpy(st[0], t->strides, sizeof st[0]);
    kiln__geom_build(&g, t->ndim, t->shape, 1, (const int64_t(*)[KILN_MAX_DIMS])st);
    cl_int soff = (cl_int)t->offset, doff = (cl_int)out->offset, ni = (cl_int)n;
    kiln__karg args[] = {KILN__ARG(t->st->mem), KILN__ARG(soff), KILN__ARG(out->st->mem),
                         KILN__ARG(doff),       KILN__ARG(ni),   KILN__ARG(g)};
    char opts[32];
    snprintf(opts, sizeof opts, "-DSRC=%d -DDST=%d", (int)t->dtype, (int)dtype);
    if (kiln__launch(ctx, op, CAST_PROGRAM, opts, "cast_strided", 6, args, (size_t)n, 0) != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* The gradient of the output (f32 on the tape) is the input's. */
static kiln_status cast_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) { return kiln__accum(ctx, n, 0, g); }

kiln_tensor *kiln_to_dtype(kiln_ctx *ctx, kiln_tensor *t, kiln_dtype dtype) {
    static const char op[] = "kiln_to_dtype";
    if (!kiln__check_inputs(ctx, op, 1, &t)) return NULL;
    kiln_tensor *out;
    if (t->dtype == dtype && is_float(dtype)) /* torch returns the tensor itself: here a view of it */
        out = kiln__tensor_view(ctx, t, t->ndim, t->shape, t->strides, t->offset);
    else
        out = kiln__convert(ctx, op, t, dtype);
    if (!out) return NULL;
    if (kiln__grad_wanted(ctx, 1, &t) && !kiln__node_new(ctx, op, out, 1, &t, cast_backward)) {
        kiln_tensor_free(out);
        return NULL;
    }
    return kiln__finish(ctx, op, out);
}
