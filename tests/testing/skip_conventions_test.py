"""Skips read as skips, and never hide a failure (issue 14, point 3).

1. The exit codes: a GoogleTest program on Tessera's single-process main, and one on
   Tessera::testing's run_all_tests under mpirun -np 2, exit TESSERA_SKIP_EXIT_CODE (77) when a test
   skipped on some rank and none failed anywhere, 0 when nothing skipped, and a failing code (not 77)
   when one test skipped and another failed, so ctest's SKIP_RETURN_CODE never turns a failure
   into a skip.
2. The ctest properties of this build (ctest --show-only=json-v1): every test labelled gpu or python
   (it needs a device or a Python reference that a machine may lack) carries SKIP_RETURN_CODE 77, and
   a GoogleTest one has TESSERA_SKIP_EXIT_CODE=77 in its environment; no test carries a
   SKIP_REGULAR_EXPRESSION that matches GoogleTest's "[  SKIPPED ]" line (ctest then reports a run
   in which one test skipped and another failed as skipped: the failure disappears).

Usage: skip_conventions_test.py BUILD_DIR PROBE MPI_PROBE   (MPIEXEC from the environment)
"""
import json
import os
import re
import subprocess
import sys

SKIP = 77
failures = []


def check(cond, msg):
    print(("ok:   " if cond else "FAIL: ") + msg)
    if not cond:
        failures.append(msg)


def run(cmd, **env):
    e = dict(os.environ, TESSERA_SKIP_EXIT_CODE=str(SKIP), PROBE_SKIP_RANK="", PROBE_FAIL_RANK="")
    e.update(env)
    p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def exit_codes(probe, mpi_probe):
    for name, cmd, ranks in (("single-process main", [probe], [0]),
                             ("run_all_tests, 2 ranks",
                              [os.environ.get("MPIEXEC", "mpirun"), "-np", "2", "--oversubscribe",
                               mpi_probe], [0, 1])):
        rc, out = run(cmd)
        check(rc == 0, f"{name}: all pass -> exit 0 (got {rc})")
        for r in ranks:
            rc, out = run(cmd, PROBE_SKIP_RANK=str(r))
            check(rc == SKIP, f"{name}: a skip on rank {r} -> exit {SKIP} (got {rc})")
        rc, out = run(cmd, PROBE_SKIP_RANK=str(ranks[-1]), PROBE_FAIL_RANK=str(ranks[0]))
        check(rc not in (0, SKIP), f"{name}: a skip and a failure -> a failing exit (got {rc})")
        rc, out = run(cmd, PROBE_SKIP_RANK="all", TESSERA_SKIP_EXIT_CODE="")
        check(rc == 0, f"{name}: without TESSERA_SKIP_EXIT_CODE a skip exits 0 (got {rc})")


GTEST_SKIP_LINE = "[  SKIPPED ] Probe.SkipsWhereTold (0 ms)"


def properties(build):
    p = subprocess.run(["ctest", "--show-only=json-v1"], cwd=build, capture_output=True, text=True,
                       timeout=120)
    check(p.returncode == 0, f"ctest --show-only=json-v1 (rc {p.returncode})")
    tests = json.loads(p.stdout)["tests"]
    check(len(tests) > 50, f"{len(tests)} tests listed")
    needing = 0
    for t in tests:
        props = {q["name"]: q["value"] for q in t.get("properties", [])}
        labels = props.get("LABELS", [])
        name = t["name"]
        for rx in props.get("SKIP_REGULAR_EXPRESSION", []):
            if re.search(rx, GTEST_SKIP_LINE):
                check(False, f"{name}: SKIP_REGULAR_EXPRESSION {rx!r} matches GoogleTest's skip "
                             "line, so a failure beside a skip would be reported as a skip")
        if "gpu" not in labels and "python" not in labels:
            continue
        needing += 1
        if props.get("SKIP_RETURN_CODE") != SKIP:
            check(False, f"{name} (labels {labels}): no SKIP_RETURN_CODE {SKIP}")
        # A GoogleTest program of this build (perhaps under mpiexec) must be told the skip code.
        cmd = t.get("command", [])
        if cmd and os.path.basename(cmd[0]) in ("mpiexec", "mpirun"):
            cmd = [c for c in cmd[1:] if not c.startswith("-") and not c.isdigit()]
        prog = cmd[0] if cmd else ""
        gtest = prog.startswith(os.path.abspath(build) + "/") and os.path.basename(prog) != "tessera"
        if gtest and f"TESSERA_SKIP_EXIT_CODE={SKIP}" not in props.get("ENVIRONMENT", []):
            check(False, f"{name}: a GoogleTest program without TESSERA_SKIP_EXIT_CODE={SKIP}")
    check(needing > 10, f"{needing} tests labelled gpu or python checked")


def main():
    build, probe, mpi_probe = sys.argv[1:4]
    exit_codes(probe, mpi_probe)
    properties(build)
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)


if __name__ == "__main__":
    main()
