/* src/nn/nn_internal.h - the module structure behind kiln/module.h, shared by
 * src/nn/module.c (the module API, containers, names, state) and src/nn/layers.c (the
 * built-in layers, each defined through the public API with its own typed state). */
#ifndef KILN_NN_INTERNAL_H
#define KILN_NN_INTERNAL_H

#include "../ops/ops_internal.h"

#define KILN__NAME_MAX 64 /* names of children and tensors: 1 to 63 characters */

typedef struct kiln__mtensor {
    char name[KILN__NAME_MAX];
    kiln_tensor *t;
    bool buffer;
} kiln__mtensor;

typedef struct kiln__mchild {
    char name[KILN__NAME_MAX];
    kiln_module *m;
} kiln__mchild;

struct kiln_module {
    kiln_ctx *ctx;
    kiln_module_def def; /* a copy; def.kind points at kind */
    char kind[KILN__NAME_MAX];
    void *data;             /* def.state_size zeroed bytes, or NULL */
    kiln__mtensor *tensors; /* parameters and buffers in registration order */
    int ntensors, captensors;
    kiln__mchild *children;
    int nchildren, capchildren;
    kiln_module *parent;
    bool training;
    /* internal hook: the module's tensors were overwritten (a load); BatchNorm drops its
     * host copy of num_batches_tracked */
    void (*state_loaded)(kiln_module *m);
    /* internal hook (the built-in Linear): when m and then next, applied to x, can run as one
     * op, runs it, sets *y (NULL with the error set on failure) and returns true; false (no
     * error) when they cannot: Sequential then runs them one after the other */
    bool (*fuse_next)(kiln_module *m, kiln_module *next, kiln_tensor *x, kiln_tensor **y);
};

/* Tensors of m and its children were overwritten (a checkpoint load): host copies of
 * buffer values (num_batches_tracked) are re-read from the device when next needed. */
void kiln__module_state_loaded(kiln_module *m);
/* SyncBatchNorm (src/dist): batch norm module m's training forward sums its batch
 * statistics over the processes with fn (differentiable: fn's backward sums gradients the
 * same way); fn NULL: per-process statistics again. False when m is no batch norm. */
bool kiln__bn_set_sync(kiln_module *m, kiln_tensor *(*fn)(void *user, kiln_tensor *t), void *user);
/* relu(bn(x) + residual) (residual NULL: relu(bn(x))) for the built-in batch norm module bn
 * in one op (kiln__batch_norm_relu) with bn's parameters, buffers and mode, the batch
 * counted as bn's forward counts it. *fused false (nothing done, NULL) where bn is no such
 * module or a SyncBatchNorm: the caller then runs the modules one by one. */
kiln_tensor *kiln__bn_relu_forward(kiln_module *bn, kiln_tensor *x, kiln_tensor *residual, bool *fused);
/* The module's path from the root ("features.3"), "" for the root. */
void kiln__module_path(const kiln_module *m, char *buf, size_t cap);

/* ---- what the ONNX exporter (src/io/onnx_save.c) reads of the built-in modules ---------- */

/* The configuration of a layer of src/nn/layers.c; which fields mean something depends on
 * the kind (the others are zero). */
typedef struct kiln__layer_config {
    int64_t in, out;         /* Linear features; Conv channels; BatchNorm features (in) */
    int kh, kw;              /* Conv kernel */
    bool bias, transposed;   /* Linear and Conv with a bias; ConvTranspose2d */
    kiln_conv2d_params conv; /* Conv2d, ConvTranspose2d */
    kiln_pool2d_params pool; /* MaxPool2d, AvgPool2d */
    float eps;               /* BatchNorm, LayerNorm */
    int ndim;                /* BatchNorm: 1 or 2 (1d, 2d); LayerNorm: trailing dims normalised */
    float p;                 /* Dropout */
    kiln_activation act;     /* the activations (kind "ReLU", "GELU", ...) */
    float act_param;         /* slope, alpha, beta or dim, by act */
    int start_dim, end_dim;  /* Flatten */
} kiln__layer_config;

/* true and *out filled when m is a layer of src/nn/layers.c (its forward is the layer's own,
 * not a user module of the same kind name); false otherwise. */
bool kiln__layer_config_of(const kiln_module *m, kiln__layer_config *out);
/* m is a Sequential of kiln_nn_sequential (src/nn/module.c). */
bool kiln__is_sequential(const kiln_module *m);
/* m is a ResNet, BasicBlock or Bottleneck of src/nn/models.c. */
bool kiln__is_resnet_part(const kiln_module *m);
/* true and the configuration filled when m is an RNN, LSTM or GRU of src/nn/rnn.c (not a cell). */
bool kiln__rnn_config_of(const kiln_module *m, kiln_rnn_mode *mode, int64_t *input_size, int64_t *hidden_size,
                         kiln_rnn_params *p);
/* true and the configuration filled when m is a MultiheadAttention of src/nn/transformer.c;
 * packed: one in_proj_weight (kdim == vdim == embed_dim), else q/k/v_proj_weight. */
bool kiln__mha_config_of(const kiln_module *m, int64_t *embed_dim, int64_t *num_heads, kiln_mha_params *p,
                         bool *packed);
/* true when m is a TransformerEncoderLayer (*num_layers 0) or a TransformerEncoder (its layer
 * count, whether it ends with a LayerNorm "norm", *p its first layer's parameters). */
bool kiln__encoder_config_of(const kiln_module *m, kiln_transformer_params *p, int *num_layers, bool *final_norm);
/* The same for a TransformerDecoderLayer (*num_layers 0) or a TransformerDecoder. */
bool kiln__decoder_config_of(const kiln_module *m, kiln_transformer_params *p, int *num_layers, bool *final_norm);
/* true when m is a PositionalEmbedding (learned, parameter "weight") or a
 * SinusoidalPositionalEncoding (buffer "pe") of src/nn/transformer.c. */
bool kiln__pos_config_of(const kiln_module *m, bool *learned, bool *batch_first);

#endif
