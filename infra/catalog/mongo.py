"""The Catalog on MongoDB (motor): one collection per kind, the key as `_id`.

A stored record is `{"_id": key, **doc, "id": key}`; returned records drop `_id`. Records go
through a JSON round trip before they are written, so MongoDB holds exactly what the SQLite
catalog would (plain JSON: no dates, tuples become lists, NaN is refused).

Filters keep MongoDB's own meaning, which the SQLite catalog reproduces. Each equality on a
number or a bool carries a `$type` guard: on a server it changes nothing (BSON never equates
`true` and `1`), and it keeps fakes that compare with Python's `==` (mongomock) honest.
`$ne`/`$nin` are written as `$nor` of the guarded equality.

`upsert_many` is one ordered `bulk_write`, not a transaction: a failure part way leaves the earlier
writes in place (multi-document transactions would need a replica set).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from bson.errors import InvalidDocument
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ReplaceOne, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, ExecutionTimeout, WTimeoutError

from events.errors import AlreadyExists, InvalidInput, TransientError
from events.lifecycle import Health
from infra.catalog.base import FIELD_RE, Catalog, Doc, Where, check_kind, check_where

SERVER_SELECTION_TIMEOUT_MS = 10_000
RESERVED_FIELDS = frozenset({"_id"})
# ConnectionFailure covers AutoReconnect, NetworkTimeout, NotPrimaryError and ServerSelectionTimeoutError.
_TRANSIENT = (ConnectionFailure, ExecutionTimeout, WTimeoutError)


def _motor_client(url: str) -> Any:
    return AsyncIOMotorClient(url, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS)


class MongoCatalog(Catalog):
    adapter_name = "mongodb"

    def __init__(self, url: str, database: str, client_factory: Callable[[str], Any] | None = None) -> None:
        self._url = url
        self._database_name = database
        self._client_factory = client_factory or _motor_client
        self._client: Any = None
        self._db: Any = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._client is not None:  # connected already
            return
        client = self._client_factory(self._url)
        try:
            with _translated("connect"):
                await client.admin.command("ping")
        except BaseException:
            client.close()
            raise
        self._client, self._db = client, client[self._database_name]

    async def _close(self) -> None:
        client, self._client, self._db = self._client, None, None
        client.close()

    async def _health(self) -> Health:
        detail = {"database": self._database_name}
        try:
            with _translated("ping"):
                await self._client.admin.command("ping")
        except Exception as exc:  # noqa: BLE001 - health reports the failure instead of raising it
            return Health(status="down", adapter=self.adapter_name, detail={**detail, "reason": str(exc)})
        return Health(status="ok", adapter=self.adapter_name, detail=detail)

    # -- the port --------------------------------------------------------------------------------

    async def insert(self, kind: str, key: str, doc: Doc) -> Doc:
        self._require_connected()
        check_kind(kind)
        record = _record(key, doc)
        try:
            with _translated("insert"):
                await self._db[kind].insert_one({"_id": key, **record})
        except DuplicateKeyError as exc:
            raise AlreadyExists(f"{kind} {key!r} already exists", details={"kind": kind, "key": key}) from exc
        return record

    async def upsert(self, kind: str, key: str, doc: Doc) -> Doc:
        self._require_connected()
        check_kind(kind)
        record = _record(key, doc)
        with _translated("upsert"):
            await self._db[kind].replace_one({"_id": key}, record, upsert=True)
        return record

    async def upsert_many(self, kind: str, docs: Sequence[tuple[str, Doc]]) -> int:
        self._require_connected()
        check_kind(kind)
        operations = [ReplaceOne({"_id": key}, _record(key, doc), upsert=True) for key, doc in docs]
        if not operations:
            return 0
        with _translated("upsert_many"):
            result = await self._db[kind].bulk_write(operations, ordered=True)
        return result.upserted_count + result.matched_count

    async def get(self, kind: str, key: str) -> Doc | None:
        self._require_connected()
        check_kind(kind)
        with _translated("get"):
            found = await self._db[kind].find_one({"_id": key})
        return _strip(found)

    async def update(self, kind: str, key: str, changes: Doc, *, expect: Where | None = None) -> Doc | None:
        self._require_connected()
        check_kind(kind)
        _check_changes(changes)
        changes = _as_json({**changes, "id": key}) if "id" in changes else _as_json(changes)
        query = _and([{"_id": key}, _query(expect)])
        with _translated("update"):
            if not changes:
                found = await self._db[kind].find_one(query)
            else:
                found = await self._db[kind].find_one_and_update(
                    query, {"$set": changes}, return_document=ReturnDocument.AFTER
                )
        return _strip(found)

    async def delete(self, kind: str, key: str) -> bool:
        self._require_connected()
        check_kind(kind)
        with _translated("delete"):
            result = await self._db[kind].delete_one({"_id": key})
        return result.deleted_count == 1

    async def delete_many(self, kind: str, where: Where) -> int:
        self._require_connected()
        check_kind(kind)
        query = _query(where)
        with _translated("delete_many"):
            result = await self._db[kind].delete_many(query)
        return result.deleted_count

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
        self._require_connected()
        check_kind(kind)
        _check_page(limit, offset)
        query = _query(where)
        direction = -1 if descending else 1
        if order_by is not None and (not isinstance(order_by, str) or not FIELD_RE.match(order_by)):
            raise InvalidInput(f"invalid field path {order_by!r} in order_by", details={"order_by": str(order_by)})
        sort = [(order_by, direction), ("_id", direction)] if order_by else [("_id", direction)]
        if limit == 0:  # MongoDB reads limit(0) as "no limit"
            return []
        with _translated("find"):
            cursor = self._db[kind].find(query).sort(sort).skip(offset)
            if limit is not None:
                cursor = cursor.limit(limit)
            return [_strip(found) async for found in cursor]

    async def count(self, kind: str, where: Where | None = None) -> int:
        self._require_connected()
        check_kind(kind)
        query = _query(where)
        with _translated("count"):
            return await self._db[kind].count_documents(query)


@contextmanager
def _translated(action: str) -> Iterator[None]:
    """Connection trouble and timeouts become TransientError; a document BSON refuses, InvalidInput."""
    try:
        yield
    except _TRANSIENT as exc:
        raise TransientError(f"MongoDB catalog {action} failed: {exc}", details={"action": action}) from exc
    except InvalidDocument as exc:
        raise InvalidInput(f"MongoDB refused the record: {exc}") from exc


# -- records ---------------------------------------------------------------------------------------


def _as_json(doc: Doc) -> Doc:
    try:
        text = json.dumps(doc, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # lone surrogates cannot be stored
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"catalog record is not plain JSON: {exc}") from exc
    return json.loads(text)


def _record(key: str, doc: Doc) -> Doc:
    """The record as stored (less `_id`): `doc` as plain JSON with `id` set to `key`."""
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"a catalog record must be an object, got {type(doc).__name__}", details={"key": key})
    reserved = RESERVED_FIELDS.intersection(doc)
    if reserved:
        raise InvalidInput(f"field {min(reserved)!r} is reserved", details={"key": key, "field": min(reserved)})
    return _as_json({**doc, "id": key})


def _strip(found: Mapping[str, Any] | None) -> Doc | None:
    if found is None:
        return None
    record = {name: value for name, value in found.items() if name != "_id"}
    record["id"] = found["_id"]
    return record


def _check_changes(changes: Doc) -> None:
    """`update` sets top-level fields: names without dots or a leading `$` (`$set` reads those as
    paths and operators)."""
    if not isinstance(changes, Mapping):
        raise InvalidInput(f"changes must be an object, got {type(changes).__name__}")
    for name in changes:
        if not isinstance(name, str) or not name or "." in name or name.startswith("$") or name in RESERVED_FIELDS:
            raise InvalidInput(f"cannot set field {name!r}: use a top-level field name", details={"field": str(name)})


def _check_page(limit: int | None, offset: int) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidInput(f"limit must be a non-negative integer, got {limit!r}", details={"limit": str(limit)})
    if not isinstance(offset, int) or offset < 0:
        raise InvalidInput(f"offset must be a non-negative integer, got {offset!r}", details={"offset": str(offset)})


# -- filters ---------------------------------------------------------------------------------------


def _query(where: Where | None) -> dict[str, Any]:
    """The MongoDB query for a catalog filter (validated: scalar operands only)."""
    check_where(where)
    return _and([_clause(field, condition) for field, condition in (where or {}).items()])


def _and(clauses: list[dict[str, Any]]) -> dict[str, Any]:
    clauses = [clause for clause in clauses if clause]
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _clause(field: str, condition: Any) -> dict[str, Any]:
    op, operand = next(iter(condition.items())) if isinstance(condition, Mapping) else ("$eq", condition)
    if op in ("$eq", "$ne"):
        clause = _equals_any(field, [_scalar(field, op, operand)])
    elif op in ("$in", "$nin"):
        if not isinstance(operand, (list, tuple)):
            raise InvalidInput(f"{op} on {field!r} takes a list", details={"field": field, "operator": op})
        clause = _equals_any(field, [_scalar(field, op, value) for value in operand])
    elif op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidInput(f"$exists on {field!r} takes true or false", details={"field": field, "operator": op})
        return {field: {"$exists": operand}}
    else:
        return {field: {op: _bound(field, op, operand)}}
    return {"$nor": [clause]} if op in ("$ne", "$nin") else clause


def _equals_any(field: str, values: Sequence[Any]) -> dict[str, Any]:
    plain = [v for v in values if v is None or isinstance(v, str)]
    numbers = [v for v in values if _is_number(v)]
    bools = [v for v in values if isinstance(v, bool)]
    groups = [{field: {"$in": plain}}] if plain else []
    for bson_type, group in (("number", numbers), ("bool", bools)):
        if group:
            groups.append({field: {"$in": group, "$type": bson_type}})
    if not groups:
        return {field: {"$in": []}}
    return groups[0] if len(groups) == 1 else {"$or": groups}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _storable(number: int | float) -> bool:
    """Finite, and an integer fits 64 bits (as in BSON and SQLite)."""
    return -(2**63) <= number < 2**63 if isinstance(number, int) else math.isfinite(number)


def _scalar(field: str, op: str, value: Any) -> Any:
    if value is None or isinstance(value, (bool, str)) or (_is_number(value) and _storable(value)):
        return value
    raise InvalidInput(
        f"{op} on {field!r} compares with a JSON scalar (string, number, bool or null), got {type(value).__name__}",
        details={"field": field, "operator": op},
    )


def _bound(field: str, op: str, value: Any) -> int | float | str:
    if isinstance(value, str) or (_is_number(value) and _storable(value)):
        return value
    raise InvalidInput(
        f"{op} on {field!r} takes a number or a string, got {type(value).__name__}", details={"field": field, "operator": op}
    )
