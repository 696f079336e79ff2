"""PyTorch references for kiln_contiguous, kiln_clone and kiln_arange (tests/test_tensor.c
reads copy.safetensors).

contiguous.nc and clone.nc copy a view (contiguous: x.transpose(0, 1) of a [4, 5] base;
clone: every other column, from 1, of a [3, 7] base); clone.c copies a contiguous tensor.
Each stores "<case>.x" (the base), "<case>.g", "<case>.out", "<case>.dx" (the gradient
after out.backward(g)). arange.N stores "<case>.out" of torch.arange(start, end, step) in
float64 and "<case>.p" = (start, end, step) as float32 (values exact in float32).
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_copy.py
"""
import os

import torch

from golden_io import save

torch.manual_seed(20261208)
T = {}

for name, shape, view, fn in [
    ("contiguous.nc", [4, 5], lambda t: t.transpose(0, 1), lambda x: x.contiguous()),
    ("clone.nc", [3, 7], lambda t: t[:, 1:7:2], lambda x: x.clone()),
    ("clone.c", [2, 3, 4], lambda t: t, lambda x: x.clone()),
]:
    base = torch.randn(shape)
    T[name + ".x"] = base
    x = view(base.double()).detach().requires_grad_(True)
    out = fn(x)
    g = torch.randn(out.shape)
    out.backward(g.double())
    T[name + ".out"], T[name + ".g"], T[name + ".dx"] = out.detach(), g, x.grad

# start, end, step: integers, a fractional step that is not a power of two (0.1: every
# value rounds), a negative step, an end that is not reached exactly
for k, (start, end, step) in enumerate([(0, 7, 1), (-1.5, 2.25, 0.25), (0.5, 3.0, 0.1), (10, -3, -2.5),
                                        (-3, 4.5, 1.5)]):
    p = torch.tensor([start, end, step], dtype=torch.float32)
    s, e, st = (float(v) for v in p)  # the float32 values the test passes as doubles
    T["arange.%d.p" % k] = p
    T["arange.%d.out" % k] = torch.arange(s, e, st, dtype=torch.float64)

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "copy.safetensors"), T)
