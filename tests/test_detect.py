"""``bird-infer detect``: BirdNET-Analyzer's layouts read back by crowsetta, resume after SIGKILL, plots."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.cli import DEFAULT_MODELS
from bird_infer.contract.errors import ResumeRefusedError
from bird_infer.contract.manifest import load_manifest
from bird_infer.jobs.detect import DetectSettings, run_detect
from bird_infer.jobs.predict import run_predict
from bird_infer.outputs.names import output_names
from bird_infer.outputs.runrecord import DONE_LOG
from bird_infer.outputs.tables import (
    CSV_COLUMNS,
    KALEIDOSCOPE_COLUMNS,
    RAVEN_COLUMNS,
    FileDetections,
    TableStyle,
    combined_rows,
    detections,
    render,
    table_rows,
)
from bird_infer.run.options import RunOptions
from bird_infer.run.progress import Progress, ProgressDisplay
from tests.conftest import ROOT, real_audio_dir, synthetic_chunks

MIN_CONF = 0.05
RAVEN_HEADER = "\t".join(RAVEN_COLUMNS) + "\n"
CSV_HEADER = ",".join(CSV_COLUMNS) + "\n"
KALEIDOSCOPE_HEADER = ",".join(KALEIDOSCOPE_COLUMNS) + "\n"
ALL = ("table", "csv", "audacity", "kaleidoscope", "probs")


@pytest.fixture(scope="module")
def field_run(tmp_path_factory: pytest.TempPathFactory):
    """The shipped models over the real opensoundscape recordings: predict's CSV and detect's folder."""
    audio = real_audio_dir("opensoundscape")
    tmp = tmp_path_factory.mktemp("field")
    sub = run_predict(audio, DEFAULT_MODELS, tmp / "sub.csv", options=RunOptions(workers=2))
    out = tmp / "det"
    summary = run_detect(
        audio, DEFAULT_MODELS, out, DetectSettings(rtypes=ALL, min_conf=MIN_CONF, combine=True), RunOptions(workers=2)
    )
    return audio, pd.read_csv(sub.out_path), out, summary


def expected(sub: pd.DataFrame, stem: str, labels: list[str]) -> list[tuple[float, float, str, float]]:
    """(begin, end, label, p) with p >= MIN_CONF from predict's CSV: rows in time order, labels by p."""
    rows = sub[sub.row_id.str.rsplit("_", n=1).str[0] == stem]
    out = []
    for r, (_, row) in enumerate(rows.iterrows()):
        hits = [(row[k], k) for k in labels if row[k] >= MIN_CONF]
        for p, k in sorted(hits, key=lambda t: (-t[0], labels.index(t[1]))):
            out.append((5.0 * r, 5.0 * r + 5, k, p))
    return out


def test_raven_tables_read_back_by_crowsetta(field_run) -> None:
    crowsetta = pytest.importorskip("crowsetta")
    audio, sub, out, summary = field_run
    labels = list(load_manifest(DEFAULT_MODELS).labels)
    assert summary.n_predicted == len(list(audio.glob("*.wav"))) and summary.n_failed == 0
    total = 0
    for wav in sorted(audio.glob("*.wav")):
        path = out / f"{wav.stem}.selection.table.txt"
        assert path.read_text(encoding="utf-8").startswith(RAVEN_HEADER)
        want = expected(sub, wav.stem, labels)
        raven = crowsetta.formats.by_name("raven").from_file(path, annot_col="Species Code")
        boxes = raven.to_annot().bboxes
        assert len(boxes) == len(want) > 0
        for box, (begin, end, label, _p) in zip(boxes, want, strict=True):
            assert (box.onset, box.offset, box.label) == (begin, end, label)
            assert (box.low_freq, box.high_freq) == (20.0, 14000.0)  # the manifest's fmin / fmax
        assert np.allclose(raven.df["Confidence"], [w[3] for w in want], atol=5e-5)
        assert set(raven.df["View"]) == {"Spectrogram 1"} and set(raven.df["Channel"]) == {1}
        assert set(raven.df["Begin Path"]) == {str(wav)}
        total += len(want)
    assert summary.n_detections == total


def test_audacity_labels_read_back_by_crowsetta(field_run) -> None:
    crowsetta = pytest.importorskip("crowsetta")
    audio, sub, out, _ = field_run
    labels = list(load_manifest(DEFAULT_MODELS).labels)
    wav = audio / "1min.wav"
    path = out / "1min.results.txt"
    text = path.read_text(encoding="utf-8")
    assert not text.startswith(("start", "Start"))  # no header
    # Audacity takes the third tab-separated token as the label and ignores the confidence after it
    # (LabelImportExport.cpp); crowsetta's strict 'aud-seq' reader wants exactly three columns, so its
    # 'simple-seq' reader is given the four.
    seq = crowsetta.formats.by_name("simple-seq").from_file(
        path,
        columns_map={"start": "onset_s", "end": "offset_s", "label": "label"},
        read_csv_kwargs={"sep": "\t", "header": None, "names": ["start", "end", "label", "confidence"]},
    )
    segments = seq.to_annot().seq.segments
    want = expected(sub, wav.stem, labels)
    assert [(s.onset_s, s.offset_s, s.label) for s in segments] == [w[:3] for w in want]
    confidences = [float(line.split("\t")[3]) for line in text.splitlines()]
    assert np.allclose(confidences, [w[3] for w in want], atol=5e-5)


def test_csv_kaleidoscope_and_probs(field_run) -> None:
    audio, sub, out, _ = field_run
    labels = list(load_manifest(DEFAULT_MODELS).labels)
    wav = audio / "birds_10s.wav"
    want = expected(sub, wav.stem, labels)
    text = (out / "birds_10s.results.csv").read_text(encoding="utf-8")
    assert text.startswith(CSV_HEADER)
    rows = list(csv.reader(io.StringIO(text)))[1:]
    assert [(float(r[0]), float(r[1]), r[2], r[3], r[5]) for r in rows] == [
        (b, e, k, k, str(wav)) for b, e, k, _ in want
    ]
    assert all(r[0].count(".") == 1 and len(r[0].split(".")[1]) == 2 for r in rows)  # 2 decimals
    assert all(len(r[4].split(".")[1]) == 4 for r in rows)  # 4 decimals
    text = (out / "birds_10s.results.kaleidoscope.csv").read_text(encoding="utf-8")
    assert text.startswith(KALEIDOSCOPE_HEADER)
    rows = list(csv.reader(io.StringIO(text)))[1:]
    assert [(r[0], r[1], r[2], float(r[3]), float(r[4]), r[5]) for r in rows] == [
        (str(audio.parent), audio.name, wav.name, b, 5.0, k) for b, _e, k, _ in want
    ]
    probs = pd.read_parquet(out / "birds_10s.probs.parquet")
    assert list(probs.columns) == ["start_s", "end_s", *labels]
    mine = sub[sub.row_id.str.startswith("birds_10s_")][labels].to_numpy()
    assert probs["end_s"].tolist() == [5.0, 10.0, 15.0]
    assert np.allclose(probs[labels].to_numpy(), mine, rtol=1e-5, atol=1e-6)  # the CSV has 6 digits


def test_combined_table_runs_on_across_files(field_run) -> None:
    audio, _sub, out, summary = field_run
    files = sorted(audio.glob("*.wav"))
    combined = (out / "combined.selection.table.txt").read_text(encoding="utf-8").splitlines()
    assert combined[0] + "\n" == RAVEN_HEADER
    cells = [line.split("\t") for line in combined[1:]]
    assert [int(c[0]) for c in cells] == list(range(1, len(cells) + 1))
    assert len(cells) == summary.n_detections
    offset = 0.0
    for wav in files:
        mine = [c for c in cells if c[10] == str(wav)]
        own = [line.split("\t") for line in (out / f"{wav.stem}.selection.table.txt").read_text().splitlines()[1:]]
        assert [float(c[3]) for c in mine] == pytest.approx([float(c[3]) + offset for c in own], abs=0.006)
        assert [c[11] for c in mine] == [c[11] for c in own]  # the offset within the file stays
        offset += sf.info(wav).duration
    listing = (out / "combined.selection.table.list.txt").read_text().splitlines()
    assert listing == [str(f) for f in files]


def test_nocall_rows_and_combined_offsets_by_hand() -> None:
    empty = FileDetections("a.wav", 7.5, ())
    text = render("table", table_rows("table", empty, TableStyle((20.0, 14000.0), {}, 5.0)))
    assert text.splitlines()[1].split("\t") == [
        "1", "Spectrogram 1", "1", "0.00", "5.00", "20.0", "14000.0", "nocall", "nocall", "1.0", "a.wav", "0",
    ]  # fmt: skip
    probs = np.array([[0.1, 0.9], [0.6, 0.2]], np.float32)
    b = FileDetections("b.wav", 10.0, tuple(detections(probs, ["x", "y"], 5.0, 0.5)))
    combined = render("table", combined_rows("table", [empty, b], TableStyle((0.0, 8000.0), {}, 5.0)))
    combined = combined.splitlines()[1:]
    assert [c.split("\t")[:5] + c.split("\t")[8:9] + c.split("\t")[11:] for c in combined] == [
        ["1", "Spectrogram 1", "1", "7.50", "12.50", "y", "0.00"],
        ["2", "Spectrogram 1", "1", "12.50", "17.50", "x", "5.00"],
    ]


def test_detect_uses_names_from_the_manifest(tmp_path) -> None:
    data = json.loads((DEFAULT_MODELS / "manifest.json").read_text())
    label = data["labels"][0]
    data["names"] = {label: {"scientific": "Sweepus descendens", "common": "Falling Sweeper"}}
    models = _linked_models(tmp_path / "named", data)
    wav = tmp_path / "audio" / "x.wav"
    wav.parent.mkdir()
    sf.write(wav, synthetic_chunks(n=2).reshape(-1), 32000)
    out = tmp_path / "out"
    run_detect(
        wav.parent, models, out, DetectSettings(("table", "csv", "audacity"), min_conf=1e-6), RunOptions(workers=1)
    )
    table = (out / "x.selection.table.txt").read_text().splitlines()
    named = [line.split("\t") for line in table[1:] if line.split("\t")[8] == label]
    assert named and all(c[7] == "Falling Sweeper" for c in named)
    assert "Sweepus descendens,Falling Sweeper" in (out / "x.results.csv").read_text()
    assert "\tSweepus descendens, Falling Sweeper\t" in (out / "x.results.txt").read_text()


def _linked_models(folder: Path, manifest: dict) -> Path:
    """A models folder whose ONNX files link to the shipped ones, with the given manifest."""
    folder.mkdir(parents=True)
    for onnx in DEFAULT_MODELS.glob("*.onnx"):
        (folder / onnx.name).symlink_to(onnx)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def _write_field_folder(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    waves = synthetic_chunks(n=2 * n, seed=3)
    paths = []
    for k in range(n):
        sub = folder / ("siteA" if k % 2 else "siteB")
        sub.mkdir(exist_ok=True)
        paths.append(sub / f"rec{k:02d}.wav")
        sf.write(paths[-1], waves[2 * k : 2 * k + 2].reshape(-1)[: 32000 * 9], 32000)
    return paths


RESUME_SCRIPT = """
import sys
from pathlib import Path
from bird_infer.jobs.detect import DetectSettings, run_detect
from bird_infer.run.options import RunOptions
from tests.faults import CountingPredictor
settings = DetectSettings(rtypes=("table", "csv", "audacity", "kaleidoscope", "probs"), min_conf=0.05, combine=True)
run_detect(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), settings,
           RunOptions(workers=1, predictor_factory=CountingPredictor), resume="--resume" in sys.argv)
"""


def _outputs(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("bird_infer_")
    }


def test_resume_after_sigkill_equals_a_clean_run(tmp_path, monkeypatch) -> None:
    pytest.importorskip("pyarrow")
    audio = tmp_path / "audio"
    files = _write_field_folder(audio, 8)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    counts = tmp_path / "count.log"
    env = {**os.environ, "BIRD_INFER_COUNT_LOG": str(counts), "BIRD_INFER_COUNT_SLEEP": "0.6"}
    run = [sys.executable, "-c", RESUME_SCRIPT, str(audio), str(DEFAULT_MODELS)]
    subprocess.run([*run, str(clean)], env={**env, "BIRD_INFER_COUNT_SLEEP": "0"}, cwd=ROOT, check=True, timeout=300)
    assert len(counts.read_text().splitlines()) == len(files)
    counts.unlink()

    proc = subprocess.Popen([*run, str(killed)], env=env, cwd=ROOT)
    done_log = killed / DONE_LOG
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if done_log.exists() and len(done_log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the main process, by its PID
    proc.wait(timeout=30)
    done_before = {json.loads(line)["name"] for line in done_log.read_text().splitlines()}
    assert 3 <= len(done_before) < len(files)
    assert not (killed / "combined.selection.table.txt").exists()
    counts.unlink()

    subprocess.run([*run, str(killed), "--resume"], env=env, cwd=ROOT, check=True, timeout=300)
    again = counts.read_text().splitlines()
    assert len(again) == len(files) - len(done_before)  # the files done before the kill are not predicted again
    assert not {f"{n.split('/')[-1]}.wav" for n in done_before} & set(again)
    assert _outputs(killed) == _outputs(clean)  # byte for byte, combined tables included
    assert len(_outputs(clean)) == len(files) * 5 + 4


def test_resume_refuses_other_models_or_settings(tmp_path) -> None:
    audio = tmp_path / "audio"
    _write_field_folder(audio, 2)
    out = tmp_path / "out"
    run_detect(audio, DEFAULT_MODELS, out, DetectSettings(min_conf=0.5), RunOptions(workers=1))
    again = run_detect(audio, DEFAULT_MODELS, out, DetectSettings(min_conf=0.5), RunOptions(workers=1), resume=True)
    assert (again.n_resumed, again.n_predicted) == (2, 0)
    with pytest.raises(ResumeRefusedError, match="other settings"):
        run_detect(audio, DEFAULT_MODELS, out, DetectSettings(min_conf=0.3), RunOptions(workers=1), resume=True)
    data = json.loads((DEFAULT_MODELS / "manifest.json").read_text())
    data["ensemble"] = {**data.get("ensemble", {}), "combine": "rms"}
    other = _linked_models(tmp_path / "other", data)
    with pytest.raises(ResumeRefusedError, match="other models"):
        run_detect(audio, other, out, DetectSettings(min_conf=0.5), RunOptions(workers=1), resume=True)


def test_failed_files_get_a_report_line_and_are_retried_on_resume(tmp_path) -> None:
    audio = tmp_path / "audio"
    _write_field_folder(audio, 2)
    (audio / "broken.wav").write_bytes(b"not audio at all")
    out = tmp_path / "out"
    s = run_detect(audio, DEFAULT_MODELS, out, DetectSettings(), RunOptions(workers=1))
    assert (s.n_predicted, s.n_failed) == (2, 1)
    report = pd.read_csv(out / "bird_infer_errors.csv")
    assert report["outcome"].tolist() == ["fallback"] and "broken.wav" in report["file"][0]
    assert not (out / "broken.selection.table.txt").exists()
    again = run_detect(audio, DEFAULT_MODELS, out, DetectSettings(), RunOptions(workers=1), resume=True)
    assert (again.n_resumed, again.n_predicted, again.n_failed) == (2, 0, 1)


def test_output_names_are_unique_and_mirror_folders(tmp_path) -> None:
    root = tmp_path
    paths = [root / "siteA" / "0600.wav", root / "siteB" / "0600.wav", root / "siteA" / "0600.flac"]
    paths += [root / "a.wav", root / "a.flac", root / "a.wav.flac", root / "bad\udcff.wav"]
    names = output_names(paths, root)
    assert len(set(names)) == len(names)
    assert names[:3] == ["siteA/0600.wav", "siteB/0600", "siteA/0600.flac"]
    assert names[6] == "bad\\xff"


def test_detect_cli_validates_before_any_work(tmp_path) -> None:
    run = [sys.executable, "-m", "bird_infer", "detect", "--audio", str(tmp_path / "nothing")]
    for bad in (["--min-conf", "0"], ["--min-conf", "1.5"], ["--rtype", "xml"], ["--top", "0"]):
        r = subprocess.run([*run, "--out", str(tmp_path / "o"), *bad], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2, bad
    afile = tmp_path / "a_file"
    afile.write_text("x")
    audio = tmp_path / "audio"
    _write_field_folder(audio, 1)
    r = subprocess.run(
        [sys.executable, "-m", "bird_infer", "detect", "--audio", str(audio), "--out", str(afile)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "is a file" in r.stderr


def test_plot_png_size_and_heatmap_rows(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from bird_infer.outputs.plot import HEIGHT_PX, WIDTH_PX

    audio = tmp_path / "audio"
    (wav,) = _write_field_folder(audio, 1)
    sub = run_predict(audio, DEFAULT_MODELS, tmp_path / "sub.csv", options=RunOptions(workers=1))
    df = pd.read_csv(sub.out_path)
    labels = list(load_manifest(DEFAULT_MODELS).labels)
    peak = df[labels].max(axis=0)
    want = sorted(labels, key=lambda k: (-peak[k], labels.index(k)))[:3]
    png = tmp_path / "x.png"
    r = subprocess.run(
        [sys.executable, "-m", "bird_infer", "plot", str(wav), "--top", "3", "--out", str(png)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert imread(png).shape[:2] == (HEIGHT_PX, WIDTH_PX)
    assert f"top labels {', '.join(want)}" in r.stdout

    from bird_infer.outputs.plot import plot_file
    from bird_infer.run.predictor import FilePredictor

    manifest = load_manifest(DEFAULT_MODELS)
    probs = FilePredictor(manifest, RunOptions()).predict_file(wav).probs
    result = plot_file(wav, manifest, probs, tmp_path / "y.png", top=3)
    assert list(result.heat_labels) == want  # the heatmap's rows, as drawn, are the top labels


def test_progress_bar_on_a_terminal_and_lines_elsewhere(caplog) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    p = Progress(n_files=4, total_chunks=8)
    tty = Tty()
    show = ProgressDisplay(p, tty)
    p.update(2)
    show.update()
    show.close()
    assert tty.getvalue().startswith("\r[#######....") and "1/4 files" in tty.getvalue()
    assert tty.getvalue().endswith("\n")
    plain = io.StringIO()
    show = ProgressDisplay(Progress(n_files=2, total_chunks=2), plain)
    with caplog.at_level("INFO", logger="bird_infer.run.progress"):
        show.progress.update(1)
        show.update()
    assert plain.getvalue() == "" and "[1/2 files]" in caplog.text
