"""A bundle's files: every fold present, with the sha256 the manifest records and the interface it declares;
the post-processing's prior tables, read and checked."""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.describe import doc
from bird_infer.contract.errors import (
    ChecksumMismatchError,
    InvalidFieldError,
    LabelCountMismatchError,
    ModelFileMissingError,
    ModelShapeError,
    OutOfResourcesError,
)
from bird_infer.contract.name_pattern import NamePattern
from bird_infer.contract.onnx_graph import GraphInterface, OnnxWireError, graph_interface
from bird_infer.contract.postprocess import Prior
from bird_infer.contract.schema import FoldSpec, Member
from bird_infer.contract.stages import Stage
from bird_infer.contract.tables import read_text
from bird_infer.contract.text import describe_exception


def sha256_file(path: Path, block_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            h.update(block)
    return h.hexdigest()


def read_graph(path: Path, what: str) -> GraphInterface:
    """The graph interface of the ONNX file at ``path`` (:mod:`bird_infer.contract.onnx_graph`); ``what`` names it
    in the errors: ModelShapeError for a file that is not an ONNX model, OutOfResourcesError when memory runs out."""
    try:
        return graph_interface(path.read_bytes())
    except MemoryError as e:  # the machine, not the file (ulimit -v, a full memory): say so
        raise OutOfResourcesError(
            f"out of memory while reading {what} ({path.name}, {path.stat().st_size / 2**20:.0f} MiB): "
            "the file is fine; free memory or raise the limit (ulimit -v)"
        ) from e
    except (OnnxWireError, UnicodeDecodeError) as e:
        raise ModelShapeError(f"{what}: {path} is not a readable ONNX model ({describe_exception(e)})") from e


def _check_model_file(m: Manifest, member: Member, fold: FoldSpec) -> None:
    path = m.fold_path(fold)
    graph = read_graph(path, f"fold {fold.name}")
    if graph.external:
        raise ModelShapeError(
            f"fold {fold.name}: {path.name} keeps weights in external-data files ({list(graph.external[:3])}...), "
            "which a worker loading the checked bytes cannot read: add the model with `bird-infer add-member`, which "
            "inlines them into the bundle's copy"
        )
    graph_inputs, graph_outputs = graph.inputs, graph.outputs
    if fold.input.name not in graph_inputs:
        raise ModelShapeError(
            f"fold {fold.name}: the model has no input named {fold.input.name!r} (it has {list(graph_inputs)})"
        )
    if tuple(graph_inputs[fold.input.name][1:]) != tuple(fold.input.shape[1:]):
        raise ModelShapeError(
            f"fold {fold.name}: model input shape {list(graph_inputs[fold.input.name])} differs from the "
            f"manifest's {list(fold.input.shape)}"
        )
    specs = [fold.clipwise, *([fold.segmentwise] if fold.segmentwise else []), *fold.embeddings]
    for spec in specs:
        if spec.name not in graph_outputs:
            raise ModelShapeError(
                f"fold {fold.name}: the model has no output named {spec.name!r} (it has {list(graph_outputs)})"
            )
    used = fold.segmentwise if member.ensemble.output == "framewise" and fold.segmentwise else fold.clipwise
    problem = member.width_problem(member.output_width(fold, graph_outputs[used.name]), "classes")
    if problem is not None:
        raise LabelCountMismatchError(
            f"fold {fold.name}: {path.name} outputs {problem}; ship the labels this model was trained with, or the "
            "model trained with these labels"
        )


def verify_files(m: Manifest) -> None:
    """Check that every fold file exists, matches its sha256, and has the declared interface; and that every prior
    table of the post-processing reads (:func:`load_prior_table`)."""
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
    for step in (*m.postprocess.steps, *(s for mem in m.members for s in mem.steps)):
        if isinstance(step, Prior):
            load_prior_table(m, step)
    for stage in m.stages:
        check_stage_file(m, stage)


def _present_and_intact(path: Path, sha256: str, what: str) -> None:
    """``path`` is a file whose sha256 is ``sha256``; else the error names ``what`` and how to fix it."""
    if not path.is_file():
        raise ModelFileMissingError(f"{what} is missing; copy it next to manifest.json")
    digest = sha256_file(path)
    if digest != sha256:
        raise ChecksumMismatchError(f"{what} has sha256 {digest} but the manifest records {sha256}")


def check_stage_file(m: Manifest, stage: Stage) -> None:
    """A stage's file: present, its sha256 as recorded, its graph's inputs exactly those the manifest feeds, its
    output there."""
    path = m.root / stage.file
    where = f"stage {stage.name}"
    _present_and_intact(path, stage.sha256, f"{where}: its file {path.name}")
    graph = read_graph(path, where)
    graph_inputs = sorted(name for name in graph.inputs if name not in set(graph.initializers))
    fed = sorted(i.name for i in stage.inputs)
    if graph_inputs != fed:
        raise ModelShapeError(f"{where}: the graph's inputs are {graph_inputs}; the manifest feeds {fed}")
    outputs = list(graph.outputs)
    if stage.output not in outputs:
        raise ModelShapeError(f"{where}: the graph has no output {stage.output!r} (it has {outputs})")


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


@dataclass(frozen=True)
class PriorTable:
    """A prior step's table as read: the key columns (named groups of the step's pattern), and per key the
    multiplier of each bundle label (1.0 for a label the table has no column for)."""

    keys: tuple[str, ...] = field(
        metadata=doc("The key columns: the named groups of the step's pattern, in the table's order.")
    )
    rows: dict[tuple[str, ...], tuple[float, ...]] = field(
        metadata=doc("For each key (its values, one per key column), the multiplier of each bundle label, in order."),
    )


def load_prior_table(m: Manifest, step: Prior) -> PriorTable:
    """Read and check a prior step's CSV: present, its sha256 as recorded, every column a named group of the
    pattern or a bundle label, multipliers finite and >= 0. Raises a ManifestError subclass."""
    path = m.root / step.table
    where = f"postprocess prior table {step.table}"
    _present_and_intact(path, step.sha256, where)
    try:
        table = list(csv.reader(read_text(path, where).splitlines()))
    except csv.Error as e:
        raise InvalidFieldError(f"{where} cannot be read as a UTF-8 CSV ({e})") from e
    if not table:
        raise InvalidFieldError(f"{where} is empty; it needs a header: the pattern's groups, then labels")
    header, body = table[0], table[1:]
    groups = set(NamePattern.compile(step.pattern, check=False).groupindex)
    label_index = {x: j for j, x in enumerate(m.labels)}
    keys = [c for c in header if c not in label_index]
    strange = [c for c in keys if c not in groups]
    if strange:
        raise InvalidFieldError(
            f"{where}: columns {strange[:10]} are neither bundle labels nor named groups of the pattern "
            f"{step.pattern!r} (its groups: {sorted(groups)})"
        )
    if not keys:
        raise InvalidFieldError(f"{where}: no key column; name one after a group of the pattern {sorted(groups)}")
    rows: dict[tuple[str, ...], tuple[float, ...]] = {}
    lines: dict[tuple[str, ...], int] = {}
    for n, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InvalidFieldError(f"{where}, line {n}: {len(row)} cells, the header has {len(header)}")
        cells = dict(zip(header, row, strict=True))
        values = [1.0] * len(m.labels)
        for label, j in label_index.items():
            if label in cells:
                try:
                    values[j] = float(cells[label])
                except ValueError:
                    values[j] = float("nan")
                if not (math.isfinite(values[j]) and values[j] >= 0):
                    raise InvalidFieldError(f"{where}, line {n}: {label!r} must be a number >= 0, got {cells[label]!r}")
        key = tuple(cells[k] for k in keys)
        if key in lines:
            shown = dict(zip(keys, key, strict=True))
            raise InvalidFieldError(f"{where}: the key {shown} is listed twice, on lines {lines[key]} and {n}")
        lines[key] = n
        top = max(values, default=1.0)
        if top > 1 and step.beta * math.log10(top) > 300:
            raise InvalidFieldError(
                f"{where}, line {n}: a multiplier of {top:g} to the power beta {step.beta:g} overflows; lower beta or "
                "the table's values"
            )
        rows[key] = tuple(values)
    return PriorTable(tuple(keys), rows)
