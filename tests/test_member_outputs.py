"""A member's two outputs mixed, and frame positions averaged over overlapping windows then maxed per row (issue
28), against references computed window by window with ONNX Runtime: 20-s windows every 5 s, 80 frames each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from bird_infer.tools.add_member import MemberRequest, add_member
from bird_infer.tools.bundle_folder import new_bundle
from tests.standins import framewise_standin

SR = 32000
WINDOW_S, FRAMES, LABELS = 20.0, 80, ["amerob", "norcar", "bkcchi"]
SECONDS = {"a.wav": 37.0, "b.wav": 4.0}


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mix_audio")
    rng = np.random.default_rng(4)
    for k, (name, secs) in enumerate(SECONDS.items()):
        t = np.arange(int(secs * SR)) / SR
        gate = (np.sin(2 * np.pi * 0.13 * (k + 1) * t) > 0.2).astype(np.float32)
        x = 0.3 * gate * np.sin(2 * np.pi * 2100 * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(folder / name, x.astype(np.float32), SR)
    return folder


def _bundle(folder: Path, audio: Path, ensemble: dict) -> Path:
    onnx_file = framewise_standin(folder.parent / f"{folder.name}.onnx", len(LABELS), int(WINDOW_S * SR), FRAMES)
    new_bundle(folder, LABELS)
    add_member(
        folder,
        MemberRequest(onnx=onnx_file, name="sed", output="frames", framewise=True, time_axis=1, window_s=WINDOW_S),
        [audio],
    )
    data = json.loads((folder / "manifest.json").read_text())
    member = data["members"][0]
    member["ensemble"].update(ensemble)
    member["folds"][0]["segmentwise"] = {"name": "frames", "shape": ["batch", FRAMES, len(LABELS)]}
    member["folds"][0]["clipwise"] = {"name": "clip", "shape": ["batch", len(LABELS)]}
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def _windows(path: Path) -> tuple[np.ndarray, int]:
    """Each row's 20-s window centred on it, zero-padded past the file's ends."""
    x, _ = sf.read(path, dtype="float32")
    rows = max(1, math.ceil(len(x) / (5 * SR) - 1e-9))
    half = int(WINDOW_S * SR) // 2
    padded = np.concatenate([np.zeros(half, np.float32), x, np.zeros(rows * 5 * SR + half, np.float32)])
    starts = [int((r + 0.5) * 5 * SR) for r in range(rows)]
    return np.stack([padded[s : s + 2 * half] for s in starts]), rows


def test_clip_and_frame_max_mixed(audio, tmp_path) -> None:
    b = _bundle(tmp_path / "mix", audio, {"output": "clip_segment_mix", "mix": 0.3})
    got = pd.read_csv(run_predict(audio, b, tmp_path / "s.csv", options=RunOptions(workers=1)).out_path)
    sess = ort.InferenceSession(str(tmp_path / "mix.onnx"), providers=["CPUExecutionProvider"])
    want = []
    for name in SECONDS:
        w, _rows = _windows(audio / name)
        frames, clip = sess.run(["frames", "clip"], {"wave": w})
        want.append(0.7 * clip.astype(np.float64) + 0.3 * frames.max(axis=1))
    want = np.concatenate(want)
    worst = float(np.abs(got.iloc[:, 1:].to_numpy() - want).max())
    print(f"0.7 clip-wise + 0.3 max over frames: max |csv - reference| = {worst:.3g}")
    assert worst <= 1e-5


def test_frame_positions_averaged_over_windows_then_maxed_per_row(audio, tmp_path) -> None:
    b = _bundle(tmp_path / "pos", audio, {"output": "framewise", "frame_reduce": "position_mean_max", "time_axis": 1})
    got = pd.read_csv(run_predict(audio, b, tmp_path / "s.csv", options=RunOptions(workers=1)).out_path)
    sess = ort.InferenceSession(str(tmp_path / "pos.onnx"), providers=["CPUExecutionProvider"])
    dt = WINDOW_S / FRAMES
    want = []
    for name in SECONDS:
        w, rows = _windows(audio / name)
        frames = sess.run(["frames"], {"wave": w})[0].astype(np.float64)  # (rows, 80, L)
        sums: dict[int, list[np.ndarray]] = {}
        for r in range(rows):
            start = (r + 0.5) * 5.0 - WINDOW_S / 2
            for j in range(FRAMES):
                centre = start + (j + 0.5) * dt
                if centre >= 0:
                    sums.setdefault(math.floor(centre / dt + 1e-9), []).append(frames[r, j])
        for r in range(rows):
            positions = [k for k in sums if math.floor((k + 0.5) * dt / 5.0 + 1e-9) == r]
            want.append(np.max([np.mean(sums[k], axis=0) for k in positions], axis=0))
    worst = float(np.abs(got.iloc[:, 1:].to_numpy() - np.array(want)).max())
    print(f"frame positions averaged over 20-s windows, then the row's max: max |csv - reference| = {worst:.3g}")
    assert worst <= 1e-5
    split = run_predict(audio, b, tmp_path / "split.csv", options=RunOptions(workers=4, block_chunks=2))
    assert split.out_path.read_bytes() == (tmp_path / "s.csv").read_bytes()
