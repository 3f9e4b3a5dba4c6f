"""Post-processing as the winners do it: rank and power blends, group weights, per-group steps, file-level scaling,
file-name priors, and ``bird-infer tune``."""

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
from bird_infer.contract.errors import BirdInferError, ManifestError
from bird_infer.contract.manifest import load_manifest
from bird_infer.contract.postprocess import FileScale, Prior
from bird_infer.contract.schema import PROB_MAX
from bird_infer.jobs.detect import run_detect
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from bird_infer.run.postprocess import PostProcessor, apply_prior, file_scale, smooth_rows
from bird_infer.runtime.blend import blend, rank_scale
from bird_infer.tools.synth import CorpusSpec, write_corpus
from bird_infer.tools.tune import candidates
from tests.conftest import ROOT, synthetic_chunks, write_json

SR = 32000
PATTERN = r"^(?P<site>[a-z]+)_(?P<hour>\d{2})"
GROUP = 40
"""The first GROUP labels form the group ``g1``."""
SECONDS = {"alpha_06.wav": 23.0, "beta_18.wav": 31.0, "other.wav": 12.0, "alpha_07.wav": 27.0}
CUT = "alpha_07.wav"
"""Cut to 40 % of its bytes: its header claims 27 s (6 rows), 2 rows decode: the rest are fallback rows."""


# --- each step by hand -----------------------------------------------------------------------------------


P = np.array([[0.1, 0.9], [0.5, 0.3], [0.2, 0.2], [0.0, 0.0], [0.7, 0.1]], dtype=np.float32)
VALID = np.array([True, True, True, False, True])  # row 3 holds the fallback


def test_file_scale_by_hand() -> None:
    got = file_scale(P, VALID, 0.4, "max")
    peak = P[VALID].max(axis=0)
    np.testing.assert_allclose(got[VALID], P[VALID] * peak**0.4, rtol=1e-6)
    np.testing.assert_array_equal(got[3], P[3])  # the fallback row stays
    top2 = np.array([(0.7 + 0.5) / 2, (0.9 + 0.3) / 2])
    np.testing.assert_allclose(file_scale(P, VALID, 0.4, "topk", 2)[VALID], P[VALID] * top2**0.4, rtol=1e-6)
    top9 = P[VALID].mean(axis=0)  # k beyond the file's rows: all of them
    np.testing.assert_allclose(file_scale(P, VALID, 1.0, "topk", 9)[VALID], P[VALID] * top9, rtol=1e-6)
    np.testing.assert_allclose(file_scale(P, VALID, 0.0)[VALID], P[VALID], rtol=1e-7)  # gamma 0: unchanged


def test_prior_and_groups_by_hand(tmp_path, tiny_bundle) -> None:
    manifest = load_manifest(_bundle(tmp_path / "b", tiny_bundle))
    post = PostProcessor(manifest)
    n = len(manifest.labels)
    probs = np.random.default_rng(0).uniform(0.05, 0.95, (5, n)).astype(np.float32)
    table = pd.read_csv(manifest.root / "priors.csv", dtype={"site": str, "hour": str})
    row = table[(table.site == "beta") & (table.hour == "18")].iloc[0]
    prior = np.array([row.get(x, 1.0) for x in manifest.labels], dtype=np.float64)
    got, notes = post.apply(probs, VALID, Path("x/beta_18.wav"))
    assert notes == []
    # smooth on g1 only, then topk scaling, then the prior
    expect = probs.astype(np.float64).copy()
    expect[:, :GROUP] = smooth_rows(probs[:, :GROUP], VALID, (0.25, 0.5, 0.25))
    expect = file_scale(expect.astype(np.float32), VALID, 0.4, "topk", 2).astype(np.float64)
    expect[VALID] *= prior**0.7
    np.testing.assert_allclose(got[VALID], np.clip(expect[VALID], 0, PROB_MAX), rtol=2e-6)
    np.testing.assert_array_equal(got[3], probs[3])
    unmatched, notes = post.apply(probs, VALID, Path("nowhere.wav"))
    assert notes and "left unchanged" in notes[0]
    expect_no_prior = expect.copy()
    expect_no_prior[VALID] /= prior**0.7
    np.testing.assert_allclose(unmatched[VALID], expect_no_prior[VALID], rtol=2e-6)
    np.testing.assert_allclose(apply_prior(probs, VALID, prior, 0.0)[VALID], probs[VALID], rtol=1e-7)


def test_blends_by_hand() -> None:
    stack = np.array([[[0.2, np.nan], [0.8, 0.4]], [[0.6, 0.5], [np.nan, 0.1]]], dtype=np.float32)
    w = np.array([[1.0, 1.0], [3.0, 3.0]])
    mean = blend(stack, w, "mean")
    np.testing.assert_allclose(mean, [[(0.2 + 3 * 0.6) / 4, 0.5], [0.8, (0.4 + 3 * 0.1) / 4]], rtol=1e-6)
    power = blend(stack, w, "power", 2.0)
    np.testing.assert_allclose(power[0, 0], math.sqrt((0.2**2 + 3 * 0.6**2) / 4), rtol=1e-6)
    assert np.isnan(blend(np.full((2, 1, 1), np.nan, np.float32), w[:, :1], "mean")).all()
    np.testing.assert_allclose(rank_scale(np.array([0.3, 0.1, 0.3, 0.9])), [1.5 / 4, 0, 1.5 / 4, 3 / 4])


# --- a two-member bundle against a naive reference ---------------------------------------------------------


def _bundle(folder: Path, tiny_bundle, rule: str = "rank") -> Path:
    """Members a (fold0, weight 1) and b (fold1, weight 0.5; 3 on group g1), a rank blend, smoothing on g1, top-2
    file scaling and a site x hour prior table."""
    manifest, _, _ = tiny_bundle
    shutil.copytree(manifest.root, folder)
    data = json.loads((folder / "manifest.json").read_text())
    member = data["members"][0]
    a, b = json.loads(json.dumps(member)), json.loads(json.dumps(member))
    a.update(name="a", weight=1.0, folds=[member["folds"][0]])
    b.update(name="b", weight=0.5, folds=[member["folds"][1]])
    data["members"] = [a, b]
    labels = data["labels"]
    data["label_groups"] = {"g1": labels[:GROUP]}
    data["blend"] = {"rule": rule, "group_weights": {"g1": {"b": 3.0}}}
    rng = np.random.default_rng(3)
    rows = [("alpha", "06"), ("alpha", "07"), ("beta", "18")]
    table = pd.DataFrame(rows, columns=["site", "hour"])
    for x in labels[:100]:
        table[x] = np.round(rng.uniform(0.5, 1.5, len(rows)), 4)
    table.to_csv(folder / "priors.csv", index=False)
    sha = hashlib.sha256((folder / "priors.csv").read_bytes()).hexdigest()
    data["postprocess"] = [
        {"step": "smooth", "kernel": [0.25, 0.5, 0.25], "group": "g1"},
        {"step": "file_scale", "mode": "topk", "k": 2, "gamma": 0.4},
        {"step": "prior", "pattern": PATTERN, "table": "priors.csv", "sha256": sha, "beta": 0.7},
    ]
    write_json(folder / "manifest.json", data)
    return folder


def _audio(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for k, (name, secs) in enumerate(SECONDS.items()):
        wave = synthetic_chunks(SR, 5.0, math.ceil(secs / 5), seed=20 + k).reshape(-1)[: int(secs * SR)]
        sf.write(folder / name, wave, SR)
    whole = (folder / CUT).read_bytes()
    (folder / CUT).write_bytes(whole[: int(0.4 * len(whole))])
    (folder / "bad_01.wav").write_text("not audio\n", encoding="utf-8")
    return folder


def naive_reference(models: Path, audio: Path) -> pd.DataFrame:
    """Every step computed directly: each fold run by ONNX Runtime on every 5-s row, ranks per member and label
    over every predicted row (pandas), the group-weighted mean, then per file the steps, as the manifest says."""
    m = load_manifest(models)
    fe = LogMelFrontend(m.members[0].frontend, SR)
    labels = list(m.labels)
    members, valid, claimed = {}, {}, {}
    for name in sorted(SECONDS):
        x, _ = sf.read(audio / name, dtype="float32")
        decoded = max(1, math.ceil(len(x) / (5 * SR) - 1e-9))
        claimed[name] = max(decoded, math.ceil(SECONDS[name] / 5 - 1e-9))
        padded = np.zeros(decoded * 5 * SR, np.float32)
        padded[: len(x)] = x
        feats = fe(padded.reshape(decoded, 5 * SR))
        outs = []
        for mem in m.members:
            sess = ort.InferenceSession(str(m.fold_path(mem.folds[0])), providers=["CPUExecutionProvider"])
            y = np.concatenate([sess.run(["clipwise"], {"logmel": f[None]})[0] for f in feats])
            outs.append(np.clip(y, 0.0, PROB_MAX))
        members[name] = outs
        valid[name] = decoded
    for k in range(2):  # ranks over every predicted row of every file, per member and label
        column = pd.DataFrame(np.concatenate([members[n][k] for n in sorted(SECONDS)]), columns=labels)
        ranks = ((column.rank(method="average") - 1) / len(column)).to_numpy(np.float64)
        start = 0
        for n in sorted(SECONDS):
            members[n][k] = ranks[start : start + valid[n]]
            start += valid[n]
    w_b = np.where(np.arange(len(labels)) < GROUP, 3.0, 0.5)
    table = pd.read_csv(models / "priors.csv", dtype={"site": str, "hour": str}).set_index(["site", "hour"])
    frames = []
    for n in sorted(SECONDS):
        p = (members[n][0] * 1.0 + members[n][1] * w_b) / (1.0 + w_b)
        v = len(p)
        g = p[:, :GROUP].copy()  # smoothing on g1, edges renormalised
        for i in range(v):
            ws = [(0.25, i - 1), (0.5, i), (0.25, i + 1)]
            ws = [(w, j) for w, j in ws if 0 <= j < v]
            g[i] = sum(w * p[j, :GROUP] for w, j in ws) / sum(w for w, _ in ws)
        p[:, :GROUP] = g
        top = np.sort(p, axis=0)[-min(2, v) :].mean(axis=0)
        p = p * top**0.4
        site, _, rest = Path(n).stem.partition("_")
        if (site, rest[:2]) in table.index:
            row = table.loc[(site, rest[:2])]
            prior = np.array([row[x] if x in row.index else 1.0 for x in labels])
            p = p * prior**0.7
        p = np.clip(p, 0.0, PROB_MAX)
        rows = np.zeros((claimed[n], len(labels)))
        rows[:v] = p
        frame = pd.DataFrame(rows, columns=labels)
        frame.insert(0, "row_id", [f"{Path(n).stem}_{5 * (i + 1)}" for i in range(claimed[n])])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def ranked(tmp_path_factory, tiny_bundle):
    tmp = tmp_path_factory.mktemp("ranked")
    models, audio = _bundle(tmp / "models", tiny_bundle), _audio(tmp / "audio")
    summary = run_predict(audio, models, tmp / "pool.csv", options=RunOptions(workers=2))
    return models, audio, summary


def test_rank_blend_groups_steps_and_prior_equal_a_naive_reference(ranked) -> None:
    models, audio, summary = ranked
    got = pd.read_csv(summary.out_path, dtype={"row_id": str})
    ref = naive_reference(models, audio)
    bad = got[got.row_id.str.startswith("bad_01_")]
    got = got[~got.row_id.str.startswith("bad_01_")].reset_index(drop=True)
    assert got.row_id.tolist() == ref.row_id.tolist()
    labels = list(ref.columns[1:])
    worst = float(np.abs(got[labels].to_numpy() - ref[labels].to_numpy()).max())
    print(f"rank blend + group weights + group smoothing + top-2 scaling + prior: max |csv - reference| = {worst:.3g}")
    assert worst <= 1e-6
    assert (bad[labels].to_numpy() == 0).all()  # a failed file keeps the fallback
    cut = got[got.row_id.str.startswith("alpha_07_")][labels].to_numpy()
    decoded = math.ceil(len(sf.read(audio / CUT)[0]) / (5 * SR))
    assert len(cut) == 6 and decoded < 6
    assert (cut[decoded:] == 0).all() and (cut[:decoded] > 0).any()  # fallback rows are never ranked or scaled
    report = pd.read_csv(summary.report_path)
    assert report.set_index("row_prefix").loc["other", "outcome"] == "prior_unmatched"
    assert got[labels].to_numpy().max() < 1


def test_dask_and_a_split_file_give_the_same_csv(ranked, tmp_path) -> None:
    models, audio, summary = ranked
    want = summary.out_path.read_bytes()
    split = run_predict(audio, models, tmp_path / "split.csv", options=RunOptions(workers=6, block_chunks=2))
    assert split.out_path.read_bytes() == want
    pytest.importorskip("distributed")
    dask = run_predict(audio, models, tmp_path / "dask.csv", options=RunOptions(workers=2, engine="dask"))
    assert dask.out_path.read_bytes() == want


def test_member_rows_spill_to_a_memory_map_and_give_the_same_csv(ranked, tmp_path) -> None:
    models, audio, summary = ranked
    out = tmp_path / "spilled" / "sub.csv"
    spilled = run_predict(audio, models, out, options=RunOptions(workers=2, member_rows_ram_mb=0.01))
    assert spilled.out_path.read_bytes() == summary.out_path.read_bytes()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # the map is removed


def test_power_blend_and_steps_in_the_worker(tmp_path, tiny_bundle) -> None:
    """A power blend needs no other file: it runs in the worker, and detect accepts it."""
    models = _bundle(tmp_path / "m", tiny_bundle, rule="power")
    audio = _audio(tmp_path / "a")
    out = run_predict(audio, models, tmp_path / "p.csv", options=RunOptions(workers=2)).out_path
    probs = pd.read_csv(out).iloc[:, 1:].to_numpy()
    assert np.isfinite(probs).all() and probs.max() < 1 and probs.std() > 0
    summary = run_detect(audio, models, tmp_path / "det", options=RunOptions(workers=2))
    assert summary.n_predicted == 4


# --- bad manifests ---------------------------------------------------------------------------------------


def _edit_table(folder: Path, fn) -> None:
    table = pd.read_csv(folder / "priors.csv", dtype=str)
    fn(table).to_csv(folder / "priors.csv", index=False)
    data = json.loads((folder / "manifest.json").read_text())
    data["postprocess"][2]["sha256"] = hashlib.sha256((folder / "priors.csv").read_bytes()).hexdigest()
    write_json(folder / "manifest.json", data)


BAD = {
    "unknown step": (lambda d, f: d["postprocess"].append({"step": "sharpen"}), "unknown step 'sharpen'"),
    "group of unknown labels": (
        lambda d, f: d["label_groups"].update(g2=["no_such_bird"]),
        "names labels the bundle does not have",
    ),
    "negative exponent": (lambda d, f: d["postprocess"][1].update(gamma=-0.4), "must be >= 0"),
    "regex without named groups": (lambda d, f: d["postprocess"][2].update(pattern=r"^\w+"), "named groups"),
    "regex lacking a group the table uses": (
        lambda d, f: d["postprocess"][2].update(pattern=r"^(?P<site>[a-z]+)"),
        r"neither bundle labels nor named groups of the pattern",
    ),
    "table column that is no label": (
        lambda d, f: _edit_table(f, lambda t: t.rename(columns={t.columns[5]: "not_a_label"})),
        r"\['not_a_label'\] are neither bundle labels",
    ),
    "group weight for no member": (
        lambda d, f: d["blend"]["group_weights"]["g1"].update(nobody=2.0),
        "names members the bundle does not have",
    ),
    "unknown blend rule": (lambda d, f: d["blend"].update(rule="median"), "blend.rule"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_post_processing_is_refused_with_its_own_message(tmp_path, tiny_bundle, case) -> None:
    folder = _bundle(tmp_path / "m", tiny_bundle)
    data = json.loads((folder / "manifest.json").read_text())
    edit, message = BAD[case]
    edit(data, folder)
    if case != "table column that is no label":
        write_json(folder / "manifest.json", data)
    with pytest.raises(ManifestError, match=message):
        load_manifest(folder)


def test_detect_refuses_a_rank_blend_before_any_audio(tmp_path, tiny_bundle) -> None:
    folder = _bundle(tmp_path / "m", tiny_bundle)
    (tmp_path / "audio").mkdir()
    with pytest.raises(BirdInferError, match="needs every row of the run"):
        run_detect(tmp_path / "audio", folder, tmp_path / "det")


def test_schema_2_postprocess_loads_as_two_steps(tmp_path, tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    folder = tmp_path / "m"
    shutil.copytree(manifest.root, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["postprocess"] = {"smoothing": [0.2, 0.6, 0.2], "file_max_mix": 0.5}
    loaded = load_manifest(write_json(folder / "manifest.json", data).parent)
    assert [s.kind for s in loaded.postprocess.steps] == ["smooth", "file_max_mix"]
    again = load_manifest(folder)
    assert again.to_dict()["postprocess"] == loaded.postprocess.to_list()


# --- tune ------------------------------------------------------------------------------------------------


def test_tune_on_the_synthetic_corpus_reports_held_out_scores(tmp_path, capsys) -> None:
    """tune on six synthetic soundscapes with the shipped demo folds: it reports the held-out score tuned and
    untuned (no assertion on which is higher: tuning cannot promise it), and writes a manifest that runs."""
    from bird_infer.cli import main

    corpus = write_corpus(tmp_path / "corpus", CorpusSpec(soundscapes=6, soundscape_s=60), clips=False)
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    code = main(["tune", "--audio", str(corpus / "soundscapes"), "--truth", str(corpus / "truth.csv"),
                 "--models", str(models), "--steps", "smooth", "file_scale", "--workers", "2"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    print(text)
    assert "held-out mean: tuned" in text and "untuned" in text
    tuned = load_manifest(models / "manifest.tuned.json")
    assert {s.kind for s in tuned.postprocess.steps} <= {"smooth", "file_scale"}
    summary = run_predict(corpus / "soundscapes", models / "manifest.tuned.json", tmp_path / "t.csv")
    assert summary.n_rows == 6 * 12 and summary.n_failed == 0


def test_tune_grid_covers_the_steps_asked(tiny_bundle) -> None:
    manifest, _, _ = tiny_bundle
    grid = candidates(manifest, ["smooth", "file_scale"])
    assert len(grid) == 4 * 4
    assert any(isinstance(s, FileScale) for c in grid for s in c.steps)
    assert not any(isinstance(s, Prior) for c in grid for s in c.steps)
    with pytest.raises(BirdInferError, match="cannot tune"):
        candidates(manifest, ["sharpen"])
