"""``bird-infer analyze`` in a worker: BirdNET-Analyzer 2.4.0's ``iterate_audio_chunks`` and ``analyze_file``.

A file is read in pieces of 600 s (:mod:`bird_infer.audio.birdnet_signal`), each piece band-passed and cut into
3-s segments every ``3 - overlap`` s. On TFLite, segments go to BirdNET in batches of ``--batch_size`` (a
piece's last batch may be smaller), as BirdNET-Analyzer batches them, since TFLite's results depend on the batch
in their last bits; the ONNX body's do not (:mod:`bird_infer.runtime.birdnet_onnx`), so it gets a piece's
segments in batches of its own.

**A long file on every core.** A file of several pieces may be cut at piece boundaries into parts that
different workers analyze (a part skips the pieces before it, but adds up their starts as the unsplit loop
does, the same floats, counted from the header); :func:`join_analyses` puts the parts' segments back in order:
the tables are those of one run.

Each segment keeps the labels at or above ``--min_conf`` (or its ``--top_n`` best) that are on the species list,
best first. The predictor plugs into the engines through ``RunOptions.predictor_factory``: the
pool's and Dask's bad-file rules, retries and heartbeats apply as to any bundle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from bird_infer.audio.birdnet_signal import (
    PIECE_S,
    SAMPLE_RATE,
    bandpass,
    load_piece,
    piece_samples,
    segment_starts,
    split_signal,
)
from bird_infer.contract.analyze import AnalyzeSettings, FileAnalysis
from bird_infer.contract.birdnet import MODEL_FILE, V2_4_SHA256
from bird_infer.contract.bundle import Manifest
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileResult, StageTimes
from bird_infer.runtime.birdnet_analyzer import SegmentClassifier, bias_sigmoid
from bird_infer.runtime.birdnet_onnx import BODY_BATCH, ONNX_ENGINES, OnnxSegmentClassifier
from bird_infer.runtime.machine import peak_memory_mb
from bird_infer.runtime.sessions import checked_bytes


@dataclass(frozen=True)
class AnalyzerFactory:
    """``RunOptions.predictor_factory`` for ``analyze`` (plain data: pickled to every worker)."""

    settings: AnalyzeSettings
    model_path: Path
    labels: tuple[str, ...]
    species: frozenset[str] | None
    """The species list (from ``--slist`` or the range filter); None: every label."""
    threads: int = 1
    """Threads per process: 1, one single-thread process per core (a single long file is split across them,
    where BirdNET-Analyzer gives it ``--threads`` TFLite threads)."""
    runtime: str = "litert"
    """The TFLite interpreter (:data:`bird_infer.runtime.birdnet_analyzer.TFLITE_RUNTIMES`), or an engine of the
    ONNX body (:data:`bird_infer.runtime.birdnet_onnx.ONNX_ENGINES`)."""
    onnx_folder: Path | None = None
    """The converted body's folder (:mod:`bird_infer.contract.birdnet_onnx`), for the ONNX engines."""
    piece_rows: int = 200
    """A full 600-s piece's segments: the unit of a split file's parts (``RunOptions.block_chunks``)."""

    def __call__(self, _manifest: Manifest, _options: RunOptions) -> AnalyzerPredictor:
        return AnalyzerPredictor(self)


class AnalyzerPredictor:
    """One process's BirdNET classifier and the settings of the run."""

    def __init__(self, factory: AnalyzerFactory) -> None:
        self.s = factory.settings
        self.labels = factory.labels
        if factory.runtime in ONNX_ENGINES:
            if factory.onnx_folder is None:
                raise ValueError(f"the {factory.runtime} engine needs the converted folder")
            self.model: SegmentClassifier | OnnxSegmentClassifier = OnnxSegmentClassifier(
                factory.onnx_folder, factory.threads, factory.runtime
            )
            self.batch_size = max(factory.settings.batch_size, BODY_BATCH)
        else:
            model = checked_bytes(factory.model_path, V2_4_SHA256[MODEL_FILE], "BirdNET V2.4")  # checked here
            self.model = SegmentClassifier(model, factory.threads, factory.runtime)
            self.batch_size = factory.settings.batch_size
        self.piece_rows = factory.piece_rows
        self.allowed = (
            None if factory.species is None else np.array([x in factory.species for x in factory.labels], dtype=bool)
        )
        self.on_block: Callable[[], None] | None = None

    def select(self, probs: np.ndarray) -> list[tuple[str, float]]:
        """A segment's kept labels, best first (ties in label order)."""
        keep = np.ones(probs.shape, dtype=bool) if self.s.top_n else probs >= self.s.min_conf
        if self.allowed is not None:
            keep &= self.allowed
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-probs[idx], kind="stable")]
        if self.s.top_n:
            idx = idx[: self.s.top_n]
        return [(self.labels[j], probs[j]) for j in idx]

    def analyze(self, path: Path, first: int = 0, last: int | None = None) -> tuple[FileAnalysis, int, StageTimes]:
        """Pieces ``[first, last)`` of the file (all by default)."""
        s = self.s
        info = sf.info(str(path))  # librosa's get_duration and get_samplerate, read once
        length, rate = float(info.duration), int(info.samplerate)
        step = s.segment_s - s.overlap
        results: dict[str, list[tuple[str, float]]] = {}
        decode_s = model_s = 0.0
        segments = 0
        start: float = 0
        piece = 0
        while start < length and not np.isclose(start, length):
            if last is not None and piece >= last:
                break
            if piece < first:  # another part's piece: only its segment count, from the header
                size = piece_samples(int(info.frames), rate, start)
                start += len(segment_starts(size, SAMPLE_RATE, s.segment_s, s.overlap)) * step * 1.0
                piece += 1
                continue
            t0 = time.perf_counter()
            sig = bandpass(load_piece(path, start, PIECE_S), SAMPLE_RATE, s.fmin, s.fmax)
            chunks = split_signal(sig, SAMPLE_RATE, s.segment_s, s.overlap)
            decode_s += time.perf_counter() - t0
            if not chunks:
                break
            batch: list[np.ndarray] = []
            stamps: list[str] = []
            for k, chunk in enumerate(chunks):
                t_start = start + k * step * 1.0
                end = min(t_start + s.segment_s * 1.0, length)
                batch.append(chunk)
                stamps.append(str(round(t_start, 2)) + "-" + str(round(end, 2)))
                if len(batch) < self.batch_size and k < len(chunks) - 1:
                    continue
                t0 = time.perf_counter()
                probs = bias_sigmoid(self.model.logits(batch), s.sensitivity)
                for stamp, row in zip(stamps, probs, strict=True):
                    results[stamp] = self.select(row)
                model_s += time.perf_counter() - t0
                segments += len(batch)
                batch, stamps = [], []
                if self.on_block is not None:
                    self.on_block()
            start += len(chunks) * step * 1.0
            piece += 1
        return FileAnalysis(results, rate, length), segments, StageTimes(decode_s, 0.0, model_s)

    def predict_file(self, path: Path, n_folds: int | None = None) -> FileResult:
        """The file's analysis; what it raises is reported by the engine (one bad file never stops a run)."""
        return self.predict_part(path, n_folds)

    def predict_part(self, path: Path, n_folds: int | None = None, start: int = 0, end: int | None = None):
        """Segments ``[start, end)`` of the file (``end`` None: to its end), whole pieces of :attr:`piece_rows`
        segments (the engine cuts at multiples of ``RunOptions.block_chunks``, set to it)."""
        started = time.monotonic()
        last = None if end is None else end // self.piece_rows
        analysis, segments, times = self.analyze(path, start // self.piece_rows, last)
        return FileResult(
            path=path,
            probs=np.zeros((segments, 0), np.float32),
            times=times,
            n_folds=1,
            peak_mb=peak_memory_mb(),
            duration_s=analysis.duration_s,
            started_at=started,
            analysis=analysis,
        )


def full_piece_rows(rate: int, segment_s: float, overlap: float) -> int:
    """The segments of a full 600-s piece of a file at ``rate``: the unit a split file's parts are cut in."""
    size = piece_samples(int(PIECE_S * rate) + 1, rate, 0)
    return len(segment_starts(size, SAMPLE_RATE, segment_s, overlap))


def join_analyses(path: Path, parts: Sequence[FileResult]) -> FileResult:
    """A split file's parts (in any order) as one file's result: the segments in time order."""
    ordered = sorted(parts, key=lambda p: _first_start(p.analysis))
    results: dict[str, list[tuple[str, float]]] = {}
    for p in ordered:
        results.update(p.analysis.results)
    first = ordered[0]
    times = StageTimes.total(p.times for p in parts)
    return FileResult(
        path=path,
        probs=np.zeros((sum(p.n_rows for p in parts), 0), np.float32),
        times=times,
        n_folds=1,
        peak_mb=max(p.peak_mb for p in parts),
        duration_s=first.duration_s,
        started_at=min(p.started_at for p in parts),
        analysis=FileAnalysis(results, first.analysis.native_rate, first.analysis.duration_s),
        parts=len(parts),
    )


def _first_start(analysis: FileAnalysis) -> float:
    return float(next(iter(analysis.results)).split("-")[0]) if analysis.results else float("inf")


def expected_segments(durations: Sequence[float], overlap: float) -> list[int]:
    """Each file's segment count from its header's length (the hang timeout's scale)."""
    return [max(1, int(d / (3.0 - overlap)) + 1) for d in durations]
