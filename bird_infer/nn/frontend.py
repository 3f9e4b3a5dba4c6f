"""Torch log-mel front-end for training code, built from the same manifest fields as the numpy one.

Put ``TorchLogMel(frontend_config, sample_rate)`` in front of the model in your training loop; the
exporter records the same ``FrontendConfig`` in the manifest, and inference reproduces it in numpy
(``bird_infer.frontend.LogMelFrontend``). Each step below has its twin there.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bird_infer.audio.logmel import NORMALIZE_EPS, mel_filterbank, stft_window
from bird_infer.contract.schema import FrontendConfig


class TorchLogMel(nn.Module):
    """Waveforms (batch, samples) float32 -> log-mel (batch, n_mels, frames) float32."""

    def __init__(self, fe: FrontendConfig, sample_rate: int) -> None:
        super().__init__()
        self.config = fe
        self.sample_rate = sample_rate
        self.register_buffer("window", torch.from_numpy(stft_window(fe)), persistent=False)
        self.register_buffer("mel_fb", torch.from_numpy(mel_filterbank(fe, sample_rate)), persistent=False)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        fe = self.config
        # torch.stft pads n_fft // 2 each side when center; the window is already n_fft long.
        spec = torch.stft(
            waves,
            n_fft=fe.n_fft,
            hop_length=fe.hop_length,
            win_length=fe.n_fft,
            window=self.window,
            center=fe.center,
            pad_mode=fe.pad_mode,
            return_complex=True,
        )  # (batch, n_freq, frames)
        if fe.power == 2.0:
            mag = spec.real * spec.real + spec.imag * spec.imag
        else:
            mag = spec.abs()
        mel = torch.matmul(self.mel_fb, mag)  # (batch, n_mels, frames)
        db = fe.db_multiplier * torch.log10(torch.clamp(mel, min=fe.amin))
        db = db - fe.db_multiplier * math.log10(max(fe.amin, fe.ref))
        if fe.top_db is not None and fe.top_db_ref == "batch":
            # torchaudio's AmplitudeToDB on a 3-D batch: one maximum per run of batch_rows chunks
            groups = [g.clamp(min=float(g.amax()) - fe.top_db) for g in db.split(fe.batch_rows)]
            return torch.cat([self._normalize(g) for g in groups])
        if fe.top_db is not None:
            # Per chunk, not per batch: torchaudio's AmplitudeToDB would clamp a 3-D batch as one.
            floor = db.amax(dim=(1, 2), keepdim=True) - fe.top_db
            db = torch.maximum(db, floor)
        return self._normalize(db)

    def _normalize(self, db: torch.Tensor) -> torch.Tensor:
        mode = self.config.normalize
        if mode == "none":
            return db
        if mode == "minmax":
            lo = db.amin(dim=(1, 2), keepdim=True)
            hi = db.amax(dim=(1, 2), keepdim=True)
            return (db - lo) / torch.clamp(hi - lo, min=NORMALIZE_EPS)
        mean = db.mean(dim=(1, 2), keepdim=True)
        std = db.std(dim=(1, 2), keepdim=True, correction=self.config.std_ddof)
        return (db - mean) / (std + NORMALIZE_EPS)
