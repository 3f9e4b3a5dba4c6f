"""One long file on every core: its rows split into segments that different workers predict, then assembled.

When a run has fewer files than cores (a field recording of several hours, a single test file), each long
file is cut into row ranges, one per core it can use. Boundaries are multiples of the decode block
(``RunOptions.block_chunks`` rows), and every segment decodes its file from the start but runs the front-ends
and the folds only on its own rows: each block a segment predicts is the very block an unsplit run predicts,
so the rows are bit-identical (tested), whatever the resampling. Decoding the rows before a segment costs a
few ms per row against ~100 ms of models.

The parts come back as :class:`PartResult`; :func:`assemble` joins them as one :class:`FileResult`: the
fallback for chunks with no finite fold, the manifest's post-processing over the whole file, the rows the
header claims beyond what decodes, the report's notes. An unsplit file is one part, assembled the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import NonFiniteOutputError
from bird_infer.contract.schema import FALLBACK_PROB, Member
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileResult, PartResult, RowSums, StageTimes, position_rows
from bird_infer.run.postprocess import PostProcessor
from bird_infer.run.stages import FileStages
from bird_infer.runtime.blend import blend, member_weights


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, end)`` of one file (``end`` None: to the end of the file)."""

    file: int
    """Index of the file in the run's list."""
    start: int = 0
    end: int | None = None

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end is None


def plan_segments(rows: Sequence[int], cores: int, block_rows: int) -> list[Segment]:
    """One segment per file, except when there are fewer files than ``cores``: then each file of at least two
    blocks is cut into up to ``ceil(cores / files)`` segments of whole blocks."""
    n = len(rows)
    if n == 0 or n >= cores:
        return [Segment(i) for i in range(n)]
    per_file = math.ceil(cores / n)
    out: list[Segment] = []
    for i, r in enumerate(rows):
        blocks = math.ceil(r / block_rows)
        parts = min(per_file, blocks)
        if parts < 2:
            out.append(Segment(i))
            continue
        size = math.ceil(blocks / parts) * block_rows
        starts = list(range(0, r, size))
        out.extend(Segment(i, s, None if k == len(starts) - 1 else s + size) for k, s in enumerate(starts))
    return out


def plan_tasks(options: RunOptions, rows: Sequence[int]) -> list[Segment]:
    """The tasks for files of ``rows`` rows: one per file, or segments of long files when there are fewer files
    than cores (:func:`plan_segments`)."""
    if options.split_files and not options.in_process:
        return plan_segments(rows, options.workers_for(10**6), options.block_chunks)
    return [Segment(i) for i in range(len(rows))]


def member_stack(manifest: Manifest, parts: Sequence[PartResult], n_rows: int) -> np.ndarray:
    """Each member's rows over the whole file, its parts added up, in the bundle's label columns:
    (n_members, n_rows, n_labels) float32, NaN where a member has no vote (its label, or its row)."""
    position = {label: j for j, label in enumerate(manifest.labels)}
    stack = np.full((len(manifest.members), n_rows, len(manifest.labels)), np.nan, dtype=np.float32)
    for i, m in enumerate(manifest.members):
        if not m.labels:
            continue
        sums = parts[0].member_rows[i]
        for p in parts[1:]:
            sums = sums.merged(p.member_rows[i])
        if m.ensemble.output == "framewise" and m.ensemble.frame_reduce == "position_mean_max":
            win = m if m.source is None else manifest.member(m.source.member)
            frames = _frames_per_window(m, win)
            rows = position_rows(sums, n_rows, manifest.row_s, win.audio.clip_s / frames)
        else:
            rows = sums.rows(n_rows)
        voted = ~np.isnan(rows).any(axis=1)
        stack[i][np.ix_(voted, [position[x] for x in m.labels])] = rows[voted]
    return stack


def extra_rows(manifest: Manifest, parts: Sequence[PartResult], n_rows: int) -> dict[str, np.ndarray]:
    """``MEMBER:OUTPUT`` -> (n_rows, dim): the embeddings file-level stages read, the parts added up."""
    merged: dict[tuple[int, str], RowSums] = {}
    for p in parts:
        for key, sums in p.extra_rows:
            merged[key] = sums if key not in merged else merged[key].merged(sums)
    return {f"{manifest.members[i].name}:{name}": sums.rows(n_rows) for (i, name), sums in merged.items()}


def assemble(
    manifest: Manifest,
    path: Path,
    parts: Sequence[PartResult],
    n_folds: int | None,
    post: PostProcessor | None,
    stages: FileStages | None = None,
) -> FileResult:
    """The file's :class:`~bird_infer.run.outcomes.FileResult` from its parts (any order): members' rows, their own
    steps and the member stages (``stages``, :mod:`bird_infer.run.stages`), the blend, the final stages, then
    post-processed by ``post`` (None: the run post-processes later, with every row: its members' rows, stage
    members included, are kept). Raises NonFiniteOutputError when no fold was finite on any chunk."""
    parts = sorted(parts, key=lambda p: p.first_row)
    tail = next(p for p in reversed(parts) if p.reached_end)
    kept = manifest.kept_folds(n_folds)
    stack = member_stack(manifest, parts, tail.decoded_rows)
    blend_rule = manifest.blend
    rule = "mean" if blend_rule.rule == "rank" else blend_rule.rule  # a rank blend is made with every row, later
    weights = member_weights(manifest)
    stage_notes: list[str] = []
    stage_s = 0.0
    extras: dict[str, np.ndarray] = {}
    if stages is not None and stages.active:
        extras = extra_rows(manifest, parts, tail.decoded_rows)
        voted = (~np.isnan(stack)).any(axis=0).all(axis=1)  # rows the members' blend will fill
        stack, stage_notes = stages.members(stack, voted, path, extras)
        stage_s = stages.last_s
    probs = blend(stack, weights, rule, blend_rule.power)
    bad = [np.sum([p.bad_chunks[m] for p in parts], axis=0, dtype=np.int64) for m in range(len(kept))]
    names = manifest.fold_names()
    excluded = tuple(
        (names[i][f], int(c)) for i, folds in enumerate(kept) for f, c in zip(folds, bad[i], strict=True) if c
    )
    unpredicted = np.isnan(probs).any(axis=1)
    if unpredicted.all():
        raise NonFiniteOutputError(f"fold(s) {[n for n, _ in excluded]} produced NaN or inf on every chunk")
    probs[unpredicted] = FALLBACK_PROB
    notes = list(tail.reader_notes) + stage_notes
    unmatched = False
    if post is not None and stages is not None and any(s.role == "final" for s in manifest.stages):
        probs, final_notes = stages.final(probs, ~unpredicted, stack, path, extras)
        notes += final_notes
        stage_s += stages.last_s
    if post is not None and post.active:
        probs, step_notes = post.apply(probs, ~unpredicted, path)
        notes += step_notes
        unmatched = bool(step_notes)
    members = None
    if post is None:
        members = stack
        members[:, unpredicted] = np.nan
    missing = tail.reader_rows - len(probs)
    predicted = ~unpredicted
    if missing > 0:
        probs = np.concatenate([probs, np.full((missing, probs.shape[1]), FALLBACK_PROB, np.float32)])
        predicted = np.concatenate([predicted, np.zeros(missing, dtype=bool)])
        if members is not None:
            pad = np.full((members.shape[0], missing, members.shape[2]), np.nan, np.float32)
            members = np.concatenate([members, pad], axis=1)
    if missing > 0:
        notes.append(f"{missing} of {tail.reader_rows} rows hold the fallback")
    if excluded:
        shown = ", ".join(f"{name} on {c} of {len(unpredicted)} chunks" for name, c in excluded)
        notes.append(f"NaN or inf left out: {shown}")
    if unpredicted.any():
        notes.append(f"{int(unpredicted.sum())} chunk(s) had no finite fold: fallback rows")
    return FileResult(
        path=path,
        probs=probs,
        times=_plus_model_s(StageTimes.total(p.times for p in parts), stage_s),
        n_folds=parts[0].n_folds,
        peak_mb=max(p.peak_mb for p in parts),
        fallback_rows=int(max(0, missing) + unpredicted.sum()),
        excluded_folds=excluded,
        notes=tuple(notes),
        duration_s=tail.duration_s,
        parts=len(parts),
        member_probs=members,
        started_at=min(p.started_at for p in parts),
        predicted=predicted,
        prior_unmatched=unmatched,
    )


def _plus_model_s(times: StageTimes, seconds: float) -> StageTimes:
    """The file-level stages' seconds counted as model time (the deadline guard projects with it)."""
    return StageTimes(times.decode_s, times.frontend_s, times.model_s + seconds)


def _frames_per_window(m: Member, win: Member) -> int:
    """Frames a frame-wise member's output gives per window, as its fold declares them."""
    fold = m.folds[0]
    shape = (fold.segmentwise or fold.clipwise).shape
    frames = shape[m.ensemble.time_axis]
    if not isinstance(frames, int):
        raise NonFiniteOutputError(
            f"member {m.name}: position_mean_max needs the frame count its output declares; it declares {list(shape)}"
        )
    return frames
