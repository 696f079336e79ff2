/* tests/test_gan.c - examples/gan_fashion's training step against PyTorch
 * (tests/golden/gen_gan.py), and kiln_frechet_distance against references computed here.
 *
 * What is checked, and how each check can fail:
 *   step      the example's G and D (torch_ref.py's dcgan) at a reduced size (channels 4
 *             and 8, noise 8, batch 5) from PyTorch's weights, with PyTorch's real images
 *             and noise; two steps of: D update on D(real) and D(fake detached), G update
 *             on D(fake) through the updated D, Adam(2e-4, betas 0.5/0.999), for the lsgan
 *             and the bce losses. Per step: both losses; D's gradients after D's backward
 *             and G's after G's backward (atol 1e-5, rtol 1e-4: float sums ordered
 *             otherwise than ATen's; a wrong target, factor 0.5, missing detach or D not
 *             yet updated is off by O(1)); then every parameter and running statistic of
 *             both networks (atol 1e-6, rtol 1e-5: Adam's first steps move each weight by
 *             about lr = 2e-4, so a wrong sign, beta or bias correction is off by > 1e-5).
 *             The three biases just before a BatchNorm are left out of the optimizers on
 *             both sides (gen_gan.py says why); their gradients are still compared (~0).
 *   frechet   kiln_frechet_distance against closed forms in double: 0 for equal Gaussians;
 *             sum (mu1 - mu2)^2 + sum (sqrt a - sqrt b)^2 for covariances R diag(a) R^T and
 *             R diag(b) R^T of one random rotation R (d 1, 7 and 128, eigenvalues spread
 *             over 1e-6..1e3 and some exactly 0); for two non-commuting 2 x 2 covariances,
 *             tr sqrt(A B) = sqrt(tr(A B) + 2 sqrt(det A det B)); symmetry in its arguments
 *             on random full-rank covariances (d 40); and its errors (NULL, d out of range,
 *             NaN, a non-symmetric covariance).
 */
#include <math.h>

#include "golden.h"

#define C1 4
#define C2 8
#define ZD 8
#define B 5
#define LR 2e-4

/* ---- the models (examples/gan_fashion.c's, smaller) ----------------------------------- */

static kiln_status unflatten_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    kiln_ctx *ctx = kiln_module_ctx(m);
    out[0] = kiln_reshape(ctx, in[0], 4, (int64_t[]){kiln_tensor_shape(in[0])[0], C2, 7, 7});
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

static kiln_module *build_g(kiln_ctx *ctx) {
    static const kiln_module_def unflatten = {
        .kind = "Unflatten", .forward = unflatten_forward, .num_inputs = 1, .num_outputs = 1};
    kiln_conv2d_params u = kiln_conv2d_defaults();
    u.stride[0] = u.stride[1] = 2;
    u.padding[0] = u.padding[1] = 1;
    return kiln_nn_sequential(
        ctx, 9,
        (kiln_module *[]){kiln_nn_linear(ctx, ZD, C2 * 49, true), kiln_nn_batchnorm1d(ctx, C2 * 49, 1e-5f, 0.1f),
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_module_new(ctx, &unflatten),
                          kiln_nn_conv_transpose2d(ctx, C2, C1, 4, 4, &u, true),
                          kiln_nn_batchnorm2d(ctx, C1, 1e-5f, 0.1f), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv_transpose2d(ctx, C1, 1, 4, 4, &u, true),
                          kiln_nn_activation(ctx, KILN_ACT_TANH, 0)});
}

static kiln_module *build_d(kiln_ctx *ctx) {
    kiln_conv2d_params d = kiln_conv2d_defaults();
    d.stride[0] = d.stride[1] = 2;
    d.padding[0] = d.padding[1] = 1;
    return kiln_nn_sequential(ctx, 7,
                              (kiln_module *[]){kiln_nn_conv2d(ctx, 1, C1, 4, 4, &d, true),
                                                kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f),
                                                kiln_nn_conv2d(ctx, C1, C2, 4, 4, &d, true),
                                                kiln_nn_batchnorm2d(ctx, C2, 1e-5f, 0.1f),
                                                kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f),
                                                kiln_nn_flatten(ctx, 1, -1), kiln_nn_linear(ctx, C2 * 49, 1, true)});
}

/* Adam over m's parameters but the one named `skip` (and `skip2`, when not NULL). */
static kiln_optim *adam(kiln_ctx *ctx, kiln_module *m, const char *skip, const char *skip2) {
    kiln_tensor *p[16];
    kiln_named_tensor st[32];
    int ns = kiln_module_state(m, st, 32), n = 0;
    for (int i = 0; i < ns && i < 32 && n < 16; i++)
        if (!st[i].is_buffer && strcmp(st[i].name, skip) != 0 && (!skip2 || strcmp(st[i].name, skip2) != 0))
            p[n++] = st[i].tensor;
    kiln_adam_opts o = kiln_adam_defaults();
    o.lr = LR, o.beta1 = 0.5, o.beta2 = 0.999;
    return kiln_adam(ctx, p, n, &o);
}

/* Copies golden <prefix><name> into every state entry of m except num_batches_tracked. */
static void load_state(kiln_module *m, const golden *g, const char *prefix) {
    kiln_named_tensor st[32];
    int n = kiln_module_state(m, st, 32);
    char key[4700];
    for (int i = 0; i < n && i < 32; i++) {
        if (strstr(st[i].name, "num_batches_tracked")) continue;
        snprintf(key, sizeof key, "%s%s", prefix, st[i].name);
        const golden_tensor *w = golden_get(g, key);
        if (w)
            CHECK(kiln_copy_from_host(st[i].tensor, w->f, sizeof(float) * (size_t)w->numel) == KILN_OK, "load %s", key);
    }
}

/* Compares every state entry of m (but num_batches_tracked) with golden
 * <loss>.<step>.<net>.<name>. */
static void compare_state(kiln_module *m, const golden *g, const char *loss, int step, const char *net) {
    kiln_named_tensor st[32];
    int n = kiln_module_state(m, st, 32);
    char key[4700], what[4700];
    for (int i = 0; i < n && i < 32; i++) {
        if (strstr(st[i].name, "num_batches_tracked")) continue;
        snprintf(key, sizeof key, "%s.%d.%s.%s", loss, step, net, st[i].name);
        snprintf(what, sizeof what, "%s step %d: %s.%s", loss, step, net, st[i].name);
        golden_compare(what, st[i].tensor, golden_get(g, key), 1e-6, 1e-5);
    }
}

static void compare_grads(kiln_module *m, const golden *g, const char *prefix, const char *what) {
    kiln_named_tensor st[32];
    int n = kiln_module_state(m, st, 32);
    char key[4700], w[4700];
    for (int i = 0; i < n && i < 32; i++) {
        if (st[i].is_buffer) continue;
        snprintf(key, sizeof key, "%s%s", prefix, st[i].name);
        snprintf(w, sizeof w, "%s %s", what, st[i].name);
        golden_compare(w, kiln_tensor_grad(st[i].tensor), golden_get(g, key), 1e-5, 1e-4);
    }
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

static void test_step(kiln_ctx *ctx, golden *g, bool bce) {
    const char *loss = bce ? "bce" : "lsgan";
    kiln_module *G = build_g(ctx), *D = build_d(ctx);
    CHECK(G && D, "build: %s", kiln_error_message(ctx));
    if (!G || !D) {
        kiln_module_free(G);
        kiln_module_free(D);
        return;
    }
    load_state(G, g, "init.G.");
    load_state(D, g, "init.D.");
    /* as gen_gan.py, the biases just before a BatchNorm are not trained here (BEFORE_BN there) */
    kiln_optim *og = adam(ctx, G, "0.bias", "4.bias"), *od = adam(ctx, D, "2.bias", NULL);
    CHECK(og && od, "adam: %s", kiln_error_message(ctx));
    char key[300], what[300];
    for (int s = 1; s <= 2 && og && od; s++) {
        kiln_scope_begin(ctx);
        snprintf(key, sizeof key, "x%d", s);
        kiln_tensor *x = golden_upload(ctx, golden_get(g, key));
        snprintf(key, sizeof key, "z%d", s);
        kiln_tensor *z = golden_upload(ctx, golden_get(g, key));
        kiln_tensor *fake = kiln_forward(G, z);
        kiln_tensor *dr = kiln_forward(D, x), *df = kiln_forward(D, kiln_detach(ctx, fake));
        int64_t sh[2] = {B, 1};
        kiln_tensor *d_loss, *g_loss;
        if (bce)
            d_loss = kiln_add(ctx, kiln_bce_with_logits(ctx, dr, kiln_ones(ctx, 2, sh), NULL, NULL, KILN_MEAN),
                              kiln_bce_with_logits(ctx, df, kiln_zeros(ctx, 2, sh), NULL, NULL, KILN_MEAN));
        else
            d_loss = kiln_mul_scalar(ctx,
                                     kiln_add(ctx, kiln_mse_loss(ctx, dr, kiln_ones(ctx, 2, sh), KILN_MEAN),
                                              kiln_mean(ctx, kiln_mul(ctx, df, df), 0, NULL, false)),
                                     0.5f);
        CHECK(kiln_optim_zero_grad(od) == KILN_OK, "zero_grad D");
        CHECK(kiln_backward(d_loss) == KILN_OK, "D backward: %s", kiln_error_message(ctx));
        snprintf(key, sizeof key, "%s.%d.dgrad.", loss, s);
        snprintf(what, sizeof what, "%s step %d: D grad", loss, s);
        compare_grads(D, g, key, what);
        CHECK(kiln_optim_step(od) == KILN_OK, "D step: %s", kiln_error_message(ctx));
        kiln_tensor *gd = kiln_forward(D, fake);
        g_loss = bce ? kiln_bce_with_logits(ctx, gd, kiln_ones(ctx, 2, sh), NULL, NULL, KILN_MEAN)
                     : kiln_mul_scalar(ctx, kiln_mse_loss(ctx, gd, kiln_ones(ctx, 2, sh), KILN_MEAN), 0.5f);
        CHECK(kiln_optim_zero_grad(og) == KILN_OK, "zero_grad G");
        CHECK(kiln_backward(g_loss) == KILN_OK, "G backward: %s", kiln_error_message(ctx));
        snprintf(key, sizeof key, "%s.%d.ggrad.", loss, s);
        snprintf(what, sizeof what, "%s step %d: G grad", loss, s);
        compare_grads(G, g, key, what);
        CHECK(kiln_optim_step(og) == KILN_OK, "G step: %s", kiln_error_message(ctx));
        snprintf(key, sizeof key, "%s.%d.d_loss", loss, s);
        snprintf(what, sizeof what, "%s step %d: d_loss", loss, s);
        compare_scalar(what, d_loss, golden_get(g, key));
        snprintf(key, sizeof key, "%s.%d.g_loss", loss, s);
        snprintf(what, sizeof what, "%s step %d: g_loss", loss, s);
        compare_scalar(what, g_loss, golden_get(g, key));
        kiln_scope_end(ctx);
        compare_state(G, g, loss, s, "G");
        compare_state(D, g, loss, s, "D");
    }
    kiln_optim_free(og);
    kiln_optim_free(od);
    kiln_module_free(G);
    kiln_module_free(D);
    CHECK_OK(ctx);
}

static golden gg;

static void run(kiln_ctx *ctx) {
    test_step(ctx, &gg, false);
    test_step(ctx, &gg, true);
}

/* ---- the Fréchet distance ------------------------------------------------------------- */

static double urand(void) { return h_uniform(0, 1); }

/* A random rotation (d x d, row-major): Gram-Schmidt of a random matrix. */
static void rotation(int d, double *r) {
    for (int i = 0; i < d * d; i++) r[i] = urand() * 2 - 1;
    for (int i = 0; i < d; i++) {
        double *ri = r + i * d;
        for (int j = 0; j < i; j++) {
            const double *rj = r + j * d;
            double dot = 0;
            for (int k = 0; k < d; k++) dot += ri[k] * rj[k];
            for (int k = 0; k < d; k++) ri[k] -= dot * rj[k];
        }
        double nn = 0;
        for (int k = 0; k < d; k++) nn += ri[k] * ri[k];
        for (int k = 0; k < d; k++) ri[k] /= sqrt(nn);
    }
}

/* c = R^T diag(a) R (the rows of R its eigenvectors), symmetric by construction. */
static void rotated(int d, const double *r, const double *a, double *c) {
    for (int i = 0; i < d; i++)
        for (int j = 0; j <= i; j++) {
            double x = 0;
            for (int k = 0; k < d; k++) x += r[k * d + i] * a[k] * r[k * d + j];
            c[i * d + j] = c[j * d + i] = x;
        }
}

static void test_frechet_rotated(int d) {
    double *r = malloc(sizeof(double) * (size_t)(d * d)), *c1 = malloc(sizeof(double) * (size_t)(d * d));
    double *c2 = malloc(sizeof(double) * (size_t)(d * d)), *a = malloc(sizeof(double) * (size_t)d);
    double *b = malloc(sizeof(double) * (size_t)d), *mu1 = malloc(sizeof(double) * (size_t)d);
    double *mu2 = malloc(sizeof(double) * (size_t)d);
    rotation(d, r);
    double ref = 0;
    for (int i = 0; i < d; i++) {
        /* eigenvalues 1e-6 .. 1e3 on a log scale; every fifth exactly 0 in one of them */
        a[i] = pow(10, -6 + 9 * urand());
        b[i] = i % 5 == 3 ? 0 : pow(10, -6 + 9 * urand());
        mu1[i] = urand() * 4 - 2;
        mu2[i] = urand() * 4 - 2;
        ref += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + (sqrt(a[i]) - sqrt(b[i])) * (sqrt(a[i]) - sqrt(b[i]));
    }
    rotated(d, r, a, c1);
    rotated(d, r, b, c2);
    double got = NAN, same = NAN;
    CHECK(kiln_frechet_distance(d, mu1, c1, mu2, c2, &got) == KILN_OK, "d %d: %s", d, kiln_last_error());
    /* rounding leaves each eigenvalue off by ~d u max(a, b) (u = 2^-53), which the square
     * root turns into up to sqrt(d u max) for eigenvalues near 0: d of them */
    double tol = d * sqrt(d * 0x1p-53 * 1e3) + 1e-12 * ref;
    CHECK(fabs(got - ref) <= tol, "d %d rotated diagonal: %.17g, reference %.17g (tolerance %.3g)", d, got, ref, tol);
    CHECK(kiln_frechet_distance(d, mu1, c1, mu1, c1, &same) == KILN_OK, "d %d same", d);
    CHECK(fabs(same) <= tol, "d %d: distance to itself %.3g", d, same);
    free(r), free(c1), free(c2), free(a), free(b), free(mu1), free(mu2);
}

static void test_frechet(void) {
    test_frechet_rotated(1);
    test_frechet_rotated(7);
    test_frechet_rotated(128);
    /* two non-commuting 2 x 2 covariances: tr sqrt(A B) = sqrt(tr(A B) + 2 sqrt(det A det B)) */
    const double A[4] = {2.0, 0.7, 0.7, 1.0}, Bm[4] = {0.5, -0.3, -0.3, 3.0};
    const double m1[2] = {0.25, -1.0}, m2[2] = {1.5, 0.5};
    double trab = A[0] * Bm[0] + A[1] * Bm[2] + A[2] * Bm[1] + A[3] * Bm[3];
    double det = (A[0] * A[3] - A[1] * A[2]) * (Bm[0] * Bm[3] - Bm[1] * Bm[2]);
    double ref = (m1[0] - m2[0]) * (m1[0] - m2[0]) + (m1[1] - m2[1]) * (m1[1] - m2[1]) + A[0] + A[3] + Bm[0] + Bm[3] -
                 2 * sqrt(trab + 2 * sqrt(det));
    double got = NAN;
    CHECK(kiln_frechet_distance(2, m1, A, m2, Bm, &got) == KILN_OK, "2x2: %s", kiln_last_error());
    CHECK(fabs(got - ref) <= 1e-12 * fabs(ref), "2x2 non-commuting: %.17g, reference %.17g", got, ref);
    /* symmetric in its arguments, on full-rank covariances X X^T / n of random data */
    enum { D = 40, N = 60 };
    static double x[N * D], y[N * D], c1[D * D], c2[D * D], mu1[D], mu2[D];
    for (int i = 0; i < N * D; i++) x[i] = urand() - 0.5, y[i] = (urand() - 0.5) * (1 + i % 3);
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double s1 = 0, s2 = 0;
            for (int k = 0; k < N; k++) s1 += x[k * D + i] * x[k * D + j], s2 += y[k * D + i] * y[k * D + j];
            c1[i * D + j] = s1 / N, c2[i * D + j] = s2 / N;
        }
    for (int i = 0; i < D; i++) mu1[i] = urand(), mu2[i] = urand();
    double f12 = NAN, f21 = NAN;
    CHECK(kiln_frechet_distance(D, mu1, c1, mu2, c2, &f12) == KILN_OK, "random 40");
    CHECK(kiln_frechet_distance(D, mu2, c2, mu1, c1, &f21) == KILN_OK, "random 40 swapped");
    CHECK(f12 > 0 && fabs(f12 - f21) <= 1e-10 * f12, "not symmetric: %.17g vs %.17g", f12, f21);

    /* errors: each names the function and what is wrong, and leaves out untouched */
    double out = 42;
    CHECK(kiln_frechet_distance(2, NULL, A, m2, Bm, &out) == KILN_ERR_NULL &&
              strstr(kiln_last_error(), "kiln_frechet_distance: mu1 is NULL"),
          "NULL mu1: %s", kiln_last_error());
    CHECK(kiln_frechet_distance(2, m1, A, m2, Bm, NULL) == KILN_ERR_NULL && strstr(kiln_last_error(), "out is NULL"),
          "NULL out: %s", kiln_last_error());
    CHECK(kiln_frechet_distance(0, m1, A, m2, Bm, &out) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_last_error(), "dimension 0 is outside [1, 4096]"),
          "d 0: %s", kiln_last_error());
    CHECK(kiln_frechet_distance(5000, m1, A, m2, Bm, &out) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_last_error(), "dimension 5000"),
          "d 5000: %s", kiln_last_error());
    double nanm[2] = {0, NAN};
    CHECK(kiln_frechet_distance(2, m1, A, nanm, Bm, &out) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_last_error(), "mu2[1] is nan, not finite"),
          "NaN: %s", kiln_last_error());
    const double asym[4] = {1.0, 0.5, 0.4, 1.0};
    CHECK(kiln_frechet_distance(2, m1, A, m2, asym, &out) == KILN_ERR_INVALID_ARGUMENT &&
              strstr(kiln_last_error(), "cov2 is not symmetric: [0][1] is 0.5, [1][0] is 0.4"),
          "asymmetric: %s", kiln_last_error());
    CHECK(out == 42, "out written on error: %g", out);
}

int main(void) {
    test_frechet();
    if (!golden_open(&gg, "gan")) return h_finish();
    H_FOR_EACH_DEVICE(run);
    golden_close(&gg);
    return h_finish();
}
