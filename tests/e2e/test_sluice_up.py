"""`sluice up` as a user runs it: a fresh data dir, health, auth, Ctrl-C, restart keeps state;
`sluice events tail` prints lifecycle events live."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
SLUICE = [sys.executable, "-m", "functions.cli"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_without_sluice() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env["SLUICE_RAY_NUM_CPUS"] = "1"
    return env


class Up:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*SLUICE, "up", "--data-dir", str(data_dir), "--port", str(port)], cwd=ROOT, env=env_without_sluice(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}"

    def wait_for(self, needle: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    break
                continue
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"`sluice up` never printed {needle!r}:\n{''.join(self.lines[-60:])}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.wait_for("sluice: stopped", timeout=60)
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def cli(data_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    env = env_without_sluice() | {"SLUICE_URL": url}
    return subprocess.run([*SLUICE, "--data-dir", str(data_dir), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_sluice_up_serves_health_refuses_keyless_requests_stops_cleanly_and_keeps_state(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    up = Up(data_dir, port)
    try:
        key_line = up.wait_for("admin key in")
        up.wait_for("serving")
        assert str(data_dir / "admin.key") in key_line
        admin = {"Authorization": f"Bearer {(data_dir / 'admin.key').read_text().strip()}"}
        health = httpx.get(f"{up.url}/v1/health", headers=admin, timeout=30)
        assert health.status_code == 200, health.text
        ports = health.json()["ports"]
        assert {p: ports[p]["status"] for p in ports} == dict.fromkeys(ports, "ok")
        assert ports["compute"]["adapter"] == "ray-local" and ports["bus"]["adapter"] == "sqlite"
        assert httpx.get(f"{up.url}/v1/namespaces").status_code == 401

        created = cli(data_dir, up.url, "namespace", "create", "acme")  # the CLI finds the admin key itself
        assert created.returncode == 0, created.stderr
    finally:
        code = up.stop()
    assert code == 0, "".join(up.lines[-40:])

    up = Up(data_dir, port)
    try:
        up.wait_for("serving")
        listed = cli(data_dir, up.url, "namespace", "list")
        assert listed.returncode == 0, listed.stderr
        assert '"acme"' in listed.stdout
    finally:
        assert up.stop() == 0


def test_events_tail_prints_lifecycle_events_as_they_are_published(tmp_path):
    import asyncio

    from events import ObjectCreated, Topics, make
    from functions.runtime.runner import publish
    from infra.bus.sqlite import SqliteLogBus

    env = env_without_sluice()
    tail = subprocess.Popen(
        [*SLUICE, "--data-dir", str(tmp_path), "events", "tail", "--max-events", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    async def publish_until_seen() -> None:
        async with SqliteLogBus(tmp_path / "bus.sqlite3") as bus:
            await bus.ensure_topics(Topics().all())
            for _ in range(60):  # tail starts at the end: publish until it has joined
                await publish(bus, Topics(), make(ObjectCreated(bucket="docs", key="x.txt", size=1, source="drop"), namespace="acme"))
                await asyncio.sleep(0.5)
                if tail.poll() is not None:
                    return

    asyncio.run(publish_until_seen())
    out, err = tail.communicate(timeout=30)
    assert tail.returncode == 0, err
    assert "ObjectCreated ns=acme" in out and '"x.txt"' in out


@pytest.mark.torch
def test_a_user_ingests_a_folder_with_the_cli_and_searches_it(tmp_path):
    """`sluice ingest` uploads through REST, the running `sluice up` ingests with the builtin
    text_embedding plugin, the task reports what was written, `sluice search` finds it."""
    data_dir, port = tmp_path / "data", free_port()
    folder = tmp_path / "notes"
    (folder / "canals").mkdir(parents=True)
    (folder / "canals" / "locks.txt").write_text("Canal locks raise and lower boats between stretches of water.")
    (folder / "canals" / "gates.txt").write_text("A sluice gate is a movable barrier that controls the flow of water.")
    (folder / "bread.md").write_text("# Bread\n\nKnead the dough, let it rise, and bake it in a hot oven.")
    up = Up(data_dir, port)
    try:
        up.wait_for("serving")
        assert cli(data_dir, up.url, "namespace", "create", "acme").returncode == 0
        admin = {"Authorization": f"Bearer {(data_dir / 'admin.key').read_text().strip()}"}
        created = httpx.post(f"{up.url}/v1/namespaces/acme/collections", headers=admin, timeout=60, json={
            "collection_name": "notes", "source": {"bucket": "notes", "prefix": ""},
            "feature_extractor": {"feature_extractor_name": "text_embedding"}})
        assert created.status_code == 201, created.text
        collection_id = created.json()["collection_id"]

        uploaded = cli(data_dir, up.url, "ingest", str(folder), "--bucket", "notes", "-n", "acme", "--json")
        assert uploaded.returncode == 0, uploaded.stderr
        assert sorted(u["key"] for u in json.loads(uploaded.stdout)["uploaded"]) == ["bread.md", "canals/gates.txt", "canals/locks.txt"]

        deadline, tasks = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            tasks = httpx.get(f"{up.url}/v1/namespaces/acme/tasks", params={"collection_id": collection_id},
                              headers=admin, timeout=30).json()["tasks"]
            if sum(t["objects"] for t in tasks if t["status"] != "RUNNING" and t["status"] != "QUEUED") >= 3:
                break
            time.sleep(1)
        assert tasks and all(t["status"] == "COMPLETED" for t in tasks), tasks
        assert sum(t["documents_written"] for t in tasks) == 3
        detail = httpx.get(f"{up.url}/v1/namespaces/acme/collections/{collection_id}", headers=admin, timeout=30).json()
        assert detail["document_count"] == 3 and detail["vector_indexes"][0]["vector_count"] == 3

        found = cli(data_dir, up.url, "search", "how do boats change water level", "-c", "notes", "-n", "acme", "--limit", "2")
        assert found.returncode == 0, found.stderr
        first = found.stdout.splitlines()[0]
        assert "notes/canals/locks.txt" in first, found.stdout
        missing = cli(data_dir, up.url, "search", "x", "-c", "nope", "-n", "acme")
        assert missing.returncode == 1 and "no collection 'nope'" in missing.stderr and "notes" in missing.stderr
    finally:
        assert up.stop() == 0
