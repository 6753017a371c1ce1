"""Topic names. Every event type lives on exactly one topic; a prefix isolates deployments."""

from __future__ import annotations

from dataclasses import dataclass

# event type -> topic suffix
_ROUTES: dict[str, str] = {
    "PluginUploadConfirmed": "plugins",
    "PluginScanned": "plugins",
    "PluginRegistered": "plugins",
    "PluginRegistrationFailed": "plugins",
    "DeployPlugin": "deployments",
    "PluginDeploymentChanged": "deployments",
    "ModelUploadConfirmed": "models",
    "ModelRegistered": "models",
    "ModelRejected": "models",
    "ModelDeployed": "models",
    "ObjectCreated": "objects",
    "ObjectRemoved": "objects",
    "ObjectPurged": "ingest",
    "BackfillCollection": "collections",
    "IngestStarted": "ingest",
    "IngestProgress": "ingest",
    "IngestCompleted": "ingest",
    "IngestFailed": "ingest",
}
_RAW_ROUTES: dict[str, str] = {
    "BucketNotification": "s3-notifications",  # the stores' own JSON, decoded by events.s3.decode_notification
}


@dataclass(frozen=True)
class Topics:
    """Names of every topic for one deployment (`prefix` defaults to `sluice`)."""

    prefix: str = "sluice"

    @property
    def plugins(self) -> str:
        return f"{self.prefix}.plugins"

    @property
    def deployments(self) -> str:
        return f"{self.prefix}.deployments"

    @property
    def models(self) -> str:
        return f"{self.prefix}.models"

    @property
    def objects(self) -> str:
        return f"{self.prefix}.objects"

    @property
    def collections(self) -> str:
        """Commands about whole collections (BackfillCollection)."""
        return f"{self.prefix}.collections"

    @property
    def ingest(self) -> str:
        return f"{self.prefix}.ingest"

    @property
    def s3_notifications(self) -> str:
        """Raw S3 / MinIO bucket notifications (their JSON, not our envelope)."""
        return f"{self.prefix}.s3-notifications"

    @property
    def dead_letters(self) -> str:
        return f"{self.prefix}.dead-letters"

    def for_type(self, event_type: str) -> str:
        try:
            return f"{self.prefix}.{_ROUTES.get(event_type) or _RAW_ROUTES[event_type]}"
        except KeyError:
            raise KeyError(f"no topic for event type {event_type!r}") from None

    def lifecycle(self) -> list[str]:
        """Every topic that carries envelopes."""
        return sorted({f"{self.prefix}.{suffix}" for suffix in _ROUTES.values()})

    def all(self) -> list[str]:
        return [*self.lifecycle(), self.s3_notifications, self.dead_letters]
