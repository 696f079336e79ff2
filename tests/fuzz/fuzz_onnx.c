/* tests/fuzz/fuzz_onnx.c - fuzzes the ONNX reader (kiln_onnx_load_memory: protobuf-c
 * unpacking with a bounded allocator, graph validation, constant folding): any bytes either
 * load into a model whose inputs and outputs can be queried, or fail with a status and a
 * message; never a crash, a leak or an unbounded allocation. A model that loads and whose
 * operators all make results no larger than their inputs (elementwise, shape and reduction
 * operators) is also run once on zero inputs of at most 256 elements (symbolic dims 1),
 * which must succeed or fail cleanly.
 *
 * The reader reports through a context, so one is opened once (KILN_DEVICE, else the
 * default device). */
#include <string.h>

#include <kiln/kiln.h>
#include <kiln/onnx.h>
#include "io/onnx_internal.h"

#include "fuzz.h"

static kiln_ctx *ctx;
static char skip[512];

static void close_ctx(void) {
    kiln_close(ctx);
    ctx = NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (ctx || skip[0]) return 0;
    if (kiln_open(&ctx, NULL) != KILN_OK) {
        snprintf(skip, sizeof skip, "no OpenCL device: %s", kiln_last_error());
        fprintf(stderr, "fuzz harness skipped: %s\n", skip); /* scripts/fuzz reports it */
        ctx = NULL;
        return 0;
    }
    atexit(close_ctx);
    return 0;
}

const char *fuzz_skip_reason(void) { return skip[0] ? skip : NULL; }

/* Operators whose results are bounded by their inputs' sizes (times the input count). */
static bool bounded(const char *op) {
    static const char *ok[] = {
        "Abs",     "Add",     "Sub",     "Mul",     "Div",       "Pow",        "Neg",       "Sqrt",       "Exp",
        "Log",     "Relu",    "Sigmoid", "Tanh",    "LeakyRelu", "Erf",        "Softmax",   "LogSoftmax", "Identity",
        "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",  "Shape",     "Size",       "Slice",
        "Gather",  "Concat",  "Split",   "Cast",    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin",  "Where",
        "Equal",   "Less",    "Greater", "Not",     "And",       "Or",         "MatMul",    "Gemm",       "Clip",
        "Max",     "Min",     "Sum",     "Mean",    "Constant",  NULL};
    for (int i = 0; ok[i]; i++)
        if (!strcmp(ok[i], op)) return true;
    return false;
}

static void try_run(kiln_onnx_model *m) {
    for (int i = 0; i < m->nnodes; i++)
        if (!bounded(m->nodes[i].op->name)) return;
    int nin = kiln_onnx_num_inputs(m), nout = kiln_onnx_num_outputs(m);
    if (nin > 8 || nout > 8) return;
    kiln_tensor *in[8] = {0}, *out[8] = {0};
    kiln_scope_begin(ctx);
    for (int i = 0; i < nin; i++) {
        kiln_onnx_value_info info;
        FUZZ_CHECK(kiln_onnx_input_info(m, i, &info) == KILN_OK, "input info %d", i);
        if (info.ndim < 0) goto out;
        int64_t shape[KILN_MAX_DIMS], n = 1;
        for (int d = 0; d < info.ndim; d++) shape[d] = info.shape[d] < 0 ? 1 : info.shape[d], n *= shape[d];
        if (n > 256) goto out;
        in[i] = kiln_zeros(ctx, info.ndim, shape);
        if (in[i] && info.dtype == KILN_I32) {
            int32_t zeros[256] = {0};
            in[i] = kiln_from_host(ctx, zeros, KILN_I32, info.ndim, shape);
        }
        FUZZ_CHECK(in[i] != NULL, "zeros: %s", kiln_error_message(ctx));
    }
    kiln_status s = kiln_onnx_run(m, nin, in, nout, out);
    if (s != KILN_OK) {
        FUZZ_CHECK(kiln_error_message(ctx)[0] != 0, "run failed with %s and no message", kiln_status_name(s));
        for (int i = 0; i < nout; i++) FUZZ_CHECK(out[i] == NULL, "output %d set after a failed run", i);
    } else {
        for (int i = 0; i < nout; i++) FUZZ_CHECK(out[i] != NULL, "output %d missing", i);
    }
out:
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ctx) LLVMFuzzerInitialize(NULL, NULL);
    if (!ctx) return 0;
    kiln_error_clear(ctx);
    int64_t tensors_before = kiln_ctx_num_tensors(ctx);
    kiln_onnx_model *m = NULL;
    kiln_status s = kiln_onnx_load_memory(ctx, data, size, "fuzz-input", &m);
    if (s != KILN_OK) {
        FUZZ_CHECK(m == NULL, "failed load left a model");
        FUZZ_CHECK(kiln_error_status(ctx) == s, "status %s, context holds %s", kiln_status_name(s),
                   kiln_status_name(kiln_error_status(ctx)));
        FUZZ_CHECK(strstr(kiln_error_message(ctx), "fuzz-input") != NULL, "message does not name the source: %s",
                   kiln_error_message(ctx));
        kiln_error_clear(ctx);
    } else {
        FUZZ_CHECK(m != NULL, "loaded, no model");
        int nin = kiln_onnx_num_inputs(m), nout = kiln_onnx_num_outputs(m);
        FUZZ_CHECK(nin >= 0 && nout >= 1, "%d inputs, %d outputs", nin, nout);
        for (int i = 0; i < nin + nout; i++) {
            kiln_onnx_value_info info;
            kiln_status q = i < nin ? kiln_onnx_input_info(m, i, &info) : kiln_onnx_output_info(m, i - nin, &info);
            FUZZ_CHECK(q == KILN_OK && info.name && info.ndim >= -1 && info.ndim <= KILN_MAX_DIMS, "value info %d", i);
            for (int d = 0; d < info.ndim; d++) FUZZ_CHECK(info.shape[d] >= -1, "dim %d of value %d", d, i);
        }
        try_run(m);
        kiln_onnx_free(m);
    }
    FUZZ_CHECK(kiln_ctx_num_tensors(ctx) == tensors_before, "tensors leaked: %lld -> %lld", (long long)tensors_before,
               (long long)kiln_ctx_num_tensors(ctx));
    return 0;
}
