"""BirdNET-Analyzer 2.4.0's result files, byte for byte: per-file tables (Raven, Audacity, Kaleidoscope, CSV),
their names, ``--merge_consecutive``, the combined tables and ``BirdNET_analysis_params.csv``.

The text is built as BirdNET-Analyzer builds it (its ``analyze/utils.py``); the quirks are kept on purpose, since
scripts read these files: the Raven table's ``nocall`` row when a file has no detection, combined Raven times
printed by ``str(float)``, Kaleidoscope's ``{:.4f}`` latitude and longitude, CSV ``\\r\\n`` line ends only in the
params file. Every file is written atomically (:mod:`bird_infer.outputs.atomic`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from bird_infer.audio.birdnet_signal import PIECE_S, SAMPLE_RATE, SIG_FMAX, SIG_FMIN, file_duration_s
from bird_infer.contract.analyze import MODEL_NAME, AnalyzeSettings, FileAnalysis
from bird_infer.outputs.atomic import write_atomic, write_text

RAVEN_HEADER = (
    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tCommon Name\t"
    "Species Code\tConfidence\tBegin Path\tFile Offset (s)\n"
)
KALEIDOSCOPE_HEADER = (
    "INDIR,FOLDER,IN FILE,OFFSET,DURATION,scientific_name,common_name,confidence,lat,lon,week,overlap,sensitivity\n"
)
CSV_HEADER = "Start (s),End (s),Scientific name,Common name,Confidence,File\n"
SUFFIXES = {
    "table": ".BirdNET.selection.table.txt",
    "audacity": ".BirdNET.results.txt",
    "kaleidoscope": ".BirdNET.results.kaleidoscope.csv",
    "csv": ".BirdNET.results.csv",
}
COMBINED_RAVEN = "BirdNET_SelectionTable.txt"
COMBINED_KALEIDOSCOPE = "BirdNET_Kaleidoscope.csv"
COMBINED_CSV = "BirdNET_CombinedTable.csv"
PARAMS_FILE = "BirdNET_analysis_params.csv"
RESERVED = (COMBINED_RAVEN, "BirdNET_SelectionTable.list.txt", COMBINED_KALEIDOSCOPE, COMBINED_CSV, PARAMS_FILE)


def result_file_names(settings: AnalyzeSettings, fpath: str) -> dict[str, str]:
    """Each rtype's output path for ``fpath``: its path below the input folder, extension replaced by the suffix
    (BirdNET-Analyzer's ``get_result_file_names``)."""
    rpath = fpath.replace(settings.input_path, "")
    rpath = (rpath[1:] if rpath[0] in ["/", "\\"] else rpath) if rpath else os.path.basename(fpath)
    shorthand = rpath.rsplit(".", 1)[0]
    return {r: os.path.join(settings.output_path, shorthand + SUFFIXES[r]) for r in SUFFIXES if r in settings.rtypes}


def _start(t: str) -> float:
    return float(t.split("-", 1)[0])


def merge_consecutive(results: dict[str, list], max_consecutive: int | None) -> dict[str, list]:
    """``merge_consecutive_detections``: a species' touching segments joined, scored by the mean of their top 3."""
    if max_consecutive is not None and max_consecutive <= 1:
        return results
    species: dict[str, list] = {}
    for timestamp, scores in results.items():
        for label, score in scores:
            species.setdefault(label, []).append((timestamp, score))
    for label, stamps in species.items():
        species[label] = sorted(stamps, key=lambda t: _start(t[0]))
    merged: dict[str, list] = {}
    for label, stamps in species.items():
        i = 0
        while i < len(stamps) - 1:
            start, end = stamps[i][0].split("-", 1)
            next_start, next_end = stamps[i + 1][0].split("-", 1)
            if float(end) >= float(next_start):
                scores = [stamps[i][1], stamps[i + 1][1]]
                stamps.pop(i)
                while i < len(stamps) - 1 and float(next_end) >= _start(stamps[i + 1][0]):
                    if max_consecutive and len(scores) >= max_consecutive:
                        break
                    scores.append(stamps[i + 1][1])
                    next_end = stamps[i + 1][0].split("-", 1)[1]
                    stamps.pop(i + 1)
                top = sorted(scores, reverse=True)[:3]
                stamps[i] = (f"{start}-{next_end}", sum(top) / len(top))
            i += 1
        merged[label] = stamps
    out: dict[str, list] = {}
    for label, stamps in merged.items():
        for timestamp, score in stamps:
            out.setdefault(timestamp, []).append((label, score))
    return out


class TableWriter:
    """One run's per-file tables: labels' common names and eBird codes, and the settings they print."""

    def __init__(self, settings: AnalyzeSettings, codes: dict[str, str]) -> None:
        self.s = settings
        self.codes = codes

    def raven(self, stamps: Sequence[str], r: dict[str, list], path: str, rate: int) -> str:
        high = min(rate / 2, int(SIG_FMAX / 1.0))
        high = int(min(high, int(self.s.fmax / 1.0)))
        low = max(SIG_FMIN, int(self.s.fmin / 1.0))
        out = [RAVEN_HEADER]
        n = 0
        for t in stamps:
            start, end = t.split("-", 1)
            for label, conf in r[t]:
                n += 1
                code = self.codes.get(label, label)
                common = label.split("_", 1)[-1]
                out.append(
                    f"{n}\tSpectrogram 1\t1\t{start}\t{end}\t{low}\t{high}\t{common}\t{code}\t{conf:.4f}\t{path}\t"
                    f"{start}\n"
                )
        if n == 0:  # a dummy row, so that combined tables know the file
            out.append(f"1\tSpectrogram 1\t1\t0\t3\t{low}\t{high}\tnocall\tnocall\t1.0\t{path}\t0\n")
        return "".join(out)

    def audacity(self, stamps: Sequence[str], r: dict[str, list]) -> str:
        out = []
        for t in stamps:
            span = t.replace("-", "\t")
            out.extend(f"{span}\t{label.replace('_', ', ')}\t{conf:.4f}\n" for label, conf in r[t])
        return "".join(out)

    def kaleidoscope(self, stamps: Sequence[str], r: dict[str, list], path: str) -> str:
        folder_path, filename = os.path.split(path)
        parent, folder = os.path.split(folder_path)
        out = [KALEIDOSCOPE_HEADER]
        for t in stamps:
            start, end = t.split("-", 1)
            for label, conf in r[t]:
                parts = label.split("_", 1)
                out.append(
                    "{},{},{},{},{},{},{},{:.4f},{:.4f},{:.4f},{},{},{}\n".format(
                        parent.rstrip("/"), folder, filename, start, float(end) - float(start), parts[0], parts[-1],
                        conf, self.s.lat, self.s.lon, self.s.week, self.s.overlap, self.s.sensitivity,
                    )
                )  # fmt: skip
        return "".join(out)

    def extra_columns(self) -> dict[str, object]:
        values: dict[str, Callable[[], object]] = {
            "lat": lambda: self.s.lat,
            "lon": lambda: self.s.lon,
            "week": lambda: self.s.week,
            "overlap": lambda: self.s.overlap,
            "sensitivity": lambda: self.s.sensitivity,
            "min_conf": lambda: self.s.min_conf,
            "species_list": lambda: self.s.slist or "",
            "model": lambda: MODEL_NAME,
        }
        return {c: get() for c, get in values.items() if c in self.s.additional_columns}

    def csv(self, stamps: Sequence[str], r: dict[str, list], path: str) -> str:
        extra = self.extra_columns()
        out = [CSV_HEADER[:-1] + "," + ",".join(extra) + "\n" if extra else CSV_HEADER]
        tail = "," + ",".join(str(v) for v in extra.values()) if extra else ""
        for t in stamps:
            start, end = t.split("-", 1)
            for label, conf in r[t]:
                parts = label.split("_", 1)
                out.append(f"{start},{end},{parts[0]},{parts[-1]},{conf:.4f},{path}{tail}\n")
        return "".join(out)

    def write(self, analysis: FileAnalysis, names: dict[str, str], path: str) -> None:
        """The file's tables (``save_result_files``)."""
        merged = merge_consecutive(analysis.results, self.s.merge_consecutive)
        stamps = sorted(merged, key=_start)
        texts = {
            "table": lambda: self.raven(stamps, merged, path, analysis.native_rate),
            "audacity": lambda: self.audacity(stamps, merged),
            "kaleidoscope": lambda: self.kaleidoscope(stamps, merged, path),
            "csv": lambda: self.csv(stamps, merged, path),
        }
        for rtype, target in names.items():
            write_text(target, texts[rtype]())


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.readlines()


def combine_raven(out_dir: str, tables: Sequence[str], problems: list[tuple[str, str]]) -> None:
    """``combine_raven_tables``: every file's selections, numbered on and shifted by the lengths before them."""
    out = [RAVEN_HEADER]
    s_id, offset = 1, 0.0
    audio: list[str] = []
    for table in tables:
        try:
            lines = _lines(table)
            if "Selection" not in lines[0] or "File Offset" not in lines[0]:
                continue
            f_name = lines[1].split("\t")[10]
            duration = file_duration_s(f_name)
            audio.append(f_name)
            for line in lines[1:]:
                if not line.strip():
                    continue
                cells = line.split("\t")
                if cells[7] == "nocall" and cells[8] == "nocall":
                    continue
                cells[0] = str(s_id)
                s_id += 1
                cells[3] = str(float(cells[3]) + offset)
                cells[4] = str(float(cells[4]) + offset)
                out.append("\t".join(cells))
            offset += duration
        except Exception as e:  # BirdNET-Analyzer logs and goes on; so does this, in the report
            problems.append((table, f"cannot combine results ({type(e).__name__}: {e})"))
    write_text(os.path.join(out_dir, COMBINED_RAVEN), "".join(out))
    write_text(os.path.join(out_dir, COMBINED_RAVEN.rsplit(".", 1)[0] + ".list.txt"), "".join(f + "\n" for f in audio))


def combine_kaleidoscope(out_dir: str, tables: Sequence[str], problems: list[tuple[str, str]]) -> None:
    out = [KALEIDOSCOPE_HEADER]
    for table in tables:
        try:
            lines = _lines(table)
            if "INDIR" in lines[0] and "sensitivity" in lines[0]:
                out.extend(lines[1:])
        except Exception as e:
            problems.append((table, f"cannot combine results ({type(e).__name__}: {e})"))
    write_text(os.path.join(out_dir, COMBINED_KALEIDOSCOPE), "".join(out))


def combine_csv(out_dir: str, tables: Sequence[str], problems: list[tuple[str, str]]) -> None:
    out = ""
    for table in tables:
        try:
            lines = _lines(table)
            out += "".join(lines[1:] if out else lines)
        except Exception as e:
            problems.append((table, f"cannot combine results ({type(e).__name__}: {e})"))
    write_text(os.path.join(out_dir, COMBINED_CSV), out)


def combine(settings: AnalyzeSettings, done: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    """The combined tables of the rtypes asked for, from the files' tables in input order; returns the
    problems met, (table, why), for a table that could not be read."""
    problems: list[tuple[str, str]] = []
    if "table" in settings.rtypes:
        combine_raven(settings.output_path, [d["table"] for d in done], problems)
    if "kaleidoscope" in settings.rtypes:
        combine_kaleidoscope(settings.output_path, [d["kaleidoscope"] for d in done], problems)
    if "csv" in settings.rtypes:
        combine_csv(settings.output_path, [d["csv"] for d in done], problems)
    return problems


def write_params(settings: AnalyzeSettings) -> Path:
    """``BirdNET_analysis_params.csv`` (Python's csv module: ``\\r\\n`` line ends)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(
        (
            "File splitting duration",
            "Segment length",
            "Sample rate",
            "Segment overlap",
            "Minimum Segment length",
            "Bandpass filter minimum",
            "Bandpass filter maximum",
            "Merge consecutive detections",
            "Audio speed",
            "Custom classifier path",
        )
    )
    w.writerow(
        (PIECE_S, settings.segment_s, SAMPLE_RATE, settings.overlap, 1.0, settings.fmin, settings.fmax,
         settings.merge_consecutive, 1.0, None)
    )  # fmt: skip
    path = Path(settings.output_path) / PARAMS_FILE
    text = buf.getvalue()
    return write_atomic(path, lambda tmp: tmp.write_bytes(text.encode("utf-8")))
