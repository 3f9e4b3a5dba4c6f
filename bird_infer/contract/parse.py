"""The manifest as data: a parsed JSON dict checked field by field and turned into a :class:`Manifest` (no file
access). Schema 2 holds one or more members (see :mod:`bird_infer.contract.schema`); schema 1 (one model
family: ``labels``, ``audio``, ``frontend``, ``folds``, ``ensemble``) still loads, as one member named
``default`` of weight 1, with identical outputs. Every message names the field and says what to fix.

The field parsers (:func:`parse_audio`, :func:`parse_frontend`...) are shared with the training config
(:mod:`bird_infer.contract.training_config`).
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from bird_infer.contract.errors import (
    InvalidFieldError,
    LabelCountMismatchError,
    MissingFieldError,
    ModelShapeError,
    SchemaVersionError,
)
from bird_infer.contract.fields import choice, get_field, number, positive
from bird_infer.contract.parse_post import parse_blend, parse_label_groups, parse_postprocess
from bird_infer.contract.schema import (
    COMBINE_RULES,
    ENSEMBLE_OUTPUTS,
    FRONTEND_KINDS,
    MEL_NORMS,
    MEL_SCALES,
    NORMALIZATIONS,
    PAD_MODES,
    RESAMPLERS,
    RESERVED_COLUMN,
    AudioConfig,
    BirdnetSpec,
    EnsembleConfig,
    FoldSpec,
    FrontendConfig,
    Manifest,
    Member,
    ModelConfig,
    QuantizedSpec,
    SpeciesName,
    TensorSpec,
    field_doc,
)

SUPPORTED_SCHEMAS = (1, 2)


def parse_audio(d: Any) -> AudioConfig:
    sr = positive(get_field(d, "sample_rate", "audio", field_doc(AudioConfig, "sample_rate")), "audio.sample_rate", int)
    clip_s = positive(get_field(d, "clip_s", "audio", field_doc(AudioConfig, "clip_s")), "audio.clip_s")
    if not math.isclose(sr * clip_s, round(sr * clip_s)):
        raise InvalidFieldError("audio.sample_rate * audio.clip_s must be a whole number of samples")
    resampler = choice(d.get("resampler", "soxr_hq"), tuple(RESAMPLERS), "audio.resampler")
    return AudioConfig(sample_rate=sr, clip_s=clip_s, resampler=resampler)


def parse_frontend(d: Any, sample_rate: int) -> FrontendConfig:
    v = {f.name: get_field(d, f.name, "frontend", field_doc(FrontendConfig, f.name)) for f in fields(FrontendConfig)}
    v.pop("kind", None)
    for key in ("n_fft", "win_length", "hop_length", "n_mels"):
        v[key] = positive(v[key], f"frontend.{key}", int)
    for key in ("fmax", "amin", "ref", "power"):
        v[key] = positive(v[key], f"frontend.{key}")
    v["fmin"] = number(v["fmin"], "frontend.fmin")
    if not 0 <= v["fmin"] < v["fmax"] <= sample_rate / 2:
        raise InvalidFieldError(
            f"frontend.fmin/fmax must satisfy 0 <= fmin < fmax <= sample_rate / 2 = {sample_rate / 2}, "
            f"got {v['fmin']} and {v['fmax']}"
        )
    if v["win_length"] > v["n_fft"]:
        raise InvalidFieldError("frontend.win_length must not exceed frontend.n_fft")
    if v["power"] not in (1.0, 2.0):
        raise InvalidFieldError(f"frontend.power must be 1.0 or 2.0, got {v['power']}")
    if v["window"] != "hann":
        raise InvalidFieldError(f"frontend.window is {v['window']!r}; only 'hann' (periodic) is supported")
    if not isinstance(v["center"], bool):
        raise InvalidFieldError("frontend.center must be true or false")
    v["pad_mode"] = choice(v["pad_mode"], PAD_MODES, "frontend.pad_mode")
    v["mel_scale"] = choice(v["mel_scale"], MEL_SCALES, "frontend.mel_scale")
    v["mel_norm"] = choice(v["mel_norm"], MEL_NORMS, "frontend.mel_norm")
    v["normalize"] = choice(v["normalize"], NORMALIZATIONS, "frontend.normalize")
    if v["top_db"] is not None:
        v["top_db"] = positive(v["top_db"], "frontend.top_db")
    return FrontendConfig(**v)


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


def _parse_fold(d: Any, i: int, where_member: str = "", input_rank: int = 3) -> FoldSpec:
    where = f"{where_member}folds[{i}]"
    seg = d.get("segmentwise") if isinstance(d, dict) else None
    return FoldSpec(
        name=str(get_field(d, "name", where)),
        file=str(get_field(d, "file", where, "the ONNX file name, relative to manifest.json")),
        sha256=str(get_field(d, "sha256", where, "re-run `bird-infer export` to record it")),
        input=_parse_tensor(get_field(d, "input", where), f"{where}.input", input_rank),
        clipwise=_parse_tensor(get_field(d, "clipwise", where), f"{where}.clipwise", 2),
        segmentwise=None if seg is None else _parse_tensor(seg, f"{where}.segmentwise", 3),
        int8=_parse_quantized(d.get("int8"), f"{where}.int8"),
    )


def _parse_quantized(d: Any, where: str) -> QuantizedSpec | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise InvalidFieldError(f"{where} must be a JSON object (written by `bird-infer quantize`)")
    values = {k: get_field(d, k, where) for k in ("file", "sha256", "weights", "weights_sha256")}
    if any(not isinstance(v, str) or not v for v in values.values()):
        raise InvalidFieldError(f"{where}: file, sha256, weights and weights_sha256 must be non-empty strings")
    return QuantizedSpec(**values, calibration=str(d.get("calibration", "")))


def parse_ensemble(d: Any) -> EnsembleConfig:
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest field 'ensemble' must be a JSON object")
    return EnsembleConfig(
        combine=choice(d.get("combine", "mean"), COMBINE_RULES, "ensemble.combine"),
        output=choice(d.get("output", "clipwise"), ENSEMBLE_OUTPUTS, "ensemble.output"),
    )


def parse_model(d: Any) -> ModelConfig:
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest field 'model' must be a JSON object")
    unknown = set(d) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise InvalidFieldError(f"manifest field 'model' has unknown keys {sorted(unknown)}")
    return ModelConfig(**d)


def check_labels(labels: Any, where: str) -> tuple[str, ...]:
    """Labels are the CSV's column names: a non-empty list of distinct, non-empty strings, none ``row_id``.

    Numeric-looking labels (``"1139490"``) must be strings in the JSON, as they are in the CSV header.
    """
    if not isinstance(labels, (list, tuple)) or not labels:
        raise InvalidFieldError(f"{where} must be a non-empty list of strings")
    bad = [x for x in labels if not isinstance(x, str) or not x.strip() or x != x.strip()]
    if bad:
        raise InvalidFieldError(
            f"{where}: every label must be a non-empty string without surrounding spaces; got {bad[:5]!r} "
            '(write numeric ids as strings: "1139490")'
        )
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise InvalidFieldError(f"{where} has duplicates {dup[:10]}; each label names one output column")
    if RESERVED_COLUMN in labels:
        raise InvalidFieldError(f"{where}: '{RESERVED_COLUMN}' is the submission's first column, not a label")
    return tuple(labels)


def _parse_member(d: Any, i: int, bundle_labels: tuple[str, ...], row_s: float) -> Member:
    where = f"members[{i}]"
    name = get_field(d, "name", where)
    if not isinstance(name, str) or not name.strip():
        raise InvalidFieldError(f"{where}.name must be a non-empty string, got {name!r}")
    where = f"member {name!r}"
    weight = d.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
        raise InvalidFieldError(f"{where}: weight must be a positive number, got {weight!r}")
    labels = check_labels(d.get("labels", list(bundle_labels)), f"{where}: labels")
    foreign = [x for x in labels if x not in bundle_labels]
    if foreign:
        raise InvalidFieldError(f"{where}: labels {foreign[:10]} are not bundle labels; add them to 'labels'")
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
    folds_raw = get_field(d, "folds", where)
    if not isinstance(folds_raw, list) or not folds_raw:
        raise InvalidFieldError(f"{where}: 'folds' must list at least one fold model")
    rank = 2 if frontend is None else 3
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
        model=parse_model(d.get("model", {})),
        weight=float(weight),
        birdnet=_parse_birdnet(get_field(d, "birdnet", where), labels, where) if member_kind == "birdnet" else None,
    )
    for fold in folds:
        _check_declared_shapes(member, fold)
        if member.ensemble.output == "segment_max" and fold.segmentwise is None:
            raise InvalidFieldError(
                f"{where}: ensemble.output is 'segment_max' but fold {fold.name} declares no segmentwise output"
            )
    return member


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
        labels_file=str(get_field(d, "labels_file", f"{where}.birdnet")),
        outputs=tuple(outputs),
        window_s=positive(d.get("window_s", 3.0), f"{where}.birdnet.window_s"),
        hop_s=positive(d.get("hop_s", 1.0), f"{where}.birdnet.hop_s"),
        sensitivity=positive(d.get("sensitivity", 1.0), f"{where}.birdnet.sensitivity"),
    )


def _check_declared_shapes(member: Member, fold: FoldSpec) -> None:
    want_in = member.input_shape
    if tuple(fold.input.shape[1:]) != want_in:
        what = "the window" if member.frontend is None else "the front-end"
        raise ModelShapeError(
            f"fold {fold.name}: input shape {list(fold.input.shape)} does not match {what}, which gives "
            f"(batch, {', '.join(map(str, want_in))}); the model was exported for other settings"
        )
    width = fold.clipwise.shape[-1]
    if width != len(member.labels):
        raise LabelCountMismatchError(
            f"fold {fold.name}: clipwise output has {width} columns but the manifest lists "
            f"{len(member.labels)} labels; give the labels the model was trained with, in output order"
        )


def _schema1_to_2(d: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 manifest as a one-member schema-2 dict (member ``default``, weight 1, rows = its clips)."""
    audio = get_field(d, "audio", "manifest")
    frontend = get_field(d, "frontend", "manifest")
    member = {
        "name": "default",
        "weight": 1.0,
        "labels": d.get("labels"),
        "audio": audio,
        "frontend": {"kind": "logmel", **frontend} if isinstance(frontend, dict) else frontend,
        "folds": get_field(d, "folds", "manifest"),
        "ensemble": d.get("ensemble", {}),
        "model": d.get("model", {}),
    }
    row_s = audio.get("clip_s", 5.0) if isinstance(audio, dict) else 5.0
    return {
        "labels": d.get("labels"),
        "row_s": row_s,
        "members": [member],
        "description": d.get("description", ""),
        "names": d.get("names", {}),
    }


def _parse_names(d: Any, labels: tuple[str, ...]) -> dict[str, SpeciesName]:
    """``names``: {label: {"scientific": str, "common": str}} for some or all bundle labels."""
    if not isinstance(d, dict):
        raise InvalidFieldError('manifest field \'names\' must map labels to {"scientific": ..., "common": ...}')
    known = set(labels)
    out: dict[str, SpeciesName] = {}
    for label, entry in d.items():
        where = f"manifest field 'names'[{label!r}]"
        if label not in known:
            raise InvalidFieldError(f"{where}: {label!r} is not a bundle label")
        if not isinstance(entry, dict):
            raise InvalidFieldError(f'{where} must be {{"scientific": ..., "common": ...}}')
        values = [get_field(entry, k, where) for k in ("scientific", "common")]
        if any(not isinstance(v, str) or not v.strip() or any(c in v for c in "\t\r\n") for v in values):
            raise InvalidFieldError(f"{where}: names must be non-empty text without tabs or line breaks")
        out[label] = SpeciesName(*values)
    return out


def manifest_from_dict(d: dict[str, Any], root: Path) -> Manifest:
    """Parse and check a manifest dict (no file access). Raises a ManifestError subclass."""
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest.json must hold a JSON object")
    version = d.get("schema_version")
    if version is None:
        raise MissingFieldError("manifest field 'schema_version' is missing: add \"schema_version\": 2")
    if version not in SUPPORTED_SCHEMAS or isinstance(version, bool):
        raise SchemaVersionError(
            f"manifest schema_version {version!r} is not supported; this bird_infer reads versions "
            f"{list(SUPPORTED_SCHEMAS)}. Re-export the models with this version's `bird-infer export`, "
            "or install the bird_infer version that wrote them."
        )
    labels = check_labels(get_field(d, "labels", "manifest"), "manifest field 'labels'")
    if version == 1:
        d = _schema1_to_2(d)
    row_s = positive(d.get("row_s", 5.0), "row_s")
    raw_members = get_field(d, "members", "manifest")
    if not isinstance(raw_members, list) or not raw_members:
        raise InvalidFieldError("manifest field 'members' must list at least one member")
    members = tuple(_parse_member(m, i, labels, row_s) for i, m in enumerate(raw_members))
    names = [m.name for m in members]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidFieldError(f"member names repeat: {dup}; give each member its own name")
    covered = {x for m in members for x in m.labels}
    uncovered = [x for x in labels if x not in covered]
    if uncovered:
        raise InvalidFieldError(
            f"bundle labels {uncovered[:10]} ({len(uncovered)}) are predicted by no member; remove them from "
            "'labels' or add a member that has them"
        )
    files = [f.file for m in members for f in m.folds]
    if len(set(files)) != len(files):
        raise InvalidFieldError("two folds name the same file; each fold needs its own ONNX file")
    drop_order = d.get("drop_order", [])
    if not isinstance(drop_order, list) or any(n not in names for n in drop_order):
        raise InvalidFieldError(f"drop_order must list member names {names}, got {drop_order!r}")
    groups = parse_label_groups(d.get("label_groups", {}), labels)
    return Manifest(
        labels=labels,
        members=members,
        row_s=row_s,
        postprocess=parse_postprocess(d.get("postprocess", []), groups),
        blend=parse_blend(d.get("blend", {}), groups, names),
        label_groups=groups,
        drop_order=tuple(drop_order),
        description=str(d.get("description", "")),
        schema_version=int(version),
        root=root,
        names=_parse_names(d.get("names", {}), labels),
    )
