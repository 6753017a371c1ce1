"""Unpack an uploaded model archive (.tar.gz, .tgz or plain .tar, told apart by content) without
letting it write, or make us read, outside the folder it is unpacked into.

The archive may try path traversal ('..', absolute paths, links, devices), collisions (duplicates,
a file that is also a folder), resource exhaustion (member count, declared and real sizes, huge
headers) and odd names. Members are checked one by one before anything is written; extraction then
also goes through tarfile's "data" filter, counts the bytes that really land on disk, and resets
permissions (0o644 / 0o755: no setuid, no exec bits).
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

from engine.models.untrusted import (
    MiB,
    ModelFinding,
    ModelLimits,
    ModelRejected,
    Problem,
    as_findings,
    capped,
    cleared_on_failure,
    is_below,
    prepare_dest,
    show,
)

__all__ = ["RULES", "extract_archive"]

MAX_SINGLE_READ = 16 * MiB  # tar headers (pax, GNU long names) are read in one call: bound them
TAR_OVERHEAD_PER_MEMBER = 8 * 512  # header, pax header, padding

_NOT_TAR_MAGIC: dict[bytes, str] = {
    b"PK\x03\x04": "a zip file",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"7z\xbc\xaf\x27\x1c": "a 7z archive",
    b"Rar!\x1a\x07": "a rar archive",
}
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)

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
}

Extracted = tuple[list[str], list[ModelFinding]]


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
        return [("MDL120", f"symbolic link (to '{show(info.linkname)}'); links are not allowed")]
    if info.islnk():
        return [("MDL121", f"hard link (to '{show(info.linkname)}'); links are not allowed")]
    if info.ischr() or info.isblk():
        return [("MDL122", "device file; only regular files and folders are allowed")]
    if info.isfifo():
        return [("MDL122", "fifo; only regular files and folders are allowed")]
    if info.type not in _FILE_TYPES and not info.isdir():
        return [("MDL122", f"unsupported member type {info.type!r}; only regular files and folders are allowed")]
    return []


def _outside(dest_real: str, path: str) -> bool:
    target = os.path.realpath(os.path.join(dest_real, path))
    return target != dest_real and not is_below(dest_real, target)


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
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parse failure means a corrupt archive
            detail = f"{type(exc).__name__}: {show(str(exc))}"
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
            return infos, [ModelFinding("MDL105", show(info.name), message)]


Checked = tuple[list[_Member], list[ModelFinding]]


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
        findings += as_findings(show(info.name), problems)
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
                message = f"path is inside '{show(parent)}', which is a file"
                found.append(ModelFinding("MDL131", show(m.info.name), message))
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
            return files, [ModelFinding("MDL105", show(m.info.name), f"the archive expands too far: {exc}")]
        except Exception as exc:  # noqa: BLE001 - untrusted input: any parser error is a finding, never a crash
            detail = f"{type(exc).__name__}: {show(str(exc))}"
            return files, [ModelFinding("MDL140", show(m.info.name), f"extraction failed ({detail})")]
        if m.is_dir:
            continue
        st = os.lstat(dest / m.path)
        written += st.st_size
        if not stat.S_ISREG(st.st_mode) or st.st_size != m.info.size:
            message = f"extracted {st.st_size} bytes where the header declares {m.info.size}"
            return files, [ModelFinding("MDL140", show(m.info.name), message)]
        if written > limits.max_unpacked_bytes:
            message = f"more than {limits.max_unpacked_bytes} bytes written, the limit"
            return files, [ModelFinding("MDL105", show(m.info.name), message)]
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
            # reading, tarfile calls only read/seek/tell; the stub's file protocol also asks for write
            tf = tarfile.open(fileobj=cast(IO[bytes], _BoundedStream(stream, cap)), mode="r:")  # noqa: SIM115 - closed below
        except _TooMuchData as exc:
            return [], [ModelFinding("MDL105", "", f"the archive expands too far: {exc}")]
        except Exception as exc:  # noqa: BLE001 - ReadError, BadGzipFile, EOFError, zlib.error, ...
            detail = f"{type(exc).__name__}: {show(str(exc))}"
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
    with cleared_on_failure(dest, remove=prepare_dest(dest)):
        files, findings = _extract(archive, dest, limits)
        if findings:
            raise ModelRejected(capped(findings))
    return files
