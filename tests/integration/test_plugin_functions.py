"""The scan and register handlers called directly over the embedded adapters: redelivery, a
swapped archive, secrets reaching plugin code, and what a registered version keeps."""

from __future__ import annotations

import pytest

from engine.plugins.archive import write_zip
from events.envelope import make
from events.payloads import ObjectRef, PluginUploadConfirmed
from functions.handlers import register, scan
from functions.records.plugins import UPLOADS, VERSIONS, PluginCatalog
from functions.records.secret_store import SECRETS, SecretsStore
from infra.bootstrap import bootstrap
from infra.settings import Settings
from tests.fixtures.plugins import HASH_EMBEDDER, zip_folder

pytestmark = pytest.mark.integration


@pytest.fixture
async def platform(tmp_path):
    settings = Settings(data_dir=tmp_path, bus="memory", compute="none", admin_key="sk_admin_x-0123456789abcdef012345")
    async with bootstrap(settings) as platform:
        await platform.store.ensure_bucket(settings.plugins_bucket)
        yield platform


async def confirmed(platform, archive: bytes, *, name: str = "hash_embedder", version: str = "1.0.0", namespace: str = "acme"):
    upload = await PluginCatalog(platform.catalog).create_upload(
        namespace, name, version=version, description="msg", bucket=platform.settings.plugins_bucket, expires_in=600
    )
    ref = upload["archive"]
    await platform.store.put_bytes(ref["bucket"], ref["key"], archive)
    await platform.catalog.update(UPLOADS, upload["upload_id"], {"status": "CONFIRMED"})
    return make(PluginUploadConfirmed(
        upload_id=upload["upload_id"], plugin_name=name, version=version, archive=ObjectRef(**ref),
    ), namespace=namespace)


async def run(platform, event):
    deps = {"store": platform.store, "catalog": platform.catalog, "settings": platform.settings}
    [scanned] = await scan.handle(event, **deps)
    return scanned, await register.handle(scanned, **deps)


async def test_a_redelivered_scan_result_registers_once_and_emits_the_same_event(platform):
    event = await confirmed(platform, zip_folder(HASH_EMBEDDER, top="hash_embedder"))
    scanned, [first] = await run(platform, event)
    deps = {"store": platform.store, "catalog": platform.catalog, "settings": platform.settings}
    [again] = await register.handle(scanned, **deps)  # the upload object is gone by now
    assert first.type == again.type == "PluginRegistered"
    assert first.payload == again.payload
    assert await platform.catalog.count(VERSIONS) == 1


async def test_an_archive_replaced_after_its_scan_is_refused(platform):
    event = await confirmed(platform, zip_folder(HASH_EMBEDDER, top="hash_embedder"))
    deps = {"store": platform.store, "catalog": platform.catalog, "settings": platform.settings}
    [scanned] = await scan.handle(event, **deps)
    ref = event.payload.archive
    await platform.store.put_bytes(ref.bucket, ref.key, zip_folder(HASH_EMBEDDER, top="hash_embedder", edits={
        "processors/evil.py": "import subprocess\n"}))
    [failed] = await register.handle(scanned, **deps)
    assert failed.type == "PluginRegistrationFailed"
    assert [e.rule_id for e in failed.payload.errors] == ["SLU871"]
    assert await platform.catalog.count(VERSIONS) == 0


async def test_the_registered_archive_lives_where_no_upload_url_points(platform):
    archive = zip_folder(HASH_EMBEDDER, top="hash_embedder")
    event = await confirmed(platform, archive)
    _, [registered] = await run(platform, event)
    record = await platform.catalog.get(VERSIONS, registered.payload.plugin_id)
    assert record["archive"]["key"] == "acme/plugins/hash_embedder/1.0.0/plugin.zip"
    assert record["archive"]["key"] != event.payload.archive.key
    assert await platform.store.get_bytes(record["archive"]["bucket"], record["archive"]["key"]) == archive
    assert await platform.store.head(event.payload.archive.bucket, event.payload.archive.key) is None
    assert record["sha256"] and record["description"] == "msg" and record["files"]
    assert record["manifest"]["features"][0]["feature_name"] == "hash_embedding"


async def test_plugin_code_reads_its_namespace_secret_and_the_catalog_holds_only_ciphertext(platform):
    secrets = SecretsStore.from_settings(platform.catalog, platform.settings)
    await secrets.put("acme", "EXTERNAL_API_KEY", "tok-123456")
    processor = '''
import pandas as pd


class SecretReader:
    def __init__(self, config, **kwargs):
        self.secrets = config["secrets"]

    async def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        token = await self.secrets.get("EXTERNAL_API_KEY")
        batch["hash_embedding"] = [[float(len(token))] + [0.0] * 31 for _ in range(len(batch))]
        return batch
'''
    pipeline = '''
from engine.plugins.extractors.pipeline import PipelineDefinition, ResourceType, StepDefinition, build_pipeline_steps
from .processors.reader import SecretReader


def build_steps(extractor_request, container=None, base_steps=None, **kwargs):
    step = StepDefinition(service_class=SecretReader, resource_type=ResourceType.API, config={"secrets": container.secrets})
    return {"steps": build_pipeline_steps(PipelineDefinition(name="hash_embedder", version="1.0.0", steps=[step]))}
'''
    archive = zip_folder(HASH_EMBEDDER, top="hash_embedder", edits={"processors/reader.py": processor, "pipeline.py": pipeline})
    _, [registered] = await run(platform, await confirmed(platform, archive))
    assert registered.type == "PluginRegistered", registered.payload
    [stored] = await platform.catalog.find(SECRETS, {"namespace": "acme"})
    assert "tok-123456" not in str(stored)
    assert [s["name"] for s in await secrets.list("acme")] == ["EXTERNAL_API_KEY"]

    # the same plugin in another namespace has no such secret: the dry run fails naming it
    _, [failed] = await run(platform, await confirmed(platform, archive, namespace="globex"))
    assert failed.type == "PluginRegistrationFailed"
    assert any("EXTERNAL_API_KEY" in e.message and e.file == "processors/reader.py" for e in failed.payload.errors)


async def test_nothing_is_left_in_the_scratch_folder_after_either_outcome(platform):
    await run(platform, await confirmed(platform, zip_folder(HASH_EMBEDDER, top="hash_embedder")))
    await run(platform, await confirmed(platform, write_zip([("../x.py", b"x = 1\n")]), version="1.0.1"))
    assert list(platform.settings.scratch_dir.iterdir()) == []
