"""Writes an ingest job's output batches as they stream in and keeps the acknowledged counts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from engine.ingest.worker import ERROR_COLUMN, FIELDS_COLUMN, SKIPPED_COLUMN, STEP_COLUMN, VECTOR_PREFIX
from events.payloads import IngestFailure, ObjectCreated
from functions.records.collection import DOCUMENTS
from functions.records.plugins import now
from functions.services.ingest import scoped_document_id
from infra.catalog.base import Catalog
from infra.vectors.base import Point, VectorIndex, point_id

MAX_FAILURES_KEPT = 200
"""Failures listed in a task and its event (all of them are counted in `rows_failed`)."""
PAYLOAD_TEXT_CHARS = 2000

@dataclass
class Source:
    entry_key: str
    obj: ObjectCreated
    object_id: str
    document_id: str
    text: bool


@dataclass
class TaskWriter:
    """Writes output batches as they stream in and keeps the acknowledged counts."""

    catalog: Catalog
    vectors: VectorIndex
    collection: dict
    plugin: dict
    task_id: str
    sources: dict[str, Source]
    features: list[str]
    on_progress: Any = None
    documents_written: int = 0
    vectors_upserted: dict[str, int] = field(default_factory=dict)
    rows_failed: int = 0
    rows_skipped: int = 0
    failures: list[IngestFailure] = field(default_factory=list)
    failed_objects: set[str] = field(default_factory=set)
    objects_seen: set[str] = field(default_factory=set)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    _ids: set[tuple[str, str]] = field(default_factory=set)

    def fail(self, object_id: str, step: str, error: str) -> None:
        self.rows_failed += 1
        self.failed_objects.add(object_id)
        self.objects_seen.add(object_id)
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(IngestFailure(object_id=object_id, step=step, error=" ".join(error.split())[:1000]))

    def violation(self, message: str) -> None:
        """A sandbox violation: kept with the failures (step `sandbox`), counted as no row."""
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(IngestFailure(object_id="", step="sandbox", error=" ".join(message.split())[:1000]))

    async def write(self, batch: pd.DataFrame) -> None:
        if ERROR_COLUMN in batch.columns:
            failed = batch[ERROR_COLUMN].notna().to_numpy()
            for row in batch[failed].to_dict("records"):
                if row.get(STEP_COLUMN) == "sandbox":  # a refused action, reported even when the plugin swallowed it
                    self.violation(str(row[ERROR_COLUMN]))
                    continue
                self.fail(str(row.get("object_id") or ""), str(row.get(STEP_COLUMN) or "?"), str(row[ERROR_COLUMN]))
            batch = batch[~failed]
        index = self.collection.get("index_name")
        points: list[Point] = []
        documents: list[tuple[str, dict]] = []
        per_vector: dict[str, int] = {}
        written_at = now()
        for row in batch.to_dict("records"):
            source = self.sources.get(str(row.get("object_id") or ""))
            if source is None:
                self.fail(
                    str(row.get("object_id") or ""),
                    "output",
                    "output row names no object of this task (the plugin changed or dropped object_id)",
                )
                continue
            self.objects_seen.add(source.object_id)
            if row.get(SKIPPED_COLUMN) is True:
                self.rows_skipped += 1
                reason = f"no step produced a vector for {source.obj.content_type or 'this object'}"
                self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1
                continue
            local_id = str(row.get("document_id") or "") or source.document_id
            if (source.object_id, local_id) in self._ids:
                self.fail(source.object_id, "output", f"document_id {local_id!r} repeats: each output row needs its own document_id")
                continue
            self._ids.add((source.object_id, local_id))
            document_id = self._stored_id(source, local_id)
            fields = json.loads(row[FIELDS_COLUMN]) if isinstance(row.get(FIELDS_COLUMN), str) else {}
            parent = str(fields.get("parent_document_id") or "")
            data = fields.pop("data", None)
            vectors = {name: _float32(row[VECTOR_PREFIX + name]) for name in self.features if _is_vector(row.get(VECTOR_PREFIX + name))}
            pid = point_id(self.collection["collection_id"], document_id)
            obj = source.obj
            # read inline on the worker when it was text (a small file that was not keeps its URL)
            text = data if source.text and isinstance(data, str) and fields.get("blob_type", "text") == "text" else None
            if vectors and index:
                points.append(Point(id=pid, vectors=vectors, payload={
                    "document_id": document_id, "object_id": source.object_id, "collection_id": self.collection["collection_id"],
                    "bucket": obj.bucket, "key": obj.key, "version": obj.version_marker,
                    **({"text": text[:PAYLOAD_TEXT_CHARS]} if text is not None else {"data": data}),
                }))
                for name in vectors:
                    per_vector[name] = per_vector.get(name, 0) + 1
            plugin = self.plugin
            documents.append((document_id, {
                "document_id": document_id, "plugin_document_id": local_id, "namespace": self.collection["namespace"],
                "collection_id": self.collection["collection_id"], "object_id": source.object_id,
                "point_id": pid if vectors and index else None,
                "source": {"bucket": obj.bucket, "key": obj.key, "version": obj.version_marker, "etag": obj.etag,
                           "version_id": obj.version_id, "size": obj.size, "content_type": obj.content_type},
                "text": text, "data": None if text is not None else data,
                "feature_uris": [f"sluice://{plugin['plugin_name']}@{plugin['version']}/{name}" for name in vectors],
                "fields": fields,
                "lineage": {
                    "task_id": self.task_id, "plugin_id": plugin["plugin_id"], "plugin_name": plugin["plugin_name"],
                    "plugin_version": plugin["version"],
                    "parent_document_id": self._stored_id(source, parent) if parent else source.document_id,
                },
                "written_at": written_at,
            }))
        if points and index:
            acknowledged = await self.vectors.upsert(index, points)
            if acknowledged != len(points):
                raise RuntimeError(f"vector index {index!r} acknowledged {acknowledged} of {len(points)} points")
            for name, n in per_vector.items():
                self.vectors_upserted[name] = self.vectors_upserted.get(name, 0) + n
        if documents:
            self.documents_written += await self.catalog.upsert_many(DOCUMENTS, documents)
        if self.on_progress is not None:
            await self.on_progress(len(self.objects_seen))


    def _stored_id(self, source: Source, local_id: str) -> str:
        """The platform's own id for the input row; any other id a plugin emits is scoped."""
        if local_id == source.document_id:
            return local_id
        return scoped_document_id(self.collection["collection_id"], source.object_id, local_id)


def _float32(value: Any) -> Any:
    """A numeric numpy vector as float32, what the index stores and writes without a loop per
    float; anything else as it is (a list is converted with its batch when the index checks it,
    and a value that is not numbers is refused there, naming the point)."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        with np.errstate(over="ignore"):  # beyond float32 becomes infinite, which the index refuses
            return value.astype(np.float32, copy=False)
    return value


def _is_vector(value: Any) -> bool:
    """A feature cell of `to_records` output: a float list (a numpy array after Ray's transport),
    or None / NaN where the row has no such vector."""
    return value is not None and not isinstance(value, float)


