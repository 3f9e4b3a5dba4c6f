"""The commands that build a bundle by hand: ``new-bundle`` (labels, no member yet) and ``add-member`` (any ONNX
model), thin over :mod:`bird_infer.tools.add_member`."""

from __future__ import annotations

import argparse
import json
import math

from bird_infer.contract.errors import BirdInferError
from bird_infer.contract.parse import parse_frontend
from bird_infer.contract.sample import read_sample_columns
from bird_infer.contract.schema import Shift, SourceSpec
from bird_infer.contract.stages import StageContext
from bird_infer.contract.training_config import read_labels_file
from bird_infer.tools.add_member import MemberRequest, add_member, read_label_map
from bird_infer.tools.add_stage import StageRequest, add_stage, read_id_table
from bird_infer.tools.bundle_folder import new_bundle, open_bundle

SHIFTS_EXAMPLE = "--shifts=-1.25:1,0:2,1.25:2"


def parse_shifts(groups: list[list[str]] | None) -> tuple[Shift, ...]:
    """``--shifts`` as given (argparse's ``append`` of ``nargs='+'``): ``OFFSET:WEIGHT`` items separated by commas
    or spaces, in one ``--shifts``; none given: no shift. A second ``--shifts`` is refused, never silently
    replaces the first."""
    if not groups:
        return (Shift(),)
    if len(groups) > 1:
        given = " ".join("--shifts=" + ",".join(g) for g in groups)
        raise BirdInferError(
            f"--shifts given {len(groups)} times ({given}); give every shift in one, e.g. {SHIFTS_EXAMPLE}"
        )
    out = []
    for t in (item for text in groups[0] for item in text.replace(",", " ").split()):
        offset, _, weight = t.partition(":")
        try:
            out.append(Shift(float(offset), float(weight or 1.0)))
        except ValueError:
            raise BirdInferError(f"--shifts takes OFFSET_S:WEIGHT items like {SHIFTS_EXAMPLE}, got {t!r}") from None
    return tuple(out)


def check_shifts(shifts: tuple[Shift, ...], window_s: float) -> None:
    """add-member's bounds, each with its own message (the manifest's parser says the same of a hand-written one)."""
    for s in shifts:
        if not (math.isfinite(s.offset_s) and abs(s.offset_s) < window_s):
            raise BirdInferError(
                f"--shifts offset {s.offset_s:g} s is not within the window (|offset| < --window-s {window_s:g}): a "
                "window moved that far sees none of its row"
            )
        if not (math.isfinite(s.weight) and s.weight > 0):
            raise BirdInferError(f"--shifts weight {s.weight:g} (offset {s.offset_s:g} s) must be a number > 0")
    if 0 not in [s.offset_s for s in shifts]:
        raise BirdInferError(
            f"--shifts {[s.offset_s for s in shifts]} hold no offset 0: list the window on its row too (e.g. "
            f"{SHIFTS_EXAMPLE}); it is the one the deadline guard keeps when it must drop shifts"
        )


def new_bundle_from_args(args: argparse.Namespace) -> int:
    labels = read_labels_file(args.labels) if args.labels else tuple(read_sample_columns(args.sample_submission))
    path = new_bundle(args.bundle, labels, args.row_s, args.description)
    print(
        f"started {path} with {len(labels)} labels and no member yet: add members with `bird-infer add-member "
        f"{args.bundle} --onnx ...`; it runs once every label has a member"
    )
    return 0


def add_member_from_args(args: argparse.Namespace) -> int:
    shifts = parse_shifts(args.shifts)
    check_shifts(shifts, args.window_s)
    manifest = open_bundle(args.bundle)
    labels = read_labels_file(args.labels) if args.labels else None
    label_map = read_label_map(args.label_map, labels or manifest.labels, manifest.labels) if args.label_map else None
    frontend = None
    if args.input == "logmel":
        if args.frontend_config is None:
            raise BirdInferError("--input logmel needs --frontend-config: a JSON with every log-mel field")
        raw = json.loads(args.frontend_config.read_text(encoding="utf-8"))
        frontend = parse_frontend(raw.get("frontend", raw), args.sample_rate)
    source = None
    if args.source:
        member, _, output = args.source.partition(":")
        source = SourceSpec(member, output)
    request = MemberRequest(
        onnx=args.onnx,
        name=args.name,
        output=args.output,
        holds=args.holds,
        activation=args.activation,
        sample_rate=args.sample_rate,
        window_s=args.window_s,
        frontend=frontend,
        input_name=args.input_name,
        labels=labels,
        label_map=label_map,
        framewise=args.framewise,
        time_axis=args.time_axis,
        frame_reduce=args.frame_reduce,
        embeddings=tuple(args.embedding or ()),
        source=source,
        weight=args.weight,
        resampler=args.resampler,
        shifts=shifts,
        label_reduce=args.label_reduce,
    )
    r = add_member(args.bundle, request, args.check_audio)
    print(
        f"added member {r.member.name!r} to {r.manifest.root / 'manifest.json'}: {r.mapped} labels mapped, "
        f"{r.ignored} of the model's ignored (no bundle counterpart); output range on the check audio "
        f"[{r.output_range[0]:.3g}, {r.output_range[1]:.3g}], spread {r.spread:.3g}; {len(r.manifest.members)} members"
    )
    if r.ignored:
        print(f"the model's labels with no bundle counterpart (ignored): {list(r.ignored_labels[:20])}")
    if r.uncovered:
        print(
            f"{len(r.uncovered)} bundle label(s) no member predicts yet (e.g. {list(r.uncovered[:10])}): add members "
            "that have them before the bundle is run or packed"
        )
    return 0


def _pairs(items: list[str] | None, option: str) -> dict[str, str]:
    """``NAME=VALUE`` items, each name once."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise BirdInferError(f"{option} takes NAME=VALUE items, got {item!r}")
        if name in out:
            raise BirdInferError(f"{option} names {name!r} twice")
        out[name] = value
    return out


def add_stage_from_args(args: argparse.Namespace) -> int:
    inputs = _pairs(args.input, "--input")
    tables = _pairs(args.context_ids, "--context-ids")
    context = None
    if args.context_pattern or tables:
        if not (args.context_pattern and tables):
            raise BirdInferError("--context-pattern and --context-ids go together (the pattern's groups, their ids)")
        ids = {group: read_id_table(path) for group, path in tables.items()}
        context = StageContext(args.context_pattern, ids, args.context_unknown)
    request = StageRequest(
        onnx=args.onnx,
        name=args.name,
        output=args.output,
        inputs=inputs,
        labels=read_labels_file(args.labels) if args.labels else None,
        role=args.role,
        weight=args.weight,
        activation=args.activation,
        context=context,
    )
    manifest = add_stage(args.bundle, request)
    print(
        f"added {args.role} stage {args.name!r} to {manifest.root / 'manifest.json'}: inputs "
        f"{', '.join(f'{k}={v}' for k, v in inputs.items())}; checked on 1 and 2000 generated rows; "
        f"{len(manifest.stages)} stage(s)"
    )
    return 0
