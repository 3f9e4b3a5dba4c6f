"""Files in, outcomes out, as a stream: the one entry to every engine.

:func:`stream_files` plans the tasks (a long file split across workers when there are fewer files than cores,
:mod:`bird_infer.run.segments`), runs them on the engine the options name (in this process, the process pool of
:mod:`bird_infer.run.pool`, or Dask, :mod:`bird_infer.run.dask_engine`), joins split files' parts and yields
each file's :class:`~bird_infer.run.outcomes.FileResult` or :class:`~bird_infer.run.outcomes.FileFailure` as it
settles. ``predict`` and ``detect`` consume that stream in one loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import NonFiniteOutputError
from bird_infer.run.analyzer import join_analyses
from bird_infer.run.book import TaskBook
from bird_infer.run.deadline import DeadlineGuard
from bird_infer.run.options import RunOptions, aligned_blocks, keeps_member_rows
from bird_infer.run.outcomes import FileFailure, Outcome
from bird_infer.run.pool import EarlyPool, run_in_pool, run_in_process
from bird_infer.run.postprocess import PostProcessor
from bird_infer.run.segments import Segment, assemble, plan_tasks
from bird_infer.run.stages import file_stages

log = logging.getLogger(__name__)


class _Assembler:
    """Turns task outcomes into file outcomes: a whole file's is its own; a split file's parts are joined
    (:func:`bird_infer.run.segments.assemble`) once all have settled, or the file fails with its first failed
    part."""

    def __init__(self, files: list[Path], segments: list[Segment], manifest: Manifest, options: RunOptions) -> None:
        self.files = files
        self.segments = segments
        self.manifest = manifest
        self.keep_members = keeps_member_rows(manifest, options)
        self._post: PostProcessor | None = None
        self._stages = None
        self.pending = Counter(s.file for s in segments)
        self.parts: dict[int, list[Outcome]] = {}

    def add(self, i: int, outcome: Outcome) -> Outcome | None:
        """Task ``i`` settled: its file's outcome when that file is now complete, else None."""
        f = self.segments[i].file
        self.parts.setdefault(f, []).append(outcome)
        self.pending[f] -= 1
        if self.pending[f]:
            return None
        parts = self.parts.pop(f)
        if len(parts) == 1 and self.segments[i].whole:
            return parts[0]
        return self._join(f, parts)

    def _join(self, f: int, parts: list[Outcome]) -> Outcome:
        path = self.files[f]
        attempts = max(p.attempts for p in parts)
        failed = [p for p in parts if isinstance(p, FileFailure)]
        if failed:
            return FileFailure(path, f"{failed[0].reason} (in rows of a segment)", attempts)
        if parts[0].analysis is not None:  # type: ignore[union-attr]  # bird-infer analyze's parts: pieces
            return replace(join_analyses(path, parts), attempts=attempts)  # type: ignore[arg-type]
        try:
            if self._stages is None:
                self._stages = file_stages(self.manifest)
            joined = assemble(self.manifest, path, parts, parts[0].n_folds, self.post(), self._stages)  # type: ignore[arg-type]
        except NonFiniteOutputError as e:
            return FileFailure(path, f"NonFiniteOutputError: {e}", attempts)
        return replace(joined, attempts=attempts)

    def post(self) -> PostProcessor | None:
        """The parent's post-processor for split files (built at the first one; None when members are kept)."""
        if self._post is None and not self.keep_members:
            self._post = PostProcessor(self.manifest)
        return self._post


def stream_files(
    paths: Sequence[Path],
    manifest: Manifest,
    options: RunOptions | None = None,
    guard: DeadlineGuard | None = None,
    rows: Sequence[int] | None = None,
    early: EarlyPool | None = None,
) -> Iterator[tuple[int, Outcome]]:
    """Predict every file; yield (index in ``paths``, its FileResult or FileFailure) as each file settles.

    ``guard`` (optional) applies a time limit; ``rows`` (each file's expected rows, default 1) scales each file's
    hang timeout and, with fewer files than cores, decides which files are split across workers. Every file is
    yielded exactly once. Closing the stream early stops the workers. ``early``: worker processes already
    started (:class:`~bird_infer.run.pool.EarlyPool`), used by the pool engine when their number fits.
    """
    options = aligned_blocks(manifest, options or RunOptions())
    files = [Path(p) for p in paths]
    if not files:
        return
    file_rows = list(rows) if rows is not None else [1] * len(files)
    segments = plan_tasks(options, file_rows)
    if len(segments) > len(files):
        log.info("%d file(s) split into %d segments, one per core", len(files), len(segments))
    assembler = _Assembler(files, segments, manifest, options)
    book = TaskBook([files[s.file] for s in segments], options, guard, segments)
    task_rows = [(s.end if s.end is not None else file_rows[s.file]) - s.start for s in segments]
    workers = options.workers_for(len(segments))
    if options.in_process:
        tasks = run_in_process(book, manifest)
    elif options.engine == "dask":
        from bird_infer.run.dask_engine import run_on_dask  # deferred: only this engine imports dask

        tasks = run_on_dask(book, manifest, options.scheduler, options.workers_for(10**6))
    else:
        log.info("starting %d worker processes", workers)
        tasks = run_in_pool(book, manifest, workers, [max(1, r) for r in task_rows], early)
    for i, outcome in tasks:
        done = assembler.add(i, outcome)
        if done is not None:
            yield segments[i].file, done


def predict_files(
    paths: Sequence[Path],
    manifest: Manifest,
    options: RunOptions | None = None,
    guard: DeadlineGuard | None = None,
    rows: Sequence[int] | None = None,
) -> list[Outcome]:
    """Every file's outcome, in the order of ``paths`` (see :func:`stream_files`)."""
    outcomes = dict(stream_files(paths, manifest, options, guard, rows))
    return [outcomes[i] for i in range(len(paths))]
