#!/usr/bin/python3
"""tools/char_rnn_torch.py - the char_rnn recipe in PyTorch: the reference that kiln's
examples/char_rnn is compared against (issue 16: validation loss within 0.03 nats/char).

It reads the same corpus the same way as kiln (kiln_text_fortunes, src/data/text.c):
  - the regular files of the fortunes directory in byte order of their names, skipping
    symbolic links (the .u8 names), the strfile indexes (*.dat) and hidden files; each
    file's "%" separator lines are kept, and a file whose last line is not "%" gets one
    ("\\n" first when its last line lacks it);
  - the vocabulary: the sorted byte values present in the whole corpus, id i the i-th;
  - the split by position: the last round(val_frac * N) bytes validate, the rest trains;
  - training batches: windows of seq_len ids and their next-character targets, at random
    starts drawn exactly as kiln_text_loader draws them (xoshiro256** seeded through
    splitmix64 from (seed, epoch, batch, stream 4), each start uniform in
    [0, N_train - seq_len - 1] without modulo bias), an epoch of
    floor((N_train - 1) / seq_len) windows in full batches (drop_last): with the same seed
    and batch size both libraries train on the very same windows in the same order;
  - validation: the consecutive windows of the validation part (window w starts at
    w * seq_len), all of them, loss averaged over every target.

Seed policy: --seed drives the windows (identical in kiln) and torch.manual_seed (initial
weights and the sampling of generated text). kiln draws its initial weights from its own
generator with the same distributions (torch's defaults), so the two runs start from
different weights of the same law; compare the losses at the same step, not bit for bit.

Recipe (the `lstm` model of shared/bench/torch_ref.py): embedding 128, a 2-layer LSTM of
256 (batch_first), a linear layer to the vocabulary; Adam(lr 2e-3, torch's defaults
otherwise), gradient norm clipped at 1.0, batch 32, 64-character windows.

Prints the mean training loss of each interval and the validation loss in nats and bits
per character, then a generated sample (temperature and top-k as kiln_sample_logits), and
key=value lines at the end (val_loss=..., val_bits=...).

    /usr/bin/python3 tools/char_rnn_torch.py --steps 3000 --interval 250
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FORTUNES_DIR = "/usr/share/games/fortunes"
M64 = (1 << 64) - 1
STREAM_TEXT_WINDOWS = 4


# ---- the corpus, read as kiln_text_fortunes reads it ------------------------------------

def read_fortunes(d):
    names = []
    for nm in os.listdir(d):
        if nm.startswith(".") or nm.endswith(".dat"):
            continue
        p = os.path.join(d, nm)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        names.append(nm)
    names.sort(key=lambda s: s.encode())  # strcmp order
    if not names:
        sys.exit(f"{d}: no fortune files (Debian's fortunes package installs them)")
    out = bytearray()
    for nm in names:
        with open(os.path.join(d, nm), "rb") as f:
            b = f.read()
        if b[:2] == b"\x1f\x8b":  # kiln inflates gzip by content
            import gzip
            b = gzip.decompress(b)
        out += b
        if b:
            sep = len(b) >= 2 and b.endswith(b"%\n") and (len(b) == 2 or b[-3:-2] == b"\n")
            if not sep:
                out += b"%\n" if b.endswith(b"\n") else b"\n%\n"
    if not out:
        sys.exit(f"{d}: the corpus is empty")
    return bytes(out), names


# ---- kiln's random numbers (src/data/loader.c): splitmix64 seeding xoshiro256** --------

def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return x, z ^ (z >> 31)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Xoshiro:
    def __init__(self, seed, a, b, stream):
        x, h = splitmix64(seed & M64)
        x, h = splitmix64(h ^ a)
        x, h = splitmix64(h ^ b)
        x = h ^ stream
        self.s = []
        for _ in range(4):
            x, v = splitmix64(x)
            self.s.append(v)

    def next(self):
        s = self.s
        out = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return out

    def below(self, n):
        while True:
            x = self.next()
            v = x % n
            if x - v <= M64 - (n - 1):
                return v


def random_starts(seed, epoch, batch, count, n_chars, seq_len):
    r = Xoshiro(seed, epoch, batch, STREAM_TEXT_WINDOWS)
    return [r.below(n_chars - seq_len) for _ in range(count)]


# ---- the model --------------------------------------------------------------------------

class CharLSTM(nn.Module):
    def __init__(self, vocab, embed=128, hidden=256, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        h, state = self.lstm(self.embed(x), state)
        return self.fc(h), state


def sample_ids(logits, temperature, top_k, gen):
    """logits [B, V] -> ids [B]: softmax(logits / T) over the top_k largest (ties with the
    k-th kept; 0: all), as kiln_sample_logits."""
    z = logits / temperature
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    return torch.multinomial(F.softmax(z, dim=-1), 1, generator=gen).squeeze(-1)


def generate(model, vocab, prime, n, temperature, top_k, gen):
    lut = {c: i for i, c in enumerate(vocab)}
    ids = []
    for i, c in enumerate(prime):
        if c not in lut:
            sys.exit(f"--prime: character {bytes([c])!r} at position {i} is not in the vocabulary")
        ids.append(lut[c])
    model.eval()
    out = bytearray(prime)
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]))
        last = logits[:, -1]
        for _ in range(n):
            nxt = sample_ids(last, temperature, top_k, gen)
            out.append(vocab[nxt.item()])
            logits, state = model(nxt.view(1, 1), state)
            last = logits[:, -1]
    model.train()
    return bytes(out)


def evaluate(model, val_ids, seq_len, batch):
    """Mean loss over every target of the consecutive validation windows (nats)."""
    windows = (len(val_ids) - 1) // seq_len
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for w0 in range(0, windows, batch):
            starts = np.arange(w0, min(windows, w0 + batch)) * seq_len
            idx = starts[:, None] + np.arange(seq_len)[None, :]
            x = torch.from_numpy(val_ids[idx])
            y = torch.from_numpy(val_ids[idx + 1])
            logits, _ = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    model.train()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=FORTUNES_DIR, help="the fortunes directory")
    ap.add_argument("--val-frac", type=float, default=0.05, help="the last fraction of the corpus validates")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3000, help="training steps (batches)")
    ap.add_argument("--interval", type=int, default=250, help="steps between reports")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generate", type=int, default=300, help="characters of sample text at the end")
    ap.add_argument("--prime", default="The ")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--print-starts", type=int, default=0,
                    help="print the window starts of the first N training batches and exit (to compare with kiln)")
    a = ap.parse_args()
    if a.temperature <= 0 or a.top_k < 0 or a.seq_len < 1 or a.batch < 1 or a.steps < 0 or a.interval < 1:
        sys.exit("--temperature must be > 0, --top-k >= 0, --seq-len, --batch and --interval >= 1")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    text, names = read_fortunes(a.dir)
    vocab = sorted(set(text))
    lut = np.full(256, -1, np.int64)
    lut[vocab] = np.arange(len(vocab))
    ids = lut[np.frombuffer(text, np.uint8)]
    n_val = int(math.floor(a.val_frac * len(ids) + 0.5))  # llround for these positive values
    train_ids, val_ids = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    T, B = a.seq_len, a.batch
    windows = (len(train_ids) - 1) // T
    batches = windows // B  # drop_last: every batch full
    if len(train_ids) < T + 1 or len(val_ids) < T + 1 or batches == 0:
        sys.exit(f"the corpus ({len(train_ids)} training, {len(val_ids)} validation characters) holds no batch of "
                 f"{B} windows of {T}")
    print(f"corpus {a.dir}: {len(names)} files, {len(ids)} characters, vocabulary {len(vocab)}; "
          f"train {len(train_ids)}, validation {len(val_ids)}; {batches} batches of {B} x {T} an epoch")

    def starts_of(step):
        return random_starts(a.seed, step // batches, step % batches, B, len(train_ids), T)

    if a.print_starts:
        for s in range(a.print_starts):
            print(f"batch {s}: " + " ".join(str(v) for v in starts_of(s)))
        return

    model = CharLSTM(len(vocab))
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: embedding {len(vocab)}x128, LSTM 128->256 x2, fc 256->{len(vocab)}: {nparams} parameters; "
          f"Adam lr {a.lr}, clip {a.clip}, {torch.get_num_threads()} threads, seed {a.seed}")
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    ar = np.arange(T)[None, :]
    t0 = time.time()
    run_loss, run_n = 0.0, 0
    val = float("nan")
    for step in range(a.steps):
        idx = np.array(starts_of(step))[:, None] + ar
        x = torch.from_numpy(train_ids[idx])
        y = torch.from_numpy(train_ids[idx + 1])
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        run_loss += loss.item()
        run_n += 1
        if (step + 1) % a.interval == 0 or step + 1 == a.steps:
            val = evaluate(model, val_ids, T, B)
            tr = run_loss / run_n
            el = time.time() - t0
            print(f"step {step + 1:6d} epoch {(step + 1) / batches:6.3f}  train {tr:.4f} nats ({tr / math.log(2):.4f} "
                  f"bits)  val {val:.4f} nats ({val / math.log(2):.4f} bits)/char  {el:7.1f} s "
                  f"({1000 * el / (step + 1):.1f} ms/step)", flush=True)
            run_loss, run_n = 0.0, 0
    if a.generate > 0:
        gen = torch.Generator().manual_seed(a.seed)
        out = generate(model, vocab, a.prime.encode(), a.generate, a.temperature, a.top_k, gen)
        print(f"--- sample (temperature {a.temperature}, top-k {a.top_k}, prime {a.prime!r}) ---")
        print(out.decode("utf-8", errors="replace"))
        print("---")
    print(f"steps={a.steps}")
    print(f"val_loss={val:.4f}")
    print(f"val_bits={val / math.log(2):.4f}")
    print(f"seconds={time.time() - t0:.1f}")


if __name__ == "__main__":
    main()
