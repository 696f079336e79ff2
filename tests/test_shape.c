/* tests/test_shape.c - concat, stack, pad, flatten, index_select and gather: forward
 * against plain-C double references over odd shapes and views (with guard regions around
 * every storage), gradients by finite differences, PyTorch golden values, error paths
 * and leaks.
 *
 * References read every input through the harness's own view model (h_view, h_at) into a
 * row-major double array and work on that, so a wrong stride or offset in kiln shows up.
 *
 * Tolerances:
 *   forward, every op: exact (atol = rtol = 0; NaN and Inf matched). The ops copy
 *     elements or write the fill value; no arithmetic touches a value.
 *   gradients of concat, stack, pad, flatten (gc_check): atol 1e-6 of the gradient's
 *     scale. Each gradient element is one seed element, copied, or 0: kiln is exact; the
 *     central difference of the double reference, linear in x, is exact up to double
 *     rounding of the loss (~1e-16 * |loss| / h ~ 1e-10 relative).
 *   gradients of index_select and gather: atol 1e-6 of the scale, rtol 1e-5: an element
 *     sums the seed entries whose index points at it (a handful here) in float32, a few
 *     roundings of 2^-24 each.
 *   golden (PyTorch): outputs and copy gradients exact; index_select/gather gradients
 *     atol 1e-6, rtol 1e-6: the same float sums, which torch adds in another order.
 */
#include <float.h>

#include "gradcheck.h"
#include "golden.h"
#include "kiln_test_hooks.h"

/* ---- operands: a host base buffer, a kiln view of it, and the harness's model ------- */

typedef struct vspec {
    int ndim;
    int64_t shape[5];
    int tf; /* TF_T: transpose(p0, p1); TF_S: slice(dim p0, start p1, end p2, step p3) */
    int64_t p[4];
} vspec;

typedef struct operand {
    float *base;
    h_view hv;
    kiln_tensor *base_t, *t;
    double *val; /* the view's elements, row-major */
    int64_t n;
} operand;

static const float specials[] = {NAN, INFINITY, -INFINITY, -0.0f, FLT_MAX, FLT_MIN};

static void apply_tf(kiln_ctx *ctx, const vspec *s, h_view *v, kiln_tensor **t) {
    h_tf f = {s->tf, {s->p[0], s->p[1], s->p[2], s->p[3]}};
    *t = h_view_apply(ctx, *t, v, &f);
}

/* A float operand; `spec` > 0 sprinkles NaN/Inf/-0/extremes over about 1 in spec elements. */
static bool make_operand(kiln_ctx *ctx, const vspec *s, int spec, operand *o) {
    memset(o, 0, sizeof *o);
    int64_t bn = h_numel(s->ndim, s->shape);
    o->base = malloc(sizeof(float) * (size_t)(bn > 0 ? bn : 1));
    for (int64_t i = 0; i < bn; i++) {
        o->base[i] = h_uniform(-3, 3);
        if (spec > 0 && (i * 7 + 3) % spec == 0) o->base[i] = specials[(i / spec) % 6];
    }
    o->base_t = o->t = kiln_from_host(ctx, o->base, KILN_F32, s->ndim, s->shape);
    o->hv = h_contig(s->ndim, s->shape);
    apply_tf(ctx, s, &o->hv, &o->t);
    o->n = h_numel(o->hv.ndim, o->hv.shape);
    o->val = malloc(sizeof(double) * (size_t)(o->n > 0 ? o->n : 1));
    for (int64_t i = 0; i < o->n; i++) o->val[i] = h_at(o->base, &o->hv, i);
    CHECK(o->t != NULL, "making an operand: %s", kiln_error_message(ctx));
    return o->t != NULL;
}

static void free_operand(operand *o) {
    free(o->base);
    free(o->val);
}

/* An I32 index operand with values in [0, range) (or given ones) through a view. */
typedef struct ioperand {
    int32_t *base;
    h_view hv;
    kiln_tensor *t;
    int32_t *val;
    int64_t n;
} ioperand;

static bool make_index(kiln_ctx *ctx, const vspec *s, int32_t range, ioperand *o) {
    memset(o, 0, sizeof *o);
    int64_t bn = h_numel(s->ndim, s->shape);
    o->base = malloc(sizeof(int32_t) * (size_t)(bn > 0 ? bn : 1));
    for (int64_t i = 0; i < bn; i++) o->base[i] = (int32_t)(h_uniform(0, 1) * (float)range) % (range > 0 ? range : 1);
    o->t = kiln_from_host(ctx, o->base, KILN_I32, s->ndim, s->shape);
    o->hv = h_contig(s->ndim, s->shape);
    apply_tf(ctx, s, &o->hv, &o->t);
    o->n = h_numel(o->hv.ndim, o->hv.shape);
    o->val = malloc(sizeof(int32_t) * (size_t)(o->n > 0 ? o->n : 1));
    for (int64_t i = 0; i < o->n; i++) {
        int64_t off = o->hv.offset, r = i;
        for (int d = o->hv.ndim - 1; d >= 0; d--) {
            off += (r % o->hv.shape[d]) * o->hv.strides[d];
            r /= o->hv.shape[d];
        }
        o->val[i] = o->base[off];
    }
    CHECK(o->t != NULL, "making an index: %s", kiln_error_message(ctx));
    return o->t != NULL;
}

static void free_index(ioperand *o) {
    free(o->base);
    free(o->val);
}

static void unravel(int64_t i, int ndim, const int64_t *shape, int64_t *c) {
    for (int d = ndim - 1; d >= 0; d--) {
        c[d] = i % shape[d];
        i /= shape[d];
    }
}

static int64_t ravel(int ndim, const int64_t *shape, const int64_t *c) {
    int64_t i = 0;
    for (int d = 0; d < ndim; d++) i = i * shape[d] + c[d];
    return i;
}

static bool same_shape(kiln_tensor *t, int ndim, const int64_t *shape) {
    return t && kiln_tensor_ndim(t) == ndim &&
           (ndim == 0 || memcmp(kiln_tensor_shape(t), shape, sizeof(int64_t) * (size_t)ndim) == 0);
}

/* Compares an output with a reference exactly, after checking its shape. */
static void check_exact(const char *what, kiln_ctx *ctx, kiln_tensor *out, int ndim, const int64_t *shape,
                        const double *ref) {
    CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (!out) return;
    char a[160], b[160];
    CHECK(same_shape(out, ndim, shape), "%s: shape %s, expected %s", what, kiln_tensor_shape_str(out, a, sizeof a),
          kiln__shape_str(ndim, shape, b, sizeof b));
    if (!same_shape(out, ndim, shape)) return;
    CHECK(kiln_tensor_is_contiguous(out), "%s: output not contiguous", what);
    float *got = h_read(out);
    h_compare(what, got, ref, h_numel(ndim, shape), 0, 0);
    free(got);
}

static void check_guards(kiln_ctx *ctx, const char *what) {
    char msg[256];
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
}

/* ---- double references (row-major arrays) ------------------------------------------- */

/* concat (stack: the inputs have a size-1 dim inserted at dim, same memory) */
typedef struct cat_user {
    int n, ndim, dim;                 /* ndim/dim of the output */
    int64_t shape[24][KILN_MAX_DIMS]; /* inputs' shapes in the output's rank */
} cat_user;

static void ref_cat(void *user, double *const *in, double *out) {
    const cat_user *u = user;
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < u->dim; d++) outer *= u->shape[0][d];
    for (int d = u->dim + 1; d < u->ndim; d++) inner *= u->shape[0][d];
    int64_t pos = 0;
    for (int64_t o = 0; o < outer; o++)
        for (int k = 0; k < u->n; k++) {
            int64_t blk = u->shape[k][u->dim] * inner;
            for (int64_t j = 0; j < blk; j++) out[pos++] = in[k][o * blk + j];
        }
}

typedef struct pad_user {
    int ndim;
    int64_t xshape[KILN_MAX_DIMS], oshape[KILN_MAX_DIMS], before[KILN_MAX_DIMS];
    double value;
} pad_user;

static void ref_pad(void *user, double *const *in, double *out) {
    const pad_user *u = user;
    int64_t n = h_numel(u->ndim, u->oshape), c[KILN_MAX_DIMS];
    for (int64_t i = 0; i < n; i++) {
        unravel(i, u->ndim, u->oshape, c);
        bool inside = true;
        for (int d = 0; d < u->ndim; d++) {
            c[d] -= u->before[d];
            inside = inside && c[d] >= 0 && c[d] < u->xshape[d];
        }
        out[i] = inside ? in[0][ravel(u->ndim, u->xshape, c)] : u->value;
    }
}

/* index_select and gather: x of xshape; gather's index has ishape, index_select's len */
typedef struct idx_user {
    int ndim, dim;
    int64_t xshape[KILN_MAX_DIMS], ishape[KILN_MAX_DIMS];
    const int32_t *idx;
    int64_t len;
} idx_user;

static void ref_index_select(void *user, double *const *in, double *out) {
    const idx_user *u = user;
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < u->dim; d++) outer *= u->xshape[d];
    for (int d = u->dim + 1; d < u->ndim; d++) inner *= u->xshape[d];
    int64_t R = u->ndim ? u->xshape[u->dim] : 1;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < u->len; j++)
            for (int64_t k = 0; k < inner; k++)
                out[(o * u->len + j) * inner + k] = in[0][(o * R + u->idx[j]) * inner + k];
}

static void ref_gather(void *user, double *const *in, double *out) {
    const idx_user *u = user;
    int64_t n = h_numel(u->ndim, u->ishape), c[KILN_MAX_DIMS];
    for (int64_t i = 0; i < n; i++) {
        unravel(i, u->ndim, u->ishape, c);
        c[u->dim] = u->idx[i];
        out[i] = in[0][ravel(u->ndim, u->xshape, c)];
    }
}

/* ---- concat and stack forward -------------------------------------------------------- */

#define V(n, ...)                                                                                                      \
    {                                                                                                                  \
        n, {__VA_ARGS__}, TF_NONE, { 0 }                                                                               \
    }
#define VT(n, a, b, ...)                                                                                               \
    {                                                                                                                  \
        n, {__VA_ARGS__}, TF_T, { a, b }                                                                               \
    }
#define VS(n, d, s, e, st, ...)                                                                                        \
    {                                                                                                                  \
        n, {__VA_ARGS__}, TF_S, { d, s, e, st }                                                                        \
    }

typedef struct cat_case {
    const char *name;
    int n, dim;
    vspec in[8];
} cat_case;

static const cat_case cat_cases[] = {
    {"1-D primes", 4, 0, {V(1, 13), V(1, 1), V(1, 0), V(1, 7)}},
    {"5x7x11 along dim 1 with views", 3, 1, {V(3, 5, 3, 11), VT(3, 0, 1, 7, 5, 11), VS(3, 1, 2, 3, 1, 5, 4, 11)}},
    {"dim -1, transposed and stepped", 3, -1, {VT(3, 0, 2, 11, 7, 5), VS(3, 2, 1, 12, 5, 5, 7, 12), V(3, 5, 7, 2)}},
    {"dim 0, offset views", 2, 0, {VS(2, 0, 3, 8, 1, 9, 13), VT(2, 0, 1, 13, 2)}},
    {"single input", 1, 2, {VT(3, 1, 2, 2, 3, 5)}},
    {"6 inputs", 6, 1, {V(2, 3, 1), V(2, 3, 2), VT(2, 0, 1, 3, 3), V(2, 3, 4), V(2, 3, 0), V(2, 3, 6)}},
    {"empty along another dim", 2, 1, {V(2, 0, 3), V(2, 0, 5)}},
    {"large, several work-groups", 2, 0, {V(2, 67, 61), VT(2, 0, 1, 61, 33)}},
    {"4-D channel concat", 2, 1, {V(4, 2, 3, 5, 7), V(4, 2, 4, 5, 7)}},
};

static const cat_case stack_cases[] = {
    {"0-d inputs", 3, 0, {V(0, 0), V(0, 0), V(0, 0)}},
    {"[5,7] at dim 0 with views", 3, 0, {V(2, 5, 7), VT(2, 0, 1, 7, 5), VS(2, 1, 1, 15, 2, 5, 15)}},
    {"[5,7] at dim 1", 3, 1, {V(2, 5, 7), VT(2, 0, 1, 7, 5), VS(2, 1, 1, 15, 2, 5, 15)}},
    {"[5,7] at dim -1", 3, -1, {V(2, 5, 7), VT(2, 0, 1, 7, 5), VS(2, 1, 1, 15, 2, 5, 15)}},
    {"7 inputs [3,1,2] at dim 2",
     7,
     2,
     {V(3, 3, 1, 2), V(3, 3, 1, 2), V(3, 3, 1, 2), VT(3, 0, 2, 2, 1, 3), V(3, 3, 1, 2), V(3, 3, 1, 2), V(3, 3, 1, 2)}},
    {"empty inputs", 2, 1, {V(2, 4, 0), V(2, 4, 0)}},
};

/* Runs a concat or stack case and compares with ref_cat; fills the cat_user. */
static void run_cat(kiln_ctx *ctx, const cat_case *c, bool stack) {
    char what[200];
    snprintf(what, sizeof what, "%s, %s", stack ? "kiln_stack" : "kiln_concat", c->name);
    operand o[8] = {{0}};
    kiln_tensor *ts[8] = {0};
    bool ok = c->n > 0;
    for (int k = 0; k < c->n; k++) {
        ok &= make_operand(ctx, &c->in[k], 5, &o[k]);
        ts[k] = o[k].t;
    }
    cat_user u = {.n = c->n};
    int ind = o[0].hv.ndim;
    u.ndim = stack ? ind + 1 : ind;
    u.dim = c->dim < 0 ? c->dim + u.ndim : c->dim;
    for (int k = 0; k < c->n; k++)
        for (int d = 0, s = 0; d < u.ndim; d++) u.shape[k][d] = (stack && d == u.dim) ? 1 : o[k].hv.shape[s++];
    int64_t oshape[KILN_MAX_DIMS];
    memcpy(oshape, u.shape[0], sizeof oshape);
    oshape[u.dim] = 0;
    for (int k = 0; k < c->n; k++) oshape[u.dim] += u.shape[k][u.dim];
    if (ok) {
        kiln_tensor *out = stack ? kiln_stack(ctx, c->n, ts, c->dim) : kiln_concat(ctx, c->n, ts, c->dim);
        int64_t n = h_numel(u.ndim, oshape);
        double *ref = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
        double *in[8];
        for (int k = 0; k < c->n; k++) in[k] = o[k].val;
        ref_cat(&u, in, ref);
        check_exact(what, ctx, out, u.ndim, oshape, ref);
        free(ref);
    }
    kiln_error_clear(ctx);
    for (int k = 0; k < c->n; k++) free_operand(&o[k]);
}

/* I32 and U8 inputs: concat moves bits of any dtype. */
static void test_cat_dtypes(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int32_t a[6] = {1, -2, 3, 2147483647, -2147483647 - 1, 0}, b[3] = {7, 8, 9};
    kiln_tensor *ta = kiln_from_host(ctx, a, KILN_I32, 2, (int64_t[]){3, 2});
    kiln_tensor *tb = kiln_from_host(ctx, b, KILN_I32, 2, (int64_t[]){3, 1});
    kiln_tensor *r = kiln_concat(ctx, 2, (kiln_tensor *[]){ta, tb}, 1);
    int32_t got[9] = {0}, want[9] = {1, -2, 7, 3, 2147483647, 8, -2147483647 - 1, 0, 9};
    CHECK(r && kiln_tensor_dtype(r) == KILN_I32 && kiln_to_host(r, got, sizeof got) == KILN_OK &&
              memcmp(got, want, sizeof want) == 0,
          "i32 concat: %s", kiln_error_message(ctx));
    uint8_t u[5] = {1, 2, 3, 4, 255};
    kiln_tensor *tu = kiln_from_host(ctx, u, KILN_U8, 1, (int64_t[]){5});
    kiln_tensor *s = kiln_stack(ctx, 2, (kiln_tensor *[]){tu, kiln_slice(ctx, tu, 0, 0, 5, 1)}, 1);
    uint8_t gu[10] = {0}, wu[10] = {1, 1, 2, 2, 3, 3, 4, 4, 255, 255};
    CHECK(s && kiln_to_host(s, gu, sizeof gu) == KILN_OK && memcmp(gu, wu, sizeof wu) == 0, "u8 stack: %s",
          kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- pad forward --------------------------------------------------------------------- */

typedef struct pad_case {
    const char *name;
    vspec x;
    int npad;
    int64_t pad[8];
    float value;
} pad_case;

static const pad_case pad_cases[] = {
    {"last dim", V(3, 5, 7, 11), 2, {1, 2}, 0.0f},
    {"two dims, crop and pad", V(3, 5, 7, 11), 4, {1, -2, -1, 3}, -3.5f},
    {"three dims", V(3, 5, 7, 11), 6, {-3, 4, 2, 0, 0, -4}, 1.25f},
    {"crop to zero", V(2, 5, 7), 2, {-3, -4}, 2.0f},
    {"transposed view, NaN fill", VT(3, 0, 2, 11, 7, 5), 4, {2, 2, 1, 0}, NAN},
    {"stepped view, Inf fill", VS(3, 2, 1, 22, 3, 5, 7, 22), 6, {0, 1, 1, 0, 1, 1}, INFINITY},
    {"no padding", VT(2, 0, 1, 7, 5), 0, {0}, 9.0f},
    {"zero amounts", V(3, 2, 3, 4), 6, {0, 0, 0, 0, 0, 0}, 9.0f},
    {"0-d", V(0, 0), 0, {0}, 1.0f},
    {"empty input padded", V(2, 3, 0), 2, {2, 1}, 4.0f},
    {"size-1 dims", V(4, 1, 3, 1, 1), 4, {2, 0, 1, 1}, -1.0f},
    {"NCHW spatial padding", V(4, 2, 3, 13, 17), 4, {1, 1, 1, 1}, 0.0f},
    {"large", V(2, 130, 70), 4, {3, -5, 7, 2}, 0.5f},
};

static void fill_pad_user(pad_user *u, const h_view *hv, int npad, const int64_t *pad, float value) {
    memset(u, 0, sizeof *u);
    u->ndim = hv->ndim;
    u->value = value;
    for (int d = 0; d < hv->ndim; d++) u->xshape[d] = u->oshape[d] = hv->shape[d];
    for (int p = 0; p < npad / 2; p++) {
        int d = hv->ndim - 1 - p;
        u->before[d] = pad[2 * p];
        u->oshape[d] += pad[2 * p] + pad[2 * p + 1];
    }
}

static void run_pad(kiln_ctx *ctx, const pad_case *c) {
    char what[200];
    snprintf(what, sizeof what, "kiln_pad, %s", c->name);
    operand o;
    if (make_operand(ctx, &c->x, 6, &o)) {
        pad_user u;
        fill_pad_user(&u, &o.hv, c->npad, c->pad, c->value);
        kiln_tensor *out = kiln_pad(ctx, o.t, c->npad, c->pad, c->value);
        int64_t n = h_numel(u.ndim, u.oshape);
        double *ref = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
        double *in[1] = {o.val};
        ref_pad(&u, in, ref);
        check_exact(what, ctx, out, u.ndim, u.oshape, ref);
        free(ref);
    }
    kiln_error_clear(ctx);
    free_operand(&o);
}

static void test_pad_dtypes(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int32_t a[4] = {1, 2, 3, 4};
    kiln_tensor *ta = kiln_from_host(ctx, a, KILN_I32, 2, (int64_t[]){2, 2});
    kiln_tensor *r = kiln_pad(ctx, ta, 4, (int64_t[]){1, 0, 0, 1}, -7.0f);
    int32_t got[9] = {0}, want[9] = {-7, 1, 2, -7, 3, 4, -7, -7, -7};
    CHECK(r && kiln_tensor_dtype(r) == KILN_I32 && kiln_to_host(r, got, sizeof got) == KILN_OK &&
              memcmp(got, want, sizeof want) == 0,
          "i32 pad: %s", kiln_error_message(ctx));
    uint8_t u[3] = {5, 6, 7};
    kiln_tensor *tu = kiln_from_host(ctx, u, KILN_U8, 1, (int64_t[]){3});
    kiln_tensor *s = kiln_pad(ctx, tu, 2, (int64_t[]){-1, 2}, 200.0f);
    uint8_t gu[4] = {0}, wu[4] = {6, 7, 200, 200};
    CHECK(s && kiln_to_host(s, gu, sizeof gu) == KILN_OK && memcmp(gu, wu, sizeof wu) == 0, "u8 pad: %s",
          kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- flatten --------------------------------------------------------------------------- */

static void test_flatten(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    static const struct {
        const char *name;
        vspec x;
        int s, e;
        bool view; /* expected to share x's storage */
    } cases[] = {
        {"all dims", V(3, 5, 7, 11), 0, -1, true},
        {"middle dims", V(4, 2, 3, 5, 7), 1, 2, true},
        {"last dims, negative", V(4, 2, 3, 5, 7), -2, -1, true},
        {"one dim (unchanged)", V(3, 5, 7, 11), 1, 1, true},
        {"0-d", V(0, 0), 0, -1, true},
        {"transposed view (copy)", VT(3, 0, 2, 11, 7, 5), 0, 1, false},
        {"sliced last dim, mergeable (view)", VS(3, 2, 0, 11, 1, 5, 7, 22), 0, 1, true},
        {"sliced rows (view)", VS(3, 0, 1, 4, 1, 5, 7, 11), 0, -1, true},
        {"stepped, not mergeable (copy)", VS(2, 1, 0, 11, 2, 7, 11), 0, 1, false},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char what[160];
        snprintf(what, sizeof what, "kiln_flatten, %s", cases[k].name);
        operand o;
        if (make_operand(ctx, &cases[k].x, 0, &o)) {
            int nd = o.hv.ndim ? o.hv.ndim : 1;
            int s = cases[k].s < 0 ? cases[k].s + nd : cases[k].s, e = cases[k].e < 0 ? cases[k].e + nd : cases[k].e;
            int64_t sh[KILN_MAX_DIMS];
            int m = 0;
            if (o.hv.ndim == 0)
                sh[m++] = 1;
            else {
                for (int d = 0; d < s; d++) sh[m++] = o.hv.shape[d];
                sh[m] = 1;
                for (int d = s; d <= e; d++) sh[m] *= o.hv.shape[d];
                m++;
                for (int d = e + 1; d < o.hv.ndim; d++) sh[m++] = o.hv.shape[d];
            }
            kiln_tensor *out = kiln_flatten(ctx, o.t, cases[k].s, cases[k].e);
            CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
            if (out) {
                CHECK(same_shape(out, m, sh), "%s: wrong shape", what);
                float *got = h_read(out);
                h_compare(what, got, o.val, o.n, 0, 0);
                free(got);
                if (cases[k].view) CHECK(out->st == o.t->st, "%s: expected a view (no copy)", what);
            }
        }
        kiln_error_clear(ctx);
        free_operand(&o);
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* ---- index_select and gather forward ------------------------------------------------- */

typedef struct isel_case {
    const char *name;
    vspec x;
    int dim;
    vspec index; /* 1-D or 0-d */
} isel_case;

static const isel_case isel_cases[] = {
    {"dim 0 of 5x7x11", V(3, 5, 7, 11), 0, V(1, 9)},
    {"dim 1 of 5x7x11", V(3, 5, 7, 11), 1, V(1, 13)},
    {"dim -1 of a transposed view", VT(3, 0, 2, 11, 7, 5), -1, V(1, 3)},
    {"stepped index view", VS(3, 1, 1, 14, 2, 5, 14, 11), 1, VS(1, 0, 1, 20, 3, 20)},
    {"0-d index", V(2, 5, 7), 1, V(0, 0)},
    {"empty index", V(2, 5, 7), 0, V(1, 0)},
    {"1-D input", V(1, 13), 0, V(1, 31)},
    {"0-d input", V(0, 0), 0, V(1, 1)},
    {"large", V(2, 300, 64), 0, V(1, 500)},
};

static void run_isel(kiln_ctx *ctx, const isel_case *c) {
    char what[200];
    snprintf(what, sizeof what, "kiln_index_select, %s", c->name);
    operand o;
    ioperand ix;
    bool ok = make_operand(ctx, &c->x, 5, &o);
    int nd = o.hv.ndim ? o.hv.ndim : 1, dim = c->dim < 0 ? c->dim + nd : c->dim;
    int64_t R = o.hv.ndim ? o.hv.shape[dim] : 1;
    ok &= make_index(ctx, &c->index, (int32_t)R, &ix);
    if (ok) {
        idx_user u = {.ndim = o.hv.ndim, .dim = dim, .idx = ix.val, .len = ix.n};
        memcpy(u.xshape, o.hv.shape, sizeof u.xshape);
        int64_t oshape[KILN_MAX_DIMS];
        memcpy(oshape, o.hv.shape, sizeof oshape);
        if (o.hv.ndim) oshape[dim] = ix.n;
        kiln_tensor *out = kiln_index_select(ctx, o.t, c->dim, ix.t);
        int64_t n = h_numel(o.hv.ndim, oshape);
        double *ref = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
        double *in[1] = {o.val};
        ref_index_select(&u, in, ref);
        check_exact(what, ctx, out, o.hv.ndim, oshape, ref);
        free(ref);
    }
    kiln_error_clear(ctx);
    free_operand(&o);
    free_index(&ix);
}

typedef struct gather_case {
    const char *name;
    vspec x;
    int dim;
    vspec index; /* same rank as x */
} gather_case;

static const gather_case gather_cases[] = {
    {"dim 1 of 5x7x11, same shape", V(3, 5, 7, 11), 1, V(3, 5, 7, 11)},
    {"dim 0, index smaller elsewhere", V(3, 5, 7, 11), 0, V(3, 9, 3, 11)},
    {"dim -1, index longer there", V(3, 5, 7, 11), -1, V(3, 2, 7, 17)},
    {"transposed input", VT(3, 0, 2, 11, 7, 5), 2, V(3, 5, 6, 3)},
    {"transposed index", V(2, 7, 5), 1, VT(2, 0, 1, 4, 7)},
    {"stepped index", V(2, 7, 5), 0, VS(2, 1, 0, 9, 2, 6, 9)},
    {"empty index", V(2, 7, 5), 1, V(2, 7, 0)},
    {"0-d", V(0, 0), 0, V(0, 0)},
    {"1-D", V(1, 13), 0, V(1, 29)},
    {"large", V(2, 97, 130), 1, V(2, 97, 60)},
};

static void run_gather(kiln_ctx *ctx, const gather_case *c) {
    char what[200];
    snprintf(what, sizeof what, "kiln_gather, %s", c->name);
    operand o;
    ioperand ix;
    bool ok = make_operand(ctx, &c->x, 5, &o);
    int nd = o.hv.ndim ? o.hv.ndim : 1, dim = c->dim < 0 ? c->dim + nd : c->dim;
    int64_t R = o.hv.ndim ? o.hv.shape[dim] : 1;
    ok &= make_index(ctx, &c->index, (int32_t)R, &ix);
    if (ok) {
        idx_user u = {.ndim = nd, .dim = dim, .idx = ix.val};
        for (int d = 0; d < nd; d++) {
            u.xshape[d] = o.hv.ndim ? o.hv.shape[d] : 1;
            u.ishape[d] = ix.hv.ndim ? ix.hv.shape[d] : 1;
        }
        kiln_tensor *out = kiln_gather(ctx, o.t, c->dim, ix.t);
        double *ref = malloc(sizeof(double) * (size_t)(ix.n > 0 ? ix.n : 1));
        double *in[1] = {o.val};
        ref_gather(&u, in, ref);
        check_exact(what, ctx, out, ix.hv.ndim, ix.hv.shape, ref);
        free(ref);
    }
    kiln_error_clear(ctx);
    free_operand(&o);
    free_index(&ix);
}

static void test_index_dtypes(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int32_t a[6] = {10, 11, 12, 13, 14, 15}, idx[4] = {2, 0, 2, 1};
    kiln_tensor *ta = kiln_from_host(ctx, a, KILN_I32, 2, (int64_t[]){2, 3});
    kiln_tensor *ti = kiln_from_host(ctx, idx, KILN_I32, 1, (int64_t[]){4});
    kiln_tensor *r = kiln_index_select(ctx, ta, 1, ti);
    int32_t got[8] = {0}, want[8] = {12, 10, 12, 11, 15, 13, 15, 14};
    CHECK(r && kiln_tensor_dtype(r) == KILN_I32 && kiln_to_host(r, got, sizeof got) == KILN_OK &&
              memcmp(got, want, sizeof want) == 0,
          "i32 index_select: %s", kiln_error_message(ctx));
    int32_t gi[4] = {1, 1, 0, 1};
    kiln_tensor *tg = kiln_from_host(ctx, gi, KILN_I32, 2, (int64_t[]){2, 2});
    kiln_tensor *g = kiln_gather(ctx, ta, 0, tg);
    int32_t got2[4] = {0}, want2[4] = {13, 14, 10, 14};
    CHECK(g && kiln_to_host(g, got2, sizeof got2) == KILN_OK && memcmp(got2, want2, sizeof want2) == 0,
          "i32 gather: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* Every forward case, with sentinels around every storage. */
static void test_forward(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 67);
    struct {
        const char *name;
        size_t n;
    } groups[] = {{"concat", sizeof cat_cases / sizeof cat_cases[0]},
                  {"stack", sizeof stack_cases / sizeof stack_cases[0]},
                  {"pad", sizeof pad_cases / sizeof pad_cases[0]},
                  {"index_select", sizeof isel_cases / sizeof isel_cases[0]},
                  {"gather", sizeof gather_cases / sizeof gather_cases[0]}};
    /* concat, stack and pad run with each kernel shape (device default, per element, per
     * row); the others have one */
    for (int gi = 0; gi < 5; gi++) {
        int nmodes = gi < 3 ? 3 : 1;
        for (size_t k = 0; k < groups[gi].n * (size_t)nmodes; k++) {
            size_t c = k / (size_t)nmodes;
            int mode = (int)(k % (size_t)nmodes);
            kiln__hooks_of(ctx)->shape_layout = mode; /* 1 per element, 2 per row */
            kiln_scope_begin(ctx);
            switch (gi) {
            case 0: run_cat(ctx, &cat_cases[c], false); break;
            case 1: run_cat(ctx, &stack_cases[c], true); break;
            case 2: run_pad(ctx, &pad_cases[c]); break;
            case 3: run_isel(ctx, &isel_cases[c]); break;
            default: run_gather(ctx, &gather_cases[c]); break;
            }
            char what[64];
            snprintf(what, sizeof what, "%s case %zu, layout %d", groups[gi].name, c, mode);
            check_guards(ctx, what);
            kiln_scope_end(ctx);
        }
    }
    kiln__hooks_of(ctx)->shape_layout = 0;
    kiln_scope_begin(ctx);
    test_cat_dtypes(ctx);
    test_pad_dtypes(ctx);
    test_index_dtypes(ctx);
    check_guards(ctx, "dtype cases");
    kiln_scope_end(ctx);
    kiln__set_guard(ctx, 0);
    test_flatten(ctx);
    CHECK_OK(ctx);
}

/* ---- gradients ------------------------------------------------------------------------ */

static void grad_operands(kiln_ctx *ctx, int n, const vspec *specs, operand *o, kiln_tensor **ts, double **hin,
                          bool *wanted, const bool *want) {
    for (int k = 0; k < n; k++) {
        make_operand(ctx, &specs[k], 0, &o[k]);
        ts[k] = o[k].t;
        hin[k] = o[k].val;
        wanted[k] = want ? want[k] : true;
        if (wanted[k]) kiln_tensor_set_requires_grad(o[k].t, true);
    }
}

static void grad_cat(kiln_ctx *ctx, const char *what, int n, const vspec *specs, const bool *want, int dim,
                     bool stack) {
    kiln_scope_begin(ctx);
    operand o[24];
    kiln_tensor *ts[24];
    double *hin[24];
    bool wanted[24];
    grad_operands(ctx, n, specs, o, ts, hin, wanted, want);
    cat_user u = {.n = n};
    int ind = o[0].hv.ndim;
    u.ndim = stack ? ind + 1 : ind;
    u.dim = dim < 0 ? dim + u.ndim : dim;
    for (int k = 0; k < n; k++)
        for (int d = 0, s = 0; d < u.ndim; d++) u.shape[k][d] = (stack && d == u.dim) ? 1 : o[k].hv.shape[s++];
    /* one node over all the inputs: the op adds its output and no other tensor (no group
     * views held by the graph) */
    int64_t live = kiln_ctx_num_tensors(ctx);
    kiln_tensor *y = stack ? kiln_stack(ctx, n, ts, dim) : kiln_concat(ctx, n, ts, dim);
    CHECK(kiln_ctx_num_tensors(ctx) == live + 1, "%s: %lld tensors made, only the output expected", what,
          (long long)(kiln_ctx_num_tensors(ctx) - live));
    gc_check(ctx, what, ref_cat, &u, n, ts, hin, wanted, y, 1e-6, 0);
    for (int k = 0; k < n; k++) {
        if (!wanted[k])
            CHECK(kiln_tensor_grad(ts[k]) == NULL, "%s: input %d does not require grad but got one", what, k);
        free_operand(&o[k]);
    }
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
}

static void test_grad_cat(kiln_ctx *ctx) {
    const vspec three[] = {V(3, 2, 3, 5), VT(3, 0, 1, 7, 2, 5), VS(3, 1, 1, 3, 1, 2, 4, 5)};
    grad_cat(ctx, "kiln_concat grad, dim 1 with views", 3, three, NULL, 1, false);
    vspec many[17];
    bool want[17];
    for (int k = 0; k < 17; k++) {
        many[k] = (vspec)V(2, 3, 1 + k % 3);
        want[k] = k % 5 != 2; /* some inputs without grad, in every group */
    }
    many[4] = (vspec)VT(2, 0, 1, 2, 3);
    grad_cat(ctx, "kiln_concat grad, 17 inputs", 17, many, want, -1, false);
    grad_cat(ctx, "kiln_concat grad, 9 inputs", 9, many, NULL, 1, false);
    grad_cat(ctx, "kiln_concat grad, 6 inputs", 6, many, NULL, 1, false);
    vspec nine[9];
    for (int k = 0; k < 9; k++) nine[k] = k % 4 == 1 ? (vspec)VT(2, 0, 1, 2, 3) : (vspec)V(2, 3, 2); /* all [3, 2] */
    grad_cat(ctx, "kiln_stack grad, 9 inputs at dim 0", 9, nine, want, 0, true);
    const vspec st[] = {V(2, 3, 5), VT(2, 0, 1, 5, 3), VS(2, 0, 1, 7, 2, 7, 5), V(2, 3, 5), V(2, 3, 5)};
    grad_cat(ctx, "kiln_stack grad, 5 inputs at dim 1", 5, st, NULL, 1, true);
    grad_cat(ctx, "kiln_stack grad, 3 inputs at dim -1", 3, st, NULL, -1, true);
    grad_cat(ctx, "kiln_stack grad, 2 inputs at dim 0", 2, st + 1, NULL, 0, true);

    /* the same tensor twice: its gradient is the sum of both slices */
    kiln_scope_begin(ctx);
    float h[6] = {1, 2, 3, 4, 5, 6}, s[12];
    for (int k = 0; k < 12; k++) s[k] = (float)(k + 1) * 0.5f;
    kiln_tensor *a = kiln_from_host(ctx, h, KILN_F32, 2, (int64_t[]){2, 3});
    kiln_tensor_set_requires_grad(a, true);
    kiln_tensor *y = kiln_concat(ctx, 2, (kiln_tensor *[]){a, a}, 0);
    kiln_tensor *seed = kiln_from_host(ctx, s, KILN_F32, 2, (int64_t[]){4, 3});
    CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "concat(a, a) backward: %s", kiln_error_message(ctx));
    float g[6] = {0};
    CHECK(kiln_tensor_grad(a) && kiln_to_host(kiln_tensor_grad(a), g, sizeof g) == KILN_OK, "concat(a, a) grad");
    for (int k = 0; k < 6; k++)
        CHECK(g[k] == s[k] + s[k + 6], "concat(a, a) grad[%d] = %g, want %g", k, g[k], s[k] + s[k + 6]);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void test_grad_pad(kiln_ctx *ctx) {
    static const struct {
        const char *name;
        vspec x;
        int npad;
        int64_t pad[6];
    } cases[] = {
        {"kiln_pad grad, pad and crop", V(3, 3, 5, 7), 4, {2, -1, -2, 3}},
        {"kiln_pad grad, three dims on a view", VT(3, 0, 2, 7, 5, 3), 6, {1, 1, -1, 0, 0, 2}},
        {"kiln_pad grad, crop to zero", V(2, 3, 4), 2, {-2, -2}},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        kiln_scope_begin(ctx);
        operand o;
        kiln_tensor *ts[1];
        double *hin[1];
        bool wanted[1];
        grad_operands(ctx, 1, &cases[k].x, &o, ts, hin, wanted, NULL);
        pad_user u;
        fill_pad_user(&u, &o.hv, cases[k].npad, cases[k].pad, 0.75f);
        kiln_tensor *y = kiln_pad(ctx, o.t, cases[k].npad, cases[k].pad, 0.75f);
        gc_check(ctx, cases[k].name, ref_pad, &u, 1, ts, hin, wanted, y, 1e-6, 0);
        free_operand(&o);
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
    CHECK_OK(ctx);
}

/* flatten's gradient is kiln_reshape's: the identity on the values. */
static void ref_identity(void *user, double *const *in, double *out) {
    int64_t n = *(const int64_t *)user;
    for (int64_t i = 0; i < n; i++) out[i] = in[0][i];
}

static void test_grad_flatten(kiln_ctx *ctx) {
    const vspec xs[] = {V(3, 3, 5, 7), VT(3, 0, 2, 7, 5, 3)};
    const char *names[] = {"kiln_flatten grad (view)", "kiln_flatten grad (copy of a transposed view)"};
    for (int k = 0; k < 2; k++) {
        kiln_scope_begin(ctx);
        operand o;
        kiln_tensor *ts[1];
        double *hin[1];
        bool wanted[1];
        grad_operands(ctx, 1, &xs[k], &o, ts, hin, wanted, NULL);
        kiln_tensor *y = kiln_flatten(ctx, o.t, 0, 1);
        gc_check(ctx, names[k], ref_identity, &o.n, 1, ts, hin, wanted, y, 1e-6, 0);
        free_operand(&o);
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
    CHECK_OK(ctx);
}

static void test_grad_index(kiln_ctx *ctx) {
    static const isel_case iss[] = {
        {"kiln_index_select grad, dim 1, repeats", V(3, 3, 5, 4), 1, V(1, 11)},
        {"kiln_index_select grad, dim 0 of a view, stepped index", VT(2, 0, 1, 7, 5), 0, VS(1, 0, 0, 13, 2, 13)},
        {"kiln_index_select grad, 0-d index", V(2, 4, 3), -1, V(0, 0)},
    };
    for (size_t k = 0; k < sizeof iss / sizeof iss[0]; k++) {
        kiln_scope_begin(ctx);
        operand o;
        ioperand ix;
        kiln_tensor *ts[1];
        double *hin[1];
        bool wanted[1];
        grad_operands(ctx, 1, &iss[k].x, &o, ts, hin, wanted, NULL);
        int dim = iss[k].dim < 0 ? iss[k].dim + o.hv.ndim : iss[k].dim;
        make_index(ctx, &iss[k].index, (int32_t)o.hv.shape[dim], &ix);
        idx_user u = {.ndim = o.hv.ndim, .dim = dim, .idx = ix.val, .len = ix.n};
        memcpy(u.xshape, o.hv.shape, sizeof u.xshape);
        kiln_tensor *y = kiln_index_select(ctx, o.t, iss[k].dim, ix.t);
        gc_check(ctx, iss[k].name, ref_index_select, &u, 1, ts, hin, wanted, y, 1e-6, 1e-5);
        free_operand(&o);
        free_index(&ix);
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
    static const gather_case gs[] = {
        {"kiln_gather grad, dim 1, index longer there", V(3, 3, 5, 4), 1, V(3, 3, 9, 4)},
        {"kiln_gather grad, dim 0, index smaller elsewhere", V(3, 4, 5, 3), 0, V(3, 6, 2, 3)},
        {"kiln_gather grad, transposed input and index", VT(2, 0, 1, 5, 4), -1, VT(2, 0, 1, 7, 3)},
    };
    for (size_t k = 0; k < sizeof gs / sizeof gs[0]; k++) {
        kiln_scope_begin(ctx);
        operand o;
        ioperand ix;
        kiln_tensor *ts[1];
        double *hin[1];
        bool wanted[1];
        grad_operands(ctx, 1, &gs[k].x, &o, ts, hin, wanted, NULL);
        int dim = gs[k].dim < 0 ? gs[k].dim + o.hv.ndim : gs[k].dim;
        make_index(ctx, &gs[k].index, (int32_t)o.hv.shape[dim], &ix);
        idx_user u = {.ndim = o.hv.ndim, .dim = dim, .idx = ix.val};
        memcpy(u.xshape, o.hv.shape, sizeof u.xshape);
        memcpy(u.ishape, ix.hv.shape, sizeof u.ishape);
        kiln_tensor *y = kiln_gather(ctx, o.t, gs[k].dim, ix.t);
        gc_check(ctx, gs[k].name, ref_gather, &u, 1, ts, hin, wanted, y, 1e-6, 1e-5);
        free_operand(&o);
        free_index(&ix);
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
    CHECK_OK(ctx);
}

/* The index backward kernels add in index order: two runs agree bit for bit. */
static void test_grad_deterministic(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    int64_t xs[2] = {40, 33}, n = 40 * 33, L = 400;
    float *x = malloc(sizeof(float) * (size_t)n), *seed = malloc(sizeof(float) * (size_t)(L * 33));
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)L);
    h_fill(x, n, -1, 1);
    h_fill(seed, L * 33, -1, 1);
    for (int64_t j = 0; j < L; j++) idx[j] = (int32_t)(j * 7 % 40);
    float *g[2] = {NULL, NULL};
    for (int run = 0; run < 2; run++) {
        kiln_tensor *tx = kiln_from_host(ctx, x, KILN_F32, 2, xs);
        kiln_tensor_set_requires_grad(tx, true);
        kiln_tensor *ti = kiln_from_host(ctx, idx, KILN_I32, 1, &L);
        kiln_tensor *y = kiln_index_select(ctx, tx, 0, ti);
        kiln_tensor *s = kiln_from_host(ctx, seed, KILN_F32, 2, (int64_t[]){L, 33});
        CHECK(kiln_backward_ex(y, s, false) == KILN_OK, "backward: %s", kiln_error_message(ctx));
        g[run] = kiln_tensor_grad(tx) ? h_read(kiln_tensor_grad(tx)) : NULL;
    }
    CHECK(g[0] && g[1] && memcmp(g[0], g[1], sizeof(float) * (size_t)n) == 0,
          "index_select backward differs between two runs");
    free(g[0]);
    free(g[1]);
    free(x);
    free(seed);
    free(idx);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

/* Graphs through the ops release everything with their scope. */
static void test_grad_lifetime(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_scope_begin(ctx);
    kiln_tensor *ts[9];
    for (int k = 0; k < 9; k++) {
        ts[k] = kiln_rand_uniform(ctx, -1, 1, 2, (int64_t[]){2, 3});
        kiln_tensor_set_requires_grad(ts[k], true);
    }
    kiln_tensor *c = kiln_concat(ctx, 9, ts, 0);
    kiln_tensor *s = kiln_stack(ctx, 9, ts, 1);
    int32_t iv[3] = {1, 0, 1}, gv[3] = {3, 0, 4};
    kiln_tensor *ix = kiln_from_host(ctx, iv, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor *gx = kiln_from_host(ctx, gv, KILN_I32, 2, (int64_t[]){1, 3});
    kiln_tensor *sel = kiln_index_select(ctx, kiln_pad(ctx, c, 2, (int64_t[]){1, -1}, 0), 0, ix);
    kiln_tensor *gat = kiln_gather(ctx, kiln_flatten(ctx, s, 1, 2), 1, gx);
    kiln_tensor *y = kiln_add(ctx, kiln_sum(ctx, sel, 0, NULL, false), kiln_sum(ctx, gat, 0, NULL, false));
    CHECK(y && kiln_backward(y) == KILN_OK, "chain backward: %s", kiln_error_message(ctx));
    /* c = concat: rows 2k, 2k+1 are ts[k]. pad shifts c right by one column and crops its
     * last column; index_select takes rows 1, 0, 1: ts[0] row 1 twice and row 0 once, in
     * columns 0 and 1. s = stack at dim 1, flattened: row 0 is ts[0][0], ts[1][0], ...;
     * gather takes its columns 3, 0, 4: ts[1][0][0], ts[0][0][0], ts[1][0][1]. */
    float g0[6] = {0}, g1[6] = {0}, g2[6] = {0};
    CHECK(kiln_tensor_grad(ts[0]) && kiln_to_host(kiln_tensor_grad(ts[0]), g0, sizeof g0) == KILN_OK, "grad ts[0]");
    CHECK(kiln_tensor_grad(ts[1]) && kiln_to_host(kiln_tensor_grad(ts[1]), g1, sizeof g1) == KILN_OK, "grad ts[1]");
    CHECK(kiln_tensor_grad(ts[2]) && kiln_to_host(kiln_tensor_grad(ts[2]), g2, sizeof g2) == KILN_OK, "grad ts[2]");
    const float w0[6] = {2, 1, 0, 2, 2, 0}, w1[6] = {1, 1, 0, 0, 0, 0}, w2[6] = {0};
    CHECK(memcmp(g0, w0, sizeof w0) == 0, "grad ts[0] = [%g %g %g; %g %g %g]", g0[0], g0[1], g0[2], g0[3], g0[4],
          g0[5]);
    CHECK(memcmp(g1, w1, sizeof w1) == 0, "grad ts[1] = [%g %g %g; %g %g %g]", g1[0], g1[1], g1[2], g1[3], g1[4],
          g1[5]);
    CHECK(memcmp(g2, w2, sizeof w2) == 0, "grad ts[2] = [%g %g %g; %g %g %g]", g2[0], g2[1], g2[2], g2[3], g2[4],
          g2[5]);
    for (int k = 0; k < 9; k++) kiln_tensor_free(ts[k]);
    /* a graph that is never run back is released with its scope too */
    kiln_tensor *a = kiln_rand_uniform(ctx, -1, 1, 1, (int64_t[]){4});
    kiln_tensor_set_requires_grad(a, true);
    kiln_tensor *many[6] = {a, a, a, a, a, a};
    CHECK(kiln_stack(ctx, 6, many, 0) != NULL, "stack of 6: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "%lld tensors left after the scope",
          (long long)(kiln_ctx_num_tensors(ctx) - before));
    CHECK_OK(ctx);
}

/* ---- PyTorch golden values ------------------------------------------------------------ */

static kiln_tensor *gup(kiln_ctx *ctx, const golden *g, const char *name, bool grad) {
    kiln_tensor *t = golden_upload(ctx, golden_get(g, name));
    if (t && grad) kiln_tensor_set_requires_grad(t, true);
    return t;
}

/* Runs backward from out with <case>.g and compares out and the inputs' grads. */
static void golden_case(kiln_ctx *ctx, const golden *g, const char *c, kiln_tensor *out, int n, kiln_tensor **xs,
                        const char *const *names, double gatol, double grtol) {
    char name[160], what[200];
    snprintf(name, sizeof name, "%s.out", c);
    snprintf(what, sizeof what, "golden %s output", c);
    golden_compare(what, out, golden_get(g, name), 0, 0);
    snprintf(name, sizeof name, "%s.g", c);
    kiln_tensor *seed = gup(ctx, g, name, false);
    CHECK(out && seed && kiln_backward_ex(out, seed, false) == KILN_OK, "golden %s backward: %s", c,
          kiln_error_message(ctx));
    for (int k = 0; k < n; k++) {
        snprintf(name, sizeof name, "%s.d%s", c, names[k]);
        snprintf(what, sizeof what, "golden %s d%s", c, names[k]);
        golden_compare(what, kiln_tensor_grad(xs[k]), golden_get(g, name), gatol, grtol);
    }
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "shape")) return;
    kiln_scope_begin(ctx);
    char name[64];
    {
        kiln_tensor *a = gup(ctx, &g, "cat.a", true);
        kiln_tensor *b = kiln_transpose(ctx, gup(ctx, &g, "cat.b_base", false), 0, 2);
        kiln_tensor *c = kiln_slice(ctx, gup(ctx, &g, "cat.c_base", false), 1, 1, 2, 1);
        kiln_tensor_set_requires_grad(b, true);
        kiln_tensor_set_requires_grad(c, true);
        kiln_tensor *xs[3] = {a, b, c};
        golden_case(ctx, &g, "cat", kiln_concat(ctx, 3, xs, 1), 3, xs, (const char *[]){"a", "b", "c"}, 0, 0);
    }
    {
        kiln_tensor *xs[6];
        const char *names[6] = {"x0", "x1", "x2", "x3", "x4", "x5"};
        for (int k = 0; k < 6; k++) {
            snprintf(name, sizeof name, "cat6.x%d", k);
            xs[k] = gup(ctx, &g, name, true);
        }
        golden_case(ctx, &g, "cat6", kiln_concat(ctx, 6, xs, -1), 6, xs, names, 0, 0);
    }
    {
        kiln_tensor *ys[3], *zs[5];
        const char *yn[3] = {"y0", "y1", "y2"}, *zn[5] = {"z0", "z1", "z2", "z3", "z4"};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "stack.y%d", k);
            ys[k] = gup(ctx, &g, name, true);
        }
        golden_case(ctx, &g, "stack", kiln_stack(ctx, 3, ys, -1), 3, ys, yn, 0, 0);
        for (int k = 0; k < 5; k++) {
            snprintf(name, sizeof name, "stack5.z%d", k);
            zs[k] = gup(ctx, &g, name, true);
        }
        golden_case(ctx, &g, "stack5", kiln_stack(ctx, 5, zs, 0), 5, zs, zn, 0, 0);
    }
    {
        kiln_tensor *x = gup(ctx, &g, "pad.x", true);
        const golden_tensor *am = golden_get(&g, "pad.amounts");
        int64_t pad[8] = {0};
        int npad = am ? (int)am->numel : 0;
        for (int k = 0; k < npad; k++) pad[k] = am->i[k];
        golden_case(ctx, &g, "pad", kiln_pad(ctx, x, npad, pad, 0.5f), 1, &x, (const char *[]){"x"}, 0, 0);
    }
    {
        kiln_tensor *x = gup(ctx, &g, "flatten.x", true);
        golden_case(ctx, &g, "flatten", kiln_flatten(ctx, x, 1, 2), 1, &x, (const char *[]){"x"}, 0, 0);
    }
    static const struct {
        const char *c;
        int dim;
        bool gather;
    } idx[] = {{"isel0", 0, false}, {"isel1", 1, false}, {"gather0", 1, true}, {"gather1", 0, true}};
    for (int k = 0; k < 4; k++) {
        snprintf(name, sizeof name, "%s.x", idx[k].c);
        kiln_tensor *x = gup(ctx, &g, name, true);
        snprintf(name, sizeof name, "%s.index", idx[k].c);
        kiln_tensor *ix = gup(ctx, &g, name, false);
        kiln_tensor *y =
            idx[k].gather ? kiln_gather(ctx, x, idx[k].dim, ix) : kiln_index_select(ctx, x, idx[k].dim, ix);
        golden_case(ctx, &g, idx[k].c, y, 1, &x, (const char *[]){"x"}, 1e-6, 1e-6);
    }
    kiln_scope_end(ctx);
    golden_close(&g);
    CHECK_OK(ctx);
}

/* ---- errors --------------------------------------------------------------------------- */

/* index_select and gather check their indices on the device: the op returns its tensor
 * and the next call that waits (kiln_sync here) reports a bad index. NULL when it did. */
static kiln_tensor *waited(kiln_ctx *ctx, kiln_tensor *t) {
    if (t && kiln_sync(ctx) != KILN_OK) {
        kiln_tensor_free(t);
        return NULL;
    }
    return t;
}

#define EXPECT_FAIL(call, status, ...)                                                                                 \
    do {                                                                                                               \
        kiln_error_clear(ctx);                                                                                         \
        int64_t live_ = kiln_ctx_num_tensors(ctx);                                                                     \
        kiln_tensor *r_ = (call);                                                                                      \
        CHECK(r_ == NULL && kiln_error_status(ctx) == (status), "%s must fail with %s, got %s (%s)", #call,            \
              kiln_status_name(status), kiln_status_name(kiln_error_status(ctx)), kiln_error_message(ctx));            \
        CHECK(kiln_ctx_num_tensors(ctx) == live_, "%s left %lld tensors", #call,                                       \
              (long long)(kiln_ctx_num_tensors(ctx) - live_));                                                         \
        const char *need_[] = {__VA_ARGS__};                                                                           \
        for (size_t k_ = 0; k_ < sizeof need_ / sizeof need_[0]; k_++)                                                 \
            CHECK(strstr(kiln_error_message(ctx), need_[k_]) != NULL, "%s: message lacks \"%s\": %s", #call,           \
                  need_[k_], kiln_error_message(ctx));                                                                 \
        kiln_error_clear(ctx);                                                                                         \
    } while (0)

static void test_errors(kiln_ctx *ctx) {
    kiln_error_clear(ctx);
    kiln_scope_begin(ctx);
    kiln_tensor *a = kiln_ones(ctx, 2, (int64_t[]){2, 3});
    kiln_tensor *b = kiln_ones(ctx, 2, (int64_t[]){4, 5});
    kiln_tensor *c = kiln_ones(ctx, 3, (int64_t[]){2, 3, 1});
    kiln_tensor *s0 = kiln_ones(ctx, 0, NULL);
    int32_t iv[3] = {0, 7, 1}, nv[2] = {0, -1};
    kiln_tensor *ti = kiln_from_host(ctx, iv, KILN_I32, 1, (int64_t[]){3});
    kiln_tensor *tn = kiln_from_host(ctx, nv, KILN_I32, 1, (int64_t[]){2});
    kiln_tensor *ti2 = kiln_from_host(ctx, iv, KILN_I32, 2, (int64_t[]){1, 3});
    kiln_tensor *h16 = kiln_empty(ctx, KILN_F16, 2, (int64_t[]){2, 3});
    kiln_tensor_set_requires_grad(a, true);

    /* concat / stack */
    EXPECT_FAIL(kiln_concat(ctx, 2, (kiln_tensor *[]){a, b}, 0), KILN_ERR_SHAPE, "kiln_concat", "input 1", "[4, 5]",
                "[2, 3]", "dim 0");
    EXPECT_FAIL(kiln_concat(ctx, 3, (kiln_tensor *[]){a, a, c}, 1), KILN_ERR_SHAPE, "kiln_concat", "input 2",
                "[2, 3, 1]", "[2, 3]");
    EXPECT_FAIL(kiln_concat(ctx, 2, (kiln_tensor *[]){a, ti2}, 0), KILN_ERR_DTYPE, "kiln_concat", "input 1", "i32",
                "f32");
    EXPECT_FAIL(kiln_concat(ctx, 2, (kiln_tensor *[]){s0, s0}, 0), KILN_ERR_SHAPE, "kiln_concat", "zero-dimensional");
    EXPECT_FAIL(kiln_concat(ctx, 2, (kiln_tensor *[]){a, a}, 2), KILN_ERR_INVALID_ARGUMENT, "kiln_concat", "dim 2",
                "[2, 3]");
    EXPECT_FAIL(kiln_concat(ctx, 2, (kiln_tensor *[]){a, a}, -3), KILN_ERR_INVALID_ARGUMENT, "kiln_concat", "-3");
    EXPECT_FAIL(kiln_concat(ctx, 0, (kiln_tensor *[]){a}, 0), KILN_ERR_INVALID_ARGUMENT, "kiln_concat", "n = 0");
    EXPECT_FAIL(kiln_concat(ctx, 2, NULL, 0), KILN_ERR_NULL, "kiln_concat", "NULL");
    EXPECT_FAIL(kiln_concat(ctx, 2, (kiln_tensor *[]){a, NULL}, 0), KILN_ERR_NULL, "kiln_concat", "input 1");
    EXPECT_FAIL(kiln_stack(ctx, 2, (kiln_tensor *[]){a, c}, 0), KILN_ERR_SHAPE, "kiln_stack", "input 1", "[2, 3, 1]",
                "[2, 3]");
    EXPECT_FAIL(kiln_stack(ctx, 2, (kiln_tensor *[]){a, a}, 3), KILN_ERR_INVALID_ARGUMENT, "kiln_stack", "dim 3");
    EXPECT_FAIL(kiln_stack(ctx, 2, (kiln_tensor *[]){a, ti2}, 0), KILN_ERR_DTYPE, "kiln_stack", "i32");
    {
        int64_t big[KILN_MAX_DIMS] = {1, 1, 1, 1, 1, 1, 1, 2};
        kiln_tensor *m = kiln_ones(ctx, KILN_MAX_DIMS, big);
        EXPECT_FAIL(kiln_stack(ctx, 2, (kiln_tensor *[]){m, m}, 0), KILN_ERR_UNSUPPORTED, "kiln_stack");
    }

    /* pad */
    EXPECT_FAIL(kiln_pad(ctx, a, 3, (int64_t[]){1, 1, 1}, 0), KILN_ERR_INVALID_ARGUMENT, "kiln_pad", "3", "[2, 3]");
    EXPECT_FAIL(kiln_pad(ctx, a, 6, (int64_t[]){1, 1, 1, 1, 1, 1}, 0), KILN_ERR_INVALID_ARGUMENT, "kiln_pad", "6");
    EXPECT_FAIL(kiln_pad(ctx, a, 2, (int64_t[]){-2, -2}, 0), KILN_ERR_SHAPE, "kiln_pad", "(-2, -2)", "dim 1", "[2, 3]");
    EXPECT_FAIL(kiln_pad(ctx, a, 2, NULL, 0), KILN_ERR_NULL, "kiln_pad");
    EXPECT_FAIL(kiln_pad(ctx, a, 2, (int64_t[]){INT64_MAX, 1}, 0), KILN_ERR_SHAPE, "kiln_pad");
    kiln_tensor *p16 = kiln_pad(ctx, h16, 2, (int64_t[]){1, 1}, 0); /* halves pad (tests/test_half.c) */
    CHECK(p16 && kiln_tensor_dtype(p16) == KILN_F16 && kiln_tensor_shape(p16)[1] == 5, "pad of f16: %s",
          kiln_error_message(ctx));

    /* flatten */
    EXPECT_FAIL(kiln_flatten(ctx, a, 1, 0), KILN_ERR_INVALID_ARGUMENT, "kiln_flatten", "wrong order", "[2, 3]");
    EXPECT_FAIL(kiln_flatten(ctx, a, 0, 2), KILN_ERR_INVALID_ARGUMENT, "kiln_flatten", "out of range");

    /* index_select */
    EXPECT_FAIL(waited(ctx, kiln_index_select(ctx, a, 1, ti)), KILN_ERR_RANGE, "kiln_index_select", "index 7",
                "position 1", "dim 1", "size 3");
    EXPECT_FAIL(waited(ctx, kiln_index_select(ctx, a, 0, tn)), KILN_ERR_RANGE, "kiln_index_select", "index -1",
                "size 2");
    EXPECT_FAIL(kiln_index_select(ctx, a, 0, a), KILN_ERR_DTYPE, "kiln_index_select", "f32", "i32");
    EXPECT_FAIL(kiln_index_select(ctx, a, 0, ti2), KILN_ERR_SHAPE, "kiln_index_select", "[1, 3]", "1-D");
    EXPECT_FAIL(kiln_index_select(ctx, a, 2, tn), KILN_ERR_INVALID_ARGUMENT, "kiln_index_select", "dim 2");
    EXPECT_FAIL(kiln_index_select(ctx, s0, 0, ti), KILN_ERR_SHAPE, "kiln_index_select", "one index");
    EXPECT_FAIL(kiln_index_select(ctx, NULL, 0, ti), KILN_ERR_NULL, "kiln_index_select", "input 0");

    /* gather */
    EXPECT_FAIL(kiln_gather(ctx, a, 1, ti), KILN_ERR_SHAPE, "kiln_gather", "[3]", "[2, 3]", "dims");
    EXPECT_FAIL(waited(ctx, kiln_gather(ctx, a, 0, ti2)), KILN_ERR_RANGE, "kiln_gather", "index 7", "position 1",
                "dim 0", "size 2");
    {
        int32_t z[8] = {0};
        kiln_tensor *tz = kiln_from_host(ctx, z, KILN_I32, 2, (int64_t[]){2, 4});
        EXPECT_FAIL(kiln_gather(ctx, a, 0, tz), KILN_ERR_SHAPE, "kiln_gather", "[2, 4]", "[2, 3]", "dim 1");
        kiln_tensor *tz3 = kiln_from_host(ctx, z, KILN_I32, 2, (int64_t[]){4, 2});
        kiln_tensor *ok = kiln_gather(ctx, a, 0, tz3); /* longer along dim 0 is fine */
        CHECK(ok != NULL, "gather with an index longer in dim: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
    }
    EXPECT_FAIL(kiln_gather(ctx, a, 5, ti2), KILN_ERR_INVALID_ARGUMENT, "kiln_gather", "dim 5");
    EXPECT_FAIL(kiln_gather(ctx, a, 0, b), KILN_ERR_DTYPE, "kiln_gather", "f32");

    /* a chain through a failed op keeps the first error */
    kiln_error_clear(ctx);
    kiln_tensor *bad = kiln_concat(ctx, 2, (kiln_tensor *[]){a, b}, 0);
    char saved[512];
    snprintf(saved, sizeof saved, "%s", kiln_error_message(ctx));
    kiln_tensor *chain = kiln_gather(
        ctx,
        kiln_index_select(
            ctx,
            kiln_flatten(ctx, kiln_pad(ctx, kiln_stack(ctx, 2, (kiln_tensor *[]){bad, a}, 0), 2, (int64_t[]){1, 1}, 0),
                         0, -1),
            0, ti),
        0, ti);
    CHECK(bad == NULL && chain == NULL && strcmp(kiln_error_message(ctx), saved) == 0 && strstr(saved, "kiln_concat"),
          "a chain on a failed op keeps the first error: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_concat(NULL, 1, &a, 0) == NULL && kiln_pad(NULL, a, 0, NULL, 0) == NULL &&
              kiln_flatten(NULL, a, 0, -1) == NULL && kiln_gather(NULL, a, 0, ti2) == NULL,
          "NULL context");

    /* an exhausted pool: the output allocation fails cleanly */
    int64_t live = kiln_ctx_num_tensors(ctx);
    kiln__pool_fail_after(ctx, 1);
    CHECK(kiln_concat(ctx, 2, (kiln_tensor *[]){a, a}, 0) == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY,
          "OOM concat: %s", kiln_status_name(kiln_error_status(ctx)));
    kiln_error_clear(ctx);
    kiln__pool_fail_after(ctx, 1);
    CHECK(kiln_pad(ctx, a, 2, (int64_t[]){1, 1}, 0) == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY,
          "OOM pad");
    kiln_error_clear(ctx);
    kiln_tensor *valid = kiln_from_host(ctx, nv, KILN_I32, 1, (int64_t[]){1});
    live = kiln_ctx_num_tensors(ctx);
    kiln__pool_fail_after(ctx, 1);
    CHECK(kiln_index_select(ctx, a, 1, valid) == NULL && kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY,
          "OOM index_select");
    kiln__pool_fail_after(ctx, 0);
    CHECK(kiln_ctx_num_tensors(ctx) == live, "OOM left tensors behind");
    kiln_error_clear(ctx);

    /* usable after the errors */
    kiln_tensor *ok = kiln_concat(ctx, 2, (kiln_tensor *[]){a, a}, 1);
    float h[12];
    CHECK(ok && kiln_to_host(ok, h, sizeof h) == KILN_OK && h[0] == 1 && h[11] == 1, "context unusable: %s",
          kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void run(kiln_ctx *ctx) {
    test_forward(ctx);
    test_grad_cat(ctx);
    test_grad_pad(ctx);
    test_grad_flatten(ctx);
    test_grad_index(ctx);
    test_grad_deterministic(ctx);
    test_grad_lifetime(ctx);
    test_golden(ctx);
    test_errors(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
