import logging
from typing import List

import numpy as np
import pandas as pd

from shared.plugins import open_asset

log = logging.getLogger(__name__)
DIM = 32


def read_table(url: str, max_rows: int) -> pd.DataFrame:
    suffix = ".parquet" if url.lower().endswith(".parquet") else ".csv"
    with open_asset(url, suffix=suffix) as path:
        if suffix == ".parquet":
            return pd.read_parquet(path).head(max_rows)
        return pd.read_csv(path, nrows=max_rows, low_memory=False)


def profile(df: pd.DataFrame, quantiles: List[float]) -> List[float]:
    numeric = df.select_dtypes(include="number")
    parts = [
        np.log1p([len(df), df.shape[1], numeric.shape[1]]),
        [df.isna().mean().mean() if df.size else 0.0, df.duplicated().mean() if len(df) else 0.0],
    ]
    if not numeric.empty:
        scaled = (numeric - numeric.mean()) / numeric.std(ddof=0).replace(0, 1)
        parts.append(scaled.stack().quantile(quantiles).fillna(0).to_numpy())
        corr = numeric.corr().abs().to_numpy()
        parts.append([np.nanmean(corr[np.triu_indices_from(corr, k=1)]) if corr.shape[0] > 1 else 0.0])
    text = df.select_dtypes(include="object")
    if not text.empty:
        parts.append([text.nunique().div(max(len(df), 1)).mean(), text.astype(str).apply(lambda c: c.str.len()).mean().mean()])
    vector = np.nan_to_num(np.concatenate([np.asarray(p, dtype=float).ravel() for p in parts]))
    return np.pad(vector, (0, max(DIM - vector.size, 0)))[:DIM].tolist()


class TableProfiler:
    def __init__(self, config, **kwargs):
        self.config = config

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        profiles, rows, cols, numeric = [], [], [], []
        for url in batch["data"].tolist():
            df = read_table(url, self.config.max_rows)
            log.debug("%s profiled %s: %s", self.__class__.__name__, url, df.shape)
            profiles.append(profile(df, list(self.config.quantiles)))
            rows.append(int(len(df)))
            cols.append(int(df.shape[1]))
            numeric.append([str(c) for c in df.select_dtypes(include="number").columns])
        batch["table_profile"] = profiles
        batch["n_rows"] = rows
        batch["n_columns"] = cols
        batch["numeric_columns"] = numeric
        return batch
