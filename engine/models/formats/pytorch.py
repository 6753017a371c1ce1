"""PyTorch weights (.pt, .pth, .bin): pickles, and unpickling runs code.

They are never unpickled until a static scan of their opcodes (`engine.models.pickle_scan`) has
shown that they import only tensor rebuilders and plain containers; only then
`torch.load(weights_only=True)` loads them, as a second gate. TorchScript archives are refused (see
`check_torch_file`).
"""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.models.pickle_scan import MAX_PICKLE_BYTES, first_pickle_is_int, scan_pickle
from engine.models.untrusted import FormatResult, MiB, ModelFolder, Problem, check_weights, show, tensor_details

__all__ = ["RULES", "TORCH_SUFFIXES", "check_pytorch", "check_torch_file", "find_state_dict"]

RULES: dict[str, str] = {
    "MDL310": "not a loadable torch.save file",
    "MDL311": "TorchScript archive",
    "MDL312": "torch refused the file, or it is not a state_dict",
}

MAX_TORCH_ZIP_ENTRIES = 100_000  # torch.save writes one entry per storage, plus a handful
ZIP_CD_BYTES_PER_ENTRY = 1024  # central directory budget per entry: fixed record, name, extras
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "weights", "net")


def _zip_layout_problems(infos: list[zipfile.ZipInfo]) -> list[Problem]:
    """The torch zip as torch's own reader will see it. miniz (torch) and zipfile (this scan) must
    agree on which bytes are data.pkl, so refuse anything they could disagree on: duplicate names,
    data before the first entry, entries outside the single '<name>/' folder torch expects,
    encryption."""
    if not infos:
        return [("MDL310", "is an empty zip archive, not a torch.save file")]
    if len(infos) > MAX_TORCH_ZIP_ENTRIES:
        return [("MDL310", f"zip holds {len(infos)} entries, too many for a torch.save file")]
    names = [i.filename for i in infos]
    problems: list[Problem] = []
    if len(set(names)) != len(names):
        problems.append(("MDL310", "zip holds duplicate entry names; torch and this scan could read different data"))
    if min(i.header_offset for i in infos) != 0:
        problems.append(("MDL310", "zip has data before its first entry; re-save it with torch.save"))
    prefix = names[0].split("/", 1)[0] + "/"
    if prefix == "/" or not all(n.startswith(prefix) for n in names):
        problems.append(("MDL310", "zip entries are not all in one top folder, as torch.save writes them"))
    elif prefix + "data.pkl" not in names:
        problems.append(("MDL310", f"zip has no '{show(prefix)}data.pkl', so it is not a torch.save file"))
    if any(i.flag_bits & 0x1 for i in infos):
        problems.append(("MDL310", "zip holds encrypted entries"))
    return problems


def _is_torchscript(names: list[str]) -> bool:
    inner = [n.split("/", 1)[1] if "/" in n else n for n in names]
    return any(n == "constants.pkl" or n.startswith("code/") for n in inner)


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _zip_directory_problems(path: Path) -> list[Problem]:
    """Entry count and central directory size from the end records, before zipfile reads (and keeps
    in memory) the whole central directory: millions of tiny entries are a memory bomb."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        tail_len = min(size, _EOCD.size + 0xFFFF)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _EOCD.size > len(tail):
            return []  # zipfile reports it as unreadable next
        count, cd_bytes = _EOCD.unpack_from(tail, at)[4:6]
        locator = at - _ZIP64_LOCATOR.size
        if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
            fh.seek(_ZIP64_LOCATOR.unpack_from(tail, locator)[2])
            record = fh.read(_ZIP64_EOCD.size)
            if len(record) == _ZIP64_EOCD.size and record[:4] == b"PK\x06\x06":
                count, cd_bytes = _ZIP64_EOCD.unpack(record)[7:9]
    if count > MAX_TORCH_ZIP_ENTRIES or cd_bytes > MAX_TORCH_ZIP_ENTRIES * ZIP_CD_BYTES_PER_ENTRY:
        message = f"zip declares {count} entries in a {cd_bytes}-byte directory, too many for a torch.save file"
        return [("MDL310", message)]
    return []


def _scan_torch_zip(path: Path) -> list[Problem]:
    problems = _zip_directory_problems(path)
    if problems:
        return problems
    try:
        zf = zipfile.ZipFile(path)
    except Exception as exc:  # noqa: BLE001 - untrusted input: any parser error is a finding, never a crash
        return [("MDL310", f"starts like a zip but is not a readable one ({type(exc).__name__}: {show(str(exc))})")]
    with zf:
        infos = zf.infolist()
        problems = _zip_layout_problems(infos)
        if problems:
            return problems
        if _is_torchscript([i.filename for i in infos]):
            return [(
                "MDL311",
                "is a TorchScript archive (constants.pkl, code/): TorchScript is not accepted, because loading it "
                "compiles and runs the program inside the archive; upload the weights instead "
                "(torch.save(model.state_dict(), 'model.pt'), safetensors or ONNX)",
            )]
        for info in infos:
            if info.filename.endswith(".pkl"):
                problems += _scan_zip_pickle(zf, info)
    return problems


def _scan_zip_pickle(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> list[Problem]:
    """Read the entry whole (bounded by its declared size, CRC checked), then scan it in memory."""
    main = info.filename.split("/", 1)[-1] == "data.pkl"  # the pickle torch.load unpickles
    subject = "pickle" if main else f"pickle '{show(info.filename)}'"
    if info.file_size > MAX_PICKLE_BYTES:
        return [("MDL307", f"{subject} is {info.file_size} bytes, above the {MAX_PICKLE_BYTES // MiB} MiB limit")]
    try:
        data = zf.read(info)
    except Exception as exc:  # noqa: BLE001 - corrupt zip entry (bad local header, CRC, compression)
        return [("MDL310", f"{subject} cannot be read from the zip ({type(exc).__name__}: {show(str(exc))})")]
    return scan_pickle(io.BytesIO(data), subject).problems


def _scan_torch_legacy(path: Path) -> list[Problem]:
    """The pre-zip torch.save format: five pickles back to back (magic number, protocol version,
    system info, the data, storage keys), then raw storage bytes. All five are scanned."""
    try:
        with tarfile.open(path, mode="r:"):
            pass
        message = "is in the pre-1.0 tar-based torch format, which is not accepted; re-save it with torch.save"
        return [("MDL310", message)]
    except Exception:  # noqa: BLE001 - untrusted input: any parser error is a finding, never a crash
        pass  # not a tar: good
    with open(path, "rb") as fh:
        if not first_pickle_is_int(fh, LEGACY_TORCH_MAGIC):
            fh.seek(0)
            problems = scan_pickle(fh, "pickle").problems
            return problems or [(
                "MDL310",
                "is neither a torch zip archive nor a legacy torch.save file (no torch magic number); "
                "save it with torch.save(model.state_dict(), path)",
            )]
        fh.seek(0)
        problems = []
        for _ in range(5):
            report = scan_pickle(fh, "pickle")
            problems += report.problems
            if report.problems:
                break  # refused; and the scan may have stopped mid-pickle
        return problems


def find_state_dict(obj: object) -> tuple[Mapping[str, Any] | None, str | None]:
    """A mapping of str -> tensor, at the top or under one key ({"state_dict": {...}}, {"model": ...})."""
    import torch

    def is_tensor_map(value: object) -> bool:
        return (
            isinstance(value, Mapping)
            and len(value) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
        )

    if is_tensor_map(obj):
        return obj, None  # type: ignore[return-value]
    if not isinstance(obj, Mapping):
        return None, None
    for key in STATE_DICT_KEYS:
        if is_tensor_map(obj.get(key)):
            return obj[key], key
    nested = [k for k, v in obj.items() if isinstance(k, str) and is_tensor_map(v)]
    if len(nested) == 1:
        return obj[nested[0]], nested[0]
    return None, None


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        kinds = sorted({type(v).__name__ for v in obj.values()})
        return f"a mapping of {len(obj)} entries whose values are {', '.join(kinds) or 'nothing'}"
    return f"a {type(obj).__name__}"


def _tensor_details(tensors: Mapping[str, Any]) -> dict[str, Any]:
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    return tensor_details(len(tensors), sum(int(t.numel()) for t in tensors.values()), dtypes)


def _load_state_dict(path: Path, mmap: bool) -> tuple[list[Problem], dict[str, Any]]:
    """The second gate, after a clean scan: torch's own weights-only unpickler."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - untrusted input: any parser error is a finding, never a crash
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"torch could not load it with weights_only=True ({type(exc).__name__}: {show(first_line)})"
        return [("MDL312", message)], {}
    tensors, key = find_state_dict(obj)
    if tensors is None:
        message = (
            "is not a state_dict: expected a mapping of str -> tensor (or one such mapping under a key such "
            f"as 'state_dict' or 'model'), got {_describe(obj)}"
        )
        return [("MDL312", message)], {}
    details = {"kind": "state_dict", **_tensor_details(tensors)}
    if key is not None:
        details["key"] = key
    return [], details


def check_torch_file(path: Path) -> tuple[list[Problem], dict[str, Any]]:
    """Scan a .pt/.pth/.bin file's pickles, and only if they are clean, load it weights-only.

    Torch zip (what torch.save writes since 1.6): every `.pkl` inside is scanned. Legacy
    (non-zip) torch.save files: the five leading pickles are scanned. A plain pickle is scanned
    and then refused (torch cannot load it either).

    TorchScript is refused. Its `code/` folder is TorchScript source that `torch.jit.load` compiles
    and runs: it is not Python, but it can call every registered torch operator, including ones that
    read and write files (`aten::from_file`, `aten::save`) and custom ops of any library loaded in the
    worker; the C++ deserializer is also a far larger attack surface than the weights-only unpickler,
    and torch itself refuses TorchScript under weights_only=True. A model that is only weights needs
    none of it."""
    path = Path(path)
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"  # exactly torch's own test (serialization._is_zipfile)
    problems = _scan_torch_zip(path) if is_zip else _scan_torch_legacy(path)
    if problems:
        return problems, {}
    return _load_state_dict(path, mmap=is_zip)


def check_pytorch(folder: ModelFolder) -> FormatResult:
    what = "PyTorch weights file (.pt, .pth or .bin)"
    findings, details = check_weights(folder, TORCH_SUFFIXES, what, check_torch_file)
    return findings, {"kind": "state_dict", **details}
