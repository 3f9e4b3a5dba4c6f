"""Steps that need every row of the run: a ``rank`` blend ranks each member's outputs per label over all rows of
every file, so no file's rows are final until the last file is in. ``predict`` keeps each file's member rows
(:class:`MemberRows`), then :func:`finish` ranks, blends and post-processes every file.

Memory: the member rows of a run are ``rows x labels x members x 4`` bytes (BirdCLEF 2024's 52,800 rows x 234
labels x 8 members: 395 MB). Up to ``RunOptions.member_rows_ram_mb`` (1024 MiB by default) they stay in memory;
beyond it they are written to a memory-mapped file in the output's folder, removed when the run ends.
``detect`` writes each file's tables as it finishes, so it refuses such a bundle before any audio is read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import OutputError
from bird_infer.contract.postprocess import Blend
from bird_infer.contract.schema import FALLBACK_PROB
from bird_infer.contract.text import describe_exception
from bird_infer.run.outcomes import FileResult, Outcome
from bird_infer.run.postprocess import PostProcessor
from bird_infer.run.stages import FileStages
from bird_infer.runtime.blend import blend, member_weights, rank_scale
from bird_infer.runtime.machine import available_memory_bytes

log = logging.getLogger(__name__)

SPILL_MARGIN_BYTES = 64 * 2**20
"""Room left beside the spilled rows (the CSV and its report are written into the same folder)."""
POST_SKIPPED = "post-processing skipped: the time limit's hard stop came first (blended rows kept)"


class MemberRows:
    """Each file's member rows ``(n_members, n_rows, n_labels)`` float32, in memory up to ``ram_bytes``, then in a
    memory-mapped file of ``spill_dir`` (every array moved there once the bound is passed).

    ``expected_bytes`` (the run's rows x labels x members x 4, known from the plan) lets :meth:`check_room` decide
    before any audio where they will fit. A write that fails meanwhile (the disk filled up) moves the rows back into
    memory when memory allows; else :class:`~bird_infer.contract.errors.OutputError` names the folder and the bytes
    needed, and the spill file is removed."""

    def __init__(self, spill_dir: Path, ram_bytes: int, expected_bytes: int = 0) -> None:
        self.spill_dir = spill_dir
        self.ram_bytes = ram_bytes
        self.expected_bytes = expected_bytes
        self.in_ram: dict[Path, np.ndarray] = {}
        self.on_disk: dict[Path, tuple[int, tuple[int, ...]]] = {}
        self.nbytes = 0
        self._file = None
        self._map: np.memmap | None = None
        self.spill_path: Path | None = None

    def check_room(self) -> None:
        """Before any audio: rows past ``ram_bytes`` need ``expected_bytes`` free in ``spill_dir``; where the disk
        lacks them and memory has them (twice over), they stay in memory; else OutputError, naming both."""
        if self.expected_bytes <= self.ram_bytes:
            return
        folder = _existing(self.spill_dir)
        free = free_bytes(folder)
        if free >= self.expected_bytes + SPILL_MARGIN_BYTES:
            return
        memory = available_memory_bytes()
        if memory is not None and memory >= 2 * self.expected_bytes:
            log.warning(
                "the rank blend's member rows (%.0f MiB) do not fit in %s (%.0f MiB free): they stay in memory",
                self.expected_bytes / 2**20,
                folder,
                free / 2**20,
            )
            self.ram_bytes = max(self.ram_bytes, self.expected_bytes)
            return
        raise OutputError(
            f"the rank blend keeps every file's member rows until the last file is in: {self.expected_bytes} bytes "
            f"past member_rows_ram_mb, and {folder} has {free} bytes free ({self.expected_bytes + SPILL_MARGIN_BYTES} "
            f"needed) while memory has {memory if memory is not None else 'an unknown number of'} bytes available; "
            "free space there, write the CSV elsewhere (--out), or raise member_rows_ram_mb where memory allows"
        )

    def add(self, path: Path, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.nbytes += rows.nbytes
        if self._file is None and self.spill_path is None and self.nbytes > self.ram_bytes:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.spill_dir, prefix=".bird_infer_member_rows.", suffix=".f32")
            self._file = os.fdopen(fd, "wb", buffering=0)  # unbuffered: a row recorded is a row on disk
            self.spill_path = Path(name)
            log.info("member rows pass %.0f MiB: spilled to %s", self.ram_bytes / 2**20, name)
            try:
                for p, a in list(self.in_ram.items()):
                    self._write(p, a)
                    del self.in_ram[p]
            except OSError as e:
                self._back_to_memory(e)
        if self._file is not None:
            try:
                self._write(path, rows)
                return
            except OSError as e:
                self._back_to_memory(e)
        self.in_ram[path] = rows

    def _back_to_memory(self, e: OSError) -> None:
        """A spill write failed: every spilled file's rows read back into memory, the spill file removed; when
        memory cannot hold what the run will keep, OutputError naming the folder and the bytes."""
        needed = max(self.expected_bytes, self.nbytes)
        memory = available_memory_bytes()
        folder = self.spill_dir
        if memory is not None and memory < 2 * needed:
            self.close()
            raise OutputError(
                f"writing the rank blend's member rows to {folder} failed ({describe_exception(e)}), and memory "
                f"({memory} bytes available) cannot hold the {needed} bytes instead: free {needed} bytes in "
                f"{folder}, or write the CSV elsewhere (--out)"
            ) from e
        log.warning("writing member rows to %s failed (%s): they stay in memory from now on", folder, e)
        assert self._file is not None
        self._file.close()  # unbuffered: nothing left to write
        spilled = {}
        if self.on_disk:
            data = np.fromfile(self.spill_path, dtype=np.float32)
            for p, (offset, shape) in self.on_disk.items():
                start = offset // 4
                spilled[p] = data[start : start + int(np.prod(shape))].reshape(shape).copy()
        self.in_ram.update(spilled)
        self.on_disk.clear()
        self.spill_path.unlink(missing_ok=True)  # type: ignore[union-attr]
        self._file = None
        self.ram_bytes = 2**62  # never spill again in this run

    def _write(self, path: Path, rows: np.ndarray) -> None:
        assert self._file is not None
        offset = self._file.tell()
        rows.tofile(self._file)
        self.on_disk[path] = (offset, rows.shape)  # recorded once every byte is written

    def paths(self) -> list[Path]:
        return [*self.in_ram, *self.on_disk]

    def get(self, path: Path) -> np.ndarray:
        """The file's rows (a writable view into the map for a spilled file)."""
        if path in self.in_ram:
            return self.in_ram[path]
        if self._map is None:
            assert self._file is not None
            self._file.close()
            self._map = np.memmap(self.spill_path, dtype=np.float32, mode="r+")
        offset, shape = self.on_disk[path]
        start = offset // 4
        return self._map[start : start + int(np.prod(shape))].reshape(shape)

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            try:
                self._file.close()
            except OSError:  # the buffered tail could not be written either: the file goes anyway
                pass
        self._map = None
        if self.spill_path is not None:
            self.spill_path.unlink(missing_ok=True)


def free_bytes(folder: Path) -> int:
    """Bytes free for this process in ``folder``'s file system."""
    return shutil.disk_usage(folder).free


def _existing(folder: Path) -> Path:
    """``folder``, or its nearest existing parent (the spill folder is made only when it is needed)."""
    folder = folder.absolute()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def rank_in_place(store: MemberRows, predicted: dict[Path, np.ndarray], blend_rule: Blend | None = None) -> None:
    """Each member's column of each label replaced by its ranks over every predicted row of every file
    (:func:`~bird_infer.runtime.blend.rank_scale`); fallback rows and absent labels stay NaN."""
    paths = store.paths()
    if not paths:
        return
    n_members, _, n_labels = store.get(paths[0]).shape
    for m in range(n_members):
        for j in range(n_labels):
            parts = [store.get(p)[m, predicted[p], j] for p in paths]
            column = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            voted = ~np.isnan(column)
            if not voted.any():
                continue
            ranked = np.full(column.shape, np.nan, dtype=np.float32)
            b = blend_rule or Blend()
            ranked[voted] = rank_scale(column[voted], b.rank_scale, b.rank_ties, b.rank_clip)
            start = 0
            for p, part in zip(paths, parts, strict=True):
                rows = store.get(p)
                idx = np.flatnonzero(predicted[p])
                rows[m, idx, j] = ranked[start : start + len(part)]
                start += len(part)


def finish(
    outcomes: dict[Path, Outcome],
    store: MemberRows,
    manifest: Manifest,
    post: PostProcessor,
    stop_at: float | None = None,
    stages: FileStages | None = None,
) -> dict[Path, Outcome]:
    """Every file whose member rows are in ``store``: ranked (a ``rank`` blend), blended by the manifest's weights
    and rule, post-processed; fallback rows keep the fallback. Other outcomes are returned as they are.

    ``stop_at`` (``time.perf_counter()``, the deadline's hard stop): work after the last file counts against the
    limit too; a file reached after it keeps its blended rows without the post-processing steps, and says so.
    ``stages``: the final stages run on each file's rank-blended rows, their ``member:NAME`` inputs being that
    member's ranks (gates on ranks)."""
    predicted = {}
    for p in store.paths():
        result = outcomes[p]
        assert isinstance(result, FileResult)
        n = result.n_rows
        predicted[p] = result.predicted if result.predicted is not None else np.ones(n, dtype=bool)
    rule = manifest.blend.rule
    if rule == "rank":
        rank_in_place(store, predicted, manifest.blend)
    weights = member_weights(manifest)
    done = dict(outcomes)
    for p in store.paths():
        result = outcomes[p]
        assert isinstance(result, FileResult)
        valid = predicted[p]
        probs = blend(store.get(p), weights, "mean" if rule == "rank" else rule, manifest.blend.power)
        probs[~valid] = FALLBACK_PROB
        stage_notes: list[str] = []
        if stages is not None and any(s.role == "final" for s in manifest.stages):
            probs, stage_notes = stages.final(probs, valid, store.get(p), p, {})
        if stop_at is not None and post.active and time.perf_counter() >= stop_at:
            probs, _ = post.apply(probs, valid, p, steps=())  # the clip alone
            done[p] = dataclasses.replace(
                result,
                probs=probs,
                notes=(*result.notes, *stage_notes, POST_SKIPPED),
                postprocess_skipped=True,
                member_probs=None,
            )
            continue
        probs, notes = post.apply(probs, valid, p)
        done[p] = dataclasses.replace(
            result,
            probs=probs,
            notes=(*result.notes, *stage_notes, *notes),
            prior_unmatched=bool(notes),
            member_probs=None,
        )
    return done
