"""The Catalog port and its adapters (SQLite, MongoDB, and the in-memory fake for unit tests). An
adapter's module loads on first use, so importing the port never pulls in a database driver."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra._lazy import lazy_exports
from infra.catalog.base import Catalog, Doc, Where, check_kind, check_where

if TYPE_CHECKING:
    from infra.catalog.memory import MemoryCatalog
    from infra.catalog.mongo import MongoCatalog
    from infra.catalog.sqlite import SqliteCatalog

__all__ = ["Catalog", "Doc", "MemoryCatalog", "MongoCatalog", "SqliteCatalog", "Where", "check_kind", "check_where"]

__getattr__ = lazy_exports(__name__, {
    "MemoryCatalog": "infra.catalog.memory",
    "MongoCatalog": "infra.catalog.mongo",
    "SqliteCatalog": "infra.catalog.sqlite",
})
