"""Hand files to worker processes; survive files that raise, workers that die, and the clock.

- Files are submitted one per worker (not all at once), so that the fold count of each can be chosen
  by the deadline guard when it starts, a dead pool loses little, and a file's time in flight is its
  running time: a file far past its expected time is taken for a hung worker (SIGSTOP, a deadlock),
  the workers are killed and it is handled like a dead worker.
- A file whose processing raised is retried once (``RunOptions.max_attempts``), then reported.
- A worker that dies (SIGKILL, the OOM killer, a segfault in a native library) breaks the whole
  ``ProcessPoolExecutor``: every file then in flight becomes a *suspect*. A new pool is started and
  suspects run **one at a time**, so that a death is pinned on the file that caused it: that file
  is charged the attempt (and retried once, alone), the innocent ones finish normally.
- At the deadline's hard stop the workers are killed and what is unfinished is reported.
- Workers die with the parent (SIGTERM, SIGKILL) and ignore Ctrl-C, which the parent handles: it kills
  them at once, and a second Ctrl-C during that clean-up ends the process immediately.

Every file ends as a FileResult or a FileFailure; nothing deadlocks and nothing is silently dropped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from bird_infer.deadline import DeadlineGuard
from bird_infer.ensemble import NonFiniteOutputError
from bird_infer.manifest import Manifest
from bird_infer.pipeline import (
    FileFailure,
    FileResult,
    RunOptions,
    init_worker,
    predict_in_worker,
    resolve_workers,
    run_segment,
)
from bird_infer.segments import Segment, assemble, plan_segments

log = logging.getLogger(__name__)

Outcome = FileResult | FileFailure

WORKER_DIED = (
    "the worker process died while this file was being processed (killed by a signal, by the "
    "out-of-memory killer, or by a crash in a native library)"
)
WORKER_HUNG = "the worker stopped responding while this file was being processed"
TIME_LIMIT = "not finished before the time limit's hard stop"


class _Run:
    """The state of one scheduling run, owned by the parent process."""

    def __init__(
        self,
        paths: list[Path],
        options: RunOptions,
        on_result: Callable[[int, Outcome], None] | None,
        guard: DeadlineGuard | None,
        segments: list[Segment] | None = None,
    ) -> None:
        self.paths = paths
        """Each task's file (a task is a file, or a segment of one)."""
        self.options = options
        self.on_result = on_result
        self.guard = guard
        self.segments = segments or [Segment(i) for i in range(len(paths))]
        self.file_folds: dict[int, int | None] = {}
        self.attempts = [0] * len(paths)
        self.outcomes: dict[int, Outcome] = {}
        self.queue: deque[int] = deque(range(len(paths)))
        self.suspects: deque[int] = deque()

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
        if self.on_result:
            self.on_result(i, outcome)

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

    def worker_hung(self, i: int, seconds: float) -> None:
        """File ``i`` ran far past its expected time: it is charged the attempt, like a death alone."""
        if self.attempts[i] < self.options.max_attempts:
            self.suspects.append(i)
        else:
            self.finish(i, FileFailure(self.paths[i], f"{WORKER_HUNG} (no result after {seconds:.0f} s)"))

    def next_index(self) -> int | None:
        if self.suspects:
            return self.suspects.popleft()
        return self.queue.popleft() if self.queue else None

    def stop_unfinished(self, in_flight: Sequence[int]) -> None:
        for i in [*in_flight, *self.suspects, *self.queue]:
            if i not in self.outcomes:
                self.finish(i, FileFailure(self.paths[i], TIME_LIMIT))
        self.suspects.clear()
        self.queue.clear()


def _run_in_process(run: _Run, manifest: Manifest) -> None:
    predictor = run.options.make_predictor(manifest)
    while (i := run.next_index()) is not None:
        if run.must_stop():
            run.stop_unfinished([i])
            return
        run.attempts[i] += 1
        run.handle(i, run_segment(predictor, *run.task_args(i)))


def _new_pool(workers: int, manifest: Manifest, options: RunOptions) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context("spawn")  # no inherited threads or sessions: safe on every OS
    return ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=init_worker, initargs=(manifest, options, os.getpid())
    )


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now, running tasks included (shutdown alone would wait for them)."""
    # Python 3.14 has terminate_workers(); before it, the process table is only reachable privately.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        p.kill()
    for p in processes:
        p.join(timeout=5)
    pool.shutdown(wait=False, cancel_futures=True)


class _Timeouts:
    """When a running file is taken for a hung worker: ``floor + factor x rows x`` the slowest seconds per
    row measured so far (a stopped or deadlocked worker never returns, and without a time limit the run
    would wait for ever)."""

    DEFAULT_S_PER_ROW = 0.5

    def __init__(self, options: RunOptions, rows: Sequence[int]) -> None:
        self.floor_s = options.timeout_floor_s
        self.factor = options.timeout_factor
        self.rows = rows
        self.s_per_row = 0.0

    def record(self, outcome: Outcome) -> None:
        if isinstance(outcome, FileResult) and outcome.n_rows:
            self.s_per_row = max(self.s_per_row, outcome.times.busy_s / outcome.n_rows)

    def limit_s(self, i: int) -> float:
        per_row = self.s_per_row or self.DEFAULT_S_PER_ROW
        return self.floor_s + self.factor * self.rows[i] * per_row


def _run_in_pool(run: _Run, manifest: Manifest, workers: int, rows: Sequence[int]) -> None:
    pool = _new_pool(workers, manifest, run.options)
    timeouts = _Timeouts(run.options, rows)
    in_flight: dict[Future[Outcome], tuple[int, float]] = {}  # future -> (file index, submitted at)
    try:
        while True:
            if run.must_stop():
                run.stop_unfinished([i for i, _ in in_flight.values()])
                _kill_pool(pool)
                return
            # At most one file per worker, so that a file's time in flight is its running time (the hang
            # timeout), and suspects run alone, so that a death among them has one culprit.
            broken = False
            suspect_mode = bool(run.suspects)
            cap = 1 if suspect_mode else workers
            while not broken and len(in_flight) < cap and (i := run.next_index()) is not None:
                run.attempts[i] += 1
                try:
                    fut = pool.submit(predict_in_worker, *run.task_args(i))
                    in_flight[fut] = (i, time.monotonic())
                except BrokenProcessPool:  # a worker died since the last look: this file never started
                    run.attempts[i] -= 1
                    (run.suspects if suspect_mode else run.queue).appendleft(i)  # back where it came from
                    broken = True
            if not in_flight and not broken:
                return
            hung: int | None = None
            alone = len(in_flight) == 1
            if not broken:
                now = time.monotonic()
                deadlines = [t0 + timeouts.limit_s(i) for i, t0 in in_flight.values()]
                timeout = max(0.0, min(deadlines) - now) + 0.01
                if run.guard:
                    timeout = min(timeout, run.guard.seconds_to_stop(run.guard.elapsed_s()) + 0.01)
                done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, _t0 = in_flight.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        run.worker_died(i, alone)
                        continue
                    timeouts.record(outcome)
                    run.handle(i, outcome)
                if not done:
                    now = time.monotonic()
                    late = [(fut, i, t0) for fut, (i, t0) in in_flight.items() if now - t0 > timeouts.limit_s(i)]
                    if late:
                        fut, hung, t0 = late[0]
                        del in_flight[fut]
                        log.warning(
                            "%s: no result after %.0f s: the worker is taken for hung", run.paths[hung], now - t0
                        )
                        run.worker_hung(hung, now - t0)
                        broken = True
            if broken:
                # Every other file in flight went down with the pool, running or queued.
                for i, _t0 in in_flight.values():
                    run.worker_died(i, alone=False)
                in_flight.clear()
                log.warning(
                    "a worker process died or hung; starting a new pool, %d file(s) to retry", len(run.suspects)
                )
                _kill_pool(pool)
                pool = _new_pool(workers, manifest, run.options)
    except BaseException:
        # Ctrl-C (or anything unexpected): kill the workers now rather than wait for their files, and make
        # a second Ctrl-C during the clean-up end the process at once.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        _kill_pool(pool)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def plan_tasks(options: RunOptions, rows: Sequence[int]) -> list[Segment]:
    """The tasks for files of ``rows`` rows: one per file, or segments of long files when there are fewer files
    than cores (:func:`bird_infer.segments.plan_segments`)."""
    if options.split_files and not options.in_process:
        return plan_segments(rows, resolve_workers(options.workers, 10**6), options.block_chunks)
    return [Segment(i) for i in range(len(rows))]


class _Assembler:
    """Turns task outcomes into file outcomes: a whole file's is its own; a split file's parts are joined
    (:func:`bird_infer.segments.assemble`) once all have settled, or the file fails with its first failed part."""

    def __init__(
        self,
        files: list[Path],
        segments: list[Segment],
        manifest: Manifest,
        on_result: Callable[[Outcome], None] | None,
    ) -> None:
        self.files = files
        self.segments = segments
        self.manifest = manifest
        self.on_result = on_result
        self.pending = Counter(s.file for s in segments)
        self.parts: dict[int, list[Outcome]] = {}
        self.outcomes: dict[int, Outcome] = {}

    def on_task(self, i: int, outcome: Outcome) -> None:
        f = self.segments[i].file
        self.parts.setdefault(f, []).append(outcome)
        self.pending[f] -= 1
        if self.pending[f]:
            return
        parts = self.parts.pop(f)
        if len(parts) == 1 and self.segments[i].whole:
            result = parts[0]
        else:
            result = self._join(f, parts)
        self.outcomes[f] = result
        if self.on_result:
            self.on_result(result)

    def _join(self, f: int, parts: list[Outcome]) -> Outcome:
        path = self.files[f]
        attempts = max(p.attempts for p in parts)
        failed = [p for p in parts if isinstance(p, FileFailure)]
        if failed:
            return FileFailure(path, f"{failed[0].reason} (in rows of a segment)", attempts)
        try:
            joined = assemble(self.manifest, path, parts, parts[0].n_folds)
        except NonFiniteOutputError as e:
            return FileFailure(path, f"NonFiniteOutputError: {e}", attempts)
        return replace(joined, attempts=attempts)


def predict_files(
    paths: Sequence[Path],
    manifest: Manifest,
    options: RunOptions | None = None,
    on_result: Callable[[Outcome], None] | None = None,
    guard: DeadlineGuard | None = None,
    rows: Sequence[int] | None = None,
) -> list[Outcome]:
    """Predict every file: one FileResult or FileFailure per path, in the order of ``paths``.

    ``on_result`` sees each file's outcome as it is settled; ``guard`` (optional) applies a time limit;
    ``rows`` (each file's expected rows, default 1) scales each file's hang timeout and, with fewer files than
    cores, decides which files are split across workers (:mod:`bird_infer.segments`).
    """
    options = options or RunOptions()
    files = [Path(p) for p in paths]
    if not files:
        return []
    file_rows = list(rows) if rows is not None else [1] * len(files)
    segments = plan_tasks(options, file_rows)
    if len(segments) > len(files):
        log.info("%d file(s) split into %d segments, one per core", len(files), len(segments))
    assembler = _Assembler(files, segments, manifest, on_result)
    run = _Run([files[s.file] for s in segments], options, assembler.on_task, guard, segments)
    task_rows = [(s.end if s.end is not None else file_rows[s.file]) - s.start for s in segments]
    if options.in_process:
        _run_in_process(run, manifest)
    elif options.engine == "dask":
        from bird_infer.dask_engine import run_on_dask

        run_on_dask(run, manifest, options.scheduler, resolve_workers(options.workers, 10**6))
    else:
        workers = resolve_workers(options.workers, len(segments))
        log.info("starting %d worker processes", workers)
        _run_in_pool(run, manifest, workers, [max(1, r) for r in task_rows])
    return [assembler.outcomes[i] for i in range(len(files))]
