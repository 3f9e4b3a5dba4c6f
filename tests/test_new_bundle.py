"""A bundle from nothing, with the commands only and no torch (issue 29): ``new-bundle`` from a label list, then
``add-member`` for a frame-wise waveform member with shifts -1.25/0/+1.25, a Perch-shaped backbone with an embedding
and a head on it; ``--shifts`` as the docs write them; every bound checked before anything is written, each refusal
one ``bird-infer: error:`` line with the bundle's files unchanged; metadata that says only what is true."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.contract.birdnet import ebird_map
from tests.conftest import ROOT
from tests.standins import PERCH_SAMPLES, framewise_standin, head_standin, perch_standin

SR = 32000
N_LABELS = 30
HEAD_LABELS = 12


def cli(*args: str, cwd: Path, blocker: Path) -> subprocess.CompletedProcess:
    """``python -m bird_infer ARGS`` with torch made unimportable (a ``torch`` package that raises, first on the
    path): what a fresh venv without the torch extra has."""
    env = {"PYTHONPATH": f"{blocker}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "bird_infer", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def one_error_line(done: subprocess.CompletedProcess, culprit: str) -> None:
    errors = [x for x in done.stderr.splitlines() if x.startswith("bird-infer: error:")]
    assert done.returncode == 2 and len(errors) == 1 and culprit in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("from_nothing")
    blocker = tmp / "blocker"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    codes = sorted(ebird_map())[:N_LABELS]
    (tmp / "labels.txt").write_text("\n".join(codes) + "\n")
    names = ebird_map()
    perch_classes = [names[c] for c in codes] + [f"Unknown species {k}" for k in range(20)]
    (tmp / "perch_labels.txt").write_text("\n".join(perch_classes) + "\n")
    (tmp / "head_labels.txt").write_text("\n".join(codes[:HEAD_LABELS]) + "\n")
    framewise_standin(tmp / "sed10.onnx", N_LABELS, 10 * SR)
    perch_standin(tmp / "perch.onnx", len(perch_classes))
    head_standin(tmp / "head.onnx", 64, HEAD_LABELS)
    audio = tmp / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for k, seconds in enumerate((23.0, 9.0)):
        t = np.arange(int(seconds * SR)) / SR
        burst = (np.sin(2 * np.pi * 0.3 * t) > 0.3).astype(np.float32)
        x = 0.3 * burst * np.sin(2 * np.pi * (1800 + 500 * k) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(audio / f"site{k}.wav", x.astype(np.float32), SR)
    return {"tmp": tmp, "blocker": blocker, "codes": codes, "audio": audio}


def test_a_three_member_bundle_from_an_empty_folder_runs_in_predict_bundle_and_the_kernel(world) -> None:
    tmp, blocker, audio = world["tmp"], world["blocker"], world["audio"]
    b = tmp / "bundle"

    def run(*args: str) -> subprocess.CompletedProcess:
        done = cli(*args, cwd=tmp, blocker=blocker)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    started = run("new-bundle", str(b), "--labels", "labels.txt")
    assert "no member yet" in started.stdout
    one_error_line(cli("predict", "--audio", str(audio), "--models", str(b), cwd=tmp, blocker=blocker), "no member")
    run(
        "add-member", str(b), "--onnx", "sed10.onnx", "--name", "sed10", "--output", "frames", "--framewise",
        "--time-axis", "1", "--window-s", "10", "--shifts=-1.25:1,0:2,1.25:2", "--check-audio", str(audio),
    )  # fmt: skip
    added = run(
        "add-member", str(b), "--onnx", "perch.onnx", "--name", "perch", "--output", "label", "--holds", "logits",
        "--activation", "sigmoid", "--labels", "perch_labels.txt", "--embedding", "embedding", "--check-audio",
        str(audio),
    )  # fmt: skip
    assert "ignored" in added.stdout and "Unknown species 0" in added.stdout  # the dropped labels, named
    run(
        "add-member", str(b), "--onnx", "head.onnx", "--name", "head", "--output", "probs", "--labels",
        "head_labels.txt", "--source", "perch:embedding", "--weight", "0.75", "--check-audio", str(audio),
    )  # fmt: skip
    manifest = json.loads((b / "manifest.json").read_text())
    sed10, perch, head = manifest["members"]
    assert [s["offset_s"] for s in sed10["shifts"]] == [-1.25, 0.0, 1.25]
    assert all("model" not in m for m in manifest["members"])  # no architecture or backbone it was not told
    assert sed10["folds"][0]["clipwise"]["shape"] == ["batch", 25, N_LABELS]  # as the ONNX file declares it
    assert sed10["frontend"] == {"kind": "waveform"} and sed10["audio"]["clip_s"] == 10.0
    assert perch["folds"][0]["input"]["shape"] == ["batch", PERCH_SAMPLES] and head["source"]["member"] == "perch"
    pred = run("predict", "--audio", str(audio), "--models", str(b), "--out", "sub.csv", "--workers", "1")
    sub = pd.read_csv(tmp / "sub.csv")
    assert sub.shape == (5 + 2, 1 + N_LABELS), pred.stderr[-2000:]
    assert np.isfinite(sub.iloc[:, 1:].to_numpy()).all() and sub.iloc[:, 1:].to_numpy().std() > 0
    run("bundle", "--models", str(b), "--out", "packed", "--no-wheels")
    kernel = subprocess.run(
        [sys.executable, str(ROOT / "kaggle_kernel.py"), "--audio", str(audio), "--models",
         str(tmp / "packed" / "models"), "--out", "kernel.csv", "--workers", "1", "--precision", "fp32"],
        capture_output=True, text=True, cwd=tmp, timeout=600,
    )  # fmt: skip
    assert kernel.returncode == 0, kernel.stderr[-3000:]
    assert (tmp / "kernel.csv").read_bytes() == (tmp / "sub.csv").read_bytes()


REFUSALS = {
    "a shift beyond the window": (["--window-s", "5", "--shifts", "0:1,6:1"], "offset 6 s is not within the window"),
    "a shift of exactly the window": (["--window-s", "5", "--shifts=-5:1,0:1"], "offset -5 s is not within"),
    "no offset 0": (["--shifts=-1.25:1,1.25:1"], "hold no offset 0"),
    "a weight of 0": (["--shifts=0:0,1:1"], "weight 0"),
    "--shifts twice": (["--shifts", "0:2,1.25:2", "--shifts=-1.25:1"], "--shifts given 2 times"),
    "a shift that is no number": (["--shifts", "0:2,soon:1"], "'soon:1'"),
    "a folder with no manifest": (["--bundle-folder", "empty"], "bird-infer new-bundle"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_is_one_error_line_and_changes_nothing(world, tmp_path, case) -> None:
    tmp, blocker, audio = world["tmp"], world["blocker"], world["audio"]
    b = tmp_path / "b"
    assert cli("new-bundle", str(b), "--labels", str(tmp / "labels.txt"), cwd=tmp, blocker=blocker).returncode == 0
    extra, culprit = REFUSALS[case]
    if extra[0] == "--bundle-folder":
        b = tmp_path / extra[1]
        b.mkdir()
        extra = []
    before = digest(b)
    done = cli(
        "add-member", str(b), "--onnx", str(tmp / "sed10.onnx"), "--name", "sed10", "--output", "frames",
        "--framewise", "--time-axis", "1", "--window-s", "10", *extra, "--check-audio", str(audio),
        cwd=tmp, blocker=blocker,
    )  # fmt: skip
    one_error_line(done, culprit)
    assert digest(b) == before


def test_new_bundle_takes_a_sample_submission_and_refuses_a_used_folder(world, tmp_path) -> None:
    tmp, blocker = world["tmp"], world["blocker"]
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame(columns=["row_id", "1139490", "amerob", "norcar"]).to_csv(sample, index=False)
    done = cli("new-bundle", str(tmp_path / "b"), "--sample-submission", str(sample), cwd=tmp, blocker=blocker)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["labels"] == ["1139490", "amerob", "norcar"]
    before = digest(tmp_path / "b")
    again = cli("new-bundle", str(tmp_path / "b"), "--labels", str(tmp / "labels.txt"), cwd=tmp, blocker=blocker)
    one_error_line(again, "holds a bundle")
    assert digest(tmp_path / "b") == before


def test_a_bundle_with_labels_no_member_predicts_is_refused_when_run_or_packed(world, tmp_path) -> None:
    tmp, blocker, audio = world["tmp"], world["blocker"], world["audio"]
    b = tmp_path / "b"
    assert cli("new-bundle", str(b), "--labels", str(tmp / "labels.txt"), cwd=tmp, blocker=blocker).returncode == 0
    done = cli(
        "add-member", str(b), "--onnx", str(tmp / "head.onnx"), "--name", "h", "--output", "probs", "--labels",
        str(tmp / "head_labels.txt"), "--check-audio", str(audio), cwd=tmp, blocker=blocker,
    )  # fmt: skip
    # a head needs a source: this one is refused; a backbone for only some labels is fine while building
    assert done.returncode == 2
    done = cli(
        "add-member", str(b), "--onnx", str(tmp / "perch.onnx"), "--name", "perch", "--output", "label", "--holds",
        "logits", "--activation", "sigmoid", "--labels", str(tmp / "perch_labels.txt"), "--check-audio", str(audio),
        cwd=tmp, blocker=blocker,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no member predicts yet" not in done.stdout  # perch maps every bundle label
    ok = json.loads((b / "manifest.json").read_text())
    ok["labels"].append("zzzzzz1")
    (b / "manifest.json").write_text(json.dumps(ok))
    for args in (["predict", "--audio", str(audio), "--models", str(b)], ["bundle", "--models", str(b), "--out", "x"]):
        one_error_line(cli(*args, cwd=tmp_path, blocker=blocker), "'zzzzzz1'")
