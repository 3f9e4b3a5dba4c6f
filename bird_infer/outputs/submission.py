"""The submission CSV: ``row_id = <file stem>_<end second>``, then one probability column per label, in the
sample submission's order (:mod:`bird_infer.contract.sample`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bird_infer.contract.sample import ROW_ID, column_order
from bird_infer.outputs.atomic import write_csv_atomic

FLOAT_FORMAT = "%.6g"  # 6 significant digits keep PROB_MAX (0.999999) strictly below 1


def row_ids(stem: str, n_chunks: int, clip_s: float) -> list[str]:
    """``<stem>_5``, ``<stem>_10``, ... : the end second of each chunk (an integer when clip_s is)."""
    ends = [(i + 1) * clip_s for i in range(n_chunks)]
    return [f"{stem}_{int(e) if float(e).is_integer() else e}" for e in ends]


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


def write_submission(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the submission CSV (atomically; probabilities with 6 significant digits)."""
    return write_csv_atomic(df, path, FLOAT_FORMAT)
