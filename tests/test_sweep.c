/* tests/test_sweep.c - every kernel of cl_kernels/ at small, odd shapes, forward and
 * backward, on contiguous and strided inputs: the workload memory checkers run
 * (scripts/test --oclgrind runs it under Oclgrind, where the op tests' large shapes take
 * hours). Correctness is mostly the op tests' business; this checks that every op
 * succeeds, that outputs and gradients are finite, and that a scope leaves no tensor
 * behind. The kernels a device picks only at some sizes or on another kind of device
 * (work-group vs work-item layouts, split sums, merges) are forced with the ops' test
 * hooks at small sizes and their results checked against host references (forced_*).
 * Every kernel of cl_kernels/ is reached (conv_pad_cols through the conv_pad hook on devices
 * whose GEMM tiles kiln does not know), and every op of src/ops/registry.h: a result checked
 * here names its op first, and an op of the list that no check names fails the test. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <ctype.h>

#include "harness.h"
#include "kiln_test_hooks.h"
#include "ops/registry.h"

static kiln_ctx *C;

/* The ops of src/ops/registry.h whose result the sweep checked (on this device): every
 * check names its op first ("relu strided", "mse_loss mean"), and a checked result marks it. */
static bool reached[KILN__OP_COUNT];

static void reach(const char *what) {
    char name[64];
    size_t n = 0;
    while (n + 1 < sizeof name &&
           (islower((unsigned char)what[n]) || isdigit((unsigned char)what[n]) || what[n] == '_'))
        name[n] = what[n], n++;
    name[n] = 0;
    int op = kiln__op_find(name);
    if (op >= 0) reached[op] = true;
}

/* For the ops that return a status (fill, copy, clip_grad_value): ok marks op. */
static void reach_if(bool ok, const char *op) {
    if (ok) reach(op);
}

/* A [d0, d1, ...] tensor of values in [lo, hi) (deterministic), optionally a leaf that
 * requires grad. */
static kiln_tensor *mk(float lo, float hi, bool grad, int ndim, const int64_t *shape) {
    int64_t n = h_numel(ndim, shape);
    float *h = malloc(sizeof(float) * (size_t)(n ? n : 1));
    h_fill(h, n, lo, hi);
    kiln_tensor *t = kiln_from_host(C, h, KILN_F32, ndim, shape);
    free(h);
    if (grad && t) kiln_tensor_set_requires_grad(t, true);
    return t;
}
#define MK(lo, hi, grad, ...)                                                                                          \
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
    reach(what);
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
        finite(w2, kiln_tensor_grad(leaves[i]));
        kiln_tensor_clear_grad(leaves[i]);
    }
    kiln_error_clear(C);
}

#define BACK(what, out, ...)                                                                                           \
    back(what, out, (int)(sizeof((kiln_tensor *[]){__VA_ARGS__}) / sizeof(kiln_tensor *)),                             \
         (kiln_tensor *[]){__VA_ARGS__})

/* ---- the kernel shapes a device does not choose by itself ------------------------------
 * Which kernel runs can depend on the device (POCL and Oclgrind choose differently) and on
 * sizes. The test hooks below force each shape on any device; the runs they force are
 * checked against host references (double precision), forward and backward, so a kernel
 * reached only this way is still checked for its results, not just for finite output.
 * The hooks are kiln__hooks_of(C)'s fields (src/kiln_test_hooks.h). */

/* A tensor and the host values it was made from (row-major; h is owned). */
typedef struct leaf {
    kiln_tensor *t;
    float *h;
    int64_t n;
} leaf;

static leaf mkl(float lo, float hi, bool grad, int ndim, const int64_t *shape) {
    leaf l = {.n = h_numel(ndim, shape)};
    l.h = malloc(sizeof(float) * (size_t)(l.n ? l.n : 1));
    h_fill(l.h, l.n, lo, hi);
    l.t = kiln_from_host(C, l.h, KILN_F32, ndim, shape);
    if (grad && l.t) kiln_tensor_set_requires_grad(l.t, true);
    return l;
}
#define ML(lo, hi, grad, ...)                                                                                          \
    mkl(lo, hi, grad, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})

static double *dzeros(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(double)); }

static float *hrand(int64_t n, float lo, float hi) {
    float *h = malloc(sizeof(float) * (size_t)(n ? n : 1));
    h_fill(h, n, lo, hi);
    return h;
}

/* t (F32, n elements) against ref. */
static void near(const char *what, kiln_tensor *t, const double *ref, int64_t n) {
    CHECK(t != NULL, "%s: %s", what, kiln_error_message(C));
    if (!t) {
        kiln_error_clear(C);
        return;
    }
    CHECK(kiln_tensor_numel(t) == n, "%s: %lld elements, expected %lld", what, (long long)kiln_tensor_numel(t),
          (long long)n);
    if (kiln_tensor_numel(t) != n) return;
    reach(what);
    float *got = h_read(t);
    h_compare(what, got, ref, n, 1e-4, 1e-4);
    free(got);
}

/* Backward from sum(out * w), w the host seed weights (out's numel values). */
static bool seeded_backward(const char *what, kiln_tensor *out, const float *w) {
    if (!out) return false;
    kiln_tensor *wt = kiln_from_host(C, w, KILN_F32, kiln_tensor_ndim(out), kiln_tensor_shape(out));
    kiln_tensor *l = kiln_sum(C, kiln_mul(C, out, wt), 0, NULL, false);
    bool ok = l && kiln_backward(l) == KILN_OK;
    CHECK(ok, "%s backward: %s", what, kiln_error_message(C));
    kiln_error_clear(C);
    return ok;
}

/* The gradient of l against ref; clears it. */
static void near_grad(const char *what, leaf *l, const double *ref) {
    char w[160];
    snprintf(w, sizeof w, "%s: gradient", what);
    near(w, kiln_tensor_grad(l->t), ref, l->n);
    kiln_tensor_clear_grad(l->t);
}

/* Ops whose outputs are copies of input elements or a fill value (concat, pad, pooling's
 * max, a min): output element i is element off of leaf `leaf`'s host values, or the fill
 * value when leaf < 0. Checks out against that and, after a seeded backward, each leaf's
 * gradient: the sum of the seeds of the outputs that read each element. */
typedef struct src {
    int leaf;
    int64_t off;
} src;

static void check_map(const char *what, kiln_tensor *out, int nl, leaf *ls, const src *map, int64_t n, float value) {
    double *y = dzeros(n);
    for (int64_t i = 0; i < n; i++) y[i] = map[i].leaf >= 0 ? ls[map[i].leaf].h[map[i].off] : value;
    near(what, out, y, n);
    float *w = hrand(n, 0.5f, 1.5f);
    if (out && seeded_backward(what, out, w)) {
        for (int j = 0; j < nl; j++) {
            double *g = dzeros(ls[j].n);
            bool used = false;
            for (int64_t i = 0; i < n; i++)
                if (map[i].leaf == j) g[map[i].off] += w[i], used = true;
            if (used) near_grad(what, &ls[j], g); /* (a leaf the op did not read has no gradient) */
            free(g);
        }
    }
    free(w);
    free(y);
}

/* Coordinates of row-major index i of shape. */
static void unravel(int64_t i, int nd, const int64_t *shape, int64_t *c) {
    for (int d = nd - 1; d >= 0; d--) {
        c[d] = i % shape[d];
        i /= shape[d];
    }
}
static int64_t view_off(const h_view *v, const int64_t *c) {
    int64_t off = v->offset;
    for (int d = 0; d < v->ndim; d++) off += c[d] * v->strides[d];
    return off;
}

/* ---- copy.cl -------------------------------------------------------------------------- */
static void sweep_copy(void) {
    finite("arange", kiln_arange(C, 0, 13, 1));
    kiln_tensor *z = kiln_zeros(C, 2, (int64_t[]){5, 7}); /* fill_contig */
    finite("zeros", z);
    finite("ones", kiln_ones(C, 1, (int64_t[]){9}));
    finite("full", kiln_full(C, -2.5f, 3, (int64_t[]){2, 1, 3}));
    kiln_tensor *e = kiln_empty(C, KILN_I32, 2, (int64_t[]){3, 4}); /* values unspecified: I32 is not read */
    CHECK(e && kiln_tensor_numel(e) == 12, "empty [3, 4]: %s", kiln_error_message(C));
    if (e) reach("empty");
    float hv[6] = {1, -2, 3, -4, 5, -6};
    finite("from_host", kiln_from_host(C, hv, KILN_F32, 2, (int64_t[]){2, 3}));
    kiln_tensor *tv = kiln_transpose(C, z, 0, 1);
    kiln_status st = kiln_fill(tv, 2.0f); /* fill_strided */
    CHECK(st == KILN_OK, "fill of a strided view");
    reach_if(st == KILN_OK, "fill");
    finite("contiguous of a transpose", kiln_contiguous(C, tv)); /* copy_strided */
    leaf src = ML(-1, 1, false, 7, 5);
    st = kiln_copy(tv, src.t); /* copy_view */
    CHECK(st == KILN_OK, "copy into a strided view: %s", kiln_error_message(C));
    if (st == KILN_OK) { /* z [5, 7] is src [7, 5] transposed */
        double *y = dzeros(35);
        for (int64_t i = 0; i < 5; i++)
            for (int64_t j = 0; j < 7; j++) y[i * 7 + j] = src.h[j * 5 + i];
        near("copy into a transposed view", z, y, 35);
        free(y);
    }
    free(src.h);
    kiln_tensor *sl = kiln_slice(C, z, 1, 1, 7, 2);
    finite("clone of a slice", kiln_clone(C, sl));
    /* rows of 17 contiguous floats a work-item (copy_rows), checked against the host */
    leaf r = ML(-1, 1, false, 3, 4, 17);
    kiln__hooks_of(C)->shape_layout = 2;
    kiln_tensor *rc = kiln_contiguous(C, kiln_transpose(C, r.t, 0, 1));
    kiln__hooks_of(C)->shape_layout = 0;
    double *ry = dzeros(3 * 4 * 17);
    for (int64_t i = 0; i < 4; i++)
        for (int64_t j = 0; j < 3; j++)
            for (int64_t k = 0; k < 17; k++) ry[(i * 3 + j) * 17 + k] = r.h[(j * 4 + i) * 17 + k];
    near("contiguous of a transpose, rows of 17", rc, ry, 3 * 4 * 17);
    free(ry);
    free(r.h);
}

/* ---- dtype conversions (cast.cl): every source and destination dtype, views ---- */
static void sweep_cast(void) {
    kiln_tensor *x = MK(-2, 2, true, 3, 5);
    kiln_tensor *h = kiln_to_dtype(C, kiln_transpose(C, x, 0, 1), KILN_F16);
    BACK("to_dtype f16 of a transposed view", kiln_to_dtype(C, kiln_to_dtype(C, h, KILN_BF16), KILN_F32), x);
    BACK("to_dtype bf16", kiln_to_dtype(C, kiln_to_dtype(C, kiln_to_dtype(C, x, KILN_BF16), KILN_F16), KILN_F32), x);
}

/* ---- views (no kernels of their own): forward through them, backward into the base ---- */
static void sweep_view(void) {
    kiln_tensor *x = MK(-1, 1, true, 2, 3, 4);
    BACK("reshape", kiln_reshape(C, x, 2, (int64_t[]){4, -1}), x);
    BACK("view", kiln_view(C, x, 2, (int64_t[]){6, 4}), x);
    BACK("transpose", kiln_transpose(C, x, 0, 2), x);
    BACK("permute", kiln_permute(C, x, (int[]){2, 0, 1}), x);
    BACK("slice", kiln_slice(C, x, 2, 1, 4, 2), x);
    BACK("unsqueeze", kiln_unsqueeze(C, x, 1), x);
    kiln_tensor *c = MK(-1, 1, true, 3, 1);
    BACK("expand", kiln_expand(C, c, 3, (int64_t[]){2, 3, 5}), c);
    BACK("squeeze", kiln_squeeze(C, c, 1), c);
}

/* ---- elementwise.cl ------------------------------------------------------------------- */
static void sweep_elementwise(void) {
    typedef kiln_tensor *(*bin)(kiln_ctx *, kiln_tensor *, kiln_tensor *);
    static const struct {
        const char *name;
        bin f;
    } bins[] = {{"add", kiln_add}, {"sub", kiln_sub},         {"mul", kiln_mul},         {"div", kiln_div},
                {"pow", kiln_pow}, {"minimum", kiln_minimum}, {"maximum", kiln_maximum}, {"eq", kiln_eq},
                {"ne", kiln_ne},   {"lt", kiln_lt},           {"le", kiln_le},           {"gt", kiln_gt},
                {"ge", kiln_ge}};
    kiln_tensor *a = MK(0.5f, 2, true, 3, 5);
    kiln_tensor *b = MK(0.5f, 2, true, 3, 5);
    kiln_tensor *r = MK(0.5f, 2, true, 5); /* broadcast: the strided kernels */
    for (size_t k = 0; k < sizeof bins / sizeof bins[0]; k++) {
        char w[64];
        bool diff = k < 7;
        snprintf(w, sizeof w, "%s contig", bins[k].name);
        kiln_tensor *o = bins[k].f(C, a, b);
        if (diff)
            BACK(w, o, a, b);
        else
            finite(w, o);
        snprintf(w, sizeof w, "%s broadcast", bins[k].name);
        o = bins[k].f(C, a, r);
        if (diff)
            BACK(w, o, a, r);
        else
            finite(w, o);
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
    } scs[] = {{"add_scalar", kiln_add_scalar},
               {"mul_scalar", kiln_mul_scalar},
               {"pow_scalar", kiln_pow_scalar},
               {"minimum_scalar", kiln_minimum_scalar},
               {"maximum_scalar", kiln_maximum_scalar}};
    for (size_t k = 0; k < sizeof scs / sizeof scs[0]; k++) {
        BACK(scs[k].name, scs[k].f(C, a, 1.25f), a);
        BACK(scs[k].name, scs[k].f(C, AT, 1.25f), a);
    }
    kiln_tensor *cond = kiln_gt(C, a, b);
    BACK("where contig", kiln_where(C, cond, a, b), a, b);
    BACK("where broadcast", kiln_where(C, kiln_gt(C, a, r), r, kiln_transpose(C, AT, 0, 1)), r, a);
#undef AT
}

/* ---- reduce.cl: one long row's argmax in segments (argmax_merge), min per work-group --- */
static void forced_reduce(void) {
    for (int layout = 1; layout <= 2; layout++) {
        kiln__hooks_of(C)->reduce_layout = layout;
        char what[96];
        /* 20000 > 256 work-items x 64 terms: segments of one output, merged after */
        leaf a = ML(-1, 1, false, 1, 20000);
        kiln_tensor *am = kiln_argmax(C, a.t, 1, false);
        int64_t best = 0;
        for (int64_t i = 1; i < a.n; i++)
            if (a.h[i] > a.h[best]) best = i;
        int32_t got = -1;
        CHECK(am && kiln_tensor_numel(am) == 1 && kiln_to_host(am, &got, sizeof got) == KILN_OK,
              "argmax of a long row: %s", kiln_error_message(C));
        CHECK(got == best, "argmax of 20000 elements (layout %d): %d, expected %lld", layout, got, (long long)best);
        kiln_error_clear(C);
        free(a.h);
        leaf m = ML(-2, 2, true, 3, 2500);
        src map[3];
        for (int r = 0; r < 3; r++) {
            int64_t j = 0;
            for (int64_t k = 1; k < 2500; k++)
                if (m.h[r * 2500 + k] < m.h[r * 2500 + j]) j = k;
            map[r] = (src){0, r * 2500 + j};
        }
        snprintf(what, sizeof what, "min of long rows (layout %d)", layout);
        check_map(what, kiln_min(C, m.t, 1, (int[]){1}, false), 1, &m, map, 3, 0);
        free(m.h);
    }
    kiln__hooks_of(C)->reduce_layout = 0;
}

/* ---- reduce.cl (both kernel layouts) ------------------------------------------------- */
static void sweep_reduce(void) {
    for (int layout = 1; layout <= 2; layout++) {
        kiln__hooks_of(C)->reduce_layout = layout;
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
    kiln__hooks_of(C)->reduce_layout = 0;
    forced_reduce();
}

/* ---- gemm.cl: kiln's own GEMM kernels, which only CPUs pick ---------------------------- */
/* Under parameter set `set` (src/ops/gemm.c's table). With the AVX-512 set: gemm_nt, A B^T:
 * [2, 5, 37] x [6, 37]^T (rows past 4 clamped, K = 2 x 16 + a 5-term tail, batches folded
 * into M), then a batch of 2 with its own B per batch. gemm_nn, A B and A^T B: [9, 20] x
 * [20, 50] (a row block of 8 + 1 clamped, a column block of 32 + one of 18: 16 as vectors,
 * 2 one by one) and the same with A stored transposed. The other sets' blocks meet other
 * edges of the same shapes. */
static void forced_matmul_set(int set) {
    kiln__hooks_of(C)->gemm_own = 1;
    kiln__hooks_of(C)->gemm_params = set + 1;
    char what[128];
    const char *sn = kiln__gemm_sets[set].name;
    leaf a = ML(-1, 1, false, 2, 5, 37), b = ML(-1, 1, false, 6, 37), bb = ML(-1, 1, false, 2, 6, 37);
    for (int batched = 0; batched < 2; batched++) {
        leaf *r = batched ? &bb : &b;
        int64_t n = 2 * 5 * 6;
        double *y = dzeros(n);
        for (int64_t q = 0; q < 2; q++)
            for (int64_t i = 0; i < 5; i++)
                for (int64_t j = 0; j < 6; j++)
                    for (int64_t k = 0; k < 37; k++)
                        y[(q * 5 + i) * 6 + j] +=
                            (double)a.h[(q * 5 + i) * 37 + k] * r->h[((batched ? q * 6 : 0) + j) * 37 + k];
        snprintf(what, sizeof what, "matmul_ex: own A B^T kernel (%s), %s", sn, batched ? "batched" : "folded batches");
        near(what, kiln_matmul_ex(C, a.t, r->t, KILN_TRANS_B), y, n);
        free(y);
    }
    leaf p = ML(-1, 1, false, 9, 20), pt = ML(-1, 1, false, 20, 9), q = ML(-1, 1, false, 20, 50);
    for (int trans = 0; trans < 2; trans++) {
        double *y = dzeros(9 * 50);
        for (int64_t i = 0; i < 9; i++)
            for (int64_t j = 0; j < 50; j++)
                for (int64_t k = 0; k < 20; k++)
                    y[i * 50 + j] += (double)(trans ? pt.h[k * 9 + i] : p.h[i * 20 + k]) * q.h[k * 50 + j];
        snprintf(what, sizeof what, "matmul_ex: own %s kernel (%s)", trans ? "A^T B" : "A B", sn);
        near(what, kiln_matmul_ex(C, trans ? pt.t : p.t, q.t, trans ? KILN_TRANS_A : 0), y, 9 * 50);
        free(y);
    }
    /* a linear layer's relu(x W^T + b) with the bias and ReLU in the GEMM's store: 9 rows
     * (gemm_nt), 515 (M >= 512: gemm_nn on a transposed copy of W), 20 outputs (ragged
     * against every set's column block), K = 9 */
    leaf w = ML(-1, 1, false, 20, 9), bias = ML(-1, 1, false, 20);
    for (int big = 0; big < 2; big++) {
        int64_t rows = big ? 515 : 9;
        leaf x = ML(-1, 1, false, rows, 9);
        double *y = dzeros(rows * 20);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < 20; j++) {
                double v = bias.h[j];
                for (int64_t k = 0; k < 9; k++) v += (double)x.h[i * 9 + k] * w.h[j * 9 + k];
                y[i * 20 + j] = v < 0 ? 0 : v;
            }
        snprintf(what, sizeof what, "linear relu: bias in the %s store (%s)", big ? "gemm_nn" : "gemm_nt", sn);
        kiln__hooks_of(C)->gemm_epilogue = 1;
        near(what, kiln__linear_relu(C, "sweep linear", x.t, w.t, bias.t), y, rows * 20);
        kiln__hooks_of(C)->gemm_epilogue = 0;
        free(y), free(x.h);
    }
    kiln__hooks_of(C)->gemm_own = 0;
    kiln__hooks_of(C)->gemm_params = 0;
    free(a.h), free(b.h), free(bb.h), free(p.h), free(pt.h), free(q.h), free(w.h), free(bias.h);
}

/* every parameter set once, so that each variant of the kernels runs (under Oclgrind too) */
static void forced_matmul(void) {
    for (int s = 0; s < KILN__GEMM_SETS; s++) forced_matmul_set(s);
}

/* ---- matmul (CLBlast) ------------------------------------------------------------------ */
static void sweep_matmul(void) {
    kiln_tensor *a = MK(-1, 1, true, 3, 4);
    kiln_tensor *b = MK(-1, 1, true, 4, 5);
    BACK("matmul", kiln_matmul(C, a, b), a, b);
    BACK("matmul transposed views", kiln_matmul(C, kiln_transpose(C, b, 0, 1), kiln_transpose(C, a, 0, 1)), a, b);
    kiln_tensor *ba = MK(-1, 1, true, 2, 3, 4);
    kiln_tensor *bb = MK(-1, 1, true, 2, 4, 5);
    BACK("matmul batched", kiln_matmul(C, ba, bb), ba, bb);
    BACK("matmul broadcast", kiln_matmul(C, ba, b), ba, b);
    forced_matmul();
}

/* ---- random.cl ------------------------------------------------------------------------- */
static void sweep_random(void) {
    kiln_manual_seed(C, 5);
    finite("rand_uniform", kiln_rand_uniform(C, -1, 1, 2, (int64_t[]){3, 7}));
    finite("rand_normal", kiln_rand_normal(C, 0, 1, 1, (int64_t[]){13}));
}

/* ---- sample.cl: draws over all entries and over the top k (radix select), strided ------ */

/* ids of a [B, V] draw must lie in [0, V) */
static void ids_in_range(const char *what, kiln_tensor *ids, int64_t V) {
    finite(what, ids);
    if (!ids) return;
    int64_t n = kiln_tensor_numel(ids), bad = 0;
    int32_t *h = malloc(sizeof(int32_t) * (size_t)n);
    CHECK(kiln_to_host(ids, h, sizeof(int32_t) * (size_t)n) == KILN_OK, "%s: read back", what);
    for (int64_t i = 0; i < n; i++) bad += h[i] < 0 || h[i] >= V;
    CHECK(bad == 0, "%s: %lld ids outside [0, %lld)", what, (long long)bad, (long long)V);
    free(h);
}

static void sweep_sample(void) {
    kiln_manual_seed(C, 5);
    ids_in_range("sample_logits", kiln_sample_logits(C, MK(-2, 2, false, 5, 13), 0.8f, 0), 13);
    ids_in_range("sample_logits top_k strided",
                 kiln_sample_logits(C, kiln_transpose(C, MK(-2, 2, false, 11, 3), 0, 1), 1.5f, 4), 11);
    ids_in_range("sample_logits long rows", kiln_sample_logits(C, MK(-2, 2, false, 2, 517), 1.0f, 9), 517);
}

/* ---- activation.cl: softmax's work-group kernels (*_groups), both ways of sharing a row -- */

/* softmax (or log_softmax) of x, contiguous [outer, len, inner], along the middle dim, and
 * the gradient for seeds w. */
static void ref_softmax(const float *x, const float *w, int64_t outer, int64_t len, int64_t inner, bool lg, double *y,
                        double *gx) {
    for (int64_t o = 0; o < outer; o++)
        for (int64_t in = 0; in < inner; in++) {
            int64_t base = o * len * inner + in;
            double m = -INFINITY, s = 0, dot = 0, sw = 0;
            for (int64_t j = 0; j < len; j++) m = fmax(m, x[base + j * inner]);
            for (int64_t j = 0; j < len; j++) s += exp(x[base + j * inner] - m);
            for (int64_t j = 0; j < len; j++) {
                int64_t i = base + j * inner;
                dot += w[i] * exp(x[i] - m) / s;
                sw += w[i];
            }
            for (int64_t j = 0; j < len; j++) {
                int64_t i = base + j * inner;
                double p = exp(x[i] - m) / s;
                y[i] = lg ? x[i] - m - log(s) : p;
                gx[i] = lg ? w[i] - p * sw : p * (w[i] - dot);
            }
        }
}

static void forced_softmax(void) {
    static const struct {
        int nd;
        int64_t shape[3];
        int dim;
    } cs[] = {{2, {3, 5}, 1}, {2, {3, 5}, 0}, {3, {2, 5, 3}, 1}, {2, {2, 300}, 1}};
    for (int layout = 2; layout <= 3; layout++) {
        kiln__hooks_of(C)->softmax_layout = layout; /* 2: blocked shares of a row, 3: interleaved */
        for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++)
            for (int lg = 0; lg < 2; lg++) {
                int dim = cs[k].dim;
                leaf x = mkl(-3, 3, true, cs[k].nd, cs[k].shape);
                int64_t outer = 1, inner = 1, len = cs[k].shape[dim];
                for (int d = 0; d < cs[k].nd; d++) {
                    if (d < dim) outer *= cs[k].shape[d];
                    if (d > dim) inner *= cs[k].shape[d];
                }
                char what[128];
                snprintf(what, sizeof what, "%s groups, %s shares: %d-d dim %d of %lld", lg ? "log_softmax" : "softmax",
                         layout == 2 ? "blocked" : "interleaved", cs[k].nd, dim, (long long)x.n);
                kiln_tensor *out = lg ? kiln_log_softmax(C, x.t, dim) : kiln_softmax(C, x.t, dim);
                double *y = dzeros(x.n), *gx = dzeros(x.n);
                float *w = hrand(x.n, 0.5f, 1.5f);
                ref_softmax(x.h, w, outer, len, inner, lg != 0, y, gx);
                near(what, out, y, x.n);
                if (seeded_backward(what, out, w)) near_grad(what, &x, gx);
                free(w);
                free(y);
                free(gx);
                free(x.h);
            }
    }
    kiln__hooks_of(C)->softmax_layout = 0;
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
        BACK("gelu_tanh", kiln_gelu(C, in, true), x);
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
    kiln__hooks_of(C)->act_vw = 4; /* gelu's vector kernels (18 floats: a tail of 2) */
    BACK("gelu, four floats per work-item", kiln_gelu(C, x, false), x);
    kiln__hooks_of(C)->act_vw = 0;
    forced_softmax();
}

/* ---- shape.cl: the per-row kernels (cat_copy_chunks, pad_rows) ------------------------- */

/* kiln_concat of ts (leaves' views v, of leaves lf) along dim, against the host. */
static void check_concat(const char *what, int n, kiln_tensor **ts, const h_view *v, const int *lf, int nl, leaf *ls,
                         int dim) {
    int nd = v[0].ndim;
    int64_t oshape[KILN_MAX_DIMS], c[KILN_MAX_DIMS];
    memcpy(oshape, v[0].shape, sizeof(int64_t) * (size_t)nd);
    for (int k = 1; k < n; k++) oshape[dim] += v[k].shape[dim];
    int64_t total = h_numel(nd, oshape);
    src *map = malloc(sizeof *map * (size_t)total);
    for (int64_t i = 0; i < total; i++) {
        unravel(i, nd, oshape, c);
        int k = 0;
        while (c[dim] >= v[k].shape[dim]) c[dim] -= v[k++].shape[dim];
        map[i] = (src){lf[k], view_off(&v[k], c)};
    }
    check_map(what, kiln_concat(C, n, ts, dim), nl, ls, map, total, 0);
    free(map);
}

/* kiln_pad of x (leaf l's view v) against the host. */
static void check_pad(const char *what, leaf *l, kiln_tensor *x, const h_view *v, int npad, const int64_t *pad,
                      float value) {
    int nd = v->ndim;
    int64_t before[KILN_MAX_DIMS] = {0}, oshape[KILN_MAX_DIMS], c[KILN_MAX_DIMS];
    memcpy(oshape, v->shape, sizeof(int64_t) * (size_t)nd);
    for (int p = 0; p < npad / 2; p++) {
        before[nd - 1 - p] = pad[2 * p];
        oshape[nd - 1 - p] += pad[2 * p] + pad[2 * p + 1];
    }
    int64_t total = h_numel(nd, oshape);
    src *map = malloc(sizeof *map * (size_t)total);
    for (int64_t i = 0; i < total; i++) {
        unravel(i, nd, oshape, c);
        bool in = true;
        for (int d = 0; d < nd; d++) {
            c[d] -= before[d];
            in = in && c[d] >= 0 && c[d] < v->shape[d];
        }
        map[i] = in ? (src){0, view_off(v, c)} : (src){-1, 0};
    }
    check_map(what, kiln_pad(C, x, npad, pad, value), 1, l, map, total, value);
    free(map);
}

static void forced_shape(void) {
    kiln__hooks_of(C)->shape_layout = 2; /* a work-item per chunk of a row (concat) and per row (pad) */
    leaf ls[3] = {ML(-1, 1, true, 2, 3, 4), ML(-1, 1, true, 2, 2, 4), ML(-1, 1, true, 2, 300)};
    h_view va = h_contig(3, (int64_t[]){2, 3, 4}), vb = h_contig(3, (int64_t[]){2, 2, 4});
    h_view vw = h_contig(2, (int64_t[]){2, 300}), vat = va;
    h_view_transpose(&vat, 1, 2);
#define AT kiln_transpose(C, ls[0].t, 1, 2)
    check_concat("concat rows dim 1", 2, (kiln_tensor *[]){ls[0].t, ls[1].t}, (h_view[]){va, vb}, (int[]){0, 1}, 2, ls,
                 1);
    check_concat("concat rows of views dim 2", 2, (kiln_tensor *[]){AT, AT}, (h_view[]){vat, vat}, (int[]){0, 0}, 1, ls,
                 2);
    check_concat("concat rows of 2 chunks", 2, (kiln_tensor *[]){ls[2].t, ls[2].t}, (h_view[]){vw, vw}, (int[]){2, 2},
                 3, ls, 1);
    check_pad("pad rows", &ls[0], ls[0].t, &va, 4, (int64_t[]){1, 2, 0, 1}, 0.5f);
    check_pad("pad rows crop of a view", &ls[0], AT, &vat, 2, (int64_t[]){-1, 1}, 0.0f);
    check_pad("pad wide rows", &ls[2], ls[2].t, &vw, 2, (int64_t[]){1, 1}, -2.0f);
#undef AT
    for (int j = 0; j < 3; j++) free(ls[j].h);
    kiln__hooks_of(C)->shape_layout = 0;
}

/* ---- shape.cl -------------------------------------------------------------------------- */
static void sweep_shape(void) {
    kiln_tensor *a = MK(-1, 1, true, 2, 3, 4);
    kiln_tensor *b = MK(-1, 1, true, 2, 2, 4);
    BACK("concat dim 1", kiln_concat(C, 2, (kiln_tensor *[]){a, b}, 1), a, b);
    BACK("concat dim 0", kiln_concat(C, 2, (kiln_tensor *[]){a, a}, 0), a);
    BACK("concat last dim of views",
         kiln_concat(C, 2, (kiln_tensor *[]){kiln_transpose(C, a, 1, 2), kiln_transpose(C, a, 1, 2)}, 2), a);
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
    forced_shape();
}

/* ---- conv.cl: the weight gradient in parts summed after (conv_sum_parts) ----------------- */

/* y = conv2d(x, w) + b (stride 1, padding pad, groups 1) of x [N, CI, H, W], w [CO, CI,
 * KH, KW], and for seeds gy the gradients gx, gw, gb. */
typedef struct cshape {
    int64_t N, CI, H, W, CO, KH, KW, pad;
} cshape;

static void ref_conv(const cshape *s, const float *x, const float *w, const float *b, const float *gy, double *y,
                     double *gx, double *gw, double *gb) {
    int64_t HO = s->H + 2 * s->pad - s->KH + 1, WO = s->W + 2 * s->pad - s->KW + 1;
    for (int64_t n = 0; n < s->N; n++)
        for (int64_t o = 0; o < s->CO; o++)
            for (int64_t i = 0; i < HO; i++)
                for (int64_t j = 0; j < WO; j++) {
                    int64_t yi = ((n * s->CO + o) * HO + i) * WO + j;
                    double acc = b[o];
                    gb[o] += gy[yi];
                    for (int64_t c = 0; c < s->CI; c++)
                        for (int64_t ki = 0; ki < s->KH; ki++)
                            for (int64_t kj = 0; kj < s->KW; kj++) {
                                int64_t h = i - s->pad + ki, ww = j - s->pad + kj;
                                if (h < 0 || h >= s->H || ww < 0 || ww >= s->W) continue;
                                int64_t xi = ((n * s->CI + c) * s->H + h) * s->W + ww;
                                int64_t wi = ((o * s->CI + c) * s->KH + ki) * s->KW + kj;
                                acc += (double)x[xi] * w[wi];
                                gx[xi] += (double)gy[yi] * w[wi];
                                gw[wi] += (double)gy[yi] * x[xi];
                            }
                    y[yi] = acc;
                }
}

static void forced_conv(void) {
    static const struct {
        cshape s;
        int mode;
    } cs[] = {
        /* 27 taps per output channel: the direct kernel for few taps (conv_wgrad_small) */
        {{2, 3, 5, 5, 4, 3, 3, 1}, 1},
        /* 54 taps: GEMMs; where kiln knows the GEMM's tiles (kiln__sgemm_tiles: a tuned
         * device) padded to 64 (conv_pad_cols); mode 1 splits the inner dim (72) into parts
         * of at least 8 products, mode 2 also cuts the columns into chunks of one image,
         * mode 3 pads the rows to 64 on any device (the conv_pad hook) and splits */
        {{2, 6, 6, 6, 3, 3, 3, 1}, 0},
        {{2, 6, 6, 6, 3, 3, 3, 1}, 1},
        {{2, 6, 6, 6, 3, 3, 3, 1}, 2},
        {{2, 6, 6, 6, 3, 3, 3, 1}, 3},
        /* 3x3, stride 1, padding 1: forward and input gradient by conv3_direct (mode 4),
         * conv3_flat (mode 5) and conv3_bcast (mode 6), forced (KILN_CONV_ALGO,
         * KILN_CONV3_PARAMS); mode 7 the weight gradient by conv3_tocl and conv3_wgradc
         * (KILN_CONV3_WGRAD) */
        {{2, 6, 6, 6, 3, 3, 3, 1}, 4},
        {{2, 6, 6, 6, 3, 3, 3, 1}, 5},
        {{2, 6, 6, 6, 3, 3, 3, 1}, 6},
        {{2, 6, 6, 6, 3, 3, 3, 1}, 7},
    };
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
        const cshape *s = &cs[k].s;
        int mode = cs[k].mode;
        int64_t HO = s->H + 2 * s->pad - s->KH + 1, WO = s->W + 2 * s->pad - s->KW + 1;
        /* mode 2: column buffers of one image (chunks accumulate into the parts) */
        int64_t per = (s->CI * s->KH * s->KW + s->CO) * HO * WO;
        kiln__hooks_of(C)->conv_budget = mode == 2 ? per : 0;
        kiln__hooks_of(C)->conv_split_min = mode ? 8 : 0;
        kiln__hooks_of(C)->conv_pad = mode == 3 ? 64 : 0;
        kiln_sync(C); /* setenv with nothing running: POCL's threads call getenv */
        if (mode >= 4) setenv("KILN_CONV_ALGO", "direct", 1);
        if (mode == 5) setenv("KILN_CONV3_PARAMS", "8,1,1,2,1", 1);
        if (mode == 6) setenv("KILN_CONV3_PARAMS", "4,2,4,1,2", 1);
        if (mode == 7) setenv("KILN_CONV3_WGRAD", "channels", 1);
        leaf x = ML(-1, 1, true, s->N, s->CI, s->H, s->W), w = ML(-0.5f, 0.5f, true, s->CO, s->CI, s->KH, s->KW);
        leaf b = ML(-0.5f, 0.5f, true, s->CO);
        int64_t ny = s->N * s->CO * HO * WO;
        double *y = dzeros(ny), *gx = dzeros(x.n), *gw = dzeros(w.n), *gb = dzeros(b.n);
        float *gy = hrand(ny, 0.5f, 1.5f);
        ref_conv(s, x.h, w.h, b.h, gy, y, gx, gw, gb);
        char what[96];
        snprintf(what, sizeof what, "conv2d %lld taps%s", (long long)(s->CI * s->KH * s->KW),
                 mode == 0   ? ""
                 : mode == 1 ? " [split]"
                 : mode == 2 ? " [chunks of 1, split]"
                 : mode == 3 ? " [padded to 64, split]"
                 : mode == 4 ? " [direct]"
                 : mode == 5 ? " [direct, flat]"
                 : mode == 6 ? " [direct, bcast]"
                             : " [direct, wgradc]");
        kiln_conv2d_params p = {
            .stride = {1, 1}, .padding = {(int)s->pad, (int)s->pad}, .dilation = {1, 1}, .groups = 1};
        kiln_tensor *out = kiln_conv2d(C, x.t, w.t, b.t, &p);
        near(what, out, y, ny);
        if (seeded_backward(what, out, gy)) {
            near_grad(what, &x, gx);
            near_grad(what, &w, gw);
            near_grad(what, &b, gb);
        }
        kiln_sync(C);
        unsetenv("KILN_CONV_ALGO");
        unsetenv("KILN_CONV3_PARAMS");
        unsetenv("KILN_CONV3_WGRAD");
        free(gy);
        free(y);
        free(gx);
        free(gw);
        free(gb);
        free(x.h);
        free(w.h);
        free(b.h);
    }
    kiln__hooks_of(C)->conv_budget = kiln__hooks_of(C)->conv_split_min = kiln__hooks_of(C)->conv_pad = 0;
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
    kiln_conv2d_params t = {
        .stride = {2, 2}, .padding = {1, 0}, .dilation = {1, 1}, .groups = 2, .output_padding = {1, 0}};
    BACK("conv_transpose2d", kiln_conv_transpose2d(C, x, wt, bt, &t), x, wt, bt);
    kiln_tensor *xb = MK(-1, 1, true, 6, 2, 20, 20);
    kiln_tensor *wb = MK(-0.5f, 0.5f, true, 3, 2, 1, 1);
    kiln_tensor *bb = MK(-0.5f, 0.5f, true, 3);
    BACK("conv2d 1x1 over many positions", kiln_conv2d(C, xb, wb, bb, NULL), xb, wb, bb);
    forced_conv();
    /* the half builds (f16 input, weight, bias and output) of the kernels that read and write
     * them: through columns (im2col, from_cnhw; conv_transpose2d's to_cnhw, col2im), then
     * the direct 3x3 route (conv3_pad, conv3_phase, conv3_pack, conv3_direct, conv3_flat and
     * conv3_bcast storing halves; conv3_bcast's stride-2 f32 build with them; conv3_tocl
     * reading halves for conv3_wgradc) */
#define F16(t) kiln_to_dtype(C, t, KILN_F16)
#define F32(t) kiln_to_dtype(C, t, KILN_F32)
    BACK("conv2d f16", F32(kiln_conv2d(C, F16(x), F16(w), F16(bias), &p)), x, w, bias);
    BACK("conv_transpose2d f16", F32(kiln_conv_transpose2d(C, F16(x), F16(wt), F16(bt), &t)), x, wt, bt);
    kiln_tensor *w3 = MK(-0.5f, 0.5f, true, 5, 4, 3, 3), *b3 = MK(-0.5f, 0.5f, true, 5);
    kiln_tensor *w3t = MK(-0.5f, 0.5f, true, 4, 5, 3, 3);
    kiln_conv2d_params d1 = {.stride = {1, 1}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    kiln_conv2d_params d2 = {.stride = {2, 2}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    kiln_sync(C); /* setenv with nothing running: POCL's threads call getenv */
    setenv("KILN_CONV_ALGO", "direct", 1);
    BACK("conv2d f16 [direct]", F32(kiln_conv2d(C, F16(x), F16(w3), F16(b3), &d1)), x, w3, b3);
    BACK("conv2d f16 stride 2 [direct]", F32(kiln_conv2d(C, F16(x), F16(w3), F16(b3), &d2)), x, w3, b3);
    BACK("conv_transpose2d f16 [direct]", F32(kiln_conv_transpose2d(C, F16(x), F16(w3t), F16(b3), &d1)), x, w3t, b3);
    kiln_sync(C);
    setenv("KILN_CONV3_PARAMS", "4,2,4,1,2", 1);
    BACK("conv2d f16 [direct, bcast]", F32(kiln_conv2d(C, F16(x), F16(w3), F16(b3), &d1)), x, w3, b3);
    BACK("conv2d f16 stride 2 [direct, bcast]", F32(kiln_conv2d(C, F16(x), F16(w3), F16(b3), &d2)), x, w3, b3);
    BACK("conv2d stride 2 [direct, bcast]", kiln_conv2d(C, x, w3, b3, &d2), x, w3, b3);
    kiln_sync(C);
    setenv("KILN_CONV3_WGRAD", "channels", 1);
    BACK("conv2d f16 [direct, bcast, wgradc]", F32(kiln_conv2d(C, F16(x), F16(w3), F16(b3), &d1)), x, w3, b3);
    kiln_sync(C);
    unsetenv("KILN_CONV3_WGRAD");
    unsetenv("KILN_CONV3_PARAMS");
    unsetenv("KILN_CONV_ALGO");
#undef F16
#undef F32
}

/* ---- pool.cl: max pooling whose windows do not overlap (the backward's tile kernel) ---- */
static void forced_pool(void) {
    static const int64_t N = 2, CH = 3, H = 7, W = 6;
    static const int ks[][2] = {{2, 2}, {3, 2}}; /* stride = kernel */
    for (size_t k = 0; k < sizeof ks / sizeof ks[0]; k++) {
        int kh = ks[k][0], kw = ks[k][1];
        int64_t OH = (H - kh) / kh + 1, OW = (W - kw) / kw + 1, n = N * CH * OH * OW;
        leaf x = ML(-1, 1, true, N, CH, H, W);
        src *map = malloc(sizeof *map * (size_t)n);
        for (int64_t i = 0; i < n; i++) {
            int64_t plane = i / (OH * OW), oh = i / OW % OH, ow = i % OW, best = -1;
            for (int a = 0; a < kh; a++)
                for (int b = 0; b < kw; b++) {
                    int64_t off = (plane * H + oh * kh + a) * W + ow * kw + b;
                    if (best < 0 || x.h[off] > x.h[best]) best = off;
                }
            map[i] = (src){0, best};
        }
        kiln_pool2d_params p = {.kernel = {kh, kw}, .stride = {kh, kw}, .dilation = {1, 1}};
        char what[64];
        snprintf(what, sizeof what, "max_pool2d %dx%d tiles", kh, kw);
        check_map(what, kiln_max_pool2d(C, x.t, &p, NULL), 1, &x, map, n, 0);
        free(map);
        free(x.h);
    }
}

/* ---- pool.cl --------------------------------------------------------------------------- */
static void sweep_pool(void) {
    kiln_tensor *x = MK(-1, 1, true, 2, 3, 7, 6);
    kiln_tensor *idx = NULL;
    kiln_pool2d_params mp = {
        .kernel = {3, 2}, .stride = {2, 2}, .padding = {1, 1}, .ceil_mode = true, .dilation = {1, 1}};
    BACK("max_pool2d", kiln_max_pool2d(C, x, &mp, &idx), x);
    finite("max_pool2d indices", idx);
    kiln_pool2d_params mp2 = {.kernel = {2, 2}, .dilation = {2, 1}, .stride = {2, 2}};
    BACK("max_pool2d dilation strided input", kiln_max_pool2d(C, kiln_transpose(C, x, 2, 3), &mp2, NULL), x);
    kiln_pool2d_params ap = {
        .kernel = {3, 3}, .stride = {2, 1}, .padding = {1, 1}, .count_include_pad = false, .dilation = {1, 1}};
    BACK("avg_pool2d", kiln_avg_pool2d(C, x, &ap), x);
    kiln_pool2d_params ap2 = {
        .kernel = {2, 3}, .ceil_mode = true, .count_include_pad = true, .stride = {2, 3}, .dilation = {1, 1}};
    BACK("avg_pool2d ceil", kiln_avg_pool2d(C, x, &ap2), x);
    BACK("global_avg_pool2d", kiln_global_avg_pool2d(C, x), x);
    finite("max_pool2d without grad", kiln_max_pool2d(C, kiln_detach(C, x), &mp, NULL));
    BACK("upsample_nearest", kiln_upsample(C, x, 11, 4, KILN_UPSAMPLE_NEAREST, false), x);
    BACK("upsample_bilinear", kiln_upsample(C, x, 9, 13, KILN_UPSAMPLE_BILINEAR, false), x);
    BACK("upsample_bilinear aligned", kiln_upsample(C, x, 5, 8, KILN_UPSAMPLE_BILINEAR, true), x);
    forced_pool();
}

/* ---- norm.cl: a work-item per channel / row (norm_*_rows) and a work-group per one -------- */

/* Batch / layer norm of x [N, G, S] per group g (N*S elements each): y; with train the
 * batch statistics (mean, unbiased variance out), else rm/rv; the affine weight/bias per
 * group, or per element s (elem: layer norm) or absent; and for seeds gy the gradients gx,
 * gw, gb (gw/gb [G], or [S] with elem). */
typedef struct nshape {
    int64_t N, G, S;
    bool elem, train;
} nshape;

static void ref_norm(const nshape *s, const float *x, const float *wt, const float *bs, const float *rm,
                     const float *rv, double eps, const float *gy, double *y, double *gx, double *gw, double *gb,
                     double *mean, double *uvar) {
    int64_t M = s->N * s->S;
    for (int64_t g = 0; g < s->G; g++) {
#define IDX(n, e) (((n)*s->G + g) * s->S + (e))
#define PI(e) (s->elem ? (e) : g)
        double mu = 0, var = 0;
        for (int64_t n = 0; n < s->N; n++)
            for (int64_t e = 0; e < s->S; e++) mu += x[IDX(n, e)];
        mu /= (double)M;
        for (int64_t n = 0; n < s->N; n++)
            for (int64_t e = 0; e < s->S; e++) var += (x[IDX(n, e)] - mu) * (x[IDX(n, e)] - mu);
        var /= (double)M;
        if (s->train) {
            mean[g] = mu;
            uvar[g] = M > 1 ? var * (double)M / (double)(M - 1) : var;
        } else {
            mu = rm[g];
            var = rv[g];
        }
        double rstd = 1.0 / sqrt(var + eps), gs = 0, gxs = 0;
        for (int64_t n = 0; n < s->N; n++)
            for (int64_t e = 0; e < s->S; e++) {
                int64_t i = IDX(n, e);
                double a = wt ? wt[PI(e)] : 1.0, xh = (x[i] - mu) * rstd;
                y[i] = xh * a + (bs ? bs[PI(e)] : 0.0);
                gw[PI(e)] += gy[i] * xh;
                gb[PI(e)] += gy[i];
                gs += gy[i] * a;
                gxs += gy[i] * a * xh;
            }
        for (int64_t n = 0; n < s->N; n++)
            for (int64_t e = 0; e < s->S; e++) {
                int64_t i = IDX(n, e);
                double a = wt ? wt[PI(e)] : 1.0, xh = (x[i] - mu) * rstd;
                gx[i] = s->train ? rstd * (gy[i] * a - gs / (double)M - xh * gxs / (double)M) : gy[i] * a * rstd;
            }
#undef IDX
#undef PI
    }
}

static void forced_norm(void) {
    static const struct {
        const char *what;
        int nd;
        int64_t shape[4];
        nshape s;
        bool w, b, stats; /* affine weight, bias; running statistics */
    } cs[] = {
        {"batch_norm train 4-d", 4, {3, 4, 2, 2}, {3, 4, 4, false, true}, true, true, true},
        {"batch_norm eval 4-d", 4, {3, 4, 2, 2}, {3, 4, 4, false, false}, true, true, true},
        {"batch_norm train 2-d", 2, {6, 4}, {6, 4, 1, false, true}, true, false, false},
        {"layer_norm", 2, {5, 3}, {1, 5, 3, true, true}, true, true, false},
        {"layer_norm of 2 dims", 3, {2, 3, 4}, {1, 2, 12, true, true}, false, false, false},
    };
    const float mom = 0.1f, eps = 1e-5f;
    for (int layout = 1; layout <= 4; layout += layout == 2 ? 2 : 1) { /* 3 is batch norm's planes */
        kiln__hooks_of(C)->norm_layout = layout;
        for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
            const nshape *s = &cs[k].s;
            int64_t np = s->elem ? s->S : s->G;
            leaf x = mkl(-1, 1, true, cs[k].nd, cs[k].shape);
            leaf w = ML(0.5f, 1.5f, true, np), b = ML(-0.5f, 0.5f, true, np);
            leaf rm = ML(-0.2f, 0.2f, false, s->G), rv = ML(0.5f, 1.5f, false, s->G);
            kiln_tensor *wt = cs[k].w ? w.t : NULL, *bt = cs[k].b ? b.t : NULL;
            char what[96];
            snprintf(what, sizeof what, "%s (%s)", cs[k].what,
                     layout == 1   ? "a work-item per group"
                     : layout == 2 ? "work-groups"
                                   : "float8 rows");
            kiln_tensor *out = s->elem ? kiln_layer_norm(C, x.t, cs[k].nd == 3 ? 2 : 1, wt, bt, eps)
                                       : kiln_batch_norm(C, x.t, cs[k].stats ? rm.t : NULL, cs[k].stats ? rv.t : NULL,
                                                         wt, bt, s->train, mom, eps);
            double *y = dzeros(x.n), *gx = dzeros(x.n), *gw = dzeros(np), *gb = dzeros(np);
            double *mean = dzeros(s->G), *uvar = dzeros(s->G);
            float *gy = hrand(x.n, 0.5f, 1.5f);
            ref_norm(s, x.h, cs[k].w ? w.h : NULL, cs[k].b ? b.h : NULL, rm.h, rv.h, eps, gy, y, gx, gw, gb, mean,
                     uvar);
            near(what, out, y, x.n);
            if (cs[k].stats && s->train) { /* the running statistics' update */
                double *erm = dzeros(s->G), *erv = dzeros(s->G);
                for (int64_t g = 0; g < s->G; g++) {
                    erm[g] = (1 - mom) * rm.h[g] + mom * mean[g];
                    erv[g] = (1 - mom) * rv.h[g] + mom * uvar[g];
                }
                char w2[128];
                snprintf(w2, sizeof w2, "%s: running mean", what);
                near(w2, rm.t, erm, s->G);
                snprintf(w2, sizeof w2, "%s: running variance", what);
                near(w2, rv.t, erv, s->G);
                free(erm);
                free(erv);
            }
            if (seeded_backward(what, out, gy)) {
                near_grad(what, &x, gx);
                if (cs[k].w) near_grad(what, &w, gw);
                if (cs[k].b) near_grad(what, &b, gb);
            }
            free(gy);
            free(y);
            free(gx);
            free(gw);
            free(gb);
            free(mean);
            free(uvar);
            free(x.h);
            free(w.h);
            free(b.h);
            free(rm.h);
            free(rv.h);
        }
    }
    kiln__hooks_of(C)->norm_layout = 0;
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
    BACK("dropout f16", kiln_to_dtype(C, kiln_dropout(C, kiln_to_dtype(C, x, KILN_F16), 0.3f, true), KILN_F32), x);
    kiln_tensor *emb = MK(-1, 1, true, 7, 3);
    int32_t ids[6] = {6, 0, 3, 3, 1, 6};
    BACK("embedding", kiln_embedding(C, emb, mk_i32(ids, 2, (int64_t[]){2, 3})), emb);
    forced_norm();
}

/* ---- rnn.cl: every mode, both directions, lengths, a strided batch_first input ----------- */
static const char *const rnn_names[4] = {"rnn_tanh", "rnn_relu", "lstm", "gru"};

/* A bidirectional layer of mode with hidden size H and lengths {4, 1, 3} over x [4, 3, 5]
 * from h0 [2, 3, H], forward and backward (BACK), named "<mode> <tag>"; *x and w (w_ih,
 * w_hh, b_ih, b_hh of each direction) are the leaves it made. */
static void rnn_bidir(int mode, int64_t H, const char *tag, kiln_tensor **x, kiln_tensor *w[8]) {
    static const int32_t len[3] = {4, 1, 3};
    int64_t G = mode == KILN_RNN_LSTM ? 4 : mode == KILN_RNN_GRU ? 3 : 1;
    *x = MK(-1, 1, true, 4, 3, 5);
    kiln_tensor *h0 = MK(-1, 1, true, 2, 3, H);
    for (int d = 0; d < 2; d++) {
        w[4 * d] = MK(-0.5f, 0.5f, true, G * H, 5);
        w[4 * d + 1] = MK(-0.5f, 0.5f, true, G * H, H);
        w[4 * d + 2] = MK(-0.5f, 0.5f, true, G * H);
        w[4 * d + 3] = MK(-0.5f, 0.5f, true, G * H);
    }
    kiln_rnn_params p = kiln_rnn_defaults();
    p.bidirectional = true;
    char what[64];
    snprintf(what, sizeof what, "%s %s", rnn_names[mode], tag);
    BACK(what, kiln_rnn(C, (kiln_rnn_mode)mode, *x, h0, NULL, 8, w, len, &p, true, NULL, NULL), *x, h0, w[0], w[1],
         w[2], w[3], w[4], w[5], w[6], w[7]);
}

static void sweep_rnn(void) {
    for (int mode = 0; mode < 4; mode++) {
        kiln_tensor *x, *w[8];
        rnn_bidir(mode, 3, "bidirectional lengths", &x, w);
        /* [B, T, I] as a transposed view of a [T, B, I] leaf */
        kiln_rnn_params p = kiln_rnn_defaults();
        p.batch_first = true;
        char what[64];
        snprintf(what, sizeof what, "%s strided batch_first", rnn_names[mode]);
        BACK(what,
             kiln_rnn(C, (kiln_rnn_mode)mode, kiln_transpose(C, x, 0, 1), NULL, NULL, 4, w, NULL, &p, true, NULL, NULL),
             x, w[0], w[1], w[2], w[3]);
    }
    /* the step kernels' vector builds (RNN_VW 4: a CPU device of 4-float vectors, H = 8),
     * on this device told so through KILN_DEVICE_LIMITS */
    kiln_ctx *keep = C, *vec = NULL;
    kiln_sync(C); /* (POCL's workers read the environment) */
    const char *had = getenv("KILN_DEVICE_LIMITS");
    char *saved = had ? strdup(had) : NULL;
    setenv("KILN_DEVICE_LIMITS", "type=cpu,vec=4", 1);
    kiln_status os = kiln_open(&vec, kiln_ctx_device(C)->name);
    if (saved)
        setenv("KILN_DEVICE_LIMITS", saved, 1);
    else
        unsetenv("KILN_DEVICE_LIMITS");
    free(saved);
    CHECK(os == KILN_OK, "rnn: open with type=cpu,vec=4: %s", kiln_last_error());
    if (os != KILN_OK) return;
    C = vec;
    for (int mode = 0; mode < 4; mode++) {
        kiln_tensor *x, *w[8];
        rnn_bidir(mode, 8, "vectors of hidden units", &x, w);
    }
    C = keep;
    kiln_close(vec);
}

/* ---- loss.cl: partial sums before the final one (sum_part), penalties of many tensors */
static void forced_loss(void) {
    /* nll over more rows than one work-group's 256 x 32 terms: the mean's two sums (losses
     * and weights; interleaved terms) and the sum's one (blocked) in partial sums first */
    enum { N = 8200 };
    int32_t *lab = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) lab[i] = i % 7 == 3 ? -100 : (i * 5 + i / 3) % 2;
    kiln_tensor *y = mk_i32(lab, 1, (int64_t[]){N});
    leaf cw = ML(0.5f, 1.5f, false, 2);
    for (int layout = 1; layout <= 2; layout++) {
        kiln__hooks_of(C)->loss_layout = layout;
        int r = layout == 1 ? KILN_MEAN : KILN_SUM;
        leaf lp = ML(-3, 0, true, N, 2);
        double num = 0, den = 0;
        for (int i = 0; i < N; i++)
            if (lab[i] >= 0) num -= (double)cw.h[lab[i]] * lp.h[2 * i + lab[i]], den += cw.h[lab[i]];
        double ref = r == KILN_MEAN ? num / den : num;
        char what[96];
        snprintf(what, sizeof what, "nll_loss %s of %d rows (layout %d)", r == KILN_MEAN ? "mean" : "sum", N, layout);
        kiln_tensor *out = kiln_nll_loss(C, lp.t, y, cw.t, -100, (kiln_reduction)r);
        near(what, out, &ref, 1);
        float seed = 1.25f;
        if (seeded_backward(what, out, &seed)) {
            double *g = dzeros(lp.n);
            for (int i = 0; i < N; i++)
                if (lab[i] >= 0) g[2 * i + lab[i]] = -(double)cw.h[lab[i]] * seed / (r == KILN_MEAN ? den : 1.0);
            near_grad(what, &lp, g);
            free(g);
        }
        free(lp.h);
    }
    kiln__hooks_of(C)->loss_layout = 0;
    free(lab);
    free(cw.h);
    /* penalties of many tensors: every tensor's partial sums into one buffer, then one sum */
    static const int64_t shapes[9][2] = {{3, 1}, {2, 3}, {4, 1}, {1, 1}, {2, 2}, {5, 1}, {3, 1}, {2, 1}, {6, 1}};
    for (int l2 = 0; l2 < 2; l2++) {
        int n = l2 ? 9 : 5;
        leaf ps[9];
        kiln_tensor *ts[9];
        double ref = 0;
        for (int j = 0; j < n; j++) {
            ps[j] = mkl(-1, 1, true, 2, shapes[j]);
            ts[j] = j == 1 ? kiln_transpose(C, ps[j].t, 0, 1) : ps[j].t; /* one strided */
            for (int64_t i = 0; i < ps[j].n; i++) ref += l2 ? (double)ps[j].h[i] * ps[j].h[i] : fabs(ps[j].h[i]);
        }
        char what[64];
        snprintf(what, sizeof what, "%s of %d tensors", l2 ? "l2_penalty" : "l1_penalty", n);
        kiln_tensor *out = l2 ? kiln_l2_penalty(C, n, ts) : kiln_l1_penalty(C, n, ts);
        near(what, out, &ref, 1);
        float seed = 0.75f;
        bool ok = seeded_backward(what, out, &seed);
        for (int j = 0; j < n; j++) {
            if (ok) {
                double *g = dzeros(ps[j].n);
                for (int64_t i = 0; i < ps[j].n; i++)
                    g[i] = seed * (l2 ? 2.0 * ps[j].h[i] : (ps[j].h[i] > 0) - (ps[j].h[i] < 0));
                near_grad(what, &ps[j], g);
                free(g);
            }
            free(ps[j].h);
        }
    }
}

/* ---- loss.cl --------------------------------------------------------------------------- */
static void sweep_loss(void) {
    kiln_tensor *p = MK(-1, 1, true, 3, 5);
    kiln_tensor *t = MK(-1, 1, false, 3, 5);
    for (int r = 0; r < 3; r++) {
        BACK("mse_loss", kiln_mse_loss(C, p, t, (kiln_reduction)r), p);
        BACK("l1_loss", kiln_l1_loss(C, kiln_transpose(C, p, 0, 1), kiln_transpose(C, t, 0, 1), (kiln_reduction)r), p);
        BACK("smooth_l1_loss", kiln_smooth_l1_loss(C, p, t, (kiln_reduction)r, 0.5f), p);
        BACK("lsgan_loss", kiln_lsgan_loss(C, p, 1.0f, (kiln_reduction)r), p);
        /* the other layout of each */
#define PT kiln_transpose(C, p, 0, 1)
#define TT kiln_transpose(C, t, 0, 1)
        BACK("mse_loss strided", kiln_mse_loss(C, PT, TT, (kiln_reduction)r), p);
        BACK("l1_loss contig", kiln_l1_loss(C, p, t, (kiln_reduction)r), p);
        BACK("smooth_l1_loss strided", kiln_smooth_l1_loss(C, PT, TT, (kiln_reduction)r, 0.5f), p);
        BACK("lsgan_loss strided", kiln_lsgan_loss(C, PT, 0.0f, (kiln_reduction)r), p);
#undef PT
#undef TT
    }
    kiln_tensor *big = MK(-1, 1, true, 70, 300); /* long enough for multi-part sums */
    kiln_tensor *bigt = MK(-1, 1, false, 70, 300);
    BACK("mse_loss over 21000 elements", kiln_mse_loss(C, big, bigt, KILN_MEAN), big);
    BACK("l1_loss over 21000 elements",
         kiln_l1_loss(C, kiln_transpose(C, big, 0, 1), kiln_transpose(C, bigt, 0, 1), KILN_SUM), big);
    kiln_tensor *logits = MK(-2, 2, true, 4, 5);
    int32_t lab[4] = {0, 4, 2, 1}, labi[4] = {0, -100, 2, 4};
    kiln_tensor *y = mk_i32(lab, 1, (int64_t[]){4});
    kiln_tensor *yi = mk_i32(labi, 1, (int64_t[]){4});
    kiln_tensor *cw = MK(0.5f, 1.5f, false, 5);
    for (int r = 0; r < 3; r++) {
        BACK("cross_entropy", kiln_cross_entropy(C, logits, y, (kiln_reduction)r), logits);
        BACK("cross_entropy_ex", kiln_cross_entropy_ex(C, logits, yi, cw, -100, 0.1f, (kiln_reduction)r), logits);
        BACK("nll_loss", kiln_nll_loss(C, kiln_log_softmax(C, logits, 1), yi, cw, -100, (kiln_reduction)r), logits);
    }
    kiln_tensor *l3 = MK(-2, 2, true, 2, 5, 3);
    int32_t lab3[6] = {0, 1, 4, 3, 2, 2};
    BACK("cross_entropy [N, C, d]", kiln_cross_entropy(C, l3, mk_i32(lab3, 2, (int64_t[]){2, 3}), KILN_MEAN), l3);
    kiln_tensor *prob = MK(0.05f, 0.95f, true, 3, 5);
    kiln_tensor *tgt = MK(0, 1, false, 3, 5);
    kiln_tensor *bw = MK(0.5f, 1.5f, false, 3, 5);
    kiln_tensor *pw = MK(0.5f, 2, false, 5);
    for (int r = 0; r < 3; r++) {
        BACK("bce_loss", kiln_bce_loss(C, prob, tgt, bw, (kiln_reduction)r), prob);
        BACK("bce_with_logits", kiln_bce_with_logits(C, p, tgt, bw, pw, (kiln_reduction)r), p);
        BACK("bce_loss strided",
             kiln_bce_loss(C, kiln_transpose(C, prob, 0, 1), kiln_transpose(C, tgt, 0, 1), NULL, (kiln_reduction)r),
             prob);
        BACK("bce_with_logits contig", kiln_bce_with_logits(C, p, tgt, NULL, NULL, (kiln_reduction)r), p);
    }
    BACK("l1_penalty", kiln_l1_penalty(C, 2, (kiln_tensor *[]){p, logits}), p, logits);
    BACK("l2_penalty", kiln_l2_penalty(C, 2, (kiln_tensor *[]){p, logits}), p, logits);
    BACK("l1_penalty strided", kiln_l1_penalty(C, 1, (kiln_tensor *[]){kiln_transpose(C, p, 0, 1)}), p);
    BACK("l2_penalty strided", kiln_l2_penalty(C, 1, (kiln_tensor *[]){kiln_transpose(C, p, 0, 1)}), p);
    forced_loss();
}

/* ---- optim.cl -------------------------------------------------------------------------- */
/* ---- attention.cl: every kernel variant (mask kinds, causal, dropout) at odd sizes over
 * more than one tile, on views, and the composed path's bias kernel ---------------------- */
static void sweep_attention(void) {
    kiln_tensor *q = MK(-1, 1, true, 2, 19, 5), *k = MK(-1, 1, true, 2, 37, 5), *v = MK(-1, 1, true, 2, 37, 3);
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    BACK("scaled_dot_product_attention", kiln_scaled_dot_product_attention(C, q, k, v, NULL, &o), q, k, v);
    uint8_t mb[19 * 37];
    for (int i = 0; i < 19 * 37; i++) mb[i] = i % 37 == 0 || (i * 7) % 5 != 0;
    kiln_tensor *bm = kiln_from_host(C, mb, KILN_U8, 2, (int64_t[]){19, 37});
    BACK("scaled_dot_product_attention bool mask", kiln_scaled_dot_product_attention(C, q, k, v, bm, &o), q, k, v);
    kiln_tensor *fm = MK(-2, 2, false, 2, 1, 37);
    BACK("scaled_dot_product_attention float mask", kiln_scaled_dot_product_attention(C, q, k, v, fm, &o), q, k, v);
    o.is_causal = true;
    BACK("scaled_dot_product_attention causal", kiln_scaled_dot_product_attention(C, q, k, v, NULL, &o), q, k, v);
    o.dropout_p = 0.25f;
    kiln_manual_seed(C, 3);
    BACK("scaled_dot_product_attention causal dropout", kiln_scaled_dot_product_attention(C, q, k, v, NULL, &o), q, k,
         v);
    /* head dims of whole vectors: sdpa_pack transposes square blocks in registers */
    o = kiln_sdpa_defaults();
    kiln_tensor *q8 = MK(-1, 1, true, 2, 19, 8), *k8 = MK(-1, 1, true, 2, 37, 8), *v8 = MK(-1, 1, true, 2, 37, 8);
    BACK("scaled_dot_product_attention head dim 8", kiln_scaled_dot_product_attention(C, q8, k8, v8, NULL, &o), q8, k8,
         v8);
    /* transposed query, strided key */
    kiln_tensor *qt = MK(-1, 1, true, 2, 5, 19), *k2 = MK(-1, 1, true, 2, 74, 5);
    BACK("scaled_dot_product_attention views",
         kiln_scaled_dot_product_attention(C, kiln_transpose(C, qt, 1, 2), kiln_slice(C, k2, 1, 0, 74, 2), v, NULL, &o),
         qt, k2, v);
    o.impl = KILN_SDPA_COMPOSED;
    BACK("scaled_dot_product_attention composed bool mask", kiln_scaled_dot_product_attention(C, q, k, v, bm, &o), q, k,
         v);
    o.is_causal = true;
    BACK("scaled_dot_product_attention composed causal", kiln_scaled_dot_product_attention(C, q, k, v, NULL, &o), q, k,
         v);
}

static void sweep_optim(void) {
    for (int kind = 0; kind < 6; kind++) {
        kiln_tensor *w = MK(-1, 1, true, 3, 5);
        kiln_tensor *v = MK(-1, 1, true, 7);
        kiln_tensor *ps[2] = {w, v};
        kiln_optim *o = NULL;
        kiln_sgd_opts so = kiln_sgd_defaults();
        so.lr = 0.1;
        kiln_rmsprop_opts ro = kiln_rmsprop_defaults();
        kiln_adam_opts ao = kind == 5 ? kiln_adamw_defaults() : kiln_adam_defaults();
        switch (kind) {
        case 0: o = kiln_sgd(C, ps, 2, &so); break;
        case 1:
            so.momentum = 0.9, so.nesterov = true, so.weight_decay = 0.01;
            o = kiln_sgd(C, ps, 2, &so);
            break;
        case 2:
            ro.momentum = 0.5, ro.centered = true;
            o = kiln_rmsprop(C, ps, 2, &ro);
            break;
        case 3: o = kiln_adam(C, ps, 2, &ao); break;
        case 4:
            ao.amsgrad = true, ao.weight_decay = 0.1;
            o = kiln_adam(C, ps, 2, &ao);
            break;
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
                kiln_status st = kiln_clip_grad_value(C, 2, ps, 0.5);
                CHECK(st == KILN_OK, "clip_grad_value: %s", kiln_error_message(C));
                reach_if(st == KILN_OK, "clip_grad_value");
            }
            CHECK(kiln_optim_step(o) == KILN_OK, "step %d of optimizer %d: %s", step, kind, kiln_error_message(C));
            kiln_scope_end(C);
        }
        static const char *const opt_name[6] = {"sgd", "sgd", "rmsprop", "adam", "adam", "adamw"};
        char what[64];
        snprintf(what, sizeof what, "%s: optimised weights", opt_name[kind]);
        finite(what, w);
        snprintf(what, sizeof what, "%s: optimised vector", opt_name[kind]);
        finite(what, v);
        kiln_optim_free(o);
        kiln_error_clear(C);
    }
    /* the GradScaler: nine gradients unscaled eight a launch (scaler_unscale_multi), then one
     * a launch (KILN_OPTIM_SINGLE: scaler_unscale), the update of the scale (scaler_update) */
    for (int single = 0; single < 2; single++) {
        kiln_sync(C); /* setenv with nothing running: POCL's threads call getenv */
        if (single) setenv("KILN_OPTIM_SINGLE", "1", 1);
        kiln_tensor *ps[9];
        for (int i = 0; i < 9; i++) ps[i] = MK(-1, 1, true, 3 + i);
        kiln_sgd_opts so = kiln_sgd_defaults();
        kiln_optim *o = kiln_sgd(C, ps, 9, &so);
        kiln_grad_scaler *sc = kiln_grad_scaler_new(C, NULL);
        /* the parameters' casts made ahead for an autocast region (cast_multi, f16 and bf16) */
        for (int d = 0; d < 2 && o; d++) {
            kiln_dtype dt = d ? KILN_BF16 : KILN_F16;
            kiln_ctx_set_autocast(C, dt);
            kiln_status cs = kiln__optim_autocast(o, dt);
            CHECK(cs == KILN_OK, "autocast casts ahead: %s", kiln_error_message(C));
            reach_if(cs == KILN_OK && !single, "autocast casts ahead");
            kiln_ctx_set_autocast(C, KILN_F32);
        }
        kiln_scope_begin(C);
        kiln_tensor *l = kiln_zeros(C, 0, NULL);
        for (int i = 0; i < 9; i++) l = kiln_add(C, l, kiln_sum(C, kiln_mul(C, ps[i], ps[i]), 0, NULL, false));
        kiln_status st = o && sc ? kiln_backward(kiln_grad_scaler_scale(sc, l)) : KILN_ERR_NULL;
        if (st == KILN_OK) st = kiln_grad_scaler_step(sc, o);
        if (st == KILN_OK) st = kiln_grad_scaler_update(sc);
        CHECK(st == KILN_OK, "grad scaler step%s: %s", single ? " (one a launch)" : "", kiln_error_message(C));
        kiln_scope_end(C);
        finite(single ? "grad scaler, one a launch: parameters" : "grad scaler: parameters", ps[8]);
        kiln_grad_scaler_free(sc);
        kiln_optim_free(o);
        kiln_sync(C);
        if (single) unsetenv("KILN_OPTIM_SINGLE");
        kiln_error_clear(C);
    }
}

static void run(kiln_ctx *ctx) {
    C = ctx;
    static const struct {
        const char *name;
        void (*fn)(void);
    } sweeps[] = {{"copy", sweep_copy},
                  {"view", sweep_view},
                  {"elementwise", sweep_elementwise},
                  {"reduce", sweep_reduce},
                  {"matmul", sweep_matmul},
                  {"random", sweep_random},
                  {"activation", sweep_activation},
                  {"shape", sweep_shape},
                  {"conv", sweep_conv},
                  {"pool", sweep_pool},
                  {"norm", sweep_norm},
                  {"rnn", sweep_rnn},
                  {"loss", sweep_loss},
                  {"sample", sweep_sample},
                  {"attention", sweep_attention},
                  {"optim", sweep_optim},
                  {"cast", sweep_cast}};
    const char *only = getenv("KILN_SWEEP"); /* one family, for a quick look */
    memset(reached, 0, sizeof reached);
    for (size_t k = 0; k < sizeof sweeps / sizeof sweeps[0]; k++) {
        if (only && *only && strcmp(only, sweeps[k].name) != 0) continue;
        int64_t before = kiln_ctx_num_tensors(ctx);
        kiln_scope_begin(ctx);
        sweeps[k].fn();
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
        CHECK(kiln_ctx_num_tensors(ctx) == before, "%s: %lld tensors left after the scope", sweeps[k].name,
              (long long)(kiln_ctx_num_tensors(ctx) - before));
        fprintf(stderr, "  %s done\n", sweeps[k].name);
    }
    /* every family of src/ops/registry.h has its sweep, and every op was reached */
    for (int f = 0; f < KILN__FAM_COUNT; f++) {
        const char *fam = kiln__family_get((kiln__family)f)->name;
        bool has = false;
        for (size_t k = 0; k < sizeof sweeps / sizeof sweeps[0]; k++) has |= strcmp(sweeps[k].name, fam) == 0;
        CHECK(has, "family %s of src/ops/registry.h has no sweep_%s", fam, fam);
    }
    for (int op = 0; !(only && *only) && op < KILN__OP_COUNT; op++) {
        const kiln__op_info *r = kiln__op_get((kiln__op)op);
        CHECK(reached[op], "op %s (%s) was never reached: sweep_%s checks no result named \"%s ...\"", r->name, r->fn,
              kiln__family_get(r->family)->name, r->name);
    }
    CHECK_OK(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
