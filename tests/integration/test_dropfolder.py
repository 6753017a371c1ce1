"""The drop folder: complete files become objects and `ObjectCreated` events; the rest waits or
is set aside with its reason."""

from __future__ import annotations

import pytest

from events import decode
from functions.records.tenancy import Tenancy
from functions.runtime.dropfolder import DropFolder
from infra.bootstrap import bootstrap
from infra.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def drop(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", bus="memory", compute="none", admin_key="sk_admin_x-0123456789abcdef012345")
    async with bootstrap(settings) as platform:
        await Tenancy(platform.catalog, "k").create_namespace("acme")
        await Tenancy(platform.catalog, "k").create_namespace("globex")
        consumer = await platform.bus.subscribe([platform.topics.objects], group_id="t", from_beginning=True)
        folder = DropFolder(tmp_path / "drop", platform.store, platform.catalog, platform.bus, platform.topics)
        folder.root.mkdir()
        yield folder, platform, consumer
        await consumer.close()


async def test_a_complete_file_is_stored_announced_and_removed(drop):
    folder, platform, consumer = drop
    path = folder.root / "acme" / "docs" / "reports" / "q1.txt"
    path.parent.mkdir(parents=True)
    path.write_text("quarterly numbers")
    assert await folder.poll() == 0  # first sight: not yet known to be complete
    assert await folder.poll() == 1
    assert not path.exists()
    assert await platform.objects("acme").get_bytes("docs", "reports/q1.txt") == b"quarterly numbers"
    assert await platform.store.get_bytes("sluice-data", "acme/docs/reports/q1.txt") == b"quarterly numbers"
    [event] = [decode(m.value) for m in await consumer.fetch(timeout_s=1.0)]
    assert event.namespace == "acme" and event.payload.source == "drop" and event.payload.content_type == "text/plain"


async def test_a_file_still_growing_and_temporary_names_wait(drop):
    folder, _, _ = drop
    path = folder.root / "acme" / "docs" / "big.txt"
    path.parent.mkdir(parents=True)
    path.write_text("part one")
    (folder.root / "acme" / "docs" / "upload.txt.part").write_text("x")
    await folder.poll()
    path.write_text("part one, part two")  # changed between polls
    assert await folder.poll() == 0
    assert await folder.poll() == 1
    assert (folder.root / "acme" / "docs" / "upload.txt.part").exists()


async def test_the_same_bucket_name_in_two_namespaces_is_two_folders(drop):
    folder, platform, _ = drop
    for namespace in ("acme", "globex"):
        path = folder.root / namespace / "docs" / "a.txt"
        path.parent.mkdir(parents=True)
        path.write_text(f"{namespace}'s")
    await folder.poll(), await folder.poll()
    assert await platform.objects("acme").get_bytes("docs", "a.txt") == b"acme's"
    assert await platform.objects("globex").get_bytes("docs", "a.txt") == b"globex's"


async def test_files_that_cannot_be_taken_are_set_aside_with_a_reason(drop):
    folder, platform, _ = drop
    for rel in ("nobody/docs/c.txt", "acme/loose.txt", "acme/Bad_Bucket/d.txt"):
        (folder.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder.root / rel).write_text("x")
    await folder.poll(), await folder.poll()
    reasons = {p.name: p.read_text() for p in (folder.root / ".rejected").rglob("*.reason")}
    assert "namespace 'nobody' does not exist" in reasons["c.txt.reason"]
    assert "drop/{namespace}/{bucket}/" in reasons["loose.txt.reason"]
    assert "invalid bucket name 'Bad_Bucket'" in reasons["d.txt.reason"]
    assert await platform.store.head("sluice-data", "nobody/docs/c.txt") is None
