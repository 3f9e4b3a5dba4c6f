"""``--engine dask``: the pool's promises on a Dask cluster (LocalCluster with worker processes)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.contract.schema import FALLBACK_PROB
from bird_infer.jobs.predict import run_predict
from bird_infer.outputs.report import report_path
from bird_infer.run.options import RunOptions
from tests.conftest import synthetic_chunks
from tests.faults import FaultyPredictor

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, started once for the module."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def write_files(folder: Path, names: dict[str, float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, secs) in enumerate(names.items()):
        wave = synthetic_chunks(32000, 5.0, int(np.ceil(secs / 5)), seed=10 + k).reshape(-1)[: int(secs * 32000)]
        sf.write(folder / name, wave, 32000)
    return folder


FILES = {"a.wav": 12.0, "b.wav": 31.0, "c.flac": 7.5, "d.wav": 22.0, "e.wav": 4.0}


def test_dask_csv_equals_the_pool_byte_for_byte(tmp_path, tiny_bundle, cluster) -> None:
    manifest, _, _ = tiny_bundle
    audio = write_files(tmp_path / "audio", FILES)
    pool = run_predict(audio, manifest.root, tmp_path / "pool.csv", options=RunOptions(workers=2))
    local = run_predict(audio, manifest.root, tmp_path / "local.csv", options=RunOptions(engine="dask"))
    given = run_predict(
        audio,
        manifest.root,
        tmp_path / "given.csv",
        options=RunOptions(engine="dask", scheduler=cluster.scheduler_address),
    )
    text = pool.out_path.read_text()
    assert local.out_path.read_text() == text and given.out_path.read_text() == text
    assert pool.n_rows == 3 + 7 + 2 + 5 + 1


def test_a_killed_worker_costs_no_file(tmp_path, tiny_bundle, cluster) -> None:
    """A worker process killed by its PID mid-run: Dask reschedules its file; the rows equal a clean run."""
    manifest, _, _ = tiny_bundle
    audio = write_files(tmp_path / "audio", {f"slow_{k}.wav": 6.0 for k in range(6)})
    clean = run_predict(audio, manifest.root, tmp_path / "clean.csv", options=RunOptions(workers=2))

    client = distributed.Client(cluster)
    pids = list(client.run(os.getpid).values())
    client.close()
    killer = threading.Timer(4.0, lambda: os.kill(pids[0], signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    summary = run_predict(
        audio,
        manifest.root,
        tmp_path / "killed.csv",
        options=RunOptions(engine="dask", scheduler=cluster.scheduler_address, predictor_factory=FaultyPredictor),
    )
    killer.join()
    print(f"run with a worker killed after 4 s: {time.monotonic() - t0:.1f} s, {summary.n_failed} fallback")
    assert summary.n_failed == 0
    assert summary.out_path.read_text() == clean.out_path.read_text()


def test_a_corrupt_file_gets_fallback_rows_and_a_report_line(tmp_path, tiny_bundle, cluster) -> None:
    manifest, _, _ = tiny_bundle
    audio = write_files(tmp_path / "audio", {"good.wav": 11.0, "other.wav": 12.0})
    (audio / "broken.ogg").write_bytes(np.random.default_rng(0).bytes(20_000))
    out = tmp_path / "sub.csv"
    summary = run_predict(
        audio, manifest.root, out, options=RunOptions(engine="dask", scheduler=cluster.scheduler_address)
    )
    df = pd.read_csv(out)
    report = pd.read_csv(report_path(out))
    assert summary.n_failed == 1 and report["row_prefix"].tolist() == ["broken"]
    assert report["attempts"].tolist() == [2] and "AudioDecodeError" in report["reason"].iloc[0]
    broken = df[df["row_id"].str.startswith("broken_")][list(manifest.labels)].to_numpy()
    assert len(broken) == 3 and (broken == FALLBACK_PROB).all()  # the most common row count among the others


def test_dask_is_never_imported_without_the_engine(tmp_path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    modules = "bird_infer.jobs.predict, bird_infer.jobs.detect, bird_infer.run.engine"
    code = f"import sys, {modules}; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
