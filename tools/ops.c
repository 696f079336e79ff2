/* tools/ops.c - `kiln ops`: every public op with whether it has a backward, what the test
 * suite compares it against, whether a PyTorch golden file covers it, and a smoke run of
 * its forward (and backward) on each device. */
#include "ops.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kiln/kiln.h>

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
    char err[400]; /* a failure the run function found itself */
    uint32_t rng;
} smoke;

static float rnd(smoke *s, float lo, float hi) {
    s->rng = s->rng * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)((double)(s->rng >> 8) / 16777216.0);
}

static int64_t numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
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
    for (int64_t i = 0; i < n; i++)
        v[i] = vals ? vals[i] : rnd(s, lo, hi);
    s->host[s->nhost++] = v;
    if (h) *h = v;
    kiln_tensor *t = kiln_from_host(s->ctx, v, KILN_F32, ndim, shape);
    if (t && grad && s->grad && s->nleaf < MAX_LEAF) {
        if (kiln_set_requires_grad(t, true) != KILN_OK) return NULL;
        s->leaf[s->nleaf++] = t;
    }
    return t;
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
    for (int d = nd - 2; d >= 0; d--)
        xs[d] = xs[d + 1] * shape[d + 1];
    for (int d = 0; d < nd; d++)
        os[d] = shape[perm[d]];
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
    for (int i = 0; i < 12; i++)
        va[i] = ints ? floorf(rnd(s, lo, hi)) : rnd(s, lo, hi);
    for (int i = 0; i < 4; i++)
        vb[i] = ints ? floorf(rnd(s, lo, hi)) : rnd(s, lo, hi);
    const float *a, *b;
    kiln_tensor *ta = input(s, &a, 2, (int64_t[]){3, 4}, va, 0, 0, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){4}, vb, 0, 0, true);
    s->out = f(s->ctx, ta, tb);
    double *o = expect(s, 12);
    for (int i = 0; i < 12; i++)
        o[i] = r(a[i], b[i % 4]);
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
    for (int i = 0; i < 12; i++)
        vc[i] = (float)(i % 3 == 1);
    const float *c, *a, *b;
    kiln_tensor *tc = input(s, &c, 2, (int64_t[]){3, 4}, vc, 0, 0, false);
    kiln_tensor *ta = input(s, &a, 2, (int64_t[]){3, 4}, NULL, -2, 2, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){4}, NULL, -2, 2, true);
    s->out = kiln_where(s->ctx, tc, ta, tb);
    double *o = expect(s, 12);
    for (int i = 0; i < 12; i++)
        o[i] = c[i] != 0 ? a[i] : b[i % 4];
}

typedef kiln_tensor *(*unop)(kiln_ctx *, kiln_tensor *);

static void unary(smoke *s, unop f, double (*r)(double), float lo, float hi) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 5}, NULL, lo, hi, true);
    s->out = f(s->ctx, t);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++)
        o[i] = r(x[i]);
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
    for (int i = 0; i < 15; i++)
        o[i] = r(x[i], c);
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
            for (int k = 0; k < 3; k++)
                acc += (double)a[i * 3 + k] * (trans_b ? b[j * 3 + k] : b[k * 4 + j]);
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
    for (int64_t i = 0; i < n; i++)
        o[i] = x[i];
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
    for (int i = 0; i < 6; i++)
        o[2 * i] = x[4 * i + 1], o[2 * i + 1] = x[4 * i + 3];
}

static void run_expand(smoke *s) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 1}, NULL, -2, 2, true);
    s->out = kiln_expand(s->ctx, t, 3, X3);
    double *o = expect(s, 24);
    for (int i = 0; i < 24; i++)
        o[i] = x[(i / 4) % 3];
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

/* ---- activations on [3, 5] ------------------------------------------------------------------ */

static void run_leaky_relu(smoke *s) {
    const float *x;
    s->out = kiln_leaky_relu(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), 0.1f);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++)
        o[i] = x[i] > 0 ? x[i] : 0.1 * x[i];
}

static void run_elu(smoke *s) {
    const float *x;
    s->out = kiln_elu(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), 1.0f);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++)
        o[i] = x[i] > 0 ? x[i] : expm1(x[i]);
}

static void run_gelu(smoke *s) {
    const float *x;
    s->out = kiln_gelu(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), false);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++)
        o[i] = r_gelu(x[i]);
}

static void run_gelu_tanh(smoke *s) {
    const float *x;
    s->out = kiln_gelu(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), true);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++)
        o[i] = r_gelu_tanh(x[i]);
}

static void run_softplus(smoke *s) {
    const float *x;
    s->out = kiln_softplus(s->ctx, input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true), 1.0f, 20.0f);
    double *o = expect(s, 15);
    for (int i = 0; i < 15; i++)
        o[i] = log1p(exp(x[i]));
}

static void softmax(smoke *s, bool logs) {
    const float *x;
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 5}, NULL, -3, 3, true);
    s->out = logs ? kiln_log_softmax(s->ctx, t, 1) : kiln_softmax(s->ctx, t, 1);
    double *o = expect(s, 15);
    for (int r = 0; r < 3; r++) {
        double se = 0;
        for (int c = 0; c < 5; c++)
            se += exp(x[r * 5 + c]);
        for (int c = 0; c < 5; c++)
            o[r * 5 + c] = logs ? x[r * 5 + c] - log(se) : exp(x[r * 5 + c]) / se;
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
        for (int c = 0; c < 5; c++)
            o[r * 5 + c] = c < 3 ? a[r * 3 + c] : b[r * 2 + c - 3];
}

static void run_stack(smoke *s) {
    const float *a, *b;
    kiln_tensor *ts[2] = {input(s, &a, 2, (int64_t[]){2, 3}, NULL, -2, 2, true),
                          input(s, &b, 2, (int64_t[]){2, 3}, NULL, -2, 2, true)};
    s->out = kiln_stack(s->ctx, 2, ts, 0);
    double *o = expect(s, 12);
    for (int i = 0; i < 6; i++)
        o[i] = a[i], o[6 + i] = b[i];
}

static void run_pad(smoke *s) {
    const float *x;
    s->out = kiln_pad(s->ctx, input(s, &x, 2, (int64_t[]){2, 3}, NULL, -2, 2, true), 2, (int64_t[]){1, 2}, 0.5f);
    double *o = expect(s, 12);
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 6; c++)
            o[r * 6 + c] = c >= 1 && c < 4 ? x[r * 3 + c - 1] : 0.5;
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
        for (int c = 0; c < 3; c++)
            o[r * 3 + c] = x[idx[r] * 3 + c];
}

static void run_gather(smoke *s) {
    const float *x;
    static const int32_t idx[6] = {0, 3, 1, 1, 2, 0};
    kiln_tensor *t = input(s, &x, 2, (int64_t[]){3, 4}, NULL, -2, 2, true);
    s->out = kiln_gather(s->ctx, t, 1, indices(s, 2, (int64_t[]){3, 2}, idx));
    double *o = expect(s, 6);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 2; c++)
            o[r * 2 + c] = x[r * 4 + idx[r * 2 + c]];
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
        for (int k = 0; k < 36; k++)
            o[co * 36 + k] = b[co];
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
        for (int k = 0; k < 6; k++)
            sum += x[p * 6 + k];
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
        for (int j = 0; j < 6; j++)
            o[i * 6 + j] = x[(i / 2) * 3 + j / 2];
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
    kiln_tensor *rm = input(s, NULL, 1, (int64_t[]){3}, zeros, 0, 0, false);
    kiln_tensor *rv = input(s, NULL, 1, (int64_t[]){3}, ones, 0, 0, false);
    kiln_tensor *tw = input(s, &w, 1, (int64_t[]){3}, NULL, 0.5f, 1.5f, true);
    kiln_tensor *tb = input(s, &b, 1, (int64_t[]){3}, NULL, -0.5f, 0.5f, true);
    s->out = kiln_batch_norm(s->ctx, tx, rm, rv, tw, tb, true, 0.1f, 1e-5f);
    double *o = expect(s, 12);
    for (int c = 0; c < 3; c++) {
        double m = 0, v = 0;
        for (int n = 0; n < 4; n++)
            m += x[n * 3 + c] / 4.0;
        for (int n = 0; n < 4; n++)
            v += (x[n * 3 + c] - m) * (x[n * 3 + c] - m) / 4.0;
        for (int n = 0; n < 4; n++)
            o[n * 3 + c] = (x[n * 3 + c] - m) / sqrt(v + 1e-5) * w[c] + b[c];
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
        for (int c = 0; c < 4; c++)
            m += x[r * 4 + c] / 4.0;
        for (int c = 0; c < 4; c++)
            v += (x[r * 4 + c] - m) * (x[r * 4 + c] - m) / 4.0;
        for (int c = 0; c < 4; c++)
            o[r * 4 + c] = (x[r * 4 + c] - m) / sqrt(v + 1e-5) * w[c] + b[c];
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
        for (int c = 0; c < 3; c++)
            o[r * 3 + c] = w[idx[r] * 3 + c];
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
    for (int i = 0; i < 12; i++)
        sum += 0.5 * (x[i] - 1.0) * (x[i] - 1.0);
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
        for (int c = 0; c < 3; c++)
            se += exp(x[r * 3 + c]);
        for (int c = 0; c < 3; c++)
            lp[c] = kind == 2 ? x[r * 3 + c] : x[r * 3 + c] - log(se);
        double wy = w ? w[lab[r]] : 1, smooth = 0;
        for (int c = 0; c < 3; c++)
            smooth -= (w ? w[c] : 1) * lp[c];
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
    for (int i = 0; i < 6; i++)
        sum += l2 ? (double)a[i] * a[i] : fabs(a[i]);
    for (int i = 0; i < 4; i++)
        sum += l2 ? (double)b[i] * b[i] : fabs(b[i]);
    expect(s, 1)[0] = sum;
}

static void run_l1_penalty(smoke *s) { penalty(s, false); }
static void run_l2_penalty(smoke *s) { penalty(s, true); }

/* ---- optimizer updates and clipping: one step on p [2, 5] with grad = d sum(p^2) = 2p --- */

static kiln_tensor *param_with_grad(smoke *s, const float **p) {
    kiln_tensor *t = input(s, p, 2, (int64_t[]){2, 5}, NULL, -1, 1, false);
    if (!t || kiln_set_requires_grad(t, true) != KILN_OK) return NULL;
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
    for (int i = 0; i < 10; i++)
        sq += 4.0 * p[i] * p[i];
    expect(s, 1)[0] = sqrt(sq);
}

static void run_clip_grad_value(smoke *s) {
    const float *p;
    kiln_tensor *t = param_with_grad(s, &p);
    if (!t) return;
    if (kiln_clip_grad_value(s->ctx, 1, &t, 0.5) == KILN_OK) s->out = kiln_grad(t);
    double *o = expect(s, 10);
    for (int i = 0; i < 10; i++)
        o[i] = fmin(fmax(2.0 * p[i], -0.5), 0.5);
}

/* ---- the table ------------------------------------------------------------------------------ */

/* What the test suite compares an op against. */
enum { REF_TORCH = 1, REF_F64 = 2, REF_FD = 4 };

typedef struct op_entry {
    const char *name; /* the kiln_ function without its prefix (two rows for gelu, upsample) */
    const char *family;
    bool backward;     /* differentiable: records a backward rule (checked by the smoke run) */
    unsigned refs;     /* REF_*: what tests/test_*.c compare it against */
    const char *tests; /* the test files that do */
    /* PyTorch golden coverage: a key of tests/golden/<gfile>.safetensors starting with gprefix
     * (names from tests/golden/gen_<gfile>.py); pidx >= 0: the key "<prefix>N.p" must hold
     * pval at index pidx (the upsample cases share a prefix and differ by mode). */
    const char *gfile, *gprefix;
    int pidx, pval;
    void (*run)(smoke *s);
} op_entry;

#define NOG NULL, NULL, -1, 0
#define G(file, prefix) file, prefix, -1, 0

static const op_entry OPS[] = {
/* tests/test_elementwise.c: double-precision host reference; tests/test_autograd.c:
 * gradients by finite differences (its ew_case table). where has a backward but no
 * gradient check; comparisons have no backward. */
#define EW_FD(stem)                                                                                                    \
    { #stem, "elementwise", true, REF_F64 | REF_FD, "test_elementwise.c test_autograd.c", NOG, run_##stem }
#define EW_CMP(stem)                                                                                                   \
    { #stem, "elementwise", false, REF_F64, "test_elementwise.c", NOG, run_##stem }
    EW_FD(add),
    EW_FD(sub),
    EW_FD(mul),
    EW_FD(div),
    EW_FD(pow),
    EW_FD(minimum),
    EW_FD(maximum),
    EW_CMP(eq),
    EW_CMP(ne),
    EW_CMP(lt),
    EW_CMP(le),
    EW_CMP(gt),
    EW_CMP(ge),
    {"where", "elementwise", true, REF_F64, "test_elementwise.c", NOG, run_where},
    EW_FD(neg),
    EW_FD(exp),
    EW_FD(log),
    EW_FD(sqrt),
    EW_FD(abs),
    EW_FD(add_scalar),
    EW_FD(mul_scalar),
    EW_FD(pow_scalar),
    EW_FD(minimum_scalar),
    EW_FD(maximum_scalar),
/* tests/test_reduce.c: double reference; tests/test_autograd.c: finite differences of
 * sum, mean, max, min. */
#define RED(stem)                                                                                                      \
    { #stem, "reduce", true, REF_F64 | REF_FD, "test_reduce.c test_autograd.c", NOG, run_##stem }
    RED(sum),
    RED(mean),
    RED(max),
    RED(min),
    {"argmax", "reduce", false, REF_F64, "test_reduce.c", NOG, run_argmax},
    /* tests/test_matmul.c: double reference for both; tests/test_autograd.c checks the
     * gradients through kiln_matmul_ex only. */
    {"matmul", "matmul", true, REF_F64, "test_matmul.c", NOG, run_matmul},
    {"matmul_ex", "matmul", true, REF_F64 | REF_FD, "test_matmul.c test_autograd.c", NOG, run_matmul_ex},
/* tests/test_tensor.c: exact against the host view model (read into doubles);
 * tests/test_autograd.c (test_view_grads): finite differences, not kiln_view. */
#define VIEW(stem)                                                                                                     \
    { #stem, "view", true, REF_F64 | REF_FD, "test_tensor.c test_autograd.c", NOG, run_##stem }
    VIEW(reshape),
    {"view", "view", true, REF_F64, "test_tensor.c", NOG, run_view},
    VIEW(transpose),
    VIEW(permute),
    VIEW(slice),
    VIEW(expand),
    VIEW(unsqueeze),
    VIEW(squeeze),
    VIEW(contiguous),
    VIEW(clone),
/* tests/test_activation.c: double reference, finite differences, golden
 * tests/golden/activation.safetensors (gen_activation.py: "<case>.x" etc.). */
#define ACT(stem, prefix)                                                                                              \
    {                                                                                                                  \
#stem, "activation", true, REF_TORCH | REF_F64 | REF_FD, "test_activation.c", G("activation", prefix),         \
            run_##stem                                                                                                 \
    }
    ACT(relu, "relu."),
    ACT(leaky_relu, "leaky_relu_"),
    ACT(elu, "elu_"),
    ACT(gelu, "gelu."),
    ACT(gelu_tanh, "gelu_tanh."),
    ACT(sigmoid, "sigmoid."),
    ACT(tanh, "tanh."),
    ACT(softplus, "softplus_"),
    ACT(softmax, "softmax_"),
    ACT(log_softmax, "log_softmax_"),
/* tests/test_shape.c: double reference, finite differences, golden shape.safetensors
 * (gen_shape.py: cat, cat6, stack, stack5, pad, flatten, isel0/1, gather0/1). */
#define SHP(stem, prefix)                                                                                              \
    { #stem, "shape", true, REF_TORCH | REF_F64 | REF_FD, "test_shape.c", G("shape", prefix), run_##stem }
    SHP(concat, "cat"),
    SHP(stack, "stack"),
    SHP(pad, "pad."),
    SHP(flatten, "flatten."),
    SHP(index_select, "isel"),
    SHP(gather, "gather"),
    /* tests/test_conv.c: double reference, finite differences, golden conv.safetensors
     * (gen_conv.py: "conv_*" and "convt_*" cases). */
    {"conv2d", "conv", true, REF_TORCH | REF_F64 | REF_FD, "test_conv.c", G("conv", "conv_"), run_conv2d},
    {"conv_transpose2d", "conv", true, REF_TORCH | REF_F64 | REF_FD, "test_conv.c", G("conv", "convt_"),
     run_conv_transpose2d},
/* tests/test_pool.c: double reference, finite differences, golden pool.safetensors
 * (gen_pool.py: mp*, ap*, gp*, up* with p = out_h out_w mode align_corners). */
#define POOL(stem, prefix, pidx, pval)                                                                                 \
    { #stem, "pool", true, REF_TORCH | REF_F64 | REF_FD, "test_pool.c", "pool", prefix, pidx, pval, run_##stem }
    POOL(max_pool2d, "mp", -1, 0),
    POOL(avg_pool2d, "ap", -1, 0),
    POOL(global_avg_pool2d, "gp", -1, 0),
    POOL(upsample_nearest, "up", 2, 0),
    POOL(upsample_bilinear, "up", 2, 1),
/* tests/test_norm.c: double reference, finite differences, golden norm.safetensors
 * (gen_norm.py: bn*, ln*, do_*, emb*). */
#define NORM(stem, prefix)                                                                                             \
    { #stem, "norm", true, REF_TORCH | REF_F64 | REF_FD, "test_norm.c", G("norm", prefix), run_##stem }
    NORM(batch_norm, "bn"),
    NORM(layer_norm, "ln"),
    NORM(dropout, "do_"),
    NORM(embedding, "emb"),
/* tests/test_loss.c: double reference, finite differences, golden loss.safetensors
 * (gen_loss.py: mse., l1., smooth_l1., bce., bcel., lsgan., ce*, nll*, *_penalty.). */
#define LOSS(stem, prefix)                                                                                             \
    { #stem, "loss", true, REF_TORCH | REF_F64 | REF_FD, "test_loss.c", G("loss", prefix), run_##stem }
    LOSS(mse_loss, "mse."),
    LOSS(l1_loss, "l1."),
    LOSS(smooth_l1_loss, "smooth_l1."),
    LOSS(cross_entropy, "ce"),
    LOSS(cross_entropy_ex, "ce.w."),
    LOSS(nll_loss, "nll"),
    LOSS(bce_loss, "bce."),
    LOSS(bce_with_logits, "bcel."),
    LOSS(lsgan_loss, "lsgan."),
    LOSS(l1_penalty, "l1_penalty."),
    LOSS(l2_penalty, "l2_penalty."),
/* tests/test_optim.c: torch trajectories (gen_optim.py: "<config>.traj.*", clipN.*,
 * clipv.*) and double references of each rule and of clip_grad_norm; clip_grad_value
 * only against torch. The update kernels are not differentiable. */
#define OPT(stem, prefix)                                                                                              \
    { #stem, "optim", false, REF_TORCH | REF_F64, "test_optim.c", G("optim", prefix), run_##stem }
    OPT(sgd, "sgd_"),
    OPT(rmsprop, "rmsprop_"),
    OPT(adam, "adam_"),
    OPT(adamw, "adamw_"),
    OPT(clip_grad_norm, "clip0."),
    {"clip_grad_value", "optim", false, REF_TORCH, "test_optim.c", G("optim", "clipv."), run_clip_grad_value},
};
#define NOPS ((int)(sizeof OPS / sizeof OPS[0]))

static bool is_optim(const op_entry *op) { return strcmp(op->family, "optim") == 0; }

static void refs_str(unsigned r, char *buf, size_t cap) {
    snprintf(buf, cap, "%s%s%s%s%s", r & REF_TORCH ? "torch" : "", (r & REF_TORCH) && (r & ~REF_TORCH) ? "," : "",
             r & REF_F64 ? "host-f64" : "", (r & REF_F64) && (r & REF_FD) ? "," : "", r & REF_FD ? "fd" : "");
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

/* Reads a F32 or I32 tensor as floats; NULL on error (message in why). */
static float *read_floats(kiln_tensor *t, char *why, size_t cap, const char *what) {
    int64_t n = kiln_tensor_numel(t);
    float *v = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!v) return snprintf(why, cap, "%s: out of host memory", what), NULL;
    kiln_status st;
    if (kiln_tensor_dtype(t) == KILN_I32) {
        int32_t *iv = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
        st = iv ? kiln_to_host(t, iv, sizeof(int32_t) * (size_t)n) : KILN_ERR_HOST_OUT_OF_MEMORY;
        for (int64_t i = 0; st == KILN_OK && i < n; i++)
            v[i] = (float)iv[i];
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

static bool check(smoke *s, const op_entry *op, char *why, size_t cap) {
    kiln_ctx *ctx = s->ctx;
    const char *msg = kiln_error_message(ctx);
    if (s->err[0]) return snprintf(why, cap, "%s", s->err), false;
    if (!s->out) return snprintf(why, cap, "forward failed: %s", *msg ? msg : "no result"), false;
    int64_t n = kiln_tensor_numel(s->out), bad;
    float *got = read_floats(s->out, why, cap, "reading the result");
    if (!got) return false;
    bool ok = false;
    if (!all_finite(got, n, &bad)) {
        snprintf(why, cap, "forward: element %lld is %g", (long long)bad, got[bad]);
    } else if (s->nref && s->nref != n) {
        snprintf(why, cap, "forward: %lld elements, expected %lld", (long long)n, (long long)s->nref);
    } else {
        ok = true;
        for (int64_t i = 0; ok && i < s->nref; i++)
            if (!(fabs(got[i] - s->ref[i]) <= s->atol + s->rtol * fabs(s->ref[i]))) {
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

    bool has = kiln_has_grad_fn(s->out);
    if (!op->backward) {
        if (has) return snprintf(why, cap, "records a backward rule, which the table says it has not"), false;
        return true;
    }
    if (!has) return snprintf(why, cap, "no backward: the output of grad-requiring inputs has no grad_fn"), false;
    kiln_tensor *loss = kiln_sum(ctx, s->out, 0, NULL, false);
    if (!loss || kiln_backward(loss) != KILN_OK)
        return snprintf(why, cap, "backward failed: %s", kiln_error_message(ctx)), false;
    for (int k = 0; k < s->nleaf; k++) {
        kiln_tensor *g = kiln_grad(s->leaf[k]);
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

static bool smoke_op(kiln_ctx *ctx, const op_entry *op, char *why, size_t cap) {
    smoke s = {.ctx = ctx, .grad = !is_optim(op), .atol = 1e-5, .rtol = 1e-4, .rng = 2166136261u};
    for (const char *c = op->name; *c; c++)
        s.rng = (s.rng ^ (unsigned char)*c) * 16777619u;
    kiln_error_clear(ctx);
    kiln_scope_begin(ctx);
    op->run(&s);
    bool ok = check(&s, op, why, cap);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    for (int i = 0; i < s.nhost; i++)
        free(s.host[i]);
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
        const char *stem = OPS[i].gfile;
        if (!stem) continue;
        bool seen = false;
        for (int k = 0; k < g->nfile; k++)
            seen |= strcmp(g->stem[k], stem) == 0;
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

static int golden_status(const golden_set *g, const op_entry *op, kiln_ctx *ctx) {
    bool any = false;
    for (int k = 0; k < g->nfile; k++)
        any |= g->file[k] != NULL;
    if (!any) return GOLD_UNKNOWN; /* no golden file could be read: say so rather than guess */
    if (!op->gfile) return GOLD_NO;
    kiln_safetensors *f = NULL;
    for (int k = 0; k < g->nfile; k++)
        if (strcmp(g->stem[k], op->gfile) == 0) f = g->file[k];
    if (!f) return GOLD_UNKNOWN;
    size_t plen = strlen(op->gprefix);
    for (int i = 0; i < kiln_safetensors_count(f); i++) {
        const char *name = kiln_safetensors_name(f, i);
        if (strncmp(name, op->gprefix, plen) != 0) continue;
        if (op->pidx < 0) return GOLD_YES;
        if (!ends_with(name, ".p")) continue;
        kiln_tensor *t = kiln_safetensors_tensor(f, i);
        int32_t p[16];
        bool hit =
            t && kiln_tensor_dtype(t) == KILN_I32 && kiln_tensor_numel(t) > op->pidx && kiln_tensor_numel(t) <= 16 &&
            kiln_to_host(t, p, sizeof(int32_t) * (size_t)kiln_tensor_numel(t)) == KILN_OK && p[op->pidx] == op->pval;
        if (t) kiln_tensor_free(t);
        kiln_error_clear(ctx);
        if (hit) return GOLD_YES;
    }
    return GOLD_NO;
}

/* ---- output ------------------------------------------------------------------------------------ */

static void json_str(const char *s) {
    putchar('"');
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void usage(FILE *f) {
    fprintf(f, "usage: kiln ops [--json] [--device SPEC] [--op NAME]... [--no-run]\n"
               "\n"
               "Lists every op of kiln's public API (ops.h, tensor.h views, functional.h, the optimizers'\n"
               "updates and gradient clipping) with:\n"
               "  backward   whether it is differentiable (the smoke run checks that it records a backward\n"
               "             and that backward from the sum of its output gives finite gradients)\n"
               "  reference  what the test suite compares it against: torch (PyTorch golden files),\n"
               "             host-f64 (a plain-C double-precision reference), fd (finite differences)\n"
               "  golden     whether tests/golden/*.safetensors holds a case of it (unknown when the files\n"
               "             cannot be read; $KILN_GOLDEN_DIR overrides the directory)\n"
               "  passed     the devices (P:D) on which its smoke run passed: forward on small inputs against\n"
               "             a host computation, finite outputs, and the backward check\n"
               "\n"
               "options:\n"
               "  --json          one JSON object per op, then a summary object\n"
               "  --device SPEC   run on this device only (gpu, cpu, P:D or part of a name); default: all\n"
               "  --op NAME       only this op (repeatable)\n"
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

int kiln_cmd_ops(int argc, char **argv) {
    bool json = false, run = true;
    const char *device = NULL;
    bool selected[sizeof OPS / sizeof OPS[0]];
    bool filter = false;
    memset(selected, 0, sizeof selected);
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--no-run") == 0)
            run = false;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return usage(stdout), 0;
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            device = argv[++i];
        else if (strcmp(argv[i], "--op") == 0 && i + 1 < argc) {
            const char *name = argv[++i];
            int k = 0;
            while (k < NOPS && strcmp(OPS[k].name, name) != 0)
                k++;
            if (k == NOPS) {
                fprintf(stderr, "kiln ops: no op '%s' (kiln ops --no-run lists them)\n", name);
                return 2;
            }
            selected[k] = filter = true;
        } else {
            fprintf(stderr, "kiln ops: unknown argument '%s'\n\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!filter)
        for (int k = 0; k < NOPS; k++)
            selected[k] = true;

    /* the devices */
    kiln_device_info info[MAX_DEV];
    int ndev = 0, nall = 0;
    bool no_device = kiln_devices(info, MAX_DEV, &nall) != KILN_OK || nall == 0;
    if (nall > MAX_DEV) nall = MAX_DEV;
    char spec[MAX_DEV][16];
    if (!no_device) {
        kiln_device_info want;
        if (device && kiln_device_find(device, &want) != KILN_OK) {
            fprintf(stderr, "kiln ops: %s\n", kiln_last_error());
            return 2;
        }
        for (int i = 0; i < nall; i++) {
            if (device && (info[i].platform_index != want.platform_index || info[i].device_index != want.device_index))
                continue;
            info[ndev] = info[i];
            snprintf(spec[ndev], sizeof spec[ndev], "%d:%d", info[i].platform_index, info[i].device_index);
            ndev++;
        }
    }

    /* results: pass[op][dev] 1 passed, 0 failed, -1 not run */
    static signed char pass[sizeof OPS / sizeof OPS[0]][MAX_DEV];
    static char *why[sizeof OPS / sizeof OPS[0]][MAX_DEV];
    static double op_secs[sizeof OPS / sizeof OPS[0]][MAX_DEV]; /* kernel builds on first use included */
    memset(pass, -1, sizeof pass);
    int gold[sizeof OPS / sizeof OPS[0]];
    for (int k = 0; k < NOPS; k++)
        gold[k] = GOLD_UNKNOWN;

    golden_set gs = {0};
    gs.dir = getenv("KILN_GOLDEN_DIR") && *getenv("KILN_GOLDEN_DIR") ? getenv("KILN_GOLDEN_DIR") : NULL;
#ifdef KILN_GOLDEN_SOURCE_DIR
    if (!gs.dir) gs.dir = KILN_GOLDEN_SOURCE_DIR;
#endif
    double secs[MAX_DEV] = {0};
    bool golden_done = false;
    int golden_read = 0; /* golden files that could be read */
    for (int d = 0; d < ndev && (run || !golden_done); d++) {
        kiln_ctx *ctx;
        if (kiln_open(&ctx, spec[d]) != KILN_OK) {
            for (int k = 0; k < NOPS; k++)
                if (selected[k] && run) pass[k][d] = 0, why[k][d] = dupstr(kiln_last_error());
            continue;
        }
        if (!golden_done) {
            golden_load(&gs, ctx);
            for (int k = 0; k < NOPS; k++)
                gold[k] = golden_status(&gs, &OPS[k], ctx);
            for (int f = 0; f < gs.nfile; f++) {
                golden_read += gs.file[f] != NULL;
                kiln_safetensors_close(gs.file[f]);
                gs.file[f] = NULL;
            }
            golden_done = true;
        }
        struct timespec t0, t1;
        timespec_get(&t0, TIME_UTC);
        for (int k = 0; run && k < NOPS; k++) {
            if (!selected[k]) continue;
            char msg[512] = "";
            struct timespec o0, o1;
            timespec_get(&o0, TIME_UTC);
            pass[k][d] = smoke_op(ctx, &OPS[k], msg, sizeof msg);
            timespec_get(&o1, TIME_UTC);
            op_secs[k][d] = (double)(o1.tv_sec - o0.tv_sec) + (o1.tv_nsec - o0.tv_nsec) * 1e-9;
            if (!pass[k][d]) why[k][d] = dupstr(msg);
        }
        timespec_get(&t1, TIME_UTC);
        secs[d] = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        kiln_close(ctx);
    }

    /* summary counts */
    int nops = 0, nbw = 0, ngold = 0, nall_pass = 0, nfail = 0;
    for (int k = 0; k < NOPS; k++) {
        if (!selected[k]) continue;
        nops++;
        nbw += OPS[k].backward;
        ngold += gold[k] == GOLD_YES;
        bool all = run && ndev > 0;
        for (int d = 0; d < ndev; d++) {
            all &= pass[k][d] == 1;
            nfail += pass[k][d] == 0;
        }
        nall_pass += all;
    }
    const char *gname[] = {"unknown", "no", "yes"};

    if (json) {
        for (int k = 0; k < NOPS; k++) {
            if (!selected[k]) continue;
            const op_entry *op = &OPS[k];
            printf("{\"op\": "), json_str(op->name);
            printf(", \"family\": "), json_str(op->family);
            printf(", \"backward\": %s, \"reference\": [", op->backward ? "true" : "false");
            const char *rn[] = {"torch", "host-f64", "fd"};
            for (int r = 0, first = 1; r < 3; r++)
                if (op->refs & (1u << r)) printf("%s\"%s\"", first ? "" : ", ", rn[r]), first = 0;
            printf("], \"tests\": "), json_str(op->tests);
            printf(", \"golden\": %s", gold[k] == GOLD_UNKNOWN ? "null" : gold[k] == GOLD_YES ? "true" : "false");
            printf(", \"golden_file\": ");
            if (op->gfile)
                printf("\"%s.safetensors\"", op->gfile), printf(", \"golden_prefix\": "), json_str(op->gprefix);
            else
                printf("null, \"golden_prefix\": null");
            if (op->pidx >= 0) /* the case's parameter vector "<prefix>N.p" must hold pval at pidx */
                printf(", \"golden_param\": {\"index\": %d, \"value\": %d}", op->pidx, op->pval);
            printf(", \"devices_passed\": [");
            for (int d = 0, first = 1; d < ndev; d++)
                if (pass[k][d] == 1) printf("%s\"%s\"", first ? "" : ", ", spec[d]), first = 0;
            printf("], \"devices_failed\": [");
            for (int d = 0, first = 1; d < ndev; d++)
                if (pass[k][d] == 0) {
                    printf("%s{\"device\": \"%s\", \"error\": ", first ? "" : ", ", spec[d]);
                    json_str(why[k][d]);
                    printf("}");
                    first = 0;
                }
            printf("], \"seconds\": {");
            for (int d = 0, first = 1; d < ndev; d++)
                if (pass[k][d] >= 0) printf("%s\"%s\": %.4f", first ? "" : ", ", spec[d], op_secs[k][d]), first = 0;
            printf("}}\n");
        }
        printf("{\"summary\": {\"ops\": %d, \"with_backward\": %d, \"with_torch_golden\": %d, "
               "\"passed_all_devices\": %d, \"failed_runs\": %d, \"ran\": %s, \"golden_files_read\": %d, "
               "\"golden_dir\": ",
               nops, nbw, ngold, nall_pass, nfail, run && ndev > 0 ? "true" : "false", golden_read);
        if (gs.dir)
            json_str(gs.dir);
        else
            printf("null");
        printf(", \"devices\": [");
        for (int d = 0; d < ndev; d++) {
            printf("%s{\"spec\": \"%s\", \"name\": ", d ? ", " : "", spec[d]);
            json_str(info[d].name);
            printf(", \"seconds\": %.3f}", secs[d]);
        }
        printf("]}}\n");
    } else {
        for (int d = 0; d < ndev; d++)
            printf("device %s: %s (%s)%s\n", spec[d], info[d].name, info[d].platform_name,
                   run ? "" : " - not run (--no-run)");
        if (no_device) printf("no OpenCL device: %s\n", kiln_last_error());
        if (!gs.dir)
            printf("golden files: no directory known (set KILN_GOLDEN_DIR): golden is unknown\n\n");
        else if (!golden_done)
            printf("golden files: not read (no device to open them with): golden is unknown\n\n");
        else if (!golden_read)
            printf("golden files: none readable in %s: golden is unknown\n\n", gs.dir);
        else
            printf("golden files: %s (%d of %d read)\n\n", gs.dir, golden_read, gs.nfile);
        printf("%-18s %-11s %-8s %-20s %-7s %s\n", "op", "family", "backward", "reference", "golden", "passed on");
        for (int k = 0; k < NOPS; k++) {
            if (!selected[k]) continue;
            char refs[48], passed[MAX_DEV * 17 + 1] = "";
            refs_str(OPS[k].refs, refs, sizeof refs);
            for (int d = 0; d < ndev; d++)
                if (pass[k][d] == 1)
                    snprintf(passed + strlen(passed), sizeof passed - strlen(passed), "%s%s", *passed ? " " : "",
                             spec[d]);
            printf("%-18s %-11s %-8s %-20s %-7s %s\n", OPS[k].name, OPS[k].family, OPS[k].backward ? "yes" : "no", refs,
                   gname[gold[k] + 1], *passed ? passed : "-");
        }
        if (nfail) printf("\n");
        for (int k = 0; k < NOPS; k++)
            for (int d = 0; d < ndev; d++)
                if (pass[k][d] == 0) printf("FAILED %s on %s: %s\n", OPS[k].name, spec[d], why[k][d]);
        printf("\nops: %d, with backward: %d, with torch golden test: %d, passed on all devices: ", nops, nbw, ngold);
        if (run && ndev > 0)
            printf("%d\n", nall_pass);
        else
            printf("not run\n");
        for (int d = 0; run && d < ndev; d++)
            printf("smoke run on %s: %.1f s\n", spec[d], secs[d]);
    }
    for (int k = 0; k < NOPS; k++)
        for (int d = 0; d < ndev; d++)
            free(why[k][d]);
    if (no_device) return 77;
    return nfail ? 1 : 0;
}
