"""Removal intents and watches.

Removal intents (kind `removal_intents`, key: the `ObjectRemoved` event id): a REST `DELETE` of an
object writes its intent, deletes the object from the store, then stores the event and removes the
intent in one outbox commit. A crash in between leaves the intent; the ingest reconciler
(`services.remove.complete_removals`) finishes the delete and publishes the event, so a deleted
object never stays searchable.

Removal watches (kind `removal_watches`): an object removed while an ingest task that holds it
was running. That task may write the removed version after the removal purged it; when the task
ends (`IngestCompleted` / `IngestFailed`), the `purge_removed` function purges again what it wrote,
unless the key exists again by then. One record per (task, collection, object), deleted once handled.
"""

from __future__ import annotations

REMOVAL_WATCHES = "removal_watches"
REMOVAL_INTENTS = "removal_intents"


def watch_key(task_id: str, collection_id: str, object_id: str) -> str:
    """Key of the watch on one object of one collection, for the ingest task `task_id`."""
    return f"{task_id}|{collection_id}|{object_id}"
