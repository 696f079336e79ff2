/* tools/ops.c - `kiln ops`: every op of src/ops/registry.h with whether it has a backward,
 * what the test suite compares it against, whether a PyTorch golden file covers it, and a
 * smoke run of its forward (and backward) on each device. tests/test_registry.c runs the
 * same smoke runs (ops_smoke). */
#include "ops.h"

#include "json.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kiln/kiln.h>

#include "ops/registry.h"

/* ---- smoke runs: small inputs, the op, a host reference where it is cheap ------------- */

enum { MAX_LEAF = 8, MAX_HOST = 16 };

typedef struct smoke {
    kiln_ctx *ctx;
    bool grad; /* inputs made with grad=true require grad */
    int nleaf;
    kiln_tensor *leaf[MAX_LEAF]; /* whose gradients the backward check reads */
    int nhost;
    float *host[MAX_HOST]; /* host copies of the inputs, freed after the run */
    kiln_tensor *out;      /* the op's result */
    int64_t nref;          /* > 0: out must match ref element by element */
    double *ref;
    double atol, rtol;
    /* An extra check of the output (dropout's mask): NULL or what is wrong. */
    const char *(*verify)(struct smoke *s, const float *got, int64_t n);
    int64_t size_only; /* > 0: only the output's element count is checked (kiln_empty) */
    char err[400];     /* a failure the run function found itself */
    uint32_t rng;
    kiln_dtype dt; /* the float inputs' dtype: f32, or a half (the harness's dtype axis) */
} smoke;

static float rnd(smoke *s, float lo, float hi) {
    s->rng = s->rng * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)((double)(s->rng >> 8) / 16777216.0);
}

static int64_t numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

/* A new F32 input holding vals (NULL: uniform in [lo, hi)); *h receives its host copy.
 * grad: a leaf that requires grad and whose gradient the backward check reads. */
static kiln_tensor *input(smoke *s, const float **h, int ndim, const int64_t *shape, const float *vals, float lo,
                          float hi, bool grad) {
    int64_t n = numel(ndim, shape);
    if (s->nhost == MAX_HOST) {
        snprintf(s->err, sizeof s->err, "smoke run: more than %d inputs", MAX_HOST);
        return NULL;
    }
    float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!v) {
        snprintf(s->err, sizeof s->err, "smoke run: out of host memory");
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) v[i] = vals ? vals[i] : rnd(s, lo, hi);
    /* a half run: the values rounded to the dtype, so that the host reference sees the op's */
    for (int64_t i = 0; s->dt == KILN_F16 && i < n; i++) v[i] = kiln_f16_to_f32(kiln_f32_to_f16(v[i]));
    for (int64_t i = 0; s->dt == KILN_BF16 && i < n; i++) v[i] = kiln_bf16_to_f32(kiln_f32_to_bf16(v[i]));
    s->host[s->nhost++] = v;
    if (h) *h = v;
    kiln_tensor *t = kiln_from_host(s->ctx, v, KILN_F32, ndim, shape);
    if (t && grad && s->grad && s->nleaf < MAX_LEAF) {
        if (kiln_tensor_set_requires_grad(t, true) != KILN_OK) return NULL;
        s->leaf[s->nleaf++] = t;
    }
    /* the op reads a half conversion of the f32 leaf, which carries the gradient back */
    return t && s->dt != KILN_F32 ? kiln_to_dtype(s->ctx, t, s->dt) : t;
}

static kiln_tensor *indices(smoke *s, int ndim, const int64_t *shape, const int32_t *vals) {
    return kiln_from_host(s->ctx, vals, KILN_I32, ndim, shape);
}

/* The reference of n output elements, owned by s. */
static double *expect(smoke *s, int64_t n) {
    free(s->ref);
    s->ref = calloc((size_t)(n ? n : 1), sizeof(double));
    s->nref = s->ref ? n : 0;
    static double sink[512]; /* out of host memory: the reference goes nowhere, unchecked */
    return s->ref ? s->ref : sink;
}

/* out[i] of a permutation of the dims of a row-major x: out dim d is x dim perm[d]. */
static void permute_ref(const float *x, int nd, const int64_t *shape, const int *perm, double *out) {
    int64_t xs[8], os[8], n = numel(nd, shape);
    xs[nd - 1] = 1;
    for (int d = nd - 2; d >= 0; d--) xs[d] = xs[d + 1] * shape[d + 1];
    for (int d = 0; d < nd; d++) os[d] = shape[perm[d]];
    for (int64_t i = 0; i < n; i++) {
        int64_t r = i, src = 0;
        for (int d = nd - 1; d >= 0; d--) {
            src += (r % os[d]) * xs[perm[d]];
            r /= os[d];
        }
        out[i] = x[src];
    }
}

/* ---- elementwise (broadcast a [3, 4] with b [4]) ---------------------------------------- */

typedef kiln_tensor *(*binop)(kiln_ctx *, kiln_tensor *, kiln_tensor *);

static void binary(smoke *s, binop f, double (*r)(double, double), float lo, float hi, bool ints) {
    float va[12], vb[4];
    for (int i = 0; i < 12; i++) va[i] = ints ? floorf(rnd(s, lo, hi)) : rnd(s, lo, hi);
    for (int i = 0; i < 4; i++) vb[i] = ints ? floorf(rnd(s, lo, hi)) : rnd(s, lo, hi);
    const float *a, *b;
    kiln_tensor *ta = input(s, &a, 2, (int64_t[]){3, 4}, va, 0, 0, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){4}, vb, 0, 0, true);
    s->out = f(s->ctx, ta, tb);
    double *o = expect(s, 12);
    for (int i = 0; i < 12; i++) o[i] = r(a[i], b[i % 4]);
}

static double r_add(double a, double b) { return a + b; }
static double r_sub(double a, double b) { return a - b; }
static double r_mul(double a, double b) { return a * b; }
static double r_div(double a, double b) { return a / b; }
static double r_pow(double a, double b) { return pow(a, b); }
static double r_minimum(double a, double b) { return a < b ? a : b; }
static double r_maximum(double a, double b) { return a > b ? a : b; }
static double r_eq(double a, double b) { return a == b; }
static double r_ne(double a, double b) { return a != b; }
static double r_lt(double a, double b) { return a < b; }
static double r_le(double a, double b) { return a <= b; }
static double r_gt(double a, double b) { return a > b; }
static double r_ge(double a, double b) { return a >= b; }

#define BINARY(stem, lo, hi, ints)                                                                                     \
    static void run_##stem(smoke *s) { binary(s, kiln_##stem, r_##stem, lo, hi, ints); }
BINARY(add, -2, 2, false)
BINARY(sub, -2, 2, false)
BINARY(mul, -2, 2, false)
BINARY(div, 0.5f, 2, false)
BINARY(pow, 0.5f, 2, false)
BINARY(minimum, -2, 2, false)
BINARY(maximum, -2, 2, false)
/* small integers, so that equal pairs occur */
BINARY(eq, -1, 2, true)
BINARY(ne, -1, 2, true)
BINARY(lt, -1, 2, true)
BINARY(le, -1, 2, true)
BINARY(gt, -1, 2, true)
BINARY(ge, -1, 2, true)

static void run_where(smoke *s) {
    float vc[12];
    for (int i = 0; i < 12; i++) vc[i] = (float)(i % 3 == 1);
    const float *c, *a, *b;
    kiln_tensor *tc = input(s, &c, 2, (int64_t[]){3, 4}, vc, 0, 0, false);
    kiln_tensor *ta = input(s, &a, 2, (int64_t[]){3, 4}, NULL, -2, 2, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){4}, NULL, -2, 2, true);
    s->out = kiln_where(s->ctx, tc, ta, tb);
    double *o = expect(s, 12);
    for (int i = 0; i < 12; i++) o[i] = c[i] != 0 ? a[i] : b[i % 4];
}

typedef kiln_tensor *(*unop)(kiln_ctx *, kiln_tensor *);

static void unary(smoke *s, unop f, double (*r)(double), float lo, float hi) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 5}, NULL, lo, hi, true);
    s->out = f(s->ctx, t);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++) o[i] = r(x[i]);
}

static double r_neg(double x) { return -x; }
static double r_relu(double x) { return x > 0 ? x : 0; }
static double r_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double r_gelu(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }
static double r_gelu_tanh(double x) {
    return 0.5 * x * (1 + tanh(sqrt(2 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
}

static void run_neg(smoke *s) { unary(s, kiln_neg, r_neg, -2, 2); }
static void run_exp(smoke *s) { unary(s, kiln_exp, exp, -2, 2); }
static void run_log(smoke *s) { unary(s, kiln_log, log, 0.25f, 3); }
static void run_sqrt(smoke *s) { unary(s, kiln_sqrt, sqrt, 0.25f, 3); }
static void run_abs(smoke *s) { unary(s, kiln_abs, fabs, -2, 2); }
static void run_relu(smoke *s) { unary(s, kiln_relu, r_relu, -3, 3); }
static void run_sigmoid(smoke *s) { unary(s, kiln_sigmoid, r_sigmoid, -3, 3); }
static void run_tanh(smoke *s) { unary(s, kiln_tanh, tanh, -3, 3); }

typedef kiln_tensor *(*scalarop)(kiln_ctx *, kiln_tensor *, float);

static void with_scalar(smoke *s, scalarop f, double (*r)(double, double), float c, float lo, float hi) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 5}, NULL, lo, hi, true);
    s->out = f(s->ctx, t, c);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++) o[i] = r(x[i], c);
}

static void run_add_scalar(smoke *s) { with_scalar(s, kiln_add_scalar, r_add, 1.5f, -2, 2); }
static void run_mul_scalar(smoke *s) { with_scalar(s, kiln_mul_scalar, r_mul, -2.5f, -2, 2); }
static void run_pow_scalar(smoke *s) { with_scalar(s, kiln_pow_scalar, r_pow, 3.0f, 0.25f, 2); }
static void run_minimum_scalar(smoke *s) { with_scalar(s, kiln_minimum_scalar, r_minimum, 0.3f, -2, 2); }
static void run_maximum_scalar(smoke *s) { with_scalar(s, kiln_maximum_scalar, r_maximum, 0.3f, -2, 2); }

/* ---- reductions over axis 1 of [3, 5] ----------------------------------------------------- */

enum { RED_SUM, RED_MEAN, RED_MAX, RED_MIN, RED_ARGMAX };

static void reduce(smoke *s, int kind) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 5}, NULL, -2, 2, true);
    int axis = 1;
    switch (kind) {
    case RED_SUM: s->out = kiln_sum(s->ctx, t, 1, &axis, false); break;
    case RED_MEAN: s->out = kiln_mean(s->ctx, t, 1, &axis, false); break;
    case RED_MAX: s->out = kiln_max(s->ctx, t, 1, &axis, false); break;
    case RED_MIN: s->out = kiln_min(s->ctx, t, 1, &axis, false); break;
    default: s->out = kiln_argmax(s->ctx, t, axis, false); break;
    }
    double *o = expect(s, 3);
    for (int r = 0; r < 3; r++) {
        double sum = 0, mx = -INFINITY, mn = INFINITY;
        int am = 0;
        for (int c = 0; c < 5; c++) {
            double v = x[r * 5 + c];
            sum += v;
            if (v > mx) mx = v, am = c;
            if (v < mn) mn = v;
        }
        o[r] = kind == RED_SUM ? sum : kind == RED_MEAN ? sum / 5 : kind == RED_MAX ? mx : kind == RED_MIN ? mn : am;
    }
}

static void run_sum(smoke *s) { reduce(s, RED_SUM); }
static void run_mean(smoke *s) { reduce(s, RED_MEAN); }
static void run_max(smoke *s) { reduce(s, RED_MAX); }
static void run_min(smoke *s) { reduce(s, RED_MIN); }
static void run_argmax(smoke *s) { reduce(s, RED_ARGMAX); }

/* ---- matrix products ---------------------------------------------------------------------- */

static void matmul(smoke *s, bool trans_b) {
    const float *a, *b;
    kiln_tensor *ta = input(s, &a, 2, (int64_t[]){2, 3}, NULL, -1, 1, true);
    kiln_tensor *tb = input(s, &b, 2, trans_b ? (int64_t[]){4, 3} : (int64_t[]){3, 4}, NULL, -1, 1, true);
    s->out = trans_b ? kiln_matmul_ex(s->ctx, ta, tb, KILN_TRANS_B) : kiln_matmul(s->ctx, ta, tb);
    double *o = expect(s, 8);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) {
            double acc = 0;
            for (int k = 0; k < 3; k++) acc += (double)a[i * 3 + k] * (trans_b ? b[j * 3 + k] : b[k * 4 + j]);
            o[i * 4 + j] = acc;
        }
}

static void run_matmul(smoke *s) { matmul(s, false); }
static void run_matmul_ex(smoke *s) { matmul(s, true); }

/* ---- views of x [2, 3, 4] ------------------------------------------------------------------ */

static const int64_t X3[3] = {2, 3, 4};

static kiln_tensor *x3(smoke *s, const float **x) { return input(s, x, 3, X3, NULL, -2, 2, true); }

static void same_as(smoke *s, const float *x, int64_t n) {
    double *o = expect(s, n);
    for (int64_t i = 0; i < n; i++) o[i] = x[i];
}

static void run_reshape(smoke *s) {
    const float *x;
    s->out = kiln_reshape(s->ctx, x3(s, &x), 2, (int64_t[]){6, -1});
    same_as(s, x, 24);
}

static void run_view(smoke *s) {
    const float *x;
    s->out = kiln_view(s->ctx, x3(s, &x), 2, (int64_t[]){4, 6});
    same_as(s, x, 24);
}

static void run_transpose(smoke *s) {
    const float *x;
    s->out = kiln_transpose(s->ctx, x3(s, &x), 0, 2);
    permute_ref(x, 3, X3, (int[]){2, 1, 0}, expect(s, 24));
}

static void run_permute(smoke *s) {
    const float *x;
    s->out = kiln_permute(s->ctx, x3(s, &x), (int[]){2, 0, 1});
    permute_ref(x, 3, X3, (int[]){2, 0, 1}, expect(s, 24));
}

static void run_contiguous(smoke *s) {
    const float *x;
    s->out = kiln_contiguous(s->ctx, kiln_transpose(s->ctx, x3(s, &x), 1, 2)); /* a copy, not a view */
    permute_ref(x, 3, X3, (int[]){0, 2, 1}, expect(s, 24));
}

static void run_slice(smoke *s) {
    const float *x;
    s->out = kiln_slice(s->ctx, x3(s, &x), 2, 1, 4, 2); /* [2, 3, 2]: columns 1 and 3 */
    double *o = expect(s, 12);
    for (int i = 0; i < 6; i++) o[2 * i] = x[4 * i + 1], o[2 * i + 1] = x[4 * i + 3];
}

static void run_expand(smoke *s) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 1}, NULL, -2, 2, true);
    s->out = kiln_expand(s->ctx, t, 3, X3);
    double *o = expect(s, 24);
    for (int i = 0; i < 24; i++) o[i] = x[(i / 4) % 3];
}

static void run_unsqueeze(smoke *s) {
    const float *x;
    s->out = kiln_unsqueeze(s->ctx, x3(s, &x), 1);
    same_as(s, x, 24);
}

static void run_squeeze(smoke *s) {
    const float *x;
    s->out = kiln_squeeze(s->ctx, input(s, &x, 3, (int64_t[]){2, 1, 3}, NULL, -2, 2, true), 1);
    same_as(s, x, 6);
}

static void run_clone(smoke *s) {
    const float *x;
    s->out = kiln_clone(s->ctx, x3(s, &x));
    same_as(s, x, 24);
}

/* f32 -> f16 -> f32: each value rounded to f16 (the host's conversion) */
static void run_to_dtype(smoke *s) {
    const float *x;
    kiln_tensor *h = kiln_to_dtype(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), KILN_F16);
    s->out = kiln_to_dtype(s->ctx, h, KILN_F32);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++) o[i] = kiln_f16_to_f32(kiln_f32_to_f16(x[i]));
}

/* ---- activations on [3, 5] ------------------------------------------------------------------ */

static void run_leaky_relu(smoke *s) {
    const float *x;
    s->out = kiln_leaky_relu(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), 0.1f);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++) o[i] = x[i] > 0 ? x[i] : 0.1 * x[i];
}

static void run_elu(smoke *s) {
    const float *x;
    s->out = kiln_elu(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), 1.0f);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++) o[i] = x[i] > 0 ? x[i] : expm1(x[i]);
}

static void run_gelu(smoke *s) {
    const float *x;
    s->out = kiln_gelu(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), false);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++) o[i] = r_gelu(x[i]);
}

static void run_gelu_tanh(smoke *s) {
    const float *x;
    s->out = kiln_gelu(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), true);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++) o[i] = r_gelu_tanh(x[i]);
}

static void run_softplus(smoke *s) {
    const float *x;
    s->out = kiln_softplus(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), 1.0f, 20.0f);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++) o[i] = log1p(exp(x[i]));
}

static void softmax(smoke *s, bool logs) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true);
    s->out = logs ? kiln_log_softmax(s->ctx, t, 1) : kiln_softmax(s->ctx, t, 1);
    double *o = expect(s, 15);
    for (int r = 0; r < 3; r++) {
        double se = 0;
        for (int c = 0; c < 5; c++) se += exp(x[r * 5 + c]);
        for (int c = 0; c < 5; c++) o[r * 5 + c] = logs ? x[r * 5 + c] - log(se) : exp(x[r * 5 + c]) / se;
    }
}

static void run_softmax(smoke *s) { softmax(s, false); }
static void run_log_softmax(smoke *s) { softmax(s, true); }

/* ---- shape ops of functional.h -------------------------------------------------------------- */

static void run_concat(smoke *s) {
    const float *a, *b;
    kiln_tensor *ts[2] = {input(s, &a, 2, (int64_t[]){2, 3}, NULL, -2, 2, true),
                          input(s, &b, 2, (int64_t[]){2, 2}, NULL, -2, 2, true)};
    s->out = kiln_concat(s->ctx, 2, ts, 1);
    double *o = expect(s, 10);
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 5; c++) o[r * 5 + c] = c < 3 ? a[r * 3 + c] : b[r * 2 + c - 3];
}

static void run_stack(smoke *s) {
    const float *a, *b;
    kiln_tensor *ts[2] = {input(s, &a, 2, (int64_t[]){2, 3}, NULL, -2, 2, true),
                          input(s, &b, 2, (int64_t[]){2, 3}, NULL, -2, 2, true)};
    s->out = kiln_stack(s->ctx, 2, ts, 0);
    double *o = expect(s, 12);
    for (int i = 0; i < 6; i++) o[i] = a[i], o[6 + i] = b[i];
}

static void run_pad(smoke *s) {
    const float *x;
    s->out = kiln_pad(s->ctx, input(s, &x, 2, (int64_t[]){2, 3}, NULL, -2, 2, true), 2, (int64_t[]){1, 2}, 0.5f);
    double *o = expect(s, 12);
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 6; c++) o[r * 6 + c] = c >= 1 && c < 4 ? x[r * 3 + c - 1] : 0.5;
}

static void run_flatten(smoke *s) {
    const float *x;
    s->out = kiln_flatten(s->ctx, x3(s, &x), 1, 2);
    same_as(s, x, 24);
}

static void run_index_select(smoke *s) {
    const float *x;
    static const int32_t idx[3] = {2, 0, 2};
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){4, 3}, NULL, -2, 2, true);
    s->out = kiln_index_select(s->ctx, t, 0, indices(s, 1, (int64_t[]){3}, idx));
    double *o = expect(s, 9);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 3; c++) o[r * 3 + c] = x[idx[r] * 3 + c];
}

static void run_gather(smoke *s) {
    const float *x;
    static const int32_t idx[6] = {0, 3, 1, 1, 2, 0};
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 4}, NULL, -2, 2, true);
    s->out = kiln_gather(s->ctx, t, 1, indices(s, 2, (int64_t[]){3, 2}, idx));
    double *o = expect(s, 6);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++) o[r * 2 + c] = x[r * 4 + idx[r * 2 + c]];
}

/* ---- convolution --------------------------------------------------------------------------- */

/* conv2d: x [1, 2, 5, 5], w [3, 2, 3, 3], bias, stride 1, padding 1 -> [1, 3, 5, 5]. */
static void run_conv2d(smoke *s) {
    const float *x, *w, *b;
    kiln_tensor *tx = input(s, &x, 4, (int64_t[]){1, 2, 5, 5}, NULL, -1, 1, true);
    kiln_tensor *tw = input(s, &w, 4, (int64_t[]){3, 2, 3, 3}, NULL, -1, 1, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){3}, NULL, -1, 1, true);
    kiln_conv2d_params p = {.stride = {1, 1}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1};
    s->out = kiln_conv2d(s->ctx, tx, tw, tb, &p);
    double *o = expect(s, 75);
    for (int co = 0; co < 3; co++)
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 5; j++) {
                double acc = b[co];
                for (int ci = 0; ci < 2; ci++)
                    for (int kh = 0; kh < 3; kh++)
                        for (int kw = 0; kw < 3; kw++) {
                            int y = i - 1 + kh, z = j - 1 + kw;
                            if (y >= 0 && y < 5 && z >= 0 && z < 5)
                                acc += (double)x[(ci * 5 + y) * 5 + z] * w[((co * 2 + ci) * 3 + kh) * 3 + kw];
                        }
                o[(co * 5 + i) * 5 + j] = acc;
            }
}

/* conv_transpose2d: x [1, 2, 3, 3], w [2, 3, 3, 3], bias, stride 2, padding 1,
 * output_padding 1 -> [1, 3, 6, 6]. */
static void run_conv_transpose2d(smoke *s) {
    const float *x, *w, *b;
    kiln_tensor *tx = input(s, &x, 4, (int64_t[]){1, 2, 3, 3}, NULL, -1, 1, true);
    kiln_tensor *tw = input(s, &w, 4, (int64_t[]){2, 3, 3, 3}, NULL, -1, 1, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){3}, NULL, -1, 1, true);
    kiln_conv2d_params p = {
        .stride = {2, 2}, .padding = {1, 1}, .dilation = {1, 1}, .groups = 1, .output_padding = {1, 1}};
    s->out = kiln_conv_transpose2d(s->ctx, tx, tw, tb, &p);
    double *o = expect(s, 108);
    for (int co = 0; co < 3; co++)
        for (int k = 0; k < 36; k++) o[co * 36 + k] = b[co];
    for (int ci = 0; ci < 2; ci++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                for (int co = 0; co < 3; co++)
                    for (int kh = 0; kh < 3; kh++)
                        for (int kw = 0; kw < 3; kw++) {
                            int y = i * 2 - 1 + kh, z = j * 2 - 1 + kw;
                            if (y >= 0 && y < 6 && z >= 0 && z < 6)
                                o[(co * 6 + y) * 6 + z] +=
                                    (double)x[(ci * 3 + i) * 3 + j] * w[((ci * 3 + co) * 3 + kh) * 3 + kw];
                        }
}

/* ---- pooling and upsampling on x [1, 2, 4, 4] ------------------------------------------------ */

static void pool2(smoke *s, bool max) {
    const float *x;
    kiln_tensor *t = input(s, &x, 4, (int64_t[]){1, 2, 4, 4}, NULL, -2, 2, true);
    kiln_pool2d_params p = {.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}};
    s->out = max ? kiln_max_pool2d(s->ctx, t, &p, NULL) : kiln_avg_pool2d(s->ctx, t, &p);
    double *o = expect(s, 8);
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) {
                double m = -INFINITY, sum = 0;
                for (int a = 0; a < 2; a++)
                    for (int b = 0; b < 2; b++) {
                        double v = x[(c * 4 + 2 * i + a) * 4 + 2 * j + b];
                        sum += v;
                        m = v > m ? v : m;
                    }
                o[(c * 2 + i) * 2 + j] = max ? m : sum / 4;
            }
}

static void run_max_pool2d(smoke *s) { pool2(s, true); }
static void run_avg_pool2d(smoke *s) { pool2(s, false); }

static void run_global_avg_pool2d(smoke *s) {
    const float *x;
    s->out = kiln_global_avg_pool2d(s->ctx, input(s, &x, 4, (int64_t[]){2, 3, 3, 2}, NULL, -2, 2, true));
    double *o = expect(s, 6);
    for (int p = 0; p < 6; p++) {
        double sum = 0;
        for (int k = 0; k < 6; k++) sum += x[p * 6 + k];
        o[p] = sum / 6;
    }
}

/* x [1, 1, 2, 3]: nearest to 4 x 6 (each pixel twice each way), bilinear with
 * align_corners to 3 x 5 (source coordinates i/2, j/2). */
static void run_upsample_nearest(smoke *s) {
    const float *x;
    kiln_tensor *t = input(s, &x, 4, (int64_t[]){1, 1, 2, 3}, NULL, -2, 2, true);
    s->out = kiln_upsample(s->ctx, t, 4, 6, KILN_UPSAMPLE_NEAREST, false);
    double *o = expect(s, 24);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 6; j++) o[i * 6 + j] = x[(i / 2) * 3 + j / 2];
}

static void run_upsample_bilinear(smoke *s) {
    const float *x;
    kiln_tensor *t = input(s, &x, 4, (int64_t[]){1, 1, 2, 3}, NULL, -2, 2, true);
    s->out = kiln_upsample(s->ctx, t, 3, 5, KILN_UPSAMPLE_BILINEAR, true);
    double *o = expect(s, 15);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 5; j++) {
            double sy = i * 0.5, sx = j * 0.5;
            int y0 = (int)sy, x0 = (int)sx, y1 = y0 + (y0 < 1), x1 = x0 + (x0 < 2);
            double fy = sy - y0, fx = sx - x0;
            o[i * 5 + j] = (1 - fy) * ((1 - fx) * x[y0 * 3 + x0] + fx * x[y0 * 3 + x1]) +
                           fy * ((1 - fx) * x[y1 * 3 + x0] + fx * x[y1 * 3 + x1]);
        }
}

/* ---- normalisation, dropout, embedding ---------------------------------------------------- */

static void run_batch_norm(smoke *s) {
    const float *x, *w, *b;
    static const float zeros[3] = {0, 0, 0}, ones[3] = {1, 1, 1};
    kiln_tensor *tx = input(s, &x, 2, (int64_t[]){4, 3}, NULL, -2, 2, true);
    /* the running statistics are f32 buffers whatever the input's dtype */
    kiln_tensor *rm = kiln_from_host(s->ctx, zeros, KILN_F32, 1, (int64_t[]){3});
    kiln_tensor *rv = kiln_from_host(s->ctx, ones, KILN_F32, 1, (int64_t[]){3});
    kiln_tensor *tw = input(s, &w, 1, (int64_t[]){3}, NULL, 0.5f, 1.5f, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){3}, NULL, -0.5f, 0.5f, true);
    s->out = kiln_batch_norm(s->ctx, tx, rm, rv, tw, tb, true, 0.1f, 1e-5f);
    double *o = expect(s, 12);
    for (int c = 0; c < 3; c++) {
        double m = 0, v = 0;
        for (int n = 0; n < 4; n++) m += x[n * 3 + c] / 4.0;
        for (int n = 0; n < 4; n++) v += (x[n * 3 + c] - m) * (x[n * 3 + c] - m) / 4.0;
        for (int n = 0; n < 4; n++) o[n * 3 + c] = (x[n * 3 + c] - m) / sqrt(v + 1e-5) * w[c] + b[c];
    }
}

static void run_layer_norm(smoke *s) {
    const float *x, *w, *b;
    kiln_tensor *tx = input(s, &x, 2, (int64_t[]){3, 4}, NULL, -2, 2, true);
    kiln_tensor *tw = input(s, &w, 1, (int64_t[]){4}, NULL, 0.5f, 1.5f, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){4}, NULL, -0.5f, 0.5f, true);
    s->out = kiln_layer_norm(s->ctx, tx, 1, tw, tb, 1e-5f);
    double *o = expect(s, 12);
    for (int r = 0; r < 3; r++) {
        double m = 0, v = 0;
        for (int c = 0; c < 4; c++) m += x[r * 4 + c] / 4.0;
        for (int c = 0; c < 4; c++) v += (x[r * 4 + c] - m) * (x[r * 4 + c] - m) / 4.0;
        for (int c = 0; c < 4; c++) o[r * 4 + c] = (x[r * 4 + c] - m) / sqrt(v + 1e-5) * w[c] + b[c];
    }
}

/* Each element of dropout(x, 0.5) is 0 or 2x. */
static const char *dropout_verify(smoke *s, const float *got, int64_t n) {
    const float *x = s->host[0];
    for (int64_t i = 0; i < n; i++)
        if (got[i] != 0 && fabs(got[i] - 2.0 * x[i]) > 1e-6 * fabs(2.0 * x[i]))
            return "an element is neither 0 nor x/(1-p)";
    return NULL;
}

static void run_dropout(smoke *s) {
    s->out = kiln_dropout(s->ctx, input(s, NULL, 2, (int64_t[]){4, 8}, NULL, 0.5f, 2, true), 0.5f, true);
    s->verify = dropout_verify;
}

static void run_embedding(smoke *s) {
    const float *w;
    static const int32_t idx[4] = {4, 0, 2, 4};
    kiln_tensor *tw = input(s, &w, 2, (int64_t[]){5, 3}, NULL, -2, 2, true);
    s->out = kiln_embedding(s->ctx, tw, indices(s, 1, (int64_t[]){4}, idx));
    double *o = expect(s, 12);
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 3; c++) o[r * 3 + c] = w[idx[r] * 3 + c];
}

/* ---- recurrent layers: one layer over 3 steps, batch 2, against a double-precision loop -- */

static double sig(double v) { return 1.0 / (1.0 + exp(-v)); }

static void rnn_smoke(smoke *s, kiln_rnn_mode mode) {
    enum { T = 3, B = 2, I = 3, H = 2 };
    int G = mode == KILN_RNN_LSTM ? 4 : mode == KILN_RNN_GRU ? 3 : 1;
    const float *x, *wi, *wh, *bi, *bh;
    kiln_tensor *w[4];
    kiln_tensor *tx = input(s, &x, 3, (int64_t[]){T, B, I}, NULL, -1, 1, true);
    w[0] = input(s, &wi, 2, (int64_t[]){G * H, I}, NULL, -0.7f, 0.7f, true);
    w[1] = input(s, &wh, 2, (int64_t[]){G * H, H}, NULL, -0.7f, 0.7f, true);
    w[2] = input(s, &bi, 1, (int64_t[]){G * H}, NULL, -0.5f, 0.5f, true);
    w[3] = input(s, &bh, 1, (int64_t[]){G * H}, NULL, -0.5f, 0.5f, true);
    if (!tx || !w[0] || !w[1] || !w[2] || !w[3]) return;
    s->out = kiln_rnn(s->ctx, mode, tx, NULL, NULL, 4, w, NULL, NULL, true, NULL, NULL);
    double *o = expect(s, T * B * H), h[B][H] = {{0}}, c[B][H] = {{0}};
    for (int t = 0; t < T; t++) {
        for (int b = 0; b < B; b++) {
            double a[4 * H], ah[4 * H], hn[H];
            for (int r = 0; r < G * H; r++) {
                a[r] = bi[r];
                ah[r] = bh[r];
                for (int k = 0; k < I; k++) a[r] += wi[r * I + k] * x[(t * B + b) * I + k];
                for (int k = 0; k < H; k++) ah[r] += wh[r * H + k] * h[b][k];
            }
            for (int j = 0; j < H; j++) {
                if (mode == KILN_RNN_LSTM) {
                    double ig = sig(a[j] + ah[j]), fg = sig(a[H + j] + ah[H + j]);
                    double gg = tanh(a[2 * H + j] + ah[2 * H + j]), og = sig(a[3 * H + j] + ah[3 * H + j]);
                    c[b][j] = fg * c[b][j] + ig * gg;
                    hn[j] = og * tanh(c[b][j]);
                } else if (mode == KILN_RNN_GRU) {
                    double r = sig(a[j] + ah[j]), z = sig(a[H + j] + ah[H + j]);
                    double n = tanh(a[2 * H + j] + r * ah[2 * H + j]);
                    hn[j] = (1 - z) * n + z * h[b][j];
                } else {
                    double v = a[j] + ah[j];
                    hn[j] = mode == KILN_RNN_RNN_RELU ? (v > 0 ? v : 0) : tanh(v);
                }
            }
            for (int j = 0; j < H; j++) o[(t * B + b) * H + j] = h[b][j] = hn[j];
        }
    }
}
static void run_lstm(smoke *s) { rnn_smoke(s, KILN_RNN_LSTM); }
static void run_gru(smoke *s) { rnn_smoke(s, KILN_RNN_GRU); }
static void run_rnn_tanh(smoke *s) { rnn_smoke(s, KILN_RNN_RNN_TANH); }
static void run_rnn_relu(smoke *s) { rnn_smoke(s, KILN_RNN_RNN_RELU); }
/* ---- attention: q [2, 3, 4], k [2, 5, 4], v [2, 5, 3], causal --------------------------------- */

static void run_scaled_dot_product_attention(smoke *s) {
    const float *q, *k, *v;
    kiln_tensor *tq = input(s, &q, 3, (int64_t[]){2, 3, 4}, NULL, -1, 1, true);
    kiln_tensor *tk = input(s, &k, 3, (int64_t[]){2, 5, 4}, NULL, -1, 1, true);
    kiln_tensor *tv = input(s, &v, 3, (int64_t[]){2, 5, 3}, NULL, -1, 1, true);
    kiln_sdpa_opts o = kiln_sdpa_defaults();
    o.is_causal = true;
    s->out = kiln_scaled_dot_product_attention(s->ctx, tq, tk, tv, NULL, &o);
    double *out = expect(s, 18);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 3; i++) {
            double w[5], mx = -INFINITY, sum = 0;
            for (int j = 0; j <= i; j++) {
                w[j] = 0;
                for (int e = 0; e < 4; e++) w[j] += q[(b * 3 + i) * 4 + e] * k[(b * 5 + j) * 4 + e] / 2.0;
                mx = fmax(mx, w[j]);
            }
            for (int j = 0; j <= i; j++) sum += w[j] = exp(w[j] - mx);
            for (int e = 0; e < 3; e++) {
                double a = 0;
                for (int j = 0; j <= i; j++) a += w[j] / sum * v[(b * 5 + j) * 3 + e];
                out[(b * 3 + i) * 3 + e] = a;
            }
        }
}

/* ---- losses (mean reduction) ---------------------------------------------------------------- */

enum { L_MSE, L_L1, L_SMOOTH_L1, L_BCE, L_BCEL };

static void pointwise_loss(smoke *s, int kind) {
    const float *x, *t;
    bool probs = kind == L_BCE, targets01 = kind == L_BCE || kind == L_BCEL;
    kiln_tensor *tx = input(s, &x, 2, (int64_t[]){3, 4}, NULL, probs ? 0.1f : -2, probs ? 0.9f : 2, true);
    kiln_tensor *tt = input(s, &t, 2, (int64_t[]){3, 4}, NULL, targets01 ? 0 : -2, targets01 ? 1 : 2, false);
    switch (kind) {
    case L_MSE: s->out = kiln_mse_loss(s->ctx, tx, tt, KILN_MEAN); break;
    case L_L1: s->out = kiln_l1_loss(s->ctx, tx, tt, KILN_MEAN); break;
    case L_SMOOTH_L1: s->out = kiln_smooth_l1_loss(s->ctx, tx, tt, KILN_MEAN, 1.0f); break;
    case L_BCE: s->out = kiln_bce_loss(s->ctx, tx, tt, NULL, KILN_MEAN); break;
    default: s->out = kiln_bce_with_logits(s->ctx, tx, tt, NULL, NULL, KILN_MEAN); break;
    }
    double sum = 0;
    for (int i = 0; i < 12; i++) {
        double a = x[i], b = t[i], d = fabs(a - b);
        switch (kind) {
        case L_MSE: sum += d * d; break;
        case L_L1: sum += d; break;
        case L_SMOOTH_L1: sum += d < 1 ? 0.5 * d * d : d - 0.5; break;
        case L_BCE: sum -= b * log(a) + (1 - b) * log(1 - a); break;
        default: sum += fmax(a, 0) - a * b + log1p(exp(-fabs(a))); break;
        }
    }
    expect(s, 1)[0] = sum / 12;
}

static void run_mse_loss(smoke *s) { pointwise_loss(s, L_MSE); }
static void run_l1_loss(smoke *s) { pointwise_loss(s, L_L1); }
static void run_smooth_l1_loss(smoke *s) { pointwise_loss(s, L_SMOOTH_L1); }
static void run_bce_loss(smoke *s) { pointwise_loss(s, L_BCE); }
static void run_bce_with_logits(smoke *s) { pointwise_loss(s, L_BCEL); }

static void run_lsgan_loss(smoke *s) {
    const float *x;
    s->out = kiln_lsgan_loss(s->ctx, input(s, &x, 2, (int64_t[]){3, 4}, NULL, -2, 2, true), 1.0f, KILN_MEAN);
    double sum = 0;
    for (int i = 0; i < 12; i++) sum += 0.5 * (x[i] - 1.0) * (x[i] - 1.0);
    expect(s, 1)[0] = sum / 12;
}

/* Cross-entropy of logits [4, 3]; kind 0 plain, 1 with class weights, ignore_index -1
 * (one label ignored) and label smoothing 0.1 (torch's formula), 2 nll_loss of the
 * logits read as log-probabilities. */
static void classification(smoke *s, int kind) {
    const float *x, *w = NULL;
    static const int32_t plain[4] = {0, 2, 1, 2}, ignored[4] = {0, 2, -1, 1};
    const int32_t *lab = kind == 1 ? ignored : plain;
    kiln_tensor *tx = input(s, &x, 2, (int64_t[]){4, 3}, NULL, -2, 2, true);
    kiln_tensor *ty = indices(s, 1, (int64_t[]){4}, lab);
    if (kind == 0) s->out = kiln_cross_entropy(s->ctx, tx, ty, KILN_MEAN);
    if (kind == 1) {
        kiln_tensor *tw = input(s, &w, 1, (int64_t[]){3}, (const float[]){0.5f, 1.0f, 2.0f}, 0, 0, false);
        s->out = kiln_cross_entropy_ex(s->ctx, tx, ty, tw, -1, 0.1f, KILN_MEAN);
    }
    if (kind == 2) s->out = kiln_nll_loss(s->ctx, tx, ty, NULL, -100, KILN_MEAN);
    double num = 0, den = 0, eps = kind == 1 ? 0.1 : 0;
    for (int r = 0; r < 4; r++) {
        if (lab[r] < 0) continue;
        double se = 0, lp[3];
        for (int c = 0; c < 3; c++) se += exp(x[r * 3 + c]);
        for (int c = 0; c < 3; c++) lp[c] = kind == 2 ? x[r * 3 + c] : x[r * 3 + c] - log(se);
        double wy = w ? w[lab[r]] : 1, smooth = 0;
        for (int c = 0; c < 3; c++) smooth -= (w ? w[c] : 1) * lp[c];
        num += (1 - eps) * wy * -lp[lab[r]] + eps / 3 * smooth;
        den += wy;
    }
    expect(s, 1)[0] = num / den;
}

static void run_cross_entropy(smoke *s) { classification(s, 0); }
static void run_cross_entropy_ex(smoke *s) { classification(s, 1); }
static void run_nll_loss(smoke *s) { classification(s, 2); }

static void penalty(smoke *s, bool l2) {
    const float *a, *b;
    kiln_tensor *ts[2] = {input(s, &a, 2, (int64_t[]){2, 3}, NULL, -2, 2, true),
                          input(s, &b, 1, (int64_t[]){4}, NULL, -2, 2, true)};
    s->out = l2 ? kiln_l2_penalty(s->ctx, 2, ts) : kiln_l1_penalty(s->ctx, 2, ts);
    double sum = 0;
    for (int i = 0; i < 6; i++) sum += l2 ? (double)a[i] * a[i] : fabs(a[i]);
    for (int i = 0; i < 4; i++) sum += l2 ? (double)b[i] * b[i] : fabs(b[i]);
    expect(s, 1)[0] = sum;
}

static void run_l1_penalty(smoke *s) { penalty(s, false); }
static void run_l2_penalty(smoke *s) { penalty(s, true); }

/* ---- optimizer updates and clipping: one step on p [2, 5] with grad = d sum(p^2) = 2p --- */

static kiln_tensor *param_with_grad(smoke *s, const float **p) {
    kiln_tensor *t = input(s, p, 2, (int64_t[]){2, 5}, NULL, -1, 1, false);
    if (!t || kiln_tensor_set_requires_grad(t, true) != KILN_OK) return NULL;
    kiln_tensor *loss = kiln_sum(s->ctx, kiln_mul(s->ctx, t, t), 0, NULL, false);
    if (!loss || kiln_backward(loss) != KILN_OK) return NULL;
    return t;
}

enum { OPT_SGD, OPT_RMSPROP, OPT_ADAM, OPT_ADAMW };

static void optimizer(smoke *s, int kind) {
    const float *p;
    kiln_tensor *t = param_with_grad(s, &p);
    if (!t) return;
    kiln_optim *opt = NULL;
    kiln_sgd_opts sgd = kiln_sgd_defaults();
    sgd.lr = 0.1;
    kiln_rmsprop_opts rms = kiln_rmsprop_defaults();
    kiln_adam_opts adam = kiln_adam_defaults(), adamw = kiln_adamw_defaults();
    switch (kind) {
    case OPT_SGD: opt = kiln_sgd(s->ctx, &t, 1, &sgd); break;
    case OPT_RMSPROP: opt = kiln_rmsprop(s->ctx, &t, 1, &rms); break;
    case OPT_ADAM: opt = kiln_adam(s->ctx, &t, 1, &adam); break;
    default: opt = kiln_adamw(s->ctx, &t, 1, &adamw); break;
    }
    if (!opt) return;
    if (kiln_optim_step(opt) == KILN_OK) s->out = t;
    kiln_sync(s->ctx);
    kiln_optim_free(opt);
    double *o = expect(s, 10);
    for (int i = 0; i < 10; i++) {
        double g = 2.0 * p[i];
        switch (kind) {
        case OPT_SGD: o[i] = p[i] - 0.1 * g; break;
        case OPT_RMSPROP: o[i] = p[i] - rms.lr * g / (sqrt((1 - rms.alpha) * g * g) + rms.eps); break;
        /* step 1: the bias-corrected moments are g and g^2 */
        case OPT_ADAM: o[i] = p[i] - adam.lr * g / (fabs(g) + adam.eps); break;
        default: o[i] = p[i] * (1 - adamw.lr * adamw.weight_decay) - adamw.lr * g / (fabs(g) + adamw.eps); break;
        }
    }
}

static void run_sgd(smoke *s) { optimizer(s, OPT_SGD); }
static void run_rmsprop(smoke *s) { optimizer(s, OPT_RMSPROP); }
static void run_adam(smoke *s) { optimizer(s, OPT_ADAM); }
static void run_adamw(smoke *s) { optimizer(s, OPT_ADAMW); }

static void run_clip_grad_norm(smoke *s) {
    const float *p;
    kiln_tensor *t = param_with_grad(s, &p);
    if (!t) return;
    s->out = kiln_clip_grad_norm_tensor(s->ctx, 1, &t, 1.0, 2.0);
    double sq = 0;
    for (int i = 0; i < 10; i++) sq += 4.0 * p[i] * p[i];
    expect(s, 1)[0] = sqrt(sq);
}

static void run_clip_grad_value(smoke *s) {
    const float *p;
    kiln_tensor *t = param_with_grad(s, &p);
    if (!t) return;
    if (kiln_clip_grad_value(s->ctx, 1, &t, 0.5) == KILN_OK) s->out = kiln_tensor_grad(t);
    double *o = expect(s, 10);
    for (int i = 0; i < 10; i++) o[i] = fmin(fmax(2.0 * p[i], -0.5), 0.5);
}

/* ---- creation and copies ------------------------------------------------------------------ */

static void run_from_host(smoke *s) {
    const float *x;
    s->out = input(s, &x, 2, (int64_t[]){3, 5}, NULL, -2, 2, false);
    same_as(s, x, 15);
}

/* kiln_empty's values are unspecified: only its size is checked. */
static void run_empty(smoke *s) {
    s->out = kiln_empty(s->ctx, KILN_F32, 2, (int64_t[]){3, 5});
    s->size_only = 15;
}

static void fill_ref(smoke *s, int64_t n, double v) {
    double *o = expect(s, n);
    for (int64_t i = 0; i < n; i++) o[i] = v;
}

static void run_full(smoke *s) {
    s->out = kiln_full(s->ctx, -1.5f, 3, X3);
    fill_ref(s, 24, -1.5);
}

static void run_zeros(smoke *s) {
    s->out = kiln_zeros(s->ctx, 3, X3);
    fill_ref(s, 24, 0);
}

static void run_ones(smoke *s) {
    s->out = kiln_ones(s->ctx, 3, X3);
    fill_ref(s, 24, 1);
}

static void run_arange(smoke *s) {
    s->out = kiln_arange(s->ctx, -2, 3, 0.5);
    double *o = expect(s, 10);
    for (int i = 0; i < 10; i++) o[i] = -2 + 0.5 * i;
}

/* fill of a strided view: every other column of a [3, 4] of zeros */
static void run_fill(smoke *s) {
    kiln_tensor *t = kiln_zeros(s->ctx, 2, (int64_t[]){3, 4});
    if (t && kiln_fill(kiln_slice(s->ctx, t, 1, 0, 4, 2), 2.5f) == KILN_OK) s->out = t;
    double *o = expect(s, 12);
    for (int i = 0; i < 12; i++) o[i] = i % 2 ? 0 : 2.5;
}

/* copy of a [4, 3] into the transposed view of a [3, 4] */
static void run_copy(smoke *s) {
    const float *x;
    kiln_tensor *src = input(s, &x, 2, (int64_t[]){4, 3}, NULL, -2, 2, false);
    kiln_tensor *dst = kiln_zeros(s->ctx, 2, (int64_t[]){3, 4});
    if (dst && s->dt != KILN_F32) dst = kiln_to_dtype(s->ctx, dst, s->dt);
    if (src && dst && kiln_copy(kiln_transpose(s->ctx, dst, 0, 1), src) == KILN_OK) s->out = dst;
    permute_ref(x, 2, (int64_t[]){4, 3}, (int[]){1, 0}, expect(s, 12));
}

/* ---- random: ranges and moments of 4096 draws ---------------------------------------------- */

static const char *uniform_verify(smoke *s, const float *got, int64_t n) {
    (void)s;
    for (int64_t i = 0; i < n; i++)
        if (!(got[i] >= -1.0f && got[i] < 3.0f)) return "an element outside [-1, 3)";
    return NULL;
}

/* mean 1, std 2: the sample mean of 4096 is within 0.2 (more than 6 standard errors) */
static const char *normal_verify(smoke *s, const float *got, int64_t n) {
    (void)s;
    double sum = 0, sq = 0;
    for (int64_t i = 0; i < n; i++) sum += got[i], sq += (double)got[i] * got[i];
    double mean = sum / (double)n, var = sq / (double)n - mean * mean;
    if (fabs(mean - 1.0) > 0.2) return "the sample mean is not within 0.2 of 1";
    if (fabs(sqrt(var) - 2.0) > 0.2) return "the sample standard deviation is not within 0.2 of 2";
    return NULL;
}

static void run_rand_uniform(smoke *s) {
    kiln_manual_seed(s->ctx, 7);
    s->out = kiln_rand_uniform(s->ctx, -1, 3, 2, (int64_t[]){64, 64});
    s->verify = uniform_verify;
}

static void run_rand_normal(smoke *s) {
    kiln_manual_seed(s->ctx, 7);
    s->out = kiln_rand_normal(s->ctx, 1, 2, 2, (int64_t[]){64, 64});
    s->verify = normal_verify;
}

/* top_k 1 of [4, 7] logits: the draw must be each row's argmax (distinct values) */
static void run_sample_logits(smoke *s) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){4, 7}, NULL, -3, 3, false);
    kiln_manual_seed(s->ctx, 7);
    s->out = kiln_sample_logits(s->ctx, t, 0.7f, 1);
    double *o = expect(s, 4);
    for (int r = 0; r < 4; r++) {
        int am = 0;
        for (int c = 1; c < 7; c++)
            if (x[r * 7 + c] > x[r * 7 + am]) am = c;
        o[r] = am;
    }
}

/* ---- the smoke run of every op of src/ops/registry.h ----------------------------------------- */

/* run_<name> of each op: a line of KILN__OPS without its run function fails to compile. */
static void (*const RUN[KILN__OP_COUNT])(smoke *s) = {
#define X(id, name, fn, fam, grad, golden, tests, refs) [KILN__OP_##id] = run_##name,
    KILN__OPS(X)
#undef X
};

#define NOPS KILN__OP_COUNT

static const kiln__op_info *op_info(int k) { return kiln__op_get((kiln__op)k); }

static const char *family_name(const kiln__op_info *op) { return kiln__family_get(op->family)->name; }

static bool is_optim(const kiln__op_info *op) { return op->family == KILN__FAM_OPTIM; }

/* The references of an op: torch when it has a golden case, then the registry's REF_*. */
static void refs_str(const kiln__op_info *op, char *buf, size_t cap) {
    unsigned r = op->refs;
    snprintf(buf, cap, "%s%s%s%s%s", op->golden_prefix ? "torch" : "", op->golden_prefix && r ? "," : "",
             r & KILN__REF_F64 ? "host-f64" : "", (r & KILN__REF_F64) && (r & KILN__REF_FD) ? "," : "",
             r & KILN__REF_FD ? "fd" : "");
}

/* ---- running one op on one device ------------------------------------------------------------ */

static bool all_finite(const float *v, int64_t n, int64_t *bad) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i])) {
            *bad = i;
            return false;
        }
    return true;
}

/* Reads a F32, F16, BF16 or I32 tensor as floats; NULL on error (message in why). */
static float *read_floats(kiln_tensor *t, char *why, size_t cap, const char *what) {
    int64_t n = kiln_tensor_numel(t);
    kiln_ctx *ctx = kiln_tensor_ctx(t);
    if (kiln_dtype_is_half(kiln_tensor_dtype(t)) && !(t = kiln_to_dtype(ctx, t, KILN_F32)))
        return snprintf(why, cap, "%s: %s", what, kiln_error_message(ctx)), NULL;
    float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!v) return snprintf(why, cap, "%s: out of host memory", what), NULL;
    kiln_status st;
    if (kiln_tensor_dtype(t) == KILN_I32) {
        int32_t *iv = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
        st = iv ? kiln_to_host(t, iv, sizeof(int32_t) * (size_t)n) : KILN_ERR_HOST_OUT_OF_MEMORY;
        for (int64_t i = 0; st == KILN_OK && i < n; i++) v[i] = (float)iv[i];
        free(iv);
    } else {
        st = kiln_to_host(t, v, sizeof(float) * (size_t)n);
    }
    if (st != KILN_OK) {
        const char *m = kiln_error_message(kiln_tensor_ctx(t));
        snprintf(why, cap, "%s: %s", what, m && *m ? m : kiln_status_str(st));
        free(v);
        return NULL;
    }
    return v;
}

static bool check(smoke *s, const kiln__op_info *op, char *why, size_t cap) {
    kiln_ctx *ctx = s->ctx;
    const char *msg = kiln_error_message(ctx);
    if (s->err[0]) return snprintf(why, cap, "%s", s->err), false;
    if (!s->out) return snprintf(why, cap, "forward failed: %s", *msg ? msg : "no result"), false;
    int64_t n = kiln_tensor_numel(s->out), bad;
    if (s->size_only) {
        if (n == s->size_only) return true;
        return snprintf(why, cap, "%lld elements, expected %lld", (long long)n, (long long)s->size_only), false;
    }
    kiln_dtype odt = kiln_tensor_dtype(s->out);
    if (s->dt != KILN_F32 && odt != s->dt && odt != KILN_I32 && odt != KILN_U8)
        return snprintf(why, cap, "%s inputs gave a %s result", kiln_dtype_name(s->dt), kiln_dtype_name(odt)), false;
    float *got = read_floats(s->out, why, cap, "reading the result");
    if (!got) return false;
    /* a half result: one more rounding, to the dtype's unit roundoff */
    double u = odt == KILN_F16 ? 0x1p-11 : odt == KILN_BF16 ? 0x1p-8 : 0.0;
    bool ok = false;
    if (!all_finite(got, n, &bad)) {
        snprintf(why, cap, "forward: element %lld is %g", (long long)bad, got[bad]);
    } else if (s->nref && s->nref != n) {
        snprintf(why, cap, "forward: %lld elements, expected %lld", (long long)n, (long long)s->nref);
    } else {
        ok = true;
        for (int64_t i = 0; ok && i < s->nref; i++)
            if (!(fabs(got[i] - s->ref[i]) <= s->atol + (s->rtol + u) * fabs(s->ref[i]))) {
                snprintf(why, cap, "forward: element %lld is %.9g, the host reference %.9g", (long long)i, got[i],
                         s->ref[i]);
                ok = false;
            }
        const char *v = ok && s->verify ? s->verify(s, got, n) : NULL;
        if (v) ok = false, snprintf(why, cap, "forward: %s", v);
    }
    free(got);
    if (!ok) return false;
    if (is_optim(op)) return true; /* updates in place: no output to differentiate */

    bool has = kiln_tensor_has_grad_fn(s->out);
    if (!op->grad) {
        if (has) return snprintf(why, cap, "records a backward rule, which src/ops/registry.h says it has not"), false;
        return true;
    }
    if (!has) return snprintf(why, cap, "no backward: the output of grad-requiring inputs has no grad_fn"), false;
    kiln_tensor *loss = kiln_sum(ctx, s->out, 0, NULL, false);
    if (!loss || kiln_backward(loss) != KILN_OK)
        return snprintf(why, cap, "backward failed: %s", kiln_error_message(ctx)), false;
    for (int k = 0; k < s->nleaf; k++) {
        kiln_tensor *g = kiln_tensor_grad(s->leaf[k]);
        if (!g) return snprintf(why, cap, "backward: input %d got no gradient", k), false;
        float *gv = read_floats(g, why, cap, "reading a gradient");
        if (!gv) return false;
        bool fin = all_finite(gv, kiln_tensor_numel(g), &bad);
        if (!fin) snprintf(why, cap, "backward: gradient of input %d, element %lld is %g", k, (long long)bad, gv[bad]);
        free(gv);
        if (!fin) return false;
    }
    return true;
}

/* Whether op's smoke run also runs with half inputs: every op that reads float data; not
 * the optimizers (they update f32 parameters in place), the ops that make tensors from
 * nothing, nor the conversion itself (its smoke run converts to f16 and back). */
static bool ops_smoke_half(const kiln__op_info *op) {
    static const char *const none[] = {"empty", "full",         "zeros",       "ones",    "arange",
                                       "fill",  "rand_uniform", "rand_normal", "to_dtype"};
    if (is_optim(op)) return false;
    for (size_t j = 0; j < sizeof none / sizeof none[0]; j++)
        if (strcmp(op->name, none[j]) == 0) return false;
    return true;
}

bool ops_smoke(kiln_ctx *ctx, int op, kiln_dtype dt, char *why, size_t cap) {
    const kiln__op_info *info = kiln__op_get((kiln__op)op);
    if (!info) return snprintf(why, cap, "no op %d in src/ops/registry.h", op), false;
    if (dt != KILN_F32 && !ops_smoke_half(info)) return true;
    smoke s = {.ctx = ctx, .grad = !is_optim(info), .atol = 1e-5, .rtol = 1e-4, .rng = 2166136261u, .dt = dt};
    for (const char *c = info->name; *c; c++) s.rng = (s.rng ^ (unsigned char)*c) * 16777619u;
    kiln_error_clear(ctx);
    kiln_scope_begin(ctx);
    RUN[op](&s);
    bool ok = check(&s, info, why, cap);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    for (int i = 0; i < s.nhost; i++) free(s.host[i]);
    free(s.ref);
    return ok;
}

/* ---- golden coverage ------------------------------------------------------------------------- */

enum { GOLD_UNKNOWN = -1, GOLD_NO = 0, GOLD_YES = 1 };

typedef struct golden_set {
    const char *dir; /* NULL: no directory known */
    int nfile;
    const char *stem[16];
    kiln_safetensors *file[16]; /* NULL: absent or unreadable */
} golden_set;

static void golden_load(golden_set *g, kiln_ctx *ctx) {
    for (int i = 0; i < NOPS; i++) {
        if (!op_info(i)->golden_prefix) continue;
        const char *stem = family_name(op_info(i));
        bool seen = false;
        for (int k = 0; k < g->nfile; k++) seen |= strcmp(g->stem[k], stem) == 0;
        if (seen || g->nfile == 16) continue;
        g->stem[g->nfile] = stem;
        g->file[g->nfile] = NULL;
        if (g->dir && ctx) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s.safetensors", g->dir, stem);
            g->file[g->nfile] = kiln_safetensors_open(ctx, path);
            kiln_error_clear(ctx);
        }
        g->nfile++;
    }
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int golden_status(const golden_set *g, const kiln__op_info *op, kiln_ctx *ctx) {
    bool any = false;
    for (int k = 0; k < g->nfile; k++) any |= g->file[k] != NULL;
    if (!any) return GOLD_UNKNOWN; /* no golden file could be read: say so rather than guess */
    if (!op->golden_prefix) return GOLD_NO;
    kiln_safetensors *f = NULL;
    for (int k = 0; k < g->nfile; k++)
        if (strcmp(g->stem[k], family_name(op)) == 0) f = g->file[k];
    if (!f) return GOLD_UNKNOWN;
    size_t plen = strlen(op->golden_prefix);
    for (int i = 0; i < kiln_safetensors_num_tensors(f); i++) {
        const char *name = kiln_safetensors_name(f, i);
        if (strncmp(name, op->golden_prefix, plen) != 0) continue;
        if (op->golden_pidx < 0) return GOLD_YES;
        if (!ends_with(name, ".p")) continue;
        kiln_tensor *t = kiln_safetensors_tensor(f, i);
        int32_t p[16];
        bool hit = t && kiln_tensor_dtype(t) == KILN_I32 && kiln_tensor_numel(t) > op->golden_pidx &&
                   kiln_tensor_numel(t) <= 16 &&
                   kiln_to_host(t, p, sizeof(int32_t) * (size_t)kiln_tensor_numel(t)) == KILN_OK &&
                   p[op->golden_pidx] == op->golden_pval;
        if (t) kiln_tensor_free(t);
        kiln_error_clear(ctx);
        if (hit) return GOLD_YES;
    }
    return GOLD_NO;
}

/* ---- output ------------------------------------------------------------------------------------ */

static void usage(FILE *f) {
    fprintf(f, "usage: kiln ops [--json] [--device SPEC] [--op NAME]... [--dtype f32|f16|bf16|all] [--no-run]\n"
               "\n"
               "Lists every op of kiln's public API (ops.h, tensor.h's creation functions and views,\n"
               "functional.h, the optimizers' updates and gradient clipping) with:\n"
               "  backward   whether it is differentiable (the smoke run checks that it records a backward\n"
               "             and that backward from the sum of its output gives finite gradients)\n"
               "  reference  what the test suite compares it against: torch (PyTorch golden files),\n"
               "             host-f64 (a plain-C double-precision reference), fd (finite differences)\n"
               "  golden     whether tests/golden/*.safetensors holds a case of it (unknown when the files\n"
               "             cannot be read; $KILN_GOLDEN_DIR overrides the directory)\n"
               "  passed     the devices (P:D) on which its smoke run passed: forward on small inputs against\n"
               "             a host computation, finite outputs, and the backward check, with f32 inputs and\n"
               "             again with f16 and bf16 inputs (the result in that dtype, within one more rounding)\n"
               "\n"
               "options:\n"
               "  --json          one JSON object per op, then a summary object\n"
               "  --device SPEC   run on this device only (gpu, cpu, P:D or part of a name); default: all\n"
               "  --op NAME       only this op (repeatable)\n"
               "  --dtype D       the smoke run's input dtypes: f32, f16, bf16 or all [all]\n"
               "  --no-run        list without the smoke run\n"
               "\n"
               "exit status: 0 all passed, 1 an op failed, 2 bad usage, 77 no OpenCL device\n");
}

enum { MAX_DEV = 16 };

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    return d ? memcpy(d, s, n) : NULL;
}

/* ---- the command, step by step ---------------------------------------------------------------- */

/* Everything one `kiln ops` run gathers. pass[op][dev]: 1 passed, 0 failed, -1 not run. */
typedef struct ops_run {
    bool json, run, filter;
    int ndt;
    kiln_dtype dts[3]; /* the smoke runs' input dtypes */
    const char *device;
    bool selected[NOPS];
    kiln_device_info info[MAX_DEV];
    char spec[MAX_DEV][16];
    int ndev;
    bool no_device;
    signed char pass[NOPS][MAX_DEV];
    char *why[NOPS][MAX_DEV];
    double op_secs[NOPS][MAX_DEV]; /* kernel builds on first use included */
    double secs[MAX_DEV];
    int gold[NOPS];
    golden_set gs;
    bool golden_done;
    int golden_read; /* golden files that could be read */
} ops_run;

typedef struct ops_summary {
    int nops, nbw, ngold, nall_pass, nfail;
} ops_summary;

/* The options into r; returns -1 to go on, else the exit status. */
static int parse_args(ops_run *r, int argc, char **argv) {
    static const kiln_dtype all[3] = {KILN_F32, KILN_F16, KILN_BF16};
    r->run = true;
    r->ndt = 3;
    memcpy(r->dts, all, sizeof all);
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            r->json = true;
        else if (strcmp(argv[i], "--no-run") == 0)
            r->run = false;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return usage(stdout), 0;
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            r->device = argv[++i];
        else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            const char *d = argv[++i];
            r->ndt = 1;
            if (strcmp(d, "all") == 0)
                r->ndt = 3, memcpy(r->dts, all, sizeof all);
            else if (strcmp(d, "f32") == 0)
                r->dts[0] = KILN_F32;
            else if (strcmp(d, "f16") == 0)
                r->dts[0] = KILN_F16;
            else if (strcmp(d, "bf16") == 0)
                r->dts[0] = KILN_BF16;
            else {
                fprintf(stderr, "kiln ops: --dtype %s: expected f32, f16, bf16 or all\n", d);
                return 2;
            }
        } else if (strcmp(argv[i], "--op") == 0 && i + 1 < argc) {
            const char *name = argv[++i];
            int k = kiln__op_find(name);
            if (k < 0) {
                fprintf(stderr, "kiln ops: no op '%s' (kiln ops --no-run lists them)\n", name);
                return 2;
            }
            r->selected[k] = r->filter = true;
        } else {
            fprintf(stderr, "kiln ops: unknown argument '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!r->filter)
        for (int k = 0; k < NOPS; k++) r->selected[k] = true;
    return -1;
}

/* The devices to run on (all, or --device's); returns -1 to go on, else the exit status. */
static int find_devices(ops_run *r) {
    kiln_device_info all[MAX_DEV];
    int nall = 0;
    r->no_device = kiln_devices(all, MAX_DEV, &nall) != KILN_OK || nall == 0;
    if (r->no_device) return -1;
    if (nall > MAX_DEV) nall = MAX_DEV;
    kiln_device_info want;
    if (r->device && kiln_device_find(r->device, &want) != KILN_OK) {
        fprintf(stderr, "kiln ops: %s\n", kiln_last_error());
        return 2;
    }
    for (int i = 0; i < nall; i++) {
        if (r->device && (all[i].platform_index != want.platform_index || all[i].device_index != want.device_index))
            continue;
        r->info[r->ndev] = all[i];
        snprintf(r->spec[r->ndev], sizeof r->spec[r->ndev], "%d:%d", all[i].platform_index, all[i].device_index);
        r->ndev++;
    }
    return -1;
}

/* Which ops have a golden case: read once, with the first device that opens. */
static void read_golden(ops_run *r, kiln_ctx *ctx) {
    golden_load(&r->gs, ctx);
    for (int k = 0; k < NOPS; k++) r->gold[k] = golden_status(&r->gs, op_info(k), ctx);
    for (int f = 0; f < r->gs.nfile; f++) {
        r->golden_read += r->gs.file[f] != NULL;
        kiln_safetensors_close(r->gs.file[f]);
        r->gs.file[f] = NULL;
    }
    r->golden_done = true;
}

static double seconds_since(const struct timespec *t0) {
    struct timespec t1;
    timespec_get(&t1, TIME_UTC);
    return (double)(t1.tv_sec - t0->tv_sec) + (t1.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* The smoke run of the selected ops on device d (and the golden files, if not read yet). */
static void run_device(ops_run *r, int d) {
    kiln_ctx *ctx;
    if (kiln_open(&ctx, r->spec[d]) != KILN_OK) {
        for (int k = 0; k < NOPS; k++)
            if (r->selected[k] && r->run) r->pass[k][d] = 0, r->why[k][d] = dupstr(kiln_last_error());
        return;
    }
    if (!r->golden_done) read_golden(r, ctx);
    struct timespec t0;
    timespec_get(&t0, TIME_UTC);
    for (int k = 0; r->run && k < NOPS; k++) {
        if (!r->selected[k]) continue;
        char msg[512] = "";
        struct timespec o0;
        timespec_get(&o0, TIME_UTC);
        bool ok = true;
        for (int t = 0; ok && t < r->ndt; t++) {
            char why[480] = "";
            ok = ops_smoke(ctx, k, r->dts[t], why, sizeof why);
            if (!ok) snprintf(msg, sizeof msg, "%s inputs: %s", kiln_dtype_name(r->dts[t]), why);
        }
        r->pass[k][d] = ok;
        r->op_secs[k][d] = seconds_since(&o0);
        if (!r->pass[k][d]) r->why[k][d] = dupstr(msg);
    }
    r->secs[d] = seconds_since(&t0);
    kiln_close(ctx);
}

static ops_summary summarize(const ops_run *r) {
    ops_summary s = {0};
    for (int k = 0; k < NOPS; k++) {
        if (!r->selected[k]) continue;
        s.nops++;
        s.nbw += op_info(k)->grad;
        s.ngold += r->gold[k] == GOLD_YES;
        bool all = r->run && r->ndev > 0;
        for (int d = 0; d < r->ndev; d++) {
            all &= r->pass[k][d] == 1;
            s.nfail += r->pass[k][d] == 0;
        }
        s.nall_pass += all;
    }
    return s;
}

static void print_json_op(const ops_run *r, int k) {
    const kiln__op_info *op = op_info(k);
    printf("{\"op\": "), tool_json_str(op->name);
    printf(", \"function\": "), tool_json_str(op->fn);
    printf(", \"family\": "), tool_json_str(family_name(op));
    printf(", \"backward\": %s, \"reference\": [", op->grad ? "true" : "false");
    int first = 1;
    if (op->golden_prefix) printf("\"torch\""), first = 0;
    if (op->refs & KILN__REF_F64) printf("%s\"host-f64\"", first ? "" : ", "), first = 0;
    if (op->refs & KILN__REF_FD) printf("%s\"fd\"", first ? "" : ", ");
    printf("], \"tests\": "), tool_json_str(op->tests);
    printf(", \"golden\": %s", r->gold[k] == GOLD_UNKNOWN ? "null" : r->gold[k] == GOLD_YES ? "true" : "false");
    printf(", \"golden_file\": ");
    if (op->golden_prefix)
        printf("\"%s.safetensors\"", family_name(op)), printf(", \"golden_prefix\": "),
            tool_json_str(op->golden_prefix);
    else
        printf("null, \"golden_prefix\": null");
    if (op->golden_pidx >= 0) /* the case's parameter vector "<prefix>N.p" must hold the value at index */
        printf(", \"golden_param\": {\"index\": %d, \"value\": %d}", op->golden_pidx, op->golden_pval);
    printf(", \"devices_passed\": [");
    first = 1;
    for (int d = 0; d < r->ndev; d++)
        if (r->pass[k][d] == 1) printf("%s\"%s\"", first ? "" : ", ", r->spec[d]), first = 0;
    printf("], \"devices_failed\": [");
    first = 1;
    for (int d = 0; d < r->ndev; d++)
        if (r->pass[k][d] == 0) {
            printf("%s{\"device\": \"%s\", \"error\": ", first ? "" : ", ", r->spec[d]);
            tool_json_str(r->why[k][d]);
            printf("}");
            first = 0;
        }
    printf("], \"seconds\": {");
    first = 1;
    for (int d = 0; d < r->ndev; d++)
        if (r->pass[k][d] >= 0) printf("%s\"%s\": %.4f", first ? "" : ", ", r->spec[d], r->op_secs[k][d]), first = 0;
    printf("}}\n");
}

static void print_json(const ops_run *r, const ops_summary *s) {
    for (int k = 0; k < NOPS; k++)
        if (r->selected[k]) print_json_op(r, k);
    printf("{\"summary\": {\"ops\": %d, \"with_backward\": %d, \"with_torch_golden\": %d, "
           "\"passed_all_devices\": %d, \"failed_runs\": %d, \"ran\": %s, \"golden_files_read\": %d, "
           "\"golden_dir\": ",
           s->nops, s->nbw, s->ngold, s->nall_pass, s->nfail, r->run && r->ndev > 0 ? "true" : "false", r->golden_read);
    if (r->gs.dir)
        tool_json_str(r->gs.dir);
    else
        printf("null");
    printf(", \"devices\": [");
    for (int d = 0; d < r->ndev; d++) {
        printf("%s{\"spec\": \"%s\", \"name\": ", d ? ", " : "", r->spec[d]);
        tool_json_str(r->info[d].name);
        printf(", \"seconds\": %.3f}", r->secs[d]);
    }
    printf("]}}\n");
}

static void print_text(const ops_run *r, const ops_summary *s) {
    for (int d = 0; d < r->ndev; d++)
        printf("device %s: %s (%s)%s\n", r->spec[d], r->info[d].name, r->info[d].platform_name,
               r->run ? "" : " - not run (--no-run)");
    if (r->no_device) printf("no OpenCL device: %s\n", kiln_last_error());
    if (!r->gs.dir)
        printf("golden files: no directory known (set KILN_GOLDEN_DIR): golden is unknown\n\n");
    else if (!r->golden_done)
        printf("golden files: not read (no device to open them with): golden is unknown\n\n");
    else if (!r->golden_read)
        printf("golden files: none readable in %s: golden is unknown\n\n", r->gs.dir);
    else
        printf("golden files: %s (%d of %d read)\n\n", r->gs.dir, r->golden_read, r->gs.nfile);
    static const char *const gname[] = {"unknown", "no", "yes"};
    printf("%-18s %-11s %-8s %-20s %-7s %s\n", "op", "family", "backward", "reference", "golden", "passed on");
    for (int k = 0; k < NOPS; k++) {
        if (!r->selected[k]) continue;
        const kiln__op_info *op = op_info(k);
        char refs[48], passed[MAX_DEV * 17 + 1] = "";
        refs_str(op, refs, sizeof refs);
        for (int d = 0; d < r->ndev; d++)
            if (r->pass[k][d] == 1)
                snprintf(passed + strlen(passed), sizeof passed - strlen(passed), "%s%s", *passed ? " " : "",
                         r->spec[d]);
        printf("%-18s %-11s %-8s %-20s %-7s %s\n", op->name, family_name(op), op->grad ? "yes" : "no", refs,
               gname[r->gold[k] + 1], *passed ? passed : "-");
    }
    if (s->nfail) printf("\n");
    for (int k = 0; k < NOPS; k++)
        for (int d = 0; d < r->ndev; d++)
            if (r->pass[k][d] == 0) printf("FAILED %s on %s: %s\n", op_info(k)->name, r->spec[d], r->why[k][d]);
    printf("\nops: %d, with backward: %d, with torch golden test: %d, passed on all devices: ", s->nops, s->nbw,
           s->ngold);
    if (r->run && r->ndev > 0)
        printf("%d\n", s->nall_pass);
    else
        printf("not run\n");
    for (int d = 0; r->run && d < r->ndev; d++) printf("smoke run on %s: %.1f s\n", r->spec[d], r->secs[d]);
}

static void ops_run_free(ops_run *r) {
    for (int k = 0; k < NOPS; k++)
        for (int d = 0; d < r->ndev; d++) free(r->why[k][d]);
    free(r);
}

int kiln_cmd_ops(int argc, char **argv) {
    ops_run *r = calloc(1, sizeof *r);
    if (!r) return fprintf(stderr, "kiln ops: out of host memory\n"), 1;
    memset(r->pass, -1, sizeof r->pass);
    for (int k = 0; k < NOPS; k++) r->gold[k] = GOLD_UNKNOWN;
    int rc = parse_args(r, argc, argv);
    if (rc < 0) rc = find_devices(r);
    if (rc >= 0) return ops_run_free(r), rc;

    r->gs.dir = getenv("KILN_GOLDEN_DIR") && *getenv("KILN_GOLDEN_DIR") ? getenv("KILN_GOLDEN_DIR") : NULL;
#ifdef KILN_GOLDEN_SOURCE_DIR
    if (!r->gs.dir) r->gs.dir = KILN_GOLDEN_SOURCE_DIR;
#endif
    for (int d = 0; d < r->ndev && (r->run || !r->golden_done); d++) run_device(r, d);

    ops_summary s = summarize(r);
    if (r->json)
        print_json(r, &s);
    else
        print_text(r, &s);
    rc = r->no_device ? 77 : s.nfail ? 1 : 0;
    ops_run_free(r);
    return rc;
}
