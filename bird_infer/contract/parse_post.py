"""Parsing the manifest's ``label_groups``, ``blend`` and ``postprocess`` (:mod:`bird_infer.contract.postprocess`).

``postprocess`` is an ordered list of steps, each ``{"step": KIND, ...parameters}``. The schema-2 object form
``{"smoothing": [...], "file_max_mix": a}`` still loads, as the steps ``smooth`` then ``file_max_mix``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from bird_infer.contract.errors import InvalidFieldError
from bird_infer.contract.fields import bundle_path, choice, get_field, number, positive
from bird_infer.contract.name_pattern import NamePattern
from bird_infer.contract.parse_steps import NEW_KINDS, parse_new_step
from bird_infer.contract.postprocess import (
    BLEND_RULES,
    FILE_SCALE_MODES,
    RANK_SCALES,
    RANK_TIES,
    STEP_KINDS,
    UNMATCHED_PRIOR,
    Blend,
    FileMaxMix,
    FileScale,
    PostProcess,
    Prior,
    Smooth,
    Step,
    step_doc,
)


def parse_label_groups(d: Any, labels: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """``label_groups``: {name: [bundle labels]}; an unknown label is refused."""
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest field 'label_groups' must map group names to lists of labels")
    known = set(labels)
    out = {}
    for name, members in d.items():
        where = f"label_groups[{name!r}]"
        if not isinstance(name, str) or not name.strip():
            raise InvalidFieldError(f"{where}: a group needs a non-empty name")
        if not isinstance(members, list) or not members or not all(isinstance(x, str) for x in members):
            raise InvalidFieldError(f"{where} must be a non-empty list of bundle labels")
        unknown = [x for x in members if x not in known]
        if unknown:
            raise InvalidFieldError(f"{where} names labels the bundle does not have: {unknown[:10]}")
        out[name] = tuple(dict.fromkeys(members))
    return out


def _group(value: Any, groups: dict[str, tuple[str, ...]], where: str) -> str | None:
    if value is None:
        return None
    if value not in groups:
        raise InvalidFieldError(f"{where}: group {value!r} is not in label_groups {sorted(groups)}")
    return str(value)


def _non_negative(value: Any, where: str) -> float:
    x = number(value, where)
    if x < 0:
        raise InvalidFieldError(f"{where} must be >= 0, got {value!r}")
    return x


def parse_blend(d: Any, groups: dict[str, tuple[str, ...]], members: list[str]) -> Blend:
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest field 'blend' must be a JSON object")
    unknown = set(d) - {f.name for f in fields(Blend)}
    if unknown:
        raise InvalidFieldError(f"manifest field 'blend' has unknown keys {sorted(unknown)}")
    rule = choice(d.get("rule", "mean"), BLEND_RULES, "blend.rule")
    power = number(d.get("power", 2.0), "blend.power")
    if not 1e-3 <= power <= 1e3:
        raise InvalidFieldError(f"blend.power must be in [0.001, 1000] (a finite blend), got {power!r}")
    raw = d.get("group_weights", {})
    if not isinstance(raw, dict):
        raise InvalidFieldError("blend.group_weights must map label groups to {member: weight}")
    weights: dict[str, dict[str, float]] = {}
    for group, per_member in raw.items():
        where = f"blend.group_weights[{group!r}]"
        _group(group, groups, where)
        if not isinstance(per_member, dict) or not per_member:
            raise InvalidFieldError(f"{where} must map member names to weights")
        strange = [m for m in per_member if m not in members]
        if strange:
            raise InvalidFieldError(f"{where} names members the bundle does not have: {strange}; it has {members}")
        weights[group] = {m: positive(w, f"{where}[{m!r}]") for m, w in per_member.items()}
    clip = d.get("rank_clip")
    if clip is not None:
        if not isinstance(clip, list) or len(clip) != 2:
            raise InvalidFieldError(f"blend.rank_clip must be [lo, hi] or null, got {clip!r}")
        lo, hi = number(clip[0], "blend.rank_clip[0]"), number(clip[1], "blend.rank_clip[1]")
        if not 0 <= lo < hi <= 1:
            raise InvalidFieldError(f"blend.rank_clip must hold 0 <= lo < hi <= 1, got {clip!r}")
        clip = (lo, hi)
    return Blend(
        rule=rule,
        power=power,
        group_weights=weights,
        rank_scale=choice(d.get("rank_scale", "(rank-1)/n"), RANK_SCALES, "blend.rank_scale"),
        rank_ties=choice(d.get("rank_ties", "average"), RANK_TIES, "blend.rank_ties"),
        rank_clip=clip,
    )


def _kernel(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value or len(value) % 2 == 0:
        raise InvalidFieldError(f"{where} must be an odd-length list of weights, got {value!r}")
    weights = tuple(number(w, where) for w in value)
    if min(weights) < 0 or sum(weights) <= 0:
        raise InvalidFieldError(f"{where} weights must be >= 0 with a positive sum, got {value!r}")
    return weights


def _step(d: Any, i: int, groups: dict[str, tuple[str, ...]], labels: tuple[str, ...], at: str = "postprocess") -> Step:
    where = f"{at}[{i}]"
    kind = get_field(d, "step", where, f"one of {sorted(STEP_KINDS)}")
    if kind not in STEP_KINDS:
        raise InvalidFieldError(f"{where}: unknown step {kind!r}; the steps are {sorted(STEP_KINDS)}")
    where = f"{where} ({kind})"
    allowed = {f.name for f in fields(STEP_KINDS[kind])} | {"step"}
    unknown = set(d) - allowed
    if unknown:
        raise InvalidFieldError(f"{where} has unknown keys {sorted(unknown)}; its fields: {step_doc(kind)}")
    if kind in NEW_KINDS:
        return parse_new_step(kind, d, where, _group, _kernel, labels, groups)
    if kind == "smooth":
        kernel = _kernel(get_field(d, "kernel", where, step_doc(kind)), f"{where}.kernel")
        return Smooth(kernel=kernel, group=_group(d.get("group"), groups, f"{where}.group"))
    if kind == "file_max_mix":
        a = number(get_field(d, "a", where, step_doc(kind)), f"{where}.a")
        if not 0 <= a <= 1:
            raise InvalidFieldError(f"{where}.a must be in [0, 1], got {a!r}")
        return FileMaxMix(a=a)
    if kind == "file_scale":
        k = d.get("k", 3)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidFieldError(f"{where}.k must be a whole number >= 1, got {k!r}")
        return FileScale(
            gamma=_non_negative(get_field(d, "gamma", where, step_doc(kind)), f"{where}.gamma"),
            mode=choice(d.get("mode", "max"), FILE_SCALE_MODES, f"{where}.mode"),
            k=k,
            group=_group(d.get("group"), groups, f"{where}.group"),
        )
    pattern = get_field(d, "pattern", where, step_doc(kind))
    named = set(NamePattern.compile(pattern, f"{where}.pattern").groupindex) if isinstance(pattern, str) else None
    if not named:
        raise InvalidFieldError(f"{where}.pattern must hold named groups, e.g. (?P<site>...), got {pattern!r}")
    table, sha = get_field(d, "table", where), get_field(d, "sha256", where, "the table's sha256")
    if not isinstance(table, str) or not table or not isinstance(sha, str) or not sha:
        raise InvalidFieldError(f"{where}: table and sha256 must be non-empty strings")
    bundle_path(table, f"{where}.table")
    return Prior(
        pattern=pattern,
        table=table,
        sha256=sha,
        beta=_non_negative(d.get("beta", 1.0), f"{where}.beta"),
        unmatched=choice(d.get("unmatched", UNMATCHED_PRIOR), (UNMATCHED_PRIOR,), f"{where}.unmatched"),
    )


def parse_steps(d: Any, groups: dict[str, tuple[str, ...]], labels: tuple[str, ...], at: str) -> tuple[Step, ...]:
    """A member's ``steps`` (``at``: where they are, for messages): a list, as ``postprocess``."""
    if not isinstance(d, list):
        raise InvalidFieldError(f'{at} must be a list of steps, each {{"step": ...}}')
    return tuple(_step(s, i, groups, labels, at) for i, s in enumerate(d))


def parse_postprocess(d: Any, groups: dict[str, tuple[str, ...]], labels: tuple[str, ...] = ()) -> PostProcess:
    """The ordered steps (a list), or schema 2's ``{"smoothing": [...], "file_max_mix": a}``."""
    if isinstance(d, dict):  # schema 2's two fields: smoothing first, then the file-max mix
        unknown = set(d) - {"smoothing", "file_max_mix"}
        if unknown:
            raise InvalidFieldError(f"manifest field 'postprocess' has unknown keys {sorted(unknown)}")
        steps: list[Step] = []
        if d.get("smoothing"):
            steps.append(Smooth(kernel=_kernel(d["smoothing"], "postprocess.smoothing")))
        mix = number(d.get("file_max_mix", 0.0), "postprocess.file_max_mix")
        if not 0 <= mix <= 1:
            raise InvalidFieldError(f"postprocess.file_max_mix must be in [0, 1], got {mix!r}")
        if mix > 0:
            steps.append(FileMaxMix(a=mix))
        return PostProcess(tuple(steps))
    if not isinstance(d, list):
        raise InvalidFieldError("manifest field 'postprocess' must be a list of steps, each {\"step\": ...}")
    return PostProcess(parse_steps(d, groups, labels, "postprocess"))
