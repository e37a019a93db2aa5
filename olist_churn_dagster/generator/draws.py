"""Small vectorised helpers shared by the generator modules (ids, draws, timestamps)."""

from __future__ import annotations

import numpy as np
import polars as pl

from olist_churn_dagster.lib.ingest.schema import TIMESTAMP

DAY = 86_400
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_ids(rng: np.random.Generator, n: int) -> pl.Series:
    """n random 32-char lowercase hex ids, like the real Olist ids (128 random bits)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16)
    chars = np.empty((n, 32), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    return pl.Series(chars.view("S32").ravel()).cast(pl.String)


def draw(rng: np.random.Generator, weights: np.ndarray | list[float], n: int) -> np.ndarray:
    """n indices drawn with the given (unnormalised) weights."""
    cum = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.searchsorted(cum, rng.random(n) * cum[-1], side="right").clip(0, len(cum) - 1)


def draw_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of an (n, k) matrix of row-wise probabilities."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cum[:, -1]
    return (cum < u[:, None]).sum(axis=1).clip(0, probs.shape[1] - 1)


def timestamps(seconds: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    """Epoch seconds to a timestamp Series; rows where `valid` is False become null."""
    series = pl.Series(seconds.astype(np.int64) * 1_000_000).cast(TIMESTAMP)
    if valid is None:
        return series
    return pl.select(pl.when(pl.lit(pl.Series(valid))).then(series)).to_series()


def zip_prefixes(values: np.ndarray) -> pl.Series:
    """Integer zip prefixes as the 5-char strings the data uses (leading zeros kept)."""
    return pl.Series(values.astype(np.int64)).cast(pl.String).str.zfill(5)


def forward_fill_index(keep: np.ndarray) -> np.ndarray:
    """For each row, the index of the nearest row at or before it where `keep` is True."""
    idx = np.where(keep, np.arange(len(keep)), 0)
    return np.maximum.accumulate(idx)
