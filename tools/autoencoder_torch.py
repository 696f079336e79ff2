#!/usr/bin/python3
"""tools/autoencoder_torch.py - examples/autoencoder_fashion's recipes in PyTorch: the
reference for kiln's plain, denoising and variational autoencoders (issue 18: test MSE
within 5 % of this script's after the same epochs).

Plain: torch_ref.py's AE (conv(1,16,3,s2,p1)-ReLU-conv(16,32,3,s2,p1)-ReLU-
convT(32,16,3,s2,p1,op1)-ReLU-convT(16,1,3,s2,p1,op1)-sigmoid, 9,569 parameters), MSE
against the input, Adam(1e-3), batch 64, pixels x/255, training set shuffled every epoch;
test MSE over the 10,000 test images in batches of 250 after every epoch.
--denoise SIGMA: inputs x + SIGMA * N(0, 1) clamped to [0, 1], targets the clean x (test
inputs noisy too, fresh noise each evaluation).
--vae: encoder conv-ReLU-conv-ReLU-flatten, linear heads mu and logvar (--latent, 2),
z = mu + exp(logvar / 2) * eps, decoder linear-ReLU-[32,7,7]-convT-ReLU-convT to logits;
loss per image BCE(logits, x) summed over pixels + KL(q || N(0, I)); prints the test ELBO
(one z sample per image) per epoch.

Prints per epoch the same figures as the kiln example, then key=value lines (test_mse=...
or test_elbo=...). Seed policy: --seed seeds torch (initial weights, shuffle, noise, z
samples); kiln draws from its own generator with the same seed, so the two runs start from
different weights and see different batch orders: compare the figures, not trajectories.

    /usr/bin/python3 tools/autoencoder_torch.py --epochs 5 [--denoise 0.3 | --vae]
"""
import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"


def idx(path):
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    nd = data[3]
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


def load(d, train):
    pre = "train" if train else "t10k"
    x = idx(os.path.join(d, f"{pre}-images-idx3-ubyte"))
    return (torch.from_numpy(x.astype(np.float32)) / 255).unsqueeze(1)


class AE(nn.Module):  # torch_ref.py's
    def __init__(s):
        super().__init__()
        s.enc = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())
        s.dec = nn.Sequential(nn.ConvTranspose2d(32, 16, 3, 2, 1, 1), nn.ReLU(),
                              nn.ConvTranspose2d(16, 1, 3, 2, 1, 1), nn.Sigmoid())

    def forward(s, x):
        return s.dec(s.enc(x))


class VAE(nn.Module):
    def __init__(s, latent=2):
        super().__init__()
        s.enc = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                              nn.Flatten())
        s.mu = nn.Linear(1568, latent)
        s.logvar = nn.Linear(1568, latent)
        s.dec_fc = nn.Linear(latent, 1568)
        s.dec = nn.Sequential(nn.ConvTranspose2d(32, 16, 3, 2, 1, 1), nn.ReLU(), nn.ConvTranspose2d(16, 1, 3, 2, 1, 1))

    def decode(s, z):
        return s.dec(F.relu(s.dec_fc(z)).view(-1, 32, 7, 7))

    def forward(s, x):
        """Returns (logits, summed BCE, summed KL) of the batch."""
        h = s.enc(x)
        mu, logvar = s.mu(h), s.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = s.decode(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu * mu - logvar.exp())
        return logits, rec, kl


def noisy(x, sigma):
    return (x + sigma * torch.randn_like(x)).clamp(0, 1)


def batch_loss(model, a, x):
    if a.vae:
        _, rec, kl = model(x)
        return (rec + kl) / len(x), rec, kl
    inp = noisy(x, a.denoise) if a.denoise else x
    return F.mse_loss(model(inp), x), None, None


def evaluate(model, a, x, batch):
    model.eval()
    tot = rec = kl = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            l, r, k = batch_loss(model, a, xb)
            tot += l.item() * len(xb)
            if a.vae:
                rec += r.item()
                kl += k.item()
    model.train()
    n = len(x)
    return tot / n, rec / n, kl / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-batch", type=int, default=250)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all 60000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--denoise", type=float, default=0.0, metavar="SIGMA")
    ap.add_argument("--vae", action="store_true")
    ap.add_argument("--latent", type=int, default=2)
    a = ap.parse_args()
    if a.epochs < 1 or a.batch < 1 or a.limit < 0 or a.denoise < 0 or a.latent < 1 or (a.vae and a.denoise):
        sys.exit("--epochs, --batch, --latent must be >= 1, --limit, --denoise >= 0; --vae excludes --denoise")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, xte = load(a.data, True), load(a.data, False)
    if a.limit:
        xtr = xtr[:a.limit]
    model = VAE(a.latent) if a.vae else AE()
    kind = "variational autoencoder" if a.vae else ("denoising autoencoder" if a.denoise else "autoencoder")
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{kind}: {nparams} parameters; Adam lr {a.lr}, batch {a.batch}; {len(xtr)} training, {len(xte)} test "
          f"images; {torch.get_num_threads()} threads, seed {a.seed}", flush=True)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    t_train = 0.0
    steps = 0
    for epoch in range(a.epochs):
        t0 = time.time()
        perm = torch.randperm(len(xtr))
        total, n = 0.0, 0
        for i in range(0, len(xtr), a.batch):
            xb = xtr[perm[i:i + a.batch]]
            loss, _, _ = batch_loss(model, a, xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            n += len(xb)
            steps += 1
        secs = time.time() - t0
        t_train += secs
        test, rec, kl = evaluate(model, a, xte, a.eval_batch)
        if a.vae:
            print(f"epoch {epoch + 1}: train loss {total / n:.2f}, test ELBO {-test:.2f} (reconstruction BCE "
                  f"{rec:.2f}, KL {kl:.2f}), {secs:.1f} s", flush=True)
        else:
            print(f"epoch {epoch + 1}: train MSE {total / n:.5f}, test MSE {test:.5f}, {secs:.1f} s", flush=True)
    print(f"trained {a.epochs} epochs in {t_train:.1f} s ({t_train * 1e3 / steps:.2f} ms per step, mean)")
    if a.vae:
        print(f"test_elbo={-test:.3f}")
    else:
        print(f"test_mse={test:.6f}")


if __name__ == "__main__":
    main()
