"""The training recipe: fold split, loss, augmentations, a short run that learns, and export with no hand edits."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("sklearn")

from bird_infer.tools.synth import CALL_TYPES, CorpusSpec, make_call, write_corpus  # noqa: E402
from bird_infer.train import augment  # noqa: E402
from bird_infer.train.data import Record, TrainingDataError, load_records, make_folds, multi_hot  # noqa: E402
from bird_infer.train.recipe import sed_loss, smooth_labels  # noqa: E402

SR = 32000


# --- fold split -----------------------------------------------------------------------------------


def test_minor_classes_train_in_every_fold_and_majors_are_stratified() -> None:
    counts = {"a": 50, "b": 23, "c": 11, "d": 5, "e": 1, "f": 3}
    labels = [k for k, n in counts.items() for _ in range(n)]
    labels = list(np.random.default_rng(0).permutation(labels))
    folds = make_folds(labels, n_folds=5, seed=1)
    assert len(folds) == 5
    lab = np.array(labels)
    minor = np.flatnonzero(np.isin(lab, ["d", "e", "f"]))
    major = np.flatnonzero(~np.isin(lab, ["d", "e", "f"]))
    all_val = np.concatenate([va for _, va in folds])
    assert sorted(all_val) == sorted(major)  # every major sample validated exactly once
    for tr, va in folds:
        assert set(minor) <= set(tr) and not set(minor) & set(va)
        assert not set(tr) & set(va)
        for cls in ("a", "b", "c"):  # stratified: each fold holds a fifth of each class, +-1
            assert abs((lab[va] == cls).sum() - counts[cls] / 5) <= 1, cls


def test_split_refuses_data_with_nothing_to_validate() -> None:
    with pytest.raises(TrainingDataError):
        make_folds(["a"] * 3 + ["b"] * 2)


# --- loss -----------------------------------------------------------------------------------------


def test_loss_on_hand_made_tensors() -> None:
    clipwise = torch.tensor([[0.8, 0.1]])
    segmentwise = torch.tensor([[[0.2, 0.9, 0.5], [0.1, 0.3, 0.2]]])  # (B=1, L=2, T=3): max -> [0.9, 0.3]
    target = torch.tensor([[1.0, 0.0]])
    clip = -(math.log(0.8) + math.log(0.9)) / 2
    seg = -(math.log(0.9) + math.log(0.7)) / 2
    assert float(sed_loss(clipwise, segmentwise, target)) == pytest.approx(clip + 0.5 * seg, rel=1e-6)
    assert float(sed_loss(clipwise, segmentwise, target, 1.0, 0.0)) == pytest.approx(clip, rel=1e-6)


def test_label_smoothing_is_binary() -> None:
    y = smooth_labels(torch.tensor([1.0, 0.0]), 0.1)
    assert y.tolist() == pytest.approx([0.95, 0.05])


def test_multi_hot_primary_and_secondary() -> None:
    y = multi_hot(Record(path=None, primary_label="b", secondary_labels=("c", "zzz")), ("a", "b", "c"), 0.5)
    assert y.tolist() == [0.0, 1.0, 0.5]


# --- augmentations --------------------------------------------------------------------------------


def tone(freq: float = 1000.0, seconds: float = 5.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    noise = noisy.astype(np.float64) - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))


def peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / SR)[spec.argmax()])


def test_gaussian_noise_has_the_requested_snr() -> None:
    x = tone()
    y = augment.add_gaussian_noise(x, 15.0, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    assert snr_db(x, y) == pytest.approx(15.0, abs=0.2)


def test_uniform_noise_is_bounded() -> None:
    x = tone()
    y = augment.add_uniform_noise(x, 0.01, np.random.default_rng(0))
    d = np.abs(y - x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert d.max() <= 0.01 + 1e-6 and d.mean() == pytest.approx(0.005, rel=0.05)


def test_pitch_shift_moves_the_tone_and_keeps_the_length() -> None:
    pytest.importorskip("librosa")
    x = tone(1000.0)
    y = augment.pitch_shift(x, SR, 2.0)
    assert y.shape == x.shape and y.dtype == np.float32
    assert peak_hz(y) == pytest.approx(1000 * 2 ** (2 / 12), rel=0.01)


def test_background_is_mixed_at_the_requested_snr() -> None:
    x = tone()
    bg = np.random.default_rng(1).standard_normal(x.size).astype(np.float32)
    y = augment.mix_background(x, bg, 6.0)
    assert y.shape == x.shape and y.dtype == np.float32
    assert snr_db(x, y) == pytest.approx(6.0, abs=0.01)
    with pytest.raises(ValueError):
        augment.mix_background(x, bg[:100], 6.0)


def test_mixup_mixes_waves_and_unites_targets() -> None:
    g = torch.Generator().manual_seed(0)
    waves = torch.stack([torch.full((100,), float(i)) for i in range(4)])
    targets = torch.eye(4)
    mixed, y = augment.mixup(waves, targets, alpha=5.0, generator=g)
    assert mixed.shape == waves.shape and mixed.dtype == waves.dtype
    assert not torch.equal(mixed, waves)
    for i in range(4):  # each row is a convex mix of itself and one partner, whose label it also carries
        partners = [j for j in range(4) if y[i, j] == 1]
        assert i in partners and len(partners) <= 2
        lo, hi = min(partners), max(partners)
        assert lo - 1e-6 <= float(mixed[i, 0]) <= hi + 1e-6


def test_spec_augment_masks_bands_with_the_mean_and_leaves_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 256, 501)
    cfg = augment.AugmentConfig(specaug_p=1.0, freq_masks=1, freq_mask_bins=30, time_masks=1, time_mask_frames=50)
    out = augment.spec_augment(feats, cfg, g)
    assert out.shape == feats.shape and out.dtype == feats.dtype
    changed = out != feats
    assert changed.any()
    for i in range(6):
        assert torch.allclose(out[i][changed[i]], feats[i].mean().expand(int(changed[i].sum())))
    assert torch.equal(augment.spec_augment(feats, dataclasses.replace(cfg, specaug_p=0.0), g), feats)


def test_augment_wave_with_everything_off_is_the_identity() -> None:
    x = tone()
    assert np.array_equal(augment.augment_wave(x, SR, augment.AugmentConfig.off(), np.random.default_rng(0), x), x)


# --- data layouts -----------------------------------------------------------------------------------


def test_both_layouts_load(tmp_path) -> None:
    spec = CorpusSpec(labels=("syn_upsweep", "syn_hoot"), clips_per_label=2, soundscapes=0, clip_s=(5.0, 5.5))
    write_corpus(tmp_path / "birdclef", spec, seed=0)
    records = load_records(tmp_path / "birdclef")
    assert [r.primary_label for r in records] == ["syn_upsweep"] * 2 + ["syn_hoot"] * 2
    per_class = load_records(tmp_path / "birdclef" / "train_audio")  # the same files as folders per class
    assert sorted(r.path for r in per_class) == sorted(r.path for r in records)
    with pytest.raises(TrainingDataError):
        load_records(tmp_path / "nothing_here")


def test_synthetic_calls_differ_between_species_and_vary_within() -> None:
    rng = np.random.default_rng(0)
    for label in CALL_TYPES:
        a, b = make_call(label, rng), make_call(label, rng)
        assert a.dtype == np.float32 and np.abs(a).max() == pytest.approx(1.0, abs=1e-5)
        assert a.size != b.size or not np.allclose(a, b), label  # jittered per call


def test_synthetic_soundscape_truth_matches_its_events(tmp_path) -> None:
    spec = CorpusSpec(
        labels=tuple(CALL_TYPES)[:4], clips_per_label=0, soundscapes=1, soundscape_s=60, calls_per_minute=20
    )
    out = write_corpus(tmp_path, spec, seed=3, clips=False)
    truth = pd.read_csv(out / "truth.csv")
    events = pd.read_csv(out / "events.csv")
    assert truth["row_id"].tolist() == [f"synth_soundscape_000_{5 * (i + 1)}" for i in range(12)]
    assert sf.info(str(out / "soundscapes" / "synth_soundscape_000.ogg")).duration == pytest.approx(60.0)
    expected = np.zeros((12, 4), dtype=int)
    for _, e in events.iterrows():
        expected[min(11, int((e.start_s + e.end_s) / 2 // 5)), spec.labels.index(e.label)] = 1
    assert np.array_equal(truth[list(spec.labels)].to_numpy(), expected)


# --- a short run that learns, exported with no hand editing -----------------------------------------


def test_short_training_lowers_the_loss_and_exports(tmp_path, tiny_config) -> None:
    from bird_infer.cli import main as cli_main
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.contract.training_config import load_training_config
    from bird_infer.train.recipe import RecipeConfig
    from bird_infer.train.run import run_training

    labels = ("syn_upsweep", "syn_hoot", "syn_clicks")
    spec = CorpusSpec(labels=labels, clips_per_label=8, soundscapes=0, clip_s=(5.0, 6.0), snr_db=(15.0, 25.0))
    write_corpus(tmp_path / "corpus", spec, seed=0)
    config = dataclasses.replace(tiny_config, labels=labels)
    recipe = RecipeConfig(epochs=6, batch_size=8, lr=3e-3, augment=augment.AugmentConfig.off())
    out = tmp_path / "run"
    paths = run_training(config, tmp_path / "corpus", out, recipe, folds=[0])
    ckpt = torch.load(paths[0], map_location="cpu", weights_only=True)
    losses = [h["train_loss"] for h in ckpt["history"]]
    print("train loss per epoch:", [round(x, 4) for x in losses])
    assert losses[-1] < 0.7 * losses[0]
    assert ckpt["labels"] == list(labels) and ckpt["history"][-1]["val_cmap"] is not None
    # The exporter reads what training wrote, as written.
    assert load_training_config(out / "train_config.json") == config
    rc = cli_main(
        [
            "export",
            "--config",
            str(out / "train_config.json"),
            "--checkpoints",
            str(paths[0]),
            "--out",
            str(tmp_path / "models"),
            "--check-audio",
            str(tmp_path / "corpus" / "train_audio"),
        ]
    )
    assert rc == 0
    manifest = load_manifest(tmp_path / "models")
    assert manifest.labels == labels and json.loads((out / "training_summary.json").read_text())["runs"]
