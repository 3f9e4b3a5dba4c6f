"""The error report written beside the submission: every file that did not get full predictions.

``<submission stem>_errors.csv``, one row per file, columns:

- ``file``: the path as found; ``row_prefix``: its row_id prefix in the submission;
- ``outcome``: ``fallback`` (every row of the file holds :data:`FALLBACK_PROB`), ``partial`` (the audio
  that decodes is predicted, the rest of the length its header claims holds the fallback, as do chunks
  on which no fold was finite), ``folds_excluded`` (a fold's NaN or inf outputs left out),
  ``reduced_folds`` (fewer folds than the manifest has, chosen by the deadline guard) or
  ``header_ignored`` (a header length not believed; every row predicted);
- ``reason``: why (the exception, a dead worker, the time limit); ``attempts``; ``rows``; ``folds``.

The report is written on every run, with only its header when nothing went wrong, so an old report
never outlives the run that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bird_infer.submission import safe_text, write_csv_atomic

FALLBACK_PROB = 0.0
"""Every probability of a file that could not be predicted. 0 ranks its rows below every real prediction."""

REPORT_COLUMNS = ["file", "row_prefix", "outcome", "reason", "attempts", "rows", "folds"]


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
        [safe_text(str(e.file)), e.row_prefix, e.outcome, safe_text(e.reason), e.attempts, e.rows, e.folds]
        for e in entries
    ]
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def write_report(entries: list[ReportEntry], submission: str | Path) -> Path:
    """Write the report beside ``submission`` (via a temporary file) and return its path."""
    return write_csv_atomic(report_frame(entries), report_path(submission))
