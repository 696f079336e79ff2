/* tests/test_sweep.c - every kernel of cl_kernels/ at small, odd shapes, forward and
 * backward, on contiguous and strided inputs: the workload memory checkers run
 * (scripts/test --oclgrind runs it under Oclgrind, where the op tests' large shapes take
 * hours). Correctness is the op tests' business; this checks that every op succeeds,
 * that outputs and gradients are finite, and that a scope leaves no tensor behind. */
#include "harness.h"

static kiln_ctx *C;

/* A [d0, d1, ...] tensor of values in [lo, hi) (deterministic), optionally a leaf that
 * requires grad. */
static kiln_tensor *mk(float lo, float hi, bool grad, int ndim, const int64_t *shape) {
    int64_t n = h_numel(ndim, shape);
    float *h = malloc(sizeof(float) * (size_t)(n ? n : 1));
    h_fill(h, n, lo, hi);
    kiln_tensor *t = kiln_from_host(C, h, KILN_F32, ndim, shape);
    free(h);
    if (grad && t) kiln_set_requires_grad(t, true);
    return t;
}
#define MK(lo, hi, grad, ...) \
    mk(lo, hi, grad, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})

static kiln_tensor *mk_i32(const int32_t *v, int ndim, const int64_t *shape) {
    return kiln_from_host(C, v, KILN_I32, ndim, shape);
}

/* The output must exist and be finite (for F32). */
static void finite(const char *what, kiln_tensor *t) {
    CHECK(t != NULL, "%s: %s", what, kiln_error_message(C));
    if (!t) {
        kiln_error_clear(C);
        return;
    }
    if (kiln_tensor_dtype(t) != KILN_F32) return;
    float *h = h_read(t);
    int64_t n = kiln_tensor_numel(t), bad = 0;
    for (int64_t i = 0; i < n; i++) bad += !isfinite(h[i]);
    CHECK(bad == 0, "%s: %lld non-finite values", what, (long long)bad);
    free(h);
}

/* Backward from sum(out * weights) so every output element gets a distinct gradient,
 * then the gradients of the leaves must exist and be finite. */
static void back(const char *what, kiln_tensor *out, int nleaves, kiln_tensor *const *leaves) {
    finite(what, out);
    if (!out) return;
    kiln_tensor *w = mk(0.5f, 1.5f, false, kiln_tensor_ndim(out), kiln_tensor_shape(out));
    kiln_tensor *l = kiln_sum(C, kiln_mul(C, out, w), 0, NULL, false);
    CHECK(l && kiln_backward(l) == KILN_OK, "%s backward: %s", what, kiln_error_message(C));
    for (int i = 0; i < nleaves; i++) {
        char w2[160];
        snprintf(w2, sizeof w2, "%s: gradient of input %d", what, i);
        finite(w2, kiln_grad(leaves[i]));
        kiln_clear_grad(leaves[i]);
    }
    kiln_error_clear(C);
}

#define BACK(what, out, ...) \
    back(what, out, (int)(sizeof((kiln_tensor *[]){__VA_ARGS__}) / sizeof(kiln_tensor *)), (kiln_tensor *[]){__VA_ARGS__})

/* ---- copy.cl -------------------------------------------------------------------------- */
static void sweep_copy(void) {
    finite("arange", kiln_arange(C, 0, 13, 1));
    kiln_tensor *z = kiln_zeros(C, 2, (int64_t[]){5, 7}); /* fill_contig */
    kiln_tensor *tv = kiln_transpose(C, z, 0, 1);
    CHECK(kiln_fill(tv, 2.0f) == KILN_OK, "fill of a strided view"); /* fill_strided */
    finite("contiguous of a transpose", kiln_contiguous(C, tv));    /* copy_strided */
    kiln_tensor *src = MK(-1, 1, false, 7, 5);
    CHECK(kiln_copy(tv, src) == KILN_OK, "copy into a strided view: %s", kiln_error_message(C)); /* copy_view */
    finite("after copy_view", z);
    kiln_tensor *sl = kiln_slice(C, z, 1, 1, 7, 2);
    finite("clone of a slice", kiln_clone(C, sl));
}

/* ---- elementwise.cl ------------------------------------------------------------------- */
static void sweep_elementwise(void) {
    typedef kiln_tensor *(*bin)(kiln_ctx *, kiln_tensor *, kiln_tensor *);
    static const struct {
        const char *name;
        bin f;
    } bins[] = {{"add", kiln_add}, {"sub", kiln_sub}, {"mul", kiln_mul}, {"div", kiln_div}, {"pow", kiln_pow},
                {"minimum", kiln_minimum}, {"maximum", kiln_maximum}, {"eq", kiln_eq}, {"ne", kiln_ne},
                {"lt", kiln_lt}, {"le", kiln_le}, {"gt", kiln_gt}, {"ge", kiln_ge}};
    kiln_tensor *a = MK(0.5f, 2, true, 3, 5);
    kiln_tensor *b = MK(0.5f, 2, true, 3, 5);
    kiln_tensor *r = MK(0.5f, 2, true, 5); /* broadcast: the strided kernels */
    for (size_t k = 0; k < sizeof bins / sizeof bins[0]; k++) {
        char w[64];
        bool diff = k < 7;
        snprintf(w, sizeof w, "%s contig", bins[k].name);
        kiln_tensor *o = bins[k].f(C, a, b);
        if (diff) BACK(w, o, a, b);
        else finite(w, o);
        snprintf(w, sizeof w, "%s broadcast", bins[k].name);
        o = bins[k].f(C, a, r);
        if (diff) BACK(w, o, a, r);
        else finite(w, o);
    }
    typedef kiln_tensor *(*un)(kiln_ctx *, kiln_tensor *);
    static const struct {
        const char *name;
        un f;
    } uns[] = {{"neg", kiln_neg}, {"exp", kiln_exp}, {"log", kiln_log}, {"sqrt", kiln_sqrt}, {"abs", kiln_abs}};
    /* views are made afresh for each op: a backward frees the graph it ran through */
#define AT kiln_transpose(C, a, 0, 1)
    for (size_t k = 0; k < sizeof uns / sizeof uns[0]; k++) {
        BACK(uns[k].name, uns[k].f(C, a), a);
        BACK(uns[k].name, uns[k].f(C, AT), a);
    }
    typedef kiln_tensor *(*sc)(kiln_ctx *, kiln_tensor *, float);
    static const struct {
        const char *name;
        sc f;
    } scs[] = {{"add_scalar", kiln_add_scalar}, {"mul_scalar", kiln_mul_scalar}, {"pow_scalar", kiln_pow_scalar},
               {"minimum_scalar", kiln_minimum_scalar}, {"maximum_scalar", kiln_maximum_scalar}};
    for (size_t k = 0; k < sizeof scs / sizeof scs[0]; k++) {
        BACK(scs[k].name, scs[k].f(C, a, 1.25f), a);
        BACK(scs[k].name, scs[k].f(C, AT, 1.25f), a);
    }
    kiln_tensor *cond = kiln_gt(C, a, b);
    BACK("where contig", kiln_where(C, cond, a, b), a, b);
    BACK("where broadcast", kiln_where(C, kiln_gt(C, a, r), r, kiln_transpose(C, AT, 0, 1)), r, a);
#undef AT
}

/* ---- reduce.cl (both kernel layouts) ------------------------------------------------- */
static void sweep_reduce(void) {
    for (int layout = 1; layout <= 2; layout++) {
        kiln__reduce_layout(layout);
        kiln_tensor *x = MK(-2, 2, true, 3, 7, 5);
#define XT kiln_permute(C, x, (int[]){2, 0, 1})
        for (int ax = 0; ax < 3; ax++) {
            BACK("sum", kiln_sum(C, x, 1, (int[]){ax}, false), x);
            BACK("mean", kiln_mean(C, XT, 1, (int[]){ax}, true), x);
            BACK("max", kiln_max(C, x, 1, (int[]){ax}, false), x);
            BACK("min", kiln_min(C, XT, 1, (int[]){ax}, false), x);
            finite("argmax", kiln_argmax(C, x, ax, false));
            finite("argmax strided", kiln_argmax(C, XT, ax, true));
        }
        BACK("sum all", kiln_sum(C, x, 0, NULL, false), x);
        BACK("sum two axes", kiln_sum(C, x, 2, (int[]){0, 2}, false), x);
        BACK("max all", kiln_max(C, XT, 0, NULL, false), x);
        kiln_tensor *lg = MK(-2, 2, true, 3, 2500);
        BACK("max of long rows", kiln_max(C, lg, 1, (int[]){1}, false), lg);
        BACK("min over an outer axis", kiln_min(C, lg, 1, (int[]){0}, true), lg);
        finite("argmax of long rows", kiln_argmax(C, lg, 1, false));
        finite("argmax over an outer axis", kiln_argmax(C, lg, 0, false));
#undef XT
    }
    kiln__reduce_layout(0);
}

/* ---- matmul (CLBlast) ------------------------------------------------------------------ */
static void sweep_matmul(void) {
    kiln_tensor *a = MK(-1, 1, true, 3, 4);
    kiln_tensor *b = MK(-1, 1, true, 4, 5);
    BACK("matmul", kiln_matmul(C, a, b), a, b);
    BACK("matmul transposed views", kiln_matmul(C, kiln_transpose(C, b, 0, 1), kiln_transpose(C, a, 0, 1)), a, b);
    kiln_tensor *ba = MK(-1, 1, true, 2, 3, 4);
    kiln_tensor *bb = MK(-1, 1, true, 2, 4, 5);
    BACK("batched matmul", kiln_matmul(C, ba, bb), ba, bb);
    BACK("broadcast matmul", kiln_matmul(C, ba, b), ba, b);
}

/* ---- random.cl ------------------------------------------------------------------------- */
static void sweep_random(void) {
    kiln_manual_seed(C, 5);
    finite("rand_uniform", kiln_rand_uniform(C, -1, 1, 2, (int64_t[]){3, 7}));
    finite("rand_normal", kiln_rand_normal(C, 0, 1, 1, (int64_t[]){13}));
}

/* ---- activation.cl --------------------------------------------------------------------- */
static void sweep_activation(void) {
    kiln_tensor *x = MK(-3, 3, true, 3, 6);
    for (int s = 0; s < 2; s++) {
#define in (s ? kiln_transpose(C, x, 0, 1) : x)
        BACK("relu", kiln_relu(C, in), x);
        BACK("leaky_relu", kiln_leaky_relu(C, in, 0.1f), x);
        BACK("elu", kiln_elu(C, in, 1.0f), x);
        BACK("gelu", kiln_gelu(C, in, false), x);
        BACK("gelu tanh", kiln_gelu(C, in, true), x);
        BACK("sigmoid", kiln_sigmoid(C, in), x);
        BACK("tanh", kiln_tanh(C, in), x);
        BACK("softplus", kiln_softplus(C, in, 1.0f, 20.0f), x);
        for (int d = 0; d < 2; d++) {
            BACK("softmax", kiln_softmax(C, in, d), x);
            BACK("log_softmax", kiln_log_softmax(C, in, d), x);
        }
#undef in
    }
    kiln_tensor *y = MK(-3, 3, true, 2, 3, 5);
    BACK("softmax middle dim", kiln_softmax(C, y, 1), y);
    kiln_tensor *z = MK(-3, 3, true, 4, 9, 6);
    for (int d = 0; d < 2; d++) {
        BACK("softmax over an outer dim", kiln_softmax(C, z, d), z);
        BACK("log_softmax over an outer dim", kiln_log_softmax(C, z, d), z);
    }
    BACK("sigmoid strided", kiln_sigmoid(C, kiln_transpose(C, z, 0, 2)), z);
    BACK("tanh strided", kiln_tanh(C, kiln_transpose(C, z, 0, 2)), z);
    BACK("log_softmax middle dim", kiln_log_softmax(C, y, 1), y);
}

/* ---- shape.cl -------------------------------------------------------------------------- */
static void sweep_shape(void) {
    kiln_tensor *a = MK(-1, 1, true, 2, 3, 4);
    kiln_tensor *b = MK(-1, 1, true, 2, 2, 4);
    BACK("concat dim 1", kiln_concat(C, 2, (kiln_tensor *[]){a, b}, 1), a, b);
    BACK("concat dim 0", kiln_concat(C, 2, (kiln_tensor *[]){a, a}, 0), a);
    BACK("concat last dim of views", kiln_concat(C, 2, (kiln_tensor *[]){kiln_transpose(C, a, 1, 2), kiln_transpose(C, a, 1, 2)}, 2), a);
    BACK("stack", kiln_stack(C, 2, (kiln_tensor *[]){a, a}, 1), a);
    BACK("pad", kiln_pad(C, a, 4, (int64_t[]){1, 2, 0, 1}, 0.5f), a);
    BACK("pad crop", kiln_pad(C, a, 2, (int64_t[]){-1, 1}, 0.0f), a);
    BACK("pad strided", kiln_pad(C, kiln_transpose(C, a, 0, 2), 2, (int64_t[]){1, 1}, 0.0f), a);
    BACK("flatten", kiln_flatten(C, a, 1, 2), a);
    BACK("pad last dim", kiln_pad(C, a, 2, (int64_t[]){2, 3}, 1.0f), a);
    BACK("concat last dim", kiln_concat(C, 3, (kiln_tensor *[]){a, a, a}, 2), a);
    kiln_tensor *wide = MK(-1, 1, true, 3, 1000);
    BACK("concat of wide rows", kiln_concat(C, 2, (kiln_tensor *[]){wide, wide}, 1), wide);
    BACK("pad of wide rows", kiln_pad(C, wide, 2, (int64_t[]){1, 1}, 0.0f), wide);
    int32_t idx[5] = {2, 0, 1, 2, 2};
    kiln_tensor *ix = mk_i32(idx, 1, (int64_t[]){5});
    BACK("index_select", kiln_index_select(C, a, 1, ix), a);
    BACK("index_select dim 2", kiln_index_select(C, a, 2, ix), a);
    int32_t gi[2 * 3 * 2] = {0, 3, 1, 1, 2, 0, 3, 3, 0, 1, 2, 2};
    kiln_tensor *g = mk_i32(gi, 3, (int64_t[]){2, 3, 2});
    BACK("gather", kiln_gather(C, a, 2, g), a);
}

/* ---- conv.cl --------------------------------------------------------------------------- */
static void sweep_conv(void) {
    kiln_tensor *x = MK(-1, 1, true, 2, 4, 5, 6);
    kiln_tensor *w = MK(-0.5f, 0.5f, true, 6, 2, 3, 3);
    kiln_tensor *bias = MK(-0.5f, 0.5f, true, 6);
    kiln_conv2d_params p = {.stride = {2, 1}, .padding = {1, 2}, .dilation = {1, 1}, .groups = 2};
    BACK("conv2d groups stride pad", kiln_conv2d(C, x, w, bias, &p), x, w, bias);
    kiln_conv2d_params q = {.stride = {1, 1}, .padding = {0, 1}, .dilation = {2, 1}, .groups = 1};
    kiln_tensor *w1 = MK(-0.5f, 0.5f, true, 3, 4, 2, 3);
    BACK("conv2d dilation", kiln_conv2d(C, kiln_transpose(C, x, 2, 3), w1, NULL, &q), x, w1);
    kiln_tensor *wt = MK(-0.5f, 0.5f, true, 4, 3, 3, 2);
    kiln_tensor *bt = MK(-0.5f, 0.5f, true, 6);
    kiln_conv2d_params t = {.stride = {2, 2}, .padding = {1, 0}, .dilation = {1, 1}, .groups = 2,
                            .output_padding = {1, 0}};
    BACK("conv_transpose2d", kiln_conv_transpose2d(C, x, wt, bt, &t), x, wt, bt);
    kiln_tensor *xb = MK(-1, 1, true, 6, 2, 20, 20);
    kiln_tensor *wb = MK(-0.5f, 0.5f, true, 3, 2, 1, 1);
    kiln_tensor *bb = MK(-0.5f, 0.5f, true, 3);
    BACK("conv2d 1x1 over many positions", kiln_conv2d(C, xb, wb, bb, NULL), xb, wb, bb);
}

/* ---- pool.cl --------------------------------------------------------------------------- */
static void sweep_pool(void) {
    kiln_tensor *x = MK(-1, 1, true, 2, 3, 7, 6);
    kiln_tensor *idx = NULL;
    kiln_pool2d_params mp = {.kernel = {3, 2}, .stride = {2, 2}, .padding = {1, 1}, .ceil_mode = true};
    BACK("max_pool2d", kiln_max_pool2d(C, x, &mp, &idx), x);
    finite("max_pool2d indices", idx);
    kiln_pool2d_params mp2 = {.kernel = {2, 2}, .dilation = {2, 1}};
    BACK("max_pool2d dilation strided input", kiln_max_pool2d(C, kiln_transpose(C, x, 2, 3), &mp2, NULL), x);
    kiln_pool2d_params ap = {.kernel = {3, 3}, .stride = {2, 1}, .padding = {1, 1}, .count_include_pad = false};
    BACK("avg_pool2d", kiln_avg_pool2d(C, x, &ap), x);
    kiln_pool2d_params ap2 = {.kernel = {2, 3}, .ceil_mode = true, .count_include_pad = true};
    BACK("avg_pool2d ceil", kiln_avg_pool2d(C, x, &ap2), x);
    BACK("global_avg_pool2d", kiln_global_avg_pool2d(C, x), x);
    finite("max_pool2d without grad", kiln_max_pool2d(C, kiln_detach(C, x), &mp, NULL));
    BACK("upsample nearest", kiln_upsample(C, x, 11, 4, KILN_UPSAMPLE_NEAREST, false), x);
    BACK("upsample bilinear", kiln_upsample(C, x, 9, 13, KILN_UPSAMPLE_BILINEAR, false), x);
    BACK("upsample bilinear aligned", kiln_upsample(C, x, 5, 8, KILN_UPSAMPLE_BILINEAR, true), x);
}

/* ---- norm.cl --------------------------------------------------------------------------- */
static void sweep_norm(void) {
    kiln_tensor *x = MK(-1, 1, true, 3, 4, 2, 5);
    kiln_tensor *w = MK(0.5f, 1.5f, true, 4);
    kiln_tensor *b = MK(-0.5f, 0.5f, true, 4);
    kiln_tensor *rm = kiln_zeros(C, 1, (int64_t[]){4});
    kiln_tensor *rv = kiln_ones(C, 1, (int64_t[]){4});
    BACK("batch_norm train 4-d", kiln_batch_norm(C, x, rm, rv, w, b, true, 0.1f, 1e-5f), x, w, b);
    BACK("batch_norm eval 4-d", kiln_batch_norm(C, x, rm, rv, w, b, false, 0.1f, 1e-5f), x, w, b);
    kiln_tensor *x2 = MK(-1, 1, true, 6, 4);
    BACK("batch_norm train 2-d", kiln_batch_norm(C, x2, rm, rv, w, b, true, 0.1f, 1e-5f), x2, w, b);
    BACK("batch_norm eval 2-d", kiln_batch_norm(C, x2, rm, rv, NULL, NULL, false, 0.1f, 1e-5f), x2);
    kiln_tensor *lw = MK(0.5f, 1.5f, true, 2, 5);
    kiln_tensor *lb = MK(-0.5f, 0.5f, true, 2, 5);
    BACK("layer_norm", kiln_layer_norm(C, x, 2, lw, lb, 1e-5f), x, lw, lb);
    BACK("layer_norm strided", kiln_layer_norm(C, kiln_transpose(C, x2, 0, 1), 1, NULL, NULL, 1e-5f), x2);
    kiln_tensor *x3 = MK(-1, 1, true, 300, 3);
    kiln_tensor *w3 = MK(0.5f, 1.5f, true, 3);
    kiln_tensor *rm3 = kiln_zeros(C, 1, (int64_t[]){3});
    kiln_tensor *rv3 = kiln_ones(C, 1, (int64_t[]){3});
    BACK("batch_norm train tall 2-d", kiln_batch_norm(C, x3, rm3, rv3, w3, NULL, true, 0.1f, 1e-5f), x3, w3);
    BACK("batch_norm eval tall 2-d", kiln_batch_norm(C, x3, rm3, rv3, w3, NULL, false, 0.1f, 1e-5f), x3, w3);
    kiln_tensor *x4 = MK(-1, 1, true, 5, 700);
    BACK("layer_norm long rows", kiln_layer_norm(C, x4, 1, NULL, NULL, 1e-5f), x4);
    kiln_manual_seed(C, 9);
    BACK("dropout", kiln_dropout(C, x, 0.3f, true), x);
    kiln_tensor *emb = MK(-1, 1, true, 7, 3);
    int32_t ids[6] = {6, 0, 3, 3, 1, 6};
    BACK("embedding", kiln_embedding(C, emb, mk_i32(ids, 2, (int64_t[]){2, 3})), emb);
}

/* ---- loss.cl --------------------------------------------------------------------------- */
static void sweep_loss(void) {
    kiln_tensor *p = MK(-1, 1, true, 3, 5);
    kiln_tensor *t = MK(-1, 1, false, 3, 5);
    for (int r = 0; r < 3; r++) {
        BACK("mse", kiln_mse_loss(C, p, t, (kiln_reduction)r), p);
        BACK("l1", kiln_l1_loss(C, kiln_transpose(C, p, 0, 1), kiln_transpose(C, t, 0, 1), (kiln_reduction)r), p);
        BACK("smooth_l1", kiln_smooth_l1_loss(C, p, t, (kiln_reduction)r, 0.5f), p);
        BACK("lsgan", kiln_lsgan_loss(C, p, 1.0f, (kiln_reduction)r), p);
        /* the other layout of each */
#define PT kiln_transpose(C, p, 0, 1)
#define TT kiln_transpose(C, t, 0, 1)
        BACK("mse strided", kiln_mse_loss(C, PT, TT, (kiln_reduction)r), p);
        BACK("l1 contig", kiln_l1_loss(C, p, t, (kiln_reduction)r), p);
        BACK("smooth_l1 strided", kiln_smooth_l1_loss(C, PT, TT, (kiln_reduction)r, 0.5f), p);
        BACK("lsgan strided", kiln_lsgan_loss(C, PT, 0.0f, (kiln_reduction)r), p);
#undef PT
#undef TT
    }
    kiln_tensor *big = MK(-1, 1, true, 70, 300); /* long enough for multi-part sums */
    kiln_tensor *bigt = MK(-1, 1, false, 70, 300);
    BACK("mse over 21000 elements", kiln_mse_loss(C, big, bigt, KILN_MEAN), big);
    BACK("l1 over 21000 elements", kiln_l1_loss(C, kiln_transpose(C, big, 0, 1), kiln_transpose(C, bigt, 0, 1), KILN_SUM), big);
    kiln_tensor *logits = MK(-2, 2, true, 4, 5);
    int32_t lab[4] = {0, 4, 2, 1}, labi[4] = {0, -100, 2, 4};
    kiln_tensor *y = mk_i32(lab, 1, (int64_t[]){4});
    kiln_tensor *yi = mk_i32(labi, 1, (int64_t[]){4});
    kiln_tensor *cw = MK(0.5f, 1.5f, false, 5);
    for (int r = 0; r < 3; r++) {
        BACK("cross_entropy", kiln_cross_entropy(C, logits, y, (kiln_reduction)r), logits);
        BACK("cross_entropy_ex", kiln_cross_entropy_ex(C, logits, yi, cw, -100, 0.1f, (kiln_reduction)r), logits);
        BACK("nll", kiln_nll_loss(C, kiln_log_softmax(C, logits, 1), yi, cw, -100, (kiln_reduction)r), logits);
    }
    kiln_tensor *l3 = MK(-2, 2, true, 2, 5, 3);
    int32_t lab3[6] = {0, 1, 4, 3, 2, 2};
    BACK("cross_entropy [N, C, d]", kiln_cross_entropy(C, l3, mk_i32(lab3, 2, (int64_t[]){2, 3}), KILN_MEAN), l3);
    kiln_tensor *prob = MK(0.05f, 0.95f, true, 3, 5);
    kiln_tensor *tgt = MK(0, 1, false, 3, 5);
    kiln_tensor *bw = MK(0.5f, 1.5f, false, 3, 5);
    kiln_tensor *pw = MK(0.5f, 2, false, 5);
    for (int r = 0; r < 3; r++) {
        BACK("bce", kiln_bce_loss(C, prob, tgt, bw, (kiln_reduction)r), prob);
        BACK("bce_with_logits", kiln_bce_with_logits(C, p, tgt, bw, pw, (kiln_reduction)r), p);
        BACK("bce strided", kiln_bce_loss(C, kiln_transpose(C, prob, 0, 1), kiln_transpose(C, tgt, 0, 1), NULL,
                                          (kiln_reduction)r), prob);
        BACK("bce_with_logits contig", kiln_bce_with_logits(C, p, tgt, NULL, NULL, (kiln_reduction)r), p);
    }
    BACK("l1_penalty", kiln_l1_penalty(C, 2, (kiln_tensor *[]){p, logits}), p, logits);
    BACK("l2_penalty", kiln_l2_penalty(C, 2, (kiln_tensor *[]){p, logits}), p, logits);
    BACK("l1_penalty strided", kiln_l1_penalty(C, 1, (kiln_tensor *[]){kiln_transpose(C, p, 0, 1)}), p);
    BACK("l2_penalty strided", kiln_l2_penalty(C, 1, (kiln_tensor *[]){kiln_transpose(C, p, 0, 1)}), p);
}

/* ---- optim.cl -------------------------------------------------------------------------- */
static void sweep_optim(void) {
    for (int kind = 0; kind < 6; kind++) {
        kiln_tensor *w = MK(-1, 1, true, 3, 5);
        kiln_tensor *v = MK(-1, 1, true, 7);
        kiln_tensor *ps[2] = {w, v};
        kiln_optim *o = NULL;
        kiln_sgd_opts so = kiln_sgd_defaults(0.1);
        kiln_rmsprop_opts ro = kiln_rmsprop_defaults();
        kiln_adam_opts ao = kind == 5 ? kiln_adamw_defaults() : kiln_adam_defaults();
        switch (kind) {
        case 0: o = kiln_sgd(C, ps, 2, &so); break;
        case 1: so.momentum = 0.9, so.nesterov = true, so.weight_decay = 0.01; o = kiln_sgd(C, ps, 2, &so); break;
        case 2: ro.momentum = 0.5, ro.centered = true; o = kiln_rmsprop(C, ps, 2, &ro); break;
        case 3: o = kiln_adam(C, ps, 2, &ao); break;
        case 4: ao.amsgrad = true, ao.weight_decay = 0.1; o = kiln_adam(C, ps, 2, &ao); break;
        default: o = kiln_adamw(C, ps, 2, &ao); break;
        }
        CHECK(o != NULL, "optimizer %d: %s", kind, kiln_error_message(C));
        for (int step = 0; step < 2 && o; step++) {
            kiln_scope_begin(C);
            kiln_tensor *l = kiln_add(C, kiln_sum(C, kiln_mul(C, w, w), 0, NULL, false),
                                      kiln_sum(C, kiln_exp(C, v), 0, NULL, false));
            CHECK(kiln_optim_zero_grad(o) == KILN_OK && kiln_backward(l) == KILN_OK, "backward: %s",
                  kiln_error_message(C));
            if (step == 0) {
                float norm = kiln_clip_grad_norm(C, 2, ps, 1.0, 2.0);
                CHECK(isfinite(norm), "clip_grad_norm: %s", kiln_error_message(C));
                finite("clip_grad_norm inf", kiln_clip_grad_norm_tensor(C, 2, ps, 1.0, INFINITY));
            } else {
                CHECK(kiln_clip_grad_value(C, 2, ps, 0.5) == KILN_OK, "clip_grad_value: %s", kiln_error_message(C));
            }
            CHECK(kiln_optim_step(o) == KILN_OK, "step %d of optimizer %d: %s", step, kind, kiln_error_message(C));
            kiln_scope_end(C);
        }
        finite("optimised weights", w);
        finite("optimised vector", v);
        kiln_optim_free(o);
        kiln_error_clear(C);
    }
}

static void run(kiln_ctx *ctx) {
    C = ctx;
    static const struct {
        const char *name;
        void (*fn)(void);
    } sweeps[] = {{"copy", sweep_copy},         {"elementwise", sweep_elementwise}, {"reduce", sweep_reduce},
                  {"matmul", sweep_matmul},     {"random", sweep_random},           {"activation", sweep_activation},
                  {"shape", sweep_shape},       {"conv", sweep_conv},               {"pool", sweep_pool},
                  {"norm", sweep_norm},         {"loss", sweep_loss},               {"optim", sweep_optim}};
    const char *only = getenv("KILN_SWEEP"); /* one family, for a quick look */
    for (size_t k = 0; k < sizeof sweeps / sizeof sweeps[0]; k++) {
        if (only && *only && strcmp(only, sweeps[k].name) != 0) continue;
        int64_t before = kiln_tensor_count(ctx);
        kiln_scope_begin(ctx);
        sweeps[k].fn();
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
        CHECK(kiln_tensor_count(ctx) == before, "%s: %lld tensors left after the scope", sweeps[k].name,
              (long long)(kiln_tensor_count(ctx) - before));
        fprintf(stderr, "  %s done\n", sweeps[k].name);
    }
    CHECK_OK(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
