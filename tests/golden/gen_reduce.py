"""PyTorch references for kiln's reductions (tests/test_reduce.c reads reduce.safetensors).

A case stores its input's contiguous float32 base "<case>.x" (the test rebuilds the
non-contiguous "nc" input as x.transpose(0, 2) of a [5, 4, 3] base, as below), the output
"<case>.out" and, for sum, mean, max and min, the seed "<case>.g", the input's gradient
"<case>.dx" after out.backward(g) and "<case>.mout", the reduction of |x| (sum|x| for sum,
mean|x| for mean: what the rounding errors of a float sum are relative to). Computed in
float64 from the float32 inputs, rounded once to float32 when saved. The axes and keepdim
of each case are the test's table (gold_red_cases), the same as CASES here.

Ties: max, min and argmax cases take multiples of 0.5, so maxima repeat. kiln_max/kiln_min
over a list of axes are torch.amax/amin, which split the gradient evenly among the tied
elements; for a full reduction torch's x.max() does the same (checked below). torch's
x.max(dim) (values and indices) instead gives the whole gradient to the one index it
returns: kiln has no such op (kiln_max returns no indices), so it is not compared.
argmax returns the first maximal index, as torch.argmax does on the CPU.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_reduce.py
"""
import os

import torch

from golden_io import save

torch.manual_seed(20261205)
T = {}

ALL = None
# (case, op, layout, axes (None: all), keepdim)
CASES = [
    ("sum.all", "sum", "3d", ALL, False),
    ("sum.nc", "sum", "nc", (0, -1), True),
    ("sum.neg", "sum", "3d", (-2,), False),
    ("mean.all", "mean", "3d", ALL, False),
    ("mean.nc", "mean", "nc", (0, -1), True),
    ("mean.neg", "mean", "3d", (-2,), False),
    ("max.all", "max", "3d", ALL, False),
    ("max.nc", "max", "nc", (1,), True),
    ("max.multi", "max", "3d", (0, -1), False),
    ("min.all", "min", "3d", ALL, False),
    ("min.nc", "min", "nc", (1,), True),
    ("min.multi", "min", "3d", (0, -1), False),
    ("argmax.all", "argmax", "3d", ALL, False),
    ("argmax.nc", "argmax", "nc", (-1,), True),
    ("argmax.0", "argmax", "3d", (0,), False),
]


def quant(shape):
    return torch.floor(torch.empty(shape).uniform_(-2.0, 2.5) * 2) / 2


def reduce(op, x, axes, keepdim):
    dims = tuple(range(x.dim())) if axes is None else axes
    if op == "sum":
        return x.sum(dim=dims, keepdim=keepdim)
    if op == "mean":
        return x.mean(dim=dims, keepdim=keepdim)
    if op == "max":
        return x.max() if axes is None else x.amax(dim=dims, keepdim=keepdim)
    if op == "min":
        return x.min() if axes is None else x.amin(dim=dims, keepdim=keepdim)
    return x.argmax() if axes is None else x.argmax(dim=dims[0], keepdim=keepdim)


for name, op, lay, axes, keepdim in CASES:
    base_shape = [3, 4, 5] if lay == "3d" else [5, 4, 3]
    base = quant(base_shape) if op in ("max", "min", "argmax") else torch.randn(base_shape)
    T[name + ".x"] = base
    x = base.double() if lay == "3d" else base.double().transpose(0, 2)
    x = x.detach().requires_grad_(op != "argmax")
    out = reduce(op, x, axes, keepdim)
    if op in ("max", "min", "argmax") and name.endswith(".nc"):  # some reduced row has a tie
        dims = axes if op != "argmax" else axes[:1]
        m = x.detach().amax(dim=dims, keepdim=True) if op != "min" else x.detach().amin(dim=dims, keepdim=True)
        assert ((x.detach() == m).sum(dim=dims) > 1).any(), "no tie in " + name
    if op == "argmax":
        T[name + ".out"] = out.to(torch.int32)
        continue
    T[name + ".out"] = out.detach()
    g = torch.randn(out.shape)
    out.backward(g.double())
    T[name + ".g"], T[name + ".dx"] = g, x.grad
    if op in ("sum", "mean"):
        T[name + ".mout"] = reduce(op, x.detach().abs(), axes, keepdim)
    if op in ("max", "min") and axes is None:
        # the full reduction's tie rule is amax's (split evenly)
        y = x.detach().requires_grad_(True)
        (y.amax() if op == "max" else y.amin()).backward(g.double())
        assert torch.equal(y.grad, x.grad)
        assert (x.detach() == out.detach()).sum() > 1, "no tie in " + name

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "reduce.safetensors"), T)
