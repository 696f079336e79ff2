/* examples/vit_fashion.c - a small vision Transformer (Dosovitskiy et al., "An Image is Worth
 * 16x16 Words") on Fashion-MNIST: each 28x28 image cut into the 16 patches of 7x7 pixels
 * (reshape and permute), each patch projected linearly to width 64, a learned class token
 * put in front, learned positions added, 4 pre-norm encoder layers (4 heads, GELU MLP of
 * 128, no dropout), a final LayerNorm, and a linear layer from the class token's output to
 * the 10 classes. Pixels x/255 normalised with the training set's mean and standard
 * deviation; Adam lr 1e-3, batch 64, shuffled every epoch.
 *
 *   build/examples/vit_fashion [--epochs N] [--batch N] [--lr X] [--limit N] [--save PATH] ...
 *
 * It prints the test accuracy after every epoch (unless --val holds out a validation set
 * to follow instead); the last line printed is "test_accuracy=0.XXXX". Parameters are
 * named as a torch module with children patch_embed, encoder (nn.TransformerEncoder,
 * batch_first, norm_first), pos_embed and head, and a parameter cls_token [1, 1, 64].
 */
#include "common.h"

enum { IMG = 28, PATCH = 7, GRID = IMG / PATCH, TOKENS = GRID * GRID + 1 };

typedef struct vit {
    kiln_module *patch_embed, *pos_embed, *encoder, *head;
    kiln_tensor *cls_token; /* [1, 1, width] */
    int64_t width;
} vit;

/* x [B, 1, 28, 28] (the loader's images) -> logits [B, 10] */
static kiln_status vit_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    vit *s = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    int64_t B = kiln_tensor_shape(in[0])[0], D = s->width;
    /* [B, grid row, pixel row, grid column, pixel column] -> [B, grid row, grid column,
     * pixel row, pixel column] -> [B, 16 patches in row-major order, 49 pixels] */
    kiln_tensor *x = kiln_reshape(ctx, in[0], 5, (int64_t[]){B, GRID, PATCH, GRID, PATCH});
    x = kiln_permute(ctx, x, (int[]){0, 1, 3, 2, 4});
    x = kiln_reshape(ctx, x, 3, (int64_t[]){B, GRID * GRID, PATCH * PATCH});
    if (!x) return kiln_error_status(ctx);
    kiln_tensor *tokens = kiln_forward(s->patch_embed, x); /* [B, 16, D] */
    kiln_tensor *cls = kiln_expand(ctx, s->cls_token, 3, (int64_t[]){B, 1, D});
    if (!tokens || !cls) return kiln_error_status(ctx);
    kiln_tensor *seq = kiln_concat(ctx, 2, (kiln_tensor *[]){cls, tokens}, 1); /* [B, 17, D] */
    if (!seq) return kiln_error_status(ctx);
    kiln_tensor *h = kiln_nn_encoder_forward(s->encoder, kiln_forward(s->pos_embed, seq), NULL);
    if (!h) return kiln_error_status(ctx);
    /* the class token's output [B, D] */
    kiln_tensor *c = kiln_squeeze(ctx, kiln_slice(ctx, h, 1, 0, 1, 1), 1);
    out[0] = kiln_forward(s->head, c);
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

static kiln_module *build_vit(kiln_ctx *ctx) {
    static const kiln_module_def def = {
        .kind = "ViT", .state_size = sizeof(vit), .forward = vit_forward, .num_inputs = 1, .num_outputs = 1};
    kiln_module *m = kiln_module_new(ctx, &def);
    if (!m) return NULL;
    vit *s = kiln_module_data(m);
    bool tiny = ex_tiny(); /* KILN_EXAMPLE_TINY: the same program at a fraction of the work */
    s->width = tiny ? 16 : 64;
    kiln_transformer_params tp = kiln_transformer_defaults(s->width, tiny ? 2 : 4);
    tp.dim_feedforward = 2 * s->width;
    tp.dropout = 0.0f;
    tp.activation = KILN_ACT_GELU;
    tp.batch_first = true;
    tp.norm_first = true;
    /* the class token starts at zero, as in the ViT paper's code */
    if (kiln_module_add_child(m, "patch_embed", s->patch_embed = kiln_nn_linear(ctx, PATCH * PATCH, s->width, true)) !=
            KILN_OK ||
        kiln_module_add_parameter(m, "cls_token", s->cls_token = kiln_zeros(ctx, 3, (int64_t[]){1, 1, s->width})) !=
            KILN_OK ||
        kiln_module_add_child(m, "pos_embed",
                              s->pos_embed = kiln_nn_positional_embedding(ctx, TOKENS, s->width, true)) != KILN_OK ||
        kiln_module_add_child(m, "encoder", s->encoder = kiln_nn_transformer_encoder(ctx, &tp, tiny ? 1 : 4, true)) !=
            KILN_OK ||
        kiln_module_add_child(m, "head", s->head = kiln_nn_linear(ctx, s->width, 10, true)) != KILN_OK) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

int main(int argc, char **argv) {
    ex_classifier spec = {
        .prog = "vit_fashion",
        .what = "trains a small vision Transformer (7x7 patches, class token, 4 encoder layers) on Fashion-MNIST "
                "and evaluates it on the test set",
        .build = build_vit,
        .defaults = {.epochs = 10,
                     .batch = 64,
                     .lr = 1e-3,
                     .momentum = 0,
                     .optimizer = "adam",
                     .seed = 1,
                     .progress = true,
                     .eval_batch = 1000},
        .normalize = true,
    };
    /* the test accuracy after every epoch, unless a validation set is asked for (the two
     * exclude each other) */
    bool val = false;
    for (int i = 1; i < argc; i++) val |= !strncmp(argv[i], "--val", 5) && (argv[i][5] == '\0' || argv[i][5] == '=');
    spec.defaults.test_each_epoch = !val;
    return ex_classifier_main(argc, argv, &spec);
}
