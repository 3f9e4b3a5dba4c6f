"""Past fp32: ONNX Runtime static int8 (QDQ) and OpenVINO fp32/bf16, against the shipped fp32 folds.

    python -m benchmarks.precision [--audio DIR ...] [--bound 0.02]

For each variant it reports the model time per chunk per fold (one process, one thread, batch 1,
median) and the largest |p - p_fp32| of the *ensemble's* probabilities on real audio chunks. A variant
whose error exceeds ``--bound`` is marked refused. This is only meaningful on trained weights: run it on
the trained demo folds (or your own), never on random ones.

int8 is calibrated on the first half of the chunks (ORT's MinMax calibrator, per-channel weights) and
judged on the second half. OpenVINO is optional (``pip install openvino``); bf16 needs CPU support
(AVX512-BF16 or AMX), which Kaggle's CPUs may lack: the report says what this machine has.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED_AUDIO = ROOT.parent / "shared" / "data" / "audio"


def median_ms(run, x: np.ndarray, repeats: int = 20) -> float:
    for _ in range(3):
        run(x[:1])
    times = []
    for i in range(repeats):
        xi = x[i % len(x) : i % len(x) + 1]
        t0 = time.perf_counter()
        run(xi)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def ort_runner(path: Path):
    from bird_infer.runtime.sessions import make_session

    sess = make_session(str(path), 1)
    name_in = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(["clipwise"], {name_in: x})[0]

    return run


def ov_runner(path: Path, precision: str):
    """One fold in OpenVINO, compiled as inference compiles it (dynamic batch)."""
    from bird_infer.runtime.sessions import make_openvino_runner

    runner = make_openvino_runner(str(path), 1, precision, ["clipwise"])

    def run(x: np.ndarray) -> np.ndarray:
        return runner("logmel", x)[0]

    return run


def quantize_int8(src: Path, dst: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"logmel": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    pre = dst.with_suffix(".pre.onnx").resolve()
    # Symbolic shape inference writes temporary files (sym_shape_infer_temp.onnx, <uuid>.data) into the
    # working directory: run it inside a temporary one so that nothing lands in the checkout.
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            quant_pre_process(str(Path(src).resolve()), str(pre))
        finally:
            os.chdir(cwd)
    # The convolutions carry ~all the FLOPs; the attention head stays fp32.
    quantize_static(
        str(pre),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv"],
    )


def raw_exports(checkpoints: list[Path], config_path: Path, folder: Path) -> list[Path]:
    """Un-optimised ONNX straight from the fold checkpoints: ORT's quantizer needs the plain graph (it fails
    on the shipped, already fused files with contrib ops)."""
    import torch

    from bird_infer.contract.training_config import load_training_config
    from bird_infer.export import CLIPWISE_NAME, INPUT_NAME, export_raw, load_fold_checkpoint

    config = load_training_config(config_path)
    frames = config.frontend.n_frames(config.audio.chunk_samples)
    out = []
    for k, ckpt in enumerate(checkpoints):
        model = load_fold_checkpoint(ckpt, config)
        path = folder / f"fold{k}_raw.onnx"
        with torch.no_grad():
            export_raw(model, torch.zeros(1, config.frontend.n_mels, frames), path, INPUT_NAME, [CLIPWISE_NAME])
        out.append(path)
    return out


def ensemble(runs, x: np.ndarray) -> np.ndarray:
    return np.mean([np.concatenate([r(x[i : i + 1]) for i in range(len(x))]) for r in runs], axis=0)


def main(argv: list[str] | None = None) -> int:
    from bird_infer.audio.logmel import LogMelFrontend
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.export import check_chunks_from_audio
    from bird_infer.runtime.precision import PRECISION_BOUND

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--member", help="the member to measure (default: the first with a log-mel front-end)")
    p.add_argument("--audio", type=Path, nargs="*", default=[SHARED_AUDIO])
    p.add_argument("--chunks", type=int, default=48, help="chunks: half to calibrate int8, half to judge")
    p.add_argument(
        "--bound", type=float, default=PRECISION_BOUND, help="largest accepted |p - p_fp32| (default %(default)s)"
    )
    p.add_argument("--checkpoints", type=Path, nargs="*", help="the folds' torch checkpoints (for int8)")
    p.add_argument("--config", type=Path, help="their train_config.json (for int8)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    m = load_manifest(args.models)
    member = m.member(args.member) if args.member else next(x for x in m.members if x.frontend is not None)
    waves = check_chunks_from_audio(args.audio, member.audio, max_chunks=args.chunks)
    feats = LogMelFrontend(member.frontend, member.audio.sample_rate)(waves)
    calib, judge = feats[: len(feats) // 2], feats[len(feats) // 2 :]
    paths = [m.fold_path(f) for f in member.folds]
    fp32 = [ort_runner(pth) for pth in paths]
    ref = ensemble(fp32, judge)
    result = {
        "models": str(args.models),
        "member": member.name,
        "description": m.description[:80],
        "judge_chunks": len(judge),
        "bound": args.bound,
        "variants": {},
    }
    variants = {"ort_fp32": fp32}
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoints and args.config:
            q = []
            for k, raw in enumerate(raw_exports(args.checkpoints, args.config, Path(tmp))):
                dst = Path(tmp) / f"fold{k}_int8.onnx"
                quantize_int8(raw, dst, calib)
                q.append(ort_runner(dst))
            variants["ort_int8_qdq"] = q
        else:
            result["int8"] = "skipped: needs --checkpoints and --config (quantised from the plain export)"
        try:
            import openvino as ov

            caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            result["openvino"] = {"version": ov.__version__, "cpu_capabilities": list(caps)}
            variants["openvino_fp32"] = [ov_runner(pth, "fp32") for pth in paths]
            if "BF16" in caps:
                variants["openvino_bf16"] = [ov_runner(pth, "bf16") for pth in paths]
        except ImportError:
            result["openvino"] = "not installed"
        for name, runs in variants.items():
            ms = float(np.median([median_ms(r, judge) for r in runs]))
            delta = float(np.abs(ensemble(runs, judge) - ref).max())
            result["variants"][name] = {
                "ms_per_chunk_per_fold": round(ms, 2),
                "max_abs_delta_p": round(delta, 5),
                "accepted": delta <= args.bound,
            }
            print(
                f"{name}: {ms:.1f} ms/chunk/fold, max |dp| {delta:.4f} "
                f"({'accepted' if delta <= args.bound else 'REFUSED'})",
                file=sys.stderr,
            )
    fp = result["variants"]["ort_fp32"]["ms_per_chunk_per_fold"]
    for v in result["variants"].values():
        v["speedup_vs_ort_fp32"] = round(fp / v["ms_per_chunk_per_fold"], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
