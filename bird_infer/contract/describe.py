"""Field descriptions kept in the schema itself: each field of a contract dataclass carries its meaning (and its
unit, where it has one) in its metadata, so that error messages quote it at run time and the manifest reference
(:mod:`bird_infer.contract.reference`) is generated from it. A test fails when a field has none."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def doc(text: str, unit: str = "", written: bool = True) -> dict[str, Any]:
    """A field's metadata: ``text``, its meaning; ``unit`` (Hz, s, samples, dB...), where it has one; ``written``:
    False for what a loaded object carries but its file does not (the folder it was read from)."""
    return {"doc": text, "unit": unit, "written": written}


def field_doc(cls: type, name: str) -> str:
    """The description of field ``name`` of dataclass ``cls`` ('' when it has none)."""
    return next((str(f.metadata.get("doc", "")) for f in fields(cls) if f.name == name), "")
