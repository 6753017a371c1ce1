"""The retriever's short-lived record cache: reuse within the TTL, only what `keep` accepts,
changes made in this process seen at once, off at 0."""

from __future__ import annotations

import asyncio

import pytest

from functions.records import cache as record_cache

pytestmark = pytest.mark.unit


class Catalog:
    """Counts reads; each catalog instance has its own cache."""

    def __init__(self) -> None:
        self.reads = 0
        self.value: dict | None = {"status": "DEPLOYED"}

    async def load(self) -> dict | None:
        self.reads += 1
        return None if self.value is None else dict(self.value)


async def test_records_are_reused_within_the_ttl_and_read_again_after_it():
    catalog = Catalog()
    for _ in range(3):
        assert await record_cache.cached(catalog, "kind", "k", 0.2, catalog.load) == {"status": "DEPLOYED"}
    assert catalog.reads == 1
    await asyncio.sleep(0.25)
    await record_cache.cached(catalog, "kind", "k", 0.2, catalog.load)
    assert catalog.reads == 2
    other = Catalog()  # another catalog (another platform in the same process) never sees these entries
    await record_cache.cached(other, "kind", "k", 0.2, other.load)
    assert other.reads == 1


async def test_only_what_keep_accepts_is_kept_and_forget_drops_an_entry():
    catalog = Catalog()
    deployed = lambda r: r is not None and r["status"] == "DEPLOYED"  # noqa: E731
    catalog.value = {"status": "IN_PROGRESS"}
    await record_cache.cached(catalog, "kind", "k", 60, catalog.load, keep=deployed)
    await record_cache.cached(catalog, "kind", "k", 60, catalog.load, keep=deployed)
    assert catalog.reads == 2  # a rollout in flight is read every time
    catalog.value = {"status": "DEPLOYED"}
    await record_cache.cached(catalog, "kind", "k", 60, catalog.load, keep=deployed)
    catalog.value = {"status": "NOT_DEPLOYED"}
    assert (await record_cache.cached(catalog, "kind", "k", 60, catalog.load, keep=deployed))["status"] == "DEPLOYED"
    record_cache.forget(catalog, "kind", "k")  # an undeploy in this process
    assert (await record_cache.cached(catalog, "kind", "k", 60, catalog.load, keep=deployed))["status"] == "NOT_DEPLOYED"
    catalog.value = None
    record_cache.forget(catalog, "kind", "k")
    assert await record_cache.cached(catalog, "kind", "k", 60, catalog.load) is None  # not found is never kept


async def test_a_ttl_of_zero_reads_every_time():
    catalog = Catalog()
    for _ in range(3):
        await record_cache.cached(catalog, "kind", "k", 0, catalog.load)
    assert catalog.reads == 3
