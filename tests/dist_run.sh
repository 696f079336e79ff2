#!/usr/bin/env bash
# tests/dist_run.sh MPIRUN NP TEST_DIST MODE [ARG] - runs one mode of tests/test_dist.c under
# `mpirun -np NP` on this machine, each rank's POCL device on one core
# (POCL_CPU_MAX_CU_COUNT=1), and checks what the mode's ranks print:
#   equiv | sampler | collect   the ranks' own checks (exit status of the job)
#   fail      the last rank kills itself before step 3 (mpirun --enable-recovery keeps the
#             others running, as a lost node would); every other rank must exit 1 within
#             KILN_DIST_TIMEOUT (3 s) + a margin with a message naming its rank and, from
#             the watchdog's roll call, the killed rank; rank 0's last checkpoint must load
#   stray     the last rank issues a stray barrier: every rank fails, the roll call finding
#             every rank alive
#   ckpt      a checkpoint saved under NP ranks resumes under 1 rank and under NP + 1
#   exec PROGRAM ARGS...   runs PROGRAM ARGS under mpirun (the examples' --distributed)
set -uo pipefail
mpirun=$1 np=$2 exe=$3 mode=${4:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export POCL_CPU_MAX_CU_COUNT=1
# under scripts/test --sanitize: Open MPI's libraries have no frame pointers, so only the slow
# unwinder gives the stacks that tests/lsan.supp's MPI lines match
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { # NP ARGS...: the job's exit status
  local n=$1
  shift
  "$mpirun" --oversubscribe -np "$n" "$@"
}
if [ "$exe" = exec ]; then
  shift 3
  run "$np" "$@"
  exit
fi
case "$mode" in
  fail)
    start=$(date +%s)
    # each rank's exit status is printed by its shell: mpirun's own status only says that a
    # rank went away
    run "$np" --enable-recovery sh -c '"$0" fail "$1"; echo "exit_status=$?"' "$exe" "$tmp/last.safetensors" >"$tmp/out" 2>&1
    secs=$(($(date +%s) - start))
    grep -v "PMIX ERROR" "$tmp/out"
    survivors=$((np - 1))
    fails=$(grep -c "^exit_status=1$" "$tmp/out")
    killed=$(grep -c "^exit_status=137$" "$tmp/out")
    # each survivor names itself and, from the roll call, the killed rank (the last); the
    # first to time out says so, the others may give up on hearing its roll call
    msgs=0
    for r in $(seq 0 $((survivors - 1))); do
      grep -q "^fail_message=kiln_dist_sync_grads: rank $r of $np: .*roll call: rank $survivors of $np did not answer within [0-9.]* s: it died or hangs" "$tmp/out" && msgs=$((msgs + 1))
    done
    named=$(grep -c "^names_killed=1$" "$tmp/out")
    watchdogs=$(grep -c "^fail_message=.*within 3 s (watchdog, KILN_DIST_TIMEOUT)" "$tmp/out")
    loads=$(grep -c "^checkpoint_loads=1$" "$tmp/out")
    echo "dist_run fail: $fails of $survivors survivors exited 1 naming themselves and rank $survivors ($msgs messages, $named names_killed, $watchdogs watchdogs fired), $killed killed, checkpoint loads: $loads, ${secs} s"
    [ "$fails" -eq "$survivors" ] && [ "$msgs" -eq "$survivors" ] && [ "$named" -eq "$survivors" ] && [ "$watchdogs" -ge 1 ] &&
      [ "$killed" -eq 1 ] && [ "$loads" -eq 1 ] && [ "$secs" -le 60 ]
    ;;
  stray)
    start=$(date +%s)
    run "$np" --enable-recovery "$exe" stray >"$tmp/out" 2>&1
    secs=$(($(date +%s) - start))
    grep -v "PMIX ERROR" "$tmp/out"
    ok=$(grep -c "^stray_ok=1$" "$tmp/out")
    echo "dist_run stray: $ok of $np ranks failed with the roll call finding every rank alive, ${secs} s"
    [ "$ok" -eq "$np" ] && [ "$secs" -le 60 ]
    ;;
  ckpt)
    ck="$tmp/ckpt.safetensors"
    run "$np" "$exe" ckpt-save "$ck" || exit 1
    run 1 "$exe" ckpt-load "$ck" || exit 1
    run $((np + 1)) "$exe" ckpt-load "$ck"
    ;;
  *)
    run "$np" "$exe" "$mode"
    ;;
esac
