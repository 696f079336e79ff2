#!/usr/bin/python3
"""The README's GPU table: kiln's reference models and a 4096^3 GEMM on one OpenCL device.

For the device KILN_DEVICE names (default: gpu) it runs, over several rounds:
  - `kiln bench train --model M --json` (f32, and with --amp the AMP step too): ms per
    step, kernel launches and host waits per step (kiln_ctx_stats);
  - `kiln bench gemm --model M --no-check --json` once: every product one training step of
    M issues, whose 2 m n k summed over the step is the step's GEMM work (convolutions run
    as GEMMs on GPUs; attention's fused kernel and the elementwise ops are not counted);
  - `kiln bench gemm --m 4096 --no-check --json`: TFLOP/s of kiln's product (CLBlast's on a
    GPU) with the parameters `kiln tune` stored, if it ran.
It prints one Markdown table: ms per step, launches, host waits, GEMM GFLOP per step, the
achieved TFLOP/s and its share of the device's FP32 peak. The peak is compute units x
clock x 2 x FP32 lanes per compute unit; OpenCL reports no lanes, so --lanes gives them
(NVIDIA H100 and H200: 128 per SM, A100: 64) or the name table below does; otherwise the
share is left out.

  /usr/bin/python3 tools/bench_gpu.py [--kiln build/tools/kiln] [--device gpu] [--rounds 3]
      [--models mlp,cnn,resnet20,lstm,gpt,ae,dcgan] [--amp] [--lanes N] [--raw bench_gpu.jsonl]
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_isa import rng, run_json  # noqa: E402 (the same runner and ranges as the ISA tables)

# FP32 lanes per compute unit (an SM on NVIDIA) by a part of the device's name, from the
# vendors' architecture documents: Hopper 128 per SM, Ampere A100 64.
LANES = [("H100", 128), ("H200", 128), ("H800", 128), ("A100", 64), ("A800", 64)]


def gemm_flops(lines):
    """2 m n k summed over the products of one step; bench gemm names each 'MODEL OP xCOUNT'."""
    total = 0.0
    for j in lines:
        count = 1
        for part in j.get("name", "").replace(";", " ").split():
            if part.startswith("x") and part[1:].isdigit():
                count = int(part[1:])
        total += 2.0 * j["m"] * j["n"] * j["k"] * count
    return total


def device_info(kiln, env):
    """kiln devices --json's entry for the device env's KILN_DEVICE opens."""
    want = env.get("KILN_DEVICE", "")
    p = subprocess.run([kiln, "devices", "--json"], env=dict(os.environ, **env), capture_output=True, text=True)
    try:
        devs = json.loads(p.stdout)["devices"]
    except (ValueError, KeyError):
        return None
    for d in devs:
        if want in (d["spec"], d["type"].lower()) or (want and want.lower() in d["name"].lower()):
            return d
    return next((d for d in devs if d.get("default")), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", default=os.path.join(HERE, "..", "build", "tools", "kiln"))
    ap.add_argument("--device", default=os.environ.get("KILN_DEVICE", "gpu"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="mlp,cnn,resnet20,lstm,gpt,ae,dcgan")
    ap.add_argument("--amp", action="store_true", help="also the AMP step (f16 autocast, GradScaler)")
    ap.add_argument("--lanes", type=int, default=0, help="FP32 lanes per compute unit (for the peak)")
    ap.add_argument("--raw", default="bench_gpu.jsonl")
    a = ap.parse_args()
    env = {"KILN_DEVICE": a.device}
    models = [m for m in a.models.split(",") if m]
    dev = device_info(a.kiln, env)
    if not dev:
        print("bench_gpu: no device '%s' (kiln devices)" % a.device, file=sys.stderr)
        return 1
    lanes = a.lanes or next((n for part, n in LANES if part in dev["name"]), 0)
    peak = dev["compute_units"] * dev["max_clock_mhz"] * 1e6 * 2 * lanes if lanes else None
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    steps, flops, big = {}, {}, []
    variants = [""] + (["--amp"] if a.amp else [])
    with open(a.raw, "a") as raw:
        for m in models:
            flops[m] = gemm_flops(run_json([a.kiln, "bench", "gemm", "--model", m, "--no-check", "--json"], env, raw))
        for r in range(a.rounds):
            for m in models:
                for v in variants:
                    cmd = [a.kiln, "bench", "train", "--model", m, "--json"] + ([v] if v else [])
                    steps.setdefault((m, v), []).extend(run_json(cmd, env, raw))
            big += run_json([a.kiln, "bench", "gemm", "--m", "4096", "--no-check", "--json"], env, raw)
            print("bench_gpu: round %d of %d done" % (r + 1, a.rounds), file=sys.stderr)
    ended = time.strftime("%H:%M UTC", time.gmtime())
    print("\n### %s (%s, driver %s, %d compute units at %d MHz; FP32 peak %s), %s–%s, %d rounds\n" %
          (dev["name"], dev["platform"], dev["driver_version"], dev["compute_units"], dev["max_clock_mhz"],
           "%.1f TFLOP/s (%d lanes per unit)" % (peak / 1e12, lanes) if peak else "unknown (no --lanes)",
           started, ended, a.rounds))
    print("| model | ms per step | launches per step | host waits per step | GEMM GFLOP per step | "
          "GEMM TFLOP/s achieved | of FP32 peak |")
    print("|---|---|---|---|---|---|---|")
    for (m, v), js in steps.items():
        ms = [j["ms_per_step"] for j in js]
        launches = [j["per_step"]["launches"] + j["per_step"].get("library_calls", 0) for j in js]
        waits = [j["per_step"]["host_waits"] for j in js]
        tf = [flops[m] / (x * 1e-3) / 1e12 for x in ms if x]
        print("| %s%s | %s | %s | %s | %.2f | %s | %s |" %
              (m, " (AMP)" if v else "", rng(ms, "%.3f"), rng(launches, "%.0f"), rng(waits, "%.0f"), flops[m] / 1e9,
               rng(tf, "%.3f"), rng([t * 1e12 / peak * 100 for t in tf], "%.1f%%") if peak else "-"))
    g = [j["kiln_queued_gflops"] / 1e3 for j in big]
    print("\nGEMM 4096³ (%s): %s TFLOP/s queued%s" %
          (big[0]["kernel"] if big else "-", rng(g), ", %s of the FP32 peak" %
           rng([x * 1e12 / peak * 100 for x in g], "%.1f%%") if peak and g else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
