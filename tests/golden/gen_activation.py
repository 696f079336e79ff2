"""PyTorch references for tests/test_activation.c: every activation and option combination,
forward and backward (with a stored seed gradient), on ordinary values, on special values
(NaN, +-Inf, +-0, large magnitudes) and, for softmax/log_softmax, along every dim, on a
1-D and a 0-d tensor, a long row and a transposed (non-contiguous) input.

Run: /usr/bin/python3 tests/golden/gen_activation.py   (writes tests/golden/activation.safetensors)

Names: <case>.x (input), .y (output), .gy (seed gradient), .gx (input gradient).
"""
import os

import torch
import torch.nn.functional as F

from golden_io import save

torch.manual_seed(20240607)
out = {}

SPECIALS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1.0, -1.0, 100.0, -100.0, 20.5, 19.5, 10.0,
            -10.0, 1e-30, -1e-30, 88.0, -88.0, 3.0, -3.0, 0.5]

# (case name, function) - the C test has the same table
ELEMENTWISE = [
    ("relu", F.relu),
    ("leaky_relu_0.01", lambda x: F.leaky_relu(x, 0.01)),
    ("leaky_relu_0.2", lambda x: F.leaky_relu(x, 0.2)),
    ("leaky_relu_-0.5", lambda x: F.leaky_relu(x, -0.5)),
    ("elu_1", lambda x: F.elu(x, 1.0)),
    ("elu_0.5", lambda x: F.elu(x, 0.5)),
    ("elu_2", lambda x: F.elu(x, 2.0)),
    ("gelu", lambda x: F.gelu(x)),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
    ("sigmoid", torch.sigmoid),
    ("tanh", torch.tanh),
    ("softplus_1_20", lambda x: F.softplus(x, 1.0, 20.0)),
    ("softplus_2_1", lambda x: F.softplus(x, 2.0, 1.0)),
    ("softplus_0.5_20", lambda x: F.softplus(x, 0.5, 20.0)),
    ("softplus_-1_20", lambda x: F.softplus(x, -1.0, 20.0)),
]


def record(name, fn, x):
    x = x.clone().requires_grad_(True)
    y = fn(x)
    gy = torch.randn(y.shape)
    (gx,) = torch.autograd.grad(y, x, gy)
    out[name + ".x"] = x.detach()
    out[name + ".y"] = y.detach()
    out[name + ".gy"] = gy
    out[name + ".gx"] = gx


for name, fn in ELEMENTWISE:
    record(name, fn, torch.randn(4, 37) * 3)
    record(name + ".special", fn, torch.tensor(SPECIALS))

# softmax / log_softmax: (case, shape, dim, transpose the stored input before the op)
SOFTMAX = [
    ("d0", (3, 5, 7), 0, False),
    ("d1", (3, 5, 7), 1, False),
    ("d2", (3, 5, 7), 2, False),
    ("dm1", (3, 5, 7), -1, False),
    ("1d", (13,), 0, False),
    ("0d", (), 0, False),
    ("long", (2, 1000), 1, False),
    ("t", (7, 5), 1, True),  # softmax(x.t(), dim=1) with x [7, 5]: a row is a strided column of x
]
for op_name, fn in (("softmax", F.softmax), ("log_softmax", F.log_softmax)):
    for case, shape, dim, transpose in SOFTMAX:
        x = torch.randn(shape) * 4
        record(f"{op_name}_{case}", lambda t: fn(t.t() if transpose else t, dim), x)
    sp = torch.tensor([[1.0, float("nan"), 2.0, 0.0], [float("inf"), 1.0, 2.0, 0.0],
                       [float("-inf"), float("-inf"), float("-inf"), float("-inf")],
                       [float("-inf"), 0.0, 1.0, -3.0], [100.0, -100.0, 80.0, 99.0]])
    record(f"{op_name}_special", lambda t: fn(t, 1), sp)

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "activation.safetensors"), out,
     {"seed": "20240607"})
