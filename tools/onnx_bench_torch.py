#!/usr/bin/python3
"""PyTorch eval-mode inference of torch_ref.py's CNN or ResNet-20: the figures `kiln bench onnx`
prints beside kiln's run of the same model exported as ONNX (tools/onnx_export_torch.py).

    /usr/bin/python3 tools/onnx_bench_torch.py --model cnn|resnet20 [--weights W.safetensors]
        [--batch 64] [--repeat 20] [--warmup 3] [--threads N] [--json]

Times model(x) under torch.no_grad() in eval mode on random [N, 1, 28, 28] inputs: the median
of --repeat calls at batch 1 (latency) and at --batch (throughput, images per second), after
--warmup untimed calls each. The model is the one onnx_export_torch.py exports, normalisation
step included (--weights: kiln-trained weights; without, a seeded random init: the time is
the same). Prints one line, JSON with --json:
    {"model": "cnn", "threads": 2, "latency_ms": ..., "batch": 64, "batch_ms": ..., "images_per_s": ...}
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import onnx_export_torch  # noqa: E402  (the same model, built the same way)


def median_ms(model, x, repeat, warmup):
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["cnn", "resnet20"], required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-ref", default=onnx_export_torch.find_torch_ref())
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    a.random, a.no_normalize = a.weights is None, False
    model = onnx_export_torch.build(onnx_export_torch.load_torch_ref(a.torch_ref), a)
    torch.manual_seed(a.seed)
    lat = median_ms(model, torch.rand(1, 1, 28, 28), a.repeat, a.warmup)
    thr = median_ms(model, torch.rand(a.batch, 1, 28, 28), a.repeat, a.warmup)
    r = {"model": a.model, "torch": torch.__version__, "threads": torch.get_num_threads(), "latency_ms": round(lat, 4),
         "batch": a.batch, "batch_ms": round(thr, 4), "images_per_s": round(a.batch / (thr / 1e3), 1)}
    if a.json:
        print(json.dumps(r))
    else:
        print(f"torch {r['torch']} ({r['threads']} threads) {a.model}: latency {lat:.3f} ms at batch 1, "
              f"{thr:.3f} ms at batch {a.batch} ({r['images_per_s']:.0f} images/s)")


if __name__ == "__main__":
    main()
