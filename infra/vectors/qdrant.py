"""The VectorIndex on a Qdrant server (`url`), or on qdrant-client's local mode in tests
(`location=":memory:"` or a `path`).

One Qdrant collection per collection, with named vectors. The client is built in `connect()`.
Vector specs are cached per collection so a search or an upsert is checked without a round trip;
a cached spec that rejects a request is fetched again before the request is refused (the
collection may have been recreated elsewhere), and the server stays the final judge: its refusals
are translated into Sluice errors (404 -> NotFound, 400/422 -> InvalidInput, 429/5xx and network
failures -> TransientError). The server indexes and vacuums in its own background, so `optimize`
only checks that the collection exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from events.errors import Conflict, Forbidden, InvalidInput, NotFound, SluiceError, TransientError, Unauthorized
from events.lifecycle import Health
from infra.vectors._validate import (
    Condition,
    Equals,
    Stacked,
    check_collection_name,
    check_ids,
    check_points,
    check_same_spec,
    check_search,
    check_spec,
    parse_where,
)
from infra.vectors.base import Distance, Hit, Point, Vector, VectorIndex, VectorSpec

_TO_QDRANT: dict[Distance, models.Distance] = {
    "cosine": models.Distance.COSINE, "euclid": models.Distance.EUCLID, "dot": models.Distance.DOT
}
_FROM_QDRANT = {v: k for k, v in _TO_QDRANT.items()}

Spec = dict[str, VectorSpec]


class QdrantVectorIndex(VectorIndex):
    adapter_name = "qdrant"

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        location: str | None = None,
        path: str | None = None,
    ) -> None:
        if sum(x is not None for x in (url, location, path)) != 1:
            raise ValueError("QdrantVectorIndex needs exactly one of url, location (':memory:') or path")
        self._url, self._api_key, self._location, self._path = url, api_key, location, path
        self._client: AsyncQdrantClient | None = None
        self._specs: dict[str, Spec] = {}

    @property
    def _target(self) -> str:
        return self._url or self._location or f"path:{self._path}"

    async def _connect(self) -> None:
        self._client = AsyncQdrantClient(url=self._url, api_key=self._api_key, location=self._location, path=self._path)

    async def _close(self) -> None:
        client, self._client = self._client, None
        self._specs.clear()
        if client is not None:
            await client.close()

    async def _health(self) -> Health:
        detail: dict[str, Any] = {"target": self._target}
        try:
            with self._errors(None):
                collections = (await self._qdrant.get_collections()).collections
        except SluiceError as exc:
            return Health(status="down", adapter=self.adapter_name, detail={**detail, "reason": exc.message})
        return Health(status="ok", adapter=self.adapter_name, detail={**detail, "collections": len(collections)})

    @property
    def _qdrant(self) -> AsyncQdrantClient:
        self._require_connected()
        assert self._client is not None
        return self._client

    # -- collections -----------------------------------------------------------------------------

    async def create_collection(self, name: str, vectors: Mapping[str, VectorSpec]) -> None:
        self._require_connected()
        check_collection_name(name)
        spec = check_spec(name, vectors)
        existing = await self._fetch_spec(name)
        if existing is None:
            config = {n: models.VectorParams(size=s.size, distance=_TO_QDRANT[s.distance]) for n, s in spec.items()}
            try:
                with self._errors(name):
                    await self._qdrant.create_collection(name, vectors_config=config)
                self._specs[name] = spec
                return
            except (Conflict, InvalidInput):
                existing = await self._fetch_spec(name)  # created by someone else meanwhile?
                if existing is None:
                    raise
        check_same_spec(name, existing, spec)

    async def collection_vectors(self, name: str) -> dict[str, VectorSpec] | None:
        self._require_connected()
        check_collection_name(name)
        spec = await self._fetch_spec(name)
        return None if spec is None else dict(spec)

    async def list_collections(self) -> list[str]:
        self._require_connected()
        with self._errors(None):
            response = await self._qdrant.get_collections()
        return sorted(c.name for c in response.collections)

    async def delete_collection(self, name: str) -> bool:
        self._require_connected()
        check_collection_name(name)
        self._specs.pop(name, None)
        with self._errors(name):
            if not await self._qdrant.collection_exists(name):
                return False
            await self._qdrant.delete_collection(name)
        return True

    # -- points ----------------------------------------------------------------------------------

    async def upsert(self, name: str, points: Sequence[Point]) -> int:
        self._require_connected()
        check_collection_name(name)
        checked: dict[str, Stacked] = {}
        await self._check(name, lambda spec: checked.update(check_points(name, spec, points)))
        if not points:
            return 0
        vectors: list[dict[str, Any]] = [{} for _ in points]
        for vector_name, stacked in checked.items():  # float32 matrices, as floats: one tolist() each
            for row, values in zip(stacked.rows, stacked.matrix.tolist(), strict=True):
                vectors[row][vector_name] = values
        batch = [
            models.PointStruct(id=p.id, vector=v, payload=dict(p.payload)) for p, v in zip(points, vectors, strict=True)
        ]
        with self._errors(name):
            result = await self._qdrant.upsert(name, points=batch, wait=True)
        if result.status != models.UpdateStatus.COMPLETED:
            raise TransientError(
                f"qdrant did not complete the upsert into {name!r} (status {result.status})",
                details={"collection": name, "status": str(result.status)},
            )
        return len(points)

    async def optimize(self, name: str) -> None:
        self._require_connected()
        check_collection_name(name)
        if await self._fetch_spec(name) is None:
            raise NotFound(f"vector collection {name!r} does not exist", details={"collection": name})

    async def search(self, name: str, vector_name: str, vector: Vector, *, limit: int = 10,
                     where: Mapping[str, Any] | None = None) -> list[Hit]:
        self._require_connected()
        check_collection_name(name)
        query_filter = _filter(parse_where(where))
        checked: list[list[float]] = []
        await self._check(name, lambda spec: checked.append(check_search(name, spec, vector_name, vector, limit).tolist()))
        with self._errors(name):
            response = await self._qdrant.query_points(
                name,
                query=checked[-1],
                using=vector_name,
                limit=limit,
                query_filter=query_filter,
                with_payload=True,
                with_vectors=False,
            )
        return [Hit(id=str(p.id), score=p.score, payload=dict(p.payload or {})) for p in response.points]

    async def count(self, name: str, where: Mapping[str, Any] | None = None) -> int:
        self._require_connected()
        check_collection_name(name)
        query_filter = _filter(parse_where(where))
        with self._errors(name):
            response = await self._qdrant.count(name, count_filter=query_filter, exact=True)
        return response.count

    async def retrieve(self, name: str, ids: Sequence[str]) -> list[Point]:
        self._require_connected()
        check_collection_name(name)
        wanted = check_ids(ids)
        with self._errors(name):
            records = await self._qdrant.retrieve(name, ids=wanted, with_payload=True, with_vectors=True)
        found = {str(r.id): r for r in records}
        points = []
        for point_id in wanted:
            record = found.get(point_id)
            if record is not None:
                vectors = record.vector if isinstance(record.vector, dict) else {"": record.vector or []}
                points.append(
                    Point(
                        id=str(record.id),
                        vectors={n: list(v) for n, v in vectors.items()},  # type: ignore[arg-type]
                        payload=dict(record.payload or {}),
                    )
                )
        return points

    async def delete_points(self, name: str, ids: Sequence[str]) -> int:
        self._require_connected()
        check_collection_name(name)
        wanted = check_ids(ids)
        with self._errors(name):
            # a list[str] is a list of ExtendedPointId; the stub's List[...] only rejects it by invariance
            selector = models.PointIdsList(points=cast("list[models.ExtendedPointId]", wanted))
            await self._qdrant.delete(name, points_selector=selector, wait=True)
        return len(wanted)

    # -- specs and errors ------------------------------------------------------------------------

    async def _fetch_spec(self, name: str) -> Spec | None:
        """The collection's vectors as the server has them now (and into the cache)."""
        try:
            with self._errors(name):
                info = await self._qdrant.get_collection(name)
        except NotFound:
            return None
        vectors = info.config.params.vectors
        if isinstance(vectors, models.VectorParams):  # a collection with one unnamed vector
            vectors = {"": vectors}
        spec: Spec = {}
        for vector_name, params in (vectors or {}).items():
            distance = _FROM_QDRANT.get(params.distance)
            if distance is None:
                raise Conflict(
                    f"collection {name!r}: vector {vector_name!r} uses distance {params.distance}, "
                    f"which Sluice does not support",
                    details={"collection": name, "vector": vector_name},
                )
            spec[vector_name] = VectorSpec(size=params.size, distance=distance)
        self._specs[name] = spec
        return spec

    async def _check(self, name: str, check: Callable[[Spec], None]) -> None:
        """Run `check` against the cached spec; a refusal from a cached spec is confirmed
        against a fresh one. Raises NotFound when the collection does not exist."""
        cached = self._specs.get(name)
        if cached is not None:
            try:
                check(cached)
                return
            except InvalidInput:
                pass
        spec = await self._fetch_spec(name)
        if spec is None:
            raise NotFound(f"vector collection {name!r} does not exist", details={"collection": name})
        check(spec)

    @contextmanager
    def _errors(self, name: str | None) -> Iterator[None]:
        """Translate what qdrant-client raises into Sluice errors naming the collection."""
        what = f"collection {name!r}" if name else self._target
        details: dict[str, Any] = {"collection": name} if name else {"target": self._target}
        try:
            yield
        except SluiceError:
            raise
        except UnexpectedResponse as exc:
            status = exc.status_code or 0
            text = f"qdrant answered {status} for {what}: {exc.content[:300]!r}"
            details = {**details, "status": status}
            if status == 404 and name:
                self._specs.pop(name, None)
                raise NotFound(f"vector collection {name!r} does not exist ({text})", details=details) from exc
            if status == 409 or b"already exists" in exc.content:
                raise Conflict(text, details=details) from exc
            if status in (400, 422):
                if name:
                    self._specs.pop(name, None)
                raise InvalidInput(text, details=details) from exc
            if status == 401:
                raise Unauthorized(text, details=details) from exc
            if status == 403:
                raise Forbidden(text, details=details) from exc
            if status == 429 or status >= 500:
                raise TransientError(text, details=details) from exc
            raise SluiceError(text, details=details) from exc
        except (ResponseHandlingException, httpx.TransportError, ConnectionError, TimeoutError) as exc:
            raise TransientError(f"qdrant unreachable for {what}: {exc}", details=details) from exc
        except ValueError as exc:  # local mode reports refusals as ValueError
            text = str(exc)
            if "not found" in text and name:
                self._specs.pop(name, None)
                raise NotFound(f"vector collection {name!r} does not exist", details=details) from exc
            if "already exists" in text:
                raise Conflict(f"{what}: {text}", details=details) from exc
            raise InvalidInput(f"qdrant refused input for {what}: {text}", details=details) from exc


def _filter(conditions: list[Condition]) -> models.Filter | None:
    if not conditions:
        return None
    must: list[models.Condition] = []
    for c in conditions:
        if isinstance(c, Equals):
            must.append(models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value)))
        else:
            must.append(models.FieldCondition(key=c.key, match=models.MatchAny(any=cast("list[str] | list[int]", list(c.values)))))
    return models.Filter(must=must)
