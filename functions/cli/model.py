"""`sluice model ...`: upload, list, inspect, alias, delete and deploy models in the registry.

Every command calls the REST API of `functions/rest/models.py` with the key `sluice` uses
everywhere (SLUICE_API_KEY, or the admin key of a local `sluice up`), in the namespace given by
`-n` or SLUICE_NAMESPACE. `upload` requests a presigned URL, PUTs the archive there with a plain
client (the API key never goes to the object store), streaming it from disk with the progress bar
of `sluice plugin push` (an archive may be 10 GB: it is never read whole into memory), then
confirms and waits for validation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import quote

import typer

from functions.cli.client import Api, Namespace, body, call_and_show, error, poll, require_namespace, wait_option
from functions.cli.output import Json, count, fail, print_table, show, size

Format = Literal["pytorch", "safetensors", "onnx", "huggingface"]
FORMATS = get_args(Format)
TERMINAL = ("REGISTERED", "REJECTED")
ARCHIVE_CONTENT_TYPE = "application/gzip"

app = typer.Typer(help="upload and manage model weights (the model registry)", no_args_is_help=True)

ModelId = Annotated[str, typer.Argument(metavar="MODEL_ID")]
AliasName = Annotated[str, typer.Argument(
    metavar="ALIAS", help="1-32 lowercase letters, digits, _ and -, starting with a letter")]


def _base(namespace: str | None) -> str:
    """The models of the namespace (stops the command when there is none)."""
    return f"/v1/namespaces/{quote(require_namespace(namespace), safe='')}/models"


def _path(base: str, model_id: str, *rest: str) -> str:
    return "/".join([base, quote(model_id, safe="@"), *(quote(r, safe="") for r in rest)])


# --- upload -------------------------------------------------------------------------------------

def format_model_finding(finding: dict[str, Any]) -> str:
    return f"  {finding.get('file') or '(archive)'} [{finding.get('rule_id')}] {finding.get('message')}"


def _print_model(model: dict[str, Any]) -> None:
    label = f"{model['name']} {model['version']}"
    status = model["status"]
    if status == "REJECTED":
        errors = model.get("errors") or []
        print(f"rejected {label}: {count(len(errors), 'finding')}")
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
        ("size", size(model["size_bytes"]) if model.get("size_bytes") else None),
        ("files", ", ".join(model.get("files") or []) or None),
        ("deployment", model.get("deployment_status")), ("error", model.get("deployment_error")),
        ("cached", str(bool(model.get("cached"))).lower()),
    ]
    for key, value in rows:
        if value is not None:
            print(f"  {key + ':':<11} {value}")


def _rejection(response: Any) -> dict[str, Any] | None:
    """A 422 model_rejected's model with its findings (they are in the error's details)."""
    found = body(response)
    err = found.get("error", {}) if isinstance(found, dict) else {}
    if response.status_code != 422 or err.get("type") != "model_rejected":
        return None
    return {**err["details"]["model"], "errors": err["details"]["errors"]}


@app.command("upload", help="upload a .tar.gz of weights, validate it on the server, register it")
def upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="the .tar.gz archive (tar -czf model.tar.gz -C DIR .)")],
    name: Annotated[str, typer.Option(
        "--name", help="model name: 3-64 letters, digits, _ and -, starting with a letter")],
    version: Annotated[str, typer.Option("--version", help="version X.Y.Z")],
    model_format: Annotated[Format, typer.Option("--format", help="how the weights are stored")],
    framework: Annotated[str | None, typer.Option("--framework", help="e.g. pytorch, sentence-transformers")] = None,
    task_type: Annotated[str | None, typer.Option("--task-type", help="e.g. embedding, classification, reranking")]
    = None,
    num_cpus: Annotated[float | None, typer.Option("--num-cpus", help="CPU cores the model needs (default 1.0)")]
    = None,
    num_gpus: Annotated[float | None, typer.Option("--num-gpus", help="GPUs the model needs (default 0)")] = None,
    memory_gb: Annotated[float | None, typer.Option("--memory-gb", help="memory in GB (default 4.0)")] = None,
    wait: Annotated[float, wait_option("seconds to wait for validation (default 300)")] = 300.0,
    namespace: Namespace = None, as_json: Json = False,
) -> None:
    base = _base(namespace)
    if not path.is_file():
        hint = f"; make one with: tar -czf {path.name or 'model'}.tar.gz -C {path} ." if path.is_dir() else ""
        raise fail(f"{path}: not a .tar.gz file{hint}", 2)
    total = path.stat().st_size
    request = {
        "name": name, "version": version, "model_format": model_format, "framework": framework,
        "task_type": task_type, "num_cpus": num_cpus, "num_gpus": num_gpus, "memory_gb": memory_gb, "size_bytes": total,
    }
    with Api.open(ctx) as api:
        ticket = api.call("POST", f"{base}/uploads", json={k: v for k, v in request.items() if v is not None})
        if not as_json:
            print(f"uploading {name} {version} ({size(total)})", file=sys.stderr, flush=True)
        response, deadline = api.deliver(ticket, path, size=total, content_type=ARCHIVE_CONTENT_TYPE, wait=wait,
                                         confirm=f"{base}/uploads/{quote(ticket['model_id'], safe='')}/confirm")
        rejected = _rejection(response)
        if rejected is not None:
            show(body(response), as_json, lambda _: _print_model(rejected))
            raise typer.Exit(1)
        if response.status_code not in (200, 202):
            raise error(response)
        model = poll(lambda: api.call("GET", _path(base, ticket["model_id"])), response.json(),
                     done=lambda m: m["status"] in TERMINAL, deadline=deadline)
    show(model, as_json, _print_model)
    if not as_json and model["status"] not in TERMINAL:
        print(f"still validating after {wait:g} s; check: sluice model status {model['model_id']}", file=sys.stderr)
    raise typer.Exit({"REGISTERED": 0, "REJECTED": 1}.get(model["status"], 3))


# --- list / status / delete / alias / deploy ----------------------------------------------------

def _print_models(namespace: str, models: list[dict[str, Any]]) -> None:
    if not models:
        print(f"no models in namespace {namespace}")
        return
    print_table([(m["model_id"], m["version"], m["model_format"], m["status"], m.get("deployment_status") or "-",
                  ",".join(m.get("aliases") or []) or "-") for m in models],
                header=("MODEL_ID", "VERSION", "FORMAT", "STATUS", "DEPLOYMENT", "ALIASES"))


@app.command("list", help="models in the namespace")
def list_models(ctx: typer.Context, namespace: Namespace = None, as_json: Json = False) -> None:
    call_and_show(ctx, "GET", _base(namespace), as_json, lambda r: _print_models(namespace or "", r.get("models", [])))


@app.command("status", help="one model: status, findings, files, deployment")
def status(ctx: typer.Context, model_id: Annotated[str, typer.Argument(metavar="MODEL_ID",
           help="model id, NAME@ALIAS or NAME@X.Y.Z")], namespace: Namespace = None, as_json: Json = False) -> None:
    call_and_show(ctx, "GET", _path(_base(namespace), model_id), as_json, _print_model)


@app.command("delete", help="delete a model version, its aliases and its archive")
def delete(ctx: typer.Context, model_id: ModelId, namespace: Namespace = None, as_json: Json = False) -> None:
    call_and_show(ctx, "DELETE", _path(_base(namespace), model_id), as_json,
                  lambda r: print(f"deleted {r['model_id']} ({r['name']} {r['version']})"))


def _print_alias(alias: str, removed: bool, result: dict[str, Any]) -> None:
    if removed:
        print(f"removed alias {alias} from {result['model_id']}")
        return
    moved = f" (moved from {result['moved_from']})" if result.get("moved_from") else ""
    print(f"{result['ref']} -> {result['model_id']}{moved}")


@app.command("alias", help="point NAME@ALIAS at a model version (or --remove it)")
def alias(ctx: typer.Context, model_id: ModelId, name: AliasName,
          remove: Annotated[bool, typer.Option("--remove", help="remove the alias from this model instead")] = False,
          namespace: Namespace = None, as_json: Json = False) -> None:
    call_and_show(ctx, "DELETE" if remove else "PUT", _path(_base(namespace), model_id, "aliases", name), as_json,
                  lambda r: _print_alias(name, remove, r))


def _print_deploy(model_id: str, result: dict[str, Any]) -> None:
    print(f"{result.get('model_id', model_id)}: deployment_status {result.get('deployment_status')}, "
          f"cached {str(bool(result.get('cached'))).lower()}")
    if result.get("message"):
        print(f"  {result['message']}")


Timeout = Annotated[float, typer.Option("--timeout", help="seconds to wait for the server (default 600)",
                                        show_default=False)]


@app.command("deploy", help="load a model's weights into the Ray object store")
def deploy(ctx: typer.Context, model_id: ModelId, timeout: Timeout = 600.0, namespace: Namespace = None,
           as_json: Json = False) -> None:
    call_and_show(ctx, "POST", _path(_base(namespace), model_id, "deploy"), as_json,
                  lambda r: _print_deploy(model_id, r), timeout=timeout)


__all__ = ["FORMATS", "app", "format_model_finding"]
