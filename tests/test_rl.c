/* tests/test_rl.c - examples/rl_cartpole's parts: the CartPole-v1 environment
 * (examples/cartpole.h) and the DQN update (its dqn_step, taken from the example's source).
 *
 * What is checked, and how each check can fail:
 *   rng       splitmix64's first outputs for seed 0 (the published sequence); uniform draws
 *             in [0, 1); a reset's state in [-0.05, 0.05)^4.
 *   dynamics  trajectories under fixed action sequences from fixed initial states against a
 *             reference written here from Barto, Sutton & Anderson's form of the equations
 *             (θ'' = (g sin θ + cos θ (-F - m_p l θ'^2 sin θ)/(m_c + m_p)) / (l (4/3 -
 *             m_p cos^2 θ/(m_c + m_p))), x'' = (F + m_p l (θ'^2 sin θ - θ'' cos θ))/(m_c +
 *             m_p)), in double: every state within 1e-12 relative, and the step at which
 *             the episode ends and how (terminated or truncated) the same. A swapped sign,
 *             mass or limit, a missing Euler term or the half-length as the full length is
 *             off by far more; a controller that balances the pole must be truncated at
 *             exactly step 500 and not terminated.
 *   dqn       three dqn_step calls (Huber loss of Q(s, a) against r + gamma max Q_target(s')
 *             (1 - done), one Adam step each; the second and third with the gradient norm
 *             clipped to 0.5, below the norm; the third with Double DQN's target
 *             Q_target(s', argmax Q(s'))) on PyTorch's weights and batches
 *             (tests/golden/gen_rl.py): the loss before each step (rtol 1e-5) and every Q
 *             parameter after it (atol 1e-5, rtol 1e-4: the parameters move by about lr =
 *             0.01 a step, so a wrong target, action column, Huber part, clip or missing
 *             (1 - done) is off by O(lr)); the target network is left unchanged, and
 *             copy_params makes it equal to the Q network.
 */
#define RL_CARTPOLE_NO_MAIN
#include "../examples/rl_cartpole.c"

#include "golden.h"

/* ---- the environment ------------------------------------------------------------------ */

static void test_rng(void) {
    cp_rng r = {0};
    /* splitmix64 from seed 0: 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f */
    uint64_t a = cp_rng_next(&r), b = cp_rng_next(&r), c = cp_rng_next(&r);
    CHECK(a == 0xe220a8397b1dcdafull && b == 0x6e789e6aa1b965f4ull && c == 0x06c45d188009454full,
          "splitmix64(0): %016llx %016llx %016llx", (unsigned long long)a, (unsigned long long)b,
          (unsigned long long)c);
    cp_rng u = {7};
    bool in = true;
    for (int i = 0; i < 100000; i++) {
        double x = cp_rng_uniform(&u);
        in &= x >= 0 && x < 1;
        int64_t k = cp_rng_below(&u, 3);
        in &= k >= 0 && k < 3;
    }
    CHECK(in, "uniform draws outside [0, 1) or below(3) outside [0, 3)");
    cartpole e;
    bool ok = true;
    for (int i = 0; i < 1000; i++) {
        cartpole_reset(&e, &u);
        for (int j = 0; j < 4; j++) ok &= e.s[j] >= -0.05 && e.s[j] < 0.05;
        ok &= e.steps == 0;
    }
    CHECK(ok, "reset states outside [-0.05, 0.05)");
}

/* Barto, Sutton & Anderson (1983), eq. (21)-(22) without friction, and an Euler step. */
static void ref_step(double s[4], int action) {
    const double g = 9.8, mc = 1.0, mp = 0.1, l = 0.5, tau = 0.02;
    double F = action ? 10.0 : -10.0, th = s[2], w = s[3];
    double thacc = (g * sin(th) + cos(th) * ((-F - mp * l * w * w * sin(th)) / (mc + mp))) /
                   (l * (4.0 / 3.0 - mp * cos(th) * cos(th) / (mc + mp)));
    double xacc = (F + mp * l * (w * w * sin(th) - thacc * cos(th))) / (mc + mp);
    double n[4] = {s[0] + tau * s[1], s[1] + tau * xacc, s[2] + tau * s[3], s[3] + tau * thacc};
    memcpy(s, n, sizeof n);
}

/* Runs both from s0 with action(t, state) until the episode ends; returns the steps. */
static int compare_trajectory(const char *what, const double s0[4], int (*action)(int t, const double *s)) {
    cartpole e = {.steps = 0};
    double r[4];
    memcpy(e.s, s0, sizeof e.s);
    memcpy(r, s0, sizeof r);
    double worst = 0;
    for (int t = 0; t < 1000; t++) {
        int a = action(t, r);
        bool term, trunc;
        double rew = cartpole_step(&e, a, &term, &trunc);
        ref_step(r, a);
        for (int i = 0; i < 4; i++) {
            double err = fabs(e.s[i] - r[i]) / (1e-300 + fabs(r[i]) + 1e-3);
            if (err > worst) worst = err;
        }
        bool rterm = fabs(r[0]) > 2.4 || fabs(r[2]) > 12 * 3.14159265358979323846 / 180;
        bool rtrunc = !rterm && t + 1 == 500;
        CHECK(rew == 1.0, "%s: step %d: reward %g", what, t + 1, rew);
        if (term != rterm || trunc != rtrunc) {
            CHECK(0, "%s: step %d: terminated %d truncated %d, the reference %d %d", what, t + 1, term, trunc, rterm,
                  rtrunc);
            return t + 1;
        }
        if (term || trunc) {
            CHECK(worst <= 1e-12, "%s: the states differ from the reference by %.3g (relative)", what, worst);
            CHECK(e.steps == t + 1, "%s: steps %d after %d steps", what, e.steps, t + 1);
            return t + 1;
        }
    }
    CHECK(0, "%s: no end after 1000 steps", what);
    return 1000;
}

static int act_pattern(int t, const double *s) {
    (void)s;
    return (t * 7 + t / 3) % 5 < 2; /* an irregular, fixed sequence */
}
static int act_right(int t, const double *s) {
    (void)t, (void)s;
    return 1;
}
/* pushes toward the side the pole leans and moves to (a stabilising linear controller) */
static int act_balance(int t, const double *s) {
    (void)t;
    return 0.05 * s[0] + 0.2 * s[1] + 10 * s[2] + 2 * s[3] > 0;
}

static void test_dynamics(void) {
    const double s0[4] = {0.01, -0.02, 0.03, 0.04}, s1[4] = {-0.04, 0.03, -0.02, 0.01};
    int n = compare_trajectory("pattern", s0, act_pattern);
    CHECK(n > 5 && n < 500, "pattern: the episode lasted %d steps (a fall expected)", n);
    n = compare_trajectory("push right", s1, act_right);
    CHECK(n > 5 && n < 100, "push right: the episode lasted %d steps (a fall expected)", n);
    /* the same pushes from the reset's extremes */
    const double s2[4] = {0.0499, 0.0499, 0.0499, 0.0499};
    compare_trajectory("pattern from the corner", s2, act_pattern);
    n = compare_trajectory("balance", s0, act_balance);
    CHECK(n == 500, "balance: the episode lasted %d steps (truncation at 500 expected)", n);
}

/* ---- the DQN step ---------------------------------------------------------------------- */

static golden gr;

static void load(kiln_module *m, const char *prefix) {
    kiln_named_tensor st[16];
    int n = kiln_module_state(m, st, 16);
    CHECK(n == 6, "%s: %d state tensors", prefix, n);
    for (int i = 0; i < n && i < 16; i++) {
        char key[2400];
        snprintf(key, sizeof key, "%s%s", prefix, st[i].name);
        const golden_tensor *w = golden_get(&gr, key);
        if (!w) continue;
        CHECK(kiln_copy_from_host(st[i].tensor, w->f, sizeof(float) * (size_t)w->numel) == KILN_OK, "%s: %s", key,
              kiln_last_error());
    }
}

static void compare_params(kiln_module *m, const char *prefix) {
    kiln_named_tensor st[16];
    int n = kiln_module_state(m, st, 16);
    for (int i = 0; i < n && i < 16; i++) {
        char key[2400];
        snprintf(key, sizeof key, "%s%s", prefix, st[i].name);
        golden_compare(key, st[i].tensor, golden_get(&gr, key), 1e-5, 1e-4);
    }
}

static void test_dqn(kiln_ctx *ctx) {
    kiln_module *q = mlp(ctx, 4, (int64_t[]){4, 16, 16, 2}), *t = mlp(ctx, 4, (int64_t[]){4, 16, 16, 2});
    CHECK(q && t, "mlp: %s", kiln_error_message(ctx));
    if (!q || !t) goto done;
    load(q, "q.");
    load(t, "target.");
    kiln_module_set_requires_grad(t, false);
    int nq, nt;
    kiln_tensor **qp = params_of(q, &nq), **tp = params_of(t, &nt);
    kiln_adam_opts ao = kiln_adam_defaults();
    ao.lr = 0.01;
    kiln_optim *opt = kiln_adam(ctx, qp, nq, &ao);
    CHECK(opt != NULL, "kiln_adam: %s", kiln_error_message(ctx));
    for (int k = 1; k <= 3 && opt; k++) {
        char key[64];
#define G(name) (snprintf(key, sizeof key, "b%d." name, k), golden_get(&gr, key))
        const golden_tensor *s = G("s"), *a = G("a"), *r = G("r"), *s2 = G("s2"), *d = G("done"), *l = G("loss");
        if (!s || !a || !r || !s2 || !d || !l) break;
        enum { B = 6 };
        float packed[B * 10];
        for (int i = 0; i < B; i++) {
            for (int j = 0; j < 4; j++) packed[i * 10 + j] = s->f[i * 4 + j], packed[i * 10 + 4 + j] = s2->f[i * 4 + j];
            packed[i * 10 + 8] = r->f[i];
            packed[i * 10 + 9] = (float)(0.99 * (1.0 - d->f[i]));
        }
        float loss = NAN;
        /* b1 plain, b2 with the norm clipped to 0.5, b3 also Double DQN (gen_rl.py) */
        dqn_cfg c = {qp, nq, k == 1 ? 0.0 : 0.5, k == 3};
        kiln_status st = dqn_step(q, t, opt, &c, packed, a->i, B, &loss);
        CHECK(st == KILN_OK, "dqn_step %d: %s", k, kiln_error_message(ctx));
        CHECK(fabs(loss - l->f[0]) <= 1e-5 * fabs(l->f[0]) + 1e-6, "step %d: loss %.8g, PyTorch %.8g", k, loss,
              l->f[0]);
        snprintf(key, sizeof key, "b%d.q.", k);
        compare_params(q, key);
        compare_params(t, "target.");
#undef G
    }
    /* the target copy */
    CHECK(copy_params(tp, qp, nq) == KILN_OK, "copy_params: %s", kiln_error_message(ctx));
    compare_params(t, "b3.q.");
    kiln_optim_free(opt);
    free(qp);
    free(tp);
done:
    kiln_module_free(q);
    kiln_module_free(t);
    CHECK_OK(ctx);
}

int main(void) {
    test_rng();
    test_dynamics();
    if (!golden_open(&gr, "rl")) return 1;
    H_FOR_EACH_DEVICE(test_dqn);
    golden_close(&gr);
    return h_finish();
}
