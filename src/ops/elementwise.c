/* src/ops/elementwise.c - elementwise ops with NumPy/PyTorch broadcasting: binary
 * arithmetic, pow, min/max, comparisons, where, unary math and tensor-scalar ops (kernels
 * in cl_kernels/elementwise.cl).
 *
 * Every op goes through ew_run: validate the inputs (context, NULL propagation, float
 * dtypes: f32, or f16/bf16 storage computed in f32, see kiln__half_inputs),
 * broadcast the shapes (right-aligned, sizes equal or 1, rank = the largest rank), make a
 * fresh contiguous output and enqueue one kernel. The kernel is <name>_contig when every
 * input is contiguous with the output's element count (broadcasting then only adds or
 * drops size-1 dims, so element i of each input is at offset + i), else <name>_strided
 * with a kiln__geom carrying each input's strides (0 on broadcast dims). */
#include <stdio.h>
#include <string.h>

#include "ops_internal.h"

#define EW_PROGRAM "elementwise"
#define EW_OPTIONS "-DT=float"
#define EW_MAX_IN 3

/* Broadcasts the shapes of ts[0..n) into shape/ndim; false with a KILN_ERR_SHAPE error
 * naming the op and every input shape. */
static bool broadcast_shape(kiln_ctx *ctx, const char *op, int n, kiln_tensor *const *ts, int *ndim,
                            int64_t shape[KILN_MAX_DIMS]) {
    int nd = 0;
    for (int j = 0; j < n; j++)
        if (ts[j]->ndim > nd) nd = ts[j]->ndim;
    for (int d = 0; d < nd; d++) {
        int64_t size = 1;
        for (int j = 0; j < n; j++) {
            int jd = d - (nd - ts[j]->ndim);
            int64_t s = jd >= 0 ? ts[j]->shape[jd] : 1;
            if (s == 1) continue;
            if (size != 1 && size != s) {
                char sb[EW_MAX_IN][160];
                for (int k = 0; k < n; k++) kiln__shape_str(ts[k]->ndim, ts[k]->shape, sb[k], sizeof sb[k]);
                if (n == 2)
                    kiln__fail(ctx, KILN_ERR_SHAPE, "%s: shapes %s and %s cannot broadcast", op, sb[0], sb[1]);
                else
                    kiln__fail(ctx, KILN_ERR_SHAPE, "%s: shapes %s, %s and %s cannot broadcast", op, sb[0], sb[1],
                               sb[2]);
                return false;
            }
            size = s;
        }
        shape[d] = size;
    }
    *ndim = nd;
    return true;
}

/*
 * Runs kernel stem `name` of the elementwise program on the n (1 to 3) inputs, broadcast
 * together. Unary kernels (n == 1) take the scalar s as their last argument; tensor-scalar
 * ops use it, the others ignore it. Returns the new output or NULL with the error set.
 */
static kiln_tensor *ew_launch(kiln_ctx *ctx, const char *op, const char *name, int n, kiln_tensor *const *ts, float s,
                              kiln_dtype dt);

static kiln_tensor *ew_run(kiln_ctx *ctx, const char *op, const char *name, int n, kiln_tensor *const *ts, float s) {
    if (!kiln__check_inputs(ctx, op, n, ts)) return NULL;
    /* one half dtype: its half build; f32 and halves mixed: the halves promoted to f32 */
    kiln_tensor *use[EW_MAX_IN];
    kiln_dtype dt = kiln__half_inputs(ctx, op, n, ts, use);
    if (dt == KILN_DTYPE_COUNT) return NULL;
    kiln_tensor *out = ew_launch(ctx, op, name, n, use, s, dt);
    kiln__half_release(n, ts, use);
    return out;
}

/* ew_run's output and launch, on inputs of dtype dt. */
static kiln_tensor *ew_launch(kiln_ctx *ctx, const char *op, const char *name, int n, kiln_tensor *const *ts, float s,
                              kiln_dtype dt) {
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    if (!broadcast_shape(ctx, op, n, ts, &ndim, shape)) return NULL;
    kiln_tensor *out = kiln__tensor_new(ctx, op, dt, ndim, shape);
    if (!out) return NULL;
    int64_t numel = kiln__numel(ndim, shape);
    if (numel == 0) return out;

    bool contig = true;
    for (int j = 0; j < n && contig; j++)
        contig = kiln__is_contiguous(ts[j]) && kiln__numel(ts[j]->ndim, ts[j]->shape) == numel;

    /* Arguments: (buffer, offset) per input, then output buffer, offset, n, [geom], [s]. */
    cl_int offs[EW_MAX_IN], ooff = (cl_int)out->offset, ni = (cl_int)numel;
    cl_float sv = s;
    kiln__karg args[2 * EW_MAX_IN + 5];
    size_t na = 0;
    for (int j = 0; j < n; j++) {
        offs[j] = (cl_int)ts[j]->offset;
        args[na++] = KILN__ARG(ts[j]->st->mem);
        args[na++] = KILN__ARG(offs[j]);
    }
    args[na++] = KILN__ARG(out->st->mem);
    args[na++] = KILN__ARG(ooff);
    args[na++] = KILN__ARG(ni);

    kiln__geom g;
    if (!contig) {
        /* Input strides broadcast to the output's rank: 0 on dims the input lacks or has
         * size 1 (its stride there is meaningless). */
        int64_t st[KILN__GEOM_IN][KILN_MAX_DIMS];
        memset(st, 0, sizeof st);
        for (int j = 0; j < n; j++) {
            for (int d = 0; d < ndim; d++) {
                int jd = d - (ndim - ts[j]->ndim);
                st[j][d] = (jd >= 0 && ts[j]->shape[jd] != 1) ? ts[j]->strides[jd] : 0;
            }
        }
        kiln__geom_build(&g, ndim, shape, n, (const int64_t(*)[KILN_MAX_DIMS])st);
        args[na++] = KILN__ARG(g);
    }
    if (n == 1) args[na++] = KILN__ARG(sv);

    char kernel[64], opts[64];
    snprintf(kernel, sizeof kernel, "%s_%s", name, contig ? "contig" : "strided");
    snprintf(opts, sizeof opts, "%s%s", EW_OPTIONS, kiln__half_options(dt));
    if (kiln__launch(ctx, op, EW_PROGRAM, opts, kernel, na, args, (size_t)numel, 0) != KILN_OK) {
        kiln_tensor_free(out);
        return NULL;
    }
    return out;
}

/* ---- backward rules ----------------------------------------------------------------
 * Built from the forward ops (grad mode is off during backward). g is the output's
 * gradient; kiln__accum sums each result down to its input's (broadcast) shape. Results
 * the rule made itself go to kiln__accum_owned, which keeps them as the gradient instead
 * of copying them; g itself (add, sub, add_scalar) is the backward loop's and is copied. */

#define IN(k) (n->in[k])
#define NEED(k) kiln__input_needs_grad(n, k)

/* What a tensor-scalar op's node keeps for its backward (the binary and unary ops keep
 * nothing but their inputs and output). */
typedef struct scalar_state {
    float s; /* the scalar operand */
} scalar_state;

/* Accumulates t, a new tensor, into input k and gives it up (NULL t: the error is
 * already set). */
static kiln_status give(kiln_ctx *ctx, kiln__node *n, int k, kiln_tensor *t) {
    if (!t) return ctx->err;
    return kiln__accum_owned(ctx, n, k, t);
}

static kiln_status bw_add(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_status s = kiln__accum(ctx, n, 0, g);
    return s ? s : kiln__accum(ctx, n, 1, g);
}

static kiln_status bw_sub(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_status s = kiln__accum(ctx, n, 0, g);
    if (s == KILN_OK && NEED(1)) s = give(ctx, n, 1, kiln_neg(ctx, g));
    return s;
}

static kiln_status bw_mul(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_status s = KILN_OK;
    if (NEED(0)) s = give(ctx, n, 0, kiln_mul(ctx, g, IN(1)));
    if (s == KILN_OK && NEED(1)) s = give(ctx, n, 1, kiln_mul(ctx, g, IN(0)));
    return s;
}

/* d(a/b)/da = 1/b, d(a/b)/db = -(a/b)/b */
static kiln_status bw_div(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_tensor *gb = kiln_div(ctx, g, IN(1));
    if (!gb) return ctx->err;
    if (!NEED(1)) return give(ctx, n, 0, gb); /* the only use of gb: it may become the gradient */
    kiln_status s = NEED(0) ? kiln__accum(ctx, n, 0, gb) : KILN_OK;
    if (s == KILN_OK) {
        kiln_tensor *t = kiln_mul(ctx, gb, n->out);
        s = give(ctx, n, 1, kiln_neg(ctx, t));
        kiln_tensor_free(t);
    }
    kiln_tensor_free(gb);
    return s;
}

/* d(a^b)/da = b a^(b-1), taken as 0 where b == 0 (torch masks it: 0 * 0^-1 would be NaN);
 * d(a^b)/db = a^b log a, taken as 0 where a == 0 and b >= 0 (torch) */
static kiln_status bw_pow(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_status s = KILN_OK;
    kiln_scope_begin(ctx);
    kiln_tensor *zero = kiln_zeros(ctx, 0, NULL);
    if (NEED(0)) {
        kiln_tensor *e = kiln_pow(ctx, IN(0), kiln_add_scalar(ctx, IN(1), -1.0f));
        kiln_tensor *d = kiln_mul(ctx, g, kiln_mul(ctx, IN(1), e));
        s = kiln__accum_owned(ctx, n, 0, kiln_where(ctx, kiln_eq(ctx, IN(1), zero), zero, d));
    }
    if (s == KILN_OK && NEED(1)) {
        kiln_tensor *mask = kiln_mul(ctx, kiln_eq(ctx, IN(0), zero), kiln_ge(ctx, IN(1), zero));
        kiln_tensor *d = kiln_mul(ctx, g, kiln_mul(ctx, n->out, kiln_log(ctx, IN(0))));
        s = kiln__accum_owned(ctx, n, 1, kiln_where(ctx, mask, zero, d));
    }
    kiln_scope_end(ctx);
    return s;
}

/* Ties split the gradient evenly, as torch.maximum/minimum. */
static kiln_status bw_minmax(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g, bool is_max) {
    kiln_status s = KILN_OK;
    kiln_scope_begin(ctx);
    kiln_tensor *win = is_max ? kiln_gt(ctx, IN(0), IN(1)) : kiln_lt(ctx, IN(0), IN(1));
    kiln_tensor *half = kiln_mul_scalar(ctx, kiln_eq(ctx, IN(0), IN(1)), 0.5f);
    kiln_tensor *wa = kiln_add(ctx, win, half); /* a's share: 1, 1/2 or 0 */
    if (NEED(0)) s = kiln__accum_owned(ctx, n, 0, kiln_mul(ctx, g, wa));
    if (s == KILN_OK && NEED(1)) {
        kiln_tensor *wb = kiln_add_scalar(ctx, kiln_neg(ctx, wa), 1.0f);
        s = kiln__accum_owned(ctx, n, 1, kiln_mul(ctx, g, wb));
    }
    kiln_scope_end(ctx);
    return s;
}
static kiln_status bw_maximum(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) { return bw_minmax(ctx, n, g, true); }
static kiln_status bw_minimum(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) { return bw_minmax(ctx, n, g, false); }

static kiln_status bw_where(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_status s = KILN_OK;
    kiln_scope_begin(ctx);
    kiln_tensor *zero = kiln_zeros(ctx, 0, NULL);
    if (NEED(1)) s = kiln__accum_owned(ctx, n, 1, kiln_where(ctx, IN(0), g, zero));
    if (s == KILN_OK && NEED(2)) s = kiln__accum_owned(ctx, n, 2, kiln_where(ctx, IN(0), zero, g));
    kiln_scope_end(ctx);
    return s;
}

static kiln_status bw_neg(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) { return give(ctx, n, 0, kiln_neg(ctx, g)); }
static kiln_status bw_exp(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    return give(ctx, n, 0, kiln_mul(ctx, g, n->out));
}
static kiln_status bw_log(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    return give(ctx, n, 0, kiln_div(ctx, g, IN(0)));
}

static kiln_status bw_sqrt(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_tensor *t = kiln_mul_scalar(ctx, n->out, 2.0f);
    kiln_status s = give(ctx, n, 0, kiln_div(ctx, g, t));
    kiln_tensor_free(t);
    return s;
}

/* sign(a), with sign(0) = 0 as torch's abs backward */
static kiln_status bw_abs(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    kiln_scope_begin(ctx);
    kiln_tensor *zero = kiln_zeros(ctx, 0, NULL);
    kiln_tensor *sign = kiln_sub(ctx, kiln_gt(ctx, IN(0), zero), kiln_lt(ctx, IN(0), zero));
    kiln_status s = kiln__accum_owned(ctx, n, 0, kiln_mul(ctx, g, sign));
    kiln_scope_end(ctx);
    return s;
}

static kiln_status bw_add_scalar(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) { return kiln__accum(ctx, n, 0, g); }
static kiln_status bw_mul_scalar(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    const scalar_state *st = KILN__NODE_STATE(n, scalar_state);
    if (!st) return ctx->err;
    return give(ctx, n, 0, kiln_mul_scalar(ctx, g, st->s));
}

/* d(a^s)/da = s a^(s-1); 0 for s == 0 */
static kiln_status bw_pow_scalar(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    const scalar_state *st = KILN__NODE_STATE(n, scalar_state);
    if (!st) return ctx->err;
    float e = st->s;
    if (e == 0.0f) {
        kiln_tensor *z = kiln_zeros(ctx, IN(0)->ndim, IN(0)->shape);
        return give(ctx, n, 0, z);
    }
    kiln_scope_begin(ctx);
    kiln_tensor *d = kiln_mul_scalar(ctx, kiln_pow_scalar(ctx, IN(0), e - 1.0f), e);
    kiln_status s = kiln__accum_owned(ctx, n, 0, kiln_mul(ctx, g, d));
    kiln_scope_end(ctx);
    return s;
}

/* As torch.clamp: the gradient passes where the input is within the bound, ties included. */
static kiln_status bw_clamp(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g, bool is_min_bound) {
    const scalar_state *st = KILN__NODE_STATE(n, scalar_state);
    if (!st) return ctx->err;
    kiln_scope_begin(ctx);
    kiln_tensor *b = kiln_full(ctx, st->s, 0, NULL);
    kiln_tensor *pass = is_min_bound ? kiln_ge(ctx, IN(0), b) : kiln_le(ctx, IN(0), b);
    kiln_status s = kiln__accum_owned(ctx, n, 0, kiln_mul(ctx, g, pass));
    kiln_scope_end(ctx);
    return s;
}
static kiln_status bw_maximum_scalar(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) { return bw_clamp(ctx, n, g, true); }
static kiln_status bw_minimum_scalar(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g) {
    return bw_clamp(ctx, n, g, false);
}

/* Records the node of a differentiable op (a tensor-scalar op's scalar, when s is given,
 * kept for the backward) and runs the numerics check. */
static kiln_tensor *record(kiln_ctx *ctx, const char *op, kiln_tensor *out, int nin, kiln_tensor *const *in,
                           kiln__backward_fn bw, const float *s) {
    if (!out) return NULL;
    if (bw && kiln__grad_wanted(ctx, nin, in)) {
        kiln__node *n = kiln__node_new(ctx, op, out, nin, in, bw);
        scalar_state *st = n && s ? KILN__NODE_STATE_NEW(n, scalar_state) : NULL;
        if (!n || (s && !st)) {
            kiln_tensor_free(out);
            return NULL;
        }
        if (st) st->s = *s;
    }
    return kiln__finish(ctx, op, out);
}

/* ---- binary ------------------------------------------------------------------------- */

#define EW_DEFINE_BINARY(stem, bw)                                                                                     \
    kiln_tensor *kiln_##stem(kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b) {                                          \
        kiln_tensor *ts[2] = {a, b};                                                                                   \
        kiln_tensor *out = ew_run(ctx, "kiln_" #stem, #stem, 2, ts, 0.0f);                                             \
        return record(ctx, "kiln_" #stem, out, 2, ts, bw, NULL);                                                       \
    }

EW_DEFINE_BINARY(add, bw_add)
EW_DEFINE_BINARY(sub, bw_sub)
EW_DEFINE_BINARY(mul, bw_mul)
EW_DEFINE_BINARY(div, bw_div)
EW_DEFINE_BINARY(pow, bw_pow)
EW_DEFINE_BINARY(minimum, bw_minimum)
EW_DEFINE_BINARY(maximum, bw_maximum)
/* comparisons are not differentiable: their outputs never require grad */
EW_DEFINE_BINARY(eq, NULL)
EW_DEFINE_BINARY(ne, NULL)
EW_DEFINE_BINARY(lt, NULL)
EW_DEFINE_BINARY(le, NULL)
EW_DEFINE_BINARY(gt, NULL)
EW_DEFINE_BINARY(ge, NULL)

kiln_tensor *kiln_where(kiln_ctx *ctx, kiln_tensor *cond, kiln_tensor *a, kiln_tensor *b) {
    kiln_tensor *ts[3] = {cond, a, b};
    kiln_tensor *out = ew_run(ctx, "kiln_where", "where", 3, ts, 0.0f);
    /* the condition is a mask: no gradient flows to it */
    if (out && kiln__grad_wanted(ctx, 2, ts + 1)) return record(ctx, "kiln_where", out, 3, ts, bw_where, NULL);
    return kiln__finish(ctx, "kiln_where", out);
}

/* ---- unary and tensor-scalar -------------------------------------------------------- */

#define EW_DEFINE_UNARY(stem)                                                                                          \
    kiln_tensor *kiln_##stem(kiln_ctx *ctx, kiln_tensor *a) {                                                          \
        kiln_tensor *out = ew_run(ctx, "kiln_" #stem, #stem, 1, &a, 0.0f);                                             \
        return record(ctx, "kiln_" #stem, out, 1, &a, bw_##stem, NULL);                                                \
    }

EW_DEFINE_UNARY(neg)
EW_DEFINE_UNARY(exp)
EW_DEFINE_UNARY(log)
EW_DEFINE_UNARY(sqrt)
EW_DEFINE_UNARY(abs)

#define EW_DEFINE_SCALAR(stem)                                                                                         \
    kiln_tensor *kiln_##stem(kiln_ctx *ctx, kiln_tensor *a, float s) {                                                 \
        kiln_tensor *out = ew_run(ctx, "kiln_" #stem, #stem, 1, &a, s);                                                \
        return record(ctx, "kiln_" #stem, out, 1, &a, bw_##stem, &s);                                                  \
    }

EW_DEFINE_SCALAR(add_scalar)
EW_DEFINE_SCALAR(mul_scalar)
EW_DEFINE_SCALAR(pow_scalar)
EW_DEFINE_SCALAR(minimum_scalar)
EW_DEFINE_SCALAR(maximum_scalar)
