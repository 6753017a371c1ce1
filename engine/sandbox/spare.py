"""Spare validation hosts: register's dry run finds a plugin host already started. TRUSTED side.

Starting a host costs seconds before any plugin code runs (the interpreter, the SDK, confinement)
and a dry run then imports its libraries and loads its models (torch and all-MiniLM-L6-v2: seconds
more). So after each validation the register process starts the next host of that namespace in the
background, a *spare*: confined like any host, to an empty plugin folder reserved for it, and
warmed with the `warm` op, which imports the libraries the namespace's last dry run loaded and
loads the models of the platform's batch services it used (runtime code only: the plugin folder
is still empty). The next validation in the namespace copies its plugin into that folder and runs
`validate` there.

What makes it safe:
- A spare belongs to one key: the namespace, the sandbox options, the namespace's secrets
  context and the egress allow-list the plugin declares (the host's relay is set at start). Two
  namespaces never share one; a plugin that declares other hosts gets a host of its own.
- A host runs plugin code once: after its validation it is closed, whatever the outcome, and the
  spare that replaces it is a new process. No plugin ever runs in a process another plugin ran in.
- Spares are bounded (`SLUICE_VALIDATION_WARM_HOSTS` per process, least recently used closed
  first) and closed after `SLUICE_VALIDATION_WARM_IDLE_S` unused; they die with their owner.
- With the sandbox off there are no hosts to keep: validation runs in the owner's process.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("sluice.sandbox.spare")

WARM_TIMEOUT_S = 120.0
"""Longest a spare's `warm` op may take; a spare that takes longer is closed."""
SPARE_WAIT_S = 30.0
"""Longest a validation waits for its namespace's spare to finish starting before starting its own."""
REAP_EVERY_S = 15.0


@dataclass(frozen=True)
class SpareKey:
    namespace: str
    digest: str
    options: Any = field(compare=False, hash=False)
    context: dict[str, Any] = field(compare=False, hash=False, default_factory=dict)
    network_allow: tuple[str, ...] = field(compare=False, hash=False, default=())

    @classmethod
    def of(cls, namespace: str, options: Any, context: dict[str, Any], network_allow: tuple[str, ...]) -> SpareKey:
        material = json.dumps([namespace, options.as_dict(), context, sorted(network_allow)], sort_keys=True, default=str)
        return cls(namespace, hashlib.sha256(material.encode()).hexdigest(), options, dict(context), tuple(network_allow))


@dataclass
class Spare:
    key: SpareKey
    host: Any
    folder: Path
    started: float = field(default_factory=time.monotonic)

    def release(self) -> None:
        """Remove the plugin folder the spare was given (its host is closed by the caller)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class SpareHosts:
    """The spare validation hosts of this process. Thread-safe."""

    def __init__(self) -> None:
        self._spares: dict[SpareKey, Spare] = {}
        self._starting: set[SpareKey] = set()
        self._warm: dict[SpareKey, dict[str, Any]] = {}
        self._generation = 0
        self.taken = 0
        """Validations that ran in a spare (for health and tests)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._reaper: threading.Thread | None = None
        # Spares start on long-lived threads: a host asks the kernel to kill it when the thread that
        # started it ends (PR_SET_PDEATHSIG follows the thread, not the process).
        self._starter = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sluice-spare")

    def take(self, key: SpareKey, root: Path) -> Spare | None:
        """The key's spare with the plugin at `root` copied into its folder, or None. A spare still
        starting is waited for: it is further along than a host started now would be."""
        with self._changed:
            self._changed.wait_for(lambda: key not in self._starting, timeout=SPARE_WAIT_S)
            spare = self._spares.pop(key, None)
        if spare is None:
            return None
        if time.monotonic() - spare.started > _idle_s(key.options) or not spare.host.alive():
            _close(spare)
            return None
        try:
            _copy_plugin(root, spare.folder)
        except OSError as exc:
            log.warning("could not hand a plugin to the spare host of namespace %s: %s", key.namespace, exc)
            _close(spare)
            return None
        self.taken += 1
        return spare

    def open(self, key: SpareKey, root: Path, *, run: dict[str, Any], label: str) -> Any:
        """A host started now for the plugin at `root` (no spare was ready)."""
        return _open(key, root, run=run, label=label)

    def replenish(self, key: SpareKey, warm: dict[str, Any]) -> None:
        """Start the key's next spare in the background (when spares are on and it has none),
        warmed with what the last dry run loaded (`warm`: {"modules", "services"})."""
        if not key.options.enabled or _max_hosts(key.options) <= 0:
            return
        with self._lock:
            if warm:
                self._warm[key] = {"modules": list(warm.get("modules") or [])[:300],
                                   "services": list(warm.get("services") or [])[:20]}
            if key in self._spares or key in self._starting:
                return
            self._starting.add(key)
            warm = dict(self._warm.get(key) or {})
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap_forever, name="sluice-spare-reaper", daemon=True)
                self._reaper.start()
        self._starter.submit(self._start, key, warm, self._generation)

    def close(self) -> None:
        """Close every spare; those still starting are closed once started."""
        with self._lock:
            self._generation += 1
            spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            _close(spare)

    def count(self) -> int:
        return len(self._spares)

    def _start(self, key: SpareKey, warm: dict[str, Any], generation: int) -> None:
        spare = None
        try:
            from engine.sandbox.cache import namespace_dir

            parent = namespace_dir(key.options.root(), key.namespace) / "validate"
            parent.mkdir(mode=0o711, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix="plugin-", dir=parent))
            os.chmod(folder, 0o755)
            host = _open(key, folder, run={"plugin_id": "spare", "name": "spare", "version": "0", "parameters": {}},
                         label="spare validation host")
            spare = Spare(key, host, folder)
            answer, _ = host.call("warm", warm, timeout_s=WARM_TIMEOUT_S)
            if not answer.get("ok"):
                raise RuntimeError(str(answer.get("error")))
            host.drain_violations()  # runtime code touching files it may not: not the next plugin's doing
            evicted: list[Spare] = []
            with self._lock:
                if generation != self._generation:  # closed meanwhile
                    evicted.append(spare)
                else:
                    self._spares[key] = spare
                while len(self._spares) > _max_hosts(key.options):
                    oldest = min(self._spares.values(), key=lambda s: s.started)
                    evicted.append(self._spares.pop(oldest.key))
            for old in evicted:
                _close(old)
            log.info("spare validation host ready for namespace %s (%d libraries, services %s)", key.namespace,
                     len(answer.get("modules") or []), answer.get("services"))
        except Exception as exc:  # noqa: BLE001 - no spare: the next validation starts its own host
            log.warning("no spare validation host for namespace %s: %s: %s", key.namespace, type(exc).__name__, exc)
            if spare is not None:
                _close(spare)
        finally:
            with self._changed:
                self._starting.discard(key)
                self._changed.notify_all()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(REAP_EVERY_S)
            now = time.monotonic()
            with self._lock:
                expired = [s for s in self._spares.values() if now - s.started > _idle_s(s.key.options)]
                for spare in expired:
                    self._spares.pop(spare.key, None)
            for spare in expired:
                _close(spare)


def _open(key: SpareKey, root: Path, *, run: dict[str, Any], label: str) -> Any:
    from engine.sandbox.cache import models_dir
    from engine.sandbox.client import open_host
    from engine.sandbox.services import HostServices

    services = HostServices(key.namespace, asset_access={"kind": "none"}, secrets_context=key.context,
                            models_dir=models_dir(key.options.root(), key.namespace))
    return open_host(namespace=key.namespace, plugin=label, plugin_root=root, run=run, services=services,
                     options=key.options, network_allow=key.network_allow)


def _close(spare: Spare) -> None:
    try:
        spare.host.close()
    finally:
        spare.release()


def _copy_plugin(root: Path, folder: Path) -> None:
    """The plugin's files (never links) into the spare's folder, readable by the host's uid."""
    def links(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if os.path.islink(os.path.join(directory, n))]

    shutil.copytree(root, folder, dirs_exist_ok=True, ignore=links)
    for current, _dirs, files in os.walk(folder):
        os.chmod(current, 0o755)
        for name in files:
            os.chmod(os.path.join(current, name), 0o644)


def _max_hosts(options: Any) -> int:
    return int(getattr(options, "spare_hosts", 0) or 0)


def _idle_s(options: Any) -> float:
    return float(getattr(options, "spare_idle_s", 300.0) or 0.0)


SPARE_HOSTS = SpareHosts()
"""The process's spare hosts (one register function per process uses them)."""

__all__ = ["SPARE_HOSTS", "Spare", "SpareHosts", "SpareKey"]
