/* kiln/functional.h - neural-network operations with forward and backward (as
 * torch.nn.functional): activations, shape ops, convolution, pooling, normalisation,
 * dropout, embedding and losses. Every op here is differentiable (except where noted),
 * takes any views as inputs and follows PyTorch's definitions and defaults. Index tensors
 * (labels, gather indices) are KILN_I32. */
#ifndef KILN_FUNCTIONAL_H
#define KILN_FUNCTIONAL_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- activations (src/ops/activation.c) --------------------------------------------- */

KILN_API kiln_tensor *kiln_relu(kiln_ctx *ctx, kiln_tensor *x);
KILN_API kiln_tensor *kiln_leaky_relu(kiln_ctx *ctx, kiln_tensor *x, float negative_slope);
KILN_API kiln_tensor *kiln_elu(kiln_ctx *ctx, kiln_tensor *x, float alpha);
/* tanh_approx false: x·Φ(x) with erf (torch's default); true: the tanh approximation. */
KILN_API kiln_tensor *kiln_gelu(kiln_ctx *ctx, kiln_tensor *x, bool tanh_approx);
KILN_API kiln_tensor *kiln_sigmoid(kiln_ctx *ctx, kiln_tensor *x);
KILN_API kiln_tensor *kiln_tanh(kiln_ctx *ctx, kiln_tensor *x);
/* log(1 + exp(beta·x)) / beta, linear above threshold (torch defaults: 1, 20). */
KILN_API kiln_tensor *kiln_softplus(kiln_ctx *ctx, kiln_tensor *x, float beta, float threshold);
KILN_API kiln_tensor *kiln_softmax(kiln_ctx *ctx, kiln_tensor *x, int dim);
KILN_API kiln_tensor *kiln_log_softmax(kiln_ctx *ctx, kiln_tensor *x, int dim);

/* ---- shape (src/ops/shape.c; the view ops live in tensor.h and are differentiable) ---- */

KILN_API kiln_tensor *kiln_concat(kiln_ctx *ctx, int n, kiln_tensor *const *ts, int dim);
KILN_API kiln_tensor *kiln_stack(kiln_ctx *ctx, int n, kiln_tensor *const *ts, int dim);
/* Constant padding as torch.nn.functional.pad: pad holds npad/2 (before, after) pairs,
 * the first pair for the last dim. Negative amounts crop. */
KILN_API kiln_tensor *kiln_pad(kiln_ctx *ctx, kiln_tensor *x, int npad, const int64_t *pad, float value);
/* Merges dims start_dim..end_dim (inclusive; negative counts from the end). */
KILN_API kiln_tensor *kiln_flatten(kiln_ctx *ctx, kiln_tensor *x, int start_dim, int end_dim);
/* Rows of x along dim picked by a 1-D I32 index (torch.index_select). */
KILN_API kiln_tensor *kiln_index_select(kiln_ctx *ctx, kiln_tensor *x, int dim, kiln_tensor *index);
/* out[..i..] = x[..index[..i..]..] along dim; index has x's ndim (torch.gather). */
KILN_API kiln_tensor *kiln_gather(kiln_ctx *ctx, kiln_tensor *x, int dim, kiln_tensor *index);

/* ---- convolution and pooling (src/ops/conv.c, src/ops/pool.c) ------------------------ */

/* NCHW input, weight [Cout, Cin/groups, kH, kW] (conv2d) or [Cin, Cout/groups, kH, kW]
 * (conv_transpose2d), optional bias [Cout]. Fields are literal: stride, dilation and
 * groups >= 1 (a zeroed struct is an error, not the defaults). */
typedef struct kiln_conv2d_params {
    int stride[2], padding[2], dilation[2];
    int groups;
    int output_padding[2]; /* conv_transpose2d only */
} kiln_conv2d_params;
/* torch's defaults: stride 1, padding 0, dilation 1, groups 1, output_padding 0; what
 * NULL params mean. Start from it and change fields. */
KILN_API kiln_conv2d_params kiln_conv2d_defaults(void);
KILN_API kiln_tensor *kiln_conv2d(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                                  const kiln_conv2d_params *p);
KILN_API kiln_tensor *kiln_conv_transpose2d(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *weight, kiln_tensor *bias,
                                            const kiln_conv2d_params *p);

/* Fields are literal: kernel, stride and dilation >= 1 (stride 0 is an error, not "the
 * kernel"); padding as torch (at most half the kernel); ceil_mode rounds the output size
 * up; count_include_pad for avg_pool2d. params is required (the kernel has no default). */
typedef struct kiln_pool2d_params {
    int kernel[2], stride[2], padding[2], dilation[2];
    bool ceil_mode;
    bool count_include_pad;
} kiln_pool2d_params;
/* torch's defaults for a kh x kw window: stride = the kernel, padding 0, dilation 1,
 * ceil_mode false, count_include_pad true (AvgPool2d's). Start from it and change fields. */
KILN_API kiln_pool2d_params kiln_pool2d_defaults(int kh, int kw);
/* indices (optional out): a new I32 tensor of flat h*W+w positions per plane, as torch. */
KILN_API kiln_tensor *kiln_max_pool2d(kiln_ctx *ctx, kiln_tensor *x, const kiln_pool2d_params *p,
                                      kiln_tensor **indices);
KILN_API kiln_tensor *kiln_avg_pool2d(kiln_ctx *ctx, kiln_tensor *x, const kiln_pool2d_params *p);
/* [N, C, H, W] -> [N, C, 1, 1] mean over H and W (adaptive_avg_pool2d(x, 1)). */
KILN_API kiln_tensor *kiln_global_avg_pool2d(kiln_ctx *ctx, kiln_tensor *x);
typedef enum kiln_upsample_mode { KILN_UPSAMPLE_NEAREST = 0, KILN_UPSAMPLE_BILINEAR = 1 } kiln_upsample_mode;
/* 4-D [N, C, H, W] input to out_h x out_w (torch.nn.functional.interpolate;
 * align_corners for bilinear only). */
KILN_API kiln_tensor *kiln_upsample(kiln_ctx *ctx, kiln_tensor *x, int out_h, int out_w, kiln_upsample_mode mode,
                                    bool align_corners);

/* ---- normalisation, dropout, embedding (src/ops/norm.c) ------------------------------ */

/* x [N, C] or [N, C, ...]. training: normalises with the batch statistics and, when
 * running_mean/var are given, updates them in place (momentum; unbiased variance) as
 * torch; eval: uses the running statistics. weight/bias [C] optional. */
KILN_API kiln_tensor *kiln_batch_norm(kiln_ctx *ctx, kiln_tensor *x, kiln_tensor *running_mean,
                                      kiln_tensor *running_var, kiln_tensor *weight, kiln_tensor *bias, bool training,
                                      float momentum, float eps);
/* Normalises over the last `nnorm` dims; weight/bias of those dims' shape, optional. */
KILN_API kiln_tensor *kiln_layer_norm(kiln_ctx *ctx, kiln_tensor *x, int nnorm, kiln_tensor *weight, kiln_tensor *bias,
                                      float eps);
/* Zeroes each element with probability p and scales the rest by 1/(1-p) when training
 * (the mask comes from the context's RNG: kiln_manual_seed makes it reproducible). With
 * training false or p == 0 it returns x itself as a view (no copy). */
KILN_API kiln_tensor *kiln_dropout(kiln_ctx *ctx, kiln_tensor *x, float p, bool training);
/* Rows of weight [num, dim] picked by I32 indices of any shape: [..., dim]. Indices out of
 * range are an error (checked on the host: this op reads the indices back). */
KILN_API kiln_tensor *kiln_embedding(kiln_ctx *ctx, kiln_tensor *weight, kiln_tensor *indices);

/* ---- losses (src/ops/loss.c) ----------------------------------------------------------- */

typedef enum kiln_reduction { KILN_MEAN = 0, KILN_SUM = 1, KILN_NONE = 2 } kiln_reduction;

KILN_API kiln_tensor *kiln_mse_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r);
KILN_API kiln_tensor *kiln_l1_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r);
KILN_API kiln_tensor *kiln_smooth_l1_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r,
                                          float beta);
/* Logits [N, C] (or [N, C, d1, ...]) against I32 class indices [N] ([N, d1, ...]).
 * Labels outside [0, C) other than ignore_index are an error naming the label and its
 * position (the labels are read back to check them). */
KILN_API kiln_tensor *kiln_cross_entropy(kiln_ctx *ctx, kiln_tensor *logits, kiln_tensor *target, kiln_reduction r);
/* weight [C] optional (class weights; mean divides by the summed weights of the targets as
 * torch); ignore_index (torch default -100); label_smoothing in [0, 1]. */
KILN_API kiln_tensor *kiln_cross_entropy_ex(kiln_ctx *ctx, kiln_tensor *logits, kiln_tensor *target,
                                            kiln_tensor *weight, int ignore_index, float label_smoothing,
                                            kiln_reduction r);
/* Log-probabilities [N, C] (...) against I32 class indices. */
KILN_API kiln_tensor *kiln_nll_loss(kiln_ctx *ctx, kiln_tensor *logp, kiln_tensor *target, kiln_tensor *weight,
                                    int ignore_index, kiln_reduction r);
/* Probabilities in [0, 1] against targets in [0, 1]; logs clamped at -100 as torch. */
KILN_API kiln_tensor *kiln_bce_loss(kiln_ctx *ctx, kiln_tensor *p, kiln_tensor *target, kiln_tensor *weight,
                                    kiln_reduction r);
/* Numerically stable sigmoid + BCE; pos_weight [C] optional (broadcast on the last dim). */
KILN_API kiln_tensor *kiln_bce_with_logits(kiln_ctx *ctx, kiln_tensor *logits, kiln_tensor *target, kiln_tensor *weight,
                                           kiln_tensor *pos_weight, kiln_reduction r);
/* Least-squares GAN (Mao et al. 2017): 0.5 * mean((pred - target_value)^2). The
 * discriminator's loss is lsgan(D(real), 1) + lsgan(D(fake), 0), the generator's
 * lsgan(D(fake), 1). */
KILN_API kiln_tensor *kiln_lsgan_loss(kiln_ctx *ctx, kiln_tensor *pred, float target_value, kiln_reduction r);
/* Sum over the tensors of sum(|p|) (L1) or sum(p^2) (L2), a differentiable scalar to add
 * to a loss with a coefficient. */
KILN_API kiln_tensor *kiln_l1_penalty(kiln_ctx *ctx, int n, kiln_tensor *const *params);
KILN_API kiln_tensor *kiln_l2_penalty(kiln_ctx *ctx, int n, kiln_tensor *const *params);

/* ---- attention (src/ops/attention.c) ----------------------------------------------------- */

/* How kiln_scaled_dot_product_attention computes: FUSED, tiled kernels with an online
 * softmax whose device memory grows linearly in L and S (the L x S weights never exist);
 * COMPOSED, matmul + softmax + dropout + matmul through kiln's ops (memory grows as L·S;
 * the reference the tests compare against). */
typedef enum kiln_sdpa_impl { KILN_SDPA_FUSED = 0, KILN_SDPA_COMPOSED = 1 } kiln_sdpa_impl;
/* Fields are literal. dropout_p in [0, 1]: applied whenever > 0, as torch's dropout_p
 * (pass 0 when not training); the mask comes from the context's RNG (kiln_manual_seed).
 * is_causal: query i attends to keys j <= i (top-left aligned, as torch), not together
 * with a mask. scale: the factor of q·k, NAN for 1/sqrt(E) (torch's scale=None). */
typedef struct kiln_sdpa_opts {
    float dropout_p;
    bool is_causal;
    float scale;
    kiln_sdpa_impl impl;
} kiln_sdpa_opts;
/* torch's defaults: dropout_p 0, is_causal false, scale NAN (1/sqrt(E)); impl FUSED.
 * What NULL opts mean. */
KILN_API kiln_sdpa_opts kiln_sdpa_defaults(void);
/* torch.nn.functional.scaled_dot_product_attention: softmax(scale q k^T + mask) v with
 * query [..., L, E], key [..., S, E], value [..., S, Ev] (F32; leading batch/head dims
 * broadcast together) -> a new [..., L, Ev]. attn_mask (optional) broadcasts to
 * [..., L, S]: U8 boolean (nonzero: the key takes part) or F32 added to the scores; it
 * gets no gradient. A query row that no key may attend to gives 0 (and zero gradients)
 * on the fused path, as torch's math backend since 2.5; the composed path gives NaN there
 * (torch before 2.5). Gradients flow to query, key and value. Head dims too large for the
 * device's local memory take the composed path. */
KILN_API kiln_tensor *kiln_scaled_dot_product_attention(kiln_ctx *ctx, kiln_tensor *query, kiln_tensor *key,
                                                        kiln_tensor *value, kiln_tensor *attn_mask,
                                                        const kiln_sdpa_opts *opts);

#ifdef __cplusplus
}
#endif
#endif
