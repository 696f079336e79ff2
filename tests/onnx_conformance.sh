#!/bin/sh
# tests/onnx_conformance.sh KILN NODE_TEST_DIR - runs ONNX's backend node tests through
# `kiln onnx test` (fails on any failure of an operator kiln runs); skipped (77) when
# Debian's libonnx-testdata is not installed.
if [ ! -d "$2" ]; then
    echo "skipped: $2 does not exist (install libonnx-testdata)"
    exit 77
fi
exec "$1" onnx test "$2"
