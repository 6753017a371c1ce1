"""Idempotency records in the catalog: do a handler's work once per event, even across crashes.

Four operations, after Powertools' persistence layer: `begin` claims the key (or returns the
stored outcome of an earlier run), `complete` stores the outcome, `release` gives the claim up
after a failure so a retry can run, and records expire after `ttl_s`.

The guarantee: once `complete` has returned, a redelivered event never runs the handler again;
its stored result events are published instead (with the same event ids). A crash between the
handler's side effects and `complete` re-runs the handler after the lease expires, so handlers
whose effects are not idempotent keep those effects and the `complete` close together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from events.errors import AlreadyExists, TransientError
from infra.catalog.base import Catalog

KIND = "idempotency"


@dataclass(frozen=True)
class Outcome:
    """A completed run: the encoded events the handler returned."""

    results: list[str]


class IdempotencyStore:
    def __init__(self, catalog: Catalog, *, lease_s: float = 300.0, ttl_s: float = 7 * 24 * 3600.0) -> None:
        self._catalog = catalog
        self._lease_s = lease_s
        self._ttl_s = ttl_s

    async def begin(self, key: str, *, owner: str) -> Outcome | None:
        """Claim `key`. Returns None when the caller should run the work, the stored outcome when
        it already ran; raises `TransientError` while another live owner holds the claim."""
        now = time.time()
        record = {"status": "IN_PROGRESS", "owner": owner, "lease_until": now + self._lease_s, "expires_at": now + self._ttl_s}
        try:
            await self._catalog.insert(KIND, key, record)
            return None
        except AlreadyExists:
            pass
        current = await self._catalog.get(KIND, key)
        if current is None:  # released between our insert and get: try once more
            return await self.begin(key, owner=owner)
        if current["status"] == "COMPLETED" and current.get("expires_at", now + 1) > now:
            return Outcome(results=list(current.get("results", [])))
        if current["status"] == "IN_PROGRESS" and current.get("lease_until", 0) > now and current.get("owner") != owner:
            raise TransientError(f"idempotency key {key!r} is being processed by {current.get('owner')}")
        # Expired lease, expired record, or our own earlier claim: take it over atomically.
        taken = await self._catalog.update(
            KIND, key, record, expect={"status": current["status"], "lease_until": current.get("lease_until")}
        )
        if taken is None:
            raise TransientError(f"idempotency key {key!r} changed hands; retrying")
        return None

    async def complete(self, key: str, results: list[str]) -> None:
        await self._catalog.update(KIND, key, {"status": "COMPLETED", "results": results, "lease_until": None})

    async def release(self, key: str) -> None:
        await self._catalog.delete(KIND, key)

    async def purge_expired(self) -> int:
        return await self._catalog.delete_many(KIND, {"expires_at": {"$lt": time.time()}})
