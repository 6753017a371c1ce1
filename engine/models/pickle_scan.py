"""Static scan of untrusted pickle streams: what would they import and call, without running them.

A pickle is a little program. Its GLOBAL / STACK_GLOBAL / INST opcodes import any attribute of any
module (`posix.system`, `builtins.eval`, `subprocess.Popen`), and REDUCE / NEWOBJ / OBJ / INST call
what was imported with arguments the file chooses. `pickle.load` on an uploaded `.pt` file is
therefore remote code execution. This module never unpickles: it walks the opcodes with
`pickletools.genops` and replays only their effect on a symbolic stack and memo, where a value is a
literal string, an imported global, or "something else". That is enough to:

* name every import, including STACK_GLOBAL (protocol 4+), whose module and name are the two values
  on top of the stack. They may have been pushed long before, stored in the memo (PUT / MEMOIZE) and
  fetched back (GET), or duplicated (DUP): replaying the stack and memo follows all of that, where
  looking back a few opcodes for string pushes would be fooled. If the two values are not literal
  strings, the import cannot be named, and the pickle is refused;
* check that every call targets a named import (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST), that no
  opcode mutates an imported object (BUILD / SETITEM / APPEND on a global would patch a class or
  module), and that the copyreg extension registry (EXT1/2/4, which names globals by number) is
  not used.

Every import must be in `ALLOWED_GLOBALS`: what `torch.save` writes for tensors, parameters and
plain containers, and nothing that can reach code. See `ALLOWED_GLOBALS` for each entry's reason.
Reads are bounded (`MAX_PICKLE_BYTES`), so a pickle that declares a 10 GB string is refused rather
than read into memory.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
from dataclasses import dataclass, field
from typing import IO, BinaryIO, cast

MiB = 1024**2
MAX_PICKLE_BYTES = 64 * MiB
"""Bytes of pickle opcodes (not tensor data) read from one stream before giving up. A state_dict
pickle holds names, shapes and strides only, about 100 bytes a tensor: 64 MiB is some 600,000
tensors. It also bounds the scan's time (about a microsecond an opcode)."""

MAX_PROBLEMS = 20
"""The scan stops after this many problems: the pickle is refused anyway."""
SHOWN_ERROR_CHARS = 200

# rule_id -> what it means. 30x: pickle content.
RULES: dict[str, str] = {
    "MDL301": "pickle imports something that is not a tensor or a plain container",
    "MDL302": "pickle import that cannot be resolved statically (STACK_GLOBAL on computed values)",
    "MDL303": "pickle calls something that is not a named import",
    "MDL304": "pickle uses the copyreg extension registry (EXT opcodes)",
    "MDL305": "pickle modifies an imported object",
    "MDL306": "malformed or truncated pickle",
    "MDL307": "pickle too large",
}

_STORAGES = (
    "FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage",
    "ComplexDoubleStorage",
)
_DTYPES = (
    "float32", "float64", "float16", "bfloat16", "complex32", "complex64", "complex128",
    "uint8", "int8", "int16", "int32", "int64", "bool", "uint16", "uint32", "uint64",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    *(f"int{n}" for n in range(1, 8)), *(f"uint{n}" for n in range(1, 8)),
)

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        # The dict type of every state_dict (and of a tensor's empty backward-hooks argument).
        ("collections", "OrderedDict"),
        # A plain container; torch.save writes it for Python sets (protocol 2 names it __builtin__.set).
        ("builtins", "set"),
        # Tensor and Parameter rebuilders: they build a tensor view over a storage that the loader
        # supplies through persistent_load; _v3 is written for dtypes without a legacy storage class
        # (float8, uint16, ...). _rebuild_parameter_with_state sets attributes on the new Parameter
        # from a dict, whose values can only be built from this same list.
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_parameter_with_state"),
        # Storage classes: only named inside persistent ids (the loader maps them to a dtype),
        # never called by the pickle.
        *(("torch", name) for name in _STORAGES),
        ("torch.storage", "UntypedStorage"),
        # Value types: a tuple of ints; a device name ("cuda:0" is parsed, no device is touched,
        # and map_location="cpu" decides where tensors go); dtypes (needed by _rebuild_tensor_v3 and
        # by checkpoints that record a dtype). Refusing them would reject ordinary checkpoints
        # ({"state_dict": ..., "device": torch.device("cuda")}) for no safety gain.
        ("torch", "Size"),
        ("torch", "device"),
        *(("torch", name) for name in _DTYPES),
    }
)
"""Every (module, name) a model pickle may import. Deliberately absent, although torch's own
weights_only loader accepts some of them: `_codecs.encode` (bytes values; can look up any codec),
`torch._tensor._rebuild_from_type_v2` and `torch.Tensor` (tensor subclasses), quantized and sparse
rebuilders, `collections.Counter`, `builtins.bytearray` / `complex`: a state_dict needs none of them."""

_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_EXT_OPS = frozenset({"EXT1", "EXT2", "EXT4"})
_MUTATING_OPS = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"})


@dataclass(frozen=True)
class _Str:
    """A literal string pushed by the pickle."""

    value: str


@dataclass(frozen=True)
class _Global:
    """An imported object, by its (module, name) after Python 2 name mapping."""

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


class _Other:
    """Any other value: a number, a container, the result of a call. Its content is not needed."""


_OTHER = _Other()
_Value = _Str | _Global | _Other


class PickleTooLarge(Exception):
    """More than the allowed bytes of opcodes."""


class _Enough(Exception):
    """MAX_PROBLEMS reached: stop scanning."""


class _Malformed(Exception):
    """The opcodes cannot be replayed (stack underflow, unknown memo key): the real unpickler would
    fail too, or do something this replay does not model. Either way the pickle is refused."""


@dataclass
class PickleReport:
    """The outcome of scanning one pickle: `imports` in order of first appearance ('module.name'),
    `problems` as (rule_id, message) pairs; the pickle is acceptable only if `problems` is empty."""

    imports: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems


class _BoundedReader:
    """A read-only view of a binary stream that refuses to go more than `limit` bytes past where it
    started, so a pickle that declares a huge string or bytes object is cut off, not read.
    pickletools.genops only calls read, readline and tell, so it is passed as `IO[bytes]`."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def _take(self, n: int) -> int:
        if n > self._left:
            raise PickleTooLarge()
        return n

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(self._take(n if n >= 0 else self._left + 1))
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._raw.readline(self._left + 1)
        self._take(len(line))
        self._left -= len(line)
        return line

    def tell(self) -> int:
        return self._raw.tell()


def normalize_global(module: str, name: str, proto: int) -> tuple[str, str]:
    """The (module, name) Python 3 imports for a global in a protocol < 3 pickle (which torch.save
    writes by default, naming `__builtin__` the way Python 2 did), mapped exactly when `pickle` maps
    it. Torch's loader maps at every protocol; where the two differ, the scan is the stricter."""
    if proto >= 3:
        return module, name
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _Replay:
    """The symbolic unpickler: Python's own stack / metastack / memo discipline, with values reduced
    to _Str, _Global or _Other."""

    def __init__(self, subject: str, report: PickleReport) -> None:
        self.subject = subject  # "pickle" or "pickle 'archive/data.pkl'", starts every message
        self.report = report
        self.stack: list[_Value] = []
        self.metastack: list[list[_Value]] = []
        self.memo: dict[int, _Value] = {}
        self.proto = 0  # until a PROTO opcode says otherwise, as in pickle.Unpickler

    # --- stack primitives, as pickle.Unpickler does them -----------------------------------------

    def pop(self) -> _Value:
        if not self.stack:
            raise _Malformed("pops from an empty stack")
        return self.stack.pop()

    def pop_mark(self) -> list[_Value]:
        if not self.metastack:
            raise _Malformed("looks for a MARK that was never pushed")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def top(self) -> _Value:
        if not self.stack:
            raise _Malformed("reads the top of an empty stack")
        return self.stack[-1]

    # --- findings ----------------------------------------------------------------------------------

    def problem(self, rule_id: str, message: str, *, stop_when_full: bool = True) -> None:
        entry = (rule_id, f"{self.subject} {message}")
        if entry not in self.report.problems:
            self.report.problems.append(entry)
        if stop_when_full and len(self.report.problems) >= MAX_PROBLEMS:
            raise _Enough()

    def imported(self, module: str, name: str) -> _Global:
        module, name = normalize_global(module, name, self.proto)
        glob = _Global(module, name)
        if glob.qualname not in self.report._seen:
            self.report._seen.add(glob.qualname)
            self.report.imports.append(glob.qualname)
        if (module, name) not in ALLOWED_GLOBALS:
            self.problem(
                "MDL301",
                f"imports {glob.qualname}, which is not a tensor or a plain container; refusing to load it",
            )
        return glob

    def called(self, target: _Value, opcode: str, pos: int | None) -> None:
        if not isinstance(target, _Global):
            self.problem(
                "MDL303",
                f"calls something that is not a named import ({opcode} at byte {pos}); cannot tell what it runs",
            )

    def mutated(self, target: _Value, opcode: str) -> None:
        if isinstance(target, _Global):
            self.problem("MDL305", f"modifies the imported object {target.qualname} ({opcode}); refusing to load it")

    # --- opcodes -----------------------------------------------------------------------------------

    def step(self, op: pickletools.OpcodeInfo, arg: object, pos: int | None) -> None:
        name = op.name
        if name == "PROTO":
            self.proto = int(arg)  # type: ignore[call-overload]
        elif name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
        elif name in _STRING_OPS:
            self.stack.append(_Str(arg) if isinstance(arg, str) else _OTHER)
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            glob = self.imported(module, attr)
            if name == "INST":
                self.pop_mark()
                self.called(glob, name, pos)
                self.stack.append(_OTHER)
            else:
                self.stack.append(glob)
        elif name == "STACK_GLOBAL":
            self.stack_global(pos)
        elif name in _PUT_OPS:
            self.memo[int(cast(int, arg))] = self.top()  # pickletools decodes every PUT opcode's argument as an int
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name in _GET_OPS:
            if arg not in self.memo:
                raise _Malformed(f"fetches memo entry {arg} that was never stored")
            self.stack.append(self.memo[arg])
        elif name == "DUP":
            self.stack.append(self.top())
        elif name in _EXT_OPS:
            self.problem("MDL304", f"names an import by extension code {arg} ({name}); refusing to load it")
            self.stack.append(_OTHER)
        else:
            self.call_or_generic(op, pos)

    def stack_global(self, pos: int | None) -> None:
        attr, module = self.pop(), self.pop()
        if isinstance(module, _Str) and isinstance(attr, _Str):
            self.stack.append(self.imported(module.value, attr.value))
            return
        self.problem(
            "MDL302",
            f"imports a global whose module or name is not a literal string (STACK_GLOBAL at byte {pos}); "
            "cannot tell what it imports, refusing to load it",
        )
        self.stack.append(_OTHER)

    def call_or_generic(self, op: pickletools.OpcodeInfo, pos: int | None) -> None:
        name = op.name
        if name == "REDUCE" or name == "NEWOBJ":
            self.pop()
            self.called(self.pop(), name, pos)
        elif name == "NEWOBJ_EX":
            self.pop()
            self.pop()
            self.called(self.pop(), name, pos)
        elif name == "OBJ":
            items = self.pop_mark()
            if not items:
                raise _Malformed("OBJ without a class")
            self.called(items[0], name, pos)
        elif name == "BUILD":
            self.pop()
            self.mutated(self.top(), name)
            return
        else:
            self.generic(op)
            return
        self.stack.append(_OTHER)

    def generic(self, op: pickletools.OpcodeInfo) -> None:
        """Any opcode that neither imports nor calls: pop what pickletools says it consumes, push
        opaque values for what it produces."""
        before = op.stack_before
        if pickletools.markobject in before:
            self.pop_mark()
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        consumed = [self.pop() for _ in range(below)]
        if op.name in _MUTATING_OPS:
            for value in consumed[-1:]:  # the container sits deepest
                self.mutated(value, op.name)
        self.stack.extend(_OTHER for _ in op.stack_after)


def scan_pickle(stream: BinaryIO, subject: str = "pickle", limit: int = MAX_PICKLE_BYTES) -> PickleReport:
    """Scan one pickle from the stream's current position up to and including its STOP opcode,
    leaving the stream just after it (so consecutive pickles can be scanned in turn)."""
    report = PickleReport()
    replay = _Replay(subject, report)
    try:
        for op, arg, pos in pickletools.genops(cast(IO[bytes], _BoundedReader(stream, limit))):
            replay.step(op, arg, pos)
    except _Enough:
        pass
    except PickleTooLarge:
        message = f"is larger than {limit // MiB} MiB of opcodes; refusing to scan it"
        replay.problem("MDL307", message, stop_when_full=False)
    except _Malformed as exc:
        replay.problem("MDL306", f"is malformed: it {exc}", stop_when_full=False)
    except Exception as exc:  # noqa: BLE001 - genops: ValueError, UnicodeDecodeError, struct errors on truncation
        detail = ascii(str(exc))[1:-1][:SHOWN_ERROR_CHARS]
        replay.problem("MDL306", f"is malformed or truncated ({type(exc).__name__}: {detail})", stop_when_full=False)
    return report


def first_pickle_is_int(stream: BinaryIO, value: int, max_ops: int = 8) -> bool:
    """Whether the pickle at the stream's position is exactly one integer equal to `value` (the
    legacy torch.save magic number). Reads at most `max_ops` opcodes."""
    seen: list[tuple[str, object]] = []
    try:
        for count, (op, arg, _pos) in enumerate(pickletools.genops(cast(IO[bytes], _BoundedReader(stream, 4096)))):
            if count >= max_ops:
                return False
            if op.name in ("PROTO", "FRAME", "MEMOIZE", "STOP") or op.name in _PUT_OPS:
                continue
            seen.append((op.name, arg))
    except Exception:  # noqa: BLE001 - untrusted input: any parser error is a finding, never a crash
        return False
    return len(seen) == 1 and seen[0][0] in ("LONG1", "LONG4", "LONG", "INT") and seen[0][1] == value
