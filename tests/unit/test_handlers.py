"""Every handler of the handler table, called directly with fakes (the in-memory catalog, object
store and Serve control, each passing its adapter's contract suite): what each one records,
returns and publishes, in milliseconds. The same handlers run through the real broker, S3 endpoint
and Ray in tests/integration and tests/e2e."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.plugins.manifest import ManifestSummary
from engine.plugins.validate import ValidationReport
from events.envelope import Envelope, make
from events.errors import PermanentError
from events.payloads import (
    BucketNotification,
    DeployPlugin,
    Finding,
    ModelUploadConfirmed,
    ObjectCreated,
    ObjectRef,
    PluginScanned,
    PluginUploadConfirmed,
)
from functions.handlers import deploy, ingest, notifications, register, scan, validate_model
from functions.records.collection import COLLECTIONS, INGEST_QUEUE, ensure_bucket
from functions.records.deployments import Deployments
from functions.records.models import ModelRegistry
from functions.records.plugins import UPLOADS, VERSIONS, PluginCatalog, archive_key, plugin_id_for
from functions.records.status import DeploymentStatus, ModelStatus, UploadStatus
from functions.services.deploy import request_deploy
from functions.table import FUNCTIONS
from infra.catalog.memory import MemoryCatalog
from infra.objectstore.memory import MemoryObjectStore
from infra.serving.memory import MemoryServeControl
from infra.settings import Settings
from tests.fixtures.archives import tar_gz
from tests.fixtures.plugins import HASH_EMBEDDER, zip_folder

pytestmark = pytest.mark.unit

NS = "acme"


class Ports:
    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(data_dir=tmp_path, bus="memory", compute="none", admin_key="sk_admin_" + "x" * 32)
        self.catalog = MemoryCatalog()
        self.store = MemoryObjectStore()
        self.published: list[Envelope] = []
        self.publish = _RecordingOutbox(self.catalog, self.published)


class _RecordingOutbox:
    """The outbox's port (`events.publisher.Publish`): writes go to the catalog in one transaction,
    events to a list."""

    def __init__(self, catalog: MemoryCatalog, published: list[Envelope]) -> None:
        self.catalog, self.published = catalog, published

    async def __call__(self, *events: Envelope) -> None:
        self.published.extend(events)

    async def commit(self, writes=(), events=()) -> list:
        results = await self.catalog.transact(list(writes))
        self.published.extend(events)
        return results


@pytest.fixture
async def ports(tmp_path: Path):
    p = Ports(tmp_path)
    await p.catalog.connect()
    await p.store.connect()
    await p.store.ensure_bucket(p.settings.plugins_bucket)
    await p.store.ensure_bucket(p.settings.models_bucket)
    yield p
    await p.store.close()
    await p.catalog.close()


def test_the_table_takes_its_event_types_from_the_handlers_signatures() -> None:
    assert {f.name: set(f.event_types) for f in FUNCTIONS} == {
        "scan": {"PluginUploadConfirmed"}, "register": {"PluginScanned"}, "deploy": {"DeployPlugin"},
        "ingest": {"ObjectCreated"}, "validate_model": {"ModelUploadConfirmed"}, "notifications": {"BucketNotification"},
        "dead_letters": {"DeadLetter"}, "remove": {"ObjectRemoved"}, "purge_removed": {"IngestCompleted", "IngestFailed"},
        "backfill": {"BackfillCollection"},
    }


# --- plugins: scan → register -----------------------------------------------------------------

async def _uploaded(ports: Ports, data: bytes, *, name: str = "hash_embedder", version: str = "1.0.0") -> dict:
    upload = await PluginCatalog(ports.catalog).create_upload(
        NS, name, version=version, description=None, bucket=ports.settings.plugins_bucket, expires_in=600)
    await ports.catalog.update(UPLOADS, upload["upload_id"], {"status": UploadStatus.CONFIRMED})
    await ports.store.put_bytes(upload["archive"]["bucket"], upload["archive"]["key"], data, content_type="application/zip")
    return upload


def _confirmed(upload: dict) -> Envelope[PluginUploadConfirmed]:
    return make(PluginUploadConfirmed(
        upload_id=upload["upload_id"], plugin_name=upload["plugin_name"], version=upload["version"],
        archive=ObjectRef(**upload["archive"])), namespace=NS)


async def test_scan_passes_an_honest_plugin_and_records_its_digest(ports: Ports) -> None:
    data = zip_folder(HASH_EMBEDDER)
    upload = await _uploaded(ports, data)
    [out] = await scan.handle(_confirmed(upload), store=ports.store, catalog=ports.catalog, settings=ports.settings)
    assert out.type == "PluginScanned" and out.payload.passed and out.namespace == NS
    assert out.payload.sha256 == hashlib.sha256(data).hexdigest()
    assert (await ports.catalog.get(UPLOADS, upload["upload_id"]))["sha256"] == out.payload.sha256


async def test_scan_fails_a_plugin_that_starts_processes_naming_file_line_and_rule(ports: Ports) -> None:
    data = zip_folder(HASH_EMBEDDER, edits={"processors/evil.py": "import subprocess\nsubprocess.run(['id'])\n"})
    upload = await _uploaded(ports, data)
    [out] = await scan.handle(_confirmed(upload), store=ports.store, catalog=ports.catalog, settings=ports.settings)
    assert not out.payload.passed
    assert any(f.rule_id == "SLU101" and f.file.endswith("processors/evil.py") and f.line == 1 for f in out.payload.findings)


async def test_scan_of_an_archive_that_is_gone_is_a_finding_not_a_crash(ports: Ports) -> None:
    upload = await _uploaded(ports, b"zip")
    await ports.store.delete(upload["archive"]["bucket"], upload["archive"]["key"])
    [out] = await scan.handle(_confirmed(upload), store=ports.store, catalog=ports.catalog, settings=ports.settings)
    assert not out.payload.passed and [f.rule_id for f in out.payload.findings] == ["SLU870"]


def _scanned(upload: dict, data: bytes, *, passed: bool = True, findings: list[Finding] | None = None) -> Envelope:
    return make(PluginScanned(
        upload_id=upload["upload_id"], plugin_name=upload["plugin_name"], version=upload["version"],
        archive=ObjectRef(**upload["archive"]), sha256=hashlib.sha256(data).hexdigest(), passed=passed,
        findings=findings or []), namespace=NS)


def _report(**changes) -> ValidationReport:
    manifest = ManifestSummary(feature_extractor_name="hash_embedder", features=[
        {"feature_name": "embedding", "feature_type": "embedding", "embedding_dim": 32, "distance_metric": "cosine"}])
    return ValidationReport(passed=True, manifest=manifest, feature_uris=["sluice://hash_embedder@1.0.0/embedding"],
                            **changes)


async def test_register_copies_the_verified_archive_to_the_versions_key_and_activates_it(ports: Ports) -> None:
    data = zip_folder(HASH_EMBEDDER)
    upload = await _uploaded(ports, data)
    calls = []

    async def validate(root: Path, **kwargs) -> ValidationReport:
        calls.append((root.joinpath("manifest.py").is_file(), kwargs["namespace"], kwargs["name"]))
        return _report()

    [out] = await register.handle(_scanned(upload, data), store=ports.store, catalog=ports.catalog,
                                  settings=ports.settings, validate=validate)
    plugin_id = plugin_id_for(NS, "hash_embedder", "1.0.0")
    assert out.type == "PluginRegistered" and out.payload.plugin_id == plugin_id
    assert calls == [(True, NS, "hash_embedder")]
    version = await ports.catalog.get(VERSIONS, plugin_id)
    assert version["archive"] == {"bucket": ports.settings.plugins_bucket, "key": archive_key(NS, "hash_embedder", "1.0.0")}
    assert await ports.store.get_bytes(**version["archive"]) == data
    assert await ports.store.head(upload["archive"]["bucket"], upload["archive"]["key"]) is None  # the upload is gone
    assert (await PluginCatalog(ports.catalog).head(NS, "hash_embedder"))["active_plugin_id"] == plugin_id
    assert (await ports.catalog.get(UPLOADS, upload["upload_id"]))["status"] == UploadStatus.REGISTERED


async def test_register_refuses_an_archive_replaced_after_its_scan(ports: Ports) -> None:
    data = zip_folder(HASH_EMBEDDER)
    upload = await _uploaded(ports, data)
    await ports.store.put_bytes(upload["archive"]["bucket"], upload["archive"]["key"], data + b"trojan")

    async def never(*args, **kwargs):
        raise AssertionError("a replaced archive must not be run")

    [out] = await register.handle(_scanned(upload, data), store=ports.store, catalog=ports.catalog,
                                  settings=ports.settings, validate=never)
    assert out.type == "PluginRegistrationFailed" and [e.rule_id for e in out.payload.errors] == ["SLU871"]
    assert (await ports.catalog.get(UPLOADS, upload["upload_id"]))["status"] == UploadStatus.FAILED


async def test_register_reports_the_dry_runs_errors_and_registers_nothing(ports: Ports) -> None:
    data = zip_folder(HASH_EMBEDDER)
    upload = await _uploaded(ports, data)
    error = Finding(rule_id="SLU840", severity="error", file="pipeline.py", line=3, message="boom", hint="fix it")

    async def validate(root: Path, **kwargs) -> ValidationReport:
        return ValidationReport(passed=False, findings=[error])

    [out] = await register.handle(_scanned(upload, data), store=ports.store, catalog=ports.catalog,
                                  settings=ports.settings, validate=validate)
    assert out.type == "PluginRegistrationFailed" and out.payload.errors == [error]
    assert await ports.catalog.get(VERSIONS, plugin_id_for(NS, "hash_embedder", "1.0.0")) is None


async def test_register_of_a_failed_scan_records_its_findings(ports: Ports) -> None:
    upload = await _uploaded(ports, b"zip")
    bad = Finding(rule_id="SLU101", severity="error", file="a.py", line=1, message="forbidden module")
    [out] = await register.handle(_scanned(upload, b"zip", passed=False, findings=[bad]), store=ports.store,
                                  catalog=ports.catalog, settings=ports.settings)
    assert out.type == "PluginRegistrationFailed" and out.payload.errors == [bad]
    assert (await ports.catalog.get(UPLOADS, upload["upload_id"]))["validation_errors"][0]["rule_id"] == "SLU101"


# --- deploy ---------------------------------------------------------------------------------

class Cluster:
    runs_jobs = True

    def resources(self) -> dict[str, float]:
        return {"CPU": 2.0}


async def _requested(ports: Ports, *, has_realtime: bool = True) -> tuple[str, Envelope[DeployPlugin]]:
    plugin_id = plugin_id_for(NS, "hash_embedder", "1.0.0")
    await ports.catalog.insert(VERSIONS, plugin_id, {
        "plugin_id": plugin_id, "namespace": NS, "plugin_name": "hash_embedder", "version": "1.0.0", "sha256": "0" * 64,
        "archive": {"bucket": ports.settings.plugins_bucket, "key": "k.zip"}, "has_realtime": has_realtime,
        "manifest": {"features": [{"feature_name": "embedding", "embedding_dim": 32}], "input_fields": ["text"]},
    })
    await request_deploy(ports.catalog, ports.publish, NS, plugin_id)
    [command] = [e for e in ports.published if e.type == "DeployPlugin"]
    ports.published.clear()
    return plugin_id, command


async def test_deploy_publishes_each_step_and_returns_deployed(ports: Ports) -> None:
    plugin_id, command = await _requested(ports)
    serve = MemoryServeControl()
    [out] = await deploy.handle(command, catalog=ports.catalog, store=ports.store, settings=ports.settings,
                                compute=Cluster(), serve=serve, publish=ports.publish)
    assert [e.payload.status for e in ports.published] == ["PENDING", "IN_PROGRESS"]
    assert out.payload.status == "DEPLOYED" and out.causation_id == command.event_id
    record = await Deployments(ports.catalog).record(plugin_id)
    assert record["status"] == DeploymentStatus.DEPLOYED
    assert (await Deployments(ports.catalog).serving(NS, "hash_embedder"))["plugin_id"] == plugin_id
    assert (await serve.state(record["app_name"])).status == "RUNNING"


async def test_a_replica_that_fails_to_start_fails_the_deployment_with_its_error_and_removes_it(ports: Ports) -> None:
    plugin_id, command = await _requested(ports)
    serve = MemoryServeControl()
    app = (await Deployments(ports.catalog).record(plugin_id))["app_name"]
    serve.fail(app, "RuntimeError: model weights are missing\n  File \"realtime.py\", line 9, in __init__")
    [out] = await deploy.handle(command, catalog=ports.catalog, store=ports.store, settings=ports.settings,
                                compute=Cluster(), serve=serve, publish=ports.publish)
    assert out.payload.status == "FAILED" and out.payload.error.startswith("RuntimeError: model weights are missing")
    assert (await serve.state(app)).status == "NOT_STARTED"
    assert await Deployments(ports.catalog).serving(NS, "hash_embedder") is None


async def test_deploy_without_compute_fails_with_the_reason(ports: Ports) -> None:
    _, command = await _requested(ports)

    class NoCluster(Cluster):
        runs_jobs = False

    [out] = await deploy.handle(command, catalog=ports.catalog, store=ports.store, settings=ports.settings,
                                compute=NoCluster(), serve=MemoryServeControl(), publish=ports.publish)
    assert out.payload.status == "FAILED" and "SLUICE_COMPUTE=none" in out.payload.error


async def test_a_batch_only_version_is_not_deployed_and_never_reaches_the_handler(ports: Ports) -> None:
    plugin_id = plugin_id_for(NS, "hash_embedder", "1.0.0")
    await ports.catalog.insert(VERSIONS, plugin_id, {
        "plugin_id": plugin_id, "namespace": NS, "plugin_name": "hash_embedder", "version": "1.0.0",
        "has_realtime": False, "manifest": {"features": [], "supported_input_types": ["image"]}})
    record = await request_deploy(ports.catalog, ports.publish, NS, plugin_id)
    assert record["status"] == DeploymentStatus.NOT_DEPLOYED and "batch-only" in record["reason"]
    assert [e.type for e in ports.published] == ["PluginDeploymentChanged"]


# --- objects: notifications → ingest ----------------------------------------------------------

def _object(bucket: str, key: str, *, etag: str = "e1") -> ObjectCreated:
    return ObjectCreated(bucket=bucket, key=key, size=5, etag=etag, source="s3")


async def test_notifications_read_the_namespace_from_where_the_object_is_and_drop_the_rest(ports: Ports) -> None:
    await ensure_bucket(ports.catalog, NS, "docs")
    data = ports.settings.data_bucket
    raw = make(BucketNotification(objects=[
        _object(data, f"{NS}/docs/reports/a.txt"), _object(data, f"{NS}/unused/b.txt"), _object(data, "globex/docs/c.txt"),
        _object("docs", f"{NS}/docs/d.txt"), _object(data, f"{NS}/docs"),
    ]))
    out = await notifications.handle(raw, catalog=ports.catalog, settings=ports.settings)
    assert [(e.namespace, e.payload.bucket, e.payload.key, e.causation_id) for e in out] == [
        (NS, "docs", "reports/a.txt", raw.event_id)]


class Scheduler:
    pokes = 0

    def poke(self) -> None:
        self.pokes += 1


async def test_ingest_queues_each_object_version_once_per_matching_collection_of_its_namespace(ports: Ports) -> None:
    await ensure_bucket(ports.catalog, NS, "docs")
    for cid, ns, prefix in (("col_a", NS, "reports/"), ("col_b", NS, "other/"), ("col_c", "globex", "")):
        await ports.catalog.insert(COLLECTIONS, cid, {"collection_id": cid, "namespace": ns,
                                                      "source": {"bucket": "docs", "prefix": prefix}})
    scheduler = Scheduler()
    event = make(_object("docs", "reports/q1.txt"), namespace=NS)
    assert await ingest.handle(event, catalog=ports.catalog, vectors=None, ingest=scheduler) == []
    await ingest.handle(event, catalog=ports.catalog, vectors=None, ingest=scheduler)  # redelivered
    entries = await ports.catalog.find(INGEST_QUEUE, {})
    assert [e["collection_id"] for e in entries] == ["col_a"] and scheduler.pokes == 1
    newer = make(_object("docs", "reports/q1.txt", etag="e2"), namespace=NS)
    await ingest.handle(newer, catalog=ports.catalog, vectors=None, ingest=scheduler)
    assert await ports.catalog.count(INGEST_QUEUE, {}) == 2 and scheduler.pokes == 2


async def test_ingest_refuses_an_event_for_a_bucket_its_namespace_does_not_have(ports: Ports) -> None:
    await ensure_bucket(ports.catalog, "globex", "docs")
    await ports.catalog.insert(COLLECTIONS, "col_g", {"collection_id": "col_g", "namespace": "globex",
                                                      "source": {"bucket": "docs", "prefix": ""}})
    forged = make(_object("docs", "q1.txt"), namespace=NS)
    with pytest.raises(PermanentError, match="has no bucket 'docs'"):
        await ingest.handle(forged, catalog=ports.catalog, vectors=None, ingest=Scheduler())
    assert await ports.catalog.count(INGEST_QUEUE, {}) == 0


# --- models: validate_model -------------------------------------------------------------------

async def _model_upload(ports: Ports, data: bytes, model_format: str) -> Envelope[ModelUploadConfirmed]:
    record = await ModelRegistry(ports.catalog).create(
        NS, name="tiny", version="1.0.0", model_format=model_format, framework=None, task_type=None, resources={},
        bucket=ports.settings.models_bucket, max_models=10, expires_in=600)
    await ModelRegistry(ports.catalog).update(NS, record["model_id"], {"status": ModelStatus.VALIDATING})
    await ports.store.put_bytes(record["upload"]["bucket"], record["upload"]["key"], data)
    return make(ModelUploadConfirmed(model_id=record["model_id"], model_format=model_format,
                                     archive=ObjectRef(**record["upload"])), namespace=NS)


async def test_validate_model_rejects_an_archive_that_is_not_a_model_and_keeps_nothing(ports: Ports) -> None:
    event = await _model_upload(ports, tar_gz({"README.txt": b"not weights"}), "safetensors")
    [out] = await validate_model.handle(event, catalog=ports.catalog, store=ports.store, settings=ports.settings)
    assert out.type == "ModelRejected" and out.payload.errors
    record = await ModelRegistry(ports.catalog).get(NS, event.payload.model_id)
    assert record["status"] == ModelStatus.REJECTED
    assert await ports.store.head(event.payload.archive.bucket, event.payload.archive.key) is None


async def test_validate_model_registers_safetensors_weights_at_the_final_key(ports: Ports) -> None:
    import numpy as np
    from safetensors.numpy import save

    weights = save({"layer.weight": np.ones((4, 4), dtype=np.float32)})
    data = tar_gz({"model.safetensors": weights})
    event = await _model_upload(ports, data, "safetensors")
    [out] = await validate_model.handle(event, catalog=ports.catalog, store=ports.store, settings=ports.settings)
    assert out.type == "ModelRegistered" and out.payload.sha256 == hashlib.sha256(data).hexdigest()
    record = await ModelRegistry(ports.catalog).get(NS, event.payload.model_id)
    assert record["status"] == ModelStatus.REGISTERED
    assert await ports.store.get_bytes(**record["archive"]) == data
    again = await validate_model.handle(event, catalog=ports.catalog, store=ports.store, settings=ports.settings)
    assert [e.type for e in again] == ["ModelRegistered"]  # a redelivery reports the recorded outcome
