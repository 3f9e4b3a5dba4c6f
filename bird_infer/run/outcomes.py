"""What a run produces per file: a :class:`FileResult` (its rows) or a :class:`FileFailure` (why not), and the
:class:`PartResult` of a segment of a split file. Plain data: always picklable, for the pool and Dask alike."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
    started_at: float = 0.0
    """``time.monotonic()`` when a worker began the file (its first part): one clock for every process of the
    machine, so that the run can say how long it took to reach its first chunk."""
    prior_unmatched: bool = False
    """A ``prior`` step found no row of its table for this file's name: its rows were left unchanged."""
    postprocess_skipped: bool = False
    """The post-processing steps were skipped: the time limit's hard stop came before this file's turn after the
    last file (a rank blend); its rows are the blend, clipped."""
    analysis: Any = None
    """``bird-infer analyze``: the file's :class:`~bird_infer.contract.analyze.FileAnalysis` (its segments, not
    rows: ``probs`` is then empty)."""

    @property
    def n_rows(self) -> int:
        return int(self.probs.shape[0])

    @property
    def n_chunks(self) -> int:
        """Rows that hold predictions."""
        return self.n_rows - self.fallback_rows


@dataclass
class RowSums:
    """A member's sums over rows ``[base, base + len)``: weighted sums (mean) or maxima (max) per label, and the
    weight (or count) that reached each row."""

    reduce: str
    base: int
    values: np.ndarray
    """(rows, labels) float64: weighted sums, or maxima (-inf where nothing reached)."""
    weights: np.ndarray
    """(rows,) float64."""

    @classmethod
    def empty(cls, reduce: str, n_labels: int) -> RowSums:
        fill = -np.inf if reduce == "max" else 0.0
        return cls(reduce, 0, np.full((0, n_labels), fill), np.zeros(0))

    def _grow(self, lo: int, hi: int) -> None:
        """Make room for rows ``[lo, hi)``."""
        if len(self.weights) and lo >= self.base and hi <= self.base + len(self.weights):
            return
        new_lo = lo if not len(self.weights) else min(lo, self.base)
        new_hi = hi if not len(self.weights) else max(hi, self.base + len(self.weights))
        fill = -np.inf if self.reduce == "max" else 0.0
        values = np.full((new_hi - new_lo, self.values.shape[1]), fill)
        weights = np.zeros(new_hi - new_lo)
        if len(self.weights):
            at = self.base - new_lo
            values[at : at + len(self.weights)] = self.values
            weights[at : at + len(self.weights)] = self.weights
        self.base, self.values, self.weights = new_lo, values, weights

    def add(self, rows: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Contributions ``values`` (m, labels) with ``weights`` (m,) to absolute ``rows`` (m,); rows < 0 and
        non-finite values are dropped."""
        ok = (rows >= 0) & np.isfinite(values).all(axis=1)
        if not ok.any():
            return
        rows, values, weights = rows[ok], values[ok].astype(np.float64), weights[ok]
        self._grow(int(rows.min()), int(rows.max()) + 1)
        at = rows - self.base
        if self.reduce == "max":
            np.maximum.at(self.values, at, values)
            np.add.at(self.weights, at, 1.0)
        else:
            np.add.at(self.values, at, weights[:, None] * values)
            np.add.at(self.weights, at, weights)

    def merged(self, other: RowSums) -> RowSums:
        """A new RowSums holding both (neither is changed: parts may be retried or kept)."""
        out = RowSums(self.reduce, self.base, self.values.copy(), self.weights.copy())
        out.merge(other)
        return out

    def merge(self, other: RowSums) -> None:
        if not len(other.weights):
            return
        self._grow(other.base, other.base + len(other.weights))
        at = other.base - self.base
        span = slice(at, at + len(other.weights))
        if self.reduce == "max":
            self.values[span] = np.maximum(self.values[span], other.values)
        else:
            self.values[span] += other.values
        self.weights[span] += other.weights

    def rows(self, n_rows: int) -> np.ndarray:
        """(n_rows, labels) float32 for rows ``[0, n_rows)``: the mean (or maximum); NaN where nothing reached."""
        out = np.full((n_rows, self.values.shape[1]), np.nan, dtype=np.float32)
        lo, hi = max(0, self.base), min(n_rows, self.base + len(self.weights))
        if hi <= lo:
            return out
        w = self.weights[lo - self.base : hi - self.base]
        v = self.values[lo - self.base : hi - self.base]
        reached = w > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            got = v if self.reduce == "max" else v / w[:, None]
        out[lo:hi][reached] = got[reached].astype(np.float32)
        return out


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
    member_rows: tuple[RowSums, ...] = ()
    """Per member, its outputs gathered onto rows (:mod:`bird_infer.run.rows`): a frame-wise member's windows
    reach the rows beside the part's own, so parts are added up before any row is final."""
    decoded_rows: int = 0
    """Rows of audio that decoded in the whole file (``reached_end`` parts only)."""
    extra_rows: tuple[tuple[tuple[int, str], RowSums], ...] = ()
    """((member index, output), sums): backbones' embeddings gathered onto rows, for file-level stages."""


@dataclass(frozen=True)
class FileFailure:
    """A file that got no predictions: why, and after how many tries."""

    path: Path
    reason: str
    attempts: int = 1


Outcome = FileResult | FileFailure


def position_rows(sums: RowSums, n_rows: int, row_s: float, frame_s: float) -> np.ndarray:
    """``position_mean_max``: (n_rows, labels), each row the maximum over the frame positions centred inside it of
    their mean over windows and shifts (``sums`` holds per-position sums); NaN where no position was reached."""
    n_positions = int(np.ceil(n_rows * row_s / frame_s)) + 1
    means = sums.rows(n_positions)  # (positions, labels), NaN where nothing reached
    centres = (np.arange(n_positions) + 0.5) * frame_s
    owner = np.floor(centres / row_s + 1e-9).astype(np.int64)
    out = np.full((n_rows, means.shape[1]), np.nan, dtype=np.float32)
    for r in range(n_rows):
        block = means[owner == r]
        reached = ~np.isnan(block).any(axis=1)
        if reached.any():
            out[r] = block[reached].max(axis=0)
    return out
