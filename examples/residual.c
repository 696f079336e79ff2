/* examples/residual.c - a residual block defined in user code with the public module API
 * (kiln/module.h), as one writes a torch.nn.Module subclass: torchvision's ResNet
 * BasicBlock (conv3x3-bn-relu-conv3x3-bn, plus the identity or a 1x1-conv/bn "downsample",
 * relu) with torchvision's child names, so the state_dict keys are PyTorch's
 * ("layer2.0.downsample.1.running_var"). A small ResNet of two such blocks trains a few
 * steps on Fashion-MNIST (or on synthetic images with --synthetic), is saved, loaded into a
 * fresh model, and both must give the same outputs.
 *
 *   build/examples/residual [--synthetic] [--steps N] [--batch N] [--lr X] [--seed N]
 *                           [--data DIR] [--device SPEC] [--save PATH]
 *
 * Prints key=value lines that tests/run_example.sh checks: loss_first, loss_last,
 * loss_ratio (last/first, mean of 5 steps each), state_entries, load_max_abs_diff.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <kiln/kiln.h>

/* ---- the user-defined module ------------------------------------------------------------ */

/* The typed state kiln allocates (zeroed) with each block: the children, kept here so the
 * forward need not look them up. kiln owns and frees the children themselves. */
typedef struct basic_block {
    int64_t inplanes, planes;
    int stride;
    kiln_module *conv1, *bn1, *relu, *conv2, *bn2;
    kiln_module *downsample; /* NULL: the identity is added as it is */
} basic_block;

/* x [N, inplanes, H, W] -> [N, planes, H/stride, W/stride] */
static kiln_status basic_block_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout; /* one and one, as the definition says: kiln checked */
    const basic_block *b = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    kiln_tensor *x = in[0];
    kiln_tensor *h = kiln_forward(b->relu, kiln_forward(b->bn1, kiln_forward(b->conv1, x)));
    h = kiln_forward(b->bn2, kiln_forward(b->conv2, h));
    kiln_tensor *identity = b->downsample ? kiln_forward(b->downsample, x) : x;
    /* a NULL anywhere above (a failed op) gives NULL here with the first error kept */
    out[0] = kiln_forward(b->relu, kiln_add(ctx, h, identity));
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

/* torchvision's BasicBlock prints no arguments; these help reading kiln_module_describe */
static void basic_block_describe(const kiln_module *m, char *buf, size_t cap) {
    const basic_block *b = kiln_module_data(m);
    snprintf(buf, cap, "inplanes=%lld, planes=%lld, stride=%d", (long long)b->inplanes, (long long)b->planes,
             b->stride);
}

static const kiln_module_def basic_block_def = {
    .kind = "BasicBlock",
    .state_size = sizeof(basic_block),
    .forward = basic_block_forward,
    .num_inputs = 1,
    .num_outputs = 1,
    .describe = basic_block_describe,
    /* .destroy: nothing to free, the state owns no memory of its own */
};

/* Registers child under name (m owns it from now on, also on failure) and keeps it in *slot. */
static bool add(kiln_module *m, const char *name, kiln_module **slot, kiln_module *child) {
    if (kiln_module_add_child(m, name, child) != KILN_OK) return false;
    *slot = child;
    return true;
}

static kiln_module *basic_block_new(kiln_ctx *ctx, int64_t inplanes, int64_t planes, int stride) {
    kiln_module *m = kiln_module_new(ctx, &basic_block_def);
    if (!m) return NULL;
    basic_block *b = kiln_module_data(m);
    b->inplanes = inplanes, b->planes = planes, b->stride = stride;
    /* torch's Conv2d defaults (stride 1, padding 0, dilation 1, groups 1), then this block's */
    kiln_conv2d_params conv3s1 = kiln_conv2d_defaults();
    conv3s1.padding[0] = conv3s1.padding[1] = 1;
    kiln_conv2d_params conv3 = conv3s1;
    conv3.stride[0] = conv3.stride[1] = stride;
    kiln_conv2d_params conv1 = kiln_conv2d_defaults();
    conv1.stride[0] = conv1.stride[1] = stride;
    bool ok = add(m, "conv1", &b->conv1, kiln_nn_conv2d(ctx, inplanes, planes, 3, 3, &conv3, false)) &&
              add(m, "bn1", &b->bn1, kiln_nn_batchnorm2d(ctx, planes, 1e-5f, 0.1f)) &&
              add(m, "relu", &b->relu, kiln_nn_activation(ctx, KILN_ACT_RELU, 0)) &&
              add(m, "conv2", &b->conv2, kiln_nn_conv2d(ctx, planes, planes, 3, 3, &conv3s1, false)) &&
              add(m, "bn2", &b->bn2, kiln_nn_batchnorm2d(ctx, planes, 1e-5f, 0.1f));
    if (ok && (stride != 1 || inplanes != planes))
        ok = add(m, "downsample", &b->downsample,
                 kiln_nn_sequential(ctx, 2,
                                    (kiln_module *[]){kiln_nn_conv2d(ctx, inplanes, planes, 1, 1, &conv1, false),
                                                      kiln_nn_batchnorm2d(ctx, planes, 1e-5f, 0.1f)}));
    if (!ok) {
        kiln_module_free(m); /* the children added so far go with it */
        return NULL;
    }
    return m;
}

/* A small ResNet for 1x28x28 images, named as torchvision's ResNet:
 * conv1-bn1-relu, layer1 (BasicBlock 8->8), layer2 (BasicBlock 8->16, stride 2, downsample),
 * avgpool, flatten, fc (16 -> 10). */
static kiln_module *resnet_new(kiln_ctx *ctx) {
    kiln_conv2d_params same = kiln_conv2d_defaults();
    same.padding[0] = same.padding[1] = 1;
    kiln_module *net = kiln_nn_sequential(
        ctx, 8,
        (kiln_module *[]){
            kiln_nn_conv2d(ctx, 1, 8, 3, 3, &same, false), // (B, 8, 28, 28)
            kiln_nn_batchnorm2d(ctx, 8, 1e-5f, 0.1f), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
            kiln_nn_sequential(ctx, 1, (kiln_module *[]){basic_block_new(ctx, 8, 8, 1)}),  // (B, 8, 28, 28)
            kiln_nn_sequential(ctx, 1, (kiln_module *[]){basic_block_new(ctx, 8, 16, 2)}), // (B, 16, 14, 14)
            kiln_nn_global_avgpool2d(ctx),                                                 // (B, 16, 1, 1)
            kiln_nn_flatten(ctx, 1, -1),                                                   // (B, 16)
            kiln_nn_linear(ctx, 16, 10, true)});                                           // (B, 10) logits
    static const char *const names[] = {"conv1", "bn1", "relu", "layer1", "layer2", "avgpool", "flatten", "fc"};
    for (int i = 0; net && i < 8; i++)
        if (kiln_module_set_child_name(net, i, names[i]) != KILN_OK) {
            kiln_module_free(net);
            return NULL;
        }
    return net;
}

/* ---- data --------------------------------------------------------------------------------- */

/* n synthetic 28x28 images on uniform noise, labels 0..9 in turn: class c has stripes of
 * period 2 + c % 5, horizontal for c < 5 and vertical otherwise (local patterns, which
 * convolutions followed by a global average pool can tell apart). */
static kiln_dataset *synthetic(int64_t n, uint64_t seed) {
    float *x = malloc(sizeof(float) * 784 * (size_t)n);
    int32_t *y = malloc(sizeof(int32_t) * (size_t)n);
    kiln_dataset *ds = NULL;
    if (x && y) {
        uint64_t s = seed * 2862933555777941757ull + 3037000493ull;
        for (int64_t i = 0; i < n; i++) {
            int c = (int)(i % 10);
            y[i] = c;
            for (int p = 0; p < 784; p++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                float noise = (float)(s >> 40) / (float)(1 << 24);
                int along = c < 5 ? p / 28 : p % 28, period = 2 + c % 5;
                x[i * 784 + p] = 0.5f * noise + (along % period == 0 ? 0.8f : 0.0f);
            }
        }
        ds = kiln_dataset_from_host(x, y, n, 3, (int64_t[]){1, 28, 28}, 10);
    }
    free(x);
    free(y);
    return ds;
}

/* ---- the program ---------------------------------------------------------------------------- */

static int usage(const char *prog) {
    fprintf(stderr,
            "usage: %s [--synthetic] [--steps N] [--batch N] [--lr X] [--seed N] [--data DIR] [--device SPEC] "
            "[--save PATH]\n",
            prog);
    return 2;
}

/* The mean cross-entropy of one training step (NaN on error). */
static float train_step(kiln_module *net, kiln_optim *opt, kiln_loader *l) {
    kiln_ctx *ctx = kiln_module_ctx(net);
    kiln_scope_begin(ctx);
    kiln_tensor *x, *y;
    if (!kiln_loader_next(l, &x, &y) && kiln_error_status(ctx) == KILN_OK)
        kiln_loader_next(l, &x, &y); /* the end of an epoch: the next call starts the next one */
    kiln_tensor *loss = kiln_cross_entropy(ctx, kiln_forward(net, x), y, KILN_MEAN);
    kiln_optim_zero_grad(opt);
    kiln_backward(loss);
    kiln_optim_step(opt);
    float v = kiln_error_status(ctx) == KILN_OK ? kiln_tensor_item(loss) : NAN;
    kiln_scope_end(ctx);
    return v;
}

/* Largest |a - b| of two models' eval outputs on x (NaN on error). */
static double max_abs_diff(kiln_module *a, kiln_module *b, kiln_tensor *x) {
    kiln_ctx *ctx = kiln_module_ctx(a);
    kiln_scope_begin(ctx);
    kiln_tensor *d = kiln_abs(ctx, kiln_sub(ctx, kiln_forward(a, x), kiln_forward(b, x)));
    kiln_tensor *mx = kiln_max(ctx, d, 0, NULL, false);
    double v = kiln_error_status(ctx) == KILN_OK ? kiln_tensor_item(mx) : NAN;
    kiln_scope_end(ctx);
    return v;
}

int main(int argc, char **argv) {
    bool synth = false;
    int steps = 40;
    int64_t batch = 32;
    double lr = 0.05;
    uint64_t seed = 1;
    const char *data = NULL, *device = NULL, *save = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "--synthetic"))
            synth = true;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return usage(argv[0]) - 2;
        else if (!v)
            return usage(argv[0]);
        else if (!strcmp(a, "--steps"))
            steps = (int)strtol(v, &end, 10), i++;
        else if (!strcmp(a, "--batch"))
            batch = strtoll(v, &end, 10), i++;
        else if (!strcmp(a, "--lr"))
            lr = strtod(v, &end), i++;
        else if (!strcmp(a, "--seed"))
            seed = strtoull(v, &end, 10), i++;
        else if (!strcmp(a, "--data"))
            data = v, i++;
        else if (!strcmp(a, "--device"))
            device = v, i++;
        else if (!strcmp(a, "--save"))
            save = v, i++;
        else
            return usage(argv[0]);
        if (end && (*end || steps < 10 || batch < 1 || !(lr > 0))) {
            fprintf(stderr, "%s: bad value '%s' for %s (--steps >= 10, --batch >= 1, --lr > 0)\n", argv[0], v, a);
            return 2;
        }
    }

    kiln_ctx *ctx;
    if (kiln_open(&ctx, device) != KILN_OK) {
        fprintf(stderr, "%s: %s\n", argv[0], kiln_last_error());
        return 1;
    }
    int rc = 1;
    kiln_module *net = NULL, *copy = NULL;
    kiln_optim *opt = NULL;
    kiln_dataset *ds = NULL;
    kiln_loader *loader = NULL;
    kiln_tensor **params = NULL;
    char *text = malloc(1 << 15);
    char path[512];
    if (save)
        snprintf(path, sizeof path, "%s", save);
    else
        snprintf(path, sizeof path, "%s/kiln_residual_%ld.safetensors", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                 (long)getpid());
#define FAIL(...)                                                                                                      \
    do {                                                                                                               \
        fprintf(stderr, "%s: ", argv[0]);                                                                              \
        fprintf(stderr, __VA_ARGS__);                                                                                  \
        fputc('\n', stderr);                                                                                           \
        goto done;                                                                                                     \
    } while (0)

    kiln_manual_seed(ctx, seed);
    net = resnet_new(ctx);
    if (!net || !text) FAIL("building the model: %s", kiln_error_message(ctx));
    printf("model: %s\n", kiln_module_describe(net, text, 1 << 15));
    int nstate = kiln_module_state(net, NULL, 0);
    kiln_named_tensor *st = malloc(sizeof *st * (size_t)nstate);
    if (!st) FAIL("out of host memory");
    kiln_module_state(net, st, nstate);
    printf("state_dict (%d entries, PyTorch's keys): %s, %s, ..., %s\n", nstate, st[0].name, st[1].name,
           st[nstate - 1].name);
    for (int k = 0; k < nstate; k++)
        if (strstr(st[k].name, "downsample")) printf("  %s\n", st[k].name);
    free(st);

    ds = synth ? synthetic(2000, seed) : kiln_fashion_mnist(data, true);
    if (!ds) FAIL("%s%s", kiln_last_error(), synth ? "" : " (--synthetic trains without the dataset)");
    printf("data: %s, %lld images\n", synth ? "synthetic bars" : "Fashion-MNIST",
           (long long)kiln_dataset_num_samples(ds));
    kiln_loader_opts lo = kiln_loader_defaults();
    lo.batch_size = batch;
    lo.shuffle = true;
    lo.seed = seed;
    lo.scale = synth ? 1.0f : 1.0f / 255;
    loader = kiln_loader_new(ctx, ds, &lo);
    int np = kiln_module_parameters(net, NULL, 0);
    params = malloc(sizeof *params * (size_t)np);
    if (!loader || !params) FAIL("%s", kiln_error_message(ctx));
    kiln_module_parameters(net, params, np);
    kiln_sgd_opts so = kiln_sgd_defaults();
    so.lr = lr;
    so.momentum = 0.9;
    opt = kiln_sgd(ctx, params, np, &so);
    if (!opt) FAIL("%s", kiln_error_message(ctx));

    double first = 0, last = 0;
    for (int s = 0; s < steps; s++) {
        float l = train_step(net, opt, loader);
        if (!isfinite(l)) FAIL("step %d: loss %g: %s", s, l, kiln_error_message(ctx));
        if (s < 5) first += l / 5.0;
        if (s >= steps - 5) last += l / 5.0;
        if (s % 10 == 0 || s == steps - 1) printf("step %d: loss %.4f\n", s, l);
    }
    printf("loss_first=%.4f\nloss_last=%.4f\nloss_ratio=%.4f\n", first, last, last / first);

    /* save, load into a fresh model of other weights, and compare in eval mode */
    if (kiln_module_save(net, path, "examples/residual") != KILN_OK) FAIL("saving: %s", kiln_error_message(ctx));
    kiln_manual_seed(ctx, seed + 1);
    copy = resnet_new(ctx);
    if (!copy) FAIL("%s", kiln_error_message(ctx));
    kiln_module_train(net, false);
    kiln_module_train(copy, false);
    kiln_scope_begin(ctx);
    kiln_tensor *x, *y;
    if (!kiln_loader_next(loader, &x, &y) && !kiln_loader_next(loader, &x, &y))
        FAIL("a batch to compare: %s", kiln_error_message(ctx));
    kiln_tensor_keep(x);
    kiln_scope_end(ctx);
    double before = max_abs_diff(net, copy, x);
    kiln_load_report rep;
    if (kiln_module_load(copy, path, true, &rep) != KILN_OK) FAIL("loading: %s", kiln_error_message(ctx));
    double after = max_abs_diff(net, copy, x);
    kiln_tensor_free(x);
    printf("saved %s; loaded %d tensors strictly into a fresh model\n", path, rep.loaded);
    printf("state_entries=%d\nfresh_max_abs_diff=%.6g\nload_max_abs_diff=%.6g\n", nstate, before, after);
    if (!isfinite(before) || !isfinite(after)) FAIL("comparing: %s", kiln_error_message(ctx));
    rc = 0;
done:
    if (!save) remove(path);
    kiln_optim_free(opt);
    free(params);
    kiln_loader_free(loader);
    kiln_dataset_free(ds);
    kiln_module_free(net);
    kiln_module_free(copy);
    free(text);
    kiln_close(ctx);
    return rc;
}
