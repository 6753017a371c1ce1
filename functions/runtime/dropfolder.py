"""The drop folder of `sluice up`: files put under `DATA_DIR/drop/{namespace}/{bucket}/...` go into
that bucket (key = the rest of the path) and become `ObjectCreated` events.

A file counts once it is complete: its size and modification time stayed the same over one whole
poll interval, and its name is not a temporary one (`*.part`, `*.tmp`, `*.crdownload`, `.~*`,
dot files). After the object is stored and the event published, the file is removed; a crash in
between leaves it in place, so it is stored and announced again on the next poll (the same bytes
give the same etag, and ingest deduplicates by object version). A file that cannot be taken (an
unknown namespace, a bucket of another namespace, a bad name) is moved to `drop/.rejected/` with a
`.reason` file beside it, so it is not retried forever and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from events.bus import EventBus
from events.envelope import make
from events.errors import SluiceError
from events.payloads import ObjectCreated
from events.topics import Topics
from functions.records.collection import ensure_bucket
from functions.records.tenancy import NAMESPACES
from functions.runtime.runner import publish
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.objectstore.tenant import NamespaceStore

log = structlog.get_logger("sluice.drop")

TEMPORARY_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp")
REJECTED = ".rejected"


def _temporary(path: Path) -> bool:
    return any(p.startswith((".", "~")) for p in path.parts) or path.name.endswith(TEMPORARY_SUFFIXES)


@dataclass
class DropFolder:
    root: Path
    store: ObjectStore
    catalog: Catalog
    bus: EventBus
    topics: Topics
    data_bucket: str = "sluice-data"
    """Where tenants' buckets live (`infra/objectstore/tenant.py`)."""
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        self._seen: dict[Path, tuple[int, int]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            try:
                await self.poll()
            except Exception as exc:  # noqa: BLE001 - one bad poll must not stop the watcher
                log.error("drop.poll_failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    async def poll(self) -> int:
        """Take every complete file; returns how many were taken."""
        taken = 0
        current: dict[Path, tuple[int, int]] = {}
        for path in sorted(self.root.rglob("*")):
            rel = path.relative_to(self.root)
            if not path.is_file() or path.is_symlink() or _temporary(rel) or rel.parts[0] == REJECTED:
                continue
            stat = path.stat()
            current[path] = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(path) != current[path]:
                continue  # new or still changing: look again next poll
            if await self._take(path, rel):
                taken += 1
                current.pop(path, None)
        self._seen = current
        return taken

    async def _take(self, path: Path, rel: Path) -> bool:
        if len(rel.parts) < 3:
            self._reject(path, rel, "put files under drop/{namespace}/{bucket}/")
            return False
        namespace, bucket, key = rel.parts[0], rel.parts[1], "/".join(rel.parts[2:])
        if await self.catalog.get(NAMESPACES, namespace) is None:
            self._reject(path, rel, f"namespace {namespace!r} does not exist")
            return False
        try:
            await ensure_bucket(self.catalog, namespace, bucket)
        except SluiceError as exc:
            self._reject(path, rel, exc.message)
            return False
        content_type = mimetypes.guess_type(path.name)[0]
        objects = NamespaceStore(self.store, self.data_bucket, namespace)
        await objects.ensure_bucket(bucket)
        info = await objects.put_file(bucket, key, path, content_type=content_type)
        event = make(ObjectCreated(
            bucket=bucket, key=key, size=info.size, etag=info.etag, version_id=info.version_id,
            content_type=content_type, event_time=info.last_modified, source="drop",
        ), namespace=namespace)
        await publish(self.bus, self.topics, event)
        path.unlink(missing_ok=True)
        log.info("drop.taken", namespace=namespace, bucket=bucket, key=key, size=info.size)
        return True

    def _reject(self, path: Path, rel: Path, reason: str) -> None:
        target = self.root / REJECTED / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        target.with_name(target.name + ".reason").write_text(reason + "\n")
        log.warning("drop.rejected", path=str(rel), reason=reason)
