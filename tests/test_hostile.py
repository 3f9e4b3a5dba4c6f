"""Hostile options, manifests, sample submissions, output places and signals. Inputs are made here.

Each class of failure must end in one of two ways: before any audio is read, with exit status 2 and a
message that names what to fix; or with a complete CSV. Never a traceback, a silent wrong submission,
a hang, or workers left running.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.contract.errors import InvalidFieldError, ModelCheckError, OutputError, SubmissionFormatError
from bird_infer.contract.files import sha256_file
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.sample import read_sample_columns
from bird_infer.contract.schema import MANIFEST_NAME
from bird_infer.contract.training_config import training_config_from_dict
from bird_infer.jobs.predict import run_predict
from bird_infer.outputs.atomic import write_csv_atomic
from bird_infer.outputs.report import report_path
from bird_infer.run.book import WORKER_HUNG
from bird_infer.run.engine import predict_files
from bird_infer.run.options import RunOptions
from bird_infer.run.outcomes import FileFailure, FileResult
from tests.conftest import ROOT, member0, predict_cli, set_labels
from tests.faults import FaultyPredictor

SR = 32000


def write_tone(path: Path, seconds: float = 6.0, freq: float = 2500.0) -> Path:
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)
    return path


@pytest.fixture()
def audio_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "audio"
    folder.mkdir()
    for k in range(3):
        write_tone(folder / f"f{k}.wav", freq=1500.0 + 800 * k)
    return folder


# --- options -------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("--batch-size", "-1"),
    ("--batch-size", "0"),
    ("--batch-size", "1.5"),
    ("--workers", "-1"),
    ("--threads-per-worker", "0"),
    ("--time-limit-min", "0"),
    ("--time-limit-min", "-5"),
    ("--time-limit-min", "nan"),
    ("--time-limit-min", "inf"),
    ("--precision-bound", "nan"),
    ("--precision-bound", "-0.1"),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_bad_options_exit_2_before_any_work(tmp_path, tiny_bundle, audio_dir, option, value) -> None:
    manifest, _, _ = tiny_bundle
    out = tmp_path / "sub.csv"
    proc = predict_cli("--audio", str(audio_dir), "--models", str(manifest.root), "--out", str(out), option, value)
    print(option, value, proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 2
    assert f"argument {option}" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_library_options_are_validated_too() -> None:
    from bird_infer.runtime.sessions import SessionSettings

    with pytest.raises(ValueError, match="batch_size"):
        SessionSettings(batch_size=0)
    with pytest.raises(ValueError, match="workers"):
        RunOptions(workers=-1)
    with pytest.raises(ValueError, match="time_limit_s"):
        run_predict(".", "models", "x.csv", time_limit_s=0)


# --- models --------------------------------------------------------------------------------------------


def rewrite_fold(bundle: Path, change) -> None:
    """Apply ``change`` to fold0's ONNX graph and record its new sha256, so that only the runtime can object."""
    import onnx

    data = json.loads((bundle / MANIFEST_NAME).read_text())
    path = bundle / member0(data)["folds"][0]["file"]
    model = onnx.load(str(path))
    change(model)
    onnx.save(model, str(path))
    member0(data)["folds"][0]["sha256"] = sha256_file(path)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


def unknown_op(model) -> None:
    model.graph.node[0].op_type = "NoSuchOperator"


def narrower_output(model) -> None:
    """The graph still declares (batch, 264) but computes (batch, 263)."""
    import onnx
    from onnx import helper

    out = next(o for o in model.graph.output if o.name == "clipwise")
    for node in model.graph.node:
        node.output[:] = ["clipwise_full" if o == "clipwise" else o for o in node.output]
    model.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array([0], np.int64), "sl_start"),
            onnx.numpy_helper.from_array(np.array([263], np.int64), "sl_end"),
            onnx.numpy_helper.from_array(np.array([1], np.int64), "sl_axis"),
        ]
    )
    model.graph.node.append(helper.make_node("Slice", ["clipwise_full", "sl_start", "sl_end", "sl_axis"], [out.name]))


@pytest.mark.parametrize(("change", "expect"), [(unknown_op, "cannot load"), (narrower_output, "shape")])
def test_a_fold_the_runtime_rejects_stops_the_run_before_audio(
    tmp_path, tiny_bundle, audio_dir, change, expect
) -> None:
    manifest, _, _ = tiny_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(manifest.root, bundle)
    rewrite_fold(bundle, change)
    load_manifest(bundle)  # the file checks pass: only running it shows the problem
    with pytest.raises(ModelCheckError, match=expect):
        run_predict(audio_dir, bundle, tmp_path / "sub.csv")
    proc = predict_cli("--audio", str(audio_dir), "--models", str(bundle), "--out", str(tmp_path / "sub.csv"))
    print(proc.stderr.strip())
    assert proc.returncode == 2 and "fold0" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sub.csv").exists()


def test_one_nan_fold_is_left_out_and_reported(tmp_path, tiny_bundle, audio_dir) -> None:
    manifest, _, _ = tiny_bundle
    for k in range(2):
        write_tone(audio_dir / f"nan_fold_{k}.wav", seconds=11.0)
    out = tmp_path / "sub.csv"
    summary = run_predict(
        audio_dir, manifest.root, out, options=RunOptions(workers=2, predictor_factory=FaultyPredictor)
    )
    report = pd.read_csv(report_path(out))
    assert summary.n_failed == 0 and len(pd.read_csv(out)) == 3 * 2 + 2 * 3
    assert sorted(report["row_prefix"]) == ["nan_fold_0", "nan_fold_1"]
    assert set(report["outcome"]) == {"folds_excluded"} and report["reason"].str.contains("fold1 on 3 of 3").all()


# --- output place --------------------------------------------------------------------------------------


def no_audio_may_be_read(monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("audio was processed before the output check")

    monkeypatch.setattr("bird_infer.run.plan.stream_files", refuse)


def test_output_problems_are_found_before_any_audio(tmp_path, tiny_bundle, audio_dir, monkeypatch) -> None:
    manifest, _, _ = tiny_bundle
    no_audio_may_be_read(monkeypatch)
    (tmp_path / "a_folder.csv").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        run_predict(audio_dir, manifest.root, tmp_path / "a_folder.csv")
    with pytest.raises(OutputError, match="cannot write in /proc"):
        run_predict(audio_dir, manifest.root, Path("/proc/bird_infer_test/sub.csv"))
    nearly_full = shutil.disk_usage(tmp_path)._replace(free=512)
    monkeypatch.setattr("bird_infer.outputs.place.shutil.disk_usage", lambda _p: nearly_full)
    with pytest.raises(OutputError, match="MiB free"):
        run_predict(audio_dir, manifest.root, tmp_path / "full.csv")
    assert not (tmp_path / "full.csv").exists() and not list(tmp_path.glob(".*.tmp"))


def test_cli_says_where_the_output_cannot_go(tmp_path, tiny_bundle, audio_dir) -> None:
    manifest, _, _ = tiny_bundle
    proc = predict_cli("--audio", str(audio_dir), "--models", str(manifest.root), "--out", str(tmp_path))
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_a_write_failing_at_the_end_keeps_the_rows(tmp_path, tiny_bundle, audio_dir, monkeypatch) -> None:
    """The disk fills up while the audio is processed: the rows go to another place and the caller is told."""
    from bird_infer.outputs import place as preflight

    manifest, _, _ = tiny_bundle
    wanted = tmp_path / "out" / "sub.csv"
    real_write = preflight.write_submission

    def full_disk(df, path):
        if Path(path).parent == wanted.parent:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(df, path)

    monkeypatch.setattr(preflight, "write_submission", full_disk)
    monkeypatch.setattr(preflight, "fallback_places", lambda: [Path("/proc/bird_infer_nowhere"), tmp_path / "kept"])
    summary = run_predict(audio_dir, manifest.root, wanted, options=RunOptions(in_process=True))
    assert summary.write_error and "No space left" in summary.write_error
    assert summary.out_path.parent == tmp_path / "kept" and len(pd.read_csv(summary.out_path)) == 6
    assert summary.report_path.exists() and not wanted.exists()
    assert not list(wanted.parent.glob(".*.tmp"))


def test_a_label_named_row_id_is_refused(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(manifest.root, bundle)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    set_labels(data, [*data["labels"][:3], "row_id", *data["labels"][4:]])
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(InvalidFieldError, match="row_id"):
        load_manifest(bundle)


WRITER = """
import sys, pandas as pd
from bird_infer.outputs.atomic import write_csv_atomic
df = pd.DataFrame({"row_id": [sys.argv[2]] * 20000, "p": [float(sys.argv[2])] * 20000})
for _ in range(5):
    write_csv_atomic(df, sys.argv[1])
"""


def test_two_runs_writing_one_path_never_mix(tmp_path) -> None:
    out = tmp_path / "same.csv"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), v], cwd=ROOT) for v in ("1", "2")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    df = pd.read_csv(out)
    assert len(df) == 20000 and df["row_id"].nunique() == 1  # one run's whole content, never a mix
    assert not list(tmp_path.glob(".*.tmp"))
    write_csv_atomic(pd.DataFrame({"a": [1]}), out)
    assert pd.read_csv(out)["a"].tolist() == [1]


# --- sample submissions, manifests and training configs --------------------------------------------


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "UTF-8|binary"),
        ("row_id,caf\xe9\n".encode("latin-1"), "not UTF-8"),
        (b"row_id,a,b,a\n", r"\['a'\] appear more than once"),
        (b"id,a,b\n", "first column"),
        (b"row_id,a,,b\n", "must name a label"),
    ],
)
def test_bad_sample_submissions(tmp_path, content, expect) -> None:
    path = tmp_path / "sample_submission.csv"
    path.write_bytes(content)
    with pytest.raises(SubmissionFormatError, match=expect):
        read_sample_columns(path)


def test_sample_submission_folder_and_numeric_labels(tmp_path) -> None:
    with pytest.raises(SubmissionFormatError, match="is a folder"):
        read_sample_columns(tmp_path)
    (tmp_path / "s.csv").write_text("\ufeffrow_id,1139490,comsan,00123\n")
    assert read_sample_columns(tmp_path / "s.csv") == ["1139490", "comsan", "00123"]


MANIFEST_BREAKS = {
    "infinite n_fft": (lambda d: member0(d)["frontend"].update(n_fft=float("inf")), "frontend.n_fft"),
    "infinite sample_rate": (lambda d: member0(d)["audio"].update(sample_rate=float("inf")), "audio.sample_rate"),
    "string n_mels": (lambda d: member0(d)["frontend"].update(n_mels="256"), "frontend.n_mels"),
    "null fmin": (lambda d: member0(d)["frontend"].update(fmin=None), "frontend.fmin"),
    "string fmin": (lambda d: member0(d)["frontend"].update(fmin="20"), "frontend.fmin"),
    "nan top_db": (lambda d: member0(d)["frontend"].update(top_db=float("nan")), "frontend.top_db"),
    "empty input shape": (lambda d: member0(d)["folds"][0]["input"].update(shape=[]), r"folds\[0\].input.shape"),
    "empty clipwise shape": (
        lambda d: member0(d)["folds"][0]["clipwise"].update(shape=[]),
        r"folds\[0\].clipwise.shape",
    ),
    "numeric label": (lambda d: set_labels(d, [1139490, *d["labels"][1:]]), "string"),
    "empty label": (lambda d: set_labels(d, ["", *d["labels"][1:]]), "non-empty"),
}


@pytest.mark.parametrize("case", list(MANIFEST_BREAKS))
def test_broken_manifest_fields_name_the_field(tmp_path, tiny_bundle, case) -> None:
    manifest, _, _ = tiny_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(manifest.root, bundle)
    change, expect = MANIFEST_BREAKS[case]
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    change(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))  # json writes inf and nan as Infinity and NaN
    with pytest.raises(InvalidFieldError, match=expect):
        load_manifest(bundle)


def test_missing_field_hints_need_no_source_code(tmp_path, tiny_bundle, monkeypatch) -> None:
    """Hints come from field metadata, not from reading the source (absent in some installs)."""
    import inspect

    from bird_infer.contract.errors import MissingFieldError

    def no_source(_obj):
        raise OSError("no source")

    monkeypatch.setattr(inspect, "getsource", no_source)
    manifest, _, _ = tiny_bundle
    bundle = tmp_path / "bundle"
    shutil.copytree(manifest.root, bundle)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    del member0(data)["audio"]["sample_rate"]
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(MissingFieldError, match="Samples per second"):
        load_manifest(bundle)


@pytest.mark.parametrize(
    ("labels", "expect"),
    [
        (["a", "b", "a"], "duplicates"),
        (["a", ""], "non-empty"),
        (["a", 7], "string"),
        ([], "non-empty list"),
        (["row_id", "a"], "row_id"),
    ],
)
def test_training_config_labels_are_checked_before_training(reference_config, labels, expect) -> None:
    from dataclasses import asdict

    d = {"labels": labels, "audio": asdict(reference_config.audio), "frontend": asdict(reference_config.frontend)}
    with pytest.raises(InvalidFieldError, match=expect):
        training_config_from_dict(d)


# --- hangs and signals -----------------------------------------------------------------------------


def test_a_hung_worker_is_timed_out_and_its_file_reported(tmp_path, tiny_bundle) -> None:
    """SIGSTOP in a worker, no time limit: the file is timed out like a dead worker; the others are predicted."""
    manifest, _, _ = tiny_bundle
    paths = [write_tone(tmp_path / n) for n in ("a.wav", "stop_always.wav", "z.wav")]
    options = RunOptions(workers=2, predictor_factory=FaultyPredictor, timeout_floor_s=4.0, timeout_factor=5.0)
    t0 = time.monotonic()
    a, hung, z = predict_files(paths, manifest, options, rows=[2, 2, 2])
    wall = time.monotonic() - t0
    print(f"hung file reported after {wall:.1f} s: {getattr(hung, 'reason', '')}")
    assert isinstance(a, FileResult) and isinstance(z, FileResult)
    assert isinstance(hung, FileFailure) and hung.reason.startswith(WORKER_HUNG) and hung.attempts == 2
    assert wall < 120


RUNNER = """
import sys
from pathlib import Path
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions, restore_interrupts
from tests.faults import FaultyPredictor
restore_interrupts()  # as every entry point does
run_predict(sys.argv[1], sys.argv[2], sys.argv[3], options=RunOptions(workers=2, predictor_factory=FaultyPredictor))
"""


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_slow_run(tmp_path: Path, manifest_root: Path) -> tuple[subprocess.Popen, list[int]]:
    audio = tmp_path / "audio"
    audio.mkdir()
    for k in range(6):
        write_tone(audio / f"slow_{k}.wav")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(audio), str(manifest_root), str(tmp_path / "s.csv")],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = [c for c in children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2, "the workers did not start"
    time.sleep(1.0)  # inside their first (slow) file
    return proc, workers


def wait_gone(pids: list[int], seconds: float) -> float:
    t0 = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - t0 < seconds:
        time.sleep(0.1)
    return time.monotonic() - t0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_parent(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    proc, workers = start_slow_run(tmp_path, manifest.root)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    took = wait_gone(workers, 20)
    print(f"workers gone {took:.2f} s after the parent's SIGKILL")
    assert not any(alive(p) for p in workers)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_twice_stops_everything_at_once(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    proc, workers = start_slow_run(tmp_path, manifest.root)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=30)
    took = wait_gone(workers, 20)
    print(f"exit status {code} after {time.monotonic() - t0:.2f} s; workers gone {took:.2f} s later")
    assert code != 0 and not any(alive(p) for p in workers)
    assert time.monotonic() - t0 < 15


def test_ctrl_c_reaches_a_run_started_with_sigint_ignored(monkeypatch) -> None:
    """A shell without job control starts background commands with SIGINT ignored; Python then never raises
    KeyboardInterrupt and a run asked to stop would finish and exit 0 (what the stress script found). Entry points
    restore it: the CLI's main first of all."""
    code = (
        "import os, signal, sys, time\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "from bird_infer.run.options import restore_interrupts\n"
        "restore_interrupts()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(30)\n"
        "sys.exit(0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    from bird_infer import cli

    called = []
    monkeypatch.setattr(cli, "restore_interrupts", lambda: called.append(True))
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert called == [True]
