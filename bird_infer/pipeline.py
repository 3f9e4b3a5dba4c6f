"""What one worker process does: a file in, its probability rows (or the reason it failed) out.

Each worker builds its front-end and ONNX sessions once, in the pool initializer, from the
manifest it is given. The scheduling, retries and deadline live in :mod:`bird_infer.scheduler`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bird_infer.audio import iter_chunk_blocks
from bird_infer.ensemble import PRECISION_BOUND, FoldEnsemble, SessionSettings
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
    in_process: bool = False
    """Run every file in this process, no pool (debugging; a crash in a native library then ends the run)."""
    precision_bound: float = PRECISION_BOUND
    """The accuracy guard's bound on |p - p_fp32| for a backend/precision other than ONNX Runtime fp32."""
    max_attempts: int = 2
    """Tries per file: a file that raises, or whose worker dies, is retried once before it gets fallback rows."""
    predictor_factory: Callable[[Manifest, RunOptions], FilePredictor] | None = None
    """Builds each worker's predictor (default :class:`FilePredictor`); must be importable by name (spawn)."""

    def make_predictor(self, manifest: Manifest) -> FilePredictor:
        return (self.predictor_factory or FilePredictor)(manifest, self)


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent per stage for one file."""

    decode_s: float = 0.0
    frontend_s: float = 0.0
    model_s: float = 0.0


    @property
    def busy_s(self) -> float:
        return self.decode_s + self.frontend_s + self.model_s


@dataclass(frozen=True)
class FileResult:
    """Predictions for one file: ``probs`` (n_chunks, n_labels) float32, in [0, 1)."""

    path: Path
    probs: np.ndarray
    times: StageTimes = field(default_factory=StageTimes)
    n_folds: int = 0
    """Folds averaged for this file (fewer than the manifest's when the deadline guard degraded it)."""
    attempts: int = 1
    peak_mb: float = 0.0
    """Peak resident memory of the process that predicted the file, in MiB, when it finished."""

    @property
    def n_chunks(self) -> int:
        return int(self.probs.shape[0])


@dataclass(frozen=True)
class FileFailure:
    """A file that got no predictions: why, and after how many tries."""

    path: Path
    reason: str
    attempts: int = 1


def available_cores() -> int:
    """Cores this process may run on (affinity-aware; Kaggle shows 4 vCPUs)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def resolve_workers(requested: int, n_files: int) -> int:
    """0 means one per core; never more workers than files."""
    workers = requested if requested > 0 else available_cores()
    return max(1, min(workers, n_files))


def peak_memory_mb() -> float:
    """This process's peak resident memory in MiB (0.0 where the OS does not say).

    Linux: ``VmHWM`` from /proc, which starts afresh at exec. (``getrusage``'s ``ru_maxrss`` is carried
    across exec on Linux, so a freshly spawned worker would report its parent's peak.)
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


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

    def predict_file(self, path: Path, n_folds: int | None = None) -> FileResult:
        """All chunks of ``path`` through the front-end (once) and the first ``n_folds`` folds (default all).

        Raises AudioDecodeError, NonFiniteOutputError, or whatever the decoder or ONNX Runtime raises.
        """
        k = self.ensemble.n_folds if n_folds is None else n_folds
        decode = frontend = model = 0.0
        parts: list[np.ndarray] = []
        t0 = time.perf_counter()
        for block in iter_chunk_blocks(path, self.manifest.audio, self.options.block_chunks):
            t1 = time.perf_counter()
            feats = self.frontend(block)
            t2 = time.perf_counter()
            parts.append(self.ensemble.predict(feats, k))
            t3 = time.perf_counter()
            decode += t1 - t0
            frontend += t2 - t1
            model += t3 - t2
            t0 = time.perf_counter()
        probs = np.concatenate(parts, axis=0)
        times = StageTimes(decode, frontend, model)
        return FileResult(path=path, probs=probs, times=times, n_folds=k, peak_mb=peak_memory_mb())


def describe_exception(e: BaseException) -> str:
    """One line for the error report: the exception type and its message."""
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text}"


def predict_or_fail(predictor: FilePredictor, path: Path, n_folds: int | None) -> FileResult | FileFailure:
    """``predict_file``, with any exception turned into a FileFailure (plain data: always picklable)."""
    try:
        return predictor.predict_file(path, n_folds)
    except Exception as e:  # one bad file must never stop the batch; the reason is reported
        log.debug("%s failed", path, exc_info=True)
        return FileFailure(path=path, reason=describe_exception(e).replace(str(path), path.name))


# One predictor per worker process, built by the pool initializer and only read afterwards.
_WORKER_PREDICTOR: FilePredictor | None = None


def init_worker(manifest: Manifest, options: RunOptions) -> None:
    """Pool initializer: build this worker's sessions once."""
    global _WORKER_PREDICTOR
    _WORKER_PREDICTOR = options.make_predictor(manifest)


def predict_in_worker(path: Path, n_folds: int | None) -> FileResult | FileFailure:
    """The pool task: one file with this worker's predictor."""
    if _WORKER_PREDICTOR is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker used before its initializer ran")
    return predict_or_fail(_WORKER_PREDICTOR, path, n_folds)
