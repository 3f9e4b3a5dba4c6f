"""How a run uses the machine: :class:`RunOptions`, the one worker-count rule, and the native thread limits the
entry points set before a pool starts."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bird_infer.contract.bundle import Manifest
from bird_infer.runtime.machine import available_cores
from bird_infer.runtime.precision import PRECISION_BOUND
from bird_infer.runtime.sessions import SessionSettings

NATIVE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ENGINES = ("pool", "dask")


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
    stall_floor_s: float = 30.0
    """A pool worker silent (no decoded block) for ``max(stall_floor_s, stall_factor x`` the slowest block seen) is
    taken for hung: found in seconds, where the per-file timeout above is the last resort
    (:mod:`bird_infer.run.heartbeat`)."""
    stall_factor: float = 10.0
    expected_row_s: float = 0.0
    """Seconds one row of the bundle took in the check before any audio (:func:`~bird_infer.runtime.checks.
    check_models`), one thread: a slow model is slow, not dead. The stall bound is at least ``stall_factor x``
    a block of such rows, and the per-file timeout counts rows at least this slow."""
    engine: str = "pool"
    """One of :data:`ENGINES`: ``pool`` (this machine's process pool) or ``dask`` (a Dask cluster; see
    :mod:`bird_infer.run.dask_engine`)."""
    scheduler: str | None = None
    """With ``engine="dask"``: the scheduler's address, or None for a LocalCluster started for the run."""
    split_files: bool = True
    """With fewer files than cores, split each long file's rows across workers (:mod:`bird_infer.run.segments`)."""
    member_rows_ram_mb: float = 1024.0
    """Member rows kept for a ``rank`` blend stay in memory up to this many MiB, then spill to a memory-mapped file
    in the output's folder (:mod:`bird_infer.run.runwide`)."""
    keep_member_rows: bool = False
    """Keep each member's rows before the blend in every FileResult (``bird-infer tune``); a ``rank`` blend keeps
    them whatever this says."""
    range_filter: tuple[float, float, int, float] | None = None
    """(latitude, longitude, week, threshold): BirdNET's meta model's species list for a bundle with a BirdNET member;
    labels whose BirdNET species is not on it get the fallback value (:func:`bird_infer.run.plan.plan_run`)."""
    predictor_factory: Callable[[Manifest, RunOptions], Any] | None = None
    """Builds each worker's predictor (default :class:`~bird_infer.run.predictor.FilePredictor`); must be
    importable by name (spawn)."""

    def __post_init__(self) -> None:
        checks = {
            "workers": self.workers >= 0,
            "block_chunks": self.block_chunks >= 1,
            "precision_bound": math.isfinite(self.precision_bound) and self.precision_bound >= 0,
            "max_attempts": self.max_attempts >= 1,
            "timeout_floor_s": math.isfinite(self.timeout_floor_s) and self.timeout_floor_s > 0,
            "timeout_factor": math.isfinite(self.timeout_factor) and self.timeout_factor > 0,
            "stall_floor_s": math.isfinite(self.stall_floor_s) and self.stall_floor_s > 0,
            "stall_factor": math.isfinite(self.stall_factor) and self.stall_factor > 0,
            "member_rows_ram_mb": math.isfinite(self.member_rows_ram_mb) and self.member_rows_ram_mb >= 0,
            "engine": self.engine in ENGINES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid RunOptions: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")

    def workers_for(self, n_tasks: int) -> int:
        """Worker processes for ``n_tasks`` tasks (files, or segments of split files): 1 in process; else
        ``workers`` (0: one per core available), never more than the tasks. The one rule every engine, the
        deadline guard and the run's summary use."""
        if self.in_process:
            return 1
        workers = self.workers if self.workers > 0 else available_cores()
        return max(1, min(workers, n_tasks))


def limit_native_threads(threads: int) -> None:
    """Set BLAS/OpenMP thread counts for worker processes started after this call.

    Called by entry points (the CLI, the Kaggle kernel) before a pool starts, so that numpy's
    BLAS does not start a thread per core in every worker on top of ONNX Runtime's.
    """
    for var in NATIVE_THREAD_VARS:
        os.environ.setdefault(var, str(threads))


def keeps_member_rows(manifest: Manifest, options: RunOptions) -> bool:
    """Whether a run's files come back with their members' rows, to be blended and post-processed once every row
    is in (:mod:`bird_infer.run.runwide`)."""
    return manifest.blend.needs_every_row or options.keep_member_rows


def restore_interrupts() -> None:
    """Let Ctrl-C (SIGINT) stop the run even when this process was started with SIGINT ignored: a shell without job
    control starts background commands so, and Python then never raises KeyboardInterrupt, so a run asked to stop
    would go on to the end and exit 0. Called by entry points (the CLI, the Kaggle kernel) before any work, in the
    main thread; the pool's workers ignore SIGINT on purpose (the parent decides what stops)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def aligned_blocks(manifest: Manifest, options: RunOptions) -> RunOptions:
    """``options`` with decoded blocks (and so split files' segments) a multiple of the manifest's ``batch_rows``:
    a front-end that clamps per batch of rows sees the batches training saw."""
    rows = manifest.batch_rows
    if options.block_chunks % rows == 0:
        return options
    return replace(options, block_chunks=math.ceil(options.block_chunks / rows) * rows)
