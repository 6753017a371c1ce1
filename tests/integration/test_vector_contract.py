"""One contract for the VectorIndex port, run against every adapter: Qdrant Edge on a temporary
folder, and qdrant-client's local mode (the same client code that talks to a Qdrant server).

Edge-only at the end: persistence across close and reopen, a few thousand points, and the
background optimize (never per write; once writes go quiet or pile up; dropped or awaited by close).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

import infra.vectors.edge as edge_module
from events.errors import Conflict, InvalidInput, NotConnected, NotFound
from infra.vectors import EdgeVectorIndex, Point, QdrantVectorIndex, VectorIndex, VectorSpec, point_id

pytestmark = pytest.mark.integration

SPEC = {"text": VectorSpec(size=3, distance="cosine"), "image": VectorSpec(size=2, distance="euclid")}


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(params=["edge", "qdrant-local"])
def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], VectorIndex]:
    """A factory for an unconnected adapter of the parametrized kind."""
    if request.param == "edge":
        return lambda: EdgeVectorIndex(tmp_path / "vectors")
    return lambda: QdrantVectorIndex(location=":memory:")


@pytest.fixture
async def index(make_index: Callable[[], VectorIndex]) -> AsyncIterator[VectorIndex]:
    async with make_index() as connected:
        yield connected


@pytest.fixture
def name() -> str:
    return f"docs-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def collection(index: VectorIndex, name: str) -> str:
    await index.create_collection(name, SPEC)
    return name


def pid(label: str) -> str:
    return point_id("contract", label)


def close_to(actual: list[float], expected: list[float]) -> bool:
    return len(actual) == len(expected) and all(math.isclose(a, e, abs_tol=1e-5) for a, e in zip(actual, expected, strict=False))


def unit(*xs: float) -> list[float]:
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


# -- lifecycle -------------------------------------------------------------------------------------


async def test_every_call_before_connect_raises_not_connected(make_index: Callable[[], VectorIndex]) -> None:
    index = make_index()
    with pytest.raises(NotConnected):
        await index.create_collection("c", SPEC)
    with pytest.raises(NotConnected):
        await index.list_collections()
    with pytest.raises(NotConnected):
        await index.upsert("c", [])
    with pytest.raises(NotConnected):
        await index.search("c", "text", [1.0, 0.0, 0.0])
    with pytest.raises(NotConnected):
        await index.count("c")
    with pytest.raises(NotConnected):
        await index.optimize("c")
    assert (await index.health()).status == "down"


async def test_a_connected_index_reports_healthy(index: VectorIndex) -> None:
    assert (await index.health()).status == "ok"


async def test_a_closed_index_refuses_calls(make_index: Callable[[], VectorIndex], name: str) -> None:
    index = make_index()
    await index.connect()
    await index.create_collection(name, SPEC)
    await index.close()
    with pytest.raises(NotConnected):
        await index.count(name)


# -- collections -----------------------------------------------------------------------------------


async def test_create_collection_is_idempotent_for_the_same_spec(index: VectorIndex, name: str) -> None:
    await index.create_collection(name, SPEC)
    await index.create_collection(name, dict(SPEC))
    assert await index.list_collections() == [name]


async def test_create_collection_with_another_spec_raises_conflict_naming_the_difference(
    index: VectorIndex, collection: str
) -> None:
    other = {"text": VectorSpec(size=4, distance="cosine"), "image": SPEC["image"]}
    with pytest.raises(Conflict) as caught:
        await index.create_collection(collection, other)
    assert collection in caught.value.message
    assert "'text'" in caught.value.message and "size 3" in caught.value.message and "size 4" in caught.value.message
    with pytest.raises(Conflict):
        await index.create_collection(collection, {**SPEC, "audio": VectorSpec(size=8, distance="dot")})
    assert await index.collection_vectors(collection) == SPEC


async def test_create_collection_refuses_an_empty_or_malformed_spec(index: VectorIndex, name: str) -> None:
    with pytest.raises(InvalidInput):
        await index.create_collection(name, {})
    with pytest.raises(InvalidInput):
        await index.create_collection(name, {"v": VectorSpec(size=0)})
    with pytest.raises(InvalidInput):
        await index.create_collection(name, {"v": VectorSpec(size=2, distance="manhattan")})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        await index.create_collection("../escape", SPEC)
    assert await index.list_collections() == []


async def test_collection_vectors_and_list_collections(index: VectorIndex, name: str) -> None:
    assert await index.collection_vectors(name) is None
    second = f"a-{name}"
    await index.create_collection(name, SPEC)
    await index.create_collection(second, {"only": VectorSpec(size=5, distance="dot")})
    assert await index.collection_vectors(name) == SPEC
    assert await index.collection_vectors(second) == {"only": VectorSpec(size=5, distance="dot")}
    assert await index.list_collections() == sorted([name, second])


async def test_delete_collection_drops_it_and_its_points(index: VectorIndex, collection: str) -> None:
    await index.upsert(collection, [Point(pid("a"), {"text": unit(1, 0, 0)})])
    assert await index.delete_collection(collection) is True
    assert await index.delete_collection(collection) is False
    assert await index.collection_vectors(collection) is None
    assert await index.list_collections() == []
    with pytest.raises(NotFound):
        await index.count(collection)
    await index.create_collection(collection, {"v": VectorSpec(size=2)})  # the name is free again
    assert await index.count(collection) == 0


async def test_a_missing_collection_raises_not_found_naming_it(index: VectorIndex, name: str) -> None:
    with pytest.raises(NotFound) as caught:
        await index.upsert(name, [Point(pid("a"), {"text": unit(1, 0, 0)})])
    assert name in caught.value.message
    with pytest.raises(NotFound):
        await index.search(name, "text", [1.0, 0.0, 0.0])
    with pytest.raises(NotFound):
        await index.count(name)
    with pytest.raises(NotFound):
        await index.retrieve(name, [pid("a")])
    with pytest.raises(NotFound):
        await index.delete_points(name, [pid("a")])
    with pytest.raises(NotFound):
        await index.optimize(name)


# -- upsert, count, retrieve -----------------------------------------------------------------------


async def test_upsert_acknowledges_every_point_and_retrieve_returns_vectors_and_payload(
    index: VectorIndex, collection: str
) -> None:
    # Cosine collections store vectors normalized, so the round trip uses unit vectors there.
    points = [
        Point(pid("a"), {"text": unit(1, 2, 3), "image": [0.5, -1.25]}, {"lang": "en", "page": 1, "tags": ["x", "y"]}),
        Point(pid("b"), {"text": unit(0, 1, 0), "image": [3.0, 4.0]}, {"lang": "de", "nested": {"ok": True}}),
    ]
    assert await index.upsert(collection, points) == 2
    assert await index.count(collection) == 2

    got = {p.id: p for p in await index.retrieve(collection, [pid("b"), pid("a"), pid("missing")])}
    assert set(got) == {pid("a"), pid("b")}
    for expected in points:
        actual = got[expected.id]
        assert set(actual.vectors) == set(expected.vectors)
        for vector_name, vector in expected.vectors.items():
            assert close_to(list(actual.vectors[vector_name]), list(vector)), vector_name
        assert actual.payload == expected.payload


async def test_retrieve_keeps_the_order_asked_for(index: VectorIndex, collection: str) -> None:
    ids = [pid(str(i)) for i in range(5)]
    await index.upsert(collection, [Point(i, {"image": [float(n), 0.0]}) for n, i in enumerate(ids)])
    asked = [ids[3], ids[0], ids[4]]
    assert [p.id for p in await index.retrieve(collection, asked)] == asked


async def test_upsert_of_the_same_ids_overwrites(index: VectorIndex, collection: str) -> None:
    first = [Point(pid(str(i)), {"image": [float(i), 0.0]}, {"v": 1}) for i in range(3)]
    second = [Point(pid(str(i)), {"image": [float(i), 1.0]}, {"v": 2}) for i in range(3)]
    assert await index.upsert(collection, first) == 3
    assert await index.upsert(collection, second) == 3
    assert await index.count(collection) == 3
    got = await index.retrieve(collection, [pid("2")])
    assert got[0].payload == {"v": 2}
    assert close_to(list(got[0].vectors["image"]), [2.0, 1.0])


async def test_an_empty_batch_writes_nothing(index: VectorIndex, collection: str) -> None:
    assert await index.upsert(collection, []) == 0
    assert await index.count(collection) == 0


async def test_an_unknown_vector_name_raises_invalid_input_and_writes_nothing_of_the_batch(
    index: VectorIndex, collection: str
) -> None:
    batch = [
        Point(pid("good"), {"text": unit(1, 0, 0)}),
        Point(pid("bad"), {"audio": [1.0, 2.0]}),
    ]
    with pytest.raises(InvalidInput) as caught:
        await index.upsert(collection, batch)
    assert collection in caught.value.message and "'audio'" in caught.value.message
    assert await index.count(collection) == 0
    assert await index.retrieve(collection, [pid("good")]) == []


async def test_a_wrong_dimension_raises_invalid_input_naming_expected_and_actual_and_writes_nothing(
    index: VectorIndex, collection: str
) -> None:
    batch = [Point(pid(str(i)), {"image": [1.0, float(i)]}) for i in range(4)]
    batch.append(Point(pid("wrong"), {"image": [1.0, 2.0, 3.0]}))
    with pytest.raises(InvalidInput) as caught:
        await index.upsert(collection, batch)
    message = caught.value.message
    assert collection in message and "'image'" in message and "expected 2" in message and "dimension 3" in message
    assert caught.value.details["expected"] == 2 and caught.value.details["actual"] == 3
    assert await index.count(collection) == 0


async def test_non_finite_values_and_non_json_payloads_are_refused(index: VectorIndex, collection: str) -> None:
    with pytest.raises(InvalidInput):
        await index.upsert(collection, [Point(pid("nan"), {"image": [math.nan, 0.0]})])
    with pytest.raises(InvalidInput):
        await index.upsert(collection, [Point(pid("obj"), {"image": [0.0, 0.0]}, {"when": object()})])
    assert await index.count(collection) == 0


async def test_a_non_uuid_point_id_is_refused(index: VectorIndex, collection: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        await index.upsert(collection, [Point(pid("ok"), {"image": [0.0, 0.0]}), Point("doc-1", {"image": [0.0, 0.0]})])
    assert "doc-1" in caught.value.message
    assert await index.count(collection) == 0
    with pytest.raises(InvalidInput):
        await index.retrieve(collection, ["doc-1"])
    with pytest.raises(InvalidInput):
        await index.delete_points(collection, ["doc-1"])


async def test_points_may_carry_only_some_of_the_named_vectors(index: VectorIndex, collection: str) -> None:
    await index.upsert(collection, [
        Point(pid("text-only"), {"text": unit(1, 0, 0)}, {"has": "text"}),
        Point(pid("image-only"), {"image": [1.0, 1.0]}, {"has": "image"}),
        Point(pid("both"), {"text": unit(0, 1, 0), "image": [2.0, 2.0]}, {"has": "both"}),
    ])
    assert await index.count(collection) == 3
    by_image = await index.search(collection, "image", [1.0, 1.0], limit=10)
    assert [h.id for h in by_image] == [pid("image-only"), pid("both")]
    by_text = await index.search(collection, "text", [1.0, 0.0, 0.0], limit=10)
    assert {h.id for h in by_text} == {pid("text-only"), pid("both")}
    (text_only,) = await index.retrieve(collection, [pid("text-only")])
    assert set(text_only.vectors) == {"text"}


async def test_delete_points_removes_them_and_reports_how_many_were_asked(index: VectorIndex, collection: str) -> None:
    await index.upsert(collection, [Point(pid(str(i)), {"image": [float(i), 0.0]}) for i in range(4)])
    assert await index.delete_points(collection, [pid("0"), pid("1"), pid("never")]) == 3
    assert await index.count(collection) == 2
    assert await index.retrieve(collection, [pid("0"), pid("1")]) == []
    assert [p.id for p in await index.retrieve(collection, [pid("2"), pid("3")])] == [pid("2"), pid("3")]


async def test_numpy_arrays_are_written_and_searched_like_float_lists(index: VectorIndex, collection: str) -> None:
    await index.upsert(collection, [
        Point(pid("f32"), {"image": np.array([1.0, 2.0], dtype=np.float32)}, {"k": "f32"}),
        Point(pid("f64"), {"image": np.array([3.0, 4.0])}, {"k": "f64"}),
        Point(pid("list"), {"image": [5.0, 6.0]}, {"k": "list"}),
    ])
    hits = await index.search(collection, "image", np.array([2.9, 4.0], dtype=np.float32), limit=3)
    assert [h.payload["k"] for h in hits] == ["f64", "f32", "list"]
    (got,) = await index.retrieve(collection, [pid("f64")])
    assert close_to(list(got.vectors["image"]), [3.0, 4.0])
    with pytest.raises(InvalidInput) as caught:
        await index.upsert(collection, [Point(pid("nan"), {"image": np.array([math.nan, 1.0], dtype=np.float32)})])
    assert pid("nan") in caught.value.message
    assert await index.count(collection) == 3


async def test_optimize_leaves_every_point_where_it_was_and_deleted_points_gone(index: VectorIndex, collection: str) -> None:
    await index.upsert(collection, [Point(pid(str(i)), {"image": [float(i), 0.0]}, {"i": i}) for i in range(50)])
    await index.delete_points(collection, [pid(str(i)) for i in range(0, 50, 2)])
    before = [h.id for h in await index.search(collection, "image", [10.2, 0.0], limit=5)]  # searchable before
    assert before[0] == pid("11")
    await index.optimize(collection)
    await index.optimize(collection)  # idempotent
    assert await index.count(collection) == 25
    assert [h.id for h in await index.search(collection, "image", [10.2, 0.0], limit=5)] == before


# -- search ----------------------------------------------------------------------------------------

# (distance, stored vectors, query, expected order best first, higher score is better)
SEARCH_CASES = {
    "cosine": ({"a": [1, 0], "b": [0.8, 0.6], "c": [0, 1], "d": [-1, 0]}, [1.0, 0.1], "abcd", True),
    "dot": ({"a": [1, 0], "b": [2, 0], "c": [0, 3], "d": [-1, 0]}, [1.0, 0.0], "bacd", True),
    "euclid": ({"a": [0, 0], "b": [1, 0], "c": [3, 0], "d": [10, 0]}, [0.9, 0.0], "bacd", False),
}


@pytest.mark.parametrize("distance", list(SEARCH_CASES))
async def test_search_returns_the_nearest_first_with_the_engines_score(
    index: VectorIndex, name: str, distance: str
) -> None:
    stored, query, order, higher_is_better = SEARCH_CASES[distance]
    await index.create_collection(name, {"v": VectorSpec(size=2, distance=distance)})  # type: ignore[arg-type]
    await index.upsert(name, [Point(pid(k), {"v": [float(x) for x in v]}, {"k": k}) for k, v in stored.items()])

    hits = await index.search(name, "v", query, limit=4)
    assert [h.payload["k"] for h in hits] == list(order)
    assert [h.id for h in hits] == [pid(k) for k in order]
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=higher_is_better)
    if distance == "euclid":
        assert math.isclose(hits[0].score, 0.1, abs_tol=1e-4)  # a distance, not a similarity
    if distance == "dot":
        assert math.isclose(hits[0].score, 2.0, abs_tol=1e-4)

    top2 = await index.search(name, "v", query, limit=2)
    assert [h.id for h in top2] == [pid(k) for k in order[:2]]


async def test_search_refuses_an_unknown_vector_a_wrong_dimension_and_a_bad_limit(
    index: VectorIndex, collection: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await index.search(collection, "audio", [1.0, 0.0])
    assert "'audio'" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        await index.search(collection, "text", [1.0, 0.0])
    assert "expected 3" in caught.value.message
    with pytest.raises(InvalidInput):
        await index.search(collection, "text", [1.0, 0.0, 0.0], limit=0)


FILTER_POINTS = [
    ("en-1", "en", 1, True),
    ("en-2", "en", 2, False),
    ("de-1", "de", 1, True),
    ("fr-3", "fr", 3, False),
]


async def test_search_and_count_with_filters_on_payload(index: VectorIndex, collection: str) -> None:
    await index.upsert(collection, [
        Point(pid(key), {"image": [float(i), 0.0]}, {"lang": lang, "page": page, "ok": ok, "tags": [lang, "all"]})
        for i, (key, lang, page, ok) in enumerate(FILTER_POINTS)
    ])
    assert await index.count(collection, {"lang": "en"}) == 2
    assert await index.count(collection, {"page": 1}) == 2
    assert await index.count(collection, {"ok": True}) == 2
    assert await index.count(collection, {"ok": False}) == 2
    assert await index.count(collection, {"lang": "en", "page": 2}) == 1
    assert await index.count(collection, {"lang": {"$in": ["de", "fr"]}}) == 2
    assert await index.count(collection, {"page": {"$in": [1, 3]}}) == 3
    assert await index.count(collection, {"tags": "all"}) == 4  # an array field matches any element
    assert await index.count(collection, {"lang": "xx"}) == 0
    assert await index.count(collection, {"lang": {"$in": []}}) == 0

    hits = await index.search(collection, "image", [0.0, 0.0], limit=10, where={"lang": {"$in": ["en", "fr"]}})
    assert [h.id for h in hits] == [pid("en-1"), pid("en-2"), pid("fr-3")]
    hits = await index.search(collection, "image", [0.0, 0.0], limit=1, where={"page": 1, "ok": True})
    assert [h.id for h in hits] == [pid("en-1")]


@pytest.mark.parametrize(
    "where",
    [{"score": 0.5}, {"lang": None}, {"lang": {"$gt": 1}}, {"lang": {"$in": ["en", 1]}}, {"lang": {"$in": "en"}}],
    ids=["float", "none", "unknown-operator", "mixed-in", "in-not-a-list"],
)
async def test_filters_that_cannot_match_exactly_are_refused(
    index: VectorIndex, collection: str, where: dict[str, object]
) -> None:
    with pytest.raises(InvalidInput):
        await index.count(collection, where)
    with pytest.raises(InvalidInput):
        await index.search(collection, "image", [0.0, 0.0], where=where)


async def test_concurrent_upserts_and_searches_all_land(index: VectorIndex, collection: str) -> None:
    async def write(batch: int) -> int:
        points = [Point(pid(f"{batch}-{i}"), {"image": [float(batch), float(i)]}) for i in range(20)]
        return await index.upsert(collection, points)

    async def read() -> int:
        return len(await index.search(collection, "image", [0.0, 0.0], limit=5))

    results = await asyncio.gather(*(write(b) for b in range(8)), *(read() for _ in range(8)))
    assert sum(results[:8]) == 160
    assert await index.count(collection) == 160


# -- edge only -------------------------------------------------------------------------------------


async def test_edge_keeps_collections_specs_and_points_across_close_and_reopen(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "vectors"
    points = [Point(pid(str(i)), {"image": [float(i), 1.0]}, {"i": i}) for i in range(10)]
    async with EdgeVectorIndex(folder) as index:
        await index.create_collection(name, SPEC)
        await index.create_collection(f"{name}-empty", {"v": VectorSpec(size=4, distance="dot")})
        await index.upsert(name, points)
        await index.delete_points(name, [pid("9")])

    async with EdgeVectorIndex(folder) as index:
        assert await index.list_collections() == [name, f"{name}-empty"]
        assert await index.collection_vectors(name) == SPEC
        assert await index.collection_vectors(f"{name}-empty") == {"v": VectorSpec(size=4, distance="dot")}
        assert await index.count(name) == 9
        (third,) = await index.retrieve(name, [pid("3")])
        assert close_to(list(third.vectors["image"]), [3.0, 1.0]) and third.payload == {"i": 3}
        hits = await index.search(name, "image", [4.1, 1.0], limit=1)
        assert hits[0].id == pid("4")
        await index.create_collection(name, SPEC)  # still idempotent after reopening
        with pytest.raises(Conflict):
            await index.create_collection(name, {"v": VectorSpec(size=2)})


async def test_edge_upserts_and_searches_five_thousand_points_in_batches(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(5000, 64)).astype(np.float32)
    ids = [pid(f"bulk-{i}") for i in range(len(vectors))]
    async with EdgeVectorIndex(tmp_path / "vectors") as index:
        await index.create_collection(name, {"v": VectorSpec(size=64, distance="cosine")})
        started = time.perf_counter()
        acknowledged = 0
        for start in range(0, len(vectors), 500):
            batch = [
                Point(ids[i], {"v": vectors[i].tolist()}, {"shard": i % 7})
                for i in range(start, min(start + 500, len(vectors)))
            ]
            acknowledged += await index.upsert(name, batch)
        assert acknowledged == 5000
        assert await index.count(name) == 5000
        assert await index.count(name, {"shard": 3}) == sum(1 for i in range(5000) if i % 7 == 3)
        for i in range(0, 5000, 250):
            hits = await index.search(name, "v", vectors[i].tolist(), limit=5)
            assert hits[0].id == ids[i] and len(hits) == 5
        hits = await index.search(name, "v", vectors[10].tolist(), limit=3, where={"shard": 10 % 7})
        assert hits[0].id == ids[10]
        assert time.perf_counter() - started < 30


async def test_edge_a_cancelled_call_ends_its_engine_work_before_letting_go_of_the_shard(
    tmp_path: Path, name: str
) -> None:
    folder = tmp_path / "vectors"
    async with EdgeVectorIndex(folder) as index:
        await index.create_collection(name, {"v": VectorSpec(size=64, distance="dot")})
    rng = np.random.default_rng(3)
    batch = [Point(pid(f"c-{i}"), {"v": rng.normal(size=64).tolist()}) for i in range(2000)]

    index = EdgeVectorIndex(folder)
    await index.connect()
    upsert = asyncio.create_task(index.upsert(name, batch))  # its first call also opens the shard
    await asyncio.sleep(0.005)
    upsert.cancel()
    with pytest.raises(asyncio.CancelledError):
        await upsert
    assert await index.count(name) in (0, 2000)  # all of the batch or none of it
    await index.close()

    async with EdgeVectorIndex(folder) as reopened:  # the shard was closed, not left locked
        assert await reopened.count(name) in (0, 2000)


# -- edge only: the background optimize ------------------------------------------------------------


@pytest.fixture
def optimizes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The collections Edge optimized, in order (the engine's optimize still runs)."""
    calls: list[str] = []
    real = edge_module._optimize

    def counting(name: str, shard: object) -> None:
        calls.append(name)
        real(name, shard)  # type: ignore[arg-type]

    monkeypatch.setattr(edge_module, "_optimize", counting)
    return calls


async def _settle(index: EdgeVectorIndex, seconds: float) -> None:
    """Let background optimizes that are due run."""
    await asyncio.sleep(seconds)
    for collection in list(index._open.values()):
        if collection.optimizer is not None:
            await asyncio.wait_for(asyncio.shield(collection.optimizer), 10)


async def test_edge_never_optimizes_per_write_and_searches_unoptimized_points_exactly(
    tmp_path: Path, name: str, optimizes: list[str]
) -> None:
    async with EdgeVectorIndex(tmp_path / "vectors", optimize_quiet_s=60) as index:
        await index.create_collection(name, {"v": VectorSpec(size=2, distance="euclid")})
        for b in range(5):
            await index.upsert(name, [Point(pid(f"{b}-{i}"), {"v": np.array([b, i], dtype=np.float32)}) for i in range(20)])
        await index.delete_points(name, [pid("0-0")])
        assert optimizes == []
        assert await index.count(name) == 99
        assert [h.id for h in await index.search(name, "v", [3.0, 7.1], limit=2)] == [pid("3-7"), pid("3-8")]
        assert (await index.health()).detail["writes_awaiting_optimize"] == 101
        await index.optimize(name)  # what a job calls once at its end
        assert optimizes == [name]
        assert (await index.health()).detail["writes_awaiting_optimize"] == 0
        assert [h.id for h in await index.search(name, "v", [3.0, 7.1], limit=2)] == [pid("3-7"), pid("3-8")]


async def test_edge_optimizes_once_in_the_background_after_writes_go_quiet(
    tmp_path: Path, name: str, optimizes: list[str]
) -> None:
    async with EdgeVectorIndex(tmp_path / "vectors", optimize_quiet_s=0.2) as index:
        await index.create_collection(name, {"v": VectorSpec(size=2)})
        for b in range(4):
            await index.upsert(name, [Point(pid(f"{b}-{i}"), {"v": [1.0, float(i + b)]}) for i in range(10)])
            await asyncio.sleep(0.05)  # writes keep coming: not quiet yet
        assert optimizes == []
        await _settle(index, 0.4)
        assert optimizes == [name]
        await index.delete_points(name, [pid("0-0")])  # a delete schedules one too (vacuuming)
        await _settle(index, 0.4)
        assert optimizes == [name, name]
        assert await index.count(name) == 39


async def test_edge_optimizes_without_waiting_for_quiet_once_enough_points_piled_up(
    tmp_path: Path, name: str, optimizes: list[str]
) -> None:
    async with EdgeVectorIndex(tmp_path / "vectors", optimize_quiet_s=60, optimize_after_points=25) as index:
        await index.create_collection(name, {"v": VectorSpec(size=2)})
        await index.upsert(name, [Point(pid(str(i)), {"v": [1.0, float(i)]}) for i in range(10)])
        await asyncio.sleep(0.05)
        assert optimizes == []
        await index.upsert(name, [Point(pid(str(i)), {"v": [1.0, float(i)]}) for i in range(10, 30)])
        await _settle(index, 0.05)  # woken before the quiet deadline
        assert optimizes == [name]


async def test_edge_close_drops_a_scheduled_optimize_and_keeps_every_acknowledged_write(
    tmp_path: Path, name: str, optimizes: list[str]
) -> None:
    folder = tmp_path / "vectors"
    index = EdgeVectorIndex(folder, optimize_quiet_s=60)
    await index.connect()
    await index.create_collection(name, {"v": VectorSpec(size=2)})
    assert await index.upsert(name, [Point(pid(str(i)), {"v": [1.0, float(i)]}) for i in range(30)]) == 30
    await index.delete_points(name, [pid("0")])
    task = index._open[name].optimizer
    assert task is not None and not task.done()
    await index.close()
    assert task.done() and optimizes == []
    async with EdgeVectorIndex(folder, optimize_quiet_s=0.05) as reopened:
        assert await reopened.count(name) == 29
        await _settle(reopened, 0.3)
        assert optimizes == [name]  # opening the shard scheduled what the last process left


async def test_edge_close_waits_for_an_optimize_already_running(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real = edge_module._optimize

    def slow(collection: str, shard: object) -> None:
        events.append("started")
        time.sleep(0.3)
        real(collection, shard)  # type: ignore[arg-type]
        events.append("done")

    monkeypatch.setattr(edge_module, "_optimize", slow)
    folder = tmp_path / "vectors"
    index = EdgeVectorIndex(folder, optimize_quiet_s=0.01)
    await index.connect()
    await index.create_collection(name, {"v": VectorSpec(size=2)})
    await index.upsert(name, [Point(pid(str(i)), {"v": [1.0, float(i)]}) for i in range(30)])
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.01)
    assert events == ["started"]
    await index.close()
    assert events == ["started", "done"]
    async with EdgeVectorIndex(folder) as reopened:
        assert await reopened.count(name) == 30


async def test_edge_a_failed_background_optimize_is_retried_after_the_next_write(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = edge_module._optimize

    def flaky(collection: str, shard: object) -> None:
        calls.append(collection)
        if len(calls) == 1:
            raise edge_module.SluiceError("disk full")
        real(collection, shard)  # type: ignore[arg-type]

    monkeypatch.setattr(edge_module, "_optimize", flaky)
    async with EdgeVectorIndex(tmp_path / "vectors", optimize_quiet_s=0.05) as index:
        await index.create_collection(name, {"v": VectorSpec(size=2)})
        await index.upsert(name, [Point(pid("a"), {"v": [1.0, 0.0]})])
        await _settle(index, 0.2)
        assert calls == [name]
        assert index._open[name].pending == 1  # the failed run's write is still owed
        await index.upsert(name, [Point(pid("b"), {"v": [0.0, 1.0]})])
        await _settle(index, 0.2)
        assert calls == [name, name] and index._open[name].pending == 0
        assert await index.count(name) == 2
