"""The Catalog port and its adapters. An adapter's module loads on first use, so importing the port
never pulls in a database driver."""

from __future__ import annotations

import importlib
from typing import Any

from infra.catalog.base import Catalog, Doc, Where, check_kind, check_where

__all__ = ["Catalog", "Doc", "MongoCatalog", "SqliteCatalog", "Where", "check_kind", "check_where"]

_ADAPTERS = {"MongoCatalog": "infra.catalog.mongo", "SqliteCatalog": "infra.catalog.sqlite"}


def __getattr__(name: str) -> Any:
    if name in _ADAPTERS:
        return getattr(importlib.import_module(_ADAPTERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
