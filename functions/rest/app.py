"""The REST adapter: a FastAPI app under /v1 over the same platform the functions use.

Routes map a request onto a handler or a repository call and its result onto a response; every
request under /v1 but health, presigned objects and docs needs a valid key before its body is read
(functions/rest/auth.py), and every route that names a namespace first checks the caller's key is
scoped to it with the role the route needs (functions/rest/deps.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from events.lifecycle import Health
from functions.records.function_states import FunctionStates
from functions.records.secret_store import SecretsStore
from functions.records.tenancy import Tenancy
from functions.rest import buckets, collections, dead_letters, keys, models, plugins, retrievers, tasks
from functions.rest.auth import AuthenticateFirst
from functions.rest.deps import Auth, ScopedNamespace
from functions.rest.errors import install_error_handlers
from functions.rest.limits import LimitRequestBody
from infra.bootstrap import Platform


class CreateNamespace(BaseModel):
    namespace_name: str = Field(description="Lowercase name, 3-63 characters.", examples=["acme"])
    description: str | None = Field(default=None, description="Free text.")


class Namespace(BaseModel):
    namespace_name: str = Field(description="Namespace name.", examples=["acme"])
    description: str | None = Field(default=None)
    created_at: str = Field(description="ISO 8601 creation time.")


class NamespaceList(BaseModel):
    namespaces: list[Namespace]


class SecretValue(BaseModel):
    value: str = Field(description="The secret; stored encrypted and never returned.", max_length=65536)


class HealthReport(BaseModel):
    status: str = Field(description="`ok`, `degraded` (some port degraded) or `down` (some port down).")
    ports: dict[str, Health] | None = Field(
        default=None, description="With the admin key only: each port's adapter, status and detail (which names "
        "the platform's stores and addresses, so anonymous callers get the status alone).")
    sandbox: dict[str, dict[str, Any]] | None = Field(
        default=None, description="With the admin key only: each confinement layer of plugin hosts on this machine "
        "(`available`, `detail`), and `mode` (on, degraded allowed, or off).")
    functions: dict[str, dict[str, Any]] | None = Field(
        default=None, description="With the admin key only: each function as its runners last wrote it (`state`: "
        "starting, running, restarting or stopped; `stale` when no runner refreshed it for 3 heartbeats; `restarts`, "
        "`last_error`, `last_error_at`, `updated_at`, `age_s`, `runners`). A function restarting or stale makes the "
        "status `degraded`.")


def _tenancy(request: Request) -> Tenancy:
    return request.app.state.tenancy


def _secrets(request: Request) -> SecretsStore:
    return request.app.state.secrets


async def _is_admin(request: Request) -> bool:
    """Whether the caller holds the admin key (health's details are for the operator only)."""
    authorization = request.headers.get("authorization") or ""
    if not authorization.lower().startswith("bearer "):
        return False
    try:
        principal = await _tenancy(request).authenticate(authorization[7:].strip())
        principal.require_admin()
    except Exception:  # noqa: BLE001 - a wrong key on health is just the short answer
        return False
    return True


def sandbox_report(settings: Any) -> dict[str, dict[str, Any]]:
    from engine.sandbox import confine
    from functions.services.ingest import sandbox_options

    options = sandbox_options(settings)
    mode = "off" if not options.enabled else "on, degraded allowed" if options.allow_degraded else "on"
    layers = confine.probe() if options.enabled else {}
    return {"mode": {"available": options.enabled, "detail": mode}, **layers}


def _routes() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/health", response_model=HealthReport, tags=["platform"])
    async def health(request: Request) -> Any:
        ports = await request.app.state.platform.health()
        states = {h.status for h in ports.values()}
        try:
            functions = await asyncio.wait_for(FunctionStates(request.app.state.platform.catalog).summary(), 5.0)
        except Exception as exc:  # noqa: BLE001 - health reports, it does not raise (the catalog's own status says why)
            functions = {"_unknown": {"state": "unknown", "stale": True, "last_error": f"{type(exc).__name__}: {exc}"}}
        if FunctionStates.degraded(functions):
            states.add("degraded")
        status = "down" if "down" in states else "degraded" if "degraded" in states else "ok"
        if await _is_admin(request):
            sandbox = await asyncio.to_thread(sandbox_report, request.app.state.platform.settings)
            report = HealthReport(status=status, ports=ports, sandbox=sandbox, functions=functions)
        else:
            report = HealthReport(status=status)
        body = report.model_dump(mode="json", exclude_none=True)
        return JSONResponse(body, status_code=503 if status == "down" else 200)

    @router.post("/namespaces", status_code=201, response_model=Namespace, tags=["namespaces"])
    async def create_namespace(body: CreateNamespace, principal: Auth, request: Request) -> Any:
        principal.require_admin()
        return await _tenancy(request).create_namespace(body.namespace_name, description=body.description)

    @router.get("/namespaces", response_model=NamespaceList, tags=["namespaces"])
    async def list_namespaces(principal: Auth, request: Request) -> Any:
        return {"namespaces": await _tenancy(request).list_namespaces(principal)}

    @router.get("/namespaces/{namespace}", response_model=Namespace, tags=["namespaces"])
    async def get_namespace(namespace: ScopedNamespace, request: Request) -> Any:
        return await _tenancy(request).get_namespace(namespace)

    @router.put("/namespaces/{namespace}/secrets/{name}", tags=["secrets"])
    async def put_secret(namespace: ScopedNamespace, name: str, body: SecretValue, request: Request) -> Any:
        return await _secrets(request).put(namespace, name, body.value)

    @router.get("/namespaces/{namespace}/secrets", tags=["secrets"])
    async def list_secrets(namespace: ScopedNamespace, request: Request) -> Any:
        return {"secrets": await _secrets(request).list(namespace)}

    @router.delete("/namespaces/{namespace}/secrets/{name}", status_code=204, tags=["secrets"])
    async def delete_secret(namespace: ScopedNamespace, name: str, request: Request) -> None:
        await _secrets(request).delete(namespace, name)

    return router


def create_app(platform: Platform) -> FastAPI:
    """The app over a platform that the caller connects and closes."""
    app = FastAPI(title="Sluice", version="0.1.0", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    app.state.platform = platform
    app.state.tenancy = Tenancy(platform.catalog, platform.admin_key)
    app.state.secrets = SecretsStore.from_settings(platform.catalog, platform.settings)
    install_error_handlers(app)
    app.add_middleware(LimitRequestBody)  # bodies over their limit: 413 before parsing (after the key check)
    app.add_middleware(AuthenticateFirst)  # keys checked before any body byte is read
    app.include_router(_routes())
    app.include_router(keys.router())
    app.include_router(plugins.router())
    app.include_router(collections.router())
    app.include_router(buckets.router())
    app.include_router(tasks.router())
    app.include_router(retrievers.router())
    app.include_router(models.router())
    app.include_router(dead_letters.router())
    for router in platform.store.http_routers():
        app.include_router(router)
    return app
