/* tests/test_half.c - half-precision storage: the f16/bf16 dtypes' host data, fills and
 * items, kiln_to_dtype against a plain-C reference (double arithmetic, independent of the
 * library's bit manipulation) and against PyTorch (tests/golden/cast.safetensors), every
 * f16 value widened, and its gradient. */
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "golden.h"

/* x rounded to a float format with `mant` fraction bits, smallest normal exponent emin and
 * largest finite value max, to nearest with ties to even (rint in the default rounding
 * mode), in double arithmetic: overflow past max is inf, as IEEE's round-to-nearest. */
static double ref_round(double x, int mant, int emin, double max) {
    if (isnan(x) || isinf(x) || x == 0) return x;
    int e;
    frexp(x, &e); /* |x| in [2^(e-1), 2^e) */
    e -= 1;
    if (e < emin) e = emin; /* denormals share the smallest normal's quantum */
    double q = ldexp(1.0, e - mant);
    double r = rint(x / q) * q;
    if (fabs(r) > max) return x > 0 ? INFINITY : -INFINITY;
    return r;
}
static double ref_f16(float x) { return ref_round(x, 10, -14, 65504.0); }
static double ref_bf16(float x) { return ref_round(x, 7, -126, 0x1.FEp127); }

static float bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* f32 values the conversions must get right: edge cases, then random bit patterns. */
static int edge_values(float *v, int cap) {
    static const uint32_t bits[] = {0x00000000u, 0x80000000u, 0x3F800000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u,
                                    0xFFC12345u, 0x477FE000u, 0x477FEFFFu, 0x477FF000u, 0x477FF001u, 0x47800000u,
                                    0x33000000u, 0x33000001u, 0x337FFFFFu, 0x33800000u, 0x33C00000u, 0x34200000u,
                                    0x387FE000u, 0x387FF000u, 0x38800000u, 0x3F801000u, 0x3F803000u, 0x3F808000u,
                                    0x3F818000u, 0x7F7F7FFFu, 0x7F7F8000u, 0x7F7FFFFFu, 0x00000001u, 0x80400000u};
    int n = 0;
    for (size_t i = 0; i < sizeof bits / sizeof bits[0] && n < cap; i++) v[n++] = bits_f(bits[i]);
    uint32_t s = 12345u;
    while (n < cap) {
        s = s * 1664525u + 1013904223u;
        v[n++] = bits_f(s);
    }
    return n;
}

static bool same_value(double got, double want) {
    if (isnan(want)) return isnan(got);
    return got == want && signbit(got) == signbit(want);
}

static void test_host_conversions(void) {
    float v[4096];
    int n = edge_values(v, 4096), bad16 = 0, badbf = 0;
    for (int i = 0; i < n; i++) {
        /* f32 denormals: the reference rounds them like any value (to 0 in f16) */
        if (!same_value(kiln_f16_to_f32(kiln_f32_to_f16(v[i])), ref_f16(v[i])) && bad16++ == 0)
            fprintf(stderr, "  f16 of %a: got %a, want %a\n", (double)v[i],
                    (double)kiln_f16_to_f32(kiln_f32_to_f16(v[i])), ref_f16(v[i]));
        if (!same_value(kiln_bf16_to_f32(kiln_f32_to_bf16(v[i])), ref_bf16(v[i])) && badbf++ == 0)
            fprintf(stderr, "  bf16 of %a: got %a, want %a\n", (double)v[i],
                    (double)kiln_bf16_to_f32(kiln_f32_to_bf16(v[i])), ref_bf16(v[i]));
    }
    CHECK(bad16 == 0, "host f32 -> f16: %d of %d values differ from the reference", bad16, n);
    CHECK(badbf == 0, "host f32 -> bf16: %d of %d values differ from the reference", badbf, n);
    /* widening is exact and narrowing it back gives the same bits, for every f16 */
    int badw = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kiln_f16_to_f32((uint16_t)h);
        bool nan = ((h >> 10) & 0x1F) == 0x1F && (h & 0x3FF);
        if (nan ? !isnan(f) : kiln_f32_to_f16(f) != h) badw++;
    }
    CHECK(badw == 0, "f16 -> f32 -> f16 changed %d values", badw);
    CHECK(isnan(kiln_bf16_to_f32(kiln_f32_to_bf16(NAN))) && kiln_f32_to_bf16(-NAN) >> 15 == 1,
          "bf16 keeps NaN and its sign");
}

/* a device conversion of n host floats through dtype and back, compared with ref */
static void device_roundtrip(kiln_ctx *ctx, const char *what, const float *v, int n, kiln_dtype dt,
                             double (*ref)(float)) {
    kiln_scope_begin(ctx);
    kiln_tensor *x = kiln_from_host(ctx, v, KILN_F32, 1, (int64_t[]){n});
    kiln_tensor *h = kiln_to_dtype(ctx, x, dt);
    kiln_tensor *y = kiln_to_dtype(ctx, h, KILN_F32);
    CHECK(h && y && kiln_tensor_dtype(h) == dt, "%s: %s", what, kiln_error_message(ctx));
    if (y) {
        float *got = h_read(y);
        uint16_t *raw = malloc(sizeof(uint16_t) * (size_t)n);
        CHECK(kiln_to_host(h, raw, sizeof(uint16_t) * (size_t)n) == KILN_OK, "%s: to_host of halves", what);
        int bad = 0, badraw = 0;
        for (int i = 0; i < n; i++) {
            if (!same_value(got[i], ref(v[i])) && bad++ == 0)
                fprintf(stderr, "  %s: %a gave %a, reference %a\n", what, (double)v[i], (double)got[i], ref(v[i]));
            uint16_t want = dt == KILN_F16 ? kiln_f32_to_f16(v[i]) : kiln_f32_to_bf16(v[i]);
            bool nan = isnan(v[i]);
            badraw +=
                nan ? !isnan(dt == KILN_F16 ? kiln_f16_to_f32(raw[i]) : kiln_bf16_to_f32(raw[i])) : raw[i] != want;
        }
        CHECK(bad == 0, "%s: %d of %d values differ from the reference", what, bad, n);
        CHECK(badraw == 0, "%s: %d raw halves differ from the host conversion", what, badraw);
        free(got);
        free(raw);
    }
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
}

static void test_device_conversions(kiln_ctx *ctx) {
    static float v[4096];
    int n = edge_values(v, 4096);
    device_roundtrip(ctx, "f32 -> f16 -> f32", v, n, KILN_F16, ref_f16);
    device_roundtrip(ctx, "f32 -> bf16 -> f32", v, n, KILN_BF16, ref_bf16);

    /* every f16 widened on the device, and f16 <-> bf16 */
    static uint16_t all[65536];
    for (uint32_t i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    kiln_scope_begin(ctx);
    kiln_tensor *h = kiln_from_host(ctx, all, KILN_F16, 1, (int64_t[]){65536});
    kiln_tensor *f = kiln_to_dtype(ctx, h, KILN_F32);
    kiln_tensor *b = kiln_to_dtype(ctx, h, KILN_BF16);
    CHECK(f && b, "widening every f16: %s", kiln_error_message(ctx));
    if (f && b) {
        float *got = h_read(f);
        uint16_t *gb = malloc(sizeof all);
        kiln_to_host(b, gb, sizeof all);
        int bad = 0, badb = 0;
        for (uint32_t i = 0; i < 65536; i++) {
            float want = kiln_f16_to_f32((uint16_t)i);
            bad += !same_value(got[i], want);
            badb += !same_value(kiln_bf16_to_f32(gb[i]), ref_bf16(want));
        }
        CHECK(bad == 0, "f16 -> f32 on the device: %d of 65536 values differ", bad);
        CHECK(badb == 0, "f16 -> bf16 on the device: %d of 65536 values differ from the reference", badb);
        free(got);
        free(gb);
    }
    kiln_scope_end(ctx);
    CHECK_OK(ctx);
}

static void test_golden(kiln_ctx *ctx) {
    golden g;
    if (!golden_open(&g, "cast")) return;
    const golden_tensor *x = golden_get(&g, "to_dtype.x"), *r16 = golden_get(&g, "to_dtype.f16"),
                        *rbf = golden_get(&g, "to_dtype.bf16");
    if (x && r16 && rbf) {
        kiln_scope_begin(ctx);
        kiln_tensor *t = golden_upload(ctx, x);
        golden_compare_scaled("golden to_dtype f16", kiln_to_dtype(ctx, kiln_to_dtype(ctx, t, KILN_F16), KILN_F32), r16,
                              NULL, 0, 0, 0);
        golden_compare_scaled("golden to_dtype bf16", kiln_to_dtype(ctx, kiln_to_dtype(ctx, t, KILN_BF16), KILN_F32),
                              rbf, NULL, 0, 0, 0);
        kiln_scope_end(ctx);
    }
    golden_close(&g);
    CHECK_OK(ctx);
}

/* host data, fills and items of half tensors; a view converted */
static void test_host_io(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    uint16_t raw[6] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00, 0x8000}; /* 1, -2, 65504, 2^-24, inf, -0 */
    kiln_tensor *h = kiln_from_host(ctx, raw, KILN_F16, 2, (int64_t[]){2, 3});
    uint16_t back[6] = {0};
    CHECK(h && kiln_to_host(h, back, sizeof back) == KILN_OK && !memcmp(raw, back, sizeof raw),
          "f16 host data round trip: %s", kiln_error_message(ctx));
    CHECK(kiln_tensor_item(kiln_slice(ctx, kiln_reshape(ctx, h, 1, (int64_t[]){6}), 0, 2, 3, 1)) == 65504.0f,
          "item of an f16 view");
    /* a transposed f16 view to f32: the strided kernel */
    kiln_tensor *tf = kiln_to_dtype(ctx, kiln_transpose(ctx, h, 0, 1), KILN_F32);
    float *got = tf ? h_read(tf) : NULL;
    const float want[6] = {1, 0x1p-24f, -2, INFINITY, 65504, -0.0f};
    CHECK(got && !memcmp(got, want, sizeof want), "f16 transposed view to f32");
    free(got);

    kiln_tensor *b = kiln_empty(ctx, KILN_BF16, 1, (int64_t[]){5});
    CHECK(b && kiln_fill(b, 1.00390625f) == KILN_OK, "fill bf16: %s", kiln_error_message(ctx));
    CHECK(kiln_tensor_item(kiln_slice(ctx, b, 0, 4, 5, 1)) == 1.0f, "fill bf16 rounds a tie to even (1 + 2^-8 -> 1)");
    kiln_tensor *f = kiln_empty(ctx, KILN_F16, 2, (int64_t[]){3, 4});
    CHECK(f && kiln_fill(kiln_slice(ctx, f, 1, 1, 4, 2), 70000.0f) == KILN_OK &&
              kiln_fill(kiln_slice(ctx, f, 1, 0, 4, 2), 0.1f) == KILN_OK,
          "fill f16 views: %s", kiln_error_message(ctx));
    uint16_t fh[12];
    CHECK(f && kiln_to_host(f, fh, sizeof fh) == KILN_OK, "to_host f16");
    int bad = 0;
    for (int i = 0; i < 12; i++) bad += fh[i] != (i % 2 ? 0x7C00 : kiln_f32_to_f16(0.1f));
    CHECK(bad == 0, "fill f16: %d wrong values (0.1 rounded, 70000 overflows to inf)", bad);
    uint16_t small[2];
    CHECK(kiln_to_host(f, small, sizeof small) == KILN_ERR_BUFFER_TOO_SMALL &&
              strstr(kiln_error_message(ctx), "f16") != NULL,
          "to_host of f16 into too small a buffer names the dtype: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
    CHECK(strcmp(kiln_dtype_name(KILN_BF16), "bf16") == 0 && kiln_dtype_size(KILN_BF16) == 2 &&
              kiln_dtype_is_half(KILN_F16) && kiln_dtype_is_half(KILN_BF16) && !kiln_dtype_is_half(KILN_F32),
          "bf16's name and size");
}

/* the conversion's gradient, and its errors */
static void test_grad_errors(kiln_ctx *ctx) {
    kiln_scope_begin(ctx);
    float xv[4] = {1.5f, -2.0f, 3.25f, 0.1f};
    kiln_tensor *x = kiln_from_host(ctx, xv, KILN_F32, 1, (int64_t[]){4});
    kiln_tensor_set_requires_grad(x, true);
    kiln_tensor *w = kiln_from_host(ctx, (float[]){1, 2, 3, 4}, KILN_F32, 1, (int64_t[]){4});
    kiln_tensor *y = kiln_to_dtype(ctx, kiln_to_dtype(ctx, kiln_to_dtype(ctx, x, KILN_F16), KILN_BF16), KILN_F32);
    kiln_tensor *same = kiln_to_dtype(ctx, y, KILN_F32);
    CHECK(same && kiln_tensor_has_grad_fn(same), "to_dtype to its own dtype records a node");
    kiln_tensor *l = kiln_sum(ctx, kiln_mul(ctx, same, w), 0, NULL, false);
    CHECK(l && kiln_backward(l) == KILN_OK, "backward through conversions: %s", kiln_error_message(ctx));
    kiln_tensor *g = kiln_tensor_grad(x);
    float *gh = g ? h_read(g) : NULL;
    CHECK(gh && gh[0] == 1 && gh[1] == 2 && gh[2] == 3 && gh[3] == 4 && kiln_tensor_dtype(g) == KILN_F32,
          "the gradient passes through the conversions unchanged, as f32");
    free(gh);
    kiln_tensor *h = kiln_to_dtype(ctx, x, KILN_F16);
    CHECK(kiln_tensor_set_requires_grad(kiln_detach(ctx, h), true) == KILN_ERR_DTYPE,
          "an f16 leaf cannot require grad");
    kiln_error_clear(ctx);

    kiln_tensor *i = kiln_from_host(ctx, (int32_t[]){1, 2}, KILN_I32, 1, (int64_t[]){2});
    CHECK(kiln_to_dtype(ctx, i, KILN_F16) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE &&
              strstr(kiln_error_message(ctx), "kiln_to_dtype") && strstr(kiln_error_message(ctx), "i32"),
          "to_dtype of i32 fails naming the op and dtype: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_to_dtype(ctx, x, KILN_U8) == NULL && strstr(kiln_error_message(ctx), "u8"),
          "to_dtype to u8 fails naming the dtype: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_to_dtype(ctx, x, (kiln_dtype)99) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE,
          "to_dtype to an invalid dtype");
    kiln_error_clear(ctx);
    CHECK(kiln_to_dtype(ctx, NULL, KILN_F16) == NULL && kiln_error_status(ctx) == KILN_ERR_NULL, "to_dtype of NULL: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

/* safetensors: half tensors written as F16/BF16 and read back bit for bit, widened into
 * f32 tensors and f32 parameters, narrowed from f32 entries */
static void test_safetensors(kiln_ctx *ctx) {
    char dir[] = "/tmp/kiln_half_XXXXXX", path[64];
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp failed");
        return;
    }
    snprintf(path, sizeof path, "%s/half.safetensors", dir);
    kiln_scope_begin(ctx);
    static float v[600];
    edge_values(v, 600);
    for (int i = 0; i < 600; i++)
        if (isnan(v[i])) v[i] = 1.0f; /* NaN payloads are the device's business: compared apart */
    kiln_tensor *x = kiln_from_host(ctx, v, KILN_F32, 2, (int64_t[]){20, 30});
    kiln_tensor *xh = kiln_to_dtype(ctx, kiln_transpose(ctx, x, 0, 1), KILN_F16); /* [30, 20] */
    kiln_tensor *xb = kiln_to_dtype(ctx, x, KILN_BF16);
    uint16_t hh[600], hb[600], got[600];
    kiln_to_host(xh, hh, sizeof hh);
    kiln_to_host(xb, hb, sizeof hb);
    kiln_named_tensor nt[3] = {{.tensor = xh}, {.tensor = xb}, {.tensor = x}};
    snprintf(nt[0].name, sizeof nt[0].name, "weight");
    snprintf(nt[1].name, sizeof nt[1].name, "b16");
    snprintf(nt[2].name, sizeof nt[2].name, "f32");
    CHECK(kiln_safetensors_save(ctx, path, 3, nt, 0, NULL) == KILN_OK, "save f16/bf16: %s", kiln_error_message(ctx));
    kiln_safetensors *f = kiln_safetensors_open(ctx, path);
    CHECK(f != NULL, "open: %s", kiln_error_message(ctx));
    if (f) {
        int kh = kiln_safetensors_find(f, "weight"), kb = kiln_safetensors_find(f, "b16"),
            kf = kiln_safetensors_find(f, "f32");
        CHECK(!strcmp(kiln_safetensors_dtype(f, kh), "F16") && !strcmp(kiln_safetensors_dtype(f, kb), "BF16") &&
                  !strcmp(kiln_safetensors_dtype(f, kf), "F32"),
              "dtypes on disk: %s %s %s", kiln_safetensors_dtype(f, kh), kiln_safetensors_dtype(f, kb),
              kiln_safetensors_dtype(f, kf));
        kiln_tensor *rh = kiln_safetensors_tensor_as(f, kh, KILN_F16);
        kiln_tensor *rb = kiln_safetensors_tensor_as(f, kb, KILN_BF16);
        CHECK(rh && kiln_tensor_dtype(rh) == KILN_F16 && kiln_tensor_shape(rh)[0] == 30 &&
                  kiln_to_host(rh, got, sizeof got) == KILN_OK && !memcmp(got, hh, sizeof hh),
              "F16 entry read as f16 keeps every bit: %s", kiln_error_message(ctx));
        CHECK(rb && kiln_to_host(rb, got, sizeof got) == KILN_OK && !memcmp(got, hb, sizeof hb),
              "BF16 entry read as bf16 keeps every bit");
        /* widened into f32: exact */
        kiln_tensor *wf = kiln_safetensors_tensor(f, kh);
        float *w = wf ? h_read(wf) : NULL;
        int bad = 0;
        for (int i = 0; w && i < 600; i++) bad += !same_value(w[i], kiln_f16_to_f32(hh[i]));
        CHECK(w && bad == 0, "F16 entry read as f32: %d values differ", bad);
        free(w);
        /* the f32 entry narrowed on reading, f16 entry to bf16 */
        kiln_tensor *nf = kiln_safetensors_tensor_as(f, kf, KILN_BF16);
        CHECK(nf && kiln_to_host(nf, got, sizeof got) == KILN_OK && !memcmp(got, hb, sizeof hb),
              "F32 entry read as bf16 rounds as kiln_to_dtype");
        kiln_tensor *hb2 = kiln_safetensors_tensor_as(f, kh, KILN_BF16);
        bad = 0;
        if (hb2 && kiln_to_host(hb2, got, sizeof got) == KILN_OK)
            for (int i = 0; i < 600; i++) bad += got[i] != kiln_f32_to_bf16(kiln_f16_to_f32(hh[i]));
        CHECK(hb2 && bad == 0, "F16 entry read as bf16: %d values differ", bad);
        CHECK(kiln_safetensors_tensor_as(f, kh, KILN_I32) == NULL && kiln_error_status(ctx) == KILN_ERR_DTYPE &&
                  strstr(kiln_error_message(ctx), "'weight' (F16)") && strstr(kiln_error_message(ctx), "i32"),
              "F16 entry as i32 fails naming the tensor and dtypes: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        CHECK(kiln_safetensors_tensor_as(f, 7, KILN_F16) == NULL && kiln_error_status(ctx) == KILN_ERR_INVALID_ARGUMENT,
              "entry out of range: %s", kiln_error_message(ctx));
        kiln_error_clear(ctx);
        kiln_safetensors_close(f);
    }
    CHECK(kiln_safetensors_tensor_as(NULL, 0, KILN_F16) == NULL && kiln_last_status() == KILN_ERR_NULL,
          "tensor_as of a NULL file");
    /* an F16 file into an f32 model: linear(20 -> 30) has weight [30, 20] */
    kiln_module *lin = kiln_nn_linear(ctx, 20, 30, false);
    kiln_load_report rep;
    CHECK(lin && kiln_module_load(lin, path, false, &rep) == KILN_OK && rep.loaded == 1,
          "F16 weights into an f32 linear layer: %s", kiln_error_message(ctx));
    kiln_tensor *p[2];
    if (lin && kiln_module_parameters(lin, p, 2) == 1) {
        float *w = h_read(p[0]);
        int bad = 0;
        for (int i = 0; i < 600; i++) bad += !same_value(w[i], kiln_f16_to_f32(hh[i]));
        CHECK(kiln_tensor_dtype(p[0]) == KILN_F32 && bad == 0, "loaded f32 weights: %d differ from the f16 file", bad);
        free(w);
    }
    kiln_module_free(lin);
    kiln_scope_end(ctx);
    kiln_error_clear(ctx);
    unlink(path);
    rmdir(dir);
}

/* ---- half variants of ops against their f32 results ------------------------------------- */

static const kiln_dtype half_dts[2] = {KILN_F16, KILN_BF16};

/* One rounding to dt: |got - ref| <= u |ref| + (the smallest subnormal) + extra, with u the
 * unit roundoff (2^-11 f16, 2^-8 bf16); a ref past f16's range must give inf. */
static void cmp_half(const char *what, kiln_ctx *ctx, kiln_tensor *h, kiln_tensor *r32, kiln_dtype dt, double extra) {
    CHECK(h && r32, "%s: %s", what, kiln_error_message(ctx));
    if (!h || !r32) {
        kiln_error_clear(ctx);
        return;
    }
    CHECK(kiln_tensor_dtype(h) == dt, "%s: output dtype %s, want %s", what, kiln_dtype_name(kiln_tensor_dtype(h)),
          kiln_dtype_name(dt));
    float *g = h_read(kiln_to_dtype(ctx, h, KILN_F32)), *r = h_read(r32);
    int64_t n = kiln_tensor_numel(h), bad = 0;
    double u = dt == KILN_F16 ? 0x1p-11 : 0x1p-8, tiny = dt == KILN_F16 ? 0x1p-24 : 0x1p-133;
    for (int64_t i = 0; g && r && i < n; i++) {
        double want =
            dt == KILN_F16 ? kiln_f16_to_f32(kiln_f32_to_f16(r[i])) : kiln_bf16_to_f32(kiln_f32_to_bf16(r[i]));
        bool ok = isnan(r[i])   ? isnan(g[i])
                  : isinf(want) ? g[i] == want
                                : fabs((double)g[i] - r[i]) <= u * fabs((double)r[i]) + tiny + extra;
        if (!ok && bad++ == 0)
            fprintf(stderr, "  %s: element %lld: %s %.9g, f32 %.9g\n", what, (long long)i, kiln_dtype_name(dt),
                    (double)g[i], (double)r[i]);
    }
    CHECK(g && r && bad == 0, "%s: %lld of %lld elements outside half-precision bounds", what, (long long)bad,
          (long long)n);
    free(g);
    free(r);
}

/* x: a [5, 7, 11] input of values in [lo, hi) as dt (*h) and as the same values in f32
 * (*f); transposed: both as their transposed (1, 2) views */
static void inputs(kiln_ctx *ctx, kiln_dtype dt, float lo, float hi, bool transposed, kiln_tensor **h, kiln_tensor **f,
                   int ndim, const int64_t *shape) {
    int64_t n = h_numel(ndim, shape);
    float *v = malloc(sizeof(float) * (size_t)n);
    h_fill(v, n, lo, hi);
    kiln_tensor *x = kiln_from_host(ctx, v, KILN_F32, ndim, shape);
    free(v);
    *h = kiln_to_dtype(ctx, x, dt);
    *f = kiln_to_dtype(ctx, *h, KILN_F32);
    if (transposed) {
        *h = kiln_transpose(ctx, *h, ndim - 2, ndim - 1);
        *f = kiln_transpose(ctx, *f, ndim - 2, ndim - 1);
    }
}

typedef kiln_tensor *(*bin_fn)(kiln_ctx *, kiln_tensor *, kiln_tensor *);
typedef kiln_tensor *(*un_fn)(kiln_ctx *, kiln_tensor *);
typedef kiln_tensor *(*sc_fn)(kiln_ctx *, kiln_tensor *, float);

static kiln_tensor *leaky(kiln_ctx *c, kiln_tensor *x) { return kiln_leaky_relu(c, x, 0.1f); }
static kiln_tensor *elu1(kiln_ctx *c, kiln_tensor *x) { return kiln_elu(c, x, 1.0f); }
static kiln_tensor *gelu_erf(kiln_ctx *c, kiln_tensor *x) { return kiln_gelu(c, x, false); }
static kiln_tensor *gelu_tanh(kiln_ctx *c, kiln_tensor *x) { return kiln_gelu(c, x, true); }
static kiln_tensor *softplus2(kiln_ctx *c, kiln_tensor *x) { return kiln_softplus(c, x, 2.0f, 20.0f); }

static void test_elementwise_half(kiln_ctx *ctx) {
    static const struct {
        const char *name;
        bin_fn f;
        float lo, hi;
    } bins[] = {{"add", kiln_add, -3, 3},
                {"sub", kiln_sub, -3, 3},
                {"mul", kiln_mul, -300, 300},
                {"div", kiln_div, 0.5f, 4},
                {"pow", kiln_pow, 0.5f, 2},
                {"minimum", kiln_minimum, -2, 2},
                {"maximum", kiln_maximum, -2, 2},
                {"eq", kiln_eq, -2, 2},
                {"ne", kiln_ne, -2, 2},
                {"lt", kiln_lt, -2, 2},
                {"le", kiln_le, -2, 2},
                {"gt", kiln_gt, -2, 2},
                {"ge", kiln_ge, -2, 2}};
    static const struct {
        const char *name;
        un_fn f;
        float lo, hi;
    } uns[] = {{"neg", kiln_neg, -3, 3},         {"exp", kiln_exp, -4, 4},
               {"log", kiln_log, 0.01f, 50},     {"sqrt", kiln_sqrt, 0, 50},
               {"abs", kiln_abs, -3, 3},         {"relu", kiln_relu, -3, 3},
               {"leaky_relu", leaky, -3, 3},     {"elu", elu1, -3, 3},
               {"gelu", gelu_erf, -4, 4},        {"gelu_tanh", gelu_tanh, -4, 4},
               {"sigmoid", kiln_sigmoid, -6, 6}, {"tanh", kiln_tanh, -3, 3},
               {"softplus", softplus2, -12, 12}};
    static const struct {
        const char *name;
        sc_fn f;
        float s;
    } scs[] = {{"add_scalar", kiln_add_scalar, 0.75f},
               {"mul_scalar", kiln_mul_scalar, 3e4f}, /* past f16's range: inf */
               {"pow_scalar", kiln_pow_scalar, 2.0f},
               {"minimum_scalar", kiln_minimum_scalar, 0.25f},
               {"maximum_scalar", kiln_maximum_scalar, -0.25f}};
    const int64_t shape[3] = {5, 7, 11}, bshape[3] = {5, 1, 1};
    char what[128];
    for (int d = 0; d < 2; d++) {
        kiln_dtype dt = half_dts[d];
        for (int tr = 0; tr < 2; tr++) {
            kiln_scope_begin(ctx);
            for (size_t k = 0; k < sizeof bins / sizeof bins[0]; k++) {
                kiln_tensor *ah, *af, *bh, *bf;
                inputs(ctx, dt, bins[k].lo, bins[k].hi, tr, &ah, &af, 3, shape);
                inputs(ctx, dt, bins[k].lo, bins[k].hi, false, &bh, &bf, 3, bshape); /* broadcast */
                snprintf(what, sizeof what, "%s %s%s", bins[k].name, kiln_dtype_name(dt), tr ? " strided" : "");
                cmp_half(what, ctx, bins[k].f(ctx, ah, bh), bins[k].f(ctx, af, bf), dt, 0);
                /* f32 and half mixed: promoted to f32, exactly the f32 result */
                kiln_tensor *mixed = bins[k].f(ctx, af, bh), *ref = bins[k].f(ctx, af, bf);
                float *m = mixed ? h_read(mixed) : NULL, *r = ref ? h_read(ref) : NULL;
                CHECK(m && r && kiln_tensor_dtype(mixed) == KILN_F32 &&
                          !memcmp(m, r, sizeof(float) * (size_t)kiln_tensor_numel(ref)),
                      "%s: f32 with %s promotes to f32", what, kiln_dtype_name(dt));
                free(m);
                free(r);
            }
            for (size_t k = 0; k < sizeof uns / sizeof uns[0]; k++) {
                kiln_tensor *xh, *xf;
                inputs(ctx, dt, uns[k].lo, uns[k].hi, tr, &xh, &xf, 3, shape);
                snprintf(what, sizeof what, "%s %s%s", uns[k].name, kiln_dtype_name(dt), tr ? " strided" : "");
                cmp_half(what, ctx, uns[k].f(ctx, xh), uns[k].f(ctx, xf), dt, 0);
            }
            for (size_t k = 0; k < sizeof scs / sizeof scs[0]; k++) {
                kiln_tensor *xh, *xf;
                inputs(ctx, dt, -3, 3, tr, &xh, &xf, 3, shape);
                snprintf(what, sizeof what, "%s %s%s", scs[k].name, kiln_dtype_name(dt), tr ? " strided" : "");
                cmp_half(what, ctx, scs[k].f(ctx, xh, scs[k].s), scs[k].f(ctx, xf, scs[k].s), dt, 0);
            }
            kiln_tensor *ch, *cf, *ah, *af, *bh, *bf;
            inputs(ctx, dt, -1, 1, tr, &ch, &cf, 3, shape);
            inputs(ctx, dt, -3, 3, false, &ah, &af, 3, bshape);
            inputs(ctx, dt, -3, 3, tr, &bh, &bf, 3, shape);
            kiln_tensor *zh = kiln_to_dtype(ctx, kiln_zeros(ctx, 0, NULL), dt);
            snprintf(what, sizeof what, "where %s%s", kiln_dtype_name(dt), tr ? " strided" : "");
            cmp_half(what, ctx, kiln_where(ctx, kiln_gt(ctx, ch, zh), ah, bh),
                     kiln_where(ctx, kiln_gt(ctx, cf, kiln_zeros(ctx, 0, NULL)), af, bf), dt, 0);
            kiln_scope_end(ctx);
            CHECK_OK(ctx);
            kiln_error_clear(ctx);
        }
    }
}

/* Gradients through half ops: f32 leaves converted to dt, the op in dt, back to f32; the
 * f32 gradients against those of the same computation in f32 on the rounded values */
static void test_half_grads(kiln_ctx *ctx) {
    static const struct {
        const char *name;
        un_fn f;
        float lo, hi;
    } uns[] = {{"relu", kiln_relu, -3, 3}, {"gelu", gelu_erf, -3, 3}, {"sigmoid", kiln_sigmoid, -3, 3},
               {"tanh", kiln_tanh, -3, 3}, {"exp", kiln_exp, -2, 2},  {"log", kiln_log, 0.5f, 3}};
    char what[128];
    for (int d = 0; d < 2; d++) {
        kiln_dtype dt = half_dts[d];
        for (size_t k = 0; k < sizeof uns / sizeof uns[0]; k++) {
            kiln_scope_begin(ctx);
            kiln_tensor *xh, *xf;
            inputs(ctx, dt, uns[k].lo, uns[k].hi, false, &xh, &xf, 2, (int64_t[]){6, 9});
            kiln_tensor *a = kiln_detach(ctx, xf), *b = kiln_contiguous(ctx, kiln_detach(ctx, xf));
            kiln_tensor_set_requires_grad(a, true);
            kiln_tensor_set_requires_grad(b, true);
            kiln_tensor *w = kiln_rand_uniform(ctx, 0.5f, 1.5f, 2, (int64_t[]){6, 9});
            kiln_tensor *yh = kiln_to_dtype(ctx, uns[k].f(ctx, kiln_to_dtype(ctx, a, dt)), KILN_F32);
            kiln_tensor *yf = uns[k].f(ctx, b);
            kiln_backward(kiln_sum(ctx, kiln_mul(ctx, yh, w), 0, NULL, false));
            kiln_backward(kiln_sum(ctx, kiln_mul(ctx, yf, w), 0, NULL, false));
            snprintf(what, sizeof what, "%s %s gradient", uns[k].name, kiln_dtype_name(dt));
            /* the gradient is f32; rules that read the input (relu, gelu, log) do the same f32
             * arithmetic on the same values, those that read the output (sigmoid, tanh, exp)
             * read it rounded once to dt: |error| <= u |w| |f'| |y| with |w| < 1.5 */
            kiln_tensor *ga = kiln_tensor_grad(a), *gb = kiln_tensor_grad(b);
            float *pa = ga ? h_read(ga) : NULL, *pb = gb ? h_read(gb) : NULL, *py = yf ? h_read(yf) : NULL;
            double u = dt == KILN_F16 ? 0x1p-11 : 0x1p-8;
            int bad = 0;
            for (int i = 0; pa && pb && py && i < 54; i++) {
                double y = fabs((double)py[i]) > 1 ? fabs((double)py[i]) : 1.0;
                bad += fabs((double)pa[i] - pb[i]) > 3 * u * 1.5 * y * y;
            }
            CHECK(pa && pb && py && kiln_tensor_dtype(ga) == KILN_F32 && bad == 0,
                  "%s: %d elements outside half bounds of f32's: %s", what, bad, kiln_error_message(ctx));
            if (k < 2 || k == 5) /* relu, gelu, log */
                CHECK(pa && pb && !memcmp(pa, pb, sizeof(float) * 54), "%s: rules reading the input match f32 exactly",
                      what);
            free(pa);
            free(pb);
            free(py);
            kiln_scope_end(ctx);
            kiln_error_clear(ctx);
        }
    }
}

/* matmul: 2-D, batched with broadcast, transposed flags; linear layers' products through the
 * nn module (f32 weights, half input: promoted) */
static void test_matmul_half(kiln_ctx *ctx) {
    static const struct {
        int64_t a[3], b[3];
        int nda, ndb, flags;
    } cases[] = {{{17, 33}, {33, 9}, 2, 2, 0},
                 {{3, 17, 33}, {33, 40}, 3, 2, 0},
                 {{3, 33, 17}, {3, 9, 33}, 3, 3, KILN_TRANS_A | KILN_TRANS_B},
                 {{17, 33}, {9, 33}, 2, 2, KILN_TRANS_B},
                 {{33, 17}, {33, 9}, 2, 2, KILN_TRANS_A},
                 {{64, 300}, {70, 300}, 2, 2, KILN_TRANS_B}};
    char what[128];
    for (int d = 0; d < 2; d++) {
        kiln_dtype dt = half_dts[d];
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            kiln_scope_begin(ctx);
            kiln_tensor *ah, *af, *bh, *bf;
            inputs(ctx, dt, -1, 1, false, &ah, &af, cases[k].nda, cases[k].a);
            inputs(ctx, dt, -1, 1, false, &bh, &bf, cases[k].ndb, cases[k].b);
            int64_t kdim = cases[k].flags & KILN_TRANS_A ? cases[k].a[cases[k].nda - 2] : cases[k].a[cases[k].nda - 1];
            snprintf(what, sizeof what, "matmul_ex case %zu %s", k, kiln_dtype_name(dt));
            /* the sums are f32 in both: their order may differ, a few f32 roundings per term */
            double extra = (double)kdim * 4 * 0x1p-24;
            cmp_half(what, ctx, kiln_matmul_ex(ctx, ah, bh, cases[k].flags),
                     kiln_matmul_ex(ctx, af, bf, cases[k].flags), dt, extra);
            /* f32 times half: f32 out, each operand read in its own dtype */
            kiln_tensor *m = kiln_matmul_ex(ctx, af, bh, cases[k].flags),
                        *r = kiln_matmul_ex(ctx, af, bf, cases[k].flags);
            CHECK(m && kiln_tensor_dtype(m) == KILN_F32, "%s mixed: f32 output", what);
            if (m && r) {
                float *pm = h_read(m), *pr = h_read(r);
                int64_t bad = 0;
                for (int64_t i = 0; i < kiln_tensor_numel(r); i++) bad += fabs((double)pm[i] - pr[i]) > extra;
                CHECK(bad == 0, "%s mixed: %lld elements differ from f32's by more than %g", what, (long long)bad,
                      extra);
                free(pm);
                free(pr);
            }
            kiln_scope_end(ctx);
            CHECK_OK(ctx);
            kiln_error_clear(ctx);
        }
    }
}

static int32_t *h_read_i32(kiln_tensor *t) {
    int64_t n = kiln_tensor_numel(t);
    int32_t *h = calloc((size_t)(n > 0 ? n : 1), sizeof *h);
    CHECK(kiln_to_host(t, h, sizeof(int32_t) * (size_t)n) == KILN_OK, "kiln_to_host: %s",
          kiln_error_message(kiln_tensor_ctx(t)));
    return h;
}

/* a and b: f32 tensors with the same bits */
static void same_f32(const char *what, kiln_ctx *ctx, kiln_tensor *a, kiln_tensor *b) {
    float *pa = a ? h_read(a) : NULL, *pb = b ? h_read(b) : NULL;
    CHECK(pa && pb && kiln_tensor_numel(a) == kiln_tensor_numel(b) &&
              !memcmp(pa, pb, sizeof(float) * (size_t)kiln_tensor_numel(a)),
          "%s: not bit-identical to f32's: %s", what, kiln_error_message(ctx));
    free(pa);
    free(pb);
}

static kiln_tensor *grad_of(kiln_ctx *ctx, kiln_tensor *leaf, kiln_tensor *y) {
    kiln_tensor *w = kiln_rand_uniform(ctx, 0.5f, 1.5f, kiln_tensor_ndim(y), kiln_tensor_shape(y));
    if (kiln_backward(kiln_sum(ctx, kiln_mul(ctx, kiln_to_dtype(ctx, y, KILN_F32), w), 0, NULL, false)) != KILN_OK)
        return NULL;
    return kiln_tensor_grad(leaf);
}

/* Pooling, upsampling, conv_transpose2d, pad, the losses, penalties, sampling and the recurrent layers on half
 * inputs: computed in f32 on the same values and rounded once, so each result is f32's
 * rounded to the dtype (cmp_half with no slack), in the inputs' dtype (the losses' too, as
 * torch's); their f32 gradients are f32's bit for bit. */
static void test_more_half(kiln_ctx *ctx) {
    char what[128];
    for (int d = 0; d < 2; d++) {
        kiln_dtype dt = half_dts[d];
        const char *dn = kiln_dtype_name(dt);
        for (int tr = 0; tr < 2; tr++) {
            kiln_scope_begin(ctx);
            kiln_tensor *xh, *xf;
            inputs(ctx, dt, -3, 3, tr, &xh, &xf, 4, (int64_t[]){2, 3, 7, 9});
            kiln_pool2d_params p2 = kiln_pool2d_defaults(2, 2), p3 = kiln_pool2d_defaults(3, 3);
            p3.stride[0] = p3.stride[1] = 2;
            p3.padding[0] = p3.padding[1] = 1;
            p3.ceil_mode = true;
            const kiln_pool2d_params *pp[2] = {&p2, &p3};
            for (int k = 0; k < 2; k++) {
                kiln_tensor *ih = NULL, *iff = NULL;
                snprintf(what, sizeof what, "max_pool2d %s %dx%d%s", dn, pp[k]->kernel[0], pp[k]->kernel[1],
                         tr ? " strided" : "");
                cmp_half(what, ctx, kiln_max_pool2d(ctx, xh, pp[k], &ih), kiln_max_pool2d(ctx, xf, pp[k], &iff), dt, 0);
                int32_t *a = ih ? h_read_i32(ih) : NULL, *b = iff ? h_read_i32(iff) : NULL;
                CHECK(a && b && !memcmp(a, b, sizeof(int32_t) * (size_t)kiln_tensor_numel(iff)),
                      "%s: the same argmax indices as f32's", what);
                free(a);
                free(b);
                snprintf(what, sizeof what, "avg_pool2d %s %dx%d%s", dn, pp[k]->kernel[0], pp[k]->kernel[1],
                         tr ? " strided" : "");
                cmp_half(what, ctx, kiln_avg_pool2d(ctx, xh, pp[k]), kiln_avg_pool2d(ctx, xf, pp[k]), dt, 0);
            }
            snprintf(what, sizeof what, "global_avg_pool2d %s%s", dn, tr ? " strided" : "");
            cmp_half(what, ctx, kiln_global_avg_pool2d(ctx, xh), kiln_global_avg_pool2d(ctx, xf), dt, 0);
            for (int m = 0; m < 3; m++) {
                kiln_upsample_mode mode = m ? KILN_UPSAMPLE_BILINEAR : KILN_UPSAMPLE_NEAREST;
                snprintf(what, sizeof what, "upsample %s %s%s", m ? "bilinear" : "nearest", dn, tr ? " strided" : "");
                cmp_half(what, ctx, kiln_upsample(ctx, xh, 11, 20, mode, m == 2),
                         kiln_upsample(ctx, xf, 11, 20, mode, m == 2), dt, 0);
            }
            kiln_tensor *wh, *wf;
            inputs(ctx, dt, -1, 1, false, &wh, &wf, 4, (int64_t[]){3, 2, 3, 3});
            kiln_conv2d_params cp = kiln_conv2d_defaults();
            cp.stride[0] = cp.stride[1] = 2;
            snprintf(what, sizeof what, "conv_transpose2d %s%s", dn, tr ? " strided" : "");
            cmp_half(what, ctx, kiln_conv_transpose2d(ctx, xh, wh, NULL, &cp),
                     kiln_conv_transpose2d(ctx, xf, wf, NULL, &cp), dt, 0);
            snprintf(what, sizeof what, "pad %s%s", dn, tr ? " strided" : "");
            cmp_half(what, ctx, kiln_pad(ctx, xh, 4, (int64_t[]){1, 2, 0, 3}, 0.3f),
                     kiln_pad(ctx, xf, 4, (int64_t[]){1, 2, 0, 3}, 0.3f), dt, 0);
            kiln_scope_end(ctx);
            CHECK_OK(ctx);
            kiln_error_clear(ctx);
        }
        /* gradients through half pooling: the same f32 arithmetic as f32's */
        for (int k = 0; k < 3; k++) {
            kiln_scope_begin(ctx);
            kiln_tensor *xh, *xf;
            inputs(ctx, dt, -3, 3, false, &xh, &xf, 4, (int64_t[]){2, 3, 8, 8});
            kiln_tensor *a = kiln_detach(ctx, xf), *b = kiln_contiguous(ctx, kiln_detach(ctx, xf));
            kiln_tensor_set_requires_grad(a, true);
            kiln_tensor_set_requires_grad(b, true);
            kiln_pool2d_params p2 = kiln_pool2d_defaults(2, 2);
            kiln_tensor *ah = kiln_to_dtype(ctx, a, dt);
            kiln_tensor *yh = k == 0   ? kiln_max_pool2d(ctx, ah, &p2, NULL)
                              : k == 1 ? kiln_avg_pool2d(ctx, ah, &p2)
                                       : kiln_upsample(ctx, ah, 12, 13, KILN_UPSAMPLE_BILINEAR, false);
            kiln_tensor *yf = k == 0   ? kiln_max_pool2d(ctx, b, &p2, NULL)
                              : k == 1 ? kiln_avg_pool2d(ctx, b, &p2)
                                       : kiln_upsample(ctx, b, 12, 13, KILN_UPSAMPLE_BILINEAR, false);
            kiln_manual_seed(ctx, 5);
            kiln_tensor *ga = grad_of(ctx, a, yh);
            kiln_manual_seed(ctx, 5);
            kiln_tensor *gb = grad_of(ctx, b, yf);
            snprintf(what, sizeof what, "%s %s gradient",
                     k == 0   ? "max_pool2d"
                     : k == 1 ? "avg_pool2d"
                              : "upsample",
                     dn);
            same_f32(what, ctx, ga, gb);
            kiln_scope_end(ctx);
            kiln_error_clear(ctx);
        }
        /* losses: half input and target, f32 copies; weights half too */
        kiln_scope_begin(ctx);
        kiln_tensor *ih, *iff, *th, *tf, *wh, *wf, *ph, *pf, *qh, *qf;
        inputs(ctx, dt, -3, 3, false, &ih, &iff, 2, (int64_t[]){6, 5});
        inputs(ctx, dt, -3, 3, false, &th, &tf, 2, (int64_t[]){6, 5});
        inputs(ctx, dt, 0.5f, 2, false, &wh, &wf, 1, (int64_t[]){5});
        inputs(ctx, dt, 0.05f, 0.95f, false, &ph, &pf, 2, (int64_t[]){6, 5});
        inputs(ctx, dt, 0.0f, 1.0f, false, &qh, &qf, 2, (int64_t[]){6, 5});
        kiln_tensor *lab = kiln_from_host(ctx, (int32_t[]){0, 4, 2, 1, 3, 4}, KILN_I32, 1, (int64_t[]){6});
        kiln_reduction rs[2] = {KILN_MEAN, KILN_NONE};
        for (int q = 0; q < 2; q++) {
            kiln_reduction r = rs[q];
            const char *rn = q ? "none" : "mean";
#define LOSS(NAME, H, F)                                                                                               \
    do {                                                                                                               \
        snprintf(what, sizeof what, "%s %s (%s)", NAME, dn, rn);                                                       \
        cmp_half(what, ctx, H, F, dt, 0);                                                                              \
    } while (0)
            LOSS("mse_loss", kiln_mse_loss(ctx, ih, th, r), kiln_mse_loss(ctx, iff, tf, r));
            LOSS("l1_loss", kiln_l1_loss(ctx, ih, th, r), kiln_l1_loss(ctx, iff, tf, r));
            LOSS("smooth_l1_loss", kiln_smooth_l1_loss(ctx, ih, th, r, 0.5f),
                 kiln_smooth_l1_loss(ctx, iff, tf, r, 0.5f));
            LOSS("bce_loss", kiln_bce_loss(ctx, ph, qh, wh, r), kiln_bce_loss(ctx, pf, qf, wf, r));
            LOSS("bce_with_logits", kiln_bce_with_logits(ctx, ih, qh, NULL, wh, r),
                 kiln_bce_with_logits(ctx, iff, qf, NULL, wf, r));
            LOSS("lsgan_loss", kiln_lsgan_loss(ctx, ih, 1.0f, r), kiln_lsgan_loss(ctx, iff, 1.0f, r));
            LOSS("cross_entropy", kiln_cross_entropy(ctx, ih, lab, r), kiln_cross_entropy(ctx, iff, lab, r));
            LOSS("cross_entropy_ex", kiln_cross_entropy_ex(ctx, ih, lab, wh, 4, 0.1f, r),
                 kiln_cross_entropy_ex(ctx, iff, lab, wf, 4, 0.1f, r));
            LOSS("nll_loss", kiln_nll_loss(ctx, ih, lab, wh, -100, r), kiln_nll_loss(ctx, iff, lab, wf, -100, r));
#undef LOSS
        }
        /* f32 and half mixed: f32, exactly f32's */
        snprintf(what, sizeof what, "mse_loss f32 input, %s target", dn);
        kiln_tensor *mixed = kiln_mse_loss(ctx, iff, th, KILN_MEAN);
        CHECK(mixed && kiln_tensor_dtype(mixed) == KILN_F32, "%s: f32 result", what);
        same_f32(what, ctx, mixed, kiln_mse_loss(ctx, iff, tf, KILN_MEAN));
        /* the loss's gradient: f32's bit for bit */
        kiln_tensor *a = kiln_detach(ctx, iff), *b = kiln_contiguous(ctx, kiln_detach(ctx, iff));
        kiln_tensor_set_requires_grad(a, true);
        kiln_tensor_set_requires_grad(b, true);
        kiln_backward(kiln_to_dtype(ctx, kiln_cross_entropy(ctx, kiln_to_dtype(ctx, a, dt), lab, KILN_MEAN), KILN_F32));
        kiln_backward(kiln_cross_entropy(ctx, b, lab, KILN_MEAN));
        snprintf(what, sizeof what, "cross_entropy %s gradient", dn);
        same_f32(what, ctx, kiln_tensor_grad(a), kiln_tensor_grad(b));
        /* penalties: f32's rounded (f32 when f32 and halves mix) */
        kiln_tensor *ps_h[2] = {ih, wh}, *ps_f[2] = {iff, wf}, *ps_m[2] = {ih, wf};
        snprintf(what, sizeof what, "l2_penalty %s", dn);
        cmp_half(what, ctx, kiln_l2_penalty(ctx, 2, ps_h), kiln_l2_penalty(ctx, 2, ps_f), dt, 0);
        snprintf(what, sizeof what, "l1_penalty %s", dn);
        cmp_half(what, ctx, kiln_l1_penalty(ctx, 2, ps_h), kiln_l1_penalty(ctx, 2, ps_f), dt, 0);
        snprintf(what, sizeof what, "l1_penalty %s and f32", dn);
        same_f32(what, ctx, kiln_l1_penalty(ctx, 2, ps_m), kiln_l1_penalty(ctx, 2, ps_f));
        /* more parameters than one chunk of the half path */
        kiln_tensor *many_h[40], *many_f[40];
        for (int j = 0; j < 40; j++) many_h[j] = j % 2 ? ih : wh, many_f[j] = j % 2 ? iff : wf;
        snprintf(what, sizeof what, "l2_penalty of 40 %s tensors", dn);
        kiln_tensor *pa = kiln_l2_penalty(ctx, 40, many_h), *pb = kiln_l2_penalty(ctx, 40, many_f);
        cmp_half(what, ctx, pa, pb, dt, 0);
        /* sampling: the same ids from the same stream */
        kiln_manual_seed(ctx, 9);
        kiln_tensor *sh = kiln_sample_logits(ctx, ih, 0.7f, 3);
        kiln_manual_seed(ctx, 9);
        kiln_tensor *sf = kiln_sample_logits(ctx, iff, 0.7f, 3);
        int32_t *ia = sh ? h_read_i32(sh) : NULL, *ib = sf ? h_read_i32(sf) : NULL;
        CHECK(ia && ib && !memcmp(ia, ib, 6 * sizeof(int32_t)), "sample_logits %s: the ids of f32 logits: %s", dn,
              kiln_error_message(ctx));
        free(ia);
        free(ib);
        /* an LSTM on a half input: output and states rounded from f32's */
        kiln_manual_seed(ctx, 3);
        kiln_tensor *w[4] = {kiln_rand_uniform(ctx, -0.5f, 0.5f, 2, (int64_t[]){12, 5}),
                             kiln_rand_uniform(ctx, -0.5f, 0.5f, 2, (int64_t[]){12, 3}),
                             kiln_rand_uniform(ctx, -0.5f, 0.5f, 1, (int64_t[]){12}),
                             kiln_rand_uniform(ctx, -0.5f, 0.5f, 1, (int64_t[]){12})};
        kiln_tensor *sxh, *sxf, *hnh = NULL, *hnf = NULL, *cnh = NULL, *cnf = NULL;
        inputs(ctx, dt, -2, 2, false, &sxh, &sxf, 3, (int64_t[]){4, 2, 5});
        kiln_tensor *oh = kiln_rnn(ctx, KILN_RNN_LSTM, sxh, NULL, NULL, 4, w, NULL, NULL, false, &hnh, &cnh);
        kiln_tensor *of = kiln_rnn(ctx, KILN_RNN_LSTM, sxf, NULL, NULL, 4, w, NULL, NULL, false, &hnf, &cnf);
        snprintf(what, sizeof what, "lstm %s output", dn);
        cmp_half(what, ctx, oh, of, dt, 0);
        snprintf(what, sizeof what, "lstm %s h_n", dn);
        cmp_half(what, ctx, hnh, hnf, dt, 0);
        snprintf(what, sizeof what, "lstm %s c_n", dn);
        cmp_half(what, ctx, cnh, cnf, dt, 0);
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
    }
}

/* The reductions, softmax, the norms, dropout, embedding and attention on half inputs:
 * through f32 copies (dropout: its kernel reads and writes halves), so each result is f32's
 * on the same values rounded once, in the inputs' dtype (argmax: the same indices). Contiguous inputs, so that the f32
 * copies and the f32 reference have one layout (a reduction's order follows the layout). */
static void test_half_via_f32(kiln_ctx *ctx) {
    char what[128];
    for (int d = 0; d < 2; d++) {
        kiln_dtype dt = half_dts[d];
        const char *dn = kiln_dtype_name(dt);
        kiln_scope_begin(ctx);
        kiln_tensor *xh, *xf, *gh, *gf, *bh, *bf;
        inputs(ctx, dt, -3, 3, false, &xh, &xf, 3, (int64_t[]){4, 6, 10});
        inputs(ctx, dt, 0.5f, 1.5f, false, &gh, &gf, 1, (int64_t[]){10});
        inputs(ctx, dt, -0.5f, 0.5f, false, &bh, &bf, 1, (int64_t[]){10});
#define SAME(NAME, H, F)                                                                                               \
    do {                                                                                                               \
        snprintf(what, sizeof what, "%s %s", NAME, dn);                                                                \
        cmp_half(what, ctx, H, F, dt, 0);                                                                              \
    } while (0)
        SAME("sum", kiln_sum(ctx, xh, 1, (int[]){2}, false), kiln_sum(ctx, xf, 1, (int[]){2}, false));
        SAME("sum of all", kiln_sum(ctx, xh, 0, NULL, false), kiln_sum(ctx, xf, 0, NULL, false));
        SAME("mean", kiln_mean(ctx, xh, 2, (int[]){0, 2}, true), kiln_mean(ctx, xf, 2, (int[]){0, 2}, true));
        SAME("max", kiln_max(ctx, xh, 1, (int[]){1}, false), kiln_max(ctx, xf, 1, (int[]){1}, false));
        SAME("min", kiln_min(ctx, xh, 1, (int[]){0}, false), kiln_min(ctx, xf, 1, (int[]){0}, false));
        SAME("softmax", kiln_softmax(ctx, xh, -1), kiln_softmax(ctx, xf, -1));
        SAME("log_softmax", kiln_log_softmax(ctx, xh, 1), kiln_log_softmax(ctx, xf, 1));
        SAME("layer_norm", kiln_layer_norm(ctx, xh, 1, gh, bh, 1e-5f), kiln_layer_norm(ctx, xf, 1, gf, bf, 1e-5f));
        kiln_tensor *ah = kiln_argmax(ctx, xh, 2, false), *af = kiln_argmax(ctx, xf, 2, false);
        int32_t *ia = ah ? h_read_i32(ah) : NULL, *ib = af ? h_read_i32(af) : NULL;
        CHECK(ia && ib && kiln_tensor_dtype(ah) == KILN_I32 && !memcmp(ia, ib, 24 * sizeof(int32_t)),
              "argmax %s: the indices of f32's: %s", dn, kiln_error_message(ctx));
        free(ia);
        free(ib);
        /* batch norm: the running statistics (f32) end where the f32 run's do */
        kiln_tensor *ch, *cf, *wh, *wf, *vh, *vf;
        inputs(ctx, dt, -3, 3, false, &ch, &cf, 4, (int64_t[]){3, 4, 5, 6});
        inputs(ctx, dt, 0.5f, 1.5f, false, &wh, &wf, 1, (int64_t[]){4});
        inputs(ctx, dt, -0.5f, 0.5f, false, &vh, &vf, 1, (int64_t[]){4});
        kiln_tensor *rm[2], *rv[2];
        for (int j = 0; j < 2; j++) {
            rm[j] = kiln_zeros(ctx, 1, (int64_t[]){4});
            rv[j] = kiln_ones(ctx, 1, (int64_t[]){4});
        }
        SAME("batch_norm (train)", kiln_batch_norm(ctx, ch, rm[0], rv[0], wh, vh, true, 0.1f, 1e-5f),
             kiln_batch_norm(ctx, cf, rm[1], rv[1], wf, vf, true, 0.1f, 1e-5f));
        snprintf(what, sizeof what, "batch_norm %s running_mean", dn);
        same_f32(what, ctx, rm[0], rm[1]);
        snprintf(what, sizeof what, "batch_norm %s running_var", dn);
        same_f32(what, ctx, rv[0], rv[1]);
        SAME("batch_norm (eval)", kiln_batch_norm(ctx, ch, rm[0], rv[0], wh, vh, false, 0.1f, 1e-5f),
             kiln_batch_norm(ctx, cf, rm[1], rv[1], wf, vf, false, 0.1f, 1e-5f));
        /* dropout: the same mask from the same stream, in one launch (its kernel reads and
         * writes halves) as f32's */
        kiln_manual_seed(ctx, 4);
        kiln_ctx_stats d0, d1, d2;
        kiln_ctx_stats_get(ctx, &d0);
        kiln_tensor *dh = kiln_dropout(ctx, xh, 0.3f, true);
        kiln_ctx_stats_get(ctx, &d1);
        kiln_manual_seed(ctx, 4);
        kiln_tensor *df = kiln_dropout(ctx, xf, 0.3f, true);
        kiln_ctx_stats_get(ctx, &d2);
        SAME("dropout", dh, df);
        CHECK(dh && kiln_tensor_dtype(dh) == dt && d1.launches - d0.launches == d2.launches - d1.launches,
              "dropout %s: %llu launches, f32's %llu", dn, (unsigned long long)(d1.launches - d0.launches),
              (unsigned long long)(d2.launches - d1.launches));
        /* and its gradient is f32's, bit for bit (the same mask and scale) */
        kiln_tensor *la = kiln_contiguous(ctx, kiln_detach(ctx, xf)), *lb = kiln_contiguous(ctx, kiln_detach(ctx, xf));
        kiln_tensor_set_requires_grad(la, true);
        kiln_tensor_set_requires_grad(lb, true);
        kiln_manual_seed(ctx, 5);
        kiln_tensor *ya = kiln_to_dtype(ctx, kiln_dropout(ctx, kiln_to_dtype(ctx, la, dt), 0.3f, true), KILN_F32);
        kiln_manual_seed(ctx, 6);
        kiln_tensor *ga = ya ? grad_of(ctx, la, ya) : NULL;
        kiln_manual_seed(ctx, 5);
        kiln_tensor *yb = kiln_dropout(ctx, lb, 0.3f, true);
        kiln_manual_seed(ctx, 6);
        kiln_tensor *gb = yb ? grad_of(ctx, lb, yb) : NULL;
        snprintf(what, sizeof what, "dropout %s gradient", dn);
        same_f32(what, ctx, ga, gb);
        kiln_tensor *eh, *ef, *idx = kiln_from_host(ctx, (int32_t[]){3, 0, 5, 3}, KILN_I32, 2, (int64_t[]){2, 2});
        inputs(ctx, dt, -1, 1, false, &eh, &ef, 2, (int64_t[]){6, 8});
        SAME("embedding", kiln_embedding(ctx, eh, idx), kiln_embedding(ctx, ef, idx));
        kiln_tensor *qh, *qf, *kh, *kf, *wvh, *wvf;
        inputs(ctx, dt, -1, 1, false, &qh, &qf, 4, (int64_t[]){2, 3, 5, 8});
        inputs(ctx, dt, -1, 1, false, &kh, &kf, 4, (int64_t[]){2, 3, 7, 8});
        inputs(ctx, dt, -1, 1, false, &wvh, &wvf, 4, (int64_t[]){2, 3, 7, 4});
        for (int c = 0; c < 2; c++) {
            kiln_sdpa_opts o = kiln_sdpa_defaults();
            o.is_causal = c;
            SAME(c ? "sdpa (causal)" : "sdpa", kiln_scaled_dot_product_attention(ctx, qh, kh, wvh, NULL, &o),
                 kiln_scaled_dot_product_attention(ctx, qf, kf, wvf, NULL, &o));
        }
#undef SAME
        kiln_scope_end(ctx);
        CHECK_OK(ctx);
        kiln_error_clear(ctx);
    }
    /* integer inputs are refused, naming the op and the dtype */
    kiln_scope_begin(ctx);
    kiln_tensor *xi = kiln_from_host(ctx, (int32_t[]){1, 2, 3, 4}, KILN_I32, 2, (int64_t[]){2, 2});
    kiln_tensor *r[4] = {kiln_softmax(ctx, xi, 1), NULL, NULL, NULL};
    const char *ops[4] = {"kiln_softmax", "kiln_sum", "kiln_layer_norm", "kiln_mse_loss"};
    for (int j = 0; j < 4; j++) {
        if (j == 1) r[j] = kiln_sum(ctx, xi, 0, NULL, false);
        if (j == 2) r[j] = kiln_layer_norm(ctx, xi, 1, NULL, NULL, 1e-5f);
        if (j == 3) r[j] = kiln_mse_loss(ctx, xi, xi, KILN_MEAN);
        CHECK(!r[j] && kiln_error_status(ctx) == KILN_ERR_DTYPE && strstr(kiln_error_message(ctx), ops[j]) &&
                  strstr(kiln_error_message(ctx), "i32"),
              "%s of i32 must fail naming the op and dtype: %s", ops[j], kiln_error_message(ctx));
        kiln_error_clear(ctx);
    }
    /* bit-moving shape ops take halves (exactly), their gradient is f32 */
    kiln_tensor *x = kiln_to_dtype(ctx, kiln_rand_uniform(ctx, -1, 1, 4, (int64_t[]){2, 3, 6, 6}), KILN_F16);
    kiln_tensor *c = kiln_concat(ctx, 2, (kiln_tensor *[]){x, x}, 1);
    CHECK(c && kiln_tensor_dtype(c) == KILN_F16 && kiln_tensor_shape(c)[1] == 6, "concat of f16: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_scope_end(ctx);
}

static void run(kiln_ctx *ctx) {
    kiln__set_guard(ctx, 3);
    test_device_conversions(ctx);
    test_golden(ctx);
    test_host_io(ctx);
    test_grad_errors(ctx);
    test_safetensors(ctx);
    test_elementwise_half(ctx);
    test_half_grads(ctx);
    test_matmul_half(ctx);
    test_more_half(ctx);
    test_half_via_f32(ctx);
    char msg[200];
    CHECK(kiln__check_guards(ctx, msg, sizeof msg) == 0, "guards: %s", msg);
}

int main(void) {
    test_host_conversions();
    H_FOR_EACH_DEVICE(run);
    return h_finish();
}
