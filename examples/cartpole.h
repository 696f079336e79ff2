/* examples/cartpole.h - the CartPole-v1 environment for examples/rl_cartpole and
 * tests/test_rl (header-only; not library API).
 *
 * The classic cart-pole of Barto, Sutton & Anderson, "Neuronlike adaptive elements that can
 * solve difficult learning control problems", IEEE Trans. SMC 13(5), 1983, with the equations
 * of motion (pole friction and cart friction zero) written as in Gym's
 * gym/envs/classic_control/cartpole.py (CartPoleEnv, "euler" integrator) and the limits of
 * its CartPole-v1 registration:
 *
 *   temp     = (F + m_p l θ'^2 sin θ) / (m_c + m_p)
 *   θ''      = (g sin θ - cos θ · temp) / (l (4/3 - m_p cos^2 θ / (m_c + m_p)))
 *   x''      = temp - m_p l θ'' cos θ / (m_c + m_p)
 *   x  += τ x',  x' += τ x'',  θ += τ θ',  θ' += τ θ''     (explicit Euler, τ = 0.02 s)
 *
 * with g = 9.8, m_c = 1.0, m_p = 0.1, l = 0.5 (half the pole's length), F = ±10 (action 1
 * pushes right, 0 left). An episode terminates when |x| > 2.4 or |θ| > 12° and is truncated
 * after 500 steps; every step, the terminating one included, earns reward 1. The initial
 * state is uniform in [-0.05, 0.05)^4. The state is kept in double precision, as Gym's
 * Python floats.
 *
 * The random numbers (initial states, and whatever else the agents draw) come from
 * splitmix64 (Steele, Lea & Flood 2014), a small generator tools/rl_cartpole_torch.py
 * reproduces bit for bit, so a seed gives both programs the same initial states.
 */
#ifndef KILN_EXAMPLES_CARTPOLE_H
#define KILN_EXAMPLES_CARTPOLE_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#define CP_GRAVITY 9.8
#define CP_MASSCART 1.0
#define CP_MASSPOLE 0.1
#define CP_LENGTH 0.5 /* half the pole's length */
#define CP_FORCE_MAG 10.0
#define CP_TAU 0.02
#define CP_X_LIMIT 2.4
#define CP_THETA_LIMIT (12.0 * 2.0 * 3.14159265358979323846 / 360.0)
#define CP_MAX_STEPS 500

/* splitmix64: uniform 64-bit words from a 64-bit state. */
typedef struct cp_rng {
    uint64_t x;
} cp_rng;

static inline uint64_t cp_rng_next(cp_rng *r) {
    uint64_t z = (r->x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double cp_rng_uniform(cp_rng *r) { return (double)(cp_rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }

/* Uniform integer in [0, n). */
static inline int64_t cp_rng_below(cp_rng *r, int64_t n) { return (int64_t)(cp_rng_uniform(r) * (double)n); }

typedef struct cartpole {
    double s[4]; /* x, x', θ, θ' */
    int steps;   /* steps taken in this episode */
} cartpole;

/* Starts an episode: every state variable uniform in [-0.05, 0.05). */
static inline void cartpole_reset(cartpole *e, cp_rng *r) {
    for (int i = 0; i < 4; i++) e->s[i] = cp_rng_uniform(r) * 0.1 - 0.05;
    e->steps = 0;
}

/* One Euler step under action 0 (push left) or 1 (push right). Returns the reward (1);
 * *terminated: the pole fell or the cart left the track; *truncated: the 500th step
 * ended the episode otherwise. */
static inline double cartpole_step(cartpole *e, int action, bool *terminated, bool *truncated) {
    const double total = CP_MASSCART + CP_MASSPOLE, pml = CP_MASSPOLE * CP_LENGTH;
    double x = e->s[0], x_dot = e->s[1], th = e->s[2], th_dot = e->s[3];
    double force = action == 1 ? CP_FORCE_MAG : -CP_FORCE_MAG;
    double c = cos(th), sn = sin(th);
    double temp = (force + pml * th_dot * th_dot * sn) / total;
    double th_acc = (CP_GRAVITY * sn - c * temp) / (CP_LENGTH * (4.0 / 3.0 - CP_MASSPOLE * c * c / total));
    double x_acc = temp - pml * th_acc * c / total;
    e->s[0] = x + CP_TAU * x_dot;
    e->s[1] = x_dot + CP_TAU * x_acc;
    e->s[2] = th + CP_TAU * th_dot;
    e->s[3] = th_dot + CP_TAU * th_acc;
    e->steps++;
    *terminated =
        e->s[0] < -CP_X_LIMIT || e->s[0] > CP_X_LIMIT || e->s[2] < -CP_THETA_LIMIT || e->s[2] > CP_THETA_LIMIT;
    *truncated = !*terminated && e->steps >= CP_MAX_STEPS;
    return 1.0;
}

#endif
