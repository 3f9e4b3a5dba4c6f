"""Bad input never stops the run: every file gets all its rows, real or fallback, and failures are reported.

All the files are generated here. One job runs over a folder of them (plus good files), and each case
is checked on the CSV and the error report it leaves.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.audio.decode import read_chunks
from bird_infer.cli import main as cli_main
from bird_infer.contract.schema import FALLBACK_PROB
from bird_infer.jobs.predict import run_predict
from bird_infer.outputs.report import report_path
from bird_infer.run.options import RunOptions
from tests.conftest import ROOT, member0, predict_cli, set_labels

SR = 32000


def tone(seconds: float, sr: int = SR, channels: int = 1, freq: float = 3000.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * np.random.default_rng(0).standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def flac_with_total_samples(src: bytes, total: int) -> bytes:
    """A copy of a FLAC file whose STREAMINFO claims ``total`` samples (0 means "length unknown")."""
    data = bytearray(src)
    assert data[:4] == b"fLaC"
    packed = int.from_bytes(data[18:26], "big")  # sample rate (20 bits), channels, bits, total samples (36)
    packed = (packed & ~((1 << 36) - 1)) | total
    data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def wav_claiming(src: bytes, data_bytes: int | None = None, rate: int | None = None) -> bytes:
    """A copy of a canonical 44-byte-header WAV with another data size or sample rate in its header."""
    data = bytearray(src)
    assert data[36:40] == b"data"
    if data_bytes is not None:
        data[40:44] = struct.pack("<I", data_bytes)
    if rate is not None:
        data[24:28] = struct.pack("<I", rate)
        data[28:32] = struct.pack("<I", 2 * rate)
    return bytes(data)


# name -> (outcome, rows, predicted rows, reference file whose leading rows these must equal, or None)
Case = tuple[str, int, int, "str | None"]


def write_bad_folder(folder: Path) -> dict[str, Case]:
    """Writes the cases; returns what each must give, decided from how the input was made."""
    folder.mkdir(parents=True)
    cases: dict[str, Case] = {}

    def add(name: str, outcome: str, rows: int, predicted: int | None = None, same_as: str | None = None) -> Path:
        cases[name] = (outcome, rows, rows if predicted is None else predicted, same_as)
        return folder / name

    # Six 15-s files: the most common row count is 3, which is what files whose header cannot be read get.
    tone15 = tone(15.0)
    sf.write(add("good_a.wav", "ok", 3), tone15, SR, subtype="PCM_16")
    sf.write(add("good_b.wav", "ok", 3), tone(15.0, freq=1200.0), SR)
    sf.write(add("good_c.ogg", "ok", 3), tone15, SR)
    sf.write(add("good_d.flac", "ok", 3), tone15, SR)
    sf.write(add("good_e.mp3", "ok", 3), tone15, SR)
    sf.write(add("good_f.aiff", "ok", 3), tone15, SR)
    add("zero_bytes.wav", "fallback", 3, 0).write_bytes(b"")
    add("not_audio.flac", "fallback", 3, 0).write_text("this is a text file with an audio extension\n" * 20)
    add("random_bytes.ogg", "fallback", 3, 0).write_bytes(np.random.default_rng(2).bytes(50_000))
    add("aac_in_m4a.m4a", "fallback", 3, 0).write_bytes(b"\0\0\0\x20ftypM4A " + bytes(4000))
    wav = (folder / "good_a.wav").read_bytes()
    flac = (folder / "good_d.flac").read_bytes()
    add("truncated_header.wav", "fallback", 3, 0).write_bytes(wav[:30])
    add("one_hz.wav", "fallback", 3, 0).write_bytes(wav_claiming(wav, rate=1))
    # One rule for every format: what decodes is predicted (its leading rows equal the intact file's), the
    # rest of the length the header claims (15 s: 3 rows) holds the fallback.
    cut = int(len(wav) * 0.4)
    add("truncated_data.wav", "partial", 3, math.ceil((cut - 44) / 2 / (5 * SR)), "good_a.wav").write_bytes(wav[:cut])
    add("truncated_frames.flac", "partial", 3, None, "good_d.flac").write_bytes(flac[: int(len(flac) * 0.4)])
    mp3 = (folder / "good_e.mp3").read_bytes()
    add("cut_stream.mp3", "partial", 3, None, "good_e.mp3").write_bytes(mp3[: int(len(mp3) * 0.4)])
    # An ogg's length is read from its last page: a cut ogg claims what it holds, and all of it is predicted.
    ogg = (folder / "good_c.ogg").read_bytes()
    cut_ogg = add("truncated_stream.ogg", "ok", 0, None, "good_c.ogg")
    cut_ogg.write_bytes(ogg[: len(ogg) // 2])
    info = sf.info(str(cut_ogg))
    ogg_rows = math.ceil(info.frames / info.samplerate / 5)
    cases[cut_ogg.name] = ("ok", ogg_rows, ogg_rows, "good_c.ogg")
    # Lying lengths: "unknown" (allowed by FLAC) and absurd ones are decoded to the end; one within the
    # 24-hour cap is believed (a file cut short): 2 minutes claimed, 15 s present.
    add("length_unknown.flac", "ok", 3, 3, "good_d.flac").write_bytes(flac_with_total_samples(flac, 0))
    absurd = (1 << 36) - 1  # 596 hours at 32 kHz
    add("absurd_length.flac", "header_ignored", 3, 3, "good_d.flac").write_bytes(flac_with_total_samples(flac, absurd))
    add("claims_2min.wav", "partial", 24, 3, "good_a.wav").write_bytes(wav_claiming(wav, data_bytes=120 * SR * 2))
    sf.write(add("short_1s.wav", "ok", 1), tone(1.3), SR)
    sf.write(add("empty_header_only.wav", "ok", 1), np.zeros((0, 1), np.float32), SR)
    sf.write(add("silence.wav", "ok", 2), np.zeros((SR * 10, 1), np.float32), SR)
    sf.write(add("six_channels.wav", "ok", 2), tone(7.0, channels=6), SR)
    (folder / "siteA").mkdir()
    (folder / "siteB").mkdir()
    sf.write(add("siteA/dawn.wav", "ok", 1), tone(4.0), SR)
    sf.write(add("siteB/dawn.wav", "ok", 2), tone(6.0), SR)
    sf.write(add("chant_d'oiseau_é_鳥.wav", "ok", 1), tone(5.0), SR)
    return cases


def prefix_of(name: str) -> str:
    return {"siteA/dawn.wav": "siteA-dawn", "siteB/dawn.wav": "siteB-dawn"}.get(name, Path(name).stem)


def test_bad_files_get_their_rows_and_a_report(tmp_path, tiny_bundle) -> None:
    """Each case's outcome, rows, predicted rows and values are fixed by how it was made (see write_bad_folder)."""
    manifest, _, _ = tiny_bundle
    cases = write_bad_folder(tmp_path / "audio")
    out = tmp_path / "out" / "submission.csv"
    summary = run_predict(tmp_path / "audio", manifest.root, out, options=RunOptions(workers=2))
    df = pd.read_csv(out)
    report = pd.read_csv(report_path(out))
    labels = list(manifest.labels)
    assert df["row_id"].is_unique

    def rows_of(name: str) -> pd.DataFrame:
        prefix = prefix_of(name)
        return df[df["row_id"].str.rsplit("_", n=1).str[0] == prefix]

    for name, (outcome, rows, predicted, same_as) in cases.items():
        prefix = prefix_of(name)
        mine = rows_of(name)
        assert mine["row_id"].tolist() == [f"{prefix}_{5 * (i + 1)}" for i in range(rows)], name
        probs = mine[labels].to_numpy()
        assert np.isfinite(probs).all() and probs.max() < 1, name
        entry = report[report["row_prefix"] == prefix]
        print(f"{name}: {rows} rows", entry[["outcome", "reason"]].values.tolist())
        fallback_rows = (probs == FALLBACK_PROB).all(axis=1)
        if outcome == "ok":
            assert entry.empty, name
        else:
            assert entry["outcome"].tolist() == [outcome] and entry["rows"].tolist() == [rows], name
        if outcome == "fallback":
            assert fallback_rows.all() and entry["attempts"].tolist() == [2], name
            assert "Error" in entry["reason"].iloc[0], name
            continue
        if outcome == "partial" and name != "truncated_frames.flac" and name != "cut_stream.mp3":
            assert fallback_rows.sum() == rows - predicted, name
        if outcome == "partial":
            assert 1 <= (~fallback_rows).sum() < rows and fallback_rows[-1], name
            assert (~fallback_rows[: (~fallback_rows).sum()]).all(), name  # predicted first, then the fallback
            assert "decod" in entry["reason"].iloc[0], name
        else:
            assert not fallback_rows.any() or name in ("silence.wav", "empty_header_only.wav"), name
        if same_as:  # the leading, fully decoded rows equal the intact file's
            full = rows_of(same_as)[labels].to_numpy()
            cut_short = outcome == "partial" or name == "truncated_stream.ogg"  # its last predicted row is padded
            whole = min(int((~fallback_rows).sum()) - cut_short, len(full))
            np.testing.assert_allclose(probs[:whole], full[:whole], atol=2e-6, err_msg=name)
    assert summary.n_failed == (report["outcome"] == "fallback").sum() == 6
    assert summary.n_rows == len(df) == sum(c[1] for c in cases.values())


def test_hostile_names_and_entries(tmp_path, tiny_bundle) -> None:
    """Names that are not UTF-8, collide once joined, or hold a newline; broken links, a FIFO, an aiff."""
    manifest, _, _ = tiny_bundle
    audio = tmp_path / "audio"
    (audio / "siteA").mkdir(parents=True)
    (audio / "siteB").mkdir()
    for rel in ("siteA/0600.wav", "siteB/0600.wav", "siteA-0600.wav", "siteA-0600~2.wav", "x_5.wav", "x.wav"):
        sf.write(audio / rel, tone(6.0), SR)
    raw = os.fsencode(audio) + b"/bad\xff\xfename.wav"
    with open(raw, "wb") as f:
        sf.write(f, tone(6.0), SR, format="WAV")
    sf.write(audio / "line\nbreak.wav", tone(6.0), SR)
    sf.write(audio / "old.aif", tone(6.0), SR, format="AIFF")
    os.symlink(audio / "missing.wav", audio / "broken_link.wav")
    os.mkfifo(audio / "pipe.ogg")
    out = tmp_path / "sub.csv"
    proc = predict_cli("--audio", str(audio), "--models", str(manifest.root), "--out", str(out), "--workers", "2")
    print(proc.stdout, proc.stderr[-2000:])
    assert proc.returncode == 0
    df = pd.read_csv(out)
    report = pd.read_csv(report_path(out))
    assert df["row_id"].is_unique and len(df) == 2 * 11  # 11 entries, 2 rows each (the guess for the 2 unread)
    prefixes = sorted(set(df["row_id"].str.rsplit("_", n=1).str[0]))
    print(prefixes)
    assert "bad\\xff\\xfename" in prefixes and "line\\nbreak" in prefixes and "old" in prefixes
    assert {"x", "x_5"} <= set(prefixes)
    reasons = dict(zip(report["row_prefix"], report["reason"], strict=True))
    assert set(reasons) == {"broken_link", "pipe"}
    assert "broken symbolic link" in reasons["broken_link"] and "FIFO" in reasons["pipe"]


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


SUBTYPES = [
    ("WAV", "PCM_U8"),
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAV", "PCM_32"),
    ("WAV", "FLOAT"),
    ("WAV", "DOUBLE"),
    ("FLAC", "PCM_S8"),
    ("FLAC", "PCM_24"),
]
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
        got = read_chunks(path, manifest.member().audio).reshape(-1)[: ref.size]
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
        got = read_chunks(path, manifest.member().audio).reshape(-1)[: pure.size]
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
from bird_infer.contract.manifest import load_manifest
from bird_infer.run.options import RunOptions
from bird_infer.run.predictor import FilePredictor
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
predictor = FilePredictor(load_manifest(sys.argv[1]), RunOptions())
before = peak_kib()
result = predictor.predict_file(Path(sys.argv[2]))
print(result.n_chunks, before, peak_kib(), result.n_rows)
"""


def write_long(path: Path, seconds: float, sr: int) -> None:
    """A long 16-bit file written in one-minute blocks (libsndfile can fail writing long files in one call)."""
    block = tone(60.0, sr)
    with sf.SoundFile(path, "w", sr, 1, subtype="PCM_16") as f:
        for _ in range(int(seconds // 60)):
            f.write(block)


def peak_rss_mb(manifest_root: Path, audio: Path) -> tuple[int, float, float, int]:
    """(predicted rows, MiB after loading, peak MiB, all rows) of one file predicted in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(manifest_root), str(audio)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    ).stdout.split()
    return int(out[0]), int(out[1]) / 1024, int(out[2]) / 1024, int(out[3])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc")
def test_two_hour_file_is_read_with_bounded_memory(tmp_path, tiny_bundle) -> None:
    """Peak memory of a 2-hour file is that of a 10-minute one: it is read in blocks, never whole."""
    manifest, _, _ = tiny_bundle
    sr = 8000  # a low rate keeps the 2-hour file at 115 MB on disk; it is resampled to 32 kHz as usual
    write_long(tmp_path / "ten_min.wav", 600, sr)
    write_long(tmp_path / "two_hours.wav", 7200, sr)
    n_short, _base_short, peak_short, _ = peak_rss_mb(manifest.root, tmp_path / "ten_min.wav")
    n_long, base_long, peak_long, _ = peak_rss_mb(manifest.root, tmp_path / "two_hours.wav")
    print(f"peak RSS: 10 min {peak_short:.0f} MB, 2 h {peak_long:.0f} MB (after loading: {base_long:.0f} MB)")
    assert (n_short, n_long) == (120, 1440)
    whole_file_mb = 7200 * SR * 4 / 2**20  # what reading it at once as float32 at 32 kHz would take: 879 MB
    # The 2-hour result itself is 1440 x 264 float32 (1.5 MB); everything else must not grow with length.
    assert peak_long - peak_short < 50, (peak_short, peak_long)
    assert peak_long - base_long < whole_file_mb / 2


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak memory from Linux's /proc")
def test_truncated_two_hour_file_keeps_memory_bounded(tmp_path, tiny_bundle) -> None:
    """A header claiming 2 hours over 10 minutes of data: 120 rows predicted, 1320 fallback rows, and the
    peak memory of a 10-minute file (the missing part is never padded with audio)."""
    manifest, _, _ = tiny_bundle
    sr = 8000
    write_long(tmp_path / "ten_min.wav", 600, sr)
    data = (tmp_path / "ten_min.wav").read_bytes()
    (tmp_path / "cut_2h.wav").write_bytes(wav_claiming(data, data_bytes=7200 * sr * 2))
    n_short, _, peak_short, _ = peak_rss_mb(manifest.root, tmp_path / "ten_min.wav")
    n_pred, _, peak_cut, n_rows = peak_rss_mb(manifest.root, tmp_path / "cut_2h.wav")
    print(f"peak RSS: 10 min {peak_short:.0f} MB, 2 h claimed over 10 min {peak_cut:.0f} MB")
    assert (n_short, n_pred, n_rows) == (120, 120, 1440)
    assert peak_cut - peak_short < 20


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
            (bundle / member0(data)["folds"][1]["file"]).unlink()
        elif case == "checksum":
            with open(bundle / member0(data)["folds"][0]["file"], "ab") as f:
                f.write(b"\0")
        else:
            set_labels(data, data["labels"][:-1])
            (bundle / "manifest.json").write_text(json.dumps(data))
        cases[case] = bundle
    expect = {"missing_fold": "missing", "checksum": "sha256", "width": "labels"}
    for case, bundle in cases.items():
        proc = predict_cli("--audio", str(audio), "--models", str(bundle), "--out", str(tmp_path / f"{case}.csv"))
        print(case, proc.stderr.strip())
        assert proc.returncode == 2, case
        assert expect[case] in proc.stderr.lower(), case
        assert "not_read" not in proc.stderr, case
        assert not (tmp_path / f"{case}.csv").exists(), case


def test_rows_for_unreadable_headers_follow_the_other_files() -> None:
    from bird_infer.run.plan import fallback_rows

    assert fallback_rows([120, None, 120, 7]) == [120, 120, 120, 7]
    assert fallback_rows([None, None]) == [1, 1]
    assert fallback_rows([]) == []


def test_duplicate_stems_are_made_unique() -> None:
    from bird_infer.outputs.names import unique_stems

    root = Path("/data")
    paths = [root / "a.wav", root / "x" / "a.wav", root / "b.flac", root / "b.wav", root / "c" / "d" / "e.ogg"]
    assert unique_stems(paths, root) == ["a", "x-a", "b.flac", "b.wav", "e"]
