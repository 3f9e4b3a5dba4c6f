"""The main job as one library call: a folder of soundscapes -> the submission CSV.

The CLI (``bird-infer predict``) and ``kaggle_kernel.py`` are thin layers over :func:`run_predict`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from bird_infer.audio import audio_info, find_audio_files, n_chunks_for
from bird_infer.errors import AudioDecodeError
from bird_infer.manifest import Manifest, load_manifest
from bird_infer.pipeline import FileResult, RunOptions, predict_files, resolve_workers
from bird_infer.progress import Progress
from bird_infer.submission import build_submission, column_order, read_sample_columns, write_submission

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSummary:
    """What a run did."""

    out_path: Path
    n_files: int
    n_rows: int
    wall_s: float
    workers: int


def expected_chunks(paths: list[Path], manifest: Manifest) -> int:
    """Chunks the files will give, from their headers (1 for a file whose header cannot be read)."""
    total = 0
    for p in paths:
        try:
            info = audio_info(p)
            total += n_chunks_for(info.frames, info.sample_rate, manifest.audio.clip_s)
        except AudioDecodeError:
            total += 1
    return total


def run_predict(
    audio: str | Path,
    models: str | Path,
    out: str | Path,
    sample_submission: str | Path | None = None,
    options: RunOptions | None = None,
    time_limit_s: float | None = None,
) -> JobSummary:
    """Predict every audio file under ``audio`` with the bundle in ``models``; write the CSV to ``out``.

    The manifest, model files and sample submission are all checked before any audio is read.
    """
    started = time.perf_counter()
    options = options or RunOptions()
    manifest = load_manifest(models)
    sample_cols = read_sample_columns(sample_submission) if sample_submission else None
    column_order(manifest.labels, sample_cols)  # label mismatch fails here, before the audio
    paths = find_audio_files(audio)
    if not paths:
        log.warning("no audio files under %s: writing a submission with a header only", audio)
    progress = Progress(len(paths), expected_chunks(paths, manifest), time_limit_s)
    workers = resolve_workers(options.workers, max(1, len(paths)))
    log.info(
        "%d files, %d chunks expected, %d folds, %d workers x %d threads",
        len(paths), progress.total_chunks, len(manifest.folds), workers, options.session.intra_op_threads,
    )
    every = max(1, len(paths) // 20)

    def report(r: FileResult) -> None:
        progress.update(r.n_chunks)
        if progress.files_done % every == 0 or progress.files_done == progress.n_files:
            log.info(progress.line())

    results = predict_files(paths, manifest, options, on_result=report)
    df = build_submission(
        [r.path.stem for r in results], [r.probs for r in results], manifest.labels, manifest.audio.clip_s, sample_cols
    )
    out_path = write_submission(df, out)
    wall = time.perf_counter() - started
    log.info("wrote %s: %d rows from %d files in %.1f s", out_path, len(df), len(paths), wall)
    return JobSummary(out_path=out_path, n_files=len(paths), n_rows=len(df), wall_s=wall, workers=workers)
