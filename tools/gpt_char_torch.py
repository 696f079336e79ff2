#!/usr/bin/python3
"""tools/gpt_char_torch.py - the gpt_char recipe in PyTorch: the reference that kiln's
examples/gpt_char is compared against (issue 17: validation loss within 0.03 nats/char).

The corpus, vocabulary, split, training windows and validation windows are those of
tools/char_rnn_torch.py (the code below is the same), read exactly as kiln reads them:
the fortunes files in byte order of their names, the sorted byte values as the
vocabulary, the last round(val_frac * N) bytes validating, training windows at the random
starts kiln_text_loader draws (xoshiro256** through splitmix64 from (seed, epoch, batch,
stream 4)), and every consecutive validation window, the loss averaged over every target.

Seed policy: --seed drives the windows (identical in kiln) and torch.manual_seed (initial
weights and the sampling of generated text). kiln draws its initial weights from its own
generator with the same distributions (torch's defaults), so the two runs start from
different weights of the same law; compare the losses at the same step, not bit for bit.

Recipe (the `gpt` model of shared/bench/torch_ref.py, the same class): 4 pre-norm causal
blocks, 4 heads, width 128, context 128 (the window length), GELU MLP 4x, learned
positions, the head tied to the token embedding; AdamW(lr 1e-3, betas 0.9/0.95, weight
decay 0.1 on every parameter), a linear warm-up from lr/W to lr over W steps then cosine
decay to --min-lr over the rest (SequentialLR of LinearLR and CosineAnnealingLR, stepped
every batch), gradient norm clipped at 1.0, batch 16.

    /usr/bin/python3 tools/gpt_char_torch.py --steps 3000 --interval 250
"""
import argparse
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# The corpus reader, kiln's loader RNG (the window starts) and the sampler are the character
# LSTM script's: one copy, so both scripts draw exactly the windows kiln_text_loader draws.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from char_rnn_torch import FORTUNES_DIR, random_starts, read_fortunes, sample_ids  # noqa: E402


# ---- the model: torch_ref.py's GPT, sizes as parameters ------------------------------------

class Block(nn.Module):
    def __init__(s, d, heads):
        super().__init__()
        s.heads = heads
        s.ln_1, s.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        s.c_attn, s.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        s.c_fc, s.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.c_attn(s.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, s.heads, C // s.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // s.heads)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        x = x + s.attn_proj((att @ v).transpose(1, 2).reshape(B, T, C))
        return x + s.mlp_proj(F.gelu(s.c_fc(s.ln_2(x))))


class GPT(nn.Module):
    def __init__(s, vocab=96, ctx=128, d=128, layers=4, heads=4):
        super().__init__()
        s.ctx = ctx
        s.wte, s.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        s.h = nn.ModuleList([Block(d, heads) for _ in range(layers)])
        s.ln_f = nn.LayerNorm(d)

    def forward(s, x):
        x = s.wte(x) + s.wpe(torch.arange(x.shape[1]))
        for b in s.h:
            x = b(x)
        return s.ln_f(x) @ s.wte.weight.t()


def generate(model, vocab, prime, n, temperature, top_k, gen):
    """n characters after prime, re-running the last `ctx` characters for each (nanoGPT's
    crop; kiln's --no-cache)."""
    lut = {c: i for i, c in enumerate(vocab)}
    ids = []
    for i, c in enumerate(prime):
        if c not in lut:
            sys.exit(f"--prime: character {bytes([c])!r} at position {i} is not in the vocabulary")
        ids.append(lut[c])
    model.eval()
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-model.ctx:]]))
            ids.append(sample_ids(logits[:, -1], temperature, top_k, gen).item())
    model.train()
    return bytes(vocab[i] for i in ids)


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
            logits = model(x)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    model.train()
    return total / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=FORTUNES_DIR, help="the fortunes directory")
    ap.add_argument("--val-frac", type=float, default=0.05, help="the last fraction of the corpus validates")
    ap.add_argument("--context", type=int, default=128, help="the window length and the positional table")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3000, help="training steps (batches)")
    ap.add_argument("--interval", type=int, default=250, help="steps between reports")
    ap.add_argument("--warmup", type=int, default=100, help="steps of linear warm-up")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4, help="the end of the cosine decay")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generate", type=int, default=300, help="characters of sample text at the end")
    ap.add_argument("--prime", default="The ")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=0)
    a = ap.parse_args()
    if a.temperature <= 0 or a.top_k < 0 or a.context < 1 or a.batch < 1 or a.steps < 1 or a.interval < 1:
        sys.exit("--temperature must be > 0, --top-k >= 0, --context, --batch, --steps and --interval >= 1")
    if not 0 <= a.warmup < a.steps or a.width % a.heads:
        sys.exit("--warmup must be in [0, --steps), --width a multiple of --heads")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    text, names = read_fortunes(a.dir)
    vocab = sorted(set(text))
    lut = np.full(256, -1, np.int64)
    lut[vocab] = np.arange(len(vocab))
    ids = lut[np.frombuffer(text, np.uint8)]
    n_val = int(math.floor(a.val_frac * len(ids) + 0.5))  # llround for these positive values
    train_ids, val_ids = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
    T, B = a.context, a.batch
    windows = (len(train_ids) - 1) // T
    batches = windows // B  # drop_last: every batch full
    if len(train_ids) < T + 1 or len(val_ids) < T + 1 or batches == 0:
        sys.exit(f"the corpus ({len(train_ids)} training, {len(val_ids)} validation characters) holds no batch of "
                 f"{B} windows of {T}")
    print(f"corpus {a.dir}: {len(names)} files, {len(ids)} characters, vocabulary {len(vocab)}; "
          f"train {len(train_ids)}, validation {len(val_ids)}; {batches} batches of {B} x {T} an epoch")

    def starts_of(step):
        return random_starts(a.seed, step // batches, step % batches, B, len(train_ids), T)

    model = GPT(len(vocab), T, a.width, a.layers, a.heads)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"model: GPT context {T}, width {a.width}, {a.layers} layers, {a.heads} heads, vocabulary {len(vocab)}: "
          f"{nparams} parameters; AdamW lr {a.lr} (warm-up {a.warmup}, cosine to {a.min_lr}), betas 0.9/0.95, "
          f"weight decay {a.weight_decay}, clip {a.clip}, {torch.get_num_threads()} threads, seed {a.seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=a.weight_decay)
    cos = lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.steps - a.warmup, eta_min=a.min_lr)
    # SequentialLR steps its next scheduler with an explicit epoch at the milestone (torch's
    # closed form, as kiln_sequential_lr), which torch flags as deprecated
    warnings.filterwarnings("ignore", message="The epoch parameter")
    with warnings.catch_warnings():  # SequentialLR's warning about step() order at construction
        warnings.simplefilter("ignore")
        if a.warmup == 0:
            sched = cos()
        else:
            warm = torch.optim.lr_scheduler.LinearLR(opt, 1.0 / a.warmup, 1.0, a.warmup)
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos()], [a.warmup])
    ar = np.arange(T)[None, :]
    t0 = time.time()
    run_loss, run_n = 0.0, 0
    val = tr = float("nan")
    for step in range(a.steps):
        idx = np.array(starts_of(step))[:, None] + ar
        x = torch.from_numpy(train_ids[idx])
        y = torch.from_numpy(train_ids[idx + 1])
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        sched.step()
        run_loss += loss.item()
        run_n += 1
        if (step + 1) % a.interval == 0 or step + 1 == a.steps:
            val = evaluate(model, val_ids, T, B)
            tr = run_loss / run_n
            el = time.time() - t0
            print(f"step {step + 1:6d} epoch {(step + 1) / batches:6.3f}  train {tr:.4f} nats ({tr / math.log(2):.4f} "
                  f"bits)  val {val:.4f} nats ({val / math.log(2):.4f} bits)/char  lr {sched.get_last_lr()[0]:.2e}  "
                  f"{el:7.1f} s ({1000 * el / (step + 1):.1f} ms/step)", flush=True)
            run_loss, run_n = 0.0, 0
    secs = time.time() - t0
    if a.generate > 0:
        gen = torch.Generator().manual_seed(a.seed)
        g0 = time.time()
        out = generate(model, vocab, a.prime.encode(), a.generate, a.temperature, a.top_k, gen)
        gs = time.time() - g0
        print(f"--- sample (temperature {a.temperature}, top-k {a.top_k}, prime {a.prime!r}, no cache) ---")
        print(out.decode("utf-8", errors="replace"))
        print("---")
        print(f"tokens_per_second_no_cache={a.generate / gs:.1f}")
    print(f"steps={a.steps}")
    print(f"train_loss={tr:.4f}")
    print(f"val_loss={val:.4f}")
    print(f"val_bits={val / math.log(2):.4f}")
    print(f"seconds={secs:.1f}")


if __name__ == "__main__":
    main()
