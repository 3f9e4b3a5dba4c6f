"""Hand files to worker processes; survive files that raise, workers that die, and the clock.

- Files are submitted a few at a time (not all at once), so that the fold count of each can be chosen
  by the deadline guard when it starts, and a dead pool loses little.
- A file whose processing raised is retried once (``RunOptions.max_attempts``), then reported.
- A worker that dies (SIGKILL, the OOM killer, a segfault in a native library) breaks the whole
  ``ProcessPoolExecutor``: every file then in flight becomes a *suspect*. A new pool is started and
  suspects run **one at a time**, so that a death is pinned on the file that caused it: that file
  is charged the attempt (and retried once, alone), the innocent ones finish normally.
- At the deadline's hard stop the workers are killed and what is unfinished is reported.

Every file ends as a FileResult or a FileFailure; nothing deadlocks and nothing is silently dropped.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from bird_infer.deadline import DeadlineGuard
from bird_infer.manifest import Manifest
from bird_infer.pipeline import (
    FileFailure,
    FileResult,
    RunOptions,
    init_worker,
    predict_in_worker,
    predict_or_fail,
    resolve_workers,
)

log = logging.getLogger(__name__)

Outcome = FileResult | FileFailure

WORKER_DIED = (
    "the worker process died while this file was being processed (killed by a signal, by the "
    "out-of-memory killer, or by a crash in a native library)"
)
TIME_LIMIT = "not finished before the time limit's hard stop"


class _Run:
    """The state of one scheduling run, owned by the parent process."""

    def __init__(
        self,
        paths: list[Path],
        options: RunOptions,
        on_result: Callable[[Outcome], None] | None,
        guard: DeadlineGuard | None,
    ) -> None:
        self.paths = paths
        self.options = options
        self.on_result = on_result
        self.guard = guard
        self.attempts = [0] * len(paths)
        self.outcomes: dict[int, Outcome] = {}
        self.queue: deque[int] = deque(range(len(paths)))
        self.suspects: deque[int] = deque()

    def folds_for_next(self) -> int | None:
        return self.guard.folds_for_next(self.guard.elapsed_s()) if self.guard else None

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
            self.on_result(outcome)

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
        run.handle(i, predict_or_fail(predictor, run.paths[i], run.folds_for_next()))


def _new_pool(workers: int, manifest: Manifest, options: RunOptions) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context("spawn")  # no inherited threads or sessions: safe on every OS
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(manifest, options))


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now, running tasks included (shutdown alone would wait for them)."""
    # Python 3.14 has terminate_workers(); before it, the process table is only reachable privately.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        p.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _run_in_pool(run: _Run, manifest: Manifest, workers: int) -> None:
    pool = _new_pool(workers, manifest, run.options)
    in_flight: dict[Future[Outcome], int] = {}
    try:
        while True:
            if run.must_stop():
                run.stop_unfinished(list(in_flight.values()))
                _kill_pool(pool)
                return
            # Suspects run alone, so that a death among them has one culprit; otherwise keep every
            # worker busy with one file queued behind it.
            broken = False
            suspect_mode = bool(run.suspects)
            cap = 1 if suspect_mode else 2 * workers
            while not broken and len(in_flight) < cap and (i := run.next_index()) is not None:
                run.attempts[i] += 1
                try:
                    in_flight[pool.submit(predict_in_worker, run.paths[i], run.folds_for_next())] = i
                except BrokenProcessPool:  # a worker died since the last look: this file never started
                    run.attempts[i] -= 1
                    (run.suspects if suspect_mode else run.queue).appendleft(i)  # back where it came from
                    broken = True
            if not in_flight and not broken:
                return
            if not broken:
                timeout = run.guard.seconds_to_stop(run.guard.elapsed_s()) + 0.01 if run.guard else None
                done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                alone = len(in_flight) == 1
                for fut in done:
                    i = in_flight.pop(fut)
                    try:
                        run.handle(i, fut.result())
                    except BrokenProcessPool:
                        broken = True
                        run.worker_died(i, alone)
            if broken:
                # Every other file in flight went down with the pool, running or queued.
                for i in in_flight.values():
                    run.worker_died(i, alone=False)
                in_flight.clear()
                log.warning("a worker process died; starting a new pool, %d file(s) to retry", len(run.suspects))
                pool.shutdown(wait=True, cancel_futures=True)
                pool = _new_pool(workers, manifest, run.options)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def predict_files(
    paths: Sequence[Path],
    manifest: Manifest,
    options: RunOptions | None = None,
    on_result: Callable[[Outcome], None] | None = None,
    guard: DeadlineGuard | None = None,
) -> list[Outcome]:
    """Predict every file: one FileResult or FileFailure per path, in the order of ``paths``.

    ``on_result`` sees each outcome as it is settled; ``guard`` (optional) applies a time limit.
    """
    options = options or RunOptions()
    run = _Run([Path(p) for p in paths], options, on_result, guard)
    if not run.paths:
        return []
    if options.in_process:
        _run_in_process(run, manifest)
    else:
        workers = resolve_workers(options.workers, len(run.paths))
        log.info("starting %d worker processes", workers)
        _run_in_pool(run, manifest, workers)
    return [run.outcomes[i] for i in range(len(run.paths))]
