"""One reference date's features from its window's rows and a per-seller state kept in the
warehouse, instead of from all history: the daily run's path.

A feature of date D reads only the orders purchased in the `reach` days before D (reach =
the larger of the feature window and the activity horizon), except the lifetime ones
(sales: lifetime orders and revenue, and the first sale day behind tenure and the week
share). Those are sums over sale rows and a minimum, so the rows purchased before the
cutoff c = D - reach collapse into one row per seller: `features._seller_lifetime` holds
each seller's first sale day and lifetime measures over the sales purchased before c
(c itself is in `features._seller_lifetime_cutoff`).

The rows of D come from the families' own plans, evaluated at D alone (`point_sql`): an
additive measure is the sum over the rows whose interval holds D, an extreme the min or
max over the window, the state's measures are added and its first sale day taken when
earlier. That is what the engine's timeline reads at D; the measures are integers, so
the sums are exact whatever their order and the rows equal a full computation cell for
cell (the tests compare them on several dates and after corrections). It runs inside the
warehouse over views of the window's rows, so nothing else is read.

Keeping the state right (the feature path owns the state: the raw load never writes it):
- a later date moves the cutoff forward by adding the sales purchased in between; an
  earlier date gets a state computed from history for it alone (not stored);
- a raw load logs the sellers whose order or item rows it inserted, changed or deleted,
  with their earliest such purchase (`ingest.sale_changes`, see `lib.ingest.delta`);
  before the state is read, `catch_up` recomputes from their whole history (`repair`)
  those whose change reaches before the cutoff (a correction, a late row), or drops the
  state (`reset`) after a load that replaced the sale tables whole (the next date rebuilds
  it from all history), and deletes the entries it read: in the feature run's
  transaction, so a failed run leaves the log for the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta

import duckdb
import polars as pl

from olist_churn_dagster.lib.features import columns_read, feature_schema
from olist_churn_dagster.lib.features.engine import (
    Additive,
    FamilyPlan,
    cte_list,
    day,
    spine_ctes,
    to_date,
)
from olist_churn_dagster.lib.features.families import PLANS
from olist_churn_dagster.lib.ingest.delta import HASH_SCHEMA, SALE_CHANGES
from olist_churn_dagster.lib.ingest.schema import NON_SALE_STATUSES, TABLES
from olist_churn_dagster.lib.sales import sale_items
from olist_churn_dagster.lib.tables import FEATURE_SCHEMA, RAW_SCHEMA
from olist_churn_dagster.lib.warehouse import table_exists

LIFETIME_TABLE = f"{FEATURE_SCHEMA}._seller_lifetime"
CUTOFF_TABLE = f"{FEATURE_SCHEMA}._seller_lifetime_cutoff"
CHANGES_TABLE = f"{HASH_SCHEMA}.{SALE_CHANGES}"  # the raw loads' log of changed sales
FIRST_DAY = "first_d"  # the spine's column: the seller's first sale day (epoch day)
_EPOCH = date(1970, 1, 1)
# The state's rows come from sales, i.e. these two tables (see `lib.sales`).
STATE_SOURCES = ("orders", "order_items")
_FAR = 2_000_000  # an epoch day past any data: "no upper bound" for spine_ctes


def reach_days(window_days: int, horizon_days: int) -> int:
    """How far back before D a feature other than a lifetime one reads."""
    return max(window_days, horizon_days)


def epoch_day(value: date) -> int:
    return (value - _EPOCH).days


def _midnight(epoch: int) -> datetime:
    return datetime.combine(_EPOCH + timedelta(days=epoch), time())


def lifetime_blocks(plan: FamilyPlan) -> list[Additive]:
    """The blocks whose rows count for ever (no end), which the state carries. A row counts
    from the day after its purchase, so the rows purchased before the cutoff are exactly
    those counting at every date served; any other start would break that split."""
    blocks = [block for block in plan.additive if block.end is None]
    for block in blocks:
        if block.start != "purchase_day + 1":
            raise NotImplementedError(
                f"lifetime measures {list(block.measures)} start at {block.start!r}: the "
                "incremental state only carries rows counting from the day after purchase"
            )
    if blocks and not set(plan.tables) <= set(STATE_SOURCES):
        raise NotImplementedError(
            f"lifetime measures read {plan.tables}: the state is repaired only for "
            f"changes to {STATE_SOURCES}"
        )
    return blocks


def needs_state(family: str, window_days: int) -> bool:
    """Whether the family reads anything from before its window (lifetime measures or the
    first sale day)."""
    plan = PLANS[family](window_days)
    return bool(lifetime_blocks(plan)) or any(FIRST_DAY in o.sql for o in plan.outputs)


def _measure_names(window_days: int) -> list[str]:
    names: list[str] = []
    for family in PLANS:
        for block in lifetime_blocks(PLANS[family](window_days)):
            names += [n for n in block.measures if n not in names]
    return names


def _state_schema(window_days: int) -> dict[str, pl.DataType]:
    return {
        "seller_id": pl.String(),
        FIRST_DAY: pl.Int64(),
        **{n: pl.Float64() for n in _measure_names(window_days)},
    }


def summarize(
    orders: pl.DataFrame, order_items: pl.DataFrame, *, window_days: int, horizon_days: int
) -> pl.DataFrame:
    """Per seller with a sale among these rows: the first sale day and the lifetime
    measures, every row counted (give it the rows purchased before the cutoff)."""
    schema = _state_schema(window_days)
    con = duckdb.connect(":memory:")
    try:
        con.register("orders", orders)
        con.register("order_items", order_items)
        con.register("sale_items", sale_items(orders, order_items))
        con.register("dates", pl.DataFrame(schema={"D": pl.Int64}))
        purchase_day = day("order_purchase_timestamp")
        out = con.sql(
            f"SELECT seller_id, min({purchase_day}) AS {FIRST_DAY} FROM sale_items GROUP BY 1"
        ).pl()
        for family in PLANS:
            plan = PLANS[family](window_days)
            with_sql = "WITH " + cte_list([*spine_ctes(horizon_days, 0, _FAR), *plan.ctes])
            for block in lifetime_blocks(plan):
                sums = ", ".join(
                    f"sum(CAST({expr} AS DOUBLE)) AS {name}"
                    for name, expr in block.measures.items()
                )
                part = con.sql(
                    f"{with_sql}\nSELECT seller_id, {sums} FROM {block.source} "
                    f"WHERE {block.where} GROUP BY seller_id"
                ).pl()
                out = out.join(part, on="seller_id", how="left")
    finally:
        con.close()
    measures = [n for n in schema if n not in ("seller_id", FIRST_DAY)]
    out = out.with_columns(pl.col(measures).fill_null(0.0))
    return out.select(pl.col(c).cast(t) for c, t in schema.items()).sort("seller_id")


def _add(state: pl.DataFrame, more: pl.DataFrame) -> pl.DataFrame:
    """Two states over disjoint rows as one: sums added, the earlier first sale day."""
    measures = [c for c in state.columns if c not in ("seller_id", FIRST_DAY)]
    joined = state.join(more, on="seller_id", how="full", coalesce=True, suffix="__more")
    return joined.select(
        "seller_id",
        pl.min_horizontal(FIRST_DAY, f"{FIRST_DAY}__more").alias(FIRST_DAY),
        *[
            (pl.col(n).fill_null(0.0) + pl.col(f"{n}__more").fill_null(0.0)).alias(n)
            for n in measures
        ],
    ).sort("seller_id")


# --------------------------------------------------------------------------- warehouse


def _table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    return table_exists(conn, *table.split("."))


def state_cutoff(conn: duckdb.DuckDBPyConnection) -> int | None:
    """The epoch day before which the stored state counts sales, or None without a state."""
    if not (_table_exists(conn, CUTOFF_TABLE) and _table_exists(conn, LIFETIME_TABLE)):
        return None
    row = conn.execute(f"SELECT max(cutoff) FROM {CUTOFF_TABLE}").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def read_state(conn: duckdb.DuckDBPyConnection, window_days: int) -> pl.DataFrame | None:
    """The stored state with today's measure columns, or None if there is none (or its
    columns are not the ones the code needs: it is then rebuilt)."""
    if state_cutoff(conn) is None:
        return None
    state = conn.execute(f"SELECT * FROM {LIFETIME_TABLE}").pl()
    schema = _state_schema(window_days)
    if list(state.columns) != list(schema):
        return None
    return state.select(pl.col(c).cast(t) for c, t in schema.items())


def _write_state(conn: duckdb.DuckDBPyConnection, state: pl.DataFrame, cutoff: int) -> None:
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{FEATURE_SCHEMA}"')
    _state = state.to_arrow()  # read by replacement scan (see `lib.warehouse.write_frame`)
    conn.execute(f"CREATE OR REPLACE TABLE {LIFETIME_TABLE} AS SELECT * FROM _state")
    conn.execute(f"CREATE OR REPLACE TABLE {CUTOFF_TABLE} AS SELECT {int(cutoff)} AS cutoff")


def reset(conn: duckdb.DuckDBPyConnection) -> None:
    """Drop the state (after the sale tables were replaced whole)."""
    conn.execute(f"DROP TABLE IF EXISTS {LIFETIME_TABLE}")
    conn.execute(f"DROP TABLE IF EXISTS {CUTOFF_TABLE}")


def _sales_rows(
    conn: duckdb.DuckDBPyConnection,
    lo: int | None,
    hi: int,
    sellers: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Orders purchased in [lo, hi) (epoch days; lo None: from the start) and their items,
    from the raw tables; only the items of `sellers` when given (and their orders)."""
    where, params = "order_purchase_timestamp < $1", [_midnight(hi)]
    if lo is not None:
        where, params = where + " AND order_purchase_timestamp >= $2", [*params, _midnight(lo)]
    orders = f"SELECT * FROM {RAW_SCHEMA}.orders WHERE {where}"
    items = f"SELECT i.* FROM {RAW_SCHEMA}.order_items i SEMI JOIN ({orders}) o USING (order_id)"
    if sellers is not None:
        _sellers = sellers.select("seller_id").to_arrow()  # read by replacement scan
        items = f"SELECT * FROM ({items}) SEMI JOIN _sellers USING (seller_id)"
        orders = f"SELECT * FROM ({orders}) SEMI JOIN ({items}) USING (order_id)"
    return conn.execute(orders, params).pl(), conn.execute(items, params).pl()


def state_at(
    conn: duckdb.DuckDBPyConnection, cutoff: int, *, window_days: int, horizon_days: int
) -> pl.DataFrame:
    """The state over the sales purchased before `cutoff`: the stored one, moved forward
    and stored again when `cutoff` is later, built from all history when there is none;
    for an earlier cutoff, built from history and not stored (the stored state serves the
    daily run, which moves forward). The raw loads logged since are caught up first."""
    kwargs = {"window_days": window_days, "horizon_days": horizon_days}
    catch_up(conn, **kwargs)
    stored, state = state_cutoff(conn), read_state(conn, window_days)
    if stored == cutoff and state is not None:
        return state
    if stored is not None and state is not None and stored < cutoff:
        state = _add(state, summarize(*_sales_rows(conn, stored, cutoff), **kwargs))
        _write_state(conn, state, cutoff)
        return state
    state = summarize(*_sales_rows(conn, None, cutoff), **kwargs)
    if stored is None or state is None or stored < cutoff:
        _write_state(conn, state, cutoff)
    return state


def repair(
    conn: duckdb.DuckDBPyConnection, sellers: pl.DataFrame, *, window_days: int, horizon_days: int
) -> int:
    """Recompute these sellers' state from their whole history before the cutoff (after a
    correction); returns how many sellers were recomputed."""
    cutoff, state = state_cutoff(conn), read_state(conn, window_days)
    sellers = sellers.select("seller_id").unique()
    if cutoff is None or state is None or sellers.is_empty():
        if cutoff is not None and state is None:
            reset(conn)  # a state of another shape: rebuilt on the next date
        return 0
    fresh = summarize(
        *_sales_rows(conn, None, cutoff, sellers),
        window_days=window_days,
        horizon_days=horizon_days,
    )
    kept = state.join(sellers, on="seller_id", how="anti")
    _write_state(conn, pl.concat([kept, fresh]).sort("seller_id"), cutoff)
    return sellers.height


def catch_up(conn: duckdb.DuckDBPyConnection, *, window_days: int, horizon_days: int) -> str:
    """Bring the stored state up to the raw loads logged since the last catch-up: dropped
    after a load that replaced the sale tables whole, else the sellers whose changed sales
    reach before the cutoff repaired; the log's entries read are then deleted. In the
    caller's transaction, so a failed run leaves state and log as they were. Returns what
    it did, for the run to report."""
    unchanged = "unchanged (no sale changed since the last run)"
    if not _table_exists(conn, CHANGES_TABLE):
        return unchanged
    log = conn.execute(f"SELECT seller_id, first_purchase FROM {CHANGES_TABLE}").pl()
    if log.is_empty():
        return unchanged
    cutoff = state_cutoff(conn)
    if log.get_column("seller_id").has_nulls():
        reset(conn)
        done = "reset (the sale tables were replaced whole): rebuilt from all history"
    elif cutoff is None:
        done = "none stored: built from all history"
    else:
        stale = log.filter(pl.col("first_purchase") < _midnight(cutoff))
        repaired = repair(conn, stale, window_days=window_days, horizon_days=horizon_days)
        done = f"repaired {repaired} seller(s) (sales changed before {_midnight(cutoff).date()})"
    conn.execute(f"DELETE FROM {CHANGES_TABLE}")
    return done


def _window_queries(start: int, end: int, columns: dict[str, list[str]]) -> dict[str, str]:
    """SQL of the raw rows the features of a date read: orders purchased in [start, end)
    (epoch days), the rows hanging off them, their customers and products, all sellers,
    each with the `columns` read of it (`columns_read`) and the keys these queries join
    on. In creation order: the rows hanging off the orders read the window's `orders`
    (and the products its `order_items`), created before them."""
    first, stop = _midnight(start), _midnight(end)
    joined = {"orders": ["order_id", "customer_id"], "order_items": ["order_id", "product_id"]}

    def cols(table: str) -> str:
        wanted = {*columns[table], *joined.get(table, ())}
        return ", ".join(f'"{c}"' for c in TABLES[table].columns if c in wanted)

    tails = {
        "orders": f"WHERE order_purchase_timestamp >= TIMESTAMP '{first}' "
        f"AND order_purchase_timestamp < TIMESTAMP '{stop}'",
        "order_items": "SEMI JOIN orders USING (order_id)",
        "order_payments": "SEMI JOIN orders USING (order_id)",
        "order_reviews": "SEMI JOIN orders USING (order_id)",
        "customers": "SEMI JOIN (SELECT customer_id FROM orders) USING (customer_id)",
        "products": "SEMI JOIN (SELECT product_id FROM order_items) USING (product_id)",
        "sellers": "",
    }
    return {
        table: f"SELECT {cols(table)} FROM {RAW_SCHEMA}.{table} {tail}"
        for table, tail in tails.items()
        if table in columns
    }


# `lib.sales.sale_items` in SQL, for the views over the warehouse (a test holds them equal).
SALE_ITEMS_SQL = f"""SELECT i.*, o.order_purchase_timestamp,
       CAST(o.order_purchase_timestamp AS DATE) AS sale_date
FROM order_items i JOIN (
  SELECT order_id, order_purchase_timestamp FROM orders
  WHERE order_status NOT IN ({", ".join(f"'{s}'" for s in NON_SALE_STATUSES)})
) o USING (order_id)"""


def point_sql(
    plan: FamilyPlan, reference_day: int, *, window_days: int, horizon_days: int, carried: bool
) -> str:
    """SQL of one family's rows at one reference day D, from the same plan the engine runs
    over many dates (`lib.features.engine`), evaluated at D directly: an additive measure is the
    sum over the rows whose interval [start, end] holds D (the engine's running sum read
    at D), an extreme the min or max over the rows of days [D - W, D - 1] (its rolling
    window at D). With `carried`, the table `_state` adds the lifetime measures of the rows
    before the input's cutoff and the earlier first sale day. Every measure is an integer
    carried as DOUBLE, so the sums are exact in any order: the rows equal the engine's."""
    d = reference_day
    ctes = [cte_list([*spine_ctes(horizon_days, d, d), *plan.ctes])]
    measures: dict[str, list[str]] = {}
    for i, block in enumerate(plan.additive):
        cols = ", ".join(f"CAST({e} AS DOUBLE) AS {n}" for n, e in block.measures.items())
        sums = ", ".join(f"sum({n}) AS {n}" for n in block.measures)
        ctes.append(f"""pt{i} AS (
  SELECT seller_id, {sums} FROM (
    SELECT seller_id, {block.start} AS s, {block.end or "NULL"} AS e, {cols}
    FROM {block.source} WHERE {block.where}
  ) WHERE s <= {d} AND (e IS NULL OR e >= {d}) GROUP BY seller_id
)""")
        for name in block.measures:
            measures.setdefault(name, []).append(f"pt{i}.{name}")
    extremes: list[str] = []
    for i, block in enumerate(plan.sliding):
        cols = ", ".join(f"{fn}({e}) AS {n}" for n, (fn, e) in block.aggregates.items())
        ctes.append(f"""px{i} AS (
  SELECT seller_id, {cols} FROM {block.source}
  WHERE {block.day} BETWEEN {d - window_days} AND {d - 1} GROUP BY seller_id
)""")
        extremes += [f"px{i}.{n}" for n in block.aggregates]
    joins = [f"LEFT JOIN pt{i} USING (seller_id)" for i in range(len(plan.additive))]
    joins += [f"LEFT JOIN px{i} USING (seller_id)" for i in range(len(plan.sliding))]
    first = "sp.first_d"
    if carried:
        joins.append("LEFT JOIN _state st USING (seller_id)")
        first = "CASE WHEN st.first_d < sp.first_d THEN st.first_d ELSE sp.first_d END"
    values = []
    for name, parts in measures.items():
        terms = [f"coalesce({p}, 0)" for p in parts]
        if carried and name in _measure_names(window_days):
            terms.append(f"coalesce(st.{name}, 0)")
        values.append(f"CAST({' + '.join(terms)} AS DOUBLE) AS {name}")
    outputs = ",\n  ".join(
        f"CAST({o.sql} AS {'BIGINT' if o.dtype is pl.Int64 else 'DOUBLE'}) AS {o.spec.name}"
        for o in plan.outputs
    )
    with_sql = ",\n".join(ctes)
    columns = ", ".join(values + extremes)
    return f"""WITH {with_sql},
f AS (
  SELECT sp.D, sp.seller_id, sp.last_d, {first} AS first_d, {columns}
  FROM spine sp {" ".join(joins)}
)
SELECT {to_date("D")} AS reference_date, seller_id,
  {outputs}
FROM f ORDER BY seller_id"""


def _conform(family: str, result: pl.DataFrame) -> pl.DataFrame:
    """The family's fixed schema and dtypes, NaN as null (as `compute_features` returns)."""
    schema = feature_schema(family)
    out = result.select(pl.col(c).cast(t) for c, t in schema.items())
    floats = [c for c, t in schema.items() if t == pl.Float64]
    return out.with_columns(pl.col(floats).fill_nan(None))


def _point(
    con: duckdb.DuckDBPyConnection,
    family: str,
    plan: FamilyPlan,
    reference_date: date,
    state: pl.DataFrame | None,
    window_days: int,
    horizon_days: int,
) -> pl.DataFrame:
    """Run `point_sql` where the plan's tables and `sale_items` are already visible."""
    day_number = epoch_day(reference_date)
    con.execute(f"CREATE OR REPLACE TEMP VIEW dates AS SELECT CAST({day_number} AS BIGINT) AS D")
    _state = state.to_arrow() if state is not None else None  # read by replacement scan
    try:
        sql = point_sql(
            plan,
            day_number,
            window_days=window_days,
            horizon_days=horizon_days,
            carried=state is not None,
        )
        return _conform(family, con.execute(sql).pl())
    finally:
        con.execute("DROP VIEW IF EXISTS temp.main.dates")


def features_on(
    conn: duckdb.DuckDBPyConnection,
    families: Sequence[str],
    reference_date: date,
    *,
    window_days: int,
    horizon_days: int,
) -> dict[str, pl.DataFrame]:
    """Each family's rows for one date, computed inside the warehouse from the rows of the
    date's reach (nothing else is read), plus, for a family that reads before it, the
    state moved to this date's cutoff. Run it in a transaction: the state it moves is
    written there.

    The reach's rows are read once, into temporary tables named as the raw tables, for
    every family: each family's SQL reads orders and items several times, and on a
    DuckLake each read of a raw table is a scan of its Parquet files."""
    plans = {family: PLANS[family](window_days) for family in families}
    end = epoch_day(reference_date)
    start = end - reach_days(window_days, horizon_days)
    stateful = {family for family in families if needs_state(family, window_days)}
    state = None
    if stateful:
        state = state_at(conn, start, window_days=window_days, horizon_days=horizon_days)
    queries = _window_queries(start, end, columns_read(families))
    created: list[str] = []
    try:
        for name, sql in [*queries.items(), ("sale_items", SALE_ITEMS_SQL)]:
            conn.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
            created.append(name)
        return {
            family: _point(
                conn,
                family,
                plan,
                reference_date,
                state if family in stateful else None,
                window_days,
                horizon_days,
            )
            for family, plan in plans.items()
        }
    finally:
        for name in created:
            conn.execute(f"DROP TABLE IF EXISTS temp.main.{name}")
