#!/usr/bin/env bash
# tests/onnx_classify.sh - a kiln-trained CNN classifies Fashion-MNIST the same through ONNX:
#   1. cnn_fashion trains briefly and saves its weights;
#   2. onnx_classify --native cnn evaluates that model, writes it with kiln_onnx_save, loads
#      the file with kiln_onnx_load and classifies again: the two accuracies must be equal;
#   3. where Debian's python3-torch and torch_ref.py are at hand, tools/onnx_export_torch.py
#      puts the same weights into torch_ref.py's CNN and exports it with torch.onnx.export:
#      kiln's runtime must classify that file with the same accuracy too.
#
#   onnx_classify.sh BUILD_DIR SOURCE_DIR
# Exits 77 (meson's skip) without an OpenCL device or Fashion-MNIST.
set -uo pipefail
build=$1 src=$2
if ! ls /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte* >/dev/null 2>&1; then
  echo "SKIP: no Fashion-MNIST (Debian package dataset-fashion-mnist)"; exit 77
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
value() { sed -n "s/^$1=\([0-9.]*\).*/\1/p" "$2" | tail -1; }

"$build/examples/cnn_fashion" --limit 2000 --epochs 1 --no-progress --save "$dir/cnn.safetensors" >"$dir/train.out" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
  cat "$dir/train.out"
  grep -q "no OpenCL device\|KILN_ERR_NO_DEVICE" "$dir/train.out" && exit 77
  exit 1
fi
"$build/examples/onnx_classify" "$dir/cnn_kiln.onnx" --native cnn --weights "$dir/cnn.safetensors" --limit 2000 \
  >"$dir/native.out" 2>&1 || { cat "$dir/native.out"; exit 1; }
cat "$dir/native.out"
native=$(value native_test_accuracy "$dir/native.out") onnx=$(value test_accuracy "$dir/native.out")
echo "native_test_accuracy=$native kiln_onnx_test_accuracy=$onnx"
[ -n "$native" ] && [ "$native" = "$onnx" ] || { echo "FAIL: kiln_onnx_save's file classifies differently"; exit 1; }

ref=${KILN_TORCH_REF:-$src/../shared/bench/torch_ref.py}
if [ -f "$ref" ] && /usr/bin/python3 -c "import torch, onnx" 2>/dev/null; then
  KILN_TORCH_REF=$ref /usr/bin/python3 "$src/tools/onnx_export_torch.py" --model cnn --weights "$dir/cnn.safetensors" \
    "$dir/cnn_torch.onnx" >"$dir/export.out" 2>&1 || { cat "$dir/export.out"; exit 1; }
  "$build/examples/onnx_classify" "$dir/cnn_torch.onnx" --limit 2000 >"$dir/torch.out" 2>&1 || { cat "$dir/torch.out"; exit 1; }
  torch=$(value test_accuracy "$dir/torch.out")
  echo "torch_onnx_test_accuracy=$torch"
  [ "$torch" = "$native" ] || { echo "FAIL: torch.onnx.export's file classifies differently"; exit 1; }
else
  echo "(no python3-torch/onnx or torch_ref.py: the torch.onnx.export half is skipped)"
fi
echo "ok"
