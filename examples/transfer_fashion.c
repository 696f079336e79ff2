/* examples/transfer_fashion.c - transfer learning on Fashion-MNIST: pretrain, save, load the
 * backbone into a new network with another head, freeze, fine-tune; compared with the same
 * network trained from scratch on the same small subset with the same budget.
 *
 *   1. pretrain ResNet-20 (kiln_resnet_cifar, 1 channel, 5 classes) on the training images of
 *      classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat) with resnet_fashion's recipe
 *      (Nesterov SGD, weight decay off batch norm and biases, per-step warm-up and cosine,
 *      crop + flip, label smoothing) and save it (kiln_module_save);
 *   2. build a new ResNet-20 for classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) whose
 *      classifier is called "head" (the pretrained one's is "fc"), load the file non-strictly:
 *      the backbone's tensors load, "head.*" is reported missing and "fc.*" unexpected;
 *   3. freeze the backbone (kiln_module_set_requires_grad) with its batch norm in eval mode
 *      (kiln_fit's eval_modules: its running statistics are kept) and train the head on a
 *      small labelled subset of classes 5-9 (--subset, 500 images), cosine per step;
 *   4. optionally (--unfreeze-epochs) unfreeze everything and train on with a lower lr
 *      (--unfreeze-lr, half the head's by default; cosine per step), the whole model in train
 *      mode;
 *   5. train a fresh ResNet-20 on the same subset for the same number of epochs (head epochs +
 *      unfreeze epochs), everything trainable, with the recipe's schedule;
 *   6. print the test accuracy on classes 5-9 (5000 images) of both.
 *
 *   build/examples/transfer_fashion [--pretrain-epochs 3] [--epochs 10] [--unfreeze-epochs 8]
 *       [--unfreeze-lr 0.05] [--subset 500] [--pretrain-limit N] [--test-limit N] [--save PATH]
 *       [--pretrained PATH] [--seed N] ...
 *
 * The defaults for the subset (2 epochs head only, 8 unfrozen at half the lr) are the best of
 * four splits tried on a backbone pretrained 2 epochs on 15000 images (README).
 *
 * The last lines printed are "finetuned_accuracy=0.XXXX" and "scratch_accuracy=0.XXXX".
 * KILN_EXAMPLE_TINY: ResNet-8, for tests.
 */
#include "common.h"

#include <kiln/models.h>

#define WEIGHT_DECAY 5e-4
#define LABEL_SMOOTHING 0.1f
#define MAX_PARAMS 512

typedef struct tf_opts {
    int pretrain_epochs, epochs, unfreeze_epochs;
    int64_t subset, pretrain_limit, test_limit, batch, pretrain_batch;
    double lr, finetune_lr, unfreeze_lr; /* unfreeze_lr NaN: finetune_lr / 2 */
    uint64_t seed;
    const char *device, *data, *save, *pretrained;
    bool progress;
} tf_opts;

static void usage(FILE *f, const tf_opts *d) {
    fprintf(f, "usage: transfer_fashion [options]\n"
               "pretrains ResNet-20 on Fashion-MNIST classes 0-4, fine-tunes it on a small subset of classes\n"
               "5-9 and compares it with the same network trained from scratch on that subset\n\n");
    fprintf(f, "  --pretrain-epochs N  epochs of pretraining on classes 0-4 [%d]\n", d->pretrain_epochs);
    fprintf(f, "  --pretrain-limit N   pretrain on the first N images of classes 0-4 [all]\n");
    fprintf(f, "  --pretrain-batch N   pretraining batch size [%lld]\n", (long long)d->pretrain_batch);
    fprintf(f, "  --lr X               pretraining and from-scratch learning rate [%g]\n", d->lr);
    fprintf(f, "  --subset N           labelled images of classes 5-9 for fine-tuning and scratch [%lld]\n",
            (long long)d->subset);
    fprintf(f, "  --epochs N           budget on the subset, in epochs, for both networks [%d]\n", d->epochs);
    fprintf(f,
            "  --unfreeze-epochs N  the last N of them train the whole fine-tuned network (0: the head\n"
            "                       only) [%d]\n",
            d->unfreeze_epochs);
    fprintf(f, "  --unfreeze-lr X      their learning rate, cosine per step [half --finetune-lr]\n");
    fprintf(f, "  --pretrained PATH    skip the pretraining: use this checkpoint of an earlier run\n");
    fprintf(f, "  --finetune-lr X      the head's learning rate [%g]\n", d->finetune_lr);
    fprintf(f, "  --batch N            batch size on the subset [%lld]\n", (long long)d->batch);
    fprintf(f, "  --test-limit N       evaluate on the first N test images of each class group [all]\n");
    fprintf(f, "  --save PATH          the pretrained checkpoint [%s]\n", d->save);
    fprintf(f, "  --seed N             random seed [%llu]\n", (unsigned long long)d->seed);
    fprintf(f, "  --device SPEC        gpu, cpu, P:D or part of a device name [$KILN_DEVICE]\n");
    fprintf(f, "  --data DIR           Fashion-MNIST IDX files [%s]\n", KILN_FASHION_MNIST_DIR);
    fprintf(f, "  --no-progress        no progress on stderr\n");
}

/* -1: go on; else the exit code. */
static int parse(int argc, char **argv, tf_opts *o) {
    const tf_opts d = *o;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout, &d);
            return 0;
        }
        if (!strcmp(a, "--no-progress")) {
            o->progress = false;
            continue;
        }
        if (i + 1 >= argc) goto bad;
        const char *v = argv[++i];
        int64_t n;
        bool ok = true;
        if (!strcmp(a, "--pretrain-epochs") && (ok = ex_parse_i64(v, 0, 1000, &n)))
            o->pretrain_epochs = (int)n;
        else if (!strcmp(a, "--epochs") && (ok = ex_parse_i64(v, 1, 100000, &n)))
            o->epochs = (int)n;
        else if (!strcmp(a, "--unfreeze-epochs") && (ok = ex_parse_i64(v, 0, 100000, &n)))
            o->unfreeze_epochs = (int)n;
        else if (!strcmp(a, "--subset"))
            ok = ex_parse_i64(v, 1, INT64_MAX, &o->subset);
        else if (!strcmp(a, "--pretrain-limit"))
            ok = ex_parse_i64(v, 1, INT64_MAX, &o->pretrain_limit);
        else if (!strcmp(a, "--test-limit"))
            ok = ex_parse_i64(v, 1, INT64_MAX, &o->test_limit);
        else if (!strcmp(a, "--batch"))
            ok = ex_parse_i64(v, 1, 1 << 20, &o->batch);
        else if (!strcmp(a, "--pretrain-batch"))
            ok = ex_parse_i64(v, 1, 1 << 20, &o->pretrain_batch);
        else if (!strcmp(a, "--lr"))
            ok = ex_parse_f64(v, 0, 1e6, &o->lr);
        else if (!strcmp(a, "--finetune-lr"))
            ok = ex_parse_f64(v, 0, 1e6, &o->finetune_lr);
        else if (!strcmp(a, "--unfreeze-lr"))
            ok = ex_parse_f64(v, 0, 1e6, &o->unfreeze_lr);
        else if (!strcmp(a, "--pretrained"))
            o->pretrained = v;
        else if (!strcmp(a, "--seed") && (ok = ex_parse_i64(v, 0, INT64_MAX, &n)))
            o->seed = (uint64_t)n;
        else if (!strcmp(a, "--device"))
            o->device = v;
        else if (!strcmp(a, "--data"))
            o->data = v;
        else if (!strcmp(a, "--save"))
            o->save = v;
        else if (ok) {
            fprintf(stderr, "transfer_fashion: unknown option %s\n", a);
            goto bad;
        }
        if (!ok) {
            fprintf(stderr, "transfer_fashion: invalid value '%s' for %s\n", v, a);
            goto bad;
        }
    }
    if (o->unfreeze_epochs > o->epochs) {
        fprintf(stderr, "transfer_fashion: --unfreeze-epochs %d is more than --epochs %d\n", o->unfreeze_epochs,
                o->epochs);
        goto bad;
    }
    if (isnan(o->unfreeze_lr)) o->unfreeze_lr = o->finetune_lr / 2;
    return -1;
bad:
    fprintf(stderr, "usage: transfer_fashion [options]  (transfer_fashion --help lists them)\n");
    return 2;
}

/* The images of ds whose label is in [lo, lo + 5), at most limit (0: all) of them, in order,
 * labelled 0-4 (label - lo). NULL with kiln_last_error() set on failure. */
static kiln_dataset *classes(const kiln_dataset *ds, int lo, int64_t limit) {
    int64_t n = kiln_dataset_num_samples(ds), k = 0, numel = kiln_dataset_sample_numel(ds);
    const int64_t *shape;
    int nd = kiln_dataset_shape(ds, &shape);
    int64_t cap = limit > 0 && limit < n ? limit : n;
    float *x = malloc(sizeof *x * (size_t)(cap * numel));
    int32_t *y = malloc(sizeof *y * (size_t)cap);
    kiln_dataset *out = NULL;
    if (x && y) {
        for (int64_t i = 0; i < n && k < cap; i++) {
            int32_t label;
            if (kiln_dataset_get(ds, i, x + k * numel, (size_t)numel, &label) != KILN_OK) goto done;
            if (label >= lo && label < lo + 5) y[k++] = label - lo;
        }
        out = kiln_dataset_from_host(x, y, k, nd, shape, 5);
    }
done:
    free(x);
    free(y);
    return out;
}

static kiln_tensor *smoothed_ce(kiln_ctx *ctx, kiln_tensor *out, kiln_tensor *y, void *user) {
    (void)user;
    return kiln_cross_entropy_ex(ctx, out, y, NULL, -100, LABEL_SMOOTHING, KILN_MEAN);
}

/* Nesterov SGD over m's parameters in two groups (decay on weights of 2+ dims only), lr. */
static kiln_optim *recipe_sgd(kiln_ctx *ctx, kiln_module *m, double lr) {
    kiln_tensor *ps[MAX_PARAMS], *dec[MAX_PARAMS], *nodec[MAX_PARAMS];
    int n = kiln_module_parameters(m, ps, MAX_PARAMS), nd, nn;
    if (n > MAX_PARAMS || kiln_params_split_decay(n, ps, dec, &nd, nodec, &nn) != KILN_OK) return NULL;
    kiln_sgd_opts so = kiln_sgd_defaults();
    so.lr = lr;
    so.momentum = 0.9;
    so.nesterov = true;
    so.weight_decay = WEIGHT_DECAY;
    kiln_optim *opt = kiln_sgd(ctx, dec, nd, &so);
    so.weight_decay = 0;
    if (opt && kiln_optim_add_sgd_group(opt, nodec, nn, &so) != KILN_OK) {
        kiln_optim_free(opt);
        return NULL;
    }
    return opt;
}

/* Warm-up over the first epoch (at most a fifth of the run) then cosine to 0, per step; with
 * warm false, cosine alone. */
static kiln_lr_sched *recipe_schedule(kiln_optim *opt, int64_t per_epoch, int epochs, bool warm) {
    int64_t total = per_epoch * epochs, w = per_epoch < total / 5 ? per_epoch : total / 5;
    if (total < 2) return kiln_exponential_lr(opt, 1.0);
    if (!warm || w < 1) return kiln_cosine_annealing_lr(opt, (int)total, 0.0);
    kiln_lr_sched *ph[2] = {kiln_linear_lr(opt, 1e-3, 1.0, (int)w), kiln_cosine_annealing_lr(opt, (int)(total - w), 0)};
    return kiln_sequential_lr(opt, ph, 2, (int[]){(int)w});
}

/* kiln_fit for epochs over l; eval (n of them) stay in eval mode. */
static kiln_status train(kiln_module *m, kiln_loader *l, kiln_optim *opt, kiln_lr_sched *sched, int epochs,
                         kiln_module *const *eval, int n, bool progress) {
    kiln_fit_opts fo = kiln_fit_defaults();
    fo.epochs = epochs;
    fo.train = l;
    fo.opt = opt;
    fo.sched = sched;
    fo.sched_per_step = sched != NULL;
    fo.loss = smoothed_ce;
    fo.progress = progress;
    fo.eval_modules = eval;
    fo.num_eval_modules = n;
    kiln_fit_result r;
    kiln_status s = kiln_fit(m, &fo, &r);
    if (s == KILN_OK)
        printf("  %d epochs: last train loss %.4f accuracy %.4f, %.1f s per epoch\n", r.epochs_run, r.last.train_loss,
               r.last.train_accuracy, r.last.seconds);
    return s;
}

#define FAIL(...)                                                                                                      \
    do {                                                                                                               \
        fprintf(stderr, "transfer_fashion: ");                                                                         \
        fprintf(stderr, __VA_ARGS__);                                                                                  \
        fputc('\n', stderr);                                                                                           \
        goto done;                                                                                                     \
    } while (0)

int main(int argc, char **argv) {
    tf_opts o = {.pretrain_epochs = 3,
                 .epochs = 10,
                 .unfreeze_epochs = 8,
                 .subset = 500,
                 .batch = 50,
                 .pretrain_batch = 128,
                 .lr = 0.1,
                 .finetune_lr = 0.1,
                 .unfreeze_lr = NAN,
                 .seed = 1,
                 .save = "transfer_pretrained.safetensors",
                 .progress = true};
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    rc = 1;
    double t_start = ex_now_ms();
    ex_opts eo = {.device = o.device};
    kiln_ctx *ctx = ex_open("transfer_fashion", &eo);
    if (!ctx) return 1;
    kiln_dataset *train_all = NULL, *test_all = NULL, *pre_tr = NULL, *pre_te = NULL, *new_tr = NULL, *new_te = NULL;
    kiln_loader *pre_l = NULL, *pre_te_l = NULL, *new_l = NULL, *new_te_l = NULL;
    kiln_module *pre = NULL, *ft = NULL, *sc = NULL;
    kiln_optim *opt = NULL;
    kiln_lr_sched *sched = NULL;
    int depth = ex_tiny() ? 8 : 20;
    kiln_resnet_opts ro = kiln_resnet_cifar_defaults();
    ro.in_channels = 1;
    ro.num_classes = 5;

    train_all = kiln_fashion_mnist(o.data, true);
    test_all = train_all ? kiln_fashion_mnist(o.data, false) : NULL;
    if (!test_all) FAIL("%s", kiln_last_error());
    pre_tr = classes(train_all, 0, o.pretrain_limit);
    pre_te = pre_tr ? classes(test_all, 0, o.test_limit) : NULL;
    new_tr = pre_te ? classes(train_all, 5, o.subset) : NULL;
    new_te = new_tr ? classes(test_all, 5, o.test_limit) : NULL;
    if (!new_te) FAIL("%s", kiln_last_error());
    printf("data: pretraining %lld images of classes 0-4 (test %lld); fine-tuning %lld images of classes 5-9 "
           "(test %lld)\n",
           (long long)kiln_dataset_num_samples(pre_tr), (long long)kiln_dataset_num_samples(pre_te),
           (long long)kiln_dataset_num_samples(new_tr), (long long)kiln_dataset_num_samples(new_te));

    kiln_loader_opts lo = kiln_loader_defaults();
    lo.shuffle = true;
    lo.seed = o.seed;
    lo.scale = 1.0f / 255;
    lo.norm_count = 1;
    lo.mean = (float[]){KILN_FASHION_MNIST_MEAN};
    lo.std = (float[]){KILN_FASHION_MNIST_STD};
    lo.crop_padding = 2;
    lo.hflip = true;
    lo.batch_size = o.pretrain_batch;
    pre_l = kiln_loader_new(ctx, pre_tr, &lo);
    lo.batch_size = o.batch;
    new_l = kiln_loader_new(ctx, new_tr, &lo);
    kiln_loader_opts te = lo;
    te.shuffle = false;
    te.crop_padding = 0;
    te.hflip = false;
    te.batch_size = 500;
    pre_te_l = kiln_loader_new(ctx, pre_te, &te);
    new_te_l = kiln_loader_new(ctx, new_te, &te);
    if (!pre_l || !new_l || !pre_te_l || !new_te_l) FAIL("%s", kiln_error_message(ctx));

    /* 1. pretraining on classes 0-4 (or an earlier run's checkpoint) */
    double acc;
    kiln_manual_seed(ctx, o.seed);
    pre = kiln_resnet_cifar(ctx, depth, &ro);
    if (!pre) FAIL("ResNet-%d: %s", depth, kiln_error_message(ctx));
    const char *ckpt = o.pretrained ? o.pretrained : o.save;
    if (o.pretrained) {
        if (kiln_module_load(pre, o.pretrained, true, NULL) != KILN_OK) FAIL("%s", kiln_error_message(ctx));
        printf("\n1. pretrained ResNet-%d loaded from %s\n", depth, o.pretrained);
    } else {
        printf("\n1. pretraining ResNet-%d (%lld parameters) on classes 0-4, %d epochs\n", depth,
               (long long)kiln_module_num_elements(pre), o.pretrain_epochs);
        if (o.pretrain_epochs > 0) {
            opt = recipe_sgd(ctx, pre, o.lr);
            sched = opt ? recipe_schedule(opt, kiln_loader_num_batches(pre_l), o.pretrain_epochs, true) : NULL;
            if (!sched || train(pre, pre_l, opt, sched, o.pretrain_epochs, NULL, 0, o.progress) != KILN_OK)
                FAIL("pretraining: %s", kiln_error_message(ctx));
            kiln_lr_sched_free(sched);
            kiln_optim_free(opt);
            sched = NULL;
            opt = NULL;
        }
    }
    if (kiln_evaluate(pre, pre_te_l, NULL, NULL, NULL, NULL, &acc) != KILN_OK)
        FAIL("evaluating: %s", kiln_error_message(ctx));
    printf("pretrained_accuracy=%.4f (test images of classes 0-4)\n", acc);
    if (!o.pretrained) {
        if (kiln_module_save(pre, o.save, "transfer_fashion: pretrained on classes 0-4") != KILN_OK)
            FAIL("saving: %s", kiln_error_message(ctx));
        printf("saved %s\n", o.save);
    }

    /* 2. the new network: another head ("head", 5 classes 5-9), the backbone from the file */
    ft = kiln_resnet_cifar(ctx, depth, &ro);
    if (!ft) FAIL("ResNet-%d: %s", depth, kiln_error_message(ctx));
    int nch = kiln_module_num_children(ft), head_i = -1;
    for (int i = 0; i < nch; i++)
        if (!strcmp(kiln_module_child_name(ft, i), "fc")) head_i = i;
    if (head_i < 0 || kiln_module_set_child_name(ft, head_i, "head") != KILN_OK)
        FAIL("no fc child to rename: %s", kiln_error_message(ctx));
    kiln_load_report rep;
    if (kiln_module_load(ft, ckpt, false, &rep) != KILN_OK) FAIL("loading: %s", kiln_error_message(ctx));
    printf("\n2. non-strict load into the new network: %d tensors loaded, %d missing, %d unexpected, %d of another "
           "shape: %s\n",
           rep.loaded, rep.missing, rep.unexpected, rep.mismatched, rep.detail);
    printf("load_loaded=%d\nload_missing=%d\nload_unexpected=%d\n", rep.loaded, rep.missing, rep.unexpected);
    if (rep.mismatched || rep.missing != 2 || rep.unexpected != 2)
        FAIL("expected only head.weight, head.bias missing and fc.weight, fc.bias unexpected");

    /* 3. frozen backbone (batch norm in eval mode), the head trained */
    kiln_module *backbone[16];
    int nb = 0;
    for (int i = 0; i < nch && nb < 16; i++)
        if (i != head_i) backbone[nb++] = kiln_module_child(ft, i);
    for (int i = 0; i < nb; i++) kiln_module_set_requires_grad(backbone[i], false);
    int head_epochs = o.epochs - o.unfreeze_epochs;
    opt = recipe_sgd(ctx, ft, o.finetune_lr); /* every parameter: the frozen ones are skipped */
    if (!opt) FAIL("optimizer: %s", kiln_error_message(ctx));
    printf("\n3. head only (backbone frozen, its batch norm in eval mode), %d epochs on %lld images, lr %g\n",
           head_epochs, (long long)kiln_dataset_num_samples(new_tr), o.finetune_lr);
    if (head_epochs > 0) {
        sched = recipe_schedule(opt, kiln_loader_num_batches(new_l), head_epochs, false);
        if (!sched || train(ft, new_l, opt, sched, head_epochs, backbone, nb, o.progress) != KILN_OK)
            FAIL("training the head: %s", kiln_error_message(ctx));
        kiln_lr_sched_free(sched);
        sched = NULL;
        if (kiln_evaluate(ft, new_te_l, NULL, NULL, NULL, NULL, &acc) != KILN_OK)
            FAIL("evaluating: %s", kiln_error_message(ctx));
        printf("head_only_accuracy=%.4f (test images of classes 5-9)\n", acc);
    }
    /* 4. everything unfrozen, at a lower lr */
    if (o.unfreeze_epochs > 0) {
        for (int i = 0; i < nb; i++) kiln_module_set_requires_grad(backbone[i], true);
        /* a new optimizer (fresh momentum, and schedulers take its lr as their base) */
        kiln_optim_free(opt);
        opt = recipe_sgd(ctx, ft, o.unfreeze_lr);
        sched = opt ? recipe_schedule(opt, kiln_loader_num_batches(new_l), o.unfreeze_epochs, false) : NULL;
        printf("\n4. unfrozen, %d epochs from lr %g, cosine\n", o.unfreeze_epochs, o.unfreeze_lr);
        if (!sched || train(ft, new_l, opt, sched, o.unfreeze_epochs, NULL, 0, o.progress) != KILN_OK)
            FAIL("fine-tuning: %s", kiln_error_message(ctx));
        kiln_lr_sched_free(sched);
        sched = NULL;
    }
    double ft_acc;
    if (kiln_evaluate(ft, new_te_l, NULL, NULL, NULL, NULL, &ft_acc) != KILN_OK)
        FAIL("evaluating: %s", kiln_error_message(ctx));
    kiln_optim_free(opt);
    opt = NULL;

    /* 5. from scratch: the same network, subset and number of epochs */
    kiln_manual_seed(ctx, o.seed + 1);
    sc = kiln_resnet_cifar(ctx, depth, &ro);
    opt = sc ? recipe_sgd(ctx, sc, o.lr) : NULL;
    sched = opt ? recipe_schedule(opt, kiln_loader_num_batches(new_l), o.epochs, true) : NULL;
    if (!sched) FAIL("from scratch: %s", kiln_error_message(ctx));
    printf("\n5. from scratch, %d epochs on the same %lld images, lr %g (warm-up, cosine)\n", o.epochs,
           (long long)kiln_dataset_num_samples(new_tr), o.lr);
    if (train(sc, new_l, opt, sched, o.epochs, NULL, 0, o.progress) != KILN_OK)
        FAIL("training from scratch: %s", kiln_error_message(ctx));
    double sc_acc;
    if (kiln_evaluate(sc, new_te_l, NULL, NULL, NULL, NULL, &sc_acc) != KILN_OK)
        FAIL("evaluating: %s", kiln_error_message(ctx));

    printf("\ntest accuracy on classes 5-9 (%lld images), %lld labelled training images, %d epochs each:\n",
           (long long)kiln_dataset_num_samples(new_te), (long long)kiln_dataset_num_samples(new_tr), o.epochs);
    printf("  fine-tuned from the pretrained backbone  %.4f\n  trained from scratch                    %.4f\n", ft_acc,
           sc_acc);
    printf("wall time %.1f s\n", (ex_now_ms() - t_start) / 1e3);
    printf("finetuned_accuracy=%.4f\nscratch_accuracy=%.4f\n", ft_acc, sc_acc);
    rc = 0;
done:
    kiln_lr_sched_free(sched);
    kiln_optim_free(opt);
    kiln_module_free(pre);
    kiln_module_free(ft);
    kiln_module_free(sc);
    kiln_loader_free(pre_l);
    kiln_loader_free(pre_te_l);
    kiln_loader_free(new_l);
    kiln_loader_free(new_te_l);
    kiln_dataset_free(train_all);
    kiln_dataset_free(test_all);
    kiln_dataset_free(pre_tr);
    kiln_dataset_free(pre_te);
    kiln_dataset_free(new_tr);
    kiln_dataset_free(new_te);
    kiln_close(ctx);
    return rc;
}
