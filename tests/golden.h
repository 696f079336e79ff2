/* tests/golden.h - reads the PyTorch reference files (safetensors, F32 and I32) that
 * tests/golden/gen_*.py write, so that CI compares against PyTorch without PyTorch.
 *
 *     golden g;
 *     if (!golden_open(&g, "activation")) ... // tests/golden/activation.safetensors
 *     const golden_tensor *x = golden_get(&g, "relu.x");   // NULL (and a failed CHECK) if absent
 *     ... x->ndim, x->shape, x->f (floats) or x->i (ints), x->numel
 *     golden_close(&g);
 *
 * The directory comes from KILN_GOLDEN_DIR (set by tests/meson.build). A minimal parser:
 * the library's own safetensors reader (checkpoints) is separate and fuzzed. */
#ifndef KILN_TEST_GOLDEN_H
#define KILN_TEST_GOLDEN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

typedef struct golden_tensor {
    char name[128];
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    int64_t numel;
    bool is_int;
    float *f;   /* F32 data, or NULL */
    int32_t *i; /* I32 data, or NULL */
} golden_tensor;

typedef struct golden {
    golden_tensor *t;
    int n;
    unsigned char *buf;
} golden;

static inline void golden_close(golden *g) {
    for (int k = 0; k < g->n; k++) {
        free(g->t[k].f);
        free(g->t[k].i);
    }
    free(g->t);
    free(g->buf);
    memset(g, 0, sizeof *g);
}

/* Parses `"name":{"dtype":"F32","shape":[a,b],"data_offsets":[s,e]}` entries. */
static inline bool golden__parse(golden *g, const char *h, size_t hlen, const unsigned char *data, size_t dlen) {
    const char *p = h, *end = h + hlen;
    int cap = 0;
    while (p < end) {
        const char *q = strchr(p, '"');
        if (!q || q >= end) break;
        const char *qe = strchr(q + 1, '"');
        if (!qe || qe >= end) return false;
        size_t nl = (size_t)(qe - q - 1);
        if (nl == 12 && memcmp(q + 1, "__metadata__", 12) == 0) { /* skip the metadata object */
            const char *m = strchr(qe, '}');
            if (!m) return false;
            p = m + 1;
            continue;
        }
        const char *dt = strstr(qe, "\"dtype\":\"");
        const char *sh = strstr(qe, "\"shape\":[");
        const char *of = strstr(qe, "\"data_offsets\":[");
        if (!dt || !sh || !of || nl >= sizeof g->t[0].name) return false;
        if (g->n == cap) {
            cap = cap ? 2 * cap : 64;
            golden_tensor *nt = realloc(g->t, sizeof *nt * (size_t)cap);
            if (!nt) return false;
            g->t = nt;
        }
        golden_tensor *t = &g->t[g->n];
        memset(t, 0, sizeof *t);
        memcpy(t->name, q + 1, nl);
        t->is_int = strncmp(dt + 9, "I32", 3) == 0;
        if (!t->is_int && strncmp(dt + 9, "F32", 3) != 0) return false;
        const char *s = sh + 9;
        t->numel = 1;
        while (*s != ']') {
            if (t->ndim == KILN_MAX_DIMS) return false;
            char *e;
            t->shape[t->ndim] = strtoll(s, &e, 10);
            t->numel *= t->shape[t->ndim++];
            s = *e == ',' ? e + 1 : e;
            if (*s != ']' && (*s < '0' || *s > '9')) return false;
        }
        char *e;
        unsigned long long a = strtoull(of + 16, &e, 10), b = strtoull(e + 1, &e, 10);
        if (b < a || b > dlen || b - a != (unsigned long long)t->numel * 4) return false;
        size_t bytes = (size_t)(t->numel > 0 ? t->numel : 1) * 4;
        void *dst = malloc(bytes);
        if (!dst) return false;
        memcpy(dst, data + a, (size_t)(b - a));
        if (t->is_int)
            t->i = dst;
        else
            t->f = dst;
        g->n++;
        p = strchr(of, ']') + 1;
        const char *close = strchr(p, '}');
        if (!close) return false;
        p = close + 1;
    }
    return true;
}

/* Opens tests/golden/<name>.safetensors; false (with a failed CHECK) when it cannot. */
static inline bool golden_open(golden *g, const char *name) {
    memset(g, 0, sizeof *g);
    const char *dir = getenv("KILN_GOLDEN_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir ? dir : "tests/golden", name);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "golden file %s cannot be opened", path);
    if (!f) return false;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    g->buf = malloc((size_t)(size > 0 ? size : 1));
    bool ok = g->buf && size >= 8 && fread(g->buf, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    uint64_t hl = 0;
    if (ok) {
        for (int k = 7; k >= 0; k--) hl = hl << 8 | g->buf[k];
        ok = hl <= (uint64_t)size - 8;
    }
    if (ok) {
        char *h = malloc(hl + 1);
        ok = h != NULL;
        if (ok) {
            memcpy(h, g->buf + 8, hl);
            h[hl] = 0;
            ok = golden__parse(g, h + 1, hl > 0 ? hl - 1 : 0, g->buf + 8 + hl, (size_t)size - 8 - hl);
            free(h);
        }
    }
    CHECK(ok, "golden file %s is malformed", path);
    if (!ok) golden_close(g);
    return ok;
}

static inline const golden_tensor *golden_get(const golden *g, const char *name) {
    for (int k = 0; k < g->n; k++)
        if (strcmp(g->t[k].name, name) == 0) return &g->t[k];
    CHECK(0, "golden tensor %s missing", name);
    return NULL;
}

/* Whether g holds a case whose keys start with prefix; pidx >= 0: and whose parameter
 * vector "<prefix>...p" (I32) holds pval at index pidx. No CHECK: the caller names what is
 * missing. */
static inline bool golden_has_prefix(const golden *g, const char *prefix, int pidx, int pval) {
    size_t n = strlen(prefix);
    for (int k = 0; k < g->n; k++) {
        const golden_tensor *t = &g->t[k];
        if (strncmp(t->name, prefix, n) != 0) continue;
        if (pidx < 0) return true;
        size_t len = strlen(t->name);
        if (len >= 2 && strcmp(t->name + len - 2, ".p") == 0 && t->is_int && t->numel > pidx && t->i[pidx] == pval)
            return true;
    }
    return false;
}

/* Uploads a golden tensor (F32 or I32) to ctx. */
static inline kiln_tensor *golden_upload(kiln_ctx *ctx, const golden_tensor *t) {
    if (!t) return NULL;
    return kiln_from_host(ctx, t->is_int ? (const void *)t->i : (const void *)t->f, t->is_int ? KILN_I32 : KILN_F32,
                          t->ndim, t->shape);
}

/* Compares a kiln tensor with a golden F32 tensor of the same shape: |got-ref| <=
 * atol + rtol*|ref| elementwise (tolerances stated by the caller). */
static inline void golden_compare(const char *what, kiln_tensor *got, const golden_tensor *ref, double atol,
                                  double rtol) {
    if (!ref) return;
    CHECK(got != NULL, "%s: no result: %s", what, got ? "" : "NULL tensor");
    if (!got) return;
    CHECK(kiln_tensor_ndim(got) == ref->ndim &&
              (ref->ndim == 0 || memcmp(kiln_tensor_shape(got), ref->shape, sizeof(int64_t) * (size_t)ref->ndim) == 0),
          "%s: shape differs from PyTorch's", what);
    if (kiln_tensor_numel(got) != ref->numel) return;
    float *h = h_read(got);
    double *r = malloc(sizeof(double) * (size_t)(ref->numel > 0 ? ref->numel : 1));
    for (int64_t k = 0; k < ref->numel; k++) r[k] = ref->is_int ? (double)ref->i[k] : (double)ref->f[k];
    h_compare(what, h, r, ref->numel, atol, rtol);
    free(h);
    free(r);
}

/* Compares got with the golden F32 tensor ref, elementwise:
 *     |got - ref| <= atol + nm * 2^-24 * mag[k] + nr * 2^-24 * |ref[k]|
 * mag (may be NULL): the golden magnitude an element was computed from (for a sum, the sum
 * of its terms' magnitudes), so that a bound of a few roundings per term stays meaningful
 * when the terms cancel. NaN and Inf in ref must be matched exactly. */
static inline void golden_compare_scaled(const char *what, kiln_tensor *got, const golden_tensor *ref,
                                         const golden_tensor *mag, double atol, double nm, double nr) {
    if (!ref) return;
    CHECK(got != NULL, "%s: no result", what);
    if (!got) return;
    CHECK(kiln_tensor_ndim(got) == ref->ndim &&
              (ref->ndim == 0 || memcmp(kiln_tensor_shape(got), ref->shape, sizeof(int64_t) * (size_t)ref->ndim) == 0),
          "%s: shape differs from PyTorch's", what);
    CHECK(!mag || mag->numel == ref->numel, "%s: magnitude tensor of another size", what);
    if (kiln_tensor_numel(got) != ref->numel || (mag && mag->numel != ref->numel)) return;
    float *h = h_read(got);
    int64_t bad = 0;
    double worst = 0;
    for (int64_t k = 0; k < ref->numel; k++) {
        double g = h[k], r = ref->f[k], e;
        double tol = atol + nm * 0x1p-24 * (mag ? fabs((double)mag->f[k]) : 0) + nr * 0x1p-24 * fabs(r);
        if (g == r)
            e = 0;
        else if (isnan(r) || isnan(g) || isinf(r) || isinf(g))
            e = isnan(r) && isnan(g) ? 0 : INFINITY;
        else
            e = tol > 0 ? fabs(g - r) / tol : INFINITY;
        if (e > worst) worst = e;
        if (e > 1 && bad++ == 0)
            fprintf(stderr, "  %s: element %lld: got %.9g, PyTorch %.9g (normalised error %.3g)\n", what, (long long)k,
                    g, r, e);
    }
    CHECK(bad == 0, "%s: %lld of %lld elements outside atol=%g + %g u mag + %g u |ref| (worst normalised error %.3g)",
          what, (long long)bad, (long long)ref->numel, atol, nm, nr, worst);
    free(h);
}

#endif
