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

Both land in one per-seller `Timeline` (a row per day on which anything changes), built
once per backfill and read at each reference date with one ASOF join against the
active-seller spine, batch after batch. DuckDB builds the sale runs, each block's rows
and the per-day extremes (one SQL text per family, over all dates) and evaluates the
output expressions; numpy sums the delta rows per seller and day (`summed_deltas`) and
runs their per-seller running sums, polars the rolling extremes and the spine, and the
ASOF join is a binary search over (seller, day) keys and a gather, which on this many
columns is far faster than DuckDB's window operator. The spine's
tables and the sale runs are the same for every family of a backfill: built once
(`SaleRuns`, through the package's `Backfill`) and handed to each.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import numpy as np
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


class PlanError(ValueError):
    """A family plan whose SQL reads something it does not declare."""


@dataclass(frozen=True)
class Cte:
    """One named query of a plan (or of the spine), staged as a table: `reads` names the
    CTEs it selects from (the plan's, declared before it, or the spine's), the only ones
    it can see (see `stage_ctes`); the raw tables are the plan's `columns`."""

    name: str
    sql: str
    reads: tuple[str, ...] = ()


# What every plan (and the spine) may read of `sale_items` besides its declared order
# items' columns: what makes an item a sale.
SALE_KEYS = ("order_id", "seller_id", "order_purchase_timestamp")


@dataclass(frozen=True, kw_only=True)
class FamilyPlan:
    """Everything one family's query needs, and all it reads: of each raw table the
    `columns` its SQL uses (those of `order_items` also when read through `sale_items`),
    and its CTEs with the CTEs each reads. Checked when built (`check_plan`), and
    enforced when run: its SQL sees nothing else (see `declared_frames`, `stage_ctes`)."""

    columns: Mapping[str, tuple[str, ...]]
    ctes: tuple[Cte, ...]
    additive: tuple[Additive, ...]
    sliding: tuple[Sliding, ...]
    outputs: tuple[Output, ...]

    def __post_init__(self) -> None:
        check_plan(self)

    @property
    def tables(self) -> tuple[str, ...]:
        """The raw tables its SQL reads directly (all read `orders` and `order_items`
        through `sale_items` besides)."""
        return tuple(self.columns)


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


def distinct_runs(name: str, source: str, keys: str, day_expr: str, where: str = "TRUE") -> Cte:
    """CTE: distinct (seller, keys, day) of the CTE `source` with the next day of the same
    key (`nd`).

    An occurrence on day d counts towards the distinct count at D for D in
    [d + 1, least(nd, d + window)]: it is then the latest occurrence before D and inside
    the window.
    """
    sql = f"""SELECT seller_id, d, lead(d) OVER (PARTITION BY seller_id, {keys} ORDER BY d) AS nd
FROM (SELECT DISTINCT seller_id, {keys}, {day_expr} AS d FROM {source} WHERE {where})"""
    return Cte(name, sql, reads=(source,))


def spine_ctes(horizon_days: int, lo: int, hi: int) -> tuple[Cte, ...]:
    """CTEs `sale_days`, `runs`, `seller_keys` and `spine`: active sellers per date from
    `sale_items` (its `SALE_KEYS`).

    A sale day d with next sale day nd makes the seller active with last sale d for
    D in [d + 1, least(nd, d + horizon)]; those days (clipped to [lo, hi], the first and
    last reference day) are generated and matched to `dates`, so the cost follows the
    output, not dates x sellers. The seller's first sale day rides along. `seller_keys`
    numbers the sellers with a sale in seller_id order (integer keys make the polars
    steps several times faster than string keys, and keep the same order).
    """
    return (
        Cte(
            "sale_days",
            f"""SELECT DISTINCT seller_id, {day("order_purchase_timestamp")} AS d
FROM sale_items WHERE order_purchase_timestamp < {to_date(str(hi))}""",
        ),
        Cte(
            "runs",
            """SELECT seller_id, d,
       lead(d) OVER (PARTITION BY seller_id ORDER BY d) AS nd,
       min(d) OVER (PARTITION BY seller_id) AS first_d
FROM sale_days""",
            reads=("sale_days",),
        ),
        Cte(
            "seller_keys",
            """SELECT seller_id, row_number() OVER (ORDER BY seller_id) AS sk
FROM (SELECT DISTINCT seller_id FROM sale_days)""",
            reads=("sale_days",),
        ),
        Cte(
            "spine",
            f"""SELECT g.D, r.seller_id, r.d AS last_d, r.first_d
FROM runs r,
     unnest(range(greatest(r.d + 1, {lo}), least(r.nd, r.d + {horizon_days}, {hi}) + 1)) AS g(D)
JOIN dates q ON q.D = g.D""",
            reads=("runs",),
        ),
    )


SPINE_CTES = tuple(c.name for c in spine_ctes(1, 0, 0))


def cte_list(ctes: Iterable[Cte]) -> str:
    """The CTEs as the comma-separated list of a WITH clause (for a single query over
    them, where every CTE sees every other)."""
    return ",\n".join(f"{c.name} AS (\n{c.sql}\n)" for c in ctes)


def check_plan(plan: FamilyPlan) -> None:
    """Raise `PlanError` unless every CTE a plan reads is declared: each CTE's reads are
    CTEs declared before it or the spine's, and each block's source is one of those CTEs,
    a declared raw table or `sale_items`."""
    ctes: list[str] = list(SPINE_CTES)
    for cte in plan.ctes:
        if cte.name in ctes:
            raise PlanError(f"CTE {cte.name!r} is declared twice (or is one of {SPINE_CTES})")
        unknown = [r for r in cte.reads if r not in ctes]
        if unknown:
            raise PlanError(
                f"CTE {cte.name!r} reads {unknown}, which are no CTEs declared before it "
                f"(the plan's, or the spine's: {SPINE_CTES})"
            )
        ctes.append(cte.name)
    sources = {*ctes, *plan.columns, "sale_items"}
    for block in (*plan.additive, *plan.sliding):
        if block.source not in sources:
            raise PlanError(
                f"a block reads {block.source!r}, which is neither a CTE of the plan or the "
                "spine nor a declared raw table nor sale_items"
            )


def declared_frames(
    plan: FamilyPlan, raw: Mapping[str, pl.DataFrame], sales: pl.DataFrame
) -> dict[str, pl.DataFrame]:
    """The frames the plan's SQL reads, with only the columns it declares: its raw
    tables, and `sale_items` (`sales`) with its `SALE_KEYS` and the order items' columns
    the plan declares. A column the plan uses without declaring it then fails to bind."""
    frames = {table: raw[table].select(columns) for table, columns in plan.columns.items()}
    items = dict.fromkeys((*SALE_KEYS, *plan.columns.get("order_items", ())))
    frames["sale_items"] = sales.select(list(items))
    return frames


def _measure_names(plan: FamilyPlan) -> list[str]:
    names: list[str] = []
    for block in plan.additive:
        names += [n for n in block.measures if n not in names]
    return names


def _block_ctes(plan: FamilyPlan, lo: int, hi: int) -> tuple[Cte, ...]:
    """CTEs `blk<i>`: each additive block's rows (seller key, first and last day, measures)
    that hold at least one reference day in [lo, hi]."""
    ctes = {*SPINE_CTES, *(c.name for c in plan.ctes)}
    blocks = []
    for i, block in enumerate(plan.additive):
        cols = ", ".join(f"CAST({expr} AS DOUBLE) AS {n}" for n, expr in block.measures.items())
        end = block.end or "NULL"
        sql = f"""SELECT * FROM (
  SELECT sk, {block.start} AS s, {end} AS e, {cols}
  FROM {block.source} JOIN seller_keys USING (seller_id)
  WHERE {block.where}
) WHERE s <= {hi} AND (e IS NULL OR (e >= s AND e >= {lo}))"""
        reads = (block.source, "seller_keys") if block.source in ctes else ("seller_keys",)
        blocks.append(Cte(f"blk{i}", sql, reads=reads))
    return tuple(blocks)


def _in_reach(block: Sliding, window_days: int, lo: int, hi: int) -> str:
    return f"{block.day} BETWEEN {lo - window_days} AND {hi - 1}"


def staged(name: str) -> str:
    """The temporary table a CTE is staged as (see `stage_ctes`)."""
    return f"staged_{name}"


def _runs_query(horizon_days: int, lo: int, hi: int) -> str:
    """The sale runs that reach a reference day in [lo, hi], from the staged `runs`."""
    return f"""SELECT sk, seller_id, d, nd, first_d
FROM {staged("runs")} JOIN {staged("seller_keys")} USING (seller_id)
WHERE d + 1 <= {hi} AND d + {horizon_days} >= {lo}
ORDER BY d, sk"""


def _source_queries(
    plan: FamilyPlan, *, window_days: int, horizon_days: int, lo: int, hi: int
) -> tuple[tuple[Cte, ...], dict[str, str]]:
    """The family's SQL: the CTEs to stage (see `stage_ctes`; `_roots` are those the
    queries read), then the queries over the staged tables of the sale runs, each
    additive block's rows (`blk<i>`, and `keys<i>` for their days only) and the per-day
    extremes rows (see `summed_deltas` for what is made of them).
    """
    queries = {"runs": _runs_query(horizon_days, lo, hi)}
    for i, block in enumerate(plan.additive):
        queries[f"keys{i}"] = f"SELECT sk, s, e FROM {staged(f'blk{i}')}"
        measures = ", ".join(block.measures)
        queries[f"blk{i}"] = f"SELECT sk, s, e, {measures} FROM {staged(f'blk{i}')}"
    ctes = (*spine_ctes(horizon_days, lo, hi), *plan.ctes, *_block_ctes(plan, lo, hi))
    if plan.sliding:
        names = {c.name for c in ctes}
        parts = []
        for block in plan.sliding:
            cols = ", ".join(f"{fn}({e}) AS {n}" for n, (fn, e) in block.aggregates.items())
            source = staged(block.source) if block.source in names else block.source
            parts.append(
                f"SELECT sk, {block.day} AS day, {cols} "
                f"FROM {source} JOIN {staged('seller_keys')} USING (seller_id) "
                f"WHERE {_in_reach(block, window_days, lo, hi)} GROUP BY sk, {block.day}"
            )
        queries["extremes"] = "\nUNION ALL BY NAME ".join(parts)
    return ctes, queries


def _roots(plan: FamilyPlan, *, runs: bool) -> list[str]:
    """The CTEs (or frames) the queries of `_source_queries` read: the sale runs' (when
    `runs`), the blocks' and the sliding sources."""
    names = [f"blk{i}" for i in range(len(plan.additive))]
    names += [block.source for block in plan.sliding]
    return [*names, "seller_keys", *(["runs"] if runs else [])]


def needed_ctes(
    ctes: Sequence[Cte], roots: Iterable[str], provided: Collection[str] = ()
) -> list[Cte]:
    """The CTEs that `roots` read, directly or through each other by their declared
    `reads`, in their order; not those `provided` (nor what only those read)."""
    by_name = {c.name: c for c in ctes}
    needed: set[str] = set()
    todo = [r for r in roots if r in by_name and r not in provided]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += [r for r in by_name[name].reads if r not in provided]
    return [c for c in ctes if c.name in needed]


def _scoped(cte: Cte) -> str:
    """The CTE's query with its declared reads, and no other staged table, in scope: each
    read is a WITH alias (inlined: NOT MATERIALIZED) of its staged table, and the staged
    tables go by other names (`staged`), so a query reading a CTE it does not declare
    fails to bind."""
    if not cte.reads:
        return cte.sql
    aliases = ", ".join(f"{r} AS NOT MATERIALIZED (FROM {staged(r)})" for r in cte.reads)
    return f"WITH {aliases}\n{cte.sql}"


_DECLARE = (
    "A plan's SQL sees only what it declares: of each raw table its `columns` (of "
    f"sale_items, the order items' ones and {SALE_KEYS}), and in each CTE its `reads`."
)


@contextmanager
def _declared(what: str) -> Iterator[None]:
    """Re-raise a query's failure to find a table or column as a `PlanError` that says
    what the query could see."""
    try:
        yield
    except (duckdb.BinderException, duckdb.CatalogException) as error:
        raise PlanError(f"{what} does not bind: {error}\n{_DECLARE}") from error


def stage_ctes(con: duckdb.DuckDBPyConnection, ctes: Iterable[Cte]) -> None:
    """Create the CTEs (see `needed_ctes`) as temporary tables (`staged`), in order, each
    computed once and seeing only its declared reads (see `_scoped`).

    Why tables, not a WITH clause: DuckDB materializes a query's CTEs and holds them
    in memory until the query ends, beyond what it can spill. As one query the sales
    deltas outgrew the memory cap and failed; staged, each CTE is one small query whose
    table can be spilled, and the deltas run within the cap. The shared CTEs are also
    computed once for the three queries instead of once per query.
    """
    for cte in ctes:
        with _declared(f"CTE {cte.name!r}"):
            con.execute(f"CREATE OR REPLACE TEMP TABLE {staged(cte.name)} AS {_scoped(cte)}")


# The spine's CTEs that depend only on the sales: every family stages the same ones.
SALE_RUN_TABLES = ("sale_days", "seller_keys")


@dataclass(frozen=True)
class SaleRuns:
    """What every family of one backfill reads the same way from the sales: the spine's
    tables (`SALE_RUN_TABLES`, the sale days and the sellers' keys) and the sale runs
    (the rows of the `runs` query of `_source_queries`).

    Built once (`sale_runs`) and handed to each family's `read_timeline_sources`, instead
    of each family staging them from `sale_items` again."""

    lo: int
    hi: int
    horizon_days: int
    tables: Mapping[str, pl.DataFrame]
    runs: pl.DataFrame


def sale_runs(con: duckdb.DuckDBPyConnection, *, horizon_days: int, lo: int, hi: int) -> SaleRuns:
    """The `SaleRuns` of `sale_items` in `con` (sellers as integer ranks), for reference
    days in [lo, hi]: the same SQL as each family would stage."""
    stage_ctes(con, needed_ctes(spine_ctes(horizon_days, lo, hi), ["runs", *SALE_RUN_TABLES]))
    tables = {name: con.sql(f"SELECT * FROM {staged(name)}").pl() for name in SALE_RUN_TABLES}
    runs = read_sources(con, _runs_query(horizon_days, lo, hi))
    return SaleRuns(lo=lo, hi=hi, horizon_days=horizon_days, tables=tables, runs=runs)


def read_timeline_sources(
    con: duckdb.DuckDBPyConnection,
    plan: FamilyPlan,
    *,
    window_days: int,
    horizon_days: int,
    lo: int,
    hi: int,
    sale_runs: SaleRuns | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """The sale runs, the deltas per seller and day and the extremes rows of `Timeline`,
    for reference days in [lo, hi]: every read of the raw history a backfill makes.

    With `sale_runs` (built for the same sales, days and horizon), its tables are
    registered in `con` instead of staged, and its runs are used as they are."""
    ctes, queries = _source_queries(
        plan, window_days=window_days, horizon_days=horizon_days, lo=lo, hi=hi
    )
    provided = sale_runs.tables if sale_runs is not None else {}
    for name, frame in provided.items():
        con.register(staged(name), frame.lazy())  # without `pyarrow.dataset`
    stage_ctes(con, needed_ctes(ctes, _roots(plan, runs=sale_runs is None), provided))
    runs = read_sources(con, queries["runs"]) if sale_runs is None else sale_runs.runs
    extremes = None
    if plan.sliding:
        with _declared("the sliding extremes"):
            extremes = read_sources(con, queries["extremes"])
    deltas = summed_deltas(con, plan, queries, extremes, window_days=window_days, lo=lo, hi=hi)
    return runs, deltas, extremes


def summed_deltas(
    con: duckdb.DuckDBPyConnection,
    plan: FamilyPlan,
    queries: dict[str, str],
    extremes: pl.DataFrame | None,
    *,
    window_days: int,
    lo: int,
    hi: int,
) -> pl.DataFrame:
    """Per seller (`sk`) and day, the sum of each measure's deltas, sorted by seller and
    day, with a row (of zeros if need be) on every day a sliding extreme may change.

    Each block row emits +value on its first day (`lo` if it started earlier: the
    timeline starts at the backfill's first date, so lifetime measures collapse their
    history into that day) and -value on the day after its last (when that is a
    reference day at all). A sliding extreme can only change on a day a row enters
    (p + 1) or leaves (p + window + 1) the window, so those days are rows too.

    Why not a DuckDB GROUP BY: one hash aggregate over every block's delta rows (about
    14 per order for the sales family, each as wide as all the measures) cost most of
    the family's DuckDB time. Here a (seller, day) pair is one integer key, dense
    (seller times the days' span plus the day): the keys in use are marked in a boolean
    array first (from each block's keys only), their running count numbers them in key
    order, and each block's deltas are then summed at their key's number with
    `numpy.bincount`, one block at a time, so no more than one block's rows are held and
    nothing is sorted or searched. The measures are integers: every partial sum is exact
    in float64 whatever the order of addition, so the sums equal the GROUP BY's to the
    last bit. The marks and numbers cost 5 bytes per seller and day of the span, for the
    length of this call.
    """
    base = lo - window_days - 1  # below any day a row can land on
    span = hi - base + 1

    def block_keys(rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's key on its first day, and for the rows with one (`has_last`) on
        the day after its last."""
        sk = rows.get_column("sk").cast(pl.Int64).to_numpy()
        s = rows.get_column("s").cast(pl.Int64).to_numpy()
        e = rows.get_column("e")
        has_last = (e.is_not_null() & (e + 1 <= hi)).to_numpy()
        after_last = e.filter(has_last).cast(pl.Int64).to_numpy() + 1
        return (
            sk * span + (np.maximum(s, lo) - base),
            sk[has_last] * span + (after_last - base),
            has_last,
        )

    found: list[np.ndarray] = []
    for i in range(len(plan.additive)):
        first, after, _ = block_keys(read_sources(con, queries[f"keys{i}"]))
        found += [first, after]
    if extremes is not None:
        sk = extremes.get_column("sk").cast(pl.Int64).to_numpy()
        p = extremes.get_column("day").cast(pl.Int64).to_numpy()
        leaves = p + window_days + 1 <= hi
        found += [
            sk * span + (p + 1 - base),
            sk[leaves] * span + (p[leaves] + window_days + 1 - base),
        ]
    used = np.zeros(max((int(k.max()) + 1 for k in found if len(k)), default=0), dtype=bool)
    for k in found:
        used[k] = True
    del found
    keys = np.flatnonzero(used)
    number = np.cumsum(used, dtype=np.int32 if len(keys) < 2**31 else np.int64) - 1
    del used
    sums = {n: np.zeros(len(keys)) for n in _measure_names(plan)}
    for i, block in enumerate(plan.additive):
        rows = read_sources(con, queries[f"blk{i}"])
        first, after, has_last = block_keys(rows)
        at_first, at_after = number[first], number[after]
        del first, after
        for n in block.measures:
            value = rows.get_column(n).fill_null(0.0).to_numpy()
            sums[n] += np.bincount(at_first, weights=value, minlength=len(keys))
            sums[n] -= np.bincount(at_after, weights=value[has_last], minlength=len(keys))
        del rows, at_first, at_after
    return pl.DataFrame({"sk": keys // span, "day": keys % span + base, **sums})


def read_sources(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    """Run one query over the family's source tables and staged CTEs (every query whose
    rows a backfill keeps goes through here, so a test can count them)."""
    return con.sql(sql).pl()


def _running_sums(deltas: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """Per seller, one row per day on which a measure changes, with its running total.

    `deltas` sorted by seller and day: a seller's running total is the running total over
    all rows minus its value just before the seller's first row. In exact integers (the
    measures are integers, far from overflow in Int64) that costs one pass per column with
    no grouping, and the totals are read as DOUBLE afterwards, exactly. One column at a
    time, so the working memory is a column's, not the table's.
    """
    sk = deltas.get_column("sk").to_numpy()
    starts = np.flatnonzero(np.append(True, sk[1:] != sk[:-1])) if len(sk) else sk[:0]
    lengths = np.diff(np.append(starts, len(sk)))
    out = deltas
    del deltas
    for n in names:
        value = out.get_column(n).cast(pl.Int64).to_numpy()
        total = np.cumsum(value)
        before = np.repeat(total[starts] - value[starts], lengths)
        out = out.with_columns(pl.Series(n, (total - before).astype(np.float64)))
        del value, total, before
    return out


def _with_extremes(
    rows: pl.DataFrame, extremes: pl.DataFrame, plan: FamilyPlan, window_days: int
) -> pl.DataFrame:
    """Add, to every timeline row on day t, the extremes of the rows of days [t - W, t - 1].

    The extremes rows ride along in the same per-seller, day-ordered sequence with
    `is_q` false; rolling windows closed on the left exclude day t itself. `rows` is
    sorted by seller and day with one row per pair, so the sequence is a merge of two
    sorted frames (not a sort of their union), and its `is_q` rows come back in `rows`'
    order, to be put beside them (not joined). The windows run over one integer key per
    (seller, day) (`_seller_day_keys`), in which two sellers lie 2**32 - 2**31 apart at
    least, so no window reaches past its seller: the same values as a rolling window per
    seller, without partitioning by seller.
    """
    size = f"{window_days}i"
    rolled = [
        getattr(pl.col(n), f"rolling_{fn}_by")("_k", window_size=size, closed="left").alias(n)
        for block in plan.sliding
        for n, (fn, _) in block.aggregates.items()
    ]
    names = [n for block in plan.sliding for n in block.aggregates]
    points = extremes.select(
        pl.Series("_k", _seller_day_keys(extremes.get_column("sk"), extremes.get_column("day"))),
        *names,
        is_q=pl.lit(False),
    ).sort("_k")
    queries = pl.DataFrame(
        {"_k": _seller_day_keys(rows.get_column("sk"), rows.get_column("day"))}
    ).select(
        "_k",
        *[pl.lit(None, dtype=points.schema[n]).alias(n) for n in names],
        is_q=pl.lit(True),
    )
    at_queries = (
        points.merge_sorted(queries, key="_k", maintain_order=True)
        .with_columns(rolled)
        .filter("is_q")
        .select(names)
    )
    return rows.hstack(at_queries)


class Timeline:
    """One family's per-seller timeline over a whole backfill, read one batch at a time.

    Built once from the source tables (the only scans of the raw history), it holds, per
    seller, a row for every day on which a measure changes, with the running totals and
    the window's extremes on that day. `values` then reads consecutive batches of
    reference dates from it: the batch's active-seller spine, joined as of each date to
    the rows up to that date. Only the rows of the batch's own days are touched, plus one
    row per seller carried from the batches before, so a backfill's cost follows its data
    and its output, whatever the number of batches.
    """

    def __init__(
        self,
        plan: FamilyPlan,
        sources: list[pl.DataFrame | None],
        *,
        window_days: int,
        horizon_days: int,
    ) -> None:
        """From the list of `read_timeline_sources`' frames, which it empties: each frame
        is freed as soon as it is used (the deltas are the largest)."""
        self.names = _measure_names(plan)
        self.horizon_days = horizon_days
        self.runs, deltas, extremes = sources
        sources.clear()
        # `summed_deltas` returns them sorted by seller and day
        rows = _running_sums(deltas, self.names)
        del deltas
        if extremes is not None:
            rows = _with_extremes(rows, extremes, plan, window_days)
        self.rows = rows  # sorted by seller, then day
        self._carry = self.rows.clear()  # last row per seller up to the previous batch
        self._read_to: int | None = None  # last day read into the carry

    def _spine(self, days: Sequence[int]) -> pl.DataFrame:
        """Active sellers at each of `days`: a sale day d with next sale day nd makes the
        seller active with last sale d for D in [d + 1, least(nd, d + horizon)]."""
        lo, hi, h = min(days), max(days), self.horizon_days
        d = self.runs.get_column("d")
        first = d.search_sorted(lo - h, side="left")
        last = d.search_sorted(hi - 1, side="right")
        start = pl.max_horizontal(pl.col("d") + 1, pl.lit(lo))
        end = pl.min_horizontal(pl.col("nd"), pl.col("d") + h, pl.lit(hi))
        return (
            self.runs.slice(first, last - first)
            .select(
                "sk", "seller_id", last_d="d", first_d="first_d", D=pl.int_ranges(start, end + 1)
            )
            .explode("D")
            .filter(pl.col("D").is_in(list(days)))
            # in the frames' row order, by seller then date (sellers are ranked as their
            # ids sort): one integer key sorts faster than the two columns
            .sort(pl.col("sk") * (1 << 32) + pl.col("D"))
            .select("D", "sk", "seller_id", "last_d", "first_d")
        )

    def values(self, days: Sequence[int]) -> pl.DataFrame:
        """The measures of every active seller at each of `days` (epoch days in [lo, hi],
        all after the days of the previous call), sorted by seller and date; `seller_id`
        is the seller's integer rank (see `_integer_sellers` in the package).

        The as-of join is a binary search: a timeline row is the integer key
        (seller, day), its rows sorted by it, and a spine row (seller, D) finds its
        seller's last row on or before D as the last key not above its own; the columns
        are then gathered at those rows (nulls where the seller has none yet, as a
        backward ASOF join by seller gives). Neither side is sorted by day."""
        hi = max(days)
        if self._read_to is not None and min(days) <= self._read_to:
            raise ValueError("batches of reference dates must come in increasing order")
        day = pl.col("day")
        new = self.rows.filter(
            day <= hi if self._read_to is None else day.is_between(self._read_to + 1, hi)
        )
        known = pl.concat([self._carry, new])  # each part sorted by seller and day
        del new
        keys = _seller_day_keys(known.get_column("sk"), known.get_column("day"))
        order = np.argsort(keys, kind="stable")  # a merge of the two sorted parts
        keys = keys[order]
        sellers = keys >> 32
        last = np.flatnonzero(np.append(sellers[1:] != sellers[:-1], len(sellers) > 0))
        self._carry = known[order[last]]  # last row per seller, sorted by seller
        self._read_to = hi
        spine = self._spine(days)
        wanted = _seller_day_keys(spine.get_column("sk"), spine.get_column("D"))
        at = np.searchsorted(keys, wanted, side="right") - 1
        found = at >= 0
        found[found] = sellers[at[found]] == (wanted[found] >> 32)
        # polars gathers several times faster by its own index type (UInt32) without nulls
        index = pl.UInt32 if known.height < 1 << 32 else pl.Int64
        rows = pl.Series(np.where(found, order[np.maximum(at, 0)], 0), dtype=index)
        if not found.all():
            rows = pl.select(pl.when(pl.Series(found)).then(rows)).to_series()
        del keys, sellers, order, wanted, at, found
        matched = known.select(pl.exclude("sk").gather(rows))
        return spine.hstack(matched).with_columns(pl.col(self.names).fill_null(0.0))


def _seller_day_keys(sk: pl.Series, day: pl.Series) -> np.ndarray:
    """One int64 key per (seller, day) that sorts like the pair: the seller in the upper
    32 bits, the day (offset to be non-negative) in the lower."""
    sellers = sk.cast(pl.Int64).to_numpy()
    days = day.cast(pl.Int64).to_numpy()
    return (sellers << 32) + (days + (1 << 31))


def outputs_sql(plan: FamilyPlan) -> str:
    """SQL over the measures frame `f`: the keys and the family's output columns."""
    outputs = ",\n  ".join(
        f"CAST({o.sql} AS {'BIGINT' if o.dtype is pl.Int64 else 'DOUBLE'}) AS {o.spec.name}"
        for o in plan.outputs
    )
    return f"SELECT {to_date('D')} AS reference_date, seller_id,\n  {outputs}\nFROM f"


def evaluate_outputs(
    con: duckdb.DuckDBPyConnection, plan: FamilyPlan, values: pl.DataFrame
) -> pl.DataFrame:
    """The family's output columns for a frame of measures (keeps its row order).

    `seller_id` passes through as it comes: the integer rank, which DuckDB takes in and
    hands back several times faster than 32-character strings. The measures are read by
    replacement scan of the local `f`, a LazyFrame so that DuckDB needs no
    `pyarrow.dataset` (see `lib.warehouse.write_frame`), and the result is kept in
    DuckDB's record batches: putting its columns in one piece each would copy the whole
    output once more, and nothing downstream needs it so."""
    f = values.lazy()  # noqa: F841 (read by the SQL)
    return pl.from_arrow(con.sql(outputs_sql(plan)).to_arrow_table(), rechunk=False)


def output_schema(outputs: Sequence[Output]) -> dict[str, pl.DataType]:
    """The fixed output schema: keys, then every feature with its dtype."""
    schema: dict[str, pl.DataType] = {"reference_date": pl.Date(), "seller_id": pl.String()}
    schema.update({o.spec.name: o.dtype() for o in outputs})
    return schema
