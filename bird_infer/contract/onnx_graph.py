"""What the manifest checks need from an ONNX file, read from its protobuf bytes directly: the graph's inputs and
outputs (names and dimensions) and which initializers keep their data outside the file.

The ``onnx`` package would read the same, but importing it costs about 0.8 s (its ``ml_dtypes`` extension), paid
by every run before its first chunk; the wire format of these few fields is small and fixed by ``onnx.proto``
(field numbers below), so it is read here. ``tests/test_onnx_graph.py`` compares this reader with ``onnx`` on
the shipped folds and on graphs with symbolic, unnamed and external-data tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from bird_infer.contract.describe import doc

# onnx.proto field numbers
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 5, 11, 12
_TENSOR_NAME, _TENSOR_DATA_LOCATION = 8, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR, _TENSOR_TYPE_SHAPE, _SHAPE_DIM = 1, 2, 1
_DIM_VALUE, _DIM_PARAM = 1, 2

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class OnnxWireError(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


@dataclass(frozen=True)
class GraphInterface:
    """A graph's interface as its file declares it."""

    inputs: dict[str, tuple[int | str, ...]] = field(
        metadata=doc("Each graph input's dimensions: sizes, or symbolic names ('?' when unnamed).")
    )
    outputs: dict[str, tuple[int | str, ...]] = field(metadata=doc("Each graph output's dimensions, as inputs'."))
    initializers: tuple[str, ...] = field(
        metadata=doc("Every initializer's name (old graphs list them as inputs too).")
    )
    external: tuple[str, ...] = field(metadata=doc("Initializers whose data lies in external-data files."))


def _varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise OnnxWireError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) for each field of one message: an int for varints, bytes for the rest."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == _LEN:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise OnnxWireError("a field runs past the end of its message")
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            yield number, data[pos : pos + size]
            pos += size
        else:
            raise OnnxWireError(f"unsupported wire type {wire}")
    if pos != len(data):
        raise OnnxWireError("a message runs past its end")


def _value_info(data: memoryview) -> tuple[str, tuple[int | str, ...]]:
    name, dims = "", []
    for number, value in _fields(data):
        if number == _VALUE_NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", errors="replace")
        elif number == _VALUE_TYPE and isinstance(value, memoryview):
            for n_type, tensor in _fields(value):
                if n_type != _TYPE_TENSOR or not isinstance(tensor, memoryview):
                    continue
                for n_tensor, shape in _fields(tensor):
                    if n_tensor != _TENSOR_TYPE_SHAPE or not isinstance(shape, memoryview):
                        continue
                    for n_shape, dim in _fields(shape):
                        if n_shape == _SHAPE_DIM and isinstance(dim, memoryview):
                            dims.append(_dimension(dim))
    return name, tuple(dims)


def _dimension(data: memoryview) -> int | str:
    for number, value in _fields(data):
        if number == _DIM_VALUE and isinstance(value, int):
            return value - (1 << 64) if value >= 1 << 63 else value  # int64, two's complement
        if number == _DIM_PARAM and isinstance(value, memoryview):
            return bytes(value).decode("utf-8", errors="replace") or "?"
    return "?"


def _initializer(data: memoryview) -> tuple[str, bool]:
    name, external = "", False
    for number, value in _fields(data):
        if number == _TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", errors="replace")
        elif number == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
            external = True
    return name, external


def graph_interface(model: bytes) -> GraphInterface:
    """The inputs, outputs and external-data initializers of the serialized ONNX ``model``. Raises OnnxWireError
    when the bytes are not an ONNX model with a graph."""
    graph = None
    for number, value in _fields(memoryview(model)):
        if number == _MODEL_GRAPH and isinstance(value, memoryview):
            graph = value
    if graph is None:
        raise OnnxWireError("no graph in the file")
    inputs: dict[str, tuple[int | str, ...]] = {}
    outputs: dict[str, tuple[int | str, ...]] = {}
    initializers: list[str] = []
    external: list[str] = []
    for number, value in _fields(graph):
        if not isinstance(value, memoryview):
            continue
        if number == _GRAPH_INPUT:
            name, dims = _value_info(value)
            inputs[name] = dims
        elif number == _GRAPH_OUTPUT:
            name, dims = _value_info(value)
            outputs[name] = dims
        elif number == _GRAPH_INITIALIZER:
            name, is_external = _initializer(value)
            initializers.append(name)
            if is_external:
                external.append(name)
    return GraphInterface(inputs, outputs, tuple(initializers), tuple(external))
