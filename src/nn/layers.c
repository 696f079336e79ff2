/* src/nn/layers.c - the layers of nn.h, each defined through the public module API
 * (kiln/module.h) with its own typed configuration: constructors with PyTorch's default
 * initialisation, forwards that check their input's shape against the layer (so the error
 * names the layer, not just the op underneath), and torch-style descriptions. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn_internal.h"

#define PY_BOOL(b) ((b) ? "True" : "False")

/* A one-input, one-output forward `name` from `kiln_tensor *fn(kiln_module *, kiln_tensor *)`. */
#define FORWARD1(name, fn)                                                                                             \
    static kiln_status name(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {            \
        (void)nin, (void)nout;                                                                                         \
        out[0] = fn(m, in[0]);                                                                                         \
        return out[0] ? KILN_OK : kiln_error_status(m->ctx);                                                           \
    }

/* The definition of a one-input, one-output layer with configuration type `cfg`. */
#define LAYER_DEF(kind_, cfg, fwd, args)                                                                               \
    {                                                                                                                  \
        .kind = (kind_), .state_size = sizeof(cfg), .forward = (fwd), .num_inputs = 1, .num_outputs = 1,               \
        .describe = (args)                                                                                             \
    }

/* Registers t as parameter (or buffer) `name` of m; t on success, NULL (t freed, the error
 * set) on failure. */
static kiln_tensor *reg(kiln_module *m, const char *name, kiln_tensor *t, bool buffer) {
    kiln_status s = buffer ? kiln_module_add_buffer(m, name, t) : kiln_module_add_parameter(m, name, t);
    return s == KILN_OK ? t : NULL;
}

/* U(-bound, bound) of `shape`, registered as parameter `name`. */
static kiln_tensor *add_uniform(kiln_module *m, const char *name, double bound, int ndim, const int64_t *shape) {
    return reg(m, name, kiln_rand_uniform(m->ctx, (float)-bound, (float)bound, ndim, shape), false);
}

static kiln_module *fail_free(kiln_module *m) {
    kiln_module_free(m);
    return NULL;
}

static bool check_ndim(kiln_module *m, kiln_tensor *x, int lo, int hi, const char *what) {
    if (!x) return false;
    if (x->ndim < lo || x->ndim > hi) {
        char s[96];
        kiln__fail(m->ctx, KILN_ERR_SHAPE, "%s: input %s has %d dims, expected %s", m->kind,
                   kiln__shape_str(x->ndim, x->shape, s, sizeof s), x->ndim, what);
        return false;
    }
    return true;
}

static bool check_dim(kiln_module *m, kiln_tensor *x, int dim, int64_t want, const char *what) {
    if (x->shape[dim] != want) {
        char s[96];
        kiln__fail(m->ctx, KILN_ERR_SHAPE, "%s: input %s has %" PRId64 " %s (dim %d), expected %" PRId64, m->kind,
                   kiln__shape_str(x->ndim, x->shape, s, sizeof s), x->shape[dim], what, dim, want);
        return false;
    }
    return true;
}

/* ---- linear --------------------------------------------------------------------------- */

typedef struct linear_cfg {
    int64_t in_features, out_features;
    kiln_tensor *weight, *bias; /* bias NULL without */
} linear_cfg;

static kiln_tensor *linear_fwd(kiln_module *m, kiln_tensor *x) {
    const linear_cfg *c = m->data;
    if (!check_ndim(m, x, 1, KILN_MAX_DIMS, ">= 1") || !check_dim(m, x, x->ndim - 1, c->in_features, "input features"))
        return NULL;
    return kiln__linear(m->ctx, m->kind, x, c->weight, c->bias); /* the bias in the GEMM's store where it can */
}
FORWARD1(linear_forward, linear_fwd)

static void linear_args(const kiln_module *m, char *buf, size_t cap) {
    const linear_cfg *c = m->data;
    snprintf(buf, cap, "in_features=%" PRId64 ", out_features=%" PRId64 ", bias=%s", c->in_features, c->out_features,
             PY_BOOL(c->bias));
}

static const kiln_module_def linear_def = LAYER_DEF("Linear", linear_cfg, linear_forward, linear_args);

static bool linear_fuse_next(kiln_module *m, kiln_module *next, kiln_tensor *x, kiln_tensor **y);

kiln_module *kiln_nn_linear(kiln_ctx *ctx, int64_t in_features, int64_t out_features, bool bias) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_linear: ctx is NULL"), NULL;
    if (in_features <= 0 || out_features <= 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_linear: in_features=%" PRId64 ", out_features=%" PRId64 " (both must be > 0)", in_features,
                   out_features);
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, &linear_def);
    if (!m) return NULL;
    linear_cfg *c = m->data;
    c->in_features = in_features, c->out_features = out_features;
    /* kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias the same */
    double bound = 1.0 / sqrt((double)in_features);
    if (!(c->weight = add_uniform(m, "weight", bound, 2, (int64_t[]){out_features, in_features}))) return fail_free(m);
    if (bias && !(c->bias = add_uniform(m, "bias", bound, 1, (int64_t[]){out_features}))) return fail_free(m);
    m->fuse_next = linear_fuse_next;
    return m;
}

/* ---- convolution ---------------------------------------------------------------------- */

typedef struct conv_cfg {
    int64_t in_channels, out_channels;
    int kh, kw;
    bool transposed;
    kiln_conv2d_params p;
    kiln_tensor *weight, *bias;
} conv_cfg;

static bool conv_params(kiln_ctx *ctx, const char *op, const kiln_conv2d_params *p, kiln_conv2d_params *out,
                        int64_t cin, int64_t cout, int kh, int kw, bool transposed) {
    *out = p ? *p : kiln_conv2d_defaults();
    bool ok = cin > 0 && cout > 0 && kh > 0 && kw > 0 && out->groups >= 1 && cin % out->groups == 0 &&
              cout % out->groups == 0;
    for (int d = 0; d < 2; d++) {
        ok = ok && out->stride[d] >= 1 && out->dilation[d] >= 1 && out->padding[d] >= 0 && out->output_padding[d] >= 0;
        if (transposed)
            ok = ok && (out->output_padding[d] < out->stride[d] || out->output_padding[d] < out->dilation[d]);
        else
            ok = ok && out->output_padding[d] == 0;
    }
    if (!ok)
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: in_channels=%" PRId64 " out_channels=%" PRId64
                   " kernel=(%d, %d) stride=(%d, %d) padding=(%d, %d) "
                   "dilation=(%d, %d) groups=%d output_padding=(%d, %d): channels and kernel must be > 0, groups must "
                   "divide both channel counts, stride and dilation >= 1, padding >= 0",
                   op, cin, cout, kh, kw, out->stride[0], out->stride[1], out->padding[0], out->padding[1],
                   out->dilation[0], out->dilation[1], out->groups, out->output_padding[0], out->output_padding[1]);
    return ok;
}

static kiln_tensor *conv_fwd(kiln_module *m, kiln_tensor *x) {
    const conv_cfg *c = m->data;
    if (!check_ndim(m, x, 4, 4, "4 ([N, C, H, W])") || !check_dim(m, x, 1, c->in_channels, "channels")) return NULL;
    return c->transposed ? kiln_conv_transpose2d(m->ctx, x, c->weight, c->bias, &c->p)
                         : kiln_conv2d(m->ctx, x, c->weight, c->bias, &c->p);
}
FORWARD1(conv_forward, conv_fwd)

static void conv_args(const kiln_module *m, char *buf, size_t cap) {
    const conv_cfg *c = m->data;
    const kiln_conv2d_params *p = &c->p;
    size_t used = (size_t)snprintf(buf, cap, "%" PRId64 ", %" PRId64 ", kernel_size=(%d, %d), stride=(%d, %d)",
                                   c->in_channels, c->out_channels, c->kh, c->kw, p->stride[0], p->stride[1]);
#define MORE(...)                                                                                                      \
    if (used < cap) used += (size_t)snprintf(buf + used, cap - used, __VA_ARGS__)
    if (p->padding[0] || p->padding[1]) MORE(", padding=(%d, %d)", p->padding[0], p->padding[1]);
    if (p->output_padding[0] || p->output_padding[1])
        MORE(", output_padding=(%d, %d)", p->output_padding[0], p->output_padding[1]);
    if (p->dilation[0] != 1 || p->dilation[1] != 1) MORE(", dilation=(%d, %d)", p->dilation[0], p->dilation[1]);
    if (p->groups != 1) MORE(", groups=%d", p->groups);
    if (!c->bias) MORE(", bias=False");
#undef MORE
}

static bool conv_fuse_next(kiln_module *m, kiln_module *next, kiln_tensor *x, kiln_tensor **y);

static const kiln_module_def conv_def = LAYER_DEF("Conv2d", conv_cfg, conv_forward, conv_args);
static const kiln_module_def convt_def = LAYER_DEF("ConvTranspose2d", conv_cfg, conv_forward, conv_args);

static kiln_module *conv_new(kiln_ctx *ctx, const char *op, const kiln_module_def *def, int64_t cin, int64_t cout,
                             int kh, int kw, const kiln_conv2d_params *p, bool bias, bool transposed) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", op), NULL;
    kiln_conv2d_params cp;
    if (!conv_params(ctx, op, p, &cp, cin, cout, kh, kw, transposed)) return NULL;
    kiln_module *m = kiln_module_new(ctx, def);
    if (!m) return NULL;
    conv_cfg *c = m->data;
    *c = (conv_cfg){.in_channels = cin, .out_channels = cout, .kh = kh, .kw = kw, .transposed = transposed, .p = cp};
    /* torch computes fan_in from weight.size(1) * kh * kw: in/groups for conv2d,
     * out/groups for conv_transpose2d (whose weight is [in, out/groups, kh, kw]) */
    int64_t wshape[4] = {transposed ? cin : cout, (transposed ? cout : cin) / cp.groups, kh, kw};
    double bound = 1.0 / sqrt((double)(wshape[1] * kh * kw));
    if (!(c->weight = add_uniform(m, "weight", bound, 4, wshape))) return fail_free(m);
    if (bias && !(c->bias = add_uniform(m, "bias", bound, 1, (int64_t[]){cout}))) return fail_free(m);
    if (!transposed) m->fuse_next = conv_fuse_next;
    return m;
}

kiln_module *kiln_nn_conv2d(kiln_ctx *ctx, int64_t in_channels, int64_t out_channels, int kh, int kw,
                            const kiln_conv2d_params *p, bool bias) {
    return conv_new(ctx, "kiln_nn_conv2d", &conv_def, in_channels, out_channels, kh, kw, p, bias, false);
}

kiln_module *kiln_nn_conv_transpose2d(kiln_ctx *ctx, int64_t in_channels, int64_t out_channels, int kh, int kw,
                                      const kiln_conv2d_params *p, bool bias) {
    return conv_new(ctx, "kiln_nn_conv_transpose2d", &convt_def, in_channels, out_channels, kh, kw, p, bias, true);
}

/* ---- batch norm ----------------------------------------------------------------------- */

typedef struct bn_cfg {
    int64_t num_features;
    int dims; /* 1: BatchNorm1d, 2: BatchNorm2d */
    float eps, momentum;
    int64_t batches_tracked; /* host copy of num_batches_tracked; -1: read it from the device */
    kiln_tensor *weight, *bias, *running_mean, *running_var, *num_batches_tracked;
    /* SyncBatchNorm (set by src/dist through kiln__bn_set_sync): the training forward sums
     * its batch statistics over every process with it (differentiable); NULL: this batch's */
    kiln_tensor *(*sync_sum)(void *user, kiln_tensor *t);
    void *sync_user;
} bn_cfg;

/* SyncBatchNorm's training forward, as torch.nn.SyncBatchNorm: the per-channel sums of x
 * and x² and the sample count, summed over the processes by sync_sum (whose backward sums
 * the gradients likewise), give the global batch mean and biased variance; the running
 * statistics take the unbiased variance. Composed of ops, so autograd derives the backward.
 * x [N, C, *]. */
static kiln_tensor *bn_sync_fwd(kiln_module *m, bn_cfg *c, kiln_tensor *x) {
    kiln_ctx *ctx = m->ctx;
    const int nd = kiln_tensor_ndim(x);
    const int64_t C = c->num_features;
    int axes[KILN_MAX_DIMS], na = 0;
    int64_t bshape[KILN_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        if (d != 1) axes[na++] = d;
        bshape[d] = d == 1 ? C : 1;
    }
    kiln_tensor *s1 = kiln_sum(ctx, x, na, axes, false);                   // [C]
    kiln_tensor *s2 = kiln_sum(ctx, kiln_mul(ctx, x, x), na, axes, false); // [C]
    kiln_tensor *cnt = kiln_full(ctx, (float)(kiln_tensor_numel(x) / C), 1, (int64_t[]){1});
    kiln_tensor *parts[3] = {s1, s2, cnt};
    kiln_tensor *cat = kiln_concat(ctx, 3, parts, 0); // [2C + 1]
    kiln_tensor *S = cat ? c->sync_sum(c->sync_user, cat) : NULL;
    kiln_tensor *M = kiln_slice(ctx, S, 0, 2 * C, 2 * C + 1, 1);
    kiln_tensor *mean = kiln_div(ctx, kiln_slice(ctx, S, 0, 0, C, 1), M);
    kiln_tensor *var = kiln_sub(ctx, kiln_div(ctx, kiln_slice(ctx, S, 0, C, 2 * C, 1), M), kiln_mul(ctx, mean, mean));
    kiln_tensor *scale = kiln_div(ctx, c->weight, kiln_sqrt(ctx, kiln_add_scalar(ctx, var, c->eps)));
    kiln_tensor *y = kiln_add(
        ctx, kiln_mul(ctx, kiln_sub(ctx, x, kiln_reshape(ctx, mean, nd, bshape)), kiln_reshape(ctx, scale, nd, bshape)),
        kiln_reshape(ctx, c->bias, nd, bshape));
    if (!y) return NULL;
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    const float mom = c->momentum;
    kiln_tensor *unbiased = kiln_mul(ctx, var, kiln_div(ctx, M, kiln_add_scalar(ctx, M, -1.0f)));
    kiln_tensor *rm = kiln_add(ctx, kiln_mul_scalar(ctx, c->running_mean, 1 - mom), kiln_mul_scalar(ctx, mean, mom));
    kiln_tensor *rv = kiln_add(ctx, kiln_mul_scalar(ctx, c->running_var, 1 - mom), kiln_mul_scalar(ctx, unbiased, mom));
    kiln_status s = rm && rv ? kiln__copy_into(ctx, "SyncBatchNorm", rm, c->running_mean) : kiln_error_status(ctx);
    if (s == KILN_OK) s = kiln__copy_into(ctx, "SyncBatchNorm", rv, c->running_var);
    kiln_ctx_set_grad_enabled(ctx, grad);
    return s == KILN_OK ? y : NULL;
}

bool kiln__bn_set_sync(kiln_module *m, kiln_tensor *(*fn)(void *user, kiln_tensor *t), void *user) {
    const char *k = kiln_module_kind(m);
    if (!m || (strcmp(k, "BatchNorm1d") != 0 && strcmp(k, "BatchNorm2d") != 0)) return false;
    bn_cfg *c = m->data;
    c->sync_sum = fn;
    c->sync_user = fn ? user : NULL;
    return true;
}

/* bn's forward; with act relu(bn(x) + residual) in one op (not for SyncBatchNorm). */
static kiln_tensor *bn_fwd_act(kiln_module *m, kiln_tensor *x, bool act, kiln_tensor *residual) {
    bn_cfg *c = m->data;
    bool two_d = c->dims == 2;
    if (!check_ndim(m, x, two_d ? 4 : 2, two_d ? 4 : 3, two_d ? "4 ([N, C, H, W])" : "2 or 3 ([N, C] or [N, C, L])") ||
        !check_dim(m, x, 1, c->num_features, "channels"))
        return NULL;
    kiln_tensor *y = act ? kiln__batch_norm_relu(m->ctx, x, residual, c->running_mean, c->running_var, c->weight,
                                                 c->bias, m->training, c->momentum, c->eps)
                     : m->training && c->sync_sum
                         ? bn_sync_fwd(m, c, x)
                         : kiln_batch_norm(m->ctx, x, c->running_mean, c->running_var, c->weight, c->bias, m->training,
                                           c->momentum, c->eps);
    if (y && m->training) {
        /* num_batches_tracked += 1 (a fill, no read back, except once after a load) */
        if (c->batches_tracked < 0) {
            int32_t v = 0;
            if (kiln_to_host(c->num_batches_tracked, &v, sizeof v) != KILN_OK) return NULL;
            c->batches_tracked = v;
        }
        if (kiln_fill(c->num_batches_tracked, (float)(c->batches_tracked + 1)) != KILN_OK) return NULL;
        c->batches_tracked++;
    }
    return y;
}
static kiln_tensor *bn_fwd(kiln_module *m, kiln_tensor *x) { return bn_fwd_act(m, x, false, NULL); }
FORWARD1(bn_forward, bn_fwd)

kiln_tensor *kiln__bn_relu_forward(kiln_module *bn, kiln_tensor *x, kiln_tensor *residual, bool *fused) {
    *fused = bn && bn->def.forward == bn_forward && !(bn->training && ((bn_cfg *)bn->data)->sync_sum);
    if (!*fused) return NULL;
    kiln_ctx *ctx = bn->ctx;
    if (!x) {
        /* as kiln_forward given NULL: an error unless an earlier one explains it */
        if (ctx->err == KILN_OK) kiln__fail(ctx, KILN_ERR_NULL, "kiln_forward: the input of %s is NULL", bn->kind);
        return NULL;
    }
    kiln_tensor *y = bn_fwd_act(bn, x, true, residual);
    if (!y) {
        /* the note kiln_forward adds to a module's failure */
        char path[256];
        kiln__module_path(bn, path, sizeof path);
        kiln__error_note(ctx, "in %s%s%s", bn->kind, *path ? " at " : "", path);
    }
    return y;
}

static void bn_args(const kiln_module *m, char *buf, size_t cap) {
    const bn_cfg *c = m->data;
    snprintf(buf, cap, "%" PRId64 ", eps=%g, momentum=%g, affine=True, track_running_stats=True", c->num_features,
             (double)c->eps, (double)c->momentum);
}

static void bn_state_loaded(kiln_module *m) { ((bn_cfg *)m->data)->batches_tracked = -1; }

static const kiln_module_def bn1_def = LAYER_DEF("BatchNorm1d", bn_cfg, bn_forward, bn_args);
static const kiln_module_def bn2_def = LAYER_DEF("BatchNorm2d", bn_cfg, bn_forward, bn_args);

static kiln_module *bn_new(kiln_ctx *ctx, const char *op, const kiln_module_def *def, int64_t nf, float eps,
                           float momentum, int dims) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", op), NULL;
    if (nf <= 0 || !(eps >= 0) || !(momentum >= 0 && momentum <= 1)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: num_features=%" PRId64 " eps=%g momentum=%g (features > 0, eps >= 0, momentum in [0, 1])", op,
                   nf, eps, momentum);
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, def);
    if (!m) return NULL;
    m->state_loaded = bn_state_loaded;
    bn_cfg *c = m->data;
    *c = (bn_cfg){.num_features = nf, .dims = dims, .eps = eps, .momentum = momentum};
    int64_t shape[1] = {nf};
    kiln_tensor *nbt = kiln_empty(ctx, KILN_I32, 0, NULL);
    if (nbt && kiln_fill(nbt, 0.0f) != KILN_OK) {
        kiln_tensor_free(nbt);
        nbt = NULL;
    }
    if (!(c->weight = reg(m, "weight", kiln_ones(ctx, 1, shape), false)) ||
        !(c->bias = reg(m, "bias", kiln_zeros(ctx, 1, shape), false)) ||
        !(c->running_mean = reg(m, "running_mean", kiln_zeros(ctx, 1, shape), true)) ||
        !(c->running_var = reg(m, "running_var", kiln_ones(ctx, 1, shape), true)) ||
        !(c->num_batches_tracked = reg(m, "num_batches_tracked", nbt, true)))
        return fail_free(m);
    return m;
}

kiln_module *kiln_nn_batchnorm1d(kiln_ctx *ctx, int64_t num_features, float eps, float momentum) {
    return bn_new(ctx, "kiln_nn_batchnorm1d", &bn1_def, num_features, eps, momentum, 1);
}

kiln_module *kiln_nn_batchnorm2d(kiln_ctx *ctx, int64_t num_features, float eps, float momentum) {
    return bn_new(ctx, "kiln_nn_batchnorm2d", &bn2_def, num_features, eps, momentum, 2);
}

/* ---- layer norm ----------------------------------------------------------------------- */

typedef struct ln_cfg {
    int ndim; /* trailing dims normalised */
    int64_t shape[KILN_MAX_DIMS];
    float eps;
    kiln_tensor *weight, *bias; /* NULL without elementwise_affine */
} ln_cfg;

static kiln_tensor *ln_fwd(kiln_module *m, kiln_tensor *x) {
    const ln_cfg *c = m->data;
    if (!check_ndim(m, x, c->ndim, KILN_MAX_DIMS, "at least the normalised dims")) return NULL;
    for (int d = 0; d < c->ndim; d++)
        if (!check_dim(m, x, x->ndim - c->ndim + d, c->shape[d], "elements in a normalised dim")) return NULL;
    return kiln_layer_norm(m->ctx, x, c->ndim, c->weight, c->bias, c->eps);
}
FORWARD1(ln_forward, ln_fwd)

static void ln_args(const kiln_module *m, char *buf, size_t cap) {
    const ln_cfg *c = m->data;
    size_t used = (size_t)snprintf(buf, cap, "(");
    for (int d = 0; d < c->ndim && used < cap; d++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%" PRId64, d ? ", " : "", c->shape[d]);
    if (used < cap)
        snprintf(buf + used, cap - used, "%s), eps=%g, elementwise_affine=%s", c->ndim == 1 ? "," : "", (double)c->eps,
                 PY_BOOL(c->weight));
}

static const kiln_module_def ln_def = LAYER_DEF("LayerNorm", ln_cfg, ln_forward, ln_args);

kiln_module *kiln_nn_layernorm(kiln_ctx *ctx, int ndim, const int64_t *shape, float eps, bool affine) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_layernorm: ctx is NULL"), NULL;
    bool ok = ndim >= 1 && ndim <= KILN_MAX_DIMS && shape && eps >= 0;
    for (int d = 0; ok && d < ndim; d++) ok = shape[d] > 0;
    if (!ok) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_layernorm: ndim=%d (1 to %d trailing dims, each > 0), eps=%g (>= 0)", ndim, KILN_MAX_DIMS,
                   eps);
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, &ln_def);
    if (!m) return NULL;
    ln_cfg *c = m->data;
    c->ndim = ndim;
    memcpy(c->shape, shape, sizeof(int64_t) * (size_t)ndim);
    c->eps = eps;
    if (affine && (!(c->weight = reg(m, "weight", kiln_ones(ctx, ndim, shape), false)) ||
                   !(c->bias = reg(m, "bias", kiln_zeros(ctx, ndim, shape), false))))
        return fail_free(m);
    return m;
}

/* ---- dropout, embedding --------------------------------------------------------------- */

typedef struct dropout_cfg {
    float p;
} dropout_cfg;

static kiln_tensor *dropout_fwd(kiln_module *m, kiln_tensor *x) {
    return kiln_dropout(m->ctx, x, ((const dropout_cfg *)m->data)->p, m->training);
}
FORWARD1(dropout_forward, dropout_fwd)

static void dropout_args(const kiln_module *m, char *buf, size_t cap) {
    snprintf(buf, cap, "p=%g, inplace=False", (double)((const dropout_cfg *)m->data)->p);
}

static const kiln_module_def dropout_def = LAYER_DEF("Dropout", dropout_cfg, dropout_forward, dropout_args);

kiln_module *kiln_nn_dropout(kiln_ctx *ctx, float p) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_dropout: ctx is NULL"), NULL;
    if (!(p >= 0 && p <= 1)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn_dropout: p=%g (must be in [0, 1])", p);
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, &dropout_def);
    if (m) ((dropout_cfg *)m->data)->p = p;
    return m;
}

typedef struct embedding_cfg {
    int64_t num_embeddings, dim;
    kiln_tensor *weight;
} embedding_cfg;

static kiln_tensor *embedding_fwd(kiln_module *m, kiln_tensor *x) {
    return kiln_embedding(m->ctx, ((const embedding_cfg *)m->data)->weight, x);
}
FORWARD1(embedding_forward, embedding_fwd)

static void embedding_args(const kiln_module *m, char *buf, size_t cap) {
    const embedding_cfg *c = m->data;
    snprintf(buf, cap, "%" PRId64 ", %" PRId64, c->num_embeddings, c->dim);
}

static const kiln_module_def embedding_def = LAYER_DEF("Embedding", embedding_cfg, embedding_forward, embedding_args);

kiln_module *kiln_nn_embedding(kiln_ctx *ctx, int64_t num_embeddings, int64_t dim) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_embedding: ctx is NULL"), NULL;
    if (num_embeddings <= 0 || dim <= 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_embedding: num_embeddings=%" PRId64 ", embedding_dim=%" PRId64 " (both must be > 0)",
                   num_embeddings, dim);
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, &embedding_def);
    if (!m) return NULL;
    embedding_cfg *c = m->data;
    c->num_embeddings = num_embeddings, c->dim = dim;
    if (!(c->weight = reg(m, "weight", kiln_rand_normal(ctx, 0.0f, 1.0f, 2, (int64_t[]){num_embeddings, dim}), false)))
        return fail_free(m);
    return m;
}

/* ---- pooling, flatten ----------------------------------------------------------------- */

typedef struct pool_cfg {
    kiln_pool2d_params p;
} pool_cfg;

static kiln_tensor *maxpool_fwd(kiln_module *m, kiln_tensor *x) {
    if (!check_ndim(m, x, 4, 4, "4 ([N, C, H, W])")) return NULL;
    return kiln_max_pool2d(m->ctx, x, &((const pool_cfg *)m->data)->p, NULL);
}
FORWARD1(maxpool_forward, maxpool_fwd)

static kiln_tensor *avgpool_fwd(kiln_module *m, kiln_tensor *x) {
    if (!check_ndim(m, x, 4, 4, "4 ([N, C, H, W])")) return NULL;
    return kiln_avg_pool2d(m->ctx, x, &((const pool_cfg *)m->data)->p);
}
FORWARD1(avgpool_forward, avgpool_fwd)

static void maxpool_args(const kiln_module *m, char *buf, size_t cap) {
    const kiln_pool2d_params *p = &((const pool_cfg *)m->data)->p;
    snprintf(buf, cap, "kernel_size=(%d, %d), stride=(%d, %d), padding=(%d, %d), dilation=(%d, %d), ceil_mode=%s",
             p->kernel[0], p->kernel[1], p->stride[0], p->stride[1], p->padding[0], p->padding[1], p->dilation[0],
             p->dilation[1], PY_BOOL(p->ceil_mode));
}

static void avgpool_args(const kiln_module *m, char *buf, size_t cap) {
    const kiln_pool2d_params *p = &((const pool_cfg *)m->data)->p;
    snprintf(buf, cap, "kernel_size=(%d, %d), stride=(%d, %d), padding=(%d, %d), ceil_mode=%s, count_include_pad=%s",
             p->kernel[0], p->kernel[1], p->stride[0], p->stride[1], p->padding[0], p->padding[1],
             PY_BOOL(p->ceil_mode), PY_BOOL(p->count_include_pad));
}

static const kiln_module_def maxpool_def = LAYER_DEF("MaxPool2d", pool_cfg, maxpool_forward, maxpool_args);
static const kiln_module_def avgpool_def = LAYER_DEF("AvgPool2d", pool_cfg, avgpool_forward, avgpool_args);

static kiln_module *pool_new(kiln_ctx *ctx, const char *op, const kiln_module_def *def, const kiln_pool2d_params *p) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", op), NULL;
    bool ok = p && p->kernel[0] > 0 && p->kernel[1] > 0;
    for (int d = 0; ok && d < 2; d++)
        ok = p->stride[d] >= 1 && p->dilation[d] >= 1 && p->padding[d] >= 0 && 2 * p->padding[d] <= p->kernel[d];
    if (!ok) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: %s (kernel, stride, dilation >= 1; 0 <= padding <= kernel/2; start from "
                   "kiln_pool2d_defaults(kh, kw))",
                   op, p ? "bad parameters" : "params is NULL");
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, def);
    if (m) ((pool_cfg *)m->data)->p = *p;
    return m;
}

kiln_module *kiln_nn_maxpool2d(kiln_ctx *ctx, const kiln_pool2d_params *p) {
    return pool_new(ctx, "kiln_nn_maxpool2d", &maxpool_def, p);
}

kiln_module *kiln_nn_avgpool2d(kiln_ctx *ctx, const kiln_pool2d_params *p) {
    return pool_new(ctx, "kiln_nn_avgpool2d", &avgpool_def, p);
}

static kiln_tensor *gap_fwd(kiln_module *m, kiln_tensor *x) {
    if (!check_ndim(m, x, 4, 4, "4 ([N, C, H, W])")) return NULL;
    return kiln_global_avg_pool2d(m->ctx, x);
}
FORWARD1(gap_forward, gap_fwd)

static void gap_args(const kiln_module *m, char *buf, size_t cap) {
    (void)m;
    snprintf(buf, cap, "output_size=1");
}

/* no configuration: state_size 0 */
static const kiln_module_def gap_def = {
    .kind = "AdaptiveAvgPool2d", .forward = gap_forward, .num_inputs = 1, .num_outputs = 1, .describe = gap_args};

kiln_module *kiln_nn_global_avgpool2d(kiln_ctx *ctx) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_global_avgpool2d: ctx is NULL"), NULL;
    return kiln_module_new(ctx, &gap_def);
}

typedef struct flatten_cfg {
    int start_dim, end_dim;
} flatten_cfg;

static kiln_tensor *flatten_fwd(kiln_module *m, kiln_tensor *x) {
    const flatten_cfg *c = m->data;
    return kiln_flatten(m->ctx, x, c->start_dim, c->end_dim);
}
FORWARD1(flatten_forward, flatten_fwd)

static void flatten_args(const kiln_module *m, char *buf, size_t cap) {
    const flatten_cfg *c = m->data;
    snprintf(buf, cap, "start_dim=%d, end_dim=%d", c->start_dim, c->end_dim);
}

static const kiln_module_def flatten_def = LAYER_DEF("Flatten", flatten_cfg, flatten_forward, flatten_args);

kiln_module *kiln_nn_flatten(kiln_ctx *ctx, int start_dim, int end_dim) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_flatten: ctx is NULL"), NULL;
    kiln_module *m = kiln_module_new(ctx, &flatten_def);
    if (m) *(flatten_cfg *)m->data = (flatten_cfg){start_dim, end_dim};
    return m;
}

/* ---- activations ---------------------------------------------------------------------- */

typedef struct act_cfg {
    kiln_activation kind;
    float param; /* slope, alpha, beta or dim, by kind */
} act_cfg;

static const char *const act_kind[] = {"ReLU",    "LeakyReLU", "ELU",      "GELU",    "GELU",
                                       "Sigmoid", "Tanh",      "Softplus", "Softmax", "LogSoftmax"};

static kiln_tensor *act_fwd(kiln_module *m, kiln_tensor *x) {
    const act_cfg *a = m->data;
    kiln_ctx *c = m->ctx;
    float p = a->param;
    switch (a->kind) {
    case KILN_ACT_RELU: return kiln_relu(c, x);
    case KILN_ACT_LEAKY_RELU: return kiln_leaky_relu(c, x, p);
    case KILN_ACT_ELU: return kiln_elu(c, x, p);
    case KILN_ACT_GELU: return kiln_gelu(c, x, false);
    case KILN_ACT_GELU_TANH: return kiln_gelu(c, x, true);
    case KILN_ACT_SIGMOID: return kiln_sigmoid(c, x);
    case KILN_ACT_TANH: return kiln_tanh(c, x);
    case KILN_ACT_SOFTPLUS: return kiln_softplus(c, x, p, 20.0f);
    case KILN_ACT_SOFTMAX: return kiln_softmax(c, x, (int)p);
    case KILN_ACT_LOG_SOFTMAX: return kiln_log_softmax(c, x, (int)p);
    }
    return NULL;
}
FORWARD1(act_forward, act_fwd)

/* Whether next is a ReLU module: the one a fuse_next below folds into its op. */
static bool is_relu(const kiln_module *next) {
    return next->def.forward == act_forward && ((const act_cfg *)next->data)->kind == KILN_ACT_RELU;
}

/* A fused op's result y for m then ReLU: true (fuse_next's answer), with m's path added to
 * the error where y is NULL. */
static bool fused(kiln_module *m, kiln_tensor *y, kiln_tensor **out) {
    *out = y;
    if (!y) {
        char path[256];
        kiln__module_path(m, path, sizeof path);
        kiln__error_note(m->ctx, "in %s then ReLU%s%s", m->kind, *path ? " at " : "", path);
    }
    return true;
}

/* Linear then ReLU in a Sequential: one op (kiln__linear_relu: the ReLU in the GEMM's store
 * where kiln's own kernel runs the product), the same output and gradients as the two
 * modules'. An input the Linear would refuse is left to it (its error names the module). */
static bool linear_fuse_next(kiln_module *m, kiln_module *next, kiln_tensor *x, kiln_tensor **y) {
    const linear_cfg *c = m->data;
    if (!is_relu(next) || !c->bias || !x || x->ctx != m->ctx || x->ndim < 1 || x->shape[x->ndim - 1] != c->in_features)
        return false;
    return fused(m, kiln__linear_relu(m->ctx, m->kind, x, c->weight, c->bias), y);
}

/* Conv2d (with a bias) then ReLU in a Sequential: one op (kiln__conv2d_relu: the ReLU in
 * the store that adds the bias), the same output and gradients as the two modules'. An
 * input the Conv2d would refuse is left to it (its error names the module). */
static bool conv_fuse_next(kiln_module *m, kiln_module *next, kiln_tensor *x, kiln_tensor **y) {
    const conv_cfg *c = m->data;
    if (c->transposed || !is_relu(next) || !c->bias || !x || x->ctx != m->ctx || x->ndim != 4 ||
        x->shape[1] != c->in_channels)
        return false;
    return fused(m, kiln__conv2d_relu(m->ctx, m->kind, x, c->weight, c->bias, &c->p), y);
}

static void act_args(const kiln_module *m, char *buf, size_t cap) {
    const act_cfg *a = m->data;
    double p = a->param;
    switch (a->kind) {
    case KILN_ACT_LEAKY_RELU: snprintf(buf, cap, "negative_slope=%g", p); break;
    case KILN_ACT_ELU: snprintf(buf, cap, "alpha=%g", p); break;
    case KILN_ACT_GELU: snprintf(buf, cap, "approximate='none'"); break;
    case KILN_ACT_GELU_TANH: snprintf(buf, cap, "approximate='tanh'"); break;
    case KILN_ACT_SOFTPLUS: snprintf(buf, cap, "beta=%g, threshold=20", p); break;
    case KILN_ACT_SOFTMAX:
    case KILN_ACT_LOG_SOFTMAX: snprintf(buf, cap, "dim=%d", (int)p); break;
    default: buf[0] = '\0';
    }
}

kiln_module *kiln_nn_activation(kiln_ctx *ctx, kiln_activation kind, float param) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_nn_activation: ctx is NULL"), NULL;
    if ((int)kind < 0 || (int)kind > (int)KILN_ACT_LOG_SOFTMAX || !isfinite(param)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn_activation: unknown kind %d or non-finite parameter %g",
                   (int)kind, param);
        return NULL;
    }
    /* one definition, the kind name by activation (the definition is copied) */
    kiln_module_def def = LAYER_DEF(act_kind[kind], act_cfg, act_forward, act_args);
    kiln_module *m = kiln_module_new(ctx, &def);
    if (!m) return NULL;
    if (param == 0 && kind == KILN_ACT_LEAKY_RELU) param = 0.01f;
    if (param == 0 && (kind == KILN_ACT_ELU || kind == KILN_ACT_SOFTPLUS)) param = 1.0f;
    *(act_cfg *)m->data = (act_cfg){kind, param};
    return m;
}

/* ---- configuration, for the ONNX exporter ------------------------------------------------- */

bool kiln__layer_config_of(const kiln_module *m, kiln__layer_config *out) {
    memset(out, 0, sizeof *out);
    if (!m) return false;
    kiln_forward_fn f = m->def.forward;
    if (f == linear_forward) {
        const linear_cfg *c = m->data;
        out->in = c->in_features, out->out = c->out_features, out->bias = c->bias != NULL;
    } else if (f == conv_forward) {
        const conv_cfg *c = m->data;
        out->in = c->in_channels, out->out = c->out_channels, out->kh = c->kh, out->kw = c->kw;
        out->bias = c->bias != NULL, out->transposed = c->transposed, out->conv = c->p;
    } else if (f == bn_forward) {
        const bn_cfg *c = m->data;
        out->in = c->num_features, out->eps = c->eps, out->ndim = c->dims;
    } else if (f == ln_forward) {
        const ln_cfg *c = m->data;
        out->ndim = c->ndim, out->eps = c->eps, out->bias = c->weight != NULL;
    } else if (f == dropout_forward) {
        out->p = ((const dropout_cfg *)m->data)->p;
    } else if (f == maxpool_forward || f == avgpool_forward) {
        out->pool = ((const pool_cfg *)m->data)->p;
    } else if (f == flatten_forward) {
        const flatten_cfg *c = m->data;
        out->start_dim = c->start_dim, out->end_dim = c->end_dim;
    } else if (f == act_forward) {
        const act_cfg *a = m->data;
        out->act = a->kind, out->act_param = a->param;
    } else if (f != gap_forward && f != embedding_forward) {
        return false;
    }
    return true;
}
