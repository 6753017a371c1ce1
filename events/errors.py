"""Errors shared by every layer. Retry rules ride on the exception type.

`TransientError` means "try again later" (a broker or store hiccup); the runner retries it with
backoff. `PermanentError` means "this input can never succeed"; the runner sends it to the
dead-letter topic at once. Anything else a handler raises is treated as transient a bounded number
of times and then dead-lettered, so a bug can never wedge a partition.
"""

from __future__ import annotations

from typing import Any


class SluiceError(Exception):
    """Base class. `details` is a JSON-able dict shown to API clients and in dead letters."""

    error_type = "sluice_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class TransientError(SluiceError):
    """The operation may succeed if retried (network blip, broker unavailable, lock timeout)."""

    error_type = "transient"


class PermanentError(SluiceError):
    """The input can never be processed; retrying is pointless (dead-letter it)."""

    error_type = "permanent"


class PoisonMessage(PermanentError):
    """A message that cannot be decoded or fails validation."""

    error_type = "poison_message"


class InvalidInput(PermanentError):
    """A request or event carries a value that is not acceptable; `details` names the field."""

    error_type = "invalid_input"


class TooLarge(PermanentError):
    """The input exceeds a documented limit (archive size, file count)."""

    error_type = "too_large"


class NotReady(TransientError):
    """What must answer is still starting (a deployment in progress): try again shortly."""

    error_type = "not_ready"


class PluginFailed(SluiceError):
    """A plugin's code raised, or answered outside its contract, while serving a request."""

    error_type = "plugin_error"


class NotFound(SluiceError):
    error_type = "not_found"


class AlreadyExists(SluiceError):
    error_type = "already_exists"


class Conflict(SluiceError):
    """A conditional write lost a race or the stored state does not allow the change."""

    error_type = "conflict"


class NotConnected(SluiceError):
    """An adapter was used before `connect()` (or after `close()`)."""

    error_type = "not_connected"

    def __init__(self, adapter: str) -> None:
        super().__init__(
            f"{adapter} is not connected: call `await {adapter}.connect()` "
            f"or use `async with` before using it"
        )


class Unauthorized(SluiceError):
    error_type = "unauthorized"


class Forbidden(SluiceError):
    error_type = "forbidden"
