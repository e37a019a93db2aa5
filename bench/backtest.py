"""Walk-forward backtest of model candidates on generated marketplaces (prints tables).

    uv run python bench/backtest.py --scales 1 2 --seeds 42 7 --dynamics default delivery
    uv run python bench/backtest.py --scales 1 --seeds 42 --candidates model rhythm weekly
    uv run python bench/backtest.py --scales 1 --seeds 42 --candidates rhythm --tune-original

For every (scale, seed, seller dynamics) the built-in generator writes a dataset (cached
under the system temp folder), the ABT is built with the project's feature and label code
(monthly cohorts; weekly ones too when a candidate trains on them), and every candidate
is backtested over the last N mature monthly cutoffs next to the strong simple baseline
(small GBM on plain aggregates), the original recipe plus recency (a GBM on the six
original feature families' columns) and the recency rule. With --tune-original the latter's
parameters are the best of ORIGINAL_RECIPE_GRID over the 3 cutoffs before the backtest's
(else ORIGINAL_RECIPE_PARAMS). Prints the per-cutoff ROC AUC, then one summary line per
candidate: mean AUC, spread, gaps over both baselines with their 95% intervals, top-decile
precision, ECE raw and calibrated, and seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.ml.abt import LABEL, abt_from_raw, mature_cohort_dates
from olist_churn_dagster.lib.ml.backtest import (
    MODEL,
    ORIGINAL_RECIPE_BASELINE,
    ORIGINAL_RECIPE_FEATURES,
    ORIGINAL_RECIPE_GRID,
    ORIGINAL_RECIPE_PARAMS,
    SIMPLE_BASELINE,
    Recipe,
    gap,
    mean_table,
    original_recipe_baseline,
    run_backtest,
    simple_baseline,
    tune_walk_forward,
    walk_forward_plans,
)
from olist_churn_dagster.lib.ml.model import ModelParams
from olist_churn_dagster.lib.ml.rhythm import RHYTHM_FEATURES, add_rhythm_features
from olist_churn_dagster.lib.tables import KEYS

HORIZON, WINDOW = 45, 180
END = date(2026, 11, 27)  # fixed, so cached datasets and results do not move with the day
# Directions known from the label's arithmetic: longer silence, fewer orders -> more churn.
MONOTONE = {
    "sales_recency_days": 1,
    "rhythm_p_no_sale_left": 1,
    "rhythm_p_no_sale_left_30d": 1,
    "rhythm_recency_over_gap": 1,
    "sales_orders_30d": -1,
    "sales_active_days": -1,
}


def dataset(scale: float, seed: int, dynamics: str) -> dict[str, pl.DataFrame]:
    from olist_churn_dagster.generator.marketplace import generate_dataset
    from olist_churn_dagster.lib.ingest.loader import load_dataset

    folder = Path(tempfile.gettempdir()) / f"olist_bt_s{scale}_seed{seed}_{dynamics}"
    if not (folder / "_SUCCESS_bench").exists():
        generate_dataset(folder, scale=scale, seed=seed, end=END, dynamics=dynamics)
        (folder / "_SUCCESS_bench").touch()
    return load_dataset(folder)


def build_abts(raw: dict[str, pl.DataFrame], weekly: bool) -> tuple[pl.DataFrame, list[date]]:
    """The ABT over monthly cohorts (plus weekly ones when asked) and the monthly dates."""
    stamps = raw["orders"].get_column("order_purchase_timestamp")
    first, last = stamps.min().date(), stamps.max().date()
    monthly = mature_cohort_dates(first + timedelta(days=WINDOW), last, horizon_days=HORIZON)
    dates = set(monthly)
    if weekly:
        start = monthly[0]
        step = [start + timedelta(days=7 * k) for k in range(200)]
        dates |= {
            d
            for d in step
            if d <= monthly[-1] and d - timedelta(days=1) + timedelta(days=HORIZON) < last
        }
    abt = abt_from_raw(raw, sorted(dates), window_days=WINDOW, horizon_days=HORIZON)
    return add_rhythm_features(abt, horizon_days=HORIZON, window_days=WINDOW), monthly


def cached_abt(
    scale: float, seed: int, dynamics: str, weekly: bool
) -> tuple[pl.DataFrame, list[date]]:
    """build_abts of the generated dataset, kept as Parquet beside it for the next run."""
    tag = f"s{scale}_seed{seed}_{dynamics}_{'weekly' if weekly else 'monthly'}"
    path = Path(tempfile.gettempdir()) / f"olist_bt_abt_{tag}.parquet"
    if path.exists():
        abt = pl.read_parquet(path)
    else:
        abt, _ = build_abts(dataset(scale, seed, dynamics), weekly)
        abt.write_parquet(path)
    # Monthly cohorts are the first days of the month (weekly dates that fall on one are
    # the same cohort).
    monthly = sorted(d for d in abt.get_column("reference_date").unique() if d.day == 1)
    return abt, monthly


LAG_DAYS = (28, 56)
LAG_COLUMNS = {
    "sales": ("sales_orders", "sales_revenue", "sales_active_days", "sales_orders_30d"),
    "reviews": ("reviews_score_mean", "reviews_count"),
    "delivery": ("delivery_late_share", "delivery_late_share_30d"),
}


def with_lags(abt: pl.DataFrame, scale: float, seed: int, dynamics: str) -> pl.DataFrame:
    """`abt` plus a few features as they were 28 and 56 days earlier and the change since
    (null when the seller was not active then): the recent trajectory of the seller."""
    from olist_churn_dagster.lib.features import compute_features

    raw = dataset(scale, seed, dynamics)
    dates = abt.get_column("reference_date").unique().to_list()
    lag_dates = sorted({d - timedelta(days=k) for d in dates for k in LAG_DAYS})
    out = abt
    for family, cols in LAG_COLUMNS.items():
        past = compute_features(family, raw, lag_dates, window_days=WINDOW, horizon_days=HORIZON)
        for k in LAG_DAYS:
            shifted = past.select(
                (pl.col("reference_date") + pl.duration(days=k)).cast(pl.Date),
                "seller_id",
                *[pl.col(c).alias(f"{c}_lag{k}") for c in cols],
            )
            out = out.join(shifted, on=KEYS, how="left").with_columns(
                (pl.col(c) - pl.col(f"{c}_lag{k}")).alias(f"{c}_delta{k}") for c in cols
            )
    return out


def recipes(tuned: ModelParams) -> dict[str, tuple[Recipe, bool]]:
    """Candidate name -> (recipe, trains on weekly cohorts)."""
    base = ModelParams()
    return {
        "model": (Recipe(params=base, features=()), False),
        "rhythm": (Recipe(params=base), False),
        "weekly": (Recipe(params=base, features=()), True),
        "rhythm_weekly": (Recipe(params=base), True),
        "rhythm_monotone": (Recipe(params=base, monotone=MONOTONE), False),
        "rhythm_weekly_tuned": (Recipe(params=tuned), True),
        "tuned": (Recipe(params=tuned, features=()), False),
        "compact": (Recipe(params=base, features=("compact",)), False),
        "rhythm_lags": (Recipe(params=base), False),
        "compact_rhythm_weekly": (Recipe(params=base, features=("compact", "rhythm")), True),
        "rhythm_tuned": (Recipe(params=tuned), False),
    }


def _with_features(recipe: Recipe, abt: pl.DataFrame) -> Recipe:
    """features=() means 'the feature store's columns without the rhythm ones';
    ("compact", ...) drops the per-state, per-category and per-payment-type shares (60-odd
    sparse columns), with the rhythm ones only when "rhythm" is named too."""
    if recipe.features and recipe.features[0] == "compact":
        sparse = ("_share_state_", "_share_cat_", "payments_")
        cols = [
            c
            for c in abt.columns
            if c not in (*KEYS, LABEL)
            and not any(p in c for p in sparse)
            and ("rhythm" in recipe.features or c not in RHYTHM_FEATURES)
        ]
        return replace(recipe, features=tuple(cols))
    if recipe.features == ():
        cols = [c for c in abt.columns if c not in (*KEYS, LABEL, *RHYTHM_FEATURES)]
        return replace(recipe, features=tuple(cols))
    return recipe


def tuned_original(
    frame: pl.DataFrame, plans: list, cohorts: list[date], n_tuning: int = 3
) -> ModelParams:
    """ORIGINAL_RECIPE_GRID judged on the `n_tuning` walk-forward cutoffs before the
    backtest's first (`plans`), never on the cutoffs it is reported on."""
    first = plans[0].test[0]
    earlier = [d for d in frame.get_column("reference_date").unique().to_list() if d < first]
    tuning_plans = walk_forward_plans(
        earlier,
        n_cutoffs=n_tuning,
        horizon_days=HORIZON,
        eval_cohorts=[d for d in cohorts if d < first],
    )
    best, table = tune_walk_forward(
        frame,
        tuning_plans,
        {k: list(v) for k, v in ORIGINAL_RECIPE_GRID.items()},
        base=ORIGINAL_RECIPE_PARAMS,
        features=ORIGINAL_RECIPE_FEATURES,
    )
    cut = [p.test[0].isoformat() for p in tuning_plans]
    print(f"original recipe tuned on cutoffs {cut}:", flush=True)
    print(frame_to_markdown(table.drop("per_cutoff"), max_rows=50), flush=True)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--dynamics", nargs="+", default=["default"])
    parser.add_argument("--cutoffs", type=int, default=6)
    parser.add_argument("--candidates", nargs="+", default=["model", "rhythm"])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--eta", type=float, default=0.05)
    parser.add_argument("--mcw", type=float, default=10.0)
    parser.add_argument("--colsample", type=float, default=0.8)
    parser.add_argument("--per-cutoff", action="store_true")
    parser.add_argument(
        "--tune-original",
        action="store_true",
        help="tune the original-recipe baseline on the cutoffs before the backtest's",
    )
    parser.add_argument(
        "--baseline-weekly",
        action="store_true",
        help="train the simple baseline on the weekly cohorts too (same rows as the model)",
    )
    args = parser.parse_args(argv)
    tuned = ModelParams(
        max_depth=args.depth,
        learning_rate=args.eta,
        min_child_weight=args.mcw,
        colsample_bytree=args.colsample,
    )
    catalogue = recipes(tuned)
    unknown = set(args.candidates) - set(catalogue)
    if unknown:
        parser.error(f"unknown candidates {sorted(unknown)}; known: {sorted(catalogue)}")
    summary: list[dict] = []
    for dynamics in args.dynamics:
        for scale in args.scales:
            for seed in args.seeds:
                t0 = time.perf_counter()
                weekly = args.baseline_weekly or any(catalogue[c][1] for c in args.candidates)
                abt, monthly = cached_abt(scale, seed, dynamics, weekly)
                monthly_abt = abt.filter(pl.col("reference_date").is_in(monthly))
                prep = time.perf_counter() - t0
                plans_m = walk_forward_plans(monthly, n_cutoffs=args.cutoffs, horizon_days=HORIZON)
                base_frame = abt if args.baseline_weekly else monthly_abt
                if args.baseline_weekly:
                    plans_m = walk_forward_plans(
                        abt.get_column("reference_date").unique().to_list(),
                        n_cutoffs=args.cutoffs,
                        horizon_days=HORIZON,
                        eval_cohorts=monthly,
                    )
                original = ORIGINAL_RECIPE_PARAMS
                if args.tune_original:
                    original = tuned_original(base_frame, plans_m, monthly)
                    print(f"original recipe params: {original}", flush=True)
                base_run = run_backtest(
                    base_frame,
                    plans_m,
                    {
                        SIMPLE_BASELINE: simple_baseline(),
                        ORIGINAL_RECIPE_BASELINE: original_recipe_baseline(original),
                    },
                    calibrate=None,
                )
                base_table = base_run.table
                for name in args.candidates:
                    recipe, on_weekly = catalogue[name]
                    recipe = _with_features(recipe, abt)
                    frame = abt if on_weekly else monthly_abt
                    if name.endswith("_lags"):
                        frame = with_lags(frame, scale, seed, dynamics)
                    plans = walk_forward_plans(
                        frame.get_column("reference_date").unique().to_list(),
                        n_cutoffs=args.cutoffs,
                        horizon_days=HORIZON,
                        eval_cohorts=monthly,
                    )
                    run = run_backtest(frame, plans, {MODEL: recipe}, include_recency=False)
                    table = pl.concat(
                        [run.table, base_table.filter(pl.col("cutoff").is_in(run.cutoffs()))]
                    )
                    g = gap(table)
                    g_orig = gap(table, baseline=ORIGINAL_RECIPE_BASELINE)
                    means = mean_table(table)
                    print(frame_to_markdown(means, max_rows=20), flush=True)
                    model_row = means.filter(pl.col("scorer") == MODEL).row(0, named=True)
                    base_row = means.filter(pl.col("scorer") == SIMPLE_BASELINE).row(0, named=True)
                    rec_row = means.filter(pl.col("scorer") == "recency_rule").row(0, named=True)
                    orig_row = means.filter(pl.col("scorer") == ORIGINAL_RECIPE_BASELINE).row(
                        0, named=True
                    )
                    chosen = run.chosen_calibration()
                    cal = run.calibration()
                    ece = dict(zip(cal["method"], cal["ece"], strict=True))
                    summary.append(
                        {
                            "dynamics": dynamics,
                            "scale": scale,
                            "seed": seed,
                            "candidate": name,
                            "rows": frame.height,
                            "auc": model_row["roc_auc"],
                            "auc_sd": model_row["roc_auc_std"],
                            "auc_min": model_row["roc_auc_min"],
                            "simple_gbm": base_row["roc_auc"],
                            "original_gbm": orig_row["roc_auc"],
                            "recency": rec_row["roc_auc"],
                            "gap": g.mean,
                            "ci_low": g.ci_low,
                            "ci_high": g.ci_high,
                            "gap_min": g.min,
                            "gap_orig": g_orig.mean,
                            "orig_ci_low": g_orig.ci_low,
                            "orig_ci_high": g_orig.ci_high,
                            "gap_orig_min": g_orig.min,
                            "p10": model_row["precision_top_decile"],
                            "p10_simple": base_row["precision_top_decile"],
                            "p10_orig": orig_row["precision_top_decile"],
                            "p10_recency": rec_row["precision_top_decile"],
                            "ece_raw": ece["none"],
                            "calibration": chosen,
                            "ece_cal": ece[chosen],
                            "seconds": run.seconds,
                            "prep_s": prep,
                        }
                    )
                    print(
                        f"[{dynamics} s{scale} seed{seed}] {name}: {g.text()}; {g_orig.text()}; "
                        f"ECE raw {ece['none']:.4f}, {chosen} {ece[chosen]:.4f}; "
                        f"{run.seconds:.1f} s",
                        flush=True,
                    )
                    if args.per_cutoff:
                        wide = table.pivot(on="scorer", index="cutoff", values="roc_auc")
                        print(frame_to_markdown(wide, max_rows=50), flush=True)
    print()
    print(frame_to_markdown(pl.DataFrame(summary), max_rows=500))
    return 0


if __name__ == "__main__":
    sys.exit(main())
