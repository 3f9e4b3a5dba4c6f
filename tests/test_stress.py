"""The signal tests under a CPU load, a few times (``scripts/stress_signals.py``; the closing note gives 20 runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the signal tests read /proc")
def test_signal_tests_hold_under_load() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/stress_signals.py", "--runs", "2", "--load", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout[-3000:])
    assert done.returncode == 0 and "0 failed, 2 passed" in done.stdout
