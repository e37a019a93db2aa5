"""The engine behind the seller feature tables: interval sums and sliding extremes.

Every feature is built from two kinds of columnar pieces, so that one pass serves any
number of reference dates at a cost that grows with the data, not with dates x data:

* `Additive`: integer measures that a source row contributes to every reference date D in
  a closed interval of days [start, end] (end NULL = for ever). Point-in-time rules become
  interval bounds: a fact with timestamp t is known at D exactly when t < D, i.e. from day
  `known(t)` = date(t) + 1 on. Each row emits +value at `start` and -value at `end + 1`;
  a running sum per seller over days, read with an ASOF join at each D, is then the sum
  over the rows whose interval holds D. Distinct counts use the same trick (an occurrence
  counts from its day + 1 until the next occurrence of the same key or the window's end).
  Measures are integers (money in micro-reais, durations in milliseconds) carried as
  DOUBLE: every partial sum is an integer below 2**53, so the sums are exact whatever the
  order of addition (the as-of-snapshot equality holds to the last bit), and a window
  that emptied is exactly zero, not a rounding residue.
* `Sliding`: min/max over rows whose purchase day lies in [D - window, D - 1]. They can
  only change on a day a row enters or leaves the window, so they are computed on those
  days only (rolling windows) and read like the sums.

Both land in one per-seller `timeline` (a row per day on which anything changes), read at
each reference date with one ASOF join against the active-seller spine. DuckDB builds the
spine and the delta rows (one SQL text per family, over all dates) and evaluates the
output expressions; polars does the group-by, running sums, rolling extremes and the ASOF
join, which on this many columns is an order of magnitude faster than DuckDB's window
operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import polars as pl

EPOCH = "DATE '1970-01-01'"
MICRO = 1_000_000  # micro-units per real (money) in the integer measures
MS_PER_DAY = 86_400 * 1_000


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column, as documented in the catalogue and shown as a reason name."""

    family: str
    name: str
    meaning: str
    window: str
    unit: str


@dataclass(frozen=True, kw_only=True)
class Additive:
    """Integer measures of `source` rows, counted for every D in [start, end]."""

    source: str
    start: str
    end: str | None
    measures: dict[str, str]
    where: str = "TRUE"


@dataclass(frozen=True, kw_only=True)
class Sliding:
    """Extremes of `source` rows whose `day` is in the window: name -> (min|max, expr)."""

    source: str
    day: str
    aggregates: dict[str, tuple[str, str]]


@dataclass(frozen=True)
class Output:
    """One output column: its catalogue entry, polars dtype and SQL over the measures."""

    spec: FeatureSpec
    dtype: type[pl.DataType]
    sql: str


@dataclass(frozen=True, kw_only=True)
class FamilyPlan:
    """Everything one family's query needs."""

    tables: tuple[str, ...]
    ctes: str
    additive: tuple[Additive, ...]
    sliding: tuple[Sliding, ...]
    outputs: tuple[Output, ...]


def day(ts: str) -> str:
    """SQL: epoch day number of a timestamp or date."""
    return f"(CAST({ts} AS DATE) - {EPOCH})"


def to_date(day_number: str) -> str:
    """SQL: the DATE of an epoch day number."""
    return f"({EPOCH} + CAST({day_number} AS INTEGER))"


def known(ts: str) -> str:
    """SQL: first reference day D at which the timestamp lies strictly before D 00:00."""
    return f"({day(ts)} + 1)"


def micro(value: str) -> str:
    """SQL: a money value as integer micro-reais (exact sums, deterministic shares)."""
    return f"CAST(round({value} * {MICRO}) AS BIGINT)"


def ratio(num: str, den: str) -> str:
    """SQL: num / den as DOUBLE; NULL instead of inf or NaN when den is 0 or NULL."""
    return f"(CAST({num} AS DOUBLE) / CAST(NULLIF({den}, 0) AS DOUBLE))"


def distinct_runs(name: str, source: str, keys: str, day_expr: str, where: str = "TRUE") -> str:
    """SQL CTE: distinct (seller, keys, day) with the next day of the same key (`nd`).

    An occurrence on day d counts towards the distinct count at D for D in
    [d + 1, least(nd, d + window)]: it is then the latest occurrence before D and inside
    the window.
    """
    return f"""{name} AS (
  SELECT seller_id, d, lead(d) OVER (PARTITION BY seller_id, {keys} ORDER BY d) AS nd
  FROM (SELECT DISTINCT seller_id, {keys}, {day_expr} AS d FROM {source} WHERE {where})
)"""


def spine_ctes(horizon_days: int, lo: int, hi: int) -> str:
    """SQL CTEs `seller_keys` and `spine`: active sellers per date from `sale_items`.

    A sale day d with next sale day nd makes the seller active with last sale d for
    D in [d + 1, least(nd, d + horizon)]; those days (clipped to [lo, hi], the first and
    last reference day) are generated and matched to `dates`, so the cost follows the
    output, not dates x sellers. The seller's first sale day rides along. `seller_keys`
    numbers the sellers with a sale in seller_id order (integer keys make the polars
    steps several times faster than string keys, and keep the same order).
    """
    return f"""sale_days AS (
  SELECT DISTINCT seller_id, {day("order_purchase_timestamp")} AS d
  FROM sale_items WHERE order_purchase_timestamp < {to_date(str(hi))}
),
runs AS (
  SELECT seller_id, d,
         lead(d) OVER (PARTITION BY seller_id ORDER BY d) AS nd,
         min(d) OVER (PARTITION BY seller_id) AS first_d
  FROM sale_days
),
seller_keys AS (
  SELECT seller_id, row_number() OVER (ORDER BY seller_id) AS sk
  FROM (SELECT DISTINCT seller_id FROM sale_days)
),
spine AS (
  SELECT g.D, r.seller_id, r.d AS last_d, r.first_d
  FROM runs r,
       unnest(range(greatest(r.d + 1, {lo}), least(r.nd, r.d + {horizon_days}, {hi}) + 1)) AS g(D)
  JOIN dates q ON q.D = g.D
)"""


def _measure_names(plan: FamilyPlan) -> list[str]:
    names: list[str] = []
    for block in plan.additive:
        names += [n for n in block.measures if n not in names]
    return names


def _delta_rows(
    plan: FamilyPlan, window_days: int, lo: int, hi: int
) -> tuple[list[str], list[str]]:
    """CTEs `blk<i>` and the SELECTs of the +/- delta rows and sliding change points."""
    ctes, rows = [], []
    for i, block in enumerate(plan.additive):
        cols = ", ".join(f"CAST({expr} AS DOUBLE) AS {n}" for n, expr in block.measures.items())
        end = block.end or "NULL"
        ctes.append(f"""blk{i} AS (
  SELECT * FROM (
    SELECT sk, {block.start} AS s, {end} AS e, {cols}
    FROM {block.source} JOIN seller_keys USING (seller_id)
    WHERE {block.where}
  ) WHERE s <= {hi} AND (e IS NULL OR (e >= s AND e >= {lo}))
)""")
        plus = ", ".join(block.measures)
        minus = ", ".join(f"-{n} AS {n}" for n in block.measures)
        before = ", ".join(f"sum({n}) AS {n}" for n in block.measures)
        # No date before `lo` is read, so rows that started earlier collapse into one row
        # per seller on day `lo`: a batch's cost then follows its own days, not the
        # history before them (lifetime measures would otherwise carry all of it).
        rows.append(f"SELECT sk, s AS day, {plus} FROM blk{i} WHERE s >= {lo}")
        rows.append(f"SELECT sk, {lo} AS day, {before} FROM blk{i} WHERE s < {lo} GROUP BY sk")
        rows.append(
            f"SELECT sk, e + 1 AS day, {minus} FROM blk{i} WHERE e IS NOT NULL AND e + 1 <= {hi}"
        )
    # A sliding extreme can only change on a day a row enters (p + 1) or leaves
    # (p + window + 1) the window, so those days must be rows of the timeline.
    for block in plan.sliding:
        for shift in (1, window_days + 1):
            rows.append(
                f"SELECT sk, {block.day} + {shift} AS day "
                f"FROM {block.source} JOIN seller_keys USING (seller_id) "
                f"WHERE {_in_reach(block, window_days, lo, hi)} AND {block.day} + {shift} <= {hi}"
            )
    return ctes, rows


def _in_reach(block: Sliding, window_days: int, lo: int, hi: int) -> str:
    return f"{block.day} BETWEEN {lo - window_days} AND {hi - 1}"


def _source_queries(
    plan: FamilyPlan, *, window_days: int, horizon_days: int, lo: int, hi: int
) -> dict[str, str]:
    """The family's SQL: the spine, the delta rows, and the per-day extremes rows."""
    ctes, rows = _delta_rows(plan, window_days, lo, hi)
    with_sql = "WITH " + ",\n".join([spine_ctes(horizon_days, lo, hi), plan.ctes, *ctes])
    queries = {
        "spine": f"{with_sql}\nSELECT * FROM spine JOIN seller_keys USING (seller_id) "
        "ORDER BY D, sk",
        "deltas": with_sql + "\n" + "\nUNION ALL BY NAME ".join(rows),
    }
    if plan.sliding:
        parts = []
        for block in plan.sliding:
            cols = ", ".join(f"{fn}({e}) AS {n}" for n, (fn, e) in block.aggregates.items())
            parts.append(
                f"SELECT sk, {block.day} AS day, {cols} "
                f"FROM {block.source} JOIN seller_keys USING (seller_id) "
                f"WHERE {_in_reach(block, window_days, lo, hi)} GROUP BY sk, {block.day}"
            )
        queries["extremes"] = with_sql + "\n" + "\nUNION ALL BY NAME ".join(parts)
    return queries


def _running_sums(deltas: pl.DataFrame, names: list[str]) -> pl.LazyFrame:
    """Per seller, one row per day on which a measure changes, with its running total."""
    return (
        deltas.lazy()
        .group_by("sk", "day")
        .agg(pl.col(names).sum())
        .sort("sk", "day")
        .with_columns(pl.col(names).cum_sum().over("sk"))
    )


def _with_extremes(
    timeline: pl.LazyFrame, extremes: pl.DataFrame, plan: FamilyPlan, window_days: int
) -> pl.LazyFrame:
    """Add, to every timeline row on day t, the extremes of the rows of days [t - W, t - 1].

    The extremes rows ride along in the same per-seller, day-ordered sequence with
    `is_q` false; rolling windows closed on the left exclude day t itself.
    """
    size = f"{window_days}i"
    rolled = [
        getattr(pl.col(n), f"rolling_{fn}_by")("day", window_size=size, closed="left")
        .over("sk")
        .alias(n)
        for block in plan.sliding
        for n, (fn, _) in block.aggregates.items()
    ]
    names = [n for block in plan.sliding for n in block.aggregates]
    queries = timeline.select("sk", "day", is_q=pl.lit(True))
    combined = pl.concat(
        [queries, extremes.lazy().with_columns(is_q=pl.lit(False))], how="diagonal_relaxed"
    )
    at_queries = (
        combined.sort("sk", "day", "is_q")
        .with_columns(rolled)
        .filter("is_q")
        .select("sk", "day", *names)
    )
    return timeline.join(at_queries, on=["sk", "day"], how="left")


def run_plan(
    con: duckdb.DuckDBPyConnection,
    plan: FamilyPlan,
    *,
    window_days: int,
    horizon_days: int,
    lo: int,
    hi: int,
) -> pl.DataFrame:
    """All dates of one family: sources in DuckDB, the timeline in polars, outputs in SQL.

    `lo` and `hi` are the first and last reference day (epoch days) in the registered
    `dates` table; rows that cannot touch a date in [lo, hi] are pruned early. The ASOF
    join keeps the spine's order (date, then seller), so the output comes out sorted.
    """
    queries = _source_queries(
        plan, window_days=window_days, horizon_days=horizon_days, lo=lo, hi=hi
    )
    names = _measure_names(plan)
    spine = con.sql(queries["spine"]).pl()
    timeline = _running_sums(con.sql(queries["deltas"]).pl(), names)
    if plan.sliding:
        extremes = con.sql(queries["extremes"]).pl()
        timeline = _with_extremes(timeline, extremes, plan, window_days)
    values = (
        spine.lazy()
        .join_asof(
            timeline.sort("day"),
            left_on="D",
            right_on="day",
            by="sk",
            strategy="backward",
            check_sortedness=False,
        )
        .with_columns(pl.col(names).fill_null(0.0))
        .collect()
    )
    con.register("f", values)
    outputs = ",\n  ".join(
        f"CAST({o.sql} AS {'BIGINT' if o.dtype is pl.Int64 else 'DOUBLE'}) AS {o.spec.name}"
        for o in plan.outputs
    )
    return con.sql(f"SELECT {to_date('D')} AS reference_date, seller_id,\n  {outputs}\nFROM f").pl()


def output_schema(outputs: Sequence[Output]) -> dict[str, pl.DataType]:
    """The fixed output schema: keys, then every feature with its dtype."""
    schema: dict[str, pl.DataType] = {"reference_date": pl.Date(), "seller_id": pl.String()}
    schema.update({o.spec.name: o.dtype() for o in outputs})
    return schema
