"""The process-pool engine: hand files to worker processes; survive files that raise, workers that die, and the clock.

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
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from bird_infer.contract.bundle import Manifest
from bird_infer.run.book import HangTimeouts, TaskBook
from bird_infer.run.heartbeat import Heartbeats
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import Outcome
from bird_infer.run.predictor import make_predictor, run_segment
from bird_infer.run.worker import init_worker, predict_in_worker

log = logging.getLogger(__name__)

HEARTBEAT_POLL_S = 1.0
"""How often the parent looks at the workers' heartbeats while files are in flight."""


def run_in_process(book: TaskBook, manifest: Manifest) -> Iterator[tuple[int, Outcome]]:
    """Every task in this process, one after another (no pool: a crash in a native library ends the run)."""
    predictor = make_predictor(manifest, book.options)
    while (i := book.next_index()) is not None:
        if book.must_stop():
            book.stop_unfinished([i])
            break
        book.attempts[i] += 1
        book.handle(i, run_segment(predictor, *book.task_args(i)))
        yield from book.drain()
    yield from book.drain()


def _new_pool(workers: int, manifest: Manifest, options: RunOptions) -> tuple[ProcessPoolExecutor, Heartbeats]:
    ctx = multiprocessing.get_context("spawn")  # no inherited threads or sessions: safe on every OS
    beats = Heartbeats(ctx, workers)
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=init_worker, initargs=(manifest, options, os.getpid(), beats)
    )
    return pool, beats


def _stalled(
    in_flight: dict[Future[Outcome], tuple[int, float]], beats: Heartbeats, options: RunOptions, now: float
) -> tuple[Future[Outcome], int, float] | None:
    """A task whose worker has been silent longer than the stall bound (:mod:`bird_infer.run.heartbeat`): its
    future, index and seconds of silence; None when every worker is beating. Silence counts from the task's
    start in a worker: a pool still starting (spawning, building sessions) is left to the per-file timeout."""
    bound = max(options.stall_floor_s, options.stall_factor * beats.slowest_block_s())
    for fut, (i, _t0) in in_flight.items():
        last = beats.last_beat(i)
        if last is not None and now - last > bound:
            return fut, i, now - last
    return None


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now, running tasks included (shutdown alone would wait for them)."""
    # Python 3.14 has terminate_workers(); before it, the process table is only reachable privately.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        p.kill()
    for p in processes:
        p.join(timeout=5)
    pool.shutdown(wait=False, cancel_futures=True)


def run_in_pool(book: TaskBook, manifest: Manifest, workers: int, rows: Sequence[int]) -> Iterator[tuple[int, Outcome]]:
    """Every task on a pool of ``workers`` processes (``rows``: each task's expected rows, for its hang timeout);
    yields (task index, outcome) as each settles."""
    pool, beats = _new_pool(workers, manifest, book.options)
    timeouts = HangTimeouts(book.options, rows)
    in_flight: dict[Future[Outcome], tuple[int, float]] = {}  # future -> (file index, submitted at)
    try:
        while True:
            if book.must_stop():
                book.stop_unfinished([i for i, _ in in_flight.values()])
                _kill_pool(pool)
                yield from book.drain()
                return
            # At most one file per worker, so that a file's time in flight is its running time (the hang
            # timeout), and suspects run alone, so that a death among them has one culprit.
            broken = False
            suspect_mode = bool(book.suspects)
            cap = 1 if suspect_mode else workers
            while not broken and len(in_flight) < cap and (i := book.next_index()) is not None:
                book.attempts[i] += 1
                try:
                    fut = pool.submit(predict_in_worker, *book.task_args(i), task=i)
                    in_flight[fut] = (i, time.monotonic())
                except BrokenProcessPool:  # a worker died since the last look: this file never started
                    book.attempts[i] -= 1
                    (book.suspects if suspect_mode else book.queue).appendleft(i)  # back where it came from
                    broken = True
            if not in_flight and not broken:
                yield from book.drain()
                return
            hung: int | None = None
            alone = len(in_flight) == 1
            if not broken:
                now = time.monotonic()
                deadlines = [t0 + timeouts.limit_s(i) for i, t0 in in_flight.values()]
                timeout = min(max(0.0, min(deadlines) - now) + 0.01, HEARTBEAT_POLL_S)
                if book.guard:
                    timeout = min(timeout, book.guard.seconds_to_stop(book.guard.elapsed_s()) + 0.01)
                done, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, _t0 = in_flight.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        book.worker_died(i, alone)
                        continue
                    timeouts.record(outcome)
                    book.handle(i, outcome)
                if not done:
                    now = time.monotonic()
                    late = [(fut, i, t0) for fut, (i, t0) in in_flight.items() if now - t0 > timeouts.limit_s(i)]
                    stall = _stalled(in_flight, beats, book.options, now)
                    if stall is not None:
                        fut, hung, silent = stall
                        del in_flight[fut]
                        log.warning(
                            "%s: its worker has been silent for %.0f s: taken for hung", book.paths[hung], silent
                        )
                        book.worker_hung(hung, silent, "no progress")
                        broken = True
                    elif late:  # the last resort: a worker that beats but never finishes
                        fut, hung, t0 = late[0]
                        del in_flight[fut]
                        log.warning(
                            "%s: no result after %.0f s: the worker is taken for hung", book.paths[hung], now - t0
                        )
                        book.worker_hung(hung, now - t0)
                        broken = True
            if broken:
                # Every other file in flight went down with the pool, running or queued.
                for i, _t0 in in_flight.values():
                    book.worker_died(i, alone=False)
                in_flight.clear()
                log.warning(
                    "a worker process died or hung; starting a new pool, %d file(s) to retry", len(book.suspects)
                )
                _kill_pool(pool)
                pool, beats = _new_pool(workers, manifest, book.options)
            yield from book.drain()
    except BaseException as e:
        # Ctrl-C, the consumer stopping (GeneratorExit), anything unexpected: kill the workers now rather than
        # wait for their files. After Ctrl-C, a second Ctrl-C during the clean-up ends the process at once.
        if isinstance(e, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        _kill_pool(pool)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
