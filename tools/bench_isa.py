#!/usr/bin/python3
"""Per-instruction-set speed tables of kiln against OpenBLAS and PyTorch, in one sitting.

For each instruction set (the machine's own, and AVX2 code on a wider x86 machine) it runs,
alternating over several rounds so that both sides see the same load:
  - `kiln bench gemm --model M --json` for each model: every product one training step of
    M issues, each timed by kiln and by OpenBLAS on the same data, plus 1024^3;
  - `kiln bench train --model M --json` and torch_ref.py's step of the same model.
It prints one Markdown table per instruction set (ranges over the rounds) and keeps every
JSON line in --raw.

AVX2 code on an AVX-512 machine: POCL_KERNELLIB_NAME=avx2 makes Debian's POCL 3.1 compile
for `haswell` (README.md, "Speed"); OpenBLAS runs its Haswell kernels with
OPENBLAS_CORETYPE=Haswell, and PyTorch its AVX2 kernels with ATEN_CPU_CAPABILITY=avx2 and
oneDNN's with ONEDNN_MAX_CPU_ISA=AVX2. Each side is then held to the same instruction set.
The emulated device still reports 16-float vectors, which an AVX2 device would not:
KILN_DEVICE_LIMITS=vec=8 tells kiln 8, so that what kiln picks by vector width (the
convolutions' direct 3x3 route) is what it picks on an AVX2 CPU.

With --cores N every side runs on the first N CPUs only (taskset) with N threads: POCL's
worker threads (POCL_MAX_PTHREAD_COUNT), OpenBLAS's (OPENBLAS_NUM_THREADS) and PyTorch's.
--cores 1 compares the kernels core against core, without the hand-over of each launch to
POCL's threads that the products of a fraction of a millisecond pay on several.

  /usr/bin/python3 tools/bench_isa.py [--kiln build/tools/kiln] [--rounds 3]
      [--models mlp,cnn] [--isa native,avx2] [--cores N] [--raw bench_isa.jsonl]
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_REF = os.path.join(HERE, "..", "..", "shared", "bench", "torch_ref.py")

ISA_ENV = {
    "native": {},
    "avx2": {"POCL_KERNELLIB_NAME": "avx2", "KILN_DEVICE_LIMITS": "vec=8", "OPENBLAS_CORETYPE": "Haswell",
             "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"},
}


def run_json(cmd, env, raw):
    """Runs cmd, returns its JSON lines (a failure is reported and gives none)."""
    e = dict(os.environ)
    e.update(env)
    p = subprocess.run(cmd, env=e, capture_output=True, text=True)
    if p.returncode != 0:
        print("bench_isa: %s failed (%d): %s" % (" ".join(cmd), p.returncode, p.stderr.strip()[-400:]),
              file=sys.stderr)
    out = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            j = json.loads(line)
            out.append(j)
            raw.write(json.dumps({"env": env, "cmd": cmd, "result": j}) + "\n")
    raw.flush()
    return out


def cpu_name():
    """The CPU's model name with its family and model numbers (x86), from /proc/cpuinfo."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        return "?"
    name = info.get("model name", "?")
    if "cpu family" in info:
        name += " (family %s, model %s)" % (info["cpu family"], info.get("model", "?"))
    return name


def load_average():
    """The 1-minute load average (None where /proc/loadavg is missing)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def rng(v, fmt="%.2f"):
    v = [x for x in v if x is not None]
    if not v:
        return "-"
    lo, hi = min(v), max(v)
    return fmt % lo if fmt % lo == fmt % hi else (fmt % lo) + "–" + (fmt % hi)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", default=os.path.join(HERE, "..", "build", "tools", "kiln"))
    ap.add_argument("--torch-ref", default=TORCH_REF)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--isa", default="native,avx2")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch's threads (--cores sets it too)")
    ap.add_argument("--cores", type=int, default=0, help="run every side on the first N CPUs, N threads each")
    ap.add_argument("--raw", default="bench_isa.jsonl")
    a = ap.parse_args()
    models = [m for m in a.models.split(",") if m]
    isas = [i for i in a.isa.split(",") if i]
    for i in isas:
        if i not in ISA_ENV:
            ap.error("--isa %s: expected one of %s" % (i, ", ".join(ISA_ENV)))
    pin, cores_env = [], {}
    if a.cores > 0:
        pin = ["taskset", "-c", "0-%d" % (a.cores - 1)]
        cores_env = {"POCL_MAX_PTHREAD_COUNT": str(a.cores), "OPENBLAS_NUM_THREADS": str(a.cores)}
        a.threads = a.cores
    gemm = {}   # (isa, name, shape) -> [(ratio, ratio_queued)]
    train = {}  # (isa, model) -> {"kiln": [], "torch": []}
    device = {}
    loads = []  # the 1-minute load average at each round's start and at the end
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with open(a.raw, "a") as raw:
        for r in range(a.rounds):
            loads.append(load_average())
            for isa in isas:
                env = dict(ISA_ENV[isa], **cores_env)
                lines = run_json(pin + [a.kiln, "bench", "gemm", "--m", "1024", "--json"], env, raw)
                for m in models:
                    lines += run_json(pin + [a.kiln, "bench", "gemm", "--model", m, "--json"], env, raw)
                for j in lines:
                    device[isa] = (j.get("device"), j.get("isa"), j.get("gemm_params"), j.get("openblas_core"))
                    shape = "%s×%s×%s%s" % (j["m"], j["n"], j["k"],
                                           " " + ("T" if j["trans_a"] else "N") + ("T" if j["trans_b"] else "N"))
                    kernel = (j.get("kernel") or "").replace("kiln ", "")
                    gemm.setdefault((isa, "%s; %s" % (j["name"], kernel), shape), []).append(
                        (j.get("ratio"), j.get("ratio_queued"), j.get("kiln_queued_ms"), j.get("openblas_ms")))
                for m in models:
                    k = run_json(pin + [a.kiln, "bench", "train", "--model", m, "--json"], env, raw)
                    t = run_json(pin + ["/usr/bin/python3", a.torch_ref, "--model", m, "--threads", str(a.threads)],
                                 env, raw)
                    d = train.setdefault((isa, m), {"kiln": [], "torch": []})
                    d["kiln"] += [x["ms_per_step"] for x in k]
                    d["torch"] += [x["ms_per_step"] for x in t]
            print("bench_isa: round %d of %d done" % (r + 1, a.rounds), file=sys.stderr)
    loads.append(load_average())
    ended = time.strftime("%H:%M UTC", time.gmtime())
    for isa in isas:
        dev = device.get(isa, ("?", "?", "?", "?"))
        where = "%d of its cores" % a.cores if a.cores > 0 else "all its cores"
        print("\n### %s code: device `%s`, ISA %s (%s), OpenBLAS's %s kernels, on %s of %s, %s–%s, %d rounds, "
              "load average %s\n" % (isa, dev[0], dev[1], dev[2], dev[3] or "?", where, cpu_name(), started, ended,
                                      a.rounds, rng(loads)))
        print("| product (issued by; kernel) | kiln / OpenBLAS, one call | kiln / OpenBLAS, queued | "
              "kiln queued ms | OpenBLAS ms |")
        print("|---|---|---|---|---|")
        for (i, name, shape), v in gemm.items():
            if i != isa:
                continue
            print("| %s (%s) | %s | %s | %s | %s |" % (shape, name, rng([x[0] for x in v]), rng([x[1] for x in v]),
                                                    rng([x[2] for x in v], "%.4f"), rng([x[3] for x in v], "%.4f")))
        print("\n| training step | kiln ms | PyTorch ms (%d thread%s) | kiln / PyTorch |" % (a.threads, "" if a.threads == 1 else "s"))
        print("|---|---|---|---|")
        for (i, m), d in train.items():
            if i != isa:
                continue
            ratios = [k / t for k, t in zip(d["kiln"], d["torch"]) if t]
            print("| %s | %s | %s | %s |" % (m, rng(d["kiln"]), rng(d["torch"]), rng(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
