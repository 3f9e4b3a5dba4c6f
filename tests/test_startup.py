"""Start-up to the first chunk: the workers spawn while the parent ranks the modes (an early pool), and take
the run's options once they are settled; a pool nobody takes ends. What they compute is the ordinary run's."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pandas as pd

from bird_infer.contract.manifest import load_manifest
from bird_infer.jobs.predict import run_predict
from bird_infer.outputs.names import unique_stems
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileResult
from bird_infer.run.plan import iter_outcomes, plan_run
from bird_infer.run.pool import EarlyPool
from bird_infer.tools.example import write_example

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def _children() -> set[int]:
    return {p.pid for p in multiprocessing.active_children()}  # also joins the ones that ended


def _gone_within(pids: set[int], seconds: float) -> bool:
    """None of ``pids`` is still a child process of this one within ``seconds`` (other tests' helpers, a Dask
    cluster's, may live on: only these are watched)."""
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        if not pids & _children():
            return True
        time.sleep(0.05)
    return not pids & _children()


def test_the_workers_start_before_the_plan_returns_and_run_its_files(tmp_path) -> None:
    audio = write_example(tmp_path / "audio", seconds=20.0).parent
    before = _children()
    plan = plan_run(audio, MODELS, unique_stems, RunOptions(workers=1))
    assert plan.early is not None and plan.early.workers == 1
    early = _children() - before
    assert len(early) == 1  # spawned during the plan, waiting for the run's options
    outcomes = list(iter_outcomes(plan))
    assert [type(o) for _, o in outcomes] == [FileResult]
    assert plan.early.take(1, plan.options) is None  # taken once, by the run
    assert _gone_within(early, 30)
    # the same rows as a run whose workers start after the plan (in-process: no pool at all)
    early = run_predict(audio, MODELS, tmp_path / "early.csv", options=RunOptions(workers=1))
    inline = run_predict(audio, MODELS, tmp_path / "inline.csv", options=RunOptions(in_process=True))
    pd.testing.assert_frame_equal(pd.read_csv(early.out_path), pd.read_csv(inline.out_path))


def test_an_early_pool_nobody_takes_ends(tmp_path) -> None:
    audio = write_example(tmp_path / "audio", seconds=10.0).parent
    before = _children()
    plan = plan_run(audio, MODELS, unique_stems, RunOptions(workers=1))
    assert plan.early is not None
    early = _children() - before
    assert early
    plan.early.close()
    assert plan.early.started()  # ended: a guard waiting on it goes ahead
    assert _gone_within(early, 30)
    plan.early.close()  # twice is harmless


def test_an_early_pool_of_another_size_is_ended_not_used() -> None:
    manifest = load_manifest(MODELS)
    before = _children()
    early = EarlyPool(2, manifest)
    spawned = _children() - before
    assert len(spawned) == 2
    assert early.take(1, RunOptions(workers=1)) is None
    assert early.started() and _gone_within(spawned, 30)


def test_the_startup_benchmark_runs(tmp_path) -> None:
    """benchmarks/startup.py end to end, one run: so that it cannot rot unnoticed (no time is asserted)."""
    from benchmarks.startup import main

    out = tmp_path / "startup.json"
    assert main(["--runs", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 1 and result["runs"][0]["startup_to_first_chunk_s"] > 0
    assert result["startup_to_first_chunk_s_median"] == result["runs"][0]["startup_to_first_chunk_s"]
