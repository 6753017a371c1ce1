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


def _sandbox_ready(settings: Any) -> bool:
    """Fail closed: plugin code runs only when every confinement layer is there, unless the
    operator opted out (degraded, or off), which is said loudly."""
    from engine.sandbox.client import check_available
    from engine.sandbox.errors import SandboxUnavailable
    from functions.ingest import sandbox_options
    import structlog

    log = structlog.get_logger("sluice.sandbox")
    options = sandbox_options(settings)
    try:
        layers = check_available(options)
    except SandboxUnavailable as exc:
        print(f"sluice: refusing to start: {exc}", file=sys.stderr, flush=True)
        log.error("sandbox.unavailable", reason=str(exc))
        return False
    if not options.enabled:
        print("sluice: WARNING: SLUICE_SANDBOX=off — plugin code runs UNCONTAINED in the platform's processes", flush=True)
        log.warning("sandbox.off")
        return True
    missing = sorted(name for name, info in layers.items() if not info.get("available"))
    if missing:
        print(f"sluice: WARNING: plugin hosts run without {', '.join(missing)} (SLUICE_SANDBOX_ALLOW_DEGRADED=1)", flush=True)
        log.warning("sandbox.degraded", missing=missing)
    else:
        print("sluice: plugin sandbox on (" + ", ".join(sorted(layers)) + ")", flush=True)
    return True


def _stop_on_signals() -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM: one stop path for everything the command runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# --- sluice up ---------------------------------------------------------------------------------

async def _schedule_after_models(platform: Any, scheduler: Any, stop: asyncio.Event) -> None:
    """Ingest starts once the models the catalog says are deployed are back in the object store
    (gone with a local Ray when the last process stopped): a job started earlier would fail its
    rows with "not deployed". The REST API serves meanwhile."""
    from functions.model_deploy import reconcile_models

    try:
        await reconcile_models(platform.catalog, platform.store, platform.settings, platform.compute, platform.bus, platform.topics)
    except Exception:  # noqa: BLE001 - ingest must still start; each model's record says what failed
        import structlog

        structlog.get_logger("sluice.models").exception("model.reconcile_failed")
    await scheduler.run(stop)


async def _up(args: argparse.Namespace, on_ready=None) -> int:
    """Run until Ctrl-C (or until `on_ready(settings)` returns, when given: the demo)."""
    import uvicorn

    from functions.dropfolder import DropFolder
    from functions.idempotency import IdempotencyStore
    from functions.ingest import IngestScheduler
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
    if not _sandbox_ready(settings):
        return 2
    await platform.connect()
    scheduler = IngestScheduler.for_platform(platform)
    runner = Runner(
        bus=platform.bus, topics=platform.topics, functions=FUNCTIONS, deps={**platform.deps(), "ingest": scheduler},
        idempotency=IdempotencyStore(platform.catalog),
    )

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # we own the signals: one stop path for server and runner
            yield

    server = _Server(uvicorn.Config(create_app(platform), host=settings.host, port=settings.port, log_config=None, lifespan="off"))
    stop = _stop_on_signals()
    exit_code = 0
    dropping: asyncio.Task | None = None
    scheduling: asyncio.Task | None = None
    try:
        await runner.start()
        if getattr(platform.compute, "runs_jobs", False):
            from functions.deploy import reconcile

            # Versions that should be serving but whose Serve applications are gone (a local Ray
            # does not outlive the process that started it) are deployed again.
            await reconcile(platform.catalog, platform.bus, platform.topics)
        scheduling = asyncio.create_task(_schedule_after_models(platform, scheduler, stop))
        dropping = asyncio.create_task(DropFolder(
            settings.data_dir / "drop", platform.store, platform.catalog, platform.vectors, platform.bus, platform.topics,
        ).run(stop))
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if serving.done():
            serving.result()
            return 1  # bind failure: uvicorn already logged it
        print(f"sluice: serving {settings.effective_public_url}/v1 (health: /v1/health); Ctrl-C stops", flush=True)
        print(f"sluice: drop files into {settings.data_dir.resolve() / 'drop'}/<namespace>/<bucket>/", flush=True)
        if on_ready is not None:
            ready = asyncio.create_task(on_ready(settings, platform))
            await asyncio.wait([ready, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                exit_code = ready.result()
                if exit_code or not getattr(args, "keep_running", False):
                    stop.set()
        await stop.wait()
        print("sluice: stopping", flush=True)
        server.should_exit = True
        await serving
    finally:
        stop.set()
        if dropping is not None:
            await dropping
        await runner.stop()
        if scheduling is not None:
            await scheduling
        await platform.close()
    print("sluice: stopped", flush=True)
    return exit_code


def _demo(args: argparse.Namespace):
    from functions.demo import DEFAULT_FOLDER, run_demo

    async def on_ready(settings, platform) -> int:
        return await run_demo(settings, platform, folder=args.folder or DEFAULT_FOLDER, limit=args.limit)

    return on_ready


# --- sluice events tail ------------------------------------------------------------------------

def _summary(payload: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in payload.items() if k != "type")


async def _tail(args: argparse.Namespace) -> int:
    from events import codec
    from events.errors import PoisonMessage
    from infra.bootstrap import build_bus
    from events.topics import Topics

    settings = _settings(args)
    if settings.effective_bus == "memory":
        print("sluice events tail: the in-memory bus lives inside one process; use the sqlite or kafka bus", file=sys.stderr)
        return 2
    topics = Topics(settings.topic_prefix)
    names = args.topic or [*topics.lifecycle(), topics.dead_letters]
    bus = build_bus(settings)
    await bus.connect()
    stop = _stop_on_signals()
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


def _search(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    namespace = args.namespace or os.environ.get("SLUICE_NAMESPACE")
    if not namespace:
        print("sluice: no namespace: pass --namespace/-n NAMESPACE or set SLUICE_NAMESPACE", file=sys.stderr)
        return 2
    base = f"/v1/namespaces/{quote(namespace, safe='')}/collections"
    try:
        with _client(args) as client:
            client.timeout = httpx.Timeout(120)
            listed = client.get(base)
            if listed.is_error:
                return _report_error(listed)
            matches = [c for c in listed.json()["collections"] if args.collection in (c["collection_id"], c["collection_name"])]
            if not matches:
                names = ", ".join(sorted(c["collection_name"] for c in listed.json()["collections"])) or "none"
                print(f"sluice: no collection {args.collection!r} in namespace {namespace!r} (there are: {names})", file=sys.stderr)
                return 1
            collection = matches[0]
            feature_uri = None
            if args.feature:
                uris = {v["name"]: v["feature_uri"] for v in collection["vector_indexes"]}
                if args.feature not in uris:
                    print(f"sluice: collection {collection['collection_name']!r} has no vector {args.feature!r} "
                          f"(it has: {', '.join(uris) or 'none'})", file=sys.stderr)
                    return 1
                feature_uri = uris[args.feature]
            response = client.post(f"/v1/namespaces/{quote(namespace, safe='')}/retrievers/feature_search", json={
                "collection_id": collection["collection_id"], "query": {"text": args.query}, "limit": args.limit,
                **({"feature_uri": feature_uri} if feature_uri else {})})
    except httpx.HTTPError as exc:
        print(f"sluice: cannot reach the server: {exc}", file=sys.stderr)
        return 1
    if response.is_error:
        return _report_error(response)
    body = response.json()
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    if not body["results"]:
        print("no results")
    for rank, hit in enumerate(body["results"], start=1):
        source = hit.get("source") or {}
        snippet = " ".join((hit.get("text") or "").split())
        print(f"{rank:>3}. {hit['score']:.4f}  {source.get('bucket')}/{source.get('key')}")
        if snippet:
            print(f"     {snippet[:160]}{'…' if len(snippet) > 160 else ''}")
    return 0


def _report_error(response: httpx.Response) -> int:
    try:
        err = response.json().get("error", {})
    except ValueError:
        err = {}
    print(f"sluice: {response.status_code} {err.get('type', '')}: {err.get('message', response.text)}", file=sys.stderr)
    return 1


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

    demo = sub.add_parser("demo", help="start the embedded stack, ingest a folder of text, search it, stop")
    demo.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    demo.add_argument("--port", type=int, default=None)
    demo.add_argument("--host", default=None)
    demo.add_argument("--keep-running", action="store_true", help="stay up after the checks")
    demo.add_argument("--folder", type=Path, default=None, help="text files to ingest (default /usr/share/common-licenses)")
    demo.add_argument("--limit", type=int, default=None, help="ingest at most this many files")

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
    search = sub.add_parser("search", help="search a collection by text (embedded with the collection's plugin version)")
    search.add_argument("query")
    search.add_argument("--collection", "-c", required=True, help="collection name or id")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--feature", default=None, help="vector to search (default: the collection's first)")
    search.add_argument("--namespace", "-n", default=None, help="namespace (default $SLUICE_NAMESPACE)")
    search.add_argument("--json", action="store_true", help="print the response as JSON")
    from functions.ingest_cli import add_ingest_command
    from functions.model_cli import add_model_commands
    from functions.plugin_cli import add_plugin_commands

    add_plugin_commands(sub)
    add_model_commands(sub)
    add_ingest_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    match args.command:
        case "up":
            return asyncio.run(_up(args))
        case "demo":
            return asyncio.run(_up(args, on_ready=_demo(args)))
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
        case "plugin":
            from functions.plugin_cli import run_plugin_command

            return run_plugin_command(args)
        case "model":
            from functions.model_cli import run_model_command

            return run_model_command(args)
        case "ingest":
            from functions.ingest_cli import run_ingest_command

            return run_ingest_command(args)
        case "search":
            return _search(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
