"""``bird-infer analyze``'s settings: BirdNET-Analyzer 2.4.0's options, with its names, defaults and checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from bird_infer.contract.describe import doc
from bird_infer.contract.errors import AnalyzeOptionError

RTYPES = ("table", "audacity", "kaleidoscope", "csv")
ADDITIONAL_COLUMNS = ("lat", "lon", "week", "overlap", "sensitivity", "min_conf", "species_list", "model")
"""``--additional_columns`` choices, in the order BirdNET-Analyzer appends them."""
AUDIO_TYPES = ("wav", "flac", "mp3", "ogg", "m4a", "wma", "aiff", "aif")
"""BirdNET-Analyzer's ALLOWED_FILETYPES."""
MODEL_NAME = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"


@dataclass(frozen=True)
class AnalyzeSettings:
    """What BirdNET-Analyzer keeps in its ``config`` for one ``analyze`` run."""

    input_path: str = field(metadata=doc("The file or folder analysed (``--input``)."))
    output_path: str = field(
        metadata=doc("Where the tables go (``--output``): a folder, or a file for one input file."),
    )
    min_conf: float = field(default=0.25, metadata=doc("Lowest confidence written (``--min_conf``)."))
    lat: float = field(
        default=-1,
        metadata=doc(
            "Latitude for the range filter (``--lat``); -1 with lon -1: no filter.",
            unit="degrees",
        ),
    )
    lon: float = field(
        default=-1,
        metadata=doc(
            "Longitude for the range filter (``--lon``); -1 with lat -1: no filter.",
            unit="degrees",
        ),
    )
    week: int = field(
        default=-1,
        metadata=doc("Week of the year for the range filter, 1 to 48 (``--week``); -1: the whole year."),
    )
    sf_thresh: float = field(
        default=0.03,
        metadata=doc("The range filter's threshold: species below it are off the list (``--sf_thresh``)."),
    )
    slist: str | None = field(
        default=None,
        metadata=doc("The species list file actually read (a folder's ``species_list.txt``), None without one."),
    )
    sensitivity: float = field(
        default=1.0,
        metadata=doc("Detection sensitivity, 0.5 to 1.5 (``--sensitivity``): shifts every logit by (s - 1) x 10."),
    )
    overlap: float = field(
        default=0.0,
        metadata=doc(
            "Overlap of consecutive segments (``--overlap``), 0 to 2.9.",
            unit="s",
        ),
    )
    fmin: int = field(default=0, metadata=doc("Lowest frequency of BirdNET's bandpass (``--fmin``).", unit="Hz"))
    fmax: int = field(default=15000, metadata=doc("Highest frequency of BirdNET's bandpass (``--fmax``).", unit="Hz"))
    batch_size: int = field(
        default=1,
        metadata=doc("Segments per model call (``-b``); the tables do not depend on it."),
    )
    rtypes: tuple[str, ...] = field(
        default=("table",),
        metadata=doc("Tables written: table (Raven), audacity, kaleidoscope, csv (``--rtype``)."),
    )
    combine_results: bool = field(
        default=False,
        metadata=doc("Also write the combined tables over every file (``--combine_results``)."),
    )
    top_n: int | None = field(
        default=None,
        metadata=doc(
            "Keep only the n most confident labels per segment (``--top_n``); None: every label above min_conf."
        ),
    )
    merge_consecutive: int | None = field(
        default=1,
        metadata=doc(
            "Detections of one species in this many consecutive segments are merged into one (``--merge_consecutive``)."
        ),
    )
    additional_columns: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Extra csv columns (``--additional_columns``): lat, lon, week, overlap, sensitivity, min_conf, "
            "species_list, model."
        ),
    )
    segment_s: float = field(default=3.0, metadata=doc("BirdNET's segment length.", unit="s"))
    sample_rate: int = field(
        default=48000,
        metadata=doc(
            "BirdNET's sample rate: every file is resampled to it.",
            unit="Hz",
        ),
    )

    @property
    def uses_location(self) -> bool:
        """BirdNET-Analyzer's rule: the range filter runs unless both latitude and longitude are -1."""
        return not (self.lat == -1 and self.lon == -1)

    def check(self) -> None:
        """BirdNET-Analyzer's own refusals, with its messages."""
        if self.overlap < 0:
            raise AnalyzeOptionError("Overlap must be a non-negative value.")
        if self.overlap > 2.9:
            raise AnalyzeOptionError("Overlap must be less than or equal to 2.9 seconds for BirdNET model.")
        unknown = set(self.rtypes) - set(RTYPES)
        if unknown:
            raise AnalyzeOptionError(f"unknown --rtype {sorted(unknown)}: choose from {', '.join(RTYPES)}")


@dataclass(frozen=True)
class FileAnalysis:
    """One file's analysis, as BirdNET-Analyzer holds it before writing tables: for each segment's timestamp
    (``"start-end"``, seconds as Python prints ``round(t, 2)``), its labels and confidences (float32) in
    descending order, after ``--min_conf``/``--top_n`` and the species list."""

    results: dict[str, list[tuple[str, float]]] = field(
        metadata=doc("For each segment's ``start-end`` key, its (label, confidence) pairs, most confident first."),
    )
    native_rate: int = field(metadata=doc("The file's own sample rate, before resampling.", unit="Hz"))
    duration_s: float = field(metadata=doc("The file's duration, as BirdNET-Analyzer computes it.", unit="s"))
