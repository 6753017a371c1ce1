"""The upload sweeper: removes what abandoned uploads leave in the object store.

An upload starts as a catalog record awaiting its PUT and a presigned URL. A client that never
PUTs, or PUTs and never confirms, leaves the record (and maybe an object) behind for good. Every
`settings.upload_sweep_interval_s`, `run_functions` has this sweeper look, in each kind of upload
record, for those still awaiting their upload past the URL's expiry plus `GRACE_S` (a PUT that
started before the expiry may still be finishing; the local store commits none later than
`LATE_COMMIT_S` after it, which the grace outlasts), and clean each one up:

- `plugin_uploads` (functions/rest/plugins.py): the object at `archive` is deleted and the record
  marked `EXPIRED` (a confirm then answers 409). Uploads FAILED by confirm, scan or register keep
  their object (register deletes it only on success): once their URL expired, so no PUT can bring
  it back, the object is deleted too and the record stamped `swept_at`, which keeps it out of
  later passes.
- `models` (functions/rest/models.py): an unconfirmed ticket is how that kind works (a new request
  for the same name and version replaces it), so its object at `upload` is deleted and the record
  removed, but only while it is still the same ticket, awaiting its upload. Rejected models keep
  no object (confirm and the validate_model function delete it), so there is nothing to sweep.
- `object_uploads` (functions/rest/buckets.py): the record is marked `EXPIRED`. Its object, at
  `location` (the physical bucket and key) or else at its `bucket`/`key`, is a tenant's key that
  other uploads and the drop folder may write too, so it is deleted only when it can be this
  upload's: last modified between the request and the URL's expiry plus the grace, and no newer
  upload record names the same location.

Confirmed, registered and validating records are never touched, and every change is a
compare-and-set on the record's status (`expect`), so a confirm racing the sweeper wins or loses
cleanly, and several processes may sweep at once. Each pass reads only candidates: records of one
status created before the cutoff, ordered by creation and read in pages of `BATCH`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from events.errors import NotFound
from functions.records.status import UploadStatus
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore

log = structlog.get_logger("sluice.sweeper")

PLUGIN_UPLOADS = "plugin_uploads"
MODELS = "models"
OBJECT_UPLOADS = "object_uploads"
AWAITING_UPLOAD = UploadStatus.AWAITING_UPLOAD
FAILED = UploadStatus.FAILED
EXPIRED = UploadStatus.EXPIRED

GRACE_S = 15 * 60  # after a URL's expiry; longer than the local store's LATE_COMMIT_S (10 min)
BATCH = 200


@dataclass
class SweepReport:
    """What one pass did."""

    expired: int = 0  # records marked EXPIRED
    removed: int = 0  # records deleted (model tickets)
    swept: int = 0  # failed uploads whose object was removed
    objects_deleted: int = 0  # delete calls made on the store (a missing object included)
    kept_objects: int = 0  # objects left in place: not this upload's to delete
    errors: int = 0  # records left for the next pass (the store did not answer)
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _parse(stamp: Any) -> datetime | None:
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class UploadSweeper:
    """One pass with `sweep()`; `run(stop)` sweeps every `interval_s` until `stop` is set."""

    def __init__(
        self, catalog: Catalog, store: ObjectStore, *, url_lifetime_s: float, interval_s: float = 300.0,
        grace_s: float = GRACE_S, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.catalog, self.store = catalog, store
        self.url_lifetime_s, self.interval_s, self.grace_s = url_lifetime_s, interval_s, grace_s
        self._clock = clock

    @classmethod
    def for_platform(cls, platform: Any) -> UploadSweeper:
        settings = platform.settings
        return cls(platform.catalog, platform.store, url_lifetime_s=settings.upload_url_expires_s,
                   interval_s=settings.upload_sweep_interval_s)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                report = await self.sweep()
                if report.expired or report.removed or report.swept or report.errors:
                    log.info("uploads.swept", expired=report.expired, removed=report.removed, swept=report.swept,
                             objects_deleted=report.objects_deleted, kept_objects=report.kept_objects, errors=report.errors)
            except Exception:  # the next pass tries again; a sweep must never stop the process
                log.exception("uploads.sweep_failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass

    async def sweep(self) -> SweepReport:
        """One pass over every kind of upload record."""
        now = self._clock()
        # Created before this, a record's URL expired more than the grace ago, unless it was
        # given a longer life than the setting says today (its own `expires_at` is checked too).
        cutoff = _iso(now - timedelta(seconds=self.url_lifetime_s + self.grace_s))
        report = SweepReport()
        await self._pages(PLUGIN_UPLOADS, {"status": AWAITING_UPLOAD, "created_at": {"$lt": cutoff}},
                          lambda r: self._expire_plugin_upload(r, now, report))
        await self._pages(PLUGIN_UPLOADS, {"status": FAILED, "created_at": {"$lt": cutoff}, "swept_at": {"$exists": False}},
                          lambda r: self._sweep_failed_plugin_upload(r, now, report))
        await self._pages(MODELS, {"status": AWAITING_UPLOAD, "created_at": {"$lt": cutoff}},
                          lambda r: self._remove_model_ticket(r, now, report))
        await self._pages(OBJECT_UPLOADS, {"status": AWAITING_UPLOAD, "created_at": {"$lt": cutoff}},
                          lambda r: self._expire_object_upload(r, now, report))
        return report

    async def _pages(self, kind: str, where: dict, handle: Callable[[dict], Any]) -> None:
        """Every matching record, oldest first, a page at a time. A record handled leaves the
        filter; one left in place (`handle` answers False) is stepped over, and one seen before in
        this pass is never handled twice (so a pass always ends)."""
        skipped = 0
        seen: set[str] = set()
        while True:
            page = await self.catalog.find(kind, where, order_by="created_at", limit=BATCH, offset=skipped)
            for record in page:
                if record["id"] in seen or not await handle(record):
                    skipped += 1
                seen.add(record["id"])
            if len(page) < BATCH:
                return

    # -- when a record's URL stops mattering ------------------------------------------------------

    def _expires(self, record: dict) -> datetime | None:
        """When the record's URL expires: its own `expires_at`, else its creation plus the setting."""
        expires = _parse(record.get("expires_at"))
        if expires is not None:
            return expires
        created = _parse(record.get("created_at"))
        return None if created is None else created + timedelta(seconds=self.url_lifetime_s)

    def _past_grace(self, record: dict, now: datetime) -> bool:
        expires = self._expires(record)
        return expires is not None and now > expires + timedelta(seconds=self.grace_s)

    async def _delete_object(self, ref: dict | None, report: SweepReport, **context: Any) -> bool:
        """Delete the object `ref` names (a missing one, or a missing bucket, is fine). False when
        the store did not answer: the record stays as it is, for the next pass."""
        if not ref or not ref.get("bucket") or not ref.get("key"):
            return True
        try:
            await self.store.delete(ref["bucket"], ref["key"])
        except NotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - logged; the next pass retries this record
            report.errors += 1
            log.warning("uploads.sweep_delete_failed", bucket=ref["bucket"], key=ref["key"], error=str(exc), **context)
            return False
        report.objects_deleted += 1
        return True

    # -- plugin uploads --------------------------------------------------------------------------

    async def _expire_plugin_upload(self, record: dict, now: datetime, report: SweepReport) -> bool:
        if not self._past_grace(record, now):
            return False
        if not await self._delete_object(record.get("archive"), report, upload_id=record.get("upload_id")):
            return False
        stamp = _iso(now)
        changed = await self.catalog.update(
            PLUGIN_UPLOADS, record["id"], {"status": EXPIRED, "expired_at": stamp, "swept_at": stamp, "updated_at": stamp},
            expect={"status": AWAITING_UPLOAD},
        )
        if changed is not None:
            report.expired += 1
            report.count(PLUGIN_UPLOADS)
        return True  # expired now, or confirmed meanwhile: either way no longer a candidate

    async def _sweep_failed_plugin_upload(self, record: dict, now: datetime, report: SweepReport) -> bool:
        if not self._past_grace(record, now):
            return False
        if not await self._delete_object(record.get("archive"), report, upload_id=record.get("upload_id")):
            return False
        changed = await self.catalog.update(PLUGIN_UPLOADS, record["id"], {"swept_at": _iso(now)}, expect={"status": FAILED})
        if changed is not None:
            report.swept += 1
            report.count(PLUGIN_UPLOADS)
        return True

    # -- model tickets ---------------------------------------------------------------------------

    async def _remove_model_ticket(self, record: dict, now: datetime, report: SweepReport) -> bool:
        if not self._past_grace(record, now):
            return False
        upload = record.get("upload") or {}
        archive = record.get("archive") or {}
        separate = (upload.get("bucket"), upload.get("key")) != (archive.get("bucket"), archive.get("key"))
        if upload.get("key") and separate and not await self._delete_object(upload, report, model_id=record.get("model_id")):
            return False
        # Only this ticket, still awaiting: a new request for the same version (a new upload_id)
        # or a confirm that won the race keeps its record.
        removed = await self.catalog.delete_many(MODELS, {
            "namespace": record.get("namespace"), "model_id": record.get("model_id"),
            "upload_id": record.get("upload_id"), "status": AWAITING_UPLOAD,
        })
        if removed:
            report.removed += removed
            report.count(MODELS)
        return True

    # -- object uploads --------------------------------------------------------------------------

    @staticmethod
    def _location(record: dict) -> dict:
        location = record.get("location")
        if isinstance(location, dict) and location.get("bucket") and location.get("key"):
            return {"bucket": location["bucket"], "key": location["key"]}
        return {"bucket": record.get("bucket"), "key": record.get("key")}

    async def _written_by(self, record: dict, location: dict) -> bool | None:
        """Whether the object at `location` can be this upload's: written while its URL could
        write (from the request to the expiry plus the grace), and no newer upload names it.
        None when there is no object."""
        info = await self.store.head(location["bucket"], location["key"])
        if info is None:
            return None
        created, expires = _parse(record.get("created_at")), self._expires(record)
        if info.last_modified is None or created is None or expires is None:
            return False  # cannot tell: leave it
        modified = info.last_modified if info.last_modified.tzinfo else info.last_modified.replace(tzinfo=UTC)
        earliest = created.replace(microsecond=0)  # S3 reports whole seconds
        if not earliest <= modified <= expires + timedelta(seconds=self.grace_s):
            return False
        where: dict[str, Any] = {"created_at": {"$gt": record["created_at"]}}
        if isinstance(record.get("location"), dict):
            where |= {"location.bucket": location["bucket"], "location.key": location["key"]}
        else:
            where |= {"namespace": record.get("namespace"), "bucket": location["bucket"], "key": location["key"]}
        return not await self.catalog.find(OBJECT_UPLOADS, where, limit=1)

    async def _expire_object_upload(self, record: dict, now: datetime, report: SweepReport) -> bool:
        if not self._past_grace(record, now):
            return False
        location = self._location(record)
        if location["bucket"] and location["key"]:
            try:
                ours = await self._written_by(record, location)
            except Exception as exc:  # noqa: BLE001 - logged; the next pass retries this record
                report.errors += 1
                log.warning("uploads.sweep_head_failed", upload_id=record.get("upload_id"), error=str(exc))
                return False
            if ours:
                if not await self._delete_object(location, report, upload_id=record.get("upload_id")):
                    return False
            elif ours is False:
                report.kept_objects += 1
        stamp = _iso(now)
        changed = await self.catalog.update(
            OBJECT_UPLOADS, record["id"], {"status": EXPIRED, "expired_at": stamp, "updated_at": stamp},
            expect={"status": AWAITING_UPLOAD},
        )
        if changed is not None:
            report.expired += 1
            report.count(OBJECT_UPLOADS)
        return True


__all__ = ["EXPIRED", "GRACE_S", "SweepReport", "UploadSweeper"]
