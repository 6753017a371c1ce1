"""`BaseInferenceService`: the realtime contract (the hosted product's Ray Serve endpoint).

A request arrives as `await service(inputs, parameters)` and answers a dict. The docs show both
subclassing styles: overriding `__call__` outright, or overriding `run_inference` and letting this
`__call__` validate the request. Both work.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import Any

from events.errors import InvalidInput

__all__ = ["BaseInferenceService"]


class BaseInferenceService:
    """Base of a plugin's realtime service. `config` (keyword, or the first positional argument)
    is kept as `self.config`; other arguments are accepted so subclasses can add their own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.config = kwargs.get("config", args[0] if args else None)
        super().__init__()  # lets a mixin listed after this base (e.g. LazyModelMixin) set itself up

    async def __call__(self, inputs: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        if not isinstance(inputs, dict):
            raise InvalidInput(
                f"{type(self).__name__} takes a dict of inputs, got {type(inputs).__name__}",
                details={"service": type(self).__name__, "inputs_type": type(inputs).__name__},
            )
        result: dict[str, Any] | Awaitable[dict[str, Any]] = self.run_inference(inputs, parameters or {})
        if inspect.isawaitable(result):  # a subclass may write run_inference as a plain method
            result = await result
        return result

    async def run_inference(self, inputs: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(
            f"{type(self).__name__} must override __call__(inputs, parameters) or run_inference(inputs, parameters)"
        )
