"""A bundle's files: every fold present, with the sha256 the manifest records and the interface it declares."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from bird_infer.contract.errors import (
    ChecksumMismatchError,
    LabelCountMismatchError,
    ModelFileMissingError,
    ModelShapeError,
)
from bird_infer.contract.schema import FoldSpec, Manifest, Member


def sha256_file(path: Path, block_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            h.update(block)
    return h.hexdigest()


def _onnx_dims(value_info: Any) -> tuple[int | str, ...]:
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def _check_model_file(m: Manifest, member: Member, fold: FoldSpec) -> None:
    import onnx  # deferred: only loading with verify=True reads the graph, and onnx takes ~0.3 s to import

    path = m.fold_path(fold)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others: any failure means an unusable file
        raise ModelShapeError(f"fold {fold.name}: {path} is not a readable ONNX model ({e})") from e
    graph_inputs = {i.name: _onnx_dims(i) for i in model.graph.input}
    graph_outputs = {o.name: _onnx_dims(o) for o in model.graph.output}
    if fold.input.name not in graph_inputs:
        raise ModelShapeError(
            f"fold {fold.name}: the model has no input named {fold.input.name!r} (it has {list(graph_inputs)})"
        )
    if tuple(graph_inputs[fold.input.name][1:]) != tuple(fold.input.shape[1:]):
        raise ModelShapeError(
            f"fold {fold.name}: model input shape {list(graph_inputs[fold.input.name])} differs from the "
            f"manifest's {list(fold.input.shape)}"
        )
    specs = [fold.clipwise] + ([fold.segmentwise] if fold.segmentwise else [])
    for spec in specs:
        if spec.name not in graph_outputs:
            raise ModelShapeError(
                f"fold {fold.name}: the model has no output named {spec.name!r} (it has {list(graph_outputs)})"
            )
    width = graph_outputs[fold.clipwise.name][-1]
    if width != len(member.labels):
        raise LabelCountMismatchError(
            f"fold {fold.name}: {path.name} outputs {width} classes but the manifest lists {len(member.labels)} "
            "labels; ship the labels this model was trained with, or the model trained with these labels"
        )


def verify_files(m: Manifest) -> None:
    """Check that every fold file exists, matches its sha256, and has the declared interface."""
    for member, fold in ((mem, f) for mem in m.members for f in mem.folds):
        path = m.fold_path(fold)
        if not path.is_file():
            raise ModelFileMissingError(
                f"fold {fold.name}: model file {path} is missing; copy it next to manifest.json "
                "or remove the fold from the manifest"
            )
        digest = sha256_file(path)
        if digest != fold.sha256:
            raise ChecksumMismatchError(
                f"fold {fold.name}: {path.name} has sha256 {digest} but the manifest records {fold.sha256}; "
                "the file is corrupt or was replaced. Restore it, or re-export with `bird-infer export`"
            )
        if member.birdnet is None:
            _check_model_file(m, member, fold)
        if fold.int8 is not None:
            for name, sha in ((fold.int8.file, fold.int8.sha256), (fold.int8.weights, fold.int8.weights_sha256)):
                _check_int8_file(m.root / name, sha, fold.name)


def _check_int8_file(path: Path, sha: str, fold: str) -> None:
    if not path.is_file():
        raise ModelFileMissingError(
            f"fold {fold}: its int8 model file {path} is missing; copy it next to manifest.json, or rerun "
            "`bird-infer quantize`"
        )
    digest = sha256_file(path)
    if digest != sha:
        raise ChecksumMismatchError(
            f"fold {fold}: {path.name} has sha256 {digest} but the manifest records {sha}; rerun `bird-infer quantize`"
        )
