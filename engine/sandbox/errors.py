"""Errors of the plugin sandbox, shared by both sides of the trust boundary.

`SandboxViolation` is what plugin code sees when the host refuses an action (the audit hook, the
guarded builtins, the SDK bridge). The host also records every violation it raised, so one that
plugin code catches and swallows is still reported on the dry run or the task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_recorder: Callable[[dict[str, Any]], None] | None = None


def set_recorder(recorder: Callable[[dict[str, Any]], None] | None) -> None:
    """In a plugin host: where every violation raised is recorded (the audit guard)."""
    global _recorder
    _recorder = recorder


class SandboxViolation(PermissionError):
    """An action the plugin host does not allow: `action` (open, write, network, process, import,
    attribute, ...), `target` (the path, host:port, module or name) and where in the plugin it
    happened (`file`, `line`, relative to the plugin's folder; empty when no plugin frame was on
    the stack)."""

    def __init__(self, action: str, target: str, *, file: str = "", line: int = 0, reason: str = "") -> None:
        self.action, self.target, self.file, self.line, self.reason = action, target, file, line, reason
        where = f" at {file}:{line}" if file else ""
        super().__init__(f"sandbox: {action} {target!r} is not allowed{where}" + (f" ({reason})" if reason else ""))
        if _recorder is not None:
            _recorder(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "target": self.target, "file": self.file, "line": self.line, "reason": self.reason,
                "message": str(self)}


class PluginHostError(RuntimeError):
    """The plugin host failed as a process: it could not start, crashed, broke the protocol or ran
    past its time limit (`kind`: start, crash, timeout, protocol). Always the plugin's failure
    (named in the message), never the platform's."""

    def __init__(self, plugin: str, message: str, *, kind: str = "crash", exit_code: int | None = None, output: str = "") -> None:
        self.plugin, self.kind, self.exit_code, self.output = plugin, kind, exit_code, output
        super().__init__(f"plugin {plugin}: {message}")


class SandboxUnavailable(RuntimeError):
    """A confinement layer the operator did not opt out of is missing on this machine."""
