"""The main job as one library call: a folder of soundscapes -> the submission CSV and its error report.

The CLI (``bird-infer predict``) and ``kaggle_kernel.py`` are thin layers over :func:`run_predict`.
Every file found gets all its rows: real predictions, or :data:`~bird_infer.contract.schema.FALLBACK_PROB`
everywhere plus an entry in the error report (see :mod:`bird_infer.outputs.report`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from bird_infer.contract.bundle import Manifest
from bird_infer.outputs.names import unique_stems
from bird_infer.outputs.place import check_output, estimate_csv_bytes, write_outputs
from bird_infer.outputs.report import NOT_LISTED, settle, unit_name, unlisted_entries
from bird_infer.outputs.submission import build_submission
from bird_infer.run.deadline import Deadline
from bird_infer.run.options import RunOptions, keeps_member_rows
from bird_infer.run.outcomes import FileResult, StageTimes
from bird_infer.run.plan import iter_outcomes, plan_run
from bird_infer.run.postprocess import PostProcessor
from bird_infer.run.runwide import MemberRows, finish
from bird_infer.run.stages import file_stages
from bird_infer.runtime.sessions import SessionSettings

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
    startup_s: float = 0.0
    """Seconds from the start of the job to the first chunk a worker began: the checks, the accuracy guard, the
    pool's start (what the run pays once, whatever the number of files)."""


def run_predict(
    audio: str | Path,
    models: str | Path,
    out: str | Path,
    sample_submission: str | Path | None = None,
    options: RunOptions | None = None,
    time_limit_s: float | None = None,
) -> JobSummary:
    """Predict every audio file under ``audio`` with the bundle in ``models``; write the CSV to ``out``.

    Before any audio is read, :func:`~bird_infer.run.plan.plan_run` checks the models, the sample submission and
    the output place; a problem there raises (ManifestError, SubmissionFormatError, OutputError). A problem with an
    audio file never raises: the file gets fallback rows and a line in the error report. With
    ``time_limit_s`` the deadline guard (:mod:`bird_infer.run.deadline`) keeps the run inside the limit.
    """

    def place(prefixes: list[str], rows: list[int], manifest: Manifest) -> None:
        check_output(out, estimate_csv_bytes(prefixes, rows, len(manifest.labels), manifest.row_s))

    plan = plan_run(audio, models, unique_stems, options, time_limit_s, sample_submission, place)
    plan_s = time.perf_counter() - plan.started
    manifest = plan.manifest
    if keeps_member_rows(manifest, plan.options):  # a rank blend: every row first, then blend and post-process
        expected = sum(plan.rows) * len(manifest.labels) * len(manifest.members) * 4
        store = MemberRows(Path(out).parent, int(plan.options.member_rows_ram_mb * 2**20), expected)
        stop_at = plan.started + Deadline(plan.time_limit_s).stop_s if plan.time_limit_s else None
        try:
            store.check_room()  # before any audio: where the rows will fit, or one error line
            by_path = {}
            for path, outcome in iter_outcomes(plan):
                if isinstance(outcome, FileResult) and outcome.member_probs is not None:
                    store.add(path, outcome.member_probs)
                    outcome = dataclasses.replace(outcome, member_probs=None)
                by_path[path] = outcome
            post = PostProcessor(manifest)
            by_path = finish(by_path, store, manifest, post, stop_at, file_stages(manifest, post))
        finally:
            store.close()
    else:
        by_path = dict(iter_outcomes(plan))
    outcomes = [by_path[p] for p in plan.entries]
    t_write = time.perf_counter()
    probs, report_entries = settle(
        outcomes, plan.names, plan.rows, len(manifest.labels), manifest.n_units, unit_name(manifest)
    )
    report_entries += unlisted_entries(plan.unlisted)
    df = build_submission(plan.names, probs, manifest.labels, manifest.row_s, plan.sample_columns)
    out_path, rep, write_error = write_outputs(df, report_entries, Path(out))
    write_s = time.perf_counter() - t_write
    wall = time.perf_counter() - plan.started
    done = [r for r in outcomes if isinstance(r, FileResult)]
    stages = StageTimes.total(r.times for r in done)
    n_failed = sum(e.outcome in ("fallback", NOT_LISTED) for e in report_entries)
    n_reduced = sum(e.outcome == "reduced_folds" for e in report_entries)
    log.info("wrote %s: %d rows from %d files in %.1f s", out_path, len(df), len(plan.entries), wall)
    if report_entries:
        log.warning(
            "%d file(s) with notes (%d fallback, %d fewer folds): see %s", len(report_entries), n_failed, n_reduced, rep
        )
    return JobSummary(
        out_path,
        rep,
        len(plan.entries),
        len(df),
        wall,
        plan.workers(),
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
        session=plan.session,
        startup_s=max(0.0, min((r.started_at for r in done), default=plan.started_mono) - plan.started_mono),
    )
