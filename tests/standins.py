"""Small ONNX models with the interfaces of models that cannot be downloaded here, built with onnx.helper.

- :func:`perch_standin`: Perch v2's interface (a 5-s, 32 kHz waveform ``inputs`` (batch, 160000) in; ``embedding``
  (batch, dim) and ``label`` logits (batch, classes) out), its insides a few matrix products on frame energies;
- :func:`head_standin`: an MLP "probe" head on such an embedding (batch, dim) -> sigmoid probabilities.

Their outputs respond to the audio (they are functions of its frame energies), which is all the tests need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

OPSET = 17
PERCH_INPUT = "inputs"
PERCH_SAMPLES = 160_000


def _save(nodes, inputs, outputs, weights: dict[str, np.ndarray], path: Path) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        inputs,
        outputs,
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    save(model, str(path))
    return path


def perch_standin(path: Path, n_classes: int, dim: int = 64, seed: int = 0, logit_scale: float = 1.0) -> Path:
    """``inputs`` (batch, 160000) -> ``embedding`` (batch, dim), ``label`` (batch, n_classes) logits (their spread
    times ``logit_scale``)."""
    rng = np.random.default_rng(seed)
    frames, hop = 500, PERCH_SAMPLES // 500
    weights = {
        "shape": np.array([0, frames, hop], dtype=np.float32),
        "eps": np.array([1e-6]),
        "w1": rng.normal(0, 0.3, (frames, dim)),
        "b1": rng.normal(0, 0.1, dim),
        "w2": rng.normal(0, 1.0, (dim, n_classes)) * logit_scale,
        "b2": rng.normal(-1.0, 0.5, n_classes) * logit_scale,
    }
    nodes = [
        helper.make_node("Cast", ["shape"], ["shape64"], to=TensorProto.INT64),
        helper.make_node("Reshape", [PERCH_INPUT, "shape64"], ["framed"]),
        helper.make_node("Mul", ["framed", "framed"], ["power"]),
        helper.make_node("ReduceMean", ["power"], ["energy"], axes=[2], keepdims=0),
        helper.make_node("Add", ["energy", "eps"], ["energy_eps"]),
        helper.make_node("Log", ["energy_eps"], ["log_energy"]),
        helper.make_node("MatMul", ["log_energy", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Tanh", ["h1b"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["label"]),
    ]
    inputs = [helper.make_tensor_value_info(PERCH_INPUT, TensorProto.FLOAT, ["batch", PERCH_SAMPLES])]
    outputs = [
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]),
        helper.make_tensor_value_info("label", TensorProto.FLOAT, ["batch", n_classes]),
    ]
    return _save(nodes, inputs, outputs, weights, path)


def head_standin(path: Path, dim: int, n_out: int, seed: int = 1) -> Path:
    """``embedding`` (batch, dim) -> ``probs`` (batch, n_out) = sigmoid(x W + b)."""
    rng = np.random.default_rng(seed)
    weights = {"w": rng.normal(0, 1.0, (dim, n_out)), "b": rng.normal(-0.5, 0.5, n_out)}
    nodes = [
        helper.make_node("MatMul", ["embedding", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
    ]
    inputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_out])]
    return _save(nodes, inputs, outputs, weights, path)


def framewise_standin(path: Path, n_labels: int, samples: int, frames: int = 25, seed: int = 2) -> Path:
    """A frame-wise SED on the waveform, made without torch: ``wave`` (batch, samples) -> ``frames`` (batch, frames,
    n_labels) = sigmoid of each frame's log energy and mean |x| through a linear layer (time on axis 1); and ``clip``
    (batch, n_labels), the sigmoid of the frames' mean logit."""
    rng = np.random.default_rng(seed)
    weights = {
        "shape": np.array([0, frames, samples // frames], dtype=np.float32),
        "eps": np.array([1e-6]),
        "w": rng.normal(0, 1.0, (2, n_labels)),
        "b": rng.normal(-1.0, 0.5, n_labels),
    }
    nodes = [
        helper.make_node("Cast", ["shape"], ["shape64"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["wave", "shape64"], ["framed"]),
        helper.make_node("Mul", ["framed", "framed"], ["power"]),
        helper.make_node("ReduceMean", ["power"], ["energy"], axes=[2], keepdims=1),
        helper.make_node("Add", ["energy", "eps"], ["energy_eps"]),
        helper.make_node("Log", ["energy_eps"], ["log_energy"]),
        helper.make_node("Abs", ["framed"], ["magnitude"]),
        helper.make_node("ReduceMean", ["magnitude"], ["level"], axes=[2], keepdims=1),
        helper.make_node("Concat", ["log_energy", "level"], ["features"], axis=2),
        helper.make_node("MatMul", ["features", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["frames"]),
    ]
    nodes += [
        helper.make_node("ReduceMean", ["logits"], ["mean_logits"], axes=[1], keepdims=0),
        helper.make_node("Sigmoid", ["mean_logits"], ["clip"]),
    ]
    inputs = [helper.make_tensor_value_info("wave", TensorProto.FLOAT, ["batch", samples])]
    outputs = [
        helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", frames, n_labels]),
        helper.make_tensor_value_info("clip", TensorProto.FLOAT, ["batch", n_labels]),
    ]
    return _save(nodes, inputs, outputs, weights, path)
