"""How the account managers' risk list ranks and explains, on data `make run` prepared.

    uv run python bench/ranking.py data [OTHER_DATA_DIR ...]

For each data folder (a `make run` / `olist-churn prepare` state: warehouse and MLflow),
prints:
- ties: sellers who share a date's rank with a seller whose model score differs (the
  scores recomputed with the champion's booster from the stored features, so a table
  written before the score had a column of its own is judged the same way), over all
  scored dates and on the newest one, and the largest such group;
- probabilities of exactly 0 or 1 in the table and in the newest date's CSV export;
- reasons (of the newest date) without a catalogue meaning: the meaning column repeats
  the feature's name;
- the backtest: mean ROC AUC of the model and of the simple baseline over the cutoffs,
  and per calibration method its ECE where judged (`lib.ml.backtest.calibration_table`).

With `--directions`, also each model feature's direction as the model learns it, set
beside the catalogue's (`lib/ml/catalogue.py`): six models of the project's recipe,
trained on the ABT without its latest 0, 4 and 8 cohorts with two seeds each, give the
rank correlation of the feature's value with its TreeSHAP contribution on their
out-of-time cohorts (higher from +0.3, lower from -0.3, mixed between, none where
unused); the learned direction is the one they all agree on where half of them or more
use the feature, mixed otherwise. Prints the stated directions the models do not agree
on and the mixed ones where they do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import polars as pl

from olist_churn_dagster.lib.features.store import read_feature_tables
from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.ml.abt import feature_columns
from olist_churn_dagster.lib.ml.backtest import MODEL, SIMPLE_BASELINE, calibration_table
from olist_churn_dagster.lib.ml.catalogue import RISK_DIRECTION
from olist_churn_dagster.lib.ml.model import (
    ModelParams,
    contributions,
    fit_booster,
    plan_time_split,
    predict,
    split_frames,
)
from olist_churn_dagster.lib.ml.rhythm import model_frame
from olist_churn_dagster.lib.ml.tracking import LoadedModel, load_champion
from olist_churn_dagster.lib.settings import load_settings
from olist_churn_dagster.lib.tables import KEYS, SCORES_TABLE


def model_scores(
    conn: duckdb.DuckDBPyConnection, champion: LoadedModel, dates: list
) -> pl.DataFrame:
    """The champion booster's score of every scored seller, from the stored features."""
    settings = load_settings()
    features = model_frame(
        read_feature_tables(conn, dates),
        horizon_days=settings.churn_horizon_days,
        window_days=settings.feature_window_days,
    )
    score = predict(champion.booster, features, champion.feature_names)
    return features.select(KEYS).with_columns(pl.Series("score", score, dtype=pl.Float64))


def tie_figures(scores: pl.DataFrame) -> dict[str, int]:
    """Sellers sharing their date's rank with a seller of another score, and the largest
    such group of one rank."""
    groups = scores.group_by("reference_date", "risk_rank").agg(
        pl.len().alias("sellers"), pl.col("score").n_unique().alias("scores")
    )
    mixed = groups.filter(pl.col("scores") > 1)
    return {
        "tied_sellers": int(mixed.get_column("sellers").sum()),
        "tied_ranks": mixed.height,
        "largest_tie": int(mixed.get_column("sellers").max() or 0),
    }


def unnamed_reasons(scores: pl.DataFrame) -> int:
    """Reasons whose meaning is the feature's own name (no catalogue entry)."""
    return sum(
        scores.filter(pl.col(f"reason_{i}") == pl.col(f"reason_{i}_meaning")).height
        for i in (1, 2, 3)
    )


LEARNED = 0.3  # |rank correlation| of value and contribution from which a direction shows
# The models of the direction check: the latest monthly cohorts each leaves out, its seed.
MODELS = tuple((drop, seed) for drop in (0, 4, 8) for seed in (42, 43))


def _learned(rho: str) -> pl.Expr:
    """The direction one model shows: higher, lower, mixed, or null where it gives the
    feature no weight (no contribution, no correlation)."""
    value = pl.col(rho)
    return (
        pl.when(value.is_nan())
        .then(None)
        .when(value >= LEARNED)
        .then(pl.lit("higher"))
        .when(value <= -LEARNED)
        .then(pl.lit("lower"))
        .otherwise(pl.lit("mixed"))
    )


def span_correlations(abt: pl.DataFrame, names: list[str], drop: int, seed: int) -> pl.DataFrame:
    """One model of the project's recipe (seed `seed`), trained without the latest `drop`
    cohorts (the training split of `churn_model`): per feature, the rank correlation of
    its value with its TreeSHAP contribution on that model's out-of-time cohorts, and its
    share of the mean |contribution|."""
    cohorts = abt.get_column("reference_date").unique().sort().to_list()
    plan = plan_time_split(cohorts[: len(cohorts) - drop])
    blocks = split_frames(abt, plan)
    params = ModelParams(seed=seed)
    booster, _ = fit_booster(blocks["train"], blocks["valid"], names, params)
    rows = blocks["test"]
    contrib = pl.DataFrame(contributions(booster, rows, names), schema=names)
    values = rows.select(pl.col(n).cast(pl.Float64).alias(f"v:{n}") for n in names)
    frame = pl.concat([values, contrib], how="horizontal")
    rho = frame.select(pl.corr(f"v:{n}", n, method="spearman").alias(n) for n in names)
    weight = contrib.select(pl.all().abs().mean())
    return pl.DataFrame(
        {
            "feature": names,
            f"rho_{drop}_{seed}": rho.row(0),
            f"weight_{drop}_{seed}": [w / sum(weight.row(0)) for w in weight.row(0)],
        },
        schema_overrides={f"rho_{drop}_{seed}": pl.Float64},
    )


def learned_directions(data_dir: Path) -> pl.DataFrame:
    """Per model feature: the catalogue's direction, each model's, and the direction they
    agree on (mixed when one shows none, two disagree or fewer than half use it)."""
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        abt = conn.execute("SELECT * FROM ml.abt").pl()
    names = feature_columns(abt)
    table = pl.DataFrame({"feature": names})
    for drop, seed in MODELS:  # a few models
        table = table.join(span_correlations(abt, names, drop, seed), on="feature")
    rhos = [f"rho_{drop}_{seed}" for drop, seed in MODELS]
    shown = pl.concat_list(_learned(r) for r in rhos).list.drop_nulls().list.unique()
    used = pl.sum_horizontal(pl.col(r).is_not_nan() for r in rhos)
    agreed = (
        pl.when((shown.list.len() == 1) & ~shown.list.contains("mixed") & (used >= len(rhos) / 2))
        .then(shown.list.first())
        .otherwise(pl.lit("mixed"))
    )
    return (
        table.with_columns(
            pl.col("feature").replace_strict(RISK_DIRECTION, default=None).alias("catalogue"),
            agreed.alias("learned"),
        )
        .select(
            "feature",
            "catalogue",
            "learned",
            pl.concat_str(_learned(r).fill_null("-").str.head(1) for r in rhos).alias("models"),
            pl.mean_horizontal(pl.col("^weight_.*$")).alias("weight"),
        )
        .sort("weight", descending=True)
    )


def report_directions(data_dir: Path) -> None:
    table = learned_directions(data_dir)
    stated = pl.col("catalogue") != "mixed"
    contradicted = table.filter(stated & (pl.col("learned") != pl.col("catalogue")))
    unstated = table.filter(~stated & (pl.col("learned") != "mixed"))
    counts = table.group_by("catalogue", "learned").len().sort("catalogue", "learned")
    print(f"## directions, {data_dir}: learned by {len(MODELS)} models vs catalogue\n")
    print("(models: h/l/m per model, - where it gives the feature no weight; weight: mean")
    print("share of the mean |contribution|)\n")
    print(frame_to_markdown(counts))
    print(f"\n{contradicted.height} stated directions the models do not agree on:\n")
    print(frame_to_markdown(contradicted, max_rows=200))
    print(f"\n{unstated.height} mixed in the catalogue where the models agree (a share of ", end="")
    print("one state, category or payment type is mixed by definition):\n")
    print(frame_to_markdown(unstated, max_rows=200))
    print()


def report(data_dir: Path) -> None:
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        table = conn.execute(f"SELECT * FROM {SCORES_TABLE}").pl()
        dates = table.get_column("reference_date").unique().sort().to_list()
        champion = load_champion(f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}")
        scored = table.join(model_scores(conn, champion, dates), on=KEYS, how="left")
        backtest = conn.execute("SELECT * FROM ml.backtest").pl()
    newest = scored.filter(pl.col("reference_date") == dates[-1])
    export = pl.read_csv(data_dir / "exports" / "churn_scores" / f"{dates[-1]}.csv")
    p = pl.col("churn_probability")
    every, last = tie_figures(scored), tie_figures(newest)
    means = backtest.group_by("scorer").agg(pl.col("roc_auc").mean(), pl.len().alias("cutoffs"))
    auc = dict(zip(means["scorer"], means["roc_auc"], strict=True))
    print(f"## {data_dir}\n")
    print(f"- scored: {len(dates)} dates, {table.height:,} rows; newest {dates[-1]}: ", end="")
    print(f"{newest.height:,} sellers, {newest.get_column('score').n_unique():,} distinct scores")
    print(
        f"- ties (a rank shared by different scores): {every['tied_sellers']:,} sellers in "
        f"{every['tied_ranks']:,} ranks over all dates; newest date {last['tied_sellers']:,} "
        f"sellers in {last['tied_ranks']:,} ranks, largest {last['largest_tie']}"
    )
    print(
        f"- probability exactly 0 or 1: {table.filter((p == 0) | (p == 1)).height:,} rows of "
        f"the table; {export.filter((p == 0) | (p == 1)).height} rows of {dates[-1]}.csv "
        f"(columns: {', '.join(export.columns[:9])}{', ...' if export.width > 9 else ''})"
    )
    print(f"- reasons without a catalogue meaning ({dates[-1]}): {unnamed_reasons(newest):,}")
    print(
        f"- backtest mean ROC AUC over {int(means['cutoffs'].max())} cutoffs: model "
        f"{auc[MODEL]:.4f}, {SIMPLE_BASELINE} {auc[SIMPLE_BASELINE]:.4f} "
        f"(gap {auc[MODEL] - auc[SIMPLE_BASELINE]:+.4f})"
    )
    print(
        f"- calibration methods, ECE on the cutoffs where each was judged (the champion's: "
        f"{champion.calibrator.method}):\n"
    )
    print(frame_to_markdown(calibration_table(backtest)))
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", type=Path, nargs="+", help="folders `make run` prepared")
    parser.add_argument("--directions", action="store_true", help="learned risk directions")
    args = parser.parse_args()
    for data_dir in args.data_dirs:
        report(data_dir)
        if args.directions:
            report_directions(data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
