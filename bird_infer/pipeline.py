"""The main job: audio files in, one probability row per chunk out, over a pool of worker processes.

Each worker builds its front-end and ONNX sessions once, in the pool initializer, from the
manifest it is given. Files are scheduled one task each; results come back in input order.
``workers=1`` runs everything in this process (for debugging) and gives the same numbers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bird_infer.audio import iter_chunk_blocks
from bird_infer.ensemble import FoldEnsemble, SessionSettings
from bird_infer.frontend import LogMelFrontend
from bird_infer.manifest import Manifest

log = logging.getLogger(__name__)

NATIVE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class RunOptions:
    """How the job uses the machine."""

    workers: int = 0
    """Worker processes; 0 means one per core available to this process."""
    session: SessionSettings = field(default_factory=SessionSettings)
    block_chunks: int = 12
    """Chunks decoded and featurised at once per worker (bounds memory for long files)."""


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent per stage for one file."""

    decode_s: float = 0.0
    frontend_s: float = 0.0
    model_s: float = 0.0


@dataclass(frozen=True)
class FileResult:
    """Predictions for one file: ``probs`` (n_chunks, n_labels) float32, in [0, 1)."""

    path: Path
    probs: np.ndarray
    times: StageTimes = field(default_factory=StageTimes)

    @property
    def n_chunks(self) -> int:
        return int(self.probs.shape[0])


def available_cores() -> int:
    """Cores this process may run on (affinity-aware; Kaggle shows 4 vCPUs)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(requested: int, n_files: int) -> int:
    """0 means one per core; never more workers than files."""
    workers = requested if requested > 0 else available_cores()
    return max(1, min(workers, n_files))


def limit_native_threads(threads: int) -> None:
    """Set BLAS/OpenMP thread counts for worker processes started after this call.

    Called by entry points (the CLI, the Kaggle kernel) before a pool starts, so that numpy's
    BLAS does not start a thread per core in every worker on top of ONNX Runtime's.
    """
    for var in NATIVE_THREAD_VARS:
        os.environ.setdefault(var, str(threads))


class FilePredictor:
    """Front-end + fold ensemble for one process."""

    def __init__(self, manifest: Manifest, options: RunOptions) -> None:
        self.manifest = manifest
        self.options = options
        self.frontend = LogMelFrontend(manifest.frontend, manifest.audio.sample_rate)
        self.ensemble = FoldEnsemble(manifest, options.session)

    def predict_file(self, path: Path) -> FileResult:
        """All chunks of ``path`` through the front-end (once) and every fold."""
        decode = frontend = model = 0.0
        parts: list[np.ndarray] = []
        t0 = time.perf_counter()
        for block in iter_chunk_blocks(path, self.manifest.audio, self.options.block_chunks):
            t1 = time.perf_counter()
            feats = self.frontend(block)
            t2 = time.perf_counter()
            parts.append(self.ensemble.predict(feats))
            t3 = time.perf_counter()
            decode += t1 - t0
            frontend += t2 - t1
            model += t3 - t2
            t0 = time.perf_counter()
        probs = np.concatenate(parts, axis=0)
        return FileResult(path=path, probs=probs, times=StageTimes(decode, frontend, model))


# One predictor per worker process, built by the pool initializer and only read afterwards.
_WORKER_PREDICTOR: FilePredictor | None = None


def _init_worker(manifest: Manifest, options: RunOptions) -> None:
    global _WORKER_PREDICTOR
    _WORKER_PREDICTOR = FilePredictor(manifest, options)


def _predict_in_worker(path: Path) -> FileResult:
    if _WORKER_PREDICTOR is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker used before its initializer ran")
    return _WORKER_PREDICTOR.predict_file(path)


def predict_files(
    paths: Sequence[Path],
    manifest: Manifest,
    options: RunOptions | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Predict every file; results in the order of ``paths``. ``on_result`` sees each as it completes."""
    options = options or RunOptions()
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    workers = resolve_workers(options.workers, len(paths))
    if workers == 1:
        predictor = FilePredictor(manifest, options)
        results = []
        for p in paths:
            r = predictor.predict_file(p)
            if on_result:
                on_result(r)
            results.append(r)
        return results
    log.info("starting %d worker processes", workers)
    ctx = multiprocessing.get_context("spawn")  # no inherited threads or sessions: safe on every OS
    by_index: dict[int, FileResult] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(manifest, options)) as ex:
        futures = {ex.submit(_predict_in_worker, p): i for i, p in enumerate(paths)}
        for fut in as_completed(futures):
            r = fut.result()
            by_index[futures[fut]] = r
            if on_result:
                on_result(r)
    return [by_index[i] for i in range(len(paths))]
