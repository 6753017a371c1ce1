"""Import a plugin's code — only ever after it passed the scanner, and only in a worker process
(the validation subprocess, a Ray worker), never in a handler's.

A plugin folder is imported as a package under a private name, so its relative imports
(`from .manifest import MyParams`) work and two plugins (or two versions of one) never share
modules. The SDK paths the hosted product documents under `shared.*` are exposed as aliases of
`engine.shared.*`.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path

SDK_ALIAS = "shared"


def expose_sdk() -> None:
    """Make `import shared.plugins` (and every other `shared.*` module) resolve to `engine.shared`.
    Idempotent; the same module objects serve both names."""
    if SDK_ALIAS in sys.modules:
        return
    import engine.shared as root

    sys.modules[SDK_ALIAS] = root
    for info in pkgutil.walk_packages(root.__path__, prefix="engine.shared."):
        module = importlib.import_module(info.name)
        sys.modules[SDK_ALIAS + info.name[len("engine.shared"):]] = module


@dataclass(frozen=True)
class LoadedPlugin:
    package: str
    root: Path
    manifest: types.ModuleType
    pipeline: types.ModuleType | None
    realtime: types.ModuleType | None


def package_name(root: Path) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return f"sluice_plugin_{digest}"


def import_package(root: Path) -> str:
    """Register `root` as a package and return its module name. An `__init__.py` there runs."""
    name = package_name(root)
    if name in sys.modules:
        return name
    init = root / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(root)])
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        package = types.ModuleType(name)
        package.__path__ = [str(root)]
        package.__package__ = name
        package.__file__ = None
        sys.modules[name] = package
    return name


def import_module(root: Path, module: str) -> types.ModuleType:
    """`manifest`, `pipeline`, `realtime` or a dotted submodule of the plugin at `root`."""
    expose_sdk()
    return importlib.import_module(f"{import_package(root)}.{module}")


def unload(root: Path) -> None:
    """Forget every module of the plugin at `root` (a worker that loads another version next)."""
    name = package_name(root)
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def relative_file(root: Path, filename: str | None) -> str | None:
    """`filename` as a path inside the plugin, or None when it is not plugin code."""
    if not filename:
        return None
    try:
        return Path(filename).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
