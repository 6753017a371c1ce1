"""The Catalog on MongoDB (motor): one collection per kind, the key as `_id`.

A stored record is `{"_id": key, **doc, "id": key}`; returned records drop `_id`. Records go
through a JSON round trip before they are written, so MongoDB holds exactly what the SQLite
catalog would (plain JSON: no dates, tuples become lists, NaN is refused).

Filters keep MongoDB's own meaning, which the SQLite catalog reproduces. Each equality on a
number or a bool carries a `$type` guard: on a server it changes nothing (BSON never equates
`true` and `1`), and it keeps fakes that compare with Python's `==` (mongomock) honest.
`$ne`/`$nin` are written as `$nor` of the guarded equality.

`upsert_many` is one ordered `bulk_write`, not a transaction: a failure part way leaves the earlier
writes in place. `transact` (the outbox's writes) runs in a multi-document transaction, which
MongoDB offers on a replica set or a sharded cluster (a one-member replica set is enough); on a
standalone server, or a fake without sessions, it checks every write first and then applies them in
order, which is not atomic: `connect` logs a warning saying so.

Declared indexes (`declare_index` of the port) are created with `create_index` (the fields, then
`_id`, so the key tie-break of `find` comes from the index too) when a kind is first touched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, overload

from bson.errors import InvalidDocument
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ReplaceOne, ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, ExecutionTimeout, WTimeoutError

from events.errors import AlreadyExists, InvalidInput, TransientError
from events.lifecycle import Health
from infra.catalog.base import (
    Catalog,
    Delete,
    Doc,
    Insert,
    Update,
    Upsert,
    Where,
    Write,
    check_changes,
    check_kind,
    check_order_by,
    check_page,
    check_writes,
    conflict,
    declared_indexes,
    encode_record,
    is_number,
    parse_where,
    plain_json,
)

log = logging.getLogger("sluice.catalog.mongo")

SERVER_SELECTION_TIMEOUT_MS = 10_000
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
        self._transactions = False
        self._indexes: dict[str, int] = {}  # kind -> how many of its declared indexes exist

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
        self._indexes.clear()
        self._transactions = await _offers_transactions(client)
        if not self._transactions:
            log.warning("MongoDB catalog %s: not a replica set, so multi-record writes (the outbox) are not atomic; "
                        "run a replica set (one member is enough)", self._database_name)

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
        await self._ensure_indexes(kind)
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
        await self._ensure_indexes(kind)
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
        check_changes(changes)
        changes = json.loads(plain_json(key, {**changes, "id": key} if "id" in changes else changes))
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
        await self._ensure_indexes(kind)
        with _translated("delete_many"):
            result = await self._db[kind].delete_many(query)
        return result.deleted_count

    async def find(self, kind: str, where: Where | None = None, *, order_by: str | None = None, descending: bool = False,
                   limit: int | None = None, offset: int = 0) -> list[Doc]:
        self._require_connected()
        check_kind(kind)
        check_page(limit, offset)
        query = _query(where)
        direction = -1 if descending else 1
        check_order_by(order_by)
        sort = [(order_by, direction), ("_id", direction)] if order_by and order_by != "id" else [("_id", direction)]
        if limit == 0:  # MongoDB reads limit(0) as "no limit"
            return []
        await self._ensure_indexes(kind)
        with _translated("find"):
            cursor = self._db[kind].find(query).sort(sort).skip(offset)
            if limit is not None:
                cursor = cursor.limit(limit)
            return [_strip(found) async for found in cursor]

    async def count(self, kind: str, where: Where | None = None) -> int:
        self._require_connected()
        check_kind(kind)
        query = _query(where)
        await self._ensure_indexes(kind)
        with _translated("count"):
            return await self._db[kind].count_documents(query)


    async def _ensure_indexes(self, kind: str) -> None:
        """Create the indexes declared for `kind` that this connection has not made yet."""
        declared = declared_indexes(kind)
        made = self._indexes.get(kind, 0)
        if len(declared) <= made:
            return
        with _translated("create_index"):
            for fields in declared[made:]:
                await self._db[kind].create_index([*((name, 1) for name in fields), ("_id", 1)],
                                                  name="sluice_" + "_".join(name.replace(".", "_") for name in fields))
        self._indexes[kind] = len(declared)

    async def transact(self, writes: Sequence[Write]) -> list[Doc | bool]:
        self._require_connected()
        check_writes(writes)
        with _translated("transact"):
            if not self._transactions:
                await self._precheck(writes)
                return [await self._apply(write, None) for write in writes]
            async with await self._client.start_session() as session:
                async with session.start_transaction():
                    return [await self._apply(write, session) for write in writes]

    async def _precheck(self, writes: Sequence[Write]) -> None:
        """Without transactions: refuse before writing anything what would fail part way."""
        for write in writes:
            if isinstance(write, Insert) and await self._db[write.kind].find_one({"_id": write.key}) is not None:
                raise AlreadyExists(f"{write.kind} {write.key!r} already exists", details={"kind": write.kind, "key": write.key})
            if isinstance(write, Update) and await self._db[write.kind].find_one(_and([{"_id": write.key}, _query(write.expect)])) is None:
                raise conflict(write)

    async def _apply(self, write: Write, session: Any) -> Doc | bool:
        table = self._db[write.kind]
        if isinstance(write, Delete):
            return (await table.delete_one({"_id": write.key}, session=session)).deleted_count == 1
        if isinstance(write, Update):
            changes = json.loads(plain_json(write.key, {**write.changes, "id": write.key}))
            found = await table.find_one_and_update(_and([{"_id": write.key}, _query(write.expect)]), {"$set": changes},
                                                    return_document=ReturnDocument.AFTER, session=session)
            if found is None:
                raise conflict(write)
            return _strip(found)
        record = _record(write.key, write.doc)
        if isinstance(write, Upsert):
            await table.replace_one({"_id": write.key}, record, upsert=True, session=session)
            return record
        try:
            await table.insert_one({"_id": write.key, **record}, session=session)
        except DuplicateKeyError as exc:
            raise AlreadyExists(f"{write.kind} {write.key!r} already exists", details={"kind": write.kind, "key": write.key}) from exc
        return record


async def _offers_transactions(client: Any) -> bool:
    """A replica set member or a mongos: the servers that run multi-document transactions."""
    try:
        hello = await client.admin.command("hello")
    except Exception:  # noqa: BLE001 - a fake without `hello`: no transactions either
        return False
    return bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"


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


def _record(key: str, doc: Doc) -> Doc:
    """The record as stored (less `_id`): `doc` as plain JSON with `id` set to `key`."""
    return json.loads(encode_record(key, doc))


@overload
def _strip(found: Mapping[str, Any]) -> Doc: ...
@overload
def _strip(found: Mapping[str, Any] | None) -> Doc | None: ...
def _strip(found: Mapping[str, Any] | None) -> Doc | None:
    if found is None:
        return None
    record = {name: value for name, value in found.items() if name != "_id"}
    record["id"] = found["_id"]
    return record


# -- filters ---------------------------------------------------------------------------------------


def _query(where: Where | None) -> dict[str, Any]:
    """The MongoDB query for a catalog filter (validated: scalar operands only)."""
    return _and([_clause(field, op, operand) for field, op, operand in parse_where(where)])


def _and(clauses: list[dict[str, Any]]) -> dict[str, Any]:
    clauses = [clause for clause in clauses if clause]
    if not clauses:
        return {}
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _clause(field: str, op: str, operand: Any) -> dict[str, Any]:
    """The query for one condition `parse_where` checked; `id` is the key, `_id`, which is indexed."""
    field = "_id" if field == "id" else field
    if op in ("$eq", "$ne"):
        clause = _equals_any(field, [operand])
    elif op in ("$in", "$nin"):
        clause = _equals_any(field, list(operand))
    elif op == "$exists":
        return {field: {"$exists": operand}}
    else:
        return {field: {op: operand}}
    return {"$nor": [clause]} if op in ("$ne", "$nin") else clause


def _equals_any(field: str, values: Sequence[Any]) -> dict[str, Any]:
    plain = [v for v in values if v is None or isinstance(v, str)]
    numbers = [v for v in values if is_number(v)]
    bools = [v for v in values if isinstance(v, bool)]
    groups: list[dict[str, Any]] = [{field: {"$in": plain}}] if plain else []
    for bson_type, group in (("number", numbers), ("bool", bools)):
        if group:
            groups.append({field: {"$in": group, "$type": bson_type}})
    if not groups:
        return {field: {"$in": []}}
    return groups[0] if len(groups) == 1 else {"$or": groups}
