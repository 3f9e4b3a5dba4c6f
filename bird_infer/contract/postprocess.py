"""How members' rows become the submission's: the blend of the members, label groups, and the ordered
post-processing steps. Frozen dataclasses, each field documented in its metadata (error messages and the reference
quote it); parsing is in :mod:`bird_infer.contract.parse_post`, the arithmetic in :mod:`bird_infer.runtime.blend`
and :mod:`bird_infer.run.postprocess`.

Order of operations for each file: the members' rows are blended (:class:`Blend`), then the steps run in the
manifest's order, then every probability is clipped into ``[0, PROB_MAX]`` (strictly below 1, finite). Rows that
hold the fallback are never blended, ranked, smoothed or scaled: they keep the fallback value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from bird_infer.contract.describe import doc

BLEND_RULES = ("mean", "rank", "power")
RANK_SCALES = ("(rank-1)/n", "rank/n")
RANK_TIES = ("average", "min", "max", "dense", "first")
FILE_SCALE_MODES = ("max", "topk")
UNMATCHED_PRIOR = "leave"


@dataclass(frozen=True)
class Blend:
    """How the members' probabilities of a label become one."""

    rule: str = field(
        default="mean",
        metadata=doc(
            "mean: the weighted mean of the members' probabilities (the default); rank: each member's outputs "
            "rank-transformed per label over every row of the run, ranks scaled into [0, 1), then the weighted "
            "mean (needs every row: predict only); power: (weighted mean of p^k)^(1/k)."
        ),
    )
    power: float = field(default=2.0, metadata=doc("k of the power blend (> 0); unused by the other rules."))
    rank_scale: str = field(
        default="(rank-1)/n",
        metadata=doc("rank: '(rank-1)/n' (the default, in [0, 1)) or 'rank/n' (pandas' rank(pct=True), in (0, 1])."),
    )
    rank_ties: str = field(
        default="average",
        metadata=doc(
            "rank: how ties rank, as pandas' rank(method=...): average (the default), min, max, dense (scaled by "
            "the number of distinct values, as pandas does), first."
        ),
    )
    rank_clip: tuple[float, float] | None = field(
        default=None,
        metadata=doc("rank: [lo, hi] the probabilities are clipped into before ranking (ties form there); null: none."),
    )
    group_weights: dict[str, dict[str, float]] = field(
        default_factory=dict,
        metadata=doc(
            "Member weights per label group: {group: {member: weight}}; a member not named keeps its own weight "
            "on that group's labels. A specialist weighs more on its taxon."
        ),
    )

    @property
    def needs_every_row(self) -> bool:
        """The rule needs every row of the run before any file's rows are final (rank)."""
        return self.rule == "rank"


@dataclass(frozen=True)
class Smooth:
    """Weighted mean over neighbouring rows of the same file."""

    kind: ClassVar[str] = "smooth"
    kernel: tuple[float, ...] = field(
        metadata=doc(
            "Weights over neighbouring rows, odd length, centred (e.g. [0.1, 0.8, 0.1]): p'[i] = sum_t w[t] "
            "p[i + t - h] / sum_t w[t] over the rows that exist and hold predictions (h = len // 2)."
        )
    )
    group: str | None = field(default=None, metadata=doc("Only this label group's columns; null: every label."))


@dataclass(frozen=True)
class FileMaxMix:
    """Each row mixed with the file's maximum."""

    kind: ClassVar[str] = "file_max_mix"
    a: float = field(metadata=doc("a in p' = (1 - a) p + a max_file(p), in [0, 1]."))


@dataclass(frozen=True)
class FileScale:
    """Each row scaled by how strongly the label shows anywhere in the file."""

    kind: ClassVar[str] = "file_scale"
    gamma: float = field(metadata=doc("Exponent g >= 0 in p' = p * s^g (0.4 in published solutions)."))
    mode: str = field(
        default="max",
        metadata=doc("max: s = max over the file's rows of p; topk: s = mean of the file's k highest p."),
    )
    k: int = field(
        default=3, metadata=doc("Rows averaged by topk (a file with fewer rows averages them all).", unit="rows")
    )
    group: str | None = field(default=None, metadata=doc("Only this label group's columns; null: every label."))


@dataclass(frozen=True)
class Prior:
    """A per-label multiplier looked up from the file's name (site, hour...), learned from training labels."""

    kind: ClassVar[str] = "prior"
    pattern: str = field(
        metadata=doc(
            "A Python regular expression with named groups, searched in the file's name (its stem); e.g. "
            r"'^(?P<site>[A-Z]+\d+)_\d{8}_(?P<hour>\d{2})' for BirdCLEF 2025-2026 names like "
            "H02_20230420_074000."
        )
    )
    table: str = field(
        metadata=doc(
            "A CSV in the bundle (relative to manifest.json): one column per named group, then one column per "
            "bundle label holding the multiplier (>= 0) for files whose groups equal that row's."
        )
    )
    sha256: str = field(metadata=doc("The table's sha256, checked at every load."))
    beta: float = field(default=1.0, metadata=doc("Exponent b >= 0 in p' = p * prior^b."))
    unmatched: str = field(
        default=UNMATCHED_PRIOR,
        metadata=doc(
            "A file whose name does not match, or whose groups have no row: 'leave' its rows unchanged (the "
            "error report says so, outcome prior_unmatched)."
        ),
    )


@dataclass(frozen=True)
class Gaussian:
    """Gaussian smoothing over neighbouring rows, the file's edges padded with their own values (scipy's
    ``gaussian_filter1d(mode="nearest")``)."""

    kind: ClassVar[str] = "gaussian"
    sigma: float = field(metadata=doc("Standard deviation in rows (> 0).", unit="rows"))
    radius: int = field(
        default=0,
        metadata=doc(
            "Rows each side the kernel reaches; 0: int(4 sigma + 0.5), as scipy's default truncate=4. Weights "
            "w[t] = exp(-t^2 / (2 sigma^2)), normalised; a neighbour past the file's edge is the edge row; a "
            "fallback row is left out and the weights renormalised.",
            unit="rows",
        ),
    )
    group: str | None = field(default=None, metadata=doc("Only this label group's columns; null: every label."))


@dataclass(frozen=True)
class AdaptiveSmooth:
    """Smoothing whose weight follows each row's maximum: a confident row is smoothed more (or less)."""

    kind: ClassVar[str] = "adaptive_smooth"
    kernel: tuple[float, ...] = field(metadata=doc("The smoothing kernel, as the smooth step's."))
    low: float = field(metadata=doc("Mix weight a where the row's maximum is 0, in [0, 1]."))
    high: float = field(
        metadata=doc(
            "Mix weight where the row's maximum is 1, in [0, 1]: a = low + (high - low) max_j p[i, j] (over the "
            "step's columns), p' = (1 - a) p + a smooth(p)."
        )
    )
    group: str | None = field(default=None, metadata=doc("Only this label group's columns; null: every label."))


@dataclass(frozen=True)
class Temperature:
    """A temperature on the logit: p' = sigmoid(logit(p) / t) (p clipped into [1e-7, 1 - 1e-7] first)."""

    kind: ClassVar[str] = "temperature"
    t: float = field(metadata=doc("The temperature (> 0): above 1 flattens, below 1 sharpens."))
    group: str | None = field(default=None, metadata=doc("Only this label group's columns; null: every label."))


@dataclass(frozen=True)
class ThresholdRemap:
    """A per-label threshold mapped onto one value, piecewise linear: [0, th] onto [0, to], [th, 1] onto [to, 1]."""

    kind: ClassVar[str] = "threshold_remap"
    thresholds: dict[str, float] = field(metadata=doc("{label: th} with th in (0, 1); labels not named are unchanged."))
    to: float = field(default=0.5, metadata=doc("Where every threshold lands, in (0, 1)."))


@dataclass(frozen=True)
class LabelMax:
    """Max-pooling over label groups: every label of a group takes the group's row maximum."""

    kind: ClassVar[str] = "label_max"
    groups: tuple[str, ...] = field(metadata=doc("Names of label_groups, each pooled on its own."))


Step = Smooth | FileMaxMix | FileScale | Prior | Gaussian | AdaptiveSmooth | Temperature | ThresholdRemap | LabelMax
STEP_KINDS: dict[str, type] = {
    cls.kind: cls
    for cls in (Smooth, FileMaxMix, FileScale, Prior, Gaussian, AdaptiveSmooth, Temperature, ThresholdRemap, LabelMax)
}


@dataclass(frozen=True)
class PostProcess:
    """The ordered steps applied to each file's blended rows; off (no steps) by default."""

    steps: tuple[Step, ...] = field(
        default=(),
        metadata=doc("The steps, in the order they run; each is one of the step kinds below."),
    )

    @property
    def active(self) -> bool:
        return bool(self.steps)

    def to_list(self) -> list[dict[str, Any]]:
        """The steps as the manifest writes them."""
        return steps_to_list(self.steps)


def steps_to_list(steps: tuple[Step, ...]) -> list[dict[str, Any]]:
    """Steps as the manifest writes them (the bundle's ``postprocess``, a member's ``steps``)."""
    out = []
    for s in steps:
        d: dict[str, Any] = {"step": s.kind}
        for f in fields(s):
            value = getattr(s, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
        out.append(d)
    return out


def step_doc(kind: str) -> str:
    """Every field of step ``kind`` with its description, for error messages."""
    cls = STEP_KINDS[kind]
    return "; ".join(f"{f.name}: {f.metadata.get('doc', '')}" for f in fields(cls))
