/* examples/rl_cartpole.c - reinforcement learning on CartPole-v1 (examples/cartpole.h):
 * REINFORCE with a learned value baseline, DQN, or A2C.
 *
 *   rl_cartpole --algo reinforce|dqn|a2c [--seed N] [--runs K] [--episodes N] [--max-steps N] ...
 *
 * --algo reinforce: policy 4-128-2 and value 4-128-1 (ReLU), one Adam over both; after every
 *   episode the discounted returns G_t, advantages G_t - V(s_t) normalised over the episode
 *   (mean 0, standard deviation 1), loss -mean(log pi(a_t|s_t) A_t) + 0.5 mean((V(s_t) - G_t)^2).
 * --algo dqn (Mnih et al. 2015): Q network 4-128-128-2 (ReLU), a replay buffer of 50,000,
 *   epsilon linear from 1 to 0.01 over the first 10,000 env steps; after 1,000 env steps, one
 *   Adam step every 4 env steps on a batch of 64 from the buffer: the Huber loss
 *   (kiln_smooth_l1_loss, beta 1) of Q(s, a) (kiln_gather) against
 *   r + gamma max_a' Q_target(s', a') (1 - terminated), the gradient norm clipped to 10; the
 *   target network copied from the Q network every 250 gradient steps; the learning rate
 *   (1e-3) falling linearly to 0 over 60,000 gradient steps (240,000 env steps). Options:
 *   Double DQN's target, Polyak averaging, the sizes and schedules (--help).
 * --algo a2c (synchronous advantage actor-critic, Mnih et al. 2016): policy 4-128-2 and value
 *   4-128-1 as REINFORCE's, --envs (8) environments stepped together; every --n-steps (5)
 *   steps one Adam step on the rollout's n-step returns R_t = r_t + gamma R_{t+1}, started from
 *   V(s_n) of each environment's last state (0 after a failure; a truncated episode's last
 *   return bootstraps from V of its final state), advantages R_t - V(s_t) (not normalised):
 *   loss -mean(log pi(a_t|s_t) A_t) + 0.5 mean((V(s_t) - R_t)^2) - 0.01 mean(entropy), the
 *   gradient norm clipped to 0.5. An environment that ends is reset at once; episodes count
 *   in the order they end.
 *
 * Acting runs the network on the device for one state ([1, 4]; A2C: the --envs states at once):
 * one blocking upload and one read-back of the outputs per env step; the action is drawn on
 * the host. The environment,
 * the initial states, epsilon, the sampled actions and the replay batches use cartpole.h's
 * splitmix64 seeded with --seed, as tools/rl_cartpole_torch.py does; the initial weights come
 * from kiln_manual_seed(seed).
 *
 * Prints "episode=N env_steps=S return10=R avg100=A epsilon=E" every 10 episodes and, per
 * run, solved_episode= (the first episode at which the mean return of the last 100 episodes
 * reaches 475; -1 when the budget ran out first), then solved_runs= and env_steps_per_s=
 * (env steps over the wall time of the runs, learning included). Writes the return curve of
 * each run to OUT_DIR/rl_cartpole_ALGO_seedN.svg (kiln_plot_curves: each episode's return and
 * the mean of the last 100, against the episode).
 */
#define PROG "rl_cartpole"
#include "common.h"

#include <stddef.h>

#include "cartpole.h"

#define SOLVED_RETURN 475.0

/* ---- networks and the DQN step (tests/test_rl.c takes these with RL_CARTPOLE_NO_MAIN) ------ */

/* Linear-ReLU-...-Linear through the sizes (torch's default initialisation). */
static kiln_module *mlp(kiln_ctx *ctx, int n, const int64_t *sizes) {
    kiln_module *mods[8];
    int k = 0;
    for (int i = 0; i + 1 < n; i++) {
        mods[k++] = kiln_nn_linear(ctx, sizes[i], sizes[i + 1], true);
        if (i + 2 < n) mods[k++] = kiln_nn_activation(ctx, KILN_ACT_RELU, 0);
    }
    return kiln_nn_sequential(ctx, k, mods);
}

static kiln_tensor **params_of(kiln_module *m, int *n) {
    *n = kiln_module_parameters(m, NULL, 0);
    kiln_tensor **p = malloc(sizeof *p * (size_t)(*n > 0 ? *n : 1));
    if (p) kiln_module_parameters(m, p, *n);
    return p;
}

/* How dqn_step computes: the Q network's parameters (for clipping), the gradient norm
 * clip (0: none), and Double DQN's target (van Hasselt et al. 2016) in place of the max. */
typedef struct dqn_cfg {
    kiln_tensor *const *params;
    int nparams;
    double clip;
    bool double_q;
} dqn_cfg;

/* One DQN gradient step on a batch of B transitions packed on the host as rows of 10
 * floats, s (4), s' (4), r, gamma (1 - terminated), with actions a [B]: the Huber loss of
 * Q(s, a) against r + gamma (1 - terminated) max_a' Q_target(s', a') (c->double_q:
 * Q_target(s', argmax_a' Q(s', a'))), the gradient norm clipped to c->clip, then one optimizer
 * step. *loss_out (optional) gets the loss, read back (a wait); without it the step waits
 * only for its two uploads (blocking writes), not for its computation. */
static kiln_status dqn_step(kiln_module *q, kiln_module *target, kiln_optim *opt, const dqn_cfg *c, const float *packed,
                            const int32_t *a, int64_t B, float *loss_out) {
    kiln_ctx *ctx = kiln_module_ctx(q);
    kiln_status st = KILN_OK;
    kiln_scope_begin(ctx);
    kiln_tensor *P = kiln_from_host(ctx, packed, KILN_F32, 2, (int64_t[]){B, 10});
    kiln_tensor *Ai = kiln_from_host(ctx, a, KILN_I32, 2, (int64_t[]){B, 1});
    kiln_tensor *S = kiln_slice(ctx, P, 1, 0, 4, 1), *S2 = kiln_slice(ctx, P, 1, 4, 8, 1);
    kiln_tensor *R = kiln_reshape(ctx, kiln_slice(ctx, P, 1, 8, 9, 1), 1, (int64_t[]){B});
    kiln_tensor *GD = kiln_reshape(ctx, kiln_slice(ctx, P, 1, 9, 10, 1), 1, (int64_t[]){B});
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *qn = S2 ? kiln_forward(target, S2) : NULL, *next = NULL;
    if (qn && c->double_q) { /* Double DQN: the target network values the online network's choice */
        kiln_tensor *pick = kiln_argmax(ctx, kiln_forward(q, S2), 1, true);
        next = pick ? kiln_reshape(ctx, kiln_gather(ctx, qn, 1, pick), 1, (int64_t[]){B}) : NULL;
    } else if (qn) {
        next = kiln_max(ctx, qn, 1, (int[]){1}, false);
    }
    kiln_tensor *y = next && R && GD ? kiln_add(ctx, R, kiln_mul(ctx, GD, next)) : NULL;
    kiln_ctx_set_grad_enabled(ctx, grad);
    kiln_tensor *qv = S && Ai ? kiln_forward(q, S) : NULL;
    kiln_tensor *qa = qv ? kiln_reshape(ctx, kiln_gather(ctx, qv, 1, Ai), 1, (int64_t[]){B}) : NULL;
    kiln_tensor *loss = qa && y ? kiln_smooth_l1_loss(ctx, qa, y, KILN_MEAN, 1.0f) : NULL;
    if (!loss) goto fail;
    if ((st = kiln_optim_zero_grad(opt)) != KILN_OK || (st = kiln_backward(loss)) != KILN_OK) goto fail;
    if (c->clip > 0 && !kiln_clip_grad_norm_tensor(ctx, c->nparams, c->params, c->clip, 2.0)) goto fail;
    if ((st = kiln_optim_step(opt)) != KILN_OK) goto fail;
    if (loss_out && (st = kiln_to_host(loss, loss_out, sizeof *loss_out)) != KILN_OK) goto fail;
    kiln_scope_end(ctx);
    return KILN_OK;
fail:
    kiln_scope_end(ctx);
    return st != KILN_OK ? st : kiln_error_status(ctx);
}

/* Copies the Q network's parameters into the target network's (the same layout). */
static kiln_status copy_params(kiln_tensor *const *dst, kiln_tensor *const *src, int n) {
    for (int i = 0; i < n; i++) {
        kiln_status st = kiln_copy(dst[i], src[i]);
        if (st != KILN_OK) return st;
    }
    return KILN_OK;
}

#ifndef RL_CARTPOLE_NO_MAIN

typedef struct opts {
    const char *algo, *out_dir, *device;
    uint64_t seed;
    int64_t runs, episodes, max_steps, hidden, batch, buffer, learning_starts, train_every, grad_steps, target_every,
        eps_steps, lr_decay, envs, n_steps;
    double lr, gamma, eps_start, eps_end, clip, tau, ent_coef;
    bool stop_when_solved, double_q;
} opts;

static const opts defaults = {.algo = "dqn",
                              .out_dir = ".",
                              .seed = 1,
                              .runs = 1,
                              .episodes = 0,  /* 0: 3000 (reinforce), 5000 (dqn), 20,000 (a2c) */
                              .max_steps = 0, /* 0: 500,000 (reinforce, a2c), 300,000 (dqn) */
                              .hidden = 128,
                              .batch = 64,
                              .buffer = 50000,
                              .learning_starts = 1000,
                              .train_every = 4,
                              .grad_steps = 1,
                              .target_every = 250,
                              .eps_steps = 10000,
                              .lr = 1e-3,
                              .gamma = 0.99,
                              .eps_start = 1.0,
                              .eps_end = 0.01,
                              .clip = -1, /* 10 (dqn), 0.5 (a2c) */
                              .lr_decay = 60000,
                              .envs = 8,
                              .n_steps = 5,
                              .ent_coef = 0.01,
                              .stop_when_solved = true};

static void usage(FILE *f) {
    const opts *d = &defaults;
    fprintf(f,
            "usage: %s --algo reinforce|dqn|a2c [options]\n"
            "  REINFORCE with a value baseline, DQN or A2C on CartPole-v1 (tools/rl_cartpole_torch.py's\n"
            "  recipes)\n\n"
            "options (defaults in brackets):\n"
            "  --algo NAME        reinforce, dqn or a2c [%s]\n"
            "  --seed N           environment, actions, replay batches and initial weights [%llu]\n"
            "  --runs K           K runs with seeds N .. N+K-1, one after the other [%lld]\n"
            "  --episodes N       at most N episodes a run [3000 reinforce, 5000 dqn, 20000 a2c]\n"
            "  --max-steps N      at most N env steps a run [500000 reinforce and a2c, 300000 dqn]\n"
            "  --lr X             Adam learning rate [%g]\n"
            "  --gamma X          discount [%g]\n"
            "  --hidden N         hidden width [%lld]\n"
            "  --no-stop          go on after solving until the budget is spent\n"
            "  --out-dir DIR      where the return curves (SVG) go [%s]\n"
            "  --device SPEC      gpu, cpu, P:D or part of a device name [$KILN_DEVICE, else the\n"
            "                     first GPU, else the first CPU]\n"
            "  --clip X           clip the gradient norm to X, 0: no clipping [10 dqn, 0.5 a2c]\n"
            "a2c only:\n"
            "  --envs N           environments stepped together [%lld]\n"
            "  --n-steps N        env steps (of each environment) between updates [%lld]\n"
            "  --ent-coef X       weight of the policy's entropy bonus [%g]\n"
            "dqn only:\n"
            "  --batch N          replay batch [%lld]\n"
            "  --buffer N         replay capacity (transitions) [%lld]\n"
            "  --learning-starts N  env steps before the first update [%lld]\n"
            "  --train-every N    env steps between updates [%lld]\n"
            "  --grad-steps N     gradient steps an update [%lld]\n"
            "  --target-every N   gradient steps between target network copies [%lld]\n"
            "  --eps-start X, --eps-end X, --eps-steps N   the epsilon schedule [%g, %g, %lld]\n"
            "  --double           Double DQN's target (the online network picks a')\n"
            "  --lr-decay N       > 0: the learning rate falls linearly to 0 over N gradient steps [%lld]\n"
            "  --tau X            > 0: after every gradient step the target moves to (1 - X) target +\n"
            "                     X Q (Polyak averaging) in place of --target-every's copies [0]\n"
            "  --help             this message\n",
            PROG, d->algo, (unsigned long long)d->seed, (long long)d->runs, d->lr, d->gamma, (long long)d->hidden,
            d->out_dir, (long long)d->envs, (long long)d->n_steps, d->ent_coef, (long long)d->batch,
            (long long)d->buffer, (long long)d->learning_starts, (long long)d->train_every, (long long)d->grad_steps,
            (long long)d->target_every, d->eps_start, d->eps_end, (long long)d->eps_steps, (long long)d->lr_decay);
}

static int parse(int argc, char **argv, opts *o) {
    setvbuf(stdout, NULL, _IOLBF, 0);
#define F(name, kind, field, lo, hi)                                                                                   \
    { name, kind, offsetof(opts, field), lo, hi }
    static const ex_flag flags[] = {
        F("--algo", EX_FLAG_STR, algo, 0, 0),
        F("--seed", EX_FLAG_SEED, seed, 0, 0),
        F("--runs", EX_FLAG_I64, runs, 1, 1000),
        F("--episodes", EX_FLAG_I64, episodes, 1, 100000000),
        F("--max-steps", EX_FLAG_I64, max_steps, 1, 1000000000),
        F("--lr", EX_FLAG_F64, lr, 0, 1e6),
        F("--gamma", EX_FLAG_F64, gamma, 0, 1),
        F("--hidden", EX_FLAG_I64, hidden, 1, 1 << 16),
        F("--no-stop", EX_FLAG_SWITCH, stop_when_solved, 0, 0),
        F("--out-dir", EX_FLAG_STR, out_dir, 0, 0),
        F("--device", EX_FLAG_STR, device, 0, 0),
        F("--batch", EX_FLAG_I64, batch, 1, 1 << 20),
        F("--buffer", EX_FLAG_I64, buffer, 1, 100000000),
        F("--learning-starts", EX_FLAG_I64, learning_starts, 0, 1000000000),
        F("--train-every", EX_FLAG_I64, train_every, 1, 1000000),
        F("--grad-steps", EX_FLAG_I64, grad_steps, 1, 1000000),
        F("--target-every", EX_FLAG_I64, target_every, 1, 1000000000),
        F("--eps-start", EX_FLAG_F64, eps_start, 0, 1),
        F("--eps-end", EX_FLAG_F64, eps_end, 0, 1),
        F("--clip", EX_FLAG_F64, clip, 0, 1e30),
        F("--double", EX_FLAG_SWITCH, double_q, 1, 0),
        F("--tau", EX_FLAG_F64, tau, 0, 1),
        F("--lr-decay", EX_FLAG_I64, lr_decay, 0, 1000000000),
        F("--eps-steps", EX_FLAG_I64, eps_steps, 1, 1000000000),
        F("--envs", EX_FLAG_I64, envs, 1, 4096),
        F("--n-steps", EX_FLAG_I64, n_steps, 1, 100000),
        F("--ent-coef", EX_FLAG_F64, ent_coef, 0, 1e6),
    };
#undef F
    int rc = ex_parse_flags(argc, argv, PROG, flags, (int)(sizeof flags / sizeof flags[0]), o, usage);
    if (rc != -1) return rc;
    bool reinforce = !strcmp(o->algo, "reinforce"), a2c = !strcmp(o->algo, "a2c");
    if (!reinforce && !a2c && strcmp(o->algo, "dqn")) {
        fprintf(stderr, "%s: --algo '%s': reinforce, dqn or a2c\n", PROG, o->algo);
        fprintf(stderr, "usage: %s [options]  (%s --help lists them)\n", PROG, PROG);
        return 2;
    }
    if (!o->episodes) o->episodes = reinforce ? 3000 : a2c ? 20000 : 5000;
    if (!o->max_steps) o->max_steps = reinforce || a2c ? 500000 : 300000;
    if (o->clip < 0) o->clip = a2c ? 0.5 : 10;
    return -1;
}

/* ---- acting ------------------------------------------------------------------------------- */

/* The network's output for one state: uploads it into x [1, 4] (a blocking write) and reads
 * the n outputs back: the step's two waits. Grad mode must be off. */
static kiln_status forward_one(kiln_module *net, kiln_tensor *x, const double s[4], float *out, int n) {
    kiln_ctx *ctx = kiln_module_ctx(net);
    float sf[4] = {(float)s[0], (float)s[1], (float)s[2], (float)s[3]};
    kiln_status st = kiln_copy_from_host(x, sf, sizeof sf);
    if (st != KILN_OK) return st;
    kiln_scope_begin(ctx);
    kiln_tensor *y = kiln_forward(net, x);
    st = y ? kiln_to_host(y, out, sizeof *out * (size_t)n) : kiln_error_status(ctx);
    kiln_scope_end(ctx);
    return st;
}

/* The network's outputs for n states (host rows of 4 floats) through x [n, 4]: as
 * forward_one, for A2C's environments at once. */
static kiln_status forward_many(kiln_module *net, kiln_tensor *x, const float *s, int64_t n, float *out, int nout) {
    kiln_ctx *ctx = kiln_module_ctx(net);
    kiln_status st = kiln_copy_from_host(x, s, sizeof *s * (size_t)n * 4);
    if (st != KILN_OK) return st;
    kiln_scope_begin(ctx);
    kiln_tensor *y = kiln_forward(net, x);
    st = y ? kiln_to_host(y, out, sizeof *out * (size_t)n * (size_t)nout) : kiln_error_status(ctx);
    kiln_scope_end(ctx);
    return st;
}

/* ---- one run -------------------------------------------------------------------------------- */

typedef struct run_result {
    int64_t solved_episode, episodes, env_steps;
    double seconds;
} run_result;

typedef struct agent {
    kiln_ctx *ctx;
    const opts *o;
    cp_rng rng;
    kiln_module *a, *b; /* reinforce: policy, value; dqn: Q, target */
    kiln_optim *opt;
    kiln_tensor *x1; /* [1, 4] input of acting */
    /* reinforce: the episode */
    float *ep_s;
    int32_t *ep_a;
    double *ep_r;
    /* dqn: the replay buffer (s, s', r, terminated) and action */
    float *rb;
    int32_t *rb_a;
    int64_t rb_n, rb_pos, grad_steps;
    float *batch;
    int32_t *batch_a;
    kiln_tensor **qp, **tp;
    int nq;
    /* a2c: the rollout of T = n_steps steps of N environments (rows t * N + e), the
     * environments and their running returns, x [N, 4], and the states V bootstraps from */
    cartpole *envs;
    double *env_ret, *ro_r;
    float *ro_s, *ro_trunc_s, *boot_s, *cur_s;
    int32_t *ro_a, *ro_boot; /* ro_boot: the row of boot_s of a truncated episode's final state, else -1 */
    uint8_t *ro_term;
    kiln_tensor *xn;
} agent;

/* The episodes of a run as they end: returns, the mean of the last 100, and the episode at
 * which that mean first reaches SOLVED_RETURN; every 10th episode prints a line. */
typedef struct episodes {
    double *returns, *avgs, sum100;
    int64_t n, cap, solved;
} episodes;

static void episode_end(episodes *e, double ret, int64_t steps, double eps) {
    if (e->n >= e->cap) return;
    e->returns[e->n] = ret;
    e->sum100 += ret - (e->n >= 100 ? e->returns[e->n - 100] : 0);
    e->n++;
    double avg100 = e->sum100 / (double)(e->n < 100 ? e->n : 100);
    e->avgs[e->n - 1] = avg100;
    if (e->solved < 0 && e->n >= 100 && avg100 >= SOLVED_RETURN) e->solved = e->n;
    if (e->n % 10 == 0) {
        double r10 = 0;
        for (int64_t i = e->n - 10; i < e->n; i++) r10 += e->returns[i];
        printf("episode=%lld env_steps=%lld return10=%.1f avg100=%.1f epsilon=%.3f\n", (long long)e->n,
               (long long)steps, r10 / 10, avg100, eps);
    }
}

/* REINFORCE's update after an episode of T steps. */
static kiln_status reinforce_update(agent *g, int64_t T) {
    kiln_ctx *ctx = g->ctx;
    float *G = malloc(sizeof *G * (size_t)T * 3), *V = G + T, *A = V + T;
    if (!G) {
        fprintf(stderr, "%s: out of host memory\n", PROG);
        return KILN_ERR_HOST_OUT_OF_MEMORY;
    }
    double run = 0;
    for (int64_t t = T - 1; t >= 0; t--) G[t] = (float)(run = g->ep_r[t] + g->o->gamma * run);
    kiln_status st = KILN_OK;
    kiln_scope_begin(ctx);
    kiln_tensor *S = kiln_from_host(ctx, g->ep_s, KILN_F32, 2, (int64_t[]){T, 4});
    kiln_tensor *Ai = kiln_from_host(ctx, g->ep_a, KILN_I32, 2, (int64_t[]){T, 1});
    kiln_tensor *Gt = kiln_from_host(ctx, G, KILN_F32, 1, (int64_t[]){T});
    kiln_tensor *v = S ? kiln_reshape(ctx, kiln_forward(g->b, S), 1, (int64_t[]){T}) : NULL;
    if (!Ai || !Gt || !v || (st = kiln_to_host(v, V, sizeof *V * (size_t)T)) != KILN_OK) goto fail;
    /* advantages G - V normalised over the episode (torch's unbiased std) */
    double mean = 0, var = 0;
    for (int64_t t = 0; t < T; t++) mean += (A[t] = G[t] - V[t]);
    mean /= (double)T;
    for (int64_t t = 0; t < T; t++) var += (A[t] - mean) * (A[t] - mean);
    double sd = T > 1 ? sqrt(var / (double)(T - 1)) : 1;
    if (T > 1)
        for (int64_t t = 0; t < T; t++) A[t] = (float)((A[t] - mean) / (sd + 1e-8));
    kiln_tensor *At = kiln_from_host(ctx, A, KILN_F32, 1, (int64_t[]){T});
    kiln_tensor *logp = kiln_log_softmax(ctx, kiln_forward(g->a, S), 1);
    kiln_tensor *lpa = logp ? kiln_reshape(ctx, kiln_gather(ctx, logp, 1, Ai), 1, (int64_t[]){T}) : NULL;
    kiln_tensor *pl = lpa && At ? kiln_neg(ctx, kiln_mean(ctx, kiln_mul(ctx, lpa, At), 0, NULL, false)) : NULL;
    kiln_tensor *vl = kiln_mse_loss(ctx, v, Gt, KILN_MEAN);
    kiln_tensor *loss = pl && vl ? kiln_add(ctx, pl, kiln_mul_scalar(ctx, vl, 0.5f)) : NULL;
    if (!loss) goto fail;
    if ((st = kiln_optim_zero_grad(g->opt)) != KILN_OK || (st = kiln_backward(loss)) != KILN_OK ||
        (st = kiln_optim_step(g->opt)) != KILN_OK)
        goto fail;
    kiln_scope_end(ctx);
    free(G);
    return KILN_OK;
fail:
    kiln_scope_end(ctx);
    free(G);
    return st != KILN_OK ? st : kiln_error_status(ctx);
}

/* A DQN step on a batch drawn from the replay buffer, and the target copy when it is due. */
static kiln_status dqn_update(agent *g) {
    const int64_t B = g->o->batch;
    for (int64_t i = 0; i < B; i++) {
        int64_t j = cp_rng_below(&g->rng, g->rb_n);
        const float *src = g->rb + j * 10;
        memcpy(g->batch + i * 10, src, sizeof(float) * 10);
        g->batch[i * 10 + 9] = (float)(g->o->gamma * (1.0 - src[9]));
        g->batch_a[i] = g->rb_a[j];
    }
    if (g->o->lr_decay > 0) {
        double f = 1.0 - (double)g->grad_steps / (double)g->o->lr_decay;
        kiln_status st = kiln_optim_group_set_lr(g->opt, 0, g->o->lr * (f > 0 ? f : 0));
        if (st != KILN_OK) return st;
    }
    dqn_cfg c = {g->qp, g->nq, g->o->clip, g->o->double_q};
    kiln_status st = dqn_step(g->a, g->b, g->opt, &c, g->batch, g->batch_a, B, NULL);
    if (st != KILN_OK) return st;
    g->grad_steps++;
    if (g->o->tau > 0) { /* target = target + tau (Q - target) */
        kiln_ctx *ctx = g->ctx;
        kiln_scope_begin(ctx);
        for (int i = 0; i < g->nq && st == KILN_OK; i++) {
            kiln_tensor *t =
                kiln_add(ctx, g->tp[i], kiln_mul_scalar(ctx, kiln_sub(ctx, g->qp[i], g->tp[i]), (float)g->o->tau));
            st = t ? kiln_copy(g->tp[i], t) : kiln_error_status(ctx);
        }
        kiln_scope_end(ctx);
        return st;
    }
    return g->grad_steps % g->o->target_every == 0 ? copy_params(g->tp, g->qp, g->nq) : KILN_OK;
}

/* A2C's update on the rollout of T steps of N environments: V of the bootstrap states
 * (nboot rows of boot_s: each environment's state after the rollout, then the final states
 * of the truncated episodes in rollout order), n-step returns, one optimizer step. */
static kiln_status a2c_update(agent *g, int64_t T, int64_t N, int64_t nboot) {
    kiln_ctx *ctx = g->ctx;
    const double gamma = g->o->gamma;
    int64_t M = T * N;
    float *vb = malloc(sizeof *vb * (size_t)(nboot + 3 * M)), *V = vb + nboot, *R = V + M, *A = R + M;
    if (!vb) {
        fprintf(stderr, "%s: out of host memory\n", PROG);
        return KILN_ERR_HOST_OUT_OF_MEMORY;
    }
    kiln_status st = KILN_OK;
    kiln_scope_begin(ctx);
    bool grad = kiln_ctx_set_grad_enabled(ctx, false);
    kiln_tensor *Sb = kiln_from_host(ctx, g->boot_s, KILN_F32, 2, (int64_t[]){nboot, 4});
    kiln_tensor *vbt = Sb ? kiln_forward(g->b, Sb) : NULL;
    kiln_ctx_set_grad_enabled(ctx, grad);
    kiln_tensor *S = kiln_from_host(ctx, g->ro_s, KILN_F32, 2, (int64_t[]){M, 4});
    kiln_tensor *Ai = kiln_from_host(ctx, g->ro_a, KILN_I32, 2, (int64_t[]){M, 1});
    kiln_tensor *v = S ? kiln_reshape(ctx, kiln_forward(g->b, S), 1, (int64_t[]){M}) : NULL;
    if (!vbt || !Ai || !v || (st = kiln_to_host(vbt, vb, sizeof *vb * (size_t)nboot)) != KILN_OK ||
        (st = kiln_to_host(v, V, sizeof *V * (size_t)M)) != KILN_OK)
        goto fail;
    for (int64_t e = 0; e < N; e++) {
        double ret = vb[e];
        for (int64_t t = T - 1; t >= 0; t--) {
            int64_t i = t * N + e;
            if (g->ro_term[i])
                ret = g->ro_r[i];
            else if (g->ro_boot[i] >= 0)
                ret = g->ro_r[i] + gamma * vb[g->ro_boot[i]];
            else
                ret = g->ro_r[i] + gamma * ret;
            R[i] = (float)ret;
        }
    }
    for (int64_t i = 0; i < M; i++) A[i] = R[i] - V[i];
    kiln_tensor *Rt = kiln_from_host(ctx, R, KILN_F32, 1, (int64_t[]){M});
    kiln_tensor *At = kiln_from_host(ctx, A, KILN_F32, 1, (int64_t[]){M});
    kiln_tensor *logp = kiln_log_softmax(ctx, kiln_forward(g->a, S), 1);
    kiln_tensor *lpa = logp ? kiln_reshape(ctx, kiln_gather(ctx, logp, 1, Ai), 1, (int64_t[]){M}) : NULL;
    kiln_tensor *pl = lpa && At ? kiln_neg(ctx, kiln_mean(ctx, kiln_mul(ctx, lpa, At), 0, NULL, false)) : NULL;
    /* the mean entropy -sum_a p log p over the rollout */
    kiln_tensor *plogp = logp ? kiln_mul(ctx, kiln_exp(ctx, logp), logp) : NULL;
    kiln_tensor *ent = plogp ? kiln_mul_scalar(ctx, kiln_sum(ctx, plogp, 0, NULL, false), -1.0f / (float)M) : NULL;
    kiln_tensor *vl = Rt ? kiln_mse_loss(ctx, v, Rt, KILN_MEAN) : NULL;
    kiln_tensor *loss = pl && vl && ent ? kiln_sub(ctx, kiln_add(ctx, pl, kiln_mul_scalar(ctx, vl, 0.5f)),
                                                   kiln_mul_scalar(ctx, ent, (float)g->o->ent_coef))
                                        : NULL;
    if (!loss) goto fail;
    if ((st = kiln_optim_zero_grad(g->opt)) != KILN_OK || (st = kiln_backward(loss)) != KILN_OK) goto fail;
    if (g->o->clip > 0 && !kiln_clip_grad_norm_tensor(ctx, g->nq, g->qp, g->o->clip, 2.0)) goto fail;
    if ((st = kiln_optim_step(g->opt)) != KILN_OK) goto fail;
    kiln_scope_end(ctx);
    free(vb);
    return KILN_OK;
fail:
    kiln_scope_end(ctx);
    free(vb);
    return st != KILN_OK ? st : kiln_error_status(ctx);
}

/* A2C's loop: rollouts of n_steps steps of every environment and an update after each,
 * until the episode or step budget is spent (or the task is solved). */
static kiln_status a2c_run(agent *g, episodes *ep, int64_t *steps) {
    const opts *o = g->o;
    const int64_t N = o->envs, T = o->n_steps;
    float *out = malloc(sizeof *out * (size_t)N * 2);
    if (!out) return KILN_ERR_HOST_OUT_OF_MEMORY;
    for (int64_t e = 0; e < N; e++) cartpole_reset(&g->envs[e], &g->rng), g->env_ret[e] = 0;
    kiln_status st = KILN_OK;
    while (ep->n < o->episodes && *steps < o->max_steps && !(ep->solved > 0 && o->stop_when_solved)) {
        int64_t ntrunc = 0;
        for (int64_t t = 0; t < T; t++) {
            for (int64_t e = 0; e < N; e++)
                for (int i = 0; i < 4; i++) g->cur_s[e * 4 + i] = (float)g->envs[e].s[i];
            bool grad = kiln_ctx_set_grad_enabled(g->ctx, false);
            st = forward_many(g->a, g->xn, g->cur_s, N, out, 2);
            kiln_ctx_set_grad_enabled(g->ctx, grad);
            if (st != KILN_OK) goto done;
            for (int64_t e = 0; e < N; e++) {
                int64_t i = t * N + e;
                double p1 = 1.0 / (1.0 + exp((double)out[e * 2] - (double)out[e * 2 + 1]));
                int act = cp_rng_uniform(&g->rng) < p1;
                memcpy(g->ro_s + i * 4, g->cur_s + e * 4, sizeof(float) * 4);
                g->ro_a[i] = act;
                bool term, trunc;
                double r = cartpole_step(&g->envs[e], act, &term, &trunc);
                (*steps)++;
                g->env_ret[e] += r;
                g->ro_r[i] = r;
                g->ro_term[i] = term;
                g->ro_boot[i] = -1;
                if (!term && trunc) {
                    for (int k = 0; k < 4; k++) g->ro_trunc_s[ntrunc * 4 + k] = (float)g->envs[e].s[k];
                    g->ro_boot[i] = (int32_t)(N + ntrunc++);
                }
                if (term || trunc) {
                    episode_end(ep, g->env_ret[e], *steps, 0.0);
                    g->env_ret[e] = 0;
                    cartpole_reset(&g->envs[e], &g->rng);
                }
            }
        }
        for (int64_t e = 0; e < N; e++)
            for (int i = 0; i < 4; i++) g->boot_s[e * 4 + i] = (float)g->envs[e].s[i];
        memcpy(g->boot_s + N * 4, g->ro_trunc_s, sizeof(float) * 4 * (size_t)ntrunc);
        if ((st = a2c_update(g, T, N, N + ntrunc)) != KILN_OK) goto done;
    }
done:
    free(out);
    return st;
}

static void agent_free(agent *g) {
    kiln_optim_free(g->opt);
    kiln_module_free(g->a);
    kiln_module_free(g->b);
    kiln_tensor_free(g->x1);
    free(g->ep_s);
    free(g->ep_a);
    free(g->ep_r);
    free(g->rb);
    free(g->rb_a);
    free(g->batch);
    free(g->batch_a);
    free(g->qp);
    free(g->tp);
    free(g->envs);
    free(g->env_ret);
    free(g->ro_r);
    free(g->ro_s);
    free(g->ro_trunc_s);
    free(g->boot_s);
    free(g->cur_s);
    free(g->ro_a);
    free(g->ro_term);
    free(g->ro_boot);
    kiln_tensor_free(g->xn);
}

static int run(kiln_ctx *ctx, const opts *o, uint64_t seed, run_result *res) {
    const bool dqn = !strcmp(o->algo, "dqn"), a2c = !strcmp(o->algo, "a2c");
    const int64_t H = o->hidden;
    int rc = 1;
    agent g = {.ctx = ctx, .o = o, .rng = {seed}};
    double *returns = malloc(sizeof *returns * (size_t)o->episodes);
    double *avgs = calloc((size_t)o->episodes, sizeof *avgs);
    if (!returns || !avgs) goto oom;
    kiln_manual_seed(ctx, seed);
    int np = 0;
    kiln_tensor **params = NULL;
    if (dqn) {
        g.a = mlp(ctx, 4, (int64_t[]){4, H, H, 2});
        g.b = mlp(ctx, 4, (int64_t[]){4, H, H, 2});
        if (!g.a || !g.b) goto fail;
        g.qp = params_of(g.a, &g.nq);
        g.tp = params_of(g.b, &np);
        if (!g.qp || !g.tp) goto oom;
        if (copy_params(g.tp, g.qp, g.nq) != KILN_OK) goto fail;
        kiln_module_set_requires_grad(g.b, false);
        g.rb = malloc(sizeof *g.rb * (size_t)o->buffer * 10);
        g.rb_a = malloc(sizeof *g.rb_a * (size_t)o->buffer);
        g.batch = malloc(sizeof *g.batch * (size_t)o->batch * 10);
        g.batch_a = malloc(sizeof *g.batch_a * (size_t)o->batch);
        if (!g.rb || !g.rb_a || !g.batch || !g.batch_a) goto oom;
        params = g.qp, np = g.nq;
    } else {
        g.a = mlp(ctx, 3, (int64_t[]){4, H, 2});
        g.b = mlp(ctx, 3, (int64_t[]){4, H, 1});
        if (!g.a || !g.b) goto fail;
        int na, nb;
        kiln_tensor **pa = params_of(g.a, &na), **pb = params_of(g.b, &nb);
        params = pa && pb ? realloc(pa, sizeof *pa * (size_t)(na + nb)) : NULL;
        if (!params) {
            free(pa);
            free(pb);
            goto oom;
        }
        memcpy(params + na, pb, sizeof *pb * (size_t)nb);
        free(pb);
        np = na + nb;
        g.qp = params; /* freed with the agent */
        g.nq = np;
        if (a2c) {
            size_t N = (size_t)o->envs, M = N * (size_t)o->n_steps;
            g.envs = malloc(sizeof *g.envs * N);
            g.env_ret = malloc(sizeof *g.env_ret * N);
            g.ro_r = malloc(sizeof *g.ro_r * M);
            g.ro_s = malloc(sizeof *g.ro_s * M * 4);
            g.ro_trunc_s = malloc(sizeof *g.ro_trunc_s * M * 4);
            g.boot_s = malloc(sizeof *g.boot_s * (N + M) * 4);
            g.cur_s = malloc(sizeof *g.cur_s * N * 4);
            g.ro_a = malloc(sizeof *g.ro_a * M);
            g.ro_boot = malloc(sizeof *g.ro_boot * M);
            g.ro_term = malloc(M);
            if (!g.envs || !g.env_ret || !g.ro_r || !g.ro_s || !g.ro_trunc_s || !g.boot_s || !g.cur_s || !g.ro_a ||
                !g.ro_boot || !g.ro_term)
                goto oom;
            g.xn = kiln_tensor_keep(kiln_zeros(ctx, 2, (int64_t[]){o->envs, 4}));
            if (!g.xn) goto fail;
        } else {
            g.ep_s = malloc(sizeof *g.ep_s * CP_MAX_STEPS * 4);
            g.ep_a = malloc(sizeof *g.ep_a * CP_MAX_STEPS);
            g.ep_r = malloc(sizeof *g.ep_r * CP_MAX_STEPS);
            if (!g.ep_s || !g.ep_a || !g.ep_r) goto oom;
        }
    }
    kiln_adam_opts ao = kiln_adam_defaults();
    ao.lr = o->lr;
    g.opt = kiln_adam(ctx, params, np, &ao);
    g.x1 = kiln_tensor_keep(kiln_zeros(ctx, 2, (int64_t[]){1, 4}));
    if (!g.opt || !g.x1) goto fail;
    if (dqn)
        printf(
            "seed %llu: DQN, Q network 4-%lld-%lld-2 (%lld parameters), Adam lr %g%s, batch %lld, buffer %lld, "
            "%lld gradient step(s) every %lld env steps, target %s %g, epsilon %g -> %g over %lld steps, clip %g%s\n",
            (unsigned long long)seed, (long long)H, (long long)H, (long long)kiln_module_num_elements(g.a), o->lr,
            o->lr_decay > 0 ? " decaying" : "", (long long)o->batch, (long long)o->buffer, (long long)o->grad_steps,
            (long long)o->train_every, o->tau > 0 ? "Polyak-averaged, tau" : "copied every N gradient steps, N =",
            o->tau > 0 ? o->tau : (double)o->target_every, o->eps_start, o->eps_end, (long long)o->eps_steps, o->clip,
            o->double_q ? ", Double DQN" : "");
    else if (a2c)
        printf("seed %llu: A2C, policy 4-%lld-2 and value 4-%lld-1 (%lld parameters), Adam lr %g, gamma %g, %lld "
               "environments, %lld steps a rollout, entropy %g, clip %g\n",
               (unsigned long long)seed, (long long)H, (long long)H,
               (long long)(kiln_module_num_elements(g.a) + kiln_module_num_elements(g.b)), o->lr, o->gamma,
               (long long)o->envs, (long long)o->n_steps, o->ent_coef, o->clip);
    else
        printf("seed %llu: REINFORCE, policy 4-%lld-2 and value 4-%lld-1 (%lld parameters), Adam lr %g, gamma %g\n",
               (unsigned long long)seed, (long long)H, (long long)H,
               (long long)(kiln_module_num_elements(g.a) + kiln_module_num_elements(g.b)), o->lr, o->gamma);

    char path[4096], title[160];
    snprintf(path, sizeof path, "%s/%s_%s_seed%llu.svg", o->out_dir, PROG, o->algo, (unsigned long long)seed);
    snprintf(title, sizeof title, "CartPole-v1 %s, seed %llu",
             dqn   ? "DQN"
             : a2c ? "A2C"
                   : "REINFORCE",
             (unsigned long long)seed);
    kiln_plot_series curve[2] = {{"return", returns}, {"mean of the last 100", avgs}};
    /* the folder writable? (found out before the run, not after it) */
    if (kiln_plot_curves(path, title, "episode", "return", 0, NULL, 2, curve) != KILN_OK) {
        fprintf(stderr, "%s: %s\n", PROG, kiln_last_error());
        goto done;
    }

    cartpole env;
    episodes eps_log = {.returns = returns, .avgs = avgs, .cap = o->episodes, .solved = -1};
    int64_t steps = 0;
    double eps = o->eps_start, t0 = ex_now_ms();
    if (a2c) {
        kiln_status st = a2c_run(&g, &eps_log, &steps);
        if (st == KILN_ERR_HOST_OUT_OF_MEMORY) goto oom;
        if (st != KILN_OK) goto fail;
    }
    while (!a2c && eps_log.n < o->episodes && steps < o->max_steps) {
        cartpole_reset(&env, &g.rng);
        double ep_ret = 0;
        int64_t T = 0;
        for (;;) {
            float out[2];
            int act;
            bool grad = kiln_ctx_set_grad_enabled(ctx, false);
            if (dqn) {
                eps = o->eps_start + (o->eps_end - o->eps_start) * (double)steps / (double)o->eps_steps;
                if (eps < o->eps_end) eps = o->eps_end;
                if (cp_rng_uniform(&g.rng) < eps) {
                    act = (int)cp_rng_below(&g.rng, 2);
                } else {
                    kiln_status st = forward_one(g.a, g.x1, env.s, out, 2);
                    kiln_ctx_set_grad_enabled(ctx, grad);
                    if (st != KILN_OK) goto fail;
                    act = out[1] > out[0]; /* argmax, the first on ties */
                }
            } else {
                kiln_status st = forward_one(g.a, g.x1, env.s, out, 2);
                kiln_ctx_set_grad_enabled(ctx, grad);
                if (st != KILN_OK) goto fail;
                double p1 = 1.0 / (1.0 + exp((double)out[0] - (double)out[1])); /* softmax's second entry */
                act = cp_rng_uniform(&g.rng) < p1;
                for (int i = 0; i < 4; i++) g.ep_s[T * 4 + i] = (float)env.s[i];
                g.ep_a[T] = act;
            }
            kiln_ctx_set_grad_enabled(ctx, grad);
            double s_prev[4];
            memcpy(s_prev, env.s, sizeof s_prev);
            bool term, trunc;
            double r = cartpole_step(&env, act, &term, &trunc);
            steps++;
            ep_ret += r;
            if (dqn) {
                float *row = g.rb + g.rb_pos * 10;
                for (int i = 0; i < 4; i++) row[i] = (float)s_prev[i], row[4 + i] = (float)env.s[i];
                row[8] = (float)r;
                row[9] = term ? 1.0f : 0.0f;
                g.rb_a[g.rb_pos] = act;
                g.rb_pos = (g.rb_pos + 1) % o->buffer;
                if (g.rb_n < o->buffer) g.rb_n++;
                if (steps >= o->learning_starts && steps % o->train_every == 0)
                    for (int64_t k = 0; k < o->grad_steps; k++)
                        if (dqn_update(&g) != KILN_OK) goto fail;
            } else {
                g.ep_r[T] = r;
            }
            T++;
            if (term || trunc || steps >= o->max_steps) break;
        }
        if (!dqn && reinforce_update(&g, T) != KILN_OK) goto fail;
        episode_end(&eps_log, ep_ret, steps, dqn ? eps : 0.0);
        if (eps_log.solved > 0 && o->stop_when_solved) break;
    }
    int64_t ep = eps_log.n, solved = eps_log.solved;
    double secs = (ex_now_ms() - t0) / 1e3;
    *res = (run_result){solved, ep, steps, secs};
    printf("seed=%llu solved_episode=%lld episodes=%lld env_steps=%lld seconds=%.1f env_steps_per_s=%.1f\n",
           (unsigned long long)seed, (long long)solved, (long long)ep, (long long)steps, secs,
           secs > 0 ? (double)steps / secs : 0.0);
    if (kiln_plot_curves(path, title, "episode", "return", (int)ep, NULL, 2, curve) != KILN_OK) {
        fprintf(stderr, "%s: %s\n", PROG, kiln_last_error());
        goto done;
    }
    printf("return curve: %s\n", path);
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "%s: out of host memory\n", PROG);
    goto done;
fail:
    fprintf(stderr, "%s: seed %llu: %s\n", PROG, (unsigned long long)seed, kiln_error_message(ctx));
done:
    agent_free(&g);
    free(returns);
    free(avgs);
    return rc;
}

int main(int argc, char **argv) {
    opts o = defaults;
    int rc = parse(argc, argv, &o);
    if (rc >= 0) return rc;
    ex_opts eo = {.device = o.device};
    kiln_ctx *ctx = ex_open(PROG, &eo);
    if (!ctx) return 1;
    int64_t solved_runs = 0, steps = 0;
    double secs = 0;
    for (int64_t k = 0; k < o.runs && rc < 0; k++) {
        run_result r = {0};
        if (run(ctx, &o, o.seed + (uint64_t)k, &r) != 0) rc = 1;
        solved_runs += r.solved_episode > 0;
        steps += r.env_steps;
        secs += r.seconds;
    }
    if (rc < 0) {
        printf("solved_runs=%lld\n", (long long)solved_runs);
        printf("env_steps_per_s=%.1f\n", secs > 0 ? (double)steps / secs : 0.0);
        rc = 0;
    }
    kiln_close(ctx);
    return rc;
}
#endif
