"""Reading a realtime service's answers: plain JSON values, and the query vectors in them, checked
(pure functions: no Ray, no plugin code)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np


class RealtimeContractError(RuntimeError):
    """The plugin's realtime service answered something the contract does not allow."""


def plain(value: Any) -> Any:
    """A JSON-safe copy of a service's answer (numpy arrays and scalars to lists and numbers)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        return value.detach().cpu().tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def vector_of(result: Any, feature: str, dim: int | None) -> list[float]:
    """The vector a service answered for `feature`: the key named after it, else `embedding`."""
    if not isinstance(result, dict):
        raise RealtimeContractError(f"the realtime service returned {type(result).__name__}, not a dict")
    key = feature if feature in result else "embedding" if "embedding" in result else None
    if key is None:
        raise RealtimeContractError(
            f"the realtime service returned keys {sorted(map(str, result))}, without 'embedding' or {feature!r}")
    try:
        array = np.asarray(result[key], dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise RealtimeContractError(f"the realtime service's {key!r} is not a numeric vector: {exc}") from exc
    if dim is not None and array.size != dim:
        raise RealtimeContractError(f"the realtime service returned a {array.size}-dimensional {key!r}; the index expects {dim}")
    if not np.isfinite(array).all():
        raise RealtimeContractError(f"the realtime service's {key!r} holds NaN or infinite values")
    return array.tolist()


def vectors_per_text(result: Any, feature: str, count: int) -> list[Any] | None:
    """One vector per text, when a `texts` call answered that shape (under the feature's name,
    `embeddings` or `embedding`); None when it did not."""
    if not isinstance(result, dict):
        return None
    key = next((k for k in (feature, "embeddings", "embedding") if k in result), None)
    if key is None:
        return None
    value = result[key]
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    if array.ndim != 2 or array.shape[0] != count:
        return None
    return [row for row in array]


async def _await_maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
