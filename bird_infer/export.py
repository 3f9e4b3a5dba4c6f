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

import dataclasses
import importlib
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

from bird_infer.audio.decode import iter_chunk_blocks
from bird_infer.audio.files import find_audio_files
from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AudioDecodeError, ExportError
from bird_infer.contract.files import sha256_file
from bird_infer.contract.manifest import load_manifest, write_manifest
from bird_infer.contract.parse import check_labels
from bird_infer.contract.schema import (
    AudioConfig,
    EnsembleConfig,
    FoldSpec,
    FrontendConfig,
    Member,
    ModelConfig,
    TensorSpec,
)
from bird_infer.contract.training_config import TrainingConfig
from bird_infer.nn.sed import build_model
from bird_infer.runtime.sessions import make_session

log = logging.getLogger(__name__)

INPUT_NAME = "logmel"
WAVEFORM_NAME = "waveform"
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


def model_factory(spec: str):
    """``package.module:function`` -> the function, which takes the training config and returns an
    ``nn.Module`` (for models that are not bird_infer's SED class)."""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ExportError(f"--model-factory {spec!r}: cannot import it ({e}); give package.module:function") from e
    if not callable(fn):
        raise ExportError(f"--model-factory {spec!r} is not callable")
    return fn


def load_fold_checkpoint(path: str | Path, config: TrainingConfig, factory=None) -> nn.Module:
    """Build the config's model (or ``factory(config)``, any ``nn.Module``) and load a checkpoint into it.

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
    if factory is not None:
        model = factory(config)
    else:
        model = build_model(config.model, n_mels=config.frontend.n_mels, n_labels=len(config.labels))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(
            f"checkpoint {path} does not fit model {config.model} with {len(config.labels)} labels: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}; check the "
            "config's model.backbone, frontend.n_mels and labels against the training run"
        )
    return model.eval()


def check_chunks_from_audio(paths: Sequence[str | Path], audio: AudioConfig, max_chunks: int = 16) -> np.ndarray:
    """Up to ``max_chunks`` waveform chunks (n, chunk_samples) at ``audio``'s rate and window, taken round-robin
    from the files under ``paths``."""
    files = [f for p in paths for f in find_audio_files(p)]
    per_file: list[np.ndarray] = []
    for f in files:
        if len(per_file) >= max_chunks:  # round-robin takes depth 0 of the first max_chunks files only
            break
        try:  # the first block holds every chunk the round-robin can take from this file
            per_file.append(next(iter_chunk_blocks(f, audio, block_chunks=max_chunks)))
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


def export_raw(model: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: list[str]) -> None:
    """``torch.onnx.export`` of ``model`` (TorchScript exporter, opset :data:`OPSET`) with a dynamic batch axis on
    the input and every output; not yet optimised or checked (:func:`export_member` does both)."""
    axes = {name: {0: "batch"} for name in [input_name, *output_names]}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=output_names,
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
    )


def torch_outputs(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """(clip-wise, segment-wise or None) of any model: one tensor, or a tuple whose first is clip-wise."""
    out = model(x)
    if isinstance(out, torch.Tensor):
        return out.numpy(), None
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
        return out[0].numpy(), (out[1].numpy() if len(out) > 1 else None)
    raise ExportError(
        f"the model returned {type(out).__name__}; return clip-wise probabilities, or a tuple "
        "(clip-wise (batch, labels), segment-wise (batch, labels, segments))"
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
def export_member(
    models: Sequence[nn.Module],
    labels: Sequence[str],
    audio: AudioConfig,
    frontend: FrontendConfig | None,
    out_dir: str | Path,
    check_waves: np.ndarray,
    fold_names: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str = "default",
    weight: float = 1.0,
    ensemble: EnsembleConfig | None = None,
    model_config: ModelConfig | None = None,
    description: str = "",
    add_to: bool = False,
    row_s: float = 5.0,
) -> ExportResult:
    """Export ``models`` (one per fold, any ``nn.Module``) as one bundle member into ``out_dir``.

    A model takes the log-mel ``frontend`` computes (batch, n_mels, frames), or, with ``frontend=None``, the
    waveform window (batch, samples) and computes its features inside the graph. It returns clip-wise
    probabilities (batch, n_labels), or a tuple (clip-wise, segment-wise (batch, n_labels, segments)).
    ``check_waves`` (n, window samples at ``audio.sample_rate``) float32: real audio that every saved model
    must reproduce to within ``tolerance`` on its clip-wise output. With ``add_to`` the member joins the
    bundle already in ``out_dir`` (its labels are added to the bundle's); otherwise a new bundle is written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = check_labels(list(labels), "member labels")
    existing = load_manifest(out_dir) if add_to else None
    if existing is not None and any(m.name == name for m in existing.members):
        raise ExportError(f"{out_dir} already has a member named {name!r}; choose another --member-name")
    default_names = [f"fold{i}" if existing is None else f"{name}_fold{i}" for i in range(len(models))]
    names = list(fold_names or default_names)
    if len(names) != len(models):
        raise ExportError(f"{len(models)} models but {len(names)} fold names")
    taken = {f.file for m in existing.members for f in m.folds} if existing else set()
    clash = [n for n in names if f"{n}.onnx" in taken]
    if clash:
        raise ExportError(f"fold files {clash} already belong to the bundle in {out_dir}; give other --fold-names")
    if check_waves.shape[1] != audio.chunk_samples:
        raise ExportError(
            f"check audio has windows of {check_waves.shape[1]} samples; the member needs "
            f"{audio.chunk_samples} ({audio.clip_s:g} s at {audio.sample_rate} Hz)"
        )
    x = check_waves if frontend is None else LogMelFrontend(frontend, audio.sample_rate)(check_waves)
    x_t = torch.from_numpy(x)
    input_name = WAVEFORM_NAME if frontend is None else INPUT_NAME
    folds: list[FoldSpec] = []
    reports: list[FoldReport] = []
    for fold_name, model in zip(names, models, strict=True):
        model = model.eval()
        clip_torch, seg_torch = torch_outputs(model, x_t)
        if clip_torch.ndim != 2 or clip_torch.shape[1] != len(labels):
            raise ExportError(
                f"{fold_name}: clip-wise output has shape {list(clip_torch.shape)}; expected "
                f"(batch, {len(labels)}) for the {len(labels)} labels"
            )
        outputs = [CLIPWISE_NAME] + ([SEGMENTWISE_NAME] if seg_torch is not None else [])
        out_path = out_dir / f"{fold_name}.onnx"
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            export_raw(model, x_t[:2], raw, input_name, outputs)
            optimize_portable(raw, out_path)
        sess = make_session(str(out_path))
        clip_onnx = np.concatenate(
            [sess.run([CLIPWISE_NAME], {input_name: x[i : i + 4]})[0] for i in range(0, len(x), 4)]
        )
        diff = float(np.abs(clip_onnx - clip_torch).max())
        spread = float((clip_torch.max(axis=0) - clip_torch.min(axis=0)).max())
        log.info(
            "%s: max |clipwise onnx - torch| = %.3g over %d chunks; output spread %.3g", fold_name, diff, len(x), spread
        )
        if not diff <= tolerance:  # also refuses NaN
            out_path.unlink(missing_ok=True)
            raise ExportError(
                f"{fold_name}: ONNX clip-wise output differs from torch by {diff:.3g} > tolerance {tolerance:g}; "
                "not written"
            )
        if spread < 100 * tolerance:
            log.warning(
                "%s: outputs vary by only %.3g across the check audio: the parity check proves little. "
                "Are the weights trained (or BatchNorm statistics estimated)?",
                fold_name,
                spread,
            )
        n_labels = len(labels)
        in_shape = ("batch", *x.shape[1:])
        folds.append(
            FoldSpec(
                name=fold_name,
                file=out_path.name,
                sha256=sha256_file(out_path),
                input=TensorSpec(input_name, in_shape),
                clipwise=TensorSpec(CLIPWISE_NAME, ("batch", n_labels)),
                segmentwise=None
                if seg_torch is None
                else TensorSpec(SEGMENTWISE_NAME, ("batch", n_labels, seg_torch.shape[2])),
            )
        )
        reports.append(FoldReport(fold_name, diff, spread))
    member = Member(
        name=name,
        labels=labels,
        audio=audio,
        frontend=frontend,
        folds=tuple(folds),
        ensemble=ensemble or EnsembleConfig(),
        model=model_config or ModelConfig(),
        weight=weight,
    )
    if existing is not None:
        bundle_labels = existing.labels + tuple(x for x in labels if x not in existing.labels)
        manifest = dataclasses.replace(existing, labels=bundle_labels, members=(*existing.members, member))
    else:
        manifest = Manifest(
            labels=labels, members=(member,), row_s=row_s, description=description, root=out_dir.resolve()
        )
    write_manifest(manifest, out_dir)
    return ExportResult(manifest=load_manifest(out_dir), reports=tuple(reports))


def export_folds(
    models: Sequence[nn.Module],
    config: TrainingConfig,
    out_dir: str | Path,
    check_waves: np.ndarray,
    fold_names: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str = "default",
    weight: float = 1.0,
    add_to: bool = False,
) -> ExportResult:
    """Export SED folds trained with ``config`` (its labels, audio, log-mel front-end, model and ensemble rule)
    as one member: a new bundle in ``out_dir``, or (``add_to``) a new member of the bundle there. See
    :func:`export_member`."""
    return export_member(
        models,
        config.labels,
        config.audio,
        config.frontend,
        out_dir,
        check_waves,
        fold_names,
        tolerance,
        name=name,
        weight=weight,
        ensemble=config.ensemble,
        model_config=config.model,
        description=config.description,
        add_to=add_to,
        row_s=5.0 if add_to else min(5.0, config.audio.clip_s),
    )
