/* tests/test_dist.c - data-parallel training over MPI (kiln/dist.h), one mode per run, each
 * started by tests/dist_run.sh under `mpirun -np N` (N = 2 and 3 in the `dist` suite):
 *
 *   equiv     a small CNN (conv, relu, linear) wrapped with 200-byte buckets (several per
 *             step, so buckets start during the backward), SGD with momentum, K = 4 steps
 *             of batch B = 3 per rank, every rank's parameters different before the wrap
 *             (the broadcast must fix them). Each rank also trains, alone and without
 *             kiln_dist, a copy from rank 0's initial weights on the N * B samples of every
 *             step. After every step the ranks' parameters must be bit-identical (rank 0's
 *             broadcast and memcmp); at the end they must match the single-process copy
 *             within 2e-6 + 2e-5 * |w| (fp32: the sum over ranks and the batch mean round in
 *             other orders). A frozen parameter (a second linear's weight) stays untouched
 *             and the bucket plan skips it. Two backwards before one sync are refused.
 *   sampler   kiln_loader_opts.shard_rank/shard_count over 11 samples with batch 2, 3 epochs:
 *             every rank gets ceil(11 / N) samples, the shards of an epoch cover all 11,
 *             overlap only by the padding, and epochs are shuffled differently.
 *   collect   the host collectives (sum, max, min, broadcast, barrier) and a wrapped model
 *             whose ranks disagree (one rank has a larger layer): the wrap fails on every
 *             rank naming the rank that differs.
 *   fail      KILN_DIST_TIMEOUT=3: the last rank kills itself (SIGKILL) before step 3; the
 *             others must fail in kiln_dist_sync_grads within the watchdog with a message
 *             naming their rank and, from the roll call, the killed rank as the one that did
 *             not answer (names_killed=1), print it as fail_message=..., check that the
 *             checkpoint rank 0 wrote after step 2 loads, and exit 1 (dist_run.sh checks the
 *             lines).
 *   stray     KILN_DIST_TIMEOUT=3: the last rank runs a barrier where the others sync their
 *             gradients; every rank's watchdog fires and the roll call says every rank
 *             answered (none died): stray_ok=1 per rank.
 *   order     the last rank's step count bumped (a test hook): every rank fails with the
 *             bucket header mismatch naming each rank's model and step. Then two wrapped
 *             models whose backwards and syncs run in opposite orders on rank 0 and the
 *             others: both complete.
 *   syncbn    kiln_dist_opts.sync_batchnorm against one BatchNorm2d over the whole batch
 *             (outputs, input and parameter gradients, running statistics; two steps).
 *   fit       kiln_fit with dist on a separable two-class shard per rank, validation and
 *             patience 1: the epoch figures, the early-stopping verdict and the weights agree
 *             on every rank; metrics_csv and plot_path are written by rank 0 only.
 *   ckpt-save / ckpt-load  two steps under one world size, rank 0 saves a checkpoint
 *             (kiln_checkpoint_save, atomic); a run under another world size loads it on
 *             rank 0 only, kiln_dist_broadcast_model, and every rank's parameters must be
 *             bit-identical to the file's.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "kiln_test_hooks.h"
#include <kiln/dist.h>

static int R, N;

#define D_IN 6 /* input [1, 6, 6] */
#define NCLS 4

static kiln_module *make_net(kiln_ctx *ctx, uint64_t seed, int hidden) {
    kiln_manual_seed(ctx, seed);
    kiln_module *mods[] = {
        kiln_nn_conv2d(ctx, 1, 3, 3, 3, NULL, true),
        kiln_nn_activation(ctx, KILN_ACT_RELU, 0),
        kiln_nn_flatten(ctx, 1, -1),
        kiln_nn_linear(ctx, 3 * 4 * 4, hidden, true),
        kiln_nn_activation(ctx, KILN_ACT_TANH, 0),
        kiln_nn_linear(ctx, hidden, NCLS, true),
    };
    return kiln_nn_sequential(ctx, 6, mods);
}

/* All parameters (and buffers) as one host vector; returns its length. */
static int64_t flat_params(kiln_module *m, float *out, int64_t cap) {
    kiln_named_tensor nt[32];
    int n = kiln_module_state(m, nt, 32);
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        int64_t k = kiln_tensor_numel(nt[i].tensor);
        if (out && at + k <= cap) kiln_to_host(nt[i].tensor, out + at, sizeof(float) * (size_t)k);
        at += k;
    }
    return at;
}

/* The samples of step s: N * B of them, deterministic, the same on every rank. */
static void step_data(int s, int nb, float *x, int32_t *y) {
    uint64_t st = 0x1234567ULL + (uint64_t)s * 7919;
    for (int i = 0; i < nb * D_IN * D_IN; i++) {
        st = st * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((st >> 40) & 0xffff) / 65536.0f - 0.5f;
    }
    for (int i = 0; i < nb; i++) y[i] = (int32_t)((i * 7 + s) % NCLS);
}

static kiln_status train_step(kiln_ctx *ctx, kiln_module *net, kiln_optim *opt, kiln_dist_model *dm, const float *x,
                              const int32_t *y, int b) {
    kiln_scope_begin(ctx);
    kiln_tensor *tx = kiln_from_host(ctx, x, KILN_F32, 4, (int64_t[]){b, 1, D_IN, D_IN});
    kiln_tensor *ty = kiln_from_host(ctx, y, KILN_I32, 1, (int64_t[]){b});
    kiln_tensor *loss = kiln_cross_entropy(ctx, kiln_forward(net, tx), ty, KILN_MEAN);
    kiln_status s = kiln_optim_zero_grad(opt);
    if (s == KILN_OK) s = loss ? kiln_backward(loss) : kiln_error_status(ctx);
    if (s == KILN_OK && dm) s = kiln_dist_sync_grads(dm);
    if (s == KILN_OK) s = kiln_optim_step(opt);
    kiln_scope_end(ctx);
    return s;
}

static kiln_optim *make_sgd(kiln_ctx *ctx, kiln_module *net) {
    kiln_tensor *p[32];
    int n = kiln_module_parameters(net, p, 32);
    kiln_sgd_opts o = kiln_sgd_defaults();
    o.lr = 0.2f;
    o.momentum = 0.9f;
    return kiln_sgd(ctx, p, n, &o);
}

/* Rank 0's vector against ours: bit-identical? */
static bool same_as_rank0(const float *v, int64_t n) {
    float *r0 = malloc(sizeof(float) * (size_t)n);
    memcpy(r0, v, sizeof(float) * (size_t)n);
    bool ok = kiln_dist_broadcast(r0, sizeof(float) * (size_t)n, 0) == KILN_OK &&
              memcmp(r0, v, sizeof(float) * (size_t)n) == 0;
    free(r0);
    double all = ok ? 0 : 1;
    kiln_dist_allreduce_f64(&all, 1, KILN_DIST_SUM);
    return all == 0;
}

static void mode_equiv(kiln_ctx *ctx) {
    enum { K = 4, B = 3 };
    /* every rank starts elsewhere: the wrap must broadcast rank 0's weights */
    kiln_module *net = make_net(ctx, 100 + (uint64_t)R, 8), *ref = make_net(ctx, 100, 8);
    kiln_module *frozen_holder = kiln_nn_linear(ctx, 2, 2, false); /* for the frozen check below */
    CHECK(net && ref && frozen_holder, "model: %s", kiln_error_message(ctx));
    /* freeze the last linear's bias: skipped by the buckets and the optimizer */
    kiln_tensor *fb = kiln_module_find(net, "5.bias"), *fb_ref = kiln_module_find(ref, "5.bias");
    CHECK(fb && fb_ref, "5.bias");
    kiln_tensor_set_requires_grad(fb, false);
    kiln_tensor_set_requires_grad(fb_ref, false);
    kiln_dist_model *dm = kiln_dist_wrap(net, &(kiln_dist_opts){.bucket_bytes = 200});
    CHECK(dm, "wrap: %s", kiln_error_message(ctx));
    if (!dm) return;
    kiln_dist_stats st;
    kiln_dist_model_stats(dm, &st);
    int64_t nparam = flat_params(net, NULL, 0);
    /* conv 27+3, linear 48*8+8, linear 8*4 (+4 frozen) */
    CHECK(st.params == 27 + 3 + 48 * 8 + 8 + 8 * NCLS, "params reduced %lld", (long long)st.params);
    CHECK(st.buckets >= 3, "buckets %d with 200-byte buckets", st.buckets);
    float *w = malloc(sizeof(float) * (size_t)nparam), *wr = malloc(sizeof(float) * (size_t)nparam);
    flat_params(net, w, nparam);
    flat_params(ref, wr, nparam);
    CHECK(memcmp(w, wr, sizeof(float) * (size_t)nparam) == 0, "rank %d: the wrap did not broadcast rank 0's weights",
          R);
    kiln_optim *opt = make_sgd(ctx, net), *opt_ref = make_sgd(ctx, ref);
    float *x = malloc(sizeof(float) * (size_t)(N * B * D_IN * D_IN));
    int32_t *y = malloc(sizeof(int32_t) * (size_t)(N * B));
    bool identical = true;
    for (int s = 0; s < K; s++) {
        step_data(s, N * B, x, y);
        kiln_status a = train_step(ctx, net, opt, dm, x + R * B * D_IN * D_IN, y + R * B, B);
        CHECK(a == KILN_OK, "rank %d step %d: %s", R, s, kiln_error_message(ctx));
        kiln_status b = train_step(ctx, ref, opt_ref, NULL, x, y, N * B);
        CHECK(b == KILN_OK, "reference step %d: %s", s, kiln_error_message(ctx));
        if (a != KILN_OK || b != KILN_OK) break;
        flat_params(net, w, nparam);
        bool same = same_as_rank0(w, nparam);
        CHECK(same, "rank %d: parameters differ from rank 0's after step %d", R, s);
        identical = identical && same;
    }
    flat_params(net, w, nparam);
    flat_params(ref, wr, nparam);
    double worst = 0, maxdiff = 0;
    for (int64_t i = 0; i < nparam; i++) {
        double d = fabs((double)w[i] - wr[i]), tol = 2e-6 + 2e-5 * fabs((double)wr[i]);
        if (d / tol > worst) worst = d / tol;
        if (d > maxdiff) maxdiff = d;
    }
    CHECK(worst <= 1,
          "rank %d: %d ranks x batch %d vs 1 x batch %d after %d steps: max |diff| %g (%.2f x the tolerance)", R, N, B,
          N * B, K, maxdiff, worst);
    /* the frozen bias: never updated, never reduced */
    float fbv[NCLS], fbr[NCLS];
    kiln_to_host(fb, fbv, sizeof fbv);
    kiln_to_host(fb_ref, fbr, sizeof fbr);
    CHECK(memcmp(fbv, fbr, sizeof fbv) == 0, "the frozen bias changed");
    kiln_dist_model_stats(dm, &st);
    CHECK(st.steps == K, "steps %lld", (long long)st.steps);
    if (R == 0)
        printf("equiv ranks=%d steps=%d batch=%dx%d max_abs_diff=%.3g worst_vs_tol=%.3f ranks_identical=%d buckets=%d "
               "buckets_started_in_backward=%lld bytes_per_step=%llu\n",
               N, K, N, B, maxdiff, worst, identical, st.buckets, (long long)st.buckets_early,
               (unsigned long long)st.bytes_per_step);
    /* two backwards before one sync: refused, naming the step; the next step is fine */
    step_data(0, N * B, x, y);
    kiln_scope_begin(ctx);
    for (int k = 0; k < 2; k++) {
        kiln_tensor *tx = kiln_from_host(ctx, x + R * B * D_IN * D_IN, KILN_F32, 4, (int64_t[]){B, 1, D_IN, D_IN});
        kiln_tensor *ty = kiln_from_host(ctx, y + R * B, KILN_I32, 1, (int64_t[]){B});
        kiln_backward(kiln_cross_entropy(ctx, kiln_forward(net, tx), ty, KILN_MEAN));
    }
    kiln_scope_end(ctx);
    CHECK(kiln_dist_sync_grads(dm) == KILN_ERR_INVALID_ARGUMENT && strstr(kiln_error_message(ctx), "second backward"),
          "two backwards: %s", kiln_error_message(ctx));
    kiln_error_clear(ctx);
    CHECK(train_step(ctx, net, opt, dm, x + R * B * D_IN * D_IN, y + R * B, B) == KILN_OK, "after: %s",
          kiln_error_message(ctx));
    free(x), free(y), free(w), free(wr);
    kiln_optim_free(opt), kiln_optim_free(opt_ref);
    kiln_dist_model_free(dm);
    /* the hook is gone with the wrapper: a second wrap on this context works */
    dm = kiln_dist_wrap(net, NULL);
    CHECK(dm, "second wrap: %s", kiln_error_message(ctx));
    kiln_dist_model *dm2 = kiln_dist_wrap(ref, NULL);
    CHECK(!dm2 && strstr(kiln_error_message(ctx), "one per context"), "a second wrapped model on one context: %s",
          kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_dist_model_free(dm);
    kiln_module_free(net), kiln_module_free(ref), kiln_module_free(frozen_holder);
}

static void mode_sampler(kiln_ctx *ctx) {
    enum { NS = 11, EPOCHS = 3 };
    float x[NS];
    int32_t y[NS];
    for (int i = 0; i < NS; i++) x[i] = (float)i, y[i] = i;
    kiln_dataset *ds = kiln_dataset_from_host(x, y, NS, 1, (int64_t[]){1}, NS);
    kiln_loader_opts o = kiln_loader_defaults();
    o.batch_size = 2, o.shuffle = true, o.seed = 7, o.shard_rank = R, o.shard_count = N, o.sync = true;
    kiln_loader *l = kiln_loader_new(ctx, ds, &o);
    CHECK(l, "loader: %s", kiln_error_message(ctx));
    if (!l) return;
    const int per = (NS + N - 1) / N;
    CHECK(kiln_loader_num_batches(l) == (per + 1) / 2, "batches %lld for %d samples",
          (long long)kiln_loader_num_batches(l), per);
    double first[NS * 3] = {0};
    for (int e = 0; e < EPOCHS; e++) {
        double mine[NS * 3]; /* rank-major slots: rank r's j-th sample at r * per + j */
        for (int i = 0; i < NS * 3; i++) mine[i] = 0;
        int got = 0;
        kiln_tensor *tx, *ty;
        kiln_scope_begin(ctx);
        while (kiln_loader_next(l, &tx, &ty)) {
            int32_t lab[2];
            int64_t b = kiln_tensor_shape(ty)[0];
            kiln_to_host(ty, lab, sizeof(int32_t) * (size_t)b);
            for (int64_t k = 0; k < b; k++) mine[R * per + got++] = lab[k] + 1;
        }
        kiln_scope_end(ctx);
        CHECK(got == per, "rank %d epoch %d: %d samples, want %d", R, e, got, per);
        kiln_dist_allreduce_f64(mine, N * per, KILN_DIST_SUM);
        int count[NS] = {0};
        for (int i = 0; i < N * per; i++) {
            int v = (int)mine[i] - 1;
            CHECK(v >= 0 && v < NS, "sample %d", v);
            if (v >= 0 && v < NS) count[v]++;
        }
        int dup = 0;
        for (int v = 0; v < NS; v++) {
            CHECK(count[v] >= 1, "epoch %d: sample %d in no shard", e, v);
            dup += count[v] - 1;
        }
        CHECK(dup == N * per - NS, "epoch %d: %d samples twice, the padding is %d", e, dup, N * per - NS);
        if (e == 0)
            memcpy(first, mine, sizeof first);
        else
            CHECK(memcmp(first, mine, sizeof(double) * (size_t)(N * per)) != 0, "epoch %d repeats epoch 0's order", e);
    }
    if (R == 0)
        printf("sampler ranks=%d samples=%d per_rank=%d padding=%d disjoint_covering=1\n", N, NS, per, N * per - NS);
    kiln_loader_free(l);
    /* bad shards are refused */
    o.shard_rank = N;
    CHECK(!kiln_loader_new(ctx, ds, &o) && strstr(kiln_error_message(ctx), "shard_rank"), "shard_rank %d of %d: %s", N,
          N, kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_dataset_free(ds);
}

static void mode_collect(kiln_ctx *ctx) {
    double v[3] = {R + 1, R, -R};
    CHECK(kiln_dist_allreduce_f64(v, 3, KILN_DIST_SUM) == KILN_OK, "sum: %s", kiln_last_error());
    CHECK(v[0] == N * (N + 1) / 2.0, "sum %g", v[0]);
    double mx = R, mn = R;
    kiln_dist_allreduce_f64(&mx, 1, KILN_DIST_MAX);
    kiln_dist_allreduce_f64(&mn, 1, KILN_DIST_MIN);
    CHECK(mx == N - 1 && mn == 0, "max %g min %g", mx, mn);
    int token = R == 1 ? 42 : 0;
    CHECK(kiln_dist_broadcast(&token, sizeof token, 1) == KILN_OK && token == 42, "broadcast from 1: %d", token);
    CHECK(kiln_dist_broadcast(&token, sizeof token, N) == KILN_ERR_INVALID_ARGUMENT, "root %d accepted", N);
    CHECK(kiln_dist_barrier() == KILN_OK, "barrier: %s", kiln_last_error());
    /* ranks that wrap different models: every rank fails naming the last rank */
    kiln_module *net = make_net(ctx, 1, R == N - 1 ? 9 : 8);
    kiln_dist_model *dm = kiln_dist_wrap(net, NULL);
    char want[64];
    snprintf(want, sizeof want, "differ from it: %d (", N - 1);
    CHECK(!dm && strstr(kiln_error_message(ctx), want), "different models: %s", kiln_error_message(ctx));
    if (R == 0) printf("collect ranks=%d mismatch_message=%s\n", N, kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_dist_model_free(dm);
    kiln_module_free(net);
}

static void mode_fail(kiln_ctx *ctx, const char *ckpt) {
    enum { B = 2 };
    kiln_dist_set_timeout(3);
    kiln_module *net = make_net(ctx, 5, 8);
    kiln_dist_model *dm = kiln_dist_wrap(net, NULL);
    kiln_optim *opt = make_sgd(ctx, net);
    CHECK(dm && opt, "wrap: %s", kiln_error_message(ctx));
    float *x = malloc(sizeof(float) * (size_t)(N * B * D_IN * D_IN));
    int32_t *y = malloc(sizeof(int32_t) * (size_t)(N * B));
    for (int s = 0; s < 6; s++) {
        if (s == 3 && R == N - 1) raise(SIGKILL);
        step_data(s, N * B, x, y);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        kiln_status st = train_step(ctx, net, opt, dm, x + R * B * D_IN * D_IN, y + R * B, B);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (st != KILN_OK) {
            double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
            printf("rank %d: step %d failed after %.1f s\nfail_message=%s\n", R, s, secs, kiln_error_message(ctx));
            /* the roll call names the killed rank, and only it */
            char want[64];
            snprintf(want, sizeof want, "roll call: rank %d of %d did not answer", N - 1, N);
            printf("names_killed=%d\n", strstr(kiln_error_message(ctx), want) != NULL);
            if (R == 0) {
                kiln_error_clear(ctx);
                kiln_module *back = make_net(ctx, 6, 8);
                kiln_status ls = kiln_checkpoint_load(ckpt, back, NULL, NULL);
                printf("checkpoint_loads=%d\n", ls == KILN_OK);
                kiln_module_free(back);
            }
            fflush(stdout);
            free(x), free(y);
            kiln_optim_free(opt);
            kiln_dist_model_free(dm);
            kiln_module_free(net);
            kiln_dist_finalize();
            exit(1);
        }
        if (R == 0 && s == 2) {
            kiln_meta meta[1] = {{"step", "3"}};
            CHECK(kiln_checkpoint_save(ckpt, net, opt, 1, meta) == KILN_OK, "save: %s", kiln_error_message(ctx));
        }
    }
    CHECK(0, "rank %d: no step failed although rank %d was killed", R, N - 1);
    free(x), free(y);
}

/* The last rank issues a barrier where the others all-reduce their gradients (step 3): every
 * rank's watchdog fires, and the roll call finds every rank alive (each answers from its wait
 * loop), so the message says none died. Prints stray_ok=1 per rank when so; the caller
 * (dist_run.sh) counts them, as mpirun's status only says the ranks stopped. */
static void mode_stray(kiln_ctx *ctx) {
    enum { B = 2 };
    kiln_dist_set_timeout(3);
    kiln_module *net = make_net(ctx, 5, 8);
    kiln_dist_model *dm = kiln_dist_wrap(net, NULL);
    kiln_optim *opt = make_sgd(ctx, net);
    CHECK(dm && opt, "wrap: %s", kiln_error_message(ctx));
    float *x = malloc(sizeof(float) * (size_t)(N * B * D_IN * D_IN));
    int32_t *y = malloc(sizeof(int32_t) * (size_t)(N * B));
    for (int s = 0; s < 5; s++) {
        step_data(s, N * B, x, y);
        kiln_status st;
        const char *msg;
        if (s == 3 && R == N - 1) {
            st = kiln_dist_barrier();
            msg = kiln_last_error();
        } else {
            st = train_step(ctx, net, opt, dm, x + R * B * D_IN * D_IN, y + R * B, B);
            msg = kiln_error_message(ctx);
        }
        if (st != KILN_OK) {
            printf("rank %d: step %d: stray_message=%s\n", R, s, msg);
            printf("stray_ok=%d\n", s == 3 && strstr(msg, "roll call: every other rank answered") != NULL);
            fflush(stdout);
            exit(1);
        }
    }
    CHECK(0, "rank %d: no step failed although rank %d issued a stray barrier", R, N - 1);
    free(x), free(y);
}

static void mode_ckpt(kiln_ctx *ctx, bool save, const char *path) {
    enum { B = 2 };
    kiln_module *net = make_net(ctx, 11 + (uint64_t)R, 8);
    kiln_dist_model *dm = kiln_dist_wrap(net, NULL);
    kiln_optim *opt = make_sgd(ctx, net);
    CHECK(dm && opt, "wrap: %s", kiln_error_message(ctx));
    if (!dm || !opt) return;
    int64_t n = flat_params(net, NULL, 0);
    float *w = malloc(sizeof(float) * (size_t)n), *wf = malloc(sizeof(float) * (size_t)n);
    if (save) {
        float *x = malloc(sizeof(float) * (size_t)(N * B * D_IN * D_IN));
        int32_t *y = malloc(sizeof(int32_t) * (size_t)(N * B));
        for (int s = 0; s < 2; s++) {
            step_data(s, N * B, x, y);
            CHECK(train_step(ctx, net, opt, dm, x + R * B * D_IN * D_IN, y + R * B, B) == KILN_OK, "step: %s",
                  kiln_error_message(ctx));
        }
        if (R == 0)
            CHECK(kiln_checkpoint_save(path, net, opt, 0, NULL) == KILN_OK, "save: %s", kiln_error_message(ctx));
        kiln_dist_barrier();
        free(x), free(y);
        flat_params(net, w, n);
        if (R == 0) printf("ckpt saved under %d ranks: %s\n", N, path);
    } else {
        if (R == 0) CHECK(kiln_checkpoint_load(path, net, opt, NULL) == KILN_OK, "load: %s", kiln_error_message(ctx));
        CHECK(kiln_dist_broadcast_model(dm) == KILN_OK, "broadcast: %s", kiln_error_message(ctx));
        flat_params(net, w, n);
        /* the file itself, read by every rank into a fresh model */
        kiln_module *file = make_net(ctx, 99, 8);
        CHECK(kiln_module_load(file, path, false, NULL) == KILN_OK, "load: %s", kiln_error_message(ctx));
        flat_params(file, wf, n);
        CHECK(memcmp(w, wf, sizeof(float) * (size_t)n) == 0, "rank %d: parameters after resume differ from the file",
              R);
        if (R == 0) printf("ckpt resumed under %d ranks: parameters bit-identical to the file\n", N);
        kiln_module_free(file);
    }
    free(w), free(wf);
    kiln_optim_free(opt);
    kiln_dist_model_free(dm);
    kiln_module_free(net);
}

/* SyncBatchNorm: each rank's slice of one batch through a wrapped BatchNorm2d with
 * sync_batchnorm against one BatchNorm2d over the whole batch (two training steps' worth
 * of forward and backward): outputs, input gradients, the parameters' gradients (the
 * wrapper averages them over the ranks, so N times them is the whole batch's) and the
 * running statistics. Tolerance 2e-5 + 2e-4 * |ref|: SyncBatchNorm's variance is
 * E[x^2] - mean^2 from sums, kiln_batch_norm's a two-pass one. */
static double worst_rel(const float *got, const float *ref, int64_t n, float scale) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] * scale - ref[i]) / (2e-5 + 2e-4 * fabs((double)ref[i]));
        if (d > w) w = d;
    }
    return w;
}

static void clear_grads(kiln_module *m) {
    kiln_tensor *p[8];
    int n = kiln_module_parameters(m, p, 8);
    for (int i = 0; i < n; i++) kiln_tensor_clear_grad(p[i]);
}

static void mode_syncbn(kiln_ctx *ctx) {
    enum { B = 2, C = 3, H = 4, W = 5, STEPS = 2 };
    const int64_t per = (int64_t)B * C * H * W, all = per * N;
    float *X = malloc(sizeof(float) * (size_t)all), *G = malloc(sizeof(float) * (size_t)all);
    float *h = malloc(sizeof(float) * (size_t)all), *r = malloc(sizeof(float) * (size_t)all);
    const float wv[C] = {0.5f, 1.5f, -1.0f}, bv[C] = {0.1f, -0.2f, 0.3f};
    kiln_module *ref = kiln_nn_batchnorm2d(ctx, C, 1e-5f, 0.1f), *bn = kiln_nn_batchnorm2d(ctx, C, 1e-5f, 0.1f);
    kiln_copy_from_host(kiln_module_find(ref, "weight"), wv, sizeof wv);
    kiln_copy_from_host(kiln_module_find(ref, "bias"), bv, sizeof bv);
    kiln_copy_from_host(kiln_module_find(bn, "weight"), wv, sizeof wv);
    kiln_copy_from_host(kiln_module_find(bn, "bias"), bv, sizeof bv);
    kiln_dist_model *dm = kiln_dist_wrap(bn, &(kiln_dist_opts){.sync_batchnorm = true});
    CHECK(dm, "wrap: %s", kiln_error_message(ctx));
    if (!dm) return;
    kiln_dist_stats st;
    kiln_dist_model_stats(dm, &st);
    CHECK(st.sync_batchnorms == 1, "%d batch norms synchronised", st.sync_batchnorms);
    double worst = 0;
    for (int s = 0; s < STEPS; s++) {
        uint64_t q = 99 + (uint64_t)s;
        for (int64_t i = 0; i < all; i++) {
            q = q * 6364136223846793005ULL + 1442695040888963407ULL;
            X[i] = 2.0f * (float)((q >> 40) & 0xffff) / 65536.0f + (float)(i % 3) - 1.0f;
            G[i] = (float)((i * 7) % 11) / 11.0f - 0.4f;
        }
        kiln_scope_begin(ctx);
        kiln_tensor *xr = kiln_from_host(ctx, X, KILN_F32, 4, (int64_t[]){N * B, C, H, W});
        kiln_tensor *gr = kiln_from_host(ctx, G, KILN_F32, 4, (int64_t[]){N * B, C, H, W});
        kiln_tensor *x = kiln_from_host(ctx, X + R * per, KILN_F32, 4, (int64_t[]){B, C, H, W});
        kiln_tensor *g = kiln_from_host(ctx, G + R * per, KILN_F32, 4, (int64_t[]){B, C, H, W});
        kiln_tensor_set_requires_grad(xr, true);
        kiln_tensor_set_requires_grad(x, true);
        clear_grads(ref), clear_grads(bn);
        kiln_tensor *yr = kiln_forward(ref, xr), *y = kiln_forward(bn, x);
        CHECK(y && yr, "forward: %s", kiln_error_message(ctx));
        if (!y || !yr) {
            kiln_scope_end(ctx);
            break;
        }
        CHECK(kiln_backward(kiln_sum(ctx, kiln_mul(ctx, yr, gr), 0, NULL, false)) == KILN_OK, "ref backward: %s",
              kiln_error_message(ctx));
        CHECK(kiln_backward(kiln_sum(ctx, kiln_mul(ctx, y, g), 0, NULL, false)) == KILN_OK, "backward: %s",
              kiln_error_message(ctx));
        CHECK(kiln_dist_sync_grads(dm) == KILN_OK, "sync: %s", kiln_error_message(ctx));
        kiln_to_host(yr, r, sizeof(float) * (size_t)all), kiln_to_host(y, h, sizeof(float) * (size_t)per);
        double wy = worst_rel(h, r + R * per, per, 1);
        kiln_to_host(kiln_tensor_grad(xr), r, sizeof(float) * (size_t)all);
        kiln_to_host(kiln_tensor_grad(x), h, sizeof(float) * (size_t)per);
        double wx = worst_rel(h, r + R * per, per, 1);
        double wp = 0, wr = 0;
        const char *pn[2] = {"weight", "bias"}, *bn_[2] = {"running_mean", "running_var"};
        for (int k = 0; k < 2; k++) {
            kiln_to_host(kiln_tensor_grad(kiln_module_find(ref, pn[k])), r, sizeof(float) * C);
            kiln_to_host(kiln_tensor_grad(kiln_module_find(bn, pn[k])), h, sizeof(float) * C);
            wp = fmax(wp, worst_rel(h, r, C, (float)N));
            kiln_to_host(kiln_module_find(ref, bn_[k]), r, sizeof(float) * C);
            kiln_to_host(kiln_module_find(bn, bn_[k]), h, sizeof(float) * C);
            wr = fmax(wr, worst_rel(h, r, C, 1));
        }
        CHECK(wy <= 1 && wx <= 1 && wp <= 1 && wr <= 1,
              "rank %d step %d: worst / tolerance: output %.3g, input grad %.3g, param grads %.3g, running stats %.3g",
              R, s, wy, wx, wp, wr);
        worst = fmax(worst, fmax(fmax(wy, wx), fmax(wp, wr)));
        kiln_scope_end(ctx);
    }
    if (R == 0) printf("syncbn ranks=%d batch=%dx%d worst_vs_tol=%.3f\n", N, N, B, worst);
    kiln_dist_model_free(dm);
    kiln_module_free(ref), kiln_module_free(bn);
    free(X), free(G), free(h), free(r);
}

/* A rank whose step count runs ahead (a test hook bumps it): the next bucket's header
 * disagrees, and every rank fails naming each rank's model and step. The model has one
 * bucket, so the communicator stays usable. */
static void mode_order(kiln_ctx *ctx) {
    enum { B = 2 };
    kiln_module *a = make_net(ctx, 1, 8);
    kiln_dist_model *da = kiln_dist_wrap(a, NULL);
    kiln_optim *oa = make_sgd(ctx, a);
    CHECK(da && oa, "wrap: %s", kiln_error_message(ctx));
    if (!da || !oa) return;
    float x[N * B * D_IN * D_IN];
    int32_t y[N * B];
    step_data(0, N * B, x, y);
    CHECK(train_step(ctx, a, oa, da, x + R * B * D_IN * D_IN, y + R * B, B) == KILN_OK, "step 0: %s",
          kiln_error_message(ctx));
    if (R == N - 1) kiln__dist_test_skip_step(da);
    kiln_status st = train_step(ctx, a, oa, da, x + R * B * D_IN * D_IN, y + R * B, B);
    char want[128];
    snprintf(want, sizeof want, "rank 0: model 1, step 1, bucket 0 of %d values; rank 1: model 1, step %d",
             27 + 3 + 48 * 8 + 8 + 8 * NCLS + NCLS, N == 2 ? 2 : 1);
    CHECK(st == KILN_ERR_INVALID_ARGUMENT && strstr(kiln_error_message(ctx), "collective order mismatch") &&
              strstr(kiln_error_message(ctx), want),
          "rank %d: %s", R, kiln_error_message(ctx));
    if (R == 0) printf("order ranks=%d message=%s\n", N, kiln_error_message(ctx));
    kiln_error_clear(ctx);
    kiln_optim_free(oa);
    kiln_dist_model_free(da);
    kiln_module_free(a);
    /* two wrapped models (two contexts) whose backwards and syncs run in one order on rank 0
     * and the other order elsewhere: each model has its own communicator and a sync moves
     * both on, so both steps complete */
    kiln_ctx *c2;
    CHECK(kiln_open(&c2, kiln_ctx_device(ctx)->name) == KILN_OK, "second context: %s", kiln_last_error());
    kiln_ctx *cs[2] = {ctx, c2};
    kiln_module *ms[2];
    kiln_dist_model *ds[2];
    kiln_optim *os[2];
    for (int i = 0; i < 2; i++) {
        ms[i] = make_net(cs[i], 3, 8);
        ds[i] = kiln_dist_wrap(ms[i], NULL);
        os[i] = make_sgd(cs[i], ms[i]);
        CHECK(ds[i] && os[i], "wrap %d: %s", i, kiln_error_message(cs[i]));
    }
    for (int pass = 0; pass < 2; pass++) /* both backwards, then both syncs and steps */
        for (int k = 0; k < 2; k++) {
            int i = R == 0 ? k : 1 - k;
            kiln_status st2 = KILN_OK;
            if (pass == 0) {
                kiln_scope_begin(cs[i]);
                kiln_tensor *tx =
                    kiln_from_host(cs[i], x + R * B * D_IN * D_IN, KILN_F32, 4, (int64_t[]){B, 1, D_IN, D_IN});
                kiln_tensor *ty = kiln_from_host(cs[i], y + R * B, KILN_I32, 1, (int64_t[]){B});
                kiln_optim_zero_grad(os[i]);
                st2 = kiln_backward(kiln_cross_entropy(cs[i], kiln_forward(ms[i], tx), ty, KILN_MEAN));
                kiln_scope_end(cs[i]);
            } else {
                st2 = kiln_dist_sync_grads(ds[i]);
                if (st2 == KILN_OK) st2 = kiln_optim_step(os[i]);
            }
            CHECK(st2 == KILN_OK, "rank %d, model %d, %s %s: %s", R, i, k ? "second" : "first",
                  pass ? "sync" : "backward", kiln_error_message(cs[i]));
        }
    for (int i = 0; i < 2; i++) {
        kiln_optim_free(os[i]);
        kiln_dist_model_free(ds[i]);
        kiln_module_free(ms[i]);
    }
    kiln_close(c2);
}

/* kiln_fit with dist: two Gaussian-ish blobs, each rank's shard of 40 samples; the figures,
 * the early-stopping verdict and the weights must agree on every rank, and only rank 0
 * writes files. */
static void mode_fit(kiln_ctx *ctx, const char *dir) {
    enum { NS = 40, EPOCHS = 4 };
    float x[NS * 2];
    int32_t y[NS];
    for (int i = 0; i < NS; i++) {
        y[i] = i % 2;
        x[2 * i] = (y[i] ? 1.0f : -1.0f) + 0.3f * (float)((i * 37) % 11 - 5) / 5;
        x[2 * i + 1] = 0.5f * (float)((i * 13) % 7 - 3) / 3;
    }
    kiln_dataset *ds = kiln_dataset_from_host(x, y, NS, 1, (int64_t[]){2}, 2);
    kiln_loader_opts lo = kiln_loader_defaults();
    lo.batch_size = 4, lo.shuffle = true, lo.seed = 3, lo.sync = true, lo.shard_rank = R, lo.shard_count = N;
    kiln_loader *tl = kiln_loader_new(ctx, ds, &lo);
    lo.shard_rank = 0, lo.shard_count = 1, lo.shuffle = false;
    kiln_loader *vl = kiln_loader_new(ctx, ds, &lo);
    kiln_manual_seed(ctx, 21 + (uint64_t)R);
    kiln_module *net = kiln_nn_linear(ctx, 2, 2, true);
    kiln_dist_model *dm = kiln_dist_wrap(net, NULL);
    kiln_optim *opt = make_sgd(ctx, net);
    CHECK(tl && vl && net && dm && opt, "setup: %s", kiln_error_message(ctx));
    if (!tl || !vl || !dm || !opt) return;
    char csv[512], plot[512];
    snprintf(csv, sizeof csv, "%s/fit_rank%d.csv", dir, R);
    snprintf(plot, sizeof plot, "%s/fit_rank%d.svg", dir, R);
    remove(csv), remove(plot);
    kiln_epoch_stats hist[EPOCHS];
    kiln_fit_opts fo = kiln_fit_defaults();
    fo.epochs = EPOCHS, fo.train = tl, fo.val = vl, fo.opt = opt, fo.dist = dm;
    fo.patience = 1, fo.monitor = KILN_MONITOR_VAL_LOSS, fo.metrics_csv = csv, fo.plot_path = plot;
    fo.history = hist, fo.history_cap = EPOCHS;
    kiln_fit_result r;
    CHECK(kiln_fit(net, &fo, &r) == KILN_OK, "fit: %s", kiln_error_message(ctx));
    double v[4] = {hist[0].train_loss, hist[0].val_loss, r.epochs_run, r.stopped_early};
    double mx[4], mn[4];
    memcpy(mx, v, sizeof v), memcpy(mn, v, sizeof v);
    kiln_dist_allreduce_f64(mx, 4, KILN_DIST_MAX);
    kiln_dist_allreduce_f64(mn, 4, KILN_DIST_MIN);
    CHECK(memcmp(mx, mn, sizeof mx) == 0,
          "rank %d: train loss %g, val loss %g, %g epochs, stopped %g differ between ranks", R, v[0], v[1], v[2], v[3]);
    CHECK(hist[0].val_accuracy > 0.9, "val accuracy %g", hist[0].val_accuracy);
    float w[6];
    flat_params(net, w, 6);
    CHECK(same_as_rank0(w, 6), "rank %d: weights differ after kiln_fit", R);
    FILE *f = fopen(csv, "r");
    CHECK((f != NULL) == (R == 0), "rank %d: metrics_csv %s", R, f ? "written" : "missing");
    if (f) fclose(f);
    f = fopen(plot, "r");
    CHECK((f != NULL) == (R == 0), "rank %d: plot %s", R, f ? "written" : "missing");
    if (f) fclose(f);
    if (R == 0)
        printf("fit ranks=%d epochs_run=%d stopped_early=%d train_loss=%.4f val_loss=%.4f val_accuracy=%.3f\n", N,
               r.epochs_run, r.stopped_early, hist[0].train_loss, hist[0].val_loss, hist[0].val_accuracy);
    remove(csv), remove(plot);
    kiln_optim_free(opt);
    kiln_dist_model_free(dm);
    kiln_module_free(net);
    kiln_loader_free(tl), kiln_loader_free(vl);
    kiln_dataset_free(ds);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(
            stderr,
            "usage: test_dist equiv|sampler|collect|order|syncbn|fit|stray|fail CKPT|ckpt-save PATH|ckpt-load PATH\n");
        return 2;
    }
    if (!kiln_dist_available()) {
        fprintf(stderr, "kiln was built without MPI\n");
        return 77;
    }
    /* before kiln_dist_init: a world of one, and the calls that need MPI say so */
    CHECK(kiln_dist_rank() == 0 && kiln_dist_world_size() == 1 && kiln_dist_local_size() == 1, "world before init");
    CHECK(kiln_dist_barrier() == KILN_ERR_INVALID_ARGUMENT && strstr(kiln_last_error(), "call kiln_dist_init first"),
          "barrier before init: %s", kiln_last_error());
    CHECK(kiln_dist_sync_grads(NULL) == KILN_ERR_NULL && !kiln_dist_wrap(NULL, NULL), "NULL model");
    if (kiln_dist_init(&argc, &argv) != KILN_OK) {
        fprintf(stderr, "kiln_dist_init: %s\n", kiln_last_error());
        return 1;
    }
    R = kiln_dist_rank(), N = kiln_dist_world_size();
    char spec[64];
    kiln_ctx *ctx;
    if (kiln_open(&ctx, kiln_dist_device(spec, sizeof spec)) != KILN_OK) {
        fprintf(stderr, "no OpenCL device: %s\n", kiln_last_error());
        kiln_dist_finalize();
        return 77;
    }
    const char *m = argv[1];
    if (!strcmp(m, "equiv"))
        mode_equiv(ctx);
    else if (!strcmp(m, "sampler"))
        mode_sampler(ctx);
    else if (!strcmp(m, "collect"))
        mode_collect(ctx);
    else if (!strcmp(m, "order"))
        mode_order(ctx);
    else if (!strcmp(m, "syncbn"))
        mode_syncbn(ctx);
    else if (!strcmp(m, "fit"))
        mode_fit(ctx, getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    else if (!strcmp(m, "stray"))
        mode_stray(ctx);
    else if (!strcmp(m, "fail") && argc > 2)
        mode_fail(ctx, argv[2]);
    else if (!strncmp(m, "ckpt-", 5) && argc > 2)
        mode_ckpt(ctx, !strcmp(m, "ckpt-save"), argv[2]);
    else
        CHECK(0, "unknown mode %s", m);
    kiln_close(ctx);
    /* every rank's verdict: one failed rank fails them all */
    double bad = h_failed;
    kiln_dist_allreduce_f64(&bad, 1, KILN_DIST_SUM);
    if (R == 0) printf("rank 0: %d checks, %d failed here; %g failed over %d ranks\n", h_checks, h_failed, bad, N);
    kiln_dist_finalize();
    return bad ? 1 : 0;
}
