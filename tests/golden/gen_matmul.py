"""PyTorch references for kiln_matmul and kiln_matmul_ex (tests/test_matmul.c reads
matmul.safetensors).

A case stores its operands' contiguous float32 bases "<case>.a", "<case>.b" (for
"matmul.nc" the test rebuilds a as a.transpose(0, 1) of a [5, 3] base and b as every other
column of a [5, 8] base, as below), the seed "<case>.g", the output "<case>.out", the
gradients "<case>.da", "<case>.db" after out.backward(g), and the magnitudes "<case>.mout",
"<case>.mda", "<case>.mdb": the same products of |a|, |b| and |g| (sum of |terms| of each
element's dot product, what a float dot product's rounding error is relative to).
matmul_ex.fN uses flags N (1: a transposed, 2: b transposed, as torch.matmul of
a.mT / b.mT). Computed in float64 from the float32 inputs, rounded once to float32.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_matmul.py
"""
import os

import torch

from golden_io import save

torch.manual_seed(20261206)
T = {}

# (case, a base shape, b base shape, flags); "nc" views as described above
CASES = [
    ("matmul.2d", [3, 5], [5, 4], 0),
    ("matmul.bb", [2, 1, 3, 5], [3, 5, 4], 0),  # both operands' batch dims broadcast
    ("matmul.nc", [5, 3], [5, 8], 0),
    ("matmul.vl", [5], [2, 5, 4], 0),           # vector on the left
    ("matmul.vr", [2, 3, 5], [5], 0),           # vector on the right
    ("matmul_ex.f0", [2, 3, 5], [5, 4], 0),
    ("matmul_ex.f1", [2, 5, 3], [5, 4], 1),
    ("matmul_ex.f2", [3, 5], [2, 4, 5], 2),
    ("matmul_ex.f3", [2, 1, 5, 3], [3, 4, 5], 3),
    ("matmul_ex.f2w", [2, 3, 5], [4, 5], 2),    # batched a, 2-D b: the batches fold in db
]


def op(t, trans):
    return t.transpose(-1, -2) if trans else t


for name, sa, sb, flags in CASES:
    a0, b0 = torch.randn(sa), torch.randn(sb)
    T[name + ".a"], T[name + ".b"] = a0, b0
    if name == "matmul.nc":
        va, vb = (lambda t: t.transpose(0, 1)), (lambda t: t[:, 0:8:2])
    else:
        va = vb = lambda t: t
    a = va(a0.double()).detach().requires_grad_(True)
    b = vb(b0.double()).detach().requires_grad_(True)
    out = torch.matmul(op(a, flags & 1), op(b, flags & 2))
    g = torch.randn(out.shape)
    out.backward(g.double())
    T[name + ".g"], T[name + ".out"], T[name + ".da"], T[name + ".db"] = g, out.detach(), a.grad, b.grad
    aa = a.detach().abs().requires_grad_(True)
    ab = b.detach().abs().requires_grad_(True)
    mo = torch.matmul(op(aa, flags & 1), op(ab, flags & 2))
    mo.backward(g.double().abs())
    T[name + ".mout"], T[name + ".mda"], T[name + ".mdb"] = mo.detach(), aa.grad, ab.grad

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "matmul.safetensors"), T)
