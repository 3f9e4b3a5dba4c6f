"""From windows to rows: each member's outputs (per window and shift) gathered onto the file's 5-s rows.

- A **row-wise** member (clip-wise output, or the max of its segment-wise output) gives one value per window;
  row ``r``'s window is centred on it, moved by each shift's offset: the row takes the shifts' weighted mean.
- A **frame-wise** member gives ``T`` frames per window, spread evenly over it: frame ``j`` of the window that
  starts at ``t`` is centred at ``t + (j + 1/2) W / T``. Each row takes every frame whose centre falls inside
  it, from every window and shift that covers it: their weighted mean (weights: the shifts'), or their maximum
  (``frame_reduce: max``). Frames centred before 0 s belong to no row; a row past the audio's end is a row of the
  file only when it is one (the last, partial row), and takes the frames centred in it (their windows
  zero-padded).
- A window on which no fold was finite contributes nothing; a row nothing reaches has no vote (NaN).

Sums are kept per absolute row (:class:`RowSums`) so that a file's parts, predicted by different workers, add
up to the rows of the whole file (:func:`bird_infer.run.segments.assemble`).
"""

from __future__ import annotations

import numpy as np

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.schema import Member
from bird_infer.run.outcomes import RowSums
from bird_infer.runtime.ensemble import BlockOutputs


class RowGatherer:
    """Gathers one file's (or part's) :class:`BlockOutputs` into a :class:`RowSums` per member."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.row_s = manifest.row_s
        self.sums = [
            RowSums.empty("max" if self._framewise(m) and m.ensemble.frame_reduce == "max" else "mean", len(m.labels))
            for m in manifest.members
        ]
        """Per member: sums per row; for ``position_mean_max``, per frame position
        (:func:`~bird_infer.run.outcomes.position_rows` makes rows of them once every part is in)."""
        self.extra_sums: dict[tuple[int, str], RowSums] = {}
        """(member index, output) -> a backbone's embedding gathered onto rows (the shifts' weighted mean), for
        file-level stages."""
        index = {m.name: i for i, m in enumerate(manifest.members)}
        self.window_of = [manifest.members[index[m.source.member]] if m.source else m for m in manifest.members]
        """The member whose windows (and shifts) each member's outputs are of (a head: its source)."""

    @staticmethod
    def _framewise(m: Member) -> bool:
        return m.ensemble.output == "framewise"

    def add(self, first_row: int, block: BlockOutputs) -> None:
        """The block's windows are those of rows ``first_row, first_row + 1, ...``."""
        for (i, name), per_shift in block.extras.items():
            for k, e in per_shift.items():
                n = e.shape[0]
                sums = self.extra_sums.setdefault((i, name), RowSums.empty("mean", e.shape[1]))
                sums.add(np.arange(first_row, first_row + n), e, np.full(n, self.manifest.members[i].shifts[k].weight))
        for i, m in enumerate(self.manifest.members):
            win = self.window_of[i]
            for k, p in block.members[i].items():
                shift = win.shifts[k]
                n = p.shape[0]
                rows = np.arange(first_row, first_row + n)
                if not self._framewise(m):
                    self.sums[i].add(rows, p, np.full(n, shift.weight))
                    continue
                frames = p.shape[1]
                window_s = win.audio.clip_s
                starts = (rows + 0.5) * self.row_s - window_s / 2 + shift.offset_s
                centres = starts[:, None] + (np.arange(frames) + 0.5) * window_s / frames
                if m.ensemble.frame_reduce == "position_mean_max":  # frame positions on the window's grid
                    targets = np.floor(centres / (window_s / frames) + 1e-9).astype(np.int64)
                else:
                    targets = np.floor(centres / self.row_s + 1e-9).astype(np.int64)
                finite = np.isfinite(p.reshape(n, -1)).all(axis=1)
                keep = np.repeat(finite, frames)
                self.sums[i].add(
                    targets.reshape(-1)[keep], p.reshape(n * frames, -1)[keep], np.full(int(keep.sum()), shift.weight)
                )
