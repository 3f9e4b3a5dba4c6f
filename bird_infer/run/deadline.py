"""The deadline guard: finish inside a time limit, degrading in a fixed order rather than overrunning.

The order, from the first resort to the last:

1. **Fewer folds for the files not yet started.** Before each file is handed to a worker, the guard
   projects the finish from what the finished files cost (seconds per chunk for decoding + front-end,
   and per chunk *per fold* for the models, over the parallelism actually achieved). It picks the
   largest fold count whose projected finish stays within ``safety`` x the limit. Folds are dropped
   in the keeping order the manifest gives (:meth:`~bird_infer.contract.bundle.Manifest.unit_order`: the last fold of
   the least valuable member first; one-member bundles drop fold4 first), never added back once dropped,
   and never the last fold of a member.
2. **Fallback rows at the hard stop.** At ``limit - reserve`` the run stops: files still running or
   waiting get the fallback rows and an entry in the error report, the workers are killed and the
   CSV is written, so a complete, valid submission exists before the limit.

Times count from the start of the job (``run_predict``), not from the start of the notebook.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

DEFAULT_SAFETY = 0.9
"""Plan to finish within 90% of the limit."""


@dataclass(frozen=True)
class Deadline:
    """A time limit and how much of it to plan for."""

    limit_s: float
    safety: float = DEFAULT_SAFETY

    def __post_init__(self) -> None:
        if not self.limit_s > 0:
            raise ValueError(f"time limit must be positive, got {self.limit_s} s")
        if not 0 < self.safety <= 1:
            raise ValueError(f"safety factor must be in (0, 1], got {self.safety}")

    @property
    def target_s(self) -> float:
        """When the plan aims to finish."""
        return self.safety * self.limit_s

    @property
    def stop_s(self) -> float:
        """The hard stop: what is unfinished then gets fallback rows. Leaves time to write the CSV.

        The reserve is 3% of the limit, at least 10 s (the 24 000-row x 264-label BirdCLEF CSV took 4.1 s
        to build and write on the 2-core development machine),
        but never more than a quarter of the limit (tiny limits in tests).
        """
        reserve = min(max(10.0, 0.03 * self.limit_s), 0.25 * self.limit_s)
        return self.limit_s - reserve


@dataclass
class DeadlineGuard:
    """Chooses the fold count for each file from the cost of the files finished so far.

    Owned by the parent process; fed every finished file with :meth:`record`.
    """

    deadline: Deadline
    n_folds: int
    total_chunks: int
    workers: int
    started: float = field(default_factory=time.perf_counter)
    """``time.perf_counter()`` at the start of the job: the limit counts from here."""
    chunks_done: int = 0
    overhead_s: float = 0.0
    """Worker seconds in decoding + front-end, over all finished files."""
    fold_chunk_s: float = 0.0
    """Worker seconds in the models, over all finished files."""
    fold_chunks: int = 0
    """Sum over finished files of chunks x folds used."""
    files_done: int = 0
    min_folds: int = 1
    """The fewest units a file may run with (one per bundle member: no member is dropped whole)."""
    runs: tuple[int, ...] = ()
    """Model runs per chunk with ``k`` units kept, ``runs[k]`` (folds x shifts of each member; default ``k``):
    what the projection scales the model time by."""
    folds_now: int = field(init=False)

    def __post_init__(self) -> None:
        self.folds_now = self.n_folds

    def _runs(self, k: int) -> int:
        return self.runs[k] if k < len(self.runs) else k

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def record(self, n_chunks: int, n_folds: int, overhead_s: float, model_s: float) -> None:
        """A finished file: its chunks, the folds it used and its worker seconds per stage."""
        self.files_done += 1
        self.chunks_done += n_chunks
        self.overhead_s += overhead_s
        self.fold_chunk_s += model_s
        self.fold_chunks += n_chunks * self._runs(n_folds)

    def projected_finish_s(self, elapsed_s: float, n_folds: int) -> float:
        """Elapsed + the remaining chunks' cost with ``n_folds`` folds, spread over the achieved parallelism."""
        if self.chunks_done == 0 or self.fold_chunks == 0:
            return elapsed_s
        remaining = max(0, self.total_chunks - self.chunks_done)
        per_chunk = self.overhead_s / self.chunks_done + self._runs(n_folds) * self.fold_chunk_s / self.fold_chunks
        busy = self.overhead_s + self.fold_chunk_s
        parallel = min(float(self.workers), max(1.0, busy / elapsed_s)) if elapsed_s > 0 else 1.0
        return elapsed_s + remaining * per_chunk / parallel

    def folds_for_next(self, elapsed_s: float) -> int:
        """Folds for the next file to start: the most that keep the projection within the target.

        Until every worker has finished a file the estimate is too rough to act on, so all folds run.
        Never fewer than ``min_folds``: past that, the hard stop decides.
        """
        if self.files_done < self.workers:
            return self.folds_now
        best = self.min_folds
        for k in range(self.folds_now, self.min_folds - 1, -1):
            if self.projected_finish_s(elapsed_s, k) <= self.deadline.target_s:
                best = k
                break
        self.folds_now = best
        return best

    def must_stop(self, elapsed_s: float) -> bool:
        return elapsed_s >= self.deadline.stop_s

    def seconds_to_stop(self, elapsed_s: float) -> float:
        return max(0.0, self.deadline.stop_s - elapsed_s)
