"""Progress of a run: files done, chunks per second, ETA, and the projection against a time limit."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

log = logging.getLogger(__name__)


def _fmt(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


@dataclass
class Progress:
    """Counts what has been done; ``line()`` describes it. Owned by the parent process only."""

    n_files: int
    total_chunks: int
    """Expected chunks, from the file headers."""
    time_limit_s: float | None = None
    started: float = field(default_factory=time.perf_counter)
    files_done: int = 0
    chunks_done: int = 0

    def update(self, n_chunks: int) -> None:
        self.files_done += 1
        self.chunks_done += n_chunks

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float:
        rate = self.chunks_per_s
        return (self.total_chunks - self.chunks_done) / rate if rate > 0 else float("inf")

    @property
    def projected_total_s(self) -> float:
        return self.elapsed_s + self.eta_s

    def line(self) -> str:
        text = (
            f"[{self.files_done}/{self.n_files} files] {self.chunks_done}/{self.total_chunks} chunks, "
            f"{self.chunks_per_s:.1f} chunks/s, elapsed {_fmt(self.elapsed_s)}, ETA {_fmt(self.eta_s)}"
        )
        if self.time_limit_s:
            share = self.projected_total_s / self.time_limit_s
            text += (
                f", projected total {_fmt(self.projected_total_s)} of the {_fmt(self.time_limit_s)} limit ({share:.0%})"
            )
        return text


class ProgressDisplay:
    """Shows a :class:`Progress`: a bar redrawn in place on a terminal (files, chunks/s, ETA), plain log lines
    every ~5% of the files elsewhere (CI, notebooks, log files), as ``bird-infer predict`` always did."""

    WIDTH = 28

    def __init__(self, progress: Progress, stream: TextIO | None = None) -> None:
        self.progress = progress
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = max(1, progress.n_files // 20)
        self.drawn = False

    def bar(self) -> str:
        p = self.progress
        share = p.chunks_done / p.total_chunks if p.total_chunks else 1.0
        filled = min(self.WIDTH, round(share * self.WIDTH))
        return (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:4.0%} {p.files_done}/{p.n_files} files, "
            f"{p.chunks_per_s:.1f} chunks/s, ETA {_fmt(p.eta_s)}"
        )

    def update(self) -> None:
        p = self.progress
        if self.tty:
            self.stream.write("\r" + self.bar() + "\033[K")
            self.stream.flush()
            self.drawn = True
        elif p.files_done % self.every == 0 or p.files_done == p.n_files:
            log.info(p.line())

    def close(self) -> None:
        """End the bar's line, so that what is printed next starts on a line of its own."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
