"""Predictors that misbehave on purpose, for the fault-injection tests.

They live in a module of their own (not a test file) so that spawned pool workers can import them by
name. A file's name says what goes wrong when it is processed:

- ``kill_always*``: the worker SIGKILLs itself, on every attempt;
- ``kill_once*``: the worker SIGKILLs itself on the first attempt only;
- ``raise_always*`` / ``raise_once*``: the same with an exception raised inside the file;
- ``nan_fold*``: the last fold's ONNX session returns NaN; ``nan_all*``: every fold's does;
- ``stop_always*``: the worker stops itself (SIGSTOP), as a hung worker would: it never returns;
- ``slow*``: the file takes 3 s longer than it should (a process killed meanwhile is caught mid-file).

"Only the first attempt" is remembered across processes by a ``<name>.tried`` marker file beside the
audio (not an audio extension, so the job never picks it up).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bird_infer.run.outcomes import FileResult, StageTimes
from bird_infer.run.predictor import FilePredictor


class NanSession:
    """Wraps a fold's runner; returns NaN in the shape of the real output."""

    def __init__(self, runner) -> None:
        self.runner = runner

    def __call__(self, name_in, x):
        return np.full_like(self.runner(name_in, x), np.nan)


class FaultyPredictor(FilePredictor):
    def predict_file(self, path: Path, n_folds: int | None = None) -> FileResult:
        name = path.name
        marker = path.with_name(name + ".tried")
        first = not marker.exists()
        if name.startswith(("kill_", "raise_")):
            marker.touch()
        if name.startswith("kill_always") or (name.startswith("kill_once") and first):
            os.kill(os.getpid(), signal.SIGKILL)
        if name.startswith("stop_always"):
            os.kill(os.getpid(), signal.SIGSTOP)
        if name.startswith("slow"):
            time.sleep(3.0)
        if name.startswith("raise_always") or (name.startswith("raise_once") and first):
            raise RuntimeError(f"injected fault in {name}")
        if name.startswith("nan"):
            sessions = self.ensemble.members[-1].sessions
            real = list(sessions)
            bad = range(len(real)) if name.startswith("nan_all") else [len(real) - 1]
            for k in bad:
                sessions[k] = NanSession(real[k])
            try:
                return super().predict_file(path, n_folds)
            finally:
                sessions[:] = real
        return super().predict_file(path, n_folds)


class SlowPredictor(FilePredictor):
    """Real predictions, but each file costs 0.02 s per chunk + 0.1 s per chunk per fold (sleeping).

    Makes the deadline guard's decisions visible with tiny models, whatever the machine's speed.
    """

    overhead_s_per_chunk = 0.02
    model_s_per_chunk_fold = 0.1

    def predict_file(self, path: Path, n_folds: int | None = None) -> FileResult:
        r = super().predict_file(path, n_folds)
        extra_front = self.overhead_s_per_chunk * r.n_chunks
        extra_model = self.model_s_per_chunk_fold * r.n_chunks * r.n_folds
        time.sleep(extra_front + extra_model)
        t = r.times
        return replace(r, times=StageTimes(t.decode_s, t.frontend_s + extra_front, t.model_s + extra_model))


class CountingPredictor(FilePredictor):
    """Real predictions; each file predicted is appended to the file named by ``BIRD_INFER_COUNT_LOG`` and
    then takes ``BIRD_INFER_COUNT_SLEEP`` seconds more (default 0), so that a run can be killed mid-way."""

    def predict_file(self, path: Path, n_folds: int | None = None) -> FileResult:
        r = super().predict_file(path, n_folds)
        with open(os.environ["BIRD_INFER_COUNT_LOG"], "a", encoding="utf-8") as f:
            f.write(path.name + "\n")
        time.sleep(float(os.environ.get("BIRD_INFER_COUNT_SLEEP", "0")))
        return r


class StallingPredictor(FilePredictor):
    """Each decoded block takes ``block_s`` (sleeping); a file named ``stall_*`` stops its worker (SIGSTOP) after
    its second block: a worker that was beating, then went silent."""

    block_s = 0.5

    def _beat(self) -> None:
        time.sleep(self.block_s)
        super()._beat()
        self.blocks = getattr(self, "blocks", 0) + 1
        if self.current.startswith("stall_") and self.blocks >= 2:
            os.kill(os.getpid(), signal.SIGSTOP)

    def predict_part(self, path: Path, n_folds=None, start: int = 0, end=None):
        self.current, self.blocks = path.name, 0
        return super().predict_part(path, n_folds, start, end)


class StopOnePredictor(FilePredictor):
    """Real predictions; the first worker to start (by a marker in ``BIRD_INFER_STOP_DIR``) writes its pid to
    ``stopped.pid`` there and stops itself (SIGSTOP) before it takes any task, as ``BIRD_INFER_STOP_MODE`` says:

    - ``starting``: in its start-up (its initializer never ends);
    - ``holding``: idle, holding the pool's task queue, as a worker waiting for work does (the others then cannot
      take a task: the queue's read lock is taken from a thread, and the process stopped with it held).
    Every worker's files then take ``BIRD_INFER_STOP_SLEEP`` seconds more (default 0.3)."""

    def __init__(self, manifest, options) -> None:
        super().__init__(manifest, options)
        folder = Path(os.environ["BIRD_INFER_STOP_DIR"])
        try:
            fd = os.open(folder / "designated", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        (folder / "stopped.pid").write_text(str(os.getpid()))
        if os.environ["BIRD_INFER_STOP_MODE"] == "starting":
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        import gc
        import threading
        from multiprocessing.queues import Queue

        queues = [q for q in gc.get_objects() if isinstance(q, Queue)]

        def hold() -> None:
            for q in queues:
                q._rlock.acquire()  # the lock a worker holds while it waits for a task
            os.kill(os.getpid(), signal.SIGSTOP)

        threading.Thread(target=hold, daemon=True).start()
        time.sleep(0.5)  # the thread has the lock (or waits for it) before this worker can take a task

    def predict_part(self, path: Path, n_folds=None, start: int = 0, end=None):
        r = super().predict_part(path, n_folds, start, end)
        time.sleep(float(os.environ.get("BIRD_INFER_STOP_SLEEP", "0.3")))
        return r
