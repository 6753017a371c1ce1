"""The VectorIndex port: collections of points with named dense vectors and JSON payloads.

Nothing is silent: upserting a vector name the collection lacks, or a vector of the wrong
dimension, raises `InvalidInput` naming the collection, the vector and the expected dimension.
Counts returned are what the engine acknowledged.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from events.errors import InvalidInput
from events.lifecycle import Lifecycle

Distance = Literal["cosine", "euclid", "dot"]


@dataclass(frozen=True)
class VectorSpec:
    size: int
    distance: Distance = "cosine"


@dataclass(frozen=True)
class Point:
    id: str  # a UUID string; derive it with `point_id(...)`
    vectors: Mapping[str, Sequence[float]]
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


def check_point_ids(points: Sequence[Point]) -> None:
    for p in points:
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
        collection and `InvalidInput` for an unknown vector name or a wrong dimension, before
        writing anything of the batch."""

    @abc.abstractmethod
    async def search(self, name: str, vector_name: str, vector: Sequence[float], *, limit: int = 10,
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
