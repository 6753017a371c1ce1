"""What every check of an uploaded model shares: limits, findings, bounded reads, the destination
folder, digests, and the extracted model folder the format checks walk.

Everything here treats its input as attacker-controlled: text shown in findings is made printable
and bounded (`show`), findings are capped per file and overall, JSON is read only below a size
limit, and a refused upload leaves nothing behind in its destination (`cleared_on_failure`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KiB, MiB, GiB = 1024, 1024**2, 1024**3

MAX_FINDINGS = 100
MAX_FINDINGS_PER_FILE = 20
SHOWN_CHARS = 200
MAX_JSON_BYTES = 64 * MiB


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


Problem = tuple[str, str]  # (rule_id, message) about one file; the caller knows which file
FileCheck = Callable[[Path], tuple[list[Problem], dict[str, Any]]]
FormatResult = tuple[list[ModelFinding], dict[str, Any]]


# --- findings --------------------------------------------------------------------------------------

def show(text: str) -> str:
    """Attacker-chosen text (names, exception messages) as one printable line of bounded length."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c) & 0xFF:02x}" for c in text)
    return shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS] + "..."


def capped(findings: list[ModelFinding]) -> list[ModelFinding]:
    if len(findings) <= MAX_FINDINGS:
        return findings
    left_out = len(findings) - MAX_FINDINGS + 1
    return findings[: MAX_FINDINGS - 1] + [ModelFinding("MDL999", "", f"{left_out} more findings not shown")]


def as_findings(file: str, problems: list[Problem]) -> list[ModelFinding]:
    shown = problems[:MAX_FINDINGS_PER_FILE]
    found = [ModelFinding(rule_id, file, message) for rule_id, message in shown]
    if len(problems) > len(shown):
        found.append(ModelFinding("MDL999", file, f"{len(problems) - len(shown)} more problems not shown"))
    return found


def missing(what: str) -> ModelFinding:
    return ModelFinding("MDL201", "", f"the archive holds no {what}")


# --- paths, sizes, digests -------------------------------------------------------------------------

def is_below(root_real: str, target_real: str) -> bool:
    """Whether a resolved path lies strictly inside the resolved folder `root_real`."""
    return target_real.startswith(root_real + os.sep)


def read_json_object(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object in the file, or None and why not), reading at most MAX_JSON_BYTES."""
    if path.stat().st_size > MAX_JSON_BYTES:
        return None, f"is larger than {MAX_JSON_BYTES // MiB} MiB"
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        return None, f"is not valid JSON ({type(exc).__name__}: {show(str(exc))})"
    if not isinstance(value, dict):
        return None, f"is a JSON {type(value).__name__}, not an object"
    return value, ""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --- destination folder ----------------------------------------------------------------------------

def prepare_dest(dest: Path) -> bool:
    """Make sure dest is an empty folder; return whether we created it. A non-empty dest is a caller
    bug, not a bad upload: its files are not ours to delete."""
    if dest.exists() or dest.is_symlink():
        if dest.is_symlink() or not dest.is_dir() or any(os.scandir(dest)):
            raise ValueError(f"extraction target must be an empty folder or not exist: {dest}")
        return False
    dest.mkdir(parents=True)
    return True


def clear_dest(dest: Path, remove: bool) -> None:
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


@contextmanager
def cleared_on_failure(dest: Path, remove: bool) -> Iterator[None]:
    """Whatever the block raises (ModelRejected, or anything else), leave nothing behind in dest."""
    try:
        yield
    except BaseException:
        clear_dest(dest, remove=remove)
        raise


# --- the extracted model folder --------------------------------------------------------------------

@dataclass
class ModelFolder:
    """The extracted model: `root` on disk, files relative to it, and the prefix that turns them back
    into archive paths for findings."""

    root: Path
    files: list[str]
    prefix: str

    def archive_path(self, rel: str) -> str:
        return self.prefix + rel

    def with_suffix(self, *suffixes: str) -> list[str]:
        return [f for f in self.files if f.lower().endswith(suffixes)]


def model_folder(dest: Path, archive_files: list[str]) -> ModelFolder:
    """Look inside a single top-level folder wrapping everything (`my-model/model.pt`)."""
    tops = {f.split("/", 1)[0] for f in archive_files}
    if len(tops) == 1 and all("/" in f for f in archive_files):
        top = tops.pop()
        return ModelFolder(dest / top, [f[len(top) + 1 :] for f in archive_files], top + "/")
    return ModelFolder(dest, list(archive_files), "")


def check_each(folder: ModelFolder, rels: list[str], check: FileCheck) -> tuple[list[ModelFinding], dict[str, Any]]:
    """Run `check` on each file; (findings naming archive paths, details of the files that passed)."""
    findings: list[ModelFinding] = []
    per_file: dict[str, dict[str, Any]] = {}
    for rel in rels:
        problems, details = check(folder.root / rel)
        findings += as_findings(folder.archive_path(rel), problems)
        if not problems:
            per_file[rel] = details
    return findings, per_file


def check_files(
    folder: ModelFolder, suffixes: tuple[str, ...], what: str, check: FileCheck
) -> tuple[list[ModelFinding], dict[str, Any]]:
    """`check_each` over the files ending in one of `suffixes`; a finding that the archive holds no
    `what` when there is none."""
    rels = folder.with_suffix(*suffixes)
    if not rels:
        return [missing(what)], {}
    return check_each(folder, rels, check)


def check_weights(folder: ModelFolder, suffixes: tuple[str, ...], what: str, check: FileCheck) -> FormatResult:
    """`check_files` over weights files, with their tensor details merged (`merge_tensor_details`)."""
    findings, per_file = check_files(folder, suffixes, what, check)
    return findings, merge_tensor_details(per_file)


def _one_dtype(dtypes: list[str]) -> str:
    return dtypes[0] if len(dtypes) == 1 else "mixed"


def tensor_details(tensors: int, parameters: int, dtypes: list[str]) -> dict[str, Any]:
    """What a weights file holds; `dtypes` sorted."""
    return {"tensors": tensors, "parameters": parameters, "dtype": _one_dtype(dtypes), "dtypes": dtypes}


def merge_tensor_details(per_file: dict[str, dict[str, Any]]) -> dict[str, Any]:
    dtypes = sorted({d for details in per_file.values() for d in details.get("dtypes", [])})
    return {
        "tensors": sum(d.get("tensors", 0) for d in per_file.values()),
        "parameters": sum(d.get("parameters", 0) for d in per_file.values()),
        "dtype": _one_dtype(dtypes),
        "files": per_file,
    }
