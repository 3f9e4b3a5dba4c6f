"""End to end: folders of soundscapes -> submission CSV, checked against a PyTorch reference pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.audio.decode import audio_info, read_chunks
from bird_infer.contract.errors import SubmissionFormatError
from bird_infer.contract.schema import PROB_MAX
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from bird_infer.runtime.sessions import SessionSettings
from tests.conftest import predict_cli, real_audio_dir, synthetic_chunks

TOLERANCE = 1e-4


def expected_rows(path: Path, clip_s: float = 5.0) -> int:
    info = audio_info(path)
    return max(1, math.ceil(info.frames / info.sample_rate / clip_s - 1e-9))


def torch_reference(paths: list[Path], manifest, models) -> np.ndarray:
    """torch front-end + torch folds, mean, clipped: what training-side code would predict."""
    torch = pytest.importorskip("torch")
    from bird_infer.nn.frontend import TorchLogMel

    fe = TorchLogMel(manifest.member().frontend, manifest.member().audio.sample_rate)
    rows = []
    with torch.no_grad():
        for p in paths:
            feats = fe(torch.from_numpy(read_chunks(p, manifest.member().audio)))
            rows.append(torch.stack([m(feats)[0] for m in models]).mean(0).numpy())
    return np.clip(np.concatenate(rows), 0, PROB_MAX)


def check_submission(df: pd.DataFrame, paths: list[Path], labels: list[str]) -> None:
    ids = [f"{p.stem}_{5 * (i + 1)}" for p in sorted(paths) for i in range(expected_rows(p))]
    assert df["row_id"].tolist() == ids
    assert df.columns.tolist() == ["row_id", *labels]
    probs = df[labels].to_numpy()
    assert np.isfinite(probs).all() and probs.min() >= 0 and probs.max() < 1


@pytest.mark.parametrize("folder", ["maad_day", "opensoundscape"])
def test_real_folders_match_the_torch_reference(tmp_path, tiny_bundle, folder) -> None:
    manifest, models, _ = tiny_bundle
    audio = real_audio_dir(folder)
    paths = sorted(audio.glob("*.wav"))
    out = tmp_path / "submission.csv"
    summary = run_predict(audio, manifest.root, out, options=RunOptions(workers=2))
    df = pd.read_csv(out)
    check_submission(df, paths, list(manifest.labels))
    assert summary.n_rows == len(df) == sum(expected_rows(p) for p in paths)
    diff = float(np.abs(df[list(manifest.labels)].to_numpy() - torch_reference(paths, manifest, models)).max())
    print(f"{folder}: bundle vs torch reference max |diff| = {diff:.3g} over {len(df)} rows")
    assert diff <= TOLERANCE


def write_field_like(folder: Path, seconds: dict[str, float], sr: int = 32000) -> Path:
    """Generated recordings (no shared data needed): name -> length in seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, (name, secs) in enumerate(seconds.items()):
        n_chunks = math.ceil(secs / 5.0)
        wave = synthetic_chunks(sr, 5.0, n_chunks, seed=k).reshape(-1)[: round(secs * sr)]
        sf.write(folder / name, wave, sr, subtype="PCM_16")
    return folder


FIELD = {"1min.wav": 60.0, "aru_1.wav": 3.0, "birds_10s.wav": 10.0, "dawn.wav": 23.4}


def test_pool_equals_single_process(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    audio = write_field_like(tmp_path / "audio", FIELD)
    single_run = run_predict(audio, manifest.root, tmp_path / "a.csv", options=RunOptions(in_process=True))
    single = pd.read_csv(single_run.out_path)
    pooled = pd.read_csv(run_predict(audio, manifest.root, tmp_path / "b.csv", options=RunOptions(workers=2)).out_path)
    # Equal up to the CSV's 6 significant digits: BLAS and ONNX Runtime may round differently per process.
    pd.testing.assert_frame_equal(single, pooled, check_exact=False, rtol=1e-5, atol=1e-6)


def test_batch_size_does_not_change_results(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    audio = write_field_like(tmp_path / "audio", {"1min.wav": 60.0}) / "1min.wav"
    runs = [
        pd.read_csv(
            run_predict(
                audio,
                manifest.root,
                tmp_path / f"{bs}.csv",
                options=RunOptions(in_process=True, session=SessionSettings(batch_size=bs)),
            ).out_path
        )
        for bs in (1, 5)
    ]
    pd.testing.assert_frame_equal(runs[0], runs[1], atol=1e-6)


def write_generated(folder: Path) -> list[Path]:
    """Formats, rates and channel counts the reader must handle."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    specs = [  # (name, sample rate, seconds, channels, format)
        ("stereo_441.flac", 44100, 12.3, 2, "FLAC"),
        ("short_48k.ogg", 48000, 2.0, 1, "OGG"),
        ("exact_10s.wav", 32000, 10.0, 1, "WAV"),
        ("mono_22k.mp3", 22050, 7.5, 1, "MP3"),
        ("four_ch_16k.wav", 16000, 6.0, 4, "WAV"),
    ]
    paths = []
    for name, sr, seconds, channels, fmt in specs:
        n = int(sr * seconds)
        t = np.arange(n) / sr
        x = 0.3 * np.sin(2 * np.pi * 2500 * t)[:, None] + 0.05 * rng.standard_normal((n, channels))
        path = folder / name
        sf.write(path, x.astype(np.float32), sr, format=fmt)
        paths.append(path)
    return paths


def test_generated_formats_and_sample_submission_order(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    paths = write_generated(tmp_path / "audio")
    labels = list(manifest.labels)
    shuffled = list(np.random.default_rng(0).permutation(labels))
    pd.DataFrame(columns=["row_id", *shuffled]).to_csv(tmp_path / "sample_submission.csv", index=False)
    out = tmp_path / "sub.csv"
    run_predict(tmp_path / "audio", manifest.root, out, tmp_path / "sample_submission.csv", RunOptions(workers=2))
    df = pd.read_csv(out)
    check_submission(df, paths, shuffled)
    # sorted: exact_10s, four_ch_16k (6 s), mono_22k (7.5 s), short_48k (2 s), stereo_441 (12.3 s)
    assert [expected_rows(p) for p in sorted(paths)] == [2, 2, 2, 1, 3]
    unshuffled = pd.read_csv(run_predict(tmp_path / "audio", manifest.root, tmp_path / "plain.csv").out_path)
    pd.testing.assert_frame_equal(df[["row_id", *labels]], unshuffled)


def test_sample_submission_with_other_labels_is_a_clear_error(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    cols = ["row_id", *manifest.labels[:-1], "notabird"]
    pd.DataFrame(columns=cols).to_csv(tmp_path / "ss.csv", index=False)
    with pytest.raises(SubmissionFormatError, match=r"1 only in the sample submission \['notabird'\]"):
        run_predict(tmp_path, manifest.root, tmp_path / "sub.csv", tmp_path / "ss.csv")
    assert not (tmp_path / "sub.csv").exists()


def test_probabilities_stay_strictly_below_one(tmp_path) -> None:
    from bird_infer.outputs.submission import build_submission, write_submission
    from bird_infer.runtime.ensemble import clip_probabilities

    df = build_submission(
        ["a"], [clip_probabilities(np.array([[1.0, 0.9999999, -0.1]], np.float32))], ["x", "y", "z"], 5.0
    )
    text = write_submission(df, tmp_path / "clip.csv").read_text()
    written = pd.read_csv(pd.io.common.StringIO(text))
    assert written[["x", "y"]].to_numpy().max() < 1.0 and written["z"].iloc[0] == 0.0


def test_rms_combine_rule() -> None:
    from bird_infer.runtime.ensemble import combine_folds

    folds = np.array([[[0.1, 0.9]], [[0.3, 0.5]]], dtype=np.float32)
    np.testing.assert_allclose(combine_folds(folds, "mean"), [[0.2, 0.7]], rtol=1e-6)
    np.testing.assert_allclose(combine_folds(folds, "rms"), [[np.sqrt(0.05), np.sqrt(0.53)]], rtol=1e-6)


def test_cli_and_module_entry_points(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    audio = write_field_like(tmp_path / "audio", FIELD)
    r = predict_cli(
        "--audio",
        str(audio),
        "--models",
        str(manifest.root),
        "--out",
        str(tmp_path / "m.csv"),
        "--workers",
        "1",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    bad = predict_cli("--audio", str(audio), "--models", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 2 and "no manifest" in bad.stderr


def test_segment_max_output_rule(tmp_path, tiny_bundle, check_chunks) -> None:
    """ensemble.output = segment_max scores each chunk by the max of the segment-wise output."""
    import dataclasses
    import shutil

    torch = pytest.importorskip("torch")
    from bird_infer.audio.logmel import LogMelFrontend
    from bird_infer.contract.manifest import load_manifest, write_manifest
    from bird_infer.contract.schema import EnsembleConfig
    from bird_infer.runtime.ensemble import FoldEnsemble

    manifest, models, _ = tiny_bundle
    shutil.copytree(manifest.root, tmp_path / "b")
    rule = EnsembleConfig(combine="mean", output="segment_max")
    loaded = load_manifest(tmp_path / "b")
    m = dataclasses.replace(loaded, members=(dataclasses.replace(loaded.member(), ensemble=rule),))
    write_manifest(m, tmp_path / "b")
    m = load_manifest(tmp_path / "b")
    feats = LogMelFrontend(m.member().frontend, m.member().audio.sample_rate)(check_chunks[:6])
    with torch.no_grad():
        expected = torch.stack([mod(torch.from_numpy(feats))[1].amax(dim=2) for mod in models]).mean(0).numpy()
    got = FoldEnsemble(m).predict(feats)
    assert float(np.abs(got - np.clip(expected, 0, PROB_MAX)).max()) <= TOLERANCE


@pytest.mark.parametrize("rate", [32000, 44100])
def test_one_long_file_is_split_across_workers_with_identical_rows(tmp_path, tiny_bundle, rate) -> None:
    """Fewer files than cores: a long file's rows go to several workers and come back bit-identical."""
    from bird_infer.run.engine import predict_files
    from bird_infer.run.segments import Segment, plan_segments

    manifest, _, _ = tiny_bundle
    waves = synthetic_chunks(sample_rate=rate, n=26, seed=11)  # 130 s: 26 rows, blocks of 12
    path = tmp_path / f"long_{rate}.wav"
    sf.write(path, waves.reshape(-1), rate)
    assert plan_segments([26], 2, 12) == [Segment(0, 0, 24), Segment(0, 24, None)]
    assert plan_segments([26, 26], 2, 12) == [Segment(0), Segment(1)]  # as many files as cores: no split
    assert plan_segments([13], 2, 12) == [Segment(0, 0, 12), Segment(0, 12, None)]
    assert plan_segments([12], 2, 12) == [Segment(0)]  # one block: nothing to split
    whole = predict_files([path], manifest, RunOptions(workers=2, split_files=False), rows=[26])[0]
    split = predict_files([path], manifest, RunOptions(workers=2), rows=[26])[0]
    assert (whole.parts, split.parts) == (1, 2)
    assert np.array_equal(whole.probs, split.probs) and split.n_rows == 26
    assert split.notes == whole.notes and split.duration_s == whole.duration_s
    three = predict_files([path], manifest, RunOptions(workers=3, block_chunks=4), rows=[26])[0]
    assert three.parts == 3 and np.array_equal(
        three.probs, predict_files([path], manifest, RunOptions(workers=1, block_chunks=4), rows=[26])[0].probs
    )


def test_split_file_keeps_post_processing_and_claimed_rows(tmp_path, tiny_bundle) -> None:
    """Smoothing runs over the assembled file (across the segment boundary); a header claiming more rows than
    decode gets the same fallback rows split or not."""
    import json
    import shutil

    from bird_infer.contract.manifest import load_manifest
    from bird_infer.run.engine import predict_files

    manifest, _, _ = tiny_bundle
    folder = tmp_path / "smooth"
    shutil.copytree(manifest.root, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["postprocess"] = {"smoothing": [0.25, 0.5, 0.25], "file_max_mix": 0.1}
    (folder / "manifest.json").write_text(json.dumps(data))
    smooth = load_manifest(folder)
    path = tmp_path / "long.wav"
    sf.write(path, synthetic_chunks(n=26, seed=12).reshape(-1), 32000)
    whole = predict_files([path], smooth, RunOptions(workers=2, split_files=False), rows=[26])[0]
    split = predict_files([path], smooth, RunOptions(workers=2), rows=[26])[0]
    assert split.parts == 2 and np.array_equal(whole.probs, split.probs)
    claimed = predict_files([path], smooth, RunOptions(workers=2), rows=[40])[0]  # the run expected 40 rows
    assert claimed.parts >= 2 and np.array_equal(claimed.probs, whole.probs)  # rows come from what decodes
