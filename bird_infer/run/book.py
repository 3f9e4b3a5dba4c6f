"""The book of one scheduling run: tasks queued, in flight, suspect and settled, retries, the hang timeout, and the
reasons a file gets when its worker dies or hangs or the clock runs out. Shared by every engine
(:mod:`bird_infer.run.pool`, :mod:`bird_infer.run.dask_engine`); the rules are in :mod:`bird_infer.run.pool`'s
docstring.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from bird_infer.run.deadline import DeadlineGuard
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileFailure, FileResult, Outcome
from bird_infer.run.segments import Segment

log = logging.getLogger(__name__)

WORKER_DIED = (
    "the worker process died while this file was being processed (killed by a signal, by the "
    "out-of-memory killer, or by a crash in a native library)"
)
WORKER_HUNG = "the worker stopped responding while this file was being processed"
TIME_LIMIT = "not finished before the time limit's hard stop"


class TaskBook:
    """The state of one scheduling run, owned by the parent process: what is queued, suspect, settled, and each
    task's attempts. Engines take tasks with :meth:`next_index` and :meth:`task_args`, report with
    :meth:`handle`, :meth:`worker_died` and :meth:`worker_hung`, and pass on what :meth:`drain` yields."""

    def __init__(
        self,
        paths: list[Path],
        options: RunOptions,
        guard: DeadlineGuard | None,
        segments: list[Segment] | None = None,
    ) -> None:
        self.paths = paths
        """Each task's file (a task is a file, or a segment of one)."""
        self.options = options
        self.guard = guard
        self.segments = segments or [Segment(i) for i in range(len(paths))]
        self.file_folds: dict[int, int | None] = {}
        self.attempts = [0] * len(paths)
        self.outcomes: dict[int, Outcome] = {}
        self.queue: deque[int] = deque(range(len(paths)))
        self.suspects: deque[int] = deque()
        self.settled: deque[tuple[int, Outcome]] = deque()
        """Outcomes settled and not yet drained, in the order they settled."""

    def folds_for_next(self) -> int | None:
        return self.guard.folds_for_next(self.guard.elapsed_s()) if self.guard else None

    def task_args(self, i: int) -> tuple[Path, int | None, int, int | None]:
        """(path, folds, start row, end row) for task ``i``. The segments of one file share one fold count
        (chosen when its first segment starts), so that they can be assembled."""
        seg = self.segments[i]
        if seg.whole:
            return self.paths[i], self.folds_for_next(), 0, None
        if seg.file not in self.file_folds:
            self.file_folds[seg.file] = self.folds_for_next()
        return self.paths[i], self.file_folds[seg.file], seg.start, seg.end

    def must_stop(self) -> bool:
        return bool(self.guard and self.guard.must_stop(self.guard.elapsed_s()))

    def finish(self, i: int, outcome: Outcome) -> None:
        outcome = replace(outcome, attempts=self.attempts[i])
        self.outcomes[i] = outcome
        if isinstance(outcome, FileResult) and self.guard:
            t = outcome.times
            self.guard.record(outcome.n_chunks, outcome.n_folds, t.decode_s + t.frontend_s, t.model_s)
        if isinstance(outcome, FileFailure):
            log.warning("%s: no predictions after %d attempt(s): %s", outcome.path, outcome.attempts, outcome.reason)
        self.settled.append((i, outcome))

    def drain(self) -> Iterator[tuple[int, Outcome]]:
        """(task index, outcome) for every task settled since the last call."""
        while self.settled:
            yield self.settled.popleft()

    def handle(self, i: int, outcome: Outcome) -> None:
        """A file came back from a worker: keep it, or retry it, or give up on it."""
        if isinstance(outcome, FileFailure) and self.attempts[i] < self.options.max_attempts:
            log.warning("%s failed (%s); retrying", outcome.path, outcome.reason)
            self.queue.appendleft(i)
            return
        self.finish(i, outcome)

    def worker_died(self, i: int, alone: bool) -> None:
        """The pool died with file ``i`` in flight. Only a file alone in flight is charged the attempt:
        with others beside it (running, or queued behind the workers) the culprit is unknown, so all
        become suspects and rerun one at a time, each then facing the same rule."""
        if not alone:
            self.attempts[i] -= 1
        if self.attempts[i] < self.options.max_attempts:
            self.suspects.append(i)
        else:
            self.finish(i, FileFailure(self.paths[i], WORKER_DIED))

    def worker_hung(self, i: int, seconds: float, what: str = "no result") -> None:
        """File ``i``'s worker went silent (``no progress``) or ran far past its expected time (``no result``): it
        is charged the attempt, like a death alone."""
        if self.attempts[i] < self.options.max_attempts:
            self.suspects.append(i)
        else:
            self.finish(i, FileFailure(self.paths[i], f"{WORKER_HUNG} ({what} for {seconds:.0f} s)"))

    def requeue(self, i: int) -> None:
        """Task ``i`` is handed out again, uncharged: its pool was replaced through no fault of its own."""
        self.attempts[i] -= 1
        self.queue.appendleft(i)

    def next_index(self) -> int | None:
        if self.suspects:
            return self.suspects.popleft()
        return self.queue.popleft() if self.queue else None

    def stop_unfinished(self, in_flight: Sequence[int], reason: str = TIME_LIMIT) -> None:
        for i in [*in_flight, *self.suspects, *self.queue]:
            if i not in self.outcomes:
                self.finish(i, FileFailure(self.paths[i], reason))
        self.suspects.clear()
        self.queue.clear()


class HangTimeouts:
    """When a running file is taken for a hung worker: ``floor + factor x rows x`` the slowest seconds per
    row measured so far (a stopped or deadlocked worker never returns, and without a time limit the run
    would wait for ever)."""

    DEFAULT_S_PER_ROW = 0.5

    def __init__(self, options: RunOptions, rows: Sequence[int]) -> None:
        self.floor_s = options.timeout_floor_s
        self.factor = options.timeout_factor
        self.rows = rows
        self.s_per_row = 0.0
        self.expected_s_per_row = options.expected_row_s

    def record(self, outcome: Outcome) -> None:
        if isinstance(outcome, FileResult) and outcome.n_rows:
            self.s_per_row = max(self.s_per_row, outcome.times.busy_s / outcome.n_rows)

    def limit_s(self, i: int) -> float:
        per_row = max(self.s_per_row or self.DEFAULT_S_PER_ROW, self.expected_s_per_row)
        return self.floor_s + self.factor * self.rows[i] * per_row
