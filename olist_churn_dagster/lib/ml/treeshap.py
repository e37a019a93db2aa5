"""XGBoost's own TreeSHAP, run once per distinct path through each tree instead of per row.

Why: TreeSHAP costs rows x trees x leaves x depth^2, and the champion grows with the data
(more trees on more sellers), so explaining a backfill grew as the square of the scale.
A tree's contributions for a row depend only on which way the row goes at each of the
tree's splits (the algorithm reads the node covers, the leaf values and those
decisions, never the value itself), and a depth-4 tree has at most 15 splits, so a few
hundred distinct decision patterns cover hundreds of thousands of rows. Each tree is
explained by XGBoost on one representative row per pattern and the results are gathered
back, added tree by tree in float32 as XGBoost adds them: the output is XGBoost's
`pred_contribs`, bit for bit (`olist_churn_dagster_tests/lib/ml/test_treeshap.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import xgboost as xgb

# Patterns of up to this many splits are numbered through a lookup table (2^16 entries);
# deeper trees fall back to sorting the patterns.
_TABLE_SPLITS = 16
# Patterns are packed into int64 bits; a tree with more splits is explained row by row.
_MAX_SPLITS = 62


@dataclass(frozen=True)
class _Splits:
    """The split nodes of one tree: feature index, threshold, where a missing value goes."""

    feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray


def _tree_splits(booster: xgb.Booster) -> list[_Splits] | None:
    """Each tree's splits, or None when the model is not a plain single-output numeric
    tree ensemble with one tree per round (then XGBoost explains it whole)."""
    model = json.loads(booster.save_raw("json"))["learner"]
    booster_part = model["gradient_booster"]
    if booster_part.get("name") != "gbtree":
        return None
    trees = booster_part["model"]["trees"]
    if len(trees) != booster.num_boosted_rounds() or any(
        int(t) != 0 for t in booster_part["model"]["tree_info"]
    ):
        return None
    out = []
    for tree in trees:
        if any(int(s) != 0 for s in tree.get("split_type", [])):  # categorical splits
            return None
        inner = np.flatnonzero(np.asarray(tree["left_children"], dtype=np.int64) != -1)
        out.append(
            _Splits(
                feature=np.asarray(tree["split_indices"], dtype=np.int64)[inner],
                threshold=np.asarray(tree["split_conditions"], dtype=np.float32)[inner],
                default_left=np.asarray(tree["default_left"], dtype=bool)[inner],
            )
        )
    return out


def _patterns(columns: np.ndarray, missing: np.ndarray, splits: _Splits) -> np.ndarray:
    """Per row, the bits of the tree's decisions: bit k set when the row goes left at
    split k (value below the threshold, or missing with the default to the left)."""
    pattern = np.zeros(columns.shape[1], dtype=np.int64)
    for k, (feature, threshold, left) in enumerate(
        zip(splits.feature, splits.threshold, splits.default_left, strict=True)
    ):
        goes_left = np.where(missing[feature], left, columns[feature] < threshold)
        pattern |= goes_left.astype(np.int64) << k
    return pattern


def _number(pattern: np.ndarray, n_splits: int) -> tuple[np.ndarray, np.ndarray]:
    """One row of each distinct pattern (any: they all get the same contributions) and
    each row's pattern number (0..distinct-1)."""
    if n_splits <= _TABLE_SPLITS:
        seen = np.zeros(1 << n_splits, dtype=bool)
        seen[pattern] = True
        inverse = (np.cumsum(seen) - 1)[pattern]
        representative = np.empty(int(seen.sum()), dtype=np.int64)
        representative[inverse] = np.arange(pattern.size)
        return representative, inverse
    _, representative, inverse = np.unique(pattern, return_index=True, return_inverse=True)
    return representative, inverse.ravel()


def tree_contributions(
    booster: xgb.Booster, matrix: np.ndarray, feature_names: Sequence[str]
) -> np.ndarray:
    """`booster.predict(DMatrix(matrix), pred_contribs=True)` without the bias column:
    rows x features float32 contributions to the log-odds, equal to XGBoost's to the bit.

    `matrix` is float32 with one column per name of `feature_names` (the booster's own, which
    XGBoost checks), NaN for missing: as `model.feature_matrix` builds it."""
    import xgboost as xgb

    names = list(feature_names)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise ValueError(
            f"tree_contributions: matrix of shape {matrix.shape} for {len(names)} features"
        )

    def explain(model: xgb.Booster, rows: np.ndarray) -> np.ndarray:
        # One thread: the calls are many and small, where starting threads costs most.
        dm = xgb.DMatrix(rows, missing=np.nan, feature_names=names, nthread=1)
        return model.predict(dm, pred_contribs=True)[:, :-1]

    n_rows, n_features = matrix.shape
    if n_rows == 0:
        return np.zeros((0, n_features), dtype=np.float32)
    trees = _tree_splits(booster)
    if trees is None:
        return explain(booster, matrix)
    # One thread in the source too: slicing a tree off a multi-threaded booster starts its
    # threads each time, which costs more than the slice itself on busy cores.
    source = booster.copy()
    source.set_param({"nthread": 1})
    # Feature-major copies: each split reads, and each feature adds into, one contiguous row.
    columns = np.ascontiguousarray(matrix.T)
    missing = np.isnan(columns)
    total = np.zeros((n_features, n_rows), dtype=np.float32)
    for index, splits in enumerate(trees):  # a loop over trees: each step is columnar
        tree = source[index : index + 1]
        used = np.unique(splits.feature)
        if splits.feature.size > _MAX_SPLITS:
            total[used] += explain(tree, matrix)[:, used].T
            continue
        pattern = _patterns(columns, missing, splits)
        representative, inverse = _number(pattern, splits.feature.size)
        per_pattern = explain(tree, matrix[representative])
        # Features this tree does not split on get exactly 0 from it: nothing to add.
        total[used] += per_pattern[:, used].T[:, inverse]
    return np.ascontiguousarray(total.T)
