"""`sluice` command line: run the platform, watch its events, call its REST API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx


def _settings(args: argparse.Namespace, **extra: Any):
    from infra.settings import Settings

    overrides = {k: v for k, v in {"data_dir": getattr(args, "data_dir", None), **extra}.items() if v is not None}
    return Settings(**overrides)


# --- sluice up ---------------------------------------------------------------------------------

async def _up(args: argparse.Namespace) -> int:
    import uvicorn

    from functions.idempotency import IdempotencyStore
    from functions.rest.app import create_app
    from functions.runner import Runner
    from functions.table import FUNCTIONS
    from infra.bootstrap import bootstrap
    from infra.logging import configure_logging

    settings = _settings(args, port=args.port, host=args.host)
    configure_logging(settings.log_level, json=settings.log_json)
    platform = bootstrap(settings)
    print(f"sluice: data dir {settings.data_dir.resolve()}", flush=True)
    if settings.admin_key is None:
        print(f"sluice: admin key in {settings.admin_key_file.resolve()}", flush=True)
    else:
        print("sluice: admin key from SLUICE_ADMIN_KEY", flush=True)
    await platform.connect()
    runner = Runner(
        bus=platform.bus, topics=platform.topics, functions=FUNCTIONS, deps=platform.deps(),
        idempotency=IdempotencyStore(platform.catalog),
    )

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # we own the signals: one stop path for server and runner
            yield

    server = _Server(uvicorn.Config(create_app(platform), host=settings.host, port=settings.port, log_config=None, lifespan="off"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.start()
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if serving.done():
            serving.result()
            return 1  # bind failure: uvicorn already logged it
        print(f"sluice: serving {settings.effective_public_url}/v1 (health: /v1/health); Ctrl-C stops", flush=True)
        await stop.wait()
        print("sluice: stopping", flush=True)
        server.should_exit = True
        await serving
    finally:
        await runner.stop()
        await platform.close()
    print("sluice: stopped", flush=True)
    return 0


# --- sluice events tail ------------------------------------------------------------------------

def _summary(payload: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in payload.items() if k != "type")


async def _tail(args: argparse.Namespace) -> int:
    from events import codec
    from events.errors import PoisonMessage
    from infra.bootstrap import _bus  # the bus alone: tail needs no other port
    from events.topics import Topics

    settings = _settings(args)
    if settings.effective_bus == "memory":
        print("sluice events tail: the in-memory bus lives inside one process; use the sqlite or kafka bus", file=sys.stderr)
        return 2
    topics = Topics(settings.topic_prefix)
    names = args.topic or [*topics.lifecycle(), topics.dead_letters]
    bus = _bus(settings)
    await bus.connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    seen = 0
    try:
        consumer = await bus.subscribe(names, group_id=f"sluice-tail-{uuid.uuid4().hex[:12]}", from_beginning=args.from_beginning)
        try:
            while not stop.is_set() and (args.max_events is None or seen < args.max_events):
                for message in await consumer.fetch(timeout_s=0.5):
                    seen += 1
                    if args.json:
                        print(message.value.decode(errors="replace"), flush=True)
                        continue
                    try:
                        ev = codec.decode(message.value)
                    except PoisonMessage:
                        error = (message.header("x-sluice-error") or b"").decode(errors="replace")
                        print(f"{message.topic} offset={message.offset} undecodable {error}", flush=True)
                        continue
                    print(
                        f"{ev.occurred_at.isoformat(timespec='milliseconds')} {ev.type} ns={ev.namespace or '-'} "
                        f"corr={ev.correlation_id[:8]} {_summary(ev.payload.model_dump(mode='json'))}",
                        flush=True,
                    )
                    if args.max_events is not None and seen >= args.max_events:
                        break
        finally:
            await consumer.close()
    finally:
        await bus.close()
    return 0


# --- REST client commands ----------------------------------------------------------------------

def _client(args: argparse.Namespace) -> httpx.Client:
    from infra.bootstrap import admin_key

    settings = _settings(args)
    url = os.environ.get("SLUICE_URL") or settings.effective_public_url
    key = os.environ.get("SLUICE_API_KEY")
    if not key:
        if settings.admin_key is None and not settings.admin_key_file.exists():
            raise SystemExit(f"sluice: no API key: set SLUICE_API_KEY, SLUICE_ADMIN_KEY, or start `sluice up` (writes {settings.admin_key_file})")
        key = admin_key(settings)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _call(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> int:
    try:
        with _client(args) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        print(f"sluice: cannot reach the server: {exc}", file=sys.stderr)
        return 1
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else response.text
    if response.is_error:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        print(f"sluice: {response.status_code} {err.get('type', '')}: {err.get('message', body)}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="Run feature-extraction plugins over an object store.")
    parser.add_argument("--data-dir", type=Path, default=None, help="State folder (default $SLUICE_DATA_DIR or ~/.sluice)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole platform on this machine (REST, functions, local Ray)")
    up.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    up.add_argument("--port", type=int, default=None, help="REST port (default 8080)")
    up.add_argument("--host", default=None, help="REST bind address (default 127.0.0.1)")

    ev = sub.add_parser("events", help="lifecycle events").add_subparsers(dest="events_command", required=True)
    tail = ev.add_parser("tail", help="print lifecycle events as they happen")
    tail.add_argument("--topic", action="append", help="topic to follow (repeatable; default: every lifecycle topic)")
    tail.add_argument("--from-beginning", action="store_true", help="replay retained events first")
    tail.add_argument("--json", action="store_true", help="print raw envelopes")
    tail.add_argument("--max-events", type=int, default=None, help=argparse.SUPPRESS)

    sub.add_parser("health", help="the platform's health")
    ns = sub.add_parser("namespace", help="namespaces").add_subparsers(dest="ns_command", required=True)
    create = ns.add_parser("create", help="create a namespace (admin key)")
    create.add_argument("name")
    create.add_argument("--description", default=None)
    ns.add_parser("list", help="namespaces the key may see")
    key = sub.add_parser("key", help="API keys").add_subparsers(dest="key_command", required=True)
    kc = key.add_parser("create", help="issue a key scoped to a namespace")
    kc.add_argument("namespace")
    kc.add_argument("--name", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    match args.command:
        case "up":
            return asyncio.run(_up(args))
        case "events":
            return asyncio.run(_tail(args))
        case "health":
            return _call(args, "GET", "/v1/health")
        case "namespace" if args.ns_command == "create":
            return _call(args, "POST", "/v1/namespaces", json={"namespace_name": args.name, "description": args.description})
        case "namespace":
            return _call(args, "GET", "/v1/namespaces")
        case "key":
            return _call(args, "POST", f"/v1/namespaces/{args.namespace}/api-keys", json={"name": args.name})
    return 2


if __name__ == "__main__":
    sys.exit(main())
