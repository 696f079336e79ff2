/* src/nn/models.c - the residual networks of kiln/models.h: torchvision's BasicBlock and
 * Bottleneck as modules of the public module API (kiln/module.h), torchvision's ResNet-18/34/50
 * and He et al.'s CIFAR ResNets built from them, with torchvision's child names (so state_dict
 * keys are torchvision's) and its initialisation. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kiln/models.h"
#include "nn_internal.h"

#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f

/* ---- blocks ----------------------------------------------------------------------------- */

typedef struct block {
    int64_t in_ch, width, out_ch; /* BasicBlock: width == out_ch */
    int stride;
    bool bottleneck;
    kiln_module *conv1, *bn1, *conv2, *bn2, *conv3, *bn3, *relu;
    kiln_module *downsample; /* NULL: the input is added as it is */
} block;

/* relu(bn(x) + residual) (residual NULL: relu(bn(x))): one op for the built-in batch norm
 * (kiln__bn_relu_forward: one pass over the data each way instead of three, the same
 * numbers), else the modules bn and relu one by one. NULL in, NULL out. */
static kiln_tensor *bn_relu(kiln_module *bn, kiln_module *relu, kiln_tensor *x, kiln_tensor *residual) {
    bool fused;
    kiln_tensor *y = kiln__bn_relu_forward(bn, x, residual, &fused);
    if (fused) return y;
    y = kiln_forward(bn, x);
    if (residual) y = y ? kiln_add(bn->ctx, y, residual) : NULL;
    return kiln_forward(relu, y);
}

/* x [N, in_ch, H, W] -> [N, out_ch, H', W'] */
static kiln_status block_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    const block *b = m->data;
    kiln_tensor *x = in[0];
    /* a NULL anywhere (a failed op or layer) goes through to the end with its error kept */
    kiln_tensor *h = bn_relu(b->bn1, b->relu, kiln_forward(b->conv1, x), NULL);
    h = kiln_forward(b->conv2, h);
    if (b->bottleneck) h = kiln_forward(b->conv3, bn_relu(b->bn2, b->relu, h, NULL));
    kiln_module *last = b->bottleneck ? b->bn3 : b->bn2;
    kiln_tensor *identity = h ? (b->downsample ? kiln_forward(b->downsample, x) : x) : NULL;
    out[0] = h && identity ? bn_relu(last, b->relu, h, identity) : NULL;
    return out[0] ? KILN_OK : kiln_error_status(m->ctx);
}

static void block_args(const kiln_module *m, char *buf, size_t cap) {
    const block *b = m->data;
    if (b->bottleneck)
        snprintf(buf, cap, "%" PRId64 ", width=%" PRId64 ", out=%" PRId64 ", stride=%d", b->in_ch, b->width, b->out_ch,
                 b->stride);
    else
        snprintf(buf, cap, "%" PRId64 ", %" PRId64 ", stride=%d", b->in_ch, b->out_ch, b->stride);
}

static const kiln_module_def basic_def = {.kind = "BasicBlock",
                                          .state_size = sizeof(block),
                                          .forward = block_forward,
                                          .num_inputs = 1,
                                          .num_outputs = 1,
                                          .describe = block_args};
static const kiln_module_def bottleneck_def = {.kind = "Bottleneck",
                                               .state_size = sizeof(block),
                                               .forward = block_forward,
                                               .num_inputs = 1,
                                               .num_outputs = 1,
                                               .describe = block_args};

/* Registers child under name (m owns it from now on, also on failure) and keeps it in *slot. */
static bool add(kiln_module *m, const char *name, kiln_module **slot, kiln_module *child) {
    if (kiln_module_add_child(m, name, child) != KILN_OK) return false;
    if (slot) *slot = child;
    return true;
}

/* A bias-free k x k convolution of stride s and padding k / 2, as torchvision's conv3x3/conv1x1. */
static kiln_module *conv(kiln_ctx *ctx, int64_t cin, int64_t cout, int k, int s) {
    kiln_conv2d_params p = kiln_conv2d_defaults();
    p.stride[0] = p.stride[1] = s;
    p.padding[0] = p.padding[1] = k / 2;
    return kiln_nn_conv2d(ctx, cin, cout, k, k, &p, false);
}

static kiln_module *bn(kiln_ctx *ctx, int64_t c) { return kiln_nn_batchnorm2d(ctx, c, BN_EPS, BN_MOMENTUM); }

static kiln_module *block_new(kiln_ctx *ctx, const char *fn, bool bottleneck, int64_t in_ch, int64_t width,
                              int stride) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", fn), NULL;
    int64_t out_ch = bottleneck ? 4 * width : width;
    if (in_ch <= 0 || width <= 0 || width > INT64_MAX / 4 || stride < 1) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: in_ch=%" PRId64 ", %s=%" PRId64 ", stride=%d (all must be > 0)",
                   fn, in_ch, bottleneck ? "width" : "out_ch", width, stride);
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, bottleneck ? &bottleneck_def : &basic_def);
    if (!m) return NULL;
    block *b = m->data;
    *b = (block){.in_ch = in_ch, .width = width, .out_ch = out_ch, .stride = stride, .bottleneck = bottleneck};
    bool ok;
    if (bottleneck) /* torchvision's v1.5: the stride on the 3x3 convolution */
        ok = add(m, "conv1", &b->conv1, conv(ctx, in_ch, width, 1, 1)) && add(m, "bn1", &b->bn1, bn(ctx, width)) &&
             add(m, "conv2", &b->conv2, conv(ctx, width, width, 3, stride)) && add(m, "bn2", &b->bn2, bn(ctx, width)) &&
             add(m, "conv3", &b->conv3, conv(ctx, width, out_ch, 1, 1)) && add(m, "bn3", &b->bn3, bn(ctx, out_ch)) &&
             add(m, "relu", &b->relu, kiln_nn_activation(ctx, KILN_ACT_RELU, 0));
    else
        ok = add(m, "conv1", &b->conv1, conv(ctx, in_ch, out_ch, 3, stride)) &&
             add(m, "bn1", &b->bn1, bn(ctx, out_ch)) &&
             add(m, "relu", &b->relu, kiln_nn_activation(ctx, KILN_ACT_RELU, 0)) &&
             add(m, "conv2", &b->conv2, conv(ctx, out_ch, out_ch, 3, 1)) && add(m, "bn2", &b->bn2, bn(ctx, out_ch));
    if (ok && (stride != 1 || in_ch != out_ch))
        ok = add(m, "downsample", &b->downsample,
                 kiln_nn_sequential(ctx, 2, (kiln_module *[]){conv(ctx, in_ch, out_ch, 1, stride), bn(ctx, out_ch)}));
    if (!ok) {
        kiln_module_free(m); /* the children added so far go with it */
        return NULL;
    }
    return m;
}

kiln_module *kiln_nn_basic_block(kiln_ctx *ctx, int64_t in_ch, int64_t out_ch, int stride) {
    return block_new(ctx, "kiln_nn_basic_block", false, in_ch, out_ch, stride);
}

kiln_module *kiln_nn_bottleneck(kiln_ctx *ctx, int64_t in_ch, int64_t width, int stride) {
    return block_new(ctx, "kiln_nn_bottleneck", true, in_ch, width, stride);
}

/* ---- the networks ------------------------------------------------------------------------- */

typedef struct resnet {
    int depth;
    bool cifar;
    kiln_resnet_opts o;
    kiln_module *conv1, *bn1, *relu, *maxpool, *layers[4], *avgpool, *fc;
    int nlayers;
} resnet;

static kiln_status resnet_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    const resnet *r = m->data;
    kiln_tensor *h = bn_relu(r->bn1, r->relu, kiln_forward(r->conv1, in[0]), NULL);
    if (r->maxpool) h = kiln_forward(r->maxpool, h);
    for (int k = 0; k < r->nlayers; k++) h = kiln_forward(r->layers[k], h);
    h = kiln_forward(r->avgpool, h);
    out[0] = h ? kiln_forward(r->fc, kiln_flatten(m->ctx, h, 1, -1)) : NULL;
    return out[0] ? KILN_OK : kiln_error_status(m->ctx);
}

static void resnet_args(const kiln_module *m, char *buf, size_t cap) {
    const resnet *r = m->data;
    snprintf(buf, cap, "depth=%d, in_channels=%" PRId64 ", num_classes=%" PRId64 "%s%s", r->depth, r->o.in_channels,
             r->o.num_classes, !r->cifar && r->o.small_stem ? ", small_stem=True" : "",
             r->o.zero_init_residual ? ", zero_init_residual=True" : "");
}

static const kiln_module_def resnet_def = {.kind = "ResNet",
                                           .state_size = sizeof(resnet),
                                           .forward = resnet_forward,
                                           .num_inputs = 1,
                                           .num_outputs = 1,
                                           .describe = resnet_args};

bool kiln__is_resnet_part(const kiln_module *m) {
    return m && (m->def.forward == block_forward || m->def.forward == resnet_forward);
}

kiln_resnet_opts kiln_resnet_defaults(void) {
    return (kiln_resnet_opts){.in_channels = 3, .num_classes = 1000, .small_stem = false, .zero_init_residual = false};
}

kiln_resnet_opts kiln_resnet_cifar_defaults(void) {
    kiln_resnet_opts o = kiln_resnet_defaults();
    o.num_classes = 10;
    return o;
}

/* torchvision's ResNet._init_weights over m's subtree: every Conv2d weight from
 * N(0, 2 / fan_out) (kaiming_normal_, mode fan_out, relu gain); batch norm already has
 * weight 1 and bias 0, Linear keeps its default. */
static kiln_status kaiming_convs(kiln_module *m) {
    kiln_ctx *ctx = m->ctx;
    if (strcmp(m->kind, "Conv2d") == 0) {
        kiln_tensor *w = kiln_module_find(m, "weight");
        const int64_t *s = w->shape; /* [out, in / groups, kh, kw] */
        double std = sqrt(2.0 / (double)(s[0] * s[2] * s[3]));
        kiln_scope_begin(ctx);
        kiln_status st = kiln_copy(w, kiln_rand_normal(ctx, 0.0f, (float)std, w->ndim, w->shape));
        kiln_scope_end(ctx);
        if (st != KILN_OK) return st;
    }
    for (int k = 0; k < m->nchildren; k++) {
        kiln_status st = kaiming_convs(m->children[k].m);
        if (st != KILN_OK) return st;
    }
    return KILN_OK;
}

/* zero_init_residual: the last batch norm weight of every block of the stage. */
static kiln_status zero_last_bn(kiln_module *stage) {
    for (int k = 0; k < stage->nchildren; k++) {
        const block *b = stage->children[k].m->data;
        kiln_status s = kiln_fill(kiln_module_find(b->bottleneck ? b->bn3 : b->bn2, "weight"), 0.0f);
        if (s != KILN_OK) return s;
    }
    return KILN_OK;
}

/* A stage of `n` blocks (the first with `stride`) from *in_ch channels; *in_ch becomes its
 * output channels. */
static kiln_module *stage_new(kiln_ctx *ctx, bool bottleneck, int n, int64_t *in_ch, int64_t width, int stride) {
    kiln_module *seq = kiln_nn_sequential(ctx, 0, NULL);
    for (int k = 0; seq && k < n; k++) {
        if (kiln_nn_sequential_append(seq, block_new(ctx, bottleneck ? "kiln_nn_bottleneck" : "kiln_nn_basic_block",
                                                     bottleneck, *in_ch, width, k == 0 ? stride : 1)) != KILN_OK) {
            kiln_module_free(seq);
            return NULL;
        }
        *in_ch = bottleneck ? 4 * width : width;
    }
    return seq;
}

/* The ResNet of `depth` with nstages stages of blocks[] blocks of widths[] (torchvision
 * family: 4 stages from a 64-channel stem; CIFAR: 3 from 16). */
static kiln_module *resnet_new(kiln_ctx *ctx, const char *fn, int depth, bool cifar, bool bottleneck, int nstages,
                               const int *blocks, const int64_t *widths, const kiln_resnet_opts *opts) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "%s: ctx is NULL", fn), NULL;
    kiln_resnet_opts o = opts ? *opts : cifar ? kiln_resnet_cifar_defaults() : kiln_resnet_defaults();
    if (o.in_channels <= 0 || o.num_classes <= 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: in_channels=%" PRId64 ", num_classes=%" PRId64 " (both must be > 0)", fn, o.in_channels,
                   o.num_classes);
        return NULL;
    }
    kiln_module *m = kiln_module_new(ctx, &resnet_def);
    if (!m) return NULL;
    resnet *r = m->data;
    r->depth = depth, r->cifar = cifar, r->o = o, r->nlayers = nstages;
    bool small = cifar || o.small_stem;
    int64_t ch = widths[0];
    kiln_module *stem;
    if (small)
        stem = conv(ctx, o.in_channels, ch, 3, 1);
    else {
        kiln_conv2d_params p = kiln_conv2d_defaults();
        p.stride[0] = p.stride[1] = 2;
        p.padding[0] = p.padding[1] = 3;
        stem = kiln_nn_conv2d(ctx, o.in_channels, ch, 7, 7, &p, false);
    }
    bool ok = add(m, "conv1", &r->conv1, stem) && add(m, "bn1", &r->bn1, bn(ctx, ch)) &&
              add(m, "relu", &r->relu, kiln_nn_activation(ctx, KILN_ACT_RELU, 0));
    if (ok && !small) {
        kiln_pool2d_params p = kiln_pool2d_defaults(3, 3);
        p.stride[0] = p.stride[1] = 2;
        p.padding[0] = p.padding[1] = 1;
        ok = add(m, "maxpool", &r->maxpool, kiln_nn_maxpool2d(ctx, &p));
    }
    for (int k = 0; ok && k < nstages; k++) {
        char name[16];
        snprintf(name, sizeof name, "layer%d", k + 1);
        ok = add(m, name, &r->layers[k], stage_new(ctx, bottleneck, blocks[k], &ch, widths[k], k == 0 ? 1 : 2));
    }
    ok = ok && add(m, "avgpool", &r->avgpool, kiln_nn_global_avgpool2d(ctx)) &&
         add(m, "fc", &r->fc, kiln_nn_linear(ctx, ch, o.num_classes, true)) && kaiming_convs(m) == KILN_OK;
    for (int k = 0; ok && o.zero_init_residual && k < nstages; k++) ok = zero_last_bn(r->layers[k]) == KILN_OK;
    if (!ok) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

static const int64_t tv_widths[4] = {64, 128, 256, 512};

kiln_module *kiln_resnet18(kiln_ctx *ctx, const kiln_resnet_opts *o) {
    return resnet_new(ctx, "kiln_resnet18", 18, false, false, 4, (const int[]){2, 2, 2, 2}, tv_widths, o);
}

kiln_module *kiln_resnet34(kiln_ctx *ctx, const kiln_resnet_opts *o) {
    return resnet_new(ctx, "kiln_resnet34", 34, false, false, 4, (const int[]){3, 4, 6, 3}, tv_widths, o);
}

kiln_module *kiln_resnet50(kiln_ctx *ctx, const kiln_resnet_opts *o) {
    return resnet_new(ctx, "kiln_resnet50", 50, false, true, 4, (const int[]){3, 4, 6, 3}, tv_widths, o);
}

kiln_module *kiln_resnet_cifar(kiln_ctx *ctx, int depth, const kiln_resnet_opts *o) {
    if (!ctx) return kiln__fail(NULL, KILN_ERR_NULL, "kiln_resnet_cifar: ctx is NULL"), NULL;
    /* n blocks per stage, 2 layers each, plus conv1 and fc; n is kept small enough for an int */
    if (depth < 8 || depth > 60002 || (depth - 2) % 6 != 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "kiln_resnet_cifar: depth %d is not 6n + 2 for n >= 1 (20, 32, 44, 56, 110, ...)", depth);
        return NULL;
    }
    int n = (depth - 2) / 6;
    return resnet_new(ctx, "kiln_resnet_cifar", depth, true, false, 3, (const int[]){n, n, n},
                      (const int64_t[]){16, 32, 64}, o);
}
