"""The function runner: subscribes each function of the handler table to its topic.

At least once: a message's offset is committed only after its handler succeeded and every event it
returned was published. Transient failures retry with exponential backoff; poison (cannot decode,
fails validation, raises `PermanentError`) and messages that keep failing go to the dead-letter
topic with the error and the original bytes, and the runner moves on.

Concurrency: each function handles up to `concurrency` messages at once (`SLUICE_FUNCTION_CONCURRENCY`),
so one slow message (a register, a deploy) does not hold up the messages behind it. Offsets are
committed per partition only up to the lowest message not yet done: a message is acknowledged only
once it and every message before it on its partition were handled (dead-lettered counts as handled).
Messages of one partition (one namespace's, as events are keyed by namespace) may therefore finish
out of order: handlers must be replay-safe and must not rely on that order (`Function(concurrency=1)`
keeps a function strictly in order). On stop, handlers in flight get `drain_timeout_s` to finish;
the rest are cancelled and stay uncommitted, so the group gets them again.

While a function is full (`concurrency` messages in flight, or `max_uncommitted` waiting behind
one), its consumer is paused and fetched from anyway: the broker sees a member that polls, so
handlers of any length never exceed Kafka's `max_poll_interval_ms` (see infra/bus/kafka.py).

Supervision (functions/runtime/supervision.py): each function's loop runs under a supervisor. A
loop that fails (a fetch or commit error that is not transient, a subscribe that fails, a bug) is
logged, subscribed again and restarted with backoff until stop; `states()` says per function
`starting|running|restarting|stopped`, its restarts and last error, and the same is written to the
catalog (kind `function_states`) for `GET /v1/health`.

Per-record poison: a decoder may return `Decoded` (events/dead_letters.py): the envelope of a
message's good records and each bad record as its own bytes; each is dead-lettered alone (header
`x-sluice-record-index`) and the rest is handled. A function that reads the dead-letter topic (the
recorder) never writes to it: what it cannot handle is logged and stays in the topic, and its
transient failures (the catalog down) are retried until they pass.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import inspect
import os
import socket
import types
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from events import codec
from events import dead_letters as dlq
from events.bus import Consumer, EventBus, Message
from events.dead_letters import Decoded
from events.envelope import AnyEnvelope
from events.errors import PermanentError, PoisonMessage, TransientError
from events.publisher import Publisher
from events.topics import Topics
from functions.records.function_states import FunctionStatus
from functions.runtime.idempotency import IdempotencyStore
from functions.runtime.supervision import RestartPolicy, StateBook, backoff
from infra import metrics
from infra.catalog.base import Catalog

log = structlog.get_logger("sluice.runner")

Handler = Callable[..., Awaitable[Sequence[AnyEnvelope]]]
Decoder = Callable[[bytes], AnyEnvelope | Decoded]
MessageDecoder = Callable[[Message], AnyEnvelope | Decoded]

DEFAULT_CONCURRENCY = 8
"""Messages one function handles at once when neither the runner nor the settings say."""


@dataclass(frozen=True)
class Function:
    """One row of the handler table."""

    name: str
    handler: Handler
    event_types: frozenset[str]
    once: bool = False
    """Guard with an idempotency record: for handlers whose effects are not naturally idempotent."""
    topic: str | Callable[[Topics], str] | None = None
    """Read this topic (or the one this callable names) instead of the one the event types live on."""
    decode: Decoder = codec.decode
    """bytes → envelope; raise `PoisonMessage` for input that can never be handled, or return
    `Decoded` when only some records of the message are poison."""
    decode_message: MessageDecoder | None = None
    """The whole message (headers too) → envelope, instead of `decode` (the dead-letter recorder)."""
    concurrency: int | None = None
    """Messages of this function handled at once; None: the runner's `concurrency`."""

    @classmethod
    def of(cls, name: str, handler: Handler, **options: Any) -> Function:
        """A row whose event types come from the handler's signature: its first parameter is
        annotated `Envelope[SomePayload]` (or `Envelope[A | B]`)."""
        return cls(name, handler, handled_types(handler), **options)

    def topic_in(self, topics: Topics) -> str:
        if callable(self.topic):
            return self.topic(topics)
        if self.topic is not None:
            return self.topic
        names = {topics.for_type(t) for t in self.event_types}
        if len(names) != 1:
            raise ValueError(f"function {self.name!r} handles events of several topics: {sorted(names)}")
        return names.pop()


def handled_types(handler: Handler) -> frozenset[str]:
    """The payload `type`s a handler takes, read from its first parameter's `Envelope[...]`."""
    params = list(inspect.signature(handler).parameters)
    hints = typing.get_type_hints(handler)
    if not params or params[0] not in hints:
        raise TypeError(f"{handler.__module__}.{handler.__qualname__}: annotate the event, e.g. `event: Envelope[PluginScanned]`")
    envelope = hints[params[0]]
    args = getattr(envelope, "__pydantic_generic_metadata__", {}).get("args") or ()
    if not args:
        raise TypeError(f"{handler.__module__}.{handler.__qualname__}: the event must be `Envelope[<payload type>]`, not {envelope!r}")
    payloads = typing.get_args(args[0]) if typing.get_origin(args[0]) in (typing.Union, types.UnionType) else (args[0],)
    return frozenset(payload.model_fields["type"].default for payload in payloads)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return backoff(attempt, base_s=self.base_delay_s, max_s=self.max_delay_s)


_RESULT_NS = uuid.UUID("2f1d0c4e-8d55-4c55-9d7e-0b6f3c7c2a90")


def _stamp(results: Sequence[AnyEnvelope], *, function: str, cause: AnyEnvelope) -> list[AnyEnvelope]:
    """Deterministic ids for returned events: a re-run after redelivery emits the same ids, so
    downstream idempotency recognises the duplicates."""
    return [
        ev.model_copy(update={"event_id": uuid.uuid5(_RESULT_NS, f"{function}/{cause.event_id}/{i}").hex})
        for i, ev in enumerate(results)
    ]


@dataclass
class Runner:
    bus: EventBus
    topics: Topics
    functions: Sequence[Function]
    deps: Mapping[str, Any]
    idempotency: IdempotencyStore | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    group_prefix: str | None = None
    fetch_timeout_s: float = 0.5
    on_processed: Callable[[Function, Message, str], None] | None = None
    """Observer hook (tests, metrics): called with the outcome `ok|skipped|dead_lettered` as soon as
    a message is handled; its offset is committed once every earlier message of its partition is."""
    concurrency: int | None = None
    """Messages one function handles at once; None: `function_concurrency` of the `settings`
    dependency, else `DEFAULT_CONCURRENCY`."""
    drain_timeout_s: float = 10.0
    """On stop, how long handlers in flight may go on; those still running are then cancelled and
    their messages left uncommitted for redelivery."""
    max_uncommitted: int = 1000
    """Handled messages that may wait behind one unfinished message before fetching pauses: bounds
    what a crash redelivers when one handler runs long."""
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    """How a function whose loop failed is started again."""
    catalog: Catalog | None = None
    """Where function states are written (kind `function_states`); None: the `catalog` dependency, if any."""
    heartbeat_s: float = 10.0
    """How often function states are written even when nothing changed."""

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        names = [fn.name for fn in self.functions]
        if len(set(names)) != len(names):
            raise ValueError(f"function names must be unique: {names}")
        catalog = self.catalog if self.catalog is not None else self.deps.get("catalog")
        self._book = StateBook(names, owner=self._owner, catalog=catalog if isinstance(catalog, Catalog) else None,
                               heartbeat_s=self.heartbeat_s)
        self._kwargs = {fn.name: self._resolve(fn) for fn in self.functions}
        if any(fn.once for fn in self.functions) and self.idempotency is None:
            raise ValueError("functions marked once=True need an IdempotencyStore")
        if self.concurrency is None:
            settings = self.deps.get("settings")
            self.concurrency = int(getattr(settings, "function_concurrency", DEFAULT_CONCURRENCY))
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")

    def _resolve(self, fn: Function) -> dict[str, Any]:
        params = list(inspect.signature(fn.handler).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            raise TypeError(f"handler of {fn.name!r} must take the event as its first positional argument")
        kwargs = {}
        for p in params[1:]:
            if p.kind is not p.KEYWORD_ONLY:
                raise TypeError(f"handler of {fn.name!r}: dependency {p.name!r} must be keyword-only")
            if p.name in self.deps:
                kwargs[p.name] = self.deps[p.name]
            elif p.default is p.empty:
                raise TypeError(f"handler of {fn.name!r} needs {p.name!r}, which bootstrap does not provide")
        return kwargs

    def group_id(self, fn: Function) -> str:
        return f"{self.group_prefix or self.topics.prefix}.fn.{fn.name}"

    # --- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every function under its supervisor; returns once each made its first subscribe
        (one that failed is retried with backoff and shows as `restarting`)."""
        await self.bus.ensure_topics(self.topics.all())
        self._stopping.clear()
        self._book.start()
        loop = asyncio.get_running_loop()
        first: list[asyncio.Future[None]] = [loop.create_future() for _ in self.functions]
        self._tasks = [
            asyncio.create_task(self._supervise(fn, attempted), name=f"sluice-fn-{fn.name}")
            for fn, attempted in zip(self.functions, first, strict=True)
        ]
        await asyncio.wait([*first], return_when=asyncio.ALL_COMPLETED)

    async def stop(self) -> None:
        """Let the handlers in flight finish (for at most `drain_timeout_s`), commit what is done,
        then leave the groups. Uncommitted work is redelivered."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._book.close()

    def states(self) -> dict[str, dict[str, Any]]:
        """Per function: `state` (starting|running|restarting|stopped), `restarts`, `last_error`,
        `last_error_at` and `since` (epoch seconds)."""
        return self._book.snapshot()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    # --- supervision ----------------------------------------------------------------------

    async def _supervise(self, fn: Function, attempted: asyncio.Future[None]) -> None:
        """Subscribe and consume until stop; a loop that fails is started again after a backoff."""
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while not self._stopping.is_set():
                self._book.set(fn.name, FunctionStatus.STARTING)
                began = loop.time()
                try:
                    consumer = await self.bus.subscribe([fn.topic_in(self.topics)], group_id=self.group_id(fn))
                    if not attempted.done():
                        attempted.set_result(None)
                    self._book.set(fn.name, FunctionStatus.RUNNING)
                    await self._consume(fn, consumer)
                    return  # it returns only when stopping
                except Exception as exc:  # noqa: BLE001 - the supervisor's job: log it, start again
                    error = exc
                finally:
                    if not attempted.done():
                        attempted.set_result(None)
                if self._stopping.is_set():
                    return
                failures = 1 if loop.time() - began >= self.restart.healthy_after_s else failures + 1
                delay = self.restart.delay(failures)
                log.error("function.loop_failed", function=fn.name, error=f"{type(error).__name__}: {error}",
                          restart_in_s=round(delay, 3), consecutive_failures=failures, exc_info=error)
                self._book.failed(fn.name, error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        finally:
            self._book.set(fn.name, FunctionStatus.STOPPED)

    # --- consuming ------------------------------------------------------------------------

    async def _consume(self, fn: Function, consumer: Consumer) -> None:
        """Fetch while fewer than `concurrency` messages are in flight; handle each in its own task;
        commit each partition up to its lowest unfinished message."""
        assert self.concurrency is not None
        limit = fn.concurrency or self.concurrency
        offsets = _Offsets()
        in_flight: dict[asyncio.Task[str], Message] = {}
        changed = asyncio.Event()

        def finished(message: Message, task: asyncio.Task[str]) -> None:
            in_flight.pop(task, None)
            changed.set()
            if task.cancelled() or task.exception() is not None:
                return  # not handled (stopping): stays uncommitted, holds back later commits
            offsets.done(message)
            metrics.event_consumed(fn.name, task.result())
            if self.on_processed is not None:
                self.on_processed(fn, message, task.result())

        paused = False
        try:
            while not self._stopping.is_set():
                await self._commit_done(fn, consumer, offsets)
                room = min(limit - len(in_flight), self.max_uncommitted - offsets.waiting)
                if room <= 0:
                    # Full: keep polling with the partitions paused, so the broker never takes this
                    # member for dead however long its handlers run (max_poll_interval_ms).
                    if not paused:
                        await consumer.pause()
                        paused = True
                    changed.clear()
                    messages = await self._fetch(fn, consumer, max_records=1, timeout_s=0)
                    if not messages:
                        await _first(changed.wait(), self._stopping.wait(), timeout=self.fetch_timeout_s)
                else:
                    if paused:
                        await consumer.resume()
                        paused = False
                    messages = await self._fetch(fn, consumer, max_records=room, timeout_s=self.fetch_timeout_s)
                for message in messages:
                    offsets.start(message)
                    task = asyncio.create_task(self._process_until_done(fn, message),
                                               name=f"sluice-fn-{fn.name}-{message.partition}-{message.offset}")
                    in_flight[task] = message
                    task.add_done_callback(functools.partial(finished, message))
        finally:
            try:
                await self._drain(fn, in_flight)
                await self._commit_done(fn, consumer, offsets)
            finally:
                await consumer.close()

    async def _fetch(self, fn: Function, consumer: Consumer, *, max_records: int, timeout_s: float) -> list[Message]:
        try:
            return await consumer.fetch(max_records=max_records, timeout_s=timeout_s)
        except TransientError as exc:
            log.warning("bus.fetch_failed", function=fn.name, error=str(exc))
            await asyncio.sleep(self.retry.base_delay_s)
            return []

    async def _drain(self, fn: Function, in_flight: dict[asyncio.Task[str], Message]) -> None:
        """Stopping: give the handlers in flight `drain_timeout_s`, then cancel the rest."""
        if not in_flight:
            return
        _, pending = await asyncio.wait(list(in_flight), timeout=self.drain_timeout_s)
        if pending:
            left = [in_flight[t] for t in pending if t in in_flight]
            log.warning("function.stop_cancels_handlers", function=fn.name, drain_timeout_s=self.drain_timeout_s,
                        messages=[f"{m.topic}/{m.partition}@{m.offset}" for m in left])
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=self.drain_timeout_s)

    async def _commit_done(self, fn: Function, consumer: Consumer, offsets: _Offsets) -> None:
        for message in offsets.committable():
            try:
                await self._commit(consumer, message)
            except TransientError as exc:
                # Nothing is lost: later commits of the partition cover this one, and what stays
                # uncommitted is delivered again.
                log.warning("bus.commit_failed", function=fn.name, topic=message.topic, partition=message.partition,
                            offset=message.offset, error=str(exc))

    async def _process_until_done(self, fn: Function, message: Message) -> str:
        """`process` never gives up on a message: if even dead-lettering fails (bus down), wait
        and start over rather than commit a message whose outcome was not recorded anywhere."""
        attempt = 0
        while True:
            try:
                return await self.process(fn, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                attempt += 1
                log.error("function.unrecorded_failure", function=fn.name, offset=message.offset, error=str(exc))
                await asyncio.sleep(self.retry.delay(min(attempt, 8)))

    async def _commit(self, consumer: Consumer, message: Message) -> None:
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                await consumer.commit(message)
                return
            except TransientError:
                if attempt == self.retry.max_attempts:
                    raise
                await asyncio.sleep(self.retry.delay(attempt))

    async def process(self, fn: Function, message: Message) -> str:
        """Handle one message to the end: `ok`, `skipped` (not for this function) or `dead_lettered`."""
        bound = {"topic": message.topic, "partition": message.partition, "offset": message.offset, "function": fn.name}
        with structlog.contextvars.bound_contextvars(**bound):
            try:
                decoded = fn.decode_message(message) if fn.decode_message is not None else fn.decode(message.value)
            except PoisonMessage as exc:
                await self._dead_letter(fn, message, exc, attempts=0)
                return "dead_lettered"
            except Exception as exc:
                log.exception("function.decoder_failed", error=f"{type(exc).__name__}: {exc}")
                await self._dead_letter(fn, message, exc, attempts=0)
                return "dead_lettered"
            if isinstance(decoded, Decoded):
                for reject in decoded.rejects:
                    await self._dead_letter(fn, message, reject.error, attempts=0, value=reject.value, record=reject.index)
                if decoded.envelope is None:
                    return "dead_lettered"
                event = decoded.envelope
            else:
                event = decoded
            if event.type not in fn.event_types:
                return "skipped"
            with structlog.contextvars.bound_contextvars(
                event_id=event.event_id, correlation_id=event.correlation_id, event_type=event.type
            ):
                return await self._run_with_retries(fn, message, event)

    async def _run_with_retries(self, fn: Function, message: Message, event: AnyEnvelope) -> str:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._run_once(fn, event)
                return "ok"
            except PermanentError as exc:
                await self._dead_letter(fn, message, exc, attempts=attempt)
                return "dead_lettered"
            except Exception as exc:
                transient = isinstance(exc, TransientError)
                # The recorder of dead letters has no topic behind it: it waits out transient failures.
                if attempt >= self.retry.max_attempts and not (transient and self._reads_dead_letters(fn)):
                    await self._dead_letter(fn, message, exc, attempts=attempt)
                    return "dead_lettered"
                delay = self.retry.delay(min(attempt, self.retry.max_attempts))
                log.warning(
                    "function.retry", attempt=attempt, delay_s=round(delay, 3), transient=transient,
                    error=f"{type(exc).__name__}: {exc}",
                )
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                except TimeoutError:
                    continue
                raise asyncio.CancelledError from exc  # stopping: leave the message uncommitted

    async def _run_once(self, fn: Function, event: AnyEnvelope) -> None:
        if not fn.once:
            results = _stamp(await fn.handler(event, **self._kwargs[fn.name]), function=fn.name, cause=event)
            await self._publish(results)
            return
        assert self.idempotency is not None
        key = f"{fn.name}:{event.event_id}"
        outcome = await self.idempotency.begin(key, owner=self._owner)
        if outcome is not None:
            log.info("function.duplicate", results=len(outcome.results))
            await self._publish([codec.decode(r.encode()) for r in outcome.results])
            return
        try:
            results = _stamp(await fn.handler(event, **self._kwargs[fn.name]), function=fn.name, cause=event)
        except BaseException:
            await self.idempotency.release(key)
            raise
        await self.idempotency.complete(key, [codec.encode(r).decode() for r in results])
        await self._publish(results)

    async def _publish(self, results: Sequence[AnyEnvelope]) -> None:
        for ev in results:
            key = (ev.namespace or "").encode() or None
            await self.bus.publish(self.topics.for_type(ev.type), codec.encode(ev), key=key)
        if results:
            log.info("function.published", events=[ev.type for ev in results])

    def _reads_dead_letters(self, fn: Function) -> bool:
        return fn.topic_in(self.topics) == self.topics.dead_letters

    async def _dead_letter(self, fn: Function, message: Message, exc: BaseException, *, attempts: int,
                           value: bytes | None = None, record: int | None = None) -> None:
        """Publish `value` (default: the message's bytes) to the dead-letter topic with headers
        saying who gave up, why, and where it came from (`record`: the index of one rejected record)."""
        error_type = str(getattr(exc, "error_type", type(exc).__name__))
        if self._reads_dead_letters(fn):
            # Never into the topic it came from: that would loop. It stays there for an operator.
            log.error("function.dead_letter_unrecorded", error_type=error_type, error=str(exc), attempts=attempts)
            return
        log.error("function.dead_lettered", error_type=error_type, error=str(exc), attempts=attempts, record=record)
        headers = dlq.headers(function=fn.name, error_type=error_type, error=str(exc), source_topic=message.topic,
                              source_partition=message.partition, source_offset=message.offset, attempts=attempts,
                              record_index=record)
        await self.bus.publish(self.topics.dead_letters, message.value if value is None else value, key=message.key,
                               headers=headers)
        metrics.dead_lettered(fn.name)


TopicPartition = tuple[str, int]


class _Offsets:
    """One consumer's messages in flight, per partition, and the handled ones not yet committed.

    `committable()` gives, per partition, the highest handled message below every unfinished one
    (and above the last commit): committing it acknowledges exactly the messages that are done.
    A message fetched twice while in flight (a rebalance handed its partition back) is counted twice.
    """

    def __init__(self) -> None:
        self._open: dict[TopicPartition, collections.Counter[int]] = {}
        self._done: dict[TopicPartition, list[Message]] = {}
        self._committed: dict[TopicPartition, int] = {}

    @property
    def waiting(self) -> int:
        """Handled messages still waiting for their commit."""
        return sum(len(done) for done in self._done.values())

    def start(self, message: Message) -> None:
        self._open.setdefault((message.topic, message.partition), collections.Counter())[message.offset] += 1

    def done(self, message: Message) -> None:
        tp = (message.topic, message.partition)
        open_ = self._open[tp]
        open_[message.offset] -= 1
        if open_[message.offset] <= 0:
            del open_[message.offset]
        bisect.insort(self._done.setdefault(tp, []), message, key=lambda m: m.offset)

    def committable(self) -> list[Message]:
        out: list[Message] = []
        for tp, done in self._done.items():
            open_ = self._open.get(tp)
            floor = min(open_) if open_ else None
            cut = len(done) if floor is None else bisect.bisect_left(done, floor, key=lambda m: m.offset)
            if not cut:
                continue
            last = done[cut - 1]
            del done[:cut]
            if last.offset > self._committed.get(tp, -1):
                self._committed[tp] = last.offset
                out.append(last)
        return out


async def _first(*waits: Awaitable[Any], timeout: float) -> None:
    """Wait until the first of `waits` is done or `timeout` passes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


async def publish(bus: EventBus, topics: Topics, *events: AnyEnvelope) -> None:
    """Publish root events (REST, CLI, notifications) on their topics."""
    await Publisher(bus, topics)(*events)
