"""``bird-infer detect``: field recordings in, the tables field tools read out, one set per input file, written
as each file finishes, with a run record that lets an interrupted run resume.

The pool, the fault handling, the manifest checks and the deadline guard are ``predict``'s
(:func:`bird_infer.job.plan_run`, :func:`bird_infer.job.execute`). What differs is the output:

- Each input file's outputs (:mod:`bird_infer.tables`) are written when that file finishes, each through a
  temporary name then a rename, into OUTDIR, mirroring the file's folder below ``--audio``
  (``siteA/0600.wav`` -> ``OUTDIR/siteA/0600.selection.table.txt``; two files of one folder with one stem keep
  their extensions: ``a.wav.selection.table.txt``).
- The run record: ``bird_infer_run.json`` (the models' identity and the settings, written at the start) and
  ``bird_infer_done.jsonl`` (one line per finished file, appended after its outputs are in place, flushed and
  synced). ``--resume`` skips the files listed there whose outputs exist, if the models and settings are the
  same; otherwise it refuses with what differs. Without ``--resume`` a run starts afresh.
- A file that cannot be predicted gets no outputs and a line in ``bird_infer_errors.csv`` (the report of
  :mod:`bird_infer.report`); it is not recorded as done, so ``--resume`` tries it again. A file cut short
  gets outputs for the rows that decoded (the rest hold the fallback, 0, which is below any ``--min-conf``).
- ``--combine`` writes one table over all files at the end (:data:`bird_infer.tables.COMBINED`), from the
  per-file tables, in file order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bird_infer.errors import BirdInferError, OutputError
from bird_infer.job import RunPlan, execute, plan_run, settle
from bird_infer.pipeline import FileFailure, FileResult, RunOptions
from bird_infer.preflight import check_output
from bird_infer.report import report_frame
from bird_infer.runrecord import RUN_RECORD, RunRecord, write_atomic, write_text
from bird_infer.scheduler import Outcome
from bird_infer.schema import Manifest
from bird_infer.submission import safe_text, write_csv_atomic
from bird_infer.tables import (
    COMBINED,
    CSV_HEADER,
    KALEIDOSCOPE_HEADER,
    RTYPES,
    SUFFIXES,
    audacity_labels,
    combine_csv,
    combine_raven,
    detections,
    frequency_band,
    kaleidoscope_csv,
    raven_table,
    results_csv,
    write_probs,
)

log = logging.getLogger(__name__)

ERRORS = "bird_infer_errors.csv"
RECORD_FORMAT = 1


@dataclass(frozen=True)
class DetectSettings:
    """What ``detect`` writes; all of it must match for ``--resume`` to continue a run."""

    rtypes: tuple[str, ...] = ("table",)
    """Result types, from :data:`bird_infer.tables.RTYPES`."""
    min_conf: float = 0.25
    """A (row, label) with probability >= this is a detection; in (0, 1]."""
    combine: bool = False
    """Also write one table over all files (table, csv, kaleidoscope)."""
    plots: bool = False
    """Also write a PNG per file (:mod:`bird_infer.plot`, the ``[field]`` extra)."""
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


def output_names(entries: Sequence[Path], root: Path) -> list[str]:
    """Each entry's output name below OUTDIR (a relative POSIX path, no suffix), unique by construction: the
    folder below ``root`` and the stem; the file name with its extension where stems collide; ``~2``, ``~3``
    for whatever still collides. Names are made printable (:func:`bird_infer.submission.safe_text`)."""

    def rel(p: Path) -> Path:
        try:
            return p.relative_to(root)
        except ValueError:
            return Path(p.name)

    first = ["/".join(safe_text(x) for x in (*rel(p).parent.parts, p.stem)) for p in entries]
    second = ["/".join(safe_text(x) for x in rel(p).parts) or safe_text(p.name) for p in entries]
    counts = Counter(first)
    names = [s if counts[f] > 1 else f for f, s in zip(first, second, strict=True)]
    counts = Counter(names)
    taken: set[str] = set()
    out = []
    for n in names:
        name, k = n, 1
        while name in taken or (name != n and counts[name]):
            k += 1
            name = f"{n}~{k}"
        taken.add(name)
        out.append(name)
    return out


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

    def __init__(self, plan: RunPlan, settings: DetectSettings, out_dir: Path, record: RunRecord, names: dict) -> None:
        self.plan = plan
        self.settings = settings
        self.out_dir = out_dir
        self.record = record
        self.names = names
        self.band = frequency_band(plan.manifest)
        self.n_detections = 0
        self.outcomes: dict[Path, Outcome] = {}

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
            raise OutputError(
                f"cannot write the outputs of {safe_text(outcome.path.name)} in {self.out_dir}: {e.strerror or e}; "
                f"the {len(self.record.done)} file(s) done are kept: free space and rerun with --resume"
            ) from e

    def write(self, outcome: FileResult) -> None:
        m = self.plan.manifest
        name = self.names[outcome.path]
        audio_path = safe_text(str(outcome.path))
        dets = detections(outcome.probs, m.labels, m.row_s, self.settings.min_conf)
        for rtype, path in self.paths_for(name).items():
            if rtype == "table":
                write_text(path, raven_table(dets, audio_path, self.band, m.names, m.row_s))
            elif rtype == "csv":
                write_text(path, results_csv(dets, audio_path, m.names))
            elif rtype == "audacity":
                write_text(path, audacity_labels(dets, m.names))
            elif rtype == "kaleidoscope":
                write_text(path, kaleidoscope_csv(dets, audio_path, m.names))
            elif rtype == "probs":
                write_atomic(path, lambda tmp: write_probs(tmp, outcome.probs, m.labels, m.row_s))
            else:
                from bird_infer.plot import plot_file

                write_atomic(path, lambda tmp: plot_file(outcome.path, m, outcome.probs, tmp, self.settings.top))
        self.n_detections += len(dets)
        self.record.add(
            {
                "name": name,
                "file": audio_path,
                "duration_s": round(outcome.duration_s, 6),
                "rows": outcome.n_rows,
                "detections": len(dets),
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
    :func:`bird_infer.job.plan_run` raises, OutputError for an unusable ``out_dir``, ResumeRefusedError."""
    settings = settings or DetectSettings()
    out_dir = Path(out_dir)
    if "probs" in settings.rtypes:
        _require("pyarrow", "--rtype probs")
    if settings.plots:
        _require("matplotlib", "--plots")

    def place(_prefixes: list[str], _rows: list[int], _manifest: Manifest) -> None:
        if out_dir.exists() and not out_dir.is_dir():
            raise BirdInferError(f"--out {out_dir} is a file; detect writes a folder of tables: give a folder")
        check_output(out_dir / RUN_RECORD)

    plan = plan_run(audio, models, options, time_limit_s, None, place)
    names = dict(zip(plan.entries, output_names(plan.entries, plan.root), strict=True))
    record = RunRecord(out_dir, identity(plan.manifest, settings, plan.options, plan.root))
    record.start(resume)
    writer = _Writer(plan, settings, out_dir, record, names)
    todo = {p for p in plan.entries if not _is_done(record, names[p], writer.paths_for(names[p]))}
    n_resumed = len(plan.entries) - len(todo)
    if n_resumed:
        log.info("resuming: %d of %d files already done in %s", n_resumed, len(plan.entries), out_dir)
    execute(plan, todo, on_result=writer)
    processed = [p for p in plan.entries if p in writer.outcomes]
    outcomes = [writer.outcomes[p] for p in processed]
    rows = dict(zip(plan.entries, plan.rows, strict=True))
    _probs, entries = settle(
        outcomes,
        [names[p] for p in processed],
        [rows[p] for p in processed],
        len(plan.manifest.labels),
        plan.manifest.n_folds,
    )
    report = write_csv_atomic(report_frame(entries), out_dir / ERRORS)
    combined = _combine(plan, settings, out_dir, names, record) if settings.combine else ()
    results = [o for o in outcomes if isinstance(o, FileResult)]
    return DetectSummary(
        out_dir=out_dir,
        n_files=len(plan.entries),
        n_predicted=len(results),
        n_resumed=n_resumed,
        n_failed=sum(isinstance(o, FileFailure) for o in outcomes),
        n_detections=writer.n_detections,
        n_chunks=sum(r.n_chunks for r in results),
        wall_s=time.perf_counter() - plan.started,
        report_path=report,
        combined=combined,
        precision=plan.precision,
    )


def _require(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise BirdInferError(f"{what} needs {module}: pip install 'bird_infer[field]'")


def _is_done(record: RunRecord, name: str, paths: dict[str, Path]) -> bool:
    return name in record.done and all(p.exists() for p in paths.values())


def _combine(
    plan: RunPlan, settings: DetectSettings, out_dir: Path, names: dict[Path, str], record: RunRecord
) -> tuple[Path, ...]:
    """The combined tables, from the per-file outputs of every file done (this run's and resumed ones)."""
    done = [names[p] for p in plan.entries if names[p] in record.done]
    written = []
    for rtype in settings.rtypes:
        if rtype not in COMBINED:
            continue
        texts = [(out_dir / f"{n}{SUFFIXES[rtype]}").read_text(encoding="utf-8") for n in done]
        if rtype == "table":
            text = combine_raven(list(zip(texts, [record.done[n]["duration_s"] for n in done], strict=True)))
            listing = "".join(record.done[n]["file"] + "\n" for n in done)
            write_text(out_dir / COMBINED[rtype].replace(".txt", ".list.txt"), listing)
        else:
            text = combine_csv(texts, CSV_HEADER if rtype == "csv" else KALEIDOSCOPE_HEADER)
        path = out_dir / COMBINED[rtype]
        write_text(path, text)
        written.append(path)
    return tuple(written)
