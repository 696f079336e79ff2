/* src/train/metrics.c - classification metrics on the host: the confusion matrix with
 * precision/recall/F1 (sklearn's definitions), its text table, and top-k counts; and the
 * Fréchet distance between two Gaussians (the FID of generated images). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/ops_internal.h"
#include "kiln/train.h"

struct kiln_confusion {
    int n;      /* classes */
    int64_t *m; /* n * n counts, m[truth * n + pred] */
    int64_t total;
};

kiln_confusion *kiln_confusion_new(int num_classes) {
    if (num_classes < 1) {
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "kiln_confusion_new: num_classes is %d; it must be >= 1",
                          num_classes);
        return NULL;
    }
    /* n * n counts must fit in memory; 2^15 classes is already a 8 GiB matrix */
    if (num_classes > 32768) {
        kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "kiln_confusion_new: %d classes is more than the 32768 supported",
                          num_classes);
        return NULL;
    }
    kiln_confusion *cm = calloc(1, sizeof *cm);
    if (cm) cm->m = calloc((size_t)num_classes * (size_t)num_classes, sizeof(int64_t));
    if (!cm || !cm->m) {
        free(cm);
        kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "kiln_confusion_new: out of host memory for %d x %d counts",
                          num_classes, num_classes);
        return NULL;
    }
    cm->n = num_classes;
    return cm;
}

void kiln_confusion_free(kiln_confusion *cm) {
    if (!cm) return;
    free(cm->m);
    free(cm);
}

void kiln_confusion_reset(kiln_confusion *cm) {
    if (!cm) return;
    memset(cm->m, 0, sizeof(int64_t) * (size_t)cm->n * (size_t)cm->n);
    cm->total = 0;
}

kiln_status kiln_confusion_add(kiln_confusion *cm, const int32_t *truth, const int32_t *pred, int64_t n) {
    static const char *op = "kiln_confusion_add";
    if (!cm) return kiln__fail_global(KILN_ERR_NULL, "%s: confusion matrix is NULL", op);
    if (n < 0) return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: n is %lld", op, (long long)n);
    if (n == 0) return KILN_OK;
    if (!truth || !pred) return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op, !truth ? "truth" : "pred");
    /* validate everything first: a bad pair adds nothing */
    for (int64_t i = 0; i < n; i++) {
        if (truth[i] < 0 || truth[i] >= cm->n)
            return kiln__fail_global(KILN_ERR_RANGE, "%s: true class %d at index %lld is outside [0, %d)", op,
                                     (int)truth[i], (long long)i, cm->n);
        if (pred[i] < 0 || pred[i] >= cm->n)
            return kiln__fail_global(KILN_ERR_RANGE, "%s: predicted class %d at index %lld is outside [0, %d)", op,
                                     (int)pred[i], (long long)i, cm->n);
    }
    for (int64_t i = 0; i < n; i++) cm->m[(size_t)truth[i] * (size_t)cm->n + (size_t)pred[i]]++;
    cm->total += n;
    return KILN_OK;
}

/* Checks logits [N, C] (F32) and labels [N] (I32) of one context; C must equal want_c
 * when want_c > 0. */
static kiln_status check_logits_labels(const char *op, kiln_tensor *logits, kiln_tensor *labels, int want_c) {
    kiln_ctx *ctx = kiln_tensor_ctx(logits);
    char a[160], b[160];
    if (!ctx) return kiln__fail_global(KILN_ERR_NULL, "%s: logits is NULL", op);
    if (!labels) return kiln__fail(ctx, KILN_ERR_NULL, "%s: labels is NULL", op);
    if (kiln_tensor_ctx(labels) != ctx)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: logits and labels belong to two contexts", op);
    kiln_tensor_shape_str(logits, a, sizeof a);
    kiln_tensor_shape_str(labels, b, sizeof b);
    if (kiln_tensor_dtype(logits) != KILN_F32 || kiln_tensor_ndim(logits) != 2)
        return kiln__fail(ctx, kiln_tensor_dtype(logits) != KILN_F32 ? KILN_ERR_DTYPE : KILN_ERR_SHAPE,
                          "%s: logits %s %s must be f32 [N, C]", op, kiln_dtype_name(kiln_tensor_dtype(logits)), a);
    if (kiln_tensor_dtype(labels) != KILN_I32 || kiln_tensor_ndim(labels) != 1 ||
        kiln_tensor_shape(labels)[0] != kiln_tensor_shape(logits)[0])
        return kiln__fail(ctx, kiln_tensor_dtype(labels) != KILN_I32 ? KILN_ERR_DTYPE : KILN_ERR_SHAPE,
                          "%s: labels %s %s must be i32 [N] for logits %s", op,
                          kiln_dtype_name(kiln_tensor_dtype(labels)), b, a);
    if (want_c > 0 && kiln_tensor_shape(logits)[1] != want_c)
        return kiln__fail(ctx, KILN_ERR_SHAPE, "%s: logits %s have %lld classes; the confusion matrix has %d", op, a,
                          (long long)kiln_tensor_shape(logits)[1], want_c);
    return KILN_OK;
}

kiln_status kiln_confusion_update(kiln_confusion *cm, kiln_tensor *logits, kiln_tensor *labels) {
    static const char *op = "kiln_confusion_update";
    if (!cm) {
        kiln_ctx *ctx = kiln_tensor_ctx(logits);
        if (ctx) return kiln__fail(ctx, KILN_ERR_NULL, "%s: confusion matrix is NULL", op);
        return kiln__fail_global(KILN_ERR_NULL, "%s: confusion matrix is NULL", op);
    }
    kiln_status s = check_logits_labels(op, logits, labels, cm->n);
    if (s != KILN_OK) return s;
    kiln_ctx *ctx = kiln_tensor_ctx(logits);
    int64_t n = kiln_tensor_shape(logits)[0];
    if (n == 0) return KILN_OK;
    int32_t *h = malloc(sizeof(int32_t) * 2 * (size_t)n);
    if (!h)
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %lld labels", op, (long long)n);
    bool prev = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *pred = kiln_argmax(ctx, logits, 1, false);
    kiln_ctx_set_grad_enabled(ctx, prev);
    s = pred ? kiln_to_host(pred, h, sizeof(int32_t) * (size_t)n) : kiln_error_status(ctx);
    if (s == KILN_OK) s = kiln_to_host(labels, h + n, sizeof(int32_t) * (size_t)n);
    kiln_tensor_free(pred);
    if (s == KILN_OK) {
        s = kiln_confusion_add(cm, h + n, h, n);
        if (s != KILN_OK) kiln__fail(ctx, s, "%s", kiln_last_error());
    }
    free(h);
    return s;
}

int kiln_confusion_num_classes(const kiln_confusion *cm) { return cm ? cm->n : 0; }

int64_t kiln_confusion_count(const kiln_confusion *cm, int truth, int pred) {
    if (!cm || truth < 0 || truth >= cm->n || pred < 0 || pred >= cm->n) return 0;
    return cm->m[(size_t)truth * (size_t)cm->n + (size_t)pred];
}

int64_t kiln_confusion_total(const kiln_confusion *cm) { return cm ? cm->total : 0; }

double kiln_confusion_accuracy(const kiln_confusion *cm) {
    if (!cm || cm->total == 0) return 0;
    int64_t ok = 0;
    for (int c = 0; c < cm->n; c++) ok += cm->m[(size_t)c * (size_t)cm->n + (size_t)c];
    return (double)ok / (double)cm->total;
}

/* Precision, recall, F1 and support of class c; zero_division = 0 everywhere. F1 comes
 * from the counts (2tp / (2tp + fp + fn)), as sklearn computes it. */
static void class_prf(const kiln_confusion *cm, int c, double *p, double *r, double *f, int64_t *support) {
    size_t n = (size_t)cm->n;
    int64_t tp = cm->m[(size_t)c * n + (size_t)c], predicted = 0, actual = 0;
    for (size_t k = 0; k < n; k++) {
        predicted += cm->m[k * n + (size_t)c];
        actual += cm->m[(size_t)c * n + k];
    }
    int64_t fp = predicted - tp, fn = actual - tp;
    *p = predicted ? (double)tp / (double)predicted : 0.0;
    *r = actual ? (double)tp / (double)actual : 0.0;
    *f = (2 * tp + fp + fn) ? 2.0 * (double)tp / (double)(2 * tp + fp + fn) : 0.0;
    if (support) *support = actual;
}

kiln_status kiln_confusion_prf(const kiln_confusion *cm, int cls, double *precision, double *recall, double *f1) {
    static const char *op = "kiln_confusion_prf";
    if (!cm) return kiln__fail_global(KILN_ERR_NULL, "%s: confusion matrix is NULL", op);
    if (cls < -1 || cls >= cm->n)
        return kiln__fail_global(KILN_ERR_RANGE, "%s: class %d is outside [0, %d) (-1: macro average)", op, cls, cm->n);
    double p = 0, r = 0, f = 0;
    if (cls >= 0) {
        class_prf(cm, cls, &p, &r, &f, NULL);
    } else {
        for (int c = 0; c < cm->n; c++) {
            double pc, rc, fc;
            class_prf(cm, c, &pc, &rc, &fc, NULL);
            p += pc;
            r += rc;
            f += fc;
        }
        p /= cm->n;
        r /= cm->n;
        f /= cm->n;
    }
    if (precision) *precision = p;
    if (recall) *recall = r;
    if (f1) *f1 = f;
    return KILN_OK;
}

/* ---- text table ------------------------------------------------------------------------ */

typedef struct sbuf {
    char *buf;
    size_t cap, len;
} sbuf;

static void sb_printf(sbuf *s, const char *fmt, ...) KILN__PRINTF(2, 3);
static void sb_printf(sbuf *s, const char *fmt, ...) {
    if (s->len + 1 >= s->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(s->buf + s->len, s->cap - s->len, fmt, ap);
    va_end(ap);
    if (w < 0) return;
    s->len += (size_t)w;
    if (s->len >= s->cap) s->len = s->cap - 1; /* truncated; the buffer stays terminated */
}

static int digits(int64_t v) {
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

#define COL_NAME_MAX 12 /* longer class names are cut in the matrix's column headers */

char *kiln_confusion_format(const kiln_confusion *cm, const char *const *class_names, char *buf, size_t cap) {
    if (!buf || cap == 0) return buf;
    buf[0] = '\0';
    sbuf s = {buf, cap, 0};
    if (!cm) {
        sb_printf(&s, "(no confusion matrix)\n");
        return buf;
    }
    int n = cm->n;
    char idx[32];
#define NAME(c) (class_names && class_names[c] ? class_names[c] : (snprintf(idx, sizeof idx, "%d", (c)), idx))
    /* row label width: the longest class name, at least "macro avg" */
    int rw = (int)strlen("macro avg");
    for (int c = 0; c < n; c++) {
        int l = (int)strlen(NAME(c));
        if (l > rw) rw = l;
    }
    if (rw > 40) rw = 40;
    /* matrix column width: the widest count or (cut) header */
    int64_t mx = 0;
    for (size_t k = 0; k < (size_t)n * (size_t)n; k++)
        if (cm->m[k] > mx) mx = cm->m[k];
    int cw = digits(mx);
    for (int c = 0; c < n; c++) {
        int l = (int)strlen(NAME(c));
        if (l > COL_NAME_MAX) l = COL_NAME_MAX;
        if (l > cw) cw = l;
    }
    sb_printf(&s, "confusion matrix (rows: true class, columns: predicted class), %lld samples\n",
              (long long)cm->total);
    sb_printf(&s, "%-*s", rw, "");
    for (int c = 0; c < n; c++) sb_printf(&s, "  %*.*s", cw, COL_NAME_MAX, NAME(c));
    sb_printf(&s, "\n");
    for (int t = 0; t < n; t++) {
        sb_printf(&s, "%-*.*s", rw, rw, NAME(t));
        for (int p = 0; p < n; p++) sb_printf(&s, "  %*lld", cw, (long long)cm->m[(size_t)t * (size_t)n + (size_t)p]);
        sb_printf(&s, "\n");
    }
    int sw = digits(cm->total);
    if (sw < 7) sw = 7;
    sb_printf(&s, "\n%-*s  %9s  %9s  %9s  %*s\n", rw, "class", "precision", "recall", "f1", sw, "support");
    for (int c = 0; c < n; c++) {
        double p, r, f;
        int64_t sup;
        class_prf(cm, c, &p, &r, &f, &sup);
        sb_printf(&s, "%-*.*s  %9.4f  %9.4f  %9.4f  %*lld\n", rw, rw, NAME(c), p, r, f, sw, (long long)sup);
    }
    double p, r, f;
    kiln_confusion_prf(cm, -1, &p, &r, &f);
    sb_printf(&s, "%-*s  %9.4f  %9.4f  %9.4f  %*lld\n", rw, "macro avg", p, r, f, sw, (long long)cm->total);
    sb_printf(&s, "%-*s  %9s  %9s  %9.4f  %*lld\n", rw, "accuracy", "", "", kiln_confusion_accuracy(cm), sw,
              (long long)cm->total);
#undef NAME
    return buf;
}

/* ---- top-k ------------------------------------------------------------------------------- */

/* Whether logit a (class i) ranks before logit b (class j): the order of kiln_argmax, NaN
 * first (the first NaN before later ones), then larger values, ties to the lower class. */
static bool ranks_before(float a, int i, float b, int j) {
    if (isnan(a) || isnan(b)) return isnan(a) && (!isnan(b) || i < j);
    return a > b || (a == b && i < j);
}

kiln_status kiln_topk_correct(kiln_tensor *logits, kiln_tensor *labels, int k, int64_t *correct) {
    static const char *op = "kiln_topk_correct";
    if (correct) *correct = 0;
    kiln_status s = check_logits_labels(op, logits, labels, 0);
    if (s != KILN_OK) return s;
    kiln_ctx *ctx = kiln_tensor_ctx(logits);
    if (!correct) return kiln__fail(ctx, KILN_ERR_NULL, "%s: correct is NULL", op);
    int64_t n = kiln_tensor_shape(logits)[0], c = kiln_tensor_shape(logits)[1];
    if (k < 1 || k > c)
        return kiln__fail(ctx, KILN_ERR_RANGE, "%s: k is %d; it must lie in [1, %lld] (the number of classes)", op, k,
                          (long long)c);
    if (n == 0) return KILN_OK;
    float *x = malloc(sizeof(float) * (size_t)n * (size_t)c);
    int32_t *y = malloc(sizeof(int32_t) * (size_t)n);
    if (!x || !y) {
        free(x);
        free(y);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for logits [%lld, %lld]", op,
                          (long long)n, (long long)c);
    }
    s = kiln_to_host(logits, x, sizeof(float) * (size_t)n * (size_t)c);
    if (s == KILN_OK) s = kiln_to_host(labels, y, sizeof(int32_t) * (size_t)n);
    int64_t ok = 0;
    for (int64_t r = 0; s == KILN_OK && r < n; r++) {
        int32_t t = y[r];
        if (t < 0 || t >= c) {
            s = kiln__fail(ctx, KILN_ERR_RANGE, "%s: label %d at index %lld is outside [0, %lld)", op, (int)t,
                           (long long)r, (long long)c);
            break;
        }
        const float *row = x + (size_t)r * (size_t)c;
        int64_t before = 0;
        for (int64_t j = 0; j < c && before < k; j++)
            if (j != t && ranks_before(row[j], (int)j, row[t], t)) before++;
        if (before < k) ok++;
    }
    free(x);
    free(y);
    if (s == KILN_OK) *correct = ok;
    return s;
}

/* ---- Fréchet distance ----------------------------------------------------------------- */

/* The eigenvalues (w[d]) and eigenvectors (columns of v[d * d]) of the symmetric a[d * d],
 * which is destroyed: cyclic Jacobi rotations (Golub & Van Loan, Matrix Computations,
 * 8.5) until the off-diagonal mass is below 1e-30 of the whole or after 100 sweeps. */
static void jacobi_eigen(int d, double *a, double *w, double *v) {
    size_t n = (size_t)d;
    for (size_t i = 0; i < n * n; i++) v[i] = 0;
    for (size_t i = 0; i < n; i++) v[i * n + i] = 1;
    double total = 0;
    for (size_t i = 0; i < n * n; i++) total += a[i] * a[i];
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0;
        for (size_t p = 0; p < n; p++)
            for (size_t q = p + 1; q < n; q++) off += 2 * a[p * n + q] * a[p * n + q];
        if (off <= 1e-30 * total || off == 0) break;
        for (size_t p = 0; p < n; p++)
            for (size_t q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (apq == 0) continue;
                /* the rotation that zeroes a[p][q]: t = tan(theta) of the smaller angle */
                double theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (size_t k = 0; k < n; k++) { /* columns p and q: A J */
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (size_t k = 0; k < n; k++) { /* rows p and q: J^T A J */
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for (size_t k = 0; k < n; k++) { /* V J */
                    double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
    for (size_t i = 0; i < n; i++) w[i] = a[i * n + i];
}

kiln_status kiln_frechet_distance(int d, const double *mu1, const double *cov1, const double *mu2, const double *cov2,
                                  double *out) {
    static const char *op = "kiln_frechet_distance";
    if (!mu1 || !cov1 || !mu2 || !cov2 || !out)
        return kiln__fail_global(KILN_ERR_NULL, "%s: %s is NULL", op,
                                 !mu1    ? "mu1"
                                 : !cov1 ? "cov1"
                                 : !mu2  ? "mu2"
                                 : !cov2 ? "cov2"
                                         : "out");
    if (d < 1 || d > 4096)
        return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: dimension %d is outside [1, 4096]", op, d);
    size_t n = (size_t)d;
    const double *const in[4] = {mu1, cov1, mu2, cov2};
    static const char *const in_name[4] = {"mu1", "cov1", "mu2", "cov2"};
    for (int k = 0; k < 4; k++) {
        size_t len = k % 2 ? n * n : n;
        for (size_t i = 0; i < len; i++)
            if (!isfinite(in[k][i]))
                return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT, "%s: %s[%zu] is %g, not finite (d = %d)", op,
                                         in_name[k], i, in[k][i], d);
    }
    for (int k = 1; k < 4; k += 2)
        for (size_t i = 0; i < n; i++)
            for (size_t j = i + 1; j < n; j++) {
                double x = in[k][i * n + j], y = in[k][j * n + i];
                if (fabs(x - y) > 1e-9 * (fabs(x) + fabs(y)) + 1e-300)
                    return kiln__fail_global(KILN_ERR_INVALID_ARGUMENT,
                                             "%s: %s is not symmetric: [%zu][%zu] is %g, [%zu][%zu] is %g (d = %d)", op,
                                             in_name[k], i, j, x, j, i, y, d);
            }
    double *a = malloc(sizeof(double) * n * n), *v = malloc(sizeof(double) * n * n);
    double *s = malloc(sizeof(double) * n * n), *w = malloc(sizeof(double) * n);
    if (!a || !v || !s || !w) {
        free(a), free(v), free(s), free(w);
        return kiln__fail_global(KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory for %d x %d matrices", op, d, d);
    }
    /* s = sqrt(cov1) = V diag(sqrt(max(w, 0))) V^T; rounding can make a zero eigenvalue of a
     * positive semi-definite matrix slightly negative */
    memcpy(a, cov1, sizeof(double) * n * n);
    jacobi_eigen(d, a, w, v);
    for (size_t i = 0; i < n; i++) w[i] = sqrt(w[i] > 0 ? w[i] : 0);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double x = 0;
            for (size_t k = 0; k < n; k++) x += v[i * n + k] * w[k] * v[j * n + k];
            s[i * n + j] = x;
        }
    /* m = s cov2 s, symmetric positive semi-definite with the eigenvalues of cov1 cov2; its
     * square root's trace is tr(sqrt(cov1 cov2)) */
    for (size_t i = 0; i < n; i++) /* v = s cov2 */
        for (size_t j = 0; j < n; j++) {
            double x = 0;
            for (size_t k = 0; k < n; k++) x += s[i * n + k] * cov2[k * n + j];
            v[i * n + j] = x;
        }
    for (size_t i = 0; i < n; i++) /* a = v s, symmetrised against rounding */
        for (size_t j = 0; j <= i; j++) {
            double x = 0, y = 0;
            for (size_t k = 0; k < n; k++) x += v[i * n + k] * s[k * n + j], y += v[j * n + k] * s[k * n + i];
            a[i * n + j] = a[j * n + i] = 0.5 * (x + y);
        }
    jacobi_eigen(d, a, w, v);
    double tr_sqrt = 0, tr1 = 0, tr2 = 0, dmu = 0;
    for (size_t i = 0; i < n; i++) {
        tr_sqrt += sqrt(w[i] > 0 ? w[i] : 0);
        tr1 += cov1[i * n + i];
        tr2 += cov2[i * n + i];
        dmu += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]);
    }
    free(a), free(v), free(s), free(w);
    *out = dmu + tr1 + tr2 - 2 * tr_sqrt;
    return KILN_OK;
}
