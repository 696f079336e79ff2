#!/usr/bin/env bash
# tests/install_check.sh BUILD_DIR SOURCE_DIR - installs kiln into a scratch prefix and
# builds a program against it the way a user would: headers, kiln.pc and the shared library.
set -euo pipefail
build=$1 src=$2
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --no-rebuild --destdir "$dest" >/dev/null
pc=$(dirname "$(find "$dest" -name kiln.pc | head -n 1)")
export PKG_CONFIG_PATH=$pc PKG_CONFIG_SYSROOT_DIR=$dest
flags=$(pkg-config --cflags --libs kiln)
echo "pkg-config --cflags --libs kiln: $flags"
cc -std=c11 -Wall -Wextra -Werror "$src/examples/gemm.c" $flags -o "$dest/gemm"
libdir=$(pkg-config --variable=libdir kiln)  # pkg-config already prefixes the sysroot
LD_LIBRARY_PATH="$libdir" "$dest/gemm" --m 19 --n 23 --k 29 --repeat 1
