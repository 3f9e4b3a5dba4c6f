"""The main job as one library call: a folder of soundscapes -> the submission CSV and its error report.

The CLI (``bird-infer predict``) and ``kaggle_kernel.py`` are thin layers over :func:`run_predict`.
Every file found gets all its rows: real predictions, or :data:`~bird_infer.report.FALLBACK_PROB`
everywhere plus an entry in the error report (see :mod:`bird_infer.report`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.audio import audio_info, claimed_chunks, entry_problem, find_audio_entries
from bird_infer.deadline import Deadline, DeadlineGuard
from bird_infer.ensemble import SessionSettings
from bird_infer.errors import AudioDecodeError
from bird_infer.machine import cpu_info
from bird_infer.manifest import Manifest, load_manifest
from bird_infer.pipeline import FileFailure, FileResult, RunOptions, StageTimes, resolve_workers
from bird_infer.precision import choose_precision
from bird_infer.preflight import check_models, check_output, estimate_csv_bytes, write_outputs
from bird_infer.progress import Progress, ProgressDisplay
from bird_infer.report import FALLBACK_PROB, ReportEntry
from bird_infer.scheduler import Outcome, plan_tasks, predict_files
from bird_infer.submission import build_submission, column_order, read_sample_columns, safe_text, unique_stems

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
    n_partial: int = 0
    """Files with some rows predicted and the rest holding the fallback."""
    write_error: str | None = None
    """Why the CSV could not be written where asked (``out_path`` then says where it went instead)."""
    plan_s: float = 0.0
    """Seconds before the pool started: the checks, every fold run once, the accuracy guard (and ``auto``'s trials)."""
    session: SessionSettings | None = None
    """How the folds ran (``auto`` resolved)."""


def header_chunks(paths: list[Path], manifest: Manifest) -> list[int | None]:
    """Rows each file will give by its header (capped, see :mod:`bird_infer.audio`); None where the header
    cannot be read or its length is unknown."""
    counts: list[int | None] = []
    for p in paths:
        try:
            info = audio_info(p)
        except AudioDecodeError:
            counts.append(None)
            continue
        counts.append(None if info.frames is None else claimed_chunks(info, manifest.row_s))
    return counts


def fallback_rows(known: list[int | None]) -> list[int]:
    """Rows for each file: the header's count, else the most common count among the others, else 1.

    A file whose header cannot be read has an unknown length; in a competition test set the files
    share one length (BirdCLEF 2023: 10 minutes, 120 rows), so the most common count is the best guess.
    """
    seen = Counter(k for k in known if k is not None)
    guess = seen.most_common(1)[0][0] if seen else 1
    return [guess if k is None else k for k in known]


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, settled before any audio is read (shared by ``predict`` and ``detect``)."""

    manifest: Manifest
    entries: list[Path]
    """Every audio entry found, in order."""
    prefixes: list[str]
    """Each entry's unique name (row_id prefix; field outputs are named by it)."""
    problems: dict[Path, str | None]
    """Why an entry cannot be opened as a file (never opened), or None."""
    rows: list[int]
    """Each entry's expected rows (header claim, else the most common count)."""
    options: RunOptions
    precision: str
    started: float
    time_limit_s: float | None
    root: Path
    """The folder the entries were found under."""
    sample_columns: list[str] | None = None
    """The sample submission's label columns, in its order, when one was given."""

    @property
    def paths(self) -> list[Path]:
        """The entries that can be opened."""
        return [p for p in self.entries if self.problems[p] is None]


def plan_run(
    audio: str | Path,
    models: str | Path,
    options: RunOptions | None = None,
    time_limit_s: float | None = None,
    sample_submission: str | Path | None = None,
    check_place: Callable[[list[str], list[int], Manifest], None] | None = None,
) -> RunPlan:
    """Everything checked before any audio is read: the manifest and model files, every fold loaded and run
    once (:func:`bird_infer.preflight.check_models`), the sample submission, the output place
    (``check_place(prefixes, rows, manifest)``), then the accuracy guard for a reduced precision.
    Raises ManifestError, SubmissionFormatError, OutputError (exit status 2 in the CLI)."""
    started = time.perf_counter()
    options = options or RunOptions()
    if time_limit_s is not None and not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise ValueError(f"time_limit_s must be a positive number of seconds, got {time_limit_s!r}")
    manifest = load_manifest(models)
    sample_cols = read_sample_columns(sample_submission) if sample_submission else None
    column_order(manifest.labels, sample_cols)  # label mismatch fails here, before the audio
    check_models(manifest)
    entries = find_audio_entries(audio)
    root = Path(audio) if Path(audio).is_dir() else Path(audio).parent
    prefixes = unique_stems(entries, root)
    problems = {p: entry_problem(p) for p in entries}
    rows = fallback_rows(header_chunks(entries, manifest))
    if check_place is not None:
        check_place(prefixes, rows, manifest)
    if not entries:
        log.warning("no audio files under %s", audio)
    options, precision, _trials = choose_precision(manifest, options, [p for p in entries if problems[p] is None])
    return RunPlan(
        manifest, entries, prefixes, problems, rows, options, precision, started, time_limit_s, root, sample_cols
    )


def execute(
    plan: RunPlan, todo: set[Path] | None = None, on_result: Callable[[Outcome], None] | None = None
) -> dict[Path, Outcome]:
    """Predict the plan's entries (or those in ``todo``) on the pool, the deadline guard applied; entries that
    cannot be opened fail at once. ``on_result`` sees each outcome as it settles. Returns entry -> outcome."""
    manifest, options = plan.manifest, plan.options
    entries = [p for p in plan.entries if todo is None or p in todo]
    rows_of = dict(zip(plan.entries, plan.rows, strict=True))
    paths = [p for p in entries if plan.problems[p] is None]
    progress = Progress(len(entries), sum(rows_of[p] for p in entries), plan.time_limit_s)
    tasks = len(plan_tasks(options, [rows_of[p] for p in paths]))  # a long file may be split across workers
    workers = 1 if options.in_process else resolve_workers(options.workers, max(1, tasks))
    guard = None
    if plan.time_limit_s:
        guard = DeadlineGuard(
            Deadline(plan.time_limit_s),
            manifest.n_folds,
            progress.total_chunks,
            workers,
            started=plan.started,
            min_folds=len(manifest.members),
        )
    log.info(cpu_info().line())
    log.info(
        "%d files, %d chunks expected, %d folds, %d workers x %d threads",
        len(entries),
        progress.total_chunks,
        manifest.n_folds,
        workers,
        options.session.intra_op_threads,
    )
    show = ProgressDisplay(progress)

    def report(r: Outcome) -> None:
        progress.update(r.n_rows if isinstance(r, FileResult) else rows_of[r.path])
        show.update()
        if on_result:
            on_result(r)

    outcomes: dict[Path, Outcome] = {}
    for p in entries:
        problem = plan.problems[p]
        if problem is not None:
            outcomes[p] = FileFailure(p, f"not read: {problem}", attempts=0)
            log.warning("%s: %s", safe_text(str(p)), problem)
            report(outcomes[p])
    try:
        done = predict_files(paths, manifest, options, on_result=report, guard=guard, rows=[rows_of[p] for p in paths])
    finally:
        show.close()
    outcomes.update(zip(paths, done, strict=True))
    return {p: outcomes[p] for p in entries}


def run_predict(
    audio: str | Path,
    models: str | Path,
    out: str | Path,
    sample_submission: str | Path | None = None,
    options: RunOptions | None = None,
    time_limit_s: float | None = None,
) -> JobSummary:
    """Predict every audio file under ``audio`` with the bundle in ``models``; write the CSV to ``out``.

    Before any audio is read, :func:`plan_run` checks the models, the sample submission and the output
    place; a problem there raises (ManifestError, SubmissionFormatError, OutputError). A problem with an
    audio file never raises: the file gets fallback rows and a line in the error report. With
    ``time_limit_s`` the deadline guard (:mod:`bird_infer.deadline`) keeps the run inside the limit.
    """

    def place(prefixes: list[str], rows: list[int], manifest: Manifest) -> None:
        check_output(out, estimate_csv_bytes(prefixes, rows, len(manifest.labels), manifest.row_s))

    plan = plan_run(audio, models, options, time_limit_s, sample_submission, place)
    plan_s = time.perf_counter() - plan.started
    manifest = plan.manifest
    by_path = execute(plan)
    outcomes = [by_path[p] for p in plan.entries]
    t_write = time.perf_counter()
    probs, report_entries = settle(outcomes, plan.prefixes, plan.rows, len(manifest.labels), manifest.n_folds)
    df = build_submission(plan.prefixes, probs, manifest.labels, manifest.row_s, plan.sample_columns)
    out_path, rep, write_error = write_outputs(df, report_entries, Path(out))
    write_s = time.perf_counter() - t_write
    wall = time.perf_counter() - plan.started
    done = [r for r in outcomes if isinstance(r, FileResult)]
    stages = StageTimes(*(sum(getattr(r.times, f) for r in done) for f in ("decode_s", "frontend_s", "model_s")))
    n_failed = sum(e.outcome == "fallback" for e in report_entries)
    n_reduced = sum(e.outcome == "reduced_folds" for e in report_entries)
    log.info("wrote %s: %d rows from %d files in %.1f s", out_path, len(df), len(plan.entries), wall)
    if report_entries:
        log.warning(
            "%d file(s) with notes (%d fallback, %d fewer folds): see %s", len(report_entries), n_failed, n_reduced, rep
        )
    workers = 1 if plan.options.in_process else resolve_workers(plan.options.workers, max(1, len(plan.paths)))
    return JobSummary(
        out_path,
        rep,
        len(plan.entries),
        len(df),
        wall,
        workers,
        n_failed,
        n_reduced,
        n_chunks=sum(r.n_chunks for r in done),
        stages=stages,
        write_s=write_s,
        worker_peak_mb=max((r.peak_mb for r in done), default=0.0),
        precision=plan.precision,
        n_partial=sum(e.outcome == "partial" for e in report_entries),
        write_error=write_error,
        plan_s=plan_s,
        session=plan.options.session,
    )


def settle(
    outcomes: list[Outcome], prefixes: list[str], rows: list[int], n_labels: int, n_folds: int
) -> tuple[list[np.ndarray], list[ReportEntry]]:
    """Each file's probability rows (the fallback for failures) and the report entries.

    Outcomes, most severe first: ``fallback`` (no row predicted), ``partial`` (some rows hold the
    fallback: audio cut short, or chunks on which no fold was finite), ``folds_excluded`` (a fold's
    NaN or inf left out), ``reduced_folds`` (the deadline guard), ``header_ignored`` (a header length
    not believed; every row predicted).
    """
    probs: list[np.ndarray] = []
    entries: list[ReportEntry] = []
    for r, prefix, n_rows in zip(outcomes, prefixes, rows, strict=True):
        if isinstance(r, FileFailure):
            probs.append(np.full((n_rows, n_labels), FALLBACK_PROB, dtype=np.float32))
            entries.append(ReportEntry(r.path, prefix, "fallback", r.reason, r.attempts, n_rows, 0))
            continue
        probs.append(r.probs)
        notes = list(r.notes)
        if r.n_folds < n_folds:
            notes.append(f"time limit: {r.n_folds} of {n_folds} folds")
        if not notes:
            continue
        if r.fallback_rows:
            outcome = "partial"
        elif r.excluded_folds:
            outcome = "folds_excluded"
        elif r.n_folds < n_folds:
            outcome = "reduced_folds"
        else:
            outcome = "header_ignored"
        entries.append(ReportEntry(r.path, prefix, outcome, "; ".join(notes), r.attempts, r.n_rows, r.n_folds))
    return probs, entries
