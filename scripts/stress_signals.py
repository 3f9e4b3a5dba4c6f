"""Run the signal tests (Ctrl-C twice, a killed parent, a SIGSTOPped worker, one stopped idle or starting) and the
bounded name patterns many times beside a CPU load, and count the failures: a signal that is swallowed once in a
hundred runs is a defect, and shows up only like this.

    python scripts/stress_signals.py [--runs 20] [--load 2]

The load is ``--load`` busy processes (default: one per core), started before the first run and stopped after the
last. Exit status 1 when any run failed. CI runs it with a small count (``tests/test_stress.py``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = (
    "tests/test_hostile.py::test_ctrl_c_twice_stops_everything_at_once",
    "tests/test_hostile.py::test_workers_die_with_a_killed_parent",
    "tests/test_faults.py::test_a_stalled_worker_is_found_in_seconds",
    "tests/test_run_ends.py::test_a_worker_stopped_before_its_first_task_cannot_hold_the_run",
    "tests/test_run_ends.py::test_a_name_that_blows_the_bound_at_run_time_leaves_its_rows_and_says_why",
    "tests/test_run_ends.py::test_the_issues_pattern_runs_a_rank_blend_to_its_end",
)


def burn(stop_at: float) -> None:
    x = 0
    while time.monotonic() < stop_at:
        x = (x * 31 + 7) % 1_000_003


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes beside the tests")
    args = p.parse_args(argv)
    stop_at = time.monotonic() + 3600
    load = [multiprocessing.Process(target=burn, args=(stop_at,), daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    failures = []
    try:
        for k in range(args.runs):
            t0 = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            ok = done.returncode == 0
            tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
            print(f"run {k + 1}/{args.runs}: {'ok' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s ({tail})")
            if not ok:
                failures.append(k + 1)
                print(done.stdout[-3000:])
    finally:
        for proc in load:
            proc.terminate()
    print(f"{len(failures)} failed, {args.runs - len(failures)} passed (under a load of {args.load} busy processes)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
