"""Fault injection: workers killed mid-file, files that raise, folds that return NaN, and the deadline guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.contract.schema import FALLBACK_PROB
from bird_infer.jobs.predict import run_predict
from bird_infer.outputs.report import report_path
from bird_infer.run.book import TIME_LIMIT, WORKER_DIED
from bird_infer.run.deadline import Deadline, DeadlineGuard
from bird_infer.run.engine import predict_files
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileFailure, FileResult
from tests.faults import FaultyPredictor, SlowPredictor

SR = 32000


def write_tones(folder: Path, names: list[str], seconds: float = 6.0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(names):
        t = np.arange(int(seconds * SR)) / SR
        x = 0.3 * np.sin(2 * np.pi * (1500 + 700 * k) * t) + 0.01 * np.random.default_rng(k).standard_normal(t.size)
        sf.write(folder / name, x.astype(np.float32), SR)
        paths.append(folder / name)
    return paths


NAMES = [
    "a_ok.wav",
    "kill_always.wav",
    "kill_once.wav",
    "m_ok.wav",
    "nan_all.wav",
    "nan_fold.wav",
    "raise_always.wav",
    "raise_once.wav",
    "z_ok.wav",
]


def test_faults_are_retried_once_and_reported(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    paths = write_tones(tmp_path / "audio", NAMES)
    clean = predict_files(paths, manifest, RunOptions(workers=2))
    assert all(isinstance(r, FileResult) for r in clean)
    from bird_infer.run.predictor import FilePredictor

    fold0 = FilePredictor(manifest, RunOptions()).predict_file(paths[NAMES.index("nan_fold.wav")], n_folds=1)
    faulty = RunOptions(workers=2, predictor_factory=FaultyPredictor)
    outcomes = {r.path.name: r for r in predict_files(paths, manifest, faulty)}
    for name, ref in zip(NAMES, clean, strict=True):
        got = outcomes[name]
        print(name, type(got).__name__, got.attempts, getattr(got, "reason", ""))
        if name in ("kill_always.wav", "raise_always.wav", "nan_all.wav"):
            assert isinstance(got, FileFailure) and got.attempts == 2, name
        elif name == "nan_fold.wav":  # the healthy fold's predictions, the NaN fold named
            assert isinstance(got, FileResult) and got.attempts == 1
            assert got.excluded_folds == (("fold1", 2),) and got.fallback_rows == 0
            np.testing.assert_allclose(got.probs, fold0.probs, atol=1e-5)  # another process: rounding
            assert not np.array_equal(got.probs, ref.probs)
        else:  # innocent files, and files that recover on their retry, give the clean run's numbers
            assert isinstance(got, FileResult), name
            np.testing.assert_array_equal(got.probs, ref.probs)
    assert outcomes["kill_always.wav"].reason == WORKER_DIED
    assert "injected fault in raise_always.wav" in outcomes["raise_always.wav"].reason
    assert "NonFiniteOutputError" in outcomes["nan_all.wav"].reason
    assert "fold0" in outcomes["nan_all.wav"].reason and "fold1" in outcomes["nan_all.wav"].reason
    # kill_once died beside another file: innocent until it dies alone, so not always charged
    assert outcomes["kill_once.wav"].attempts in (1, 2) and outcomes["raise_once.wav"].attempts == 2


def test_killed_worker_in_a_full_job_still_writes_every_row(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    write_tones(tmp_path / "audio", ["a.wav", "kill_always.wav", "b.wav", "c.wav"], seconds=11.0)
    out = tmp_path / "sub.csv"
    summary = run_predict(
        tmp_path / "audio", manifest.root, out, options=RunOptions(workers=2, predictor_factory=FaultyPredictor)
    )
    df = pd.read_csv(out)
    assert len(df) == 12 and summary.n_failed == 1
    killed = df[df["row_id"].str.startswith("kill_always_")][list(manifest.labels)].to_numpy()
    assert killed.shape == (3, len(manifest.labels)) and (killed == FALLBACK_PROB).all()
    report = pd.read_csv(report_path(out))
    assert report["row_prefix"].tolist() == ["kill_always"] and report["reason"].tolist() == [WORKER_DIED]


def test_in_process_mode_retries_and_reports_too(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    paths = write_tones(tmp_path / "audio", ["raise_once.wav", "raise_always.wav", "ok.wav"])
    options = RunOptions(in_process=True, predictor_factory=FaultyPredictor)
    a, b, c = predict_files(paths, manifest, options)
    assert isinstance(a, FileResult) and a.attempts == 2
    assert isinstance(b, FileFailure) and b.attempts == 2
    assert isinstance(c, FileResult) and c.attempts == 1


# --- the deadline guard ---------------------------------------------------------------------------


def guard_after(limit_s: float, files_done: int, n_folds: int = 5) -> DeadlineGuard:
    """A guard that has seen ``files_done`` files of 120 chunks, each 1 s of overhead + 1 s per fold."""
    g = DeadlineGuard(Deadline(limit_s), n_folds=n_folds, total_chunks=120 * 100, workers=2)
    for _ in range(files_done):
        g.record(n_chunks=120, n_folds=n_folds, overhead_s=1.0, model_s=1.0 * n_folds)
    return g


def test_guard_keeps_every_fold_when_the_projection_fits() -> None:
    g = guard_after(limit_s=10_000, files_done=10)
    # 10 files x 6 s of work in 30 s of wall: parallelism 2; 90 files left x 6 s / 2 = 270 s more.
    assert g.projected_finish_s(30.0, 5) == pytest.approx(300.0)
    assert g.folds_for_next(30.0) == 5


def test_guard_drops_folds_to_fit_and_never_adds_them_back() -> None:
    g = guard_after(limit_s=200, files_done=10)
    # with k folds: 30 + 90 x (1 + k) / 2 s; the target is 0.9 x 200 = 180 s -> k = 2 (165 s), k = 3 is 210 s
    assert g.folds_for_next(30.0) == 2
    g.record(n_chunks=120, n_folds=2, overhead_s=1.0, model_s=0.1)  # a fast file: the estimate improves
    assert g.folds_for_next(31.0) <= 2
    assert guard_after(limit_s=50, files_done=10).folds_for_next(30.0) == 1  # nothing fits: the minimum


def test_guard_waits_for_one_file_per_worker_before_acting() -> None:
    assert guard_after(limit_s=1, files_done=1).folds_for_next(0.5) == 5


def test_hard_stop_leaves_time_to_write() -> None:
    assert Deadline(7200).stop_s == pytest.approx(7200 - 216)
    assert Deadline(100).stop_s == pytest.approx(90)
    assert Deadline(2).stop_s == pytest.approx(1.5)
    with pytest.raises(ValueError):
        Deadline(0)


def test_tiny_time_limit_degrades_then_stops_with_a_complete_csv(tmp_path, tiny_bundle) -> None:
    """30 slow files, an 8-s limit: folds are dropped, then the rest get fallback rows, and the run ends in time.

    SlowPredictor makes each file cost 1.32 s with both folds and 0.72 s with one (sleeping), so
    even one fold cannot finish 30 files on 2 workers in 8 s, whatever the machine.
    """
    import time

    manifest, _, _ = tiny_bundle
    write_tones(tmp_path / "audio", [f"f{i:02d}.wav" for i in range(30)], seconds=30.0)
    out = tmp_path / "sub.csv"
    limit_s = 8.0
    t0 = time.perf_counter()
    options = RunOptions(workers=2, predictor_factory=SlowPredictor)
    summary = run_predict(tmp_path / "audio", manifest.root, out, options=options, time_limit_s=limit_s)
    wall = time.perf_counter() - t0
    df = pd.read_csv(out)
    report = pd.read_csv(report_path(out))
    print(f"limit {limit_s} s: wall {wall:.1f} s, {summary.n_failed} fallback, {summary.n_reduced} fewer folds")
    assert len(df) == 30 * 6 and df["row_id"].is_unique
    assert summary.n_failed >= 1 and set(report[report["outcome"] == "fallback"]["reason"]) == {TIME_LIMIT}
    assert summary.n_reduced >= 1
    assert (report[report["outcome"] == "reduced_folds"]["folds"] == 1).all()
    fallback = df[df["row_id"].str.rsplit("_", n=1).str[0].isin(report[report["outcome"] == "fallback"]["row_prefix"])]
    assert (fallback[list(manifest.labels)].to_numpy() == FALLBACK_PROB).all()
    # Not a test of the machine's speed: the hard stop (at 6 s) must not wait for the files still running.
    assert wall < limit_s


def test_a_stalled_worker_is_found_in_seconds(tmp_path, tiny_bundle) -> None:
    """A worker beats after every decoded block (0.5 s each here), then is SIGSTOPped: it is taken for hung once
    silent for max(stall_floor_s, stall_factor x the slowest block), its file retried alone and reported; the
    per-file timeout (set out of reach) plays no part."""
    import re

    from bird_infer.run.book import WORKER_HUNG
    from tests.faults import StallingPredictor

    manifest, _, _ = tiny_bundle
    paths = write_tones(tmp_path, ["a.wav", "stall_b.wav"], seconds=30.0)
    options = RunOptions(
        workers=2,
        block_chunks=1,
        predictor_factory=StallingPredictor,
        timeout_floor_s=100_000.0,
        stall_floor_s=2.0,
        stall_factor=4.0,
        split_files=False,
    )
    a, stalled = predict_files(paths, manifest, options, rows=[6, 6])
    print(f"stalled worker: {getattr(stalled, 'reason', '')}")
    assert isinstance(a, FileResult) and a.n_chunks == 6
    assert isinstance(stalled, FileFailure) and stalled.attempts == 2
    assert stalled.reason.startswith(WORKER_HUNG) and "no progress for" in stalled.reason
    silent = int(re.search(r"no progress for (\d+) s", stalled.reason).group(1))
    bound = max(options.stall_floor_s, options.stall_factor * StallingPredictor.block_s * 3)  # slowest: ~1 block
    assert silent <= bound + 2  # the stated bound, plus the parent's 1-s look
