/* tests/test_train.c - classification metrics, the fit/evaluate loop, the CSV log and the
 * SVG plot.
 *
 * Metrics are checked against hand-computed examples (sklearn's definitions with
 * zero_division=0). fit runs on two Gaussian blobs (separable: it must reach high
 * accuracy), with lr 0 (nothing improves: early stopping must trigger after `patience`
 * epochs, and the epoch's reported train loss/accuracy must equal an evaluation of the
 * unchanged model), with a loss that turns to gradient ascent after two epochs (the best
 * epoch is not the last one: restore_best must bring back the weights saved at best_path),
 * and through its error paths (no leaked tensors, no open scope). A short Fashion-MNIST
 * run (3000 training images, one epoch, 1000 test images) must beat chance by far; the
 * test exits 77 only when everything else passed and the dataset files are missing.
 */
#define _POSIX_C_SOURCE 200809L
#define _XOPEN_SOURCE 700
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include <kiln/train.h>

static char tmpdir[256];

static void path_in(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", tmpdir, name); }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Whole file into a malloc'ed string (NULL when missing). */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; s && *s; s++) n += *s == '\n';
    return n;
}

static int count_sub(const char *s, const char *sub) {
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, sub)); p += strlen(sub)) n++;
    return n;
}

#define NEAR(a, b, tol) (fabs((double)(a) - (double)(b)) <= (tol))

/* ---- metrics on the host ---------------------------------------------------------------- */

static void test_confusion_host(void) {
    /* truth 0 0 0 1 1 2 2 2 2, predictions 0 0 1 0 1 0 0 1 1: class 2 is never predicted.
     *            pred 0  1  2
     *   true 0      2  1  0      precision 2/5  recall 2/3  F1 2*2/(4+3+1) = 1/2
     *   true 1      1  1  0      precision 1/4  recall 1/2  F1 2/(2+3+1)   = 1/3
     *   true 2      2  2  0      precision 0    recall 0    F1 0
     * macro: P 0.65/3, R (2/3 + 1/2)/3, F1 (1/2 + 1/3)/3; accuracy 3/9 */
    const int32_t truth[] = {0, 0, 0, 1, 1, 2, 2, 2, 2};
    const int32_t pred[] = {0, 0, 1, 0, 1, 0, 0, 1, 1};
    kiln_confusion *cm = kiln_confusion_new(3);
    CHECK(cm != NULL, "kiln_confusion_new(3): %s", kiln_last_error());
    if (!cm) return;
    CHECK(kiln_confusion_add(cm, truth, pred, 9) == KILN_OK, "add: %s", kiln_last_error());
    CHECK(kiln_confusion_total(cm) == 9, "total %lld", (long long)kiln_confusion_total(cm));
    CHECK(kiln_confusion_num_classes(cm) == 3, "classes");
    const int64_t want[3][3] = {{2, 1, 0}, {1, 1, 0}, {2, 2, 0}};
    for (int t = 0; t < 3; t++)
        for (int p = 0; p < 3; p++)
            CHECK(kiln_confusion_count(cm, t, p) == want[t][p], "count(%d, %d) = %lld, want %lld", t, p,
                  (long long)kiln_confusion_count(cm, t, p), (long long)want[t][p]);
    CHECK(kiln_confusion_count(cm, 3, 0) == 0 && kiln_confusion_count(cm, -1, 0) == 0, "count out of range is 0");
    CHECK(NEAR(kiln_confusion_accuracy(cm), 3.0 / 9, 1e-12), "accuracy %g", kiln_confusion_accuracy(cm));
    const double P[3] = {0.4, 0.25, 0}, R[3] = {2.0 / 3, 0.5, 0}, F[3] = {0.5, 1.0 / 3, 0};
    for (int c = 0; c < 3; c++) {
        double p = -1, r = -1, f = -1;
        CHECK(kiln_confusion_prf(cm, c, &p, &r, &f) == KILN_OK, "prf(%d)", c);
        CHECK(NEAR(p, P[c], 1e-12) && NEAR(r, R[c], 1e-12) && NEAR(f, F[c], 1e-12),
              "class %d: P %g R %g F1 %g, want %g %g %g", c, p, r, f, P[c], R[c], F[c]);
    }
    double p, r, f;
    CHECK(kiln_confusion_prf(cm, -1, &p, &r, &f) == KILN_OK, "prf(-1)");
    CHECK(NEAR(p, 0.65 / 3, 1e-12) && NEAR(r, (2.0 / 3 + 0.5) / 3, 1e-12) && NEAR(f, (0.5 + 1.0 / 3) / 3, 1e-12),
          "macro P %g R %g F1 %g", p, r, f);
    CHECK(kiln_confusion_prf(cm, -1, NULL, NULL, &f) == KILN_OK, "NULL outs allowed");
    CHECK(kiln_confusion_prf(cm, 3, &p, NULL, NULL) == KILN_ERR_RANGE, "class 3 of 3 is out of range");
    CHECK(strstr(kiln_last_error(), "class 3") != NULL, "message: %s", kiln_last_error());
    CHECK(kiln_confusion_prf(cm, -2, &p, NULL, NULL) == KILN_ERR_RANGE, "class -2");

    /* out-of-range classes add nothing, even after valid pairs in the same call */
    const int32_t bt[] = {0, 1, 3}, bp[] = {0, 1, 1};
    CHECK(kiln_confusion_add(cm, bt, bp, 3) == KILN_ERR_RANGE, "true class 3 of 3");
    CHECK(strstr(kiln_last_error(), "true class 3 at index 2") != NULL, "message: %s", kiln_last_error());
    const int32_t bp2[] = {0, -1, 1};
    CHECK(kiln_confusion_add(cm, bp, bp2, 3) == KILN_ERR_RANGE, "predicted class -1");
    CHECK(strstr(kiln_last_error(), "predicted class -1 at index 1") != NULL, "message: %s", kiln_last_error());
    CHECK(kiln_confusion_total(cm) == 9 && kiln_confusion_count(cm, 0, 0) == 2, "nothing added by a bad call");
    CHECK(kiln_confusion_add(cm, NULL, bp, 1) == KILN_ERR_NULL, "NULL truth");
    CHECK(kiln_confusion_add(cm, NULL, NULL, 0) == KILN_OK, "n 0 adds nothing");
    CHECK(kiln_confusion_add(NULL, bt, bp, 1) == KILN_ERR_NULL, "NULL matrix");

    /* the table: aligned, with names, every count and the per-class figures */
    static const char *const names[] = {"cat", "dog", "hippopotamus"};
    char buf[4096];
    kiln_confusion_format(cm, names, buf, sizeof buf);
    CHECK(strstr(buf, "hippopotamus") && strstr(buf, "precision") && strstr(buf, "macro avg") &&
              strstr(buf, "0.4000") && strstr(buf, "0.3333") && strstr(buf, "0.2167"),
          "table:\n%s", buf);
    /* every matrix row has the same length (aligned columns) */
    const char *row0 = strstr(buf, "\ncat "), *row2 = strstr(buf, "\nhippopotamus ");
    CHECK(row0 && row2 && strchr(row0 + 1, '\n') - row0 == strchr(row2 + 1, '\n') - row2, "rows aligned:\n%s", buf);
    kiln_confusion_format(cm, NULL, buf, sizeof buf);
    CHECK(strstr(buf, "macro avg") != NULL, "table without names:\n%s", buf);
    char small[40];
    CHECK(kiln_confusion_format(cm, names, small, sizeof small) == small && strlen(small) == sizeof small - 1,
          "truncated table stays terminated");

    /* reset; a class never present nor predicted has P = R = F1 = 0 and counts in the mean */
    kiln_confusion_reset(cm);
    CHECK(kiln_confusion_total(cm) == 0 && kiln_confusion_accuracy(cm) == 0, "reset");
    const int32_t t2[] = {0, 1}, p2[] = {0, 1};
    kiln_confusion_add(cm, t2, p2, 2);
    kiln_confusion_prf(cm, -1, &p, &r, &f);
    CHECK(NEAR(p, 2.0 / 3, 1e-12) && NEAR(r, 2.0 / 3, 1e-12) && NEAR(f, 2.0 / 3, 1e-12), "absent class: %g %g %g", p, r,
          f);
    kiln_confusion_free(cm);
    kiln_confusion_free(NULL);

    CHECK(kiln_confusion_new(0) == NULL, "0 classes");
    CHECK(strstr(kiln_last_error(), "num_classes") != NULL, "message: %s", kiln_last_error());
    CHECK(kiln_confusion_accuracy(NULL) == 0 && kiln_confusion_total(NULL) == 0, "NULL-safe getters");
}

/* ---- plot and CSV on the host ------------------------------------------------------------ */

static void test_plot_host(void) {
    char path[512], csv[512];
    path_in(path, sizeof path, "one.svg");
    kiln_epoch_stats h[4] = {
        {.epoch = 1, .train_loss = 1.5, .train_accuracy = 0.4, .val_loss = NAN, .val_accuracy = NAN, .lr = 0.1},
        {.epoch = 2, .train_loss = 0.9, .train_accuracy = 0.6, .val_loss = 1.0, .val_accuracy = 0.55, .lr = 0.1},
        {.epoch = 3, .train_loss = NAN, .train_accuracy = 0.7, .val_loss = 0.8, .val_accuracy = 0.65, .lr = 0.1},
        {.epoch = 4, .train_loss = 0.5, .train_accuracy = 0.8, .val_loss = 0.7, .val_accuracy = 0.7, .lr = 0.01},
    };
    /* one epoch: markers instead of lines */
    CHECK(kiln_plot_history(path, h, 1, "one <epoch> & \"more\"") == KILN_OK, "plot n=1: %s", kiln_last_error());
    char *s = slurp(path);
    CHECK(s && strncmp(s, "<svg", 4) == 0, "starts with <svg");
    CHECK(s && strstr(s, "<circle") && !strstr(s, "<polyline"), "single point as a marker");
    CHECK(s && strstr(s, "one &lt;epoch&gt; &amp; &quot;more&quot;"), "title escaped");
    CHECK(s && strstr(s, "</svg>"), "complete");
    free(s);
    /* NaN points are skipped: train loss splits into a run of 2 and a lone point */
    CHECK(kiln_plot_history(path, h, 4, NULL) == KILN_OK, "plot n=4: %s", kiln_last_error());
    s = slurp(path);
    CHECK(s && !strstr(s, "\"nan") && !strstr(s, "nan,") && !strstr(s, ",nan") && !strstr(s, "-nan") &&
              !strstr(s, "inf,") && !strstr(s, "\"inf") && !strstr(s, ",inf"),
          "no NaN coordinates");
    CHECK(count_sub(s, "<polyline") == 4, "4 polylines (train loss 1-2, val loss, both accuracies): %d",
          count_sub(s, "<polyline"));
    CHECK(count_sub(s, "stroke-dasharray") >= 2, "validation dashed");
    CHECK(s && strstr(s, ">validation<") && strstr(s, ">train<") && strstr(s, ">epoch<") && strstr(s, ">accuracy<"),
          "legend and axis labels");
    free(s);
    /* no temporary file is left behind */
    char tmpl[600];
    snprintf(tmpl, sizeof tmpl, "ls %s | grep -c tmp > /dev/null", tmpdir);
    CHECK(system(tmpl) != 0, "temporary files left in %s", tmpdir);
    CHECK(kiln_plot_history(path, NULL, 0, NULL) == KILN_OK, "n 0: an empty plot");
    CHECK(kiln_plot_history("/nonexistent-dir/x.svg", h, 4, NULL) == KILN_ERR_IO, "bad directory");
    CHECK(strstr(kiln_last_error(), "/nonexistent-dir/x.svg") != NULL, "message: %s", kiln_last_error());
    CHECK(kiln_plot_history(NULL, h, 4, NULL) == KILN_ERR_NULL, "NULL path");
    CHECK(kiln_plot_history(path, NULL, 2, NULL) == KILN_ERR_NULL, "NULL history");

    /* one panel of arbitrary curves: labels, x values, NaN gaps, the legend's names */
    double ex[6] = {10, 20, 30, 40, 50, 60}, ret[6] = {9, 20, NAN, 60, 200, 500},
           avg[6] = {9, 14.5, 14.5, 29.7, 63, NAN};
    kiln_plot_series ser[2] = {{"return <per episode>", ret}, {"mean of 100", avg}};
    CHECK(kiln_plot_curves(path, "CartPole", "episode", "return", 6, ex, 2, ser) == KILN_OK, "curves: %s",
          kiln_last_error());
    s = slurp(path);
    CHECK(s && strstr(s, ">episode<") && strstr(s, ">return<") && strstr(s, ">return &lt;per episode&gt;<") &&
              strstr(s, ">mean of 100<") && !strstr(s, ">epoch<") && !strstr(s, ">accuracy<"),
          "curves: labels and legend");
    CHECK(count_sub(s, "<polyline") == 3, "curves: NaN splits series 0 in two runs, series 1 is one: %d",
          count_sub(s, "<polyline"));
    CHECK(s && strstr(s, ">60<") && strstr(s, ">10<"), "curves: x ticks from the x values");
    CHECK(s && strstr(s, "width=\"480\""), "curves: one panel wide");
    free(s);
    double fx[3] = {0.5, 0.75, 1.25}, fy[3] = {1, 2, 3};
    CHECK(kiln_plot_curves(path, NULL, NULL, NULL, 3, fx, 1, &(kiln_plot_series){NULL, fy}) == KILN_OK,
          "fractional x, no labels: %s", kiln_last_error());
    s = slurp(path);
    CHECK(s && strstr(s, ">0.5<") && strstr(s, ">0.6<") && strstr(s, ">1.2<") && !strstr(s, "dasharray"),
          "fractional x ticks, one series");
    free(s);
    CHECK(kiln_plot_curves(path, NULL, NULL, NULL, 3, NULL, 1, &(kiln_plot_series){NULL, fy}) == KILN_OK, "x NULL");
    CHECK(kiln_plot_curves(path, NULL, NULL, NULL, 3, fx, 3, ser) == KILN_ERR_INVALID_ARGUMENT, "3 series");
    CHECK(strstr(kiln_last_error(), "kiln_plot_curves") != NULL, "message: %s", kiln_last_error());
    CHECK(kiln_plot_curves(path, NULL, NULL, NULL, 3, fx, 0, ser) == KILN_ERR_INVALID_ARGUMENT, "0 series");
    CHECK(kiln_plot_curves(path, NULL, NULL, NULL, -1, fx, 1, ser) == KILN_ERR_INVALID_ARGUMENT, "n -1");
    CHECK(kiln_plot_curves(path, NULL, NULL, NULL, 3, fx, 1, NULL) == KILN_ERR_NULL, "NULL series");
    CHECK(kiln_plot_curves(path, NULL, NULL, NULL, 3, fx, 1, &(kiln_plot_series){"a", NULL}) == KILN_ERR_NULL,
          "NULL values");
    CHECK(kiln_plot_curves("/nonexistent-dir/x.svg", NULL, NULL, NULL, 3, fx, 1, ser) == KILN_ERR_IO,
          "curves: bad directory");

    path_in(csv, sizeof csv, "log.csv");
    unlink(csv);
    for (int i = 0; i < 4; i++) CHECK(kiln_metrics_csv_append(csv, &h[i]) == KILN_OK, "csv: %s", kiln_last_error());
    s = slurp(csv);
    CHECK(count_lines(s) == 5, "header + 4 lines: %d", count_lines(s));
    CHECK(s && strstr(s, "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds,samples_per_second\n1,1.5,"),
          "header then epoch 1:\n%s", s ? s : "");
    CHECK(s && strstr(s, "\n3,nan,0.7,0.8,0.65,0.1,"), "NaN written as nan:\n%s", s ? s : "");
    free(s);
    /* the log reads back with kiln's own CSV reader */
    kiln_csv *t = kiln_csv_load(csv, NULL);
    CHECK(t && t->rows == 4 && t->cols == 8 && t->names && strcmp(t->names[7], "samples_per_second") == 0,
          "kiln_csv_load: %s", t ? "" : kiln_last_error());
    if (t) CHECK(t->data[3 * 8 + 5] == 0.01 && isnan(t->data[0 * 8 + 3]), "values read back");
    kiln_csv_free(t);
    CHECK(kiln_metrics_csv_append("/nonexistent-dir/x.csv", &h[0]) == KILN_ERR_IO, "bad directory");
    CHECK(kiln_metrics_csv_append(csv, NULL) == KILN_ERR_NULL, "NULL stats");
}

/* ---- device: metrics from tensors --------------------------------------------------------- */

static void test_metrics_device(kiln_ctx *ctx) {
    /* logits of 5 rows x 4 classes with ties and a NaN; top-k order is kiln_argmax's */
    const float x[5][4] = {
        {0.1f, 0.5f, 0.3f, 0.2f}, /* label 2: one larger logit -> top-2 */
        {1, 1, 1, 0},             /* label 1: tied with class 0, which ranks first -> top-2 */
        {0, 0, 0, 5},             /* label 3: top-1 */
        {2, 2, 2, 2},             /* label 3: three tied before it -> top-4 */
        {NAN, 1, 2, 3},           /* label 3: NaN ranks first -> top-2 */
    };
    const int32_t y[5] = {2, 1, 3, 3, 3};
    int64_t before = kiln_ctx_num_tensors(ctx);
    kiln_tensor *lg = kiln_from_host(ctx, x, KILN_F32, 2, (int64_t[]){5, 4});
    kiln_tensor *lb = kiln_from_host(ctx, y, KILN_I32, 1, (int64_t[]){5});
    const int64_t want[5] = {0, 1, 4, 4, 5};
    for (int k = 1; k <= 4; k++) {
        int64_t c = -1;
        CHECK(kiln_topk_correct(lg, lb, k, &c) == KILN_OK, "topk %d: %s", k, kiln_error_message(ctx));
        CHECK(c == want[k], "top-%d correct %lld, want %lld", k, (long long)c, (long long)want[k]);
    }
    int64_t c;
    CHECK(kiln_topk_correct(lg, lb, 0, &c) == KILN_ERR_RANGE, "k 0");
    CHECK(strstr(kiln_error_message(ctx), "k is 0") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(kiln_topk_correct(lg, lb, 5, &c) == KILN_ERR_RANGE, "k 5 of 4 classes");
    kiln_error_clear(ctx);
    CHECK(kiln_topk_correct(lg, lg, 1, &c) == KILN_ERR_DTYPE, "f32 labels");
    kiln_error_clear(ctx);
    CHECK(kiln_topk_correct(NULL, lb, 1, &c) == KILN_ERR_NULL, "NULL logits");

    /* the confusion matrix from tensors: argmax 1, 0, 3, 0, 0 (NaN is the maximum) */
    kiln_confusion *cm = kiln_confusion_new(4);
    CHECK(kiln_confusion_update(cm, lg, lb) == KILN_OK, "update: %s", kiln_error_message(ctx));
    CHECK(kiln_confusion_total(cm) == 5 && kiln_confusion_count(cm, 2, 1) == 1 && kiln_confusion_count(cm, 1, 0) == 1 &&
              kiln_confusion_count(cm, 3, 3) == 1 && kiln_confusion_count(cm, 3, 0) == 2,
          "counts from argmax");
    CHECK(NEAR(kiln_confusion_accuracy(cm), 0.2, 1e-12), "top-1 = accuracy");
    /* out-of-range labels: an error in the context, nothing added */
    const int32_t bad[5] = {0, 1, 2, 4, 0};
    kiln_tensor *lbad = kiln_from_host(ctx, bad, KILN_I32, 1, (int64_t[]){5});
    CHECK(kiln_confusion_update(cm, lg, lbad) == KILN_ERR_RANGE, "label 4 of 4 classes");
    CHECK(strstr(kiln_error_message(ctx), "true class 4 at index 3") != NULL, "message: %s", kiln_error_message(ctx));
    CHECK(kiln_confusion_total(cm) == 5, "nothing added");
    kiln_error_clear(ctx);
    CHECK(kiln_topk_correct(lg, lbad, 2, &c) == KILN_ERR_RANGE, "topk label 4");
    CHECK(strstr(kiln_error_message(ctx), "label 4 at index 3") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_confusion *cm3 = kiln_confusion_new(3);
    CHECK(kiln_confusion_update(cm3, lg, lb) == KILN_ERR_SHAPE, "4 classes into a 3-class matrix");
    kiln_error_clear(ctx);
    CHECK(kiln_confusion_update(NULL, lg, lb) == KILN_ERR_NULL, "NULL matrix");
    kiln_error_clear(ctx);
    kiln_confusion_free(cm3);
    kiln_confusion_free(cm);
    kiln_tensor_free(lg);
    kiln_tensor_free(lb);
    kiln_tensor_free(lbad);
    CHECK(kiln_ctx_num_tensors(ctx) == before, "metrics leak tensors: %lld -> %lld", (long long)before,
          (long long)kiln_ctx_num_tensors(ctx));
    CHECK_OK(ctx);
}

/* ---- device: fit on Gaussian blobs ------------------------------------------------------- */

enum { NTRAIN = 512, NVAL = 256 };

/* Two blobs in 2-D around (-1.5, -1.5) and (1.5, 1.5), sd 0.6, labels alternating. */
static kiln_dataset *blobs(int64_t n, uint64_t seed) {
    float *x = malloc(sizeof(float) * 2 * (size_t)n);
    int32_t *y = malloc(sizeof(int32_t) * (size_t)n);
    h_rng = seed;
    for (int64_t i = 0; i < n; i++) {
        y[i] = (int32_t)(i % 2);
        float c = y[i] ? 1.5f : -1.5f;
        for (int d = 0; d < 2; d++) {
            /* Box-Muller from the harness's uniform numbers */
            double u1 = h_uniform(1e-7f, 1), u2 = h_uniform(0, 1);
            x[2 * i + d] = c + 0.6f * (float)(sqrt(-2 * log(u1)) * cos(2 * M_PI * u2));
        }
    }
    kiln_dataset *ds = kiln_dataset_from_host(x, y, n, 1, (int64_t[]){2}, 2);
    free(x);
    free(y);
    return ds;
}

static kiln_module *mlp2(kiln_ctx *ctx) {
    return kiln_nn_sequential(ctx, 3,
                              (kiln_module *[]){kiln_nn_linear(ctx, 2, 16, true),
                                                kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
                                                kiln_nn_linear(ctx, 16, 2, true)});
}

static kiln_optim *adam_for(kiln_module *m, double lr) {
    kiln_tensor *ps[16];
    int n = kiln_module_parameters(m, ps, 16);
    kiln_adam_opts o = kiln_adam_defaults();
    o.lr = lr;
    return kiln_adam(kiln_module_ctx(m), ps, n, &o);
}

/* A loss for the error paths: NULL at call number fail_at (counting from 1) of training
 * steps, optionally with an error of its own. */
typedef struct fail_loss {
    int calls, fail_at;
    bool set_error;
} fail_loss;

static kiln_tensor *failing_loss(kiln_ctx *ctx, kiln_tensor *out, kiln_tensor *y, void *user) {
    fail_loss *f = user;
    if (++f->calls == f->fail_at) {
        if (f->set_error) return kiln_mse_loss(ctx, out, y, KILN_MEAN); /* i32 target: a dtype error */
        return NULL;
    }
    return kiln_cross_entropy(ctx, out, y, KILN_MEAN);
}

/* Cross-entropy while learning; after `ascend_after` training steps the training loss is
 * the cross-entropy of the swapped logits (learning the wrong class), so the model gets
 * worse; evaluation (grad off) always gets the plain cross-entropy. */
typedef struct ascent {
    int steps, ascend_after;
} ascent;

static kiln_tensor *ascent_loss(kiln_ctx *ctx, kiln_tensor *out, kiln_tensor *y, void *user) {
    ascent *a = user;
    if (!kiln_ctx_grad_enabled(ctx) || ++a->steps <= a->ascend_after) return kiln_cross_entropy(ctx, out, y, KILN_MEAN);
    kiln_tensor *sw[2] = {kiln_slice(ctx, out, 1, 1, 2, 1), kiln_slice(ctx, out, 1, 0, 1, 1)};
    return kiln_cross_entropy(ctx, kiln_concat(ctx, 2, sw, 1), y, KILN_MEAN);
}

static void test_fit_blobs(kiln_ctx *ctx) {
    kiln_manual_seed(ctx, 7);
    kiln_dataset *dtr = blobs(NTRAIN, 11), *dva = blobs(NVAL, 12);
    kiln_loader *tr =
        kiln_loader_new(ctx, dtr, &(kiln_loader_opts){.scale = 1, .batch_size = 32, .shuffle = true, .seed = 3});
    kiln_loader *va = kiln_loader_new(ctx, dva, &(kiln_loader_opts){.scale = 1, .batch_size = 64});
    kiln_module *net = mlp2(ctx);
    kiln_optim *opt = adam_for(net, 0.02);
    CHECK(tr && va && net && opt, "setup: %s %s", kiln_error_message(ctx), kiln_last_error());
    if (!tr || !va || !net || !opt) goto done;

    char csv[512], svg[512];
    path_in(csv, sizeof csv, "blobs.csv");
    path_in(svg, sizeof svg, "blobs.svg");
    /* a stale file is replaced when the run starts */
    FILE *f = fopen(csv, "w");
    fputs("stale\nstale\n", f);
    fclose(f);

    /* 1. learning: separable blobs reach high accuracy */
    kiln_epoch_stats hist[8];
    memset(hist, 0, sizeof hist);
    kiln_fit_opts o = kiln_fit_defaults();
    CHECK(o.epochs == 1 && o.monitor == KILN_MONITOR_VAL_ACCURACY && !o.train && !o.progress, "defaults");
    o.epochs = 5;
    o.train = tr;
    o.val = va;
    o.opt = opt;
    o.metrics_csv = csv;
    o.plot_path = svg;
    o.history = hist;
    o.history_cap = 3; /* fewer than the epochs: the rest are not written */
    o.progress = true; /* stderr is not a terminal here: one line per epoch */
    kiln_module_train(net, false);
    kiln_fit_result r;
    double t0 = now_s();
    kiln_status s = kiln_fit(net, &o, &r);
    fprintf(stderr, "blobs: 5 epochs in %.2f s\n", now_s() - t0);
    CHECK(s == KILN_OK, "fit: %s", kiln_error_message(ctx));
    CHECK(r.epochs_run == 5 && !r.stopped_early, "epochs_run %d", r.epochs_run);
    CHECK(r.last.epoch == 5 && r.last.val_accuracy >= 0.97, "val accuracy %.4f", r.last.val_accuracy);
    CHECK(r.last.train_accuracy >= 0.95, "train accuracy %.4f", r.last.train_accuracy);
    CHECK(hist[0].epoch == 1 && hist[2].epoch == 3 && hist[3].epoch == 0, "history capped at 3");
    CHECK(hist[2].train_loss < hist[0].train_loss, "loss falls: %g -> %g", hist[0].train_loss, hist[2].train_loss);
    CHECK(hist[0].lr == 0.02 && hist[0].seconds > 0 && hist[0].samples_per_second > 0, "lr %g, %g s, %g/s", hist[0].lr,
          hist[0].seconds, hist[0].samples_per_second);
    CHECK(r.best_epoch >= 1 && r.best_epoch <= 5 && r.best_metric >= r.last.val_accuracy, "best epoch %d (%g)",
          r.best_epoch, r.best_metric);
    CHECK(!kiln_module_is_training(net), "the module's mode is restored");
    char *s_csv = slurp(csv);
    CHECK(count_lines(s_csv) == 6, "csv: header + 5 lines, got %d", count_lines(s_csv));
    CHECK(s_csv &&
              strncmp(s_csv, "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds,samples_per_second\n1,",
                      86) == 0,
          "csv header:\n%s", s_csv ? s_csv : "");
    free(s_csv);
    char *s_svg = slurp(svg);
    CHECK(s_svg && strncmp(s_svg, "<svg", 4) == 0 && count_sub(s_svg, "<polyline") == 4, "svg with 4 polylines");
    free(s_svg);

    /* evaluate: the confusion matrix sees every validation sample; the mode is restored */
    kiln_confusion *cm = kiln_confusion_new(2);
    double vl, vacc;
    kiln_module_train(net, true);
    CHECK(kiln_evaluate(net, va, NULL, NULL, cm, &vl, &vacc) == KILN_OK, "evaluate: %s", kiln_error_message(ctx));
    CHECK(kiln_module_is_training(net), "evaluate restores train mode");
    CHECK(kiln_confusion_total(cm) == NVAL, "cm total %lld", (long long)kiln_confusion_total(cm));
    CHECK(NEAR(kiln_confusion_accuracy(cm), vacc, 1e-12), "cm accuracy %g vs %g", kiln_confusion_accuracy(cm), vacc);
    CHECK(NEAR(vacc, r.last.val_accuracy, 1e-12) && NEAR(vl, r.last.val_loss, 1e-6 * fabs(vl)),
          "evaluate after fit repeats the last validation: %g %g vs %g %g", vl, vacc, r.last.val_loss,
          r.last.val_accuracy);
    kiln_confusion *cm3 = kiln_confusion_new(3);
    CHECK(kiln_evaluate(net, va, NULL, NULL, cm3, &vl, &vacc) == KILN_ERR_SHAPE, "3-class matrix for 2 classes");
    CHECK(strstr(kiln_error_message(ctx), "kiln_evaluate: batch 1/") != NULL, "message: %s", kiln_error_message(ctx));
    CHECK(isnan(vl) && isnan(vacc), "outputs NaN on error");
    kiln_error_clear(ctx);
    kiln_confusion_free(cm3);
    kiln_confusion_free(cm);

    /* 2. error paths: no leaked tensors, no open scope, clear messages */
    int64_t n0 = kiln_ctx_num_tensors(ctx);
    int depth0 = ctx->scope_depth;
    o.history = NULL;
    o.history_cap = 0;
    o.metrics_csv = NULL;
    o.plot_path = NULL;
    o.progress = false;
    o.epochs = 2;
    CHECK(kiln_fit(NULL, &o, &r) == KILN_ERR_NULL, "NULL model");
    CHECK(strstr(kiln_last_error(), "module is NULL") != NULL, "message: %s", kiln_last_error());
    CHECK(r.epochs_run == 0 && isnan(r.best_metric), "result cleared");
    CHECK(kiln_fit(net, NULL, &r) == KILN_ERR_NULL, "NULL options");
    kiln_error_clear(ctx);
    kiln_fit_opts b = o;
    b.train = NULL;
    CHECK(kiln_fit(net, &b, NULL) == KILN_ERR_NULL, "NULL loader");
    CHECK(strstr(kiln_error_message(ctx), "o->train") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    b = o;
    b.opt = NULL;
    CHECK(kiln_fit(net, &b, NULL) == KILN_ERR_NULL, "NULL optimizer");
    CHECK(strstr(kiln_error_message(ctx), "o->opt") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    b = o;
    b.epochs = 0;
    CHECK(kiln_fit(net, &b, NULL) == KILN_ERR_INVALID_ARGUMENT, "epochs 0");
    CHECK(strstr(kiln_error_message(ctx), "epochs is 0") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* fields are literal: zeros that would stop at once or zero every gradient are refused,
     * naming the defaults (patience -1 and clip_grad_norm INFINITY: off) */
    kiln_fit_opts fd = kiln_fit_defaults();
    CHECK(fd.epochs == 1 && fd.patience == -1 && isinf(fd.clip_grad_norm) && !fd.restore_best && !fd.plot_path &&
              fd.monitor == KILN_MONITOR_VAL_ACCURACY,
          "kiln_fit_defaults");
    b = o;
    b.patience = 0;
    CHECK(kiln_fit(net, &b, NULL) == KILN_ERR_INVALID_ARGUMENT, "patience 0");
    CHECK(strstr(kiln_error_message(ctx), "patience is 0; it must be >= 1, or -1 for no early stopping "
                                          "(kiln_fit_defaults)"),
          "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    b = o;
    b.clip_grad_norm = 0;
    CHECK(kiln_fit(net, &b, NULL) == KILN_ERR_INVALID_ARGUMENT, "clip_grad_norm 0");
    CHECK(strstr(kiln_error_message(ctx), "clip_grad_norm is 0; it must be > 0, INFINITY for no clipping"),
          "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    b = o;
    b.val = NULL;
    b.patience = 2;
    CHECK(kiln_fit(net, &b, NULL) == KILN_ERR_INVALID_ARGUMENT, "patience without validation");
    CHECK(strstr(kiln_error_message(ctx), "validation loader") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    b = o;
    b.metrics_csv = "/nonexistent-dir/m.csv";
    CHECK(kiln_fit(net, &b, NULL) == KILN_ERR_IO, "unwritable csv fails before training");
    CHECK(strstr(kiln_error_message(ctx), "/nonexistent-dir/m.csv") != NULL, "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* the plot and the best model are written after an epoch, but an unwritable path fails
     * before the first step: the optimizer has taken no step and no epoch ran */
    {
        char dir[] = "/tmp/kiln-train-outXXXXXX";
        CHECK(mkdtemp(dir) != NULL, "mkdtemp");
        struct {
            const char *field;
            bool plot;
            const char *path;
            const char *want;
        } bad[] = {
            {"plot_path", true, "/nonexistent-dir/p.svg", "plot_path /nonexistent-dir/p.svg: cannot write there"},
            {"best_path", false, "/nonexistent-dir/b.safetensors", "best_path /nonexistent-dir/b.safetensors: cannot"},
            {"plot_path", true, dir, "is a directory"},
            {"best_path", false, "", "best_path is an empty path"},
        };
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            b = o;
            if (bad[k].plot)
                b.plot_path = bad[k].path;
            else
                b.best_path = bad[k].path;
            int64_t step0 = kiln_optim_step_count(o.opt, 0);
            kiln_fit_result rr;
            kiln_status st = kiln_fit(net, &b, &rr);
            CHECK(st == (bad[k].path[0] ? KILN_ERR_IO : KILN_ERR_INVALID_ARGUMENT), "%s '%s': status %s", bad[k].field,
                  bad[k].path, kiln_status_name(st));
            CHECK(strstr(kiln_error_message(ctx), bad[k].want) && strstr(kiln_error_message(ctx), "kiln_fit: "),
                  "%s: message: %s", bad[k].field, kiln_error_message(ctx));
            CHECK(rr.epochs_run == 0 && kiln_optim_step_count(o.opt, 0) == step0,
                  "%s: trained before failing (%d epochs)", bad[k].field, rr.epochs_run);
            kiln_error_clear(ctx);
        }
        rmdir(dir);
    }
    /* a loss function returning NULL at the first step, then at batch 3 of epoch 2 */
    int64_t nb = kiln_loader_num_batches(tr);
    fail_loss fl = {.fail_at = 1};
    b = o;
    b.loss = failing_loss;
    b.loss_user = &fl;
    CHECK(kiln_fit(net, &b, &r) == KILN_ERR_INVALID_ARGUMENT, "loss returns NULL");
    CHECK(strstr(kiln_error_message(ctx), "kiln_fit: epoch 1/2, batch 1/16: ") &&
              strstr(kiln_error_message(ctx), "loss function returned NULL"),
          "message: %s", kiln_error_message(ctx));
    CHECK(r.epochs_run == 0, "no epoch finished");
    kiln_error_clear(ctx);
    fl = (fail_loss){.fail_at = (int)nb + 4 + 3, .set_error = true}; /* epoch 1: nb steps + 4 validation batches */
    CHECK(kiln_fit(net, &b, &r) < 0, "loss with its own error");
    CHECK(strstr(kiln_error_message(ctx), "kiln_fit: epoch 2/2, batch 3/16: kiln_mse_loss") != NULL, "message: %s",
          kiln_error_message(ctx));
    CHECK(r.epochs_run == 1 && r.last.epoch == 1, "one epoch finished: %d", r.epochs_run);
    kiln_error_clear(ctx);
    /* ... and in validation (calls: nb training steps, then validation batches) */
    fl = (fail_loss){.fail_at = (int)nb + 2};
    CHECK(kiln_fit(net, &b, &r) == KILN_ERR_INVALID_ARGUMENT, "loss NULL in validation");
    CHECK(strstr(kiln_error_message(ctx), "kiln_fit: epoch 1/2, validation: kiln_evaluate: batch 2/4: ") != NULL,
          "message: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    /* a pending error is not overwritten: fit returns it at once */
    kiln__fail(ctx, KILN_ERR_IO, "earlier");
    CHECK(kiln_fit(net, &o, &r) == KILN_ERR_IO && strcmp(kiln_error_message(ctx), "earlier") == 0, "pending error");
    kiln_error_clear(ctx);
    CHECK(kiln_evaluate(NULL, va, NULL, NULL, NULL, NULL, NULL) == KILN_ERR_NULL, "evaluate NULL model");
    CHECK(kiln_evaluate(net, NULL, NULL, NULL, NULL, NULL, NULL) == KILN_ERR_NULL, "evaluate NULL loader");
    kiln_error_clear(ctx);
    CHECK(kiln_ctx_num_tensors(ctx) == n0, "error paths leak tensors: %lld -> %lld", (long long)n0,
          (long long)kiln_ctx_num_tensors(ctx));
    CHECK(ctx->scope_depth == depth0, "scopes unbalanced: %d -> %d", depth0, ctx->scope_depth);
    CHECK(kiln_ctx_grad_enabled(ctx), "grad mode restored");

    /* 3. early stopping: lr 0 never improves val loss after epoch 1 */
    kiln_optim_set_lr(opt, 0);
    b = o;
    b.epochs = 10;
    b.patience = 2;
    b.monitor = KILN_MONITOR_VAL_LOSS;
    CHECK(kiln_fit(net, &b, &r) == KILN_OK, "fit lr 0: %s", kiln_error_message(ctx));
    CHECK(r.stopped_early && r.epochs_run == 3 && r.best_epoch == 1, "stopped %d after %d epochs, best %d",
          r.stopped_early, r.epochs_run, r.best_epoch);
    CHECK(r.best_metric == r.last.val_loss, "val loss unchanged: %.9g vs %.9g", r.best_metric, r.last.val_loss);
    /* with nothing changing, the epoch's train figures equal an evaluation of the model */
    double tl, tacc;
    CHECK(kiln_evaluate(net, tr, NULL, NULL, NULL, &tl, &tacc) == KILN_OK, "evaluate train: %s",
          kiln_error_message(ctx));
    CHECK(NEAR(tl, r.last.train_loss, 1e-6 * fabs(tl) + 1e-9) && tacc == r.last.train_accuracy,
          "train tallies %.9g %.9g vs evaluation %.9g %.9g", r.last.train_loss, r.last.train_accuracy, tl, tacc);
    CHECK(kiln_ctx_num_tensors(ctx) == n0, "fit leaks tensors: %lld -> %lld", (long long)n0,
          (long long)kiln_ctx_num_tensors(ctx));

    /* 4. restore_best: after two epochs the loss ascends, the best epoch's weights return */
    kiln_manual_seed(ctx, 8);
    kiln_module *net2 = mlp2(ctx);
    kiln_optim *opt2 = adam_for(net2, 0.05);
    char best[512];
    path_in(best, sizeof best, "best.safetensors");
    ascent as = {.ascend_after = 2 * (int)nb};
    b = o;
    b.opt = opt2;
    b.epochs = 5;
    b.loss = ascent_loss;
    b.loss_user = &as;
    b.restore_best = true;
    b.best_path = best;
    kiln_epoch_stats h2[5];
    b.history = h2;
    b.history_cap = 5;
    CHECK(kiln_fit(net2, &b, &r) == KILN_OK, "fit ascent: %s", kiln_error_message(ctx));
    for (int i = 0; i < r.epochs_run; i++)
        fprintf(stderr, "ascent epoch %d: train %.4f %.4f val %.4f %.4f\n", i + 1, h2[i].train_loss,
                h2[i].train_accuracy, h2[i].val_loss, h2[i].val_accuracy);
    CHECK(r.best_epoch >= 1 && r.best_epoch <= 2 && h2[4].val_accuracy < r.best_metric,
          "best epoch %d (%.4f), last %.4f", r.best_epoch, r.best_metric, h2[4].val_accuracy);
    CHECK(kiln_evaluate(net2, va, NULL, NULL, NULL, &vl, &vacc) == KILN_OK, "evaluate: %s", kiln_error_message(ctx));
    CHECK(vacc == r.best_metric && NEAR(vl, h2[r.best_epoch - 1].val_loss, 1e-6 * fabs(vl) + 1e-9),
          "restored model: acc %.6f loss %.6g, best epoch's %.6f %.6g", vacc, vl, r.best_metric,
          h2[r.best_epoch - 1].val_loss);
    /* the weights equal the file saved at the best epoch, bit for bit */
    kiln_safetensors *sf = kiln_safetensors_open(ctx, best);
    CHECK(sf != NULL, "open %s: %s", best, kiln_error_message(ctx));
    kiln_named_tensor st[16];
    int ns = kiln_module_state(net2, st, 16);
    for (int i = 0; sf && i < ns; i++) {
        int k = kiln_safetensors_find(sf, st[i].name);
        kiln_tensor *ft = k >= 0 ? kiln_safetensors_tensor(sf, k) : NULL;
        int64_t n = kiln_tensor_numel(st[i].tensor);
        float *a = malloc(sizeof(float) * (size_t)n), *c2 = malloc(sizeof(float) * (size_t)n);
        bool same = ft && kiln_to_host(ft, a, sizeof(float) * (size_t)n) == KILN_OK &&
                    kiln_to_host(st[i].tensor, c2, sizeof(float) * (size_t)n) == KILN_OK &&
                    memcmp(a, c2, sizeof(float) * (size_t)n) == 0;
        CHECK(same, "%s differs from the best model's file", st[i].name);
        free(a);
        free(c2);
        kiln_tensor_free(ft);
    }
    kiln_safetensors_close(sf);
    kiln_optim_free(opt2);
    kiln_module_free(net2);
    CHECK_OK(ctx);

done:
    kiln_optim_free(opt);
    kiln_module_free(net);
    kiln_loader_free(tr);
    kiln_loader_free(va);
    kiln_dataset_free(dtr);
    kiln_dataset_free(dva);
}

/* ---- device: Fashion-MNIST ------------------------------------------------------------------ */

static bool fashion_missing;

static bool fashion_present(void) {
    static const char *names[] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                                  "t10k-labels-idx1-ubyte"};
    for (int i = 0; i < 4; i++) {
        char a[512], b[520];
        snprintf(a, sizeof a, "%s/%s", KILN_FASHION_MNIST_DIR, names[i]);
        snprintf(b, sizeof b, "%s.gz", a);
        if (access(a, R_OK) != 0 && access(b, R_OK) != 0) return false;
    }
    return true;
}

static void test_fashion(kiln_ctx *ctx) {
    if (!fashion_present()) {
        fprintf(stderr, "Fashion-MNIST is not in %s (Debian's dataset-fashion-mnist): skipping that part\n",
                KILN_FASHION_MNIST_DIR);
        fashion_missing = true;
        return;
    }
    double t0 = now_s();
    kiln_dataset *all_tr = kiln_fashion_mnist(NULL, true), *all_te = kiln_fashion_mnist(NULL, false);
    CHECK(all_tr && all_te, "kiln_fashion_mnist: %s", kiln_last_error());
    if (!all_tr || !all_te) {
        kiln_dataset_free(all_tr);
        kiln_dataset_free(all_te);
        return;
    }
    int64_t idx[3000];
    for (int i = 0; i < 3000; i++) idx[i] = i;
    kiln_dataset *dtr = kiln_dataset_subset(all_tr, idx, 3000), *dte = kiln_dataset_subset(all_te, idx, 1000);
    kiln_dataset_free(all_tr);
    kiln_dataset_free(all_te);
    double t_load = now_s() - t0;
    kiln_loader_opts lo = {.batch_size = 64,
                           .shuffle = true,
                           .seed = 5,
                           .scale = 1.0f / 255,
                           .norm_count = 1,
                           .mean = (float[]){KILN_FASHION_MNIST_MEAN},
                           .std = (float[]){KILN_FASHION_MNIST_STD}};
    kiln_loader *tr = kiln_loader_new(ctx, dtr, &lo);
    lo.shuffle = false;
    lo.batch_size = 250;
    kiln_loader *te = kiln_loader_new(ctx, dte, &lo);
    kiln_manual_seed(ctx, 1);
    kiln_module *net = kiln_nn_sequential(
        ctx, 4,
        (kiln_module *[]){kiln_nn_flatten(ctx, 1, -1), kiln_nn_linear(ctx, 784, 128, true),
                          kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_linear(ctx, 128, 10, true)});
    kiln_optim *opt = adam_for(net, 2e-3);
    CHECK(tr && te && net && opt, "setup: %s", kiln_error_message(ctx));
    if (tr && te && net && opt) {
        kiln_fit_opts o = kiln_fit_defaults();
        o.train = tr;
        o.val = te;
        o.opt = opt;
        o.progress = true;
        /* the progress bar is drawn on a terminal: give the run a pseudo-terminal as stderr */
        int saved = dup(2), master = posix_openpt(O_RDWR | O_NOCTTY);
        bool pty = saved >= 0 && master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0;
        int slave = pty ? open(ptsname(master), O_RDWR | O_NOCTTY) : -1;
        if (slave >= 0) {
            fflush(stderr);
            fcntl(master, F_SETFL, O_NONBLOCK);
            dup2(slave, 2);
        }
        kiln_fit_result r;
        double t1 = now_s();
        kiln_status s = kiln_fit(net, &o, &r);
        double t_fit = now_s() - t1;
        char out[8192];
        ssize_t got = 0;
        if (slave >= 0) {
            fflush(stderr);
            dup2(saved, 2);
            close(slave);
            for (ssize_t k; got < (ssize_t)sizeof out - 1 && (k = read(master, out + got, sizeof out - 1 - got)) > 0;)
                got += k;
        }
        out[got] = '\0';
        if (saved >= 0) close(saved);
        if (master >= 0) close(master);
        CHECK(s == KILN_OK, "fit: %s", kiln_error_message(ctx));
        fprintf(stderr,
                "fashion-mnist: load %.2f s, 1 epoch on 3000 + evaluation on 1000 in %.2f s: train acc %.4f, "
                "test acc %.4f, loss %.4f, %.0f samples/s\n",
                t_load, t_fit, r.last.train_accuracy, r.last.val_accuracy, r.last.val_loss, r.last.samples_per_second);
        CHECK(r.last.val_accuracy >= 0.65, "test accuracy %.4f (chance 0.10)", r.last.val_accuracy);
        if (slave >= 0) {
            CHECK(strstr(out, "epoch 1/1 ") && strstr(out, "\r\033[K"), "terminal progress:\n%s", out);
            /* the bar is drawn after the first and the last batch (full: no timing involved),
             * between them at most ten times a second */
            CHECK(strstr(out, "ETA") && strstr(out, "[#"), "a bar was drawn:\n%s", out);
            for (char *c = out; *c; c++)
                if (*c == '\r' || *c == '\033') *c = '|';
            fprintf(stderr, "terminal output (%zd bytes, redraws as |): %s", got, out);
        }
        /* the same confusion matrix as the validation's accuracy */
        kiln_confusion *cm = kiln_confusion_new(10);
        double l, a;
        CHECK(kiln_evaluate(net, te, NULL, NULL, cm, &l, &a) == KILN_OK && a == r.last.val_accuracy,
              "evaluate: %g vs %g", a, r.last.val_accuracy);
        const char *names[10];
        for (int i = 0; i < 10; i++) names[i] = kiln_fashion_mnist_class_name(i);
        char table[4096];
        kiln_confusion_format(cm, names, table, sizeof table);
        fprintf(stderr, "%s", table);
        double mf1;
        kiln_confusion_prf(cm, -1, NULL, NULL, &mf1);
        CHECK(mf1 > 0.5, "macro F1 %.4f", mf1);
        kiln_confusion_free(cm);
    }
    kiln_optim_free(opt);
    kiln_module_free(net);
    kiln_loader_free(tr);
    kiln_loader_free(te);
    kiln_dataset_free(dtr);
    kiln_dataset_free(dte);
    CHECK_OK(ctx);
}

/* The transfer-learning recipe in kiln_fit: a frozen "backbone" (linear + batch norm) kept in
 * eval mode by eval_modules, so its running statistics and weights stay; the head trains, with
 * a per-step schedule (sched_per_step). Without eval_modules the statistics move (the control). */
static void test_fit_frozen(kiln_ctx *ctx) {
    kiln_dataset *dtr = blobs(256, 21);
    kiln_loader *tr =
        kiln_loader_new(ctx, dtr, &(kiln_loader_opts){.scale = 1, .batch_size = 32, .shuffle = true, .seed = 5});
    for (int control = 0; control < 2; control++) {
        kiln_manual_seed(ctx, 3);
        kiln_module *backbone = kiln_nn_sequential(
            ctx, 2, (kiln_module *[]){kiln_nn_linear(ctx, 2, 8, true), kiln_nn_batchnorm1d(ctx, 8, 1e-5f, 0.1f)});
        kiln_module *net = kiln_nn_sequential(
            ctx, 3,
            (kiln_module *[]){backbone, kiln_nn_activation(ctx, KILN_ACT_RELU, 0), kiln_nn_linear(ctx, 8, 2, true)});
        CHECK(net != NULL, "net: %s", kiln_error_message(ctx));
        if (!net) break;
        kiln_module_set_requires_grad(backbone, false);
        kiln_tensor *ps[8];
        int n = kiln_module_parameters(net, ps, 8);
        kiln_sgd_opts so = kiln_sgd_defaults();
        so.lr = 0.1;
        so.momentum = 0.9;
        so.weight_decay = 0.1; /* would move the frozen weights if they were not skipped */
        kiln_optim *opt = kiln_sgd(ctx, ps, n, &so);
        int64_t steps = 2 * kiln_loader_num_batches(tr);
        kiln_lr_sched *ph[2] = {kiln_linear_lr(opt, 0.1, 1.0, 3), kiln_cosine_annealing_lr(opt, (int)steps - 3, 0)};
        kiln_lr_sched *sched = kiln_sequential_lr(opt, ph, 2, (int[]){3});
        float mean0[8], w0[16], head0[16], mean1[8], w1[16], head1[16];
        kiln_to_host(kiln_module_find(net, "0.1.running_mean"), mean0, sizeof mean0);
        kiln_to_host(kiln_module_find(net, "0.0.weight"), w0, sizeof w0);
        kiln_to_host(kiln_module_find(net, "2.weight"), head0, sizeof head0);
        kiln_fit_opts o = kiln_fit_defaults();
        o.epochs = 2;
        o.train = tr;
        o.opt = opt;
        o.sched = sched;
        o.sched_per_step = true;
        /* lives as long as o: kiln_fit below reads it (a compound literal inside the block
         * would end with the block) */
        kiln_module *frozen[1] = {backbone};
        if (!control) {
            /* errors first: a module outside the model, a per-step flag without a scheduler */
            kiln_module *stranger = kiln_nn_linear(ctx, 2, 2, true);
            o.eval_modules = (kiln_module *[]){stranger};
            o.num_eval_modules = 1;
            CHECK(kiln_fit(net, &o, NULL) == KILN_ERR_INVALID_ARGUMENT &&
                      strstr(kiln_error_message(ctx), "kiln_fit: eval_modules[0] is not part of the model"),
                  "stranger: %s", kiln_error_message(ctx));
            kiln_error_clear(ctx);
            kiln_module_free(stranger);
            o.eval_modules = (kiln_module *[]){NULL};
            CHECK(kiln_fit(net, &o, NULL) == KILN_ERR_NULL &&
                      strstr(kiln_error_message(ctx), "eval_modules[0] is NULL"),
                  "NULL eval module: %s", kiln_error_message(ctx));
            kiln_error_clear(ctx);
            o.num_eval_modules = -1;
            CHECK(kiln_fit(net, &o, NULL) == KILN_ERR_INVALID_ARGUMENT &&
                      strstr(kiln_error_message(ctx), "num_eval_modules is -1"),
                  "negative count: %s", kiln_error_message(ctx));
            kiln_error_clear(ctx);
            o.num_eval_modules = 1;
            o.eval_modules = frozen;
            o.sched = NULL;
            CHECK(kiln_fit(net, &o, NULL) == KILN_ERR_INVALID_ARGUMENT &&
                      strstr(kiln_error_message(ctx), "sched_per_step is set without a scheduler"),
                  "per step without a scheduler: %s", kiln_error_message(ctx));
            kiln_error_clear(ctx);
            o.sched = sched;
        }
        kiln_fit_result r;
        CHECK(kiln_fit(net, &o, &r) == KILN_OK, "fit: %s", kiln_error_message(ctx));
        kiln_to_host(kiln_module_find(net, "0.1.running_mean"), mean1, sizeof mean1);
        kiln_to_host(kiln_module_find(net, "0.0.weight"), w1, sizeof w1);
        kiln_to_host(kiln_module_find(net, "2.weight"), head1, sizeof head1);
        bool mean_same = memcmp(mean0, mean1, sizeof mean0) == 0, w_same = memcmp(w0, w1, sizeof w0) == 0,
             head_same = memcmp(head0, head1, sizeof head0) == 0;
        CHECK(w_same && !head_same, "%s: frozen weights kept (%d), head trained (%d)",
              control ? "control" : "eval_modules", w_same, !head_same);
        CHECK(mean_same == !control, "%s: running mean %s", control ? "control" : "eval_modules",
              mean_same ? "unchanged" : "moved");
        CHECK(kiln_lr_sched_last_epoch(sched) == steps && kiln_module_is_training(net) &&
                  kiln_module_is_training(backbone),
              "stepped per step (%lld of %lld); the modes back as they were",
              (long long)kiln_lr_sched_last_epoch(sched), (long long)steps);
        kiln_lr_sched_free(sched);
        kiln_optim_free(opt);
        kiln_module_free(net);
    }
    kiln_loader_free(tr);
    kiln_dataset_free(dtr);
    CHECK_OK(ctx);
}

/* ---- device: a training step does not wait for the device ------------------------------- */

/* Cross-entropy that notes the context's counters at each training call, and at call
 * bad_at (when > 0) swaps in labels with one out of range. */
#define NW_MAX 64
typedef struct wait_log {
    int calls, bad_at;
    kiln_ctx_stats at[NW_MAX];
} wait_log;

static kiln_tensor *logging_loss(kiln_ctx *ctx, kiln_tensor *out, kiln_tensor *y, void *user) {
    wait_log *w = user;
    if (kiln_ctx_grad_enabled(ctx) && w->calls < NW_MAX) kiln_ctx_stats_get(ctx, &w->at[w->calls++]);
    if (w->bad_at > 0 && w->calls == w->bad_at) {
        int64_t n = kiln_tensor_shape(y)[0];
        int32_t *l = calloc((size_t)n, sizeof *l);
        l[n - 3] = 7; /* 2 classes */
        kiln_tensor *bad = kiln_from_host(ctx, l, KILN_I32, 1, &n);
        free(l);
        return kiln_cross_entropy(ctx, out, bad, KILN_MEAN);
    }
    return kiln_cross_entropy(ctx, out, y, KILN_MEAN);
}

/* kiln_fit's steps wait for nothing (the goal of issue 21): between two training steps of
 * one epoch the host neither reads (blocking), writes (blocking) nor finishes the queue,
 * with the progress bar drawn on a terminal (a pseudo-terminal as stderr) so its running
 * loss is read back too. The loader's worker thread waits for the events of its own batch
 * uploads before it refills their host buffers (event_waits, off the training thread): those
 * are reported, not counted. A bad label in a step is reported at the end of the epoch. */
static void test_fit_no_waits(kiln_ctx *ctx) {
    kiln_manual_seed(ctx, 9);
    kiln_dataset *dtr = blobs(NTRAIN, 21);
    kiln_loader *tr =
        kiln_loader_new(ctx, dtr, &(kiln_loader_opts){.scale = 1, .batch_size = 32, .shuffle = true, .seed = 4});
    kiln_module *net = mlp2(ctx);
    kiln_optim *opt = adam_for(net, 0.02);
    CHECK(tr && net && opt, "setup: %s %s", kiln_error_message(ctx), kiln_last_error());
    int pty = posix_openpt(O_RDWR | O_NOCTTY), saved = dup(2), slave = -1;
    if (pty >= 0 && grantpt(pty) == 0 && unlockpt(pty) == 0) slave = open(ptsname(pty), O_RDWR | O_NOCTTY);
    if (pty >= 0) fcntl(pty, F_SETFL, O_NONBLOCK);
    if (tr && net && opt) {
        wait_log w = {0};
        kiln_fit_opts o = kiln_fit_defaults();
        o.epochs = 2;
        o.train = tr;
        o.opt = opt;
        o.loss = logging_loss;
        o.loss_user = &w;
        o.progress = true;
        fflush(stderr);
        if (slave >= 0) dup2(slave, 2);
        kiln_status s = kiln_fit(net, &o, NULL);
        fflush(stderr);
        dup2(saved, 2);
        CHECK(s == KILN_OK, "fit: %s", kiln_error_message(ctx));
        int64_t nb = kiln_loader_num_batches(tr);
        CHECK(w.calls == 2 * nb, "%d training steps, want %lld", w.calls, (long long)(2 * nb));
        uint64_t main_waits = 0, event_waits = 0, launches = 0, read = 0;
        int pairs = 0;
        for (int k = 0; k + 1 < w.calls; k++) {
            if ((k + 1) % nb == 0) continue; /* the end of an epoch waits, as it should */
            const kiln_ctx_stats *a = &w.at[k], *b = &w.at[k + 1];
            main_waits += (b->blocking_reads - a->blocking_reads) + (b->blocking_writes - a->blocking_writes) +
                          (b->finishes - a->finishes);
            event_waits += b->event_waits - a->event_waits;
            launches += b->launches - a->launches;
            read += b->bytes_to_host - a->bytes_to_host;
            pairs++;
        }
        CHECK(pairs > 0 && main_waits == 0, "kiln_fit: %llu host waits in %d training steps, want 0",
              (unsigned long long)main_waits, pairs);
        /* the bar (drawn after the first batch at least) read the running loss meanwhile */
        CHECK(slave < 0 || read > 0, "kiln_fit: the progress bar read nothing back during the epochs");
        fprintf(stderr,
                "kiln_fit, %d steps of a 2-16-2 MLP: %.1f launches, %.2f host waits, %.2f loader event "
                "waits per step\n",
                pairs, (double)launches / pairs, (double)main_waits / pairs, (double)event_waits / pairs);
        /* a bad label in step 5 of epoch 1: the epoch's end reports it, naming the op, the
         * label and its position (the batch's position 29 of 32) */
        w = (wait_log){.bad_at = 5};
        o.epochs = 1;
        o.progress = false;
        s = kiln_fit(net, &o, NULL);
        CHECK(s == KILN_ERR_RANGE && strstr(kiln_error_message(ctx), "kiln_cross_entropy: label 7 at position [29]") &&
                  strstr(kiln_error_message(ctx), "epoch 1/1"),
              "bad label in a step: %s %s", kiln_status_name(s), kiln_error_message(ctx));
        kiln_error_clear(ctx);
        w = (wait_log){0};
        CHECK(kiln_fit(net, &o, NULL) == KILN_OK, "fit after the bad label: %s", kiln_error_message(ctx));
    }
    if (slave >= 0) close(slave);
    if (pty >= 0) close(pty);
    close(saved);
    kiln_optim_free(opt);
    kiln_module_free(net);
    kiln_loader_free(tr);
    kiln_dataset_free(dtr);
    CHECK_OK(ctx);
}

static void device_tests(kiln_ctx *ctx) {
    test_metrics_device(ctx);
    test_fit_blobs(ctx);
    test_fit_no_waits(ctx);
    test_fit_frozen(ctx);
    test_fashion(ctx);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kiln-test-train-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "mkdtemp failed\n");
        return 1;
    }
    test_confusion_host();
    test_plot_host();
    H_FOR_EACH_DEVICE(device_tests);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    int rc = h_finish();
    if (rc == 0 && fashion_missing) return 77;
    return rc;
}
