"""The Catalog port: the source of truth for plugins, versions, models, collections, documents,
tasks, namespaces, API keys and idempotency records.

It is a small document store: records of one *kind* (`plugins`, `tasks`, ...) are JSON objects
addressed by a string key. Typed repositories in `functions/` sit on top, so each adapter stays
small and one contract suite checks them all.

Filters (`where`) map dotted field paths to a value (equality) or to one operator dict:
`{"status": "RUNNING", "source.bucket": "docs", "size": {"$gte": 10}, "state": {"$in": ["A", "B"]}}`.
Operators: `$eq $ne $in $nin $lt $lte $gt $gte $exists`. Values are JSON types only.

Indexes: a module that owns a kind declares the indexes its hot queries need with
`declare_index(kind, *fields)`; adapters create them when they first touch the kind (SQLite: an
expression index over the fields, then the key; MongoDB: a compound index over the fields, then
`_id`; the in-memory fake: nothing). The fields of a declared index must hold strings, numbers or
null (or be missing) in every record of the kind: filters and ordering on them then keep their
meaning and can use the index (SQLite compares them as plain values instead of element by
element). The field `id` (the key) needs no declaration.
"""

from __future__ import annotations

import abc
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from events.errors import Conflict, InvalidInput
from events.lifecycle import Lifecycle

Doc = dict[str, Any]
Where = Mapping[str, Any]

KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin", "$lt", "$lte", "$gt", "$gte", "$exists"})
RESERVED_FIELDS = frozenset({"_id"})  # MongoDB's key field: kept out so every adapter stores the same records


_INDEXES: dict[str, list[tuple[str, ...]]] = {}


def declare_index(kind: str, *fields: str) -> None:
    """Ask every adapter for an index on `fields` (in that order) of `kind`, used by equality
    filters on a prefix of the fields, then a range or an ordering on the next one. The fields
    must hold strings, numbers or null (or be missing) in every record of `kind`. Idempotent."""
    check_kind(kind)
    if not fields:
        raise InvalidInput(f"an index of {kind!r} needs at least one field")
    for name in fields:
        if not FIELD_RE.fullmatch(name) or name == "id":
            raise InvalidInput(f"invalid index field {name!r} of {kind!r}", details={"kind": kind, "field": name})
    declared = _INDEXES.setdefault(kind, [])
    if tuple(fields) not in declared:
        declared.append(tuple(fields))


def declared_indexes(kind: str) -> list[tuple[str, ...]]:
    """The indexes declared for `kind`, in the order they were declared."""
    return list(_INDEXES.get(kind, ()))


def indexed_fields(kind: str) -> frozenset[str]:
    """Every field of an index declared for `kind`: each holds a scalar (see `declare_index`)."""
    return frozenset(name for fields in _INDEXES.get(kind, ()) for name in fields)


class Condition(NamedTuple):
    """One checked filter condition: an equality reads as `$eq`."""

    field: str
    op: str
    operand: Any


def check_kind(kind: str) -> None:
    if not KIND_RE.fullmatch(kind):
        raise InvalidInput(f"invalid catalog kind {kind!r}: use lowercase letters, digits and _", details={"kind": kind})


def check_where(where: Where | None) -> None:
    """Refuse a filter with a bad field path, an unknown operator or an operand of the wrong type."""
    parse_where(where)


def parse_where(where: Where | None) -> list[Condition]:
    """The filter as checked conditions, one per field. Field paths and operators are checked for
    every field before any operand: an equality or `$eq`/`$ne` takes a JSON scalar (string, number,
    bool or null), `$in`/`$nin` a list of them, `$exists` a bool, and a range a number or a string.
    Numbers must be finite, and integers fit 64 bits (as in SQLite and BSON)."""
    conditions: list[Condition] = []
    for field, condition in (where or {}).items():
        if not FIELD_RE.fullmatch(field):
            raise InvalidInput(f"invalid field path {field!r} in filter", details={"field": field})
        if isinstance(condition, Mapping):
            if len(condition) != 1 or next(iter(condition)) not in OPERATORS:
                raise InvalidInput(
                    f"filter on {field!r} must be a value or one of {sorted(OPERATORS)}",
                    details={"field": field, "condition": str(condition)},
                )
            conditions.append(Condition(field, *next(iter(condition.items()))))
        else:
            conditions.append(Condition(field, "$eq", condition))
    for field, op, operand in conditions:
        _check_operand(field, op, operand)
    return [Condition(field, op, _plain(operand)) for field, op, operand in conditions]


def _plain(operand: Any) -> Any:
    """A `str` subclass (a `StrEnum` status) as the plain string every adapter stores."""
    if isinstance(operand, str):
        return str.__str__(operand)
    if isinstance(operand, (list, tuple)):
        return [_plain(value) for value in operand]
    return operand


def _check_operand(field: str, op: str, operand: Any) -> None:
    if op in ("$eq", "$ne"):
        _check_scalar(field, op, operand)
    elif op in ("$in", "$nin"):
        if not isinstance(operand, (list, tuple)):
            raise InvalidInput(f"{op} on {field!r} takes a list", details={"field": field, "operator": op})
        for value in operand:
            _check_scalar(field, op, value)
    elif op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidInput(f"$exists on {field!r} takes true or false", details={"field": field, "operator": op})
    elif not (isinstance(operand, str) or (is_number(operand) and _storable(operand))):
        raise InvalidInput(
            f"{op} on {field!r} takes a number or a string, got {type(operand).__name__}",
            details={"field": field, "operator": op},
        )


def _check_scalar(field: str, op: str, value: Any) -> None:
    if not (value is None or isinstance(value, (bool, str)) or (is_number(value) and _storable(value))):
        raise InvalidInput(
            f"{op} on {field!r} compares with a JSON scalar (string, number, bool or null), got {type(value).__name__}",
            details={"field": field, "operator": op},
        )


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _storable(number: int | float) -> bool:
    """Finite, and an integer fits 64 bits (as in SQLite and BSON)."""
    return -(2**63) <= number < 2**63 if isinstance(number, int) else math.isfinite(number)


def check_order_by(order_by: str | None) -> None:
    if order_by is not None and (not isinstance(order_by, str) or not FIELD_RE.fullmatch(order_by)):
        raise InvalidInput(f"invalid field path {order_by!r} in order_by", details={"order_by": str(order_by)})


def check_page(limit: int | None, offset: int) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidInput(f"limit must be a non-negative integer, got {limit!r}", details={"limit": str(limit)})
    if not isinstance(offset, int) or offset < 0:
        raise InvalidInput(f"offset must be a non-negative integer, got {offset!r}", details={"offset": str(offset)})


def check_changes(changes: Doc) -> None:
    """`update` sets top-level fields: names without dots or a leading `$` (MongoDB's $set reads
    those as paths and operators), and none of the reserved ones."""
    if not isinstance(changes, Mapping):
        raise InvalidInput(f"changes must be an object, got {type(changes).__name__}")
    for name in changes:
        if not isinstance(name, str) or not name or "." in name or name.startswith("$") or name in RESERVED_FIELDS:
            raise InvalidInput(f"cannot set field {name!r}: use a top-level field name", details={"field": str(name)})


def check_record(key: str, doc: Doc) -> None:
    """A record to store is an object without reserved fields."""
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"a catalog record must be an object, got {type(doc).__name__}", details={"key": key})
    reserved = RESERVED_FIELDS.intersection(doc)
    if reserved:
        raise InvalidInput(f"field {min(reserved)!r} is reserved", details={"key": key, "field": min(reserved)})


def encode_record(key: str, doc: Doc) -> str:
    """The record as stored, as JSON text: `doc` (checked by `check_record`) with `id` set to `key`."""
    check_record(key, doc)
    return plain_json(key, {**doc, "id": key})


def plain_json(key: str, value: Doc) -> str:
    """`value`, part of record `key`, as compact JSON text; InvalidInput when it is not plain JSON
    (dates, bytes, NaN, lone surrogates)."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")  # lone surrogates cannot be stored
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"record {key!r} is not plain JSON: {exc}", details={"key": key}) from exc
    return text


@dataclass(frozen=True)
class Insert:
    """Create a record; the transaction fails with `AlreadyExists` when the key is taken."""

    kind: str
    key: str
    doc: Doc


@dataclass(frozen=True)
class Upsert:
    """Create or replace a record whole."""

    kind: str
    key: str
    doc: Doc


@dataclass(frozen=True)
class Update:
    """Set top-level fields of a record that exists and matches `expect`; when it is missing or
    does not match, the whole transaction fails with `WriteConflict`."""

    kind: str
    key: str
    changes: Doc
    expect: Where | None = None


@dataclass(frozen=True)
class Delete:
    """Remove a record if it exists."""

    kind: str
    key: str


Write = Insert | Upsert | Update | Delete


class WriteConflict(Conflict):
    """An `Update` of a transaction found its record missing or not matching `expect`: nothing
    of the transaction was written."""


def check_writes(writes: Sequence[Write]) -> None:
    """Every write well formed before any is applied (kinds, changes, filters, plain JSON)."""
    for write in writes:
        check_kind(write.kind)
        if isinstance(write, (Insert, Upsert)):
            check_record(write.key, write.doc)
            plain_json(write.key, write.doc)
        elif isinstance(write, Update):
            check_changes(write.changes)
            parse_where(write.expect)
            plain_json(write.key, write.changes)
        elif not isinstance(write, Delete):
            raise InvalidInput(f"not a catalog write: {type(write).__name__}")


def conflict(write: Update) -> WriteConflict:
    return WriteConflict(
        f"{write.kind} {write.key!r} is missing or no longer matches {dict(write.expect or {})}: nothing was written",
        details={"kind": write.kind, "key": write.key},
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
    async def find(self, kind: str, where: Where | None = None, *, order_by: str | None = None, descending: bool = False,
                   limit: int | None = None, offset: int = 0) -> list[Doc]:
        """Matching records ordered by `order_by` (then key), or by key when it is None."""

    @abc.abstractmethod
    async def count(self, kind: str, where: Where | None = None) -> int:
        """How many records match."""

    @abc.abstractmethod
    async def transact(self, writes: Sequence[Write]) -> list[Doc | bool]:
        """Apply `writes` in order, all or nothing, across kinds: the result of each (the record
        written, or for a `Delete` whether it existed). An `Insert` of a taken key raises
        `AlreadyExists`, an `Update` that finds no matching record `WriteConflict`; either way
        nothing is written. This is what the outbox stands on: a state change and the events it
        implies are stored together (`functions/runtime/outbox.py`)."""
