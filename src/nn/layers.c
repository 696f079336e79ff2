/* src/nn/layers.c - the layers of nn.h: constructors with PyTorch's default
 * initialisation, forwards that check their input's shape against the layer (so the error
 * names the layer, not just the op underneath), and torch-style descriptions. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "nn_internal.h"

#define PY_BOOL(b) ((b) ? "True" : "False")

/* U(-bound, bound) of `shape`, registered under `name`. */
static bool add_uniform(kiln_module *m, const char *name, double bound, int ndim, const int64_t *shape) {
    return kiln__module_add(m, name, kiln_rand_uniform(m->ctx, (float)-bound, (float)bound, ndim, shape), false);
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

static kiln_tensor *linear_forward(kiln_module *m, kiln_tensor *x) {
    if (!check_ndim(m, x, 1, KILN_MAX_DIMS, ">= 1") || !check_dim(m, x, x->ndim - 1, m->i[0], "input features"))
        return NULL;
    kiln_tensor *y = kiln_matmul_ex(m->ctx, x, kiln__module_tensor(m, "weight"), KILN_TRANS_B);
    kiln_tensor *b = kiln__module_tensor(m, "bias");
    return b ? kiln_add(m->ctx, y, b) : y;
}

static void linear_args(const kiln_module *m, char *buf, size_t cap) {
    snprintf(buf, cap, "in_features=%" PRId64 ", out_features=%" PRId64 ", bias=%s", m->i[0], m->i[1],
             PY_BOOL(m->i[2]));
}

kiln_module *kiln_nn_linear(kiln_ctx *ctx, int64_t in_features, int64_t out_features, bool bias) {
    if (!ctx) return NULL;
    if (in_features <= 0 || out_features <= 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn_linear: in_features=%" PRId64 ", out_features=%" PRId64
                   " (both must be > 0)", in_features, out_features);
        return NULL;
    }
    kiln_module *m = kiln__module_new(ctx, "Linear", linear_forward, linear_args);
    if (!m) return NULL;
    m->i[0] = in_features, m->i[1] = out_features, m->i[2] = bias;
    /* kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias the same */
    double bound = 1.0 / sqrt((double)in_features);
    if (!add_uniform(m, "weight", bound, 2, (int64_t[]){out_features, in_features})) return fail_free(m);
    if (bias && !add_uniform(m, "bias", bound, 1, (int64_t[]){out_features})) return fail_free(m);
    return m;
}

/* ---- convolution ---------------------------------------------------------------------- */

static bool conv_params(kiln_ctx *ctx, const char *op, const kiln_conv2d_params *p, kiln_conv2d_params *out,
                        int64_t cin, int64_t cout, int kh, int kw, bool transposed) {
    *out = p ? *p : (kiln_conv2d_params){{1, 1}, {0, 0}, {1, 1}, 1, {0, 0}};
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
                   "%s: in_channels=%" PRId64 " out_channels=%" PRId64 " kernel=(%d, %d) stride=(%d, %d) padding=(%d, %d) "
                   "dilation=(%d, %d) groups=%d output_padding=(%d, %d): channels and kernel must be > 0, groups must "
                   "divide both channel counts, stride and dilation >= 1, padding >= 0",
                   op, cin, cout, kh, kw, out->stride[0], out->stride[1], out->padding[0], out->padding[1],
                   out->dilation[0], out->dilation[1], out->groups, out->output_padding[0], out->output_padding[1]);
    return ok;
}

static kiln_tensor *conv_forward(kiln_module *m, kiln_tensor *x) {
    if (!check_ndim(m, x, 4, 4, "4 ([N, C, H, W])") || !check_dim(m, x, 1, m->i[0], "channels")) return NULL;
    kiln_tensor *w = kiln__module_tensor(m, "weight"), *b = kiln__module_tensor(m, "bias");
    return m->i[4] ? kiln_conv_transpose2d(m->ctx, x, w, b, &m->conv) : kiln_conv2d(m->ctx, x, w, b, &m->conv);
}

static void conv_args(const kiln_module *m, char *buf, size_t cap) {
    const kiln_conv2d_params *p = &m->conv;
    size_t used = (size_t)snprintf(buf, cap, "%" PRId64 ", %" PRId64 ", kernel_size=(%d, %d), stride=(%d, %d)", m->i[0],
                                   m->i[1], (int)m->i[2], (int)m->i[3], p->stride[0], p->stride[1]);
#define MORE(...) \
    if (used < cap) used += (size_t)snprintf(buf + used, cap - used, __VA_ARGS__)
    if (p->padding[0] || p->padding[1]) MORE(", padding=(%d, %d)", p->padding[0], p->padding[1]);
    if (p->output_padding[0] || p->output_padding[1])
        MORE(", output_padding=(%d, %d)", p->output_padding[0], p->output_padding[1]);
    if (p->dilation[0] != 1 || p->dilation[1] != 1) MORE(", dilation=(%d, %d)", p->dilation[0], p->dilation[1]);
    if (p->groups != 1) MORE(", groups=%d", p->groups);
    if (!m->i[5]) MORE(", bias=False");
#undef MORE
}

static kiln_module *conv_new(kiln_ctx *ctx, const char *op, const char *kind, int64_t cin, int64_t cout, int kh, int kw,
                             const kiln_conv2d_params *p, bool bias, bool transposed) {
    if (!ctx) return NULL;
    kiln_conv2d_params cp;
    if (!conv_params(ctx, op, p, &cp, cin, cout, kh, kw, transposed)) return NULL;
    kiln_module *m = kiln__module_new(ctx, kind, conv_forward, conv_args);
    if (!m) return NULL;
    m->i[0] = cin, m->i[1] = cout, m->i[2] = kh, m->i[3] = kw, m->i[4] = transposed, m->i[5] = bias;
    m->conv = cp;
    /* torch computes fan_in from weight.size(1) * kh * kw: in/groups for conv2d,
     * out/groups for conv_transpose2d (whose weight is [in, out/groups, kh, kw]) */
    int64_t wshape[4] = {transposed ? cin : cout, (transposed ? cout : cin) / cp.groups, kh, kw};
    double bound = 1.0 / sqrt((double)(wshape[1] * kh * kw));
    if (!add_uniform(m, "weight", bound, 4, wshape)) return fail_free(m);
    if (bias && !add_uniform(m, "bias", bound, 1, (int64_t[]){cout})) return fail_free(m);
    return m;
}

kiln_module *kiln_nn_conv2d(kiln_ctx *ctx, int64_t in_channels, int64_t out_channels, int kh, int kw,
                            const kiln_conv2d_params *p, bool bias) {
    return conv_new(ctx, "kiln_nn_conv2d", "Conv2d", in_channels, out_channels, kh, kw, p, bias, false);
}

kiln_module *kiln_nn_conv_transpose2d(kiln_ctx *ctx, int64_t in_channels, int64_t out_channels, int kh, int kw,
                                      const kiln_conv2d_params *p, bool bias) {
    return conv_new(ctx, "kiln_nn_conv_transpose2d", "ConvTranspose2d", in_channels, out_channels, kh, kw, p, bias,
                    true);
}

/* ---- batch norm ----------------------------------------------------------------------- */

static kiln_tensor *bn_forward(kiln_module *m, kiln_tensor *x) {
    bool two_d = m->i[1] == 2;
    if (!check_ndim(m, x, two_d ? 4 : 2, two_d ? 4 : 3, two_d ? "4 ([N, C, H, W])" : "2 or 3 ([N, C] or [N, C, L])") ||
        !check_dim(m, x, 1, m->i[0], "channels"))
        return NULL;
    kiln_tensor *y = kiln_batch_norm(m->ctx, x, kiln__module_tensor(m, "running_mean"),
                                     kiln__module_tensor(m, "running_var"), kiln__module_tensor(m, "weight"),
                                     kiln__module_tensor(m, "bias"), m->training, (float)m->f[1], (float)m->f[0]);
    if (y && m->training) {
        /* num_batches_tracked += 1 (a fill, no read back, except once after a load) */
        kiln_tensor *nbt = kiln__module_tensor(m, "num_batches_tracked");
        if (m->batches_tracked < 0) {
            int32_t v = 0;
            if (kiln_to_host(nbt, &v, sizeof v) != KILN_OK) return NULL;
            m->batches_tracked = v;
        }
        if (kiln_fill(nbt, (float)(m->batches_tracked + 1)) != KILN_OK) return NULL;
        m->batches_tracked++;
    }
    return y;
}

static void bn_args(const kiln_module *m, char *buf, size_t cap) {
    snprintf(buf, cap, "%" PRId64 ", eps=%g, momentum=%g, affine=True, track_running_stats=True", m->i[0], m->f[0],
             m->f[1]);
}

static kiln_module *bn_new(kiln_ctx *ctx, const char *op, const char *kind, int64_t c, float eps, float momentum,
                           int dims) {
    if (!ctx) return NULL;
    if (c <= 0 || !(eps >= 0) || !(momentum >= 0 && momentum <= 1)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: num_features=%" PRId64 " eps=%g momentum=%g (features > 0, eps >= 0, momentum in [0, 1])", op,
                   c, eps, momentum);
        return NULL;
    }
    kiln_module *m = kiln__module_new(ctx, kind, bn_forward, bn_args);
    if (!m) return NULL;
    m->i[0] = c, m->i[1] = dims;
    m->f[0] = eps, m->f[1] = momentum;
    int64_t shape[1] = {c};
    kiln_tensor *nbt = kiln_empty(ctx, KILN_I32, 0, NULL);
    if (nbt && kiln_fill(nbt, 0.0f) != KILN_OK) {
        kiln_tensor_free(nbt);
        nbt = NULL;
    }
    if (!kiln__module_add(m, "weight", kiln_ones(ctx, 1, shape), false) ||
        !kiln__module_add(m, "bias", kiln_zeros(ctx, 1, shape), false) ||
        !kiln__module_add(m, "running_mean", kiln_zeros(ctx, 1, shape), true) ||
        !kiln__module_add(m, "running_var", kiln_ones(ctx, 1, shape), true) ||
        !kiln__module_add(m, "num_batches_tracked", nbt, true))
        return fail_free(m);
    return m;
}

kiln_module *kiln_nn_batchnorm1d(kiln_ctx *ctx, int64_t num_features, float eps, float momentum) {
    return bn_new(ctx, "kiln_nn_batchnorm1d", "BatchNorm1d", num_features, eps, momentum, 1);
}

kiln_module *kiln_nn_batchnorm2d(kiln_ctx *ctx, int64_t num_features, float eps, float momentum) {
    return bn_new(ctx, "kiln_nn_batchnorm2d", "BatchNorm2d", num_features, eps, momentum, 2);
}

/* ---- layer norm ----------------------------------------------------------------------- */

static kiln_tensor *ln_forward(kiln_module *m, kiln_tensor *x) {
    int nd = (int)m->i[0];
    if (!check_ndim(m, x, nd, KILN_MAX_DIMS, "at least the normalised dims")) return NULL;
    for (int d = 0; d < nd; d++)
        if (!check_dim(m, x, x->ndim - nd + d, m->i[1 + d], "elements in a normalised dim")) return NULL;
    return kiln_layer_norm(m->ctx, x, nd, kiln__module_tensor(m, "weight"), kiln__module_tensor(m, "bias"),
                           (float)m->f[0]);
}

static void ln_args(const kiln_module *m, char *buf, size_t cap) {
    size_t used = (size_t)snprintf(buf, cap, "(");
    for (int d = 0; d < m->i[0] && used < cap; d++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%" PRId64, d ? ", " : "", m->i[1 + d]);
    if (used < cap)
        snprintf(buf + used, cap - used, "%s), eps=%g, elementwise_affine=%s", m->i[0] == 1 ? "," : "", m->f[0],
                 PY_BOOL(m->i[7]));
}

kiln_module *kiln_nn_layernorm(kiln_ctx *ctx, int ndim, const int64_t *shape, float eps, bool affine) {
    if (!ctx) return NULL;
    bool ok = ndim >= 1 && ndim <= 6 && shape && eps >= 0;
    for (int d = 0; ok && d < ndim; d++) ok = shape[d] > 0;
    if (!ok) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_layernorm: ndim=%d (1 to 6 trailing dims, each > 0), eps=%g (>= 0)", ndim, eps);
        return NULL;
    }
    kiln_module *m = kiln__module_new(ctx, "LayerNorm", ln_forward, ln_args);
    if (!m) return NULL;
    m->i[0] = ndim, m->i[7] = affine;
    for (int d = 0; d < ndim; d++) m->i[1 + d] = shape[d];
    m->f[0] = eps;
    if (affine && (!kiln__module_add(m, "weight", kiln_ones(ctx, ndim, shape), false) ||
                   !kiln__module_add(m, "bias", kiln_zeros(ctx, ndim, shape), false)))
        return fail_free(m);
    return m;
}

/* ---- dropout, embedding --------------------------------------------------------------- */

static kiln_tensor *dropout_forward(kiln_module *m, kiln_tensor *x) {
    return kiln_dropout(m->ctx, x, (float)m->f[0], m->training);
}

static void dropout_args(const kiln_module *m, char *buf, size_t cap) { snprintf(buf, cap, "p=%g, inplace=False", m->f[0]); }

kiln_module *kiln_nn_dropout(kiln_ctx *ctx, float p) {
    if (!ctx) return NULL;
    if (!(p >= 0 && p <= 1)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn_dropout: p=%g (must be in [0, 1])", p);
        return NULL;
    }
    kiln_module *m = kiln__module_new(ctx, "Dropout", dropout_forward, dropout_args);
    if (m) m->f[0] = p;
    return m;
}

static kiln_tensor *embedding_forward(kiln_module *m, kiln_tensor *x) {
    return kiln_embedding(m->ctx, kiln__module_tensor(m, "weight"), x);
}

static void embedding_args(const kiln_module *m, char *buf, size_t cap) {
    snprintf(buf, cap, "%" PRId64 ", %" PRId64, m->i[0], m->i[1]);
}

kiln_module *kiln_nn_embedding(kiln_ctx *ctx, int64_t num_embeddings, int64_t dim) {
    if (!ctx) return NULL;
    if (num_embeddings <= 0 || dim <= 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_nn_embedding: num_embeddings=%" PRId64 ", embedding_dim=%" PRId64 " (both must be > 0)",
                   num_embeddings, dim);
        return NULL;
    }
    kiln_module *m = kiln__module_new(ctx, "Embedding", embedding_forward, embedding_args);
    if (!m) return NULL;
    m->i[0] = num_embeddings, m->i[1] = dim;
    if (!kiln__module_add(m, "weight", kiln_rand_normal(ctx, 0.0f, 1.0f, 2, (int64_t[]){num_embeddings, dim}), false))
        return fail_free(m);
    return m;
}

/* ---- pooling, flatten ----------------------------------------------------------------- */

static kiln_tensor *maxpool_forward(kiln_module *m, kiln_tensor *x) {
    if (!check_ndim(m, x, 4, 4, "4 ([N, C, H, W])")) return NULL;
    return kiln_max_pool2d(m->ctx, x, &m->pool, NULL);
}

static kiln_tensor *avgpool_forward(kiln_module *m, kiln_tensor *x) {
    if (!check_ndim(m, x, 4, 4, "4 ([N, C, H, W])")) return NULL;
    return kiln_avg_pool2d(m->ctx, x, &m->pool);
}

static void pool_args(const kiln_module *m, char *buf, size_t cap) {
    const kiln_pool2d_params *p = &m->pool;
    int sh = p->stride[0], sw = p->stride[1];
    if (m->forward == maxpool_forward)
        snprintf(buf, cap, "kernel_size=(%d, %d), stride=(%d, %d), padding=(%d, %d), dilation=(%d, %d), ceil_mode=%s",
                 p->kernel[0], p->kernel[1], sh, sw, p->padding[0], p->padding[1], p->dilation[0], p->dilation[1],
                 PY_BOOL(p->ceil_mode));
    else
        snprintf(buf, cap, "kernel_size=(%d, %d), stride=(%d, %d), padding=(%d, %d), ceil_mode=%s, "
                 "count_include_pad=%s", p->kernel[0], p->kernel[1], sh, sw, p->padding[0], p->padding[1],
                 PY_BOOL(p->ceil_mode), PY_BOOL(p->count_include_pad));
}

static kiln_module *pool_new(kiln_ctx *ctx, const char *op, const char *kind,
                             kiln_tensor *(*fwd)(kiln_module *, kiln_tensor *), const kiln_pool2d_params *p) {
    if (!ctx) return NULL;
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
    kiln_module *m = kiln__module_new(ctx, kind, fwd, pool_args);
    if (m) m->pool = *p;
    return m;
}

kiln_module *kiln_nn_maxpool2d(kiln_ctx *ctx, const kiln_pool2d_params *p) {
    return pool_new(ctx, "kiln_nn_maxpool2d", "MaxPool2d", maxpool_forward, p);
}

kiln_module *kiln_nn_avgpool2d(kiln_ctx *ctx, const kiln_pool2d_params *p) {
    return pool_new(ctx, "kiln_nn_avgpool2d", "AvgPool2d", avgpool_forward, p);
}

static kiln_tensor *gap_forward(kiln_module *m, kiln_tensor *x) {
    if (!check_ndim(m, x, 4, 4, "4 ([N, C, H, W])")) return NULL;
    return kiln_global_avg_pool2d(m->ctx, x);
}

static void gap_args(const kiln_module *m, char *buf, size_t cap) {
    (void)m;
    snprintf(buf, cap, "output_size=1");
}

kiln_module *kiln_nn_global_avgpool2d(kiln_ctx *ctx) {
    return ctx ? kiln__module_new(ctx, "AdaptiveAvgPool2d", gap_forward, gap_args) : NULL;
}

static kiln_tensor *flatten_forward(kiln_module *m, kiln_tensor *x) {
    return kiln_flatten(m->ctx, x, (int)m->i[0], (int)m->i[1]);
}

static void flatten_args(const kiln_module *m, char *buf, size_t cap) {
    snprintf(buf, cap, "start_dim=%d, end_dim=%d", (int)m->i[0], (int)m->i[1]);
}

kiln_module *kiln_nn_flatten(kiln_ctx *ctx, int start_dim, int end_dim) {
    if (!ctx) return NULL;
    kiln_module *m = kiln__module_new(ctx, "Flatten", flatten_forward, flatten_args);
    if (m) m->i[0] = start_dim, m->i[1] = end_dim;
    return m;
}

/* ---- activations ---------------------------------------------------------------------- */

static const char *const act_kind[] = {"ReLU", "LeakyReLU", "ELU",  "GELU",    "GELU",
                                       "Sigmoid", "Tanh",    "Softplus", "Softmax", "LogSoftmax"};

static kiln_tensor *act_forward(kiln_module *m, kiln_tensor *x) {
    kiln_ctx *c = m->ctx;
    float p = (float)m->f[0];
    switch ((kiln_activation)m->i[0]) {
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

static void act_args(const kiln_module *m, char *buf, size_t cap) {
    switch ((kiln_activation)m->i[0]) {
    case KILN_ACT_LEAKY_RELU: snprintf(buf, cap, "negative_slope=%g", m->f[0]); break;
    case KILN_ACT_ELU: snprintf(buf, cap, "alpha=%g", m->f[0]); break;
    case KILN_ACT_GELU: snprintf(buf, cap, "approximate='none'"); break;
    case KILN_ACT_GELU_TANH: snprintf(buf, cap, "approximate='tanh'"); break;
    case KILN_ACT_SOFTPLUS: snprintf(buf, cap, "beta=%g, threshold=20", m->f[0]); break;
    case KILN_ACT_SOFTMAX:
    case KILN_ACT_LOG_SOFTMAX: snprintf(buf, cap, "dim=%d", (int)m->f[0]); break;
    default: buf[0] = '\0';
    }
}

kiln_module *kiln_nn_activation(kiln_ctx *ctx, kiln_activation kind, float param) {
    if (!ctx) return NULL;
    if ((int)kind < 0 || (int)kind > (int)KILN_ACT_LOG_SOFTMAX || !isfinite(param)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "kiln_nn_activation: unknown kind %d or non-finite parameter %g",
                   (int)kind, param);
        return NULL;
    }
    kiln_module *m = kiln__module_new(ctx, act_kind[kind], act_forward, act_args);
    if (!m) return NULL;
    if (param == 0 && kind == KILN_ACT_LEAKY_RELU) param = 0.01f;
    if (param == 0 && (kind == KILN_ACT_ELU || kind == KILN_ACT_SOFTPLUS)) param = 1.0f;
    m->i[0] = kind;
    m->f[0] = param;
    return m;
}
