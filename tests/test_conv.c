/* tests/test_conv.c - kiln_conv2d and kiln_conv_transpose2d: forward against a plain-C
 * double reference over a table of shapes and parameters (odd sizes, strides, padding,
 * dilation, groups, depthwise, batch 1 and 3, input and weight views, NaN/Inf), the
 * gradients of input, weight and bias against finite differences, the same again with the
 * column buffer forced into small chunks, PyTorch's results (tests/golden/conv.safetensors),
 * determinism, the error paths and leaks.
 *
 * Tolerances. u = 2^-24; gamma_d = d u / (1 - d u) bounds the relative error of a float sum
 * whose terms each meet at most d - 1 roundings, in any order of summation (Higham,
 * Accuracy and Stability of Numerical Algorithms, 2nd ed., 3.1 and 4.4; the product of two
 * floats adds one rounding, hence d = terms + 1 or more). So |computed - exact| <=
 * gamma_d * mag, mag = the sum of |terms|.
 *   Forward: the reference also returns mag per element (|bias| + sum |x w|). conv2d sums
 *   cg*kh*kw products in one GEMM and adds the bias after; conv_transpose2d sums cg' (its
 *   output channels per group) products per column entry, then at most kh*kw entries and
 *   the bias in col2im. d = (input channels / groups)*kh*kw + 2 covers both. Checked per
 *   element (plus FLT_MIN for devices that flush denormals): a wrong tap or a wrong pixel
 *   is off by a whole product and fails.
 *   Gradients (gradcheck.h): each is a sum of at most 126 products in the checked shapes
 *   (dW of "groups 2, batch 3" sums over 3 images x 6 x 7 pixels; dX sums cout/groups x
 *   taps <= 50), so its error is at most gamma_127 ~ 7.6e-6 of the sum of |terms|, which
 *   for these random inputs is about sqrt(126) ~ 11 times the gradient's largest magnitude:
 *   atol 1e-4 of max|grad|, rtol 1e-4. The finite differences are exact to ~1e-10.
 *   PyTorch (tests/golden/gen_conv.py): PyTorch computes in float64 and stores the result
 *   rounded to float (off by u |ref|), plus the magnitude of every element (the same
 *   computation on absolute values). kiln's float32 result must be within gamma_d * mag +
 *   u |ref| with d = terms + 2 per element: y as above; d input cout/groups * taps + 2;
 *   d weight 2 N*HW + 2 (the GEMM's sum over images and pixels, plus one addition per chunk
 *   when the batch is split); d bias N*HW + 2.
 */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include <float.h>

#include "golden.h"
#include "gradcheck.h"
#include "kiln_test_hooks.h"

#define U_F32 0x1p-24

/* ---- cases ------------------------------------------------------------------------- */

enum { V_NONE, V_TRANSPOSE_HW, V_SLICE_W, V_CHANNELS_LAST, V_BATCH_SLICE };

typedef struct cspec {
    const char *name;
    bool transpose;
    int n, c, h, w; /* input */
    int cout;       /* output channels */
    int kh, kw;
    kiln_conv2d_params p;
    bool bias;
    int xview;     /* how the input is stored */
    bool wview;    /* weight stored with kh and kw swapped, read through a transpose */
    bool specials; /* a NaN and an Inf in the input */
} cspec;

// clang-format off
#define P(s0, s1, p0, p1, d0, d1, g, o0, o1) {{s0, s1}, {p0, p1}, {d0, d1}, g, {o0, o1}}
// clang-format on
#define P1 P(1, 1, 0, 0, 1, 1, 1, 0, 0)

static const cspec cases[] = {
    /* conv2d */
    {"basic 3x3", false, 2, 3, 8, 8, 4, 3, 3, P1, true, V_NONE, false, false},
    {"odd 5x7, kernel 3x2", false, 1, 2, 5, 7, 3, 3, 2, P1, true, V_NONE, false, false},
    {"stride 2 pad 1, batch 3", false, 3, 3, 9, 11, 5, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 0, 0), true, V_NONE, false, false},
    {"pad 2 dilation 2", false, 2, 2, 7, 6, 3, 3, 3, P(1, 1, 2, 2, 2, 2, 1, 0, 0), true, V_NONE, false, false},
    {"mixed stride/pad/dilation, groups 2", false, 1, 4, 10, 9, 6, 3, 2, P(2, 1, 1, 2, 1, 2, 2, 0, 0), true, V_NONE,
     false, false},
    {"groups 2, batch 3", false, 3, 4, 6, 7, 6, 3, 3, P(1, 1, 1, 1, 1, 1, 2, 0, 0), true, V_NONE, false, false},
    {"depthwise", false, 2, 5, 7, 5, 5, 3, 3, P(1, 1, 1, 1, 1, 1, 5, 0, 0), false, V_NONE, false, false},
    {"depthwise x2, batch 1", false, 1, 3, 6, 6, 6, 3, 3, P(1, 1, 0, 0, 1, 1, 3, 0, 0), true, V_NONE, false, false},
    {"1x1", false, 3, 5, 4, 6, 7, 1, 1, P1, false, V_NONE, false, false},
    {"kernel covers the input", false, 2, 3, 5, 5, 2, 5, 5, P1, true, V_NONE, false, false},
    {"stride larger than kernel", false, 2, 2, 11, 13, 3, 2, 2, P(3, 3, 0, 0, 1, 1, 1, 0, 0), true, V_NONE, false,
     false},
    {"transposed-view input", false, 3, 3, 7, 5, 4, 3, 3, P(1, 1, 1, 1, 1, 1, 1, 0, 0), true, V_TRANSPOSE_HW, false,
     false},
    {"sliced input, stride 2", false, 2, 2, 6, 9, 3, 2, 3, P(2, 2, 0, 0, 1, 1, 1, 0, 0), false, V_SLICE_W, false,
     false},
    {"channels-last input, groups 2", false, 2, 4, 5, 6, 4, 3, 3, P(1, 1, 1, 1, 1, 1, 2, 0, 0), true, V_CHANNELS_LAST,
     false, false},
    {"batch slice, weight view, no bias", false, 2, 3, 5, 7, 2, 2, 3, P(1, 2, 1, 0, 2, 1, 1, 0, 0), false,
     V_BATCH_SLICE, true, false},
    {"weight view with bias", false, 2, 2, 6, 5, 4, 3, 2, P(1, 1, 1, 1, 1, 1, 2, 0, 0), true, V_NONE, true, false},
    {"NaN and Inf", false, 2, 2, 6, 7, 3, 3, 3, P(1, 1, 1, 1, 1, 1, 1, 0, 0), true, V_NONE, false, true},
    {"many channels", false, 2, 16, 12, 12, 24, 3, 3, P(1, 1, 1, 1, 1, 1, 1, 0, 0), true, V_NONE, false, false},
    /* more than 32 taps per output channel: the weight gradient is a GEMM over transposed
     * columns; 63 and 54 are padded to 64 where the device's GEMM tile is 64, 40 is not */
    {"63 taps (padded rows)", false, 2, 7, 5, 6, 3, 3, 3, P(1, 1, 1, 1, 1, 1, 1, 0, 0), true, V_NONE, false, false},
    {"groups 2, 54 taps (padded rows)", false, 2, 12, 5, 4, 4, 3, 3, P(1, 1, 1, 1, 1, 1, 2, 0, 0), true, V_SLICE_W,
     false, false},
    {"40 taps, stride 2", false, 3, 5, 7, 9, 3, 2, 4, P(2, 1, 0, 1, 1, 1, 1, 0, 0), true, V_NONE, false, false},
    /* conv_transpose2d */
    {"T basic 3x3", true, 2, 3, 5, 5, 4, 3, 3, P1, true, V_NONE, false, false},
    {"T stride 2 pad 1 output_padding 1, batch 3", true, 3, 4, 4, 5, 3, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 1, 1), true,
     V_NONE, false, false},
    {"T odd kernel 3x2, mixed params", true, 1, 2, 5, 7, 3, 3, 2, P(2, 1, 1, 0, 1, 2, 1, 1, 0), true, V_NONE, false,
     false},
    {"T groups 2 stride 2", true, 2, 4, 5, 4, 6, 3, 3, P(2, 2, 0, 0, 1, 1, 2, 0, 0), false, V_NONE, false, false},
    {"T depthwise", true, 2, 4, 6, 5, 4, 3, 3, P(1, 1, 1, 1, 1, 1, 4, 0, 0), true, V_NONE, false, false},
    {"T dilation 2 output_padding 1 (>= stride)", true, 1, 3, 4, 4, 2, 3, 3, P(1, 1, 0, 0, 2, 2, 1, 1, 1), true, V_NONE,
     false, false},
    {"T stride 3 kernel 2 (gaps)", true, 2, 2, 3, 4, 3, 2, 2, P(3, 3, 0, 0, 1, 1, 1, 0, 0), true, V_NONE, false, false},
    {"T pad 2, transposed-view input", true, 2, 3, 5, 6, 2, 3, 3, P(1, 1, 2, 1, 1, 1, 1, 0, 0), true, V_TRANSPOSE_HW,
     false, false},
    {"T channels-last, weight view, groups 2", true, 3, 4, 4, 3, 2, 2, 3, P(2, 1, 0, 1, 1, 1, 2, 1, 0), true,
     V_CHANNELS_LAST, true, false},
    {"T NaN and Inf", true, 2, 2, 4, 5, 3, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 0, 0), true, V_NONE, false, true},
    {"T many channels", true, 2, 24, 6, 6, 16, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 1, 1), true, V_NONE, false, false},
    {"T 63 taps (padded rows)", true, 2, 3, 4, 5, 7, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 1, 0), true, V_NONE, false, false},
    /* one image without bias: the forward GEMM writes the output in place */
    {"batch 1, no bias, groups 2", false, 1, 4, 7, 6, 4, 3, 3, P(1, 1, 1, 1, 1, 1, 2, 0, 0), false, V_NONE, false,
     false},
    {"T batch 1, no bias", true, 1, 3, 4, 5, 2, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 1, 0), false, V_NONE, false, false},
};
#define NCASES (sizeof cases / sizeof cases[0])

static void out_size(const cspec *s, int *ho, int *wo) {
    int in[2] = {s->h, s->w}, k[2] = {s->kh, s->kw}, o[2];
    for (int d = 0; d < 2; d++) {
        int span = s->p.dilation[d] * (k[d] - 1) + 1;
        o[d] = s->transpose ? (in[d] - 1) * s->p.stride[d] - 2 * s->p.padding[d] + span + s->p.output_padding[d]
                            : (in[d] + 2 * s->p.padding[d] - span) / s->p.stride[d] + 1;
    }
    *ho = o[0];
    *wo = o[1];
}

static void wshape(const cspec *s, int64_t *ws) {
    ws[0] = s->transpose ? s->c : s->cout;
    ws[1] = s->transpose ? s->cout / s->p.groups : s->c / s->p.groups;
    ws[2] = s->kh;
    ws[3] = s->kw;
}

/* ---- the reference ------------------------------------------------------------------ */

/* y (and mag = |bias| + sum |terms| when not NULL) from row-major x, w, b (b may be NULL). */
static void reference(const cspec *s, const double *x, const double *w, const double *b, double *y, double *mag) {
    int ho, wo, G = s->p.groups;
    out_size(s, &ho, &wo);
    int sh = s->p.stride[0], sw = s->p.stride[1], ph = s->p.padding[0], pw = s->p.padding[1];
    int dh = s->p.dilation[0], dw = s->p.dilation[1];
    int64_t ny = (int64_t)s->n * s->cout * ho * wo;
    for (int64_t i = 0; i < ny; i++) {
        int co = (int)(i / ((int64_t)ho * wo) % s->cout);
        y[i] = b ? b[co] : 0;
        if (mag) mag[i] = b ? fabs(b[co]) : 0;
    }
    if (!s->transpose) {
        int cg = s->c / G, mg = s->cout / G;
        for (int n = 0; n < s->n; n++)
            for (int co = 0; co < s->cout; co++)
                for (int oh = 0; oh < ho; oh++)
                    for (int ow = 0; ow < wo; ow++) {
                        int64_t yi = (((int64_t)n * s->cout + co) * ho + oh) * wo + ow;
                        int gi = co / mg;
                        for (int ci = 0; ci < cg; ci++)
                            for (int ki = 0; ki < s->kh; ki++)
                                for (int kj = 0; kj < s->kw; kj++) {
                                    int ih = oh * sh - ph + ki * dh, iw = ow * sw - pw + kj * dw;
                                    if (ih < 0 || ih >= s->h || iw < 0 || iw >= s->w) continue;
                                    double t = x[(((int64_t)n * s->c + gi * cg + ci) * s->h + ih) * s->w + iw] *
                                               w[(((int64_t)co * cg + ci) * s->kh + ki) * s->kw + kj];
                                    y[yi] += t;
                                    if (mag) mag[yi] += fabs(t);
                                }
                    }
    } else {
        int cg = s->c / G, og = s->cout / G;
        for (int n = 0; n < s->n; n++)
            for (int ci = 0; ci < s->c; ci++)
                for (int ih = 0; ih < s->h; ih++)
                    for (int iw = 0; iw < s->w; iw++) {
                        double xv = x[(((int64_t)n * s->c + ci) * s->h + ih) * s->w + iw];
                        int gi = ci / cg;
                        for (int ol = 0; ol < og; ol++)
                            for (int ki = 0; ki < s->kh; ki++)
                                for (int kj = 0; kj < s->kw; kj++) {
                                    int oh = ih * sh - ph + ki * dh, ow = iw * sw - pw + kj * dw;
                                    if (oh < 0 || oh >= ho || ow < 0 || ow >= wo) continue;
                                    int co = gi * og + ol;
                                    double t = xv * w[(((int64_t)ci * og + ol) * s->kh + ki) * s->kw + kj];
                                    int64_t yi = (((int64_t)n * s->cout + co) * ho + oh) * wo + ow;
                                    y[yi] += t;
                                    if (mag) mag[yi] += fabs(t);
                                }
                    }
    }
}

typedef struct gc_user {
    const cspec *s;
} gc_user;

static void gc_ref(void *user, double *const *in, double *out) {
    const cspec *s = ((gc_user *)user)->s;
    reference(s, in[0], in[1], s->bias ? in[2] : NULL, out, NULL);
}

/* |got - ref| <= gamma_d * mag elementwise (NaN and Inf exactly). */
static void compare_bound(const char *what, const float *got, const double *ref, const double *mag, int64_t n, int d) {
    double gamma = d * U_F32 / (1 - d * U_F32), worst = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], r = ref[i], e;
        if (g == r)
            e = 0;
        else if (isnan(r) || isnan(g) || isinf(r) || isinf(g))
            e = (isnan(r) && isnan(g)) ? 0 : INFINITY;
        else
            e = fabs(g - r) / (gamma * mag[i] + FLT_MIN);
        if (e > worst) worst = e;
        if (e > 1 && bad++ == 0)
            fprintf(stderr, "  %s: element %lld: got %.9g, reference %.9g (bound %.3g)\n", what, (long long)i, g, r,
                    gamma * mag[i]);
    }
    CHECK(bad == 0, "%s: %lld of %lld elements outside gamma_%d * mag (worst %.3g of the bound)", what, (long long)bad,
          (long long)n, d, worst);
}

/* ---- operands ------------------------------------------------------------------------ */

/* A kiln view with logical NCHW shape `sh` stored as `view` says; the logical row-major
 * values (read through the harness's own view model) go to logical and dlog. */
/* The shape bs of the tensor that input view `view` of shape sh is taken from. */
static void view_base(int view, const int64_t *sh, int64_t *bs) {
    for (int d = 0; d < 4; d++) bs[d] = sh[d];
    switch (view) {
    case V_TRANSPOSE_HW: bs[2] = sh[3], bs[3] = sh[2]; break;
    case V_SLICE_W: bs[3] = 2 * sh[3] + 1; break;
    case V_CHANNELS_LAST: bs[1] = sh[2], bs[2] = sh[3], bs[3] = sh[1]; break;
    case V_BATCH_SLICE: bs[0] = sh[0] + 2; break;
    }
}

/* Input view `view` of shape sh of t (shape view_base's; a new tensor, or t itself for
 * V_NONE; t stays the caller's). */
static kiln_tensor *view_of(kiln_ctx *ctx, kiln_tensor *t, int view, const int64_t *sh) {
    switch (view) {
    case V_TRANSPOSE_HW: return kiln_transpose(ctx, t, 2, 3);
    case V_SLICE_W: return kiln_slice(ctx, t, 3, 1, 2 * sh[3] + 1, 2);
    case V_CHANNELS_LAST: return kiln_permute(ctx, t, (const int[]){0, 3, 1, 2});
    case V_BATCH_SLICE: return kiln_slice(ctx, t, 0, 1, sh[0] + 1, 1);
    }
    return t;
}

static kiln_tensor *make_input(kiln_ctx *ctx, int view, const int64_t *sh, bool specials, float *logical,
                               double *dlog) {
    int64_t bs[4];
    view_base(view, sh, bs);
    h_view v = h_contig(4, bs);
    switch (view) {
    case V_TRANSPOSE_HW:
        v.shape[2] = sh[2], v.shape[3] = sh[3];
        v.strides[2] = 1, v.strides[3] = sh[2];
        break;
    case V_SLICE_W: v.offset = 1, v.shape[3] = sh[3], v.strides[3] = 2; break;
    case V_CHANNELS_LAST:
        v.shape[1] = sh[1], v.shape[2] = sh[2], v.shape[3] = sh[3];
        v.strides[1] = 1, v.strides[2] = sh[3] * sh[1], v.strides[3] = sh[1];
        break;
    case V_BATCH_SLICE: v.offset = v.strides[0], v.shape[0] = sh[0]; break;
    }
    int64_t nb = h_numel(4, bs), n = h_numel(4, sh);
    float *base = malloc(sizeof(float) * (size_t)nb);
    h_fill(base, nb, -1, 1);
    if (specials) { /* a NaN and an Inf at two logical positions */
        int64_t pos[2] = {n / 3, 2 * n / 3};
        float val[2] = {NAN, INFINITY};
        for (int k = 0; k < 2; k++) {
            int64_t rem = pos[k], off = v.offset;
            for (int d = 3; d >= 0; d--) {
                off += rem % v.shape[d] * v.strides[d];
                rem /= v.shape[d];
            }
            base[off] = val[k];
        }
    }
    kiln_tensor *t = kiln_from_host(ctx, base, KILN_F32, 4, bs), *r = t ? view_of(ctx, t, view, sh) : NULL;
    if (r != t) kiln_tensor_free(t);
    for (int64_t i = 0; i < n; i++) {
        logical[i] = (float)h_at(base, &v, i);
        dlog[i] = logical[i];
    }
    free(base);
    CHECK(r != NULL, "making an input: %s", kiln_error_message(ctx));
    return r;
}

/* The weight [ws], contiguous or stored [ws0, ws1, kw, kh] and transposed back. */
static kiln_tensor *make_weight(kiln_ctx *ctx, const int64_t *ws, bool view, float scale, float *logical,
                                double *dlog) {
    int64_t n = h_numel(4, ws);
    float *base = calloc((size_t)n, sizeof(float));
    h_fill(base, n, -scale, scale);
    kiln_tensor *t;
    if (!view) {
        t = kiln_from_host(ctx, base, KILN_F32, 4, ws);
        memcpy(logical, base, sizeof(float) * (size_t)n);
    } else {
        int64_t bs[4] = {ws[0], ws[1], ws[3], ws[2]};
        kiln_tensor *b = kiln_from_host(ctx, base, KILN_F32, 4, bs);
        t = kiln_transpose(ctx, b, 2, 3);
        kiln_tensor_free(b);
        h_view v = h_contig(4, bs);
        v.shape[2] = ws[2], v.shape[3] = ws[3];
        v.strides[2] = 1, v.strides[3] = ws[2];
        for (int64_t i = 0; i < n; i++) logical[i] = (float)h_at(base, &v, i);
    }
    for (int64_t i = 0; i < n; i++) dlog[i] = logical[i];
    free(base);
    return t;
}

static kiln_tensor *run_op(kiln_ctx *ctx, const cspec *s, kiln_tensor *x, kiln_tensor *w, kiln_tensor *b) {
    return s->transpose ? kiln_conv_transpose2d(ctx, x, w, b, &s->p) : kiln_conv2d(ctx, x, w, b, &s->p);
}

/* ---- forward and gradients over the table -------------------------------------------- */

/* Which GEMMs the current pass uses (test_device): "" for the device's own choice. */
static const char *g_gemm = "";

/* Forward against the reference; with grads, the gradients of the inputs in gmask (bit 0
 * input, 1 weight, 2 bias) against finite differences, the others not requiring grad. */
static void run_case(kiln_ctx *ctx, const cspec *s, const char *tag, bool grads, int gmask) {
    char what[256];
    snprintf(what, sizeof what, "%s %s%s%s", s->transpose ? "kiln_conv_transpose2d" : "kiln_conv2d", s->name, tag,
             g_gemm);
    kiln_scope_begin(ctx);
    int ho, wo;
    out_size(s, &ho, &wo);
    int64_t xs[4] = {s->n, s->c, s->h, s->w}, ws[4], ys[4] = {s->n, s->cout, ho, wo};
    wshape(s, ws);
    int64_t nx = h_numel(4, xs), nw = h_numel(4, ws), ny = h_numel(4, ys), nb = s->cout;
    float *fx = malloc(sizeof(float) * (size_t)nx), *fw = malloc(sizeof(float) * (size_t)nw);
    float *fb = malloc(sizeof(float) * (size_t)nb);
    double *dx = malloc(sizeof(double) * (size_t)nx), *dw = malloc(sizeof(double) * (size_t)nw);
    double *db = malloc(sizeof(double) * (size_t)nb);
    kiln_tensor *x = make_input(ctx, s->xview, xs, s->specials, fx, dx);
    kiln_tensor *w = make_weight(ctx, ws, s->wview, 0.5f, fw, dw);
    kiln_tensor *b = NULL;
    if (s->bias) {
        h_fill(fb, nb, -1, 1);
        for (int64_t i = 0; i < nb; i++) db[i] = fb[i];
        b = kiln_from_host(ctx, fb, KILN_F32, 1, &nb);
    }
    if (!x || !w) goto out;
    if (s->xview == V_BATCH_SLICE)
        CHECK(kiln_tensor_offset(x) > 0, "%s: the input view should start at an offset", what);
    else if (s->xview != V_NONE)
        CHECK(!kiln_tensor_is_contiguous(x), "%s: the input view should not be contiguous", what);

    kiln_tensor *y = run_op(ctx, s, x, w, b);
    CHECK(y != NULL, "%s: %s", what, kiln_error_message(ctx));
    if (y) {
        CHECK(kiln_tensor_ndim(y) == 4 && memcmp(kiln_tensor_shape(y), ys, sizeof ys) == 0, "%s: output shape", what);
        double *ref = malloc(sizeof(double) * (size_t)ny), *mag = malloc(sizeof(double) * (size_t)ny);
        reference(s, dx, dw, s->bias ? db : NULL, ref, mag);
        float *got = h_read(y);
        int d = s->c / s->p.groups * s->kh * s->kw + 2;
        compare_bound(what, got, ref, mag, ny, d);
        if (s->specials) {
            int64_t nnan = 0, ninf = 0;
            for (int64_t i = 0; i < ny; i++) nnan += isnan(ref[i]) != 0, ninf += isinf(ref[i]) != 0;
            CHECK(nnan > 0 && ninf > 0, "%s: the case should produce NaN and Inf outputs (%lld, %lld)", what,
                  (long long)nnan, (long long)ninf);
        }
        free(got);
        free(ref);
        free(mag);
    }
    if (grads && y && !s->specials) {
        /* fresh leaves requiring grad (the views above are leaves too: non-contiguous
         * gradients flow to them) */
        bool wanted[3] = {(gmask & 1) != 0, (gmask & 2) != 0, s->bias && (gmask & 4) != 0};
        kiln_tensor_set_requires_grad(x, wanted[0]);
        kiln_tensor_set_requires_grad(w, wanted[1]);
        if (b) kiln_tensor_set_requires_grad(b, wanted[2]);
        kiln_tensor *y2 = run_op(ctx, s, x, w, b);
        kiln_tensor *ins[3] = {x, w, b};
        double *hin[3] = {dx, dw, db};
        gc_user u = {s};
        snprintf(what + strlen(what), sizeof what - strlen(what), " (grad%s%s%s)", wanted[0] ? " x" : "",
                 wanted[1] ? " w" : "", wanted[2] ? " b" : "");
        gc_check(ctx, what, gc_ref, &u, s->bias ? 3 : 2, ins, hin, wanted, y2, 1e-4, 1e-4);
    }
out:
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    free(fx), free(fw), free(fb), free(dx), free(dw), free(db);
}

/* Finite differences cost (inputs) x 2 x (reference); keep the slow ones forward-only. */
static bool cheap_for_gc(const cspec *s) {
    int ho, wo;
    out_size(s, &ho, &wo);
    double nin = (double)s->n * s->c * s->h * s->w + (double)s->cout * (s->c / s->p.groups) * s->kh * s->kw + s->cout;
    double ref = (double)s->n * s->cout * ho * wo * (s->c / s->p.groups) * s->kh * s->kw;
    if (s->transpose) ref = (double)s->n * s->c * s->h * s->w * (s->cout / s->p.groups) * s->kh * s->kw;
    return nin * 2 * ref < 3e8;
}

static void test_table(kiln_ctx *ctx) {
    for (size_t k = 0; k < NCASES; k++) run_case(ctx, &cases[k], "", cheap_for_gc(&cases[k]), 7);
}

/* Some inputs frozen: each backward path alone (the bias gradient without the weight's
 * GEMM takes another route). */
static void test_partial_grads(kiln_ctx *ctx) {
    static const int masks[] = {1, 2, 4, 6, 5};
    /* conv2d batch 3, groups 2, 54 taps; transposed stride 2, groups 2 */
    static const size_t which[] = {2, 5, 19, 22, 24};
    for (size_t k = 0; k < sizeof which / sizeof which[0]; k++)
        for (size_t m = 0; m < sizeof masks / sizeof masks[0]; m++) {
            if (!cases[which[k]].bias && masks[m] == 4) continue;
            run_case(ctx, &cases[which[k]], " [partial]", true, masks[m]);
        }
}

/* The same with the column buffers cut into chunks of 1 and of 2 images (the last chunk
 * short): offsets of later chunks and the weight gradient's accumulation over chunks; and
 * with the weight gradient's inner dim split into parts (one per compute unit, the last
 * few products going to part 0), alone and with chunks. */
static void test_chunks(kiln_ctx *ctx) {
    for (size_t k = 0; k < NCASES; k++) {
        const cspec *s = &cases[k];
        if (!cheap_for_gc(s)) continue;
        int ho, wo;
        out_size(s, &ho, &wo);
        /* per-image scratch of the convolution doing the work: columns and a permuted
         * output or gradient */
        int64_t cin = s->transpose ? s->cout : s->c, cout = s->transpose ? s->c : s->cout;
        int64_t hw = s->transpose ? (int64_t)s->h * s->w : (int64_t)ho * wo;
        int64_t per = (cin * s->kh * s->kw + cout) * hw;
        static const struct {
            int images, split;
            const char *tag;
        } modes[] = {
            {1, 0, " [chunks of 1]"}, {2, 0, " [chunks of 2]"}, {0, 1, " [split]"}, {2, 1, " [chunks of 2, split]"}};
        for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
            if (modes[m].images && s->n < 2) continue;
            /* split: parts of at least 8 products, as many as the device has compute units */
            kiln__hooks_of(ctx)->conv_budget = per * modes[m].images; /* column elements, 0 = default */
            kiln__hooks_of(ctx)->conv_split_min = modes[m].split ? 8 : 0;
            run_case(ctx, s, modes[m].tag, true, 7);
        }
    }
    kiln__hooks_of(ctx)->conv_budget = kiln__hooks_of(ctx)->conv_split_min = 0;
}

/* The chunk's image count (kiln__conv_chunk_images): what the budget holds, rounded down to
 * a count whose pixels (the column matrices' leading dim) are whole 64-byte lines where the
 * budget allows that, the whole batch when it fits. */
static void test_chunk_align(kiln_ctx *ctx) {
    static const struct {
        int64_t hw;
        int fit, n, want;
    } cases[] = {
        {49, 18, 64, 16},     /* the reference GAN's 7 x 7: 882 floats -> 784 */
        {196, 111, 128, 108}, /* 14 x 14: 21756 -> 21168 */
        {676, 37, 128, 36},   /* 26 x 26: 4 images fill lines */
        {576, 37, 128, 37},   /* 24 x 24: every count does */
        {49, 10, 64, 10},     /* fewer than the 16 images that would: as the budget holds */
        {49, 18, 12, 12},     /* the whole batch fits: one chunk */
        {49, 0, 64, 1},       /* not one image: one anyway */
    };
    int64_t budget = kiln__hooks_of(ctx)->conv_budget, per = 1000;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kiln__hooks_of(ctx)->conv_budget = cases[i].fit ? per * cases[i].fit : 1;
        int got = kiln__conv_chunk_images(ctx, per, cases[i].hw, cases[i].n);
        CHECK(got == cases[i].want, "chunk images, HW %lld, %d images fit, batch %d: %d, expected %d",
              (long long)cases[i].hw, cases[i].fit, cases[i].n, got, cases[i].want);
    }
    kiln__hooks_of(ctx)->conv_budget = budget;
}

/* ---- determinism ---------------------------------------------------------------------- */

static void test_determinism(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    const cspec *s = &cases[5]; /* groups 2, batch 3 */
    int64_t xs[4] = {s->n, s->c, s->h, s->w}, ws[4];
    wshape(s, ws);
    float *fx = malloc(sizeof(float) * 4096), *fw = malloc(sizeof(float) * 4096);
    double *dx = malloc(sizeof(double) * 4096), *dw = malloc(sizeof(double) * 4096);
    kiln_tensor *x = make_input(ctx, V_NONE, xs, false, fx, dx), *w = make_weight(ctx, ws, false, 0.5f, fw, dw);
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor_set_requires_grad(w, true);
    float *first[2] = {NULL, NULL};
    for (int r = 0; r < 2; r++) {
        kiln_tensor *y = kiln_conv2d(ctx, x, w, NULL, &s->p);
        kiln_tensor *seed = kiln_full(ctx, 0.25f, kiln_tensor_ndim(y), kiln_tensor_shape(y));
        kiln_tensor_zero_grad(x);
        kiln_tensor_zero_grad(w);
        CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "determinism backward: %s", kiln_error_message(ctx));
        float *gx = h_read(kiln_tensor_grad(x)), *gw = h_read(kiln_tensor_grad(w));
        if (r == 0) {
            first[0] = gx, first[1] = gw;
        } else {
            CHECK(memcmp(first[0], gx, sizeof(float) * (size_t)kiln_tensor_numel(x)) == 0,
                  "input gradient differs between two identical runs");
            CHECK(memcmp(first[1], gw, sizeof(float) * (size_t)kiln_tensor_numel(w)) == 0,
                  "weight gradient differs between two identical runs");
            free(gx), free(gw);
        }
    }
    free(first[0]), free(first[1]);
    free(fx), free(fw), free(dx), free(dw);
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

/* ---- PyTorch ------------------------------------------------------------------------- */

/* The cases of tests/golden/gen_conv.py (same order and parameters). */
typedef struct gcase {
    const char *name;
    bool transpose, bias;
    kiln_conv2d_params p;
} gcase;

static const gcase gcases[] = {
    {"conv_basic", false, true, P1},
    {"conv_s2p1", false, true, P(2, 2, 1, 1, 1, 1, 1, 0, 0)},
    {"conv_odd", false, true, P(2, 1, 1, 2, 1, 2, 1, 0, 0)},
    {"conv_dil2", false, false, P(1, 1, 2, 2, 2, 2, 1, 0, 0)},
    {"conv_groups2", false, true, P(1, 1, 1, 1, 1, 1, 2, 0, 0)},
    {"conv_depthwise", false, true, P(2, 2, 1, 1, 1, 1, 4, 0, 0)},
    {"conv_1x1", false, false, P1},
    {"conv_cnn", false, true, P1},
    {"convt_basic", true, true, P1},
    {"convt_s2p1op1", true, true, P(2, 2, 1, 1, 1, 1, 1, 1, 1)},
    {"convt_odd", true, true, P(2, 1, 0, 1, 1, 2, 1, 1, 0)},
    {"convt_groups2", true, false, P(2, 2, 1, 0, 1, 1, 2, 0, 1)},
    {"convt_depthwise", true, true, P(1, 1, 1, 1, 1, 1, 3, 0, 0)},
    {"convt_dil2op1", true, true, P(1, 1, 0, 0, 2, 2, 1, 1, 1)},
};

/* kiln's t against PyTorch's float64 result rounded to float (ref): |t - ref| <=
 * gamma_d * mag + u |ref|, mag from the file (the computation on absolute values). */
static void compare_golden(const char *what, kiln_tensor *t, const golden_tensor *ref, const golden_tensor *mag,
                           int d) {
    if (!ref || !mag) return;
    CHECK(t != NULL, "%s: no result", what);
    if (!t) return;
    CHECK(kiln_tensor_ndim(t) == ref->ndim &&
              memcmp(kiln_tensor_shape(t), ref->shape, sizeof(int64_t) * (size_t)ref->ndim) == 0,
          "%s: shape differs from PyTorch's", what);
    if (kiln_tensor_numel(t) != ref->numel || mag->numel != ref->numel) return;
    float *got = h_read(t);
    double *r = malloc(sizeof(double) * (size_t)ref->numel), *m = malloc(sizeof(double) * (size_t)ref->numel);
    double gamma = d * U_F32 / (1 - d * U_F32);
    for (int64_t k = 0; k < ref->numel; k++) {
        r[k] = ref->f[k];
        /* compare_bound checks |got - r| <= gamma * m: fold u |ref| into m */
        m[k] = mag->f[k] + U_F32 * fabs(r[k]) / gamma;
    }
    compare_bound(what, got, r, m, ref->numel, d);
    free(got), free(r), free(m);
}

static void test_golden(kiln_ctx *ctx) {
    golden gf;
    if (!golden_open(&gf, "conv")) return;
    for (size_t k = 0; k < sizeof gcases / sizeof gcases[0]; k++) {
        const gcase *c = &gcases[k];
        char nm[160], what[200];
        kiln_scope_begin(ctx);
#define G(suffix) (snprintf(nm, sizeof nm, "%s.%s", c->name, suffix), golden_get(&gf, nm))
        const golden_tensor *gx = G("x"), *gw = G("w"), *gb = c->bias ? G("b") : NULL, *gy = G("y"), *ggy = G("gy");
        const golden_tensor *ggx = G("gx"), *ggw = G("gw"), *ggb = c->bias ? G("gb") : NULL;
        const golden_tensor *my = G("y_mag"), *mgx = G("gx_mag"), *mgw = G("gw_mag");
        const golden_tensor *mgb = c->bias ? G("gb_mag") : NULL;
#undef G
        if (!gx || !gw || !gy || !ggy || (c->bias && !gb)) {
            kiln_scope_end(ctx);
            continue;
        }
        kiln_tensor *x = golden_upload(ctx, gx), *w = golden_upload(ctx, gw), *b = golden_upload(ctx, gb);
        kiln_tensor_set_requires_grad(x, true);
        kiln_tensor_set_requires_grad(w, true);
        if (b) kiln_tensor_set_requires_grad(b, true);
        kiln_tensor *y = c->transpose ? kiln_conv_transpose2d(ctx, x, w, b, &c->p) : kiln_conv2d(ctx, x, w, b, &c->p);
        /* depths of the sums (see the top of the file): kk taps, channels per group */
        int64_t kk = gw->shape[2] * gw->shape[3], g = c->p.groups;
        int64_t nimg = gx->shape[0], yhw = gy->shape[2] * gy->shape[3], xhw = gx->shape[2] * gx->shape[3];
        int dy = (int)(gx->shape[1] / g * kk + 2), dgx = (int)(gy->shape[1] / g * kk + 2);
        int dgw = (int)(2 * nimg * (c->transpose ? xhw : yhw) + 2), dgb = (int)(nimg * yhw + 2);
        snprintf(what, sizeof what, "%s y vs PyTorch", c->name);
        compare_golden(what, y, gy, my, dy);
        kiln_tensor *seed = golden_upload(ctx, ggy);
        CHECK(y && kiln_backward_ex(y, seed, false) == KILN_OK, "%s backward: %s", c->name, kiln_error_message(ctx));
        snprintf(what, sizeof what, "%s gx vs PyTorch", c->name);
        compare_golden(what, kiln_tensor_grad(x), ggx, mgx, dgx);
        snprintf(what, sizeof what, "%s gw vs PyTorch", c->name);
        compare_golden(what, kiln_tensor_grad(w), ggw, mgw, dgw);
        if (b) {
            snprintf(what, sizeof what, "%s gb vs PyTorch", c->name);
            compare_golden(what, kiln_tensor_grad(b), ggb, mgb, dgb);
        }
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
    }
    golden_close(&gf);
}

/* ---- errors and leaks ------------------------------------------------------------------ */

/* Expects op to fail with status st and a message containing each of the strings. */
#define EXPECT_FAIL(ctx, call, st, ...)                                                                                \
    do {                                                                                                               \
        int64_t before_ = kiln_ctx_num_tensors(ctx);                                                                   \
        kiln_tensor *r_ = (call);                                                                                      \
        CHECK(r_ == NULL, "%s should fail", #call);                                                                    \
        CHECK(kiln_error_status(ctx) == (st), "%s: status %d, expected %d (%s)", #call, (int)kiln_error_status(ctx),   \
              (int)(st), kiln_error_message(ctx));                                                                     \
        const char *subs_[] = {__VA_ARGS__};                                                                           \
        for (size_t i_ = 0; i_ < sizeof subs_ / sizeof subs_[0]; i_++)                                                 \
            CHECK(strstr(kiln_error_message(ctx), subs_[i_]) != NULL, "%s: message '%s' lacks '%s'", #call,            \
                  kiln_error_message(ctx), subs_[i_]);                                                                 \
        CHECK(kiln_ctx_num_tensors(ctx) == before_, "%s leaked %lld tensors", #call,                                   \
              (long long)(kiln_ctx_num_tensors(ctx) - before_));                                                       \
        kiln_tensor_free(r_);                                                                                          \
        kiln_error_clear(ctx);                                                                                         \
    } while (0)

static void set_env(kiln_ctx *ctx, const char *name, const char *value);

static void test_errors(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_zeros(ctx, 4, (int64_t[]){2, 3, 5, 5});
    kiln_tensor *w = kiln_zeros(ctx, 4, (int64_t[]){4, 2, 3, 3});
    kiln_tensor *w3 = kiln_zeros(ctx, 4, (int64_t[]){4, 3, 3, 3});
    kiln_tensor *w3d = kiln_zeros(ctx, 3, (int64_t[]){4, 3, 3});
    kiln_tensor *x3d = kiln_zeros(ctx, 3, (int64_t[]){3, 5, 5});
    kiln_tensor *b4 = kiln_zeros(ctx, 1, (int64_t[]){4});
    kiln_tensor *b5 = kiln_zeros(ctx, 1, (int64_t[]){5});
    kiln_tensor *xi = kiln_empty(ctx, KILN_I32, 4, (int64_t[]){2, 3, 5, 5});
    kiln_tensor *x4 = kiln_zeros(ctx, 4, (int64_t[]){2, 4, 5, 5});
    kiln_tensor *wg = kiln_zeros(ctx, 4, (int64_t[]){3, 2, 3, 3});
    kiln_tensor *x1 = kiln_zeros(ctx, 4, (int64_t[]){1, 1, 2, 2});
    kiln_tensor *w1 = kiln_zeros(ctx, 4, (int64_t[]){1, 1, 3, 3});
    kiln_tensor *wt = kiln_zeros(ctx, 4, (int64_t[]){3, 2, 3, 3}); /* transpose: Cin 3 */
    CHECK_OK(ctx);

    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x, w, NULL, NULL), KILN_ERR_SHAPE,
                "kiln_conv2d: input [2, 3, 5, 5] has 3 channels but weight [4, 2, 3, 3] expects 2 (groups 1)");
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x, w3d, NULL, NULL), KILN_ERR_SHAPE, "kiln_conv2d",
                "weight [4, 3, 3] must be 4-D", "[2, 3, 5, 5]");
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x3d, w3, NULL, NULL), KILN_ERR_SHAPE, "kiln_conv2d",
                "input [3, 5, 5] must be 4-D");
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, xi, w3, NULL, NULL), KILN_ERR_DTYPE, "kiln_conv2d", "i32", "[2, 3, 5, 5]");
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x, w3, b5, NULL), KILN_ERR_SHAPE, "kiln_conv2d", "bias [5] must be [4]");
    kiln_conv2d_params pg = P(1, 1, 0, 0, 1, 1, 2, 0, 0);
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x4, wg, NULL, &pg), KILN_ERR_SHAPE, "kiln_conv2d", "groups 2 must divide",
                "[2, 4, 5, 5]", "[3, 2, 3, 3]");
    kiln_conv2d_params pg3 = P(1, 1, 0, 0, 1, 1, 3, 0, 0);
    EXPECT_FAIL(ctx, kiln_conv_transpose2d(ctx, x4, w, NULL, &pg3), KILN_ERR_SHAPE, "kiln_conv_transpose2d",
                "groups 3 must divide", "[2, 4, 5, 5]");
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x1, w1, NULL, NULL), KILN_ERR_SHAPE,
                "kiln_conv2d: input [1, 1, 2, 2] with weight [1, 1, 3, 3] and stride (1, 1), padding (0, 0), "
                "dilation (1, 1), groups 1 gives an output of 0 x 0");
    kiln_conv2d_params pd = P(1, 1, 1, 1, 2, 2, 1, 0, 0);
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x1, w1, NULL, &pd), KILN_ERR_SHAPE, "dilation (2, 2)", "gives an output of");
    kiln_conv2d_params pt = P(1, 1, 2, 2, 1, 1, 1, 0, 0);
    EXPECT_FAIL(ctx, kiln_conv_transpose2d(ctx, x1, w1, NULL, &pt), KILN_ERR_SHAPE, "kiln_conv_transpose2d",
                "output_padding (0, 0)", "gives an output of 0 x 0");
    kiln_conv2d_params bad[] = {P(0, 1, 0, 0, 1, 1, 1, 0, 0), P(1, 1, -1, 0, 1, 1, 1, 0, 0),
                                P(1, 1, 0, 0, 1, 0, 1, 0, 0), P(1, 1, 0, 0, 1, 1, 0, 0, 0)};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        EXPECT_FAIL(ctx, kiln_conv2d(ctx, x, w3, NULL, &bad[k]), KILN_ERR_INVALID_ARGUMENT, "kiln_conv2d",
                    "invalid parameters", "[2, 3, 5, 5]");
    /* options are literal: a zeroed struct is an error that names the defaults function */
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x, w3, NULL, &(kiln_conv2d_params){0}), KILN_ERR_INVALID_ARGUMENT, "kiln_conv2d",
                "start from kiln_conv2d_defaults()");
    kiln_conv2d_params dp = kiln_conv2d_defaults();
    CHECK(dp.stride[0] == 1 && dp.stride[1] == 1 && dp.padding[0] == 0 && dp.padding[1] == 0 && dp.dilation[0] == 1 &&
              dp.dilation[1] == 1 && dp.groups == 1 && dp.output_padding[0] == 0 && dp.output_padding[1] == 0,
          "kiln_conv2d_defaults is torch's");
    kiln_conv2d_params pop = P(2, 2, 0, 0, 1, 1, 1, 2, 0);
    EXPECT_FAIL(ctx, kiln_conv_transpose2d(ctx, x, wt, NULL, &pop), KILN_ERR_INVALID_ARGUMENT,
                "output_padding must be smaller than stride or dilation", "output_padding (2, 0)");
    kiln_conv2d_params pneg = P(1, 1, 0, 0, 1, 1, 1, -1, 0);
    EXPECT_FAIL(ctx, kiln_conv_transpose2d(ctx, x, wt, NULL, &pneg), KILN_ERR_INVALID_ARGUMENT, "invalid parameters");
    EXPECT_FAIL(ctx, kiln_conv_transpose2d(ctx, x, wt, b4, NULL), KILN_ERR_SHAPE, "bias [4] must be [2]");
    kiln_tensor *x0 = kiln_zeros(ctx, 4, (int64_t[]){2, 0, 5, 5});
    kiln_tensor *w0 = kiln_zeros(ctx, 4, (int64_t[]){4, 0, 3, 3});
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, x0, w0, NULL, NULL), KILN_ERR_SHAPE, "only the batch dim may be empty");

    /* a column buffer beyond 32-bit indexing: a broadcast (stride 0) input of 2^28 elements */
    kiln_tensor *one = kiln_ones(ctx, 4, (int64_t[]){1, 1, 1, 1});
    kiln_tensor *big = kiln_expand(ctx, one, 4, (int64_t[]){1, 256, 1024, 1024});
    kiln_tensor *wbig = kiln_expand(ctx, one, 4, (int64_t[]){1, 256, 3, 3});
    CHECK(big && wbig, "expand: %s", kiln_error_message(ctx));
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, big, wbig, NULL, NULL), KILN_ERR_UNSUPPORTED, "kiln_conv2d",
                "[1, 256, 1024, 1024]", "32-bit");

    /* NULL inputs: an error naming the op, or propagation of an earlier error */
    EXPECT_FAIL(ctx, kiln_conv2d(ctx, NULL, w3, NULL, NULL), KILN_ERR_NULL, "kiln_conv2d", "input 0 is NULL");
    EXPECT_FAIL(ctx, kiln_conv_transpose2d(ctx, x, NULL, NULL, NULL), KILN_ERR_NULL, "kiln_conv_transpose2d");
    CHECK(kiln_conv2d(NULL, x, w3, NULL, NULL) == NULL, "NULL context");
    kiln_conv2d(ctx, x, w, NULL, NULL); /* the first error stays */
    CHECK(kiln_conv2d(ctx, NULL, w3, NULL, NULL) == NULL, "NULL propagation");
    CHECK(strstr(kiln_error_message(ctx), "has 3 channels") != NULL, "the root cause was overwritten: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);

    /* device allocations failing at every step of forward and backward: NULL, no leak */
    kiln_tensor *xr = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){2, 3, 5, 5});
    kiln_tensor *wr = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){4, 3, 3, 3});
    kiln_tensor *br = kiln_rand_uniform(ctx, -1, 1, 1, (int64_t[]){4});
    kiln_tensor *wtr = kiln_transpose(ctx, kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){3, 2, 3, 3}), 2, 3);
    for (int transpose = 0; transpose < 2; transpose++) {
        for (int nth = 1; nth <= 4; nth++) {
            int64_t before = kiln_ctx_num_tensors(ctx);
            kiln__pool_fail_after(ctx, nth);
            kiln_tensor *y =
                transpose ? kiln_conv_transpose2d(ctx, xr, wtr, NULL, NULL) : kiln_conv2d(ctx, xr, wr, br, NULL);
            kiln__pool_fail_after(ctx, 0);
            if (y) {
                kiln_tensor_free(y);
            } else {
                CHECK(kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "allocation %d failing: %s", nth,
                      kiln_error_message(ctx));
            }
            CHECK(kiln_ctx_num_tensors(ctx) == before, "allocation %d failing (transpose %d) leaked", nth, transpose);
            kiln_error_clear(ctx);
        }
    }
    /* the same with halves, forward and backward, through columns on both GEMM routes (the
     * weight's f32 copy; with CLBlast, conv_wgrad_small's f32 copies of x and gy): every
     * allocation in turn fails until the whole step runs */
    kiln_tensor *xl = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){2, 3, 5, 5});
    kiln_tensor *wl = kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){4, 3, 3, 3});
    kiln_tensor_set_requires_grad(xl, true);
    kiln_tensor_set_requires_grad(wl, true);
    set_env(ctx, "KILN_CONV_ALGO", "im2col");
    bool cpu = kiln_ctx_device(ctx)->type == KILN_DEVICE_CPU;
    for (int route = 0; route < 2; route++) {
        kiln__hooks_of(ctx)->gemm_own = route ? (cpu ? -1 : 1) : 0;
        bool done = false;
        for (int nth = 1; nth <= 60 && !done; nth++) {
            int64_t before = kiln_ctx_num_tensors(ctx);
            kiln_scope_begin(ctx);
            kiln_tensor *xh = kiln_to_dtype(ctx, xl, KILN_F16), *wh = kiln_to_dtype(ctx, wl, KILN_F16);
            kiln__pool_fail_after(ctx, nth);
            kiln_tensor *y = kiln_conv2d(ctx, xh, wh, NULL, NULL);
            kiln_status st = y ? kiln_backward(kiln_sum(ctx, kiln_to_dtype(ctx, y, KILN_F32), 0, NULL, false))
                               : kiln_error_status(ctx);
            kiln__pool_fail_after(ctx, 0);
            done = st == KILN_OK;
            CHECK(done || kiln_error_status(ctx) == KILN_ERR_OUT_OF_MEMORY, "f16, route %d, allocation %d failing: %s",
                  route, nth, kiln_error_message(ctx));
            kiln_scope_end(ctx);
            kiln_tensor_clear_grad(xl);
            kiln_tensor_clear_grad(wl);
            CHECK(kiln_ctx_num_tensors(ctx) == before, "f16, route %d, allocation %d failing leaked %lld tensors",
                  route, nth, (long long)(kiln_ctx_num_tensors(ctx) - before));
            kiln_error_clear(ctx);
        }
        CHECK(done, "f16, route %d: the step never ran", route);
    }
    kiln__hooks_of(ctx)->gemm_own = 0;
    set_env(ctx, "KILN_CONV_ALGO", NULL);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
}

/* The empty batch: an empty output, zero weight and bias gradients. */
static void test_empty_batch(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    for (int transpose = 0; transpose < 2; transpose++) {
        kiln_tensor *x = kiln_zeros(ctx, 4, (int64_t[]){0, 2, 5, 5});
        kiln_tensor *w = kiln_ones(ctx, 4, (int64_t[]){2, 2, 3, 3});
        kiln_tensor *b = kiln_ones(ctx, 1, (int64_t[]){2});
        kiln_tensor_set_requires_grad(w, true);
        kiln_tensor_set_requires_grad(b, true);
        kiln_tensor *y = transpose ? kiln_conv_transpose2d(ctx, x, w, b, NULL) : kiln_conv2d(ctx, x, w, b, NULL);
        CHECK(y != NULL, "empty batch: %s", kiln_error_message(ctx));
        if (!y) continue;
        int64_t want[4] = {0, 2, transpose ? 7 : 3, transpose ? 7 : 3};
        CHECK(memcmp(kiln_tensor_shape(y), want, sizeof want) == 0, "empty batch: output shape");
        kiln_tensor *seed = kiln_zeros(ctx, 4, want);
        CHECK(kiln_backward_ex(y, seed, false) == KILN_OK, "empty batch backward: %s", kiln_error_message(ctx));
        float *gw = h_read(kiln_tensor_grad(w)), *gb = h_read(kiln_tensor_grad(b));
        bool zero = true;
        for (int i = 0; i < 36; i++) zero &= gw[i] == 0;
        zero &= gb[0] == 0 && gb[1] == 0;
        CHECK(zero, "empty batch: the gradients should be zero");
        free(gw), free(gb);
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

/* ---- the direct 3x3 route (conv3_direct) -------------------------------------------- */

/* 3x3, stride 1, padding 1, one group: the shapes conv3_direct computes (forward, and the
 * input gradient; conv_transpose2d the other way round), at ragged sizes: widths that are
 * not a multiple of the vector width (a tail lane run, two segments), heights that are not
 * a multiple of the row block, output channels that are not a multiple of the channel
 * block, one input channel, batch 1, views and NaN/Inf. */
#define P3 P(1, 1, 1, 1, 1, 1, 1, 0, 0)
static const cspec direct_cases[] = {
    {"direct width 29, 9 channels", false, 2, 2, 5, 29, 9, 3, 3, P3, true, V_NONE, false, false},
    {"direct width 37 (two segments), height 7", false, 1, 2, 7, 37, 3, 3, 3, P3, false, V_NONE, false, false},
    {"direct width 9, batch 1, one input channel", false, 1, 1, 6, 9, 5, 3, 3, P3, true, V_NONE, false, false},
    /* the narrowest plane conv3_wgrad takes with 16-float vectors (2 * pitch + 1 >= 16): its
     * last vector reads on to the next plane's second row; one narrower takes columns */
    {"direct width 6, height 5", false, 3, 2, 5, 6, 4, 3, 3, P3, true, V_NONE, false, false},
    {"direct width 5, height 7", false, 3, 2, 7, 5, 4, 3, 3, P3, true, V_NONE, false, false},
    {"direct width 17, 9 channels, weight view", false, 2, 4, 3, 17, 9, 3, 3, P3, true, V_NONE, true, false},
    {"direct transposed-view input", false, 2, 3, 11, 13, 4, 3, 3, P3, true, V_TRANSPOSE_HW, false, false},
    {"direct channels-last input, 2 x 3 plane", false, 3, 5, 2, 3, 2, 3, 3, P3, false, V_CHANNELS_LAST, false, false},
    {"direct batch slice", false, 2, 2, 4, 20, 3, 3, 3, P3, true, V_BATCH_SLICE, false, false},
    {"direct NaN and Inf", false, 2, 2, 6, 19, 3, 3, 3, P3, true, V_NONE, false, true},
    {"direct batch 10 (two parts of the weight gradient)", false, 10, 1, 4, 32, 3, 3, 3, P3, false, V_NONE, false,
     false},
    {"direct stride 2, width 30, batch 10", false, 10, 2, 6, 30, 3, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 0, 0), true, V_NONE,
     false, false},
    {"direct stride 2, odd 7 x 9 plane, view", false, 2, 3, 7, 9, 9, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 0, 0), false,
     V_TRANSPOSE_HW, true, false},
    {"T direct width 21, 10 channels", true, 2, 10, 4, 21, 3, 3, 3, P3, true, V_NONE, false, false},
    {"T direct batch 1, weight view", true, 1, 3, 5, 10, 9, 3, 3, P3, false, V_NONE, true, false},
};
#define NDIRECT (sizeof direct_cases / sizeof direct_cases[0])

/* conv3_direct's blockings: the device's own (c3_choose), an AVX2 device's (8,2,1,4 and
 * flat 8,2,1,4,1), each vector width with one and several vectors per segment, row blocks that do not divide the
 * heights, channel blocks that do not divide the channels, the largest row block (its slack rows); conv3_flat (the
 * fifth value 1: vectors along a plane's flat index) on every width; and conv3_bcast (2: vectors along the output
 * channels), the AVX-512 and AVX2 devices' (16,2,7 and 8,1,7), one to four vectors of channels, segments that do not
 * divide the widths, and the longest segment (8 pixels: its slack). */
static const char *const blockings[] = {NULL,         "16,1,2,8",   "8,2,2,3",   "8,2,1,4",   "4,3,8,1",
                                        "4,1,1,16",   "16,2,1,8,1", "8,1,1,3,1", "8,2,1,4,1", "4,4,1,5,1",
                                        "16,2,7,1,2", "8,1,7,1,2",  "4,4,8,1,2"};

/* Sets or unsets a variable with ctx's queue drained: POCL's worker threads call getenv
 * while they run kernels, and glibc's setenv may move the environment under them. */
static void set_env(kiln_ctx *ctx, const char *name, const char *value) {
    kiln_sync(ctx);
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
}

/* Launches of one conv2d forward and of its input gradient alone, under the current
 * KILN_CONV_ALGO. */
static void count_launches_w(kiln_ctx *ctx, const cspec *s, bool wgrad, uint64_t *fwd, uint64_t *bwd);
static void count_launches(kiln_ctx *ctx, const cspec *s, uint64_t *fwd, uint64_t *dgrad) {
    count_launches_w(ctx, s, false, fwd, dgrad);
}

/* Launches (and library calls) of one conv2d forward and of its backward with the input
 * (wgrad false) or the weight alone requiring grad, under the current KILN_CONV_ALGO. */
static void count_launches_w(kiln_ctx *ctx, const cspec *s, bool wgrad, uint64_t *fwd, uint64_t *dgrad) {
    kiln__set_guard(ctx, 0);              /* guard regions cost launches of their own */
    kiln__hooks_of(ctx)->conv_budget = 1; /* columns: one chunk per image */
    kiln_scope_begin(ctx);
    int64_t xs[4] = {s->n, s->c, s->h, s->w}, ws[4];
    wshape(s, ws);
    kiln_tensor *x = kiln_full(ctx, 0.5f, 4, xs), *w = kiln_full(ctx, 0.25f, 4, ws);
    kiln_ctx_stats st0, st1, st2;
    kiln_ctx_stats_get(ctx, &st0);
    kiln_tensor_set_requires_grad(wgrad ? w : x, true);
    kiln_tensor *y = kiln_conv2d(ctx, x, w, NULL, &s->p);
    kiln_ctx_stats_get(ctx, &st1);
    kiln_tensor *seed = y ? kiln_full(ctx, 1.0f, 4, kiln_tensor_shape(y)) : NULL;
    kiln_ctx_stats st_seed;
    kiln_ctx_stats_get(ctx, &st_seed);
    CHECK(y && kiln_backward_ex(y, seed, false) == KILN_OK, "launch count %s: %s", s->name, kiln_error_message(ctx));
    kiln_ctx_stats_get(ctx, &st2);
    /* (CLBlast's GEMMs are library calls, not launches: counted too, so that a route through
     * columns never counts as few as the direct one) */
    *fwd = st1.launches + st1.library_calls - st0.launches - st0.library_calls;
    *dgrad = st2.launches + st2.library_calls - st_seed.launches - st_seed.library_calls;
    kiln_scope_end(ctx);
    kiln__hooks_of(ctx)->conv_budget = 0;
    kiln__set_guard(ctx, 3);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
}

/* The weight gradient of s for the host data xf, wf and seed gf, with the forward run under
 * KILN_CONV_ALGO=fwd and the backward under bwd: a host copy (malloc'ed), and the
 * backward's launches in *launches. */
static float *wgrad_mixed(kiln_ctx *ctx, const cspec *s, const float *xf, const float *wf, const float *gf,
                          const char *fwd, const char *bwd, uint64_t *launches) {
    kiln__set_guard(ctx, 0);
    kiln_scope_begin(ctx);
    int ho, wo;
    out_size(s, &ho, &wo);
    int64_t xs[4] = {s->n, s->c, s->h, s->w}, ws[4], ys[4] = {s->n, s->cout, ho, wo};
    wshape(s, ws);
    kiln_tensor *x = kiln_from_host(ctx, xf, KILN_F32, 4, xs), *w = kiln_from_host(ctx, wf, KILN_F32, 4, ws);
    kiln_tensor *seed = kiln_from_host(ctx, gf, KILN_F32, 4, ys);
    kiln_tensor_set_requires_grad(w, true);
    set_env(ctx, "KILN_CONV_ALGO", fwd);
    kiln_tensor *y = kiln_conv2d(ctx, x, w, NULL, &s->p);
    set_env(ctx, "KILN_CONV_ALGO", bwd);
    kiln_ctx_stats st0, st1;
    kiln_ctx_stats_get(ctx, &st0);
    CHECK(y && kiln_backward_ex(y, seed, false) == KILN_OK, "%s, forward %s, backward %s: %s", s->name, fwd, bwd,
          kiln_error_message(ctx));
    kiln_ctx_stats_get(ctx, &st1);
    *launches = st1.launches - st0.launches;
    float *g = y && kiln_tensor_grad(w) ? h_read(kiln_tensor_grad(w)) : NULL;
    kiln_scope_end(ctx);
    kiln__set_guard(ctx, 3);
    CHECK_OK(ctx);
    kiln_error_clear(ctx);
    return g;
}

/* The direct weight gradient without the forward's planes (a forward through columns):
 * it borders x itself (one launch more), with the same result. */
static void test_direct_unkept(kiln_ctx *ctx) {
    const cspec cases[2] = {
        {"stride 1", false, 3, 3, 6, 20, 5, 3, 3, P3, false, V_NONE, false, false},
        {"stride 2", false, 3, 3, 6, 20, 5, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 0, 0), false, V_NONE, false, false}};
    for (int k = 0; k < 2; k++) {
        const cspec *s = &cases[k];
        int ho, wo;
        out_size(s, &ho, &wo);
        int64_t nx = (int64_t)s->n * s->c * s->h * s->w, nw = (int64_t)s->cout * s->c * 9,
                ny = (int64_t)s->n * s->cout * ho * wo;
        float *xf = malloc(sizeof(float) * (size_t)nx), *wf = malloc(sizeof(float) * (size_t)nw);
        float *gf = malloc(sizeof(float) * (size_t)ny);
        h_fill(xf, nx, -1, 1);
        h_fill(wf, nw, -1, 1);
        h_fill(gf, ny, -1, 1);
        uint64_t kept, unkept;
        float *a = wgrad_mixed(ctx, s, xf, wf, gf, "direct", "direct", &kept);
        float *b = wgrad_mixed(ctx, s, xf, wf, gf, "im2col", "direct", &unkept);
        CHECK(unkept == kept + 1,
              "%s: the weight gradient after a forward through columns took %llu launches, %llu "
              "after a direct one (expected one more: x bordered)",
              s->name, (unsigned long long)unkept, (unsigned long long)kept);
        CHECK(a && b && memcmp(a, b, sizeof(float) * (size_t)nw) == 0,
              "%s: the direct weight gradient differs with x's planes from the forward and made by itself", s->name);
        free(a);
        free(b);
        free(xf);
        free(wf);
        free(gf);
    }
    set_env(ctx, "KILN_CONV_ALGO", NULL);
}

/* The direct weight gradient with the device refusing each of its allocations in turn,
 * through conv3_wgrad (bordered gy) and conv3_wgradc (conv3_tocl's channels-last copy): the
 * backward fails with the allocation's error, leaves no tensor and no pool bytes behind,
 * and the next backward gives the fault-free gradient bit for bit. */
static void test_direct_wgrad_faults(kiln_ctx *ctx) {
    const cspec s = {"7 x 7, 16 output channels, 33 images (two parts)",
                     false,
                     33,
                     8,
                     7,
                     7,
                     16,
                     3,
                     3,
                     P3,
                     false,
                     V_NONE,
                     false,
                     false};
    int64_t xs[4] = {s.n, s.c, s.h, s.w}, ws[4];
    wshape(&s, ws);
    static const char *const routes[] = {"planes", "channels"};
    set_env(ctx, "KILN_CONV_ALGO", "direct");
    for (int r = 0; r < 2; r++) {
        set_env(ctx, "KILN_CONV3_WGRAD", routes[r]);
        kiln_scope_begin(ctx);
        kiln_tensor *x = kiln_rand_uniform(ctx, -1, 1, 4, xs), *w = kiln_rand_uniform(ctx, -1, 1, 4, ws);
        kiln_tensor_set_requires_grad(w, true);
        kiln_tensor *y = kiln_conv2d(ctx, x, w, NULL, &s.p);
        kiln_tensor *seed = y ? kiln_rand_uniform(ctx, -1, 1, 4, kiln_tensor_shape(y)) : NULL;
        CHECK(seed && kiln_backward_ex(y, seed, true) == KILN_OK, "%s [%s]: %s", s.name, routes[r],
              kiln_error_message(ctx));
        float *want = seed && kiln_tensor_grad(w) ? h_read(kiln_tensor_grad(w)) : NULL;
        kiln_tensor_clear_grad(w);
        int failed = 0;
        for (int64_t nth = 1; want && nth <= 64; nth++) {
            int64_t tensors = kiln_ctx_num_tensors(ctx);
            kiln_pool_stats before, after;
            kiln_pool_stats_get(ctx, &before);
            kiln__pool_fail_after(ctx, nth);
            kiln_status st = kiln_backward_ex(y, seed, true);
            kiln__pool_fail_after(ctx, 0);
            kiln_pool_stats_get(ctx, &after);
            if (st == KILN_OK) break; /* nth is past the backward's allocations */
            failed++;
            CHECK(st == KILN_ERR_OUT_OF_MEMORY && strstr(kiln_error_message(ctx), "injected failure"),
                  "%s [%s], allocation %lld refused: %s: %s", s.name, routes[r], (long long)nth, kiln_status_name(st),
                  kiln_error_message(ctx));
            kiln_error_clear(ctx);
            kiln_tensor_clear_grad(w);
            CHECK(kiln_ctx_num_tensors(ctx) == tensors && after.in_use_bytes == before.in_use_bytes,
                  "%s [%s], allocation %lld refused: %lld tensors, %lld pool bytes left behind", s.name, routes[r],
                  (long long)nth, (long long)(kiln_ctx_num_tensors(ctx) - tensors),
                  (long long)(after.in_use_bytes - before.in_use_bytes));
        }
        CHECK(failed >= 2, "%s [%s]: only %d of the backward's allocations refused", s.name, routes[r], failed);
        float *got = kiln_tensor_grad(w) ? h_read(kiln_tensor_grad(w)) : NULL;
        CHECK(want && got && memcmp(want, got, sizeof(float) * (size_t)h_numel(4, ws)) == 0,
              "%s [%s]: the gradient after the refusals differs from the fault-free one", s.name, routes[r]);
        free(want);
        free(got);
        kiln_scope_end(ctx);
        kiln_error_clear(ctx);
    }
    set_env(ctx, "KILN_CONV3_WGRAD", NULL);
    set_env(ctx, "KILN_CONV_ALGO", NULL);
}

static void test_direct(kiln_ctx *ctx) {
    /* the main table with the direct route forced where it applies, and the direct
     * cases through columns (the route other devices and narrow rows take) */
    set_env(ctx, "KILN_CONV_ALGO", "direct");
    g_gemm = " [KILN_CONV_ALGO=direct]";
    test_table(ctx);
    set_env(ctx, "KILN_CONV_ALGO", "im2col");
    g_gemm = " [KILN_CONV_ALGO=im2col]";
    for (size_t k = 0; k < NDIRECT; k++) run_case(ctx, &direct_cases[k], "", cheap_for_gc(&direct_cases[k]), 7);
    /* the direct route under each blocking, with partial gradients and chunked columns for
     * the weight gradient beside it */
    set_env(ctx, "KILN_CONV_ALGO", "direct");
    for (size_t b = 0; b < sizeof blockings / sizeof blockings[0]; b++) {
        set_env(ctx, "KILN_CONV3_PARAMS", blockings[b]);
        char tag[64];
        snprintf(tag, sizeof tag, " [direct, blocking %s]", blockings[b] ? blockings[b] : "default");
        g_gemm = tag;
        for (size_t k = 0; k < NDIRECT; k++) {
            run_case(ctx, &direct_cases[k], "", cheap_for_gc(&direct_cases[k]), 7);
            if (!blockings[b]) run_case(ctx, &direct_cases[k], " [dx only]", true, 1);
        }
    }
    set_env(ctx, "KILN_CONV3_PARAMS", NULL);
    /* the weight gradient with its vectors along the output channels (conv3_wgradc) for
     * every stride-1 case, and along the planes (conv3_wgrad) for all: the default picks by
     * the plane's width and the channels, which few of these cases have */
    static const char *const wgrads[] = {"channels", "planes"};
    for (size_t r = 0; r < 2; r++) {
        set_env(ctx, "KILN_CONV3_WGRAD", wgrads[r]);
        char tag[64];
        snprintf(tag, sizeof tag, " [direct, KILN_CONV3_WGRAD=%s]", wgrads[r]);
        g_gemm = tag;
        for (size_t k = 0; k < NDIRECT; k++) run_case(ctx, &direct_cases[k], "", cheap_for_gc(&direct_cases[k]), 7);
    }
    set_env(ctx, "KILN_CONV3_WGRAD", NULL);
    g_gemm = "";
    test_direct_unkept(ctx);
    test_direct_wgrad_faults(ctx);
    /* the override takes effect: the direct forward is three launches (border, weights
     * packed, convolution) whatever the batch, through columns (cut into one chunk per image
     * here) at least two per image (im2col and a GEMM); the input gradient likewise (direct:
     * three, columns: a GEMM and col2im per image), plus one of the backward's own */
    const cspec four = {"4 images", false, 4, 2, 5, 29, 9, 3, 3, P3, false, V_NONE, false, false};
    uint64_t f[2], d[2];
    static const char *const algos[] = {"direct", "im2col"};
    int64_t budget = kiln__hooks_of(ctx)->conv_budget;
    kiln__hooks_of(ctx)->conv_budget = 1; /* one image a chunk on any device (a GPU's budget holds all four) */
    for (int a = 0; a < 2; a++) {
        set_env(ctx, "KILN_CONV_ALGO", algos[a]);
        count_launches(ctx, &four, &f[a], &d[a]);
    }
    /* the weight gradient alone: direct, bordered gy and conv3_wgrad (and the sum of its
     * parts for more than 8 images; x's bordered planes come from the forward), plus one
     * of the backward's own; through columns at least im2col and a GEMM per image */
    const cspec ten = {"10 images", false, 10, 2, 5, 29, 9, 3, 3, P3, false, V_NONE, false, false};
    uint64_t wf, wd[2][2];
    for (int a = 0; a < 2; a++) {
        set_env(ctx, "KILN_CONV_ALGO", algos[a]);
        count_launches_w(ctx, &four, true, &wf, &wd[a][0]);
        count_launches_w(ctx, &ten, true, &wf, &wd[a][1]);
    }
    kiln__hooks_of(ctx)->conv_budget = budget;
    bool own_gemm = kiln_ctx_device(ctx)->type == KILN_DEVICE_CPU;
    CHECK(wd[0][0] == 3 && wd[0][1] == 4 &&
              (own_gemm ? wd[1][0] >= 9 && wd[1][1] >= 21 : wd[1][0] != wd[0][0] || wd[1][1] != wd[0][1]),
          "launches of the weight gradient, 4 / 10 images: KILN_CONV_ALGO=direct %llu / %llu, im2col %llu / %llu "
          "(expected 3 / 4, and 9+ / 21+ through columns)",
          (unsigned long long)wd[0][0], (unsigned long long)wd[0][1], (unsigned long long)wd[1][0],
          (unsigned long long)wd[1][1]);
    /* (on a GPU, CLBlast's GEMMs are library calls, counted with the launches) */
    CHECK(f[0] == 3 && d[0] == 4 && (own_gemm ? f[1] >= 8 && d[1] >= 9 : f[1] > f[0] && d[1] > d[0]),
          "%s: launches forward / input gradient: KILN_CONV_ALGO=direct %llu / %llu, im2col %llu / %llu (expected 3 / "
          "4, and 8+ / 9+ through columns)",
          four.name, (unsigned long long)f[0], (unsigned long long)d[0], (unsigned long long)f[1],
          (unsigned long long)d[1]);
    /* the built-in rule: CPUs with 8- or 16-float vectors take the direct route (conv3_direct for
     * a 28 x 28 plane, conv3_flat for a 7 x 7 one); other devices columns */
    const kiln_device_info *info = kiln_ctx_device(ctx);
    bool wide = info->type == KILN_DEVICE_CPU && info->native_vector_width_float >= 8;
    const cspec planes[2] = {{"28 x 28", false, 2, 4, 28, 28, 4, 3, 3, P3, false, V_NONE, false, false},
                             {"7 x 7", false, 2, 4, 7, 7, 4, 3, 3, P3, false, V_NONE, false, false}};
    for (int k = 0; k < 2; k++) {
        uint64_t fa[3], da[3], wa[3];
        static const char *const modes[3] = {"direct", "im2col", NULL};
        for (int m = 0; m < 3; m++) {
            set_env(ctx, "KILN_CONV_ALGO", modes[m]);
            count_launches(ctx, &planes[k], &fa[m], &da[m]);
            uint64_t unused;
            count_launches_w(ctx, &planes[k], true, &unused, &wa[m]);
        }
        int want = wide ? 0 : 1;
        CHECK(wa[2] == wa[want] && wa[0] != wa[1],
              "auto route of the weight gradient, %s: %llu launches, %s takes %llu", planes[k].name,
              (unsigned long long)wa[2], modes[want], (unsigned long long)wa[want]);
        CHECK(fa[2] == fa[want] && da[2] == da[want] && fa[0] != fa[1],
              "auto route, %s: %llu / %llu launches, %s takes %llu / %llu", planes[k].name, (unsigned long long)fa[2],
              (unsigned long long)da[2], modes[want], (unsigned long long)fa[want], (unsigned long long)da[want]);
    }
    /* stride 2: the forward (phase planes, packed weights, conv3_flat) and the weight
     * gradient (bordered gy, conv3_wgrad: the forward's phase planes) direct, plus one
     * launch of the backward's own; the input gradient through columns; auto as for
     * stride 1 */
    /* (4 input channels: 36 taps, past conv_wgrad_small's, so that columns take a GEMM) */
    const cspec s2 = {"stride 2", false,  4,     4,    6, 30, 3, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 0, 0),
                      false,      V_NONE, false, false};
    uint64_t f2[3], w2[3], unused2;
    static const char *const modes2[3] = {"direct", "im2col", NULL};
    for (int m = 0; m < 3; m++) {
        set_env(ctx, "KILN_CONV_ALGO", modes2[m]);
        count_launches(ctx, &s2, &f2[m], &unused2);
        count_launches_w(ctx, &s2, true, &unused2, &w2[m]);
    }
    int want2 = wide ? 0 : 1;
    CHECK(f2[0] == 3 && w2[0] == 3 && f2[1] != 3 && w2[1] != 3 && f2[2] == f2[want2] && w2[2] == w2[want2],
          "stride 2: launches forward / weight gradient: direct %llu / %llu (expected 3 / 3), im2col %llu / %llu, "
          "auto %llu / %llu",
          (unsigned long long)f2[0], (unsigned long long)w2[0], (unsigned long long)f2[1], (unsigned long long)w2[1],
          (unsigned long long)f2[2], (unsigned long long)w2[2]);
    /* bad overrides fail the op, naming the variable */
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_full(ctx, 1.0f, 4, (int64_t[]){1, 2, 5, 5});
    kiln_tensor *w = kiln_full(ctx, 1.0f, 4, (int64_t[]){3, 2, 3, 3});
    kiln_conv2d_params p = direct_cases[0].p;
    static const char *const bad[][2] = {{"KILN_CONV_ALGO", "winograd"},       {"KILN_CONV3_PARAMS", "16,2"},
                                         {"KILN_CONV3_PARAMS", "12,1,1,8"},    {"KILN_CONV3_PARAMS", "16,1,9,8"},
                                         {"KILN_CONV3_PARAMS", "16,1,1,8x"},   {"KILN_CONV3_PARAMS", "16,1,1,8,3"},
                                         {"KILN_CONV3_PARAMS", "16,1,1,8,1,"}, {"KILN_CONV3_WGRAD", "rows"}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        set_env(ctx, bad[k][0], bad[k][1]);
        kiln_tensor *y = kiln_conv2d(ctx, x, w, NULL, &p);
        const char *msg = kiln_error_message(ctx);
        CHECK(y == NULL && strstr(msg, bad[k][0]) && strstr(msg, bad[k][1]) && strstr(msg, "kiln_conv2d"),
              "%s=%s: expected an error naming it, got %s", bad[k][0], bad[k][1], y ? "an output" : msg);
        kiln_error_clear(ctx);
        set_env(ctx, bad[k][0], NULL);
    }
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
}

/* y, d x, d w, d b of relu(conv2d(x, w, b)) with the seed gf, the op on x, w and b
 * converted to dt: fused (kiln__conv2d_relu) or as kiln_conv2d then kiln_relu; host copies
 * (f32) in res[0..4) (malloc'ed), the forward's launches in *launches. */
static bool conv_relu_pass(kiln_ctx *ctx, const cspec *s, kiln_dtype dt, bool fused, const float *const *hin,
                           const float *gf, float **res, uint64_t *launches) {
    int ho, wo;
    out_size(s, &ho, &wo);
    int64_t xs[4] = {s->n, s->c, s->h, s->w}, ws[4], ys[4] = {s->n, s->cout, ho, wo};
    wshape(s, ws);
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_from_host(ctx, hin[0], KILN_F32, 4, xs), *w = kiln_from_host(ctx, hin[1], KILN_F32, 4, ws);
    kiln_tensor *b = kiln_from_host(ctx, hin[2], KILN_F32, 1, (int64_t[]){s->cout});
    kiln_tensor *seed = kiln_from_host(ctx, gf, KILN_F32, 4, ys);
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor_set_requires_grad(w, true);
    kiln_tensor_set_requires_grad(b, true);
    kiln_tensor *xi = kiln_to_dtype(ctx, x, dt), *wi = kiln_to_dtype(ctx, w, dt), *bi = kiln_to_dtype(ctx, b, dt);
    kiln_ctx_stats st0, st1;
    kiln_ctx_stats_get(ctx, &st0);
    kiln_tensor *y = fused ? kiln__conv2d_relu(ctx, "test conv relu", xi, wi, bi, &s->p)
                           : kiln_relu(ctx, kiln_conv2d(ctx, xi, wi, bi, &s->p));
    kiln_ctx_stats_get(ctx, &st1);
    *launches = st1.launches - st0.launches;
    y = y ? kiln_to_dtype(ctx, y, KILN_F32) : NULL;
    bool ok = y && kiln_backward_ex(y, seed, false) == KILN_OK;
    CHECK(ok, "%s, %s %s: %s", s->name, kiln_dtype_name(dt), fused ? "fused" : "unfused", kiln_error_message(ctx));
    kiln_tensor *t[4] = {y, kiln_tensor_grad(x), kiln_tensor_grad(w), kiln_tensor_grad(b)};
    for (int i = 0; i < 4; i++) res[i] = ok && t[i] ? h_read(t[i]) : NULL;
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    return ok && res[0] && res[1] && res[2] && res[3];
}

/* relu(conv2d(x, w, b)) as one op (kiln__conv2d_relu, which Sequential runs for Conv2d then
 * ReLU): the forward one launch fewer than conv2d then relu, and y and every gradient bit
 * for bit theirs, through each route (the direct 3x3 kernels, stride 1 and 2; columns, in
 * one chunk per image too), in f32, f16 and bf16; about half the outputs clipped, so the
 * mask was exercised (test_nn's test_seq_fusion_half_zero has the sums that round to -0).
 * Without a bias it is the two ops. */
static void test_conv_relu(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 0); /* guard regions cost launches of their own */
    const cspec cases[3] = {
        {"3x3", false, 3, 4, 9, 20, 5, 3, 3, P3, true, V_NONE, false, false},
        {"3x3 stride 2", false, 2, 3, 9, 11, 4, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 0, 0), true, V_NONE, false, false},
        {"5x3 groups 2", false, 2, 4, 8, 7, 6, 5, 3, P(1, 1, 1, 0, 1, 1, 2, 0, 0), true, V_NONE, false, false}};
    static const char *const algos[3] = {"direct", "im2col", "im2col"};
    for (int a = 0; a < 3; a++) {
        set_env(ctx, "KILN_CONV_ALGO", algos[a]);
        kiln__hooks_of(ctx)->conv_budget = a == 2 ? 1 : 0; /* one image a chunk */
        for (int k = 0; k < 3; k++) {
            const cspec *s = &cases[k];
            int ho, wo;
            out_size(s, &ho, &wo);
            int64_t n[4] = {(int64_t)s->n * s->cout * ho * wo, (int64_t)s->n * s->c * s->h * s->w,
                            (int64_t)s->cout * (s->c / s->p.groups) * s->kh * s->kw, s->cout};
            float *hin[3], *gf = malloc(sizeof(float) * (size_t)n[0]);
            for (int i = 0; i < 3; i++) {
                hin[i] = malloc(sizeof(float) * (size_t)n[i + 1]);
                h_fill(hin[i], n[i + 1], -1, 1);
            }
            h_fill(gf, n[0], -1, 1);
            for (int d = 0; d < 3; d++) { /* f32, f16, bf16 */
                kiln_dtype dt = d == 0 ? KILN_F32 : d == 1 ? KILN_F16 : KILN_BF16;
                const char *dn = kiln_dtype_name(dt);
                float *fu[4] = {0}, *un[4] = {0};
                uint64_t lf = 0, lu = 0;
                bool ok = conv_relu_pass(ctx, s, dt, true, (const float *const *)hin, gf, fu, &lf) &&
                          conv_relu_pass(ctx, s, dt, false, (const float *const *)hin, gf, un, &lu);
                CHECK(ok && lf + 1 == lu,
                      "%s %s [%s]: the forward took %llu launches fused, %llu unfused (want one fewer)", s->name, dn,
                      algos[a], (unsigned long long)lf, (unsigned long long)lu);
                static const char *const what[4] = {"y", "d x", "d w", "d b"};
                for (int i = 0; ok && i < 4; i++) {
                    int64_t bad = 0, zeros = 0;
                    for (int64_t e = 0; e < n[i]; e++) {
                        bad += memcmp(&fu[i][e], &un[i][e], sizeof(float)) != 0;
                        zeros += fu[i][e] == 0.0f;
                    }
                    CHECK(bad == 0, "%s %s [%s]: %s fused differs from unfused in %lld of %lld elements", s->name, dn,
                          algos[a], what[i], (long long)bad, (long long)n[i]);
                    if (i == 0)
                        CHECK(zeros > n[0] / 8 && zeros < n[0], "%s %s [%s]: %lld of %lld outputs are 0", s->name, dn,
                              algos[a], (long long)zeros, (long long)n[0]);
                }
                for (int i = 0; i < 4; i++) free(fu[i]), free(un[i]);
            }
            for (int i = 0; i < 3; i++) free(hin[i]);
            free(gf);
        }
    }
    kiln__hooks_of(ctx)->conv_budget = 0;
    set_env(ctx, "KILN_CONV_ALGO", NULL);
    /* no bias: conv2d then relu */
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_full(ctx, 0.5f, 4, (int64_t[]){1, 2, 5, 5});
    kiln_tensor *w = kiln_full(ctx, -0.25f, 4, (int64_t[]){3, 2, 3, 3});
    kiln_conv2d_params p = kiln_conv2d_defaults();
    kiln_tensor *y = kiln__conv2d_relu(ctx, "test conv relu", x, w, NULL, &p);
    float *got = y ? h_read(y) : NULL;
    bool zero = got != NULL;
    for (int e = 0; got && e < 27; e++) zero = zero && got[e] == 0.0f;
    CHECK(y && kiln_tensor_ndim(y) == 4 && zero, "no bias: expected relu of a negative convolution (zeros): %s",
          y ? "other values" : kiln_error_message(ctx));
    free(got);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    kiln__set_guard(ctx, 3);
}

/* A new f32 leaf requiring grad of shape sh with values in [-1, 1) that dt holds exactly. */
static kiln_tensor *half_exact_leaf(kiln_ctx *ctx, kiln_dtype dt, int nd, const int64_t *sh) {
    int64_t n = h_numel(nd, sh);
    float *h = malloc(sizeof(float) * (size_t)n);
    h_fill(h, n, -1, 1);
    kiln_tensor *t = kiln_from_host(ctx, h, KILN_F32, nd, sh);
    free(h);
    kiln_tensor *r = kiln_to_dtype(ctx, kiln_to_dtype(ctx, t, dt), KILN_F32);
    kiln_tensor_set_requires_grad(r, true);
    return r;
}

/* One pass of s in dtype dt (the op on halves converted from f32 leaves, the leaves' views
 * as the case says) or f32 (dt KILN_F32, on the same values): the output (host copy of its
 * raw bits, rounded to half for f32), the f32 gradients of the leaves x, w, b (host
 * copies), the forward's launches and library calls in *launches. */
static bool half_pass(kiln_ctx *ctx, const cspec *s, kiln_dtype dt, kiln_dtype half, kiln_tensor *const *leaf,
                      kiln_tensor *seed, uint16_t *y16, float **res, uint64_t *launches) {
    int64_t xs[4] = {s->n, s->c, s->h, s->w};
    kiln_scope_begin(ctx);
    for (int i = 0; i < 3; i++) kiln_tensor_clear_grad(leaf[i]);
    kiln_tensor *xin = view_of(ctx, dt == KILN_F32 ? leaf[0] : kiln_to_dtype(ctx, leaf[0], dt), s->xview, xs);
    kiln_tensor *w = dt == KILN_F32 ? leaf[1] : kiln_to_dtype(ctx, leaf[1], dt);
    kiln_tensor *win = s->wview ? kiln_transpose(ctx, w, 2, 3) : w; /* (the leaf is stored [.., kw, kh]) */
    kiln_tensor *b = !s->bias ? NULL : dt == KILN_F32 ? leaf[2] : kiln_to_dtype(ctx, leaf[2], dt);
    kiln_ctx_stats st0, st1;
    kiln_ctx_stats_get(ctx, &st0);
    kiln_tensor *y = run_op(ctx, s, xin, win, b);
    kiln_ctx_stats_get(ctx, &st1);
    *launches = st1.launches + st1.library_calls - st0.launches - st0.library_calls;
    bool ok = y && kiln_tensor_dtype(y) == dt;
    kiln_tensor *loss = ok ? kiln_sum(ctx, kiln_mul(ctx, kiln_to_dtype(ctx, y, KILN_F32), seed), 0, NULL, false) : NULL;
    ok = ok && kiln_backward(loss) == KILN_OK;
    kiln_tensor *yr = ok ? (dt == KILN_F32 ? kiln_to_dtype(ctx, y, half) : y) : NULL;
    ok = ok && yr && kiln_to_host(yr, y16, sizeof(uint16_t) * (size_t)kiln_tensor_numel(yr)) == KILN_OK;
    for (int i = 0; i < 3; i++) res[i] = ok && kiln_tensor_grad(leaf[i]) ? h_read(kiln_tensor_grad(leaf[i])) : NULL;
    CHECK(ok, "%s in %s: %s", s->name, kiln_dtype_name(dt), kiln_error_message(ctx));
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    return ok;
}

/* conv2d and conv_transpose2d of f16 and bf16 inputs run in half (the KILN_HALF build of
 * cl_kernels/conv.cl: the kernels that read the input, weight and bias and write the
 * output convert as they move elements; the arithmetic is f32's): each output is the f32
 * op's on the same values rounded once, bit for bit, and the f32 gradients are f32's bit
 * for bit, through every route (the direct 3x3 kernels at stride 1 and 2, conv3_bcast
 * and conv3_wgradc forced, columns in one chunk and per image, CLBlast with conv_wgrad_small), over input
 * and weight views and rows longer than col2im's 64-float pieces; and the forward launches
 * no conversion of the input or the output: at most one launch more than f32's (the
 * weight's f32 copy for a GEMM), and a permute per image where f32's GEMM reads or writes
 * the tensor itself. */
static void test_half(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 0); /* guard regions cost launches of their own */
    static const cspec hcases[] = {
        {"3x3, transposed-view input", false, 3, 4, 9, 20, 5, 3, 3, P3, true, V_TRANSPOSE_HW, false, false},
        {"3x3 stride 2", false, 2, 3, 9, 11, 4, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 0, 0), true, V_NONE, false, false},
        {"5x3 groups 2, sliced input", false, 2, 4, 8, 7, 6, 5, 3, P(1, 1, 1, 0, 1, 1, 2, 0, 0), true, V_SLICE_W, false,
         false},
        {"1x1", false, 3, 5, 4, 6, 7, 1, 1, P1, true, V_NONE, false, false},
        {"3x2, weight view", false, 2, 5, 6, 7, 4, 3, 2, P1, true, V_NONE, true, false},
        {"batch 1, no bias", false, 1, 4, 7, 6, 4, 3, 3, P(1, 1, 1, 1, 1, 1, 2, 0, 0), false, V_NONE, false, false},
        {"T stride 2 pad 1 output_padding 1", true, 3, 4, 4, 5, 3, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 1, 1), true, V_NONE,
         false, false},
        {"T 3x3, 70 wide, channels-last input", true, 2, 5, 6, 70, 4, 3, 3, P3, true, V_CHANNELS_LAST, false, false},
        {"T batch 1, no bias", true, 1, 3, 4, 5, 2, 3, 3, P(2, 2, 1, 1, 1, 1, 1, 1, 0), false, V_NONE, false, false}};
    static const char *const algos[5] = {"direct", "im2col", "im2col", "im2col", "direct"};
    bool cpu = kiln_ctx_device(ctx)->type == KILN_DEVICE_CPU;
    for (int a = 0; a < 5; a++) {
        set_env(ctx, "KILN_CONV_ALGO", algos[a]);
        set_env(ctx, "KILN_CONV3_PARAMS", a == 4 ? "4,2,5,1,2" : NULL); /* conv3_bcast */
        set_env(ctx, "KILN_CONV3_WGRAD", a == 4 ? "channels" : NULL);   /* conv3_tocl, conv3_wgradc */
        kiln__hooks_of(ctx)->conv_budget = a == 2 ? 1 : 0;              /* one image a chunk */
        kiln__hooks_of(ctx)->gemm_own = a == 3 ? (cpu ? -1 : 1) : 0;    /* the other GEMM route */
        const char *route = a == 2   ? "im2col, one image a chunk"
                            : a == 3 ? "im2col, the other GEMM"
                            : a == 4 ? "direct, conv3_bcast, conv3_wgradc"
                                     : algos[a];
        for (int d = 0; d < 2; d++) {
            kiln_dtype dt = d ? KILN_BF16 : KILN_F16;
            for (size_t k = 0; k < sizeof hcases / sizeof hcases[0]; k++) {
                const cspec *s = &hcases[k];
                int ho, wo;
                out_size(s, &ho, &wo);
                int64_t xs[4], ws[4], ys[4] = {s->n, s->cout, ho, wo}, ny = h_numel(4, ys);
                view_base(s->xview, (int64_t[]){s->n, s->c, s->h, s->w}, xs);
                wshape(s, ws);
                if (s->wview) ws[2] = s->kw, ws[3] = s->kh;
                kiln_scope_begin(ctx);
                kiln_tensor *leaf[3] = {half_exact_leaf(ctx, dt, 4, xs), half_exact_leaf(ctx, dt, 4, ws),
                                        half_exact_leaf(ctx, dt, 1, (int64_t[]){s->cout})};
                float *hs = malloc(sizeof(float) * (size_t)ny);
                h_fill(hs, ny, -1, 1);
                kiln_tensor *seed = kiln_from_host(ctx, hs, KILN_F32, 4, ys);
                free(hs);
                uint16_t *yh = malloc(sizeof(uint16_t) * (size_t)ny), *yf = malloc(sizeof(uint16_t) * (size_t)ny);
                float *gh[3] = {0}, *gf[3] = {0};
                uint64_t lh = 0, lf = 0;
                bool ok = half_pass(ctx, s, dt, dt, leaf, seed, yh, gh, &lh) &&
                          half_pass(ctx, s, KILN_F32, dt, leaf, seed, yf, gf, &lf);
                char what[200];
                snprintf(what, sizeof what, "%s %s [%s]", s->name, kiln_dtype_name(dt), route);
                if (ok) {
                    int64_t bad = 0;
                    for (int64_t e = 0; e < ny; e++) bad += yh[e] != yf[e];
                    CHECK(bad == 0, "%s: %lld of %lld outputs are not f32's rounded once", what, (long long)bad,
                          (long long)ny);
                    int64_t n[3] = {h_numel(4, xs), h_numel(4, ws), s->cout};
                    static const char *const gname[3] = {"d x", "d w", "d b"};
                    for (int i = 0; i < 3; i++)
                        CHECK((!gh[i] && !gf[i] && !s->bias && i == 2) ||
                                  (gh[i] && gf[i] && !memcmp(gh[i], gf[i], sizeof(float) * (size_t)n[i])),
                              "%s: %s differs from f32's", what, gname[i]);
                    /* f32's GEMM writes one image without bias, and reads conv_transpose2d's
                     * contiguous input, in place: halves take a permute per image there */
                    bool inplace = (a == 2 || s->n == 1) && (s->transpose ? s->xview == V_NONE : !s->bias);
                    uint64_t most = lf + 1 + (inplace ? (uint64_t)s->n : 0);
                    CHECK(lh <= most, "%s: the forward took %llu launches, f32's %llu (want at most %llu)", what,
                          (unsigned long long)lh, (unsigned long long)lf, (unsigned long long)most);
                }
                for (int i = 0; i < 3; i++) free(gh[i]), free(gf[i]);
                free(yh);
                free(yf);
                kiln_scope_end(ctx);
                kiln_error_clear(ctx);
            }
        }
    }
    kiln__hooks_of(ctx)->conv_budget = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
    set_env(ctx, "KILN_CONV_ALGO", NULL);
    set_env(ctx, "KILN_CONV3_PARAMS", NULL);
    set_env(ctx, "KILN_CONV3_WGRAD", NULL);
    kiln__set_guard(ctx, 3);
}

static void test_device(kiln_ctx *ctx) {
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln__set_guard(ctx, 3);
    test_table(ctx);
    test_partial_grads(ctx);
    test_chunks(ctx);
    test_chunk_align(ctx);
    test_determinism(ctx);
    test_golden(ctx);
    test_empty_batch(ctx);
    test_errors(ctx);
    test_direct(ctx);
    test_conv_relu(ctx);
    test_half(ctx);
    /* The other GEMM route: kiln's own kernels (src/ops/gemm.c) on CPUs by default, CLBlast
     * elsewhere. Each chooses its own layout (padded rows, split parts, conv_wgrad_small for
     * few taps only with CLBlast), so both are checked on every device. */
    bool cpu = kiln_ctx_device(ctx)->type == KILN_DEVICE_CPU;
    kiln__hooks_of(ctx)->gemm_own = cpu ? -1 : 1;
    g_gemm = cpu ? " [CLBlast]" : " [kiln's own GEMM kernels]";
    test_table(ctx);
    test_chunks(ctx);
    /* Every parameter set of kiln's own kernels (src/ops/gemm.c's table, the odd test-only
     * sets too): the convolutions' products reach their blocks' edges in other places */
    kiln__hooks_of(ctx)->gemm_own = 1;
    for (int s = 0; s < KILN__GEMM_SETS; s++) {
        char tag[64];
        snprintf(tag, sizeof tag, " [GEMM parameter set %s]", kiln__gemm_sets[s].name);
        g_gemm = tag;
        kiln__hooks_of(ctx)->gemm_params = s + 1;
        test_table(ctx);
    }
    kiln__hooks_of(ctx)->gemm_params = 0;
    kiln__hooks_of(ctx)->gemm_own = 0;
    g_gemm = "";
    char msg[256] = "";
    CHECK(kiln__check_guards(ctx, msg, sizeof msg) == 0, "guard regions overwritten: %s", msg);
    kiln__set_guard(ctx, 0);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "%lld tensors leaked", (long long)(kiln_ctx_num_tensors(ctx) - before));
}

int main(void) {
    H_FOR_EACH_DEVICE(test_device);
    return h_finish();
}
