/* examples/mlp_fashion.c - a multi-layer perceptron on Fashion-MNIST: 784-512-256-10 with
 * ReLU, Adam (lr 1e-3), batch 64, trained with kiln_fit and evaluated on the 10000 test
 * images with a confusion matrix. The same model as the PyTorch reference's "mlp"
 * (torch_ref.py, shared/bench/ beside this repository); its layers are named fc1, fc2, fc3,
 * so checkpoints load into that PyTorch class.
 *
 *   build/examples/mlp_fashion [--epochs N] [--batch N] [--lr X] [--optimizer sgd|adam] ...
 *   mpirun -np 2 build/examples/mlp_fashion --distributed   # data-parallel, a shard per rank
 *   build/examples/mlp_fashion --help
 *
 * The last line printed is "test_accuracy=0.XXXX".
 */
#include "common.h"

static kiln_module *build_mlp(kiln_ctx *ctx) {
    /* tiny (ex_tiny): hidden layers 16 and 8 wide */
    bool t = ex_tiny();
    int64_t h1 = t ? 16 : 512, h2 = t ? 8 : 256;
    kiln_module *net = kiln_nn_sequential(ctx, 6,
                                          (kiln_module *[]){kiln_nn_flatten(ctx, 1, -1), // (B, 1, 28, 28) -> (B, 784)
                                                            kiln_nn_linear(ctx, 784, h1, true), // (B, 512)
                                                            kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                            kiln_nn_linear(ctx, h1, h2, true), // (B, 256)
                                                            kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                            kiln_nn_linear(ctx, h2, 10, true)}); // (B, 10) logits
    static const char *const names[] = {"flatten", "fc1", "relu1", "fc2", "relu2", "fc3"};
    for (int i = 0; net && i < 6; i++) kiln_module_set_child_name(net, i, names[i]);
    return net;
}

int main(int argc, char **argv) {
    ex_classifier spec = {
        .prog = "mlp_fashion",
        .what = "trains a 784-512-256-10 ReLU perceptron on Fashion-MNIST and evaluates it on the test set",
        .build = build_mlp,
        .defaults = {.epochs = 5,
                     .batch = 64,
                     .lr = NAN,
                     .momentum = 0.9,
                     .optimizer = "adam",
                     .seed = 1,
                     .progress = true,
                     .eval_batch = 250},
    };
    return ex_classifier_main(argc, argv, &spec);
}
