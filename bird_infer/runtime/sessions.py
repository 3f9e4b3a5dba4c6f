"""Sessions: how one fold's model file becomes a :class:`Runner`, ``(input name, x) -> output``, in ONNX Runtime
or OpenVINO, and the settings every session of a run shares.

Sessions use ONNX Runtime's full graph optimisation (``ORT_ENABLE_ALL``) at load time, on the CPU that runs
them: the shipped files are saved at the portable ``EXTENDED`` level (see :mod:`bird_infer.export`), and the
CPU-specific layout transforms happen here, per machine. The ``quantize`` tool and the benchmarks build their
sessions here too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bird_infer.contract.errors import ChecksumMismatchError, PrecisionRefusedError
from bird_infer.contract.extras import import_extra

Runner = Callable[[str, np.ndarray], list[np.ndarray]]


def checked_bytes(path: str | Path, sha256: str, what: str) -> bytes:
    """The bytes of a model file, checked against the sha256 the manifest records, read once: every process
    that loads a model loads what it checked (a file replaced since the run began, or another file at the same
    path on a Dask worker, is refused, not run)."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ChecksumMismatchError(
            f"{what}: {Path(path).name} has sha256 {digest} here, but the manifest records {sha256} (replaced since "
            "the run began, or another file at this path on this machine): not loaded"
        )
    return data


"""One fold, ready: ``run(input name, x (batch, ...) float32) -> [each output asked for (batch, ...)]``."""

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


def make_session(path: str | bytes, intra_op_threads: int = 1) -> ort.InferenceSession:
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


def openvino_config(threads: int, precision: str = "fp32") -> dict[str, object]:
    """OpenVINO's compile settings for one single-stream worker. CPU pinning is switched off: with it, OpenVINO
    pins each single-thread worker process to the same core, and two workers then share one core."""
    return {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
        "PERFORMANCE_HINT": "LATENCY",
    }


def make_openvino_runner(
    path: str,
    threads: int,
    precision: str,
    outputs: Sequence[str],
    input_name: str | None = None,
    static_shape: Sequence[int] | None = None,
) -> Runner:
    """A :class:`Runner` for one fold, compiled by OpenVINO for this CPU (:func:`openvino_config`).

    ``path``: the fold's ONNX file (fp32, bf16) or its int8 IR. ``static_shape``: compile for this input shape
    (batch first); a smaller batch is zero-padded and its outputs cut.
    """
    ov = import_extra("openvino", "the openvino backend")
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bf16" and "BF16" not in capabilities:
        raise PrecisionRefusedError("bf16 refused: this CPU has no bf16 support (AVX512-BF16 or AMX)")
    if precision == "int8" and "INT8" not in capabilities:
        raise PrecisionRefusedError("int8 refused: OpenVINO reports no int8 support on this CPU")
    model = core.read_model(path)
    if static_shape is not None and input_name is not None:
        model.reshape({input_name: list(static_shape)})
    compiled = core.compile_model(model, "CPU", openvino_config(threads, precision))
    ports = [compiled.output(o) for o in outputs]
    batch = static_shape[0] if static_shape is not None else None

    def run(name_in: str, x: np.ndarray) -> list[np.ndarray]:
        n = x.shape[0]
        if batch is not None and n < batch:
            x = np.concatenate([x, np.zeros((batch - n, *x.shape[1:]), dtype=x.dtype)])
        result = compiled({name_in: x})
        return [result[port][:n] for port in ports]

    return run


def ort_runner(path: str | bytes, outputs: Sequence[str], threads: int = 1) -> Runner:
    """A :class:`Runner` for one fold's ``outputs`` in an ONNX Runtime session (:func:`make_session`)."""
    session = make_session(path, threads)
    names = list(outputs)
    return lambda name_in, x: session.run(names, {name_in: x})
