/* src/data/loader.c - datasets (host samples + labels), splits, and the batching loader
 * that prepares batches on a background thread and writes them to the device. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data_internal.h"

/* ---- random numbers: splitmix64 seeding xoshiro256** ---------------------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void kiln__rng_init(kiln__rng *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t stream) {
    /* Each key word goes through a full splitmix64 step so nearby (seed, a, b) tuples give
     * unrelated streams. */
    uint64_t x = seed;
    uint64_t h = splitmix64(&x);
    x = h ^ a;
    h = splitmix64(&x);
    x = h ^ b;
    h = splitmix64(&x);
    x = h ^ stream;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t kiln__rng_next(kiln__rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

uint64_t kiln__rng_below(kiln__rng *r, uint64_t n) {
    /* Rejects the top partial block of 2^64 so every residue is equally likely. */
    for (;;) {
        uint64_t x = kiln__rng_next(r), v = x % n;
        if (x - v <= UINT64_MAX - (n - 1)) return v;
    }
}

enum { STREAM_SHUFFLE = 1, STREAM_AUGMENT = 2, STREAM_SPLIT = 3 };

/* A permutation of 0..n-1 (Fisher-Yates). */
static void permute(int64_t *p, int64_t n, kiln__rng *r) {
    for (int64_t i = 0; i < n; i++) p[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)kiln__rng_below(r, (uint64_t)i + 1);
        int64_t t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

/* ---- datasets ----------------------------------------------------------------------- */

/* Samples and labels, shared by every dataset made from them. */
typedef struct store {
    atomic_int refs;
    int64_t n;     /* samples */
    int64_t numel; /* values per sample */
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    bool bytes; /* x is uint8_t[n * numel], else float[n * numel] */
    void *x;
    int32_t *y;
    int num_classes;
} store;

struct kiln_dataset {
    store *st;
    int64_t n;
    int64_t *idx; /* store index of each sample; NULL: sample i is store sample i */
};

static void store_unref(store *st) {
    if (!st || atomic_fetch_sub(&st->refs, 1) != 1) return;
    free(st->x);
    free(st->y);
    free(st);
}

static int64_t store_index(const kiln_dataset *ds, int64_t i) { return ds->idx ? ds->idx[i] : i; }

static void sample_to_float(const store *st, int64_t si, float *out) {
    size_t m = (size_t)st->numel;
    if (st->bytes) {
        const uint8_t *p = (const uint8_t *)st->x + (size_t)si * m;
        for (size_t k = 0; k < m; k++) out[k] = p[k];
    } else {
        memcpy(out, (const float *)st->x + (size_t)si * m, m * sizeof(float));
    }
}

static kiln_dataset *dataset_wrap(const char *op, store *st, int64_t n, int64_t *idx) {
    kiln_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) {
        kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
        free(idx);
        return NULL;
    }
    atomic_fetch_add(&st->refs, 1);
    ds->st = st;
    ds->n = n;
    ds->idx = idx;
    return ds;
}

/* A new store with room for n samples of `shape`; y allocated, x too unless the caller
 * brings its own (alloc_x false); refs 0. */
static store *store_new(const char *op, const char *what, int64_t n, int ndim, const int64_t *shape, bool bytes,
                        bool alloc_x) {
    char sb[160];
    if (n <= 0) {
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s: no samples (n = %lld)", op, what, (long long)n);
        return NULL;
    }
    if (ndim < 1 || ndim > KILN_MAX_DIMS - 1) {
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s: samples of %d dims (1 to %d: a batch adds one)", op, what,
                          ndim, KILN_MAX_DIMS - 1);
        return NULL;
    }
    if (!shape) {
        kiln__fail_global(KILN_ERR_NULL, "%s: %s: shape is NULL", op, what);
        return NULL;
    }
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0 || numel > INT32_MAX / shape[d]) {
            kiln__fail_global(KILN_ERR_INVALID_ARGUMENT,
                              "%s: %s: sample shape %s must have positive sizes and fewer than 2^31 elements", op, what,
                              kiln__shape_str(ndim, shape, sb, sizeof sb));
            return NULL;
        }
        numel *= shape[d];
    }
    size_t es = bytes ? 1 : sizeof(float);
    if ((uint64_t)n > SIZE_MAX / es / (uint64_t)numel || (uint64_t)n > SIZE_MAX / sizeof(int32_t)) {
        kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: %lld samples of %s do not fit in memory", op, what,
                          (long long)n, kiln__shape_str(ndim, shape, sb, sizeof sb));
        return NULL;
    }
    store *st = calloc(1, sizeof *st);
    if (st) {
        st->x = alloc_x ? malloc((size_t)n * (size_t)numel * es) : NULL;
        st->y = malloc((size_t)n * sizeof(int32_t));
    }
    if (!st || (alloc_x && !st->x) || !st->y) {
        if (st) {
            free(st->x);
            free(st->y);
        }
        free(st);
        kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: %s: out of host memory for %lld samples of %s", op, what,
                          (long long)n, kiln__shape_str(ndim, shape, sb, sizeof sb));
        return NULL;
    }
    atomic_init(&st->refs, 0);
    st->n = n;
    st->numel = numel;
    st->ndim = ndim;
    memcpy(st->shape, shape, sizeof(int64_t) * (size_t)ndim);
    st->bytes = bytes;
    return st;
}

static void store_discard(store *st) {
    if (!st) return;
    free(st->x);
    free(st->y);
    free(st);
}

/* Checks st->y against num_classes (inferring it when <= 0). `labels` names the labels'
 * source in the message, `extra` is appended to it. */
static bool check_labels(const char *op, store *st, int num_classes, const char *labels, const char *extra) {
    if (num_classes <= 0) {
        int32_t mx = -1;
        for (int64_t i = 0; i < st->n; i++) {
            if (st->y[i] < 0) {
                kiln__fail_global(KILN_ERR_RANGE, "%s: %s: label %d at index %lld is negative%s", op, labels,
                                  (int)st->y[i], (long long)i, extra);
                return false;
            }
            if (st->y[i] > mx) mx = st->y[i];
        }
        if (mx == INT32_MAX) {
            kiln__fail_global(KILN_ERR_RANGE, "%s: %s: label %d is too large%s", op, labels, (int)mx, extra);
            return false;
        }
        st->num_classes = mx + 1;
        return true;
    }
    for (int64_t i = 0; i < st->n; i++) {
        if (st->y[i] < 0 || st->y[i] >= num_classes) {
            kiln__fail_global(KILN_ERR_RANGE, "%s: %s: label %d at index %lld is outside [0, %d)%s", op, labels,
                              (int)st->y[i], (long long)i, num_classes, extra);
            return false;
        }
    }
    st->num_classes = num_classes;
    return true;
}

kiln_dataset *kiln_dataset_from_host(const float *x, const int32_t *y, int64_t n, int ndim, const int64_t *shape,
                                     int num_classes) {
    static const char *op = "kiln_dataset_from_host";
    kiln__clear_global();
    if (!x || !y) {
        kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !x ? "x" : "y");
        return NULL;
    }
    store *st = store_new(op, "host data", n, ndim, shape, false, true);
    if (!st) return NULL;
    memcpy(st->x, x, (size_t)n * (size_t)st->numel * sizeof(float));
    memcpy(st->y, y, (size_t)n * sizeof(int32_t));
    if (!check_labels(op, st, num_classes, "y", "")) {
        store_discard(st);
        return NULL;
    }
    return dataset_wrap(op, st, n, NULL);
}

static bool idx_is_int(kiln_idx_type t) {
    return t == KILN_IDX_U8 || t == KILN_IDX_I8 || t == KILN_IDX_I16 || t == KILN_IDX_I32;
}

static void idx_dims_str(const kiln_idx *idx, char *buf, size_t cap) {
    size_t p = 0;
    buf[0] = 0;
    for (int d = 0; d < idx->ndim && p < cap; d++) {
        int w = snprintf(buf + p, cap - p, "%s%lld", d ? "x" : "", (long long)idx->dims[d]);
        if (w < 0) break;
        p += (size_t)w;
    }
}

kiln_dataset *kiln_dataset_idx(const char *images, const char *labels, int num_classes) {
    static const char *op = "kiln_dataset_idx";
    char ds[160], extra[1200];
    kiln__clear_global();
    if (!images || !labels) {
        kiln__fail_global(KILN_ERR_NULL, "%s: %s path is NULL", op, !images ? "images" : "labels");
        return NULL;
    }
    kiln_idx *im = kiln_idx_load(images);
    if (!im) return NULL;
    kiln_idx *lb = kiln_idx_load(labels);
    if (!lb) {
        kiln_idx_free(im);
        return NULL;
    }
    store *st = NULL;
    kiln_dataset *out = NULL;
    if (im->ndim < 2) {
        idx_dims_str(im, ds, sizeof ds);
        kiln__fail_global(KILN_ERR_SHAPE, "%s: images %s have dims %s; expected [N, ...] with at least 2 dims", op,
                          images, ds);
        goto done;
    }
    if (lb->ndim != 1 || !idx_is_int(lb->type)) {
        idx_dims_str(lb, ds, sizeof ds);
        kiln__fail_global(KILN_ERR_SHAPE, "%s: labels %s are %s of dims %s; expected one integer per sample", op,
                          labels, kiln_idx_type_name(lb->type), ds);
        goto done;
    }
    if (im->dims[0] != lb->dims[0]) {
        kiln__fail_global(KILN_ERR_SHAPE, "%s: images %s hold %lld samples but labels %s hold %lld labels", op, images,
                          (long long)im->dims[0], labels, (long long)lb->dims[0]);
        goto done;
    }
    int64_t shape[KILN_MAX_DIMS];
    int ndim;
    if (im->ndim == 3) { /* [N, H, W]: one channel */
        shape[0] = 1;
        shape[1] = im->dims[1];
        shape[2] = im->dims[2];
        ndim = 3;
    } else {
        ndim = im->ndim - 1;
        memcpy(shape, im->dims + 1, sizeof(int64_t) * (size_t)ndim);
    }
    bool bytes = im->type == KILN_IDX_U8;
    st = store_new(op, images, im->dims[0], ndim, shape, bytes, !bytes);
    if (!st) goto done;
    size_t total = (size_t)st->n * (size_t)st->numel;
    if (bytes) { /* the file's bytes become the samples: no copy */
        st->x = im->data;
        im->data = NULL;
    } else {
        float *xf = st->x;
        for (size_t i = 0; i < total; i++) xf[i] = (float)kiln_idx_value(im, (int64_t)i);
    }
    for (int64_t i = 0; i < st->n; i++) {
        double v = kiln_idx_value(lb, i);
        st->y[i] = (int32_t)v; /* integer types of at most 32 bits: exact */
    }
    snprintf(extra, sizeof extra, " (images %s)", images);
    if (!check_labels(op, st, num_classes, labels, extra)) goto done;
    out = dataset_wrap(op, st, st->n, NULL);
done:
    if (!out) store_discard(st);
    kiln_idx_free(im);
    kiln_idx_free(lb);
    return out;
}

kiln_dataset *kiln_dataset_from_csv(const kiln_csv *csv, int label_col, int num_classes, const char *what) {
    static const char *op = "kiln_dataset_from_csv";
    kiln__clear_global();
    if (!what) what = "<csv>";
    if (!csv) {
        kiln__fail_global(KILN_ERR_NULL, "%s: csv is NULL", op);
        return NULL;
    }
    if (csv->cols < 2) {
        kiln__fail_global(KILN_ERR_SHAPE, "%s: %s: %lld columns; need a label column and at least one feature", op,
                          what, (long long)csv->cols);
        return NULL;
    }
    int64_t lc = label_col < 0 ? csv->cols + label_col : label_col;
    if (lc < 0 || lc >= csv->cols) {
        kiln__fail_global(KILN_ERR_RANGE, "%s: %s: label column %d is outside the table's %lld columns", op, what,
                          label_col, (long long)csv->cols);
        return NULL;
    }
    int64_t f = csv->cols - 1;
    store *st = store_new(op, what, csv->rows, 1, &f, false, true);
    if (!st) return NULL;
    float *x = st->x;
    for (int64_t r = 0; r < csv->rows; r++) {
        const double *row = csv->data + (size_t)r * (size_t)csv->cols;
        long long line = csv->lines ? (long long)csv->lines[r] : (long long)r + 1;
        for (int64_t c = 0, k = 0; c < csv->cols; c++) {
            double v = row[c];
            if (c == lc) {
                if (!(v == floor(v)) || v < -2147483648.0 || v > 2147483647.0) {
                    kiln__fail_global(KILN_ERR_CORRUPT, "%s: %s: line %lld, column %lld: label %g is not an integer",
                                      op, what, line, (long long)c + 1, v);
                    store_discard(st);
                    return NULL;
                }
                st->y[r] = (int32_t)v;
                if (num_classes > 0 && (v < 0 || v >= num_classes)) {
                    kiln__fail_global(KILN_ERR_RANGE, "%s: %s: line %lld, column %lld: label %d is outside [0, %d)", op,
                                      what, line, (long long)c + 1, (int)v, num_classes);
                    store_discard(st);
                    return NULL;
                }
                continue;
            }
            if (isfinite(v) && fabs(v) > 3.4028234663852886e38) {
                kiln__fail_global(KILN_ERR_RANGE, "%s: %s: line %lld, column %lld: %g does not fit in a float", op,
                                  what, line, (long long)c + 1, v);
                store_discard(st);
                return NULL;
            }
            x[(size_t)r * (size_t)f + (size_t)k++] = (float)v;
        }
    }
    if (!check_labels(op, st, num_classes, what, "")) {
        store_discard(st);
        return NULL;
    }
    return dataset_wrap(op, st, st->n, NULL);
}

kiln_dataset *kiln_dataset_csv(const char *path, int label_col, int num_classes, const kiln_csv_opts *opts) {
    kiln__clear_global();
    if (!path) return kiln__fail_global(KILN_ERR_NULL, "kiln_dataset_csv: path is NULL"), NULL;
    kiln_csv *csv = kiln_csv_load(path, opts);
    if (!csv) return NULL;
    kiln_dataset *ds = kiln_dataset_from_csv(csv, label_col, num_classes, path);
    if (!ds) {
        /* Name the public entry point rather than the helper. */
        char msg[8192];
        const char *m = kiln_last_error();
        const char *pre = "kiln_dataset_from_csv: ";
        snprintf(msg, sizeof msg, "kiln_dataset_csv: %s", strncmp(m, pre, strlen(pre)) == 0 ? m + strlen(pre) : m);
        kiln__fail_global(kiln_last_status(), "%s", msg);
    }
    kiln_csv_free(csv);
    return ds;
}

kiln_dataset *kiln_fashion_mnist(const char *dir, bool train) {
    static const char *op = "kiln_fashion_mnist";
    kiln__clear_global();
    if (!dir) dir = KILN_FASHION_MNIST_DIR;
    const char *set = train ? "train" : "t10k";
    char paths[2][4096];
    const char *kinds[2] = {"images-idx3", "labels-idx1"};
    for (int k = 0; k < 2; k++) {
        snprintf(paths[k], sizeof paths[k], "%s/%s-%s-ubyte.gz", dir, set, kinds[k]);
        if (access(paths[k], R_OK) != 0) {
            snprintf(paths[k], sizeof paths[k], "%s/%s-%s-ubyte", dir, set, kinds[k]);
            if (access(paths[k], R_OK) != 0) {
                kiln__fail_global(KILN_ERR_IO,
                                  "%s: no readable %s-%s-ubyte.gz (or uncompressed) in %s (on Debian: apt install "
                                  "dataset-fashion-mnist)",
                                  op, set, kinds[k], dir);
                return NULL;
            }
        }
    }
    kiln_dataset *ds = kiln_dataset_idx(paths[0], paths[1], 10);
    if (ds && (ds->st->ndim != 3 || ds->st->shape[1] != 28 || ds->st->shape[2] != 28 || !ds->st->bytes)) {
        kiln__fail_global(KILN_ERR_SHAPE, "%s: %s does not hold 28x28 byte images", op, paths[0]);
        kiln_dataset_free(ds);
        return NULL;
    }
    return ds;
}

const char *kiln_fashion_mnist_class_name(int label) {
    static const char *names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
    return label >= 0 && label < 10 ? names[label] : "";
}

kiln_dataset *kiln_dataset_subset(const kiln_dataset *ds, const int64_t *idx, int64_t n) {
    static const char *op = "kiln_dataset_subset";
    kiln__clear_global();
    if (!ds || (!idx && n > 0)) {
        kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !ds ? "dataset" : "idx");
        return NULL;
    }
    if (n < 0 || (uint64_t)n > SIZE_MAX / sizeof(int64_t)) {
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: n = %lld", op, (long long)n);
        return NULL;
    }
    int64_t *m = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!m) {
        kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= ds->n) {
            kiln__fail_global(KILN_ERR_RANGE, "%s: idx[%lld] = %lld is outside the dataset's %lld samples", op,
                              (long long)i, (long long)idx[i], (long long)ds->n);
            free(m);
            return NULL;
        }
        m[i] = store_index(ds, idx[i]);
    }
    return dataset_wrap(op, ds->st, n, m);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

kiln_status kiln_dataset_split(const kiln_dataset *ds, double val_frac, uint64_t seed, kiln_dataset **train,
                               kiln_dataset **val) {
    static const char *op = "kiln_dataset_split";
    kiln__clear_global();
    if (train) *train = NULL;
    if (val) *val = NULL;
    if (!ds || !train || !val)
        return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !ds ? "dataset" : !train ? "train" : "val");
    if (!(val_frac >= 0 && val_frac <= 1))
        return kiln__fail_global(KILN_ERR_RANGE, "%s: val_frac %g is outside [0, 1]", op, val_frac);
    int64_t n = ds->n, nv = (int64_t)llround(val_frac * (double)n);
    if (nv > n) nv = n;
    int64_t *p = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!p) return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
    kiln__rng r;
    kiln__rng_init(&r, seed, 0, 0, STREAM_SPLIT);
    permute(p, n, &r);
    /* Each part keeps the dataset's order. */
    qsort(p, (size_t)nv, sizeof(int64_t), cmp_i64);
    qsort(p + nv, (size_t)(n - nv), sizeof(int64_t), cmp_i64);
    kiln_dataset *v = kiln_dataset_subset(ds, p, nv);
    kiln_dataset *t = v ? kiln_dataset_subset(ds, p + nv, n - nv) : NULL;
    free(p);
    if (!t) {
        kiln_dataset_free(v);
        return KILN_ERR_HOST_OUT_OF_MEMORY; /* the only way subset fails here; the message is set */
    }
    *train = t;
    *val = v;
    return KILN_OK;
}

int64_t kiln_dataset_num_samples(const kiln_dataset *ds) { return ds ? ds->n : 0; }

int kiln_dataset_shape(const kiln_dataset *ds, const int64_t **shape) {
    if (shape) *shape = ds ? ds->st->shape : NULL;
    return ds ? ds->st->ndim : 0;
}

int64_t kiln_dataset_sample_numel(const kiln_dataset *ds) { return ds ? ds->st->numel : 0; }

int kiln_dataset_num_classes(const kiln_dataset *ds) { return ds ? ds->st->num_classes : 0; }

kiln_status kiln_dataset_get(const kiln_dataset *ds, int64_t i, float *x, size_t x_count, int32_t *label) {
    static const char *op = "kiln_dataset_get";
    kiln__clear_global();
    if (!ds) return kiln__fail_global(KILN_ERR_NULL, "%s: dataset is NULL", op);
    if (i < 0 || i >= ds->n)
        return kiln__fail_global(KILN_ERR_RANGE, "%s: index %lld is outside the dataset's %lld samples", op,
                                 (long long)i, (long long)ds->n);
    if (x && x_count < (size_t)ds->st->numel)
        return kiln__fail_global(KILN_ERR_BUFFER_TOO_SMALL, "%s: x has room for %zu values, a sample has %lld", op,
                                 x_count, (long long)ds->st->numel);
    int64_t si = store_index(ds, i);
    if (x) sample_to_float(ds->st, si, x);
    if (label) *label = ds->st->y[si];
    return KILN_OK;
}

void kiln_dataset_free(kiln_dataset *ds) {
    if (!ds) return;
    store_unref(ds->st);
    free(ds->idx);
    free(ds);
}

/* ---- the loader ----------------------------------------------------------------------- */

enum { SLOT_FREE, SLOT_FILLING, SLOT_READY, SLOT_TAKEN };
#define NSLOTS 3

/* A host batch buffer. While FREE it may still be the source of writes to the device
 * (ev): whoever fills it next waits for them first. */
typedef struct slot {
    int state;
    uint64_t gen;
    int64_t seq, count;
    float *x;
    int32_t *y;
    int64_t *idx;
    cl_event ev[2];
} slot;

/* What the producer (the worker thread, or the caller with opts.sync) owns. */
typedef struct producer {
    int64_t *perm; /* order of the epoch perm_epoch (NULL without shuffle) */
    int64_t perm_epoch;
    float *scratch; /* one sample (augmentation's source) */
} producer;

struct kiln_loader {
    kiln_ctx *ctx;
    kiln_dataset *ds; /* our own reference */
    kiln_loader_opts o;
    float *mean, *std; /* norm_count values */
    int64_t B, n, nb, numel;
    int64_t ntotal; /* samples of the dataset; n is this shard's (all of them with one shard) */
    int ndim;
    int64_t shape[KILN_MAX_DIMS];
    int64_t norm_inner; /* values per index along the sample's first dim */

    /* caller's side */
    int64_t epoch, b;
    int64_t *last_idx;
    int64_t last_n;

    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool threaded, stop;
    pthread_t th;
    uint64_t gen;
    int64_t start_epoch, produce_seq, consume_seq;
    int nslots;
    slot slots[NSLOTS];

    producer prod;
};

static void wait_events(kiln_loader *l, slot *s) {
    int n = 0;
    for (int k = 0; k < 2; k++)
        if (s->ev[k]) n++;
    if (!n) return;
    /* The writes may sit in the queue unflushed; flushing from here is allowed (every
     * OpenCL call but clSetKernelArg is thread-safe). */
    clFlush(l->ctx->queue);
    for (int k = 0; k < 2; k++) {
        if (!s->ev[k]) continue;
        clWaitForEvents(1, &s->ev[k]);
        KILN__COUNT(l->ctx, event_waits, 1);
        clReleaseEvent(s->ev[k]);
        s->ev[k] = NULL;
    }
}

/* Fills s with batch b of epoch `epoch`. */
static void fill(kiln_loader *l, producer *pr, slot *s, int64_t epoch, int64_t b) {
    const kiln_dataset *ds = l->ds;
    const store *st = ds->st;
    if (l->o.shuffle && pr->perm_epoch != epoch) {
        kiln__rng r;
        kiln__rng_init(&r, l->o.seed, (uint64_t)epoch, 0, STREAM_SHUFFLE);
        permute(pr->perm, l->ntotal, &r);
        pr->perm_epoch = epoch;
    }
    int64_t start = b * l->B, count = l->n - start < l->B ? l->n - start : l->B;
    s->count = count;
    /* the shard's batch b draws its own augmentation (one shard: the stream of batch b) */
    const int64_t shards = l->o.shard_count > 1 ? l->o.shard_count : 1;
    kiln__rng ar;
    kiln__rng_init(&ar, l->o.seed, (uint64_t)epoch, (uint64_t)(b * shards + l->o.shard_rank), STREAM_AUGMENT);
    const float scale = l->o.scale;
    const int64_t numel = l->numel, inner = l->norm_inner;
    const int pad = l->o.crop_padding;
    const bool aug = pad > 0 || l->o.hflip;
    const int64_t H = l->ndim >= 2 ? l->shape[l->ndim - 2] : 1, W = l->shape[l->ndim - 1];
    for (int64_t k = 0; k < count; k++) {
        /* the shard's sample start + k is the epoch order's position rank + k * count,
         * wrapped round into the first samples past the end (the padding) */
        int64_t q = (l->o.shard_rank + (start + k) * shards) % l->ntotal;
        int64_t i = l->o.shuffle ? pr->perm[q] : q;
        int64_t si = store_index(ds, i);
        s->idx[k] = i;
        s->y[k] = st->y[si];
        float *out = s->x + (size_t)k * (size_t)numel;
        if (!aug) {
            sample_to_float(st, si, out);
        } else {
            const float *src = pr->scratch;
            sample_to_float(st, si, pr->scratch);
            int64_t oy = pad, ox = pad;
            if (pad > 0) {
                oy = (int64_t)kiln__rng_below(&ar, 2 * (uint64_t)pad + 1);
                ox = (int64_t)kiln__rng_below(&ar, 2 * (uint64_t)pad + 1);
            }
            bool flip = l->o.hflip && (kiln__rng_next(&ar) >> 63);
            for (int64_t p = 0; p < numel / (H * W); p++) {
                const float *plane = src + p * H * W;
                float *dst = out + p * H * W;
                for (int64_t yy = 0; yy < H; yy++) {
                    int64_t sy = yy + oy - pad;
                    for (int64_t xx = 0; xx < W; xx++) {
                        /* crop, then mirror the cropped window */
                        int64_t sx = (flip ? W - 1 - xx : xx) + ox - pad;
                        dst[yy * W + xx] = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? plane[sy * W + sx] : 0.0f;
                    }
                }
            }
        }
        if (l->o.norm_count == 0) {
            if (scale != 1.0f)
                for (int64_t e = 0; e < numel; e++) out[e] *= scale;
        } else {
            for (int64_t c = 0, e = 0; e < numel; c++) {
                const float m = l->mean[l->o.norm_count == 1 ? 0 : c], sd = l->std[l->o.norm_count == 1 ? 0 : c];
                for (int64_t q = 0; q < inner; q++, e++) out[e] = (out[e] * scale - m) / sd;
            }
        }
    }
}

static void *worker(void *arg) {
    kiln_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        slot *s = NULL;
        if (l->produce_seq < l->consume_seq + l->nslots)
            for (int k = 0; k < l->nslots && !s; k++)
                if (l->slots[k].state == SLOT_FREE) s = &l->slots[k];
        if (!s) {
            pthread_cond_wait(&l->cv, &l->mu);
            continue;
        }
        int64_t seq = l->produce_seq++;
        uint64_t gen = l->gen;
        int64_t epoch = l->start_epoch + seq / l->nb, b = seq % l->nb;
        s->state = SLOT_FILLING;
        pthread_mutex_unlock(&l->mu);
        wait_events(l, s);
        fill(l, &l->prod, s, epoch, b);
        pthread_mutex_lock(&l->mu);
        if (gen == l->gen) {
            s->state = SLOT_READY;
            s->gen = gen;
            s->seq = seq;
        } else {
            s->state = SLOT_FREE; /* made for an order that kiln_loader_set_epoch abandoned */
        }
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

kiln_loader_opts kiln_loader_defaults(void) {
    /* torch.utils.data.DataLoader's batch_size=1, shuffle=False, drop_last=False; values as
     * stored (scale 1), no normalisation or augmentation */
    return (kiln_loader_opts){.batch_size = 1, .scale = 1.0f};
}

kiln_loader *kiln_loader_new(kiln_ctx *ctx, const kiln_dataset *ds, const kiln_loader_opts *opts) {
    static const char *op = "kiln_loader_new";
    char sb[160];
    if (!ctx) {
        kiln__fail_global(KILN_ERR_NULL, "%s: ctx is NULL", op);
        return NULL;
    }
    if (!ds) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: dataset is NULL", op);
        return NULL;
    }
    kiln_loader_opts o = opts ? *opts : kiln_loader_defaults();
    const store *st = ds->st;
    kiln__shape_str(st->ndim, st->shape, sb, sizeof sb);
    if (ds->n == 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the dataset is empty", op);
        return NULL;
    }
    /* a zero that options left unset is named: fields are literal, no zero means a default */
    const char *hint = " (start from kiln_loader_defaults() and change fields)";
    if (o.batch_size < 1 || o.batch_size > (INT32_MAX - 65536) / st->numel) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: batch_size %lld (samples %s) must be positive and give batches of fewer than 2^31 values%s", op,
                   (long long)o.batch_size, sb, o.batch_size == 0 ? hint : "");
        return NULL;
    }
    if (!isfinite(o.scale) || o.scale == 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: scale %g must be finite and non-zero%s", op, o.scale,
                   o.scale == 0 ? hint : "");
        return NULL;
    }
    if (o.norm_count < 0 || (o.norm_count > 1 && o.norm_count != st->shape[0])) {
        kiln__fail(ctx, KILN_ERR_SHAPE,
                   "%s: norm_count %d must be 0, 1 or the size of the first dim of the samples %s (%lld)", op,
                   o.norm_count, sb, (long long)st->shape[0]);
        return NULL;
    }
    if (o.norm_count > 0 && (!o.mean || !o.std)) {
        kiln__fail(ctx, KILN_ERR_NULL, "%s: norm_count %d but %s is NULL", op, o.norm_count, !o.mean ? "mean" : "std");
        return NULL;
    }
    for (int c = 0; c < o.norm_count; c++) {
        if (!isfinite(o.mean[c]) || !(o.std[c] > 0) || !isfinite(o.std[c])) {
            kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                       "%s: mean[%d] = %g, std[%d] = %g: need a finite mean and a "
                       "finite std > 0",
                       op, c, o.mean[c], c, o.std[c]);
            return NULL;
        }
    }
    if (o.crop_padding < 0 || o.crop_padding > (1 << 20)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: crop_padding %d is outside [0, 2^20]", op, o.crop_padding);
        return NULL;
    }
    if ((o.crop_padding > 0 || o.hflip) && st->ndim < 2) {
        kiln__fail(ctx, KILN_ERR_SHAPE,
                   "%s: crop and flip need samples with (H, W) as their last dims; the dataset's "
                   "samples are %s",
                   op, sb);
        return NULL;
    }
    if (o.shard_count < 0 || o.shard_rank < 0 || o.shard_rank >= (o.shard_count > 1 ? o.shard_count : 1)) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                   "%s: shard_rank %d of shard_count %d: need 0 <= shard_rank < shard_count (0 or 1: no sharding, "
                   "rank 0)",
                   op, o.shard_rank, o.shard_count);
        return NULL;
    }
    const int64_t shards = o.shard_count > 1 ? o.shard_count : 1;
    const int64_t n_shard = (ds->n + shards - 1) / shards;
    int64_t nb = o.drop_last ? n_shard / o.batch_size : (n_shard + o.batch_size - 1) / o.batch_size;
    if (nb == 0) {
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %lld samples make no full batch of %lld (drop_last)", op,
                   (long long)n_shard, (long long)o.batch_size);
        return NULL;
    }
    /* Oclgrind 21.10 runs the queue's commands on whichever thread calls into it, so the
     * worker's clFlush/clWaitForEvents would run the simulator on two threads at once (it
     * crashes in its memory pool): batches are prepared on the calling thread there. */
    if (strstr(ctx->info.platform_name, "Oclgrind")) o.sync = true;
    kiln_loader *l = calloc(1, sizeof *l);
    if (!l) goto oom;
    l->ctx = ctx;
    l->o = o;
    l->B = o.batch_size;
    l->n = n_shard;
    l->ntotal = ds->n;
    l->nb = nb;
    l->numel = st->numel;
    l->ndim = st->ndim;
    memcpy(l->shape, st->shape, sizeof l->shape);
    l->norm_inner = st->numel / st->shape[0];
    l->nslots = o.sync ? 2 : NSLOTS;
    l->prod.perm_epoch = -1;
    l->ds = calloc(1, sizeof *l->ds);
    if (!l->ds) goto oom_free;
    l->ds->n = ds->n;
    l->ds->st = ds->st;
    atomic_fetch_add(&ds->st->refs, 1);
    if (ds->idx) {
        l->ds->idx = malloc(sizeof(int64_t) * (size_t)ds->n);
        if (!l->ds->idx) goto oom_free;
        memcpy(l->ds->idx, ds->idx, sizeof(int64_t) * (size_t)ds->n);
    }
    if (o.norm_count > 0) {
        l->mean = malloc(sizeof(float) * (size_t)o.norm_count);
        l->std = malloc(sizeof(float) * (size_t)o.norm_count);
        if (!l->mean || !l->std) goto oom_free;
        memcpy(l->mean, o.mean, sizeof(float) * (size_t)o.norm_count);
        memcpy(l->std, o.std, sizeof(float) * (size_t)o.norm_count);
    }
    l->o.mean = l->mean;
    l->o.std = l->std;
    l->last_idx = malloc(sizeof(int64_t) * (size_t)l->B);
    l->prod.scratch = malloc(sizeof(float) * (size_t)l->numel);
    if (o.shuffle) l->prod.perm = malloc(sizeof(int64_t) * (size_t)l->ntotal);
    if (!l->last_idx || !l->prod.scratch || (o.shuffle && !l->prod.perm)) goto oom_free;
    for (int k = 0; k < l->nslots; k++) {
        slot *s = &l->slots[k];
        s->x = malloc(sizeof(float) * (size_t)(l->B * l->numel));
        s->y = malloc(sizeof(int32_t) * (size_t)l->B);
        s->idx = malloc(sizeof(int64_t) * (size_t)l->B);
        if (!s->x || !s->y || !s->idx) goto oom_free;
    }
    if (!o.sync) {
        if (pthread_mutex_init(&l->mu, NULL) != 0) goto oom_free;
        if (pthread_cond_init(&l->cv, NULL) != 0) {
            pthread_mutex_destroy(&l->mu);
            goto oom_free;
        }
        if (pthread_create(&l->th, NULL, worker, l) != 0) {
            pthread_cond_destroy(&l->cv);
            pthread_mutex_destroy(&l->mu);
            kiln_loader_free(l);
            kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: cannot start the loader thread", op);
            return NULL;
        }
        l->threaded = true;
    }
    return l;
oom_free:
    kiln_loader_free(l);
oom:
    kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for batches of %lld x %s", op,
               (long long)o.batch_size, sb);
    return NULL;
}

/* Writes the slot's batch into two new tensors without waiting; the slot keeps the
 * events of the writes. */
static bool upload(kiln_loader *l, slot *s, kiln_tensor **x, kiln_tensor **y) {
    static const char *op = "kiln_loader_next";
    kiln_ctx *ctx = l->ctx;
    int64_t xs[KILN_MAX_DIMS];
    xs[0] = s->count;
    memcpy(xs + 1, l->shape, sizeof(int64_t) * (size_t)l->ndim);
    kiln_tensor *tx = kiln__tensor_new(ctx, op, KILN_F32, 1 + l->ndim, xs);
    kiln_tensor *ty = tx ? kiln__tensor_new(ctx, op, KILN_I32, 1, xs) : NULL;
    if (!ty) {
        kiln_tensor_free(tx);
        return false;
    }
    size_t xb = sizeof(float) * (size_t)(s->count * l->numel), yb = sizeof(int32_t) * (size_t)s->count;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, tx->st->mem, CL_FALSE, (size_t)tx->offset * sizeof(float), xb, s->x,
                                      0, NULL, &s->ev[0]);
    if (err == CL_SUCCESS)
        err = clEnqueueWriteBuffer(ctx->queue, ty->st->mem, CL_FALSE, (size_t)ty->offset * sizeof(int32_t), yb, s->y, 0,
                                   NULL, &s->ev[1]);
    if (err == CL_SUCCESS) KILN__COUNT(ctx, bytes_to_device, xb + yb);
    if (err != CL_SUCCESS) {
        kiln__fail(ctx, kiln__cl_status(err), "%s: writing a batch of %zu bytes to '%s' failed: %s (%d)", op, xb + yb,
                   ctx->info.name, kiln__cl_name(err), err);
        kiln_tensor_free(tx);
        kiln_tensor_free(ty);
        wait_events(l, s); /* a first write may be in flight from s */
        return false;
    }
    *x = tx;
    *y = ty;
    return true;
}

bool kiln_loader_next(kiln_loader *l, kiln_tensor **x, kiln_tensor **y) {
    if (x) *x = NULL;
    if (y) *y = NULL;
    if (!l) {
        kiln__fail_global(KILN_ERR_NULL, "kiln_loader_next: loader is NULL");
        return false;
    }
    if (!x || !y) {
        kiln__fail(l->ctx, KILN_ERR_NULL, "kiln_loader_next: %s is NULL", !x ? "x" : "y");
        return false;
    }
    if (l->b == l->nb) { /* end of the epoch; the next call starts the next one */
        l->epoch++;
        l->b = 0;
        return false;
    }
    int64_t seq = (l->epoch - l->start_epoch) * l->nb + l->b;
    slot *s = NULL;
    if (l->threaded) {
        pthread_mutex_lock(&l->mu);
        for (;;) {
            for (int k = 0; k < l->nslots && !s; k++)
                if (l->slots[k].state == SLOT_READY && l->slots[k].gen == l->gen && l->slots[k].seq == seq)
                    s = &l->slots[k];
            if (s) break;
            pthread_cond_wait(&l->cv, &l->mu);
        }
        s->state = SLOT_TAKEN;
        l->consume_seq++;
        pthread_mutex_unlock(&l->mu);
    } else {
        s = &l->slots[seq % l->nslots];
        wait_events(l, s);
        fill(l, &l->prod, s, l->epoch, l->b);
    }
    bool ok = upload(l, s, x, y);
    if (ok) {
        memcpy(l->last_idx, s->idx, sizeof(int64_t) * (size_t)s->count);
        l->last_n = s->count;
        l->b++;
    }
    if (l->threaded) {
        pthread_mutex_lock(&l->mu);
        if (ok) {
            s->state = SLOT_FREE;
        } else {
            /* Put it back so a retry finds it. */
            s->state = SLOT_READY;
            l->consume_seq--;
        }
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
    }
    return ok;
}

int64_t kiln_loader_num_batches(const kiln_loader *l) { return l ? l->nb : 0; }

int64_t kiln_loader_epoch(const kiln_loader *l) { return l ? l->epoch : 0; }

kiln_status kiln_loader_set_epoch(kiln_loader *l, int64_t epoch) {
    if (!l) return kiln__fail_global(KILN_ERR_NULL, "kiln_loader_set_epoch: loader is NULL");
    if (epoch < 0)
        return kiln__fail(l->ctx, KILN_ERR_RANGE, "kiln_loader_set_epoch: epoch %lld is negative", (long long)epoch);
    if (l->threaded) pthread_mutex_lock(&l->mu);
    l->gen++;
    l->start_epoch = epoch;
    l->produce_seq = l->consume_seq = 0;
    if (l->threaded) {
        for (int k = 0; k < l->nslots; k++)
            if (l->slots[k].state == SLOT_READY) l->slots[k].state = SLOT_FREE;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
    }
    l->epoch = epoch;
    l->b = 0;
    return KILN_OK;
}

kiln_status kiln_loader_reset(kiln_loader *l) {
    if (!l) return kiln__fail_global(KILN_ERR_NULL, "kiln_loader_reset: loader is NULL");
    /* After the last batch of an epoch (before the call that returns false) the current
     * epoch is still that one. */
    return kiln_loader_set_epoch(l, l->epoch);
}

int64_t kiln_loader_batch_indices(const kiln_loader *l, const int64_t **idx) {
    if (idx) *idx = l ? l->last_idx : NULL;
    return l ? l->last_n : 0;
}

void kiln_loader_free(kiln_loader *l) {
    if (!l) return;
    if (l->threaded) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->th, NULL);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
    }
    for (int k = 0; k < NSLOTS; k++) {
        slot *s = &l->slots[k];
        if (l->ctx) wait_events(l, s); /* the device may still be reading these buffers */
        free(s->x);
        free(s->y);
        free(s->idx);
    }
    kiln_dataset_free(l->ds);
    free(l->mean);
    free(l->std);
    free(l->last_idx);
    free(l->prod.perm);
    free(l->prod.scratch);
    free(l);
}
