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
import tempfile
from pathlib import Path

import numpy as np

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.schema import FALLBACK_PROB
from bird_infer.run.outcomes import FileResult, Outcome
from bird_infer.run.postprocess import PostProcessor
from bird_infer.runtime.blend import blend, member_weights, rank_scale

log = logging.getLogger(__name__)


class MemberRows:
    """Each file's member rows ``(n_members, n_rows, n_labels)`` float32, in memory up to ``ram_bytes``, then in a
    memory-mapped file of ``spill_dir`` (every array moved there once the bound is passed)."""

    def __init__(self, spill_dir: Path, ram_bytes: int) -> None:
        self.spill_dir = spill_dir
        self.ram_bytes = ram_bytes
        self.in_ram: dict[Path, np.ndarray] = {}
        self.on_disk: dict[Path, tuple[int, tuple[int, ...]]] = {}
        self.nbytes = 0
        self._file = None
        self._map: np.memmap | None = None
        self.spill_path: Path | None = None

    def add(self, path: Path, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.nbytes += rows.nbytes
        if self._file is None and self.nbytes > self.ram_bytes:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.spill_dir, prefix=".bird_infer_member_rows.", suffix=".f32")
            self._file = os.fdopen(fd, "wb")
            self.spill_path = Path(name)
            log.info("member rows pass %.0f MiB: spilled to %s", self.ram_bytes / 2**20, name)
            for p, a in list(self.in_ram.items()):
                self._write(p, a)
            self.in_ram.clear()
        if self._file is not None:
            self._write(path, rows)
        else:
            self.in_ram[path] = rows

    def _write(self, path: Path, rows: np.ndarray) -> None:
        assert self._file is not None
        self.on_disk[path] = (self._file.tell(), rows.shape)
        rows.tofile(self._file)

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
            self._file.close()
        self._map = None
        if self.spill_path is not None:
            self.spill_path.unlink(missing_ok=True)


def rank_in_place(store: MemberRows, predicted: dict[Path, np.ndarray]) -> None:
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
            ranked[voted] = rank_scale(column[voted])
            start = 0
            for p, part in zip(paths, parts, strict=True):
                rows = store.get(p)
                idx = np.flatnonzero(predicted[p])
                rows[m, idx, j] = ranked[start : start + len(part)]
                start += len(part)


def finish(
    outcomes: dict[Path, Outcome], store: MemberRows, manifest: Manifest, post: PostProcessor
) -> dict[Path, Outcome]:
    """Every file whose member rows are in ``store``: ranked (a ``rank`` blend), blended by the manifest's weights
    and rule, post-processed; fallback rows keep the fallback. Other outcomes are returned as they are."""
    predicted = {}
    for p in store.paths():
        result = outcomes[p]
        assert isinstance(result, FileResult)
        n = result.n_rows
        predicted[p] = result.predicted if result.predicted is not None else np.ones(n, dtype=bool)
    rule = manifest.blend.rule
    if rule == "rank":
        rank_in_place(store, predicted)
    weights = member_weights(manifest)
    done = dict(outcomes)
    for p in store.paths():
        result = outcomes[p]
        assert isinstance(result, FileResult)
        valid = predicted[p]
        probs = blend(store.get(p), weights, "mean" if rule == "rank" else rule, manifest.blend.power)
        probs[~valid] = FALLBACK_PROB
        probs, notes = post.apply(probs, valid, p)
        done[p] = dataclasses.replace(
            result, probs=probs, notes=(*result.notes, *notes), prior_unmatched=bool(notes), member_probs=None
        )
    return done
