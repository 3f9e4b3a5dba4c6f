"""Export fold models from PyTorch to graph-optimised ONNX, checked against torch, with a manifest.

Needs the ``[torch]`` extra. For each fold:

1. ``torch.onnx.export`` with a dynamic batch axis (input ``logmel``, outputs ``clipwise`` and
   ``segmentwise``);
2. ONNX Runtime's graph optimiser at ``ORT_ENABLE_EXTENDED``, saved with ``optimized_model_filepath``.
   ``ORT_ENABLE_ALL`` would add layout transforms (``com.microsoft.nchwc`` nodes whose block size is
   picked from the exporting CPU's vector width, 16 floats with AVX-512 and 8 with AVX2): a file saved
   that way is tied to the exporting machine. EXTENDED keeps hardware-neutral fusions only; the saved
   graph is scanned and refused if it holds any NCHWc node. Sessions apply ENABLE_ALL when they load,
   on the CPU that runs them;
3. the saved file, run the way inference runs it, is compared with the torch model on real audio; a
   fold whose clip-wise outputs differ by more than ``tolerance`` (1e-4) is deleted and refused;
4. ``manifest.json`` is written with every fold's sha256.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bird_infer.audio import find_audio_files, iter_chunk_blocks
from bird_infer.ensemble import make_session
from bird_infer.errors import AudioDecodeError, ExportError
from bird_infer.frontend import LogMelFrontend
from bird_infer.manifest import (
    FoldSpec,
    Manifest,
    TensorSpec,
    TrainingConfig,
    sha256_file,
    write_manifest,
)
from bird_infer.nn.sed import build_model

log = logging.getLogger(__name__)

INPUT_NAME = "logmel"
CLIPWISE_NAME = "clipwise"
SEGMENTWISE_NAME = "segmentwise"
OPSET = 17
DEFAULT_TOLERANCE = 1e-4
# Node domains and op types that only exist after CPU-specific layout optimisation (ORT_ENABLE_ALL).
NON_PORTABLE_DOMAINS = ("com.microsoft.nchwc",)
NON_PORTABLE_OPS = ("ReorderInput", "ReorderOutput")


@dataclass(frozen=True)
class FoldReport:
    """What the export measured for one fold."""

    name: str
    max_abs_diff: float
    """Largest |clipwise_onnx - clipwise_torch| over the check chunks."""
    output_spread: float
    """Largest range (max - min over check chunks) of any clip-wise output: how much the model responds."""


@dataclass(frozen=True)
class ExportResult:
    manifest: Manifest
    reports: tuple[FoldReport, ...]


def load_fold_checkpoint(path: str | Path, config: TrainingConfig) -> nn.Module:
    """Build the config's model and load a checkpoint into it.

    Accepts a bare state_dict or a dict holding one under ``state_dict``, ``model_state_dict`` or
    ``model``; a ``module.`` prefix (DataParallel/DDP) is removed.
    """
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise ExportError(f"cannot read checkpoint {path}: {e}") from e
    state = obj
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            state = obj[key]
            break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = build_model(config.model, n_mels=config.frontend.n_mels, n_labels=len(config.labels))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(
            f"checkpoint {path} does not fit model {config.model} with {len(config.labels)} labels: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; check the "
            "config's model.backbone, frontend.n_mels and labels against the training run"
        )
    return model.eval()


def check_chunks_from_audio(paths: Sequence[str | Path], config: TrainingConfig, max_chunks: int = 16) -> np.ndarray:
    """Up to ``max_chunks`` waveform chunks (n, chunk_samples) taken round-robin from the files under ``paths``."""
    files = [f for p in paths for f in find_audio_files(p)]
    per_file: list[np.ndarray] = []
    for f in files:
        if len(per_file) >= max_chunks:  # round-robin takes depth 0 of the first max_chunks files only
            break
        try:  # the first block holds every chunk the round-robin can take from this file
            per_file.append(next(iter_chunk_blocks(f, config.audio, block_chunks=max_chunks)))
        except AudioDecodeError as e:
            log.warning("skipping check audio %s: %s", f, e)
    picked: list[np.ndarray] = []
    depth = 0
    while len(picked) < max_chunks and any(depth < len(c) for c in per_file):
        picked.extend(c[depth] for c in per_file if depth < len(c))
        depth += 1
    if not picked:
        raise ExportError(f"no readable audio under {list(paths)} to check the export against")
    return np.stack(picked[:max_chunks])


def synthetic_check_chunks(config: TrainingConfig, n: int = 8, seed: int = 0) -> np.ndarray:
    """Tones, chirps and noise at several levels: a fallback when no real audio is given."""
    rng = np.random.default_rng(seed)
    sr, length = config.audio.sample_rate, config.audio.chunk_samples
    t = np.arange(length) / sr
    out = []
    for _ in range(n):
        f0 = 300.0 + 9000.0 * rng.random()
        sweep = np.sin(2 * np.pi * (f0 * t + 400.0 * rng.random() * t**2))
        out.append(10 ** rng.uniform(-3, 0) * sweep + 10 ** rng.uniform(-4, -1) * rng.standard_normal(length))
    return np.asarray(out, dtype=np.float32)


def _export_raw(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    axes = {INPUT_NAME: {0: "batch"}, CLIPWISE_NAME: {0: "batch"}, SEGMENTWISE_NAME: {0: "batch"}}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[CLIPWISE_NAME, SEGMENTWISE_NAME],
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )


def optimize_portable(raw_path: Path, out_path: Path) -> None:
    """Run ORT's optimiser at EXTENDED and save; refuse if the result holds CPU-specific layouts."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out_path)
    opts.log_severity_level = 3
    ort.InferenceSession(str(raw_path), sess_options=opts, providers=["CPUExecutionProvider"])
    bad = non_portable_nodes(out_path)
    if bad:
        out_path.unlink(missing_ok=True)
        raise ExportError(f"optimised model holds CPU-specific nodes {bad[:5]}; it would not run everywhere")


def non_portable_nodes(path: str | Path) -> list[str]:
    """Names of nodes that tie a model to the CPU it was optimised on (empty list when portable)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [
        f"{n.domain}:{n.op_type}"
        for n in graph.node
        if n.domain in NON_PORTABLE_DOMAINS or n.op_type in NON_PORTABLE_OPS
    ]


@torch.no_grad()
def export_folds(
    models: Sequence[nn.Module],
    config: TrainingConfig,
    out_dir: str | Path,
    check_waves: np.ndarray,
    fold_names: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export ``models`` (one per fold) into ``out_dir`` and write its manifest.

    ``check_waves`` (n, chunk_samples) float32: real audio chunks that every saved model must
    reproduce to within ``tolerance`` on its clip-wise output. The log-mel fed to both sides comes
    from the numpy front-end, exactly as inference computes it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(fold_names or [f"fold{i}" for i in range(len(models))])
    if len(names) != len(models):
        raise ExportError(f"{len(models)} models but {len(names)} fold names")
    feats = LogMelFrontend(config.frontend, config.audio.sample_rate)(check_waves)
    feats_t = torch.from_numpy(feats)
    folds: list[FoldSpec] = []
    reports: list[FoldReport] = []
    for name, model in zip(names, models, strict=True):
        model = model.eval()
        clip_torch, seg_torch = (t.numpy() for t in model(feats_t))
        out_path = out_dir / f"{name}.onnx"
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            _export_raw(model, feats_t[:2], raw)
            optimize_portable(raw, out_path)
        sess = make_session(str(out_path))
        clip_onnx = np.concatenate(
            [sess.run([CLIPWISE_NAME], {INPUT_NAME: feats[i : i + 4]})[0] for i in range(0, len(feats), 4)]
        )
        diff = float(np.abs(clip_onnx - clip_torch).max())
        spread = float((clip_torch.max(axis=0) - clip_torch.min(axis=0)).max())
        log.info(
            "%s: max |clipwise onnx - torch| = %.3g over %d chunks; output spread %.3g", name, diff, len(feats), spread
        )
        if not diff <= tolerance:  # also refuses NaN
            out_path.unlink(missing_ok=True)
            raise ExportError(
                f"{name}: ONNX clip-wise output differs from torch by {diff:.3g} > tolerance {tolerance:g}; not written"
            )
        if spread < 100 * tolerance:
            log.warning(
                "%s: outputs vary by only %.3g across the check audio: the parity check proves little. "
                "Are the weights trained (or BatchNorm statistics estimated)?",
                name,
                spread,
            )
        n_labels = len(config.labels)
        folds.append(
            FoldSpec(
                name=name,
                file=out_path.name,
                sha256=sha256_file(out_path),
                input=TensorSpec(INPUT_NAME, ("batch", config.frontend.n_mels, feats.shape[2])),
                clipwise=TensorSpec(CLIPWISE_NAME, ("batch", n_labels)),
                segmentwise=TensorSpec(SEGMENTWISE_NAME, ("batch", n_labels, seg_torch.shape[2])),
            )
        )
        reports.append(FoldReport(name, diff, spread))
    manifest = Manifest(
        labels=tuple(config.labels),
        audio=config.audio,
        frontend=config.frontend,
        folds=tuple(folds),
        ensemble=config.ensemble,
        model=config.model,
        description=config.description,
        root=out_dir.resolve(),
    )
    write_manifest(manifest, out_dir)
    return ExportResult(manifest=manifest, reports=tuple(reports))
