"""Finding audio under ``--audio``: every entry whose name ends in an audio extension, and why an entry cannot be
opened as a file (never opening it: a FIFO would block the reader for ever)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
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


MAC_TRASH = (".Trashes", ".Trash", ".Spotlight-V100", ".fseventsd", ".TemporaryItems")
"""Folders macOS leaves on a card it has read: never searched for audio."""


@dataclass
class AudioScan:
    """What a search under ``--audio`` found: audio entries, folders it could not list, Mac leftovers skipped."""

    entries: list[Path] = field(default_factory=list)
    unlisted: list[tuple[Path, str]] = field(default_factory=list)
    """(folder, why): a folder that could not be listed. Its audio is neither predicted nor known: an error."""
    skipped_mac: int = 0
    """AppleDouble ``._x.wav`` files (macOS metadata, not audio) and entries in macOS trash folders left out."""


def scan_audio(folder: str | Path) -> AudioScan:
    """Every entry under ``folder`` (recursively) whose name ends in an audio extension, sorted by path: regular
    files, and also broken links, FIFOs and the like (see :func:`entry_problem`), so that each gets its rows or a
    report line. Symbolic links to folders are followed, each real folder searched once (no loops). A folder
    that cannot be listed is in ``unlisted``; AppleDouble files and macOS trash folders are left out (counted).
    Raises FileNotFoundError when ``folder`` does not exist."""
    folder = Path(folder)
    scan = AudioScan()
    if not folder.is_dir():
        if folder.exists() or folder.is_symlink():
            scan.entries.append(folder)
            return scan
        raise FileNotFoundError(f"audio folder {folder} does not exist")
    seen: set[str] = set()

    def unlisted(e: OSError) -> None:
        where = Path(e.filename) if e.filename else folder
        scan.unlisted.append((where, f"folder cannot be listed ({e.strerror or e})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already searched
            dirnames[:] = []
            continue
        seen.add(real)
        kept = []
        for d in sorted(dirnames):
            if d in MAC_TRASH:
                scan.skipped_mac += sum(len(fs) for _, _, fs in os.walk(os.path.join(dirpath, d)))
            else:
                kept.append(d)
        dirnames[:] = kept
        for n in filenames:
            if os.path.splitext(n)[1].lower() not in AUDIO_EXTENSIONS:
                continue
            if n.startswith("._"):
                scan.skipped_mac += 1
                continue
            scan.entries.append(Path(dirpath) / n)
    scan.entries.sort()
    return scan


def find_audio_entries(folder: str | Path) -> list[Path]:
    """The entries of :func:`scan_audio`."""
    return scan_audio(folder).entries


def find_audio_files(folder: str | Path) -> list[Path]:
    """Readable regular audio files under ``folder`` (recursively), sorted by path."""
    return [p for p in find_audio_entries(folder) if entry_problem(p) is None]
