"""Any ONNX model as a member: Perch-like backbones with heads on their embedding, frame-wise rows from long
windows, test-time shifts, and ``bird-infer add-member``'s checks."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import soundfile as sf

from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.birdnet import ebird_map
from bird_infer.contract.errors import AddMemberError, ManifestError
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.schema import PROB_MAX, AudioConfig, Shift, SourceSpec
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from bird_infer.tools.add_member import MemberRequest, add_member, map_labels
from tests.conftest import real_audio_dir, synthetic_chunks, write_json
from tests.standins import PERCH_SAMPLES, head_standin, perch_standin

SR = 32000
FILES = ("1min.wav", "birds_10s.wav", "aru_1.wav")
"""12 rows, 3 rows (the last one 0.13 s of audio), 1 row (3 s): file edges of every kind."""
SHIFTS = ((-1.25, 1.0), (0.0, 2.0), (1.25, 2.0))
HEAD_LABELS = 40
WEIGHTS = {"sed10": 1.0, "perch": 0.5, "head": 0.75}


def perch_classes(bundle_labels: list[str]) -> list[str]:
    """300 class names as a foundation model gives them: scientific names for the first 60 bundle codes,
    ``Scientific_Common`` for the next 60, then names no table knows."""
    codes = ebird_map()
    named = [codes[c] for c in bundle_labels if c in codes][:120]
    out = [n.partition("_")[0] for n in named[:60]] + named[60:120]
    return out + [f"Unknown species {k}" for k in range(300 - len(out))]


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    src = real_audio_dir("opensoundscape")
    for name in FILES:
        (folder / name).symlink_to(src / name)
    return folder


@pytest.fixture(scope="module")
def three(tmp_path_factory, tiny_bundle, tiny_config, audio):
    """sed10 (the tiny SED on 10-s log-mel windows, frame-wise rows, shifts -1.25/0/+1.25 s at 1:2:2), perch (a
    Perch v2 stand-in: logits over 300 named classes, mapped through the eBird table, and an embedding), head (an
    MLP on perch's embedding, for the first 40 bundle labels)."""
    from bird_infer.export import export_member

    _, models, _ = tiny_bundle
    tmp = tmp_path_factory.mktemp("three")
    folder = tmp / "bundle"
    labels = list(tiny_config.labels)
    waves = synthetic_chunks(SR, 10.0, 8)
    export_member(models[:1], labels, AudioConfig(SR, 10.0), tiny_config.frontend, folder, waves, name="sed10")
    data = json.loads((folder / "manifest.json").read_text())
    member = data["members"][0]
    member["ensemble"]["output"] = "framewise"
    member["shifts"] = [{"offset_s": o, "weight": w} for o, w in SHIFTS]
    write_json(folder / "manifest.json", data)
    classes = perch_classes(labels)
    (tmp / "perch_labels.txt").write_text("\n".join(classes) + "\n")
    perch = perch_standin(tmp / "perch.onnx", len(classes))
    add_member(
        folder,
        MemberRequest(
            onnx=perch,
            name="perch",
            output="label",
            holds="logits",
            activation="sigmoid",
            labels=tuple(classes),
            embeddings=("embedding",),
            weight=WEIGHTS["perch"],
        ),
        [audio],
    )
    head = head_standin(tmp / "head.onnx", 64, HEAD_LABELS)
    add_member(
        folder,
        MemberRequest(
            onnx=head,
            name="head",
            output="probs",
            labels=tuple(labels[:HEAD_LABELS]),
            source=SourceSpec("perch", "embedding"),
            weight=WEIGHTS["head"],
        ),
        [audio],
    )
    data = json.loads((folder / "manifest.json").read_text())
    data["members"][0]["weight"] = WEIGHTS["sed10"]
    write_json(folder / "manifest.json", data)
    return load_manifest(folder)


def naive_reference(manifest, audio: Path) -> pd.DataFrame:
    """Every window, shift, frame and weight computed directly with ONNX Runtime: sed10's frames (10-s windows
    centred on each row, moved by each shift, zero-padded past the file's ends; frame j of the window starting at t
    centred at t + (j + 1/2) 10 / T) averaged onto the rows that hold their centres, weighted by the shifts;
    perch's sigmoid of the mapped logits and the head's output on the 5-s window of each row; then the members'
    weighted mean over the members that have each label."""
    sed, perch, head = manifest.members
    fe = LogMelFrontend(sed.frontend, SR)
    sess = {m.name: ort.InferenceSession(str(manifest.fold_path(m.folds[0]))) for m in manifest.members}
    frames_out = sed.folds[0].segmentwise.name
    col = {x: j for j, x in enumerate(manifest.labels)}
    frames = []
    for name in FILES:
        x, _ = sf.read(audio / name, dtype="float32")
        n_rows = max(1, math.ceil(len(x) / (5 * SR) - 1e-9))

        def window(start_s: float, length_s: float, x: np.ndarray = x) -> np.ndarray:
            a, n = round(start_s * SR), round(length_s * SR)
            out = np.zeros(n, np.float32)
            lo, hi = max(a, 0), min(a + n, len(x))
            if hi > lo:
                out[lo - a : hi - a] = x[lo:hi]
            return out

        sums = np.zeros((n_rows, len(sed.labels)))
        wsum = np.zeros(n_rows)
        for r in range(n_rows):
            for offset, weight in SHIFTS:
                start = (r + 0.5) * 5 - 5 + offset
                seg = sess["sed10"].run([frames_out], {"logmel": fe(window(start, 10.0)[None])})[0][0]  # (L, T)
                seg = np.clip(seg, 0, PROB_MAX)
                t = seg.shape[1]
                for j in range(t):
                    q = math.floor((start + (j + 0.5) * 10.0 / t) / 5 + 1e-9)
                    if 0 <= q < n_rows:
                        sums[q] += weight * seg[:, j]
                        wsum[q] += weight
        acc = np.zeros((n_rows, len(manifest.labels)))
        wts = np.zeros_like(acc)
        sed_rows = sums / wsum[:, None]
        acc[:, [col[x] for x in sed.labels]] += WEIGHTS["sed10"] * sed_rows
        wts[:, [col[x] for x in sed.labels]] += WEIGHTS["sed10"]
        for r in range(n_rows):
            emb, logits = sess["perch"].run(["embedding", "label"], {"inputs": window(r * 5.0, 5.0)[None]})
            p = np.clip(1 / (1 + np.exp(-logits[0].astype(np.float64))), 0, PROB_MAX)[list(perch.output_index)]
            acc[r, [col[x] for x in perch.labels]] += WEIGHTS["perch"] * p
            wts[r, [col[x] for x in perch.labels]] += WEIGHTS["perch"]
            h = np.clip(sess["head"].run(["probs"], {"embedding": emb})[0][0], 0, PROB_MAX)
            acc[r, [col[x] for x in head.labels]] += WEIGHTS["head"] * h
            wts[r, [col[x] for x in head.labels]] += WEIGHTS["head"]
        frame = pd.DataFrame(acc / wts, columns=list(manifest.labels))
        frame.insert(0, "row_id", [f"{Path(name).stem}_{5 * (r + 1)}" for r in range(n_rows)])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_three_members_with_frames_shifts_and_a_head_equal_a_naive_reference(three, audio, tmp_path) -> None:
    assert [m.name for m in three.members] == ["sed10", "perch", "head"]
    perch = three.members[1]
    assert len(perch.labels) == 120  # 60 scientific names and 60 Scientific_Common labels, through the eBird table
    out = run_predict(audio, three.root, tmp_path / "sub.csv", options=RunOptions(workers=2)).out_path
    got = pd.read_csv(out, dtype={"row_id": str}).set_index("row_id")
    ref = naive_reference(three, audio).set_index("row_id")
    got = got.loc[ref.index]
    worst = float(np.abs(got.to_numpy() - ref.to_numpy()).max())
    print(f"sed10 (frames, shifts) + perch stand-in + head vs naive reference: max |diff| = {worst:.3g}")
    assert worst <= 1e-5
    assert got.loc[["aru_1_5", "birds_10s_15", "1min_5", "1min_60"]].notna().all().all()  # the edges


def test_a_backbone_runs_once_per_window_and_each_file_is_decoded_once(three, audio, tmp_path, monkeypatch) -> None:
    from bird_infer.audio import decode
    from bird_infer.runtime import sessions

    calls: dict[str, int] = {}
    opened: list[str] = []
    real_make, real_open = sessions.make_session, decode._open

    by_sha = {hashlib.sha256(f.read_bytes()).hexdigest(): f.stem for f in Path(three.root).rglob("*.onnx")}

    def counting_session(path, threads=1):  # the workers load checked bytes: named by their sha256
        session = real_make(path, threads)
        name = by_sha[hashlib.sha256(path).hexdigest()] if isinstance(path, bytes) else Path(path).stem

        class Counted:
            def run(self, names, feed):
                calls[name] = calls.get(name, 0) + 1
                return session.run(names, feed)

        return Counted()

    def counting_open(path):
        opened.append(Path(path).name)
        return real_open(path)

    monkeypatch.setattr(sessions, "make_session", counting_session)
    monkeypatch.setattr(decode, "_open", counting_open)
    monkeypatch.setattr("bird_infer.run.plan.header_chunks", lambda paths, m: [None] * len(paths))
    monkeypatch.setattr("bird_infer.run.plan.check_models", lambda m: None)
    run_predict(audio, three.root, tmp_path / "sub.csv", options=RunOptions(in_process=True))
    rows = 12 + 3 + 1
    assert calls["perch"] == rows  # once per window, though the head reads its embedding too
    assert calls["head"] == rows
    assert calls["fold0"] == rows * len(SHIFTS)  # sed10's fold, once per window and shift
    assert sorted(opened) == sorted(FILES)


def test_the_deadline_guard_drops_shifts_first(three) -> None:
    order = three.unit_order()
    assert [kind for kind, *_ in order] == ["fold", "fold", "fold", "shift", "shift"]
    assert three.kept_units(3) == [([0], [1]), ([0], [0]), ([0], [0])]  # sed10 keeps its 0-s shift only
    assert three.runs() == 3 + 1 + 1 and three.runs(3) == 3


# --- add-member's checks ---------------------------------------------------------------------------------


@pytest.fixture()
def small_bundle(tmp_path, tiny_bundle) -> Path:
    manifest, _, _ = tiny_bundle
    folder = tmp_path / "bundle"
    shutil.copytree(manifest.root, folder)
    return folder


def _unchanged(folder: Path, before: bytes) -> bool:
    return (folder / "manifest.json").read_bytes() == before and not any(folder.glob("new*.onnx"))


BAD = {
    "label map naming unknown labels": (
        lambda tmp, labels: {"label_map": {labels[0]: "no_such_bird"}},
        "names labels the bundle does not have",
    ),
    "an output the ONNX lacks": (lambda tmp, labels: {"output": "logits"}, r"has no output named 'logits'"),
    "a window shorter than a row": (lambda tmp, labels: {"window_s": 3.0}, "shorter than a row"),
    "a head whose source is missing": (
        lambda tmp, labels: {"source": SourceSpec("nobody", "embedding")},
        "source member 'nobody' is not in the bundle",
    ),
    "a head that is its own source": (lambda tmp, labels: {"source": SourceSpec("new", "embedding")}, "cycle"),
    "logits without an activation": (lambda tmp, labels: {"activation": "none"}, "needs --activation"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_add_member_inputs_are_refused_before_any_audio(small_bundle, tmp_path, case) -> None:
    labels = list(load_manifest(small_bundle).labels)
    make, message = BAD[case]
    extra = make(tmp_path, labels)
    source = extra.get("source")
    if source is not None:
        onnx_file = head_standin(tmp_path / "h.onnx", 64, 5)
        fields = {"output": "probs", "labels": tuple(labels[:5])}
    else:
        onnx_file = perch_standin(tmp_path / "p.onnx", len(labels))
        fields = {"output": "label", "holds": "logits", "activation": "sigmoid", "embeddings": ("embedding",)}
    fields.update(extra)
    before = (small_bundle / "manifest.json").read_bytes()
    never = tmp_path / "no_audio_here"  # a check on audio would fail on this: the refusal comes first
    with pytest.raises((AddMemberError, ManifestError), match=message):
        add_member(small_bundle, MemberRequest(onnx=onnx_file, name="new", **fields), [never])
    assert _unchanged(small_bundle, before)


def test_logits_declared_as_probabilities_are_refused_on_audio(small_bundle, tmp_path, audio) -> None:
    labels = list(load_manifest(small_bundle).labels)
    onnx_file = perch_standin(tmp_path / "p.onnx", len(labels))
    before = (small_bundle / "manifest.json").read_bytes()
    with pytest.raises(AddMemberError, match="declared to hold probabilities but lies in"):
        add_member(small_bundle, MemberRequest(onnx=onnx_file, name="new", output="label"), [audio])
    assert _unchanged(small_bundle, before)


def test_labels_map_through_the_ebird_table() -> None:
    codes = ebird_map()
    sci = codes["amerob"].partition("_")[0]
    labels, index = map_labels(["Nothing here", sci, codes["norcar"], "amerob", "amerob"], ["norcar", "amerob"], None)
    assert labels == ["amerob", "norcar"] and index == [1, 2]  # the first of several onto one label is kept


def test_shifts_and_sources_round_trip_in_the_manifest(three) -> None:
    again = load_manifest(three.root)
    assert again.members[0].shifts == tuple(Shift(o, w) for o, w in SHIFTS)
    assert again.members[2].source == SourceSpec("perch", "embedding") and again.members[2].head_dim == 64
    assert again.members[1].folds[0].input.shape == ("batch", PERCH_SAMPLES)
