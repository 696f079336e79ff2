#!/bin/sh
# tests/onnx_run.sh KILN GOLDEN_DIR WORK_DIR - `kiln onnx run` end to end: the torch-exported
# MLP (tests/golden/gen_onnx.py) on a NumPy input file must write y.npy holding torch's
# output (within 1e-4 relative + 1e-5 absolute), with a float32 [5, 3] header.
set -u
kiln=$1 golden=$2 work=$3
rm -rf "$work" && mkdir -p "$work" || exit 1
out=$("$kiln" onnx run "$golden/onnx_mlp.onnx" --input "x=$golden/onnx_mlp_in.npy" --output-dir "$work") || {
    echo "kiln onnx run failed: $out"
    exit 1
}
case "$out" in
*"y: f32 [5, 3]"*) ;;
*) echo "unexpected output: $out"; exit 1 ;;
esac
head -c 128 "$work/y.npy" | grep -q "'descr': '<f4', 'fortran_order': False, 'shape': (5, 3" || {
    echo "y.npy: unexpected header"
    exit 1
}
# both files: a 128-byte header, then 15 little-endian float32
od -A n -v -t f4 -j 128 "$work/y.npy" | tr -s ' ' '\n' | grep . >"$work/got"
od -A n -v -t f4 -j 128 "$golden/onnx_mlp_out.npy" | tr -s ' ' '\n' | grep . >"$work/want"
[ "$(wc -l <"$work/got")" -eq 15 ] && [ "$(wc -l <"$work/want")" -eq 15 ] || {
    echo "expected 15 values"
    exit 1
}
paste "$work/got" "$work/want" | awk '{ d = $1 - $2; if (d < 0) d = -d; a = $2 < 0 ? -$2 : $2;
    if (d > 1e-5 + 1e-4 * a) { print "value " NR ": " $1 ", torch " $2; bad = 1 } } END { exit bad }' || exit 1
echo "kiln onnx run: 15 values match torch's"
