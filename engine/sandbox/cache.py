"""Unpacked plugins and exported models, per namespace, on the node. TRUSTED side.

Layout under the cache root (one per node, mode 0711, created by the trusted side):

    {root}/{namespace}/plugins/{sha256}/...   a verified archive, unpacked (read-only to hosts)
    {root}/{namespace}/models/                the namespace's exported model files (read-only to hosts)
    {root}/{namespace}/scratch/{host}/        one private scratch folder per host (its HOME and TMPDIR)

A host's Landlock rules name only its own namespace's folders, so one tenant's host cannot read
another's plugins, models or scratch. Nothing here is trusted because it exists: every load
compares the unpacked tree with the archive the owner holds (whose sha256 it checked against the
registered digest), file by file, and unpacks again when they differ.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_lock = threading.Lock()


class PluginIntegrityError(RuntimeError):
    """The archive a worker received is not the one that was registered."""


def default_root() -> Path:
    return Path(tempfile.gettempdir()) / f"sluice-sandbox-{os.getuid()}"


def namespace_dir(root: Path, namespace: str) -> Path:
    if not _NAMESPACE.match(namespace) or namespace in (".", ".."):
        raise ValueError(f"namespace {namespace!r} cannot name a cache folder")
    path = Path(root) / namespace
    for folder in (Path(root), path):
        folder.mkdir(mode=0o711, exist_ok=True, parents=True)
        os.chmod(folder, 0o711)
    return path


def models_dir(root: Path, namespace: str) -> Path:
    path = namespace_dir(root, namespace) / "models"
    path.mkdir(mode=0o755, exist_ok=True)
    return path


def new_scratch(root: Path, namespace: str) -> Path:
    parent = namespace_dir(root, namespace) / "scratch"
    parent.mkdir(mode=0o711, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="host-", dir=parent))
    (path / "tmp").mkdir()
    return path


def check_archive(data: bytes, sha256: str, label: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise PluginIntegrityError(f"plugin {label}: archive digest {digest[:12]}… differs from the registered {sha256[:12]}…")


def expected_tree(data: bytes) -> dict[str, str]:
    """{path relative to the plugin root: sha256} of the archive's files, as `extract_plugin` lays them out."""
    from engine.plugins.archive import _is_dir, _is_skipped, _parts, _plugin_root

    entries, digests = [], {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            parts = _parts(info.orig_filename)
            if _is_skipped(parts):
                continue
            entries.append((parts, _is_dir(info)))
            if not _is_dir(info):
                digests[parts] = hashlib.sha256(zf.read(info)).hexdigest()
    top = _plugin_root(entries)
    return {"/".join(parts[len(top):]): digest for parts, digest in digests.items()}


def actual_tree(root: Path) -> dict[str, str] | None:
    """The same map for an unpacked folder; None when it holds anything but regular files and folders."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            if full.is_symlink() or not (full.is_dir() or full.is_file()):
                return None
        for name in filenames:
            full = Path(dirpath) / name
            with open(full, "rb") as f:
                found[full.relative_to(root).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return found


def plugin_root(root: Path, namespace: str, sha256: str, data: bytes, label: str) -> Path:
    """The plugin's verified folder in `namespace`'s cache: unpacked once, checked on every call."""
    from engine.plugins.archive import extract_plugin

    check_archive(data, sha256, label)
    expected = expected_tree(data)
    base = namespace_dir(root, namespace) / "plugins"
    base.mkdir(mode=0o711, exist_ok=True)
    final = base / sha256
    with _lock:
        found = _unpacked_root(final)
        if found is not None and actual_tree(found) == expected:
            return found
        remove_tree(final)
        work = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=base))
        try:
            (work / "archive.zip").write_bytes(data)
            (work / "src").mkdir()
            extracted = extract_plugin(work / "archive.zip", work / "src")
            (work / "archive.zip").unlink()
            _read_only(work)
            work.rename(final)
        except BaseException:
            remove_tree(work)
            raise
        found = final / extracted.root.relative_to(work)
        if actual_tree(found) != expected:
            raise PluginIntegrityError(f"plugin {label}: the unpacked files differ from the archive")
        return found


def _unpacked_root(final: Path) -> Path | None:
    src = final / "src"
    if not src.is_dir():
        return None
    children = list(src.iterdir())
    if len(children) == 1 and children[0].is_dir() and not (src / "manifest.py").exists():
        return children[0]
    return src


def _read_only(folder: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o444)
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o555)
    os.chmod(folder, 0o555)


def remove_tree(path: Path) -> None:
    """Remove a folder even when its files are read-only."""
    def writable(func, target, _exc):
        os.chmod(os.path.dirname(target), 0o755)
        os.chmod(target, 0o755)
        func(target)

    if path.exists():
        for dirpath, _dirnames, _ in os.walk(path):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(path, onerror=writable)


__all__ = [
    "PluginIntegrityError", "actual_tree", "check_archive", "default_root", "expected_tree", "models_dir",
    "namespace_dir", "new_scratch", "plugin_root", "remove_tree",
]
