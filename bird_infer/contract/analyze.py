"""``bird-infer analyze``'s settings: BirdNET-Analyzer 2.4.0's options, with its names, defaults and checks."""

from __future__ import annotations

from dataclasses import dataclass

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

    input_path: str
    output_path: str
    min_conf: float = 0.25
    lat: float = -1
    lon: float = -1
    week: int = -1
    sf_thresh: float = 0.03
    slist: str | None = None
    """The species list file actually read (a folder's ``species_list.txt``), None without one."""
    sensitivity: float = 1.0
    overlap: float = 0.0
    fmin: int = 0
    fmax: int = 15000
    batch_size: int = 1
    rtypes: tuple[str, ...] = ("table",)
    combine_results: bool = False
    top_n: int | None = None
    merge_consecutive: int | None = 1
    additional_columns: tuple[str, ...] = ()
    segment_s: float = 3.0
    sample_rate: int = 48000

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

    results: dict[str, list[tuple[str, float]]]
    native_rate: int
    duration_s: float
