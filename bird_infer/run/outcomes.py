"""What a run produces per file: a :class:`FileResult` (its rows) or a :class:`FileFailure` (why not), and the
:class:`PartResult` of a segment of a split file. Plain data: always picklable, for the pool and Dask alike."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent per stage for one file."""

    decode_s: float = 0.0
    frontend_s: float = 0.0
    model_s: float = 0.0

    @property
    def busy_s(self) -> float:
        return self.decode_s + self.frontend_s + self.model_s

    @classmethod
    def total(cls, times: Iterable[StageTimes]) -> StageTimes:
        """The sum of ``times``, stage by stage."""
        times = list(times)
        return cls(*(sum(getattr(t, f.name) for t in times) for f in fields(cls)))


@dataclass(frozen=True)
class FileResult:
    """Rows for one file: ``probs`` (n_rows, n_labels) float32, in [0, 1).

    Most files have every row predicted. A file cut short (or whose header claims more than decodes)
    has its claimed rows past the decoded audio filled with :data:`FALLBACK_PROB`, and a chunk on
    which no fold gave finite outputs too; ``fallback_rows`` counts them and ``notes`` say why.
    """

    path: Path
    probs: np.ndarray
    times: StageTimes = field(default_factory=StageTimes)
    n_folds: int = 0
    """Folds averaged for this file (fewer than the manifest's when the deadline guard degraded it)."""
    attempts: int = 1
    peak_mb: float = 0.0
    """Peak resident memory of the process that predicted the file, in MiB, when it finished."""
    fallback_rows: int = 0
    """Rows holding the fallback instead of a prediction."""
    excluded_folds: tuple[tuple[str, int], ...] = ()
    """(fold name, chunks) for folds left out of some chunks because their outputs were NaN or inf."""
    notes: tuple[str, ...] = ()
    """What happened to this file beyond plain prediction (for the error report)."""
    duration_s: float = 0.0
    """Seconds of audio that decoded (field tables run their times on across files by it)."""
    parts: int = 1
    """Segments the file was predicted in, by different workers (:mod:`bird_infer.run.segments`)."""
    member_probs: np.ndarray | None = None
    """Kept when the run needs every row before the blend (a ``rank`` blend, ``bird-infer tune``): each member's
    rows before the blend, (n_members, n_rows, n_labels) float32, NaN where a member has no vote; ``probs`` then
    holds the weighted mean, not yet post-processed."""
    predicted: np.ndarray | None = None
    """(n_rows,) bool: the rows that hold predictions (the others hold the fallback); None: every row."""
    prior_unmatched: bool = False
    """A ``prior`` step found no row of its table for this file's name: its rows were left unchanged."""

    @property
    def n_rows(self) -> int:
        return int(self.probs.shape[0])

    @property
    def n_chunks(self) -> int:
        """Rows that hold predictions."""
        return self.n_rows - self.fallback_rows


@dataclass(frozen=True)
class PartResult(FileResult):
    """Rows ``[first_row, ...)`` of a file as one worker predicted them (see :mod:`bird_infer.run.segments`):
    combined probabilities before the fallback and post-processing, NaN where no fold was finite."""

    first_row: int = 0
    reached_end: bool = True
    """The part read the file to its end: the reader's figures below are the file's."""
    reader_rows: int = 0
    """Rows the file gets (what decoded, or the header's claim when longer)."""
    reader_notes: tuple[str, ...] = ()
    bad_chunks: tuple[tuple[int, ...], ...] = ()
    """Per member, per kept fold: chunks on which that fold's outputs were left out (NaN or inf)."""


@dataclass(frozen=True)
class FileFailure:
    """A file that got no predictions: why, and after how many tries."""

    path: Path
    reason: str
    attempts: int = 1


Outcome = FileResult | FileFailure
