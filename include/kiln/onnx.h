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
 * Files are parsed with protobuf-c from the onnx.proto Debian's libonnx-dev installs.
 * (Work in progress: the functions below are declared in the order they are implemented;
 * see README.md, "ONNX", for the operators and attributes that run.)
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
 * (the ONNX dim_param, "batch") is dim_names[i] or NULL. Pointers are owned by the model. */
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

/* Writes `module` as an ONNX model (opset 17) traced on `example_input`; parameter and
 * buffer names become initializer names. Atomic, as kiln's other writers. */
KILN_API kiln_status kiln_onnx_save(kiln_module *module, const char *path, kiln_tensor *example_input);

#ifdef __cplusplus
}
#endif

#endif
