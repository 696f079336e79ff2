"""PyTorch references for kiln's elementwise ops (tests/test_elementwise.c reads
elementwise.safetensors).

A case "<op>.<variant>" stores each input's contiguous float32 base "<case>.<input>"
(inputs a, b; where: c, a, b; unary and tensor-scalar ops: x), the scalar operand
"<case>.scalar" of a tensor-scalar op, the output "<case>.out" and, for a differentiable
op, the seed gradient "<case>.g" and the gradient of every input "<case>.d<input>" after
out.backward(g). The test rebuilds each input from its base with the view named in its
table (LAYOUTS below, the same steps as tests/test_elementwise.c's gold_layout), so that
non-contiguous inputs are covered. Everything is computed in float64 from the float32
inputs and rounded once to float32 when saved.

"<case>.m<input>" is the magnitude a gradient is computed from: the sum, over the output
elements an input element is broadcast to, of |g * d out / d input| (the input's share of
each term). The test's bound is a few roundings relative to it, which stays meaningful
when a broadcast sum cancels.

Variants: "bc" both operands broadcast (a [3,1,4], b [2,1] -> [3,2,4]); "nc" a transposed
view and a strided slice; "edge" pow's 0^0, 0^b, negative bases with integer exponents,
negative bases with a fractional exponent (NaN), 0^-1 (Inf). Values for minimum, maximum
and the comparisons are multiples of 0.5, so ties are frequent (torch.maximum/minimum
split a tie's gradient evenly; clamp passes it whole).
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_elementwise.py
"""
import os

import torch

from golden_io import save

torch.manual_seed(20261204)
T = {}

# name -> (base shape, view steps); the test's gold_layout table has the same steps.
# ("T", d0, d1): transpose; ("S", dim, start, end, step): slice.
LAYOUTS = {
    "a_bc": ([3, 1, 4], []),
    "b_bc": ([2, 1], []),
    "a_nc": ([4, 3], [("T", 0, 1)]),               # [3, 4], transposed
    "b_nc": ([3, 8], [("S", 1, 1, 8, 2)]),         # [3, 4], every other column
    "c_nc": ([6, 4], [("S", 0, 0, 6, 2)]),         # [3, 4], every other row
    "x_3d": ([2, 3, 5], []),
    "x_nc": ([6, 4], [("T", 0, 1), ("S", 1, 0, 6, 2)]),  # [4, 3]
    "e_34": ([3, 4], []),
    "w_c": ([3, 1, 4], []),
    "w_a": ([2, 4], []),
    "w_b": ([3, 2, 1], []),
}


def view(t, steps):
    for s in steps:
        if s[0] == "T":
            t = t.transpose(s[1], s[2])
        else:
            d, start, end, step = s[1:]
            t = t[(slice(None),) * d + (slice(start, end, step),)]
    return t


def quant(shape, lo=-2.0, hi=2.0):
    """Multiples of 0.5 in [lo, hi]: exact, and equal pairs are frequent."""
    return torch.floor(torch.empty(shape).uniform_(lo, hi + 0.5) * 2) / 2


def away(shape, lo=0.5, hi=2.0):
    """|v| in [lo, hi), random sign: denominators away from zero."""
    v = torch.empty(shape).uniform_(lo, hi)
    return torch.where(torch.rand(shape) < 0.5, -v, v)


def signed_zeros(t):
    """t with +0 and -0 as its first two elements."""
    t.view(-1)[:2] = torch.tensor([0.0, -0.0])
    return t


def sum_to(t, shape):
    """Sums a broadcast gradient down to shape (as autograd does)."""
    lead = t.dim() - len(shape)
    t = t.sum(dim=tuple(range(lead))) if lead > 0 else t
    dims = tuple(d for d, n in enumerate(shape) if n == 1 and t.shape[d] != 1)
    return t.sum(dim=dims, keepdim=True) if dims else t


def case(name, fn, inputs, grad=True, scalar=None):
    """inputs: [(input name, layout, float32 base)]; grad: which inputs are differentiable
    (True: all; a set of names otherwise)."""
    xs = []
    for k, lay, base in inputs:
        shape, steps = LAYOUTS[lay]
        assert list(base.shape) == shape
        T["%s.%s" % (name, k)] = base
        want = grad is True or (grad and k in grad)
        xs.append((k, view(base.double(), steps).detach().requires_grad_(bool(want))))
    if scalar is not None:
        T[name + ".scalar"] = torch.tensor(scalar, dtype=torch.float32)
    out = fn(*[x for _, x in xs])
    T[name + ".out"] = out.detach()
    if not grad:
        return
    g = torch.randn(out.shape)
    out.backward(g.double())
    T[name + ".g"] = g
    # the terms: the same op on inputs expanded to the output's shape
    xe = [x.detach().expand(out.shape).clone().requires_grad_(x.requires_grad) for _, x in xs]
    oe = fn(*xe)
    diff = [x for x in xe if x.requires_grad]
    terms = torch.autograd.grad(oe, diff, g.double())
    ti = iter(terms)
    for (k, x), e in zip(xs, xe):
        if not x.requires_grad:
            continue
        T["%s.d%s" % (name, k)] = x.grad
        T["%s.m%s" % (name, k)] = sum_to(next(ti).abs(), list(x.shape))


binary = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
    "minimum": torch.minimum, "maximum": torch.maximum,
}
compare = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge}


def operands(op, variant):
    sa, sb = LAYOUTS["a_" + variant][0], LAYOUTS["b_" + variant][0]
    if op == "div":
        return torch.randn(sa), away(sb)
    if op == "pow":
        return torch.empty(sa).uniform_(0.5, 2.0), torch.empty(sb).uniform_(-2.0, 2.0)
    if op in ("minimum", "maximum") or op in compare:
        return quant(sa), quant(sb)
    return torch.randn(sa), torch.randn(sb)


for op, fn in binary.items():
    for v in ("bc", "nc"):
        a, b = operands(op, v)
        if op in ("minimum", "maximum"):  # ties present: their gradient is split
            assert (view(a, LAYOUTS["a_" + v][1]) == view(b, LAYOUTS["b_" + v][1])).any()
        case("%s.%s" % (op, v), fn, [("a", "a_" + v, a), ("b", "b_" + v, b)])
for op, fn in compare.items():
    for v in ("bc", "nc"):
        a, b = operands(op, v)
        case("%s.%s" % (op, v), lambda p, q, fn=fn: fn(p, q).double(), [("a", "a_" + v, a), ("b", "b_" + v, b)],
             grad=False)

# pow's edge cases, elementwise pairs (a, b)
pairs = [(0, 0), (0, 1), (0, 2), (0, 0.5), (-2, 2), (-2, 3), (-1.5, -2), (-3, 0), (2, 0), (-0.5, 1), (1, -3.5),
         (0, -1)]
pa = torch.tensor([p[0] for p in pairs], dtype=torch.float32).reshape(3, 4)
pb = torch.tensor([p[1] for p in pairs], dtype=torch.float32).reshape(3, 4)
case("pow.edge", torch.pow, [("a", "e_34", pa), ("b", "e_34", pb)])

# where: cond (0, -0 or non-zero) broadcast with a and b, each broadcast; and on views
cond = torch.tensor([0.0, -0.0, 1.0, -2.5] * 3).reshape(3, 1, 4)[torch.randperm(3)]
case("where.bc", lambda c, p, q: torch.where(c != 0, p, q),
     [("c", "w_c", cond), ("a", "w_a", torch.randn(2, 4)), ("b", "w_b", torch.randn(3, 2, 1))], grad={"a", "b"})
cond = (torch.rand(6, 4) < 0.5).float()
case("where.nc", lambda c, p, q: torch.where(c != 0, p, q),
     [("c", "c_nc", cond), ("a", "a_nc", torch.randn(4, 3)), ("b", "b_nc", torch.randn(3, 8))], grad={"a", "b"})

# unary ops: a contiguous 3-D input and a transposed, strided view
unary = {
    "neg": (torch.neg, lambda s: torch.randn(s)),
    "exp": (torch.exp, lambda s: torch.empty(s).uniform_(-4, 4)),
    "log": (torch.log, lambda s: torch.empty(s).uniform_(0.05, 8)),
    "sqrt": (torch.sqrt, lambda s: torch.empty(s).uniform_(0.05, 8)),
    "abs": (torch.abs, lambda s: signed_zeros(quant(s))),  # torch's d|x|/dx at +-0 is 0
}
for op, (fn, gen) in unary.items():
    for v in ("3d", "nc"):
        case("%s.%s" % (op, v), fn, [("x", "x_" + v, gen(LAYOUTS["x_" + v][0]))])

# tensor-scalar ops
xs = LAYOUTS["x_nc"][0]
scalar_cases = [
    ("add_scalar.0", lambda x: x + 1.5, 1.5, torch.randn(xs)),
    ("mul_scalar.0", lambda x: x * -2.5, -2.5, torch.randn(xs)),
    ("pow_scalar.2", lambda x: torch.pow(x, 2.0), 2.0, quant(xs)),        # zeros and negatives
    ("pow_scalar.3", lambda x: torch.pow(x, 3.0), 3.0, torch.randn(xs)),  # negative bases
    ("pow_scalar.0.5", lambda x: torch.pow(x, 0.5), 0.5, torch.empty(xs).uniform_(0.05, 4)),
    ("pow_scalar.-1.5", lambda x: torch.pow(x, -1.5), -1.5, torch.empty(xs).uniform_(0.25, 4)),
    ("pow_scalar.0", lambda x: torch.pow(x, 0.0), 0.0, quant(xs)),        # 0^0 = 1, gradient 0
    ("minimum_scalar.0", lambda x: torch.clamp(x, max=0.5), 0.5, quant(xs)),   # ties with 0.5
    ("maximum_scalar.0", lambda x: torch.clamp(x, min=-0.5), -0.5, quant(xs)),
]
for name, fn, s, x in scalar_cases:
    case(name, fn, [("x", "x_nc", x)], scalar=s)

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "elementwise.safetensors"), T)
