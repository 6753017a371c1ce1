"""`sluice` command line: run the platform, watch its events, call its REST API.

The command tree is typer's: `plugin` (functions/cli/plugin.py), `model` (functions/cli/model.py),
`ingest` (functions/cli/ingest.py) and the commands below. `main(argv)` runs one command in this
process and returns its exit status (2 for a usage error, said on stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import signal
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import typer
from typer.core import TyperGroup

from functions.cli import ingest, model, plugin
from functions.cli.client import Api, Namespace, Target, call_and_show, require_namespace
from functions.cli.output import Json, fail, print_json, print_table

ORDER = ("up", "events", "demo", "health", "namespace", "key", "search", "plugin", "model", "ingest")


class _Group(TyperGroup):
    """The root group: commands listed in ORDER; Ctrl-C during a command is one line and exit
    status 130, not a traceback."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: ORDER.index(name) if name in ORDER else len(ORDER))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None


app = typer.Typer(
    cls=_Group, help="Run feature-extraction plugins over an object store.", no_args_is_help=True,
    add_completion=False, context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(plugin.app, name="plugin")
app.add_typer(model.app, name="model")
events = typer.Typer(help="lifecycle events", no_args_is_help=True)
app.add_typer(events, name="events")
dlq = typer.Typer(help="dead letters: what the functions gave up on (admin key)", no_args_is_help=True)
events.add_typer(dlq, name="dlq")
namespaces = typer.Typer(help="namespaces", no_args_is_help=True)
app.add_typer(namespaces, name="namespace")
keys = typer.Typer(help="API keys", no_args_is_help=True)
app.add_typer(keys, name="key")
ingest.register(app)

DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", help="State folder (default $SLUICE_DATA_DIR or ~/.sluice)")]
Port = Annotated[int | None, typer.Option("--port", help="REST port (default 8080)")]
Host = Annotated[str | None, typer.Option("--host", help="REST bind address (default 127.0.0.1)")]


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar="SLUICE_DATA_DIR", show_envvar=False,
        help="State folder (default $SLUICE_DATA_DIR or ~/.sluice)")] = None,
    url: Annotated[str | None, typer.Option(
        "--url", envvar="SLUICE_URL", show_envvar=False,
        help="server to call (default $SLUICE_URL, else the local `sluice up`)")] = None,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="SLUICE_API_KEY", show_envvar=False,
        help="API key (default $SLUICE_API_KEY, else the local platform's admin key)")] = None,
) -> None:
    ctx.obj = Target(data_dir=data_dir, url=url, api_key=api_key)


def sandbox_ready(settings: Any) -> bool:
    """Fail closed: plugin code runs only when every confinement layer is there, unless the
    operator opted out (degraded, or off), which is said loudly."""
    import structlog

    from engine.sandbox.client import check_available
    from engine.sandbox.errors import SandboxUnavailable
    from functions.services.ingest import sandbox_options

    log = structlog.get_logger("sluice.sandbox")
    options = sandbox_options(settings)
    try:
        layers = check_available(options)
    except SandboxUnavailable as exc:
        print(f"sluice: refusing to start: {exc}", file=sys.stderr, flush=True)
        log.error("sandbox.unavailable", reason=str(exc))
        return False
    if not options.enabled:
        print("sluice: WARNING: SLUICE_SANDBOX=off — plugin code runs UNCONTAINED in the platform's processes",
              flush=True)
        log.warning("sandbox.off")
        return True
    missing = sorted(name for name, info in layers.items() if not info.get("available"))
    if missing:
        print(f"sluice: WARNING: plugin hosts run without {', '.join(missing)} (SLUICE_SANDBOX_ALLOW_DEGRADED=1)",
              flush=True)
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


# --- sluice up / demo ---------------------------------------------------------------------------

async def _up(settings: Any, on_ready=None, keep_running: bool = False) -> int:
    """Run until Ctrl-C (or until `on_ready(settings, platform)` returns, when given: the demo)."""
    import uvicorn

    from functions.rest.app import create_app
    from functions.runtime.run import run_functions
    from infra.bootstrap import bootstrap
    from infra.logging import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    platform = bootstrap(settings)
    print(f"sluice: data dir {settings.data_dir.resolve()}", flush=True)
    if settings.admin_key is None:
        print(f"sluice: admin key in {settings.admin_key_file.resolve()}", flush=True)
    else:
        print("sluice: admin key from SLUICE_ADMIN_KEY", flush=True)
    if not sandbox_ready(settings):
        return 2
    await platform.connect()

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # we own the signals: one stop path for server and runner
            yield

    server = _Server(uvicorn.Config(create_app(platform), host=settings.host, port=settings.port, log_config=None,
                                    lifespan="off"))
    stop = _stop_on_signals()
    exit_code = 0
    started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    functions = asyncio.create_task(run_functions(platform, stop, drop_folder=settings.data_dir / "drop",
                                                  started=started.set_result))
    try:
        await asyncio.wait([started, functions], return_when=asyncio.FIRST_COMPLETED)
        if functions.done():  # never serve REST without the functions behind it
            error = functions.exception() if not functions.cancelled() else None
            print(f"sluice: the functions failed to start: {type(error).__name__}: {error}", flush=True)
            return 1
        functions.add_done_callback(lambda _: stop.set())  # functions that end stop the whole process
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if serving.done():
            serving.result()
            return 1  # bind failure: uvicorn already logged it
        # what start-up built lives as long as the process: out of the collector's way, so that a
        # full collection (150-650 ms over ~200k objects) does not stall requests
        gc.collect()
        gc.freeze()
        print(f"sluice: serving {settings.effective_public_url}/v1 (health: /v1/health); Ctrl-C stops", flush=True)
        print(f"sluice: drop files into {settings.data_dir.resolve() / 'drop'}/<namespace>/<bucket>/", flush=True)
        if on_ready is not None:
            ready = asyncio.create_task(on_ready(settings, platform))
            await asyncio.wait([ready, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                exit_code = ready.result()
                if exit_code or not keep_running:
                    stop.set()
        await stop.wait()
        print("sluice: stopping", flush=True)
        server.should_exit = True
        await serving
        if functions.done() and not functions.cancelled() and functions.exception() is not None:
            print(f"sluice: the functions stopped: {functions.exception()!r}", flush=True)
            exit_code = exit_code or 1
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await functions
        await platform.close()
    print("sluice: stopped", flush=True)
    return exit_code


@app.command("up", help="run the whole platform on this machine (REST, functions, local Ray)")
def up(ctx: typer.Context, data_dir: DataDir = None, port: Port = None, host: Host = None) -> None:
    raise typer.Exit(asyncio.run(_up(Target.of(ctx, data_dir).settings(port=port, host=host))))


@app.command("demo", help="start the embedded stack, ingest a folder of text, search it, stop")
def demo(
    ctx: typer.Context,
    data_dir: DataDir = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="stay up after the checks")] = False,
    folder: Annotated[Path | None, typer.Option(
        "--folder", help="text files to ingest (default /usr/share/common-licenses)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="ingest at most this many files")] = None,
) -> None:
    from functions.cli.demo import DEFAULT_FOLDER, run_demo

    async def on_ready(settings: Any, platform: Any) -> int:
        return await run_demo(settings, platform, folder=folder or DEFAULT_FOLDER, limit=limit)

    settings = Target.of(ctx, data_dir).settings(port=port, host=host)
    raise typer.Exit(asyncio.run(_up(settings, on_ready=on_ready, keep_running=keep_running)))


# --- sluice events tail ------------------------------------------------------------------------

def _summary(payload: dict[str, Any]) -> str:
    return " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in payload.items() if k != "type")


def _event_line(message: Any, as_json: bool) -> str:
    from events import codec
    from events.errors import PoisonMessage

    if as_json:
        return message.value.decode(errors="replace")
    try:
        ev = codec.decode(message.value)
    except PoisonMessage:
        error = (message.header("x-sluice-error") or b"").decode(errors="replace")
        return f"{message.topic} offset={message.offset} undecodable {error}"
    return (f"{ev.occurred_at.isoformat(timespec='milliseconds')} {ev.type} ns={ev.namespace or '-'} "
            f"corr={ev.correlation_id[:8]} {_summary(ev.payload.model_dump(mode='json'))}")


async def _tail(settings: Any, topic: list[str] | None, from_beginning: bool, as_json: bool,
                max_events: int | None) -> int:
    from events.topics import Topics
    from infra.bootstrap import build_bus

    if settings.effective_bus == "memory":
        print("sluice events tail: the in-memory bus lives inside one process; use the sqlite or kafka bus",
              file=sys.stderr)
        return 2
    topics = Topics(settings.topic_prefix)
    names = topic or [*topics.lifecycle(), topics.dead_letters]
    bus = build_bus(settings)
    await bus.connect()
    stop = _stop_on_signals()
    seen = 0
    try:
        group = f"sluice-tail-{uuid.uuid4().hex[:12]}"
        consumer = await bus.subscribe(names, group_id=group, from_beginning=from_beginning)
        try:
            while not stop.is_set() and (max_events is None or seen < max_events):
                for message in await consumer.fetch(timeout_s=0.5):
                    seen += 1
                    print(_event_line(message, as_json), flush=True)
                    if max_events is not None and seen >= max_events:
                        break
        finally:
            await consumer.close()
    finally:
        await bus.close()
    return 0


@events.command("tail", help="print lifecycle events as they happen")
def tail(
    ctx: typer.Context,
    topic: Annotated[list[str] | None, typer.Option(
        "--topic", help="topic to follow (repeatable; default: every lifecycle topic)")] = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="replay retained events first")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print raw envelopes")] = False,
    max_events: Annotated[int | None, typer.Option("--max-events", hidden=True)] = None,
) -> None:
    settings = Target.of(ctx).settings()
    raise typer.Exit(asyncio.run(_tail(settings, topic, from_beginning, as_json, max_events)))


# --- sluice events dlq -------------------------------------------------------------------------

DeadLetterId = Annotated[str, typer.Argument(metavar="ID")]


def _dlq_path(*rest: str) -> str:
    return "/".join(["/v1/admin/dead-letters", *(quote(part, safe="") for part in rest)])


def _print_dead_letters(listed: list[dict[str, Any]]) -> None:
    if not listed:
        print("no dead letters")
        return
    print_table([(d["dead_letter_id"], d.get("status") or "-", d.get("function") or "-", d.get("error_type") or "-",
                  d.get("namespace") or "-", f"{d.get('source_topic')}/{d.get('source_partition')}@{d.get('source_offset')}"
                  + (f"#{d['record_index']}" if d.get("record_index") is not None else ""),
                  d.get("created_at") or "-", " ".join((d.get("error") or "").split())[:80]) for d in listed],
                header=("ID", "STATUS", "FUNCTION", "ERROR_TYPE", "NAMESPACE", "SOURCE", "CREATED", "ERROR"))


def _print_dead_letter(d: dict[str, Any]) -> None:
    for name in ("dead_letter_id", "status", "function", "error_type", "error", "attempts", "source_topic",
                 "source_partition", "source_offset", "record_index", "namespace", "size", "created_at", "replayed_at",
                 "replay_count", "discarded_at"):
        print(f"{name}: {d.get(name) if d.get(name) is not None else '-'}")


@dlq.command("list", help="dead letters, newest first")
def dlq_list(
    ctx: typer.Context,
    function: Annotated[str | None, typer.Option("--function", help="only this function's")] = None,
    status: Annotated[Literal["open", "replayed", "discarded"] | None, typer.Option("--status")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="only this namespace's")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: Json = False,
) -> None:
    params = {k: v for k, v in {"function": function, "status": status, "namespace": namespace, "limit": limit,
                                "offset": offset}.items() if v is not None}
    call_and_show(ctx, "GET", _dlq_path(), as_json, lambda r: _print_dead_letters(r.get("dead_letters", [])), params=params)


@dlq.command("show", help="one dead letter, with its original bytes in --json")
def dlq_show(ctx: typer.Context, dead_letter_id: DeadLetterId, as_json: Json = False) -> None:
    call_and_show(ctx, "GET", _dlq_path(dead_letter_id), as_json, _print_dead_letter)


@dlq.command("replay", help="publish a dead letter's bytes again to the topic they came from")
def dlq_replay(ctx: typer.Context, dead_letter_id: DeadLetterId, as_json: Json = False) -> None:
    call_and_show(ctx, "POST", _dlq_path(dead_letter_id, "replay"), as_json,
                  lambda d: print(f"replayed {d['dead_letter_id']} to {d.get('source_topic')} ({d.get('replay_count')} so far)"))


@dlq.command("discard", help="mark a dead letter as dealt with: never replayed")
def dlq_discard(ctx: typer.Context, dead_letter_id: DeadLetterId, as_json: Json = False) -> None:
    call_and_show(ctx, "POST", _dlq_path(dead_letter_id, "discard"), as_json,
                  lambda d: print(f"discarded {d['dead_letter_id']}"))


# --- REST client commands ----------------------------------------------------------------------

def _call(ctx: typer.Context, method: str, path: str, **kwargs: Any) -> None:
    """One request; its answer printed as JSON."""
    call_and_show(ctx, method, path, True, print_json, **kwargs)


@app.command("health", help="the platform's health")
def health(ctx: typer.Context) -> None:
    _call(ctx, "GET", "/v1/health")


@namespaces.command("list", help="namespaces the key may see")
def namespace_list(ctx: typer.Context) -> None:
    _call(ctx, "GET", "/v1/namespaces")


@namespaces.command("create", help="create a namespace (admin key)")
def namespace_create(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")],
                     description: Annotated[str | None, typer.Option("--description")] = None) -> None:
    _call(ctx, "POST", "/v1/namespaces", json={"namespace_name": name, "description": description})


KeyNamespace = Annotated[str, typer.Argument(metavar="NAMESPACE")]


def _keys_path(namespace: str, *rest: str) -> str:
    return "/".join([f"/v1/namespaces/{quote(namespace, safe='')}/api-keys", *(quote(part, safe="") for part in rest)])


@keys.command("create", help="mint a key of a namespace, shown once (admin key, or an admin-role key of the namespace)")
def key_create(
    ctx: typer.Context,
    namespace: KeyNamespace,
    label: Annotated[str | None, typer.Option("--label", "--name", help="a label for the key")] = None,
    role: Annotated[Literal["read", "write", "admin"], typer.Option(
        "--role", help="read; write (read and change); admin (write, and the namespace's keys and secrets)")] = "write",
    expires_in_days: Annotated[int | None, typer.Option("--expires-in-days", min=1, help="expire after this many days")]
    = None,
) -> None:
    body = {"label": label, "role": role, "expires_in_days": expires_in_days}
    _call(ctx, "POST", _keys_path(namespace), json={k: v for k, v in body.items() if v is not None})


def _key_state(key: dict[str, Any]) -> str:
    if key.get("revoked"):
        return "revoked"
    expires = key.get("expires_at")
    if expires and datetime.fromisoformat(expires) <= datetime.now(UTC):
        return "expired"
    return "active"


def _print_keys(namespace: str, listed: list[dict[str, Any]]) -> None:
    if not listed:
        print(f"no API keys in namespace {namespace}")
        return
    print_table([(k["key_id"], k.get("label") or "-", k["role"], _key_state(k), k.get("created_at") or "-",
                  k.get("expires_at") or "never") for k in listed],
                header=("KEY_ID", "LABEL", "ROLE", "STATE", "CREATED", "EXPIRES"))


@keys.command("list", help="a namespace's keys, never their secrets (admin key, or an admin-role key)")
def key_list(ctx: typer.Context, namespace: KeyNamespace, as_json: Json = False) -> None:
    call_and_show(ctx, "GET", _keys_path(namespace), as_json, lambda r: _print_keys(namespace, r.get("api_keys", [])))


@keys.command("revoke", help="revoke a key at once: its next request answers 401")
def key_revoke(ctx: typer.Context, namespace: KeyNamespace,
               key_id: Annotated[str, typer.Argument(metavar="KEY_ID")], as_json: Json = False) -> None:
    call_and_show(ctx, "DELETE", _keys_path(namespace, key_id), as_json, _print_revoked)


def _print_revoked(key: dict[str, Any]) -> None:
    label = f" ({key['label']})" if key.get("label") else ""
    print(f"revoked {key['key_id']}{label} in namespace {key['namespace']} at {key.get('revoked_at')}")


def _print_hits(results: list[dict[str, Any]]) -> None:
    if not results:
        print("no results")
    for rank, hit in enumerate(results, start=1):
        source = hit.get("source") or {}
        snippet = " ".join((hit.get("text") or "").split())
        print(f"{rank:>3}. {hit['score']:.4f}  {source.get('bucket')}/{source.get('key')}")
        if snippet:
            print(f"     {snippet[:160]}{'…' if len(snippet) > 160 else ''}")


def _feature_uri(collection: dict[str, Any], feature: str | None) -> str | None:
    """The URI of the collection's vector `feature` (None: its first)."""
    if not feature:
        return None
    uris = {v["name"]: v["feature_uri"] for v in collection["vector_indexes"]}
    if feature not in uris:
        raise fail(f"collection {collection['collection_name']!r} has no vector {feature!r} "
                   f"(it has: {', '.join(uris) or 'none'})")
    return uris[feature]


@app.command("search", help="search a collection by text (embedded with the collection's plugin version)")
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(metavar="QUERY")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="collection name or id")],
    limit: Annotated[int, typer.Option("--limit")] = 10,
    feature: Annotated[str | None, typer.Option("--feature", help="vector to search (default: the collection's first)")]
    = None,
    namespace: Namespace = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the response as JSON")] = False,
) -> None:
    base = f"/v1/namespaces/{quote(require_namespace(namespace), safe='')}"
    with Api.open(ctx, timeout=120) as api:
        listed = api.call("GET", f"{base}/collections")["collections"]
        matches = [c for c in listed if collection in (c["collection_id"], c["collection_name"])]
        if not matches:
            names = ", ".join(sorted(c["collection_name"] for c in listed)) or "none"
            raise fail(f"no collection {collection!r} in namespace {namespace!r} (there are: {names})")
        feature_uri = _feature_uri(matches[0], feature)
        found = api.call("POST", f"{base}/retrievers/feature_search", json={
            "collection_id": matches[0]["collection_id"], "query": {"text": query}, "limit": limit,
            **({"feature_uri": feature_uri} if feature_uri else {})})
    if as_json:
        print_json(found)
    else:
        _print_hits(found["results"])


# --- main ---------------------------------------------------------------------------------------

@functools.cache
def _command() -> Any:
    return typer.main.get_command(app)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sluice` with `argv` (default: the process's arguments); its exit status."""
    try:
        _command().main(args=list(argv) if argv is not None else None, prog_name="sluice", standalone_mode=True)
    except SystemExit as exited:  # click's standalone handling: usage errors say so on stderr and exit 2
        if exited.code is None or isinstance(exited.code, int):
            return exited.code or 0
        print(exited.code, file=sys.stderr)
        return 1
    return 0


__all__ = ["app", "main", "sandbox_ready"]


if __name__ == "__main__":
    sys.exit(main())
