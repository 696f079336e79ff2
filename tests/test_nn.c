/* tests/test_nn.c - the module layer (include/kiln/nn.h, include/kiln/module.h): every
 * layer against its torch.nn twin (tests/golden/gen_nn.py), a user-defined torchvision
 * BasicBlock loaded with torch's state_dict and compared with torch, a user-defined
 * two-input two-output module against the same computation in plain ops, ModuleList and
 * ModuleDict, PyTorch's default initialisation, state_dict names, train/eval, transfer
 * learning (replace a head, freeze a body), error paths that name the module, and leaks.
 *
 * Golden tolerances (normalised error |got - ref| / (atol + rtol*|ref|) <= 1). Both sides
 * are float32, so the difference is rounding only: kiln's kernels and torch's CPU kernels
 * (MKL/oneDNN GEMM and convolution, ATen reductions, batch-norm statistics in double) sum
 * in different orders. A sum of K products of O(1) values differs by about sqrt(K) * u *
 * sum|terms| (u = 2^-24 = 6e-8), K * u * sum|terms| at worst. Each case of `cases` below
 * names its bound and why; KILN_TEST_VERBOSE=1 logs every case's worst normalised error.
 * Measured on POCL: 0 to 0.3 of the bound (conv gradients and gelu are the tightest), so
 * a wrong gradient, a transposed weight or a missing bias fails by orders of magnitude.
 *   - exact (0, 0): max pooling and its routed gradient, flatten (copies), leaky_relu
 *     (x or 0.2f * x, one correctly rounded product as in torch), num_batches_tracked.
 *   - EPS_OUT 5e-7 abs + rel (~8 u): O(1) values of a few roundings: averages of <= 20
 *     terms, normalisation with given statistics (eval), gelu's erf (OpenCL allows 16 ulp
 *     for erf, 4 for exp), softmax's exp / sum / division.
 *   - EPS_SUM 2e-6 abs + rel: sums of up to ~100 products (linear, conv, conv-transposed
 *     and their weight gradients over batch and positions) whose magnitudes add up to a
 *     few units: sqrt(100) * u * 3 = 1.8e-6; batch/layer norm outputs in training (float
 *     statistics of 6-60 values against torch's double ones, then O(1) arithmetic).
 *   - EPS_NORM 3e-6 abs + rel: batch/layer norm gradients, rstd * w * (dy - mean(dy) -
 *     xhat * mean(dy * xhat)), differences of O(1) terms scaled by rstd (up to ~3) and
 *     weight (up to 1.5).
 *   - running statistics after a training forward, 3e-7 abs + rel: one momentum update (3
 *     roundings) of O(1) float statistics against torch's double ones.
 *   - BB_EPS 1e-5 (basic_block's gradients; its output is EPS_SUM): see its definition.
 *
 * Initialisation statistics (fixed seeds, so the outcome is deterministic; the bounds are
 * what a correct implementation meets except with probability ~1e-6, and a wrong bound
 * misses them by far):
 *   U(-b, b), n samples: every |w| <= b (as a float); max|w| >= b * (1 - 20/n) (the
 *   largest of n uniform magnitudes falls short of b by more than t*b with probability
 *   (1 - t)^n ~ e^-20 at t = 20/n); mean within 5 standard errors b / sqrt(3n); sample
 *   variance b^2/3 within 5 standard errors: Var(w^2) = E w^4 - (E w^2)^2 = b^4/5 - b^4/9
 *   = 4 b^4 / 45, so the relative standard error of the second moment is sqrt(0.8 / n).
 *   N(0, 1), n samples: mean within 5/sqrt(n), variance within 5*sqrt(2/n) of 1, and the
 *   fraction inside one standard deviation 0.6827 within 5*sqrt(p(1-p)/n) (a uniform of
 *   the same variance has 0.577).
 */
#include "golden.h"

#define EPS_OUT 5e-7
#define EPS_SUM 2e-6
#define EPS_NORM 3e-6
/* the BasicBlock's gradients: two training-mode batch norms (EPS_NORM each) in a chain,
 * each stage's rounding scaled by the next one's rstd * weight (up to ~3) and summed over
 * 27- to 36-term convolution windows: 3 * EPS_NORM ~ 1e-5 */
#define BB_EPS 1e-5

static bool verbose;

/* ---- helpers -------------------------------------------------------------------------- */

/* Compares a kiln F32 tensor (or an I32 one, exactly) with a golden tensor of the same shape;
 * returns the worst normalised error (INFINITY when it cannot compare). */
static double cmp(const char *what, kiln_tensor *got, const golden_tensor *ref, double atol, double rtol) {
    CHECK(got != NULL, "%s: no tensor", what);
    if (!got || !ref) return INFINITY;
    bool same_shape =
        kiln_tensor_ndim(got) == ref->ndim &&
        (ref->ndim == 0 || memcmp(kiln_tensor_shape(got), ref->shape, sizeof(int64_t) * (size_t)ref->ndim) == 0);
    char s[96];
    CHECK(same_shape, "%s: shape %s differs from PyTorch's", what, kiln_tensor_shape_str(got, s, sizeof s));
    if (!same_shape) return INFINITY;
    bool is_int = kiln_tensor_dtype(got) == KILN_I32;
    CHECK(is_int == ref->is_int, "%s: dtype %s, PyTorch's is %s", what, kiln_dtype_name(kiln_tensor_dtype(got)),
          ref->is_int ? "int" : "float");
    if (is_int != ref->is_int) return INFINITY;
    int64_t n = ref->numel;
    double *r = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    float *h = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (is_int) {
        int32_t *iv = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
        CHECK(kiln_to_host(got, iv, sizeof(int32_t) * (size_t)n) == KILN_OK, "%s: read back", what);
        for (int64_t k = 0; k < n; k++) h[k] = (float)iv[k], r[k] = ref->i[k];
        free(iv);
    } else {
        CHECK(kiln_to_host(got, h, sizeof(float) * (size_t)n) == KILN_OK, "%s: read back", what);
        for (int64_t k = 0; k < n; k++) r[k] = ref->f[k];
    }
    double w = h_compare(what, h, r, n, atol, rtol);
    free(h);
    free(r);
    return w;
}

/* A reference model and input whose output must not change across the error paths. */
typedef struct intact {
    kiln_module *m;
    kiln_tensor *x;
    float y[2 * 3];
} intact;

/* set while test_errors runs: every expected error is followed by a valid forward */
static intact *g_intact;

static void intact_check(kiln_ctx *ctx, intact *r, const char *after) {
    kiln_scope_begin(ctx);
    kiln_tensor *y = kiln_forward(r->m, r->x);
    float h[6] = {0};
    CHECK(y && kiln_to_host(y, h, sizeof h) == KILN_OK && memcmp(h, r->y, sizeof h) == 0,
          "after %s: a valid forward fails or differs: %s", after, kiln_error_message(ctx));
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/* Expects a NULL tensor / failed call with status st and a message holding every given
 * string; clears the error. */
static void expect_err(kiln_ctx *ctx, bool failed, kiln_status st, const char *what, const char *w1, const char *w2,
                       const char *w3) {
    const char *msg = kiln_error_message(ctx);
    CHECK(failed, "%s: expected a failure", what);
    CHECK(kiln_error_status(ctx) == st, "%s: status %s, expected %s (%s)", what,
          kiln_status_name(kiln_error_status(ctx)), kiln_status_name(st), msg);
    const char *ws[3] = {w1, w2, w3};
    for (int k = 0; k < 3; k++)
        if (ws[k]) CHECK(strstr(msg, ws[k]) != NULL, "%s: message \"%s\" lacks \"%s\"", what, msg, ws[k]);
    if (verbose) fprintf(stderr, "  %s: %s\n", what, msg);
    kiln_error_clear(ctx);
    if (g_intact) intact_check(ctx, g_intact, what);
}

static kiln_tensor *upload(kiln_ctx *ctx, const float *data, int ndim, const int64_t *shape) {
    return kiln_from_host(ctx, data, KILN_F32, ndim, shape);
}

/* ---- golden: each module against its torch.nn twin ------------------------------------ */

static kiln_module *mk_linear(kiln_ctx *ctx) { return kiln_nn_linear(ctx, 7, 5, true); }
static kiln_module *mk_linear_nobias(kiln_ctx *ctx) { return kiln_nn_linear(ctx, 6, 4, false); }
static kiln_module *mk_conv(kiln_ctx *ctx) {
    kiln_conv2d_params p = {.stride = {2, 2}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    return kiln_nn_conv2d(ctx, 3, 4, 3, 3, &p, true);
}
static kiln_module *mk_conv_groups(kiln_ctx *ctx) {
    kiln_conv2d_params p = {.stride = {1, 1}, .dilation = {2, 1}, .groups = 2};
    return kiln_nn_conv2d(ctx, 4, 6, 3, 2, &p, true);
}
static kiln_module *mk_convt(kiln_ctx *ctx) {
    kiln_conv2d_params p = {
        .stride = {2, 2}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1, .output_padding = {1, 1}};
    return kiln_nn_conv_transpose2d(ctx, 3, 2, 3, 3, &p, true);
}
static kiln_module *mk_bn1(kiln_ctx *ctx) { return kiln_nn_batchnorm1d(ctx, 5, 1e-5f, 0.1f); }
static kiln_module *mk_bn2(kiln_ctx *ctx) { return kiln_nn_batchnorm2d(ctx, 3, 1e-5f, 0.1f); }
static kiln_module *mk_ln(kiln_ctx *ctx) { return kiln_nn_layernorm(ctx, 2, (int64_t[]){4, 5}, 1e-5f, true); }
static kiln_module *mk_maxpool(kiln_ctx *ctx) {
    return kiln_nn_maxpool2d(ctx, &(kiln_pool2d_params){.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}});
}
static kiln_module *mk_avgpool(kiln_ctx *ctx) {
    /* torch's AvgPool2d counts the padding (count_include_pad=True by default) */
    kiln_pool2d_params p = {
        .kernel = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .count_include_pad = true, .dilation = {1, 1}};
    return kiln_nn_avgpool2d(ctx, &p);
}
static kiln_module *mk_gap(kiln_ctx *ctx) { return kiln_nn_global_avgpool2d(ctx); }
static kiln_module *mk_flatten(kiln_ctx *ctx) { return kiln_nn_flatten(ctx, 1, -1); }
static kiln_module *mk_gelu(kiln_ctx *ctx) { return kiln_nn_activation(ctx, KILN_ACT_GELU, 0); }
static kiln_module *mk_leaky(kiln_ctx *ctx) { return kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f); }
static kiln_module *mk_softmax(kiln_ctx *ctx) { return kiln_nn_activation(ctx, KILN_ACT_SOFTMAX, 1); }

/* torchvision's ResNet BasicBlock as a user-defined module, through kiln/module.h alone:
 * conv3x3(stride)-bn-relu-conv3x3-bn, plus the identity or a 1x1-conv/bn "downsample"
 * (a Sequential, so its keys are downsample.0.weight, downsample.1.*), relu. */
typedef struct basic_block {
    kiln_module *conv1, *bn1, *relu, *conv2, *bn2, *downsample; /* downsample NULL: the identity */
} basic_block;

static kiln_status basic_block_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    const basic_block *b = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    kiln_tensor *h = kiln_forward(b->relu, kiln_forward(b->bn1, kiln_forward(b->conv1, in[0])));
    h = kiln_forward(b->bn2, kiln_forward(b->conv2, h));
    kiln_tensor *identity = b->downsample ? kiln_forward(b->downsample, in[0]) : in[0];
    out[0] = kiln_forward(b->relu, kiln_add(ctx, h, identity));
    return out[0] ? KILN_OK : kiln_error_status(ctx);
}

/* Registers child under name and keeps it in *slot. */
static bool bb_child(kiln_module *m, const char *name, kiln_module **slot, kiln_module *child) {
    if (kiln_module_add_child(m, name, child) != KILN_OK) return false;
    *slot = child;
    return true;
}

static kiln_module *basic_block_new(kiln_ctx *ctx, int64_t inplanes, int64_t planes, int stride) {
    static const kiln_module_def def = {.kind = "BasicBlock",
                                        .state_size = sizeof(basic_block),
                                        .forward = basic_block_forward,
                                        .num_inputs = 1,
                                        .num_outputs = 1};
    kiln_module *m = kiln_module_new(ctx, &def);
    if (!m) return NULL;
    basic_block *b = kiln_module_data(m);
    kiln_conv2d_params p3 = {.stride = {stride, stride}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    kiln_conv2d_params p3s1 = {.stride = {1, 1}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    kiln_conv2d_params p1 = {.stride = {stride, stride}, .dilation = {1, 1}, .groups = 1};
    bool ok = bb_child(m, "conv1", &b->conv1, kiln_nn_conv2d(ctx, inplanes, planes, 3, 3, &p3, false)) &&
              bb_child(m, "bn1", &b->bn1, kiln_nn_batchnorm2d(ctx, planes, 1e-5f, 0.1f)) &&
              bb_child(m, "relu", &b->relu, kiln_nn_activation(ctx, KILN_ACT_RELU, 0)) &&
              bb_child(m, "conv2", &b->conv2, kiln_nn_conv2d(ctx, planes, planes, 3, 3, &p3s1, false)) &&
              bb_child(m, "bn2", &b->bn2, kiln_nn_batchnorm2d(ctx, planes, 1e-5f, 0.1f));
    if (ok && (stride != 1 || inplanes != planes))
        ok = bb_child(m, "downsample", &b->downsample,
                      kiln_nn_sequential(ctx, 2,
                                         (kiln_module *[]){kiln_nn_conv2d(ctx, inplanes, planes, 1, 1, &p1, false),
                                                           kiln_nn_batchnorm2d(ctx, planes, 1e-5f, 0.1f)}));
    if (!ok) {
        kiln_module_free(m);
        return NULL;
    }
    return m;
}

static kiln_module *mk_basic_block(kiln_ctx *ctx) { return basic_block_new(ctx, 3, 4, 2); }
static kiln_module *mk_basic_block_identity(kiln_ctx *ctx) { return basic_block_new(ctx, 4, 4, 1); }

typedef struct nn_case {
    const char *name;
    kiln_module *(*make)(kiln_ctx *);
    bool training;
    const char *state[20]; /* torch's state_dict keys in torch's order (the golden file sorts them) */
    double y_atol, y_rtol; /* output */
    double g_atol, g_rtol; /* input and parameter gradients */
    double b_atol, b_rtol; /* buffers after the forward */
} nn_case;

#define BN_STATE                                                                                                       \
    { "weight", "bias", "running_mean", "running_var", "num_batches_tracked" }
static const nn_case cases[] = {
    /* 7-term dot products; the gradients sum 3 (weight) or 5 (input) products */
    {"linear", mk_linear, true, {"weight", "bias"}, EPS_SUM, EPS_SUM, EPS_SUM, EPS_SUM, 0, 0},
    {"linear_nobias_3d", mk_linear_nobias, true, {"weight"}, EPS_SUM, EPS_SUM, EPS_SUM, EPS_SUM, 0, 0},
    /* 27-term windows; weight gradients sum 2*4*3 positions */
    {"conv2d", mk_conv, true, {"weight", "bias"}, EPS_SUM, EPS_SUM, EPS_SUM, EPS_SUM, 0, 0},
    {"conv2d_groups", mk_conv_groups, true, {"weight", "bias"}, EPS_SUM, EPS_SUM, EPS_SUM, EPS_SUM, 0, 0},
    {"conv_transpose2d", mk_convt, true, {"weight", "bias"}, EPS_SUM, EPS_SUM, EPS_SUM, EPS_SUM, 0, 0},
    /* outputs: the forward bound of tests/test_norm.c (statistics in float vs torch's
     * double); running statistics: one momentum update of them (3 roundings of O(1) values) */
    {"batchnorm1d", mk_bn1, true, BN_STATE, EPS_SUM, EPS_SUM, EPS_NORM, EPS_NORM, 3e-7, 3e-7},
    {"batchnorm1d_eval", mk_bn1, false, BN_STATE, EPS_OUT, EPS_OUT, EPS_NORM, EPS_NORM, 0, 0},
    {"batchnorm2d", mk_bn2, true, BN_STATE, EPS_SUM, EPS_SUM, EPS_NORM, EPS_NORM, 3e-7, 3e-7},
    {"batchnorm2d_eval", mk_bn2, false, BN_STATE, EPS_OUT, EPS_OUT, EPS_NORM, EPS_NORM, 0, 0},
    {"layernorm", mk_ln, true, {"weight", "bias"}, EPS_SUM, EPS_SUM, EPS_NORM, EPS_NORM, 0, 0},
    /* a max and its routed gradient: exact */
    {"maxpool2d", mk_maxpool, true, {NULL}, 0, 0, 0, 0, 0, 0},
    /* averages of 9 and sums of <= 4 gradient shares: a few roundings */
    {"avgpool2d", mk_avgpool, true, {NULL}, EPS_OUT, EPS_OUT, EPS_OUT, EPS_OUT, 0, 0},
    /* a mean of 20 terms; the gradient seed/20 */
    {"global_avgpool2d", mk_gap, true, {NULL}, EPS_OUT, EPS_OUT, EPS_OUT, EPS_OUT, 0, 0},
    {"flatten", mk_flatten, true, {NULL}, 0, 0, 0, 0, 0, 0},
    /* erf (OpenCL: 16 ulp allowed) and its derivative's exp */
    {"gelu", mk_gelu, true, {NULL}, EPS_OUT, EPS_OUT, EPS_OUT, EPS_OUT, 0, 0},
    /* x or 0.2f * x and seed or 0.2f * seed: one correctly rounded product, as torch */
    {"leaky_relu", mk_leaky, true, {NULL}, 0, 0, 0, 0, 0, 0},
    /* exp, a 7-term sum, a division; the gradient y * (g - sum(g * y)) */
    {"softmax", mk_softmax, true, {NULL}, EPS_OUT, EPS_OUT, EPS_OUT, EPS_OUT, 0, 0},
    /* a user-defined module (torchvision's BasicBlock with downsample) loaded with torch's
     * state_dict by name, every key and no other; tolerances: see BB_EPS */
    {"basic_block",
     mk_basic_block,
     true,
     {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
      "conv2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked",
      "downsample.0.weight", "downsample.1.weight", "downsample.1.bias", "downsample.1.running_mean",
      "downsample.1.running_var", "downsample.1.num_batches_tracked"},
     EPS_SUM,
     EPS_SUM,
     BB_EPS,
     BB_EPS,
     3e-7,
     3e-7},
    /* the identity shortcut in eval: batch norm is a fixed affine map, so outputs and
     * gradients are 36-term convolution sums twice over, scaled by up to ~1.5 / sqrt(0.5) */
    {"basic_block_identity_eval",
     mk_basic_block_identity,
     false,
     {"conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
      "conv2.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var", "bn2.num_batches_tracked"},
     EPS_SUM,
     EPS_SUM,
     EPS_NORM,
     EPS_NORM,
     0,
     0},
};
#define NCASES ((int)(sizeof cases / sizeof cases[0]))

/* Golden tensor "<case>.<part>" or NULL without a failed check. */
static const golden_tensor *gfind(const golden *g, const char *cname, const char *part) {
    char key[320];
    snprintf(key, sizeof key, "%.100s.%.200s", cname, part);
    for (int k = 0; k < g->n; k++)
        if (strcmp(g->t[k].name, key) == 0) return &g->t[k];
    return NULL;
}

/* Number of golden keys starting with "<case>.<section>." */
static int gcount(const golden *g, const char *cname, const char *section) {
    char pre[160];
    int n = snprintf(pre, sizeof pre, "%s.%s.", cname, section), c = 0;
    for (int k = 0; k < g->n; k++) c += strncmp(g->t[k].name, pre, (size_t)n) == 0;
    return c;
}

static void golden_case(kiln_ctx *ctx, const golden *g, const nn_case *c) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_module *m = c->make(ctx);
    CHECK(m != NULL, "%s: constructor: %s", c->name, kiln_error_message(ctx));
    if (!m) {
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
        return;
    }
    /* names and shapes are torch's state_dict, in torch's order */
    kiln_named_tensor st[32];
    int ns = kiln_module_state(m, st, 32), nexp = 0;
    while (nexp < 20 && c->state[nexp]) nexp++;
    CHECK(ns == nexp && ns == gcount(g, c->name, "state"), "%s: %d state entries, torch has %d", c->name, ns,
          gcount(g, c->name, "state"));
    for (int k = 0; k < ns && k < 32; k++) {
        CHECK(k < nexp && strcmp(st[k].name, c->state[k]) == 0, "%s: state entry %d is '%s', torch's is '%s'", c->name,
              k, st[k].name, k < nexp ? c->state[k] : "(none)");
        char part[200];
        snprintf(part, sizeof part, "state.%.127s", st[k].name);
        const golden_tensor *gt = gfind(g, c->name, part);
        CHECK(gt != NULL, "%s: kiln's '%s' is not a key of torch's state_dict", c->name, st[k].name);
        if (!gt) continue;
        bool same = kiln_tensor_ndim(st[k].tensor) == gt->ndim &&
                    memcmp(kiln_tensor_shape(st[k].tensor), gt->shape, sizeof(int64_t) * (size_t)gt->ndim) == 0 &&
                    (kiln_tensor_dtype(st[k].tensor) == KILN_I32) == gt->is_int;
        char s[96];
        CHECK(same, "%s: '%s' is %s %s, torch's differs", c->name, st[k].name,
              kiln_dtype_name(kiln_tensor_dtype(st[k].tensor)), kiln_tensor_shape_str(st[k].tensor, s, sizeof s));
        bool is_buf = strstr(st[k].name, "running_") || strstr(st[k].name, "num_batches_tracked");
        CHECK(st[k].is_buffer == is_buf, "%s: '%s' is_buffer %d", c->name, st[k].name, st[k].is_buffer);
        CHECK(kiln_module_find(m, st[k].name) == st[k].tensor, "%s: kiln_module_find('%s')", c->name, st[k].name);
        if (same) /* load torch's values by name */
            CHECK(kiln_copy_from_host(st[k].tensor, gt->is_int ? (const void *)gt->i : (const void *)gt->f,
                                      4 * (size_t)gt->numel) == KILN_OK,
                  "%s: loading '%s': %s", c->name, st[k].name, kiln_error_message(ctx));
    }
    kiln_module_train(m, c->training);
    CHECK(kiln_module_is_training(m) == c->training, "%s: training flag", c->name);

    const golden_tensor *gx = gfind(g, c->name, "x"), *gseed = gfind(g, c->name, "seed");
    CHECK(gx && gseed, "%s: golden x/seed missing", c->name);
    kiln_tensor *x = gx ? golden_upload(ctx, gx) : NULL;
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *y = kiln_forward(m, x);
    CHECK(y != NULL, "%s: forward: %s", c->name, kiln_error_message(ctx));
    char what[400];
    double wy = 0, wg = 0, wb = 0;
    if (y && gseed) {
        snprintf(what, sizeof what, "%s: output", c->name);
        wy = cmp(what, y, gfind(g, c->name, "y"), c->y_atol, c->y_rtol);
        kiln_tensor *seed = golden_upload(ctx, gseed);
        CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "%s: backward: %s", c->name, kiln_error_message(ctx));
        snprintf(what, sizeof what, "%s: grad of x", c->name);
        wg = fmax(wg, cmp(what, kiln_tensor_grad(x), gfind(g, c->name, "grad.x"), c->g_atol, c->g_rtol));
        int nparams = 0;
        for (int k = 0; k < ns; k++) {
            char part[200];
            if (st[k].is_buffer) {
                snprintf(part, sizeof part, "after.%.127s", st[k].name);
                snprintf(what, sizeof what, "%s: %.127s after the forward", c->name, st[k].name);
                wb = fmax(wb, cmp(what, st[k].tensor, gfind(g, c->name, part), c->b_atol, c->b_rtol));
            } else {
                nparams++;
                snprintf(part, sizeof part, "grad.%.127s", st[k].name);
                snprintf(what, sizeof what, "%s: grad of %.127s", c->name, st[k].name);
                CHECK(kiln_tensor_grad(st[k].tensor) != NULL, "%s: parameter %s got no gradient", c->name, st[k].name);
                if (kiln_tensor_grad(st[k].tensor))
                    wg = fmax(wg,
                              cmp(what, kiln_tensor_grad(st[k].tensor), gfind(g, c->name, part), c->g_atol, c->g_rtol));
            }
        }
        CHECK(gcount(g, c->name, "grad") == nparams + 1, "%s: torch has %d gradients, kiln %d parameters + x", c->name,
              gcount(g, c->name, "grad"), nparams);
        CHECK(gcount(g, c->name, "after") == ns - nparams, "%s: torch has %d buffers, kiln %d", c->name,
              gcount(g, c->name, "after"), ns - nparams);
        CHECK(kiln_module_parameters(m, NULL, 0) == nparams, "%s: kiln_module_parameters", c->name);
    }
    if (verbose)
        fprintf(stderr, "  golden %-18s worst normalised error: output %.3g, gradients %.3g, buffers %.3g\n", c->name,
                wy, wg, wb);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_module_free(m);
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "%s: %lld tensors leaked", c->name,
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "nn")) return;
    for (int k = 0; k < NCASES; k++) golden_case(ctx, &g, &cases[k]);
    /* every case of the file is tested */
    for (int k = 0; k < g.n; k++) {
        bool known = false;
        for (int c = 0; c < NCASES && !known; c++) {
            size_t l = strlen(cases[c].name);
            known = strncmp(g.t[k].name, cases[c].name, l) == 0 && g.t[k].name[l] == '.';
        }
        CHECK(known, "golden entry %s belongs to no tested case", g.t[k].name);
    }
    golden_close(&g);
}

/* ---- initialisation -------------------------------------------------------------------- */

/* U(-bound, bound) statistics of t (see the header). */
static void check_uniform(const char *what, kiln_tensor *t, double bound) {
    CHECK(t != NULL, "%s: missing", what);
    if (!t) return;
    int64_t n = kiln_tensor_numel(t);
    float *h = h_read(t);
    float bf = (float)bound;
    double mx = 0, s1 = 0, s2 = 0;
    int64_t out = 0;
    for (int64_t i = 0; i < n; i++) {
        out += !(fabsf(h[i]) <= bf);
        mx = fmax(mx, fabs(h[i]));
        s1 += h[i];
    }
    double mean = s1 / (double)n;
    for (int64_t i = 0; i < n; i++) s2 += (h[i] - mean) * (h[i] - mean);
    double var = s2 / (double)(n - 1), want = bound * bound / 3;
    CHECK(out == 0, "%s: %lld of %lld values outside +-%.9g", what, (long long)out, (long long)n, bound);
    CHECK(mx >= bound * (1 - 20.0 / (double)n), "%s: largest |w| %.9g, expected within %.3g of the bound %.9g", what,
          mx, 20.0 / (double)n, bound);
    CHECK(fabs(mean) <= 5 * bound / sqrt(3.0 * (double)n), "%s: mean %.3g, expected 0 +- %.3g", what, mean,
          5 * bound / sqrt(3.0 * (double)n));
    double rel = fabs(var / want - 1), tol = 5 * sqrt(0.8 / (double)n);
    CHECK(rel <= tol, "%s: variance %.6g, bound^2/3 = %.6g (relative deviation %.4f > %.4f)", what, var, want, rel,
          tol);
    if (verbose)
        fprintf(stderr, "  init %s: n %lld bound %.6g max %.6g variance/(b^2/3) - 1 = %+.4f (tolerance %.4f)\n", what,
                (long long)n, bound, mx, var / want - 1, tol);
    free(h);
}

static void check_const(const char *what, kiln_tensor *t, float v) {
    CHECK(t != NULL, "%s: missing", what);
    if (!t) return;
    int64_t n = kiln_tensor_numel(t), bad = 0;
    float *h = h_read(t);
    for (int64_t i = 0; i < n; i++) bad += h[i] != v;
    CHECK(bad == 0, "%s: %lld of %lld elements are not %g", what, (long long)bad, (long long)n, v);
    free(h);
}

static bool same_values(kiln_tensor *a, kiln_tensor *b, int64_t *ndiff) {
    int64_t n = kiln_tensor_numel(a);
    if (n != kiln_tensor_numel(b)) return false;
    float *ha = h_read(a), *hb = h_read(b);
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++) d += memcmp(&ha[i], &hb[i], sizeof(float)) != 0;
    free(ha);
    free(hb);
    if (ndiff) *ndiff = d;
    return d == 0;
}

static void test_init(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_manual_seed(ctx, 2024);
    /* linear: fan_in = in_features; a wide layer for the bias statistics too */
    kiln_module *lin = kiln_nn_linear(ctx, 512, 256, true);
    kiln_module *wide = kiln_nn_linear(ctx, 100, 4096, true);
    /* conv2d: fan_in = (in/groups) * kh * kw = 32 * 9 */
    kiln_conv2d_params pg = {.stride = {1, 1}, .dilation = {1, 1}, .groups = 2};
    kiln_module *conv = kiln_nn_conv2d(ctx, 64, 128, 3, 3, &pg, true);
    /* conv_transpose2d: weight [in, out/groups, kh, kw], torch's fan_in is weight.size(1) *
     * kh * kw = (96/2) * 3 * 2 = 288 (in/groups would give 96) */
    kiln_module *convt = kiln_nn_conv_transpose2d(ctx, 32, 96, 3, 2, &pg, true);
    kiln_module *bn = kiln_nn_batchnorm2d(ctx, 7, 1e-5f, 0.1f);
    kiln_module *ln = kiln_nn_layernorm(ctx, 2, (int64_t[]){3, 4}, 1e-5f, true);
    kiln_module *ln_plain = kiln_nn_layernorm(ctx, 1, (int64_t[]){4}, 1e-5f, false);
    kiln_module *emb = kiln_nn_embedding(ctx, 200, 256);
    CHECK(lin && wide && conv && convt && bn && ln && ln_plain && emb, "constructors: %s", kiln_error_message(ctx));
    if (lin && wide && conv && convt && bn && ln && ln_plain && emb) {
        check_uniform("Linear(512, 256).weight", kiln_module_find(lin, "weight"), 1 / sqrt(512.0));
        check_uniform("Linear(100, 4096).bias", kiln_module_find(wide, "bias"), 1 / sqrt(100.0));
        check_uniform("Conv2d(64, 128, 3, groups=2).weight", kiln_module_find(conv, "weight"), 1 / sqrt(32 * 9.0));
        check_uniform("ConvTranspose2d(32, 96, (3, 2), groups=2).weight", kiln_module_find(convt, "weight"),
                      1 / sqrt(48 * 6.0));
        /* biases of few elements: inside the bound, and not a smaller one (max >= b/2 fails
         * with probability 2^-n) */
        kiln_tensor *bs[3] = {kiln_module_find(lin, "bias"), kiln_module_find(conv, "bias"),
                              kiln_module_find(convt, "bias")};
        double bb[3] = {1 / sqrt(512.0), 1 / sqrt(32 * 9.0), 1 / sqrt(48 * 6.0)};
        for (int k = 0; k < 3; k++) {
            float *h = h_read(bs[k]);
            int64_t n = kiln_tensor_numel(bs[k]), out = 0;
            double mx = 0;
            for (int64_t i = 0; i < n; i++) out += !(fabsf(h[i]) <= (float)bb[k]), mx = fmax(mx, fabs(h[i]));
            CHECK(out == 0 && mx >= bb[k] / 2, "bias %d: %lld outside +-%g, max %g", k, (long long)out, bb[k], mx);
            free(h);
        }
        int64_t shp[4];
        memcpy(shp, kiln_tensor_shape(kiln_module_find(convt, "weight")), sizeof shp);
        CHECK(shp[0] == 32 && shp[1] == 48 && shp[2] == 3 && shp[3] == 2, "conv_transpose weight shape");
        check_const("BatchNorm2d.weight", kiln_module_find(bn, "weight"), 1);
        check_const("BatchNorm2d.bias", kiln_module_find(bn, "bias"), 0);
        check_const("BatchNorm2d.running_mean", kiln_module_find(bn, "running_mean"), 0);
        check_const("BatchNorm2d.running_var", kiln_module_find(bn, "running_var"), 1);
        int32_t nbt = -1;
        kiln_tensor *tn = kiln_module_find(bn, "num_batches_tracked");
        CHECK(tn && kiln_tensor_dtype(tn) == KILN_I32 && kiln_tensor_ndim(tn) == 0 &&
                  kiln_to_host(tn, &nbt, sizeof nbt) == KILN_OK && nbt == 0,
              "num_batches_tracked: a 0-d I32 zero, got %d", nbt);
        check_const("LayerNorm.weight", kiln_module_find(ln, "weight"), 1);
        check_const("LayerNorm.bias", kiln_module_find(ln, "bias"), 0);
        CHECK(kiln_module_state(ln_plain, NULL, 0) == 0, "LayerNorm(elementwise_affine=False) has no parameters");

        kiln_tensor *ew = kiln_module_find(emb, "weight");
        int64_t n = kiln_tensor_numel(ew);
        float *h = h_read(ew);
        double s1 = 0, s2 = 0;
        int64_t in1 = 0;
        for (int64_t i = 0; i < n; i++) s1 += h[i], in1 += fabsf(h[i]) < 1;
        double mean = s1 / (double)n;
        for (int64_t i = 0; i < n; i++) s2 += (h[i] - mean) * (h[i] - mean);
        double var = s2 / (double)(n - 1), frac = (double)in1 / (double)n, p1 = 0.682689492;
        CHECK(fabs(mean) <= 5 / sqrt((double)n), "Embedding weight mean %.4g, expected 0 +- %.4g", mean,
              5 / sqrt((double)n));
        CHECK(fabs(var - 1) <= 5 * sqrt(2.0 / (double)n), "Embedding weight variance %.5g, expected 1 +- %.4g", var,
              5 * sqrt(2.0 / (double)n));
        CHECK(fabs(frac - p1) <= 5 * sqrt(p1 * (1 - p1) / (double)n),
              "Embedding weight: %.4f of the values within 1, expected %.4f (a normal)", frac, p1);
        if (verbose)
            fprintf(stderr, "  init Embedding(200, 256): mean %+.4g variance %.5g within-1 %.4f\n", mean, var, frac);
        free(h);
    }
    /* reproducibility: the same seed gives the same weights, another seed others, and the
     * stream advances between two modules */
    kiln_manual_seed(ctx, 77);
    kiln_module *a = kiln_nn_linear(ctx, 30, 20, true);
    kiln_module *a2 = kiln_nn_linear(ctx, 30, 20, true);
    kiln_manual_seed(ctx, 77);
    kiln_module *b = kiln_nn_linear(ctx, 30, 20, true);
    kiln_manual_seed(ctx, 78);
    kiln_module *c = kiln_nn_linear(ctx, 30, 20, true);
    int64_t nd = 0;
    CHECK(a && a2 && b && c, "linear: %s", kiln_error_message(ctx));
    if (a && a2 && b && c) {
        CHECK(same_values(kiln_module_find(a, "weight"), kiln_module_find(b, "weight"), &nd) &&
                  same_values(kiln_module_find(a, "bias"), kiln_module_find(b, "bias"), &nd),
              "same seed, different weights (%lld differ)", (long long)nd);
        same_values(kiln_module_find(a, "weight"), kiln_module_find(c, "weight"), &nd);
        CHECK(nd >= 590, "seeds 77 and 78 give %lld different weights of 600", (long long)nd);
        same_values(kiln_module_find(a, "weight"), kiln_module_find(a2, "weight"), &nd);
        CHECK(nd >= 590, "two modules after one seed share weights (%lld of 600 differ)", (long long)nd);
    }
    kiln_module *all[] = {lin, wide, conv, convt, bn, ln, ln_plain, emb, a, a2, b, c};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) kiln_module_free(all[k]);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "init: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- names ----------------------------------------------------------------------------- */

/* Sequential(features: Sequential(Conv2d(3, 4, 3), ReLU()), bn: BatchNorm2d(4),
 * pool: AdaptiveAvgPool2d(1), classifier: Sequential(Flatten(), Linear(4, 10))) */
static kiln_module *named_net(kiln_ctx *ctx) {
    kiln_module *features = kiln_nn_sequential(
        ctx, 2,
        (kiln_module *[]){kiln_nn_conv2d(ctx, 3, 4, 3, 3, NULL, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0)});
    kiln_module *classifier =
        kiln_nn_sequential(ctx, 2, (kiln_module *[]){kiln_nn_flatten(ctx, 1, -1), kiln_nn_linear(ctx, 4, 10, true)});
    kiln_module *net = kiln_nn_sequential(ctx, 4,
                                          (kiln_module *[]){features, kiln_nn_batchnorm2d(ctx, 4, 1e-5f, 0.1f),
                                                            kiln_nn_global_avgpool2d(ctx), classifier});
    const char *names[4] = {"features", "bn", "pool", "classifier"};
    for (int k = 0; net && k < 4; k++)
        CHECK(kiln_module_set_child_name(net, k, names[k]) == KILN_OK, "naming %s: %s", names[k],
              kiln_error_message(ctx));
    return net;
}

/* repr(net) of the same model in PyTorch 1.13 */
static const char torch_repr[] =
    "Sequential(\n"
    "  (features): Sequential(\n"
    "    (0): Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))\n"
    "    (1): ReLU()\n"
    "  )\n"
    "  (bn): BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)\n"
    "  (pool): AdaptiveAvgPool2d(output_size=1)\n"
    "  (classifier): Sequential(\n"
    "    (0): Flatten(start_dim=1, end_dim=-1)\n"
    "    (1): Linear(in_features=4, out_features=10, bias=True)\n"
    "  )\n"
    ")";

static void test_names(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_module *net = named_net(ctx);
    CHECK(net != NULL, "named net: %s", kiln_error_message(ctx));
    if (!net) {
        kiln_error_clear(ctx);
        return;
    }
    /* net.state_dict().keys() in PyTorch */
    static const char *const want[] = {
        "features.0.weight", "features.0.bias",        "bn.weight",           "bn.bias",          "bn.running_mean",
        "bn.running_var",    "bn.num_batches_tracked", "classifier.1.weight", "classifier.1.bias"};
    static const int64_t want_numel[] = {108, 4, 4, 4, 4, 4, 1, 40, 10};
    kiln_named_tensor st[16];
    int ns = kiln_module_state(net, st, 16);
    CHECK(ns == 9, "state has %d entries, torch's state_dict 9", ns);
    kiln_tensor *params[16];
    int np = kiln_module_parameters(net, params, 16);
    CHECK(np == 6, "%d parameters, torch's named_parameters has 6", np);
    CHECK(kiln_module_parameters(net, NULL, 0) == 6 && kiln_module_state(net, NULL, 0) == 9, "counting with cap 0");
    int p = 0;
    for (int k = 0; k < ns && k < 9; k++) {
        CHECK(strcmp(st[k].name, want[k]) == 0, "state entry %d is '%s', torch's '%s'", k, st[k].name, want[k]);
        CHECK(kiln_tensor_numel(st[k].tensor) == want_numel[k], "%s has %lld elements", st[k].name,
              (long long)kiln_tensor_numel(st[k].tensor));
        bool buf = k >= 4 && k <= 6;
        CHECK(st[k].is_buffer == buf, "%s: is_buffer %d", st[k].name, st[k].is_buffer);
        CHECK(kiln_module_find(net, want[k]) == st[k].tensor, "kiln_module_find('%s')", want[k]);
        CHECK(kiln_tensor_requires_grad(st[k].tensor) == !buf, "%s: requires_grad %d", want[k],
              kiln_tensor_requires_grad(st[k].tensor));
        if (!buf) {
            CHECK(p < np && params[p] == st[k].tensor, "parameter %d is not %s", p, want[k]);
            p++;
        }
    }
    /* a small cap writes only what fits and still counts everything */
    kiln_named_tensor two[2];
    CHECK(kiln_module_state(net, two, 2) == 9 && strcmp(two[1].name, "features.0.bias") == 0, "state with cap 2");
    kiln_tensor *w = kiln_module_find(net, "features.0.weight");
    const int64_t *ws = w ? kiln_tensor_shape(w) : NULL;
    CHECK(ws && kiln_tensor_ndim(w) == 4 && ws[0] == 4 && ws[1] == 3 && ws[2] == 3 && ws[3] == 3,
          "features.0.weight is [4, 3, 3, 3]");
    const char *absent[] = {"features", "features.0", "features.1.weight", "0.weight", "bn.weight.x", "bn.",
                            "",         "weight"};
    for (size_t k = 0; k < sizeof absent / sizeof absent[0]; k++)
        CHECK(kiln_module_find(net, absent[k]) == NULL, "kiln_module_find('%s') should be NULL", absent[k]);
    CHECK(kiln_module_find(net, NULL) == NULL && kiln_module_find(NULL, "bn.weight") == NULL, "find with NULLs");
    CHECK(kiln_module_num_elements(net) == 170, "num_elements %lld, torch counts 170",
          (long long)kiln_module_num_elements(net));
    CHECK(kiln_module_num_children(net) == 4 && kiln_module_num_children(kiln_module_child(net, 0)) == 2 &&
              kiln_module_child(net, 4) == NULL && kiln_module_child(net, -1) == NULL &&
              kiln_module_num_children(kiln_module_child(net, 1)) == 0,
          "children");
    CHECK(kiln_module_ctx(net) == ctx && kiln_module_ctx(NULL) == NULL, "kiln_module_ctx");

    /* the description is torch's repr */
    char desc[2048];
    kiln_module_describe(net, desc, sizeof desc);
    CHECK(strcmp(desc, torch_repr) == 0, "describe:\n%s\ntorch's repr:\n%s", desc, torch_repr);
    char small[12];
    kiln_module_describe(net, small, sizeof small);
    CHECK(strlen(small) == sizeof small - 1 && strncmp(small, torch_repr, sizeof small - 1) == 0,
          "describe truncates to the buffer: '%s'", small);
    kiln_module_describe(NULL, small, sizeof small);
    CHECK(strcmp(small, "(null)") == 0, "describe NULL: '%s'", small);
    /* layers alone: torch's repr where the constructor arguments are spelled as torch prints them */
    struct {
        kiln_module *m;
        const char *repr;
    } one[] = {
        {kiln_nn_conv2d(ctx, 4, 6, 3, 2, &(kiln_conv2d_params){{1, 1}, {0, 0}, {2, 1}, 2, {0, 0}}, true),
         "Conv2d(4, 6, kernel_size=(3, 2), stride=(1, 1), dilation=(2, 1), groups=2)"},
        {kiln_nn_conv2d(ctx, 3, 4, 3, 3, NULL, false), "Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1), bias=False)"},
        {kiln_nn_conv_transpose2d(ctx, 3, 2, 3, 3, &(kiln_conv2d_params){{2, 2}, {1, 1}, {1, 1}, 1, {1, 1}}, true),
         "ConvTranspose2d(3, 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), output_padding=(1, 1))"},
        {kiln_nn_layernorm(ctx, 2, (int64_t[]){4, 5}, 1e-5f, true),
         "LayerNorm((4, 5), eps=1e-05, elementwise_affine=True)"},
        {kiln_nn_layernorm(ctx, 1, (int64_t[]){4}, 1e-5f, true), "LayerNorm((4,), eps=1e-05, elementwise_affine=True)"},
        {kiln_nn_dropout(ctx, 0.25f), "Dropout(p=0.25, inplace=False)"},
        {kiln_nn_embedding(ctx, 10, 4), "Embedding(10, 4)"},
        {kiln_nn_activation(ctx, KILN_ACT_GELU, 0), "GELU(approximate='none')"},
        {kiln_nn_activation(ctx, KILN_ACT_GELU_TANH, 0), "GELU(approximate='tanh')"},
        {kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0.2f), "LeakyReLU(negative_slope=0.2)"},
        {kiln_nn_activation(ctx, KILN_ACT_LEAKY_RELU, 0), "LeakyReLU(negative_slope=0.01)"},
        {kiln_nn_activation(ctx, KILN_ACT_SOFTMAX, 1), "Softmax(dim=1)"},
        {kiln_nn_activation(ctx, KILN_ACT_LOG_SOFTMAX, -1), "LogSoftmax(dim=-1)"},
        {kiln_nn_activation(ctx, KILN_ACT_SIGMOID, 0), "Sigmoid()"},
        {kiln_nn_batchnorm1d(ctx, 5, 1e-5f, 0.1f),
         "BatchNorm1d(5, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"},
        {kiln_nn_linear(ctx, 6, 4, false), "Linear(in_features=6, out_features=4, bias=False)"},
        {kiln_nn_maxpool2d(ctx, &(kiln_pool2d_params){.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}}),
         "MaxPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False)"},
    };
    for (size_t k = 0; k < sizeof one / sizeof one[0]; k++) {
        CHECK(one[k].m != NULL, "constructing %s: %s", one[k].repr, kiln_error_message(ctx));
        kiln_module_describe(one[k].m, desc, sizeof desc);
        CHECK(strcmp(desc, one[k].repr) == 0, "describe: '%s', torch: '%s'", desc, one[k].repr);
        kiln_module_free(one[k].m);
    }
    kiln_error_clear(ctx);

    /* renaming changes the keys; a forward runs through the named children */
    CHECK(kiln_module_set_child_name(net, 0, "body") == KILN_OK, "rename: %s", kiln_error_message(ctx));
    CHECK(kiln_module_find(net, "body.0.weight") == w && kiln_module_find(net, "features.0.weight") == NULL,
          "renamed keys");
    CHECK(kiln_module_set_child_name(net, 0, "features") == KILN_OK, "rename back");
    kiln_scope_begin(ctx);
    float xin[2 * 3 * 6 * 6];
    h_fill(xin, 2 * 3 * 6 * 6, -1, 1);
    kiln_tensor *y = kiln_forward(net, upload(ctx, xin, 4, (int64_t[]){2, 3, 6, 6}));
    CHECK(y && kiln_tensor_ndim(y) == 2 && kiln_tensor_shape(y)[0] == 2 && kiln_tensor_shape(y)[1] == 10,
          "forward through the named net: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    kiln_module_free(net);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "names: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- train / eval ---------------------------------------------------------------------- */

static int count_training(const kiln_module *m, bool want) {
    int bad = kiln_module_is_training(m) != want;
    for (int k = 0; k < kiln_module_num_children(m); k++) bad += count_training(kiln_module_child(m, k), want);
    return bad;
}

static int32_t nbt_of(kiln_module *bn) {
    int32_t v = -1;
    kiln_tensor *t = kiln_module_find(bn, "num_batches_tracked");
    if (!t || kiln_to_host(t, &v, sizeof v) != KILN_OK) CHECK(0, "num_batches_tracked unreadable");
    return v;
}

static void test_train_eval(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_module *net = named_net(ctx);
    CHECK(net && count_training(net, true) == 0, "a new module trains");
    kiln_module_train(net, false);
    CHECK(count_training(net, false) == 0, "eval reaches %d modules late", count_training(net, false));
    kiln_module_train(net, true);
    CHECK(count_training(net, true) == 0, "train reaches %d modules late", count_training(net, true));
    kiln_module_train(kiln_module_child(net, 3), false); /* a subtree alone */
    CHECK(!kiln_module_is_training(kiln_module_child(kiln_module_child(net, 3), 1)) && kiln_module_is_training(net) &&
              kiln_module_is_training(kiln_module_child(net, 0)),
          "eval of one child");
    kiln_module_train(NULL, false);
    CHECK(!kiln_module_is_training(NULL), "NULL is not training");
    kiln_module_free(net);

    /* dropout: identity in eval, zeroes ~p and scales by 1/(1-p) in training */
    kiln_scope_begin(ctx);
    const int64_t n = 100000;
    const float p = 0.3f;
    float *xh = malloc(sizeof(float) * n), *yh = malloc(sizeof(float) * n);
    h_fill(xh, n, 1, 2);
    kiln_tensor *x = upload(ctx, xh, 2, (int64_t[]){100, 1000});
    kiln_module *d = kiln_nn_dropout(ctx, p);
    kiln_module_train(d, false);
    kiln_tensor *y = kiln_forward(d, x);
    CHECK(y && kiln_to_host(y, yh, sizeof(float) * n) == KILN_OK && memcmp(xh, yh, sizeof(float) * n) == 0,
          "dropout in eval is not the identity");
    kiln_module_train(d, true);
    kiln_manual_seed(ctx, 5);
    y = kiln_forward(d, x);
    int64_t zeros = 0, wrong = 0;
    float scale = (float)(1.0 / (1.0 - (double)p));
    if (y && kiln_to_host(y, yh, sizeof(float) * n) == KILN_OK)
        for (int64_t i = 0; i < n; i++) {
            if (yh[i] == 0)
                zeros++;
            else
                wrong += yh[i] != xh[i] * scale;
        }
    double frac = (double)zeros / (double)n, tol = 5 * sqrt((double)p * (1 - p) / (double)n);
    CHECK(y && fabs(frac - p) <= tol, "dropout zeroed %.4f, expected %.2f +- %.4f", frac, (double)p, tol);
    CHECK(y && wrong == 0, "dropout: %lld kept values are not x/(1-p)", (long long)wrong);
    kiln_module_free(d);
    d = kiln_nn_dropout(ctx, 1.0f); /* torch allows p = 1: all zeros */
    y = kiln_forward(d, x);
    zeros = 0;
    if (y && kiln_to_host(y, yh, sizeof(float) * n) == KILN_OK)
        for (int64_t i = 0; i < n; i++) zeros += yh[i] == 0;
    CHECK(zeros == n, "dropout p=1 kept %lld values", (long long)(n - zeros));
    kiln_module_free(d);
    free(xh);
    free(yh);

    /* batch norm: num_batches_tracked counts training forwards only (also without grad) */
    kiln_module *bn = kiln_nn_batchnorm1d(ctx, 3, 1e-5f, 0.1f);
    float bx[4 * 3];
    h_fill(bx, 12, -1, 1);
    kiln_tensor *xb = upload(ctx, bx, 2, (int64_t[]){4, 3});
    kiln_forward(bn, xb);
    kiln_forward(bn, xb);
    CHECK(nbt_of(bn) == 2, "two training forwards: num_batches_tracked %d", nbt_of(bn));
    float rm1[3];
    kiln_to_host(kiln_module_find(bn, "running_mean"), rm1, sizeof rm1);
    kiln_module_train(bn, false);
    kiln_forward(bn, xb);
    float rm2[3];
    kiln_to_host(kiln_module_find(bn, "running_mean"), rm2, sizeof rm2);
    CHECK(nbt_of(bn) == 2 && memcmp(rm1, rm2, sizeof rm1) == 0, "an eval forward changed the statistics (count %d)",
          nbt_of(bn));
    kiln_module_train(bn, true);
    bool prev = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_forward(bn, xb);
    kiln_ctx_set_grad_enabled(ctx, prev);
    CHECK(nbt_of(bn) == 3, "a training forward without grad: num_batches_tracked %d", nbt_of(bn));
    /* a value written through kiln_module_find (as a loader would) is where counting goes on */
    int32_t ten = 10;
    CHECK(kiln_copy_from_host(kiln_module_find(bn, "num_batches_tracked"), &ten, sizeof ten) == KILN_OK, "write");
    kiln_forward(bn, xb);
    CHECK(nbt_of(bn) == 11, "after writing 10 and one training forward: num_batches_tracked %d", nbt_of(bn));
    kiln_module_free(bn);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "train/eval: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- transfer learning: a new head on a frozen body ------------------------------------- */

static void test_transfer(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_manual_seed(ctx, 11);
    kiln_module *body = kiln_nn_sequential(
        ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 6, 8, true), kiln_nn_activation(ctx, KILN_ACT_TANH, 0)});
    kiln_module *net = kiln_nn_sequential(ctx, 2, (kiln_module *[]){body, kiln_nn_linear(ctx, 8, 3, true)});
    CHECK(net != NULL, "net: %s", kiln_error_message(ctx));
    if (!net) return;
    int64_t with_old_head = kiln_ctx_num_tensors(ctx);
    /* replace the head: the old one is freed, the new one is named "1" */
    kiln_module *head = kiln_nn_linear(ctx, 8, 2, true);
    kiln_tensor *hw = kiln_module_find(head, "weight"), *hb = kiln_module_find(head, "bias");
    CHECK(kiln_nn_sequential_set(net, 1, head) == KILN_OK, "sequential_set: %s", kiln_error_message(ctx));
    CHECK(kiln_ctx_num_tensors(ctx) == with_old_head, "the old head was not freed (%lld tensors more)",
          (long long)(kiln_ctx_num_tensors(ctx) - with_old_head));
    CHECK(kiln_module_child(net, 1) == head && kiln_module_find(net, "1.weight") == hw &&
              kiln_module_find(net, "1.bias") == hb && kiln_tensor_shape(hw)[0] == 2,
          "the new head is child 1 with its parameters as 1.weight / 1.bias");
    char desc[512];
    CHECK(strstr(kiln_module_describe(net, desc, sizeof desc), "(1): Linear(in_features=8, out_features=2, bias=True)"),
          "describe after set: %s", desc);
    /* freeze the body */
    kiln_module_set_requires_grad(body, false);
    CHECK(!kiln_tensor_requires_grad(kiln_module_find(net, "0.0.weight")) && kiln_tensor_requires_grad(hw),
          "frozen flags");
    CHECK(kiln_module_parameters(net, NULL, 0) == 4, "frozen parameters are still parameters (as torch)");

    kiln_scope_begin(ctx);
    float xh[5 * 6];
    h_fill(xh, 30, -1, 1);
    kiln_tensor *x = upload(ctx, xh, 2, (int64_t[]){5, 6});
    kiln_tensor *y = kiln_forward(net, x);
    kiln_tensor *loss = kiln_sum(ctx, y, 0, NULL, false);
    CHECK(loss && kiln_backward(loss) == KILN_OK, "backward: %s", kiln_error_message(ctx));
    CHECK(kiln_tensor_grad(kiln_module_find(net, "0.0.weight")) == NULL &&
              kiln_tensor_grad(kiln_module_find(net, "0.0.bias")) == NULL,
          "the frozen body got gradients");
    CHECK(kiln_tensor_grad(hw) && kiln_tensor_grad(hb), "the new head has no gradient");
    /* d sum(y) / d bias = N per output, d / d W[j, :] = sum_n h[n, :] with h the body's output */
    kiln_tensor *h = kiln_forward(body, x);
    if (kiln_tensor_grad(hw) && kiln_tensor_grad(hb) && h) {
        float *hh = h_read(h), *gw = h_read(kiln_tensor_grad(hw)), *gb = h_read(kiln_tensor_grad(hb));
        double ref[16];
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < 8; i++) {
                ref[j * 8 + i] = 0;
                for (int s = 0; s < 5; s++) ref[j * 8 + i] += hh[s * 8 + i];
            }
        h_compare("new head weight gradient", gw, ref, 16, 1e-6, 1e-6);
        double five[2] = {5, 5};
        h_compare("new head bias gradient", gb, five, 2, 1e-6, 1e-6);
        free(hh), free(gw), free(gb);
    }
    kiln_scope_end(ctx);
    /* unfreezing: the body learns again */
    kiln_module_set_requires_grad(body, true);
    kiln_scope_begin(ctx);
    x = upload(ctx, xh, 2, (int64_t[]){5, 6});
    loss = kiln_sum(ctx, kiln_forward(net, x), 0, NULL, false);
    CHECK(loss && kiln_backward(loss) == KILN_OK, "backward: %s", kiln_error_message(ctx));
    CHECK(kiln_tensor_grad(kiln_module_find(net, "0.0.weight")) != NULL, "the unfrozen body has no gradient");
    kiln_scope_end(ctx);

    /* a new child takes the container's mode, also its own children */
    kiln_module_train(net, false);
    kiln_module *head2 =
        kiln_nn_sequential(ctx, 2, (kiln_module *[]){kiln_nn_dropout(ctx, 0.5f), kiln_nn_linear(ctx, 8, 2, true)});
    CHECK(kiln_nn_sequential_set(net, 1, head2) == KILN_OK, "set: %s", kiln_error_message(ctx));
    CHECK(count_training(net, false) == 0, "%d modules of an eval net train after sequential_set",
          count_training(net, false));
    CHECK(kiln_nn_sequential_append(net, kiln_nn_activation(ctx, KILN_ACT_RELU, 0)) == KILN_OK &&
              kiln_module_num_children(net) == 3,
          "append: %s", kiln_error_message(ctx));
    kiln_module_free(net);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "transfer: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- errors ---------------------------------------------------------------------------- */

static void test_errors(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    intact r = {0};
    r.m = kiln_nn_sequential(
        ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 4, 3, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0)});
    float rx[8];
    h_fill(rx, 8, -1, 1);
    r.x = kiln_from_host(ctx, rx, KILN_F32, 2, (int64_t[]){2, 4});
    kiln_scope_begin(ctx);
    kiln_tensor *ry = kiln_forward(r.m, r.x);
    CHECK(ry && kiln_to_host(ry, r.y, sizeof r.y) == KILN_OK, "reference forward: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);

    g_intact = &r;
    kiln_scope_begin(ctx);
    float buf[4 * 3 * 8 * 8];
    h_fill(buf, 4 * 3 * 8 * 8, -1, 1);
    kiln_tensor *x2_6 = upload(ctx, buf, 2, (int64_t[]){3, 6});
    kiln_tensor *x4_c2 = upload(ctx, buf, 4, (int64_t[]){1, 2, 5, 5});
    kiln_tensor *x3 = upload(ctx, buf, 3, (int64_t[]){3, 5, 5});
    kiln_tensor *x2_4 = upload(ctx, buf, 2, (int64_t[]){2, 4});
    kiln_tensor *x3_45 = upload(ctx, buf, 3, (int64_t[]){2, 4, 6});
    int32_t idx_ok[3] = {0, 9, 3}, idx_bad[3] = {0, 12, 3};
    kiln_tensor *ibad = kiln_from_host(ctx, idx_bad, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor *iok = kiln_from_host(ctx, idx_ok, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor *ifl = upload(ctx, buf, 1, (int64_t[]){3});
    kiln_tensor *y;

    /* each layer given a wrong-shaped input: NULL, KILN_ERR_SHAPE, the module and the shapes named */
    kiln_module *lin = kiln_nn_linear(ctx, 7, 5, true);
    y = kiln_forward(lin, x2_6);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "linear, last dim 6", "Linear(in_features=7, out_features=5", "[3, 6]",
               "expected 7");
    kiln_module *conv = kiln_nn_conv2d(ctx, 3, 4, 3, 3, NULL, true);
    y = kiln_forward(conv, x4_c2);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "conv2d, 2 channels", "Conv2d(3, 4", "[1, 2, 5, 5]", "expected 3");
    y = kiln_forward(conv, x3);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "conv2d, 3-D input", "Conv2d(3, 4", "[3, 5, 5]", "3 dims");
    kiln_module *convt = kiln_nn_conv_transpose2d(ctx, 3, 2, 3, 3, NULL, true);
    y = kiln_forward(convt, x4_c2);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "conv_transpose2d, 2 channels", "ConvTranspose2d(3, 2", "[1, 2, 5, 5]",
               "expected 3");
    kiln_module *bn1 = kiln_nn_batchnorm1d(ctx, 5, 1e-5f, 0.1f);
    y = kiln_forward(bn1, x2_6);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "batchnorm1d, 6 channels", "BatchNorm1d(5", "[3, 6]", "expected 5");
    y = kiln_forward(bn1, x4_c2);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "batchnorm1d, 4-D input", "BatchNorm1d(5", "[1, 2, 5, 5]", "4 dims");
    CHECK(nbt_of(bn1) == 0, "a failed forward counted a batch");
    kiln_module *bn2 = kiln_nn_batchnorm2d(ctx, 3, 1e-5f, 0.1f);
    y = kiln_forward(bn2, x4_c2);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "batchnorm2d, 2 channels", "BatchNorm2d(3", "[1, 2, 5, 5]", "expected 3");
    y = kiln_forward(bn2, x2_6);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "batchnorm2d, 2-D input", "BatchNorm2d(3", "[3, 6]", "2 dims");
    kiln_module *ln = kiln_nn_layernorm(ctx, 2, (int64_t[]){4, 5}, 1e-5f, true);
    y = kiln_forward(ln, x3_45);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "layernorm, trailing [4, 6]", "LayerNorm((4, 5)", "[2, 4, 6]", "expected 5");
    y = kiln_forward(ln, ifl);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "layernorm, 1-D input", "LayerNorm((4, 5)", "[3]", NULL);
    kiln_module *mp =
        kiln_nn_maxpool2d(ctx, &(kiln_pool2d_params){.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}});
    kiln_module *ap =
        kiln_nn_avgpool2d(ctx, &(kiln_pool2d_params){.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}});
    kiln_module *gap = kiln_nn_global_avgpool2d(ctx);
    y = kiln_forward(mp, x3);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "maxpool2d, 3-D input", "MaxPool2d(kernel_size=(2, 2)", "[3, 5, 5]", "3 dims");
    y = kiln_forward(ap, x3);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "avgpool2d, 3-D input", "AvgPool2d(kernel_size=(2, 2)", "[3, 5, 5]", "3 dims");
    y = kiln_forward(gap, x3);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "global_avgpool2d, 3-D input", "AdaptiveAvgPool2d", "[3, 5, 5]", "3 dims");
    kiln_module *emb = kiln_nn_embedding(ctx, 10, 4);
    y = kiln_forward(emb, ifl);
    expect_err(ctx, !y, KILN_ERR_DTYPE, "embedding, F32 indices", "kiln_embedding", "i32", "Embedding(10, 4)");
    /* a bad index is a deferred error (checked on the device): the next wait reports it,
     * without the module's note */
    y = kiln_forward(emb, ibad);
    expect_err(ctx, !y || kiln_sync(ctx) != KILN_OK, KILN_ERR_RANGE, "embedding, index 12 of 10", "index 12", "[10, 4]",
               "kiln_embedding");
    y = kiln_forward(emb, iok);
    CHECK(y && kiln_tensor_ndim(y) == 2 && kiln_tensor_shape(y)[1] == 4, "embedding, valid indices: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* NULL module or input: NULL with an error; an earlier error is kept */
    y = kiln_forward(NULL, x2_4);
    expect_err(ctx, !y, KILN_ERR_NULL, "kiln_forward(NULL module)", "kiln_forward", "module is NULL", NULL);
    y = kiln_forward(lin, NULL);
    expect_err(ctx, !y, KILN_ERR_NULL, "kiln_forward(NULL input)", "kiln_forward", "input of Linear(in_features=7",
               "is NULL");
    y = kiln_forward(r.m, kiln_forward(lin, x2_6)); /* a chain checked once at its end */
    expect_err(ctx, !y, KILN_ERR_SHAPE, "a chain keeps the first error", "[3, 6]", "Linear(in_features=7", NULL);
    CHECK(kiln_forward(NULL, NULL) == NULL, "kiln_forward(NULL, NULL)");
    kiln_error_clear(ctx);

    /* bad constructor arguments */
    kiln_module *bad;
    bad = kiln_nn_linear(ctx, 0, 5, true);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "linear, 0 inputs", "kiln_nn_linear", "in_features=0", NULL);
    bad = kiln_nn_linear(ctx, 5, -1, true);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "linear, -1 outputs", "kiln_nn_linear", "out_features=-1", NULL);
    bad = kiln_nn_conv2d(ctx, 4, 6, 3, 3, &(kiln_conv2d_params){{1, 1}, {0, 0}, {1, 1}, 3, {0, 0}}, true);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "conv2d, groups 3 of 4 channels", "kiln_nn_conv2d", "groups=3",
               "in_channels=4");
    bad = kiln_nn_conv2d(ctx, 4, 6, 3, 3, &(kiln_conv2d_params){0}, true);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "conv2d, zeroed params", "kiln_nn_conv2d", "stride=(0, 0)", NULL);
    bad = kiln_nn_conv_transpose2d(ctx, 4, 6, 0, 3, NULL, true);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "conv_transpose2d, 0 kernel", "kiln_nn_conv_transpose2d",
               "kernel=(0, 3)", NULL);
    bad = kiln_nn_conv_transpose2d(ctx, 4, 6, 3, 3, &(kiln_conv2d_params){{1, 1}, {0, 0}, {1, 1}, 1, {1, 1}}, true);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "conv_transpose2d, output_padding >= stride",
               "kiln_nn_conv_transpose2d", "output_padding=(1, 1)", NULL);
    bad = kiln_nn_batchnorm2d(ctx, 0, 1e-5f, 0.1f);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "batchnorm2d, 0 features", "kiln_nn_batchnorm2d", "num_features=0",
               NULL);
    bad = kiln_nn_batchnorm1d(ctx, 3, 1e-5f, 1.5f);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "batchnorm1d, momentum 1.5", "kiln_nn_batchnorm1d", "momentum=1.5",
               NULL);
    bad = kiln_nn_layernorm(ctx, 0, (int64_t[]){4}, 1e-5f, true);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "layernorm, ndim 0", "kiln_nn_layernorm", "ndim=0", NULL);
    bad = kiln_nn_layernorm(ctx, 1, NULL, 1e-5f, true);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "layernorm, NULL shape", "kiln_nn_layernorm", NULL, NULL);
    bad = kiln_nn_dropout(ctx, 1.5f);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "dropout p 1.5", "kiln_nn_dropout", "p=1.5", NULL);
    bad = kiln_nn_dropout(ctx, NAN);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "dropout p NaN", "kiln_nn_dropout", "nan", NULL);
    bad = kiln_nn_embedding(ctx, 10, 0);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "embedding, dim 0", "kiln_nn_embedding", "embedding_dim=0", NULL);
    bad = kiln_nn_maxpool2d(ctx, NULL);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "maxpool2d, NULL params", "kiln_nn_maxpool2d", "NULL", NULL);
    bad = kiln_nn_avgpool2d(ctx, NULL);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "avgpool2d, NULL params", "kiln_nn_avgpool2d", "NULL", NULL);
    bad = kiln_nn_avgpool2d(
        ctx, &(kiln_pool2d_params){.kernel = {2, 2}, .padding = {2, 0}, .stride = {2, 2}, .dilation = {1, 1}});
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "avgpool2d, padding > kernel/2", "kiln_nn_avgpool2d", "padding",
               NULL);
    bad = kiln_nn_activation(ctx, (kiln_activation)99, 0);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "activation 99", "kiln_nn_activation", "99", NULL);
    bad = kiln_nn_activation(ctx, KILN_ACT_ELU, INFINITY);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "activation, infinite alpha", "kiln_nn_activation", "inf", NULL);
    CHECK(kiln_nn_linear(NULL, 3, 3, true) == NULL && kiln_nn_dropout(NULL, 0.5f) == NULL &&
              kiln_nn_global_avgpool2d(NULL) == NULL && kiln_nn_sequential(NULL, 0, NULL) == NULL,
          "constructors with a NULL context");

    /* sequential: a NULL entry (a failed constructor) frees the others */
    int64_t c0 = kiln_ctx_num_tensors(ctx);
    bad = kiln_nn_sequential(
        ctx, 3, (kiln_module *[]){kiln_nn_linear(ctx, 4, 4, true), NULL, kiln_nn_batchnorm1d(ctx, 4, 1e-5f, 0.1f)});
    expect_err(ctx, !bad, KILN_ERR_NULL, "sequential with a NULL entry", "kiln_nn_sequential", "NULL", NULL);
    CHECK(kiln_ctx_num_tensors(ctx) == c0, "sequential with a NULL entry leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - c0));
    bad =
        kiln_nn_sequential(ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 4, 4, true), kiln_nn_linear(ctx, 0, 4, true)});
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "sequential with a failed constructor keeps its error",
               "kiln_nn_linear", "in_features=0", NULL);
    CHECK(kiln_ctx_num_tensors(ctx) == c0, "sequential with a failed constructor leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - c0));
    kiln_module *seq =
        kiln_nn_sequential(ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 4, 4, true), kiln_nn_linear(ctx, 4, 2, true)});
    CHECK(seq != NULL, "sequential: %s", kiln_error_message(ctx));
    int64_t c1 = kiln_ctx_num_tensors(ctx);
    kiln_status s = kiln_nn_sequential_set(seq, 2, kiln_nn_linear(ctx, 4, 4, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "sequential_set index 2 of 2", "kiln_nn_sequential_set",
               "index 2", "2 children");
    s = kiln_nn_sequential_set(seq, -1, kiln_nn_linear(ctx, 4, 4, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "sequential_set index -1", "index -1", NULL, NULL);
    s = kiln_nn_sequential_set(seq, 0, NULL);
    expect_err(ctx, s != KILN_OK, KILN_ERR_NULL, "sequential_set NULL module", "kiln_nn_sequential_set", "NULL", NULL);
    CHECK(kiln_ctx_num_tensors(ctx) == c1 && kiln_module_num_children(seq) == 2,
          "failed sets leaked or changed the net");
    s = kiln_nn_sequential_set(lin, 0, kiln_nn_linear(ctx, 4, 4, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "sequential_set on a Linear", "index 0", "0 children",
               NULL);
    s = kiln_nn_sequential_append(lin, kiln_nn_linear(ctx, 4, 4, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "append to a Linear", "not a Sequential", "Linear", NULL);
    s = kiln_nn_sequential_append(seq, NULL);
    expect_err(ctx, s != KILN_OK, KILN_ERR_NULL, "append NULL", "kiln_nn_sequential_append", "NULL", NULL);
    CHECK(kiln_ctx_num_tensors(ctx) == c1, "failed appends leaked %lld tensors",
          (long long)(kiln_ctx_num_tensors(ctx) - c1));
    /* child names: duplicates and dotted names are refused, the old name stays */
    CHECK(kiln_module_set_child_name(seq, 0, "enc") == KILN_OK, "name: %s", kiln_error_message(ctx));
    s = kiln_module_set_child_name(seq, 1, "enc");
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "duplicate child name", "'enc'", "taken by child 0", NULL);
    s = kiln_module_set_child_name(seq, 1, "head.fc");
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "dotted child name", "'head.fc'", "no dots", NULL);
    s = kiln_module_set_child_name(seq, 1, "");
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "empty child name", "kiln_module_set_child_name", NULL,
               NULL);
    s = kiln_module_set_child_name(seq, 2, "x");
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "child name index 2 of 2", "index 2", NULL, NULL);
    CHECK(kiln_module_set_child_name(seq, 0, "enc") == KILN_OK, "renaming a child to its own name");
    CHECK(kiln_module_find(seq, "enc.weight") && kiln_module_find(seq, "1.weight"), "names after refused renames");

    /* an op failing inside a nested sequential names the innermost module and its path, once */
    kiln_module *feat =
        kiln_nn_sequential(ctx, 3,
                           (kiln_module *[]){kiln_nn_linear(ctx, 4, 8, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                             kiln_nn_flatten(ctx, 5, -1)});
    kiln_module *nested = kiln_nn_sequential(ctx, 2, (kiln_module *[]){feat, kiln_nn_linear(ctx, 8, 2, true)});
    CHECK(nested && kiln_module_set_child_name(nested, 0, "features") == KILN_OK, "nested: %s",
          kiln_error_message(ctx));
    y = kiln_forward(nested, x2_6);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "nested: Linear's check",
               "[in Linear(in_features=4, out_features=8, bias=True) at features.0]", "[3, 6]", NULL);
    y = kiln_forward(nested, x2_4);
    const char *msg = kiln_error_message(ctx);
    const char *first = strstr(msg, "[in ");
    CHECK(first && !strstr(first + 1, "[in "), "the note appears once: %s", msg);
    expect_err(ctx, !y, KILN_ERR_INVALID_ARGUMENT, "nested: kiln_flatten fails", "kiln_flatten",
               "[in Flatten(start_dim=5, end_dim=-1) at features.2]", NULL);
    kiln_module *inner_emb = kiln_nn_sequential(ctx, 1, (kiln_module *[]){kiln_nn_embedding(ctx, 10, 4)});
    kiln_module *outer = kiln_nn_sequential(ctx, 1, (kiln_module *[]){inner_emb});
    CHECK(outer && kiln_module_set_child_name(outer, 0, "emb") == KILN_OK, "outer: %s", kiln_error_message(ctx));
    y = kiln_forward(outer, ibad);
    expect_err(ctx, !y || kiln_sync(ctx) != KILN_OK, KILN_ERR_RANGE, "nested: embedding index", "kiln_embedding",
               "index 12", "position 1");

    g_intact = NULL;
    kiln_module *mods[] = {lin, conv, convt, bn1, bn2, ln, mp, ap, gap, emb, seq, nested, outer};
    for (size_t k = 0; k < sizeof mods / sizeof mods[0]; k++) kiln_module_free(mods[k]);
    kiln_module_free(NULL);
    kiln_scope_end(ctx);
    kiln_module_free(r.m);
    kiln_tensor_free(r.x);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "errors: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- user-defined modules (kiln/module.h) ----------------------------------------------- */

/* Mixer(in, out): two inputs a, b [N, in] (and an optional third c [N, out]), two outputs
 *   y0 = fc(a) * scale + shift (+ c)
 *   y1 = tanh(fc(b)) + fc(a) in training, tanh(fc(b)) in eval;
 * child fc = Linear(in, out), parameter scale [out], buffer shift [out] (0.25), and a host
 * allocation its destroy frees (counted). */
typedef struct mixer {
    int64_t in, out;
    kiln_module *fc;
    kiln_tensor *scale, *shift;
    char *label; /* owned by the state: freed by destroy */
    int fail_at; /* test: make construction step fail_at fail */
} mixer;

static int g_mixer_destroyed;

static void mixer_destroy(kiln_module *m) {
    mixer *x = kiln_module_data(m);
    free(x->label);
    g_mixer_destroyed++;
}

static void mixer_describe(const kiln_module *m, char *buf, size_t cap) {
    const mixer *x = kiln_module_data(m);
    snprintf(buf, cap, "%lld, %lld", (long long)x->in, (long long)x->out);
}

static kiln_status mixer_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nout;
    const mixer *x = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    kiln_tensor *fa = kiln_forward(x->fc, in[0]), *fb = kiln_forward(x->fc, in[1]);
    kiln_tensor *y0 = kiln_add(ctx, kiln_mul(ctx, fa, x->scale), x->shift);
    if (nin == 3) y0 = kiln_add(ctx, y0, in[2]);
    kiln_tensor *y1 = kiln_tanh(ctx, fb);
    if (kiln_module_is_training(m)) y1 = kiln_add(ctx, y1, fa);
    out[0] = y0, out[1] = y1;
    return y0 && y1 ? KILN_OK : kiln_error_status(ctx);
}

static const kiln_module_def mixer_def = {.kind = "Mixer",
                                          .state_size = sizeof(mixer),
                                          .forward = mixer_forward,
                                          .num_inputs = 3,
                                          .optional_inputs = 1,
                                          .num_outputs = 2,
                                          .destroy = mixer_destroy,
                                          .describe = mixer_describe};

/* fail_at 1..3: the child, the buffer or the parameter is registered under a bad name */
static kiln_module *mixer_new(kiln_ctx *ctx, int64_t in, int64_t out, int fail_at) {
    kiln_module *m = kiln_module_new(ctx, &mixer_def);
    if (!m) return NULL;
    mixer *x = kiln_module_data(m);
    x->in = in, x->out = out, x->fail_at = fail_at;
    x->label = malloc(16);
    if (x->label) snprintf(x->label, 16, "mixer");
    kiln_module *fc = kiln_nn_linear(ctx, in, out, true);
    kiln_tensor *shift = kiln_full(ctx, 0.25f, 1, (int64_t[]){out});
    kiln_tensor *scale = kiln_rand_uniform(ctx, 0.5f, 1.5f, 1, (int64_t[]){out});
    /* registered child first, then the buffer, then the parameter: the state_dict still
     * lists the parameter, then the buffer, then the child's entries (torch's order) */
    kiln_status s = kiln_module_add_child(m, fail_at == 1 ? "f.c" : "fc", fc);
    if (s == KILN_OK)
        x->fc = fc;
    else {
        kiln_tensor_free(shift);
        kiln_tensor_free(scale);
        goto fail;
    }
    if ((s = kiln_module_add_buffer(m, fail_at == 2 ? "fc" : "shift", shift)) != KILN_OK) {
        kiln_tensor_free(scale);
        goto fail;
    }
    x->shift = shift;
    if ((s = kiln_module_add_parameter(m, fail_at == 3 ? "" : "scale", scale)) != KILN_OK) goto fail;
    x->scale = scale;
    return m;
fail:
    kiln_module_free(m);
    return NULL;
}

/* Reads a tensor back as floats (NULL tensor: NULL). */
static float *read_or_null(kiln_tensor *t) { return t ? h_read(t) : NULL; }

static bool same_floats(const float *a, const float *b, int64_t n) {
    return a && b && memcmp(a, b, sizeof(float) * (size_t)n) == 0;
}

/* The Mixer's computation with plain ops on its own tensors, as mixer_forward should do it. */
static void mixer_plain(kiln_ctx *ctx, kiln_module *mx, kiln_tensor *a, kiln_tensor *b, bool training, kiln_tensor **y0,
                        kiln_tensor **y1) {
    kiln_tensor *w = kiln_module_find(mx, "fc.weight"), *bias = kiln_module_find(mx, "fc.bias");
    kiln_tensor *fa = kiln_add(ctx, kiln_matmul_ex(ctx, a, w, KILN_TRANS_B), bias);
    kiln_tensor *fb = kiln_add(ctx, kiln_matmul_ex(ctx, b, w, KILN_TRANS_B), bias);
    *y0 = kiln_add(ctx, kiln_mul(ctx, fa, kiln_module_find(mx, "scale")), kiln_module_find(mx, "shift"));
    *y1 = kiln_tanh(ctx, fb);
    if (training) *y1 = kiln_add(ctx, *y1, fa);
}

static void test_user_module(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    int destroyed0 = g_mixer_destroyed;
    kiln_manual_seed(ctx, 31);
    kiln_module *mx = mixer_new(ctx, 4, 3, 0);
    CHECK(mx != NULL, "Mixer: %s", kiln_error_message(ctx));
    if (!mx) return;
    mixer *st = kiln_module_data(mx);
    CHECK(st && st->in == 4 && st->fc == kiln_module_child(mx, 0) && strcmp(st->label, "mixer") == 0,
          "kiln_module_data is the typed state");
    CHECK(strcmp(kiln_module_kind(mx), "Mixer") == 0 && strcmp(kiln_module_kind(NULL), "(null)") == 0, "kind");
    CHECK(kiln_module_child_name(mx, 0) && strcmp(kiln_module_child_name(mx, 0), "fc") == 0 &&
              kiln_module_child_name(mx, 1) == NULL && kiln_module_find_child(mx, "fc") == st->fc &&
              kiln_module_find_child(mx, "fc.x") == NULL && kiln_module_find_child(mx, "") == NULL,
          "children by index and by name");

    /* state_dict: own parameter, own buffer, the child's (torch's order, not registration's) */
    static const char *const want[] = {"scale", "shift", "fc.weight", "fc.bias"};
    kiln_named_tensor ns[8];
    int n = kiln_module_state(mx, ns, 8);
    CHECK(n == 4, "Mixer state has %d entries, expected 4", n);
    for (int k = 0; k < n && k < 4; k++) {
        CHECK(strcmp(ns[k].name, want[k]) == 0, "state entry %d is '%s', expected '%s'", k, ns[k].name, want[k]);
        CHECK(ns[k].is_buffer == (k == 1), "%s: is_buffer %d", ns[k].name, ns[k].is_buffer);
    }
    kiln_tensor *ps[4];
    CHECK(kiln_module_parameters(mx, ps, 4) == 3 && ps[0] == st->scale && ps[1] == kiln_module_find(mx, "fc.weight"),
          "parameters: scale, fc.weight, fc.bias");
    CHECK(kiln_tensor_requires_grad(st->scale) && !kiln_tensor_requires_grad(st->shift),
          "a parameter requires grad, a buffer not");
    CHECK(kiln_module_num_elements(mx) == 3 + 12 + 3, "num_elements %lld", (long long)kiln_module_num_elements(mx));

    /* torch's repr puts the arguments of a module with children on a line of their own */
    char desc[512];
    kiln_module_describe(mx, desc, sizeof desc);
    CHECK(strcmp(desc, "Mixer(\n  4, 3\n  (fc): Linear(in_features=4, out_features=3, bias=True)\n)") == 0,
          "describe: %s", desc);

    /* forward and backward against the same computation with plain ops: the same kernels
     * on the same tensors in the same order, so bit for bit */
    float ah[5 * 4], bh[5 * 4], g0h[5 * 3], g1h[5 * 3];
    h_fill(ah, 20, -1, 1), h_fill(bh, 20, -2, 2), h_fill(g0h, 15, -1, 1), h_fill(g1h, 15, -1, 1);
    for (int training = 1; training >= 0; training--) {
        kiln_module_train(mx, training);
        CHECK(kiln_module_is_training(st->fc) == training, "train(%d) reaches the child", training);
        float *got[7] = {0}, *ref[7] = {0};
        for (int pass = 0; pass < 2; pass++) {
            kiln_scope_begin(ctx);
            kiln_tensor *a = upload(ctx, ah, 2, (int64_t[]){5, 4}), *b = upload(ctx, bh, 2, (int64_t[]){5, 4});
            kiln_tensor_set_requires_grad(a, true), kiln_tensor_set_requires_grad(b, true);
            kiln_tensor *y[2] = {NULL, NULL};
            if (pass == 0)
                CHECK(kiln_module_forward(mx, 2, (kiln_tensor *[]){a, b}, 2, y) == KILN_OK, "Mixer forward: %s",
                      kiln_error_message(ctx));
            else
                mixer_plain(ctx, mx, a, b, training, &y[0], &y[1]);
            kiln_tensor *g0 = upload(ctx, g0h, 2, (int64_t[]){5, 3}), *g1 = upload(ctx, g1h, 2, (int64_t[]){5, 3});
            kiln_tensor *loss = kiln_add(ctx, kiln_sum(ctx, kiln_mul(ctx, y[0], g0), 0, NULL, false),
                                         kiln_sum(ctx, kiln_mul(ctx, y[1], g1), 0, NULL, false));
            CHECK(loss && kiln_backward(loss) == KILN_OK, "backward (pass %d): %s", pass, kiln_error_message(ctx));
            float **dst = pass == 0 ? got : ref;
            kiln_tensor *fw = kiln_module_find(mx, "fc.weight"), *fbias = kiln_module_find(mx, "fc.bias");
            kiln_tensor *ts[7] = {y[0],
                                  y[1],
                                  kiln_tensor_grad(a),
                                  kiln_tensor_grad(b),
                                  kiln_tensor_grad(st->scale),
                                  kiln_tensor_grad(fw),
                                  kiln_tensor_grad(fbias)};
            for (int k = 0; k < 7; k++) dst[k] = read_or_null(ts[k]);
            CHECK(kiln_tensor_grad(st->shift) == NULL, "the buffer got a gradient");
            kiln_tensor_clear_grad(st->scale), kiln_tensor_clear_grad(fw), kiln_tensor_clear_grad(fbias);
            kiln_scope_end(ctx);
        }
        static const char *const what[7] = {"y0",          "y1", "grad a", "grad b", "grad scale", "grad fc.weight",
                                            "grad fc.bias"};
        static const int64_t numel[7] = {15, 15, 20, 20, 3, 12, 3};
        for (int k = 0; k < 7; k++) {
            CHECK(same_floats(got[k], ref[k], numel[k]), "Mixer (%s): %s differs from the plain ops'",
                  training ? "train" : "eval", what[k]);
            free(got[k]), free(ref[k]);
        }
    }

    /* the optional third input; kiln_forward refuses a two-input module */
    kiln_module_train(mx, true);
    kiln_scope_begin(ctx);
    kiln_tensor *a = upload(ctx, ah, 2, (int64_t[]){5, 4}), *b = upload(ctx, bh, 2, (int64_t[]){5, 4});
    kiln_tensor *c = upload(ctx, g0h, 2, (int64_t[]){5, 3});
    kiln_tensor *y2[2], *y3[2];
    CHECK(kiln_module_forward(mx, 2, (kiln_tensor *[]){a, b}, 2, y2) == KILN_OK &&
              kiln_module_forward(mx, 3, (kiln_tensor *[]){a, b, c}, 2, y3) == KILN_OK,
          "forward with 2 and 3 inputs: %s", kiln_error_message(ctx));
    kiln_tensor *d = kiln_sub(ctx, y3[0], y2[0]);
    float *dh = read_or_null(d);
    double cref[15];
    for (int k = 0; k < 15; k++) cref[k] = g0h[k];
    if (dh) h_compare("optional input c added to y0", dh, cref, 15, 1e-6, 1e-6);
    free(dh);

    /* freezing: no parameter gradient, the inputs still get theirs */
    kiln_module_set_requires_grad(mx, false);
    CHECK(!kiln_tensor_requires_grad(st->scale) && !kiln_tensor_requires_grad(kiln_module_find(mx, "fc.weight")),
          "frozen");
    kiln_tensor_set_requires_grad(a, true);
    kiln_tensor *yf[2];
    kiln_module_forward(mx, 2, (kiln_tensor *[]){a, b}, 2, yf);
    kiln_tensor *loss = kiln_sum(ctx, kiln_add(ctx, yf[0], yf[1]), 0, NULL, false);
    CHECK(loss && kiln_backward(loss) == KILN_OK, "frozen backward: %s", kiln_error_message(ctx));
    CHECK(kiln_tensor_grad(a) != NULL && kiln_tensor_grad(st->scale) == NULL &&
              kiln_tensor_grad(kiln_module_find(mx, "fc.weight")) == NULL,
          "a frozen Mixer's parameters got gradients");
    kiln_module_set_requires_grad(mx, true);
    CHECK(kiln_tensor_requires_grad(st->scale) && kiln_tensor_requires_grad(kiln_module_find(mx, "fc.bias")) &&
              !kiln_tensor_requires_grad(st->shift),
          "unfrozen: parameters again, the buffer still not");
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);

    kiln_module_free(mx);
    CHECK(g_mixer_destroyed == destroyed0 + 1, "destroy ran %d times for one free", g_mixer_destroyed - destroyed0);

    /* a module without state; a state of n bytes comes zeroed */
    kiln_module *empty = kiln_module_new(
        ctx, &(kiln_module_def){.kind = "Empty", .forward = mixer_forward, .num_inputs = 1, .num_outputs = 1});
    CHECK(empty && kiln_module_data(empty) == NULL && kiln_module_data(NULL) == NULL, "state_size 0: no data");
    kiln_module_describe(empty, desc, sizeof desc);
    CHECK(strcmp(desc, "Empty()") == 0, "describe without a describe function: %s", desc);
    kiln_module_free(empty);
    kiln_module *big = kiln_module_new(
        ctx, &(kiln_module_def){
                 .kind = "Big", .state_size = 4096, .forward = mixer_forward, .num_inputs = 1, .num_outputs = 1});
    const unsigned char *bytes = kiln_module_data(big);
    int nonzero = 0;
    for (int k = 0; bytes && k < 4096; k++) nonzero += bytes[k] != 0;
    CHECK(bytes && nonzero == 0, "state_size 4096: %d non-zero bytes", nonzero);
    kiln_module_free(big);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "user module: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- containers: ModuleList, ModuleDict, a ResNet-style stage of user blocks ------------- */

/* One comparison for seq_fused_vs_children, with autocast amp (KILN_F32: off). */
static void seq_fused_pass(kiln_ctx *ctx, const char *what, kiln_module *net, const float *xv, int xnd,
                           const int64_t *xs, const size_t n[5], kiln_dtype amp) {
    float *res[2][5] = {{0}};
    uint64_t launches[2] = {0};
    for (int pass = 0; pass < 2; pass++) {
        kiln_scope_begin(ctx);
        static const char *const params[5] = {"0.weight", "0.bias", "2.weight", "4.weight", "4.bias"};
        for (int p = 0; p < 5; p++) /* (none before the first backward) */
            if (kiln_tensor_grad(kiln_module_find(net, params[p])))
                kiln_tensor_zero_grad(kiln_module_find(net, params[p]));
        kiln_tensor *x = kiln_from_host(ctx, xv, KILN_F32, xnd, xs);
        kiln_tensor_set_requires_grad(x, true);
        kiln_ctx_stats s0, s1;
        kiln_ctx_stats_get(ctx, &s0);
        kiln_tensor *y = x;
        kiln_ctx_set_autocast(ctx, amp);
        if (pass == 0)
            y = kiln_forward(net, x);
        else /* the children one by one: the unfused ops */
            for (int k = 0; k < 5 && y; k++) y = kiln_forward(kiln_module_child(net, k), y);
        kiln_ctx_set_autocast(ctx, KILN_F32);
        kiln_ctx_stats_get(ctx, &s1);
        if (y) y = kiln_to_dtype(ctx, y, KILN_F32); /* (a view of an f32 y) */
        launches[pass] = s1.launches - s0.launches;
        CHECK(y && kiln_backward(kiln_sum(ctx, kiln_mul(ctx, y, y), 0, NULL, false)) == KILN_OK, "%s, pass %d: %s",
              what, pass, kiln_error_message(ctx));
        kiln_tensor *t[5] = {y, kiln_tensor_grad(x), NULL, NULL, NULL};
        for (int p = 0; p < 3; p++) t[2 + p] = kiln_tensor_grad(kiln_module_find(net, params[p]));
        for (int i = 0; i < 5; i++) res[pass][i] = t[i] ? h_read(t[i]) : NULL;
        kiln_scope_end(ctx);
    }
    static const char *const names[5] = {"output", "d x", "d 0.weight", "d 0.bias", "d 2.weight"};
    for (int i = 0; i < 5; i++) {
        CHECK(res[0][i] && res[1][i] && !memcmp(res[0][i], res[1][i], n[i] * sizeof(float)),
              "%s: %s differs from the children run one by one", what, names[i]);
        free(res[0][i]);
        free(res[1][i]);
    }
    /* the first pair is one op: its activation's launch is gone */
    CHECK(launches[0] < launches[1], "%s: %llu launches, children one by one %llu", what,
          (unsigned long long)launches[0], (unsigned long long)launches[1]);
}

/* net (five children, parameters 0.weight, 0.bias, 2.weight, 4.weight, 4.bias) run on the
 * input xv of shape xs twice: through the Sequential, which runs each fusable pair as one op,
 * and child by child (the unfused ops), in f32 and under f16 autocast. The output and the
 * gradients of x, 0.weight, 0.bias and 2.weight (n[0..5) elements) must agree bit for bit,
 * and the Sequential's forward must take fewer launches. Then the fused op's first
 * allocation fails: the forward fails naming the first child's kind (`kind`) and the pair,
 * and leaves no tensor behind. */
static void seq_fused_vs_children(kiln_ctx *ctx, const char *what, const char *kind, kiln_module *net, const float *xv,
                                  int xnd, const int64_t *xs, const size_t n[5]) {
    /* f32, then under f16 autocast (the fused pair's half store) */
    for (int amp = 0; amp < 2; amp++) {
        char tag[160];
        snprintf(tag, sizeof tag, "%s%s", what, amp ? " (f16 autocast)" : "");
        seq_fused_pass(ctx, tag, net, xv, xnd, xs, n, amp ? KILN_F16 : KILN_F32);
    }
    kiln_tensor *x = kiln_from_host(ctx, xv, KILN_F32, xnd, xs);
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln__pool_fail_after(ctx, 1);
    kiln_tensor *y = kiln_forward(net, x);
    kiln__pool_fail_after(ctx, 0);
    const char *msg = kiln_error_message(ctx);
    char pair[64];
    snprintf(pair, sizeof pair, "in %s then ReLU", kind);
    CHECK(!y && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY && strstr(msg, pair) &&
              kiln_ctx_num_tensors(ctx) == before,
          "%s, the fused op's allocation failing: %s (%lld tensors left behind)", what, y ? "an output" : msg,
          (long long)(kiln_ctx_num_tensors(ctx) - before));
    kiln_error_clear(ctx);
    kiln_tensor_free(y);
    kiln_tensor_free(x);
}

/* A Sequential runs Linear then ReLU as one op (kiln__linear_relu): fewer launches, and the
 * output and every gradient bit for bit those of running its children one by one; a
 * Linear without bias, or followed by another activation, runs unfused; an input the
 * Linear refuses still fails naming it. */
static void test_seq_fusion(kiln_ctx *ctx) {
    kiln_manual_seed(ctx, 21);
    kiln_module *net = kiln_nn_sequential(
        ctx, 5,
        (kiln_module *[]){kiln_nn_linear(ctx, 9, 12, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_linear(ctx, 12, 6, false), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_linear(ctx, 6, 4, true)});
    CHECK(net != NULL, "sequential: %s", kiln_error_message(ctx));
    if (!net) return;
    float xv[5 * 9];
    h_fill(xv, 5 * 9, -1.0f, 1.0f);
    kiln__hooks_of(ctx)->gemm_own = 1; /* kiln's own GEMM and its epilogue on every device */
    kiln__hooks_of(ctx)->gemm_epilogue = 1;
    static const size_t n[5] = {5 * 4, 5 * 9, 12 * 9, 12, 6 * 12};
    seq_fused_vs_children(ctx, "sequential Linear-ReLU", "Linear", net, xv, 2, (int64_t[]){5, 9}, n);
    kiln__hooks_of(ctx)->gemm_own = 0;
    kiln__hooks_of(ctx)->gemm_epilogue = 0;
    /* an input with the wrong features: the Linear's own error, naming it */
    kiln_tensor *bad = kiln_zeros(ctx, 2, (int64_t[]){5, 8});
    CHECK(kiln_forward(net, bad) == NULL && strstr(kiln_error_message(ctx), "Linear") &&
              strstr(kiln_error_message(ctx), "input features"),
          "wrong input features: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_tensor_free(bad);
    kiln_module_free(net);
}

/* The same for Conv2d (with a bias) then ReLU (kiln__conv2d_relu): a Conv2d without bias runs
 * unfused; an input with the wrong channels fails naming the Conv2d. */
static void test_seq_conv_fusion(kiln_ctx *ctx) {
    kiln_manual_seed(ctx, 22);
    kiln_conv2d_params pad1 = kiln_conv2d_defaults();
    pad1.padding[0] = pad1.padding[1] = 1;
    kiln_module *net = kiln_nn_sequential(
        ctx, 5,
        (kiln_module *[]){kiln_nn_conv2d(ctx, 2, 3, 3, 3, &pad1, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv2d(ctx, 3, 4, 3, 3, NULL, false), kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                          kiln_nn_conv2d(ctx, 4, 2, 2, 2, NULL, true)});
    CHECK(net != NULL, "sequential: %s", kiln_error_message(ctx));
    if (!net) return;
    float xv[2 * 2 * 7 * 6];
    h_fill(xv, 2 * 2 * 7 * 6, -1.0f, 1.0f);
    static const size_t n[5] = {2 * 2 * 4 * 3, 2 * 2 * 7 * 6, 3 * 2 * 9, 3, 4 * 3 * 9};
    seq_fused_vs_children(ctx, "sequential Conv2d-ReLU", "Conv2d", net, xv, 4, (int64_t[]){2, 2, 7, 6}, n);
    kiln_tensor *bad = kiln_zeros(ctx, 4, (int64_t[]){2, 3, 7, 6});
    CHECK(kiln_forward(net, bad) == NULL && strstr(kiln_error_message(ctx), "Conv2d") &&
              strstr(kiln_error_message(ctx), "channels"),
          "wrong input channels: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_tensor_free(bad);
    kiln_module_free(net);
}

/* Under f16 autocast a fused pair stores relu of the rounded sum, as the two modules do: a
 * sum that rounds to -0 (products of 2^-14 and -2^-14 below half of f16's smallest
 * denormal) stays -0, as kiln_relu keeps a -0, and the other negative sums become +0. The
 * convolution's corner and edge outputs sum 4 and 6 such products (-0), its inner ones 9
 * (-2^-24, then +0); the linear layer's rows of 2^-14 and 2^-12 sum -2^-26 and -2^-24. */
static void test_seq_fusion_half_zero(kiln_ctx *ctx) {
    kiln_conv2d_params pad1 = kiln_conv2d_defaults();
    pad1.padding[0] = pad1.padding[1] = 1;
    kiln_module *nets[2] = {
        kiln_nn_sequential(
            ctx, 2,
            (kiln_module *[]){kiln_nn_conv2d(ctx, 1, 2, 3, 3, &pad1, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0)}),
        kiln_nn_sequential(
            ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 4, 3, true), kiln_nn_activation(ctx, KILN_ACT_RELU, 0)})};
    static const char *const names[2] = {"Conv2d-ReLU", "Linear-ReLU"};
    const float tiny = 0x1p-14f;
    float xc[2 * 5 * 6], xl[2 * 4];
    for (int i = 0; i < 2 * 5 * 6; i++) xc[i] = tiny;
    for (int i = 0; i < 8; i++) xl[i] = i < 4 ? tiny : 4 * tiny;
    kiln__hooks_of(ctx)->gemm_own = 1; /* kiln's own GEMM and its epilogue on every device */
    kiln__hooks_of(ctx)->gemm_epilogue = 1;
    for (int k = 0; k < 2; k++) {
        CHECK(nets[k] != NULL, "%s: %s", names[k], kiln_error_message(ctx));
        if (!nets[k]) continue;
        kiln_fill(kiln_module_find(nets[k], "0.weight"), -tiny);
        kiln_fill(kiln_module_find(nets[k], "0.bias"), 0.0f);
        int64_t n = k ? 2 * 3 : 2 * 2 * 5 * 6;
        float *got[2] = {0};
        for (int pass = 0; pass < 2; pass++) {
            kiln_scope_begin(ctx);
            kiln_tensor *x = k ? kiln_from_host(ctx, xl, KILN_F32, 2, (int64_t[]){2, 4})
                               : kiln_from_host(ctx, xc, KILN_F32, 4, (int64_t[]){1, 2, 5, 6});
            if (!k) x = kiln_reshape(ctx, x, 4, (int64_t[]){2, 1, 5, 6});
            kiln_ctx_set_autocast(ctx, KILN_F16);
            kiln_tensor *y =
                pass ? kiln_forward(kiln_module_child(nets[k], 1), kiln_forward(kiln_module_child(nets[k], 0), x))
                     : kiln_forward(nets[k], x);
            kiln_ctx_set_autocast(ctx, KILN_F32);
            got[pass] = y && kiln_tensor_dtype(y) == KILN_F16 ? h_read(kiln_to_dtype(ctx, y, KILN_F32)) : NULL;
            kiln_scope_end(ctx);
        }
        int64_t negz = 0, posz = 0;
        for (int64_t i = 0; got[0] && i < n; i++) {
            negz += got[0][i] == 0.0f && signbit(got[0][i]);
            posz += got[0][i] == 0.0f && !signbit(got[0][i]);
        }
        CHECK(got[0] && got[1] && !memcmp(got[0], got[1], sizeof(float) * (size_t)n),
              "%s under f16 autocast: fused differs from the two modules: %s", names[k], kiln_error_message(ctx));
        CHECK(negz > 0 && posz > 0, "%s: %lld outputs -0 and %lld +0 (want both)", names[k], (long long)negz,
              (long long)posz);
        free(got[0]);
        free(got[1]);
        kiln_module_free(nets[k]);
    }
    kiln__hooks_of(ctx)->gemm_own = 0;
    kiln__hooks_of(ctx)->gemm_epilogue = 0;
    kiln_error_clear(ctx);
}

static void test_containers(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_module *list = kiln_nn_module_list(
        ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 4, 4, true), kiln_nn_activation(ctx, KILN_ACT_TANH, 0)});
    CHECK(list && kiln_nn_module_list_append(list, kiln_nn_linear(ctx, 4, 2, false)) == KILN_OK, "list: %s",
          kiln_error_message(ctx));
    kiln_named_tensor st[8];
    int n = kiln_module_state(list, st, 8);
    CHECK(n == 3 && strcmp(st[0].name, "0.weight") == 0 && strcmp(st[1].name, "0.bias") == 0 &&
              strcmp(st[2].name, "2.weight") == 0,
          "ModuleList keys: %d entries", n);
    char desc[1024];
    /* repr(nn.ModuleList([nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2, bias=False)])) in torch 1.13 */
    CHECK(strcmp(kiln_module_describe(list, desc, sizeof desc),
                 "ModuleList(\n  (0): Linear(in_features=4, out_features=4, bias=True)\n  (1): Tanh()\n"
                 "  (2): Linear(in_features=4, out_features=2, bias=False)\n)") == 0,
          "ModuleList describe: %s", desc);

    kiln_module *dict = kiln_nn_module_dict(ctx);
    CHECK(dict && kiln_nn_module_dict_set(dict, "encoder", kiln_nn_linear(ctx, 4, 8, true)) == KILN_OK &&
              kiln_nn_module_dict_set(dict, "head", kiln_nn_linear(ctx, 8, 2, true)) == KILN_OK,
          "dict: %s", kiln_error_message(ctx));
    /* d["encoder"] = ... replaces in place: the order stays, the old module is freed */
    int64_t c0 = kiln_ctx_num_tensors(ctx);
    kiln_module *enc2 = kiln_nn_linear(ctx, 4, 6, false);
    CHECK(kiln_nn_module_dict_set(dict, "encoder", enc2) == KILN_OK && kiln_module_num_children(dict) == 2 &&
              kiln_module_child(dict, 0) == enc2 && kiln_module_find_child(dict, "encoder") == enc2 &&
              kiln_ctx_num_tensors(ctx) == c0 - 1,
          "dict replace: %s", kiln_error_message(ctx));
    n = kiln_module_state(dict, st, 8);
    CHECK(n == 3 && strcmp(st[0].name, "encoder.weight") == 0 && strcmp(st[1].name, "head.weight") == 0,
          "ModuleDict keys");

    /* a ResNet stage: Sequential of user BasicBlocks, named as torchvision's layer1 */
    kiln_module *stage =
        kiln_nn_sequential(ctx, 2, (kiln_module *[]){basic_block_new(ctx, 3, 4, 2), basic_block_new(ctx, 4, 4, 1)});
    kiln_module *net = kiln_nn_sequential(ctx, 1, (kiln_module *[]){stage});
    CHECK(net && kiln_module_set_child_name(net, 0, "layer1") == KILN_OK, "stage: %s", kiln_error_message(ctx));
    CHECK(kiln_module_find(net, "layer1.0.downsample.1.running_var") && kiln_module_find(net, "layer1.1.bn2.weight") &&
              !kiln_module_find(net, "layer1.1.downsample.0.weight"),
          "torchvision's keys (no downsample in the second block)");
    CHECK(kiln_module_state(net, NULL, 0) == 18 + 12, "stage state: %d entries", kiln_module_state(net, NULL, 0));
    kiln_module_train(net, false);
    int training = 0;
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < kiln_module_num_children(kiln_module_child(stage, k)); j++)
            training += kiln_module_is_training(kiln_module_child(kiln_module_child(stage, k), j));
    CHECK(training == 0, "eval reached %d fewer modules inside the user blocks", training);
    kiln_scope_begin(ctx);
    float xh[2 * 3 * 6 * 6];
    h_fill(xh, 2 * 3 * 6 * 6, -1, 1);
    kiln_tensor *y = kiln_forward(net, upload(ctx, xh, 4, (int64_t[]){2, 3, 6, 6}));
    CHECK(y && kiln_tensor_shape(y)[1] == 4 && kiln_tensor_shape(y)[2] == 3, "stage forward: %s",
          kiln_error_message(ctx));
    /* an op failing in a child of a user block names the child and its path */
    kiln_tensor *bad = upload(ctx, xh, 4, (int64_t[]){2, 4, 3, 6});
    y = kiln_forward(net, bad);
    expect_err(ctx, !y, KILN_ERR_SHAPE, "stage: a 4-channel input", "[2, 4, 3, 6]",
               "[in Conv2d(3, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False) at layer1.0.conv1]",
               NULL);
    kiln_scope_end(ctx);
    kiln_module_free(list);
    kiln_module_free(dict);
    kiln_module_free(net);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "containers: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* A module whose forward misbehaves, by its state's `how`. */
typedef struct broken {
    int how; /* 0: returns an error status and no message; 1: KILN_OK with output 1 NULL;
              * 2: an op of its own fails */
} broken;

static kiln_status broken_forward(kiln_module *m, int nin, kiln_tensor *const *in, int nout, kiln_tensor **out) {
    (void)nin, (void)nout;
    const broken *b = kiln_module_data(m);
    kiln_ctx *ctx = kiln_module_ctx(m);
    if (b->how == 0) return KILN_ERR_UNSUPPORTED;
    out[0] = in[0];
    if (b->how == 1) return KILN_OK;
    out[1] = kiln_reshape(ctx, in[0], 1, (int64_t[]){7});
    return out[1] ? KILN_OK : kiln_error_status(ctx);
}

static void broken_describe(const kiln_module *m, char *buf, size_t cap) {
    snprintf(buf, cap, "how=%d", ((const broken *)kiln_module_data(m))->how);
}

static void test_user_errors(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_status s;
    kiln_module *bad;
    /* definitions */
    CHECK(kiln_module_new(NULL, &mixer_def) == NULL && strstr(kiln_last_error(), "kiln_module_new") &&
              strstr(kiln_last_error(), "context is NULL"),
          "kiln_module_new(NULL ctx): '%s'", kiln_last_error());
    bad = kiln_module_new(ctx, NULL);
    expect_err(ctx, !bad, KILN_ERR_NULL, "kiln_module_new(NULL def)", "kiln_module_new", "the definition is NULL",
               NULL);
    kiln_module_def d = mixer_def;
    d.forward = NULL;
    bad = kiln_module_new(ctx, &d);
    expect_err(ctx, !bad, KILN_ERR_NULL, "a NULL forward", "kiln_module_new", "def->forward is NULL", NULL);
    d = mixer_def;
    d.kind = NULL;
    bad = kiln_module_new(ctx, &d);
    expect_err(ctx, !bad, KILN_ERR_NULL, "a NULL kind", "kiln_module_new", "def->kind is NULL", NULL);
    d.kind = "";
    bad = kiln_module_new(ctx, &d);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "an empty kind", "kiln_module_new", "kind ''", NULL);
    d = mixer_def;
    d.num_inputs = 0, d.optional_inputs = 0;
    bad = kiln_module_new(ctx, &d);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "0 inputs", "kiln_module_new", "num_inputs 0", NULL);
    d = mixer_def;
    d.optional_inputs = 3;
    bad = kiln_module_new(ctx, &d);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "every input optional", "kiln_module_new", "optional_inputs 3",
               NULL);
    d = mixer_def;
    d.num_outputs = 0;
    bad = kiln_module_new(ctx, &d);
    expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "0 outputs", "kiln_module_new", "num_outputs 0", NULL);

    /* construction failing half-way: destroy runs exactly once, nothing leaks */
    for (int at = 1; at <= 3; at++) {
        int d0 = g_mixer_destroyed;
        int64_t c0 = kiln_ctx_num_tensors(ctx);
        bad = mixer_new(ctx, 4, 3, at);
        static const char *const step[4] = {NULL, "'f.c'", "'fc' is taken by child 0 of Mixer", "name ''"};
        expect_err(ctx, !bad, KILN_ERR_INVALID_ARGUMENT, "Mixer construction failing", step[at], NULL, NULL);
        CHECK(g_mixer_destroyed == d0 + 1, "construction failing at step %d: destroy ran %d times", at,
              g_mixer_destroyed - d0);
        CHECK(kiln_ctx_num_tensors(ctx) == c0, "construction failing at step %d leaked %lld tensors", at,
              (long long)(kiln_ctx_num_tensors(ctx) - c0));
    }

    /* names and ownership */
    kiln_module *mx = mixer_new(ctx, 4, 3, 0);
    CHECK(mx != NULL, "Mixer: %s", kiln_error_message(ctx));
    int64_t c1 = kiln_ctx_num_tensors(ctx);
    char long_name[65]; /* 64 characters: one too many */
    memset(long_name, 'n', 64);
    long_name[64] = '\0';
    const char *bad_names[] = {"", "a.b", long_name, "fc", "scale", "shift"};
    const char *bad_why[] = {"1 to 63 characters",   "no dots",          "1 to 63 characters", "taken by child 0",
                             "taken by a parameter", "taken by a buffer"};
    for (int k = 0; k < 6; k++) {
        s = kiln_module_add_child(mx, bad_names[k], kiln_nn_linear(ctx, 2, 2, true));
        expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "add_child, bad name", "kiln_module_add_child",
                   bad_why[k], NULL);
        s = kiln_module_add_parameter(mx, bad_names[k], kiln_zeros(ctx, 1, (int64_t[]){2}));
        expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "add_parameter, bad name", "kiln_module_add_parameter",
                   bad_why[k], NULL);
        s = kiln_module_add_buffer(mx, bad_names[k], kiln_zeros(ctx, 1, (int64_t[]){2}));
        expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "add_buffer, bad name", "kiln_module_add_buffer",
                   bad_why[k], NULL);
    }
    s = kiln_module_add_child(mx, NULL, kiln_nn_linear(ctx, 2, 2, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_NULL, "add_child, NULL name", "kiln_module_add_child", "name is NULL", NULL);
    s = kiln_module_add_child(mx, "x", kiln_nn_linear(ctx, 0, 2, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "add_child of a failed constructor keeps its error",
               "kiln_nn_linear", "in_features=0", NULL);
    s = kiln_module_add_child(mx, "x", NULL);
    expect_err(ctx, s != KILN_OK, KILN_ERR_NULL, "add_child(NULL)", "kiln_module_add_child", "is NULL", NULL);
    s = kiln_module_add_parameter(mx, "idx", kiln_empty(ctx, KILN_I32, 1, (int64_t[]){2}));
    expect_err(ctx, s != KILN_OK, KILN_ERR_DTYPE, "an I32 parameter", "kiln_module_add_parameter", "'idx'", "i32");
    s = kiln_module_add_buffer(mx, "b", NULL);
    expect_err(ctx, s != KILN_OK, KILN_ERR_NULL, "add_buffer(NULL)", "kiln_module_add_buffer", "'b'", "is NULL");
    CHECK(kiln_module_add_child(NULL, "x", kiln_nn_linear(ctx, 2, 2, true)) == KILN_ERR_NULL &&
              strstr(kiln_last_error(), "the module is NULL") &&
              kiln_module_add_parameter(NULL, "p", kiln_zeros(ctx, 1, (int64_t[]){2})) == KILN_ERR_NULL &&
              kiln_module_add_buffer(NULL, "p", kiln_zeros(ctx, 1, (int64_t[]){2})) == KILN_ERR_NULL,
          "add to a NULL module");
    CHECK(kiln_ctx_num_tensors(ctx) == c1 && kiln_module_num_children(mx) == 1 && kiln_module_state(mx, NULL, 0) == 4,
          "refused registrations were freed and changed nothing (%lld tensors more, %d children)",
          (long long)(kiln_ctx_num_tensors(ctx) - c1), kiln_module_num_children(mx));
    /* a child that is not ours to take: it stays where it is */
    kiln_module *holder = kiln_nn_sequential(ctx, 1, (kiln_module *[]){kiln_nn_linear(ctx, 2, 2, true)});
    kiln_module *owned = kiln_module_child(holder, 0);
    s = kiln_module_add_child(mx, "y", owned);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "adding another module's child", "already is a child",
               "Sequential", NULL);
    s = kiln_module_add_child(mx, "self", mx);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "adding a module to itself", "child of itself", NULL,
               NULL);
    s = kiln_module_add_child(owned, "up", holder);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "adding an ancestor", "of its descendant", NULL, NULL);
    CHECK(kiln_module_child(holder, 0) == owned && kiln_module_num_children(owned) == 0, "the refused child is intact");

    /* forward: counts and NULLs */
    kiln_tensor *a = upload(ctx, (float[8]){0}, 2, (int64_t[]){2, 4});
    kiln_tensor *out[3] = {a, a, a};
    s = kiln_module_forward(mx, 1, &a, 2, out);
    expect_err(ctx, s != KILN_OK && !out[0] && !out[1], KILN_ERR_INVALID_ARGUMENT, "Mixer given 1 input",
               "kiln_module_forward", "Mixer(4, 3) takes 2 to 3 inputs, given 1", NULL);
    s = kiln_module_forward(mx, 4, (kiln_tensor *[]){a, a, a, a}, 2, out);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "Mixer given 4 inputs", "given 4", NULL, NULL);
    s = kiln_module_forward(mx, 2, (kiln_tensor *[]){a, a}, 1, out);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "Mixer asked for 1 output", "gives 2 outputs, asked for 1",
               NULL, NULL);
    s = kiln_module_forward(mx, 2, (kiln_tensor *[]){a, a}, 3, out);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "Mixer asked for 3 outputs", "asked for 3", NULL, NULL);
    s = kiln_module_forward(mx, 2, NULL, 2, out);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "a NULL input array", "NULL array", NULL, NULL);
    s = kiln_module_forward(mx, 2, (kiln_tensor *[]){a, NULL}, 2, out);
    expect_err(ctx, s != KILN_OK, KILN_ERR_NULL, "a NULL input", "input 1 of Mixer(4, 3) is NULL", NULL, NULL);
    kiln_tensor *failed = kiln_reshape(ctx, a, 1, (int64_t[]){5});
    s = kiln_module_forward(mx, 2, (kiln_tensor *[]){a, failed}, 2, out);
    expect_err(ctx, s != KILN_OK && !failed, KILN_ERR_SHAPE, "an input from a failed op keeps that op's error",
               "kiln_reshape", NULL, NULL);
    s = kiln_module_forward(NULL, 1, &a, 1, out);
    expect_err(ctx, s == KILN_ERR_NULL, KILN_ERR_NULL, "kiln_module_forward(NULL)", "kiln_module_forward",
               "module is NULL", NULL);
    kiln_tensor *y = kiln_forward(mx, a);
    expect_err(ctx, !y, KILN_ERR_INVALID_ARGUMENT, "kiln_forward on a two-input module", "kiln_forward",
               "Mixer(4, 3) takes 3 inputs and gives 2 outputs", "kiln_module_forward");
    /* an op failing in the user module's child names the child by its path */
    kiln_module *dict = kiln_nn_module_dict(ctx);
    CHECK(kiln_nn_module_dict_set(dict, "mix", mx) == KILN_OK, "dict: %s", kiln_error_message(ctx));
    kiln_tensor *a5 = upload(ctx, (float[10]){0}, 2, (int64_t[]){2, 5});
    s = kiln_module_forward(kiln_module_find_child(dict, "mix"), 2, (kiln_tensor *[]){a5, a5}, 2, out);
    expect_err(ctx, s != KILN_OK, KILN_ERR_SHAPE, "an op failing in a user module's child", "[2, 5]",
               "[in Linear(in_features=4, out_features=3, bias=True) at mix.fc]", NULL);
    /* ModuleList and ModuleDict have no forward */
    y = kiln_forward(dict, a);
    expect_err(ctx, !y, KILN_ERR_UNSUPPORTED, "forward of a ModuleDict", "ModuleDict has no forward",
               "[in ModuleDict()]", NULL);
    kiln_module *list = kiln_nn_module_list(ctx, 1, (kiln_module *[]){kiln_nn_linear(ctx, 4, 4, true)});
    y = kiln_forward(list, a);
    expect_err(ctx, !y, KILN_ERR_UNSUPPORTED, "forward of a ModuleList", "ModuleList has no forward", NULL, NULL);
    /* container misuse */
    int64_t c2 = kiln_ctx_num_tensors(ctx);
    s = kiln_nn_module_list_append(dict, kiln_nn_linear(ctx, 2, 2, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "list_append to a dict", "ModuleDict is not a ModuleList",
               NULL, NULL);
    s = kiln_nn_module_dict_set(list, "k", kiln_nn_linear(ctx, 2, 2, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "dict_set on a list", "ModuleList is not a ModuleDict",
               NULL, NULL);
    s = kiln_nn_module_dict_set(dict, "a.b", kiln_nn_linear(ctx, 2, 2, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "dict key with a dot", "kiln_nn_module_dict_set", "'a.b'",
               "no dots");
    s = kiln_nn_module_dict_set(dict, "mix", NULL);
    expect_err(ctx, s != KILN_OK, KILN_ERR_NULL, "dict_set NULL", "kiln_nn_module_dict_set", "NULL", NULL);
    s = kiln_nn_sequential_append(list, kiln_nn_linear(ctx, 2, 2, true));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "sequential_append to a list",
               "ModuleList is not a Sequential", NULL, NULL);
    bad = kiln_nn_module_list(ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 2, 2, true), NULL});
    expect_err(ctx, !bad, KILN_ERR_NULL, "module_list with a NULL entry", "kiln_nn_module_list", "NULL", NULL);
    CHECK(kiln_ctx_num_tensors(ctx) == c2 && kiln_module_find_child(dict, "mix") == mx,
          "refused container calls leaked");

    /* modules, tensors and inputs of another context (a second context on the same device) */
    const kiln_device_info *di = kiln_ctx_device(ctx);
    char spec[32];
    snprintf(spec, sizeof spec, "%d:%d", di->platform_index, di->device_index);
    kiln_ctx *ctx2 = NULL;
    CHECK(kiln_open(&ctx2, spec) == KILN_OK, "a second context: %s", kiln_last_error());
    if (ctx2) {
        s = kiln_module_add_child(mx, "other", kiln_nn_linear(ctx2, 2, 2, true));
        expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "a child of another context", "kiln_module_add_child",
                   "another context", NULL);
        s = kiln_module_add_parameter(mx, "other", kiln_zeros(ctx2, 1, (int64_t[]){2}));
        expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "a parameter of another context",
                   "kiln_module_add_parameter", "'other' belongs to another context", NULL);
        kiln_tensor *a2 = kiln_zeros(ctx2, 2, (int64_t[]){2, 4});
        s = kiln_module_forward(mx, 2, (kiln_tensor *[]){a, a2}, 2, out);
        expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "an input of another context",
                   "input 1 of Mixer(4, 3) belongs to another context", NULL, NULL);
        CHECK(kiln_ctx_num_tensors(ctx2) == 1, "refused tensors of the second context were not freed (%lld left)",
              (long long)kiln_ctx_num_tensors(ctx2));
        kiln_close(ctx2);
    }

    /* refused container calls never free a module that is not the caller's to give */
    kiln_module *outer = kiln_nn_sequential(
        ctx, 1, (kiln_module *[]){kiln_nn_sequential(ctx, 1, (kiln_module *[]){kiln_nn_linear(ctx, 2, 2, true)})});
    kiln_module *inner = kiln_module_child(outer, 0);
    s = kiln_nn_sequential_set(inner, 5, outer);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "sequential_set of an ancestor, bad index", "index 5",
               NULL, NULL);
    s = kiln_nn_sequential_set(inner, 0, outer);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "sequential_set of an ancestor", "of its descendant", NULL,
               NULL);
    s = kiln_nn_module_list_append(inner, outer);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "list_append of an ancestor to a Sequential",
               "Sequential is not a ModuleList", NULL, NULL);
    s = kiln_nn_module_dict_set(inner, "k", inner);
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "dict_set of itself on a Sequential",
               "Sequential is not a ModuleDict", NULL, NULL);
    s = kiln_nn_sequential_append(inner, kiln_module_child(inner, 0));
    expect_err(ctx, s != KILN_OK, KILN_ERR_INVALID_ARGUMENT, "appending a module's own child again",
               "already is a child", NULL, NULL);
    CHECK(kiln_module_child(outer, 0) == inner && kiln_module_num_children(inner) == 1 &&
              kiln_module_find(outer, "0.0.weight") != NULL,
          "the refused modules are intact");
    kiln_module_free(outer);

    /* a forward that misbehaves is caught and named */
    static const kiln_module_def broken_def = {.kind = "Broken",
                                               .state_size = sizeof(broken),
                                               .forward = broken_forward,
                                               .num_inputs = 1,
                                               .num_outputs = 2,
                                               .describe = broken_describe};
    kiln_module *br = kiln_module_new(ctx, &broken_def);
    broken *bs = kiln_module_data(br);
    s = kiln_module_forward(br, 1, &a, 2, out);
    expect_err(ctx, s == KILN_ERR_UNSUPPORTED && !out[0], KILN_ERR_UNSUPPORTED, "an error status without a message",
               "the forward of Broken(how=0) failed with KILN_ERR_UNSUPPORTED and left no message", NULL, NULL);
    bs->how = 1;
    s = kiln_module_forward(br, 1, &a, 2, out);
    expect_err(ctx, s != KILN_OK && !out[0] && !out[1], KILN_ERR_INVALID_ARGUMENT, "KILN_OK without an output",
               "returned KILN_OK without output 1", NULL, NULL);
    bs->how = 2;
    s = kiln_module_forward(br, 1, &a, 2, out);
    expect_err(ctx, s != KILN_OK && !out[0], KILN_ERR_SHAPE, "an op of the user module fails", "kiln_reshape",
               "[in Broken(how=2)]", NULL);
    kiln_module_free(br);
    kiln_module_free(dict);
    kiln_module_free(list);
    kiln_module_free(holder);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "user errors: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- everything at once: build, train a step, free ------------------------------------- */

static void test_lifetime(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_module *net = named_net(ctx);
    float xh[2 * 3 * 6 * 6];
    h_fill(xh, 2 * 3 * 6 * 6, -1, 1);
    for (int step = 0; step < 3; step++) {
        kiln_scope_begin(ctx);
        kiln_tensor *x = upload(ctx, xh, 4, (int64_t[]){2, 3, 6, 6});
        kiln_tensor *loss = kiln_mean(ctx, kiln_forward(net, x), 0, NULL, false);
        CHECK(loss && kiln_backward(loss) == KILN_OK, "step %d: %s", step, kiln_error_message(ctx));
        kiln_scope_end(ctx);
    }
    CHECK(kiln_tensor_grad(kiln_module_find(net, "classifier.1.weight")) != NULL, "gradients accumulate");
    CHECK(kiln_ctx_num_tensors(ctx) > before, "the module holds its tensors");
    kiln_module_free(net);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "lifetime: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

static void run(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    test_golden(ctx);
    test_init(ctx);
    test_names(ctx);
    test_train_eval(ctx);
    test_transfer(ctx);
    test_errors(ctx);
    test_user_module(ctx);
    test_containers(ctx);
    test_seq_fusion(ctx);
    test_seq_conv_fusion(ctx);
    test_seq_fusion_half_zero(ctx);
    test_user_errors(ctx);
    test_lifetime(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "test_nn: %lld tensors leaked overall",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

int main(void) {
    const char *v = getenv("KILN_TEST_VERBOSE");
    verbose = v && *v && *v != '0';
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
