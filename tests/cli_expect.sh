#!/usr/bin/env bash
# tests/cli_expect.sh - runs a command that must fail and checks how: its exit status and
# a part of what it printed on stderr.
#
#   cli_expect.sh STATUS TEXT -- PROGRAM [ARGS...]
#
# Exits 0 when PROGRAM exits with STATUS and its stderr contains TEXT, 1 otherwise (both
# shown), so a command that rejects an argument for the wrong reason, or crashes, fails.
set -uo pipefail

if [ $# -lt 4 ] || [ "$3" != "--" ]; then
  echo "usage: cli_expect.sh STATUS TEXT -- PROGRAM [ARGS...]" >&2
  exit 2
fi
want=$1
text=$2
shift 3
err=$("$@" 2>&1 >/dev/null)
got=$?
if [ "$got" -ne "$want" ]; then
  echo "$*: exit status $got, expected $want; stderr:" >&2
  echo "$err" >&2
  exit 1
fi
case "$err" in
  *"$text"*) exit 0 ;;
esac
echo "$*: stderr lacks '$text':" >&2
echo "$err" >&2
exit 1
