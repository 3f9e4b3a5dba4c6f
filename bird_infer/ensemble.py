"""The fold ensemble: ONNX Runtime sessions for every fold, fed the same log-mel features.

Sessions use ONNX Runtime's full graph optimisation (``ORT_ENABLE_ALL``) at load time, on the CPU
that runs them: the shipped files are saved at the portable ``EXTENDED`` level (see
``bird_infer.export``), and the CPU-specific layout transforms happen here, per machine.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bird_infer.audio import WindowSpec
from bird_infer.errors import BirdInferError
from bird_infer.frontend import LogMelFrontend
from bird_infer.schema import FrontendConfig, Manifest, Member, fold_file

# The padded-cmAP metric appends rows of exactly 1.0: a prediction of 1.0 would tie with them.
# 1 - 1e-6 survives a CSV written with 6 significant digits ("0.999999"), unlike float32's nextafter.
PROB_MAX = 1.0 - 1e-6


class NonFiniteOutputError(BirdInferError):
    """A fold produced NaN or inf."""


BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
"""What a session runs in. ``auto`` (the CLI's and the kernel's) is resolved to one of these before the pool
starts: see :func:`bird_infer.precision.choose_precision`."""


@dataclass(frozen=True)
class SessionSettings:
    """How each fold's session runs."""

    backend: str = "onnxruntime"
    """``onnxruntime`` (default, always available) or ``openvino`` (the ``[openvino]`` extra)."""
    precision: str = "fp32"
    """``fp32``; ``bf16`` (OpenVINO only, on CPUs with AVX512-BF16/AMX) or ``int8`` (OpenVINO only, the folds'
    quantized models from ``bird-infer quantize``), each only behind the accuracy guard."""
    intra_op_threads: int = 1
    """Threads one session uses inside an operator; 1 when each core runs its own worker process."""
    batch_size: int = 1
    """Chunks per model call. 1 is fastest with one thread per session, and uses least memory (measured
    on the b0 folds, one process: 25 ms and 250 MiB per session at 1, 29 ms and 440 MiB at 4)."""
    static_shape: bool = True
    """OpenVINO: compile for the fixed input shape (batch_size, *the member's input shape) from the manifest, the
    last partial batch zero-padded (faster than a dynamic batch axis); False keeps the batch axis dynamic."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"precision must be one of {(*PRECISIONS, 'auto')}, got {self.precision!r}")
        for name in ("intra_op_threads", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def make_session(path: str, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A CPU session with full graph optimisation and a fixed thread count. With more than one intra-op thread,
    spinning is switched off: idle threads that spin steal the core of the process beside them (1 process x 2
    threads with spinning measured 3.8x slower than 2 processes x 1 thread on a 2-core machine)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    if intra_op_threads > 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: ORT warns about unused initializers after fusion
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def make_openvino_runner(
    path: str,
    threads: int,
    precision: str,
    output: str,
    input_name: str | None = None,
    static_shape: Sequence[int] | None = None,
):
    """A callable (input name, x) -> output for one fold, compiled by OpenVINO for this CPU.

    ``path``: the fold's ONNX file (fp32, bf16) or its int8 IR. ``static_shape``: compile for this input shape
    (batch first); a smaller batch is zero-padded and its outputs cut. CPU pinning is switched off: with it,
    OpenVINO pins each single-thread worker process to the same core, and two workers then share one core.
    """
    try:
        import openvino as ov
    except ImportError as e:
        raise BirdInferError("the openvino backend needs the openvino extra: pip install 'bird_infer[openvino]'") from e
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bf16" and "BF16" not in capabilities:
        raise PrecisionRefusedError("bf16 refused: this CPU has no bf16 support (AVX512-BF16 or AMX)")
    if precision == "int8" and "INT8" not in capabilities:
        raise PrecisionRefusedError("int8 refused: OpenVINO reports no int8 support on this CPU")
    model = core.read_model(path)
    if static_shape is not None and input_name is not None:
        model.reshape({input_name: list(static_shape)})
    compiled = core.compile_model(
        model,
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
    batch = static_shape[0] if static_shape is not None else None

    def run(name_in: str, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if batch is not None and n < batch:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), dtype=x.dtype)])
        return compiled({name_in: x})[port][:n]

    return run


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


def _check_settings(st: SessionSettings, member: Member) -> None:
    if st.precision == "auto":
        raise ValueError("precision 'auto' is resolved before sessions are built (bird_infer.precision)")
    if st.backend == "onnxruntime" and st.precision != "fp32":
        raise PrecisionRefusedError(
            f"ONNX Runtime runs the folds in fp32 only; {st.precision} needs --backend openvino"
        )
    if st.precision == "int8" and member.birdnet is None and any(f.int8 is None for f in member.folds):
        raise PrecisionRefusedError(
            f"int8 refused: member {member.name} has folds without an int8 model; make them with `bird-infer quantize`"
        )


class MemberModel:
    """One member's folds, ready to score its inputs (log-mel batches, or waveform windows)."""

    def __init__(self, member: Member, root: Path, settings: SessionSettings | None = None) -> None:
        self.member = member
        self.settings = st = settings or SessionSettings()
        _check_settings(st, member)
        if member.birdnet is not None:  # BirdNET's TFLite model, whatever the backend (bird_infer.birdnet)
            from bird_infer.birdnet import BirdnetRunner

            fold = member.folds[0]
            path = fold_file(root, fold)
            self._outputs, self._inputs = [fold.clipwise.name], [fold.input.name]
            self.sessions = [BirdnetRunner(path, member.birdnet, member.audio.clip_s, st.intra_op_threads)]
            return
        segment = member.ensemble.output == "segment_max"
        self._outputs = [(f.segmentwise if segment else f.clipwise).name for f in member.folds]  # type: ignore[union-attr]
        self._inputs = [f.input.name for f in member.folds]
        paths = [str(fold_file(root, f)) for f in member.folds]
        if st.backend == "openvino":
            if st.precision == "int8":
                paths = [str(root / f.int8.file) for f in member.folds]  # type: ignore[union-attr]
            shape = (st.batch_size, *member.input_shape) if st.static_shape else None
            self.sessions = [
                make_openvino_runner(p, st.intra_op_threads, st.precision, o, i, shape)
                for p, o, i in zip(paths, self._outputs, self._inputs, strict=True)
            ]
        else:
            self.sessions = [
                _ort_runner(make_session(p, st.intra_op_threads), o) for p, o in zip(paths, self._outputs, strict=True)
            ]

    @property
    def n_folds(self) -> int:
        return len(self.sessions)

    def fold_outputs(self, x: np.ndarray, folds: Sequence[int] | None = None) -> np.ndarray:
        """x (n, ...) float32 -> probabilities (len(folds), n, n_member_labels) of the folds listed (default all)."""
        folds = range(self.n_folds) if folds is None else folds
        n = x.shape[0]
        bs = self.settings.batch_size
        out = np.empty((len(folds), n, len(self.member.labels)), dtype=np.float32)
        for k, f in enumerate(folds):
            run, name_in = self.sessions[f], self._inputs[f]
            for start in range(0, n, bs):
                y = run(name_in, x[start : start + bs])
                if y.ndim == 3:  # segmentwise (batch, labels, segments): the max over time
                    y = y.max(axis=2)
                out[k, start : start + bs] = y
        return out

    def predict_with_mask(self, x: np.ndarray, folds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Combined, clipped probabilities (n, n_member_labels) float32 over ``folds``, and the mask
        (len(folds), n) of fold outputs left out for holding NaN or inf. A chunk with no finite fold is NaN."""
        outs = self.fold_outputs(x, folds)
        bad = ~np.isfinite(outs).all(axis=2)
        rule = self.member.ensemble.combine
        if not bad.any():
            return clip_probabilities(combine_folds(outs, rule)).astype(np.float32, copy=False), bad
        masked = np.where(bad[:, :, None], np.nan, outs)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" for chunks with no fold
            combined = combine_folds(masked, rule, skip_nan=True)
        return np.where(np.isnan(combined), np.nan, clip_probabilities(combined)).astype(np.float32), bad


class BundleModel:
    """Every member of a bundle: each distinct front-end once per block, each member's folds, then the
    weighted mean over the members that have each label."""

    def __init__(self, manifest: Manifest, settings: SessionSettings | None = None) -> None:
        self.manifest = manifest
        self.settings = settings or SessionSettings()
        self.members = [MemberModel(m, manifest.root, self.settings) for m in manifest.members]
        self.specs = [WindowSpec.of(m.audio) for m in manifest.members]
        position = {label: j for j, label in enumerate(manifest.labels)}
        self.label_index = [np.array([position[x] for x in m.labels]) for m in manifest.members]
        self.frontends: dict[tuple[WindowSpec, FrontendConfig], LogMelFrontend] = {}
        for spec, m in zip(self.specs, manifest.members, strict=True):
            if m.frontend is not None and (spec, m.frontend) not in self.frontends:
                self.frontends[(spec, m.frontend)] = LogMelFrontend(m.frontend, m.audio.sample_rate)
        self.last_frontend_s = 0.0
        """Seconds the last :meth:`features` call spent in front-ends (for the stage timings)."""

    @property
    def n_folds(self) -> int:
        return self.manifest.n_folds

    def kept(self, n_folds: int | None) -> list[list[int]]:
        """For each member, the fold indices kept when the bundle keeps its first ``n_folds`` (default all)."""
        return self.manifest.kept_folds(n_folds)

    def features(self, windows: dict[WindowSpec, np.ndarray]) -> dict[tuple, np.ndarray]:
        """Each distinct input once: the log-mel of each (window spec, front-end), and the raw windows.
        Sets ``last_frontend_s``."""
        t0 = time.perf_counter()
        feats: dict[tuple, np.ndarray] = {(spec, None): w for spec, w in windows.items()}
        for (spec, fe), frontend in self.frontends.items():
            feats[(spec, fe)] = frontend(windows[spec])
        self.last_frontend_s = time.perf_counter() - t0
        return feats

    def predict_windows(
        self, windows: dict[WindowSpec, np.ndarray], n_folds: int | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One block of rows -> (probabilities (k, n_labels) float32, NaN where no member voted;
        per member, the (folds kept, k) mask of fold outputs left out for NaN or inf)."""
        feats = self.features(windows)
        keep = self.kept(n_folds)
        n = next(iter(windows.values())).shape[0]
        acc = np.zeros((n, len(self.manifest.labels)), dtype=np.float64)
        wsum = np.zeros_like(acc)
        masks = []
        for model, spec, idx, folds in zip(self.members, self.specs, self.label_index, keep, strict=True):
            p, bad = model.predict_with_mask(feats[(spec, model.member.frontend)], folds)
            masks.append(bad)
            voted = ~np.isnan(p).any(axis=1)
            w = model.member.weight
            acc[np.ix_(voted, idx)] += w * p[voted].astype(np.float64)
            wsum[np.ix_(voted, idx)] += w
        with np.errstate(invalid="ignore", divide="ignore"):
            probs = np.where(wsum > 0, acc / wsum, np.nan).astype(np.float32)
        return probs, masks

    def fold_names(self) -> list[list[str]]:
        """Each member's fold names as reports show them (``member/fold`` when there are several members)."""
        return self.manifest.fold_names()


class FoldEnsemble(MemberModel):
    """The folds of a one-member bundle, fed log-mel batches: ``predict(feats, n_folds)`` as before members."""

    def __init__(self, manifest: Manifest, settings: SessionSettings | None = None) -> None:
        self.manifest = manifest
        super().__init__(manifest.single, manifest.root, settings)

    def predict(self, feats: np.ndarray, n_folds: int | None = None) -> np.ndarray:
        """feats (n_chunks, n_mels, frames) -> combined, clipped probabilities (n_chunks, n_labels) float32, the
        first ``n_folds`` folds (default all). Folds with non-finite outputs are left out chunk by chunk;
        raises NonFiniteOutputError when a chunk has no finite fold at all."""
        folds = list(range(self.n_folds if n_folds is None else n_folds))
        probs, bad = self.predict_with_mask(feats, folds)
        if bad.all(axis=0).any():
            names = [self.member.folds[k].name for k in folds if bad[k].any()]
            raise NonFiniteOutputError(f"fold(s) {names} produced NaN or inf, and no fold was finite")
        return probs


PRECISION_BOUND = 0.02
"""The accuracy guard's default: the largest accepted |p - p_fp32| on the check chunks."""
