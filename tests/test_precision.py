"""--precision auto, int8 models by NNCF, static OpenVINO shapes, and the accuracy guard that gates them all."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.errors import PrecisionRefusedError
from bird_infer.contract.manifest import load_manifest
from bird_infer.runtime.ensemble import FoldEnsemble
from bird_infer.runtime.machine import CpuInfo, cpu_info
from bird_infer.runtime.precision import auto_candidates, choose_precision, start_precision
from bird_infer.runtime.sessions import SessionSettings
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
    ort, ov32, bf16 = ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")
    assert auto_candidates(manifest, NO_BF16, True) == [ort, ov32]
    assert auto_candidates(manifest, WITH_BF16, True) == [ort, ov32, bf16]
    assert auto_candidates(manifest, WITH_BF16, False) == [ort]


def test_auto_with_one_candidate_runs_no_trial(tmp_path, tiny_bundle, monkeypatch) -> None:
    """Without OpenVINO, auto has nothing to choose between: no session is built, no audio read for it."""
    from bird_infer.runtime import precision

    manifest, _, _ = tiny_bundle
    built = []
    monkeypatch.setattr(precision, "have", lambda module: False)
    monkeypatch.setattr(precision, "BundleModel", lambda *a, **k: built.append(a))
    monkeypatch.setattr(precision, "guard_block", lambda *a: built.append("audio"))
    session, note, trials = choose_precision(manifest, SessionSettings(precision="auto"), [tmp_path / "x.wav"])
    assert (session.backend, session.precision) == ("onnxruntime", "fp32") and trials == [] and built == []
    assert "the only mode" in note


def test_cpu_flags_override(monkeypatch) -> None:
    monkeypatch.setenv("BIRD_INFER_CPU_FLAGS", "avx2 fma")
    info = cpu_info()
    assert info.flags == ("avx2", "fma") and not info.has_bf16


def _check_ranked_then_guarded(trials, session) -> None:
    """auto's rule: modes ranked by time (one fold per member); every mode ranked faster than the one chosen was
    guarded on the whole bundle and refused; the one chosen was accepted (or is the reference)."""
    ranked = sorted((t for t in trials if t.ms_per_chunk is not None), key=lambda t: t.ms_per_chunk)
    names = [t.name for t in ranked]
    k = names.index(f"{session.backend} {session.precision}")
    assert all(t.refused is not None and t.max_delta is not None for t in ranked[:k]), ranked
    assert ranked[k].refused is None and ranked[k].max_delta is not None


def test_auto_picks_fp32_when_the_guard_refuses_or_the_cpu_lacks_bf16(tmp_path, tiny_bundle, caplog) -> None:
    manifest, _, _ = tiny_bundle
    audio = _audio(tmp_path / "audio")
    paths = sorted(audio.glob("*.wav"))
    auto = SessionSettings(precision="auto")
    with caplog.at_level("INFO", logger="bird_infer.runtime.precision"):
        session, note, trials = choose_precision(manifest, auto, paths, cpu=NO_BF16)
    assert [t.name for t in trials] == ["onnxruntime fp32", "openvino fp32"]
    fastest = min((t for t in trials if t.refused is None), key=lambda t: t.ms_per_chunk)
    assert (session.backend, session.precision) == (fastest.backend, fastest.precision)
    assert f"precision: {fastest.name} (auto" in caplog.text
    _check_ranked_then_guarded(trials, session)
    session, note, trials = choose_precision(manifest, auto, paths, bound=0.0, cpu=WITH_BF16)
    names = [t.name for t in trials]
    assert names == ["onnxruntime fp32", "openvino fp32", "openvino bf16"]
    _check_ranked_then_guarded(trials, session)
    assert (session.backend, session.precision) != ("openvino", "bf16")  # bf16 is never exactly fp32
    assert note.startswith(f"{session.backend} {session.precision} (auto")
    # the guard still refuses bf16 when asked for it alone, on the whole bundle
    refused, note, trials = choose_precision(
        manifest, SessionSettings(backend="openvino", precision="bf16"), paths, 0.0
    )
    assert (refused.backend, refused.precision) == ("onnxruntime", "fp32") and "refused" in note
    assert trials[-1].max_delta is None or trials[-1].max_delta > 0


def test_static_and_dynamic_openvino_shapes_agree(tiny_bundle, check_chunks) -> None:
    manifest, _, _ = tiny_bundle
    feats = LogMelFrontend(manifest.member().frontend, manifest.member().audio.sample_rate)(check_chunks[:5])
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
    from bird_infer.tools.quantize import quantize_bundle

    manifest, _, _ = tiny_bundle
    models = tmp_path / "models"
    shutil.copytree(manifest.root, models)
    audio = _audio(tmp_path / "audio", n=4)
    quantized, results = quantize_bundle(models, [audio], calibration_chunks=8, judge_chunks=4)
    assert [r.fold for r in results] == [f.name for f in quantized.member().folds]
    for fold in quantized.member().folds:
        assert fold.int8 is not None and (models / fold.int8.file).is_file() and (models / fold.int8.weights).is_file()
    data = json.loads((models / "manifest.json").read_text())
    assert data["members"][0]["folds"][0]["int8"]["sha256"] == quantized.member().folds[0].int8.sha256
    with pytest.raises(PrecisionRefusedError, match="int8 refused"):
        FoldEnsemble(manifest, SessionSettings(backend="openvino", precision="int8"))  # the original has no int8
    feats = LogMelFrontend(quantized.member().frontend, quantized.member().audio.sample_rate)(
        synthetic_chunks(n=3, seed=9)
    )
    out = FoldEnsemble(quantized, SessionSettings(backend="openvino", precision="int8")).fold_outputs(feats)
    assert out.shape == (2, 3, len(quantized.labels)) and np.isfinite(out).all()

    paths = sorted(audio.glob("*.wav"))
    int8 = SessionSettings(backend="openvino", precision="int8")
    _, _, trials = choose_precision(quantized, int8, paths, bound=1.0)
    delta = trials[-1].max_delta
    print(
        f"int8 tiny bundle: max |p - p_fp32| = {delta:.4g} (per fold on judge rows: {[r.max_delta for r in results]})"
    )
    assert delta is not None and delta > 0
    accepted, note, _ = choose_precision(quantized, int8, paths, bound=delta)
    assert accepted.precision == "int8" and note.startswith("openvino int8 (")
    refused, note, _ = choose_precision(quantized, int8, paths, bound=delta / 2)
    assert refused.precision == "fp32" and "refused" in note
    auto = SessionSettings(precision="auto")
    chosen, note, trials = choose_precision(quantized, auto, paths, bound=delta, cpu=NO_BF16)
    assert [t.name for t in trials] == ["onnxruntime fp32", "openvino fp32", "openvino int8"]
    fastest = min((t for t in trials if t.refused is None), key=lambda t: t.ms_per_chunk)
    assert chosen.precision == fastest.precision  # auto keeps the fastest the guard accepts
    verified = load_manifest(models)  # the checksums of the int8 files are verified on load
    (models / verified.member().folds[0].int8.weights).write_bytes(b"corrupt")
    with pytest.raises(Exception, match="sha256"):
        load_manifest(models)


def test_precision_benchmark_runs_on_the_tiny_bundle(tmp_path, tiny_bundle, tiny_config) -> None:
    """benchmarks/precision.py end to end (ORT int8 from the folds' checkpoints, OpenVINO fp32): a smoke run on
    the tiny bundle, so that the benchmark cannot rot unnoticed."""
    torch = pytest.importorskip("torch")
    from benchmarks.precision import main
    from bird_infer.train.recipe import write_train_config

    manifest, models, _ = tiny_bundle
    audio = _audio(tmp_path / "audio", n=2)
    checkpoints = []
    for k, model in enumerate(models):
        checkpoints.append(tmp_path / f"fold{k}.pt")
        torch.save({"state_dict": model.state_dict()}, checkpoints[-1])
    config = write_train_config(tiny_config, tmp_path)
    out = tmp_path / "precision.json"
    args = ["--models", str(manifest.root), "--audio", str(audio), "--chunks", "8", "--json", str(out)]
    assert main([*args, "--config", str(config), "--checkpoints", *map(str, checkpoints)]) == 0
    variants = json.loads(out.read_text())["variants"]
    assert {"ort_fp32", "ort_int8_qdq", "openvino_fp32"} <= set(variants)
    assert variants["ort_fp32"]["max_abs_delta_p"] == 0
    assert all(v["ms_per_chunk_per_fold"] > 0 and np.isfinite(v["max_abs_delta_p"]) for v in variants.values())


def test_auto_ranks_one_fold_per_member_and_guards_only_what_it_runs(tmp_path, tiny_bundle, monkeypatch) -> None:
    """The ranking builds each mode with every member's first fold only; the guard then builds the whole bundle,
    for the reference and for the modes it judges, fastest first, and no other."""
    from bird_infer.runtime import precision

    manifest, _, _ = tiny_bundle
    paths = sorted(_audio(tmp_path / "audio").glob("*.wav"))
    built: list[tuple[str, list[int]]] = []
    real = precision.BundleModel

    def recording(m, settings):
        built.append((f"{settings.backend} {settings.precision}", [len(x.folds) for x in m.members]))
        return real(m, settings)

    monkeypatch.setattr(precision, "BundleModel", recording)
    session, _note, trials = choose_precision(manifest, SessionSettings(precision="auto"), paths, 1.0, NO_BF16)
    n_folds = [len(m.folds) for m in manifest.members]
    assert n_folds != [1] * len(n_folds)  # the tiny bundle has several folds: the lead differs from the whole
    ranking, guarding = built[:2], built[2:]
    assert sorted(name for name, _ in ranking) == ["onnxruntime fp32", "openvino fp32"]
    assert all(folds == [1] * len(n_folds) for _, folds in ranking)
    chosen = f"{session.backend} {session.precision}"
    guarded = [t.name for t in trials if t.max_delta is not None]
    if chosen == "onnxruntime fp32" and trials[0].ms_per_chunk <= trials[1].ms_per_chunk:
        assert guarding == [] and guarded == ["onnxruntime fp32"]  # the reference was fastest: nothing to judge
    else:
        assert guarding == [("onnxruntime fp32", n_folds), (chosen, n_folds)] and chosen in guarded
        assert len(guarded) == 1  # bound 1.0: the fastest is accepted, the slower never judged


def test_a_mode_this_cpu_cannot_run_is_refused_before_any_worker_starts(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    paths = sorted(_audio(tmp_path / "audio").glob("*.wav"))
    with pytest.raises(PrecisionRefusedError):  # the original has no int8 models
        FoldEnsemble(manifest, SessionSettings(backend="openvino", precision="int8"))
    choice = start_precision(manifest, SessionSettings(backend="openvino", precision="int8"), paths)
    assert choice.done() and (choice.start.backend, choice.start.precision) == ("onnxruntime", "fp32")
    assert choice.note.startswith("onnxruntime fp32 (openvino int8: int8 refused")
