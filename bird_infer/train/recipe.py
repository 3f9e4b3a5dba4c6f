"""The seed's recipe: loss, training loop, pre-training then fine-tuning, and exporter-ready checkpoints.

- 5-s random crops; the front-end is :class:`~bird_infer.nn.TorchLogMel` built from the training config
  (the same config the exporter writes into the manifest, so inference computes the same log-mel);
- augmentations from :mod:`bird_infer.train.augment`;
- label smoothing 0.1 (binary: ``y * (1 - 0.1) + 0.1 / 2``);
  loss = BCE(clip-wise, y) x 1.0 + BCE(max over time of segment-wise, y) x 0.5;
- AdamW, cosine annealing over all steps, no warm-up; fp32; channels_last on CPU.

Pre-training is a run over all the pre-training data (no validation); fine-tuning starts each fold from
its weights (layers whose shape differs, such as the output layers for another label set, start fresh).
Checkpoints hold ``state_dict`` (what ``bird-infer export`` reads), the labels and the history;
``train_config.json`` beside them is the config to export with.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bird_infer.contract.training_config import TrainingConfig
from bird_infer.nn import TorchLogMel, build_model
from bird_infer.outputs.metrics import padded_cmap
from bird_infer.train.augment import AugmentConfig, augment_wave, mixup, spec_augment
from bird_infer.train.data import Record, load_waveform, multi_hot, random_crop

log = logging.getLogger(__name__)

BCE_EPS = 1e-7  # probabilities are clamped away from 0 and 1 before the log


@dataclass(frozen=True)
class RecipeConfig:
    """Training hyper-parameters (the seed's values where it stated them)."""

    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    clip_loss_weight: float = 1.0
    segment_loss_weight: float = 0.5
    secondary_weight: float = 1.0
    """Target value for secondary labels."""
    max_clip_s: float = 60.0
    """Seconds of each training recording kept in memory (random 5-s crops are drawn from them)."""
    seed: int = 42
    channels_last: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def smooth_labels(y: torch.Tensor, eps: float) -> torch.Tensor:
    """Binary label smoothing: 1 -> 1 - eps/2, 0 -> eps/2."""
    return y * (1 - eps) + eps / 2


def sed_loss(
    clipwise: torch.Tensor,
    segmentwise: torch.Tensor,
    target: torch.Tensor,
    clip_weight: float = 1.0,
    segment_weight: float = 0.5,
) -> torch.Tensor:
    """clipwise (B, L) and segmentwise (B, L, T) probabilities, target (B, L) -> scalar loss.

    BCE on the clip-wise output x ``clip_weight`` + BCE on the max over time of the segment-wise
    output x ``segment_weight``.
    """
    clip = F.binary_cross_entropy(clipwise.clamp(BCE_EPS, 1 - BCE_EPS), target)
    seg = F.binary_cross_entropy(segmentwise.amax(dim=-1).clamp(BCE_EPS, 1 - BCE_EPS), target)
    return clip_weight * clip + segment_weight * seg


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    seconds: float
    val_loss: float | None = None
    val_cmap: float | None = None


class ClipBank:
    """Recordings held in memory, with their targets; draws 5-s crops."""

    def __init__(self, records: list[Record], config: TrainingConfig, recipe: RecipeConfig) -> None:
        self.records = records
        self.waves = [load_waveform(r.path, config.audio, recipe.max_clip_s) for r in records]
        self.targets = np.stack([multi_hot(r, config.labels, recipe.secondary_weight) for r in records])
        self.chunk = config.audio.chunk_samples

    def crop(self, i: int, rng: np.random.Generator) -> np.ndarray:
        return random_crop(self.waves[i], self.chunk, rng)

    def first(self, i: int) -> np.ndarray:
        return random_crop(self.waves[i][: self.chunk], self.chunk, np.random.default_rng(0))


def load_compatible(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor whose name and shape match; return the names left at their fresh values."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def train_model(
    config: TrainingConfig,
    train: list[Record],
    recipe: RecipeConfig,
    val: list[Record] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    backgrounds: list[np.ndarray] | None = None,
) -> tuple[torch.nn.Module, list[EpochStats]]:
    """Train one model on ``train`` (validating on ``val`` after each epoch if given)."""
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = build_model(config.model, config.frontend.n_mels, len(config.labels))
    if init_state is not None:
        fresh = load_compatible(model, init_state)
        log.info("initialised from pre-trained weights; fresh: %s", fresh or "none")
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    frontend = TorchLogMel(config.frontend, config.audio.sample_rate).eval()
    bank = ClipBank(train, config, recipe)
    val_bank = ClipBank(val, config, recipe) if val else None
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, recipe.epochs * steps_per_epoch))
    history = []
    for epoch in range(recipe.epochs):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(train))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * recipe.batch_size : (s + 1) * recipe.batch_size]
            waves = []
            for i in idx:
                bg = None  # background mixing needs background recordings (no calls of the labels in them)
                if backgrounds:
                    bg = random_crop(backgrounds[int(rng.integers(len(backgrounds)))], bank.chunk, rng)
                waves.append(augment_wave(bank.crop(int(i), rng), config.audio.sample_rate, recipe.augment, rng, bg))
            x = torch.from_numpy(np.stack(waves))
            y = torch.from_numpy(bank.targets[idx])
            if recipe.augment.mixup_p and torch.rand((), generator=gen) < recipe.augment.mixup_p and len(idx) > 1:
                x, y = mixup(x, y, recipe.augment.mixup_alpha, gen)
            with torch.no_grad():
                feats = spec_augment(frontend(x), recipe.augment, gen)
            clipwise, segmentwise = model(feats)
            loss = sed_loss(
                clipwise,
                segmentwise,
                smooth_labels(y, recipe.label_smoothing),
                recipe.clip_loss_weight,
                recipe.segment_loss_weight,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        stats = EpochStats(epoch + 1, float(np.mean(losses)), time.perf_counter() - t0)
        if val_bank is not None:
            stats.val_loss, stats.val_cmap = evaluate(model, frontend, val_bank, config, recipe)
        history.append(stats)
        log.info("epoch %d/%d: %s", epoch + 1, recipe.epochs, dataclasses.asdict(stats))
    return model.to(memory_format=torch.contiguous_format).eval(), history


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, frontend: torch.nn.Module, bank: ClipBank, config: TrainingConfig, recipe: RecipeConfig
) -> tuple[float, float]:
    """Validation loss (unsmoothed targets) and padded cmAP on the first 5 s of each recording."""

    model.eval()
    probs, losses = [], []
    for start in range(0, len(bank.waves), recipe.batch_size):
        idx = list(range(start, min(len(bank.waves), start + recipe.batch_size)))
        x = torch.from_numpy(np.stack([bank.first(i) for i in idx]))
        y = torch.from_numpy(bank.targets[idx])
        clipwise, segmentwise = model(frontend(x))
        losses.append(float(sed_loss(clipwise, segmentwise, y)) * len(idx))
        probs.append(clipwise.numpy())
    labels = list(config.labels)
    truth = pd.DataFrame(bank.targets, columns=labels)
    sub = pd.DataFrame(np.concatenate(probs), columns=labels)
    return float(np.sum(losses) / len(bank.waves)), padded_cmap(truth, sub)


def save_checkpoint(
    path: Path, model: torch.nn.Module, config: TrainingConfig, history: list[EpochStats], **extra: object
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "labels": list(config.labels),
            "history": [dataclasses.asdict(h) for h in history],
            **extra,
        },
        path,
    )
    return path


def write_train_config(config: TrainingConfig, folder: Path) -> Path:
    """The config to export with (``bird-infer export --config``): labels, audio, front-end, model, ensemble."""
    d = {
        "description": config.description,
        "audio": dataclasses.asdict(config.audio),
        "frontend": dataclasses.asdict(config.frontend),
        "model": dataclasses.asdict(config.model),
        "ensemble": dataclasses.asdict(config.ensemble),
        "labels": list(config.labels),
    }
    path = folder / "train_config.json"
    path.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    return path
