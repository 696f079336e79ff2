/* tests/small_cnn.h - a small CNN (conv, batch norm, relu, max pool, dropout, linear,
 * cross-entropy, Adam) and its training step on deterministic synthetic data, shared by
 * test_determinism, test_threads and test_faults. Uses only the public API. */
#ifndef KILN_TEST_SMALL_CNN_H
#define KILN_TEST_SMALL_CNN_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <kiln/kiln.h>

#define CNN_N 8 /* batch */
#define CNN_H 8 /* 1 x 8 x 8 images */
#define CNN_CLASSES 3
#define CNN_MAX_STATE 32

typedef struct cnn {
    kiln_ctx *ctx;
    kiln_module *net;
    kiln_optim *opt;
    kiln_tensor *params[CNN_MAX_STATE];
    int nparams;
} cnn;

/* Builds the model with weights drawn after kiln_manual_seed(seed). false with the
 * context's error set when something fails. */
static inline bool cnn_build(cnn *m, kiln_ctx *ctx, uint64_t seed) {
    memset(m, 0, sizeof *m);
    m->ctx = ctx;
    kiln_manual_seed(ctx, seed);
    kiln_conv2d_params cp = {.stride = {1, 1}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    kiln_pool2d_params pp = {.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}};
    m->net = kiln_nn_sequential(
        ctx, 7,
        (kiln_module *[]){kiln_nn_conv2d(ctx, 1, 4, 3, 3, &cp, true), kiln_nn_batchnorm2d(ctx, 4, 1e-5f, 0.1f),
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_maxpool2d(ctx, &pp),
                          kiln_nn_dropout(ctx, 0.25f), kiln_nn_flatten(ctx, 1, -1),
                          kiln_nn_linear(ctx, 4 * (CNN_H / 2) * (CNN_H / 2), CNN_CLASSES, true)});
    if (!m->net) return false;
    m->nparams = kiln_module_parameters(m->net, m->params, CNN_MAX_STATE);
    if (m->nparams <= 0 || m->nparams > CNN_MAX_STATE) return false;
    kiln_adam_opts ao = kiln_adam_defaults();
    ao.lr = 1e-2;
    m->opt = kiln_adam(ctx, m->params, m->nparams, &ao);
    return m->opt != NULL;
}

static inline void cnn_free(cnn *m) {
    kiln_optim_free(m->opt);
    kiln_module_free(m->net);
    memset(m, 0, sizeof *m);
}

/* The batch of step `step`: a fixed function of the step number (xorshift). */
static inline void cnn_batch(int step, float *x, int32_t *y) {
    uint64_t s = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(step + 1) * 0xD1B54A32D192ED03ULL;
    for (int i = 0; i < CNN_N * CNN_H * CNN_H; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((s >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
    }
    for (int i = 0; i < CNN_N; i++) {
        /* a learnable label: the sign pattern of the image's mean over two halves */
        float a = 0, b = 0;
        for (int k = 0; k < CNN_H * CNN_H / 2; k++) a += x[i * CNN_H * CNN_H + k];
        for (int k = CNN_H * CNN_H / 2; k < CNN_H * CNN_H; k++) b += x[i * CNN_H * CNN_H + k];
        y[i] = a > 0 ? (b > 0 ? 2 : 1) : 0;
    }
}

/* One training step in a scope. *loss gets the step's loss (NaN on failure). Returns the
 * context's status: KILN_OK, or the error the step ran into (left set in the context). */
static inline kiln_status cnn_step(cnn *m, int step, float *loss) {
    kiln_ctx *ctx = m->ctx;
    float x[CNN_N * CNN_H * CNN_H];
    int32_t y[CNN_N];
    cnn_batch(step, x, y);
    *loss = NAN;
    kiln_scope_begin(ctx);
    kiln_tensor *xt = kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){CNN_N, 1, CNN_H, CNN_H});
    kiln_tensor *yt = kiln_from_host(ctx, y, KILN_I32, 1, (int64_t[]){CNN_N});
    kiln_tensor *l = kiln_cross_entropy(ctx, kiln_forward(m->net, xt), yt, KILN_MEAN);
    if (l) {
        if (kiln_optim_zero_grad(m->opt) == KILN_OK && kiln_backward(l) == KILN_OK &&
            kiln_optim_step(m->opt) == KILN_OK)
            *loss = kiln_tensor_item(l);
    }
    kiln_scope_end(ctx);
    return kiln_error_status(ctx);
}

/* Every parameter and buffer (state_dict order) read back into out as raw 32-bit words
 * (floats and the I32 batch counter alike). Returns the number of words, -1 on error. */
static inline int64_t cnn_state(cnn *m, uint32_t *out, int64_t cap) {
    kiln_named_tensor st[CNN_MAX_STATE];
    int n = kiln_module_state(m->net, st, CNN_MAX_STATE);
    int64_t used = 0;
    for (int i = 0; i < n && i < CNN_MAX_STATE; i++) {
        int64_t k = kiln_tensor_numel(st[i].tensor);
        if (used + k > cap) return -1;
        if (kiln_to_host(st[i].tensor, out + used, (size_t)k * 4) != KILN_OK) return -1;
        used += k;
    }
    return used;
}

#endif
