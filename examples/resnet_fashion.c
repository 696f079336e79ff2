/* examples/resnet_fashion.c - ResNet-20 on Fashion-MNIST with the usual recipe for residual
 * networks: He et al.'s CIFAR ResNet-20 (kiln_resnet_cifar, one input channel, 272,186
 * parameters), batch 128, SGD with Nesterov momentum 0.9 and lr 0.1, weight decay 5e-4 on
 * convolution and linear weights only (kiln_params_split_decay: batch-norm parameters and
 * biases in a second parameter group without decay), a linear warm-up per step over the
 * first epoch (factor 1e-3 to 1) then cosine per step to 0 (kiln_sequential_lr stepped by
 * kiln_fit after every step), random crop with 2 pixels of zero padding and horizontal flip,
 * cross-entropy with label smoothing 0.1, inputs (x/255 - 0.2860) / 0.3530, evaluation with
 * batch norm in eval mode. tools/resnet_fashion_torch.py is the same recipe in PyTorch.
 *
 *   build/examples/resnet_fashion [--epochs 15] [--test-each-epoch] [--limit N] ...
 *   build/examples/resnet_fashion --load model.safetensors --epochs 0    # evaluate only
 *
 * The flags are the classifiers' (cnn_fashion); --optimizer adam uses Adam with the same
 * groups (decay as L2, as Adam's weight_decay). The last line printed is
 * "test_accuracy=0.XXXX". KILN_EXAMPLE_TINY: ResNet-8 (one block per stage), for tests.
 */
#include "common.h"

#include <kiln/models.h>

#define WEIGHT_DECAY 5e-4
#define LABEL_SMOOTHING 0.1f
#define WARMUP_START 1e-3 /* the warm-up's first lr factor */
#define MAX_PARAMS 512

#define FAIL(...)                                                                                                      \
    do {                                                                                                               \
        fprintf(stderr, "resnet_fashion: ");                                                                           \
        fprintf(stderr, __VA_ARGS__);                                                                                  \
        fputc('\n', stderr);                                                                                           \
        goto done;                                                                                                     \
    } while (0)

static kiln_tensor *smoothed_ce(kiln_ctx *ctx, kiln_tensor *out, kiln_tensor *y, void *user) {
    (void)user;
    return kiln_cross_entropy_ex(ctx, out, y, NULL, -100, LABEL_SMOOTHING, KILN_MEAN);
}

/* SGD (Nesterov) or Adam over two groups: decay for weights of 2+ dims, none for the rest. */
static kiln_optim *recipe_optimizer(kiln_ctx *ctx, kiln_module *net, const ex_opts *o, int *nd, int *nn) {
    kiln_tensor *ps[MAX_PARAMS], *dec[MAX_PARAMS], *nodec[MAX_PARAMS];
    int n = kiln_module_parameters(net, ps, MAX_PARAMS);
    if (n > MAX_PARAMS || kiln_params_split_decay(n, ps, dec, nd, nodec, nn) != KILN_OK) return NULL;
    kiln_optim *opt;
    kiln_status s;
    if (!strcmp(o->optimizer, "sgd")) {
        kiln_sgd_opts so = kiln_sgd_defaults();
        so.lr = o->lr;
        so.momentum = o->momentum;
        so.nesterov = o->momentum > 0;
        so.weight_decay = WEIGHT_DECAY;
        opt = kiln_sgd(ctx, dec, *nd, &so);
        so.weight_decay = 0;
        s = opt ? kiln_optim_add_sgd_group(opt, nodec, *nn, &so) : KILN_ERR_NULL;
    } else {
        kiln_adam_opts ao = kiln_adam_defaults();
        ao.lr = o->lr;
        ao.weight_decay = WEIGHT_DECAY;
        opt = kiln_adam(ctx, dec, *nd, &ao);
        ao.weight_decay = 0;
        s = opt ? kiln_optim_add_adam_group(opt, nodec, *nn, &ao) : KILN_ERR_NULL;
    }
    if (s != KILN_OK) {
        kiln_optim_free(opt);
        return NULL;
    }
    return opt;
}

/* The warm-up's steps: the first epoch's (at most all steps but one). */
static int64_t warmup_steps(int64_t steps_per_epoch, int epochs) {
    int64_t total = steps_per_epoch * epochs;
    return total < 2 ? 0 : steps_per_epoch < total - 1 ? steps_per_epoch : total - 1;
}

/* Linear warm-up over the first epoch's steps, then cosine to 0 over the rest (per step). */
static kiln_lr_sched *recipe_schedule(kiln_optim *opt, int64_t steps_per_epoch, int epochs) {
    int64_t total = steps_per_epoch * epochs;
    if (total < 2 || total > 1 << 30) return kiln_exponential_lr(opt, 1.0); /* nothing to schedule */
    int warm = (int)warmup_steps(steps_per_epoch, epochs);
    kiln_lr_sched *ph[2] = {kiln_linear_lr(opt, WARMUP_START, 1.0, warm),
                            kiln_cosine_annealing_lr(opt, (int)total - warm, 0.0)};
    return kiln_sequential_lr(opt, ph, 2, (int[]){warm});
}

int main(int argc, char **argv) {
    ex_opts o = {.epochs = 15,
                 .batch = 128,
                 .lr = 0.1,
                 .momentum = 0.9,
                 .optimizer = "sgd",
                 .seed = 1,
                 .progress = true,
                 .eval_batch = 500};
    int rc = ex_parse(argc, argv, "resnet_fashion",
                      "trains ResNet-20 on Fashion-MNIST with the residual-network recipe and evaluates it",
                      EX_F_DATA | EX_F_PROGRESS | EX_F_BENCH, &o);
    if (rc >= 0) return rc;
    rc = 1;
    double t_start = ex_now_ms();
    kiln_ctx *ctx = ex_open("resnet_fashion", &o);
    if (!ctx) return 1;
    kiln_module *net = NULL;
    kiln_optim *opt = NULL;
    kiln_lr_sched *sched = NULL;
    kiln_dataset *all = NULL, *train = NULL, *val = NULL, *test = NULL;
    kiln_loader *train_l = NULL, *val_l = NULL, *test_l = NULL;
    kiln_confusion *cm = NULL;
    kiln_epoch_stats *hist = NULL;
    char *text = malloc(1 << 16);
    if (!text) FAIL("out of host memory");

    kiln_manual_seed(ctx, o.seed);
    kiln_resnet_opts ro = kiln_resnet_cifar_defaults();
    ro.in_channels = 1;
    ro.num_classes = 10;
    int depth = ex_tiny() ? 8 : 20;
    net = kiln_resnet_cifar(ctx, depth, &ro);
    if (!net) FAIL("building ResNet-%d: %s", depth, kiln_error_message(ctx));
    printf("model: ResNet-%d (kiln_resnet_cifar), %lld parameters\n", depth, (long long)kiln_module_num_elements(net));
    if (o.load) {
        kiln_load_report rep;
        if (kiln_module_load(net, o.load, false, &rep) != KILN_OK) FAIL("%s", kiln_error_message(ctx));
        if (rep.missing || rep.mismatched)
            FAIL("%s does not fit the model: %d missing, %d of another shape: %s", o.load, rep.missing, rep.mismatched,
                 rep.detail);
        printf("loaded %d tensors from %s%s%s\n", rep.loaded, o.load, rep.unexpected ? "; ignored: " : "",
               rep.unexpected ? rep.detail : "");
    }

    all = kiln_fashion_mnist(o.data, true);
    test = all ? kiln_fashion_mnist(o.data, false) : NULL;
    if (!all || !test) FAIL("%s", kiln_last_error());
    if (o.limit > 0 && o.limit < kiln_dataset_num_samples(all)) {
        int64_t *idx = malloc(sizeof *idx * (size_t)o.limit);
        if (!idx) FAIL("out of host memory");
        for (int64_t i = 0; i < o.limit; i++) idx[i] = i;
        kiln_dataset *sub = kiln_dataset_subset(all, idx, o.limit);
        free(idx);
        if (!sub) FAIL("%s", kiln_last_error());
        kiln_dataset_free(all);
        all = sub;
    }
    if (o.val > 0) {
        if (kiln_dataset_split(all, o.val, o.seed, &train, &val) != KILN_OK) FAIL("%s", kiln_last_error());
    } else {
        train = all;
        all = NULL;
    }
    printf("data: %lld training, %lld validation, %lld test images\n", (long long)kiln_dataset_num_samples(train),
           (long long)kiln_dataset_num_samples(val), (long long)kiln_dataset_num_samples(test));

    kiln_loader_opts lo = kiln_loader_defaults();
    lo.batch_size = o.batch;
    lo.shuffle = true;
    lo.seed = o.seed;
    lo.scale = 1.0f / 255;
    lo.norm_count = 1;
    lo.mean = (float[]){KILN_FASHION_MNIST_MEAN};
    lo.std = (float[]){KILN_FASHION_MNIST_STD};
    lo.crop_padding = 2;
    lo.hflip = true;
    train_l = kiln_loader_new(ctx, train, &lo);
    lo.batch_size = o.eval_batch;
    lo.shuffle = false;
    lo.crop_padding = 0;
    lo.hflip = false;
    test_l = kiln_loader_new(ctx, test, &lo);
    if (val) val_l = kiln_loader_new(ctx, val, &lo);
    if (!train_l || !test_l || (val && !val_l)) FAIL("%s", kiln_error_message(ctx));
    int nd = 0, nn = 0;
    opt = recipe_optimizer(ctx, net, &o, &nd, &nn);
    if (!opt) FAIL("optimizer: %s", kiln_error_message(ctx));
    int64_t nbat = kiln_loader_num_batches(train_l);
    printf("optimizer: %s%s lr=%g, weight decay %g on %d tensors (none on %d), batch %lld, %d epochs; "
           "warm-up %lld steps then cosine; label smoothing %g; crop 2 + flip\n",
           kiln_optim_kind(opt), strcmp(o.optimizer, "sgd") || o.momentum == 0 ? "" : " nesterov", o.lr, WEIGHT_DECAY,
           nd, nn, (long long)o.batch, o.epochs, (long long)warmup_steps(nbat, o.epochs), (double)LABEL_SMOOTHING);
    fflush(stdout);

    if (o.epochs > 0) {
        sched = recipe_schedule(opt, nbat, o.epochs);
        if (!sched) FAIL("schedule: %s", kiln_error_message(ctx));
        hist = calloc((size_t)o.epochs, sizeof *hist);
        if (!hist) FAIL("out of host memory");
        if (o.metrics) remove(o.metrics);
        kiln_fit_opts fo = kiln_fit_defaults();
        fo.epochs = o.epochs;
        fo.train = train_l;
        fo.val = o.test_each_epoch ? test_l : val_l;
        fo.opt = opt;
        fo.sched = sched;
        fo.sched_per_step = true;
        fo.loss = smoothed_ce;
        fo.progress = o.progress;
        fo.metrics_csv = o.metrics;
        fo.plot_path = o.plot;
        fo.history = hist;
        fo.history_cap = o.epochs;
        kiln_fit_result r;
        double t0 = ex_now_ms();
        if (kiln_fit(net, &fo, &r) != KILN_OK) FAIL("training: %s", kiln_error_message(ctx));
        double secs = (ex_now_ms() - t0) / 1e3;
        printf("%5s %10s %9s %9s %8s\n", "epoch", "train_loss", o.test_each_epoch ? "test_acc" : "val_acc", "lr",
               "seconds");
        for (int e = 0; e < r.epochs_run && e < o.epochs; e++)
            printf("%5d %10.4f %9.4f %9.5f %8.1f\n", hist[e].epoch, hist[e].train_loss, hist[e].val_accuracy,
                   hist[e].lr, hist[e].seconds);
        printf("trained %d epochs in %.1f s (%.1f ms per step, mean%s)\n", r.epochs_run, secs,
               secs * 1e3 / (double)(nbat * r.epochs_run), fo.val ? ", the per-epoch evaluation included" : "");
    }

    cm = kiln_confusion_new(10);
    if (!cm) FAIL("%s", kiln_last_error());
    double test_loss, test_acc;
    if (kiln_evaluate(net, test_l, NULL, NULL, cm, &test_loss, &test_acc) != KILN_OK)
        FAIL("evaluating: %s", kiln_error_message(ctx));
    const char *names[10];
    for (int c = 0; c < 10; c++) names[c] = kiln_fashion_mnist_class_name(c);
    printf("\ntest set (%lld images): loss %.4f\n%s\n", (long long)kiln_confusion_total(cm), test_loss,
           kiln_confusion_format(cm, names, text, 1 << 16));
    if (o.save) {
        char desc[256];
        snprintf(desc, sizeof desc, "resnet_fashion, ResNet-%d, %d epochs, test_accuracy=%.4f", depth, o.epochs,
                 test_acc);
        if (kiln_module_save(net, o.save, desc) != KILN_OK) FAIL("saving: %s", kiln_error_message(ctx));
        printf("saved the model to %s\n", o.save);
    }
    if (o.bench > 0) {
        double ms = ex_bench_steps(net, opt, train_l, o.bench);
        if (isnan(ms)) FAIL("timing steps: %s", kiln_error_message(ctx));
        printf("step_ms=%.2f (median of %d training steps, batch %lld)\n", ms, o.bench, (long long)o.batch);
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
    kiln_lr_sched_free(sched);
    kiln_optim_free(opt);
    kiln_module_free(net);
    kiln_dataset_free(all);
    kiln_dataset_free(train);
    kiln_dataset_free(val);
    kiln_dataset_free(test);
    kiln_close(ctx);
    return rc;
}
