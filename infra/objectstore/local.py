"""The ObjectStore on a local folder, and the HTTP routes that serve its presigned URLs.

Layout under `root`: one folder per bucket; an object is the file at its key's path. Each bucket
keeps its own bookkeeping in a hidden `.sluice/` folder that no key can reach and no listing shows:

    root/<bucket>/<key>                 the object's bytes
    root/<bucket>/.sluice/meta/<key>    sidecar: etag, content type, and the data file it describes
    root/<bucket>/.sluice/tmp/          staged uploads, renamed into place when complete
    root/<bucket>/.sluice/used/         one empty mark per presigned PUT URL already used
    root/<bucket>/.sluice/lock          flock: one commit at a time, so data and sidecar agree

A write streams into a staged file (fsynced), then renames it over the object with `os.replace`:
readers see the old bytes or the new ones, never a part. Staging sits inside the bucket folder,
so the rename never crosses filesystems, and a half-written upload never shows up in a listing.

Presigned URLs point at `presigned_router`, which the REST app mounts at its base URL
(`public_url`). They carry an HMAC-SHA256 signature over the operation, bucket, key, expiry,
content type and (PUT) size limit, so a client can PUT or GET exactly one key until the URL
expires. A PUT URL is single-use: the commit of the first successful PUT leaves a mark named after
the URL's signature in `.sluice/used/` (taken atomically under the bucket lock, so of two PUTs
racing with one URL exactly one is stored), and every later PUT with that URL is refused with 403.
A PUT that fails (too large, refused, broken off) leaves no mark, so the client may retry it. The
marks live on disk, so a restarted store still refuses a used URL; each is removed once its URL
expired more than `LATE_COMMIT_S` ago, after which no PUT with it can commit anyway. A PUT URL
signed with a size limit refuses a Content-Length over it before reading a byte (413), and counts
the bytes of a streamed body, stopping at the first byte over the limit (413, nothing stored, the
previous object untouched).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import json
import math
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from events.errors import Conflict, Forbidden, InvalidInput, NotFound, SluiceError, TooLarge
from events.lifecycle import Health
from infra.objectstore.base import ObjectInfo, ObjectStore, check_max_bytes, object_too_large
from infra.objectstore.rules import (
    PARAM_CONTENT_TYPE,
    PARAM_EXPIRES,
    PARAM_OP,
    bucket_not_found,
    check_bucket,
    check_expires,
    hidden_character,
    object_not_found,
)

INTERNAL = ".sluice"  # per-bucket bookkeeping folder; a key may not start with this segment
CHUNK = 1024 * 1024
STALE_UPLOAD_S = 24 * 3600  # a staged upload untouched this long was left by a crash
LATE_COMMIT_S = 600  # a PUT that started before its URL expired may still commit this long after
USED_PURGE_EVERY_S = 600  # how often a bucket's expired used-URL marks are removed, at most
PARAM_SIGNATURE = "X-Sluice-Signature"
PARAM_MAX_BYTES = "X-Sluice-Max-Bytes"
PARAM_NONCE = "X-Sluice-Nonce"  # PUT URLs: two URLs for one key are two URLs, each used once
USED_MESSAGE = "this upload URL was already used"


def key_problem(key: str) -> str | None:
    """Why `key` cannot name a file safely under a bucket folder, or None when it can."""
    if not key:
        return "the key is empty"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "the key is not valid Unicode"
    if len(encoded) > 1024:
        return "the key is longer than 1024 bytes"
    if "\x00" in key or "\\" in key:
        return "the key contains NUL or a backslash"
    hidden = hidden_character(key)
    if hidden:
        return f"the key contains {hidden}, which would show one name and be another"
    if key.startswith("/"):
        return "the key is absolute"
    segments = key.split("/")
    for segment in segments:
        if not segment:
            return "the key has an empty segment (`//` or a trailing `/`)"
        if segment in (".", ".."):
            return "the key has a `.` or `..` segment"
        if len(segment.encode("utf-8")) > 255:
            return "a segment of the key is longer than 255 bytes"
    if segments[0] == INTERNAL:
        return f"keys under {INTERNAL}/ are reserved"
    return None


def check_key(key: str) -> None:
    problem = key_problem(key)
    if problem:
        raise InvalidInput(f"unsafe object key {key!r}: {problem}", details={"key": key, "reason": problem})


class _Staged:
    """An upload being written to the bucket's staging folder, hashed as it goes."""

    def __init__(self, staging: Path) -> None:
        fd, name = tempfile.mkstemp(dir=staging, prefix="put-")
        self.path = Path(name)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._md5.update(data)
        self.size += len(data)

    def finish(self) -> tuple[str, list[int]]:
        """Flush to disk; returns the etag and the file's identity (which the rename keeps)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        identity = _identity(os.fstat(self._file.fileno()))
        self._file.close()
        return self._md5.hexdigest(), identity

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _identity(stat: os.stat_result) -> list[int]:
    """Which data file a sidecar describes: a crash between the two renames of a commit leaves a
    sidecar that does not match, and it is then ignored."""
    return [stat.st_size, stat.st_mtime_ns]


@dataclass(frozen=True)
class _Signed:
    """What a verified presigned URL allows."""

    expires: int
    signature: str
    content_type: str | None
    max_bytes: int | None

    @property
    def mark_name(self) -> str:
        """The name of this URL's used mark: its expiry first, so a purge needs no file read."""
        return f"{self.expires}-{self.signature}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore(ObjectStore):
    """Buckets are folders under `root`; presigned URLs are served by `presigned_router(store)`."""

    adapter_name = "local"

    def __init__(self, root: Path, public_url: str, signing_key: bytes) -> None:
        if len(signing_key) < 16:
            raise InvalidInput("signing_key must be at least 16 bytes", details={"field": "signing_key"})
        self._root = Path(root).expanduser().absolute()
        self._public_url = public_url.rstrip("/")
        self._signing_key = signing_key
        self._purged_at: dict[str, float] = {}  # bucket -> when its used marks were last purged

    @property
    def root(self) -> Path:
        return self._root

    async def _connect(self) -> None:
        await asyncio.to_thread(self._prepare_root)

    def _prepare_root(self) -> None:
        """Create the root; remove uploads that a crash left half-staged long ago."""
        self._root.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - STALE_UPLOAD_S
        for staged in self._root.glob(f"*/{INTERNAL}/tmp/*"):
            with suppress(OSError):
                if staged.stat().st_mtime < cutoff:
                    staged.unlink()
        for used in self._root.glob(f"*/{INTERNAL}/used"):
            _purge_used(used)

    async def _health(self) -> Health:
        detail = {"root": str(self._root)}
        if not (self._root.is_dir() and os.access(self._root, os.W_OK)):
            return Health(status="down", adapter=self.adapter_name, detail={**detail, "reason": "root not writable"})
        return Health(status="ok", adapter=self.adapter_name, detail=detail)

    # -- paths -----------------------------------------------------------------------------------

    def _bucket_dir(self, bucket: str) -> Path:
        check_bucket(bucket)
        return self._root / bucket

    def _existing_bucket_dir(self, bucket: str) -> Path:
        bucket_dir = self._bucket_dir(bucket)
        if not bucket_dir.is_dir():
            raise bucket_not_found(bucket)
        return bucket_dir

    def _object_path(self, bucket: str, key: str) -> Path:
        """The file for `key`; refuses keys that are unsafe or resolve (through links) outside."""
        bucket_dir = self._bucket_dir(bucket)
        check_key(key)
        path = bucket_dir.joinpath(*key.split("/"))
        if not path.resolve().is_relative_to(bucket_dir.resolve()):
            raise InvalidInput(
                f"unsafe object key {key!r}: it resolves outside bucket {bucket!r}",
                details={"key": key, "reason": "resolves outside the bucket"},
            )
        return path

    @staticmethod
    def _meta_path(bucket_dir: Path, key: str) -> Path:
        return bucket_dir.joinpath(INTERNAL, "meta", *key.split("/"))

    @contextmanager
    def _locked(self, bucket_dir: Path, *, exclusive: bool) -> Iterator[None]:
        internal = bucket_dir / INTERNAL
        internal.mkdir(exist_ok=True)
        with open(internal / "lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield  # closing the file releases the lock

    # -- writing ---------------------------------------------------------------------------------

    def _stage(self, bucket: str) -> _Staged:
        staging = self._existing_bucket_dir(bucket) / INTERNAL / "tmp"
        staging.mkdir(parents=True, exist_ok=True)
        return _Staged(staging)

    def _commit(
        self, bucket: str, key: str, staged: _Staged, content_type: str | None, used_mark: Path | None = None
    ) -> ObjectInfo:
        """Move a complete staged upload into place, with its sidecar, under the bucket lock.
        With `used_mark` (a presigned PUT), the mark is taken first, atomically: when it exists
        already, the URL was used and nothing is stored (`Forbidden`)."""
        meta: _Staged | None = None
        claimed = replaced = False
        try:
            bucket_dir = self._bucket_dir(bucket)
            path = self._object_path(bucket, key)
            meta_path = self._meta_path(bucket_dir, key)
            etag, identity = staged.finish()
            meta = _Staged(staged.path.parent)
            meta.write(json.dumps({"etag": etag, "content_type": content_type, "file": identity}).encode())
            meta.finish()
            with self._locked(bucket_dir, exclusive=True):
                try:
                    if path.is_dir():
                        raise FileExistsError(path)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    meta_path.parent.mkdir(parents=True, exist_ok=True)
                except (FileExistsError, NotADirectoryError) as exc:
                    raise Conflict(
                        f"cannot store {key!r} in bucket {bucket!r}: a folder cannot hold both an "
                        "object and other objects under the same name (`a` and `a/b`)",
                        details={"bucket": bucket, "key": key},
                    ) from exc
                if used_mark is not None:
                    _claim(used_mark, bucket, key)
                    claimed = True
                os.replace(staged.path, path)
                replaced = True
                os.replace(meta.path, meta_path)
                modified = path.stat().st_mtime
        except BaseException:
            staged.discard()
            if meta is not None:
                meta.discard()
            if claimed and not replaced and used_mark is not None:
                used_mark.unlink(missing_ok=True)  # nothing was stored: the URL is not used
            raise
        _fsync_dir(path.parent)
        _fsync_dir(meta_path.parent)
        if used_mark is not None:
            _fsync_dir(used_mark.parent)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=staged.size,
            etag=etag,
            content_type=content_type,
            last_modified=datetime.fromtimestamp(modified, tz=UTC),
        )

    def _store(self, bucket: str, key: str, content_type: str | None, fill: Callable[[_Staged], None]) -> ObjectInfo:
        self._object_path(bucket, key)  # refuse a bad key before staging anything
        staged = self._stage(bucket)
        try:
            fill(staged)
        except BaseException:
            staged.discard()
            raise
        return self._commit(bucket, key, staged, content_type)

    async def _put_stream(
        self, bucket: str, key: str, chunks: AsyncIterator[bytes], content_type: str | None, *,
        max_bytes: int | None = None, used_mark: Path | None = None, commit_by: float | None = None,
    ) -> ObjectInfo:
        """Store an async stream of bytes (an HTTP request body) without holding it in memory.
        With `max_bytes`, reading stops at the first byte over it (`TooLarge`, nothing stored);
        `used_mark` makes the commit single-use (see `_commit`); past `commit_by` (epoch seconds)
        nothing is committed (`Forbidden`)."""
        self._object_path(bucket, key)
        staged = await asyncio.to_thread(self._stage, bucket)
        try:
            received = 0
            buffer = bytearray()
            async for chunk in chunks:
                received += len(chunk)
                if max_bytes is not None and received > max_bytes:
                    raise _upload_too_large(bucket, key, max_bytes)
                buffer += chunk
                if len(buffer) >= CHUNK:
                    await asyncio.to_thread(staged.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await asyncio.to_thread(staged.write, bytes(buffer))
            if commit_by is not None and time.time() > commit_by:
                raise Forbidden(
                    f"the upload finished more than {LATE_COMMIT_S} s after its URL expired; request a new URL",
                    details={"bucket": bucket, "key": key},
                )
        except BaseException:
            staged.discard()
            raise
        if used_mark is not None:
            await asyncio.to_thread(self._purge_used_now_and_then, bucket, used_mark.parent)
        return await asyncio.to_thread(self._commit, bucket, key, staged, content_type, used_mark)

    def _purge_used_now_and_then(self, bucket: str, used: Path) -> None:
        """Remove the bucket's expired used marks, at most every `USED_PURGE_EVERY_S`."""
        stamp = time.monotonic()
        if stamp - self._purged_at.get(bucket, -math.inf) >= USED_PURGE_EVERY_S:
            self._purged_at[bucket] = stamp
            _purge_used(used)

    # -- reading ---------------------------------------------------------------------------------

    def _read_meta(self, bucket_dir: Path, key: str, stat: os.stat_result) -> dict[str, Any]:
        """The sidecar, if it describes this data file (else {}: stale, or the file was put by hand)."""
        try:
            meta = json.loads(self._meta_path(bucket_dir, key).read_bytes())
        except (OSError, ValueError):
            return {}
        return meta if meta.get("file") == _identity(stat) else {}

    @staticmethod
    def _info(bucket: str, key: str, stat: os.stat_result, meta: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=stat.st_size,
            etag=meta.get("etag"),
            content_type=meta.get("content_type"),
            last_modified=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
        )

    def _open(self, bucket: str, key: str) -> tuple[IO[bytes], ObjectInfo]:
        """An open file of the object and its metadata, both of one version."""
        path = self._object_path(bucket, key)
        bucket_dir = self._existing_bucket_dir(bucket)
        with self._locked(bucket_dir, exclusive=False):
            try:
                file = open(path, "rb")  # noqa: SIM115 - handed to the caller
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise object_not_found(bucket, key) from exc
            stat = os.fstat(file.fileno())
            return file, self._info(bucket, key, stat, self._read_meta(bucket_dir, key, stat))

    def _head(self, bucket: str, key: str) -> ObjectInfo | None:
        path = self._object_path(bucket, key)
        bucket_dir = self._bucket_dir(bucket)
        if not bucket_dir.is_dir():
            return None  # as S3, whose HEAD cannot tell a missing bucket from a missing key
        with self._locked(bucket_dir, exclusive=False):
            try:
                stat = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not path.is_file():
                return None
            return self._info(bucket, key, stat, self._read_meta(bucket_dir, key, stat))

    def _get(self, bucket: str, key: str, max_bytes: int | None) -> bytes:
        path = self._object_path(bucket, key)
        try:
            with open(path, "rb") as file:
                if max_bytes is None:
                    return file.read()
                size = os.fstat(file.fileno()).st_size
                if size > max_bytes:
                    raise object_too_large(bucket, key, max_bytes, size)
                data = file.read(size + 1)  # a commit replaces the file, never grows it; still, read no more
                if len(data) > max_bytes:
                    raise object_too_large(bucket, key, max_bytes)
                return data
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            self._existing_bucket_dir(bucket)
            raise object_not_found(bucket, key) from exc

    def _download(self, bucket: str, key: str, target: Path) -> ObjectInfo:
        source, info = self._open(bucket, key)
        with source:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(name, target)
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise
        return info

    def _list(self, bucket: str, prefix: str) -> list[ObjectInfo]:
        bucket_dir = self._existing_bucket_dir(bucket)
        folder, _, _ = prefix.rpartition("/")
        if folder and key_problem(folder):
            return []  # no valid key starts with this prefix
        start = bucket_dir.joinpath(*folder.split("/")) if folder else bucket_dir
        real_bucket = bucket_dir.resolve()
        if not start.resolve().is_relative_to(real_bucket):
            return []
        found: list[tuple[bytes, str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(start):
            current = Path(dirpath)
            if current == bucket_dir:
                dirnames[:] = [name for name in dirnames if name != INTERNAL]
            for name in filenames:
                file = current / name
                key = file.relative_to(bucket_dir).as_posix()
                if not key.startswith(prefix) or key_problem(key) or file.is_symlink():
                    continue
                try:
                    found.append((key.encode("utf-8"), key, file.stat()))
                except FileNotFoundError:
                    continue  # deleted while we walked
        found.sort()
        # As S3's listing: size, etag and time, but no content type.
        return [
            self._info(bucket, key, stat, {"etag": self._read_meta(bucket_dir, key, stat).get("etag")})
            for _, key, stat in found
        ]

    def _delete(self, bucket: str, key: str) -> None:
        path = self._object_path(bucket, key)
        bucket_dir = self._existing_bucket_dir(bucket)
        meta_path = self._meta_path(bucket_dir, key)
        with self._locked(bucket_dir, exclusive=True):
            for file, top in ((path, bucket_dir), (meta_path, bucket_dir / INTERNAL / "meta")):
                try:
                    file.unlink()
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    continue
                _prune_empty_folders(file.parent, top)

    # -- the port --------------------------------------------------------------------------------

    async def ensure_bucket(self, bucket: str) -> None:
        self._require_connected()
        bucket_dir = self._bucket_dir(bucket)
        await asyncio.to_thread((bucket_dir / INTERNAL).mkdir, parents=True, exist_ok=True)

    async def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str | None = None) -> ObjectInfo:
        self._require_connected()
        return await asyncio.to_thread(self._store, bucket, key, content_type, lambda staged: staged.write(data))

    async def put_file(self, bucket: str, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        self._require_connected()

        def copy(staged: _Staged) -> None:
            with open(path, "rb") as source:
                while chunk := source.read(CHUNK):
                    staged.write(chunk)

        return await asyncio.to_thread(self._store, bucket, key, content_type, copy)

    async def get_bytes(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        self._require_connected()
        check_max_bytes(max_bytes)
        return await asyncio.to_thread(self._get, bucket, key, max_bytes)

    async def download_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        self._require_connected()
        return await asyncio.to_thread(self._download, bucket, key, Path(path))

    async def head(self, bucket: str, key: str) -> ObjectInfo | None:
        self._require_connected()
        return await asyncio.to_thread(self._head, bucket, key)

    def list_objects(self, bucket: str, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self._require_connected()
        return self._iter_objects(bucket, prefix)

    async def _iter_objects(self, bucket: str, prefix: str) -> AsyncIterator[ObjectInfo]:
        for info in await asyncio.to_thread(self._list, bucket, prefix):
            yield info

    async def delete(self, bucket: str, key: str) -> None:
        self._require_connected()
        await asyncio.to_thread(self._delete, bucket, key)

    async def presign_put(
        self, bucket: str, key: str, *, expires_in: int = 3600, content_type: str | None = None,
        max_bytes: int | None = None,
    ) -> str:
        """Single-use; with `max_bytes`, a larger body is refused (413) and nothing stored."""
        self._require_connected()
        check_max_bytes(max_bytes)
        return self._presign("PUT", bucket, key, expires_in, content_type, max_bytes)

    async def presign_get(self, bucket: str, key: str, *, expires_in: int = 3600) -> str:
        self._require_connected()
        return self._presign("GET", bucket, key, expires_in, None, None)

    def http_routers(self) -> list:
        """The REST app serves this store's presigned URLs."""
        return [presigned_router(self)]

    def url(self, bucket: str, key: str) -> str:
        self._require_connected()
        return self._object_path(bucket, key).as_uri()

    # -- presigned URLs --------------------------------------------------------------------------

    def _signature(
        self, op: str, bucket: str, key: str, expires: int, content_type: str | None, max_bytes: int | None,
        nonce: str | None,
    ) -> str:
        signed: list = [op, bucket, key, expires, content_type]
        if max_bytes is not None or nonce is not None:  # URLs with neither keep the signature they always had
            signed += [max_bytes, nonce]
        return hmac.new(self._signing_key, json.dumps(signed).encode(), hashlib.sha256).hexdigest()

    def _presign(
        self, op: str, bucket: str, key: str, expires_in: int, content_type: str | None, max_bytes: int | None
    ) -> str:
        check_bucket(bucket)
        check_key(key)
        check_expires(expires_in)
        content_type = content_type or None
        expires = math.ceil(time.time()) + expires_in  # valid for at least `expires_in` seconds
        params = {PARAM_OP: op, PARAM_EXPIRES: str(expires)}
        if content_type is not None:
            params[PARAM_CONTENT_TYPE] = content_type
        if max_bytes is not None:
            params[PARAM_MAX_BYTES] = str(max_bytes)
        nonce = secrets.token_hex(8) if op == "PUT" else None
        if nonce is not None:
            params[PARAM_NONCE] = nonce
        params[PARAM_SIGNATURE] = self._signature(op, bucket, key, expires, content_type, max_bytes, nonce)
        return f"{self._public_url}/v1/objects/{bucket}/{quote(key, safe='/')}?{urlencode(params)}"

    def _verify(self, op: str, bucket: str, key: str, query: dict[str, str]) -> _Signed:
        """Check a presigned request; returns what it allows. Raises `Forbidden`."""
        details = {"bucket": bucket, "key": key}
        try:
            expires = int(query[PARAM_EXPIRES])
            signature = query[PARAM_SIGNATURE]
            raw_limit = query.get(PARAM_MAX_BYTES)
            max_bytes = None if raw_limit is None else int(raw_limit)
        except (KeyError, ValueError) as exc:
            raise Forbidden("the URL is not a presigned URL", details=details) from exc
        content_type = query.get(PARAM_CONTENT_TYPE)
        expected = self._signature(
            query.get(PARAM_OP, ""), bucket, key, expires, content_type, max_bytes, query.get(PARAM_NONCE)
        )
        if not hmac.compare_digest(expected, signature):
            raise Forbidden("the signature does not match this URL", details=details)
        if query.get(PARAM_OP) != op:
            raise Forbidden(f"the URL was signed for {query.get(PARAM_OP)}, not {op}", details=details)
        if time.time() > expires:
            raise Forbidden("the presigned URL has expired", details={**details, "expired_at": expires})
        return _Signed(expires=expires, signature=signature, content_type=content_type, max_bytes=max_bytes)

    def _used_mark(self, bucket: str, key: str, signed: _Signed) -> Path:
        """Where the mark of a used PUT URL lives; `Forbidden` when it is there already."""
        mark = self._bucket_dir(bucket) / INTERNAL / "used" / signed.mark_name
        if mark.exists():
            raise Forbidden(USED_MESSAGE, details={"bucket": bucket, "key": key})
        return mark


def _prune_empty_folders(folder: Path, top: Path) -> None:
    """Remove `folder` and its parents up to (not including) `top` while they are empty."""
    while folder != top and folder.is_relative_to(top):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _upload_too_large(bucket: str, key: str, limit: int, declared: int | None = None) -> TooLarge:
    amount = f"{declared} bytes (Content-Length)" if declared is not None else f"more than {limit} bytes"
    details: dict[str, Any] = {"bucket": bucket, "key": key, "limit_bytes": limit}
    if declared is not None:
        details["size_bytes"] = declared
    return TooLarge(f"the upload is {amount}; this upload URL takes at most {limit} bytes; nothing was stored",
                    details=details)


def _claim(mark: Path, bucket: str, key: str) -> None:
    """Take a used mark atomically (O_EXCL); `Forbidden` when another PUT took it first."""
    mark.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Forbidden(USED_MESSAGE, details={"bucket": bucket, "key": key}) from None
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _purge_used(used: Path, now: float | None = None) -> None:
    """Remove the marks of URLs that expired more than `LATE_COMMIT_S` ago: no PUT with them can
    pass `_verify` or commit any more, so the mark has nothing left to refuse."""
    cutoff = (time.time() if now is None else now) - LATE_COMMIT_S
    with suppress(OSError):
        for mark in used.iterdir():
            expires, _, _ = mark.name.partition("-")
            if expires.isdigit() and int(expires) < cutoff:
                with suppress(OSError):
                    mark.unlink()


# The HTTP status of each error a presigned request can end in.
_STATUS: dict[type[SluiceError], int] = {
    Forbidden: 403, InvalidInput: 400, NotFound: 404, Conflict: 409, TooLarge: 413,
}


def _error(exc: SluiceError) -> JSONResponse:
    status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
    body = {"error": {"type": exc.error_type, "message": exc.message, "details": exc.details}}
    # A refusal that leaves the body unread ends the connection: the client cannot reuse it.
    headers = {"Connection": "close"} if status == 413 else None
    return JSONResponse(body, status_code=status, headers=headers)


def presigned_router(store: LocalObjectStore) -> APIRouter:
    """`PUT` and `GET /v1/objects/{bucket}/{key}` for the URLs `store` presigns."""
    router = APIRouter(tags=["objects"])

    @router.put("/v1/objects/{bucket}/{key:path}", summary="Upload one object with a presigned URL (once)")
    async def put_object(bucket: str, key: str, request: Request) -> Response:
        try:
            signed = store._verify("PUT", bucket, key, dict(request.query_params))
            sent_type = request.headers.get("content-type")
            if signed.content_type is not None and (sent_type or "").strip() != signed.content_type:
                raise Forbidden(
                    f"this URL requires Content-Type: {signed.content_type}",
                    details={"bucket": bucket, "key": key, "content_type": sent_type},
                )
            mark = store._used_mark(bucket, key, signed)
            declared = request.headers.get("content-length", "")
            if signed.max_bytes is not None and declared.isdigit() and int(declared) > signed.max_bytes:
                raise _upload_too_large(bucket, key, signed.max_bytes, int(declared))
            info = await store._put_stream(
                bucket, key, request.stream(), signed.content_type or sent_type,
                max_bytes=signed.max_bytes, used_mark=mark, commit_by=signed.expires + LATE_COMMIT_S,
            )
        except (Forbidden, InvalidInput, NotFound, Conflict, TooLarge) as exc:
            return _error(exc)
        return Response(status_code=200, headers={"ETag": f'"{info.etag}"'})

    @router.get("/v1/objects/{bucket}/{key:path}", summary="Download one object with a presigned URL")
    async def get_object(bucket: str, key: str, request: Request) -> Response:
        try:
            store._verify("GET", bucket, key, dict(request.query_params))
            file, info = await asyncio.to_thread(store._open, bucket, key)
        except (Forbidden, InvalidInput, NotFound) as exc:
            return _error(exc)

        async def body() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(file.read, CHUNK):
                    yield chunk
            finally:
                file.close()

        headers = {"Content-Length": str(info.size)}
        if info.etag:
            headers["ETag"] = f'"{info.etag}"'
        return StreamingResponse(
            body(), media_type=info.content_type or "application/octet-stream", headers=headers
        )

    return router
