"""A 2026-shaped ensemble, timed: what a BirdCLEF 2026 top solution runs, projected per edition.

    python -m benchmarks.latency --ensemble-2026 [--soundscapes 4] [--json out.json]

The bundle (234 labels, random weights: speed does not depend on the weights) is built here, with the real
exporter and ``bird-infer add-member``:

- ``b0``: five EfficientNet-B0 SED folds on 5-s log-mel windows (one export, five copies);
- ``sed10``: an EfficientNet-B0 SED on 10-s windows, frame-wise rows, shifts -1.25/0/+1.25 s weighted 1:2:2;
- ``perch``: a stand-in of Perch v2's size (EfficientNet-B3 on a 128-band learned front-end of the 5-s, 32 kHz
  waveform; a 1536-d ``embedding`` and 14,795 ``label`` logits), its logits mapped onto the bundle's labels;
- ``head1``, ``head2``: MLP heads (1536 -> 256 -> 234) on perch's embedding;
- perch's own steps: gaussian smoothing (sigma 1 row) and file-max scaling (``file_max^0.4``);
- file-level stages exported from PyTorch (``bird-infer add-stage``): ``probe``, an MLP on each row's embedding and
  logits with file context (the file's mean and max logits, the previous row) and an hour embedding, blended as a
  member; ``seq``, a bidirectional GRU over the file's blended rows with site and hour embeddings (the sequence
  head), its output the file's final rows.

It runs the real job on N one-minute 32 kHz soundscapes (2026's files), one worker per core, and reports the
steady cost per row, the start-up, each member's model time per row (one thread), the projection per edition on
this machine and on 4 cores against the limit, and what the deadline guard drops first with what each drop saves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LABELS = 234
PERCH_CLASSES = 14_795
SHIFTS = ((-1.25, 1.0), (0.0, 2.0), (1.25, 2.0))


def _waves(seconds: float, n: int = 4, sr: int = 32000) -> np.ndarray:
    """Check windows for the exporter: noise with tone sweeps (the weights are random: only shapes matter)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    return np.stack(
        [
            0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (1000 + 500 * k) * t * (1 + t))
            for k in range(n)
        ]
    ).astype(np.float32)


def _torch_models():
    import timm
    import torch
    from torch import nn

    class PerchSize(nn.Module):
        """Perch v2's interface and size: waveform (batch, 160000) -> embedding (batch, 1536), label logits."""

        def __init__(self) -> None:
            super().__init__()
            self.frontend = nn.Conv1d(1, 128, kernel_size=640, stride=320, padding=320)  # 500 frames x 128 bands
            self.backbone = timm.create_model("efficientnet_b3", pretrained=False, in_chans=1, num_classes=0)
            self.classifier = nn.Linear(1536, PERCH_CLASSES)

        def forward(self, x):
            bands = torch.log(self.frontend(x[:, None, :]).abs() + 1e-6)[:, None]  # (b, 1, 128, 501)
            emb = self.backbone(bands)
            return emb, self.classifier(emb)

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(1536, 256), nn.ReLU(), nn.Linear(256, LABELS), nn.Sigmoid())

        def forward(self, e):
            return self.net(e)

    class Probe(nn.Module):
        """Each row's embedding and logits, the previous row's logits, the file's mean and max logits, the hour."""

        def __init__(self) -> None:
            super().__init__()
            self.hours = nn.Embedding(25, 64)
            self.net = nn.Sequential(nn.Linear(1536 + 4 * LABELS + 64, 256), nn.ReLU(), nn.Linear(256, LABELS))

        def forward(self, emb, lg, hour):
            prev = torch.cat([lg[:, :1], lg[:, :-1]], dim=1)
            ctx = torch.cat([lg.mean(dim=1, keepdim=True), lg.amax(dim=1, keepdim=True)], dim=2).expand(
                -1, lg.shape[1], -1
            )
            h = self.hours(hour.clamp(min=0, max=24))[:, None].expand(-1, lg.shape[1], -1)
            return torch.sigmoid(self.net(torch.cat([emb, lg, prev, ctx, h], dim=2)))

    class Seq(nn.Module):
        """A bidirectional GRU over the file's rows with site and hour embeddings: logits (1, n, labels)."""

        def __init__(self) -> None:
            super().__init__()
            self.sites, self.hours = nn.Embedding(64, 16), nn.Embedding(25, 16)
            self.gru = nn.GRU(LABELS + 32, 128, batch_first=True, bidirectional=True)
            self.out = nn.Linear(256, LABELS)

        def forward(self, b, site, hour):
            n = b.shape[1]
            ctx = torch.cat([self.sites(site.clamp(min=0, max=63)), self.hours(hour.clamp(min=0, max=24))], dim=1)
            y, _ = self.gru(torch.cat([b, ctx[:, None].expand(-1, n, -1)], dim=2))
            return self.out(y)

    return PerchSize, Head, Probe, Seq


def _stage_onnx(model, examples: tuple, path: Path, inputs: list[str], output: str) -> Path:
    """A file-level stage exported with its row axis dynamic (axis 1 of every (1, n, ...) input and the output)."""
    import torch

    axes = {name: {1: "n"} for name, x in zip(inputs, examples, strict=True) if x.dim() == 3}
    axes[output] = {1: "n"}
    with torch.no_grad():
        torch.onnx.export(
            model.eval(), examples, str(path), input_names=inputs, output_names=[output], dynamic_axes=axes,
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return path


def _onnx(model, example, path: Path, inputs: list[str], outputs: list[str]) -> Path:
    import torch

    axes = {n: {0: "batch"} for n in [*inputs, *outputs]}
    with torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path


def build_bundle(folder: Path, audio: Path) -> Path:
    """The bundle described in the module docstring, in ``folder``."""
    import dataclasses

    import torch

    from bird_infer.contract.manifest import load_manifest
    from bird_infer.contract.schema import AudioConfig, SourceSpec
    from bird_infer.contract.stages import StageContext
    from bird_infer.contract.training_config import load_training_config
    from bird_infer.export import export_member
    from bird_infer.nn import build_model
    from bird_infer.tools.add_member import MemberRequest, add_member
    from bird_infer.tools.add_stage import StageRequest, add_stage

    cfg = load_training_config(ROOT / "configs" / "birdclef2023_b0.json")
    labels = [f"sp{k:03d}" for k in range(LABELS)]
    torch.manual_seed(0)
    b0 = build_model(cfg.model, cfg.frontend.n_mels, LABELS).eval()
    export_member([b0], labels, cfg.audio, cfg.frontend, folder, _waves(5.0), name="b0")
    data = json.loads((folder / "manifest.json").read_text())
    fold = data["members"][0]["folds"][0]
    data["members"][0]["folds"] = []
    for k in range(5):
        shutil.copy2(folder / fold["file"], folder / f"b0_fold{k}.onnx")
        data["members"][0]["folds"].append({**fold, "name": f"fold{k}", "file": f"b0_fold{k}.onnx"})
    (folder / fold["file"]).unlink()
    (folder / "manifest.json").write_text(json.dumps(data))
    ten = AudioConfig(32000, 10.0)
    export_member(
        [b0], labels, ten, cfg.frontend, folder, _waves(10.0), name="sed10", add_to=True, fold_names=["sed10_fold0"]
    )
    data = json.loads((folder / "manifest.json").read_text())
    sed10 = next(m for m in data["members"] if m["name"] == "sed10")
    sed10["ensemble"]["output"] = "framewise"
    sed10["shifts"] = [{"offset_s": o, "weight": w} for o, w in SHIFTS]
    (folder / "manifest.json").write_text(json.dumps(data))
    perch_cls, head_cls, probe_cls, seq_cls = _torch_models()
    tmp = folder.parent
    perch = _onnx(perch_cls(), torch.zeros(1, 160000), tmp / "perch.onnx", ["inputs"], ["embedding", "label"])
    names = labels + [f"other{k}" for k in range(PERCH_CLASSES - LABELS)]
    common = {"labels": tuple(names), "holds": "logits", "activation": "sigmoid", "weight": 0.5}
    add_member(
        folder, MemberRequest(onnx=perch, name="perch", output="label", embeddings=("embedding",), **common), [audio]
    )
    for k in (1, 2):
        torch.manual_seed(k)
        head = _onnx(head_cls(), torch.zeros(1, 1536), tmp / f"head{k}.onnx", ["embedding"], ["probs"])
        req = MemberRequest(onnx=head, name=f"head{k}", output="probs", source=SourceSpec("perch", "embedding"))
        add_member(folder, dataclasses.replace(req, labels=tuple(labels), weight=0.5), [audio])
    data = json.loads((folder / "manifest.json").read_text())
    perch_entry = next(m for m in data["members"] if m["name"] == "perch")
    perch_entry["steps"] = [{"step": "gaussian", "sigma": 1.0}, {"step": "file_scale", "gamma": 0.4}]
    (folder / "manifest.json").write_text(json.dumps(data))
    n = 12
    torch.manual_seed(3)
    probe = _stage_onnx(
        probe_cls(),
        (torch.zeros(1, n, 1536), torch.zeros(1, n, LABELS), torch.zeros(1, dtype=torch.long)),
        tmp / "probe.onnx",
        ["emb", "lg", "hour"],
        "probs",
    )
    seq = _stage_onnx(
        seq_cls(),
        (torch.zeros(1, n, LABELS), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)),
        tmp / "seq.onnx",
        ["b", "site", "hour"],
        "logits",
    )
    pattern = r"^(?P<site>[A-Za-z]+\d*)_\d{8}_(?P<hour>\d\d)"
    hours = {f"{h:02d}": h for h in range(24)}
    sites = {f"S{k:02d}": k for k in range(64)}
    add_stage(
        folder,
        StageRequest(
            probe, "probe", "probs", {"emb": "embedding:perch:embedding", "lg": "logits:perch", "hour": "context:hour"},
            weight=0.5, context=StageContext(pattern, {"hour": hours}),
        ),
    )  # fmt: skip
    add_stage(
        folder,
        StageRequest(
            seq, "seq", "logits", {"b": "blend", "site": "context:site", "hour": "context:hour"}, role="final",
            activation="sigmoid", context=StageContext(pattern, {"site": sites, "hour": hours}),
        ),
    )  # fmt: skip
    return load_manifest(folder).root


def stage_ms(models: Path, rows: int = 12) -> dict[str, float]:
    """The member steps and each file-level stage, per row, on a 1-min file's 12 generated rows (one thread)."""
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.run.stages import FileStages
    from bird_infer.tools.add_stage import generated_rows

    manifest = load_manifest(models)
    stages = FileStages(manifest)
    stack, extras = generated_rows(manifest, rows)
    valid = np.ones(rows, dtype=bool)
    name = Path("S03_20260601_060000.ogg")
    stages.members(stack, valid, name, extras)  # warm-up
    t0 = time.perf_counter()
    full, _ = stages.members(stack, valid, name, extras)
    members_s = time.perf_counter() - t0
    blended = np.nanmean(full, axis=0)
    t0 = time.perf_counter()
    stages.final(blended, valid, full, name, extras)
    final_s = time.perf_counter() - t0
    return {
        "steps_and_member_stages": round(members_s * 1000 / rows, 3),
        "final_stages": round(final_s * 1000 / rows, 3),
    }


def member_ms(models: Path, audio_file: Path, rows: int = 8) -> dict[str, float]:
    """Each member's model time per row (its folds, per shift: a window each), one thread, batch 1."""
    from bird_infer.audio.decode import RowReader
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.runtime.ensemble import BundleModel

    manifest = load_manifest(models)
    bundle = BundleModel(manifest)
    _first, windows = next(iter(RowReader(audio_file, bundle.specs, manifest.row_s, rows)))
    feats = bundle.features(windows)
    out = {}
    extras = {}
    for i, model in enumerate(bundle.members):
        m = model.member
        spec = bundle.member_specs[i][0] if m.source is None else None
        x = feats[(spec, m.frontend)] if m.source is None else extras[m.source.output]
        got: dict = {}
        model.fold_outputs(x[:1], extras=got)
        t0 = time.perf_counter()
        model.fold_outputs(x, extras=got)
        per_window = (time.perf_counter() - t0) * 1000 / len(x)
        extras.update(got)
        windows_per_row = len(m.shifts) if m.source is None else 1
        out[m.name] = round(per_window * windows_per_row, 2)
    return out


def run(args) -> dict:
    from benchmarks.soundscapes import write_soundscapes
    from bird_infer.contract.manifest import load_manifest
    from bird_infer.contract.schema import AudioConfig
    from bird_infer.jobs.predict import run_predict
    from bird_infer.kaggle.editions import EDITIONS
    from bird_infer.run.options import RunOptions, limit_native_threads
    from bird_infer.runtime.machine import available_cores, cpu_info

    cores = available_cores()
    workers = args.workers or cores
    limit_native_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        audio = tmp / "audio"
        paths = write_soundscapes(audio, max(1, args.soundscapes), AudioConfig(32000, 5.0), seconds=60)
        t0 = time.perf_counter()
        models = build_bundle(tmp / "bundle" / "models", audio)
        build_s = time.perf_counter() - t0
        manifest = load_manifest(models)
        summary = run_predict(audio, models, tmp / "sub.csv", options=RunOptions(workers=workers))
        rows = summary.n_chunks
        steady = (summary.wall_s - summary.startup_s - summary.write_s) / rows
        per_member = member_ms(models, paths[0])
        per_stage = stage_ms(models)
    units = manifest.unit_order()
    full = manifest.runs()
    drops = []
    for k in range(len(units), len(manifest.members), -1):
        kind, i, j = units[k - 1]
        m = manifest.members[i]
        saved = per_member[m.name] / (len(m.shifts) if kind == "shift" else len(m.folds))
        what = f"shift {m.shifts[j].offset_s:+g} s" if kind == "shift" else m.folds[j].name
        drops.append({"drop": f"{m.name} {what}", "ms_per_row_saved_one_thread": round(saved, 2)})
    editions = []
    for e in EDITIONS:
        here = (summary.startup_s + e.rows * steady) / 60
        four = (summary.startup_s + e.rows * steady * workers / 4) / 60
        editions.append(
            {
                "edition": e.slug,
                "rows": e.rows,
                "limit_min": e.limit_min,
                "job_limit_min": e.job_limit_min,
                "projected_min_this_machine": round(here, 1),
                "projected_min_4_cores": round(four, 1),
                "fits_4_cores": four <= e.job_limit_min,
            }
        )
    return {
        "machine": {"cpu": cpu_info().line(), "workers": workers},
        "bundle": {
            "members": [
                {
                    "name": m.name,
                    "folds": len(m.folds),
                    "shifts": len(m.shifts),
                    "window_s": m.audio.clip_s,
                    "output": m.ensemble.output,
                    "source": m.source.member if m.source else None,
                }
                for m in manifest.members
            ],
            "model_runs_per_row": full,
            "build_s": round(build_s, 1),
        },
        "run": {
            "soundscapes": len(paths),
            "rows": rows,
            "wall_s": round(summary.wall_s, 2),
            "startup_s": round(summary.startup_s, 2),
            "steady_ms_per_row": round(steady * 1000, 1),
            "precision": summary.precision,
        },
        "member_ms_per_row_one_thread": per_member,
        "stage_ms_per_row_one_thread": per_stage,
        "editions": editions,
        "guard_drops_first": drops[:6],
    }


def print_table(result: dict) -> None:
    r = result["run"]
    print(f"{result['machine']['cpu']}")
    print(
        f"2026-shaped ensemble: {result['bundle']['model_runs_per_row']} model runs per row; "
        f"{r['rows']} rows in {r['wall_s']} s ({result['machine']['workers']} workers), start-up "
        f"{r['startup_s']} s, steady {r['steady_ms_per_row']} ms per row"
    )
    print(
        "member ms per row (one thread): "
        + ", ".join(f"{k} {v}" for k, v in result["member_ms_per_row_one_thread"].items())
    )
    print(
        "file-level ms per row (one thread, counted in the steady cost): "
        + ", ".join(f"{k} {v}" for k, v in result["stage_ms_per_row_one_thread"].items())
    )
    print("edition         rows    limit  here (min)  4 cores (min)  fits on 4 cores")
    for e in result["editions"]:
        print(
            f"{e['edition']:<14} {e['rows']:>6} {e['limit_min']:>7g} {e['projected_min_this_machine']:>11} "
            f"{e['projected_min_4_cores']:>14}  {'yes' if e['fits_4_cores'] else 'NO'}"
        )
    print(
        "the guard drops first: "
        + "; ".join(f"{d['drop']} (-{d['ms_per_row_saved_one_thread']} ms/row)" for d in result["guard_drops_first"])
    )
