"""Small vectorised helpers shared by the synthetic-data generator modules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

DAY = 86_400  # seconds
_HEX = np.array([f"{i:02x}" for i in range(256)], dtype="S2")


def hex_ids(rng: np.random.Generator, n: int) -> pl.Series:
    """n random 32-char lowercase hex ids, like the real Olist ids (128 random bits, so
    collisions are not a practical concern)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    return pl.Series(_HEX[raw].view("S32").ravel().astype("U32"))


def timestamps(seconds: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    """Epoch seconds to a microsecond Datetime series; rows where `valid` is False are null."""
    values = np.asarray(seconds, dtype=np.int64).astype("datetime64[s]").astype("datetime64[us]")
    if valid is not None:
        values[~valid] = np.datetime64("NaT")
    return pl.Series(values)


def pick(rng: np.random.Generator, weights: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """n indices drawn with the given (unnormalised) weights."""
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w / w.sum())
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(w) - 1)


def pick_within(rng: np.random.Generator, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """For each row, a uniform random index inside its block [offset, offset + size)."""
    return offsets + np.minimum((rng.random(len(sizes)) * sizes).astype(np.int64), sizes - 1)


def zip_prefixes(numbers: np.ndarray) -> pl.Series:
    """Integers 0..99999 as 5-char zip prefixes with leading zeros."""
    return pl.Series(numbers.astype(np.int64)).cast(pl.String).str.zfill(5)


def block_offsets(sizes: np.ndarray) -> np.ndarray:
    """Start index of each block when blocks of `sizes` are laid end to end."""
    return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)


def position_in_block(sizes: np.ndarray) -> np.ndarray:
    """0-based position of every element inside its block, for blocks laid end to end."""
    total = int(sizes.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(block_offsets(sizes), sizes)
