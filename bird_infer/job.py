"""The main job as one library call: a folder of soundscapes -> the submission CSV and its error report.

The CLI (``bird-infer predict``) and ``kaggle_kernel.py`` are thin layers over :func:`run_predict`.
Every file found gets all its rows: real predictions, or :data:`~bird_infer.report.FALLBACK_PROB`
everywhere plus an entry in the error report (see :mod:`bird_infer.report`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.audio import audio_info, find_audio_files, iter_chunk_blocks, n_chunks_for
from bird_infer.deadline import Deadline, DeadlineGuard
from bird_infer.ensemble import PrecisionRefusedError, check_precision
from bird_infer.errors import AudioDecodeError
from bird_infer.frontend import LogMelFrontend
from bird_infer.manifest import Manifest, load_manifest
from bird_infer.pipeline import FileFailure, FileResult, RunOptions, StageTimes, resolve_workers
from bird_infer.progress import Progress
from bird_infer.report import FALLBACK_PROB, ReportEntry, write_report
from bird_infer.scheduler import Outcome, predict_files
from bird_infer.submission import build_submission, column_order, read_sample_columns, unique_stems, write_submission

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSummary:
    """What a run did."""

    out_path: Path
    report_path: Path
    n_files: int
    n_rows: int
    wall_s: float
    workers: int
    n_failed: int
    """Files whose rows hold the fallback."""
    n_reduced: int
    """Files predicted with fewer folds than the manifest has (deadline guard)."""
    n_chunks: int
    """Chunks predicted (fallback rows excluded)."""
    stages: StageTimes
    """Worker seconds per stage, summed over files."""
    write_s: float
    """Seconds to build and write the CSV and the report."""
    worker_peak_mb: float
    """The largest peak resident memory any worker reported."""
    precision: str = "onnxruntime fp32"
    """What the folds ran as, and the accuracy guard's measurement when it ran."""


def header_chunks(paths: list[Path], manifest: Manifest) -> list[int | None]:
    """Rows each file will give, from its header; None where the header cannot be read."""
    counts: list[int | None] = []
    for p in paths:
        try:
            info = audio_info(p)
            counts.append(n_chunks_for(info.frames, info.sample_rate, manifest.audio.clip_s))
        except AudioDecodeError:
            counts.append(None)
    return counts


def fallback_rows(known: list[int | None]) -> list[int]:
    """Rows for each file: the header's count, else the most common count among the others, else 1.

    A file whose header cannot be read has an unknown length; in a competition test set the files
    share one length (BirdCLEF 2023: 10 minutes, 120 rows), so the most common count is the best guess.
    """
    seen = Counter(k for k in known if k is not None)
    guess = seen.most_common(1)[0][0] if seen else 1
    return [guess if k is None else k for k in known]


def run_predict(
    audio: str | Path,
    models: str | Path,
    out: str | Path,
    sample_submission: str | Path | None = None,
    options: RunOptions | None = None,
    time_limit_s: float | None = None,
) -> JobSummary:
    """Predict every audio file under ``audio`` with the bundle in ``models``; write the CSV to ``out``.

    The manifest, model files and sample submission are all checked before any audio is read; a
    problem there raises (ManifestError, SubmissionFormatError). A problem with an audio file never
    raises: the file gets fallback rows and a line in the error report. With ``time_limit_s`` the
    deadline guard (:mod:`bird_infer.deadline`) keeps the run inside the limit.
    """
    started = time.perf_counter()
    options = options or RunOptions()
    manifest = load_manifest(models)
    sample_cols = read_sample_columns(sample_submission) if sample_submission else None
    column_order(manifest.labels, sample_cols)  # label mismatch fails here, before the audio
    paths = find_audio_files(audio)
    if not paths:
        log.warning("no audio files under %s: writing a submission with a header only", audio)
    root = Path(audio) if Path(audio).is_dir() else Path(audio).parent
    prefixes = unique_stems(paths, root)
    rows = fallback_rows(header_chunks(paths, manifest))
    options, precision = guard_precision(manifest, options, paths)
    progress = Progress(len(paths), sum(rows), time_limit_s)
    workers = 1 if options.in_process else resolve_workers(options.workers, max(1, len(paths)))
    guard = None
    if time_limit_s:
        guard = DeadlineGuard(Deadline(time_limit_s), len(manifest.folds), sum(rows), workers, started=started)
    log.info(
        "%d files, %d chunks expected, %d folds, %d workers x %d threads",
        len(paths), progress.total_chunks, len(manifest.folds), workers, options.session.intra_op_threads,
    )
    every = max(1, len(paths) // 20)
    rows_of = dict(zip(paths, rows, strict=True))

    def report(r: Outcome) -> None:
        progress.update(r.n_chunks if isinstance(r, FileResult) else rows_of[r.path])
        if progress.files_done % every == 0 or progress.files_done == progress.n_files:
            log.info(progress.line())

    outcomes = predict_files(paths, manifest, options, on_result=report, guard=guard)
    t_write = time.perf_counter()
    probs, entries = settle(outcomes, prefixes, rows, len(manifest.labels), len(manifest.folds))
    df = build_submission(prefixes, probs, manifest.labels, manifest.audio.clip_s, sample_cols)
    out_path = write_submission(df, out)
    rep = write_report(entries, out_path)
    write_s = time.perf_counter() - t_write
    wall = time.perf_counter() - started
    done = [r for r in outcomes if isinstance(r, FileResult)]
    stages = StageTimes(*(sum(getattr(r.times, f) for r in done) for f in ("decode_s", "frontend_s", "model_s")))
    n_failed = sum(e.outcome == "fallback" for e in entries)
    n_reduced = len(entries) - n_failed
    log.info("wrote %s: %d rows from %d files in %.1f s", out_path, len(df), len(paths), wall)
    if entries:
        log.warning("%d file(s) got fallback rows, %d fewer folds: see %s", n_failed, n_reduced, rep)
    return JobSummary(
        out_path, rep, len(paths), len(df), wall, workers, n_failed, n_reduced,
        n_chunks=sum(r.n_chunks for r in done), stages=stages, write_s=write_s,
        worker_peak_mb=max((r.peak_mb for r in done), default=0.0), precision=precision,
    )


GUARD_CHUNKS = 8


def guard_precision(manifest: Manifest, options: RunOptions, paths: list[Path]) -> tuple[RunOptions, str]:
    """The accuracy guard, before the pool starts: a backend or precision other than ONNX Runtime fp32 runs
    only if its probabilities stay within ``options.precision_bound`` of fp32 on the first chunks of the
    first readable file. Refused (or unsupported by this CPU): the run goes on in ONNX Runtime fp32."""
    st = options.session
    if st.backend == "onnxruntime" and st.precision == "fp32":
        return options, "onnxruntime fp32"
    fallback = dataclasses.replace(options, session=dataclasses.replace(st, backend="onnxruntime", precision="fp32"))
    frontend = LogMelFrontend(manifest.frontend, manifest.audio.sample_rate)
    for p in paths:
        try:
            block = next(iter_chunk_blocks(p, manifest.audio, GUARD_CHUNKS))
        except (AudioDecodeError, StopIteration):
            continue
        try:
            delta = check_precision(manifest, st, frontend(block), options.precision_bound)
        except PrecisionRefusedError as e:
            log.warning("%s; running in onnxruntime fp32", e)
            return fallback, f"onnxruntime fp32 ({e})"
        note = f"{st.backend} {st.precision} (max |p - p_fp32| = {delta:.4f} on {len(block)} chunks of {p.name})"
        log.info("accuracy guard: %s", note)
        return options, note
    return fallback, f"onnxruntime fp32 ({st.backend} {st.precision} not checked: no readable audio)"


def settle(
    outcomes: list[Outcome], prefixes: list[str], rows: list[int], n_labels: int, n_folds: int
) -> tuple[list[np.ndarray], list[ReportEntry]]:
    """Each file's probability rows (the fallback for failures) and the report entries."""
    probs: list[np.ndarray] = []
    entries: list[ReportEntry] = []
    for r, prefix, n_rows in zip(outcomes, prefixes, rows, strict=True):
        if isinstance(r, FileFailure):
            probs.append(np.full((n_rows, n_labels), FALLBACK_PROB, dtype=np.float32))
            entries.append(ReportEntry(r.path, prefix, "fallback", r.reason, r.attempts, n_rows, 0))
            continue
        probs.append(r.probs)
        if r.n_folds < n_folds:
            reason = f"time limit: {r.n_folds} of {n_folds} folds"
            entries.append(ReportEntry(r.path, prefix, "reduced_folds", reason, r.attempts, r.n_chunks, r.n_folds))
    return probs, entries
