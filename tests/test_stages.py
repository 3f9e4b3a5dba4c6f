"""File-level ONNX stages and per-member steps (issue 28), torch-free: a Perch-v2-shaped stand-in with its own
gaussian smoothing and file scaling, an MLP probe with file context (the file's mean and max logits, the previous
row, the hour) blended as a member, and a sequence head on the blend with the site and the row count, built with
the commands only and compared with a naive numpy reference of the same pipeline. Fallback rows are never fed to a
stage; a one-row file is one row; split files and Dask give the same bytes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper, save
from scipy.ndimage import gaussian_filter1d

from bird_infer.contract.birdnet import ebird_map
from bird_infer.contract.manifest import load_manifest
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from tests.conftest import ROOT
from tests.standins import OPSET, PERCH_SAMPLES, perch_standin

SR = 32000
N_LABELS = 24
DIM = 64
SECONDS = {"alpha_06.wav": 23.0, "beta_18.wav": 12.0, "other.wav": 3.0, "alpha_07.wav": 27.0}
CUT = "alpha_07.wav"
"""Cut to 40 % of its bytes: its header claims 6 rows, 3 decode; the rest hold the fallback."""
SITES = {"alpha": 0, "beta": 1}
PATTERN = r"^(?P<site>[a-z]+)_(?P<hour>\d\d)"
SIGMA, GAMMA, PROBE_W = 1.5, 0.4, 0.5


def _save(nodes, inputs, outputs, weights, path: Path) -> Path:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    save(model, str(path))
    return path


def probe_weights(seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        # small enough that no output saturates: a rank blend orders float32 values, and two outputs one ulp
        # apart near 1 would swap ranks between any two implementations
        "w": rng.normal(0, 0.06, (DIM + 2 * N_LABELS, N_LABELS)).astype(np.float32),
        "wm": rng.normal(0, 0.1, (N_LABELS, N_LABELS)).astype(np.float32),
        "wx": rng.normal(0, 0.1, (N_LABELS, N_LABELS)).astype(np.float32),
        "hours": rng.normal(0, 0.5, (25, N_LABELS)).astype(np.float32),
    }


def probe_graph(path: Path, w: dict[str, np.ndarray]) -> Path:
    """An MLP probe with file context: (embedding, logits, the previous row's logits) of each row, the file's mean
    and max logits, and an hour bias -> sigmoid (1, n, L)."""
    consts = {
        **w,
        "axis1": np.array([1], np.int64),
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "minus1": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("ReduceMean", ["lg"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["lg"], ["peak"], axes=[1], keepdims=1),
        helper.make_node("Slice", ["lg", "zero", "one", "axis1"], ["first"]),
        helper.make_node("Slice", ["lg", "zero", "minus1", "axis1"], ["head"]),
        helper.make_node("Concat", ["first", "head"], ["prev"], axis=1),
        helper.make_node("Concat", ["emb", "lg", "prev"], ["x"], axis=2),
        helper.make_node("MatMul", ["x", "w"], ["h1"]),
        helper.make_node("MatMul", ["mean", "wm"], ["h2"]),
        helper.make_node("MatMul", ["peak", "wx"], ["h3"]),
        helper.make_node("Gather", ["hours", "hour"], ["hb"], axis=0),
        helper.make_node("Add", ["h1", "h2"], ["s1"]),
        helper.make_node("Add", ["s1", "h3"], ["s2"]),
        helper.make_node("Add", ["s2", "hb"], ["s3"]),
        helper.make_node("Sigmoid", ["s3"], ["probs"]),
    ]
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("emb", f, [1, "n", DIM]),
        helper.make_tensor_value_info("lg", f, [1, "n", N_LABELS]),
        helper.make_tensor_value_info("hour", TensorProto.INT64, [1]),
    ]
    outputs = [helper.make_tensor_value_info("probs", f, [1, "n", N_LABELS])]
    return _save(nodes, inputs, outputs, consts, path)


def probe_reference(emb: np.ndarray, lg: np.ndarray, hour: int, w: dict[str, np.ndarray]) -> np.ndarray:
    prev = np.concatenate([lg[:1], lg[:-1]])
    h = np.concatenate([emb, lg, prev], axis=1) @ w["w"] + lg.mean(0) @ w["wm"] + lg.max(0) @ w["wx"]
    return 1 / (1 + np.exp(-(h + w["hours"][hour])))


def seq_weights(seed: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "kernel": rng.uniform(0.1, 1.0, (N_LABELS, 1, 3)).astype(np.float32),
        "sites": rng.normal(0, 0.5, (3, N_LABELS)).astype(np.float32),
        "a": np.array([0.7], np.float32),
        "c": np.array([0.05], np.float32),
    }


def seq_graph(path: Path, w: dict[str, np.ndarray]) -> Path:
    """A sequence head on the blend: 0.7 logit(b) + a depthwise 3-row convolution over the file's rows + a site
    bias + 0.05 n -> logits (1, n, L) (the manifest says sigmoid)."""
    consts = {
        **w,
        "lo": np.array(1e-6, np.float32),
        "hi": np.array(1 - 1e-6, np.float32),
        "unit": np.array(1.0, np.float32),
    }
    nodes = [
        helper.make_node("Clip", ["b", "lo", "hi"], ["bc"]),
        helper.make_node("Sub", ["unit", "bc"], ["rest"]),
        helper.make_node("Div", ["bc", "rest"], ["odds"]),
        helper.make_node("Log", ["odds"], ["logit"]),
        helper.make_node("Mul", ["logit", "a"], ["t1"]),
        helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["bt", "kernel"], ["ct"], group=N_LABELS, pads=[1, 1]),
        helper.make_node("Transpose", ["ct"], ["conv"], perm=[0, 2, 1]),
        helper.make_node("Gather", ["sites", "site"], ["sb"], axis=0),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["nf", "c"], ["t4"]),
        helper.make_node("Add", ["t1", "conv"], ["u1"]),
        helper.make_node("Add", ["u1", "sb"], ["u2"]),
        helper.make_node("Add", ["u2", "t4"], ["out"]),
    ]
    f = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("b", f, [1, "n", N_LABELS]),
        helper.make_tensor_value_info("site", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
    ]
    outputs = [helper.make_tensor_value_info("out", f, [1, "n", N_LABELS])]
    return _save(nodes, inputs, outputs, consts, path)


def seq_reference(b: np.ndarray, site: int, w: dict[str, np.ndarray]) -> np.ndarray:
    bc = np.clip(b, 1e-6, 1 - 1e-6)
    padded = np.concatenate([np.zeros((1, N_LABELS)), b, np.zeros((1, N_LABELS))])
    conv = sum(padded[k : k + len(b)] * w["kernel"][:, 0, k] for k in range(3))
    z = 0.7 * np.log(bc / (1 - bc)) + conv + w["sites"][site] + 0.05 * len(b)
    return 1 / (1 + np.exp(-z))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "bird_infer", *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def steps_and_probe(b: Path, tmp: Path, blend: dict | None = None) -> None:
    """Perch's own steps written into its entry (and a blend), as docs/stages.md says, then the probe stage added."""
    data = json.loads((b / "manifest.json").read_text())
    data["members"][0]["steps"] = [{"step": "gaussian", "sigma": SIGMA}, {"step": "file_scale", "gamma": GAMMA}]
    if blend is not None:
        data["blend"] = blend
    (b / "manifest.json").write_text(json.dumps(data, indent=2))
    cli(
        "add-stage", str(b), "--onnx", "probe.onnx", "--name", "probe", "--output", "probs",
        "--input", "emb=embedding:perch:embedding", "--input", "lg=logits:perch", "--input", "hour=context:hour",
        "--context-pattern", PATTERN, "--context-ids", "hour=hours.csv", "--weight", str(PROBE_W), cwd=tmp,
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("stages")
    codes = sorted(ebird_map())[:N_LABELS]
    names = ebird_map()
    classes = [names[c] for c in codes] + [f"Unknown species {k}" for k in range(10)]
    (tmp / "labels.txt").write_text("\n".join(codes) + "\n")
    (tmp / "perch_labels.txt").write_text("\n".join(classes) + "\n")
    (tmp / "hours.csv").write_text("value,id\n" + "".join(f"{h:02d},{h}\n" for h in range(24)))
    (tmp / "sites.csv").write_text("".join(f"{k},{v}\n" for k, v in SITES.items()))
    perch_standin(tmp / "perch.onnx", len(classes), DIM, logit_scale=0.25)  # logits within about +-3
    pw, sw = probe_weights(), seq_weights()
    probe_graph(tmp / "probe.onnx", pw)
    seq_graph(tmp / "seq.onnx", sw)
    audio = tmp / "audio"
    audio.mkdir()
    rng = np.random.default_rng(1)
    for k, (name, secs) in enumerate(SECONDS.items()):
        t = np.arange(int(secs * SR)) / SR
        gate = (np.sin(2 * np.pi * (0.2 + 0.07 * k) * t) > 0).astype(np.float32)
        x = 0.3 * gate * np.sin(2 * np.pi * (1500 + 400 * k) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(audio / name, x.astype(np.float32), SR)
    whole = (audio / CUT).read_bytes()
    (audio / CUT).write_bytes(whole[: int(0.4 * len(whole))])
    b = tmp / "bundle"
    cli("new-bundle", str(b), "--labels", "labels.txt", cwd=tmp)
    cli(
        "add-member", str(b), "--onnx", "perch.onnx", "--name", "perch", "--output", "label", "--holds", "logits",
        "--activation", "sigmoid", "--labels", "perch_labels.txt", "--embedding", "embedding", "--check-audio",
        str(audio), cwd=tmp,
    )  # fmt: skip
    # per-member steps: written into the member's entry, as docs/stages.md says
    steps_and_probe(b, tmp)
    cli(
        "add-stage", str(b), "--onnx", "seq.onnx", "--name", "seq", "--output", "out", "--role", "final",
        "--activation", "sigmoid", "--input", "b=blend", "--input", "site=context:site", "--input", "n=n",
        "--context-pattern", PATTERN, "--context-ids", "site=sites.csv", "--context-unknown", "2", cwd=tmp,
    )  # fmt: skip
    summary = run_predict(audio, b, tmp / "sub.csv", options=RunOptions(workers=2))
    return {"tmp": tmp, "bundle": b, "audio": audio, "summary": summary, "pw": pw, "sw": sw, "codes": codes}


def gate_graph(path: Path, threshold: float = 0.8, w: float = 0.5) -> Path:
    """Gates on ranks: where both members' ranks pass ``threshold``, the rank blend mixed with the file's max of
    it: ``(1 - w) b + w max_n b``; elsewhere ``b``."""
    consts = {"t": np.array(threshold, np.float32), "w": np.array(w, np.float32), "one": np.array(1.0, np.float32)}
    nodes = [
        helper.make_node("Greater", ["rp", "t"], ["gp"]),
        helper.make_node("Greater", ["rq", "t"], ["gq"]),
        helper.make_node("And", ["gp", "gq"], ["gate"]),
        helper.make_node("ReduceMax", ["b"], ["peak"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["one", "w"], ["keep"]),
        helper.make_node("Mul", ["b", "keep"], ["m1"]),
        helper.make_node("Mul", ["peak", "w"], ["m2"]),
        helper.make_node("Add", ["m1", "m2"], ["mixed"]),
        helper.make_node("Where", ["gate", "mixed", "b"], ["out"]),
    ]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(k, f, [1, "n", N_LABELS]) for k in ("rp", "rq", "b")]
    outputs = [helper.make_tensor_value_info("out", f, [1, "n", N_LABELS])]
    return _save(nodes, inputs, outputs, consts, path)


def member_reference(built: dict) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """Per file: Perch's rows after its own steps and the probe's, on the decoded rows, and the rows claimed and
    decoded (the naive computation: Perch on each row's 5-s window by ORT, scipy's gaussian, numpy's probe)."""
    """Every step computed directly: Perch on each row's 5-s window (ORT), its mapped sigmoid, gaussian smoothing
    (scipy, edge rows) and max scaling on the decoded rows, the probe's math, the weighted mean, the sequence head's
    math, then the fallback rows the header claims."""
    m = load_manifest(built["bundle"])
    perch = m.members[0]
    sess = ort.InferenceSession(str(built["bundle"] / "perch.onnx"), providers=["CPUExecutionProvider"])
    hours = {f"{h:02d}": h for h in range(24)}
    out = {}
    for name in sorted(SECONDS):
        x, _ = sf.read(built["audio"] / name, dtype="float32")
        decoded = max(1, math.ceil(len(x) / (5 * SR) - 1e-9))
        claimed = max(decoded, math.ceil(SECONDS[name] / 5 - 1e-9))
        padded = np.zeros(decoded * 5 * SR, np.float32)
        padded[: len(x)] = x
        emb, logits = sess.run(["embedding", "label"], {"inputs": padded.reshape(decoded, PERCH_SAMPLES)})
        # rows are float32 between steps, as the contract says (a logit taken near 1 shows it: float32 holds
        # 0.99999583 to 6e-8, which moves its logit by 4e-3)
        p = (1 / (1 + np.exp(-logits.astype(np.float64))))[:, list(perch.output_index)].astype(np.float32)
        p = gaussian_filter1d(p.astype(np.float64), SIGMA, axis=0, mode="nearest", truncate=6 / SIGMA)
        p = p.astype(np.float32).astype(np.float64)
        p = np.clip((p * p.max(axis=0) ** GAMMA).astype(np.float32), 0, np.float32(0.999999))
        q = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        lg = np.log(q / (1 - q)).astype(np.float32)
        stem = Path(name).stem
        hour = stem.partition("_")[2]
        probe = probe_reference(emb, lg, hours.get(hour, -1), built["pw"])
        out[name] = (p.astype(np.float64), probe.astype(np.float32).astype(np.float64), claimed, decoded)
    return out


def naive_reference(built: dict) -> pd.DataFrame:
    """The mean-blend pipeline: the weighted mean of Perch and the probe, the sequence head, the fallback rows."""
    rows_out = []
    for name, (p, probe, claimed, decoded) in member_reference(built).items():
        stem = Path(name).stem
        site = stem.partition("_")[0]
        blended = (p + PROBE_W * probe) / (1 + PROBE_W)
        final = seq_reference(blended, SITES.get(site, 2), built["sw"])
        final = np.clip(final, 0, 0.999999)
        rows = np.zeros((claimed, N_LABELS))
        rows[:decoded] = final
        for r in range(claimed):
            rows_out.append([f"{stem}_{5 * (r + 1)}", *rows[r]])
    return pd.DataFrame(rows_out, columns=["row_id", *built["codes"]])


def test_a_2026_pipeline_of_stages_equals_a_naive_reference(built) -> None:
    got = pd.read_csv(built["summary"].out_path, dtype={"row_id": str}).sort_values("row_id").reset_index(drop=True)
    ref = naive_reference(built).sort_values("row_id").reset_index(drop=True)
    assert got.row_id.tolist() == ref.row_id.tolist()
    worst = float(np.abs(got.iloc[:, 1:].to_numpy() - ref.iloc[:, 1:].to_numpy()).max())
    print(f"perch + own steps + probe stage + sequence head: max |csv - naive reference| = {worst:.3g}")
    assert worst <= 1e-5
    written = pd.read_csv(built["summary"].out_path, dtype={"row_id": str})
    cut = written[written.row_id.str.startswith("alpha_07_")].iloc[:, 1:].to_numpy()
    assert len(cut) == 6 and (cut[3:] == 0).all() and (cut[:3] > 0).all()  # fallback rows never fed to a stage
    report = pd.read_csv(built["summary"].report_path, dtype=str).set_index("row_prefix")
    assert report.loc["alpha_07", "outcome"] == "partial"
    assert "does not match its context pattern" in report.loc["other", "reason"]  # the one-row file: unknown ids


def test_split_files_and_dask_give_the_same_bytes(built, tmp_path) -> None:
    want = built["summary"].out_path.read_bytes()
    split = run_predict(
        built["audio"], built["bundle"], tmp_path / "split.csv", options=RunOptions(workers=6, block_chunks=1)
    )
    assert split.out_path.read_bytes() == want
    pytest.importorskip("distributed")
    dask = run_predict(
        built["audio"], built["bundle"], tmp_path / "dask.csv", options=RunOptions(workers=2, engine="dask")
    )
    assert dask.out_path.read_bytes() == want


def test_stage_refusals_are_one_error_line_and_change_nothing(built, tmp_path) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(built["bundle"], b)
    before = {p.name: p.read_bytes() for p in b.iterdir()}
    cases = [
        (
            ["--input", "emb=embedding:perch:nothing", "--input", "lg=logits:perch", "--input", "hour=n"],
            "embedding:MEMBER",
        ),
        (["--input", "emb=embedding:perch:embedding", "--input", "lg=logits:perch"], "the graph's inputs are"),
        (
            ["--input", "emb=embedding:perch:embedding", "--input", "lg=member:nobody", "--input", "hour=n"],
            "'member:nobody'",
        ),
    ]
    for extra, culprit in cases:
        done = subprocess.run(
            [sys.executable, "-m", "bird_infer", "add-stage", str(b), "--onnx", str(built["tmp"] / "probe.onnx"),
             "--name", "probe2", "--output", "probs", *extra],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        errors = [x for x in done.stderr.splitlines() if x.startswith("bird-infer: error:")]
        assert done.returncode == 2 and len(errors) == 1 and culprit in errors[0], done.stderr[-2000:]
        assert {p.name: p.read_bytes() for p in b.iterdir()} == before


def test_a_rank_blend_with_gates_on_ranks_equals_a_naive_reference(built, tmp_path) -> None:
    """The same members, a rank blend, then a final stage gating on the members' ranks (with a rank blend a final
    stage runs once every file is in; its member inputs are the members' ranks)."""
    tmp = built["tmp"]
    gate_graph(tmp_path / "gate.onnx")
    b = tmp_path / "bundle"
    cli("new-bundle", str(b), "--labels", str(tmp / "labels.txt"), cwd=tmp)
    cli(
        "add-member", str(b), "--onnx", "perch.onnx", "--name", "perch", "--output", "label", "--holds", "logits",
        "--activation", "sigmoid", "--labels", "perch_labels.txt", "--embedding", "embedding", "--check-audio",
        str(built["audio"]), cwd=tmp,
    )  # fmt: skip
    steps_and_probe(b, tmp, blend={"rule": "rank"})
    cli(
        "add-stage", str(b), "--onnx", str(tmp_path / "gate.onnx"), "--name", "gate", "--output", "out",
        "--role", "final", "--input", "rp=member:perch", "--input", "rq=member:probe", "--input", "b=blend", cwd=tmp,
    )  # fmt: skip
    summary = run_predict(built["audio"], b, tmp_path / "rank.csv", options=RunOptions(workers=2))
    got = pd.read_csv(summary.out_path, dtype={"row_id": str})
    members = member_reference(built)
    names = list(members)
    perch = np.concatenate([members[n][0] for n in names])
    probe = np.concatenate([members[n][1] for n in names])

    def ranks(x: np.ndarray) -> np.ndarray:
        return (pd.DataFrame(x).rank(method="average").to_numpy() - 1) / len(x)

    rp, rq = ranks(perch.astype(np.float32)), ranks(probe.astype(np.float32))
    blended = (rp + PROBE_W * rq) / (1 + PROBE_W)
    rows_out, start = [], 0
    for n in names:
        _, _, claimed, decoded = members[n]
        sl = slice(start, start + decoded)
        b_ = blended[sl]
        gated = np.where((rp[sl] > 0.8) & (rq[sl] > 0.8), 0.5 * b_ + 0.5 * b_.max(axis=0), b_)
        rows = np.zeros((claimed, N_LABELS))
        rows[:decoded] = np.clip(gated, 0, 0.999999)
        rows_out += [[f"{Path(n).stem}_{5 * (r + 1)}", *rows[r]] for r in range(claimed)]
        start += decoded
    ref = pd.DataFrame(rows_out, columns=["row_id", *built["codes"]]).set_index("row_id").loc[got.row_id]
    worst = float(np.abs(got.iloc[:, 1:].to_numpy() - ref.to_numpy()).max())
    print(f"rank blend + gates on ranks: max |csv - naive reference| = {worst:.3g}")
    assert worst <= 1e-5
    gated_cells = int(((rp > 0.8) & (rq > 0.8)).sum())
    assert gated_cells > 0  # the gate fired somewhere


def test_detect_with_stages_resumes_to_the_same_tables(built, tmp_path) -> None:
    """``detect`` runs the stages in the workers as ``predict`` does; a run whose last files are undone (their
    lines cut from the done log, their tables removed) and resumed writes the same tables."""
    import shutil

    from bird_infer.jobs.detect import DetectSettings, run_detect
    from bird_infer.outputs.runrecord import DONE_LOG

    settings = DetectSettings(rtypes=("csv",), min_conf=0.1)
    straight = run_detect(built["audio"], built["bundle"], tmp_path / "a", settings, RunOptions(workers=2))
    assert straight.n_predicted == len(SECONDS)
    tables = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir() if p.name.endswith(".results.csv")}
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    done = (tmp_path / "b" / DONE_LOG).read_text().splitlines(keepends=True)
    (tmp_path / "b" / DONE_LOG).write_text("".join(done[:2]))
    for line in done[2:]:
        stem = json.loads(line)["name"]
        for p in (tmp_path / "b").glob(f"{stem}*.csv"):
            p.unlink()
    run_detect(built["audio"], built["bundle"], tmp_path / "b", settings, RunOptions(workers=2), resume=True)
    again = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir() if p.name.endswith(".results.csv")}
    assert len(tables) == len(SECONDS) and again == tables  # the error report is each run's own
