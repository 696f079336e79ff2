#!/bin/sh
# Building kiln's kernels for a CPU with 8-float vectors prints nothing on stderr. POCL's
# compiler prints "N warnings generated." on the application's stderr at each build, and
# with haswell code (AVX2, no 16-float registers) clang warns of every function that takes
# or returns a float16 that it changes the ABI: common.cl's helpers went into every program
# (cl_kernels/common.cl). POCL told to generate haswell code (its avx2 kernel library, as
# tools/bench_isa.py measures AVX2) and kiln told the device has 8-float vectors, with
# both kernel caches off, four reference models run a training step each; anything on
# stderr fails (a training step writes nothing there).
#   quiet_build.sh KILN_TOOL
# Exit 77 where the device is not POCL's haswell one (another OpenCL, a CPU without AVX2).
set -u
kiln=$1
grep -qw avx2 /proc/cpuinfo 2>/dev/null || { echo "no AVX2 on this CPU"; exit 77; }
export POCL_KERNELLIB_NAME=avx2 KILN_DEVICE_LIMITS=vec=8 KILN_CACHE=off POCL_KERNEL_CACHE=0 KILN_DEVICE=cpu
"$kiln" devices 2>/dev/null | grep -q 'pthread-haswell' || { echo "no POCL haswell device"; exit 77; }
err=$(mktemp)
trap 'rm -f "$err"' EXIT
status=0
for m in mlp cnn lstm gpt; do
    if ! "$kiln" bench train --model "$m" --batch 4 --steps 1 --warmup 0 >/dev/null 2>"$err"; then
        echo "FAIL: kiln bench train --model $m failed:"; cat "$err"; status=1; continue
    fi
    if [ -s "$err" ]; then
        echo "FAIL: building $m's kernels with haswell code wrote to stderr:"; head -5 "$err"; status=1
    else
        echo "ok: $m"
    fi
done
exit $status
