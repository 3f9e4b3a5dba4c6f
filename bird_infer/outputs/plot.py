"""``bird-infer plot``: one picture of a file, what the models saw and what they said.

Top: the log-mel spectrogram the models saw (the bundle's first log-mel member's front-end, row by row, at
its sample rate; a bundle of waveform members only gets a plain 128-band log-mel), time in seconds, frequency
in Hz. Bottom: the ``top`` labels (highest probability anywhere in the file) as a heatmap, one line per label,
one cell per row. matplotlib (the ``[field]`` extra), drawn on a :class:`~matplotlib.figure.Figure` of its own
and saved with ``Figure.savefig``: the caller's matplotlib backend and pyplot state are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import RowReader, WindowSpec
from bird_infer.audio.logmel import LogMelFrontend, hz_to_mel
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.extras import import_extra
from bird_infer.contract.schema import AudioConfig, FrontendConfig

WIDTH_PX, HEIGHT_PX, DPI = 1400, 700, 100
MAX_COLUMNS = 4000
"""Spectrogram columns drawn at most: longer files are max-pooled in time (a call stays visible)."""


@dataclass(frozen=True)
class PlotResult:
    path: Path
    heat_labels: tuple[str, ...]
    """The heatmap's rows, top to bottom, as drawn (names from the manifest, else labels)."""
    top_labels: tuple[str, ...]
    """The bundle labels of those rows."""
    size_px: tuple[int, int]


def display_frontend(manifest: Manifest) -> tuple[FrontendConfig, AudioConfig]:
    """The front-end drawn: the first log-mel member's, else a plain one at the first member's rate."""
    for m in manifest.members:
        if m.frontend is not None:
            return m.frontend, m.audio
    audio = manifest.members[0].audio
    sr = audio.sample_rate
    fe = FrontendConfig(
        n_fft=1024,
        win_length=1024,
        hop_length=max(1, sr // 100),
        window="hann",
        center=True,
        pad_mode="reflect",
        n_mels=128,
        fmin=0.0,
        fmax=sr / 2,
        power=2.0,
        mel_scale="slaney",
        mel_norm="slaney",
        amin=1e-10,
        ref=1.0,
        top_db=80.0,
        normalize="none",
    )
    return fe, audio


def spectrogram(path: str | Path, manifest: Manifest) -> tuple[np.ndarray, float, FrontendConfig]:
    """The file's log-mel, row after row: (n_mels, columns) float32, seconds per column, the front-end.
    Columns beyond :data:`MAX_COLUMNS` are max-pooled."""
    fe, audio = display_frontend(manifest)
    row_samples = round(audio.sample_rate * manifest.row_s)
    spec = WindowSpec(audio.sample_rate, row_samples, audio.resampler)
    frontend = LogMelFrontend(fe, audio.sample_rate)
    per_row = max(1, row_samples // fe.hop_length)
    parts = []
    for _first, windows in RowReader(path, [spec], manifest.row_s):
        feats = frontend(windows[spec])[:, :, :per_row]  # (k, n_mels, per_row): rows tile the file
        parts.append(np.concatenate(list(feats), axis=1))
    image = np.concatenate(parts, axis=1)
    pool = max(1, -(-image.shape[1] // MAX_COLUMNS))
    if pool > 1:
        cut = image.shape[1] - image.shape[1] % pool
        image = image[:, :cut].reshape(image.shape[0], -1, pool).max(axis=2)
    return image, pool * fe.hop_length / audio.sample_rate, fe


def top_labels(probs: np.ndarray, labels: tuple[str, ...], top: int) -> list[int]:
    """Indices of the ``top`` labels by their highest probability in the file (ties: label order)."""
    peak = np.asarray(probs, dtype=np.float64).max(axis=0)
    order = sorted(range(len(labels)), key=lambda k: (-peak[k], k))
    return order[: min(top, len(labels))]


def plot_file(path: str | Path, manifest: Manifest, probs: np.ndarray, out: str | Path, top: int = 5) -> PlotResult:
    """Draw ``path``'s spectrogram and its ``top`` labels' probabilities (``probs``: (n_rows, n_labels), the
    file's rows as predicted) into the PNG ``out``."""
    figure = import_extra("matplotlib.figure", "plotting")
    image, col_s, fe = spectrogram(path, manifest)
    n_rows = probs.shape[0]
    idx = top_labels(probs, manifest.labels, top)
    shown = [manifest.species_name(manifest.labels[k]).common for k in idx]
    fig = figure.Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    fig.subplots_adjust(left=0.16)  # room for long common names
    spec_ax, heat_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, max(1.2, 0.35 * len(idx))]})
    duration = image.shape[1] * col_s
    spec_ax.imshow(image, origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, fe.n_mels))
    mels = np.linspace(hz_to_mel(np.array([fe.fmin]), fe.mel_scale)[0], hz_to_mel(np.array([fe.fmax]), fe.mel_scale)[0])
    ticks_hz = [f for f in (100, 500, 1000, 2000, 4000, 8000, 12000, 16000, 24000) if fe.fmin <= f <= fe.fmax]
    positions = np.interp(hz_to_mel(np.array(ticks_hz, dtype=float), fe.mel_scale), mels, np.linspace(0, fe.n_mels, 50))
    spec_ax.set_yticks(positions, [str(f) for f in ticks_hz])
    spec_ax.set_ylabel("frequency (Hz)")
    spec_ax.set_title(
        f"{Path(path).name}: log-mel as the models saw it ({fe.n_mels} bands, {fe.fmin:g}-{fe.fmax:g} Hz)"
    )
    heat = np.asarray(probs[:, idx], dtype=np.float32).T
    im = heat_ax.imshow(
        heat, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, extent=(0, n_rows * manifest.row_s, len(idx), 0)
    )
    heat_ax.set_yticks(np.arange(len(idx)) + 0.5, shown)
    heat_ax.set_xlabel("time (s)")
    heat_ax.set_xlim(0, max(duration, n_rows * manifest.row_s))
    fig.colorbar(im, ax=[spec_ax, heat_ax], label="probability", fraction=0.025, pad=0.01)
    fig.savefig(out, format="png", metadata={"Software": None})
    drawn = tuple(t.get_text() for t in heat_ax.get_yticklabels())
    return PlotResult(Path(out), drawn, tuple(manifest.labels[k] for k in idx), (WIDTH_PX, HEIGHT_PX))
