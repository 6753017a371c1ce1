"""The Catalog port: the source of truth for plugins, versions, models, collections, documents,
tasks, namespaces, API keys and idempotency records.

It is a small document store: records of one *kind* (`plugins`, `tasks`, ...) are JSON objects
addressed by a string key. Typed repositories in `functions/` sit on top, so each adapter stays
small and one contract suite checks them all.

Filters (`where`) map dotted field paths to a value (equality) or to one operator dict:
`{"status": "RUNNING", "source.bucket": "docs", "size": {"$gte": 10}, "state": {"$in": ["A", "B"]}}`.
Operators: `$eq $ne $in $nin $lt $lte $gt $gte $exists`. Values are JSON types only.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping, Sequence
from typing import Any

from events.errors import InvalidInput
from events.lifecycle import Lifecycle

Doc = dict[str, Any]
Where = Mapping[str, Any]

KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin", "$lt", "$lte", "$gt", "$gte", "$exists"})


def check_kind(kind: str) -> None:
    if not KIND_RE.match(kind):
        raise InvalidInput(f"invalid catalog kind {kind!r}: use lowercase letters, digits and _", details={"kind": kind})


def check_where(where: Where | None) -> None:
    for field, condition in (where or {}).items():
        if not FIELD_RE.match(field):
            raise InvalidInput(f"invalid field path {field!r} in filter", details={"field": field})
        if isinstance(condition, Mapping):
            if len(condition) != 1 or next(iter(condition)) not in OPERATORS:
                raise InvalidInput(
                    f"filter on {field!r} must be a value or one of {sorted(OPERATORS)}",
                    details={"field": field, "condition": str(condition)},
                )


class Catalog(Lifecycle, abc.ABC):
    """Each stored record gets the field `id` set to its key. Returned dicts are copies."""

    @abc.abstractmethod
    async def insert(self, kind: str, key: str, doc: Doc) -> Doc:
        """Create a record; raises `AlreadyExists` if the key is taken (atomic: one of two
        concurrent inserts of the same key wins, the other raises)."""

    @abc.abstractmethod
    async def upsert(self, kind: str, key: str, doc: Doc) -> Doc:
        """Create or replace a record whole."""

    @abc.abstractmethod
    async def upsert_many(self, kind: str, docs: Sequence[tuple[str, Doc]]) -> int:
        """Create or replace many records in one transaction; returns how many were written."""

    @abc.abstractmethod
    async def get(self, kind: str, key: str) -> Doc | None:
        """One record, or None."""

    @abc.abstractmethod
    async def update(self, kind: str, key: str, changes: Doc, *, expect: Where | None = None) -> Doc | None:
        """Set top-level fields atomically, only if the record exists and matches `expect`.
        Returns the new record, or None when it is missing or did not match."""

    @abc.abstractmethod
    async def delete(self, kind: str, key: str) -> bool:
        """Remove a record; True when it existed."""

    @abc.abstractmethod
    async def delete_many(self, kind: str, where: Where) -> int:
        """Remove every matching record; returns how many."""

    @abc.abstractmethod
    async def find(
        self,
        kind: str,
        where: Where | None = None,
        *,
        order_by: str | None = None,
        descending: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Doc]:
        """Matching records ordered by `order_by` (then key), or by key when it is None."""

    @abc.abstractmethod
    async def count(self, kind: str, where: Where | None = None) -> int:
        """How many records match."""
