"""The model manifest: ``models/manifest.json`` beside the fold files, the one source of truth between training
and inference. :func:`manifest_from_dict` parses and checks everything that can be checked without audio
(sections: :mod:`bird_infer.contract.parse`, members: :mod:`bird_infer.contract.parse_member`, blend and steps:
:mod:`bird_infer.contract.parse_post`); schema 1 (one model family: ``labels``, ``audio``, ``frontend``,
``folds``, ``ensemble``) still loads, as one member named ``default`` of weight 1. Loading then checks every fold
file (:mod:`bird_infer.contract.files`), so that a bad bundle
fails before the first file is decoded, with a message that names the field and says what to fix. Nothing here
imports torch: the inference path reads the manifest, and the exporter writes it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import (
    InvalidFieldError,
    ManifestError,
    MissingFieldError,
    ModelFileMissingError,
    SchemaVersionError,
)
from bird_infer.contract.fields import get_field, positive
from bird_infer.contract.files import verify_files
from bird_infer.contract.parse import check_labels
from bird_infer.contract.parse_member import parse_member, resolve_heads
from bird_infer.contract.parse_post import parse_blend, parse_label_groups, parse_postprocess
from bird_infer.contract.schema import MANIFEST_NAME, SpeciesName
from bird_infer.contract.stages import parse_stages
from bird_infer.contract.text import control_chars

SUPPORTED_SCHEMAS = (1, 2)

__all__ = ["MANIFEST_NAME", "load_manifest", "manifest_from_dict", "write_manifest"]


def _schema1_to_2(d: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 manifest as a one-member schema-2 dict (member ``default``, weight 1, rows = its clips)."""
    audio = get_field(d, "audio", "manifest")
    frontend = get_field(d, "frontend", "manifest")
    member = {
        "name": "default",
        "weight": 1.0,
        "labels": d.get("labels"),
        "audio": audio,
        "frontend": {"kind": "logmel", **frontend} if isinstance(frontend, dict) else frontend,
        "folds": get_field(d, "folds", "manifest"),
        "ensemble": d.get("ensemble", {}),
        "model": d.get("model", {}),
    }
    row_s = audio.get("clip_s", 5.0) if isinstance(audio, dict) else 5.0
    return {
        "labels": d.get("labels"),
        "row_s": row_s,
        "members": [member],
        "description": d.get("description", ""),
        "names": d.get("names", {}),
    }


def _parse_names(d: Any, labels: tuple[str, ...]) -> dict[str, SpeciesName]:
    """``names``: {label: {"scientific": str, "common": str}} for some or all bundle labels."""
    if not isinstance(d, dict):
        raise InvalidFieldError('manifest field \'names\' must map labels to {"scientific": ..., "common": ...}')
    known = set(labels)
    out: dict[str, SpeciesName] = {}
    for label, entry in d.items():
        where = f"manifest field 'names'[{label!r}]"
        if label not in known:
            raise InvalidFieldError(f"{where}: {label!r} is not a bundle label")
        if not isinstance(entry, dict):
            raise InvalidFieldError(f'{where} must be {{"scientific": ..., "common": ...}}')
        values = [get_field(entry, k, where) for k in ("scientific", "common")]
        if any(not isinstance(v, str) or not v.strip() or control_chars(v) for v in values):
            raise InvalidFieldError(
                f"{where}: names must be non-empty text without control characters (tabs, line breaks, U+2028, NEL, "
                f"NUL...); got {values!r}"
            )
        out[label] = SpeciesName(*values)
    return out


def manifest_from_dict(d: dict[str, Any], root: Path, building: bool = False) -> Manifest:
    """Parse and check a manifest dict (no file access). Raises a ManifestError subclass.

    ``building`` (``new-bundle`` and ``add-member``): a bundle being built may have no member yet, and labels no
    member predicts yet; a bundle that is run or packed may not (the refusal lists them)."""
    if not isinstance(d, dict):
        raise InvalidFieldError("manifest.json must hold a JSON object")
    version = d.get("schema_version")
    if version is None:
        raise MissingFieldError("manifest field 'schema_version' is missing: add \"schema_version\": 2")
    if version not in SUPPORTED_SCHEMAS or isinstance(version, bool):
        raise SchemaVersionError(
            f"manifest schema_version {version!r} is not supported; this bird_infer reads versions "
            f"{list(SUPPORTED_SCHEMAS)}. Re-export the models with this version's `bird-infer export`, "
            "or install the bird_infer version that wrote them."
        )
    labels = check_labels(get_field(d, "labels", "manifest"), "manifest field 'labels'")
    if version == 1:
        d = _schema1_to_2(d)
    row_s = positive(d.get("row_s", 5.0), "row_s")
    raw_members = get_field(d, "members", "manifest")
    if not isinstance(raw_members, list) or (not raw_members and not building):
        raise InvalidFieldError(
            "manifest field 'members' lists no member: list at least one (a bundle started with `bird-infer "
            "new-bundle` gets its members with `bird-infer add-member`)"
        )
    groups = parse_label_groups(d.get("label_groups", {}), labels)
    members = resolve_heads(tuple(parse_member(m, i, labels, row_s, groups) for i, m in enumerate(raw_members)))
    names = [m.name for m in members]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidFieldError(f"member names repeat: {dup}; give each member its own name")
    stages = parse_stages(
        d.get("stages"),
        labels,
        {m.name: m.labels for m in members},
        {f"{m.name}:{e.name}" for m in members if m.source is None for e in m.folds[0].embeddings},
    )
    covered = {x for m in members for x in m.labels} | {x for s in stages for x in s.labels}
    uncovered = [x for x in labels if x not in covered]
    if uncovered and not building:
        raise InvalidFieldError(
            f"bundle labels {uncovered[:10]} ({len(uncovered)}) are predicted by no member; remove them from "
            "'labels' or add a member that has them (`bird-infer add-member`)"
        )
    files = [f.file for m in members for f in m.folds]
    if len(set(files)) != len(files):
        raise InvalidFieldError("two folds name the same file; each fold needs its own ONNX file")
    drop_order = d.get("drop_order", [])
    if not isinstance(drop_order, list) or any(n not in names for n in drop_order):
        raise InvalidFieldError(f"drop_order must list member names {names}, got {drop_order!r}")
    blend = parse_blend(d.get("blend", {}), groups, names)
    if blend.rule == "rank" and any(s.role == "final" and s.sources("embedding") for s in stages):
        raise InvalidFieldError(
            "with a rank blend, final stages run once every file is in, on the ranks, and embeddings are not kept "
            "until then: read embeddings in a member stage (role member), or use a mean or power blend"
        )
    return Manifest(
        labels=labels,
        members=members,
        row_s=row_s,
        postprocess=parse_postprocess(d.get("postprocess", []), groups, labels),
        blend=blend,
        label_groups=groups,
        drop_order=tuple(drop_order),
        description=str(d.get("description", "")),
        schema_version=int(version),
        root=root,
        names=_parse_names(d.get("names", {}), labels),
        stages=stages,
    )


def load_manifest(path: str | Path, verify: bool = True, building: bool = False) -> Manifest:
    """Read ``manifest.json`` (or the folder that holds it) and validate it.

    With ``verify`` (the default) every fold file is also checked: present, sha256 as recorded,
    input/output names and widths as declared. ``building``: see :func:`manifest_from_dict`. Raises a
    ``ManifestError`` subclass.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise ModelFileMissingError(
            f"no manifest at {path}; point --models at the folder holding manifest.json and the fold .onnx files"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror}") from e
    m = manifest_from_dict(raw, root=path.parent.resolve(), building=building)
    if verify:
        verify_files(m)
    return m


def write_manifest(m: Manifest, folder: str | Path) -> Path:
    """Write ``manifest.json`` (schema 2) into ``folder`` and return its path: to a temporary file beside it,
    fsynced, then renamed over it, so that a full disk or a crash never leaves a torn manifest."""
    path = Path(folder) / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{MANIFEST_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(m.to_dict(), indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp's 0600 would hide it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
