#!/usr/bin/python3
"""tools/gan_torch.py - examples/gan_fashion's recipe in PyTorch: the reference for kiln's
GAN (issue 18: all 10 classes present and the Fréchet distance within 15 % of this
script's after the same epochs).

The model is torch_ref.py's dcgan (gan_models(), 691,330 parameters); each step one D
update on D(real) and D(fake.detach()), then one G update on D(fake) through the updated D,
Adam(2e-4, betas 0.5/0.999) each, batch 64, images x/255 * 2 - 1, training set shuffled
every epoch with the short last batch dropped. --loss lsgan (torch_ref.py's):
D 0.5 mean((D(real) - 1)^2) + 0.5 mean(D(fake)^2), G 0.5 mean((D(fake) - 1)^2); --loss bce:
D bce(D(real), 1) + bce(D(fake), 0), G bce(D(fake), 1), on logits.

Measure (--features PATH, a model saved by kiln's cnn_fashion --save, read here without
kiln): the Fréchet distance between that classifier's fc1-after-ReLU features (eval mode)
of --fid-samples generated images (G in eval mode, pixels (g + 1) / 2) and of the first as
many test images, in float64: |mu1 - mu2|^2 + tr C1 + tr C2 - 2 tr sqrt(sqrt(C1) C2
sqrt(C1)), both square roots by symmetric eigendecomposition with negative eigenvalues as 0
(what kiln_frechet_distance computes), covariances unbiased; and the class histogram of the
generated images. Prints the same key=value lines as the kiln example: per epoch d_loss=
g_loss=, at the end fid=, classes_present=, min_class_fraction=, d_loss=, g_loss=.

Seed policy: --seed seeds torch (weights, noise, order); kiln's generator differs, so
compare figures, not trajectories.

    /usr/bin/python3 tools/gan_torch.py --epochs 5 --features cnn.safetensors [--loss bce]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kiln_torch import fashion, load_safetensors  # noqa: E402

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def gan_models(c1=64, c2=128, z=64):  # torch_ref.py's (c1, c2, z = 64, 128, 64); tests/golden/gen_gan.py's smaller
    G = nn.Sequential(nn.Linear(z, c2 * 49), nn.BatchNorm1d(c2 * 49), nn.ReLU(), nn.Unflatten(1, (c2, 7, 7)),
                      nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.BatchNorm2d(c1), nn.ReLU(),
                      nn.ConvTranspose2d(c1, 1, 4, 2, 1), nn.Tanh())
    D = nn.Sequential(nn.Conv2d(1, c1, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(c1, c2, 4, 2, 1),
                      nn.BatchNorm2d(c2), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(c2 * 49, 1))
    return G, D


def classifier(path):
    """cnn_fashion's network at the checkpoint's sizes, loaded, eval mode: (features, logits) of x."""
    st, _ = load_safetensors(path)
    c1, c2, h = st["conv1.weight"].shape[0], st["conv2.weight"].shape[0], st["fc1.weight"].shape[0]
    m = nn.ModuleDict({"conv1": nn.Conv2d(1, c1, 3), "conv2": nn.Conv2d(c1, c2, 3), "fc1": nn.Linear(c2 * 144, h),
                       "fc2": nn.Linear(h, 10)})
    m.load_state_dict({k: v.float() for k, v in st.items()})
    m.eval()

    def run(x):
        x = F.max_pool2d(F.relu(m["conv2"](F.relu(m["conv1"](x)))), 2)
        f = F.relu(m["fc1"](torch.flatten(x, 1)))
        return f, m["fc2"](f)
    return run, h


def frechet(mu1, c1, mu2, c2):
    def sqrt_psd(a):
        w, v = np.linalg.eigh(a)
        return (v * np.sqrt(np.maximum(w, 0))) @ v.T
    s = sqrt_psd(c1)
    m = s @ c2 @ s
    m = 0.5 * (m + m.T)
    w = np.linalg.eigvalsh(m)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(np.maximum(w, 0)).sum())


def moments(f):
    f = f.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--loss", choices=["lsgan", "bce"], default="lsgan")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N training images only")
    ap.add_argument("--features", help="a cnn_fashion model (kiln's --save)")
    ap.add_argument("--fid-samples", type=int, default=10000)
    ap.add_argument("--out-dir", default=".", help="pictures (with torchvision) go there")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="KILN_EXAMPLE_TINY's channels (8, 16)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, _ = fashion(a.data, True)
    xte, _ = fashion(a.data, False)
    if a.limit:
        xtr = xtr[:a.limit]
    xtr = xtr * 2 - 1
    G, D = gan_models(8, 16) if a.tiny else gan_models()
    fixed = torch.randn(64, 64)
    og = torch.optim.Adam(G.parameters(), a.lr, betas=(0.5, 0.999))
    od = torch.optim.Adam(D.parameters(), a.lr, betas=(0.5, 0.999))
    npg, npd = sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters())
    print(f"parameters: G {npg}, D {npd}, total {npg + npd}")
    nb = len(xtr) // a.batch
    print(f"data: {len(xtr)} training images, {nb} batches of {a.batch} per epoch; loss {a.loss}, "
          f"{torch.get_num_threads()} threads, seed {a.seed}", flush=True)
    try:
        from torchvision.utils import save_image
        os.makedirs(a.out_dir, exist_ok=True)
    except ImportError:
        save_image = None
    bce = a.loss == "bce"
    t_train, steps, dl, gl = 0.0, 0, float("nan"), float("nan")
    for e in range(1, a.epochs + 1):
        G.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr))
        dsum = gsum = 0.0
        for i in range(nb):
            real = xtr[perm[i * a.batch:(i + 1) * a.batch]]
            fake = G(torch.randn(a.batch, 64))
            dr, df = D(real), D(fake.detach())
            if bce:
                d_loss = (F.binary_cross_entropy_with_logits(dr, torch.ones_like(dr)) +
                          F.binary_cross_entropy_with_logits(df, torch.zeros_like(df)))
            else:
                d_loss = 0.5 * ((dr - 1) ** 2).mean() + 0.5 * (df ** 2).mean()
            od.zero_grad()
            d_loss.backward()
            od.step()
            g = D(fake)
            g_loss = F.binary_cross_entropy_with_logits(g, torch.ones_like(g)) if bce else 0.5 * ((g - 1) ** 2).mean()
            og.zero_grad()
            g_loss.backward()
            og.step()
            dsum += d_loss.item()
            gsum += g_loss.item()
        secs = time.time() - t0
        t_train += secs
        steps += nb
        dl, gl = dsum / nb, gsum / nb
        G.eval()
        pic = ""
        if save_image:
            with torch.no_grad():
                pic = os.path.join(a.out_dir, f"gan_torch_epoch_{e:03d}.png")
                save_image(G(fixed), pic, nrow=8, normalize=True, value_range=(-1, 1))
        print(f"epoch {e}: d_loss={dl:.4f} g_loss={gl:.4f}  {secs:.1f} s  {pic}", flush=True)
    print(f"trained {a.epochs} epochs in {t_train:.1f} s ({t_train * 1e3 / max(steps, 1):.1f} ms per step of D and G, "
          "mean)")
    if a.features:
        t0 = time.time()
        run, h = classifier(a.features)
        n = min(a.fid_samples, len(xte))
        G.eval()
        fr, fg, cr, cg = [], [], [], []
        with torch.no_grad():
            for s in range(0, n, 250):
                f, lg = run(xte[s:min(s + 250, n)])
                fr.append(f.numpy()), cr.append(lg.argmax(1).numpy())
            for s in range(0, n, 250):
                b = min(250, n - s)
                f, lg = run((G(torch.randn(b, 64)) + 1) * 0.5)
                fg.append(f.numpy()), cg.append(lg.argmax(1).numpy())
        mu1, c1 = moments(np.concatenate(fr))
        mu2, c2 = moments(np.concatenate(fg))
        fid = frechet(mu1, c1, mu2, c2)
        hr = np.bincount(np.concatenate(cr), minlength=10)
        hg = np.bincount(np.concatenate(cg), minlength=10)
        print(f"\nmeasure ({n} generated and {n} test images, {h} features, {time.time() - t0:.1f} s):")
        print(f"  {'class':<12} {'generated':>9} {'test':>9}")
        for c in range(10):
            print(f"  {NAMES[c]:<12} {hg[c]:>9} {hr[c]:>9}")
        print(f"fid={fid:.4f}\nclasses_present={int((hg > 0).sum())}\nmin_class_fraction={hg.min() / n:.4f}")
    print(f"d_loss={dl:.4f}\ng_loss={gl:.4f}")


if __name__ == "__main__":
    main()
