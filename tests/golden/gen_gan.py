"""PyTorch references for tests/test_gan.c: two training steps of examples/gan_fashion's
GAN at a reduced size, with each loss.

Run: /usr/bin/python3 tests/golden/gen_gan.py   (writes tests/golden/gan.safetensors)

The models have the example's (torch_ref.py's dcgan) structure with channels 4 and 8 and a
noise of 8: G linear(8,392)-BN1d-ReLU-[8,7,7]-convT(8,4,4,s2,p1)-BN2d-ReLU-
convT(4,1,4,s2,p1)-tanh; D conv(1,4,4,s2,p1)-LReLU(.2)-conv(4,8,4,s2,p1)-BN2d-LReLU(.2)-
flatten-linear(392,1). Batch 5 of stored real images in [-1, 1] and stored noise. A step
is the example's: fake = G(z); D update on D(real), D(fake.detach()); G update on D(fake)
through the updated D; Adam(2e-4, betas 0.5/0.999) each over all but BEFORE_BN below; losses lsgan (0.5 mean((D(real)
- 1)^2) + 0.5 mean(D(fake)^2); 0.5 mean((D(fake) - 1)^2)) or bce (bce(D(real), 1) +
bce(D(fake), 0); bce(D(fake), 1), on logits).

Names: init.G.<state>, init.D.<state> (the weights both losses start from; state_dict
names, num_batches_tracked left out), x<s>, z<s> (s = 1, 2: each step's real images and
noise); for L in lsgan, bce and s in 1, 2: L.<s>.d_loss, L.<s>.g_loss, L.<s>.dgrad.<param>
(D's gradients after D's backward), L.<s>.ggrad.<param> (G's after G's backward), and
after step s L.<s>.G.<state>, L.<s>.D.<state> (parameters and running statistics).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from golden_io import save

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from gan_torch import gan_models  # noqa: E402  (the example's networks, at any size)

torch.manual_seed(18)
B, Z, C1, C2 = 5, 8, 4, 8
# The biases just before a BatchNorm, which cancels them: their gradient is 0 but for
# rounding noise, which Adam turns into steps of up to lr in a direction rounding decides
# (and the next BatchNorm's running mean follows). Left out of both optimizers here (the
# example trains them, as torch_ref.py does), so everything else compares tightly.
BEFORE_BN = {"G": ("0.bias", "4.bias"), "D": ("2.bias",)}


def models():
    return gan_models(C1, C2, Z)


def state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}


G0, D0 = models()
with torch.no_grad():  # affine BatchNorm weights away from 1 and biases away from 0, so a swap shows
    for m in list(G0) + list(D0):
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.5, 0.5)
out = {}
for k, v in state(G0).items():
    out["init.G." + k] = v
for k, v in state(D0).items():
    out["init.D." + k] = v
xs = [torch.rand(B, 1, 28, 28) * 2 - 1 for _ in range(2)]
zs = [torch.randn(B, Z) for _ in range(2)]
for s in range(2):
    out[f"x{s + 1}"] = xs[s]
    out[f"z{s + 1}"] = zs[s]

for loss in ("lsgan", "bce"):
    G, D = models()
    G.load_state_dict(G0.state_dict())
    D.load_state_dict(D0.state_dict())
    og = torch.optim.Adam([q for k, q in G.named_parameters() if k not in BEFORE_BN["G"]], 2e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam([q for k, q in D.named_parameters() if k not in BEFORE_BN["D"]], 2e-4, betas=(0.5, 0.999))
    for s in range(2):
        p = f"{loss}.{s + 1}."
        fake = G(zs[s])
        dr, df = D(xs[s]), D(fake.detach())
        if loss == "bce":
            d_loss = (F.binary_cross_entropy_with_logits(dr, torch.ones_like(dr)) +
                      F.binary_cross_entropy_with_logits(df, torch.zeros_like(df)))
        else:
            d_loss = 0.5 * ((dr - 1) ** 2).mean() + 0.5 * (df ** 2).mean()
        od.zero_grad()
        d_loss.backward()
        for k, q in D.named_parameters():
            out[p + "dgrad." + k] = q.grad.clone()
        od.step()
        g = D(fake)
        g_loss = F.binary_cross_entropy_with_logits(g, torch.ones_like(g)) if loss == "bce" else 0.5 * ((g - 1) ** 2).mean()
        og.zero_grad()
        g_loss.backward()
        for k, q in G.named_parameters():
            out[p + "ggrad." + k] = q.grad.clone()
        og.step()
        out[p + "d_loss"] = d_loss.detach().reshape(1)
        out[p + "g_loss"] = g_loss.detach().reshape(1)
        for k, v in state(G).items():
            out[p + "G." + k] = v
        for k, v in state(D).items():
            out[p + "D." + k] = v

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gan.safetensors"), out)
print(f"wrote {len(out)} tensors")
