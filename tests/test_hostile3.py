"""Hostile round 3 (issue 33): add-member, post-processing, tune and the bundle under bad input, class by class.
Each test holds several instances of its class; each failed on the main before this round."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import soundfile as sf
from onnx import TensorProto, helper

from bird_infer.cli import main
from bird_infer.contract.errors import AddMemberError, BirdInferError, InvalidFieldError, ManifestError
from bird_infer.contract.manifest import load_manifest
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from bird_infer.tools.add_member import MemberRequest, add_member
from tests.conftest import ROOT, with_second_member, write_json
from tests.standins import OPSET, PERCH_SAMPLES, head_standin, perch_standin

SR = 32000


@pytest.fixture()
def bundle(tmp_path, tiny_bundle) -> Path:
    manifest, _, _ = tiny_bundle
    folder = tmp_path / "bundle"
    shutil.copytree(manifest.root, folder)
    return folder


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("h3audio")
    rng = np.random.default_rng(2)
    for k in range(3):
        t = np.arange(12 * SR) / SR
        x = 0.3 * np.sin(2 * np.pi * (900 + 700 * k) * t) * (np.sin(2 * np.pi * 0.4 * t) > 0)
        sf.write(
            folder / f"S0{k}_20260101_06{k}000.wav", (x + 0.01 * rng.standard_normal(t.size)).astype(np.float32), SR
        )
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".bird_infer.lock"}


def perch(tmp: Path, labels, name: str = "p.onnx") -> Path:
    return perch_standin(tmp / name, len(labels))


PERCH_FIELDS = {"output": "label", "holds": "logits", "activation": "sigmoid", "embeddings": ("embedding",)}


# --- 1. external-data weights -------------------------------------------------------------------------------------


def test_external_data_weights_are_inlined_checked_and_confined(bundle, tmp_path, audio) -> None:
    labels = load_manifest(bundle).labels
    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(perch(tmp_path, labels)))
    onnx.save_model(model, str(src / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    assert (src / "ext.data").exists()
    add_member(bundle, MemberRequest(onnx=src / "ext.onnx", name="ext", **PERCH_FIELDS), [audio])
    moved = tmp_path / "elsewhere"
    shutil.copytree(bundle, moved)
    (src / "ext.data").write_bytes(b"\0" * 16)  # a file at the old relative path is never read
    kept = onnx.load(str(moved / "ext.onnx"), load_external_data=False)
    assert all(t.data_location != TensorProto.EXTERNAL for t in kept.graph.initializer)
    summary = run_predict(audio, moved, tmp_path / "s.csv", options=RunOptions(workers=1))
    assert summary.n_failed == 0
    # a location outside the model's folder, and a missing data file: refused, nothing written
    outside = tmp_path / "out"
    outside.mkdir()
    model = onnx.load(str(perch(tmp_path, labels, "p2.onnx")))  # saving as external data marks a proto: a new one
    onnx.save_model(model, str(outside / "x.onnx"), save_as_external_data=True, location="x.data", size_threshold=0)
    escaping = onnx.load(str(outside / "x.onnx"), load_external_data=False)
    for t in escaping.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../x.data"
    (outside / "y.onnx").write_bytes(escaping.SerializeToString())
    before = snapshot(bundle)
    with pytest.raises(AddMemberError, match="outside the model's folder"):
        add_member(bundle, MemberRequest(onnx=outside / "y.onnx", name="y", **PERCH_FIELDS), [audio])
    (outside / "x.data").unlink()
    with pytest.raises(AddMemberError, match="which is missing"):
        add_member(bundle, MemberRequest(onnx=outside / "x.onnx", name="x", **PERCH_FIELDS), [audio])
    assert snapshot(bundle) == before
    # a hand-written manifest naming a fold that keeps external data: refused at load, not at the worker
    shutil.copy2(src / "ext.onnx", bundle / "raw.onnx")
    (bundle / "ext.data").write_bytes((src / "ext.data").read_bytes())
    data = json.loads((bundle / "manifest.json").read_text())
    import hashlib

    raw = next(m for m in data["members"] if m["name"] == "ext")
    raw["folds"][0]["file"], raw["folds"][0]["sha256"] = (
        "raw.onnx",
        hashlib.sha256((bundle / "raw.onnx").read_bytes()).hexdigest(),
    )
    write_json(bundle / "manifest.json", data)
    with pytest.raises(ManifestError, match="external-data files"):
        load_manifest(bundle)


# --- 2. shapes from what the model computes -----------------------------------------------------------------------


def _lying_model(path: Path, declared, computed: int) -> Path:
    """(batch, 160000) -> probs declared ``declared`` but computing ``computed`` columns."""
    w = np.random.default_rng(0).normal(0, 0.01, (PERCH_SAMPLES // 1000, computed)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["inputs", "shape"], ["framed"]),
        helper.make_node("ReduceMean", ["framed"], ["m"], axes=[2], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lying",
        [helper.make_tensor_value_info("inputs", TensorProto.FLOAT, ["batch", PERCH_SAMPLES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, declared)],
        [
            onnx.numpy_helper.from_array(w, "w"),
            onnx.numpy_helper.from_array(np.array([0, 160, 1000], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_shapes_are_what_the_model_computes(bundle, tmp_path, audio) -> None:
    labels = list(load_manifest(bundle).labels)
    before = snapshot(bundle)
    cases = [
        (["batch", 10], 13, labels[:10], r"declared \['batch', 10\] .* computes \[\d+, 13\]"),
        (["batch", "classes"], 13, labels[:10], r"computes \[\d+, 13\] .* 13 columns but 10 model labels were given"),
        (["batch", 10, 1], 10, labels[:10], r"shape \['batch', 10, 1\]; a output must be \(batch, labels\)"),
    ]
    for k, (declared, computed, lab, message) in enumerate(cases):
        onnx_file = _lying_model(tmp_path / f"lie{k}.onnx", declared, computed)
        with pytest.raises((AddMemberError, ManifestError), match=message):
            add_member(bundle, MemberRequest(onnx=onnx_file, name="lie", output="probs", labels=tuple(lab)), [audio])
        assert snapshot(bundle) == before


# --- 3. messages, not tracebacks ----------------------------------------------------------------------------------


def _typed_model(path: Path, elem: int, domain: str = "") -> Path:
    nodes = (
        [helper.make_node("Identity", ["x"], ["y"], domain=domain)]
        if not domain
        else [helper.make_node("MyOp", ["x"], ["y"], domain=domain)]
    )
    graph = helper.make_graph(
        nodes,
        "typed",
        [helper.make_tensor_value_info("x", elem, ["batch", PERCH_SAMPLES])],
        [helper.make_tensor_value_info("y", elem, ["batch", PERCH_SAMPLES])],
    )
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_add_member_and_tune_give_one_error_line_not_a_traceback(bundle, tmp_path, audio, capsys) -> None:
    labels_latin1 = tmp_path / "labels.txt"
    labels_latin1.write_bytes("Pic épeiche\nmésange\n".encode("latin-1"))
    models = [
        (_typed_model(tmp_path / "custom.onnx", TensorProto.FLOAT, "my.ops"), "custom operators"),
        (_typed_model(tmp_path / "half.onnx", TensorProto.FLOAT16), "is float16"),
        (_typed_model(tmp_path / "ints.onnx", TensorProto.INT64), "is int64"),
    ]
    before = snapshot(bundle)
    base = ["add-member", str(bundle), "--name", "bad", "--output", "y", "--check-audio", str(audio)]
    for path, message in models:
        assert main([*base, "--onnx", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("bird-infer: error:") == 1 and message in err and "Traceback" not in err
    head = head_standin(tmp_path / "h.onnx", 64, 2)
    assert main([*base, "--onnx", str(head), "--labels", str(labels_latin1)]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8" in err and "Latin-1" in err
    assert snapshot(bundle) == before
    truth = tmp_path / "truth.csv"
    pd.DataFrame({"row_id": ["S00_20260101_060000_5"]}).to_csv(truth, index=False)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    tune = ["tune", "--audio", str(audio), "--truth", str(truth), "--models", str(bundle), "--workers", "1"]
    assert main([*tune, "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err


# --- 4. a slow model is slow, not dead ----------------------------------------------------------------------------


def test_a_slow_working_model_is_not_taken_for_hung(tmp_path, tiny_bundle, caplog) -> None:
    """Blocks of 2.5 s against a stall floor of 2 s: the old bound took the worker for hung at its first block.
    The bound now learns from the check's pace (``expected_row_s``, what plan_run measures before any audio)."""
    from bird_infer.run.engine import predict_files
    from bird_infer.run.outcomes import FileResult
    from bird_infer.run.plan import plan_run
    from tests.faults import StallingPredictor
    from tests.test_faults import write_tones

    manifest, _, _ = tiny_bundle
    paths = write_tones(tmp_path / "a", ["a.wav", "b.wav"], seconds=20.0)
    StallingPredictor.block_s = 2.5
    try:
        options = RunOptions(
            workers=2, block_chunks=1, predictor_factory=StallingPredictor, stall_floor_s=2.0, stall_factor=4.0,
            timeout_floor_s=100_000.0, split_files=False, expected_row_s=1.0,
        )  # fmt: skip
        outcomes = predict_files(paths, manifest, options, rows=[4, 4])
    finally:
        StallingPredictor.block_s = 0.5
    assert all(isinstance(o, FileResult) and o.fallback_rows == 0 for o in outcomes)
    plan = plan_run(tmp_path / "a", manifest.root, lambda e, r: [p.stem for p in e], RunOptions(workers=1), 1e-6)
    assert plan.options.expected_row_s > 0  # measured on the check, before any audio
    assert "over the 0-min limit" in caplog.text  # a run that will not fit its limit says so


# --- 5. manifest writes cannot tear; one writer at a time ---------------------------------------------------------


def test_manifest_writes_cannot_tear_and_two_writers_are_refused(bundle, tmp_path, audio, monkeypatch) -> None:
    from bird_infer.contract import manifest as manifest_module
    from bird_infer.tools.bundle_folder import bundle_lock

    labels = load_manifest(bundle).labels
    onnx_file = perch(tmp_path, labels)
    before = snapshot(bundle)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(manifest_module.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        add_member(bundle, MemberRequest(onnx=onnx_file, name="p", **PERCH_FIELDS), [audio])
    monkeypatch.undo()
    assert snapshot(bundle) == before and not list(bundle.glob(".manifest.json.*"))
    with bundle_lock(bundle), pytest.raises(AddMemberError, match="another add-member or add-stage is writing"):
        add_member(bundle, MemberRequest(onnx=onnx_file, name="p", **PERCH_FIELDS), [audio])
    assert snapshot(bundle) == before
    add_member(bundle, MemberRequest(onnx=onnx_file, name="p", **PERCH_FIELDS), [audio])  # the lock was let go
    assert "p" in [m.name for m in load_manifest(bundle).members]


# --- 6 and 7. tune: its output never a bundle file; every check before any audio ----------------------------------


def test_tune_refuses_bundle_files_bad_folds_and_bad_truth_before_any_audio(
    bundle, tmp_path, audio, monkeypatch
) -> None:
    from bird_infer.tools import tune as tune_module

    def no_audio(*a, **k):
        raise AssertionError("audio was read")

    monkeypatch.setattr(tune_module, "iter_outcomes", no_audio)
    labels = list(load_manifest(bundle).labels)
    truth = tmp_path / "truth.csv"
    pd.DataFrame({"row_id": ["S00_20260101_060000_5"], labels[0]: [1]}).to_csv(truth, index=False)
    before = snapshot(bundle)
    fold = load_manifest(bundle).members[0].folds[0].file
    for out in [bundle / ".." / bundle.name / "manifest.json", bundle / fold, bundle / "manifest.json"]:
        with pytest.raises(BirdInferError, match="is a file of the bundle"):
            tune_module.tune(audio, bundle, truth, out=out, options=RunOptions(workers=1))
    for folds in (1, 0, 4):  # three readable soundscapes
        with pytest.raises(BirdInferError, match="needs 2 to 3 folds"):
            tune_module.tune(audio, bundle, truth, folds=folds, options=RunOptions(workers=1))
    bad = tmp_path / "bad_truth.csv"
    pd.DataFrame({"row_id": ["x_5"], "no_such_bird": [1]}).to_csv(bad, index=False)
    with pytest.raises(BirdInferError, match="names labels the bundle lacks"):
        tune_module.tune(audio, bundle, bad, folds=2, options=RunOptions(workers=1))
    pd.DataFrame({"label": [1]}).to_csv(bad, index=False)
    with pytest.raises(BirdInferError, match="no row_id column"):
        tune_module.tune(audio, bundle, bad, folds=2, options=RunOptions(workers=1))
    assert snapshot(bundle) == before


# --- 8. every cell finite, whatever finite parameters -------------------------------------------------------------


def test_extreme_finite_parameters_give_finite_cells_or_are_refused(tmp_path, tiny_bundle, audio) -> None:
    manifest, _, _ = tiny_bundle
    two = with_second_member(manifest, tmp_path / "two", weight=1e300)
    data = json.loads((two / "manifest.json").read_text())
    data["label_groups"] = {"g": list(data["labels"][:5])}
    data["blend"] = {"rule": "mean", "group_weights": {"g": {"second": 1e308}}}
    data["postprocess"] = [
        {"step": "smooth", "kernel": [1e308, 1e308, 1e308]},
        {"step": "file_scale", "mode": "topk", "k": 10**9, "gamma": 1e300},
        {"step": "temperature", "t": 1000.0},
    ]
    write_json(two / "manifest.json", data)
    summary = run_predict(audio, two, tmp_path / "x.csv", options=RunOptions(workers=1))
    cells = pd.read_csv(summary.out_path).iloc[:, 1:].to_numpy()
    assert np.isfinite(cells).all() and cells.min() >= 0 and cells.max() <= 0.999999
    for blend, message in [
        ({"rule": "power", "power": 1e-9}, "blend.power"),
        ({"rule": "power", "power": 1e9}, "blend.power"),
    ]:
        data["blend"] = blend
        write_json(two / "manifest.json", data)
        with pytest.raises(InvalidFieldError, match=message):
            load_manifest(two)
    data["blend"] = {"rule": "mean"}
    pd.DataFrame({"site": ["S00"], data["labels"][0]: [1e10]}).to_csv(two / "pri.csv", index=False)
    import hashlib

    sha = hashlib.sha256((two / "pri.csv").read_bytes()).hexdigest()
    data["postprocess"] = [
        {"step": "prior", "pattern": r"^(?P<site>S\d+)_", "table": "pri.csv", "sha256": sha, "beta": 40}
    ]
    write_json(two / "manifest.json", data)
    with pytest.raises(InvalidFieldError, match="overflows"):
        load_manifest(two)


# --- 9. text that looks equal is equal; duplicates refused with their lines ----------------------------------------


def test_bom_nfd_and_duplicates_in_text_tables(bundle, tmp_path, audio) -> None:
    import unicodedata

    from bird_infer.contract.training_config import read_labels_file
    from bird_infer.tools.add_member import read_label_map

    labels = tmp_path / "l.txt"
    labels.write_bytes("\ufeffamerob\n".encode() + unicodedata.normalize("NFD", "mésange\n").encode())
    assert read_labels_file(labels) == ("amerob", "mésange")  # BOM gone, NFC
    labels.write_text("amerob\nnorcar\namerob\n", encoding="utf-8")
    with pytest.raises(InvalidFieldError, match=r"'amerob' is listed twice, on lines 1 and 3"):
        read_labels_file(labels)
    bundle_labels = list(load_manifest(bundle).labels)
    mapping = tmp_path / "map.csv"
    mapping.write_bytes(
        "\ufeffmodel,bundle\n".encode() + unicodedata.normalize("NFD", f"é1,{bundle_labels[0]}\n").encode()
    )
    assert read_label_map(mapping, ["é1"], bundle_labels) == {"é1": bundle_labels[0]}
    mapping.write_text(f"a,{bundle_labels[0]}\nb,{bundle_labels[1]}\na,{bundle_labels[2]}\n", encoding="utf-8")
    with pytest.raises(InvalidFieldError, match=r"'a' is listed twice, on lines 1 and 3"):
        read_label_map(mapping, ["a", "b"], bundle_labels)
    data = json.loads((bundle / "manifest.json").read_text())
    pd.DataFrame({"site": ["S00", "S01", "S00"], bundle_labels[0]: [1.0, 2.0, 3.0]}).to_csv(
        bundle / "p.csv", index=False
    )
    import hashlib

    sha = hashlib.sha256((bundle / "p.csv").read_bytes()).hexdigest()
    data["postprocess"] = [{"step": "prior", "pattern": r"^(?P<site>S\d+)_", "table": "p.csv", "sha256": sha}]
    write_json(bundle / "manifest.json", data)
    with pytest.raises(InvalidFieldError, match=r"listed twice, on lines 2 and 4"):
        load_manifest(bundle)


# --- 10. window bombs refused by name -----------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "seconds"), [(192000, 3601.0), (1_536_000, 120.0), (32000, 3.6e6)])
def test_window_bombs_are_refused_by_name_before_any_allocation(bundle, rate, seconds) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    data["members"][0]["audio"].update(sample_rate=rate, clip_s=seconds)
    write_json(bundle / "manifest.json", data)
    with pytest.raises(InvalidFieldError, match="past the bound of 115200000"):
        load_manifest(bundle)


# --- 11 and 12. bundle: the manifest given is the one packed; no leftovers; the missing wheel named -----------------


def test_bundle_packs_the_manifest_it_was_given_and_leaves_nothing_on_failure(
    bundle, tmp_path, audio, monkeypatch
) -> None:
    from bird_infer.tools import bundle as bundle_module

    data = json.loads((bundle / "manifest.json").read_text())
    data["postprocess"] = [{"step": "file_max_mix", "a": 0.5}]
    write_json(bundle / "manifest.tuned.json", data)
    packed = bundle_module.build_bundle(tmp_path / "packed", bundle / "manifest.tuned.json", wheels=False).folder
    assert (packed / "models" / "manifest.json").read_bytes() == (bundle / "manifest.tuned.json").read_bytes()
    want = run_predict(audio, bundle / "manifest.tuned.json", tmp_path / "p.csv", options=RunOptions(workers=1))
    kernel = subprocess.run(
        [sys.executable, str(packed / "kaggle_kernel.py"), "--audio", str(audio), "--models", str(packed / "models"),
         "--out", str(tmp_path / "k.csv"), "--workers", "1", "--precision", "fp32"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert kernel.returncode == 0, kernel.stderr[-2000:]
    assert (tmp_path / "k.csv").read_bytes() == want.out_path.read_bytes()

    def broken():
        raise BirdInferError("kaggle_kernel.py not found (injected)")

    monkeypatch.setattr(bundle_module, "kernel_source", broken)
    with pytest.raises(BirdInferError, match="injected"):
        bundle_module.build_bundle(tmp_path / "again", bundle, wheels=False)
    assert not (tmp_path / "again").exists() and not list(tmp_path.glob(".again.partial-*"))
    monkeypatch.undo()
    assert bundle_module.build_bundle(tmp_path / "again", bundle, wheels=False).folder.is_dir()  # the rerun works


def test_a_missing_wheel_is_named_not_blamed_on_the_python_version(tmp_path, monkeypatch) -> None:
    import importlib.util

    monkeypatch.setenv("BIRD_INFER_KAGGLE_INPUT", str(tmp_path / "input"))
    spec = importlib.util.spec_from_file_location("kernel_h3", ROOT / "kaggle_kernel.py")
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = tmp_path / "b" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / f"onnxruntime-1.0-{here}-{here}-manylinux_2_17_x86_64.whl").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(kernel.importlib.util, "find_spec", lambda m, *a: None if m == "regex" else real(m, *a))
    monkeypatch.setattr(
        kernel, "pip_install", lambda w, p: subprocess.CompletedProcess([], 1, "", "No matching distribution for regex")
    )
    with pytest.raises(kernel.KernelError) as e:
        kernel.ensure_runtime([tmp_path / "b"])
    assert "none for ['regex']" in str(e.value) and "--python" not in str(e.value)
