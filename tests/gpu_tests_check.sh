#!/bin/sh
# tools/gpu_tests.py (the meson test list's runner of tools/gpu_run) on a made-up bundle:
# paths of the bundle's root rewritten to this source root in the command, the
# environment and the working directory (the build directory unless a test names
# another); exit 0 passed, 77 skipped, others failed, a test past its timeout failed; the
# tests not marked parallel run too; --no-suite and --skip leave tests out; a failed
# test's output goes to --logs; the exit status is 1 when any failed.
#   gpu_tests_check.sh SOURCE_ROOT WORK_DIR
set -u
src=$1
work=$2
old=/nonexistent/kiln-bundle-root
rm -rf "$work"
mkdir -p "$work/bundle"
echo "$old" >"$work/bundle/root"
echo "$old/tests" >"$work/bundle/build"
python3 - "$work/bundle/tests.json" "$old" "$work/serial.mark" <<'EOF'
import json, sys
path, old, mark = sys.argv[1:]
def t(name, cmd, suite="unit", timeout=30, env=None, workdir=None, parallel=True):
    return {"name": name, "cmd": cmd, "env": env or {}, "workdir": workdir, "timeout": timeout,
            "suite": ["kiln:" + suite], "is_parallel": parallel}
tests = [
    # the build directory (here <root>/tests) as the working directory, the environment rewritten
    t("paths", ["sh", "-c", 'test -f gpu_tests_check.sh && test "$KX" = "$(pwd)/golden"'],
      env={"KX": old + "/tests/golden"}),
    t("workdir", ["sh", "-c", "test -f tools/gpu_tests.py"], workdir=old),
    t("skipped", ["sh", "-c", "exit 77"]),
    t("failed", ["sh", "-c", "echo boom; exit 3"]),
    t("slept", ["sleep", "10"], timeout=1),
    t("serial", ["sh", "-c", "touch " + mark], parallel=False),
    t("slow_one", ["sh", "-c", "exit 1"], suite="slow"),
    t("left_out", ["sh", "-c", "exit 1"]),
]
json.dump(tests, open(path, "w"))
EOF
out=$(python3 "$src/tools/gpu_tests.py" "$work/bundle" --jobs 3 --no-suite slow --skip left_out \
  --logs "$work/logs" 2>&1)
rc=$?
echo "$out"
bad=0
check() {
  if ! eval "$1"; then
    echo "FAIL: $2"
    bad=1
  fi
}
check '[ $rc -eq 1 ]' "exit status $rc with a failed test (want 1)"
check 'echo "$out" | grep -q "^tests: 3 passed, 2 failed, 1 skipped (1 timed out)"' "the summary line"
for n in paths workdir serial; do
  check 'echo "$out" | grep -E -q "unit:$n +OK"' "$n did not pass"
done
check 'echo "$out" | grep -E -q "unit:skipped +SKIP"' "exit 77 is not a skip"
check 'echo "$out" | grep -E -q "unit:failed +FAIL .*exit 3"' "exit 3 is not a failure"
check 'echo "$out" | grep -E -q "unit:slept +TIMEOUT"' "a test past its timeout is not a failure"
check '! echo "$out" | grep -q -E "slow_one|left_out"' "--no-suite or --skip ran a test"
check '[ -f "$work/serial.mark" ]' "the test marked not parallel did not run"
check 'grep -q boom "$work/logs/failed.log"' "the failed test's output is not in --logs"
[ $bad -eq 0 ] && echo "gpu_tests.py: all checks passed"
exit $bad
