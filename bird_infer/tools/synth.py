"""A synthetic call corpus: call types as "species", mixed at known times and levels over backgrounds.

Each species is one call type (FM sweeps, trills, harmonic stacks, clicks...) whose frequencies and
durations vary by +-10-15% from call to call. The generator writes

- **training clips** in the BirdCLEF layout: ``train_audio/<label>/<label>_<n>.ogg`` and
  ``train_metadata.csv`` (``primary_label``, ``secondary_labels``, ``filename``);
- **test soundscapes**: ``soundscapes/<name>.ogg``, the ground truth in submission format
  (``truth.csv``: ``row_id`` then one 0/1 column per label) and every call placed (``events.csv``).

A call belongs to the 5-s row that holds its midpoint. Backgrounds are random stretches of real
recordings (``../shared/data/audio`` when present, resampled to the corpus rate) or generated noise;
each call is mixed at a signal-to-noise ratio drawn from ``snr_db``. Numpy only: no torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from bird_infer.audio.decode import read_chunks
from bird_infer.audio.files import find_audio_files
from bird_infer.contract.schema import AudioConfig

log = logging.getLogger(__name__)

SAMPLE_RATE = 32_000
"""Hz: the corpus's rate, and the shipped demo folds'."""
ROW_S = 5.0
"""Seconds per row of the soundscapes' truth (a call belongs to the row holding its midpoint)."""
WRITE_BLOCK_S = 10  # libsndfile can fail writing a long ogg in one call


def _env(n: int, attack: float = 0.1) -> np.ndarray:
    """A smooth on/off envelope over ``n`` samples (raised-cosine attack and release)."""
    a = max(1, int(n * attack))
    env = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, a))
    env[:a] = ramp
    env[-a:] = ramp[::-1]
    return env


def _sweep(f0: float, f1: float, dur: float, sr: int) -> np.ndarray:
    n = int(dur * sr)
    f = np.linspace(f0, f1, n)
    return np.sin(2 * np.pi * np.cumsum(f) / sr) * _env(n)


def _tone(f: np.ndarray | float, dur: float, sr: int) -> np.ndarray:
    n = int(dur * sr)
    f = np.broadcast_to(np.asarray(f, dtype=float), (n,))
    return np.sin(2 * np.pi * np.cumsum(f) / sr)


CallFn = Callable[[np.random.Generator, int], np.ndarray]


def _j(rng: np.random.Generator, x: float, spread: float = 0.1) -> float:
    """``x`` jittered by +-``spread`` (uniform, relative)."""
    return x * rng.uniform(1 - spread, 1 + spread)


def upsweep(rng, sr):
    return _sweep(_j(rng, 2000), _j(rng, 5000), _j(rng, 0.4, 0.15), sr)


def downsweep(rng, sr):
    return _sweep(_j(rng, 6000), _j(rng, 3000), _j(rng, 0.4, 0.15), sr)


def trill(rng, sr):
    dur, rate = _j(rng, 0.8, 0.15), _j(rng, 25)
    t = np.arange(int(dur * sr)) / sr
    return _tone(_j(rng, 4000), dur, sr) * (0.5 + 0.5 * np.sin(2 * np.pi * rate * t)) ** 4 * _env(t.size)


def harmonic(rng, sr):
    dur, f0 = _j(rng, 0.6, 0.15), _j(rng, 800)
    x = sum(_tone(f0 * k, dur, sr) / k for k in range(1, 6))
    return x * _env(int(dur * sr))


def clicks(rng, sr):
    dur, rate = _j(rng, 0.8, 0.15), _j(rng, 12)
    x = np.zeros(int(dur * sr))
    click = rng.standard_normal(int(0.002 * sr)) * np.hanning(int(0.002 * sr))
    for start in np.arange(0, dur - 0.01, 1 / rate):
        i = int(start * sr)
        x[i : i + click.size] += click[: x.size - i]
    return x


def warble(rng, sr):
    dur, fc, rate = _j(rng, 0.8, 0.15), _j(rng, 3000), _j(rng, 8)
    t = np.arange(int(dur * sr)) / sr
    return _tone(fc + 800 * np.sin(2 * np.pi * rate * t), dur, sr) * _env(t.size)


def twonote(rng, sr):
    d = _j(rng, 0.15)
    gap = np.zeros(int(0.05 * sr))
    a = _tone(_j(rng, 3500), d, sr) * _env(int(d * sr))
    b = _tone(_j(rng, 2500), d, sr) * _env(int(d * sr))
    return np.concatenate([a, gap, b])


def buzz(rng, sr):
    dur = _j(rng, 0.5, 0.15)
    n = int(dur * sr)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    lo = _j(rng, 7000)
    spec[(f < lo) | (f > lo + 2000)] = 0
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-9) * _env(n)


def chirps(rng, sr):
    d, gap = _j(rng, 0.05), np.zeros(int(_j(rng, 0.07) * sr))
    parts = []
    for _ in range(4):
        parts += [_sweep(_j(rng, 5000, 0.05), _j(rng, 7000, 0.05), d, sr), gap]
    return np.concatenate(parts)


def hoot(rng, sr):
    dur, f = _j(rng, 0.7, 0.15), _j(rng, 450)
    t = np.arange(int(dur * sr)) / sr
    return _tone(f * (1 + 0.03 * np.sin(2 * np.pi * 5 * t)), dur, sr) * _env(t.size, 0.2)


def downtrill(rng, sr):
    d, gap = _j(rng, 0.04), np.zeros(int(0.02 * sr))
    f0 = _j(rng, 7000)
    parts = []
    for k in range(8):
        f = f0 * (4000 / 7000) ** (k / 7)
        parts += [_tone(f, d, sr) * _env(int(d * sr)), gap]
    return np.concatenate(parts)


def whistle(rng, sr):
    dur = _j(rng, 0.5, 0.15)
    return _tone(_j(rng, 10000, 0.05), dur, sr) * _env(int(dur * sr), 0.2)


CALL_TYPES: dict[str, CallFn] = {
    "syn_upsweep": upsweep,
    "syn_downsweep": downsweep,
    "syn_trill": trill,
    "syn_harmonic": harmonic,
    "syn_clicks": clicks,
    "syn_warble": warble,
    "syn_twonote": twonote,
    "syn_buzz": buzz,
    "syn_chirps": chirps,
    "syn_hoot": hoot,
    "syn_downtrill": downtrill,
    "syn_whistle": whistle,
}
"""The synthetic species, in label order."""


def make_call(label: str, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One call of ``label``, float32, peak 1."""
    x = CALL_TYPES[label](rng, sr)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


@dataclass(frozen=True)
class CorpusSpec:
    """What to generate."""

    labels: tuple[str, ...] = tuple(CALL_TYPES)
    clips_per_label: int = 40
    clip_s: tuple[float, float] = (5.0, 8.0)
    """Training clip lengths (uniform): longer than 5 s, so training crops."""
    calls_per_clip: tuple[int, int] = (1, 3)
    secondary_p: float = 0.2
    """Chance that a training clip also holds one call of another species (a secondary label)."""
    snr_db: tuple[float, float] = (0.0, 20.0)
    soundscapes: int = 4
    soundscape_s: int = 600
    calls_per_minute: float = 12.0
    sample_rate: int = SAMPLE_RATE


class Backgrounds:
    """Random stretches of background audio at the corpus rate, each scaled to RMS ``rms``."""

    def __init__(self, sources: list[Path], sample_rate: int, rng: np.random.Generator, rms: float = 0.02) -> None:
        self.rng = rng
        self.rms = rms
        self.sample_rate = sample_rate
        self.material: np.ndarray | None = None
        parts = []
        if sources:
            cfg = AudioConfig(sample_rate=sample_rate, clip_s=ROW_S)
            files = sorted(p for s in sources for p in find_audio_files(s))
            for p in files:
                parts.append(read_chunks(p, cfg).reshape(-1))
        if parts:
            self.material = np.concatenate(parts)
            log.info("backgrounds: %.0f s of real audio from %d files", self.material.size / sample_rate, len(parts))

    def get(self, n: int) -> np.ndarray:
        if self.material is None or self.material.size < n:
            x = np.cumsum(self.rng.standard_normal(n + 256))  # brown-ish noise, high-passed
            x = x[256:] - np.convolve(x, np.ones(256) / 256, mode="same")[256:]
        else:
            start = int(self.rng.integers(0, self.material.size - n + 1))
            x = self.material[start : start + n].astype(np.float64)
        rms = np.sqrt(np.mean(x**2)) + 1e-12
        return x / rms * self.rms


def _place(mix: np.ndarray, call: np.ndarray, start: int, snr_db: float, noise_rms: float) -> None:
    gain = noise_rms * 10 ** (snr_db / 20) / (np.sqrt(np.mean(call**2)) + 1e-12)
    end = min(mix.size, start + call.size)
    mix[start:end] += gain * call[: end - start]


def write_blocks(path: Path, x: np.ndarray, sr: int) -> None:
    """Mono ``x`` as Ogg Vorbis, :data:`WRITE_BLOCK_S` seconds per libsndfile call (one call can fail on long
    files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = WRITE_BLOCK_S * sr
    with sf.SoundFile(str(path), "w", sr, 1, format="OGG", subtype="VORBIS") as f:
        for i in range(0, x.size, block):
            f.write(x[i : i + block].astype(np.float32))


def _write(path: Path, x: np.ndarray, sr: int) -> None:
    peak = np.abs(x).max()
    write_blocks(path, x * (0.9 / peak) if peak > 0.9 else x, sr)


def write_training_clips(out: Path, spec: CorpusSpec, backgrounds: Backgrounds, rng: np.random.Generator) -> Path:
    """``out/train_audio/<label>/*.ogg`` and ``out/train_metadata.csv``; returns the CSV's path."""
    sr = spec.sample_rate
    rows = []
    for label in spec.labels:
        for k in range(spec.clips_per_label):
            n = int(rng.uniform(*spec.clip_s) * sr)
            mix = backgrounds.get(n)
            for _ in range(int(rng.integers(spec.calls_per_clip[0], spec.calls_per_clip[1] + 1))):
                call = make_call(label, rng, sr)
                _place(
                    mix, call, int(rng.integers(0, max(1, n - call.size))), rng.uniform(*spec.snr_db), backgrounds.rms
                )
            secondary = []
            if rng.random() < spec.secondary_p:
                other = str(rng.choice([x for x in spec.labels if x != label]))
                call = make_call(other, rng, sr)
                _place(
                    mix, call, int(rng.integers(0, max(1, n - call.size))), rng.uniform(*spec.snr_db), backgrounds.rms
                )
                secondary.append(other)
            rel = f"{label}/{label}_{k:04d}.ogg"
            _write(out / "train_audio" / rel, mix, sr)
            rows.append({"primary_label": label, "secondary_labels": str(secondary), "filename": rel})
    path = out / "train_metadata.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_soundscapes(
    out: Path, spec: CorpusSpec, backgrounds: Backgrounds, rng: np.random.Generator, clip_s: float = ROW_S
) -> Path:
    """``out/soundscapes/*.ogg``, ``out/truth.csv`` (submission format, 0/1) and ``out/events.csv``."""
    sr = spec.sample_rate
    n_rows = int(spec.soundscape_s // clip_s)
    truth_rows, events = [], []
    for s in range(spec.soundscapes):
        name = f"synth_soundscape_{s:03d}"
        n = int(spec.soundscape_s * sr)
        mix = backgrounds.get(n)
        truth = np.zeros((n_rows, len(spec.labels)), dtype=np.int8)
        n_calls = rng.poisson(spec.calls_per_minute * spec.soundscape_s / 60)
        for _ in range(n_calls):
            j = int(rng.integers(len(spec.labels)))
            call = make_call(spec.labels[j], rng, sr)
            start = int(rng.integers(0, n - call.size))
            snr = float(rng.uniform(*spec.snr_db))
            _place(mix, call, start, snr, backgrounds.rms)
            mid_s = (start + call.size / 2) / sr
            truth[min(n_rows - 1, int(mid_s // clip_s)), j] = 1
            events.append(
                {
                    "soundscape": name,
                    "label": spec.labels[j],
                    "start_s": round(start / sr, 3),
                    "end_s": round((start + call.size) / sr, 3),
                    "snr_db": round(snr, 1),
                }
            )
        _write(out / "soundscapes" / f"{name}.ogg", mix, sr)
        for r in range(n_rows):
            truth_rows.append([f"{name}_{int((r + 1) * clip_s)}", *truth[r].tolist()])
    pd.DataFrame(events).to_csv(out / "events.csv", index=False)
    path = out / "truth.csv"
    pd.DataFrame(truth_rows, columns=["row_id", *spec.labels]).to_csv(path, index=False)
    return path


def write_corpus(
    out: str | Path,
    spec: CorpusSpec,
    background_sources: list[Path] | None = None,
    seed: int = 0,
    clips: bool = True,
    soundscapes: bool = True,
) -> Path:
    """Training clips and/or test soundscapes under ``out``, plus ``labels.txt``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    backgrounds = Backgrounds(list(background_sources or []), spec.sample_rate, rng)
    (out / "labels.txt").write_text("\n".join(spec.labels) + "\n", encoding="utf-8")
    if clips:
        write_training_clips(out, spec, backgrounds, rng)
    if soundscapes:
        write_soundscapes(out, spec, backgrounds, rng)
    return out
