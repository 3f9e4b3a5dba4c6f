"""Each bad manifest fails before any audio is read, with its own error and a fix-it message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bird_infer.contract.errors import (
    ChecksumMismatchError,
    InvalidFieldError,
    LabelCountMismatchError,
    MissingFieldError,
    ModelFileMissingError,
    SchemaVersionError,
)
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.schema import MANIFEST_NAME
from tests.conftest import member0, set_labels


@pytest.fixture()
def bundle_copy(tmp_path: Path, tiny_bundle) -> Path:
    manifest, _, _ = tiny_bundle
    dst = tmp_path / "bundle"
    shutil.copytree(manifest.root, dst)
    return dst


def edit(bundle: Path, change) -> None:
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_valid_bundle_loads(bundle_copy: Path) -> None:
    m = load_manifest(bundle_copy)
    assert (
        len(m.labels) == 264
        and len(m.member().folds) == 2
        and m.member().frontend.n_frames(m.member().audio.chunk_samples) == 501
    )
    assert m.member().frontend.top_db == 80.0 and m.member().audio.chunk_samples == 160000


def test_missing_model_file(bundle_copy: Path) -> None:
    (bundle_copy / "fold1.onnx").unlink()
    with pytest.raises(ModelFileMissingError, match=r"fold1\.onnx is missing"):
        load_manifest(bundle_copy)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissingError, match="no manifest"):
        load_manifest(tmp_path)


def test_checksum_mismatch(bundle_copy: Path) -> None:
    with open(bundle_copy / "fold0.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        load_manifest(bundle_copy)


def test_unknown_schema_version(bundle_copy: Path) -> None:
    edit(bundle_copy, lambda d: d.update(schema_version=99))
    with pytest.raises(SchemaVersionError, match="schema_version 99"):
        load_manifest(bundle_copy)


def test_label_count_differs_from_model_output(bundle_copy: Path) -> None:
    def drop_label_everywhere(d: dict) -> None:
        set_labels(d, d["labels"][:-1])
        for fold in member0(d)["folds"]:  # even when the declared shapes are edited to agree, the file disagrees
            fold["clipwise"]["shape"][-1] -= 1
            fold["segmentwise"]["shape"][1] -= 1

    original = (bundle_copy / MANIFEST_NAME).read_text()
    edit(bundle_copy, lambda d: set_labels(d, d["labels"][:-1]))
    with pytest.raises(LabelCountMismatchError, match="264 columns but the manifest lists 263 labels"):
        load_manifest(bundle_copy)
    (bundle_copy / MANIFEST_NAME).write_text(original)
    edit(bundle_copy, drop_label_everywhere)
    with pytest.raises(LabelCountMismatchError, match="outputs 264 classes"):
        load_manifest(bundle_copy)


@pytest.mark.parametrize("field", ["hop_length", "n_mels", "top_db", "pad_mode", "mel_scale", "normalize"])
def test_missing_frontend_field(bundle_copy: Path, field: str) -> None:
    edit(bundle_copy, lambda d: member0(d)["frontend"].pop(field))
    with pytest.raises(MissingFieldError, match=f"frontend.{field}' is missing"):
        load_manifest(bundle_copy)


def test_invalid_choice_names_the_options(bundle_copy: Path) -> None:
    edit(bundle_copy, lambda d: member0(d)["frontend"].update(pad_mode="edge"))
    with pytest.raises(InvalidFieldError, match=r"one of \['reflect', 'constant'\]"):
        load_manifest(bundle_copy)


def test_front_end_that_does_not_fit_the_model(bundle_copy: Path) -> None:
    edit(bundle_copy, lambda d: member0(d)["frontend"].update(hop_length=512))
    with pytest.raises(Exception, match="does not match the front-end"):
        load_manifest(bundle_copy)


def test_manifest_round_trip(bundle_copy: Path) -> None:
    from bird_infer.contract.manifest import write_manifest

    m = load_manifest(bundle_copy)
    write_manifest(m, bundle_copy)
    assert load_manifest(bundle_copy) == m
