"""The risk digest: what changed in the churn scores since the previous scored date, for
the account managers who act on them.

Each reference date D is compared with the newest scored date before D (not D - 1: a day
may be unscored), so a backfill over many dates compares each with its own predecessor,
in one pass over all of them. With no earlier scored date every seller counts as new.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

import duckdb
import polars as pl

from olist_churn_dagster.lib.ml.scoring import (
    BAND_ORDER,
    REASONS_FOR_TOP_SALES_AT_RISK,
    RISK_BANDS,
    money_text,
)
from olist_churn_dagster.lib.tables import SCORES_TABLE
from olist_churn_dagster.lib.warehouse import sql_text_list

HIGH = RISK_BANDS[0][1]
TOP_N = REASONS_FOR_TOP_SALES_AT_RISK  # sellers listed by sales at risk (with reasons)
TOP_IN_TEXT = 3  # of which the chat summary names the first
SCORE_COLUMNS = (
    "reference_date",
    "seller_id",
    "churn_probability",
    "risk_band",
    "sales_at_risk",
    "reasons",  # in words, as scoring wrote them (`scoring.reasons_in_words`)
)
COLUMNS = (
    "reference_date",
    "previous_date",
    "seller_id",
    "risk_band",
    "risk_band_before",
    "move",
    "newly_high",
    "top_at_risk",
    "churn_probability",
    "probability_before",
    "sales_at_risk",
    "sales_at_risk_before",
    "reasons",
)


@dataclass(frozen=True)
class Digest:
    """`sellers`: per date, each seller newly high, moved between bands or among the top
    by sales at risk (one row, flags say which; the stored and exported table). `moves`:
    sellers per date and band move. `summary`: one row per date, with the chat's text."""

    sellers: pl.DataFrame
    moves: pl.DataFrame
    summary: pl.DataFrame

    def lists(self, day: date) -> dict[str, pl.DataFrame]:
        """The lists an account manager reads for `day`: sellers newly at high risk, band
        moves (counted and by seller) and the top sales at risk."""
        sellers = self.sellers.filter(pl.col("reference_date") == day)
        shown = ("churn_probability", "sales_at_risk", "reasons")
        bands = (pl.col("risk_band_before").alias("from"), pl.col("risk_band").alias("to"))
        return {
            "newly_high_sellers": sellers.filter(pl.col("newly_high")).select(
                "seller_id", "risk_band_before", *shown
            ),
            "band_moves": self.moves.filter(pl.col("reference_date") == day).select(
                *bands, "sellers"
            ),
            "moved_sellers": sellers.filter(pl.col("move").is_not_null()).select(
                "seller_id", *bands, "probability_before", *shown
            ),
            "top_sales_at_risk": sellers.filter(pl.col("top_at_risk").is_not_null())
            .sort("top_at_risk")
            .select("top_at_risk", "seller_id", "risk_band", *shown),
        }


def previous_scored_dates(scored: Iterable[date], dates: Iterable[date]) -> pl.DataFrame:
    """Each of `dates` (reference_date) with the newest of `scored` before it
    (previous_date; null when there is none)."""
    targets = pl.DataFrame(
        {"reference_date": sorted(set(dates))}, schema={"reference_date": pl.Date}
    )
    known = pl.DataFrame({"previous_date": sorted(set(scored))}, schema={"previous_date": pl.Date})
    return targets.join_asof(
        known,
        left_on="reference_date",
        right_on="previous_date",
        strategy="backward",
        allow_exact_matches=False,
    )


def read_scores(conn: duckdb.DuckDBPyConnection, dates: Sequence[date]) -> pl.DataFrame:
    """The scores a digest of `dates` reads: those dates and each one's previous scored
    date, the columns of SCORE_COLUMNS only."""
    scored = [
        r[0] for r in conn.execute(f"SELECT DISTINCT reference_date FROM {SCORES_TABLE}").fetchall()
    ]
    pairs = previous_scored_dates(scored, dates)
    wanted = (
        pairs.get_column("reference_date").append(pairs.get_column("previous_date")).drop_nulls()
    )
    columns = ", ".join(SCORE_COLUMNS)
    keys = sql_text_list([d.isoformat() for d in wanted.unique().to_list()])
    return conn.execute(
        f"SELECT {columns} FROM {SCORES_TABLE} "
        f"WHERE list_contains({keys}, CAST(reference_date AS VARCHAR))"
    ).pl()


def _band_order(column: str) -> pl.Expr:
    return pl.col(column).replace_strict(BAND_ORDER, default=None, return_dtype=pl.Int8)


def _compared(scores: pl.DataFrame, pairs: pl.DataFrame, top_n: int) -> pl.DataFrame:
    """Every seller scored on a digest date, beside its own row of the previous date,
    with the move, the newly-high flag and the rank by sales at risk (top `top_n`)."""
    before = scores.select(
        pl.col("reference_date").alias("previous_date"),
        "seller_id",
        pl.col("risk_band").alias("risk_band_before"),
        pl.col("churn_probability").alias("probability_before"),
        pl.col("sales_at_risk").alias("sales_at_risk_before"),
    )
    up, down = (
        _band_order("risk_band") > _band_order("risk_band_before"),
        _band_order("risk_band") < _band_order("risk_band_before"),
    )
    by_money = (
        pl.col("sales_at_risk").rank("ordinal", descending=True).over("reference_date")
    ).cast(pl.Int64)
    return (
        scores.join(pairs, on="reference_date")
        .join(before, on=["previous_date", "seller_id"], how="left")
        .sort("reference_date", "seller_id")
        .with_columns(
            pl.when(up).then(pl.lit("up")).when(down).then(pl.lit("down")).alias("move"),
            ((pl.col("risk_band") == HIGH) & ~pl.col("risk_band_before").eq_missing(HIGH)).alias(
                "newly_high"
            ),
            pl.when(by_money <= top_n).then(by_money).alias("top_at_risk"),
        )
    )


def _summary(compared: pl.DataFrame, scores: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Per date: sellers, newly high, moves up and down, sales at risk now and at the
    previous scored date (0 when there is none: everything is new) and the change."""
    now = compared.group_by("reference_date").agg(
        pl.len().alias("sellers"),
        pl.col("newly_high").sum().alias("newly_high"),
        (pl.col("move") == "up").sum().alias("moved_up"),
        (pl.col("move") == "down").sum().alias("moved_down"),
        pl.col("sales_at_risk").sum().alias("sales_at_risk"),
    )
    before = scores.group_by(pl.col("reference_date").alias("previous_date")).agg(
        pl.col("sales_at_risk").sum().alias("sales_at_risk_before")
    )
    counts = ["sellers", "newly_high", "moved_up", "moved_down"]
    return (
        pairs.join(now, on="reference_date", how="left")
        .join(before, on="previous_date", how="left")
        .with_columns(
            pl.col(counts).fill_null(0).cast(pl.Int64),
            pl.col("sales_at_risk", "sales_at_risk_before").fill_null(0.0),
        )
        .with_columns(
            (pl.col("sales_at_risk") - pl.col("sales_at_risk_before")).alias("sales_at_risk_change")
        )
        .sort("reference_date")
    )


def _texts(summary: pl.DataFrame, moves: pl.DataFrame, sellers: pl.DataFrame) -> pl.DataFrame:
    """The chat's short text per date (reference_date, text)."""
    move_list = moves.group_by("reference_date").agg(
        pl.format("{}->{} {}", "risk_band_before", "risk_band", "sellers")
        .str.join(", ")
        .alias("move_list")
    )
    top = (
        sellers.filter(pl.col("top_at_risk") <= TOP_IN_TEXT)
        .sort("reference_date", "top_at_risk")
        .group_by("reference_date", maintain_order=True)
        .agg(
            pl.format(
                "{}. {} ({}, {}){}",
                "top_at_risk",
                "seller_id",
                "risk_band",
                money_text(pl.col("sales_at_risk")),
                pl.concat_str(pl.lit(": "), "reasons").fill_null(""),
            )
            .str.join("\n")
            .alias("top_list")
        )
    )
    change = pl.col("sales_at_risk_change")
    since = pl.when(pl.col("previous_date").is_null()).then(
        pl.lit("no earlier scored date: every seller counts as new")
    )
    since = since.otherwise(pl.format("compared with {}", "previous_date"))
    direction = (
        pl.when(pl.col("previous_date").is_null())
        .then(pl.lit(""))
        .when(change > 0)
        .then(pl.concat_str(pl.lit(", up "), money_text(change)))
        .when(change < 0)
        .then(pl.concat_str(pl.lit(", down "), money_text(-change)))
        .otherwise(pl.lit(", unchanged"))
    )
    lines = [
        pl.format("Churn risk digest for {} ({})", "reference_date", since),
        pl.concat_str(pl.lit("Sales at risk: "), money_text(pl.col("sales_at_risk")), direction),
        pl.format(
            "Sellers newly at high risk: {}. Band moves: {} up, {} down{}",
            "newly_high",
            "moved_up",
            "moved_down",
            pl.concat_str(pl.lit(" ("), "move_list", pl.lit(")")).fill_null(""),
        ),
        pl.concat_str(pl.lit("Top by sales at risk:\n"), "top_list").fill_null(""),
    ]
    return (
        summary.join(move_list, on="reference_date", how="left")
        .join(top, on="reference_date", how="left")
        .select(
            "reference_date", pl.concat_str(lines, separator="\n").str.strip_chars().alias("text")
        )
    )


def risk_digest(scores: pl.DataFrame, dates: Sequence[date], *, top_n: int = TOP_N) -> Digest:
    """The digest of each of `dates` against its previous scored date, vectorised over all
    of them. `scores` holds the scores (SCORE_COLUMNS) of those dates and of each one's
    previous scored date (`read_scores`); the previous date is the newest of its dates
    before each one. Band moves count sellers scored on both dates; a seller not scored
    before (newly active) and now high is newly high."""
    pairs = previous_scored_dates(scores.get_column("reference_date").unique(), dates)
    compared = _compared(scores, pairs, top_n)
    sellers = (
        compared.filter(
            pl.col("newly_high")
            | pl.col("move").is_not_null()
            | pl.col("top_at_risk").is_not_null()
        )
        .select(COLUMNS)
        .sort("reference_date", "sales_at_risk", "seller_id", descending=[False, True, False])
    )
    moves = (
        compared.filter(pl.col("move").is_not_null())
        .group_by("reference_date", "move", "risk_band_before", "risk_band")
        .agg(pl.len().cast(pl.Int64).alias("sellers"))
        .sort(
            "reference_date",
            "move",
            "risk_band_before",
            "risk_band",
            descending=[False, True, False, False],
        )
    )
    summary = _summary(compared, scores, pairs)
    summary = summary.join(_texts(summary, moves, sellers), on="reference_date", how="left")
    return Digest(sellers=sellers, moves=moves, summary=summary)
