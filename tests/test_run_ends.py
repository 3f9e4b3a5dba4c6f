"""A run always ends, inside its limit, with its outputs (issue 32): a worker stalled while idle or in its start-up
cannot hold the exit; a file-name pattern cannot backtrack for ever; a full disk while member rows spill is a
message, never a traceback that costs the work done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_faults import write_tones
from tests.test_hostile import alive, children

RUNNER = """
import sys
from pathlib import Path
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions, restore_interrupts
from tests.faults import StopOnePredictor
restore_interrupts()
options = RunOptions(workers=2, stall_floor_s=2.0, split_files=False, predictor_factory=StopOnePredictor)
s = run_predict(sys.argv[1], sys.argv[2], sys.argv[3], options=options)
print(f"DONE rows={s.n_rows} failed={s.n_failed}", flush=True)
"""


def run_with_one_worker_stopped(tmp_path: Path, root: Path, mode: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The run above on 4 x 60-s files, its first worker stopped as ``mode`` says; watches the process tree until
    the run exits. Returns the finished process and what was seen: the stopped pid, every worker seen, the CSV's
    time and the exit's."""
    audio = tmp_path / "audio"
    write_tones(audio, [f"f{k}.wav" for k in range(4)], seconds=60.0)
    out = tmp_path / "sub.csv"
    env = {**os.environ, "BIRD_INFER_STOP_DIR": str(tmp_path), "BIRD_INFER_STOP_MODE": mode, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(audio), str(root), str(out)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: set[int] = set()
    csv_at = None
    t_kill = time.monotonic() + 240  # far past what the run needs: a run still going then has hung
    while proc.poll() is None and time.monotonic() < t_kill:
        workers |= {c for c in children(proc.pid) if _is_worker(c)}
        if csv_at is None and out.exists():
            csv_at = time.monotonic()
        time.sleep(0.05)
    exited_at = time.monotonic()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=30)
    stopped = int((tmp_path / "stopped.pid").read_text())
    seen = {"stopped": stopped, "workers": workers, "csv_at": csv_at, "exited_at": exited_at}
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), seen


def _is_worker(pid: int) -> bool:
    try:
        return "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["holding", "starting"])
def test_a_worker_stopped_before_its_first_task_cannot_hold_the_run(tmp_path, tiny_bundle, mode) -> None:
    """``holding``: stopped idle with the task queue's lock held, as a worker waiting for work holds it: no other
    worker can take a task until the heartbeat finds the pool held and replaces it. ``starting``: stopped in its
    start-up: the other worker takes every file. Either way the CSV holds every file's predictions, the run exits 0
    within 10 s of writing it, and no process of it is left."""
    manifest, _, _ = tiny_bundle
    done, seen = run_with_one_worker_stopped(tmp_path, manifest.root, mode)
    print(done.stdout[-2000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DONE rows=48 failed=0" in done.stdout
    assert seen["csv_at"] is not None and seen["exited_at"] - seen["csv_at"] < 10.0
    assert seen["stopped"] in seen["workers"]
    left = [p for p in seen["workers"] if alive(p)]
    assert not left, f"processes of the run left: {left}"
    if mode == "holding":
        assert "a worker stalled while waiting for work; starting a new pool" in done.stderr


# --- 2. nothing from a manifest can hang a run ---------------------------------------------------------------------

CATASTROPHIC = r"^(?P<site>(a|aa)+)_(?P<hour>\d\d)h$"
"""Backtracks without bound even in the ``regex`` module, on a run of a's ended by a character it does not take."""
NESTED = r"^(?P<site>(\w+_?)+)_(?P<hour>\d\d)h$"
"""The issue's pattern: a nested quantifier written by mistake (``re`` takes hours on a long name it misses)."""


def _with_pattern(folder: Path, pattern: str) -> Path:
    import json

    data = json.loads((folder / "manifest.json").read_text())
    for step in data["postprocess"]:
        if step["step"] == "prior":
            step["pattern"] = pattern
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_a_pattern_that_backtracks_without_bound_is_refused_at_parse(tmp_path, tiny_bundle) -> None:
    from bird_infer.contract.errors import InvalidFieldError
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.contract.name_pattern import NamePattern
    from tests.test_postprocess import _bundle

    with pytest.raises(InvalidFieldError, match=r"backtracks without bound.*took over"):
        NamePattern.compile(CATASTROPHIC, "postprocess[2].pattern")
    models = _with_pattern(_bundle(tmp_path / "m", tiny_bundle), CATASTROPHIC)
    with pytest.raises(InvalidFieldError, match=r"postprocess\[2\] \(prior\)\.pattern .* backtracks without bound"):
        load_manifest(models)
    ok = NamePattern.compile(r"^(?P<site>[a-z]+)_(?P<hour>\d{2})$")  # a sane pattern passes the check
    assert ok.search("alpha_06").group("site") == "alpha"


def test_a_name_that_blows_the_bound_at_run_time_leaves_its_rows_and_says_why(tmp_path, tiny_bundle) -> None:
    """A pattern that slipped past the check (compiled unchecked here) cannot hang the run: the name gets a
    ``prior_unmatched`` line saying why, its rows stay as without the prior, every other file gets its prior."""
    from bird_infer.contract.name_pattern import MATCH_TIMEOUT_S, NamePattern
    from bird_infer.run.postprocess import _Lookup

    lookup = _Lookup(None, NamePattern.compile(CATASTROPHIC, check=False), ("site", "hour"), {})  # type: ignore[arg-type]
    t0 = time.perf_counter()
    prior, why = lookup.prior_for(Path("a" * 40 + "!.wav"))
    took = time.perf_counter() - t0
    print(f"{why} ({took:.3f} s)")
    assert prior is None and "took over" in why and took < 20 * MATCH_TIMEOUT_S + 1


def test_the_issues_pattern_runs_a_rank_blend_to_its_end(tmp_path, tiny_bundle) -> None:
    """The issue's nested pattern against a stem like ``S4A03895_20190522_000000_aaaa...!``: ``re`` would backtrack
    for hours after the last file; the run ends with its CSV, the long name reported ``prior_unmatched``."""
    import pandas as pd

    from bird_infer.jobs.predict import run_predict
    from bird_infer.run.options import RunOptions
    from tests.test_postprocess import _bundle

    models = _with_pattern(_bundle(tmp_path / "m", tiny_bundle), NESTED)
    stem = "S4A03895_20190522_000000_" + "a" * 34 + "!"
    write_tones(tmp_path / "audio", [f"{stem}.wav", "alpha_06h.wav"], seconds=12.0)
    summary = run_predict(tmp_path / "audio", models, tmp_path / "sub.csv", options=RunOptions(workers=2))
    report = pd.read_csv(summary.report_path, dtype=str).set_index("row_prefix")
    print(report[["outcome", "reason"]])
    assert summary.n_rows == 6 and report.loc[stem, "outcome"] == "prior_unmatched"
    assert "does not match" in report.loc[stem, "reason"] or "took over" in report.loc[stem, "reason"]


def test_post_processing_after_the_last_file_counts_against_the_limit(tmp_path, tiny_bundle) -> None:
    """A rank blend's steps run after the last file: a file reached past the hard stop keeps its blended rows
    (clipped), without the steps, and the report says so."""
    import numpy as np

    from bird_infer.contract.manifest import load_manifest
    from bird_infer.jobs.predict import run_predict
    from bird_infer.run.options import RunOptions
    from bird_infer.run.postprocess import PostProcessor
    from bird_infer.run.runwide import POST_SKIPPED, MemberRows, finish
    from bird_infer.runtime.blend import blend, member_weights
    from tests.test_postprocess import _bundle

    models = _bundle(tmp_path / "m", tiny_bundle)
    write_tones(tmp_path / "audio", ["alpha_06.wav", "beta_18.wav"], seconds=12.0)
    options = RunOptions(workers=2, keep_member_rows=True)
    kept = run_predict(tmp_path / "audio", models, tmp_path / "k.csv", options=options)
    assert kept.n_rows == 6
    manifest = load_manifest(models)
    from bird_infer.outputs.names import unique_stems
    from bird_infer.run.plan import iter_outcomes, plan_run

    plan = plan_run(tmp_path / "audio", models, unique_stems, options)
    outcomes = dict(iter_outcomes(plan))
    store = MemberRows(tmp_path, 2**30)
    members = {}
    for p, o in outcomes.items():
        members[p] = o.member_probs.copy()
        store.add(p, o.member_probs)
    done = finish(outcomes, store, manifest, PostProcessor(manifest), stop_at=0.0)  # the stop long past
    from bird_infer.run.runwide import rank_in_place

    ranked = MemberRows(tmp_path, 2**30)
    for p, rows in members.items():
        ranked.add(p, rows.copy())
    rank_in_place(ranked, {p: np.ones(rows.shape[1], bool) for p, rows in members.items()})
    for p, o in done.items():
        assert o.postprocess_skipped and POST_SKIPPED in o.notes
        want = np.clip(blend(ranked.get(p), member_weights(manifest), "mean", 2.0), 0, 0.999999)
        assert np.abs(o.probs - want).max() <= 1e-6


# --- 3. a full disk while member rows spill --------------------------------------------------------------------


def test_no_room_for_the_spill_is_one_error_before_any_audio(tmp_path, tiny_bundle, monkeypatch) -> None:
    from bird_infer.contract.errors import OutputError
    from bird_infer.jobs.predict import run_predict
    from bird_infer.run import runwide
    from bird_infer.run.options import RunOptions
    from tests.test_postprocess import _bundle

    models = _bundle(tmp_path / "m", tiny_bundle)
    write_tones(tmp_path / "audio", ["alpha_06.wav", "beta_18.wav"], seconds=12.0)
    monkeypatch.setattr(runwide, "free_bytes", lambda folder: 1000)
    monkeypatch.setattr(runwide, "available_memory_bytes", lambda: 1000)
    out = tmp_path / "out" / "sub.csv"
    out.parent.mkdir()
    with pytest.raises(OutputError, match=r"rank blend .* bytes .* has 1000 bytes free"):
        run_predict(tmp_path / "audio", models, out, options=RunOptions(workers=2, member_rows_ram_mb=0))
    assert list(out.parent.iterdir()) == []
    # where memory has room, the rows stay there and the CSV is the same as with room on disk
    monkeypatch.setattr(runwide, "available_memory_bytes", lambda: 2**40)
    got = run_predict(tmp_path / "audio", models, out, options=RunOptions(workers=2, member_rows_ram_mb=0))
    monkeypatch.undo()
    want = run_predict(tmp_path / "audio", models, tmp_path / "w.csv", options=RunOptions(workers=2))
    assert got.out_path.read_bytes() == want.out_path.read_bytes()


@pytest.mark.parametrize("memory", ["enough", "short"])
def test_a_disk_that_fills_up_mid_spill_costs_no_work(tmp_path, tiny_bundle, monkeypatch, memory) -> None:
    """The second spill write fails half-way (ENOSPC): with memory, the rows move back there and the CSV equals
    the one with room; without, one OutputError naming the folder and the bytes, and no spill file left."""
    import errno

    from bird_infer.contract.errors import OutputError
    from bird_infer.jobs.predict import run_predict
    from bird_infer.run import runwide
    from bird_infer.run.options import RunOptions
    from tests.test_postprocess import _bundle

    models = _bundle(tmp_path / "m", tiny_bundle)
    write_tones(tmp_path / "audio", ["alpha_06.wav", "beta_18.wav", "other.wav"], seconds=12.0)
    want = run_predict(tmp_path / "audio", models, tmp_path / "w.csv", options=RunOptions(workers=2))
    real_write = runwide.MemberRows._write
    calls = []

    def failing(self, path, rows):
        calls.append(path)
        if len(calls) == 2:
            self._file.write(rows.tobytes()[: rows.nbytes // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, path, rows)

    monkeypatch.setattr(runwide.MemberRows, "_write", failing)
    if memory == "short":
        monkeypatch.setattr(runwide, "available_memory_bytes", lambda: 1000)
    out = tmp_path / "out" / "sub.csv"
    options = RunOptions(workers=2, member_rows_ram_mb=0)
    if memory == "enough":
        got = run_predict(tmp_path / "audio", models, out, options=options)
        assert got.out_path.read_bytes() == want.out_path.read_bytes()
    else:
        with pytest.raises(OutputError, match=r"writing the rank blend's member rows to .*out.* failed .* bytes"):
            run_predict(tmp_path / "audio", models, out, options=options)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    assert len(calls) >= 2


# --- 4. a script without a main guard ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_script_without_a_main_guard_runs_to_its_end(tmp_path, tiny_bundle) -> None:
    """multiprocessing's spawn runs the parent's main script again in every worker before it becomes one. A script
    that calls ``main`` at its top level (no ``if __name__ == "__main__":``) used to start a job in each worker:
    refused there, and the parent then waited on that worker for ever (measured before the fix: killed at 150 s).
    Now ``main`` in a starting worker returns at once, the worker starts, and the run ends with every file."""
    manifest, _, _ = tiny_bundle
    write_tones(tmp_path / "audio", ["a.wav", "b.wav", "c.wav"])
    script = tmp_path / "unguarded.py"
    out = tmp_path / "sub.csv"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from bird_infer.cli import main\n"
        f"rc = main(['-q', 'predict', '--audio', {str(tmp_path / 'audio')!r}, '--models', {str(manifest.root)!r}, "
        f"'--out', {str(out)!r}, '--workers', '2'])\n"
        "print('DONE', rc)\n",
        encoding="utf-8",
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "DONE 0"
    assert len(out.read_text().splitlines()) == 1 + 3 * 2  # a header and two 5-s rows per 6-s file
