"""Engines and precisions other than ONNX Runtime fp32, and the accuracy guard that gates them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bird_infer.audio.logmel import LogMelFrontend
from bird_infer.contract.errors import PrecisionRefusedError
from bird_infer.jobs.predict import run_predict
from bird_infer.run.options import RunOptions
from bird_infer.runtime.ensemble import FoldEnsemble
from bird_infer.runtime.sessions import SessionSettings
from tests.conftest import ROOT

ov = pytest.importorskip("openvino")


def test_openvino_fp32_matches_onnxruntime(tiny_bundle, check_chunks) -> None:
    manifest, _, _ = tiny_bundle
    feats = LogMelFrontend(manifest.member().frontend, manifest.member().audio.sample_rate)(check_chunks[:8])
    ref = FoldEnsemble(manifest).fold_outputs(feats)
    got = FoldEnsemble(manifest, SessionSettings(backend="openvino")).fold_outputs(feats)
    print(f"openvino fp32 vs onnxruntime: max |diff| = {np.abs(got - ref).max():.3g}")
    assert np.abs(got - ref).max() <= 1e-4


def test_onnxruntime_has_no_bf16() -> None:
    from bird_infer.contract.manifest import load_manifest

    with pytest.raises(PrecisionRefusedError):
        FoldEnsemble(load_manifest(ROOT / "models", verify=False), SessionSettings(precision="bf16"))


def test_guard_refuses_beyond_its_bound_and_runs_fp32(tmp_path) -> None:
    from bird_infer.tools.example import write_example

    audio = write_example(tmp_path / "audio").parent
    fp32 = run_predict(audio, ROOT / "models", tmp_path / "fp32.csv", options=RunOptions(workers=1))
    bf16 = RunOptions(workers=1, session=SessionSettings(backend="openvino", precision="bf16"))
    strict = run_predict(
        audio,
        ROOT / "models",
        tmp_path / "strict.csv",
        options=RunOptions(workers=1, session=bf16.session, precision_bound=0.0),
    )
    print(strict.precision)
    assert strict.precision.startswith("onnxruntime fp32 (")  # refused: bf16 is never exactly fp32
    pd.testing.assert_frame_equal(pd.read_csv(fp32.out_path), pd.read_csv(strict.out_path))
    loose = run_predict(audio, ROOT / "models", tmp_path / "bf16.csv", options=bf16)
    print(loose.precision)
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert loose.precision.startswith("openvino bf16 (") and "max |p - p_fp32| = " in loose.precision
        a = pd.read_csv(fp32.out_path).set_index("row_id")
        b = pd.read_csv(loose.out_path).set_index("row_id")
        assert float((a - b).abs().max().max()) <= 0.02 + 1e-6  # the guard's bound, on the whole file
    else:
        assert loose.precision.startswith("onnxruntime fp32 (")
