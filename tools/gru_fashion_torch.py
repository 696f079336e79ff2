#!/usr/bin/python3
"""tools/gru_fashion_torch.py - the gru_fashion recipe in PyTorch: the reference for kiln's
examples/gru_fashion (issue 16: test accuracy >= 0.89; Fashion-MNIST's benchmark table lists
GRUs at 0.888-0.897).

A GRU reads each 28x28 image row by row: 28 steps of 28 features (pixels scaled to [0, 1]
and normalised with the training set's mean 0.2860 and standard deviation 0.3530, as
KILN_FASHION_MNIST_MEAN/STD), hidden size 128, 1 layer (--layers 2 for two), batch_first;
a linear layer maps the last step's hidden state of the top layer to the 10 classes.
Adam(lr 1e-3, torch's defaults otherwise), batch 64, cross-entropy; the training set is
shuffled every epoch. Prints the mean training loss and the test accuracy after every
epoch, then key=value lines (test_accuracy=...).

Seed policy: --seed seeds torch (initial weights and the shuffle). kiln's loader shuffles
with its own generator, so the two runs see the batches in different orders; compare the
accuracies, not the trajectories.

    /usr/bin/python3 tools/gru_fashion_torch.py --epochs 6
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
MEAN, STD = 0.2860, 0.3530


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
    y = idx(os.path.join(d, f"{pre}-labels-idx1-ubyte"))
    x = (torch.from_numpy(x.astype(np.float32)) / 255 - MEAN) / STD
    return x, torch.from_numpy(y.astype(np.int64))


class RowGRU(nn.Module):
    def __init__(self, hidden=128, layers=1):
        super().__init__()
        self.gru = nn.GRU(28, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):  # x [B, 28, 28]: 28 steps of a row's 28 pixels
        _, h = self.gru(x)  # h [layers, B, hidden]
        return self.fc(h[-1])


def accuracy(model, x, y, batch=1000):
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            right += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return right / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N images only (0: all 60000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.epochs < 1 or a.batch < 1 or a.hidden < 1 or a.layers < 1 or a.limit < 0:
        sys.exit("--epochs, --batch, --hidden and --layers must be >= 1, --limit >= 0")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr = load(a.data, True)
    xte, yte = load(a.data, False)
    if a.limit:
        xtr, ytr = xtr[:a.limit], ytr[:a.limit]
    model = RowGRU(a.hidden, a.layers)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"GRU 28->{a.hidden} x{a.layers} over 28 rows, fc {a.hidden}->10: {nparams} parameters; Adam lr {a.lr}, "
          f"batch {a.batch}; {len(xtr)} training, {len(xte)} test images; {torch.get_num_threads()} threads, "
          f"seed {a.seed}")
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    t0 = time.time()
    acc = float("nan")
    for epoch in range(a.epochs):
        perm = torch.randperm(len(xtr))
        total, n = 0.0, 0
        for i in range(0, len(xtr), a.batch):
            j = perm[i:i + a.batch]
            loss = F.cross_entropy(model(xtr[j]), ytr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(j)
            n += len(j)
        acc = accuracy(model, xte, yte)
        print(f"epoch {epoch + 1}: train loss {total / n:.4f}  test accuracy {acc:.4f}  {time.time() - t0:.1f} s",
              flush=True)
    print(f"epochs={a.epochs}")
    print(f"test_accuracy={acc:.4f}")
    print(f"seconds={time.time() - t0:.1f}")


if __name__ == "__main__":
    main()
