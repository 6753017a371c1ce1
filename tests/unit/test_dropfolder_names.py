"""Property tests of the drop folder's names: whatever the relative path of a dropped file (any
Unicode, bytes that are not UTF-8, backslashes, `..`-like parts, control characters, names too long,
files and folders of one name), each file ends either taken (an `ObjectCreated` for its key, the
store holding its bytes) or set aside in `.rejected` with a `.reason` beside it; temporary names
stay where they are; nothing is lost, and a good file dropped after them is still taken.

On the fakes (memory store, catalog and bus), one `poll()` per round, no quiet period and no
look for writers (tests/integration/test_dropfolder.py covers those)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import decode
from events.topics import Topics
from functions.records.collection import ensure_bucket
from functions.records.tenancy import Tenancy
from functions.runtime.dropfolder import TEMPORARY_SUFFIXES, DropFolder
from infra.bus.memory import InMemoryBus
from infra.catalog.memory import MemoryCatalog
from infra.objectstore.base import ObjectStore
from infra.objectstore.memory import MemoryObjectStore

pytestmark = pytest.mark.unit

DATA_BUCKET = "sluice-data"
SPECIAL = [
    b"..a", b"...", b"..\\..", b"a\\b", b"\\", b"\x07bell", b"tab\tname", b"new\nline", b"\xff\xfe", b"caf\xc3\xa9",
    b"cafe\xcc\x81", "\u202eevil.txt".encode(), "日本語.txt".encode(), b"x" * 255, b"~lock", b".hidden", b"z.part",
    b"a", b"b", b"CON", b" ", b"trailing.",
]


def _segment() -> st.SearchStrategy[bytes]:
    text = st.text(st.characters(exclude_characters="/\x00", exclude_categories=["Cs"]), min_size=1, max_size=24)
    utf8 = text.map(lambda t: t.encode("utf-8"))
    return st.one_of(
        utf8, utf8, utf8, st.sampled_from(SPECIAL), st.binary(min_size=1, max_size=16), st.sampled_from([b"a", b"b"]),
    ).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_")[:255]).filter(lambda b: b not in (b"", b".", b".."))


@st.composite
def dropped_path(draw: st.DrawFn) -> bytes:
    """A relative path in the drop folder: mostly under a good namespace and bucket."""
    namespace, bucket = b"acme", b"docs"
    match draw(st.integers(0, 19)):
        case 0:
            return b"/".join(draw(st.lists(_segment(), min_size=1, max_size=2)))  # not under {namespace}/{bucket}/
        case 1:
            namespace = b"nobody"
        case 2:
            bucket = b"Bad_Bucket"
        case 3:
            namespace = draw(_segment())
        case 4:
            bucket = draw(_segment())
    parts = draw(st.lists(_segment(), min_size=1, max_size=3))
    if draw(st.integers(0, 9)) == 0:
        parts = [b"d" * 250] * 5 + parts  # a key far over 1024 bytes
    if draw(st.integers(0, 7)) == 0:
        parts = [b".delete", *parts]  # a delete marker
    return b"/".join([namespace, bucket, *parts])


def _temporary(rel: bytes) -> bool:
    """The oracle: what the module doc calls temporary (markers: only their key's parts count)."""
    parts = os.fsdecode(rel).split("/")
    if len(parts) >= 4 and parts[2] == ".delete" and not any(p.startswith((".", "~")) for p in parts[:2]):
        parts = parts[3:]
    return any(p.startswith((".", "~")) for p in parts) or parts[-1].endswith(TEMPORARY_SUFFIXES)


@dataclass
class Dropped:
    rel: bytes
    content: bytes


def _drop(root: Path, rels: list[bytes], start: int) -> list[Dropped]:
    """Write what the file system lets us: a path through an existing file (or onto a folder) is
    never dropped."""
    dropped: list[Dropped] = []
    for i, rel in enumerate(rels, start):
        path = Path(os.fsdecode(os.fsencode(root) + b"/" + rel))
        content = f"content {i}".encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "xb") as out:
                out.write(content)
        except OSError:
            continue
        dropped.append(Dropped(rel, content))
    return dropped


def _set_aside(root: Path) -> dict[bytes, Path]:
    """Content of every file in `.rejected` that has its `.reason` beside it -> its path."""
    found: dict[bytes, Path] = {}
    rejected = root / ".rejected"
    for path in rejected.rglob("*") if rejected.exists() else []:
        note = path.with_name(path.name + ".reason")
        if path.is_file() and not path.name.endswith(".reason") and note.is_file() and note.read_text().strip():
            found[path.read_bytes()] = path
    return found


async def scenario(root: Path, rounds: list[list[bytes]], store: ObjectStore | None = None) -> None:
    """Drop each round's files, poll once, and check where every file went (the store: the memory
    fake unless given)."""
    catalog, bus = MemoryCatalog(), InMemoryBus()
    store = store or MemoryObjectStore()
    async with catalog, store, bus:
        await Tenancy(catalog, "k").create_namespace("acme")
        await ensure_bucket(catalog, "acme", "docs")
        await store.ensure_bucket(DATA_BUCKET)
        topics = Topics()
        folder = DropFolder(root, store, catalog, bus, topics, data_bucket=DATA_BUCKET, stable_s=0, check_writers=False)
        root.mkdir()
        seen_events = 0
        start = 0
        kept: set[bytes] = set()  # what was set aside in earlier rounds: it must stay there
        for rels in [*rounds, [b"acme/docs/good-after.txt"]]:
            dropped = _drop(root, rels, start)
            start += len(rels)
            await folder.poll()
            events = [decode(m.value) for m in bus.published(topics.objects)][seen_events:]
            seen_events += len(events)
            created = {(e.namespace, e.payload.bucket, e.payload.key) for e in events if e.type == "ObjectCreated"}
            removed = {(e.namespace, e.payload.bucket, e.payload.key) for e in events if e.type == "ObjectRemoved"}
            aside = _set_aside(root)
            assert kept <= aside.keys(), "a file set aside earlier was replaced"
            for file in dropped:
                path = Path(os.fsdecode(os.fsencode(root) + b"/" + file.rel))
                if _temporary(file.rel):
                    assert path.read_bytes() == file.content, f"a temporary name was touched: {file.rel!r}"
                    continue
                assert not path.exists(), f"left in place: {file.rel!r}"
                if file.content in aside:
                    kept.add(file.content)
                    continue
                namespace, bucket, *rest = os.fsdecode(file.rel).split("/")
                if rest[:1] == [".delete"]:
                    assert (namespace, bucket, "/".join(rest[1:])) in removed, f"marker lost: {file.rel!r}"
                    continue
                key = "/".join(rest)
                assert (namespace, bucket, key) in created, f"lost: {file.rel!r}"
                if (namespace, bucket, key) in removed:
                    continue  # a marker for the same key in the same round: files go first, so the delete wins
                assert await store.get_bytes(DATA_BUCKET, f"{namespace}/{bucket}/{key}") == file.content
        assert ("acme", "docs", "good-after.txt") in created
        assert await store.get_bytes(DATA_BUCKET, "acme/docs/good-after.txt") == b"content %d" % (start - 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(dropped_path(), min_size=1, max_size=6), min_size=1, max_size=2))
def test_every_dropped_file_is_taken_or_set_aside_with_its_reason(rounds):
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "drop", rounds))


def test_names_that_collide_as_file_and_folder_across_rounds_are_each_accounted_for():
    # `a` taken, then `a/b` (the memory store, like S3, holds both); `x/y` then `x`; one bad name twice
    rounds = [[b"acme/docs/a", b"acme/docs/x/y", b"nobody/docs/a"], [b"acme/docs/a/b", b"acme/docs/x", b"nobody/docs/a"]]
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "drop", rounds))
