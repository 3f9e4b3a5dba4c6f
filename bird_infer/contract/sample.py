"""The competition's side of the contract: ``sample_submission.csv``'s label columns, and the order the submission
writes them in. Labels and their order always come from there (column names are strings, whatever they look
like: ``"1139490"``)."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bird_infer.contract.errors import SubmissionFormatError
from bird_infer.contract.schema import RESERVED_COLUMN as ROW_ID


def read_sample_columns(path: str | Path) -> list[str]:
    """Label columns of a sample_submission.csv, in its order, as strings (only the header is read).

    Column names stay the text they are (``1139490`` is the label ``"1139490"``). Raises
    SubmissionFormatError for anything that is not a UTF-8 CSV header starting with ``row_id`` and
    naming each label once.
    """
    path = Path(path)
    if path.is_dir():
        raise SubmissionFormatError(f"--sample-submission {path} is a folder; give the sample_submission.csv file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline(1 << 24)
    except FileNotFoundError as e:
        raise SubmissionFormatError(f"sample submission {path} does not exist") from e
    except UnicodeDecodeError as e:
        raise SubmissionFormatError(
            f"sample submission {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from e
    except OSError as e:
        raise SubmissionFormatError(f"cannot read sample submission {path}: {e.strerror}") from e
    if "\0" in first:
        raise SubmissionFormatError(f"sample submission {path} is binary, not a CSV")
    header = next(csv.reader([first]), []) if first.strip() else []
    header = [h.strip() for h in header]
    if not header:
        raise SubmissionFormatError(f"sample submission {path} is empty: it needs a header row_id,<labels...>")
    if header[0] != ROW_ID:
        raise SubmissionFormatError(f"{path}: first column must be '{ROW_ID}', got {header[0][:40]!r}")
    labels = header[1:]
    dup = sorted(n for n, c in Counter(labels).items() if c > 1)
    if dup:
        raise SubmissionFormatError(f"{path}: column(s) {dup[:10]} appear more than once")
    if not labels or any(not c for c in labels) or ROW_ID in labels:
        raise SubmissionFormatError(
            f"{path}: every column after '{ROW_ID}' must name a label (an empty name or '{ROW_ID}' found)"
        )
    return labels


def column_order(labels: Sequence[str], sample_columns: Sequence[str] | None) -> list[str]:
    """The label columns to write: the sample submission's order if given, else the manifest's.

    Raises SubmissionFormatError when the two label sets differ.
    """
    if sample_columns is None:
        return list(labels)
    missing = [c for c in sample_columns if c not in set(labels)]
    extra = [c for c in labels if c not in set(sample_columns)]
    if missing or extra:
        raise SubmissionFormatError(
            f"sample_submission labels differ from the models' labels: {len(missing)} only in the sample "
            f"submission {missing[:10]}, {len(extra)} only in the models {extra[:10]}; use models trained "
            "on this competition's species list"
        )
    return list(sample_columns)
