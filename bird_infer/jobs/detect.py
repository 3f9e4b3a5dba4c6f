"""``bird-infer detect``: field recordings in, the tables field tools read out, one set per input file, written
as each file finishes, with a run record that lets an interrupted run resume.

The pool, the fault handling, the manifest checks and the deadline guard are ``predict``'s
(:func:`bird_infer.run.plan.plan_run`, :func:`bird_infer.run.plan.iter_outcomes`). What differs is the output:

- Each input file's outputs (:mod:`bird_infer.outputs.tables`) are written when that file finishes, each through a
  temporary name then a rename, into OUTDIR, mirroring the file's folder below ``--audio``
  (``siteA/0600.wav`` -> ``OUTDIR/siteA/0600.selection.table.txt``; two files of one folder with one stem keep
  their extensions: ``a.wav.selection.table.txt``).
- The run record: ``bird_infer_run.json`` (the models' identity and the settings, written at the start) and
  ``bird_infer_done.jsonl`` (one line per finished file with its detections as records, appended after its
  outputs are in place, flushed and synced). ``--resume`` skips the files listed there whose outputs exist,
  if the models and settings are the same; otherwise it refuses with what differs. Without ``--resume`` a run
  starts afresh.
- A file that cannot be predicted gets no outputs and a line in ``bird_infer_errors.csv`` (the report of
  :mod:`bird_infer.outputs.report`); it is not recorded as done, so ``--resume`` tries it again. A file cut short
  gets outputs for the rows that decoded (the rest hold the fallback, 0, which is below any ``--min-conf``).
- ``--combine`` writes one table over all files at the end (:data:`bird_infer.outputs.tables.COMBINED`), in
  file order, from the detection records of every file done (this run's and those of the run it resumes).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import BirdInferError, OutputError
from bird_infer.contract.extras import require
from bird_infer.contract.text import safe_text
from bird_infer.outputs.atomic import write_atomic, write_csv_atomic, write_text
from bird_infer.outputs.names import output_names
from bird_infer.outputs.place import check_output
from bird_infer.outputs.plot import plot_file
from bird_infer.outputs.report import report_frame, settle, unit_name, unlisted_entries
from bird_infer.outputs.runrecord import RUN_RECORD, RunRecord
from bird_infer.outputs.tables import (
    COMBINED,
    RTYPES,
    SUFFIXES,
    TEXT_RTYPES,
    Detection,
    FileDetections,
    TableStyle,
    combined_rows,
    detections,
    render,
    table_rows,
    write_probs,
)
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileFailure, FileResult, Outcome
from bird_infer.run.plan import RunPlan, iter_outcomes, plan_run

log = logging.getLogger(__name__)

ERRORS = "bird_infer_errors.csv"
RECORD_FORMAT = 3
"""2: each done line holds its file's detections (``--combine`` builds from them); 3: and its audio file's size and
modification time (``--resume`` redoes a file changed since)."""


@dataclass(frozen=True)
class DetectSettings:
    """What ``detect`` writes; all of it must match for ``--resume`` to continue a run."""

    rtypes: tuple[str, ...] = ("table",)
    """Result types, from :data:`bird_infer.outputs.tables.RTYPES`."""
    min_conf: float = 0.25
    """A (row, label) with probability >= this is a detection; in (0, 1]."""
    combine: bool = False
    """Also write one table over all files (table, csv, kaleidoscope)."""
    plots: bool = False
    """Also write a PNG per file (:mod:`bird_infer.outputs.plot`, the ``[field]`` extra)."""
    top: int = 5
    """Labels shown in each plot's heatmap."""

    def __post_init__(self) -> None:
        unknown = [r for r in self.rtypes if r not in RTYPES]
        if not self.rtypes or unknown:
            raise ValueError(f"rtypes must be some of {RTYPES}, got {self.rtypes!r}")
        if not (0 < self.min_conf <= 1):
            raise ValueError(f"min_conf must be in (0, 1], got {self.min_conf!r}")
        if self.top < 1:
            raise ValueError(f"top must be >= 1, got {self.top!r}")


@dataclass(frozen=True)
class DetectSummary:
    """What a ``detect`` run did."""

    out_dir: Path
    n_files: int
    n_predicted: int
    """Files predicted by this run (outputs written)."""
    n_resumed: int
    """Files skipped because an earlier run of the same record had done them."""
    n_failed: int
    """Files with no outputs (see the report); ``--resume`` tries them again."""
    n_detections: int
    """Detections written by this run."""
    n_chunks: int
    """Rows predicted by this run."""
    wall_s: float
    report_path: Path
    combined: tuple[Path, ...] = ()
    precision: str = "onnxruntime fp32"


def identity(manifest: Manifest, settings: DetectSettings, options: RunOptions, audio_root: Path) -> dict:
    """What must match for ``--resume``: the models (the manifest as parsed, fold checksums included, its free
    text description left out), the settings that change outputs, and the audio folder."""
    models = json.dumps({**manifest.to_dict(), "description": ""}, sort_keys=True)
    return {
        "format": RECORD_FORMAT,
        "models": {
            "manifest_sha256": hashlib.sha256(models.encode("utf-8")).hexdigest(),
            "folds": {f.name: f.sha256 for m in manifest.members for f in m.folds},
        },
        "settings": {
            **asdict(settings),
            "rtypes": sorted(settings.rtypes),
            "backend": options.session.backend,
            "precision": options.session.precision,
        },
        "audio": str(audio_root.resolve()),
    }


class _Writer:
    """Writes one file's outputs as it finishes, then records it as done."""

    def __init__(self, plan: RunPlan, settings: DetectSettings, out_dir: Path, record: RunRecord) -> None:
        self.plan = plan
        self.settings = settings
        self.out_dir = out_dir
        self.record = record
        self.names = dict(zip(plan.entries, plan.names, strict=True))
        self.style = TableStyle.of(plan.manifest)
        self.n_detections = 0
        self.outcomes: dict[Path, Outcome] = {}
        self.stamps = {p: stamp(p) for p in plan.entries}
        """Each entry's (size, mtime_ns) before it is read: recorded, so that --resume redoes a file changed since."""

    def paths_for(self, name: str) -> dict[str, Path]:
        out = {r: self.out_dir / f"{name}{SUFFIXES[r]}" for r in self.settings.rtypes}
        if self.settings.plots:
            out["plot"] = self.out_dir / f"{name}.png"
        return out

    def __call__(self, outcome: Outcome) -> None:
        self.outcomes[outcome.path] = outcome
        if not isinstance(outcome, FileResult):
            return
        try:
            self.write(outcome)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # this file's outputs only: it is reported, the others are done
                reason = f"its output name is too long for the file system ({e.strerror}): no outputs written"
                self.outcomes[outcome.path] = FileFailure(outcome.path, reason, outcome.attempts)
                log.warning("%s: %s", safe_text(outcome.path.name), reason)
                return
            raise OutputError(
                f"cannot write the outputs of {safe_text(outcome.path.name)} in {self.out_dir}: {e.strerror or e}; "
                f"the {len(self.record.done)} file(s) done are kept: free space and rerun with --resume"
            ) from e

    def write(self, outcome: FileResult) -> None:
        m = self.plan.manifest
        name = self.names[outcome.path]
        dets = detections(outcome.probs, m.labels, m.row_s, self.settings.min_conf)
        found = FileDetections(safe_text(str(outcome.path)), round(outcome.duration_s, 6), tuple(dets))
        for rtype, path in self.paths_for(name).items():
            if rtype in TEXT_RTYPES:
                write_text(path, render(rtype, table_rows(rtype, found, self.style)))
            elif rtype == "probs":
                write_atomic(path, lambda tmp: write_probs(tmp, outcome.probs, m.labels, m.row_s))
            else:
                write_atomic(path, lambda tmp: plot_file(outcome.path, m, outcome.probs, tmp, self.settings.top))
        self.n_detections += len(dets)
        size, mtime_ns = self.stamps.get(outcome.path, (-1, -1))
        self.record.add(
            {
                "name": name,
                "file": found.audio_path,
                "duration_s": found.duration_s,
                "rows": outcome.n_rows,
                "detections": [[d.begin_s, d.end_s, d.label, d.confidence] for d in dets],
                "size": size,
                "mtime_ns": mtime_ns,
            }
        )


def run_detect(
    audio: str | Path,
    models: str | Path,
    out_dir: str | Path,
    settings: DetectSettings | None = None,
    options: RunOptions | None = None,
    resume: bool = False,
    time_limit_s: float | None = None,
) -> DetectSummary:
    """Detect in every audio file under ``audio`` with the bundle in ``models``; write the tables into
    ``out_dir`` as files finish (see the module docstring). Raises (before any audio is read) what
    :func:`bird_infer.run.plan.plan_run` raises, OutputError for an unusable ``out_dir``, ResumeRefusedError."""
    settings = settings or DetectSettings()
    out_dir = Path(out_dir)
    if "probs" in settings.rtypes:
        require("pyarrow", "--rtype probs")
    if settings.plots:
        require("matplotlib", "--plots")

    def place(_prefixes: list[str], _rows: list[int], manifest: Manifest) -> None:
        if manifest.blend.needs_every_row:
            raise BirdInferError(
                "this bundle blends its members by rank ('blend': {'rule': 'rank'}), which needs every row of "
                "the run before any file's rows are final; detect writes each file's tables as it finishes. Use "
                "bird-infer predict, or a mean or power blend"
            )
        if out_dir.exists() and not out_dir.is_dir():
            raise BirdInferError(f"--out {out_dir} is a file; detect writes a folder of tables: give a folder")
        check_output(out_dir / RUN_RECORD)

    plan = plan_run(audio, models, output_names, options, time_limit_s, None, place)
    clash = sorted({"start_s", "end_s"} & set(plan.manifest.labels)) if "probs" in settings.rtypes else []
    if clash:
        raise OutputError(
            f"label(s) {clash} would overwrite the Parquet time columns of --rtype probs: drop probs or rename them"
        )
    record = RunRecord(out_dir, identity(plan.manifest, settings, plan.options, plan.root))
    record.start(resume)
    writer = _Writer(plan, settings, out_dir, record)
    names = writer.names
    todo = {p for p in plan.entries if not _is_done(record, names[p], writer.paths_for(names[p]), p)}
    n_resumed = len(plan.entries) - len(todo)
    if n_resumed:
        log.info("resuming: %d of %d files already done in %s", n_resumed, len(plan.entries), out_dir)
    for _path, outcome in iter_outcomes(plan, todo):
        writer(outcome)
    processed = [p for p in plan.entries if p in writer.outcomes]
    outcomes = [writer.outcomes[p] for p in processed]
    rows = plan.rows_of
    _probs, entries = settle(
        outcomes,
        [names[p] for p in processed],
        [rows[p] for p in processed],
        len(plan.manifest.labels),
        plan.manifest.n_units,
        unit_name(plan.manifest),
    )
    report = write_csv_atomic(report_frame(entries + unlisted_entries(plan.unlisted)), out_dir / ERRORS)
    combined = _combine(plan, settings, out_dir, record, writer.style) if settings.combine else ()
    results = [o for o in outcomes if isinstance(o, FileResult)]
    return DetectSummary(
        out_dir=out_dir,
        n_files=len(plan.entries),
        n_predicted=len(results),
        n_resumed=n_resumed,
        n_failed=sum(isinstance(o, FileFailure) for o in outcomes) + len(plan.unlisted),
        n_detections=writer.n_detections,
        n_chunks=sum(r.n_chunks for r in results),
        wall_s=time.perf_counter() - plan.started,
        report_path=report,
        combined=combined,
        precision=plan.precision,
    )


def stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of an audio entry, (-1, -1) when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _is_done(record: RunRecord, name: str, paths: dict[str, Path], audio: Path) -> bool:
    """Done by the run resumed, its outputs in place, and the audio unchanged since (size and modification time)."""
    line = record.done.get(name)
    if line is None or not all(p.exists() for p in paths.values()):
        return False
    return [line.get("size"), line.get("mtime_ns")] == list(stamp(audio))


def _combine(
    plan: RunPlan, settings: DetectSettings, out_dir: Path, record: RunRecord, style: TableStyle
) -> tuple[Path, ...]:
    """The combined tables, from the detection records of every file done (this run's and resumed ones)."""
    done = [record.done[n] for n in plan.names if n in record.done]
    files = [
        FileDetections(d["file"], d["duration_s"], tuple(Detection(*det) for det in d["detections"])) for d in done
    ]
    written = []
    for rtype in settings.rtypes:
        if rtype not in COMBINED:
            continue
        if rtype == "table":
            listing = "".join(f.audio_path + "\n" for f in files)
            write_text(out_dir / COMBINED[rtype].replace(".txt", ".list.txt"), listing)
        path = write_text(out_dir / COMBINED[rtype], render(rtype, combined_rows(rtype, files, style)))
        written.append(path)
    return tuple(written)
