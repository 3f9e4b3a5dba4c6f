"""A model file as add-member reads it: its interface (inputs, outputs, operator domains, input types) and the
bytes the bundle keeps (external-data weights inlined, so that one sha256 covers every weight)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bird_infer.contract.errors import AddMemberError, BirdInferError
from bird_infer.contract.text import describe_exception

log = logging.getLogger(__name__)

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
"""Operator domains ONNX Runtime runs (the standard ones and its own contrib operators)."""
MAX_INLINE_BYTES = 2**31 - 2**20
"""A model with its weights inlined must stay a single protobuf (2 GiB)."""


def onnx_dims(value_info: Any) -> tuple[int | str, ...]:
    """A graph input's or output's dimensions: sizes, or the symbolic names ('?' when unnamed)."""
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)


def model_bytes(path: Path) -> bytes:
    """The model as the bundle keeps it: its own bytes, or, for a model whose weights sit in external-data files,
    one file with every weight inlined (read from files beside it, which must lie in its folder). One sha256
    then covers every weight, and workers load exactly the bytes that were checked."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _INLINED:
        _INLINED.clear()  # one model at a time: they can be large
        _INLINED[key] = _inlined(path)
    return _INLINED[key]


_INLINED: dict[tuple, bytes] = {}
"""The last model's bytes, keyed by its path, size and modification time (add-member reads it several times)."""


def _inlined(path: Path) -> bytes:
    import onnx  # deferred: onnx takes ~0.3 s to import

    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception:  # not ONNX at all: _onnx_interface says so
        return data
    external = [t for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return data
    folder = path.resolve().parent
    for t in external:
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or folder not in target.parents:
            raise AddMemberError(
                f"{path.name}: tensor {t.name!r} keeps its weights at {location!r}, outside the model's folder; "
                "external-data files must lie beside the model (or save it as one file)"
            )
        if not target.is_file():
            raise AddMemberError(f"{path.name}: tensor {t.name!r} keeps its weights in {location!r}, which is missing")
    try:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(folder))
        inlined = model.SerializeToString()
    except Exception as e:  # a short or unreadable data file
        raise AddMemberError(f"{path.name}: its external-data files cannot be read ({describe_exception(e)})") from e
    if len(inlined) > MAX_INLINE_BYTES:
        raise AddMemberError(f"{path.name}: with its weights inlined it is over 2 GiB, which one ONNX file cannot hold")
    log.info("%s: %d tensors' external data inlined into the bundle's copy", path.name, len(external))
    return inlined


def _tensors(graph) -> list:
    """Every initializer of a graph and of its subgraphs."""
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.g is not None and attr.g.ByteSize():
                out += _tensors(attr.g)
            for g in attr.graphs:
                out += _tensors(g)
    return out


def onnx_interface(path: Path) -> tuple[dict[str, tuple], dict[str, tuple]]:
    import onnx  # deferred: onnx takes ~0.3 s to import

    try:
        model = onnx.load_from_string(model_bytes(path))
    except BirdInferError:
        raise
    except Exception as e:  # onnx raises DecodeError and others: any failure means an unusable file
        raise AddMemberError(f"{path} is not a readable ONNX model ({e})") from e
    custom = sorted({o.domain for o in model.opset_import} - STANDARD_DOMAINS)
    if custom:
        raise AddMemberError(
            f"{path.name} uses operators of the domain(s) {custom}, which ONNX Runtime does not have (custom "
            "operators): export it with standard operators only"
        )
    init = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init]
    for i in graph_inputs:
        elem = i.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            kind = onnx.TensorProto.DataType.Name(elem).lower() if elem else "not a tensor"
            raise AddMemberError(
                f"{path.name}: input {i.name!r} is {kind}; bird_infer feeds float32 audio or features: export the "
                "model with a float32 input (cast inside the graph if it needs another type)"
            )
    inputs = {i.name: onnx_dims(i) for i in graph_inputs}
    outputs = {o.name: onnx_dims(o) for o in model.graph.output}
    return inputs, outputs
