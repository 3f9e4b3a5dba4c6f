"""``--engine dask``: the same files, the same predictor, on a Dask cluster (``dask.distributed``).

Files are tasks. Each Dask worker builds its predictor (sessions, front-ends) once, in a worker plugin,
from the manifest and options it is given, and reuses it for every file it gets. At most two files per
worker are in flight, so the deadline guard can still choose each file's folds when it starts. Results
come back as files finish and go through the same bookkeeping as the process pool
(:class:`bird_infer.run.book.TaskBook`): a file that raises is retried once, then gets fallback rows; a worker
that dies mid-file (killed, out of memory) costs no file, since Dask reschedules its task elsewhere, and a
file that kills workers again and again ends as a fallback with the reason; the hard stop cancels what
is left.

With no scheduler address a ``LocalCluster`` with one single-threaded worker process per core is started
and closed here; with one (``tcp://host:8786``) the run uses that cluster, whose workers must read the
models folder and the audio at the same paths. Only this module imports dask, and only when asked.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import DaskSchedulerError
from bird_infer.contract.extras import import_extra
from bird_infer.contract.text import describe_exception
from bird_infer.run.book import WORKER_DIED, TaskBook
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileFailure, Outcome
from bird_infer.run.predictor import make_predictor, run_segment

log = logging.getLogger(__name__)

PLUGIN_NAME = "bird-infer-predictor"
ALLOWED_FAILURES = 2
"""Worker deaths a file may cause on a cluster started here before it is given up (Dask's KilledWorker)."""
CONNECT_S = 10
"""Seconds to reach a scheduler and complete Dask's handshake (a wrong port, an HTTP dashboard, a closed port)
before ``bird-infer: error:``."""
POLL_S = 1.0
"""How often the client looks at its scheduler while files are in flight."""
LOST = "the Dask scheduler was lost before this file finished"


def _import_distributed():
    """The ``distributed`` module, imported only when the dask engine is asked for."""
    return import_extra("distributed", "--engine dask")


def _plugin_class():
    distributed = _import_distributed()

    class PredictorPlugin(distributed.WorkerPlugin):
        """Builds the worker's predictor once, when the worker starts (and again if it is restarted)."""

        name = PLUGIN_NAME

        def __init__(self, manifest: Manifest, options: RunOptions) -> None:
            self.manifest = manifest
            self.options = options
            self.predictor = None

        def setup(self, worker) -> None:
            try:
                self.predictor = make_predictor(self.manifest, self.options)
                self.error = None
            except Exception as e:  # reported with each task: this worker cannot predict
                self.predictor = None
                self.error = f"the Dask worker could not load the models: {describe_exception(e)}"

    return PredictorPlugin


def predict_task(path: str, n_folds: int | None, start: int = 0, end: int | None = None):
    """A Dask task: one file, or a segment of one, with this worker's predictor."""
    plugin = _import_distributed().get_worker().plugins[PLUGIN_NAME]
    if plugin.predictor is None:
        return FileFailure(Path(path), plugin.error)
    return run_segment(plugin.predictor, Path(path), n_folds, start, end)


def run_on_dask(book: TaskBook, manifest: Manifest, scheduler: str | None, cores: int) -> Iterator[tuple[int, Outcome]]:
    """Drive ``book`` to the end on a Dask cluster; yields (task index, outcome) as each settles."""
    dask = import_extra("dask", "--engine dask")
    distributed = _import_distributed()
    cluster = None
    settings = {
        "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
        "distributed.comm.timeouts.connect": f"{CONNECT_S}s",
    }
    with dask.config.set(settings):
        if scheduler is None:
            cluster = distributed.LocalCluster(
                n_workers=cores, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            client = distributed.Client(cluster)
        else:
            client = _connect(distributed, scheduler)
    try:
        client.register_plugin(_plugin_class()(manifest, book.options))
        n_workers = max(1, len(client.scheduler_info()["workers"]))
        log.info("dask: %d workers at %s", n_workers, client.scheduler.address)
        yield from _drive(book, client, distributed.wait, 2 * n_workers)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _connect(distributed, address: str):
    """A client of the scheduler at ``address``, or DaskSchedulerError within about :data:`CONNECT_S` seconds."""
    hint = "the scheduler's address, e.g. tcp://10.0.0.5:8786 (8787 is its dashboard, which speaks HTTP)"
    if not isinstance(address, str) or ("://" not in address and ":" not in address):
        raise DaskSchedulerError(f"--scheduler {address!r} is not an address: give {hint}")
    result: dict[str, object] = {}

    def connect() -> None:  # in a thread: a port that accepts but never answers (HTTP) would block for ever
        try:
            result["client"] = distributed.Client(address, timeout=CONNECT_S)
        except Exception as e:  # OSError, TimeoutError, ValueError, a protocol error: no scheduler here
            result["error"] = e

    thread = threading.Thread(target=connect, name="dask-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_S + 5)
    if "client" in result:
        return result["client"]
    why = describe_exception(result["error"]) if "error" in result else "no answer to Dask's handshake"  # type: ignore[arg-type]
    raise DaskSchedulerError(f"no Dask scheduler answered at {address} within {CONNECT_S} s ({why}): give {hint}")


def _scheduler_lost(client) -> bool:
    return getattr(client, "status", "running") not in ("running", "connecting", "newly-created")


def _drive(run: TaskBook, client, wait, cap: int) -> Iterator[tuple[int, Outcome]]:
    in_flight: dict = {}  # future -> file index
    while True:
        if run.must_stop():
            for fut in in_flight:
                fut.cancel()
            run.stop_unfinished(list(in_flight.values()))
            yield from run.drain()
            return
        while len(in_flight) < cap and (i := run.next_index()) is not None:
            run.attempts[i] += 1
            path, n_folds, start, end = run.task_args(i)
            # absolute: a worker resolves a relative path against its own working directory
            fut = client.submit(predict_task, os.path.abspath(path), n_folds, start, end, pure=False)
            in_flight[fut] = i
        if not in_flight:
            yield from run.drain()
            return
        timeout = POLL_S
        if run.guard:
            timeout = min(timeout, run.guard.seconds_to_stop(run.guard.elapsed_s()) + 0.01)
        try:
            done, _ = wait(list(in_flight), timeout=timeout, return_when="FIRST_COMPLETED")
        except Exception:  # TimeoutError, or the scheduler gone
            done = set()
        if not done and _scheduler_lost(client):
            log.warning("%s: what finished is kept, the rest is reported", LOST)
            run.stop_unfinished(list(in_flight.values()), LOST)
            yield from run.drain()
            return
        for fut in done:
            i = in_flight.pop(fut)
            try:
                outcome = fut.result()
            except Exception as e:  # KilledWorker (it killed workers again and again), or a lost task
                if _scheduler_lost(client) or type(e).__name__ in ("CancelledError", "CommClosedError"):
                    run.stop_unfinished([i, *in_flight.values()], LOST)
                    yield from run.drain()
                    return
                reason = describe_exception(e)
                if type(e).__name__ == "KilledWorker":
                    reason = f"{WORKER_DIED} (on every worker Dask gave it to)"
                outcome = FileFailure(run.paths[i], reason)
                run.attempts[i] = max(run.attempts[i], run.options.max_attempts)
            run.handle(i, outcome)
        yield from run.drain()
