"""``bird-infer add-stage``: a file-level ONNX stage joins a bundle (:mod:`bird_infer.contract.stages`).

The user names the stage's graph inputs and what each gets (``--input emb=embedding:perch:embedding``), its output
and labels, its role (``member``: blended with a weight; ``final``: replaces the blend on its labels), and, for
``context:GROUP`` inputs, a pattern whose named groups are looked up in tables of ids. Before anything is written
the manifest is checked as a whole, the graph's inputs must be exactly those named, and the stage is run on
generated inputs at ``n = 1`` and ``n = 2000`` rows (its row axis must be dynamic): its output must be
``(1, n, len(labels))`` and finite. Only then are the file (with its sha256) and the manifest written.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AddMemberError
from bird_infer.contract.files import check_stage_file, sha256_file
from bird_infer.contract.manifest import manifest_from_dict, write_manifest
from bird_infer.contract.stages import StageContext, stages_to_list
from bird_infer.contract.text import describe_exception
from bird_infer.run.stages import FileStages
from bird_infer.tools.bundle_folder import bundle_lock, open_bundle

CHECK_ROWS = (1, 2000)
"""Row counts a stage is run with before it is added: a one-row file and a long one (a 2.8-hour file at 5 s)."""


@dataclass(frozen=True)
class StageRequest:
    onnx: Path
    name: str
    output: str
    inputs: dict[str, str]
    """Graph input -> source (``member:NAME``, ``logits:NAME``, ``embedding:MEMBER:OUTPUT``, ``blend``,
    ``context:GROUP``, ``n``)."""
    labels: tuple[str, ...] | None = None
    """The output's labels in order; None: the bundle's."""
    role: str = "member"
    weight: float = 1.0
    activation: str = "none"
    context: StageContext | None = None


def read_id_table(path: str | Path) -> dict[str, int]:
    """A CSV of ``value,id`` rows (a header row allowed): a context group's table."""
    try:
        rows = [r for r in csv.reader(Path(path).read_text(encoding="utf-8-sig").splitlines()) if r]
    except (OSError, UnicodeDecodeError) as e:
        raise AddMemberError(f"{path} cannot be read as a UTF-8 CSV of value,id rows ({describe_exception(e)})") from e
    if rows and len(rows[0]) == 2 and not rows[0][1].strip().lstrip("-").isdigit():
        rows = rows[1:]
    out: dict[str, int] = {}
    for n, r in enumerate(rows, start=1):
        if len(r) != 2 or not r[1].strip().lstrip("-").isdigit():
            raise AddMemberError(f"{path}, line {n}: every row needs value,id with a whole-number id; got {r}")
        if r[0].strip() in out:
            raise AddMemberError(f"{path}, line {n}: the value {r[0].strip()!r} is listed twice")
        out[r[0].strip()] = int(r[1])
    return out


def _stage_dict(req: StageRequest, bundle: Manifest) -> dict:
    labels = list(req.labels) if req.labels is not None else list(bundle.labels)
    d = {
        "name": req.name,
        "file": f"{req.name}.onnx",
        "sha256": sha256_file(req.onnx),
        "inputs": dict(req.inputs),
        "output": req.output,
        "labels": labels,
        "role": req.role,
        "weight": req.weight,
        "activation": req.activation,
    }
    if req.context is not None:
        d["context"] = {"pattern": req.context.pattern, "ids": req.context.ids, "unknown": req.context.unknown}
    return d


def generated_rows(manifest: Manifest, n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A stack of member rows (probabilities in (0, 1)) and every declared embedding, for ``n`` rows."""
    rng = np.random.default_rng(seed)
    stack = np.full((len(manifest.members), n, len(manifest.labels)), np.nan, np.float32)
    position = {x: j for j, x in enumerate(manifest.labels)}
    for i, m in enumerate(manifest.members):
        stack[i][:, [position[x] for x in m.labels]] = rng.uniform(0.01, 0.99, (n, len(m.labels)))
    extras = {}
    for m in manifest.members:
        if m.source is None:
            for e in m.folds[0].embeddings:
                dim = e.shape[-1]
                if not isinstance(dim, int):
                    raise AddMemberError(f"member {m.name}: embedding {e.name!r} declares no width; re-add the member")
                extras[f"{m.name}:{e.name}"] = rng.normal(0, 1, (n, dim)).astype(np.float32)
    return stack, extras


def check_stage(manifest: Manifest, name: str) -> None:
    """Run the bundle's stages up to and including ``name`` on generated rows at each of :data:`CHECK_ROWS`."""
    stages = FileStages(manifest)
    stage = next(s for s in manifest.stages if s.name == name)
    for n in CHECK_ROWS:
        stack, extras = generated_rows(manifest, n)
        valid = np.ones(n, dtype=bool)
        try:
            full, notes = stages.members(stack, valid, Path("check_00h.wav"), extras)
            if stage.role == "final":
                blended = np.nanmean(full, axis=0)
                out, notes2 = stages.final(blended, valid, full, Path("check_00h.wav"), extras)
                notes += notes2
                got = out[:, [manifest.labels.index(x) for x in stage.labels]]
            else:
                got = full[len(manifest.members) + [s.name for s in manifest.member_stages].index(name)]
                got = got[:, [manifest.labels.index(x) for x in stage.labels]]
        except Exception as e:  # ONNX Runtime raises its own types: any failure is the stage's, named
            raise AddMemberError(
                f"stage {name!r} fails on {n} generated row(s): {describe_exception(e)} (is its row axis dynamic, "
                "and does each input get the source it expects?)"
            ) from e
        bad = [x for x in notes if x.startswith(f"stage {name}:") and x.endswith("no vote")]
        if bad or not np.isfinite(got).all():
            raise AddMemberError(f"stage {name!r} on {n} generated row(s): {bad[0] if bad else 'NaN or inf'}")


def add_stage(bundle: str | Path, req: StageRequest) -> Manifest:
    """Add the stage ``req`` describes to the bundle in ``bundle`` (see the module docstring)."""
    open_bundle(bundle)
    with bundle_lock(bundle):
        return _add_stage(bundle, req)


def _add_stage(bundle: str | Path, req: StageRequest) -> Manifest:
    manifest = open_bundle(bundle)
    if not req.onnx.is_file():
        raise AddMemberError(f"--onnx {req.onnx} does not exist")
    target = manifest.root / f"{req.name}.onnx"
    if target.exists():
        raise AddMemberError(f"{target} exists; choose another --name")
    data = json.loads(json.dumps(manifest.to_dict()))
    data["stages"] = [*stages_to_list(manifest.stages), _stage_dict(req, manifest)]
    new = manifest_from_dict(data, root=manifest.root, building=True)  # every static check, before any run
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for p in manifest.root.iterdir():
            if p.is_file():
                (staged / p.name).symlink_to(p.resolve())
        shutil.copy2(req.onnx, staged / target.name)
        at = dataclasses.replace(new, root=staged)
        check_stage_file(at, next(s for s in at.stages if s.name == req.name))
        check_stage(at, req.name)
    shutil.copy2(req.onnx, target)
    try:
        write_manifest(new, manifest.root)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return open_bundle(manifest.root)
