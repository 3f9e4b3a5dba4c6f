"""Parsing the steps the 2026 winners use beyond smoothing, file scaling and priors
(:mod:`bird_infer.contract.postprocess`): ``gaussian``, ``adaptive_smooth``, ``temperature``, ``threshold_remap``,
``label_max``. Each may follow the blend (``postprocess``) or belong to a member (its ``steps``, before the blend).
Every message names the field; every parameter is bounded so that the result is finite."""

from __future__ import annotations

from typing import Any

from bird_infer.contract.errors import InvalidFieldError
from bird_infer.contract.fields import get_field, number, positive
from bird_infer.contract.postprocess import (
    AdaptiveSmooth,
    Gaussian,
    LabelMax,
    Step,
    Temperature,
    ThresholdRemap,
    step_doc,
)

NEW_KINDS = ("gaussian", "adaptive_smooth", "temperature", "threshold_remap", "label_max")


def _unit(value: Any, where: str, open_ends: bool = False) -> float:
    x = number(value, where)
    if (open_ends and not 0 < x < 1) or not 0 <= x <= 1:
        raise InvalidFieldError(f"{where} must be in {'(0, 1)' if open_ends else '[0, 1]'}, got {value!r}")
    return x


def parse_new_step(
    kind: str, d: dict, where: str, group, kernel, labels: tuple[str, ...], groups: dict[str, tuple[str, ...]]
) -> Step:
    """One step of :data:`NEW_KINDS` (``group`` and ``kernel``: parse_post's readers of those fields)."""
    doc = step_doc(kind)
    if kind == "gaussian":
        sigma = positive(get_field(d, "sigma", where, doc), f"{where}.sigma")
        radius = d.get("radius", 0)
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0 or radius > 10_000:
            raise InvalidFieldError(f"{where}.radius must be a whole number of rows in [0, 10000], got {radius!r}")
        return Gaussian(sigma=sigma, radius=radius or int(4 * sigma + 0.5), group=group(d.get("group"), groups, where))
    if kind == "adaptive_smooth":
        return AdaptiveSmooth(
            kernel=kernel(get_field(d, "kernel", where, doc), f"{where}.kernel"),
            low=_unit(get_field(d, "low", where, doc), f"{where}.low"),
            high=_unit(get_field(d, "high", where, doc), f"{where}.high"),
            group=group(d.get("group"), groups, where),
        )
    if kind == "temperature":
        t = positive(get_field(d, "t", where, doc), f"{where}.t")
        if not 1e-3 <= t <= 1e3:
            raise InvalidFieldError(f"{where}.t must be in [0.001, 1000] (a finite result), got {t!r}")
        return Temperature(t=t, group=group(d.get("group"), groups, where))
    if kind == "threshold_remap":
        raw = get_field(d, "thresholds", where, doc)
        if not isinstance(raw, dict) or not raw:
            raise InvalidFieldError(f"{where}.thresholds must map bundle labels to thresholds in (0, 1)")
        unknown = [x for x in raw if x not in set(labels)]
        if unknown:
            raise InvalidFieldError(f"{where}.thresholds names labels the bundle does not have: {unknown[:10]}")
        thresholds = {x: _unit(v, f"{where}.thresholds[{x!r}]", open_ends=True) for x, v in raw.items()}
        return ThresholdRemap(thresholds=thresholds, to=_unit(d.get("to", 0.5), f"{where}.to", open_ends=True))
    names = get_field(d, "groups", where, doc)
    if not isinstance(names, list) or not names:
        raise InvalidFieldError(f"{where}.groups must list label_groups names")
    for name in names:
        group(name, groups, f"{where}.groups")
    return LabelMax(groups=tuple(names))
