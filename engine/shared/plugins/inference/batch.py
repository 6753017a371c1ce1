"""`BaseBatchInferenceService`: the batch contract (one Ray Data `map_batches` worker).

The pipeline builds the service once per worker, with `service_class(config)`, then calls it with
one pandas DataFrame per batch; subclasses implement `_process_batch(batch) -> DataFrame`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["BaseBatchInferenceService"]


class BaseBatchInferenceService:
    """Base of a plugin's batch step. `config` (keyword, or the first positional argument) is kept
    as `self.config`; other arguments are accepted so mixins and subclasses can share `__init__`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.config = kwargs.get("config", args[0] if args else None)
        super().__init__()  # lets a mixin listed after this base (e.g. LazyModelMixin) set itself up

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        process = getattr(self, "_process_batch", None)
        if process is None:
            raise NotImplementedError(f"{type(self).__name__} must implement _process_batch(batch) -> pandas.DataFrame")
        return process(batch)
