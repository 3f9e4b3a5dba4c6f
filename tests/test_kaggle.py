"""Kaggle as it is today: editions, input discovery in old and new layouts, limits, numeric labels, ROC-AUC,
and the whole thing in an offline notebook (a real Jupyter kernel in a fresh environment without onnxruntime).

Every test sets BIRD_INFER_KAGGLE_INPUT to a folder of its own: none sees the host's /kaggle.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.schema import MANIFEST_NAME
from bird_infer.jobs.predict import run_predict
from bird_infer.kaggle.editions import EDITIONS, STRICTEST_LIMIT_MIN, edition_for
from bird_infer.outputs.metrics import macro_roc_auc, roc_auc
from bird_infer.run.options import RunOptions
from tests.conftest import ROOT, set_labels, with_second_member

SR = 32000


@pytest.fixture()
def kernel(monkeypatch, tmp_path):
    """kaggle_kernel.py imported as a module, looking at tmp_path/input for /kaggle/input."""
    monkeypatch.setenv("BIRD_INFER_KAGGLE_INPUT", str(tmp_path / "input"))
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("kaggle_kernel_under_test", ROOT / "kaggle_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def competition(base: Path, *parts: str, labels=("a", "b")) -> Path:
    folder = base.joinpath(*parts)
    (folder / "test_soundscapes").mkdir(parents=True)
    pd.DataFrame(columns=["row_id", *labels]).to_csv(folder / "sample_submission.csv", index=False)
    return folder


def models_dir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / MANIFEST_NAME).write_text("{}")
    return folder


def test_old_new_and_models_layouts_are_found(kernel, tmp_path) -> None:
    base = tmp_path / "input"
    old = competition(base, "birdclef-2023")
    assert kernel.find_competitions(base) == [old]
    shutil.rmtree(old)
    new = competition(base, "competitions", "birdclef-2026")
    bundle = base / "datasets" / "someone" / "bird-infer-bundle"
    models_dir(bundle / "models")
    (bundle / "bird_infer").mkdir()
    (bundle / "bird_infer" / "__init__.py").write_text("")
    assert kernel.find_competitions(base) == [new]
    assert bundle in kernel.find_bundles(base)
    assert kernel.find_model_dirs(base, kernel.find_bundles(base)) == [bundle / "models"]
    shutil.rmtree(bundle)
    version = models_dir(base / "my-sed-model" / "onnx" / "default" / "3")  # a Kaggle Model
    assert kernel.find_model_dirs(base, kernel.find_bundles(base)) == [version]


def test_two_or_no_competitions_are_clear_errors(kernel, tmp_path) -> None:
    base = tmp_path / "input"
    with pytest.raises(kernel.KernelError, match="no competition folder"):
        kernel.kaggle_defaults([], [])
    competition(base, "competitions", "birdclef-2025")
    competition(base, "birdclef-2024")
    with pytest.raises(kernel.KernelError, match="2 competition folders") as e:
        kernel.kaggle_defaults([], [])
    assert "birdclef-2025" in str(e.value) and "birdclef-2024" in str(e.value)


def test_audio_given_uses_its_own_sample_submission(kernel, tmp_path) -> None:
    competition(tmp_path / "input", "competitions", "birdclef-2026", labels=("x", "y"))
    mine = competition(tmp_path / "elsewhere", "birdclef-2025")
    d = kernel.kaggle_defaults(["--audio", str(mine / "test_soundscapes")], [])
    assert d["sample_submission"] == mine / "sample_submission.csv" and d["time_limit_min"] == 85.0
    lone = tmp_path / "lone" / "soundscapes"
    lone.mkdir(parents=True)
    d = kernel.kaggle_defaults(["--audio", str(lone)], [])
    assert d["sample_submission"] is None  # never one found elsewhere


@pytest.mark.parametrize("edition", EDITIONS, ids=lambda e: e.slug)
def test_each_edition_gives_its_limit(kernel, tmp_path, edition) -> None:
    competition(tmp_path / "input", "competitions", edition.slug)
    assert kernel.kaggle_defaults([], [])["time_limit_min"] == edition.limit_min - 5


def test_unknown_competition_gets_the_strictest_limit_and_says_so(kernel, tmp_path, caplog) -> None:
    competition(tmp_path / "input", "competitions", "some-bird-challenge")
    with caplog.at_level(logging.INFO):
        d = kernel.kaggle_defaults([], [])
    assert d["time_limit_min"] == STRICTEST_LIMIT_MIN - 5 == 85
    assert "not a known BirdCLEF edition" in caplog.text and "90 minutes" in caplog.text


def test_variable_at_the_top_overrides_the_limit(kernel, tmp_path) -> None:
    competition(tmp_path / "input", "competitions", "birdclef-2023")
    kernel.TIME_LIMIT_MIN = 30
    assert kernel.kaggle_defaults([], [])["time_limit_min"] == 30.0


def test_kernel_as_a_script_takes_its_arguments(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    comp = competition(tmp_path / "data", "birdclef-2024", labels=manifest.labels)
    t = np.arange(7 * SR) / SR
    sf.write(comp / "test_soundscapes" / "XC1.ogg", (0.2 * np.sin(2 * np.pi * 2500 * t)).astype(np.float32), SR)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "kaggle_kernel.py"),
            "--audio",
            str(comp / "test_soundscapes"),
            "--models",
            str(manifest.root),
            "--out",
            "y.csv",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "birdclef-2024: 120-minute limit, the job gets 115 min" in proc.stderr
    assert pd.read_csv(tmp_path / "y.csv")["row_id"].tolist() == ["XC1_5", "XC1_10"]


def test_editions_table() -> None:
    assert [e.limit_min for e in EDITIONS] == [120, 120, 90, 90]
    assert [e.species for e in EDITIONS] == [264, 182, 206, 234]
    assert edition_for("BirdCLEF 2025").slug == "birdclef-2025" and edition_for("birdclef-2031") is None
    assert EDITIONS[0].rows == 24_000 and EDITIONS[1].rows == 52_800 and EDITIONS[2].rows == 8_400


def test_numeric_column_names_stay_strings(tmp_path, tiny_bundle) -> None:
    """2025's sample submission names some columns by iNaturalist id: "1139490" must stay that text."""
    manifest, _, _ = tiny_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(manifest.root, bundle)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    numeric = ["1139490", "00123", "65448", "1.5"]
    set_labels(data, numeric + data["labels"][len(numeric) :])
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    order = list(reversed(data["labels"]))
    with open(tmp_path / "sample_submission.csv", "w", newline="") as f:
        csv.writer(f).writerow(["row_id", *order])
    (tmp_path / "audio").mkdir()
    t = np.arange(6 * SR) / SR
    sf.write(tmp_path / "audio" / "iNat_1.ogg", (0.3 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32), SR)
    out = tmp_path / "submission.csv"
    run_predict(tmp_path / "audio", bundle, out, tmp_path / "sample_submission.csv", RunOptions(in_process=True))
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["row_id", *order] and header[-4:] == list(reversed(numeric))


def test_roc_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    truth = (rng.random((300, 12)) < 0.1).astype(int)
    truth[:, 4] = 0  # a class with no positive: skipped
    scores = np.round(rng.random((300, 12)) * 0.5 + truth * 0.3, 2)  # rounding makes ties
    ids = [f"r{i}" for i in range(300)]
    labels = [f"c{j}" for j in range(12)]
    sol = pd.DataFrame(truth, columns=labels).assign(row_id=ids)
    sub = pd.DataFrame(scores, columns=labels).assign(row_id=ids).sample(frac=1.0, random_state=0)
    expected = np.mean([roc_auc_score(truth[:, j], scores[:, j]) for j in range(12) if truth[:, j].any()])
    got = macro_roc_auc(sol, sub)
    print(f"macro ROC-AUC {got:.6f}, sklearn {expected:.6f}")
    assert got == pytest.approx(expected, abs=1e-12)
    assert np.isnan(roc_auc(truth[:, 4], scores[:, 4]))


def test_score_command_follows_the_edition(tmp_path, capsys) -> None:
    from bird_infer.cli import main

    pd.DataFrame({"row_id": ["x_5", "x_10", "x_15"], "a": [1, 0, 0], "b": [0, 1, 0]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    pd.DataFrame({"row_id": ["x_5", "x_10", "x_15"], "a": [0.9, 0.1, 0.2], "b": [0.3, 0.2, 0.1]}).to_csv(
        tmp_path / "s.csv", index=False
    )
    base = ["score", "--truth", str(tmp_path / "t.csv"), "--submission", str(tmp_path / "s.csv")]
    assert main([*base, "--edition", "birdclef-2025"]) == 0
    assert "macro ROC-AUC = 0.7500 (as birdclef-2025 scores)" in capsys.readouterr().out
    assert main([*base, "--edition", "birdclef-2023"]) == 0
    assert "padded cmAP" in capsys.readouterr().out
    assert main(base) == 0 and "padded cmAP" in capsys.readouterr().out


# --- the offline notebook --------------------------------------------------------------------------------

KAGGLE_IMAGE = ["numpy", "pandas", "scipy", "soundfile", "ipykernel"]
"""What a Kaggle notebook image has of bird_infer's runtime (and the Jupyter kernel itself)."""


@pytest.mark.slow
def test_offline_notebook_installs_from_the_bundle_and_writes_the_submission(tmp_path, tiny_bundle, monkeypatch):
    """docs/kaggle.md's three steps, for real: bird-infer bundle (of a two-member bundle); a 2026-style input tree;
    kaggle_kernel.py pasted into one cell of a Jupyter kernel whose Python has no onnxruntime and no bird_infer,
    pip's index off."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from bird_infer.tools.bundle import build_bundle, verify_checksums

    manifest, _, _ = tiny_bundle
    two = load_manifest(with_second_member(manifest, tmp_path / "two_members"))
    assert [m.name for m in two.members] == ["default", "second"]
    kin = tmp_path / "input"
    bundle = kin / "datasets" / "someone" / "bird-infer-bundle"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    result = build_bundle(bundle, two.root, pythons=[version])
    assert len(load_manifest(bundle / "models").members) == 2
    print(f"bundle: {result.size_bytes / 2**20:.1f} MiB, wheels: {', '.join(result.wheels)}")
    assert any(w.startswith("onnxruntime-") for w in result.wheels)
    assert any(w.startswith("openvino-") for w in result.wheels)  # the default bundle carries OpenVINO
    assert verify_checksums(bundle) == []  # SHA256SUMS lists every file as written
    comp = kin / "competitions" / "birdclef-2026"
    (comp / "test_soundscapes").mkdir(parents=True)
    order = list(np.random.default_rng(0).permutation(manifest.labels))
    pd.DataFrame(columns=["row_id", *order]).to_csv(comp / "sample_submission.csv", index=False)
    t = np.arange(12 * SR) / SR
    for k, name in enumerate(["H02_20230420_074000.ogg", "H04_20230421_120000.ogg"]):
        sf.write(
            comp / "test_soundscapes" / name, (0.2 * np.sin(2 * np.pi * (2000 + 900 * k) * t)).astype(np.float32), SR
        )

    image = tmp_path / "kaggle_image"  # a fresh Python with the image's packages, not onnxruntime or bird_infer
    venv.EnvBuilder(with_pip=True, clear=True).create(image)
    py = image / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *KAGGLE_IMAGE],
        check=True,
        timeout=600,
    )
    probe = subprocess.run(
        [str(py), "-c", "import importlib.util as u; print(u.find_spec('onnxruntime'), u.find_spec('bird_infer'))"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert probe.stdout.split() == ["None", "None"]
    jupyter = tmp_path / "jupyter"
    subprocess.run(
        [str(py), "-m", "ipykernel", "install", "--prefix", str(jupyter), "--name", "kaggle-image"],
        check=True,
        capture_output=True,
    )

    work = tmp_path / "working"
    work.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter / "share" / "jupyter"))
    monkeypatch.setenv("BIRD_INFER_KAGGLE_INPUT", str(kin))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: pip may only use the bundle
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell((ROOT / "kaggle_kernel.py").read_text()))
    client = nbclient.NotebookClient(
        nb, kernel_name="kaggle-image", timeout=600, resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    print(text[-3000:])
    assert "from the bundle's wheels" in text and "onnxruntime" in text
    assert "installed openvino from the bundle's wheels" in text  # so that auto can choose it
    df = pd.read_csv(work / "submission.csv")
    assert df.columns.tolist() == ["row_id", *order]
    assert df["row_id"].tolist() == [f"H02_20230420_074000_{s}" for s in (5, 10, 15)] + [
        f"H04_20230421_120000_{s}" for s in (5, 10, 15)
    ]
    probs = df[order].to_numpy()
    assert np.isfinite(probs).all() and probs.max() < 1 and probs.std() > 0
    assert pd.read_csv(work / "submission_errors.csv").empty
    assert "birdclef-2026: 90-minute limit" in text + "".join(
        o.get("text", "") for o in nb.cells[0].outputs if o.get("name") == "stderr"
    )


def test_a_wheel_install_without_models_says_how_to_get_some(tmp_path, monkeypatch, capsys) -> None:
    """pip install bird_infer has no models: predict without --models says how to get a bundle, not a path into
    site-packages."""
    from bird_infer import cli
    from bird_infer.cli import args as cli_args

    missing = tmp_path / "site-packages" / "models"
    monkeypatch.setattr(cli_args, "DEFAULT_MODELS", missing)
    monkeypatch.setattr(cli, "DEFAULT_MODELS", missing)
    (tmp_path / "audio").mkdir()
    assert cli.main(["predict", "--audio", str(tmp_path / "audio")]) == 2
    err = capsys.readouterr().err
    assert "birdnet-bundle" in err and "bird-infer export" in err and "--models" in err
