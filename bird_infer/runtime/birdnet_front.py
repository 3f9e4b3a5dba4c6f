"""BirdNET V2.4's two spectrogram fronts in numpy, exactly as its TFLite graph computes them up to its ``Cast`` nodes.

The graph (``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``) starts each of its two mel layers (``model/MEL_SPEC1``,
``model/MEL_SPEC2``) the same way, in float32, on every 3-s segment of 144,000 samples:

1. ``sig = ((x - min(x)) / (max(x - min(x)) + 1e-6) - 0.5) * 2`` (``Min``, ``Sub``, ``Max``, ``add``,
   ``truediv``, ``Sub_1``, ``Mul``);
2. frames of ``frame_length`` samples every ``frame_step`` (front 1: 2048 every 278; front 2: 1024 every 280;
   511 frames each), multiplied by the graph's own float32 window (``stft/hann_window/sub_2``: a periodic Hann
   as TensorFlow rounded it, not an analytic one);
3. ``RFFT2D``, which TFLite computes **in double** (fft2d's ``rdft2d`` on double buffers) and stores as
   complex64; the ``Cast`` to float32 keeps the real part.

:func:`spectrograms` does the same: float32 arithmetic in the graph's order, a float64 real FFT of the float32
frames, the real part rounded to float32. The constants are read from the graph itself
(:func:`read_front`), so nothing here is assumed about BirdNET's numbers; they travel beside the ONNX body
(:func:`save_front`, :func:`load_front`). Measured against the TFLite interpreter's own ``Cast`` tensors on real
audio: within 3e-11 (the float64 FFTs differ in their last bits, which float32 rounding hides almost always).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bird_infer.contract.birdnet_onnx import CUT
from bird_infer.contract.extras import import_extra

FRONTS = tuple(cast.rsplit("/", 1)[0] for cast in CUT)
"""The graph's two mel layers; each one's ``Cast`` output (:data:`~bird_infer.contract.birdnet_onnx.CUT`) is an
input of the ONNX body."""
BLOCK_FRAMES = 64
"""Frames transformed at a time: small enough for the float64 buffers to stay in cache (measured: 7.3 ms per
segment for both fronts, against 20 ms for the whole (511, 2048) block at once)."""


@dataclass(frozen=True)
class Front:
    """One mel layer's front: its window (float32, ``frame_length`` long) and frame step."""

    name: str
    window: np.ndarray
    step: int

    @property
    def length(self) -> int:
        return int(self.window.shape[0])

    @property
    def cast(self) -> str:
        """The name of the graph's tensor this front reproduces (and of the ONNX body's input)."""
        return f"{self.name}/Cast"


@dataclass(frozen=True)
class FrontSpec:
    """Both fronts and the normalisation constants they share (float32, as in the graph)."""

    fronts: tuple[Front, ...]
    eps: np.float32
    offset: np.float32
    scale: np.float32


def read_front(model_path: Path | str) -> FrontSpec:
    """The fronts' constants read from BirdNET's TFLite graph (ai-edge-litert; no TensorFlow)."""
    litert = import_extra("ai_edge_litert.interpreter", "BirdNET")
    it = litert.Interpreter(model_path=str(model_path))
    it.allocate_tensors()
    index = {d["name"]: d["index"] for d in it.get_tensor_details()}

    def const(name: str) -> np.ndarray:
        return np.array(it.get_tensor(index[name]))

    fronts = tuple(
        Front(name, const(f"{name}/stft/hann_window/sub_2").astype(np.float32), int(const(f"{name}/stft/frame_step")))
        for name in FRONTS
    )
    for f in fronts:
        if int(const(f"{f.name}/stft/frame_length")) != f.length:
            raise ValueError(f"{f.name}: the window's length is not the frame length")
    first = FRONTS[0]
    return FrontSpec(
        fronts,
        np.float32(const(f"{first}/add/y")),
        np.float32(const(f"{first}/Sub_1/y")),
        np.float32(const(f"{first}/Mul/y")),
    )


def save_front(spec: FrontSpec, path: Path) -> None:
    arrays = {f"window{k}": f.window for k, f in enumerate(spec.fronts)}
    arrays.update({f"step{k}": np.int64(f.step) for k, f in enumerate(spec.fronts)})
    np.savez(path, eps=spec.eps, offset=spec.offset, scale=spec.scale, **arrays)


def load_front(path: Path) -> FrontSpec:
    with np.load(path) as z:
        fronts = tuple(
            Front(name, z[f"window{k}"].astype(np.float32), int(z[f"step{k}"])) for k, name in enumerate(FRONTS)
        )
        return FrontSpec(fronts, np.float32(z["eps"]), np.float32(z["offset"]), np.float32(z["scale"]))


def normalise(segments: np.ndarray, spec: FrontSpec) -> np.ndarray:
    """Step 1, per segment (rows of ``segments``), in float32 in the graph's order."""
    x = np.asarray(segments, dtype=np.float32)
    shifted = x - x.min(axis=-1, keepdims=True)
    scaled = shifted / (shifted.max(axis=-1, keepdims=True) + spec.eps)
    return (scaled - spec.offset) * spec.scale


def real_spectrum(sig: np.ndarray, front: Front) -> np.ndarray:
    """Steps 2 and 3 for one normalised segment: (frames, length // 2 + 1) float32."""
    from scipy.fft import rfft

    frames = sliding_window_view(sig, front.length)[:: front.step]
    n = frames.shape[0]
    out = np.empty((n, front.length // 2 + 1), dtype=np.float32)
    b32 = np.empty((BLOCK_FRAMES, front.length), dtype=np.float32)
    b64 = np.empty((BLOCK_FRAMES, front.length), dtype=np.float64)
    for i in range(0, n, BLOCK_FRAMES):
        k = min(BLOCK_FRAMES, n - i)
        np.multiply(frames[i : i + k], front.window, out=b32[:k])  # the graph's float32 Mul
        b64[:k] = b32[:k]
        out[i : i + k] = rfft(b64[:k], axis=-1, overwrite_x=True, workers=1).real
    return out


def spectrograms(segments: np.ndarray, spec: FrontSpec) -> dict[str, np.ndarray]:
    """(n, samples) float32 segments -> each front's ``Cast`` tensor, (n, frames, bins) float32, by name."""
    sig = normalise(segments, spec)
    return {f.cast: np.stack([real_spectrum(s, f) for s in sig]) for f in spec.fronts}
