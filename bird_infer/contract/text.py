"""Text every floor writes: names made printable, and an exception as one line."""

from __future__ import annotations

import os
import sys
import unicodedata


def safe_text(text: str) -> str:
    """``text`` as printable UTF-8: bytes of a file name that are not UTF-8 (held by Python as surrogate
    escapes) and control characters (a newline in a file name) become ``\\xNN`` escapes, so that
    every name can be written to the CSV and read back unchanged. Under a locale that is not UTF-8 (ISO-8859-1),
    Python decodes a UTF-8 file name into other characters (``sitÃ©``): the name's bytes are read as UTF-8 again
    (``sité``), so that row ids and table paths do not depend on the locale."""
    if sys.getfilesystemencoding().lower().replace("-", "") != "utf8":
        try:
            text = os.fsencode(text).decode("utf-8")  # strict: bytes that are not UTF-8 keep the locale's reading
        except (UnicodeError, TypeError):
            pass
    if text.isprintable() and not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    raw = text.encode("utf-8", "surrogateescape")
    decoded = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in decoded)


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (runs of white space folded), cut to ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if limit is None else text[:limit]


def describe_exception(e: BaseException) -> str:
    """One line for the error report: the exception type and its message."""
    return f"{type(e).__name__}: {one_line(e) or '(no message)'}"


def control_chars(text: str) -> list[str]:
    """The control characters in ``text`` (C0, DEL, C1 such as NEL, and the line and paragraph separators U+2028
    and U+2029), as ``U+XXXX``: what breaks a tab- or line-separated table."""
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")]


FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet reads a cell that starts with one of these as a formula (OWASP's CSV injection list)."""


def spreadsheet_safe(cell: str) -> str:
    """``cell`` as a spreadsheet shows it but never runs it: a leading ``'`` before a formula lead, unless the
    cell is a number (``-1.0000`` stays a number)."""
    if not cell or cell[0] not in FORMULA_LEADS:
        return cell
    try:
        float(cell)
    except ValueError:
        return "'" + cell
    return cell
