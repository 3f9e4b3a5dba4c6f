"""The training config: the parts of a manifest that training fixes before any model exists.

Read by ``bird-infer train`` and ``bird-infer export``; the exporter turns it into a bundle member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bird_infer.contract.describe import doc
from bird_infer.contract.errors import InvalidFieldError, ManifestError, MissingFieldError, ModelFileMissingError
from bird_infer.contract.parse import check_labels, get_field, parse_audio, parse_ensemble, parse_frontend, parse_model
from bird_infer.contract.schema import AudioConfig, EnsembleConfig, FrontendConfig, ModelConfig
from bird_infer.contract.tables import read_lines, refuse_duplicates


@dataclass(frozen=True)
class TrainingConfig:
    """The parts of a manifest that training fixes before any model exists (no fold files yet).

    Read from a JSON with the manifest's ``audio``, ``frontend``, ``model`` and ``ensemble``
    sections, plus ``labels`` (a list) or ``labels_file`` (one label per line, relative to the JSON).
    """

    labels: tuple[str, ...] = field(metadata=doc("The labels, in the model's output order."))
    audio: AudioConfig = field(metadata=doc("Sample rate and clip length in training."))
    frontend: FrontendConfig = field(
        metadata=doc("The log-mel front-end as trained (the exporter copies it into the manifest)."),
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("The architecture to build."))
    ensemble: EnsembleConfig = field(
        default_factory=EnsembleConfig,
        metadata=doc("How the exported folds will be combined."),
    )
    description: str = field(default="", metadata=doc("Free text for people, copied into the manifest."))


def read_labels_file(path: str | Path) -> tuple[str, ...]:
    """One label per line; blank lines ignored; UTF-8 (BOM removed, NFC, :mod:`bird_infer.contract.tables`); a
    label listed twice is refused with both line numbers."""
    lines = read_lines(path, "the labels file")
    refuse_duplicates(lines, f"labels file {path}")
    return tuple(s for _, s in lines)


def training_config_from_dict(d: dict[str, Any], base_dir: Path = Path(".")) -> TrainingConfig:
    """Parse a training config dict; ``labels_file`` is resolved against ``base_dir``."""
    if not isinstance(d, dict):
        raise InvalidFieldError("a training config must hold a JSON object")
    if "labels" in d:
        labels = check_labels(d["labels"], "training config 'labels'")
    elif "labels_file" in d:
        path = base_dir / d["labels_file"]
        if not path.is_file():
            raise ModelFileMissingError(f"labels_file {path} does not exist")
        labels = check_labels(list(read_labels_file(path)), f"labels_file {path}")
    else:
        raise MissingFieldError("training config needs 'labels' (a list) or 'labels_file' (a path)")
    audio = parse_audio(get_field(d, "audio", "config"))
    frontend = parse_frontend(get_field(d, "frontend", "config"), audio.sample_rate)
    return TrainingConfig(
        labels=labels,
        audio=audio,
        frontend=frontend,
        model=parse_model(d.get("model", {})),
        ensemble=parse_ensemble(d.get("ensemble", {})),
        description=str(d.get("description", "")),
    )


def load_training_config(path: str | Path) -> TrainingConfig:
    """Read a training config JSON (see TrainingConfig)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read training config {path}: {e}") from e
    return training_config_from_dict(raw, base_dir=path.parent)
