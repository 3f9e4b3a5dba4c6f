"""The recipe's augmentations: waveform mixup, gaussian and uniform noise, pitch shift, background-noise
mixing (on waveforms), and SpecAugment (on the log-mel).

Waveform augmentations act on one clip, (n_samples,) float32, in numpy; pitch shift is librosa's
(phase vocoder + resampling, length kept). Mixup and SpecAugment act on torch batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges. Set a probability to 0 to switch an augmentation off."""

    mixup_p: float = 0.5
    """Chance that a batch is mixed: each clip with a random other clip of the batch."""
    mixup_alpha: float = 5.0
    """Mixing weight ~ Beta(alpha, alpha); the target is the union (max) of both clips' targets."""
    gaussian_p: float = 0.3
    gaussian_snr_db: tuple[float, float] = (10.0, 30.0)
    uniform_p: float = 0.2
    uniform_amplitude: tuple[float, float] = (0.001, 0.01)
    pitch_p: float = 0.15
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    background_p: float = 0.5
    background_snr_db: tuple[float, float] = (3.0, 30.0)
    specaug_p: float = 0.5
    freq_masks: int = 2
    freq_mask_bins: int = 24
    time_masks: int = 2
    time_mask_frames: int = 40

    @classmethod
    def off(cls) -> AugmentConfig:
        """Every augmentation switched off."""
        return cls(mixup_p=0, gaussian_p=0, uniform_p=0, pitch_p=0, background_p=0, specaug_p=0)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-9)


def add_gaussian_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White gaussian noise at ``snr_db`` below the clip's RMS."""
    noise = rng.standard_normal(x.size) * _rms(x) / 10 ** (snr_db / 20)
    return (x + noise).astype(np.float32)


def add_uniform_noise(x: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise in [-amplitude, amplitude] (absolute, like a noise floor)."""
    return (x + rng.uniform(-amplitude, amplitude, x.size)).astype(np.float32)


def pitch_shift(x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
    """Shift pitch by ``semitones`` keeping the length (librosa.effects.pitch_shift)."""
    import librosa

    return librosa.effects.pitch_shift(x.astype(np.float32), sr=sample_rate, n_steps=semitones).astype(np.float32)


def mix_background(x: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``background`` (same length) scaled to ``snr_db`` below the clip's RMS."""
    if background.size != x.size:
        raise ValueError(f"background has {background.size} samples, the clip {x.size}")
    return (x + background * (_rms(x) / _rms(background) / 10 ** (snr_db / 20))).astype(np.float32)


def augment_wave(
    x: np.ndarray, sample_rate: int, cfg: AugmentConfig, rng: np.random.Generator, background: np.ndarray | None = None
) -> np.ndarray:
    """All waveform augmentations, each applied with its probability, in a fixed order."""
    if cfg.pitch_p and rng.random() < cfg.pitch_p:
        x = pitch_shift(x, sample_rate, float(rng.uniform(*cfg.pitch_semitones)))
    if background is not None and cfg.background_p and rng.random() < cfg.background_p:
        x = mix_background(x, background, float(rng.uniform(*cfg.background_snr_db)))
    if cfg.gaussian_p and rng.random() < cfg.gaussian_p:
        x = add_gaussian_noise(x, float(rng.uniform(*cfg.gaussian_snr_db)), rng)
    if cfg.uniform_p and rng.random() < cfg.uniform_p:
        x = add_uniform_noise(x, float(rng.uniform(*cfg.uniform_amplitude)), rng)
    return x


def mixup(
    waves: torch.Tensor, targets: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """waves (B, n) and targets (B, L): each clip mixed with a permuted partner, weight ~ Beta(alpha, alpha).

    The target is the union (element-wise max): both clips' calls are audible in the mix.
    """
    perm = torch.randperm(waves.shape[0], generator=generator)
    lam = torch.distributions.Beta(alpha, alpha).sample((waves.shape[0], 1))
    mixed = lam * waves + (1 - lam) * waves[perm]
    return mixed, torch.maximum(targets, targets[perm])


def spec_augment(feats: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """feats (B, n_mels, frames): random frequency and time bands set to each clip's mean, per clip."""
    out = feats.clone()
    b, n_mels, n_frames = out.shape
    fill = out.mean(dim=(1, 2))
    for i in range(b):
        if torch.rand((), generator=generator) >= cfg.specaug_p:
            continue
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, cfg.freq_mask_bins + 1, (), generator=generator))
            f0 = int(torch.randint(0, max(1, n_mels - w), (), generator=generator))
            out[i, f0 : f0 + w, :] = fill[i]
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, cfg.time_mask_frames + 1, (), generator=generator))
            t0 = int(torch.randint(0, max(1, n_frames - w), (), generator=generator))
            out[i, :, t0 : t0 + w] = fill[i]
    return out
