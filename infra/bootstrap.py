"""The one composition root: settings in, connected adapters out.

`bootstrap(settings)` is the only place that names concrete adapters. Tests pass fakes through
`overrides` (`bootstrap(settings, bus=InMemoryBus())`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from events.bus import EventBus
from events.lifecycle import Health, Lifecycle
from events.publisher import Publisher
from events.topics import Topics
from infra.catalog.base import Catalog
from infra.compute import ComputeAdapter
from infra.objectstore.base import ObjectStore
from infra.objectstore.tenant import NamespaceStore
from infra.outbox import Outbox
from infra.serving.base import ServeControl
from infra.settings import Settings
from infra.vectors.base import VectorIndex

log = structlog.get_logger("sluice.bootstrap")


def read_or_create_secret(path: Path, *, prefix: str = "", nbytes: int = 32) -> str:
    """A secret kept in a 0600 file; created on first use, atomically: written and fsynced under a
    temporary name, then linked into place (a crash leaves the old state or the whole file, never an
    empty one; of two processes creating it at once, both end with the one that was linked first)."""
    if path.exists():
        return _read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = prefix + secrets.token_urlsafe(nbytes)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read_secret(path)  # another process created it first: use theirs
    finally:
        os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return value


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise RuntimeError(f"the key file {path} is empty (cut short by a crash of an older Sluice): restore it from a backup; "
                           "deleting it makes a new key, and whatever the old one protected is lost")
    return value


def admin_key(settings: Settings) -> str:
    if settings.admin_key is not None:
        return settings.admin_key.get_secret_value()
    return read_or_create_secret(settings.admin_key_file, prefix="sk_admin_")


@dataclass
class Platform:
    """Every port, connected together and closed together."""

    settings: Settings
    topics: Topics
    bus: EventBus
    store: ObjectStore
    catalog: Catalog
    vectors: VectorIndex
    compute: ComputeAdapter
    admin_key: str
    serve: ServeControl
    _connected: list[Lifecycle] = field(default_factory=list)
    outbox: Outbox = field(init=False)
    """State changes and their events, stored together and relayed to the bus (`infra/outbox.py`)."""

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.catalog, self.bus, self.topics, poll_s=self.settings.outbox_poll_s)

    def ports(self) -> dict[str, Lifecycle]:
        return {"catalog": self.catalog, "object_store": self.store, "vectors": self.vectors, "bus": self.bus, "compute": self.compute}

    def deps(self) -> dict[str, Any]:
        """What handlers may ask for by keyword."""
        return {
            "bus": self.bus, "store": self.store, "catalog": self.catalog, "vectors": self.vectors,
            "compute": self.compute, "topics": self.topics, "settings": self.settings, "serve": self.serve,
            "publish": self.publish,
        }

    def objects(self, namespace: str) -> NamespaceStore:
        """One namespace's buckets: folders of the data bucket (`infra/objectstore/tenant.py`)."""
        return NamespaceStore(self.store, self.settings.data_bucket, namespace)

    @property
    def publish(self) -> Outbox:
        """Publish events durably: stored in the outbox, then relayed to their topics (REST routes,
        services, handlers' progress). `platform.outbox.commit(writes, events)` when a state change
        goes with them."""
        return self.outbox

    @property
    def publish_now(self) -> Publisher:
        """Publish straight to the bus, for what needs no durability (progress while a job runs)."""
        return Publisher(self.bus, self.topics)

    async def connect(self) -> None:
        for name, port in self.ports().items():
            try:
                await port.connect()
            except BaseException:
                log.error("platform.connect_failed", port=name, adapter=port.adapter_name)
                await self.close()
                raise
            self._connected.append(port)
        self.outbox.start()

    async def close(self) -> None:
        if self._connected:
            try:
                await self.outbox.stop()
            except Exception as exc:  # noqa: BLE001 - what is left is relayed by the next process
                log.warning("platform.outbox_stop_failed", error=str(exc))
        while self._connected:
            port = self._connected.pop()
            try:
                await port.close()
            except Exception as exc:  # noqa: BLE001 - closing must go on for the others
                log.warning("platform.close_failed", adapter=port.adapter_name, error=str(exc))

    async def health(self, timeout_s: float = 5.0) -> dict[str, Health]:
        async def one(port: Lifecycle) -> Health:
            try:
                return await asyncio.wait_for(port.health(), timeout_s)
            except Exception as exc:  # noqa: BLE001 - health reports, it does not raise
                return Health(status="down", adapter=port.adapter_name, detail={"error": f"{type(exc).__name__}: {exc}"})

        names = list(self.ports())
        results = await asyncio.gather(*(one(p) for p in self.ports().values()))
        report = dict(zip(names, results, strict=True))
        try:
            report["outbox"] = await asyncio.wait_for(self.outbox.health(), timeout_s)
        except Exception as exc:  # noqa: BLE001 - health reports, it does not raise
            report["outbox"] = Health(status="down", adapter=self.catalog.adapter_name, detail={"error": f"{type(exc).__name__}: {exc}"})
        return report

    async def __aenter__(self) -> Platform:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def build_bus(settings: Settings) -> EventBus:
    """The bus alone, for clients that need no other port (`sluice events tail`)."""
    match settings.effective_bus:
        case "kafka":
            from infra.bus.kafka import KafkaBus

            if not settings.kafka_bootstrap:
                raise ValueError("SLUICE_BUS=kafka needs SLUICE_KAFKA_BOOTSTRAP")
            return KafkaBus(
                settings.kafka_bootstrap, client_id=f"sluice-{settings.topic_prefix}",
                session_timeout_ms=settings.kafka_session_timeout_ms,
            )
        case "memory":
            from infra.bus.memory import InMemoryBus

            return InMemoryBus()
        case _:
            from infra.bus.sqlite import SqliteLogBus

            return SqliteLogBus(settings.data_dir / "bus.sqlite3")


def _store(settings: Settings) -> ObjectStore:
    if settings.effective_object_store == "s3":
        from infra.objectstore.s3 import S3ObjectStore

        return S3ObjectStore(
            settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None,
        )
    from infra.objectstore.local import LocalObjectStore

    signing_key = read_or_create_secret(settings.data_dir / "signing.key").encode()
    return LocalObjectStore(settings.data_dir / "objects", settings.effective_public_url, signing_key)


def _catalog(settings: Settings) -> Catalog:
    if settings.mongo_url:
        from infra.catalog.mongo import MongoCatalog

        return MongoCatalog(settings.mongo_url, settings.mongo_database)
    from infra.catalog.sqlite import SqliteCatalog

    return SqliteCatalog(settings.data_dir / "catalog.sqlite3")


def _vectors(settings: Settings) -> VectorIndex:
    if settings.qdrant_url:
        from infra.vectors.qdrant import QdrantVectorIndex

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantVectorIndex(url=settings.qdrant_url, api_key=key)
    from infra.vectors.edge import EdgeVectorIndex

    return EdgeVectorIndex(settings.data_dir / "vectors")


def _compute(settings: Settings) -> ComputeAdapter:
    from infra.compute import NoCompute, RayCompute

    if settings.compute == "none":
        return NoCompute()
    return RayCompute(settings.ray_address, num_cpus=settings.ray_num_cpus)


def _serve(settings: Settings) -> ServeControl:
    from infra.serving.ray import RayServeControl

    return RayServeControl()


def bootstrap(settings: Settings | None = None, **overrides: Any) -> Platform:
    """Build (not connect) the platform. `overrides` replace adapters by port name:
    bus, store, catalog, vectors, compute, admin_key, serve."""
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    builders = {"bus": build_bus, "store": _store, "catalog": _catalog, "vectors": _vectors, "compute": _compute, "admin_key": admin_key,
                "serve": _serve}
    unknown = set(overrides) - set(builders)
    if unknown:
        raise TypeError(f"unknown overrides {sorted(unknown)}; expected some of {sorted(builders)}")
    # one adapter per port, each of its own type (an override is whatever the caller passed)
    parts: dict[str, Any] = {name: overrides[name] if name in overrides else build(settings) for name, build in builders.items()}
    return Platform(settings=settings, topics=Topics(settings.topic_prefix), **parts)
