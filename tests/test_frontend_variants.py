"""Front-end variants as 2026 solutions trained them (issue 28), each against torch: ``top_db`` clamped at the
maximum of a batch of 12 chunks (torchaudio's AmplitudeToDB on a (batch, mels, frames) tensor), standardisation
with torch.std's unbiased std, and a channel axis (1, or the log-mel repeated on 3) on the model's input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from bird_infer.audio.logmel import NORMALIZE_EPS, LogMelFrontend
from bird_infer.contract.schema import AudioConfig, EnsembleConfig, FoldSpec, Member, TensorSpec
from bird_infer.contract.training_config import TrainingConfig
from bird_infer.runtime.ensemble import MemberModel
from tests.standins import OPSET


def waves(cfg: TrainingConfig, n: int = 24) -> np.ndarray:
    """Chunks whose loudness differs by up to 90 dB: a batch's maximum clamps its quiet chunks."""
    sr, samples = cfg.audio.sample_rate, cfg.audio.chunk_samples
    t = np.arange(samples) / sr
    rng = np.random.default_rng(3)
    gains = 10 ** (-rng.uniform(0, 4.5, n))
    return np.stack([g * np.sin(2 * np.pi * (800 + 300 * k) * t) + 1e-6 * rng.standard_normal(samples)
                     for k, g in enumerate(gains)]).astype(np.float32)  # fmt: skip


def test_top_db_per_batch_and_unbiased_std_equal_torch(reference_config: TrainingConfig) -> None:
    torch = pytest.importorskip("torch")
    from bird_infer.nn.frontend import TorchLogMel

    fe = dataclasses.replace(
        reference_config.frontend, top_db_ref="batch", batch_rows=12, normalize="standardize", std_ddof=1
    )
    x = waves(reference_config)
    got = LogMelFrontend(fe, reference_config.audio.sample_rate)(x)
    raw_fe = dataclasses.replace(fe, top_db=None, normalize="none")
    with torch.no_grad():
        db = TorchLogMel(raw_fe, reference_config.audio.sample_rate)(torch.from_numpy(x)).double()
        want = []
        for g in db.split(12):  # AmplitudeToDB on a 3-D batch: x_db.amax(dim=(-3, -2, -1)) - top_db
            g = torch.maximum(g, g.amax(dim=(-3, -2, -1)) - fe.top_db)
            mean, std = g.mean(dim=(1, 2), keepdim=True), g.std(dim=(1, 2), keepdim=True)  # unbiased: torch's default
            want.append((g - mean) / (std + NORMALIZE_EPS))
        want = torch.cat(want).numpy()
    worst = float(np.abs(got - want).max())
    print(f"top_db per batch of 12 + unbiased std: max |numpy - torch| = {worst:.3g} (standardised units)")
    assert worst <= 1e-3
    per_chunk = LogMelFrontend(dataclasses.replace(fe, top_db_ref="chunk"), reference_config.audio.sample_rate)(x)
    assert np.abs(per_chunk - got).max() > 0.1  # the reference matters: it is not the per-chunk clamp


@pytest.mark.parametrize("channels", [1, 3])
def test_a_channel_axis_feeds_the_model_as_trained(reference_config: TrainingConfig, tmp_path: Path, channels) -> None:
    fe = dataclasses.replace(reference_config.frontend, channels=channels)
    sr = reference_config.audio.sample_rate
    mels, frames = fe.n_mels, fe.n_frames(reference_config.audio.chunk_samples)
    w = np.random.default_rng(0).normal(0, 0.05, (channels, 4)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes,
        "chan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, mels, frames])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    save(model, str(tmp_path / "chan.onnx"))
    import hashlib

    sha = hashlib.sha256((tmp_path / "chan.onnx").read_bytes()).hexdigest()
    fold = FoldSpec(
        "f", "chan.onnx", sha, TensorSpec("x", ("batch", channels, mels, frames)), TensorSpec("probs", ("batch", 4))
    )
    member = Member("m", ("a", "b", "c", "d"), AudioConfig(sr, 5.0), fe, (fold,), EnsembleConfig())
    assert member.input_shape == (channels, mels, frames)
    logmel = LogMelFrontend(fe, sr)(waves(reference_config, 3))
    got = MemberModel(member, tmp_path).fold_outputs(logmel)[0]
    repeated = np.repeat(logmel[:, None], channels, axis=1).astype(np.float64)
    want = 1 / (1 + np.exp(-(repeated.mean(axis=(2, 3)) @ w)))
    assert np.abs(got - want).max() <= 1e-4  # ORT sums 128k dB values in float32 for the mean
