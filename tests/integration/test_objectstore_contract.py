"""The ObjectStore contract, run against every adapter: the local folder store (its presigned URLs
served by the real routes in uvicorn), S3 (moto's S3 server) and the in-memory fake of unit tests.

The fake serves no HTTP (`serves_http = False`), so the tests that fetch presigned URLs skip it,
saying so; every other test runs on it too. Its cases are also marked `unit` (no server, no
files): `pytest -m unit` on this file runs exactly those.

moto serves presigned URLs without checking them: it verifies no signature, no expiry and no signed
Content-Type. So where a test asks "is this presigned request refused?", the local variant asks its
server, and the S3 variant checks the URL's SigV4 signature and expiry the way S3 does, with
botocore's own signer (`sigv4_presigned_url_is_valid`). Each of those tests also shows that the
genuine request passes the same check, so the check cannot pass by refusing everything.

A presigned PUT's `max_bytes` and single use are the store's to enforce where
`bounds_presigned_puts` is True: the local store (through its routes) and the in-memory fake
(through `put_presigned`, its in-process stand-in for those routes). S3 cannot bound a presigned
PUT, so those tests skip it, saying so, and `test_s3_a_presigned_put_is_bounded_by_its_expiry_only`
shows why the confirm routes check the stored size.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx
import pytest
import uvicorn
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import EndpointConnectionError
from fastapi import FastAPI

from events.errors import Conflict, Forbidden, InvalidInput, NotConnected, NotFound, SluiceError, TooLarge, TransientError
from infra.objectstore import LocalObjectStore, MemoryObjectStore, ObjectStore, S3ObjectStore, presigned_router
from infra.objectstore import local as local_module
from tests.fixtures.s3 import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET_ACCESS_KEY

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SIGNING_KEY = b"contract-suite-signing-key-0123456789"
HTTP_TIMEOUT = httpx.Timeout(30.0)


def random_bucket() -> str:
    return f"contract-{uuid.uuid4().hex[:12]}"


# -- the adapters under test ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalServer:
    """The presigned-URL routes of a LocalObjectStore, served by uvicorn on a loopback port."""

    root: Path
    public_url: str


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    root = tmp_path_factory.mktemp("objectstore") / "root"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    served = LocalObjectStore(root, public_url, SIGNING_KEY)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with served:
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(presigned_router(served))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn serving the presigned routes did not start")
        time.sleep(0.05)
    try:
        yield LocalServer(root=root, public_url=public_url)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(params=["local", "s3", pytest.param("memory", marks=pytest.mark.unit)])
def unconnected_store(request: pytest.FixtureRequest) -> ObjectStore:
    if request.param == "memory":
        return MemoryObjectStore()
    if request.param == "local":
        server: LocalServer = request.getfixturevalue("local_server")
        return LocalObjectStore(server.root, server.public_url, SIGNING_KEY)
    return S3ObjectStore(
        request.getfixturevalue("s3_endpoint"),
        region=S3_REGION,
        access_key_id=S3_ACCESS_KEY_ID,
        secret_access_key=S3_SECRET_ACCESS_KEY,
    )


@pytest.fixture
async def store(unconnected_store: ObjectStore) -> AsyncIterator[ObjectStore]:
    async with unconnected_store:
        yield unconnected_store


@pytest.fixture
async def bucket(store: ObjectStore) -> str:
    name = random_bucket()
    await store.ensure_bucket(name)
    return name


# -- is a presigned request refused? --------------------------------------------------------------


def requires_http(store: ObjectStore) -> None:
    """Skip, by name and reason, a test that fetches presigned URLs when the store serves no HTTP.
    Only the in-memory fake may: the real adapters' presigned URLs are always tested."""
    if store.serves_http:
        return
    assert isinstance(store, MemoryObjectStore), f"{type(store).__name__} must serve its presigned URLs"
    pytest.skip(f"{type(store).__name__} serves no HTTP: its presigned URLs cannot be fetched")


def test_only_the_in_memory_fake_serves_no_http() -> None:
    assert LocalObjectStore.serves_http and S3ObjectStore.serves_http
    assert not MemoryObjectStore.serves_http


def sigv4_presigned_url_is_valid(method: str, url: str, headers: Mapping[str, str]) -> bool:
    """What S3 checks before it serves a presigned URL: not expired, and the SigV4 signature over
    method, path, query and signed headers matches. (moto checks none of it.)"""
    parts = urlsplit(url)
    query = dict(pair.partition("=")[::2] for pair in parts.query.split("&"))
    signature = query.pop("X-Amz-Signature", "")
    timestamp = unquote(query["X-Amz-Date"])
    signed_at = datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if datetime.now(UTC) > signed_at + timedelta(seconds=int(query["X-Amz-Expires"])):
        return False
    sent = {name.lower(): value for name, value in headers.items()} | {"host": parts.netloc}
    signed_names = unquote(query["X-Amz-SignedHeaders"]).split(";")
    if any(name not in sent for name in signed_names):
        return False
    unsigned = urlunsplit(parts._replace(query="&".join(f"{name}={value}" for name, value in query.items())))
    request = AWSRequest(method=method, url=unsigned, headers={name: sent[name] for name in signed_names})
    request.context["timestamp"] = timestamp
    access_key = unquote(query["X-Amz-Credential"]).split("/")[0]
    signer = S3SigV4QueryAuth(Credentials(access_key, S3_SECRET_ACCESS_KEY), "s3", S3_REGION)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return hmac.compare_digest(expected, signature)


async def presigned_request_is_refused(
    store: ObjectStore, method: str, url: str, *, headers: Mapping[str, str], content: bytes = b""
) -> bool:
    if isinstance(store, S3ObjectStore):
        return not sigv4_presigned_url_is_valid(method, url, headers)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
        response = await http.request(method, url, headers=dict(headers), content=content)
    if response.status_code == 403:
        error = response.json()["error"]
        assert error["type"] == "forbidden"
        assert error["message"]
        assert isinstance(error["details"], dict)
        return True
    assert response.status_code == 200, response.text
    return False


def requires_bounded_puts(store: ObjectStore) -> None:
    """Skip, by name and reason, a test of `max_bytes` and single use on a store that cannot bound
    a presigned PUT. Only S3 may (its confirm routes check the size instead)."""
    if store.bounds_presigned_puts:
        return
    assert isinstance(store, S3ObjectStore), f"{type(store).__name__} must bound its presigned PUTs"
    pytest.skip("S3 cannot bound a presigned PUT: max_bytes is checked at confirm, the URL's expiry bounds its use")


@dataclass(frozen=True)
class PutAnswer:
    status: int
    error: dict | None = None


async def put_with_url(store: ObjectStore, url: str, body: bytes | list[bytes], content_type: str) -> PutAnswer:
    """PUT `body` with a presigned URL: over HTTP, or through `put_presigned` on the in-memory fake
    (its in-process stand-in for the local store's route). A list is sent as a chunked body."""
    if isinstance(store, MemoryObjectStore):
        try:
            await store.put_presigned(url, b"".join(body) if isinstance(body, list) else body, content_type=content_type)
        except SluiceError as exc:
            status = {Forbidden: 403, TooLarge: 413}[type(exc)]
            return PutAnswer(status, {"type": exc.error_type, "message": exc.message, "details": exc.details})
        return PutAnswer(200)

    async def chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    content = chunks(body) if isinstance(body, list) else body
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
        response = await http.put(url, content=content, headers={"Content-Type": content_type})
    return PutAnswer(response.status_code, None if response.status_code == 200 else response.json()["error"])


# -- the contract ----------------------------------------------------------------------------------


async def test_every_method_raises_not_connected_before_connect_and_after_close(
    unconnected_store: ObjectStore, tmp_path: Path
) -> None:
    store, bucket, key = unconnected_store, "some-bucket", "some/key.txt"
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.ensure_bucket(bucket),
        lambda: store.put_bytes(bucket, key, b"x"),
        lambda: store.put_file(bucket, key, source),
        lambda: store.get_bytes(bucket, key),
        lambda: store.download_file(bucket, key, tmp_path / "out.bin"),
        lambda: store.head(bucket, key),
        lambda: store.delete(bucket, key),
        lambda: store.presign_put(bucket, key),
        lambda: store.presign_get(bucket, key),
    ]
    for _ in ("before connect", "after close"):
        for call in calls:
            with pytest.raises(NotConnected):
                await call()
        with pytest.raises(NotConnected):
            store.list_objects(bucket)
        with pytest.raises(NotConnected):
            store.url(bucket, key)
        assert (await store.health()).status == "down"
        async with store:
            assert (await store.health()).status == "ok"


async def test_ensure_bucket_twice_is_fine(store: ObjectStore, bucket: str) -> None:
    await store.ensure_bucket(bucket)
    assert [info async for info in store.list_objects(bucket)] == []


async def test_put_bytes_then_get_and_head_return_bytes_content_type_and_etag(store: ObjectStore, bucket: str) -> None:
    data = b'{"hello": "world"}'
    md5 = hashlib.md5(data).hexdigest()

    info = await store.put_bytes(bucket, "docs/hello.json", data, content_type="application/json")

    assert (info.bucket, info.key, info.size, info.etag) == (bucket, "docs/hello.json", len(data), md5)
    assert await store.get_bytes(bucket, "docs/hello.json") == data
    head = await store.head(bucket, "docs/hello.json")
    assert head is not None
    assert (head.size, head.etag, head.content_type) == (len(data), md5, "application/json")
    assert head.last_modified is not None


async def test_put_over_an_existing_key_replaces_it(store: ObjectStore, bucket: str) -> None:
    await store.put_bytes(bucket, "k", b"old", content_type="text/plain")
    await store.put_bytes(bucket, "k", b"new and longer", content_type="text/csv")

    assert await store.get_bytes(bucket, "k") == b"new and longer"
    head = await store.head(bucket, "k")
    assert head is not None and (head.size, head.content_type) == (14, "text/csv")


async def test_head_of_a_missing_key_is_none(store: ObjectStore, bucket: str) -> None:
    assert await store.head(bucket, "no/such/key.txt") is None


async def test_get_of_a_missing_key_raises_not_found_naming_bucket_and_key(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    for read in (store.get_bytes(bucket, "no/such key"), store.download_file(bucket, "no/such key", tmp_path / "x")):
        with pytest.raises(NotFound) as caught:
            await read
        assert caught.value.details == {"bucket": bucket, "key": "no/such key"}
        assert bucket in caught.value.message and "no/such key" in caught.value.message
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


async def test_a_missing_bucket_raises_not_found_naming_it(store: ObjectStore) -> None:
    missing = random_bucket()
    for call in (store.put_bytes(missing, "k", b"x"), store.get_bytes(missing, "k")):
        with pytest.raises(NotFound) as caught:
            await call
        assert caught.value.details["bucket"] == missing
    with pytest.raises(NotFound):
        [info async for info in store.list_objects(missing)]


async def test_a_bucket_name_that_is_no_name_is_invalid_input(store: ObjectStore) -> None:
    with pytest.raises(InvalidInput):
        await store.put_bytes("../escape", "k", b"x")


@pytest.mark.parametrize(
    "key",
    [
        "with space.txt",
        "plus+sign.txt",
        "ünïcødé/文件 📄.txt",
        "deeply/nested/folder/of/files/data.json",
        "percent%20stays%2Fliteral",
        "query?and#hash&amp=1",
        "tilde~quote'paren(1).txt",
        ".dotfile",
    ],
)
async def test_keys_with_spaces_plus_unicode_and_folders_round_trip(store: ObjectStore, bucket: str, key: str) -> None:
    await store.put_bytes(bucket, key, key.encode(), content_type="text/plain")

    assert await store.get_bytes(bucket, key) == key.encode()
    assert (await store.head(bucket, key)) is not None
    assert [info.key async for info in store.list_objects(bucket)] == [key]


async def test_list_objects_yields_keys_under_a_prefix_in_key_order(store: ObjectStore, bucket: str) -> None:
    keys = ["b", "a/z/1", "a/é", "a-c", "a/b", "a/a", "ab", "c/d"]
    for key in keys:
        await store.put_bytes(bucket, key, key.encode() * 3)

    everything = [info async for info in store.list_objects(bucket)]
    under_a = [info.key async for info in store.list_objects(bucket, prefix="a")]
    in_folder_a = [info.key async for info in store.list_objects(bucket, prefix="a/")]

    # UTF-8 byte order, as S3: "-" (0x2d) sorts before "/" (0x2f), "é" after "z".
    assert [info.key for info in everything] == ["a-c", "a/a", "a/b", "a/z/1", "a/é", "ab", "b", "c/d"]
    assert under_a == ["a-c", "a/a", "a/b", "a/z/1", "a/é", "ab"]
    assert in_folder_a == ["a/a", "a/b", "a/z/1", "a/é"]
    assert [info.key async for info in store.list_objects(bucket, prefix="a/z/")] == ["a/z/1"]
    assert [info async for info in store.list_objects(bucket, prefix="nothing/")] == []
    first = everything[0]
    assert (first.bucket, first.size, first.etag) == (bucket, 9, hashlib.md5(b"a-c" * 3).hexdigest())


async def test_delete_removes_the_object_and_deleting_a_missing_key_is_fine(store: ObjectStore, bucket: str) -> None:
    await store.put_bytes(bucket, "folder/inner/file.txt", b"x")
    await store.put_bytes(bucket, "folder/other.txt", b"y")

    await store.delete(bucket, "folder/inner/file.txt")
    await store.delete(bucket, "folder/inner/file.txt")
    await store.delete(bucket, "never/existed.txt")

    assert await store.head(bucket, "folder/inner/file.txt") is None
    assert [info.key async for info in store.list_objects(bucket)] == ["folder/other.txt"]
    # The emptied "folder" is no obstacle to an object of that name.
    await store.put_bytes(bucket, "folder/inner", b"now an object")
    assert await store.get_bytes(bucket, "folder/inner") == b"now an object"


async def test_put_file_and_download_file_stream_a_20_mib_file_byte_identical(
    store: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(20 * MiB + 12345)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    target = tmp_path / "downloads" / "nested" / "big-copy.bin"

    uploaded = await store.put_file(bucket, "big/file.bin", source, content_type="application/octet-stream")
    downloaded = await store.download_file(bucket, "big/file.bin", target)

    assert uploaded.size == downloaded.size == len(data)
    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == ["big-copy.bin"]  # no temp file left
    assert downloaded.etag == uploaded.etag
    if isinstance(store, S3ObjectStore):
        assert uploaded.etag is not None and uploaded.etag.endswith("-3")  # three 8 MiB parts: multipart
    else:
        assert uploaded.etag == hashlib.md5(data).hexdigest()


async def test_presigned_put_stores_exactly_what_the_client_sends(store: ObjectStore, bucket: str) -> None:
    requires_http(store)
    key = "uploads/ü + space.bin"
    data = os.urandom(3 * MiB + 7)
    url = await store.presign_put(bucket, key, expires_in=300, content_type="application/zip")

    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
        response = await http.put(url, content=data, headers={"Content-Type": "application/zip"})

    assert response.status_code == 200, response.text
    assert response.headers["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert await store.get_bytes(bucket, key) == data
    head = await store.head(bucket, key)
    assert head is not None and head.content_type == "application/zip"


async def test_presigned_get_serves_the_object(store: ObjectStore, bucket: str) -> None:
    requires_http(store)
    key = "shared/report 2024+final.csv"
    await store.put_bytes(bucket, key, b"a,b\n1,2\n", content_type="text/csv")
    url = await store.presign_get(bucket, key, expires_in=300)

    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
        response = await http.get(url)

    assert response.status_code == 200, response.text
    assert response.content == b"a,b\n1,2\n"
    assert response.headers["Content-Type"].startswith("text/csv")


async def test_a_presigned_put_url_altered_to_name_another_key_is_refused(store: ObjectStore, bucket: str) -> None:
    requires_http(store)
    url = await store.presign_put(bucket, "uploads/mine.txt", content_type="text/plain")
    headers = {"Content-Type": "text/plain"}
    tampered = url.replace("/uploads/mine.txt?", "/uploads/theirs.txt?")
    assert tampered != url

    assert not await presigned_request_is_refused(store, "PUT", url, headers=headers, content=b"mine")
    assert await presigned_request_is_refused(store, "PUT", tampered, headers=headers, content=b"theirs")
    assert await store.head(bucket, "uploads/theirs.txt") is None


async def test_a_presigned_put_sent_with_another_content_type_is_refused(store: ObjectStore, bucket: str) -> None:
    requires_http(store)
    url = await store.presign_put(bucket, "uploads/image.png", content_type="image/png")

    refused = await presigned_request_is_refused(
        store, "PUT", url, headers={"Content-Type": "text/html"}, content=b"<script>"
    )

    assert refused
    assert await store.head(bucket, "uploads/image.png") is None


async def test_a_presigned_get_url_does_not_allow_put(store: ObjectStore, bucket: str) -> None:
    requires_http(store)
    await store.put_bytes(bucket, "report.txt", b"original")
    url = await store.presign_get(bucket, "report.txt")

    assert not await presigned_request_is_refused(store, "GET", url, headers={})
    assert await presigned_request_is_refused(store, "PUT", url, headers={}, content=b"overwritten")
    assert await store.get_bytes(bucket, "report.txt") == b"original"


async def test_an_expired_presigned_put_url_is_refused(store: ObjectStore, bucket: str) -> None:
    requires_http(store)
    url = await store.presign_put(bucket, "late.txt", expires_in=1, content_type="text/plain")

    await asyncio.sleep(2.5)

    assert await presigned_request_is_refused(store, "PUT", url, headers={"Content-Type": "text/plain"}, content=b"x")
    assert await store.head(bucket, "late.txt") is None


async def test_presigning_for_longer_than_seven_days_or_no_time_is_invalid_input(store: ObjectStore) -> None:
    for expires_in in (0, -5, 7 * 24 * 3600 + 1):
        with pytest.raises(InvalidInput):
            await store.presign_put("some-bucket", "k", expires_in=expires_in)


async def test_a_negative_max_bytes_is_invalid_input(store: ObjectStore, bucket: str) -> None:
    with pytest.raises(InvalidInput):
        await store.presign_put(bucket, "k", max_bytes=-1)
    with pytest.raises(InvalidInput):
        await store.get_bytes(bucket, "k", max_bytes=-1)


async def test_a_presigned_put_over_its_max_bytes_is_refused_and_nothing_is_stored(store: ObjectStore, bucket: str) -> None:
    requires_bounded_puts(store)
    await store.put_bytes(bucket, "bounded.bin", b"previous", content_type="text/plain")
    url = await store.presign_put(bucket, "bounded.bin", content_type="application/octet-stream", max_bytes=1024)

    over = await put_with_url(store, url, os.urandom(1025), "application/octet-stream")

    assert over.status == 413 and over.error is not None
    assert over.error["type"] == "too_large" and "1024" in over.error["message"]
    assert over.error["details"]["limit_bytes"] == 1024
    assert await store.get_bytes(bucket, "bounded.bin") == b"previous"
    if isinstance(store, LocalObjectStore):
        # No Content-Length to refuse up front: the streamed bytes are counted and cut at 1025.
        streamed = await put_with_url(store, url, [os.urandom(600), os.urandom(600), os.urandom(600)], "application/octet-stream")
        assert streamed.status == 413 and streamed.error is not None and streamed.error["type"] == "too_large"
        assert await store.get_bytes(bucket, "bounded.bin") == b"previous"
        assert list((store.root / bucket / ".sluice" / "tmp").iterdir()) == []  # nothing staged is left
    # Refusals do not use the URL up: exactly the limit goes through.
    exact = os.urandom(1024)
    assert (await put_with_url(store, url, exact, "application/octet-stream")).status == 200
    assert await store.get_bytes(bucket, "bounded.bin") == exact


async def test_a_presigned_put_url_is_used_once_and_the_first_object_stays(store: ObjectStore, bucket: str) -> None:
    requires_bounded_puts(store)
    url = await store.presign_put(bucket, "once.txt", content_type="text/plain")
    other = await store.presign_put(bucket, "once.txt", content_type="text/plain")
    assert other != url  # each URL is its own

    assert (await put_with_url(store, url, b"first", "text/plain")).status == 200
    again = await put_with_url(store, url, b"second", "text/plain")

    assert again.status == 403 and again.error is not None
    assert again.error["type"] == "forbidden" and again.error["message"] == "this upload URL was already used"
    assert await store.get_bytes(bucket, "once.txt") == b"first"
    assert (await put_with_url(store, other, b"by the other URL", "text/plain")).status == 200
    assert await store.get_bytes(bucket, "once.txt") == b"by the other URL"


async def test_a_presigned_put_url_with_its_max_bytes_altered_or_removed_is_refused(store: ObjectStore, bucket: str) -> None:
    requires_bounded_puts(store)
    url = await store.presign_put(bucket, "small.txt", content_type="text/plain", max_bytes=10)
    assert "X-Sluice-Max-Bytes=10&" in url or url.endswith("X-Sluice-Max-Bytes=10")
    raised = url.replace("X-Sluice-Max-Bytes=10", "X-Sluice-Max-Bytes=100000")
    removed = url.replace("X-Sluice-Max-Bytes=10&", "").replace("&X-Sluice-Max-Bytes=10", "")
    assert raised != url and removed != url

    for tampered in (raised, removed):
        answer = await put_with_url(store, tampered, b"x" * 50, "text/plain")
        assert answer.status == 403 and answer.error is not None and answer.error["type"] == "forbidden"
    assert await store.head(bucket, "small.txt") is None
    assert (await put_with_url(store, url, b"0123456789", "text/plain")).status == 200


async def test_get_bytes_with_max_bytes_refuses_a_larger_object(store: ObjectStore, bucket: str) -> None:
    data = os.urandom(100)
    await store.put_bytes(bucket, "hundred.bin", data)

    assert await store.get_bytes(bucket, "hundred.bin", max_bytes=100) == data
    assert await store.get_bytes(bucket, "hundred.bin", max_bytes=10**12) == data
    for limit in (99, 0):
        with pytest.raises(TooLarge) as caught:
            await store.get_bytes(bucket, "hundred.bin", max_bytes=limit)
        assert caught.value.details["limit_bytes"] == limit
        assert caught.value.details["size_bytes"] == 100
        assert caught.value.details["bucket"] == bucket and caught.value.details["key"] == "hundred.bin"
    with pytest.raises(NotFound):
        await store.get_bytes(bucket, "missing.bin", max_bytes=10)


async def test_url_names_the_object_for_open_asset(store: ObjectStore, bucket: str) -> None:
    key = "models/v1/weights file.onnx"
    await store.put_bytes(bucket, key, b"weights")

    url = store.url(bucket, key)

    if isinstance(store, S3ObjectStore):
        assert url == f"s3://{bucket}/{key}"
    elif isinstance(store, MemoryObjectStore):
        assert url == f"memory://{bucket}/{key}"  # names the object; nothing outside the process opens it
    else:
        parts = urlsplit(url)
        assert parts.scheme == "file"
        assert Path(url2pathname(parts.path)).read_bytes() == b"weights"


# -- memory only -----------------------------------------------------------------------------------


@pytest.mark.unit
async def test_memory_presigned_urls_name_what_they_allow_and_objects_are_shared_through_one_dict() -> None:
    buckets: dict = {}
    async with MemoryObjectStore(buckets) as first, MemoryObjectStore(buckets) as second:
        put = await first.presign_put("inbox", "a b/c.zip", expires_in=60, content_type="application/zip")
        get = await first.presign_get("inbox", "a b/c.zip")
        await first.ensure_bucket("inbox")
        await first.put_bytes("inbox", "k", bytearray(b"shared"))

        assert await second.get_bytes("inbox", "k") == b"shared"
    parts = urlsplit(put)
    assert (parts.scheme, parts.netloc, unquote(parts.path)) == ("memory", "inbox", "/a b/c.zip")
    assert "X-Sluice-Op=PUT" in parts.query and "X-Sluice-Content-Type=application%2Fzip" in parts.query
    assert "X-Sluice-Op=GET" in urlsplit(get).query


@pytest.mark.unit
async def test_memory_put_presigned_accepts_only_urls_it_issued_unexpired_and_with_their_content_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import infra.objectstore.memory as memory

    async with MemoryObjectStore() as store:
        await store.ensure_bucket("inbox")
        url = await store.presign_put("inbox", "a.txt", expires_in=1, content_type="text/plain")
        with pytest.raises(Forbidden):
            await store.put_presigned(url.replace("a.txt", "b.txt"), b"x", content_type="text/plain")
        with pytest.raises(Forbidden):
            await store.put_presigned(url, b"x", content_type="text/html")
        later = time.time() + 2.1
        monkeypatch.setattr(memory.time, "time", lambda: later)  # the URL's second is over
        with pytest.raises(Forbidden) as caught:
            await store.put_presigned(url, b"x", content_type="text/plain")
        assert "expired" in caught.value.message
        assert await store.head("inbox", "a.txt") is None


# -- S3 only ---------------------------------------------------------------------------------------


@pytest.fixture
async def s3_store(s3_endpoint: str) -> AsyncIterator[S3ObjectStore]:
    async with S3ObjectStore(
        s3_endpoint, region=S3_REGION, access_key_id=S3_ACCESS_KEY_ID, secret_access_key=S3_SECRET_ACCESS_KEY
    ) as store:
        yield store


async def test_s3_a_multipart_upload_that_fails_is_aborted(
    s3_store: S3ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = random_bucket()
    await s3_store.ensure_bucket(bucket)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(17 * MiB))
    client = s3_store._client
    upload_part = client.upload_part
    calls = 0

    async def upload_part_then_fail(**kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise EndpointConnectionError(endpoint_url="http://s3.invalid")
        return await upload_part(**kwargs)

    monkeypatch.setattr(client, "upload_part", upload_part_then_fail)

    with pytest.raises(TransientError):
        await s3_store.put_file(bucket, "big.bin", source)

    uploads = await client.list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == []
    assert await s3_store.head(bucket, "big.bin") is None


async def test_s3_a_presigned_put_is_bounded_by_its_expiry_only(s3_store: S3ObjectStore) -> None:
    """Why confirm checks the size on S3: max_bytes cannot be signed into a presigned PUT, so it is
    not in the URL, and the genuine URL stays valid for any body, again and again, until it expires."""
    assert not s3_store.bounds_presigned_puts
    bucket = random_bucket()
    await s3_store.ensure_bucket(bucket)
    url = await s3_store.presign_put(bucket, "big.bin", content_type="application/octet-stream", max_bytes=10)

    assert "Max-Bytes" not in url and "max" not in url.lower().split("?")[1]
    assert sigv4_presigned_url_is_valid("PUT", url, {"Content-Type": "application/octet-stream"})


async def test_s3_get_bytes_over_max_bytes_does_not_read_the_body(s3_store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = random_bucket()
    await s3_store.ensure_bucket(bucket)
    await s3_store.put_bytes(bucket, "big.bin", os.urandom(MiB))
    client = s3_store._client
    get_object = client.get_object
    reads: list[str] = []

    async def spying_get_object(**kwargs: object) -> dict:
        response = await get_object(**kwargs)
        body = response["Body"]
        for name in ("read", "iter_chunks"):
            original = getattr(body, name)

            def spy(*args: object, _name: str = name, _original=original, **kw: object) -> object:
                reads.append(_name)
                return _original(*args, **kw)

            monkeypatch.setattr(body, name, spy, raising=False)
        return response

    monkeypatch.setattr(client, "get_object", spying_get_object)

    with pytest.raises(TooLarge):
        await s3_store.get_bytes(bucket, "big.bin", max_bytes=1000)
    assert reads == []
    assert len(await s3_store.get_bytes(bucket, "big.bin", max_bytes=MiB)) == MiB
    assert reads[0] == "iter_chunks"  # the spy sees the body read when it is within the limit


async def test_s3_an_unreachable_endpoint_raises_transient_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    async with S3ObjectStore(
        f"http://127.0.0.1:{closed_port}", access_key_id="k", secret_access_key="s"
    ) as store:
        with pytest.raises(TransientError) as caught:
            await store.get_bytes("some-bucket", "k")
        assert caught.value.__cause__ is not None
        assert (await store.health()).status == "down"


# -- local only ------------------------------------------------------------------------------------

UNSAFE_KEYS = [
    "",
    "/etc/passwd",
    "..",
    "../escape.txt",
    "a/../../escape.txt",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "nul\x00byte",
    "back\\..\\slash",
    ".sluice/meta/forged",
    "x" * 1025,
    "long/" + "y" * 256,
]


@pytest.mark.parametrize("key", UNSAFE_KEYS, ids=lambda key: repr(key)[:40])
async def test_local_an_unsafe_key_is_refused_by_name_and_nothing_is_written_outside_root(
    tmp_path: Path, key: str
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    root = tmp_path / "root"
    before = sorted(tmp_path.rglob("*"))
    async with LocalObjectStore(root, "http://127.0.0.1:9", SIGNING_KEY) as store:
        await store.ensure_bucket("safe-bucket")
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.put_bytes("safe-bucket", key, b"payload"),
            lambda: store.put_file("safe-bucket", key, source),
            lambda: store.get_bytes("safe-bucket", key),
            lambda: store.download_file("safe-bucket", key, tmp_path / "download.bin"),
            lambda: store.head("safe-bucket", key),
            lambda: store.delete("safe-bucket", key),
            lambda: store.presign_put("safe-bucket", key),
            lambda: store.presign_get("safe-bucket", key),
        ]
        for call in calls:
            with pytest.raises(InvalidInput) as caught:
                await call()
            assert caught.value.details["key"] == key
            assert repr(key) in caught.value.message
        with pytest.raises(InvalidInput):
            store.url("safe-bucket", key)
        assert [info async for info in store.list_objects("safe-bucket")] == []

    outside = [path for path in sorted(tmp_path.rglob("*")) if not path.is_relative_to(root)]
    assert outside == before


async def test_local_a_key_through_a_link_out_of_the_bucket_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    async with LocalObjectStore(tmp_path / "root", "http://127.0.0.1:9", SIGNING_KEY) as store:
        await store.ensure_bucket("linked")
        (tmp_path / "root" / "linked" / "door").symlink_to(outside, target_is_directory=True)

        with pytest.raises(InvalidInput):
            await store.put_bytes("linked", "door/planted.txt", b"x")
        with pytest.raises(InvalidInput):
            await store.get_bytes("linked", "door/secret.txt")
        assert [info async for info in store.list_objects("linked", prefix="door/")] == []

    assert sorted(path.name for path in outside.iterdir()) == ["secret.txt"]


async def test_local_an_object_and_a_folder_of_the_same_name_conflict(local_server: LocalServer) -> None:
    """A folder cannot be a file too; S3 allows `a` beside `a/b`, the local store says Conflict."""
    async with LocalObjectStore(local_server.root, local_server.public_url, SIGNING_KEY) as store:
        bucket = random_bucket()
        await store.ensure_bucket(bucket)
        await store.put_bytes(bucket, "a", b"file")
        await store.put_bytes(bucket, "b/c", b"file in folder")

        for key in ("a/b", "b"):
            with pytest.raises(Conflict) as caught:
                await store.put_bytes(bucket, key, b"x")
            assert caught.value.details == {"bucket": bucket, "key": key}

        assert [info.key async for info in store.list_objects(bucket)] == ["a", "b/c"]
        assert list((store.root / bucket / ".sluice" / "tmp").iterdir()) == []


@pytest.fixture
async def local_writers(local_server: LocalServer) -> AsyncIterator[list[LocalObjectStore]]:
    """Four stores on one root, as four processes of the platform would have."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(LocalObjectStore(local_server.root, local_server.public_url, SIGNING_KEY))
            for _ in range(4)
        ]


async def test_local_concurrent_writers_of_one_key_leave_one_complete_version(
    local_writers: list[LocalObjectStore],
) -> None:
    versions = [bytes([n]) * (512 * 1024 + n) for n in range(8)]
    sizes_and_etags = {(len(data), hashlib.md5(data).hexdigest()) for data in versions}
    store, bucket, key = local_writers[0], random_bucket(), "contended/key.bin"
    await store.ensure_bucket(bucket)
    await store.put_bytes(bucket, key, versions[0])
    writing = True
    reads = 0

    async def read_while_writing() -> None:
        nonlocal reads
        while writing:
            assert await store.get_bytes(bucket, key) in versions
            head = await store.head(bucket, key)
            assert head is not None and (head.size, head.etag) in sizes_and_etags
            reads += 1

    async def write(n: int) -> None:
        version, writer = n % len(versions), local_writers[n % len(local_writers)]
        await writer.put_bytes(bucket, key, versions[version], content_type=f"test/v{version}")

    reader = asyncio.create_task(read_while_writing())
    try:
        await asyncio.gather(*(write(n) for n in range(3 * len(versions))))
    finally:
        writing = False
        await reader

    final = await store.get_bytes(bucket, key)
    head = await store.head(bucket, key)
    assert final in versions and reads > 0
    assert head is not None
    assert (head.size, head.etag) == (len(final), hashlib.md5(final).hexdigest())
    assert head.content_type == f"test/v{versions.index(final)}"
    assert list((store.root / bucket / ".sluice" / "tmp").iterdir()) == []  # no staged upload left behind


async def test_local_a_presigned_get_of_a_missing_object_answers_404(local_server: LocalServer) -> None:
    async with LocalObjectStore(local_server.root, local_server.public_url, SIGNING_KEY) as store:
        bucket = random_bucket()
        await store.ensure_bucket(bucket)
        url = await store.presign_get(bucket, "never/uploaded.txt")

        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            response = await http.get(url)

    assert response.status_code == 404
    assert response.json()["error"]["details"] == {"bucket": bucket, "key": "never/uploaded.txt"}


async def test_local_a_presigned_url_signed_with_another_key_is_refused(local_server: LocalServer) -> None:
    async with LocalObjectStore(local_server.root, local_server.public_url, b"some-other-signing-key-000") as forger:
        url = await forger.presign_put(random_bucket(), "k.txt")

    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
        response = await http.put(url, content=b"x", headers={"Content-Type": "text/plain"})

    assert response.status_code == 403
    assert response.json()["error"]["type"] == "forbidden"


async def test_local_a_used_put_url_stays_used_after_a_restart_and_its_mark_goes_once_it_expired(tmp_path: Path) -> None:
    root = tmp_path / "root"

    async def put(store: LocalObjectStore, url: str, body: bytes) -> httpx.Response:
        app = FastAPI()
        app.include_router(presigned_router(store))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=HTTP_TIMEOUT) as http:
            return await http.put(url, content=body, headers={"Content-Type": "text/plain"})

    async with LocalObjectStore(root, "http://sluice.test", SIGNING_KEY) as before:
        await before.ensure_bucket("uploads")
        url = await before.presign_put("uploads", "k.txt", expires_in=60, content_type="text/plain", max_bytes=100)
        assert (await put(before, url, b"first")).status_code == 200
    used = root / "uploads" / ".sluice" / "used"
    [mark] = list(used.iterdir())

    async with LocalObjectStore(root, "http://sluice.test", SIGNING_KEY) as after:
        response = await put(after, url, b"second")
        assert response.status_code == 403 and response.json()["error"]["message"] == "this upload URL was already used"
        assert await after.get_bytes("uploads", "k.txt") == b"first"

    local_module._purge_used(used)
    assert mark.exists()  # its URL is still valid: the mark still refuses it
    local_module._purge_used(used, now=time.time() + 60 + local_module.LATE_COMMIT_S + 2)
    assert not mark.exists()


async def test_local_two_puts_racing_with_one_url_store_one(local_server: LocalServer) -> None:
    async with LocalObjectStore(local_server.root, local_server.public_url, SIGNING_KEY) as store:
        bucket = random_bucket()
        await store.ensure_bucket(bucket)
        url = await store.presign_put(bucket, "raced.bin", content_type="application/octet-stream")
        bodies = [bytes([n]) * (256 * 1024) for n in range(6)]

        answers = await asyncio.gather(*(put_with_url(store, url, body, "application/octet-stream") for body in bodies))

        assert sorted(answer.status for answer in answers) == [200] + [403] * 5
        assert await store.get_bytes(bucket, "raced.bin") == bodies[[a.status for a in answers].index(200)]
        assert list((store.root / bucket / ".sluice" / "tmp").iterdir()) == []
