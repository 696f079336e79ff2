/* tests/test_pool.c - max_pool2d (values and indices), avg_pool2d, global_avg_pool2d and
 * upsample (nearest, bilinear) against plain-C double references over odd planes, every
 * window option (kernel, stride, padding, dilation, ceil_mode, count_include_pad),
 * batched and unbatched inputs and non-contiguous views (transposed, sliced, channels-last);
 * gradients by finite differences (gradcheck.h); PyTorch golden files; NaN/Inf; guard
 * regions; the reference CNN's max_pool2d(2) on [64, 64, 24, 24]; error paths and leaks.
 *
 * References read the input through the harness's own view model (h_view), not kiln's
 * strides. Tolerances (normalised error |got - ref| / (atol + rtol*|ref|) <= 1; NaN/Inf
 * exact; u = 2^-24, the float32 unit roundoff):
 *   max_pool2d, nearest upsampling: exact (values are selected, indices are integers).
 *   avg_pool2d: atol = kh*kw * u * max|x|, rtol = 5u: recursive float summation of at most
 *     kh*kw terms errs by (m-1) u sum|x| and sum|x| / divisor <= max|x|; the division may
 *     err by 2.5 ulp = 5u in OpenCL's full profile.
 *   global_avg_pool2d: atol = (H + W) * u * max|x|, rtol = 5u: rows are summed separately,
 *     then the row sums (H - 1 + W - 1 additions in any one term's path), then divided.
 *   bilinear: atol = 16 u max|x|: the weights carry one rounding each (the source
 *     coordinate is exact), then three products and three sums of magnitude <= max|x|.
 *   gradients (gc_check, finite differences of the double reference, which are exact to
 *     ~1e-9 here as every op is piecewise linear): atol 1e-5 of the gradient's scale and
 *     rtol 1e-5: each input gathers at most ~40 float terms (40 u = 2.4e-6).
 * PyTorch golden file (tests/golden/gen_pool.py): max_pool2d values, indices and gradients
 * and nearest upsampling are bit-exact (the same selections, the same additions in the
 * same order); the other tolerances are stated where they are used (golden_case).
 */
#include <float.h>

#include "gradcheck.h"
#include "golden.h"

#define U (1.0 / 16777216.0)

/* ---- operands: a base buffer, a kiln view of it, and the harness's model --------------- */

enum { TF_NONE, TF_T, TF_S, TF_P };
typedef struct tf {
    int kind; /* TF_T: transpose(p0, p1); TF_S: slice(dim p0, start p1, end p2, step p3);
                 TF_P: permute(p0, p1, p2, p3) */
    int64_t p[4];
} tf;

typedef struct vspec {
    int ndim;
    int64_t shape[4];
    tf tf[2];
} vspec;

typedef struct operand {
    float *base;
    double *based; /* the same values in double (for gc_check) */
    int64_t nbase;
    h_view hv;
    kiln_tensor *leaf, *t;
} operand;

enum { G_UNIFORM, G_DISTINCT, G_SPECIAL };

static bool make_operand(kiln_ctx *ctx, const vspec *s, int gen, bool requires_grad, operand *o) {
    int64_t n = h_numel(s->ndim, s->shape);
    o->nbase = n;
    o->base = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    o->based = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (gen == G_DISTINCT) {
        /* distinct values 0.01 apart in random order: max_pool's argmax is stable under
         * the finite-difference steps */
        for (int64_t i = 0; i < n; i++) o->base[i] = (float)i;
        for (int64_t i = n - 1; i > 0; i--) {
            int64_t j = (int64_t)(h_uniform(0, 1) * (float)(i + 1));
            if (j > i) j = i;
            float t = o->base[i];
            o->base[i] = o->base[j], o->base[j] = t;
        }
        for (int64_t i = 0; i < n; i++) o->base[i] = o->base[i] * 0.01f - 0.005f * (float)n;
    } else {
        h_fill(o->base, n, -2, 2);
        if (gen == G_SPECIAL) {
            const float sp[] = {NAN, INFINITY, -INFINITY};
            for (int64_t i = 0; i < n; i++)
                if (h_uniform(0, 1) < 0.12f) o->base[i] = sp[(int)(h_uniform(0, 3)) % 3];
        }
    }
    for (int64_t i = 0; i < n; i++) o->based[i] = o->base[i];
    o->leaf = kiln_from_host(ctx, o->base, KILN_F32, s->ndim, s->shape);
    if (requires_grad) kiln_set_requires_grad(o->leaf, true);
    o->t = o->leaf;
    o->hv = h_contig(s->ndim, s->shape);
    for (int k = 0; k < 2; k++) {
        const tf *f = &s->tf[k];
        h_view *v = &o->hv;
        if (f->kind == TF_T) {
            int a = (int)f->p[0], b = (int)f->p[1];
            h_view_transpose(v, a, b);
            o->t = kiln_transpose(ctx, o->t, a, b);
        } else if (f->kind == TF_S) {
            int d = (int)f->p[0];
            int64_t start = f->p[1], end = f->p[2], step = f->p[3];
            h_view_slice(v, d, start, end, step);
            o->t = kiln_slice(ctx, o->t, d, start, end, step);
        } else if (f->kind == TF_P) {
            h_view e = *v;
            int dims[4];
            for (int d = 0; d < v->ndim; d++) {
                dims[d] = (int)f->p[d];
                e.shape[d] = v->shape[dims[d]];
                e.strides[d] = v->strides[dims[d]];
            }
            *v = e;
            o->t = kiln_permute(ctx, o->t, dims);
        }
    }
    CHECK(o->t != NULL, "making an operand: %s", kiln_error_message(ctx));
    return o->t != NULL;
}

/* Frees the host copies; the tensors belong to the scope the test made them in. */
static void free_operand(operand *o) {
    free(o->base);
    free(o->based);
}

/* ---- the reference's view of an input: [N, C, H, W] with strides -------------------- */

typedef struct lview {
    int64_t N, C, H, W, sn, sc, sh, sw, off;
} lview;

static lview lv_from(const h_view *v) {
    lview l;
    int b = v->ndim - 3;
    l.N = b ? v->shape[0] : 1;
    l.sn = b ? v->strides[0] : 0;
    l.C = v->shape[b], l.sc = v->strides[b];
    l.H = v->shape[b + 1], l.sh = v->strides[b + 1];
    l.W = v->shape[b + 2], l.sw = v->strides[b + 2];
    l.off = v->offset;
    return l;
}

static inline double lget(const double *b, const lview *v, int64_t n, int64_t c, int64_t h, int64_t w) {
    return b[v->off + n * v->sn + c * v->sc + h * v->sh + w * v->sw];
}

/* Pooling parameters resolved (stride 0 = kernel, dilation 0 = 1). */
typedef struct rp {
    int k[2], s[2], p[2], d[2];
    bool ceil, cip;
} rp;

static rp resolve(const kiln_pool2d_params *p) {
    rp r;
    for (int a = 0; a < 2; a++) {
        r.k[a] = p->kernel[a];
        r.s[a] = p->stride[a] ? p->stride[a] : p->kernel[a];
        r.p[a] = p->padding[a];
        r.d[a] = p->dilation[a] ? p->dilation[a] : 1;
    }
    r.ceil = p->ceil_mode;
    r.cip = p->count_include_pad;
    return r;
}

/* Number of windows, counted: window o spans [o*s - p, o*s - p + d(k-1)]; without ceil_mode
 * it must end inside the padded input; with it, it must start no later than s - 1 before
 * that limit and start inside the input or its left padding. */
static int64_t ref_out(int64_t in, int k, int s, int p, int d, bool ceil) {
    int64_t span = (int64_t)d * (k - 1) + 1, padded = in + 2 * p, o = 0;
    while (o * s + span <= padded + (ceil ? s - 1 : 0)) o++;
    if (ceil && o > 0 && (o - 1) * s >= in + p) o--;
    return o;
}

typedef struct pool_user {
    rp r;
    lview v;
    int64_t OH, OW;
    int32_t *idx; /* max: argmax written here when non-NULL */
} pool_user;

static void ref_max(void *user, double *const *in, double *out) {
    pool_user *u = user;
    const lview *v = &u->v;
    int64_t o = 0;
    for (int64_t n = 0; n < v->N; n++)
        for (int64_t c = 0; c < v->C; c++)
            for (int64_t oh = 0; oh < u->OH; oh++)
                for (int64_t ow = 0; ow < u->OW; ow++, o++) {
                    int64_t h0 = oh * u->r.s[0] - u->r.p[0], w0 = ow * u->r.s[1] - u->r.p[1];
                    /* PyTorch's default index: the first tap at or after 0 on each axis */
                    int64_t fh = h0, fw = w0;
                    while (fh < 0) fh += u->r.d[0];
                    while (fw < 0) fw += u->r.d[1];
                    double m = -INFINITY;
                    int64_t mi = fh * v->W + fw;
                    for (int i = 0; i < u->r.k[0]; i++) {
                        int64_t h = h0 + (int64_t)i * u->r.d[0];
                        if (h < 0 || h >= v->H) continue;
                        for (int j = 0; j < u->r.k[1]; j++) {
                            int64_t w = w0 + (int64_t)j * u->r.d[1];
                            if (w < 0 || w >= v->W) continue;
                            double x = lget(in[0], v, n, c, h, w);
                            if (x > m || isnan(x)) m = x, mi = h * v->W + w;
                        }
                    }
                    out[o] = m;
                    if (u->idx) u->idx[o] = (int32_t)mi;
                }
}

static void ref_avg(void *user, double *const *in, double *out) {
    pool_user *u = user;
    const lview *v = &u->v;
    int64_t o = 0;
    for (int64_t n = 0; n < v->N; n++)
        for (int64_t c = 0; c < v->C; c++)
            for (int64_t oh = 0; oh < u->OH; oh++)
                for (int64_t ow = 0; ow < u->OW; ow++, o++) {
                    double sum = 0;
                    int64_t cnt = 0, padded = 0;
                    for (int i = 0; i < u->r.k[0]; i++) {
                        int64_t h = oh * u->r.s[0] - u->r.p[0] + i;
                        if (h >= v->H + u->r.p[0]) continue; /* beyond the bottom padding */
                        for (int j = 0; j < u->r.k[1]; j++) {
                            int64_t w = ow * u->r.s[1] - u->r.p[1] + j;
                            if (w >= v->W + u->r.p[1]) continue;
                            padded++;
                            if (h < 0 || w < 0 || h >= v->H || w >= v->W) continue;
                            sum += lget(in[0], v, n, c, h, w);
                            cnt++;
                        }
                    }
                    out[o] = cnt ? sum / (double)(u->r.cip ? padded : cnt) : 0.0;
                }
}

static void ref_gap(void *user, double *const *in, double *out) {
    pool_user *u = user;
    const lview *v = &u->v;
    int64_t o = 0;
    for (int64_t n = 0; n < v->N; n++)
        for (int64_t c = 0; c < v->C; c++, o++) {
            double s = 0;
            for (int64_t h = 0; h < v->H; h++)
                for (int64_t w = 0; w < v->W; w++) s += lget(in[0], v, n, c, h, w);
            out[o] = s / (double)(v->H * v->W);
        }
}

/* torch 'nearest': identity and x2 exactly, else min(floorf(o * ((float)in / out)), in-1). */
static int64_t ref_nearest(int64_t o, int64_t in, int64_t out) {
    if (out == in) return o;
    if (out == 2 * in) return o >> 1;
    volatile float scale = (float)in / (float)out;
    volatile float prod = (float)o * scale;
    int64_t s = (int64_t)floorf(prod);
    return s < in - 1 ? s : in - 1;
}

/* Bilinear taps along one axis, in double. */
static void ref_linear(int64_t o, int64_t in, int64_t out, bool align, int64_t *i0, int64_t *i1, double *l1) {
    double src;
    if (align) src = out > 1 ? (double)o * (double)(in - 1) / (double)(out - 1) : 0.0;
    else {
        src = ((double)o + 0.5) * (double)in / (double)out - 0.5;
        if (src < 0) src = 0;
    }
    *i0 = (int64_t)floor(src);
    if (*i0 > in - 1) *i0 = in - 1;
    *i1 = *i0 + 1 < in ? *i0 + 1 : in - 1;
    *l1 = src - (double)*i0;
}

typedef struct up_user {
    lview v;
    int64_t OH, OW;
    int mode;
    bool align;
} up_user;

static void ref_up(void *user, double *const *in, double *out) {
    up_user *u = user;
    const lview *v = &u->v;
    int64_t o = 0;
    for (int64_t n = 0; n < v->N; n++)
        for (int64_t c = 0; c < v->C; c++)
            for (int64_t oh = 0; oh < u->OH; oh++)
                for (int64_t ow = 0; ow < u->OW; ow++, o++) {
                    if (u->mode == KILN_UPSAMPLE_NEAREST) {
                        out[o] = lget(in[0], v, n, c, ref_nearest(oh, v->H, u->OH), ref_nearest(ow, v->W, u->OW));
                        continue;
                    }
                    int64_t h0, h1, w0, w1;
                    double a, b;
                    ref_linear(oh, v->H, u->OH, u->align, &h0, &h1, &a);
                    ref_linear(ow, v->W, u->OW, u->align, &w0, &w1, &b);
                    out[o] = (1 - a) * ((1 - b) * lget(in[0], v, n, c, h0, w0) + b * lget(in[0], v, n, c, h0, w1)) +
                             a * ((1 - b) * lget(in[0], v, n, c, h1, w0) + b * lget(in[0], v, n, c, h1, w1));
                }
}

static double max_abs(const float *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(x[i]) && fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

static int32_t *read_i32(kiln_tensor *t) {
    int64_t n = kiln_tensor_numel(t);
    int32_t *h = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (kiln_to_host(t, h, sizeof(int32_t) * (size_t)n) != KILN_OK) {
        CHECK(0, "kiln_to_host(indices): %s", kiln_error_message(kiln_tensor_ctx(t)));
        for (int64_t i = 0; i < n; i++) h[i] = INT32_MIN;
    }
    return h;
}

static void compare_i32(const char *what, const int32_t *got, const int32_t *ref, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (got[i] != ref[i] && bad++ == 0)
            fprintf(stderr, "  %s: element %lld: got %d, reference %d\n", what, (long long)i, got[i], ref[i]);
    CHECK(bad == 0, "%s: %lld of %lld indices differ", what, (long long)bad, (long long)n);
}

/* Sentinels around every storage made while guards are on (see run()) must be intact. */
static void check_guards(kiln_ctx *ctx, const char *what) {
    char msg[256] = "";
    int bad = kiln__check_guards(ctx, msg, sizeof msg);
    CHECK(bad == 0, "%s: %d guard regions overwritten: %s", what, bad, msg);
}

static bool shape_is(kiln_tensor *t, int ndim, const int64_t *shape) {
    return t && kiln_tensor_ndim(t) == ndim && memcmp(kiln_tensor_shape(t), shape, sizeof(int64_t) * (size_t)ndim) == 0;
}

/* ---- the pooling table ----------------------------------------------------------------- */

#define V(n, ...) {n, {__VA_ARGS__}, {{0}}}
#define P(kh, kw, sh, sw, ph, pw, dh, dw, c) {{kh, kw}, {sh, sw}, {ph, pw}, {dh, dw}, c, false}

typedef struct pcase {
    const char *name;
    vspec x;
    kiln_pool2d_params p;
} pcase;

static const pcase pcases[] = {
    {"7x5 k3 s2 p1", V(4, 2, 3, 7, 5), P(3, 3, 2, 2, 1, 1, 1, 1, false)},
    {"1x1 k1", V(4, 1, 1, 1, 1), P(1, 1, 0, 0, 0, 0, 0, 0, false)},
    {"7x5 k2 default stride, batch 3", V(4, 3, 2, 7, 5), P(2, 2, 0, 0, 0, 0, 0, 0, false)},
    {"9x8 k3 p1 dilation 2", V(4, 1, 2, 9, 8), P(3, 3, 1, 1, 1, 1, 2, 2, false)},
    {"8x7 k3 s2 p1 ceil", V(4, 2, 2, 8, 7), P(3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"11x13 k3x2 s3x2 p1 d2x3 ceil", V(4, 1, 3, 11, 13), P(3, 2, 3, 2, 1, 1, 2, 3, true)},
    {"unbatched 3x6x6 k2 s1", V(3, 3, 6, 6), P(2, 2, 1, 1, 0, 0, 1, 1, false)},
    {"5x7x11 k3 s2 p1", V(3, 5, 7, 11), P(3, 3, 2, 2, 1, 1, 1, 1, false)},
    {"transposed view k3 s2 p1 ceil", {4, {2, 3, 5, 7}, {{TF_T, {2, 3}}}}, P(3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"sliced view k3 s2 p1", {4, {3, 4, 9, 11}, {{TF_S, {3, 1, 11, 2}}, {TF_S, {1, 0, 4, 2}}}},
     P(3, 3, 2, 2, 1, 1, 1, 1, false)},
    {"channels-last view k2x3 s1x2 p1", {4, {2, 6, 5, 3}, {{TF_P, {0, 3, 1, 2}}}}, P(2, 3, 1, 2, 1, 1, 1, 1, false)},
    {"5x5 k5 (whole plane)", V(4, 1, 2, 5, 5), P(5, 5, 1, 1, 0, 0, 1, 1, false)},
    {"5x6 k4x3 s1x2 p2x1 ceil", V(4, 1, 2, 5, 6), P(4, 3, 1, 2, 2, 1, 1, 1, true)},
    {"3x3 k2 s2 ceil (partial last window)", V(4, 1, 1, 3, 3), P(2, 2, 2, 2, 0, 0, 1, 1, true)},
    /* windows that do not overlap take the backward's tile path */
    {"9x11 k2 s3 p1 (gaps between windows)", V(4, 2, 2, 9, 11), P(2, 2, 3, 3, 1, 1, 1, 1, false)},
    {"10x9 k2x3 s3x4 p0x1 ceil", V(4, 1, 3, 10, 9), P(2, 3, 3, 4, 0, 1, 1, 1, true)},
    {"8x7 k2 s3 p1 dilation 2", V(4, 2, 1, 8, 7), P(2, 2, 3, 3, 1, 1, 2, 2, false)},
    {"transposed 7x5 k2 (uncovered last row)", {4, {3, 2, 5, 7}, {{TF_T, {2, 3}}}}, P(2, 2, 0, 0, 0, 0, 0, 0, false)},
};
#define NPCASES (sizeof pcases / sizeof pcases[0])

static void test_max_forward(kiln_ctx *ctx) {
    for (size_t ci = 0; ci < NPCASES; ci++) {
        for (int gen = 0; gen < 2; gen++) {
            const pcase *pc = &pcases[ci];
            kiln_scope_begin(ctx);
            operand o;
            if (!make_operand(ctx, &pc->x, gen ? G_SPECIAL : G_UNIFORM, false, &o)) {
                kiln_scope_end(ctx);
                free_operand(&o);
                continue;
            }
            pool_user u = {.r = resolve(&pc->p), .v = lv_from(&o.hv)};
            u.OH = ref_out(u.v.H, u.r.k[0], u.r.s[0], u.r.p[0], u.r.d[0], u.r.ceil);
            u.OW = ref_out(u.v.W, u.r.k[1], u.r.s[1], u.r.p[1], u.r.d[1], u.r.ceil);
            int64_t nout = u.v.N * u.v.C * u.OH * u.OW;
            double *ref = malloc(sizeof(double) * (size_t)nout);
            u.idx = malloc(sizeof(int32_t) * (size_t)nout);
            ref_max(&u, (double *const[]){o.based}, ref);
            kiln_tensor *ind = NULL;
            kiln_tensor *y = kiln_max_pool2d(ctx, o.t, &pc->p, &ind);
            char what[160];
            snprintf(what, sizeof what, "max_pool2d %s%s", pc->name, gen ? " (NaN/Inf)" : "");
            CHECK(y && ind, "%s: %s", what, kiln_error_message(ctx));
            int64_t oshape[4];
            memcpy(oshape, o.hv.shape, sizeof oshape);
            oshape[o.hv.ndim - 2] = u.OH, oshape[o.hv.ndim - 1] = u.OW;
            CHECK(shape_is(y, o.hv.ndim, oshape) && shape_is(ind, o.hv.ndim, oshape), "%s: output shape", what);
            CHECK(ind == NULL || kiln_tensor_dtype(ind) == KILN_I32, "%s: indices dtype", what);
            if (y && ind && shape_is(y, o.hv.ndim, oshape)) {
                float *got = h_read(y);
                h_compare(what, got, ref, nout, 0, 0);
                int32_t *gi = read_i32(ind);
                char w2[200];
                snprintf(w2, sizeof w2, "%s indices", what);
                compare_i32(w2, gi, u.idx, nout);
                free(gi);
                free(got);
                /* without indices: the same values */
                kiln_tensor *y2 = kiln_max_pool2d(ctx, o.t, &pc->p, NULL);
                float *g2 = y2 ? h_read(y2) : NULL;
                snprintf(w2, sizeof w2, "%s without indices", what);
                if (g2) h_compare(w2, g2, ref, nout, 0, 0);
                else CHECK(0, "%s: %s", w2, kiln_error_message(ctx));
                free(g2);
            }
            free(ref);
            free(u.idx);
            check_guards(ctx, what);
            kiln_scope_end(ctx);
            free_operand(&o);
            kiln_error_clear(ctx);
        }
    }
}

static void test_avg_forward(kiln_ctx *ctx) {
    for (size_t ci = 0; ci < NPCASES; ci++) {
        const pcase *pc = &pcases[ci];
        if ((pc->p.dilation[0] > 1) || (pc->p.dilation[1] > 1)) continue;
        for (int var = 0; var < 3; var++) { /* count_include_pad true, false; specials */
            kiln_pool2d_params p = pc->p;
            p.count_include_pad = var != 1;
            kiln_scope_begin(ctx);
            operand o;
            if (!make_operand(ctx, &pc->x, var == 2 ? G_SPECIAL : G_UNIFORM, false, &o)) {
                kiln_scope_end(ctx);
                free_operand(&o);
                continue;
            }
            pool_user u = {.r = resolve(&p), .v = lv_from(&o.hv)};
            u.OH = ref_out(u.v.H, u.r.k[0], u.r.s[0], u.r.p[0], 1, u.r.ceil);
            u.OW = ref_out(u.v.W, u.r.k[1], u.r.s[1], u.r.p[1], 1, u.r.ceil);
            int64_t nout = u.v.N * u.v.C * u.OH * u.OW;
            double *ref = malloc(sizeof(double) * (size_t)nout);
            ref_avg(&u, (double *const[]){o.based}, ref);
            kiln_tensor *y = kiln_avg_pool2d(ctx, o.t, &p);
            char what[160];
            snprintf(what, sizeof what, "avg_pool2d %s count_include_pad=%d%s", pc->name, p.count_include_pad,
                     var == 2 ? " (NaN/Inf)" : "");
            int64_t oshape[4];
            memcpy(oshape, o.hv.shape, sizeof oshape);
            oshape[o.hv.ndim - 2] = u.OH, oshape[o.hv.ndim - 1] = u.OW;
            CHECK(shape_is(y, o.hv.ndim, oshape), "%s: output shape (%s)", what, kiln_error_message(ctx));
            if (shape_is(y, o.hv.ndim, oshape)) {
                float *got = h_read(y);
                h_compare(what, got, ref, nout, u.r.k[0] * u.r.k[1] * U * max_abs(o.base, o.nbase), 5 * U);
                free(got);
            }
            free(ref);
            check_guards(ctx, what);
            kiln_scope_end(ctx);
            free_operand(&o);
            kiln_error_clear(ctx);
        }
    }
}

static const vspec gap_shapes[] = {
    V(4, 2, 3, 7, 5),
    V(3, 3, 1, 1),
    V(4, 1, 5, 7, 11),
    V(4, 2, 1, 1, 1),
    V(4, 1, 2, 67, 61),
    {4, {2, 6, 5, 3}, {{TF_P, {0, 3, 1, 2}}}},
    {4, {3, 4, 9, 11}, {{TF_S, {3, 1, 11, 2}}, {TF_T, {2, 3}}}},
};

static void test_gap_forward(kiln_ctx *ctx) {
    for (size_t ci = 0; ci < sizeof gap_shapes / sizeof gap_shapes[0]; ci++) {
        for (int gen = 0; gen < 2; gen++) {
            kiln_scope_begin(ctx);
            operand o;
            if (!make_operand(ctx, &gap_shapes[ci], gen ? G_SPECIAL : G_UNIFORM, false, &o)) {
                kiln_scope_end(ctx);
                free_operand(&o);
                continue;
            }
            pool_user u = {.v = lv_from(&o.hv)};
            int64_t nout = u.v.N * u.v.C;
            double *ref = malloc(sizeof(double) * (size_t)nout);
            ref_gap(&u, (double *const[]){o.based}, ref);
            kiln_tensor *y = kiln_global_avg_pool2d(ctx, o.t);
            char sb[64], what[160];
            snprintf(what, sizeof what, "global_avg_pool2d %s case %zu%s",
                     kiln_tensor_shape_str(o.t, sb, sizeof sb), ci, gen ? " (NaN/Inf)" : "");
            int64_t oshape[4];
            memcpy(oshape, o.hv.shape, sizeof oshape);
            oshape[o.hv.ndim - 2] = oshape[o.hv.ndim - 1] = 1;
            CHECK(shape_is(y, o.hv.ndim, oshape), "%s: output shape (%s)", what, kiln_error_message(ctx));
            if (shape_is(y, o.hv.ndim, oshape)) {
                float *got = h_read(y);
                h_compare(what, got, ref, nout, (double)(u.v.H + u.v.W) * U * max_abs(o.base, o.nbase), 5 * U);
                free(got);
            }
            free(ref);
            check_guards(ctx, what);
            kiln_scope_end(ctx);
            free_operand(&o);
            kiln_error_clear(ctx);
        }
    }
}

typedef struct ucase {
    vspec x;
    int oh, ow, mode;
    bool align;
} ucase;

#define NE KILN_UPSAMPLE_NEAREST
#define BI KILN_UPSAMPLE_BILINEAR
static const ucase ucases[] = {
    {V(4, 2, 3, 4, 5), 8, 10, NE, false},   {V(4, 2, 3, 4, 5), 7, 9, NE, false},
    {V(4, 1, 2, 7, 5), 3, 2, NE, false},    {V(4, 1, 2, 4, 5), 4, 5, NE, false},
    {V(4, 1, 1, 14, 7), 20, 10, NE, false}, {V(4, 1, 1, 3, 5), 13, 6, NE, false},
    {V(4, 1, 1, 1, 1), 3, 5, NE, false},    {V(4, 3, 2, 11, 13), 29, 31, NE, false},
    {V(4, 2, 3, 4, 5), 8, 10, BI, false},   {V(4, 2, 3, 4, 5), 7, 9, BI, false},
    {V(4, 1, 2, 7, 5), 3, 2, BI, false},    {V(4, 1, 2, 4, 5), 4, 5, BI, false},
    {V(4, 1, 1, 3, 3), 17, 11, BI, false},  {V(4, 2, 3, 4, 5), 7, 9, BI, true},
    {V(4, 1, 2, 7, 5), 3, 2, BI, true},     {V(4, 1, 2, 7, 5), 1, 1, BI, true},
    {V(4, 1, 2, 1, 1), 3, 4, BI, true},     {V(4, 1, 2, 1, 1), 3, 4, BI, false},
    {V(4, 1, 1, 5, 4), 1, 9, BI, false},    {V(4, 3, 2, 11, 13), 29, 31, BI, false},
    {V(4, 1, 1, 13, 11), 5, 4, BI, true},   {V(4, 1, 1, 13, 11), 5, 4, BI, false},
    {{4, {2, 6, 5, 3}, {{TF_P, {0, 3, 1, 2}}}}, 11, 7, BI, false},
    {{4, {2, 6, 5, 3}, {{TF_P, {0, 3, 1, 2}}}}, 11, 7, BI, true},
    {{4, {2, 6, 5, 3}, {{TF_P, {0, 3, 1, 2}}}}, 11, 7, NE, false},
    {{4, {2, 3, 5, 7}, {{TF_T, {2, 3}}}}, 3, 4, BI, false},
    {{4, {3, 4, 9, 11}, {{TF_S, {3, 1, 11, 2}}, {TF_S, {1, 0, 4, 2}}}}, 10, 3, NE, false},
};
#define NUCASES (sizeof ucases / sizeof ucases[0])

static void test_up_forward(kiln_ctx *ctx) {
    for (size_t ci = 0; ci < NUCASES; ci++) {
        for (int gen = 0; gen < 2; gen++) {
            const ucase *uc = &ucases[ci];
            kiln_scope_begin(ctx);
            operand o;
            if (!make_operand(ctx, &uc->x, gen ? G_SPECIAL : G_UNIFORM, false, &o)) {
                kiln_scope_end(ctx);
                free_operand(&o);
                continue;
            }
            up_user u = {.v = lv_from(&o.hv), .OH = uc->oh, .OW = uc->ow, .mode = uc->mode, .align = uc->align};
            int64_t nout = u.v.N * u.v.C * u.OH * u.OW;
            double *ref = malloc(sizeof(double) * (size_t)nout);
            ref_up(&u, (double *const[]){o.based}, ref);
            kiln_tensor *y = kiln_upsample(ctx, o.t, uc->oh, uc->ow, uc->mode, uc->align);
            char sb[64], what[200];
            snprintf(what, sizeof what, "upsample %s %s -> %dx%d%s%s", uc->mode == NE ? "nearest" : "bilinear",
                     kiln_tensor_shape_str(o.t, sb, sizeof sb), uc->oh, uc->ow, uc->align ? " align_corners" : "",
                     gen ? " (NaN/Inf)" : "");
            int64_t oshape[4] = {u.v.N, u.v.C, uc->oh, uc->ow};
            CHECK(shape_is(y, 4, oshape), "%s: output shape (%s)", what, kiln_error_message(ctx));
            if (shape_is(y, 4, oshape)) {
                float *got = h_read(y);
                if (uc->mode == NE) h_compare(what, got, ref, nout, 0, 0);
                else h_compare(what, got, ref, nout, 16 * U * max_abs(o.base, o.nbase), 0);
                free(got);
            }
            free(ref);
            check_guards(ctx, what);
            kiln_scope_end(ctx);
            free_operand(&o);
            kiln_error_clear(ctx);
        }
    }
}

/* ---- gradients --------------------------------------------------------------------------- */

static void test_gradients(kiln_ctx *ctx) {
    for (size_t ci = 0; ci < NPCASES; ci++) {
        const pcase *pc = &pcases[ci];
        for (int op = 0; op < 3; op++) { /* max, avg with and without count_include_pad */
            if (op > 0 && (pc->p.dilation[0] > 1 || pc->p.dilation[1] > 1)) continue;
            kiln_pool2d_params p = pc->p;
            p.count_include_pad = op == 1;
            kiln_scope_begin(ctx);
            operand o;
            if (!make_operand(ctx, &pc->x, G_DISTINCT, true, &o)) {
                kiln_scope_end(ctx);
                free_operand(&o);
                continue;
            }
            pool_user u = {.r = resolve(&p), .v = lv_from(&o.hv)};
            u.OH = ref_out(u.v.H, u.r.k[0], u.r.s[0], u.r.p[0], u.r.d[0], u.r.ceil);
            u.OW = ref_out(u.v.W, u.r.k[1], u.r.s[1], u.r.p[1], u.r.d[1], u.r.ceil);
            kiln_tensor *y = op == 0 ? kiln_max_pool2d(ctx, o.t, &p, NULL) : kiln_avg_pool2d(ctx, o.t, &p);
            char what[200];
            snprintf(what, sizeof what, "%s %s%s", op == 0 ? "max_pool2d" : "avg_pool2d", pc->name,
                     op == 1 ? " count_include_pad" : "");
            gc_check(ctx, what, op == 0 ? ref_max : ref_avg, &u, 1, &o.leaf, (double *const[]){o.based},
                     (const bool[]){true}, y, 1e-5, 1e-5);
            check_guards(ctx, what);
            kiln_scope_end(ctx);
            free_operand(&o);
            kiln_error_clear(ctx);
        }
    }
    for (size_t ci = 0; ci < sizeof gap_shapes / sizeof gap_shapes[0]; ci++) {
        kiln_scope_begin(ctx);
        operand o;
        if (make_operand(ctx, &gap_shapes[ci], G_UNIFORM, true, &o)) {
            pool_user u = {.v = lv_from(&o.hv)};
            char what[80];
            snprintf(what, sizeof what, "global_avg_pool2d case %zu", ci);
            gc_check(ctx, what, ref_gap, &u, 1, &o.leaf, (double *const[]){o.based}, (const bool[]){true},
                     kiln_global_avg_pool2d(ctx, o.t), 1e-5, 1e-5);
        }
        kiln_scope_end(ctx);
        free_operand(&o);
        kiln_error_clear(ctx);
    }
    for (size_t ci = 0; ci < NUCASES; ci++) {
        const ucase *uc = &ucases[ci];
        kiln_scope_begin(ctx);
        operand o;
        if (make_operand(ctx, &uc->x, G_UNIFORM, true, &o)) {
            up_user u = {.v = lv_from(&o.hv), .OH = uc->oh, .OW = uc->ow, .mode = uc->mode, .align = uc->align};
            char sb[64], what[200];
            snprintf(what, sizeof what, "upsample %s %s -> %dx%d%s", uc->mode == NE ? "nearest" : "bilinear",
                     kiln_tensor_shape_str(o.t, sb, sizeof sb), uc->oh, uc->ow, uc->align ? " align_corners" : "");
            gc_check(ctx, what, ref_up, &u, 1, &o.leaf, (double *const[]){o.based}, (const bool[]){true},
                     kiln_upsample(ctx, o.t, uc->oh, uc->ow, uc->mode, uc->align), 1e-5, 1e-5);
        }
        kiln_scope_end(ctx);
        free_operand(&o);
        kiln_error_clear(ctx);
    }
}

/* The indices handle freed by the caller before backward: the node keeps its own. Two
 * backward passes give bit-identical gradients (no atomics). */
static void test_indices_lifetime_and_determinism(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    vspec s = V(4, 2, 3, 9, 8);
    operand o;
    if (make_operand(ctx, &s, G_DISTINCT, true, &o)) {
        kiln_pool2d_params p = P(3, 3, 2, 2, 1, 1, 1, 1, false);
        kiln_tensor *ind = NULL;
        kiln_tensor *y = kiln_max_pool2d(ctx, o.t, &p, &ind);
        CHECK(y && ind, "max_pool2d: %s", kiln_error_message(ctx));
        kiln_tensor_free(ind);
        pool_user u = {.r = resolve(&p), .v = lv_from(&o.hv)};
        u.OH = ref_out(u.v.H, 3, 2, 1, 1, false), u.OW = ref_out(u.v.W, 3, 2, 1, 1, false);
        gc_check(ctx, "max_pool2d, indices freed before backward", ref_max, &u, 1, &o.leaf,
                 (double *const[]){o.based}, (const bool[]){true}, y, 1e-5, 1e-5);
    }
    free_operand(&o);
    kiln_scope_end(ctx);

    kiln_scope_begin(ctx);
    s = (vspec)V(4, 2, 3, 7, 6);
    if (make_operand(ctx, &s, G_UNIFORM, true, &o)) {
        float *g[2] = {NULL, NULL};
        for (int r = 0; r < 2; r++) {
            kiln_clear_grad(o.leaf);
            kiln_tensor *y = kiln_upsample(ctx, o.t, 23, 17, BI, false);
            kiln_tensor *seed = kiln_ones(ctx, 4, (int64_t[]){2, 3, 23, 17});
            CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "backward: %s", kiln_error_message(ctx));
            g[r] = kiln_grad(o.leaf) ? h_read(kiln_grad(o.leaf)) : NULL;
        }
        CHECK(g[0] && g[1] && memcmp(g[0], g[1], sizeof(float) * (size_t)o.nbase) == 0,
              "bilinear backward is not bit-reproducible");
        free(g[0]);
        free(g[1]);
    }
    free_operand(&o);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
}

/* ---- the reference CNN's pooling: max_pool2d(2) on [64, 64, 24, 24] ------------------------ */

static void test_cnn_shape(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const int64_t shape[4] = {64, 64, 24, 24}, oshape[4] = {64, 64, 12, 12};
    int64_t n = h_numel(4, shape), no = h_numel(4, oshape);
    float *x = malloc(sizeof(float) * (size_t)n), *gy = malloc(sizeof(float) * (size_t)no);
    h_fill(x, n, -2, 2);
    h_fill(gy, no, -1, 1);
    kiln_tensor *xt = kiln_from_host(ctx, x, KILN_F32, 4, shape);
    kiln_set_requires_grad(xt, true);
    kiln_tensor *seed = kiln_from_host(ctx, gy, KILN_F32, 4, oshape);
    kiln_pool2d_params p = {.kernel = {2, 2}};
    kiln_tensor *y = kiln_max_pool2d(ctx, xt, &p, NULL);
    float *got = y ? h_read(y) : NULL;
    CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "cnn pool backward: %s", kiln_error_message(ctx));
    float *g = kiln_grad(xt) ? h_read(kiln_grad(xt)) : NULL;
    /* reference: values exact, each input's gradient is gy at its window's argmax, else 0 */
    double *ry = malloc(sizeof(double) * (size_t)no), *rg = calloc((size_t)n, sizeof(double));
    for (int64_t pl = 0; pl < 64 * 64; pl++)
        for (int oh = 0; oh < 12; oh++)
            for (int ow = 0; ow < 12; ow++) {
                const float *xp = x + pl * 576;
                int best = (2 * oh) * 24 + 2 * ow;
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++) {
                        int k = (2 * oh + i) * 24 + 2 * ow + j;
                        if (xp[k] > xp[best]) best = k;
                    }
                int64_t o = pl * 144 + oh * 12 + ow;
                ry[o] = xp[best];
                rg[pl * 576 + best] = gy[o];
            }
    if (got) h_compare("cnn max_pool2d forward", got, ry, no, 0, 0);
    if (g) h_compare("cnn max_pool2d backward", g, rg, n, 0, 0);
    CHECK(got && g, "cnn pool: %s", kiln_error_message(ctx));
    free(ry), free(rg), free(got), free(g), free(x), free(gy);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
}

/* ---- PyTorch golden file ------------------------------------------------------------------- */

/* NCHW host data -> NHWC copy (for the channels-last view runs). */
static float *to_nhwc(const float *x, const int64_t *s) {
    float *y = malloc(sizeof(float) * (size_t)h_numel(4, s));
    for (int64_t n = 0; n < s[0]; n++)
        for (int64_t c = 0; c < s[1]; c++)
            for (int64_t h = 0; h < s[2]; h++)
                for (int64_t w = 0; w < s[3]; w++)
                    y[((n * s[2] + h) * s[3] + w) * s[1] + c] = x[((n * s[1] + c) * s[2] + h) * s[3] + w];
    return y;
}

enum { GO_MAX, GO_AVG, GO_GAP, GO_UP };

/* Runs golden case `prefix` of kind `kind`, with the input contiguous (layout 0) or as a
 * channels-last view (layout 1, 4-D inputs only). */
static void golden_case(kiln_ctx *ctx, const golden *gf, int kind, const char *prefix, int layout) {
    char name[64], what[160];
#define GGET(suffix) (snprintf(name, sizeof name, "%s.%s", prefix, suffix), golden_get(gf, name))
    const golden_tensor *x = GGET("x"), *y = GGET("y"), *pp = GGET("p");
    if (!x || !y || !pp) return;
    if (layout == 1 && x->ndim != 4) return;
    const int32_t *pv = pp->i;
    bool backward = kind == GO_MAX ? pv[9] != 0 : true;
    const golden_tensor *gy = backward ? GGET("gy") : NULL, *gx = backward ? GGET("gx") : NULL;
    const golden_tensor *idx = kind == GO_MAX ? GGET("idx") : NULL;
    kiln_scope_begin(ctx);
    kiln_tensor *leaf, *xt;
    float *nhwc = NULL;
    if (layout == 0) {
        leaf = xt = golden_upload(ctx, x);
    } else {
        nhwc = to_nhwc(x->f, x->shape);
        int64_t s[4] = {x->shape[0], x->shape[2], x->shape[3], x->shape[1]};
        leaf = kiln_from_host(ctx, nhwc, KILN_F32, 4, s);
        if (backward) kiln_set_requires_grad(leaf, true);
        xt = kiln_permute(ctx, leaf, (const int[]){0, 3, 1, 2});
    }
    if (backward && layout == 0) kiln_set_requires_grad(leaf, true);
    kiln_tensor *out = NULL, *ind = NULL;
    double atol = 0, rtol = 0, gatol = 0, grtol = 0;
    switch (kind) {
    case GO_MAX: {
        kiln_pool2d_params p = P(pv[0], pv[1], pv[2], pv[3], pv[4], pv[5], pv[6], pv[7], pv[8] != 0);
        out = kiln_max_pool2d(ctx, xt, &p, &ind);
        break; /* exact: selection; the gradient adds the same terms in PyTorch's order */
    }
    case GO_AVG: {
        kiln_pool2d_params p = P(pv[0], pv[1], pv[2], pv[3], pv[4], pv[5], 1, 1, pv[6] != 0);
        p.count_include_pad = pv[7] != 0;
        out = kiln_avg_pool2d(ctx, xt, &p);
        /* the same sums in the same order as PyTorch's CPU kernel, then a division, which
         * OpenCL allows to err by 2.5 ulp (POCL rounds it correctly: bit-exact here) */
        rtol = grtol = 5 * U;
        break;
    }
    case GO_GAP:
        out = kiln_global_avg_pool2d(ctx, xt);
        /* PyTorch's mean sums in another order: (H + W) roundings of max|x|; the gradient
         * is one division (2.5 ulp) */
        atol = (double)(x->shape[x->ndim - 2] + x->shape[x->ndim - 1]) * U * max_abs(x->f, x->numel), rtol = 5 * U;
        grtol = 5 * U;
        break;
    case GO_UP:
        out = kiln_upsample(ctx, xt, pv[0], pv[1], pv[2], pv[3] != 0);
        if (pv[2] == NE) break; /* exact: the same float source index, gradients in the same order */
        {
            /* PyTorch rounds its scale (in/out) to float before it computes the source
             * coordinate, so its weights differ from kiln's (one rounding of the exact
             * value) by up to 2 (in + 2) u per output; plus 8 u of arithmetic on each
             * side. A gradient sums T such terms, T the outputs that touch one input. */
            int64_t H = x->shape[2], W = x->shape[3], in = H > W ? H : W;
            int64_t T = ((2 * pv[0] + H - 1) / H + 2) * ((2 * pv[1] + W - 1) / W + 2);
            atol = (8 * (double)(in + 2) + 16) * U * max_abs(x->f, x->numel);
            gatol = (double)T * (2 * (double)(in + 2) + 8) * U * max_abs(gy->f, gy->numel);
        }
        break;
    }
    snprintf(what, sizeof what, "golden %s%s", prefix, layout ? " (channels-last view)" : "");
    CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (out) golden_compare(what, out, y, atol, rtol);
    if (idx && ind) {
        int32_t *gi = read_i32(ind);
        char w2[200];
        snprintf(w2, sizeof w2, "%s indices", what);
        if (kiln_tensor_numel(ind) == idx->numel) compare_i32(w2, gi, idx->i, idx->numel);
        else CHECK(0, "%s: count", w2);
        free(gi);
    }
    if (out && backward && gy && gx) {
        kiln_tensor *seed = golden_upload(ctx, gy);
        kiln_status s = kiln_backward_ex(out, seed, false);
        CHECK(s == KILN_OK, "%s backward: %s", what, kiln_error_message(ctx));
        kiln_tensor *g = kiln_grad(leaf);
        char w2[200];
        snprintf(w2, sizeof w2, "%s input gradient", what);
        if (g && layout == 0) golden_compare(w2, g, gx, gatol, grtol);
        else if (g) {
            golden_tensor t = *gx;
            t.f = to_nhwc(gx->f, gx->shape);
            t.shape[1] = gx->shape[2], t.shape[2] = gx->shape[3], t.shape[3] = gx->shape[1];
            golden_compare(w2, g, &t, gatol, grtol);
            free(t.f);
        } else CHECK(0, "%s: no gradient", w2);
    }
    free(nhwc);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
#undef GGET
}

static void test_golden(kiln_ctx *ctx) {
    golden gf;
    if (!golden_open(&gf, "pool")) return;
    const char *fam[4] = {"mp", "ap", "gp", "up"};
    for (int kind = 0; kind < 4; kind++) {
        char name[32];
        snprintf(name, sizeof name, "%s.count", fam[kind]);
        const golden_tensor *cnt = golden_get(&gf, name);
        if (!cnt) continue;
        CHECK(cnt->i[0] > 0, "%s: no cases", name);
        for (int k = 0; k < cnt->i[0]; k++) {
            char prefix[32];
            snprintf(prefix, sizeof prefix, "%s%d", fam[kind], k);
            for (int layout = 0; layout < 2; layout++) golden_case(ctx, &gf, kind, prefix, layout);
        }
    }
    golden_close(&gf);
}

/* ---- errors, empty batches, leaks --------------------------------------------------------- */

static void expect_error(kiln_ctx *ctx, kiln_tensor *r, kiln_status want, const char *what, const char *s1,
                         const char *s2) {
    const char *m = kiln_error_message(ctx);
    CHECK(r == NULL && kiln_error_status(ctx) == want, "%s: expected %s, got %s (%s)", what, kiln_status_name(want),
          kiln_status_name(kiln_error_status(ctx)), m ? m : "");
    m = kiln_error_message(ctx);
    CHECK(m && (!s1 || strstr(m, s1)) && (!s2 || strstr(m, s2)), "%s: message \"%s\" lacks \"%s\" / \"%s\"", what,
          m ? m : "", s1 ? s1 : "", s2 ? s2 : "");
    kiln_error_clear(ctx);
}

static void test_errors(kiln_ctx *ctx) {
    kiln_error_clear(ctx);
    int64_t before = kiln_tensor_count(ctx);
    kiln_tensor *x = kiln_ones(ctx, 4, (int64_t[]){1, 1, 5, 5});
    kiln_pool2d_params p3 = {.kernel = {3, 3}};
    kiln_tensor *ind = (kiln_tensor *)&ind; /* must be reset to NULL on failure */

    expect_error(ctx, kiln_max_pool2d(ctx, NULL, &p3, &ind), KILN_ERR_NULL, "max_pool2d(NULL)", "kiln_max_pool2d", NULL);
    CHECK(ind == NULL, "indices not reset on failure");
    expect_error(ctx, kiln_avg_pool2d(ctx, NULL, &p3), KILN_ERR_NULL, "avg_pool2d(NULL)", "kiln_avg_pool2d", NULL);
    expect_error(ctx, kiln_global_avg_pool2d(ctx, NULL), KILN_ERR_NULL, "global(NULL)", "kiln_global_avg_pool2d",
                 NULL);
    expect_error(ctx, kiln_upsample(ctx, NULL, 3, 3, NE, false), KILN_ERR_NULL, "upsample(NULL)", "kiln_upsample",
                 NULL);
    CHECK(kiln_max_pool2d(NULL, x, &p3, NULL) == NULL, "NULL ctx");

    /* an error already held is kept (NULL propagation) */
    kiln_tensor *bad = kiln_max_pool2d(ctx, x, NULL, NULL);
    char saved[512];
    snprintf(saved, sizeof saved, "%s", kiln_error_message(ctx));
    CHECK(bad == NULL && kiln_error_status(ctx) == KILN_ERR_NULL && strstr(saved, "kiln_max_pool2d") &&
              strstr(saved, "[1, 1, 5, 5]"),
          "NULL params: %s", saved);
    kiln_tensor *chain = kiln_upsample(ctx, kiln_avg_pool2d(ctx, bad, &p3), 4, 4, BI, false);
    CHECK(chain == NULL && strcmp(kiln_error_message(ctx), saved) == 0, "chain keeps the first error: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);

    kiln_tensor *xi = kiln_empty(ctx, KILN_I32, 4, (int64_t[]){1, 1, 5, 5});
    expect_error(ctx, kiln_max_pool2d(ctx, xi, &p3, NULL), KILN_ERR_DTYPE, "i32 input", "kiln_max_pool2d",
                 "[1, 1, 5, 5]");
    expect_error(ctx, kiln_upsample(ctx, xi, 3, 3, NE, false), KILN_ERR_DTYPE, "i32 upsample", "kiln_upsample", "i32");
    kiln_tensor *x2 = kiln_ones(ctx, 2, (int64_t[]){5, 5});
    expect_error(ctx, kiln_max_pool2d(ctx, x2, &p3, NULL), KILN_ERR_SHAPE, "2-D input", "kiln_max_pool2d", "[5, 5]");
    expect_error(ctx, kiln_global_avg_pool2d(ctx, x2), KILN_ERR_SHAPE, "2-D global", "kiln_global_avg_pool2d",
                 "[5, 5]");
    kiln_tensor *x3 = kiln_ones(ctx, 3, (int64_t[]){2, 5, 5});
    expect_error(ctx, kiln_upsample(ctx, x3, 3, 3, BI, false), KILN_ERR_SHAPE, "3-D upsample", "kiln_upsample",
                 "[2, 5, 5]");
    kiln_tensor *x5 = kiln_ones(ctx, 5, (int64_t[]){1, 1, 1, 5, 5});
    expect_error(ctx, kiln_avg_pool2d(ctx, x5, &p3), KILN_ERR_SHAPE, "5-D input", "kiln_avg_pool2d", "[1, 1, 1, 5, 5]");
    kiln_tensor *xc0 = kiln_empty(ctx, KILN_F32, 4, (int64_t[]){1, 0, 5, 5});
    expect_error(ctx, kiln_max_pool2d(ctx, xc0, &p3, NULL), KILN_ERR_SHAPE, "no channels", "kiln_max_pool2d",
                 "[1, 0, 5, 5]");

    kiln_pool2d_params p = {.kernel = {0, 2}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_INVALID_ARGUMENT, "kernel 0", "kernel [0, 2]",
                 "[1, 1, 5, 5]");
    p = (kiln_pool2d_params){.kernel = {2, 2}, .stride = {-1, 1}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_INVALID_ARGUMENT, "negative stride", "stride [-1, 1]",
                 "kiln_avg_pool2d");
    p = (kiln_pool2d_params){.kernel = {2, 2}, .padding = {0, -1}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_INVALID_ARGUMENT, "negative padding",
                 "padding [0, -1]", NULL);
    p = (kiln_pool2d_params){.kernel = {3, 3}, .padding = {2, 1}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_INVALID_ARGUMENT, "padding > kernel/2",
                 "padding [2, 1]", "half the kernel");
    p = (kiln_pool2d_params){.kernel = {2, 5}, .padding = {1, 3}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_INVALID_ARGUMENT, "avg padding > kernel/2",
                 "kernel [2, 5]", "[1, 1, 5, 5]");
    p = (kiln_pool2d_params){.kernel = {3, 3}, .dilation = {2, 2}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_INVALID_ARGUMENT, "avg dilation", "dilation [2, 2]",
                 "kiln_avg_pool2d");
    p = (kiln_pool2d_params){.kernel = {3, 3}, .dilation = {3, 1}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_SHAPE, "output too small", "[1, 1, 5, 5]",
                 "0x1");
    p = (kiln_pool2d_params){.kernel = {6, 6}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_SHAPE, "kernel larger than input", "kernel [6, 6]",
                 "0x0");

    expect_error(ctx, kiln_upsample(ctx, x, 0, 3, NE, false), KILN_ERR_INVALID_ARGUMENT, "upsample to 0",
                 "kiln_upsample", "0x3");
    expect_error(ctx, kiln_upsample(ctx, x, 3, 3, (kiln_upsample_mode)7, false), KILN_ERR_INVALID_ARGUMENT,
                 "upsample mode 7", "mode 7", "[1, 1, 5, 5]");
    expect_error(ctx, kiln_upsample(ctx, x, 3, 3, NE, true), KILN_ERR_INVALID_ARGUMENT, "nearest align_corners",
                 "align_corners", "[1, 1, 5, 5]");

    /* empty batch: empty outputs, no error (as torch) */
    kiln_tensor *e = kiln_empty(ctx, KILN_F32, 4, (int64_t[]){0, 3, 7, 5});
    kiln_pool2d_params p2 = {.kernel = {2, 2}};
    kiln_tensor *ei = NULL;
    kiln_tensor *ey = kiln_max_pool2d(ctx, e, &p2, &ei);
    CHECK(shape_is(ey, 4, (int64_t[]){0, 3, 3, 2}) && shape_is(ei, 4, (int64_t[]){0, 3, 3, 2}), "empty batch: %s",
          kiln_error_message(ctx));
    kiln_tensor *ea = kiln_avg_pool2d(ctx, e, &p2), *eg = kiln_global_avg_pool2d(ctx, e),
                *eu = kiln_upsample(ctx, e, 4, 4, BI, true);
    CHECK(shape_is(ea, 4, (int64_t[]){0, 3, 3, 2}) && shape_is(eg, 4, (int64_t[]){0, 3, 1, 1}) &&
              shape_is(eu, 4, (int64_t[]){0, 3, 4, 4}),
          "empty batch: %s", kiln_error_message(ctx));
    kiln_tensor_free(ey), kiln_tensor_free(ei), kiln_tensor_free(ea), kiln_tensor_free(eg), kiln_tensor_free(eu);
    kiln_tensor_free(e);
    CHECK_OK(ctx);

    kiln_tensor_free(x), kiln_tensor_free(xi), kiln_tensor_free(x2), kiln_tensor_free(x3), kiln_tensor_free(x5);
    kiln_tensor_free(xc0);
    CHECK(kiln_tensor_count(ctx) == before, "tensors leaked by the error paths: %lld before, %lld after",
          (long long)before, (long long)kiln_tensor_count(ctx));

    /* a whole training-like step in a scope leaves nothing behind */
    before = kiln_tensor_count(ctx);
    kiln_tensor *w = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){2, 3, 9, 8});
    kiln_set_requires_grad(w, true);
    kiln_scope_begin(ctx);
    kiln_pool2d_params pm = {.kernel = {3, 3}, .stride = {2, 2}, .padding = {1, 1}};
    kiln_tensor *i2 = NULL;
    kiln_tensor *a = kiln_max_pool2d(ctx, w, &pm, &i2);
    kiln_tensor *b = kiln_avg_pool2d(ctx, a, &pm);
    kiln_tensor *c = kiln_upsample(ctx, b, 5, 7, BI, false);
    kiln_tensor *d = kiln_upsample(ctx, c, 9, 8, NE, false);
    kiln_tensor *gsum = kiln_sum(ctx, kiln_global_avg_pool2d(ctx, d), 0, NULL, false);
    CHECK(gsum && kiln_backward(gsum) == KILN_OK, "chain backward: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK(kiln_grad(w) != NULL, "chain: no gradient");
    kiln_tensor_free(w);
    CHECK(kiln_tensor_count(ctx) == before, "tensors leaked by a pooling step: %lld before, %lld after",
          (long long)before, (long long)kiln_tensor_count(ctx));
    /* no grad mode: no node, no indices kept */
    before = kiln_tensor_count(ctx);
    kiln_tensor *v = kiln_ones(ctx, 4, (int64_t[]){1, 2, 4, 4});
    kiln_set_requires_grad(v, true);
    bool prev = kiln_set_grad_enabled(ctx, false);
    kiln_tensor *nv = kiln_max_pool2d(ctx, v, &p2, NULL);
    CHECK(nv && !kiln_requires_grad(nv), "no_grad output requires grad");
    kiln_set_grad_enabled(ctx, prev);
    kiln_tensor_free(nv);
    kiln_tensor_free(v);
    CHECK(kiln_tensor_count(ctx) == before, "no_grad leak");
    kiln_error_clear(ctx);
}

/* ---- driver --------------------------------------------------------------------------------- */

static void run(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 29);
    test_max_forward(ctx);
    test_avg_forward(ctx);
    test_gap_forward(ctx);
    test_up_forward(ctx);
    test_gradients(ctx);
    kiln__set_guard(ctx, 0);
    test_indices_lifetime_and_determinism(ctx);
    test_golden(ctx);
    test_cnn_shape(ctx);
    test_errors(ctx);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
