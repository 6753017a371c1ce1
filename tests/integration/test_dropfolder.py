"""The drop folder: complete files become objects and `ObjectCreated` events, delete markers
`ObjectRemoved` events; a file still written waits, and a bad file is set aside with its reason
while intake goes on. The platform's local object store is the real adapter here."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import decode
from events.errors import TransientError
from functions.records.tenancy import Tenancy
from functions.runtime import dropfolder
from functions.runtime.dropfolder import DropFolder, locked, open_for_writing
from infra.bootstrap import bootstrap
from infra.objectstore.local import LocalObjectStore
from infra.settings import Settings
from tests.unit.test_dropfolder_names import dropped_path, scenario

pytestmark = pytest.mark.integration

QUIET_S = 0.3  # the quiet period of the polling tests: short, so they stay fast


@pytest.fixture
async def drop(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", bus="memory", compute="none", admin_key="sk_admin_x-0123456789abcdef012345")
    async with bootstrap(settings) as platform:
        await Tenancy(platform.catalog, "k").create_namespace("acme")
        await Tenancy(platform.catalog, "k").create_namespace("globex")
        consumer = await platform.bus.subscribe([platform.topics.objects], group_id="t", from_beginning=True)
        folder = DropFolder(tmp_path / "drop", platform.store, platform.catalog, platform.bus, platform.topics,
                            stable_s=QUIET_S)
        folder.root.mkdir()
        yield folder, platform, consumer
        await consumer.close()


def put(folder: DropFolder, rel: str, data: bytes | str = b"x") -> Path:
    path = folder.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


async def settled(folder: DropFolder) -> int:
    """Look, wait out the quiet period, look again: what a complete file needs."""
    taken = await folder.poll()
    await asyncio.sleep(folder.stable_s + 0.05)
    return taken + await folder.poll()


async def events_of(consumer, *, timeout_s: float = 0.5) -> list:
    return [decode(m.value) for m in await consumer.fetch(timeout_s=timeout_s)]


def reasons(folder: DropFolder) -> dict[str, str]:
    return {p.relative_to(folder.root / ".rejected").as_posix(): p.read_text() for p in (folder.root / ".rejected").rglob("*.reason")}


@contextlib.asynccontextmanager
async def running(folder: DropFolder):
    stop = asyncio.Event()
    task = asyncio.create_task(folder.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(condition, *, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# --- what is taken, and when -------------------------------------------------------------------


async def test_a_complete_file_is_stored_announced_and_removed(drop):
    folder, platform, consumer = drop
    path = put(folder, "acme/docs/reports/q1.txt", "quarterly numbers")
    assert await folder.poll() == 0  # first sight: its quiet period starts now
    await asyncio.sleep(QUIET_S + 0.05)
    assert await folder.poll() == 1
    assert not path.exists()
    assert await platform.objects("acme").get_bytes("docs", "reports/q1.txt") == b"quarterly numbers"
    assert await platform.store.get_bytes("sluice-data", "acme/docs/reports/q1.txt") == b"quarterly numbers"
    [event] = await events_of(consumer)
    assert event.namespace == "acme" and event.payload.source == "drop" and event.payload.content_type == "text/plain"


async def test_a_file_still_growing_and_temporary_names_wait(drop):
    folder, _, _ = drop
    path = put(folder, "acme/docs/big.txt", "part one")
    put(folder, "acme/docs/upload.txt.part")
    put(folder, "acme/docs/.hidden.txt")
    put(folder, "acme/docs/.cache/inside.txt")
    await folder.poll()
    await asyncio.sleep(QUIET_S + 0.05)
    path.write_text("part one, part two")  # changed just before the quiet period ended
    assert await folder.poll() == 0
    await asyncio.sleep(QUIET_S + 0.05)
    assert await folder.poll() == 1
    await asyncio.sleep(QUIET_S + 0.05)
    assert await folder.poll() == 0
    for rel in ("upload.txt.part", ".hidden.txt", ".cache/inside.txt"):
        assert (folder.root / "acme" / "docs" / rel).exists()


async def test_the_same_bucket_name_in_two_namespaces_is_two_folders(drop):
    folder, platform, _ = drop
    for namespace in ("acme", "globex"):
        put(folder, f"{namespace}/docs/a.txt", f"{namespace}'s")
    assert await settled(folder) == 2
    assert await platform.objects("acme").get_bytes("docs", "a.txt") == b"acme's"
    assert await platform.objects("globex").get_bytes("docs", "a.txt") == b"globex's"


async def test_a_slow_copy_that_stalls_longer_than_a_second_ends_as_one_whole_object(drop, tmp_path):
    folder, platform, consumer = drop
    folder.stable_s, folder.rescan_s = dropfolder.DEFAULT_STABLE_S, 0.2  # the default rule, looked at often
    target = folder.root / "acme" / "docs" / "slow.bin"
    target.parent.mkdir(parents=True)
    whole = os.urandom(256 * 1024)
    # GIVEN a writer in another process that writes half, stalls 1.5 s (the old rule took it then), finishes
    script = (
        "import sys, time\n"
        f"data = open({str(tmp_path / 'whole.bin')!r}, 'rb').read()\n"
        f"with open({str(target)!r}, 'wb') as out:\n"
        "    out.write(data[: len(data) // 2]); out.flush()\n"
        "    time.sleep(1.5)\n"
        "    out.write(data[len(data) // 2 :])\n"
    )
    (tmp_path / "whole.bin").write_bytes(whole)
    async with running(folder):
        writer = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
        assert await writer.wait() == 0
        await until(lambda: not target.exists())
    # THEN one object, all the bytes, one event
    assert await platform.objects("acme").get_bytes("docs", "slow.bin") == whole
    [event] = await events_of(consumer)
    assert event.payload.size == len(whole)


async def test_a_stall_longer_than_one_look_is_covered_by_the_quiet_period_alone(drop):
    # A writer the open-file check cannot see (another machine): it reopens and appends after a stall.
    folder, platform, consumer = drop
    folder.stable_s, folder.check_writers = 1.0, False
    path = put(folder, "acme/docs/resumed.bin", b"a" * 1000)
    await folder.poll()
    await asyncio.sleep(0.6)
    assert await folder.poll() == 0  # the old rule (unchanged over one look) took it here
    with open(path, "ab") as out:
        out.write(b"b" * 1000)
    await asyncio.sleep(0.6)
    assert await folder.poll() == 0  # changed since the last look: the quiet period starts again
    await asyncio.sleep(1.05)
    assert await folder.poll() == 1
    assert await platform.objects("acme").get_bytes("docs", "resumed.bin") == b"a" * 1000 + b"b" * 1000
    assert len(await events_of(consumer)) == 1


async def test_a_file_held_open_for_writing_is_not_taken(drop):
    folder, platform, _ = drop
    folder.stable_s = 0
    path = folder.root / "acme" / "docs" / "open.txt"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as out:
        out.write(b"all of it")
        out.flush()
        assert await folder.poll() == 0
        await asyncio.sleep(0.1)
        assert await folder.poll() == 0
        folder._pending[path].retry_at = 0  # no need to wait for the recheck
        assert await folder.poll() == 0
    folder._pending[path].retry_at = 0
    assert await folder.poll() == 1
    assert await platform.objects("acme").get_bytes("docs", "open.txt") == b"all of it"


async def test_a_file_a_writer_has_locked_is_not_taken(drop):
    folder, _, _ = drop
    folder.stable_s = 0
    path = put(folder, "acme/docs/locked.txt", "locked")
    with open(path, "rb") as reader:  # a lock, but no descriptor open for writing
        fcntl.flock(reader.fileno(), fcntl.LOCK_EX)
        assert await folder.poll() == 0
        fcntl.flock(reader.fileno(), fcntl.LOCK_UN)
    folder._pending[path].retry_at = 0
    assert await folder.poll() == 1


def test_the_writer_checks_see_descriptors_and_both_kinds_of_lock(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    st = path.stat()
    me = {(st.st_dev, st.st_ino)}
    assert open_for_writing(me) == set() and not locked(path)
    with open(path, "rb"):
        assert open_for_writing(me) == set()  # reading is not writing
    with open(path, "ab"):
        assert open_for_writing(me) == me
    with open(path, "r+b") as out:
        fcntl.lockf(out, fcntl.LOCK_EX)
        assert locked(path)
        fcntl.lockf(out, fcntl.LOCK_UN)
    # a lock held by another process
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl, sys, time\nf = open({str(path)!r}, 'r+b')\nfcntl.lockf(f, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True)\ntime.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert locked(path)
        assert open_for_writing(me) == me
    finally:
        holder.kill()
        holder.wait()
    assert not locked(path)


async def test_a_file_renamed_into_place_is_taken_after_the_quiet_period(drop):
    folder, platform, _ = drop
    part = put(folder, "acme/docs/report.pdf.part", b"%PDF")
    assert await settled(folder) == 0
    part.rename(part.with_name("report.pdf"))
    assert await folder.poll() == 0
    await asyncio.sleep(QUIET_S + 0.05)
    assert await folder.poll() == 1
    assert (await platform.objects("acme").head("docs", "report.pdf")).content_type == "application/pdf"


async def test_a_file_that_changes_during_the_copy_stays_and_is_taken_again_as_a_new_version(drop, monkeypatch):
    folder, platform, consumer = drop
    path = put(folder, "acme/docs/moving.txt", "first")
    real_put_file = platform.store.put_file
    calls = 0

    async def put_file_while_it_changes(bucket, key, source, **options):
        nonlocal calls
        calls += 1
        info = await real_put_file(bucket, key, source, **options)
        if calls == 1:
            with open(path, "ab") as out:  # a writer appends while the copy runs
                out.write(b" and second")
        return info

    monkeypatch.setattr(platform.store, "put_file", put_file_while_it_changes)
    assert await settled(folder) == 0
    assert path.exists()  # not removed: it is not what was stored
    assert await settled(folder) == 1
    first, second = await events_of(consumer)
    assert (first.payload.key, second.payload.key) == ("moving.txt", "moving.txt")
    assert first.payload.etag != second.payload.etag
    assert await platform.objects("acme").get_bytes("docs", "moving.txt") == b"first and second"


# --- what is set aside ---------------------------------------------------------------------------


async def test_files_that_cannot_be_taken_are_set_aside_with_a_reason(drop):
    folder, platform, _ = drop
    for rel in ("nobody/docs/c.txt", "acme/loose.txt", "acme/Bad_Bucket/d.txt", "top.txt"):
        put(folder, rel)
    await settled(folder)
    found = reasons(folder)
    assert "namespace 'nobody' does not exist" in found["nobody/docs/c.txt.reason"]
    assert "drop/{namespace}/{bucket}/" in found["acme/loose.txt.reason"]
    assert "drop/{namespace}/{bucket}/" in found["top.txt.reason"]
    assert "invalid bucket name 'Bad_Bucket'" in found["acme/Bad_Bucket/d.txt.reason"]
    assert (folder.root / ".rejected" / "nobody" / "docs" / "c.txt").read_bytes() == b"x"
    assert await platform.store.head("sluice-data", "nobody/docs/c.txt") is None


async def test_a_bad_name_is_set_aside_while_the_good_file_beside_it_is_taken(drop):
    folder, platform, consumer = drop
    put(folder, "acme/docs/a\\b.txt", "bad")
    put(folder, "acme/docs/bell\x07.txt", "bad")
    put(folder, "acme/docs/good.txt", "good")
    deep = "/".join(["d" * 200] * 6)  # a key over 1024 bytes
    put(folder, f"acme/docs/{deep}/long.txt", "bad")
    long_name = "\\" + "n" * 250  # refused, and too long a name for a `.reason` beside it
    put(folder, f"acme/docs/{long_name}", "bad, long")
    assert await settled(folder) == 1
    assert await platform.objects("acme").get_bytes("docs", "good.txt") == b"good"
    [event] = await events_of(consumer)
    assert event.payload.key == "good.txt"
    found = reasons(folder)
    assert "backslash" in found["acme/docs/a\\b.txt.reason"]
    assert "control character" in found["acme/docs/bell\x07.txt.reason"]
    assert "longer than 1024 bytes" in found[f"acme/docs/{deep}/long.txt.reason"]
    [unnamed] = [rel for rel in found if rel.startswith(".unnamed/")]
    assert unnamed.endswith("/file.reason") and f"dropped as: acme/docs/{long_name}" in found[unnamed]
    assert (folder.root / ".rejected" / unnamed.removesuffix(".reason")).read_bytes() == b"bad, long"
    assert [p for p in (folder.root / "acme").rglob("*") if p.is_file()] == []


async def test_a_key_under_an_existing_object_is_set_aside_on_the_local_store(drop):
    folder, platform, _ = drop
    put(folder, "acme/docs/a", "an object named a")
    assert await settled(folder) == 1
    put(folder, "acme/docs/a/b", "cannot live beside it")
    assert await settled(folder) == 0
    assert "cannot hold both an object and other objects" in reasons(folder)["acme/docs/a/b.reason"]
    # AND a second bad file of the same name does not replace the first one set aside
    put(folder, "acme/docs/a/b", "again")
    await settled(folder)
    kept = sorted(p.read_bytes() for p in (folder.root / ".rejected").rglob("b"))
    assert kept == [b"again", b"cannot live beside it"]


async def test_a_store_outage_leaves_files_in_place_and_intake_resumes(drop, monkeypatch):
    folder, platform, _ = drop
    monkeypatch.setattr(dropfolder, "BACKOFF_BASE_S", 0.0)
    real_put_file = platform.store.put_file
    down = True

    async def flaky(*args, **options):
        if down:
            raise TransientError("store unavailable")
        return await real_put_file(*args, **options)

    monkeypatch.setattr(platform.store, "put_file", flaky)
    path = put(folder, "acme/docs/waits.txt", "waits")
    assert await settled(folder) == 0
    assert path.exists() and not (folder.root / ".rejected").exists()
    down = False
    assert await folder.poll() == 1


async def test_an_unexpected_error_is_retried_then_the_file_is_set_aside(drop, monkeypatch):
    folder, platform, _ = drop
    monkeypatch.setattr(dropfolder, "BACKOFF_BASE_S", 0.0)
    real_put_file = platform.store.put_file

    async def broken_for_one(bucket, key, source, **options):
        if key.endswith("cursed.txt"):
            raise RuntimeError("a bug")
        return await real_put_file(bucket, key, source, **options)

    monkeypatch.setattr(platform.store, "put_file", broken_for_one)
    put(folder, "acme/docs/cursed.txt")
    put(folder, "acme/docs/fine.txt")
    assert await settled(folder) == 1
    for _ in range(dropfolder.MAX_ATTEMPTS):
        await folder.poll()
    assert "failed 5 times; last error: RuntimeError: a bug" in reasons(folder)["acme/docs/cursed.txt.reason"]


# --- deletes ------------------------------------------------------------------------------------


async def test_a_delete_marker_deletes_the_object_and_announces_it(drop):
    folder, platform, consumer = drop
    put(folder, "acme/docs/reports/q1.txt", "numbers")
    assert await settled(folder) == 1
    marker = put(folder, "acme/docs/.delete/reports/q1.txt", b"")
    assert await settled(folder) == 1
    assert await platform.objects("acme").head("docs", "reports/q1.txt") is None
    assert not marker.exists()
    created, removed = await events_of(consumer)
    assert created.type == "ObjectCreated" and removed.type == "ObjectRemoved"
    assert removed.namespace == "acme"
    assert (removed.payload.bucket, removed.payload.key, removed.payload.source) == ("docs", "reports/q1.txt", "drop")


async def test_delete_markers_for_unknown_namespaces_or_buckets_are_set_aside(drop):
    folder, platform, consumer = drop
    put(folder, "nobody/docs/.delete/x.txt", b"")
    put(folder, "acme/never-used/.delete/x.txt", b"")
    await settled(folder)
    found = reasons(folder)
    assert "namespace 'nobody' does not exist" in found["nobody/docs/.delete/x.txt.reason"]
    assert "bucket 'never-used' does not exist" in found["acme/never-used/.delete/x.txt.reason"]
    assert await events_of(consumer, timeout_s=0.1) == []


# --- the watcher --------------------------------------------------------------------------------


async def test_the_watcher_picks_up_files_without_waiting_for_a_rescan(drop):
    folder, platform, _ = drop
    folder.rescan_s, folder.stable_s = 3600, 0.2
    first = put(folder, "acme/docs/present-at-start.txt", "first")
    async with running(folder):
        await until(lambda: not first.exists())  # the walk at start took it; the next is an hour away
        second = put(folder, "acme/docs/new.txt", "second")
        await until(lambda: not second.exists(), timeout_s=5)
        # a folder moved in with files already in it: the watcher reports only the folder
        outside = folder.root.parent / "staging" / "batch"
        outside.mkdir(parents=True)
        (outside / "one.txt").write_text("one")
        os.rename(outside, folder.root / "acme" / "docs" / "batch")
        await until(lambda: not (folder.root / "acme" / "docs" / "batch" / "one.txt").exists(), timeout_s=5)
    assert await platform.objects("acme").get_bytes("docs", "new.txt") == b"second"
    assert await platform.objects("acme").get_bytes("docs", "batch/one.txt") == b"one"


# --- names, on the local store ----------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(dropped_path(), min_size=1, max_size=6), min_size=1, max_size=2))
def test_every_dropped_file_is_taken_or_set_aside_on_the_local_store(rounds):
    # The local store refuses more than the fakes: backslashes, control characters, `a/b` beside `a`.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalObjectStore(Path(tmp) / "objects", "http://127.0.0.1:1", b"k" * 32)
        asyncio.run(scenario(Path(tmp) / "drop", rounds, store))


def test_a_file_beside_an_object_of_its_folders_name_is_set_aside_on_the_local_store(tmp_path):
    store = LocalObjectStore(tmp_path / "objects", "http://127.0.0.1:1", b"k" * 32)
    asyncio.run(scenario(tmp_path / "drop", [[b"acme/docs/a", b"acme/docs/x/y"], [b"acme/docs/a/b", b"acme/docs/x"]], store))
    # `x` was never dropped: the folder `x/` that `x/y` came in stays in the drop folder
    assert {p.name for p in (tmp_path / "drop" / ".rejected").rglob("*.reason")} == {"b.reason"}
