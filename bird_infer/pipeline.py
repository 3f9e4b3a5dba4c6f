"""What one worker process does: a file in, its probability rows (or the reason it failed) out.

Each worker builds its front-end and ONNX sessions once, in the pool initializer, from the
manifest it is given. The scheduling, retries and deadline live in :mod:`bird_infer.scheduler`.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bird_infer.audio import RowReader
from bird_infer.ensemble import PRECISION_BOUND, BundleModel, SessionSettings
from bird_infer.schema import Manifest
from bird_infer.segments import assemble

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
    timeout_floor_s: float = 300.0
    """A file running longer than ``timeout_floor_s + timeout_factor x`` its expected time (its rows x the
    slowest seconds per row measured so far, 0.5 s before any measurement) is taken for a hung worker:
    the workers are killed and it is handled like a dead worker."""
    timeout_factor: float = 10.0
    engine: str = "pool"
    """``pool`` (this machine's process pool) or ``dask`` (a Dask cluster; see :mod:`bird_infer.dask_engine`)."""
    scheduler: str | None = None
    """With ``engine="dask"``: the scheduler's address, or None for a LocalCluster started for the run."""
    split_files: bool = True
    """With fewer files than cores, split each long file's rows across workers (:mod:`bird_infer.segments`)."""
    predictor_factory: Callable[[Manifest, RunOptions], FilePredictor] | None = None
    """Builds each worker's predictor (default :class:`FilePredictor`); must be importable by name (spawn)."""

    def __post_init__(self) -> None:
        checks = {
            "workers": self.workers >= 0,
            "block_chunks": self.block_chunks >= 1,
            "precision_bound": math.isfinite(self.precision_bound) and self.precision_bound >= 0,
            "max_attempts": self.max_attempts >= 1,
            "timeout_floor_s": math.isfinite(self.timeout_floor_s) and self.timeout_floor_s > 0,
            "timeout_factor": math.isfinite(self.timeout_factor) and self.timeout_factor > 0,
            "engine": self.engine in ("pool", "dask"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid RunOptions: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")

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
    """Rows for one file: ``probs`` (n_rows, n_labels) float32, in [0, 1).

    Most files have every row predicted. A file cut short (or whose header claims more than decodes)
    has its claimed rows past the decoded audio filled with :data:`FALLBACK_PROB`, and a chunk on
    which no fold gave finite outputs too; ``fallback_rows`` counts them and ``notes`` say why.
    """

    path: Path
    probs: np.ndarray
    times: StageTimes = field(default_factory=StageTimes)
    n_folds: int = 0
    """Folds averaged for this file (fewer than the manifest's when the deadline guard degraded it)."""
    attempts: int = 1
    peak_mb: float = 0.0
    """Peak resident memory of the process that predicted the file, in MiB, when it finished."""
    fallback_rows: int = 0
    """Rows holding the fallback instead of a prediction."""
    excluded_folds: tuple[tuple[str, int], ...] = ()
    """(fold name, chunks) for folds left out of some chunks because their outputs were NaN or inf."""
    notes: tuple[str, ...] = ()
    """What happened to this file beyond plain prediction (for the error report)."""
    duration_s: float = 0.0
    """Seconds of audio that decoded (field tables run their times on across files by it)."""
    parts: int = 1
    """Segments the file was predicted in, by different workers (:mod:`bird_infer.segments`)."""

    @property
    def n_rows(self) -> int:
        return int(self.probs.shape[0])

    @property
    def n_chunks(self) -> int:
        """Rows that hold predictions."""
        return self.n_rows - self.fallback_rows


@dataclass(frozen=True)
class PartResult(FileResult):
    """Rows ``[first_row, ...)`` of a file as one worker predicted them (see :mod:`bird_infer.segments`):
    combined probabilities before the fallback and post-processing, NaN where no fold was finite."""

    first_row: int = 0
    reached_end: bool = True
    """The part read the file to its end: the reader's figures below are the file's."""
    reader_rows: int = 0
    """Rows the file gets (what decoded, or the header's claim when longer)."""
    reader_notes: tuple[str, ...] = ()
    bad_chunks: tuple[tuple[int, ...], ...] = ()
    """Per member, per kept fold: chunks on which that fold's outputs were left out (NaN or inf)."""


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
    """Every member of a bundle, for one process: a file in, its rows out."""

    def __init__(self, manifest: Manifest, options: RunOptions) -> None:
        self.manifest = manifest
        self.options = options
        self.ensemble = BundleModel(manifest, options.session)

    def predict_file(self, path: Path, n_folds: int | None = None) -> FileResult:
        """The file's rows: decoded once, each distinct front-end once per block, the bundle's first ``n_folds``
        folds in keeping order (default all), the members' weighted mean, then the manifest's post-processing.
        The rest of the length the header claims holds :data:`FALLBACK_PROB`.

        Raises AudioDecodeError when nothing decodes, NonFiniteOutputError when no fold is finite for any
        chunk, or whatever ONNX Runtime raises.
        """
        return assemble(self.manifest, path, [self.predict_part(path, n_folds)], n_folds)

    def predict_part(
        self, path: Path, n_folds: int | None = None, start: int = 0, end: int | None = None
    ) -> PartResult:
        """Rows ``[start, end)`` of the file (see :mod:`bird_infer.segments`): decoded from the file's start,
        the front-ends and folds run only on those rows; the combined probabilities before the fallback and
        the post-processing (NaN where no fold was finite)."""
        bundle = self.ensemble
        k = bundle.n_folds if n_folds is None else n_folds
        kept = bundle.kept(k)
        decode_s = frontend_s = model_s = 0.0
        parts: list[np.ndarray] = []
        bad_chunks = [np.zeros(len(f), dtype=np.int64) for f in kept]
        reader = RowReader(path, bundle.specs, self.manifest.row_s, self.options.block_chunks)
        reached_end = True
        t0 = time.perf_counter()
        for first, windows in reader:
            n = next(iter(windows.values())).shape[0]
            if end is not None and first >= end:
                reached_end = False
                break
            if first + n <= start:  # before this segment: decoded (the stream needs it), not predicted
                continue
            lo, hi = max(0, start - first), n if end is None else min(n, end - first)
            if lo or hi < n:
                windows = {spec: w[lo:hi] for spec, w in windows.items()}
            t1 = time.perf_counter()
            probs, masks = bundle.predict_windows(windows, k)
            parts.append(probs)
            for counts, bad in zip(bad_chunks, masks, strict=True):
                counts += bad.sum(axis=1)
            t2 = time.perf_counter()
            decode_s += t1 - t0
            frontend_s += bundle.last_frontend_s
            model_s += t2 - t1 - bundle.last_frontend_s
            t0 = time.perf_counter()
        n_labels = len(self.manifest.labels)
        return PartResult(
            path=path,
            probs=np.concatenate(parts, axis=0) if parts else np.zeros((0, n_labels), np.float32),
            times=StageTimes(decode_s, frontend_s, model_s),
            n_folds=k,
            peak_mb=peak_memory_mb(),
            duration_s=reader.decoded_s if reached_end else 0.0,
            first_row=start,
            reached_end=reached_end,
            reader_rows=reader.rows if reached_end else 0,
            reader_notes=tuple(n for n in (reader.note, reader.error) if n) if reached_end else (),
            bad_chunks=tuple(tuple(int(c) for c in counts) for counts in bad_chunks),
        )


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


def predict_part_or_fail(
    predictor: FilePredictor, path: Path, n_folds: int | None, start: int, end: int | None
) -> PartResult | FileFailure:
    """``predict_part``, with any exception turned into a FileFailure."""
    try:
        return predictor.predict_part(path, n_folds, start, end)
    except Exception as e:  # one bad file must never stop the batch; the reason is reported
        log.debug("%s failed", path, exc_info=True)
        return FileFailure(path=path, reason=describe_exception(e).replace(str(path), path.name))


def run_segment(predictor: FilePredictor, path: Path, n_folds: int | None, start: int, end: int | None):
    """A whole file (``start`` 0, ``end`` None) or a segment of one."""
    if start == 0 and end is None:
        return predict_or_fail(predictor, path, n_folds)
    return predict_part_or_fail(predictor, path, n_folds, start, end)


# One predictor per worker process, built by the pool initializer and only read afterwards.
_WORKER_PREDICTOR: FilePredictor | None = None


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process end when its parent does (SIGTERM, SIGKILL, a crash), and leave Ctrl-C to
    the parent: a terminal's SIGINT reaches the whole process group, and the parent decides what stops.

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``). Elsewhere a daemon
    thread watches the parent's pid.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: fall through to the watchdog
            pass
        else:
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
            return
    import threading

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def init_worker(manifest: Manifest, options: RunOptions, parent_pid: int | None = None) -> None:
    """Pool initializer: tie this worker's life to its parent's, then build its sessions once."""
    global _WORKER_PREDICTOR
    if parent_pid is not None:
        die_with_parent(parent_pid)
    _WORKER_PREDICTOR = options.make_predictor(manifest)


def predict_in_worker(path: Path, n_folds: int | None, start: int = 0, end: int | None = None):
    """The pool task: one file, or a segment of one, with this worker's predictor."""
    if _WORKER_PREDICTOR is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker used before its initializer ran")
    return run_segment(_WORKER_PREDICTOR, path, n_folds, start, end)
