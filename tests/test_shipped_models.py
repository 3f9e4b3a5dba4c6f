"""The default bundle in models/: valid, the reference recipe, trained demo folds that find synthetic calls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.manifest import load_manifest
from bird_infer.export import non_portable_nodes
from bird_infer.runtime.ensemble import FoldEnsemble
from bird_infer.tools.synth import CALL_TYPES, Backgrounds, make_call
from tests.conftest import ROOT, TEST_AUDIO, real_audio_dir


@pytest.fixture(scope="module")
def shipped():
    return load_manifest(ROOT / "models")  # verifies every file's sha256 and interface


def test_manifest_describes_the_reference_recipe(shipped) -> None:
    fe = shipped.member().frontend
    assert (fe.n_fft, fe.win_length, fe.hop_length, fe.n_mels) == (1024, 1024, 320, 256)
    assert (fe.fmin, fe.fmax, fe.top_db) == (20.0, 14000.0, 80.0)
    assert shipped.member().audio.sample_rate == 32000 and shipped.member().audio.clip_s == 5
    assert len(shipped.member().folds) == 5 and shipped.member().model.backbone == "efficientnet_b0"
    assert "SYNTHETIC" in shipped.description  # say plainly what these models detect


def test_labels_are_the_synthetic_species(shipped) -> None:
    assert shipped.labels == tuple(CALL_TYPES)


def test_shipped_files_are_portable(shipped) -> None:
    for fold in shipped.member().folds:
        assert non_portable_nodes(shipped.fold_path(fold)) == []


def soundscape_with_calls(seconds: float, placed: list[tuple[str, float]], seed: int = 0) -> np.ndarray:
    """Background (real recordings when present) with each (label, start second) call at 15 dB SNR."""
    rng = np.random.default_rng(seed)
    sr = 32000
    bgs = Backgrounds([TEST_AUDIO], sr, rng)
    x = bgs.get(int(seconds * sr))
    for label, start_s in placed:
        call = make_call(label, rng, sr).astype(np.float64)
        gain = bgs.rms * 10 ** (15 / 20) / np.sqrt(np.mean(call**2))
        i = int(start_s * sr)
        x[i : i + call.size] += gain * call
    return x.astype(np.float32)


@pytest.mark.parametrize("label", list(CALL_TYPES))
def test_demo_folds_find_a_call_in_the_right_row(tmp_path, label) -> None:
    """One call at 12.3 s of a 30-s soundscape: its row (10-15 s) is where that species scores highest."""
    from bird_infer.jobs.predict import run_predict
    from bird_infer.run.options import RunOptions

    path = tmp_path / f"{label}.wav"
    sf.write(path, soundscape_with_calls(30.0, [(label, 12.3)], seed=7), 32000)
    out = tmp_path / "sub.csv"
    run_predict(path, ROOT / "models", out, options=RunOptions(in_process=True))
    df = pd.read_csv(out).set_index("row_id")
    probs = df[label]
    print(label, probs.round(3).tolist())
    assert probs.idxmax() == f"{label}_15"
    assert df.loc[f"{label}_15"].idxmax() == label  # and it is the top species of that row


def test_shipped_folds_respond_to_their_input(shipped) -> None:
    waves = np.stack([soundscape_with_calls(5.0, [(label, 1.0)], seed=1) for label in list(CALL_TYPES)[:8]])
    feats = LogMelFrontend(shipped.member().frontend, shipped.member().audio.sample_rate)(waves)
    per_fold = FoldEnsemble(shipped).fold_outputs(feats)  # (folds, chunks, labels)
    spread = (per_fold.max(axis=1) - per_fold.min(axis=1)).max(axis=1)
    print("output spread per fold:", np.round(spread, 3))
    assert (spread > 0.05).all()  # 500 times the 1e-4 parity tolerance


def test_shipped_models_give_the_fixture_bytes(tmp_path) -> None:
    """The CSV and error report of the shipped models on the test recordings (plus three bad entries) are the
    bytes the code before the layered package wrote (``python -m tests.parity``). Rounding of the last printed
    digit follows the CPU's vector extensions; on a CPU other than the fixture's, values are compared to 2e-6."""
    import io
    import json

    from tests.parity import BAD, FIXTURE, cpu_signature, fixture_rows, predict_into

    stems = {p.stem for p in real_audio_dir().rglob("*.wav")} | set(BAD)
    csv, report = predict_into(tmp_path)
    assert report.read_bytes() == (FIXTURE / "shipped_submission_errors.csv").read_bytes()
    want = fixture_rows((FIXTURE / "shipped_submission.csv").read_text(encoding="utf-8"), stems)
    same_cpu = json.loads((FIXTURE / "cpu.json").read_text()) == cpu_signature()
    if same_cpu:
        assert csv.read_text(encoding="utf-8") == want
        return
    got, ref = pd.read_csv(csv), pd.read_csv(io.StringIO(want))
    assert got.columns.tolist() == ref.columns.tolist() and got["row_id"].tolist() == ref["row_id"].tolist()
    labels = ref.columns[1:]
    assert np.abs(got[labels].to_numpy() - ref[labels].to_numpy()).max() <= 2e-6
