"""A runner in its own process, for crash tests: `python -m tests.e2e.crash_worker ...`.

Its one function is not naturally idempotent (each run inserts a record with a random key), so
only the idempotency record keeps its effect to one. With `--crash-before-commit` the process dies
(os._exit) at the moment it would commit its first message: after the handler ran and its result
was published, before the offset was committed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path

from events import Topics
from events.payloads import IngestStarted
from functions.runtime.idempotency import IdempotencyStore
from functions.runtime.runner import Function, Runner
from infra.catalog.sqlite import SqliteCatalog

CRASH_EXIT = 17


async def effect(event, *, catalog):
    await catalog.insert("effects", uuid.uuid4().hex, {"event_id": event.event_id, "pid": os.getpid()})
    return [event.child(IngestStarted(task_id=event.payload.key, collection_id="c", objects=1))]


def _bus(args):
    if args.bus == "kafka":
        from infra.bus.kafka import KafkaBus

        return KafkaBus(args.bootstrap, session_timeout_ms=3000)  # Tansu holds joins for half of it
    from infra.bus.sqlite import SqliteLogBus

    return SqliteLogBus(Path(args.bus_path))


async def main(args) -> int:
    processed: list[str] = []
    async with SqliteCatalog(Path(args.catalog)) as catalog, _bus(args) as bus:
        if args.crash_before_commit:
            original = bus.subscribe

            async def subscribe(*a, **kw):
                consumer = await original(*a, **kw)

                async def commit(message):
                    os._exit(CRASH_EXIT)

                consumer.commit = commit
                return consumer

            bus.subscribe = subscribe
        runner = Runner(
            bus=bus, topics=Topics(args.prefix), functions=[Function("effect", effect, frozenset({"ObjectCreated"}), once=True)],
            deps={"catalog": catalog}, idempotency=IdempotencyStore(catalog, lease_s=1.0),
            on_processed=lambda fn, m, outcome: processed.append(outcome),
        )
        await runner.start()
        deadline = asyncio.get_running_loop().time() + args.max_wait
        while len(processed) < args.expect and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        await runner.stop()
    print(f"processed={len(processed)} outcomes={processed}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bus", choices=["kafka", "sqlite"], required=True)
    parser.add_argument("--bootstrap")
    parser.add_argument("--bus-path")
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--expect", type=int, default=1)
    parser.add_argument("--max-wait", type=float, default=60)
    parser.add_argument("--crash-before-commit", action="store_true")
    sys.exit(asyncio.run(main(parser.parse_args())))
