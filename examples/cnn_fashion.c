/* examples/cnn_fashion.c - a convolutional network on Fashion-MNIST, PyTorch's MNIST
 * example network: conv(1,32,3)-ReLU-conv(32,64,3)-ReLU-maxpool2-dropout(.25)-flatten-
 * linear(9216,128)-ReLU-dropout(.5)-linear(128,10), SGD lr 0.01 momentum 0.9, batch 64,
 * inputs x/255 shuffled each epoch: the recipe of the PyTorch reference's "cnn" (torch_ref.py,
 * shared/bench/ beside this repository). Its layers
 * are named as that PyTorch class's attributes (conv1, conv2, fc1, fc2), so a checkpoint
 * saved here loads into it and back (tools/kiln_torch.py).
 *
 *   build/examples/cnn_fashion [--epochs N] [--batch N] [--lr X] [--optimizer sgd|adam] ...
 *   build/examples/cnn_fashion --dropout 0.3 ...    # the second dropout's rate, the first's is half
 *   mpirun -np 2 build/examples/cnn_fashion --distributed   # data-parallel, a shard per rank
 *   build/examples/cnn_fashion --load model.safetensors --epochs 0    # evaluate only
 *   build/examples/cnn_fashion --amp    # mixed precision (f16 autocast and loss scaling, kiln/amp.h)
 *
 * The last line printed is "test_accuracy=0.XXXX".
 */
#include "common.h"

/* --dropout P: the rate of the dropout before fc2 (the reference's 0.5); the one after the
 * convolutions gets P/2 (the reference's 0.25). */
static double dropout = 0.5;

static kiln_module *build_cnn(kiln_ctx *ctx) {
    /* tiny (ex_tiny): 4 and 8 channels and 16 hidden units */
    bool t = ex_tiny();
    int64_t c1 = t ? 4 : 32, c2 = t ? 8 : 64, h = t ? 16 : 128;
    kiln_module *net = kiln_nn_sequential(
        ctx, 11,
        (kiln_module *[]){kiln_nn_conv2d(ctx, 1, c1, 3, 3, NULL, true), // (B, 1, 28, 28) -> (B, 32, 26, 26)
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv2d(ctx, c1, c2, 3, 3, NULL, true), // (B, 64, 24, 24)
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_maxpool2d(ctx, (kiln_pool2d_params[]){kiln_pool2d_defaults(2, 2)}), // (B, 64, 12, 12)
                          kiln_nn_dropout(ctx, (float)dropout / 2), kiln_nn_flatten(ctx, 1, -1),      // (B, 9216)
                          kiln_nn_linear(ctx, c2 * 12 * 12, h, true),                                 // (B, 128)
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_dropout(ctx, (float)dropout),
                          kiln_nn_linear(ctx, h, 10, true)}); // (B, 10) logits
    static const char *const names[] = {"conv1",   "relu1", "conv2", "relu2", "pool", "drop1",
                                        "flatten", "fc1",   "relu3", "drop2", "fc2"};
    for (int i = 0; net && i < 11; i++) kiln_module_set_child_name(net, i, names[i]);
    return net;
}

int main(int argc, char **argv) {
    /* --dropout and --amp are this program's own flags: taken out of argv before the common
     * parser */
    int n = 1;
    bool help = false, amp = false;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        if (!strcmp(argv[i], "--amp")) {
            amp = true;
            continue;
        }
        if (!strcmp(argv[i], "--dropout") && i + 1 < argc)
            v = argv[++i];
        else if (!strncmp(argv[i], "--dropout=", 10))
            v = argv[i] + 10;
        else if (!strcmp(argv[i], "--dropout")) {
            fprintf(stderr, "cnn_fashion: --dropout needs a value\n");
            return 2;
        } else {
            help |= !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
            argv[n++] = argv[i];
            continue;
        }
        if (!ex_parse_f64(v, 0, 0.99, &dropout)) {
            fprintf(stderr, "cnn_fashion: invalid value '%s' for --dropout\n", v);
            return 2;
        }
    }
    argc = n;
    ex_classifier spec = {
        .prog = "cnn_fashion",
        .what = "trains a two-convolution network on Fashion-MNIST and evaluates it on the test set",
        .build = build_cnn,
        .defaults = {.epochs = 3,
                     .batch = 64,
                     .lr = NAN,
                     .momentum = 0.9,
                     .optimizer = "sgd",
                     .seed = 1,
                     .progress = true,
                     .eval_batch = 250},
        .amp = amp ? KILN_F16 : KILN_F32,
    };
    int rc = ex_classifier_main(argc, argv, &spec);
    if (help) {
        printf("  --dropout P        dropout before fc2; the one after the convolutions is P/2 [0.5]\n");
        printf("  --amp              mixed precision: f16 autocast, dynamic loss scaling (kiln/amp.h) [off]\n");
    }
    return rc;
}
