"""``bird-infer bundle``: one folder to upload as a Kaggle dataset, that installs itself in an offline notebook.

The folder holds:

- ``bird_infer/``: this package's source (inference never imports torch);
- ``models/``: the user's models folder, checked (manifest, files, checksums) before it is copied;
- ``kaggle_kernel.py``: the cell to paste;
- ``wheels/``: every runtime package a notebook may lack, with their dependencies, and OpenVINO (unless
  ``--no-openvino``), for each CPython asked (3.11 and 3.12 by default), manylinux x86-64, downloaded by pip *for
  those targets* (not for the machine building the bundle), at the versions installed here when they are;
- ``dataset-metadata.json`` for ``kaggle datasets create -p DIR --dir-mode zip``;
- ``SHA256SUMS``: one ``<sha256>  <path>`` line per file.

The notebook's kernel installs what it lacks from ``wheels/`` with ``pip install --no-index --find-links``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import BundleError
from bird_infer.contract.files import sha256_file
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.schema import MANIFEST_NAME

log = logging.getLogger(__name__)

RUNTIME_PACKAGES = ("onnxruntime", "onnx", "soxr", "soundfile", "regex")
DEFAULT_EXTRAS = ("openvino",)
"""Engines a bundle carries unless told not to: OpenVINO, so that ``--precision auto`` can choose it (fp32, or bf16
where the notebook's CPU has it) on whatever CPU the notebook gets."""
"""What a Kaggle CPU image lacks, or may lack, of bird_infer's runtime (numpy, scipy and pandas are in it)."""
EXTRA_PACKAGES = {"openvino": ("openvino",)}
DEFAULT_PYTHONS = ("3.11", "3.12")
# manylinux tags a Kaggle image (glibc 2.35) runs; pip matches each tag exactly, so all are listed.
PLATFORMS = (
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    *(f"manylinux_2_{n}_x86_64" for n in range(5, 36)),
)


@dataclass(frozen=True)
class BundleResult:
    folder: Path
    wheels: tuple[str, ...]
    """File names in ``wheels/``."""
    size_bytes: int


def pinned(packages: Sequence[str]) -> list[str]:
    """``name==version`` where the package is installed here (the bundle runs what was tested), else ``name``."""
    out = []
    for name in packages:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def download_wheels(packages: Sequence[str], python: str, dest: Path) -> None:
    """pip download ``packages`` and their dependencies as wheels for CPython ``python`` on manylinux x86-64."""
    if not python.replace(".", "").isdigit() or python.count(".") != 1:
        raise BundleError(f"--python takes versions like 3.11, got {python!r}")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--dest",
        str(dest),
    ]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    cmd += list(packages)
    log.info("downloading wheels for CPython %s: %s", python, " ".join(packages))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BundleError(
            f"pip could not download wheels of {list(packages)} for CPython {python} on manylinux x86-64 "
            f"(it needs the package index):\n{proc.stderr.strip()[-3000:]}"
        )


def copy_package(dest: Path) -> None:
    """This package's source, without caches."""
    src = Path(__file__).resolve().parent.parent
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def kernel_source() -> Path:
    """kaggle_kernel.py: beside the package in a checkout, or inside it when installed from a wheel."""
    candidate = Path(__file__).resolve().parent.parent.parent / "kaggle_kernel.py"
    if candidate.is_file():
        return candidate
    raise BundleError("kaggle_kernel.py not found next to the bird_infer package; build the bundle from a checkout")


def write_checksums(folder: Path) -> Path:
    lines = [
        f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}"
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "SHA256SUMS"
    ]
    path = folder / "SHA256SUMS"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_bundle(
    out: str | Path,
    models: str | Path,
    pythons: Sequence[str] = DEFAULT_PYTHONS,
    extras: Sequence[str] = DEFAULT_EXTRAS,
    dataset_id: str = "YOUR-KAGGLE-USERNAME/bird-infer-bundle",
    title: str = "bird-infer bundle",
    wheels: bool = True,
) -> BundleResult:
    """Write the bundle folder ``out`` (which must not exist or be empty). See the module docstring.

    Built in a temporary folder beside ``out`` and renamed at the end: a failed build leaves nothing that blocks
    the next. The manifest packed under ``models/manifest.json`` (the name the kernel reads) is the one given
    (``--models models/manifest.tuned.json`` packs the tuned one)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not empty; give a new folder")
    unknown = [e for e in extras if e not in EXTRA_PACKAGES]
    if unknown:
        raise BundleError(f"unknown extras {unknown}; known: {sorted(EXTRA_PACKAGES)}")
    manifest = load_manifest(models)  # a broken models folder fails here, not in the notebook
    given = Path(models) if Path(models).is_file() else Path(models) / MANIFEST_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        result = _fill(partial, manifest, given, pythons, extras, dataset_id, title, wheels)
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dataclasses.replace(result, folder=out)


def _fill(
    out: Path,
    manifest: Manifest,
    given: Path,
    pythons: Sequence[str],
    extras: Sequence[str],
    dataset_id: str,
    title: str,
    wheels: bool,
) -> BundleResult:
    """The bundle's files, written into ``out`` (the temporary folder)."""
    copy_package(out / "bird_infer")
    shutil.copytree(manifest.root, out / "models", ignore=shutil.ignore_patterns("__pycache__", ".*"))
    shutil.copy2(given, out / "models" / MANIFEST_NAME)  # the manifest given, under the name the kernel reads
    shutil.copy2(kernel_source(), out / "kaggle_kernel.py")
    names: list[str] = []
    if wheels:
        packages = pinned([*RUNTIME_PACKAGES, *(p for e in extras for p in EXTRA_PACKAGES[e])])
        wheel_dir = out / "wheels"
        wheel_dir.mkdir()
        for python in pythons:
            download_wheels(packages, python, wheel_dir)
        names = sorted(p.name for p in wheel_dir.glob("*.whl"))
    meta = {
        "title": title,
        "id": dataset_id,
        "licenses": [{"name": "other"}],
        "description": f"bird_infer bundle: {len(manifest.labels)} labels, {len(manifest.members)} member(s), "
        f"{manifest.n_folds} folds; "
        f"wheels for CPython {', '.join(pythons) if wheels else '(none)'}",
    }
    (out / "dataset-metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    write_checksums(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return BundleResult(folder=out, wheels=tuple(names), size_bytes=size)


def verify_checksums(folder: str | Path) -> list[str]:
    """Paths whose sha256 differs from SHA256SUMS (empty when the bundle is intact)."""
    folder = Path(folder)
    bad = []
    for line in (folder / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        path = folder / rel
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(rel)
    return bad
