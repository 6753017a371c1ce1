"""The transactional outbox: a state change and the events it implies are stored together in the
catalog, and one relay moves the events to the bus.

Why: publishing after a write (or before it) has a window where a crash or a bus error leaves one
without the other: a plugin `CONFIRMED` whose `PluginUploadConfirmed` never went out, an ingest
task finished whose `IngestCompleted` is lost. With the outbox both are one catalog transaction
(`Catalog.transact`): either the record changed and its events are queued, or neither happened.

- `Outbox.commit(writes, events)` stores the writes and one outbox entry per event atomically, then
  wakes the relay of this process. `Outbox.publish(*events)` is `commit` without writes: the durable
  way to publish a root event (REST, services, the scheduler), with the `Publisher` signature.
- `OutboxRelay` publishes entries in the order they were stored (the key is the time in
  nanoseconds, then the event id) and deletes them once the bus acknowledged them. Delivery is at
  least once: a crash between publishing and deleting publishes those entries again, with the same
  event ids, and handlers are replay-safe (deterministic ids, idempotency records).
- One relay at a time across processes: the relay holds a lease (kind `leases`, key
  `outbox-relay`), renewed while it runs. A process that is not the holder polls for the lease
  and takes it over when it expires or its owner's process is gone (same host, pid not running),
  so a restart after `kill -9` relays at once. Each process starts its relay when its `Platform`
  connects (`Platform.connect`), so events are relayed whether REST and functions share a process
  (`sluice up`) or not.
- While the bus is down, entries wait in the catalog and the relay retries with backoff; nothing
  the caller was told succeeded is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any

import structlog

from events import codec
from events.bus import EventBus
from events.envelope import AnyEnvelope
from events.lifecycle import Health
from events.topics import Topics
from infra.catalog.base import Catalog, Delete, Doc, Insert, Update, Write, WriteConflict

log = structlog.get_logger("sluice.outbox")

OUTBOX = "outbox"
LEASES = "leases"
RELAY_LEASE = "outbox-relay"
STALE_S = 60.0
"""An event waiting longer than this makes the outbox's health `degraded`."""


def owner_alive(owner: str) -> bool:
    """False when `owner` (`host:pid:...`) is a process of this host that no longer runs (its
    leases are void at once); True for other hosts, whose leases run out by time."""
    host, _, rest = owner.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def entry_for(event: AnyEnvelope, topics: Topics) -> tuple[str, Doc]:
    """The outbox record of one event: its key sorts in the order events were stored."""
    key = f"{time.time_ns():020d}-{event.event_id}"
    return key, {
        "topic": topics.for_type(event.type), "partition_key": event.namespace or None, "event_id": event.event_id,
        "type": event.type, "value": codec.encode(event).decode(), "stored_at": time.time(),
    }


class Outbox:
    """Where state changes and their events are committed together; see the module docstring."""

    def __init__(self, catalog: Catalog, bus: EventBus, topics: Topics, *, poll_s: float = 0.2, batch: int = 200,
                 lease_s: float = 10.0) -> None:
        self.catalog, self.bus, self.topics = catalog, bus, topics
        self.poll_s, self.batch, self.lease_s = poll_s, batch, lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._relay: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self.relayed = 0
        """Events this process relayed (tests, health)."""

    async def commit(self, writes: Sequence[Write] = (), events: Sequence[AnyEnvelope] = ()) -> list[Doc | bool]:
        """Apply `writes` and queue `events`, all or nothing (`Catalog.transact`: `AlreadyExists` or
        `WriteConflict` when a write cannot apply, and then no event is queued either). Returns the
        results of `writes`."""
        entries = [Insert(OUTBOX, *entry_for(event, self.topics)) for event in events]
        results = await self.catalog.transact([*writes, *entries])
        if entries:
            self._wake.set()
        return results[: len(writes)]

    async def publish(self, *events: AnyEnvelope) -> None:
        """Queue events for the bus durably (the `Publisher` signature)."""
        if events:
            await self.commit((), events)

    __call__ = publish

    async def pending(self) -> int:
        """Events stored and not yet acknowledged by the bus."""
        return await self.catalog.count(OUTBOX)

    async def health(self) -> Health:
        """`degraded` while an event has waited longer than `STALE_S` (the bus is down, or no relay
        runs); the detail says how many wait, for how long, and which process relays."""
        oldest = await self.catalog.find(OUTBOX, limit=1)
        waited = time.time() - oldest[0].get("stored_at", time.time()) if oldest else 0.0
        lease = await self.catalog.get(LEASES, RELAY_LEASE) or {}
        detail = {"pending": await self.catalog.count(OUTBOX), "oldest_s": round(waited, 3),
                  "relay": lease.get("owner") if lease.get("expires_at", 0) > time.time() else None,
                  "relayed_here": self.relayed}
        return Health(status="degraded" if waited > STALE_S else "ok", adapter=self.catalog.adapter_name, detail=detail)

    # --- the relay --------------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's relay (idempotent)."""
        if self._relay is None or self._relay.done():
            self._stop.clear()
            self._relay = asyncio.create_task(self._run(), name="sluice-outbox-relay")

    async def stop(self, *, flush_s: float = 5.0) -> None:
        """Relay what is pending for up to `flush_s`, then stop and give up the lease."""
        if self._relay is None:
            return
        deadline = time.monotonic() + flush_s
        while time.monotonic() < deadline and await self._holding() and await self.catalog.count(OUTBOX):
            self._wake.set()
            await asyncio.sleep(0.02)
        self._stop.set()
        self._wake.set()
        relay, self._relay = self._relay, None
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(relay, timeout=5)
        with contextlib.suppress(Exception):  # the next process need not wait for the lease to run out
            await self.catalog.transact([Update(LEASES, RELAY_LEASE, {"expires_at": 0}, expect={"owner": self.owner})])

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every stored event was relayed (tests, `sluice demo`)."""
        deadline = time.monotonic() + timeout_s
        while await self.catalog.count(OUTBOX):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the outbox did not empty within {timeout_s}s ({await self.catalog.count(OUTBOX)} left)")
            self._wake.set()
            await asyncio.sleep(0.02)

    async def _holding(self) -> bool:
        lease = await self.catalog.get(LEASES, RELAY_LEASE)
        return lease is not None and lease.get("owner") == self.owner

    async def _take_lease(self) -> bool:
        """Hold or renew the relay lease; False while another live process holds it."""
        now = time.time()
        mine = {"owner": self.owner, "expires_at": now + self.lease_s}
        held = await self.catalog.get(LEASES, RELAY_LEASE)
        try:
            if held is None:
                await self.catalog.transact([Insert(LEASES, RELAY_LEASE, mine)])
            elif held.get("owner") == self.owner or held.get("expires_at", 0) < now or not owner_alive(str(held.get("owner"))):
                await self.catalog.transact([Update(LEASES, RELAY_LEASE, mine, expect={"owner": held.get("owner"),
                                                                                        "expires_at": held.get("expires_at")})])
            else:
                return False
        except WriteConflict:  # another process won the race
            return False
        except Exception as exc:  # noqa: BLE001 - the catalog blinked: try later
            log.warning("outbox.lease_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    async def _run(self) -> None:
        failures = 0
        renewed = 0.0
        holding = False
        while not self._stop.is_set():
            try:
                if not holding or time.monotonic() - renewed > self.lease_s / 3:
                    holding = await self._take_lease()
                    renewed = time.monotonic()
                if holding:
                    while await self.relay_once() == self.batch and not self._stop.is_set():
                        pass
                failures = 0
                wait = self.poll_s if holding else min(self.lease_s / 3, 1.0)
            except Exception as exc:  # noqa: BLE001 - the bus or the catalog is down: retry with backoff
                failures += 1
                wait = min(10.0, 0.1 * 2 ** min(failures, 7)) * (0.5 + random.random() / 2)
                log.warning("outbox.relay_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=round(wait, 2))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def relay_once(self) -> int:
        """Publish one batch of stored events in order and delete them; returns how many."""
        entries = await self.catalog.find(OUTBOX, limit=self.batch)
        done: list[Any] = []
        try:
            for entry in entries:
                key = entry.get("partition_key")
                await self.bus.publish(entry["topic"], entry["value"].encode(), key=key.encode() if key else None)
                done.append(Delete(OUTBOX, entry["id"]))
        finally:
            if done:
                await self.catalog.transact(done)
                self.relayed += len(done)
        return len(entries)


__all__ = ["LEASES", "OUTBOX", "Outbox", "entry_for", "owner_alive"]
