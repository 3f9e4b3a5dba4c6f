"""``bird-infer tune``: the post-processing's parameters chosen on labelled soundscapes, with cross-validation
over files, never on a test set.

The bundle runs once over the soundscapes, each file's member rows kept (before the blend). Then every candidate
of a grid (the blend rule and member weights, smoothing kernels, file-max mixing, file scaling exponents, prior
exponents: the steps asked for) is applied to those rows in numpy and scored by the edition's metric against
``truth.csv`` (the format ``bird-infer score`` reads). Files are split into ``folds`` groups; for each, the best
candidate on the other files is scored on it, beside the manifest's own post-processing: the table says whether
tuning helps on files it never saw. The best candidate on all files is written into a copy of the manifest
(beside the original, so its fold paths hold). Defaults stay off: nothing changes unless that copy is used.

Tuned steps are written in the order smooth, file_max_mix, file_scale, prior; the manifest's steps of kinds not
tuned are kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import BirdInferError
from bird_infer.contract.postprocess import Blend, FileMaxMix, FileScale, PostProcess, Prior, Smooth, Step
from bird_infer.contract.schema import FALLBACK_PROB, MANIFEST_NAME
from bird_infer.contract.text import describe_exception
from bird_infer.outputs.atomic import write_text
from bird_infer.outputs.metrics import macro_roc_auc, padded_cmap
from bird_infer.outputs.names import unique_stems
from bird_infer.outputs.submission import build_submission
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileResult
from bird_infer.run.plan import iter_outcomes, plan_run
from bird_infer.run.postprocess import PostProcessor
from bird_infer.runtime.blend import blend, member_weights, rank_scale

log = logging.getLogger(__name__)

TUNABLE = ("blend", "smooth", "file_max_mix", "file_scale", "prior")
KERNELS: tuple[tuple[float, ...] | None, ...] = (None, (0.25, 0.5, 0.25), (0.15, 0.7, 0.15), (0.1, 0.2, 0.4, 0.2, 0.1))
"""Smoothing candidates (None: no smoothing)."""
MIX = (0.0, 0.1, 0.3, 0.5)
GAMMAS = (0.0, 0.2, 0.4, 0.6)
BETAS = (0.0, 0.5, 1.0, 2.0)
WEIGHTS = (0.5, 1.0, 2.0)
"""Each member's weight relative to the first member's, for ``blend``."""
ORDER = ("smooth", "file_max_mix", "file_scale", "prior")


@dataclass(frozen=True)
class Candidate:
    """One post-processing to try: a blend and the steps."""

    blend: Blend
    steps: tuple[Step, ...]
    weights: tuple[float, ...]
    """Member weights (the manifest's, or the grid's)."""

    def describe(self, manifest: Manifest) -> str:
        parts = [self.blend.rule]
        if len(self.weights) > 1:
            parts.append("w=" + ":".join(f"{w:g}" for w in self.weights))
        for s in self.steps:
            if isinstance(s, Smooth):
                parts.append("smooth=" + ",".join(f"{w:g}" for w in s.kernel))
            elif isinstance(s, FileMaxMix):
                parts.append(f"mix={s.a:g}")
            elif isinstance(s, FileScale):
                parts.append(f"scale_{s.mode}^{s.gamma:g}")
            elif isinstance(s, Prior):
                parts.append(f"prior^{s.beta:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class TuneResult:
    rows: list[dict]
    """One per fold: the best candidate on the other files, its held-out score, the untuned held-out score."""
    best: Candidate
    best_score: float
    untuned_score: float
    """Scores on all files (in-sample for ``best``)."""
    held_out_tuned: float
    held_out_untuned: float
    """Means over the folds."""
    written: Path
    candidates: int
    metric: str


def candidates(manifest: Manifest, steps: Sequence[str]) -> list[Candidate]:
    """Every combination of the grids of ``steps`` (see the module docstring)."""
    unknown = [s for s in steps if s not in TUNABLE]
    if unknown:
        raise BirdInferError(f"cannot tune {unknown}; tunable: {list(TUNABLE)}")
    own = {m.name: m.weight for m in manifest.members}
    base_weights = tuple(own.values())
    blends = [(manifest.blend, base_weights)]
    if "blend" in steps:
        rules = ("mean", "rank")
        combos = [base_weights]
        if len(manifest.members) > 1:
            first = base_weights[0]
            combos = [(first, *(first * w for w in ws)) for ws in itertools.product(WEIGHTS, repeat=len(own) - 1)]
        blends = [(dataclasses.replace(manifest.blend, rule=r), ws) for r in rules for ws in combos]
    kept = [s for s in manifest.postprocess.steps if s.kind not in steps]
    priors = [s for s in manifest.postprocess.steps if isinstance(s, Prior)]
    grids: dict[str, list[list[Step]]] = {
        "smooth": [[] if k is None else [Smooth(kernel=k)] for k in KERNELS],
        "file_max_mix": [[] if a == 0 else [FileMaxMix(a=a)] for a in MIX],
        "file_scale": [[] if g == 0 else [FileScale(gamma=g)] for g in GAMMAS],
        "prior": [[dataclasses.replace(p, beta=b) for p in priors] for b in BETAS] if priors else [[]],
    }
    choices = [grids[k] if k in steps else [[]] for k in ORDER]
    out = []
    for (bl, ws), *parts in itertools.product(blends, *choices):
        tuned = [s for part in parts for s in part]
        order = {k: i for i, k in enumerate(ORDER)}
        all_steps = sorted([*kept, *tuned], key=lambda s: order[s.kind])
        out.append(Candidate(bl, tuple(all_steps), tuple(ws)))
    return out


class _Scorer:
    """Applies candidates to the kept member rows of a set of files and scores them against the truth."""

    def __init__(
        self,
        manifest: Manifest,
        members: dict[Path, np.ndarray],
        predicted: dict[Path, np.ndarray],
        names: dict[Path, str],
        truth: pd.DataFrame,
        metric: str,
    ) -> None:
        self.manifest = manifest
        self.members = members
        self.predicted = predicted
        self.names = names
        self.truth = truth
        self.metric = metric
        self.post = PostProcessor(manifest)
        self._ranked: dict[tuple[Path, ...], dict[Path, np.ndarray]] = {}

    def _ranks(self, files: tuple[Path, ...]) -> dict[Path, np.ndarray]:
        """Each member's rows ranked per label over every predicted row of ``files``."""
        if files not in self._ranked:
            out = {p: np.full_like(self.members[p], np.nan) for p in files}
            n_members, _, n_labels = self.members[files[0]].shape
            for m in range(n_members):
                for j in range(n_labels):
                    parts = [self.members[p][m, self.predicted[p], j] for p in files]
                    column = np.concatenate(parts)
                    voted = ~np.isnan(column)
                    ranked = np.full(column.shape, np.nan, np.float32)
                    b = self.manifest.blend
                    ranked[voted] = rank_scale(column[voted], b.rank_scale, b.rank_ties, b.rank_clip)
                    start = 0
                    for p, part in zip(files, parts, strict=True):
                        out[p][m, np.flatnonzero(self.predicted[p]), j] = ranked[start : start + len(part)]
                        start += len(part)
            self._ranked[files] = out
        return self._ranked[files]

    def rows(self, c: Candidate, files: tuple[Path, ...]) -> dict[Path, np.ndarray]:
        stacks = self._ranks(files) if c.blend.rule == "rank" else {p: self.members[p] for p in files}
        members = tuple(dataclasses.replace(m, weight=w) for m, w in zip(self.manifest.members, c.weights, strict=True))
        weights = member_weights(dataclasses.replace(self.manifest, blend=c.blend, members=members))
        out = {}
        for p in files:
            rule = "mean" if c.blend.rule == "rank" else c.blend.rule
            probs = blend(stacks[p], weights, rule, c.blend.power)
            valid = self.predicted[p]
            probs[~valid] = FALLBACK_PROB
            out[p], _notes = self.post.apply(probs, valid, p, c.steps)
        return out

    def score(self, c: Candidate, files: tuple[Path, ...]) -> float:
        rows = self.rows(c, files)
        names = [self.names[p] for p in files]
        sub = build_submission(names, [rows[p] for p in files], self.manifest.labels, self.manifest.row_s)
        truth = self.truth[self.truth["row_id"].isin(set(sub["row_id"]))]
        if self.metric == "roc-auc":
            return macro_roc_auc(truth, sub)
        return padded_cmap(truth, sub)


def _bundle_files(manifest: Manifest) -> set[Path]:
    """Every file a bundle is made of (its manifest, folds, int8 models, prior tables, stages), resolved."""
    files = [manifest.root / MANIFEST_NAME]
    for m in manifest.members:
        for f in m.folds:
            files.append(manifest.fold_path(f))
            if f.int8 is not None:
                files += [manifest.root / f.int8.file, manifest.root / f.int8.weights]
        files += [manifest.root / s.table for s in m.steps if isinstance(s, Prior)]
    files += [manifest.root / s.table for s in manifest.postprocess.steps if isinstance(s, Prior)]
    files += [manifest.root / s.file for s in manifest.stages]
    return {p.resolve() for p in files}


def _tuned_target(manifest: Manifest, models: str | Path, out: str | Path | None) -> Path:
    """Where the tuned manifest goes: ``out`` or ``manifest.tuned.json`` beside the manifest; refused when it is a
    folder, lies elsewhere (its fold paths would not hold), or is any file of the bundle (the manifest it was
    given included)."""
    target = Path(out) if out is not None else manifest.root / "manifest.tuned.json"
    if target.is_dir():
        raise BirdInferError(
            f"--out {target} is a folder; name the file to write, e.g. {target / 'manifest.tuned.json'}"
        )
    if target.resolve().parent != manifest.root.resolve():
        raise BirdInferError(
            f"write the tuned manifest beside {manifest.root / MANIFEST_NAME}, so that its fold paths hold"
        )
    given = Path(models) if Path(models).is_file() else Path(models) / MANIFEST_NAME
    if target.resolve() in _bundle_files(manifest) | {given.resolve()}:
        raise BirdInferError(
            f"--out {target} is a file of the bundle ({target.resolve().name}); tune never overwrites it: name a new "
            "file, e.g. manifest.tuned.json"
        )
    return target


def read_truth(path: str | Path, labels: Sequence[str]) -> pd.DataFrame:
    """The truth CSV (``row_id`` + one 0/1 column per label), checked before any audio: readable, a ``row_id``
    column, and no label the bundle lacks."""
    try:
        truth = pd.read_csv(path, dtype={"row_id": str}, encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise BirdInferError(f"--truth {path} cannot be read as a UTF-8 CSV ({describe_exception(e)})") from e
    if "row_id" not in truth.columns:
        raise BirdInferError(f"--truth {path} has no row_id column; it needs row_id + one 0/1 column per label")
    unknown = [c for c in truth.columns if c != "row_id" and c not in set(labels)]
    if unknown:
        raise BirdInferError(f"--truth {path} names labels the bundle lacks: {unknown[:10]} ({len(unknown)})")
    return truth


def tune(
    audio: str | Path,
    models: str | Path,
    truth_csv: str | Path,
    steps: Sequence[str] = ("smooth", "file_scale"),
    folds: int = 3,
    metric: str = "padded-cmap",
    out: str | Path | None = None,
    options: RunOptions | None = None,
) -> TuneResult:
    """Tune ``steps`` of the bundle in ``models`` on the soundscapes in ``audio`` against ``truth_csv`` (see the
    module docstring); write the best into ``out`` (default: ``manifest.tuned.json`` beside the manifest)."""
    options = dataclasses.replace(options or RunOptions(), keep_member_rows=True)
    plan = plan_run(audio, models, unique_stems, options)
    manifest = plan.manifest
    # every check on the output, the folds and the truth before any audio is read
    target = _tuned_target(manifest, models, out)
    readable = len(plan.paths)
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= max(2, readable):
        raise BirdInferError(
            f"--folds {folds}: cross-validation needs 2 to {readable} folds here (at least 2, so that each fold has "
            f"held-out files, and at most the {readable} readable soundscapes)"
        )
    truth = read_truth(truth_csv, manifest.labels)
    names = dict(zip(plan.entries, plan.names, strict=True))
    members: dict[Path, np.ndarray] = {}
    predicted: dict[Path, np.ndarray] = {}
    for path, outcome in iter_outcomes(plan):
        if isinstance(outcome, FileResult) and outcome.member_probs is not None:
            members[path] = outcome.member_probs
            n = outcome.n_rows
            predicted[path] = outcome.predicted if outcome.predicted is not None else np.ones(n, dtype=bool)
        else:
            log.warning("%s: not predicted, left out of tuning", path)
    files = tuple(sorted(members))
    if len(files) < max(2, folds):
        raise BirdInferError(f"tune needs at least {max(2, folds)} predicted soundscapes, got {len(files)}")
    scorer = _Scorer(manifest, members, predicted, names, truth, metric)
    grid = candidates(manifest, steps)
    untuned = Candidate(manifest.blend, manifest.postprocess.steps, tuple(m.weight for m in manifest.members))
    log.info("tune: %d candidates x %d folds on %d files", len(grid), folds, len(files))
    rows = []
    for k in range(folds):
        held = tuple(p for i, p in enumerate(files) if i % folds == k)
        train = tuple(p for p in files if p not in held)
        scored = [(scorer.score(c, train), i) for i, c in enumerate(grid)]
        best_train, best_i = max(scored, key=lambda t: (t[0], -t[1]))
        rows.append(
            {
                "fold": k,
                "held_out_files": len(held),
                "best_on_the_others": grid[best_i].describe(manifest),
                "train_score": best_train,
                "held_out_tuned": scorer.score(grid[best_i], held),
                "held_out_untuned": scorer.score(untuned, held),
            }
        )
    scored = [(scorer.score(c, files), i) for i, c in enumerate(grid)]
    best_score, best_i = max(scored, key=lambda t: (t[0], -t[1]))
    best = grid[best_i]
    weights = dict(zip([m.name for m in manifest.members], best.weights, strict=True))
    tuned = dataclasses.replace(
        manifest,
        blend=best.blend,
        postprocess=PostProcess(best.steps),
        members=tuple(dataclasses.replace(m, weight=weights[m.name]) for m in manifest.members),
    )
    write_text(target, json.dumps(tuned.to_dict(), indent=2) + "\n")
    return TuneResult(
        rows=rows,
        best=best,
        best_score=best_score,
        untuned_score=scorer.score(untuned, files),
        held_out_tuned=float(np.mean([r["held_out_tuned"] for r in rows])),
        held_out_untuned=float(np.mean([r["held_out_untuned"] for r in rows])),
        written=target,
        candidates=len(grid),
        metric=metric,
    )
