"""The post-processing steps (the manifest's ``postprocess``, :mod:`bird_infer.contract.postprocess`), each a pure
numpy function on one file's rows ``probs`` (n, L) with ``valid`` (n,) marking the rows that hold predictions.
Fallback rows are neither used nor changed; a group restricts a step to that label group's columns.

1. ``smooth``: ``p'[i] = sum_t w[t] p[i + t - h] / sum_t w[t]`` over the rows ``i + t - h`` that exist and hold
   predictions (``h = len(w) // 2``). At a file's edges, and next to fallback rows, the missing neighbours are
   left out and the remaining weights renormalised.
2. ``file_max_mix``: ``p' = (1 - a) p + a max_file(p)``, the maximum over the file's predicted rows.
3. ``file_scale``: ``p' = p * s^g``, ``s = max_file(p)`` (``max``) or the mean of the file's ``k`` highest
   (``topk``), per label.
4. ``prior``: ``p' = p * prior^b``, the prior the row of the table whose keys equal the named groups of the
   pattern matched in the file's stem; no match leaves the rows unchanged (and says so).
5. ``gaussian``: weights ``exp(-t^2 / 2 sigma^2)``, ``|t| <= radius``, the file's edges padded with the edge row.
6. ``adaptive_smooth``: ``(1 - a) p + a smooth(p)``, ``a = low + (high - low) max_j p[i, j]``.
7. ``temperature``: ``sigmoid(logit(p) / t)``.
8. ``threshold_remap``: ``[0, th]`` onto ``[0, to]`` and ``[th, 1]`` onto ``[to, 1]``, per label.
9. ``label_max``: every label of a group takes the group's row maximum.

A member's own ``steps`` run on its rows (NaN in the columns of labels it lacks, which stay NaN) before the blend,
with the same functions (:mod:`bird_infer.run.segments`).

:class:`PostProcessor` holds a bundle's steps with their prior tables read (once per process) and applies them in
order, then clips into ``[0, PROB_MAX]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.files import PriorTable, load_prior_table
from bird_infer.contract.name_pattern import NamePattern, PatternTimeoutError
from bird_infer.contract.postprocess import (
    AdaptiveSmooth,
    FileMaxMix,
    FileScale,
    Gaussian,
    LabelMax,
    Prior,
    Smooth,
    Step,
    Temperature,
    ThresholdRemap,
)
from bird_infer.contract.schema import PROB_MAX


def smooth_rows(probs: np.ndarray, valid: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """(n, L) -> (n, L): the weighted mean over each valid row's valid neighbours (see the module docstring)."""
    n = probs.shape[0]
    h = len(weights) // 2
    top = max(weights)
    weights = tuple(w / top for w in weights)  # scaled to at most 1: huge finite weights cannot overflow the sums
    acc = np.zeros(probs.shape, dtype=np.float64)
    wsum = np.zeros((n, 1), dtype=np.float64)
    for t, w in enumerate(weights):
        shift = t - h  # neighbour j = i + shift
        lo, hi = max(0, -shift), min(n, n - shift)
        if lo >= hi or w == 0:
            continue
        src = slice(lo + shift, hi + shift)
        ok = valid[src][:, None]
        acc[lo:hi] += np.where(ok, w * probs[src].astype(np.float64), 0.0)
        wsum[lo:hi] += np.where(ok, w, 0.0)
    out = probs.astype(np.float64).copy()
    rows = valid & (wsum[:, 0] > 0)
    out[rows] = acc[rows] / wsum[rows]
    return out.astype(np.float32)


def file_max_mix(probs: np.ndarray, valid: np.ndarray, a: float) -> np.ndarray:
    """``(1 - a) p + a max_file(p)`` on the valid rows."""
    if a <= 0 or not valid.any():
        return probs
    peak = probs[valid].max(axis=0).astype(np.float64)
    mixed = ((1 - a) * probs.astype(np.float64) + a * peak).astype(np.float32)
    return np.where(valid[:, None], mixed, probs)


def file_scale(probs: np.ndarray, valid: np.ndarray, gamma: float, mode: str = "max", k: int = 3) -> np.ndarray:
    """``p * s^gamma`` on the valid rows, ``s`` per label: the file's maximum, or the mean of its ``k`` highest."""
    if not valid.any():
        return probs
    rows = probs[valid].astype(np.float64)
    if mode == "max":
        s = rows.max(axis=0)
    else:
        top = min(k, rows.shape[0])
        s = np.sort(rows, axis=0)[-top:].mean(axis=0)
    scaled = (probs.astype(np.float64) * np.power(s, gamma)).astype(np.float32)
    return np.where(valid[:, None], scaled, probs)


def apply_prior(probs: np.ndarray, valid: np.ndarray, prior: np.ndarray, beta: float) -> np.ndarray:
    """``p * prior^beta`` on the valid rows; ``prior`` (L,) multipliers."""
    scaled = (probs.astype(np.float64) * np.power(prior.astype(np.float64), beta)).astype(np.float32)
    return np.where(valid[:, None], scaled, probs)


def gaussian_rows(probs: np.ndarray, valid: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    """(n, L) -> (n, L): Gaussian weights ``exp(-t^2 / 2 sigma^2)`` over ``t in [-radius, radius]``, a neighbour
    past the file's edge taken as the edge row (scipy's ``mode="nearest"``), fallback rows left out and the
    weights renormalised."""
    n = probs.shape[0]
    t = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (t / sigma) ** 2)
    acc = np.zeros(probs.shape, dtype=np.float64)
    wsum = np.zeros((n, 1), dtype=np.float64)
    rows = np.arange(n)
    for shift, w in zip(t, weights, strict=True):
        src = np.clip(rows + shift, 0, n - 1)
        ok = valid[src][:, None]
        acc += np.where(ok, w * probs[src].astype(np.float64), 0.0)
        wsum += np.where(ok, w, 0.0)
    out = probs.astype(np.float64).copy()
    keep = valid & (wsum[:, 0] > 0)
    out[keep] = acc[keep] / wsum[keep]
    return out.astype(np.float32)


def adaptive_smooth(
    probs: np.ndarray, valid: np.ndarray, kernel: tuple[float, ...], low: float, high: float
) -> np.ndarray:
    """``(1 - a) p + a smooth(p)``, ``a = low + (high - low) * max_j p[i, j]`` per row (NaN columns ignored)."""
    if not valid.any():
        return probs
    smoothed = smooth_rows(probs, valid, kernel).astype(np.float64)
    with np.errstate(all="ignore"):
        peak = np.nan_to_num(np.nanmax(np.where(np.isnan(probs), -np.inf, probs), axis=1), neginf=0.0)
    a = (low + (high - low) * peak.astype(np.float64))[:, None]
    mixed = ((1 - a) * probs.astype(np.float64) + a * smoothed).astype(np.float32)
    return np.where(valid[:, None], mixed, probs)


LOGIT_EPS = 1e-7


def temperature(probs: np.ndarray, valid: np.ndarray, t: float) -> np.ndarray:
    """``sigmoid(logit(p) / t)`` on the valid rows, ``p`` clipped into ``[1e-7, 1 - 1e-7]`` first (float64)."""
    p = np.clip(probs.astype(np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
    scaled = 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / t))
    return np.where(valid[:, None] & ~np.isnan(probs), scaled.astype(np.float32), probs)


def threshold_remap(probs: np.ndarray, valid: np.ndarray, cols: np.ndarray, th: np.ndarray, to: float) -> np.ndarray:
    """Columns ``cols`` remapped piecewise linearly: ``[0, th]`` onto ``[0, to]``, ``[th, 1]`` onto ``[to, 1]``."""
    out = probs.copy()
    p = probs[:, cols].astype(np.float64)
    low = p * (to / th)
    high = to + (p - th) * ((1 - to) / (1 - th))
    mapped = np.where(p < th, low, high).astype(np.float32)
    out[:, cols] = np.where(valid[:, None], mapped, probs[:, cols])
    return out


def label_max(probs: np.ndarray, valid: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Each group's columns set to the group's row maximum (NaN columns ignored; a column that is NaN stays so)."""
    out = probs.copy()
    for cols in groups:
        block = probs[:, cols]
        with np.errstate(all="ignore"):
            peak = np.nanmax(np.where(np.isnan(block), -np.inf, block), axis=1)
        pooled = np.where(np.isnan(block), np.nan, peak[:, None]).astype(np.float32)
        out[:, cols] = np.where(valid[:, None], pooled, block)
    return out


def _on_columns(probs: np.ndarray, cols: np.ndarray | None, fn) -> np.ndarray:
    """``fn`` applied to the columns ``cols`` only (None: all)."""
    if cols is None:
        return fn(probs)
    out = probs.copy()
    out[:, cols] = fn(probs[:, cols])
    return out


@dataclass(frozen=True)
class _Lookup:
    """A prior step ready to use: its compiled pattern and its table as arrays."""

    step: Prior
    pattern: NamePattern
    keys: tuple[str, ...]
    rows: dict[tuple[str, ...], np.ndarray]

    def prior_for(self, path: Path) -> tuple[np.ndarray | None, str]:
        """The file's prior row, or None and why not: no match, no row for its groups, or a match that ran past
        the bound (:mod:`bird_infer.contract.name_pattern`)."""
        try:
            m = self.pattern.search(path.stem)
        except PatternTimeoutError as e:
            return None, str(e)
        if m is None:
            return None, f"the name {path.stem!r} does not match {self.pattern.text!r}"
        key = tuple(m.group(k) or "" for k in self.keys)
        row = self.rows.get(key)
        return row, "" if row is not None else f"no row for the name {path.stem!r} (keys {key})"


class PostProcessor:
    """A bundle's post-processing, ready to apply: label groups resolved to columns, prior tables read and checked
    (:func:`~bird_infer.contract.files.load_prior_table`). Built once per process."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.position = position = {label: j for j, label in enumerate(manifest.labels)}
        self.columns = {g: np.array([position[x] for x in xs]) for g, xs in manifest.label_groups.items()}
        self.lookups: dict[int, _Lookup] = {}
        member_steps = [s for m in manifest.members for s in m.steps]
        for i, step in enumerate((*manifest.postprocess.steps, *member_steps)):
            if isinstance(step, Prior):
                table: PriorTable = load_prior_table(manifest, step)
                rows = {k: np.asarray(v, dtype=np.float32) for k, v in table.rows.items()}
                pattern = NamePattern.compile(step.pattern, check=False)  # checked at parse; bounded at each match
                self.lookups[i] = _Lookup(step, pattern, table.keys, rows)

    @property
    def active(self) -> bool:
        return self.manifest.postprocess.active

    def apply(self, probs: np.ndarray, valid: np.ndarray, path: Path, steps: tuple[Step, ...] | None = None):
        """One file's rows after every step (``steps``: the manifest's by default), clipped into [0, PROB_MAX].
        Returns (rows (n, L) float32, notes: what a step could not do for this file)."""
        notes: list[str] = []
        out = probs
        for i, step in enumerate(self.manifest.postprocess.steps if steps is None else steps):
            cols = self.columns.get(getattr(step, "group", None) or "")
            if isinstance(step, Smooth):
                out = _on_columns(out, cols, lambda p, s=step: smooth_rows(p, valid, s.kernel))
            elif isinstance(step, FileMaxMix):
                out = file_max_mix(out, valid, step.a)
            elif isinstance(step, FileScale):
                out = _on_columns(out, cols, lambda p, s=step: file_scale(p, valid, s.gamma, s.mode, s.k))
            elif isinstance(step, Gaussian):
                out = _on_columns(out, cols, lambda p, s=step: gaussian_rows(p, valid, s.sigma, s.radius))
            elif isinstance(step, AdaptiveSmooth):
                out = _on_columns(out, cols, lambda p, s=step: adaptive_smooth(p, valid, s.kernel, s.low, s.high))
            elif isinstance(step, Temperature):
                out = _on_columns(out, cols, lambda p, s=step: temperature(p, valid, s.t))
            elif isinstance(step, ThresholdRemap):
                where = np.array([self.position[x] for x in step.thresholds])
                th = np.array(list(step.thresholds.values()), dtype=np.float64)
                out = threshold_remap(out, valid, where, th, step.to)
            elif isinstance(step, LabelMax):
                out = label_max(out, valid, [self.columns[g] for g in step.groups])
            else:
                lookup = self.lookups.get(i) if steps is None else self._lookup(step)
                prior, why = lookup.prior_for(path) if lookup is not None else (None, "no table")
                if prior is None:
                    notes.append(f"prior {step.table}: {why}; rows left unchanged")
                else:
                    out = apply_prior(out, valid, prior, step.beta)
        # every cell finite and in [0, PROB_MAX] whatever finite parameters the manifest holds: a NaN (0 x inf) is
        # no evidence (0), an overflow is the most (PROB_MAX)
        finite = np.nan_to_num(out.astype(np.float64), nan=0.0, posinf=PROB_MAX, neginf=0.0)
        voted = valid[:, None] & ~np.isnan(probs)  # a member's columns without a vote stay NaN
        return np.where(voted, np.clip(finite, 0.0, PROB_MAX), out).astype(np.float32), notes

    def _lookup(self, step: Prior) -> _Lookup | None:
        """The lookup of a step given by the caller (``tune``'s candidates): the manifest's step with its table."""
        return next((lk for lk in self.lookups.values() if lk.step.table == step.table), None)
