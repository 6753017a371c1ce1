"""Inspect and unpack uploaded plugin archives without trusting them.

An upload is a zip made with `zip -r my_extractor.zip my_extractor/`. Anyone can upload one, so
every field of it is attacker-chosen: names (zip-slip, absolute paths, collisions), entry types
(symlinks, devices), sizes (bombs, lying headers), offsets (overlapping entries) and content
(nested archives). `inspect_zip` reads the central directory, each local header and at most
`MAGIC_READ_BYTES` of each entry, writes nothing, and returns every finding. `extract_plugin`
refuses an archive with any finding, then unpacks it into an empty scratch folder while counting
the bytes that actually come out, and leaves that folder empty when anything goes wrong.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import struct
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from events.payloads import Finding

MiB = 1024**2


@dataclass(frozen=True)
class ArchiveLimits:
    max_compressed_bytes: int = 500 * MiB
    max_extracted_bytes: int = 500 * MiB
    max_files: int = 1000
    max_ratio: int = 100  # per entry uncompressed/compressed beyond which (above 1 MiB) it is a bomb
    max_path_length: int = 255
    max_depth: int = 16


# rule_id -> (title, hint). Ids group by family: 90x archive, 91x names, 92x entry types,
# 93x collisions, 94x nested archives, 95x sizes and offsets, 96x plugin layout.
RULES: dict[str, tuple[str, str]] = {
    "SLU901": ("not a readable zip archive", "Upload a zip made with `zip -r my_plugin.zip my_plugin/`."),
    "SLU902": ("archive file too large", "Keep data and model weights out of the plugin archive."),
    "SLU903": ("archive is empty", "Zip the plugin folder: `zip -r my_plugin.zip my_plugin/`."),
    "SLU904": ("too many entries", "Ship fewer files; leave data sets and caches out of the archive."),
    "SLU905": ("corrupt entry", "Rebuild the archive with a standard zip tool."),
    "SLU910": ("path climbs out of the archive ('..')", "Use paths inside the plugin folder, without '..'."),
    "SLU911": ("absolute path", "Zip from the parent folder so paths are relative: `zip -r p.zip p/`."),
    "SLU912": ("backslash in entry name", "Zip entry names use '/'; rebuild with a standard zip tool."),
    "SLU913": ("empty entry name", "Rebuild the archive with a standard zip tool."),
    "SLU914": ("control character in entry name", "Rename the file using printable characters only."),
    "SLU915": ("entry name too long", "Shorten the file and folder names."),
    "SLU916": ("path nested too deep", "Flatten the folder structure."),
    "SLU920": ("symbolic link", "Replace links with the files themselves (`zip -r` without `-y`)."),
    "SLU921": ("special file (device, fifo or socket)", "Only regular files and folders may be uploaded."),
    "SLU922": ("encrypted entry", "Upload the archive without a password."),
    "SLU923": ("unsupported compression method", "Use deflate or no compression (the zip defaults)."),
    "SLU930": ("duplicate entry", "Each path may appear once; zip a clean folder."),
    "SLU931": ("duplicate entry after path normalisation", "Write each path once, without './' or '//'."),
    "SLU932": ("names differ only by case", "Rename one; plugins must work on case-insensitive disks."),
    "SLU933": ("path is both a file and a folder", "Rename the file or the folder."),
    "SLU940": ("nested archive (by name)", "Unpack it into the plugin folder instead of shipping an archive."),
    "SLU941": ("nested archive (by content)", "Unpack it into the plugin folder instead of shipping an archive."),
    "SLU950": ("too much data once extracted", "Keep data and model weights out of the plugin archive."),
    "SLU951": ("compression ratio too high (zip bomb)", "Do not ship huge, highly repetitive files."),
    "SLU952": ("entry size does not match its header", "Rebuild the archive with a standard zip tool."),
    "SLU953": ("overlapping entries", "Rebuild the archive with a standard zip tool."),
    "SLU960": ("required plugin file missing", "Put manifest.py and pipeline.py in the plugin folder's top."),
    "SLU961": ("extraction failed", "Retry; if it fails again, rebuild the archive with a standard zip tool."),
    "SLU999": ("too many findings", "Fix the findings shown and upload again."),
}

MAX_FINDINGS = 50
SHOWN_NAME_CHARS = 300
RATIO_FLOOR_BYTES = 1 * MiB  # small files may compress well; only big, very compressible ones are bombs
MAGIC_READ_BYTES = 512
CHUNK_BYTES = 64 * 1024
REQUIRED_FILES = ("manifest.py", "pipeline.py")
NESTED_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".whl", ".egg", ".jar", ".zst")
ARCHIVE_MAGIC: dict[str, re.Pattern[bytes]] = {
    "zip": re.compile(rb"PK(\x03\x04|\x05\x06)"),
    "gzip": re.compile(rb"\x1f\x8b\x08"),
    "bzip2": re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)"),
    "xz": re.compile(rb"\xfd7zXZ\x00"),
    "7z": re.compile(rb"7z\xbc\xaf\x27\x1c"),
    "rar": re.compile(rb"Rar!\x1a\x07"),
    "zstd": re.compile(rb"\x28\xb5\x2f\xfd"),
    "tar": re.compile(rb".{257}ustar", re.DOTALL),
}
_DRIVE = re.compile(r"^[A-Za-z]:")
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # 30 bytes; name and extra lengths are the last two
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CD_ENTRY_BYTES = 46  # fixed part of one central directory entry


class ArchiveRejected(Exception):
    """The archive is refused; `findings` says why, one line each."""

    def __init__(self, findings: list[Finding]):
        self.findings = list(findings)
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = (f"{f.file}:{f.line} [{f.rule_id}] {f.message} ({f.hint})" for f in self.findings)
        return "archive rejected:\n" + "\n".join(lines)


@dataclass(frozen=True)
class ExtractedPlugin:
    root: Path  # dest itself, or dest/<top> when every entry sits under one top-level folder
    files: list[str]  # posix paths relative to root, sorted
    total_bytes: int


def _show(name: str) -> str:
    """The name as printable text: control characters escaped, so a finding cannot forge lines or
    drive a terminal, and cut at SHOWN_NAME_CHARS, so fifty findings stay readable."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name)
    return shown if len(shown) <= SHOWN_NAME_CHARS else shown[:SHOWN_NAME_CHARS] + "..."


def _finding(rule_id: str, file: str, detail: str = "") -> Finding:
    title, hint = RULES[rule_id]
    message = f"{title}: '{_show(file)}'" + (f" ({detail})" if detail else "")
    return Finding(rule_id=rule_id, severity="error", file=file, line=0, message=message, hint=hint)


def _capped(findings: list[Finding]) -> list[Finding]:
    """At most MAX_FINDINGS, the last one saying how many were left out: output stays bounded."""
    if len(findings) <= MAX_FINDINGS:
        return findings
    left_out = len(findings) - MAX_FINDINGS + 1
    return findings[: MAX_FINDINGS - 1] + [_finding("SLU999", "", f"{left_out} more not shown")]


def _parts(name: str) -> tuple[str, ...]:
    """Path components as an extractor would see them: '\\' as '/', empty and '.' parts dropped."""
    return tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))


def _fold(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The key under which case-insensitive, normalising file systems (macOS, Windows) store a path."""
    return tuple(unicodedata.normalize("NFC", p).casefold() for p in parts)


def _is_dir(info: zipfile.ZipInfo) -> bool:
    return info.orig_filename.endswith("/")


def _is_skipped(parts: tuple[str, ...]) -> bool:
    """macOS Finder litter: resource forks under __MACOSX/ and .DS_Store files are never plugin code."""
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1] == ".DS_Store")


# --- archive level -------------------------------------------------------------------------------

def _check_end_records(fp, size: int, name: str, limits: ArchiveLimits) -> list[Finding]:
    """Entry count and central directory size from the end records, before zipfile parses (and keeps
    in memory) every entry: a 500 MB central directory of tiny entries is itself a bomb."""
    tail_len = min(size, _EOCD.size + 0xFFFF)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        return []  # not a zip; zipfile says so next
    count, cd_bytes = _EOCD.unpack_from(tail, at)[4:6]
    locator = at - _ZIP64_LOCATOR.size
    if (count == 0xFFFF or cd_bytes == 0xFFFFFFFF) and locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        fp.seek(_ZIP64_LOCATOR.unpack_from(tail, locator)[2])
        record = fp.read(_ZIP64_EOCD.size)
        if len(record) == _ZIP64_EOCD.size and record[:4] == b"PK\x06\x06":
            count, cd_bytes = _ZIP64_EOCD.unpack(record)[7:9]
    # Per entry: the fixed record, a UTF-8 name at the length limit, 1 KiB of extra fields and comment.
    cd_budget = limits.max_files * (_CD_ENTRY_BYTES + 4 * limits.max_path_length + 1024)
    if count > limits.max_files:
        return [_finding("SLU904", name, f"{count} entries, the limit is {limits.max_files}")]
    if cd_bytes > cd_budget:
        detail = f"central directory of {cd_bytes} bytes, too big for {limits.max_files} entries"
        return [_finding("SLU904", name, detail)]
    return []


# --- one entry at a time -------------------------------------------------------------------------

def _check_name(name: str, limits: ArchiveLimits) -> list[Finding]:
    """Names that would write outside the scratch folder, or that no file system stores faithfully."""
    parts = _parts(name)
    found = []
    if not parts:
        found.append(_finding("SLU913", name))
    if ".." in parts:
        found.append(_finding("SLU910", name))
    if name.replace("\\", "/").startswith("/") or _DRIVE.match(name):
        found.append(_finding("SLU911", name))
    if "\\" in name:
        found.append(_finding("SLU912", name))
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        found.append(_finding("SLU914", name))
    if len(name) > limits.max_path_length:
        found.append(_finding("SLU915", name, f"{len(name)} characters, the limit is {limits.max_path_length}"))
    if len(parts) > limits.max_depth:
        found.append(_finding("SLU916", name, f"{len(parts)} levels, the limit is {limits.max_depth}"))
    return found


def _check_type(info: zipfile.ZipInfo) -> list[Finding]:
    """Only plain files and folders, readable without a password by our own streaming code."""
    name, mode = info.orig_filename, info.external_attr >> 16
    found = []
    if stat.S_ISLNK(mode):
        found.append(_finding("SLU920", name))
    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        found.append(_finding("SLU921", name, f"mode {mode:o}"))
    if info.flag_bits & 0x1:
        found.append(_finding("SLU922", name))
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        found.append(_finding("SLU923", name, f"method {info.compress_type}"))
    return found


def _check_nested(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> list[Finding]:
    """Archives inside the archive: they would dodge every check here, so refuse by name and by content.
    Reading the first bytes also proves the local header agrees with the central directory."""
    name = info.orig_filename
    found = []
    if name.lower().endswith(NESTED_SUFFIXES):
        found.append(_finding("SLU940", name))
    readable = not (info.flag_bits & 0x1) and info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
    if readable and info.file_size > 0:
        try:
            with zf.open(info) as entry:
                head = entry.read(MAGIC_READ_BYTES)
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parse failure is a corrupt entry
            return found + [_finding("SLU905", name, str(exc))]
        kind = next((k for k, magic in ARCHIVE_MAGIC.items() if magic.match(head)), None)
        if kind:
            found.append(_finding("SLU941", name, f"content is {kind}"))
    return found


# --- across entries ------------------------------------------------------------------------------

def _check_sizes(infos: list[zipfile.ZipInfo], limits: ArchiveLimits) -> list[Finding]:
    """Declared sizes first (cheap): too much in total, too compressible, or self-contradictory.
    Extraction counts real bytes too, because these numbers can lie."""
    found, total, over = [], 0, False
    for info in infos:
        name = info.orig_filename
        total += info.file_size
        if total > limits.max_extracted_bytes and not over:
            over = True
            detail = f"declared total reaches {total} bytes, the limit is {limits.max_extracted_bytes}"
            found.append(_finding("SLU950", name, detail))
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > limits.max_ratio * info.compress_size:
            found.append(_finding("SLU951", name, f"{info.file_size} bytes from {info.compress_size}"))
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            detail = f"stored entry declares {info.compress_size} bytes stored, {info.file_size} extracted"
            found.append(_finding("SLU952", name, detail))
    return found


def _check_collisions(infos: list[zipfile.ZipInfo]) -> list[Finding]:
    """Two entries that would land on one path: which one wins depends on the extractor, so a reviewer
    could read one file while the worker runs the other."""
    found = []
    by_path: dict[tuple[str, ...], zipfile.ZipInfo] = {}
    by_fold: dict[tuple[str, ...], tuple[str, ...]] = {}
    for info in infos:
        name, parts = info.orig_filename, _parts(info.orig_filename)
        first = by_path.get(parts)
        if first is None:
            by_path[parts] = info
        elif first.orig_filename == name:
            found.append(_finding("SLU930", name))
        elif _is_dir(first) != _is_dir(info):
            found.append(_finding("SLU933", name, f"also '{_show(first.orig_filename)}'"))
        elif parts:
            found.append(_finding("SLU931", name, f"same path as '{_show(first.orig_filename)}'"))
        for depth in range(1, len(parts) + 1):  # folders too: 'A/x' and 'a/y' merge on macOS
            fold = _fold(parts[:depth])
            if by_fold.setdefault(fold, parts[:depth]) != parts[:depth]:
                found.append(_finding("SLU932", name, f"collides with '{'/'.join(by_fold[fold])}'"))
                break
    folded_files = {_fold(parts): info for parts, info in by_path.items() if not _is_dir(info)}
    for parts, info in by_path.items():
        for depth in range(1, len(parts)):
            file = folded_files.get(_fold(parts[:depth]))
            if file is not None:
                found.append(_finding("SLU933", info.orig_filename, f"'{_show(file.orig_filename)}' is a file"))
                break
    return found


def _data_offset(fp, info: zipfile.ZipInfo) -> int:
    """Where an entry's data starts: after its local header, whose name and extra lengths may differ
    from the central directory's."""
    if info.header_offset < 0:
        raise zipfile.BadZipFile(f"negative local header offset {info.header_offset}")
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header at offset {info.header_offset}")
    name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _check_overlaps(fp, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> list[Finding]:
    """Entries sharing bytes (the overlapping-entry "zip quine" bomb expands one small kernel many
    times). Each entry owns [local header, end of its data); spans must be disjoint and end before
    the central directory."""
    spans = []
    found = []
    for info in infos:
        try:
            spans.append((info.header_offset, _data_offset(fp, info) + info.compress_size, info))
        except zipfile.BadZipFile as exc:
            found.append(_finding("SLU905", info.orig_filename, str(exc)))
    spans.sort(key=lambda span: span[0])
    previous = None
    for start, end, info in spans:
        if previous is not None and start < previous[1]:
            detail = f"shares bytes with '{_show(previous[2].orig_filename)}'"
            found.append(_finding("SLU953", info.orig_filename, detail))
        if end > zf.start_dir:
            found.append(_finding("SLU953", info.orig_filename, "runs into the central directory"))
        if previous is None or end > previous[1]:
            previous = (start, end, info)
    return found


def _check_file(path: Path, limits: ArchiveLimits) -> list[Finding]:
    """From os.stat alone, before reading a byte: a fifo would block us, a huge file would cost us."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        return [_finding("SLU901", path.name, "not a regular file")]
    if st.st_size > limits.max_compressed_bytes:
        return [_finding("SLU902", path.name, f"{st.st_size} bytes, the limit is {limits.max_compressed_bytes}")]
    return []


def _inspect_open(fp, name: str, limits: ArchiveLimits) -> list[Finding]:
    """All checks on an open archive; extraction reuses the same open file, so it unpacks exactly the
    bytes that were inspected even if the path is replaced meanwhile."""
    found = _check_end_records(fp, os.fstat(fp.fileno()).st_size, name, limits)
    if found:
        return found
    try:
        zf = zipfile.ZipFile(fp)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any parse failure means "not a zip we can read"
        return [_finding("SLU901", name, str(exc) or type(exc).__name__)]
    with zf:
        infos = zf.infolist()
        if not infos:
            return [_finding("SLU903", name)]
        if len(infos) > limits.max_files:  # the end record undercounted
            return [_finding("SLU904", infos[limits.max_files].orig_filename, f"more than {limits.max_files} entries")]
        for info in infos:
            found += _check_name(info.orig_filename, limits) + _check_type(info)
        found += _check_collisions(infos) + _check_sizes(infos, limits) + _check_overlaps(fp, zf, infos)
        for info in infos:
            if not _is_dir(info):
                found += _check_nested(zf, info)
    return _capped(found)


def inspect_zip(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Finding]:
    """Every finding about the archive at `path` (at most MAX_FINDINGS), all errors; [] when it is safe
    to extract. Reads the end records, central directory, local headers and the first bytes of each
    entry; never writes."""
    path = Path(path)
    found = _check_file(path, limits)
    if found:
        return found
    with open(path, "rb") as fp:
        return _inspect_open(fp, path.name, limits)


# --- extraction ----------------------------------------------------------------------------------

def _inside(root: str, target: Path) -> bool:
    return os.path.commonpath([root, os.path.realpath(target)]) == root


def _make_dirs(root: str, parts: tuple[str, ...], name: str) -> Path:
    """Create the folders of `parts` one at a time under root, refusing anything that is not a real
    folder we made (a file in the way, or a link) and anything that resolves outside root."""
    current = Path(root)
    for part in parts:
        current = current / part
        if not _inside(root, current):
            raise ArchiveRejected([_finding("SLU910", name, "resolves outside the scratch folder")])
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise ArchiveRejected([_finding("SLU933", name)]) from None
    return current


def _stream_entry(fp, info: zipfile.ZipInfo, out, budget: int) -> int:
    """Copy one entry to `out`, inflating it ourselves and counting the bytes that actually come out:
    stop the moment they pass the declared size (a lying header) or the remaining `budget`."""
    name = info.orig_filename
    fp.seek(_data_offset(fp, info))
    inflater = zlib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    left, pending, written, crc = info.compress_size, b"", 0, 0
    while left or pending:
        if not pending:
            pending = fp.read(min(CHUNK_BYTES, left))
            if not pending:
                raise ArchiveRejected([_finding("SLU905", name, "data is truncated")])
            left -= len(pending)
        if inflater is None:
            data, pending = pending, b""
        else:
            data = inflater.decompress(pending, CHUNK_BYTES)
            pending = inflater.unconsumed_tail
        written += len(data)
        if written > info.file_size:
            raise ArchiveRejected([_finding("SLU952", name, f"more than the declared {info.file_size} bytes")])
        if written > budget:
            raise ArchiveRejected([_finding("SLU950", name, "the extracted total passed the limit")])
        crc = zlib.crc32(data, crc)
        out.write(data)
        if inflater is not None and inflater.eof:
            break
    if inflater is not None and not inflater.eof:
        raise ArchiveRejected([_finding("SLU905", name, "compressed data ends early")])
    if written != info.file_size:
        raise ArchiveRejected([_finding("SLU952", name, f"{written} bytes, the header says {info.file_size}")])
    if crc != info.CRC:
        raise ArchiveRejected([_finding("SLU905", name, "CRC-32 mismatch")])
    return written


def _plugin_root(entries: list[tuple[tuple[str, ...], bool]]) -> tuple[str, ...]:
    """() when the plugin sits at the archive root, (top,) when every entry is under one folder."""
    tops = {parts[0] for parts, _ in entries}
    if len(tops) == 1 and all(is_dir or len(parts) > 1 for parts, is_dir in entries):
        return (tops.pop(),)
    return ()


def _check_layout(root: Path, top: tuple[str, ...]) -> list[Finding]:
    """manifest.py and pipeline.py must be where the loader looks; name what is there instead."""
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if not missing:
        return []
    listing = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()) if root.is_dir() else []
    where = "at the archive root" + (f" or in its single top-level folder '{_show(top[0])}/'" if top else "")
    seen = ", ".join(_show(n) for n in listing) or "nothing"
    return [
        Finding(rule_id="SLU960", severity="error", file="/".join(top + (f,)), line=0,
                message=f"no {f} {where}; found: {seen}", hint=RULES["SLU960"][1])
        for f in missing
    ]


def _empty(root: str) -> None:
    """Remove everything under root (it was empty before we started, so all of it is ours)."""
    for child in os.scandir(root):
        if child.is_dir(follow_symlinks=False):
            shutil.rmtree(child.path)
        else:
            os.unlink(child.path)


def extract_plugin(path: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> ExtractedPlugin:
    """Unpack a plugin archive into `dest`, an existing empty scratch folder, and find its root.
    Raises ArchiveRejected with every finding (dest left empty) when the archive is unsafe or is not
    a plugin."""
    path = Path(path)
    findings = _check_file(path, limits)
    if findings:
        raise ArchiveRejected(findings)
    with open(path, "rb") as fp:
        findings = _inspect_open(fp, path.name, limits)
        if findings:
            raise ArchiveRejected(findings)
        return _extract_open(fp, path.name, Path(dest), limits)


def _extract_open(fp, name: str, dest: Path, limits: ArchiveLimits) -> ExtractedPlugin:
    """Unpack the inspected archive; on any failure empty dest again and raise ArchiveRejected."""
    if not dest.is_dir() or any(os.scandir(dest)):
        raise ValueError(f"extraction target must be an existing empty folder: {dest}")
    root = os.path.realpath(dest)
    entries: list[tuple[tuple[str, ...], bool]] = []
    total, current = 0, name  # current: the entry being written, to name in an unexpected failure
    try:
        with zipfile.ZipFile(fp) as zf:
            for info in zf.infolist():
                current, parts = info.orig_filename, _parts(info.orig_filename)
                if _is_skipped(parts):
                    continue
                entries.append((parts, _is_dir(info)))
                if _is_dir(info):
                    _make_dirs(root, parts, info.orig_filename)
                    continue
                target = _make_dirs(root, parts[:-1], info.orig_filename) / parts[-1]
                if not _inside(root, target):
                    raise ArchiveRejected([_finding("SLU910", current, "resolves outside the scratch folder")])
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as out:
                    total += _stream_entry(fp, info, out, limits.max_extracted_bytes - total)
        current, top = name, _plugin_root(entries)
        layout = _check_layout(Path(root).joinpath(*top), top)
        if layout:
            raise ArchiveRejected(layout)
    except BaseException as exc:
        _empty(root)
        if isinstance(exc, ArchiveRejected) or not isinstance(exc, Exception):
            raise
        raise ArchiveRejected([_finding("SLU961", current, f"{type(exc).__name__}: {exc}")]) from exc
    files = sorted("/".join(parts[len(top):]) for parts, is_dir in entries if not is_dir)
    return ExtractedPlugin(root=dest.joinpath(*top), files=files, total_bytes=total)


ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold: entries carry no build time


def write_zip(entries: Iterable[tuple[str, bytes | Path]], *, deterministic: bool = True) -> bytes:
    """A zip of `entries`, each (name in the archive, its bytes or a file to read), in the order
    given: deflated (level 9), regular files of mode 0o644 (unix). With `deterministic` every entry
    is dated 1980-01-01, so the same entries always give the same bytes and digest; otherwise
    entries carry the time they were written."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries:
            date = ZIP_DATE if deterministic else time.localtime()[:6]
            info = zipfile.ZipInfo(name, date_time=date)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.create_system = 3  # unix, so the mode above is read as one
            zf.writestr(info, content.read_bytes() if isinstance(content, Path) else content, compresslevel=9)
    return buffer.getvalue()


def zip_plugin_folder(folder: Path, *, top: str | None = None) -> bytes:
    """A plugin folder as a deterministic zip (sorted entries, fixed timestamps, no `__pycache__`),
    so the same files always give the same bytes and digest."""
    folder = Path(folder)
    prefix = f"{top}/" if top else ""
    return write_zip(
        (prefix + path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    )
