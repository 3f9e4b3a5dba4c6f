"""The submission CSV: ``row_id = <file stem>_<end second>``, then one probability column per label."""

from __future__ import annotations

import csv
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bird_infer.errors import SubmissionFormatError

ROW_ID = "row_id"
FLOAT_FORMAT = "%.6g"  # 6 significant digits keep PROB_MAX (0.999999) strictly below 1


def row_ids(stem: str, n_chunks: int, clip_s: float) -> list[str]:
    """``<stem>_5``, ``<stem>_10``, ... : the end second of each chunk (an integer when clip_s is)."""
    ends = [(i + 1) * clip_s for i in range(n_chunks)]
    return [f"{stem}_{int(e) if float(e).is_integer() else e}" for e in ends]


def safe_text(text: str) -> str:
    """``text`` as printable UTF-8: bytes of a file name that are not UTF-8 (held by Python as surrogate
    escapes) and control characters (a newline in a file name) become ``\\xNN`` escapes, so that
    every name can be written to the CSV and read back unchanged."""
    if text.isprintable() and not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    raw = text.encode("utf-8", "surrogateescape")
    decoded = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in decoded)


def unique_stems(paths: Sequence[Path], root: Path) -> list[str]:
    """The row_id prefix of each file, unique by construction.

    Each file's first choice is its stem. Where stems collide, the path below ``root`` joined by ``-``
    (``siteA/0600.wav`` -> ``siteA-0600``); where that collides too, the same with the extension
    (``a.wav``, ``a.flac``). Whatever still collides (``siteA/0600.wav`` beside a file named
    ``siteA-0600.wav``) gets ``~2``, ``~3``... : a name is only taken when no other file holds it
    and no unique first choice claims it, so no two files ever share a prefix. BirdCLEF stems are
    unique, so there the prefix is always the stem. Names are made printable with :func:`safe_text`.
    """

    def rel(p: Path) -> Path:
        try:
            return p.relative_to(root)
        except ValueError:
            return Path(p.name)

    levels = [
        [safe_text(p.stem) for p in paths],
        [safe_text("-".join(rel(p).with_suffix("").parts) or p.stem) for p in paths],
        [safe_text("-".join(rel(p).parts) or p.name) for p in paths],
    ]
    names = list(levels[0])
    for level in levels[1:]:
        counts = Counter(names)
        names = [level[k] if counts[n] > 1 else n for k, n in enumerate(names)]
    counts = Counter(names)
    reserved = {n for n, c in counts.items() if c == 1}
    taken: set[str] = set()
    out = []
    for n in names:
        name, k = n, 1
        if counts[n] > 1:  # n itself is in no unique first choice; generated names avoid all of them
            while name in taken or (name != n and name in reserved):
                k += 1
                name = f"{n}~{k}"
        taken.add(name)
        out.append(name)
    return out


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


def build_submission(
    stems: Sequence[str],
    probs: Sequence[np.ndarray],
    labels: Sequence[str],
    clip_s: float,
    sample_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per chunk, files in the given order, then time; probs[i] is (n_chunks_i, n_labels)."""
    columns = column_order(labels, sample_columns)
    ids = [rid for stem, p in zip(stems, probs, strict=True) for rid in row_ids(stem, len(p), clip_s)]
    values = np.concatenate(list(probs), axis=0) if probs else np.zeros((0, len(labels)), np.float32)
    df = pd.DataFrame(values, columns=list(labels))[columns]
    df.insert(0, ROW_ID, ids)
    return df


def write_csv_atomic(df: pd.DataFrame, path: str | Path, float_format: str | None = None) -> Path:
    """Write ``df`` via a temporary file of this call's own (two runs writing one path never share it), so
    that a crash never leaves half a CSV and a failed write leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            df.to_csv(f, index=False, float_format=float_format)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_submission(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the submission CSV (atomically; probabilities with 6 significant digits)."""
    return write_csv_atomic(df, path, FLOAT_FORMAT)
