"""safetensors weights: the header is checked in pure Python (bounds, dtypes, sizes, overlapping or
uncovered offsets) before the safetensors library opens the file."""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from engine.models.untrusted import FormatResult, ModelFolder, Problem, check_weights, show, tensor_details

__all__ = ["RULES", "check_safetensors", "check_safetensors_file"]

RULES: dict[str, str] = {
    "MDL401": "bad safetensors header",
    "MDL402": "bad safetensors tensor entry",
    "MDL403": "safetensors offsets overlap or leave gaps",
    "MDL404": "safetensors library refused the file",
}

SAFETENSORS_MAX_HEADER = 100 * 1000 * 1000

# safetensors dtype -> bits per element (sub-byte float types pack, so sizes are computed in bits)
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of duplicate keys; the Rust parser may not: refuse the ambiguity."""
    counts = Counter(k for k, _ in pairs)
    duplicates = sorted(k for k, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate keys {', '.join(repr(show(k)) for k in duplicates[:5])}")
    return dict(pairs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_problems(name: str, spec: object, data_len: int) -> tuple[list[Problem], tuple[int, int] | None, int]:
    """One tensor entry: ([problems], its [begin, end) span, its element count)."""
    label = f"tensor '{show(name)}'"
    if not isinstance(spec, dict):
        return [("MDL402", f"{label}: entry is not a JSON object")], None, 0
    if set(spec) != {"dtype", "shape", "data_offsets"}:
        message = f"{label}: entry keys must be dtype, shape and data_offsets, got {sorted(map(str, spec))}"
        return [("MDL402", message)], None, 0
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    problems: list[Problem] = []
    if dtype not in SAFETENSORS_DTYPE_BITS:
        problems.append(("MDL402", f"{label}: unknown dtype {show(repr(dtype))}"))
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        problems.append(("MDL402", f"{label}: shape must be a list of non-negative integers, got {show(repr(shape))}"))
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        problems.append(("MDL402", f"{label}: data_offsets must be [begin, end] integers, got {show(repr(offsets))}"))
        return problems, None, 0
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        message = f"{label}: data_offsets [{begin}, {end}] fall outside the {data_len}-byte data region"
        problems.append(("MDL403", message))
    if problems:
        return problems, None, 0
    count = math.prod(shape)
    bits = count * SAFETENSORS_DTYPE_BITS[dtype]
    if bits != (end - begin) * 8:
        need = f"{bits / 8:g}"
        message = f"{label}: holds {end - begin} bytes but shape {shape} of {dtype} needs {need}"
        return [("MDL402", message)], None, 0
    return [], (begin, end), count


def _coverage_problems(spans: list[tuple[int, int, str]], data_len: int) -> list[Problem]:
    """Tensors must tile the data region exactly: no overlap (two names for the same bytes), no gap
    and no trailing bytes (data that no tensor accounts for)."""
    problems: list[Problem] = []
    cursor, last = 0, ""
    for begin, end, name in sorted(spans):
        if begin < cursor:
            span = f"bytes {begin} to {min(end, cursor)}"
            problems.append(("MDL403", f"tensors '{show(last)}' and '{show(name)}' overlap ({span})"))
        elif begin > cursor:
            problems.append(("MDL403", f"bytes {cursor} to {begin} of the data region belong to no tensor"))
        if end >= cursor:
            cursor, last = end, name
    if cursor < data_len:
        problems.append(("MDL403", f"bytes {cursor} to {data_len} of the data region belong to no tensor"))
    return problems


def _read_safetensors_header(path: Path) -> tuple[list[Problem], dict[str, Any], int]:
    """(problems, header object, data region length)."""
    size = path.stat().st_size
    if size < 8:
        return [("MDL401", f"is {size} bytes, too short for a safetensors file (8-byte header length first)")], {}, 0
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > SAFETENSORS_MAX_HEADER:
            message = f"declares a {length}-byte header, above the {SAFETENSORS_MAX_HEADER}-byte limit"
            return [("MDL401", message)], {}, 0
        if length > size - 8:
            message = f"declares a {length}-byte header but only {size - 8} bytes follow the header length"
            return [("MDL401", message)], {}, 0
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        return [("MDL401", f"header is not valid JSON ({type(exc).__name__}: {show(str(exc))})")], {}, 0
    if not isinstance(header, dict):
        return [("MDL401", f"header is a JSON {type(header).__name__}, not an object")], {}, 0
    return [], header, size - 8 - length


def check_safetensors_file(path: Path) -> tuple[list[Problem], dict[str, Any]]:
    """Header checked in pure Python first, then the safetensors library must open the file."""
    path = Path(path)
    problems, header, data_len = _read_safetensors_header(path)
    if problems:
        return problems, {}
    spans: list[tuple[int, int, str]] = []
    parameters, dtypes = 0, set()
    for name, spec in header.items():
        if name == "__metadata__":
            if not (isinstance(spec, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in spec.items())):
                problems.append(("MDL401", "__metadata__ must map strings to strings"))
            continue
        entry, span, count = _entry_problems(name, spec, data_len)
        problems += entry
        if span is not None:
            spans.append((*span, name))
            parameters += count
            dtypes.add(spec["dtype"])
    if not problems:
        problems = _coverage_problems(spans, data_len)
    if not problems:
        problems = _safe_open_problems(path)
    if problems:
        return problems, {}
    return [], tensor_details(len(spans), parameters, sorted(dtypes))


def _safe_open_problems(path: Path) -> list[Problem]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            list(f.keys())
    except Exception as exc:  # noqa: BLE001 - untrusted input: any parser error is a finding, never a crash
        return [("MDL404", f"the safetensors library refused it ({type(exc).__name__}: {show(str(exc))})")]
    return []


def check_safetensors(folder: ModelFolder) -> FormatResult:
    return check_weights(folder, (".safetensors",), ".safetensors file", check_safetensors_file)
