"""`MemoryCatalog`: the Catalog kept in dicts, for unit tests of handlers and single-process runs.

It passes the same contract suite as the SQLite and MongoDB catalogs, so a test on it exercises
the semantics production relies on:

- records go through the same checks and the same JSON round trip (`encode_record` of the port): `id` is the
  key, tuples become lists, dates, bytes, NaN and `_id` are refused with `InvalidInput`;
- every record handed out is a deep copy, so a caller never changes what is stored;
- filters keep MongoDB's meaning, as the SQLite catalog compiles them: a value matches only values
  of its own JSON type (`1` matches `1.0`, never `"1"` or `true`); a field holding an array matches
  when any element does; `None` matches null or a missing field; `$ne`/`$nin` are the exact
  negations of `$eq`/`$in`; ranges compare numbers with numbers and strings with strings; dotted
  paths walk objects only;
- ordering follows MongoDB's type order (null and missing first, then numbers, strings, objects,
  arrays, booleans), ties by key; `descending` reverses the whole order, the key included.

Declared indexes (`declare_index` of the port) change nothing here: every query reads every record of its kind.

Catalogs built on one `kinds` dict share their records, as catalogs on one SQLite file do; the
records outlive `close()`. Every method runs to completion without yielding to the event loop, so
each call is atomic: of two concurrent inserts of one key exactly one wins, and `update`'s
compare-and-set never loses an update.
"""

from __future__ import annotations

import copy
import json
import operator
from collections.abc import Sequence
from typing import Any

from events.errors import AlreadyExists
from events.lifecycle import Health
from infra.catalog import base as port
from infra.catalog.base import Catalog, Condition, Delete, Doc, Insert, Update, Where, Write

_MISSING = object()
_RANGES = {"$lt": operator.lt, "$lte": operator.le, "$gt": operator.gt, "$gte": operator.ge}


class MemoryCatalog(Catalog):
    """`kinds` ({kind: {key: record}}) is the store: pass one dict to several catalogs to share it."""

    adapter_name = "memory"

    def __init__(self, kinds: dict[str, dict[str, Doc]] | None = None) -> None:
        self._kinds: dict[str, dict[str, Doc]] = {} if kinds is None else kinds

    async def _health(self) -> Health:
        records = sum(len(table) for table in self._kinds.values())
        return Health(status="ok", adapter=self.adapter_name, detail={"kinds": len(self._kinds), "records": records})

    # -- the port --------------------------------------------------------------------------------

    async def insert(self, kind: str, key: str, doc: Doc) -> Doc:
        self._require_connected()
        port.check_kind(kind)
        record = _record(key, doc)
        table = self._kinds.setdefault(kind, {})
        if key in table:
            raise AlreadyExists(f"{kind} {key!r} already exists", details={"kind": kind, "key": key})
        table[key] = record
        return copy.deepcopy(record)

    async def upsert(self, kind: str, key: str, doc: Doc) -> Doc:
        self._require_connected()
        port.check_kind(kind)
        record = _record(key, doc)
        self._kinds.setdefault(kind, {})[key] = record
        return copy.deepcopy(record)

    async def upsert_many(self, kind: str, docs: Sequence[tuple[str, Doc]]) -> int:
        self._require_connected()
        port.check_kind(kind)
        records = [(key, _record(key, doc)) for key, doc in docs]  # all checked before any is written
        if records:
            self._kinds.setdefault(kind, {}).update(records)
        return len(records)

    async def get(self, kind: str, key: str) -> Doc | None:
        self._require_connected()
        port.check_kind(kind)
        record = self._kinds.get(kind, {}).get(key)
        return None if record is None else copy.deepcopy(record)

    async def update(self, kind: str, key: str, changes: Doc, *, expect: Where | None = None) -> Doc | None:
        self._require_connected()
        port.check_kind(kind)
        port.check_changes(changes)
        conditions = port.parse_where(expect)
        port.encode_record(key, changes)  # refuses a value that is not plain JSON, whether or not the record exists
        table = self._kinds.get(kind, {})
        current = table.get(key)
        if current is None or not _matches(current, conditions):
            return None
        table[key] = updated = _record(key, {**current, **changes})
        return copy.deepcopy(updated)

    async def delete(self, kind: str, key: str) -> bool:
        self._require_connected()
        port.check_kind(kind)
        return self._kinds.get(kind, {}).pop(key, None) is not None

    async def delete_many(self, kind: str, where: Where) -> int:
        self._require_connected()
        port.check_kind(kind)
        conditions = port.parse_where(where)
        table = self._kinds.get(kind, {})
        doomed = [key for key, record in table.items() if _matches(record, conditions)]
        for key in doomed:
            del table[key]
        return len(doomed)

    async def find(self, kind: str, where: Where | None = None, *, order_by: str | None = None,
                   descending: bool = False, limit: int | None = None, offset: int = 0) -> list[Doc]:
        self._require_connected()
        port.check_kind(kind)
        port.check_page(limit, offset)
        conditions = port.parse_where(where)
        port.check_order_by(order_by)
        found = [(key, record) for key, record in self._kinds.get(kind, {}).items() if _matches(record, conditions)]
        found.sort(key=lambda item: (*_sort_value(_lookup(item[1], order_by)), item[0]) if order_by else item[0],
                   reverse=descending)
        page = found[offset:] if limit is None else found[offset : offset + limit]
        return [copy.deepcopy(record) for _, record in page]

    async def count(self, kind: str, where: Where | None = None) -> int:
        self._require_connected()
        port.check_kind(kind)
        conditions = port.parse_where(where)
        return sum(1 for record in self._kinds.get(kind, {}).values() if _matches(record, conditions))


    async def transact(self, writes: Sequence[Write]) -> list[Doc | bool]:
        self._require_connected()
        port.check_writes(writes)
        staged: dict[str, dict[str, Doc]] = {}  # kind -> a copy of its table, swapped in at the end
        results: list[Doc | bool] = []
        for write in writes:
            if write.kind not in staged:
                staged[write.kind] = dict(self._kinds.get(write.kind, {}))
            table = staged[write.kind]
            if isinstance(write, Delete):
                results.append(table.pop(write.key, None) is not None)
            elif isinstance(write, Update):
                current = table.get(write.key)
                if current is None or not _matches(current, port.parse_where(write.expect)):
                    raise port.conflict(write)
                table[write.key] = _record(write.key, {**current, **write.changes})
                results.append(copy.deepcopy(table[write.key]))
            else:
                if isinstance(write, Insert) and write.key in table:
                    raise AlreadyExists(f"{write.kind} {write.key!r} already exists", details={"kind": write.kind, "key": write.key})
                table[write.key] = _record(write.key, write.doc)
                results.append(copy.deepcopy(table[write.key]))
        for kind, table in staged.items():  # no await above: nothing else ran in between
            self._kinds.setdefault(kind, {}).clear()
            self._kinds[kind].update(table)
        return results


def _record(key: str, doc: Doc) -> Doc:
    """The record as stored: `doc` checked and round-tripped through JSON, with `id` set to `key`."""
    return json.loads(port.encode_record(key, doc))


# -- filters ---------------------------------------------------------------------------------------


def _lookup(record: Doc, path: str) -> Any:
    """The value at a dotted path, walking objects only; `_MISSING` when there is none."""
    value: Any = record
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            return _MISSING
        value = value[name]
    return value


def _matches(record: Doc, conditions: list[Condition]) -> bool:
    return all(_condition(_lookup(record, field), op, operand) for field, op, operand in conditions)


def _condition(value: Any, op: str, operand: Any) -> bool:
    if op == "$exists":
        return (value is not _MISSING) is operand
    if op in ("$eq", "$ne"):
        return _equals_any(value, [operand]) is (op == "$eq")
    if op in ("$in", "$nin"):
        return _equals_any(value, operand) is (op == "$in")
    return any(_in_range(element, op, operand) for element in _elements(value))


def _elements(value: Any) -> list[Any]:
    """What a condition compares with: an array's elements, or the value itself; an object or a
    missing field offers nothing (as SQLite's `json_each` with its members skipped)."""
    if value is _MISSING or isinstance(value, dict):
        return []
    return value if isinstance(value, list) else [value]


def _same(element: Any, operand: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), every other type only with itself."""
    if port.is_number(operand):
        return port.is_number(element) and element == operand
    if isinstance(operand, (bool, str)) or operand is None:
        return type(element) is type(operand) and element == operand
    return False


def _equals_any(value: Any, operands: Sequence[Any]) -> bool:
    if value is _MISSING and any(operand is None for operand in operands):
        return True  # None also matches a missing field
    return any(_same(element, operand) for element in _elements(value) for operand in operands)


def _in_range(element: Any, op: str, bound: Any) -> bool:
    """Numbers compare with numbers, strings with strings (by code point), nothing else."""
    comparable = isinstance(element, str) if isinstance(bound, str) else port.is_number(element)
    return comparable and _RANGES[op](element, bound)


def _sort_value(value: Any) -> tuple[int, Any]:
    """MongoDB's type order: null and missing, numbers, strings, objects, arrays, booleans; within
    a type by value (objects and arrays by their compact JSON text, false before true)."""
    if value is _MISSING or value is None:
        return 0, 0
    if isinstance(value, bool):
        return 5, int(value)
    if port.is_number(value):
        return 1, value
    if isinstance(value, str):
        return 2, value
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (3 if isinstance(value, dict) else 4), text
