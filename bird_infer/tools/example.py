"""A synthetic example soundscape, so that a fresh checkout can run the main job with no data.

Generated noise with one call of a synthetic species (:mod:`bird_infer.tools.synth`, the call types the
shipped demo folds were trained on) every 5-s row, in a fixed order, and the ground truth beside it
(``example_truth.csv`` in the same folder, submission format) so that ``bird-infer score`` can check the predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bird_infer.tools.synth import CALL_TYPES, ROW_S, SAMPLE_RATE, Backgrounds, make_call, write_blocks

CLIP_S = round(ROW_S)  # whole seconds: row ids end in integers
SNR_DB = 15.0


def synth_soundscape(
    seconds: float = 30.0, sample_rate: int = SAMPLE_RATE, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Mono float32 in [-1, 1], and the species called in each 5-s row (one call per row, mid-row)."""
    rng = np.random.default_rng(seed)
    bg = Backgrounds([], sample_rate, rng)
    n = int(seconds * sample_rate)
    x = bg.get(n)
    labels = list(CALL_TYPES)
    called = []
    for row in range(int(seconds // CLIP_S)):
        label = labels[row % len(labels)]
        call = make_call(label, rng, sample_rate).astype(np.float64)
        start = int((row * CLIP_S + 1.5) * sample_rate)
        gain = bg.rms * 10 ** (SNR_DB / 20) / np.sqrt(np.mean(call**2))
        x[start : start + call.size] += gain * call[: n - start]
        called.append(label)
    return np.clip(x, -1, 1).astype(np.float32), called


def write_example(folder: str | Path, seconds: float = 30.0, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write ``example_soundscape.ogg`` and ``example_truth.csv`` into ``folder``; return the audio's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "example_soundscape.ogg"
    x, called = synth_soundscape(seconds, sample_rate)
    write_blocks(path, x, sample_rate)
    labels = list(CALL_TYPES)
    truth = pd.DataFrame([[int(lab == c) for lab in labels] for c in called], columns=labels)
    truth.insert(0, "row_id", [f"{path.stem}_{CLIP_S * (i + 1)}" for i in range(len(called))])
    truth.to_csv(folder / "example_truth.csv", index=False)  # not an audio file: predict skips it
    return path
