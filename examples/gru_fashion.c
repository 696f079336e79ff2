/* examples/gru_fashion.c - a GRU that reads each Fashion-MNIST image row by row: 28 steps of
 * the 28 pixels of a row, hidden size 128, and a linear layer from the last step's hidden
 * state to the 10 classes: the recipe of tools/gru_fashion_torch.py (pixels x/255 normalised
 * with the training set's mean and standard deviation, Adam lr 1e-3, batch 64, shuffled
 * every epoch, 6 epochs). Fashion-MNIST's benchmark table lists GRUs at 0.888-0.897.
 * Parameters are named as that script's RowGRU (gru.weight_ih_l0, ..., fc.bias), so a
 * checkpoint saved here loads into it.
 *
 *   build/examples/gru_fashion [--epochs N] [--batch N] [--lr X] [--save PATH] ...
 *
 * It prints the test accuracy after every epoch (unless --val holds out a validation set
 * to follow instead); the last line printed is "test_accuracy=0.XXXX".
 */
#include "common.h"

typedef struct row_gru {
    kiln_module *gru, *fc;
    int64_t hidden, layers;
} row_gru;

/* x [B, 1, 28, 28] (the loader's images) -> logits [B, 10] */
static kiln_status row_gru_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    row_gru *s = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    const int64_t *shape = kiln_tensor_shape(in[0]);
    /* [B, 28 rows as steps, 28 pixels as features] */
    kiln_tensor *x = kiln_reshape(ctx, in[0], 3, (int64_t[]){shape[0], 28, 28}), *y = NULL, *h = NULL;
    if (!x) return kiln_error_status(ctx);
    kiln_status st = kiln_nn_rnn_forward(s->gru, x, NULL, NULL, NULL, &y, &h, NULL);
    if (st != KILN_OK) return st;
    /* h_n [layers, B, hidden]: the top layer's last state */
    kiln_tensor *top = kiln_squeeze(ctx, kiln_slice(ctx, h, 0, s->layers - 1, s->layers, 1), 0);
    out[0] = kiln_forward(s->fc, top);
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

static kiln_module *build_gru(kiln_ctx *ctx) {
    static const kiln_module_def def = {
        .kind = "RowGRU", .state_size = sizeof(row_gru), .forward = row_gru_forward, .num_inputs = 1, .num_outputs = 1};
    kiln_module *m = kiln_module_new(ctx, &def);
    if (!m) return NULL;
    row_gru *s = kiln_module_data(m);
    s->hidden = ex_tiny() ? 16 : 128; /* KILN_EXAMPLE_TINY: the same program at a fraction of the work */
    s->layers = 1;
    kiln_rnn_params rp = kiln_rnn_defaults();
    rp.num_layers = (int)s->layers, rp.batch_first = true;
    if (kiln_module_add_child(m, "gru", s->gru = kiln_nn_gru(ctx, 28, s->hidden, &rp)) != KILN_OK ||
        kiln_module_add_child(m, "fc", s->fc = kiln_nn_linear(ctx, s->hidden, 10, true)) != KILN_OK) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

int main(int argc, char **argv) {
    ex_classifier spec = {
        .prog = "gru_fashion",
        .what = "trains a GRU reading Fashion-MNIST images row by row and evaluates it on the test set",
        .build = build_gru,
        .defaults = {.epochs = 6,
                     .batch = 64,
                     .lr = 1e-3,
                     .momentum = 0,
                     .optimizer = "adam",
                     .seed = 1,
                     .progress = true,
                     .eval_batch = 1000},
        .normalize = true,
    };
    /* the test accuracy after every epoch, as the reference prints it, unless a validation
     * set is asked for (the two exclude each other) */
    bool val = false;
    for (int i = 1; i < argc; i++) val |= !strncmp(argv[i], "--val", 5) && (argv[i][5] == '\0' || argv[i][5] == '=');
    spec.defaults.test_each_epoch = !val;
    return ex_classifier_main(argc, argv, &spec);
}
