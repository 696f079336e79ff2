#!/usr/bin/env bash
# tests/interop.sh - checkpoints cross between kiln and PyTorch both ways, and both sides
# agree on the Fashion-MNIST test accuracy of the same weights (within 0.002, 20 images):
#   1. kiln trains cnn_fashion briefly and saves it; tools/kiln_torch.py loads the file into
#      the torch model and evaluates it;
#   2. torch initialises and trains the model briefly and saves its state dict as
#      safetensors; cnn_fashion --load FILE --epochs 0 evaluates it;
#   3. the same as 1 for mlp_fashion;
#   4. a torchvision-named ResNet-18 state dict saved by PyTorch loads strictly into
#      kiln_resnet18 (same eval output), and one kiln saved loads strictly into the torch
#      model (same eval output): tests/golden/gen_resnet.py and tests/test_resnet.
#
#   tests/interop.sh BUILD_DIR SOURCE_DIR
#
# Skips (77) when /usr/bin/python3 cannot import torch, when Fashion-MNIST is missing, or
# when there is no OpenCL device.
set -uo pipefail
build=${1:?usage: interop.sh BUILD_DIR SOURCE_DIR}
src=${2:?usage: interop.sh BUILD_DIR SOURCE_DIR}
py=/usr/bin/python3
tool="$src/tools/kiln_torch.py"
tol=0.002

if ! "$py" -c 'import torch, numpy' 2>/dev/null; then
  echo "SKIP: $py cannot import torch (Debian package python3-torch)"
  exit 77
fi
if ! ls /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "SKIP: no Fashion-MNIST (Debian package dataset-fashion-mnist)"
  exit 77
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# Runs a command, shows its output, and sets $acc to its last test_accuracy= value.
run() {
  echo "+ $*"
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  cat "$tmp/out"
  if [ $rc -ne 0 ]; then
    cat "$tmp/err"
    if grep -q KILN_ERR_NO_DEVICE "$tmp/err"; then echo "SKIP: no OpenCL device"; exit 77; fi
    echo "FAIL: exit status $rc"
    exit 1
  fi
  acc=$(grep -o '^test_accuracy=[0-9.]*' "$tmp/out" | tail -n 1 | cut -d= -f2)
  if [ -z "$acc" ]; then echo "FAIL: no test_accuracy= line"; exit 1; fi
}

compare() { # what kiln_acc torch_acc
  if awk -v a="$2" -v b="$3" -v t="$tol" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t + 1e-9) }'; then
    echo "ok: $1: kiln $2, torch $3 (tolerance $tol)"
  else
    echo "FAIL: $1: kiln $2, torch $3 differ by more than $tol"
    fail=1
  fi
}

echo "== 1. kiln cnn_fashion -> torch"
run "$build/examples/cnn_fashion" --limit 3000 --epochs 1 --no-progress --save "$tmp/kiln_cnn.safetensors"
kiln_acc=$acc
run "$py" "$tool" eval "$tmp/kiln_cnn.safetensors"
compare "kiln-trained cnn" "$kiln_acc" "$acc"

echo "== 2. torch cnn -> kiln cnn_fashion --load --epochs 0"
run "$py" "$tool" export "$tmp/torch_cnn.safetensors" --model cnn --steps 60 --seed 3
torch_acc=$acc
run "$build/examples/cnn_fashion" --load "$tmp/torch_cnn.safetensors" --epochs 0 --no-progress
compare "torch-trained cnn" "$acc" "$torch_acc"

echo "== 3. kiln mlp_fashion -> torch, and back"
run "$build/examples/mlp_fashion" --limit 3000 --epochs 1 --no-progress --save "$tmp/kiln_mlp.safetensors"
kiln_acc=$acc
run "$py" "$tool" eval "$tmp/kiln_mlp.safetensors"
compare "kiln-trained mlp" "$kiln_acc" "$acc"
run "$py" "$tool" export "$tmp/torch_mlp.safetensors" --model mlp --steps 100 --seed 4
torch_acc=$acc
run "$build/examples/mlp_fashion" --load "$tmp/torch_mlp.safetensors" --epochs 0 --no-progress
compare "torch-trained mlp" "$acc" "$torch_acc"

echo "== 4. ResNet-18 state dicts: torch -> kiln_resnet18, and kiln -> torch (strict, same outputs)"
resnet_py="$src/tests/golden/gen_resnet.py"
for step in "$py $resnet_py export $tmp/torch_r18.safetensors" \
            "$build/tests/test_resnet --interop-load $tmp/torch_r18.safetensors" \
            "$build/tests/test_resnet --interop-save $tmp/kiln_r18.safetensors" \
            "$py $resnet_py check $tmp/kiln_r18.safetensors"; do
  echo "+ $step"
  if ! $step; then echo "FAIL: $step"; fail=1; fi
done

exit $fail
