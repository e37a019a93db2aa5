"""A family plan declares what its SQL reads, and its SQL sees nothing else.

The raw columns of each table (`FamilyPlan.columns`) and the CTEs each CTE reads
(`Cte.reads`) are declarations, not read back from the SQL: a plan whose SQL reads
something it does not declare must fail loudly, naming what it read, never compute from
whatever happens to be there. (That the declared columns suffice for every family is
`test_memory.test_only_the_source_columns_are_needed`.)
"""

from __future__ import annotations

import dataclasses
from datetime import date, timedelta

import polars as pl
import pytest

from olist_churn_dagster.generator.marketplace import generate_dataset
from olist_churn_dagster.lib.features import FEATURE_FAMILIES, compute_features, source_columns
from olist_churn_dagster.lib.features.engine import Additive, Cte, FamilyPlan, PlanError
from olist_churn_dagster.lib.features.families import PLANS
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.ingest.schema import TABLES


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    folder = tmp_path_factory.mktemp("declarations") / "raw"
    generate_dataset(folder, scale=0.05, seed=5, start=date(2017, 1, 1), end=date(2017, 12, 31))
    return load_dataset(folder)


def _dates(raw: dict[str, pl.DataFrame]) -> list[date]:
    last = raw["orders"]["order_purchase_timestamp"].max().date()
    return [last - timedelta(days=i) for i in range(0, 60, 10)]


def _compute_with(
    monkeypatch: pytest.MonkeyPatch,
    raw: dict[str, pl.DataFrame],
    family: str,
    plan: FamilyPlan,
) -> pl.DataFrame:
    monkeypatch.setitem(PLANS, family, lambda _window: plan)
    return compute_features(family, raw, _dates(raw))


def _cte(plan: FamilyPlan, name: str) -> int:
    return [c.name for c in plan.ctes].index(name)


def _with_cte(plan: FamilyPlan, name: str, **changes: object) -> FamilyPlan:
    ctes = list(plan.ctes)
    i = _cte(plan, name)
    ctes[i] = dataclasses.replace(ctes[i], **changes)
    return dataclasses.replace(plan, ctes=tuple(ctes))


def test_a_family_computes_with_its_own_plan_replaced(
    raw: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The harness of the tests below: an unchanged plan passed in computes its rows."""
    expected = compute_features("reviews", raw, _dates(raw))
    assert expected.height > 50
    got = _compute_with(monkeypatch, raw, "reviews", PLANS["reviews"](180))
    assert got.equals(expected)


def test_an_undeclared_raw_column_fails_naming_it(
    raw: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sale_reviews` reads the comment title: without it in the plan's columns, the CTE
    does not bind, although the raw table passed in has the column."""
    plan = PLANS["reviews"](180)
    kept = tuple(c for c in plan.columns["order_reviews"] if c != "review_comment_title")
    pruned = dataclasses.replace(plan, columns={**plan.columns, "order_reviews": kept})
    assert "review_comment_title" in raw["order_reviews"].columns
    with pytest.raises(PlanError, match=r"CTE 'sale_reviews' does not bind.*review_comment_title"):
        _compute_with(monkeypatch, raw, "reviews", pruned)


def test_an_undeclared_order_items_column_read_through_sale_items_fails(
    raw: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of `sale_items` a plan sees the sale's keys and the order items' columns it
    declares: the sales family reads the price there."""
    plan = PLANS["sales"](180)
    pruned = dataclasses.replace(plan, columns={"order_items": ("product_id",)})
    with pytest.raises(PlanError, match=r"CTE 'sale_lines' does not bind.*price"):
        _compute_with(monkeypatch, raw, "sales", pruned)


def test_an_undeclared_raw_table_fails_naming_it(
    raw: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = PLANS["customers"](180)
    columns = {t: c for t, c in plan.columns.items() if t != "sellers"}
    with pytest.raises(PlanError, match=r"CTE 'customer_orders' does not bind.*sellers"):
        _compute_with(monkeypatch, raw, "customers", dataclasses.replace(plan, columns=columns))


def test_a_cte_read_without_declaring_it_fails_even_when_staged(
    raw: dict[str, pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`reviewed_orders` reads `sale_reviews`, which the blocks read too, so it is staged
    before `reviewed_orders` either way: declaring another CTE instead must still fail."""
    plan = PLANS["reviews"](180)
    assert _cte(plan, "sale_reviews") < _cte(plan, "reviewed_orders")
    assert any(block.source == "sale_reviews" for block in plan.additive)
    wrong = _with_cte(plan, "reviewed_orders", reads=("sold_orders",))
    with pytest.raises(PlanError, match=r"CTE 'reviewed_orders' does not bind.*sale_reviews"):
        _compute_with(monkeypatch, raw, "reviews", wrong)


def test_a_read_of_no_declared_cte_fails_when_the_plan_is_built() -> None:
    plan = PLANS["reviews"](180)
    with pytest.raises(PlanError, match=r"'sold_orders' reads \['sale_reviewz'\]"):
        _with_cte(plan, "sold_orders", reads=("sale_reviewz",))
    # a CTE declared after its reader is not there when the reader is staged
    with pytest.raises(PlanError, match=r"'sale_reviews' reads \['reviewed_orders'\]"):
        _with_cte(plan, "sale_reviews", reads=("sold_orders", "reviewed_orders"))
    with pytest.raises(PlanError, match="declared twice"):
        dataclasses.replace(plan, ctes=(*plan.ctes, Cte("runs", "SELECT 1")))


def test_a_block_of_no_declared_source_fails_when_the_plan_is_built() -> None:
    plan = PLANS["payments"](180)
    block = Additive(source="order_reviews", start="1", end=None, measures={"n": "1"})
    with pytest.raises(PlanError, match="a block reads 'order_reviews'"):
        dataclasses.replace(plan, additive=(*plan.additive, block))


@pytest.mark.parametrize("family", FEATURE_FAMILIES)
def test_declared_columns_exist_in_the_raw_schema(family: str) -> None:
    """A misspelt declaration would silently drop out of `source_columns`."""
    for table, columns in PLANS[family](180).columns.items():
        assert set(columns) <= set(TABLES[table].columns), (table, columns)
        assert set(columns) <= set(source_columns(family)[table])
