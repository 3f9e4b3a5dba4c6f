"""File-level stages: the user's own file-level logic, carried as ONNX like the models are, run once per file on
the file's stacked rows (the 2026 winners' MLP probes with file context, sequence heads over a file's embeddings
with site and hour, second passes, logit-level priors).

A stage is an ONNX model whose inputs bird_infer assembles for one file (``n``: the file's predicted rows; fallback
rows are never fed to a stage), each named by a *source*:

- ``member:NAME``: member (or earlier member-stage) ``NAME``'s probabilities, ``(1, n, its labels)`` float32, in its
  label order, after its own steps;
- ``logits:NAME``: the same as logits, ``log(p / (1 - p))``, ``p`` clipped into ``[1e-7, 1 - 1e-7]``;
- ``embedding:MEMBER:OUTPUT``: a backbone's embedding output (declared with ``--embedding``), ``(1, n, dim)``, each
  row the shifts' weighted mean of its window's embedding;
- ``blend``: the blended rows, ``(1, n, bundle labels)`` (a ``final`` stage only);
- ``context:GROUP``: the named group ``GROUP`` of the stage's context pattern matched in the file's name, as an id
  ``(1,)`` from the context's table (``unknown`` for a value not in it, or a name that does not match);
- ``n``: ``(1,)`` the number of rows.

Its output ``(1, n, L')`` holds probabilities (or logits, ``activation: sigmoid``) over ``labels``. A ``member`` stage
is blended like any member (``weight``); a ``final`` stage's output replaces the blend's rows on its labels, before
the post-processing steps. Stages run in the order listed. Frozen; parsing is :func:`parse_stages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bird_infer.contract.describe import doc
from bird_infer.contract.errors import InvalidFieldError
from bird_infer.contract.fields import bundle_path, choice, get_field, positive
from bird_infer.contract.name_pattern import NamePattern
from bird_infer.contract.parse import check_labels

STAGE_ROLES = ("member", "final")
STAGE_ACTIVATIONS = ("none", "sigmoid")
SOURCE_KINDS = ("member", "logits", "embedding", "blend", "context", "n")


@dataclass(frozen=True)
class StageInput:
    """One input of a stage's ONNX graph and what bird_infer feeds it."""

    name: str = field(metadata=doc("The graph input's name."))
    source: str = field(
        metadata=doc(
            "What it gets: member:NAME, logits:NAME, embedding:MEMBER:OUTPUT, blend, context:GROUP or n (see "
            "the module docstring for shapes)."
        )
    )

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    @property
    def parts(self) -> list[str]:
        return self.source.split(":")


@dataclass(frozen=True)
class StageContext:
    """File context from the name: a pattern's named groups mapped to integer ids."""

    pattern: str = field(metadata=doc("A regular expression with named groups, searched in the file's stem."))
    ids: dict[str, dict[str, int]] = field(
        metadata=doc("{group: {value: id}}: the table each group's text is looked up in (e.g. sites, hours).")
    )
    unknown: int = field(default=-1, metadata=doc("The id of a value not in the table, or of a name not matched."))


@dataclass(frozen=True)
class Stage:
    """A file-level ONNX stage (see the module docstring)."""

    name: str = field(metadata=doc("The stage's name (a member stage is blended under it)."))
    file: str = field(metadata=doc("The ONNX file, relative to manifest.json."))
    sha256: str = field(metadata=doc("The file's sha256, checked at every load."))
    inputs: tuple[StageInput, ...] = field(metadata=doc("Every graph input, with its source."))
    output: str = field(metadata=doc("The graph output used, (1, n, len(labels))."))
    labels: tuple[str, ...] = field(metadata=doc("The output's labels, in its order (bundle labels)."))
    role: str = field(
        default="member",
        metadata=doc("member: blended like a member (weight); final: replaces the blend's rows on its labels."),
    )
    weight: float = field(default=1.0, metadata=doc("A member stage's weight in the blend (> 0)."))
    activation: str = field(
        default="none", metadata=doc("none: the output holds probabilities; sigmoid: it holds logits.")
    )
    context: StageContext | None = field(default=None, metadata=doc("The file context its context:GROUP read."))

    def sources(self, kind: str) -> list[StageInput]:
        return [i for i in self.inputs if i.kind == kind]


def _parse_context(d: Any, where: str) -> StageContext | None:
    if d is None:
        return None
    pattern = get_field(d, "pattern", where)
    if not isinstance(pattern, str):
        raise InvalidFieldError(f"{where}.pattern must be a regular expression with named groups")
    groups = set(NamePattern.compile(pattern, f"{where}.pattern").groupindex)
    raw = get_field(d, "ids", where, "{group: {value: id}}")
    if not isinstance(raw, dict) or not raw:
        raise InvalidFieldError(f"{where}.ids must map named groups to {{value: id}} tables")
    ids: dict[str, dict[str, int]] = {}
    for group, table in raw.items():
        if group not in groups:
            raise InvalidFieldError(
                f"{where}.ids[{group!r}]: the pattern has no group {group!r} (it has {sorted(groups)})"
            )
        if not isinstance(table, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in table.values()
        ):
            raise InvalidFieldError(f"{where}.ids[{group!r}] must map values (text) to whole-number ids")
        ids[group] = {str(k): int(v) for k, v in table.items()}
    unknown = d.get("unknown", -1)
    if isinstance(unknown, bool) or not isinstance(unknown, int):
        raise InvalidFieldError(f"{where}.unknown must be a whole number, got {unknown!r}")
    return StageContext(pattern=pattern, ids=ids, unknown=unknown)


def parse_stages(
    d: Any, labels: tuple[str, ...], members: dict[str, tuple[str, ...]], embeddings: set[str]
) -> tuple[Stage, ...]:
    """The manifest's ``stages``. ``members``: each member's labels; ``embeddings``: ``MEMBER:OUTPUT`` a backbone
    declares. Every source must name what exists before it (a member, or an earlier member stage)."""
    if d is None:
        return ()
    if not isinstance(d, list):
        raise InvalidFieldError("manifest field 'stages' must be a list of file-level stages")
    known = dict(members)
    out = []
    for i, raw in enumerate(d):
        where = f"stages[{i}]"
        name = get_field(raw, "name", where)
        if not isinstance(name, str) or not name.strip() or name in known:
            raise InvalidFieldError(f"{where}.name must be a new non-empty name (not a member's), got {name!r}")
        where = f"stage {name!r}"
        stage_labels = check_labels(get_field(raw, "labels", where), f"{where}: labels")
        foreign = [x for x in stage_labels if x not in set(labels)]
        if foreign:
            raise InvalidFieldError(f"{where}: labels {foreign[:10]} are not bundle labels")
        raw_inputs = get_field(raw, "inputs", where, "{graph input: source}")
        if not isinstance(raw_inputs, dict) or not raw_inputs:
            raise InvalidFieldError(f"{where}.inputs must map the graph's inputs to sources")
        role = choice(raw.get("role", "member"), STAGE_ROLES, f"{where}.role")
        context = _parse_context(raw.get("context"), f"{where}.context")
        inputs = tuple(StageInput(str(k), str(v)) for k, v in raw_inputs.items())
        for inp in inputs:
            _check_source(inp, known, embeddings, role, context, f"{where}.inputs[{inp.name!r}]")
        stage = Stage(
            name=name,
            file=bundle_path(get_field(raw, "file", where), f"{where}.file"),
            sha256=str(get_field(raw, "sha256", where)),
            inputs=inputs,
            output=str(get_field(raw, "output", where)),
            labels=stage_labels,
            role=role,
            weight=positive(raw.get("weight", 1.0), f"{where}.weight"),
            activation=choice(raw.get("activation", "none"), STAGE_ACTIVATIONS, f"{where}.activation"),
            context=context,
        )
        if role == "member":
            known[name] = stage_labels
        out.append(stage)
    files = [s.file for s in out]
    if len(set(files)) != len(files):
        raise InvalidFieldError("two stages name the same file; each stage needs its own ONNX file")
    return tuple(out)


def _check_source(inp: StageInput, known: dict, embeddings: set[str], role: str, context, where: str) -> None:
    parts = inp.parts
    kind = parts[0]
    ok = {
        "member": len(parts) == 2 and parts[1] in known,
        "logits": len(parts) == 2 and parts[1] in known,
        "embedding": len(parts) == 3 and f"{parts[1]}:{parts[2]}" in embeddings,
        "blend": len(parts) == 1 and role == "final",
        "context": len(parts) == 2 and context is not None and parts[1] in context.ids,
        "n": len(parts) == 1,
    }.get(kind, False)
    if not ok:
        raise InvalidFieldError(
            f"{where} is {inp.source!r}: a source is member:NAME or logits:NAME (a member or an earlier member "
            f"stage: {sorted(known)}), embedding:MEMBER:OUTPUT (declared: {sorted(embeddings)}), blend (final "
            "stages), context:GROUP (a group of the stage's context ids) or n"
        )


def stages_to_list(stages: tuple[Stage, ...]) -> list[dict[str, Any]]:
    """The stages as the manifest writes them."""
    out = []
    for s in stages:
        d: dict[str, Any] = {
            "name": s.name,
            "file": s.file,
            "sha256": s.sha256,
            "inputs": {i.name: i.source for i in s.inputs},
            "output": s.output,
            "labels": list(s.labels),
            "role": s.role,
            "weight": s.weight,
            "activation": s.activation,
        }
        if s.context is not None:
            d["context"] = {"pattern": s.context.pattern, "ids": s.context.ids, "unknown": s.context.unknown}
        out.append(d)
    return out
