"""PyTorch references for kiln's shape ops (tests/test_shape.c reads shape.safetensors).

For each case: the inputs (non-contiguous inputs are stored as their contiguous base and
rebuilt by the test with the same view op), the seed gradient `<case>.g`, the output
`<case>.out` and the gradient of every input `<case>.d<name>` after
out.backward(seed). Run with Debian's interpreter:
    /usr/bin/python3 tests/golden/gen_shape.py
"""
import os

import torch
import torch.nn.functional as F

from golden_io import save

torch.manual_seed(20240611)
T = {}


def leaf(t):
    return t.detach().clone().requires_grad_(True) if t.is_contiguous() else t.detach().requires_grad_(True)


def record(case, out, inputs):
    """Backward from out with a stored random seed; stores out and the inputs' grads."""
    g = torch.randn(out.shape)
    out.backward(g)
    T[case + ".g"] = g
    T[case + ".out"] = out.detach()
    for name, x in inputs.items():
        T[case + ".d" + name] = x.grad


# concat along dim 1: a contiguous, b a transposed view of a [4, 5, 2] base, c sliced
a = leaf(torch.randn(2, 3, 4))
b_base = torch.randn(4, 5, 2)
b = leaf(b_base.transpose(0, 2))  # [2, 5, 4], non-contiguous
c_base = torch.randn(2, 3, 4)
c = leaf(c_base[:, 1:2, :])       # [2, 1, 4]
T["cat.a"], T["cat.b_base"], T["cat.c_base"] = a.detach(), b_base, c_base
record("cat", torch.cat([a, b, c], dim=1), {"a": a, "b": b, "c": c})

# concat of 6 inputs along the last dim (more inputs than one autograd node holds)
xs = [leaf(torch.randn(3, k)) for k in (1, 2, 3, 4, 5, 6)]
for k, x in enumerate(xs):
    T["cat6.x%d" % k] = x.detach()
record("cat6", torch.cat(xs, dim=-1), {"x%d" % k: x for k, x in enumerate(xs)})

# stack of 3 along the new last dim; stack of 5 along dim 0
ys = [leaf(torch.randn(3, 4)) for _ in range(3)]
for k, y in enumerate(ys):
    T["stack.y%d" % k] = y.detach()
record("stack", torch.stack(ys, dim=-1), {"y%d" % k: y for k, y in enumerate(ys)})
zs = [leaf(torch.randn(2, 3)) for _ in range(5)]
for k, z in enumerate(zs):
    T["stack5.z%d" % k] = z.detach()
record("stack5", torch.stack(zs, dim=0), {"z%d" % k: z for k, z in enumerate(zs)})

# constant padding with negative amounts (crops) on three trailing dims
p = leaf(torch.randn(2, 3, 5, 6))
T["pad.x"] = p.detach()
T["pad.amounts"] = torch.tensor([1, 2, -1, 3, 0, -1], dtype=torch.int32)
record("pad", F.pad(p, (1, 2, -1, 3, 0, -1), value=0.5), {"x": p})

# flatten dims 1..2
f = leaf(torch.randn(2, 3, 4, 5))
T["flatten.x"] = f.detach()
record("flatten", torch.flatten(f, 1, 2), {"x": f})

# index_select with repeated indices, dim 0 and a middle dim
s0 = leaf(torch.randn(5, 7))
i0 = torch.tensor([4, 0, 4, 2, 4, 1])
T["isel0.x"], T["isel0.index"] = s0.detach(), i0
record("isel0", torch.index_select(s0, 0, i0), {"x": s0})
s1 = leaf(torch.randn(3, 7, 4))
i1 = torch.tensor([6, 6, 0, 3])
T["isel1.x"], T["isel1.index"] = s1.detach(), i1
record("isel1", torch.index_select(s1, 1, i1), {"x": s1})

# gather: along the last dim with an index longer than the input there; along dim 0 with
# an index smaller than the input in the other dims
g0 = leaf(torch.randn(4, 5))
j0 = torch.randint(0, 5, (4, 7))
T["gather0.x"], T["gather0.index"] = g0.detach(), j0
record("gather0", torch.gather(g0, 1, j0), {"x": g0})
g1 = leaf(torch.randn(3, 4, 5))
j1 = torch.randint(0, 3, (6, 4, 2))
T["gather1.x"], T["gather1.index"] = g1.detach(), j1
record("gather1", torch.gather(g1, 0, j1), {"x": g1})

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "shape.safetensors"), T)
