"""`Sealed`: the metaclass of SDK classes that plugin code uses but never subclasses
(`SecretsAccessor`, `LLMService`, `PluginContainer`, `PipelineStep`, `StepRunner`).

In a plugin host the audit guard installs `Sealed.guard`, which refuses a change to such a class
(replacing a method, deleting an attribute) when plugin code makes it: a plugin cannot rewire the
SDK it is handed. Outside a host the guard is None and the classes behave as ordinary classes.
Python raises no audit event for class attribute changes, hence this metaclass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar


class Sealed(type):
    guard: ClassVar[Callable[[str], None] | None] = None

    def __setattr__(cls, name: str, value: Any) -> None:
        if Sealed.guard is not None:
            Sealed.guard(f"{cls.__module__}.{cls.__qualname__}.{name}")
        super().__setattr__(name, value)

    def __delattr__(cls, name: str) -> None:
        if Sealed.guard is not None:
            Sealed.guard(f"{cls.__module__}.{cls.__qualname__}.{name}")
        super().__delattr__(name)


__all__ = ["Sealed"]
