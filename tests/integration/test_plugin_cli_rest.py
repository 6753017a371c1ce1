"""`sluice plugin` against a running REST server (uvicorn on a free port, with the scan and
register functions running): push → list → log → push v2 → diff → rollback → status → pull →
delete, a refused push, and a push that outlives its --wait."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from functions.cli import main
from functions.idempotency import IdempotencyStore
from functions.rest.app import create_app
from functions.runner import Runner
from functions.table import FUNCTIONS
from infra.bootstrap import bootstrap
from infra.bus.memory import InMemoryBus
from infra.settings import Settings
from tests.fixtures.plugins import HASH_EMBEDDER

pytestmark = pytest.mark.integration
ADMIN = "sk_admin_plugin_cli_test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # runs in a thread: the test process keeps its signals
        yield


class Stack:
    """The REST app and the function runner on their own event loop in a thread, so the CLI's
    blocking HTTP calls from the test thread reach a live server."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = Settings(data_dir=data_dir, port=self.port, host="127.0.0.1", compute="none", admin_key=ADMIN)
        self.store_requests: list[httpx.Headers] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.platform = bootstrap(self.settings, bus=InMemoryBus())
        await self.platform.connect()
        self.runner = Runner(
            bus=self.platform.bus, topics=self.platform.topics, functions=FUNCTIONS, deps=self.platform.deps(),
            idempotency=IdempotencyStore(self.platform.catalog),
        )
        await self.runner.start()
        app = create_app(self.platform)

        @app.middleware("http")
        async def record_store_requests(request, call_next):
            if request.url.path.startswith("/v1/objects/"):
                self.store_requests.append(httpx.Headers(dict(request.headers)))
            return await call_next(request)

        self.server = _Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off"))
        self.serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.serving.done():
                self.serving.result()
            await asyncio.sleep(0.05)

    async def _stop(self) -> None:
        self.server.should_exit = True
        await self.serving
        await self.runner.stop()
        await self.platform.close()

    def __enter__(self) -> Stack:
        self.thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._run(self._stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


@pytest.fixture
def stack(tmp_path, monkeypatch):
    for name in ("SLUICE_API_KEY", "SLUICE_NAMESPACE", "SLUICE_URL", "SLUICE_ADMIN_KEY", "SLUICE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    with Stack(tmp_path / "data") as running:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = httpx.post(f"{running.url}/v1/namespaces", json={"namespace_name": "acme"}, headers=admin)
        assert r.status_code == 201, r.text
        key = httpx.post(f"{running.url}/v1/namespaces/acme/api-keys", json={"name": "cli"}, headers=admin).json()["api_key"]
        monkeypatch.setenv("SLUICE_URL", running.url)
        monkeypatch.setenv("SLUICE_API_KEY", key)
        monkeypatch.setenv("SLUICE_NAMESPACE", "acme")
        running.key = key
        yield running


def sluice(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def hash_plugin(dest: Path) -> Path:
    return Path(shutil.copytree(HASH_EMBEDDER, dest, ignore=shutil.ignore_patterns("__pycache__")))


def test_push_list_log_push_again_diff_rollback_status_pull_and_delete_through_the_cli(stack, tmp_path, capsys):
    folder = hash_plugin(tmp_path / "hash_embedder")

    code, out, err = sluice(capsys, "plugin", "push", str(folder), "-m", "first version")
    assert code == 0, out + err
    assert "registered hash_embedder 1.0.0" in out
    assert "sluice://hash_embedder@1.0.0/hash_embedding" in out and "deployment: NOT_DEPLOYED" in out
    assert "uploaded" in err  # stderr is not a terminal: one line, no redrawn bar
    assert stack.store_requests and all("authorization" not in h for h in stack.store_requests)

    code, out, _ = sluice(capsys, "plugin", "list")
    assert code == 0
    [row] = out.splitlines()
    assert row.split()[:3] == ["hash_embedder", "1.0.0", "*"] and "sluice://hash_embedder@1.0.0/hash_embedding" in row

    again = sluice(capsys, "plugin", "push", str(folder))
    assert again[0] == 1 and "already registered" in again[2] and "--version" in again[2]

    manifest = folder / "manifest.py"
    manifest.write_text(manifest.read_text().replace('"version": "1.0.0"', '"version": "1.1.0"'))
    code, out, err = sluice(capsys, "plugin", "push", str(folder), "-m", "bump to 1.1.0")
    assert code == 0, out + err
    assert "registered hash_embedder 1.1.0" in out

    code, out, _ = sluice(capsys, "plugin", "log", "hash_embedder")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["1.1.0", "1.0.0"]
    assert lines[0].split()[2:] == ["*", "bump", "to", "1.1.0"] and lines[1].split()[2:] == ["first", "version"]

    code, out, _ = sluice(capsys, "plugin", "diff", "hash_embedder", "1.0.0", "1.1.0")
    assert code == 0
    assert "--- 1.0.0/manifest.py" in out and "+++ 1.1.0/manifest.py" in out
    assert '-metadata = {"feature_extractor_name": "hash_embedder", "version": "1.0.0"' in out
    assert '+metadata = {"feature_extractor_name": "hash_embedder", "version": "1.1.0"' in out
    assert "\033[" not in out  # no colour when stdout is not a terminal

    code, out, _ = sluice(capsys, "plugin", "rollback", "hash_embedder", "1.0.0")
    assert code == 0 and "active version 1.0.0 (was 1.1.0)" in out

    code, out, _ = sluice(capsys, "plugin", "status", "hash_embedder")
    assert code == 0
    assert "active version 1.0.0" in out and "scan:        passed (0 warnings)" in out
    assert "sluice://hash_embedder@1.0.0/hash_embedding" in out and "deployment:  NOT_DEPLOYED" in out

    pulled = tmp_path / "pulled"
    code, out, _ = sluice(capsys, "plugin", "pull", "hash_embedder", str(pulled))
    assert code == 0 and "pulled hash_embedder 1.0.0" in out
    assert '"version": "1.0.0"' in (pulled / "manifest.py").read_text()
    assert (pulled / "processors" / "hashing.py").read_bytes() == (folder / "processors" / "hashing.py").read_bytes()
    code, _, err = sluice(capsys, "plugin", "pull", "hash_embedder", str(pulled))
    assert code == 2 and "not empty" in err
    code, out, _ = sluice(capsys, "plugin", "pull", "hash_embedder", str(tmp_path / "v11"), "--version", "1.1.0")
    assert code == 0 and '"version": "1.1.0"' in (tmp_path / "v11" / "manifest.py").read_text()

    code, out, _ = sluice(capsys, "plugin", "delete", "hash_embedder", "--version", "1.0.0")
    assert code == 0 and "deleted hash_embedder 1.0.0" in out and "active version now 1.1.0" in out
    code, out, _ = sluice(capsys, "plugin", "list", "--json")
    assert code == 0 and '"version": "1.1.0"' in out and '"version": "1.0.0"' not in out

    code, _, err = sluice(capsys, "plugin", "status", "no_such_plugin")
    assert code == 1 and err.startswith("sluice: 404 ")


def test_a_refused_push_prints_every_validation_error_with_its_hint(stack, tmp_path, capsys):
    folder = hash_plugin(tmp_path / "hash_embedder")
    manifest = folder / "manifest.py"
    manifest.write_text(manifest.read_text().replace('"embedding_dim": 32', '"dimensions": 32'))
    code, out, err = sluice(capsys, "plugin", "push", str(folder))
    assert code == 1, out + err
    assert "refused hash_embedder 1.0.0" in out
    assert "manifest.py:0 [SLU811] features[0] has unknown key 'dimensions'; use 'embedding_dim'" in out
    assert "[SLU812]" in out and "    hint: " in out


def test_a_push_that_outlives_its_wait_prints_the_status_url_and_exits_3(stack, tmp_path, capsys):
    folder = hash_plugin(tmp_path / "hash_embedder")
    code, out, err = sluice(capsys, "plugin", "push", str(folder), "--wait", "0")
    assert code == 3, out + err
    assert "still validating; status: " in err and "still running after 0 s" in err
    status_url = err.split("status: ", 1)[1].split()[0]
    deadline = time.monotonic() + 120
    while True:
        outcome = httpx.get(status_url, headers={"Authorization": f"Bearer {stack.key}"}).json()
        if outcome["status"] in ("REGISTERED", "FAILED") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert outcome["status"] == "REGISTERED", outcome
