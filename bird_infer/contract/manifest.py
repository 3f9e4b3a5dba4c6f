"""The model manifest on disk: ``models/manifest.json`` beside the fold files, the one source of truth between
training and inference. Loading parses and checks everything that can be checked without audio
(:mod:`bird_infer.contract.parse`), then every fold file (:mod:`bird_infer.contract.files`), so that a bad bundle
fails before the first file is decoded, with a message that names the field and says what to fix. Nothing here
imports torch: the inference path reads the manifest, and the exporter writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from bird_infer.contract.errors import ManifestError, ModelFileMissingError
from bird_infer.contract.files import verify_files
from bird_infer.contract.parse import manifest_from_dict
from bird_infer.contract.schema import MANIFEST_NAME, Manifest

__all__ = ["MANIFEST_NAME", "load_manifest", "manifest_from_dict", "write_manifest"]


def load_manifest(path: str | Path, verify: bool = True) -> Manifest:
    """Read ``manifest.json`` (or the folder that holds it) and validate it.

    With ``verify`` (the default) every fold file is also checked: present, sha256 as recorded,
    input/output names and widths as declared. Raises a ``ManifestError`` subclass.
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
    m = manifest_from_dict(raw, root=path.parent.resolve())
    if verify:
        verify_files(m)
    return m


def write_manifest(m: Manifest, folder: str | Path) -> Path:
    """Write ``manifest.json`` (schema 2) into ``folder`` and return its path."""
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(m.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
