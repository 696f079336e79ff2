/* src/ops/reduce.c - reductions: sum, mean, max, min over any set of axes, and argmax, with
 * their backward rules (kernels and launches in src/ops/reduce_kernels.c, which
 * cl_kernels/reduce.cl pairs with). */
#include <stdio.h>
#include <string.h>

#include "ops_internal.h"

/* What a sum, mean, max or min node keeps for its backward. */
typedef struct reduce_state {
    bool red[KILN_MAX_DIMS]; /* the input's reduced dims */
    float scale;             /* the gradient's factor: 1/count for mean, else 1 */
} reduce_state;

static bool check_f32(kiln_ctx *ctx, const char *op, const kiln_tensor *t) {
    if (t->dtype == KILN_F32) return true;
    char sb[160];
    kiln__fail(ctx, KILN_ERR_DTYPE, "%s: dtype %s of tensor %s is not supported (f32, f16 and bf16 are)", op,
               kiln_dtype_name(t->dtype), kiln__shape_str(t->ndim, t->shape, sb, sizeof sb));
    return false;
}

/* ---- backward: the gradient of each output spreads over the elements it reduced ---- */

/* g reshaped to the input's rank with size 1 on the reduced axes. */
static kiln_tensor *keep_shape(kiln_ctx *ctx, kiln__node *n, const reduce_state *st, kiln_tensor *g) {
    const kiln_tensor *x = n->in[0];
    int64_t shape[KILN_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) shape[d] = st->red[d] ? 1 : x->shape[d];
    return kiln_reshape(ctx, g, x->ndim, shape);
}

static kiln_status bw_sum_mean(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    const reduce_state *st = KILN__NODE_STATE(n, reduce_state);
    if (!st) return ctx->err;
    kiln_tensor *x = n->in[0];
    kiln_scope_begin(ctx);
    kiln_tensor *gk = keep_shape(ctx, n, st, g);
    if (st->scale != 1.0f) gk = kiln_mul_scalar(ctx, gk, st->scale); /* 1/count for mean */
    kiln_status s = kiln__accum(ctx, n, 0, kiln_expand(ctx, gk, x->ndim, x->shape));
    kiln_scope_end(ctx);
    return s;
}

/* The gradient goes to the elements equal to the extreme, split evenly among ties (as
 * torch.amax/amin). */
static kiln_status bw_extreme(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    const reduce_state *st = KILN__NODE_STATE(n, reduce_state);
    if (!st) return ctx->err;
    kiln_tensor *x = n->in[0];
    int axes[KILN_MAX_DIMS], na = 0;
    for (int d = 0; d < x->ndim; d++)
        if (st->red[d]) axes[na++] = d;
    kiln_scope_begin(ctx);
    kiln_tensor *mask = kiln_eq(ctx, x, keep_shape(ctx, n, st, n->out));
    kiln_tensor *cnt = kiln_sum(ctx, mask, na, axes, true);
    kiln_tensor *share = kiln_div(ctx, keep_shape(ctx, n, st, g), cnt);
    kiln_status s = kiln__accum_owned(ctx, n, 0, kiln_mul(ctx, mask, share));
    kiln_scope_end(ctx);
    return s;
}

typedef struct red_args {
    const char *op;
    kiln__red_kind kind;
    int naxes, axis;
    const int *axes;
    bool keepdim;
} red_args;

static kiln_tensor *reduce_axes(kiln_ctx *ctx, const char *op, kiln__red_kind kind, kiln_tensor *t, int naxes,
                                const int *axes, bool keepdim);

static kiln_tensor *reduce_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg) {
    const red_args *a = arg;
    if (a->kind == KILN__RED_ARGMAX) return kiln_argmax(ctx, in[0], a->axis, a->keepdim);
    return reduce_axes(ctx, a->op, a->kind, in[0], a->naxes, a->axes, a->keepdim);
}

static kiln_tensor *reduce_axes(kiln_ctx *ctx, const char *op, kiln__red_kind kind, kiln_tensor *t, int naxes,
                                const int *axes, bool keepdim) {
    if (!kiln__check_inputs(ctx, op, 1, &t)) return NULL;
    kiln_tensor *tf = kiln__autocast_f32(ctx, t); /* autocast: an f32 op (kiln/amp.h) */
    if (tf != t) {
        kiln_tensor *res = reduce_axes(ctx, op, kind, tf, naxes, axes, keepdim);
        kiln_tensor_free(tf);
        return res;
    }
    /* a half input: reduced in f32 from an f32 copy, the result in its dtype (as torch's) */
    if (kiln_dtype_is_half(t->dtype))
        return kiln__half_fallback(ctx, 1, &t, reduce_f32, &(red_args){op, kind, naxes, 0, axes, keepdim});
    if (!check_f32(ctx, op, t)) return NULL;
    bool red[KILN_MAX_DIMS];
    if (!kiln__reduce_axes(ctx, op, t, naxes, axes, red)) return NULL;
    kiln_tensor *out = kiln__reduce(ctx, op, kind, t, red, keepdim);
    if (out && kiln__grad_wanted(ctx, 1, &t)) {
        kiln__node *n = kiln__node_new(ctx, op, out, 1, &t,
                                       kind == KILN__RED_MAX || kind == KILN__RED_MIN ? bw_extreme : bw_sum_mean);
        if (!n) {
            kiln_tensor_free(out);
            return NULL;
        }
        reduce_state *st = KILN__NODE_STATE_NEW(n, reduce_state);
        if (!st) {
            kiln_tensor_free(out);
            return NULL;
        }
        int64_t count = 1;
        for (int d = 0; d < t->ndim; d++) {
            st->red[d] = red[d];
            if (red[d]) count *= t->shape[d];
        }
        st->scale = kind == KILN__RED_MEAN ? (float)(1.0 / (double)(count ? count : 1)) : 1.0f;
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_sum(kiln_ctx *ctx, kiln_tensor *t, int naxes, const int *axes, bool keepdim) {
    return reduce_axes(ctx, "kiln_sum", KILN__RED_SUM, t, naxes, axes, keepdim);
}

kiln_tensor *kiln_mean(kiln_ctx *ctx, kiln_tensor *t, int naxes, const int *axes, bool keepdim) {
    return reduce_axes(ctx, "kiln_mean", KILN__RED_MEAN, t, naxes, axes, keepdim);
}

kiln_tensor *kiln_max(kiln_ctx *ctx, kiln_tensor *t, int naxes, const int *axes, bool keepdim) {
    return reduce_axes(ctx, "kiln_max", KILN__RED_MAX, t, naxes, axes, keepdim);
}

kiln_tensor *kiln_min(kiln_ctx *ctx, kiln_tensor *t, int naxes, const int *axes, bool keepdim) {
    return reduce_axes(ctx, "kiln_min", KILN__RED_MIN, t, naxes, axes, keepdim);
}

/* The index along `axis` is the reduced row-major index the kernels compute; with every
 * axis reduced it is the flat index over the whole tensor, as torch.argmax(t). */
kiln_tensor *kiln_argmax(kiln_ctx *ctx, kiln_tensor *t, int axis, bool keepdim) {
    if (!kiln__check_inputs(ctx, "kiln_argmax", 1, &t)) return NULL;
    if (kiln_dtype_is_half(t->dtype)) /* the indices of an f32 copy's maxima: those of the halves */
        return kiln__half_fallback(ctx, 1, &t, reduce_f32,
                                   &(red_args){"kiln_argmax", KILN__RED_ARGMAX, 1, axis, NULL, keepdim});
    if (!check_f32(ctx, "kiln_argmax", t)) return NULL;
    bool red[KILN_MAX_DIMS];
    bool all = axis == KILN_ALL_AXES;
    if (!kiln__reduce_axes(ctx, "kiln_argmax", t, all ? 0 : 1, &axis, red)) return NULL;
    return kiln__reduce(ctx, "kiln_argmax", KILN__RED_ARGMAX, t, red, keepdim); /* not differentiable */
}
