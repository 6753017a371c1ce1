"""`sluice model ...`: upload, list, inspect, alias, delete and deploy models in the registry.

Every command calls the REST API of `functions/rest/models.py` with the key `sluice` uses
everywhere (SLUICE_API_KEY, or the admin key of a local `sluice up`), in the namespace given by
`-n` or SLUICE_NAMESPACE. `upload` requests a presigned URL, PUTs the archive there with a plain
client (the API key never goes to the object store), streaming it from disk with the progress bar
of `sluice plugin push` (an archive may be 10 GB: it is never read whole into memory), then
confirms and waits for validation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import httpx

from functions.plugin_cli import (
    UPLOAD_CHUNK,
    _api,
    _body,
    _client,
    _confirm_upload,
    _count,
    _error,
    _Exit,
    _fail,
    _namespace,
    _print_json,
    _put_chunks,
    _put_presigned,
    _size,
    _wait_for_status,
)

FORMATS = ("pytorch", "safetensors", "onnx", "huggingface")
TERMINAL = ("REGISTERED", "REJECTED")
ARCHIVE_CONTENT_TYPE = "application/gzip"


# --- parser -------------------------------------------------------------------------------------

def add_model_commands(subparsers: Any) -> None:
    """Register `sluice model ...` on the top-level subparsers of functions/cli.py."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", default=None, help="namespace (default $SLUICE_NAMESPACE)")
    common.add_argument("--json", action="store_true", help="print the raw response as JSON")

    model = subparsers.add_parser("model", help="upload and manage model weights (the model registry)")
    sub = model.add_subparsers(dest="model_command", required=True)

    p = sub.add_parser("upload", parents=[common], help="upload a .tar.gz of weights, validate it on the server, register it")
    p.add_argument("path", type=Path, help="the .tar.gz archive (tar -czf model.tar.gz -C DIR .)")
    p.add_argument("--name", required=True, help="model name: 3-64 letters, digits, _ and -, starting with a letter")
    p.add_argument("--version", required=True, help="version X.Y.Z")
    p.add_argument("--format", dest="model_format", required=True, choices=FORMATS, help="how the weights are stored")
    p.add_argument("--framework", default=None, help="e.g. pytorch, sentence-transformers")
    p.add_argument("--task-type", default=None, help="e.g. embedding, classification, reranking")
    p.add_argument("--num-cpus", type=float, default=None, help="CPU cores the model needs (default 1.0)")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs the model needs (default 0)")
    p.add_argument("--memory-gb", type=float, default=None, help="memory in GB (default 4.0)")
    p.add_argument("--wait", type=float, default=300.0, help="seconds to wait for validation (default 300)")

    sub.add_parser("list", parents=[common], help="models in the namespace")

    p = sub.add_parser("status", parents=[common], help="one model: status, findings, files, deployment")
    p.add_argument("model_id", metavar="MODEL_ID", help="model id, NAME@ALIAS or NAME@X.Y.Z")

    p = sub.add_parser("delete", parents=[common], help="delete a model version, its aliases and its archive")
    p.add_argument("model_id", metavar="MODEL_ID")

    p = sub.add_parser("alias", parents=[common], help="point NAME@ALIAS at a model version (or --remove it)")
    p.add_argument("model_id", metavar="MODEL_ID")
    p.add_argument("alias", metavar="ALIAS", help="1-32 lowercase letters, digits, _ and -, starting with a letter")
    p.add_argument("--remove", action="store_true", help="remove the alias from this model instead")

    p = sub.add_parser("deploy", parents=[common], help="load a model's weights into the Ray object store")
    p.add_argument("model_id", metavar="MODEL_ID")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server (default 600)")


def run_model_command(args: argparse.Namespace) -> int:
    commands = {"upload": _cmd_upload, "list": _cmd_list, "status": _cmd_status, "delete": _cmd_delete,
                "alias": _cmd_alias, "deploy": _cmd_deploy}
    try:
        _namespace(args)  # before any key lookup: the missing namespace is the first thing to say
        return commands[args.model_command](args)
    except _Exit as stop:
        return stop.code
    except KeyboardInterrupt:
        print("sluice: interrupted", file=sys.stderr)
        return 130


def _base(args: argparse.Namespace) -> str:
    return f"/v1/namespaces/{quote(_namespace(args), safe='')}/models"


def _path(args: argparse.Namespace, model_id: str, *rest: str) -> str:
    return "/".join([_base(args), quote(model_id, safe="@"), *(quote(r, safe="") for r in rest)])


# --- upload -------------------------------------------------------------------------------------

def upload_file(url: str, headers: dict[str, str], path: Path, *, stream: TextIO | None = None) -> httpx.Response:
    """PUT a file to a presigned URL, read in chunks as it is sent, with a progress bar."""
    total = path.stat().st_size

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as fh:
            while chunk := fh.read(UPLOAD_CHUNK):
                yield chunk

    return _put_chunks(url, headers, chunks(), total=total, content_type=ARCHIVE_CONTENT_TYPE, stream=stream)


def format_model_finding(finding: dict[str, Any]) -> str:
    return f"  {finding.get('file') or '(archive)'} [{finding.get('rule_id')}] {finding.get('message')}"


def _print_model(model: dict[str, Any]) -> None:
    label = f"{model['name']} {model['version']}"
    status = model["status"]
    if status == "REJECTED":
        errors = model.get("errors") or []
        print(f"rejected {label}: {_count(len(errors), 'finding')}")
        for finding in errors:
            print(format_model_finding(finding))
        return
    print(f"{'registered' if status == 'REGISTERED' else status.lower()} {label}")
    resources = model.get("resources") or {}
    rows = [
        ("model_id", model["model_id"]), ("format", model["model_format"]), ("framework", model.get("framework")),
        ("task_type", model.get("task_type")),
        ("resources", ", ".join(f"{k}={v:g}" for k, v in resources.items()) if resources else None),
        ("aliases", ", ".join(model.get("aliases") or []) or None), ("sha256", model.get("sha256")),
        ("size", _size(model["size_bytes"]) if model.get("size_bytes") else None),
        ("files", ", ".join(model.get("files") or []) or None),
        ("deployment", model.get("deployment_status")), ("error", model.get("deployment_error")),
        ("cached", str(bool(model.get("cached"))).lower()),
    ]
    for key, value in rows:
        if value is not None:
            print(f"  {key + ':':<11} {value}")


def _done(args: argparse.Namespace, model: dict[str, Any]) -> int:
    if args.json:
        _print_json(model)
    else:
        _print_model(model)
        if model["status"] not in TERMINAL:
            print(f"still validating after {args.wait:g} s; check: sluice model status {model['model_id']}", file=sys.stderr)
    return {"REGISTERED": 0, "REJECTED": 1}.get(model["status"], 3)


def _rejected(args: argparse.Namespace, response: httpx.Response) -> int:
    """422 model_rejected: the findings are in the error's details."""
    body = _body(response)
    if args.json:
        _print_json(body)
    else:
        details = body["error"]["details"]
        _print_model({**details["model"], "errors": details["errors"]})
    return 1


def _is_rejection(response: httpx.Response) -> bool:
    body = _body(response)
    return response.status_code == 422 and isinstance(body, dict) and body.get("error", {}).get("type") == "model_rejected"


def _cmd_upload(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.is_file():
        hint = f"; make one with: tar -czf {path.name or 'model'}.tar.gz -C {path} ." if path.is_dir() else ""
        raise _fail(f"{path}: not a .tar.gz file{hint}", 2)
    base = _base(args)
    request = {
        "name": args.name, "version": args.version, "model_format": args.model_format, "framework": args.framework,
        "task_type": args.task_type, "num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "memory_gb": args.memory_gb,
        "size_bytes": path.stat().st_size,
    }
    with _client(args) as client:
        ticket = _api(client, "POST", f"{base}/uploads", json={k: v for k, v in request.items() if v is not None})
        if not args.json:
            print(f"uploading {args.name} {args.version} ({_size(path.stat().st_size)})", file=sys.stderr, flush=True)
        _put_presigned(client, ticket, lambda url, headers: upload_file(url, headers, path))
        deadline = time.monotonic() + args.wait
        response = _confirm_upload(client, f"{base}/uploads/{quote(ticket['model_id'], safe='')}/confirm", args.wait)
        if _is_rejection(response):
            return _rejected(args, response)
        if response.status_code not in (200, 202):
            raise _error(response)
        model = _wait_for_status(client, _path(args, ticket["model_id"]), response.json(), TERMINAL, deadline)
    return _done(args, model)


# --- list / status / delete / alias / deploy ----------------------------------------------------

def _cmd_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _api(client, "GET", _base(args))
    if args.json:
        _print_json(body)
        return 0
    models = body.get("models", [])
    if not models:
        print(f"no models in namespace {_namespace(args)}")
        return 0
    rows = [(m["model_id"], m["version"], m["model_format"], m["status"], m.get("deployment_status") or "-",
             ",".join(m.get("aliases") or []) or "-") for m in models]
    header = ("MODEL_ID", "VERSION", "FORMAT", "STATUS", "DEPLOYMENT", "ALIASES")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        model = _api(client, "GET", _path(args, args.model_id))
    if args.json:
        _print_json(model)
    else:
        _print_model(model)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _api(client, "DELETE", _path(args, args.model_id))
    if args.json:
        _print_json(body)
    else:
        print(f"deleted {body['model_id']} ({body['name']} {body['version']})")
    return 0


def _cmd_alias(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _api(client, "DELETE" if args.remove else "PUT", _path(args, args.model_id, "aliases", args.alias))
    if args.json:
        _print_json(body)
    elif args.remove:
        print(f"removed alias {args.alias} from {body['model_id']}")
    else:
        moved = f" (moved from {body['moved_from']})" if body.get("moved_from") else ""
        print(f"{body['ref']} -> {body['model_id']}{moved}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = _api(client, "POST", _path(args, args.model_id, "deploy"), timeout=args.timeout)
    if args.json:
        _print_json(body)
        return 0
    print(f"{body.get('model_id', args.model_id)}: deployment_status {body.get('deployment_status')}, "
          f"cached {str(bool(body.get('cached'))).lower()}")
    if body.get("message"):
        print(f"  {body['message']}")
    return 0


__all__ = ["add_model_commands", "run_model_command", "upload_file"]
