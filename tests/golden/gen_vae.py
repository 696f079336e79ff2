"""PyTorch references for tests/test_vae.c: one step of examples/autoencoder_fashion's
variational autoencoder at a reduced size, and its KL term alone.

Run: /usr/bin/python3 tests/golden/gen_vae.py   (writes tests/golden/vae.safetensors)

The model has the example's structure on 8x8 images with 2 and 4 channels and a latent of
2: enc conv(1,2,3,s2,p1)-ReLU-conv(2,4,3,s2,p1)-ReLU-flatten(16), heads mu and logvar
linear(16,2), dec_fc linear(2,16)-ReLU-[4,2,2], dec convT(4,2,3,s2,p1,op1)-ReLU-
convT(2,1,3,s2,p1,op1) to logits [3,1,8,8]. With a stored eps (kiln's own draws cannot
equal torch's), z = mu + exp(logvar / 2) * eps and the loss (BCE-with-logits summed + KL) /
batch, KL = -1/2 sum(1 + logvar - mu^2 - exp(logvar)).

Names: step.x, step.eps, step.<param> (state_dict names), step.mu, step.logvar, step.z,
step.rec, step.kl, step.loss, step.grad.<param>, step.grad.mu, step.grad.logvar (the
gradients of the loss); kl.mu, kl.logvar (some large and small log-variances), kl.out,
kl.gmu, kl.glogvar (gradients of the summed KL).
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from golden_io import save

torch.manual_seed(18)
out = {}


class VAE(nn.Module):
    def __init__(s):
        super().__init__()
        s.enc = nn.Sequential(nn.Conv2d(1, 2, 3, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 3, 2, 1), nn.ReLU(), nn.Flatten())
        s.mu = nn.Linear(16, 2)
        s.logvar = nn.Linear(16, 2)
        s.dec_fc = nn.Linear(2, 16)
        s.dec = nn.Sequential(nn.ConvTranspose2d(4, 2, 3, 2, 1, 1), nn.ReLU(), nn.ConvTranspose2d(2, 1, 3, 2, 1, 1))


m = VAE()
with torch.no_grad():  # larger weights than the default init, so no ReLU is dead and the terms are O(1)
    for p in m.parameters():
        p.mul_(2.0)
x = torch.rand(3, 1, 8, 8)
eps = torch.randn(3, 2)
h = m.enc(x)
mu, logvar = m.mu(h), m.logvar(h)
mu.retain_grad()
logvar.retain_grad()
z = mu + torch.exp(0.5 * logvar) * eps
logits = m.dec(F.relu(m.dec_fc(z)).view(-1, 4, 2, 2))
rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
kl = -0.5 * torch.sum(1 + logvar - mu * mu - logvar.exp())
loss = (rec + kl) / 3
loss.backward()
out["step.x"] = x
out["step.eps"] = eps
for name, p in m.named_parameters():
    out["step." + name] = p.detach()
    out["step.grad." + name] = p.grad
for name, t in [("mu", mu), ("logvar", logvar), ("z", z), ("rec", rec), ("kl", kl), ("loss", loss)]:
    out["step." + name] = t.detach().reshape(-1) if t.dim() == 0 else t.detach()
out["step.grad.mu"] = mu.grad
out["step.grad.logvar"] = logvar.grad

kmu = torch.randn(4, 5) * 2
klv = torch.cat([torch.randn(4, 3) * 3, torch.tensor([[-20.0, 10.0]] * 4)], 1).requires_grad_(True)
kmu.requires_grad_(True)
k = -0.5 * torch.sum(1 + klv - kmu * kmu - klv.exp())
k.backward()
out["kl.mu"] = kmu.detach()
out["kl.logvar"] = klv.detach()
out["kl.out"] = k.detach().reshape(1)
out["kl.gmu"] = kmu.grad
out["kl.glogvar"] = klv.grad

save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vae.safetensors"), out)
print(f"wrote {len(out)} tensors")
