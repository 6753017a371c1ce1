"""The wire between the trusted side and a plugin host: framed messages over one AF_UNIX socket.

A message is `!IQ` (header length, body length), a JSON header, then the body bytes. Headers are
small plain data (ops, parameters, answers, errors); bodies carry batches as Arrow IPC streams.
Nothing that crosses is ever unpickled: the trusted side reads the host's answers as JSON and
Arrow only, with sizes capped, so a hostile host can send wrong data but never code.

Both sides use `encode_frame`/`decode_frame`: a pandas frame becomes an Arrow table; a column
Arrow cannot type (mixed Python objects) travels as JSON text and is restored on the other side
(marked in the field's metadata, `sluice.json`). The trusted side reads a host's tables with
`trusted_table`, which refuses extension types (Ray registers one whose values are pickles) and
drops the table's own metadata.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from typing import Any

MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_BODY_BYTES = 1024**3
"""A host cannot make its owner hold more than this for one answer (a batch is far smaller)."""
_PREFIX = struct.Struct("!IQ")
JSON_FIELD_KEY = b"sluice.json"


class ProtocolError(RuntimeError):
    """The peer sent something that is not a well-formed message."""


def send(sock: socket.socket, header: dict[str, Any], body: bytes | memoryview = b"") -> None:
    head = json.dumps(header, separators=(",", ":"), default=_json_default).encode()
    sock.sendall(_PREFIX.pack(len(head), len(body)) + head)
    if len(body):
        sock.sendall(body)


def recv(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    """The next message; EOFError when the peer closed the socket."""
    head_len, body_len = _PREFIX.unpack(_read(sock, _PREFIX.size))
    if head_len > MAX_HEADER_BYTES or body_len > MAX_BODY_BYTES:
        raise ProtocolError(f"message too large (header {head_len} bytes, body {body_len} bytes)")
    try:
        header = json.loads(_read(sock, head_len))
    except ValueError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a {type(header).__name__}, not an object")
    return header, _read(sock, body_len) if body_len else b""


def _read(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError("the peer closed the connection")
        got += n
    return bytes(buffer)


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        return value.detach().cpu().tolist()
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def plain(value: Any) -> Any:
    """A JSON-safe copy of plugin output (numpy and tensors to lists and numbers, NaN to None)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        return plain(value.item())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return plain(value.detach().cpu().tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- frames -------------------------------------------------------------------------------------

def encode_frame(frame: Any) -> bytes:
    """A pandas DataFrame (or an Arrow table) as one Arrow IPC stream."""
    import pyarrow as pa

    table = frame if isinstance(frame, pa.Table) else _table_from_pandas(frame)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _table_from_pandas(frame: Any) -> Any:
    import pyarrow as pa

    frame = frame.reset_index(drop=True)
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    arrays, fields = [], []
    for name in frame.columns:
        column = frame[name]
        try:
            array = pa.array(column, from_pandas=True)
            fields.append(pa.field(str(name), array.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            array = pa.array([json.dumps(plain(v), default=_json_default) for v in column], type=pa.string())
            fields.append(pa.field(str(name), pa.string(), metadata={JSON_FIELD_KEY: b"1"}))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def decode_table(data: bytes) -> Any:
    """An Arrow table from IPC bytes, validated in full (a malformed stream raises ProtocolError)."""
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        table.validate(full=True)
    except (pa.ArrowException, ValueError) as exc:
        raise ProtocolError(f"batch is not a valid Arrow stream: {exc}") from exc
    return table


def trusted_table(data: bytes) -> Any:
    """A host's batch as the trusted side may hold it: plain Arrow types only (no extension types,
    whose deserialisers may unpickle), without the table's own metadata."""

    table = decode_table(data)
    for field in table.schema:
        if _has_extension(field.type):
            raise ProtocolError(f"column {field.name!r} has extension type {field.type}; plugin hosts send plain Arrow types")
    return table.replace_schema_metadata(None)


def _has_extension(kind: Any) -> bool:
    import pyarrow as pa

    if isinstance(kind, pa.ExtensionType):
        return True
    return any(_has_extension(kind.field(i).type) for i in range(kind.num_fields)) if kind.num_fields else False


def decode_frame(data: bytes | Any) -> Any:
    """A pandas DataFrame from `encode_frame`'s bytes or a table (JSON columns restored). Host side."""
    import pyarrow as pa

    table = data if isinstance(data, pa.Table) else decode_table(data)
    frame = table.to_pandas()
    for field in table.schema:
        if (field.metadata or {}).get(JSON_FIELD_KEY) and field.name in frame.columns:
            frame[field.name] = [json.loads(v) if isinstance(v, str) else v for v in frame[field.name]]
    return frame


__all__ = [
    "MAX_BODY_BYTES", "MAX_HEADER_BYTES", "ProtocolError", "decode_frame", "decode_table", "encode_frame", "plain",
    "recv", "send", "trusted_table",
]
