"""Shared fixtures. Real recordings are read from ../shared/data/audio and skipped cleanly when absent."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from bird_infer.manifest import TrainingConfig, load_training_config

ROOT = Path(__file__).resolve().parent.parent
SHARED_AUDIO = ROOT.parent / "shared" / "data" / "audio"
SPECIES_FILE = ROOT.parent / "shared" / "data" / "birdclef2023_species.txt"
REFERENCE_CONFIG = ROOT / "configs" / "birdclef2023_b0.json"
TINY_BACKBONE = "test_efficientnet"  # timm's ~100k-parameter test network: fast to build and export


def real_audio_dir(sub: str = "") -> Path:
    path = SHARED_AUDIO / sub
    if not path.is_dir() or not any(path.rglob("*.wav")):
        pytest.skip(f"real recordings not found at {path}")
    return path


@pytest.fixture(scope="session")
def reference_config() -> TrainingConfig:
    """The BirdCLEF 2023 recipe (264 labels, 256 mels...) with the shipped config's front-end."""
    return load_training_config(REFERENCE_CONFIG)


@pytest.fixture(scope="session")
def tiny_config(reference_config: TrainingConfig) -> TrainingConfig:
    """The reference front-end and labels, with timm's tiny test backbone."""
    model = dataclasses.replace(reference_config.model, backbone=TINY_BACKBONE)
    return dataclasses.replace(reference_config, model=model)


@pytest.fixture(scope="session")
def real_chunks(reference_config: TrainingConfig) -> np.ndarray:
    """Up to 24 real 5-s chunks at 32 kHz from the shared recordings (skips if absent)."""
    from bird_infer.export import check_chunks_from_audio

    return check_chunks_from_audio([real_audio_dir()], reference_config, max_chunks=24)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_config: TrainingConfig, real_chunks: np.ndarray):
    """Two tiny responsive folds exported by the real exporter: (manifest, [torch models], export result)."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    import torch

    from bird_infer.export import export_folds
    from bird_infer.frontend import LogMelFrontend
    from bird_infer.nn.sed import build_model, recalibrate_batchnorm

    feats = torch.from_numpy(LogMelFrontend(tiny_config.frontend, tiny_config.audio.sample_rate)(real_chunks))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(tiny_config.model, tiny_config.frontend.n_mels, len(tiny_config.labels))
        recalibrate_batchnorm(model, list(feats.split(8)))
        models.append(model.eval())
    out = tmp_path_factory.mktemp("tiny_bundle")
    result = export_folds(models, tiny_config, out, real_chunks)
    return result.manifest, models, result


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
