"""Blending the members: each member's combined probabilities of a row, one per bundle label, into one.

A member's rows come as a stack ``(n_members, n_rows, n_labels)`` float32 in the bundle's label order, NaN where
the member has no such label or gave no finite output for the row. Weights ``(n_members, n_labels)`` come from
:func:`member_weights`: the member's weight, or its weight in a label group (``blend.group_weights``; a label in
several groups takes the last group listed that names the member). A label no member voted for stays NaN (the
caller's fallback).

- ``mean``: ``sum_m w p / sum_m w`` over the members that voted (the default, and the rule before blends);
- ``power``: ``(sum_m w p^k / sum_m w)^(1/k)``;
- ``rank``: each member's column ranked over every row of the run first (:func:`rank_scale`, with the blend's
  ``rank_scale``, ``rank_ties`` and ``rank_clip``), then ``mean``.
"""

from __future__ import annotations

import numpy as np

from bird_infer.contract.bundle import Manifest


def member_weights(manifest: Manifest) -> np.ndarray:
    """(n_members + member stages, n_labels) float64: each member's weight per bundle label, 0 where it lacks the
    label; then each member stage's (:mod:`bird_infer.contract.stages`), in the stack's order."""
    position = {label: j for j, label in enumerate(manifest.labels)}
    stages = manifest.member_stages
    w = np.zeros((len(manifest.members) + len(stages), len(manifest.labels)), dtype=np.float64)
    for k, s in enumerate(stages):
        w[len(manifest.members) + k, [position[x] for x in s.labels]] = s.weight
    for i, m in enumerate(manifest.members):
        w[i, [position[x] for x in m.labels]] = m.weight
    for group, per_member in manifest.blend.group_weights.items():
        cols = [position[x] for x in manifest.label_groups[group]]
        for i, m in enumerate(manifest.members):
            if m.name in per_member:
                has = [c for c in cols if w[i, c] > 0]
                w[i, has] = per_member[m.name]
    return w


def blend(stack: np.ndarray, weights: np.ndarray, rule: str = "mean", power: float = 2.0) -> np.ndarray:
    """The members' weighted ``mean`` (also of ranks) or ``power`` mean: (n_rows, n_labels) float32, NaN where
    no member voted. Members are added in order, in float64."""
    acc = np.zeros(stack.shape[1:], dtype=np.float64)
    wsum = np.zeros_like(acc)
    k = power if rule == "power" else 1.0
    top = weights.max(axis=0, keepdims=True) if weights.size else weights
    weights = np.divide(weights, top, out=np.zeros_like(weights), where=top > 0)  # huge weights cannot overflow
    for p, w in zip(stack, weights, strict=True):
        voted = ~np.isnan(p)
        values = p.astype(np.float64)
        if k != 1.0:
            values = np.power(np.where(voted, values, 0.0), k)
        acc += np.where(voted, w * values, 0.0)
        wsum += np.where(voted, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(wsum > 0, acc / wsum, np.nan)
        if k != 1.0:
            out = np.power(out, 1.0 / k)
    return out.astype(np.float32)


RANKDATA_METHOD = {"average": "average", "min": "min", "max": "max", "dense": "dense", "first": "ordinal"}


def rank_scale(
    values: np.ndarray, scale: str = "(rank-1)/n", ties: str = "average", clip: tuple[float, float] | None = None
) -> np.ndarray:
    """Ranks of ``values`` (n,) scaled: ``(rank - 1) / n`` into [0, 1) (the default) or ``rank / n`` into (0, 1]
    (pandas' ``rank(pct=True)``); ties as pandas' ``method`` (``dense`` divides by the number of distinct values,
    as pandas does); ``clip``: the values clipped into [lo, hi] first."""
    n = values.shape[0]
    if n == 0:
        return values.astype(np.float32)
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    from scipy.stats import rankdata  # deferred: scipy.stats takes ~0.5 s to import, paid by every worker

    ranks = rankdata(values, method=RANKDATA_METHOD[ties])
    denominator = float(ranks.max()) if ties == "dense" else float(n)
    offset = 1.0 if scale == "(rank-1)/n" else 0.0
    return ((ranks - offset) / denominator).astype(np.float32)
