"""Errors of the model SDK. They subclass the platform's hierarchy so the runner treats a missing
model as "not found" (permanent for this input, fixable by an operator), never as a retryable blip."""

from __future__ import annotations

from events.errors import NotFound


class ModelNotAvailable(NotFound):
    """A model id that cannot be served offline in this process. The message says how to make it
    available; `details["model_id"]` names it."""

    error_type = "model_not_available"

    def __init__(self, model_id: str, reason: str) -> None:
        super().__init__(f"model {model_id!r} is not available: {reason}", details={"model_id": model_id})
        self.model_id = model_id
