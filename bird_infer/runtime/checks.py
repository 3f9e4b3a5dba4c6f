"""Every fold of every member loaded and run once on a check input before any audio is read: a fold whose file
loads but computes another width would otherwise kill every worker, file after file.
"""

from __future__ import annotations

import logging

import numpy as np

from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.errors import BirdInferError, ModelCheckError
from bird_infer.contract.schema import Manifest, Member
from bird_infer.contract.text import one_line
from bird_infer.runtime.ensemble import MemberModel
from bird_infer.runtime.sessions import make_session

log = logging.getLogger(__name__)


def check_input(member: Member) -> np.ndarray:
    """A fixed check input for ``member``, batch of one: the log-mel of quiet noise with a tone, or the
    waveform window itself for a member that takes the waveform."""
    n, sr = member.audio.chunk_samples, member.audio.sample_rate
    t = np.arange(n) / sr
    wave = 0.1 * np.sin(2 * np.pi * min(2000.0, sr / 4) * t) + 0.01 * np.random.default_rng(0).standard_normal(n)
    wave = wave[None].astype(np.float32)
    return wave if member.frontend is None else LogMelFrontend(member.frontend, sr)(wave)


def check_models(manifest: Manifest) -> None:
    """Load every fold of every member with ONNX Runtime and run it once; raise ModelCheckError naming the
    fold when it cannot be loaded or run, or computes shapes other than the manifest declares. A fold whose
    output is not finite is only warned about: at run time such outputs are left out chunk by chunk."""
    for member in manifest.members:
        x = check_input(member)
        n_labels = len(member.labels)
        prefix = f"member {member.name}, " if len(manifest.members) > 1 else ""
        if member.birdnet is not None:
            _check_birdnet(manifest, member, x, prefix)
            continue
        for fold in member.folds:
            path = manifest.fold_path(fold)
            try:
                session = make_session(str(path))
            except Exception as e:  # ORT raises its own classes (Fail, InvalidGraph, ...): any is a dead fold
                raise ModelCheckError(
                    f"{prefix}fold {fold.name}: ONNX Runtime cannot load {path.name} ({type(e).__name__}: "
                    f"{one_line(e, 300)}); re-export it with `bird-infer export`"
                ) from e
            wanted = [fold.clipwise] + ([fold.segmentwise] if fold.segmentwise else [])
            try:
                outs = session.run([w.name for w in wanted], {fold.input.name: x})
            except Exception as e:
                raise ModelCheckError(
                    f"{prefix}fold {fold.name}: {path.name} fails on a check input of shape {list(x.shape)} "
                    f"({type(e).__name__}: {one_line(e, 300)})"
                ) from e
            for spec, y in zip(wanted, outs, strict=True):
                segments = y.shape[-1] if y.ndim == 3 else -1
                expect = (1, n_labels) if spec is fold.clipwise else (1, n_labels, segments)
                if tuple(y.shape) != expect:
                    raise ModelCheckError(
                        f"{prefix}fold {fold.name}: output {spec.name!r} has shape {list(y.shape)} on one chunk, "
                        f"but the manifest declares {list(spec.shape)} with {n_labels} labels; the file does not "
                        "compute what the manifest says. Re-export the fold, or give the labels it was trained with"
                    )
                if not np.isfinite(y).all():
                    log.warning(
                        "%sfold %s: output %r is NaN or inf on the check input; such outputs are left out",
                        prefix,
                        fold.name,
                        spec.name,
                    )
            del session


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
