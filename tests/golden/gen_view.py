"""PyTorch references for kiln's views (tests/test_tensor.c reads view.safetensors).

A case stores its input's contiguous float32 base "<case>.x", the seed "<case>.g", the
output "<case>.out" (the view's values, row-major) and the input's gradient "<case>.dx"
after out.backward(g). "reshape.nc" reshapes x.transpose(0, 1) (not viewable: a copy);
expand's "<case>.mdx" is sum|g| over the broadcast elements (the sum's magnitude). The ops'
arguments are the test's (test_golden_views), the same as below. Computed in float64 from
float32 inputs, rounded once to float32 when saved.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_view.py
"""
import os

import torch

from golden_io import save

torch.manual_seed(20261207)
T = {}

# (case, base shape, the op on the input in torch; nc: the input is base.transpose(0, 1))
CASES = [
    ("reshape.c", [2, 3, 4], lambda x: x.reshape(4, -1), False),
    ("reshape.nc", [4, 6], lambda x: x.reshape(3, -1), True),
    ("view.c", [2, 3, 4], lambda x: x.view(6, -1), False),
    ("transpose.neg", [2, 3, 4], lambda x: x.transpose(-1, 0), False),
    ("permute.4d", [2, 3, 2, 3], lambda x: x.permute(2, 0, 3, 1), False),
    ("slice.neg", [5, 7], lambda x: x[:, -6:-1:2], False),
    ("slice.clamp", [5, 7], lambda x: x[1:100:3], False),
    ("expand.bc", [3, 1], lambda x: x.expand(2, 3, 4), False),
    ("expand.keep", [1, 4], lambda x: x.expand(3, -1), False),
    ("unsqueeze.neg", [3, 4], lambda x: x.unsqueeze(-1), False),
    ("unsqueeze.0", [3, 4], lambda x: x.unsqueeze(0), False),
    ("squeeze.neg", [3, 1, 4], lambda x: x.squeeze(-2), False),
    ("squeeze.all", [1, 3, 1, 4, 1], lambda x: x.squeeze(), False),
]

for name, shape, fn, nc in CASES:
    base = torch.randn(shape)
    T[name + ".x"] = base
    x = base.double()
    x = (x.transpose(0, 1) if nc else x).detach().requires_grad_(True)
    out = fn(x)
    g = torch.randn(out.shape)
    out.backward(g.double())
    T[name + ".out"], T[name + ".g"], T[name + ".dx"] = out.detach(), g, x.grad
    if name.startswith("expand"):
        y = x.detach().requires_grad_(True)
        fn(y).backward(g.double().abs())
        T[name + ".mdx"] = y.grad

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "view.safetensors"), T)
