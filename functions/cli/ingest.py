"""`sluice ingest PATH... --bucket B`: upload files into a namespace's bucket through the REST API.

Each PATH is a file (its key is its name) or a folder walked recursively (a file's key is its
path relative to that folder, with `/` separators); `--prefix` is put in front of every key as it
is (end it with `/` to upload under a folder). In a walked folder, hidden files and folders (a
name starting with `.`), symbolic links and special files are skipped; a PATH named on the
command line is always taken, a link included.

Every file goes through the routes of `functions/rest/buckets.py`: request an upload (a presigned
PUT URL, and the headers to send with it), PUT the bytes to the store streamed from disk, then
confirm, which publishes one `ObjectCreated`. Files upload `--concurrency` at a time. Connection
errors, 5xx and 429 are retried with backoff (`functions.cli.client.retrying`); any other error
fails that file only, and the rest go on. The API key never goes to the store: the PUT uses a
client without it.

Exit status: 0 when every file was uploaded, 1 when some failed, 2 for a usage error (no such
path, an invalid bucket or prefix, two files with one key, no namespace).
"""

from __future__ import annotations

import asyncio
import codecs
import mimetypes
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from functions.cli.client import (
    Namespace,
    Target,
    UploadFailed,
    absolute,
    api_client,
    describe,
    put,
    require_namespace,
    retrying,
    store_client,
)
from functions.cli.output import Progress, count, fail, print_json, size

SNIFF_BYTES = 8192  # how much of an unknown file is read to tell text from binary
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 64
# What `mimetypes` reports as an encoding is what the bytes are: a .tar.gz is gzip, not a tar.
ENCODING_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
                  "br": "application/x-brotli", "compress": "application/x-compress"}
HELP = "upload files or folders into a bucket (each becomes an ObjectCreated event)"
DESCRIPTION = ("Upload files into a namespace's bucket through the REST API. A folder is walked recursively; "
               "hidden files and folders (names starting with '.') and symbolic links inside it are skipped.")


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONCURRENCY:
        raise typer.BadParameter(f"must be a whole number from 1 to {MAX_CONCURRENCY}, not {text!r}")
    return value


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
    """The files to upload, in order, with their keys. Stops the command (exit 2) for a path that
    does not exist or is no file or folder, and for two files that would get the same key."""
    listing = Listing()

    def add(path: Path, rel: str, size: int) -> None:
        key = prefix + rel
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:  # a file name in some other encoding (os.fsdecode's escapes)
            problem = "the file name is not valid UTF-8, so it cannot be a key"
            listing.failed.append({"path": str(path), "error": problem})
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
            raise fail(f"{path}: no such file or folder", 2)
        if path.is_dir():
            walk(path, "")
        elif path.is_file():
            add(path, path.name, path.stat().st_size)
        else:
            raise fail(f"{path}: not a regular file or folder" + (" (a broken link?)" if path.is_symlink() else ""), 2)
    seen: dict[str, Path] = {}
    for item in listing.items:
        if item.key in seen:
            raise fail(f"{seen[item.key]} and {item.path} would both be uploaded as {item.key!r}; upload them "
                       "separately with different --prefix values", 2)
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


# --- uploading ----------------------------------------------------------------------------------

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

    async def _post(self, step: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await retrying(step, lambda: self.api.post(path, **kwargs))
        if response.is_error:
            raise UploadFailed(f"{step}: {describe(response, 500)}")
        return response.json()

    async def upload(self, item: Item) -> dict[str, Any]:
        ctype = await asyncio.to_thread(content_type, item.path)
        ticket = await self._post("request upload", self.base, json={"key": item.key, "content_type": ctype})
        url = absolute(ticket["presigned_url"], str(self.api.base_url))
        sent = await put(self.store, url, ticket.get("upload_headers") or {}, item.path, size=item.size,
                         content_type=ctype, progress=self.progress)
        upload_id = ticket["upload_id"]
        confirmed = await self._post("confirm", f"{self.base}/{quote(upload_id, safe='')}/confirm")
        stored = (confirmed.get("object") or {}).get("size")
        if stored is not None and stored != sent:
            raise UploadFailed(f"confirm: the store holds {stored} bytes of the {sent} sent (upload {upload_id})")
        return {"path": str(item.path), "key": item.key, "size": sent, "upload_id": upload_id}


async def ingest(items: list[Item], *, url: str, key: str, namespace: str, bucket: str, concurrency: int,
                 progress: Progress) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Upload every item, `concurrency` at a time; (uploaded, failed), each in the items' order."""
    results: list[dict[str, Any]] = [{} for _ in items]
    async with api_client(url, key, concurrency=concurrency) as api, store_client(concurrency=concurrency) as store:
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
    return [r for r in results if "error" not in r], [r for r in results if "error" in r]


# --- sluice ingest ------------------------------------------------------------------------------

def _check_usage(bucket: str, prefix: str) -> None:
    from infra.objectstore.rules import BUCKET_RE

    if not BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise fail(f"invalid bucket name {bucket!r}: 3-63 lowercase letters, digits, '.' and '-', "
                   "starting and ending with a letter or digit", 2)
    problem = prefix and _key_problem(prefix + "x")
    if problem:
        raise fail(f"invalid --prefix {prefix!r}: keys have {problem}", 2)


def command(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="file or folder to upload")],
    bucket: Annotated[str, typer.Option(
        "--bucket", "-b", help="bucket to upload into (bound to the namespace on first use)")],
    prefix: Annotated[str, typer.Option(
        "--prefix", help="put in front of every key, as is: end it with '/' for a folder")] = "",
    namespace: Namespace = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", "-j", parser=_concurrency, metavar="N", show_default=False,
        help=f"files uploading at once (default {DEFAULT_CONCURRENCY})")] = DEFAULT_CONCURRENCY,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar or progress lines on stderr")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="print {uploaded: [...], failed: [...]} as JSON")] = False,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", hidden=True)] = None,
) -> None:
    namespace = require_namespace(namespace)
    _check_usage(bucket, prefix)
    listing = collect(paths, prefix)
    url, key = Target.of(ctx, data_dir).resolve() if listing.items else ("", "")
    progress = Progress(sum(i.size for i in listing.items), files=len(listing.items), label="ingest",
                        enabled=not no_progress)
    started = time.monotonic()
    try:
        uploaded, failed = asyncio.run(ingest(
            listing.items, url=url, key=key, namespace=namespace, bucket=bucket, concurrency=concurrency,
            progress=progress,
        )) if listing.items else ([], [])
    except KeyboardInterrupt:
        raise fail("interrupted; files not yet confirmed were not ingested", 130) from None
    finally:
        progress.close()
    seconds = time.monotonic() - started
    failed = listing.failed + failed
    if as_json:
        print_json({"uploaded": uploaded, "failed": failed})
    else:
        _print_summary(bucket, namespace, listing, uploaded, failed, seconds)
    raise typer.Exit(1 if failed else 0)


def _print_summary(bucket: str, namespace: str, listing: Listing, uploaded: list[dict[str, Any]],
                   failed: list[dict[str, str]], seconds: float) -> None:
    total = len(uploaded) + len(failed)
    stored = sum(u["size"] for u in uploaded)
    empty = sum(u["size"] == 0 for u in uploaded)
    skipped = [count(n, word, words) for n, word, words in (
        (listing.hidden, "hidden file or folder", "hidden files or folders"),
        (listing.links, "symbolic link", "symbolic links"),
        (listing.special, "special file", "special files"),
    ) if n]
    if not total:
        print("nothing to upload" + (f" (skipped {', '.join(skipped)})" if skipped else ""))
        return
    files = count(len(uploaded), "file") if not failed else f"{len(uploaded)} of {count(total, 'file')}"
    rate = f", {size(stored / seconds)}/s" if seconds > 0 and stored else ""
    print(f"uploaded {files} ({size(stored)}) to bucket {bucket!r} of namespace {namespace!r} in {seconds:.1f} s{rate}")
    if empty:
        print(f"  {count(empty, 'empty file')} (0 bytes), uploaded as empty objects: "
              + ", ".join(u["key"] for u in uploaded if u["size"] == 0)[:500])
    if skipped:
        print(f"  skipped {', '.join(skipped)} inside the folders given")
    if failed:
        print(f"sluice: {count(len(failed), 'file')} failed:", file=sys.stderr)
        for item in failed:
            print(f"  {item['path']}: {item['error']}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add `sluice ingest` to the root command."""
    app.command("ingest", help=DESCRIPTION, short_help=HELP)(command)


__all__ = ["Item", "Listing", "collect", "content_type", "ingest", "register"]
