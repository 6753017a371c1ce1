"""Validate an uploaded model archive before the model registry accepts it.

Threat model. Anyone allowed to upload a model controls every byte of the archive, and the weights
end up loaded inside workers that hold data and credentials. Nothing in an upload may ever run, and
nothing in it may write, or make us read, outside the folder it is unpacked into. Concretely:

* the archive (.tar.gz, .tgz or plain .tar, told apart by content) may try path traversal ('..',
  absolute paths, links, devices), collisions (duplicates, a file that is also a folder), resource
  exhaustion (member count, declared and real sizes, huge headers) and odd names. Members are
  checked one by one before anything is written; extraction then also goes through tarfile's
  "data" filter, counts the bytes that really land on disk, and resets permissions (0o644 / 0o755:
  no setuid, no exec bits);
* PyTorch files are pickles, and unpickling runs code. They are never unpickled until a static scan
  of their opcodes (`engine.models.pickle_scan`) has shown that they import only tensor rebuilders
  and plain containers; only then `torch.load(weights_only=True)` loads them, as a second gate.
  TorchScript archives are refused (see `check_torch_file`);
* safetensors headers are checked in pure Python (bounds, dtypes, sizes, overlapping or uncovered
  offsets) before the library opens the file;
* ONNX files may point initializers at "external data" files anywhere on disk: every location is
  checked lexically (relative, no '..') and then against the extracted folder, before anything
  reads external data or runs the checker;
* Hugging Face folders may carry Python code (`auto_map`, `modeling_*.py`) that `transformers` runs
  with trust_remote_code; that code is refused, never run.

`validate_model_archive` gathers every finding it can and raises `ModelRejected` with all of them,
leaving `dest` empty (or removed, if it created it): nothing half-extracted survives a refusal.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import shutil
import stat
import struct
import tarfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from engine.models.pickle_scan import MAX_PICKLE_BYTES, first_pickle_is_int, scan_pickle
from engine.models.pickle_scan import RULES as PICKLE_RULES

__all__ = [
    "MODEL_FORMATS",
    "ModelFinding",
    "ModelLimits",
    "ModelRejected",
    "ValidatedModel",
    "check_onnx_file",
    "check_safetensors_file",
    "check_torch_file",
    "extract_archive",
    "validate_model_archive",
]

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@dataclass(frozen=True)
class ModelLimits:
    max_archive_bytes: int = 10 * GiB  # compressed
    max_unpacked_bytes: int = 20 * GiB
    max_members: int = 10_000
    max_path_depth: int = 32
    max_name_bytes: int = 255  # per path component, UTF-8


@dataclass(frozen=True)
class ModelFinding:
    """One reason to refuse. `file` is the path inside the archive ("" for the archive itself)."""

    rule_id: str
    file: str
    message: str


class ModelRejected(Exception):
    """The upload is refused; `findings` lists every reason found."""

    def __init__(self, findings: list[ModelFinding]) -> None:
        self.findings = list(findings)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "model rejected:\n" + "\n".join(f"{f.file or '(archive)'}: {f.message}" for f in self.findings)


@dataclass
class ValidatedModel:
    root: Path  # the model folder: dest, or dest/<top> when one folder wraps everything
    model_format: str  # pytorch | safetensors | onnx | huggingface
    files: list[str]  # posix paths relative to root, sorted
    total_bytes: int
    sha256: str  # of the archive bytes
    details: dict[str, Any] = field(default_factory=dict)


MODEL_FORMATS = ("pytorch", "safetensors", "onnx", "huggingface")

# rule_id -> title. 1xx archive, 2xx model layout, 3xx pickle content (engine.models.pickle_scan),
# 31x torch files, 4xx safetensors, 5xx ONNX, 6xx Hugging Face.
RULES: dict[str, str] = {
    "MDL101": "not a .tar.gz archive",
    "MDL102": "archive too large",
    "MDL103": "archive is empty",
    "MDL104": "too many members",
    "MDL105": "too much data once extracted",
    "MDL110": "absolute path",
    "MDL111": "path climbs out of the archive ('..')",
    "MDL112": "odd member name",
    "MDL113": "name component too long",
    "MDL114": "path nested too deep",
    "MDL115": "path resolves outside the destination",
    "MDL120": "symbolic link",
    "MDL121": "hard link",
    "MDL122": "special member (device, fifo, other)",
    "MDL130": "duplicate member",
    "MDL131": "path is both a file and a folder",
    "MDL140": "extraction failed",
    "MDL200": "unknown model format",
    "MDL201": "no weights file for the format",
    **PICKLE_RULES,
    "MDL310": "not a loadable torch.save file",
    "MDL311": "TorchScript archive",
    "MDL312": "torch refused the file, or it is not a state_dict",
    "MDL401": "bad safetensors header",
    "MDL402": "bad safetensors tensor entry",
    "MDL403": "safetensors offsets overlap or leave gaps",
    "MDL404": "safetensors library refused the file",
    "MDL501": "not a readable ONNX model",
    "MDL502": "ONNX external data outside the archive or out of bounds",
    "MDL503": "ONNX checker failed",
    "MDL601": "Hugging Face config.json missing or invalid",
    "MDL602": "Hugging Face remote code (auto_map)",
    "MDL603": "code file in a Hugging Face folder",
    "MDL999": "too many findings",
}

MAX_FINDINGS = 100
MAX_FINDINGS_PER_FILE = 20
SHOWN_CHARS = 200
MAX_SINGLE_READ = 16 * MiB  # tar headers (pax, GNU long names) are read in one call: bound them
TAR_OVERHEAD_PER_MEMBER = 8 * 512  # header, pax header, padding
MAX_TORCH_ZIP_ENTRIES = 100_000  # torch.save writes one entry per storage, plus a handful
ZIP_CD_BYTES_PER_ENTRY = 1024  # central directory budget per entry: fixed record, name, extras
MAX_JSON_BYTES = 64 * MiB
SAFETENSORS_MAX_HEADER = 100 * 1000 * 1000
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".pyx", ".so")
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "weights", "net")
ONNX_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})

_NOT_TAR_MAGIC: dict[bytes, str] = {
    b"PK\x03\x04": "a zip file",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"7z\xbc\xaf\x27\x1c": "a 7z archive",
    b"Rar!\x1a\x07": "a rar archive",
}
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)

# safetensors dtype -> bits per element (sub-byte float types pack, so sizes are computed in bits)
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

Problem = tuple[str, str]  # (rule_id, message) about one file; the caller knows which file


def _show(text: str) -> str:
    """Attacker-chosen text (names, exception messages) as one printable line of bounded length."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c) & 0xFF:02x}" for c in text)
    return shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS] + "..."


def _capped(findings: list[ModelFinding]) -> list[ModelFinding]:
    if len(findings) <= MAX_FINDINGS:
        return findings
    left_out = len(findings) - MAX_FINDINGS + 1
    return findings[: MAX_FINDINGS - 1] + [ModelFinding("MDL999", "", f"{left_out} more findings not shown")]


def _as_findings(file: str, problems: list[Problem]) -> list[ModelFinding]:
    shown = problems[:MAX_FINDINGS_PER_FILE]
    found = [ModelFinding(rule_id, file, message) for rule_id, message in shown]
    if len(problems) > len(shown):
        found.append(ModelFinding("MDL999", file, f"{len(problems) - len(shown)} more problems not shown"))
    return found


# --- destination folder ----------------------------------------------------------------------------

def _prepare_dest(dest: Path) -> bool:
    """Make sure dest is an empty folder; return whether we created it. A non-empty dest is a caller
    bug, not a bad upload: its files are not ours to delete."""
    if dest.exists() or dest.is_symlink():
        if dest.is_symlink() or not dest.is_dir() or any(os.scandir(dest)):
            raise ValueError(f"extraction target must be an empty folder or not exist: {dest}")
        return False
    dest.mkdir(parents=True)
    return True


def _clear(dest: Path, remove: bool) -> None:
    """Leave nothing behind: remove dest, or empty it when the caller owns the folder."""
    if not dest.is_dir() or dest.is_symlink():
        return
    if remove:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for entry in os.scandir(dest):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)


# --- reading the tar stream ------------------------------------------------------------------------

class _TooMuchData(Exception):
    pass


class _BoundedStream:
    """What tarfile reads through: refuses single reads above MAX_SINGLE_READ (a pax header claiming
    gigabytes) and positions past `cap` (decompressed data beyond what the limits allow)."""

    def __init__(self, raw: BinaryIO, cap: int) -> None:
        self._raw = raw
        self._cap = cap
        self.mode = "rb"

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > MAX_SINGLE_READ:
            raise _TooMuchData(f"a single header or record of {n} bytes")
        data = self._raw.read(n)
        if self._raw.tell() > self._cap:
            raise _TooMuchData(f"more than {self._cap} bytes once decompressed")
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET and offset > self._cap:  # seeking a gzip stream decompresses up to there
            raise _TooMuchData(f"more than {self._cap} bytes once decompressed")
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _sniff(archive: Path) -> tuple[bool, str | None]:
    """(is gzip, reason it is certainly not a tar). Decided by content: names can lie."""
    with open(archive, "rb") as fh:
        head = fh.read(8)
    if not head:
        return False, "the file is empty"
    if head.startswith(b"\x1f\x8b"):
        return True, None
    for magic, what in _NOT_TAR_MAGIC.items():
        if head.startswith(magic):
            return False, f"the file is {what}; upload a .tar.gz made with `tar czf model.tar.gz <folder>`"
    return False, None


# --- member checks (nothing written yet) -----------------------------------------------------------

@dataclass
class _Member:
    info: tarfile.TarInfo
    path: str  # normalised: no leading './', '' for the archive's own '.' folder
    is_dir: bool


def _normalise(name: str) -> str:
    parts = name.split("/")
    while parts and parts[0] == ".":
        parts.pop(0)
    return "/".join(parts)


def _name_problems(name: str, path: str, is_dir: bool, limits: ModelLimits) -> list[Problem]:
    """Names that would write outside dest, or that no file system stores faithfully."""
    found: list[Problem] = []
    if not path and not is_dir:
        found.append(("MDL112", "a file with an empty name"))
    if "\x00" in name:
        found.append(("MDL112", "name contains a NUL byte"))
    if "\\" in name:
        found.append(("MDL112", "name contains a backslash; tar paths use '/'"))
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        found.append(("MDL112", "name contains control characters"))
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in name):
        found.append(("MDL112", "name is not valid UTF-8"))
    if name.startswith("/") or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        found.append(("MDL110", "absolute path; paths must be relative to the archive"))
        path = path.lstrip("/")  # reported once, not again as an empty component
    parts = path.split("/") if path else []
    if ".." in parts:
        found.append(("MDL111", "path climbs out of the archive ('..')"))
    if any(p in ("", ".") for p in parts):
        found.append(("MDL112", "path has an empty or '.' component"))
    if len(parts) > limits.max_path_depth:
        found.append(("MDL114", f"path is {len(parts)} levels deep, the limit is {limits.max_path_depth}"))
    longest = max((len(p.encode("utf-8", "surrogateescape")) for p in parts), default=0)
    if longest > limits.max_name_bytes:
        found.append(("MDL113", f"a path component is {longest} bytes, the limit is {limits.max_name_bytes}"))
    return found


def _type_problems(info: tarfile.TarInfo) -> list[Problem]:
    """Only regular files and folders: links and devices would reach outside dest or the host."""
    if info.issym():
        return [("MDL120", f"symbolic link (to '{_show(info.linkname)}'); links are not allowed")]
    if info.islnk():
        return [("MDL121", f"hard link (to '{_show(info.linkname)}'); links are not allowed")]
    if info.ischr() or info.isblk():
        return [("MDL122", "device file; only regular files and folders are allowed")]
    if info.isfifo():
        return [("MDL122", "fifo; only regular files and folders are allowed")]
    if info.type not in _FILE_TYPES and not info.isdir():
        return [("MDL122", f"unsupported member type {info.type!r}; only regular files and folders are allowed")]
    return []


def _outside(dest_real: str, path: str) -> bool:
    target = os.path.realpath(os.path.join(dest_real, path))
    return target != dest_real and not target.startswith(dest_real + os.sep)


def _read_members(tf: tarfile.TarFile, limits: ModelLimits) -> tuple[list[tarfile.TarInfo], list[ModelFinding]]:
    """Walk the headers (tarfile reads them one at a time and keeps them), stopping at the first
    member over max_members or over max_unpacked_bytes in declared sizes: tarfile seeks past each
    member's data to reach the next header, and in a gzip stream seeking means decompressing, so
    the walk must stop before a member that declares terabytes rather than after."""
    infos: list[tarfile.TarInfo] = []
    declared = 0
    while True:
        try:
            info = tf.next()
        except _TooMuchData as exc:
            return infos, [ModelFinding("MDL105", "", f"the archive expands too far: {exc}")]
        except Exception as exc:  # untrusted bytes: any parse failure means a corrupt archive
            detail = f"{type(exc).__name__}: {_show(str(exc))}"
            message = f"not a .tar.gz archive: corrupt after {len(infos)} members ({detail})"
            return infos, [ModelFinding("MDL101", "", message)]
        if info is None:
            return infos, []
        if len(infos) >= limits.max_members:
            message = f"the archive has more than {limits.max_members} members, the limit"
            return infos, [ModelFinding("MDL104", "", message)]
        infos.append(info)
        declared += max(info.size, 0) if info.type in _FILE_TYPES else 0
        if declared > limits.max_unpacked_bytes:
            message = f"members declare {declared}+ bytes once extracted, the limit is {limits.max_unpacked_bytes}"
            return infos, [ModelFinding("MDL105", _show(info.name), message)]


Checked = tuple[list[_Member], list[ModelFinding]]
Extracted = tuple[list[str], list[ModelFinding]]
FormatResult = tuple[list[ModelFinding], dict[str, Any]]


def _check_members(infos: list[tarfile.TarInfo], dest_real: str, limits: ModelLimits) -> Checked:
    """Every member on its own (name, type), then across members (duplicates, file-versus-folder
    conflicts). Returns the members to extract, and findings."""
    members: list[_Member] = []
    findings: list[ModelFinding] = []
    seen: set[str] = set()
    for info in infos:
        path = _normalise(info.name)
        problems = _name_problems(info.name, path, info.isdir(), limits) + _type_problems(info)
        if not problems and path and _outside(dest_real, path):
            problems.append(("MDL115", "path resolves outside the destination folder"))
        if not problems and path in seen:
            problems.append(("MDL130", "duplicate member: the path appears more than once"))
        findings += _as_findings(_show(info.name), problems)
        seen.add(path)
        members.append(_Member(info, path, info.isdir()))
    return members, findings + _conflicts(members)


def _conflicts(members: list[_Member]) -> list[ModelFinding]:
    files = {m.path for m in members if not m.is_dir}
    found = []
    for m in members:
        parts = m.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                message = f"path is inside '{_show(parent)}', which is a file"
                found.append(ModelFinding("MDL131", _show(m.info.name), message))
                break
    return found


# --- extraction ------------------------------------------------------------------------------------

def _extract_members(tf: tarfile.TarFile, members: list[_Member], dest: Path, limits: ModelLimits) -> Extracted:
    """Write the checked members through tarfile's "data" filter (the stdlib's own checks), counting
    the bytes that land on disk; then reset permissions."""
    tf.errorlevel = 2  # every extraction problem raises, none is only logged
    written = 0
    files: list[str] = []
    for m in members:
        if not m.path:
            continue  # the archive's own './' folder is dest
        try:
            tf.extract(m.info, path=dest, set_attrs=False, filter="data")
        except _TooMuchData as exc:
            return files, [ModelFinding("MDL105", _show(m.info.name), f"the archive expands too far: {exc}")]
        except Exception as exc:
            detail = f"{type(exc).__name__}: {_show(str(exc))}"
            return files, [ModelFinding("MDL140", _show(m.info.name), f"extraction failed ({detail})")]
        if m.is_dir:
            continue
        st = os.lstat(dest / m.path)
        written += st.st_size
        if not stat.S_ISREG(st.st_mode) or st.st_size != m.info.size:
            message = f"extracted {st.st_size} bytes where the header declares {m.info.size}"
            return files, [ModelFinding("MDL140", _show(m.info.name), message)]
        if written > limits.max_unpacked_bytes:
            message = f"more than {limits.max_unpacked_bytes} bytes written, the limit"
            return files, [ModelFinding("MDL105", _show(m.info.name), message)]
        files.append(m.path)
    problem = _reset_permissions(dest)
    return sorted(files), [problem] if problem else []


def _reset_permissions(dest: Path) -> ModelFinding | None:
    """Files 0o644, folders 0o755, whatever the archive said: no setuid, no exec bits. Anything else
    found on disk (it cannot be there) aborts."""
    os.chmod(dest, 0o755)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                os.chmod(path, 0o755)
            elif stat.S_ISREG(mode):
                os.chmod(path, 0o644)
            else:
                message = "extraction produced something that is not a file or folder"
                return ModelFinding("MDL140", os.path.relpath(path, dest), message)
    return None


def _extract(archive: Path, dest: Path, limits: ModelLimits) -> Extracted:
    size = archive.stat().st_size
    if size > limits.max_archive_bytes:
        return [], [ModelFinding("MDL102", "", f"the archive is {size} bytes, the limit is {limits.max_archive_bytes}")]
    is_gzip, not_tar = _sniff(archive)
    if not_tar:
        return [], [ModelFinding("MDL101", "", f"not a .tar.gz archive: {not_tar}")]
    cap = limits.max_unpacked_bytes + (limits.max_members + 2) * TAR_OVERHEAD_PER_MEMBER + MiB
    with open(archive, "rb") as raw:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw  # type: ignore[assignment]
        try:
            tf = tarfile.open(fileobj=_BoundedStream(stream, cap), mode="r:")  # type: ignore[arg-type]
        except _TooMuchData as exc:
            return [], [ModelFinding("MDL105", "", f"the archive expands too far: {exc}")]
        except Exception as exc:  # ReadError, BadGzipFile, EOFError, zlib.error, ...
            detail = f"{type(exc).__name__}: {_show(str(exc))}"
            what = "gzip data is corrupt or it is not a tar inside" if is_gzip else "no tar header"
            return [], [ModelFinding("MDL101", "", f"not a .tar.gz archive: {what} ({detail})")]
        with tf:
            infos, walk_findings = _read_members(tf, limits)
            members, findings = _check_members(infos, os.path.realpath(dest), limits)
            if walk_findings or findings:  # nothing has been written yet
                return [], walk_findings + findings
            if all(m.is_dir for m in members):
                return [], [ModelFinding("MDL103", "", "the archive holds no files")]
            return _extract_members(tf, members, dest, limits)


def extract_archive(archive: Path, dest: Path, limits: ModelLimits = ModelLimits()) -> list[str]:
    """Unpack a model archive into `dest` (created if missing, else it must be empty) and return the
    extracted files' paths as in the archive (posix, no leading './'), sorted. Every member is checked
    before anything is written; raises ModelRejected with every finding, leaving dest empty (removed
    if this call created it)."""
    archive, dest = Path(archive), Path(dest)
    created = _prepare_dest(dest)
    try:
        files, findings = _extract(archive, dest, limits)
    except BaseException:
        _clear(dest, remove=created)
        raise
    if findings:
        _clear(dest, remove=created)
        raise ModelRejected(_capped(findings))
    return files


# --- PyTorch ---------------------------------------------------------------------------------------

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
        problems.append(("MDL310", f"zip has no '{_show(prefix)}data.pkl', so it is not a torch.save file"))
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
    except Exception as exc:
        return [("MDL310", f"starts like a zip but is not a readable one ({type(exc).__name__}: {_show(str(exc))})")]
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
    subject = "pickle" if main else f"pickle '{_show(info.filename)}'"
    if info.file_size > MAX_PICKLE_BYTES:
        return [("MDL307", f"{subject} is {info.file_size} bytes, above the {MAX_PICKLE_BYTES // MiB} MiB limit")]
    try:
        data = zf.read(info)
    except Exception as exc:  # corrupt zip entry (bad local header, CRC, compression)
        return [("MDL310", f"{subject} cannot be read from the zip ({type(exc).__name__}: {_show(str(exc))})")]
    return scan_pickle(io.BytesIO(data), subject).problems


def _scan_torch_legacy(path: Path) -> list[Problem]:
    """The pre-zip torch.save format: five pickles back to back (magic number, protocol version,
    system info, the data, storage keys), then raw storage bytes. All five are scanned."""
    try:
        with tarfile.open(path, mode="r:"):
            pass
        message = "is in the pre-1.0 tar-based torch format, which is not accepted; re-save it with torch.save"
        return [("MDL310", message)]
    except Exception:
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
        problems: list[Problem] = []
        for _ in range(5):
            report = scan_pickle(fh, "pickle")
            problems += report.problems
            if report.problems:
                break  # refused; and the scan may have stopped mid-pickle
        return problems


def _find_state_dict(obj: object) -> tuple[Mapping[str, Any] | None, str | None]:
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
    return {
        "tensors": len(tensors),
        "parameters": sum(int(t.numel()) for t in tensors.values()),
        "dtype": dtypes[0] if len(dtypes) == 1 else "mixed",
        "dtypes": dtypes,
    }


def _load_state_dict(path: Path, mmap: bool) -> tuple[list[Problem], dict[str, Any]]:
    """The second gate, after a clean scan: torch's own weights-only unpickler."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        message = f"torch could not load it with weights_only=True ({type(exc).__name__}: {_show(first_line)})"
        return [("MDL312", message)], {}
    tensors, key = _find_state_dict(obj)
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


# --- safetensors -----------------------------------------------------------------------------------

def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of duplicate keys; the Rust parser may not: refuse the ambiguity."""
    counts = Counter(k for k, _ in pairs)
    duplicates = sorted(k for k, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate keys {', '.join(repr(_show(k)) for k in duplicates[:5])}")
    return dict(pairs)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_problems(name: str, spec: object, data_len: int) -> tuple[list[Problem], tuple[int, int] | None, int]:
    """One tensor entry: ([problems], its [begin, end) span, its element count)."""
    label = f"tensor '{_show(name)}'"
    if not isinstance(spec, dict):
        return [("MDL402", f"{label}: entry is not a JSON object")], None, 0
    if set(spec) != {"dtype", "shape", "data_offsets"}:
        message = f"{label}: entry keys must be dtype, shape and data_offsets, got {sorted(map(str, spec))}"
        return [("MDL402", message)], None, 0
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    problems: list[Problem] = []
    if dtype not in SAFETENSORS_DTYPE_BITS:
        problems.append(("MDL402", f"{label}: unknown dtype {_show(repr(dtype))}"))
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        problems.append(("MDL402", f"{label}: shape must be a list of non-negative integers, got {_show(repr(shape))}"))
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        problems.append(("MDL402", f"{label}: data_offsets must be [begin, end] integers, got {_show(repr(offsets))}"))
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
            problems.append(("MDL403", f"tensors '{_show(last)}' and '{_show(name)}' overlap ({span})"))
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
        return [("MDL401", f"header is not valid JSON ({type(exc).__name__}: {_show(str(exc))})")], {}, 0
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
    ordered = sorted(dtypes)
    dtype = ordered[0] if len(ordered) == 1 else "mixed"
    return [], {"tensors": len(spans), "parameters": parameters, "dtype": dtype, "dtypes": ordered}


def _safe_open_problems(path: Path) -> list[Problem]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            list(f.keys())
    except Exception as exc:
        return [("MDL404", f"the safetensors library refused it ({type(exc).__name__}: {_show(str(exc))})")]
    return []


# --- ONNX ------------------------------------------------------------------------------------------

def _graph_tensors(graph: Any, where: str) -> Iterator[tuple[str, Any]]:
    for t in graph.initializer:
        yield f"{where}initializer '{_show(t.name)}'", t
    for st in graph.sparse_initializer:
        yield f"{where}sparse initializer '{_show(st.values.name)}'", st.values
        yield f"{where}sparse initializer '{_show(st.values.name)}' indices", st.indices
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    label = f"{where}node '{_show(node.name or node.op_type)}'"
    for attr in node.attribute:
        if attr.HasField("t"):
            yield f"{label} attribute '{_show(attr.name)}'", attr.t
        for t in attr.tensors:
            yield f"{label} attribute '{_show(attr.name)}'", t
        sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for st in [*sparse, *attr.sparse_tensors]:
            yield f"{label} attribute '{_show(attr.name)}'", st.values
            yield f"{label} attribute '{_show(attr.name)}' indices", st.indices
        subgraphs = [attr.g] if attr.HasField("g") else []
        for g in [*subgraphs, *attr.graphs]:
            yield from _graph_tensors(g, f"{label} subgraph: ")


def _model_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Every TensorProto a model can hold: graph, subgraphs, functions, training graphs."""
    yield from _graph_tensors(model.graph, "")
    for fn in model.functions:
        for node in fn.node:
            yield from _node_tensors(node, f"function '{_show(fn.name)}' ")
    for info in model.training_info:
        yield from _graph_tensors(info.initialization, "training initialization: ")
        yield from _graph_tensors(info.algorithm, "training algorithm: ")


def _external_location_problems(label: str, location: str, model_dir: str, root_real: str) -> tuple[list[Problem], str]:
    """Lexical checks first (nothing outside is ever touched, not even stat'ed), then resolution
    against the extracted folder. Returns (problems, resolved path)."""
    where = f"{label} stores its data at '{_show(location)}'"
    if not location or "\x00" in location or "\\" in location:
        return [("MDL502", f"{where}, which is not a plain relative path")], ""
    posix = PurePosixPath(location)
    if posix.is_absolute() or (len(location) > 1 and location[1] == ":"):
        return [("MDL502", f"{where}, an absolute path outside the archive")], ""
    if ".." in posix.parts:
        return [("MDL502", f"{where}, outside the archive")], ""
    target = os.path.realpath(os.path.join(model_dir, location))
    if not target.startswith(root_real + os.sep):
        return [("MDL502", f"{where}, outside the archive")], ""
    if not os.path.isfile(target):
        return [("MDL502", f"{where}, which is not a file in the archive")], ""
    return [], target


def _external_data_problems(label: str, tensor: Any, model_dir: str, root_real: str) -> list[Problem]:
    entries = [(e.key, e.value) for e in tensor.external_data]
    info = dict(entries)
    if len(info) != len(entries) or set(info) - ONNX_EXTERNAL_KEYS:
        keys = sorted(_show(k) for k, _ in entries)
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
        where = f"'{_show(info['location'])}'"
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
    except Exception as exc:
        return [("MDL501", f"is not a readable ONNX model ({type(exc).__name__}: {_show(str(exc))})")], {}
    model_dir, root_real = os.path.realpath(path.parent), os.path.realpath(root)
    problems: list[Problem] = []
    for label, tensor in _model_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            problems += _external_data_problems(label, tensor, model_dir, root_real)
    if problems:
        return problems, {}
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        return [("MDL503", f"fails the ONNX checker ({type(exc).__name__}: {_show(str(exc))})")], {}
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


# --- formats ---------------------------------------------------------------------------------------

@dataclass
class _Folder:
    """The extracted model: `root` on disk, files relative to it, and the prefix that turns them back
    into archive paths for findings."""

    root: Path
    files: list[str]
    prefix: str

    def archive_path(self, rel: str) -> str:
        return self.prefix + rel

    def with_suffix(self, *suffixes: str) -> list[str]:
        return [f for f in self.files if f.lower().endswith(suffixes)]


def _model_folder(dest: Path, archive_files: list[str]) -> _Folder:
    """Look inside a single top-level folder wrapping everything (`my-model/model.pt`)."""
    tops = {f.split("/", 1)[0] for f in archive_files}
    if len(tops) == 1 and all("/" in f for f in archive_files):
        top = tops.pop()
        return _Folder(dest / top, [f[len(top) + 1 :] for f in archive_files], top + "/")
    return _Folder(dest, list(archive_files), "")


def _merge_tensor_details(per_file: dict[str, dict[str, Any]]) -> dict[str, Any]:
    dtypes = sorted({d for details in per_file.values() for d in details.get("dtypes", [])})
    return {
        "tensors": sum(d.get("tensors", 0) for d in per_file.values()),
        "parameters": sum(d.get("parameters", 0) for d in per_file.values()),
        "dtype": dtypes[0] if len(dtypes) == 1 else "mixed",
        "files": per_file,
    }


FileCheck = Callable[[Path], tuple[list[Problem], dict[str, Any]]]


def _check_each(folder: _Folder, rels: list[str], check: FileCheck) -> tuple[list[ModelFinding], dict[str, Any]]:
    findings: list[ModelFinding] = []
    per_file: dict[str, dict[str, Any]] = {}
    for rel in rels:
        problems, details = check(folder.root / rel)
        findings += _as_findings(folder.archive_path(rel), problems)
        if not problems:
            per_file[rel] = details
    return findings, per_file


def _missing(what: str) -> ModelFinding:
    return ModelFinding("MDL201", "", f"the archive holds no {what}")


def _check_pytorch(folder: _Folder) -> FormatResult:
    weights = folder.with_suffix(*TORCH_SUFFIXES)
    if not weights:
        return [_missing("PyTorch weights file (.pt, .pth or .bin)")], {}
    findings, per_file = _check_each(folder, weights, check_torch_file)
    return findings, {"kind": "state_dict", **_merge_tensor_details(per_file)}


def _check_safetensors(folder: _Folder) -> FormatResult:
    weights = folder.with_suffix(".safetensors")
    if not weights:
        return [_missing(".safetensors file")], {}
    findings, per_file = _check_each(folder, weights, check_safetensors_file)
    return findings, _merge_tensor_details(per_file)


def _check_onnx(folder: _Folder) -> FormatResult:
    models = folder.with_suffix(".onnx")
    if not models:
        return [_missing(".onnx file")], {}
    findings, per_file = _check_each(folder, models, lambda p: check_onnx_file(p, folder.root))
    details = next(iter(per_file.values())) if len(per_file) == 1 else {}
    return findings, {**details, "files": per_file}


def _read_json_object(path: Path) -> tuple[dict[str, Any] | None, str]:
    if path.stat().st_size > MAX_JSON_BYTES:
        return None, f"is larger than {MAX_JSON_BYTES // MiB} MiB"
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        return None, f"is not valid JSON ({type(exc).__name__}: {_show(str(exc))})"
    if not isinstance(value, dict):
        return None, f"is a JSON {type(value).__name__}, not an object"
    return value, ""


def _hf_config(folder: _Folder) -> FormatResult:
    name = folder.archive_path("config.json")
    if "config.json" not in folder.files:
        message = "config.json is missing: a Hugging Face model folder needs one at its top"
        return [ModelFinding("MDL601", name, message)], {}
    config, why = _read_json_object(folder.root / "config.json")
    if config is None:
        return [ModelFinding("MDL601", name, f"config.json {why}")], {}
    if not config.get("model_type") and not config.get("architectures"):
        return [ModelFinding("MDL601", name, "config.json names neither model_type nor architectures")], {}
    return [], {"model_type": config.get("model_type"), "architectures": config.get("architectures")}


def _hf_remote_code(folder: _Folder) -> list[ModelFinding]:
    """auto_map in any *config.json points transformers at Python files; code files are refused
    wherever they are."""
    found: list[ModelFinding] = []
    for rel in folder.with_suffix(".json"):
        if "/" in rel or not rel.lower().endswith("config.json"):
            continue
        config, _ = _read_json_object(folder.root / rel)
        if config is not None and "auto_map" in config:
            message = f"{rel} has auto_map, which loads custom Python code (trust_remote_code is never used)"
            found.append(ModelFinding("MDL602", folder.archive_path(rel), message))
    for rel in folder.with_suffix(*CODE_SUFFIXES):
        message = "Hugging Face folders may not carry code (trust_remote_code is never used)"
        found.append(ModelFinding("MDL603", folder.archive_path(rel), message))
    return found


def _check_huggingface(folder: _Folder) -> FormatResult:
    findings, details = _hf_config(folder)
    findings += _hf_remote_code(folder)
    safetensors = folder.with_suffix(".safetensors")
    pickles = folder.with_suffix(*TORCH_SUFFIXES)  # every pickle is scanned, weights or not
    torch_weights = [f for f in pickles if PurePosixPath(f).name.startswith("pytorch_model") and f.endswith(".bin")]
    if not safetensors and not torch_weights:
        findings.append(_missing("Hugging Face weights (*.safetensors or pytorch_model*.bin)"))
    more, per_safetensors = _check_each(folder, safetensors, check_safetensors_file)
    findings += more
    more, per_torch = _check_each(folder, pickles, check_torch_file)
    findings += more
    weights = {**per_safetensors, **{k: v for k, v in per_torch.items() if k in torch_weights}}
    return findings, {**details, "weights": sorted(weights), **_merge_tensor_details(weights)}


_CHECKS: dict[str, Callable[[_Folder], FormatResult]] = {
    "pytorch": _check_pytorch,
    "safetensors": _check_safetensors,
    "onnx": _check_onnx,
    "huggingface": _check_huggingface,
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def validate_model_archive(
    archive: Path, dest: Path, model_format: str, limits: ModelLimits = ModelLimits()
) -> ValidatedModel:
    """Extract the archive into `dest` and check it holds a model of `model_format`. Raises
    ModelRejected with every finding (dest left empty, or removed if it did not exist)."""
    archive, dest = Path(archive), Path(dest)
    if model_format not in _CHECKS:
        message = f"unknown model format '{_show(str(model_format))}'; accepted: {', '.join(MODEL_FORMATS)}"
        raise ModelRejected([ModelFinding("MDL200", "", message)])
    existed = dest.exists()
    archive_files = extract_archive(archive, dest, limits)
    try:
        folder = _model_folder(dest, archive_files)
        findings, details = _CHECKS[model_format](folder)
        if not findings:
            total = sum((folder.root / f).stat().st_size for f in folder.files)
            return ValidatedModel(folder.root, model_format, sorted(folder.files), total, _sha256(archive), details)
    except BaseException:
        _clear(dest, remove=not existed)
        raise
    _clear(dest, remove=not existed)
    raise ModelRejected(_capped(findings))
