"""The bundle's models, ready to score: each member's folds (:mod:`bird_infer.runtime.sessions`, or BirdNET's
runner), combined per member, then the members' weighted mean per label."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import WindowSpec
from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import NonFiniteOutputError, PrecisionRefusedError
from bird_infer.contract.schema import PROB_MAX, FrontendConfig, Member, fold_file
from bird_infer.runtime.birdnet import BirdnetRunner, birdnet_classifier
from bird_infer.runtime.sessions import SessionSettings, checked_bytes, make_openvino_runner, ort_runner


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


def activate(y: np.ndarray, activation: str, axis: int) -> np.ndarray:
    """Probabilities from a model's output: as it is (``none``), ``sigmoid``, or ``softmax`` over ``axis``."""
    if activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-y.astype(np.float64)))).astype(np.float32)
    if activation == "softmax":
        z = y.astype(np.float64) - y.max(axis=axis, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    return y


def _label_columns(member: Member) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
    """The model columns of each member label: one column each (an index array), or, when some label stands for
    several model classes, one array of columns per label (reduced by ``label_reduce``)."""
    index = member.output_index
    if index is None:
        return None, None
    if all(isinstance(e, int) for e in index):
        return np.asarray(index), None
    return None, [np.atleast_1d(np.asarray(e)) for e in index]


def reduce_labels(y: np.ndarray, groups: list[np.ndarray], rule: str) -> np.ndarray:
    """(..., model columns) probabilities -> (..., labels): each label's columns reduced by ``max``, ``mean``, or
    ``any`` (1 - prod(1 - p), in float64); ``first``: the first column."""
    out = np.empty((*y.shape[:-1], len(groups)), dtype=np.float32)
    for j, cols in enumerate(groups):
        p = y[..., cols]
        if rule == "max":
            out[..., j] = p.max(axis=-1)
        elif rule == "mean":
            out[..., j] = p.astype(np.float64).mean(axis=-1)
        elif rule == "any":
            out[..., j] = 1.0 - np.prod(1.0 - p.astype(np.float64), axis=-1)
        else:
            out[..., j] = p[..., 0]
    return out


class MemberModel:
    """One member's folds, ready to score its inputs (log-mel batches, waveform windows, or a head's embeddings):
    each fold's output turned into the member's labels (activation, label map, frames), then combined."""

    def __init__(
        self, member: Member, root: Path, settings: SessionSettings | None = None, extras: Sequence[str] = ()
    ) -> None:
        self.member = member
        self.settings = st = settings or SessionSettings()
        self.extras = tuple(extras)
        """Outputs of the first fold that heads read (a backbone's embedding)."""
        _check_settings(st, member)
        ens = member.ensemble
        self.framewise = ens.output == "framewise"
        self.mixed = ens.output == "clip_segment_mix"
        self.index, self.groups = _label_columns(member)
        if member.birdnet is not None:  # BirdNET's TFLite model, whatever the backend (bird_infer.runtime.birdnet)
            fold = member.folds[0]
            model = checked_bytes(fold_file(root, fold), fold.sha256, f"fold {fold.name}")
            classifier = birdnet_classifier(model, member.birdnet, st.intra_op_threads)
            runner = BirdnetRunner(classifier, member.birdnet, member.audio.clip_s)
            self._inputs = [fold.input.name]
            self.sessions = [lambda name_in, x: [runner(name_in, x)]]
            return
        uses_frames = ens.output in ("segment_max", "framewise")
        if self.mixed:  # both outputs: clip-wise first, then the segment-wise one
            outputs = [[f.clipwise.name, f.segmentwise.name] for f in member.folds]  # type: ignore[union-attr]
        else:
            outputs = [[(f.segmentwise if uses_frames else f.clipwise).name] for f in member.folds]  # type: ignore[union-attr]
        outputs[0] += list(self.extras)
        self._inputs = [f.input.name for f in member.folds]
        paths = [str(fold_file(root, f)) for f in member.folds]
        if st.backend == "openvino":
            for f, p in zip(member.folds, paths, strict=True):  # checked here, in the process that loads them
                if st.precision == "int8":
                    q = f.int8
                    checked_bytes(root / q.file, q.sha256, f"fold {f.name} (int8)")  # type: ignore[union-attr]
                    checked_bytes(root / q.weights, q.weights_sha256, f"fold {f.name} (int8)")  # type: ignore[union-attr]
                else:
                    checked_bytes(p, f.sha256, f"fold {f.name}")
            if st.precision == "int8":
                paths = [str(root / f.int8.file) for f in member.folds]  # type: ignore[union-attr]
            shape = (st.batch_size, *member.input_shape) if st.static_shape else None
            self.sessions = [
                make_openvino_runner(p, st.intra_op_threads, st.precision, o, i, shape)
                for p, o, i in zip(paths, outputs, self._inputs, strict=True)
            ]
        else:
            models = [checked_bytes(p, f.sha256, f"fold {f.name}") for p, f in zip(paths, member.folds, strict=True)]
            self.sessions = [ort_runner(m, o, st.intra_op_threads) for m, o in zip(models, outputs, strict=True)]

    @property
    def n_folds(self) -> int:
        return len(self.sessions)

    def _to_labels(self, y: np.ndarray) -> np.ndarray:
        """A fold's output as the member's labels: (b, labels) for a row, or (b, frames, labels) framewise."""
        ens = self.member.ensemble
        if self.member.birdnet is not None:
            return y
        if y.ndim == 3:
            label_axis = 1 if ens.time_axis == 2 else 2
            y = activate(y, ens.activation, label_axis)
            if ens.time_axis == 2:
                y = y.transpose(0, 2, 1)  # (b, frames, labels)
            if not self.framewise:  # segment_max: the max over time
                y = y.max(axis=1)
        else:
            y = activate(y, ens.activation, 1)
        if self.groups is not None:
            return reduce_labels(y, self.groups, self.member.label_reduce)
        return y if self.index is None else y[..., self.index]

    def fold_outputs(
        self, x: np.ndarray, folds: Sequence[int] | None = None, extras: dict[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """x (n, ...) float32 -> probabilities (len(folds), n, n_member_labels), or (len(folds), n, frames,
        n_member_labels) framewise, of the folds listed (default all). With ``extras`` (a dict), the first
        fold's extra outputs are put in it, each (n, dim)."""
        folds = range(self.n_folds) if folds is None else folds
        n = x.shape[0]
        channels = self.member.frontend.channels if self.member.frontend is not None else 0
        if channels and x.ndim == 3:  # the log-mel on the channel axis the model was trained with
            x = np.ascontiguousarray(np.repeat(x[:, None], channels, axis=1))
        bs = self.settings.batch_size
        out: np.ndarray | None = None
        got: dict[str, list[np.ndarray]] = {name: [] for name in self.extras}
        for k, f in enumerate(folds):
            run, name_in = self.sessions[f], self._inputs[f]
            for start in range(0, n, bs):
                ys = run(name_in, x[start : start + bs])
                if self.mixed:
                    a = self.member.ensemble.mix
                    clip = self._to_labels(ys[0]).astype(np.float64)
                    seg = self._to_labels(ys[1]).astype(np.float64)  # (b, frames, labels) -> its max over time
                    y = ((1 - a) * clip + a * seg).astype(np.float32)
                    ys = [ys[0], *ys[2:]]
                else:
                    y = self._to_labels(ys[0])
                if out is None:
                    out = np.empty((len(folds), n, *y.shape[1:]), dtype=np.float32)
                out[k, start : start + bs] = y
                if f == 0:
                    for name, value in zip(self.extras, ys[1:], strict=True):
                        got[name].append(value)
        if extras is not None:
            extras.update({name: np.concatenate(v).astype(np.float32) for name, v in got.items() if v})
        if out is None:
            return np.zeros((len(folds), 0, len(self.member.labels)), np.float32)
        return out

    def predict_with_mask(
        self, x: np.ndarray, folds: Sequence[int], extras: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Combined, clipped probabilities (n, n_member_labels), or (n, frames, n_member_labels) framewise,
        float32 over ``folds``, and the mask (len(folds), n) of fold outputs left out for holding NaN or inf. A
        window with no finite fold is NaN."""
        outs = self.fold_outputs(x, folds, extras)
        bad = ~np.isfinite(outs.reshape(outs.shape[0], outs.shape[1], -1)).all(axis=2)
        rule = self.member.ensemble.combine
        if not bad.any():
            return clip_probabilities(combine_folds(outs, rule)).astype(np.float32, copy=False), bad
        mask = bad.reshape(*bad.shape, *([1] * (outs.ndim - 2)))
        masked = np.where(mask, np.nan, outs)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" for chunks with no fold
            combined = combine_folds(masked, rule, skip_nan=True)
        return np.where(np.isnan(combined), np.nan, clip_probabilities(combined)).astype(np.float32), bad


def window_specs(manifest: Manifest) -> list[list[WindowSpec]]:
    """Each member's windows, one per shift (a head has none: it reads its source's outputs)."""
    return [
        [] if m.source is not None else [WindowSpec.of(m.audio, s.offset_s) for s in m.shifts] for m in manifest.members
    ]


@dataclass
class BlockOutputs:
    """One block of rows scored by every member: per member, per kept shift (index into the member's shifts, a
    head's being its source's), the combined probabilities: (k, member labels) for a row-wise member,
    (k, frames, member labels) framewise; NaN for a window on which no fold was finite. And per member, the
    (folds kept, k) mask of fold outputs left out (NaN or inf) on any shift."""

    members: list[dict[int, np.ndarray]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    extras: dict[tuple[int, str], dict[int, np.ndarray]] = field(default_factory=dict)
    """(member index, output) -> per kept shift, the backbone's embedding (k, dim): what file-level stages read."""

    def flat(self) -> np.ndarray:
        """Every probability, one vector (the accuracy guard compares two of them)."""
        parts = [a.reshape(-1) for shifts in self.members for _, a in sorted(shifts.items())]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class BundleModel:
    """Every member of a bundle: each distinct window and front-end once per block, each member's folds per shift,
    heads on their backbone's outputs. Rows are made of the outputs by :mod:`bird_infer.run.rows`."""

    def __init__(self, manifest: Manifest, settings: SessionSettings | None = None) -> None:
        self.manifest = manifest
        self.settings = settings or SessionSettings()
        wanted: dict[str, list[str]] = {m.name: [] for m in manifest.members}
        for m in manifest.members:
            if m.source is not None and m.source.output not in wanted[m.source.member]:
                wanted[m.source.member].append(m.source.output)
        index = {m.name: i for i, m in enumerate(manifest.members)}
        self.stage_extras: list[tuple[int, str]] = []
        """(member index, output) of the embeddings file-level stages read."""
        for stage in manifest.stages:
            for inp in stage.sources("embedding"):
                _, member, output = inp.parts
                if output not in wanted[member]:
                    wanted[member].append(output)
                if (index[member], output) not in self.stage_extras:
                    self.stage_extras.append((index[member], output))
        self.members = [MemberModel(m, manifest.root, self.settings, wanted[m.name]) for m in manifest.members]
        self.member_specs = window_specs(manifest)
        self.specs = list(dict.fromkeys(s for specs in self.member_specs for s in specs))
        """Every distinct window the members read (what the reader decodes)."""
        self.sources = [None if m.source is None else index[m.source.member] for m in manifest.members]
        self.frontends: dict[tuple[WindowSpec, FrontendConfig], LogMelFrontend] = {}
        for specs, m in zip(self.member_specs, manifest.members, strict=True):
            for spec in specs:
                if m.frontend is not None and (spec, m.frontend) not in self.frontends:
                    self.frontends[(spec, m.frontend)] = LogMelFrontend(m.frontend, m.audio.sample_rate)
        self.last_frontend_s = 0.0
        """Seconds the last :meth:`features` call spent in front-ends (for the stage timings)."""

    @property
    def n_units(self) -> int:
        return self.manifest.n_units

    def kept(self, n_units: int | None) -> list[tuple[list[int], list[int]]]:
        """For each member, the fold and shift indices kept with the bundle's first ``n_units`` (default all)."""
        return self.manifest.kept_units(n_units)

    def features(self, windows: dict[WindowSpec, np.ndarray]) -> dict[tuple, np.ndarray]:
        """Each distinct input once: the log-mel of each (window spec, front-end), and the raw windows.
        Sets ``last_frontend_s``."""
        t0 = time.perf_counter()
        feats: dict[tuple, np.ndarray] = {(spec, None): w for spec, w in windows.items()}
        for (spec, fe), frontend in self.frontends.items():
            feats[(spec, fe)] = frontend(windows[spec])
        self.last_frontend_s = time.perf_counter() - t0
        return feats

    def predict_windows(self, windows: dict[WindowSpec, np.ndarray], n_units: int | None = None) -> BlockOutputs:
        """One block of rows (every spec of :attr:`specs`) -> every member's outputs (:class:`BlockOutputs`), the
        first ``n_units`` units kept (default all). A backbone runs once per window; its heads read its outputs."""
        feats = self.features(windows)
        keep = self.kept(n_units)
        out = BlockOutputs([{} for _ in self.members], [np.zeros(0, bool)] * len(self.members))
        extras: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        order = [i for i, s in enumerate(self.sources) if s is None] + [i for i, s in enumerate(self.sources) if s]
        for i in order:
            model, (folds, shifts) = self.members[i], keep[i]
            masks = []
            for k in shifts:
                if self.sources[i] is None:
                    spec = self.member_specs[i][k]
                    extras[(i, k)] = got = {}
                    p, bad = model.predict_with_mask(feats[(spec, model.member.frontend)], folds, got)
                else:
                    x = extras[(self.sources[i], k)][model.member.source.output]  # type: ignore[union-attr]
                    p, bad = model.predict_with_mask(x, folds)
                out.members[i][k] = p
                masks.append(bad)
                for j, name in self.stage_extras:
                    if j == i:
                        out.extras.setdefault((i, name), {})[k] = extras[(i, k)][name]
            out.masks[i] = np.logical_or.reduce(masks) if masks else np.zeros((len(folds), 0), bool)
        return out

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
