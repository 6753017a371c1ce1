"""The audit hook of a plugin host (PEP 578): the second layer, and the one that explains.

Runs INSIDE the host, on the untrusted side. The OS layers (`confine`) are the guarantee: they
hold even against code that bypasses Python (ctypes, a native extension). This hook turns the
actions those layers would block into a clear `SandboxViolation` before the OS refuses them,
naming the action, the path, host or module, and the plugin file and line that did it, and it
records each one so a violation that plugin code catches and swallows is still reported.

What it refuses:
- opening a path outside the host's read roots (or for writing, outside its write roots);
- network connections other than to the host's egress relay;
- starting processes (subprocess, os.system, exec*, spawn*, fork) by any Python route;
- importing platform packages and ray (`FORBIDDEN_IMPORTS`);
- ctypes called directly from plugin code;
- setting or deleting attributes of SDK classes and modules from plugin code (monkeypatching).
An audit hook cannot be removed once added, and plugin code never runs before it is installed.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.sandbox.errors import SandboxViolation

FORBIDDEN_IMPORTS = (
    "ray", "infra", "functions", "engine.sandbox.client", "engine.sandbox.services", "engine.sandbox.cache",
    "engine.ingest.job", "engine.realtime", "engine.models.registry", "boto3", "botocore", "aiobotocore", "motor",
    "pymongo", "qdrant_client", "qdrant_edge", "aiokafka",
)
"""Modules no host needs: the platform's own packages, Ray and the stores' clients."""

PROTECTED_MODULE_PREFIXES = ("engine.", "events.", "shared.")
"""SDK modules whose classes and module attributes plugin code may not replace."""

_PROCESS_EVENTS = {
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
    "os.startfile",
}
QUIET_PATHS = frozenset({
    "/proc/sys/kernel/random/boot_id", "/proc/sys/kernel/osrelease", "/proc/1/cgroup", "/.dockerenv",
})
"""Machine facts libraries probe on import (onnxruntime's telemetry, uuid helpers): refused like any
path outside the host's roots, but not reported as the plugin's doing."""

_WATCHED = frozenset({
    "open", "os.listdir", "os.scandir", "urllib.Request", "socket.connect", "socket.connect_ex", "socket.sendto", "socket.bind", "import",
    "object.__setattr__", "object.__delattr__", *_PROCESS_EVENTS,
})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MAX_RECORDED = 200


class AuditGuard:
    """The host's policy as an audit hook. `install()` once; `drain()` returns (and forgets) the
    violations raised since the last drain."""

    def __init__(self, *, plugin_root: Path, read: Iterable[str], write: Iterable[str], relay_port: int | None,
                 network_allow: Iterable[str] = ()) -> None:
        self.plugin_root = str(Path(plugin_root).resolve())
        self.read = tuple(_norm(p) for p in read)
        self.write = tuple(_norm(p) for p in write)
        self.relay_port = relay_port
        self.network_allow = tuple(network_allow)
        self._policy: Any = None
        self._recorded: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._this_file = __file__

    def install(self) -> None:
        from engine.sandbox.errors import set_recorder
        from engine.sealed import Sealed

        set_recorder(self._record)
        sys.addaudithook(self._hook)
        _freeze_sdk_modules(self)
        Sealed.guard = self._sealed_change

    def _sealed_change(self, target: str) -> None:
        if self._plugin_caller() is not None:
            self.refuse("attribute", target, reason="SDK classes cannot be changed")

    def drain(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self._recorded = self._recorded, []
        return out

    # --- the hook ------------------------------------------------------------------------------

    def _hook(self, event: str, args: tuple) -> None:
        if event not in _WATCHED and not event.startswith("ctypes."):
            return  # the fast path: most events (compile, exec, marshal, time.sleep...) are not ours
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            self._check(event, args)
        finally:
            self._local.busy = False

    def _check(self, event: str, args: tuple) -> None:
        if event == "open":
            self._check_open(args)
        elif event in ("os.listdir", "os.scandir"):
            path = args[0] if args else "."
            if isinstance(path, (str, bytes, os.PathLike)) and os.path.lexists(path) and not self._readable(path):
                self.refuse("list", _text(path), reason="outside the plugin's folder, its models and its scratch folder")
        elif event in ("socket.connect", "socket.connect_ex", "socket.sendto"):
            self._check_connect(args)
        elif event == "urllib.Request":
            self._check_url(args[0] if args else "")
        elif event == "socket.bind":
            self.refuse("bind", _address(args[1] if len(args) > 1 else None), reason="plugins may not listen for connections")
        elif event in _PROCESS_EVENTS:
            target = args[0] if args else ""
            self.refuse("process", _text(target), reason="plugins may not start processes")
        elif event == "import":
            name = args[0] if args else ""
            if isinstance(name, str) and _is_forbidden(name):
                self.refuse("import", name, reason="platform modules and ray are not available to plugins")
        elif event.startswith("ctypes.") and self._plugin_caller(skip=("ctypes",)) is not None:
            self.refuse("ctypes", event, reason="native calls from plugin code are not allowed")
        elif event in ("object.__setattr__", "object.__delattr__"):
            obj, name = args[0], args[1] if len(args) > 1 else ""
            if isinstance(obj, type) and _protected(getattr(obj, "__module__", "")) and self._plugin_caller() is not None:
                self.refuse("attribute", f"{obj.__module__}.{obj.__qualname__}.{name}", reason="SDK classes cannot be changed")

    def _check_open(self, args: tuple) -> None:
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return  # an already open descriptor
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and not self._writable(path):
            self.refuse("write", _text(path), reason="plugins write only in their scratch folder (HOME, TMPDIR)")
        elif not writing and _text(path) in QUIET_PATHS:
            raise PermissionError(13, "Permission denied", _text(path))
        elif not writing and os.path.lexists(path) and not self._readable(path):
            self.refuse("open", _text(path), reason="outside the plugin's folder, its models and its scratch folder")

    def _check_url(self, url: Any) -> None:
        """urllib names its destination: an undeclared one is refused here, with the plugin's line
        (the owner's proxy checks every destination again, whatever the client)."""
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(str(url))
            host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return
        if parts.scheme not in ("http", "https") or not host:
            return
        if self._policy is None:
            from engine.sandbox.egress import EgressPolicy

            self._policy = EgressPolicy(allow=self.network_allow)
        if self._policy.match(host.lower(), port) is None:
            self.refuse("network", f"{host}:{port}", reason="only hosts declared in manifest.py are reachable: "
                        "network = {'allow': ['host:port']}")

    def _check_connect(self, args: tuple) -> None:
        address = args[1] if len(args) > 1 else None
        if isinstance(address, tuple) and len(address) >= 2 and address[0] in ("127.0.0.1", "localhost") \
                and self.relay_port is not None and address[1] == self.relay_port:
            return
        reason = ("declare the host in manifest.py: network = {'allow': ['host:port']}, and reach it over HTTP(S)"
                  if self.relay_port is None else "only hosts declared in manifest.py are reachable, through the HTTP(S) proxy")
        self.refuse("network", _address(address), reason=reason)

    # --- helpers -------------------------------------------------------------------------------

    def refuse(self, action: str, target: str, *, reason: str = "") -> None:
        file, line = self._plugin_caller() or ("", 0)
        raise SandboxViolation(action, target, file=file, line=line, reason=reason)  # recorded by _record

    def _record(self, violation: dict[str, Any]) -> None:
        with self._lock:
            if len(self._recorded) < MAX_RECORDED:
                self._recorded.append(violation)

    def _plugin_caller(self, skip: tuple[str, ...] = ()) -> tuple[str, int] | None:
        """(file, line) of the innermost plugin frame on the stack; with `skip`, only when the
        innermost frame outside this module and the `skip` packages is plugin code."""
        frame: types.FrameType | None = sys._getframe(1)
        root = self.plugin_root + os.sep
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename == self._this_file:
                frame = frame.f_back
                continue
            if skip and any(f"{os.sep}{name}{os.sep}" in filename for name in skip):
                frame = frame.f_back
                continue
            if filename.startswith(root):
                return filename[len(root):], frame.f_lineno
            if skip:
                return None
            frame = frame.f_back
        return None

    def _readable(self, path: Any) -> bool:
        full = _norm(path)
        return _under(full, self.read) or _under(full, self.write)

    def _writable(self, path: Any) -> bool:
        return _under(_norm(path), self.write)


def _norm(path: Any) -> str:
    text = os.fsdecode(os.fspath(path))
    return os.path.realpath(text) if text else text


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _text(value: Any) -> str:
    try:
        return os.fsdecode(os.fspath(value))
    except TypeError:
        return str(value)[:300]


def _address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return _text(address)


def _is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IMPORTS)


def _protected(module: str) -> bool:
    return module.startswith(PROTECTED_MODULE_PREFIXES) or module in ("engine", "events", "shared")


class _FrozenModule(types.ModuleType):
    """An SDK module whose attributes plugin code cannot replace (library code still can)."""

    _guard: AuditGuard | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"):
            self._refuse_from_plugin(name)  # binding a submodule on import is the import system's own work
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        self._refuse_from_plugin(name)
        super().__delattr__(name)

    def _refuse_from_plugin(self, name: str) -> None:
        guard = _FrozenModule._guard
        if guard is not None and guard._plugin_caller() is not None:
            guard.refuse("attribute", f"{self.__name__}.{name}", reason="SDK modules cannot be changed")


def _freeze_sdk_modules(guard: AuditGuard) -> None:
    """Every SDK module loaded now (and the `shared` aliases) refuses attribute changes from plugin code."""
    _FrozenModule._guard = guard
    for name, module in list(sys.modules.items()):
        if isinstance(module, types.ModuleType) and type(module) is types.ModuleType and _protected(name):
            try:
                module.__class__ = _FrozenModule
            except TypeError:
                continue


__all__ = ["FORBIDDEN_IMPORTS", "AuditGuard"]
