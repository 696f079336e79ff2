/* examples/linear_regression.c - the smallest training loop: fit y = w x + b to points of
 * y = 3x + noise with one Linear(1, 1) layer, mean squared error and SGD, written out by
 * hand (no kiln_fit) to show every step.
 *
 *   build/examples/linear_regression [--epochs N] [--lr X] [--batch N] [--optimizer sgd|adam]
 *                                    [--seed N] [--device SPEC] [--save PATH] [--load PATH]
 *
 * The last line printed is "weight=W bias=B" (expect W close to 3 and B close to 0).
 */
#include "common.h"

#define N_POINTS 512
#define NOISE_STD 0.1

/* A host RNG for the data (the model's initialisation comes from the context's RNG). */
static double uniform01(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) / 9007199254740992.0;
}

int main(int argc, char **argv) {
    const char *prog = "linear_regression";
    ex_opts o = {.epochs = 40, .batch = 32, .lr = 0.1, .momentum = 0, .optimizer = "sgd", .seed = 1};
    int rc = ex_parse(argc, argv, prog, "fits y = w x + b to 512 noisy points of y = 3x with one Linear(1, 1)", 0, &o);
    if (rc >= 0) return rc;

    /* the data: x uniform in [-1, 1], y = 3x + N(0, 0.1^2) (Box-Muller) */
    static float xs[N_POINTS], ys[N_POINTS];
    uint64_t s = o.seed * 0x9E3779B97F4A7C15ULL + 1;
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < N_POINTS; i++) {
        double x = 2 * uniform01(&s) - 1;
        double u1 = uniform01(&s), u2 = uniform01(&s);
        double noise = sqrt(-2 * log(1 - u1)) * cos(6.283185307179586 * u2) * NOISE_STD;
        xs[i] = (float)x;
        ys[i] = (float)(3 * x + noise);
        sx += xs[i], sy += ys[i], sxx += (double)xs[i] * xs[i], sxy += (double)xs[i] * ys[i];
    }
    /* the least-squares answer the training should approach */
    double ls_w = (N_POINTS * sxy - sx * sy) / (N_POINTS * sxx - sx * sx), ls_b = (sy - ls_w * sx) / N_POINTS;

    kiln_ctx *ctx = ex_open(prog, &o);
    if (!ctx) return 1;
    kiln_manual_seed(ctx, o.seed);
    kiln_module *model = kiln_nn_linear(ctx, 1, 1, true);
    kiln_optim *opt = model ? ex_optimizer(ctx, model, &o) : NULL;
    kiln_tensor *w = kiln_module_find(model, "weight"), *b = kiln_module_find(model, "bias");
    rc = 1;
    if (!opt || !w || !b) goto fail;
    if (o.load && kiln_module_load(model, o.load, true, NULL) != KILN_OK) goto fail;
    printf("%d points of y = 3x + N(0, %g^2); least squares: weight=%.4f bias=%.4f\n", N_POINTS, NOISE_STD, ls_w, ls_b);

    for (int epoch = 1; epoch <= o.epochs; epoch++) {
        double sum = 0;
        int batches = 0;
        for (int64_t start = 0; start < N_POINTS; start += o.batch) {
            int64_t n = N_POINTS - start < o.batch ? N_POINTS - start : o.batch;
            kiln_scope_begin(ctx); /* everything made until scope_end is freed there */
            kiln_tensor *x = kiln_from_host(ctx, xs + start, KILN_F32, 2, (int64_t[]){n, 1}); // (n, 1)
            kiln_tensor *y = kiln_from_host(ctx, ys + start, KILN_F32, 2, (int64_t[]){n, 1}); // (n, 1)
            kiln_tensor *loss = kiln_mse_loss(ctx, kiln_forward(model, x), y, KILN_MEAN);     // ()
            kiln_optim_zero_grad(opt);
            kiln_backward(loss);
            kiln_optim_step(opt);
            float l = kiln_tensor_item(loss); /* the one wait for the device in a step */
            kiln_scope_end(ctx);
            if (kiln_error_status(ctx) != KILN_OK) goto fail;
            sum += l;
            batches++;
        }
        if (epoch == 1 || epoch % 10 == 0 || epoch == o.epochs) {
            float wv = kiln_tensor_item(w), bv = kiln_tensor_item(b);
            printf("epoch %3d  loss %.5f  weight %.4f  bias %.4f\n", epoch, sum / batches, wv, bv);
        }
    }
    float wv = kiln_tensor_item(w), bv = kiln_tensor_item(b);
    if (kiln_error_status(ctx) != KILN_OK) goto fail;
    if (o.save) {
        if (kiln_module_save(model, o.save, "linear_regression") != KILN_OK) goto fail;
        printf("saved the model to %s\n", o.save);
    }
    printf("weight=%.4f bias=%.4f\n", wv, bv);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "%s: %s\n", prog, kiln_error_message(ctx));
done:
    kiln_optim_free(opt);
    kiln_module_free(model);
    kiln_close(ctx);
    return rc;
}
