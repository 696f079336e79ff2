/* tests/harness.h - the test harness: checks, device loops, host references, views.
 *
 * Every test runs on every OpenCL device present (or only $KILN_TEST_DEVICE) and exits 77
 * (meson's skip) only when no OpenCL device exists. Comparisons against host references
 * computed in double precision use a normalised error: |got - ref| / (atol + rtol*|ref|)
 * must be <= 1, with the bound stated by each test. NaN and Inf must match exactly. */
#ifndef KILN_TEST_HARNESS_H
#define KILN_TEST_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kiln/kiln.h>
#include "kiln_test_hooks.h"

/* Sentinels around storages (kiln__set_guard) are left off on Oclgrind (scripts/test
 * --oclgrind): it reports out-of-bounds accesses itself, and its uninitialised-value
 * tracking forgets a buffer's state at every host write that does not start at byte 0
 * (Oclgrind 21.10), so data written behind a guard would read as uninitialised. */
static inline void h_set_guard(kiln_ctx *ctx, int64_t n) {
    const kiln_device_info *d = kiln_ctx_device(ctx);
    if (d && strstr(d->platform_name, "Oclgrind")) n = 0;
    kiln__set_guard(ctx, n);
}
#define kiln__set_guard h_set_guard

static int h_checks, h_failed;
static const char *h_device = "";

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        h_checks++;                                                                                                    \
        if (!(cond)) {                                                                                                 \
            h_failed++;                                                                                                \
            fprintf(stderr, "%s:%d [%s] CHECK(%s) failed: ", __FILE__, __LINE__, h_device, #cond);                     \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fputc('\n', stderr);                                                                                       \
        }                                                                                                              \
    } while (0)

/* Checks that ctx holds no error; prints it when it does. */
#define CHECK_OK(ctx) CHECK(kiln_error_status(ctx) == KILN_OK, "unexpected error: %s", kiln_error_message(ctx))

/* Number of devices to test; exits 77 when there is none, or when KILN_TEST_DEVICE names
 * none (a run meant for a GPU on a machine without one then shows skipped tests, not tests
 * that passed with no check made). Writes "P:D" specs. */
static inline int h_devices(char specs[][16], int cap) {
    const char *only = getenv("KILN_TEST_DEVICE");
    kiln_device_info info[16];
    int n = 0;
    if (kiln_devices(info, 16, &n) != KILN_OK || n == 0) {
        fprintf(stderr, "no OpenCL device: %s\n", kiln_last_error());
        exit(77);
    }
    int k = 0;
    for (int i = 0; i < n && i < 16 && k < cap; i++) {
        char spec[16];
        snprintf(spec, sizeof spec, "%d:%d", info[i].platform_index, info[i].device_index);
        if (only && *only) {
            kiln_device_info want;
            if (kiln_device_find(only, &want) != KILN_OK || want.platform_index != info[i].platform_index ||
                want.device_index != info[i].device_index)
                continue;
        }
        snprintf(specs[k++], 16, "%s", spec);
    }
    if (k == 0) {
        fprintf(stderr, "KILN_TEST_DEVICE='%s' names no OpenCL device here\n", only ? only : "");
        exit(77);
    }
    return k;
}

/* Opens each device in turn and calls fn(ctx). */
#define H_FOR_EACH_DEVICE(fn)                                                                                          \
    do {                                                                                                               \
        char specs_[16][16];                                                                                           \
        int nd_ = h_devices(specs_, 16);                                                                               \
        for (int di_ = 0; di_ < nd_; di_++) {                                                                          \
            kiln_ctx *ctx_;                                                                                            \
            if (kiln_open(&ctx_, specs_[di_]) != KILN_OK) {                                                            \
                CHECK(0, "kiln_open(%s): %s", specs_[di_], kiln_last_error());                                         \
                continue;                                                                                              \
            }                                                                                                          \
            h_device = kiln_ctx_device(ctx_)->name;                                                                    \
            fprintf(stderr, "device %s: %s\n", specs_[di_], h_device);                                                 \
            fn(ctx_);                                                                                                  \
            kiln_close(ctx_);                                                                                          \
        }                                                                                                              \
    } while (0)

static inline int h_finish(void) {
    printf("%d checks, %d failed\n", h_checks, h_failed);
    return h_failed ? 1 : 0;
}

/* Deterministic host data (xorshift), uniform in [lo, hi). */
static uint64_t h_rng = 0x9E3779B97F4A7C15ULL;
static inline float h_uniform(float lo, float hi) {
    h_rng ^= h_rng << 13;
    h_rng ^= h_rng >> 7;
    h_rng ^= h_rng << 17;
    return lo + (hi - lo) * (float)((h_rng >> 40) * (1.0 / 16777216.0));
}
static inline void h_fill(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = h_uniform(lo, hi);
}

static inline int64_t h_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

/* Compares got (float) with ref (double). Returns the largest normalised error; reports
 * the first element outside the bound. NaN/Inf in ref must be matched exactly. */
static inline double h_compare(const char *what, const float *got, const double *ref, int64_t n, double atol,
                               double rtol) {
    double worst = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], r = ref[i];
        double e;
        if (g == r)
            e = 0; /* exact, including zeros and equal infinities */
        else if (isnan(r) || isnan(g))
            e = (isnan(r) && isnan(g)) ? 0 : INFINITY;
        else if (isinf(r) || isinf(g))
            e = (g == r) ? 0 : INFINITY;
        else
            e = fabs(g - r) / (atol + rtol * fabs(r));
        if (e > worst) worst = e;
        if (e > 1 && bad++ == 0)
            fprintf(stderr, "  %s: element %lld: got %.9g, reference %.9g (normalised error %.3g)\n", what,
                    (long long)i, g, r, e);
    }
    CHECK(bad == 0, "%s: %lld of %lld elements outside atol=%g rtol=%g (worst normalised error %.3g)", what,
          (long long)bad, (long long)n, atol, rtol, worst);
    return worst;
}

/* Reads a tensor back as floats (malloc'ed; caller frees). */
static inline float *h_read(kiln_tensor *t) {
    int64_t n = kiln_tensor_numel(t);
    float *h = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (kiln_to_host(t, h, sizeof(float) * (size_t)n) != KILN_OK) {
        CHECK(0, "kiln_to_host: %s", kiln_error_message(kiln_tensor_ctx(t)));
        for (int64_t i = 0; i < n; i++) h[i] = NAN;
    }
    return h;
}

/* ---- host views: an independent model of kiln's views for computing references ----- */

typedef struct h_view {
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    int64_t strides[KILN_MAX_DIMS];
    int64_t offset;
} h_view;

static inline h_view h_contig(int ndim, const int64_t *shape) {
    h_view v = {.ndim = ndim};
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        v.shape[d] = shape[d];
        v.strides[d] = s;
        s *= shape[d];
    }
    return v;
}

/* The host view model of kiln_transpose(t, a, b) and kiln_slice(t, d, start, end, step). */
static inline void h_view_transpose(h_view *v, int a, int b) {
    int64_t t = v->shape[a];
    v->shape[a] = v->shape[b], v->shape[b] = t;
    t = v->strides[a];
    v->strides[a] = v->strides[b], v->strides[b] = t;
}
static inline void h_view_slice(h_view *v, int d, int64_t start, int64_t end, int64_t step) {
    v->offset += start * v->strides[d];
    v->shape[d] = (end - start + step - 1) / step;
    v->strides[d] *= step;
}

/* ---- views as operands: testing ops on non-contiguous inputs ---------------------------- */

/* One step from a tensor to a strided/offset view of it. */
enum { TF_NONE, TF_T, TF_S, TF_E, TF_P };
typedef struct h_tf {
    int kind; /* TF_T: transpose(p0, p1); TF_S: slice(dim p0, start p1, end p2, step p3);
                 TF_E: expand to rank p0 with sizes p1..; TF_P: permute(p0, p1, ...) of every dim */
    int64_t p[KILN_MAX_DIMS + 1];
} h_tf;

/* Applies f to t (kiln_transpose, kiln_slice, kiln_expand or kiln_permute) and to v, t's host
 * model; returns the view (NULL when t is NULL or the op fails: ctx holds why). */
static inline kiln_tensor *h_view_apply(kiln_ctx *ctx, kiln_tensor *t, h_view *v, const h_tf *f) {
    if (f->kind == TF_T) {
        int a = (int)f->p[0], b = (int)f->p[1];
        h_view_transpose(v, a, b);
        return kiln_transpose(ctx, t, a, b);
    }
    if (f->kind == TF_S) {
        int d = (int)f->p[0];
        h_view_slice(v, d, f->p[1], f->p[2], f->p[3]);
        return kiln_slice(ctx, t, d, f->p[1], f->p[2], f->p[3]);
    }
    if (f->kind == TF_E) {
        h_view e = {.ndim = (int)f->p[0], .offset = v->offset};
        int lead = e.ndim - v->ndim;
        for (int d = 0; d < e.ndim; d++) {
            int sd = d - lead;
            e.shape[d] = f->p[1 + d];
            e.strides[d] = (sd >= 0 && v->shape[sd] == f->p[1 + d]) ? v->strides[sd] : 0;
        }
        *v = e;
        return kiln_expand(ctx, t, e.ndim, &f->p[1]);
    }
    if (f->kind == TF_P) {
        h_view e = *v;
        int dims[KILN_MAX_DIMS];
        for (int d = 0; d < v->ndim; d++) {
            dims[d] = (int)f->p[d];
            e.shape[d] = v->shape[dims[d]];
            e.strides[d] = v->strides[dims[d]];
        }
        *v = e;
        return kiln_permute(ctx, t, dims);
    }
    return t;
}

/* The n steps of tf in order (see h_view_apply). */
static inline kiln_tensor *h_view_build(kiln_ctx *ctx, kiln_tensor *t, h_view *v, int n, const h_tf *tf) {
    for (int k = 0; k < n; k++) t = h_view_apply(ctx, t, v, &tf[k]);
    return t;
}

/* Element at row-major index i of the view over base. */
static inline double h_at(const float *base, const h_view *v, int64_t i) {
    int64_t off = v->offset;
    for (int d = v->ndim - 1; d >= 0; d--) {
        off += (i % v->shape[d]) * v->strides[d];
        i /= v->shape[d];
    }
    return base[off];
}

/* Broadcast index: element of v (with ndim <= out_ndim, right-aligned) that output index
 * i of an out_ndim/out_shape result reads. */
static inline double h_at_bcast(const float *base, const h_view *v, int out_ndim, const int64_t *out_shape, int64_t i) {
    int64_t off = v->offset;
    for (int d = out_ndim - 1; d >= 0; d--) {
        int64_t idx = i % out_shape[d];
        i /= out_shape[d];
        int vd = d - (out_ndim - v->ndim);
        if (vd >= 0 && v->shape[vd] != 1) off += idx * v->strides[vd];
    }
    return base[off];
}

#endif
