"""The VectorIndex port and its adapters: Qdrant Edge (embedded, on disk) and a Qdrant server.

The adapters load on first access, so importing the port does not import qdrant-client or the
Edge engine (bootstrap imports only the one it builds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.vectors.base import Distance, Hit, Point, VectorIndex, VectorSpec, check_point_ids, point_id

if TYPE_CHECKING:
    from infra.vectors.edge import EdgeVectorIndex
    from infra.vectors.qdrant import QdrantVectorIndex

__all__ = [
    "Distance", "EdgeVectorIndex", "Hit", "Point", "QdrantVectorIndex", "VectorIndex", "VectorSpec",
    "check_point_ids", "point_id",
]

_ADAPTERS = {"EdgeVectorIndex": "infra.vectors.edge", "QdrantVectorIndex": "infra.vectors.qdrant"}


def __getattr__(name: str) -> Any:
    if name in _ADAPTERS:
        import importlib

        return getattr(importlib.import_module(_ADAPTERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
