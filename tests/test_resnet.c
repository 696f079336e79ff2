/* tests/test_resnet.c - the residual networks of kiln/models.h against PyTorch
 * (tests/golden/gen_resnet.py writes tests/golden/resnet.safetensors):
 *   - parameter counts, state_dict keys, their order and shapes equal torchvision's
 *     ResNet-18/34/50 and torch_ref.py's ResNet20;
 *   - BasicBlock and Bottleneck, with and without the projection shortcut, train and eval:
 *     torch's state loaded by name, output, input gradient, every parameter gradient and
 *     the running statistics after the forward;
 *   - ResNet-18 with both stems (train and eval) and one SGD step of ResNet-20 (loss,
 *     gradients, parameters and running statistics after the step, eval logits after it),
 *     from weights both sides compute from a formula (formula_fill, gen_resnet.py's
 *     formula_state), every tensor checked at up to 128 places;
 *   - initialisation (kaiming normal fan-out, zero_init_residual), child paths, bad
 *     arguments, a wrong number of input channels naming the layer's path, a checkpoint
 *     with one tensor of the wrong shape (named with both shapes, the model unchanged).
 * With --interop-load PATH / --interop-save PATH it is the kiln side of tests/interop.sh's
 * ResNet-18 exchange with PyTorch (see main).
 *
 * Tolerances (normalised error |got - ref| / (atol + rtol * |ref|) <= 1, both sides float32,
 * so the differences are rounding in different summation orders; KILN_TEST_VERBOSE=1 logs
 * every case's worst normalised error):
 *   - blocks: the bounds of tests/test_nn.c's BasicBlock (EPS_SUM 2e-6 for outputs: sums of
 *     up to 72 products; BLK_EPS 1e-5 for gradients in training mode: chained batch norms,
 *     each stage's rounding scaled by the next one's rstd * weight; EPS_NORM 3e-6 in eval,
 *     where batch norm is a fixed affine map); running statistics 3e-7 (one momentum update
 *     of float statistics). Measured on POCL: up to 0.35 of the bound.
 *   - networks: 18 to 20 layers deep, so the rounding of each layer (~1e-6 relative) is
 *     carried and amplified by the later ones; a train-mode batch norm divides by batch
 *     statistics of as few as 8 values (ResNet-18's layer4 at 2x2). The bound is relative
 *     to the tensor's largest magnitude, NET_EPS * max|ref| + NET_EPS * |ref|, against
 *     torch's float64 result; gen_resnet.py keeps only cases where torch's own float32
 *     result is within a quarter of it (well-conditioned ones). Measured on POCL: up to
 *     0.27 of the bound. A wrong weight, a transposed kernel or a missed shortcut moves
 *     values by O(max|ref|) and fails by orders of magnitude.
 */
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "golden.h"

#define EPS_SUM 2e-6
#define EPS_NORM 3e-6
#define BLK_EPS 1e-5
#define BUF_EPS 3e-7
#define NET_EPS 1e-4

static bool verbose;

/* ---- the weight formula (gen_resnet.py: uniform01, formula_value, formula_input) ---------- */

static uint32_t fnv1a(const char *a, const char *b) {
    uint32_t h = 2166136261u;
    for (const char *s = a; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    h = (h ^ (uint8_t)'/') * 16777619u;
    for (const char *s = b; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static double uniform01(uint32_t seed, int64_t i) {
    uint32_t x = seed + (uint32_t)i * 0x9E3779B9u;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    x *= 0xC2B2AE35u;
    x ^= x >> 16;
    return (double)(x >> 8) * 0x1p-24;
}

/* The value of state entry `key` of a network case, as gen_resnet.py's formula_value. */
static void formula_values(const char *salt, const char *key, int ndim, const int64_t *shape, float *v) {
    int64_t n = h_numel(ndim, shape);
    uint32_t seed = fnv1a(salt, key);
    const char *leaf = strrchr(key, '.');
    leaf = leaf ? leaf + 1 : key;
    for (int64_t i = 0; i < n; i++) {
        double u = uniform01(seed, i), x;
        if (strcmp(leaf, "running_mean") == 0)
            x = 0.2 * (2 * u - 1);
        else if (strcmp(leaf, "running_var") == 0 || (strcmp(leaf, "weight") == 0 && ndim == 1))
            x = 0.5 + u;
        else if (strcmp(leaf, "bias") == 0)
            x = 0.2 * (2 * u - 1);
        else if (ndim == 4)
            x = (2 * u - 1) * sqrt(6.0 / (double)(shape[0] * shape[2] * shape[3]));
        else
            x = (2 * u - 1) / sqrt((double)shape[1]);
        v[i] = (float)x;
    }
}

/* Fills every F32 state entry of m from the formula (num_batches_tracked stays 0, as torch's). */
static void formula_fill(kiln_module *m, const char *salt) {
    int n = kiln_module_state(m, NULL, 0);
    kiln_named_tensor *st = malloc(sizeof *st * (size_t)n);
    kiln_module_state(m, st, n);
    for (int k = 0; k < n; k++) {
        kiln_tensor *t = st[k].tensor;
        if (kiln_tensor_dtype(t) != KILN_F32) continue;
        int64_t numel = kiln_tensor_numel(t);
        float *v = malloc(sizeof(float) * (size_t)numel);
        formula_values(salt, st[k].name, kiln_tensor_ndim(t), kiln_tensor_shape(t), v);
        CHECK(kiln_copy_from_host(t, v, sizeof(float) * (size_t)numel) == KILN_OK, "%s: filling %s: %s", salt,
              st[k].name, kiln_error_message(kiln_module_ctx(m)));
        free(v);
    }
    free(st);
}

/* The input of a network case: 2u - 1 of the formula's key "input" (exact in float). */
static kiln_tensor *formula_input(kiln_ctx *ctx, const char *salt, int ndim, const int64_t *shape) {
    int64_t n = h_numel(ndim, shape);
    float *v = malloc(sizeof(float) * (size_t)n);
    uint32_t seed = fnv1a(salt, "input");
    for (int64_t i = 0; i < n; i++) v[i] = 2 * (float)uniform01(seed, i) - 1;
    kiln_tensor *x = kiln_from_host(ctx, v, KILN_F32, ndim, shape);
    free(v);
    return x;
}

/* ---- golden helpers ------------------------------------------------------------------------ */

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

/* Compares got with ref elementwise, |got - ref| <= atol + rtol |ref|, got being either
 * the whole tensor (stride 1) or sampled at every stride-th element of its flattened
 * values; atol is scaled by max|ref| when `scaled`. Returns the worst normalised error. */
static double cmp_sub(const char *what, kiln_tensor *got, const golden_tensor *ref, int64_t stride, double atol,
                      double rtol, bool scaled) {
    CHECK(got != NULL && ref != NULL, "%s: %s", what, got ? "no golden tensor" : "no kiln tensor");
    if (!got || !ref) return INFINITY;
    int64_t n = kiln_tensor_numel(got);
    CHECK(ref->numel == (n + stride - 1) / stride, "%s: %lld kiln elements every %lld, %lld golden", what, (long long)n,
          (long long)stride, (long long)ref->numel);
    if (ref->numel != (n + stride - 1) / stride) return INFINITY;
    float *h = h_read(got);
    float *s = malloc(sizeof(float) * (size_t)(ref->numel ? ref->numel : 1));
    double *r = malloc(sizeof(double) * (size_t)(ref->numel ? ref->numel : 1));
    double mx = 0;
    for (int64_t k = 0; k < ref->numel; k++) {
        s[k] = h[k * stride];
        r[k] = ref->f[k];
        mx = fmax(mx, fabs(r[k]));
    }
    double w = h_compare(what, s, r, ref->numel, scaled ? atol * mx : atol, rtol);
    free(h);
    free(s);
    free(r);
    return w;
}

/* Checks m's state_dict against torch's: the same keys in the same order and, where the
 * case has them, the same shapes ("<case>.order.<key>" = [index, shape...]). */
static void check_names(const golden *g, const char *cname, kiln_module *m) {
    int n = kiln_module_state(m, NULL, 0);
    kiln_named_tensor *st = malloc(sizeof *st * (size_t)n);
    kiln_module_state(m, st, n);
    CHECK(n == gcount(g, cname, "order"), "%s: kiln has %d state entries, torch %d", cname, n,
          gcount(g, cname, "order"));
    int bad = 0;
    for (int k = 0; k < n; k++) {
        char part[200];
        snprintf(part, sizeof part, "order.%.127s", st[k].name);
        const golden_tensor *o = gfind(g, cname, part);
        int nd = kiln_tensor_ndim(st[k].tensor);
        bool ok = o && o->is_int && o->numel >= 1 && o->i[0] == k && (o->numel == 1 || o->numel == 1 + nd);
        for (int d = 0; ok && o->numel > 1 && d < nd; d++) ok = o->i[1 + d] == kiln_tensor_shape(st[k].tensor)[d];
        if (!ok && bad++ < 5) {
            char sh[96];
            CHECK(0, "%s: kiln's state entry %d '%s' %s is not torch's entry %d (%s)", cname, k, st[k].name,
                  kiln_tensor_shape_str(st[k].tensor, sh, sizeof sh), k,
                  o ? "another index or shape" : "no such key in torch's state_dict");
        }
        bool is_buf = strstr(st[k].name, "running_") || strstr(st[k].name, "num_batches_tracked");
        CHECK(st[k].is_buffer == is_buf, "%s: '%s' is_buffer %d", cname, st[k].name, st[k].is_buffer);
    }
    CHECK(bad == 0, "%s: %d state entries differ from torch's", cname, bad);
    free(st);
}

/* ---- parameter counts, names, initialisation --------------------------------------------- */

/* kaiming_normal_(fan_out, relu): N(0, 2 / fan_out). Statistics of n samples with 5-standard-
 * error bounds (the outcome is deterministic for the fixed seed; a correct draw fails with
 * probability ~1e-6): mean within 5 sigma / sqrt(n), variance within 5 sigma^2 sqrt(2 / n),
 * and the fraction inside one sigma, 0.6827 for a normal (0.577 for a uniform of that
 * variance), within 5 sqrt(p (1 - p) / n). */
static void check_kaiming(kiln_module *m, const char *name, double fan_out) {
    kiln_tensor *w = kiln_module_find(m, name);
    CHECK(w != NULL, "%s: no parameter %s", kiln_module_kind(m), name);
    if (!w) return;
    int64_t n = kiln_tensor_numel(w);
    float *h = h_read(w);
    double sigma2 = 2.0 / fan_out, sigma = sqrt(sigma2), sum = 0, sq = 0;
    int64_t inside = 0;
    for (int64_t i = 0; i < n; i++) sum += h[i], sq += (double)h[i] * h[i], inside += fabs(h[i]) <= sigma;
    double mean = sum / (double)n, var = sq / (double)n - mean * mean, p = 0.682689492;
    double frac = (double)inside / (double)n;
    CHECK(fabs(mean) <= 5 * sigma / sqrt((double)n), "%s: mean %g of N(0, %g)", name, mean, sigma2);
    CHECK(fabs(var - sigma2) <= 5 * sigma2 * sqrt(2.0 / (double)n), "%s: variance %g, kaiming fan_out's %g", name, var,
          sigma2);
    CHECK(fabs(frac - p) <= 5 * sqrt(p * (1 - p) / (double)n), "%s: %.4f inside one sigma, a normal's %.4f", name, frac,
          p);
    free(h);
}

/* Every element of parameter `name` equals v. */
static void check_all(kiln_module *m, const char *name, float v) {
    kiln_tensor *t = kiln_module_find(m, name);
    CHECK(t != NULL, "no tensor %s", name);
    if (!t) return;
    float *h = h_read(t);
    int64_t bad = 0;
    for (int64_t i = 0; i < kiln_tensor_numel(t); i++) bad += h[i] != v;
    CHECK(bad == 0, "%s: %lld elements are not %g", name, (long long)bad, v);
    free(h);
}

static void check_kind(kiln_module *m, const char *path, const char *kind) {
    kiln_module *c = kiln_module_find_child(m, path);
    CHECK(c && strcmp(kiln_module_kind(c), kind) == 0, "find_child(%s): %s, expected a %s", path,
          c ? kiln_module_kind(c) : "NULL", kind);
}

static void test_models(kiln_ctx *ctx, const golden *g) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    static const struct {
        const char *name;
        int64_t published;
    } counts[] = {{"resnet18", 11689512}, {"resnet34", 21797672}, {"resnet50", 25557032}, {"resnet20", 272186}};
    for (int c = 0; c < 4; c++) {
        kiln_manual_seed(ctx, 11 + (uint64_t)c);
        kiln_resnet_opts o = kiln_resnet_defaults();
        o.zero_init_residual = c == 2; /* checked on resnet50's Bottlenecks below */
        kiln_resnet_opts co = kiln_resnet_cifar_defaults();
        co.in_channels = 1;
        kiln_module *m = c == 0   ? kiln_resnet18(ctx, NULL)
                         : c == 1 ? kiln_resnet34(ctx, &o)
                         : c == 2 ? kiln_resnet50(ctx, &o)
                                  : kiln_resnet_cifar(ctx, 20, &co);
        CHECK(m != NULL, "%s: %s", counts[c].name, kiln_error_message(ctx));
        if (!m) {
            kiln_error_clear(ctx);
            continue;
        }
        char key[64];
        snprintf(key, sizeof key, "counts.%s", counts[c].name);
        const golden_tensor *gc = golden_get(g, key);
        int64_t n = kiln_module_num_elements(m);
        CHECK(n == counts[c].published && gc && gc->i[0] == n, "%s: %lld parameters, torch %d, published %lld",
              counts[c].name, (long long)n, gc ? gc->i[0] : -1, (long long)counts[c].published);
        check_names(g, counts[c].name, m);
        check_kind(m, "conv1", "Conv2d");
        check_kind(m, "layer1.0.conv1", "Conv2d");
        check_kind(m, "layer2.0.downsample.0", "Conv2d");
        check_kind(m, "layer2.0.downsample.1", "BatchNorm2d");
        check_kind(m, "fc", "Linear");
        CHECK((kiln_module_find_child(m, "maxpool") != NULL) == (c != 3), "%s: maxpool", counts[c].name);
        CHECK((kiln_module_find_child(m, "layer4") != NULL) == (c != 3), "%s: layer4", counts[c].name);
        CHECK(kiln_module_find_child(m, "layer1.0.downsample") == NULL || c == 2, "%s: layer1.0 projects",
              counts[c].name);
        if (c == 0) {
            /* torchvision's initialisation; fc keeps torch's Linear default U(+-1/sqrt(512)) */
            check_kaiming(m, "conv1.weight", 64.0 * 49);
            check_kaiming(m, "layer4.0.conv1.weight", 512.0 * 9);
            check_kaiming(m, "layer3.0.downsample.0.weight", 256.0);
            check_all(m, "layer1.0.bn2.weight", 1.0f);
            check_all(m, "layer1.0.bn2.bias", 0.0f);
            float *w = h_read(kiln_module_find(m, "fc.weight"));
            float mx = 0, bound = (float)(1 / sqrt(512.0));
            for (int64_t i = 0; i < 512000; i++) mx = fmaxf(mx, fabsf(w[i]));
            CHECK(mx <= bound && mx >= bound * (1 - 20.0f / 512000), "fc.weight: max |w| %g, bound %g", mx, bound);
            free(w);
            char buf[8192];
            kiln_module_describe(kiln_module_find_child(m, "layer2.0"), buf, sizeof buf);
            CHECK(strstr(buf, "BasicBlock(") == buf && strstr(buf, "(downsample): Sequential("),
                  "describe of layer2.0: %s", buf);
        }
        if (c == 2) {
            check_kind(m, "layer1.0.conv3", "Conv2d");
            check_kind(m, "layer1.0", "Bottleneck");
            check_all(m, "layer1.0.bn3.weight", 0.0f); /* zero_init_residual */
            check_all(m, "layer4.2.bn3.weight", 0.0f);
            check_all(m, "layer1.0.bn2.weight", 1.0f);
            check_all(m, "layer1.0.downsample.1.weight", 1.0f);
        }
        if (c == 3) {
            check_kind(m, "layer3.2", "BasicBlock");
            CHECK(kiln_module_find_child(m, "layer3.3") == NULL, "resnet20: 3 blocks per stage");
        }
        CHECK_OK(ctx);
        kiln_module_free(m);
    }
    /* zero_init_residual on BasicBlocks, CIFAR depths */
    kiln_resnet_opts o = kiln_resnet_cifar_defaults();
    o.zero_init_residual = true;
    o.num_classes = 7;
    kiln_module *m = kiln_resnet_cifar(ctx, 32, &o);
    CHECK(m != NULL, "resnet32: %s", kiln_error_message(ctx));
    if (m) {
        check_all(m, "layer2.4.bn2.weight", 0.0f);
        check_all(m, "layer2.4.bn1.weight", 1.0f);
        CHECK(kiln_module_find_child(m, "layer3.4") && !kiln_module_find_child(m, "layer3.5"), "resnet32: 5 blocks");
        CHECK(kiln_tensor_shape(kiln_module_find(m, "fc.weight"))[0] == 7, "resnet32: 7 classes");
        kiln_module_free(m);
    }
    CHECK_OK(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "models: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- blocks -------------------------------------------------------------------------------- */

typedef struct block_case {
    const char *name;
    bool bottleneck;
    int64_t in_ch, width;
    int stride;
    bool training;
    double y_eps, g_eps;
} block_case;

static const block_case blocks[] = {
    {"basic_down", false, 3, 4, 2, true, EPS_SUM, BLK_EPS},
    {"basic_down_eval", false, 3, 4, 2, false, EPS_SUM, EPS_NORM},
    {"basic_id", false, 4, 4, 1, true, EPS_SUM, BLK_EPS},
    {"basic_id_eval", false, 4, 4, 1, false, EPS_SUM, EPS_NORM},
    {"bottleneck_down", true, 4, 2, 2, true, EPS_SUM, BLK_EPS},
    {"bottleneck_down_eval", true, 4, 2, 2, false, EPS_SUM, EPS_NORM},
    {"bottleneck_id", true, 8, 2, 1, true, EPS_SUM, BLK_EPS},
    {"bottleneck_id_eval", true, 8, 2, 1, false, EPS_SUM, EPS_NORM},
};

static void test_block(kiln_ctx *ctx, const golden *g, const block_case *c) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_module *m = c->bottleneck ? kiln_nn_bottleneck(ctx, c->in_ch, c->width, c->stride)
                                   : kiln_nn_basic_block(ctx, c->in_ch, c->width, c->stride);
    CHECK(m != NULL, "%s: %s", c->name, kiln_error_message(ctx));
    if (!m) {
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
        return;
    }
    check_names(g, c->name, m);
    /* torch's values by name */
    kiln_named_tensor st[32];
    int ns = kiln_module_state(m, st, 32);
    CHECK(ns == gcount(g, c->name, "state") && ns <= 32, "%s: %d state entries, torch %d", c->name, ns,
          gcount(g, c->name, "state"));
    for (int k = 0; k < ns && k < 32; k++) {
        char part[200];
        snprintf(part, sizeof part, "state.%.127s", st[k].name);
        const golden_tensor *gt = gfind(g, c->name, part);
        CHECK(gt && gt->numel == kiln_tensor_numel(st[k].tensor), "%s: no torch value for %s", c->name, st[k].name);
        if (gt && gt->numel == kiln_tensor_numel(st[k].tensor))
            CHECK(kiln_copy_from_host(st[k].tensor, gt->is_int ? (const void *)gt->i : (const void *)gt->f,
                                      4 * (size_t)gt->numel) == KILN_OK,
                  "%s: loading %s: %s", c->name, st[k].name, kiln_error_message(ctx));
    }
    kiln_module_train(m, c->training);
    kiln_tensor *x = golden_upload(ctx, gfind(g, c->name, "x"));
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *y = kiln_forward(m, x);
    CHECK(y != NULL, "%s: forward: %s", c->name, kiln_error_message(ctx));
    char what[300];
    double wy = INFINITY, wg = 0, wb = 0;
    if (y) {
        snprintf(what, sizeof what, "%s: output", c->name);
        wy = cmp_sub(what, y, gfind(g, c->name, "y"), 1, c->y_eps, c->y_eps, false);
        CHECK(kiln_backward_ex(y, golden_upload(ctx, gfind(g, c->name, "seed")), false) == KILN_OK, "%s: backward: %s",
              c->name, kiln_error_message(ctx));
        snprintf(what, sizeof what, "%s: grad of x", c->name);
        wg = cmp_sub(what, kiln_tensor_grad(x), gfind(g, c->name, "grad.x"), 1, c->g_eps, c->g_eps, false);
        int nparams = 0;
        for (int k = 0; k < ns; k++) {
            char part[200];
            if (st[k].is_buffer) {
                snprintf(part, sizeof part, "after.%.127s", st[k].name);
                snprintf(what, sizeof what, "%s: %.127s after the forward", c->name, st[k].name);
                const golden_tensor *ref = gfind(g, c->name, part);
                if (kiln_tensor_dtype(st[k].tensor) == KILN_I32) {
                    int32_t v = -1;
                    kiln_to_host(st[k].tensor, &v, sizeof v);
                    CHECK(ref && ref->i[0] == v, "%s: %d, torch %d", what, v, ref ? ref->i[0] : -1);
                } else
                    wb = fmax(wb, cmp_sub(what, st[k].tensor, ref, 1, BUF_EPS, BUF_EPS, false));
            } else {
                nparams++;
                snprintf(part, sizeof part, "grad.%.127s", st[k].name);
                snprintf(what, sizeof what, "%s: grad of %.127s", c->name, st[k].name);
                wg = fmax(wg, cmp_sub(what, kiln_tensor_grad(st[k].tensor), gfind(g, c->name, part), 1, c->g_eps,
                                      c->g_eps, false));
            }
        }
        CHECK(gcount(g, c->name, "grad") == nparams + 1, "%s: torch has %d gradients, kiln %d parameters + x", c->name,
              gcount(g, c->name, "grad"), nparams);
        CHECK(gcount(g, c->name, "after") == ns - nparams, "%s: torch has %d buffers", c->name,
              gcount(g, c->name, "after"));
    }
    if (verbose)
        fprintf(stderr, "  %-22s worst normalised error: output %.3g, gradients %.3g, buffers %.3g\n", c->name, wy, wg,
                wb);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_module_free(m);
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "%s: %lld tensors leaked", c->name,
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- networks -------------------------------------------------------------------------------- */

/* "<case>.sub.<kind>.<key>" against t sampled at "<case>.stride.<key>"; worst error. */
static double cmp_case_sub(const golden *g, const char *cname, const char *kind, const char *key, kiln_tensor *t,
                           double eps) {
    char part[200], what[300];
    snprintf(part, sizeof part, "stride.%.127s", key);
    const golden_tensor *s = gfind(g, cname, part);
    snprintf(part, sizeof part, "sub.%s.%.127s", kind, key);
    snprintf(what, sizeof what, "%s: %s of %s", cname, kind, key);
    CHECK(s != NULL, "%s: no golden stride", what);
    return s ? cmp_sub(what, t, gfind(g, cname, part), s->i[0], eps, eps, true) : INFINITY;
}

typedef enum { GRADS, BUFFERS, VALUES } state_part;

/* The F32 state entries of m against "<case>.sub.<kind>.*": the parameters' gradients
 * (GRADS, kind "grad"), the buffers' values (BUFFERS) or every entry's value (VALUES, kind
 * "after"). `extra`: golden entries of the kind that are not state (the input's gradient). */
static double cmp_state(const golden *g, const char *cname, kiln_module *m, state_part part, int extra, double eps) {
    const char *kind = part == GRADS ? "grad" : "after";
    int n = kiln_module_state(m, NULL, 0), checked = 0;
    kiln_named_tensor *st = malloc(sizeof *st * (size_t)n);
    kiln_module_state(m, st, n);
    double w = 0;
    for (int k = 0; k < n; k++) {
        if (kiln_tensor_dtype(st[k].tensor) != KILN_F32 || (part == GRADS && st[k].is_buffer) ||
            (part == BUFFERS && !st[k].is_buffer))
            continue;
        kiln_tensor *t = part == GRADS ? kiln_tensor_grad(st[k].tensor) : st[k].tensor;
        CHECK(t != NULL, "%s: %s has no gradient", cname, st[k].name);
        if (t) w = fmax(w, cmp_case_sub(g, cname, kind, st[k].name, t, eps));
        checked++;
    }
    free(st);
    char sec[16];
    snprintf(sec, sizeof sec, "sub.%s", kind);
    CHECK(gcount(g, cname, sec) == checked + extra, "%s: torch has %d %s entries, kiln compared %d + %d", cname,
          gcount(g, cname, sec), kind, checked, extra);
    return w;
}

static void test_resnet18(kiln_ctx *ctx, const golden *g, const char *cname, bool small, bool training, int64_t n,
                          int64_t hw) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_resnet_opts o = kiln_resnet_defaults();
    o.num_classes = 10;
    o.small_stem = small;
    kiln_module *m = kiln_resnet18(ctx, &o);
    CHECK(m != NULL, "%s: %s", cname, kiln_error_message(ctx));
    if (!m) {
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
        return;
    }
    check_names(g, cname, m);
    formula_fill(m, cname);
    kiln_module_train(m, training);
    kiln_tensor *x = formula_input(ctx, cname, 4, (int64_t[]){n, 3, hw, hw});
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *y = kiln_forward(m, x);
    CHECK(y != NULL, "%s: forward: %s", cname, kiln_error_message(ctx));
    double wy = INFINITY, wg = 0, wb = 0;
    if (y) {
        char what[300];
        snprintf(what, sizeof what, "%s: output", cname);
        wy = cmp_sub(what, y, gfind(g, cname, "y"), 1, NET_EPS, NET_EPS, true);
        CHECK(kiln_backward_ex(y, golden_upload(ctx, gfind(g, cname, "seed")), false) == KILN_OK, "%s: backward: %s",
              cname, kiln_error_message(ctx));
        wg = cmp_case_sub(g, cname, "grad", "x", kiln_tensor_grad(x), NET_EPS);
        wg = fmax(wg, cmp_state(g, cname, m, GRADS, 1, NET_EPS));
        /* running statistics after the forward (eval: unchanged, the formula's values) */
        wb = cmp_state(g, cname, m, BUFFERS, 0, NET_EPS);
    }
    if (verbose)
        fprintf(stderr, "  %-22s worst normalised error: output %.3g, gradients %.3g, buffers %.3g\n", cname, wy, wg,
                wb);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_module_free(m);
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "%s: %lld tensors leaked", cname,
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ResNet-20 (1 channel, 10 classes): one step of torch_ref.py's recipe. */
static void test_resnet20_step(kiln_ctx *ctx, const golden *g) {
    const char *cname = "resnet20_step";
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_resnet_opts o = kiln_resnet_cifar_defaults();
    o.in_channels = 1;
    kiln_module *m = kiln_resnet_cifar(ctx, 20, &o);
    int np = m ? kiln_module_parameters(m, NULL, 0) : 0;
    kiln_tensor **params = malloc(sizeof *params * (size_t)(np ? np : 1));
    kiln_module_parameters(m, params, np);
    kiln_sgd_opts so = kiln_sgd_defaults();
    so.lr = 0.1, so.momentum = 0.9, so.weight_decay = 5e-4;
    kiln_optim *opt = m ? kiln_sgd(ctx, params, np, &so) : NULL;
    free(params);
    CHECK(m && opt, "%s: %s", cname, kiln_error_message(ctx));
    if (!m || !opt) {
        kiln_optim_free(opt);
        kiln_module_free(m);
        kiln_error_clear(ctx);
        kiln_scope_end(ctx);
        return;
    }
    check_names(g, cname, m);
    formula_fill(m, cname);
    kiln_tensor *x = golden_upload(ctx, gfind(g, cname, "x"));
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *logits = kiln_forward(m, x);
    kiln_tensor *loss = kiln_cross_entropy(ctx, logits, golden_upload(ctx, gfind(g, cname, "target")), KILN_MEAN);
    CHECK(loss != NULL, "%s: forward: %s", cname, kiln_error_message(ctx));
    double wy = INFINITY, wg = 0, wa = 0, we = INFINITY;
    if (loss) {
        char what[300];
        snprintf(what, sizeof what, "%s: logits", cname);
        wy = cmp_sub(what, logits, gfind(g, cname, "y"), 1, NET_EPS, NET_EPS, true);
        snprintf(what, sizeof what, "%s: loss", cname);
        kiln_tensor *l1 = kiln_reshape(ctx, loss, 1, (int64_t[]){1});
        wy = fmax(wy, cmp_sub(what, l1, gfind(g, cname, "loss"), 1, NET_EPS, NET_EPS, true));
        CHECK(kiln_optim_zero_grad(opt) == KILN_OK && kiln_backward(loss) == KILN_OK, "%s: backward: %s", cname,
              kiln_error_message(ctx));
        snprintf(what, sizeof what, "%s: grad of x", cname);
        wg = cmp_sub(what, kiln_tensor_grad(x), gfind(g, cname, "grad.x"), 1, NET_EPS, NET_EPS, true);
        wg = fmax(wg, cmp_state(g, cname, m, GRADS, 0, NET_EPS));
        CHECK(kiln_optim_step(opt) == KILN_OK, "%s: step: %s", cname, kiln_error_message(ctx));
        /* parameters and running statistics after the step */
        wa = cmp_state(g, cname, m, VALUES, 0, NET_EPS);
        kiln_module_train(m, false);
        snprintf(what, sizeof what, "%s: eval logits after the step", cname);
        we = cmp_sub(what, kiln_forward(m, kiln_detach(ctx, x)), gfind(g, cname, "y_eval"), 1, NET_EPS, NET_EPS, true);
    }
    if (verbose)
        fprintf(stderr,
                "  %-22s worst normalised error: logits and loss %.3g, gradients %.3g, after the step %.3g, eval "
                "%.3g\n",
                cname, wy, wg, wa, we);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    kiln_optim_free(opt);
    kiln_module_free(m);
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "%s: %lld tensors leaked", cname,
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* ---- errors ------------------------------------------------------------------------------------- */

/* Expects failed with status st and a message holding every non-NULL string; clears. */
static void expect_err(kiln_ctx *ctx, bool failed, kiln_status st, const char *what, const char *w1, const char *w2,
                       const char *w3) {
    const char *msg = ctx ? kiln_error_message(ctx) : kiln_last_error();
    kiln_status got = ctx ? kiln_error_status(ctx) : KILN_OK;
    CHECK(failed, "%s: expected a failure", what);
    CHECK(!ctx || got == st, "%s: status %s, expected %s (%s)", what, kiln_status_name(got), kiln_status_name(st), msg);
    const char *ws[3] = {w1, w2, w3};
    for (int k = 0; k < 3; k++) CHECK(!ws[k] || strstr(msg, ws[k]), "%s: message lacks '%s': %s", what, ws[k], msg);
    if (ctx) kiln_error_clear(ctx);
}

static void test_bad_arguments(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    expect_err(ctx, !kiln_resnet_cifar(ctx, 21, NULL), KILN_ERR_INVALID_ARGUMENT, "depth 21", "kiln_resnet_cifar",
               "depth 21", "6n + 2");
    expect_err(ctx, !kiln_resnet_cifar(ctx, 2, NULL), KILN_ERR_INVALID_ARGUMENT, "depth 2", "depth 2", NULL, NULL);
    kiln_resnet_opts o = kiln_resnet_defaults();
    o.in_channels = 0;
    expect_err(ctx, !kiln_resnet18(ctx, &o), KILN_ERR_INVALID_ARGUMENT, "0 channels", "kiln_resnet18", "in_channels=0",
               NULL);
    o = kiln_resnet_defaults();
    o.num_classes = -1;
    expect_err(ctx, !kiln_resnet50(ctx, &o), KILN_ERR_INVALID_ARGUMENT, "-1 classes", "kiln_resnet50", "num_classes=-1",
               NULL);
    expect_err(ctx, !kiln_nn_basic_block(ctx, 4, 4, 0), KILN_ERR_INVALID_ARGUMENT, "stride 0", "kiln_nn_basic_block",
               "stride=0", NULL);
    expect_err(ctx, !kiln_nn_bottleneck(ctx, 4, 0, 1), KILN_ERR_INVALID_ARGUMENT, "width 0", "kiln_nn_bottleneck",
               "width=0", NULL);
    expect_err(NULL, !kiln_resnet34(NULL, NULL), KILN_OK, "NULL ctx", "kiln_resnet34", "NULL", NULL);
    expect_err(NULL, !kiln_nn_basic_block(NULL, 4, 4, 1), KILN_OK, "NULL ctx", "kiln_nn_basic_block", "NULL", NULL);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "bad arguments: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* A wrong number of input channels names the layer and its path from the model. */
static void test_bad_channels(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_resnet_opts o = kiln_resnet_cifar_defaults();
    o.in_channels = 1;
    kiln_module *m = kiln_resnet_cifar(ctx, 20, &o);
    CHECK(m != NULL, "resnet20: %s", kiln_error_message(ctx));
    if (!m) return;
    kiln_scope_begin(ctx);
    kiln_tensor *x3 = kiln_zeros(ctx, 4, (int64_t[]){2, 3, 8, 8});
    expect_err(ctx, !kiln_forward(m, x3), KILN_ERR_SHAPE, "3 channels into a 1-channel ResNet-20",
               "has 3 channels (dim 1), expected 1", "Conv2d(1, 16", " at conv1]");
    /* the first stage expects 16 channels: its path from the model is named */
    expect_err(ctx, !kiln_forward(kiln_module_find_child(m, "layer1"), x3), KILN_ERR_SHAPE, "3 channels into layer1",
               "expected 16", " at layer1.0.conv1]", NULL);
    expect_err(ctx, !kiln_forward(kiln_module_find_child(m, "layer2"), x3), KILN_ERR_SHAPE, "3 channels into layer2",
               "expected 16", " at layer2.0.conv1]", NULL);
    /* a block alone: the path is inside it */
    kiln_module *b = kiln_nn_bottleneck(ctx, 8, 2, 1);
    expect_err(ctx, !kiln_forward(b, x3), KILN_ERR_SHAPE, "3 channels into a Bottleneck", "expected 8", " at conv1]",
               NULL);
    kiln_module_free(b);
    /* and the model still works */
    kiln_tensor *y = kiln_forward(m, kiln_zeros(ctx, 4, (int64_t[]){2, 1, 8, 8}));
    CHECK(y && kiln_tensor_shape(y)[0] == 2 && kiln_tensor_shape(y)[1] == 10, "resnet20 after the errors: %s",
          kiln_error_message(ctx));
    CHECK_OK(ctx);
    kiln_scope_end(ctx);
    kiln_module_free(m);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "bad channels: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

/* Host copies of every state entry of m (4 bytes each element), concatenated. */
static unsigned char *snapshot(kiln_module *m, size_t *bytes) {
    int n = kiln_module_state(m, NULL, 0);
    kiln_named_tensor *st = malloc(sizeof *st * (size_t)n);
    kiln_module_state(m, st, n);
    size_t total = 0;
    for (int k = 0; k < n; k++) total += 4 * (size_t)kiln_tensor_numel(st[k].tensor);
    unsigned char *b = malloc(total), *p = b;
    for (int k = 0; k < n; k++) {
        size_t sz = 4 * (size_t)kiln_tensor_numel(st[k].tensor);
        kiln_to_host(st[k].tensor, p, sz);
        p += sz;
    }
    free(st);
    *bytes = total;
    return b;
}

/* A checkpoint of one tensor of another shape: the strict load fails naming the tensor and
 * both shapes and changes nothing; the right file then loads strictly. */
static void test_bad_checkpoint(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    char dir[] = "/tmp/kiln_test_resnet_XXXXXX", good[300], bad[300];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(good, sizeof good, "%s/good.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    kiln_manual_seed(ctx, 1);
    kiln_module *a = kiln_resnet_cifar(ctx, 20, NULL);
    kiln_manual_seed(ctx, 2);
    kiln_module *b = kiln_resnet_cifar(ctx, 20, NULL);
    CHECK(a && b, "resnet20: %s", kiln_error_message(ctx));
    if (!a || !b) {
        kiln_module_free(a), kiln_module_free(b);
        rmdir(dir);
        return;
    }
    CHECK(kiln_module_save(a, good, "test_resnet") == KILN_OK, "save: %s", kiln_error_message(ctx));
    /* the same state with layer2.0.conv1.weight [32, 16, 3, 3] written as [32, 16, 1, 1] */
    int n = kiln_module_state(a, NULL, 0);
    kiln_named_tensor *st = malloc(sizeof *st * (size_t)n);
    kiln_module_state(a, st, n);
    kiln_tensor *wrong = kiln_zeros(ctx, 4, (int64_t[]){32, 16, 1, 1});
    int replaced = 0;
    for (int k = 0; k < n; k++)
        if (strcmp(st[k].name, "layer2.0.conv1.weight") == 0) st[k].tensor = wrong, replaced++;
    CHECK(replaced == 1, "layer2.0.conv1.weight is not in the state");
    CHECK(kiln_safetensors_save(ctx, bad, n, st, 0, NULL) == KILN_OK, "save: %s", kiln_error_message(ctx));
    free(st);
    kiln_tensor_free(wrong);

    size_t nb0, nb1;
    unsigned char *s0 = snapshot(b, &nb0);
    kiln_load_report r;
    expect_err(ctx, kiln_module_load(b, bad, true, &r) != KILN_OK, KILN_ERR_INVALID_ARGUMENT,
               "a tensor of the wrong shape", "layer2.0.conv1.weight", "[32, 16, 3, 3]", "[32, 16, 1, 1]");
    CHECK(r.loaded == 0 && r.mismatched == 1 && r.missing == 0 && r.unexpected == 0,
          "report: loaded %d, mismatched %d, missing %d, unexpected %d", r.loaded, r.mismatched, r.missing,
          r.unexpected);
    unsigned char *s1 = snapshot(b, &nb1);
    CHECK(nb0 == nb1 && memcmp(s0, s1, nb0) == 0, "the failed load changed the model");
    free(s1);
    /* the right file loads strictly and makes b equal to a (so the comparison above can fail) */
    CHECK(kiln_module_load(b, good, true, &r) == KILN_OK && r.loaded == n, "strict load: %s (%d of %d)",
          kiln_error_message(ctx), r.loaded, n);
    size_t na;
    unsigned char *sa = snapshot(a, &na);
    s1 = snapshot(b, &nb1);
    CHECK(na == nb1 && memcmp(sa, s1, na) == 0, "after the strict load b differs from a");
    CHECK(nb0 == nb1 && memcmp(s0, s1, nb0) != 0, "a and b were equal from the start");
    free(sa), free(s0), free(s1);
    kiln_module_free(a);
    kiln_module_free(b);
    remove(good), remove(bad), rmdir(dir);
    CHECK_OK(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "bad checkpoint: %lld tensors leaked",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
}

static void run(kiln_ctx *ctx) {
    test_bad_arguments(ctx);
    test_bad_channels(ctx);
    test_bad_checkpoint(ctx);
    golden g;
    if (!golden_open(&g, "resnet")) return;
    test_models(ctx, &g);
    for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++) test_block(ctx, &g, &blocks[k]);
    test_resnet18(ctx, &g, "r18_small_eval", true, false, 2, 32);
    test_resnet18(ctx, &g, "r18_imagenet", false, true, 2, 64);
    test_resnet18(ctx, &g, "r18_imagenet_eval", false, false, 1, 32);
    test_resnet20_step(ctx, &g);
    golden_close(&g);
}

/* ---- interop with PyTorch (tests/interop.sh) --------------------------------------------------- */

/* --interop-load PATH: PATH is a torch ResNet-18 state dict (gen_resnet.py export); it must
 * load strictly into kiln_resnet18, whose eval output on PATH.y.safetensors's x must be
 * torch's y there. --interop-save PATH: a kiln ResNet-18 after one training step (so the
 * running statistics are not the defaults), saved to PATH, with x and its eval output y in
 * PATH.y.safetensors for gen_resnet.py check. Prints what it did; exit status 0 or 1. */
static int interop(const char *mode, const char *path) {
    kiln_ctx *ctx;
    if (kiln_open(&ctx, NULL) != KILN_OK) {
        fprintf(stderr, "test_resnet: %s\n", kiln_last_error());
        return 1;
    }
    int rc = 1;
    char ypath[1100];
    snprintf(ypath, sizeof ypath, "%s.y.safetensors", path);
    kiln_manual_seed(ctx, 5);
    kiln_module *m = kiln_resnet18(ctx, NULL);
    kiln_safetensors *f = NULL;
    kiln_tensor *x = NULL, *ref = NULL;
    if (!m) goto done;
    if (strcmp(mode, "--interop-load") == 0) {
        kiln_load_report r;
        if (kiln_module_load(m, path, true, &r) != KILN_OK) goto done;
        printf("kiln loaded torch's ResNet-18 strictly: %d tensors\n", r.loaded);
        if (!(f = kiln_safetensors_open(ctx, ypath))) goto done;
        x = kiln_safetensors_tensor(f, kiln_safetensors_find(f, "x"));
        ref = kiln_safetensors_tensor(f, kiln_safetensors_find(f, "y"));
        kiln_module_train(m, false);
        kiln_tensor *y = kiln_forward(m, x);
        if (!y || !ref) goto done;
        int64_t n = kiln_tensor_numel(ref);
        float *a = h_read(y), *b = h_read(ref);
        double d = 0, mx = 0;
        for (int64_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), mx = fmax(mx, fabs((double)b[i]));
        free(a), free(b);
        kiln_tensor_free(y);
        /* float32 on both sides, eval mode: rounding only */
        printf("max |kiln - torch| / max |torch| = %.3g\n", d / mx);
        rc = d <= 1e-5 * mx ? 0 : 1;
    } else {
        int np = kiln_module_parameters(m, NULL, 0);
        kiln_tensor **params = malloc(sizeof *params * (size_t)np);
        kiln_module_parameters(m, params, np);
        kiln_sgd_opts so = kiln_sgd_defaults();
        so.lr = 0.01, so.momentum = 0.9;
        kiln_optim *opt = kiln_sgd(ctx, params, np, &so);
        free(params);
        kiln_scope_begin(ctx);
        kiln_tensor *xt = kiln_rand_normal(ctx, 0, 1, 4, (int64_t[]){4, 3, 64, 64});
        int32_t labels[4] = {1, 10, 100, 999};
        kiln_tensor *loss = kiln_cross_entropy(ctx, kiln_forward(m, xt),
                                               kiln_from_host(ctx, labels, KILN_I32, 1, (int64_t[]){4}), KILN_MEAN);
        kiln_status s = kiln_optim_zero_grad(opt);
        if (s == KILN_OK) s = kiln_backward(loss);
        if (s == KILN_OK) s = kiln_optim_step(opt);
        kiln_scope_end(ctx);
        kiln_optim_free(opt);
        if (s != KILN_OK || kiln_module_save(m, path, "tests/test_resnet --interop-save") != KILN_OK) goto done;
        kiln_module_train(m, false);
        x = kiln_rand_normal(ctx, 0, 1, 4, (int64_t[]){2, 3, 64, 64});
        ref = kiln_forward(m, x);
        kiln_named_tensor xy[2] = {{"x", x, false}, {"y", ref, false}};
        if (!ref || kiln_safetensors_save(ctx, ypath, 2, xy, 0, NULL) != KILN_OK) goto done;
        printf("kiln saved a ResNet-18 after one training step to %s\n", path);
        rc = 0;
    }
done:
    if (rc && kiln_error_status(ctx) != KILN_OK) fprintf(stderr, "test_resnet %s: %s\n", mode, kiln_error_message(ctx));
    kiln_tensor_free(x);
    kiln_tensor_free(ref);
    kiln_safetensors_close(f);
    kiln_module_free(m);
    kiln_close(ctx);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 3 && (strcmp(argv[1], "--interop-load") == 0 || strcmp(argv[1], "--interop-save") == 0))
        return interop(argv[1], argv[2]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--interop-load PATH | --interop-save PATH]\n", argv[0]);
        return 2;
    }
    const char *v = getenv("KILN_TEST_VERBOSE");
    verbose = v && *v && *v != '0';
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
