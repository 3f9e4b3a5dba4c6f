"""Which precision the folds run in: the accuracy guard, and ``--precision auto``.

Before the pool starts, a block of real audio (the first :data:`GUARD_CHUNKS` rows of the first readable file)
is run by the whole bundle in ONNX Runtime fp32, the reference, and in each mode asked for:

- an explicit mode (``--backend openvino --precision bf16|int8``, or OpenVINO fp32) runs only if its
  probabilities stay within the bound of fp32's on that block, else the run goes on in ONNX Runtime fp32;
- ``auto`` (the Kaggle kernel's default) tries every mode this machine offers: OpenVINO fp32 where OpenVINO is
  installed, OpenVINO bf16 where the CPU has bf16 too (AVX512-BF16 or AMX), OpenVINO int8 where every fold has an
  int8 model (``bird-infer quantize``), always ONNX Runtime fp32; it times each on the same block and keeps the
  fastest that the guard accepts. With one candidate (no OpenVINO) nothing is tried: no audio is read for it.

Every decision is logged with its measurements (max |p - p_fp32| over every member's outputs, before the blend;
ms per chunk for the whole bundle).
``BIRD_INFER_CPU_FLAGS`` (see :mod:`bird_infer.runtime.machine`) stands in for the CPU's flags, to rehearse a machine
without bf16.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import RowReader, WindowSpec
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AudioDecodeError, PrecisionRefusedError
from bird_infer.contract.extras import have
from bird_infer.runtime.ensemble import BundleModel, window_specs
from bird_infer.runtime.machine import CpuInfo, cpu_info
from bird_infer.runtime.sessions import SessionSettings

log = logging.getLogger(__name__)

PRECISION_BOUND = 0.02
"""The accuracy guard's default: the largest accepted |p - p_fp32| on the check chunks."""

GUARD_CHUNKS = 8
"""Rows of real audio the guard compares on (and ``auto`` times on)."""
REFERENCE = ("onnxruntime", "fp32")


@dataclass(frozen=True)
class Trial:
    """One mode run on the guard's block."""

    backend: str
    precision: str
    max_delta: float | None
    """max |p - p_fp32| over the block; None when the mode could not run."""
    ms_per_chunk: float | None
    """The whole bundle's time per chunk (every fold, one thread), after one warm-up pass."""
    refused: str | None = None
    """Why the guard refused it (too far from fp32, or not supported here)."""

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"

    def describe(self) -> str:
        if self.max_delta is None:
            return f"{self.name}: {self.refused}"
        text = f"{self.name}: max |p - p_fp32| = {self.max_delta:.4f}, {self.ms_per_chunk:.1f} ms per chunk"
        return text + (f" (refused: {self.refused})" if self.refused else "")


def auto_candidates(manifest: Manifest, cpu: CpuInfo, have_openvino: bool) -> list[tuple[str, str]]:
    """The modes ``auto`` tries on this machine, the fp32 reference first."""
    modes = [REFERENCE]
    if have_openvino:
        modes.append(("openvino", "fp32"))
    if have_openvino and cpu.has_bf16:
        modes.append(("openvino", "bf16"))
    onnx_folds = [f for m in manifest.members if m.birdnet is None for f in m.folds]
    if have_openvino and onnx_folds and all(f.int8 is not None for f in onnx_folds):
        modes.append(("openvino", "int8"))
    return modes


def guard_block(manifest: Manifest, paths: list[Path]) -> tuple[dict[WindowSpec, np.ndarray], Path] | None:
    """The first :data:`GUARD_CHUNKS` rows of the first readable file, or None."""
    specs = list(dict.fromkeys(s for specs in window_specs(manifest) for s in specs))
    for p in paths:
        try:
            _first, windows = next(iter(RowReader(p, specs, manifest.row_s, GUARD_CHUNKS)))
        except (AudioDecodeError, StopIteration):
            continue
        return windows, p
    return None


def run_trial(
    manifest: Manifest,
    settings: SessionSettings,
    windows: dict[WindowSpec, np.ndarray],
    reference: np.ndarray | None,
    bound: float,
) -> tuple[Trial, np.ndarray | None]:
    """Build the bundle in ``settings``, warm it up on one row, then run the block once: timed, and compared with
    ``reference`` (one timed pass, not two: the trial is start-up the run pays before its first chunk)."""
    try:
        bundle = BundleModel(manifest, settings)
    except PrecisionRefusedError as e:
        return Trial(settings.backend, settings.precision, None, None, str(e)), None
    bundle.predict_windows({spec: w[:1] for spec, w in windows.items()})
    t0 = time.perf_counter()
    probs = bundle.predict_windows(windows).flat()
    n = next(iter(windows.values())).shape[0]
    ms = (time.perf_counter() - t0) * 1000 / n
    delta = 0.0 if reference is None else float(np.nanmax(np.abs(probs - reference)))
    refused = f"exceeds the bound {bound:g}" if delta > bound else None
    return Trial(settings.backend, settings.precision, delta, ms, refused), probs


def choose_precision(
    manifest: Manifest,
    st: SessionSettings,
    paths: list[Path],
    bound: float = PRECISION_BOUND,
    cpu: CpuInfo | None = None,
) -> tuple[SessionSettings, str, list[Trial]]:
    """The accuracy guard (and ``auto``) before the pool starts: the session settings to run with (``st`` in the
    mode chosen), a line saying what runs and why, and every trial measured. Whatever is refused, the run goes on
    in ONNX Runtime fp32. ``bound``: the largest accepted |p - p_fp32|."""
    asked = (st.backend, st.precision)
    if asked == REFERENCE:
        return st, "onnxruntime fp32", []

    def with_mode(backend: str, precision: str) -> SessionSettings:
        return dataclasses.replace(st, backend=backend, precision=precision)

    fallback = with_mode(*REFERENCE)
    if st.precision == "auto":
        modes = auto_candidates(manifest, cpu or cpu_info(), have("openvino"))
        if len(modes) == 1:  # nothing to choose between: no trial, no audio read, no session built
            log.info("precision: onnxruntime fp32 (auto: the only mode this machine offers)")
            return fallback, "onnxruntime fp32 (auto: the only mode here)", []
    else:
        modes = [REFERENCE, asked]
    block = guard_block(manifest, paths)
    if block is None:
        return fallback, f"onnxruntime fp32 ({st.backend} {st.precision} not checked: no readable audio)", []
    windows, path = block
    n = next(iter(windows.values())).shape[0]
    trials: list[Trial] = []
    reference = None
    for backend, precision in modes:
        trial, probs = run_trial(manifest, with_mode(backend, precision), windows, reference, bound)
        if reference is None:
            reference = probs
        trials.append(trial)
    measured = "; ".join(t.describe() for t in trials)
    accepted = [t for t in trials if t.max_delta is not None and t.refused is None]
    if st.precision == "auto":
        best = min(accepted, key=lambda t: t.ms_per_chunk or 0.0)
        note = f"{best.name} (auto: the fastest accepted on {n} chunks of {path.name}: {measured})"
    else:
        best = trials[-1]
        if best not in accepted:
            note = f"onnxruntime fp32 ({best.name} refused on {n} chunks of {path.name}: {best.describe()})"
            log.warning("accuracy guard: %s", note)
            return fallback, note, trials
        note = f"{best.name} (accuracy guard on {n} chunks of {path.name}: {measured})"
    log.info("precision: %s", note)
    return with_mode(best.backend, best.precision), note, trials
