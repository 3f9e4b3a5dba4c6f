"""The error report written beside the submission: every file that did not get full predictions.

``<submission stem>_errors.csv``, one row per file, columns:

- ``file``: the path as found; ``row_prefix``: its row_id prefix in the submission;
- ``outcome``: ``fallback`` (every row of the file holds
  :data:`~bird_infer.contract.schema.FALLBACK_PROB`), ``partial`` (the audio
  that decodes is predicted, the rest of the length its header claims holds the fallback, as do chunks
  on which no fold was finite), ``folds_excluded`` (a fold's NaN or inf outputs left out),
  ``reduced_folds`` (fewer folds than the manifest has, chosen by the deadline guard),
  ``postprocess_skipped`` (the time limit's hard stop came before the file's post-processing, done after the
  last file for a rank blend: its rows are the blend),
  ``prior_unmatched`` (a ``prior`` post-processing step found no row for the file's name, or its name took too
  long to match: its rows were left unchanged), ``header_ignored`` (a header length not believed; every row
  predicted) or ``not_listed`` (a folder under ``--audio`` that could not be listed: ``file`` is the folder; its
  audio is unknown);
- ``reason``: why (the exception, a dead worker, the time limit); ``attempts``; ``rows``; ``folds``.

The report is written on every run, with only its header when nothing went wrong, so an old report
never outlives the run that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.schema import FALLBACK_PROB
from bird_infer.contract.text import safe_text, spreadsheet_safe
from bird_infer.outputs.atomic import write_csv_atomic
from bird_infer.run.outcomes import FileFailure, Outcome

REPORT_COLUMNS = ["file", "row_prefix", "outcome", "reason", "attempts", "rows", "folds"]
NOT_LISTED = "not_listed"


@dataclass(frozen=True)
class ReportEntry:
    file: Path
    row_prefix: str
    outcome: str
    reason: str
    attempts: int
    rows: int
    folds: int


def report_path(submission: str | Path) -> Path:
    """``submission.csv`` -> ``submission_errors.csv`` in the same folder."""
    submission = Path(submission)
    return submission.with_name(f"{submission.stem}_errors.csv")


def report_frame(entries: list[ReportEntry]) -> pd.DataFrame:
    """The report's rows, names made printable."""
    rows = [
        [spreadsheet_safe(safe_text(str(e.file))), spreadsheet_safe(e.row_prefix), e.outcome,
         spreadsheet_safe(safe_text(e.reason)), e.attempts, e.rows, e.folds]
        for e in entries
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def write_report(entries: list[ReportEntry], submission: str | Path) -> Path:
    """Write the report beside ``submission`` (via a temporary file) and return its path."""
    return write_csv_atomic(report_frame(entries), report_path(submission))


def settle(
    outcomes: list[Outcome],
    prefixes: list[str],
    rows: list[int],
    n_labels: int,
    n_folds: int,
    units: str = "folds",
) -> tuple[list[np.ndarray], list[ReportEntry]]:
    """Each file's probability rows (the fallback for failures) and the report entries.

    Outcomes, most severe first: ``fallback`` (no row predicted), ``partial`` (some rows hold the
    fallback: audio cut short, or chunks on which no fold was finite), ``folds_excluded`` (a fold's
    NaN or inf left out), ``reduced_folds`` (the deadline guard), ``prior_unmatched`` (a prior step found no
    row for the file's name), ``header_ignored`` (a header length not believed; every row predicted).
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
            notes.append(f"time limit: {r.n_folds} of {n_folds} {units}")
        if not notes:
            continue
        if r.fallback_rows:
            outcome = "partial"
        elif r.excluded_folds:
            outcome = "folds_excluded"
        elif r.n_folds < n_folds:
            outcome = "reduced_folds"
        elif r.postprocess_skipped:
            outcome = "postprocess_skipped"
        elif r.prior_unmatched:
            outcome = "prior_unmatched"
        else:
            outcome = "header_ignored"
        entries.append(ReportEntry(r.path, prefix, outcome, "; ".join(notes), r.attempts, r.n_rows, r.n_folds))
    return probs, entries


def unlisted_entries(unlisted) -> list[ReportEntry]:
    """A report line for each folder that could not be listed (it fails ``--strict``)."""
    return [ReportEntry(folder, "", NOT_LISTED, why, 0, 0, 0) for folder, why in unlisted]


def unit_name(manifest: Manifest) -> str:
    """What the deadline guard's units are, for the report: ``folds``, or ``folds and shifts`` when the bundle has
    test-time shifts."""
    return "folds" if manifest.n_units == manifest.n_folds else "folds and shifts"
