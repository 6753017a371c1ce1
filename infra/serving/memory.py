"""`MemoryServeControl`: Serve applications as records, with scripted outcomes, for unit tests.

It passes the same contract suite as `RayServeControl`. By default an application that `deploy`
creates is DEPLOYING, and the next `state()` call finds it RUNNING (with `plan.min_replicas`
replicas, at least one). A test scripts another outcome per application name, before or after
the deploy:

    serve.fail(name, "RuntimeError: weights missing")  # the next state() is DEPLOY_FAILED, that message
    serve.hang(name)                                   # stays DEPLOYING (a deploy timeout)
    serve.succeed(name)                                # back to the default

`deploys` holds every deploy call (name, spec, plan) and `deleted` every name deleted while it
existed, so tests assert on what the code asked Serve for. `reachable = False` makes
`available()` answer False, as when Ray is not connected.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.ingest.worker import PluginSpec
from engine.realtime.control import AppState, ServingPlan
from infra.serving.base import PREFIX, ServeControl

DEPLOYING = AppState("DEPLOYING")
NOT_STARTED = AppState("NOT_STARTED")


@dataclass(frozen=True)
class DeployCall:
    name: str
    spec: PluginSpec
    plan: ServingPlan


class MemoryServeControl(ServeControl):
    def __init__(self, *, reachable: bool = True) -> None:
        self.reachable = reachable
        self.deploys: list[DeployCall] = []
        self.deleted: list[str] = []
        self._apps: dict[str, AppState] = {}
        self._outcomes: dict[str, AppState | None] = {}  # None: stays DEPLOYING

    # -- scripting -------------------------------------------------------------------------------

    def fail(self, name: str, message: str = "the replicas failed to start") -> None:
        """Deployments of `name` end in DEPLOY_FAILED with `message`."""
        self._outcomes[name] = AppState("DEPLOY_FAILED", message)

    def hang(self, name: str) -> None:
        """Deployments of `name` stay DEPLOYING."""
        self._outcomes[name] = None

    def succeed(self, name: str) -> None:
        """Deployments of `name` reach RUNNING again (the default)."""
        self._outcomes.pop(name, None)

    def deployed(self, name: str) -> DeployCall | None:
        """The last deploy call of `name`, or None."""
        return next((call for call in reversed(self.deploys) if call.name == name), None)

    # -- the port --------------------------------------------------------------------------------

    async def available(self) -> bool:
        return self.reachable

    async def deploy(self, name: str, spec: PluginSpec, plan: ServingPlan) -> None:
        self.deploys.append(DeployCall(name, spec, plan))
        self._apps[name] = DEPLOYING

    async def state(self, name: str) -> AppState:
        current = self._apps.get(name)
        if current is None:
            return NOT_STARTED
        if current == DEPLOYING:
            self._apps[name] = current = self._settled(name)
        return current

    async def running_apps(self, prefix: str = PREFIX) -> dict[str, str]:
        return {name: app.status for name, app in self._apps.items() if name.startswith(prefix)}

    async def delete(self, name: str) -> None:
        if self._apps.pop(name, None) is not None:
            self.deleted.append(name)

    def _settled(self, name: str) -> AppState:
        """Where a deploying application goes: its scripted outcome, else RUNNING."""
        if name in self._outcomes:
            outcome = self._outcomes[name]
            return DEPLOYING if outcome is None else outcome
        call = self.deployed(name)
        return AppState("RUNNING", replicas=max(call.plan.min_replicas, 1) if call else 1)
