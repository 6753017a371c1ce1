"""`sluice plugin ...`: write, check, push and manage plugins.

`init` and `test` work offline: `test` runs exactly the server's checks (archive checks, the
security scanner, then manifest check and dry run in a subprocess). The other commands call the
REST API of `functions/rest/plugins.py` with the key `sluice` uses everywhere (SLUICE_API_KEY, or
the admin key of a local `sluice up`), in the namespace given by `-n` or SLUICE_NAMESPACE.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer
from tenacity import wait_fixed

from functions.cli.client import Api, Namespace, body, call_and_show, error, poll, require_namespace, wait_option
from functions.cli.output import Json, count, fail, print_diff, print_findings, print_json, print_table, show, size
from functions.runtime.scratch import sha256_file

NAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{2,63}$")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "plugin"
PLACEHOLDER = "{{name}}"
SKIPPED_NAMES = frozenset({"__pycache__", ".git", ".DS_Store"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
DEFAULT_VALIDATION_TIMEOUT_S = 300.0
TERMINAL = ("REGISTERED", "FAILED")
DEPLOYING = ("QUEUED", "PENDING", "IN_PROGRESS")

app = typer.Typer(help="write, test, push and manage plugins", no_args_is_help=True)

Name = Annotated[str, typer.Argument(metavar="NAME")]
ActiveVersion = Annotated[str | None, typer.Option("--version", help="version (default: the active one)")]
ManifestName = Annotated[str | None, typer.Option("--name", help="plugin name (default: from manifest.py)")]
Strict = Annotated[bool, typer.Option("--strict", help="warnings fail too")]


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
                for key, item in zip(value.keys, value.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(item, ast.Constant) and isinstance(item.value, str):
                        meta[str(key.value)] = item.value
            elif (target.id in ("feature_extractor_name", "version") and isinstance(value, ast.Constant)
                  and isinstance(value.value, str)):
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
        raise fail("cannot zip " + str(folder) + ":\n  " + "\n  ".join(refused))
    return sorted(found)


def build_zip(folder: Path, top: str | None = None) -> bytes:
    """The plugin folder as a zip, byte-for-byte the same for the same files: sorted entries under
    one top folder (`zip -r top.zip top/`), written by the repo's one deterministic zip writer."""
    from engine.plugins.archive import write_zip

    folder = Path(folder)
    top = top or folder.resolve().name
    return write_zip((f"{top}/{rel}", path) for rel, path in plugin_files(folder))


# --- sluice plugin init -------------------------------------------------------------------------

@app.command("init", help="create a plugin folder from the template")
def init(
    name: Annotated[str, typer.Argument(help="plugin name: 3-64 letters, digits and _, starting with a letter")],
    parent: Annotated[Path, typer.Option(
        "--dir", help="parent folder (default: the current folder)", show_default=False)] = Path("."),
    namespace: Namespace = None,
    as_json: Json = False,
) -> None:
    if not NAME_RE.fullmatch(name):
        raise fail(f"invalid plugin name {name!r}: 3-64 characters, letters, digits and _, starting with a letter", 2)
    dest = parent / name
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise fail(f"{dest} already exists and is not empty; choose another name or --dir", 2)
    written = []
    for source in sorted(TEMPLATE_DIR.rglob("*")):
        rel = source.relative_to(TEMPLATE_DIR)
        if source.is_dir() or any(_skipped(part) for part in rel.parts):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text(encoding="utf-8").replace(PLACEHOLDER, name), encoding="utf-8")
        written.append(rel.as_posix())
    if as_json:
        print_json({"plugin_name": name, "path": str(dest), "files": written})
        return
    print(f"created {dest}/")
    for written_file in written:
        print(f"  {written_file}")
    print(f"next: sluice plugin test {dest}  (then: sluice plugin push {dest} -m 'first version')")


# --- sluice plugin test -------------------------------------------------------------------------

def _stage(path: Path, work: Path) -> tuple[Path | None, list[Any]]:
    """The plugin as the server sees it: a folder is zipped the way `push` zips it, and every zip is
    unpacked with the server's archive checks. Returns (root, findings); root is None when refused."""
    from engine.plugins.archive import ArchiveRejected, extract_plugin

    if path.is_dir():
        archive = work / "plugin.zip"
        archive.write_bytes(build_zip(path))
    elif path.is_file():
        archive = path
    else:
        raise fail(f"{path}: no such plugin folder or .zip", 2)
    dest = work / "src"
    dest.mkdir()
    try:
        return extract_plugin(archive, dest).root, []
    except ArchiveRejected as rejected:
        return None, list(rejected.findings)


def _files_scanned(scan: Any) -> int:
    value = getattr(scan, "files_scanned", 0)
    return len(value) if isinstance(value, (list, tuple, set)) else int(value or 0)


@app.command("test", help="run the server's checks locally (scan, manifest, dry run)")
def test(
    path: Annotated[Path, typer.Argument(help="plugin folder or .zip")],
    strict: Strict = False,
    name: ManifestName = None,
    version: Annotated[str | None, typer.Option("--version", help="version (default: from manifest.py)")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="limit on the dry run in seconds")]
    = DEFAULT_VALIDATION_TIMEOUT_S,
    namespace: Namespace = None,
    as_json: Json = False,
) -> None:
    from engine.plugins.scanner import scan_directory
    from engine.plugins.validate import validate_isolated

    result: dict[str, Any] = {"path": str(path), "passed": False, "archive_findings": [], "scan": None,
                              "validation": None}
    with tempfile.TemporaryDirectory(prefix="sluice-plugin-test-") as tmp:
        root, archive_findings = _stage(path, Path(tmp))
        result["archive_findings"] = [f.model_dump(mode="json") for f in archive_findings]
        if root is None:
            _test_done(path, as_json, result, archive_findings=archive_findings)
        found_name, found_version = manifest_identity(root)
        name = name or found_name or (path.stem if path.is_file() else path.resolve().name)
        version = version or found_version or "1.0.0"
        result.update(name=name, version=version)
        scan = scan_directory(root, strict=strict)
        result["scan"] = {
            "passed": bool(scan.passed), "files_scanned": _files_scanned(scan),
            "findings": [f.model_dump(mode="json") for f in scan.findings],
        }
        if not scan.passed:
            _test_done(path, as_json, result, scan=scan)
        if not as_json:
            print(f"validating {name} {version} (manifest, build_steps, dry run)...", file=sys.stderr, flush=True)
        from functions.handlers.register import network_declaration
        from functions.services.ingest import sandbox_options
        from infra.settings import Settings

        network_allow, network_findings = network_declaration(root)
        report = asyncio.run(validate_isolated(
            root, name=name, version=version, namespace="local", plugin_id="dry-run", timeout_s=timeout,
            strict=strict, options=sandbox_options(Settings()), network_allow=network_allow,
        ))
        if network_findings:
            report.findings[:0] = network_findings
            report.passed = report.passed and not any(f.severity == "error" for f in network_findings)
        result["validation"] = report.model_dump(mode="json")
        result["passed"] = bool(report.passed)
        _test_done(path, as_json, result, scan=scan, report=report)


def _test_done(path: Path, as_json: bool, result: dict[str, Any], *, archive_findings: list | None = None,
               scan: Any = None, report: Any = None) -> NoReturn:
    """Print the outcome and end the command: 0 when it passed, else 1."""
    code = 0 if result["passed"] else 1
    if as_json:
        print_json(result)
        raise typer.Exit(code)
    label = f"{result.get('name', path)} {result.get('version', '')}".strip()
    if scan is None:
        archive_findings = archive_findings or []
        print(f"archive: refused ({count(len(archive_findings), 'finding')})")
        print_findings(archive_findings)
    else:
        print(f"scan: {'passed' if scan.passed else 'failed'} "
              f"({count(_files_scanned(scan), 'file')}, {count(len(scan.findings), 'finding')})")
        print_findings(scan.findings)
    if report is not None:
        _print_report(report)
    print(f"{'PASSED' if report is not None and report.passed else 'FAILED'}: {label}")
    raise typer.Exit(code)


def _print_report(report: Any) -> None:
    errors = sum(f.severity == "error" for f in report.findings)
    print(f"validation: {'passed' if report.passed else 'failed'} "
          f"({count(errors, 'error')}, {count(len(report.findings) - errors, 'warning')})")
    print_findings(report.findings)
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
        answered = not any(f.file == "realtime.py" for f in report.findings)
        print(f"realtime: realtime.py {'answered' if answered else 'failed'}")


# --- REST plumbing ------------------------------------------------------------------------------

def _base(namespace: str | None) -> str:
    """The plugins of the namespace (stops the command when there is none)."""
    return f"/v1/namespaces/{quote(require_namespace(namespace), safe='')}/plugins"


def _entry(api: Api, base: str, name: str, version: str | None) -> dict[str, Any]:
    """The version `version` of plugin `name` (the active one when None) in its version history."""
    versions = api.call("GET", f"{base}/by-name/{quote(name, safe='')}/versions").get("versions", [])
    for entry in versions:
        if (entry["version"] == version) if version else entry.get("active"):
            return entry
    known = ", ".join(v["version"] for v in versions) or "none"
    if version:
        raise fail(f"plugin {name!r} has no version {version} (versions: {known})")
    raise fail(f"plugin {name!r} has no active version (versions: {known}); pass --version")


def _plugin_path(base: str, entry: dict[str, Any]) -> str:
    return f"{base}/{quote(entry['plugin_id'], safe='')}"


# --- sluice plugin push -------------------------------------------------------------------------

def _print_outcome(outcome: dict[str, Any]) -> None:
    label = f"{outcome.get('plugin_name')} {outcome.get('version')}"
    warnings = outcome.get("warnings") or []
    if outcome.get("status") == "REGISTERED":
        print(f"registered {label}")
        print(f"  plugin_id:  {outcome.get('plugin_id')}")
        print(f"  version:    {outcome.get('version')}")
        for uri in outcome.get("feature_uris") or []:
            print(f"  feature:    {uri}")
        print(f"  deployment: {outcome.get('deployment_status')}")
    elif outcome.get("status") == "FAILED":
        errors = outcome.get("validation_errors") or []
        print(f"refused {label}: {count(len(errors), 'error')}")
        print_findings(errors)
    else:
        print(f"{label}: {outcome.get('status')} (validation {outcome.get('validation_status')})")
        return
    if warnings:
        print(f"{count(len(warnings), 'warning')}:")
        print_findings(warnings)


def _archive(path: Path) -> tuple[bytes, str | None, str | None]:
    """(zip, name, version): a folder zipped as `build_zip` does, or a .zip that passes the archive
    checks; the name and version its manifest.py states."""
    if path.is_dir():
        return build_zip(path), *manifest_identity(path)
    if not (path.is_file() and zipfile.is_zipfile(path)):
        raise fail(f"{path}: no such plugin folder or .zip", 2)
    with tempfile.TemporaryDirectory(prefix="sluice-push-") as tmp:
        root, findings = _stage(path, Path(tmp))
        if root is None:
            print(f"sluice: {path} is refused by the archive checks:", file=sys.stderr)
            print_findings(findings, sys.stderr)
            raise typer.Exit(1)
        return path.read_bytes(), *manifest_identity(root)


@app.command("push", help="zip, upload, validate on the server and register")
def push(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="plugin folder (or a .zip made from one)")],
    message: Annotated[str | None, typer.Option("-m", "--message", help="what changed (shown by `sluice plugin log`)")]
    = None,
    name: ManifestName = None,
    version: Annotated[str | None, typer.Option("--version", help="version to register (default: manifest.py's)")]
    = None,
    strict: Strict = False,
    wait: Annotated[float, wait_option("seconds to wait for the outcome (default 300)")] = 300.0,
    namespace: Namespace = None, as_json: Json = False,
) -> None:
    base = _base(namespace)
    data, found_name, found_version = _archive(path)
    name = name or found_name
    if not name:
        raise fail(f"cannot read the plugin name from {path}/manifest.py; pass --name", 2)
    request = {"name": name, "version": version or found_version, "description": message, "strict": strict}
    with Api.open(ctx) as api:
        response = api.request("POST", f"{base}/uploads", json=request)
        if response.status_code == 409 and not version:
            error(response)  # said; the exit follows with the way out
            raise fail(f"bump metadata['version'] in manifest.py or pass --version (registered: {found_version})")
        if response.is_error:
            raise error(response)
        ticket = response.json()
        if not as_json:
            print(f"pushing {name} {ticket['version']} ({size(len(data))})", file=sys.stderr, flush=True)
        upload_path = f"{base}/uploads/{quote(ticket['upload_id'], safe='')}"
        response, deadline = api.deliver(ticket, data, size=len(data), content_type="application/zip",
                                         confirm=f"{upload_path}/confirm", wait=wait)
        outcome = body(response)
        if response.status_code not in (200, 202, 422) or not isinstance(outcome, dict) or "upload_id" not in outcome:
            raise error(response)
        if outcome["status"] not in TERMINAL and not as_json:
            print(f"{name} {outcome['version']}: still validating; status: {outcome['status_url']}",
                  file=sys.stderr, flush=True)
        outcome = poll(lambda: api.call("GET", upload_path), outcome, done=lambda o: o["status"] in TERMINAL,
                       deadline=deadline)
    show(outcome, as_json, _print_outcome)
    if not as_json and outcome["status"] not in TERMINAL:
        print(f"still running after {wait:g} s; check: {outcome['status_url']}", file=sys.stderr)
    raise typer.Exit({"REGISTERED": 0, "FAILED": 1}.get(outcome["status"], 3))


# --- sluice plugin pull -------------------------------------------------------------------------

@app.command("pull", help="download a version's source into a folder")
def pull(
    ctx: typer.Context,
    name: Name,
    dest: Annotated[Path | None, typer.Argument(metavar="[DIR]", help="empty or missing folder (default: ./NAME)")]
    = None,
    version: ActiveVersion = None,
    namespace: Namespace = None,
    as_json: Json = False,
) -> None:
    from engine.plugins.archive import ArchiveRejected, extract_plugin

    base = _base(namespace)
    dest = dest if dest is not None else Path(name)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise fail(f"{dest} exists and is not empty; pull into an empty or new folder", 2)
    with Api.open(ctx) as api, tempfile.TemporaryDirectory(prefix="sluice-pull-") as tmp:
        entry = _entry(api, base, name, version)
        archive = Path(tmp) / "source.zip"
        api.download(f"{_plugin_path(base, entry)}/source", archive)
        expected = entry.get("sha256")
        if expected and sha256_file(archive) != expected:
            raise fail(f"the downloaded archive of {name} {entry['version']} does not have the digest recorded at "
                       f"registration ({expected[:12]}...); nothing was written")
        src = Path(tmp) / "src"
        src.mkdir()
        try:
            extracted = extract_plugin(archive, src)
        except ArchiveRejected as rejected:
            print("sluice: the downloaded archive is refused:", file=sys.stderr)
            print_findings(rejected.findings, sys.stderr)
            raise typer.Exit(1) from None
        dest.mkdir(parents=True, exist_ok=True)
        for child in sorted(extracted.root.iterdir()):
            shutil.move(str(child), str(dest / child.name))
    result = {"plugin_name": name, "version": entry["version"], "plugin_id": entry["plugin_id"], "dir": str(dest),
              "files": extracted.files}
    show(result, as_json, lambda r: print(
        f"pulled {name} {r['version']} ({r['plugin_id']}) into {dest}/: {count(len(r['files']), 'file')}"))


# --- sluice plugin log / status / deploy / undeploy / rollback / diff / list / delete ------------

def _print_log(history: dict[str, Any]) -> None:
    print_table([(v["version"], v.get("registered_at") or "-", "*" if v.get("active") else " ", v.get("message") or "")
                 for v in history.get("versions", [])], min_widths=(7, 32))


@app.command("log", help="versions, newest first")
def log(ctx: typer.Context, name: Name, namespace: Namespace = None, as_json: Json = False) -> None:
    call_and_show(ctx, "GET", f"{_base(namespace)}/by-name/{quote(name, safe='')}/versions", as_json, _print_log)


def _print_deployment(deployment: dict[str, Any]) -> None:
    status = deployment["status"]
    mode = f" ({deployment['mode']})" if deployment.get("mode") and status != "NOT_DEPLOYED" else ""
    print(f"  deployment:  {status}{mode}")
    for key in ("reason", "warning"):
        if deployment.get(key):
            print(f"  {key + ':':<12} {deployment[key]}")
    plan = deployment.get("plan") or {}
    if plan and status == "DEPLOYED":
        low, high = plan["min_replicas"], plan["max_replicas"]
        replicas = f"{low}" if low == high else f"{low}-{high}"
        print(f"  replicas:    {replicas}, {plan['num_cpus']:g} CPU and {plan['num_gpus']:g} GPU each, "
              f"batches up to {plan['max_batch_size']}")
    if deployment.get("error"):
        print("  error:       " + deployment["error"].replace("\n", "\n               "))


@app.command("status", help="active version, scan result, features, deployment")
def status(ctx: typer.Context, name: Name, version: ActiveVersion = None, namespace: Namespace = None,
           as_json: Json = False) -> None:
    base = _base(namespace)
    with Api.open(ctx) as api:
        path = _plugin_path(base, _entry(api, base, name, version))
        record = {**api.call("GET", path), "deployment": api.call("GET", f"{path}/status")}
    show(record, as_json, lambda r: _print_status(name, r))


def _print_status(name: str, record: dict[str, Any]) -> None:
    scan = record.get("scan_report") or {}
    warnings = sum(f.get("severity") == "warning" for f in scan.get("findings") or [])
    scan_text = ("passed" if scan.get("passed") else "failed") if scan else "unknown"
    print(f"{name}: {'active ' if record.get('active') else ''}version {record['version']}")
    print(f"  plugin_id:   {record['plugin_id']}")
    print(f"  scan:        {scan_text} ({count(warnings, 'warning')})")
    for uri in record.get("feature_uris") or []:
        print(f"  feature:     {uri}")
    _print_deployment(record["deployment"])
    print(f"  registered:  {record.get('registered_at')}")


@app.command("deploy", help="deploy a version's realtime endpoint (Ray Serve) and wait for it")
def deploy(ctx: typer.Context, name: Name, version: ActiveVersion = None,
           wait: Annotated[float, wait_option("seconds to wait for DEPLOYED or FAILED (0: do not wait)")] = 300.0,
           namespace: Namespace = None, as_json: Json = False) -> None:
    base = _base(namespace)
    shown: list[str] = []

    def report(deployment: dict[str, Any]) -> None:
        if deployment["status"] not in shown[-1:] and not as_json:
            print(f"{name} {entry['version']}: {deployment['status']}", file=sys.stderr, flush=True)
            shown.append(deployment["status"])

    with Api.open(ctx) as api:
        entry = _entry(api, base, name, version)
        path = _plugin_path(base, entry)
        deployment = poll(lambda: api.call("GET", f"{path}/status"), api.call("POST", f"{path}/deploy"),
                          done=lambda d: d["status"] not in DEPLOYING, deadline=time.monotonic() + wait,
                          wait=wait_fixed(0.5), report=report)
    if as_json:
        print_json(deployment)
    else:
        print(f"{name} {entry['version']} ({entry['plugin_id']})")
        _print_deployment(deployment)
    if deployment["status"] == "FAILED":
        raise typer.Exit(1)
    if deployment["status"] in DEPLOYING and wait:
        raise fail(f"still {deployment['status']} after {wait:g} s; check with `sluice plugin status {name}`")


@app.command("undeploy", help="remove a version's realtime endpoint (the version stays)")
def undeploy(ctx: typer.Context, name: Name, version: ActiveVersion = None, namespace: Namespace = None,
             as_json: Json = False) -> None:
    base = _base(namespace)
    with Api.open(ctx) as api:
        entry = _entry(api, base, name, version)
        result = api.call("POST", f"{_plugin_path(base, entry)}/undeploy")
    removed = "endpoint removed" if result.get("deployment_removed") else "no endpoint was running"
    show(result, as_json, lambda _: print(
        f"{name} {entry['version']}: NOT_DEPLOYED ({removed}; the version stays registered)"))


def _print_rollback(name: str, result: dict[str, Any]) -> None:
    was = f" (was {result['previous_version']})" if result.get("previous_version") else ""
    print(f"{name}: active version {result['active_version']}{was}, plugin_id {result['plugin_id']}")


@app.command("rollback", help="make an earlier version active")
def rollback(ctx: typer.Context, name: Name, version: Annotated[str, typer.Argument(metavar="VERSION")],
             namespace: Namespace = None, as_json: Json = False) -> None:
    call_and_show(ctx, "POST", f"{_base(namespace)}/by-name/{quote(name, safe='')}/rollback", as_json,
                  lambda r: _print_rollback(name, r), json={"version": version})


@app.command("diff", help="what changed between two versions")
def diff(ctx: typer.Context, name: Name, v1: Annotated[str, typer.Argument(metavar="V1")],
         v2: Annotated[str, typer.Argument(metavar="V2")], namespace: Namespace = None, as_json: Json = False) -> None:
    path = f"{_base(namespace)}/by-name/{quote(name, safe='')}/diff"
    with Api.open(ctx) as api:
        result = api.call("GET", path, params={"v1": v1, "v2": v2})
    files = result.get("files") or []
    if as_json or not files:
        show(result, as_json, lambda _: print(f"{name}: no differences between {v1} and {v2}"))
        return
    for item in files:
        text = item.get("diff") or f"{item['status']}: {item['path']} (empty)\n"
        print_diff(text if text.endswith("\n") else text + "\n")
    print(f"{count(len(files), 'file')} changed between {v1} and {v2}", file=sys.stderr)


def _print_plugins(namespace: str, plugins: list[dict[str, Any]]) -> None:
    if not plugins:
        print(f"no plugins in namespace {namespace!r}")
        return
    print_table([(p["plugin_name"], p["version"], "*" if p.get("active") else " ", p["plugin_id"],
                  " ".join(p.get("feature_uris") or []) or "-") for p in plugins])


@app.command("list", help="plugins in the namespace")
def list_plugins(ctx: typer.Context, namespace: Namespace = None, as_json: Json = False) -> None:
    call_and_show(ctx, "GET", _base(namespace), as_json,
                  lambda r: _print_plugins(namespace or "", r.get("plugins") or []))


def _print_deleted(result: dict[str, Any]) -> None:
    active = result.get("active_version")
    now_active = f"; active version now {active}" if active else "; no version left"
    print(f"deleted {result['plugin_name']} {result['version']} ({result['plugin_id']}){now_active}")


@app.command("delete", help="delete a version: PLUGIN_ID, or NAME --version V")
def delete(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(metavar="PLUGIN_ID|NAME")],
    version: Annotated[str | None, typer.Option("--version", help="with NAME: the version to delete")] = None,
    namespace: Namespace = None,
    as_json: Json = False,
) -> None:
    base = _base(namespace)
    with Api.open(ctx) as api:
        entry = _entry(api, base, target, version) if version else {"plugin_id": target}
        result = api.call("DELETE", _plugin_path(base, entry))
    show(result, as_json, _print_deleted)


__all__ = ["app", "build_zip", "manifest_identity", "plugin_files"]
