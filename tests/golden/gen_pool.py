"""PyTorch references for kiln's pooling family (tests/test_pool.c reads them):
max_pool2d (values, return_indices, input gradient), avg_pool2d, global average pooling
(adaptive_avg_pool2d(x, 1)) and interpolate (nearest, bilinear with align_corners).

Every case stores its input x, output y, a seed gradient gy, the input gradient gx
(from y.backward(gy)) and an I32 "p" vector with its parameters, so the C test holds no
copy of the table. Run: /usr/bin/python3 tests/golden/gen_pool.py
"""
import os

import torch
import torch.nn.functional as F

from golden_io import save

torch.manual_seed(0)
T = {}


def case(prefix, x, fn, params, backward=True):
    x = x.clone().requires_grad_(backward)
    out = fn(x)
    y, idx = out if isinstance(out, tuple) else (out, None)
    T[prefix + ".x"] = x.detach()
    T[prefix + ".y"] = y.detach()
    T[prefix + ".p"] = torch.tensor(params, dtype=torch.int32)
    if idx is not None:
        T[prefix + ".idx"] = idx
    if backward:
        gy = torch.randn_like(y)
        y.backward(gy)
        T[prefix + ".gy"] = gy
        T[prefix + ".gx"] = x.grad


# ---- max_pool2d: p = kh kw sh sw ph pw dh dw ceil backward ----------------------------
max_cases = [
    ([2, 3, 7, 5], (3, 3), (2, 2), (1, 1), (1, 1), False),
    ([1, 2, 7, 5], (2, 2), (2, 2), (0, 0), (1, 1), False),
    ([3, 2, 9, 8], (3, 3), (2, 2), (1, 1), (2, 2), True),
    ([1, 1, 1, 1], (1, 1), (1, 1), (0, 0), (1, 1), False),
    ([2, 2, 8, 7], (3, 2), (2, 1), (1, 0), (1, 1), True),
    ([3, 6, 6], (2, 2), (1, 1), (0, 0), (1, 1), False),
    ([2, 4, 24, 24], (2, 2), (2, 2), (0, 0), (1, 1), False),  # the reference CNN's pooling, small batch
    ([1, 3, 11, 13], (3, 2), (3, 2), (1, 1), (2, 3), True),
    ([1, 2, 5, 6], (4, 3), (1, 2), (2, 1), (1, 1), True),
    ([2, 2, 9, 11], (2, 2), (3, 3), (1, 1), (1, 1), False),  # windows with gaps between them
    ([1, 2, 8, 7], (2, 2), (3, 3), (1, 1), (2, 2), True),
]
k = 0
for shape, ks, st, pd, dl, ceil in max_cases:
    x = torch.randn(*shape)
    case("mp%d" % k, x,
         lambda t: F.max_pool2d(t, ks, st, pd, dl, ceil_mode=ceil, return_indices=True),
         [*ks, *st, *pd, *dl, int(ceil), 1])
    k += 1
# NaN and -inf: NaN propagates (the last NaN of a window gives the index); an all -inf
# window keeps its first element's index
x = torch.randn(1, 2, 6, 6)
x[0, 0, 1, 1] = float("nan")
x[0, 0, 1, 2] = float("nan")
x[0, 1, 4, 5] = float("nan")
x[0, 1, 0, :] = float("-inf")
x[0, 1, 1, :3] = float("-inf")
case("mp%d" % k, x, lambda t: F.max_pool2d(t, 3, 2, 1, return_indices=True), [3, 3, 2, 2, 1, 1, 1, 1, 0, 1])
k += 1
# a ceil-mode window that holds no element: -inf and the (out-of-plane) index torch gives
x = torch.randn(1, 1, 1, 1)
case("mp%d" % k, x, lambda t: F.max_pool2d(t, 3, 3, 1, 2, ceil_mode=True, return_indices=True),
     [3, 3, 3, 3, 1, 1, 2, 2, 1, 0], backward=False)
k += 1
T["mp.count"] = torch.tensor([k], dtype=torch.int32)

# ---- avg_pool2d: p = kh kw sh sw ph pw ceil count_include_pad ----------------------------
avg_cases = [
    ([2, 3, 7, 5], (3, 3), (2, 2), (1, 1), False, True),
    ([2, 3, 7, 5], (3, 3), (2, 2), (1, 1), False, False),
    ([1, 2, 9, 8], (3, 3), (2, 2), (1, 1), True, False),
    ([1, 2, 9, 8], (3, 3), (2, 2), (1, 1), True, True),
    ([3, 6, 6], (2, 3), (1, 2), (1, 1), False, True),
    ([1, 1, 5, 5], (5, 5), (1, 1), (0, 0), False, True),
    ([3, 2, 8, 11], (4, 2), (3, 3), (2, 1), True, False),
    ([1, 1, 1, 1], (1, 1), (1, 1), (0, 0), True, True),
    ([2, 2, 9, 11], (2, 2), (3, 3), (1, 1), True, True),
    ([1, 2, 10, 9], (2, 3), (3, 4), (0, 1), True, False),
    ([2, 3, 7, 5], (2, 2), (2, 2), (0, 0), False, True),
]
for k, (shape, ks, st, pd, ceil, cip) in enumerate(avg_cases):
    x = torch.randn(*shape)
    case("ap%d" % k, x, lambda t: F.avg_pool2d(t, ks, st, pd, ceil_mode=ceil, count_include_pad=cip),
         [*ks, *st, *pd, int(ceil), int(cip)])
T["ap.count"] = torch.tensor([len(avg_cases)], dtype=torch.int32)

# ---- global average pooling ----------------------------------------------------------------
gap_cases = [[2, 3, 7, 5], [3, 1, 1], [1, 4, 13, 11], [2, 1, 1, 1], [1, 2, 40, 33]]
for k, shape in enumerate(gap_cases):
    case("gp%d" % k, torch.randn(*shape), lambda t: F.adaptive_avg_pool2d(t, 1), [0])
T["gp.count"] = torch.tensor([len(gap_cases)], dtype=torch.int32)

# ---- interpolate: p = out_h out_w mode(0 nearest, 1 bilinear) align_corners ------------------
up_cases = [
    ([2, 3, 4, 5], (8, 10), 0, False),  # the x2 special case
    ([2, 3, 4, 5], (7, 9), 0, False),
    ([1, 2, 7, 5], (3, 2), 0, False),   # down
    ([1, 2, 4, 5], (4, 5), 0, False),   # identity
    ([1, 1, 14, 7], (20, 10), 0, False),  # scale 0.7 rounded in float
    ([1, 1, 3, 5], (13, 6), 0, False),
    ([2, 3, 4, 5], (8, 10), 1, False),
    ([2, 3, 4, 5], (7, 9), 1, False),
    ([1, 2, 7, 5], (3, 2), 1, False),
    ([1, 2, 4, 5], (4, 5), 1, False),
    ([1, 1, 3, 3], (17, 11), 1, False),
    ([2, 3, 4, 5], (7, 9), 1, True),
    ([1, 2, 7, 5], (3, 2), 1, True),
    ([1, 2, 7, 5], (1, 1), 1, True),
    ([1, 2, 1, 1], (3, 4), 1, True),
    ([1, 2, 1, 1], (3, 4), 1, False),
    ([1, 1, 5, 4], (1, 9), 1, False),
]
for k, (shape, size, mode, ac) in enumerate(up_cases):
    x = torch.randn(*shape)
    if mode == 0:
        fn = lambda t: F.interpolate(t, size=size, mode="nearest")
    else:
        fn = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=ac)
    case("up%d" % k, x, fn, [*size, mode, int(ac)])
T["up.count"] = torch.tensor([len(up_cases)], dtype=torch.int32)

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pool.safetensors"), T)
