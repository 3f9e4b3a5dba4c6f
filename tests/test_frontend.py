"""The numpy front-end is the training front-end: parity with torch, librosa, and per-chunk clamping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bird_infer.audio.logmel import LogMelFrontend, mel_filterbank
from bird_infer.contract.training_config import TrainingConfig

DB_TOLERANCE = 5e-3  # dB; float32 FFT rounding alone is ~1e-3 dB


def generated_signals(sr: int, n: int) -> dict[str, np.ndarray]:
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    chirp = np.sin(2 * np.pi * (100 * t + (13000 - 100) / (2 * t[-1]) * t**2))
    quiet_tone_loud_click = 1e-4 * np.sin(2 * np.pi * 3000 * t)
    quiet_tone_loud_click[n // 2 : n // 2 + 64] = 0.9  # a click 80+ dB above the rest: top_db clamps
    return {
        "tone_1k": 0.5 * np.sin(2 * np.pi * 1000 * t),
        "tone_13k": 0.3 * np.sin(2 * np.pi * 13000 * t),
        "chirp": 0.5 * chirp,
        "silence": np.zeros(n),
        "full_scale_noise": np.clip(rng.standard_normal(n), -1, 1),
        "clamped": quiet_tone_loud_click,
    }


def torch_logmel(cfg: TrainingConfig, waves: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from bird_infer.nn.frontend import TorchLogMel

    with torch.no_grad():
        return TorchLogMel(cfg.frontend, cfg.audio.sample_rate)(torch.from_numpy(waves)).numpy()


def test_mel_filterbank_matches_librosa(reference_config: TrainingConfig) -> None:
    librosa = pytest.importorskip("librosa")
    sr = reference_config.audio.sample_rate
    for scale in ("slaney", "htk"):
        for norm in ("slaney", "none"):
            fe = dataclasses.replace(reference_config.frontend, mel_scale=scale, mel_norm=norm)
            ours = mel_filterbank(fe, sr)
            ref = librosa.filters.mel(
                sr=sr,
                n_fft=fe.n_fft,
                n_mels=fe.n_mels,
                fmin=fe.fmin,
                fmax=fe.fmax,
                htk=scale == "htk",
                norm="slaney" if norm == "slaney" else None,
            )
            assert ours.shape == (256, 513)
            np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)
    # With these settings some low bands hold no FFT bin: both front-ends share these zero rows.
    assert (mel_filterbank(reference_config.frontend, sr).sum(axis=1) == 0).sum() > 0


def test_numpy_matches_torch_on_real_recordings(reference_config: TrainingConfig, real_chunks: np.ndarray) -> None:
    ours = LogMelFrontend(reference_config.frontend, reference_config.audio.sample_rate)(real_chunks)
    theirs = torch_logmel(reference_config, real_chunks)
    diff = float(np.abs(ours - theirs).max())
    print(f"numpy vs torch log-mel on {len(real_chunks)} real chunks: max |diff| = {diff:.3g} dB")
    assert ours.shape == (len(real_chunks), 256, 501) and ours.dtype == np.float32
    assert diff <= DB_TOLERANCE


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
@pytest.mark.parametrize("normalize", ["none", "minmax", "standardize"])
def test_numpy_matches_torch_on_generated_signals(
    reference_config: TrainingConfig, pad_mode: str, normalize: str
) -> None:
    frontend = dataclasses.replace(reference_config.frontend, pad_mode=pad_mode, normalize=normalize)
    cfg = dataclasses.replace(reference_config, frontend=frontend)
    signals = generated_signals(cfg.audio.sample_rate, cfg.audio.chunk_samples)
    waves = np.stack(list(signals.values())).astype(np.float32)
    ours = LogMelFrontend(cfg.frontend, cfg.audio.sample_rate)(waves)
    theirs = torch_logmel(cfg, waves)
    # dB differences scale by 1/(range) under minmax and 1/std under standardize: compare in dB units.
    scale = {"none": 1.0, "minmax": 80.0, "standardize": 10.0}[normalize]
    for i, name in enumerate(signals):
        diff = float(np.abs(ours[i] - theirs[i]).max()) * scale
        assert diff <= DB_TOLERANCE, f"{name}: {diff:.3g} dB"


def test_power_one_matches_torch(reference_config: TrainingConfig, real_chunks: np.ndarray) -> None:
    cfg = dataclasses.replace(reference_config, frontend=dataclasses.replace(reference_config.frontend, power=1.0))
    ours = LogMelFrontend(cfg.frontend, cfg.audio.sample_rate)(real_chunks[:4])
    assert float(np.abs(ours - torch_logmel(cfg, real_chunks[:4])).max()) <= DB_TOLERANCE


def test_matches_librosa_float64_reference(reference_config: TrainingConfig, real_chunks: np.ndarray) -> None:
    librosa = pytest.importorskip("librosa")
    fe, sr = reference_config.frontend, reference_config.audio.sample_rate
    ours = LogMelFrontend(fe, sr)(real_chunks[:3])
    for i in range(3):
        mel = librosa.feature.melspectrogram(
            y=real_chunks[i].astype(np.float64),
            sr=sr,
            n_fft=fe.n_fft,
            hop_length=fe.hop_length,
            win_length=fe.win_length,
            center=fe.center,
            pad_mode=fe.pad_mode,
            power=fe.power,
            n_mels=fe.n_mels,
            fmin=fe.fmin,
            fmax=fe.fmax,
            htk=False,
            norm="slaney",
        )
        ref = librosa.power_to_db(mel, ref=fe.ref, amin=fe.amin, top_db=fe.top_db)
        assert float(np.abs(ours[i] - ref).max()) <= DB_TOLERANCE


def test_top_db_clamps_each_chunk_on_its_own(reference_config: TrainingConfig) -> None:
    fe = LogMelFrontend(reference_config.frontend, reference_config.audio.sample_rate)
    signals = generated_signals(reference_config.audio.sample_rate, reference_config.audio.chunk_samples)
    quiet = (1e-3 * signals["tone_1k"]).astype(np.float32)
    loud = signals["full_scale_noise"].astype(np.float32)
    alone = fe(quiet[None])[0]
    batched = fe(np.stack([loud, quiet]))[1]
    np.testing.assert_array_equal(alone, batched)  # the loud neighbour changes nothing
    clamped = fe(signals["clamped"].astype(np.float32)[None])[0]
    assert np.isclose(clamped.min(), clamped.max() - 80.0, atol=1e-3)  # the clamp is active


def test_silence_and_empty_bands_are_finite(reference_config: TrainingConfig) -> None:
    fe = LogMelFrontend(reference_config.frontend, reference_config.audio.sample_rate)
    out = fe(np.zeros((2, reference_config.audio.chunk_samples), np.float32))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, -100.0, atol=1e-4)  # 10 * log10(amin)
