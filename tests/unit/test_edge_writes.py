"""The write path's checks, vectorised: a batch's vectors (numpy arrays or float lists) are checked
with numpy, per vector name for the whole batch, refused naming the point, and handed back as the
float32 matrices an adapter writes. (The Edge adapter's background optimize is in
tests/integration/test_vector_contract.py: it needs the engine.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from events.errors import InvalidInput
from functions.runtime.task_writer import _float32
from infra.vectors._validate import check_points, check_search
from infra.vectors.base import Point, VectorSpec, point_id

pytestmark = pytest.mark.unit

SPEC = {"text": VectorSpec(size=4), "image": VectorSpec(size=2, distance="euclid")}


def pid(label: str) -> str:
    return point_id("edge-writes", label)


def batch(n: int = 5) -> list[Point]:
    rng = np.random.default_rng(1)
    return [Point(pid(str(i)), {"text": rng.standard_normal(4, dtype=np.float32)}, {"i": i}) for i in range(n)]


def test_a_batch_of_arrays_comes_back_as_one_float32_matrix_per_vector_name() -> None:
    points = batch()
    points.append(Point(pid("list"), {"text": [1.0, 2.0, 3.0, 4.0], "image": np.array([1, 2], dtype=np.int64)}))
    stacked = check_points("c", SPEC, points)
    assert set(stacked) == {"text", "image"}
    text = stacked["text"]
    assert text.matrix.dtype == np.float32 and text.matrix.shape == (6, 4)
    assert text.rows == list(range(6))
    np.testing.assert_array_equal(text.matrix[2], points[2].vectors["text"])
    assert text.matrix[5].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert stacked["image"].rows == [5] and stacked["image"].matrix.tolist() == [[1.0, 2.0]]


def test_float64_arrays_and_lists_are_read_as_float32() -> None:
    points = [Point(pid("a"), {"image": np.array([0.1, 0.2])}), Point(pid("b"), {"image": [0.1, 0.2]})]
    matrix = check_points("c", SPEC, points)["image"].matrix
    assert matrix.dtype == np.float32
    assert matrix.tolist() == [[np.float32(0.1), np.float32(0.2)]] * 2


def test_an_array_of_the_wrong_dimension_is_refused_naming_the_point_and_both_sizes() -> None:
    points = batch()
    points[3] = Point(pid("wrong"), {"text": np.zeros(5, dtype=np.float32)})
    with pytest.raises(InvalidInput) as caught:
        check_points("docs", SPEC, points)
    message = caught.value.message
    assert "'docs'" in message and pid("wrong") in message and "'text'" in message
    assert "dimension 5" in message and "expected 4" in message
    assert caught.value.details == {"collection": "docs", "vector": "text", "point": pid("wrong"), "expected": 4, "actual": 5}


def test_a_two_dimensional_array_is_refused_naming_its_shape() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_points("docs", SPEC, [Point(pid("2d"), {"image": np.zeros((1, 2), dtype=np.float32)})])
    assert pid("2d") in caught.value.message and "(1, 2)" in caught.value.message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e39], ids=["nan", "inf", "-inf", "beyond-float32"])
@pytest.mark.parametrize("as_array", [True, False], ids=["array", "list"])
def test_non_finite_values_are_refused_naming_the_point(bad: float, as_array: bool) -> None:
    points = batch()
    values = [0.5, bad, 0.5, 0.5]
    points[2] = Point(pid("bad"), {"text": np.array(values) if as_array else values})
    with pytest.raises(InvalidInput) as caught:
        check_points("docs", SPEC, points)
    assert pid("bad") in caught.value.message and "NaN or infinity" in caught.value.message
    assert caught.value.details["point"] == pid("bad")


@pytest.mark.parametrize(
    "vector",
    [["1.0", 2.0], [None, 1.0], [[1.0], [2.0]], np.array(["a", "b"]), np.array([1 + 2j, 0]), "ab", {"x": 1.0, "y": 2.0}, 7],
    ids=["string-in-list", "none", "nested", "string-array", "complex-array", "string", "mapping", "int"],
)
def test_values_that_are_not_numbers_are_refused_naming_the_point(vector: object) -> None:
    points = [Point(pid("ok"), {"image": [0.0, 1.0]}), Point(pid("bad"), {"image": vector})]  # type: ignore[dict-item]
    with pytest.raises(InvalidInput) as caught:
        check_points("docs", SPEC, points)
    assert pid("bad") in caught.value.message
    assert "not a number" in caught.value.message or "not a sequence of numbers" in caught.value.message


def test_an_unknown_vector_name_and_a_non_json_payload_name_the_point() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_points("docs", SPEC, [*batch(2), Point(pid("audio"), {"audio": np.zeros(2, dtype=np.float32)})])
    assert "'audio'" in caught.value.message and pid("audio") in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        check_points("docs", SPEC, [*batch(2), Point(pid("payload"), {"image": [0.0, 0.0]}, {"when": object()})])
    assert pid("payload") in caught.value.message and "not JSON" in caught.value.message


def test_an_empty_batch_checks_to_nothing() -> None:
    assert check_points("docs", SPEC, []) == {}


def test_a_query_is_checked_and_returned_as_float32() -> None:
    query = check_search("docs", SPEC, "text", [1, 0, 0, 0], 10)
    assert query.dtype == np.float32 and query.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert check_search("docs", SPEC, "image", np.array([0.5, 0.25]), 1).tolist() == [0.5, 0.25]
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        check_search("docs", SPEC, "image", np.array([math.nan, 0.0]), 1)
    with pytest.raises(InvalidInput, match="expected 2"):
        check_search("docs", SPEC, "image", np.zeros(3), 1)


def test_the_task_writer_hands_numeric_arrays_over_as_float32_and_leaves_the_rest_to_the_index() -> None:
    as_float64 = np.array([0.5, 0.25])
    converted = _float32(as_float64)
    assert converted.dtype == np.float32 and converted.tolist() == [0.5, 0.25]
    already = np.zeros(3, dtype=np.float32)
    assert _float32(already) is already  # no copy
    as_list = [0.5, 0.25]
    assert _float32(as_list) is as_list
    strings = np.array(["a", "b"])
    assert _float32(strings) is strings  # refused by the index, naming the point
