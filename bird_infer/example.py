"""A synthetic example soundscape, so that a fresh checkout can run the main job with no data.

Background noise with FM sweeps, trills and harmonic calls at known times. Not a bird, and the
shipped seeded-random folds will not recognise anything in it: it exists to exercise the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

BLOCK_S = 10  # libsndfile can crash encoding a long ogg in one call: write in blocks


def synth_soundscape(seconds: float = 30.0, sample_rate: int = 32000, seed: int = 0) -> np.ndarray:
    """Mono float32 in [-1, 1]: brownish noise plus a call every few seconds."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    noise = np.cumsum(rng.standard_normal(n)) * 1e-3
    noise -= np.convolve(noise, np.ones(512) / 512, mode="same")  # remove the drift, keep the rumble
    x = 0.02 * noise / (np.abs(noise).max() + 1e-9) + 0.003 * rng.standard_normal(n)
    t_call = np.arange(int(0.6 * sample_rate)) / sample_rate
    envelope = np.hanning(t_call.size)
    calls = [
        np.sin(2 * np.pi * (2000 * t_call + 3000 * t_call**2)),  # up-sweep
        np.sin(2 * np.pi * 4000 * t_call + 20 * np.sin(2 * np.pi * 25 * t_call)),  # trill
        sum(np.sin(2 * np.pi * k * 900 * t_call) / k for k in range(1, 5)),  # harmonic stack
    ]
    for i, start_s in enumerate(np.arange(1.0, seconds - 1.0, 3.7)):
        start = int(start_s * sample_rate)
        call = 0.2 * envelope * calls[i % len(calls)]
        x[start : start + call.size] += call[: n - start]
    return np.clip(x, -1, 1).astype(np.float32)


def write_example(folder: str | Path, seconds: float = 30.0, sample_rate: int = 32000) -> Path:
    """Write ``example_soundscape.ogg`` into ``folder`` and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "example_soundscape.ogg"
    x = synth_soundscape(seconds, sample_rate)
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, format="OGG", subtype="VORBIS") as f:
        for start in range(0, x.size, BLOCK_S * sample_rate):
            f.write(x[start : start + BLOCK_S * sample_rate])
    return path
