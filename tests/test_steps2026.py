"""The 2026 winners' steps and conventions against naive references (issue 28): gaussian smoothing with edge
padding (scipy), adaptive smoothing, temperature, per-label threshold remaps, label-group max pooling, rank
conventions (pandas' rank), many-to-one label maps, and per-member steps parsed and written back."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter1d

from bird_infer.contract.errors import InvalidFieldError
from bird_infer.contract.manifest import manifest_from_dict
from bird_infer.run.postprocess import adaptive_smooth, gaussian_rows, label_max, temperature, threshold_remap
from bird_infer.runtime.blend import rank_scale
from bird_infer.runtime.ensemble import reduce_labels

RNG = np.random.default_rng(11)


@pytest.mark.parametrize("n", [1, 2, 7, 40])
@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
def test_gaussian_equals_scipy_with_nearest_edges(n, sigma) -> None:
    p = RNG.uniform(size=(n, 5)).astype(np.float32)
    radius = int(4 * sigma + 0.5)
    want = gaussian_filter1d(p.astype(np.float64), sigma, axis=0, mode="nearest", truncate=radius / sigma)
    assert np.abs(gaussian_rows(p, np.ones(n, bool), sigma, radius) - want).max() <= 1e-6


def test_gaussian_leaves_fallback_rows_out_and_renormalises() -> None:
    p = RNG.uniform(size=(6, 3)).astype(np.float32)
    valid = np.array([1, 1, 0, 1, 1, 1], bool)
    got = gaussian_rows(p, valid, 1.0, 2)
    assert (got[2] == p[2]).all()
    t = np.arange(-2, 3)
    w = np.exp(-0.5 * t**2)
    i = 1
    src = np.clip(i + t, 0, 5)
    ok = valid[src]
    want = (w[ok, None] * p[src[ok]]).sum(0) / w[ok].sum()
    assert np.abs(got[i] - want).max() <= 1e-6


def test_adaptive_smoothing_follows_the_row_max() -> None:
    p = RNG.uniform(size=(9, 4)).astype(np.float32)
    kernel = (0.25, 0.5, 0.25)
    got = adaptive_smooth(p, np.ones(9, bool), kernel, 0.1, 0.9)
    for i in range(9):
        nb = [j for j in (i - 1, i, i + 1) if 0 <= j < 9]
        ws = [kernel[j - i + 1] for j in nb]
        smooth = sum(w * p[j].astype(np.float64) for w, j in zip(ws, nb, strict=True)) / sum(ws)
        a = 0.1 + 0.8 * p[i].max()
        assert np.abs(got[i] - ((1 - a) * p[i] + a * smooth)).max() <= 1e-6


def test_temperature_threshold_remap_and_label_max() -> None:
    p = RNG.uniform(0.001, 0.999, size=(5, 4)).astype(np.float32)
    valid = np.ones(5, bool)
    t = temperature(p, valid, 1.7)
    logit = np.log(p.astype(np.float64) / (1 - p))
    assert np.abs(t - 1 / (1 + np.exp(-logit / 1.7))).max() <= 1e-6
    cols, th = np.array([1, 3]), np.array([0.2, 0.7])
    r = threshold_remap(p, valid, cols, th, 0.5)
    for c, h in zip(cols, th, strict=True):
        x = p[:, c].astype(np.float64)
        want = np.where(x < h, 0.5 * x / h, 0.5 + 0.5 * (x - h) / (1 - h))
        assert np.abs(r[:, c] - want).max() <= 1e-6
    assert (r[:, [0, 2]] == p[:, [0, 2]]).all()
    pooled = label_max(p, valid, [np.array([0, 2]), np.array([1, 3])])
    assert (pooled[:, 0] == np.maximum(p[:, 0], p[:, 2])).all() and (pooled[:, 3] == pooled[:, 1]).all()


@pytest.mark.parametrize("ties", ["average", "min", "max", "dense", "first"])
@pytest.mark.parametrize("scale", ["(rank-1)/n", "rank/n"])
def test_rank_conventions_equal_pandas(ties, scale) -> None:
    x = np.round(RNG.uniform(size=50), 1).astype(np.float32)  # many ties
    got = rank_scale(x, scale, ties)
    ranks = pd.Series(x).rank(method=ties, pct=True).to_numpy()
    if scale == "(rank-1)/n":
        denominator = len(np.unique(x)) if ties == "dense" else len(x)
        ranks = ranks - 1 / denominator
    assert np.abs(got - ranks).max() <= 1e-6


def test_rank_clip_makes_ties_at_the_clip() -> None:
    x = np.array([0.0, 1e-9, 0.3, 0.99999, 1.0], np.float32)
    got = rank_scale(x, "rank/n", "average", (1e-5, 1 - 1e-5))
    want = pd.Series(np.clip(x, 1e-5, 1 - 1e-5)).rank(pct=True).to_numpy()
    assert np.abs(got - want).max() <= 1e-7 and got[0] == got[1] and got[3] == got[4]


@pytest.mark.parametrize("rule", ["max", "mean", "any"])
def test_many_model_classes_reduce_onto_one_label(rule) -> None:
    y = RNG.uniform(size=(3, 7, 6)).astype(np.float32)  # (batch, frames, classes)
    groups = [np.array([0, 4]), np.array([2]), np.array([1, 3, 5])]
    got = reduce_labels(y, groups, rule)
    for j, cols in enumerate(groups):
        p = y[..., cols].astype(np.float64)
        want = {"max": p.max(-1), "mean": p.mean(-1), "any": 1 - np.prod(1 - p, -1)}[rule]
        assert np.abs(got[..., j] - want).max() <= 1e-6


def _manifest(member_extra: dict, blend: dict | None = None) -> dict:
    fold = {
        "name": "f",
        "file": "f.onnx",
        "sha256": "x",
        "input": {"name": "wave", "shape": ["batch", 160000]},
        "clipwise": {"name": "probs", "shape": ["batch", 6]},
    }
    member = {
        "name": "m",
        "labels": ["a", "b", "c"],
        "audio": {"sample_rate": 32000, "clip_s": 5.0},
        "frontend": {"kind": "waveform"},
        "folds": [fold],
        **member_extra,
    }
    d = {"schema_version": 2, "labels": ["a", "b", "c"], "members": [member], "label_groups": {"g": ["a", "b"]}}
    if blend:
        d["blend"] = blend
    return d


def test_member_steps_maps_and_rank_fields_round_trip() -> None:
    from pathlib import Path

    extra = {
        "output_index": [[0, 3], 1, [2, 4, 5]],
        "label_reduce": "any",
        "steps": [
            {"step": "gaussian", "sigma": 1.0},
            {"step": "temperature", "t": 1.3, "group": "g"},
            {"step": "threshold_remap", "thresholds": {"a": 0.3}},
            {"step": "label_max", "groups": ["g"]},
            {"step": "adaptive_smooth", "kernel": [0.2, 0.6, 0.2], "low": 0.1, "high": 0.6},
        ],
    }
    blend = {"rule": "rank", "rank_scale": "rank/n", "rank_ties": "min", "rank_clip": [1e-5, 0.99999]}
    m = manifest_from_dict(_manifest(extra, blend), Path("."))
    again = manifest_from_dict(json.loads(json.dumps(m.to_dict())), Path("."))
    assert again == m and again.members[0].output_index == ((0, 3), 1, (2, 4, 5))
    assert [s.kind for s in again.members[0].steps][:2] == ["gaussian", "temperature"]
    assert again.members[0].steps[0].radius == 4 and again.blend.rank_clip == (1e-5, 0.99999)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"steps": [{"step": "temperature", "t": 0}]}, "positive"),
        ({"steps": [{"step": "threshold_remap", "thresholds": {"zz": 0.5}}]}, "does not have"),
        ({"steps": [{"step": "threshold_remap", "thresholds": {"a": 1.0}}]}, r"\(0, 1\)"),
        ({"steps": [{"step": "label_max", "groups": ["nope"]}]}, "not in label_groups"),
        ({"steps": [{"step": "adaptive_smooth", "kernel": [1, 1], "low": 0, "high": 1}]}, "odd-length"),
        ({"output_index": [[0, "x"], 1, 2]}, "output_index entries"),
        ({"label_reduce": "median"}, "label_reduce"),
    ],
)
def test_bad_member_steps_and_maps_are_refused_by_name(extra, message) -> None:
    from pathlib import Path

    with pytest.raises(InvalidFieldError, match=message):
        manifest_from_dict(_manifest(extra), Path("."))
