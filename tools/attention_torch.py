#!/usr/bin/python3
"""PyTorch's composed attention at the sizes of `kiln bench attention`, for the same table.

softmax(q k^T / sqrt(E)) v as matmul + softmax + matmul (what torch 1.13's
nn.MultiheadAttention computes on a CPU; it has no fused scaled_dot_product_attention),
q, k, v [batch, heads, L, E] with L = S; the median milliseconds of the forward and of the
backward (seeded with a random gradient), after one untimed round. Peak memory is not
measured here (torch's CPU allocator has no counter); the weights alone take
batch * heads * L * L * 4 bytes, twice over with the softmax's saved output.

  /usr/bin/python3 tools/attention_torch.py [--sizes 128,512,2048] [--heads 4] [--dim 64]
      [--batch 1] [--causal] [--repeat 3] [--threads 2] [--json]
"""
import argparse, json, math, statistics, time

import torch


def attention(q, k, v, causal):
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if causal:
        L = q.shape[-2]
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="128,512,2048")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    if not a.json:
        print(f"torch {torch.__version__} composed attention [{a.batch}, {a.heads}, L, {a.dim}], {a.threads} threads, "
              f"median of {a.repeat}\n{'L':>6} {'fwd ms':>10} {'bwd ms':>10}")
    for L in (int(s) for s in a.sizes.split(",")):
        shape = (a.batch, a.heads, L, a.dim)
        q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
        g = torch.randn(shape)
        tf, tb = [], []
        for i in range(a.repeat + 1):
            q.grad = k.grad = v.grad = None
            t0 = time.perf_counter()
            y = attention(q, k, v, a.causal)
            t1 = time.perf_counter()
            y.backward(g)
            t2 = time.perf_counter()
            if i:
                tf.append((t1 - t0) * 1e3)
                tb.append((t2 - t1) * 1e3)
        f, b = statistics.median(tf), statistics.median(tb)
        if a.json:
            print(json.dumps({"bench": "attention", "impl": "pytorch-composed", "torch": torch.__version__,
                              "threads": a.threads, "L": L, "S": L, "heads": a.heads, "E": a.dim, "batch": a.batch,
                              "causal": a.causal, "fwd_ms": round(f, 3), "bwd_ms": round(b, 3)}), flush=True)
        else:
            print(f"{L:>6} {f:>10.2f} {b:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
