"""Shared fixtures. Real recordings come with the repository (``tests/data/audio``, see its SOURCES.md)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bird_infer.contract.training_config import TrainingConfig, load_training_config

ROOT = Path(__file__).resolve().parent.parent
TEST_AUDIO = ROOT / "tests" / "data" / "audio"
"""Real recordings (MIT and BSD-3 licensed cuts, with their notices), part of the repository."""
REFERENCE_CONFIG = ROOT / "configs" / "birdclef2023_b0.json"
TINY_BACKBONE = "test_efficientnet"  # timm's ~100k-parameter test network: fast to build and export


@pytest.fixture(autouse=True)
def no_host_kaggle(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees the host's own /kaggle/input: the kernel looks in an empty folder unless a test lays
    out one of its own."""
    monkeypatch.setenv("BIRD_INFER_KAGGLE_INPUT", str(tmp_path_factory.getbasetemp() / "no_kaggle_input"))


@pytest.fixture(autouse=True)
def no_host_birdnet_onnx(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees a BirdNET ONNX body converted on the host: tests that run one ask for ``converted_birdnet``."""
    monkeypatch.setenv("BIRD_INFER_BIRDNET_ONNX", str(tmp_path_factory.getbasetemp() / "no_birdnet_onnx"))
    monkeypatch.setenv("BIRD_INFER_CACHE", str(tmp_path_factory.getbasetemp() / "bird_infer_cache"))


CONVERTER_ENV = "BIRD_INFER_CONVERTER_PYTHON"
"""A Python with tensorflow and tf2onnx (``.ci/run`` makes one in ``.ci/convert-venv``): the converter the BirdNET
ONNX tests convert with, once per session."""


@pytest.fixture(scope="session")
def converted_birdnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BirdNET V2.4 converted by ``bird-infer birdnet-onnx`` (checked on real audio), once per session. Without a
    converter this fails in CI and skips elsewhere, saying how to get one."""
    import os

    from bird_infer.contract.birdnet_onnx import CONVERTER_HINT
    from bird_infer.tools.birdnet_convert import convert, has_converter

    python = os.environ.get(CONVERTER_ENV, sys.executable)
    if not has_converter(python):
        why = f"no converter: set ${CONVERTER_ENV} to a Python with tensorflow and tf2onnx ({CONVERTER_HINT})"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    out = tmp_path_factory.mktemp("birdnet_onnx") / "birdnet-v2.4-onnx"
    audio = sorted(real_audio_dir("opensoundscape").glob("*.wav"))[:2]
    convert(out, python, audio)
    return out


def real_audio_dir(sub: str = "") -> Path:
    path = TEST_AUDIO / sub
    if not path.is_dir() or not any(path.rglob("*.wav")):
        pytest.fail(f"the recordings that come with the repository are missing at {path} (a partial checkout?)")
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
    """Up to 24 real 5-s chunks at 32 kHz from the test recordings."""
    from bird_infer.export import check_chunks_from_audio

    return check_chunks_from_audio([real_audio_dir()], reference_config.audio, max_chunks=24)


def synthetic_chunks(sample_rate: int = 32000, clip_s: float = 5.0, n: int = 16, seed: int = 0) -> np.ndarray:
    """Field-like 5-s chunks made here (no recordings needed): pink-ish noise at several levels with
    chirps, trills and tone bursts across 0.5-12 kHz, so that a model's outputs vary from chunk to chunk."""
    rng = np.random.default_rng(seed)
    length = round(sample_rate * clip_s)
    t = np.arange(length) / sample_rate
    out = []
    for _ in range(n):
        noise = np.cumsum(rng.standard_normal(length)) * 1e-3
        noise = (noise - np.convolve(noise, np.ones(64) / 64, mode="same")) + 0.3 * rng.standard_normal(length)
        x = 10 ** rng.uniform(-3, -1) * noise
        for _ in range(rng.integers(1, 6)):
            f0, f1 = rng.uniform(500, 12000, 2)
            start, dur = rng.uniform(0, clip_s - 0.3), rng.uniform(0.1, 1.5)
            on = (t >= start) & (t < start + dur)
            tt = t[on] - start
            phase = 2 * np.pi * (f0 * tt + (f1 - f0) * tt**2 / (2 * dur))
            trill = 1 + 0.5 * np.sin(2 * np.pi * rng.uniform(5, 40) * tt)
            x[on] += 10 ** rng.uniform(-2, -0.3) * np.sin(phase) * trill * np.hanning(on.sum())
        out.append(x)
    return np.asarray(out, dtype=np.float32)


@pytest.fixture(scope="session")
def check_chunks(reference_config: TrainingConfig) -> np.ndarray:
    """Synthetic chunks at the reference rate: what the tiny test bundle is calibrated and checked on."""
    return synthetic_chunks(reference_config.audio.sample_rate, reference_config.audio.clip_s)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_config: TrainingConfig, check_chunks: np.ndarray):
    """Two tiny responsive folds exported by the real exporter: (manifest, [torch models], export result).

    Built from generated audio only, so every test that uses it runs without recordings."""
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    import torch

    from bird_infer.audio.logmel import LogMelFrontend
    from bird_infer.export import export_folds
    from bird_infer.nn.sed import build_model, recalibrate_batchnorm

    feats = torch.from_numpy(LogMelFrontend(tiny_config.frontend, tiny_config.audio.sample_rate)(check_chunks))
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(tiny_config.model, tiny_config.frontend.n_mels, len(tiny_config.labels))
        recalibrate_batchnorm(model, list(feats.split(8)))
        models.append(model.eval())
    out = tmp_path_factory.mktemp("tiny_bundle")
    result = export_folds(models, tiny_config, out, check_chunks)
    return result.manifest, models, result


def predict_cli(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m bird_infer predict ARGS`` in a fresh process: its exit status, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "bird_infer", "predict", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def member0(data: dict) -> dict:
    """The first member's section of a manifest dict (schema 2), or the dict itself (schema 1)."""
    return data["members"][0] if "members" in data else data


def set_labels(data: dict, labels: list) -> None:
    """Set a one-member manifest dict's labels, the bundle's and the member's alike."""
    data["labels"] = list(labels)
    member0(data)["labels"] = list(labels)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def with_second_member(manifest, folder: Path, weight: float = 0.5) -> Path:
    """A copy of a one-member bundle in ``folder`` with a second member: the same folds under new file names,
    weight ``weight``. A genuine two-member bundle (members, drop order, fold names ``member/fold``) from the
    tiny test models."""
    import shutil

    shutil.copytree(manifest.root, folder)
    data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    second = json.loads(json.dumps(data["members"][0]))
    second["name"], second["weight"] = "second", weight
    for fold in second["folds"]:
        shutil.copy2(folder / fold["file"], folder / f"second_{fold['file']}")
        fold["file"] = f"second_{fold['file']}"
    data["members"].append(second)
    return write_json(folder / "manifest.json", data).parent
