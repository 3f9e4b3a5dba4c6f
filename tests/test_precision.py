"""--precision auto, int8 models by NNCF, static OpenVINO shapes, and the accuracy guard that gates them all."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from bird_infer.ensemble import FoldEnsemble, PrecisionRefusedError, SessionSettings
from bird_infer.frontend import LogMelFrontend
from bird_infer.machine import CpuInfo, cpu_info
from bird_infer.manifest import load_manifest
from bird_infer.pipeline import RunOptions
from bird_infer.precision import auto_candidates, choose_precision
from tests.conftest import synthetic_chunks

ov = pytest.importorskip("openvino")

NO_BF16 = CpuInfo("test CPU", 2, 2, 2, ("avx2", "fma"))
WITH_BF16 = CpuInfo("test CPU", 2, 2, 2, ("avx2", "fma", "avx512f", "avx512_bf16"))


def _audio(folder, n=3, seed=5):
    folder.mkdir(parents=True, exist_ok=True)
    waves = synthetic_chunks(n=4 * n, seed=seed)
    for k in range(n):
        sf.write(folder / f"f{k}.wav", waves[4 * k : 4 * k + 4].reshape(-1), 32000)
    return folder


def test_auto_candidates_follow_the_cpu_and_the_bundle(tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    assert auto_candidates(manifest, NO_BF16, True) == [("onnxruntime", "fp32")]
    assert auto_candidates(manifest, WITH_BF16, True) == [("onnxruntime", "fp32"), ("openvino", "bf16")]
    assert auto_candidates(manifest, WITH_BF16, False) == [("onnxruntime", "fp32")]


def test_cpu_flags_override(monkeypatch) -> None:
    monkeypatch.setenv("BIRD_INFER_CPU_FLAGS", "avx2 fma")
    info = cpu_info()
    assert info.flags == ("avx2", "fma") and not info.has_bf16


def test_auto_picks_fp32_when_the_guard_refuses_or_the_cpu_lacks_bf16(tmp_path, tiny_bundle, caplog) -> None:
    manifest, _, _ = tiny_bundle
    audio = _audio(tmp_path / "audio")
    paths = sorted(audio.glob("*.wav"))
    auto = RunOptions(workers=1, session=SessionSettings(precision="auto"))
    with caplog.at_level("INFO", logger="bird_infer.precision"):
        options, note, trials = choose_precision(manifest, auto, paths, NO_BF16)
    assert (options.session.backend, options.session.precision) == ("onnxruntime", "fp32")
    assert [t.name for t in trials] == ["onnxruntime fp32"]
    assert "precision: onnxruntime fp32 (auto" in caplog.text
    strict = RunOptions(workers=1, session=SessionSettings(precision="auto"), precision_bound=0.0)
    options, note, trials = choose_precision(manifest, strict, paths, WITH_BF16)
    names = [t.name for t in trials]
    assert names == ["onnxruntime fp32", "openvino bf16"]
    assert (options.session.backend, options.session.precision) == ("onnxruntime", "fp32")
    bf16 = trials[1]
    assert bf16.refused is not None  # bf16 is never exactly fp32, or this CPU has none
    assert note.startswith("onnxruntime fp32 (auto")


def test_static_and_dynamic_openvino_shapes_agree(tiny_bundle, check_chunks) -> None:
    manifest, _, _ = tiny_bundle
    feats = LogMelFrontend(manifest.frontend, manifest.audio.sample_rate)(check_chunks[:5])
    outs = {}
    for static in (True, False):
        for batch in (1, 2):
            st = SessionSettings(backend="openvino", batch_size=batch, static_shape=static)
            outs[(static, batch)] = FoldEnsemble(manifest, st).fold_outputs(feats)
    ref = outs[(False, 1)]
    for key, got in outs.items():
        print(f"static={key[0]} batch={key[1]}: max |diff| = {np.abs(got - ref).max():.3g}")
        assert np.abs(got - ref).max() <= 1e-5  # batch 2 of 5 rows: the last batch is zero-padded when static


def test_int8_from_the_tiny_bundle_loads_runs_and_is_guarded(tmp_path, tiny_bundle, caplog) -> None:
    pytest.importorskip("nncf")
    from bird_infer.quantize import quantize_bundle

    manifest, _, _ = tiny_bundle
    models = tmp_path / "models"
    shutil.copytree(manifest.root, models)
    audio = _audio(tmp_path / "audio", n=4)
    quantized, results = quantize_bundle(models, [audio], calibration_chunks=8, judge_chunks=4)
    assert [r.fold for r in results] == [f.name for f in quantized.folds]
    for fold in quantized.folds:
        assert fold.int8 is not None and (models / fold.int8.file).is_file() and (models / fold.int8.weights).is_file()
    data = json.loads((models / "manifest.json").read_text())
    assert data["members"][0]["folds"][0]["int8"]["sha256"] == quantized.folds[0].int8.sha256
    with pytest.raises(PrecisionRefusedError, match="int8 refused"):
        FoldEnsemble(manifest, SessionSettings(backend="openvino", precision="int8"))  # the original has no int8
    feats = LogMelFrontend(quantized.frontend, quantized.audio.sample_rate)(synthetic_chunks(n=3, seed=9))
    out = FoldEnsemble(quantized, SessionSettings(backend="openvino", precision="int8")).fold_outputs(feats)
    assert out.shape == (2, 3, len(quantized.labels)) and np.isfinite(out).all()

    paths = sorted(audio.glob("*.wav"))
    int8 = SessionSettings(backend="openvino", precision="int8")
    _, _, trials = choose_precision(quantized, RunOptions(workers=1, session=int8, precision_bound=1.0), paths)
    delta = trials[-1].max_delta
    print(
        f"int8 tiny bundle: max |p - p_fp32| = {delta:.4g} (per fold on judge rows: {[r.max_delta for r in results]})"
    )
    assert delta is not None and delta > 0
    accepted, note, _ = choose_precision(quantized, RunOptions(workers=1, session=int8, precision_bound=delta), paths)
    assert accepted.session.precision == "int8" and note.startswith("openvino int8 (")
    refused, note, _ = choose_precision(
        quantized, RunOptions(workers=1, session=int8, precision_bound=delta / 2), paths
    )
    assert refused.session.precision == "fp32" and "refused" in note
    auto = RunOptions(workers=1, session=SessionSettings(precision="auto"), precision_bound=delta)
    chosen, note, trials = choose_precision(quantized, auto, paths, NO_BF16)
    assert [t.name for t in trials] == ["onnxruntime fp32", "openvino int8"]
    fastest = min((t for t in trials if t.refused is None), key=lambda t: t.ms_per_chunk)
    assert chosen.session.precision == fastest.precision  # auto keeps the fastest the guard accepts
    verified = load_manifest(models)  # the checksums of the int8 files are verified on load
    (models / verified.folds[0].int8.weights).write_bytes(b"corrupt")
    with pytest.raises(Exception, match="sha256"):
        load_manifest(models)
