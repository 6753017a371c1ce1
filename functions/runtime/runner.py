"""The function runner: subscribes each function of the handler table to its topic.

At least once: a message's offset is committed only after its handler succeeded and every event it
returned was published. Transient failures retry with exponential backoff; poison (cannot decode,
fails validation, raises `PermanentError`) and messages that keep failing go to the dead-letter
topic with the error and the original bytes, and the runner moves on.
"""

from __future__ import annotations

import asyncio
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
    """Observer hook (tests, metrics): called with the outcome `ok|skipped|dead_lettered`."""

    def __post_init__(self) -> None:
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._kwargs = {fn.name: self._resolve(fn) for fn in self.functions}
        if any(fn.once for fn in self.functions) and self.idempotency is None:
            raise ValueError("functions marked once=True need an IdempotencyStore")

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
        """Finish the message in hand, then leave the groups. Uncommitted work is redelivered."""
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
        try:
            while not self._stopping.is_set():
                try:
                    messages = await consumer.fetch(timeout_s=self.fetch_timeout_s)
                except TransientError as exc:
                    log.warning("bus.fetch_failed", function=fn.name, error=str(exc))
                    await asyncio.sleep(self.retry.base_delay_s)
                    continue
                for message in messages:
                    outcome = await self._process_until_done(fn, message)
                    await self._commit(consumer, message)
                    if self.on_processed is not None:
                        self.on_processed(fn, message, outcome)
                    if self._stopping.is_set():
                        break
        finally:
            await consumer.close()

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


async def publish(bus: EventBus, topics: Topics, *events: AnyEnvelope) -> None:
    """Publish root events (REST, CLI, notifications) on their topics."""
    await Publisher(bus, topics)(*events)
