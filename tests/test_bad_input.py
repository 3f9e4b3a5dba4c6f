"""Bad input never stops the run: every file gets all its rows, real or fallback, and failures are reported.

All the files are generated here. One job runs over a folder of them (plus good files), and each case
is checked on the CSV and the error report it leaves.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.audio import read_chunks
from bird_infer.cli import main as cli_main
from bird_infer.job import run_predict
from bird_infer.pipeline import RunOptions
from bird_infer.report import FALLBACK_PROB, report_path
from tests.conftest import ROOT

SR = 32000


def tone(seconds: float, sr: int = SR, channels: int = 1, freq: float = 3000.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(0).standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def write_bad_folder(folder: Path) -> dict[str, tuple[str, int]]:
    """Writes the cases; returns name -> (expected outcome, expected rows)."""
    folder.mkdir(parents=True)
    cases: dict[str, tuple[str, int]] = {}

    def add(name: str, outcome: str, rows: int) -> Path:
        cases[name] = (outcome, rows)
        return folder / name

    # Six 12-s files: the most common row count is 3, which is what files whose header cannot be read get.
    for name in ("good_a.wav", "good_b.wav"):
        sf.write(add(name, "ok", 3), tone(12.0), SR)
    sf.write(add("good_c.ogg", "ok", 3), tone(12.0), SR)
    sf.write(add("good_d.flac", "ok", 3), tone(12.0), SR)
    sf.write(add("good_e.wav", "ok", 3), tone(12.0), SR)
    sf.write(add("good_f.wav", "ok", 3), tone(12.0), SR)
    add("zero_bytes.wav", "fallback", 3).write_bytes(b"")
    add("not_audio.flac", "fallback", 3).write_text("this is a text file with an audio extension\n" * 20)
    add("random_bytes.ogg", "fallback", 3).write_bytes(np.random.default_rng(2).bytes(50_000))
    full = (folder / "good_a.wav").read_bytes()
    add("truncated_header.wav", "fallback", 3).write_bytes(full[:30])
    # Header intact, data cut at 40%: the audio that is there is predicted, the rest zero-padded.
    sf.write(folder / "tmp_cut.wav", tone(15.0), SR, subtype="PCM_16")
    data = (folder / "tmp_cut.wav").read_bytes()
    add("truncated_data.wav", "ok", 2).write_bytes(data[: int(len(data) * 0.4)])
    (folder / "tmp_cut.wav").unlink()
    # An ogg cut mid-stream: libsndfile decodes what it can or fails; either way the rows are complete
    # (as many as the header, which ogg derives from the last page it finds, says).
    sf.write(folder / "tmp_cut.ogg", tone(15.0), SR)
    data = (folder / "tmp_cut.ogg").read_bytes()
    cut = add("truncated_stream.ogg", "any", 0)
    cut.write_bytes(data[: len(data) // 2])
    info = sf.info(str(cut))
    cases[cut.name] = ("any", math.ceil(info.frames / info.samplerate / 5))
    (folder / "tmp_cut.ogg").unlink()
    sf.write(add("short_1s.wav", "ok", 1), tone(1.3), SR)
    sf.write(add("empty_header_only.wav", "ok", 1), np.zeros((0, 1), np.float32), SR)
    sf.write(add("silence.wav", "ok", 2), np.zeros((SR * 10, 1), np.float32), SR)
    sf.write(add("six_channels.wav", "ok", 2), tone(7.0, channels=6), SR)
    sub_a, sub_b = folder / "siteA", folder / "siteB"
    sub_a.mkdir()
    sub_b.mkdir()
    sf.write(add("siteA/dawn.wav", "ok", 1), tone(4.0), SR)
    sf.write(add("siteB/dawn.wav", "ok", 2), tone(6.0), SR)
    sf.write(add("chant_d'oiseau_é_鳥.wav", "ok", 1), tone(5.0), SR)
    return cases


def test_bad_files_get_fallback_rows_and_a_report(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    cases = write_bad_folder(tmp_path / "audio")
    out = tmp_path / "out" / "submission.csv"
    summary = run_predict(tmp_path / "audio", manifest.root, out, options=RunOptions(workers=2))
    df = pd.read_csv(out)
    report = pd.read_csv(report_path(out))
    labels = list(manifest.labels)
    prefixes = {
        "siteA/dawn.wav": "siteA-dawn",
        "siteB/dawn.wav": "siteB-dawn",
    }
    assert df["row_id"].is_unique
    for name, (outcome, rows) in cases.items():
        prefix = prefixes.get(name, Path(name).stem)
        mine = df[df["row_id"].str.rsplit("_", n=1).str[0] == prefix]
        got_rows = len(mine)
        assert mine["row_id"].tolist() == [f"{prefix}_{5 * (i + 1)}" for i in range(got_rows)], name
        probs = mine[labels].to_numpy()
        assert np.isfinite(probs).all() and probs.max() < 1, name
        entry = report[report["row_prefix"] == prefix]
        if outcome == "any":
            outcome = "fallback" if len(entry) else "ok"
        print(f"{name}: {outcome}, {got_rows} rows", entry["reason"].tolist())
        assert got_rows == rows, name
        if outcome == "ok":
            assert entry.empty, name
            assert probs.std() > 0 or name in ("silence.wav", "empty_header_only.wav"), name
        else:
            assert (probs == FALLBACK_PROB).all(), name
            assert entry["outcome"].tolist() == ["fallback"] and entry["rows"].tolist() == [rows], name
            assert entry["attempts"].tolist() == [2], name
            assert "Error" in entry["reason"].iloc[0], name
    assert summary.n_failed == len(report) >= 4
    assert summary.n_rows == len(df) == sum(r for _, r in cases.values())


def test_strict_exits_non_zero_and_still_writes_the_csv(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", tone(6.0), SR)
    (audio / "bad.wav").write_bytes(b"RIFF\x00\x00")
    base = ["predict", "--audio", str(audio), "--models", str(manifest.root), "--workers", "1"]
    assert cli_main([*base, "--out", str(tmp_path / "lenient.csv")]) == 0
    assert cli_main([*base, "--out", str(tmp_path / "strict.csv"), "--strict"]) == 1
    strict = pd.read_csv(tmp_path / "strict.csv")
    assert strict["row_id"].tolist() == ["bad_5", "bad_10", "good_5", "good_10"]
    assert pd.read_csv(tmp_path / "strict_errors.csv")["file"].str.endswith("bad.wav").all()
    (audio / "bad.wav").unlink()
    assert cli_main([*base, "--out", str(tmp_path / "strict.csv"), "--strict"]) == 0
    assert pd.read_csv(tmp_path / "strict_errors.csv").empty  # the old report does not outlive its run


SUBTYPES = [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
            ("WAV", "DOUBLE"), ("FLAC", "PCM_S8"), ("FLAC", "PCM_24")]
RATES = [8000, 22050, 44100, 48000, 96000, 192000]


def test_sample_formats_and_rates_decode_to_the_same_sound(tmp_path, tiny_bundle) -> None:
    """8/16/24/32-bit integer and float files, 8 k to 192 kHz: each decodes to the tone written, and predicts."""
    manifest, _, _ = tiny_bundle
    audio = tmp_path / "audio"
    audio.mkdir()
    seconds, freq = 7.0, 2000.0
    ref = tone(seconds, freq=freq)[:, 0]
    bits = {"PCM_U8": 8, "PCM_S8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 24, "DOUBLE": 24}
    for fmt, subtype in SUBTYPES:
        path = audio / f"fmt_{fmt}_{subtype}.{fmt.lower()}"
        sf.write(path, ref, SR, format=fmt, subtype=subtype)
        got = read_chunks(path, manifest.audio).reshape(-1)[: ref.size]
        step = 2.0 ** (1 - bits[subtype])  # one quantisation step of full scale
        err = float(np.abs(got - ref).max())
        print(f"{path.name}: max |decoded - written| = {err:.3g} (step {step:.3g})")
        assert err <= step, path.name
    t = np.arange(ref.size) / SR  # a noise-free tone, to compare across rates
    pure = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    edge = SR // 10  # the resampler's filter transients at the file's start and end
    for sr in RATES:
        path = audio / f"rate_{sr}.wav"
        n = round(seconds * sr)
        sf.write(path, 0.4 * np.sin(2 * np.pi * freq * np.arange(n) / sr), sr, subtype="PCM_16")
        got = read_chunks(path, manifest.audio).reshape(-1)[: pure.size]
        err = float(np.abs(got - pure)[edge:-edge].max())
        print(f"{path.name}: max |resampled - tone at 32 kHz| = {err:.3g} away from the edges")
        assert err < 2e-4, path.name
    out = tmp_path / "sub.csv"
    summary = run_predict(audio, manifest.root, out, options=RunOptions(workers=2))
    df = pd.read_csv(out)
    assert summary.n_failed == 0 and summary.n_files == len(SUBTYPES) + len(RATES)
    assert len(df) == 2 * summary.n_files and np.isfinite(df[list(manifest.labels)].to_numpy()).all()


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child of this (torch-heavy)
# pytest process would start at pytest's own peak.
PEAK_RSS_SCRIPT = """
import re, sys
from pathlib import Path
from bird_infer.manifest import load_manifest
from bird_infer.pipeline import FilePredictor, RunOptions
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
predictor = FilePredictor(load_manifest(sys.argv[1]), RunOptions())
before = peak_kib()
result = predictor.predict_file(Path(sys.argv[2]))
print(result.n_chunks, before, peak_kib())
"""


def write_long(path: Path, seconds: float, sr: int) -> None:
    """A long 16-bit file written in one-minute blocks (libsndfile can fail writing long files in one call)."""
    block = tone(60.0, sr)
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        for _ in range(int(seconds // 60)):
            f.write(block)


def peak_rss_mb(manifest_root: Path, audio: Path) -> tuple[int, float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(manifest_root), str(audio)],
                         capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout.split()
    return int(out[0]), int(out[1]) / 1024, int(out[2]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc")
def test_two_hour_file_is_read_with_bounded_memory(tmp_path, tiny_bundle) -> None:
    """Peak memory of a 2-hour file is that of a 10-minute one: it is read in blocks, never whole."""
    manifest, _, _ = tiny_bundle
    sr = 8000  # a low rate keeps the 2-hour file at 115 MB on disk; it is resampled to 32 kHz as usual
    write_long(tmp_path / "ten_min.wav", 600, sr)
    write_long(tmp_path / "two_hours.wav", 7200, sr)
    n_short, _base_short, peak_short = peak_rss_mb(manifest.root, tmp_path / "ten_min.wav")
    n_long, base_long, peak_long = peak_rss_mb(manifest.root, tmp_path / "two_hours.wav")
    print(f"peak RSS: 10 min {peak_short:.0f} MB, 2 h {peak_long:.0f} MB (after loading: {base_long:.0f} MB)")
    assert (n_short, n_long) == (120, 1440)
    whole_file_mb = 7200 * SR * 4 / 2**20  # what reading it at once as float32 at 32 kHz would take: 879 MB
    # The 2-hour result itself is 1440 x 264 float32 (1.5 MB); everything else must not grow with length.
    assert peak_long - peak_short < 50, (peak_short, peak_long)
    assert peak_long - base_long < whole_file_mb / 2


def test_model_problems_fail_before_any_audio_is_read(tmp_path, tiny_bundle) -> None:
    """Missing fold, checksum mismatch, wrong output width: a clear error, exit 2, nothing read or written."""
    import json
    import shutil

    manifest, _, _ = tiny_bundle
    audio = tmp_path / "not_read"  # does not exist: reading it would raise FileNotFoundError instead
    cases = {}
    for case in ("missing_fold", "checksum", "width"):
        bundle = tmp_path / case
        shutil.copytree(manifest.root, bundle)
        data = json.loads((bundle / "manifest.json").read_text())
        if case == "missing_fold":
            (bundle / data["folds"][1]["file"]).unlink()
        elif case == "checksum":
            with open(bundle / data["folds"][0]["file"], "ab") as f:
                f.write(b"\0")
        else:
            data["labels"] = data["labels"][:-1]
            (bundle / "manifest.json").write_text(json.dumps(data))
        cases[case] = bundle
    expect = {"missing_fold": "missing", "checksum": "sha256", "width": "labels"}
    for case, bundle in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "bird_infer", "predict", "--audio", str(audio), "--models", str(bundle),
             "--out", str(tmp_path / f"{case}.csv")], capture_output=True, text=True, cwd=ROOT,
        )
        print(case, proc.stderr.strip())
        assert proc.returncode == 2, case
        assert expect[case] in proc.stderr.lower(), case
        assert "not_read" not in proc.stderr, case
        assert not (tmp_path / f"{case}.csv").exists(), case


def test_rows_for_unreadable_headers_follow_the_other_files() -> None:
    from bird_infer.job import fallback_rows

    assert fallback_rows([120, None, 120, 7]) == [120, 120, 120, 7]
    assert fallback_rows([None, None]) == [1, 1]
    assert fallback_rows([]) == []


def test_duplicate_stems_are_made_unique() -> None:
    from bird_infer.submission import unique_stems

    root = Path("/data")
    paths = [root / "a.wav", root / "x" / "a.wav", root / "b.flac", root / "b.wav", root / "c" / "d" / "e.ogg"]
    assert unique_stems(paths, root) == ["a", "x-a", "b.flac", "b.wav", "e"]
