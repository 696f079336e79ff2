/* tests/test_onnx_export.c - kiln_onnx_save (src/io/onnx_save.c).
 *
 *   test_onnx_export OUT_DIR [PYTHON CHECKER]
 *
 * Exports the models below to OUT_DIR/<name>.onnx, traced on a batch of 2, and writes beside
 * each the kiln module's eval-mode output on another input of batch 3 (<name>_input.npy,
 * <name>_output.npy, <name>_output_<k>.npy for output k > 0) and its expected initializer names (<name>_keys.txt: the
 * state_dict keys, less BatchNorm's num_batches_tracked, which inference does not use). With PYTHON and CHECKER
 * (tests/onnx_check.py) it then runs the checker on OUT_DIR, which runs ONNX's checker (full_check) and strict shape
 * inference on each file, evaluates the graph in NumPy on the batch-3 input (so the symbolic batch is exercised) and
 * compares it with kiln's output; its exit status is this test's.
 *
 *   mlp       torch_ref.py's MLP (flatten, 784-512-256-10, ReLU)
 *   cnn       torch_ref.py's CNN, named as examples/cnn_fashion names it
 *   resnet20  kiln_resnet_cifar(20), 1 channel, 10 classes, batch norm statistics made
 *             non-trivial
 *   zoo       every other exported layer: strided, padded, grouped, bias-free convolution,
 *             ConvTranspose2d, BatchNorm2d/1d, LeakyReLU, ELU, GELU (both forms), Softplus,
 *             Sigmoid, Tanh, MaxPool2d (padding, dilation, ceil_mode), AvgPool2d (padding,
 *             count_include_pad off), LayerNorm, Dropout, Flatten, a Linear on 3-D input,
 *             Softmax, LogSoftmax
 *   bottleneck  a Bottleneck block with a projection shortcut
 *   embed     Embedding (I32 token ids) + Flatten(0, 1: a Reshape) + Linear + Softmax
 *   encoder, encoder_layer  a 2-layer batch-first post-norm GELU TransformerEncoder with its
 *             final norm; a time-major pre-norm ReLU TransformerEncoderLayer
 *   lstm, gru, rnn_relu  recurrent layers as the model (outputs output, h_n (, c_n)): a
 *             2-layer bidirectional batch-first LSTM, a 2-layer time-major GRU, a bias-free
 *             bidirectional ReLU RNN
 *
 * Then the errors: NULL arguments, an unsupported module named by kind and path, a layer
 * failing on the example input, a directory that does not exist, and every write step of
 * the save failing in turn (kiln__io_fail_after) with the previous file unchanged and no
 * temporary file left. Train/eval modes of every module are the same after an export.
 *
 * Round trip: each export is also loaded back into kiln and run on the batch-3 input, its outputs
 * compared with the module's (round_trip). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include <kiln/models.h>
#include <kiln/onnx.h>

static const char *out_dir;
static char manifest[4096];

/* A NumPy .npy file (version 1.0) of a little-endian F32 or I32 tensor. */
static bool write_npy(const char *path, kiln_tensor *t) {
    int64_t n = kiln_tensor_numel(t);
    bool is_int = kiln_tensor_dtype(t) == KILN_I32;
    void *data = malloc((size_t)n * 4 + 1);
    if (!data || kiln_to_host(t, data, (size_t)n * 4) != KILN_OK) return free(data), false;
    char shape[256] = "";
    size_t k = 0;
    int nd = kiln_tensor_ndim(t);
    for (int d = 0; d < nd; d++) /* (2, 3); a 1-D shape keeps its comma: (2,) */
        k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%lld%s", d ? ", " : "",
                              (long long)kiln_tensor_shape(t)[d], nd == 1 ? "," : "");
    char header[512];
    int hl = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                      is_int ? "<i4" : "<f4", shape);
    while ((hl + 10 + 1) % 64) header[hl++] = ' ';
    header[hl++] = '\n';
    FILE *f = fopen(path, "wb");
    bool ok = f != NULL;
    if (ok) {
        unsigned char pre[10] = {
            0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 0xff), (unsigned char)(hl >> 8)};
        ok = fwrite(pre, 1, 10, f) == 10 && fwrite(header, 1, (size_t)hl, f) == (size_t)hl &&
             fwrite(data, 4, (size_t)n, f) == (size_t)n;
        ok = fclose(f) == 0 && ok;
    }
    free(data);
    return ok;
}

static bool file_equals(const char *path, const char *want) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char buf[256];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strcmp(buf, want) == 0;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (f) fputs(text, f), fclose(f);
}

/* Files of dir whose name starts with prefix. */
static int count_prefixed(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *de; d && (de = readdir(d));) n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    if (d) closedir(d);
    return n;
}

/* Every module's training flag in pre-order, as a string of 0/1 (for the modes check). */
static void modes_of(kiln_module *m, char *buf, size_t cap, size_t *n) {
    if (*n + 1 < cap) buf[(*n)++] = kiln_module_is_training(m) ? '1' : '0', buf[*n] = '\0';
    for (int k = 0; k < kiln_module_num_children(m); k++) modes_of(kiln_module_child(m, k), buf, cap, n);
}

static kiln_tensor *input_of(kiln_ctx *ctx, kiln_dtype dt, int ndim, const int64_t *shape, int64_t vocab) {
    int64_t n = h_numel(ndim, shape);
    float *x = malloc(sizeof *x * (size_t)n);
    int32_t *ids = (int32_t *)x;
    for (int64_t i = 0; i < n; i++) {
        float u = h_uniform(0.0f, 1.0f);
        if (dt == KILN_I32)
            ids[i] = (int32_t)(u * (float)vocab) % (int32_t)vocab;
        else
            x[i] = 2 * u - 1;
    }
    kiln_tensor *t = kiln_from_host(ctx, x, dt, ndim, shape);
    free(x);
    return t;
}

/* The export loaded back into kiln (kiln_onnx_load, kiln_onnx_run on the batch-3 input) gives
 * the module's outputs y[0..nout). */
static void round_trip(kiln_ctx *ctx, const char *name, const char *path, int nin, kiln_tensor *const *x, int nout,
                       kiln_tensor *const *y) {
    kiln_onnx_model *m = NULL;
    kiln_tensor *z[3] = {NULL};
    CHECK(kiln_onnx_load(ctx, path, &m) == KILN_OK, "%s: kiln_onnx_load: %s", name, kiln_error_message(ctx));
    CHECK(!m || kiln_onnx_run(m, nin, x, nout, z) == KILN_OK, "%s: kiln_onnx_run: %s", name, kiln_error_message(ctx));
    /* shape inference at load gives the output's rank and every size it knows as the
     * module's (batch and sequence symbolic; a dim the batch was flattened into unknown) */
    kiln_onnx_value_info vi;
    for (int k = 0; m && k < nout && y[k]; k++) {
        bool ok = kiln_onnx_output_info(m, k, &vi) == KILN_OK && vi.ndim == kiln_tensor_ndim(y[k]);
        for (int d = 0; ok && d < vi.ndim; d++) ok = vi.shape[d] == kiln_tensor_shape(y[k])[d] || vi.shape[d] < 0;
        CHECK(ok, "%s: output %d: the inferred shape (%d dims) is not the module's", name, k, vi.ndim);
    }
    for (int k = 0; m && k < nout && z[k] && y[k]; k++) {
        CHECK(kiln_tensor_numel(z[k]) == kiln_tensor_numel(y[k]), "%s: output %d has %lld elements, kiln's %lld", name,
              k, (long long)kiln_tensor_numel(z[k]), (long long)kiln_tensor_numel(y[k]));
        if (kiln_tensor_numel(z[k]) != kiln_tensor_numel(y[k])) continue;
        int64_t n = kiln_tensor_numel(y[k]);
        float *got = h_read(z[k]), *want = h_read(y[k]);
        double *ref = malloc(sizeof *ref * (size_t)n);
        for (int64_t i = 0; i < n; i++) ref[i] = want[i];
        char what[96];
        snprintf(what, sizeof what, "%s round trip, output %d", name, k);
        h_compare(what, got, ref, n, 1e-4, 1e-4);
        free(got), free(want), free(ref);
    }
    kiln_onnx_free(m);
    kiln_error_clear(ctx);
}

/* Exports net traced on a batch of 2 and writes the files the checker reads (see the top). */
static void export_case_n(kiln_ctx *ctx, const char *name, kiln_module *net, kiln_dtype dt, int nin, int ndim,
                          const int64_t *shapes, int64_t vocab, int batch_dim, int nout) {
    CHECK(net != NULL, "%s: build failed: %s", name, kiln_error_message(ctx));
    if (!net) return;
    kiln_scope_begin(ctx);
    kiln_tensor *x2s[3], *x3s[3];
    for (int i = 0; i < nin; i++) {
        int64_t s2[KILN_MAX_DIMS], s3[KILN_MAX_DIMS];
        memcpy(s2, shapes + i * ndim, sizeof *s2 * (size_t)ndim),
            memcpy(s3, shapes + i * ndim, sizeof *s3 * (size_t)ndim);
        s2[batch_dim] = 2, s3[batch_dim] = 3;
        x2s[i] = input_of(ctx, dt, ndim, s2, vocab), x3s[i] = input_of(ctx, dt, ndim, s3, vocab);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.onnx", out_dir, name);
    /* exported from training mode: the export is eval mode's, and the modes come back */
    kiln_module_train(net, true);
    if (kiln_module_num_children(net) > 1) kiln_module_train(kiln_module_child(net, 1), false);
    char before[512], after[512];
    size_t nb = 0, na = 0;
    modes_of(net, before, sizeof before, &nb);
    kiln_status s = nin == 1 ? kiln_onnx_save(net, path, x2s[0]) : kiln_onnx_save_inputs(net, path, nin, x2s);
    CHECK(s == KILN_OK, "%s: kiln_onnx_save: %s", name, kiln_error_message(ctx));
    modes_of(net, after, sizeof after, &na);
    CHECK(!strcmp(before, after), "%s: train/eval modes %s before the export, %s after", name, before, after);
    kiln_module_train(net, false);
    kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *y[3] = {NULL};
    kiln_status fs = kiln_module_forward(net, nin, x3s, nout, y);
    kiln_ctx_set_grad_enabled(ctx, true);
    CHECK(fs == KILN_OK, "%s: forward: %s", name, kiln_error_message(ctx));
    round_trip(ctx, name, path, nin, x3s, nout, y);
    char p[1024];
    for (int i = 0; i < nin; i++) {
        if (i)
            snprintf(p, sizeof p, "%s/%s_input_%d.npy", out_dir, name, i);
        else
            snprintf(p, sizeof p, "%s/%s_input.npy", out_dir, name);
        CHECK(fs == KILN_OK && write_npy(p, x3s[i]), "%s: cannot write %s", name, p);
    }
    for (int k = 0; fs == KILN_OK && k < nout; k++) {
        if (k)
            snprintf(p, sizeof p, "%s/%s_output_%d.npy", out_dir, name, k);
        else
            snprintf(p, sizeof p, "%s/%s_output.npy", out_dir, name);
        CHECK(write_npy(p, y[k]), "%s: cannot write %s", name, p);
    }
    kiln_named_tensor st[512];
    int n = kiln_module_state(net, st, 512);
    char *keys = malloc(64 * 1024);
    size_t k = 0;
    for (int i = 0; i < n && i < 512; i++)
        if (!strstr(st[i].name, "num_batches_tracked"))
            k += (size_t)snprintf(keys + k, 64 * 1024 - k, "%s\n", st[i].name);
    keys[k] = '\0';
    snprintf(p, sizeof p, "%s/%s_keys.txt", out_dir, name);
    write_text(p, keys);
    free(keys);
    strncat(manifest, name, sizeof manifest - strlen(manifest) - 2);
    strcat(manifest, "\n");
    kiln_scope_end(ctx);
    kiln_module_free(net);
    CHECK_OK(ctx);
}

static void export_case(kiln_ctx *ctx, const char *name, kiln_module *net, kiln_dtype dt, int ndim,
                        const int64_t *shape, int64_t vocab, int batch_dim, int nout) {
    export_case_n(ctx, name, net, dt, 1, ndim, shape, vocab, batch_dim, nout);
}

/* Random running statistics for every batch norm of m, so that eval-mode export is tested
 * with statistics that matter (fresh ones are 0 and 1). */
static void randomize_bn(kiln_ctx *ctx, kiln_module *m) {
    if (!strncmp(kiln_module_kind(m), "BatchNorm", 9)) {
        const char *names[] = {"running_mean", "running_var", "weight", "bias"};
        for (int i = 0; i < 4; i++) {
            kiln_tensor *t = kiln_module_find(m, names[i]);
            kiln_scope_begin(ctx);
            kiln_tensor *r = i == 1 ? kiln_rand_uniform(ctx, 0.5f, 2.0f, 1, kiln_tensor_shape(t))
                                    : kiln_rand_uniform(ctx, -0.5f, 0.5f, 1, kiln_tensor_shape(t));
            if (i == 2) r = kiln_add_scalar(ctx, r, 1.0f);
            CHECK(kiln_copy(t, r) == KILN_OK, "randomize_bn: %s", kiln_error_message(ctx));
            kiln_scope_end(ctx);
        }
    }
    for (int k = 0; k < kiln_module_num_children(m); k++) randomize_bn(ctx, kiln_module_child(m, k));
}

static kiln_module *mlp(kiln_ctx *ctx) {
    kiln_module *net = kiln_nn_sequential(
        ctx, 6,
        (kiln_module *[]){kiln_nn_flatten(ctx, 1, -1), kiln_nn_linear(ctx, 784, 512, true),
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_linear(ctx, 512, 256, true),
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_linear(ctx, 256, 10, true)});
    static const char *const names[] = {"flatten", "fc1", "relu1", "fc2", "relu2", "fc3"};
    for (int i = 0; net && i < 6; i++) kiln_module_set_child_name(net, i, names[i]);
    return net;
}

static kiln_module *cnn(kiln_ctx *ctx) {
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

static kiln_module *zoo(kiln_ctx *ctx) {
    kiln_conv2d_params c1 = kiln_conv2d_defaults();
    c1.stride[0] = 2, c1.stride[1] = 1, c1.padding[0] = 1, c1.padding[1] = 2;
    kiln_conv2d_params c2 = kiln_conv2d_defaults();
    c2.groups = 2, c2.dilation[0] = c2.dilation[1] = 2, c2.padding[0] = c2.padding[1] = 2;
    kiln_conv2d_params ct = kiln_conv2d_defaults();
    ct.stride[0] = ct.stride[1] = 2, ct.padding[0] = ct.padding[1] = 1, ct.output_padding[0] = 1;
    kiln_pool2d_params mp = kiln_pool2d_defaults(3, 3);
    mp.stride[0] = mp.stride[1] = 2, mp.padding[0] = mp.padding[1] = 1, mp.ceil_mode = true;
    kiln_pool2d_params mpd = kiln_pool2d_defaults(2, 2);
    mpd.stride[0] = mpd.stride[1] = 1, mpd.dilation[0] = 2;
    kiln_pool2d_params ap = kiln_pool2d_defaults(2, 2);
    ap.padding[0] = ap.padding[1] = 1, ap.count_include_pad = false;
    /* [N, 3, 11, 9] */
    return kiln_nn_sequential(ctx, 23,
                              (kiln_module *[]){kiln_nn_conv2d(ctx, 3, 8, 3, 4, &c1, false),          // [N, 8, 6, 10]
                                                kiln_nn_batchnorm2d(ctx, 8, 1e-3f, 0.1f),             //
                                                kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f),   //
                                                kiln_nn_conv2d(ctx, 8, 6, 3, 3, &c2, true),           // [N, 6, 6, 10]
                                                kiln_nn_activation(ctx, KILN_ACT_ELU, 0.7f),          //
                                                kiln_nn_conv_transpose2d(ctx, 6, 4, 3, 3, &ct, true), // [N, 4, 12, 19]
                                                kiln_nn_activation(ctx, KILN_ACT_GELU, 0),            //
                                                kiln_nn_maxpool2d(ctx, &mp),                          // [N, 4, 7, 10]
                                                kiln_nn_activation(ctx, KILN_ACT_SOFTPLUS, 2.0f),     //
                                                kiln_nn_maxpool2d(ctx, &mpd),                         // [N, 4, 5, 9]
                                                kiln_nn_avgpool2d(ctx, &ap),                          // [N, 4, 3, 5]
                                                kiln_nn_activation(ctx, KILN_ACT_GELU_TANH, 0),       //
                                                kiln_nn_layernorm(ctx, 2, (int64_t[]){3, 5}, 1e-5f, true),
                                                kiln_nn_flatten(ctx, 2, 3),                   // [N, 4, 15]
                                                kiln_nn_linear(ctx, 15, 7, true),             // [N, 4, 7]
                                                kiln_nn_activation(ctx, KILN_ACT_SIGMOID, 0), //
                                                kiln_nn_layernorm(ctx, 1, (int64_t[]){7}, 1e-5f, false),
                                                kiln_nn_flatten(ctx, 1, -1),               // [N, 28]
                                                kiln_nn_dropout(ctx, 0.3f),                //
                                                kiln_nn_batchnorm1d(ctx, 28, 1e-5f, 0.1f), //
                                                kiln_nn_activation(ctx, KILN_ACT_TANH, 0), //
                                                kiln_nn_linear(ctx, 28, 5, false),         // [N, 5]
                                                kiln_nn_activation(ctx, KILN_ACT_LOG_SOFTMAX, 1)});
}

static kiln_module *embed(kiln_ctx *ctx) {
    /* ids [N, 4] -> [N, 4, 6] -> Flatten(0, 1): [N * 4, 6] -> Linear: [N * 4, 3] -> Softmax */
    return kiln_nn_sequential(ctx, 4,
                              (kiln_module *[]){kiln_nn_embedding(ctx, 11, 6), kiln_nn_flatten(ctx, 0, 1),
                                                kiln_nn_linear(ctx, 6, 3, true),
                                                kiln_nn_activation(ctx, KILN_ACT_SOFTMAX, -1)});
}

/* A module of the user's own (module.h), which the exporter cannot know. */
static kiln_status mine_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    out[0] = kiln_relu(kiln_module_ctx(m), in[0]);
    return out[0] ? KILN_OK : kiln_error_status(kiln_module_ctx(m));
}

static void test_errors(kiln_ctx *ctx) {
    char path[1024], tmp_prefix[256];
    snprintf(path, sizeof path, "%s/errors.onnx", out_dir);
    snprintf(tmp_prefix, sizeof tmp_prefix, "errors.onnx.tmp");
    write_text(path, "previous");
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_zeros(ctx, 2, (int64_t[]){2, 4});

    CHECK(kiln_onnx_save(NULL, path, x) == KILN_ERR_NULL, "NULL module");
    CHECK(strstr(kiln_last_error(), "module is NULL") != NULL, "message: %s", kiln_last_error());
    kiln_module *lin = kiln_nn_linear(ctx, 4, 3, true);
    CHECK(kiln_onnx_save(lin, NULL, x) == KILN_ERR_NULL, "NULL path");
    CHECK(strstr(kiln_error_message(ctx), "path is NULL") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_onnx_save(lin, path, NULL) == KILN_ERR_NULL, "NULL input");
    CHECK(strstr(kiln_error_message(ctx), "example_input is NULL") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* an unsupported module: named by kind and path; nothing written */
    kiln_module_def def = {.kind = "MyAct", .forward = mine_forward, .num_inputs = 1, .num_outputs = 1};
    kiln_module *inner =
        kiln_nn_sequential(ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 4, 4, true), kiln_module_new(ctx, &def)});
    kiln_module *net = kiln_nn_sequential(ctx, 2, (kiln_module *[]){inner, kiln_nn_linear(ctx, 4, 2, true)});
    kiln_module_set_child_name(net, 0, "body");
    kiln_status s = kiln_onnx_save(net, path, x);
    CHECK(s == KILN_ERR_UNSUPPORTED, "unsupported module: %s", kiln_status_str(s));
    CHECK(strstr(kiln_error_message(ctx), "the MyAct at body.1 has no ONNX export") != NULL, "message: %s",
          kiln_error_message(ctx));
    CHECK(file_equals(path, "previous"), "a failed export changed %s", path);
    CHECK(count_prefixed(out_dir, tmp_prefix) == 0, "a temporary file was left in %s", out_dir);
    kiln_error_clear(ctx);
    kiln_module_free(net);

    /* a recurrent layer (two outputs) inside a Sequential: its own error, with its path */
    kiln_module *rnn = kiln_nn_sequential(ctx, 1, (kiln_module *[]){kiln_nn_lstm(ctx, 4, 3, NULL)});
    s = kiln_onnx_save(rnn, path, kiln_zeros(ctx, 3, (int64_t[]){2, 5, 4}));
    CHECK(s == KILN_ERR_UNSUPPORTED && strstr(kiln_error_message(ctx), "the LSTM at 0 is exported only as the model"),
          "LSTM in a Sequential: %s", kiln_error_message(ctx));
    CHECK(file_equals(path, "previous"), "a failed export changed %s", path);
    kiln_error_clear(ctx);
    kiln_module_free(rnn);

    /* MultiheadAttention wants its three inputs; inside a container it is refused */
    kiln_module *mha = kiln_nn_multihead_attention(ctx, 4, 2, NULL);
    kiln_tensor *x3 = kiln_zeros(ctx, 3, (int64_t[]){3, 2, 4});
    s = kiln_onnx_save(mha, path, x3);
    CHECK(s == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_error_message(ctx), "takes 3 inputs (query, key, value); 1 example input was given"),
          "MultiheadAttention with one input: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    s = kiln_onnx_save_inputs(mha, path, 3, (kiln_tensor *[]){x3, NULL, x3});
    CHECK(s == KILN_ERR_NULL && strstr(kiln_error_message(ctx), "example input 1 is NULL"), "NULL key: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_module *seq = kiln_nn_sequential(ctx, 1, (kiln_module *[]){mha});
    s = kiln_onnx_save(seq, path, x3);
    CHECK(s == KILN_ERR_UNSUPPORTED && strstr(kiln_error_message(ctx), "the MultiheadAttention at 0 takes 3 inputs"),
          "MultiheadAttention in a Sequential: %s", kiln_error_message(ctx));
    CHECK(file_equals(path, "previous"), "a failed export changed %s", path);
    kiln_error_clear(ctx);
    kiln_module_free(seq);
    /* a decoder given three inputs; a root of two inputs of a kind the exporter does not know */
    kiln_transformer_params tp = kiln_transformer_defaults(4, 2);
    tp.dim_feedforward = 8;
    kiln_module *dec = kiln_nn_transformer_decoder_layer(ctx, &tp);
    s = kiln_onnx_save_inputs(dec, path, 3, (kiln_tensor *[]){x3, x3, x3});
    CHECK(s == KILN_ERR_INVALID_ARGUMENT && strstr(kiln_error_message(ctx), "takes 2 inputs (tgt, memory)"),
          "decoder with three inputs: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_module_free(dec);
    kiln_module_def def2 = {.kind = "Pair", .forward = mine_forward, .num_inputs = 2, .num_outputs = 1};
    kiln_module *pair = kiln_module_new(ctx, &def2);
    s = kiln_onnx_save(pair, path, x);
    CHECK(s == KILN_ERR_UNSUPPORTED && strstr(kiln_error_message(ctx), "one-input, one-output"), "a two-input root: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_module_free(pair);

    /* the example input does not fit: the layer's own error */
    s = kiln_onnx_save(lin, path, kiln_zeros(ctx, 2, (int64_t[]){2, 5}));
    CHECK(s == KILN_ERR_SHAPE && strstr(kiln_error_message(ctx), "Linear"), "bad input: %s %s", kiln_status_str(s),
          kiln_error_message(ctx));
    CHECK(file_equals(path, "previous"), "a failed export changed %s", path);
    kiln_error_clear(ctx);
    s = kiln_onnx_save(lin, path, kiln_zeros(ctx, 0, NULL));
    CHECK(s == KILN_ERR_INVALID_ARGUMENT && strstr(kiln_error_message(ctx), "with a batch dim is needed"),
          "scalar input: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* no such directory */
    char bad[1100];
    snprintf(bad, sizeof bad, "%s/no-such-dir/m.onnx", out_dir);
    s = kiln_onnx_save(lin, bad, x);
    CHECK(s == KILN_ERR_IO && strstr(kiln_error_message(ctx), "cannot create a temporary file"), "bad dir: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* every write step failing in turn (as a full disk): the previous file stays, no
     * temporary file is left; then one succeeds */
    int n = 1;
    for (; n < 100; n++) {
        kiln__io_fail_after(n);
        s = kiln_onnx_save(lin, path, x);
        kiln__io_fail_after(0);
        if (s == KILN_OK) break;
        CHECK(s == KILN_ERR_IO && strstr(kiln_error_message(ctx), "previous file, if any, is unchanged"),
              "failing step %d: %s", n, kiln_error_message(ctx));
        CHECK(file_equals(path, "previous"), "failing step %d changed %s", n, path);
        CHECK(count_prefixed(out_dir, tmp_prefix) == 0, "failing step %d left a temporary file", n);
        kiln_error_clear(ctx);
    }
    CHECK(s == KILN_OK && n > 3, "the save succeeded after %d injected failures: %s", n - 1, kiln_error_message(ctx));
    CHECK(!file_equals(path, "previous"), "the successful export did not replace %s", path);
    kiln_module_free(lin);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    manifest[0] = '\0';
    kiln_manual_seed(ctx, 7);
    export_case(ctx, "mlp", mlp(ctx), KILN_F32, 4, (int64_t[]){1, 1, 28, 28}, 0, 0, 1);
    export_case(ctx, "cnn", cnn(ctx), KILN_F32, 4, (int64_t[]){1, 1, 28, 28}, 0, 0, 1);
    kiln_resnet_opts o = kiln_resnet_cifar_defaults();
    o.in_channels = 1;
    kiln_module *r = kiln_resnet_cifar(ctx, 20, &o);
    if (r) randomize_bn(ctx, r);
    export_case(ctx, "resnet20", r, KILN_F32, 4, (int64_t[]){1, 1, 28, 28}, 0, 0, 1);
    kiln_module *z = zoo(ctx);
    if (z) randomize_bn(ctx, z);
    export_case(ctx, "zoo", z, KILN_F32, 4, (int64_t[]){1, 3, 11, 9}, 0, 0, 1);
    kiln_module *b = kiln_nn_bottleneck(ctx, 8, 4, 2);
    if (b) randomize_bn(ctx, b);
    export_case(ctx, "bottleneck", b, KILN_F32, 4, (int64_t[]){1, 8, 7, 6}, 0, 0, 1);
    export_case(ctx, "embed", embed(ctx), KILN_I32, 2, (int64_t[]){1, 4}, 11, 0, 1);
    /* recurrent layers as the model: [B, T, I] batch_first, [T, B, I] otherwise */
    kiln_rnn_params rp = kiln_rnn_defaults();
    rp.num_layers = 2, rp.bidirectional = true, rp.batch_first = true;
    export_case(ctx, "lstm", kiln_nn_lstm(ctx, 5, 6, &rp), KILN_F32, 3, (int64_t[]){1, 7, 5}, 0, 0, 3);
    rp = kiln_rnn_defaults();
    rp.num_layers = 2;
    export_case(ctx, "gru", kiln_nn_gru(ctx, 4, 3, &rp), KILN_F32, 3, (int64_t[]){6, 1, 4}, 0, 1, 2);
    rp = kiln_rnn_defaults();
    rp.bias = false, rp.bidirectional = true;
    /* Transformer encoders: a batch-first post-norm GELU stack with a final norm, a
     * time-major pre-norm ReLU layer */
    kiln_transformer_params tp = kiln_transformer_defaults(8, 2);
    tp.dim_feedforward = 16, tp.activation = KILN_ACT_GELU, tp.batch_first = true;
    export_case(ctx, "encoder", kiln_nn_transformer_encoder(ctx, &tp, 2, true), KILN_F32, 3, (int64_t[]){1, 5, 8}, 0, 0,
                1);
    tp = kiln_transformer_defaults(6, 3);
    tp.dim_feedforward = 10, tp.norm_first = true;
    export_case(ctx, "encoder_layer", kiln_nn_transformer_encoder_layer(ctx, &tp), KILN_F32, 3, (int64_t[]){4, 1, 6}, 0,
                1, 1);
    export_case(ctx, "rnn_relu", kiln_nn_rnn(ctx, 3, 4, KILN_ACT_RELU, &rp), KILN_F32, 3, (int64_t[]){5, 1, 3}, 0, 1,
                2);
    /* attention as the model: time-major packed self/cross attention (key and value
     * of another length than the query), batch-first with separate q/k/v projections */
    export_case_n(ctx, "mha", kiln_nn_multihead_attention(ctx, 8, 2, NULL), KILN_F32, 3, 3,
                  (int64_t[]){4, 1, 8, 6, 1, 8, 6, 1, 8}, 0, 1, 1);
    kiln_mha_params mp = kiln_mha_defaults();
    mp.batch_first = true, mp.kdim = 5, mp.vdim = 3;
    export_case_n(ctx, "mha_kv", kiln_nn_multihead_attention(ctx, 6, 3, &mp), KILN_F32, 3, 3,
                  (int64_t[]){1, 4, 6, 1, 7, 5, 1, 7, 3}, 0, 0, 1);
    /* Transformer decoders: a batch-first post-norm GELU stack with a final norm, a
     * time-major pre-norm ReLU layer; memory longer than tgt */
    tp = kiln_transformer_defaults(8, 2);
    tp.dim_feedforward = 12, tp.activation = KILN_ACT_GELU, tp.batch_first = true;
    export_case_n(ctx, "decoder", kiln_nn_transformer_decoder(ctx, &tp, 2, true), KILN_F32, 2, 3,
                  (int64_t[]){1, 5, 8, 1, 7, 8}, 0, 0, 1);
    tp = kiln_transformer_defaults(6, 2);
    tp.dim_feedforward = 10, tp.norm_first = true;
    export_case_n(ctx, "decoder_layer", kiln_nn_transformer_decoder_layer(ctx, &tp), KILN_F32, 2, 3,
                  (int64_t[]){4, 1, 6, 3, 1, 6}, 0, 1, 1);
    /* positional encodings: learned, batch-first after an Embedding; sinusoidal,
     * time-major as the model */
    export_case(ctx, "pos_learned",
                kiln_nn_sequential(ctx, 3,
                                   (kiln_module *[]){kiln_nn_embedding(ctx, 11, 8),
                                                     kiln_nn_positional_embedding(ctx, 16, 8, true),
                                                     kiln_nn_linear(ctx, 8, 4, true)}),
                KILN_I32, 2, (int64_t[]){1, 5}, 11, 0, 1);
    export_case(ctx, "pos_sinusoidal", kiln_nn_sinusoidal_encoding(ctx, 12, 6, false), KILN_F32, 3,
                (int64_t[]){5, 1, 6}, 0, 1, 1);
    char p[1024];
    snprintf(p, sizeof p, "%s/manifest.txt", out_dir);
    write_text(p, manifest);
    test_errors(ctx);
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: test_onnx_export OUT_DIR [PYTHON CHECKER]\n");
        return 2;
    }
    out_dir = argv[1];
    mkdir(out_dir, 0755);
    /* one device is enough: the export reads tensors back, the kernels are tested elsewhere */
    char specs[16][16];
    int nd = h_devices(specs, 16);
    kiln_ctx *ctx;
    if (nd < 1 || kiln_open(&ctx, specs[0]) != KILN_OK) {
        fprintf(stderr, "kiln_open: %s\n", kiln_last_error());
        return 1;
    }
    h_device = kiln_ctx_device(ctx)->name;
    run(ctx);
    kiln_close(ctx);
    int rc = h_finish();
    if (rc || argc != 4) return rc;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s' '%s'", argv[2], argv[3], out_dir);
    fprintf(stderr, "running %s\n", cmd);
    fflush(stdout);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st)) return 1;
    return WEXITSTATUS(st); /* 77: python3-onnx missing, a skip */
}
