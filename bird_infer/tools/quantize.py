"""``bird-infer quantize``: an int8 model beside each fold, by OpenVINO's post-training quantization (NNCF).

For each member, real audio is cut into rows and turned into that member's model inputs (its own front-end, or
the waveform windows); the first ``calibration_chunks`` calibrate NNCF (activation ranges; per-channel
weights), and ``judge_chunks`` other rows, never used for calibration, measure how far each int8 fold lands
from the fp32 fold (ONNX Runtime). The int8 model is compiled for the static input shape ``[1, *input]`` and
saved as OpenVINO IR (``<fold>.int8.xml`` + ``.bin``) beside the fp32 file; the manifest records both files'
sha256 (``folds[].int8``). At run time it is used only behind the accuracy guard
(:mod:`bird_infer.runtime.precision`), on the run's own audio.

The ``[quantize]`` extra: openvino and nncf. Never imported by inference.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bird_infer.audio.decode import RowReader, WindowSpec
from bird_infer.audio.files import find_audio_files
from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.bundle import Manifest
from bird_infer.contract.errors import AudioDecodeError, BirdInferError
from bird_infer.contract.extras import import_extra
from bird_infer.contract.files import sha256_file
from bird_infer.contract.manifest import load_manifest, write_manifest
from bird_infer.contract.schema import Member, QuantizedSpec
from bird_infer.runtime.sessions import make_session, openvino_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoldQuantized:
    """One fold's int8 model and how far it lands from fp32 on the judge rows."""

    member: str
    fold: str
    xml: Path
    max_delta: float
    """max |p_int8 - p_fp32| of this fold alone over the judge rows (clip-wise or segment-max output)."""
    mean_delta: float


def member_inputs(member: Member, paths: Sequence[Path], row_s: float, max_rows: int) -> np.ndarray:
    """Up to ``max_rows`` model inputs (rows, *input shape) float32 from ``paths``, taken in turn from each file
    (a few rows per file, so that many recordings are seen)."""
    spec = WindowSpec.of(member.audio)
    frontend = None if member.frontend is None else LogMelFrontend(member.frontend, member.audio.sample_rate)
    per_file = max(1, -(-max_rows // max(1, len(paths))))
    rows: list[np.ndarray] = []
    for p in paths:
        try:
            taken = 0
            for _first, windows in RowReader(p, [spec], row_s, block_rows=per_file):
                block = windows[spec]
                rows.extend(block if frontend is None else frontend(block))
                taken += len(block)
                if taken >= per_file:
                    break
        except AudioDecodeError as e:
            log.warning("calibration audio skipped: %s", e)
        if len(rows) >= max_rows:
            break
    if not rows:
        raise BirdInferError("no readable audio for calibration; give --calibration files or folders of recordings")
    return np.asarray(rows[:max_rows], dtype=np.float32)


def _fold_output(member: Member, fold) -> str:
    return fold.segmentwise.name if member.ensemble.output == "segment_max" else fold.clipwise.name


def _max_time(y: np.ndarray) -> np.ndarray:
    """A segment-wise output (batch, labels, segments) -> its max over time; clip-wise unchanged."""
    return y.max(axis=2) if y.ndim == 3 else y


def quantize_bundle(
    models: str | Path,
    audio: Sequence[str | Path],
    calibration_chunks: int = 64,
    judge_chunks: int = 32,
    seed: int = 0,
) -> tuple[Manifest, list[FoldQuantized]]:
    """Quantize every fold of the bundle in ``models`` (see the module docstring) and rewrite its manifest.

    Raises BirdInferError when nncf or openvino is missing or no calibration audio reads."""
    nncf = import_extra("nncf", "quantize")
    ov = import_extra("openvino", "quantize")
    manifest = load_manifest(models)
    paths: list[Path] = []
    for a in audio:
        paths.extend(find_audio_files(a) if Path(a).is_dir() else [Path(a)])
    rng = np.random.default_rng(seed)
    core = ov.Core()
    results: list[FoldQuantized] = []
    members = []
    for member in manifest.members:
        inputs = member_inputs(member, paths, manifest.row_s, calibration_chunks + judge_chunks)
        inputs = inputs[rng.permutation(len(inputs))]
        if len(inputs) < 2:
            raise BirdInferError(f"member {member.name}: too little calibration audio ({len(inputs)} rows)")
        n_judge = min(judge_chunks, len(inputs) // 3 or 1)
        judge, calib = inputs[:n_judge], inputs[n_judge:]
        folds = []
        for fold in member.folds:
            src = manifest.fold_path(fold)
            model = core.read_model(str(src))
            model.reshape({fold.input.name: [1, *member.input_shape]})
            dataset = nncf.Dataset(list(calib), lambda x, name=fold.input.name: {name: x[None]})
            quantized = nncf.quantize(model, dataset, subset_size=len(calib), target_device=nncf.TargetDevice.CPU)
            xml = src.with_name(f"{src.stem}.int8.xml")
            ov.save_model(quantized, str(xml), compress_to_fp16=False)
            compiled = core.compile_model(str(xml), "CPU", openvino_config(threads=1))
            port = compiled.output(_fold_output(member, fold))
            session = make_session(str(src))
            name_out = _fold_output(member, fold)
            name_in = fold.input.name
            got = np.concatenate([_max_time(compiled({name_in: j[None]})[port]) for j in judge])
            ref = np.concatenate([_max_time(session.run([name_out], {name_in: j[None]})[0]) for j in judge])
            delta = np.abs(got - ref)
            results.append(FoldQuantized(member.name, fold.name, xml, float(delta.max()), float(delta.mean())))
            spec = QuantizedSpec(
                file=xml.name,
                sha256=sha256_file(xml),
                weights=xml.with_suffix(".bin").name,
                weights_sha256=sha256_file(xml.with_suffix(".bin")),
                calibration=f"NNCF {nncf.__version__}, {len(calib)} rows from {len(paths)} file(s), static [1, "
                f"{', '.join(str(d) for d in member.input_shape)}]",
            )
            folds.append(dataclasses.replace(fold, int8=spec))
            log.info(
                "%s/%s: int8 max |p - p_fp32| = %.4f on %d judge rows", member.name, fold.name, delta.max(), len(judge)
            )
        members.append(dataclasses.replace(member, folds=tuple(folds)))
    manifest = dataclasses.replace(manifest, members=tuple(members))
    write_manifest(manifest, manifest.root)
    return load_manifest(manifest.root), results
