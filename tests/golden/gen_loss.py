"""PyTorch references for tests/test_loss.c: every loss with every reduction and the options
that change its formula (smooth_l1's beta incl. 0; bce/bce_with_logits weight and pos_weight
broadcast over the last dim; cross_entropy's class weights, ignore_index and label
smoothing, alone and together, on [N, C], [N, C, d1, d2] and [C]; nll_loss; lsgan; the L1/L2
penalties over several tensors), forward and backward with a stored seed gradient.

Run: /usr/bin/python3 tests/golden/gen_loss.py   (writes tests/golden/loss.safetensors)

The file is self-describing, so the C test needs no copy of this table. Each case <c> has
  <c>.cfg  I32 [op, reduction, ignore_index, has_weight, has_pos_weight, target_grad_or_count]
           op: 0 mse 1 l1 2 smooth_l1 3 bce 4 bce_with_logits 5 lsgan 6 cross_entropy
               7 nll 8 l1_penalty 9 l2_penalty; reduction: 0 mean 1 sum 2 none (kiln's enum)
  <c>.p    F32 [beta | label_smoothing | target_value]
  <c>.x, <c>.t (F32 or I32 labels), <c>.w, <c>.pw   inputs (those that exist)
  <c>.out  the loss; <c>.seed the seed gradient; <c>.gx (and <c>.gt: the target's gradient
           when cfg[5] = 1) the gradients.
Penalties: cfg[5] = the number of tensors <c>.x0.., gradients <c>.g0...
"""
import os

import torch
import torch.nn.functional as F

from golden_io import save

torch.manual_seed(20240611)
out = {}
RED = {0: "mean", 1: "sum", 2: "none"}


def store(name, op, red, x, t=None, w=None, pw=None, p=0.0, ignore=-100, fn=None, grad_t=False):
    x = x.clone().requires_grad_(True)
    tt = t.clone().requires_grad_(True) if (t is not None and grad_t) else t
    y = fn(x, tt)
    seed = torch.randn(y.shape)
    inputs = [x] + ([tt] if grad_t else [])
    grads = torch.autograd.grad(y, inputs, seed)
    out[name + ".cfg"] = torch.tensor([op, red, ignore, w is not None, pw is not None, int(grad_t)], dtype=torch.int32)
    out[name + ".p"] = torch.tensor([p], dtype=torch.float32)
    out[name + ".x"] = x.detach()
    if t is not None:
        out[name + ".t"] = t
    if w is not None:
        out[name + ".w"] = w
    if pw is not None:
        out[name + ".pw"] = pw
    out[name + ".out"] = y.detach()
    out[name + ".seed"] = seed
    out[name + ".gx"] = grads[0]
    if grad_t:
        out[name + ".gt"] = grads[1]


for red in (0, 1, 2):
    r = RED[red]
    x, t = torch.randn(5, 7), torch.randn(5, 7)
    store(f"mse.{r}", 0, red, x, t, fn=lambda a, b: F.mse_loss(a, b, reduction=r), grad_t=True)
    store(f"l1.{r}", 1, red, x, t, fn=lambda a, b: F.l1_loss(a, b, reduction=r), grad_t=True)
    for beta in (1.0, 0.5, 0.0):
        xs = torch.randn(5, 7) * 1.5
        store(f"smooth_l1.{beta}.{r}", 2, red, xs, t, p=beta,
              fn=lambda a, b: F.smooth_l1_loss(a, b, reduction=r, beta=beta), grad_t=True)
    p = torch.rand(5, 7) * 0.96 + 0.02
    tp = torch.rand(5, 7)
    w7 = torch.rand(7) + 0.5
    store(f"bce.{r}", 3, red, p, tp, fn=lambda a, b: F.binary_cross_entropy(a, b, reduction=r), grad_t=True)
    store(f"bce.w.{r}", 3, red, p, tp, w=w7,
          fn=lambda a, b: F.binary_cross_entropy(a, b, weight=w7, reduction=r), grad_t=True)
    lg = torch.randn(5, 7) * 3
    pw7 = torch.rand(7) * 3 + 0.25
    store(f"bcel.{r}", 4, red, lg, tp, fn=lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=r),
          grad_t=True)
    store(f"bcel.w.pw.{r}", 4, red, lg, tp, w=w7, pw=pw7,
          fn=lambda a, b: F.binary_cross_entropy_with_logits(a, b, weight=w7, pos_weight=pw7, reduction=r),
          grad_t=True)
    store(f"bcel.pw.{r}", 4, red, lg, tp, pw=pw7,
          fn=lambda a, b: F.binary_cross_entropy_with_logits(a, b, pos_weight=pw7, reduction=r), grad_t=True)

    def lsgan(a, v):
        l = 0.5 * (a - v) ** 2
        return l.mean() if red == 0 else l.sum() if red == 1 else l

    for v in (1.0, 0.0):
        store(f"lsgan.{v}.{r}", 5, red, torch.randn(4, 3), p=v, fn=lambda a, _: lsgan(a, v))

    # cross-entropy: every combination of weight, ignore_index and label smoothing
    C = 5
    logits = torch.randn(6, C) * 2
    labels = torch.tensor([0, 4, 1, 1, 3, 2], dtype=torch.int64)
    wc = torch.rand(C) + 0.25
    for use_w in (False, True):
        for ignore in (-100, 1):
            for ls in (0.0, 0.2):
                name = f"ce.{'w' if use_w else 'nw'}.ig{ignore}.ls{ls}.{r}"
                W = wc if use_w else None
                store(name, 6, red, logits, labels.to(torch.int32), w=W, p=ls, ignore=ignore,
                      fn=lambda a, _: F.cross_entropy(a, labels, weight=W, ignore_index=ignore, label_smoothing=ls,
                                                      reduction=r))
    # [N, C, d1, d2] with everything at once, and ignore_index inside the label range
    lg4 = torch.randn(3, 4, 2, 3) * 2
    lb4 = torch.randint(0, 4, (3, 2, 3))
    lb4[0, 1, 2] = 2
    lb4[2, 0, 0] = 2
    w4 = torch.rand(4) + 0.25
    store(f"ce4d.{r}", 6, red, lg4, lb4.to(torch.int32), w=w4, p=0.3, ignore=2,
          fn=lambda a, _: F.cross_entropy(a, lb4, weight=w4, ignore_index=2, label_smoothing=0.3, reduction=r))
    # [C] logits against a 0-d label
    lg1 = torch.randn(7)
    lb1 = torch.tensor(3)
    store(f"ce1d.{r}", 6, red, lg1, lb1.to(torch.int32), p=0.1,
          fn=lambda a, _: F.cross_entropy(a, lb1, label_smoothing=0.1, reduction=r))
    # every label ignored: the mean is 0/0 = NaN, the gradient zero
    lbi = torch.full((4,), -100, dtype=torch.int64)
    lgi = torch.randn(4, 3)
    store(f"ce.allignored.{r}", 6, red, lgi, lbi.to(torch.int32),
          fn=lambda a, _: F.cross_entropy(a, lbi, reduction=r))
    # nll on log-probabilities
    lp = F.log_softmax(torch.randn(6, C), 1)
    for use_w in (False, True):
        W = wc if use_w else None
        store(f"nll.{'w' if use_w else 'nw'}.{r}", 7, red, lp, labels.to(torch.int32), w=W, ignore=1,
              fn=lambda a, _: F.nll_loss(a, labels, weight=W, ignore_index=1, reduction=r))
    lp4 = F.log_softmax(torch.randn(3, 4, 2, 3), 1)
    store(f"nll4d.{r}", 7, red, lp4, lb4.to(torch.int32), w=w4, ignore=-100,
          fn=lambda a, _: F.nll_loss(a, lb4, weight=w4, reduction=r))

# penalties over six tensors (more than one autograd node's four inputs)
for op, name in ((8, "l1_penalty"), (9, "l2_penalty")):
    ps = [torch.randn(s).requires_grad_(True) for s in ((3, 4), (5,), (2, 3, 2), (1,), (7,), (4, 1))]
    y = sum((p.abs().sum() if op == 8 else (p * p).sum()) for p in ps)
    seed = torch.randn(())
    gs = torch.autograd.grad(y, ps, seed)
    out[name + ".cfg"] = torch.tensor([op, 1, 0, 0, 0, len(ps)], dtype=torch.int32)
    out[name + ".p"] = torch.tensor([0.0])
    for k, (p, g) in enumerate(zip(ps, gs)):
        out[f"{name}.x{k}"] = p.detach()
        out[f"{name}.g{k}"] = g
    out[name + ".out"] = y.detach()
    out[name + ".seed"] = seed

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "loss.safetensors"), out)
