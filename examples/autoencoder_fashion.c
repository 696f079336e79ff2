/* examples/autoencoder_fashion.c - autoencoders on Fashion-MNIST: a plain convolutional
 * autoencoder, the same trained to denoise, and a variational autoencoder, each with the
 * pictures one looks at (PNG grids, kiln_save_image_grid).
 *
 *   build/examples/autoencoder_fashion [--epochs N] [--pictures PREFIX] ...
 *   build/examples/autoencoder_fashion --denoise 0.3
 *   build/examples/autoencoder_fashion --vae [--latent 2]
 *
 * Plain (default): the `ae` model of the PyTorch reference (torch_ref.py, shared/bench/
 * beside this repository): conv(1,16,3,s2,p1)-ReLU-conv(16,32,3,s2,p1)-ReLU-
 * convT(32,16,3,s2,p1,op1)-ReLU-convT(16,1,3,s2,p1,op1)-sigmoid, 9,569 parameters, MSE
 * against the input, Adam(1e-3), batch 64, inputs x/255 shuffled each epoch. Prints the
 * test reconstruction MSE per epoch and writes PREFIX_reconstructions.png: 8 test images
 * over their reconstructions. The last line is "test_mse=...".
 *
 * --denoise SIGMA: the same model trained on x + SIGMA * N(0, 1) clamped to [0, 1] against
 * the clean x; the test MSE is of the reconstructions of noisy test images (fresh noise
 * each evaluation) against the clean ones; the picture has rows clean, noisy, denoised.
 *
 * --vae: a variational autoencoder (Kingma & Welling 2014) on the same convolutions:
 * encoder conv-ReLU-conv-ReLU-flatten(1568), linear heads mu and logvar (L each); z = mu +
 * exp(logvar / 2) * eps with eps from kiln_rand_normal (gradients reach mu and logvar
 * through kiln's autograd); decoder linear(L, 1568)-ReLU-[32,7,7]-convT-ReLU-convT to pixel
 * logits. Loss per image: the Bernoulli reconstruction term (binary cross-entropy of the
 * logits against the pixels, summed over the 784 pixels, as the paper's MNIST model and
 * PyTorch's examples/vae) plus KL(q(z|x) || N(0, I)) = -1/2 sum(1 + logvar - mu^2 -
 * exp(logvar)); -ELBO averaged over a batch is what Adam minimises. Prints the test ELBO
 * (nats per image, one z sample per image) per epoch and writes PREFIX_samples.png (64
 * decodings of z ~ N(0, I)), PREFIX_traversal.png (a 10 x 10 grid over latent dims 0 and 1
 * at the normal quantiles of 0.05 .. 0.95, the other dims 0) and PREFIX_reconstructions.png.
 * The last line is "test_elbo=...".
 *
 * tools/autoencoder_torch.py runs the same recipes in PyTorch and prints the same figures.
 */
#include "common.h"

typedef enum { AE_PLAIN, AE_DENOISE, AE_VAE } ae_mode;

typedef struct ae_cfg {
    ae_mode mode;
    double sigma; /* --denoise */
    int latent;   /* --vae */
    const char *pictures;
} ae_cfg;

/* ---- models ------------------------------------------------------------------------------ */

static kiln_conv2d_params down(void) {
    kiln_conv2d_params p = kiln_conv2d_defaults();
    p.stride[0] = p.stride[1] = 2;
    p.padding[0] = p.padding[1] = 1;
    return p;
}

static kiln_conv2d_params up(void) {
    kiln_conv2d_params p = down();
    p.output_padding[0] = p.output_padding[1] = 1;
    return p;
}

/* Channels of the two convolutions: 16 and 32 (4 and 8 with KILN_EXAMPLE_TINY). */
static int64_t ch1(void) { return ex_tiny() ? 4 : 16; }
static int64_t ch2(void) { return ex_tiny() ? 8 : 32; }

/* torch_ref.py's AE: children enc and dec, state names enc.0.weight ... dec.2.bias as the
 * PyTorch class's. */
static kiln_module *build_ae(kiln_ctx *ctx) {
    kiln_conv2d_params d = down(), u = up();
    kiln_module *enc =
        kiln_nn_sequential(ctx, 4,
                           (kiln_module *[]){kiln_nn_conv2d(ctx, 1, ch1(), 3, 3, &d, true), // (B, 16, 14, 14)
                                             kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                             kiln_nn_conv2d(ctx, ch1(), ch2(), 3, 3, &d, true), // (B, 32, 7, 7)
                                             kiln_nn_activation(ctx, KILN_ACT_RELU, 0)});
    kiln_module *dec = kiln_nn_sequential(
        ctx, 4,
        (kiln_module *[]){kiln_nn_conv_transpose2d(ctx, ch2(), ch1(), 3, 3, &u, true), // (B, 16, 14, 14)
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv_transpose2d(ctx, ch1(), 1, 3, 3, &u, true), // (B, 1, 28, 28)
                          kiln_nn_activation(ctx, KILN_ACT_SIGMOID, 0)});
    kiln_module *m = kiln_nn_module_dict(ctx);
    if (!m || kiln_nn_module_dict_set(m, "enc", enc) != KILN_OK || kiln_nn_module_dict_set(m, "dec", dec) != KILN_OK) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

static kiln_module *build_vae(kiln_ctx *ctx, int latent) {
    kiln_conv2d_params d = down(), u = up();
    int64_t flat = ch2() * 7 * 7;
    kiln_module *enc = kiln_nn_sequential(
        ctx, 5,
        (kiln_module *[]){kiln_nn_conv2d(ctx, 1, ch1(), 3, 3, &d, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv2d(ctx, ch1(), ch2(), 3, 3, &d, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_flatten(ctx, 1, -1)}); // (B, 1568)
    kiln_module *dec = kiln_nn_sequential(ctx, 3,
                                          (kiln_module *[]){kiln_nn_conv_transpose2d(ctx, ch2(), ch1(), 3, 3, &u, true),
                                                            kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                            kiln_nn_conv_transpose2d(ctx, ch1(), 1, 3, 3, &u, true)});
    kiln_module *m = kiln_nn_module_dict(ctx);
    bool ok = m && kiln_nn_module_dict_set(m, "enc", enc) == KILN_OK &&
              kiln_nn_module_dict_set(m, "mu", kiln_nn_linear(ctx, flat, latent, true)) == KILN_OK &&
              kiln_nn_module_dict_set(m, "logvar", kiln_nn_linear(ctx, flat, latent, true)) == KILN_OK &&
              kiln_nn_module_dict_set(m, "dec_fc", kiln_nn_linear(ctx, latent, flat, true)) == KILN_OK &&
              kiln_nn_module_dict_set(m, "dec", dec) == KILN_OK;
    if (!ok) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

static kiln_tensor *child_forward(kiln_module *m, const char *name, kiln_tensor *x) {
    return kiln_forward(kiln_module_find_child(m, name), x);
}

/* The plain autoencoder: dec(enc(x)). */
static kiln_tensor *ae_forward(kiln_module *m, kiln_tensor *x) {
    return child_forward(m, "dec", child_forward(m, "enc", x));
}

/* VAE decoder: z [B, L] -> pixel logits [B, 1, 28, 28]. */
static kiln_tensor *vae_decode(kiln_module *m, kiln_tensor *z) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    kiln_tensor *h = kiln_relu(ctx, child_forward(m, "dec_fc", z));
    int64_t b = z ? kiln_tensor_shape(z)[0] : 0;
    return child_forward(m, "dec", kiln_reshape(ctx, h, 4, (int64_t[]){b, ch2(), 7, 7}));
}

/* The VAE's loss terms of a batch x: *rec the summed BCE, *kl the summed KL (both over the
 * batch, [1]); returns the logits. */
static kiln_tensor *vae_forward(kiln_module *m, kiln_tensor *x, kiln_tensor **rec, kiln_tensor **kl) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    kiln_tensor *h = child_forward(m, "enc", x);
    kiln_tensor *mu = child_forward(m, "mu", h), *logvar = child_forward(m, "logvar", h);
    kiln_tensor *eps = mu ? kiln_rand_normal(ctx, 0, 1, 2, kiln_tensor_shape(mu)) : NULL;
    kiln_tensor *z = kiln_add(ctx, mu, kiln_mul(ctx, kiln_exp(ctx, kiln_mul_scalar(ctx, logvar, 0.5f)), eps));
    kiln_tensor *logits = vae_decode(m, z);
    *rec = kiln_bce_with_logits(ctx, logits, x, NULL, NULL, KILN_SUM);
    /* -1/2 sum(1 + logvar - mu^2 - exp(logvar)) */
    kiln_tensor *t =
        kiln_sub(ctx, kiln_add_scalar(ctx, logvar, 1.0f), kiln_add(ctx, kiln_mul(ctx, mu, mu), kiln_exp(ctx, logvar)));
    *kl = kiln_mul_scalar(ctx, kiln_sum(ctx, t, 0, NULL, false), -0.5f);
    return logits;
}

/* x + sigma * N(0, 1), clamped to [0, 1]. */
static kiln_tensor *add_noise(kiln_ctx *ctx, kiln_tensor *x, double sigma) {
    kiln_tensor *n = kiln_rand_normal(ctx, 0, (float)sigma, kiln_tensor_ndim(x), kiln_tensor_shape(x));
    return kiln_minimum_scalar(ctx, kiln_maximum_scalar(ctx, kiln_add(ctx, x, n), 0.0f), 1.0f);
}

/* ---- training and evaluation ---------------------------------------------------------- */

/* The loss of one batch (mean MSE per pixel; -ELBO per image for the VAE). */
static kiln_tensor *batch_loss(kiln_module *m, const ae_cfg *c, kiln_tensor *x, kiln_tensor **rec_out,
                               kiln_tensor **kl_out) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    if (c->mode == AE_VAE) {
        kiln_tensor *rec, *kl;
        vae_forward(m, x, &rec, &kl);
        if (rec_out) *rec_out = rec, *kl_out = kl;
        float b = x ? (float)kiln_tensor_shape(x)[0] : 1.0f;
        return kiln_mul_scalar(ctx, kiln_add(ctx, rec, kl), 1.0f / b);
    }
    kiln_tensor *in = c->mode == AE_DENOISE ? add_noise(ctx, x, c->sigma) : x;
    return kiln_mse_loss(ctx, ae_forward(m, in), x, KILN_MEAN);
}

typedef struct eval_result {
    double mse;           /* plain / denoise: mean squared error per pixel */
    double elbo, rec, kl; /* VAE: per image */
} eval_result;

static kiln_status evaluate(kiln_module *m, const ae_cfg *c, kiln_loader *l, eval_result *r) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    bool was = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(m, false);
    kiln_loader_reset(l);
    double sum = 0, rec = 0, kl = 0;
    int64_t n = 0;
    kiln_tensor *x, *y;
    for (;;) {
        kiln_scope_begin(ctx);
        if (!kiln_loader_next(l, &x, &y)) {
            kiln_scope_end(ctx);
            break;
        }
        int64_t b = kiln_tensor_shape(x)[0];
        kiln_tensor *rt = NULL, *kt = NULL;
        kiln_tensor *loss = batch_loss(m, c, x, &rt, &kt);
        sum += (double)kiln_tensor_item(loss) * (double)b;
        if (c->mode == AE_VAE) rec += kiln_tensor_item(rt), kl += kiln_tensor_item(kt);
        n += b;
        kiln_scope_end(ctx);
        if (kiln_error_status(ctx) != KILN_OK) break;
    }
    kiln_ctx_set_grad_enabled(ctx, was);
    kiln_module_train(m, true);
    if (kiln_error_status(ctx) != KILN_OK) return kiln_error_status(ctx);
    *r = (eval_result){.mse = n ? sum / (double)n : NAN,
                       .elbo = n ? -sum / (double)n : NAN,
                       .rec = n ? rec / (double)n : NAN,
                       .kl = n ? kl / (double)n : NAN};
    return KILN_OK;
}

/* One epoch; returns the mean training loss (NaN on error). Progress on stderr. */
static double train_epoch(kiln_module *m, const ae_cfg *c, kiln_optim *opt, kiln_loader *l, int epoch, int epochs,
                          bool progress) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    kiln_module_train(m, true);
    int64_t nb = kiln_loader_num_batches(l), i = 0, n = 0;
    double sum = 0, last_draw = 0;
    kiln_tensor *x, *y;
    for (;;) {
        kiln_scope_begin(ctx);
        if (!kiln_loader_next(l, &x, &y)) {
            kiln_scope_end(ctx);
            break;
        }
        int64_t b = kiln_tensor_shape(x)[0];
        kiln_tensor *loss = batch_loss(m, c, x, NULL, NULL);
        kiln_optim_zero_grad(opt);
        kiln_backward(loss);
        kiln_optim_step(opt);
        sum += (double)kiln_tensor_item(loss) * (double)b;
        n += b;
        i++;
        kiln_scope_end(ctx);
        if (kiln_error_status(ctx) != KILN_OK) return NAN;
        double now = ex_now_ms();
        if (progress && (now - last_draw > 100 || i == nb)) {
            fprintf(stderr, "\repoch %d/%d  batch %lld/%lld  loss %.4f", epoch, epochs, (long long)i, (long long)nb,
                    sum / (double)n);
            last_draw = now;
        }
    }
    if (progress) fputc('\n', stderr);
    return n ? sum / (double)n : NAN;
}

/* ---- pictures ------------------------------------------------------------------------- */

static char *picture_path(const ae_cfg *c, const char *what) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s_%s.png", c->pictures, what);
    return buf;
}

/* Rows of 8 first test images: clean, (noisy,) reconstructed. */
static kiln_status save_reconstructions(kiln_module *m, const ae_cfg *c, kiln_loader *test_l, const char *path) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    bool was = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(m, false);
    kiln_loader_reset(test_l);
    kiln_scope_begin(ctx);
    kiln_tensor *x, *y;
    if (kiln_loader_next(test_l, &x, &y)) {
        int64_t k = kiln_tensor_shape(x)[0] < 8 ? kiln_tensor_shape(x)[0] : 8;
        kiln_tensor *clean = kiln_slice(ctx, x, 0, 0, k, 1), *rows[3] = {clean, NULL, NULL};
        int nrows = 2;
        if (c->mode == AE_VAE) {
            kiln_tensor *rec, *kl;
            rows[1] = kiln_sigmoid(ctx, vae_forward(m, clean, &rec, &kl));
        } else if (c->mode == AE_DENOISE) {
            rows[1] = add_noise(ctx, clean, c->sigma);
            rows[2] = ae_forward(m, rows[1]);
            nrows = 3;
        } else {
            rows[1] = ae_forward(m, clean);
        }
        kiln_tensor *grid = kiln_reshape(ctx, kiln_stack(ctx, nrows, rows, 0), 4, (int64_t[]){nrows * k, 1, 28, 28});
        kiln_image_grid_opts go = kiln_image_grid_defaults();
        go.nrow = (int)k;
        if (grid) kiln_save_image_grid(grid, path, &go);
    }
    kiln_scope_end(ctx);
    kiln_ctx_set_grad_enabled(ctx, was);
    kiln_module_train(m, true);
    return kiln_error_status(ctx);
}

/* The standard normal quantile of p in (0, 1), by bisection on erfc. */
static double normal_quantile(double p) {
    double lo = -10, hi = 10;
    for (int i = 0; i < 100; i++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(-mid / sqrt(2.0)) < p)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* 64 samples from the prior and a 10 x 10 traversal of latent dims 0 and 1. */
static kiln_status save_vae_pictures(kiln_module *m, const ae_cfg *c) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    bool was = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(m, false);
    kiln_scope_begin(ctx);
    kiln_tensor *z = kiln_rand_normal(ctx, 0, 1, 2, (int64_t[]){64, c->latent});
    kiln_tensor *s = kiln_sigmoid(ctx, vae_decode(m, z));
    if (s) kiln_save_image_grid(s, picture_path(c, "samples"), NULL);
    enum { K = 10 };
    float *zh = calloc((size_t)(K * K * c->latent), sizeof *zh);
    if (zh) {
        for (int i = 0; i < K; i++)
            for (int j = 0; j < K; j++) {
                float *row = zh + (size_t)((i * K + j) * c->latent);
                row[0] = (float)normal_quantile(0.05 + 0.9 * j / (K - 1));
                if (c->latent > 1) row[1] = (float)normal_quantile(0.95 - 0.9 * i / (K - 1)); /* up is + */
            }
        kiln_tensor *zt = kiln_from_host(ctx, zh, KILN_F32, 2, (int64_t[]){K * K, c->latent});
        free(zh);
        kiln_tensor *t = kiln_sigmoid(ctx, vae_decode(m, zt));
        kiln_image_grid_opts go = kiln_image_grid_defaults();
        go.nrow = K;
        if (t) kiln_save_image_grid(t, picture_path(c, "traversal"), &go);
    }
    kiln_scope_end(ctx);
    kiln_ctx_set_grad_enabled(ctx, was);
    kiln_module_train(m, true);
    return kiln_error_status(ctx);
}

/* ---- the program ------------------------------------------------------------------------ */

#define FAIL(...)                                                                                                      \
    do {                                                                                                               \
        fprintf(stderr, "autoencoder_fashion: ");                                                                      \
        fprintf(stderr, __VA_ARGS__);                                                                                  \
        fputc('\n', stderr);                                                                                           \
        goto done;                                                                                                     \
    } while (0)

/* Takes this example's own flags out of argv (the rest go to ex_parse). -1: go on, else
 * the exit code. */
static int parse_own(int *argc, char **argv, ae_cfg *c) {
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--vae")) {
            c->mode = AE_VAE;
            continue;
        }
        bool denoise = !strcmp(a, "--denoise"), latent = !strcmp(a, "--latent"), pics = !strcmp(a, "--pictures");
        if (denoise || latent || pics) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "autoencoder_fashion: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            int64_t n;
            if (denoise) {
                if (!ex_parse_f64(v, 1e-6, 10, &c->sigma)) goto bad;
                if (c->mode != AE_VAE) c->mode = AE_DENOISE;
            } else if (latent) {
                if (!ex_parse_i64(v, 1, 1024, &n)) goto bad;
                c->latent = (int)n;
            } else {
                if (!*v) goto bad;
                c->pictures = v;
            }
            continue;
        bad:
            fprintf(stderr, "autoencoder_fashion: invalid value '%s' for %s\n", v, a);
            return 2;
        }
        argv[out++] = argv[i];
    }
    *argc = out;
    return -1;
}

int main(int argc, char **argv) {
    ae_cfg c = {.mode = AE_PLAIN, .sigma = 0, .latent = 2, .pictures = "autoencoder_fashion"};
    bool vae_and_denoise = false;
    for (int i = 1; i < argc; i++) vae_and_denoise |= !strcmp(argv[i], "--denoise");
    int rc = parse_own(&argc, argv, &c);
    if (rc >= 0) return rc;
    if (vae_and_denoise && c.mode == AE_VAE) {
        fprintf(stderr, "autoencoder_fashion: --vae and --denoise exclude each other\n");
        return 2;
    }
    ex_opts o = {.epochs = 5,
                 .batch = 64,
                 .lr = 1e-3,
                 .momentum = 0.9,
                 .optimizer = "adam",
                 .seed = 1,
                 .progress = true,
                 .eval_batch = 250};
    rc = ex_parse(argc, argv, "autoencoder_fashion",
                  "trains a convolutional autoencoder (plain, --denoise SIGMA or --vae) on Fashion-MNIST",
                  EX_F_DATA | EX_F_PROGRESS, &o);
    if (rc == 0)
        printf("  --denoise SIGMA    train on inputs with Gaussian noise of this std (clamped to [0, 1])\n"
               "  --vae              a variational autoencoder (prints the test ELBO)\n"
               "  --latent N         latent dimensions of the VAE [2]\n"
               "  --pictures PREFIX  PNG files PREFIX_reconstructions.png (and _samples, _traversal)\n"
               "                     [autoencoder_fashion]\n");
    if (rc >= 0) return rc;
    if (o.val > 0 || o.plot || o.metrics || o.test_each_epoch || o.load) {
        fprintf(stderr, "autoencoder_fashion: --val, --plot, --metrics, --test-each-epoch and --load are not "
                        "supported here (the test figures are printed every epoch)\n");
        return 2;
    }
    rc = 1;
    double t_start = ex_now_ms();
    kiln_ctx *ctx = ex_open("autoencoder_fashion", &o);
    if (!ctx) return 1;
    kiln_module *net = NULL;
    kiln_optim *opt = NULL;
    kiln_dataset *train = NULL, *test = NULL;
    kiln_loader *train_l = NULL, *test_l = NULL;
    char *text = NULL;
    eval_result r = {NAN, NAN, NAN, NAN};

    kiln_manual_seed(ctx, o.seed);
    net = c.mode == AE_VAE ? build_vae(ctx, c.latent) : build_ae(ctx);
    if (!net) FAIL("building the model: %s", kiln_error_message(ctx));
    text = malloc(1 << 16);
    if (!text) FAIL("out of host memory");
    static const char *const mode_name[] = {"autoencoder", "denoising autoencoder", "variational autoencoder"};
    printf("model (%s): %s\n", mode_name[c.mode], kiln_module_describe(net, text, 1 << 16));
    printf("parameters: %lld\n", (long long)kiln_module_num_elements(net));

    train = kiln_fashion_mnist(o.data, true);
    test = train ? kiln_fashion_mnist(o.data, false) : NULL;
    if (!train || !test) FAIL("%s", kiln_last_error());
    int64_t test_n = ex_tiny() ? 1000 : 0;
    for (int k = 0; k < 2; k++) {
        kiln_dataset **ds = k ? &test : &train;
        int64_t lim = k ? test_n : o.limit;
        if (lim <= 0 || lim >= kiln_dataset_num_samples(*ds)) continue;
        int64_t *idx = malloc(sizeof *idx * (size_t)lim);
        if (!idx) FAIL("out of host memory");
        for (int64_t i = 0; i < lim; i++) idx[i] = i;
        kiln_dataset *sub = kiln_dataset_subset(*ds, idx, lim);
        free(idx);
        if (!sub) FAIL("%s", kiln_last_error());
        kiln_dataset_free(*ds);
        *ds = sub;
    }
    printf("data: %lld training, %lld test images\n", (long long)kiln_dataset_num_samples(train),
           (long long)kiln_dataset_num_samples(test));
    kiln_loader_opts lo = kiln_loader_defaults();
    lo.batch_size = o.batch;
    lo.shuffle = true;
    lo.seed = o.seed;
    lo.scale = 1.0f / 255;
    train_l = kiln_loader_new(ctx, train, &lo);
    lo.batch_size = o.eval_batch;
    lo.shuffle = false;
    test_l = kiln_loader_new(ctx, test, &lo);
    if (!train_l || !test_l) FAIL("%s", kiln_error_message(ctx));
    opt = ex_optimizer(ctx, net, &o);
    if (!opt) FAIL("%s", kiln_error_message(ctx));
    printf("optimizer: %s lr=%g, batch %lld, %d epochs", kiln_optim_kind(opt), o.lr, (long long)o.batch, o.epochs);
    if (c.mode == AE_DENOISE) printf(", noise sigma %g", c.sigma);
    if (c.mode == AE_VAE) printf(", latent %d, loss BCE(sum over pixels) + KL", c.latent);
    printf("\n");

    double t_train = 0;
    int64_t steps = 0;
    for (int e = 1; e <= o.epochs; e++) {
        double t0 = ex_now_ms();
        double tl = train_epoch(net, &c, opt, train_l, e, o.epochs, o.progress);
        if (isnan(tl)) FAIL("training, epoch %d: %s", e, kiln_error_message(ctx));
        double secs = (ex_now_ms() - t0) / 1e3;
        t_train += secs;
        steps += kiln_loader_num_batches(train_l);
        if (evaluate(net, &c, test_l, &r) != KILN_OK) FAIL("evaluating: %s", kiln_error_message(ctx));
        if (c.mode == AE_VAE)
            printf("epoch %d: train loss %.2f, test ELBO %.2f (reconstruction BCE %.2f, KL %.2f), %.1f s\n", e, tl,
                   r.elbo, r.rec, r.kl, secs);
        else
            printf("epoch %d: train MSE %.5f, test MSE %.5f, %.1f s\n", e, tl, r.mse, secs);
    }
    if (o.epochs == 0 && evaluate(net, &c, test_l, &r) != KILN_OK) FAIL("evaluating: %s", kiln_error_message(ctx));
    printf("trained %d epochs in %.1f s (%.2f ms per step, mean)\n", o.epochs, t_train,
           steps ? t_train * 1e3 / (double)steps : 0.0);

    char recon_path[4096];
    snprintf(recon_path, sizeof recon_path, "%s", picture_path(&c, "reconstructions"));
    if (save_reconstructions(net, &c, test_l, recon_path) != KILN_OK)
        FAIL("writing pictures: %s", kiln_error_message(ctx));
    printf("pictures: %s", recon_path);
    if (c.mode == AE_VAE) {
        if (save_vae_pictures(net, &c) != KILN_OK) FAIL("writing pictures: %s", kiln_error_message(ctx));
        printf(", %s", picture_path(&c, "samples"));
        printf(", %s", picture_path(&c, "traversal"));
    }
    printf("\n");
    if (o.save) {
        if (kiln_module_save(net, o.save, mode_name[c.mode]) != KILN_OK) FAIL("saving: %s", kiln_error_message(ctx));
        printf("saved the model to %s\n", o.save);
    }
    printf("wall time %.1f s\n", (ex_now_ms() - t_start) / 1e3);
    if (c.mode == AE_VAE)
        printf("test_elbo=%.3f\n", r.elbo);
    else
        printf("test_mse=%.6f\n", r.mse);
    rc = 0;
done:
    free(text);
    kiln_loader_free(train_l);
    kiln_loader_free(test_l);
    kiln_optim_free(opt);
    kiln_module_free(net);
    kiln_dataset_free(train);
    kiln_dataset_free(test);
    kiln_close(ctx);
    return rc;
}
