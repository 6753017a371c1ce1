"""`KafkaBus`: the EventBus on a Kafka-protocol broker (Apache Kafka, Redpanda, Tansu) via aiokafka.

Publishing waits for every in-sync replica (`acks="all"`). Consumers never auto-commit: `commit()`
sends offset + 1 for the message's partition once its handler is done. Connection failures and
timeouts become `TransientError`, so the runner retries them.

Two things are there for Tansu, the embedded broker (`infra.bus.broker`) of the tests:
- Tansu does not answer InitProducerId, so the idempotent producer is off unless asked for.
- Tansu numbers a new group's first generation 0, which aiokafka takes for "never joined" and so
  skips LeaveGroup on close; the broker would then keep the member until its session times out and
  the group's next consumer would wait that long. `_KafkaConsumer.close` sends the LeaveGroup itself.
Tansu also holds every JoinGroup for half the session timeout (at least 1 s) before answering, so
on Tansu a short `session_timeout_ms` (3000) makes subscribing fast; Apache Kafka refuses less
than 6000 by default.

Long handlers and `max_poll_interval_ms`: aiokafka leaves the group (and the broker rebalances
and redelivers) when no `getmany` was in progress for `max_poll_interval_ms`, whatever the
heartbeats say. Handlers run in tasks off the runner's fetch loop, so what could starve the polls is
the loop itself when its function is full. Rather than raising the interval (which also delays the
detection of a consumer that is really stuck, and only moves the cliff), the consumer can be
paused: `pause()` pauses every assigned partition (again at each fetch, as a rebalance hands out
partitions unpaused), and `fetch` keeps calling `getmany`, which returns nothing from paused
partitions but counts as a poll. The runner pauses while it is full and resumes when there is room
(`functions/runtime/runner.py`), so a member stays in its group however long its handlers run.
Records aiokafka had prefetched for a paused partition are dropped and fetched again on resume.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.structs import ConsumerRecord

from events.bus import Consumer, EventBus, Message
from events.errors import NotConnected, TransientError
from events.lifecycle import Health

log = structlog.get_logger("sluice.bus")


@asynccontextmanager
async def _transient(action: str) -> AsyncIterator[None]:
    """Broker hiccups (connection, timeout, a retriable error code, a rebalance) become
    `TransientError`; anything else (a message too large, a bad topic name) goes up as it is."""
    try:
        yield
    except (KafkaConnectionError, KafkaTimeoutError, CommitFailedError, IllegalStateError) as exc:
        raise TransientError(f"kafka {action} failed: {exc!r}", details={"action": action}) from exc
    except KafkaError as exc:
        if not exc.retriable:
            raise
        raise TransientError(f"kafka {action} failed: {exc!r}", details={"action": action}) from exc


def _message(record: ConsumerRecord) -> Message:
    return Message(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        value=record.value if record.value is not None else b"",
        key=record.key,
        headers=tuple((name, value if value is not None else b"") for name, value in record.headers),
        timestamp_ms=record.timestamp,
    )


class KafkaBus(EventBus):
    """The EventBus over a Kafka-protocol broker."""

    adapter_name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "sluice",
        partitions: int = 1,
        replication_factor: int = 1,
        session_timeout_ms: int = 10_000,
        request_timeout_ms: int = 30_000,
        enable_idempotence: bool = False,
        max_poll_interval_ms: int = 300_000,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_id = client_id
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.session_timeout_ms = session_timeout_ms
        self.request_timeout_ms = request_timeout_ms
        self.enable_idempotence = enable_idempotence
        self.max_poll_interval_ms = max_poll_interval_ms
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._consumers: set[_KafkaConsumer] = set()

    async def _connect(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=self.enable_idempotence,
            request_timeout_ms=self.request_timeout_ms,
        )
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=self.request_timeout_ms,
        )
        try:
            async with _transient("connect"):
                await self._producer.start()
                await self._admin.start()
        except BaseException:
            await self._stop_clients()
            raise

    async def _close(self) -> None:
        for consumer in list(self._consumers):
            try:
                await consumer.close()
            except KafkaError as exc:
                log.warning("bus.consumer_close_failed", group=consumer.group_id, error=repr(exc))
        await self._stop_clients()

    async def _stop_clients(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    async def _health(self) -> Health:
        assert self._admin is not None
        try:
            async with _transient("describe cluster"):
                cluster = await self._admin.describe_cluster()
        except TransientError as exc:
            return Health(status="down", adapter=self.adapter_name, detail={"error": exc.message})
        return Health(
            status="ok" if cluster["brokers"] else "degraded",
            adapter=self.adapter_name,
            detail={"brokers": len(cluster["brokers"]), "cluster_id": cluster["cluster_id"]},
        )

    async def ensure_topics(self, topics: Sequence[str]) -> None:
        self._require_connected()
        assert self._admin is not None
        new = [NewTopic(topic, self.partitions, self.replication_factor) for topic in dict.fromkeys(topics)]
        if not new:
            return
        async with _transient("create topics"):
            response = await self._admin.create_topics(new)
        for topic, code, *_ in response.topic_errors:
            error = for_code(code)
            if not code or error is TopicAlreadyExistsError:
                continue
            exc = error(f"cannot create topic {topic!r}")
            if error.retriable:
                raise TransientError(f"kafka create topics failed: {exc!r}", details={"topic": topic}) from exc
            raise exc

    async def publish(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self._require_connected()
        assert self._producer is not None
        async with _transient("publish"):
            await self._producer.send_and_wait(topic, value, key=key, headers=list(headers) or None)

    async def subscribe(
        self, topics: Sequence[str], *, group_id: str, from_beginning: bool = True
    ) -> Consumer:
        self._require_connected()
        consumer = AIOKafkaConsumer(
            *dict.fromkeys(topics),
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(self.session_timeout_ms // 3, 100),
            max_poll_interval_ms=self.max_poll_interval_ms,
            request_timeout_ms=self.request_timeout_ms,
        )
        try:
            async with _transient("subscribe"):
                await consumer.start()  # returns once the group gave this member its partitions
                for partition in consumer.assignment():
                    # Resolve the start now: a "latest" reset done lazily at the first fetch would
                    # skip what is published between subscribe() and that fetch.
                    await consumer.position(partition)
        except BaseException:
            await consumer.stop()
            raise
        wrapped = _KafkaConsumer(self, consumer, group_id)
        self._consumers.add(wrapped)
        return wrapped

    async def _leave_group(self, group_id: str, member_id: str) -> None:
        """Send LeaveGroup for a member aiokafka would not let go (see the module docstring)."""
        assert self._admin is not None
        async with _transient("leave group"):
            coordinator = await self._admin.find_coordinator(group_id)
            await self._admin._client.send(coordinator, LeaveGroupRequest(group_id, member_id))


class _KafkaConsumer(Consumer):
    def __init__(self, bus: KafkaBus, consumer: AIOKafkaConsumer, group_id: str) -> None:
        self._bus = bus
        self._consumer = consumer
        self.group_id = group_id
        self._closed = False
        self._paused = False

    async def fetch(self, *, max_records: int = 100, timeout_s: float = 1.0) -> list[Message]:
        self._require_open()
        if self._paused:
            self._pause_assigned()  # a rebalance hands partitions out unpaused
        async with _transient("fetch"):
            batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [_message(record) for records in batches.values() for record in records]

    async def pause(self) -> None:
        self._require_open()
        self._paused = True
        self._pause_assigned()

    async def resume(self) -> None:
        self._require_open()
        self._paused = False
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.resume(*assigned)

    def _pause_assigned(self) -> None:
        assigned = self._consumer.assignment() - self._consumer.paused()
        if assigned:
            self._consumer.pause(*assigned)

    async def commit(self, message: Message) -> None:
        self._require_open()
        async with _transient("commit"):
            await self._consumer.commit({TopicPartition(message.topic, message.partition): message.offset + 1})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._consumers.discard(self)
        coordinator = self._consumer._coordinator
        tansu_first_generation = coordinator is not None and coordinator.generation == 0 and coordinator.member_id
        member_id = coordinator.member_id if coordinator is not None else ""
        await self._consumer.stop()
        if tansu_first_generation and self._bus._admin is not None:
            try:
                await self._bus._leave_group(self.group_id, member_id)
            except TransientError as exc:
                log.warning("bus.leave_group_failed", group=self.group_id, error=exc.message)

    def _require_open(self) -> None:
        if self._closed or not self._bus.connected:
            raise NotConnected(type(self).__name__)
