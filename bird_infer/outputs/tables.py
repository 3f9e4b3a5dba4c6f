"""The tables field tools read, in BirdNET-Analyzer 2.4.0's layouts, so that Raven Pro, Audacity, Kaleidoscope
and the scripts people already have read ours unchanged.

A **detection** (:class:`Detection`, a record) is a row of a file (``row_s`` long, 5 s) and a label whose
probability is at least ``min_conf``; within a row, detections are listed by confidence, highest first (as
BirdNET-Analyzer does). Every table is made of records: :func:`table_rows` turns one file's detections into the
rows of a result type (lists of cells; times with 2 decimals, confidences with 4), :func:`combined_rows` joins
several files' records, and :func:`render` writes rows with the ``csv`` module (the tab dialect for Raven and
Audacity). Nothing is built by joining strings or read back by splitting them.

- Raven selection table (``table``): :data:`RAVEN_COLUMNS`; ``View`` ``Spectrogram 1``, ``Channel`` ``1``,
  ``Low/High Freq (Hz)`` from the bundle's front-ends; ``Common Name``, ``Species Code`` (the label), ``Begin
  Path`` (the audio file) and ``File Offset (s)`` (the begin time within that file). A file with no detection
  gets one ``nocall`` row, so that its table still lists it.
- Results CSV (``csv``): :data:`CSV_COLUMNS`.
- Audacity labels (``audacity``): no header, ``start<TAB>end<TAB>label<TAB>confidence``; the label is
  ``Scientific, Common`` (BirdNET-Analyzer's form), or the bundle's label when it has no names.
- Kaleidoscope CSV (``kaleidoscope``): :data:`KALEIDOSCOPE_COLUMNS`; ``INDIR`` is the folder above the file's
  folder, ``FOLDER`` the file's folder; latitude, longitude and week are -1 (not used), overlap 0 (rows do not
  overlap), sensitivity 1.
- Probabilities (``probs``): every probability of every row, ``start_s``, ``end_s``, then one column per
  label; one Parquet file per input file (pyarrow).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.contract.birdnet import FMAX_HZ
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.extras import import_extra
from bird_infer.contract.schema import SpeciesName
from bird_infer.contract.text import spreadsheet_safe

RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Common Name",
    "Species Code",
    "Confidence",
    "Begin Path",
    "File Offset (s)",
)
CSV_COLUMNS = ("Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File")
KALEIDOSCOPE_COLUMNS = (
    "INDIR",
    "FOLDER",
    "IN FILE",
    "OFFSET",
    "DURATION",
    "scientific_name",
    "common_name",
    "confidence",
    "lat",
    "lon",
    "week",
    "overlap",
    "sensitivity",
)
NOCALL = "nocall"
RTYPES = ("table", "csv", "audacity", "kaleidoscope", "probs")
TEXT_RTYPES = ("table", "csv", "audacity", "kaleidoscope")
"""The result types written as text tables (``probs`` is Parquet)."""
SUFFIXES = {
    "table": ".selection.table.txt",
    "csv": ".results.csv",
    "audacity": ".results.txt",
    "kaleidoscope": ".results.kaleidoscope.csv",
    "probs": ".probs.parquet",
}
"""What each result type appends to a file's output name."""
COMBINED = {
    "table": "combined.selection.table.txt",
    "csv": "combined.results.csv",
    "kaleidoscope": "combined.results.kaleidoscope.csv",
}
"""``--combine``: one file over all input files, for the types that have one."""
HEADERS: dict[str, tuple[str, ...] | None] = {
    "table": RAVEN_COLUMNS,
    "csv": CSV_COLUMNS,
    "audacity": None,
    "kaleidoscope": KALEIDOSCOPE_COLUMNS,
}
TAB_SEPARATED = ("table", "audacity")


@dataclass(frozen=True)
class Detection:
    """One label in one row: ``begin_s`` to ``end_s`` within its file."""

    begin_s: float
    end_s: float
    label: str
    confidence: float


@dataclass(frozen=True)
class TableStyle:
    """What every table of a run shares: the band Raven shows, the labels' names, the row length."""

    band: tuple[float, float]
    names: dict[str, SpeciesName]
    row_s: float

    @classmethod
    def of(cls, manifest: Manifest) -> TableStyle:
        return cls(frequency_band(manifest), manifest.names, manifest.row_s)

    def name(self, label: str) -> SpeciesName:
        return self.names.get(label) or SpeciesName(label, label)


@dataclass(frozen=True)
class FileDetections:
    """One file's detections and what tables say of that file."""

    audio_path: str
    """The audio file as tables show it (printable text)."""
    duration_s: float
    """Seconds of audio that decoded: combined Raven tables run their times on across files by it."""
    detections: tuple[Detection, ...]


def detections(probs: np.ndarray, labels: Sequence[str], row_s: float, min_conf: float) -> list[Detection]:
    """Every (row, label) with probability >= ``min_conf``: rows in time order, each row's labels by
    confidence (highest first, ties in label order). ``probs`` is (n_rows, n_labels)."""
    out: list[Detection] = []
    for r, row in enumerate(np.asarray(probs, dtype=np.float64)):
        hits = np.flatnonzero(row >= min_conf)
        for k in sorted(hits, key=lambda k: (-row[k], k)):
            out.append(Detection(r * row_s, (r + 1) * row_s, labels[k], float(row[k])))
    return out


def frequency_band(manifest: Manifest) -> tuple[float, float]:
    """(low, high) Hz the bundle listens to: its log-mel front-ends' fmin and fmax; a waveform member counts
    0 to its Nyquist frequency, a birdnet member 0 to 15 kHz (BirdNET's band)."""
    lows, highs = [], []
    for m in manifest.members:
        if m.birdnet is not None:
            lows.append(0.0)
            highs.append(FMAX_HZ)
        elif m.frontend is None:
            lows.append(0.0)
            highs.append(m.audio.sample_rate / 2)
        else:
            lows.append(m.frontend.fmin)
            highs.append(m.frontend.fmax)
    return min(lows), max(highs)


def _t(seconds: float) -> str:
    return f"{seconds:.2f}"


def _hz(value: float) -> str:
    # Always with a decimal: crowsetta (and pandas readers generally) then read the column as float, as Raven
    # Pro's own tables are read.
    return f"{value:.1f}"


def _raven(f: FileDetections, style: TableStyle, offset_s: float, nocall: bool) -> list[list[str]]:
    """Raven rows, the ``Selection`` cell left empty (numbered by :func:`_numbered`)."""
    low, high = _hz(style.band[0]), _hz(style.band[1])
    rows = [
        [
            *("", "Spectrogram 1", "1", _t(d.begin_s + offset_s), _t(d.end_s + offset_s), low, high),
            *(style.name(d.label).common, d.label, f"{d.confidence:.4f}", f.audio_path, _t(d.begin_s)),
        ]
        for d in f.detections
    ]
    if not rows and nocall:
        rows.append(
            ["", "Spectrogram 1", "1", _t(0), _t(style.row_s), low, high, NOCALL, NOCALL, "1.0", f.audio_path, "0"]
        )
    return rows


def _csv(f: FileDetections, style: TableStyle) -> list[list[str]]:
    return [
        [
            *(_t(d.begin_s), _t(d.end_s), style.name(d.label).scientific, style.name(d.label).common),
            *(f"{d.confidence:.4f}", f.audio_path),
        ]
        for d in f.detections
    ]


def _audacity(f: FileDetections, style: TableStyle) -> list[list[str]]:
    rows = []
    for d in f.detections:
        name = style.names.get(d.label)
        text = f"{name.scientific}, {name.common}" if name else d.label
        rows.append([_t(d.begin_s), _t(d.end_s), text, f"{d.confidence:.4f}"])
    return rows


def _kaleidoscope(f: FileDetections, style: TableStyle) -> list[list[str]]:
    """The file's folder split as BirdNET-Analyzer splits it."""
    folder, filename = os.path.split(f.audio_path)
    indir, folder_name = os.path.split(folder)
    return [
        [
            *(indir.rstrip("/"), folder_name, filename, _t(d.begin_s), _t(d.end_s - d.begin_s)),
            *(style.name(d.label).scientific, style.name(d.label).common, f"{d.confidence:.4f}"),
            *("-1.0000", "-1.0000", "-1", "0.0", "1.0"),
        ]
        for d in f.detections
    ]


def _numbered(rows: list[list[str]]) -> list[list[str]]:
    return [[str(i), *row[1:]] for i, row in enumerate(rows, start=1)]


def table_rows(rtype: str, f: FileDetections, style: TableStyle) -> list[list[str]]:
    """One file's rows of result type ``rtype`` (one of :data:`TEXT_RTYPES`), header not included."""
    if rtype == "table":
        return _numbered(_raven(f, style, 0.0, nocall=True))
    return {"csv": _csv, "audacity": _audacity, "kaleidoscope": _kaleidoscope}[rtype](f, style)


def combined_rows(rtype: str, files: Sequence[FileDetections], style: TableStyle) -> list[list[str]]:
    """Rows of one table over ``files``, in order. Raven's: selections numbered across files, no ``nocall`` rows,
    begin/end times running on across files (each file's offset by the durations before it); ``File Offset (s)``
    stays the time within the file."""
    if rtype != "table":
        return [row for f in files for row in table_rows(rtype, f, style)]
    rows: list[list[str]] = []
    offset_s = 0.0
    for f in files:
        rows += _raven(f, style, offset_s, nocall=False)
        offset_s += f.duration_s
    return _numbered(rows)


SPREADSHEET_RTYPES = ("csv", "kaleidoscope")
"""Tables opened in spreadsheets: their cells never start a formula (:func:`spreadsheet_safe`)."""


def render(rtype: str, rows: Sequence[Sequence[str]]) -> str:
    """The table's text: its header (when it has one) and ``rows``, by the ``csv`` module (tab-separated for
    Raven and Audacity, quoted only where a cell needs it), ``\\n`` line ends. In CSV and Kaleidoscope tables a
    cell that a spreadsheet would run as a formula (a label, a name, a file or folder name starting with ``=``,
    ``+``, ``-`` or ``@``) gets a leading ``'``."""
    if rtype in SPREADSHEET_RTYPES:
        rows = [[spreadsheet_safe(c) if isinstance(c, str) else c for c in row] for row in rows]
    buf = io.StringIO()
    dialect = csv.excel_tab if rtype in TAB_SEPARATED else csv.excel
    writer = csv.writer(buf, dialect=dialect, lineterminator="\n")
    header = HEADERS[rtype]
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_probs(path: Path, probs: np.ndarray, labels: Sequence[str], row_s: float) -> None:
    """Every probability of one file's rows as Parquet: ``start_s``, ``end_s``, then one column per label."""
    pa = import_extra("pyarrow", "--rtype probs (Parquet)")
    pq = import_extra("pyarrow.parquet", "--rtype probs (Parquet)")
    n = len(probs)
    columns = {"start_s": np.arange(n) * row_s, "end_s": (np.arange(n) + 1) * row_s}
    columns.update({label: np.ascontiguousarray(probs[:, k], dtype=np.float32) for k, label in enumerate(labels)})
    pq.write_table(pa.table(columns), path)
