"""The model manifest: the one source of truth between training and inference.

``models/manifest.json`` sits beside the fold ONNX files. It carries the labels in output order,
the audio settings, every front-end parameter, and each fold's file, checksum and tensor specs.
Nothing here imports torch: the inference path reads the manifest, and the exporter writes it.

Loading validates everything that can be checked without audio, so that a bad bundle fails
before the first file is decoded, with a message that says what to fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bird_infer.errors import (
    ChecksumMismatchError,
    InvalidFieldError,
    LabelCountMismatchError,
    ManifestError,
    MissingFieldError,
    ModelFileMissingError,
    ModelShapeError,
    SchemaVersionError,
)

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

PAD_MODES = ("reflect", "constant")
MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", "none")
NORMALIZATIONS = ("none", "minmax", "standardize")
COMBINE_RULES = ("mean", "rms")
ENSEMBLE_OUTPUTS = ("clipwise", "segment_max")


def _doc(text: str) -> dict[str, str]:
    """A field's description, kept in its metadata: error messages quote it (no source needed at run time)."""
    return {"doc": text}


def field_doc(cls: type, name: str) -> str:
    """The description of field ``name`` of dataclass ``cls`` ('' when it has none)."""
    return next((str(f.metadata.get("doc", "")) for f in fields(cls) if f.name == name), "")


@dataclass(frozen=True)
class AudioConfig:
    """How waveforms are cut before the front-end."""

    sample_rate: int = field(metadata=_doc("Samples per second every file is resampled to (Hz)."))
    clip_s: float = field(metadata=_doc("Length of one chunk, and of one submission row (seconds)."))

    @property
    def chunk_samples(self) -> int:
        """Samples in one chunk (160000 for 5 s at 32 kHz)."""
        return round(self.sample_rate * self.clip_s)


@dataclass(frozen=True)
class FrontendConfig:
    """Every parameter of the log-mel front-end, as used in training.

    The numpy front-end (``bird_infer.frontend``) and the torch front-end
    (``bird_infer.nn.frontend``) are both built from this object only.
    """

    n_fft: int = field(metadata=_doc("FFT size (samples)."))
    win_length: int = field(
        metadata=_doc("Window length (samples); a shorter window is zero-padded to n_fft, centred.")
    )
    hop_length: int = field(metadata=_doc("Hop between frames (samples)."))
    window: str = field(metadata=_doc("Window function; only the periodic ``hann`` window is supported."))
    center: bool = field(
        metadata=_doc("Pad n_fft // 2 samples each side so frame t is centred on sample t * hop_length.")
    )
    pad_mode: str = field(
        metadata=_doc(
            "Padding used when ``center``: ``reflect`` (torch.stft / torchaudio) or ``constant`` "
            "(zeros, librosa >= 0.10)."
        )
    )
    n_mels: int = field(metadata=_doc("Number of mel bands."))
    fmin: float = field(metadata=_doc("Lowest mel filter edge (Hz)."))
    fmax: float = field(metadata=_doc("Highest mel filter edge (Hz)."))
    power: float = field(metadata=_doc("Exponent of the magnitude: 2.0 for power, 1.0 for magnitude."))
    mel_scale: str = field(metadata=_doc("``slaney`` (librosa default) or ``htk`` (torchaudio default)."))
    mel_norm: str = field(
        metadata=_doc("``slaney`` area normalisation (librosa default) or ``none`` (torchaudio default).")
    )
    amin: float = field(metadata=_doc("Floor applied before the logarithm."))
    ref: float = field(
        metadata=_doc("Reference value: dB = 10 * log10(max(amin, S)) - 10 * log10(max(amin, ref)) for power 2.")
    )
    top_db: float | None = field(
        metadata=_doc("Clamp each chunk to (its own maximum - top_db) dB; None disables the clamp.")
    )
    normalize: str = field(
        metadata=_doc(
            "Per-chunk scaling after dB: ``none``, ``minmax`` (to [0, 1]) or ``standardize`` (zero mean, unit std)."
        )
    )

    @property
    def db_multiplier(self) -> float:
        """10 for power spectra, 20 for magnitude spectra."""
        return 10.0 if self.power == 2.0 else 20.0

    def n_frames(self, n_samples: int) -> int:
        """Frames the STFT yields for ``n_samples`` samples (501 for 160000 at hop 320, centred)."""
        if self.center:
            return 1 + n_samples // self.hop_length
        return 1 + (n_samples - self.n_fft) // self.hop_length


@dataclass(frozen=True)
class TensorSpec:
    """Name and shape of one model input or output; a str dimension is symbolic (``batch``)."""

    name: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class FoldSpec:
    """One fold model file and its interface."""

    name: str
    file: str
    """Path relative to the manifest's folder."""
    sha256: str
    input: TensorSpec
    """Log-mel input, shape (batch, n_mels, frames), float32."""
    clipwise: TensorSpec
    """Clip-wise probabilities, shape (batch, n_labels)."""
    segmentwise: TensorSpec | None = None
    """Segment-wise probabilities, shape (batch, n_labels, segments), if exported."""


@dataclass(frozen=True)
class EnsembleConfig:
    """How fold outputs become one probability per label and chunk."""

    combine: str = "mean"
    """``mean`` of the folds, or ``rms`` (square root of the mean of squares)."""
    output: str = "clipwise"
    """``clipwise`` output, or ``segment_max`` (max over the segment-wise output)."""


@dataclass(frozen=True)
class ModelConfig:
    """What the torch side needs to rebuild a fold (not used by ONNX inference)."""

    architecture: str = "sed"
    backbone: str = "efficientnet_b0"
    in_chans: int = 1
    dropout: float = 0.5


@dataclass(frozen=True)
class Manifest:
    """A validated model bundle. ``root`` is the folder holding manifest.json."""

    labels: tuple[str, ...]
    audio: AudioConfig
    frontend: FrontendConfig
    folds: tuple[FoldSpec, ...]
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    description: str = ""
    schema_version: int = SCHEMA_VERSION
    root: Path = Path(".")

    @property
    def n_frames(self) -> int:
        """Frames of log-mel per chunk."""
        return self.frontend.n_frames(self.audio.chunk_samples)

    def fold_path(self, fold: FoldSpec) -> Path:
        return self.root / fold.file

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("root")
        d["labels"] = list(self.labels)
        return {"schema_version": d.pop("schema_version"), **d}


# --- parsing -------------------------------------------------------------------------------------


def _get(d: dict[str, Any], key: str, where: str, hint: str = "") -> Any:
    if not isinstance(d, dict):
        raise InvalidFieldError(f"{where} must be a JSON object, got {type(d).__name__}")
    if key not in d:
        msg = f"manifest field '{where}.{key}' is missing"
        raise MissingFieldError(msg + (f": {hint}" if hint else ""))
    return d[key]


def _choice(value: Any, options: tuple[str, ...], where: str) -> str:
    if value not in options:
        raise InvalidFieldError(f"manifest field '{where}' is {value!r}; use one of {list(options)}")
    return str(value)


def _number(value: Any, where: str) -> float:
    """A finite JSON number (not a string, null, boolean, Infinity or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidFieldError(f"manifest field '{where}' must be a finite number, got {value!r}")
    return float(value)


def _positive(value: Any, where: str, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
        raise InvalidFieldError(f"manifest field '{where}' must be a positive finite number, got {value!r}")
    if kind is int and int(value) != value:
        raise InvalidFieldError(f"manifest field '{where}' must be an integer, got {value!r}")
    return kind(value)


def _parse_audio(d: Any) -> AudioConfig:
    sr = _positive(_get(d, "sample_rate", "audio", field_doc(AudioConfig, "sample_rate")), "audio.sample_rate", int)
    clip_s = _positive(_get(d, "clip_s", "audio", field_doc(AudioConfig, "clip_s")), "audio.clip_s")
    if not math.isclose(sr * clip_s, round(sr * clip_s)):
        raise InvalidFieldError("audio.sample_rate * audio.clip_s must be a whole number of samples")
    return AudioConfig(sample_rate=sr, clip_s=clip_s)


def _parse_frontend(d: Any, sample_rate: int) -> FrontendConfig:
    v = {f.name: _get(d, f.name, "frontend", field_doc(FrontendConfig, f.name)) for f in fields(FrontendConfig)}
    for key in ("n_fft", "win_length", "hop_length", "n_mels"):
        v[key] = _positive(v[key], f"frontend.{key}", int)
    for key in ("fmax", "amin", "ref", "power"):
        v[key] = _positive(v[key], f"frontend.{key}")
    v["fmin"] = _number(v["fmin"], "frontend.fmin")
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
    v["pad_mode"] = _choice(v["pad_mode"], PAD_MODES, "frontend.pad_mode")
    v["mel_scale"] = _choice(v["mel_scale"], MEL_SCALES, "frontend.mel_scale")
    v["mel_norm"] = _choice(v["mel_norm"], MEL_NORMS, "frontend.mel_norm")
    v["normalize"] = _choice(v["normalize"], NORMALIZATIONS, "frontend.normalize")
    if v["top_db"] is not None:
        v["top_db"] = _positive(v["top_db"], "frontend.top_db")
    return FrontendConfig(**v)


def _parse_tensor(d: Any, where: str, rank: int) -> TensorSpec:
    name = _get(d, "name", where)
    shape = _get(d, "shape", where)
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


def _parse_fold(d: Any, i: int) -> FoldSpec:
    where = f"folds[{i}]"
    seg = d.get("segmentwise") if isinstance(d, dict) else None
    return FoldSpec(
        name=str(_get(d, "name", where)),
        file=str(_get(d, "file", where, "the ONNX file name, relative to manifest.json")),
        sha256=str(_get(d, "sha256", where, "re-run `bird-infer export` to record it")),
        input=_parse_tensor(_get(d, "input", where), f"{where}.input", 3),
        clipwise=_parse_tensor(_get(d, "clipwise", where), f"{where}.clipwise", 2),
        segmentwise=None if seg is None else _parse_tensor(seg, f"{where}.segmentwise", 3),
    )


def _parse_ensemble(d: Any) -> EnsembleConfig:
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest field 'ensemble' must be a JSON object")
    return EnsembleConfig(
        combine=_choice(d.get("combine", "mean"), COMBINE_RULES, "ensemble.combine"),
        output=_choice(d.get("output", "clipwise"), ENSEMBLE_OUTPUTS, "ensemble.output"),
    )


def _parse_model(d: Any) -> ModelConfig:
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest field 'model' must be a JSON object")
    unknown = set(d) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise InvalidFieldError(f"manifest field 'model' has unknown keys {sorted(unknown)}")
    return ModelConfig(**d)


def manifest_from_dict(d: dict[str, Any], root: Path) -> Manifest:
    """Parse and check a manifest dict (no file access). Raises a ManifestError subclass."""
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest.json must hold a JSON object")
    version = d.get("schema_version")
    if version is None:
        raise MissingFieldError("manifest field 'schema_version' is missing: add \"schema_version\": 1")
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"manifest schema_version {version!r} is not supported; this bird_infer reads version "
            f"{SCHEMA_VERSION}. Re-export the models with this version's `bird-infer export`, "
            "or install the bird_infer version that wrote them."
        )
    labels = check_labels(_get(d, "labels", "manifest"), "manifest field 'labels'")
    audio = _parse_audio(_get(d, "audio", "manifest"))
    frontend = _parse_frontend(_get(d, "frontend", "manifest"), audio.sample_rate)
    folds_raw = _get(d, "folds", "manifest")
    if not isinstance(folds_raw, list) or not folds_raw:
        raise InvalidFieldError("manifest field 'folds' must list at least one fold model")
    folds = tuple(_parse_fold(f, i) for i, f in enumerate(folds_raw))
    ensemble = _parse_ensemble(d.get("ensemble", {}))
    model = _parse_model(d.get("model", {}))
    m = Manifest(
        labels=tuple(labels),
        audio=audio,
        frontend=frontend,
        folds=folds,
        ensemble=ensemble,
        model=model,
        description=str(d.get("description", "")),
        root=root,
    )
    for fold in folds:
        _check_declared_shapes(m, fold)
        if ensemble.output == "segment_max" and fold.segmentwise is None:
            raise InvalidFieldError(
                f"ensemble.output is 'segment_max' but fold {fold.name} declares no segmentwise output"
            )
    return m


RESERVED_COLUMN = "row_id"


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


def _check_declared_shapes(m: Manifest, fold: FoldSpec) -> None:
    want_in = (m.frontend.n_mels, m.n_frames)
    if tuple(fold.input.shape[1:]) != want_in:
        raise ModelShapeError(
            f"fold {fold.name}: input shape {list(fold.input.shape)} does not match the front-end, which "
            f"gives (batch, {want_in[0]}, {want_in[1]}); the model was exported for other front-end settings"
        )
    width = fold.clipwise.shape[-1]
    if width != len(m.labels):
        raise LabelCountMismatchError(
            f"fold {fold.name}: clipwise output has {width} columns but the manifest lists "
            f"{len(m.labels)} labels; give the labels the model was trained with, in output order"
        )


# --- files ---------------------------------------------------------------------------------------


def sha256_file(path: Path, block_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            h.update(block)
    return h.hexdigest()


def _onnx_dims(value_info: Any) -> tuple[int | str, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _check_model_file(m: Manifest, fold: FoldSpec) -> None:
    import onnx  # local: only loading with verify=True needs it

    path = m.fold_path(fold)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others: any failure means an unusable file
        raise ModelShapeError(f"fold {fold.name}: {path} is not a readable ONNX model ({e})") from e
    graph_inputs = {i.name: _onnx_dims(i) for i in model.graph.input}
    graph_outputs = {o.name: _onnx_dims(o) for o in model.graph.output}
    if fold.input.name not in graph_inputs:
        raise ModelShapeError(
            f"fold {fold.name}: the model has no input named {fold.input.name!r} (it has {list(graph_inputs)})"
        )
    if tuple(graph_inputs[fold.input.name][1:]) != tuple(fold.input.shape[1:]):
        raise ModelShapeError(
            f"fold {fold.name}: model input shape {list(graph_inputs[fold.input.name])} differs from the "
            f"manifest's {list(fold.input.shape)}"
        )
    specs = [fold.clipwise] + ([fold.segmentwise] if fold.segmentwise else [])
    for spec in specs:
        if spec.name not in graph_outputs:
            raise ModelShapeError(
                f"fold {fold.name}: the model has no output named {spec.name!r} (it has {list(graph_outputs)})"
            )
    width = graph_outputs[fold.clipwise.name][-1]
    if width != len(m.labels):
        raise LabelCountMismatchError(
            f"fold {fold.name}: {path.name} outputs {width} classes but the manifest lists {len(m.labels)} "
            "labels; ship the labels this model was trained with, or the model trained with these labels"
        )


def verify_files(m: Manifest) -> None:
    """Check that every fold file exists, matches its sha256, and has the declared interface."""
    for fold in m.folds:
        path = m.fold_path(fold)
        if not path.is_file():
            raise ModelFileMissingError(
                f"fold {fold.name}: model file {path} is missing; copy it next to manifest.json "
                "or remove the fold from the manifest"
            )
        digest = sha256_file(path)
        if digest != fold.sha256:
            raise ChecksumMismatchError(
                f"fold {fold.name}: {path.name} has sha256 {digest} but the manifest records {fold.sha256}; "
                "the file is corrupt or was replaced. Restore it, or re-export with `bird-infer export`"
            )
        _check_model_file(m, fold)


def load_manifest(path: str | Path, verify: bool = True) -> Manifest:
    """Read ``manifest.json`` (or the folder that holds it) and validate it.

    With ``verify`` (the default) every fold file is also checked: present, sha256 as recorded,
    input/output names and widths as declared. Raises a ``ManifestError`` subclass.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ModelFileMissingError(
            f"no manifest at {path}; point --models at the folder holding manifest.json and the fold .onnx files"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror}") from e
    m = manifest_from_dict(raw, root=path.parent.resolve())
    if verify:
        verify_files(m)
    return m


def write_manifest(m: Manifest, folder: str | Path) -> Path:
    """Write ``manifest.json`` into ``folder`` and return its path."""
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(m.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


# --- training config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingConfig:
    """The parts of a manifest that training fixes before any model exists (no fold files yet).

    Read from a JSON with the manifest's ``audio``, ``frontend``, ``model`` and ``ensemble``
    sections, plus ``labels`` (a list) or ``labels_file`` (one label per line, relative to the JSON).
    """

    labels: tuple[str, ...]
    audio: AudioConfig
    frontend: FrontendConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    description: str = ""


def read_labels_file(path: str | Path) -> tuple[str, ...]:
    """One label per line; blank lines ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return tuple(s.strip() for s in lines if s.strip())


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
    audio = _parse_audio(_get(d, "audio", "config"))
    frontend = _parse_frontend(_get(d, "frontend", "config"), audio.sample_rate)
    return TrainingConfig(
        labels=labels,
        audio=audio,
        frontend=frontend,
        model=_parse_model(d.get("model", {})),
        ensemble=_parse_ensemble(d.get("ensemble", {})),
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
