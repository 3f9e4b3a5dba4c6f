"""The run record of ``bird-infer detect`` in its output folder.

``bird_infer_run.json`` holds what the run is (the models' identity, the settings, the audio folder), written at
the start; ``bird_infer_done.jsonl`` gets one line per finished file, appended after that file's outputs are in
place, flushed and synced, so that a run killed at any moment (SIGKILL included) resumes from what it finished.
Each line holds that file's detections as records, from which ``--combine`` builds its tables, and the audio file's
size and modification time when it was read: ``--resume`` redoes a file that changed since.

Both files are written without following links: a symbolic link planted in OUTDIR under either name is replaced
(a fresh run) or refused (``--resume``), never written through. A done log whose last line was torn by a kill is
cut back to its last whole line; lines that are not whole records are ignored (their files are redone); a done
log that cannot be read refuses ``--resume`` before any audio is read.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from bird_infer.contract.errors import OutputError, ResumeRefusedError
from bird_infer.outputs.atomic import write_text

log = logging.getLogger(__name__)

RUN_RECORD = "bird_infer_run.json"
DONE_LOG = "bird_infer_done.jsonl"


@dataclass
class RunRecord:
    """The run record in OUTDIR: identity (models, settings) and the files done."""

    out_dir: Path
    identity: dict
    done: dict[str, dict] = field(default_factory=dict)
    """output name -> its line in the done log."""

    @property
    def done_path(self) -> Path:
        return self.out_dir / DONE_LOG

    def start(self, resume: bool) -> None:
        path = self.out_dir / RUN_RECORD
        if resume:
            for p in (path, self.done_path):
                if p.is_symlink():
                    raise ResumeRefusedError(f"{p} is a symbolic link, not followed: rerun without --resume")
        old = None
        if path.exists() or path.is_symlink():
            try:
                old = _read_json(path)
            except ResumeRefusedError:
                if resume:
                    raise
        if resume and old is not None:
            diff = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
            if diff:
                raise ResumeRefusedError(
                    f"{self.out_dir} holds a run made with other {' and '.join(_what(k) for k in diff)}: --resume "
                    "continues only the same run; rerun without --resume (outputs are replaced) or choose another --out"
                )
            self.done = _read_done(self.done_path)
            return
        if resume:
            log.info("no run record in %s: starting afresh", self.out_dir)
        elif old is not None:
            log.info("%s holds an earlier run's record: starting afresh (--resume continues it)", self.out_dir)
        try:
            write_text(path, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")
            write_text(self.done_path, "")  # a rename: a link planted under this name is replaced, not followed
        except OSError as e:
            raise OutputError(f"cannot write the run record in {self.out_dir}: {e.strerror or e}") from e

    def add(self, line: dict) -> None:
        """Append one finished file (its outputs are already in place), flushed to disk."""
        fd = os.open(self.done_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[line["name"]] = line


def _what(key: str) -> str:
    return {"models": "models", "settings": "settings", "audio": "--audio folder"}.get(key, key)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ResumeRefusedError(f"cannot read the run record {path} ({e}); rerun without --resume") from e
    return data if isinstance(data, dict) else {}


DONE_FIELDS = {"name": str, "file": str, "duration_s": (int, float), "rows": int, "detections": list}


def _whole(entry: object) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(k), t) for k, t in DONE_FIELDS.items())


def _read_done(path: Path) -> dict[str, dict]:
    """The done log. A torn last line (the process killed while appending) is cut off, so that the next line
    appended starts a line of its own; lines that are not whole records are ignored, with a count."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ResumeRefusedError(f"cannot read the done log {path} ({e.strerror or e}); rerun without --resume") from e
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: its last line was torn (a run killed while writing it): cut off, that file is redone", path)
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    bad = 0
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if _whole(entry):
            done[entry["name"]] = entry
        else:
            bad += 1
    if bad:
        log.warning("%s: %d line(s) are not whole records: their files are redone", path, bad)
    return done
