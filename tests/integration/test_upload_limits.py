"""Limits on what clients send, through the real REST app over the local store: request bodies over
their limit are refused before they are parsed, presigned plugin and model PUTs are bounded and
single-use, confirm refuses an archive over its limit that a store could not stop (S3), and an
upload the sweeper expired answers confirm with 409."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from functions.runtime.sweeper import GRACE_S, UploadSweeper
from tests.integration.test_models_rest import ADMIN, auth, running
from tests.integration.test_rest import assert_error

pytestmark = pytest.mark.integration


def small_tar_gz(size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("weights.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))  # incompressible: the archive is about `size` bytes
    return buffer.getvalue()


async def chunked(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def test_a_json_body_over_the_limit_is_refused_before_it_is_parsed(tmp_path):
    async with running(tmp_path, max_request_bytes=4096) as (client, platform):
        url = "/v1/namespaces/acme/plugins/uploads"
        body = b'{"name": "my_plugin", "description": "' + b"x" * 8000 + b'"}'
        headers = {**auth(), "Content-Type": "application/json"}

        r = await client.post(url, content=body, headers=headers)
        err = assert_error(r, 413, "too_large")
        assert "SLUICE_MAX_REQUEST_BYTES" in err["message"] and err["details"]["limit_bytes"] == 4096
        assert err["details"]["content_length"] == len(body)
        assert r.headers["connection"] == "close"

        # Without a Content-Length the bytes are counted as they arrive, and cut at the limit.
        r = await client.post(url, content=chunked(body, 1024), headers=headers)
        err = assert_error(r, 413, "too_large")
        assert err["message"].startswith("the request body is more than 4096 bytes")

        # Nothing was parsed, so nothing was created; a body within the limit goes through.
        assert await platform.catalog.count("plugin_uploads") == 0
        r = await client.post(url, json={"name": "my_plugin"}, headers=auth())
        assert r.status_code == 201, r.text
        r = await client.post(url, content=chunked(b'{"name": "my_plugin"}', 4), headers=headers)
        assert r.status_code == 201, r.text

        # The key is checked first: an anonymous caller learns nothing, not even the limit.
        assert_error(await client.post(url, content=body, headers={"Content-Type": "application/json"}), 401, "unauthorized")


async def test_the_multipart_model_upload_has_its_own_limit_not_the_json_one(tmp_path):
    async with running(tmp_path, max_request_bytes=4096, models_max_archive_bytes=64 * 1024) as (client, _):
        archive = small_tar_gz(20_000)
        assert 4096 < len(archive) < 64 * 1024
        data = {"name": "small-model", "version": "1.0.0", "model_format": "pytorch"}

        r = await client.post("/v1/namespaces/acme/models", files={"file": ("model.tar.gz", archive, "application/gzip")},
                              data=data, headers=auth(), params={"wait": 0})
        assert r.status_code in (201, 202, 422), r.text  # validated (or still validating), never cut at 4096 bytes

        big = b"x" * (64 * 1024 + 1024 * 1024 + 1)
        r = await client.post("/v1/namespaces/acme/models", files={"file": ("model.tar.gz", big, "application/gzip")},
                              data={**data, "version": "2.0.0"}, headers=auth())
        assert_error(r, 413, "too_large")


async def test_a_plugin_upload_over_its_cap_is_refused_at_put_with_nothing_stored(tmp_path):
    async with running(tmp_path, plugins_max_archive_bytes=1024) as (client, platform):
        r = await client.post("/v1/namespaces/acme/plugins/uploads", json={"name": "my_plugin"}, headers=auth())
        assert r.status_code == 201, r.text
        ticket = r.json()
        assert ticket["max_archive_bytes"] == 1024
        record = await platform.catalog.get("plugin_uploads", ticket["upload_id"])
        bucket, key = record["archive"]["bucket"], record["archive"]["key"]

        put = await client.put(ticket["presigned_url"], content=b"PK" + bytes(4096), headers=ticket["upload_headers"])
        err = assert_error(put, 413, "too_large")
        assert err["details"]["limit_bytes"] == 1024
        put = await client.put(ticket["presigned_url"], content=chunked(b"PK" + bytes(4096), 512), headers=ticket["upload_headers"])
        assert_error(put, 413, "too_large")
        assert await platform.store.head(bucket, key) is None
        assert [info async for info in platform.store.list_objects(bucket)] == []

        r = await client.post(ticket["confirm_url"], headers=auth())
        assert "PUT the zip to the presigned URL first" in assert_error(r, 409, "conflict")["message"]

        # The refusals did not use the URL up; one PUT within the cap does, and only one.
        assert (await client.put(ticket["presigned_url"], content=b"PK small", headers=ticket["upload_headers"])).status_code == 200
        again = await client.put(ticket["presigned_url"], content=b"PK other", headers=ticket["upload_headers"])
        assert assert_error(again, 403, "forbidden")["message"] == "this upload URL was already used"
        assert await platform.store.get_bytes(bucket, key) == b"PK small"


async def test_confirm_refuses_an_archive_over_the_cap_that_the_store_let_through(tmp_path):
    """What S3 does: it cannot bound a presigned PUT, so the over-size bytes are there at confirm."""
    async with running(tmp_path, plugins_max_archive_bytes=1024, models_max_archive_bytes=1024) as (client, platform):
        r = await client.post("/v1/namespaces/acme/plugins/uploads", json={"name": "my_plugin", "version": "1.0.0"}, headers=auth())
        ticket = r.json()
        archive = (await platform.catalog.get("plugin_uploads", ticket["upload_id"]))["archive"]
        await platform.store.put_bytes(archive["bucket"], archive["key"], bytes(2048))

        err = assert_error(await client.post(ticket["confirm_url"], headers=auth()), 413, "too_large")
        assert "the limit is 1024 bytes (SLUICE_PLUGINS_MAX_ARCHIVE_BYTES)" in err["message"]
        assert await platform.store.head(archive["bucket"], archive["key"]) is None
        status = (await client.get(f"/v1/namespaces/acme/plugins/uploads/{ticket['upload_id']}", headers=auth())).json()
        assert status["status"] == "FAILED" and status["validation_errors"][0]["rule_id"] == "SLU902"
        r = await client.post("/v1/namespaces/acme/plugins/uploads", json={"name": "my_plugin", "version": "1.0.0"}, headers=auth())
        assert r.status_code == 201, r.text  # retried with a new URL

        body = {"name": "my-model", "version": "1.0.0", "model_format": "pytorch"}
        r = await client.post("/v1/namespaces/acme/models/uploads", json=body, headers=auth())
        ticket = r.json()
        record = await platform.catalog.get("models", f"acme|{ticket['model_id']}")
        await platform.store.put_bytes(record["upload"]["bucket"], record["upload"]["key"], bytes(2048))

        err = assert_error(await client.post(ticket["confirm_url"], headers=auth()), 413, "too_large")
        assert "the limit is 1024 bytes (SLUICE_MODELS_MAX_ARCHIVE_BYTES)" in err["message"]
        assert await platform.store.head(record["upload"]["bucket"], record["upload"]["key"]) is None
        r = await client.post("/v1/namespaces/acme/models/uploads", json=body, headers=auth())
        assert r.status_code == 201, r.text  # the same version, a new URL


async def test_an_upload_the_sweeper_expired_answers_confirm_with_409(tmp_path):
    async with running(tmp_path) as (client, platform):
        r = await client.post("/v1/namespaces/acme/plugins/uploads", json={"name": "my_plugin"}, headers=auth(ADMIN))
        ticket = r.json()
        later = datetime.now(UTC) + timedelta(seconds=platform.settings.upload_url_expires_s + GRACE_S + 60)

        report = await UploadSweeper(platform.catalog, platform.store, url_lifetime_s=platform.settings.upload_url_expires_s,
                                     clock=lambda: later).sweep()

        assert report.expired == 1
        err = assert_error(await client.post(ticket["confirm_url"], headers=auth()), 409, "conflict")
        assert "expired before it was confirmed" in err["message"]
        status = (await client.get(f"/v1/namespaces/acme/plugins/uploads/{ticket['upload_id']}", headers=auth())).json()
        assert status["status"] == "EXPIRED"


async def test_object_uploads_are_bounded_single_use_checked_at_confirm_and_expire(tmp_path):
    async with running(tmp_path, upload_max_bytes=1000) as (client, platform):
        async def ticket(key: str) -> dict:
            r = await client.post("/v1/namespaces/acme/buckets/docs/uploads", json={"key": key, "content_type": "text/plain"},
                                  headers=auth())
            assert r.status_code == 201 and r.json()["max_bytes"] == 1000, r.text
            return r.json()

        over = await ticket("big.txt")
        put = await client.put(over["presigned_url"], content=b"x" * 1001, headers=over["upload_headers"])
        assert_error(put, 413, "too_large")
        assert await platform.objects("acme").head("docs", "big.txt") is None

        once = await ticket("once.txt")
        assert (await client.put(once["presigned_url"], content=b"first", headers=once["upload_headers"])).status_code in (200, 204)
        again = await client.put(once["presigned_url"], content=b"second, larger", headers=once["upload_headers"])
        assert again.status_code == 403 and "already used" in again.json()["error"]["message"]
        assert await platform.objects("acme").get_bytes("docs", "once.txt") == b"first"

        s3_like = await ticket("s3.txt")  # S3 cannot bound a presigned PUT: confirm checks, and removes what is over
        await platform.objects("acme").put_bytes("docs", "s3.txt", b"y" * 5000)
        err = assert_error(await client.post(s3_like["confirm_url"], headers=auth()), 413, "too_large")
        assert err["details"]["setting"] == "SLUICE_UPLOAD_MAX_BYTES" and err["details"]["size_bytes"] == 5000
        assert await platform.objects("acme").head("docs", "s3.txt") is None
        assert not [m for m in platform.bus.published(platform.topics.objects)]

        abandoned = await ticket("abandoned.txt")
        later = datetime.now(UTC) + timedelta(seconds=platform.settings.upload_url_expires_s + GRACE_S + 60)
        await UploadSweeper(platform.catalog, platform.store, url_lifetime_s=platform.settings.upload_url_expires_s,
                            clock=lambda: later).sweep()
        err = assert_error(await client.post(abandoned["confirm_url"], headers=auth()), 409, "conflict")
        assert "expired before it was confirmed" in err["message"]
