"""The run record of ``bird-infer detect`` in its output folder.

``bird_infer_run.json`` holds what the run is (the models' identity, the settings, the audio folder), written at
the start; ``bird_infer_done.jsonl`` gets one line per finished file, appended after that file's outputs are in
place, flushed and synced, so that a run killed at any moment (SIGKILL included) resumes from what it finished.
Each line holds that file's detections as records, from which ``--combine`` builds its tables.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from bird_infer.contract.errors import ResumeRefusedError
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
        old = _read_json(path) if path.exists() else None
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
        write_text(path, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")
        self.done_path.write_text("", encoding="utf-8")

    def add(self, line: dict) -> None:
        """Append one finished file (its outputs are already in place), flushed to disk."""
        with open(self.done_path, "a", encoding="utf-8") as f:
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


def _read_done(path: Path) -> dict[str, dict]:
    """The done log; a torn last line (the process killed while appending) is ignored."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "name" in entry:
            done[entry["name"]] = entry
    return done
