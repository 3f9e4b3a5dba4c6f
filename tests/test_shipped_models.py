"""The default bundle in models/: valid, labelled with the BirdCLEF 2023 species, and responsive."""

from __future__ import annotations

import numpy as np
import pytest

from bird_infer.ensemble import FoldEnsemble
from bird_infer.export import non_portable_nodes
from bird_infer.frontend import LogMelFrontend
from bird_infer.manifest import load_manifest, read_labels_file
from tests.conftest import ROOT, SPECIES_FILE


@pytest.fixture(scope="module")
def shipped():
    return load_manifest(ROOT / "models")  # verifies every file's sha256 and interface


def test_manifest_describes_the_reference_recipe(shipped) -> None:
    fe = shipped.frontend
    assert (fe.n_fft, fe.win_length, fe.hop_length, fe.n_mels) == (1024, 1024, 320, 256)
    assert (fe.fmin, fe.fmax, fe.top_db) == (20.0, 14000.0, 80.0)
    assert shipped.audio.sample_rate == 32000 and shipped.audio.clip_s == 5
    assert len(shipped.folds) == 5 and shipped.model.backbone == "efficientnet_b0"
    assert "NOT TRAINED" in shipped.description  # say plainly what these weights are


def test_labels_are_the_birdclef_2023_species(shipped) -> None:
    assert len(shipped.labels) == 264
    if SPECIES_FILE.is_file():
        assert shipped.labels == read_labels_file(SPECIES_FILE)


def test_shipped_files_are_portable(shipped) -> None:
    for fold in shipped.folds:
        assert non_portable_nodes(shipped.fold_path(fold)) == []


def test_shipped_folds_respond_to_their_input(shipped) -> None:
    from bird_infer.export import check_chunks_from_audio
    from tests.conftest import real_audio_dir

    # The 32 kHz recordings their BatchNorm statistics were estimated on (scripts/make_seeded_folds.py).
    waves = check_chunks_from_audio([real_audio_dir("opensoundscape")], shipped, max_chunks=16)
    feats = LogMelFrontend(shipped.frontend, shipped.audio.sample_rate)(waves)
    per_fold = FoldEnsemble(shipped).fold_outputs(feats)  # (folds, chunks, labels)
    spread = (per_fold.max(axis=1) - per_fold.min(axis=1)).max(axis=1)
    print("output spread per fold:", np.round(spread, 3))
    assert (spread > 0.05).all()  # 500 times the 1e-4 parity tolerance
