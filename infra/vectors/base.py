"""The VectorIndex port: collections of points with named dense vectors and JSON payloads.

Nothing is silent: upserting a vector name the collection lacks, or a vector of the wrong
dimension, raises `InvalidInput` naming the collection, the vector and the expected dimension.
Counts returned are what the engine acknowledged.

A vector is a numpy array (float32 is what the engines store; the cheapest to write) or a sequence
of floats. A batch's vectors are checked together with numpy, not value by value.

Writes are searchable as soon as `upsert` returns. Building an engine's index (HNSW) and vacuuming
deleted points happen apart from the writes: in the engine's or the adapter's background, and at
once when `optimize(name)` is called, which a bulk writer (an ingest job) calls once at its end.
"""

from __future__ import annotations

import abc
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from events.errors import InvalidInput
from events.lifecycle import Lifecycle

Distance = Literal["cosine", "euclid", "dot"]

Vector: TypeAlias = "npt.NDArray[np.floating[Any]] | Sequence[float]"
"""One dense vector: a 1-d numpy array (float32 preferred) or a sequence of floats."""


@dataclass(frozen=True)
class VectorSpec:
    size: int
    distance: Distance = "cosine"


@dataclass(frozen=True)
class Point:
    id: str  # a UUID string; derive it with `point_id(...)`
    vectors: Mapping[str, Vector]  # numpy arrays on the write path; `retrieve` returns float lists
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


_POINT_NS = uuid.UUID("7a3c4c1e-5d0b-4bb4-9a3e-6c1f2b8f0a11")


def point_id(*parts: str) -> str:
    """Deterministic point id: the same parts always give the same UUID (reruns overwrite)."""
    return str(uuid.uuid5(_POINT_NS, "\x1f".join(parts)))


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_point_ids(points: Sequence[Point]) -> None:
    for p in points:
        if isinstance(p.id, str) and _CANONICAL_UUID.fullmatch(p.id):  # what point_id() gives: no parse
            continue
        try:
            uuid.UUID(p.id)
        except (ValueError, TypeError, AttributeError):
            raise InvalidInput(f"point id {p.id!r} is not a UUID; derive ids with point_id()") from None


class VectorIndex(Lifecycle, abc.ABC):
    """Filters (`where`) map payload keys to a value (equality) or `{"$in": [...]}`."""

    @abc.abstractmethod
    async def create_collection(self, name: str, vectors: Mapping[str, VectorSpec]) -> None:
        """Create a collection with these named vectors. Idempotent when the spec is the same;
        raises `Conflict` when a collection of that name exists with another spec."""

    @abc.abstractmethod
    async def collection_vectors(self, name: str) -> dict[str, VectorSpec] | None:
        """The named vectors of a collection, or None when it does not exist."""

    @abc.abstractmethod
    async def list_collections(self) -> list[str]:
        """Names of every collection, sorted."""

    @abc.abstractmethod
    async def delete_collection(self, name: str) -> bool:
        """Drop a collection and its points; True when it existed."""

    @abc.abstractmethod
    async def upsert(self, name: str, points: Sequence[Point]) -> int:
        """Insert or overwrite points by id; returns how many the engine acknowledged.
        A point may carry a subset of the collection's vectors. Raises `NotFound` for a missing
        collection and `InvalidInput` for an unknown vector name, a wrong dimension or a value
        that is not a finite float32, naming the point, before writing anything of the batch.
        Written points are searchable at once (exactly, until the engine has indexed them); it
        never waits for index building: see `optimize`."""

    @abc.abstractmethod
    async def optimize(self, name: str) -> None:
        """Bring the collection's index up to date now and wait for it: index what was written
        and vacuum deleted points, as far as the engine's thresholds call for. Never needed for
        correctness, and adapters do it on their own eventually; call it once after a bulk write
        (the end of a job), not per batch. Raises `NotFound` for a missing collection."""

    @abc.abstractmethod
    async def search(self, name: str, vector_name: str, vector: Vector, *, limit: int = 10,
                     where: Mapping[str, Any] | None = None) -> list[Hit]:
        """Nearest points, best first. `score` is the engine's: similarity for cosine and dot
        (higher is better), distance for euclid (lower is better)."""

    @abc.abstractmethod
    async def count(self, name: str, where: Mapping[str, Any] | None = None) -> int:
        """Exact number of points (matching `where`)."""

    @abc.abstractmethod
    async def retrieve(self, name: str, ids: Sequence[str]) -> list[Point]:
        """Points by id, with vectors and payload; missing ids are left out."""

    @abc.abstractmethod
    async def delete_points(self, name: str, ids: Sequence[str]) -> int:
        """Remove points by id; returns how many ids were asked to be removed."""
