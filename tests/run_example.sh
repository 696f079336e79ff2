#!/usr/bin/env bash
# tests/run_example.sh - runs an example program and checks the key=value figures of its
# output against bounds.
#
#   run_example.sh [--needs-data] [--needs-fortunes] CHECK... -- PROGRAM [ARGS...]
#
# CHECK is KEY>=X, KEY<=X or KEY=LO..HI; KEY's value is taken from the last "KEY=value" in
# the program's standard output (e.g. "test_accuracy>=0.6", "weight=2.95..3.05"). Exits 0
# when the program succeeds and every check holds, 1 otherwise, and 77 (meson's skip) when
# there is no OpenCL device or, with --needs-data, no Fashion-MNIST files (with
# --needs-fortunes, no files of Debian's fortunes package in /usr/share/games/fortunes).
set -uo pipefail

needs_data=0
needs_fortunes=0
checks=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case "$1" in
    --needs-data) needs_data=1 ;;
    --needs-fortunes) needs_fortunes=1 ;;
    *) checks+=("$1") ;;
  esac
  shift
done
if [ $# -lt 2 ]; then
  echo "usage: run_example.sh [--needs-data] [--needs-fortunes] CHECK... -- PROGRAM [ARGS...]" >&2
  exit 2
fi
shift

if [ $needs_data -eq 1 ]; then
  dir=/usr/share/datasets/fashion-mnist
  prev=""
  for a in "$@"; do [ "$prev" = "--data" ] && dir="$a"; prev="$a"; done
  if ! ls "$dir"/t10k-images-idx3-ubyte* >/dev/null 2>&1; then
    echo "SKIP: no Fashion-MNIST in $dir (Debian package dataset-fashion-mnist)"
    exit 77
  fi
fi

if [ $needs_fortunes -eq 1 ] && ! ls /usr/share/games/fortunes/* >/dev/null 2>&1; then
  echo "SKIP: no fortunes in /usr/share/games/fortunes (Debian package fortunes)"
  exit 77
fi

out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
echo "+ $*"
start=$(date +%s.%N)
"$@" >"$out" 2>"$err"
rc=$?
end=$(date +%s.%N)
cat "$out"
# progress bars redraw with \r: keep the last state of each line
tr '\r' '\n' <"$err" | grep -v '^\s*$' | tail -n 40 >&2
echo "exit status $rc after $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s"
if [ $rc -ne 0 ]; then
  if grep -q 'KILN_ERR_NO_DEVICE' "$err"; then
    echo "SKIP: no OpenCL device"
    exit 77
  fi
  echo "FAIL: the program failed"
  exit 1
fi

status=0
for c in "${checks[@]}"; do
  case "$c" in
    *'>='*) key=${c%%>=*} lo=${c#*>=} hi=inf ;;
    *'<='*) key=${c%%<=*} lo=-inf hi=${c#*<=} ;;
    *=*..*) key=${c%%=*} range=${c#*=} lo=${range%%..*} hi=${range#*..} ;;
    *) echo "bad check '$c'" >&2; exit 2 ;;
  esac
  value=$(grep -o "\(^\|[[:space:]]\)$key=[-+0-9.eEinfa]*" "$out" | tail -n 1 | sed 's/.*=//')
  if [ -z "$value" ]; then
    echo "FAIL: the output has no $key="
    status=1
    continue
  fi
  if awk -v v="$value" -v lo="$lo" -v hi="$hi" 'BEGIN {
        lo = (lo == "-inf") ? -1e308 : lo + 0; hi = (hi == "inf") ? 1e308 : hi + 0
        exit !(v + 0 >= lo && v + 0 <= hi && v == v + 0) }'; then
    echo "ok: $key=$value within [$lo, $hi]"
  else
    echo "FAIL: $key=$value outside [$lo, $hi]"
    status=1
  fi
done
exit $status
