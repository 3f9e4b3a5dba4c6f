"""The manifest checks' own reader of ONNX files (:mod:`bird_infer.contract.onnx_graph`), against the onnx
package's: the same inputs, outputs and dimensions, the same external-data initializers, and a clear refusal of
bytes that are not a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bird_infer.contract.onnx_graph import OnnxWireError, graph_interface
from bird_infer.tools.onnx_files import onnx_dims

ROOT = Path(__file__).resolve().parent.parent


def _as_onnx_reads(model: onnx.ModelProto) -> tuple[dict, dict, tuple, tuple]:
    g = model.graph
    external = tuple(t.name for t in g.initializer if t.data_location == TensorProto.EXTERNAL)
    return (
        {i.name: onnx_dims(i) for i in g.input},
        {o.name: onnx_dims(o) for o in g.output},
        tuple(t.name for t in g.initializer),
        external,
    )


def _agree(model: onnx.ModelProto) -> None:
    got = graph_interface(model.SerializeToString())
    assert (got.inputs, got.outputs, got.initializers, got.external) == _as_onnx_reads(model)


@pytest.mark.parametrize("fold", sorted((ROOT / "models").glob("fold*.onnx")), ids=lambda p: p.name)
def test_the_shipped_folds_read_as_onnx_reads_them(fold: Path) -> None:
    _agree(onnx.load(str(fold)))


def test_symbolic_unnamed_negative_and_initializer_inputs(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", None, 3])  # None: an unnamed dimension
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "t", 4])
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4])  # an initializer listed as an input
    scalar = helper.make_tensor_value_info("s", TensorProto.FLOAT, [])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x, w_in, scalar], [y], [w])
    model = helper.make_model(graph)
    _agree(model)
    got = graph_interface(model.SerializeToString())
    assert got.inputs == {"x": ("batch", "?", 3), "w": (3, 4), "s": ()} and got.initializers == ("w",)


def test_external_data_initializers_are_seen(tmp_path: Path) -> None:
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "big")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "big"], ["y"])], "g", [x], [y], [w]))
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, size_threshold=0, location="m.data")
    saved = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    _agree(saved)
    assert graph_interface((tmp_path / "m.onnx").read_bytes()).external == ("big",)


@pytest.mark.parametrize("data", [b"", b"not a model at all", b"\x3a\xff\xff\xff\xff\x0f", b"\x0b"])
def test_bytes_that_are_not_a_model_are_refused(data: bytes) -> None:
    with pytest.raises(OnnxWireError):
        graph_interface(data)


def test_a_truncated_fold_is_refused() -> None:
    data = (ROOT / "models" / "fold0.onnx").read_bytes()
    with pytest.raises(OnnxWireError):
        graph_interface(data[: len(data) // 2])
