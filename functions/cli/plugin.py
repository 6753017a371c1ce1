"""`sluice plugin ...`: write, check, push and manage plugins.

`init` and `test` work offline: `test` runs exactly the server's checks (archive checks, the
security scanner, then manifest check and dry run in a subprocess). The other commands call the
REST API of `functions/rest/plugins.py` with the key `sluice` uses everywhere (SLUICE_API_KEY, or
the admin key of a local `sluice up`), in the namespace given by `-n` or SLUICE_NAMESPACE.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx

NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{2,63}$")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "plugin"
PLACEHOLDER = "{{name}}"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold: entries carry no build time
SKIPPED_NAMES = frozenset({"__pycache__", ".git", ".DS_Store"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
UPLOAD_CHUNK = 256 * 1024
DEFAULT_VALIDATION_TIMEOUT_S = 300.0
TERMINAL = ("REGISTERED", "FAILED")


class _Exit(Exception):
    """Stop the command with this exit status; the message (if any) was already printed."""

    def __init__(self, code: int = 1) -> None:
        super().__init__(code)
        self.code = code


def _fail(message: str, code: int = 1) -> _Exit:
    print(f"sluice: {message}", file=sys.stderr)
    return _Exit(code)


# --- parser -------------------------------------------------------------------------------------

def add_plugin_commands(subparsers: Any) -> None:
    """Register `sluice plugin ...` on the top-level subparsers of functions/cli.py."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", default=None, help="namespace (default $SLUICE_NAMESPACE)")
    common.add_argument("--json", action="store_true", help="print the raw response as JSON")

    plugin = subparsers.add_parser("plugin", help="write, test, push and manage plugins")
    sub = plugin.add_subparsers(dest="plugin_command", required=True)

    p = sub.add_parser("init", parents=[common], help="create a plugin folder from the template")
    p.add_argument("name", help="plugin name: 3-64 letters, digits and _, starting with a letter")
    p.add_argument("--dir", type=Path, default=Path("."), help="parent folder (default: the current folder)")

    p = sub.add_parser("test", parents=[common], help="run the server's checks locally (scan, manifest, dry run)")
    p.add_argument("path", type=Path, help="plugin folder or .zip")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument("--name", default=None, help="plugin name (default: from manifest.py)")
    p.add_argument("--version", default=None, help="version (default: from manifest.py)")
    p.add_argument("--timeout", type=float, default=DEFAULT_VALIDATION_TIMEOUT_S, help="limit on the dry run in seconds")

    p = sub.add_parser("push", parents=[common], help="zip, upload, validate on the server and register")
    p.add_argument("path", type=Path, help="plugin folder (or a .zip made from one)")
    p.add_argument("-m", "--message", default=None, help="what changed (shown by `sluice plugin log`)")
    p.add_argument("--name", default=None, help="plugin name (default: from manifest.py)")
    p.add_argument("--version", default=None, help="version to register (default: manifest.py's)")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the outcome (default 300)")

    p = sub.add_parser("pull", parents=[common], help="download a version's source into a folder")
    p.add_argument("name")
    p.add_argument("dir", type=Path, nargs="?", default=None, help="empty or missing folder (default: ./NAME)")
    p.add_argument("--version", default=None, help="version (default: the active one)")

    p = sub.add_parser("log", parents=[common], help="versions, newest first")
    p.add_argument("name")

    p = sub.add_parser("status", parents=[common], help="active version, scan result, features, deployment")
    p.add_argument("name")
    p.add_argument("--version", default=None, help="version (default: the active one)")

    p = sub.add_parser("deploy", parents=[common], help="deploy a version's realtime endpoint (Ray Serve) and wait for it")
    p.add_argument("name")
    p.add_argument("--version", default=None, help="version (default: the active one)")
    p.add_argument("--wait", type=float, default=300.0, help="seconds to wait for DEPLOYED or FAILED (0: do not wait)")

    p = sub.add_parser("undeploy", parents=[common], help="remove a version's realtime endpoint (the version stays)")
    p.add_argument("name")
    p.add_argument("--version", default=None, help="version (default: the active one)")

    p = sub.add_parser("rollback", parents=[common], help="make an earlier version active")
    p.add_argument("name")
    p.add_argument("version")

    p = sub.add_parser("diff", parents=[common], help="what changed between two versions")
    p.add_argument("name")
    p.add_argument("v1")
    p.add_argument("v2")

    sub.add_parser("list", parents=[common], help="plugins in the namespace")

    p = sub.add_parser("delete", parents=[common], help="delete a version: PLUGIN_ID, or NAME --version V")
    p.add_argument("target", metavar="PLUGIN_ID|NAME")
    p.add_argument("--version", default=None, help="with NAME: the version to delete")


def run_plugin_command(args: argparse.Namespace) -> int:
    commands = {
        "init": _cmd_init, "test": _cmd_test, "push": _cmd_push, "pull": _cmd_pull, "log": _cmd_log,
        "status": _cmd_status, "deploy": _cmd_deploy, "undeploy": _cmd_undeploy, "rollback": _cmd_rollback, "diff": _cmd_diff, "list": _cmd_list, "delete": _cmd_delete,
    }
    try:
        if args.plugin_command not in ("init", "test"):
            _namespace(args)  # before any key lookup: the missing namespace is the first thing to say
        return commands[args.plugin_command](args)
    except _Exit as stop:
        return stop.code
    except KeyboardInterrupt:
        print("sluice: interrupted", file=sys.stderr)
        return 130


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# --- manifest identity without executing it -----------------------------------------------------

def manifest_identity(root: Path) -> tuple[str | None, str | None]:
    """(name, version) as manifest.py states them, read with `ast` (nothing is executed): the
    `metadata` dict literal (`feature_extractor_name` or `name`, `version`) or module-level
    `feature_extractor_name` / `version` string constants. None where it cannot tell."""
    try:
        tree = ast.parse((root / "manifest.py").read_bytes(), filename="manifest.py")
    except (OSError, SyntaxError, ValueError):
        return None, None
    meta: dict[str, str] = {}
    module: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if not isinstance(target, ast.Name):
                continue
            if target.id == "metadata" and isinstance(value, ast.Dict):
                for key, item in zip(value.keys, value.values):
                    if isinstance(key, ast.Constant) and isinstance(item, ast.Constant) and isinstance(item.value, str):
                        meta[str(key.value)] = item.value
            elif target.id in ("feature_extractor_name", "version") and isinstance(value, ast.Constant) and isinstance(value.value, str):
                module[target.id] = value.value
    name = meta.get("feature_extractor_name") or meta.get("name") or module.get("feature_extractor_name")
    version = meta.get("version") or module.get("version")
    return name, version


# --- deterministic zip ---------------------------------------------------------------------------

def _skipped(name: str) -> bool:
    return name in SKIPPED_NAMES or name.startswith(".") or name.endswith(SKIPPED_SUFFIXES)


def plugin_files(folder: Path) -> list[tuple[str, Path]]:
    """(posix path relative to `folder`, file) for each file a push uploads, sorted. Skips
    __pycache__, .pyc, .git, .DS_Store and every hidden file or folder. A symbolic link or special
    file is refused: following a link could upload a file from outside the plugin."""
    found: list[tuple[str, Path]] = []
    refused: list[str] = []

    def walk(current: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(current), key=lambda e: e.name):
            if _skipped(entry.name):
                continue
            rel = prefix + entry.name
            if entry.is_symlink():
                refused.append(f"{rel} is a symbolic link; replace it with the file itself")
            elif entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), rel + "/")
            elif entry.is_file(follow_symlinks=False):
                found.append((rel, Path(entry.path)))
            else:
                refused.append(f"{rel} is not a regular file")

    walk(folder, "")
    if refused:
        raise _fail("cannot zip " + str(folder) + ":\n  " + "\n  ".join(refused))
    return sorted(found)


def build_zip(folder: Path, top: str | None = None) -> bytes:
    """The plugin folder as a zip, byte-for-byte the same for the same files: sorted entries under
    one top folder (`zip -r top.zip top/`), fixed dates and permissions, deflate."""
    folder = Path(folder)
    top = top or folder.resolve().name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel, path in plugin_files(folder):
            info = zipfile.ZipInfo(f"{top}/{rel}", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.create_system = 3  # unix, so the mode above is read as one
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    return buffer.getvalue()


# --- findings -----------------------------------------------------------------------------------

def _field(item: Any, name: str, default: Any = None) -> Any:
    return item.get(name, default) if isinstance(item, dict) else getattr(item, name, default)


def format_finding(item: Any) -> str:
    """`file:line [RULE] message` and an indented `hint: ...` (a Finding or its dict)."""
    file, line = _field(item, "file") or "-", _field(item, "line") or 0
    severity = _field(item, "severity", "error")
    text = f"{file}:{line} [{_field(item, 'rule_id')}] {_field(item, 'message')}"
    if severity != "error":
        text += f" ({severity})"
    hint = _field(item, "hint")
    return text + (f"\n    hint: {hint}" if hint else "")


def _print_findings(findings: list[Any], stream: TextIO | None = None) -> None:
    for item in findings:
        print(format_finding(item), file=stream or sys.stdout)


# --- sluice plugin init -------------------------------------------------------------------------

def _cmd_init(args: argparse.Namespace) -> int:
    name = args.name
    if not NAME_RE.match(name):
        raise _fail(f"invalid plugin name {name!r}: 3-64 characters, letters, digits and _, starting with a letter", 2)
    dest = Path(args.dir) / name
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise _fail(f"{dest} already exists and is not empty; choose another name or --dir", 2)
    written = []
    for source in sorted(TEMPLATE_DIR.rglob("*")):
        rel = source.relative_to(TEMPLATE_DIR)
        if source.is_dir() or any(_skipped(part) for part in rel.parts):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text(encoding="utf-8").replace(PLACEHOLDER, name), encoding="utf-8")
        written.append(rel.as_posix())
    if args.json:
        _print_json({"plugin_name": name, "path": str(dest), "files": written})
        return 0
    print(f"created {dest}/")
    for rel in written:
        print(f"  {rel}")
    print(f"next: sluice plugin test {dest}  (then: sluice plugin push {dest} -m 'first version')")
    return 0


# --- sluice plugin test -------------------------------------------------------------------------

def _stage(path: Path, work: Path) -> tuple[Path, list[Any]]:
    """The plugin as the server sees it: a folder is zipped the way `push` zips it, and every zip is
    unpacked with the server's archive checks. Returns (root, findings); root is None when refused."""
    from engine.plugins.archive import ArchiveRejected, extract_plugin

    if path.is_dir():
        archive = work / "plugin.zip"
        archive.write_bytes(build_zip(path))
    elif path.is_file():
        archive = path
    else:
        raise _fail(f"{path}: no such plugin folder or .zip", 2)
    dest = work / "src"
    dest.mkdir()
    try:
        return extract_plugin(archive, dest).root, []
    except ArchiveRejected as rejected:
        return None, list(rejected.findings)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _files_scanned(scan: Any) -> int:
    value = getattr(scan, "files_scanned", 0)
    return len(value) if isinstance(value, (list, tuple, set)) else int(value or 0)


def _cmd_test(args: argparse.Namespace) -> int:
    from engine.plugins.scanner import scan_directory
    from engine.plugins.validate import validate_isolated

    path: Path = args.path
    result: dict[str, Any] = {"path": str(path), "passed": False, "archive_findings": [], "scan": None, "validation": None}
    with tempfile.TemporaryDirectory(prefix="sluice-plugin-test-") as tmp:
        root, archive_findings = _stage(path, Path(tmp))
        result["archive_findings"] = [f.model_dump(mode="json") for f in archive_findings]
        if root is None:
            return _test_done(args, result, archive_findings=archive_findings)
        found_name, found_version = manifest_identity(root)
        name = args.name or found_name or (path.stem if path.is_file() else path.resolve().name)
        version = args.version or found_version or "1.0.0"
        result.update(name=name, version=version)
        scan = scan_directory(root, strict=args.strict)
        result["scan"] = {
            "passed": bool(scan.passed), "files_scanned": _files_scanned(scan),
            "findings": [f.model_dump(mode="json") for f in scan.findings],
        }
        if not scan.passed:
            return _test_done(args, result, scan=scan)
        if not args.json:
            print(f"validating {name} {version} (manifest, build_steps, dry run)...", file=sys.stderr, flush=True)
        from functions.ingest import sandbox_options
        from functions.register import network_declaration
        from infra.settings import Settings

        network_allow, network_findings = network_declaration(root)
        report = asyncio.run(validate_isolated(
            root, name=name, version=version, namespace="local", plugin_id="dry-run",
            timeout_s=args.timeout, strict=args.strict, options=sandbox_options(Settings()), network_allow=network_allow,
        ))
        if network_findings:
            report.findings[:0] = network_findings
            report.passed = report.passed and not any(f.severity == "error" for f in network_findings)
        result["validation"] = report.model_dump(mode="json")
        result["passed"] = bool(report.passed)
        return _test_done(args, result, scan=scan, report=report)


def _test_done(args: argparse.Namespace, result: dict[str, Any], *, archive_findings: list | None = None,
               scan: Any = None, report: Any = None) -> int:
    code = 0 if result["passed"] else 1
    if args.json:
        _print_json(result)
        return code
    label = f"{result.get('name', args.path)} {result.get('version', '')}".strip()
    if archive_findings:
        print(f"archive: refused ({_count(len(archive_findings), 'finding')})")
        _print_findings(archive_findings)
        print(f"FAILED: {label}")
        return code
    print(f"scan: {'passed' if scan.passed else 'failed'} ({_count(_files_scanned(scan), 'file')}, {_count(len(scan.findings), 'finding')})")
    _print_findings(scan.findings)
    if report is None:
        print(f"FAILED: {label}")
        return code
    errors = sum(f.severity == "error" for f in report.findings)
    print(f"validation: {'passed' if report.passed else 'failed'} ({_count(errors, 'error')}, {_count(len(report.findings) - errors, 'warning')})")
    _print_findings(report.findings)
    dims = {f.feature_name: f for f in (report.manifest.features if report.manifest else [])}
    bad_vectors = {f.rule_id for f in report.findings if f.rule_id in ("SLU841", "SLU842", "SLU843", "SLU844")}
    for run in report.dry_runs:
        print(f"dry run: {run.input_type}: {run.rows_in} rows in, {run.rows_out} rows out, {run.seconds:.2f} s")
        print(f"  columns: {', '.join(run.columns)}")
        for feature, spec in dims.items():
            if feature in run.columns and not bad_vectors:
                print(f"  vectors: {feature}: {spec.embedding_dim}-d, finite (checked against the manifest)")
    if report.feature_uris:
        print("features:")
        for uri in report.feature_uris:
            spec = dims.get(uri.rsplit("/", 1)[-1])
            detail = f"  ({spec.feature_type}, {spec.embedding_dim}-d, {spec.distance_metric})" if spec else ""
            print(f"  {uri}{detail}")
    if report.has_realtime:
        print(f"realtime: realtime.py {'answered' if not any(f.file == 'realtime.py' for f in report.findings) else 'failed'}")
    print(f"{'PASSED' if report.passed else 'FAILED'}: {label}")
    return code


# --- REST plumbing ------------------------------------------------------------------------------

def _namespace(args: argparse.Namespace) -> str:
    namespace = args.namespace or os.environ.get("SLUICE_NAMESPACE")
    if not namespace:
        raise _fail("no namespace: pass --namespace/-n NAMESPACE or set SLUICE_NAMESPACE", 2)
    return namespace


def _base(args: argparse.Namespace) -> str:
    return f"/v1/namespaces/{quote(_namespace(args), safe='')}/plugins"


def _client(args: argparse.Namespace) -> httpx.Client:
    from functions.cli import _client as client

    return client(args)


def _body(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


def _error(response: httpx.Response) -> _Exit:
    body = _body(response)
    err = body.get("error", {}) if isinstance(body, dict) else {}
    message = err.get("message", body) if err else body
    return _fail(f"{response.status_code} {err.get('type', '')}: {message}")


def _request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach the server: {exc}") from exc


def _api(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = _request(client, method, path, **kwargs)
    if response.is_error:
        raise _error(response)
    return _body(response)


def _versions(client: httpx.Client, args: argparse.Namespace, name: str) -> dict[str, Any]:
    return _api(client, "GET", f"{_base(args)}/by-name/{quote(name, safe='')}/versions")


def _pick(history: dict[str, Any], name: str, version: str | None) -> dict[str, Any]:
    versions = history.get("versions", [])
    for entry in versions:
        if (entry["version"] == version) if version else entry.get("active"):
            return entry
    known = ", ".join(v["version"] for v in versions) or "none"
    if version:
        raise _fail(f"plugin {name!r} has no version {version} (versions: {known})")
    raise _fail(f"plugin {name!r} has no active version (versions: {known}); pass --version")


# --- upload with a progress bar -----------------------------------------------------------------

def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class Progress:
    """Bytes sent of total on one redrawn line when `stream` is a terminal; otherwise one line at
    the end (logs stay clean)."""

    def __init__(self, total: int, stream: TextIO, label: str = "uploading", width: int = 30) -> None:
        self.total, self.stream, self.label, self.width = total, stream, label, width
        self.sent = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())

    def advance(self, n: int) -> None:
        self.sent += n
        now = time.monotonic()
        if self.tty and (now - self._drawn >= 0.1 or self.sent >= self.total):
            self._drawn = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def line(self) -> str:
        fraction = self.sent / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        bar = "#" * filled + "." * (self.width - filled)
        return f"{self.label} [{bar}] {_size(self.sent)} / {_size(self.total)} {fraction * 100:3.0f}%"

    def finish(self, ok: bool = True) -> None:
        seconds = time.monotonic() - self.started
        if self.tty:
            self.stream.write("\r" + self.line() + ("" if ok else "  failed") + "\n")
        else:
            verb = "uploaded" if ok else "upload failed after"
            self.stream.write(f"{verb} {_size(self.sent)} of {_size(self.total)} in {seconds:.1f} s\n")
        self.stream.flush()


def _put_chunks(url: str, headers: dict[str, str], chunks: Iterable[bytes], *, total: int, content_type: str,
                stream: TextIO | None = None) -> httpx.Response:
    """PUT `total` bytes, sent as `chunks` yields them, to a presigned URL with a plain client (the
    API key never goes to the store), with a progress bar."""
    progress = Progress(total, stream or sys.stderr)

    def counted() -> Iterator[bytes]:
        for chunk in chunks:
            yield chunk
            progress.advance(len(chunk))

    safe = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "content-length", "host")}
    safe.setdefault("Content-Type", content_type)
    safe["Content-Length"] = str(total)  # S3 refuses chunked uploads to presigned URLs
    ok = False
    try:
        with httpx.Client(timeout=httpx.Timeout(60.0, write=600.0)) as plain:
            response = plain.put(url, content=counted(), headers=safe)
        ok = not response.is_error
        return response
    finally:
        progress.finish(ok)


def upload(url: str, headers: dict[str, str], data: bytes, *, stream: TextIO | None = None) -> httpx.Response:
    """PUT `data` to a presigned URL with a plain client: the API key never goes to the store."""
    chunks = (data[start:start + UPLOAD_CHUNK] for start in range(0, len(data), UPLOAD_CHUNK))
    return _put_chunks(url, headers, chunks, total=len(data), content_type="application/zip", stream=stream)


# --- presigned upload, confirm and wait (`sluice plugin push`, `sluice model upload`) ----------

def _put_presigned(client: httpx.Client, ticket: dict[str, Any],
                   send: Callable[[str, dict[str, str]], httpx.Response]) -> None:
    """PUT the upload to the ticket's presigned URL with `send(url, headers)`. A URL that starts
    with '/' (the local store behind the API) is made absolute; a failed PUT stops the command."""
    url = ticket["presigned_url"]
    if url.startswith("/"):
        url = str(client.base_url).rstrip("/") + url
    try:
        put = send(url, ticket.get("upload_headers") or {})
    except httpx.HTTPError as exc:
        raise _fail(f"upload to the object store failed: {exc}") from exc
    if put.is_error:
        raise _fail(f"upload to the object store failed: {put.status_code} {put.text[:500]}")


def _confirm_upload(client: httpx.Client, path: str, wait: float) -> httpx.Response:
    """POST the confirm route, asking the server to hold the answer up to `wait` s (600 at most)."""
    confirm_wait = max(0.0, min(wait, 600.0))
    return _request(client, "POST", path, params={"wait": f"{confirm_wait:g}"}, timeout=confirm_wait + 60)


def _wait_for_status(client: httpx.Client, path: str, current: dict[str, Any], terminal: tuple[str, ...],
                     deadline: float) -> dict[str, Any]:
    """GET `path` with backoff (0.5 s, then x1.5 up to 5 s) until its status is one of `terminal`
    or the `time.monotonic()` deadline passes; the last body read."""
    delay = 0.5
    while current["status"] not in terminal and time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 5.0)
        current = _api(client, "GET", path)
    return current


# --- sluice plugin push -------------------------------------------------------------------------

def _print_outcome(outcome: dict[str, Any]) -> None:
    label = f"{outcome.get('plugin_name')} {outcome.get('version')}"
    if outcome.get("status") == "REGISTERED":
        print(f"registered {label}")
        print(f"  plugin_id:  {outcome.get('plugin_id')}")
        print(f"  version:    {outcome.get('version')}")
        for uri in outcome.get("feature_uris") or []:
            print(f"  feature:    {uri}")
        print(f"  deployment: {outcome.get('deployment_status')}")
        warnings = outcome.get("warnings") or []
        if warnings:
            print(f"{_count(len(warnings), 'warning')}:")
            _print_findings(warnings)
    elif outcome.get("status") == "FAILED":
        errors = outcome.get("validation_errors") or []
        print(f"refused {label}: {_count(len(errors), 'error')}")
        _print_findings(errors)
        warnings = outcome.get("warnings") or []
        if warnings:
            print(f"{_count(len(warnings), 'warning')}:")
            _print_findings(warnings)
    else:
        print(f"{label}: {outcome.get('status')} (validation {outcome.get('validation_status')})")


def _cmd_push(args: argparse.Namespace) -> int:
    path: Path = args.path
    base = _base(args)
    if path.is_dir():
        found_name, found_version = manifest_identity(path)
        data = build_zip(path)
    elif path.is_file() and zipfile.is_zipfile(path):
        with tempfile.TemporaryDirectory(prefix="sluice-push-") as tmp:
            root, findings = _stage(path, Path(tmp))
            if root is None:
                print(f"sluice: {path} is refused by the archive checks:", file=sys.stderr)
                _print_findings(findings, sys.stderr)
                return 1
            found_name, found_version = manifest_identity(root)
        data = path.read_bytes()
    else:
        raise _fail(f"{path}: no such plugin folder or .zip", 2)
    name = args.name or found_name
    if not name:
        raise _fail(f"cannot read the plugin name from {path}/manifest.py; pass --name", 2)
    version = args.version or found_version
    request = {"name": name, "version": version, "description": args.message, "strict": bool(args.strict)}
    with _client(args) as client:
        response = _request(client, "POST", f"{base}/uploads", json=request)
        if response.status_code == 409 and not args.version:
            _error(response)
            raise _fail(f"bump metadata['version'] in manifest.py or pass --version (registered: {version})")
        if response.is_error:
            raise _error(response)
        ticket = response.json()
        if not args.json:
            print(f"pushing {name} {ticket['version']} ({_size(len(data))})", file=sys.stderr, flush=True)
        _put_presigned(client, ticket, lambda url, headers: upload(url, headers, data))
        deadline = time.monotonic() + args.wait
        upload_path = f"{base}/uploads/{quote(ticket['upload_id'], safe='')}"
        response = _confirm_upload(client, f"{upload_path}/confirm", args.wait)
        outcome = _body(response)
        if response.status_code not in (200, 202, 422) or not isinstance(outcome, dict) or "upload_id" not in outcome:
            raise _error(response)
        if outcome["status"] not in TERMINAL and not args.json:
            print(f"{name} {outcome['version']}: still validating; status: {outcome['status_url']}", file=sys.stderr, flush=True)
        outcome = _wait_for_status(client, upload_path, outcome, TERMINAL, deadline)
    if args.json:
        _print_json(outcome)
    else:
        _print_outcome(outcome)
        if outcome["status"] not in TERMINAL:
            print(f"still running after {args.wait:g} s; check: {outcome['status_url']}", file=sys.stderr)
    return {"REGISTERED": 0, "FAILED": 1}.get(outcome["status"], 3)


# --- sluice plugin pull -------------------------------------------------------------------------

def _cmd_pull(args: argparse.Namespace) -> int:
    from engine.plugins.archive import ArchiveRejected, extract_plugin

    dest: Path = args.dir if args.dir is not None else Path(args.name)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise _fail(f"{dest} exists and is not empty; pull into an empty or new folder", 2)
    base = _base(args)
    with _client(args) as client, tempfile.TemporaryDirectory(prefix="sluice-pull-") as tmp:
        entry = _pick(_versions(client, args, args.name), args.name, args.version)
        archive = Path(tmp) / "source.zip"
        try:
            with client.stream("GET", f"{base}/{quote(entry['plugin_id'], safe='')}/source") as response:
                if response.is_error:
                    response.read()
                    raise _error(response)
                with archive.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.HTTPError as exc:
            raise _fail(f"cannot reach the server: {exc}") from exc
        src = Path(tmp) / "src"
        src.mkdir()
        try:
            extracted = extract_plugin(archive, src)
        except ArchiveRejected as rejected:
            print("sluice: the downloaded archive is refused:", file=sys.stderr)
            _print_findings(rejected.findings, sys.stderr)
            return 1
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(extracted.root.iterdir()):
            shutil.move(str(child), str(dest / child.name))
    result = {"plugin_name": args.name, "version": entry["version"], "plugin_id": entry["plugin_id"],
              "dir": str(dest), "files": extracted.files}
    if args.json:
        _print_json(result)
    else:
        print(f"pulled {args.name} {entry['version']} ({entry['plugin_id']}) into {dest}/: {_count(len(extracted.files), 'file')}")
    return 0


# --- sluice plugin log / status / rollback / diff / list / delete -------------------------------

def _cmd_log(args: argparse.Namespace) -> int:
    with _client(args) as client:
        history = _versions(client, args, args.name)
    if args.json:
        _print_json(history)
        return 0
    rows = [(v["version"], v.get("registered_at") or "-", "*" if v.get("active") else " ", v.get("message") or "")
            for v in history.get("versions", [])]
    width = max([len(r[0]) for r in rows] + [7])
    for version, registered, active, message in rows:
        print(f"{version:<{width}}  {registered:<32}  {active}  {message}".rstrip())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entry = _pick(_versions(client, args, args.name), args.name, args.version)
        record = _api(client, "GET", f"{_base(args)}/{quote(entry['plugin_id'], safe='')}")
        deployment = _api(client, "GET", f"{_base(args)}/{quote(entry['plugin_id'], safe='')}/status")
    if args.json:
        _print_json({**record, "deployment": deployment})
        return 0
    scan = record.get("scan_report") or {}
    findings = scan.get("findings") or []
    warnings = sum(f.get("severity") == "warning" for f in findings)
    scan_text = ("passed" if scan.get("passed") else "failed") if scan else "unknown"
    print(f"{args.name}: {'active ' if record.get('active') else ''}version {record['version']}")
    print(f"  plugin_id:   {record['plugin_id']}")
    print(f"  scan:        {scan_text} ({_count(warnings, 'warning')})")
    for uri in record.get("feature_uris") or []:
        print(f"  feature:     {uri}")
    _print_deployment(deployment)
    print(f"  registered:  {record.get('registered_at')}")
    return 0


def _print_deployment(deployment: dict[str, Any]) -> None:
    mode = f" ({deployment['mode']})" if deployment.get("mode") and deployment["status"] != "NOT_DEPLOYED" else ""
    print(f"  deployment:  {deployment['status']}{mode}")
    if deployment.get("reason"):
        print(f"  reason:      {deployment['reason']}")
    if deployment.get("warning"):
        print(f"  warning:     {deployment['warning']}")
    plan = deployment.get("plan") or {}
    if plan and deployment["status"] == "DEPLOYED":
        replicas = f"{plan['min_replicas']}" if plan["min_replicas"] == plan["max_replicas"] else f"{plan['min_replicas']}-{plan['max_replicas']}"
        print(f"  replicas:    {replicas}, {plan['num_cpus']:g} CPU and {plan['num_gpus']:g} GPU each, batches up to {plan['max_batch_size']}")
    if deployment.get("error"):
        print("  error:       " + deployment["error"].replace("\n", "\n               "))


def _cmd_deploy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entry = _pick(_versions(client, args, args.name), args.name, args.version)
        path = f"{_base(args)}/{quote(entry['plugin_id'], safe='')}"
        deployment = _api(client, "POST", f"{path}/deploy")
        deadline = time.monotonic() + args.wait
        shown = None
        while deployment["status"] in ("QUEUED", "PENDING", "IN_PROGRESS") and time.monotonic() < deadline:
            if deployment["status"] != shown and not args.json:
                print(f"{args.name} {entry['version']}: {deployment['status']}", file=sys.stderr, flush=True)
                shown = deployment["status"]
            time.sleep(0.5)
            deployment = _api(client, "GET", f"{path}/status")
    if args.json:
        _print_json(deployment)
    else:
        print(f"{args.name} {entry['version']} ({entry['plugin_id']})")
        _print_deployment(deployment)
    if deployment["status"] == "FAILED":
        return 1
    if deployment["status"] in ("QUEUED", "PENDING", "IN_PROGRESS") and args.wait:
        print(f"sluice: still {deployment['status']} after {args.wait:g} s; check with `sluice plugin status {args.name}`", file=sys.stderr)
        return 1
    return 0


def _cmd_undeploy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entry = _pick(_versions(client, args, args.name), args.name, args.version)
        body = _api(client, "POST", f"{_base(args)}/{quote(entry['plugin_id'], safe='')}/undeploy")
    if args.json:
        _print_json(body)
    else:
        removed = "endpoint removed" if body.get("deployment_removed") else "no endpoint was running"
        print(f"{args.name} {entry['version']}: NOT_DEPLOYED ({removed}; the version stays registered)")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _api(client, "POST", f"{_base(args)}/by-name/{quote(args.name, safe='')}/rollback", json={"version": args.version})
    if args.json:
        _print_json(body)
    else:
        was = f" (was {body['previous_version']})" if body.get("previous_version") else ""
        print(f"{args.name}: active version {body['active_version']}{was}, plugin_id {body['plugin_id']}")
    return 0


def _colour_diff(text: str) -> str:
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith(("+++", "---")):
            out.append(f"\033[1m{line.rstrip(chr(10))}\033[0m\n")
        elif line.startswith("@@"):
            out.append(f"\033[36m{line.rstrip(chr(10))}\033[0m\n")
        elif line.startswith("+"):
            out.append(f"\033[32m{line.rstrip(chr(10))}\033[0m\n")
        elif line.startswith("-"):
            out.append(f"\033[31m{line.rstrip(chr(10))}\033[0m\n")
        else:
            out.append(line)
    return "".join(out)


def _cmd_diff(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _api(client, "GET", f"{_base(args)}/by-name/{quote(args.name, safe='')}/diff", params={"v1": args.v1, "v2": args.v2})
    if args.json:
        _print_json(body)
        return 0
    files = body.get("files") or []
    if not files:
        print(f"{args.name}: no differences between {args.v1} and {args.v2}")
        return 0
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for item in files:
        text = item.get("diff") or f"{item['status']}: {item['path']} (empty)\n"
        if not text.endswith("\n"):
            text += "\n"
        sys.stdout.write(_colour_diff(text) if colour else text)
    print(f"{_count(len(files), 'file')} changed between {args.v1} and {args.v2}", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _api(client, "GET", _base(args))
    if args.json:
        _print_json(body)
        return 0
    plugins = body.get("plugins") or []
    if not plugins:
        print(f"no plugins in namespace {_namespace(args)!r}")
        return 0
    name_w = max(len(p["plugin_name"]) for p in plugins)
    version_w = max(len(p["version"]) for p in plugins)
    for p in plugins:
        uris = " ".join(p.get("feature_uris") or []) or "-"
        active = "*" if p.get("active") else " "
        print(f"{p['plugin_name']:<{name_w}}  {p['version']:<{version_w}}  {active}  {p['plugin_id']}  {uris}")
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.version:
            plugin_id = _pick(_versions(client, args, args.target), args.target, args.version)["plugin_id"]
        else:
            plugin_id = args.target
        body = _api(client, "DELETE", f"{_base(args)}/{quote(plugin_id, safe='')}")
    if args.json:
        _print_json(body)
    else:
        active = body.get("active_version")
        now_active = f"; active version now {active}" if active else "; no version left"
        print(f"deleted {body['plugin_name']} {body['version']} ({body['plugin_id']}){now_active}")
    return 0


__all__ = ["add_plugin_commands", "build_zip", "format_finding", "manifest_identity", "plugin_files", "run_plugin_command", "upload"]
