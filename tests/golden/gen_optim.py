"""PyTorch references for kiln's optimizers, lr schedules and gradient clipping.

Writes tests/golden/optim.safetensors (run: /usr/bin/python3 tests/golden/gen_optim.py).

Trajectories: three parameters (48, 7 and 4 elements: a multiple of torch's vector width,
an odd tail, and one whose gradient is None on odd steps, so it is skipped and its step
count lags) updated for 10 steps by every optimizer configuration, with the gradients given
per step (stored, so the trajectory does not depend on a loss). Stored: the initial values,
the gradients, the parameters after every step, the optimizer state (torch's state_dict
names) and step counts after 5 and after 10 steps. Each configuration's hyper-parameters
are stored too, as the bits of Python's doubles (two I32 words each), so the C test takes
them from here and cannot drift from this file.

Schedules: the lr after construction and after each of 30 scheduler.step() calls, as the
bits of the doubles torch computes. Clipping: clip_grad_norm_ and clip_grad_value_ on three
parameters (one without a gradient).
"""
import os

import torch

from golden_io import save

torch.manual_seed(1234)
T = {}


def dbits(values):
    """Doubles as int32 words (little-endian: low word first) so no precision is lost."""
    return torch.tensor(values, dtype=torch.float64).view(torch.int32)


# ---- trajectories ----------------------------------------------------------------------
STEPS = 10
shapes = [(16, 3), (7,), (4,)]
init = [torch.randn(s) for s in shapes]
grads = []      # grads[k][j] or None
mask = torch.zeros(STEPS, 3, dtype=torch.int32)
for k in range(STEPS):
    g0 = torch.randn(shapes[0])
    g1 = torch.randn(shapes[1]) * 1e-3
    g1[3] = 0.0                              # a coordinate that never moves (0/0 guarded by eps)
    g2 = torch.randn(shapes[2]) * 5.0 if k % 2 == 0 else None
    grads.append([g0, g1, g2])
    for j in range(3):
        mask[k, j] = grads[k][j] is not None
for j in range(3):
    T[f"init.p{j}"] = init[j]
    T[f"grad.p{j}"] = torch.stack([g[j] if g[j] is not None else torch.zeros(shapes[j]) for g in grads])
T["grad_mask"] = mask

# kind: 0 SGD, 1 RMSprop, 2 Adam, 3 AdamW. hp: lr, momentum, dampening, weight_decay, alpha,
# eps, beta1, beta2. flags: nesterov, centered, amsgrad, maximize.
configs = {
    "sgd_plain": (torch.optim.SGD, dict(lr=0.1)),
    "sgd_momentum": (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "sgd_dampening": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    "sgd_nesterov": (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "sgd_wd": (torch.optim.SGD, dict(lr=0.05, momentum=0.5, weight_decay=0.1)),
    "sgd_maximize": (torch.optim.SGD, dict(lr=0.1, weight_decay=0.01, maximize=True)),
    "rmsprop_plain": (torch.optim.RMSprop, dict(lr=0.01)),
    "rmsprop_momentum": (torch.optim.RMSprop, dict(lr=0.01, momentum=0.9)),
    "rmsprop_centered": (torch.optim.RMSprop, dict(lr=0.01, centered=True)),
    "rmsprop_centered_momentum": (torch.optim.RMSprop, dict(lr=0.005, centered=True, momentum=0.5, alpha=0.9)),
    "rmsprop_wd": (torch.optim.RMSprop, dict(lr=0.01, weight_decay=0.1, alpha=0.9, eps=1e-6)),
    "adam_plain": (torch.optim.Adam, dict(lr=0.01)),
    "adam_wd": (torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
    "adam_amsgrad": (torch.optim.Adam, dict(lr=0.01, amsgrad=True, betas=(0.8, 0.99))),
    "adamw_plain": (torch.optim.AdamW, dict(lr=0.01)),
    "adamw_amsgrad": (torch.optim.AdamW, dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    "adamw_maximize": (torch.optim.AdamW, dict(lr=0.02, maximize=True, eps=1e-3)),
}
kinds = {torch.optim.SGD: 0, torch.optim.RMSprop: 1, torch.optim.Adam: 2, torch.optim.AdamW: 3}


def state_of(opt, params, tag, name):
    sd = opt.state_dict()["state"]
    steps = torch.zeros(3, dtype=torch.int32)
    for i, st in sd.items():
        for key, v in st.items():
            if key == "step":
                steps[i] = int(v)
            elif torch.is_tensor(v):
                T[f"{name}.{tag}.{i}.{key}"] = v.clone()
    if kinds[type(opt)] == 0:   # SGD keeps no step: count updates as kiln does
        steps = mask[: int(tag[5:])].sum(0).to(torch.int32)
    T[f"{name}.{tag}.steps"] = steps


for name, (cls, kw) in configs.items():
    params = [p.clone().requires_grad_(True) for p in init]
    opt = cls(params, **kw)
    g = opt.param_groups[0]
    betas = g.get("betas", (0.0, 0.0))
    T[f"{name}.hp"] = dbits([g["lr"], g.get("momentum", 0.0), g.get("dampening", 0.0), g["weight_decay"],
                             g.get("alpha", 0.0), g.get("eps", 0.0), betas[0], betas[1]])
    T[f"{name}.flags"] = torch.tensor([kinds[cls], int(g.get("nesterov", False)), int(g.get("centered", False)),
                                       int(g.get("amsgrad", False)), int(g.get("maximize", False))],
                                      dtype=torch.int32)
    traj = [[] for _ in range(3)]
    for k in range(STEPS):
        for j, p in enumerate(params):
            p.grad = None if grads[k][j] is None else grads[k][j].clone()
        opt.step()
        for j, p in enumerate(params):
            traj[j].append(p.detach().clone())
        if k + 1 in (5, STEPS):
            state_of(opt, params, f"state{k + 1}", name)
    for j in range(3):
        T[f"{name}.traj.p{j}"] = torch.stack(traj[j])

# ---- learning-rate schedules ------------------------------------------------------------
SCHED_STEPS = 30
LS = torch.optim.lr_scheduler
scheds = {
    "step": lambda o: [LS.StepLR(o, step_size=7, gamma=0.5)],
    "multistep": lambda o: [LS.MultiStepLR(o, milestones=[12, 5, 12, 20], gamma=0.3)],
    "exponential": lambda o: [LS.ExponentialLR(o, gamma=0.93)],
    "cosine": lambda o: [LS.CosineAnnealingLR(o, T_max=10, eta_min=0.001)],
    "cosine_t7": lambda o: [LS.CosineAnnealingLR(o, T_max=7)],
    "linear": lambda o: [LS.LinearLR(o)],
    "linear_warmup": lambda o: [LS.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=8)],
    "linear_decay": lambda o: [LS.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=12)],
    "chain": lambda o: [LS.LinearLR(o, start_factor=0.5, total_iters=4), LS.ExponentialLR(o, gamma=0.9)],
}
for name, make in scheds.items():
    w = torch.zeros(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    ss = make(opt)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(SCHED_STEPS):
        w.grad = torch.zeros(3)
        opt.step()
        for s in ss:
            s.step()
        lrs.append(opt.param_groups[0]["lr"])
    T[f"sched.{name}"] = dbits(lrs)

# ---- gradient clipping ------------------------------------------------------------------
clip_shapes = [(5, 7), (13,), (2, 3, 4)]
cg = [torch.randn(s) * 0.3 for s in clip_shapes]
for j in range(3):
    T[f"clip.g{j}"] = cg[j]
norm_cases = [(1.0, 2.0), (100.0, 2.0), (0.5, 1.0), (0.3, float("inf")), (2.0, 3.0)]
T["clip.cases"] = dbits([v for c in norm_cases for v in c])
for c, (max_norm, norm_type) in enumerate(norm_cases):
    ps = [torch.zeros(s, requires_grad=True) for s in clip_shapes]
    for j in (0, 1):                    # parameter 2 has no gradient: skipped
        ps[j].grad = cg[j].clone()
    total = torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type)
    T[f"clip{c}.total"] = total.reshape(1)
    for j in (0, 1):
        T[f"clip{c}.g{j}"] = ps[j].grad
ps = [torch.zeros(s, requires_grad=True) for s in clip_shapes]
for j in range(3):
    ps[j].grad = cg[j].clone()
torch.nn.utils.clip_grad_value_(ps, 0.25)
for j in range(3):
    T[f"clipv.g{j}"] = ps[j].grad

# ---- parameter groups --------------------------------------------------------------------
# SGD nesterov over two groups with their own lr and weight decay (decay on the matrix, none
# on the vectors, as the ndim rule splits them), the lr of each group scheduled per step by
# SequentialLR(LinearLR warm-up, CosineAnnealingLR): every group's lr after each step and
# the parameters after each step. A fourth parameter is frozen (requires_grad False, grad
# None in torch): it must not move.
GSTEPS = 10
gshapes = [(6, 4), (4,), (5,), (3,)]
ginit = [torch.randn(s) for s in gshapes]
ggrads = [[torch.randn(s) for s in gshapes] for _ in range(GSTEPS)]
for j in range(4):
    T[f"groups.init.p{j}"] = ginit[j]
    T[f"groups.grad.p{j}"] = torch.stack([g[j] for g in ggrads])
gp = [p.clone().requires_grad_(j != 3) for j, p in enumerate(ginit)]
gopt = torch.optim.SGD([{"params": [gp[0], gp[3]], "weight_decay": 0.05},
                        {"params": [gp[1], gp[2]], "lr": 0.03, "weight_decay": 0.0}],
                       lr=0.1, momentum=0.9, nesterov=True)
gs = LS.SequentialLR(gopt, [LS.LinearLR(gopt, start_factor=0.01, total_iters=3),
                            LS.CosineAnnealingLR(gopt, T_max=GSTEPS - 3)], milestones=[3])
glr = [[g["lr"] for g in gopt.param_groups]]
gtraj = [[] for _ in range(4)]
for k in range(GSTEPS):
    for j, p in enumerate(gp):
        p.grad = ggrads[k][j].clone() if j != 3 else None
    gopt.step()
    gs.step()
    glr.append([g["lr"] for g in gopt.param_groups])
    for j, p in enumerate(gp):
        gtraj[j].append(p.detach().clone())
for j in range(4):
    T[f"groups.traj.p{j}"] = torch.stack(gtraj[j])
T["groups.lr"] = dbits([v for row in glr for v in row])
T["groups.state.0.momentum_buffer"] = gopt.state[gp[0]]["momentum_buffer"].clone()
T["groups.state.2.momentum_buffer"] = gopt.state[gp[1]]["momentum_buffer"].clone()

# SequentialLR on two groups (lr 0.1 and 0.02): warm-up then multistep, and a three-phase
# one; 30 steps each, both groups' lrs.
seqs = {
    "warm_multistep": lambda o: LS.SequentialLR(o, [LS.LinearLR(o, start_factor=0.1, total_iters=5),
                                                    LS.MultiStepLR(o, milestones=[6, 12, 12], gamma=0.5)],
                                                milestones=[5]),
    "warm_cosine": lambda o: LS.SequentialLR(o, [LS.LinearLR(o, start_factor=1e-3, total_iters=4),
                                                 LS.CosineAnnealingLR(o, T_max=26, eta_min=0.0)],
                                             milestones=[4]),
    "three": lambda o: LS.SequentialLR(o, [LS.ExponentialLR(o, gamma=0.8), LS.StepLR(o, step_size=3, gamma=0.5),
                                           LS.CosineAnnealingLR(o, T_max=6, eta_min=0.001)],
                                       milestones=[4, 13]),
}
for name, make in seqs.items():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.02}], lr=0.1)
    s = make(opt)
    lrs = [g["lr"] for g in opt.param_groups]
    for _ in range(SCHED_STEPS):
        opt.step()
        s.step()
        lrs += [g["lr"] for g in opt.param_groups]
    T[f"seq.{name}"] = dbits(lrs)

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "optim.safetensors"), T)
