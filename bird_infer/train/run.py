"""``bird-infer train``: pre-train on all the data, or fine-tune k folds, writing exporter-ready checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from bird_infer.audio.files import find_audio_files
from bird_infer.contract.errors import TrainingDataError
from bird_infer.contract.training_config import TrainingConfig
from bird_infer.train.data import load_records, load_waveform, make_folds
from bird_infer.train.recipe import RecipeConfig, save_checkpoint, train_model, write_train_config

log = logging.getLogger(__name__)


def load_backgrounds(sources: list[Path], config: TrainingConfig, max_s: float = 600.0) -> list[np.ndarray]:
    """Background recordings for mixing, at the config's rate (files or folders, searched recursively)."""
    files = sorted(p for s in sources for p in find_audio_files(s))
    return [load_waveform(p, config.audio, max_s) for p in files]


def run_training(
    config: TrainingConfig,
    data: Path,
    out: Path,
    recipe: RecipeConfig,
    folds: list[int] | None = None,
    n_folds: int = 5,
    all_data: bool = False,
    pretrained: Path | None = None,
    background: list[Path] | None = None,
) -> list[Path]:
    """Train and save checkpoints under ``out``; returns their paths.

    ``all_data`` trains one model on every record (pre-training) -> ``out/pretrained.pt``; otherwise
    each fold in ``folds`` (default all) -> ``out/fold<k>.pt``, validated on its held-out part.
    """
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(data)
    unknown = sorted({r.primary_label for r in records} - set(config.labels))
    if unknown:
        raise TrainingDataError(f"{len(unknown)} labels of the data are not in the config: {unknown[:10]}")
    init = torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"] if pretrained else None
    bgs = load_backgrounds(background or [], config)
    write_train_config(config, out)
    started = time.perf_counter()
    paths, summary = [], {"recipe": dataclasses.asdict(recipe), "records": len(records), "runs": []}
    if all_data:
        runs = [("pretrained", list(range(len(records))), [])]
    else:
        split = make_folds([r.primary_label for r in records], n_folds, recipe.seed)
        runs = [(f"fold{k}", list(split[k][0]), list(split[k][1])) for k in (folds or range(n_folds))]
    for name, tr, va in runs:
        t0 = time.perf_counter()
        log.info("%s: %d training, %d validation recordings", name, len(tr), len(va))
        model, history = train_model(
            config, [records[i] for i in tr], recipe, [records[i] for i in va] or None, init, bgs
        )
        path = save_checkpoint(
            out / f"{name}.pt",
            model,
            config,
            history,
            train_files=[str(records[i].path) for i in tr],
            val_files=[str(records[i].path) for i in va],
        )
        paths.append(path)
        last = history[-1] if history else None
        summary["runs"].append(
            {
                "name": name,
                "train": len(tr),
                "val": len(va),
                "seconds": time.perf_counter() - t0,
                "final": dataclasses.asdict(last) if last else None,
            }
        )
    summary["seconds"] = time.perf_counter() - started
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return paths
