"""The manifest reference, generated from the schema: every field of every contract dataclass, with its JSON key,
type, default, unit and meaning, read from the field's own metadata (:mod:`bird_infer.contract.describe`). The
documentation site's *Manifest reference* page is this text (``scripts/docs_hooks.py`` inserts it at build time), so the
page cannot drift from the code; ``tests/test_reference.py`` fails when a field has no description."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import pkgutil
import re
from dataclasses import MISSING, Field
from typing import Any

from bird_infer.contract import analyze, birdnet_onnx, bundle, files, name_pattern, postprocess, schema, stages
from bird_infer.contract import training_config as training

SECTIONS: tuple[tuple[type, str, str], ...] = (
    (bundle.Manifest, "manifest.json", "The bundle: `manifest.json`, beside the model files."),
    (
        schema.Member,
        "members[]",
        'One model family. `"kind": "birdnet"` marks a BirdNET member (`birdnet` below); any other member is '
        "ONNX folds (`kind` may be left out).",
    ),
    (schema.AudioConfig, "members[].audio", "How a member's windows are cut from the audio."),
    (
        schema.FrontendConfig,
        "members[].frontend",
        'The log-mel computed before the model, `"kind": "logmel"` with every field below; or `{"kind": '
        '"waveform"}`: the model takes the waveform and computes its features inside the graph.',
    ),
    (schema.FoldSpec, "members[].folds[]", "One fold: its model file and its interface."),
    (
        schema.TensorSpec,
        "folds[].input, .clipwise, .segmentwise, .embeddings[]",
        "A graph input or output the fold declares; checked against the file before any audio is read.",
    ),
    (schema.QuantizedSpec, "folds[].int8", "A fold's int8 model, written by `bird-infer quantize`."),
    (schema.EnsembleConfig, "members[].ensemble", "How a member's fold outputs become its rows."),
    (schema.ModelConfig, "members[].model", "What the torch side needs to rebuild a fold; inference ignores it."),
    (schema.BirdnetSpec, "members[].birdnet", "BirdNET V2.4 as a member (`bird-infer birdnet-bundle`)."),
    (schema.SourceSpec, "members[].source", "A head: a member whose input is another member's output."),
    (schema.Shift, "members[].shifts[]", "Test-time shifts of a member's windows."),
    (schema.SpeciesName, "names.LABEL", "How a label is shown to people (tables, plots)."),
    (postprocess.Blend, "blend", "How the members' probabilities of a label become one."),
    (stages.Stage, "stages[]", "A file-level stage: the user's own ONNX, run once per file on its stacked rows."),
    (
        stages.StageInput,
        "stages[].inputs",
        "Written as an object, `{graph input name: source}`; sources: `member:NAME`, `logits:NAME`, "
        "`embedding:MEMBER:OUTPUT`, `blend`, `context:GROUP`, `n`.",
    ),
    (stages.StageContext, "stages[].context", "The file context a stage's `context:GROUP` inputs read."),
)
"""The manifest's sections, in reading order: (dataclass, where it sits in the JSON, what it is)."""

OTHER_FILES: tuple[tuple[type, str, str], ...] = (
    (birdnet_onnx.ConvertedRecord, "`birdnet_onnx.json`", "Beside `body.onnx` (`bird-infer birdnet-onnx`)."),
    (training.TrainingConfig, "`configs/*.json`", "A training config (`bird-infer train`, `bird-infer export`)."),
    (analyze.AnalyzeSettings, "in memory", "One `bird-infer analyze` run's settings (its command-line options)."),
    (analyze.FileAnalysis, "in memory", "One file's analysis before its tables are written."),
    (files.PriorTable, "in memory", "A `prior` step's table, read and checked."),
    (name_pattern.NamePattern, "in memory", "A file-name pattern, compiled."),
    (postprocess.PostProcess, "`postprocess` (a list of steps)", "The bundle's ordered post-processing steps."),
)


def contract_dataclasses() -> list[type]:
    """Every dataclass defined in :mod:`bird_infer.contract`, module by module."""
    import bird_infer.contract as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


_JSON_NAMES = {"float": "number", "int": "integer", "str": "string", "bool": "boolean", "Any": "any", "None": "null"}


def _type_text(annotation: Any) -> str:
    """A field's annotation as JSON readers see it: tuples and lists are lists, dicts objects, None null."""
    return _type_node(ast.parse(str(annotation), mode="eval").body)


def _type_node(node: ast.expr) -> str:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return f"{_type_node(node.left)} or {_type_node(node.right)}"
    if isinstance(node, ast.Subscript):
        outer = ast.unparse(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer in ("tuple", "list") and (outer == "list" or (len(args) == 2 and ast.unparse(args[1]) == "...")):
            return f"list of {_type_node(args[0])}"
        if outer == "tuple":
            return "[" + ", ".join(_type_node(a) for a in args) + "]"
        if outer == "dict":
            return f"object of {_type_node(args[0])} → {_type_node(args[1])}"
        if outer == "ClassVar":
            return _type_node(args[0])
        return ast.unparse(node)
    if isinstance(node, ast.Constant) and node.value is None:
        return "null"
    name = ast.unparse(node)
    return _JSON_NAMES.get(name, name)


def _default_text(f: Field) -> str:
    if f.default is MISSING and f.default_factory is MISSING:
        return "required"
    value = f.default if f.default is not MISSING else f.default_factory()
    if dataclasses.is_dataclass(value):
        return "its defaults"
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        value = [dataclasses.asdict(v) for v in value]
    try:
        return "`" + json.dumps(list(value) if isinstance(value, tuple) else value) + "`"
    except TypeError:
        return f"`{value}`"


def _markdown(text: str) -> str:
    """A docstring's reST as markdown: ``code`` and :role:`target` become `code`."""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text).replace("``", "`")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def field_table(cls: type) -> str:
    """A markdown table of ``cls``'s written fields: key, type, default, unit, meaning."""
    rows = ["| Key | Type | Default | Unit | Meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.metadata.get("written", True):
            continue
        doc = _markdown(str(f.metadata.get("doc", "")))
        unit = str(f.metadata.get("unit", "")) or "—"
        rows.append(
            f"| `{f.name}` | {_cell(_type_text(f.type))} | {_cell(_default_text(f))} | {unit} | {_cell(doc) or '—'} |"
        )
    return "\n".join(rows)


def _section(cls: type, where: str, what: str) -> str:
    return f"## `{where}`\n\n{_markdown(what)} ({cls.__name__})\n\n{field_table(cls)}\n"


def _record(cls: type, where: str, what: str) -> str:
    return f"### {cls.__name__}\n\n{_markdown(what)} Where: {where}.\n\n{field_table(cls)}\n"


def manifest_reference() -> str:
    """The whole reference, as markdown: the manifest's sections, every post-processing step kind, then the other
    records :mod:`bird_infer.contract` defines (any dataclass not listed above is added there, so none is missed)."""
    parts = [_section(*s) for s in SECTIONS]
    parts.append(
        "## Post-processing steps (`postprocess[]`, `members[].steps[]`)\n\n"
        'Each step is an object with `"step": KIND` and the fields of its kind; the bundle\'s `postprocess` runs '
        "them on the blended rows in order, a member's `steps` on its own rows before the blend.\n"
    )
    for kind, cls in postprocess.STEP_KINDS.items():
        summary = " ".join((cls.__doc__ or "").split())
        parts.append(f'### `"step": "{kind}"` ({cls.__name__})\n\n{summary}\n\n{field_table(cls)}\n')
    covered = {s[0] for s in SECTIONS} | set(postprocess.STEP_KINDS.values())
    parts.append("## Other records of `bird_infer.contract`\n")
    others = list(OTHER_FILES) + [
        (cls, f"`{cls.__module__}`", " ".join((cls.__doc__ or "").split())) for cls in contract_dataclasses()
    ]
    for cls, where, what in others:
        if cls in covered:
            continue
        covered.add(cls)
        parts.append(_record(cls, where, what))
    return "\n".join(parts)
