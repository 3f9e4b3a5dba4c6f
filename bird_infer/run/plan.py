"""What a run will do, settled before any audio is read, and the stream of its outcomes.

:func:`plan_run` checks the models, the sample submission and the output place, names the entries and picks the
mode the folds start in (:func:`bird_infer.runtime.precision.start_precision`: its accuracy guard runs beside the
workers); :func:`iter_outcomes` streams each entry's outcome (the deadline guard applied, progress shown), holding
them until the guard's verdict, and runs every file again in the mode chosen instead when it refuses.
The jobs (:mod:`bird_infer.jobs`) consume that stream: ``predict`` into one CSV, ``detect`` into tables per file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import audio_info, claimed_chunks
from bird_infer.audio.files import entry_problem, scan_audio
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AudioDecodeError
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.sample import column_order, read_sample_columns
from bird_infer.contract.schema import FALLBACK_PROB
from bird_infer.contract.text import safe_text
from bird_infer.run.deadline import Deadline, DeadlineGuard
from bird_infer.run.engine import stream_files
from bird_infer.run.options import RunOptions, aligned_blocks
from bird_infer.run.outcomes import FileFailure, FileResult, Outcome
from bird_infer.run.pool import EarlyPool
from bird_infer.run.progress import Progress, ProgressDisplay
from bird_infer.run.segments import plan_tasks
from bird_infer.runtime.birdnet_analyzer import range_filter_mask
from bird_infer.runtime.checks import check_models
from bird_infer.runtime.machine import cpu_info
from bird_infer.runtime.precision import PrecisionChoice, start_precision
from bird_infer.runtime.sessions import SessionSettings

log = logging.getLogger(__name__)


def header_chunks(paths: list[Path], manifest: Manifest) -> list[int | None]:
    """Rows each file will give by its header (capped, see :mod:`bird_infer.audio`); None where the header
    cannot be read or its length is unknown."""
    counts: list[int | None] = []
    for p in paths:
        try:
            info = audio_info(p)
        except AudioDecodeError:
            counts.append(None)
            continue
        counts.append(None if info.frames is None else claimed_chunks(info, manifest.row_s))
    return counts


def fallback_rows(known: list[int | None]) -> list[int]:
    """Rows for each file: the header's count, else the most common count among the others, else 1.

    A file whose header cannot be read has an unknown length; in a competition test set the files
    share one length (BirdCLEF 2023: 10 minutes, 120 rows), so the most common count is the best guess.
    """
    seen = Counter(k for k in known if k is not None)
    guess = seen.most_common(1)[0][0] if seen else 1
    return [guess if k is None else k for k in known]


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, settled before any audio is read (shared by ``predict`` and ``detect``)."""

    manifest: Manifest
    entries: list[Path]
    """Every audio entry found, in order."""
    names: list[str]
    """Each entry's unique name, by the job's rule (the submission's row_id prefix, a field table's name)."""
    problems: dict[Path, str | None]
    """Why an entry cannot be opened as a file (never opened), or None."""
    rows: list[int]
    """Each entry's expected rows (header claim, else the most common count)."""
    options: RunOptions
    """The run's options, the session in the mode the workers start in."""
    choice: PrecisionChoice
    """That mode, and the accuracy guard's verdict on it (pending while the guard runs)."""
    started: float
    """``time.perf_counter()`` when the plan began (the deadline counts from here)."""
    started_mono: float
    """``time.monotonic()`` at the same moment: comparable with the workers' clocks."""
    time_limit_s: float | None
    root: Path
    """The folder the entries were found under."""
    sample_columns: list[str] | None = None
    """The sample submission's label columns, in its order, when one was given."""
    unlisted: tuple[tuple[Path, str], ...] = ()
    """Folders under ``--audio`` that could not be listed, and why: report lines, failures for ``--strict``."""
    outside: np.ndarray | None = None
    """With ``RunOptions.range_filter``: the labels off BirdNET's species list there (they get the fallback)."""
    early: EarlyPool | None = None
    """Worker processes started while the mode was being chosen (the first stream takes them; else they end)."""

    @property
    def precision(self) -> str:
        """What the folds ran as, and the accuracy guard's measurement when it ran (final once the stream ended)."""
        return self.choice.note

    @property
    def session(self) -> SessionSettings:
        """How the folds ran: the verdict's mode once known, else the mode started in."""
        return self.choice.wait()[0] if self.choice.done() else self.options.session

    @property
    def paths(self) -> list[Path]:
        """The entries that can be opened."""
        return [p for p in self.entries if self.problems[p] is None]

    @property
    def rows_of(self) -> dict[Path, int]:
        return dict(zip(self.entries, self.rows, strict=True))

    def workers(self, paths: list[Path] | None = None) -> int:
        """Worker processes predicting ``paths`` (default: every readable entry) get: the options' rule over
        their tasks, a long file split across workers counting as several (:mod:`bird_infer.run.segments`)."""
        rows_of = self.rows_of
        todo = self.paths if paths is None else paths
        return self.options.workers_for(max(1, len(plan_tasks(self.options, [rows_of[p] for p in todo]))))


def _say_if_too_slow(options: RunOptions, time_limit_s: float | None, rows: int) -> None:
    """Say in the log, before any audio, when the check's pace (one thread) makes the run longer than its limit."""
    if not time_limit_s or options.expected_row_s <= 0:
        return
    workers = options.workers_for(10**6)
    projected_s = rows * options.expected_row_s / workers
    if projected_s > time_limit_s:
        log.warning(
            "this bundle took %.2f s per row in its check (one thread): %d rows on %d workers project to %.0f min, "
            "over the %.0f-min limit; the deadline guard will drop shifts and folds, then give fallback rows",
            options.expected_row_s,
            rows,
            workers,
            projected_s / 60,
            time_limit_s / 60,
        )


def plan_run(
    audio: str | Path,
    models: str | Path,
    name_entries: Callable[[list[Path], Path], list[str]],
    options: RunOptions | None = None,
    time_limit_s: float | None = None,
    sample_submission: str | Path | None = None,
    check_place: Callable[[list[str], list[int], Manifest], None] | None = None,
) -> RunPlan:
    """Everything checked before any audio is read: the manifest and model files, every fold loaded and run
    once (:func:`bird_infer.runtime.checks.check_models`), the sample submission, each entry's name
    (``name_entries(entries, root)``, the job's rule), the output place (``check_place(names, rows, manifest)``),
    then the mode the folds start in (a reduced precision's accuracy guard then runs beside the workers).
    Raises ManifestError, SubmissionFormatError, OutputError (exit status 2 in the CLI)."""
    started, started_mono = time.perf_counter(), time.monotonic()
    options = options or RunOptions()
    if time_limit_s is not None and not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise ValueError(f"time_limit_s must be a positive number of seconds, got {time_limit_s!r}")
    manifest = load_manifest(models)
    sample_cols = read_sample_columns(sample_submission) if sample_submission else None
    column_order(manifest.labels, sample_cols)  # label mismatch fails here, before the audio
    row_s = check_models(manifest) or 0.0  # seconds per row (a stand-in check may say nothing)
    options = dataclasses.replace(options, expected_row_s=max(options.expected_row_s, row_s))
    scan = scan_audio(audio)
    entries = scan.entries
    for folder, why in scan.unlisted:
        log.warning("%s: %s: its audio is neither predicted nor known", safe_text(str(folder)), why)
    if scan.skipped_mac:
        log.info(
            "%d macOS leftover(s) not read: AppleDouble '._' files and macOS trash folders (%s ...)",
            scan.skipped_mac,
            ".Trashes",
        )
    root = Path(audio) if Path(audio).is_dir() else Path(audio).parent
    names = name_entries(entries, root)
    problems = {p: entry_problem(p) for p in entries}
    rows = fallback_rows(header_chunks(entries, manifest))
    if check_place is not None:
        check_place(names, rows, manifest)
    if not entries:
        log.warning("no audio files under %s", audio)
    readable = [p for p in entries if problems[p] is None]
    _say_if_too_slow(options, time_limit_s, sum(r for p, r in zip(entries, rows, strict=True) if problems[p] is None))
    early = None
    if readable and not options.in_process and options.engine == "pool":  # they start while the modes are ranked
        readable_rows = [r for p, r in zip(entries, rows, strict=True) if problems[p] is None]
        tasks = plan_tasks(aligned_blocks(manifest, options), readable_rows)  # as the stream will count them
        early = EarlyPool(options.workers_for(max(1, len(tasks))), manifest)
    try:
        after = early.started if early is not None else None
        choice = start_precision(manifest, options.session, readable, options.precision_bound, after=after)
        options = dataclasses.replace(options, session=choice.start)
        outside = _range_filter(manifest, options)
    except BaseException:
        if early is not None:
            early.close()
        raise
    return RunPlan(
        manifest,
        entries,
        names,
        problems,
        rows,
        options,
        choice,
        started,
        started_mono,
        time_limit_s,
        root,
        sample_cols,
        tuple(scan.unlisted),
        outside,
        early,
    )


def _range_filter(manifest: Manifest, options: RunOptions) -> np.ndarray | None:
    """With ``RunOptions.range_filter``: the labels off BirdNET's species list there (logged), else None."""
    if options.range_filter is None:
        return None
    outside = range_filter_mask(manifest.labels, manifest.members, options.range_filter)
    lat, lon, week, threshold = options.range_filter
    log.info(
        "BirdNET's range filter at %g/%g, week %d (threshold %g): %d of %d labels are off the species list "
        "and get the fallback value %g",
        lat,
        lon,
        week,
        threshold,
        int(outside.sum()),
        len(manifest.labels),
        FALLBACK_PROB,
    )
    return outside


def iter_outcomes(plan: RunPlan, todo: set[Path] | None = None) -> Iterator[tuple[Path, Outcome]]:
    """Predict the plan's entries (or those in ``todo``), the deadline guard applied; yield (entry, outcome) as
    each settles. Entries that cannot be opened fail at once, first. Progress is shown as outcomes arrive.

    While the accuracy guard runs (:attr:`RunPlan.choice`), outcomes are held back; once it accepts the mode the
    workers started in, they are yielded. If it chooses another mode, the held outcomes are dropped, the workers
    ended, and every file runs again in that mode: nothing a refused mode computed reaches the outputs."""
    manifest, options = plan.manifest, plan.options
    entries = [p for p in plan.entries if todo is None or p in todo]
    rows_of = plan.rows_of
    paths = [p for p in entries if plan.problems[p] is None]
    progress = Progress(len(entries), sum(rows_of[p] for p in entries), plan.time_limit_s)
    workers = plan.workers(paths)
    log.info(cpu_info().line())
    log.info(
        "%d files, %d chunks expected, %d model runs per chunk, %d workers x %d threads",
        len(entries),
        progress.total_chunks,
        manifest.runs(),
        workers,
        options.session.intra_op_threads,
    )
    show = ProgressDisplay(progress)

    def settle(path: Path, outcome: Outcome) -> tuple[Path, Outcome]:
        if plan.outside is not None and plan.outside.any() and isinstance(outcome, FileResult):
            outcome = dataclasses.replace(outcome, probs=np.where(plan.outside, FALLBACK_PROB, outcome.probs))
        progress.update(outcome.n_rows if isinstance(outcome, FileResult) else rows_of[path])
        show.update()
        return path, outcome

    try:
        for p in entries:
            if plan.problems[p]:
                log.warning("%s: %s", safe_text(str(p)), plan.problems[p])
                yield settle(p, FileFailure(p, f"not read: {plan.problems[p]}", attempts=0))
        session = options.session
        while True:  # once, or twice when the guard chooses another mode than the one the workers started in
            held: list[tuple[Path, Outcome]] = []
            stream = stream_files(
                paths,
                manifest,
                dataclasses.replace(options, session=session),
                guard=_deadline_guard(plan, progress, workers),
                rows=[rows_of[p] for p in paths],
                early=plan.early,
            )
            try:
                for i, outcome in stream:
                    held.append((paths[i], outcome))
                    if plan.choice.done():
                        if plan.choice.wait()[0] != session:
                            break
                        yield from (settle(path, o) for path, o in held)
                        held.clear()
                else:
                    if plan.choice.wait()[0] == session:
                        yield from (settle(path, o) for path, o in held)
                        return
            finally:
                stream.close()
            chosen = plan.choice.wait()[0]
            log.warning(
                "accuracy guard: %s; the %d file(s) predicted so far in %s %s are dropped, and every file runs again",
                plan.choice.note,
                len(held),
                session.backend,
                session.precision,
            )
            session = chosen
    finally:
        show.close()
        if plan.early is not None:
            plan.early.close()  # not taken (another engine, nothing to read): its workers end here


def _deadline_guard(plan: RunPlan, progress: Progress, workers: int) -> DeadlineGuard | None:
    """The deadline guard for the plan's limit, counting from the plan's start (None without a limit)."""
    if not plan.time_limit_s:
        return None
    manifest = plan.manifest
    lowest = len(manifest.members)
    return DeadlineGuard(
        Deadline(plan.time_limit_s),
        manifest.n_units,
        progress.total_chunks,
        workers,
        started=plan.started,
        min_folds=lowest,
        runs=tuple(manifest.runs(max(k, lowest)) for k in range(manifest.n_units + 1)),
    )
