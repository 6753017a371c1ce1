"""A short-lived cache of the catalog records every query reads (its collection, its plugin
version's deployment), so a search does not pay a catalog round trip for each of them.

Entries live `ttl_s` seconds (`SLUICE_RETRIEVER_CACHE_S`, 0 turns the cache off). Writes made in
this process drop the entry at once (`forget`: deployment status changes, collection deletes);
writes made by another process are seen after at most `ttl_s`. A stale DEPLOYED record costs
nothing worse than the handle call failing as NotReady, which forgets it too.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

MAX_ENTRIES = 4096

_caches: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], tuple[float, Any]]] = weakref.WeakKeyDictionary()


def _entries(catalog: Any) -> dict[tuple[str, str], tuple[float, Any]]:
    entries = _caches.get(catalog)
    if entries is None:
        entries = _caches[catalog] = {}
    return entries


async def cached(catalog: Any, kind: str, key: str, ttl_s: float, load: Callable[[], Awaitable[Any]],
                 *, keep: Callable[[Any], bool] = lambda value: value is not None) -> Any:
    """`load()`'s answer, reused for `ttl_s` seconds when `keep(answer)` (by default: found)."""
    if ttl_s <= 0:
        return await load()
    entries = _entries(catalog)
    now = time.monotonic()
    hit = entries.get((kind, key))
    if hit is not None and hit[0] > now:
        return hit[1]
    value = await load()
    if keep(value):
        if len(entries) >= MAX_ENTRIES:
            for stale in [k for k, (expires, _) in entries.items() if expires <= now] or list(entries)[: MAX_ENTRIES // 4]:
                entries.pop(stale, None)
        entries[(kind, key)] = (now + ttl_s, value)
    else:
        entries.pop((kind, key), None)
    return value


def forget(catalog: Any, kind: str, key: str) -> None:
    """Drop one entry: the record changed in this process."""
    entries = _caches.get(catalog)
    if entries is not None:
        entries.pop((kind, key), None)


__all__ = ["cached", "forget"]
