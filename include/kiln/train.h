/* kiln/train.h - training support: classification metrics, a fit/evaluate loop with
 * progress, early stopping, best-model restore and a CSV log, and training-curve plots.
 *
 *     kiln_epoch_stats hist[20];
 *     kiln_fit_opts o = kiln_fit_defaults();
 *     o.epochs = 20;  o.train = train_loader;  o.val = val_loader;  o.opt = opt;
 *     o.patience = 3;  o.restore_best = true;  o.progress = true;
 *     o.metrics_csv = "metrics.csv";  o.plot_path = "curves.svg";
 *     o.history = hist;  o.history_cap = 20;
 *     kiln_fit_result r;
 *     if (kiln_fit(net, &o, &r) != KILN_OK) fprintf(stderr, "%s\n", kiln_error_message(ctx));
 *
 * kiln_fit is a convenience: everything it does is public API (kiln_loader_next,
 * kiln_forward, kiln_cross_entropy, kiln_backward, kiln_optim_step, kiln_confusion_*), and
 * a program may write the same loop itself. It prints only when progress is true (to
 * stderr: a redrawn bar on a terminal, one line per epoch otherwise).
 */
#ifndef KILN_TRAIN_H
#define KILN_TRAIN_H

#include <stdio.h>

#include "data.h"
#include "dist.h"
#include "amp.h"
#include "nn.h"
#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- metrics (src/train/metrics.c) ---------------------------------------------------- */

/* A confusion matrix of class counts: rows are true classes, columns predictions. Host
 * memory; updating from tensors reads them back (a sync). */
typedef struct kiln_confusion kiln_confusion;

/* NULL with kiln_last_error() set when num_classes < 1 or memory runs out. */
KILN_API kiln_confusion *kiln_confusion_new(int num_classes);
KILN_API void kiln_confusion_free(kiln_confusion *cm);
KILN_API void kiln_confusion_reset(kiln_confusion *cm);
/* Adds n (truth, prediction) pairs; a class outside [0, num_classes) is KILN_ERR_RANGE
 * and nothing is added. */
KILN_API kiln_status kiln_confusion_add(kiln_confusion *cm, const int32_t *truth, const int32_t *pred, int64_t n);
/* Adds argmax(logits [N, C]) against I32 labels [N] (C must equal num_classes). */
KILN_API kiln_status kiln_confusion_update(kiln_confusion *cm, kiln_tensor *logits, kiln_tensor *labels);
KILN_API int kiln_confusion_num_classes(const kiln_confusion *cm);
KILN_API int64_t kiln_confusion_count(const kiln_confusion *cm, int truth, int pred);
KILN_API int64_t kiln_confusion_total(const kiln_confusion *cm);
/* Fraction of correct predictions (0 when empty). */
KILN_API double kiln_confusion_accuracy(const kiln_confusion *cm);
/* Precision, recall and F1 of class cls, or their unweighted means over all classes
 * (macro average, as sklearn's average='macro') when cls is -1. A class never predicted
 * has precision 0, never present recall 0 (sklearn's zero_division=0). Any out pointer
 * may be NULL. */
KILN_API kiln_status kiln_confusion_prf(const kiln_confusion *cm, int cls, double *precision, double *recall,
                                        double *f1);
/* The matrix as aligned text with a per-class precision/recall/F1 table; class names
 * optional (NULL: indices). Returns buf. */
KILN_API char *kiln_confusion_format(const kiln_confusion *cm, const char *const *class_names, char *buf, size_t cap);

/* How many rows of logits [N, C] have their label among the k largest logits (top-k
 * accuracy is *correct / N). Reads back (a sync). Ties are ranked as kiln_argmax ranks
 * them, so top-1 equals the confusion matrix's accuracy: a row's label counts when fewer
 * than k logits of the row rank before the label's, a logit ranking before another when it
 * is larger, or equal with a lower class index; NaN ranks before every number (the first
 * NaN before later ones). 1 <= k <= C; a label outside [0, C) is KILN_ERR_RANGE. */
KILN_API kiln_status kiln_topk_correct(kiln_tensor *logits, kiln_tensor *labels, int k, int64_t *correct);

/* The Fréchet distance between the Gaussians N(mu1, cov1) and N(mu2, cov2) of dimension d
 * (Dowson & Landau 1982; the FID of Heusel et al. 2017 on a network's features):
 * |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr(sqrt(cov1 cov2)), in double precision on the
 * host. Covariances are d x d row-major, symmetric (to 1e-9 relative) positive semi-definite;
 * tr(sqrt(cov1 cov2)) is the trace of sqrt(sqrt(cov1) cov2 sqrt(cov1)), both square roots by
 * Jacobi eigendecomposition with rounding's negative eigenvalues taken as 0. O(d^3): d up to
 * 4096. KILN_ERR_NULL, or KILN_ERR_INVALID_ARGUMENT for d outside [1, 4096], a value not
 * finite or a covariance not symmetric (kiln_last_error() says which). */
KILN_API kiln_status kiln_frechet_distance(int d, const double *mu1, const double *cov1, const double *mu2,
                                           const double *cov2, double *out);

/* ---- fit / evaluate (src/train/fit.c) ------------------------------------------------- */

/* One epoch's figures; NaN where not measured (no validation loader; accuracy when the
 * outputs are not logits [N, C] with i32 labels [N]). The train figures are means over the
 * epoch's batches as they ran (the weights changing between them), as Keras reports them:
 * the loss weighted by batch size, the accuracy over every sample (argmax, first maximum). */
typedef struct kiln_epoch_stats {
    int epoch; /* 1-based */
    double train_loss, train_accuracy;
    double val_loss, val_accuracy;
    double lr;                 /* the learning rate (group 0's) the epoch started with */
    double seconds;            /* wall time of the epoch, validation included */
    double samples_per_second; /* training samples */
} kiln_epoch_stats;

/* The loss of a batch: a one-element f32 tensor to call kiln_backward on, taken as the
 * batch's mean (it is weighted by batch size in epoch means). NULL in kiln_fit_opts means
 * kiln_cross_entropy(out, labels, KILN_MEAN). Returning NULL fails the run (with the
 * context's error when the function set one). Evaluation calls it with grad mode off
 * (kiln_ctx_grad_enabled tells training steps from evaluation). */
typedef kiln_tensor *(*kiln_loss_fn)(kiln_ctx *ctx, kiln_tensor *out, kiln_tensor *labels, void *user);

typedef enum kiln_monitor { KILN_MONITOR_VAL_ACCURACY = 0, KILN_MONITOR_VAL_LOSS = 1 } kiln_monitor;

typedef struct kiln_fit_opts {
    int epochs;           /* >= 1 */
    kiln_loader *train;   /* required; the run starts at the first batch of its current epoch */
    kiln_loader *val;     /* optional: validation each epoch, early stopping, best model
                             (patience, restore_best and best_path without it are an error) */
    kiln_optim *opt;      /* required */
    kiln_lr_sched *sched; /* optional: stepped once per epoch, or after every training step
                             with sched_per_step (a per-step warm-up and cosine) */
    bool sched_per_step;
    kiln_loss_fn loss; /* NULL: cross-entropy */
    void *loss_user;
    float clip_grad_norm;      /* > 0: clip the global gradient norm to it each step; INFINITY: no clipping */
    kiln_monitor monitor;      /* what "best" means (needs val) */
    int patience;              /* >= 1: stop after this many epochs without a strict improvement;
                                  -1: no early stopping */
    bool restore_best;         /* at the end, load the best epoch's weights back (needs val) */
    const char *best_path;     /* optional: the best model is also saved there (kiln_module_save) */
    const char *metrics_csv;   /* optional: one line per epoch, written as the run goes (a file
                                  already there is replaced when the run starts) */
    const char *plot_path;     /* optional: the training curves as an SVG image, after each epoch
                                  (it and best_path are checked writable before training starts) */
    bool progress;             /* print progress to stderr (a terminal's bar is redrawn after the
                                  first batch, then at most 10 times a second) */
    kiln_epoch_stats *history; /* optional: filled with up to history_cap epochs */
    int history_cap;
    /* Optional: descendants of the model kept in eval mode while it trains (torch's
     * model.train(); backbone.eval()): a frozen backbone's batch norm normalises with, and
     * keeps, its running statistics and its dropout is off. Freezing the parameters is
     * separate (kiln_module_set_requires_grad). kiln_fit puts the model in train mode at the
     * start of every epoch (validation switches it to eval) and then these back to eval. */
    kiln_module *const *eval_modules;
    int num_eval_modules;
    /* Optional (kiln/dist.h): data-parallel training under mpirun. The model is this
     * wrapper's; each rank's train (and val) loader should read its own shard
     * (kiln_loader_opts.shard_rank/shard_count). The gradients are averaged after every
     * backward (before clipping); the epoch's train figures are summed over the ranks'
     * batches and the validation figures averaged over the ranks, so every rank sees the
     * same numbers; the progress, metrics_csv, plot_path and best_path are written by
     * rank 0 only, and early stopping is decided on rank 0 and broadcast. */
    kiln_dist_model *dist;
    /* Mixed precision (kiln/amp.h): KILN_F16 or KILN_BF16 runs every training step's forward
     * and loss under autocast with that dtype, the backward from the loss scaled by a
     * GradScaler (amp_scaler's options; its defaults while amp_scaler.init_scale is 0), its
     * unscale before clipping and its skip of steps with inf/NaN gradients; the parameters
     * stay f32, and their half copies for each forward are made as it begins, eight a
     * launch. KILN_F32 (0, the default): off. Validation runs in f32. */
    kiln_dtype amp;
    kiln_grad_scaler_opts amp_scaler;
} kiln_fit_opts;

typedef struct kiln_fit_result {
    int epochs_run;
    int best_epoch;     /* 0 without validation */
    double best_metric; /* the monitored value at best_epoch */
    bool stopped_early;
    kiln_epoch_stats last;
} kiln_fit_result;

/* epochs 1, monitor val accuracy, patience -1 and clip_grad_norm INFINITY (neither early
 * stopping nor clipping), everything else off (NULL, false, 0). Start from it: fields are
 * literal, and a zero patience or clip_grad_norm is an error. */
KILN_API kiln_fit_opts kiln_fit_defaults(void);
/* Trains m (train mode, but o->eval_modules in eval mode) and validates it (eval mode); m's
 * mode (the same for all of m, the mode m itself had) and the context's grad mode are
 * restored at the end. A step does not wait for the device: its loss and
 * predictions are kept on the device and read back at the end of the epoch (the progress
 * bar reads them without waiting, showing the values that have arrived). A bad label a
 * step's loss met (a deferred error, functional.h) is reported there. result may be NULL; it is filled on errors too
 * (the epochs that finished). On an error the model keeps the weights of the last finished step and the context's error
 * names the epoch and batch ("kiln_fit: epoch 2/5, batch 17/938: ...", "kiln_fit: epoch 2/5, validation: ..."). An
 * error already held by the context is returned at once. */
KILN_API kiln_status kiln_fit(kiln_module *m, const kiln_fit_opts *o, kiln_fit_result *result);
/* Runs m in eval mode without gradients over every batch of the loader (from its start;
 * the loader is reset first) and gives the mean loss (NULL loss fn: cross-entropy; batch
 * losses weighted by batch size) and accuracy (NaN when the outputs are not [N, C] with
 * i32 labels [N]); cm (optional, needs such outputs with C = its classes) gets every
 * prediction added. Reads back once at the end (more often only for very large loaders).
 * The module's mode is restored. Outputs are NaN on error; the error names the batch. */
KILN_API kiln_status kiln_evaluate(kiln_module *m, kiln_loader *l, kiln_loss_fn loss, void *loss_user,
                                   kiln_confusion *cm, double *mean_loss, double *accuracy);

/* ---- plots (src/train/plot.c) --------------------------------------------------------- */

/* Writes the curves of n epochs as an SVG image (two panels: loss and accuracy, train and
 * validation, with axes and a legend), atomically. Opens in any web browser. */
KILN_API kiln_status kiln_plot_history(const char *path, const kiln_epoch_stats *h, int n, const char *title);
/* One named series of kiln_plot_curves: n values, NaN where there is none. */
typedef struct kiln_plot_series {
    const char *name; /* the legend's text (NULL: none) */
    const double *y;
} kiln_plot_series;
/* Writes one panel of 1 or 2 curves over n points at x[0..n) (NULL x: 1..n) as an SVG image,
 * drawn as kiln_plot_history draws its panels (series 0 solid, series 1 dashed, NaN values
 * leave gaps, axes with nice ticks, a legend where it hides the fewest points), atomically:
 * a return per episode and its moving average, a metric per step. Labels may be NULL. */
KILN_API kiln_status kiln_plot_curves(const char *path, const char *title, const char *xlabel, const char *ylabel,
                                      int n, const double *x, int nseries, const kiln_plot_series *series);
/* Appends (or creates, with a header line) the CSV log
 * "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds,samples_per_second". */
KILN_API kiln_status kiln_metrics_csv_append(const char *path, const kiln_epoch_stats *e);

#ifdef __cplusplus
}
#endif
#endif
