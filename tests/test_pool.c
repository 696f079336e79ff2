/* tests/test_pool.c - max_pool2d (values and indices), avg_pool2d, global_avg_pool2d and
 * upsample (nearest, bilinear) against plain-C double references over odd planes, every
 * window option (kernel, stride, padding, dilation, ceil_mode, count_include_pad),
 * batched and unbatched inputs and non-contiguous views (transposed, sliced, channels-last);
 * gradients by finite differences (gradcheck.h) and against a double backward; PyTorch
 * golden files; NaN/Inf; guard regions; the reference CNN's max_pool2d(2) on
 * [64, 64, 24, 24]; error paths and leaks.
 *
 * References read the input through the harness's own view model (h_view), not kiln's
 * strides. Comparisons: |got - want| <= bound, NaN/Inf exact; u = 2^-24, the float32 unit
 * roundoff, gamma_j = j u / (1 - j u).
 *   max_pool2d values and indices, nearest upsampling: exact (selections, integers).
 *   Sums: per element from its own terms (eb_*; S = sum |t_i| in double). A float sum of k
 *     terms, each rounded by at most e on its own (a division: e = 5u for kiln, OpenCL's
 *     2.5 ulp; u for PyTorch's CPU), added in ANY order, errs by at most
 *     e S + gamma_{k-1} (1 + e) S (sum_err); a sum then divided by d, by
 *     (gamma_{k-1} (1 + e) S + e |s|) / d. Bounds hold for whatever order a device adds in:
 *     avg_pool2d forward (k = window elements) and input gradient (k = covering windows,
 *     t = gy / divisor); max_pool2d and nearest input gradients (e = 0; two terms or fewer
 *     are bit-exact between kiln and PyTorch); global_avg_pool2d (kiln: each term meets at
 *     most H-1 + W-1 additions (row sums, then their sum); PyTorch's mean any order, then
 *     gamma_2 for /n or *(1/n)); bilinear (weights err by 6u in kiln, by gamma_2 in + u in
 *     PyTorch, whose source coordinate uses a float scale; two products and the additions:
 *     gamma_{k+1}; eb_bil_*).
 *   Kiln is checked against the double reference within kiln's bound; against PyTorch's
 *   golden results within kiln's + PyTorch's bound; PyTorch's results against the double
 *   reference within PyTorch's bound (a check of that model). The largest |error|/bound of
 *   each kind is printed per device.
 *   bilinear forward (random cases): atol = 16 u max|x|: the weights carry one rounding each
 *     (the source coordinate is exact), then three products and three sums of magnitude
 *     <= max|x|.
 *   gradients by finite differences (gc_check, exact to ~1e-9 here as every op is piecewise
 *     linear): atol 1e-5 of the gradient's scale, rtol 1e-5, a coarse check of the same
 *     gradients that check_backward bounds element by element against the double backward.
 * PyTorch golden file: tests/golden/gen_pool.py.
 */
#include <float.h>

#include "gradcheck.h"
#include "golden.h"

#define U (1.0 / 16777216.0)

/* ---- operands: a base buffer, a kiln view of it, and the harness's model --------------- */

typedef h_tf tf; /* the harness's view steps (TF_T, TF_S, TF_P here) */

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
    if (requires_grad) kiln_tensor_set_requires_grad(o->leaf, true);
    o->t = o->leaf;
    o->hv = h_contig(s->ndim, s->shape);
    o->t = h_view_build(ctx, o->t, &o->hv, 2, s->tf);
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

/* Pooling parameters as the reference reads them (every field literal). */
typedef struct rp {
    int k[2], s[2], p[2], d[2];
    bool ceil, cip;
} rp;

static rp resolve(const kiln_pool2d_params *p) {
    rp r;
    for (int a = 0; a < 2; a++) {
        r.k[a] = p->kernel[a];
        r.s[a] = p->stride[a];
        r.p[a] = p->padding[a];
        r.d[a] = p->dilation[a];
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
    if (align)
        src = out > 1 ? (double)o * (double)(in - 1) / (double)(out - 1) : 0.0;
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

/* ---- error bounds, per element: kiln's, PyTorch's and the double reference's ------------- */

#define UD (1.0 / 9007199254740992.0) /* 2^-53, double's unit roundoff */
/* OpenCL 1.2 (full profile, no -cl-fp32-correctly-rounded-divide-sqrt) lets float x / y err by
 * 2.5 ulp, and ulp(r) <= 2u|r|: 5u relative. POCL rounds correctly; NVIDIA's default does not. */
#define E_DIV (5 * U)

/* gamma_j = j v / (1 - j v), v the unit roundoff (Higham): a sum in which every term passes
 * through at most j roundings errs by at most gamma_j * sum |terms|, in any order. */
static double gam_(double unit, int64_t j) { return j > 0 ? (double)j * unit / (1 - (double)j * unit) : 0; }
#define GAM(j) gam_(U, (j))
#define GAMD(j) gam_(UD, (j))

/* k terms t_i (1 + d_i), |d_i| <= e (each term's own rounding, e.g. one division), added in
 * any order: |computed - exact| <= e S + gamma_{k-1} (1 + e) S, S = sum |t_i|. */
static double sum_err(double unit, double S, int64_t k, double e) {
    return k > 0 ? e * S + gam_(unit, k - 1) * (1 + e) * S : 0;
}

/* One op's result, element by element: the exact value (computed in double) and bounds on how
 * far kiln's float result (bk), PyTorch's (bt) and the double computation itself (bd) may be
 * from it. same[i]: kiln and PyTorch must agree bit for bit (no terms, or at most two exact
 * terms: fl(a + b) does not depend on the order). */
typedef struct eb {
    int64_t n;
    double *ref, *bk, *bt, *bd;
    unsigned char *same;
} eb;

static void eb_init(eb *b, int64_t n) {
    size_t m = (size_t)(n > 0 ? n : 1);
    b->n = n;
    b->ref = calloc(m, sizeof(double));
    b->bk = calloc(m, sizeof(double));
    b->bt = calloc(m, sizeof(double));
    b->bd = calloc(m, sizeof(double));
    b->same = calloc(m, 1);
}

static void eb_free(eb *b) {
    free(b->ref), free(b->bk), free(b->bt), free(b->bd), free(b->same);
    memset(b, 0, sizeof *b);
}

/* An exact result (selections): every bound 0. */
static void eb_exact(eb *b, int64_t n) {
    eb_init(b, n);
    memset(b->same, 1, (size_t)(n > 0 ? n : 1));
}

/* Plane-contiguous layout [P][H][W] as the reference's view. */
static lview lv_planes(int64_t P, int64_t H, int64_t W) {
    return (lview){.N = 1, .C = P, .H = H, .W = W, .sn = 0, .sc = H * W, .sh = W, .sw = 1, .off = 0};
}

/* avg_pool2d's window of output (oh, ow) clipped to the input, and its divisor (PyTorch's rule:
 * count_include_pad counts the padding the window covers, not what lies beyond it). */
static int64_t avg_win(const rp *r, int64_t H, int64_t W, int64_t oh, int64_t ow, int64_t *hs, int64_t *he, int64_t *ws,
                       int64_t *we) {
    int64_t h0 = oh * r->s[0] - r->p[0], w0 = ow * r->s[1] - r->p[1];
    int64_t h1 = h0 + r->k[0] < H + r->p[0] ? h0 + r->k[0] : H + r->p[0];
    int64_t w1 = w0 + r->k[1] < W + r->p[1] ? w0 + r->k[1] : W + r->p[1];
    int64_t pool = (h1 - h0) * (w1 - w0);
    *hs = h0 > 0 ? h0 : 0, *ws = w0 > 0 ? w0 : 0;
    *he = h1 < H ? h1 : H, *we = w1 < W ? w1 : W;
    int64_t cnt = (*he > *hs && *we > *ws) ? (*he - *hs) * (*we - *ws) : 0;
    return r->cip ? pool : cnt;
}

/* avg_pool2d forward: y = (sum of k window elements) / d. Both sides add the k terms (exact
 * floats) in some order, then divide: |y^ - y| <= (gamma_{k-1} (1 + e) S + e |s|) / d with
 * e = E_DIV for kiln, u for PyTorch's CPU division. An empty window is 0 everywhere. */
static void eb_avg_fwd(eb *b, const double *x, int64_t P, int64_t H, int64_t W, const rp *r, int64_t OH, int64_t OW) {
    eb_init(b, P * OH * OW);
    for (int64_t p = 0, o = 0; p < P; p++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++, o++) {
                int64_t hs, he, ws, we, d = avg_win(r, H, W, oh, ow, &hs, &he, &ws, &we), k = 0;
                double s = 0, S = 0;
                for (int64_t h = hs; h < he; h++)
                    for (int64_t w = ws; w < we; w++, k++) {
                        double v = x[(p * H + h) * W + w];
                        s += v, S += fabs(v);
                    }
                if (k == 0 || d == 0) {
                    b->same[o] = 1;
                    continue;
                }
                b->ref[o] = s / (double)d;
                b->bk[o] = (GAM(k - 1) * (1 + E_DIV) * S + E_DIV * fabs(s)) / (double)d;
                b->bt[o] = (GAM(k - 1) * (1 + U) * S + U * fabs(s)) / (double)d;
                b->bd[o] = GAMD(k + 1) * S / (double)d;
            }
}

/* avg_pool2d backward: input element i gathers t = gy[o] / d[o] from each of the k windows o
 * that cover it; each term carries its division's error (E_DIV kiln, u PyTorch), then the k
 * terms are added in some order: sum_err. */
static void eb_avg_bwd(eb *b, const double *gy, int64_t P, int64_t H, int64_t W, const rp *r, int64_t OH, int64_t OW) {
    eb_init(b, P * H * W);
    double *S = calloc((size_t)(b->n > 0 ? b->n : 1), sizeof(double));
    int64_t *k = calloc((size_t)(b->n > 0 ? b->n : 1), sizeof(int64_t));
    for (int64_t p = 0, o = 0; p < P; p++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++, o++) {
                int64_t hs, he, ws, we, d = avg_win(r, H, W, oh, ow, &hs, &he, &ws, &we);
                if (d == 0) continue;
                double t = gy[o] / (double)d;
                for (int64_t h = hs; h < he; h++)
                    for (int64_t w = ws; w < we; w++) {
                        int64_t i = (p * H + h) * W + w;
                        b->ref[i] += t, S[i] += fabs(t), k[i]++;
                    }
            }
    for (int64_t i = 0; i < b->n; i++) {
        b->bk[i] = sum_err(U, S[i], k[i], E_DIV);
        b->bt[i] = sum_err(U, S[i], k[i], U);
        b->bd[i] = sum_err(UD, S[i], k[i], UD);
        b->same[i] = k[i] == 0;
    }
    free(S), free(k);
}

/* A gradient whose terms are output gradients themselves, unrounded (max_pool2d: to the
 * window's argmax; nearest: to the source pixel): target[o] is output o's element in its
 * plane, or -1. k exact terms in some order: sum_err with e = 0 on every side. */
static void eb_gather_exact(eb *b, const double *gy, const int64_t *target, int64_t P, int64_t H, int64_t W, int64_t OH,
                            int64_t OW) {
    eb_init(b, P * H * W);
    double *S = calloc((size_t)(b->n > 0 ? b->n : 1), sizeof(double));
    int64_t *k = calloc((size_t)(b->n > 0 ? b->n : 1), sizeof(int64_t));
    for (int64_t p = 0; p < P; p++)
        for (int64_t j = 0; j < OH * OW; j++) {
            int64_t o = p * OH * OW + j, t = target[o];
            if (t < 0 || t >= H * W) continue;
            b->ref[p * H * W + t] += gy[o], S[p * H * W + t] += fabs(gy[o]), k[p * H * W + t]++;
        }
    for (int64_t i = 0; i < b->n; i++) {
        b->bk[i] = b->bt[i] = sum_err(U, S[i], k[i], 0);
        b->bd[i] = sum_err(UD, S[i], k[i], 0);
        b->same[i] = k[i] <= 2;
    }
    free(S), free(k);
}

/* Global average pooling forward: n = H*W terms, then a division. kiln adds each row, then the
 * row sums (pool.cl: a term meets at most (W-1) + (H-1) additions, in whatever order within
 * each level): gamma_{H+W-2}. PyTorch's mean: any order (gamma_{n-1}), then a division or a
 * product with the rounded 1/n: gamma_2. */
static void eb_gap_fwd(eb *b, const double *x, int64_t P, int64_t H, int64_t W) {
    eb_init(b, P);
    int64_t n = H * W;
    for (int64_t p = 0; p < P; p++) {
        double s = 0, S = 0;
        for (int64_t i = 0; i < n; i++) s += x[p * n + i], S += fabs(x[p * n + i]);
        b->ref[p] = s / (double)n;
        b->bk[p] = (GAM(H + W - 2) * (1 + E_DIV) * S + E_DIV * fabs(s)) / (double)n;
        b->bt[p] = (GAM(n - 1) * (1 + GAM(2)) * S + GAM(2) * fabs(s)) / (double)n;
        b->bd[p] = GAMD(n + 1) * S / (double)n;
    }
}

/* Global average pooling backward: one term, gy / n (kiln E_DIV, PyTorch gamma_2). */
static void eb_gap_bwd(eb *b, const double *gy, int64_t P, int64_t H, int64_t W) {
    eb_init(b, P * H * W);
    for (int64_t i = 0; i < b->n; i++) {
        double t = gy[i / (H * W)] / (double)(H * W);
        b->ref[i] = t;
        b->bk[i] = E_DIV * fabs(t), b->bt[i] = GAM(2) * fabs(t), b->bd[i] = UD * fabs(t);
    }
}

/* Bilinear weights along one axis, exact: w[o*in + i] is the weight output o gives input i
 * (ref_linear's stencil; both taps add on the last pixel); near[o*in + i] marks the inputs
 * closer than 1 + m to o's source coordinate, all that a coordinate off by m can weigh. */
static void lin_axis(int64_t in, int64_t out, bool align, double m, double *w, unsigned char *near) {
    for (int64_t o = 0; o < out; o++) {
        int64_t i0, i1;
        double l1;
        ref_linear(o, in, out, align, &i0, &i1, &l1);
        double src = (double)i0 + l1;
        for (int64_t i = 0; i < in; i++) {
            w[o * in + i] = (i == i0 ? 1 - l1 : 0) + (i == i1 ? l1 : 0);
            near[o * in + i] = fabs(src - (double)i) < 1 + m;
        }
    }
}

/* Weight errors (absolute) of one axis. kiln: l1 = (float)r / den, exact r/den (E_DIV l1),
 * l0 = 1 - l1 (+ u): 6u + 5u^2. PyTorch: scale = (float)in/out, src = scale*(o+0.5) - 0.5
 * (the subtraction is exact), so src errs by gamma_2 * in; a weight is 1-Lipschitz in src,
 * plus u for l0 = 1 - l1. The double reference: (2 in + 1) 2^-53. */
#define C_KILN (6 * U + 5 * U * U)
static double c_torch(int64_t in) { return GAM(2) * (double)in + U; }
static double c_double(int64_t in) { return (2 * (double)in + 1) * UD; }

/* One term w_a w_b v of a bilinear sum, for a side whose weights err by ca, cb and whose
 * terms pass through at most j roundings (gj = gamma_j): |w^a w^b - wa wb| |v| + gj |w^a w^b v|. */
static double bil_term(double v, double wa, double wb, double ca, double cb, double gj) {
    return fabs(v) * (ca * wb + cb * wa + ca * cb + gj * (wa + ca) * (wb + cb));
}

/* Both axes' bilinear weights and "near" flags (lin_axis) for an H x W -> OH x OW resize. */
typedef struct bil_axes {
    double *wh, *ww;
    unsigned char *nh, *nw;
} bil_axes;

static void bil_axes_new(bil_axes *a, int64_t H, int64_t W, int64_t OH, int64_t OW, bool align) {
    a->wh = malloc(sizeof(double) * (size_t)(OH * H));
    a->ww = malloc(sizeof(double) * (size_t)(OW * W));
    a->nh = malloc((size_t)(OH * H));
    a->nw = malloc((size_t)(OW * W));
    lin_axis(H, OH, align, c_torch(H), a->wh, a->nh);
    lin_axis(W, OW, align, c_torch(W), a->ww, a->nw);
}

static void bil_axes_free(bil_axes *a) { free(a->wh), free(a->ww), free(a->nh), free(a->nw); }

/* Bilinear forward: 4 terms (2x2 taps) per output, each two products and three additions at
 * most (kiln: b0*x00 + b1*x01, then a0*r0 + a1*r1; PyTorch alike): gamma_5. */
static void eb_bil_fwd(eb *b, const double *x, int64_t P, int64_t H, int64_t W, int64_t OH, int64_t OW, bool align) {
    eb_init(b, P * OH * OW);
    bil_axes ax;
    bil_axes_new(&ax, H, W, OH, OW, align);
    const double *wh = ax.wh, *ww = ax.ww;
    const unsigned char *nh = ax.nh, *nw = ax.nw;
    for (int64_t p = 0, o = 0; p < P; p++)
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++, o++)
                for (int64_t h = 0; h < H; h++) {
                    if (!nh[oh * H + h]) continue;
                    for (int64_t w = 0; w < W; w++) {
                        if (!nw[ow * W + w]) continue;
                        double v = x[(p * H + h) * W + w], a = wh[oh * H + h], c = ww[ow * W + w];
                        b->ref[o] += a * c * v;
                        b->bk[o] += bil_term(v, a, c, C_KILN, C_KILN, GAM(5));
                        b->bt[o] += bil_term(v, a, c, c_torch(H), c_torch(W), GAM(5));
                        b->bd[o] += bil_term(v, a, c, c_double(H), c_double(W), GAMD(5));
                    }
                }
    bil_axes_free(&ax);
}

/* Bilinear backward: input (h, w) gathers w_h(oh) w_w(ow) gy from every output near it on both
 * axes; k = kh * kw terms, kh the outputs near h (doubled on the last row, where PyTorch adds
 * both taps' terms separately); each term two products and k - 1 additions: gamma_{k+1}. */
static void eb_bil_bwd(eb *b, const double *gy, int64_t P, int64_t H, int64_t W, int64_t OH, int64_t OW, bool align) {
    eb_init(b, P * H * W);
    bil_axes ax;
    bil_axes_new(&ax, H, W, OH, OW, align);
    const double *wh = ax.wh, *ww = ax.ww;
    const unsigned char *nh = ax.nh, *nw = ax.nw;
    for (int64_t p = 0, i = 0; p < P; p++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t w = 0; w < W; w++, i++) {
                int64_t kh = 0, kw = 0;
                for (int64_t oh = 0; oh < OH; oh++) kh += nh[oh * H + h];
                for (int64_t ow = 0; ow < OW; ow++) kw += nw[ow * W + w];
                int64_t k = kh * (h == H - 1 ? 2 : 1) * kw * (w == W - 1 ? 2 : 1);
                for (int64_t oh = 0; oh < OH; oh++) {
                    if (!nh[oh * H + h]) continue;
                    for (int64_t ow = 0; ow < OW; ow++) {
                        if (!nw[ow * W + w]) continue;
                        double v = gy[(p * OH + oh) * OW + ow], a = wh[oh * H + h], c = ww[ow * W + w];
                        b->ref[i] += a * c * v;
                        b->bk[i] += bil_term(v, a, c, C_KILN, C_KILN, GAM(k + 1));
                        b->bt[i] += bil_term(v, a, c, c_torch(H), c_torch(W), GAM(k + 1));
                        b->bd[i] += bil_term(v, a, c, c_double(H), c_double(W), GAMD(k + 1));
                    }
                }
            }
    bil_axes_free(&ax);
}

enum { K_MAX, K_AVG, K_GAP, K_NEAREST, K_BILINEAR };

/* Forward of kind `kind` over plane-contiguous x ([P][H][W] -> [P][OH][OW]). */
static void eb_forward(eb *b, int kind, const rp *r, bool align, const double *x, int64_t P, int64_t H, int64_t W,
                       int64_t OH, int64_t OW) {
    if (kind == K_MAX) {
        eb_exact(b, P * OH * OW);
        pool_user u = {.r = *r, .v = lv_planes(P, H, W), .OH = OH, .OW = OW};
        ref_max(&u, (double *const[]){(double *)x}, b->ref);
    } else if (kind == K_NEAREST) {
        eb_exact(b, P * OH * OW);
        up_user u = {.v = lv_planes(P, H, W), .OH = OH, .OW = OW, .mode = KILN_UPSAMPLE_NEAREST};
        ref_up(&u, (double *const[]){(double *)x}, b->ref);
    } else if (kind == K_AVG)
        eb_avg_fwd(b, x, P, H, W, r, OH, OW);
    else if (kind == K_GAP)
        eb_gap_fwd(b, x, P, H, W);
    else
        eb_bil_fwd(b, x, P, H, W, OH, OW, align);
}

/* Input gradient of kind `kind` for output gradient gy ([P][OH][OW] -> [P][H][W]); max_pool2d
 * takes its argmax indices (in-plane h*W + w) from idx. */
static void eb_backward(eb *b, int kind, const rp *r, bool align, const int32_t *idx, const double *gy, int64_t P,
                        int64_t H, int64_t W, int64_t OH, int64_t OW) {
    if (kind == K_MAX || kind == K_NEAREST) {
        int64_t no = P * OH * OW;
        int64_t *t = malloc(sizeof(int64_t) * (size_t)(no > 0 ? no : 1));
        for (int64_t o = 0; o < no; o++) {
            int64_t oh = o / OW % OH, ow = o % OW;
            t[o] = kind == K_MAX ? idx[o] : ref_nearest(oh, H, OH) * W + ref_nearest(ow, W, OW);
        }
        eb_gather_exact(b, gy, t, P, H, W, OH, OW);
        free(t);
    } else if (kind == K_AVG)
        eb_avg_bwd(b, gy, P, H, W, r, OH, OW);
    else if (kind == K_GAP)
        eb_gap_bwd(b, gy, P, H, W);
    else
        eb_bil_bwd(b, gy, P, H, W, OH, OW, align);
}

/* Largest |error| / bound seen by each kind of comparison (printed after each device). */
enum { VS_TORCH, VS_DOUBLE, TORCH_VS_DOUBLE };
static double worst_ratio[3];
static char worst_what[3][200];
static const char *const vs_name[3] = {"kiln vs PyTorch", "kiln vs double", "PyTorch vs double"};

/* Compares, element by element: VS_TORCH kiln with PyTorch within bk + bt (bit-exact where
 * `same`); VS_DOUBLE kiln with the double result within bk + bd; TORCH_VS_DOUBLE PyTorch with
 * the double result within bt + bd (checks the model of PyTorch's side). A bound of 0 asks for
 * equality; NaN and Inf must match exactly. Returns the largest |error| / bound. */
static double bcompare(const char *what, const float *kiln, const float *torch, const eb *b, int mode) {
    double worst = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < b->n; i++) {
        double g = mode == TORCH_VS_DOUBLE ? torch[i] : kiln[i];
        double r = mode == VS_TORCH ? torch[i] : b->ref[i];
        double bound = mode == VS_TORCH ? (b->same[i] ? 0 : b->bk[i] + b->bt[i])
                                        : (mode == VS_DOUBLE ? b->bk[i] : b->bt[i]) + b->bd[i];
        double e;
        if (g == r || (isnan(g) && isnan(r)))
            e = 0;
        else if (!isfinite(g) || !isfinite(r))
            e = INFINITY;
        else
            e = bound > 0 ? fabs(g - r) / bound : INFINITY;
        if (e > worst) worst = e;
        if (e > 1 && bad++ == 0)
            fprintf(stderr, "  %s (%s): element %lld: got %.9g, want %.9g, bound %.3g (|error|/bound %.3g)\n", what,
                    vs_name[mode], (long long)i, g, r, bound, e);
    }
    CHECK(bad == 0, "%s (%s): %lld of %lld elements outside the bound (worst |error|/bound %.3g)", what, vs_name[mode],
          (long long)bad, (long long)b->n, worst);
    if (worst > worst_ratio[mode]) {
        worst_ratio[mode] = worst;
        snprintf(worst_what[mode], sizeof worst_what[mode], "%s", what);
    }
    return worst;
}

/* The operand's values as contiguous planes [N*C][H][W] (the reference's view), in double. */
static double *planes_of(const operand *o, const lview *v) {
    int64_t n = v->N * v->C * v->H * v->W;
    double *x = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)), *p = x;
    for (int64_t a = 0; a < v->N; a++)
        for (int64_t c = 0; c < v->C; c++)
            for (int64_t h = 0; h < v->H; h++)
                for (int64_t w = 0; w < v->W; w++) *p++ = lget(o->based, v, a, c, h, w);
    return x;
}

/* Reads t back when it has the expected shape (a failed CHECK and NULL otherwise). */
static float *read_shaped(const char *what, kiln_tensor *t, int ndim, const int64_t *shape) {
    bool ok = shape_is(t, ndim, shape);
    CHECK(ok, "%s: no result or a shape other than expected", what);
    return ok ? h_read(t) : NULL;
}

/* Backward of y (made from o->t by the caller, kind `kind`) for a seed drawn here, against the
 * double reference of the input gradient with kiln's bound, in the base's layout: elements the
 * view does not reach must be exactly 0. Keeps the graph (o->t's view nodes serve the caller's
 * next backward) and clears the leaf's gradient again. */
static void check_backward(kiln_ctx *ctx, const char *what, operand *o, const lview *v, kiln_tensor *y, int kind,
                           const rp *r, bool align, const int32_t *idx, int64_t OH, int64_t OW) {
    char label[256];
    snprintf(label, sizeof label, "%s input gradient", what);
    CHECK(y != NULL, "%s: forward failed: %s", label, kiln_error_message(ctx));
    if (!y) return;
    int64_t P = v->N * v->C, no = P * OH * OW;
    CHECK(kiln_tensor_numel(y) == no, "%s: output has %lld elements, want %lld", label, (long long)kiln_tensor_numel(y),
          (long long)no);
    if (kiln_tensor_numel(y) != no) return;
    float *gf = malloc(sizeof(float) * (size_t)(no > 0 ? no : 1));
    double *gd = malloc(sizeof(double) * (size_t)(no > 0 ? no : 1));
    h_fill(gf, no, -1, 1);
    for (int64_t i = 0; i < no; i++) gd[i] = gf[i];
    kiln_tensor_clear_grad(o->leaf);
    kiln_tensor *seed = kiln_from_host(ctx, gf, KILN_F32, kiln_tensor_ndim(y), kiln_tensor_shape(y));
    kiln_status s = kiln_backward_ex(y, seed, true);
    CHECK(s == KILN_OK, "%s: backward: %s", label, kiln_error_message(ctx));
    kiln_tensor *g = s == KILN_OK ? kiln_tensor_grad(o->leaf) : NULL;
    CHECK(s != KILN_OK || g != NULL, "%s: no gradient", label);
    if (g && kiln_tensor_numel(g) == o->nbase) {
        eb vb, bb;
        eb_backward(&vb, kind, r, align, idx, gd, P, v->H, v->W, OH, OW);
        eb_exact(&bb, o->nbase);
        for (int64_t a = 0, i = 0; a < v->N; a++)
            for (int64_t c = 0; c < v->C; c++)
                for (int64_t h = 0; h < v->H; h++)
                    for (int64_t w = 0; w < v->W; w++, i++) {
                        int64_t j = v->off + a * v->sn + c * v->sc + h * v->sh + w * v->sw;
                        bb.ref[j] = vb.ref[i], bb.bk[j] = vb.bk[i], bb.bt[j] = vb.bt[i], bb.bd[j] = vb.bd[i];
                    }
        float *got = h_read(g);
        bcompare(label, got, NULL, &bb, VS_DOUBLE);
        free(got);
        eb_free(&vb), eb_free(&bb);
    } else if (g)
        CHECK(0, "%s: gradient has %lld elements", label, (long long)kiln_tensor_numel(g));
    kiln_tensor_clear_grad(o->leaf);
    free(gf), free(gd);
}

/* ---- the pooling table ----------------------------------------------------------------- */

#define V(n, ...)                                                                                                      \
    {                                                                                                                  \
        n, {__VA_ARGS__}, {                                                                                            \
            { 0 }                                                                                                      \
        }                                                                                                              \
    }
#define P(kh, kw, sh, sw, ph, pw, dh, dw, c)                                                                           \
    { {kh, kw}, {sh, sw}, {ph, pw}, {dh, dw}, c, false }

typedef struct pcase {
    const char *name;
    vspec x;
    kiln_pool2d_params p;
} pcase;

static const pcase pcases[] = {
    {"7x5 k3 s2 p1", V(4, 2, 3, 7, 5), P(3, 3, 2, 2, 1, 1, 1, 1, false)},
    {"1x1 k1", V(4, 1, 1, 1, 1), P(1, 1, 1, 1, 0, 0, 1, 1, false)},
    {"7x5 k2 s2, batch 3", V(4, 3, 2, 7, 5), P(2, 2, 2, 2, 0, 0, 1, 1, false)},
    {"9x8 k3 p1 dilation 2", V(4, 1, 2, 9, 8), P(3, 3, 1, 1, 1, 1, 2, 2, false)},
    {"8x7 k3 s2 p1 ceil", V(4, 2, 2, 8, 7), P(3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"11x13 k3x2 s3x2 p1 d2x3 ceil", V(4, 1, 3, 11, 13), P(3, 2, 3, 2, 1, 1, 2, 3, true)},
    {"unbatched 3x6x6 k2 s1", V(3, 3, 6, 6), P(2, 2, 1, 1, 0, 0, 1, 1, false)},
    {"5x7x11 k3 s2 p1", V(3, 5, 7, 11), P(3, 3, 2, 2, 1, 1, 1, 1, false)},
    {"transposed view k3 s2 p1 ceil", {4, {2, 3, 5, 7}, {{TF_T, {2, 3}}}}, P(3, 3, 2, 2, 1, 1, 1, 1, true)},
    {"sliced view k3 s2 p1",
     {4, {3, 4, 9, 11}, {{TF_S, {3, 1, 11, 2}}, {TF_S, {1, 0, 4, 2}}}},
     P(3, 3, 2, 2, 1, 1, 1, 1, false)},
    {"channels-last view k2x3 s1x2 p1", {4, {2, 6, 5, 3}, {{TF_P, {0, 3, 1, 2}}}}, P(2, 3, 1, 2, 1, 1, 1, 1, false)},
    {"5x5 k5 (whole plane)", V(4, 1, 2, 5, 5), P(5, 5, 1, 1, 0, 0, 1, 1, false)},
    {"5x6 k4x3 s1x2 p2x1 ceil", V(4, 1, 2, 5, 6), P(4, 3, 1, 2, 2, 1, 1, 1, true)},
    {"3x3 k2 s2 ceil (partial last window)", V(4, 1, 1, 3, 3), P(2, 2, 2, 2, 0, 0, 1, 1, true)},
    /* windows that do not overlap take the backward's tile path */
    {"9x11 k2 s3 p1 (gaps between windows)", V(4, 2, 2, 9, 11), P(2, 2, 3, 3, 1, 1, 1, 1, false)},
    {"10x9 k2x3 s3x4 p0x1 ceil", V(4, 1, 3, 10, 9), P(2, 3, 3, 4, 0, 1, 1, 1, true)},
    {"8x7 k2 s3 p1 dilation 2", V(4, 2, 1, 8, 7), P(2, 2, 3, 3, 1, 1, 2, 2, false)},
    {"transposed 7x5 k2 (uncovered last row)", {4, {3, 2, 5, 7}, {{TF_T, {2, 3}}}}, P(2, 2, 2, 2, 0, 0, 1, 1, false)},
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
                if (g2)
                    h_compare(w2, g2, ref, nout, 0, 0);
                else
                    CHECK(0, "%s: %s", w2, kiln_error_message(ctx));
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
            double *xd = planes_of(&o, &u.v);
            eb b;
            eb_avg_fwd(&b, xd, u.v.N * u.v.C, u.v.H, u.v.W, &u.r, u.OH, u.OW);
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
                bcompare(what, got, NULL, &b, VS_DOUBLE);
                free(got);
            }
            eb_free(&b);
            free(xd);
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
            double *xd = planes_of(&o, &u.v);
            eb b;
            eb_gap_fwd(&b, xd, u.v.N * u.v.C, u.v.H, u.v.W);
            kiln_tensor *y = kiln_global_avg_pool2d(ctx, o.t);
            char sb[64], what[160];
            snprintf(what, sizeof what, "global_avg_pool2d %s case %zu%s", kiln_tensor_shape_str(o.t, sb, sizeof sb),
                     ci, gen ? " (NaN/Inf)" : "");
            int64_t oshape[4];
            memcpy(oshape, o.hv.shape, sizeof oshape);
            oshape[o.hv.ndim - 2] = oshape[o.hv.ndim - 1] = 1;
            CHECK(shape_is(y, o.hv.ndim, oshape), "%s: output shape (%s)", what, kiln_error_message(ctx));
            if (shape_is(y, o.hv.ndim, oshape)) {
                float *got = h_read(y);
                bcompare(what, got, NULL, &b, VS_DOUBLE);
                free(got);
            }
            eb_free(&b);
            free(xd);
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
    {V(4, 2, 3, 4, 5), 8, 10, NE, false},
    {V(4, 2, 3, 4, 5), 7, 9, NE, false},
    {V(4, 1, 2, 7, 5), 3, 2, NE, false},
    {V(4, 1, 2, 4, 5), 4, 5, NE, false},
    {V(4, 1, 1, 14, 7), 20, 10, NE, false},
    {V(4, 1, 1, 3, 5), 13, 6, NE, false},
    {V(4, 1, 1, 1, 1), 3, 5, NE, false},
    {V(4, 3, 2, 11, 13), 29, 31, NE, false},
    {V(4, 2, 3, 4, 5), 8, 10, BI, false},
    {V(4, 2, 3, 4, 5), 7, 9, BI, false},
    {V(4, 1, 2, 7, 5), 3, 2, BI, false},
    {V(4, 1, 2, 4, 5), 4, 5, BI, false},
    {V(4, 1, 1, 3, 3), 17, 11, BI, false},
    {V(4, 2, 3, 4, 5), 7, 9, BI, true},
    {V(4, 1, 2, 7, 5), 3, 2, BI, true},
    {V(4, 1, 2, 7, 5), 1, 1, BI, true},
    {V(4, 1, 2, 1, 1), 3, 4, BI, true},
    {V(4, 1, 2, 1, 1), 3, 4, BI, false},
    {V(4, 1, 1, 5, 4), 1, 9, BI, false},
    {V(4, 3, 2, 11, 13), 29, 31, BI, false},
    {V(4, 1, 1, 13, 11), 5, 4, BI, true},
    {V(4, 1, 1, 13, 11), 5, 4, BI, false},
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
                if (uc->mode == NE)
                    h_compare(what, got, ref, nout, 0, 0);
                else
                    h_compare(what, got, ref, nout, 16 * U * max_abs(o.base, o.nbase), 0);
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
            /* the analytic backward in double, with kiln's bound (max: the reference's argmax) */
            int64_t nout = u.v.N * u.v.C * u.OH * u.OW;
            double *tmp = NULL;
            if (op == 0) {
                tmp = malloc(sizeof(double) * (size_t)(nout > 0 ? nout : 1));
                u.idx = malloc(sizeof(int32_t) * (size_t)(nout > 0 ? nout : 1));
                ref_max(&u, (double *const[]){o.based}, tmp);
            }
            kiln_tensor *y2 = op == 0 ? kiln_max_pool2d(ctx, o.t, &p, NULL) : kiln_avg_pool2d(ctx, o.t, &p);
            check_backward(ctx, what, &o, &u.v, y2, op == 0 ? K_MAX : K_AVG, &u.r, false, u.idx, u.OH, u.OW);
            free(tmp);
            free(u.idx);
            u.idx = NULL;
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
            check_backward(ctx, what, &o, &u.v, kiln_global_avg_pool2d(ctx, o.t), K_GAP, NULL, false, NULL, 1, 1);
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
            check_backward(ctx, what, &o, &u.v, kiln_upsample(ctx, o.t, uc->oh, uc->ow, uc->mode, uc->align),
                           uc->mode == NE ? K_NEAREST : K_BILINEAR, NULL, uc->align, NULL, uc->oh, uc->ow);
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
        gc_check(ctx, "max_pool2d, indices freed before backward", ref_max, &u, 1, &o.leaf, (double *const[]){o.based},
                 (const bool[]){true}, y, 1e-5, 1e-5);
    }
    free_operand(&o);
    kiln_scope_end(ctx);

    kiln_scope_begin(ctx);
    s = (vspec)V(4, 2, 3, 7, 6);
    if (make_operand(ctx, &s, G_UNIFORM, true, &o)) {
        float *g[2] = {NULL, NULL};
        for (int r = 0; r < 2; r++) {
            kiln_tensor_clear_grad(o.leaf);
            kiln_tensor *y = kiln_upsample(ctx, o.t, 23, 17, BI, false);
            kiln_tensor *seed = kiln_ones(ctx, 4, (int64_t[]){2, 3, 23, 17});
            CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "backward: %s", kiln_error_message(ctx));
            g[r] = kiln_tensor_grad(o.leaf) ? h_read(kiln_tensor_grad(o.leaf)) : NULL;
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
    kiln_tensor_set_requires_grad(xt, true);
    kiln_tensor *seed = kiln_from_host(ctx, gy, KILN_F32, 4, oshape);
    kiln_pool2d_params p = {.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}};
    kiln_tensor *y = kiln_max_pool2d(ctx, xt, &p, NULL);
    float *got = y ? h_read(y) : NULL;
    CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "cnn pool backward: %s", kiln_error_message(ctx));
    float *g = kiln_tensor_grad(xt) ? h_read(kiln_tensor_grad(xt)) : NULL;
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

/* ... and back (kiln's gradient of a channels-last leaf, compared in NCHW). */
static float *to_nchw(const float *y, const int64_t *s) {
    float *x = malloc(sizeof(float) * (size_t)h_numel(4, s));
    for (int64_t n = 0; n < s[0]; n++)
        for (int64_t c = 0; c < s[1]; c++)
            for (int64_t h = 0; h < s[2]; h++)
                for (int64_t w = 0; w < s[3]; w++)
                    x[((n * s[1] + c) * s[2] + h) * s[3] + w] = y[((n * s[2] + h) * s[3] + w) * s[1] + c];
    return x;
}

enum { GO_MAX, GO_AVG, GO_GAP, GO_UP };

/* Runs golden case `prefix` of kind `kind`, with the input contiguous (layout 0) or as a
 * channels-last view (layout 1, 4-D inputs only). Output and input gradient are compared
 * element by element with kiln's and PyTorch's bounds added (eb_*: derived from the terms each
 * element sums, in any order), and each against the double reference (kiln's bound; PyTorch's,
 * which checks the model of its side); max_pool2d's values and indices and nearest upsampling
 * are exact, and so is any gradient element made of at most two exact terms. */
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
    if (backward && (!gy || !gx)) return;
    if (kind == GO_MAX && !idx) return;
    int nd = x->ndim;
    int64_t H = x->shape[nd - 2], W = x->shape[nd - 1], P = H * W > 0 ? x->numel / (H * W) : 0;
    int64_t OH = y->shape[nd - 2], OW = y->shape[nd - 1];
    bool consistent =
        y->ndim == nd && y->numel == P * OH * OW && (!gy || gy->numel == y->numel) && (!gx || gx->numel == x->numel);
    CHECK(consistent, "golden %s: inconsistent shapes", prefix);
    if (!consistent) return;
    kiln_scope_begin(ctx);
    kiln_tensor *leaf, *xt;
    float *nhwc = NULL;
    if (layout == 0) {
        leaf = xt = golden_upload(ctx, x);
    } else {
        nhwc = to_nhwc(x->f, x->shape);
        int64_t s[4] = {x->shape[0], x->shape[2], x->shape[3], x->shape[1]};
        leaf = kiln_from_host(ctx, nhwc, KILN_F32, 4, s);
        if (backward) kiln_tensor_set_requires_grad(leaf, true);
        xt = kiln_permute(ctx, leaf, (const int[]){0, 3, 1, 2});
    }
    if (backward && layout == 0) kiln_tensor_set_requires_grad(leaf, true);
    kiln_tensor *out = NULL, *ind = NULL;
    int ek = K_MAX;
    rp r = {0};
    bool align = false;
    switch (kind) {
    case GO_MAX: {
        kiln_pool2d_params p = P(pv[0], pv[1], pv[2], pv[3], pv[4], pv[5], pv[6], pv[7], pv[8] != 0);
        out = kiln_max_pool2d(ctx, xt, &p, &ind);
        r = resolve(&p);
        break;
    }
    case GO_AVG: {
        kiln_pool2d_params p = P(pv[0], pv[1], pv[2], pv[3], pv[4], pv[5], 1, 1, pv[6] != 0);
        p.count_include_pad = pv[7] != 0;
        out = kiln_avg_pool2d(ctx, xt, &p);
        r = resolve(&p), ek = K_AVG;
        break;
    }
    case GO_GAP:
        out = kiln_global_avg_pool2d(ctx, xt);
        ek = K_GAP;
        break;
    case GO_UP:
        out = kiln_upsample(ctx, xt, pv[0], pv[1], pv[2], pv[3] != 0);
        ek = pv[2] == NE ? K_NEAREST : K_BILINEAR, align = pv[3] != 0;
        break;
    }
    /* the exact results and the bounds, from the golden inputs (PyTorch's argmax for max) */
    double *xd = malloc(sizeof(double) * (size_t)(x->numel > 0 ? x->numel : 1));
    for (int64_t i = 0; i < x->numel; i++) xd[i] = x->f[i];
    eb fb, bb = {0};
    eb_forward(&fb, ek, &r, align, xd, P, H, W, OH, OW);
    if (backward) {
        double *gd = malloc(sizeof(double) * (size_t)(gy->numel > 0 ? gy->numel : 1));
        for (int64_t i = 0; i < gy->numel; i++) gd[i] = gy->f[i];
        eb_backward(&bb, ek, &r, align, idx ? idx->i : NULL, gd, P, H, W, OH, OW);
        free(gd);
    }
    snprintf(what, sizeof what, "golden %s%s", prefix, layout ? " (channels-last view)" : "");
    CHECK(out != NULL, "%s: %s", what, kiln_error_message(ctx));
    float *got = out ? read_shaped(what, out, y->ndim, y->shape) : NULL;
    if (got) {
        bcompare(what, got, y->f, &fb, VS_TORCH);
        bcompare(what, got, NULL, &fb, VS_DOUBLE);
    }
    if (layout == 0) bcompare(what, NULL, y->f, &fb, TORCH_VS_DOUBLE);
    free(got);
    if (idx && ind) {
        int32_t *gi = read_i32(ind);
        char w2[200];
        snprintf(w2, sizeof w2, "%s indices", what);
        if (kiln_tensor_numel(ind) == idx->numel)
            compare_i32(w2, gi, idx->i, idx->numel);
        else
            CHECK(0, "%s: count", w2);
        free(gi);
    }
    if (out && backward) {
        char w2[200];
        snprintf(w2, sizeof w2, "%s input gradient", what);
        kiln_tensor *seed = golden_upload(ctx, gy);
        kiln_status s = kiln_backward_ex(out, seed, false);
        CHECK(s == KILN_OK, "%s backward: %s", what, kiln_error_message(ctx));
        kiln_tensor *g = kiln_tensor_grad(leaf);
        float *gg = g ? read_shaped(w2, g, kiln_tensor_ndim(leaf), kiln_tensor_shape(leaf)) : NULL;
        if (gg && layout == 1) {
            float *t = to_nchw(gg, x->shape);
            free(gg);
            gg = t;
        }
        if (gg) {
            bcompare(w2, gg, gx->f, &bb, VS_TORCH);
            bcompare(w2, gg, NULL, &bb, VS_DOUBLE);
        } else
            CHECK(g != NULL, "%s: no gradient", w2);
        if (layout == 0) bcompare(w2, NULL, gx->f, &bb, TORCH_VS_DOUBLE);
        free(gg);
    }
    eb_free(&fb);
    if (backward) eb_free(&bb);
    free(xd);
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
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_tensor *x = kiln_ones(ctx, 4, (int64_t[]){1, 1, 5, 5});
    kiln_pool2d_params p3 = {.kernel = {3, 3}, .stride = {3, 3}, .dilation = {1, 1}};
    kiln_tensor *ind = (kiln_tensor *)&ind; /* must be reset to NULL on failure */

    expect_error(ctx, kiln_max_pool2d(ctx, NULL, &p3, &ind), KILN_ERR_NULL, "max_pool2d(NULL)", "kiln_max_pool2d",
                 NULL);
    CHECK(ind == NULL, "indices not reset on failure");
    expect_error(ctx, kiln_avg_pool2d(ctx, NULL, &p3), KILN_ERR_NULL, "avg_pool2d(NULL)", "kiln_avg_pool2d", NULL);
    expect_error(ctx, kiln_global_avg_pool2d(ctx, NULL), KILN_ERR_NULL, "global(NULL)", "kiln_global_avg_pool2d", NULL);
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

    kiln_pool2d_params p = {.kernel = {0, 2}, .stride = {0, 2}, .dilation = {1, 1}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_INVALID_ARGUMENT, "kernel 0", "kernel [0, 2]",
                 "[1, 1, 5, 5]");
    /* options are literal: stride 0 and dilation 0 are errors (not "the kernel", "1") that
     * name the defaults function, which gives torch's values */
    p = (kiln_pool2d_params){.kernel = {2, 2}, .dilation = {1, 1}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_INVALID_ARGUMENT, "stride 0", "stride [0, 0]",
                 "start from kiln_pool2d_defaults(kh, kw)");
    p = (kiln_pool2d_params){.kernel = {2, 2}, .stride = {2, 2}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_INVALID_ARGUMENT, "dilation 0", "dilation [0, 0]",
                 "start from kiln_pool2d_defaults(kh, kw)");
    p = kiln_pool2d_defaults(3, 2);
    CHECK(p.kernel[0] == 3 && p.kernel[1] == 2 && p.stride[0] == 3 && p.stride[1] == 2 && p.padding[0] == 0 &&
              p.padding[1] == 0 && p.dilation[0] == 1 && p.dilation[1] == 1 && !p.ceil_mode && p.count_include_pad,
          "kiln_pool2d_defaults is torch's");
    p = (kiln_pool2d_params){.kernel = {2, 2}, .stride = {-1, 1}, .dilation = {1, 1}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_INVALID_ARGUMENT, "negative stride", "stride [-1, 1]",
                 "kiln_avg_pool2d");
    p = (kiln_pool2d_params){.kernel = {2, 2}, .padding = {0, -1}, .stride = {2, 2}, .dilation = {1, 1}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_INVALID_ARGUMENT, "negative padding",
                 "padding [0, -1]", NULL);
    p = (kiln_pool2d_params){.kernel = {3, 3}, .padding = {2, 1}, .stride = {3, 3}, .dilation = {1, 1}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_INVALID_ARGUMENT, "padding > kernel/2",
                 "padding [2, 1]", "half the kernel");
    p = (kiln_pool2d_params){.kernel = {2, 5}, .padding = {1, 3}, .stride = {2, 5}, .dilation = {1, 1}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_INVALID_ARGUMENT, "avg padding > kernel/2", "kernel [2, 5]",
                 "[1, 1, 5, 5]");
    p = (kiln_pool2d_params){.kernel = {3, 3}, .dilation = {2, 2}, .stride = {3, 3}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_INVALID_ARGUMENT, "avg dilation", "dilation [2, 2]",
                 "kiln_avg_pool2d");
    p = (kiln_pool2d_params){.kernel = {3, 3}, .dilation = {3, 1}, .stride = {3, 3}};
    expect_error(ctx, kiln_max_pool2d(ctx, x, &p, NULL), KILN_ERR_SHAPE, "output too small", "[1, 1, 5, 5]", "0x1");
    p = (kiln_pool2d_params){.kernel = {6, 6}, .stride = {6, 6}, .dilation = {1, 1}};
    expect_error(ctx, kiln_avg_pool2d(ctx, x, &p), KILN_ERR_SHAPE, "kernel larger than input", "kernel [6, 6]", "0x0");

    expect_error(ctx, kiln_upsample(ctx, x, 0, 3, NE, false), KILN_ERR_INVALID_ARGUMENT, "upsample to 0",
                 "kiln_upsample", "0x3");
    expect_error(ctx, kiln_upsample(ctx, x, 3, 3, (kiln_upsample_mode)7, false), KILN_ERR_INVALID_ARGUMENT,
                 "upsample mode 7", "mode 7", "[1, 1, 5, 5]");
    expect_error(ctx, kiln_upsample(ctx, x, 3, 3, NE, true), KILN_ERR_INVALID_ARGUMENT, "nearest align_corners",
                 "align_corners", "[1, 1, 5, 5]");

    /* empty batch: empty outputs, no error (as torch) */
    kiln_tensor *e = kiln_empty(ctx, KILN_F32, 4, (int64_t[]){0, 3, 7, 5});
    kiln_pool2d_params p2 = {.kernel = {2, 2}, .stride = {2, 2}, .dilation = {1, 1}};
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
    CHECK(kiln_ctx_num_tensors(ctx) == before, "tensors leaked by the error paths: %lld before, %lld after",
          (long long)before, (long long)kiln_ctx_num_tensors(ctx));

    /* a whole training-like step in a scope leaves nothing behind */
    before = kiln_ctx_num_tensors(ctx);
    kiln_tensor *w = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){2, 3, 9, 8});
    kiln_tensor_set_requires_grad(w, true);
    kiln_scope_begin(ctx);
    kiln_pool2d_params pm = {.kernel = {3, 3}, .stride = {2, 2}, .padding = {1, 1}, .dilation = {1, 1}};
    kiln_tensor *i2 = NULL;
    kiln_tensor *a = kiln_max_pool2d(ctx, w, &pm, &i2);
    kiln_tensor *b = kiln_avg_pool2d(ctx, a, &pm);
    kiln_tensor *c = kiln_upsample(ctx, b, 5, 7, BI, false);
    kiln_tensor *d = kiln_upsample(ctx, c, 9, 8, NE, false);
    kiln_tensor *gsum = kiln_sum(ctx, kiln_global_avg_pool2d(ctx, d), 0, NULL, false);
    CHECK(gsum && kiln_backward(gsum) == KILN_OK, "chain backward: %s", kiln_error_message(ctx));
    kiln_scope_end(ctx);
    CHECK(kiln_tensor_grad(w) != NULL, "chain: no gradient");
    kiln_tensor_free(w);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "tensors leaked by a pooling step: %lld before, %lld after",
          (long long)before, (long long)kiln_ctx_num_tensors(ctx));
    /* no grad mode: no node, no indices kept */
    before = kiln_ctx_num_tensors(ctx);
    kiln_tensor *v = kiln_ones(ctx, 4, (int64_t[]){1, 2, 4, 4});
    kiln_tensor_set_requires_grad(v, true);
    bool prev = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *nv = kiln_max_pool2d(ctx, v, &p2, NULL);
    CHECK(nv && !kiln_tensor_requires_grad(nv), "no_grad output requires grad");
    kiln_ctx_set_grad_enabled(ctx, prev);
    kiln_tensor_free(nv);
    kiln_tensor_free(v);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "no_grad leak");
    kiln_error_clear(ctx);
}

/* ---- driver --------------------------------------------------------------------------------- */

static void run(kiln_ctx *ctx) {
    memset(worst_ratio, 0, sizeof worst_ratio);
    memset(worst_what, 0, sizeof worst_what);
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
    for (int m = 0; m < 3; m++)
        fprintf(stderr, "largest |error|/bound, %s: %.3g (%s)\n", vs_name[m], worst_ratio[m], worst_what[m]);
}

int main(void) {
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
