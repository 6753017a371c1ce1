"""One settings object for the whole platform: `SLUICE_*` environment variables, or a TOML file
named by `SLUICE_SETTINGS_FILE` (environment variables win over the file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

MIN_ADMIN_KEY_CHARS = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="forbid")

    data_dir: Path = Field(default=Path.home() / ".sluice", description="Where embedded adapters keep their state.")
    host: str = Field(default="127.0.0.1", description="REST bind address.")
    port: int = Field(default=8080, ge=0, le=65535, description="REST port.")
    public_url: str | None = Field(default=None, description="Base URL clients use (presigned URLs); default http://host:port.")
    admin_key: SecretStr | None = Field(
        default=None, description="Admin API key, at least 32 characters; generated into the data dir when unset.")
    topic_prefix: str = Field(default="sluice", pattern=r"^[a-zA-Z0-9._-]+$", description="Prefix of every topic.")
    log_level: str = Field(default="INFO")
    log_json: bool | None = Field(default=None, description="JSON logs; default: JSON when stderr is not a terminal.")

    bus: Literal["sqlite", "memory", "kafka"] | None = Field(
        default=None, description="Event bus; default kafka when kafka_bootstrap is set, else the durable sqlite log."
    )
    kafka_bootstrap: str | None = Field(default=None, description="Kafka bootstrap servers, host:port[,host:port].")
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000, description="Consumer group session timeout.")
    bus_retention_s: float = Field(
        default=7 * 24 * 3600, ge=0, description="Log buses (sqlite, memory): consumed messages older than this are "
        "pruned. A message stays while any consumer group reading its partition has not committed past it, and a topic "
        "no group reads keeps everything. Kafka keeps its own retention.")
    bus_retention_max_messages: int | None = Field(
        default=100_000, ge=0, description="Log buses: the most messages one partition keeps; consumed messages over it "
        "are pruned oldest first, however young (unconsumed ones always stay). None (in code), or a large number: "
        "consumed messages go by age alone.")
    bus_prune_interval_s: float = Field(
        default=600.0, gt=0, le=24 * 3600, description="How often the bus janitor prunes a log bus (sqlite, memory).")

    object_store: Literal["local", "s3"] | None = Field(default=None, description="Default s3 when s3_endpoint_url is set.")
    s3_endpoint_url: str | None = Field(default=None, description="S3 / MinIO endpoint; unset with object_store=s3: AWS.")
    s3_region: str = Field(default="us-east-1")
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None

    mongo_url: str | None = Field(default=None, description="MongoDB URL; unset: the embedded SQLite catalog.")
    mongo_database: str = Field(default="sluice")

    qdrant_url: str | None = Field(default=None, description="Qdrant server URL; unset: the embedded engine.")
    qdrant_api_key: SecretStr | None = None

    compute: Literal["ray", "none"] = Field(default="ray", description="`none` runs without Ray (handlers that need it fail).")
    ray_address: str | None = Field(default=None, description="Existing Ray cluster; unset: a local Ray.")
    ray_num_cpus: int | None = Field(default=None, description="CPUs for the local Ray (default: all).")

    plugins_bucket: str = Field(default="sluice-plugins", description="Bucket holding plugin archives.")
    models_bucket: str = Field(default="sluice-models", description="Bucket holding model archives.")
    data_bucket: str = Field(
        default="sluice-data",
        description="Bucket holding every namespace's objects: a tenant's bucket B of namespace N is the folder `N/B/` in it.",
    )
    models_max_per_namespace: int = Field(default=50, ge=1, description="Model versions one namespace may hold.")
    models_max_archive_bytes: int = Field(default=10 * 1024**3, ge=1, description="Largest model archive (10 GB).")
    upload_url_expires_s: int = Field(
        default=3600, ge=60, le=24 * 3600, description="Lifetime of presigned upload URLs (at most 24 h); an upload not "
        "confirmed within it (and a few minutes' grace) is removed by the upload sweeper.")
    upload_max_bytes: int = Field(
        default=5 * 1024**3, ge=1, description="Largest object uploaded into a bucket with a presigned URL (5 GiB): the "
        "local store refuses a larger PUT; on S3 the confirm step refuses (and deletes) it.")
    plugins_max_archive_bytes: int = Field(
        default=500 * 1024**2, ge=1, le=500 * 1024**2, description="Largest plugin archive (500 MiB, also the most the "
        "archive scanner accepts): a larger presigned PUT is refused, and confirm refuses a larger stored archive.")
    max_request_bytes: int = Field(
        default=1024**2, ge=1024, description="Largest request body of the REST API (1 MiB), refused with 413 before it is "
        "parsed. Uploads go elsewhere: presigned PUTs carry their own limit, and the multipart model upload takes up to "
        "models_max_archive_bytes.")
    upload_sweep_interval_s: float = Field(
        default=300.0, gt=0, le=24 * 3600, description="How often the upload sweeper removes the objects of uploads never "
        "confirmed before their URL expired (and of failed plugin uploads).")
    drop_stable_s: float = Field(
        default=2.0, ge=0, le=3600, description="Drop folder: how long a file must stay unchanged (size, mtime, inode), "
        "counted from the last change seen, before it is taken; a file open for writing waits longer.")
    drop_rescan_s: float = Field(
        default=30.0, gt=0, le=24 * 3600, description="Drop folder: how often the whole folder is walked again, as a "
        "safety net for events the file-system watcher missed.")
    outbox_poll_s: float = Field(
        default=0.2, gt=0, le=60, description="How often the outbox relay looks for events stored by other processes "
        "(events stored in its own process are relayed at once).")
    function_concurrency: int = Field(
        default=8, ge=1, le=1024, description="Messages one function handles at once; offsets are committed only up to the "
        "lowest message not yet done.")
    confirm_wait_s: float = Field(default=60.0, ge=0, le=600, description="How long a confirm waits for scan and register.")
    plugin_validation_timeout_s: float = Field(default=300.0, gt=0, description="Limit on one plugin's validation and dry run.")
    validation_warm_hosts: int = Field(
        default=2, ge=0, le=64, description="Spare plugin hosts the register function keeps started and warmed (the "
        "libraries and platform models the namespace's last dry run loaded), one per namespace at most, so the next push's "
        "dry run skips the host's start. Each runs plugin code once, then is replaced; 0: none.")
    validation_warm_idle_s: float = Field(
        default=300.0, gt=0, le=24 * 3600, description="How long an unused spare validation host is kept.")
    ingest_max_delay_s: float = Field(
        default=2.0, ge=0, le=3600, description="Longest an object waits for a burst still arriving to join its job: a "
        "collection's queue starts a job once it is quiet (SLUICE_INGEST_SETTLE_S), once its oldest object waited this "
        "long, or once it is full; objects arriving while the collection's job runs wait for that job to end.")
    ingest_settle_s: float = Field(
        default=0.25, ge=0, le=60, description="A collection's queue that received nothing for this long starts its job "
        "at once (when no job of the collection runs): one object dropped into an idle collection starts without waiting "
        "SLUICE_INGEST_MAX_DELAY_S, a burst that has ended starts whole. Longer than the gap between two uploads of one "
        "client uploading objects one after another, so they join one job.")
    ingest_max_objects: int = Field(
        default=10_000, ge=1, description="Most objects in one ingest job; a fuller queue starts a job at once."
    )
    ingest_reconcile_s: float = Field(
        default=60.0, gt=0, le=24 * 3600, description="How often the ingest reconciler looks for work a crash left behind "
        "(queue entries claimed by no task, unfinished tasks no lease names); it also runs at start.")
    ingest_sweep_s: float = Field(
        default=3600.0, gt=0, le=7 * 24 * 3600, description="How often every collection's bucket is listed for objects "
        "without an ingest record (one backfill per collection, versions already written skipped); the first sweep "
        "runs at start. One process sweeps per period.")
    ingest_max_attempts: int = Field(
        default=3, ge=1, le=20, description="Runs of an ingest task before a transient failure (a store or index unreachable, "
        "a Ray worker or node lost) fails it; also caps how often a task whose process died is resumed.")
    ingest_retry_base_s: float = Field(
        default=2.0, gt=0, le=300, description="Backoff before the second run of a task after a transient failure; doubled "
        "for each further run (capped at 60 s, with jitter).")
    ingest_max_jobs: int = Field(
        default=2, ge=1, description="Ingest jobs running at once in this process. Each job sizes its actors to the whole "
        "cluster, so more jobs add little throughput on a busy cluster; a second slot keeps one slow or stuck job from "
        "holding every tenant's ingest.")
    ingest_max_jobs_per_namespace: int = Field(
        default=1, ge=1, description="Ingest jobs of one namespace running at once in this process; the scheduler serves "
        "namespaces in turn (least recently served first), so one tenant's backlog cannot starve another's.")
    ingest_job_timeout_s: float = Field(
        default=3600.0, gt=0, description="Wall-clock limit of one ingest task, from its start to the end of its job; "
        "past it the job is stopped and the task fails (IngestFailed), freeing its slot.")
    ingest_max_inline_bytes: int = Field(default=16 * 1024 * 1024, ge=1, description="Largest text object passed inline in `data`.")
    ingest_warm_idle_s: float = Field(
        default=120.0, ge=0, le=24 * 3600, description="How long a warm pool (a collection's plugin hosts, their models "
        "loaded, in Ray actors that hold their CPUs and GPUs) stays up after its last job; 0 turns warm pools off. Idle "
        "pools also give their resources back as soon as a Ray Data job or another pool needs them.")
    ingest_warm_max_objects: int = Field(
        default=64, ge=0, le=100_000, description="Largest ingest task (in objects) that runs in the collection's warm "
        "pool rather than a Ray Data pipeline of its own; larger tasks get a pipeline sized to the cluster.")
    deploy_timeout_s: float = Field(
        default=240.0, gt=0, le=3600, description="How long a realtime deployment may take to become healthy before it is FAILED."
    )
    retriever_wait_s: float = Field(
        default=30.0, ge=0, le=600, description="How long a query waits for its plugin version's deployment to finish."
    )
    retriever_cache_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How long a query reuses its collection and deployment records (0: read them every time; "
        "changes made in this process are seen at once).",
    )
    sandbox: Literal["on", "off"] = Field(
        default="on", description="Run plugin code only in confined plugin hosts (`off`: in the owner's process, "
        "uncontained — for trusted plugins and benchmarks only; logged loudly).")
    sandbox_allow_degraded: bool = Field(
        default=False, description="Start plugin hosts even when a confinement layer is missing on this machine "
        "(the layers that remain are applied; /v1/health shows which). Off: refuse to run plugin code.")
    sandbox_cache_dir: Path | None = Field(
        default=None, description="Per-node folder of unpacked plugins, exported models and host scratch folders "
        "(default: the temp dir's sluice-sandbox-<uid>).")
    sandbox_memory_gb: float | None = Field(
        default=16.0, gt=0, description="Address-space limit of one plugin host (RLIMIT_AS; not applied to hosts with GPUs).")
    sandbox_cpu_seconds: int | None = Field(default=None, gt=0, description="CPU-time limit of one plugin host (RLIMIT_CPU).")
    sandbox_call_timeout_s: float = Field(
        default=600.0, gt=0, description="Wall-clock limit of one call into a plugin host (a batch, a query); past it the "
        "host is killed and the call fails, naming the plugin.")
    egress_pinned_hosts: dict[str, str] = Field(
        default_factory=dict, description="Operator pins of declared egress hosts to addresses, JSON {host: ip}; a pinned "
        "address may be private (an on-prem API). Plugins still reach only the hosts their manifest declares.")
    require_gpu: bool = Field(
        default=False, description="Fail jobs whose GPU steps the cluster cannot place, instead of running them on CPU."
    )
    secrets_key: SecretStr | None = Field(
        default=None, description="Master key for namespace secrets; generated into the data dir when unset."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        settings_file = os.environ.get("SLUICE_SETTINGS_FILE")
        if settings_file:
            if not Path(settings_file).is_file():
                raise FileNotFoundError(f"SLUICE_SETTINGS_FILE={settings_file} does not exist")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=settings_file))
        return tuple(sources)

    @property
    def effective_bus(self) -> str:
        return self.bus or ("kafka" if self.kafka_bootstrap else "sqlite")

    @property
    def effective_object_store(self) -> str:
        return self.object_store or ("s3" if self.s3_endpoint_url else "local")

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @field_validator("admin_key")
    @classmethod
    def _admin_key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(f"SLUICE_ADMIN_KEY must be at least {MIN_ADMIN_KEY_CHARS} characters (a shorter key can be "
                             "guessed); leave it unset and Sluice generates one into the data dir")
        return value

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def scratch_dir(self) -> Path:
        """Where functions unpack archives; every job gets its own folder and removes it."""
        return self.data_dir / "scratch"
