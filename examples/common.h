/* examples/common.h - what the examples share: command-line flags, timing, and the whole
 * train-evaluate-save program of the Fashion-MNIST classifiers (mlp_fashion, cnn_fashion),
 * which differ only in their model and defaults.
 *
 * Header-only (static functions) so each example stays one file to read and one to build.
 * Exit codes: 0 done, 1 a runtime error (kiln_error_message / kiln_last_error printed), 2
 * bad flags (a usage message printed).
 */
#ifndef KILN_EXAMPLES_COMMON_H
#define KILN_EXAMPLES_COMMON_H

#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kiln/kiln.h>

/* KILN_EXAMPLE_TINY set (and not "0"): the classifiers build small models, the same program
 * at a small fraction of the work (scripts/test --oclgrind runs a step under Oclgrind). */
static inline bool ex_tiny(void) {
    const char *t = getenv("KILN_EXAMPLE_TINY");
    return t && *t && strcmp(t, "0") != 0;
}

static inline double ex_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- flags ----------------------------------------------------------------------------- */

/* Which flags a program accepts (the regression has no dataset, no curves). */
enum {
    EX_F_DATA = 1 << 0,     /* --data --limit --val --plot --metrics --eval-batch */
    EX_F_PROGRESS = 1 << 1, /* --progress --no-progress */
    EX_F_BENCH = 1 << 2,    /* --bench */
};

typedef struct ex_opts {
    int epochs;
    int64_t batch;
    double lr;             /* NaN: 0.01 for SGD, 1e-3 for Adam */
    double momentum;       /* SGD only */
    const char *optimizer; /* "sgd" or "adam" */
    uint64_t seed;
    const char *device; /* NULL: $KILN_DEVICE, else the default device */
    const char *save, *load, *data;
    int64_t limit; /* 0: every training sample */
    double val;    /* fraction of the training set held out for validation */
    const char *plot, *metrics;
    bool progress;
    int bench;            /* timed training steps after the run (0: none) */
    bool test_each_epoch; /* the test set as kiln_fit's validation set, to follow it per epoch */
    int64_t eval_batch;
    bool distributed; /* data-parallel under mpirun (kiln/dist.h) */
} ex_opts;

static inline void ex_usage(FILE *f, const char *prog, const char *what, unsigned flags, const ex_opts *d) {
    fprintf(f, "usage: %s [options]\n  %s\n\noptions (defaults in brackets):\n", prog, what);
    fprintf(f, "  --epochs N         training epochs; 0 evaluates without training [%d]\n", d->epochs);
    fprintf(f, "  --batch N          training batch size [%lld]\n", (long long)d->batch);
    if (isnan(d->lr))
        fprintf(f, "  --lr X             learning rate [0.01 with sgd, 0.001 with adam]\n");
    else
        fprintf(f, "  --lr X             learning rate [%g]\n", d->lr);
    fprintf(f, "  --optimizer NAME   sgd or adam [%s]\n", d->optimizer);
    fprintf(f, "  --momentum X       SGD momentum [%g]\n", d->momentum);
    fprintf(f, "  --seed N           random seed (initialisation, data order, dropout) [%llu]\n",
            (unsigned long long)d->seed);
    fprintf(f, "  --device SPEC      gpu, cpu, P:D or part of a device name [$KILN_DEVICE, else the\n"
               "                     first GPU, else the first CPU]\n");
    fprintf(f, "  --save PATH        save the trained model (safetensors)\n");
    fprintf(f, "  --load PATH        start from these weights (kiln or PyTorch safetensors)\n");
    if (flags & EX_F_DATA) {
        fprintf(f, "  --data DIR         Fashion-MNIST IDX files [%s]\n", KILN_FASHION_MNIST_DIR);
        fprintf(f, "  --limit N          train on the first N training images only [all]\n");
        fprintf(f, "  --val FRACTION     hold out this part of the training set for validation [0]\n");
        fprintf(f, "  --plot PATH        write the training curves (SVG) there\n");
        fprintf(f, "  --metrics PATH     write one CSV line per epoch there\n");
        fprintf(f, "  --eval-batch N     batch size of evaluation [%lld]\n", (long long)d->eval_batch);
        fprintf(f, "  --test-each-epoch  measure the test set after every epoch (in place of --val; to\n"
                   "                     follow test accuracy per epoch, not to select a model)\n");
        fprintf(f, "  --distributed      data-parallel under mpirun: each rank trains on its shard with\n"
                   "                     --batch samples a step (kiln/dist.h); rank 0 prints and saves\n");
    }
    if (flags & EX_F_PROGRESS) fprintf(f, "  --progress, --no-progress   progress on stderr [on]\n");
    if (flags & EX_F_BENCH)
        fprintf(f, "  --bench N          after the run, time N training steps and print the median\n"
                   "                     milliseconds per step (step_ms=...) [0: off]\n");
    fprintf(f, "  --help             this message\n");
}

static inline bool ex_parse_i64(const char *v, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return false;
    *out = x;
    return true;
}

static inline bool ex_parse_f64(const char *v, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) return false;
    *out = x;
    return true;
}

/* One flag of an example's own options struct (the text generators'): a switch sets a bool
 * to `lo != 0` and takes no value; an integer or real is range-checked in [lo, hi]; a string
 * must not be empty; a seed is any integer >= 0. */
typedef enum { EX_FLAG_SWITCH, EX_FLAG_I64, EX_FLAG_F64, EX_FLAG_STR, EX_FLAG_SEED } ex_flag_kind;
typedef struct ex_flag {
    const char *name;
    ex_flag_kind kind;
    size_t off; /* offsetof the field in the options struct */
    double lo, hi;
} ex_flag;

/* Parses argv ("--name value" or "--name=value") into the struct at o by the table flags[n].
 * Returns 0 after --help or -h (usage printed to stdout), -1 when every flag was taken, and
 * 2 after saying on stderr what was wrong and how to get the usage. */
static inline int ex_parse_flags(int argc, char **argv, const char *prog, const ex_flag *flags, int n, void *o,
                                 void (*usage)(FILE *)) {
    for (int i = 1; i < argc; i++) {
        char name[64];
        const char *a = argv[i], *v = NULL, *eq = strchr(a, '=');
        if (eq && eq - a < (long)sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = 0;
            v = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            usage(stdout);
            return 0;
        }
        const ex_flag *f = NULL;
        for (int k = 0; k < n && !f; k++)
            if (!strcmp(name, flags[k].name) && (flags[k].kind != EX_FLAG_SWITCH || !v)) f = &flags[k];
        if (!f) {
            fprintf(stderr, "%s: unknown option '%s'\n", prog, a);
            goto bad;
        }
        char *field = (char *)o + f->off;
        if (f->kind == EX_FLAG_SWITCH) {
            *(bool *)field = f->lo != 0;
            continue;
        }
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: %s needs a value\n", prog, name);
                goto bad;
            }
            v = argv[++i];
        }
        bool ok = *v != '\0';
        int64_t seed;
        switch (f->kind) {
        case EX_FLAG_I64: ok = ex_parse_i64(v, (int64_t)f->lo, (int64_t)f->hi, (int64_t *)field); break;
        case EX_FLAG_F64: ok = ex_parse_f64(v, f->lo, f->hi, (double *)field); break;
        case EX_FLAG_SEED:
            ok = ex_parse_i64(v, 0, INT64_MAX, &seed);
            *(uint64_t *)field = (uint64_t)seed;
            break;
        default: *(const char **)field = v; break;
        }
        if (!ok) {
            fprintf(stderr, "%s: invalid value '%s' for %s\n", prog, v, name);
            goto bad;
        }
    }
    return -1;
bad:
    fprintf(stderr, "usage: %s [options]  (%s --help lists them)\n", prog, prog);
    return 2;
}

/* Parses argv into o (which holds the defaults). Returns -1 to go on, else the exit code
 * (0 after --help, 2 after a usage error, with the message printed). Flags take their
 * value as the next argument or after '='. */
static inline int ex_parse(int argc, char **argv, const char *prog, const char *what, unsigned flags, ex_opts *o) {
    const ex_opts d = *o;
    /* line-buffered even into a pipe or file, so a log keeps stdout and stderr in order */
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        char name[64];
        const char *a = argv[i], *v = NULL, *eq = strchr(a, '=');
        if (eq && eq - a < (long)sizeof name) {
            memcpy(name, a, (size_t)(eq - a));
            name[eq - a] = 0;
            v = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            ex_usage(stdout, prog, what, flags, &d);
            return 0;
        }
        if ((flags & EX_F_PROGRESS) && !v && !strcmp(name, "--progress")) {
            o->progress = true;
            continue;
        }
        if ((flags & EX_F_DATA) && !v && !strcmp(name, "--test-each-epoch")) {
            o->test_each_epoch = true;
            continue;
        }
        if ((flags & EX_F_DATA) && !v && !strcmp(name, "--distributed")) {
            o->distributed = true;
            continue;
        }
        if ((flags & EX_F_PROGRESS) && !v && !strcmp(name, "--no-progress")) {
            o->progress = false;
            continue;
        }
        static const char *const valued[] = {"--epochs", "--batch",   "--lr",    "--optimizer", "--momentum", "--seed",
                                             "--device", "--save",    "--load",  "--data",      "--limit",    "--val",
                                             "--plot",   "--metrics", "--bench", "--eval-batch"};
        bool known = false;
        for (size_t k = 0; k < sizeof valued / sizeof *valued; k++) known |= !strcmp(name, valued[k]);
        bool data_flag = !strcmp(name, "--data") || !strcmp(name, "--limit") || !strcmp(name, "--val") ||
                         !strcmp(name, "--plot") || !strcmp(name, "--metrics") || !strcmp(name, "--eval-batch");
        if (!known || (data_flag && !(flags & EX_F_DATA)) || (!strcmp(name, "--bench") && !(flags & EX_F_BENCH))) {
            fprintf(stderr, "%s: unknown option '%s'\n", prog, a);
            goto bad;
        }
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: %s needs a value\n", prog, name);
                goto bad;
            }
            v = argv[++i];
        }
        int64_t n = 0;
        bool ok = true;
        if (!strcmp(name, "--epochs"))
            ok = ex_parse_i64(v, 0, 1000000, &n), o->epochs = (int)n;
        else if (!strcmp(name, "--batch"))
            ok = ex_parse_i64(v, 1, 1 << 20, &o->batch);
        else if (!strcmp(name, "--eval-batch"))
            ok = ex_parse_i64(v, 1, 1 << 20, &o->eval_batch);
        else if (!strcmp(name, "--lr"))
            ok = ex_parse_f64(v, 0, 1e6, &o->lr);
        else if (!strcmp(name, "--momentum"))
            ok = ex_parse_f64(v, 0, 1, &o->momentum);
        else if (!strcmp(name, "--seed"))
            ok = ex_parse_i64(v, 0, INT64_MAX, &n), o->seed = (uint64_t)n;
        else if (!strcmp(name, "--limit"))
            ok = ex_parse_i64(v, 1, INT64_MAX, &o->limit);
        else if (!strcmp(name, "--val"))
            ok = ex_parse_f64(v, 0, 0.99, &o->val);
        else if (!strcmp(name, "--bench"))
            ok = ex_parse_i64(v, 0, 1000000, &n), o->bench = (int)n;
        else if (!strcmp(name, "--optimizer")) {
            ok = !strcmp(v, "sgd") || !strcmp(v, "adam");
            o->optimizer = v;
        } else if (!*v)
            ok = false; /* an empty path or spec */
        else if (!strcmp(name, "--device"))
            o->device = v;
        else if (!strcmp(name, "--save"))
            o->save = v;
        else if (!strcmp(name, "--load"))
            o->load = v;
        else if (!strcmp(name, "--data"))
            o->data = v;
        else if (!strcmp(name, "--plot"))
            o->plot = v;
        else if (!strcmp(name, "--metrics"))
            o->metrics = v;
        if (!ok) {
            fprintf(stderr, "%s: invalid value '%s' for %s\n", prog, v, name);
            goto bad;
        }
    }
    if (o->test_each_epoch && o->val > 0) {
        fprintf(stderr, "%s: --test-each-epoch and --val exclude each other\n", prog);
        goto bad;
    }
    if (isnan(o->lr)) o->lr = strcmp(o->optimizer, "sgd") ? 1e-3 : 0.01;
    return -1;
bad:
    fprintf(stderr, "usage: %s [options]  (%s --help lists them)\n", prog, prog);
    return 2;
}

/* Opens the device of o->device and prints which one it is. NULL on failure (printed). */
static inline kiln_ctx *ex_open(const char *prog, const ex_opts *o) {
    kiln_ctx *ctx;
    kiln_status st = kiln_open(&ctx, o->device);
    if (st != KILN_OK) {
        fprintf(stderr, "%s: %s (%s)\n", prog, kiln_last_error(), kiln_status_name(st));
        return NULL;
    }
    const kiln_device_info *d = kiln_ctx_device(ctx);
    printf("device %d:%d  %s  (%s, %s)\n", d->platform_index, d->device_index, d->name, d->platform_name,
           kiln_device_type_name(d->type));
    return ctx;
}

/* Builds the optimizer o asks for over every parameter of m. */
static inline kiln_optim *ex_optimizer(kiln_ctx *ctx, kiln_module *m, const ex_opts *o) {
    int n = kiln_module_parameters(m, NULL, 0);
    kiln_tensor **params = malloc(sizeof *params * (size_t)(n > 0 ? n : 1));
    if (!params) return NULL;
    kiln_module_parameters(m, params, n);
    kiln_optim *opt;
    if (!strcmp(o->optimizer, "sgd")) {
        kiln_sgd_opts so = kiln_sgd_defaults();
        so.lr = o->lr;
        so.momentum = o->momentum;
        opt = kiln_sgd(ctx, params, n, &so);
    } else {
        kiln_adam_opts ao = kiln_adam_defaults();
        ao.lr = o->lr;
        opt = kiln_adam(ctx, params, n, &ao);
    }
    free(params);
    return opt;
}

static int ex_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Times `steps` training steps (forward, cross-entropy, backward, optimizer step, and the
 * loss read back so the device has finished) after 3 warm-up steps; returns the median
 * milliseconds or NaN on error. Changes m's weights: run it after saving. */
static inline double ex_bench_steps(kiln_module *m, kiln_optim *opt, kiln_loader *l, int steps) {
    kiln_ctx *ctx = kiln_module_ctx(m);
    double *t = malloc(sizeof *t * (size_t)steps);
    if (!t) return NAN;
    kiln_module_train(m, true);
    int done = 0;
    for (int i = 0; i < steps + 3;) {
        double t0 = ex_now_ms();
        kiln_scope_begin(ctx);
        kiln_tensor *x, *y;
        if (!kiln_loader_next(l, &x, &y)) {
            kiln_scope_end(ctx);
            if (kiln_error_status(ctx) != KILN_OK) break;
            continue; /* the end of an epoch: the next call starts the next one */
        }
        kiln_tensor *loss = kiln_cross_entropy(ctx, kiln_forward(m, x), y, KILN_MEAN);
        kiln_optim_zero_grad(opt);
        kiln_backward(loss);
        kiln_optim_step(opt);
        float lv = kiln_tensor_item(loss);
        kiln_scope_end(ctx);
        if (kiln_error_status(ctx) != KILN_OK || !isfinite(lv)) break;
        if (i >= 3) t[done++] = ex_now_ms() - t0;
        i++;
    }
    double med = NAN;
    if (done == steps && steps > 0) {
        qsort(t, (size_t)steps, sizeof *t, ex_cmp_double);
        med = steps % 2 ? t[steps / 2] : 0.5 * (t[steps / 2 - 1] + t[steps / 2]);
    }
    free(t);
    return med;
}

/* ---- the Fashion-MNIST classifier program ---------------------------------------------- */

typedef struct ex_classifier {
    const char *prog;
    const char *what;                     /* one line for --help */
    kiln_module *(*build)(kiln_ctx *ctx); /* the model, from the context's RNG */
    ex_opts defaults;
    bool normalize; /* x/255 then (x - KILN_FASHION_MNIST_MEAN) / KILN_FASHION_MNIST_STD */
    kiln_dtype amp; /* kiln_fit_opts.amp: mixed-precision training (KILN_F32: off) */
} ex_classifier;

#define EX_FAIL(...)                                                                                                   \
    do {                                                                                                               \
        fprintf(stderr, "%s: ", spec->prog);                                                                           \
        fprintf(stderr, __VA_ARGS__);                                                                                  \
        fputc('\n', stderr);                                                                                           \
        goto done;                                                                                                     \
    } while (0)

/* Flags, device, data, model, optional --load, kiln_fit, kiln_evaluate on the 10000 test
 * images with a confusion matrix, optional --save and --bench; the last line printed is
 * test_accuracy=0.XXXX. Returns the exit code. */
static inline int ex_classifier_main(int argc, char **argv, const ex_classifier *spec) {
    ex_opts o = spec->defaults;
    int rc = ex_parse(argc, argv, spec->prog, spec->what, EX_F_DATA | EX_F_PROGRESS | EX_F_BENCH, &o);
    if (rc >= 0) return rc;
    rc = 1;
    double t_start = ex_now_ms();
    char dev[64];
    if (o.distributed) { /* one process per device; rank 0 prints */
        if (kiln_dist_init(&argc, &argv) != KILN_OK) {
            fprintf(stderr, "%s: %s\n", spec->prog, kiln_last_error());
            return 1;
        }
        if (kiln_dist_rank() != 0 && !freopen("/dev/null", "w", stdout)) return 1;
        if (!o.device) o.device = kiln_dist_device(dev, sizeof dev);
        printf("distributed: %d ranks\n", kiln_dist_world_size());
    }

    kiln_ctx *ctx = ex_open(spec->prog, &o);
    if (!ctx) return 1;
    kiln_dist_model *dm = NULL;
    kiln_module *net = NULL;
    kiln_optim *opt = NULL;
    kiln_dataset *all = NULL, *train = NULL, *val = NULL, *test = NULL;
    kiln_loader *train_l = NULL, *val_l = NULL, *test_l = NULL;
    kiln_confusion *cm = NULL;
    kiln_epoch_stats *hist = NULL;
    char *text = NULL;

    kiln_manual_seed(ctx, o.seed);
    net = spec->build(ctx);
    if (!net) EX_FAIL("building the model: %s", kiln_error_message(ctx));
    text = malloc(1 << 16);
    if (!text) EX_FAIL("out of host memory");
    printf("model: %s\n", kiln_module_describe(net, text, 1 << 16));
    printf("parameters: %lld\n", (long long)kiln_module_num_elements(net));

    if (o.load) {
        kiln_load_report rep;
        /* non-strict so that a training checkpoint (with optimizer state) loads too; every
         * model tensor must still be there with its shape */
        if (kiln_module_load(net, o.load, false, &rep) != KILN_OK) EX_FAIL("%s", kiln_error_message(ctx));
        if (rep.missing || rep.mismatched)
            EX_FAIL("%s does not fit the model: %d missing, %d of another shape: %s", o.load, rep.missing,
                    rep.mismatched, rep.detail);
        printf("loaded %d tensors from %s%s%s\n", rep.loaded, o.load, rep.unexpected ? "; ignored: " : "",
               rep.unexpected ? rep.detail : "");
    }
    if (o.distributed && !(dm = kiln_dist_wrap(net, NULL))) EX_FAIL("%s", kiln_error_message(ctx));

    all = kiln_fashion_mnist(o.data, true);
    test = all ? kiln_fashion_mnist(o.data, false) : NULL;
    if (!all || !test) EX_FAIL("%s", kiln_last_error());
    if (o.limit > 0 && o.limit < kiln_dataset_num_samples(all)) {
        int64_t *idx = malloc(sizeof *idx * (size_t)o.limit);
        if (!idx) EX_FAIL("out of host memory");
        for (int64_t i = 0; i < o.limit; i++) idx[i] = i;
        kiln_dataset *sub = kiln_dataset_subset(all, idx, o.limit);
        free(idx);
        if (!sub) EX_FAIL("%s", kiln_last_error());
        kiln_dataset_free(all);
        all = sub;
    }
    if (o.val > 0) {
        if (kiln_dataset_split(all, o.val, o.seed, &train, &val) != KILN_OK) EX_FAIL("%s", kiln_last_error());
    } else {
        train = all;
        all = NULL;
    }
    printf("data: %lld training, %lld validation, %lld test images\n", (long long)kiln_dataset_num_samples(train),
           (long long)kiln_dataset_num_samples(val), (long long)kiln_dataset_num_samples(test));

    /* inputs x/255, normalised only where the PyTorch reference recipe does it */
    kiln_loader_opts lo = kiln_loader_defaults();
    lo.batch_size = o.batch;
    lo.shuffle = true;
    lo.seed = o.seed;
    lo.scale = 1.0f / 255;
    static const float mean[] = {KILN_FASHION_MNIST_MEAN}, std[] = {KILN_FASHION_MNIST_STD};
    if (spec->normalize) lo.norm_count = 1, lo.mean = mean, lo.std = std;
    if (o.distributed) lo.shard_rank = kiln_dist_rank(), lo.shard_count = kiln_dist_world_size();
    train_l = kiln_loader_new(ctx, train, &lo);
    lo.shard_rank = 0, lo.shard_count = 1; /* every rank evaluates the whole sets */
    lo.batch_size = o.eval_batch;
    lo.shuffle = false;
    test_l = kiln_loader_new(ctx, test, &lo);
    if (val) val_l = kiln_loader_new(ctx, val, &lo);
    if (!train_l || !test_l || (val && !val_l)) EX_FAIL("%s", kiln_error_message(ctx));
    opt = ex_optimizer(ctx, net, &o);
    if (!opt) EX_FAIL("%s", kiln_error_message(ctx));
    printf("optimizer: %s lr=%g%s, batch %lld, %d epochs\n", kiln_optim_kind(opt), o.lr,
           strcmp(o.optimizer, "sgd") ? "" : (o.momentum > 0 ? " momentum" : ""), (long long)o.batch, o.epochs);
    fflush(stdout);

    if (o.epochs > 0) {
        hist = calloc((size_t)o.epochs, sizeof *hist);
        if (!hist) EX_FAIL("out of host memory");
        if (o.metrics) remove(o.metrics); /* kiln_fit appends: start a fresh log */
        kiln_fit_opts fo = kiln_fit_defaults();
        fo.epochs = o.epochs;
        fo.train = train_l;
        fo.val = o.test_each_epoch ? test_l : val_l;
        fo.opt = opt;
        fo.progress = o.progress;
        fo.metrics_csv = o.metrics;
        fo.plot_path = o.plot;
        fo.history = hist;
        fo.history_cap = o.epochs;
        fo.dist = dm;
        fo.amp = spec->amp;
        kiln_fit_result r;
        double t0 = ex_now_ms();
        if (kiln_fit(net, &fo, &r) != KILN_OK) EX_FAIL("training: %s", kiln_error_message(ctx));
        double secs = (ex_now_ms() - t0) / 1e3;
        for (int e = 0; e < r.epochs_run && e < o.epochs; e++) {
            const kiln_epoch_stats *s = &hist[e];
            printf("epoch %d: train loss %.4f accuracy %.4f", s->epoch, s->train_loss, s->train_accuracy);
            if (!isnan(s->val_accuracy))
                printf(", %s loss %.4f accuracy %.4f", o.test_each_epoch ? "test" : "val", s->val_loss,
                       s->val_accuracy);
            printf(", %.1f s, %.0f samples/s\n", s->seconds, s->samples_per_second);
        }
        int64_t steps = (int64_t)r.epochs_run * kiln_loader_num_batches(train_l);
        printf("trained %d epochs in %.1f s (%.1f ms per step, mean)\n", r.epochs_run, secs,
               steps ? secs * 1e3 / (double)steps : 0.0);
        if (o.plot) printf("training curves: %s\n", o.plot);
        if (o.metrics) printf("metrics: %s\n", o.metrics);
    }

    cm = kiln_confusion_new(10);
    if (!cm) EX_FAIL("%s", kiln_last_error());
    double test_loss, test_acc;
    double t0 = ex_now_ms();
    if (kiln_evaluate(net, test_l, NULL, NULL, cm, &test_loss, &test_acc) != KILN_OK)
        EX_FAIL("evaluating: %s", kiln_error_message(ctx));
    const char *names[10];
    for (int c = 0; c < 10; c++) names[c] = kiln_fashion_mnist_class_name(c);
    printf("\ntest set (%lld images, %.1f s): loss %.4f\n%s\n", (long long)kiln_confusion_total(cm),
           (ex_now_ms() - t0) / 1e3, test_loss, kiln_confusion_format(cm, names, text, 1 << 16));

    if (o.save && kiln_dist_rank() == 0) {
        char desc[256];
        snprintf(desc, sizeof desc, "%s, %d epochs, %s lr=%g, test_accuracy=%.4f", spec->prog, o.epochs, o.optimizer,
                 o.lr, test_acc);
        if (kiln_module_save(net, o.save, desc) != KILN_OK) EX_FAIL("saving: %s", kiln_error_message(ctx));
        printf("saved the model to %s\n", o.save);
    }
    if (o.bench > 0 && !o.distributed) {
        double ms = ex_bench_steps(net, opt, train_l, o.bench);
        if (isnan(ms)) EX_FAIL("timing steps: %s", kiln_error_message(ctx));
        printf("step_ms=%.2f (median of %d training steps, batch %lld, %s)\n", ms, o.bench, (long long)o.batch,
               kiln_optim_kind(opt));
    }
    printf("wall time %.1f s\n", (ex_now_ms() - t_start) / 1e3);
    printf("test_accuracy=%.4f\n", test_acc);
    rc = 0;
done:
    free(text);
    free(hist);
    kiln_confusion_free(cm);
    kiln_loader_free(train_l);
    kiln_loader_free(val_l);
    kiln_loader_free(test_l);
    kiln_optim_free(opt);
    kiln_dist_model_free(dm);
    kiln_module_free(net);
    kiln_dataset_free(all);
    kiln_dataset_free(train);
    kiln_dataset_free(val);
    kiln_dataset_free(test);
    kiln_close(ctx);
    if (o.distributed) kiln_dist_finalize();
    return rc;
}

#undef EX_FAIL
#endif
