/* kiln/nn.h - modules: layers holding named parameters and buffers, composed with
 * sequential, as torch.nn.
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
 * ones and zeros for normalisation; N(0, 1) for embeddings), drawn from the context's RNG:
 * kiln_manual_seed before building a model makes it reproducible. Parameters and buffers
 * live outside every scope and belong to their module.
 *
 * Names are PyTorch's state_dict keys: "weight", "bias", "running_mean", children by their
 * index in a sequential ("0.weight", "features.3.bias" when a sequential is named with
 * kiln_module_set_name). A module's errors name it: an op that fails inside a module gets
 * " [in Linear(784, 128) at 0]" appended to its message.
 */
#ifndef KILN_NN_H
#define KILN_NN_H

#include "functional.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_module kiln_module;

/* ---- layers (constructors return NULL with the context's error set on bad arguments) -- */

/* y = x W^T + b; W [out, in], b [out]. */
KILN_API kiln_module *kiln_nn_linear(kiln_ctx *ctx, int64_t in_features, int64_t out_features, bool bias);
/* weight [out, in/groups, kh, kw]; NULL params: stride 1, padding 0, dilation 1, groups 1. */
KILN_API kiln_module *kiln_nn_conv2d(kiln_ctx *ctx, int64_t in_channels, int64_t out_channels, int kh, int kw,
                                     const kiln_conv2d_params *p, bool bias);
/* weight [in, out/groups, kh, kw]. */
KILN_API kiln_module *kiln_nn_conv_transpose2d(kiln_ctx *ctx, int64_t in_channels, int64_t out_channels, int kh,
                                               int kw, const kiln_conv2d_params *p, bool bias);
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
    KILN_ACT_LEAKY_RELU,  /* param: negative slope (torch default 0.01) */
    KILN_ACT_ELU,         /* param: alpha (1.0) */
    KILN_ACT_GELU,        /* erf form */
    KILN_ACT_GELU_TANH,   /* tanh approximation */
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
/* Names child `index` of a sequential (default: its index), as a torch attribute name:
 * a container of named children gives "features.0.weight". */
KILN_API kiln_status kiln_module_set_child_name(kiln_module *seq, int index, const char *name);

/* ---- use ------------------------------------------------------------------------------ */

KILN_API kiln_tensor *kiln_forward(kiln_module *m, kiln_tensor *x);
/* train (true) or eval (false), for m and every child: dropout and batch norm switch. */
KILN_API void kiln_module_train(kiln_module *m, bool training);
KILN_API bool kiln_module_is_training(const kiln_module *m);
KILN_API void kiln_module_free(kiln_module *m);
KILN_API kiln_ctx *kiln_module_ctx(const kiln_module *m);
/* "Linear(in_features=784, out_features=128, bias=True)" style, nested for sequential. */
KILN_API char *kiln_module_describe(const kiln_module *m, char *buf, size_t cap);
KILN_API int kiln_module_num_children(const kiln_module *m);
KILN_API kiln_module *kiln_module_child(const kiln_module *m, int index);

/* ---- parameters and buffers ------------------------------------------------------------ */

typedef struct kiln_named_tensor {
    char name[128];     /* dotted state_dict key */
    kiln_tensor *tensor;
    bool is_buffer;     /* running statistics; not trained */
} kiln_named_tensor;

/* Writes up to cap parameters (trainable, in registration order) and returns how many
 * exist (call with cap 0 to count). */
KILN_API int kiln_module_parameters(kiln_module *m, kiln_tensor **out, int cap);
/* Parameters and buffers with their names, in state_dict order; returns how many exist. */
KILN_API int kiln_module_state(kiln_module *m, kiln_named_tensor *out, int cap);
/* The parameter or buffer of that dotted name, or NULL. */
KILN_API kiln_tensor *kiln_module_find(kiln_module *m, const char *name);
/* Total number of trainable elements. */
KILN_API int64_t kiln_module_num_elements(kiln_module *m);
/* Turns requires_grad of every parameter of m off (freeze) or on. */
KILN_API void kiln_module_requires_grad(kiln_module *m, bool requires_grad);

#ifdef __cplusplus
}
#endif
#endif
