"""The one HTTP path of `sluice` (httpx).

- Where requests go: `--url` / SLUICE_URL, else the local `sluice up` (its public URL); with
  `--api-key` / SLUICE_API_KEY, else that platform's admin key (SLUICE_ADMIN_KEY or its key file).
- One error path: an error answer of the REST API (`{"error": {"type", "message", "details"}}`,
  functions/rest/errors.py) becomes `sluice: STATUS TYPE: MESSAGE` on stderr and exit status 1;
  a server that cannot be reached, `sluice: cannot reach the server: ...` and 1.
- One presigned PUT (`put`): streamed from memory or disk with the progress display, with ONE
  header list (`put_headers`: the ticket's headers less those a presigned PUT must never carry,
  Content-Type always, Content-Length always), through a client without the API key.
- One retry policy (`retrying`, tenacity): connection errors, 429 and 5xx are tried ATTEMPTS times,
  waiting BACKOFF_S doubled each time (with jitter) or the server's Retry-After, at most
  MAX_BACKOFF_S. One polling loop (`poll`, tenacity) for everything that waits for a status.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

import httpx
import typer
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception_type, retry_if_result, stop_after_attempt, wait_exponential

from functions.cli.output import Progress, fail, show

ATTEMPTS = 4  # tries per request when the failure is transient
BACKOFF_S = 0.5  # wait before the first retry; doubles each time
MAX_BACKOFF_S = 10.0
CHUNK = 1024 * 1024  # bytes read and sent per step of a PUT
# Request headers a presigned PUT must never carry (the API key above all).
NOT_FORWARDED = frozenset({"authorization", "content-length", "host", "transfer-encoding"})
STORE_TIMEOUT = httpx.Timeout(60.0, write=600.0)
CONFIRM_MAX_WAIT_S = 600.0
T = TypeVar("T")

Namespace = Annotated[str | None, typer.Option(
    "-n", "--namespace", envvar="SLUICE_NAMESPACE", show_envvar=False, help="namespace (default $SLUICE_NAMESPACE)")]


def wait_option(text: str) -> Any:
    """`--wait SECONDS` with help `text`, its default shown unless the text says it."""
    return typer.Option("--wait", help=text, show_default="(default" not in text)


def require_namespace(namespace: str | None) -> str:
    if not namespace:
        raise fail("no namespace: pass --namespace/-n NAMESPACE or set SLUICE_NAMESPACE", 2)
    return namespace


# --- where requests go ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """The root options (`--data-dir`, `--url`, `--api-key` and their environment variables),
    kept on the root context for every command."""

    data_dir: Path | None = None
    url: str | None = None
    api_key: str | None = None

    @classmethod
    def of(cls, ctx: typer.Context, data_dir: Path | None = None) -> Target:
        """The root's target; a command's own `--data-dir` wins over the root's."""
        found = ctx.find_root().obj
        target = found if isinstance(found, Target) else cls()
        return replace(target, data_dir=data_dir) if data_dir is not None else target

    def settings(self, **extra: Any) -> Any:
        from infra.settings import Settings

        overrides = {k: v for k, v in {"data_dir": self.data_dir, **extra}.items() if v is not None}
        return Settings(**overrides)

    def resolve(self) -> tuple[str, str]:
        """(base URL, API key); no key anywhere stops the command."""
        from infra.bootstrap import admin_key

        settings = self.settings()
        key = self.api_key
        if not key:
            if settings.admin_key is None and not settings.admin_key_file.exists():
                raise fail("no API key: set SLUICE_API_KEY, SLUICE_ADMIN_KEY, or start `sluice up` "
                           f"(writes {settings.admin_key_file})")
            key = admin_key(settings)
        return (self.url or settings.effective_public_url).rstrip("/"), key


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def api_client(url: str, key: str, *, concurrency: int) -> httpx.AsyncClient:
    """The REST API, with the key, for `concurrency` requests at once."""
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=url, headers=auth(key), timeout=httpx.Timeout(60.0), limits=limits)


def demo_client(url: str) -> httpx.AsyncClient:
    """The REST API without a key: `sluice demo` sends each request's key itself (or none)."""
    return httpx.AsyncClient(base_url=url, timeout=120)


def store_client(*, concurrency: int = 1) -> httpx.AsyncClient:
    """Presigned URLs of the object store: no API key, no base URL."""
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=STORE_TIMEOUT, limits=limits)


# --- the error path ---------------------------------------------------------------------------------

def body(response: httpx.Response) -> Any:
    """The answer as JSON when it says it is, else its text."""
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


def describe(response: httpx.Response, limit: int | None = None) -> str:
    """`STATUS TYPE: MESSAGE` from the REST error envelope (`STATUS: TEXT` for any other answer)."""
    data = body(response)
    err = data.get("error") if isinstance(data, dict) else None
    err = err if isinstance(err, dict) else {}
    message = err.get("message", data) if err else data
    text = f"{response.status_code} {err.get('type', '')}".rstrip() + f": {message}"
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def error(response: httpx.Response) -> typer.Exit:
    """Say what the error answer says; the exit (1) to raise."""
    return fail(describe(response))


class Api:
    """The REST API with the key, for one command: every request either answers or stops the
    command with one message."""

    def __init__(self, url: str, key: str, *, timeout: float = 30.0) -> None:
        self.http = httpx.Client(base_url=url, headers=auth(key), timeout=timeout)

    @classmethod
    def open(cls, ctx: typer.Context, *, timeout: float = 30.0) -> Api:
        return cls(*Target.of(ctx).resolve(), timeout=timeout)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach the server: {exc}") from exc

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's body; an error answer stops the command."""
        response = self.request(method, path, **kwargs)
        if response.is_error:
            raise error(response)
        return body(response)

    def download(self, path: str, dest: Path) -> None:
        """GET `path` into the file `dest`, streamed."""
        try:
            with self.http.stream("GET", path) as response:
                if response.is_error:
                    response.read()
                    raise error(response)
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach the server: {exc}") from exc

    def upload(self, ticket: dict[str, Any], source: bytes | Path, *, size: int, content_type: str) -> None:
        """PUT `source` to the ticket's presigned URL with the progress display; a failure stops
        the command."""
        url = absolute(ticket["presigned_url"], str(self.http.base_url))
        progress = Progress(size)

        async def send() -> int:
            async with store_client() as store:
                return await put(store, url, ticket.get("upload_headers") or {}, source, size=size,
                                 content_type=content_type, progress=progress)

        try:
            asyncio.run(send())
        except UploadFailed as exc:
            progress.close(ok=False)
            raise fail(f"upload to the object store failed: {exc}") from exc
        progress.close()

    def deliver(self, ticket: dict[str, Any], source: bytes | Path, *, size: int, content_type: str, confirm: str,
                wait: float) -> tuple[httpx.Response, float]:
        """`upload`, then `confirm`: (the confirm's answer, the `time.monotonic()` deadline of a
        wait of `wait` s that began once the bytes were up)."""
        self.upload(ticket, source, size=size, content_type=content_type)
        deadline = time.monotonic() + wait
        return self.confirm(confirm, wait), deadline

    def confirm(self, path: str, wait: float) -> httpx.Response:
        """POST a confirm route, asking the server to hold the answer up to `wait` s (600 at most)."""
        held = max(0.0, min(wait, CONFIRM_MAX_WAIT_S))
        return self.request("POST", path, params={"wait": f"{held:g}"}, timeout=held + 60)


def call_and_show(ctx: typer.Context, method: str, path: str, as_json: bool, render: Callable[[Any], None],
                  **kwargs: Any) -> None:
    """One request; its answer as JSON (--json) or as `render` prints it."""
    with Api.open(ctx) as api:
        answer = api.call(method, path, **kwargs)
    show(answer, as_json, render)


# --- retries and polling ------------------------------------------------------------------------

class UploadFailed(Exception):
    """A request of an upload failed for good; the message says at which step and why."""


class _Transient(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


NETWORK_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def transient(response: httpx.Response) -> bool:
    return response.status_code == 429 or response.status_code >= 500


def retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


def _backoff(state: RetryCallState) -> float:
    failure = state.outcome.exception() if state.outcome else None
    after = retry_after(failure.response) if isinstance(failure, _Transient) else None
    delay = after if after is not None else BACKOFF_S * 2 ** (state.attempt_number - 1) * random.uniform(1.0, 1.25)
    return min(MAX_BACKOFF_S, delay)


async def retrying(step: str, send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """`send()` until it answers something other than 429 or 5xx, at most ATTEMPTS times. Returns
    that answer (a 4xx included: the caller decides); UploadFailed when every attempt failed."""
    attempts = ATTEMPTS
    try:
        async for attempt in AsyncRetrying(stop=stop_after_attempt(attempts), wait=_backoff, reraise=True,
                                           retry=retry_if_exception_type((_Transient, *NETWORK_ERRORS))):
            with attempt:
                response = await send()
                if transient(response):
                    raise _Transient(response)
    except _Transient as exc:
        raise UploadFailed(f"{step}: {describe(exc.response, 500)} (gave up after {attempts} attempts)") from None
    except NETWORK_ERRORS as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise UploadFailed(f"{step}: {reason} (gave up after {attempts} attempts)") from exc
    return response


def _outcome(state: RetryCallState) -> Any:
    """The value the last attempt returned (polling retries on results, never on errors)."""
    assert state.outcome is not None
    return state.outcome.result()


def poll(fetch: Callable[[], T], first: T, *, done: Callable[[T], bool], deadline: float,
         wait: Callable[[RetryCallState], float] = wait_exponential(multiplier=0.5, exp_base=1.5, max=5.0),
         report: Callable[[T], None] = lambda value: None) -> T:
    """`first`, then `fetch()` again and again (`wait` apart, never sleeping past the
    `time.monotonic()` deadline, `report`ing each value waited on) until `done(value)` or the
    deadline; the last value."""
    pending = [first]
    retrying_ = Retrying(
        retry=retry_if_result(lambda value: not done(value)),
        stop=lambda state: time.monotonic() >= deadline,
        wait=lambda state: min(wait(state), max(0.0, deadline - time.monotonic())),
        before_sleep=lambda state: report(_outcome(state)),
        retry_error_callback=_outcome,
    )
    return retrying_(lambda: pending.pop() if pending else fetch())


# --- the presigned PUT ----------------------------------------------------------------------------

def absolute(url: str, base_url: str) -> str:
    """A presigned URL; one that starts with '/' (the local store behind the API) made absolute."""
    return base_url.rstrip("/") + url if url.startswith("/") else url


def put_headers(ticket_headers: dict[str, str], content_type: str, size: int) -> dict[str, str]:
    """The headers of a presigned PUT: the ticket's, less NOT_FORWARDED; Content-Type always (a
    body without one is read as a form by the S3 endpoint and the object ends up empty);
    Content-Length always (S3 refuses chunked bodies on presigned PUTs)."""
    headers = {k: v for k, v in ticket_headers.items() if k.lower() not in NOT_FORWARDED}
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = content_type
    headers["Content-Length"] = str(size)
    return headers


def _open(source: bytes | Path) -> tuple[IO[bytes], int]:
    if isinstance(source, bytes):
        return io.BytesIO(source), len(source)
    file = open(source, "rb")  # noqa: SIM115 - closed by the caller
    return file, os.fstat(file.fileno()).st_size


async def put(store: httpx.AsyncClient, url: str, ticket_headers: dict[str, str], source: bytes | Path, *,
              size: int, content_type: str, progress: Progress) -> int:
    """PUT `source` (bytes, or a file read a chunk at a time off the event loop) to a presigned URL,
    retried as `retrying` says, counted on `progress` (which planned `size` bytes for it).
    Returns how many bytes the store got (a file's size now may differ from `size`)."""
    sizes = [size]

    async def chunks(file: IO[bytes], length: int, sent: list[int]):
        left = length
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK, left))
            if not chunk:
                raise UploadFailed("PUT: the file shrank while it was being uploaded "
                                   f"({length - left} of {length} bytes read)")
            left -= len(chunk)
            sent[0] += len(chunk)
            progress.add_bytes(len(chunk))
            yield chunk

    async def attempt() -> httpx.Response:
        sent = [0]
        try:
            file, length = await asyncio.to_thread(_open, source)
        except OSError as exc:
            raise UploadFailed(f"cannot read the file: {exc.strerror or exc}") from exc
        try:
            progress.resize(length - sizes[0])
            sizes[0] = length
            content: Any = chunks(file, length, sent) if length else b""
            return await store.put(url, content=content, headers=put_headers(ticket_headers, content_type, length))
        finally:
            if sent[0]:
                progress.add_bytes(-sent[0])  # counted again below, or sent again
            await asyncio.to_thread(file.close)

    response = await retrying("PUT", attempt)
    if response.is_error:
        raise UploadFailed(f"PUT to the object store: {describe(response, 500)}")
    progress.add_bytes(sizes[0])
    return sizes[0]


__all__ = [
    "ATTEMPTS", "BACKOFF_S", "Api", "Namespace", "Target", "UploadFailed", "absolute", "api_client", "body",
    "call_and_show", "demo_client", "describe", "error", "poll", "put", "put_headers", "require_namespace",
    "retrying", "store_client", "wait_option",
]
