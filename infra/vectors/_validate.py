"""Checks every VectorIndex adapter runs before it touches its engine.

The engines check too, but point by point and with their own words: a batch whose third point has
the wrong dimension may already be half written, and the message names neither the collection nor
the vector. These checks run over the whole batch first and raise `InvalidInput` naming both, so
an adapter writes all of a batch or nothing of it. Vector values are checked with numpy, a whole
batch per vector name at a time, and handed back as float32 matrices for the adapter to write.

Filters (`where`) are parsed here into engine-neutral conditions that each adapter maps to its own
filter types.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

from events.errors import Conflict, InvalidInput
from infra.vectors.base import Distance, Point, Vector, VectorSpec, check_point_ids

DISTANCES: tuple[str, ...] = get_args(Distance)
# Safe as a folder name (edge) and as a Qdrant collection name in a URL path.
COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


# -- collections -------------------------------------------------------------------------------


def check_collection_name(name: str) -> None:
    if not isinstance(name, str) or not COLLECTION_RE.fullmatch(name):
        raise InvalidInput(
            f"collection name {name!r} is not allowed: use 1-255 letters, digits, `_`, `-` or `.`, "
            "starting with a letter or digit",
            details={"collection": name},
        )


def check_spec(name: str, vectors: Mapping[str, VectorSpec]) -> dict[str, VectorSpec]:
    """A collection's named vectors, checked; returns a plain dict copy."""
    if not vectors:
        raise InvalidInput(f"collection {name!r} needs at least one named vector", details={"collection": name})
    checked: dict[str, VectorSpec] = {}
    for vector_name, spec in vectors.items():
        if not isinstance(vector_name, str) or not 0 < len(vector_name) <= 128:
            raise InvalidInput(
                f"collection {name!r}: vector name {vector_name!r} must be a string of 1-128 characters",
                details={"collection": name, "vector": vector_name},
            )
        if not isinstance(spec, VectorSpec):
            raise InvalidInput(
                f"collection {name!r}: vector {vector_name!r} needs a VectorSpec, got {type(spec).__name__}",
                details={"collection": name, "vector": vector_name},
            )
        if isinstance(spec.size, bool) or not isinstance(spec.size, int) or spec.size < 1:
            raise InvalidInput(
                f"collection {name!r}: vector {vector_name!r} has size {spec.size!r}; it must be a positive int",
                details={"collection": name, "vector": vector_name},
            )
        if spec.distance not in DISTANCES:
            raise InvalidInput(
                f"collection {name!r}: vector {vector_name!r} has distance {spec.distance!r}; "
                f"use one of {', '.join(DISTANCES)}",
                details={"collection": name, "vector": vector_name},
            )
        checked[vector_name] = spec
    return checked


def spec_differences(existing: Mapping[str, VectorSpec], wanted: Mapping[str, VectorSpec]) -> list[str]:
    """What differs between two vector specs, one readable line per vector; empty when equal."""
    lines = []
    for vector_name in sorted(set(existing) | set(wanted)):
        old, new = existing.get(vector_name), wanted.get(vector_name)
        if old == new:
            continue
        if old is None:
            lines.append(f"{vector_name!r}: missing, wanted {_spec_text(new)}")
        elif new is None:
            lines.append(f"{vector_name!r}: exists as {_spec_text(old)}, not wanted")
        else:
            lines.append(f"{vector_name!r}: exists as {_spec_text(old)}, wanted {_spec_text(new)}")
    return lines


def check_same_spec(name: str, existing: Mapping[str, VectorSpec], wanted: Mapping[str, VectorSpec]) -> None:
    """`create_collection` on an existing collection: fine when equal, `Conflict` otherwise."""
    differences = spec_differences(existing, wanted)
    if differences:
        raise Conflict(
            f"collection {name!r} exists with other vectors: " + "; ".join(differences),
            details={"collection": name, "differences": differences},
        )


def _spec_text(spec: VectorSpec | None) -> str:
    return "nothing" if spec is None else f"size {spec.size} {spec.distance}"


# -- points and queries ------------------------------------------------------------------------


@dataclass(frozen=True)
class Stacked:
    """The batch's vectors of one name, checked: `matrix[k]` (float32) belongs to `points[rows[k]]`."""

    rows: list[int]
    matrix: npt.NDArray[np.float32]


def check_points(name: str, spec: Mapping[str, VectorSpec], points: Sequence[Point]) -> dict[str, Stacked]:
    """The whole batch, before any of it is written: ids are UUIDs, every vector name exists in
    the collection, every dimension matches, every value is a finite float32, payloads are JSON.

    Vectors may be numpy arrays or sequences of numbers. They are stacked, converted and checked
    once per vector name for the whole batch, with numpy; only when that fails are they looked at
    point by point, to name the first point at fault. Returns those float32 matrices, so an
    adapter converts nothing twice."""
    check_point_ids(points)
    groups: dict[str, tuple[list[int], list[Any]]] = {}
    for i, point in enumerate(points):
        if not point.vectors:
            raise InvalidInput(
                f"collection {name!r}: point {point.id} carries no vectors",
                details={"collection": name, "point": point.id},
            )
        for vector_name, vector in point.vectors.items():
            group = groups.get(vector_name)
            if group is None:
                if vector_name not in spec:
                    _check_shape(name, spec, vector_name, vector, point.id)  # raises, naming the vector
                group = groups[vector_name] = ([], [])
            group[0].append(i)
            group[1].append(vector)
    try:  # one call for the batch; point by point only to name the culprit
        json.dumps([point.payload for point in points], allow_nan=False)
    except (TypeError, ValueError):
        for point in points:
            try:
                json.dumps(point.payload, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(
                    f"collection {name!r}: payload of point {point.id} is not JSON: {exc}",
                    details={"collection": name, "point": point.id},
                ) from exc
        raise
    stacked: dict[str, Stacked] = {}
    for vector_name, (rows, vectors) in groups.items():
        matrix = _float32(vectors, spec[vector_name].size)
        if matrix is None:  # a shape or a value is wrong: find the point, in order
            for row, vector in zip(rows, vectors, strict=True):
                _check_shape(name, spec, vector_name, vector, points[row].id)
                if _float32([vector], spec[vector_name].size) is None:
                    raise _not_numbers(name, vector_name, points[row].id)
            raise _not_numbers(name, vector_name, None)  # pragma: no cover - the batch failed, so one row does
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            raise _not_finite(name, vector_name, points[rows[int(np.argmin(finite))]].id)
        stacked[vector_name] = Stacked(rows, matrix)
    return stacked


def check_vector(
    name: str,
    spec: Mapping[str, VectorSpec],
    vector_name: str,
    vector: Vector,
    *,
    point_id: str | None = None,
) -> npt.NDArray[np.float32]:
    """One vector (a query), checked as `check_points` checks a batch's; returns it as float32."""
    _check_shape(name, spec, vector_name, vector, point_id)
    matrix = _float32([vector], spec[vector_name].size)
    if matrix is None:
        raise _not_numbers(name, vector_name, point_id)
    if not np.isfinite(matrix).all():
        raise _not_finite(name, vector_name, point_id)
    return matrix[0]


def check_search(
    name: str, spec: Mapping[str, VectorSpec], vector_name: str, vector: Vector, limit: int
) -> npt.NDArray[np.float32]:
    """The query vector as float32, checked; the limit a positive int."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInput(f"search limit must be a positive int, got {limit!r}", details={"limit": limit})
    return check_vector(name, spec, vector_name, vector)


def _where(name: str, vector_name: str, point_id: str | None) -> tuple[str, dict[str, Any]]:
    """For an error message: where it happened, and its details."""
    where = f"collection {name!r}" + (f", point {point_id}" if point_id else "")
    details: dict[str, Any] = {"collection": name, "vector": vector_name}
    if point_id:
        details["point"] = point_id
    return where, details


def _check_shape(name: str, spec: Mapping[str, VectorSpec], vector_name: str, vector: Any, point_id: str | None) -> None:
    """The vector name exists and the vector has its dimension (the values are not looked at)."""
    expected = spec.get(vector_name)
    if expected is None:
        where, details = _where(name, vector_name, point_id)
        raise InvalidInput(
            f"{where}: unknown vector {vector_name!r}; the collection has {sorted(spec)}",
            details={**details, "known": sorted(spec)},
        )
    if isinstance(vector, np.ndarray):
        if vector.ndim != 1:
            where, details = _where(name, vector_name, point_id)
            raise InvalidInput(
                f"{where}: vector {vector_name!r} is an array of shape {vector.shape}, expected ({expected.size},)",
                details={**details, "expected": expected.size, "actual": list(vector.shape)},
            )
        size = vector.shape[0]
    elif isinstance(vector, (str, bytes, Mapping)):
        raise _not_a_sequence(name, vector_name, point_id)
    else:
        try:
            size = len(vector)
        except TypeError:
            raise _not_a_sequence(name, vector_name, point_id) from None
    if size != expected.size:
        where, details = _where(name, vector_name, point_id)
        raise InvalidInput(
            f"{where}: vector {vector_name!r} has dimension {size}, expected {expected.size}",
            details={**details, "expected": expected.size, "actual": size},
        )


def _not_a_sequence(name: str, vector_name: str, point_id: str | None) -> InvalidInput:
    where, details = _where(name, vector_name, point_id)
    return InvalidInput(f"{where}: vector {vector_name!r} is not a sequence of numbers", details=details)


def _float32(vectors: list[Any], size: int) -> npt.NDArray[np.float32] | None:
    """Vectors of `size` (arrays or sequences) as one float32 matrix, or None when a value is not a
    real number. A value beyond float32's range becomes infinite, which the caller refuses."""
    try:  # no dtype asked for: numpy's own reading tells numbers from strings and objects
        matrix = np.array(vectors)
    except (TypeError, ValueError, OverflowError):  # ragged
        return None
    if matrix.dtype.kind not in "biuf" or matrix.shape != (len(vectors), size):  # not numbers; nested
        return None
    if matrix.dtype == np.float32:
        return matrix
    with np.errstate(over="ignore", invalid="ignore"):
        return matrix.astype(np.float32)


def _not_numbers(name: str, vector_name: str, point_id: str | None) -> InvalidInput:
    where, details = _where(name, vector_name, point_id)
    return InvalidInput(f"{where}: vector {vector_name!r} holds a value that is not a number", details=details)


def _not_finite(name: str, vector_name: str, point_id: str | None) -> InvalidInput:
    where, details = _where(name, vector_name, point_id)
    return InvalidInput(f"{where}: vector {vector_name!r} holds NaN or infinity (or a value beyond float32)", details=details)


def check_ids(ids: Sequence[str]) -> list[str]:
    """Point ids for retrieve and delete: UUID strings, returned in the engines' canonical form
    (lowercase, hyphenated), without duplicates, in order."""
    if isinstance(ids, str):
        raise InvalidInput("point ids must be a sequence of ids, not one string")
    seen: dict[str, None] = {}
    for point_id in ids:
        try:
            seen[str(uuid.UUID(point_id))] = None
        except (ValueError, TypeError, AttributeError):
            raise InvalidInput(f"point id {point_id!r} is not a UUID; derive ids with point_id()") from None
    return list(seen)


# -- filters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Equals:
    """Payload field `key` equals `value` (or, for an array field, contains it)."""

    key: str
    value: str | int | bool


@dataclass(frozen=True)
class OneOf:
    """Payload field `key` equals one of `values`: all strings or all ints."""

    key: str
    values: tuple[str, ...] | tuple[int, ...]


Condition = Equals | OneOf


def parse_where(where: Mapping[str, Any] | None) -> list[Condition]:
    """`{"lang": "en", "kind": {"$in": ["a", "b"]}}` -> conditions that must all hold.

    Matching is exact, so only strings, ints and bools can be compared (floats cannot; `$in` takes
    strings or ints, not bools) — what Qdrant's MatchValue and MatchAny accept.
    """
    if not where:
        return []
    conditions: list[Condition] = []
    for key, value in where.items():
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"filter key {key!r} must be a non-empty string", details={"key": key})
        if isinstance(value, Mapping):
            if set(value) != {"$in"}:
                raise InvalidInput(
                    f"filter on {key!r}: only equality or {{'$in': [...]}} is supported, got {dict(value)!r}",
                    details={"key": key},
                )
            conditions.append(OneOf(key, _in_values(key, value["$in"])))
        elif isinstance(value, (str, int)):  # bool is an int
            conditions.append(Equals(key, value))
        else:
            raise InvalidInput(
                f"filter on {key!r}: cannot match {type(value).__name__} {value!r}; use a string, int or bool",
                details={"key": key},
            )
    return conditions


def _in_values(key: str, values: Any) -> tuple[str, ...] | tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidInput(f"filter on {key!r}: $in needs a list of values", details={"key": key})
    if all(isinstance(v, str) for v in values):
        return tuple(values)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return tuple(values)
    raise InvalidInput(
        f"filter on {key!r}: $in takes all strings or all ints, got {list(values)!r}",
        details={"key": key},
    )
