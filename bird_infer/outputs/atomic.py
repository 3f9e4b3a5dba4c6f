"""Writes that a reader never sees half of: a temporary file of this call's own in the target's folder, then a
rename onto the target. Two runs writing one path never share a temporary file, and a failed write leaves none
behind. Every output of bird_infer is written through :func:`write_atomic`."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def _mode_for(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would leave: the file's own when it exists (a 0644 submission stays
    0644), else 0666 less the umask (``mkstemp`` alone would make every output 0600)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp_path)`` then rename onto ``path`` (its folder created); returns ``path``. The file gets the mode
    of the one it replaces, or the umask's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` as UTF-8, atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_csv_atomic(df: pd.DataFrame, path: str | Path, float_format: str | None = None) -> Path:
    """``df`` as CSV (UTF-8, no index, ``\\n`` line ends), atomically."""
    return write_atomic(
        path, lambda tmp: df.to_csv(tmp, index=False, float_format=float_format, encoding="utf-8", lineterminator="\n")
    )
