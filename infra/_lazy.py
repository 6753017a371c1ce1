"""Adapters that load on first use, so importing a port never imports an adapter's driver."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: reading `name` imports `modules[name]` and
    returns its attribute of that name. Use as `__getattr__ = lazy_exports(__name__, {...})`."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
