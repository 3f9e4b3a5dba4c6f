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
- A worker that stalls while idle, or in its start-up, is found by its heartbeat too
  (:mod:`bird_infer.run.heartbeat`): when tasks wait that no worker takes, the pool is replaced and the tasks
  handed out again, nobody charged.
- However the run ends (its last file, an error, the hard stop), the run itself ends its workers: SIGTERM, then
  SIGKILL after :data:`END_GRACE_S`. Nothing is left to the interpreter's exit, which would wait for ever on a
  stopped worker.

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
END_GRACE_S = 2.0
"""Seconds the workers get to end after SIGTERM when the run ends, before SIGKILL."""


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


def _new_pool(
    workers: int, manifest: Manifest, options: RunOptions | None, options_from: object = None
) -> tuple[ProcessPoolExecutor, Heartbeats]:
    """A pool whose workers build their predictors from ``options``, or from the options each reads from the queue
    ``options_from`` (an :class:`EarlyPool`'s)."""
    ctx = multiprocessing.get_context("spawn")  # no inherited threads or sessions: safe on every OS
    beats = Heartbeats(ctx, workers)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=ctx,
        initializer=init_worker,
        initargs=(manifest, options, os.getpid(), beats, options_from),
    )
    return pool, beats


EARLY_POOL_TTL_S = 120.0
"""An early pool nobody took within this long ends itself (a job that stopped between its plan and its files)."""


class EarlyPool:
    """Worker processes started before the run's options are settled: they spawn and import while the parent still
    ranks the modes the folds may run in (about as long as a worker's start), then wait for the options, which
    :meth:`take` hands them. Saves the workers' spawn and imports from the start-up to the first chunk."""

    def __init__(self, workers: int, manifest: Manifest) -> None:
        self.workers = workers
        self._options = multiprocessing.get_context("spawn").SimpleQueue()
        self._pool, self._beats = _new_pool(workers, manifest, None, self._options)
        for _ in range(workers):  # a spawn context starts processes on demand: one task each starts them now
            self._pool.submit(os.getpid)
        self._lock = threading.Lock()
        self._taken = self._ended = False
        self._timer = threading.Timer(EARLY_POOL_TTL_S, self.close)
        self._timer.daemon = True
        self._timer.start()

    def take(self, workers: int, options: RunOptions) -> tuple[ProcessPoolExecutor, Heartbeats] | None:
        """The pool, its workers handed ``options``; None (and the pool ended) when it was taken or closed before,
        or has another number of workers than ``workers``."""
        with self._lock:
            if self._taken:
                return None
            self._taken = True
            self._timer.cancel()
        if workers != self.workers:
            self._ended = True
            end_pool(self._pool, grace_s=0.0)
            return None
        for _ in range(workers):
            self._options.put(options)
        return self._pool, self._beats

    def started(self) -> bool:
        """A worker has built its predictor (or failed to), or the pool was ended."""
        return self._ended or self._beats.startup_s() is not None

    def close(self) -> None:
        """End the pool unless it was taken (then its run ends it)."""
        with self._lock:
            if self._taken:
                return
            self._taken = self._ended = True
            self._timer.cancel()
        end_pool(self._pool, grace_s=0.0)


def _stall_bound(beats: Heartbeats, options: RunOptions, restarts: int = 0) -> float:
    """Silence taken for a stall: ``max(stall_floor_s, stall_factor x`` the slowest block seen), doubled for each
    time this run already replaced a pool whose queue was held (a bound that fired wrongly never loops)."""
    learned = options.stall_factor * options.expected_row_s * options.block_chunks  # a working slow model's block
    return max(options.stall_floor_s, learned, options.stall_factor * beats.slowest_block_s()) * 2**restarts


def _stalled(
    in_flight: dict[Future[Outcome], tuple[int, float]], beats: Heartbeats, bound: float, now: float
) -> tuple[Future[Outcome], int, float] | None:
    """A task whose worker has been silent longer than ``bound``: its future, index and seconds of silence; None
    when every worker running a task is beating."""
    for fut, (i, _t0) in in_flight.items():
        last = beats.last_beat(i)
        if last is not None and now - last > bound:
            return fut, i, now - last
    return None


def _queue_held(
    in_flight: dict[Future[Outcome], tuple[int, float]], beats: Heartbeats, bound: float, now: float
) -> float | None:
    """Seconds a task has waited untaken while a started worker sat idle, both longer than ``bound``: a worker that
    stalled while waiting for work holds the pool's queue (its read lock), so no other worker can take a task.
    None otherwise."""
    waiting = [now - t0 for i, t0 in in_flight.values() if beats.last_beat(i) is None]
    idle = [now - t for t in beats.idle_since()]
    if waiting and idle and min(max(waiting), max(idle)) > bound:
        return max(waiting)
    return None


def _note_slow_starts(beats: Heartbeats, bound: float, named: set[int]) -> None:
    """Name once in the log each worker whose start-up has lasted ``bound`` past the slowest finished one (the
    others take its files; the run ends it at the end)."""
    done = beats.startup_s()
    if done is None:
        return
    for pid, seconds in beats.starting():
        if seconds > done + bound and pid not in named:
            named.add(pid)
            log.warning(
                "worker %s has not finished its start-up after %.0f s (the others took %.0f s): the other workers "
                "take its files",
                pid or "(not yet started)",
                seconds,
                done,
            )


def _pool_processes(pool: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    # Python 3.14 has terminate_workers(); before it, the process table is only reachable privately.
    return list((getattr(pool, "_processes", None) or {}).values())


def end_pool(pool: ProcessPoolExecutor, grace_s: float = END_GRACE_S) -> None:
    """End a pool: nothing queued is started, every worker gets SIGTERM, and SIGKILL after ``grace_s`` (a stopped
    worker never acts on SIGTERM, and would keep the interpreter's exit waiting on it). ``grace_s=0`` stops it now,
    running tasks included (a dead or hung worker's pool, the hard stop, Ctrl-C)."""
    processes = _pool_processes(pool)
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    t_end = time.monotonic() + grace_s
    for p in processes:
        p.join(timeout=max(0.0, t_end - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.kill()
    for p in processes:
        p.join(timeout=5)


def run_in_pool(
    book: TaskBook, manifest: Manifest, workers: int, rows: Sequence[int], early: EarlyPool | None = None
) -> Iterator[tuple[int, Outcome]]:
    """Every task on a pool of ``workers`` processes (``rows``: each task's expected rows, for its hang timeout);
    yields (task index, outcome) as each settles. ``early``: workers already started, used when their number fits."""
    started = early.take(workers, book.options) if early is not None else None
    pool, beats = started or _new_pool(workers, manifest, book.options)
    timeouts = HangTimeouts(book.options, rows)
    in_flight: dict[Future[Outcome], tuple[int, float]] = {}  # future -> (file index, submitted at)
    restarts = 0  # pools replaced because an idle worker held the queue
    slow_starts: set[int] = set()
    try:
        while True:
            if book.must_stop():
                book.stop_unfinished([i for i, _ in in_flight.values()])
                end_pool(pool, grace_s=0.0)
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
                    bound = _stall_bound(beats, book.options, restarts)
                    stall = _stalled(in_flight, beats, bound, now)
                    held = _queue_held(in_flight, beats, bound, now) if stall is None else None
                    _note_slow_starts(beats, bound, slow_starts)
                    if held is not None:
                        log.warning(
                            "%d file(s) waited %.0f s while a worker sat idle: a worker stalled while waiting for "
                            "work; starting a new pool, nobody charged",
                            len(in_flight),
                            held,
                        )
                        for i, _t0 in in_flight.values():
                            book.requeue(i)
                        in_flight.clear()
                        restarts += 1
                        end_pool(pool, grace_s=0.0)
                        pool, beats = _new_pool(workers, manifest, book.options)
                    elif stall is not None:
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
                end_pool(pool, grace_s=0.0)
                pool, beats = _new_pool(workers, manifest, book.options)
            yield from book.drain()
    except BaseException as e:
        # Ctrl-C, the consumer stopping (GeneratorExit), anything unexpected: kill the workers now rather than
        # wait for their files. After Ctrl-C, a second Ctrl-C during the clean-up ends the process at once.
        if isinstance(e, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        end_pool(pool, grace_s=0.0)
        raise
    finally:
        end_pool(pool)
