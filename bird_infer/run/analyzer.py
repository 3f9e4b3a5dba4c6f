"""``bird-infer analyze`` in a worker: BirdNET-Analyzer 2.4.0's ``iterate_audio_chunks`` and ``analyze_file``.

A file is read in pieces of 600 s (:mod:`bird_infer.audio.birdnet_signal`), each piece band-passed and cut into
3-s segments every ``3 - overlap`` s; segments go to BirdNET in batches of ``--batch_size`` (a piece's last
batch may be smaller), as BirdNET-Analyzer batches them, since TFLite's results depend on the batch in their
last bits. Each segment keeps the labels at or above ``--min_conf`` (or its ``--top_n`` best) that are on the
species list, best first. The predictor plugs into the engines through ``RunOptions.predictor_factory``: the
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
    split_signal,
)
from bird_infer.contract.analyze import AnalyzeSettings, FileAnalysis
from bird_infer.contract.birdnet import MODEL_FILE, V2_4_SHA256
from bird_infer.contract.bundle import Manifest
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileResult, StageTimes
from bird_infer.runtime.birdnet_analyzer import SegmentClassifier, bias_sigmoid
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
    """TFLite threads per process (BirdNET-Analyzer: ``--threads`` for a single file, else 1)."""
    runtime: str = "litert"
    """The TFLite interpreter (:data:`bird_infer.runtime.birdnet_analyzer.TFLITE_RUNTIMES`)."""

    def __call__(self, _manifest: Manifest, _options: RunOptions) -> AnalyzerPredictor:
        return AnalyzerPredictor(self)


class AnalyzerPredictor:
    """One process's BirdNET classifier and the settings of the run."""

    def __init__(self, factory: AnalyzerFactory) -> None:
        self.s = factory.settings
        self.labels = factory.labels
        model = checked_bytes(factory.model_path, V2_4_SHA256[MODEL_FILE], "BirdNET V2.4")  # checked in this process
        self.model = SegmentClassifier(model, factory.threads, factory.runtime)
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

    def analyze(self, path: Path) -> tuple[FileAnalysis, int, StageTimes]:
        s = self.s
        info = sf.info(str(path))  # librosa's get_duration and get_samplerate, read once
        length, rate = float(info.duration), int(info.samplerate)
        step = s.segment_s - s.overlap
        results: dict[str, list[tuple[str, float]]] = {}
        decode_s = model_s = 0.0
        segments = 0
        start: float = 0
        while start < length and not np.isclose(start, length):
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
                if len(batch) < s.batch_size and k < len(chunks) - 1:
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
        return FileAnalysis(results, rate, length), segments, StageTimes(decode_s, 0.0, model_s)

    def predict_file(self, path: Path, n_folds: int | None = None) -> FileResult:
        """The file's analysis; what it raises is reported by the engine (one bad file never stops a run)."""
        started = time.monotonic()
        analysis, segments, times = self.analyze(path)
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

    def predict_part(self, path: Path, n_folds: int | None = None, start: int = 0, end: int | None = None):
        raise NotImplementedError("analyze runs whole files (RunOptions.split_files is False)")


def expected_segments(durations: Sequence[float], overlap: float) -> list[int]:
    """Each file's segment count from its header's length (the hang timeout's scale)."""
    return [max(1, int(d / (3.0 - overlap)) + 1) for d in durations]
