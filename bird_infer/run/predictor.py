"""What one process does with a file: a file in, its probability rows (or the reason it failed) out.

:class:`FilePredictor` holds the bundle's sessions (:class:`~bird_infer.runtime.ensemble.BundleModel`), built once
per process; a file is decoded once (:class:`~bird_infer.audio.decode.RowReader`), each block's front-ends and
folds run, and the parts are assembled (:func:`~bird_infer.run.segments.assemble`). The engines that hand files
to processes are :mod:`bird_infer.run.pool` and :mod:`bird_infer.run.dask_engine`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import RowReader
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.text import describe_exception
from bird_infer.run.options import RunOptions, aligned_blocks, keeps_member_rows
from bird_infer.run.outcomes import FileFailure, FileResult, PartResult, StageTimes
from bird_infer.run.postprocess import PostProcessor
from bird_infer.run.rows import RowGatherer
from bird_infer.run.segments import assemble
from bird_infer.run.stages import file_stages
from bird_infer.runtime.ensemble import BundleModel
from bird_infer.runtime.machine import peak_memory_mb

log = logging.getLogger(__name__)


def make_predictor(manifest: Manifest, options: RunOptions) -> FilePredictor:
    """The predictor ``options`` asks for (default :class:`FilePredictor`)."""
    return (options.predictor_factory or FilePredictor)(manifest, options)


class FilePredictor:
    """Every member of a bundle, for one process: a file in, its rows out."""

    def __init__(self, manifest: Manifest, options: RunOptions) -> None:
        self.manifest = manifest
        self.options = options = aligned_blocks(manifest, options)
        self.ensemble = BundleModel(manifest, options.session)
        self.keep_members = keeps_member_rows(manifest, options)
        self.on_block: Callable[[], None] | None = None
        """Called after every decoded block (a pool worker's heartbeat, :mod:`bird_infer.run.heartbeat`)."""
        post = PostProcessor(manifest)
        self.post = None if self.keep_members else post
        self.stages = file_stages(manifest, post)

    def predict_file(self, path: Path, n_folds: int | None = None) -> FileResult:
        """The file's rows: decoded once, each distinct front-end once per block, the bundle's first ``n_folds``
        folds in keeping order (default all), the members' weighted mean, then the manifest's post-processing.
        The rest of the length the header claims holds :data:`FALLBACK_PROB`.

        Raises AudioDecodeError when nothing decodes, NonFiniteOutputError when no fold is finite for any
        chunk, or whatever ONNX Runtime raises.
        """
        return assemble(self.manifest, path, [self.predict_part(path, n_folds)], n_folds, self.post, self.stages)

    def _beat(self) -> None:
        if self.on_block is not None:
            self.on_block()

    def predict_part(
        self, path: Path, n_folds: int | None = None, start: int = 0, end: int | None = None
    ) -> PartResult:
        """Rows ``[start, end)`` of the file (see :mod:`bird_infer.run.segments`): decoded from the file's start,
        the front-ends and folds run only on those rows' windows; each member's outputs gathered onto rows
        (:mod:`bird_infer.run.rows`), before the blend, the fallback and the post-processing. ``n_folds``: the
        deadline guard's units kept (folds and shifts, :meth:`~bird_infer.contract.bundle.Manifest.unit_order`)."""
        bundle = self.ensemble
        k = bundle.n_units if n_folds is None else n_folds
        kept = bundle.kept(k)
        decode_s = frontend_s = model_s = 0.0
        predicted = 0
        gather = RowGatherer(self.manifest)
        bad_chunks = [np.zeros(len(folds), dtype=np.int64) for folds, _ in kept]
        reader = RowReader(path, bundle.specs, self.manifest.row_s, self.options.block_chunks)
        reached_end = True
        started_at = time.monotonic()
        t0 = time.perf_counter()
        for first, windows in reader:
            n = next(iter(windows.values())).shape[0]
            if end is not None and first >= end:
                reached_end = False
                break
            if first + n <= start:  # before this segment: decoded (the stream needs it), not predicted
                self._beat()
                continue
            lo, hi = max(0, start - first), n if end is None else min(n, end - first)
            if lo or hi < n:
                windows = {spec: w[lo:hi] for spec, w in windows.items()}
            t1 = time.perf_counter()
            block = bundle.predict_windows(windows, k)
            gather.add(first + lo, block)
            predicted += hi - lo
            for counts, bad in zip(bad_chunks, block.masks, strict=True):
                counts += bad.sum(axis=1)
            t2 = time.perf_counter()
            decode_s += t1 - t0
            frontend_s += bundle.last_frontend_s
            model_s += t2 - t1 - bundle.last_frontend_s
            self._beat()
            t0 = time.perf_counter()
        return PartResult(
            path=path,
            probs=np.zeros((predicted, 0), np.float32),  # the rows are in member_rows until assembled
            times=StageTimes(decode_s, frontend_s, model_s),
            n_folds=k,
            peak_mb=peak_memory_mb(),
            duration_s=reader.decoded_s if reached_end else 0.0,
            first_row=start,
            reached_end=reached_end,
            reader_rows=reader.rows if reached_end else 0,
            reader_notes=tuple(n for n in (reader.note, reader.error) if n) if reached_end else (),
            bad_chunks=tuple(tuple(int(c) for c in counts) for counts in bad_chunks),
            member_rows=tuple(gather.sums),
            extra_rows=tuple(gather.extra_sums.items()),
            decoded_rows=reader.decoded if reached_end else 0,
            started_at=started_at,
        )


def predict_or_fail(predictor: FilePredictor, path: Path, n_folds: int | None) -> FileResult | FileFailure:
    """``predict_file``, with any exception turned into a FileFailure (plain data: always picklable)."""
    try:
        return predictor.predict_file(path, n_folds)
    except Exception as e:  # one bad file must never stop the batch; the reason is reported
        log.debug("%s failed", path, exc_info=True)
        return FileFailure(path=path, reason=describe_exception(e).replace(str(path), path.name))


def predict_part_or_fail(
    predictor: FilePredictor, path: Path, n_folds: int | None, start: int, end: int | None
) -> PartResult | FileFailure:
    """``predict_part``, with any exception turned into a FileFailure."""
    try:
        return predictor.predict_part(path, n_folds, start, end)
    except Exception as e:  # one bad file must never stop the batch; the reason is reported
        log.debug("%s failed", path, exc_info=True)
        return FileFailure(path=path, reason=describe_exception(e).replace(str(path), path.name))


def run_segment(predictor: FilePredictor, path: Path, n_folds: int | None, start: int, end: int | None):
    """A whole file (``start`` 0, ``end`` None) or a segment of one."""
    if start == 0 and end is None:
        return predict_or_fail(predictor, path, n_folds)
    return predict_part_or_fail(predictor, path, n_folds, start, end)
