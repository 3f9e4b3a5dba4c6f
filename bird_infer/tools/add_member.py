"""``bird-infer add-member``: any ONNX model joins a bundle as a member, with no exporter involved.

The user states what the manifest needs: the input (the waveform, or a log-mel with every front-end field), the
sample rate and window, the output to use and what it holds (probabilities, or logits with ``sigmoid`` or
``softmax``), whether it is frame-wise, the model's labels and how they map onto the bundle's, the weight, the
resampler, test-time shifts, and the outputs other members may read (an embedding). A **head** takes another
member's output instead of audio (``--source perch:embedding``).

Order of work: everything that can be checked without audio first (the ONNX file's inputs and outputs, the label
map, the manifest as a whole: uncovered labels, a window shorter than a row, a missing source or a cycle), then
the model is run on real audio (``--check-audio``): outputs must have the declared shapes, be finite, respond to
the audio (vary across rows) and, when declared as probabilities, lie in [0, 1]. Only then is the file copied into
the bundle (with its sha256) and the manifest written.

Labels: the model's labels (``--labels``, one per line in output order) map onto the bundle's by a label map
(``--label-map``, CSV ``member_label,bundle_label``; model labels it does not name are ignored), else by name, else
through the eBird table the package ships (BirdNET-Analyzer's: eBird codes, ``Scientific_Common`` labels and
scientific names all resolve). Model labels with no bundle counterpart are ignored; several onto one bundle label:
the first is kept, or with ``label_reduce`` (max, mean, any) all of them, reduced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import RowReader, WindowSpec
from bird_infer.audio.files import find_audio_files
from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.birdnet import ebird_map
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AddMemberError, AudioDecodeError, BirdInferError
from bird_infer.contract.manifest import load_manifest, manifest_from_dict, write_manifest
from bird_infer.contract.schema import (
    ACTIVATIONS,
    AudioConfig,
    EnsembleConfig,
    FrontendConfig,
    Member,
    Shift,
    SourceSpec,
    TensorSpec,
    index_columns,
)
from bird_infer.contract.tables import read_rows, refuse_duplicates
from bird_infer.contract.text import describe_exception
from bird_infer.runtime.ensemble import MemberModel
from bird_infer.tools.bundle_folder import bundle_lock, open_bundle
from bird_infer.tools.onnx_files import model_bytes, onnx_interface

log = logging.getLogger(__name__)

CHECK_ROWS = 8
"""Rows of real audio the model is checked on."""


@dataclass(frozen=True)
class MemberRequest:
    """What the user states about the model (see the module docstring)."""

    onnx: Path
    name: str
    output: str
    holds: str = "probabilities"
    """``probabilities`` or ``logits``."""
    activation: str = "none"
    """For logits: ``sigmoid`` or ``softmax``."""
    sample_rate: int = 32000
    window_s: float = 5.0
    frontend: FrontendConfig | None = None
    """None: the model takes the waveform."""
    input_name: str | None = None
    labels: tuple[str, ...] | None = None
    """The model's output labels in order; None: the bundle's labels, in the bundle's order."""
    label_map: dict[str, str] | None = None
    framewise: bool = False
    time_axis: int = 2
    frame_reduce: str = "mean"
    embeddings: tuple[str, ...] = ()
    source: SourceSpec | None = None
    weight: float = 1.0
    resampler: str = "soxr_hq"
    shifts: tuple[Shift, ...] = (Shift(),)
    label_reduce: str = "first"
    """Several model labels onto one bundle label: ``first`` (the first is kept), ``max``, ``mean`` or ``any``."""


@dataclass(frozen=True)
class AddMemberResult:
    manifest: Manifest
    member: Member
    mapped: int
    """Model labels that became member labels."""
    ignored: int
    """Model labels with no bundle counterpart."""
    output_range: tuple[float, float]
    """min and max of the chosen output on the check rows (before the activation)."""
    spread: float
    """Largest range over the check rows of any member label's probability (how much it responds)."""
    ignored_labels: tuple[str, ...] = ()
    """Those labels, in the model's order."""
    uncovered: tuple[str, ...] = ()
    """Bundle labels no member predicts yet (a bundle being built; it runs once there are none)."""


def read_label_map(path: str | Path, model_labels: Sequence[str], bundle_labels: Sequence[str]) -> dict[str, str]:
    """A CSV of ``member_label,bundle_label`` rows (a header row is allowed); every name must exist."""
    numbered = read_rows(path, "--label-map")
    rows = [r for _, r in numbered]
    if rows and rows[0][0] not in model_labels and len(rows[0]) == 2 and rows[0][1] not in bundle_labels:
        numbered = numbered[1:]  # a header
    bad_rows = [(n, r) for n, r in numbered if len(r) != 2]
    if bad_rows:
        n, r = bad_rows[0]
        raise AddMemberError(f"label map {path}, line {n}: every row needs member_label,bundle_label; got {r}")
    refuse_duplicates([(n, r[0]) for n, r in numbered], f"label map {path} (a model label maps once)")
    return check_label_map({a: b for _, (a, b) in numbered}, model_labels, bundle_labels, str(path))


def check_label_map(
    mapping: dict[str, str], model_labels: Sequence[str], bundle_labels: Sequence[str], path: str = "the label map"
) -> dict[str, str]:
    """``mapping`` (member label -> bundle label) when every name in it exists; else AddMemberError."""
    unknown_model = [a for a in mapping if a not in set(model_labels)]
    unknown_bundle = [b for b in mapping.values() if b not in set(bundle_labels)]
    if unknown_model:
        raise AddMemberError(f"label map {path} names labels the model does not have: {unknown_model[:10]}")
    if unknown_bundle:
        raise AddMemberError(f"label map {path} names labels the bundle does not have: {unknown_bundle[:10]}")
    return mapping


def map_labels(
    model_labels: Sequence[str], bundle_labels: Sequence[str], label_map: dict[str, str] | None, many: bool = False
) -> tuple[list[str], list]:
    """The member's labels (bundle labels) and, for each, the model output column (see the module docstring); with
    ``many``, every column that maps onto it (a list where there are several)."""
    bundle = set(bundle_labels)
    if label_map is not None:
        target = {a: label_map[a] for a in model_labels if a in label_map}
    else:
        codes = ebird_map()
        scientific = {k.partition("_")[0]: v for k, v in codes.items() if "_" in k}
        target = {}
        for a in model_labels:
            for candidate in (a, codes.get(a), scientific.get(a)):
                if candidate in bundle:
                    target[a] = candidate
                    break
    labels: list[str] = []
    columns: dict[str, list[int]] = {}
    for k, a in enumerate(model_labels):
        b = target.get(a)
        if b is None:
            continue
        if b not in columns:
            labels.append(b)
            columns[b] = []
        columns[b].append(k)
    if not many:  # the first of several onto one label is kept
        return labels, [columns[b][0] for b in labels]
    return labels, [columns[b][0] if len(columns[b]) == 1 else columns[b] for b in labels]


def _spec(name: str, dims: tuple) -> TensorSpec:
    """A graph tensor as the manifest declares it: its sizes, or the graph's names for the dynamic ones."""
    return TensorSpec(name, tuple(dims))


def build_member(req: MemberRequest, bundle: Manifest) -> tuple[dict, int]:
    """The member the request describes, as the manifest writes it (its fold file named ``<name>.onnx`` in the
    bundle), and how many model labels were ignored. Raises AddMemberError naming what to fix."""
    if req.holds not in ("probabilities", "logits"):
        raise AddMemberError(f"--holds is {req.holds!r}: say probabilities or logits")
    if req.holds == "logits" and req.activation not in ("sigmoid", "softmax"):
        raise AddMemberError("--holds logits needs --activation sigmoid or softmax")
    if req.holds == "probabilities" and req.activation != "none":
        raise AddMemberError(f"--activation {req.activation} applies to logits: add --holds logits")
    if req.activation not in ACTIVATIONS:
        raise AddMemberError(f"--activation must be one of {ACTIVATIONS}")
    if not req.onnx.is_file():
        raise AddMemberError(f"--onnx {req.onnx} does not exist")
    inputs, outputs = onnx_interface(req.onnx)
    if req.output not in outputs:
        raise AddMemberError(f"{req.onnx.name} has no output named {req.output!r}; its outputs: {sorted(outputs)}")
    for e in req.embeddings:
        if e not in outputs:
            raise AddMemberError(
                f"{req.onnx.name} has no output named {e!r} (--embedding); its outputs: {sorted(outputs)}"
            )
    input_name = req.input_name or (next(iter(inputs)) if len(inputs) == 1 else None)
    if input_name is None or input_name not in inputs:
        raise AddMemberError(f"name the model's input with --input-name; its inputs: {sorted(inputs)}")
    out_dims = outputs[req.output]
    rank = 3 if req.framewise else 2
    if len(out_dims) != rank:
        what = "(batch, labels, frames) or (batch, frames, labels)" if req.framewise else "(batch, labels)"
        raise AddMemberError(f"output {req.output!r} has shape {list(out_dims)}; a {'frame-wise ' * req.framewise}"
                             f"output must be {what}")  # fmt: skip
    width = out_dims[1] if not req.framewise else out_dims[3 - req.time_axis]
    model_labels = list(req.labels) if req.labels is not None else list(bundle.labels)
    if isinstance(width, int) and width != len(model_labels):
        raise AddMemberError(
            f"output {req.output!r} has {width} columns but {len(model_labels)} labels were given; give the model's "
            "labels in output order with --labels"
        )
    if req.label_map is not None:
        check_label_map(req.label_map, model_labels, bundle.labels)
    labels, index = map_labels(model_labels, bundle.labels, req.label_map, req.label_reduce != "first")
    if not labels and not req.embeddings:
        raise AddMemberError(
            f"none of the model's {len(model_labels)} labels maps onto the bundle's (e.g. {model_labels[:3]}); give "
            "a --label-map"
        )
    identity = labels == list(bundle.labels) and index == list(range(len(model_labels)))
    clip = {"name": req.output, "shape": list(_spec(req.output, out_dims).shape)}
    fold = {
        "name": req.name,
        "file": f"{req.name}.onnx",
        "sha256": hashlib.sha256(model_bytes(req.onnx)).hexdigest(),
        "input": {"name": input_name, "shape": list(_spec(input_name, inputs[input_name]).shape)},
        "clipwise": clip,
        "segmentwise": clip if req.framewise else None,
        "embeddings": [{"name": e, "shape": list(_spec(e, outputs[e]).shape)} for e in req.embeddings],
    }
    ensemble = EnsembleConfig(
        output="framewise" if req.framewise else "clipwise",
        activation=req.activation,
        frame_reduce=req.frame_reduce,
        time_axis=req.time_axis,
    )
    d: dict = {
        "name": req.name,
        "weight": req.weight,
        "labels": labels,
        "folds": [fold],
        "ensemble": dataclasses.asdict(ensemble),
    }
    if not identity:
        d["output_index"] = index
    if req.label_reduce != "first":
        d["label_reduce"] = req.label_reduce
    if req.source is not None:
        d["source"] = dataclasses.asdict(req.source)
    else:
        d["audio"] = dataclasses.asdict(AudioConfig(req.sample_rate, req.window_s, req.resampler))
        d["frontend"] = (
            {"kind": "waveform"} if req.frontend is None else {"kind": "logmel", **dataclasses.asdict(req.frontend)}
        )
    if req.shifts != (Shift(),):
        d["shifts"] = [dataclasses.asdict(s) for s in req.shifts]
    return d, len(model_labels) - len(labels)


def _check_rows(member: Member, manifest: Manifest, audio: Sequence[str | Path]) -> dict:
    """Windows of real audio for ``member`` (a head: for its source), the first file that decodes."""
    target = member if member.source is None else manifest.member(member.source.member)
    spec = WindowSpec.of(target.audio)
    files = [f for p in audio for f in (find_audio_files(p) if Path(p).is_dir() else [Path(p)])]
    for f in files:
        try:
            _first, windows = next(iter(RowReader(f, [spec], manifest.row_s, CHECK_ROWS)))
        except (AudioDecodeError, StopIteration):
            continue
        return {"windows": windows[spec], "file": f, "target": target}
    raise AddMemberError(f"no readable audio in --check-audio {[str(a) for a in audio]}; give recordings to check on")


def check_on_audio(
    member: Member, manifest: Manifest, audio: Sequence[str | Path], n_model_labels: int | None = None
) -> tuple[tuple[float, float], float]:
    """Run the member once on real audio: shapes, finite, responsive, and probabilities in [0, 1] when declared so.
    Returns (the raw output's min and max, the largest spread of a member label)."""
    got = _check_rows(member, manifest, audio)
    target: Member = got["target"]
    x = got["windows"]
    if target.frontend is not None:
        x = LogMelFrontend(target.frontend, target.audio.sample_rate)(x)
    if member.source is not None:
        extras: dict[str, np.ndarray] = {}
        MemberModel(target, manifest.root, extras=[member.source.output]).fold_outputs(x, extras=extras)
        x = extras[member.source.output]
    raw_member = dataclasses.replace(
        member, ensemble=dataclasses.replace(member.ensemble, activation="none"), output_index=None, labels=()
    )
    raw = MemberModel(raw_member, manifest.root).sessions[0](member.folds[0].input.name, x.astype(np.float32))[0]
    _check_computed_shape(member, raw.shape, n_model_labels)
    if not np.isfinite(raw).all():
        raise AddMemberError(f"member {member.name!r}: the model gives NaN or inf on {got['file'].name}")
    lo, hi = float(raw.min()), float(raw.max())
    if member.ensemble.activation == "none" and (lo < 0 or hi > 1):
        raise AddMemberError(
            f"member {member.name!r}: output {member.folds[0].clipwise.name!r} was declared to hold probabilities but "
            f"lies in [{lo:.3g}, {hi:.3g}] on {got['file'].name}: these are logits; add --holds logits --activation "
            "sigmoid (or softmax)"
        )
    probs = MemberModel(member, manifest.root).fold_outputs(x)[0]
    flat = probs.reshape(probs.shape[0], -1)
    spread = float((flat.max(axis=0) - flat.min(axis=0)).max()) if flat.size else 0.0
    if member.labels and spread <= 1e-6:
        raise AddMemberError(
            f"member {member.name!r}: its outputs do not change across {len(x)} rows of {got['file'].name}: is the "
            "input right (--input, --sample-rate, --window-s, the front-end)?"
        )
    return (lo, hi), spread


def _check_computed_shape(member: Member, computed: tuple[int, ...], n_model_labels: int | None = None) -> None:
    """The output the member uses, as the model computed it on real audio, against what the file declares and the
    labels given: a mismatch is refused with both numbers (shapes come from what the model computes)."""
    fold = member.folds[0]
    frames = member.ensemble.output in ("framewise", "segment_max") and fold.segmentwise is not None
    spec = fold.segmentwise if frames else fold.clipwise  # the output the session runs first
    declared = tuple(spec.shape)
    wrong = len(declared) != len(computed) or any(
        isinstance(d, int) and d != c for d, c in zip(declared[1:], computed[1:], strict=False)
    )
    if wrong:
        raise AddMemberError(
            f"member {member.name!r}: output {spec.name!r} is declared {list(declared)} in the ONNX file but the "
            f"model computes {list(computed)} on the check audio; fix the export (the declared shape must be true)"
        )
    width = computed[3 - member.ensemble.time_axis] if len(computed) == 3 else computed[-1]
    problem = member.width_problem(width)
    if problem is None and n_model_labels is not None and width != n_model_labels:
        problem = f"{width} columns but {n_model_labels} model labels were given"
    if problem is not None:
        raise AddMemberError(
            f"member {member.name!r}: output {spec.name!r} computes {list(computed)} on the check audio: {problem}; "
            "give the model's labels in output order with --labels"
        )


def add_member(bundle: str | Path, req: MemberRequest, check_audio: Sequence[str | Path]) -> AddMemberResult:
    """Add the member ``req`` describes to the bundle in ``bundle`` (see the module docstring). The bundle may be
    one being built (:func:`new_bundle`): labels no member predicts yet are allowed until it is run or packed."""
    open_bundle(bundle)  # a folder without a manifest is told how to start one, before any lock file is made
    with bundle_lock(bundle):
        return _add_member(bundle, req, check_audio)


def _add_member(bundle: str | Path, req: MemberRequest, check_audio: Sequence[str | Path]) -> AddMemberResult:
    manifest = open_bundle(bundle)
    if any(m.name == req.name for m in manifest.members):
        raise AddMemberError(f"the bundle already has a member named {req.name!r}; choose another --name")
    target = manifest.root / f"{req.name}.onnx"
    if target.exists():
        raise AddMemberError(f"{target} exists; choose another --name")
    d, ignored = build_member(req, manifest)
    data = json.loads(json.dumps(manifest.to_dict()))  # as the file holds it (lists, not tuples)
    data["members"].append(d)
    new = manifest_from_dict(data, root=manifest.root, building=True)  # every static check, before any audio
    member = new.member(req.name)
    with tempfile.TemporaryDirectory() as tmp:  # the bundle as it will be, nothing written into it yet
        staged = Path(tmp)
        for p in manifest.root.iterdir():
            if p.is_file():
                (staged / p.name).symlink_to(p.resolve())
        (staged / target.name).write_bytes(model_bytes(req.onnx))
        try:
            n_model = len(req.labels) if req.labels is not None else len(manifest.labels)
            output_range, spread = check_on_audio(member, dataclasses.replace(new, root=staged), check_audio, n_model)
        except BirdInferError:
            raise
        except Exception as e:  # ONNX Runtime's own errors (a graph it cannot load or run): named, with the file
            raise AddMemberError(
                f"{req.onnx.name} cannot be run by ONNX Runtime on the check audio: {describe_exception(e)}"
            ) from e
    target.write_bytes(model_bytes(req.onnx))
    try:
        write_manifest(new, manifest.root)
    except BaseException:
        target.unlink(missing_ok=True)  # the bundle as it was: no model file without its manifest entry
        raise
    model_labels = list(req.labels) if req.labels is not None else list(manifest.labels)
    kept = {model_labels[k] for k in index_columns(member.output_index or tuple(range(len(member.labels))))}
    covered = {x for m in new.members for x in m.labels}
    return AddMemberResult(
        load_manifest(manifest.root, building=True),
        member,
        len(member.labels),
        ignored,
        output_range,
        spread,
        tuple(x for x in model_labels if x not in kept),
        tuple(x for x in new.labels if x not in covered),
    )
