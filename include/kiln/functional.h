/* kiln/functional.h - neural-network operations with forward and backward (as
 * torch.nn.functional): activations, shape ops, convolution, pooling, normalisation,
 * dropout, embedding, losses and the recurrent layers (RNN, LSTM, GRU). Every op here is
 * differentiable (except where noted), takes any views as inputs and follows PyTorch's
 * definitions and defaults. Index tensors (labels, gather indices) are KILN_I32. */
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
/* Rows of x along dim picked by a 1-D I32 index (torch.index_select). Indices outside
 * [0, size of dim) are a deferred error: checked on the device without a wait, the op
 * returns its output (bad indices read the nearest row meanwhile) and the next call that
 * waits for the device (kiln_to_host, kiln_tensor_item, kiln_sync; device.h) fails with
 * KILN_ERR_RANGE naming the op, the index and its position. */
KILN_API kiln_tensor *kiln_index_select(kiln_ctx *ctx, kiln_tensor *x, int dim, kiln_tensor *index);
/* out[..i..] = x[..index[..i..]..] along dim; index has x's ndim (torch.gather). Bad
 * indices: a deferred error, as kiln_index_select's. */
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
 * range are a deferred error, as kiln_index_select's (checked on the device without a wait;
 * a bad index's row reads as 0 meanwhile). With the weight's gradient wanted, the backward's
 * positions per row are sorted on the device too, except for very large index counts
 * ((num + 1) * n + n^2 / 2 > 2^26 comparisons), which read the indices back. */
KILN_API kiln_tensor *kiln_embedding(kiln_ctx *ctx, kiln_tensor *weight, kiln_tensor *indices);

/* ---- losses (src/ops/loss.c) ----------------------------------------------------------- */

typedef enum kiln_reduction { KILN_MEAN = 0, KILN_SUM = 1, KILN_NONE = 2 } kiln_reduction;

KILN_API kiln_tensor *kiln_mse_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r);
KILN_API kiln_tensor *kiln_l1_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r);
KILN_API kiln_tensor *kiln_smooth_l1_loss(kiln_ctx *ctx, kiln_tensor *input, kiln_tensor *target, kiln_reduction r,
                                          float beta);
/* Logits [N, C] (or [N, C, d1, ...]) against I32 class indices [N] ([N, d1, ...]).
 * Labels outside [0, C) other than ignore_index are a deferred error: the kernel checks
 * them on the device (no wait; a bad label's row counts as ignored meanwhile, nothing is
 * read out of bounds) and the next call that waits for the device (kiln_to_host,
 * kiln_tensor_item, kiln_sync; kiln_fit at the end of the epoch) fails with KILN_ERR_RANGE
 * naming the op, the label and its position. kiln_nll_loss and kiln_cross_entropy_ex
 * alike. */
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

/* ---- sampling for generation (src/ops/sample.c; not differentiable) ----------------- */

/* Draws one id per row of logits [B, V] (F32, any view; F16/BF16 from an f32 copy) from
 * softmax(logits / temperature), restricted with top_k > 0 to the top_k largest logits of
 * the row (ties with the k-th largest are kept, as torch's top-k filtering `logits < topk(...)[-1]` -> -inf); top_k 0
 * is off. Returns a new I32 tensor [B] of ids in [0, V), ready for kiln_embedding; a row
 * holding a NaN or +inf, or only -inf, gets -1. temperature finite and > 0 (as it nears 0
 * the draw becomes kiln_argmax's: weights exp((x - max) / T) of the others underflow to 0),
 * top_k in [0, V]. Each row uses one uniform number of the context's random stream
 * (kiln_manual_seed), so a seeded run draws the same ids on every device; nothing is read
 * back (torch: multinomial(softmax(logits / T), 1) after top-k filtering). */
KILN_API kiln_tensor *kiln_sample_logits(kiln_ctx *ctx, kiln_tensor *logits, float temperature, int top_k);

/* ---- recurrent layers (src/ops/rnn.c) ----------------------------------------------------- */

typedef enum kiln_rnn_mode {
    KILN_RNN_RNN_TANH = 0, /* h' = tanh(W_ih x + b_ih + W_hh h + b_hh) */
    KILN_RNN_RNN_RELU = 1, /* the same with relu */
    KILN_RNN_LSTM = 2,     /* gates i, f, g, o (torch's order and formulas) */
    KILN_RNN_GRU = 3,      /* gates r, z, n; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) */
} kiln_rnn_mode;
/* "RNN_TANH", "RNN_RELU", "LSTM", "GRU" (torch's mode names), or "?". */
KILN_API const char *kiln_rnn_mode_name(kiln_rnn_mode mode);

/* torch.nn.RNN/LSTM/GRU's constructor arguments past input_size and hidden_size. */
typedef struct kiln_rnn_params {
    int num_layers;     /* >= 1 */
    bool bias;          /* the layer modules register b_ih and b_hh (kiln_rnn reads the weights given) */
    bool batch_first;   /* input and output [batch, seq, features] instead of [seq, batch, features] */
    float dropout;      /* in [0, 1): dropout on each layer's output but the last, in training */
    bool bidirectional; /* a reverse direction per layer; outputs concatenated on the feature dim */
} kiln_rnn_params;
/* torch's defaults: 1 layer, bias, time-major, no dropout, one direction. */
KILN_API kiln_rnn_params kiln_rnn_defaults(void);

/*
 * The multi-layer recurrent network of torch.nn.RNN/LSTM/GRU, forward and backward
 * through time. x [T, B, I] ([B, T, I] with batch_first). h0 (and c0, LSTM only)
 * [num_layers * D, B, H] (D = 2 when bidirectional), NULL for zeros. weights: nweights =
 * 4 * num_layers * D tensors in torch's _flat_weights order, layer by layer, the forward
 * direction before the reverse one: weight_ih [G*H, I_l], weight_hh [G*H, H], bias_ih
 * [G*H], bias_hh [G*H] (G = 1, 4, 3 for RNN, LSTM, GRU; I_l = I for layer 0, D*H above;
 * the biases all NULL for a network without them). lengths: NULL, or B sequence lengths
 * in [1, T] (as pack_padded_sequence with enforce_sorted=False): the steps of sequence b
 * at t >= lengths[b] neither change its state nor produce output (zeros), and h_n/c_n hold
 * the state after each sequence's own last step. training turns the dropout on.
 * Returns the output [T, B, D*H] ([B, T, D*H] with batch_first), and writes h_n (and c_n
 * for LSTM; c_n must be NULL otherwise) [num_layers * D, B, H] where not NULL. All results
 * are the caller's (scope rules as any op's) and differentiable with respect to x, h0,
 * c0 and every weight. NULL with the context's error set (naming the mode, the layer and
 * the shapes) on a bad argument; *h_n and *c_n are then NULL.
 */
KILN_API kiln_tensor *kiln_rnn(kiln_ctx *ctx, kiln_rnn_mode mode, kiln_tensor *x, kiln_tensor *h0, kiln_tensor *c0,
                               int nweights, kiln_tensor *const *weights, const int32_t *lengths,
                               const kiln_rnn_params *params, bool training, kiln_tensor **h_n, kiln_tensor **c_n);

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
 * query [..., L, E], key [..., S, E], value [..., S, Ev] (F32, or F16/BF16 through f32
 * copies; leading batch/head dims broadcast together) -> a new [..., L, Ev] (the fused path lays it out in the query's
 * memory order, as torch's fused kernels: for heads permuted from [B, L, H, E] memory its
 * inverse permute is contiguous, so merging the heads is a view). attn_mask (optional)
 * broadcasts to [..., L, S]: U8 boolean (nonzero: the key takes part) or F32 added to the scores; it
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
