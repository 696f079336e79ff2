"""PyTorch references for kiln's scaled dot-product attention (tests/test_attention.c).

torch 1.13 (Debian's python3-torch) has no F.scaled_dot_product_attention, so the reference
is its definition written out in float64: softmax(scale q k^T + mask) v, with boolean masks
as masked_fill(-inf), float masks added, is_causal as a lower-triangular (top-left aligned)
boolean mask, and broadcasting through matmul as torch 2's math backend. A row with every
key excluded gives 0 and zero gradients (torch >= 2.5's math backend, _safe_softmax).

Case "sdpa.<name>." stores q, k, v, mask (I32 0/1 for boolean masks, F32 for additive),
the seed gradient gy, the output y, the gradients gq, gk, gv (F32), and p = [mask kind
(0 none, 1 boolean, 2 float), is_causal, has_scale] with the scale in `scale`.
Run: /usr/bin/python3 tests/golden/gen_attention.py
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_io  # noqa: E402

torch.manual_seed(0)
out = {}


def sdpa_ref(q, k, v, mask, causal, scale):
    w = torch.matmul(q, k.transpose(-2, -1)) * scale
    L, S = q.shape[-2], k.shape[-2]
    if causal:
        mask = torch.ones(L, S, dtype=torch.bool).tril()
    if mask is not None and mask.dtype == torch.bool:
        w = w.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        w = w + mask
    # safe softmax: rows with no visible key give 0
    mx = w.amax(dim=-1, keepdim=True)
    mx = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    e = torch.exp(w - mx)
    s = e.sum(dim=-1, keepdim=True)
    p = torch.where(s > 0, e / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(e))
    return torch.matmul(p, v)


def case(name, qs, ks, vs, mask=None, causal=False, scale=None):
    q = torch.randn(*qs, dtype=torch.float64)
    k = torch.randn(*ks, dtype=torch.float64)
    v = torch.randn(*vs, dtype=torch.float64)
    # float32 inputs, as kiln gets them
    q, k, v = (t.float().double().requires_grad_(True) for t in (q, k, v))
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.float().double()
    sc = scale if scale is not None else 1.0 / math.sqrt(qs[-1])
    y = sdpa_ref(q, k, v, mask, causal, sc)
    gy = torch.randn(*y.shape, dtype=torch.float64).float().double()
    y.backward(gy)
    pre = "sdpa." + name + "."
    out[pre + "q"], out[pre + "k"], out[pre + "v"] = q.detach(), k.detach(), v.detach()
    if mask is not None:
        out[pre + "mask"] = mask.to(torch.int32) if mask.dtype == torch.bool else mask
    out[pre + "gy"], out[pre + "y"] = gy, y.detach()
    out[pre + "gq"], out[pre + "gk"], out[pre + "gv"] = q.grad, k.grad, v.grad
    kind = 0 if mask is None else (1 if mask.dtype == torch.bool else 2)
    out[pre + "p"] = torch.tensor([kind, int(causal), int(scale is not None)], dtype=torch.int32)
    out[pre + "scale"] = torch.tensor([sc], dtype=torch.float64)


# plain, L != S, E != Ev, two batch dims
case("plain", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6))
# 2-D operands over several key tiles, lengths not multiples of the tiles
case("twod", (19, 16), (70, 16), (70, 12))
# boolean mask [L, S] broadcast over batch and heads; some rows partly excluded
bm = torch.rand(5, 7) > 0.4
bm[:, 0] = True
case("bool", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6), mask=bm)
# float mask [heads, 1, S]: broadcast over the batch and the query rows
case("float", (2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6), mask=torch.randn(3, 1, 7) * 2)
# causal, L < S and L > S, several tiles
case("causal", (2, 37, 8), (2, 45, 8), (2, 45, 5), causal=True)
case("causal_tall", (1, 2, 45, 8), (1, 2, 37, 8), (1, 2, 37, 8), causal=True)
# three batch dims; key and value broadcast over the first
case("bcast", (2, 2, 3, 9, 4), (2, 3, 33, 4), (2, 3, 33, 5))
# a fully masked query row (row 2) and a custom scale
fm = torch.rand(2, 1, 6, 11) > 0.3
fm[..., 0] = True
fm[1, 0, 2, :] = False
case("fullmask", (2, 2, 6, 4), (2, 2, 11, 4), (2, 2, 11, 4), mask=fm, scale=0.3)
# larger: several query blocks and key tiles, random boolean mask
lm = torch.rand(67, 130) > 0.5
case("long", (2, 67, 32), (2, 130, 32), (2, 130, 24), mask=lm)
case("long_causal", (1, 100, 32), (1, 100, 32), (1, 100, 32), causal=True)

golden_io.save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "attention.safetensors"), out)
print("wrote", len(out), "tensors")
