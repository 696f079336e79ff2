#!/usr/bin/env python3
"""Runs the meson test list that tools/gpu_bundle saved, without meson, on another machine.

The GPU machines a session may be lent have no meson of the build's version (a build
directory is read by the meson that made it), so this runs each test's command with its
environment, working directory (the build directory unless the test names another) and
timeout as `meson test` would, the paths of the bundle's source root
replaced by this one's, in parallel, and prints one line per test and a summary in
`meson test`'s words (exit 0 passed, 77 skipped, anything else or a timeout failed).

  python3 tools/gpu_tests.py BUNDLE_DIR [--jobs N] [--no-suite slow ...] [--suite S ...]
      [--skip NAME ...] [--timeout-multiplier X] [--logs DIR] [NAME ...]
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time


def rebase(value, old, new):
    return value.replace(old, new) if isinstance(value, str) else value


def run_one(t, old, new, build, mult, logs):
    cmd = [rebase(c, old, new) for c in t["cmd"]]
    env = dict(os.environ)
    for k, v in (t.get("env") or {}).items():
        env[k] = rebase(v, old, new)
    timeout = (t.get("timeout") or 30) * mult
    start = time.time()
    try:
        p = subprocess.run(cmd, env=env, cwd=rebase(t.get("workdir") or build, old, new), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        rc, out = p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, out = None, e.stdout or b""
    except OSError as e:
        rc, out = -1, str(e).encode()
    secs = time.time() - start
    verdict = "TIMEOUT" if rc is None else "OK" if rc == 0 else "SKIP" if rc == 77 else "FAIL"
    if logs and verdict in ("FAIL", "TIMEOUT"):
        with open(os.path.join(logs, t["name"].replace("/", "_") + ".log"), "wb") as f:
            f.write(out)
    return t["name"], "/".join(s.split(":")[-1] for s in t["suite"]), verdict, rc, secs, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("names", nargs="*", help="only these tests")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--suite", action="append", default=[])
    ap.add_argument("--no-suite", action="append", default=[])
    ap.add_argument("--skip", action="append", default=[], help="not this test")
    ap.add_argument("--timeout-multiplier", type=float, default=1.0)
    ap.add_argument("--logs", default="", help="write each failed test's output here")
    ap.add_argument("--tail", type=int, default=40, help="lines of a failed test's output to print")
    a = ap.parse_args()
    with open(os.path.join(a.bundle, "tests.json")) as f:
        tests = json.load(f)
    with open(os.path.join(a.bundle, "root")) as f:
        old = f.read().strip()
    with open(os.path.join(a.bundle, "build")) as f:
        build = f.read().strip()
    new = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

    def wanted(t):
        suites = {s.split(":")[-1] for s in t["suite"]}
        if (a.names and t["name"] not in a.names) or t["name"] in a.skip:
            return False
        if a.suite and not suites & set(a.suite):
            return False
        return not suites & set(a.no_suite)

    todo = [t for t in tests if wanted(t)]
    if a.logs:
        os.makedirs(a.logs, exist_ok=True)
    counts = {"OK": 0, "SKIP": 0, "FAIL": 0, "TIMEOUT": 0}
    start = time.time()
    # as `meson test`: the tests marked is_parallel false run alone, after the others
    done = 0
    for group, jobs in (([t for t in todo if t.get("is_parallel", True)], a.jobs),
                        ([t for t in todo if not t.get("is_parallel", True)], 1)):
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futs = [pool.submit(run_one, t, old, new, build, a.timeout_multiplier, a.logs) for t in group]
            for fut in concurrent.futures.as_completed(futs):
                done += 1
                report(done, len(todo), fut.result(), counts, a.tail)
    print("tests: %d passed, %d failed, %d skipped (%d timed out) in %.0f s" %
          (counts["OK"], counts["FAIL"] + counts["TIMEOUT"], counts["SKIP"], counts["TIMEOUT"], time.time() - start))
    return 1 if counts["FAIL"] or counts["TIMEOUT"] else 0


def report(i, total, result, counts, tail):
    name, suite, verdict, rc, secs, out = result
    counts[verdict] += 1
    print("%3d/%d %-50s %-8s %7.2fs  %s" % (i, total, "%s:%s" % (suite, name), verdict, secs,
                                             "" if rc in (0, 77, None) else "exit %s" % rc), flush=True)
    lines = out.decode(errors="replace").splitlines()[-tail:] if tail else []
    if verdict in ("FAIL", "TIMEOUT") and lines:
        print("\n".join("    | " + x for x in lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
