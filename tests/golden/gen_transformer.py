"""PyTorch reference for tests/test_transformer.c: nn.MultiheadAttention, the Transformer
encoder/decoder layers (norm_first both ways, relu and gelu) and the encoder stack.

Each case "<name>." holds:
  p        I32 parameters of the case (see CASES below for each kind's layout)
  w.<name> the module's state_dict (torch's names)
  q, k, v  (MultiheadAttention) or src / tgt, mem (layers) inputs
  kpm, am  masks when the case has them: kpm I32 0/1 [B, S] (1: padded), am I32 0/1
           (boolean, 1: not allowed) or F32 (additive); amf I32 [1]: 1 when am is float
  mkpm     the decoder's memory_key_padding_mask
  out      the output; wts the averaged attention weights when asked
  gout     the seed gradient: the loss is sum(out * gout)
  g.<in>, g.w.<name>  the gradients of every input and every parameter
The modules run in float64 in eval mode with dropout 0; values are stored as F32.
transformer_state.safetensors is the float32 state_dict of the case "sd." encoder layer
exactly as torch saves it, for the strict-load test; its input and output are in
transformer.safetensors.
Run with Debian's interpreter: /usr/bin/python3 tests/golden/gen_transformer.py
"""
import os

import torch
import torch.nn as nn

from golden_io import save

torch.manual_seed(4321)
here = os.path.dirname(os.path.abspath(__file__))
out = {}


def seq(bf, B, T, D):
    x = torch.randn(B, T, D, dtype=torch.float64) if bf else torch.randn(T, B, D, dtype=torch.float64)
    return x.requires_grad_(True)


def kpm_of(B, S, lengths):
    m = torch.zeros(B, S, dtype=torch.bool)
    for b, n in enumerate(lengths):
        m[b, n:] = True
    return m


def causal(L, S):
    return torch.ones(L, S, dtype=torch.bool).triu(1)


def finish(prefix, m, y, inputs):
    gout = torch.randn_like(y)
    (y * gout).sum().backward()
    out[prefix + "out"] = y
    out[prefix + "gout"] = gout
    for name, t in inputs.items():
        out[prefix + name] = t
        out[prefix + "g." + name] = t.grad
    for name, t in m.named_parameters():
        out[prefix + "w." + name] = t
        out[prefix + "g.w." + name] = t.grad


# MultiheadAttention: p = [E, H, kdim, vdim, bias, batch_first, L, S, B, self, need_weights, kpm, am (0 none,
# 1 bool 2-D, 2 float 2-D, 3 bool 3-D)]
MHA = {
    "mha1": (8, 2, 8, 8, 1, 0, 5, 5, 3, 1, 1, [5, 3, 4], 0),
    "mha2": (8, 4, 6, 7, 1, 1, 4, 6, 2, 0, 0, None, 2),
    "mha3": (12, 3, 12, 12, 0, 1, 6, 6, 2, 1, 1, None, 1),
    "mha4": (8, 2, 8, 8, 1, 0, 3, 5, 2, 0, 1, [4, 5], 3),
}
for name, (E, H, kd, vd, bias, bf, L, S, B, self_, nw, lens, am_kind) in MHA.items():
    pre = name + "."
    m = nn.MultiheadAttention(E, H, bias=bool(bias), batch_first=bool(bf), kdim=kd, vdim=vd).double().eval()
    q = seq(bf, B, L, E)
    if self_:
        k = v = q
        inputs = {"q": q}
    else:
        k, v = seq(bf, B, S, kd), seq(bf, B, S, vd)
        inputs = {"q": q, "k": k, "v": v}
    kpm = kpm_of(B, S, lens) if lens else None
    am = None
    if am_kind == 1:
        am = causal(L, S)
    elif am_kind == 2:
        am = torch.randn(L, S, dtype=torch.float64)
    elif am_kind == 3:
        am = torch.rand(B * H, L, S) < 0.3
        am[:, :, 0] = False  # every row keeps a key
    y, w = m(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=bool(nw))
    if kpm is not None:
        out[pre + "kpm"] = kpm.int()
    if am is not None:
        out[pre + "am"] = am if am.is_floating_point() else am.int()
        out[pre + "amf"] = torch.tensor([int(am.is_floating_point())], dtype=torch.int32)
    if nw:
        out[pre + "wts"] = w
    out[pre + "p"] = torch.tensor([E, H, kd, vd, bias, bf, L, S, B, self_, nw, int(lens is not None), am_kind],
                                  dtype=torch.int32)
    finish(pre, m, y, inputs)

# layers: p = [d_model, nhead, dim_ff, gelu, batch_first, norm_first, T (tgt), S (memory), B, causal, kpm,
# decoder, num_layers (0: one layer, else a TransformerEncoder stack of that many with a final norm)]
LAYERS = {
    "enc_post": (8, 2, 16, 0, 0, 0, 5, 0, 3, 0, [5, 4, 2], 0, 0),
    "enc_pre": (8, 2, 16, 1, 1, 1, 6, 0, 2, 1, [6, 4], 0, 0),
    "dec_post": (8, 4, 12, 0, 1, 0, 4, 5, 2, 1, [5, 3], 1, 0),
    "dec_pre": (8, 2, 12, 1, 0, 1, 5, 3, 2, 1, [3, 2], 1, 0),
    "enc_stack": (8, 2, 16, 1, 1, 1, 5, 0, 2, 1, [5, 3], 0, 2),
}
for name, (d, h, ff, gelu, bf, nf, T, S, B, caus, lens, dec, nl) in LAYERS.items():
    pre = name + "."
    kw = dict(dim_feedforward=ff, dropout=0.0, activation="gelu" if gelu else "relu", batch_first=bool(bf),
              norm_first=bool(nf))
    if dec:
        m = nn.TransformerDecoderLayer(d, h, **kw)
    elif nl:
        m = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, h, **kw), nl, norm=nn.LayerNorm(d),
                                  enable_nested_tensor=False)
    else:
        m = nn.TransformerEncoderLayer(d, h, **kw)
    m = m.double().eval()
    x = seq(bf, B, T, d)
    if dec:
        mem = seq(bf, B, S, d)
        mkpm = kpm_of(B, S, lens)
        y = m(x, mem, tgt_mask=causal(T, T) if caus else None, memory_key_padding_mask=mkpm)
        out[pre + "mkpm"] = mkpm.int()
        inputs = {"src": x, "mem": mem}
    else:
        kpm = kpm_of(B, T, lens)
        y = m(x, causal(T, T) if caus else None, src_key_padding_mask=kpm)
        out[pre + "kpm"] = kpm.int()
        inputs = {"src": x}
    out[pre + "p"] = torch.tensor([d, h, ff, gelu, bf, nf, T, S, B, caus, 1, dec, nl], dtype=torch.int32)
    finish(pre, m, y, inputs)

# the strict-load case: a float32 encoder layer saved by torch
sd = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True).eval()
xs = torch.randn(2, 7, 16)
with torch.no_grad():
    ys = sd(xs)
out["sd.x"] = xs
out["sd.out"] = ys
save(os.path.join(here, "transformer_state.safetensors"), dict(sd.state_dict()))
save(os.path.join(here, "transformer.safetensors"), out)
print(f"wrote {len(out)} tensors to transformer.safetensors, {len(sd.state_dict())} to transformer_state.safetensors")
