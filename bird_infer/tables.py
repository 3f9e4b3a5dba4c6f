"""The tables field tools read, in BirdNET-Analyzer 2.4.0's layouts, so that Raven Pro, Audacity, Kaleidoscope
and the scripts people already have read ours unchanged.

A **detection** is a row of a file (``row_s`` long, 5 s) and a label whose probability is at least
``min_conf``; within a row, detections are listed by confidence, highest first (as BirdNET-Analyzer does).
Times are written with 2 decimals, confidences with 4. Each writer returns the file's text; the caller
writes it (atomically, see :mod:`bird_infer.detect`).

- Raven selection table (``table``): tab-separated, :data:`RAVEN_HEADER`; ``View`` ``Spectrogram 1``,
  ``Channel`` ``1``, ``Low/High Freq (Hz)`` from the bundle's front-ends; ``Common Name``, ``Species Code``
  (the label), ``Begin Path`` (the audio file) and ``File Offset (s)`` (the begin time within that file).
  A file with no detection gets one ``nocall`` row, so that combined tables still list it.
- Results CSV (``csv``): :data:`CSV_HEADER`.
- Audacity labels (``audacity``): no header, ``start<TAB>end<TAB>label<TAB>confidence``; the label is
  ``Scientific, Common`` (BirdNET-Analyzer's form), or the bundle's label when it has no names.
- Kaleidoscope CSV (``kaleidoscope``): :data:`KALEIDOSCOPE_HEADER`; ``INDIR`` is the folder above the file's
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

from bird_infer.schema import Manifest, SpeciesName

RAVEN_HEADER = (
    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tCommon Name\t"
    "Species Code\tConfidence\tBegin Path\tFile Offset (s)\n"
)
CSV_HEADER = "Start (s),End (s),Scientific name,Common name,Confidence,File\n"
KALEIDOSCOPE_HEADER = (
    "INDIR,FOLDER,IN FILE,OFFSET,DURATION,scientific_name,common_name,confidence,lat,lon,week,overlap,sensitivity\n"
)
NOCALL = "nocall"
RTYPES = ("table", "csv", "audacity", "kaleidoscope", "probs")
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


@dataclass(frozen=True)
class Detection:
    """One label in one row: ``begin_s`` to ``end_s`` within its file."""

    begin_s: float
    end_s: float
    label: str
    confidence: float


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
            from bird_infer.birdnet import FMAX_HZ

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


def raven_table(
    dets: Sequence[Detection],
    audio_path: str,
    band: tuple[float, float],
    names: dict[str, SpeciesName],
    row_s: float,
) -> str:
    """One file's Raven selection table (header included; a ``nocall`` row when ``dets`` is empty)."""
    low, high = _hz(band[0]), _hz(band[1])
    lines = [RAVEN_HEADER]
    for i, d in enumerate(dets, start=1):
        name = names.get(d.label) or SpeciesName(d.label, d.label)
        lines.append(
            f"{i}\tSpectrogram 1\t1\t{_t(d.begin_s)}\t{_t(d.end_s)}\t{low}\t{high}\t{name.common}\t{d.label}\t"
            f"{d.confidence:.4f}\t{audio_path}\t{_t(d.begin_s)}\n"
        )
    if not dets:
        lines.append(
            f"1\tSpectrogram 1\t1\t{_t(0)}\t{_t(row_s)}\t{low}\t{high}\t{NOCALL}\t{NOCALL}\t1.0\t{audio_path}\t0\n"
        )
    return "".join(lines)


def combine_raven(tables: Sequence[tuple[str, float]]) -> str:
    """One table over many files: ``tables`` is (a file's table text, that file's duration in seconds), in
    order. Selections are renumbered, ``nocall`` rows left out, and begin/end times run on across files
    (each file's offset by the durations before it); ``File Offset (s)`` stays the time within the file."""
    out = [RAVEN_HEADER]
    selection, offset = 1, 0.0
    for text, duration_s in tables:
        for line in text.splitlines()[1:]:
            cells = line.split("\t")
            if len(cells) != 12 or (cells[7] == NOCALL and cells[8] == NOCALL):
                continue
            cells[0] = str(selection)
            cells[3] = _t(float(cells[3]) + offset)
            cells[4] = _t(float(cells[4]) + offset)
            out.append("\t".join(cells) + "\n")
            selection += 1
        offset += duration_s
    return "".join(out)


def audacity_labels(dets: Sequence[Detection], names: dict[str, SpeciesName]) -> str:
    """Audacity's label track: no header, ``start<TAB>end<TAB>label<TAB>confidence``."""
    lines = []
    for d in dets:
        name = names.get(d.label)
        text = f"{name.scientific}, {name.common}" if name else d.label
        lines.append(f"{_t(d.begin_s)}\t{_t(d.end_s)}\t{text}\t{d.confidence:.4f}\n")
    return "".join(lines)


def _csv_text(header: str, rows: list[list[str]]) -> str:
    buf = io.StringIO()
    buf.write(header)
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def results_csv(dets: Sequence[Detection], audio_path: str, names: dict[str, SpeciesName]) -> str:
    """BirdNET-Analyzer's results CSV (quoted where a field holds a comma or a quote)."""
    rows = []
    for d in dets:
        name = names.get(d.label) or SpeciesName(d.label, d.label)
        rows.append([_t(d.begin_s), _t(d.end_s), name.scientific, name.common, f"{d.confidence:.4f}", audio_path])
    return _csv_text(CSV_HEADER, rows)


def kaleidoscope_csv(dets: Sequence[Detection], audio_path: str, names: dict[str, SpeciesName]) -> str:
    """Kaleidoscope's CSV: the file's folder split as BirdNET-Analyzer splits it."""
    folder, filename = os.path.split(audio_path)
    indir, folder_name = os.path.split(folder)
    rows = []
    for d in dets:
        name = names.get(d.label) or SpeciesName(d.label, d.label)
        rows.append(
            [
                indir.rstrip("/"),
                folder_name,
                filename,
                _t(d.begin_s),
                _t(d.end_s - d.begin_s),
                name.scientific,
                name.common,
                f"{d.confidence:.4f}",
                "-1.0000",
                "-1.0000",
                "-1",
                "0.0",
                "1.0",
            ]
        )
    return _csv_text(KALEIDOSCOPE_HEADER, rows)


def combine_csv(texts: Sequence[str], header: str) -> str:
    """Concatenate per-file CSVs (``csv`` or ``kaleidoscope``) under one header."""
    return header + "".join(t[len(header) :] if t.startswith(header) else t for t in texts)


def write_probs(path: Path, probs: np.ndarray, labels: Sequence[str], row_s: float) -> None:
    """Every probability of one file's rows as Parquet: ``start_s``, ``end_s``, then one column per label."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("--rtype probs writes Parquet: pip install 'bird_infer[field]' (pyarrow)") from e
    n = len(probs)
    columns = {"start_s": np.arange(n) * row_s, "end_s": (np.arange(n) + 1) * row_s}
    columns.update({label: np.ascontiguousarray(probs[:, k], dtype=np.float32) for k, label in enumerate(labels)})
    pq.write_table(pa.table(columns), path)
