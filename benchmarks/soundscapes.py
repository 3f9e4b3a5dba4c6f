"""Ten-minute 32 kHz benchmark soundscapes, tiled from real recordings (or generated noise when absent).

The recordings in ``../shared/data/audio`` are read at benchmark time, never copied into the project.
Files are written as ogg (what BirdCLEF ships) in 10-second blocks: libsndfile can fail writing a
10-minute ogg in one call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from bird_infer.audio.decode import read_chunks
from bird_infer.audio.files import find_audio_files
from bird_infer.contract.schema import AudioConfig

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "data" / "audio"
BLOCK_S = 10


def source_material(audio: AudioConfig, root: Path = SHARED_AUDIO, max_s: float = 300.0) -> np.ndarray:
    """Up to ``max_s`` seconds of real audio at the manifest's rate, as one float32 array.

    Falls back to pink-ish generated noise with tone bursts when the recordings are absent.
    """
    paths = find_audio_files(root) if root.is_dir() else []
    parts: list[np.ndarray] = []
    total = 0
    for p in paths:
        chunk = read_chunks(p, audio).reshape(-1)
        parts.append(chunk)
        total += chunk.size
        if total >= max_s * audio.sample_rate:
            break
    if parts:
        return np.concatenate(parts)
    rng = np.random.default_rng(0)
    n = int(60 * audio.sample_rate)
    noise = np.cumsum(rng.standard_normal(n)).astype(np.float32)
    noise -= np.convolve(noise, np.ones(64) / 64, mode="same")
    t = np.arange(n) / audio.sample_rate
    bursts = np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 0.5 * t) > 0.9)
    x = 0.05 * noise / (np.abs(noise).max() + 1e-9) + 0.2 * bursts
    return x.astype(np.float32)


def write_soundscapes(folder: Path, n: int, audio: AudioConfig, seconds: int = 600, seed: int = 0) -> list[Path]:
    """``n`` soundscapes of ``seconds`` each (kept when already there with the right length)."""
    folder.mkdir(parents=True, exist_ok=True)
    sr = audio.sample_rate
    material = None
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"soundscape_{i:03d}.ogg"
        paths.append(path)
        if path.exists():
            try:
                if sf.info(str(path)).frames == seconds * sr:
                    continue
            except sf.LibsndfileError:
                pass
        if material is None:
            material = source_material(audio)
        with sf.SoundFile(str(path), "w", sr, 1, format="OGG", subtype="VORBIS") as f:
            for _ in range(seconds // BLOCK_S):
                start = int(rng.integers(0, max(1, material.size - BLOCK_S * sr)))
                block = material[start : start + BLOCK_S * sr]
                block = np.pad(block, (0, BLOCK_S * sr - block.size))
                f.write(np.clip(block * rng.uniform(0.5, 1.5), -1, 1).astype(np.float32))
    return paths
