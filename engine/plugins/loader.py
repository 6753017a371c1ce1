"""Import a plugin's code — only ever after it passed the scanner, and only in a worker process
(the validation subprocess, a Ray worker), never in a handler's.

A plugin folder is imported as a package under a private name, so its relative imports
(`from .manifest import MyParams`) work and two plugins (or two versions of one) never share
modules. The SDK paths the hosted product documents under `shared.*` are exposed as aliases of
`engine.shared.*`.

Every module of the plugin (the package's `__init__.py`, `manifest`, `pipeline`, `processors/*`, ...)
runs with guarded builtins: its `__builtins__` is a copy of the builtins whose `getattr` and
`hasattr` refuse private and dunder names (`getattr(obj, "_" + "_class__")`) with a
`SandboxViolation` naming the plugin file and line, and otherwise behave exactly like the real
ones. The scanner can then allow computed attribute names, which honest code uses
(`getattr(torch, dtype_name)`), without opening the dunder walk out of the sandbox. A meta-path
finder for the plugin's package prefix gives the guard to each plugin module before its code runs;
library modules (numpy, torch, the SDK) keep the real builtins.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import pkgutil
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.plugins.scanner import INTERNAL_ATTRS, SAFE_DUNDERS
from engine.sandbox.errors import SandboxViolation

SDK_ALIAS = "shared"

GUARD_ALLOWED_DUNDERS = SAFE_DUNDERS
"""Dunders the guard lets through, as the scanner does: plain duck typing (`__name__`, `__len__`,
`__version__`), no way to the interpreter's internals."""
GUARD_REFUSED_NAMES = frozenset(name for name in INTERNAL_ATTRS if not name.startswith("_"))
"""Names without an underscore that still walk frames (`f_globals`, `f_back`, `gi_frame`, `tb_frame`)."""


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


# --- guarded builtins ----------------------------------------------------------------------------

def _plugin_frame(root: Path) -> tuple[str, int]:
    """(file relative to the plugin, line) of the innermost plugin frame calling the guard."""
    frame: types.FrameType | None = sys._getframe(2)  # the guard; the plugin code that called it is further out
    while frame is not None:
        rel = relative_file(root, frame.f_code.co_filename)
        if rel is not None:
            return rel, frame.f_lineno
        frame = frame.f_back
    return "", 0


def _owned_by(obj: Any, package: str) -> bool:
    """Whether `obj` is a module or class of the plugin, or an instance of a plugin class."""
    if isinstance(obj, types.ModuleType):
        name = obj.__dict__.get("__name__")
    else:
        name = (obj if isinstance(obj, type) else type(obj)).__dict__.get("__module__")
    return isinstance(name, str) and (name == package or name.startswith(package + "."))


def guarded_builtins(root: Path, package: str | None = None) -> dict[str, Any]:
    """A copy of the builtins whose `getattr`/`hasattr` refuse names starting with `_` (except the
    duck-typing dunders in GUARD_ALLOWED_DUNDERS, and single-underscore names of the plugin's own
    modules, classes and instances, which its code may name literally anyway) and the frame-walking
    names, raising SandboxViolation("attribute", name) with the calling plugin file and line."""
    root = Path(root)
    package = package or package_name(root)
    real_getattr, real_hasattr = builtins.getattr, builtins.hasattr

    def check(obj: Any, name: Any) -> Any:
        if not isinstance(name, str):
            return name  # the real function raises its own TypeError
        name = str.__str__(name)  # a str subclass cannot pose as another name
        if name in GUARD_REFUSED_NAMES or (
                name.startswith("_") and name not in GUARD_ALLOWED_DUNDERS
                and (name.startswith("__") or not _owned_by(obj, package))):
            file, line = _plugin_frame(root)
            raise SandboxViolation("attribute", name, file=file, line=line,
                                   reason="plugin code may not read private or dunder attributes by computed name")
        return name

    def getattr(obj: Any, name: Any, *default: Any) -> Any:
        return real_getattr(obj, check(obj, name), *default)

    def hasattr(obj: Any, name: Any) -> bool:
        return real_hasattr(obj, check(obj, name))

    getattr.__doc__, hasattr.__doc__ = real_getattr.__doc__, real_hasattr.__doc__
    guarded = dict(builtins.__dict__)
    guarded["getattr"], guarded["hasattr"] = getattr, hasattr
    return guarded


class _GuardedSourceLoader(importlib.machinery.SourceFileLoader):
    """Runs a plugin module with the plugin's guarded builtins (set before its code runs: exec keeps
    a `__builtins__` the globals already have)."""

    def __init__(self, fullname: str, path: str, guarded: dict[str, Any]) -> None:
        super().__init__(fullname, path)
        self._guarded = guarded

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["__builtins__"] = self._guarded
        super().exec_module(module)


class _PluginFinder:
    """sys.meta_path entry for one plugin package: finds its submodules like the path finder does and
    gives each the guarded builtins. Only Python source and plain folders are imported from a plugin."""

    def __init__(self, package: str, root: Path) -> None:
        self.package, self.root = package, root
        self.guarded = guarded_builtins(root, package)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.package + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        if spec.origin is None or isinstance(spec.loader, importlib.machinery.NamespaceLoader):
            return spec  # a folder without __init__.py: no code of its own
        if type(spec.loader) is not importlib.machinery.SourceFileLoader:
            rel = relative_file(self.root, spec.origin) or spec.origin
            raise SandboxViolation("import", fullname, file=rel, reason="plugins are imported from Python source files only")
        spec.loader = _GuardedSourceLoader(fullname, spec.origin, self.guarded)
        return spec

    def invalidate_caches(self) -> None:
        pass


def _finder(name: str) -> _PluginFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, _PluginFinder) and f.package == name), None)


def _install_finder(name: str, root: Path) -> _PluginFinder:
    finder = _finder(name)
    if finder is None:
        finder = _PluginFinder(name, root)
        sys.meta_path.insert(0, finder)
    return finder


def import_package(root: Path) -> str:
    """Register `root` as a package and return its module name. An `__init__.py` there runs, with
    the plugin's guarded builtins like every module of the plugin."""
    name = package_name(root)
    finder = _install_finder(name, root)
    if name in sys.modules:
        return name
    init = root / "__init__.py"
    if init.is_file():
        loader = _GuardedSourceLoader(name, str(init), finder.guarded)
        spec = importlib.util.spec_from_file_location(name, init, loader=loader, submodule_search_locations=[str(root)])
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
    """Forget every module of the plugin at `root` (a worker that loads another version next), and
    its import finder."""
    name = package_name(root)
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _PluginFinder) and f.package == name)]
    folder = str(root)
    for key in [k for k in sys.path_importer_cache if isinstance(k, str) and (k == folder or k.startswith(folder + os.sep))]:
        sys.path_importer_cache.pop(key, None)


def relative_file(root: Path, filename: str | None) -> str | None:
    """`filename` as a path inside the plugin, or None when it is not plugin code."""
    if not filename:
        return None
    try:
        return Path(filename).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
