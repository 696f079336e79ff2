/* kiln/nn.h - the built-in modules: layers holding named parameters and buffers, and the
 * containers (sequential, module list, module dict), as torch.nn. They are made with the
 * public module API of kiln/module.h, with which users write their own modules too.
 *
 *     kiln_module *net = kiln_nn_sequential(ctx, 3, (kiln_module *[]){
 *         kiln_nn_linear(ctx, 784, 128, true),
 *         kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
 *         kiln_nn_linear(ctx, 128, 10, true)});
 *     kiln_tensor *logits = kiln_forward(net, x);
 *     kiln_tensor *params[64];
 *     int n = kiln_module_parameters(net, params, 64);   // 0.weight, 0.bias, 2.weight, 2.bias
 *     ...
 *     kiln_module_free(net);                              // frees the parameters too
 *
 * Parameters are created with PyTorch's default initialisation (Kaiming-uniform weights
 * with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the same bound for biases;
 * ones and zeros for normalisation; N(0, 1) for embeddings; U(-1/sqrt(hidden),
 * 1/sqrt(hidden)) for every tensor of the recurrent layers), drawn from the context's RNG:
 * kiln_manual_seed before building a model makes it reproducible. Parameters and buffers
 * live outside every scope and belong to their module.
 *
 * Names are PyTorch's state_dict keys: "weight", "bias", "running_mean", children by their
 * index in a sequential ("0.weight", "features.3.bias" when a sequential is named with
 * kiln_module_set_child_name). A module's errors name it: an op that fails inside a module gets
 * " [in Linear(784, 128) at 0]" appended to its message.
 */
#ifndef KILN_NN_H
#define KILN_NN_H

#include "functional.h"
#include "module.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- layers (constructors return NULL with the context's error set on bad arguments) -- */

/* y = x W^T + b; W [out, in], b [out]. */
KILN_API kiln_module *kiln_nn_linear(kiln_ctx *ctx, int64_t in_features, int64_t out_features, bool bias);
/* weight [out, in/groups, kh, kw]; NULL params: stride 1, padding 0, dilation 1, groups 1. */
KILN_API kiln_module *kiln_nn_conv2d(kiln_ctx *ctx, int64_t in_channels, int64_t out_channels, int kh, int kw,
                                     const kiln_conv2d_params *p, bool bias);
/* weight [in, out/groups, kh, kw]. */
KILN_API kiln_module *kiln_nn_conv_transpose2d(kiln_ctx *ctx, int64_t in_channels, int64_t out_channels, int kh, int kw,
                                               const kiln_conv2d_params *p, bool bias);
/* Affine, tracking running statistics (torch defaults: eps 1e-5, momentum 0.1). 1d takes
 * [N, C] or [N, C, L]; 2d takes [N, C, H, W]. Buffers: running_mean, running_var,
 * num_batches_tracked (I32). */
KILN_API kiln_module *kiln_nn_batchnorm1d(kiln_ctx *ctx, int64_t num_features, float eps, float momentum);
KILN_API kiln_module *kiln_nn_batchnorm2d(kiln_ctx *ctx, int64_t num_features, float eps, float momentum);
/* Normalises over the trailing dims `shape` (ndim of them); affine adds weight and bias. */
KILN_API kiln_module *kiln_nn_layernorm(kiln_ctx *ctx, int ndim, const int64_t *shape, float eps, bool affine);
KILN_API kiln_module *kiln_nn_dropout(kiln_ctx *ctx, float p);
/* weight [num_embeddings, dim]; input I32 indices. */
KILN_API kiln_module *kiln_nn_embedding(kiln_ctx *ctx, int64_t num_embeddings, int64_t dim);
KILN_API kiln_module *kiln_nn_maxpool2d(kiln_ctx *ctx, const kiln_pool2d_params *p);
KILN_API kiln_module *kiln_nn_avgpool2d(kiln_ctx *ctx, const kiln_pool2d_params *p);
KILN_API kiln_module *kiln_nn_global_avgpool2d(kiln_ctx *ctx);
/* torch.nn.Flatten(start_dim=1, end_dim=-1) */
KILN_API kiln_module *kiln_nn_flatten(kiln_ctx *ctx, int start_dim, int end_dim);

typedef enum kiln_activation {
    KILN_ACT_RELU,
    KILN_ACT_LEAKY_RELU, /* param: negative slope (torch default 0.01) */
    KILN_ACT_ELU,        /* param: alpha (1.0) */
    KILN_ACT_GELU,       /* erf form */
    KILN_ACT_GELU_TANH,  /* tanh approximation */
    KILN_ACT_SIGMOID,
    KILN_ACT_TANH,
    KILN_ACT_SOFTPLUS,    /* param: beta (1.0); threshold 20 */
    KILN_ACT_SOFTMAX,     /* param: dim */
    KILN_ACT_LOG_SOFTMAX, /* param: dim */
} kiln_activation;
/* param 0 selects torch's default for LEAKY_RELU (0.01), ELU and SOFTPLUS (1.0). */
KILN_API kiln_module *kiln_nn_activation(kiln_ctx *ctx, kiln_activation kind, float param);

/* Runs the modules in order. Takes ownership of them, also when it fails (a NULL module
 * in the list makes it fail and free the others: constructors can be nested directly). */
KILN_API kiln_module *kiln_nn_sequential(kiln_ctx *ctx, int n, kiln_module *const *modules);
/* Appends m (owned from now on, also on failure). Its name is its index. */
KILN_API kiln_status kiln_nn_sequential_append(kiln_module *seq, kiln_module *m);
/* Replaces child `index` of a sequential with m (owned; the old child is freed): a new
 * head for transfer learning. */
KILN_API kiln_status kiln_nn_sequential_set(kiln_module *seq, int index, kiln_module *m);
/* torch.nn.ModuleList: children named "0", "1", ... in order, for a module that runs them
 * itself. Takes ownership of the modules as kiln_nn_sequential. Like torch's, it has no
 * forward: kiln_forward on it fails with KILN_ERR_UNSUPPORTED. */
KILN_API kiln_module *kiln_nn_module_list(kiln_ctx *ctx, int n, kiln_module *const *modules);
/* Appends m (owned from now on, also on failure) as child "<count>". */
KILN_API kiln_status kiln_nn_module_list_append(kiln_module *list, kiln_module *m);
/* torch.nn.ModuleDict: children named by key, in insertion order; no forward either. */
KILN_API kiln_module *kiln_nn_module_dict(kiln_ctx *ctx);
/* d[key] = m: a new key is appended, an existing one's module is replaced (the old one
 * freed). m is owned from now on, also on failure; keys are names as in kiln/module.h.
 * kiln_module_find_child(d, key) looks one up. */
KILN_API kiln_status kiln_nn_module_dict_set(kiln_module *dict, const char *key, kiln_module *m);

/* ---- recurrent layers (src/nn/rnn.c) ------------------------------------------------------
 * torch.nn.RNN/LSTM/GRU over kiln_rnn (functional.h): parameters weight_ih_l{k}[_reverse],
 * weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k} in torch's order, initialised U(-1/sqrt(H),
 * 1/sqrt(H)) as torch; p NULL means kiln_rnn_defaults(). kiln_module_forward takes x [, h0
 * [, c0]] and gives output, h_n (, c_n for LSTM), with the shapes of kiln_rnn; dropout
 * follows the module's train/eval mode. */
KILN_API kiln_module *kiln_nn_lstm(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, const kiln_rnn_params *p);
KILN_API kiln_module *kiln_nn_gru(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, const kiln_rnn_params *p);
/* nonlinearity: KILN_ACT_TANH (torch's default) or KILN_ACT_RELU. */
KILN_API kiln_module *kiln_nn_rnn(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, kiln_activation nonlinearity,
                                  const kiln_rnn_params *p);
/* The forward of an RNN/LSTM/GRU module with every argument: h0, c0 (LSTM only) and
 * lengths (B sequence lengths, as kiln_rnn's) may be NULL; h_n and c_n (ignored for
 * RNN/GRU) may be NULL when not wanted. Writes *out (required) and returns KILN_OK, or an
 * error naming the layer with every result NULL. */
KILN_API kiln_status kiln_nn_rnn_forward(kiln_module *m, kiln_tensor *x, kiln_tensor *h0, kiln_tensor *c0,
                                         const int32_t *lengths, kiln_tensor **out, kiln_tensor **h_n,
                                         kiln_tensor **c_n);
/* torch.nn.LSTMCell/GRUCell/RNNCell: one step. Parameters weight_ih, weight_hh, bias_ih,
 * bias_hh. kiln_module_forward takes x [B, I] [, h [B, H] [, c [B, H]]] (absent: zeros) and
 * gives h' (and c' for LSTMCell); GRUCell and RNNCell also work with kiln_forward(m, x). */
KILN_API kiln_module *kiln_nn_lstm_cell(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, bool bias);
KILN_API kiln_module *kiln_nn_gru_cell(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, bool bias);
KILN_API kiln_module *kiln_nn_rnn_cell(kiln_ctx *ctx, int64_t input_size, int64_t hidden_size, bool bias,
                                       kiln_activation nonlinearity);

/* ---- attention and Transformers (src/nn/transformer.c) ------------------------------------
 * torch.nn.MultiheadAttention and the Transformer layers over kiln_scaled_dot_product_attention,
 * with torch's parameter names and initialisation (xavier-uniform in_proj_weight, zero
 * in_proj_bias and out_proj.bias, Linear's default elsewhere). Inputs are 3-D, [seq, batch,
 * features], or [batch, seq, features] with batch_first (unbatched 2-D input is not taken).
 * Masks follow torch: attn_mask [L, S] or [batch * num_heads, L, S], key_padding_mask
 * [batch, S], each U8 boolean (nonzero: that key is NOT attended to) or F32 added to the
 * scores; a boolean mask is read back to the host once to become additive (pass F32 masks,
 * or is_causal, to avoid that wait). A query row with every key masked gives 0 on the
 * fused path (torch 1.13's module gives NaN). */

/* The masks of one attention call (all optional). is_causal is kiln's addition (torch 2's
 * is_causal): the causal mask without building it, which the fused kernel skips tiles of. */
typedef struct kiln_attn_masks {
    kiln_tensor *attn_mask;
    kiln_tensor *key_padding_mask;
    bool is_causal;
} kiln_attn_masks;
KILN_API kiln_attn_masks kiln_attn_masks_none(void);

/* MultiheadAttention's constructor arguments past embed_dim and num_heads. kdim/vdim 0
 * mean embed_dim; when either differs, separate q_proj_weight, k_proj_weight and
 * v_proj_weight replace in_proj_weight (as torch). impl: the sdpa path. */
typedef struct kiln_mha_params {
    bool bias, batch_first;
    int64_t kdim, vdim;
    float dropout; /* on the attention weights, in training */
    kiln_sdpa_impl impl;
} kiln_mha_params;
/* torch's defaults: bias, time-major, kdim = vdim = embed_dim, dropout 0; impl FUSED. */
KILN_API kiln_mha_params kiln_mha_defaults(void);
/* Parameters in_proj_weight [3E, E] (or q/k/v_proj_weight), in_proj_bias [3E],
 * out_proj.weight, out_proj.bias. embed_dim must be divisible by num_heads. p NULL: the
 * defaults. kiln_module_forward takes query, key, value and gives the output, unmasked. */
KILN_API kiln_module *kiln_nn_multihead_attention(kiln_ctx *ctx, int64_t embed_dim, int64_t num_heads,
                                                  const kiln_mha_params *p);
/* The forward with masks (NULL: none). need_weights also writes *weights: the attention
 * weights averaged over the heads, [batch, L, S] (computed only then, by the composed
 * path, before dropout, as torch). */
KILN_API kiln_status kiln_nn_mha_forward(kiln_module *m, kiln_tensor *query, kiln_tensor *key, kiln_tensor *value,
                                         const kiln_attn_masks *masks, bool need_weights, kiln_tensor **out,
                                         kiln_tensor **weights);

typedef struct kiln_transformer_params {
    int64_t d_model, nhead, dim_feedforward;
    float dropout;
    kiln_activation activation; /* KILN_ACT_RELU or KILN_ACT_GELU (erf) */
    float layer_norm_eps;
    bool batch_first, norm_first;
    kiln_sdpa_impl impl;
} kiln_transformer_params;
/* torch's defaults: dim_feedforward 2048, dropout 0.1, relu, eps 1e-5, time-major, post-norm. */
KILN_API kiln_transformer_params kiln_transformer_defaults(int64_t d_model, int64_t nhead);
/* torch.nn.TransformerEncoderLayer: children self_attn, linear1, linear2, norm1, norm2.
 * kiln_forward(m, src) runs it unmasked. */
KILN_API kiln_module *kiln_nn_transformer_encoder_layer(kiln_ctx *ctx, const kiln_transformer_params *p);
/* torch.nn.TransformerDecoderLayer: self_attn, multihead_attn, linear1, linear2, norm1..3.
 * kiln_module_forward takes tgt, memory. */
KILN_API kiln_module *kiln_nn_transformer_decoder_layer(kiln_ctx *ctx, const kiln_transformer_params *p);
/* torch.nn.TransformerEncoder/Decoder of num_layers layers ("layers.0.self_attn...") and,
 * with final_norm, a LayerNorm "norm". Unlike torch's deep copies, each layer is
 * initialised on its own draw. */
KILN_API kiln_module *kiln_nn_transformer_encoder(kiln_ctx *ctx, const kiln_transformer_params *p, int num_layers,
                                                  bool final_norm);
KILN_API kiln_module *kiln_nn_transformer_decoder(kiln_ctx *ctx, const kiln_transformer_params *p, int num_layers,
                                                  bool final_norm);
/* The forwards with masks (NULL: none), of a layer or a stack (the masks go to every layer). */
KILN_API kiln_tensor *kiln_nn_encoder_forward(kiln_module *m, kiln_tensor *src, const kiln_attn_masks *src_masks);
KILN_API kiln_tensor *kiln_nn_decoder_forward(kiln_module *m, kiln_tensor *tgt, kiln_tensor *memory,
                                              const kiln_attn_masks *tgt_masks, const kiln_attn_masks *memory_masks);

/* x + table[:T] for x [T, B, dim] ([B, T, dim] batch_first): a learned table (parameter
 * "weight" [max_len, dim], N(0, 1) as nn.Embedding: the same as adding embedding(arange(T)))
 * or the sinusoidal one of Vaswani et al. (buffer "pe"; dim even). A sequence longer than
 * max_len is an error naming the module and the shapes. */
KILN_API kiln_module *kiln_nn_positional_embedding(kiln_ctx *ctx, int64_t max_len, int64_t dim, bool batch_first);
KILN_API kiln_module *kiln_nn_sinusoidal_encoding(kiln_ctx *ctx, int64_t max_len, int64_t dim, bool batch_first);
/* Weight tying: y = x embedding.weight^T (+ bias) [..., V] with the embedding's own weight
 * tensor, so its gradient gets both uses. It holds no weight of its own (its state has only
 * "bias" when bias is set): the embedding must outlive it (make both children of one model). */
KILN_API kiln_module *kiln_nn_tied_linear(kiln_ctx *ctx, kiln_module *embedding, bool bias);

#ifdef __cplusplus
}
#endif
#endif
