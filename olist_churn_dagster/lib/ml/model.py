"""Churn model: time-based split, XGBoost training, evaluation next to baselines, reasons.

The model is judged the way it is used: trained on earlier monthly cohorts, early-stopped
on the next ones and tested out of time (OOT) on the latest mature cohorts, next to two
rules anyone could run without a model (recency and the base rate).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from olist_churn_dagster.lib.ml import plots
from olist_churn_dagster.lib.ml.abt import LABEL, feature_columns
from olist_churn_dagster.lib.ml.calibration import reliability_bins
from olist_churn_dagster.lib.tables import KEYS

if TYPE_CHECKING:  # imported where used: run workers that never train start faster
    import xgboost as xgb
    from matplotlib.figure import Figure

# Where the recency rule finds "days since the last sale": the feature store's name first.
RECENCY_FEATURES = ("sales_recency_days", "recency_days")
# Metrics where a smaller value is better; every other metric grows with quality.
LOWER_IS_BETTER = frozenset({"brier", "log_loss", "ece"})


# --------------------------------------------------------------------------- split


@dataclass(frozen=True)
class SplitPlan:
    """Cohort dates of each block: fit on `train`, early-stop on `valid`, report on `test`."""

    train: list[date]
    valid: list[date]
    test: list[date]

    def as_dict(self) -> dict[str, list[str]]:
        return {k: [d.isoformat() for d in v] for k, v in asdict(self).items()}


def plan_time_split(
    cohorts: Sequence[date],
    *,
    n_test: int = 3,
    n_valid: int = 2,
    gap: int = 1,
    horizon_days: int = 45,
) -> SplitPlan:
    """Split cohorts in time order: train < valid < test, `gap` cohorts dropped in between.

    Why the gap: a label at cohort D looks at sales up to L + horizon <= D + horizon - 1, so
    with monthly cohorts and a 45-day horizon the last training labels would read the same
    sales that the first validation cohort's labels (and features) read. Leaving `gap`
    cohorts out makes every block's labels end before the next block starts; the plan is
    refused when the dates still lie less than `horizon_days` apart.
    """
    dates = sorted(set(cohorts))
    if min(n_test, n_valid) < 1 or gap < 0:
        raise ValueError("plan_time_split: n_test and n_valid must be >= 1 and gap >= 0")
    needed = n_test + n_valid + 2 * gap + 1
    if len(dates) < needed:
        raise ValueError(
            f"plan_time_split: {len(dates)} mature cohort(s) is too few; need at least "
            f"{needed} ({n_test} test + {n_valid} validation + 2 x {gap} gap + 1 train)"
        )
    test = dates[len(dates) - n_test :]
    valid_end = len(dates) - n_test - gap
    valid = dates[valid_end - n_valid : valid_end]
    train = dates[: valid_end - n_valid - gap]
    for before, after, name in ((train, valid, "train/valid"), (valid, test, "valid/test")):
        apart = (after[0] - before[-1]).days
        if apart < horizon_days:
            raise ValueError(
                f"plan_time_split: {name} cohorts {before[-1]} and {after[0]} are only {apart} "
                f"days apart, less than the {horizon_days}-day label horizon; raise `gap`"
            )
    return SplitPlan(train=train, valid=valid, test=test)


def split_frames(abt: pl.DataFrame, plan: SplitPlan) -> dict[str, pl.DataFrame]:
    """The ABT rows of each block of the plan."""
    return {
        block: abt.filter(pl.col("reference_date").is_in(getattr(plan, block)))
        for block in ("train", "valid", "test")
    }


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class ModelParams:
    """XGBoost settings.

    Defaults from `tune_params` over max_depth 3/4/6 x learning_rate 0.05/0.1 x
    min_child_weight 1/10, scored on the validation cohorts only, on an ABT of the built-in
    generator: every setting scored within the noise of the others, so the defaults are a
    setting as good as the best, faster to fit and with a larger leaf-weight floor.
    """

    max_depth: int = 4
    learning_rate: float = 0.1
    n_estimators: int = 1000  # maximum boosting rounds; early stopping picks the number
    min_child_weight: float = 10.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 50
    seed: int = 42
    # Not tuned, a resource knob: one thread fits the ABT of a marketplace this size
    # quickly, while two OpenMP threads ran several times slower when the CPU was shared
    # with other work. Raise it for far larger ABTs on a machine of its own.
    nthread: int = 1

    def xgb_params(self) -> dict[str, Any]:
        """The dict for `xgboost.train`; early stopping watches the last metric, logloss,
        which moves more smoothly than AUC and keeps the probabilities honest."""
        return {
            "objective": "binary:logistic",
            "eval_metric": ["auc", "logloss"],
            "tree_method": "hist",
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "seed": self.seed,
            "nthread": self.nthread,
        }


# --------------------------------------------------------------------------- data


def feature_matrix(frame: pl.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    """Float32 matrix in `feature_names` order; nulls become NaN (XGBoost's missing)."""
    missing = [f for f in feature_names if f not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks model feature(s) {missing[:10]} ({len(missing)} in all)")
    bad = [
        f
        for f in feature_names
        if not (frame.schema[f].is_numeric() or frame.schema[f] == pl.Boolean)
    ]
    if bad:
        raise ValueError(f"features must be numeric or boolean; not: {bad[:10]}")
    matrix = frame.select(pl.col(f).cast(pl.Float32) for f in feature_names).to_numpy()
    return np.ascontiguousarray(matrix, dtype=np.float32)


def _dmatrix(frame: pl.DataFrame, feature_names: Sequence[str], *, labelled: bool) -> xgb.DMatrix:
    label = frame.get_column(LABEL).to_numpy() if labelled else None
    import xgboost as xgb

    return xgb.DMatrix(
        feature_matrix(frame, feature_names),
        label=label,
        feature_names=list(feature_names),
        missing=np.nan,
    )


def _check_block(name: str, frame: pl.DataFrame) -> None:
    if frame.height == 0:
        raise ValueError(f"the {name} block has no ABT rows; check the split plan's dates")
    if frame.get_column(LABEL).n_unique() < 2:
        raise ValueError(f"the {name} block has only one label class; cannot fit or evaluate")


def _fit(
    dtrain: xgb.DMatrix,
    dvalid: xgb.DMatrix,
    params: ModelParams,
    extra: Mapping[str, Any] | None = None,
) -> tuple[xgb.Booster, int]:
    """Train with early stopping on valid; return the booster cut at its best round."""
    import xgboost as xgb

    booster = xgb.train(
        {**params.xgb_params(), **(extra or {})},
        dtrain,
        num_boost_round=params.n_estimators,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=params.early_stopping_rounds,
        verbose_eval=False,
    )
    best = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
    # Slicing keeps exactly the trees we evaluate, so a saved model predicts the same.
    return booster[: best + 1], best


def fit_booster(
    train: pl.DataFrame,
    valid: pl.DataFrame,
    feature_names: Sequence[str],
    params: ModelParams,
    *,
    extra: Mapping[str, Any] | None = None,
) -> tuple[xgb.Booster, int]:
    """Fit on `train`, early-stop on `valid` (both labelled ABT rows): the one fitting
    path that training, tuning and the walk-forward backtest share. `extra` adds raw
    XGBoost parameters such as monotone constraints."""
    _check_block("train", train)
    _check_block("valid", valid)
    return _fit(
        _dmatrix(train, feature_names, labelled=True),
        _dmatrix(valid, feature_names, labelled=True),
        params,
        extra,
    )


def predict(booster: xgb.Booster, frame: pl.DataFrame, feature_names: Sequence[str]) -> np.ndarray:
    """Churn probability for each row of `frame`: XGBoost's in-place prediction, the same
    values as through a DMatrix to the bit without building one (a copy of the whole
    matrix, a large share of the CPU a backfill spends predicting)."""
    expected = booster.feature_names
    if expected is not None and list(expected) != list(feature_names):
        raise ValueError(
            f"the booster's features {list(expected)[:5]}... differ from the {len(feature_names)}"
            f" names given {list(feature_names)[:5]}...; pass the model's own feature names"
        )
    return booster.inplace_predict(feature_matrix(frame, feature_names), missing=np.nan)


def contributions(
    booster: xgb.Booster, frame: pl.DataFrame, feature_names: Sequence[str]
) -> np.ndarray:
    """Per-row, per-feature contributions to the log-odds (TreeSHAP), without the bias:
    XGBoost's own, computed once per distinct path through each tree (`treeshap`)."""
    from olist_churn_dagster.lib.ml.treeshap import tree_contributions

    return tree_contributions(booster, feature_matrix(frame, feature_names), feature_names)


# --------------------------------------------------------------------------- metrics


def _both_classes(y: np.ndarray) -> bool:
    """Whether `y` holds a positive and a negative: scikit-learn raises (ROC AUC) or warns
    (average precision) otherwise, while a metric table wants NaN for "undefined"."""
    n_pos = int(y.sum())
    return 0 < n_pos < y.size


def _roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC, ties counted as half (scikit-learn, imported when first scored)."""
    if not _both_classes(y):
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision: precision at each distinct threshold weighted by the recall it
    adds (scikit-learn's step-wise PR AUC, no interpolation)."""
    if int(y.sum()) == 0:
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s))


def _top_share_precision(y: np.ndarray, s: np.ndarray, share: float = 0.1) -> float:
    """Precision among the top `share` of scores; ties at the cut count at their mean."""
    n_top = max(1, int(np.ceil(share * y.size)))
    cut = np.sort(s)[::-1][n_top - 1]
    above, tied = s > cut, s == cut
    positives = y[above].sum() + (n_top - above.sum()) * y[tied].mean()
    return float(positives / n_top)


def _ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error over the reliability diagram's bins: the row-weighted
    gap between observed and predicted churn per bin. scikit-learn has no ECE, and its
    `calibration_curve` returns no bin counts, so the bins come from `reliability_bins`."""
    count, sum_p, sum_y = reliability_bins(y, p, n_bins)
    return float(np.abs(sum_y - sum_p).sum() / count.sum())


def evaluate_scores(y_true: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Ranking, probability and top-decile quality of `scores` (probabilities in [0, 1])."""
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.size == 0:
        raise ValueError(
            f"y_true and scores must be equal-length and non-empty: {y.shape}, {s.shape}"
        )
    p = np.clip(s, 1e-15, 1 - 1e-15)
    base_rate = float(y.mean())
    precision_top = _top_share_precision(y, s)
    return {
        "roc_auc": _roc_auc(y, s),
        "pr_auc": _average_precision(y, s),
        "brier": float(np.mean((s - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "precision_top_decile": precision_top,
        "lift_top_decile": precision_top / base_rate if base_rate > 0 else float("nan"),
        "base_rate": base_rate,
        "ece": _ece(y, np.clip(s, 0.0, 1.0)),
    }


def _recency_column(frame: pl.DataFrame, column: str | None) -> str:
    candidates = (column,) if column else RECENCY_FEATURES
    found = next((c for c in candidates if c in frame.columns), None)
    if found is None:
        raise ValueError(f"the recency baseline needs one of the columns {list(candidates)}")
    return found


def baseline_scores(
    frame: pl.DataFrame, *, train_base_rate: float, recency_column: str | None = None
) -> dict[str, np.ndarray]:
    """Scores of the two no-model rules on `frame`'s rows.

    `recency_rule`: the longer a seller has been silent, the higher the risk; recency (the
    first of RECENCY_FEATURES present, unless named) is min-max scaled to [0, 1] so that
    Brier and log loss can be computed (they are poor by construction: the rule ranks, it
    does not estimate). `base_rate`: the training churn rate for everyone, i.e. no ranking.
    """
    recency = frame.get_column(_recency_column(frame, recency_column)).cast(pl.Float64)
    recency = recency.fill_null(recency.max()).to_numpy()
    low, high = np.nanmin(recency), np.nanmax(recency)
    scaled = (recency - low) / (high - low) if high > low else np.full(recency.size, 0.5)
    return {
        "recency_rule": scaled,
        "base_rate": np.full(frame.height, float(train_base_rate)),
    }


# --------------------------------------------------------------------------- reasons


def top_reasons(
    booster: xgb.Booster, frame: pl.DataFrame, feature_names: Sequence[str], *, k: int = 3
) -> pl.DataFrame:
    """The k features pushing each row's churn risk up most, with value and contribution.

    Columns: the frame's keys, then reason_i, reason_i_value, reason_i_contribution for
    i = 1..k, largest contribution first. A slot stays null when fewer than i features
    raise the risk at all: a feature that lowers risk is no reason for concern.
    """
    names = pl.Series(list(feature_names), dtype=pl.String)
    k = min(k, names.len())
    contrib = contributions(booster, frame, feature_names)
    values = frame.select(pl.col(f).cast(pl.Float64) for f in feature_names).to_numpy()
    top = (
        np.argpartition(-contrib, k - 1, axis=1)[:, :k]
        if k < names.len()
        else np.tile(np.arange(names.len()), (frame.height, 1))
    )
    top_contrib = np.take_along_axis(contrib, top, axis=1)
    order = np.argsort(-top_contrib, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    top_contrib = np.take_along_axis(top_contrib, order, axis=1)
    top_values = np.take_along_axis(values, top, axis=1)
    raw: dict[str, pl.Series] = {}
    for i in range(k):  # loop over the k output slots, not over rows
        slot = f"reason_{i + 1}"
        raw[slot] = names.gather(top[:, i])
        raw[f"{slot}_value"] = pl.Series(top_values[:, i], dtype=pl.Float64).fill_nan(None)
        raw[f"{slot}_contribution"] = pl.Series(top_contrib[:, i], dtype=pl.Float64)
    reasons = pl.DataFrame(raw).with_columns(
        pl.when(pl.col(f"reason_{i + 1}_contribution") > 0).then(pl.col(c)).alias(c)
        for i in range(k)
        for c in (f"reason_{i + 1}", f"reason_{i + 1}_value", f"reason_{i + 1}_contribution")
    )
    keys = [c for c in KEYS if c in frame.columns]
    return pl.concat([frame.select(keys), reasons], how="horizontal")


# --------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """Everything the tracking and scoring steps need from one training run."""

    booster: xgb.Booster
    feature_names: list[str]
    plan: SplitPlan
    params: ModelParams
    best_iteration: int
    metrics: dict[str, float]  # out-of-time test metrics of the model
    baselines: dict[str, dict[str, float]]  # OOT metrics per baseline rule
    valid_metrics: dict[str, float]
    test_frame: pl.DataFrame  # reference_date, seller_id, churned, score
    importance: pl.DataFrame  # feature, gain (share of total gain), mean_abs_contribution
    figures: dict[str, Figure]
    n_rows: dict[str, int]
    fit_seconds: float
    input_example: pl.DataFrame  # a few OOT feature rows (Float64), for the model signature
    extra: dict[str, Any] = field(default_factory=dict)

    def comparison_table(self) -> pl.DataFrame:
        """One row per scorer (model and baselines), one column per OOT metric."""
        rows = [{"scorer": "model", **self.metrics}]
        rows += [{"scorer": name, **m} for name, m in self.baselines.items()]
        return pl.DataFrame(rows)


def _importance(
    booster: xgb.Booster, feature_names: list[str], contrib: np.ndarray
) -> pl.DataFrame:
    gain = booster.get_score(importance_type="total_gain")
    total = sum(gain.values()) or 1.0
    return pl.DataFrame(
        {
            "feature": feature_names,
            "gain": [gain.get(f, 0.0) / total for f in feature_names],
            "mean_abs_contribution": np.abs(contrib).mean(axis=0).astype(np.float64),
        }
    ).sort("gain", "mean_abs_contribution", descending=True)


def _figures(
    y: np.ndarray, scores: dict[str, np.ndarray], importance: pl.DataFrame
) -> dict[str, Figure]:
    gain = dict(zip(importance["feature"], importance["gain"], strict=True))
    contrib = dict(zip(importance["feature"], importance["mean_abs_contribution"], strict=True))
    return {
        "roc_pr": plots.roc_pr_figure(y, scores),
        "calibration": plots.calibration_figure(y, scores),
        "lift": plots.lift_figure(y, scores),
        "importance": plots.importance_figure(gain, contrib),
    }


def train_churn_model(
    abt: pl.DataFrame, plan: SplitPlan, params: ModelParams | None = None
) -> TrainResult:
    """Fit on the train cohorts, early-stop on valid, evaluate out of time on test."""
    params = params or ModelParams()
    names = feature_columns(abt)
    blocks = split_frames(abt, plan)
    for block, frame in blocks.items():
        _check_block(block, frame)
    dtrain = _dmatrix(blocks["train"], names, labelled=True)
    dvalid = _dmatrix(blocks["valid"], names, labelled=True)
    started = time.perf_counter()
    booster, best = _fit(dtrain, dvalid, params)
    fit_seconds = time.perf_counter() - started

    test = blocks["test"]
    y_test = test.get_column(LABEL).to_numpy()
    score = predict(booster, test, names)
    train_rate = float(blocks["train"].get_column(LABEL).mean())
    rules = baseline_scores(test, train_base_rate=train_rate)
    importance = _importance(booster, names, contributions(booster, test, names))
    return TrainResult(
        booster=booster,
        feature_names=names,
        plan=plan,
        params=params,
        best_iteration=best,
        metrics=evaluate_scores(y_test, score),
        baselines={name: evaluate_scores(y_test, s) for name, s in rules.items()},
        valid_metrics=evaluate_scores(dvalid.get_label(), booster.predict(dvalid)),
        test_frame=test.select(*KEYS, LABEL).with_columns(pl.Series("score", score, pl.Float64)),
        importance=importance,
        figures=_figures(y_test, {"model": score, **rules}, importance),
        n_rows={block: frame.height for block, frame in blocks.items()},
        fit_seconds=fit_seconds,
        input_example=test.head(5).select(pl.col(n).cast(pl.Float64) for n in names),
    )


def tune_params(
    abt: pl.DataFrame,
    plan: SplitPlan,
    grid: Mapping[str, Sequence[Any]],
    *,
    base: ModelParams | None = None,
    metric: str = "roc_auc",
) -> tuple[ModelParams, pl.DataFrame]:
    """Grid search on the validation cohorts only; the test cohorts are never read.

    Each combination of `grid` (ModelParams field -> candidate values, over `base`) is
    trained on train and early-stopped and scored on valid. Returns the best params and
    one row per combination, best first.
    """
    base = base or ModelParams()
    known = {f.name for f in fields(ModelParams)}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ValueError(f"tune_params: unknown parameter(s) {unknown}; known: {sorted(known)}")
    names = feature_columns(abt)
    blocks = split_frames(abt.filter(~pl.col("reference_date").is_in(plan.test)), plan)
    for block in ("train", "valid"):
        _check_block(block, blocks[block])
    dtrain = _dmatrix(blocks["train"], names, labelled=True)
    dvalid = _dmatrix(blocks["valid"], names, labelled=True)
    y_valid = dvalid.get_label()
    rows: list[dict[str, Any]] = []
    for combo in itertools.product(*grid.values()):
        candidate = replace(base, **dict(zip(grid, combo, strict=True)))
        started = time.perf_counter()
        booster, best = _fit(dtrain, dvalid, candidate)
        scores = evaluate_scores(y_valid, booster.predict(dvalid))
        rows.append(
            {
                **dict(zip(grid, combo, strict=True)),
                "best_iteration": best,
                **{f"valid_{k}": v for k, v in scores.items()},
                "seconds": time.perf_counter() - started,
            }
        )
    table = pl.DataFrame(rows).sort(f"valid_{metric}", descending=metric not in LOWER_IS_BETTER)
    winner = {k: table[k][0] for k in grid}
    return replace(base, **winner), table
