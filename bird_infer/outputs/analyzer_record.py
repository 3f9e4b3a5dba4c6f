"""``bird-infer analyze --resume``: the done log, ``bird_infer_analyze_done.jsonl`` in the output folder.

One JSON line per finished file, appended (flushed and synced) after its tables are in place: the path as
given, the file's size and modification time when it was read, and its tables. ``--resume`` skips a file whose
line matches its size and time and whose tables all exist; anything else (a file replaced since, a table
deleted) is analyzed again. A torn last line (a run killed mid-write) and lines that are not records are
ignored, with a count in the log. A run without ``--resume`` starts the log afresh. The first line records the
settings; ``--resume`` with other settings is refused with what differs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bird_infer.contract.errors import ResumeRefusedError
from bird_infer.outputs.atomic import write_text

DONE_LOG = "bird_infer_analyze_done.jsonl"
log = logging.getLogger(__name__)


def stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class DoneLog:
    """The done log of one output folder."""

    def __init__(self, out_dir: str, settings: Mapping[str, Any], resume: bool) -> None:
        self.path = Path(out_dir) / DONE_LOG
        settings = json.loads(json.dumps(dict(settings)))  # as the log holds them (tuples become lists)
        self.done: dict[str, dict[str, str]] = {}
        if resume and self.path.is_symlink():
            raise ResumeRefusedError(f"{self.path} is a symbolic link, not followed: rerun without --resume")
        if resume and self.path.is_file():
            self._read(settings)
        else:
            write_text(self.path, json.dumps({"settings": settings}, ensure_ascii=False) + "\n")  # replaces a link

    def _read(self, settings: Mapping[str, Any]) -> None:
        bad = 0
        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            raise ResumeRefusedError(f"cannot read {self.path} ({e.strerror or e}); rerun without --resume") from e
        for k, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if k == 0 and isinstance(rec, dict) and "settings" in rec:
                differ = sorted(x for x in {*rec["settings"], *settings} if rec["settings"].get(x) != settings.get(x))
                if differ:
                    raise ResumeRefusedError(
                        f"{self.path} was written with other settings ({', '.join(differ)}): rerun without --resume"
                    )
                continue
            try:
                self.done[rec["path"]] = {"size": rec["size"], "mtime_ns": rec["mtime_ns"], **rec["files"]}
            except (KeyError, TypeError):
                bad += 1
        if bad:
            log.warning("%s: %d unreadable line(s) ignored (their files are analyzed again)", self.path, bad)
        if lines and not self.path.read_bytes().endswith(b"\n"):  # a torn last line: end it, so appends stay lines
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n")

    def finished(self, fpath: str, names: Mapping[str, str]) -> bool:
        """Whether ``fpath`` was done by the run resumed, unchanged since, with every table in place."""
        rec = self.done.get(fpath)
        if rec is None:
            return False
        try:
            size, mtime = stamp(fpath)
        except OSError:
            return False
        return (
            rec["size"] == size
            and rec["mtime_ns"] == mtime
            and all(rec.get(r) == p and os.path.isfile(p) for r, p in names.items())
        )

    def add(self, fpath: str, seen: tuple[int, int], names: Mapping[str, str]) -> None:
        record = {"path": fpath, "size": seen[0], "mtime_ns": seen[1], "files": dict(names)}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
