"""The submission CSV: ``row_id = <file stem>_<end second>``, then one probability column per label."""

from __future__ import annotations

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


def unique_stems(paths: Sequence[Path], root: Path) -> list[str]:
    """The row_id prefix of each file: its stem, or, where stems collide, its path below ``root``.

    BirdCLEF stems are unique, so there the prefix is always the stem. Field recordings often repeat
    names across folders (``siteA/0600.wav``, ``siteB/0600.wav``): those become ``siteA-0600`` and
    ``siteB-0600`` so that no two rows share a row_id. If that still collides (``a.wav`` and
    ``a.flac`` side by side), the extension is kept too (``a.wav``). Non-ASCII names are kept as they are.
    """
    stems = [p.stem for p in paths]
    counts = Counter(stems)
    out = []
    for p, stem in zip(paths, stems, strict=True):
        if counts[stem] == 1:
            out.append(stem)
            continue
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = p
        out.append("-".join(rel.with_suffix("").parts))
    counts = Counter(out)
    return [
        "-".join(p.relative_to(root).parts) if counts[s] > 1 and p.is_relative_to(root) else s
        for p, s in zip(paths, out, strict=True)
    ]


def read_sample_columns(path: str | Path) -> list[str]:
    """Label columns of a sample_submission.csv, in its order (only the header is read)."""
    header = pd.read_csv(path, nrows=0).columns.tolist()
    if not header or header[0] != ROW_ID:
        raise SubmissionFormatError(f"{path}: first column must be '{ROW_ID}', got {header[:1]}")
    return header[1:]


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
    """Write ``df`` via a temporary file, so that a crash never leaves half a CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False, float_format=float_format)
    tmp.replace(path)
    return path


def write_submission(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the submission CSV (atomically; probabilities with 6 significant digits)."""
    return write_csv_atomic(df, path, FLOAT_FORMAT)
