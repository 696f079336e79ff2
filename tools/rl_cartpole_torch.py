#!/usr/bin/python3
"""tools/rl_cartpole_torch.py - examples/rl_cartpole's agents in PyTorch, on the same
CartPole-v1 (reimplemented here from the same equations as examples/cartpole.h: Barto,
Sutton & Anderson 1983 as in Gym's classic_control/cartpole.py), for side-by-side
episodes-to-solve over the same seeds.

--algo reinforce: policy 4-128-2 (ReLU) and value 4-128-1, one Adam over both; after every
  episode: discounted returns G_t, advantages G_t - V(s_t) normalised over the episode,
  loss = -mean(log pi(a_t|s_t) A_t) + 0.5 mean((V(s_t) - G_t)^2).
--algo dqn: Q network 4-128-128-2 (ReLU), replay buffer of 50,000, epsilon linear from 1
  to 0.01 over 10,000 env steps; after 1,000 env steps one Adam step every 4 env steps on a
  batch of 64: the Huber loss (smooth L1, beta 1) of Q(s,a) against
  r + gamma max_a' Q_target(s',a') (1 - terminated), the gradient norm clipped to 10, the
  target network copied every 250 gradient steps, the learning rate (1e-3) falling linearly
  to 0 over 60,000 gradient steps. --double, --tau, the sizes and schedules as the C program's.
--algo a2c: policy 4-128-2 and value 4-128-1 as REINFORCE's, --envs (8) environments stepped
  together; every --n-steps (5) steps one Adam step on the n-step returns bootstrapped from
  V of each environment's last state (0 after a failure, V of the final state after a
  truncation): loss -mean(log pi A) + 0.5 mean((V - R)^2) - 0.01 mean(entropy), the gradient
  norm clipped to 0.5; an environment that ends is reset at once.

The environment's initial states, the replay batches, epsilon draws and sampled actions
come from the same splitmix64 generator as the C program's (seeded with --seed); the
networks' initial weights come from torch.manual_seed(seed) (kiln draws its own), so the
runs are the same recipe, not the same trajectory.

Prints the same key=value lines as examples/rl_cartpole: per 10 episodes
"episode=N env_steps=S return10=R avg100=A epsilon=E", then solved_episode= (the episode at
which the 100-episode average return first reaches 475, -1 when it does not),
env_steps= and env_steps_per_s=.

    /usr/bin/python3 tools/rl_cartpole_torch.py --algo dqn --seed 1
"""
import argparse
import math
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

M64 = (1 << 64) - 1


class Rng:
    """splitmix64, as examples/cartpole.h's cp_rng: uniform doubles in [0, 1)."""

    def __init__(s, seed):
        s.x = seed & M64

    def next(s):
        s.x = (s.x + 0x9E3779B97F4A7C15) & M64
        z = s.x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def uniform(s):
        return (s.next() >> 11) * (1.0 / 9007199254740992.0)

    def below(s, n):
        return int(s.uniform() * n)


class CartPole:
    """CartPole-v1 (examples/cartpole.h's equations, double precision)."""

    GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    X_LIMIT, THETA_LIMIT, MAX_STEPS = 2.4, 12 * 2 * math.pi / 360, 500

    def reset(s, rng):
        s.state = [rng.uniform() * 0.1 - 0.05 for _ in range(4)]
        s.steps = 0
        return list(s.state)

    def step(s, action):
        x, x_dot, th, th_dot = s.state
        total = s.MASSCART + s.MASSPOLE
        pml = s.MASSPOLE * s.LENGTH
        force = s.FORCE if action == 1 else -s.FORCE
        c, sn = math.cos(th), math.sin(th)
        temp = (force + pml * th_dot * th_dot * sn) / total
        th_acc = (s.GRAVITY * sn - c * temp) / (s.LENGTH * (4.0 / 3.0 - s.MASSPOLE * c * c / total))
        x_acc = temp - pml * th_acc * c / total
        x, x_dot = x + s.TAU * x_dot, x_dot + s.TAU * x_acc
        th, th_dot = th + s.TAU * th_dot, th_dot + s.TAU * th_acc
        s.state = [x, x_dot, th, th_dot]
        s.steps += 1
        term = x < -s.X_LIMIT or x > s.X_LIMIT or th < -s.THETA_LIMIT or th > s.THETA_LIMIT
        trunc = not term and s.steps >= s.MAX_STEPS
        return list(s.state), 1.0, term, trunc


def mlp(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def dqn_update(q, target, opt, s, a, r, s2, done, gamma, clip=0.0, double=False):
    """One DQN step: Huber(Q(s,a), r + gamma max Q_target(s') (1 - done)), the gradient norm
    clipped to clip (0: not), Adam; double: Double DQN's target Q_target(s', argmax Q(s')).
    Returns the loss (a tensor). tests/golden/gen_rl.py calls this for tests/test_rl.c."""
    with torch.no_grad():
        qn = target(s2)
        if double:
            nxt = qn.gather(1, q(s2).argmax(1, keepdim=True)).view(-1)
        else:
            nxt = qn.max(1).values
        y = r + gamma * nxt * (1 - done)
    qa = q(s).gather(1, a.view(-1, 1)).view(-1)
    loss = F.smooth_l1_loss(qa, y)
    opt.zero_grad()
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(q.parameters(), clip)
    opt.step()
    return loss.detach()


def run(o, seed):
    torch.manual_seed(seed)
    rng = Rng(seed)
    env = CartPole()
    returns, solved, total_steps = [], -1, 0
    t0 = time.perf_counter()
    if o.algo == "reinforce":
        pi, v = mlp([4, o.hidden, 2]), mlp([4, o.hidden, 1])
        opt = torch.optim.Adam(list(pi.parameters()) + list(v.parameters()), lr=o.lr)
    else:
        q, qt = mlp([4, o.hidden, o.hidden, 2]), mlp([4, o.hidden, o.hidden, 2])
        qt.load_state_dict(q.state_dict())
        opt = torch.optim.Adam(q.parameters(), lr=o.lr)
        cap = o.buffer  # host arrays, as the C program's
        buf_s = np.zeros((cap, 4), np.float32)
        buf_s2 = np.zeros((cap, 4), np.float32)
        buf_a = np.zeros(cap, np.int64)
        buf_r = np.zeros(cap, np.float32)
        buf_d = np.zeros(cap, np.float32)
        nbuf, pos, grad_steps = 0, 0, 0
    eps = o.eps_start
    ep = 0
    while ep < o.episodes and total_steps < o.max_steps:
        s = env.reset(rng)
        ep_ret, states, actions, rewards = 0.0, [], [], []
        while True:
            st = torch.tensor(s, dtype=torch.float32)
            if o.algo == "reinforce":
                with torch.no_grad():
                    p = torch.softmax(pi(st.view(1, 4)), 1)[0]
                a = 1 if rng.uniform() < p[1].item() else 0
            else:
                eps = max(o.eps_end, o.eps_start + (o.eps_end - o.eps_start) * total_steps / o.eps_steps)
                if rng.uniform() < eps:
                    a = rng.below(2)
                else:
                    with torch.no_grad():
                        a = int(q(st.view(1, 4)).argmax(1).item())
            s2, r, term, trunc = env.step(a)
            total_steps += 1
            ep_ret += r
            if o.algo == "reinforce":
                states.append(s)
                actions.append(a)
                rewards.append(r)
            else:
                buf_s[pos] = s
                buf_s2[pos] = s2
                buf_a[pos], buf_r[pos], buf_d[pos] = a, r, float(term)
                pos = (pos + 1) % cap
                nbuf = min(nbuf + 1, cap)
                if total_steps >= o.learning_starts and total_steps % o.train_every == 0:
                    for _ in range(o.grad_steps):
                        if o.lr_decay > 0:
                            opt.param_groups[0]["lr"] = o.lr * max(0.0, 1.0 - grad_steps / o.lr_decay)
                        idx = [rng.below(nbuf) for _ in range(o.batch)]
                        dqn_update(q, qt, opt, *(torch.from_numpy(b[idx]) for b in (buf_s, buf_a, buf_r, buf_s2, buf_d)),
                                   o.gamma, o.clip, o.double)
                        grad_steps += 1
                        if o.tau > 0:  # Polyak averaging
                            with torch.no_grad():
                                for pt, pq in zip(qt.parameters(), q.parameters()):
                                    pt.add_(o.tau * (pq - pt))
                        elif grad_steps % o.target_every == 0:
                            qt.load_state_dict(q.state_dict())
            s = s2
            if term or trunc or total_steps >= o.max_steps:
                break
        if o.algo == "reinforce":
            g, G = 0.0, []
            for r in reversed(rewards):
                g = r + o.gamma * g
                G.append(g)
            G = torch.tensor(G[::-1])
            S = torch.tensor(states, dtype=torch.float32)
            A = torch.tensor(actions)
            val = v(S).view(-1)
            adv = G - val.detach()
            if len(adv) > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            logp = torch.log_softmax(pi(S), 1).gather(1, A.view(-1, 1)).view(-1)
            loss = -(logp * adv).mean() + 0.5 * F.mse_loss(val, G)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ep += 1
        returns.append(ep_ret)
        avg100 = sum(returns[-100:]) / len(returns[-100:])
        if solved < 0 and len(returns) >= 100 and avg100 >= 475:
            solved = ep
        if ep % 10 == 0:
            print(f"episode={ep} env_steps={total_steps} return10={sum(returns[-10:]) / 10:.1f} "
                  f"avg100={avg100:.1f} epsilon={eps if o.algo == 'dqn' else 0:.3f}", flush=True)
        if solved > 0 and o.stop_when_solved:
            break
    secs = time.perf_counter() - t0
    print(f"seed={seed} solved_episode={solved} episodes={ep} env_steps={total_steps} seconds={secs:.1f} "
          f"env_steps_per_s={total_steps / secs:.1f}", flush=True)
    return solved, total_steps, secs


class Episodes:
    """The episodes of a run as they end, printed as the C program's episodes (episode_end)."""

    def __init__(s):
        s.returns, s.solved = [], -1

    def end(s, ret, steps, eps=0.0):
        s.returns.append(ret)
        n = len(s.returns)
        avg100 = sum(s.returns[-100:]) / len(s.returns[-100:])
        if s.solved < 0 and n >= 100 and avg100 >= 475:
            s.solved = n
        if n % 10 == 0:
            print(f"episode={n} env_steps={steps} return10={sum(s.returns[-10:]) / 10:.1f} "
                  f"avg100={avg100:.1f} epsilon={eps:.3f}", flush=True)


def run_a2c(o, seed):
    """examples/rl_cartpole.c's a2c_run: the same rollouts, returns and loss."""
    torch.manual_seed(seed)
    rng = Rng(seed)
    pi, v = mlp([4, o.hidden, 2]), mlp([4, o.hidden, 1])
    params = list(pi.parameters()) + list(v.parameters())
    opt = torch.optim.Adam(params, lr=o.lr)
    N, T = o.envs, o.n_steps
    envs = [CartPole() for _ in range(N)]
    cur = [e.reset(rng) for e in envs]
    env_ret = [0.0] * N
    log, steps = Episodes(), 0
    t0 = time.perf_counter()
    while len(log.returns) < o.episodes and steps < o.max_steps and not (log.solved > 0 and o.stop_when_solved):
        S, A, R, term, boot, trunc_s = [], [], [], [], [], []
        for t in range(T):
            with torch.no_grad():
                out = pi(torch.tensor(cur, dtype=torch.float32)).double()
            p1 = 1.0 / (1.0 + torch.exp(out[:, 0] - out[:, 1]))
            for e in range(N):
                a = 1 if rng.uniform() < p1[e].item() else 0
                S.append(cur[e])
                A.append(a)
                s2, r, te, tr = envs[e].step(a)
                steps += 1
                env_ret[e] += r
                R.append(r)
                term.append(te)
                if not te and tr:
                    trunc_s.append(s2)
                    boot.append(N + len(trunc_s) - 1)
                else:
                    boot.append(-1)
                if te or tr:
                    log.end(env_ret[e], steps)
                    env_ret[e] = 0.0
                    s2 = envs[e].reset(rng)
                cur[e] = s2
        with torch.no_grad():
            vb = v(torch.tensor([list(c) for c in cur] + trunc_s, dtype=torch.float32)).view(-1).tolist()
        St = torch.tensor(S, dtype=torch.float32)
        val = v(St).view(-1)
        ret = [0.0] * (T * N)
        for e in range(N):
            g = vb[e]
            for t in reversed(range(T)):
                i = t * N + e
                if term[i]:
                    g = R[i]
                elif boot[i] >= 0:
                    g = R[i] + o.gamma * vb[boot[i]]
                else:
                    g = R[i] + o.gamma * g
                ret[i] = g
        Rt = torch.tensor(ret, dtype=torch.float32)
        adv = Rt - val.detach()
        logp_all = torch.log_softmax(pi(St), 1)
        logp = logp_all.gather(1, torch.tensor(A).view(-1, 1)).view(-1)
        entropy = -(logp_all.exp() * logp_all).sum() / (T * N)
        loss = -(logp * adv).mean() + 0.5 * F.mse_loss(val, Rt) - o.ent_coef * entropy
        opt.zero_grad()
        loss.backward()
        if o.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, o.clip)
        opt.step()
    secs = time.perf_counter() - t0
    print(f"seed={seed} solved_episode={log.solved} episodes={len(log.returns)} env_steps={steps} "
          f"seconds={secs:.1f} env_steps_per_s={steps / secs:.1f}", flush=True)
    return log.solved, steps, secs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algo", choices=["reinforce", "dqn", "a2c"], default="dqn")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=1, help="seeds seed .. seed+runs-1, one after the other")
    p.add_argument("--episodes", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="env step budget of a run")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--buffer", type=int, default=50000)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--train-every", type=int, default=4)
    p.add_argument("--grad-steps", type=int, default=1, help="gradient steps an update")
    p.add_argument("--target-every", type=int, default=250)
    p.add_argument("--eps-start", type=float, default=1.0)
    p.add_argument("--eps-end", type=float, default=0.01)
    p.add_argument("--eps-steps", type=int, default=10000)
    p.add_argument("--clip", type=float, default=None, help="gradient norm clip, 0: none [10 dqn, 0.5 a2c]")
    p.add_argument("--envs", type=int, default=8, help="a2c: environments stepped together")
    p.add_argument("--n-steps", type=int, default=5, help="a2c: env steps between updates")
    p.add_argument("--ent-coef", type=float, default=0.01, help="a2c: weight of the entropy bonus")
    p.add_argument("--double", action="store_true", help="Double DQN's target")
    p.add_argument("--tau", type=float, default=0.0, help="> 0: Polyak-average the target every gradient step")
    p.add_argument("--lr-decay", type=int, default=60000, help="> 0: lr falls linearly to 0 over N gradient steps")
    p.add_argument("--no-stop", dest="stop_when_solved", action="store_false",
                   help="go on after solving until the budget is spent")
    p.add_argument("--threads", type=int, default=1)
    o = p.parse_args()
    torch.set_num_threads(o.threads)
    if o.episodes is None:
        o.episodes = {"reinforce": 3000, "dqn": 5000, "a2c": 20000}[o.algo]
    if o.max_steps is None:
        o.max_steps = 300000 if o.algo == "dqn" else 500000
    if o.clip is None:
        o.clip = 0.5 if o.algo == "a2c" else 10.0
    solved_runs, steps, secs = 0, 0, 0.0
    for k in range(o.runs):
        s, n, t = (run_a2c if o.algo == "a2c" else run)(o, o.seed + k)
        solved_runs += s > 0
        steps += n
        secs += t
    print(f"solved_runs={solved_runs}")
    print(f"env_steps_per_s={steps / secs:.1f}")


if __name__ == "__main__":
    sys.exit(main())
