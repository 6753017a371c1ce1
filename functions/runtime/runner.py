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
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import functools
import inspect
import os
import random
import socket
import types
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from events import codec
from events.bus import Consumer, EventBus, Message
from events.envelope import AnyEnvelope
from events.errors import PermanentError, PoisonMessage, TransientError
from events.publisher import Publisher
from events.topics import Topics
from functions.runtime.idempotency import IdempotencyStore

log = structlog.get_logger("sluice.runner")

Handler = Callable[..., Awaitable[Sequence[AnyEnvelope]]]
Decoder = Callable[[bytes], AnyEnvelope]

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
    topic: str | None = None
    """Read this topic instead of the one the event types live on (raw notification topics)."""
    decode: Decoder = codec.decode
    """bytes → envelope; raise `PoisonMessage` for input that can never be handled."""
    concurrency: int | None = None
    """Messages of this function handled at once; None: the runner's `concurrency`."""

    @classmethod
    def of(cls, name: str, handler: Handler, **options: Any) -> Function:
        """A row whose event types come from the handler's signature: its first parameter is
        annotated `Envelope[SomePayload]` (or `Envelope[A | B]`)."""
        return cls(name, handler, handled_types(handler), **options)

    def topic_in(self, topics: Topics) -> str:
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
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


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

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
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
        await self.bus.ensure_topics(self.topics.all())
        consumers = [
            await self.bus.subscribe([fn.topic_in(self.topics)], group_id=self.group_id(fn)) for fn in self.functions
        ]
        self._tasks = [
            asyncio.create_task(self._consume(fn, consumer), name=f"sluice-fn-{fn.name}")
            for fn, consumer in zip(self.functions, consumers, strict=True)
        ]

    async def stop(self) -> None:
        """Let the handlers in flight finish (for at most `drain_timeout_s`), commit what is done,
        then leave the groups. Uncommitted work is redelivered."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

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
            if self.on_processed is not None:
                self.on_processed(fn, message, task.result())

        try:
            while not self._stopping.is_set():
                await self._commit_done(fn, consumer, offsets)
                room = min(limit - len(in_flight), self.max_uncommitted - offsets.waiting)
                if room <= 0:
                    changed.clear()
                    await _first(changed.wait(), self._stopping.wait(), timeout=self.fetch_timeout_s)
                    continue
                try:
                    messages = await consumer.fetch(max_records=room, timeout_s=self.fetch_timeout_s)
                except TransientError as exc:
                    log.warning("bus.fetch_failed", function=fn.name, error=str(exc))
                    await asyncio.sleep(self.retry.base_delay_s)
                    continue
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
                event = fn.decode(message.value)
            except PoisonMessage as exc:
                await self._dead_letter(fn, message, exc, attempts=0)
                return "dead_lettered"
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
                if attempt >= self.retry.max_attempts:
                    await self._dead_letter(fn, message, exc, attempts=attempt)
                    return "dead_lettered"
                delay = self.retry.delay(attempt)
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

    async def _dead_letter(self, fn: Function, message: Message, exc: BaseException, *, attempts: int) -> None:
        error_type = getattr(exc, "error_type", type(exc).__name__)
        log.error("function.dead_lettered", error_type=error_type, error=str(exc), attempts=attempts)
        headers = [
            ("x-sluice-function", fn.name.encode()),
            ("x-sluice-error-type", str(error_type).encode()),
            ("x-sluice-error", str(exc).encode()[:4096]),
            ("x-sluice-source-topic", message.topic.encode()),
            ("x-sluice-source-partition", str(message.partition).encode()),
            ("x-sluice-source-offset", str(message.offset).encode()),
            ("x-sluice-attempts", str(attempts).encode()),
        ]
        await self.bus.publish(self.topics.dead_letters, message.value, key=message.key, headers=headers)


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
