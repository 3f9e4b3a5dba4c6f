"""A pool worker process: its life tied to the parent's, its predictor built once by the initializer, then one
file (or segment) per task."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.text import describe_exception
from bird_infer.run.heartbeat import Heartbeats, WorkerBeat
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileFailure
from bird_infer.run.predictor import FilePredictor, make_predictor, run_segment

# One predictor per worker process, built by the pool initializer and only read afterwards.
_WORKER_PREDICTOR: FilePredictor | None = None
_WORKER_BEAT: WorkerBeat | None = None
_WORKER_ERROR: str | None = None
"""Why this worker could not build its predictor (a model file changed since the run began, memory): every task
it gets fails with this reason, instead of the pool breaking with none."""


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process end when its parent does (SIGTERM, SIGKILL, a crash), and leave Ctrl-C to
    the parent: a terminal's SIGINT reaches the whole process group, and the parent decides what stops.

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``). Elsewhere a daemon
    thread watches the parent's pid.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl: fall through to the watchdog
            pass
        else:
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
            return

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def init_worker(
    manifest: Manifest,
    options: RunOptions | None,
    parent_pid: int | None = None,
    beats: Heartbeats | None = None,
    options_from: Any = None,
) -> None:
    """Pool initializer: tie this worker's life to its parent's, then build its sessions once; with ``beats``,
    beat after every decoded block. ``options_from``: a queue the run's options come from, when the worker was
    started before they were settled (:class:`bird_infer.run.pool.EarlyPool`)."""
    global _WORKER_PREDICTOR, _WORKER_BEAT, _WORKER_ERROR
    if parent_pid is not None:
        die_with_parent(parent_pid)
    if beats is not None:  # claimed first: a worker that stalls in its start-up is seen from its spawn
        _WORKER_BEAT = WorkerBeat(beats)
    if options_from is not None:
        options = options_from.get()
    try:
        _WORKER_PREDICTOR = make_predictor(manifest, options)
    except Exception as e:  # reported with each task (see _WORKER_ERROR)
        _WORKER_ERROR = f"the worker could not load the models: {describe_exception(e)}"
    if _WORKER_BEAT is not None:
        if _WORKER_PREDICTOR is not None:
            _WORKER_PREDICTOR.on_block = _WORKER_BEAT.block
        _WORKER_BEAT.ready()


def predict_in_worker(path: Path, n_folds: int | None, start: int = 0, end: int | None = None, task: int = -1):
    """The pool task: one file, or a segment of one, with this worker's predictor (``task``: its index, for the
    heartbeat)."""
    if _WORKER_ERROR is not None:
        return FileFailure(path, _WORKER_ERROR)
    if _WORKER_PREDICTOR is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("worker used before its initializer ran")
    if _WORKER_BEAT is not None:
        _WORKER_BEAT.start(task)
    try:
        return run_segment(_WORKER_PREDICTOR, path, n_folds, start, end)
    finally:
        if _WORKER_BEAT is not None:
            _WORKER_BEAT.done()
