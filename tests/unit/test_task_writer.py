"""Document ids are the platform's: whatever id a plugin emits, a document lands in its own
collection and object, never over another collection's or namespace's document."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from engine.ingest.worker import FIELDS_COLUMN
from events.payloads import ObjectCreated
from functions.records.collection import DOCUMENTS
from functions.runtime.task_writer import Source, TaskWriter
from functions.services.ingest import document_id_for, object_id_for
from infra.catalog.memory import MemoryCatalog

pytestmark = pytest.mark.unit

PLUGIN = {"plugin_id": "plg_x", "plugin_name": "chunker", "version": "1.0.0"}


def writer(catalog: MemoryCatalog, namespace: str, collection_id: str, key: str) -> tuple[TaskWriter, Source]:
    obj = ObjectCreated(bucket="docs", key=key, size=3, etag="e1", source="upload")
    object_id = object_id_for(namespace, "docs", key)
    source = Source("entry", obj, object_id, document_id_for(collection_id, "docs", key, obj.version_marker), True)
    collection = {"collection_id": collection_id, "namespace": namespace, "index_name": None}
    return TaskWriter(catalog, None, collection, PLUGIN, "tsk_1", {object_id: source}, []), source  # type: ignore[arg-type]


def rows(source: Source, *ids: str, parent: str | None = None) -> pd.DataFrame:
    fields = json.dumps({"data": "text", **({"parent_document_id": parent} if parent else {})})
    return pd.DataFrame([{"document_id": i, "object_id": source.object_id, FIELDS_COLUMN: fields} for i in ids])


async def test_a_plugin_naming_another_collections_document_cannot_overwrite_it() -> None:
    catalog = MemoryCatalog()
    await catalog.connect()
    victim, victim_source = writer(catalog, "globex", "col_victim", "report.txt")
    await victim.write(rows(victim_source, victim_source.document_id))
    [stored] = await catalog.find(DOCUMENTS, {})
    assert stored["document_id"] == victim_source.document_id

    attacker, source = writer(catalog, "acme", "col_attacker", "evil.txt")
    await attacker.write(rows(source, victim_source.document_id, "chunk-1", parent=victim_source.document_id))
    assert attacker.documents_written == 2
    victims = await catalog.find(DOCUMENTS, {"collection_id": "col_victim"})
    assert victims == [stored]  # untouched
    mine = await catalog.find(DOCUMENTS, {"collection_id": "col_attacker"}, order_by="plugin_document_id")
    assert [d["plugin_document_id"] for d in mine] == ["chunk-1", victim_source.document_id]
    assert all(d["namespace"] == "acme" and d["document_id"] != victim_source.document_id for d in mine)
    assert {d["lineage"]["parent_document_id"] for d in mine} == {d["document_id"] for d in mine if d["plugin_document_id"] != "chunk-1"}


async def test_the_same_plugin_id_in_two_objects_is_two_documents_and_a_rerun_overwrites() -> None:
    catalog = MemoryCatalog()
    await catalog.connect()
    for key in ("a.txt", "b.txt", "a.txt"):
        w, source = writer(catalog, "acme", "col_1", key)
        await w.write(rows(source, "chunk-0"))
    assert await catalog.count(DOCUMENTS, {"collection_id": "col_1"}) == 2
