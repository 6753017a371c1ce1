"""Starting and talking to plugin hosts. TRUSTED side of the boundary.

`open_host(...)` gives the owner (an ingest actor, a Serve replica, the register function) a host
for one (namespace, plugin version): a `PluginHost` child process, confined (see
`engine.sandbox.host`), or — only when an operator turned the sandbox off — an `InProcessHost`
that runs the same ops in the owner's process.

The owner sends the host its configuration (its namespace, its plugin folder, the paths Landlock
will allow, its limits) and then ops; while it waits for an op's answer it serves the host's SDK
requests with `HostServices`, for the host's namespace only. A host that dies, breaks the
protocol or runs past the call's time limit is killed and reported as `PluginHostError`, a
failure of the plugin; the next call starts a new host.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.sandbox import protocol
from engine.sandbox.errors import PluginHostError, SandboxUnavailable

log = logging.getLogger("sluice.sandbox")

DENIED_PACKAGES = (
    "ray", "boto3", "botocore", "aiobotocore", "s3transfer", "motor", "pymongo", "bson", "gridfs", "qdrant_client",
    "qdrant_edge", "aiokafka", "kafka", "moto", "calfkit", "mongomock", "mongomock_motor",
)
"""site-packages entries a host cannot read: Ray and the clients of the platform's stores."""
SYSTEM_READ = (
    "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache", "/etc/ssl", "/etc/pki",
    "/usr/share/ca-certificates", "/usr/share/zoneinfo", "/etc/localtime", "/usr/share/locale",
)
"""System files every Python process needs (shared libraries, CA certificates for TLS through the
egress proxy, time zones). No data of the platform or of other users lives there."""
HOST_UID = 65534
"""The unprivileged uid and gid a host started by root drops to (when the runtime is readable by it)."""
KEEP_ENV = ("LANG", "LC_ALL", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")
"""The only variables of the owner's environment a host inherits: locale and thread counts (Ray
sets them per actor) and the GPUs Ray assigned."""


@dataclass(frozen=True)
class SandboxOptions:
    """How hosts are started: from the settings, carried to workers in the spec."""

    enabled: bool = True
    allow_degraded: bool = False
    cache_root: str = ""
    memory_bytes: int | None = 16 * 1024**3
    cpu_seconds: int | None = None
    file_bytes: int | None = 8 * 1024**3
    open_files: int = 4096
    call_timeout_s: float | None = 600.0
    start_timeout_s: float = 120.0
    pinned_hosts: dict[str, str] = field(default_factory=dict)
    denied_ports: tuple[int, ...] = ()
    extra_read: tuple[str, ...] = ()
    spare_hosts: int = 0
    """Spare validation hosts kept warm in the validating process (`engine.sandbox.spare`); 0: none."""
    spare_idle_s: float = 300.0
    """How long an unused spare validation host is kept."""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SandboxOptions:
        data = dict(data or {})
        for key in ("denied_ports", "extra_read"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def root(self) -> Path:
        from engine.sandbox.cache import default_root

        return Path(self.cache_root) if self.cache_root else default_root()


# --- the paths a host may read ------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def runtime_paths(extra: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(read, list_only): the interpreter's standard library, every site-packages entry except
    `DENIED_PACKAGES`, the SDK's own packages (`engine`, `events` — never `infra` or `functions`)
    and `SYSTEM_READ`; site-packages folders themselves are list-only."""
    import engine
    import events
    from engine.sandbox import confine

    paths = sysconfig.get_paths()
    read = {paths["stdlib"], paths["platstdlib"], str(Path(engine.__file__).parent), str(Path(events.__file__).parent)}
    list_only: set[str] = set()
    for site_dir in {paths["purelib"], paths["platlib"]}:
        if not os.path.isdir(site_dir):
            continue
        list_only.add(site_dir)
        for entry in os.listdir(site_dir):
            top = entry.split("-", 1)[0].split(".", 1)[0].lower()
            if top not in DENIED_PACKAGES and not entry.startswith(DENIED_PACKAGES):
                read.add(os.path.join(site_dir, entry))
    read.update(p for p in (*SYSTEM_READ, *getattr(confine, "RUNTIME_EXTRA_READ", ()), *extra) if os.path.exists(p))
    return sorted(read), sorted(list_only)


def gpu_devices(visible: str | None) -> list[str]:
    """The device files of the GPUs this process was assigned (CUDA indices in PCI bus order),
    plus the control devices; none when no GPU was assigned."""
    if not visible or not os.path.exists("/dev/nvidiactl"):
        return []
    indices = [v.strip() for v in visible.split(",") if v.strip()]
    minors = _minors_by_pci_order()
    devices = []
    for index in indices:
        if index.isdigit() and int(index) < len(minors):
            devices.append(f"/dev/nvidia{minors[int(index)]}")
        elif not index.isdigit():  # a UUID: the mapping needs NVML; allow every GPU (documented)
            devices.extend(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    control = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset")
    return sorted({*devices, *(c for c in control if os.path.exists(c))})


def _minors_by_pci_order() -> list[int]:
    found = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Device Minor:"):
                found.append(int(line.split(":", 1)[1]))
    return found or [int(p.name[6:]) for p in sorted(Path("/dev").glob("nvidia[0-9]*"))]


# --- hosts ----------------------------------------------------------------------------------------

class PluginHost:
    """A confined child process running one plugin version for one namespace."""

    def __init__(self, *, namespace: str, plugin: str, plugin_root: Path, run: dict[str, Any], services: Any,
                 options: SandboxOptions, network_allow: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.namespace, self.plugin, self.plugin_root = namespace, plugin, Path(plugin_root)
        self.run, self.services, self.options = run, services, options
        self.network_allow = tuple(network_allow)
        self.extra_env = dict(env or {})
        self.layers: dict[str, str] = {}
        self.violations: list[dict[str, Any]] = []
        self.network_events: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._broker: Any = None
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._scratch: Path | None = None

    # --- life -----------------------------------------------------------------------------------

    def start(self) -> PluginHost:
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return self
            self._spawn()
        return self

    def _spawn(self) -> None:
        from engine.sandbox import cache

        root = self.options.root()
        scratch = cache.new_scratch(root, self.namespace)
        models = cache.models_dir(root, self.namespace)
        self._scratch = scratch
        self.services.scratch = scratch
        read, list_only = (list(paths) for paths in runtime_paths(tuple(self.options.extra_read)))
        devices = gpu_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
        self._hand_scratch_over(scratch, read + [str(self.plugin_root), str(models)], list_only)
        parent_ctrl, child_ctrl = socket.socketpair()
        parent_egress, child_egress = socket.socketpair()
        env = self._environment(scratch, gpus=bool(devices))
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-m", "engine.sandbox.host", str(child_ctrl.fileno()), str(child_egress.fileno())],
            pass_fds=(child_ctrl.fileno(), child_egress.fileno()), env=env, cwd=str(scratch), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        child_ctrl.close()
        child_egress.close()
        self._sock = parent_ctrl
        threading.Thread(target=self._drain_output, args=(self._process,), daemon=True, name="plugin-host-output").start()
        if self.network_allow:
            from engine.sandbox.egress import EgressBroker, EgressPolicy

            policy = EgressPolicy(allow=self.network_allow, pinned=dict(self.options.pinned_hosts),
                                  denied_ports=frozenset(self.options.denied_ports))
            self._broker = EgressBroker(policy, parent_egress, on_event=self._on_network)
            self._broker.start()
        else:
            parent_egress.close()
        limits = {"memory_bytes": None if devices else self.options.memory_bytes, "cpu_seconds": self.options.cpu_seconds,
                  "file_bytes": self.options.file_bytes, "open_files": self.options.open_files}
        config = {
            "owner_pid": os.getpid(), "namespace": self.namespace, "plugin": self.plugin,
            "plugin_root": str(self.plugin_root), "scratch": str(scratch), "models": str(models), "run": self.run,
            "read": [*read, str(self.plugin_root), str(models)], "write": [str(scratch)], "list_only": list_only,
            "devices": devices, "limits": limits, "network_allow": list(self.network_allow),
            "allow_degraded": self.options.allow_degraded, "isolate_network": True,
        }
        try:
            protocol.send(parent_ctrl, config)
            hello, _ = self._receive(self.options.start_timeout_s, "start")
        except BaseException:
            self._kill()
            raise
        if not hello.get("hello"):
            self._kill()
            raise PluginHostError(self.plugin, f"the host did not start: {hello}", kind="start")
        self.layers = dict(hello.get("layers") or {})
        log.info("plugin host started: %s (namespace %s) pid %s layers %s", self.plugin, self.namespace, hello.get("pid"),
                 self.layers)

    def _hand_scratch_over(self, scratch: Path, read: list[str], list_only: list[str]) -> None:
        """As root, when the unprivileged uid the host will drop to can read everything it needs,
        give it its scratch folder (the host then runs as that uid; otherwise as uid 0 without
        capabilities, and the folder stays root's)."""
        from engine.sandbox import confine

        if os.geteuid() != 0 or confine.unreachable_by(confine.Rules(read=tuple(read), list_only=tuple(list_only)),
                                                         HOST_UID, HOST_UID):
            return
        for path in (scratch, scratch / "tmp"):
            os.chown(path, HOST_UID, HOST_UID)
        self.services.scratch_owner = (HOST_UID, HOST_UID)

    def _environment(self, scratch: Path, *, gpus: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in KEEP_ENV}
        env.update(
            PATH="/usr/local/bin:/usr/bin:/bin", HOME=str(scratch), TMPDIR=str(scratch / "tmp"), USER="sluice-plugin",
            LOGNAME="sluice-plugin", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
            XDG_CACHE_HOME=str(scratch / ".cache"), MPLCONFIGDIR=str(scratch / ".cache" / "matplotlib"),
        )
        if gpus:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env.update(self.extra_env)
        return env

    def _drain_output(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            self._output.append(line)
            log.debug("plugin %s: %s", self.plugin, line)

    def _on_network(self, event: dict[str, Any]) -> None:
        self.network_events.append(event)
        if not event.get("allowed"):
            self.violations.append(
                {
                    "action": "network",
                    "target": f"{event.get('host')}:{event.get('port')}",
                    "file": "",
                    "line": 0,
                    "reason": event.get("reason", ""),
                    "message": f"sandbox: network {event.get('host')}:{event.get('port')} refused ({event.get('reason', '')})",
                }
            )

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        process, self._process = self._process, None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._broker is not None:
            self._broker.close()
            self._broker = None
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                process.wait(timeout=10)
        if self._scratch is not None:
            from engine.sandbox.cache import remove_tree

            with contextlib.suppress(OSError):
                remove_tree(self._scratch)
            self._scratch = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._kill()

    # --- calls ----------------------------------------------------------------------------------

    def alive(self) -> bool:
        """Whether the host process is running."""
        process = self._process
        return process is not None and process.poll() is None

    def call(self, op: str, header: dict[str, Any] | None = None, body: bytes = b"", *,
             timeout_s: float | None = -1.0) -> tuple[dict[str, Any], bytes]:
        """Run `op` in the host; the host's answer (`ok`, `error`, `violations`) and body. Raises
        PluginHostError when the host died, misbehaved or ran out of time (it is then replaced by
        a new one at the next call)."""
        timeout = self.options.call_timeout_s if timeout_s == -1.0 else timeout_s
        with self._lock:
            self.start()
            assert self._sock is not None
            try:
                protocol.send(self._sock, {"op": op, **(header or {})}, body)
                answer, out = self._receive(timeout, op)
            except BaseException:
                self._kill()
                raise
            self.violations.extend(answer.get("violations") or [])
            return answer, out

    def _receive(self, timeout: float | None, op: str) -> tuple[dict[str, Any], bytes]:
        assert self._sock is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
            self._sock.settimeout(remaining)
            try:
                header, body = protocol.recv(self._sock)
            except TimeoutError:
                raise PluginHostError(self.plugin, f"{op} did not finish within {timeout:g} s; the host was stopped",
                                      kind="timeout") from None
            except (EOFError, ConnectionError, OSError) as exc:
                raise self._died(op) from exc
            except protocol.ProtocolError as exc:
                raise PluginHostError(self.plugin, f"the host broke the protocol during {op}: {exc}", kind="protocol") from exc
            if "sdk" in header:
                reply = self.services.answer(str(header.get("sdk")), header.get("args") or {})
                protocol.send(self._sock, reply)
                continue
            return header, body

    def _died(self, op: str) -> PluginHostError:
        process = self._process
        code = None
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = process.wait(timeout=5)
        time.sleep(0.05)  # let the output thread catch the last lines
        tail = "\n".join(list(self._output)[-20:])
        how = (f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exited with status {code}" if code is not None else "stopped answering")
        return PluginHostError(self.plugin, f"the plugin host {how} during {op}" + (f"; its last output:\n{tail}" if tail else ""),
                               exit_code=code, output=tail)

    def drain_violations(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self.violations = self.violations, []
        return out


class InProcessHost:
    """The sandbox turned OFF by the operator: the same ops, in the owner's own process, with no
    containment at all. Only for trusted plugins and for measuring what the sandbox costs."""

    def __init__(self, *, namespace: str, plugin: str, plugin_root: Path, run: dict[str, Any], services: Any,
                 options: SandboxOptions, network_allow: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        from engine.sandbox.cache import new_scratch

        self.namespace, self.plugin, self.plugin_root, self.services = namespace, plugin, Path(plugin_root), services
        self.layers = {"sandbox": "off: SLUICE_SANDBOX=off (plugin code runs in the owner's process)"}
        self.violations: list[dict[str, Any]] = []
        self.options = options
        scratch = new_scratch(options.root(), namespace)
        services.scratch = scratch
        self._scratch = scratch
        self._runtime: Any = None
        self._config = {"namespace": namespace, "plugin": plugin, "plugin_root": str(plugin_root), "scratch": str(scratch),
                        "run": run}
        self._lock = threading.RLock()

    def start(self) -> InProcessHost:
        with self._lock:
            if self._runtime is None:
                from engine import assets
                from engine.models import namespace
                from engine.plugins.loader import expose_sdk
                from engine.sandbox.host import Runtime, wire_sdk

                # put back on close: the owner's process goes on after this plugin
                self._previous = (assets._bridge, namespace._resolver, list(assets._allowed_roots))
                bridge = _LocalBridge(self.services)
                expose_sdk()
                wire_sdk(self._config, bridge)
                self._runtime = Runtime(self._config, bridge)
        return self

    def call(self, op: str, header: dict[str, Any] | None = None, body: bytes = b"", *,
             timeout_s: float | None = -1.0) -> tuple[dict[str, Any], bytes]:
        from engine.sandbox.host import _describe

        with self._lock:
            self.start()
            try:
                answer, out = getattr(self._runtime, f"op_{op}")({"op": op, **(header or {})}, body)
                return {"ok": True, **answer, "violations": []}, out
            except Exception as exc:  # noqa: BLE001
                return {"ok": False, "error": _describe(exc, self.plugin_root), "violations": []}, b""

    def drain_violations(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        from engine import assets
        from engine.models.namespace import set_namespace_model_resolver
        from engine.sandbox.cache import remove_tree

        with self._lock:
            if self._runtime is not None:
                bridge, resolver, roots = self._previous
                assets.configure_asset_bridge(bridge)
                set_namespace_model_resolver(resolver)
                for root in list(assets._allowed_roots):
                    if root not in roots:
                        assets.disallow_asset_root(root)
                self._runtime = None
        with contextlib.suppress(OSError):
            remove_tree(self._scratch)


class _LocalBridge:
    def __init__(self, services: Any) -> None:
        self.services = services

    def call(self, call: str, **args: Any) -> Any:
        from engine.sandbox.host import _error_from

        answer = self.services.answer(call, args)
        if not answer.get("ok"):
            raise _error_from(answer.get("error") or {})
        return answer.get("value")


def open_host(*, namespace: str, plugin: str, plugin_root: Path, run: dict[str, Any], services: Any,
              options: SandboxOptions, network_allow: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Any:
    """A started host for the plugin (`PluginHost`, or `InProcessHost` when the sandbox is off)."""
    kind = PluginHost if options.enabled else InProcessHost
    return kind(namespace=namespace, plugin=plugin, plugin_root=plugin_root, run=run, services=services, options=options,
                network_allow=network_allow, env=env).start()


def check_available(options: SandboxOptions) -> dict[str, dict[str, Any]]:
    """Each layer this machine offers. Raises SandboxUnavailable when the sandbox is on, a layer
    is missing and the operator did not allow degraded hosts."""
    if not options.enabled:
        return {"sandbox": {"available": False, "detail": "off: SLUICE_SANDBOX=off, plugin code is not contained"}}
    from engine.sandbox import confine

    layers = confine.probe()
    missing = [f"{name} ({info.get('detail')})" for name, info in layers.items() if not info.get("available")]
    if missing and not options.allow_degraded:
        raise SandboxUnavailable(
            "the plugin sandbox cannot start on this machine; missing: " + ", ".join(missing)
            + ". Fix the kernel or container settings, or set SLUICE_SANDBOX_ALLOW_DEGRADED=1 to run plugin code with "
              "the layers that remain (or SLUICE_SANDBOX=off to run it uncontained)")
    return layers


__all__ = ["DENIED_PACKAGES", "InProcessHost", "PluginHost", "SandboxOptions", "check_available", "gpu_devices",
           "open_host", "runtime_paths"]
