"""Plugin access to the objects being processed: `open_asset(url)` gives a local file path.

Plugins receive URLs (`s3://bucket/key` from the ingest job, sometimes `http(s)://`), while most
libraries want a file path. This module is the one door through which plugin code reads files:
the plugin scanner forbids `open()` and friends, so the door itself enforces what may be read.

- `s3://bucket/key`: through the resolver the ingest job installs (`configure_asset_resolver`), or
  failing that a botocore client configured from `SLUICE_S3_*` / the usual AWS credentials.
- `http://` / `https://`: streamed with a timeout and a size cap.
- `file://`: only below a root an operator or test registered with `allow_asset_root`; there are
  none by default, so a plugin cannot read arbitrary host files (`/etc/passwd`, other namespaces'
  spools) by handing itself a `file://` URL.

Downloads land in a private temp folder (mode 0700, one per process); `open_asset` deletes them on
exit, and `download_asset` tells the caller whether the path is a temp file to delete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from engine.env import engine_env
from events.errors import Forbidden, InvalidInput, NotFound, PermanentError, TransientError

__all__ = [
    "AssetAccessDenied",
    "allow_asset_root",
    "configure_asset_bridge",
    "configure_asset_resolver",
    "disallow_asset_root",
    "download_asset",
    "open_asset",
]

MAX_DOWNLOAD_BYTES = 2 * 1024**3
"""An http(s) download larger than this fails: a plugin must not fill a worker's disk."""
HTTP_TIMEOUT_S = 60.0
"""Connect / read timeout of http(s) downloads (per network operation, not for the whole body)."""
_CHUNK = 1024 * 1024

AssetResolver = Callable[[str, str, Path], None]
"""`resolver(bucket, key, dest)` writes the object's bytes to the file `dest`."""


class AssetAccessDenied(Forbidden):
    """A `file://` URL outside every allowed root."""

    error_type = "asset_access_denied"


_lock = threading.Lock()
_allowed_roots: list[Path] = []
_resolver: AssetResolver | None = None
_temp_dir: Path | None = None
_bridge: Callable[[str, str], str] | None = None


def allow_asset_root(path: str | os.PathLike[str]) -> Path:
    """Let `file://` URLs read files below `path` (resolved, symlinks followed). Returns the root."""
    root = Path(path).expanduser().resolve()
    with _lock:
        if root not in _allowed_roots:
            _allowed_roots.append(root)
    return root


def disallow_asset_root(path: str | os.PathLike[str]) -> None:
    """Undo `allow_asset_root(path)`; unknown roots are ignored."""
    root = Path(path).expanduser().resolve()
    with _lock:
        if root in _allowed_roots:
            _allowed_roots.remove(root)


def configure_asset_resolver(resolver: AssetResolver | None) -> None:
    """Install how `s3://` URLs are fetched in this process (the ingest job passes its object store);
    None goes back to the environment-configured botocore client."""
    if resolver is not None and not callable(resolver):
        raise TypeError(f"an asset resolver must be callable or None, got {type(resolver).__name__}")
    global _resolver
    with _lock:
        _resolver = resolver


def configure_asset_bridge(bridge: Callable[[str, str], str] | None) -> None:
    """In a plugin host: `bridge(url, suffix)` asks the trusted side for an object (`s3://`, or a
    `file://` URL outside this process's own roots) and returns the path of a private copy, which
    the caller owns. The trusted side answers only for the host's namespace."""
    global _bridge
    with _lock:
        _bridge = bridge


@contextlib.contextmanager
def open_asset(url: str, suffix: str = "") -> Iterator[str]:
    """A local path for `url`, valid inside the `with` block; a downloaded copy is deleted on exit.
    `suffix` (".mp4") is kept on temp files for libraries that sniff the extension."""
    path, is_temp = download_asset(url, suffix)
    try:
        yield path
    finally:
        if is_temp:
            Path(path).unlink(missing_ok=True)


def download_asset(url: str, suffix: str = "") -> tuple[str, bool]:
    """`(local path, is_temp)` for `url`. When `is_temp` is True the caller owns the file and should
    delete it; a `file://` URL answers the file itself (`is_temp` False), which must not be deleted."""
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"an asset URL must be a non-empty string, got {url!r}", details={"url": repr(url)})
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    with _lock:
        bridge = _bridge
    if scheme == "file":
        if bridge is not None and not _below_allowed_root(url):
            return bridge(url, suffix), True
        return str(_local_file(url)), False
    if scheme == "s3" and bridge is not None:
        _split_s3(url)
        return bridge(url, suffix), True
    if scheme == "s3":
        bucket, key = _split_s3(url)
        return _into_temp(url, suffix, lambda dest: _fetch_s3(url, bucket, key, dest)), True
    if scheme in ("http", "https"):
        return _into_temp(url, suffix, lambda dest: _fetch_http(url, dest)), True
    raise InvalidInput(
        f"cannot open asset {url!r}: supported URLs are s3://bucket/key, http(s)://... and file:// below an allowed root",
        details={"url": url},
    )


def _file_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidInput(f"file URL {url!r} names a remote host {parts.netloc!r}", details={"url": url})
    return Path(url2pathname(unquote(parts.path)))


def _below_allowed_root(url: str) -> bool:
    path = os.path.realpath(_file_path(url))
    with _lock:
        return any(Path(path).is_relative_to(root) for root in _allowed_roots)


def _local_file(url: str) -> Path:
    path = _file_path(url).resolve()
    with _lock:
        roots = list(_allowed_roots)
    if not any(path.is_relative_to(root) for root in roots):
        raise AssetAccessDenied(
            f"file URL {url!r} resolves to {str(path)!r}, which is outside the allowed asset roots"
            + (f" {[str(r) for r in roots]}" if roots else " (none are configured in this process)"),
            details={"url": url, "path": str(path)},
        )
    if not path.is_file():
        raise NotFound(f"asset file {str(path)!r} (from {url!r}) does not exist", details={"url": url, "path": str(path)})
    return path


def _split_s3(url: str) -> tuple[str, str]:
    # Not urlsplit: object keys may contain '?' and '#', which are not URL syntax here.
    bucket, _, key = url[len("s3://"):].partition("/") if url[:5].lower() == "s3://" else ("", "", "")
    if not bucket or not key:
        raise InvalidInput(f"S3 URL {url!r} must look like s3://bucket/key", details={"url": url})
    return bucket, key


def _temp_root() -> Path:
    """This process's private download folder, created on first use."""
    global _temp_dir
    with _lock:
        if _temp_dir is None or not _temp_dir.is_dir():
            _temp_dir = Path(tempfile.mkdtemp(prefix="sluice-assets-"))
        return _temp_dir


def _into_temp(url: str, suffix: str, fetch: Callable[[Path], None]) -> str:
    fd, name = tempfile.mkstemp(suffix=suffix, dir=_temp_root())
    os.close(fd)
    dest = Path(name)
    try:
        fetch(dest)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return str(dest)


def _fetch_s3(url: str, bucket: str, key: str, dest: Path) -> None:
    with _lock:
        resolver = _resolver
    if resolver is not None:
        resolver(bucket, key, dest)
        return
    client = _env_s3_client(url)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        with dest.open("wb") as out:
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                out.write(chunk)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise NotFound(f"asset {url!r} does not exist ({code})", details={"url": url}) from exc
        if code in ("AccessDenied", "403"):
            raise Forbidden(f"access to asset {url!r} was denied by the object store", details={"url": url}) from exc
        raise TransientError(f"reading asset {url!r} failed: {code or exc}", details={"url": url}) from exc
    except BotoCoreError as exc:
        raise TransientError(f"reading asset {url!r} failed: {exc}", details={"url": url}) from exc
    finally:
        client.close()


def _env_s3_client(url: str):
    """A botocore S3 client from SLUICE_S3_* (MinIO and friends) or the standard AWS credentials."""
    import botocore.session

    session = botocore.session.get_session()
    env = engine_env()
    endpoint = env.s3_endpoint_url or None
    access_key = env.s3_access_key_id or None
    secret_key = env.s3_secret_access_key or None
    if endpoint is None and access_key is None and session.get_credentials() is None:
        raise PermanentError(
            f"cannot read {url!r}: no object store is configured in this process (no asset resolver was "
            "installed, SLUICE_S3_ENDPOINT_URL is unset and no AWS credentials were found)",
            details={"url": url},
        )
    return session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=env.s3_region or "us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )


def _fetch_http(url: str, dest: Path) -> None:
    import httpx

    cap = MAX_DOWNLOAD_BYTES
    too_large = InvalidInput(f"asset {url!r} is larger than the {cap}-byte download limit", details={"url": url, "limit": cap})
    try:
        with httpx.stream("GET", url, timeout=HTTP_TIMEOUT_S, follow_redirects=True) as response:
            if response.status_code >= 400:
                details = {"url": url, "status": response.status_code}
                message = f"downloading asset {url!r} failed with HTTP {response.status_code}"
                if response.status_code == 404:
                    raise NotFound(message, details=details)
                if response.status_code >= 500 or response.status_code == 429:
                    raise TransientError(message, details=details)
                raise PermanentError(message, details=details)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > cap:
                raise too_large
            written = 0
            with dest.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    written += len(chunk)
                    if written > cap:
                        raise too_large
                    out.write(chunk)
    except httpx.TimeoutException as exc:
        raise TransientError(f"downloading asset {url!r} timed out after {HTTP_TIMEOUT_S}s", details={"url": url}) from exc
    except httpx.HTTPError as exc:
        raise TransientError(f"downloading asset {url!r} failed: {exc}", details={"url": url}) from exc
