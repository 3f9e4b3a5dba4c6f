"""The manifest as data: a parsed JSON dict checked field by field and turned into a :class:`Manifest` (no file
access). Schema 2 holds one or more members (see :mod:`bird_infer.contract.schema`); schema 1 (one model
family: ``labels``, ``audio``, ``frontend``, ``folds``, ``ensemble``) still loads, as one member named
``default`` of weight 1, with identical outputs. Every message names the field and says what to fix.

The field parsers (:func:`parse_audio`, :func:`parse_frontend`...) are shared with the training config
(:mod:`bird_infer.contract.training_config`).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from typing import Any

from bird_infer.contract.describe import field_doc
from bird_infer.contract.errors import (
    InvalidFieldError,
)
from bird_infer.contract.fields import choice, get_field, number, positive
from bird_infer.contract.schema import (
    ACTIVATIONS,
    COMBINE_RULES,
    ENSEMBLE_OUTPUTS,
    FRAME_REDUCES,
    INPUT_CHANNELS,
    MEL_NORMS,
    MEL_SCALES,
    NORMALIZATIONS,
    PAD_MODES,
    RESAMPLERS,
    RESERVED_COLUMN,
    TOP_DB_REFS,
    AudioConfig,
    EnsembleConfig,
    FrontendConfig,
    ModelConfig,
)
from bird_infer.contract.text import control_chars

MAX_WINDOW_SAMPLES = 600 * 192_000
"""The most samples one window may hold (10 minutes at 192 kHz): a window past it is refused by name, before any
memory is asked for."""


def parse_audio(d: Any) -> AudioConfig:
    sr = positive(get_field(d, "sample_rate", "audio", field_doc(AudioConfig, "sample_rate")), "audio.sample_rate", int)
    clip_s = positive(get_field(d, "clip_s", "audio", field_doc(AudioConfig, "clip_s")), "audio.clip_s")
    if sr * clip_s > MAX_WINDOW_SAMPLES:
        raise InvalidFieldError(
            f"audio: a window of {clip_s:g} s at {sr} Hz is {sr * clip_s:.0f} samples, past the bound of "
            f"{MAX_WINDOW_SAMPLES} (10 minutes at 192 kHz); check audio.sample_rate and audio.clip_s"
        )
    if not math.isclose(sr * clip_s, round(sr * clip_s)):
        raise InvalidFieldError("audio.sample_rate * audio.clip_s must be a whole number of samples")
    resampler = choice(d.get("resampler", "soxr_hq"), tuple(RESAMPLERS), "audio.resampler")
    return AudioConfig(sample_rate=sr, clip_s=clip_s, resampler=resampler)


def parse_frontend(d: Any, sample_rate: int) -> FrontendConfig:
    optional = {f.name for f in fields(FrontendConfig) if f.default is not MISSING}
    v = {
        f.name: get_field(d, f.name, "frontend", field_doc(FrontendConfig, f.name))
        for f in fields(FrontendConfig)
        if f.name not in optional or f.name in d
    }
    v.pop("kind", None)
    if "std_ddof" in v and v["std_ddof"] not in (0, 1):
        raise InvalidFieldError(f"frontend.std_ddof must be 0 or 1, got {v['std_ddof']!r}")
    if "channels" in v and (isinstance(v["channels"], bool) or v["channels"] not in INPUT_CHANNELS):
        raise InvalidFieldError(f"frontend.channels must be one of {list(INPUT_CHANNELS)}, got {v['channels']!r}")
    if "top_db_ref" in v:
        v["top_db_ref"] = choice(v["top_db_ref"], TOP_DB_REFS, "frontend.top_db_ref")
    if "batch_rows" in v:
        v["batch_rows"] = positive(v["batch_rows"], "frontend.batch_rows", int)
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


def parse_ensemble(d: Any) -> EnsembleConfig:
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest field 'ensemble' must be a JSON object")
    unknown = set(d) - {f.name for f in fields(EnsembleConfig)}
    if unknown:
        raise InvalidFieldError(f"manifest field 'ensemble' has unknown keys {sorted(unknown)}")
    time_axis = d.get("time_axis", 2)
    if time_axis not in (1, 2) or isinstance(time_axis, bool):
        raise InvalidFieldError(f"ensemble.time_axis must be 1 or 2 (the frames' axis), got {time_axis!r}")
    return EnsembleConfig(
        combine=choice(d.get("combine", "mean"), COMBINE_RULES, "ensemble.combine"),
        output=choice(d.get("output", "clipwise"), ENSEMBLE_OUTPUTS, "ensemble.output"),
        activation=choice(d.get("activation", "none"), ACTIVATIONS, "ensemble.activation"),
        frame_reduce=choice(d.get("frame_reduce", "mean"), FRAME_REDUCES, "ensemble.frame_reduce"),
        mix=_unit_interval(d.get("mix", 0.5), "ensemble.mix"),
        time_axis=time_axis,
    )


def _unit_interval(value: Any, where: str) -> float:
    x = number(value, where)
    if not 0 <= x <= 1:
        raise InvalidFieldError(f"manifest field '{where}' must be in [0, 1], got {value!r}")
    return x


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
    controlled = [(x, control_chars(x)) for x in labels if control_chars(x)]
    if controlled:
        label, chars = controlled[0]
        raise InvalidFieldError(
            f"{where}: label {label!r} holds control characters ({', '.join(chars)}): tables (Raven, Audacity, CSV) "
            f"cannot keep them apart; {len(controlled)} label(s) like it. Rename them"
        )
    return tuple(labels)
