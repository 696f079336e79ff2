"""PyTorch references for kiln's normalisation family (tests/test_norm.c): batch norm
(training with running-statistic updates over two calls, eval, with and without affine
parameters and running statistics), layer norm (one and two normalised dims, with/without
weight and bias, a single row), dropout's deterministic cases (p = 0, p = 1 with NaN/Inf,
eval) and embedding (repeated indices, 1-D and 2-D index tensors).

Each case stores its inputs, the seed gradient `gy`, the output `y` and the input
gradients `gx`, `gw`, `gb`. Run: /usr/bin/python3 tests/golden/gen_norm.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_io  # noqa: E402

torch.manual_seed(0)
out = {}


def leaf(t):
    return t.clone().requires_grad_(True)


def bn_case(name, xshape, affine, running, steps, training, momentum=0.1, eps=1e-5, scale=1.0, shift=0.0):
    c = xshape[1]
    w = torch.randn(c) * 0.5 + 1.0 if affine else None
    b = torch.randn(c) * 0.5 if affine else None
    rm = torch.randn(c) * 0.3 if running else None
    rv = torch.rand(c) + 0.5 if running else None
    if running:
        out[name + ".rm0"], out[name + ".rv0"] = rm.clone(), rv.clone()
    if affine:
        out[name + ".w"], out[name + ".b"] = w, b
    for s in range(steps):
        x = torch.randn(*xshape) * scale + shift
        gy = torch.randn(*xshape)
        xl = leaf(x)
        wl = leaf(w) if affine else None
        bl = leaf(b) if affine else None
        y = F.batch_norm(xl, rm, rv, wl, bl, training=training, momentum=momentum, eps=eps)
        y.backward(gy)
        p = "%s.%d" % (name, s)
        out[p + ".x"], out[p + ".gy"], out[p + ".y"], out[p + ".gx"] = x, gy, y, xl.grad
        if affine:
            out[p + ".gw"], out[p + ".gb"] = wl.grad, bl.grad
        if running:
            out[p + ".rm"], out[p + ".rv"] = rm.clone(), rv.clone()


# [N, C, H, W], affine, running stats, two training calls (running stats checked after each)
bn_case("bn2d", (3, 5, 4, 6), True, True, 2, True)
# [N, C] without affine parameters, running stats, momentum 0.3
bn_case("bn1d", (7, 3), False, True, 2, True, momentum=0.3)
# [N, C, L], affine, no running statistics (batch statistics only), data with a large mean
bn_case("bnnors", (4, 3, 5), True, False, 1, True, scale=0.5, shift=20.0)
# eval mode: the running statistics normalise, the gradient is the plain affine map
bn_case("bneval", (2, 4, 3, 5), True, True, 1, False, eps=1e-3)
# N = 1 with spatial size > 1 is fine in training
bn_case("bnn1", (1, 2, 3, 3), True, True, 1, True)


def ln_case(name, xshape, nnorm, has_w, has_b, eps=1e-5):
    nshape = xshape[len(xshape) - nnorm:]
    x = torch.randn(*xshape) * 2.0 + 0.5
    w = torch.randn(*nshape) * 0.5 + 1.0
    b = torch.randn(*nshape) * 0.5
    gy = torch.randn(*xshape)
    xl, wl, bl = leaf(x), leaf(w), leaf(b)
    y = F.layer_norm(xl, nshape, wl if has_w else None, bl if has_b else None, eps)
    y.backward(gy)
    out[name + ".x"], out[name + ".gy"], out[name + ".y"], out[name + ".gx"] = x, gy, y, xl.grad
    if has_w:
        out[name + ".w"], out[name + ".gw"] = w, wl.grad
    if has_b:
        out[name + ".b"], out[name + ".gb"] = b, bl.grad


ln_case("ln1", (4, 6, 10), 1, True, True)
ln_case("ln2", (3, 5, 7), 2, True, True)
ln_case("lnrow", (1, 9), 1, False, False)
ln_case("lnw", (2, 3, 13), 1, True, False, eps=1e-3)


# dropout: the cases with no randomness
x = torch.randn(4, 7)
x[0, 1], x[2, 3], x[3, 6] = float("nan"), float("inf"), -float("inf")
gy = torch.randn(4, 7)
for name, p, training in (("do_p1", 1.0, True), ("do_p0", 0.0, True), ("do_eval", 0.5, False)):
    xl = leaf(x)
    y = F.dropout(xl, p, training)
    y.backward(gy)
    out[name + ".y"], out[name + ".gx"] = y, xl.grad
out["do.x"], out["do.gy"] = x, gy


# embedding with repeated indices (the backward sums their gradient rows)
w = torch.randn(10, 4)
for name, idx in (("emb2d", torch.tensor([[1, 3, 3, 9, 0], [3, 1, 7, 7, 7], [0, 9, 2, 3, 5]])),
                  ("emb1d", torch.tensor([6, 6, 2]))):
    wl = leaf(w)
    y = F.embedding(idx, wl)
    gy = torch.randn(*y.shape)
    y.backward(gy)
    out[name + ".idx"], out[name + ".gy"], out[name + ".y"], out[name + ".gw"] = idx, gy, y, wl.grad
out["emb.w"] = w

golden_io.save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "norm.safetensors"), out)
