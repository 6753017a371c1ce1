"""One contract for every Catalog adapter.

`catalog` runs each test against the embedded SQLite file, against MongoDB (mongomock-motor by
default, a real server when SLUICE_MONGO_URL is set: a database with a random name, dropped after
the test) and against the in-memory fake that unit tests use. The memory cases are also marked
`unit` (they need no server or file): `pytest -m unit` on this file runs exactly those. The
SQLite-only tests at the end cover what only a shared file has: durability across a reopen, and
writers in several OS processes at once.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import multiprocessing
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mongomock.collection import BulkOperationBuilder
from mongomock.store import ServerStore
from mongomock_motor import AsyncMongoMockClient
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.errors import ServerSelectionTimeoutError

import infra.catalog.sqlite as sqlite_catalog
from events.errors import AlreadyExists, InvalidInput, NotConnected, TransientError
from infra.catalog import Catalog, MemoryCatalog, MongoCatalog, SqliteCatalog
from infra.catalog.base import Delete, Insert, Update, Upsert, WriteConflict, declare_index, declared_indexes, indexed_fields

pytestmark = pytest.mark.integration

MONGO_URL = os.environ.get("SLUICE_MONGO_URL")


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "mongo", pytest.param("memory", marks=pytest.mark.unit)])
async def new_catalog(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[], Catalog]]:
    """Makes unconnected catalogs that share one fresh store: a file, a randomly named database, or
    one dict."""
    if request.param == "memory":
        kinds: dict[str, dict[str, Any]] = {}
        yield lambda: MemoryCatalog(kinds)
        return
    if request.param == "sqlite":
        yield lambda: SqliteCatalog(tmp_path / "catalog.sqlite3")
        return
    database = f"sluice_test_{uuid.uuid4().hex[:12]}"
    if MONGO_URL is None:
        _let_mongomock_take_pymongo_bulk_operations(monkeypatch)
        store = ServerStore()
        yield lambda: MongoCatalog(
            "mongodb://mongomock", database, client_factory=lambda url: AsyncMongoMockClient(url, _store=store)
        )
        return
    yield lambda: MongoCatalog(MONGO_URL, database)
    client = AsyncIOMotorClient(MONGO_URL)
    try:
        await client.drop_database(database)
    finally:
        client.close()


@pytest.fixture
async def catalog(new_catalog: Callable[[], Catalog]) -> AsyncIterator[Catalog]:
    async with new_catalog() as connected:
        yield connected


def _let_mongomock_take_pymongo_bulk_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymongo >= 4.11 passes `sort=` to the bulk builder's `add_replace`; mongomock 4.3 predates
    that argument, so `bulk_write([ReplaceOne(...)])` fails there with a TypeError. The adapter never
    sorts a replace, so the fake may ignore it."""
    original = BulkOperationBuilder.add_replace
    if "sort" in inspect.signature(original).parameters:
        return

    def add_replace(
        self: Any, selector: Any, doc: Any, upsert: Any, collation: Any = None, hint: Any = None, sort: Any = None
    ) -> Any:
        assert sort is None, "the catalog never sorts a replace"
        return original(self, selector, doc, upsert, collation=collation, hint=hint)

    monkeypatch.setattr(BulkOperationBuilder, "add_replace", add_replace)


# People in a small team: nested objects, arrays, null and missing fields, and values that look alike
# across types (41 and "41", true and 1, false and 0).
PEOPLE: dict[str, dict[str, Any]] = {
    "cy": {"name": "Cy", "age": 41, "score": 8.25, "active": True, "team": {"name": "core"}, "tags": []},
    "ada": {
        "name": "Ada", "age": 36, "score": 9.5, "active": True,
        "team": {"name": "core", "size": 3}, "tags": ["math", "eng"], "note": None,
    },
    "eve": {"name": "Eve", "active": 0},
    "bob": {
        "name": "Bob", "age": 25, "score": 7, "active": False,
        "team": {"name": "web", "size": 5}, "tags": ["eng"], "note": "hi",
    },
    "dee": {"name": "Dee", "age": "41", "active": 1},
}
EVERYONE = sorted(PEOPLE)


@pytest.fixture
async def people(catalog: Catalog) -> Catalog:
    assert await catalog.upsert_many("people", list(PEOPLE.items())) == len(PEOPLE)
    return catalog


async def _keys(catalog: Catalog, where: dict[str, Any] | None = None, **options: Any) -> list[str]:
    return [record["id"] for record in await catalog.find("people", where, **options)]


# -- life ------------------------------------------------------------------------------------------


async def test_every_method_raises_not_connected_before_connect(new_catalog: Callable[[], Catalog]) -> None:
    catalog = new_catalog()
    calls = [
        catalog.insert("people", "ada", {}),
        catalog.upsert("people", "ada", {}),
        catalog.upsert_many("people", [("ada", {})]),
        catalog.get("people", "ada"),
        catalog.update("people", "ada", {"age": 1}),
        catalog.delete("people", "ada"),
        catalog.delete_many("people", {}),
        catalog.find("people"),
        catalog.count("people"),
    ]
    for call in calls:
        with pytest.raises(NotConnected):
            await call
    assert (await catalog.health()).status == "down"


async def test_health_is_ok_once_connected_and_work_is_refused_after_close(new_catalog: Callable[[], Catalog]) -> None:
    catalog = new_catalog()
    await catalog.connect()
    await catalog.connect()  # a second connect changes nothing
    await catalog.insert("people", "ada", {})
    assert (await catalog.health()).status == "ok"
    await catalog.close()
    await catalog.close()
    with pytest.raises(NotConnected):
        await catalog.get("people", "ada")
    async with catalog:  # and it can connect again
        assert await catalog.get("people", "ada") == {"id": "ada"}


# -- writing and reading one record ---------------------------------------------------------------


async def test_an_inserted_record_round_trips_nested_json_with_its_id(catalog: Catalog) -> None:
    doc = {
        "int": 42, "negative": -7, "big": 2**53 + 1, "float": 0.1, "whole_float": 2.0, "true": True, "false": False,
        "null": None, "list": [1, "two", 3.5, None, True, {"deep": [[]]}], "empty_list": [], "empty_dict": {},
        "nested": {"a": {"b": {"c": "d"}}, "n": 0},
        "unicode": "Zoë 東京 🚀 \u00e9\u0301 \"quoted\" back\\slash\nnewline",
        "Ключ": "значение",
    }
    inserted = await catalog.insert("plugins", "acme/scanner@1.0", doc)
    stored = await catalog.get("plugins", "acme/scanner@1.0")

    assert inserted == stored == {**doc, "id": "acme/scanner@1.0"}
    assert isinstance(stored["whole_float"], float) and isinstance(stored["int"], int) and stored["true"] is True
    assert "id" not in doc, "the caller's dict is not modified"


async def test_returned_records_are_copies(catalog: Catalog) -> None:
    inserted = await catalog.insert("plugins", "p", {"tags": ["a"], "meta": {"n": 1}})
    inserted["tags"].append("mutated")
    fetched = await catalog.get("plugins", "p")
    fetched["meta"]["n"] = 99

    assert await catalog.get("plugins", "p") == {"tags": ["a"], "meta": {"n": 1}, "id": "p"}


async def test_the_id_field_is_always_the_key(catalog: Catalog) -> None:
    assert (await catalog.insert("plugins", "right", {"id": "wrong"}))["id"] == "right"
    assert (await catalog.update("plugins", "right", {"id": "wrong", "x": 1})) == {"id": "right", "x": 1}
    assert await catalog.find("plugins", {"id": "right"}) == [{"id": "right", "x": 1}]


async def test_get_of_a_missing_key_returns_none(catalog: Catalog) -> None:
    assert await catalog.get("plugins", "nope") is None


async def test_kinds_are_separate_namespaces(catalog: Catalog) -> None:
    await catalog.insert("plugins", "same", {"kind": "plugin"})
    await catalog.insert("models", "same", {"kind": "model"})

    assert (await catalog.get("plugins", "same"))["kind"] == "plugin"
    assert (await catalog.get("models", "same"))["kind"] == "model"
    assert await catalog.count("collections") == 0


@pytest.mark.parametrize("kind", ["order", "select", "sqlite_master", "system_users", "a"])
async def test_kinds_named_like_sql_words_or_internal_tables_are_ordinary(catalog: Catalog, kind: str) -> None:
    await catalog.insert(kind, "k", {"v": 1})
    assert await catalog.find(kind) == [{"v": 1, "id": "k"}]


async def test_inserting_a_taken_key_raises_already_exists_and_keeps_the_first_record(catalog: Catalog) -> None:
    await catalog.insert("plugins", "p", {"version": 1})

    with pytest.raises(AlreadyExists) as raised:
        await catalog.insert("plugins", "p", {"version": 2})

    assert raised.value.details == {"kind": "plugins", "key": "p"}
    assert await catalog.get("plugins", "p") == {"version": 1, "id": "p"}


async def test_of_fifty_concurrent_inserts_of_one_key_exactly_one_wins(catalog: Catalog) -> None:
    outcomes = await asyncio.gather(
        *(catalog.insert("locks", "the-key", {"writer": writer}) for writer in range(50)), return_exceptions=True
    )

    winners = [outcome for outcome in outcomes if isinstance(outcome, dict)]
    assert len(winners) == 1
    assert all(isinstance(outcome, AlreadyExists) for outcome in outcomes if not isinstance(outcome, dict))
    assert await catalog.get("locks", "the-key") == winners[0]


async def test_upsert_creates_then_replaces_the_whole_record(catalog: Catalog) -> None:
    created = await catalog.upsert("tasks", "t1", {"status": "PENDING", "attempt": 1})
    assert created == {"status": "PENDING", "attempt": 1, "id": "t1"}
    assert await catalog.upsert("tasks", "t1", {"status": "RUNNING"}) == {"status": "RUNNING", "id": "t1"}
    assert await catalog.get("tasks", "t1") == {"status": "RUNNING", "id": "t1"}


async def test_upsert_many_creates_and_replaces_and_counts_every_write(catalog: Catalog) -> None:
    await catalog.insert("chunks", "c0", {"text": "old", "extra": True})

    written = await catalog.upsert_many("chunks", [(f"c{i}", {"text": f"chunk {i}"}) for i in range(5)])

    assert written == 5
    assert await catalog.count("chunks") == 5
    assert await catalog.get("chunks", "c0") == {"text": "chunk 0", "id": "c0"}
    assert await catalog.upsert_many("chunks", []) == 0


# -- update ----------------------------------------------------------------------------------------


async def test_update_sets_top_level_fields_and_keeps_the_others(catalog: Catalog) -> None:
    await catalog.insert("tasks", "t1", {"status": "PENDING", "input": {"bucket": "docs"}, "attempt": 1})

    changes = {"status": "RUNNING", "attempt": 2, "worker": None, "input": {"bucket": "new"}}
    updated = await catalog.update("tasks", "t1", changes)

    expected = {"status": "RUNNING", "input": {"bucket": "new"}, "attempt": 2, "worker": None, "id": "t1"}
    assert updated == expected
    assert await catalog.get("tasks", "t1") == expected


async def test_update_of_a_missing_key_returns_none_and_creates_nothing(catalog: Catalog) -> None:
    assert await catalog.update("tasks", "ghost", {"status": "RUNNING"}) is None
    assert await catalog.get("tasks", "ghost") is None


async def test_update_with_an_unmet_expectation_returns_none_and_leaves_the_record(catalog: Catalog) -> None:
    await catalog.insert("tasks", "t1", {"status": "RUNNING", "lease": {"owner": "w1"}})

    assert await catalog.update("tasks", "t1", {"status": "DONE"}, expect={"status": "PENDING"}) is None
    assert await catalog.update("tasks", "t1", {"status": "DONE"}, expect={"lease.owner": "w2"}) is None
    assert await catalog.get("tasks", "t1") == {"status": "RUNNING", "lease": {"owner": "w1"}, "id": "t1"}


async def test_update_with_a_met_expectation_applies(catalog: Catalog) -> None:
    await catalog.insert("idempotency", "k", {"status": "IN_PROGRESS", "lease_until": 1700000000.123456, "owner": "a"})

    taken = await catalog.update(
        "idempotency", "k", {"owner": "b", "lease_until": None},
        expect={"status": "IN_PROGRESS", "lease_until": 1700000000.123456, "owner": {"$in": ["a", "c"]}},
    )
    assert taken == {"status": "IN_PROGRESS", "lease_until": None, "owner": "b", "id": "k"}
    # A null expectation matches the null just written, and a field never written.
    completed = await catalog.update("idempotency", "k", {"status": "COMPLETED"}, expect={"lease_until": None, "results": None})
    assert completed is not None


async def test_update_with_no_changes_returns_the_matching_record(catalog: Catalog) -> None:
    await catalog.insert("tasks", "t1", {"status": "RUNNING"})
    assert await catalog.update("tasks", "t1", {}) == {"status": "RUNNING", "id": "t1"}
    assert await catalog.update("tasks", "t1", {}, expect={"status": "DONE"}) is None


async def test_of_concurrent_compare_and_set_claims_from_two_catalogs_exactly_one_wins(
    new_catalog: Callable[[], Catalog],
) -> None:
    async with new_catalog() as first, new_catalog() as second:
        await first.upsert_many("tasks", [(f"t{i}", {"status": "PENDING"}) for i in range(20)])

        for i in range(20):
            claims = await asyncio.gather(
                first.update("tasks", f"t{i}", {"status": "RUNNING", "owner": "first"}, expect={"status": "PENDING"}),
                second.update("tasks", f"t{i}", {"status": "RUNNING", "owner": "second"}, expect={"status": "PENDING"}),
            )
            winners = [claim for claim in claims if claim is not None]
            assert len(winners) == 1, claims
            assert await second.get("tasks", f"t{i}") == winners[0]


async def test_compare_and_set_increments_from_two_catalogs_lose_no_update(new_catalog: Callable[[], Catalog]) -> None:
    async def increment(catalog: Catalog, times: int) -> int:
        conflicts = 0
        for _ in range(times):
            while True:
                current = (await catalog.get("counters", "c"))["n"]
                if await catalog.update("counters", "c", {"n": current + 1}, expect={"n": current}) is not None:
                    break
                conflicts += 1
        return conflicts

    async with new_catalog() as first, new_catalog() as second:
        await first.insert("counters", "c", {"n": 0})
        await asyncio.gather(increment(first, 25), increment(second, 25))
        assert await first.get("counters", "c") == {"n": 50, "id": "c"}


# -- transact ----------------------------------------------------------------------------------------


async def test_transact_applies_writes_across_kinds_in_order_and_returns_each_result(catalog: Catalog) -> None:
    await catalog.insert("plugins", "p1", {"status": "UPLOADING", "n": 1})
    await catalog.insert("outbox", "old", {})
    results = await catalog.transact([
        Update("plugins", "p1", {"status": "CONFIRMED"}, expect={"status": "UPLOADING"}),
        Insert("outbox", "e1", {"event": "confirmed"}),
        Upsert("outbox", "e2", {"event": "second"}),
        Delete("outbox", "old"),
        Delete("outbox", "never"),
    ])
    assert results == [
        {"status": "CONFIRMED", "n": 1, "id": "p1"}, {"event": "confirmed", "id": "e1"}, {"event": "second", "id": "e2"}, True, False,
    ]
    assert await catalog.get("plugins", "p1") == {"status": "CONFIRMED", "n": 1, "id": "p1"}
    assert [r["id"] for r in await catalog.find("outbox")] == ["e1", "e2"]


@pytest.mark.parametrize("failing", ["unmet expectation", "missing record", "taken key", "not json"])
async def test_a_transaction_with_one_failing_write_writes_nothing(catalog: Catalog, failing: str) -> None:
    await catalog.insert("plugins", "p1", {"status": "CONFIRMED"})
    await catalog.insert("outbox", "taken", {"event": "earlier"})
    await catalog.insert("leases", "doomed", {})
    last = {
        "unmet expectation": Update("plugins", "p1", {"status": "SCANNED"}, expect={"status": "UPLOADING"}),
        "missing record": Update("plugins", "nope", {"status": "SCANNED"}),
        "taken key": Insert("outbox", "taken", {"event": "again"}),
        "not json": Upsert("outbox", "bad", {"when": datetime.now(UTC)}),
    }[failing]
    expected = {"unmet expectation": WriteConflict, "missing record": WriteConflict, "taken key": AlreadyExists,
                "not json": InvalidInput}[failing]
    with pytest.raises(expected):
        await catalog.transact([
            Insert("outbox", "e1", {"event": "confirmed"}),
            Update("plugins", "p1", {"note": "changed"}),
            Delete("leases", "doomed"),
            last,
        ])
    assert await catalog.get("plugins", "p1") == {"status": "CONFIRMED", "id": "p1"}
    assert [r["id"] for r in await catalog.find("outbox")] == ["taken"]
    assert await catalog.get("leases", "doomed") == {"id": "doomed"}


async def test_of_concurrent_transactions_claiming_one_record_exactly_one_writes_its_event(
    new_catalog: Callable[[], Catalog],
) -> None:
    async with new_catalog() as first, new_catalog() as second:
        await first.insert("plugins", "p1", {"status": "UPLOADING"})

        async def confirm(catalog: Catalog, who: str) -> bool:
            try:
                await catalog.transact([Update("plugins", "p1", {"status": "CONFIRMED", "by": who}, expect={"status": "UPLOADING"}),
                                        Insert("outbox", f"e-{who}", {"by": who})])
            except WriteConflict:
                return False
            return True

        won = await asyncio.gather(confirm(first, "a"), confirm(second, "b"))
        assert sorted(won) == [False, True]
        winner = "a" if won[0] else "b"
        assert (await second.get("plugins", "p1"))["by"] == winner
        assert [r["by"] for r in await second.find("outbox")] == [winner]


# -- delete ----------------------------------------------------------------------------------------


async def test_delete_reports_whether_the_record_existed(catalog: Catalog) -> None:
    await catalog.insert("tasks", "t1", {})
    assert await catalog.delete("tasks", "t1") is True
    assert await catalog.delete("tasks", "t1") is False
    assert await catalog.get("tasks", "t1") is None


async def test_delete_many_removes_the_matches_and_counts_them(people: Catalog) -> None:
    assert await people.delete_many("people", {"team.name": "core"}) == 2
    assert await _keys(people) == ["bob", "dee", "eve"]
    assert await people.delete_many("people", {"team.name": "core"}) == 0
    assert await people.delete_many("people", {}) == 3
    assert await people.count("people") == 0


# -- find and count --------------------------------------------------------------------------------

FILTERS = [
    # equality, on top-level and dotted paths
    ({"name": "Ada"}, ["ada"]),
    ({"team.name": "core"}, ["ada", "cy"]),
    ({"team.name": "core", "age": {"$gt": 40}}, ["cy"]),
    ({"id": "bob"}, ["bob"]),
    ({"name": "ada"}, []),
    # numbers: 1 == 1.0, but a number never equals a string
    ({"age": 41}, ["cy"]),
    ({"age": "41"}, ["dee"]),
    ({"score": 7.0}, ["bob"]),
    ({"age": {"$eq": 41}}, ["cy"]),
    ({"age": {"$ne": 41}}, ["ada", "bob", "dee", "eve"]),
    ({"age": {"$in": [25, 36, "41"]}}, ["ada", "bob", "dee"]),
    ({"age": {"$nin": [25, 36]}}, ["cy", "dee", "eve"]),
    ({"age": {"$in": []}}, []),
    ({"age": {"$nin": []}}, EVERYONE),
    # ranges compare numbers with numbers and strings with strings
    ({"age": {"$lt": 36}}, ["bob"]),
    ({"age": {"$lte": 36}}, ["ada", "bob"]),
    ({"age": {"$gt": 36}}, ["cy"]),
    ({"age": {"$gte": 25}}, ["ada", "bob", "cy"]),
    ({"score": {"$gt": 8}}, ["ada", "cy"]),
    ({"team.size": {"$gte": 4}}, ["bob"]),
    ({"name": {"$gt": "Bob"}}, ["cy", "dee", "eve"]),
    ({"name": {"$lte": "Bob"}}, ["ada", "bob"]),
    ({"age": {"$gte": "4"}}, ["dee"]),
    # booleans are not 1 and 0
    ({"active": True}, ["ada", "cy"]),
    ({"active": 1}, ["dee"]),
    ({"active": False}, ["bob"]),
    ({"active": 0}, ["eve"]),
    ({"active": {"$ne": True}}, ["bob", "dee", "eve"]),
    ({"active": {"$in": [True]}}, ["ada", "cy"]),
    ({"active": {"$in": [1, False]}}, ["bob", "dee"]),
    ({"active": {"$nin": [1, 0]}}, ["ada", "bob", "cy"]),
    ({"active": {"$gt": 0}}, ["dee"]),
    # None matches null or missing; $exists tells them apart
    ({"note": None}, ["ada", "cy", "dee", "eve"]),
    ({"note": {"$ne": None}}, ["bob"]),
    ({"note": {"$in": [None, "hi"]}}, EVERYONE),
    ({"note": {"$nin": [None]}}, ["bob"]),
    ({"note": {"$exists": True}}, ["ada", "bob"]),
    ({"note": {"$exists": False}}, ["cy", "dee", "eve"]),
    ({"team.size": None}, ["cy", "dee", "eve"]),
    ({"team.size": {"$exists": True}}, ["ada", "bob"]),
    # a field holding an array matches when any element does
    ({"tags": "eng"}, ["ada", "bob"]),
    ({"tags": {"$in": ["math", "art"]}}, ["ada"]),
    ({"tags": {"$ne": "eng"}}, ["cy", "dee", "eve"]),
    ({"tags": {"$exists": True}}, ["ada", "bob", "cy"]),
]


@pytest.mark.parametrize(("where", "expected"), FILTERS, ids=[str(where) for where, _ in FILTERS])
async def test_find_and_count_apply_the_filter(people: Catalog, where: dict[str, Any], expected: list[str]) -> None:
    assert await _keys(people, where) == expected
    assert await people.count("people", where) == len(expected)


async def test_find_without_a_filter_returns_everything_in_key_order(people: Catalog) -> None:
    records = await people.find("people")
    assert [record["id"] for record in records] == EVERYONE
    assert records[0] == {**PEOPLE["ada"], "id": "ada"}
    assert await people.count("people") == len(PEOPLE)
    assert await people.find("nothing_here") == [] and await people.count("nothing_here") == 0


async def test_find_orders_by_a_field_with_missing_first_then_numbers_then_strings(people: Catalog) -> None:
    assert await _keys(people, order_by="age") == ["eve", "bob", "ada", "cy", "dee"]
    assert await _keys(people, order_by="score") == ["dee", "eve", "bob", "cy", "ada"]
    assert await _keys(people, order_by="name") == ["ada", "bob", "cy", "dee", "eve"]


async def test_find_breaks_ties_by_key_and_descending_reverses_the_whole_order(people: Catalog) -> None:
    assert await _keys(people, order_by="team.name") == ["dee", "eve", "ada", "cy", "bob"]
    assert await _keys(people, order_by="team.name", descending=True) == ["bob", "cy", "ada", "eve", "dee"]
    assert await _keys(people, descending=True) == EVERYONE[::-1]


async def test_find_pages_with_limit_and_offset_after_filtering_and_ordering(people: Catalog) -> None:
    assert await _keys(people, order_by="age", limit=2) == ["eve", "bob"]
    assert await _keys(people, order_by="age", limit=2, offset=1) == ["bob", "ada"]
    assert await _keys(people, order_by="age", offset=3) == ["cy", "dee"]
    assert await _keys(people, {"active": True}, order_by="age", descending=True, limit=1) == ["cy"]
    assert await _keys(people, limit=0) == []
    assert await _keys(people, offset=10) == []


# -- refused input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["People", "1st", "with-dash", "", "a" * 64, "drop table;"])
async def test_an_invalid_kind_raises_invalid_input_naming_it(catalog: Catalog, kind: str) -> None:
    for call in (catalog.insert(kind, "k", {}), catalog.find(kind), catalog.get(kind, "k")):
        with pytest.raises(InvalidInput) as raised:
            await call
        assert repr(kind) in raised.value.message


@pytest.mark.parametrize("field", ["team..name", "$where", "a.1", "name ", "x'); DROP TABLE t; --", ".name"])
async def test_an_invalid_field_path_raises_invalid_input_naming_it(catalog: Catalog, field: str) -> None:
    where = {field: 1}
    for call in (catalog.find("people", where), catalog.count("people", where), catalog.delete_many("people", where)):
        with pytest.raises(InvalidInput) as raised:
            await call
        assert repr(field) in raised.value.message
    with pytest.raises(InvalidInput, match="order_by"):
        await catalog.find("people", order_by=field)


@pytest.mark.parametrize("condition", [{"$regex": "^A"}, {"$where": "1"}, {"name": "core"}, {"$gt": 1, "$lt": 5}])
async def test_an_unknown_operator_raises_invalid_input_naming_the_field_and_condition(
    catalog: Catalog, condition: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput) as raised:
        await catalog.find("people", {"team": condition})
    assert "'team'" in raised.value.message
    assert raised.value.details == {"field": "team", "condition": str(condition)}


@pytest.mark.parametrize(
    "condition",
    [
        ["eng"], {"$eq": {"name": "core"}}, {"$ne": [1]}, {"$in": "eng"}, {"$in": [["eng"]]}, {"$nin": 5},
        {"$gt": True}, {"$lt": None}, {"$gte": [1]}, {"$exists": 1}, math.nan, {"$lte": math.inf}, 2**64,
    ],
    ids=str,
)
async def test_an_operand_that_is_not_a_fitting_json_scalar_raises_invalid_input(catalog: Catalog, condition: Any) -> None:
    with pytest.raises(InvalidInput, match="'tags'"):
        await catalog.find("people", {"tags": condition})


NOT_PLAIN_JSON = [
    {"at": datetime(2024, 1, 1, tzinfo=UTC)}, {"score": math.nan}, {"raw": b"bytes"}, {"_id": "x"}, ["not", "a", "dict"],
]


@pytest.mark.parametrize("doc", NOT_PLAIN_JSON, ids=str)
async def test_a_record_that_is_not_plain_json_raises_invalid_input(catalog: Catalog, doc: Any) -> None:
    with pytest.raises(InvalidInput):
        await catalog.insert("plugins", "p", doc)
    with pytest.raises(InvalidInput):
        await catalog.upsert_many("plugins", [("ok", {}), ("p", doc)])
    assert await catalog.count("plugins") == 0, "a refused batch writes nothing"


NOT_TOP_LEVEL_JSON_FIELDS = [{"a.b": 1}, {"$set": {"a": 1}}, {"_id": "x"}, {"": 1}, {"at": datetime(2024, 1, 1)}]


@pytest.mark.parametrize("changes", NOT_TOP_LEVEL_JSON_FIELDS, ids=str)
async def test_update_refuses_changes_that_are_not_top_level_json_fields(catalog: Catalog, changes: dict[str, Any]) -> None:
    await catalog.insert("tasks", "t1", {"status": "PENDING"})
    with pytest.raises(InvalidInput):
        await catalog.update("tasks", "t1", changes)
    assert await catalog.get("tasks", "t1") == {"status": "PENDING", "id": "t1"}


@pytest.mark.parametrize("page", [{"limit": -1}, {"offset": -1}, {"limit": 1.5}])
async def test_a_negative_or_fractional_page_raises_invalid_input(catalog: Catalog, page: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        await catalog.find("people", **page)


# -- MongoDB only --------------------------------------------------------------------------------


async def test_mongo_unreachable_server_raises_transient_error_on_connect() -> None:
    catalog = MongoCatalog(
        "mongodb://127.0.0.1:1", "sluice", client_factory=lambda url: AsyncIOMotorClient(url, serverSelectionTimeoutMS=200)
    )
    with pytest.raises(TransientError) as raised:
        await catalog.connect()
    assert isinstance(raised.value.__cause__, ServerSelectionTimeoutError)
    assert not catalog.connected


# -- declared indexes ------------------------------------------------------------------------------

# Fields of a declared index hold strings, numbers or null, or are missing (see `declare_index`).
QUEUED = {
    "q1": {"claimed_by": None, "collection_id": "col_b", "queued_at": 3.5, "n": 1},
    "q2": {"claimed_by": None, "collection_id": "col_a", "queued_at": 2, "n": "1"},
    "q3": {"claimed_by": "tsk_1", "collection_id": "col_a", "queued_at": 1.0, "n": True},
    "q4": {"collection_id": "col_a", "queued_at": 2, "n": [1, 2]},
    "q5": {"claimed_by": None, "collection_id": "col_c", "queued_at": "late", "n": None},
    "q6": {"claimed_by": "tsk_2", "collection_id": 7, "n": {"a": 1}},
    "q7": {"claimed_by": None, "collection_id": "col_a", "queued_at": 1.5},
    "q8": {"claimed_by": "tsk_1", "collection_id": "col_b", "queued_at": 0},
}
INDEXED_QUERIES: list[tuple[dict[str, Any] | None, dict[str, Any]]] = [
    ({"claimed_by": None}, {}),
    ({"claimed_by": None}, {"order_by": "collection_id", "limit": 1}),
    ({"claimed_by": None, "collection_id": {"$gt": "col_a"}}, {"order_by": "collection_id", "limit": 1}),
    ({"claimed_by": None, "collection_id": "col_a"}, {"order_by": "queued_at"}),
    ({"claimed_by": None, "collection_id": "col_a"}, {"order_by": "queued_at", "descending": True, "limit": 1}),
    ({"claimed_by": None, "collection_id": "col_a"}, {"order_by": "queued_at", "limit": 1, "offset": 1}),
    ({"claimed_by": {"$ne": None}}, {}),
    ({"claimed_by": {"$gt": ""}}, {"order_by": "claimed_by"}),
    ({"claimed_by": {"$gt": "tsk_1"}}, {"order_by": "claimed_by", "limit": 1}),
    ({"claimed_by": "tsk_1"}, {}),
    ({"claimed_by": {"$in": ["tsk_2", None]}}, {"order_by": "queued_at"}),
    ({"claimed_by": {"$nin": ["tsk_2", None]}}, {}),
    ({"claimed_by": {"$exists": False}}, {}),
    ({"claimed_by": {"$exists": True}}, {}),
    ({"collection_id": 7}, {}),
    ({"collection_id": {"$in": [7, "col_c"]}}, {}),
    ({"collection_id": {"$ne": "col_a"}}, {"order_by": "collection_id"}),
    ({"collection_id": {"$nin": [7]}}, {"order_by": "collection_id", "descending": True}),
    ({"queued_at": {"$gte": 1.5}}, {"order_by": "queued_at"}),
    ({"queued_at": {"$lt": 2}}, {}),
    ({"queued_at": {"$gt": "a"}}, {}),
    ({"queued_at": 2}, {}),
    ({"queued_at": 2.0, "claimed_by": None}, {}),
    ({"queued_at": True}, {}),
    (None, {"order_by": "queued_at"}),
    (None, {"order_by": "queued_at", "descending": True, "limit": 3, "offset": 2}),
    (None, {"order_by": "claimed_by"}),
    ({"n": 1}, {}),
    ({"id": "q3"}, {}),
    ({"id": {"$in": ["q1", "q5", "zz", 4]}}, {}),
    ({"id": {"$nin": ["q1", "q5"]}, "claimed_by": None}, {}),
    ({"id": {"$ne": "q1"}, "collection_id": "col_b"}, {}),
    ({"id": {"$gte": "q6"}}, {"order_by": "id", "descending": True}),
    ({"id": {"$lt": 5}}, {}),
    ({"id": None}, {}),
    ({"id": {"$exists": True}}, {"limit": 2}),
]


@pytest.mark.parametrize(("where", "options"), INDEXED_QUERIES)
async def test_declared_indexes_change_no_result(catalog: Catalog, where: dict[str, Any] | None, options: dict[str, Any]) -> None:
    """The same records in a kind with declared indexes and in a kind without give the same
    results, which are those of the reference (the in-memory catalog); `id` filters on the key."""
    declare_index("contract_queue", "claimed_by")
    declare_index("contract_queue", "claimed_by", "collection_id", "queued_at")
    await catalog.upsert_many("contract_queue", list(QUEUED.items()))
    await catalog.upsert_many("contract_plain", list(QUEUED.items()))
    async with MemoryCatalog() as reference:
        await reference.upsert_many("contract_plain", list(QUEUED.items()))
        expected = [r["id"] for r in await reference.find("contract_plain", where, **options)]
        assert await reference.count("contract_plain", where) == len(await reference.find("contract_plain", where))
    assert [r["id"] for r in await catalog.find("contract_queue", where, **options)] == expected
    assert [r["id"] for r in await catalog.find("contract_plain", where, **options)] == expected
    if not options:
        assert await catalog.count("contract_queue", where) == len(expected)


async def test_updates_and_deletes_filter_declared_fields_alike(catalog: Catalog) -> None:
    declare_index("contract_claims", "claimed_by", "collection_id")
    await catalog.upsert_many("contract_claims", list(QUEUED.items()))
    assert await catalog.update("contract_claims", "q1", {"claimed_by": "tsk_9"}, expect={"claimed_by": None}) is not None
    assert await catalog.update("contract_claims", "q1", {"claimed_by": "tsk_8"}, expect={"claimed_by": None}) is None
    with pytest.raises(WriteConflict):
        await catalog.transact([Update("contract_claims", "q3", {"claimed_by": "x"}, expect={"claimed_by": None})])
    assert await catalog.delete_many("contract_claims", {"claimed_by": {"$in": ["tsk_1", "tsk_9"]}}) == 3
    assert sorted(r["id"] for r in await catalog.find("contract_claims")) == ["q2", "q4", "q5", "q6", "q7"]


def test_an_index_needs_fields_with_valid_paths() -> None:
    with pytest.raises(InvalidInput):
        declare_index("contract_bad")
    with pytest.raises(InvalidInput):
        declare_index("contract_bad", "a..b")
    with pytest.raises(InvalidInput):
        declare_index("contract_bad", "id")
    with pytest.raises(InvalidInput):
        declare_index("Bad-Kind", "a")


# -- SQLite only: one file, many writers -----------------------------------------------------------


async def test_sqlite_records_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "catalog.sqlite3"
    async with SqliteCatalog(path) as catalog:
        await catalog.insert("plugins", "p", {"name": "scanner", "versions": [1, 2]})
        await catalog.upsert_many("tasks", [("t1", {"status": "PENDING"}), ("t2", {"status": "PENDING"})])
        await catalog.update("tasks", "t1", {"status": "RUNNING"})
        await catalog.delete("tasks", "t2")

    async with SqliteCatalog(path) as reopened:
        assert await reopened.get("plugins", "p") == {"name": "scanner", "versions": [1, 2], "id": "p"}
        assert await reopened.find("tasks") == [{"status": "RUNNING", "id": "t1"}]
        health = await reopened.health()
        assert health.status == "ok" and health.detail["journal_mode"] == "wal"


async def test_sqlite_lock_held_past_the_busy_timeout_raises_transient_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_catalog, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "catalog.sqlite3"
    async with SqliteCatalog(path) as catalog:
        await catalog.insert("tasks", "t1", {})
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(TransientError) as raised:
                await catalog.insert("tasks", "t2", {})
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
            assert await catalog.get("tasks", "t1") is not None, "readers are not blocked by the writer"
        finally:
            other.execute("ROLLBACK")
            other.close()
        await catalog.insert("tasks", "t2", {})


def _insert_from_another_process(path: str, prefix: str, count: int, start: Any, results: Any) -> None:
    """Runs in a spawned process: wait for the others, open the catalog, insert `count` records."""

    async def write() -> None:
        start.wait(timeout=60)
        async with SqliteCatalog(Path(path)) as catalog:
            for n in range(count):
                await catalog.insert("documents", f"{prefix}-{n:04d}", {"writer": prefix, "n": n})

    try:
        asyncio.run(write())
        results.put((prefix, None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which asserts on it
        results.put((prefix, repr(exc)))


async def test_sqlite_writers_in_two_processes_and_the_server_lose_nothing(tmp_path: Path) -> None:
    # GIVEN a new file that two worker processes and the server open at the same moment
    path = tmp_path / "catalog.sqlite3"
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(3), spawn.Queue()
    workers = [
        spawn.Process(target=_insert_from_another_process, args=(str(path), prefix, 200, start, results))
        for prefix in ("ray-a", "ray-b")
    ]
    for worker in workers:
        worker.start()
    try:
        await asyncio.to_thread(start.wait, 60)
        async with SqliteCatalog(path) as server:
            # WHEN the server writes tasks while the workers write documents, one transaction each
            for n in range(200):
                await server.insert("tasks", f"task-{n:04d}", {"n": n})
            reports = dict([await asyncio.to_thread(results.get, True, 120) for _ in workers])

            # THEN no writer saw an error and every record is there
            assert reports == {"ray-a": None, "ray-b": None}
            assert await server.count("documents") == 400
            assert await server.count("documents", {"writer": "ray-b", "n": {"$gte": 0}}) == 200
            assert await server.count("tasks") == 200
    finally:
        for worker in workers:
            await asyncio.to_thread(worker.join, 120)
    assert [worker.exitcode for worker in workers] == [0, 0]


async def test_sqlite_serves_the_schedulers_queue_reads_from_its_indexes_without_sorting(tmp_path: Path) -> None:
    """The reads `IngestScheduler` makes on every wake (functions/runtime/scheduler.py) each search
    a declared index of the queue, and none sorts: their cost does not grow with the queue."""
    import functions.records.collection
    import functions.runtime.scheduler

    assert functions.records.collection.INGEST_QUEUE == "ingest_queue" and functions.runtime.scheduler.TASKS == "tasks"  # declared

    async with SqliteCatalog(tmp_path / "catalog.sqlite3") as catalog:
        await catalog.upsert_many("ingest_queue", [(f"col_{i % 3}|k{i}", {
            "collection_id": f"col_{i % 3}", "queued_at": float(i), "claimed_by": None if i % 4 else f"tsk_{i % 2}"})
            for i in range(300)])
        reads = [
            ({"claimed_by": None}, "collection_id", False, 1, 0),
            ({"claimed_by": None, "collection_id": {"$gt": "col_0"}}, "collection_id", False, 1, 0),
            ({"claimed_by": None, "collection_id": "col_1"}, "queued_at", False, 1, 0),
            ({"claimed_by": None, "collection_id": "col_1"}, "queued_at", True, 1, 0),
            ({"claimed_by": None, "collection_id": "col_1"}, "queued_at", False, 1, 49),
            ({"claimed_by": None, "collection_id": "col_1"}, "queued_at", False, 50, 0),
            ({"claimed_by": {"$gt": ""}}, "claimed_by", False, 1, 0),
            ({"claimed_by": "tsk_0"}, None, False, 1000, 0),
            ({"id": {"$in": ["col_1|k1", "col_2|k2"]}}, None, False, None, 0),
        ]
        for where, order_by, descending, limit, offset in reads:
            scalars = indexed_fields("ingest_queue")
            where_sql, params = sqlite_catalog._compile_where(where, scalars)
            order_sql, order_params = sqlite_catalog._compile_order(order_by, descending, scalars)
            sql = (f'EXPLAIN QUERY PLAN SELECT doc FROM "kind_ingest_queue" WHERE {where_sql} ORDER BY {order_sql} '
                   "LIMIT ? OFFSET ?")
            arguments = [*params, *order_params, -1 if limit is None else limit, offset]
            rows = await catalog._call(lambda sql=sql, arguments=arguments: catalog._db().execute(sql, arguments).fetchall())
            plan = " | ".join(row[3] for row in rows)
            assert "USING INDEX" in plan and "TEMP B-TREE" not in plan, (where, order_by, plan)
            assert await catalog.find("ingest_queue", where, order_by=order_by, descending=descending, limit=limit, offset=offset)
        names = await catalog._call(lambda: catalog._db().execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'kind_ingest_queue'").fetchall())
        assert len([n for (n,) in names if n.startswith("index_ingest_queue_")]) == len(declared_indexes("ingest_queue")) >= 3


async def test_sqlite_creates_an_index_declared_after_its_kind_was_first_used(tmp_path: Path) -> None:
    async with SqliteCatalog(tmp_path / "catalog.sqlite3") as catalog:
        await catalog.insert("contract_late", "a", {"x": "1"})
        declare_index("contract_late", "x")
        assert [r["id"] for r in await catalog.find("contract_late", {"x": "1"})] == ["a"]
        plan = await catalog._call(lambda: catalog._db().execute(
            "EXPLAIN QUERY PLAN SELECT doc FROM \"kind_contract_late\" WHERE json_extract(doc, '$.x') = '1'").fetchall())
        assert "USING INDEX" in plan[0][3]
