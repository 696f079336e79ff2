/* src/ops/activation.c - activations as torch.nn.functional: relu, leaky_relu, elu, gelu
 * (erf and tanh approximation), sigmoid, tanh, softplus, softmax and log_softmax, each
 * with its backward rule (kernels in cl_kernels/activation.cl).
 *
 * Elementwise activations have half variants (f16/bf16 input and output, computed in f32;
 * their gradient is f32 as every gradient on the tape); softmax and log_softmax refuse
 * halves. Elementwise activations enqueue one kernel: <op>_fwd_contig when the input is
 * contiguous, else <op>_fwd_strided with a kiln__geom of the input's strides (no copy).
 * Their backward is one fused kernel per op computing grad_in from the output's gradient
 * and the saved input (or, for sigmoid and tanh, the output, as torch does); the input is
 * kept alive by the node anyway and the output is the node's own tensor, so nothing extra
 * is saved.
 *
 * softmax / log_softmax work on rows along `dim` of any view: the other dims, in
 * row-major order, number the rows; their strides go to the kernel as a kiln__geom, so a
 * row's first element needs no copy of the input. The output is contiguous, and so are
 * the output's gradient and the result of the backward: those kernels need only the row
 * length and the product of the dims after `dim`.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ops_internal.h"

#define ACT_PROGRAM "activation"
#define ACT_OPTIONS ""

/* ---- shared checks ------------------------------------------------------------------ */

static bool check_f32(kiln_ctx *ctx, const char *op, kiln_tensor *x) {
    if (x->dtype == KILN_F32) return true;
    if (kiln__refuse_half(ctx, op, 1, &x)) return false;
    char sb[160];
    kiln__fail(ctx, KILN_ERR_DTYPE, "%s: input %s has dtype %s; only f32 is supported", op,
               kiln__shape_str(x->ndim, x->shape, sb, sizeof sb), kiln_dtype_name(x->dtype));
    return false;
}

/* The geometry that reads t (any view) in row-major order. */
static void geom_of(kiln__geom *g, const kiln_tensor *t) {
    int64_t st[1][KILN_MAX_DIMS];
    memset(st, 0, sizeof st);
    for (int d = 0; d < t->ndim; d++) st[0][d] = t->strides[d];
    kiln__geom_build(g, t->ndim, t->shape, 1, (const int64_t(*)[KILN_MAX_DIMS])st);
}

/* ---- elementwise activations -------------------------------------------------------- */

typedef enum act_kind {
    ACT_RELU,
    ACT_LEAKY_RELU,
    ACT_ELU,
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_SIGMOID,
    ACT_TANH,
    ACT_SOFTPLUS,
} act_kind;

/* What an elementwise activation's node keeps for its backward. */
typedef struct act_state {
    act_kind kind;
    cl_float a, b; /* the op's parameters (negative_slope, alpha, beta and threshold) */
} act_state;

static const struct {
    const char *op;   /* public name, for errors */
    const char *stem; /* kernel name stem */
    bool from_out;    /* the backward reads the output (else the input) */
} act_info[] = {
    [ACT_RELU] = {"kiln_relu", "relu", false},
    [ACT_LEAKY_RELU] = {"kiln_leaky_relu", "leaky_relu", false},
    [ACT_ELU] = {"kiln_elu", "elu", false},
    [ACT_GELU] = {"kiln_gelu", "gelu", false},
    [ACT_GELU_TANH] = {"kiln_gelu", "gelu_tanh", false},
    [ACT_SIGMOID] = {"kiln_sigmoid", "sigmoid", true},
    [ACT_TANH] = {"kiln_tanh", "tanh", true},
    [ACT_SOFTPLUS] = {"kiln_softplus", "softplus", false},
};

/* The floats per work-item of gelu's vector kernels (activation.cl, gelu_*_vec) for a
 * contiguous f32 operand on a CPU: the device's native vector width (16 on AVX-512, 8 on
 * AVX2), so the arithmetic runs on whole registers; 1 (the element kernels) otherwise.
 * POCL vectorises the element kernels across work-items at the width LLVM prefers for the
 * target (256 bits on AVX-512 cores). ctx->hooks.act_vw forces a width (1, 2, 4, 8, 16). */
static int act_vw(const kiln_ctx *ctx, act_kind kind, bool contig_f32) {
    if (kind != ACT_GELU || !contig_f32) return 1;
    if (ctx->hooks.act_vw) return ctx->hooks.act_vw;
    return ctx->info.type == KILN_DEVICE_CPU ? kiln__float_vw(ctx) : 1;
}

/* The kernel of an elementwise activation's launch in direction dir ("fwd" or "bwd") over
 * numel elements of dtype dt: <stem>_<dir>_contig or _strided with the dtype's half options,
 * or gelu's vector kernel <stem>_<dir>_vec (act_vw), which takes no a and b (the last two of
 * the *na arguments, dropped). Returns the work-items to launch. */
typedef struct act_kernel {
    char name[64], vopts[32];
    const char *options;
} act_kernel;

static size_t act_kernel_of(const kiln_ctx *ctx, act_kind kind, const char *dir, bool contig, kiln_dtype dt,
                            int64_t numel, act_kernel *k, size_t *na) {
    int vw = act_vw(ctx, kind, contig && dt == KILN_F32);
    if (vw == 1) {
        snprintf(k->name, sizeof k->name, "%s_%s_%s", act_info[kind].stem, dir, contig ? "contig" : "strided");
        k->options = kiln__half_options(dt);
        return (size_t)numel;
    }
    snprintf(k->name, sizeof k->name, "%s_%s_vec", act_info[kind].stem, dir);
    snprintf(k->vopts, sizeof k->vopts, "-DACT_VW=%d", vw);
    k->options = k->vopts;
    *na -= 2;
    return (size_t)((numel + vw - 1) / vw);
}

/* grad_in of an elementwise activation: one kernel from the output's gradient (contiguous,
 * the output's shape) and the saved input or output. */
static kiln_status act_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    if (!kiln__input_needs_grad(n, 0)) return KILN_OK;
    const act_state *st = KILN__NODE_STATE(n, act_state);
    if (!st) return ctx->err;
    act_kind kind = st->kind;
    const char *op = act_info[kind].op;
    kiln_tensor *v = act_info[kind].from_out ? n->out : n->in[0]; /* f32, f16 or bf16 */
    kiln_tensor *gi = kiln__tensor_new(ctx, op, KILN_F32, v->ndim, v->shape);
    if (!gi) return ctx->err;
    int64_t numel = kiln__numel(v->ndim, v->shape);
    if (numel > 0) {
        bool contig = kiln__is_contiguous(v);
        cl_int goff = (cl_int)gout->offset, voff = (cl_int)v->offset, ooff = (cl_int)gi->offset, ni = (cl_int)numel;
        cl_float a = st->a, b = st->b;
        kiln__geom g;
        kiln__karg args[10];
        size_t na = 0;
        args[na++] = KILN__ARG(gout->st->mem);
        args[na++] = KILN__ARG(goff);
        args[na++] = KILN__ARG(v->st->mem);
        args[na++] = KILN__ARG(voff);
        args[na++] = KILN__ARG(gi->st->mem);
        args[na++] = KILN__ARG(ooff);
        args[na++] = KILN__ARG(ni);
        if (!contig) {
            geom_of(&g, v);
            args[na++] = KILN__ARG(g);
        }
        args[na++] = KILN__ARG(a);
        args[na++] = KILN__ARG(b);
        act_kernel k;
        size_t items = act_kernel_of(ctx, kind, "bwd", contig, v->dtype, numel, &k, &na);
        if (kiln__launch(ctx, op, ACT_PROGRAM, k.options, k.name, na, args, items, 0) != KILN_OK) {
            kiln_tensor_free(gi);
            return ctx->err;
        }
    }
    return kiln__accum_owned(ctx, n, 0, gi); /* gi is new: it becomes the gradient, no copy */
}

/* y = f(x) for an elementwise activation with parameters a, b; records the backward. */
static kiln_tensor *act_forward(kiln_ctx *ctx, act_kind kind, kiln_tensor *x, float a, float b) {
    const char *op = act_info[kind].op;
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    /* f32, or a half dtype: its half build (output of that dtype, arithmetic in f32) */
    if (!kiln_dtype_is_half(x->dtype) && !check_f32(ctx, op, x)) return NULL;
    kiln_tensor *out = kiln__tensor_new(ctx, op, x->dtype, x->ndim, x->shape);
    if (!out) return NULL;
    int64_t numel = kiln__numel(x->ndim, x->shape);
    if (numel > 0) {
        bool contig = kiln__is_contiguous(x);
        cl_int xoff = (cl_int)x->offset, ooff = (cl_int)out->offset, ni = (cl_int)numel;
        cl_float av = a, bv = b;
        kiln__geom g;
        kiln__karg args[8];
        size_t na = 0;
        args[na++] = KILN__ARG(x->st->mem);
        args[na++] = KILN__ARG(xoff);
        args[na++] = KILN__ARG(out->st->mem);
        args[na++] = KILN__ARG(ooff);
        args[na++] = KILN__ARG(ni);
        if (!contig) {
            geom_of(&g, x);
            args[na++] = KILN__ARG(g);
        }
        args[na++] = KILN__ARG(av);
        args[na++] = KILN__ARG(bv);
        act_kernel k;
        size_t items = act_kernel_of(ctx, kind, "fwd", contig, x->dtype, numel, &k, &na);
        if (kiln__launch(ctx, op, ACT_PROGRAM, k.options, k.name, na, args, items, 0) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
    }
    if (kiln__grad_wanted(ctx, 1, &x)) {
        kiln__node *n = kiln__node_new(ctx, op, out, 1, &x, act_backward);
        if (!n) {
            kiln_tensor_free(out);
            return NULL;
        }
        act_state *st = KILN__NODE_STATE_NEW(n, act_state);
        if (!st) {
            kiln_tensor_free(out);
            return NULL;
        }
        *st = (act_state){kind, a, b};
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_relu(kiln_ctx *ctx, kiln_tensor *x) { return act_forward(ctx, ACT_RELU, x, 0.0f, 0.0f); }

kiln_tensor *kiln_leaky_relu(kiln_ctx *ctx, kiln_tensor *x, float negative_slope) {
    return act_forward(ctx, ACT_LEAKY_RELU, x, negative_slope, 0.0f);
}

kiln_tensor *kiln_elu(kiln_ctx *ctx, kiln_tensor *x, float alpha) { return act_forward(ctx, ACT_ELU, x, alpha, 0.0f); }

kiln_tensor *kiln_gelu(kiln_ctx *ctx, kiln_tensor *x, bool tanh_approx) {
    return act_forward(ctx, tanh_approx ? ACT_GELU_TANH : ACT_GELU, x, 0.0f, 0.0f);
}

kiln_tensor *kiln_sigmoid(kiln_ctx *ctx, kiln_tensor *x) { return act_forward(ctx, ACT_SIGMOID, x, 0.0f, 0.0f); }

kiln_tensor *kiln_tanh(kiln_ctx *ctx, kiln_tensor *x) { return act_forward(ctx, ACT_TANH, x, 0.0f, 0.0f); }

kiln_tensor *kiln_softplus(kiln_ctx *ctx, kiln_tensor *x, float beta, float threshold) {
    if (!kiln__check_inputs(ctx, "kiln_softplus", 1, &x)) return NULL;
    /* torch divides by beta without a check; 0, Inf or NaN would turn every element into
     * NaN or Inf, so they are refused here */
    if (!(beta != 0.0f && isfinite(beta)) || isnan(threshold)) {
        char sb[160];
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_softplus: beta %g must be finite and non-zero and threshold %g not NaN (input %s)",
                   (double)beta, (double)threshold, kiln__shape_str(x->ndim, x->shape, sb, sizeof sb));
        return NULL;
    }
    return act_forward(ctx, ACT_SOFTPLUS, x, beta, threshold);
}

/* ---- softmax / log_softmax ---------------------------------------------------------- */

/*
 * Kernel shape: a work-item per row (*_rows) unless the rows are long (>= SM_GROUPS_MIN_LEN)
 * and too few to fill the device that way; then a work-group per row (*_groups). On CPUs
 * (POCL runs a group's work-items one after another on one core) "too few" is fewer than
 * SM_CPU_ROWS_PER_CU rows per compute unit; on GPUs fewer than SM_GPU_MIN_ROWS rows, or
 * rows contiguous in memory (a work-item per row would read with a stride across the
 * work-items of a wavefront). The choice depends only on shapes and the device, so
 * results are deterministic.
 */
#define SM_GROUPS_MIN_LEN 256
#define SM_CPU_ROWS_PER_CU 16
#define SM_GPU_MIN_ROWS 1024

/* ctx->hooks.softmax_layout (tests): 1 forces *_rows, 2 forces *_groups with the CPU's
 * blocked shares, 3 forces *_groups with the GPU's interleaved shares, 0 leaves the choice
 * to the device (so one device's test run covers every path). */

/* What a softmax or log_softmax node keeps for its backward. */
typedef struct softmax_state {
    int dim;  /* normalised dim */
    bool log; /* log_softmax */
} softmax_state;

typedef struct sm_shape {
    int dim;       /* normalised dim (0 for a 0-d tensor) */
    int64_t len;   /* elements along dim */
    int64_t inner; /* product of the dims after dim */
    int64_t nrows; /* product of the other dims */
} sm_shape;

static void sm_shape_of(const kiln_tensor *t, int dim, sm_shape *s) {
    s->dim = dim;
    s->len = t->ndim ? t->shape[dim] : 1;
    s->inner = 1;
    s->nrows = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (d == dim) continue;
        s->nrows *= t->shape[d];
        if (d > dim) s->inner *= t->shape[d];
    }
}

static bool sm_use_groups(const kiln_ctx *ctx, const sm_shape *s) {
    if (ctx->hooks.softmax_layout) return ctx->hooks.softmax_layout >= 2;
    if (s->len < SM_GROUPS_MIN_LEN) return false;
    int64_t cu = ctx->info.compute_units ? ctx->info.compute_units : 1;
    if (ctx->info.type == KILN_DEVICE_CPU) return s->nrows < SM_CPU_ROWS_PER_CU * cu;
    return s->nrows < SM_GPU_MIN_ROWS || s->inner == 1;
}

/* Launches the rows or groups kernel `stem`: args[0..na) are the common arguments; the
 * groups kernels take `blocked` and a local buffer on top. */
static kiln_status sm_launch(kiln_ctx *ctx, const char *op, const char *stem, const sm_shape *s, kiln__karg *args,
                             size_t na) {
    char kernel[64];
    if (!sm_use_groups(ctx, s)) {
        snprintf(kernel, sizeof kernel, "%s_rows", stem);
        return kiln__launch(ctx, op, ACT_PROGRAM, ACT_OPTIONS, kernel, na, args, (size_t)s->nrows, 0);
    }
    snprintf(kernel, sizeof kernel, "%s_groups", stem);
    size_t local = 1;
    kiln_status st = kiln__tree_wg(ctx, ACT_PROGRAM, ACT_OPTIONS, kernel, 0, &local);
    if (st != KILN_OK) return st;
    /* POCL runs a group's work-items one after another: give each a contiguous block */
    int hook = ctx->hooks.softmax_layout;
    cl_int blocked = hook >= 2 ? hook == 2 : ctx->info.type == KILN_DEVICE_CPU;
    args[na++] = KILN__ARG(blocked);
    args[na++] = KILN__LOCAL(local * sizeof(cl_float));
    return kiln__launch(ctx, op, ACT_PROGRAM, ACT_OPTIONS, kernel, na, args, (size_t)s->nrows * local, local);
}

static kiln_status softmax_backward(kiln_ctx *ctx, kiln__node *n, kiln_tensor *gout) {
    if (!kiln__input_needs_grad(n, 0)) return KILN_OK;
    const softmax_state *st = KILN__NODE_STATE(n, softmax_state);
    if (!st) return ctx->err;
    bool lg = st->log;
    const char *op = lg ? "kiln_log_softmax" : "kiln_softmax";
    kiln_tensor *y = n->out; /* contiguous: made by the forward */
    sm_shape s;
    sm_shape_of(y, st->dim, &s);
    kiln_tensor *gi = kiln__tensor_new(ctx, op, KILN_F32, y->ndim, y->shape);
    if (!gi) return ctx->err;
    if (kiln__numel(y->ndim, y->shape) > 0) {
        cl_int goff = (cl_int)gout->offset, yoff = (cl_int)y->offset, doff = (cl_int)gi->offset;
        cl_int nrows = (cl_int)s.nrows, len = (cl_int)s.len, inner = (cl_int)s.inner;
        kiln__karg args[11] = {KILN__ARG(gout->st->mem), KILN__ARG(goff),        KILN__ARG(y->st->mem),
                               KILN__ARG(yoff),          KILN__ARG(gi->st->mem), KILN__ARG(doff),
                               KILN__ARG(nrows),         KILN__ARG(len),         KILN__ARG(inner)};
        if (sm_launch(ctx, op, lg ? "log_softmax_bwd" : "softmax_bwd", &s, args, 9) != KILN_OK) {
            kiln_tensor_free(gi);
            return ctx->err;
        }
    }
    return kiln__accum_owned(ctx, n, 0, gi);
}

static kiln_tensor *softmax_f32(kiln_ctx *ctx, kiln_tensor *const *in, const void *arg) {
    const int *a = arg; /* dim, log */
    return a[1] ? kiln_log_softmax(ctx, in[0], a[0]) : kiln_softmax(ctx, in[0], a[0]);
}

static kiln_tensor *softmax_forward(kiln_ctx *ctx, const char *op, kiln_tensor *x, int dim, bool lg) {
    if (!kiln__check_inputs(ctx, op, 1, &x)) return NULL;
    kiln_tensor *xf = kiln__autocast_f32(ctx, x); /* autocast: an f32 op (kiln/amp.h) */
    if (xf != x) {
        kiln_tensor *res = softmax_forward(ctx, op, xf, dim, lg);
        kiln_tensor_free(xf);
        return res;
    }
    /* a half input: through an f32 copy, the result in its dtype */
    if (kiln_dtype_is_half(x->dtype)) return kiln__half_fallback(ctx, 1, &x, softmax_f32, (const int[]){dim, lg});
    if (!check_f32(ctx, op, x)) return NULL;
    int d = kiln__axis(dim, x->ndim ? x->ndim : 1); /* a 0-d tensor takes dim 0 or -1, as torch */
    if (d < 0) {
        char sb[160];
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: dim %d out of range for tensor %s", op, dim,
                   kiln__shape_str(x->ndim, x->shape, sb, sizeof sb));
        return NULL;
    }
    kiln_tensor *out = kiln__tensor_new(ctx, op, KILN_F32, x->ndim, x->shape);
    if (!out) return NULL;
    sm_shape s;
    sm_shape_of(x, d, &s);
    if (kiln__numel(x->ndim, x->shape) > 0) {
        /* the rows' starts: the input's other dims, with their strides */
        int64_t ksh[KILN_MAX_DIMS], kst[1][KILN_MAX_DIMS];
        memset(kst, 0, sizeof kst);
        int nk = 0;
        for (int k = 0; k < x->ndim; k++) {
            if (k == d) continue;
            ksh[nk] = x->shape[k];
            kst[0][nk++] = x->strides[k];
        }
        kiln__geom g;
        kiln__geom_build(&g, nk, ksh, 1, (const int64_t(*)[KILN_MAX_DIMS])kst);
        cl_int xoff = (cl_int)x->offset, yoff = (cl_int)out->offset;
        cl_int nrows = (cl_int)s.nrows, len = (cl_int)s.len, inner = (cl_int)s.inner;
        cl_int xs = x->ndim ? (cl_int)x->strides[d] : 0;
        kiln__karg args[11] = {KILN__ARG(x->st->mem), KILN__ARG(xoff),  KILN__ARG(out->st->mem),
                               KILN__ARG(yoff),       KILN__ARG(nrows), KILN__ARG(len),
                               KILN__ARG(inner),      KILN__ARG(xs),    KILN__ARG(g)};
        if (sm_launch(ctx, op, lg ? "log_softmax" : "softmax", &s, args, 9) != KILN_OK) {
            kiln_tensor_free(out);
            return NULL;
        }
    }
    if (kiln__grad_wanted(ctx, 1, &x)) {
        kiln__node *n = kiln__node_new(ctx, op, out, 1, &x, softmax_backward);
        if (!n) {
            kiln_tensor_free(out);
            return NULL;
        }
        softmax_state *st = KILN__NODE_STATE_NEW(n, softmax_state);
        if (!st) {
            kiln_tensor_free(out);
            return NULL;
        }
        *st = (softmax_state){d, lg};
    }
    return kiln__finish(ctx, op, out);
}

kiln_tensor *kiln_softmax(kiln_ctx *ctx, kiln_tensor *x, int dim) {
    return softmax_forward(ctx, "kiln_softmax", x, dim, false);
}

kiln_tensor *kiln_log_softmax(kiln_ctx *ctx, kiln_tensor *x, int dim) {
    return softmax_forward(ctx, "kiln_log_softmax", x, dim, true);
}

/* relu's gradient g where v <= 0 is 0 (relu_bwd): v the input or the output of the ReLU (the
 * same test); a new f32 tensor of g's shape. */
static kiln_tensor *relu_grad(kiln_ctx *ctx, const char *op, kiln_tensor *g, kiln_tensor *v) {
    kiln_tensor *gi = kiln__tensor_new(ctx, op, KILN_F32, v->ndim, v->shape);
    if (!gi) return NULL;
    int64_t numel = kiln__numel(v->ndim, v->shape);
    if (numel == 0) return gi;
    if (!kiln__is_contiguous(g) || !kiln__is_contiguous(v)) {
        kiln_tensor_free(gi);
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: relu's gradient of non-contiguous tensors", op);
        return NULL;
    }
    cl_int goff = (cl_int)g->offset, voff = (cl_int)v->offset, ooff = (cl_int)gi->offset, ni = (cl_int)numel;
    cl_float a = 0.0f, b = 0.0f;
    kiln__karg args[] = {KILN__ARG(g->st->mem), KILN__ARG(goff),        KILN__ARG(v->st->mem),
                         KILN__ARG(voff),       KILN__ARG(gi->st->mem), KILN__ARG(ooff),
                         KILN__ARG(ni),         KILN__ARG(a),           KILN__ARG(b)};
    if (kiln__launch(ctx, op, ACT_PROGRAM, kiln__half_options(v->dtype), "relu_bwd_contig", 9, args, (size_t)numel,
                     0) != KILN_OK) {
        kiln_tensor_free(gi);
        return NULL;
    }
    return gi;
}

kiln_status kiln__relu_backward_then(kiln_ctx *ctx, kiln__node *n, kiln_tensor *g, kiln__backward_fn fn) {
    kiln_tensor *gr = relu_grad(ctx, n->op, g, n->out);
    if (!gr) return ctx->err;
    kiln_status s = fn(ctx, n, gr);
    kiln_tensor_free(gr);
    return s;
}
