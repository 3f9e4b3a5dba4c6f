"""The fold ensemble: ONNX Runtime sessions for every fold, fed the same log-mel features.

Sessions use ONNX Runtime's full graph optimisation (``ORT_ENABLE_ALL``) at load time, on the CPU
that runs them: the shipped files are saved at the portable ``EXTENDED`` level (see
``bird_infer.export``), and the CPU-specific layout transforms happen here, per machine.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from bird_infer.errors import BirdInferError
from bird_infer.manifest import Manifest

# The padded-cmAP metric appends rows of exactly 1.0: a prediction of 1.0 would tie with them.
# 1 - 1e-6 survives a CSV written with 6 significant digits ("0.999999"), unlike float32's nextafter.
PROB_MAX = 1.0 - 1e-6


class NonFiniteOutputError(BirdInferError):
    """A fold produced NaN or inf."""


BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class SessionSettings:
    """How each fold's session runs."""

    backend: str = "onnxruntime"
    """``onnxruntime`` (default, always available) or ``openvino`` (the ``[openvino]`` extra)."""
    precision: str = "fp32"
    """``fp32``, or ``bf16`` (OpenVINO only, on CPUs with AVX512-BF16/AMX; only behind the accuracy guard)."""
    intra_op_threads: int = 1
    """Threads one session uses inside an operator; 1 when each core runs its own worker process."""
    batch_size: int = 1
    """Chunks per model call. 1 is fastest with one thread per session, and uses least memory (measured
    on the b0 folds, one process: 25 ms and 250 MiB per session at 1, 29 ms and 440 MiB at 4)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("intra_op_threads", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def make_session(path: str, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A CPU session with full graph optimisation and a fixed thread count."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: ORT warns about unused initializers after fusion
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def make_openvino_runner(path: str, threads: int, precision: str, output: str):
    """A callable feats -> output for one fold, compiled by OpenVINO for this CPU.

    CPU pinning is switched off: with it, OpenVINO pins each single-thread worker process to the same
    core, and two workers then share one core.
    """
    try:
        import openvino as ov
    except ImportError as e:
        raise BirdInferError("the openvino backend needs the openvino extra: pip install 'bird_infer[openvino]'") from e
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise PrecisionRefusedError("bf16 refused: this CPU has no bf16 support (AVX512-BF16 or AMX)")
    compiled = core.compile_model(
        path,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    port = compiled.output(output)
    return lambda name_in, x: compiled({name_in: x})[port]


class PrecisionRefusedError(BirdInferError):
    """A reduced precision was refused: unsupported here, or too far from fp32 (the accuracy guard)."""


def _ort_runner(session: ort.InferenceSession, output: str):
    return lambda name_in, x: session.run([output], {name_in: x})[0]


def combine_folds(fold_probs: np.ndarray, rule: str, skip_nan: bool = False) -> np.ndarray:
    """(n_folds, n_chunks, n_labels) -> (n_chunks, n_labels) by ``mean`` or ``rms``; ``skip_nan`` leaves
    NaN entries out (a fold left out for a chunk)."""
    mean = np.nanmean if skip_nan else np.mean
    if rule == "mean":
        return mean(fold_probs, axis=0)
    if rule == "rms":
        return np.sqrt(mean(np.square(fold_probs, dtype=np.float64), axis=0)).astype(fold_probs.dtype)
    raise ValueError(f"unknown combine rule {rule!r}")


def clip_probabilities(probs: np.ndarray) -> np.ndarray:
    """Clip into [0, PROB_MAX]: strictly below 1 for the padded-cmAP metric."""
    return np.clip(probs, 0.0, PROB_MAX)


class FoldEnsemble:
    """All folds of a manifest, ready to score log-mel batches."""

    def __init__(self, manifest: Manifest, settings: SessionSettings | None = None) -> None:
        self.manifest = manifest
        self.settings = st = settings or SessionSettings()
        if st.backend not in BACKENDS or st.precision not in PRECISIONS:
            raise ValueError(f"backend must be one of {BACKENDS} and precision one of {PRECISIONS}")
        if st.backend == "onnxruntime" and st.precision != "fp32":
            raise PrecisionRefusedError("ONNX Runtime runs the folds in fp32 only; bf16 needs --backend openvino")
        segment = manifest.ensemble.output == "segment_max"
        self._outputs = [(f.segmentwise if segment else f.clipwise).name for f in manifest.folds]  # type: ignore[union-attr]
        self._inputs = [f.input.name for f in manifest.folds]
        if st.backend == "openvino":
            self.sessions = [
                make_openvino_runner(str(manifest.fold_path(f)), st.intra_op_threads, st.precision, o)
                for f, o in zip(manifest.folds, self._outputs, strict=True)
            ]
        else:
            self.sessions = [
                _ort_runner(make_session(str(manifest.fold_path(f)), st.intra_op_threads), o)
                for f, o in zip(manifest.folds, self._outputs, strict=True)
            ]

    @property
    def n_folds(self) -> int:
        return len(self.sessions)

    def fold_outputs(self, feats: np.ndarray, n_folds: int | None = None) -> np.ndarray:
        """feats (n_chunks, n_mels, frames) float32 -> per-fold probabilities (n_folds, n_chunks, n_labels).

        ``n_folds`` uses only the first that many folds (the deadline guard drops folds from the end).
        Non-finite outputs are returned as they are (see :meth:`predict_with_mask`).
        """
        k_used = self.n_folds if n_folds is None else n_folds
        if not 1 <= k_used <= self.n_folds:
            raise ValueError(f"n_folds must be between 1 and {self.n_folds}, got {n_folds}")
        n = feats.shape[0]
        bs = self.settings.batch_size
        out = np.empty((k_used, n, len(self.manifest.labels)), dtype=np.float32)
        for k, (run, name_in) in enumerate(zip(self.sessions[:k_used], self._inputs, strict=False)):
            for start in range(0, n, bs):
                y = run(name_in, feats[start : start + bs])
                if y.ndim == 3:  # segmentwise (batch, labels, segments): the max over time
                    y = y.max(axis=2)
                out[k, start : start + bs] = y
        return out

    def predict_with_mask(self, feats: np.ndarray, n_folds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Combined, clipped probabilities (n_chunks, n_labels) float32 and the mask (n_folds_used, n_chunks)
        of fold outputs left out because they held NaN or inf.

        Each chunk combines the folds whose outputs are finite for it; a chunk with no finite fold is NaN.
        """
        outs = self.fold_outputs(feats, n_folds)
        bad = ~np.isfinite(outs).all(axis=2)
        if not bad.any():
            combined = combine_folds(outs, self.manifest.ensemble.combine)
            return clip_probabilities(combined).astype(np.float32, copy=False), bad
        masked = np.where(bad[:, :, None], np.nan, outs)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" for chunks with no fold
            combined = combine_folds(masked, self.manifest.ensemble.combine, skip_nan=True)
        return np.where(np.isnan(combined), np.nan, clip_probabilities(combined)).astype(np.float32), bad

    def predict(self, feats: np.ndarray, n_folds: int | None = None) -> np.ndarray:
        """feats (n_chunks, n_mels, frames) -> combined, clipped probabilities (n_chunks, n_labels) float32.

        Folds with non-finite outputs are left out chunk by chunk; raises NonFiniteOutputError when a
        chunk has no finite fold at all.
        """
        probs, bad = self.predict_with_mask(feats, n_folds)
        if bad.all(axis=0).any():
            names = [self.manifest.folds[k].name for k in range(bad.shape[0]) if bad[k].any()]
            raise NonFiniteOutputError(f"fold(s) {names} produced NaN or inf, and no fold was finite")
        return probs


PRECISION_BOUND = 0.02
"""The accuracy guard's default: the largest accepted |p - p_fp32| on the check chunks."""


def check_precision(
    manifest: Manifest, settings: SessionSettings, feats: np.ndarray, bound: float = PRECISION_BOUND
) -> float:
    """The accuracy guard: max |p - p_fp32| of the ensemble with ``settings`` against ONNX Runtime fp32 on
    ``feats`` (n_chunks, n_mels, frames) of real audio. Raises PrecisionRefusedError above ``bound``."""
    reference = FoldEnsemble(manifest, SessionSettings(intra_op_threads=settings.intra_op_threads)).predict(feats)
    delta = float(np.abs(FoldEnsemble(manifest, settings).predict(feats) - reference).max())
    if delta > bound:
        raise PrecisionRefusedError(
            f"{settings.backend} {settings.precision} refused: max |p - p_fp32| = {delta:.4f} on {len(feats)} "
            f"chunks exceeds the bound {bound:g}"
        )
    return delta
