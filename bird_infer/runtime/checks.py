"""Every fold of every member loaded and run once on a check input before any audio is read: a fold whose file
loads but computes another width would otherwise kill every worker, file after file.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import BirdInferError, ModelCheckError
from bird_infer.contract.schema import FoldSpec, Member, TensorSpec
from bird_infer.contract.text import one_line
from bird_infer.runtime.ensemble import MemberModel
from bird_infer.runtime.sessions import make_session

log = logging.getLogger(__name__)


def check_input(member: Member) -> np.ndarray:
    """A fixed check input for ``member``, batch of one: the log-mel of quiet noise with a tone, the waveform
    window itself for a member that takes the waveform, or a normal vector for a head."""
    if member.source is not None:
        return np.random.default_rng(0).standard_normal((1, member.head_dim or 1)).astype(np.float32)
    n, sr = member.audio.chunk_samples, member.audio.sample_rate
    t = np.arange(n) / sr
    wave = 0.1 * np.sin(2 * np.pi * min(2000.0, sr / 4) * t) + 0.01 * np.random.default_rng(0).standard_normal(n)
    wave = wave[None].astype(np.float32)
    if member.frontend is None:
        return wave
    x = LogMelFrontend(member.frontend, sr)(wave)
    channels = member.frontend.channels
    return np.ascontiguousarray(np.repeat(x[:, None], channels, axis=1)) if channels else x


def _expected(member: Member, spec: TensorSpec, fold: FoldSpec) -> tuple[int | None, ...]:
    """The shape ``spec`` must have on one chunk (None: any size): label columns where the member states them."""
    width = len(member.labels) if member.output_index is None else None
    if spec in fold.embeddings:
        return (1, spec.shape[-1] if isinstance(spec.shape[-1], int) else None)
    if spec is fold.segmentwise:
        axis = 3 - member.ensemble.time_axis
        return (1, width, None) if axis == 1 else (1, None, width)
    return (1, width)


def check_models(manifest: Manifest) -> float:
    """Load every fold of every member with ONNX Runtime and run it once; raise ModelCheckError naming the
    fold when it cannot be loaded or run, or computes shapes other than the manifest declares (the outputs the
    member uses, and the embeddings heads read). A fold whose output is not finite is only warned about: at run
    time such outputs are left out chunk by chunk.

    Returns the seconds one row took in those runs (every fold of every member, times its shifts; one thread, a
    first run: an upper estimate), from which the run learns how slow a working model is (the stall bound)."""
    row_s = 0.0
    for member in manifest.members:
        x = check_input(member)
        prefix = f"member {member.name}, " if len(manifest.members) > 1 else ""
        if member.birdnet is not None:
            _check_birdnet(manifest, member, x, prefix)
            continue
        uses_frames = member.ensemble.output in ("segment_max", "framewise")
        for fold in member.folds:
            path = manifest.fold_path(fold)
            try:
                session = make_session(str(path))
            except Exception as e:  # ORT raises its own classes (Fail, InvalidGraph, ...): any is a dead fold
                raise ModelCheckError(
                    f"{prefix}fold {fold.name}: ONNX Runtime cannot load {path.name} ({type(e).__name__}: "
                    f"{one_line(e, 300)}); re-export it with `bird-infer export`"
                ) from e
            main = fold.segmentwise if uses_frames and fold.segmentwise is not None else fold.clipwise
            wanted = [main, *fold.embeddings]
            try:
                t0 = time.perf_counter()
                outs = session.run([w.name for w in wanted], {fold.input.name: x})
                row_s += (time.perf_counter() - t0) * (1 if member.source is not None else len(member.shifts))
            except Exception as e:
                raise ModelCheckError(
                    f"{prefix}fold {fold.name}: {path.name} fails on a check input of shape {list(x.shape)} "
                    f"({type(e).__name__}: {one_line(e, 300)})"
                ) from e
            for spec, y in zip(wanted, outs, strict=True):
                expect = _expected(member, spec, fold)
                if y.ndim != len(expect) or any(e is not None and e != d for e, d in zip(expect, y.shape, strict=True)):
                    raise ModelCheckError(
                        f"{prefix}fold {fold.name}: output {spec.name!r} has shape {list(y.shape)} on one chunk, "
                        f"but the manifest declares {list(spec.shape)} with {len(member.labels)} labels; the file "
                        "does not compute what the manifest says. Re-export the fold, or give the labels it was "
                        "trained with"
                    )
                if not np.isfinite(y).all():
                    log.warning(
                        "%sfold %s: output %r is NaN or inf on the check input; such outputs are left out",
                        prefix,
                        fold.name,
                        spec.name,
                    )
            del session
    return row_s


def _check_birdnet(manifest: Manifest, member: Member, x: np.ndarray, prefix: str) -> None:
    """A birdnet member: its runtime loads BirdNET's model and scores the check input with the declared width."""
    fold = member.folds[0]
    try:
        y = MemberModel(member, manifest.root).fold_outputs(x)
    except BirdInferError:
        raise
    except Exception as e:  # the TFLite runtime's own errors: any means the member cannot run
        raise ModelCheckError(
            f"{prefix}fold {fold.name}: BirdNET's model does not run ({type(e).__name__}: {one_line(e, 300)})"
        ) from e
    if y.shape != (1, 1, len(member.labels)):
        raise ModelCheckError(
            f"{prefix}fold {fold.name}: BirdNET gave shape {list(y.shape[1:])}, expected [1, {len(member.labels)}]"
        )
