/* src/train/fit.c - the fit/evaluate loop: training steps, device-side tallies of loss
 * and predictions, progress on stderr, validation, early stopping and the best model. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../ops/ops_internal.h"
#include "../optim/optim_internal.h"
#include "../nn/nn_internal.h"
#include "kiln/io.h"
#include "kiln/ops.h"
#include "kiln/train.h"

kiln_fit_opts kiln_fit_defaults(void) {
    kiln_fit_opts o;
    memset(&o, 0, sizeof o);
    o.epochs = 1;
    o.clip_grad_norm = INFINITY; /* no clipping */
    o.monitor = KILN_MONITOR_VAL_ACCURACY;
    o.patience = -1; /* no early stopping */
    return o;
}

/* Puts "prefix: " in front of the context's error message, so the error of an op deep in
 * a step says where in the run it happened. */
static void error_prefix(kiln_ctx *ctx, const char *prefix) {
    if (!ctx || ctx->err == KILN_OK || !ctx->errmsg) return;
    size_t a = strlen(prefix), b = strlen(ctx->errmsg);
    char *m = malloc(a + b + 3);
    if (!m) return;
    memcpy(m, prefix, a);
    memcpy(m + a, ": ", 2);
    memcpy(m + a + 2, ctx->errmsg, b + 1);
    free(ctx->errmsg);
    ctx->errmsg = m;
}

/* ---- tallies: per-batch results kept on the device, read back in bulk ----------------- */
/*
 * A step must not wait for the device, so the step's loss and its predictions (argmax of
 * [B, C] outputs) and labels are copied into device buffers that live outside every
 * scope. flush() reads what accumulated with one transfer per buffer and adds it to host
 * totals in double precision: at the end of an epoch and when a buffer is full. The progress
 * bar (at most ten redraws a second) polls instead: it starts a non-blocking read of what
 * is pending and adds it once its events report completion (tally_poll), so no step waits.
 */
#ifndef TALLY_MAX_BATCHES
#define TALLY_MAX_BATCHES 4096 /* pending batch losses before a read-back */
#endif
#ifndef TALLY_MAX_SAMPLES
#define TALLY_MAX_SAMPLES (1 << 20) /* pending predictions before a read-back */
#endif

typedef struct tally {
    kiln_ctx *ctx;
    kiln_tensor *loss;         /* [cap_b] F32: the loss of each pending batch */
    kiln_tensor *pred, *label; /* [cap_s] I32 */
    int64_t cap_b, cap_s, want_b;
    int64_t nb, ns;     /* pending batches, samples */
    int64_t *bsize;     /* [cap_b] host: samples of each pending batch */
    float *hl;          /* [cap_b] host staging */
    int32_t *hp;        /* [2 * cap_s] host staging: predictions then labels */
    kiln_confusion *cm; /* optional: every prediction is added */
    bool acc_ok;        /* every batch so far gave [B, C] outputs and [B] labels */
    /* totals */
    double loss_sum; /* sum over batches of loss * batch size */
    int64_t samples, correct, counted;
    /* the progress bar's read (tally_poll): pending values moved to the host without a
     * wait; absorbed into the totals once its events complete */
    cl_event ev[3];
    int nev;
    int64_t anb, ans, ahp_cap;
    int64_t *absize;
    float *ahl;
    int32_t *ahp;
} tally;

static void tally_release_events(tally *t) {
    for (int k = 0; k < t->nev; k++) clReleaseEvent(t->ev[k]);
    t->nev = 0;
}

static void tally_free(tally *t) {
    if (t->nev) clWaitForEvents((cl_uint)t->nev, t->ev); /* the reads write into ahl, ahp */
    tally_release_events(t);
    free(t->absize);
    free(t->ahl);
    free(t->ahp);
    kiln_tensor_free(t->loss);
    kiln_tensor_free(t->pred);
    kiln_tensor_free(t->label);
    free(t->bsize);
    free(t->hl);
    free(t->hp);
    memset(t, 0, sizeof *t);
}

static void tally_reset(tally *t) {
    if (t->nev) clWaitForEvents((cl_uint)t->nev, t->ev); /* left by an error: dropped */
    tally_release_events(t);
    t->nb = t->ns = 0;
    t->loss_sum = 0;
    t->samples = t->correct = t->counted = 0;
    t->acc_ok = true;
}

/* Adds nb batch losses (hl, of bsize samples each) and ns predictions (hp[0..ns)) with their
 * labels (hp[ns..2 ns)) to the totals. */
static kiln_status tally_absorb(tally *t, const float *hl, const int64_t *bsize, int64_t nb, const int32_t *hp,
                                int64_t ns) {
    for (int64_t i = 0; i < nb; i++) {
        t->loss_sum += (double)hl[i] * (double)bsize[i];
        t->samples += bsize[i];
    }
    for (int64_t i = 0; i < ns; i++) t->correct += hp[i] == hp[ns + i];
    t->counted += ns;
    if (t->cm && ns > 0) {
        kiln_status s = kiln_confusion_add(t->cm, hp + ns, hp, ns);
        if (s != KILN_OK) return kiln__fail(t->ctx, s, "%s", kiln_last_error());
    }
    return KILN_OK;
}

/* The progress bar's read has completed (wait: wait for it, as the end of an epoch does):
 * adds it to the totals. False while it is still in flight. */
static kiln_status tally_collect(tally *t, bool wait, bool *done) {
    *done = t->nev == 0;
    if (*done) return KILN_OK;
    if (wait) {
        cl_int err = clWaitForEvents((cl_uint)t->nev, t->ev);
        KILN__COUNT(t->ctx, event_waits, 1);
        if (err != CL_SUCCESS) {
            tally_release_events(t);
            return kiln__fail(t->ctx, kiln__cl_status(err), "reading the running loss back failed: %s (%d)",
                              kiln__cl_name(err), err);
        }
    } else {
        for (int k = 0; k < t->nev; k++) {
            cl_int st = CL_QUEUED;
            clGetEventInfo(t->ev[k], CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof st, &st, NULL);
            if (st < 0) {
                tally_release_events(t);
                return kiln__fail(t->ctx, kiln__cl_status(st), "reading the running loss back failed: %s (%d)",
                                  kiln__cl_name(st), st);
            }
            if (st != CL_COMPLETE) return KILN_OK;
        }
    }
    tally_release_events(t);
    *done = true;
    return tally_absorb(t, t->ahl, t->absize, t->anb, t->ahp, t->ans);
}

/* A non-blocking read of n elements of the kept contiguous tensor v into dst. */
static kiln_status read_async(kiln_tensor *v, int64_t n, void *dst, cl_event *ev) {
    kiln_ctx *ctx = v->ctx;
    size_t es = kiln_dtype_size(v->dtype), bytes = es * (size_t)n;
    cl_int err = clEnqueueReadBuffer(ctx->queue, v->st->mem, CL_FALSE, (size_t)v->offset * es, bytes, dst, 0, NULL, ev);
    if (err != CL_SUCCESS)
        return kiln__fail(ctx, kiln__cl_status(err), "reading the running loss back failed: %s (%d)",
                          kiln__cl_name(err), err);
    KILN__COUNT(ctx, bytes_to_host, bytes);
    return KILN_OK;
}

/* For the progress bar, without waiting: adds the previous poll's values once they have
 * arrived, then starts reading what is pending (the device's later writes to those
 * buffers queue behind the read). The totals lag the queue by about one redraw. */
static kiln_status tally_poll(tally *t) {
    bool done;
    kiln_status s = tally_collect(t, false, &done);
    if (s != KILN_OK || !done || (t->nb == 0 && t->ns == 0)) return s;
    if (!t->ahl) {
        t->absize = malloc(sizeof(int64_t) * (size_t)t->cap_b);
        t->ahl = malloc(sizeof(float) * (size_t)t->cap_b);
        if (!t->absize || !t->ahl) return kiln__fail(t->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    }
    if (t->ns > 0 && t->ahp_cap < t->cap_s) { /* the prediction buffers grew since */
        free(t->ahp);
        t->ahp = malloc(sizeof(int32_t) * 2 * (size_t)t->cap_s);
        t->ahp_cap = t->ahp ? t->cap_s : 0;
        if (!t->ahp) return kiln__fail(t->ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory");
    }
    t->anb = t->nb;
    t->ans = t->ns;
    if (t->nb > 0) s = read_async(t->loss, t->nb, t->ahl, &t->ev[t->nev++]);
    if (s == KILN_OK && t->ns > 0) s = read_async(t->pred, t->ns, t->ahp, &t->ev[t->nev++]);
    if (s == KILN_OK && t->ns > 0) s = read_async(t->label, t->ns, t->ahp + t->ns, &t->ev[t->nev++]);
    if (s != KILN_OK) {
        if (t->nev) clWaitForEvents((cl_uint)t->nev, t->ev);
        tally_release_events(t);
        return s;
    }
    memcpy(t->absize, t->bsize, sizeof(int64_t) * (size_t)t->nb);
    t->nb = t->ns = 0;
    clFlush(t->ctx->queue);
    return KILN_OK;
}

/* Reads back what is pending and adds it to the totals (a sync). */
static kiln_status tally_flush(tally *t) {
    kiln_ctx *ctx = t->ctx;
    bool done;
    kiln_status s = tally_collect(t, true, &done);
    if (s != KILN_OK) return s;
    if (t->nb > 0) {
        kiln_tensor *v = kiln_slice(ctx, t->loss, 0, 0, t->nb, 1);
        s = v ? kiln_to_host(v, t->hl, sizeof(float) * (size_t)t->nb) : kiln_error_status(ctx);
        kiln_tensor_free(v);
        if (s != KILN_OK) return s;
        s = tally_absorb(t, t->hl, t->bsize, t->nb, NULL, 0);
        t->nb = 0;
    }
    if (t->ns > 0) {
        int64_t n = t->ns;
        kiln_tensor *p = kiln_slice(ctx, t->pred, 0, 0, n, 1);
        kiln_tensor *l = kiln_slice(ctx, t->label, 0, 0, n, 1);
        s = p && l ? kiln_to_host(p, t->hp, sizeof(int32_t) * (size_t)n) : kiln_error_status(ctx);
        if (s == KILN_OK) s = kiln_to_host(l, t->hp + n, sizeof(int32_t) * (size_t)n);
        kiln_tensor_free(p);
        kiln_tensor_free(l);
        if (s != KILN_OK) return s;
        t->ns = 0;
        return tally_absorb(t, NULL, NULL, 0, t->hp, n);
    }
    return KILN_OK;
}

/* A kept I32 or F32 buffer of n elements. */
static kiln_tensor *kept(kiln_ctx *ctx, kiln_dtype dt, int64_t n) {
    return kiln_tensor_keep(kiln_empty(ctx, dt, 1, &n));
}

/* Room for one more batch of B samples (allocating or growing the buffers). */
static kiln_status tally_room(tally *t, int64_t B) {
    kiln_ctx *ctx = t->ctx;
    if (!t->loss) {
        t->cap_b = t->want_b < 1 ? 1 : t->want_b > TALLY_MAX_BATCHES ? TALLY_MAX_BATCHES : t->want_b;
        t->loss = kept(ctx, KILN_F32, t->cap_b);
        t->bsize = malloc(sizeof(int64_t) * (size_t)t->cap_b);
        t->hl = malloc(sizeof(float) * (size_t)t->cap_b);
        if (!t->loss) return kiln_error_status(ctx);
        if (!t->bsize || !t->hl)
            return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory for the tallies");
    }
    if (t->nb == t->cap_b || t->ns + B > t->cap_s) {
        kiln_status s = tally_flush(t);
        if (s != KILN_OK) return s;
    }
    if (B > t->cap_s) {
        /* a whole epoch's samples (batches x the first batch's size), within bounds */
        int64_t cap = t->cap_b * B;
        if (cap > TALLY_MAX_SAMPLES) cap = TALLY_MAX_SAMPLES;
        if (cap < B) cap = B;
        kiln_tensor_free(t->pred);
        kiln_tensor_free(t->label);
        free(t->hp);
        t->pred = kept(ctx, KILN_I32, cap);
        t->label = t->pred ? kept(ctx, KILN_I32, cap) : NULL;
        t->hp = malloc(sizeof(int32_t) * 2 * (size_t)cap);
        t->cap_s = t->label && t->hp ? cap : 0;
        if (!t->label) return kiln_error_status(ctx);
        if (!t->hp) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory for the tallies");
    }
    return KILN_OK;
}

/* Queues the batch's loss and, for classification outputs, its predictions and labels
 * (no host wait). B is the number of samples of the batch. */
static kiln_status tally_record(tally *t, kiln_tensor *out, kiln_tensor *y, kiln_tensor *loss, int64_t B) {
    kiln_ctx *ctx = t->ctx;
    char sb[160];
    if (kiln_tensor_numel(loss) != 1 || kiln_tensor_dtype(loss) != KILN_F32)
        return kiln__fail(ctx, KILN_ERR_SHAPE, "the loss must be one f32 value; it is %s %s",
                          kiln_dtype_name(kiln_tensor_dtype(loss)), kiln_tensor_shape_str(loss, sb, sizeof sb));
    bool cls = kiln_tensor_dtype(out) == KILN_F32 && kiln_tensor_ndim(out) == 2 && kiln_tensor_shape(out)[0] == B &&
               kiln_tensor_dtype(y) == KILN_I32 && kiln_tensor_ndim(y) == 1 && kiln_tensor_shape(y)[0] == B;
    if (t->cm) {
        if (!cls)
            return kiln__fail(ctx, KILN_ERR_SHAPE,
                              "a confusion matrix needs outputs [N, C] and i32 labels [N]; the batch gave %s",
                              kiln_tensor_shape_str(out, sb, sizeof sb));
        if (kiln_tensor_shape(out)[1] != kiln_confusion_num_classes(t->cm))
            return kiln__fail(ctx, KILN_ERR_SHAPE, "outputs %s have %lld classes; the confusion matrix has %d",
                              kiln_tensor_shape_str(out, sb, sizeof sb), (long long)kiln_tensor_shape(out)[1],
                              kiln_confusion_num_classes(t->cm));
    }
    if (!cls) t->acc_ok = false;
    kiln_status s = tally_room(t, t->acc_ok ? B : 0);
    if (s != KILN_OK) return s;
    bool prev = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *l1 = kiln_reshape(ctx, loss, 1, (int64_t[]){1});
    kiln_tensor *dst = kiln_slice(ctx, t->loss, 0, t->nb, t->nb + 1, 1);
    s = l1 && dst ? kiln_copy(dst, l1) : kiln_error_status(ctx);
    kiln_tensor_free(dst);
    kiln_tensor_free(l1);
    if (s == KILN_OK && t->acc_ok && B > 0) {
        kiln_tensor *p = kiln_argmax(ctx, out, 1, false);
        kiln_tensor *dp = kiln_slice(ctx, t->pred, 0, t->ns, t->ns + B, 1);
        kiln_tensor *dl = kiln_slice(ctx, t->label, 0, t->ns, t->ns + B, 1);
        s = p && dp && dl ? kiln_copy(dp, p) : kiln_error_status(ctx);
        if (s == KILN_OK) s = kiln_copy(dl, y);
        kiln_tensor_free(p);
        kiln_tensor_free(dp);
        kiln_tensor_free(dl);
        if (s == KILN_OK) t->ns += B;
    }
    kiln_ctx_set_grad_enabled(ctx, prev);
    if (s != KILN_OK) return s;
    t->bsize[t->nb++] = B;
    return KILN_OK;
}

static double tally_loss(const tally *t) { return t->samples ? t->loss_sum / (double)t->samples : NAN; }
static double tally_acc(const tally *t) {
    return t->acc_ok && t->counted ? (double)t->correct / (double)t->counted : NAN;
}

/* The batch's loss: the user's function or cross-entropy. NULL with the error set. */
static kiln_tensor *batch_loss(kiln_ctx *ctx, kiln_loss_fn fn, void *user, kiln_tensor *out, kiln_tensor *y) {
    if (!out) return NULL;
    kiln_tensor *loss = fn ? fn(ctx, out, y, user) : kiln_cross_entropy(ctx, out, y, KILN_MEAN);
    if (!loss && kiln_error_status(ctx) == KILN_OK)
        kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "the loss function returned NULL without setting an error");
    return loss;
}

/* ---- evaluate ---------------------------------------------------------------------------- */

kiln_status kiln_evaluate(kiln_module *m, kiln_loader *l, kiln_loss_fn loss_fn, void *loss_user, kiln_confusion *cm,
                          double *mean_loss, double *accuracy) {
    static const char *op = "kiln_evaluate";
    if (mean_loss) *mean_loss = NAN;
    if (accuracy) *accuracy = NAN;
    if (!m) return kiln__fail_global(KILN_ERR_NULL, "%s: module is NULL", op);
    kiln_ctx *ctx = kiln_module_ctx(m);
    if (kiln_error_status(ctx) != KILN_OK) return kiln_error_status(ctx); /* an earlier error is pending */
    if (!l) return kiln__fail(ctx, KILN_ERR_NULL, "%s: loader is NULL", op);
    kiln_status s = kiln_loader_reset(l);
    if (s != KILN_OK) return s;
    bool was_training = kiln_module_is_training(m);
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_module_train(m, false);
    int64_t nbat = kiln_loader_num_batches(l);
    tally t = {.ctx = ctx, .want_b = nbat, .cm = cm};
    tally_reset(&t);
    int64_t batch = 0;
    for (;;) {
        kiln_tensor *x, *y;
        kiln_scope_begin(ctx);
        if (!kiln_loader_next(l, &x, &y)) {
            kiln_scope_end(ctx);
            s = kiln_error_status(ctx);
            break;
        }
        batch++;
        kiln_tensor *out = kiln_forward(m, x);
        kiln_tensor *loss = batch_loss(ctx, loss_fn, loss_user, out, y);
        s = loss ? tally_record(&t, out, y, loss, kiln_tensor_shape(x)[0]) : kiln_error_status(ctx);
        kiln_scope_end(ctx);
        if (s != KILN_OK) break;
    }
    if (s == KILN_OK) s = tally_flush(&t);
    if (s == KILN_OK && batch == 0) {
        s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the loader gave no batches", op);
    } else if (s != KILN_OK) {
        char where[96];
        snprintf(where, sizeof where, "%s: batch %lld/%lld", op, (long long)(batch ? batch : 1), (long long)nbat);
        error_prefix(ctx, where);
    } else {
        if (mean_loss) *mean_loss = tally_loss(&t);
        if (accuracy) *accuracy = tally_acc(&t);
    }
    tally_free(&t);
    kiln_module_train(m, was_training);
    kiln_ctx_set_grad_enabled(ctx, grad);
    return s;
}

/* ---- best-model snapshot ----------------------------------------------------------------- */

typedef struct snapshot {
    int n;
    kiln_named_tensor *st;
    void **data;
    size_t *bytes;
    bool taken;
} snapshot;

static void snapshot_free(snapshot *sn) {
    for (int i = 0; i < sn->n && sn->data; i++) free(sn->data[i]);
    free(sn->data);
    free(sn->bytes);
    free(sn->st);
    memset(sn, 0, sizeof *sn);
}

/* Host copies of every parameter and buffer of m (a sync). */
static kiln_status snapshot_take(snapshot *sn, kiln_module *m) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    if (!sn->st) {
        int n = kiln_module_state(m, NULL, 0);
        sn->st = calloc((size_t)(n > 0 ? n : 1), sizeof *sn->st);
        sn->data = calloc((size_t)(n > 0 ? n : 1), sizeof *sn->data);
        sn->bytes = calloc((size_t)(n > 0 ? n : 1), sizeof *sn->bytes);
        if (!sn->st || !sn->data || !sn->bytes) {
            snapshot_free(sn);
            return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory for the best model");
        }
        sn->n = kiln_module_state(m, sn->st, n);
        for (int i = 0; i < sn->n; i++) {
            kiln_tensor *t = sn->st[i].tensor;
            sn->bytes[i] = (size_t)kiln_tensor_numel(t) * kiln_dtype_size(kiln_tensor_dtype(t));
            sn->data[i] = malloc(sn->bytes[i] ? sn->bytes[i] : 1);
            if (!sn->data[i]) {
                snapshot_free(sn);
                return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "out of host memory for the best model");
            }
        }
    }
    for (int i = 0; i < sn->n; i++) {
        kiln_status s = kiln_to_host(sn->st[i].tensor, sn->data[i], sn->bytes[i]);
        if (s != KILN_OK) {
            sn->taken = false;
            return s;
        }
    }
    sn->taken = true;
    return KILN_OK;
}

static kiln_status snapshot_restore(snapshot *sn, kiln_module *m) {
    for (int i = 0; i < sn->n; i++) {
        kiln_status s = kiln_copy_from_host(sn->st[i].tensor, sn->data[i], sn->bytes[i]);
        if (s != KILN_OK) return s;
    }
    kiln__module_state_loaded(m); /* cached host copies of buffers (batch counts) are stale */
    return KILN_OK;
}

/* ---- progress ------------------------------------------------------------------------------ */

static void fmt_duration(char *buf, size_t cap, double sec) {
    if (!isfinite(sec) || sec < 0) sec = 0;
    long s = (long)(sec + 0.5);
    if (s >= 3600)
        snprintf(buf, cap, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    else
        snprintf(buf, cap, "%ld:%02ld", s / 60, s % 60);
}

static void fmt_value(char *buf, size_t cap, const char *name, double v) {
    if (isnan(v))
        buf[0] = '\0';
    else
        snprintf(buf, cap, " %s %.4f", name, v);
}

/* The redrawn line of a terminal: epoch, bar, batches, running loss/accuracy, speed, ETA. */
static void progress_bar(int epoch, int epochs, int64_t batch, int64_t nbat, const tally *t, double samples_s,
                         double elapsed_s) {
    enum { BAR = 20 };
    char bar[BAR + 1], l[48], a[48], eta[32];
    int fill = nbat > 0 ? (int)(BAR * batch / nbat) : 0;
    for (int i = 0; i < BAR; i++) bar[i] = i < fill ? '#' : '-';
    bar[BAR] = '\0';
    fmt_value(l, sizeof l, "loss", tally_loss(t));
    fmt_value(a, sizeof a, "acc", tally_acc(t));
    fmt_duration(eta, sizeof eta, batch > 0 ? elapsed_s / (double)batch * (double)(nbat - batch) : 0);
    fprintf(stderr, "\r\033[Kepoch %d/%d [%s] %lld/%lld%s%s %.0f samples/s ETA %s", epoch, epochs, bar,
            (long long)batch, (long long)nbat, l, a, samples_s, eta);
    fflush(stderr);
}

static void progress_epoch(bool tty, const kiln_epoch_stats *e, int epochs, int64_t nbat) {
    char l[48], a[48], vl[48], va[48], d[32];
    fmt_value(l, sizeof l, "loss", e->train_loss);
    fmt_value(a, sizeof a, "acc", e->train_accuracy);
    fmt_value(vl, sizeof vl, "val_loss", e->val_loss);
    fmt_value(va, sizeof va, "val_acc", e->val_accuracy);
    fmt_duration(d, sizeof d, e->seconds);
    fprintf(stderr, "%sepoch %d/%d %lld/%lld%s%s%s%s lr %.3g %.0f samples/s %s\n", tty ? "\r\033[K" : "", e->epoch,
            epochs, (long long)nbat, (long long)nbat, l, a, vl, va, e->lr, e->samples_per_second, d);
    fflush(stderr);
}

/* ---- fit ------------------------------------------------------------------------------------ */

static const char *monitor_name(kiln_monitor m) { return m == KILN_MONITOR_VAL_LOSS ? "val_loss" : "val_accuracy"; }

/* A file kiln_fit writes (`what` names its option) must be writable before training
 * starts: the writers put a temporary file next to it and rename it over, so the same is
 * tried here (and removed), and an existing directory of that name is refused. */
static kiln_status check_output(kiln_ctx *ctx, const char *op, const char *what, const char *path) {
    if (!path) return KILN_OK;
    if (!*path) return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s is an empty path", op, what);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return kiln__fail(ctx, KILN_ERR_IO, "%s: %s %s: is a directory", op, what, path);
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", op);
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int err = errno;
        free(tmp);
        return kiln__fail(ctx, KILN_ERR_IO, "%s: %s %s: cannot write there: %s", op, what, path, strerror(err));
    }
    close(fd);
    unlink(tmp);
    free(tmp);
    return KILN_OK;
}

/* Whether d is m or one of its descendants. */
static bool is_within(const kiln_module *m, const kiln_module *d) {
    if (!d) return false;
    if (m == d) return true;
    for (int i = 0; i < kiln_module_num_children(m); i++)
        if (is_within(kiln_module_child(m, i), d)) return true;
    return false;
}

/* Everything about the options that can be checked before the first step. */
static kiln_status fit_check(kiln_ctx *ctx, kiln_module *m, const char *op, const kiln_fit_opts *o, bool files) {
    if (!o) return kiln__fail(ctx, KILN_ERR_NULL, "%s: options are NULL", op);
    if (!o->train) return kiln__fail(ctx, KILN_ERR_NULL, "%s: no training loader (o->train is NULL)", op);
    if (!o->opt) return kiln__fail(ctx, KILN_ERR_NULL, "%s: no optimizer (o->opt is NULL)", op);
    if (kiln_optim_ctx(o->opt) != ctx)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: the optimizer belongs to another context", op);
    if (o->epochs < 1)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: epochs is %d; it must be >= 1", op, o->epochs);
    if (o->amp != KILN_F32 && !kiln_dtype_is_half(o->amp))
        return kiln__fail(ctx, KILN_ERR_DTYPE, "%s: amp is %s; it must be f16 or bf16 (or f32: off)", op,
                          kiln_dtype_name(o->amp));
    /* fields are literal: a zero here would mean "stop at once" and "zero every gradient",
     * which no one asks for, so it is refused with where the defaults are */
    if (o->patience < 1 && o->patience != -1)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: patience is %d; it must be >= 1, or -1 for no early stopping (kiln_fit_defaults)", op,
                          o->patience);
    if (!(o->clip_grad_norm > 0))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT,
                          "%s: clip_grad_norm is %g; it must be > 0, INFINITY for no clipping (kiln_fit_defaults)", op,
                          o->clip_grad_norm);
    if (o->monitor != KILN_MONITOR_VAL_ACCURACY && o->monitor != KILN_MONITOR_VAL_LOSS)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: unknown monitor %d", op, (int)o->monitor);
    if (o->history_cap < 0 || (o->history_cap > 0 && !o->history))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: history_cap is %d with history %s", op, o->history_cap,
                          o->history ? "set" : "NULL");
    if (o->num_eval_modules < 0 || (o->num_eval_modules > 0 && !o->eval_modules))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: num_eval_modules is %d with eval_modules %s", op,
                          o->num_eval_modules, o->eval_modules ? "set" : "NULL");
    for (int i = 0; i < o->num_eval_modules; i++)
        if (!is_within(m, o->eval_modules[i]))
            return kiln__fail(ctx, o->eval_modules[i] ? KILN_ERR_INVALID_ARGUMENT : KILN_ERR_NULL,
                              "%s: eval_modules[%d] %s", op, i,
                              o->eval_modules[i] ? "is not part of the model" : "is NULL");
    if (o->sched_per_step && !o->sched)
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: sched_per_step is set without a scheduler (o->sched)",
                          op);
    if (!o->val && (o->patience != -1 || o->restore_best || o->best_path))
        return kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "%s: %s needs a validation loader (o->val is NULL)", op,
                          o->patience != -1 ? "early stopping (patience)"
                          : o->restore_best ? "restore_best"
                                            : "best_path");
    if (!files) return KILN_OK; /* a distributed run's rank > 0 writes no file */
    /* the plot and the best model are written after an epoch: a path that cannot be
     * written fails now, before any training */
    kiln_status s = check_output(ctx, op, "plot_path", o->plot_path);
    if (s == KILN_OK) s = check_output(ctx, op, "best_path", o->best_path);
    if (s != KILN_OK) return s;
    /* start the CSV log now: a path that cannot be written fails before any training */
    if (o->metrics_csv) {
        FILE *f = fopen(o->metrics_csv, "w");
        if (!f || fclose(f) != 0)
            return kiln__fail(ctx, KILN_ERR_IO, "%s: metrics_csv %s: cannot create it: %s", op, o->metrics_csv,
                              strerror(errno));
    }
    return KILN_OK;
}

/* One run of kiln_fit: its options, what it keeps across epochs, and its result. */
typedef struct fit_run {
    const char *op;
    kiln_module *m;
    const kiln_fit_opts *o;
    kiln_ctx *ctx;
    kiln_tensor **params; /* the optimizer's, for gradient clipping */
    int nparams;
    kiln_epoch_stats *hist; /* every finished epoch, for the plot */
    tally t;
    snapshot best;
    bool tty;
    int64_t nbat;
    int wait; /* epochs since the monitored value last improved */
    kiln_fit_result r;
    bool rank0;               /* not distributed, or rank 0: writes the files */
    bool show;                /* progress on and rank0 */
    kiln_grad_scaler *scaler; /* o->amp: the loss scaler, else NULL */
} fit_run;

/* Names where in the run the context's error happened and returns its status. */
static kiln_status fit_fail_at(fit_run *f, kiln_status s, const char *fmt, ...) KILN__PRINTF(3, 4);
static kiln_status fit_fail_at(fit_run *f, kiln_status s, const char *fmt, ...) {
    char where[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(where, sizeof where, fmt, ap);
    va_end(ap);
    error_prefix(f->ctx, where);
    return s;
}

/* One training step on a batch: forward, loss (tallied), backward, clipping, update. */
static kiln_status fit_step(fit_run *f, kiln_tensor *x, kiln_tensor *y) {
    const kiln_fit_opts *o = f->o;
    kiln_ctx *ctx = f->ctx;
    kiln_dtype prev = f->scaler ? kiln_ctx_set_autocast(ctx, o->amp) : KILN_F32;
    /* the parameters' casts for this forward, eight a launch */
    if (f->scaler && kiln__optim_autocast(o->opt, o->amp) != KILN_OK) {
        kiln_ctx_set_autocast(ctx, prev);
        return kiln_error_status(ctx);
    }
    kiln_tensor *out = kiln_forward(f->m, x);
    kiln_tensor *loss = batch_loss(ctx, o->loss, o->loss_user, out, y);
    if (f->scaler) kiln_ctx_set_autocast(ctx, prev);
    /* the tally reads f32 outputs (autocast's are half) */
    kiln_tensor *out32 =
        out && kiln_tensor_dtype(out) != KILN_F32 ? kiln_to_dtype(ctx, kiln_detach(ctx, out), KILN_F32) : out;
    kiln_status s =
        loss && out32 ? tally_record(&f->t, out32, y, loss, kiln_tensor_shape(x)[0]) : kiln_error_status(ctx);
    if (s == KILN_OK) s = kiln_optim_zero_grad(o->opt);
    if (s == KILN_OK) s = kiln_backward(f->scaler ? kiln_grad_scaler_scale(f->scaler, loss) : loss);
    if (s == KILN_OK && o->dist) s = kiln_dist_sync_grads(o->dist);
    /* clipping reads the true gradients: unscaled first */
    if (s == KILN_OK && f->scaler && !isinf(o->clip_grad_norm)) s = kiln_grad_scaler_unscale(f->scaler, o->opt);
    if (s == KILN_OK && !isinf(o->clip_grad_norm) &&
        !kiln_clip_grad_norm_tensor(ctx, f->nparams, f->params, o->clip_grad_norm, 2.0))
        s = kiln_error_status(ctx);
    if (s == KILN_OK && f->scaler) {
        s = kiln_grad_scaler_step(f->scaler, o->opt);
        if (s == KILN_OK) s = kiln_grad_scaler_update(f->scaler);
    } else if (s == KILN_OK) {
        s = kiln_optim_step(o->opt);
    }
    if (s == KILN_OK && o->sched_per_step) s = kiln_lr_sched_step(o->sched);
    return s;
}

/* Trains one epoch over the training loader, drawing the progress bar on a terminal, and
 * fills e's train figures. */
static kiln_status fit_train_epoch(fit_run *f, int epoch, kiln_epoch_stats *e, double t0) {
    const kiln_fit_opts *o = f->o;
    kiln_ctx *ctx = f->ctx;
    double last_draw = t0;
    kiln_module_train(f->m, true);
    for (int i = 0; i < o->num_eval_modules; i++) kiln_module_train(o->eval_modules[i], false);
    tally_reset(&f->t);
    int64_t batch = 0, seen = 0;
    kiln_status s = KILN_OK;
    for (;;) {
        kiln_tensor *x, *y;
        kiln_scope_begin(ctx);
        if (!kiln_loader_next(o->train, &x, &y)) {
            kiln_scope_end(ctx);
            s = kiln_error_status(ctx);
            break;
        }
        batch++;
        int64_t B = kiln_tensor_shape(x)[0];
        s = fit_step(f, x, y);
        kiln_scope_end(ctx);
        if (s != KILN_OK) break;
        seen += B;
        double now = kiln__now_ms();
        /* the first at once (it shows a slow start), the last (the full bar), others at most
         * ten times a second */
        if (f->tty && (batch == 1 || batch == f->nbat || now - last_draw >= 100)) {
            /* the last batch's bar waits (the epoch's end does anyway); the others show the
             * values that have arrived, without waiting */
            s = batch == f->nbat ? tally_flush(&f->t) : tally_poll(&f->t);
            if (s != KILN_OK) break;
            now = kiln__now_ms();
            double el = (now - t0) / 1000;
            progress_bar(epoch, o->epochs, batch, f->nbat, &f->t, el > 0 ? seen / el : 0, el);
            last_draw = now;
        }
    }
    if (s == KILN_OK) s = tally_flush(&f->t);
    if (s == KILN_OK && o->dist) { /* the epoch's figures over every rank's batches */
        double v[5] = {f->t.loss_sum, (double)f->t.samples, (double)f->t.correct, (double)f->t.counted, (double)seen};
        if (kiln_dist_allreduce_f64(v, 5, KILN_DIST_SUM) != KILN_OK)
            s = kiln__fail(ctx, kiln_last_status(), "%s", kiln_last_error());
        f->t.loss_sum = v[0], f->t.samples = (int64_t)v[1], f->t.correct = (int64_t)v[2];
        f->t.counted = (int64_t)v[3], seen = (int64_t)v[4];
    }
    if (s == KILN_OK && batch == 0)
        s = kiln__fail(ctx, KILN_ERR_INVALID_ARGUMENT, "the training loader gave no batches");
    if (s != KILN_OK)
        return fit_fail_at(f, s, "%s: epoch %d/%d, batch %lld/%lld", f->op, epoch, o->epochs,
                           (long long)(batch ? batch : 1), (long long)f->nbat);
    double train_s = (kiln__now_ms() - t0) / 1000;
    e->train_loss = tally_loss(&f->t);
    e->train_accuracy = tally_acc(&f->t);
    e->samples_per_second = train_s > 0 ? (double)seen / train_s : NAN;
    return KILN_OK;
}

/* After an epoch with validation: a better monitored value snapshots and saves the model;
 * patience epochs without one set *stop. */
static kiln_status fit_track_best(fit_run *f, const kiln_epoch_stats *e, bool *stop) {
    const kiln_fit_opts *o = f->o;
    kiln_fit_result *r = &f->r;
    bool higher = o->monitor == KILN_MONITOR_VAL_ACCURACY;
    double v = higher ? e->val_accuracy : e->val_loss;
    bool better = !isnan(v) && (r->best_epoch == 0 || (higher ? v > r->best_metric : v < r->best_metric));
    kiln_status s;
    if (!better) {
        if (o->patience != -1 && ++f->wait >= o->patience) *stop = true;
        return KILN_OK;
    }
    r->best_epoch = e->epoch;
    r->best_metric = v;
    f->wait = 0;
    if (o->restore_best && (s = snapshot_take(&f->best, f->m)) != KILN_OK)
        return fit_fail_at(f, s, "%s: epoch %d/%d, best-model snapshot", f->op, e->epoch, o->epochs);
    if (o->best_path && f->rank0) {
        char desc[160];
        snprintf(desc, sizeof desc, "kiln_fit best model: epoch %d, %s %.6g", e->epoch, monitor_name(o->monitor), v);
        if ((s = kiln_module_save(f->m, o->best_path, desc)) != KILN_OK)
            return fit_fail_at(f, s, "%s: epoch %d/%d, saving the best model", f->op, e->epoch, o->epochs);
    }
    return KILN_OK;
}

/* The log line and the plot of the epochs so far: host files, their context-less errors
 * moved into the context. */
static kiln_status fit_write_files(fit_run *f, const kiln_epoch_stats *e) {
    const kiln_fit_opts *o = f->o;
    if (o->metrics_csv && kiln_metrics_csv_append(o->metrics_csv, e) != KILN_OK)
        return kiln__fail(f->ctx, KILN_ERR_IO, "%s: epoch %d/%d: %s", f->op, e->epoch, o->epochs, kiln_last_error());
    if (o->plot_path && kiln_plot_history(o->plot_path, f->hist, e->epoch, "training history") != KILN_OK)
        return kiln__fail(f->ctx, KILN_ERR_IO, "%s: epoch %d/%d: %s", f->op, e->epoch, o->epochs, kiln_last_error());
    return KILN_OK;
}

/* One epoch: training, validation, the lr schedule, the best model, the files. */
static kiln_status fit_epoch(fit_run *f, int epoch, bool *stop) {
    const kiln_fit_opts *o = f->o;
    kiln_epoch_stats e = {.epoch = epoch, .val_loss = NAN, .val_accuracy = NAN};
    e.lr = kiln_optim_lr(o->opt);
    double t0 = kiln__now_ms();
    kiln_status s = fit_train_epoch(f, epoch, &e, t0);
    if (s != KILN_OK) return s;
    if (o->val) {
        s = kiln_evaluate(f->m, o->val, o->loss, o->loss_user, NULL, &e.val_loss, &e.val_accuracy);
        if (s == KILN_OK && o->dist) { /* each rank validated its shard: their mean */
            double v[2] = {e.val_loss, e.val_accuracy};
            if (kiln_dist_allreduce_f64(v, 2, KILN_DIST_SUM) != KILN_OK)
                s = kiln__fail(f->ctx, kiln_last_status(), "%s", kiln_last_error());
            e.val_loss = v[0] / kiln_dist_world_size(), e.val_accuracy = v[1] / kiln_dist_world_size();
        }
        if (s != KILN_OK) return fit_fail_at(f, s, "%s: epoch %d/%d, validation", f->op, epoch, o->epochs);
    }
    if (o->sched && !o->sched_per_step && (s = kiln_lr_sched_step(o->sched)) != KILN_OK)
        return fit_fail_at(f, s, "%s: epoch %d/%d, lr scheduler", f->op, epoch, o->epochs);
    e.seconds = (kiln__now_ms() - t0) / 1000;
    f->hist[epoch - 1] = e;
    if (epoch <= o->history_cap) o->history[epoch - 1] = e;
    f->r.epochs_run = epoch;
    f->r.last = e;
    if (f->show) progress_epoch(f->tty, &e, o->epochs, f->nbat);
    if (o->val && (s = fit_track_best(f, &e, stop)) != KILN_OK) return s;
    if (o->dist) { /* rank 0's verdict holds for every rank */
        int32_t v = *stop;
        if (kiln_dist_broadcast(&v, sizeof v, 0) != KILN_OK)
            return kiln__fail(f->ctx, kiln_last_status(), "%s: epoch %d/%d: %s", f->op, epoch, o->epochs,
                              kiln_last_error());
        *stop = v != 0;
    }
    return f->rank0 ? fit_write_files(f, &e) : KILN_OK;
}

/* At the end of a run with restore_best: the best epoch's weights back in the model. */
static kiln_status fit_restore_best(fit_run *f) {
    kiln_fit_result *r = &f->r;
    if (!f->o->restore_best || !f->best.taken || r->best_epoch == r->epochs_run) return KILN_OK;
    kiln_status s = snapshot_restore(&f->best, f->m);
    if (s != KILN_OK) return fit_fail_at(f, s, "kiln_fit: restoring the best model");
    if (f->show)
        fprintf(stderr, "restored the weights of epoch %d (%s %.4f)\n", r->best_epoch, monitor_name(f->o->monitor),
                r->best_metric);
    return KILN_OK;
}

kiln_status kiln_fit(kiln_module *m, const kiln_fit_opts *o, kiln_fit_result *result) {
    fit_run f = {.op = "kiln_fit", .m = m, .o = o};
    f.r.best_metric = NAN;
    f.r.last.train_loss = f.r.last.train_accuracy = f.r.last.val_loss = f.r.last.val_accuracy = NAN;
    f.r.last.lr = f.r.last.seconds = f.r.last.samples_per_second = NAN;
    if (result) *result = f.r;
    if (!m) return kiln__fail_global(KILN_ERR_NULL, "%s: module is NULL", f.op);
    kiln_ctx *ctx = f.ctx = kiln_module_ctx(m);
    if (kiln_error_status(ctx) != KILN_OK) return kiln_error_status(ctx); /* an earlier error is pending */
    f.rank0 = !o || !o->dist || kiln_dist_rank() == 0;
    kiln_status s = fit_check(ctx, m, f.op, o, f.rank0);
    if (s != KILN_OK) return s;
    f.show = o->progress && f.rank0;

    f.hist = calloc((size_t)o->epochs, sizeof *f.hist);
    f.nparams = kiln_optim_num_params(o->opt);
    f.params = calloc((size_t)(f.nparams > 0 ? f.nparams : 1), sizeof *f.params);
    if (!f.hist || !f.params) {
        free(f.hist);
        free(f.params);
        return kiln__fail(ctx, KILN_ERR_HOST_OUT_OF_MEMORY, "%s: out of host memory", f.op);
    }
    for (int i = 0; i < f.nparams; i++) f.params[i] = kiln_optim_param(o->opt, i);
    if (o->amp != KILN_F32) {
        f.scaler = kiln_grad_scaler_new(ctx, o->amp_scaler.init_scale != 0 ? &o->amp_scaler : NULL);
        if (!f.scaler) {
            free(f.hist);
            free(f.params);
            return kiln_error_status(ctx);
        }
    }

    bool was_training = kiln_module_is_training(m);
    bool grad = kiln_ctx_set_grad_enabled(ctx, true);
    f.tty = f.show && isatty(2);
    f.nbat = kiln_loader_num_batches(o->train);
    f.t = (tally){.ctx = ctx, .want_b = f.nbat};
    s = kiln_loader_reset(o->train);
    for (int epoch = 1; s == KILN_OK && epoch <= o->epochs; epoch++) {
        bool stop = false;
        s = fit_epoch(&f, epoch, &stop);
        if (s == KILN_OK && stop) {
            f.r.stopped_early = true;
            if (f.show)
                fprintf(stderr, "early stopping: %s did not improve for %d epochs; best epoch %d (%.4f)\n",
                        monitor_name(o->monitor), o->patience, f.r.best_epoch, f.r.best_metric);
            break;
        }
    }
    if (s == KILN_OK) s = fit_restore_best(&f);
    if (f.tty && s != KILN_OK) fputc('\n', stderr); /* leave the bar's line */
    snapshot_free(&f.best);
    tally_free(&f.t);
    kiln_grad_scaler_free(f.scaler);
    free(f.params);
    free(f.hist);
    kiln_module_train(m, was_training);
    kiln_ctx_set_grad_enabled(ctx, grad);
    if (result) *result = f.r;
    return s;
}
