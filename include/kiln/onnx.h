/* kiln/onnx.h - ONNX models: load and run one that was trained elsewhere, save a kiln module
 * as one.
 *
 *     kiln_onnx_model *m;
 *     if (kiln_onnx_load(ctx, "cnn.onnx", &m) != KILN_OK) { ... kiln_error_message(ctx) ... }
 *     kiln_tensor *x = kiln_from_host(ctx, images, KILN_F32, 4, (int64_t[]){64, 1, 28, 28});
 *     kiln_tensor *y = NULL;
 *     kiln_onnx_run(m, 1, &x, 1, &y);                  // y: [64, 10], a tensor of the scope
 *     kiln_onnx_free(m);
 *
 * Files are parsed with protobuf-c from the onnx.proto Debian's libonnx-dev installs. Which
 * operators, attributes and dtypes run (opsets 11..17), and what ONNX's own node tests give,
 * is in README.md, "Running ONNX models"; what the exporter writes, under "ONNX export".
 */
#ifndef KILN_ONNX_H
#define KILN_ONNX_H

#include "nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A loaded, validated model: its graph, its initializers on the device. */
typedef struct kiln_onnx_model kiln_onnx_model;

/* Reads and validates `path` (and external data files next to it). On failure *out is NULL
 * and the context's error names the file and the fault (an unsupported operator names the
 * operator, its node and its opset). */
KILN_API kiln_status kiln_onnx_load(kiln_ctx *ctx, const char *path, kiln_onnx_model **out);
/* The same from memory; `what` names the source in errors (for fuzzing and embedded models;
 * external data is refused). */
KILN_API kiln_status kiln_onnx_load_memory(kiln_ctx *ctx, const void *data, size_t len, const char *what,
                                           kiln_onnx_model **out);
KILN_API void kiln_onnx_free(kiln_onnx_model *m);

/* A graph input or output. shape[i] is -1 for a symbolic or unknown dimension, whose name
 * (the ONNX dim_param, "batch") is dim_names[i] or NULL; ndim is -1 when the rank is unknown.
 * An output's dtype and shape are what shape inference at load gives (where the file declares
 * less, or nothing); a declared shape that contradicts the graph fails the load. Pointers are
 * owned by the model. */
typedef struct kiln_onnx_value_info {
    const char *name;
    kiln_dtype dtype;
    int ndim;
    const int64_t *shape;
    const char *const *dim_names;
} kiln_onnx_value_info;

KILN_API int kiln_onnx_num_inputs(const kiln_onnx_model *m);
KILN_API int kiln_onnx_num_outputs(const kiln_onnx_model *m);
KILN_API kiln_status kiln_onnx_input_info(const kiln_onnx_model *m, int i, kiln_onnx_value_info *info);
KILN_API kiln_status kiln_onnx_output_info(const kiln_onnx_model *m, int i, kiln_onnx_value_info *info);

/* Runs the graph on n_in inputs (in the order of kiln_onnx_input_info) and writes n_out
 * outputs, new tensors of the current scope. Records no autograd. An input of the wrong
 * dtype or shape is an error naming the input and both shapes. */
KILN_API kiln_status kiln_onnx_run(kiln_onnx_model *m, int n_in, kiln_tensor *const in[], int n_out,
                                   kiln_tensor *out[]);

/* Reads one serialized ONNX TensorProto (the input_0.pb / output_0.pb files of ONNX's
 * backend tests) into a new tensor of the current scope: KILN_F32 for float, KILN_I32 for
 * integer and bool tensors (a value outside the I32 range is KILN_ERR_UNSUPPORTED). */
KILN_API kiln_status kiln_onnx_load_tensor(kiln_ctx *ctx, const char *path, kiln_tensor **out);
/* Whether kiln's ONNX runtime knows the operator (of the default domain); which attributes
 * and dtypes it runs is checked when a model loads. */
KILN_API bool kiln_onnx_op_supported(const char *op_type);
/* Opsets of the default domain that load: ONNX_OPSET_MIN..ONNX_OPSET_MAX. */
#define KILN_ONNX_OPSET_MIN 11
#define KILN_ONNX_OPSET_MAX 17

/* Writes `module` as an ONNX model (opset 17, IR 8) traced on `example_input`:
 *
 *     kiln_tensor *x = kiln_zeros(ctx, 4, (int64_t[]){1, 1, 28, 28});
 *     if (kiln_onnx_save(net, "cnn.onnx", x) != KILN_OK) { ... kiln_error_message(ctx) ... }
 *
 * The graph has one input "input" (F32, or I32 token ids for an Embedding first) whose dim 0
 * is the symbolic "batch", the other dims example_input's, and one output "output". It is
 * the module in eval mode (Dropout left out, BatchNorm on its running statistics), as
 * torch.onnx.export writes it; the modes of the module and its descendants are set back
 * after. Each layer runs once on the traced example (no autograd recorded), so a model that
 * cannot run on it fails here with the layer's own error.
 *
 * Exported: Sequential, the ResNet, BasicBlock and Bottleneck of kiln/models.h, and the
 * layers Linear (Gemm; MatMul + Add on inputs of 3+ dims), Conv2d, ConvTranspose2d,
 * BatchNorm1d/2d, LayerNorm, MaxPool2d, AvgPool2d (without dilation), AdaptiveAvgPool2d
 * (GlobalAveragePool), Flatten (Flatten or Reshape), Dropout, Embedding (Gather) and every
 * activation of kiln_nn_activation (GELU written out with Erf or Tanh: opset 17 has no Gelu).
 * Parameters and buffers become initializers named by their state_dict keys
 * ("layer1.0.conv1.weight", "bn1.running_mean"); BatchNorm's num_batches_tracked, which
 * inference does not read, is left out. An RNN, LSTM or GRU module is exported as the model
 * itself: input x [T, B, I] ([B, T, I] batch_first; T the symbolic "sequence"), outputs
 * "output", "h_n" (, "c_n") from zero initial states, one ONNX RNN/LSTM/GRU node per layer
 * (both directions in it), its weights put in ONNX's gate order in the graph (Split, Concat)
 * so that the initializers keep torch's names and layout. A TransformerEncoder or
 * TransformerEncoderLayer (post- or pre-norm, ReLU or GELU, unmasked; [T, B, E] or
 * [B, T, E] with T the symbolic "sequence" when it is the model) has its self-attention
 * written out: MatMul with in_proj_weight, Split, Reshape/Transpose to heads, scaled
 * MatMul, Softmax, MatMul, merge, out_proj. PositionalEmbedding and
 * SinusoidalPositionalEncoding (anywhere, or as the model: [T, B, D] with T the symbolic
 * "sequence") add table[:T], T read from the input's shape. A MultiheadAttention (packed or
 * separate q/k/v projections) and a TransformerDecoder or TransformerDecoderLayer take
 * several inputs and are exported only as the model, with kiln_onnx_save_inputs. Any other
 * module (a user's own, a recurrent cell, a recurrent layer, attention or decoder inside a
 * container) is an error naming its kind and path (KILN_ERR_UNSUPPORTED), as is a root
 * module of several inputs or outputs other than these.
 *
 * Every tensor is stored inside the file (a model over protobuf's 2 GiB is refused). The file
 * is written atomically, as kiln's other writers: a temporary file beside it, fsync, rename;
 * on any error the previous file, if any, is unchanged. */
KILN_API kiln_status kiln_onnx_save(kiln_module *module, const char *path, kiln_tensor *example_input);
/* The same for a model of several inputs, traced on inputs[0..n_inputs): a MultiheadAttention
 * (3: graph inputs "query", "key", "value"; unmasked) or a TransformerDecoder(Layer) (2:
 * "tgt", "memory"; unmasked, as kiln_module_forward runs it), each [T, B, E] ([B, T, E]
 * batch_first) with "batch" and the sequence dims symbolic ("sequence"; "source_sequence"
 * for key and value, "memory_sequence" for memory). Any other module takes one input here. */
KILN_API kiln_status kiln_onnx_save_inputs(kiln_module *module, const char *path, int n_inputs,
                                           kiln_tensor *const inputs[]);

#ifdef __cplusplus
}
#endif

#endif
