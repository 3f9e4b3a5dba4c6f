"""The bundle's models, ready to score: each member's folds (:mod:`bird_infer.runtime.sessions`, or BirdNET's
runner), combined per member, then the members' weighted mean per label."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import WindowSpec
from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.errors import NonFiniteOutputError, PrecisionRefusedError
from bird_infer.contract.schema import PROB_MAX, FrontendConfig, Manifest, Member, fold_file
from bird_infer.runtime.birdnet import BirdnetRunner
from bird_infer.runtime.blend import blend, member_weights
from bird_infer.runtime.sessions import SessionSettings, make_openvino_runner, ort_runner


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
        raise ValueError("precision 'auto' is resolved before sessions are built (bird_infer.runtime.precision)")
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
        if member.birdnet is not None:  # BirdNET's TFLite model, whatever the backend (bird_infer.runtime.birdnet)
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
            self.sessions = [ort_runner(p, o, st.intra_op_threads) for p, o in zip(paths, self._outputs, strict=True)]

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
        self.weights = member_weights(manifest)
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
        self, windows: dict[WindowSpec, np.ndarray], n_folds: int | None = None, keep_members: bool = False
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
        """One block of rows -> (probabilities (k, n_labels) float32 blended by the manifest's rule, NaN where no
        member voted; per member, the (folds kept, k) mask of fold outputs left out for NaN or inf; with
        ``keep_members``, the members' stack (n_members, k, n_labels) before the blend, else None). A ``rank``
        blend needs every row of the run: here its rows are the weighted mean, for progress and detect alone."""
        feats = self.features(windows)
        keep = self.kept(n_folds)
        n = next(iter(windows.values())).shape[0]
        stack = np.full((len(self.members), n, len(self.manifest.labels)), np.nan, dtype=np.float32)
        masks = []
        for i, (model, spec, idx, folds) in enumerate(
            zip(self.members, self.specs, self.label_index, keep, strict=True)
        ):
            p, bad = model.predict_with_mask(feats[(spec, model.member.frontend)], folds)
            masks.append(bad)
            voted = ~np.isnan(p).any(axis=1)
            stack[i][np.ix_(voted, idx)] = p[voted]
        blend_rule = self.manifest.blend
        rule = "mean" if blend_rule.rule == "rank" else blend_rule.rule
        probs = blend(stack, self.weights, rule, blend_rule.power)
        return probs, masks, (stack if keep_members else None)

    def fold_names(self) -> list[list[str]]:
        """Each member's fold names as reports show them (``member/fold`` when there are several members)."""
        return self.manifest.fold_names()


class FoldEnsemble(MemberModel):
    """The folds of one member (the only one of a one-member bundle, or the one named), fed its model inputs:
    ``predict(feats, n_folds)``."""

    def __init__(self, manifest: Manifest, settings: SessionSettings | None = None, member: str | None = None) -> None:
        self.manifest = manifest
        super().__init__(manifest.member(member), manifest.root, settings)

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
