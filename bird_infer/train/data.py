"""Training data: the two folder layouts, the fold split, and 5-s clips with multi-hot targets.

Layouts (:func:`load_records`):

- **BirdCLEF**: ``<root>/train_metadata.csv`` (columns ``primary_label``, ``filename``, optional
  ``secondary_labels`` as a Python-list string) and ``<root>/train_audio/<filename>``;
- **folder per class**: ``<root>/<label>/*.ogg|wav|flac|mp3`` (no secondary labels).

The fold split (:func:`make_folds`) is the recipe's: stratified k-fold on the primary label, with
every class of at most ``minor_max`` (5) samples put into the *training* set of every fold (never
validated: too few to split).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bird_infer.audio.decode import audio_info, iter_chunk_blocks
from bird_infer.audio.files import AUDIO_EXTENSIONS
from bird_infer.contract.errors import TrainingDataError
from bird_infer.contract.schema import AudioConfig

MINOR_MAX = 5


@dataclass(frozen=True)
class Record:
    """One training recording."""

    path: Path
    primary_label: str
    secondary_labels: tuple[str, ...] = ()


def _parse_secondary(value: object) -> tuple[str, ...]:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return ()
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        parsed = str(value).split()
    return tuple(str(x) for x in parsed) if isinstance(parsed, list | tuple) else (str(parsed),)


def load_records(root: str | Path) -> list[Record]:
    """Records from either layout (BirdCLEF metadata CSV if present, else one folder per class)."""
    root = Path(root)
    meta = root / "train_metadata.csv"
    if meta.is_file():
        df = pd.read_csv(meta)
        for col in ("primary_label", "filename"):
            if col not in df.columns:
                raise TrainingDataError(f"{meta} has no '{col}' column (BirdCLEF layout)")
        audio = root / "train_audio"
        secondary = df["secondary_labels"] if "secondary_labels" in df.columns else [None] * len(df)
        records = [
            Record(audio / f, str(p), _parse_secondary(s))
            for p, f, s in zip(df["primary_label"], df["filename"], secondary, strict=True)
        ]
    elif root.is_dir():
        records = [
            Record(p, d.name)
            for d in sorted(root.iterdir())
            if d.is_dir()
            for p in sorted(d.iterdir())
            if p.suffix.lower() in AUDIO_EXTENSIONS
        ]
    else:
        raise TrainingDataError(f"training data folder {root} does not exist")
    if not records:
        raise TrainingDataError(
            f"no training recordings under {root}: expected train_metadata.csv + "
            "train_audio/, or one folder of audio files per class"
        )
    missing = [r.path for r in records if not r.path.is_file()]
    if missing:
        raise TrainingDataError(f"{len(missing)} listed files are missing, e.g. {missing[:3]}")
    return records


def make_folds(
    primary: list[str], n_folds: int = 5, seed: int = 42, minor_max: int = MINOR_MAX
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, validation indices) per fold.

    Classes with at most ``minor_max`` samples are in every fold's training set and no validation set;
    the rest are split by ``StratifiedKFold`` on the primary label.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(primary)
    classes, counts = np.unique(labels, return_counts=True)
    minor = set(classes[counts <= minor_max])
    is_minor = np.array([x in minor for x in labels])
    major_idx = np.flatnonzero(~is_minor)
    minor_idx = np.flatnonzero(is_minor)
    if major_idx.size == 0:
        raise TrainingDataError(f"every class has at most {minor_max} samples: nothing to validate on")
    major_counts = counts[counts > minor_max]
    if major_counts.min() < n_folds:  # cannot happen with minor_max >= n_folds - 1; guards other settings
        raise TrainingDataError(f"a class has fewer than {n_folds} samples; raise minor_max or lower n_folds")
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for tr, va in skf.split(major_idx, labels[major_idx]):
        folds.append((np.sort(np.r_[major_idx[tr], minor_idx]), np.sort(major_idx[va])))
    return folds


def multi_hot(record: Record, labels: tuple[str, ...], secondary_weight: float = 1.0) -> np.ndarray:
    """(n_labels,) float32 target: 1 for the primary label, ``secondary_weight`` for secondary ones."""
    index = {x: i for i, x in enumerate(labels)}
    if record.primary_label not in index:
        raise TrainingDataError(f"{record.path}: label {record.primary_label!r} is not in the config's labels")
    y = np.zeros(len(labels), dtype=np.float32)
    for s in record.secondary_labels:
        if s in index:
            y[index[s]] = secondary_weight
    y[index[record.primary_label]] = 1.0
    return y


def load_waveform(path: Path, audio: AudioConfig, max_s: float = 60.0) -> np.ndarray:
    """The first ``max_s`` seconds of a recording, mono float32 at the config's rate."""
    info = audio_info(path)
    keep = int(min(max_s, info.duration_s) * audio.sample_rate)
    blocks, total = [], 0
    for block in iter_chunk_blocks(path, audio, block_chunks=4):
        blocks.append(block.reshape(-1))
        total += blocks[-1].size
        if total >= max_s * audio.sample_rate:
            break
    return np.concatenate(blocks)[: max(1, keep)]


def random_crop(wave: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``n``-sample window (zero-padded if the recording is shorter)."""
    if wave.size <= n:
        return np.pad(wave, (0, n - wave.size))
    start = int(rng.integers(0, wave.size - n + 1))
    return wave[start : start + n]
