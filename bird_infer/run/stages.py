"""File-level work between the row gatherer and the blend: each member's own steps, then the file-level ONNX
stages (:mod:`bird_infer.contract.stages`) on the file's stacked rows.

:class:`FileStages` is built once per process (a worker, or the parent assembling split files). For one file,
:meth:`FileStages.members` takes the members' stack ``(n_members, n, bundle labels)`` (NaN where a member has no
vote), runs each member's ``steps`` on its rows, then each ``member`` stage, whose output joins the stack as one
more member (blended with its ``weight``). :meth:`FileStages.final` runs the ``final`` stages on the blended rows.
A stage is fed the rows every input of it holds (never a fallback row): ``n`` is their count, and its output goes
back to those rows; a stage with no row to feed gives no vote.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.name_pattern import NamePattern, PatternTimeoutError
from bird_infer.contract.stages import Stage, StageInput
from bird_infer.run.postprocess import PostProcessor
from bird_infer.runtime.sessions import checked_bytes, make_session

LOGIT_EPS = 1e-7
"""Probabilities are clipped into [1e-7, 1 - 1e-7] before ``logits:NAME`` takes their logit."""


def stack_names(manifest: Manifest) -> list[str]:
    """The stack's slices, in order: every member, then every member stage."""
    return [m.name for m in manifest.members] + [s.name for s in manifest.member_stages]


class _StageRunner:
    """One stage's ONNX session, its inputs' element types, its context pattern."""

    def __init__(self, manifest: Manifest, stage: Stage) -> None:
        self.stage = stage
        self.session = make_session(checked_bytes(manifest.root / stage.file, stage.sha256, f"stage {stage.name}"), 1)
        self.types = {i.name: i.type for i in self.session.get_inputs()}
        ctx = stage.context
        self.pattern = None if ctx is None else NamePattern.compile(ctx.pattern, check=False)

    def context_ids(self, path: Path) -> tuple[dict[str, int], str | None]:
        """Each context group's id for this file's name, and a note when the name does not match."""
        ctx = self.stage.context
        if ctx is None or self.pattern is None:
            return {}, None
        try:
            m = self.pattern.search(path.stem)
        except PatternTimeoutError as e:
            return {g: ctx.unknown for g in ctx.ids}, f"stage {self.stage.name}: {e}; context ids unknown"
        if m is None:
            why = f"stage {self.stage.name}: the name {path.stem!r} does not match its context pattern; ids unknown"
            return {g: ctx.unknown for g in ctx.ids}, why
        return {g: table.get(m.group(g) or "", ctx.unknown) for g, table in ctx.ids.items()}, None

    def scalar(self, name: str, value: int) -> np.ndarray:
        dtype = np.float32 if "float" in self.types.get(name, "") else np.int64
        return np.array([value], dtype=dtype)


class FileStages:
    """A bundle's member steps and file-level stages, ready for one process."""

    def __init__(self, manifest: Manifest, post: PostProcessor | None = None) -> None:
        self.manifest = manifest
        self.post = post or PostProcessor(manifest)
        """Runs the members' own steps (the process's post-processor when it has one: prior tables read once)."""
        self.position = {label: j for j, label in enumerate(manifest.labels)}
        self.runners = {s.name: _StageRunner(manifest, s) for s in manifest.stages}
        self.names = stack_names(manifest)
        labels = {m.name: m.labels for m in manifest.members} | {s.name: s.labels for s in manifest.member_stages}
        self.columns = {name: np.array([self.position[x] for x in xs], dtype=np.int64) for name, xs in labels.items()}
        self.last_s = 0.0
        """Seconds the last file spent in stages (counted as model time)."""

    @property
    def active(self) -> bool:
        return bool(self.manifest.stages) or any(m.steps for m in self.manifest.members)

    def members(
        self, stack: np.ndarray, valid: np.ndarray, path: Path, extras: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, list[str]]:
        """``stack`` (n_members, n, L) after each member's steps, with each member stage's slice appended:
        (n_members + member stages, n, L). ``valid`` (n,): the file's predicted rows; ``extras``:
        ``MEMBER:OUTPUT`` -> (n, dim) embeddings. Returns the stack and notes."""
        t0 = time.perf_counter()
        notes: list[str] = []
        out = [stack[i] for i in range(stack.shape[0])]
        for i, m in enumerate(self.manifest.members):
            if m.steps:
                voted = valid & ~np.isnan(stack[i][:, self.columns[m.name]]).any(axis=1)
                rows, step_notes = self.post.apply(stack[i], voted, path, m.steps)
                out[i] = rows
                notes += [f"member {m.name}: {n}" for n in step_notes]
        for stage in self.manifest.member_stages:
            slice_ = np.full(stack.shape[1:], np.nan, dtype=np.float32)
            got, idx, note = self._run(stage, out, valid, None, path, extras)
            if note:
                notes.append(note)
            if got is not None:
                slice_[np.ix_(idx, self.columns[stage.name])] = got
            out.append(slice_)
        self.last_s = time.perf_counter() - t0
        return np.stack(out) if out else stack, notes

    def final(
        self, probs: np.ndarray, valid: np.ndarray, stack: np.ndarray, path: Path, extras: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, list[str]]:
        """The blended rows (n, L) with each ``final`` stage's output on its labels, in order."""
        t0 = time.perf_counter()
        notes: list[str] = []
        slices = [stack[i] for i in range(stack.shape[0])]
        for stage in self.manifest.stages:
            if stage.role != "final":
                continue
            got, idx, note = self._run(stage, slices, valid, probs, path, extras)
            if note:
                notes.append(note)
            if got is not None:
                cols = np.array([self.position[x] for x in stage.labels], dtype=np.int64)
                probs = probs.copy()
                probs[np.ix_(idx, cols)] = got
        self.last_s += time.perf_counter() - t0
        return probs, notes

    def _run(
        self,
        stage: Stage,
        slices: list[np.ndarray],
        valid: np.ndarray,
        blended: np.ndarray | None,
        path: Path,
        extras: dict[str, np.ndarray],
    ) -> tuple[np.ndarray | None, np.ndarray, str | None]:
        """Feed the stage the rows every input holds; its output (k, len(labels)) in [0, 1], those rows, a note."""
        runner = self.runners[stage.name]
        rows = valid.copy()
        arrays: dict[str, np.ndarray] = {}
        for inp in stage.inputs:
            a = self._rows_of(inp, slices, blended, extras)
            if a is not None:
                arrays[inp.name] = a
                rows &= ~np.isnan(a).any(axis=1)
        idx = np.flatnonzero(rows)
        if not len(idx):
            return None, idx, f"stage {stage.name}: no row holds all its inputs: no vote"
        ids, note = runner.context_ids(path)
        feeds = {}
        for inp in stage.inputs:
            if inp.name in arrays:
                feeds[inp.name] = arrays[inp.name][idx][None].astype(np.float32)
            elif inp.kind == "n":
                feeds[inp.name] = runner.scalar(inp.name, len(idx))
            else:
                feeds[inp.name] = runner.scalar(inp.name, ids[inp.parts[1]])
        y = runner.session.run([stage.output], feeds)[0]
        if y.shape != (1, len(idx), len(stage.labels)):
            raise ValueError(
                f"stage {stage.name}: output {stage.output!r} has shape {list(y.shape)} for {len(idx)} rows; "
                f"expected [1, {len(idx)}, {len(stage.labels)}]"
            )
        y = y[0].astype(np.float64)
        if stage.activation == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        if not np.isfinite(y).all():
            return None, idx, f"stage {stage.name}: NaN or inf in its output: no vote"
        return np.clip(y, 0.0, 1.0).astype(np.float32), idx, note

    def _rows_of(
        self, inp: StageInput, slices: list[np.ndarray], blended: np.ndarray | None, extras: dict[str, np.ndarray]
    ) -> np.ndarray | None:
        """(n, width) of a row source; None for a scalar (context, n)."""
        kind, parts = inp.kind, inp.parts
        if kind in ("member", "logits"):
            p = slices[self.names.index(parts[1])][:, self.columns[parts[1]]]
            if kind == "logits":
                q = np.clip(p.astype(np.float64), LOGIT_EPS, 1 - LOGIT_EPS)
                p = np.log(q / (1 - q)).astype(np.float32)
            return p
        if kind == "embedding":
            return extras[f"{parts[1]}:{parts[2]}"]
        if kind == "blend":
            return blended
        return None


def file_stages(manifest: Manifest, post: PostProcessor | None = None) -> FileStages | None:
    """A process's :class:`FileStages` when the bundle has member steps or stages, else None (``post``: the
    process's post-processor, reused)."""
    if manifest.stages or any(m.steps for m in manifest.members):
        return FileStages(manifest, post)
    return None
