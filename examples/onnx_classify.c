/* examples/onnx_classify.c - classifies the Fashion-MNIST test images with an ONNX model run
 * by kiln (kiln/onnx.h): one made by PyTorch (tools/onnx_export_torch.py exports torch_ref.py's
 * CNN or ResNet-20 with kiln-trained weights) or by kiln itself (kiln_onnx_save).
 *
 *   build/examples/onnx_classify MODEL.onnx [--batch 250] [--limit N] [--mean 0 --std 1] ...
 *   build/examples/onnx_classify MODEL.onnx --native cnn|resnet20 --weights W.safetensors
 *
 * The model takes [batch, 1, 28, 28] F32 pixels x/255 (then (x - mean) / std with --mean and
 * --std, for a model without its normalisation inside) and gives [batch, 10] scores; the
 * prediction is their argmax. A model with a fixed batch dimension is fed batches of that
 * size (the last one padded). With --native, the kiln model of examples/cnn_fashion or
 * examples/resnet_fashion is built, loaded from --weights and evaluated first
 * ("native_test_accuracy="), then written to MODEL.onnx with kiln_onnx_save, which is then
 * loaded and run as any other: the two accuracies must be equal. (--native resnet20 feeds the
 * native model (x/255 - 0.2860) / 0.3530 and exports it without that step: pass --mean 0.2860
 * --std 0.3530 with it.) The last line printed is "test_accuracy=0.XXXX".
 */
#include <stddef.h>

#include "common.h"

#include <kiln/models.h>
#include <kiln/onnx.h>

typedef struct opts {
    int64_t batch, limit;
    double mean, std;
    const char *data, *device, *native, *weights;
} opts;

static void usage(FILE *f) {
    fprintf(f, "usage: onnx_classify MODEL.onnx [options]\n"
               "classifies the Fashion-MNIST test images with an ONNX model run by kiln\n"
               "  --batch N          images per run (default 250; a fixed batch dim of the model wins)\n"
               "  --limit N          the first N test images only (default: all 10000)\n"
               "  --mean M --std S   input (x/255 - M) / S (default 0 and 1)\n"
               "  --data DIR         Fashion-MNIST directory (default " KILN_FASHION_MNIST_DIR ")\n"
               "  --device SPEC      OpenCL device (default: $KILN_DEVICE or the default device)\n"
               "  --native cnn|resnet20 --weights W.safetensors\n"
               "                     build the kiln model, load W, evaluate it, and write MODEL.onnx\n"
               "                     with kiln_onnx_save before running that file\n");
}

/* The model of examples/cnn_fashion (child names torch_ref.py's) or examples/resnet_fashion. */
static kiln_module *native_model(kiln_ctx *ctx, const char *which) {
    if (!strcmp(which, "resnet20")) {
        kiln_resnet_opts o = kiln_resnet_cifar_defaults();
        o.in_channels = 1;
        return kiln_resnet_cifar(ctx, 20, &o);
    }
    kiln_module *net = kiln_nn_sequential(
        ctx, 11,
        (kiln_module *[]){kiln_nn_conv2d(ctx, 1, 32, 3, 3, NULL, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv2d(ctx, 32, 64, 3, 3, NULL, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_maxpool2d(ctx, (kiln_pool2d_params[]){kiln_pool2d_defaults(2, 2)}),
                          kiln_nn_dropout(ctx, 0.25f), kiln_nn_flatten(ctx, 1, -1),
                          kiln_nn_linear(ctx, 9216, 128, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_dropout(ctx, 0.5f), kiln_nn_linear(ctx, 128, 10, true)});
    static const char *const names[] = {"conv1",   "relu1", "conv2", "relu2", "pool", "drop1",
                                        "flatten", "fc1",   "relu3", "drop2", "fc2"};
    for (int i = 0; net && i < 11; i++) kiln_module_set_child_name(net, i, names[i]);
    return net;
}

/* Images [first, first + n) as [rows, 1, 28, 28] floats (x/255 - mean) / std, rows >= n
 * (the rest zero), and their labels. */
static bool batch_of(const kiln_dataset *ds, int64_t first, int64_t n, int64_t rows, double mean, double std, float *x,
                     int32_t *y) {
    memset(x, 0, sizeof *x * (size_t)(rows * 784));
    for (int64_t i = 0; i < n; i++) {
        if (kiln_dataset_get(ds, first + i, x + i * 784, 784, &y[i]) != KILN_OK) return false;
        for (int k = 0; k < 784; k++) x[i * 784 + k] = (float)((x[i * 784 + k] / 255.0 - mean) / std);
    }
    return true;
}

/* Correct predictions of [rows, 10] scores for the first n rows. */
static int64_t count_correct(kiln_ctx *ctx, kiln_tensor *scores, const int32_t *y, int64_t n) {
    kiln_tensor *pred = kiln_argmax(ctx, scores, 1, false);
    if (!pred) return -1;
    int64_t rows = kiln_tensor_numel(pred);
    int32_t *p = malloc(sizeof *p * (size_t)rows);
    if (!p || kiln_to_host(pred, p, sizeof *p * (size_t)rows) != KILN_OK) return free(p), -1;
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += p[i] == y[i];
    free(p);
    return c;
}

static void print_info(const char *what, const kiln_onnx_value_info *v) {
    printf("  %s %s: %s [", what, v->name, kiln_dtype_name(v->dtype));
    for (int d = 0; d < v->ndim; d++) {
        if (v->shape[d] >= 0)
            printf("%s%lld", d ? ", " : "", (long long)v->shape[d]);
        else
            printf("%s%s", d ? ", " : "", v->dim_names && v->dim_names[d] ? v->dim_names[d] : "?");
    }
    printf("]\n");
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) return usage(stdout), 0;
        usage(stderr);
        return 2;
    }
    const char *path = argv[1];
    opts o = {.batch = 250, .mean = 0, .std = 1, .data = KILN_FASHION_MNIST_DIR};
#define F(n, k, field, lo, hi)                                                                                         \
    { n, k, offsetof(opts, field), lo, hi }
    static const ex_flag flags[] = {
        F("--batch", EX_FLAG_I64, batch, 1, 1 << 16), F("--limit", EX_FLAG_I64, limit, 0, 1 << 30),
        F("--mean", EX_FLAG_F64, mean, -1e6, 1e6),    F("--std", EX_FLAG_F64, std, 1e-9, 1e6),
        F("--data", EX_FLAG_STR, data, 0, 0),         F("--device", EX_FLAG_STR, device, 0, 0),
        F("--native", EX_FLAG_STR, native, 0, 0),     F("--weights", EX_FLAG_STR, weights, 0, 0),
    };
#undef F
    int rc = ex_parse_flags(argc - 1, argv + 1, "onnx_classify", flags, (int)(sizeof flags / sizeof *flags), &o, usage);
    if (rc != -1) return rc;
    if (o.native && (strcmp(o.native, "cnn") && strcmp(o.native, "resnet20"))) {
        fprintf(stderr, "onnx_classify: --native %s: expected cnn or resnet20\n", o.native);
        return 2;
    }
    if (!o.native != !o.weights) {
        fprintf(stderr, "onnx_classify: --native and --weights go together\n");
        return 2;
    }

    kiln_ctx *ctx = NULL;
    kiln_dataset *test = NULL;
    kiln_module *net = NULL;
    kiln_onnx_model *m = NULL;
    float *x = NULL;
    int32_t *y = NULL;
    rc = 1;
    if (kiln_open(&ctx, o.device) != KILN_OK) {
        fprintf(stderr, "onnx_classify: %s\n", kiln_last_error());
        return 1;
    }
    if (!(test = kiln_fashion_mnist(o.data, false))) {
        fprintf(stderr, "onnx_classify: %s\n", kiln_last_error());
        goto done;
    }
    int64_t n = kiln_dataset_num_samples(test);
    if (o.limit && o.limit < n) n = o.limit;

    if (o.native) { /* the kiln model: its accuracy, then its export */
        double nmean = !strcmp(o.native, "resnet20") ? KILN_FASHION_MNIST_MEAN : 0.0;
        double nstd = !strcmp(o.native, "resnet20") ? KILN_FASHION_MNIST_STD : 1.0;
        kiln_load_report rep;
        if (!(net = native_model(ctx, o.native)) || kiln_module_load(net, o.weights, false, &rep) != KILN_OK) goto fail;
        if (rep.missing || rep.mismatched) {
            fprintf(stderr, "onnx_classify: %s does not fit the %s: %d missing, %d of another shape\n", o.weights,
                    o.native, rep.missing, rep.mismatched);
            goto done;
        }
        kiln_module_train(net, false);
        kiln_ctx_set_grad_enabled(ctx, false);
        x = malloc(sizeof *x * (size_t)(o.batch * 784)), y = malloc(sizeof *y * (size_t)o.batch);
        if (!x || !y) goto fail;
        int64_t correct = 0;
        for (int64_t i = 0; i < n; i += o.batch) {
            int64_t b = n - i < o.batch ? n - i : o.batch;
            kiln_scope_begin(ctx);
            kiln_tensor *in = batch_of(test, i, b, b, nmean, nstd, x, y)
                                  ? kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){b, 1, 28, 28})
                                  : NULL;
            int64_t c = in ? count_correct(ctx, kiln_forward(net, in), y, b) : -1;
            kiln_scope_end(ctx);
            if (c < 0) goto fail;
            correct += c;
        }
        printf("native_test_accuracy=%.4f (%s from %s, %lld images)\n", (double)correct / (double)n, o.native,
               o.weights, (long long)n);
        kiln_scope_begin(ctx);
        kiln_tensor *ex = kiln_zeros(ctx, 4, (int64_t[]){1, 1, 28, 28});
        kiln_status s = kiln_onnx_save(net, path, ex);
        kiln_scope_end(ctx);
        if (s != KILN_OK) goto fail;
        printf("wrote %s with kiln_onnx_save\n", path);
        free(x), free(y);
        x = NULL, y = NULL;
    }

    if (kiln_onnx_load(ctx, path, &m) != KILN_OK) goto fail;
    kiln_onnx_value_info in_info, out_info;
    if (kiln_onnx_num_inputs(m) != 1 || kiln_onnx_num_outputs(m) != 1) {
        fprintf(stderr, "onnx_classify: %s has %d inputs and %d outputs; one image input and one score output needed\n",
                path, kiln_onnx_num_inputs(m), kiln_onnx_num_outputs(m));
        goto done;
    }
    if (kiln_onnx_input_info(m, 0, &in_info) != KILN_OK || kiln_onnx_output_info(m, 0, &out_info) != KILN_OK) goto fail;
    printf("%s:\n", path);
    print_info("input ", &in_info);
    print_info("output", &out_info);
    if (in_info.ndim != 4 || in_info.dtype != KILN_F32) {
        fprintf(stderr, "onnx_classify: input %s is not a 4-D F32 image batch [batch, 1, 28, 28]\n", in_info.name);
        goto done;
    }
    int64_t rows = in_info.shape[0] > 0 ? in_info.shape[0] : o.batch; /* a fixed batch dim wins */
    x = malloc(sizeof *x * (size_t)(rows * 784)), y = malloc(sizeof *y * (size_t)rows);
    if (!x || !y) goto fail;
    int64_t correct = 0;
    double t0 = ex_now_ms();
    for (int64_t i = 0; i < n; i += rows) {
        int64_t b = n - i < rows ? n - i : rows;
        int64_t r = in_info.shape[0] > 0 ? rows : b; /* a dynamic batch takes the last one short */
        kiln_scope_begin(ctx);
        kiln_tensor *in = batch_of(test, i, b, r, o.mean, o.std, x, y)
                              ? kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){r, 1, 28, 28})
                              : NULL;
        kiln_tensor *out = NULL;
        int64_t c = in && kiln_onnx_run(m, 1, &in, 1, &out) == KILN_OK ? count_correct(ctx, out, y, b) : -1;
        kiln_scope_end(ctx);
        if (c < 0) goto fail;
        correct += c;
    }
    double ms = ex_now_ms() - t0;
    printf("%lld images in %.0f ms (%.0f images/s, batch %lld)\n", (long long)n, ms, (double)n / (ms / 1e3),
           (long long)rows);
    printf("test_accuracy=%.4f\n", (double)correct / (double)n);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "onnx_classify: %s\n", ctx ? kiln_error_message(ctx) : kiln_last_error());
done:
    free(x), free(y);
    kiln_onnx_free(m);
    kiln_module_free(net);
    kiln_dataset_free(test);
    kiln_close(ctx);
    return rc;
}
