import numpy as np
import pytest
import xgboost as xgb

from olist_churn_dagster.lib.ml import treeshap
from olist_churn_dagster.lib.ml.treeshap import tree_contributions

NAMES = ["revenue", "orders", "recency", "late_share", "tenure"]


def _data(n: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Continuous and integer-valued columns (many rows sit exactly on a threshold) with
    missing values, so both directions of `<` and the default branch are exercised."""
    rng = np.random.default_rng(seed)
    matrix = np.column_stack(
        [
            rng.gamma(2.0, 300.0, n),
            rng.integers(0, 12, n),
            rng.integers(0, 90, n),
            rng.random(n),
            rng.integers(0, 400, n),
        ]
    ).astype(np.float32)
    matrix[rng.random((n, len(NAMES))) < 0.15] = np.nan
    logit = 0.04 * np.nan_to_num(matrix[:, 2], nan=45.0) - 0.3 * np.nan_to_num(matrix[:, 1])
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return matrix, label


def _booster(matrix: np.ndarray, label: np.ndarray, **params: object) -> xgb.Booster:
    train = xgb.DMatrix(matrix, label=label, feature_names=NAMES, missing=np.nan)
    settings = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.3, "seed": 1, "nthread": 1}
    return xgb.train({**settings, **params}, train, num_boost_round=40)


def _xgboost_contributions(booster: xgb.Booster, matrix: np.ndarray) -> np.ndarray:
    dm = xgb.DMatrix(matrix, feature_names=NAMES, missing=np.nan)
    return booster.predict(dm, pred_contribs=True)[:, :-1]


def _assert_same_bits(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return _data(4000)


@pytest.mark.parametrize("params", [{"max_depth": 4}, {"max_depth": 6, "min_child_weight": 0}])
def test_equals_xgboost_to_the_bit(data, params):
    """Depth 4 numbers patterns through the lookup table, depth 6 (up to 63 splits) through
    sorting and, for a tree with more than 62 splits, explains it row by row."""
    matrix, label = data
    booster = _booster(matrix, label, **params)
    scored, _ = _data(3000, seed=9)  # rows the model never saw
    _assert_same_bits(
        tree_contributions(booster, scored, NAMES), _xgboost_contributions(booster, scored)
    )


def test_every_path_of_numbering_gives_the_same_bits(data, monkeypatch):
    matrix, label = data
    booster = _booster(matrix, label)
    expected = _xgboost_contributions(booster, matrix)
    monkeypatch.setattr(treeshap, "_TABLE_SPLITS", 0)  # sort every tree's patterns
    _assert_same_bits(tree_contributions(booster, matrix, NAMES), expected)
    monkeypatch.setattr(treeshap, "_MAX_SPLITS", 3)  # most trees explained row by row
    _assert_same_bits(tree_contributions(booster, matrix, NAMES), expected)


def test_a_forest_per_round_is_explained_whole(data):
    matrix, label = data
    booster = _booster(matrix, label, num_parallel_tree=3, subsample=0.8)
    assert treeshap._tree_splits(booster) is None
    _assert_same_bits(
        tree_contributions(booster, matrix, NAMES), _xgboost_contributions(booster, matrix)
    )


def test_no_rows_and_a_wrong_width(data):
    matrix, label = data
    booster = _booster(matrix, label)
    assert tree_contributions(booster, matrix[:0], NAMES).shape == (0, len(NAMES))
    with pytest.raises(ValueError, match="5 features"):
        tree_contributions(booster, matrix[:, :4], NAMES)
