"""Text tables a user hands over (label lists, label maps, prior tables, id tables), read one way: UTF-8 with a
byte-order mark removed, every cell NFC-normalised (a label typed on a Mac, in NFD, equals the same label typed
elsewhere), and a file in a legacy encoding refused with a message saying so."""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from bird_infer.contract.errors import InvalidFieldError


def read_text(path: str | Path, what: str) -> str:
    """The file's text: UTF-8 (a BOM removed), NFC-normalised. InvalidFieldError for a legacy encoding or an
    unreadable file, naming ``what`` (the option or field it came from)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise InvalidFieldError(f"{what} {path} cannot be read ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidFieldError(
            f"{what} {path} is not UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r}; a legacy encoding such as "
            "Latin-1 or cp1252?): save it as UTF-8"
        ) from e
    return unicodedata.normalize("NFC", text)


def read_lines(path: str | Path, what: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line."""
    return [(n, s.strip()) for n, s in enumerate(read_text(path, what).splitlines(), start=1) if s.strip()]


def read_rows(path: str | Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each non-empty CSV row, cells stripped."""
    text = read_text(path, what)
    out = []
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if row and any(c.strip() for c in row):
            out.append((n, [c.strip() for c in row]))
    return out


def refuse_duplicates(keys: Sequence[tuple[int, object]], what: str) -> None:
    """InvalidFieldError naming the first key listed twice and both line numbers."""
    seen: dict[object, int] = {}
    for line, key in keys:
        if key in seen:
            raise InvalidFieldError(f"{what}: {key!r} is listed twice, on lines {seen[key]} and {line}")
        seen[key] = line
