"""The drop folder of `sluice up`: files put under `DATA_DIR/drop/{namespace}/{bucket}/...` go into
that bucket (key = the rest of the path) and become `ObjectCreated` events; empty markers under
`drop/{namespace}/{bucket}/.delete/<key>` delete object `<key>` and become `ObjectRemoved` events.

Finding files. A file-system watcher (watchfiles: inotify on Linux) reports changes as they
happen; a full walk every `rescan_s` (`SLUICE_DROP_RESCAN_S`) and at start is the safety net for
what a watcher misses (an overflowing event queue, a folder moved in or created with files already
in it, files present before the start, a watcher that failed). `poll()` is one full walk and one
pass over what it found: tests call it directly instead of running the watcher.

When a file is complete. A copy can stall for seconds, so one unchanged look is not enough:

- quiet period: the file's size, mtime (ns) and inode stayed the same for `stable_s`
  (`SLUICE_DROP_STABLE_S`, default 2 s), counted from the last change the watcher reported or the
  last look that found it different. This is the only rule that covers writers on another machine
  (NFS, SMB) that take no locks: a copy that stalls for longer than `stable_s` and then goes on is
  taken half-written there (the check after the copy below then sees the change, and the whole
  file is taken again as a new version of the object);
- no writer (Linux): no process holds it open for writing, read from `/proc/*/fd` and
  `/proc/*/fdinfo` (the files' identities, not their names, so a file renamed while open counts).
  This sees the processes of the user Sluice runs as (all of them when it runs as root), on this
  machine and in its PID namespace: a writer of another user, in another container or on another
  machine is invisible to it;
- no lock: nobody holds a lock on it, asked without blocking: a POSIX lock (`fcntl`/`lockf`,
  queried with `F_OFD_GETLK`, which takes no lock and so never drops one of this process) and a
  BSD `flock` (probed with a shared lock, released at once). This covers writers that lock, of any
  user, and POSIX locks of NFS clients; writers that do not lock are not covered.

Names that are temporary are not taken and wait until renamed: any part starting with `.` or `~`
(dot files and folders), or ending in `.part`, `.tmp`, `.crdownload`, `.partial` or `.swp`. So a
file copied under a temporary name and renamed into place (the atomic-rename convention) is taken
one quiet period after the rename.

Taking a file: copy it into the store (read through a descriptor opened without following links
and compared with what was checked, so a file swapped for a link is never read), publish
`ObjectCreated`, then look at the file again; only when it is still the file that was checked
(size, mtime, inode) is it removed. If it changed during
the copy it stays and is taken again after a quiet period: the same key, a new etag (a new version
of the object). A crash in between leaves the file in place, so it is stored and announced again on
the next pass (the same bytes give the same etag, and ingest deduplicates by object version). The
folders a taken file leaves empty stay (removing them could race a writer about to create a file).

Deleting: an (empty) file at `drop/{namespace}/{bucket}/.delete/<key>` deletes object `<key>` of
that bucket (`NamespaceStore.delete`), publishes `ObjectRemoved(source="drop")`, and is removed. It
waits for a quiet period like any file. A marker for an object that does not exist still publishes
`ObjectRemoved` (a crash after the delete must not lose the event; what reacts to it is
idempotent). Within one pass, files are taken before markers; a marker's key follows the same name
rules as a dropped file (a marker under a temporary name waits).

What is set aside. A file that can never be taken — an unknown namespace or bucket, a path
outside `{namespace}/{bucket}/`, a name the store or the catalog refuses (`a\\b.txt`, a control
character, a key over 1024 bytes, `a/b` beside an object `a` on the local store: any `SluiceError`
but a transient one), a name that is not UTF-8 — is moved to `drop/.rejected/<its path>`, with
`<its path>.reason` beside it saying why. When that path cannot hold it (a name too long for the
`.reason` file, a file where a folder is needed, an earlier rejected file of the same name), it goes
to `drop/.rejected/.unnamed/<id>/<its name>` with the reason and its original path in
`<its name>.reason` (`file` and `file.reason` when its name is too long). A file that cannot even
be moved there is logged once and left alone until it changes; nothing is ever deleted unread.
Each file is handled on its own, so one bad file never holds up another.

A transient failure (`TransientError`, an adapter not connected: the store or the catalog is down)
leaves the file in place and pauses the whole pass with an exponential backoff (every file would
fail the same way). Any other error is retried with a backoff for the file alone, `MAX_ATTEMPTS`
times, and the file is then set aside with the last error as its reason.

Trust: the drop folder is on the trusted side; it reads tenant files as bytes and never runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import math
import mimetypes
import os
import random
import stat
import struct
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import watchfiles

from events.bus import EventBus
from events.envelope import AnyEnvelope, make
from events.errors import InvalidInput, NotConnected, NotFound, SluiceError, TransientError
from events.payloads import ObjectCreated, ObjectRemoved
from events.publisher import Publish
from events.topics import Topics
from functions.records.collection import ensure_bucket, has_bucket
from functions.records.tenancy import NAMESPACES
from functions.runtime.runner import publish
from infra.catalog.base import Catalog
from infra.objectstore.base import ObjectStore
from infra.objectstore.tenant import NamespaceStore

log = structlog.get_logger("sluice.drop")

TEMPORARY_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp")
REJECTED = ".rejected"
UNNAMED = ".unnamed"  # under REJECTED: files their own path could not hold
DELETE = ".delete"  # under {namespace}/{bucket}/: delete markers
DEFAULT_STABLE_S = 2.0
DEFAULT_RESCAN_S = 30.0
MAX_ATTEMPTS = 5  # unexpected errors of one file before it is set aside
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
BUSY_RECHECK_S = 1.0  # how soon a file open for writing or locked is looked at again
MAX_NAME_BYTES = 255
# Errors of the file system that the same name will always get.
NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL})

Identity = tuple[int, int, int, int]
"""What tells one state of a file from another: size, mtime in ns, device, inode."""


def _identity(st: os.stat_result) -> Identity:
    return (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


def _hidden(parts: Iterable[str]) -> bool:
    return any(p.startswith((".", "~")) for p in parts)


def _temporary(parts: tuple[str, ...]) -> bool:
    return _hidden(parts) or (bool(parts) and parts[-1].endswith(TEMPORARY_SUFFIXES))


def _kind(rel: Path) -> str | None:
    """`file` (to take), `marker` (a delete) or None (not ours: temporary, or set aside)."""
    parts = rel.parts
    if not parts or parts[0] == REJECTED:
        return None
    if len(parts) >= 4 and parts[2] == DELETE and not _hidden(parts[:2]) and not _temporary(parts[3:]):
        return "marker"
    return None if _temporary(parts) else "file"


def shown(rel: Path | str) -> str:
    """A path as text that always prints and encodes: bytes that are not UTF-8 become `\\xNN`."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _text(*names: str) -> None:
    """Refuse names that are not UTF-8 (no store, catalog or event can carry them)."""
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"the name '{shown(name)}' is not valid UTF-8", details={"name": shown(name)}) from None


def _backoff(attempts: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(attempts - 1, 0)) * random.uniform(0.5, 1.0)


# -- is someone still writing? -------------------------------------------------------------------

_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", None)  # Linux 3.15+
_FLOCK_STRUCT = "hhqqi4x"  # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid


def open_for_writing(candidates: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Which of the files (device, inode) some process holds open for writing, as far as `/proc`
    shows this process (see the module doc); an empty set where there is no `/proc`."""
    busy: set[tuple[int, int]] = set()
    if not candidates or not os.path.isdir("/proc/self/fd"):
        return busy
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # another user's process, or gone
            continue
        for fd in fds:
            link = f"{fd_dir}/{fd}"
            try:
                if not os.readlink(link).startswith("/"):
                    continue  # a socket, a pipe, an anonymous inode
                st = os.stat(link)
            except OSError:
                continue
            found = (st.st_dev, st.st_ino)
            if found in candidates and _writable(pid, fd):
                busy.add(found)
    return busy


def _writable(pid: str, fd: str) -> bool:
    """Whether the descriptor was opened for writing (unreadable flags count as writing)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        return True
    return True


def locked(path: Path) -> bool:
    """Whether a process holds a POSIX (`fcntl`/`lockf`) write lock or a BSD `flock` on the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # gone, or unreadable: taking it will say so
    try:
        if _OFD_GETLK is not None:
            asked = struct.pack(_FLOCK_STRUCT, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
            with contextlib.suppress(OSError):
                answer = fcntl.fcntl(fd, _OFD_GETLK, asked)
                if struct.unpack_from("h", answer)[0] != fcntl.F_UNLCK:
                    return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False  # a file system without flock
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# -- the folder ----------------------------------------------------------------------------------


@dataclass
class _Watched:
    """What the folder knows of one file it has not taken yet."""

    identity: Identity | None = None  # None: reported by the watcher, not looked at yet
    changed_at: float = 0.0  # monotonic time of the last change seen
    attempts: int = 0  # unexpected errors so far
    retry_at: float = 0.0  # not before (monotonic)
    stuck: bool = False  # could not be taken nor set aside: left alone until it changes


@dataclass
class DropFolder:
    root: Path
    store: ObjectStore
    catalog: Catalog
    bus: EventBus
    topics: Topics
    data_bucket: str = "sluice-data"
    """Where tenants' buckets live (`infra/objectstore/tenant.py`)."""
    stable_s: float = DEFAULT_STABLE_S
    """How long a file must stay unchanged before it is taken (`SLUICE_DROP_STABLE_S`)."""
    rescan_s: float = DEFAULT_RESCAN_S
    """How often the whole folder is walked besides the watcher (`SLUICE_DROP_RESCAN_S`)."""
    check_writers: bool = True
    """Refuse files open for writing or locked (see the module doc)."""
    publish: Publish | None = None
    """Where events go: the platform's outbox (stored durably before the file is removed); None:
    straight to `bus`."""
    _pending: dict[Path, _Watched] = field(default_factory=dict, init=False, repr=False)
    _new_folders: set[Path] = field(default_factory=set, init=False, repr=False)
    _paused_until: float = field(default=0.0, init=False, repr=False)
    _outages: int = field(default=0, init=False, repr=False)
    _wake: asyncio.Event | None = field(default=None, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)

    @classmethod
    def for_platform(cls, platform: Any, root: Path) -> DropFolder:
        settings = platform.settings
        return cls(root, platform.store, platform.catalog, platform.bus, platform.topics,
                   data_bucket=settings.data_bucket, stable_s=settings.drop_stable_s, rescan_s=settings.drop_rescan_s,
                   publish=platform.outbox)

    async def _publish(self, event: AnyEnvelope) -> None:
        if self.publish is not None:
            await self.publish(event)
        else:
            await publish(self.bus, self.topics, event)

    # -- running -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Watch the folder and take what becomes complete until `stop` is set."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._wake = asyncio.Event()
        self._stopping = False
        watcher = asyncio.create_task(self._watch(stop), name="drop folder watcher")
        next_scan = 0.0
        try:
            while not stop.is_set():
                self._wake.clear()
                earliest = 0.0
                try:
                    if time.monotonic() >= next_scan:
                        await self.poll()
                        next_scan = time.monotonic() + self.rescan_s
                    else:
                        await self.process()
                except Exception:  # a failed pass must not stop the drop folder
                    log.exception("drop.pass_failed")
                    next_scan = time.monotonic() + self.rescan_s
                    earliest = time.monotonic() + BACKOFF_BASE_S  # and must not spin either
                wake_at = max(min(next_scan, self.next_due()), earliest)
                await _first(stop, self._wake, timeout_s=max(wake_at - time.monotonic(), 0.0))
        finally:
            self._stopping = True
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, stop: asyncio.Event) -> None:
        """Feed the watcher's reports into the pending files; restarted after a failure (the
        rescans go on meanwhile)."""
        while not stop.is_set():
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                async for changes in watchfiles.awatch(
                    self.root, stop_event=stop, watch_filter=None, recursive=True, step=50, debounce=1600,
                ):
                    for change, raw in changes:
                        self.saw(Path(raw), deleted=change == watchfiles.Change.deleted)
                    if self._wake is not None:
                        self._wake.set()
            except Exception as exc:  # noqa: BLE001 - the rescans are the safety net
                log.warning("drop.watcher_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=self.rescan_s)
            await _first(stop, timeout_s=self.rescan_s)

    def saw(self, path: Path, *, deleted: bool = False) -> None:
        """A change the watcher reported: the file's quiet period starts again now."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return
        if not rel.parts or rel.parts[0] == REJECTED:
            return
        if deleted:
            self._pending.pop(path, None)
            return
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return
        if stat.S_ISDIR(mode):
            self._new_folders.add(path)  # a folder moved in or just made: its files may never be reported
        elif stat.S_ISREG(mode) and _kind(rel) is not None:
            watched = self._pending.setdefault(path, _Watched())
            watched.identity, watched.changed_at, watched.stuck = None, time.monotonic(), False

    def next_due(self) -> float:
        """When a pending file may next be ready (monotonic); infinity when none is pending."""
        due = math.inf
        for watched in self._pending.values():
            if not watched.stuck:
                ready = watched.retry_at if watched.identity is None else max(watched.changed_at + self.stable_s, watched.retry_at)
                due = min(due, ready)
        return max(due, self._paused_until) if due < math.inf else due

    # -- one pass ----------------------------------------------------------------------------------

    async def poll(self) -> int:
        """Walk the whole folder, then take every file that is complete; returns how many files and
        markers were taken."""
        known = set(self._pending)  # what the watcher reports during the walk is kept
        found = await asyncio.to_thread(self._walk, self.root)
        for path in known - found:
            self._pending.pop(path, None)  # gone (taken by another process, removed, renamed)
        for path in found:
            self._pending.setdefault(path, _Watched())
        return await self.process()

    async def process(self) -> int:
        """Look at the pending files (those the watcher reported and those found before) and take
        the complete ones; returns how many were taken."""
        if self._new_folders:
            folders, self._new_folders = self._new_folders, set()
            for folder in folders:
                for path in await asyncio.to_thread(self._walk, folder):
                    self._pending.setdefault(path, _Watched())
        now = time.monotonic()
        if now < self._paused_until:
            return 0
        ready = await asyncio.to_thread(self._ready, now)
        taken = 0
        for path, identity in ready:
            if self._stopping or time.monotonic() < self._paused_until:
                break
            watched = self._pending.get(path)
            if watched is None or watched.identity != identity:
                continue  # the watcher saw a change meanwhile
            if await self._handle(path, watched, identity):
                taken += 1
        return taken

    def _walk(self, top: Path) -> set[Path]:
        """The files to take or markers to apply under `top` (never following links)."""
        found: set[Path] = set()

        def failed(exc: OSError) -> None:
            log.warning("drop.walk_failed", path=shown(exc.filename or top), error=exc.strerror)

        for dirpath, dirnames, filenames in os.walk(top, onerror=failed):
            folder = Path(dirpath)
            try:
                rel_folder = folder.relative_to(self.root)
            except ValueError:
                continue
            depth = len(rel_folder.parts)
            if depth and rel_folder.parts[0] == REJECTED:
                dirnames[:] = []
                continue
            # Hidden folders hold nothing to take (REJECTED among them), except the delete markers.
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "~")) or (depth == 2 and d == DELETE)]
            for name in filenames:
                if _kind(rel_folder / name) is not None:
                    found.add(folder / name)
        return found

    def _ready(self, now: float) -> list[tuple[Path, Identity]]:
        """The pending files whose quiet period is over and that nobody writes or locks; files
        first, then markers. Updates what is known of each (runs in a thread: it only stats)."""
        candidates: list[tuple[Path, Identity, _Watched]] = []
        for path, watched in list(self._pending.items()):
            try:
                st = os.lstat(path)
            except OSError:
                self._pending.pop(path, None)
                continue
            if not stat.S_ISREG(st.st_mode):
                self._pending.pop(path, None)
                continue
            identity = _identity(st)
            if identity != watched.identity:
                watched.identity, watched.changed_at, watched.stuck = identity, now, False
            if watched.stuck or now < watched.retry_at or now - watched.changed_at < self.stable_s:
                continue
            candidates.append((path, identity, watched))
        if self.check_writers and candidates:
            writing = open_for_writing({(identity[2], identity[3]) for _, identity, _ in candidates})
            free: list[tuple[Path, Identity, _Watched]] = []
            for path, identity, watched in candidates:
                if (identity[2], identity[3]) in writing or locked(path):
                    log.debug("drop.still_written", path=shown(path.relative_to(self.root)))
                    watched.retry_at = now + BUSY_RECHECK_S
                else:
                    free.append((path, identity, watched))
            candidates = free
        ordered = sorted(candidates, key=lambda c: (_kind(c[0].relative_to(self.root)) == "marker", os.fsencode(c[0])))
        return [(path, identity) for path, identity, _ in ordered]

    async def _handle(self, path: Path, watched: _Watched, identity: Identity) -> bool:
        """Take one file or apply one marker, deciding what a failure means for it alone."""
        rel = path.relative_to(self.root)
        try:
            if _kind(rel) == "marker":
                await self._delete(path, rel)
            else:
                done = await self._take(path, rel, identity)
                if not done:
                    watched.identity = None  # changed during the copy: quiet period again
                    watched.changed_at = time.monotonic()
                    return False
        except (TransientError, NotConnected) as exc:
            self._outages += 1
            pause = _backoff(self._outages)
            self._paused_until = time.monotonic() + pause
            log.warning("drop.store_unavailable", path=shown(rel), error=exc.message, retry_in_s=round(pause, 1))
            return False
        except SluiceError as exc:
            self._set_aside(path, rel, watched, exc.message)
            return False
        except (UnicodeError, ValueError) as exc:
            self._set_aside(path, rel, watched, f"the name cannot be stored: {exc}")
            return False
        except OSError as exc:
            if not os.path.lexists(path):
                self._pending.pop(path, None)  # removed or renamed while being taken
                return False
            if exc.errno in NAME_ERRNOS:
                self._set_aside(path, rel, watched, f"the name cannot be stored: {exc.strerror}")
                return False
            self._failed(path, rel, watched, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the others
            self._failed(path, rel, watched, exc)
            return False
        self._outages = 0
        self._pending.pop(path, None)
        return True

    def _failed(self, path: Path, rel: Path, watched: _Watched, exc: Exception) -> None:
        watched.attempts += 1
        error = f"{type(exc).__name__}: {exc}"
        if watched.attempts >= MAX_ATTEMPTS:
            self._set_aside(path, rel, watched, f"failed {watched.attempts} times; last error: {error}")
            return
        delay = _backoff(watched.attempts)
        watched.retry_at = time.monotonic() + delay
        log.warning("drop.take_failed", path=shown(rel), error=error, attempt=watched.attempts, retry_in_s=round(delay, 1))

    # -- taking ------------------------------------------------------------------------------------

    async def _take(self, path: Path, rel: Path, identity: Identity) -> bool:
        """Store the file and announce it; False when it changed during the copy (it stays)."""
        if len(rel.parts) < 3:
            raise InvalidInput("put files under drop/{namespace}/{bucket}/")
        namespace, bucket, key = rel.parts[0], rel.parts[1], "/".join(rel.parts[2:])
        objects = await self._bucket(namespace, bucket, key, create=True)
        content_type = mimetypes.guess_type(path.name)[0]
        with _opened(path, identity) as source:
            if source is None:
                return False  # not the file that was checked any more (replaced, or by a link)
            info = await objects.put_file(bucket, key, source, content_type=content_type)
        event = make(ObjectCreated(
            bucket=bucket, key=key, size=info.size, etag=info.etag, version_id=info.version_id,
            content_type=content_type, event_time=info.last_modified, source="drop",
        ), namespace=namespace)
        await self._publish(event)
        try:
            after = _identity(os.lstat(path))
        except FileNotFoundError:
            after = identity  # removed by someone else: what was stored is what was checked
        if after != identity:
            log.warning("drop.changed_while_taken", namespace=namespace, bucket=bucket, key=key, stored_bytes=info.size)
            return False
        path.unlink(missing_ok=True)
        log.info("drop.taken", namespace=namespace, bucket=bucket, key=key, size=info.size)
        return True

    async def _delete(self, path: Path, rel: Path) -> None:
        namespace, bucket, key = rel.parts[0], rel.parts[1], "/".join(rel.parts[3:])
        objects = await self._bucket(namespace, bucket, key, create=False)
        with contextlib.suppress(NotFound):  # the store never had this bucket: nothing to delete
            await objects.delete(bucket, key)
        event = make(ObjectRemoved(bucket=bucket, key=key, event_time=datetime.now(UTC), source="drop"), namespace=namespace)
        await self._publish(event)
        path.unlink(missing_ok=True)
        log.info("drop.deleted", namespace=namespace, bucket=bucket, key=key)

    async def _bucket(self, namespace: str, bucket: str, key: str, *, create: bool) -> NamespaceStore:
        """The namespace's store once the namespace and bucket are known good (`InvalidInput` else)."""
        _text(namespace, bucket, key)
        if await self.catalog.get(NAMESPACES, namespace) is None:
            raise InvalidInput(f"namespace {namespace!r} does not exist", details={"namespace": namespace})
        objects = NamespaceStore(self.store, self.data_bucket, namespace)
        if create:
            await ensure_bucket(self.catalog, namespace, bucket)
            await objects.ensure_bucket(bucket)
        elif not await has_bucket(self.catalog, namespace, bucket):
            raise InvalidInput(f"bucket {bucket!r} does not exist in namespace {namespace!r}",
                               details={"namespace": namespace, "bucket": bucket})
        return objects

    # -- setting aside -----------------------------------------------------------------------------

    def _set_aside(self, path: Path, rel: Path, watched: _Watched, reason: str) -> None:
        """Move the file to `.rejected/` with its reason; when even that fails, leave it alone
        until it changes (logged once)."""
        try:
            target = self._reject_at(path, rel, reason)
        except OSError as exc:
            watched.stuck = True
            log.error("drop.cannot_set_aside", path=shown(rel), reason=reason, error=f"{type(exc).__name__}: {exc}")
            return
        self._pending.pop(path, None)
        log.warning("drop.rejected", path=shown(rel), reason=reason, moved_to=shown(target.relative_to(self.root)))

    def _reject_at(self, path: Path, rel: Path, reason: str) -> Path:
        rejected = self.root / REJECTED
        try:
            target = rejected / rel
            _move_with_reason(path, target, reason + "\n")
            return target
        except OSError:
            pass  # this path cannot hold it: the fallback below always can
        name = path.name if len(os.fsencode(path.name)) + len(".reason") <= MAX_NAME_BYTES else "file"
        target = rejected / UNNAMED / uuid.uuid4().hex / name
        _move_with_reason(path, target, f"{reason}\ndropped as: {shown(rel)}\n")
        return target


@contextlib.contextmanager
def _opened(path: Path, identity: Identity) -> Iterator[Path | None]:
    """A path that reads the checked file itself, or None when `path` is no longer that file.

    The file is opened without following a link and compared with what was checked, then read
    through `/proc/self/fd/N` (the open file, whatever its name now points at): a file swapped for
    a link to another file between the check and the copy (or a folder above it swapped for a
    link) is never read. Without `/proc`, the path itself is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
            yield None
            return
        raise
    try:
        if _identity(os.fstat(fd)) != identity:
            yield None
            return
        by_descriptor = Path(f"/proc/self/fd/{fd}")
        yield by_descriptor if by_descriptor.exists() else path
    finally:
        os.close(fd)


def _move_with_reason(path: Path, target: Path, reason: str) -> None:
    """Move `path` to `target` and write `target.reason`, never replacing an existing file; the
    reason is written first, so a name too long for it fails before the file moves."""
    note = target.with_name(target.name + ".reason")
    if os.path.lexists(target) or os.path.lexists(note):
        raise FileExistsError(errno.EEXIST, "already set aside under this name", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(note, "x", encoding="utf-8", errors="backslashreplace") as out:
        out.write(reason)
    try:
        os.rename(path, target)
    except BaseException:
        note.unlink(missing_ok=True)
        raise


async def _first(*events: asyncio.Event, timeout_s: float) -> None:
    """Wait until one of `events` is set or `timeout_s` passed."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s if math.isfinite(timeout_s) else None, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


__all__ = ["DELETE", "REJECTED", "DropFolder", "locked", "open_for_writing"]
