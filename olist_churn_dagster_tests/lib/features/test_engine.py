"""`engine.summed_deltas` against the DuckDB GROUP BY it replaced.

The deltas per seller and day are summed with numpy instead of one DuckDB hash aggregate
over every block's delta rows; the reference below is that aggregate, written out. They
must agree row for row and bit for bit, on every family and on a plan with the edge
cases a family may not have (NULL measures, blocks with no rows, rows that end before
the first reference day, a measure shared by two blocks).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.generator.marketplace import generate_dataset
from olist_churn_dagster.lib import features
from olist_churn_dagster.lib.features import FEATURE_FAMILIES, engine
from olist_churn_dagster.lib.features.engine import Additive, Cte, FamilyPlan, Sliding
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.sales import sale_items

WINDOW, HORIZON = 180, 45


def _group_by_deltas(
    con, plan: FamilyPlan, queries: dict[str, str], window_days: int, lo: int, hi: int
) -> pl.DataFrame:
    """The reference: +value at max(s, lo), -value at e + 1 (when <= hi), the sliding
    change days p + 1 and p + window + 1 (when <= hi), summed in one GROUP BY."""
    names = engine._measure_names(plan)
    rows = []
    for i, block in enumerate(plan.additive):
        signed = ", ".join(f"{n} * sign AS {n}" for n in block.measures)
        last = f"CASE WHEN e IS NOT NULL AND e + 1 <= {hi} THEN e + 1 END"
        rows.append(
            f"SELECT sk, day, {signed} FROM (SELECT *, unnest([greatest(s, {lo}), {last}]) "
            f"AS day, unnest([1.0, -1.0]) AS sign FROM {engine.staged(f'blk{i}')}) "
            "WHERE day IS NOT NULL"
        )
    if plan.sliding:
        rows.append(
            f"SELECT sk, unnest([day + 1, day + {window_days + 1}]) AS day "
            f"FROM ({queries['extremes']})"
        )
    sums = ", ".join(f"coalesce(sum({n}), 0) AS {n}" for n in names)
    union = "\nUNION ALL BY NAME ".join(rows)
    sql = f"SELECT sk, day, {sums} FROM ({union}) WHERE day <= {hi} GROUP BY sk, day"
    return con.sql(sql).pl().sort("sk", "day")


def _both(
    frames: dict[str, pl.DataFrame], plan: FamilyPlan, dates: list[date]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    lo, hi = features._day_range(dates)
    con = features._connect(frames, dates)
    try:
        ctes, queries = engine._source_queries(
            plan, window_days=WINDOW, horizon_days=HORIZON, lo=lo, hi=hi
        )
        engine.stage_ctes(con, engine.needed_ctes(ctes, engine._roots(plan, runs=True)))
        extremes = engine.read_sources(con, queries["extremes"]) if plan.sliding else None
        mine = engine.summed_deltas(con, plan, queries, extremes, window_days=WINDOW, lo=lo, hi=hi)
        return mine, _group_by_deltas(con, plan, queries, WINDOW, lo, hi)
    finally:
        con.close()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    folder = tmp_path_factory.mktemp("engine") / "raw"
    generate_dataset(folder, scale=0.05, seed=11, start=date(2017, 1, 1), end=date(2018, 6, 30))
    return load_dataset(folder)


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_summed_deltas_equal_the_group_by(raw: dict[str, pl.DataFrame], family: str) -> None:
    plan = features.PLANS[family](WINDOW)
    frames = engine.declared_frames(plan, raw, sale_items(raw["orders"], raw["order_items"]))
    frames, _ = features._integer_sellers(frames)
    last = raw["orders"]["order_purchase_timestamp"].max().date()
    dates = [last - timedelta(days=i) for i in range(0, 300, 3)]
    mine, reference = _both(frames, plan, dates)
    assert mine.height > 1_000
    assert mine.get_column("sk").is_sorted()
    assert_frame_equal(mine, reference, check_exact=True)


def test_summed_deltas_edge_cases() -> None:
    """NULL measures count as nothing, an empty block adds only zeros, rows ending before
    the first date or after the last leave no minus row, and two blocks may feed the same
    measure."""
    t0 = datetime(2020, 1, 1, 12)
    facts = pl.DataFrame(
        {
            "seller_id": [0, 0, 1, 1, 2],
            "t": [t0 + timedelta(days=d) for d in (0, 5, 40, 41, 90)],
            "v": [3, None, 7, -2, 11],
        },
        schema={"seller_id": pl.UInt32, "t": pl.Datetime("us"), "v": pl.Int64},
    )
    sales = facts.select("seller_id", order_purchase_timestamp="t")
    day = engine.day("t")
    plan = FamilyPlan(
        columns={"facts": ("seller_id", "t", "v")},
        ctes=(Cte("facts_days", f"SELECT seller_id, {day} AS p, v FROM facts"),),
        additive=(
            Additive(source="facts_days", start="p + 1", end="p + 10", measures={"v": "v"}),
            Additive(source="facts_days", start="p + 1", end=None, measures={"n": "1"}),
            Additive(source="facts_days", start="p + 1", end="p + 3", measures={"n": "1"}),
            Additive(
                source="facts_days", start="p + 1", end=None, measures={"x": "v"}, where="FALSE"
            ),
        ),
        sliding=(Sliding(source="facts_days", day="p", aggregates={"v_max": ("max", "v")}),),
        outputs=(),
    )
    dates = [date(2020, 1, 20) + timedelta(days=i) for i in range(60)]
    mine, reference = _both({"facts": facts, "sale_items": sales}, plan, dates)
    assert mine.height > 5
    assert mine.get_column("x").to_list() == [0.0] * mine.height
    assert mine.null_count().sum_horizontal().item() == 0
    assert_frame_equal(mine, reference, check_exact=True)
