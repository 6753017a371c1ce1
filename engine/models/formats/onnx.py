"""ONNX models: initializers may point at "external data" files anywhere on disk, so every location
is checked lexically (relative, no '..') and then against the extracted folder, before anything
reads external data or runs the ONNX checker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from engine.models.untrusted import FormatResult, ModelFolder, Problem, check_files, is_below, show

__all__ = ["RULES", "check_onnx", "check_onnx_file"]

RULES: dict[str, str] = {
    "MDL501": "not a readable ONNX model",
    "MDL502": "ONNX external data outside the archive or out of bounds",
    "MDL503": "ONNX checker failed",
}

ONNX_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})


def _graph_tensors(graph: Any, where: str) -> Iterator[tuple[str, Any]]:
    for t in graph.initializer:
        yield f"{where}initializer '{show(t.name)}'", t
    for st in graph.sparse_initializer:
        yield f"{where}sparse initializer '{show(st.values.name)}'", st.values
        yield f"{where}sparse initializer '{show(st.values.name)}' indices", st.indices
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    label = f"{where}node '{show(node.name or node.op_type)}'"
    for attr in node.attribute:
        if attr.HasField("t"):
            yield f"{label} attribute '{show(attr.name)}'", attr.t
        for t in attr.tensors:
            yield f"{label} attribute '{show(attr.name)}'", t
        sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for st in [*sparse, *attr.sparse_tensors]:
            yield f"{label} attribute '{show(attr.name)}'", st.values
            yield f"{label} attribute '{show(attr.name)}' indices", st.indices
        subgraphs = [attr.g] if attr.HasField("g") else []
        for g in [*subgraphs, *attr.graphs]:
            yield from _graph_tensors(g, f"{label} subgraph: ")


def _model_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Every TensorProto a model can hold: graph, subgraphs, functions, training graphs."""
    yield from _graph_tensors(model.graph, "")
    for fn in model.functions:
        for node in fn.node:
            yield from _node_tensors(node, f"function '{show(fn.name)}' ")
    for info in model.training_info:
        yield from _graph_tensors(info.initialization, "training initialization: ")
        yield from _graph_tensors(info.algorithm, "training algorithm: ")


def _external_location_problems(label: str, location: str, model_dir: str, root_real: str) -> tuple[list[Problem], str]:
    """Lexical checks first (nothing outside is ever touched, not even stat'ed), then resolution
    against the extracted folder. Returns (problems, resolved path)."""
    where = f"{label} stores its data at '{show(location)}'"
    if not location or "\x00" in location or "\\" in location:
        return [("MDL502", f"{where}, which is not a plain relative path")], ""
    posix = PurePosixPath(location)
    if posix.is_absolute() or (len(location) > 1 and location[1] == ":"):
        return [("MDL502", f"{where}, an absolute path outside the archive")], ""
    if ".." in posix.parts:
        return [("MDL502", f"{where}, outside the archive")], ""
    target = os.path.realpath(os.path.join(model_dir, location))
    if not is_below(root_real, target):
        return [("MDL502", f"{where}, outside the archive")], ""
    if not os.path.isfile(target):
        return [("MDL502", f"{where}, which is not a file in the archive")], ""
    return [], target


def _external_data_problems(label: str, tensor: Any, model_dir: str, root_real: str) -> list[Problem]:
    entries = [(e.key, e.value) for e in tensor.external_data]
    info = dict(entries)
    if len(info) != len(entries) or set(info) - ONNX_EXTERNAL_KEYS:
        keys = sorted(show(k) for k, _ in entries)
        message = f"{label}: external_data keys must be unique and among {sorted(ONNX_EXTERNAL_KEYS)}; got {keys}"
        return [("MDL502", message)]
    problems, target = _external_location_problems(label, info.get("location", ""), model_dir, root_real)
    if problems:
        return problems
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        return [("MDL502", f"{label}: external data offset/length are not integers")]
    size = os.path.getsize(target)
    end = offset + (length if length is not None else max(size - offset, 0))
    if offset < 0 or (length is not None and length < 0) or end > size:
        where = f"'{show(info['location'])}'"
        message = f"{label}: external data bytes {offset} to {end} run past the end of {where} ({size} bytes)"
        return [("MDL502", message)]
    return []


def check_onnx_file(path: Path, root: Path) -> tuple[list[Problem], dict[str, Any]]:
    """Parse without external data, check every external location against `root` (the extracted
    folder), and only then run the ONNX checker on the path (which reads external data)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - untrusted input: any parser error is a finding, never a crash
        return [("MDL501", f"is not a readable ONNX model ({type(exc).__name__}: {show(str(exc))})")], {}
    model_dir, root_real = os.path.realpath(path.parent), os.path.realpath(root)
    problems: list[Problem] = []
    for label, tensor in _model_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            problems += _external_data_problems(label, tensor, model_dir, root_real)
    if problems:
        return problems, {}
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - untrusted input: any parser error is a finding, never a crash
        return [("MDL503", f"fails the ONNX checker ({type(exc).__name__}: {show(str(exc))})")], {}
    return [], _onnx_details(model)


def _onnx_value_info(value: Any) -> dict[str, Any]:
    import onnx

    tensor_type = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
    elem = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else None
    return {"name": value.name, "elem_type": elem, "shape": dims}


def _onnx_details(model: Any) -> dict[str, Any]:
    initializers = {t.name for t in model.graph.initializer}
    return {
        "ir_version": model.ir_version,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "producer": model.producer_name,
        "inputs": [_onnx_value_info(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [_onnx_value_info(v) for v in model.graph.output],
        "initializers": len(initializers),
    }


def check_onnx(folder: ModelFolder) -> FormatResult:
    findings, per_file = check_files(folder, (".onnx",), ".onnx file", lambda p: check_onnx_file(p, folder.root))
    details = next(iter(per_file.values())) if len(per_file) == 1 else {}
    return findings, {**details, "files": per_file}
