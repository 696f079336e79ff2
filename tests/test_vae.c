/* tests/test_vae.c - the variational autoencoder of examples/autoencoder_fashion: its
 * reparameterised sample and KL term, and one whole loss and backward pass, against PyTorch
 * (tests/golden/gen_vae.py), and the reparameterisation through kiln_rand_normal.
 *
 * What is checked, and how each check can fail:
 *   step      the example's model at a reduced size (8x8 images, 2 and 4 channels, latent
 *             2) with PyTorch's weights and eps: mu, logvar, z = mu + exp(logvar/2) * eps,
 *             the summed BCE, the KL, the loss, and the gradient of every parameter. The
 *             gradients of mu and logvar come from a second pass with mu and logvar as
 *             leaves. Tolerance atol 1e-5, rtol 1e-4: float sums of up to 64 terms ordered
 *             otherwise than ATen's, through exp; a wrong sign, factor 1/2 or missing term
 *             is off by O(1).
 *   kl        the KL term alone on mu, logvar including -20 and 10: value and gradients
 *             (d/dmu = mu, d/dlogvar = (exp(logvar) - 1) / 2), rtol 1e-5.
 *   rand      eps from kiln_rand_normal (it does not require grad), z = mu + exp(logvar/2)
 *             * eps and L = sum(z * w): dL/dmu = w and dL/dlogvar = w * eps * exp(logvar/2)
 *             / 2 with eps read back, against a host reference in double; a second draw
 *             differs from the first (a fresh sample per step).
 */
#include "golden.h"

/* The reduced VAE, children named as the PyTorch class's. */
static kiln_module *build(kiln_ctx *ctx) {
    kiln_conv2d_params d = kiln_conv2d_defaults();
    d.stride[0] = d.stride[1] = 2;
    d.padding[0] = d.padding[1] = 1;
    kiln_conv2d_params u = d;
    u.output_padding[0] = u.output_padding[1] = 1;
    kiln_module *m = kiln_nn_module_dict(ctx);
    kiln_nn_module_dict_set(
        m, "enc",
        kiln_nn_sequential(ctx, 5,
                           (kiln_module *[]){kiln_nn_conv2d(ctx, 1, 2, 3, 3, &d, true),
                                             kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                             kiln_nn_conv2d(ctx, 2, 4, 3, 3, &d, true),
                                             kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_flatten(ctx, 1, -1)}));
    kiln_nn_module_dict_set(m, "mu", kiln_nn_linear(ctx, 16, 2, true));
    kiln_nn_module_dict_set(m, "logvar", kiln_nn_linear(ctx, 16, 2, true));
    kiln_nn_module_dict_set(m, "dec_fc", kiln_nn_linear(ctx, 2, 16, true));
    kiln_nn_module_dict_set(m, "dec",
                            kiln_nn_sequential(ctx, 3,
                                               (kiln_module *[]){kiln_nn_conv_transpose2d(ctx, 4, 2, 3, 3, &u, true),
                                                                 kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                                 kiln_nn_conv_transpose2d(ctx, 2, 1, 3, 3, &u, true)}));
    return m;
}

/* The example's terms from mu, logvar, eps: returns the loss ((rec + kl) / B). */
static kiln_tensor *loss_from(kiln_module *m, kiln_tensor *x, kiln_tensor *mu, kiln_tensor *logvar, kiln_tensor *eps,
                              kiln_tensor **z, kiln_tensor **rec, kiln_tensor **kl) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    *z = kiln_add(ctx, mu, kiln_mul(ctx, kiln_exp(ctx, kiln_mul_scalar(ctx, logvar, 0.5f)), eps));
    kiln_tensor *h = kiln_relu(ctx, kiln_forward(kiln_module_find_child(m, "dec_fc"), *z));
    kiln_tensor *logits =
        kiln_forward(kiln_module_find_child(m, "dec"), kiln_reshape(ctx, h, 4, (int64_t[]){3, 4, 2, 2}));
    *rec = kiln_bce_with_logits(ctx, logits, x, NULL, NULL, KILN_SUM);
    kiln_tensor *t =
        kiln_sub(ctx, kiln_add_scalar(ctx, logvar, 1.0f), kiln_add(ctx, kiln_mul(ctx, mu, mu), kiln_exp(ctx, logvar)));
    *kl = kiln_mul_scalar(ctx, kiln_sum(ctx, t, 0, NULL, false), -0.5f);
    return kiln_mul_scalar(ctx, kiln_add(ctx, *rec, *kl), 1.0f / 3);
}

static void compare_scalar(const char *what, kiln_tensor *got, const golden_tensor *ref) {
    if (!got || !ref) {
        CHECK(0, "%s: missing", what);
        return;
    }
    kiln_tensor *v = kiln_reshape(kiln_tensor_ctx(got), got, 1, (int64_t[]){1});
    golden_compare(what, v, ref, 1e-5, 1e-4);
    kiln_tensor_free(v);
}

static void test_step(kiln_ctx *ctx, golden *g) {
    kiln_module *m = build(ctx);
    CHECK(m != NULL, "build: %s", kiln_error_message(ctx));
    if (!m) return;
    kiln_named_tensor st[32];
    int n = kiln_module_state(m, st, 32);
    CHECK(n == 14, "%d state tensors", n);
    char key[4700];
    for (int i = 0; i < n && i < 32; i++) {
        snprintf(key, sizeof key, "step.%s", st[i].name);
        const golden_tensor *w = golden_get(g, key);
        if (w) CHECK(kiln_copy_from_host(st[i].tensor, w->f, sizeof(float) * (size_t)w->numel) == KILN_OK, "%s", key);
    }
    kiln_scope_begin(ctx);
    kiln_tensor *x = golden_upload(ctx, golden_get(g, "step.x")), *eps = golden_upload(ctx, golden_get(g, "step.eps"));
    kiln_tensor *h = kiln_forward(kiln_module_find_child(m, "enc"), x);
    kiln_tensor *mu = kiln_forward(kiln_module_find_child(m, "mu"), h);
    kiln_tensor *logvar = kiln_forward(kiln_module_find_child(m, "logvar"), h);
    kiln_tensor *z, *rec, *kl;
    kiln_tensor *loss = loss_from(m, x, mu, logvar, eps, &z, &rec, &kl);
    CHECK(kiln_backward(loss) == KILN_OK, "backward: %s", kiln_error_message(ctx));
    golden_compare("mu", mu, golden_get(g, "step.mu"), 1e-5, 1e-4);
    golden_compare("logvar", logvar, golden_get(g, "step.logvar"), 1e-5, 1e-4);
    golden_compare("z", z, golden_get(g, "step.z"), 1e-5, 1e-4);
    compare_scalar("rec", rec, golden_get(g, "step.rec"));
    compare_scalar("kl", kl, golden_get(g, "step.kl"));
    compare_scalar("loss", loss, golden_get(g, "step.loss"));
    for (int i = 0; i < n && i < 32; i++) {
        snprintf(key, sizeof key, "step.grad.%s", st[i].name);
        golden_compare(key, kiln_tensor_grad(st[i].tensor), golden_get(g, key), 1e-5, 1e-4);
    }
    /* mu and logvar as leaves: their gradients */
    kiln_tensor *mu2 = golden_upload(ctx, golden_get(g, "step.mu"));
    kiln_tensor *lv2 = golden_upload(ctx, golden_get(g, "step.logvar"));
    kiln_tensor_set_requires_grad(mu2, true);
    kiln_tensor_set_requires_grad(lv2, true);
    loss = loss_from(m, x, mu2, lv2, eps, &z, &rec, &kl);
    CHECK(kiln_backward(loss) == KILN_OK, "backward: %s", kiln_error_message(ctx));
    golden_compare("grad mu", kiln_tensor_grad(mu2), golden_get(g, "step.grad.mu"), 1e-5, 1e-4);
    golden_compare("grad logvar", kiln_tensor_grad(lv2), golden_get(g, "step.grad.logvar"), 1e-5, 1e-4);
    kiln_scope_end(ctx);
    kiln_module_free(m);
    CHECK_OK(ctx);
}

static void test_kl(kiln_ctx *ctx, golden *g) {
    kiln_scope_begin(ctx);
    kiln_tensor *mu = golden_upload(ctx, golden_get(g, "kl.mu")), *lv = golden_upload(ctx, golden_get(g, "kl.logvar"));
    kiln_tensor_set_requires_grad(mu, true);
    kiln_tensor_set_requires_grad(lv, true);
    kiln_tensor *t =
        kiln_sub(ctx, kiln_add_scalar(ctx, lv, 1.0f), kiln_add(ctx, kiln_mul(ctx, mu, mu), kiln_exp(ctx, lv)));
    kiln_tensor *kl = kiln_mul_scalar(ctx, kiln_sum(ctx, t, 0, NULL, false), -0.5f);
    CHECK(kiln_backward(kl) == KILN_OK, "kl backward: %s", kiln_error_message(ctx));
    kiln_tensor *v = kiln_reshape(ctx, kl, 1, (int64_t[]){1});
    golden_compare("kl value", v, golden_get(g, "kl.out"), 1e-6, 1e-5);
    golden_compare("kl d/dmu", kiln_tensor_grad(mu), golden_get(g, "kl.gmu"), 1e-6, 1e-5);
    golden_compare("kl d/dlogvar", kiln_tensor_grad(lv), golden_get(g, "kl.glogvar"), 1e-6, 1e-5);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void test_rand(kiln_ctx *ctx) {
    enum { B = 16, L = 8, N = B * L };
    float muh[N], lvh[N], wh[N];
    h_fill(muh, N, -2, 2);
    h_fill(lvh, N, -3, 3);
    h_fill(wh, N, -1, 1);
    kiln_scope_begin(ctx);
    const int64_t shape[2] = {B, L};
    kiln_tensor *mu = kiln_from_host(ctx, muh, KILN_F32, 2, shape), *lv = kiln_from_host(ctx, lvh, KILN_F32, 2, shape);
    kiln_tensor *w = kiln_from_host(ctx, wh, KILN_F32, 2, shape);
    kiln_tensor_set_requires_grad(mu, true);
    kiln_tensor_set_requires_grad(lv, true);
    kiln_manual_seed(ctx, 7);
    kiln_tensor *eps = kiln_rand_normal(ctx, 0, 1, 2, shape), *eps2 = kiln_rand_normal(ctx, 0, 1, 2, shape);
    CHECK(!kiln_tensor_requires_grad(eps), "eps requires grad");
    kiln_tensor *z = kiln_add(ctx, mu, kiln_mul(ctx, kiln_exp(ctx, kiln_mul_scalar(ctx, lv, 0.5f)), eps));
    kiln_tensor *l = kiln_sum(ctx, kiln_mul(ctx, z, w), 0, NULL, false);
    CHECK(kiln_backward(l) == KILN_OK, "backward: %s", kiln_error_message(ctx));
    float *e = h_read(eps), *e2 = h_read(eps2), *gmu = h_read(kiln_tensor_grad(mu)),
          *glv = h_read(kiln_tensor_grad(lv));
    float *zh = h_read(z);
    double rmu[N], rlv[N], rz[N];
    int same = 0;
    for (int i = 0; i < N; i++) {
        double s = exp(0.5 * lvh[i]);
        rz[i] = muh[i] + s * e[i];
        rmu[i] = wh[i];
        rlv[i] = wh[i] * e[i] * s * 0.5;
        same += e[i] == e2[i];
    }
    h_compare("z from rand_normal", zh, rz, N, 1e-6, 1e-5);
    h_compare("d/dmu through rand_normal", gmu, rmu, N, 0, 0);
    h_compare("d/dlogvar through rand_normal", glv, rlv, N, 1e-6, 1e-5);
    CHECK(same == 0, "%d of %d elements equal in two draws", same, N);
    free(e), free(e2), free(gmu), free(glv), free(zh);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static golden gv;

static void run(kiln_ctx *ctx) {
    test_step(ctx, &gv);
    test_kl(ctx, &gv);
    test_rand(ctx);
}

int main(void) {
    if (!golden_open(&gv, "vae")) return 1;
    H_FOR_EACH_DEVICE(run);
    golden_close(&gv);
    return h_finish();
}
