#!/usr/bin/python3
"""kiln <-> PyTorch interop for the Fashion-MNIST example models.

Run with Debian's python3-torch (/usr/bin/python3). Needs no `safetensors` module: the
format is an 8-byte little-endian header length, a JSON header and the raw tensor bytes,
read and written here with json + struct when the module is missing.

  kiln_torch.py eval PATH [--data DIR] [--batch N]
      Loads a checkpoint saved by examples/cnn_fashion or examples/mlp_fashion (--save
      PATH) into the equivalent torch model and prints its Fashion-MNIST test accuracy as
      "test_accuracy=0.XXXX" (the same line the kiln example prints).

  kiln_torch.py export PATH [--model cnn|mlp] [--steps N] [--seed S] [--data DIR]
      Initialises the torch model (seeded), trains it N steps (default 200) of SGD
      (cnn: lr 0.01 momentum 0.9) or Adam (mlp: lr 1e-3) at batch 64, saves its state dict
      as safetensors at PATH, and prints its test accuracy; `cnn_fashion --load PATH
      --epochs 0` must print the same.

  kiln_torch.py train [--model cnn|mlp] [--epochs N] [--optimizer sgd|adam] [--lr X] [--seed S]
      The PyTorch run of the examples' recipe (batch 64, shuffled, x/255), printing the test
      accuracy after each epoch and the median ms per step: the reference kiln's
      accuracies are compared with. Saves the state dict with --save PATH.

The model classes are those of torch_ref.py (the PyTorch reference bench, shared/bench/
beside this repository): their attribute names (conv1, conv2, fc1, fc2;
fc1..fc3) are the names the kiln examples give their layers, so the state dicts match.
"""
import argparse, gzip, json, os, struct, sys

import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"


def idx(path):
    """An IDX file (gzip or raw) as a numpy array."""
    opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    nd = data[3]
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


def fashion(data_dir, train):
    stem = "train" if train else "t10k"
    def find(name):
        for p in (os.path.join(data_dir, name + ".gz"), os.path.join(data_dir, name)):
            if os.path.exists(p):
                return p
        sys.exit(f"kiln_torch: no {name}[.gz] in {data_dir}")
    x = idx(find(f"{stem}-images-idx3-ubyte"))
    y = idx(find(f"{stem}-labels-idx1-ubyte"))
    # inputs x/255 without normalisation, as the kiln examples and torch_ref.py
    return torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0, torch.tensor(y, dtype=torch.long)


class MLP(nn.Module):
    def __init__(s):
        super().__init__()
        s.fc1, s.fc2, s.fc3 = nn.Linear(784, 512), nn.Linear(512, 256), nn.Linear(256, 10)

    def forward(s, x):
        return s.fc3(F.relu(s.fc2(F.relu(s.fc1(x.view(-1, 784))))))


class CNN(nn.Module):
    def __init__(s):
        super().__init__()
        s.conv1, s.conv2 = nn.Conv2d(1, 32, 3, 1), nn.Conv2d(32, 64, 3, 1)
        s.drop1, s.drop2 = nn.Dropout(0.25), nn.Dropout(0.5)
        s.fc1, s.fc2 = nn.Linear(9216, 128), nn.Linear(128, 10)

    def forward(s, x):
        x = F.max_pool2d(F.relu(s.conv2(F.relu(s.conv1(x)))), 2)
        x = s.drop1(torch.flatten(x, 1))
        return s.fc2(s.drop2(F.relu(s.fc1(x))))


# ---- safetensors without the safetensors module -------------------------------------------

DTYPES = {"F32": (np.float32, 4), "F64": (np.float64, 8), "F16": (np.float16, 2), "I64": (np.int64, 8),
          "I32": (np.int32, 4), "I16": (np.int16, 2), "I8": (np.int8, 1), "U8": (np.uint8, 1), "BOOL": (np.bool_, 1)}


def load_safetensors(path):
    """{name: torch tensor} and the metadata dict."""
    try:
        from safetensors.torch import load_file
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        return load_file(path), meta
    except ImportError:
        pass
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    base, out = 8 + n, {}
    for name, e in header.items():
        dt, size = DTYPES[e["dtype"]]
        s, t = e["data_offsets"]
        a = np.frombuffer(blob[base + s:base + t], dtype=np.dtype(dt).newbyteorder("<"))
        out[name] = torch.from_numpy(a.astype(dt).reshape(e["shape"]).copy())
    return out, meta


def save_safetensors(path, tensors, meta=None):
    """Writes {name: tensor} (float32 / int64 / ...) as safetensors, atomically."""
    names = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.int64: "I64",
             torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
    header, chunks, off = {}, [], 0
    if meta:
        header["__metadata__"] = {str(k): str(v) for k, v in meta.items()}
    for name, t in tensors.items():
        b = t.detach().cpu().contiguous().numpy().astype(np.dtype(DTYPES[names[t.dtype]][0]).newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        chunks.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # the format pads the header to 8 bytes with spaces
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
    os.replace(tmp, path)


# ---- commands --------------------------------------------------------------------------------

def model_for(state):
    if "conv1.weight" in state:
        return CNN()
    if "fc3.weight" in state:
        return MLP()
    sys.exit("kiln_torch: the checkpoint is neither cnn_fashion's (conv1.weight ...) nor mlp_fashion's "
             f"(fc1..fc3.weight); it has: {', '.join(sorted(state))}")


@torch.no_grad()
def accuracy(model, x, y, batch):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def cmd_eval(a):
    state, meta = load_safetensors(a.path)
    model = model_for(state)
    model.load_state_dict(state, strict=True)  # every tensor, with its shape, or an error
    x, y = fashion(a.data, False)
    print(f"{type(model).__name__} from {a.path}" + (f" ({meta['description']})" if "description" in meta else ""))
    print(f"test_accuracy={accuracy(model, x, y, a.batch):.4f}")


def cmd_export(a):
    torch.manual_seed(a.seed)
    model = CNN() if a.model == "cnn" else MLP()
    if a.steps > 0:
        x, y = fashion(a.data, True)
        opt = (torch.optim.SGD(model.parameters(), 0.01, momentum=0.9) if a.model == "cnn"
               else torch.optim.Adam(model.parameters(), 1e-3))
        perm = torch.randperm(len(x))
        model.train()
        for i in range(a.steps):
            j = perm[(i * 64) % (len(x) - 64):][:64]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[j]), y[j])
            loss.backward()
            opt.step()
        print(f"trained {a.steps} steps, last loss {loss.item():.4f}")
    x, y = fashion(a.data, False)
    acc = accuracy(model, x, y, a.batch)
    save_safetensors(a.path, model.state_dict(), {"description": f"torch {a.model}, {a.steps} steps",
                                                   "torch": torch.__version__})
    print(f"saved the state dict to {a.path}")
    print(f"test_accuracy={acc:.4f}")


def cmd_train(a):
    import statistics, time
    torch.manual_seed(a.seed)
    model = CNN() if a.model == "cnn" else MLP()
    optimizer = a.optimizer or ("sgd" if a.model == "cnn" else "adam")
    lr = a.lr or (0.01 if optimizer == "sgd" else 1e-3)
    opt = (torch.optim.SGD(model.parameters(), lr, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr))
    x, y = fashion(a.data, True)
    tx, ty = fashion(a.data, False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {a.model}, {optimizer} lr={lr}, batch 64")
    times = []
    for epoch in range(1, a.epochs + 1):
        model.train()
        perm, total, t0 = torch.randperm(len(x)), 0.0, time.perf_counter()
        for i in range(0, len(x), 64):
            j = perm[i:i + 64]
            t = time.perf_counter()
            opt.zero_grad()
            loss = F.cross_entropy(model(x[j]), y[j])
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
            total += loss.item() * len(j)
        acc = accuracy(model, tx, ty, a.batch)
        print(f"epoch {epoch}: train loss {total / len(x):.4f}, test accuracy {acc:.4f}, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    if times:
        print(f"step_ms={statistics.median(times) * 1e3:.2f} (median of {len(times)} steps)")
    if a.save:
        save_safetensors(a.save, model.state_dict(), {"description": f"torch {a.model} {optimizer}, {a.epochs} epochs"})
        print(f"saved the state dict to {a.save}")
    print(f"test_accuracy={accuracy(model, tx, ty, a.batch):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="evaluate a kiln checkpoint in torch")
    e.add_argument("path")
    x = sub.add_parser("export", help="save a torch model as safetensors for kiln")
    x.add_argument("path")
    x.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    x.add_argument("--steps", type=int, default=200)
    x.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("train", help="train the examples' recipe in torch, test accuracy per epoch")
    r.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--optimizer", choices=["sgd", "adam"], default=None, help="cnn: sgd, mlp: adam")
    r.add_argument("--lr", type=float, default=None, help="0.01 with sgd (momentum 0.9), 1e-3 with adam")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--save", default=None)
    for p in (e, x, r):
        p.add_argument("--data", default=DATA)
        p.add_argument("--batch", type=int, default=500)
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    {"eval": cmd_eval, "export": cmd_export, "train": cmd_train}[a.cmd](a)


if __name__ == "__main__":
    main()
