"""The bundle as a whole: :class:`Manifest`, its labels and members (:mod:`bird_infer.contract.schema`), the blend and
post-processing (:mod:`bird_infer.contract.postprocess`), the keeping order the deadline guard drops folds and
shifts in, and the dict it is written as. Frozen, and nothing here reads files."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bird_infer.contract.describe import doc
from bird_infer.contract.errors import ManifestError
from bird_infer.contract.postprocess import Blend, PostProcess, steps_to_list
from bird_infer.contract.schema import SCHEMA_VERSION, FoldSpec, Member, Shift, SpeciesName, fold_file
from bird_infer.contract.stages import Stage, stages_to_list


@dataclass(frozen=True)
class Manifest:
    """A validated model bundle. ``root`` is the folder holding manifest.json."""

    labels: tuple[str, ...] = field(
        metadata=doc("The bundle's output columns, in order (a sample submission may reorder them).")
    )
    members: tuple[Member, ...] = field(
        metadata=doc("The model families blended into the bundle's rows; see the member fields below."),
    )
    row_s: float = field(default=5.0, metadata=doc("Length of one submission row (seconds).", unit="s"))
    postprocess: PostProcess = field(
        default_factory=PostProcess,
        metadata=doc("The ordered steps applied to each file's blended rows (:mod:`bird_infer.contract.postprocess`)."),
    )
    blend: Blend = field(default_factory=Blend, metadata=doc("How the members' probabilities of a label become one."))
    label_groups: dict[str, tuple[str, ...]] = field(
        default_factory=dict,
        metadata=doc("Named lists of bundle labels (a taxon, a call type), for group weights and per-group steps."),
    )
    drop_order: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "Member names in the order the deadline guard drops their folds (first: dropped first); members "
            "not listed come after, lowest weight first. The first fold of every member is never dropped."
        ),
    )
    description: str = field(default="", metadata=doc("Free text for people: what the bundle is, where it came from."))
    schema_version: int = field(
        default=SCHEMA_VERSION,
        metadata=doc("The manifest's schema: 2 (written by this version); 1, one model family, still loads."),
    )
    root: Path = field(
        default=Path("."),
        metadata=doc(
            "The folder holding manifest.json (where it was read from; not written).",
            written=False,
        ),
    )
    names: dict[str, SpeciesName] = field(
        default_factory=dict,
        metadata=doc("Optional scientific and common name per label; a label without an entry stands in for both."),
    )
    stages: tuple[Stage, ...] = field(
        default=(),
        metadata=doc("File-level ONNX stages, run once per file in order (:mod:`bird_infer.contract.stages`)."),
    )

    @property
    def batch_rows(self) -> int:
        """Rows a decoded block must be a multiple of (and start at), so that a front-end's ``top_db_ref: batch``
        groups rows as training did: the least common multiple of those front-ends' ``batch_rows`` (1: none)."""
        rows = 1
        for m in self.members:
            if m.frontend is not None and m.frontend.top_db_ref == "batch":
                rows = math.lcm(rows, m.frontend.batch_rows)
        return rows

    @property
    def member_stages(self) -> tuple[Stage, ...]:
        """The stages blended as members (after the members, in the stack's order)."""
        return tuple(s for s in self.stages if s.role == "member")

    def species_name(self, label: str) -> SpeciesName:
        """The label's names, or the label itself as both."""
        return self.names.get(label) or SpeciesName(label, label)

    def fold_path(self, fold: FoldSpec) -> Path:
        return fold_file(self.root, fold)

    @property
    def n_folds(self) -> int:
        return sum(len(m.folds) for m in self.members)

    def member(self, name: str | None = None) -> Member:
        """The member named ``name``; without a name, the only member of a one-member bundle."""
        if name is None:
            if len(self.members) != 1:
                names = [m.name for m in self.members]
                raise ManifestError(f"this bundle has {len(self.members)} members {names}; name the member you mean")
            return self.members[0]
        for m in self.members:
            if m.name == name:
                return m
        raise ManifestError(f"no member named {name!r}; the bundle has {[m.name for m in self.members]}")

    def fold_order(self) -> list[tuple[int, int]]:
        """(member index, fold index) in keeping order: every member's first fold first (never dropped); the folds
        of the member dropped first come last, and within a member its last fold is dropped first."""
        index = {m.name: i for i, m in enumerate(self.members)}
        listed = [n for n in self.drop_order if n in index]
        rest = sorted(
            (m.name for m in self.members if m.name not in listed), key=lambda n: self.members[index[n]].weight
        )
        droppable = [
            (index[n], f) for n in [*listed, *rest] for f in reversed(range(1, len(self.members[index[n]].folds)))
        ]
        return [(i, 0) for i in range(len(self.members))] + list(reversed(droppable))

    def unit_order(self) -> list[tuple[str, int, int]]:
        """The deadline guard's units in keeping order: ``("fold", member, fold)`` as :meth:`fold_order`, then
        ``("shift", member, shift)`` for each member's shifts beyond its base (:attr:`Member.base_shift`). The
        guard keeping ``k`` units keeps the first ``k``: shifts are dropped first (the last member's last shift
        first), then folds; never a member's first fold or base shift."""
        shifts = [
            ("shift", i, s)
            for i, m in enumerate(self.members)
            for s in range(len(m.shifts))
            if s != m.base_shift and m.source is None
        ]
        return [("fold", i, f) for i, f in self.fold_order()] + shifts

    @property
    def n_units(self) -> int:
        """Folds and extra shifts: what the deadline guard counts (equal to :attr:`n_folds` without shifts)."""
        return len(self.unit_order())

    def kept_units(self, n_units: int | None = None) -> list[tuple[list[int], list[int]]]:
        """For each member, (fold indices, shift indices) kept when the bundle keeps its first ``n_units`` units
        (default all). A head's shifts are its source's."""
        order = self.unit_order()
        k = len(order) if n_units is None else n_units
        if not len(self.members) <= k <= len(order):
            raise ValueError(f"the units kept must be between {len(self.members)} and {len(order)}, got {n_units}")
        folds: list[list[int]] = [[] for _ in self.members]
        shifts: list[list[int]] = [[m.base_shift] for m in self.members]
        for kind, i, j in order[:k]:
            (folds if kind == "fold" else shifts)[i].append(j)
        index = {m.name: i for i, m in enumerate(self.members)}
        for i, m in enumerate(self.members):
            if m.source is not None:
                shifts[i] = shifts[index[m.source.member]]
        return [(sorted(f), sorted(s)) for f, s in zip(folds, shifts, strict=True)]

    def kept_folds(self, n_units: int | None = None) -> list[list[int]]:
        """For each member, the fold indices kept with the bundle's first ``n_units`` units (default all)."""
        return [f for f, _ in self.kept_units(n_units)]

    def runs(self, n_units: int | None = None) -> int:
        """Model runs per row with the first ``n_units`` units: each member's kept folds x kept shifts."""
        return sum(len(f) * len(s) for f, s in self.kept_units(n_units))

    def fold_names(self) -> list[list[str]]:
        """Each member's fold names as reports show them (``member/fold`` when there are several members)."""
        several = len(self.members) > 1
        return [[f"{m.name}/{f.name}" if several else f.name for f in m.folds] for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written (schema 2)."""
        members = []
        for m in self.members:
            d = asdict(m)
            d["labels"] = list(m.labels)
            d["frontend"] = {"kind": "waveform"} if m.frontend is None else {"kind": "logmel", **asdict(m.frontend)}
            if m.birdnet is None:
                d.pop("birdnet")
            else:
                d["kind"] = "birdnet"
                d["birdnet"]["outputs"] = list(m.birdnet.outputs)
            for key in ("output_index", "source", "head_dim", "model"):
                if d[key] is None:
                    d.pop(key)
            if m.output_index is not None:
                d["output_index"] = [list(e) if isinstance(e, tuple) else e for e in m.output_index]
            if m.source is not None:  # a head's audio and input are its source's
                for key in ("audio", "frontend", "head_dim"):
                    d.pop(key, None)
            if m.shifts == (Shift(),):
                d.pop("shifts")
            if m.steps:
                d["steps"] = steps_to_list(m.steps)
            else:
                d.pop("steps")
            if m.label_reduce == "first":
                d.pop("label_reduce")
            for f in d["folds"]:
                if not f["embeddings"]:
                    f.pop("embeddings")
            members.append(d)
        blend = asdict(self.blend)
        return {
            "schema_version": SCHEMA_VERSION,
            "description": self.description,
            "labels": list(self.labels),
            "row_s": self.row_s,
            "members": members,
            "postprocess": self.postprocess.to_list(),
            **({"blend": blend} if self.blend != Blend() else {}),
            **({"label_groups": {k: list(v) for k, v in self.label_groups.items()}} if self.label_groups else {}),
            "drop_order": list(self.drop_order),
            **({"names": {k: asdict(v) for k, v in self.names.items()}} if self.names else {}),
            **({"stages": stages_to_list(self.stages)} if self.stages else {}),
        }
