"""Uploaded plugin archives are untrusted: every attack below is built here with `zipfile` (patching
header bytes with `struct` where the attack needs a lie), and each must be refused by a named rule
that names the entry, without a byte written outside the scratch folder, which ends up empty."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

from engine.plugins import archive
from engine.plugins.archive import RULES, ArchiveLimits, ArchiveRejected, ExtractedPlugin, extract_plugin, inspect_zip, write_zip

pytestmark = pytest.mark.unit

MANIFEST = b"from pydantic import BaseModel\n\nclass MyParams(BaseModel):\n    k: int = 1\n"
PIPELINE = b"def run(params):\n    return []\n"


# --- building archives ---------------------------------------------------------------------------

def entry(name: str, data: bytes | str = b"x", *, mode: int | None = None,
          compress_type: int = zipfile.ZIP_DEFLATED) -> tuple[zipfile.ZipInfo, bytes | str]:
    """One entry with a chosen name, unix mode bits and compression."""
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = compress_type
    info.create_system = 3
    if mode is not None:
        info.external_attr = mode << 16
    return info, data


def plugin(*extra) -> list:
    """A valid plugin at the archive root, plus the entries under test."""
    return [("manifest.py", MANIFEST), ("pipeline.py", PIPELINE), *extra]


def build(path: Path, entries: list) -> Path:
    """Write entries as given; duplicate names are the point of some tests, so no warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def zip_folder(folder: Path, archive_path: Path) -> Path:
    """What `cd parent && zip -r my_extractor.zip my_extractor/` writes: folder entries, then files,
    with their unix modes."""
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            here = Path(dirpath)
            zf.write(here, here.relative_to(folder.parent).as_posix() + "/")
            for name in sorted(filenames):
                zf.write(here / name, (here / name).relative_to(folder.parent).as_posix())
    return archive_path


_CENTRAL = {"flags": (8, "<H"), "crc": (16, "<L"), "compress_size": (20, "<L"),
            "file_size": (24, "<L"), "header_offset": (42, "<L")}
_LOCAL = {"flags": (6, "<H"), "crc": (14, "<L"), "compress_size": (18, "<L"), "file_size": (22, "<L")}


def patch_header(path: Path, name: str, *, central: bool = True, local: bool = True, **values: int) -> None:
    """Overwrite fields of one entry's central directory record and/or local header in place: the
    realistic way to make headers lie."""
    buf = bytearray(path.read_bytes())
    spots = []
    if central:
        spots.append((b"PK\x01\x02", 28, 46, _CENTRAL))
    if local:
        spots.append((b"PK\x03\x04", 26, 30, _LOCAL))
    for signature, length_at, name_at, fields in spots:
        pos = buf.find(signature)
        while pos >= 0:
            (length,) = struct.unpack_from("<H", buf, pos + length_at)
            if bytes(buf[pos + name_at : pos + name_at + length]) == name.encode():
                break
            pos = buf.find(signature, pos + 4)
        assert pos >= 0, f"{name} not found"
        for key, value in values.items():
            offset, fmt = fields[key]
            struct.pack_into(fmt, buf, pos + offset, value)
    path.write_bytes(bytes(buf))


def header_offset(path: Path, name: str) -> int:
    with zipfile.ZipFile(path) as zf:
        return zf.getinfo(name).header_offset


# --- the sandbox -----------------------------------------------------------------------------------

class Sandbox:
    """tmp_path holding archives/, a sentinel/ folder an attack would like to write into, and the
    scratch folder scratch/x that extraction may use."""

    def __init__(self, base: Path):
        self.base = base
        self.archives = base / "archives"
        self.sentinel = base / "sentinel"
        self.scratch = base / "scratch" / "x"
        for folder in (self.archives, self.sentinel, self.scratch):
            folder.mkdir(parents=True)
        (self.sentinel / "keep.txt").write_text("keep")

    def zip(self, entries: list, name: str = "p.zip") -> Path:
        return build(self.archives / name, entries)

    def snapshot(self) -> dict[str, tuple]:
        """Every path under tmp_path (links not followed) with its type, size and content digest."""
        seen = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = os.lstat(p)
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
                seen[str(p.relative_to(self.base))] = (stat.S_IFMT(st.st_mode), st.st_size if digest else 0, digest)
        return seen

    def rejected(self, path: Path, rule_id: str, entry_name: str, limits: ArchiveLimits = ArchiveLimits()):
        """Extraction refuses `path` with `rule_id` naming `entry_name`, and the tree is unchanged:
        nothing written outside scratch, scratch empty again."""
        before = self.snapshot()
        with pytest.raises(ArchiveRejected) as caught:
            extract_plugin(path, self.scratch, limits)
        assert self.snapshot() == before
        assert list(self.scratch.iterdir()) == []
        findings = caught.value.findings
        assert any(f.rule_id == rule_id and entry_name in f.message for f in findings), str(caught.value)
        assert all(f.severity == "error" for f in findings)
        return findings

    def extracted(self, path: Path, limits: ArchiveLimits = ArchiveLimits()) -> ExtractedPlugin:
        """Extraction succeeds and writes only inside scratch."""
        before = self.snapshot()
        result = extract_plugin(path, self.scratch, limits)
        changed = {path for path, _ in self.snapshot().items() ^ before.items()}
        assert all(path.startswith(os.path.join("scratch", "x") + os.sep) for path in changed), changed
        return result


@pytest.fixture
def box(tmp_path) -> Sandbox:
    return Sandbox(tmp_path)


# --- happy paths -----------------------------------------------------------------------------------

def test_zip_r_archive_with_a_top_level_folder_extracts_with_that_folder_as_root(box, tmp_path):
    src = tmp_path / "src" / "my_extractor"
    (src / "processors").mkdir(parents=True)
    (src / "manifest.py").write_bytes(MANIFEST)
    (src / "pipeline.py").write_bytes(PIPELINE)
    (src / "realtime.py").write_text("")
    (src / "processors" / "__init__.py").write_text("")
    (src / "processors" / "core.py").write_text("def f():\n    return 1\n")
    path = zip_folder(src, box.archives / "my_extractor.zip")

    result = box.extracted(path)

    assert result.root == box.scratch / "my_extractor"
    assert result.files == ["manifest.py", "pipeline.py", "processors/__init__.py", "processors/core.py", "realtime.py"]
    assert result.total_bytes == sum((src / f).stat().st_size for f in result.files)
    assert (result.root / "processors" / "core.py").read_text() == "def f():\n    return 1\n"
    assert stat.S_IMODE((result.root / "manifest.py").stat().st_mode) & 0o022 == 0


def test_archive_with_files_at_the_root_extracts_with_dest_as_root(box):
    result = box.extracted(box.zip(plugin(("processors/core.py", "x = 1\n"))))
    assert result.root == box.scratch
    assert result.files == ["manifest.py", "pipeline.py", "processors/core.py"]


def test_macos_finder_litter_is_skipped_silently(box):
    entries = [("my_extractor/manifest.py", MANIFEST), ("my_extractor/pipeline.py", PIPELINE),
               ("my_extractor/.DS_Store", b"\0\0\0\1Bud1"), ("__MACOSX/my_extractor/._manifest.py", b"\0\5\26\7"),
               ("__MACOSX/", b"")]
    result = box.extracted(box.zip(entries))
    assert result.root.name == "my_extractor"
    assert result.files == ["manifest.py", "pipeline.py"]
    assert sorted(p.name for p in box.scratch.rglob("*")) == ["manifest.py", "my_extractor", "pipeline.py"]


def test_inspecting_a_clean_archive_finds_nothing_and_writes_nothing(box):
    path = box.zip(plugin())
    before = box.snapshot()
    assert inspect_zip(path) == []
    assert box.snapshot() == before


def test_inspecting_a_malicious_archive_writes_nothing(box):
    path = box.zip(plugin(("../../sentinel/pwned.txt", b"x"), entry("link", "/etc/passwd", mode=stat.S_IFLNK | 0o777)))
    before = box.snapshot()
    rules = {f.rule_id for f in inspect_zip(path)}
    assert box.snapshot() == before
    assert {"SLU910", "SLU920"} <= rules


# --- plugin layout ---------------------------------------------------------------------------------

def test_missing_manifest_in_a_single_top_folder_names_what_was_found(box):
    path = box.zip([("x/README.md", b"hi"), ("x/src/a.py", b""), ("x/pipeline.py", PIPELINE)])
    findings = box.rejected(path, "SLU960", "manifest.py")
    assert [f.message for f in findings] == [
        "no manifest.py at the archive root or in its single top-level folder 'x/'; found: README.md, pipeline.py, src/"
    ]
    assert findings[0].file == "x/manifest.py"


def test_missing_manifest_and_pipeline_at_the_root_are_both_reported(box):
    findings = box.rejected(box.zip([("README.md", b"hi"), ("src/a.py", b"")]), "SLU960", "pipeline.py")
    assert [f.message for f in findings] == [
        "no manifest.py at the archive root; found: README.md, src/",
        "no pipeline.py at the archive root; found: README.md, src/",
    ]


def test_archive_holding_only_macos_litter_is_rejected_as_not_a_plugin(box):
    findings = box.rejected(box.zip([("__MACOSX/._x", b"\0"), (".DS_Store", b"\0")]), "SLU960", "manifest.py")
    assert "found: nothing" in findings[0].message


# --- not a zip -------------------------------------------------------------------------------------

def test_file_that_is_not_a_zip_is_rejected(box):
    path = box.archives / "p.zip"
    path.write_bytes(b"#!/bin/sh\nrm -rf /\n")
    box.rejected(path, "SLU901", "p.zip")


def test_zip_with_a_corrupt_central_directory_is_rejected(box):
    path = box.zip(plugin())
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    data[at : at + 4] = b"XX\x01\x02"
    path.write_bytes(bytes(data))
    box.rejected(path, "SLU901", "p.zip")


def test_empty_zip_is_rejected(box):
    box.rejected(box.zip([]), "SLU903", "p.zip")


def test_archive_file_larger_than_the_limit_is_rejected_before_it_is_read(box, monkeypatch):
    path = box.zip(plugin())
    monkeypatch.setattr(archive, "open", lambda *a, **k: pytest.fail("read a too-large archive"), raising=False)
    box.rejected(path, "SLU902", "p.zip", ArchiveLimits(max_compressed_bytes=100))


# --- paths -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../sentinel/pwned.txt", "a/../../x", "a/..", "..\\..\\sentinel\\pwned.txt"])
def test_zip_with_parent_path_entry_is_rejected(box, name):
    box.rejected(box.zip(plugin((name, b"pwned"))), "SLU910", name)


def test_zip_with_absolute_path_into_the_sentinel_folder_is_rejected(box):
    name = str(box.sentinel / "pwned.txt")
    box.rejected(box.zip(plugin((name, b"pwned"))), "SLU911", name)


@pytest.mark.parametrize("name", ["C:\\Windows\\x.py", "C:/Windows/x.py", "\\\\server\\share\\x.py"])
def test_zip_with_windows_absolute_path_is_rejected(box, name):
    box.rejected(box.zip(plugin((name, b"pwned"))), "SLU911", name)


def test_zip_with_backslash_in_a_name_is_rejected(box):
    box.rejected(box.zip(plugin(("processors\\core.py", b""))), "SLU912", "processors\\core.py")


@pytest.mark.parametrize("name", ["", "./"])
def test_zip_with_empty_entry_name_is_rejected(box, name):
    box.rejected(box.zip(plugin(entry(name, b"x"))), "SLU913", name)


def test_zip_with_control_character_in_a_name_is_rejected(box):
    findings = box.rejected(box.zip(plugin(("evil\x1b[2J.py", b""))), "SLU914", "evil\\x1b[2J.py")
    assert all("\x1b" not in f.message for f in findings)


def test_zip_with_nul_in_a_name_is_rejected(box):
    path = box.zip(plugin(("evilZ.py", b"")))
    path.write_bytes(path.read_bytes().replace(b"evilZ.py", b"evil\0.py"))
    box.rejected(path, "SLU914", "evil\\x00.py")


def test_zip_with_a_name_longer_than_the_limit_is_rejected(box):
    name = "a" * 40 + ".py"
    box.rejected(box.zip(plugin((name, b""))), "SLU915", name, ArchiveLimits(max_path_length=32))


def test_zip_with_a_path_deeper_than_the_limit_is_rejected(box):
    name = "a/b/c/d/e.py"
    box.rejected(box.zip(plugin((name, b""))), "SLU916", name, ArchiveLimits(max_depth=4))


# --- entry types, encryption, compression ----------------------------------------------------------

def test_zip_with_symlink_entry_is_rejected(box):
    box.rejected(box.zip(plugin(entry("passwd", "/etc/passwd", mode=stat.S_IFLNK | 0o777))), "SLU920", "passwd")


def test_zip_with_symlinked_folder_entry_is_rejected(box):
    box.rejected(box.zip(plugin(entry("escape/", "../../sentinel", mode=stat.S_IFLNK | 0o777))), "SLU920", "escape/")


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_zip_with_special_file_entry_is_rejected(box, kind):
    box.rejected(box.zip(plugin(entry("dev_node", b"", mode=kind | 0o666))), "SLU921", "dev_node")


def test_zip_with_encrypted_entry_is_rejected(box):
    path = box.zip(plugin(("secret.py", b"x = 1\n")))
    patch_header(path, "secret.py", flags=0x1)
    box.rejected(path, "SLU922", "secret.py")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zip_with_unsupported_compression_is_rejected(box, method):
    box.rejected(box.zip(plugin(entry("core.py", b"x = 1\n", compress_type=method))), "SLU923", "core.py")


# --- collisions ------------------------------------------------------------------------------------

def test_zip_with_duplicate_names_is_rejected(box):
    box.rejected(box.zip(plugin(("core.py", b"safe"), ("core.py", b"evil"))), "SLU930", "core.py")


@pytest.mark.parametrize("first,second", [("a/b.py", "a/./b.py"), ("a/b.py", "a//b.py")])
def test_zip_with_names_equal_after_normalisation_is_rejected(box, first, second):
    box.rejected(box.zip(plugin((first, b"safe"), (second, b"evil"))), "SLU931", second)


def test_zip_with_names_differing_only_by_case_is_rejected(box):
    box.rejected(box.zip(plugin(("Core.py", b"safe"), ("core.py", b"evil"))), "SLU932", "core.py")


def test_zip_with_folders_differing_only_by_case_is_rejected(box):
    box.rejected(box.zip(plugin(("Lib/a.py", b""), ("lib/b.py", b""))), "SLU932", "lib/b.py")


def test_zip_with_a_file_also_used_as_a_folder_is_rejected(box):
    box.rejected(box.zip(plugin(("a", b"file"), ("a/b", b"child"))), "SLU933", "a/b")


def test_zip_with_a_folder_entry_and_a_file_of_the_same_name_is_rejected(box):
    box.rejected(box.zip(plugin(("a/", b""), ("a", b"file"))), "SLU933", "a")


# --- nested archives -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vendor/lib.zip", "data.tar", "d.tar.gz", "d.tgz", "d.bz2", "d.xz", "d.7z",
                                  "d.rar", "pkg-1.0-py3-none-any.whl", "pkg.egg", "lib.jar", "d.zst", "UP.ZIP"])
def test_zip_with_nested_archive_by_name_is_rejected(box, name):
    box.rejected(box.zip(plugin((name, b"just text, honest"))), "SLU940", name)


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("evil.py")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"x=1"))
    return buf.getvalue()


@pytest.mark.parametrize("kind,content", [
    ("zip", write_zip([("evil.py", b"import os\n")])),
    ("gzip", gzip.compress(b"payload")),
    ("bzip2", bz2.compress(b"payload")),
    ("xz", lzma.compress(b"payload")),
    ("7z", b"7z\xbc\xaf\x27\x1c" + b"\0" * 64),
    ("rar", b"Rar!\x1a\x07\x01\x00" + b"\0" * 64),
    ("zstd", b"\x28\xb5\x2f\xfd" + b"\0" * 64),
    ("tar", _tar()),
])
def test_zip_with_nested_archive_disguised_by_name_is_rejected_by_content(box, kind, content):
    findings = box.rejected(box.zip(plugin(("weights.bin", content))), "SLU941", "weights.bin")
    assert any(kind in f.message for f in findings if f.rule_id == "SLU941")


def test_text_that_merely_starts_like_a_magic_number_is_not_a_nested_archive(box):
    result = box.extracted(box.zip(plugin(("notes.txt", b"BZh, said the bee. PK is fine too."))))
    assert "notes.txt" in result.files


# --- bombs -----------------------------------------------------------------------------------------

def test_zip_whose_declared_total_exceeds_the_extracted_limit_is_rejected(box):
    path = box.zip(plugin(("a.bin", os.urandom(600)), ("b.bin", os.urandom(600))))
    box.rejected(path, "SLU950", "b.bin", ArchiveLimits(max_extracted_bytes=1200))


def test_zip_with_a_highly_compressed_entry_is_rejected_as_a_bomb(box):
    box.rejected(box.zip(plugin(("zeros.txt", b"\0" * (2 * 1024**2)))), "SLU951", "zeros.txt")


def test_small_entries_may_compress_well(box):
    result = box.extracted(box.zip(plugin(("zeros.txt", b"\0" * (1024**2)))))
    assert result.total_bytes == 1024**2 + len(MANIFEST) + len(PIPELINE)


def test_zip_whose_header_understates_the_size_is_stopped_while_streaming(box):
    path = box.zip(plugin(("payload.bin", b"\0" * (2 * 1024**2))))
    patch_header(path, "payload.bin", file_size=64 * 1024)  # ratio now looks harmless
    assert inspect_zip(path) == []  # only the bytes that come out can tell
    box.rejected(path, "SLU952", "payload.bin")


def test_zip_whose_header_overstates_the_size_is_rejected(box):
    path = box.zip(plugin(("core.py", b"x = 1\n" * 10)))
    patch_header(path, "core.py", file_size=1000)
    box.rejected(path, "SLU952", "core.py")


def test_stored_entry_whose_sizes_disagree_is_rejected(box):
    path = box.zip(plugin(entry("core.py", b"x = 1\n" * 10, compress_type=zipfile.ZIP_STORED)))
    patch_header(path, "core.py", file_size=6000)
    box.rejected(path, "SLU952", "core.py")


def test_running_byte_counter_enforces_the_total_even_if_declared_sizes_were_not_checked(box, monkeypatch):
    monkeypatch.setattr(archive, "_check_sizes", lambda infos, limits: [])
    path = box.zip(plugin(("a.bin", os.urandom(900)), ("b.bin", os.urandom(900))))
    box.rejected(path, "SLU950", "b.bin", ArchiveLimits(max_extracted_bytes=1500))


def test_zip_with_entries_sharing_a_local_header_is_rejected(box):
    path = box.zip(plugin(("kernel.py", b"x = 1\n"), ("copy.py", b"y = 2\n")))
    patch_header(path, "copy.py", local=False, header_offset=header_offset(path, "kernel.py"))
    box.rejected(path, "SLU953", "copy.py")


def test_zip_with_an_entry_whose_data_overlaps_the_next_entry_is_rejected(box):
    path = box.zip(plugin(entry("outer.bin", b"a" * 100, compress_type=zipfile.ZIP_STORED), ("inner.py", b"x = 1\n")))
    patch_header(path, "outer.bin", compress_size=200, file_size=200)  # swallows inner.py's local header
    box.rejected(path, "SLU953", "inner.py")


def test_archive_with_1000_files_passes(box):
    path = box.zip(plugin(*((f"f{i:04}.txt", b"") for i in range(998))))
    assert len(box.extracted(path).files) == 1000


def test_archive_with_1001_files_is_rejected(box):
    path = box.zip(plugin(*((f"f{i:04}.txt", b"") for i in range(999))))
    box.rejected(path, "SLU904", "p.zip")


def test_file_limit_is_configurable(box):
    box.rejected(box.zip(plugin(("a.py", b""), ("b.py", b""))), "SLU904", "p.zip", ArchiveLimits(max_files=3))


def test_central_directory_too_big_for_the_entry_limit_is_rejected_before_it_is_parsed(box):
    bloated, _ = entry("a.py", b"")
    bloated.comment = b"c" * 60_000  # a few entries may not carry megabytes of directory
    findings = box.rejected(box.zip(plugin((bloated, b""))), "SLU904", "p.zip", ArchiveLimits(max_files=3))
    assert "central directory" in findings[0].message


def test_end_record_that_undercounts_entries_is_still_caught(box):
    path = box.zip(plugin(("a.py", b""), ("b.py", b"")))
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<2H", data, eocd + 8, 1, 1)  # claims one entry
    path.write_bytes(bytes(data))
    box.rejected(path, "SLU904", "b.py", ArchiveLimits(max_files=3))


# --- reporting -------------------------------------------------------------------------------------

def test_all_findings_are_collected_not_just_the_first(box):
    path = box.zip(plugin(("../x", b""), entry("l", "/", mode=stat.S_IFLNK | 0o777), ("v.whl", b"")))
    findings = box.rejected(path, "SLU910", "../x")
    assert {"SLU910", "SLU920", "SLU940"} <= {f.rule_id for f in findings}


def test_findings_are_capped_at_fifty(box):
    findings = box.rejected(box.zip(plugin(*((f"../{i}", b"") for i in range(80)))), "SLU910", "../0")
    assert len(findings) == 50
    assert findings[-1].rule_id == "SLU999" and "31 more" in findings[-1].message


def test_rejection_message_lists_every_finding(box):
    with pytest.raises(ArchiveRejected) as caught:
        extract_plugin(box.zip(plugin(("../x", b""), ("y.zip", b""))), box.scratch)
    text = str(caught.value)
    assert "[SLU910]" in text and "[SLU940]" in text and "'../x'" in text


def test_rule_table_is_complete_and_readable():
    assert all(rule.startswith("SLU9") and len(rule) == 6 for rule in RULES)
    assert all(title and hint for title, hint in RULES.values())


def test_a_failure_halfway_through_extraction_leaves_scratch_empty(box, monkeypatch):
    real_stream = archive._stream_entry

    def disk_full_on_the_third_file(fp, info, out, budget):
        if info.orig_filename == "c.py":
            raise OSError(28, "No space left on device")
        return real_stream(fp, info, out, budget)

    monkeypatch.setattr(archive, "_stream_entry", disk_full_on_the_third_file)
    box.rejected(box.zip(plugin(("lib/b.py", b"b"), ("c.py", b"c"))), "SLU961", "c.py")


def test_extraction_into_a_folder_that_is_not_empty_is_refused(box):
    (box.scratch / "mine.txt").write_text("keep")
    with pytest.raises(ValueError):
        extract_plugin(box.zip(plugin()), box.scratch)
    assert [p.name for p in box.scratch.iterdir()] == ["mine.txt"]
