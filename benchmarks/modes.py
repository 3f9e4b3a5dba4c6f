"""Per-mode model timings and the fp32 floor, for ``benchmarks.latency``.

- The floor: a fold's GFLOP per chunk (counted by torch) over **ONNX Runtime's own** single-thread MatMul
  GFLOP/s (a 2048^3 MatMul in a child process with one thread). numpy's BLAS may run an older kernel than ONNX
  Runtime's MLAS on the same CPU (an AVX2 kernel on an AVX-512 machine), which puts the floor too high.
- The modes: every fold of the bundle, one process, one thread, batch 1, in ONNX Runtime fp32 and in each
  OpenVINO mode this machine offers (fp32, bf16 where the CPU has it, int8 where the folds have int8 models),
  static input shapes; ms per chunk per fold, its ratio to the floor, and the ensemble's max |p - p_fp32| on
  the same chunks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

MATMUL_CHILD = """
import json, sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
n = 2048
b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32), "B")
graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm",
    [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
    [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])], [b])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
sess.run(None, {"A": a})
best = min((lambda t: (sess.run(None, {"A": a}), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5))
print(json.dumps({"gflops": 2 * n**3 / best / 1e9}))
"""


def ort_matmul_gflops(env: dict[str, str]) -> float:
    """ONNX Runtime's single-thread fp32 MatMul peak (2048^3, best of 5), in a child process."""
    out = subprocess.run(
        [sys.executable, "-c", MATMUL_CHILD], capture_output=True, text=True, check=True, env=env, cwd=ROOT
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["gflops"])


def available_modes(manifest) -> list[tuple[str, str]]:
    """ONNX Runtime fp32 and the OpenVINO modes this machine and bundle offer."""
    import importlib.util

    from bird_infer.runtime.machine import cpu_info

    modes = [("onnxruntime", "fp32")]
    if importlib.util.find_spec("openvino") is None:
        return modes
    modes.append(("openvino", "fp32"))
    if cpu_info().has_bf16:
        modes.append(("openvino", "bf16"))
    if all(f.int8 is not None for m in manifest.members for f in m.folds):
        modes.append(("openvino", "int8"))
    return modes


def mode_table(
    manifest, feats: np.ndarray, floor_ms: float | None, repeats: int = 3, member: str | None = None
) -> list[dict]:
    """Every mode on ``feats`` (n, n_mels, frames), the inputs of ``member`` (default: the only one): ms per chunk
    per fold (median of ``repeats`` passes after a warm-up), its ratio to the floor, and that member's max
    |p - p_fp32|."""
    from bird_infer.contract.errors import PrecisionRefusedError
    from bird_infer.runtime.ensemble import FoldEnsemble
    from bird_infer.runtime.sessions import SessionSettings

    rows = []
    reference = None
    for backend, precision in available_modes(manifest):
        settings = SessionSettings(backend=backend, precision=precision)
        try:
            ens = FoldEnsemble(manifest, settings, member)
        except PrecisionRefusedError as e:
            rows.append({"mode": f"{backend} {precision}", "skipped": str(e)})
            continue
        probs = ens.predict(feats)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ens.fold_outputs(feats)
            times.append(time.perf_counter() - t0)
        per_fold = float(np.median(times)) * 1000 / len(feats) / ens.n_folds
        if reference is None:
            reference = probs
        row = {
            "mode": f"{backend} {precision}" + (" (static shape)" if backend == "openvino" else ""),
            "ms_per_chunk_per_fold": round(per_fold, 2),
            "max_abs_dp_vs_ort_fp32": round(float(np.abs(probs - reference).max()), 5),
        }
        if floor_ms:
            row["ratio_to_fp32_floor"] = round(per_fold / floor_ms, 2)
        rows.append(row)
    return rows


def fold_ms_in_mode(path: str, feats: np.ndarray, backend: str, precision: str, repeats: int = 3) -> float:
    """ms per chunk of one fold file (one thread, batch 1) in a mode; OpenVINO with the static shape."""
    from bird_infer.runtime.sessions import make_openvino_runner, make_session

    if backend == "openvino":
        run = make_openvino_runner(path, 1, precision, ["clipwise"], "logmel", (1, *feats.shape[1:]))
    else:
        sess = make_session(path, 1)

        def run(name, x):
            return sess.run(None, {name: x})

    run("logmel", feats[:1])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in feats:
            run("logmel", x[None])
        times.append((time.perf_counter() - t0) / len(feats))
    return float(np.median(times)) * 1000
