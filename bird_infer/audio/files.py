"""Finding audio under ``--audio``: every entry whose name ends in an audio extension, and why an entry cannot be
opened as a file (never opening it: a FIFO would block the reader for ever)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Extensions that mark an entry as audio. Every one found under --audio gets rows or a report line;
# libsndfile cannot decode some (m4a, aac, webm, wma): those are reported with the reason.
AUDIO_EXTENSIONS = (
    ".ogg",
    ".oga",
    ".opus",
    ".wav",
    ".wave",
    ".flac",
    ".mp3",
    ".aif",
    ".aiff",
    ".aifc",
    ".caf",
    ".w64",
    ".au",
    ".snd",
    ".m4a",
    ".aac",
    ".webm",
    ".wma",
    ".amr",
)


def entry_problem(path: Path) -> str | None:
    """Why an entry found under --audio cannot be opened as a file, or None when it can.

    Never opens the entry: a FIFO would block the reader for ever.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)" if os.path.islink(path) else "vanished"
    except OSError as e:
        return f"cannot stat ({e.strerror})"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO (named pipe), not a regular file: not read"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket, not a regular file: not read"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device, not a regular file: not read"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file: not read"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def find_audio_entries(folder: str | Path) -> list[Path]:
    """Every entry under ``folder`` (recursively) whose name ends in an audio extension, sorted by path:
    regular files, and also broken links, FIFOs and the like (see :func:`entry_problem`), so that each
    gets its rows or a report line. Symbolic links to folders are not followed (no loops)."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            return [folder]
        raise FileNotFoundError(f"audio folder {folder} does not exist")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        names = filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        found.extend(Path(dirpath) / n for n in names if os.path.splitext(n)[1].lower() in AUDIO_EXTENSIONS)
    return sorted(found)


def find_audio_files(folder: str | Path) -> list[Path]:
    """Readable regular audio files under ``folder`` (recursively), sorted by path."""
    return [p for p in find_audio_entries(folder) if entry_problem(p) is None]
