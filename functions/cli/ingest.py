"""`sluice ingest PATH... --bucket B`: upload files into a namespace's bucket through the REST API.

Each PATH is a file (its key is its name) or a folder walked recursively (a file's key is its
path relative to that folder, with `/` separators); `--prefix` is put in front of every key as it
is (end it with `/` to upload under a folder). In a walked folder, hidden files and folders (a
name starting with `.`), symbolic links and special files are skipped; a PATH named on the
command line is always taken, a link included.

Every file goes through the routes of `functions/rest/buckets.py`: request an upload (a presigned
PUT URL, and the headers to send with it), PUT the bytes to the store streamed from disk, then
confirm, which publishes one `ObjectCreated`. Files upload `--concurrency` at a time. Connection
errors, 5xx and 429 are retried with backoff; any other error fails that file only, and the rest
go on. The API key never goes to the store: the PUT uses a client without it.

Exit status: 0 when every file was uploaded, 1 when some failed, 2 for a usage error (no such
path, an invalid bucket or prefix, two files with one key, no namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import mimetypes
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO
from urllib.parse import quote

import httpx

from functions.plugin_cli import _body, _Exit, _fail, _namespace, _size

CHUNK = 1024 * 1024  # bytes read from disk and sent per step of a PUT
SNIFF_BYTES = 8192  # how much of an unknown file is read to tell text from binary
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64
ATTEMPTS = 4  # tries per request when the failure is transient
BACKOFF_S = 0.5  # wait before the first retry; doubles each time
MAX_BACKOFF_S = 10.0
# What `mimetypes` reports as an encoding is what the bytes are: a .tar.gz is gzip, not a tar.
ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
                  "br": "application/x-brotli", "compress": "application/x-compress"}
# Request headers a presigned PUT must never carry (the API key above all).
NOT_FORWARDED = frozenset({"authorization", "content-length", "host", "transfer-encoding"})


# --- parser -------------------------------------------------------------------------------------

def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_CONCURRENCY}, not {text!r}")
    return value


def add_ingest_command(subparsers: Any) -> None:
    """Register `sluice ingest` on the top-level subparsers of functions/cli.py."""
    p = subparsers.add_parser(
        "ingest", help="upload files or folders into a bucket (each becomes an ObjectCreated event)",
        description="Upload files into a namespace's bucket through the REST API. A folder is walked recursively; "
                    "hidden files and folders (names starting with '.') and symbolic links inside it are skipped.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="file or folder to upload")
    p.add_argument("--bucket", "-b", required=True, help="bucket to upload into (bound to the namespace on first use)")
    p.add_argument("--prefix", default="", help="put in front of every key, as is: end it with '/' for a folder")
    p.add_argument("-n", "--namespace", default=None, help="namespace (default $SLUICE_NAMESPACE)")
    p.add_argument("--concurrency", "-j", type=_concurrency, default=DEFAULT_CONCURRENCY,
                   help=f"files uploading at once (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print {uploaded: [...], failed: [...]} as JSON")
    p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


# --- what to upload ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    path: Path
    key: str
    size: int


@dataclass
class Listing:
    items: list[Item] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)  # unreadable folders, names that are no key
    hidden: int = 0
    links: int = 0
    special: int = 0


def _key_problem(key: str) -> str | None:
    """The REST API's rule for keys (`functions.rest.buckets._check_key`), to refuse a bad
    --prefix before anything is uploaded."""
    if key.startswith("/") or "\x00" in key or any(part in ("", ".", "..") for part in key.split("/")):
        return "no leading '/', NUL, or empty, '.' or '..' parts"
    return None


def collect(paths: Iterable[Path], prefix: str = "") -> Listing:
    """The files to upload, in order, with their keys. Raises `_Exit(2)` for a path that does not
    exist or is no file or folder, and for two files that would get the same key."""
    listing = Listing()

    def add(path: Path, rel: str, size: int) -> None:
        key = prefix + rel
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:  # a file name in some other encoding (os.fsdecode's escapes)
            listing.failed.append({"path": str(path), "error": "the file name is not valid UTF-8, so it cannot be a key"})
            return
        listing.items.append(Item(path, key, size))

    def walk(folder: Path, rel: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            listing.failed.append({"path": str(folder), "error": f"cannot read the folder: {exc.strerror or exc}"})
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.name.startswith("."):
                    listing.hidden += 1
                elif entry.is_symlink():
                    listing.links += 1
                elif entry.is_dir(follow_symlinks=False):
                    walk(path, f"{rel}{entry.name}/")
                elif entry.is_file(follow_symlinks=False):
                    add(path, rel + entry.name, entry.stat(follow_symlinks=False).st_size)
                else:
                    listing.special += 1
            except OSError as exc:
                listing.failed.append({"path": str(path), "error": f"cannot read it: {exc.strerror or exc}"})

    for path in paths:
        if not os.path.lexists(path):
            raise _fail(f"{path}: no such file or folder", 2)
        if path.is_dir():
            walk(path, "")
        elif path.is_file():
            add(path, path.name, path.stat().st_size)
        else:
            raise _fail(f"{path}: not a regular file or folder" + (" (a broken link?)" if path.is_symlink() else ""), 2)
    seen: dict[str, Path] = {}
    for item in listing.items:
        if item.key in seen:
            raise _fail(f"{seen[item.key]} and {item.path} would both be uploaded as {item.key!r}; upload them separately "
                        "with different --prefix values", 2)
        seen[item.key] = item.path
    return listing


def content_type(path: Path) -> str:
    """From the name (`mimetypes`); otherwise `text/plain` when the first 8 KiB are UTF-8 without
    NUL bytes, else `application/octet-stream`."""
    guessed, encoding = mimetypes.guess_type(path.name, strict=False)
    if encoding:
        return ENCODING_TYPES.get(encoding, "application/octet-stream")
    if guessed:
        return guessed
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES + 1)
    except OSError:
        return "application/octet-stream"  # the upload itself will say why it cannot read it
    whole = len(head) <= SNIFF_BYTES
    head = head[:SNIFF_BYTES]
    if b"\x00" in head:
        return "application/octet-stream"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)  # a character cut at 8 KiB is fine
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


# --- progress -----------------------------------------------------------------------------------

class Progress:
    """Files done of total, bytes sent, rate. On a terminal: one bar redrawn in place. Otherwise:
    one line each time another tenth of the bytes (of the files, when they are all empty) is done.
    Disabled: nothing."""

    def __init__(self, files: int, total_bytes: int, stream: TextIO, *, enabled: bool = True, width: int = 24) -> None:
        self.files, self.total, self.stream, self.width = files, total_bytes, stream, width
        self.done = self.failed = self.sent = 0
        self.started = time.monotonic()
        isatty = getattr(stream, "isatty", None)
        self.tty = enabled and bool(isatty and isatty())
        self.lines = enabled and not self.tty
        self._drawn_at = 0.0
        self._drawn_len = 0
        self._tenth = 0

    def add_bytes(self, n: int) -> None:
        """`n` more bytes sent (negative: a failed attempt's bytes, sent again)."""
        self.sent += n
        self._update()

    def resize(self, delta: int) -> None:
        """A file's size changed between listing and upload."""
        self.total += delta

    def file_done(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        self._update(force=self.done == self.files)

    def fraction(self) -> float:
        if self.total > 0:
            return min(self.sent / self.total, 1.0)
        return self.done / self.files if self.files else 1.0

    def rate(self) -> float:
        return self.sent / max(time.monotonic() - self.started, 1e-6)

    def line(self) -> str:
        fraction = self.fraction()
        filled = int(self.width * fraction)
        failed = f"  {self.failed} failed" if self.failed else ""
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.files} files  "
                f"{_size(self.sent)} / {_size(self.total)}  {_size(self.rate())}/s{failed}")

    def _update(self, force: bool = False) -> None:
        if self.tty:
            now = time.monotonic()
            if force or now - self._drawn_at >= 0.1:
                self._drawn_at = now
                self._draw()
        elif self.lines:
            # 100% only once every file is through (bytes can all be sent while confirms are pending)
            tenth = 10 if self.done == self.files else min(int(self.fraction() * 10), 9)
            if tenth > self._tenth:
                self._tenth = tenth
                failed = f", {self.failed} failed" if self.failed else ""
                self.stream.write(f"ingest: {tenth * 10}% ({self.done}/{self.files} files, {_size(self.sent)} of "
                                  f"{_size(self.total)}, {_size(self.rate())}/s{failed})\n")
                self.stream.flush()

    def _draw(self) -> None:
        text = self.line()
        self.stream.write("\r" + text + " " * max(0, self._drawn_len - len(text)))
        self.stream.flush()
        self._drawn_len = len(text)

    def close(self) -> None:
        if self.tty and self._drawn_len:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


# --- uploading ----------------------------------------------------------------------------------

class UploadFailed(Exception):
    """One file could not be uploaded; the message says at which step and why."""


def _describe(response: httpx.Response) -> str:
    body = _body(response)
    err = body.get("error", {}) if isinstance(body, dict) else {}
    message = err.get("message", body) if err else body
    text = f"{response.status_code} {err.get('type', '')}".rstrip() + f": {message}"
    return text if len(text) <= 500 else text[:497] + "..."


def _transient(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


async def _retrying(step: str, send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """`send()` until it answers something other than 429 or 5xx, at most ATTEMPTS times, with
    backoff. Returns that response (a 4xx included: the caller decides); raises UploadFailed when
    every attempt failed."""
    delay = BACKOFF_S
    for attempt in range(1, ATTEMPTS + 1):
        wait = None
        try:
            response = await send()
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if not _transient(response):
                return response
            error, wait = _describe(response), _retry_after(response)
        if attempt == ATTEMPTS:
            raise UploadFailed(f"{step}: {error} (gave up after {ATTEMPTS} attempts)")
        await asyncio.sleep(min(MAX_BACKOFF_S, wait if wait is not None else delay * random.uniform(1.0, 1.25)))
        delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


async def _file_chunks(file: IO[bytes], size: int, progress: Progress, sent: list[int]) -> AsyncIterator[bytes]:
    """Exactly `size` bytes of `file`, read a chunk at a time off the event loop."""
    left = size
    while left > 0:
        chunk = await asyncio.to_thread(file.read, min(CHUNK, left))
        if not chunk:
            raise UploadFailed(f"PUT: the file shrank while it was being uploaded ({size - left} of {size} bytes read)")
        left -= len(chunk)
        sent[0] += len(chunk)
        progress.add_bytes(len(chunk))
        yield chunk


@dataclass
class Uploader:
    api: httpx.AsyncClient  # the REST API, with the key
    store: httpx.AsyncClient  # presigned URLs, without it
    namespace: str
    bucket: str
    progress: Progress

    @property
    def base(self) -> str:
        return f"/v1/namespaces/{quote(self.namespace, safe='')}/buckets/{quote(self.bucket, safe='')}/uploads"

    async def upload(self, item: Item) -> dict[str, Any]:
        ctype = await asyncio.to_thread(content_type, item.path)
        response = await _retrying("request upload", lambda: self.api.post(self.base, json={"key": item.key, "content_type": ctype}))
        if response.is_error:
            raise UploadFailed(f"request upload: {_describe(response)}")
        ticket = response.json()
        url = ticket["presigned_url"]
        if url.startswith("/"):
            url = str(self.api.base_url).rstrip("/") + url
        headers = {k: v for k, v in (ticket.get("upload_headers") or {}).items() if k.lower() not in NOT_FORWARDED}
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = ctype
        size = await self._put(item, url, headers)
        upload_id = ticket["upload_id"]
        response = await _retrying("confirm", lambda: self.api.post(f"{self.base}/{quote(upload_id, safe='')}/confirm"))
        if response.is_error:
            raise UploadFailed(f"confirm: {_describe(response)}")
        stored = (response.json().get("object") or {}).get("size")
        if stored is not None and stored != size:
            raise UploadFailed(f"confirm: the store holds {stored} bytes of the {size} sent (upload {upload_id})")
        return {"path": str(item.path), "key": item.key, "size": size, "upload_id": upload_id}

    async def _put(self, item: Item, url: str, headers: dict[str, str]) -> int:
        """PUT the file's bytes; returns how many (its size now, which may differ from the listing's)."""
        sizes = [item.size]  # the size the last attempt sent

        async def attempt() -> httpx.Response:
            sent = [0]
            try:
                file = await asyncio.to_thread(open, item.path, "rb")
            except OSError as exc:
                raise UploadFailed(f"cannot read the file: {exc.strerror or exc}") from exc
            try:
                size = os.fstat(file.fileno()).st_size
                self.progress.resize(size - sizes[0])
                sizes[0] = size
                body: Any = _file_chunks(file, size, self.progress, sent) if size else b""
                # S3 refuses chunked bodies on presigned PUTs: always say how long it is
                return await self.store.put(url, content=body, headers={**headers, "Content-Length": str(size)})
            finally:
                if sent[0]:
                    self.progress.add_bytes(-sent[0])  # counted again below, or sent again
                await asyncio.to_thread(file.close)

        response = await _retrying("PUT", attempt)
        if response.is_error:
            raise UploadFailed(f"PUT to the object store: {_describe(response)}")
        self.progress.add_bytes(sizes[0])
        return sizes[0]


async def ingest(items: list[Item], *, url: str, headers: dict[str, str], namespace: str, bucket: str,
                 concurrency: int, progress: Progress) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Upload every item, `concurrency` at a time; (uploaded, failed), each in the items' order."""
    results: list[dict[str, Any] | None] = [None] * len(items)
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with (
        httpx.AsyncClient(base_url=url, headers=headers, timeout=httpx.Timeout(60.0), limits=limits) as api,
        httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as store,
    ):
        uploader = Uploader(api, store, namespace, bucket, progress)
        queue = iter(enumerate(items))

        async def worker() -> None:
            for index, item in queue:  # one shared iterator: each item is taken by one worker
                try:
                    results[index] = await uploader.upload(item)
                except UploadFailed as exc:
                    results[index] = {"path": str(item.path), "error": str(exc)}
                except Exception as exc:  # noqa: BLE001 - one file's surprise must not stop the others
                    results[index] = {"path": str(item.path), "error": f"{type(exc).__name__}: {exc}"}
                progress.file_done("error" not in results[index])

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(items)))))
    uploaded = [r for r in results if r is not None and "error" not in r]
    failed = [r for r in results if r is not None and "error" in r]
    return uploaded, failed


# --- sluice ingest ------------------------------------------------------------------------------

def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _connection(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The server URL and the Authorization header, found as every other command finds them."""
    from functions.cli import _client

    with _client(args) as client:
        return str(client.base_url).rstrip("/"), {"Authorization": client.headers["Authorization"]}


def _check_usage(args: argparse.Namespace) -> None:
    from functions.collections import BUCKET_RE

    if not BUCKET_RE.match(args.bucket) or ".." in args.bucket:
        raise _fail(f"invalid bucket name {args.bucket!r}: 3-63 lowercase letters, digits, '.' and '-', "
                    "starting and ending with a letter or digit", 2)
    problem = args.prefix and _key_problem(args.prefix + "x")
    if problem:
        raise _fail(f"invalid --prefix {args.prefix!r}: keys have {problem}", 2)


def run_ingest_command(args: argparse.Namespace) -> int:
    try:
        namespace = _namespace(args)
        _check_usage(args)
        listing = collect(args.paths, args.prefix)
        url, headers = _connection(args) if listing.items else ("", {})
        progress = Progress(len(listing.items), sum(i.size for i in listing.items), sys.stderr,
                            enabled=not args.no_progress)
        started = time.monotonic()
        try:
            uploaded, failed = asyncio.run(ingest(
                listing.items, url=url, headers=headers, namespace=namespace, bucket=args.bucket,
                concurrency=args.concurrency, progress=progress,
            )) if listing.items else ([], [])
        finally:
            progress.close()
        seconds = time.monotonic() - started
    except _Exit as stop:
        return stop.code
    except KeyboardInterrupt:
        print("sluice: interrupted; files not yet confirmed were not ingested", file=sys.stderr)
        return 130
    failed = listing.failed + failed
    if args.json:
        print(json.dumps({"uploaded": uploaded, "failed": failed}, indent=2, ensure_ascii=False))
    else:
        _print_summary(args, namespace, listing, uploaded, failed, seconds)
    return 1 if failed else 0


def _print_summary(args: argparse.Namespace, namespace: str, listing: Listing, uploaded: list[dict[str, Any]],
                   failed: list[dict[str, str]], seconds: float) -> None:
    total = len(uploaded) + len(failed)
    size = sum(u["size"] for u in uploaded)
    empty = sum(u["size"] == 0 for u in uploaded)
    skipped = [f"{n} {word if n == 1 else words}" for n, word, words in (
        (listing.hidden, "hidden file or folder", "hidden files or folders"),
        (listing.links, "symbolic link", "symbolic links"),
        (listing.special, "special file", "special files"),
    ) if n]
    if not total:
        print("nothing to upload" + (f" (skipped {', '.join(skipped)})" if skipped else ""))
        return
    count = _count(len(uploaded), "file") if not failed else f"{len(uploaded)} of {_count(total, 'file')}"
    rate = f", {_size(size / seconds)}/s" if seconds > 0 and size else ""
    print(f"uploaded {count} ({_size(size)}) to bucket {args.bucket!r} of namespace {namespace!r} in {seconds:.1f} s{rate}")
    if empty:
        print(f"  {_count(empty, 'empty file')} (0 bytes), uploaded as empty objects: "
              + ", ".join(u["key"] for u in uploaded if u["size"] == 0)[:500])
    if skipped:
        print(f"  skipped {', '.join(skipped)} inside the folders given")
    if failed:
        print(f"sluice: {_count(len(failed), 'file')} failed:", file=sys.stderr)
        for item in failed:
            print(f"  {item['path']}: {item['error']}", file=sys.stderr)


__all__ = ["Item", "Listing", "Progress", "add_ingest_command", "collect", "content_type", "ingest", "run_ingest_command"]
