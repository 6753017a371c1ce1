"""The upload sweeper on the fakes (MemoryCatalog, MemoryObjectStore), with its clock moved past the
URLs' expiry; and once on the real local store, its objects PUT through the presigned routes.

Records are made the way the routes make them (`PluginCatalog.create_upload`,
`ModelRegistry.create`, the object upload record of functions/rest/buckets.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from events.errors import TransientError
from functions.records.models import ModelRegistry
from functions.records.plugins import PluginCatalog
from functions.runtime import sweeper as sweeper_module
from functions.runtime.sweeper import EXPIRED, GRACE_S, UploadSweeper
from infra.catalog.memory import MemoryCatalog
from infra.objectstore.memory import MemoryObjectStore, StoredObject

LIFETIME_S = 3600
PLUGINS, MODELS, DATA = "sluice-plugins", "sluice-models", "sluice-data"


def later(seconds: float = LIFETIME_S + GRACE_S + 60) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.fixture
async def ports() -> AsyncIterator[tuple[MemoryCatalog, MemoryObjectStore]]:
    async with MemoryCatalog() as catalog, MemoryObjectStore() as store:
        for bucket in (PLUGINS, MODELS, DATA):
            await store.ensure_bucket(bucket)
        yield catalog, store


def sweeper(catalog, store, *, at: datetime) -> UploadSweeper:
    return UploadSweeper(catalog, store, url_lifetime_s=LIFETIME_S, interval_s=0.05, clock=lambda: at)


async def plugin_upload(catalog, store, *, put: bool = True, status: str | None = None, name: str = "my_plugin") -> dict:
    upload = await PluginCatalog(catalog).create_upload(
        "acme", name, version=f"1.0.{secrets.randbelow(10**6)}", description=None, bucket=PLUGINS, expires_in=LIFETIME_S)
    if put:
        await store.put_bytes(PLUGINS, upload["archive"]["key"], b"PK zip")
    if status:
        upload = await catalog.update("plugin_uploads", upload["upload_id"], {"status": status})
    return upload


async def model_ticket(catalog, store, *, version: str = "1.0.0", put: bool = True, status: str | None = None) -> dict:
    record = await ModelRegistry(catalog).create(
        "acme", name="my-model", version=version, model_format="pytorch", framework=None, task_type=None, resources={},
        bucket=MODELS, max_models=50, expires_in=LIFETIME_S)
    if put:
        await store.put_bytes(MODELS, record["upload"]["key"], b"tar.gz")
    if status:
        record = await catalog.update("models", record["id"], {"status": status})
    return record


async def object_upload(catalog, key: str, *, created: datetime | None = None, location: bool = True,
                        status: str = "AWAITING_UPLOAD") -> dict:
    """As functions/rest/buckets.py records one (tenant bucket `docs` of namespace `acme`)."""
    upload_id = "obj_" + secrets.token_hex(12)
    record = {"upload_id": upload_id, "namespace": "acme", "bucket": "docs", "key": key, "content_type": None,
              "status": status, "created_at": (created or datetime.now(UTC)).isoformat()}
    if location:
        record["location"] = {"bucket": DATA, "key": f"acme/docs/{key}"}
    return await catalog.insert("object_uploads", upload_id, record)


# -- plugin uploads ----------------------------------------------------------------------------------


@pytest.mark.unit
async def test_an_abandoned_plugin_upload_loses_its_object_and_is_marked_expired(ports) -> None:
    catalog, store = ports
    abandoned = await plugin_upload(catalog, store)
    never_put = await plugin_upload(catalog, store, put=False)
    confirmed = await plugin_upload(catalog, store, status="CONFIRMED")
    registered = await plugin_upload(catalog, store, status="REGISTERED")

    report = await sweeper(catalog, store, at=later()).sweep()

    assert report.expired == 2
    for upload in (abandoned, never_put):
        record = await catalog.get("plugin_uploads", upload["upload_id"])
        assert record["status"] == EXPIRED and record["expired_at"]
    assert await store.head(PLUGINS, abandoned["archive"]["key"]) is None
    for upload, status in ((confirmed, "CONFIRMED"), (registered, "REGISTERED")):
        assert (await catalog.get("plugin_uploads", upload["upload_id"]))["status"] == status
        assert await store.get_bytes(PLUGINS, upload["archive"]["key"]) == b"PK zip"


@pytest.mark.unit
async def test_nothing_is_swept_before_the_url_expired_and_the_grace_passed(ports) -> None:
    catalog, store = ports
    upload = await plugin_upload(catalog, store)
    failed = await plugin_upload(catalog, store, status="FAILED")
    ticket = await model_ticket(catalog, store)
    obj = await object_upload(catalog, "a.txt")
    await store.put_bytes(DATA, "acme/docs/a.txt", b"a")

    for moment in (later(LIFETIME_S - 60), later(LIFETIME_S + GRACE_S - 60)):
        report = await sweeper(catalog, store, at=moment).sweep()
        assert (report.expired, report.removed, report.swept, report.objects_deleted) == (0, 0, 0, 0)

    assert (await catalog.get("plugin_uploads", upload["upload_id"]))["status"] == "AWAITING_UPLOAD"
    assert (await catalog.get("plugin_uploads", failed["upload_id"])).get("swept_at") is None
    assert (await catalog.get("models", ticket["id"]))["status"] == "AWAITING_UPLOAD"
    assert (await catalog.get("object_uploads", obj["upload_id"]))["status"] == "AWAITING_UPLOAD"
    assert await store.head(PLUGINS, upload["archive"]["key"]) is not None
    assert await store.head(DATA, "acme/docs/a.txt") is not None


@pytest.mark.unit
async def test_a_failed_plugin_upload_loses_its_leftover_object_once(ports) -> None:
    catalog, store = ports
    failed = await plugin_upload(catalog, store, status="FAILED")

    first = await sweeper(catalog, store, at=later()).sweep()
    second = await sweeper(catalog, store, at=later()).sweep()

    assert (first.swept, first.objects_deleted) == (1, 1)
    assert (second.swept, second.objects_deleted) == (0, 0)  # stamped: out of every later pass
    record = await catalog.get("plugin_uploads", failed["upload_id"])
    assert record["status"] == "FAILED" and record["swept_at"]
    assert await store.head(PLUGINS, failed["archive"]["key"]) is None


@pytest.mark.unit
async def test_an_upload_given_a_longer_url_than_the_setting_now_says_waits_for_its_own_expiry(ports) -> None:
    catalog, store = ports
    upload = await plugin_upload(catalog, store)
    longer = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    await catalog.update("plugin_uploads", upload["upload_id"], {"expires_at": longer})

    assert (await sweeper(catalog, store, at=later()).sweep()).expired == 0
    assert (await sweeper(catalog, store, at=later(24 * 3600 + GRACE_S + 60)).sweep()).expired == 1


# -- model tickets -----------------------------------------------------------------------------------


@pytest.mark.unit
async def test_an_abandoned_model_ticket_is_removed_with_its_object_and_others_stay(ports) -> None:
    catalog, store = ports
    ticket = await model_ticket(catalog, store, version="1.0.0")
    validating = await model_ticket(catalog, store, version="2.0.0", status="VALIDATING")
    registered = await model_ticket(catalog, store, version="3.0.0", status="REGISTERED")
    rejected = await model_ticket(catalog, store, version="4.0.0", put=False, status="REJECTED")

    report = await sweeper(catalog, store, at=later()).sweep()

    assert report.removed == 1
    assert await catalog.get("models", ticket["id"]) is None
    assert await store.head(MODELS, ticket["upload"]["key"]) is None
    for record, status in ((validating, "VALIDATING"), (registered, "REGISTERED"), (rejected, "REJECTED")):
        assert (await catalog.get("models", record["id"]))["status"] == status
    assert await store.head(MODELS, validating["upload"]["key"]) is not None


@pytest.mark.unit
async def test_a_model_ticket_requested_again_meanwhile_is_not_removed(ports) -> None:
    catalog, store = ports
    stale = await model_ticket(catalog, store)
    real_find = catalog.find

    async def find_then_request_again(kind, *args, **kwargs):
        found = await real_find(kind, *args, **kwargs)
        if kind == "models" and found:
            catalog.find = real_find  # type: ignore[method-assign]
            await model_ticket(catalog, store)  # the same version again: a new upload_id, a new object
        return found

    catalog.find = find_then_request_again  # type: ignore[method-assign]
    report = await sweeper(catalog, store, at=later()).sweep()

    assert report.removed == 0
    fresh = await catalog.get("models", stale["id"])
    assert fresh is not None and fresh["upload_id"] != stale["upload_id"]
    assert await store.head(MODELS, fresh["upload"]["key"]) is not None
    assert await store.head(MODELS, stale["upload"]["key"]) is None  # the stale ticket's object went


# -- object uploads ----------------------------------------------------------------------------------


@pytest.mark.unit
async def test_an_abandoned_object_upload_is_expired_and_its_object_deleted_only_when_it_can_be_its_own(ports) -> None:
    catalog, store = ports
    start = datetime.now(UTC) - timedelta(seconds=5)
    # PUT and never confirmed: written after the request, nothing newer names it.
    orphan = await object_upload(catalog, "orphan.txt", created=start)
    await store.put_bytes(DATA, "acme/docs/orphan.txt", b"never confirmed")
    # An earlier, confirmed object at the key: it predates the abandoned request.
    older = await object_upload(catalog, "kept.txt", created=start)
    store._buckets[DATA]["acme/docs/kept.txt"] = StoredObject(b"confirmed long ago", "etag", None, start - timedelta(days=1))
    # A newer upload of the same key wrote it: it is that upload's object.
    superseded = await object_upload(catalog, "newer.txt", created=start)
    await object_upload(catalog, "newer.txt", created=start + timedelta(seconds=1), status="CONFIRMED")
    await store.put_bytes(DATA, "acme/docs/newer.txt", b"the newer upload's")
    # An old record without `location`: its bucket/key are used.
    legacy = await object_upload(catalog, "legacy.txt", created=start, location=False)
    await store.ensure_bucket("docs")
    await store.put_bytes("docs", "legacy.txt", b"legacy")
    confirmed = await object_upload(catalog, "done.txt", created=start, status="CONFIRMED")
    await store.put_bytes(DATA, "acme/docs/done.txt", b"confirmed")

    report = await sweeper(catalog, store, at=later()).sweep()

    for record in (orphan, older, superseded, legacy):
        assert (await catalog.get("object_uploads", record["upload_id"]))["status"] == EXPIRED
    assert (await catalog.get("object_uploads", confirmed["upload_id"]))["status"] == "CONFIRMED"
    assert await store.head(DATA, "acme/docs/orphan.txt") is None
    assert await store.head("docs", "legacy.txt") is None
    assert await store.get_bytes(DATA, "acme/docs/kept.txt") == b"confirmed long ago"
    assert await store.get_bytes(DATA, "acme/docs/newer.txt") == b"the newer upload's"
    assert await store.get_bytes(DATA, "acme/docs/done.txt") == b"confirmed"
    assert (report.expired, report.kept_objects) == (4, 2)


@pytest.mark.unit
async def test_a_store_that_does_not_answer_leaves_the_record_for_the_next_pass(ports) -> None:
    catalog, store = ports
    upload = await plugin_upload(catalog, store)
    ticket = await model_ticket(catalog, store)

    async def unreachable(bucket: str, key: str) -> None:
        raise TransientError("S3 endpoint unreachable")

    real_delete = store.delete
    store.delete = unreachable  # type: ignore[method-assign]
    report = await sweeper(catalog, store, at=later()).sweep()
    assert report.errors == 2 and report.expired == report.removed == 0
    assert (await catalog.get("plugin_uploads", upload["upload_id"]))["status"] == "AWAITING_UPLOAD"
    assert await catalog.get("models", ticket["id"]) is not None

    store.delete = real_delete  # type: ignore[method-assign]
    report = await sweeper(catalog, store, at=later()).sweep()
    assert (report.expired, report.removed, report.errors) == (1, 1, 0)


@pytest.mark.unit
async def test_a_pass_reads_candidates_in_pages_and_always_ends(ports, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, store = ports
    monkeypatch.setattr(sweeper_module, "BATCH", 3)
    uploads = [await plugin_upload(catalog, store, name=f"plugin_{n}") for n in range(8)]
    for upload in uploads[1::3]:  # some given a longer life: stepped over, page after page
        await catalog.update("plugin_uploads", upload["upload_id"], {"expires_at": later(10 * 24 * 3600).isoformat()})
    queries: list[dict] = []
    real_find = catalog.find

    async def recording_find(kind, where=None, **kwargs):
        queries.append({"kind": kind, "where": where, **kwargs})
        return await real_find(kind, where, **kwargs)

    catalog.find = recording_find  # type: ignore[method-assign]
    report = await asyncio.wait_for(sweeper(catalog, store, at=later()).sweep(), timeout=5)

    assert report.expired == 8 - len(uploads[1::3])
    for query in queries:  # never a scan of everything: a status, a creation cutoff and a page size
        assert query["limit"] == 3 and query["order_by"] == "created_at"
        assert "status" in query["where"] and "$lt" in query["where"]["created_at"]


@pytest.mark.unit
async def test_run_sweeps_every_interval_until_stopped(ports) -> None:
    catalog, store = ports
    await plugin_upload(catalog, store)
    moment = [datetime.now(UTC)]
    swept = UploadSweeper(catalog, store, url_lifetime_s=LIFETIME_S, interval_s=0.05, clock=lambda: moment[0])
    stop = asyncio.Event()
    task = asyncio.create_task(swept.run(stop))
    await asyncio.sleep(0.1)
    assert await catalog.count("plugin_uploads", {"status": EXPIRED}) == 0
    moment[0] = later()
    for _ in range(50):
        if await catalog.count("plugin_uploads", {"status": EXPIRED}) == 1:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, timeout=2)
    assert await catalog.count("plugin_uploads", {"status": EXPIRED}) == 1


@pytest.mark.unit
def test_the_grace_outlasts_the_local_stores_late_commits() -> None:
    from infra.objectstore.local import LATE_COMMIT_S

    assert GRACE_S > LATE_COMMIT_S


# -- on the real local store -------------------------------------------------------------------------


@pytest.mark.integration
async def test_on_the_local_store_abandoned_uploads_put_through_presigned_urls_leave_nothing(tmp_path: Path) -> None:
    from infra.objectstore.local import LocalObjectStore, presigned_router

    async with MemoryCatalog() as catalog, LocalObjectStore(tmp_path / "root", "http://sluice.test",
                                                            b"sweeper-test-signing-key-0123456789") as store:
        for bucket in (PLUGINS, MODELS, DATA):
            await store.ensure_bucket(bucket)
        app = FastAPI()
        app.include_router(presigned_router(store))
        upload = await plugin_upload(catalog, store, put=False)
        ticket = await model_ticket(catalog, store, put=False)
        obj = await object_upload(catalog, "reports/q1.txt")
        kept = await plugin_upload(catalog, store, put=False)
        targets = [(PLUGINS, upload["archive"]["key"]), (MODELS, ticket["upload"]["key"]), (DATA, "acme/docs/reports/q1.txt"),
                   (PLUGINS, kept["archive"]["key"])]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            for bucket, key in targets:
                url = await store.presign_put(bucket, key, content_type="application/octet-stream", max_bytes=1024)
                put = await http.put(url, content=b"bytes", headers={"Content-Type": "application/octet-stream"})
                assert put.status_code == 200, put.text
        await catalog.update("plugin_uploads", kept["upload_id"], {"status": "CONFIRMED"})

        report = await sweeper(catalog, store, at=later()).sweep()

        assert (report.expired, report.removed) == (2, 1)
        for bucket, key in targets[:3]:
            assert await store.head(bucket, key) is None
            assert not (store.root / bucket).joinpath(*key.split("/")).exists()
        assert await store.get_bytes(PLUGINS, kept["archive"]["key"]) == b"bytes"
        assert (await catalog.get("plugin_uploads", upload["upload_id"]))["status"] == EXPIRED
        assert (await catalog.get("object_uploads", obj["upload_id"]))["status"] == EXPIRED
        assert await catalog.get("models", ticket["id"]) is None
