/* examples/gan_fashion.c - a deep convolutional GAN on Fashion-MNIST, with the least-squares
 * loss (Mao et al. 2017) or the binary cross-entropy one (Goodfellow et al. 2014, the
 * generator's non-saturating form), a picture per epoch, and an honest quality measure.
 *
 *   build/examples/gan_fashion [--epochs N] [--loss lsgan|bce] [--out-dir DIR] ...
 *   build/examples/gan_fashion --features cnn.safetensors     # + the Fréchet distance
 *
 * The model is the `dcgan` of the PyTorch reference (torch_ref.py, shared/bench/ beside this
 * repository), 691,330 parameters:
 *   G: z(64)-linear(64,6272)-BN1d-ReLU-[128,7,7]-convT(128,64,4,s2,p1)-BN2d-ReLU-
 *      convT(64,1,4,s2,p1)-tanh
 *   D: conv(1,64,4,s2,p1)-LeakyReLU(.2)-conv(64,128,4,s2,p1)-BN2d-LeakyReLU(.2)-flatten-
 *      linear(6272,1)
 * with torch's default initialisation; state names are the torch.nn.Sequential indices
 * (G: 0, 1, 4, 5, 7; D: 0, 2, 3, 6), so a saved generator loads into torch_ref.py's G.
 * Each step, as torch_ref.py's: real images x/255 scaled to [-1, 1] (batch 64, shuffled,
 * the short last batch dropped), fake = G(z) with z ~ N(0, I); one D update on D(real) and
 * D(fake detached), then one G update on D(fake) through the updated D; Adam(2e-4, betas
 * 0.5/0.999) for each. Losses (D's outputs are logits):
 *   lsgan: D 0.5 mean((D(real) - 1)^2) + 0.5 mean(D(fake)^2), G 0.5 mean((D(fake) - 1)^2)
 *   bce:   D bce(D(real), 1) + bce(D(fake), 0),             G bce(D(fake), 1)
 * After every epoch G (in eval mode: BatchNorm's running statistics) draws one fixed noise
 * batch of 64 into DIR/gan_fashion_epoch_NNN.png (8 x 8, values -1..1 as black..white).
 *
 * Quality (--features PATH, a model saved by cnn_fashion --save): the Fréchet distance
 * (FID, Heusel et al. 2017) between the 128 features of that classifier's penultimate layer
 * (fc1 after ReLU, eval mode) of --fid-samples generated images (G in eval mode, pixels
 * (g + 1) / 2 as the classifier was trained on x/255) and of as many test images, in
 * double precision (kiln_frechet_distance); and the classifier's class histogram of the
 * generated images (mode collapse shows as missing classes). tools/gan_torch.py runs the
 * same recipe and measure in PyTorch with the same feature network.
 *
 * Lines of key=value: per epoch d_loss= g_loss= (means over the epoch's steps); at the end
 * d_loss=, g_loss=, and with --features fid=, classes_present=, min_class_fraction=.
 */
#include "common.h" /* first: it sets _POSIX_C_SOURCE */

#include <stddef.h>
#include <sys/stat.h>

#define PROG "gan_fashion"
#define Z_DIM 64
#define FIXED_N 64

typedef struct opts {
    int64_t epochs, batch, limit, fid_samples;
    double lr;
    uint64_t seed;
    const char *loss, *out_dir, *features, *data, *device, *save;
    bool progress;
} opts;

static const opts defaults = {.epochs = 5,
                              .batch = 64,
                              .limit = 0,
                              .fid_samples = 10000,
                              .lr = 2e-4,
                              .seed = 1,
                              .loss = "lsgan",
                              .out_dir = ".",
                              .data = NULL,
                              .progress = true};

static void usage(FILE *f) {
    const opts *d = &defaults;
    fprintf(f,
            "usage: %s [options]\n"
            "  trains torch_ref.py's dcgan on Fashion-MNIST, writes a picture per epoch and, with\n"
            "  --features, measures the Fréchet distance in a cnn_fashion model's features\n\n"
            "options (defaults in brackets):\n"
            "  --epochs N         training epochs [%lld]\n"
            "  --batch N          batch size [%lld]\n"
            "  --lr X             Adam's learning rate, both networks (betas 0.5, 0.999) [%g]\n"
            "  --loss NAME        lsgan or bce [%s]\n"
            "  --seed N           random seed (initialisation, noise, data order) [%llu]\n"
            "  --limit N          train on the first N training images only [all]\n"
            "  --out-dir DIR      where the pictures go (made if missing) [%s]\n"
            "  --features PATH    a cnn_fashion model (--save): measure the Fréchet distance and\n"
            "                     the class histogram of generated images after training\n"
            "  --fid-samples N    generated and test images of that measure [%lld]\n"
            "  --save PATH        save the generator (safetensors, torch_ref.py's G names)\n"
            "  --data DIR         Fashion-MNIST IDX files [%s]\n"
            "  --device SPEC      gpu, cpu, P:D or part of a device name [$KILN_DEVICE, else the\n"
            "                     first GPU, else the first CPU]\n"
            "  --progress, --no-progress   progress on stderr [on]\n"
            "  --help             this message\n",
            PROG, (long long)d->epochs, (long long)d->batch, d->lr, d->loss, (unsigned long long)d->seed, d->out_dir,
            (long long)d->fid_samples, KILN_FASHION_MNIST_DIR);
}

/* Returns -1 to go on, else the exit code (0 after --help, 2 after a usage error). */
static int parse(int argc, char **argv, opts *o) {
    setvbuf(stdout, NULL, _IOLBF, 0);
#define F(name, kind, field, lo, hi)                                                                                   \
    { name, kind, offsetof(opts, field), lo, hi }
    static const ex_flag flags[] = {
        F("--progress", EX_FLAG_SWITCH, progress, 1, 0),
        F("--no-progress", EX_FLAG_SWITCH, progress, 0, 0),
        F("--epochs", EX_FLAG_I64, epochs, 0, 100000),
        F("--batch", EX_FLAG_I64, batch, 2, 1 << 16),
        F("--limit", EX_FLAG_I64, limit, 2, 1e12),
        F("--fid-samples", EX_FLAG_I64, fid_samples, 2, 10000),
        F("--lr", EX_FLAG_F64, lr, 0, 1e6),
        F("--seed", EX_FLAG_SEED, seed, 0, 0),
        F("--loss", EX_FLAG_STR, loss, 0, 0),
        F("--out-dir", EX_FLAG_STR, out_dir, 0, 0),
        F("--features", EX_FLAG_STR, features, 0, 0),
        F("--save", EX_FLAG_STR, save, 0, 0),
        F("--data", EX_FLAG_STR, data, 0, 0),
        F("--device", EX_FLAG_STR, device, 0, 0),
    };
#undef F
    int rc = ex_parse_flags(argc, argv, PROG, flags, (int)(sizeof flags / sizeof flags[0]), o, usage);
    if (rc != -1) return rc;
    if (strcmp(o->loss, "lsgan") != 0 && strcmp(o->loss, "bce") != 0) {
        fprintf(stderr, "%s: --loss %s: expected lsgan or bce\n", PROG, o->loss);
        fprintf(stderr, "usage: %s [options]  (%s --help lists them)\n", PROG, PROG);
        return 2;
    }
    return -1;
}

/* ---- models ------------------------------------------------------------------------------ */

/* torch.nn.Unflatten(1, (c, h, w)): [B, c*h*w] -> [B, c, h, w] (kiln/nn.h has no such layer). */
typedef struct unflatten {
    int64_t c, h, w;
} unflatten;

static kiln_status unflatten_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    const unflatten *u = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    out[0] = kiln_reshape(ctx, in[0], 4, (int64_t[]){kiln_tensor_shape(in[0])[0], u->c, u->h, u->w});
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

static void unflatten_describe(const kiln_module *m, char *buf, size_t cap) {
    const unflatten *u = kiln_module_data(m);
    snprintf(buf, cap, "1, (%lld, %lld, %lld)", (long long)u->c, (long long)u->h, (long long)u->w);
}

static kiln_module *nn_unflatten(kiln_ctx *ctx, int64_t c, int64_t h, int64_t w) {
    static const kiln_module_def def = {.kind = "Unflatten",
                                        .state_size = sizeof(unflatten),
                                        .forward = unflatten_forward,
                                        .num_inputs = 1,
                                        .num_outputs = 1,
                                        .describe = unflatten_describe};
    kiln_module *m = kiln_module_new(ctx, &def);
    if (m) *(unflatten *)kiln_module_data(m) = (unflatten){c, h, w};
    return m;
}

/* The channels of the two convolutions of each network: 64 and 128 (8 and 16 with
 * KILN_EXAMPLE_TINY). */
static int64_t ch1(void) { return ex_tiny() ? 8 : 64; }
static int64_t ch2(void) { return ex_tiny() ? 16 : 128; }

static kiln_conv2d_params k4s2p1(void) {
    kiln_conv2d_params p = kiln_conv2d_defaults();
    p.stride[0] = p.stride[1] = 2;
    p.padding[0] = p.padding[1] = 1;
    return p;
}

static kiln_module *build_generator(kiln_ctx *ctx) {
    kiln_conv2d_params u = k4s2p1();
    int64_t flat = ch2() * 7 * 7;
    return kiln_nn_sequential(
        ctx, 9,
        (kiln_module *[]){kiln_nn_linear(ctx, Z_DIM, flat, true), kiln_nn_batchnorm1d(ctx, flat, 1e-5f, 0.1f),
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0), nn_unflatten(ctx, ch2(), 7, 7), // (B, 128, 7, 7)
                          kiln_nn_conv_transpose2d(ctx, ch2(), ch1(), 4, 4, &u, true),               // (B, 64, 14, 14)
                          kiln_nn_batchnorm2d(ctx, ch1(), 1e-5f, 0.1f), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv_transpose2d(ctx, ch1(), 1, 4, 4, &u, true), // (B, 1, 28, 28)
                          kiln_nn_activation(ctx, KILN_ACT_TANH, 0)});
}

static kiln_module *build_discriminator(kiln_ctx *ctx) {
    kiln_conv2d_params d = k4s2p1();
    return kiln_nn_sequential(ctx, 7,
                              (kiln_module *[]){kiln_nn_conv2d(ctx, 1, ch1(), 4, 4, &d, true), // (B, 64, 14, 14)
                                                kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f),
                                                kiln_nn_conv2d(ctx, ch1(), ch2(), 4, 4, &d, true), // (B, 128, 7, 7)
                                                kiln_nn_batchnorm2d(ctx, ch2(), 1e-5f, 0.1f),
                                                kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f),
                                                kiln_nn_flatten(ctx, 1, -1),
                                                kiln_nn_linear(ctx, ch2() * 7 * 7, 1, true)}); // (B, 1) logits
}

static kiln_optim *adam_over(kiln_ctx *ctx, kiln_module *m, double lr) {
    kiln_tensor *params[16];
    int n = kiln_module_parameters(m, params, 16);
    kiln_adam_opts ao = kiln_adam_defaults();
    ao.lr = lr;
    ao.beta1 = 0.5;
    ao.beta2 = 0.999;
    return n > 0 && n <= 16 ? kiln_adam(ctx, params, n, &ao) : NULL;
}

/* ---- one training step ---------------------------------------------------------------- */

typedef struct gan {
    kiln_module *g, *d;
    kiln_optim *og, *od;
    bool bce;
} gan;

/* D's loss on the logits of real (target 1) and fake (target 0) images. */
static kiln_tensor *d_loss_of(kiln_ctx *ctx, const gan *n, kiln_tensor *d_real, kiln_tensor *d_fake) {
    if (!d_real || !d_fake) return NULL;
    const int64_t *sh = kiln_tensor_shape(d_real);
    if (n->bce)
        return kiln_add(
            ctx, kiln_bce_with_logits(ctx, d_real, kiln_ones(ctx, 2, sh), NULL, NULL, KILN_MEAN),
            kiln_bce_with_logits(ctx, d_fake, kiln_zeros(ctx, 2, kiln_tensor_shape(d_fake)), NULL, NULL, KILN_MEAN));
    kiln_tensor *r = kiln_mse_loss(ctx, d_real, kiln_ones(ctx, 2, sh), KILN_MEAN);
    kiln_tensor *f = kiln_mean(ctx, kiln_mul(ctx, d_fake, d_fake), 0, NULL, false);
    return kiln_mul_scalar(ctx, kiln_add(ctx, r, f), 0.5f);
}

/* G's loss on the logits of its images under D (target 1). */
static kiln_tensor *g_loss_of(kiln_ctx *ctx, const gan *n, kiln_tensor *d_fake) {
    if (!d_fake) return NULL;
    kiln_tensor *ones = kiln_ones(ctx, 2, kiln_tensor_shape(d_fake));
    if (n->bce) return kiln_bce_with_logits(ctx, d_fake, ones, NULL, NULL, KILN_MEAN);
    return kiln_mul_scalar(ctx, kiln_mse_loss(ctx, d_fake, ones, KILN_MEAN), 0.5f);
}

/* One D update then one G update on the real batch [B, 1, 28, 28] in [-1, 1]; the losses
 * are read back (the step's sync). */
static kiln_status gan_step(gan *n, kiln_tensor *real, float *dl, float *gl) {
    kiln_ctx *ctx = kiln_module_ctx(n->g);
    int64_t b = kiln_tensor_shape(real)[0];
    kiln_tensor *fake = kiln_forward(n->g, kiln_rand_normal(ctx, 0, 1, 2, (int64_t[]){b, Z_DIM}));
    kiln_tensor *d_loss =
        d_loss_of(ctx, n, kiln_forward(n->d, real), kiln_forward(n->d, fake ? kiln_detach(ctx, fake) : NULL));
    kiln_status s = d_loss ? KILN_OK : kiln_error_status(ctx);
    if (s == KILN_OK) s = kiln_optim_zero_grad(n->od);
    if (s == KILN_OK) s = kiln_backward(d_loss);
    if (s == KILN_OK) s = kiln_optim_step(n->od);
    kiln_tensor *g_loss = s == KILN_OK ? g_loss_of(ctx, n, kiln_forward(n->d, fake)) : NULL;
    if (s == KILN_OK && !g_loss) s = kiln_error_status(ctx);
    if (s == KILN_OK) s = kiln_optim_zero_grad(n->og);
    if (s == KILN_OK) s = kiln_backward(g_loss);
    if (s == KILN_OK) s = kiln_optim_step(n->og);
    if (s == KILN_OK) {
        *dl = kiln_tensor_item(d_loss);
        *gl = kiln_tensor_item(g_loss);
        s = kiln_error_status(ctx);
    }
    return s;
}

/* ---- the measure ---------------------------------------------------------------------- */

/* cnn_fashion's network with the sizes of the checkpoint at path (conv1, conv2, fc1 give
 * them: full or KILN_EXAMPLE_TINY), loaded, in eval mode, *features its fc1 width; NULL
 * with the reason printed. */
static kiln_module *load_classifier(kiln_ctx *ctx, const char *path, int *features) {
    kiln_safetensors *f = kiln_safetensors_open(ctx, path);
    if (!f) {
        fprintf(stderr, "%s: --features: %s\n", PROG, kiln_error_message(ctx));
        return NULL;
    }
    int64_t c1 = 0, c2 = 0, h = 0;
    const int64_t *sh;
    int i1 = kiln_safetensors_find(f, "conv1.weight"), i2 = kiln_safetensors_find(f, "conv2.weight"),
        i3 = kiln_safetensors_find(f, "fc1.weight");
    if (i1 >= 0 && kiln_safetensors_shape(f, i1, &sh) == 4) c1 = sh[0];
    if (i2 >= 0 && kiln_safetensors_shape(f, i2, &sh) == 4) c2 = sh[0];
    if (i3 >= 0 && kiln_safetensors_shape(f, i3, &sh) == 2) h = sh[0];
    kiln_safetensors_close(f);
    if (c1 <= 0 || c2 <= 0 || h <= 0) {
        fprintf(stderr, "%s: --features %s: not a cnn_fashion model (conv1.weight, conv2.weight, fc1.weight)\n", PROG,
                path);
        return NULL;
    }
    kiln_module *net = kiln_nn_sequential(
        ctx, 11,
        (kiln_module *[]){kiln_nn_conv2d(ctx, 1, c1, 3, 3, NULL, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv2d(ctx, c1, c2, 3, 3, NULL, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_maxpool2d(ctx, (kiln_pool2d_params[]){kiln_pool2d_defaults(2, 2)}),
                          kiln_nn_dropout(ctx, 0.25f), kiln_nn_flatten(ctx, 1, -1),
                          kiln_nn_linear(ctx, c2 * 12 * 12, h, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_dropout(ctx, 0.5f), kiln_nn_linear(ctx, h, 10, true)});
    static const char *const names[] = {"conv1",   "relu1", "conv2", "relu2", "pool", "drop1",
                                        "flatten", "fc1",   "relu3", "drop2", "fc2"};
    for (int i = 0; net && i < 11; i++) kiln_module_set_child_name(net, i, names[i]);
    kiln_load_report rep;
    if (!net || kiln_module_load(net, path, true, &rep) != KILN_OK) {
        fprintf(stderr, "%s: --features %s: %s\n", PROG, path, kiln_error_message(ctx));
        kiln_module_free(net);
        return NULL;
    }
    kiln_module_train(net, false);
    *features = (int)h;
    return net;
}

/* Feature sums of a set of images: sum[d] and the upper triangle of sum x x^T. */
typedef struct feat_stats {
    int d;
    int64_t n;
    double *sum, *outer;
    int64_t classes[10];
} feat_stats;

static bool stats_init(feat_stats *s, int d) {
    memset(s, 0, sizeof *s);
    s->d = d;
    s->sum = calloc((size_t)d, sizeof(double));
    s->outer = calloc((size_t)d * (size_t)d, sizeof(double));
    return s->sum && s->outer;
}

static void stats_free(feat_stats *s) {
    free(s->sum);
    free(s->outer);
}

/* Adds the classifier's features and predicted classes of images x01 [B, 1, 28, 28] in
 * [0, 1]. */
static kiln_status stats_add(feat_stats *s, kiln_module *cls, kiln_tensor *x01) {
    kiln_ctx *ctx = kiln_module_ctx(cls);
    kiln_tensor *h = x01;
    for (int i = 0; i <= 8; i++) h = kiln_forward(kiln_module_child(cls, i), h); /* conv1 .. relu3 */
    kiln_tensor *logits = kiln_forward(kiln_module_child(cls, 10), h);           /* drop2 is off */
    kiln_tensor *pred = kiln_argmax(ctx, logits, 1, false);
    if (!pred) return kiln_error_status(ctx);
    int64_t b = kiln_tensor_shape(h)[0], d = s->d;
    float *f = malloc(sizeof(float) * (size_t)(b * d));
    int32_t *p = malloc(sizeof(int32_t) * (size_t)b);
    kiln_status st = f && p ? KILN_OK : KILN_ERR_HOST_OUT_OF_MEMORY;
    if (st == KILN_OK) st = kiln_to_host(h, f, sizeof(float) * (size_t)(b * d));
    if (st == KILN_OK) st = kiln_to_host(pred, p, sizeof(int32_t) * (size_t)b); /* argmax gives I32 */
    for (int64_t r = 0; st == KILN_OK && r < b; r++) {
        const float *x = f + r * d;
        for (int64_t i = 0; i < d; i++) {
            s->sum[i] += x[i];
            double xi = x[i];
            if (xi == 0) continue; /* ReLU features: many zeros */
            for (int64_t j = i; j < d; j++) s->outer[i * d + j] += xi * x[j];
        }
        if (p[r] >= 0 && p[r] < 10) s->classes[p[r]]++;
    }
    if (st == KILN_OK) s->n += b;
    free(f);
    free(p);
    return st;
}

/* mean and covariance (unbiased, as numpy.cov) of the sums. */
static void stats_moments(const feat_stats *s, double *mu, double *cov) {
    int64_t d = s->d;
    double n = (double)s->n;
    for (int64_t i = 0; i < d; i++) mu[i] = s->sum[i] / n;
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = i; j < d; j++)
            cov[i * d + j] = cov[j * d + i] = (s->outer[i * d + j] - n * mu[i] * mu[j]) / (n - 1);
}

/* The features of the first n test images and of n images of G (eval mode), and their
 * Fréchet distance; prints the class histograms and the key=value lines. */
static kiln_status measure(gan *net, kiln_module *cls, int d, kiln_dataset *test, int64_t n) {
    kiln_ctx *ctx = kiln_module_ctx(net->g);
    feat_stats real, gen;
    bool ok = stats_init(&real, d) & stats_init(&gen, d);
    double *mu1 = malloc(sizeof(double) * (size_t)d), *mu2 = malloc(sizeof(double) * (size_t)d);
    double *c1 = malloc(sizeof(double) * (size_t)d * (size_t)d), *c2 = malloc(sizeof(double) * (size_t)d * (size_t)d);
    kiln_loader *l = NULL;
    kiln_status st = ok && mu1 && mu2 && c1 && c2 ? KILN_OK : KILN_ERR_HOST_OUT_OF_MEMORY;
    bool was = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(net->g, false);
    double t0 = ex_now_ms();
    if (st == KILN_OK) {
        kiln_loader_opts lo = kiln_loader_defaults();
        lo.batch_size = 250;
        lo.scale = 1.0f / 255;
        l = kiln_loader_new(ctx, test, &lo);
        if (!l) st = kiln_error_status(ctx);
    }
    kiln_tensor *x, *y;
    while (st == KILN_OK && real.n < n) {
        kiln_scope_begin(ctx);
        if (kiln_loader_next(l, &x, &y)) {
            int64_t b = kiln_tensor_shape(x)[0];
            if (real.n + b > n) x = kiln_slice(ctx, x, 0, 0, n - real.n, 1);
            st = stats_add(&real, cls, x);
        } else {
            st = kiln_error_status(ctx) != KILN_OK ? kiln_error_status(ctx) : KILN_ERR_RANGE;
        }
        kiln_scope_end(ctx);
    }
    while (st == KILN_OK && gen.n < n) {
        kiln_scope_begin(ctx);
        int64_t b = n - gen.n < 250 ? n - gen.n : 250;
        kiln_tensor *g = kiln_forward(net->g, kiln_rand_normal(ctx, 0, 1, 2, (int64_t[]){b, Z_DIM}));
        st = g ? stats_add(&gen, cls, kiln_mul_scalar(ctx, kiln_add_scalar(ctx, g, 1.0f), 0.5f)) /* to [0, 1] */
               : kiln_error_status(ctx);
        kiln_scope_end(ctx);
    }
    kiln_ctx_set_grad_enabled(ctx, was);
    kiln_module_train(net->g, true);
    double fid = NAN;
    if (st == KILN_OK) {
        stats_moments(&real, mu1, c1);
        stats_moments(&gen, mu2, c2);
        if (kiln_frechet_distance(d, mu1, c1, mu2, c2, &fid) != KILN_OK) {
            fprintf(stderr, "%s: %s\n", PROG, kiln_last_error());
            st = KILN_ERR_INVALID_ARGUMENT;
        }
    }
    if (st == KILN_OK) {
        printf("\nmeasure (%lld generated and %lld test images, %d features, %.1f s):\n", (long long)gen.n,
               (long long)real.n, d, (ex_now_ms() - t0) / 1e3);
        printf("  %-12s %9s %9s\n", "class", "generated", "test");
        int present = 0;
        double min_frac = 1;
        for (int c = 0; c < 10; c++) {
            printf("  %-12s %9lld %9lld\n", kiln_fashion_mnist_class_name(c), (long long)gen.classes[c],
                   (long long)real.classes[c]);
            present += gen.classes[c] > 0;
            double fr = (double)gen.classes[c] / (double)gen.n;
            if (fr < min_frac) min_frac = fr;
        }
        printf("fid=%.4f\nclasses_present=%d\nmin_class_fraction=%.4f\n", fid, present, min_frac);
    }
    kiln_loader_free(l);
    stats_free(&real);
    stats_free(&gen);
    free(mu1), free(mu2), free(c1), free(c2);
    return st;
}

/* ---- the program ------------------------------------------------------------------------ */

#define FAIL(...)                                                                                                      \
    do {                                                                                                               \
        fprintf(stderr, PROG ": ");                                                                                    \
        fprintf(stderr, __VA_ARGS__);                                                                                  \
        fputc('\n', stderr);                                                                                           \
        goto done;                                                                                                     \
    } while (0)

/* G (eval mode) on the fixed noise, as an 8 x 8 grid of values -1..1. */
static kiln_status save_picture(gan *n, kiln_tensor *fixed, const char *path) {
    kiln_ctx *ctx = kiln_module_ctx(n->g);
    bool was = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(n->g, false);
    kiln_scope_begin(ctx);
    kiln_tensor *img = kiln_forward(n->g, fixed);
    kiln_image_grid_opts go = kiln_image_grid_defaults();
    go.lo = -1, go.hi = 1;
    if (img) kiln_save_image_grid(img, path, &go);
    kiln_scope_end(ctx);
    kiln_ctx_set_grad_enabled(ctx, was);
    kiln_module_train(n->g, true);
    return kiln_error_status(ctx);
}

int main(int argc, char **argv) {
    opts o = defaults;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    if (ex_tiny() && o.fid_samples == defaults.fid_samples) o.fid_samples = 1000;
    rc = 1;
    double t_start = ex_now_ms();
    ex_opts eo = {.device = o.device};
    kiln_ctx *ctx = ex_open(PROG, &eo);
    if (!ctx) return 1;
    gan net = {.bce = !strcmp(o.loss, "bce")};
    kiln_module *cls = NULL;
    kiln_dataset *train = NULL, *test = NULL;
    kiln_loader *train_l = NULL;
    kiln_tensor *fixed = NULL;
    char *text = NULL, path[4096];
    double dl_mean = NAN, gl_mean = NAN;
    int feat_dim = 0;

    if (o.features && !(cls = load_classifier(ctx, o.features, &feat_dim))) goto done;
    if (mkdir(o.out_dir, 0777) != 0 && errno != EEXIST) FAIL("cannot make %s: %s", o.out_dir, strerror(errno));
    kiln_manual_seed(ctx, o.seed);
    net.g = build_generator(ctx);
    net.d = net.g ? build_discriminator(ctx) : NULL;
    if (!net.g || !net.d) FAIL("building the models: %s", kiln_error_message(ctx));
    fixed = kiln_rand_normal(ctx, 0, 1, 2, (int64_t[]){FIXED_N, Z_DIM});
    net.og = adam_over(ctx, net.g, o.lr);
    net.od = adam_over(ctx, net.d, o.lr);
    if (!fixed || !net.og || !net.od) FAIL("%s", kiln_error_message(ctx));
    text = malloc(1 << 16);
    if (!text) FAIL("out of host memory");
    printf("generator: %s\n", kiln_module_describe(net.g, text, 1 << 16));
    printf("discriminator: %s\n", kiln_module_describe(net.d, text, 1 << 16));
    long long pg = (long long)kiln_module_num_elements(net.g), pd = (long long)kiln_module_num_elements(net.d);
    printf("parameters: G %lld, D %lld, total %lld\n", pg, pd, pg + pd);

    train = kiln_fashion_mnist(o.data, true);
    test = train ? kiln_fashion_mnist(o.data, false) : NULL;
    if (!train || !test) FAIL("%s", kiln_last_error());
    if (o.limit > 0 && o.limit < kiln_dataset_num_samples(train)) {
        int64_t *idx = malloc(sizeof *idx * (size_t)o.limit);
        if (!idx) FAIL("out of host memory");
        for (int64_t i = 0; i < o.limit; i++) idx[i] = i;
        kiln_dataset *sub = kiln_dataset_subset(train, idx, o.limit);
        free(idx);
        if (!sub) FAIL("%s", kiln_last_error());
        kiln_dataset_free(train);
        train = sub;
    }
    if (o.fid_samples > kiln_dataset_num_samples(test)) o.fid_samples = kiln_dataset_num_samples(test);
    /* x/255 then (x - 0.5) / 0.5: [-1, 1], tanh's range */
    static const float half[] = {0.5f};
    kiln_loader_opts lo = kiln_loader_defaults();
    lo.batch_size = o.batch;
    lo.shuffle = true;
    lo.drop_last = true;
    lo.seed = o.seed;
    lo.scale = 1.0f / 255;
    lo.norm_count = 1, lo.mean = half, lo.std = half;
    train_l = kiln_loader_new(ctx, train, &lo);
    if (!train_l) FAIL("%s", kiln_error_message(ctx));
    int64_t nb = kiln_loader_num_batches(train_l);
    if (nb < 1)
        FAIL("--batch %lld is more than the %lld training images", (long long)o.batch,
             (long long)kiln_dataset_num_samples(train));
    printf("data: %lld training images, %lld batches of %lld per epoch\n", (long long)kiln_dataset_num_samples(train),
           (long long)nb, (long long)o.batch);
    printf("loss %s, Adam lr=%g betas 0.5/0.999 for G and D, %lld epochs, seed %llu\n", o.loss, o.lr,
           (long long)o.epochs, (unsigned long long)o.seed);

    double t_train = 0;
    int64_t steps = 0;
    for (int64_t e = 1; e <= o.epochs; e++) {
        double t0 = ex_now_ms(), dsum = 0, gsum = 0, last_draw = 0;
        int64_t i = 0;
        kiln_tensor *x, *y;
        for (;;) {
            kiln_scope_begin(ctx);
            if (!kiln_loader_next(train_l, &x, &y)) {
                kiln_scope_end(ctx);
                break;
            }
            float dl = NAN, gl = NAN;
            kiln_status s = gan_step(&net, x, &dl, &gl);
            kiln_scope_end(ctx);
            if (s != KILN_OK) FAIL("training, epoch %lld: %s", (long long)e, kiln_error_message(ctx));
            dsum += dl, gsum += gl, i++;
            double now = ex_now_ms();
            if (o.progress && (now - last_draw > 100 || i == nb)) {
                fprintf(stderr, "\repoch %lld/%lld  batch %lld/%lld  d_loss %.4f  g_loss %.4f", (long long)e,
                        (long long)o.epochs, (long long)i, (long long)nb, dsum / (double)i, gsum / (double)i);
                last_draw = now;
            }
        }
        if (kiln_error_status(ctx) != KILN_OK) FAIL("loading data: %s", kiln_error_message(ctx));
        if (o.progress) fputc('\n', stderr);
        double secs = (ex_now_ms() - t0) / 1e3;
        t_train += secs, steps += i;
        dl_mean = dsum / (double)i, gl_mean = gsum / (double)i;
        snprintf(path, sizeof path, "%s/gan_fashion_epoch_%03lld.png", o.out_dir, (long long)e);
        if (save_picture(&net, fixed, path) != KILN_OK) FAIL("writing %s: %s", path, kiln_error_message(ctx));
        printf("epoch %lld: d_loss=%.4f g_loss=%.4f  %.1f s  %s\n", (long long)e, dl_mean, gl_mean, secs, path);
    }
    printf("trained %lld epochs in %.1f s (%.1f ms per step of D and G, mean)\n", (long long)o.epochs, t_train,
           steps ? t_train * 1e3 / (double)steps : 0.0);
    if (o.save) {
        if (kiln_module_save(net.g, o.save, "gan_fashion generator (torch_ref.py dcgan G)") != KILN_OK)
            FAIL("saving: %s", kiln_error_message(ctx));
        printf("saved the generator to %s\n", o.save);
    }
    if (cls && measure(&net, cls, feat_dim, test, o.fid_samples) != KILN_OK)
        FAIL("measuring: %s", kiln_error_message(ctx));
    if (!cls) printf("(no --features: no Fréchet distance; cnn_fashion --save PATH makes the feature network)\n");
    printf("wall time %.1f s\n", (ex_now_ms() - t_start) / 1e3);
    printf("d_loss=%.4f\ng_loss=%.4f\n", dl_mean, gl_mean);
    rc = 0;
done:
    free(text);
    kiln_tensor_free(fixed);
    kiln_loader_free(train_l);
    kiln_optim_free(net.og);
    kiln_optim_free(net.od);
    kiln_module_free(net.g);
    kiln_module_free(net.d);
    kiln_module_free(cls);
    kiln_dataset_free(train);
    kiln_dataset_free(test);
    kiln_close(ctx);
    return rc;
}
