"""PyTorch references for tests/test_conv.c: conv2d and conv_transpose2d over strides,
padding, dilation, output_padding, groups (2 and depthwise), odd sizes and kernels, with
and without bias; forward and the gradients of input, weight and bias for a stored seed
gradient.

Inputs are float32 in [-1, 1); PyTorch computes in float64 and the results are rounded to
float32, so they are the exact values to half an ulp. For each result the file also holds
its magnitude: the same computation on absolute values (|x|, |w|, |b|, |gy|), i.e. the sum
of the absolute values of the terms summed into each element. The C test bounds kiln's
float32 error by gamma_d * magnitude (see the tolerances in tests/test_conv.c).

Run: /usr/bin/python3 tests/golden/gen_conv.py   (writes tests/golden/conv.safetensors)

Names: <case>.x .w [.b] .gy (inputs), .y .gx .gw [.gb] (results), .y_mag .gx_mag .gw_mag
[.gb_mag] (magnitudes).
"""
import os

import torch
import torch.nn.functional as F

from golden_io import save

torch.manual_seed(20240611)
out = {}

# (name, transpose, x shape, w shape, bias, stride, padding, dilation, groups, output_padding)
# - the C test's table gcases[] has the same names, order and parameters.
CASES = [
    ("conv_basic", False, (2, 3, 6, 6), (4, 3, 3, 3), True, (1, 1), (0, 0), (1, 1), 1, (0, 0)),
    ("conv_s2p1", False, (3, 2, 7, 9), (3, 2, 3, 3), True, (2, 2), (1, 1), (1, 1), 1, (0, 0)),
    ("conv_odd", False, (1, 2, 5, 7), (3, 2, 3, 2), True, (2, 1), (1, 2), (1, 2), 1, (0, 0)),
    ("conv_dil2", False, (2, 2, 8, 7), (2, 2, 3, 3), False, (1, 1), (2, 2), (2, 2), 1, (0, 0)),
    ("conv_groups2", False, (2, 4, 6, 5), (6, 2, 3, 3), True, (1, 1), (1, 1), (1, 1), 2, (0, 0)),
    ("conv_depthwise", False, (2, 4, 7, 7), (4, 1, 3, 3), True, (2, 2), (1, 1), (1, 1), 4, (0, 0)),
    ("conv_1x1", False, (3, 5, 4, 4), (6, 5, 1, 1), False, (1, 1), (0, 0), (1, 1), 1, (0, 0)),
    ("conv_cnn", False, (2, 8, 10, 10), (12, 8, 3, 3), True, (1, 1), (0, 0), (1, 1), 1, (0, 0)),
    ("convt_basic", True, (2, 3, 4, 4), (3, 2, 3, 3), True, (1, 1), (0, 0), (1, 1), 1, (0, 0)),
    ("convt_s2p1op1", True, (2, 4, 4, 5), (4, 3, 3, 3), True, (2, 2), (1, 1), (1, 1), 1, (1, 1)),
    ("convt_odd", True, (1, 2, 5, 4), (2, 3, 3, 2), True, (2, 1), (0, 1), (1, 2), 1, (1, 0)),
    ("convt_groups2", True, (2, 4, 3, 4), (4, 3, 3, 3), False, (2, 2), (1, 0), (1, 1), 2, (0, 1)),
    ("convt_depthwise", True, (2, 3, 5, 5), (3, 1, 3, 3), True, (1, 1), (1, 1), (1, 1), 3, (0, 0)),
    ("convt_dil2op1", True, (1, 3, 4, 4), (3, 2, 3, 3), True, (1, 1), (0, 0), (2, 2), 1, (1, 1)),
]


def uniform(shape):
    return torch.rand(shape, dtype=torch.float32) * 2 - 1


for name, transpose, xs, ws, has_bias, stride, padding, dilation, groups, opad in CASES:
    x32, w32 = uniform(xs), uniform(ws)
    cout = ws[1] * groups if transpose else ws[0]
    b32 = uniform((cout,)) if has_bias else None

    def op(x, w, b):
        if transpose:
            return F.conv_transpose2d(x, w, b, stride=stride, padding=padding, output_padding=opad,
                                      groups=groups, dilation=dilation)
        return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)

    x = x32.double().requires_grad_(True)
    w = w32.double().requires_grad_(True)
    b = b32.double().requires_grad_(True) if has_bias else None
    y = op(x, w, b)
    gy32 = uniform(y.shape)
    gy = gy32.double()
    grads = torch.autograd.grad(y, [x, w] + ([b] if has_bias else []), gy)

    # magnitudes: every term taken in absolute value
    ax, aw, agy = x.detach().abs(), w.detach().abs(), gy.abs()
    y_mag = op(ax, aw, b.detach().abs() if has_bias else None)
    xm = x.detach().clone().requires_grad_(True)
    (gx_mag,) = torch.autograd.grad(op(xm, aw, None), xm, agy)
    wm = w.detach().clone().requires_grad_(True)
    (gw_mag,) = torch.autograd.grad(op(ax, wm, None), wm, agy)

    out[name + ".x"] = x32
    out[name + ".w"] = w32
    out[name + ".gy"] = gy32
    out[name + ".y"] = y.detach()
    out[name + ".gx"] = grads[0]
    out[name + ".gw"] = grads[1]
    out[name + ".y_mag"] = y_mag
    out[name + ".gx_mag"] = gx_mag
    out[name + ".gw_mag"] = gw_mag
    if has_bias:
        out[name + ".b"] = b32
        out[name + ".gb"] = grads[2]
        out[name + ".gb_mag"] = agy.sum((0, 2, 3))

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv.safetensors")
save(path, out, {"cases": str(len(CASES))})
print(path, os.path.getsize(path), "bytes")
