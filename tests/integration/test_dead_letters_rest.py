"""Dead letters through the REST app and the CLI, with the functions running on the embedded stack:
a poison event and a notification with one bad record are recorded by the `dead_letters` function,
listed (filters, paging), shown, replayed and discarded by the platform admin only; health shows
the functions' states."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest

from events import Topics
from functions.cli import main
from functions.rest.app import create_app
from functions.runtime.run import functions_running
from infra.bootstrap import bootstrap
from infra.settings import Settings
from tests.fixtures.rest_server import RestServer, clear_cli_env, point_cli_at

pytestmark = pytest.mark.integration
ADMIN = "sk_admin_dead_letters_test-0123456"
DLQ = "/v1/admin/dead-letters"


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def notification(settings: Settings, *sizes: object) -> bytes:
    return json.dumps({"Records": [
        {"eventName": "ObjectCreated:Put", "eventTime": "2026-11-20T14:05:42Z",
         "s3": {"bucket": {"name": settings.data_bucket}, "object": {"key": f"acme/docs/{i}.txt", "size": size}}}
        for i, size in enumerate(sizes)]}).encode()


POISON = json.dumps({"namespace": "acme", "payload": {"type": "DeployPlugin"}}).encode()
"""Poison on the deployments topic, which one function reads (deploy): one dead letter."""


async def listed(client: httpx.AsyncClient, want: int, **params: str) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        r = await client.get(DLQ, params=params, headers=auth(ADMIN))
        assert r.status_code == 200, r.text
        found = r.json()["dead_letters"]
        if len(found) >= want:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)


async def test_the_platform_admin_lists_shows_replays_and_discards_dead_letters(tmp_path):
    settings = Settings(data_dir=tmp_path, bus="memory", compute="none", admin_key=ADMIN)
    topics = Topics(settings.topic_prefix)
    async with bootstrap(settings) as platform, functions_running(platform, reconcile=False):
        app = create_app(platform)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://sluice.test") as client:
            assert (await client.post("/v1/namespaces", json={"namespace_name": "acme"}, headers=auth(ADMIN))).status_code == 201
            r = await client.post("/v1/namespaces/acme/api-keys", json={"role": "admin"}, headers=auth(ADMIN))
            namespace_admin = r.json()["api_key"]

            await platform.bus.publish(topics.deployments, POISON, key=b"acme")
            await platform.bus.publish(topics.s3_notifications, notification(settings, 5, "big"))
            both = await listed(client, 2)
            by_function = {d["function"]: d for d in both}
            assert set(by_function) == {"deploy", "notifications"} and {d["status"] for d in both} == {"open"}
            assert "value_b64" not in both[0]  # the list leaves the bytes out

            # filters and paging
            [acme] = await listed(client, 1, namespace="acme")
            assert acme["function"] == "deploy" and acme["error_type"] == "poison_message"
            [one] = await listed(client, 1, function="notifications")
            assert one["record_index"] == 1 and one["namespace"] is None
            assert len((await client.get(DLQ, params={"limit": 1, "offset": 1}, headers=auth(ADMIN))).json()["dead_letters"]) == 1
            assert (await client.get(DLQ, params={"status": "nope"}, headers=auth(ADMIN))).status_code == 422

            # one, with its bytes
            r = await client.get(f"{DLQ}/{acme['dead_letter_id']}", headers=auth(ADMIN))
            assert r.status_code == 200 and base64.b64decode(r.json()["value_b64"]) == POISON
            assert base64.b64decode(r.json()["key_b64"]) == b"acme"

            # a namespace admin (or no key) gets nothing here
            for path, method in [(DLQ, "GET"), (f"{DLQ}/{acme['dead_letter_id']}", "GET"),
                                 (f"{DLQ}/{acme['dead_letter_id']}/replay", "POST"), (f"{DLQ}/{acme['dead_letter_id']}/discard", "POST")]:
                r = await client.request(method, path, headers=auth(namespace_admin))
                assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden", r.text
                assert "acme" not in r.text or "admin key" in r.text
                assert (await client.request(method, path)).status_code == 401

            # replay the bad record alone: back on its topic, dead-lettered again from its new offset
            r = await client.post(f"{DLQ}/{one['dead_letter_id']}/replay", headers=auth(ADMIN))
            assert r.status_code == 200 and r.json()["status"] == "replayed" and r.json()["replay_count"] == 1, r.text
            again = [d for d in await listed(client, 2, function="notifications") if d["dead_letter_id"] != one["dead_letter_id"]]
            assert again and again[0]["record_index"] == 0 and again[0]["source_offset"] != one["source_offset"]

            # discard, then replay: refused
            r = await client.post(f"{DLQ}/{acme['dead_letter_id']}/discard", headers=auth(ADMIN))
            assert r.status_code == 200 and r.json()["status"] == "discarded"
            r = await client.post(f"{DLQ}/{acme['dead_letter_id']}/replay", headers=auth(ADMIN))
            assert r.status_code == 409 and r.json()["error"]["type"] == "conflict"
            assert (await client.post(f"{DLQ}/dlq_unknown/replay", headers=auth(ADMIN))).status_code == 404
            assert (await client.get(f"{DLQ}/dlq_unknown", headers=auth(ADMIN))).status_code == 404

            # health: each function's state for the admin, nothing of it for anyone else
            deadline = time.monotonic() + 10
            while True:
                health = (await client.get("/v1/health", headers=auth(ADMIN))).json()
                if health.get("functions", {}).get("dead_letters", {}).get("state") == "running":
                    break
                assert time.monotonic() < deadline, health
                await asyncio.sleep(0.05)
            assert {"scan", "register", "ingest", "notifications", "dead_letters"} <= set(health["functions"])
            assert all(f["state"] == "running" and not f["stale"] and f["restarts"] == 0 for f in health["functions"].values())
            assert "functions" not in (await client.get("/v1/health")).json()


@pytest.fixture
def stack(tmp_path, monkeypatch):
    clear_cli_env(monkeypatch)
    with RestServer(tmp_path / "data", ADMIN) as running:
        point_cli_at(monkeypatch, running.url, ADMIN)
        yield running


def sluice(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_in(out: str) -> dict:
    """The JSON the command printed (the server's log lines share this process's stdout)."""
    return json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out)


def test_sluice_events_dlq_lists_shows_replays_and_discards(stack, capsys):
    topics = Topics(stack.settings.topic_prefix)
    stack._run(stack.platform.bus.publish(topics.deployments, POISON, key=b"acme"))
    deadline = time.monotonic() + 20
    while True:
        code, out, err = sluice(capsys, "events", "dlq", "list", "--json")
        assert code == 0, err
        found = json_in(out)["dead_letters"]
        if found:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [letter] = found
    dead_letter_id = letter["dead_letter_id"]

    code, out, _ = sluice(capsys, "events", "dlq", "list", "--status", "open")
    assert code == 0 and dead_letter_id in out and "deploy" in out and "poison_message" in out and "acme" in out
    code, out, _ = sluice(capsys, "events", "dlq", "show", dead_letter_id)
    assert code == 0 and f"dead_letter_id: {dead_letter_id}" in out and "status: open" in out
    code, out, _ = sluice(capsys, "events", "dlq", "show", dead_letter_id, "--json")
    assert code == 0 and base64.b64decode(json_in(out)["value_b64"]) == POISON
    code, out, _ = sluice(capsys, "events", "dlq", "replay", dead_letter_id)
    assert code == 0 and f"replayed {dead_letter_id} to {topics.deployments} (1 so far)" in out
    code, out, _ = sluice(capsys, "events", "dlq", "discard", dead_letter_id)
    assert code == 0 and f"discarded {dead_letter_id}" in out
    code, _, err = sluice(capsys, "events", "dlq", "replay", dead_letter_id)
    assert code == 1 and "409 conflict" in err and "discarded" in err
    code, _, err = sluice(capsys, "events", "dlq", "show", "dlq_nothing")
    assert code == 1 and "404 not_found" in err
