"""The Catalog on an embedded SQLite file: the default when no MongoDB is configured.

Layout: one table per kind, `kind_<kind> (key TEXT PRIMARY KEY, doc TEXT NOT NULL)`, created on
first use; `doc` is the record as JSON, `id` included. The `kind_` prefix keeps a kind such as
`sqlite_stat1` clear of the names SQLite reserves.

Concurrency: one file is shared by the server's event loop and by other processes (Ray workers
write documents while the server writes tasks). Each catalog owns one connection on one worker
thread, so SQLite never runs on the event loop and a connection never crosses threads. The file
is in WAL mode (readers never wait for the writer), `synchronous=FULL` (a commit survives power
loss), and every write is a `BEGIN IMMEDIATE` transaction: it takes the write lock up front,
waiting up to `busy_timeout` for another writer, so a read-then-write (update's compare-and-set)
neither loses a race nor fails on a lock upgrade. A lock still held after the timeout, or an I/O
failure, surfaces as `TransientError`.

Filters compile to parameterised SQL over `json_each` with MongoDB's meaning:
- a value matches only values of its own JSON type: `1` matches `1.0` but never `"1"` or `true`;
- a field holding an array matches when any element does: `{"tags": "a"}` matches `["a", "b"]`;
- `None` matches null or a missing field; `$ne` and `$nin` are the exact negations of `$eq`/`$in`;
- ranges compare numbers with numbers and strings with strings (by code point), nothing else.
Operands are JSON scalars (`$in`/`$nin`: a list of them; `$exists`: a bool). Dotted paths walk
objects only; MongoDB also walks into arrays of objects, so such filters are not portable.
Ordering follows MongoDB's type order: null and missing first, then numbers, strings, objects,
booleans; ties by key. `descending` reverses the whole order, the key tie-break included. (MongoDB
sorts an array by its smallest or largest element; here arrays sort after objects, so ordering by
a field that holds arrays is not portable.)

Indexes (`declare_index` of the port): one expression index per declared index,
`(json_extract(doc, '$.a'), json_extract(doc, '$.b'), ..., key)`, made when the kind is first
touched (or when a declaration comes later). Conditions on a declared field compile to plain
comparisons of `json_extract(doc, '$.field')` (the path inlined, so SQLite matches the index), with
a `json_type` guard where a number or a bool could be confused; ordering by such a field is by
value, then key, which the index delivers without sorting. Declared fields hold strings, numbers or
null, for which this is the same meaning as above. Conditions and ordering on `id` use the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from events.errors import AlreadyExists, TransientError
from events.lifecycle import Health
from infra.catalog.base import (
    Catalog,
    Delete,
    Doc,
    Insert,
    Update,
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
    indexed_fields,
    is_number,
    parse_where,
)
from infra.sqlite import immediate, open_durable

BUSY_TIMEOUT_S = 30.0

# Primary result codes that mean "try again later": locked past the timeout, I/O, disk full, cannot open.
_TRANSIENT_CODES = frozenset({
    sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL,
})
_RANGES = {"$lt": "<", "$lte": "<=", "$gt": ">", "$gte": ">="}
# MongoDB's sort order across types; missing and null share the first place.
_TYPE_RANK = (
    "CASE json_type(doc, ?) WHEN 'integer' THEN 1 WHEN 'real' THEN 1 WHEN 'text' THEN 2 WHEN 'object' THEN 3 "
    "WHEN 'array' THEN 4 WHEN 'true' THEN 5 WHEN 'false' THEN 5 ELSE 0 END"
)

Sql = tuple[str, list[Any]]  # a fragment and its parameters
T = TypeVar("T")


class SqliteCatalog(Catalog):
    adapter_name = "sqlite"

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only
        self._tables: set[str] = set()
        self._indexes: dict[str, int] = {}  # table -> how many of its kind's declared indexes exist

    # -- lifecycle -------------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._executor is not None:  # connected already
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-catalog-sqlite")
        try:
            await self._call(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def _close(self) -> None:
        try:
            await self._call(self._shut)
        finally:
            assert self._executor is not None  # close() calls _close only after a successful _connect
            self._executor.shutdown(wait=True)  # the close above was its last job: returns at once
            self._executor = None

    async def _health(self) -> Health:
        detail: dict[str, Any] = {"path": str(self._path)}
        try:
            detail["journal_mode"] = await self._call(self._journal_mode)
        except Exception as exc:  # noqa: BLE001 - health reports the failure instead of raising it
            return Health(status="down", adapter=self.adapter_name, detail={**detail, "reason": str(exc)})
        return Health(status="ok", adapter=self.adapter_name, detail=detail)

    # -- the port --------------------------------------------------------------------------------

    async def insert(self, kind: str, key: str, doc: Doc) -> Doc:
        self._require_connected()
        check_kind(kind)
        return await self._call(self._insert, kind, key, doc)

    async def upsert(self, kind: str, key: str, doc: Doc) -> Doc:
        self._require_connected()
        check_kind(kind)
        (text,) = await self._call(self._upsert, kind, [(key, doc)])
        return json.loads(text)

    async def upsert_many(self, kind: str, docs: Sequence[tuple[str, Doc]]) -> int:
        self._require_connected()
        check_kind(kind)
        return len(await self._call(self._upsert, kind, list(docs)))

    async def get(self, kind: str, key: str) -> Doc | None:
        self._require_connected()
        check_kind(kind)
        return await self._call(self._get, kind, key)

    async def update(self, kind: str, key: str, changes: Doc, *, expect: Where | None = None) -> Doc | None:
        self._require_connected()
        check_kind(kind)
        check_changes(changes)
        return await self._call(self._update, kind, key, changes, _compile_where(expect, indexed_fields(kind)))

    async def delete(self, kind: str, key: str) -> bool:
        self._require_connected()
        check_kind(kind)
        return await self._call(self._delete, kind, "key = ?", [key]) == 1

    async def delete_many(self, kind: str, where: Where) -> int:
        self._require_connected()
        check_kind(kind)
        sql, params = _compile_where(where, indexed_fields(kind))
        return await self._call(self._delete, kind, sql, params)

    async def find(self, kind: str, where: Where | None = None, *, order_by: str | None = None, descending: bool = False,
                   limit: int | None = None, offset: int = 0) -> list[Doc]:
        self._require_connected()
        check_kind(kind)
        check_page(limit, offset)
        scalars = indexed_fields(kind)
        where_sql, where_params = _compile_where(where, scalars)
        order_sql, order_params = _compile_order(order_by, descending, scalars)
        sql = f"WHERE {where_sql} ORDER BY {order_sql} LIMIT ? OFFSET ?"
        params = [*where_params, *order_params, -1 if limit is None else limit, offset]
        return await self._call(self._find, kind, sql, params)

    async def count(self, kind: str, where: Where | None = None) -> int:
        self._require_connected()
        check_kind(kind)
        sql, params = _compile_where(where, indexed_fields(kind))
        return await self._call(self._count, kind, sql, params)

    async def transact(self, writes: Sequence[Write]) -> list[Doc | bool]:
        self._require_connected()
        check_writes(writes)
        plans = [(w, _compile_where(w.expect, indexed_fields(w.kind)) if isinstance(w, Update) else None) for w in writes]
        return await self._call(self._transact, plans)

    # -- the worker thread -----------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the connection's thread; SQLite's "try again" failures become TransientError."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _TRANSIENT_CODES:
                raise TransientError(
                    f"SQLite catalog unavailable: {exc}", details={"sqlite_error": getattr(exc, "sqlite_errorname", "")}
                ) from exc
            raise

    def _open(self) -> None:
        conn = open_durable(self._path, busy_timeout_s=BUSY_TIMEOUT_S)
        self._conn = conn
        self._tables.clear()
        self._indexes.clear()

    def _db(self) -> sqlite3.Connection:
        """The open connection: the methods below run on the worker thread between _open and _shut."""
        assert self._conn is not None
        return self._conn

    def _shut(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _journal_mode(self) -> str:
        return self._db().execute("PRAGMA journal_mode").fetchone()[0]

    def _table(self, kind: str) -> str:
        """The quoted table of `kind`, created on first use outside any transaction, so a rolled
        back write never undoes it. `check_kind` allows only [a-z0-9_]: the name is safe to quote."""
        table = f'"kind_{kind}"'
        if table not in self._tables:
            self._db().execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, doc TEXT NOT NULL)")
            self._tables.add(table)
        declared = declared_indexes(kind)
        if len(declared) > self._indexes.get(table, 0):
            for fields in declared[self._indexes.get(table, 0):]:
                self._db().execute(f"CREATE INDEX IF NOT EXISTS {index_name(kind, fields)} ON {table} "
                                   f"({', '.join(_extract(name) for name in fields)}, key)")
            self._indexes[table] = len(declared)
        return table

    def _insert(self, kind: str, key: str, doc: Doc) -> Doc:
        text = encode_record(key, doc)
        table = self._table(kind)
        try:
            with immediate(self._db()) as conn:
                conn.execute(f"INSERT INTO {table} (key, doc) VALUES (?, ?)", (key, text))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"{kind} {key!r} already exists", details={"kind": kind, "key": key}) from exc
        return json.loads(text)

    def _upsert(self, kind: str, docs: list[tuple[str, Doc]]) -> list[str]:
        rows = [(key, encode_record(key, doc)) for key, doc in docs]
        table = self._table(kind)
        with immediate(self._db()) as conn:
            conn.executemany(
                f"INSERT INTO {table} (key, doc) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc", rows
            )
        return [text for _, text in rows]

    def _get(self, kind: str, key: str) -> Doc | None:
        row = self._db().execute(f"SELECT doc FROM {self._table(kind)} WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _update(self, kind: str, key: str, changes: Doc, expect: Sql) -> Doc | None:
        encode_record(key, changes)  # rejects a value that is not JSON before taking the lock
        table = self._table(kind)
        expect_sql, expect_params = expect
        with immediate(self._db()) as conn:
            row = conn.execute(f"SELECT doc FROM {table} WHERE key = ? AND {expect_sql}", (key, *expect_params)).fetchone()
            if row is None:
                return None
            text = encode_record(key, {**json.loads(row[0]), **changes})
            conn.execute(f"UPDATE {table} SET doc = ? WHERE key = ?", (text, key))
        return json.loads(text)

    def _delete(self, kind: str, where_sql: str, params: list[Any]) -> int:
        table = self._table(kind)
        with immediate(self._db()) as conn:
            return conn.execute(f"DELETE FROM {table} WHERE {where_sql}", params).rowcount

    def _transact(self, plans: list[tuple[Write, Sql | None]]) -> list[Doc | bool]:
        tables = [self._table(write.kind) for write, _ in plans]  # created outside the transaction
        results: list[Doc | bool] = []
        with immediate(self._db()) as conn:
            for (write, expect), table in zip(plans, tables, strict=True):
                if isinstance(write, Delete):
                    results.append(conn.execute(f"DELETE FROM {table} WHERE key = ?", (write.key,)).rowcount == 1)
                elif isinstance(write, Update):
                    assert expect is not None
                    row = conn.execute(f"SELECT doc FROM {table} WHERE key = ? AND {expect[0]}", (write.key, *expect[1])).fetchone()
                    if row is None:
                        raise conflict(write)
                    text = encode_record(write.key, {**json.loads(row[0]), **write.changes})
                    conn.execute(f"UPDATE {table} SET doc = ? WHERE key = ?", (text, write.key))
                    results.append(json.loads(text))
                else:
                    text = encode_record(write.key, write.doc)
                    if isinstance(write, Insert):
                        try:
                            conn.execute(f"INSERT INTO {table} (key, doc) VALUES (?, ?)", (write.key, text))
                        except sqlite3.IntegrityError as exc:
                            raise AlreadyExists(f"{write.kind} {write.key!r} already exists",
                                                details={"kind": write.kind, "key": write.key}) from exc
                    else:
                        conn.execute(f"INSERT INTO {table} (key, doc) VALUES (?, ?) "
                                     "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc", (write.key, text))
                    results.append(json.loads(text))
        return results

    def _find(self, kind: str, clauses: str, params: list[Any]) -> list[Doc]:
        rows = self._db().execute(f"SELECT doc FROM {self._table(kind)} {clauses}", params).fetchall()
        return [json.loads(doc) for (doc,) in rows]

    def _count(self, kind: str, where_sql: str, params: list[Any]) -> int:
        return self._db().execute(f"SELECT count(*) FROM {self._table(kind)} WHERE {where_sql}", params).fetchone()[0]


# -- filters ---------------------------------------------------------------------------------------


def index_name(kind: str, fields: Sequence[str]) -> str:
    """The quoted name of the index of `kind` on `fields`."""
    digest = hashlib.sha1(",".join(fields).encode()).hexdigest()[:12]
    return f'"index_{kind}_{digest}"'


def _extract(field: str) -> str:
    """`json_extract` of a checked field path, the path inlined (an index matches only that text)."""
    return f"json_extract(doc, '$.{field}')"


def _compile_where(where: Where | None, scalars: frozenset[str] = frozenset()) -> Sql:
    """The SQL condition (over the columns `key` and `doc`) equivalent to a MongoDB filter; fields
    in `scalars` (declared indexed) compile to plain comparisons that can use the index."""
    parts = [_key_condition(op, operand) if field == "id" else _scalar_condition(field, op, operand) if field in scalars
             else _condition(field, op, operand) for field, op, operand in parse_where(where)]
    if not parts:
        return "1", []
    return " AND ".join(sql for sql, _ in parts), [param for _, params in parts for param in params]


def _compile_order(order_by: str | None, descending: bool, scalars: frozenset[str] = frozenset()) -> Sql:
    direction = "DESC" if descending else "ASC"
    check_order_by(order_by)
    if order_by is None or order_by == "id":
        return f"key {direction}", []
    if order_by in scalars:  # null and missing, numbers, strings: SQLite's own order, as an index holds it
        return f"{_extract(order_by)} {direction}, key {direction}", []
    path = f"$.{order_by}"
    return f"{_TYPE_RANK} {direction}, json_extract(doc, ?) {direction}, key {direction}", [path, path]


def _condition(field: str, op: str, operand: Any) -> Sql:
    """The SQL for one condition `parse_where` checked."""
    path = f"$.{field}"
    if op in ("$eq", "$ne"):
        sql, params = _equals_any(path, [operand])
    elif op in ("$in", "$nin"):
        sql, params = _equals_any(path, list(operand))
    elif op == "$exists":
        return f"json_type(doc, ?) IS {'NOT ' if operand else ''}NULL", [path]
    else:
        sql, params = _in_range(path, _RANGES[op], operand)
    return (f"NOT {sql}", params) if op in ("$ne", "$nin") else (sql, params)


def _key_condition(op: str, operand: Any) -> Sql:
    """A condition on `id`, which always holds the key (a string): on the key column itself."""
    if op == "$exists":
        return ("1" if operand else "0"), []
    if op in _RANGES:
        return (f"key {_RANGES[op]} ?", [operand]) if isinstance(operand, str) else ("0", [])
    strings = [v for v in ([operand] if op in ("$eq", "$ne") else operand) if isinstance(v, str)]
    sql = f"key IN ({', '.join('?' * len(strings))})" if strings else "0"
    return (f"NOT {sql}", strings) if op in ("$ne", "$nin") else (sql, strings)


def _scalar_condition(field: str, op: str, operand: Any) -> Sql:
    """A condition on a declared (indexed) field, which holds a string, a number or null: plain
    comparisons of its value, which an index serves. Same meaning as `_condition` on such values."""
    value, path = _extract(field), f"'$.{field}'"
    if op == "$exists":
        return f"json_type(doc, {path}) IS {'NOT ' if operand else ''}NULL", []
    if op in _RANGES:
        guard = "= 'text'" if isinstance(operand, str) else "IN ('integer', 'real')"
        return f"({value} {_RANGES[op]} ? AND json_type(doc, {path}) {guard})", [operand]
    values = [operand] if op in ("$eq", "$ne") else list(operand)
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if is_number(v)]
    parts: list[str] = []
    if strings:
        parts.append(f"{value} = ?" if len(strings) == 1 else f"{value} IN ({', '.join('?' * len(strings))})")
    if numbers:
        parts.append(f"({value} IN ({', '.join('?' * len(numbers))}) AND json_type(doc, {path}) IN ('integer', 'real'))")
    parts += [f"json_type(doc, {path}) = '{name}'" for name, const in (("true", True), ("false", False)) if any(v is const for v in values)]
    if any(v is None for v in values):
        parts.append(f"{value} IS NULL")
    sql = f"({' OR '.join(parts)})" if parts else "0"
    if op in ("$ne", "$nin"):
        sql = f"NOT coalesce({sql}, 0)"  # a missing value compares as NULL: its negation still matches
    return sql, [*strings, *numbers]


def _any_element(path: str, predicate: str, params: list[Any]) -> Sql:
    """The value at `path` (or, for an array, any of its elements) satisfies `predicate`, which
    reads `e.type` (a JSON type name) and `e.atom` (the SQL value). An object's members are skipped:
    their `e.key` is text, where an array's is an index and a scalar's is null."""
    return (
        f"EXISTS (SELECT 1 FROM json_each(doc, ?) AS e WHERE typeof(e.key) <> 'text' AND ({predicate}))",
        [path, *params],
    )


def _equals_any(path: str, values: Sequence[Any]) -> Sql:
    predicates: list[str] = []
    params: list[Any] = []
    numbers = [v for v in values if is_number(v)]
    strings = [v for v in values if isinstance(v, str)]
    for type_names, group in (("'integer', 'real'", numbers), ("'text'", strings)):
        if group:
            predicates.append(f"(e.type IN ({type_names}) AND e.atom IN ({', '.join('?' * len(group))}))")
            params.extend(group)
    predicates += [f"e.type = '{name}'" for name, const in (("true", True), ("false", False), ("null", None))
                   if any(v is const for v in values)]
    parts = [_any_element(path, " OR ".join(predicates), params)] if predicates else []
    if any(v is None for v in values):
        parts.append(("json_type(doc, ?) IS NULL", [path]))  # None also matches a missing field
    if not parts:
        return "0", []
    return f"({' OR '.join(sql for sql, _ in parts)})", [param for _, ps in parts for param in ps]


def _in_range(path: str, sql_op: str, bound: int | float | str) -> Sql:
    type_names = "'text'" if isinstance(bound, str) else "'integer', 'real'"
    return _any_element(path, f"e.type IN ({type_names}) AND e.atom {sql_op} ?", [bound])
