"""The plugin host: the only process where plugin code runs. UNTRUSTED side of the boundary.

Started by the trusted side (`engine.sandbox.client.PluginHost`) as
`python -I -m engine.sandbox.host CTRL_FD EGRESS_FD` with a clean environment, for one namespace
and one plugin version. Before any plugin code is imported it:

1. asks the kernel to kill it when its owner dies, and reads its configuration from the owner;
2. enters a private network namespace (only its own loopback) and, when the manifest declares
   hosts, starts the egress relay that plugin HTTP clients reach through `HTTP(S)_PROXY`;
3. wires the SDK to the owner: `open_asset`/`download_asset` of objects, `load_namespace_model`,
   `container.secrets` and `container.llm` become requests on the control socket, which the
   owner answers for this namespace only;
4. confines itself (`engine.sandbox.confine`: rlimits, privileges, Landlock, seccomp) and
   installs the audit hook (`engine.sandbox.audit`);
5. reports the layers it applied, then serves ops until the owner closes the socket.

It holds no Ray connection, catalog, credentials or platform settings: there are none in its
environment, and the files that hold them are outside what Landlock lets it read.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

from engine.sandbox import protocol
from engine.sandbox.errors import SandboxViolation

MAX_WARM_MODULES = 300
"""Most libraries one `warm` op imports."""
RELAY_PORT = 3128
"""The egress relay's port inside the host's own network namespace (nothing else listens there)."""
_PR_SET_PDEATHSIG = 1


class SdkBridge(Protocol):
    """What the bridged SDK calls: `Bridge` in a host, `client._LocalBridge` when the sandbox is off."""

    def call(self, call: str, **args: Any) -> Any: ...


class Bridge:
    """Requests from plugin code to the owner, on the control socket. The owner only answers
    while it waits for the reply of an op, which is exactly when plugin code runs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def call(self, call: str, **args: Any) -> Any:
        with self.lock:
            protocol.send(self.sock, {"sdk": call, "args": args})
            header, _ = protocol.recv(self.sock)
        if not header.get("ok"):
            raise _error_from(header.get("error") or {})
        return header.get("value")


def _error_from(error: dict[str, Any]) -> Exception:
    """The owner's refusal as the SDK's own error types, so plugins see what they would in-process."""
    from events.errors import Forbidden, InvalidInput, NotFound, PermanentError, TransientError

    kinds = {"not_found": NotFound, "forbidden": Forbidden, "invalid_input": InvalidInput, "transient": TransientError}
    kind, message = error.get("kind", ""), error.get("message") or "the platform refused the request"
    if kind == "model_not_available":
        from engine.models.errors import ModelNotAvailable

        model_id = error.get("model_id", "")
        return ModelNotAvailable(model_id, message.removeprefix(f"model {model_id!r} is not available: "))
    if kind == "llm_unavailable":
        from engine.llm import LLMUnavailable

        return LLMUnavailable(message)
    if kind == "secret_not_found":
        from engine.namespace_secrets import SecretNotFound

        return SecretNotFound(message)
    return kinds.get(kind, PermanentError)(message)


# --- the SDK, bridged -------------------------------------------------------------------------

class BridgedSecrets:
    """`container.secrets` in a host: the owner decrypts, for this namespace only."""

    def __init__(self, namespace: str, bridge: SdkBridge) -> None:
        self.namespace, self._bridge = namespace, bridge

    def __repr__(self) -> str:
        return f"SecretsAccessor(namespace={self.namespace!r})"

    async def get(self, name: str) -> str:
        return str(self._bridge.call("secret", name=name))

    async def list(self) -> list[str]:
        return list(self._bridge.call("secrets"))


def bridged_llm(bridge: SdkBridge) -> Any:
    from engine.llm import LLMRequest, LLMResult, LLMService

    class BridgedLLM(LLMService):
        """`container.llm` in a host: requests go to the owner's providers."""

        @property
        def providers(self) -> list[str]:
            return list(bridge.call("llm_providers"))

        async def process(self, request: LLMRequest) -> LLMResult:
            return LLMResult.model_validate(bridge.call("llm", request=request.model_dump(mode="json")))

    return BridgedLLM()


def load_model_export(value: dict[str, Any]) -> Any:
    """A namespace model as the owner exported it: a state_dict over a read-only memory map of
    its file (pages shared by every host of the node), the ONNX bytes, or a folder path."""
    kind = value["kind"]
    if kind == "bytes":
        return Path(value["path"]).read_bytes()
    if kind == "path":
        return Path(value["path"])
    import warnings

    import numpy as np
    import torch

    raw = np.memmap(value["path"], mode="r", dtype=np.uint8)
    tensors: dict[str, Any] = {}
    with warnings.catch_warnings():  # the tensors are read-only views of the mapped file
        warnings.simplefilter("ignore", UserWarning)
        for name, (dtype, shape, offset, nbytes) in value["index"].items():
            buffer = raw[offset:offset + nbytes]
            if dtype == "bfloat16":
                tensors[name] = torch.from_numpy(buffer.view(np.int16).reshape(shape)).view(torch.bfloat16)
            else:
                tensors[name] = torch.from_numpy(buffer.view(np.dtype(dtype)).reshape(shape))
    return tensors


def wire_sdk(config: dict[str, Any], bridge: SdkBridge) -> None:
    """Point the SDK's doors at the owner (assets, namespace models) and at this host's own files."""
    from engine import assets
    from engine.models.namespace import set_namespace_model_resolver

    assets.allow_asset_root(config["plugin_root"])
    assets.allow_asset_root(config["scratch"])
    assets.configure_asset_bridge(lambda url, suffix: bridge.call("asset", url=url, suffix=suffix))
    loaded: dict[str, Any] = {}
    lock = threading.Lock()

    def resolve(model_id: str) -> Any:
        with lock:
            if model_id not in loaded:
                loaded[model_id] = load_model_export(bridge.call("model", model_id=model_id))
            return loaded[model_id]

    set_namespace_model_resolver(resolve)


# --- ops ------------------------------------------------------------------------------------------

class Runtime:
    """The plugin version this host serves, and the ops the owner may ask of it."""

    def __init__(self, config: dict[str, Any], bridge: SdkBridge) -> None:
        from engine.plugins.container import PluginContainer

        self.config = config
        self.root = Path(config["plugin_root"])
        self.scratch = Path(config["scratch"])
        self.run: dict[str, Any] = config["run"]
        self.container = PluginContainer(
            namespace=config["namespace"], llm=bridged_llm(bridge), secrets=BridgedSecrets(config["namespace"], bridge))  # type: ignore[arg-type]
        self.steps_by_params: dict[str, list] = {}
        self.runners: list = []
        self.first = self.last = False
        self.service: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- batch ------------------------------------------------------------------------------------

    def build_steps(self, parameters: dict[str, Any] | None = None) -> list:
        import hashlib
        import json

        from engine.plugins.extractors.pipeline import StepFailed, coerce_steps
        from engine.plugins.loader import import_module
        from engine.plugins.request import ExtractorConfig, ExtractorRequest

        params = {**self.run.get("parameters", {}), **(parameters or {})}
        key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
        if key in self.steps_by_params:
            return self.steps_by_params[key]
        pipeline = import_module(self.root, "pipeline")
        request = ExtractorRequest(
            namespace=self.config["namespace"], feature_extractor_id=self.run["plugin_id"],
            collection_id=self.run.get("collection_id"),
            extractor_config=ExtractorConfig(feature_extractor_name=self.run["name"], version=self.run["version"], parameters=params),
            available_gpus=int(self.run.get("available_gpus") or 0),
        )
        steps = coerce_steps(pipeline.build_steps(request, container=self.container, base_steps=None))
        if not steps:
            raise StepFailed("build_steps", "returned no steps")
        if len(self.steps_by_params) >= 8:
            self.steps_by_params.pop(next(iter(self.steps_by_params)))
        self.steps_by_params[key] = steps
        return steps

    def op_plan(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        from engine.ingest.worker import step_plans

        plans = step_plans(self.build_steps(), self.run.get("model_resources") or {})
        return {"plans": [p.__dict__ for p in plans]}, b""

    def op_stage(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        from engine.plugins.extractors.pipeline import StepRunner

        steps = self.build_steps()
        self.runners = [StepRunner(steps[i]) for i in header["indexes"]]
        self.first, self.last = bool(header.get("first")), bool(header.get("last"))
        return {}, b""

    def op_run(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        from engine.ingest.worker import run_stage

        batch = protocol.decode_frame(body)
        out = run_stage(self.runners, batch, first=self.first, last=self.last,
                        input_fields=tuple(self.run.get("input_fields") or ()),
                        features=[tuple(f) for f in self.run.get("features") or ()])
        return {}, protocol.encode_frame(out)

    def op_embed(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        from engine.ingest.worker import embed_rows

        steps = self.build_steps(header.get("parameters") or {})
        vectors = embed_rows(steps, header["texts"], collection_id=self.run.get("collection_id") or "",
                             plugin_id=self.run["plugin_id"], input_fields=tuple(self.run.get("input_fields") or ()),
                             features=[tuple(f) for f in self.run.get("features") or ()])
        return encode_vectors(vectors)

    def op_ping(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        return {}, b""

    # -- dry run ------------------------------------------------------------------------------------

    def op_validate(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        """The manifest check and dry run. A spare validation host is started before its plugin is
        known: the owner names it here (`name`, `version`, `plugin_id`), and fills the (empty)
        plugin folder just before. The answer lists the libraries the plugin's import and dry run
        loaded (`warm`), which the owner preloads into the namespace's next spare host."""
        from engine.plugins.validate import validate_plugin
        from engine.shared.inference.registry import loaded_services

        before = set(sys.modules)
        report = validate_plugin(
            self.root, name=str(header.get("name") or self.run["name"]), version=str(header.get("version") or self.run["version"]),
            namespace=self.config["namespace"], plugin_id=str(header.get("plugin_id") or self.run["plugin_id"]),
            container=self.container, strict=bool(header.get("strict")), workdir=self.scratch / "samples",
        )
        from engine.plugins.loader import package_name

        own = package_name(self.root)
        modules = sorted({m.split(".", 1)[0] for m in set(sys.modules) - before} - {own, "__main__"})
        return {"report": report.model_dump(mode="json"), "warm": {"modules": modules, "services": loaded_services()}}, b""

    def op_warm(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        """Before any plugin code: import the installed libraries `modules` names (top-level names
        only, found on the runtime's own path: the plugin folder is still empty) and load the
        models of the platform's batch services `services` names, so a dry run finds them warm."""
        import importlib
        import re

        from engine.shared.inference.registry import preload_service

        done, failed = [], []
        for name in (header.get("modules") or [])[:MAX_WARM_MODULES]:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,99}", name) or name.startswith("sluice_plugin_"):
                continue
            try:
                importlib.import_module(name)
                done.append(name)
            except Exception:  # noqa: BLE001 - a library that does not import here is simply not warm
                failed.append(name)
        services = [str(s) for s in header.get("services") or [] if preload_service(str(s))]
        return {"modules": done, "failed": failed, "services": services}, b""

    # -- realtime ----------------------------------------------------------------------------------

    def _await(self, value: Any, timeout: float | None = None) -> Any:
        if not inspect.isawaitable(value):
            return value
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, name="plugin-loop", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(_as_coroutine(value), self.loop).result(timeout)

    def op_realtime_init(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        from engine.plugins.loader import import_module
        from engine.shared.plugins.inference.serve import BaseInferenceService

        module = import_module(self.root, "realtime")
        classes = [obj for obj in vars(module).values()
                   if isinstance(obj, type) and issubclass(obj, BaseInferenceService) and obj is not BaseInferenceService]
        if not classes:
            raise RuntimeError("realtime.py defines no subclass of shared.plugins.inference.serve.BaseInferenceService")
        service: Any = classes[0]()  # a plugin's class: `container` is set on it below unless it set one itself
        if getattr(service, "container", None) is None:
            service.container = self.container
        self.service = service
        return {"class": classes[0].__name__}, b""

    def op_realtime(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        """The service called once per inputs, concurrently; one answer or error per call."""
        parameters = header.get("parameters") or {}

        async def one(inputs: Any) -> Any:
            value = self.service(inputs, parameters)
            return await value if inspect.isawaitable(value) else value

        async def every() -> list[Any]:
            return await asyncio.gather(*(one(inputs) for inputs in header["calls"]), return_exceptions=True)

        results = []
        for value in self._await(every()):
            if isinstance(value, BaseException):
                results.append({"ok": False, "error": _describe(value, self.root)})
            else:
                results.append({"ok": True, "value": protocol.plain(value)})
        return {"results": results}, b""


def encode_vectors(vectors: dict[str, list[list[float] | None]]) -> tuple[dict[str, Any], bytes]:
    """Per feature, which texts got a vector (and its size), and all vectors as one float32 body:
    a query's answer crosses without a JSON number in it."""
    import numpy as np

    layout: dict[str, list[int]] = {}
    parts: list[bytes] = []
    for name, per_text in vectors.items():
        sizes = [0 if v is None else len(v) for v in per_text]
        layout[name] = sizes
        parts.extend(np.asarray(v, dtype=np.float32).tobytes() for v in per_text if v is not None)
    return {"vectors": layout}, b"".join(parts)


async def _as_coroutine(value: Any) -> Any:
    return await value


def _describe(exc: BaseException, root: Path) -> dict[str, Any]:
    """An exception as the owner reports it: type, message, and the innermost plugin frame."""
    from engine.plugins.loader import relative_file

    file, line = "", 0
    for frame in traceback.extract_tb(exc.__traceback__):
        rel = relative_file(root, frame.filename)
        if rel is not None:
            file, line = rel, frame.lineno or 0
    if isinstance(exc, SandboxViolation) and exc.file:
        file, line = exc.file, exc.line
    lines = "".join(traceback.format_exception(exc)).strip().splitlines()
    return {"type": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"[:4000], "file": file, "line": line,
            "traceback": "\n".join(lines[-20:])}


# --- start-up ---------------------------------------------------------------------------------------

def _die_with_owner(owner: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != owner:  # the owner died before the request took effect
        os._exit(70)


def _enter_network(config: dict[str, Any]) -> bool:
    """A private network namespace (only its own loopback); False when degraded without one."""
    from engine.sandbox import confine

    if not config.get("isolate_network", True):
        return False
    try:
        confine.enter_network_namespace()
    except Exception as exc:
        if not config.get("allow_degraded"):
            raise
        config.setdefault("degraded", {})["network"] = f"off: {exc}"
        return False
    return True


def _confine(config: dict[str, Any], relay_port: int | None) -> dict[str, str]:
    from engine.sandbox import confine

    rules = confine.Rules(
        read=tuple(config["read"]), write=tuple(config["write"]), devices=tuple(config.get("devices") or ()),
        list_only=tuple(config.get("list_only") or ()), tcp_port=relay_port,
    )
    limits = confine.Limits(**(config.get("limits") or {}))
    layers = confine.apply(rules, limits, allow_degraded=bool(config.get("allow_degraded")))
    layers.update(config.get("degraded") or {})
    if "network" not in layers:
        layers["network"] = "on: private network namespace" + (f", egress relay on 127.0.0.1:{relay_port}" if relay_port else ", no egress")
    return layers


def _preload() -> None:
    """The SDK modules plugin code imports (so they are frozen against monkeypatching) and the
    libraries every op uses."""
    import engine.assets
    import engine.ingest.worker
    import engine.llm
    import engine.models
    import engine.namespace_secrets
    import engine.plugins.extractors.pipeline
    import engine.plugins.validate  # noqa: F401
    from engine.plugins.loader import expose_sdk

    expose_sdk()


def serve(ctrl: socket.socket, egress: socket.socket) -> int:
    """Confine while still single-threaded (Landlock and seccomp apply to the calling thread and
    the threads it starts later), then start threads, import the SDK and libraries, and serve."""
    config, _ = protocol.recv(ctrl)
    _die_with_owner(int(config["owner_pid"]))
    tempfile.tempdir = str(Path(config["scratch"]) / "tmp")
    Path(tempfile.tempdir).mkdir(parents=True, exist_ok=True)
    os.chdir(config["scratch"])
    isolated = _enter_network(config)
    relay_port = RELAY_PORT if isolated and config.get("network_allow") else None
    layers = _confine(config, relay_port)
    if relay_port is not None:
        from engine.sandbox.egress import HostRelay, proxy_env

        HostRelay(egress, port=relay_port).start()
        os.environ.update(proxy_env(relay_port))
    else:
        egress.close()
    bridge = Bridge(ctrl)
    _preload()
    wire_sdk(config, bridge)
    from engine.sandbox.audit import AuditGuard
    from engine.sandbox.confine import ALWAYS_READ

    readable = [*config["read"], *(config.get("list_only") or ()), *(config.get("devices") or ()), *ALWAYS_READ]
    guard = AuditGuard(plugin_root=Path(config["plugin_root"]), read=readable, write=config["write"], relay_port=relay_port,
                       network_allow=config.get("network_allow") or ())
    guard.install()
    runtime = Runtime(config, bridge)
    protocol.send(ctrl, {"hello": True, "pid": os.getpid(), "layers": layers})
    while True:
        try:
            header, body = protocol.recv(ctrl)
        except EOFError:
            return 0
        op = header.get("op", "")
        handler = getattr(runtime, f"op_{op}", None)
        started = time.perf_counter()
        try:
            if handler is None:
                raise ValueError(f"unknown op {op!r}")
            answer, out = handler(header, body)
            answer = {"ok": True, **answer}
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
                raise
            answer, out = {"ok": False, "error": _describe(exc, runtime.root)}, b""
        answer["violations"] = guard.drain()
        answer["seconds"] = round(time.perf_counter() - started, 6)
        protocol.send(ctrl, answer, out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ctrl = socket.socket(fileno=int(args[0]))
    egress = socket.socket(fileno=int(args[1]))
    try:
        return serve(ctrl, egress)
    except EOFError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
