"""Bundles of different members: schema 2, shared work done once, windows longer than a row, weights over
overlapping label lists, post-processing, the exporter for any model, and each bad manifest's message."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.contract.errors import InvalidFieldError
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.schema import MANIFEST_NAME, AudioConfig
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from bird_infer.run.postprocess import file_max_mix, smooth_rows
from tests.conftest import member0, real_audio_dir, synthetic_chunks

torch = pytest.importorskip("torch")
nn = torch.nn

WAVE_SR = 16000
WAVE_WINDOW_S = 10.0


class WaveSED(nn.Module):
    """A waveform-in model with its log-mel inside the graph: a real-valued STFT as a strided Conv1d with
    fixed cos/sin kernels, mel filters, log, a small conv net, attention pooling over time."""

    def __init__(self, n_labels: int, sr: int = WAVE_SR, n_fft: int = 512, hop: int = 256, n_mels: int = 32) -> None:
        super().__init__()
        from bird_infer.audio.logmel import mel_filterbank
        from bird_infer.contract.schema import FrontendConfig

        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * t / n_fft)
        angle = 2 * math.pi * k * t / n_fft
        kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])[:, None, :]
        self.register_buffer("kernels", kernels.float())
        fe = FrontendConfig(
            n_fft,
            n_fft,
            hop,
            "hann",
            False,
            "constant",
            n_mels,
            50.0,
            sr / 2,
            2.0,
            "slaney",
            "slaney",
            1e-10,
            1.0,
            None,
            "none",
        )
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(fe, sr)))
        self.hop = hop
        self.n_freq = n_fft // 2 + 1
        self.conv = nn.Sequential(nn.Conv1d(n_mels, 48, 3, padding=1), nn.ReLU(), nn.Conv1d(48, 48, 3, padding=1))
        self.att = nn.Conv1d(48, n_labels, 1)
        self.cla = nn.Conv1d(48, n_labels, 1)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = nn.functional.conv1d(wave[:, None, :], self.kernels, stride=self.hop)  # (B, 2F, T)
        power = spec[:, : self.n_freq] ** 2 + spec[:, self.n_freq :] ** 2
        logmel = torch.log10(torch.matmul(self.mel, power) + 1e-6)  # (B, n_mels, T)
        x = self.conv((logmel - logmel.mean(dim=(1, 2), keepdim=True)) / 4.0)
        att = torch.softmax(torch.tanh(self.att(x)), dim=-1)
        seg = torch.sigmoid(self.cla(x))
        return (att * seg).sum(dim=-1), seg


def wave_windows(n: int, seed: int = 0) -> np.ndarray:
    """(n, 10 s at 16 kHz) generated windows for the export check."""
    short = synthetic_chunks(WAVE_SR, 5.0, 2 * n, seed=seed)
    return short.reshape(n, -1)


@pytest.fixture(scope="module")
def two_member_bundle(tmp_path_factory, tiny_bundle):
    """The tiny log-mel folds (32 kHz, 5 s, 264 labels, weight 1) plus a waveform member (16 kHz, 10-s windows
    centred on each row, mel inside the graph, weight 0.5) whose labels overlap the first member's last 100
    and add 3 of its own. Returns (manifest, log-mel torch models, waveform torch models, waveform labels)."""
    from bird_infer.export import export_member

    manifest, models, _ = tiny_bundle
    folder = tmp_path_factory.mktemp("two_members")
    shutil.copytree(manifest.root, folder, dirs_exist_ok=True)
    wave_labels = [*manifest.labels[-100:], "xtra_one", "xtra_two", "xtra_three"]
    wave_models = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        wave_models.append(WaveSED(len(wave_labels)).eval())
    audio = AudioConfig(sample_rate=WAVE_SR, clip_s=WAVE_WINDOW_S)
    result = export_member(
        wave_models, wave_labels, audio, None, folder, wave_windows(6), name="wave", weight=0.5, add_to=True
    )
    return result.manifest, models, wave_models, wave_labels


def naive_reference(path: Path, manifest, lm_models, wave_models, wave_labels) -> np.ndarray:
    """Each member, each window and the weighted mean computed directly, one row at a time."""
    import soxr

    from bird_infer.nn.frontend import TorchLogMel

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    n_rows = max(1, math.ceil(len(mono) / sr / 5.0 - 1e-9))
    lm, wm = manifest.members
    x32 = mono if sr == 32000 else soxr.resample(mono, sr, 32000, quality="HQ").astype(np.float32)
    x16 = soxr.resample(mono, sr, WAVE_SR, quality="HQ").astype(np.float32)
    fe = TorchLogMel(lm.frontend, 32000)
    labels = list(manifest.labels)
    out = np.zeros((n_rows, len(labels)))
    for i in range(n_rows):
        w32 = np.zeros(160000, np.float32)
        seg = x32[i * 160000 : (i + 1) * 160000]
        w32[: len(seg)] = seg
        w16 = np.zeros(160000, np.float32)
        start = i * 80000 - 40000
        a, b = max(0, start), min(len(x16), start + 160000)
        if b > a:
            w16[a - start : b - start] = x16[a:b]
        with torch.no_grad():
            feats = fe(torch.from_numpy(w32[None]))
            p_lm = torch.stack([m(feats)[0] for m in lm_models]).mean(0).clamp(0, 1 - 1e-6)[0].numpy()
            p_w = torch.stack([m(torch.from_numpy(w16[None]))[0] for m in wave_models]).mean(0)
            p_w = p_w.clamp(0, 1 - 1e-6)[0].numpy()
        acc = np.zeros(len(labels))
        wsum = np.zeros(len(labels))
        for member_labels, p, w in ((lm.labels, p_lm, lm.weight), (wave_labels, p_w, wm.weight)):
            idx = [labels.index(x) for x in member_labels]
            acc[idx] += w * p
            wsum[idx] += w
        out[i] = acc / wsum
    return out


def test_two_members_equal_a_naive_torch_reference(tmp_path, two_member_bundle) -> None:
    manifest, lm_models, wave_models, wave_labels = two_member_bundle
    assert [m.name for m in manifest.members] == ["default", "wave"] and len(manifest.labels) == 267
    src = real_audio_dir("opensoundscape")
    audio = tmp_path / "audio"
    audio.mkdir()
    names = ["birds_10s.wav", "aru_1.wav", "great_plains_toad.wav"]
    for name in names:
        shutil.copy(src / name, audio / name)
    out = tmp_path / "sub.csv"
    run_predict(audio, manifest.root, out, options=RunOptions(workers=2))
    df = pd.read_csv(out)
    worst = 0.0
    for name in sorted(names):
        mine = df[df["row_id"].str.rsplit("_", n=1).str[0] == Path(name).stem]
        ref = naive_reference(audio / name, manifest, lm_models, wave_models, wave_labels)
        assert len(mine) == len(ref), name
        worst = max(worst, float(np.abs(mine[list(manifest.labels)].to_numpy() - ref).max()))
    print(f"two-member bundle vs naive torch reference: max |diff| = {worst:.3g} over {len(df)} rows")
    assert worst <= 1e-4
    assert df["xtra_one"].std() > 0  # a label only the waveform member has is predicted


def test_each_front_end_runs_once_per_chunk_and_each_file_is_decoded_once(tmp_path, two_member_bundle, monkeypatch):
    """A third member sharing the first's front-end adds no front-end work; each file is opened once."""
    from bird_infer.audio import decode as audio_mod
    from bird_infer.audio.logmel import LogMelFrontend
    from bird_infer.export import export_member

    manifest, lm_models, _, _ = two_member_bundle
    folder = tmp_path / "three"
    shutil.copytree(manifest.root, folder)
    lm = manifest.members[0]
    export_member(
        lm_models[:1], lm.labels, lm.audio, lm.frontend, folder, synthetic_chunks(n=4), name="copy", add_to=True
    )
    audio = tmp_path / "audio"
    audio.mkdir()
    lengths = {"a.wav": 23.0, "b.wav": 61.0}
    for k, (name, secs) in enumerate(lengths.items()):
        wave = synthetic_chunks(44100, 5.0, math.ceil(secs / 5), seed=k).reshape(-1)[: int(secs * 44100)]
        sf.write(audio / name, wave, 44100)
    chunks_seen = []
    opened = []
    real_call, real_open = LogMelFrontend.__call__, audio_mod._open

    def counting_call(self, waves):
        chunks_seen.append(len(waves))
        return real_call(self, waves)

    def counting_open(path):
        opened.append(Path(path).name)
        return real_open(path)

    monkeypatch.setattr("bird_infer.run.plan.check_models", lambda m: None)  # its check inputs would count too
    monkeypatch.setattr(LogMelFrontend, "__call__", counting_call)
    monkeypatch.setattr(audio_mod, "_open", counting_open)
    monkeypatch.setattr("bird_infer.run.plan.header_chunks", lambda paths, m: [None] * len(paths))
    summary = run_predict(audio, folder, tmp_path / "s.csv", options=RunOptions(in_process=True))
    rows = sum(math.ceil(s / 5) for s in lengths.values())
    assert summary.n_rows == rows == 18
    assert sum(chunks_seen) == rows  # one log-mel per chunk, though two members use it
    assert sorted(opened) == ["a.wav", "b.wav"]


def as_schema1(data: dict) -> dict:
    m = member0(data)
    frontend = {k: v for k, v in m["frontend"].items() if k != "kind"}
    audio = {k: v for k, v in m["audio"].items() if k != "resampler"}
    return {
        "schema_version": 1,
        "description": data["description"],
        "labels": data["labels"],
        "audio": audio,
        "frontend": frontend,
        "folds": m["folds"],
        "ensemble": m["ensemble"],
        "model": m["model"],
    }


def test_schema_1_and_2_give_identical_csvs(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    v1 = tmp_path / "v1"
    shutil.copytree(manifest.root, v1)
    data = json.loads((v1 / MANIFEST_NAME).read_text())
    (v1 / MANIFEST_NAME).write_text(json.dumps(as_schema1(data)))
    loaded = load_manifest(v1)
    assert loaded.schema_version == 1 and loaded.members[0].name == "default" and loaded.members[0].weight == 1.0
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "x.flac", synthetic_chunks(22050, 5.0, 3).reshape(-1)[:300_000], 22050)
    sf.write(audio / "y.wav", synthetic_chunks(32000, 5.0, 2, seed=5).reshape(-1), 32000)
    a = run_predict(audio, v1, tmp_path / "a.csv", options=RunOptions(in_process=True))
    b = run_predict(audio, manifest.root, tmp_path / "b.csv", options=RunOptions(in_process=True))
    assert a.out_path.read_text() == b.out_path.read_text()


def test_shipped_schema_1_bundle_loads_as_one_member() -> None:
    from tests.conftest import ROOT

    m = load_manifest(ROOT / "models", verify=False)
    assert m.schema_version == 1 and len(m.members) == 1 and m.row_s == 5.0
    assert [f.name for f in m.member().folds] == [f"fold{i}" for i in range(5)]
    assert m.fold_order() == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]  # fold4 dropped first, as before


def test_fold_order_drops_the_least_valuable_member_first(two_member_bundle) -> None:
    manifest, _, _, _ = two_member_bundle
    # members: default (weight 1, folds 0-1), wave (weight 0.5, folds 0-1): the first folds are kept
    assert manifest.fold_order() == [(0, 0), (1, 0), (0, 1), (1, 1)]
    stated = dataclasses.replace(manifest, drop_order=("default",))
    assert stated.fold_order() == [(0, 0), (1, 0), (1, 1), (0, 1)]


def test_smoothing_and_file_max_by_hand() -> None:
    p = np.array([[0.1, 0.9], [0.5, 0.3], [0.2, 0.2], [0.0, 0.0], [0.7, 0.1]], dtype=np.float32)
    valid = np.array([True, True, True, False, True])  # row 3 holds the fallback
    w = (0.1, 0.8, 0.1)
    got = smooth_rows(p, valid, w)
    expect = np.array(
        [
            (0.8 * p[0] + 0.1 * p[1]) / 0.9,  # first row: no left neighbour
            0.1 * p[0] + 0.8 * p[1] + 0.1 * p[2],
            (0.1 * p[1] + 0.8 * p[2]) / 0.9,  # right neighbour is a fallback row: left out
            p[3],  # fallback rows stay as they are
            p[4],  # last row: its only neighbour is a fallback row
        ]
    )
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    mixed = file_max_mix(p, valid, 0.25)
    peak = p[valid].max(axis=0)
    np.testing.assert_allclose(mixed[valid], 0.75 * p[valid] + 0.25 * peak, rtol=1e-6)
    np.testing.assert_array_equal(mixed[3], p[3])
    both = file_max_mix(smooth_rows(p, valid, w), valid, 0.25)
    np.testing.assert_allclose(both[valid], 0.75 * got[valid] + 0.25 * got[valid].max(axis=0), rtol=1e-6)


def test_postprocess_in_the_manifest_is_applied_per_file(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "f.wav", synthetic_chunks(n=4, seed=9).reshape(-1), 32000)
    plain = pd.read_csv(
        run_predict(audio, manifest.root, tmp_path / "p.csv", options=RunOptions(in_process=True)).out_path
    )
    pp = tmp_path / "pp"
    shutil.copytree(manifest.root, pp)
    data = json.loads((pp / MANIFEST_NAME).read_text())
    data["postprocess"] = {"smoothing": [0.2, 0.6, 0.2], "file_max_mix": 0.5}
    (pp / MANIFEST_NAME).write_text(json.dumps(data))
    smoothed = pd.read_csv(run_predict(audio, pp, tmp_path / "s.csv", options=RunOptions(in_process=True)).out_path)
    labels = list(manifest.labels)
    p = plain[labels].to_numpy()
    every = np.ones(4, bool)
    expect = file_max_mix(smooth_rows(p.astype(np.float32), every, (0.2, 0.6, 0.2)), every, 0.5)
    np.testing.assert_allclose(smoothed[labels].to_numpy(), expect, atol=2e-6)


BREAKS = {
    "zero weight": (lambda d: d["members"][0].update(weight=0), "weight must be a positive number"),
    "negative weight": (lambda d: d["members"][1].update(weight=-1.0), "weight must be a positive number"),
    "uncovered label": (lambda d: d["labels"].append("nobody_has_me"), r"predicted by no member"),
    "window shorter than a row": (lambda d: d["members"][1]["audio"].update(clip_s=2.0), "shorter than a row"),
    "unknown front-end kind": (lambda d: d["members"][1]["frontend"].update(kind="cqt"), "frontend.kind is 'cqt'"),
    "sample rate zero": (lambda d: d["members"][1]["audio"].update(sample_rate=0), "audio.sample_rate"),
    "duplicate member names": (lambda d: d["members"][1].update(name="default"), "member names repeat"),
    "unknown resampler": (lambda d: d["members"][0]["audio"].update(resampler="sinc"), "audio.resampler"),
    "smoothing of even length": (lambda d: d.update(postprocess={"smoothing": [0.5, 0.5]}), "odd-length"),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_bad_member_manifests_have_their_own_message(tmp_path, two_member_bundle, case) -> None:
    manifest, _, _, _ = two_member_bundle
    data = copy.deepcopy(json.loads((manifest.root / MANIFEST_NAME).read_text()))
    change, expect = BREAKS[case]
    change(data)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(InvalidFieldError, match=expect):
        load_manifest(tmp_path, verify=False)


def test_export_refuses_a_clashing_member(tmp_path, two_member_bundle) -> None:
    from bird_infer.contract.errors import ExportError
    from bird_infer.export import export_member

    manifest, _, wave_models, wave_labels = two_member_bundle
    folder = tmp_path / "b"
    shutil.copytree(manifest.root, folder)
    audio = AudioConfig(sample_rate=WAVE_SR, clip_s=WAVE_WINDOW_S)
    with pytest.raises(ExportError, match="already has a member named 'wave'"):
        export_member(wave_models, wave_labels, audio, None, folder, wave_windows(2), name="wave", add_to=True)


def test_deadline_guard_never_drops_a_member_whole() -> None:
    from bird_infer.run.deadline import Deadline, DeadlineGuard

    g = DeadlineGuard(Deadline(50), n_folds=7, total_chunks=12_000, workers=2, min_folds=2)
    for _ in range(10):
        g.record(n_chunks=120, n_folds=7, overhead_s=1.0, model_s=7.0)
    assert g.folds_for_next(30.0) == 2  # nothing fits: the minimum is one fold per member, not one in all
