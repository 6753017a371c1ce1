"""The ObjectStore on S3 or an S3-compatible server (MinIO, moto), through aiobotocore.

The client lives from `connect()` to `close()`. Errors come out as Sluice errors: a missing object
or bucket is `NotFound`, an unreachable or throttling endpoint `TransientError`, a bad bucket name
or key `InvalidInput`; the botocore exception is kept as the cause.

A presigned PUT cannot be bounded on S3 (`bounds_presigned_puts = False`): SigV4 signs a fixed
Content-Length or none, never a range (only presigned POST policies have `content-length-range`),
and S3 accepts the same URL again until it expires. So `presign_put`'s `max_bytes` is checked, not
enforced: the URL's expiry is the bound on its use, and whoever confirms the upload must compare
the stored size with the limit and delete an object over it (the plugin, model and object confirm
routes do).
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, ParamValidationError
from botocore.exceptions import ConnectionError as BotoConnectionError

from events.errors import Conflict, Forbidden, InvalidInput, NotFound, PermanentError, SluiceError, TransientError
from events.lifecycle import Health
from infra.objectstore.base import ObjectInfo, ObjectStore, check_max_bytes, object_too_large

PART_SIZE = 8 * 1024 * 1024  # files above this go up in parts of this size
MAX_PARTS = 10_000
CHUNK = 1024 * 1024
MAX_EXPIRES_S = 7 * 24 * 3600  # the SigV4 limit

TRANSIENT_CODES = frozenset(
    {"RequestTimeout", "SlowDown", "ServiceUnavailable", "InternalError", "Throttling", "RequestLimitExceeded"}
)
INVALID_CODES = frozenset({"InvalidBucketName", "KeyTooLongError", "InvalidArgument", "EntityTooLarge"})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _from_client_error(exc: ClientError, bucket: str, key: str | None) -> SluiceError:
    code, status = _code(exc), _status(exc)
    details: dict[str, Any] = {"bucket": bucket, "code": code, "status": status}
    if key is not None:
        details["key"] = key
    if code == "NoSuchBucket" or (key is None and status == 404):
        return NotFound(f"bucket {bucket!r} does not exist", details={"bucket": bucket})
    if code in {"NoSuchKey", "NotFound", "404"} or status == 404:
        return NotFound(f"object {key!r} not found in bucket {bucket!r}", details={"bucket": bucket, "key": key})
    message = f"S3 answered {code or status} for {bucket}/{key or ''}: {exc}"
    if status >= 500 or code in TRANSIENT_CODES:
        return TransientError(message, details=details)
    if status == 403:
        return Forbidden(message, details=details)
    if status == 409:
        return Conflict(message, details=details)
    if code in INVALID_CODES:
        return InvalidInput(message, details=details)
    return PermanentError(message, details=details)


@contextmanager
def _errors(bucket: str, key: str | None = None) -> Iterator[None]:
    """Turn botocore and aiohttp failures into Sluice errors, keeping them as the cause."""
    try:
        yield
    except ClientError as exc:
        raise _from_client_error(exc, bucket, key) from exc
    except ParamValidationError as exc:
        raise InvalidInput(
            f"S3 refused the request for {bucket}/{key or ''}: {exc}", details={"bucket": bucket, "key": key}
        ) from exc
    except (BotoConnectionError, HTTPClientError, IncompleteReadError, aiohttp.ClientError, TimeoutError) as exc:
        raise TransientError(
            f"S3 endpoint unreachable or the transfer broke off: {exc}", details={"bucket": bucket, "key": key}
        ) from exc


def _check_key(key: str) -> None:
    if not key or len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise InvalidInput(f"invalid object key {key!r}: use 1 to 1024 bytes of UTF-8", details={"key": key})


def _check_expires(expires_in: int) -> None:
    if not 1 <= expires_in <= MAX_EXPIRES_S:
        raise InvalidInput(
            f"expires_in must be between 1 and {MAX_EXPIRES_S} seconds, not {expires_in}",
            details={"expires_in": expires_in},
        )


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _object_info(bucket: str, key: str, response: dict[str, Any]) -> ObjectInfo:
    """The object as a GetObject or HeadObject response describes it."""
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=response["ContentLength"],
        etag=_etag(response.get("ETag")),
        content_type=response.get("ContentType"),
        version_id=response.get("VersionId"),
        last_modified=response.get("LastModified"),
    )


def _sync_and_close(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()


class S3ObjectStore(ObjectStore):
    """S3 through aiobotocore. `endpoint_url=None` means AWS; credentials default to boto's chain."""

    adapter_name = "s3"
    bounds_presigned_puts = False  # see the module doc: confirm checks the size, expiry bounds the URL

    def __init__(
        self,
        endpoint_url: str | None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "path",
    ) -> None:
        self._endpoint_url = endpoint_url
        self._region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._addressing_style = addressing_style
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def _connect(self) -> None:
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": self._addressing_style},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            # S3-compatible servers do not all know the CRC checksums newer botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = AsyncExitStack()
        self._client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=self._endpoint_url,
                region_name=self._region,
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret_access_key,
                config=config,
            )
        )
        self._stack = stack

    async def _close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _health(self) -> Health:
        detail = {"endpoint": self._endpoint_url or "aws", "region": self._region}
        try:
            with _errors(""):
                await self._client.list_buckets()
        except TransientError as exc:
            return Health(status="down", adapter=self.adapter_name, detail={**detail, "reason": exc.message})
        except SluiceError as exc:
            return Health(status="degraded", adapter=self.adapter_name, detail={**detail, "reason": exc.message})
        return Health(status="ok", adapter=self.adapter_name, detail=detail)

    async def ensure_bucket(self, bucket: str) -> None:
        self._require_connected()
        with _errors(bucket):
            try:
                await self._client.head_bucket(Bucket=bucket)
                return
            except ClientError as exc:
                if _status(exc) != 404:
                    raise
            extra = {}
            if self._region != "us-east-1":  # the one region that takes no location constraint
                extra["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
            try:
                await self._client.create_bucket(Bucket=bucket, **extra)
            except ClientError as exc:
                if _code(exc) != "BucketAlreadyOwnedByYou":
                    raise

    async def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None) -> ObjectInfo:
        self._require_connected()
        _check_key(key)
        extra = {"ContentType": content_type} if content_type else {}
        with _errors(bucket, key):
            response = await self._client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=len(data),
            etag=_etag(response.get("ETag")),
            content_type=content_type,
            version_id=response.get("VersionId"),
        )

    async def put_file(self, bucket: str, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        self._require_connected()
        _check_key(key)
        path = Path(path)
        size = (await asyncio.to_thread(path.stat)).st_size
        if size <= PART_SIZE:
            data = await asyncio.to_thread(path.read_bytes)  # at most one part
            return await self.put_bytes(bucket, key, data, content_type=content_type)
        return await self._put_multipart(bucket, key, path, size, content_type)

    async def _put_multipart(
        self, bucket: str, key: str, path: Path, size: int, content_type: str | None
    ) -> ObjectInfo:
        """Upload in parts read one at a time; an upload that fails is aborted, leaving no parts."""
        part_size = max(PART_SIZE, math.ceil(size / MAX_PARTS))
        extra = {"ContentType": content_type} if content_type else {}
        with _errors(bucket, key):
            upload = await self._client.create_multipart_upload(Bucket=bucket, Key=key, **extra)
        upload_id = upload["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            sent = 0
            with _errors(bucket, key), open(path, "rb") as source:
                while chunk := await asyncio.to_thread(source.read, part_size):
                    number = len(parts) + 1
                    response = await self._client.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )
                    parts.append({"ETag": response["ETag"], "PartNumber": number})
                    sent += len(chunk)
                done = await self._client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            with suppress(Exception):
                await self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=sent,
            etag=_etag(done.get("ETag")),
            content_type=content_type,
            version_id=done.get("VersionId"),
        )

    async def get_bytes(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        self._require_connected()
        _check_key(key)
        check_max_bytes(max_bytes)
        with _errors(bucket, key):
            response = await self._client.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                if max_bytes is None:
                    return await body.read()
                size = response.get("ContentLength")
                if size is not None and size > max_bytes:
                    raise object_too_large(bucket, key, max_bytes, size)  # the body is closed unread
                data = bytearray()
                async for chunk in body.iter_chunks(CHUNK):  # HTTP framing holds it to ContentLength; count anyway
                    data += chunk
                    if len(data) > max_bytes:
                        raise object_too_large(bucket, key, max_bytes)
                return bytes(data)

    async def download_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        self._require_connected()
        _check_key(key)
        path = Path(path)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        out = os.fdopen(fd, "wb")
        try:
            with _errors(bucket, key):
                response = await self._client.get_object(Bucket=bucket, Key=key)
                async with response["Body"] as body:
                    async for chunk in body.iter_chunks(CHUNK):
                        await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(_sync_and_close, out)
            await asyncio.to_thread(os.replace, name, path)
        except BaseException:
            out.close()
            Path(name).unlink(missing_ok=True)
            raise
        return _object_info(bucket, key, response)

    async def head(self, bucket: str, key: str) -> ObjectInfo | None:
        self._require_connected()
        _check_key(key)
        try:
            with _errors(bucket, key):
                response = await self._client.head_object(Bucket=bucket, Key=key)
        except NotFound:
            return None
        return _object_info(bucket, key, response)

    def list_objects(self, bucket: str, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self._require_connected()
        return self._iter_objects(bucket, prefix)

    async def _iter_objects(self, bucket: str, prefix: str) -> AsyncIterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with _errors(bucket):
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        bucket=bucket,
                        key=item["Key"],
                        size=item["Size"],
                        etag=_etag(item.get("ETag")),
                        last_modified=item.get("LastModified"),
                    )

    async def delete(self, bucket: str, key: str) -> None:
        self._require_connected()
        _check_key(key)
        with _errors(bucket, key):
            await self._client.delete_object(Bucket=bucket, Key=key)

    async def presign_put(
        self, bucket: str, key: str, *, expires_in: int = 3600, content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> str:
        """`max_bytes` is checked but cannot be signed into the URL (module doc): confirm checks
        the stored size; the URL can be used until `expires_in` runs out."""
        self._require_connected()
        _check_key(key)
        _check_expires(expires_in)
        check_max_bytes(max_bytes)
        params = {"Bucket": bucket, "Key": key}
        if content_type:
            params["ContentType"] = content_type  # signed: the client must send this Content-Type
        with _errors(bucket, key):
            return await self._client.generate_presigned_url("put_object", Params=params, ExpiresIn=expires_in)

    async def presign_get(self, bucket: str, key: str, *, expires_in: int = 3600) -> str:
        self._require_connected()
        _check_key(key)
        _check_expires(expires_in)
        with _errors(bucket, key):
            return await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
            )

    def url(self, bucket: str, key: str) -> str:
        self._require_connected()
        _check_key(key)
        return f"s3://{bucket}/{key}"
