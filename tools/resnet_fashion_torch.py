#!/usr/bin/python3
"""The recipe of examples/resnet_fashion in PyTorch, to compare kiln's per-epoch figures with.

ResNet-20 (He et al.'s CIFAR network, ../shared/bench/torch_ref.py's ResNet20 with one input
channel, initialised as torchvision's ResNet and kiln_resnet_cifar) on Fashion-MNIST from Debian's dataset-fashion-mnist: batch 128, SGD with Nesterov
momentum 0.9 and lr 0.1, weight decay 5e-4 on convolution and linear weights only (not on
batch-norm parameters or biases: the ndim <= 1 rule, kiln_params_split_decay), a linear
warm-up per step over the first epoch (factor 1e-3 to 1) then cosine per step to 0
(SequentialLR(LinearLR, CosineAnnealingLR), stepped every batch), random crop with 2 pixels
of zero padding and horizontal flip, cross-entropy with label smoothing 0.1, inputs
(x / 255 - 0.2860) / 0.3530, evaluation with batch norm in eval mode. Prints one line per
epoch: epoch, train loss (mean over the epoch's batches as they ran), test accuracy, seconds.

    /usr/bin/python3 tools/resnet_fashion_torch.py [--epochs 15] [--limit N] [--threads N]

Seeds: --seed N (default 1, as the kiln example) seeds torch (initialisation, order,
augmentation). The two libraries draw different random numbers from the same seed, so the
runs are alike in recipe, not in their numbers.
"""
import argparse
import gzip
import math
import os
import struct
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist/"
MEAN, STD = 0.2860, 0.3530


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    nd = struct.unpack(">I", data[:4])[0] & 0xFF
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


class BasicBlock(nn.Module):
    def __init__(s, cin, cout, stride):
        super().__init__()
        s.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        s.bn1 = nn.BatchNorm2d(cout)
        s.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        s.bn2 = nn.BatchNorm2d(cout)
        s.downsample = None
        if stride != 1 or cin != cout:
            s.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(s, x):
        y = F.relu(s.bn1(s.conv1(x)))
        y = s.bn2(s.conv2(y))
        return F.relu(y + (x if s.downsample is None else s.downsample(x)))


class ResNet20(nn.Module):
    """torch_ref.py's ResNet20: state-dict names equal kiln_resnet_cifar(ctx, 20, ...)'s."""

    def __init__(s, in_ch=1, classes=10):
        super().__init__()
        s.conv1, s.bn1 = nn.Conv2d(in_ch, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            layers.append(nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(3)]))
            cin = cout
        s.layer1, s.layer2, s.layer3 = layers
        s.fc = nn.Linear(64, classes)

    def forward(s, x):
        x = F.relu(s.bn1(s.conv1(x)))
        x = s.layer3(s.layer2(s.layer1(x)))
        return s.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def augment(x, pad, gen):
    """Random crop of the zero-padded batch (pixel value 0 before normalisation) and a
    left-right flip with probability 1/2, per sample, as kiln's loader does."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = oy[:, None] + torch.arange(h)[None, :]
    cols = ox[:, None] + torch.arange(w)[None, :]
    flip = torch.rand(n, generator=gen) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = xp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--crop-padding", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N training images only")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data", default=DATA)
    a = ap.parse_args()
    # SequentialLR starts the cosine with step(0), which torch 1.13 warns about
    warnings.filterwarnings("ignore", message="The epoch parameter in")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    def load(split):
        x = torch.tensor(idx(os.path.join(a.data, f"{split}-images-idx3-ubyte.gz")), dtype=torch.float32)
        y = torch.tensor(idx(os.path.join(a.data, f"{split}-labels-idx1-ubyte.gz")), dtype=torch.long)
        return x.unsqueeze(1) / 255.0, y

    xtr, ytr = load("train")
    xte, yte = load("t10k")
    if a.limit > 0:
        xtr, ytr = xtr[:a.limit], ytr[:a.limit]
    xte = (xte - MEAN) / STD

    model = ResNet20(in_ch=1, classes=10)
    # torchvision's ResNet initialisation, as kiln_resnet_cifar's (kiln/models.h): convolutions
    # kaiming_normal_(fan_out, relu); batch norm 1 and 0 and the fc layer keep torch's defaults
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": a.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=a.lr, momentum=a.momentum, nesterov=True)
    n = xtr.shape[0]
    per_epoch = (n + a.batch - 1) // a.batch
    total = per_epoch * a.epochs
    warm = max(1, min(total - 1, int(round(a.warmup_epochs * per_epoch))))
    LS = torch.optim.lr_scheduler
    sched = LS.SequentialLR(opt, [LS.LinearLR(opt, start_factor=1e-3, end_factor=1.0, total_iters=warm),
                                  LS.CosineAnnealingLR(opt, T_max=total - warm, eta_min=0.0)], milestones=[warm])
    nparams = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-20, {nparams} parameters; "
          f"{n} training images, batch {a.batch}, {a.epochs} epochs ({total} steps, warm-up {warm})")
    print(f"{'epoch':>5} {'train_loss':>10} {'test_acc':>8} {'seconds':>8}")
    sys.stdout.flush()
    t_all = time.time()
    acc = float("nan")
    for epoch in range(1, a.epochs + 1):
        t0 = time.time()
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, seen = 0.0, 0
        for b in range(per_epoch):
            i = perm[b * a.batch:(b + 1) * a.batch]
            x = xtr[i]
            if a.crop_padding > 0:
                x = augment(x, a.crop_padding, gen)
            x = (x - MEAN) / STD
            loss = F.cross_entropy(model(x), ytr[i], label_smoothing=a.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(i)
            seen += len(i)
        model.eval()
        correct = 0
        with torch.no_grad():
            for b in range(0, xte.shape[0], 500):
                correct += (model(xte[b:b + 500]).argmax(1) == yte[b:b + 500]).sum().item()
        acc = correct / xte.shape[0]
        print(f"{epoch:>5} {loss_sum / seen:>10.4f} {acc:>8.4f} {time.time() - t0:>8.1f}")
        sys.stdout.flush()
    print(f"wall time {time.time() - t_all:.1f} s")
    print(f"test_accuracy={acc:.4f}")


if __name__ == "__main__":
    main()
