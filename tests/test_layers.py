"""The house's floors: the import-linter contracts in pyproject.toml hold, and they can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT = Path(sys.executable).parent / "lint-imports"


def lint(folder: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package and pyproject.toml in ``folder`` (that copy, not the installed one)."""
    if not LINT.exists():
        pytest.skip("import-linter is not installed (the test extra has it)")
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run(
        [str(LINT), "--config", str(folder / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=300,
    )


def scratch_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    shutil.copytree(ROOT / "bird_infer", folder / "bird_infer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", folder / "pyproject.toml")
    return folder


def test_the_floors_hold(tmp_path) -> None:
    proc = lint(scratch_copy(tmp_path))
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("contract/text.py", "from bird_infer.jobs.predict import run_predict", "Floors"),
        ("run/options.py", "from bird_infer.run.plan import RunPlan", "run/ modules"),
        ("runtime/sessions.py", "import torch", "torch-free"),
        ("audio/files.py", "from bird_infer.audio.decode import audio_info", "No cycles"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, module: str, line: str, contract: str) -> None:
    """A floor that reaches up, a run module that imports the plan, torch in inference, a cycle between two
    siblings: each, planted in a scratch copy, breaks the contract that forbids it."""
    folder = scratch_copy(tmp_path)
    path = folder / "bird_infer" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # planted by the test\n", encoding="utf-8")
    proc = lint(folder)
    print(proc.stdout[-3000:])
    assert proc.returncode != 0
    broken = [ln for ln in proc.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(contract in ln for ln in broken), broken
