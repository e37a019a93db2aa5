"""Raw tables: one asset per source file, loaded together so a bad file changes nothing."""

from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field

from olist_churn_dagster.defs.metadata import table_value
from olist_churn_dagster.defs.partitions import register_reference_dates
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL, WarehouseResource
from olist_churn_dagster.lib.calendar import reference_dates, resolve_as_of
from olist_churn_dagster.lib.ingest.delta import TableChange, apply_load, plan_load
from olist_churn_dagster.lib.ingest.feed import rolls_back
from olist_churn_dagster.lib.ingest.schema import TABLES, TableSpec
from olist_churn_dagster.lib.ingest.snapshots import declared_as_of
from olist_churn_dagster.lib.settings import Settings
from olist_churn_dagster.lib.tables import RAW_SCHEMA

RAW_GROUP = "raw"


class RawSourceConfig(dg.Config):
    source: str = Field(
        default="",
        description=(
            "Folder with the nine Olist CSV files, or the Kaggle zip. "
            "Empty: $OLIST_CHURN_DATA_DIR/raw."
        ),
    )
    full_reload: bool = Field(
        default=False,
        description=(
            "Replace every raw table from the source. Otherwise a source given here (a "
            "snapshot) is loaded as the rows that changed since the last load; the export "
            "in $OLIST_CHURN_DATA_DIR/raw is always loaded whole."
        ),
    )


def raw_asset_key(table: str) -> dg.AssetKey:
    return dg.AssetKey([RAW_SCHEMA, table])


def _table_metadata(
    conn: duckdb.DuckDBPyConnection, spec: TableSpec, change: TableChange
) -> dict[str, dg.MetadataValue]:
    """What the UI shows for a raw table, read back from the table as committed."""
    table = f'{RAW_SCHEMA}."{spec.name}"'
    rows = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    metadata: dict[str, dg.MetadataValue] = {
        "source_file": dg.MetadataValue.text(spec.file_name),
        "preview": table_value(conn.execute(f"SELECT * FROM {table} LIMIT 10").pl()),
        "dagster/row_count": dg.MetadataValue.int(rows),
        "dagster/table_name": dg.MetadataValue.text(f"{RAW_SCHEMA}.{spec.name}"),
        "dagster/column_schema": dg.MetadataValue.table_schema(
            dg.TableSchema(
                columns=[dg.TableColumn(name=n, type=str(t)) for n, t in spec.schema.items()]
            )
        ),
        "load_mode": dg.MetadataValue.text(change.mode),
        "rows_inserted": dg.MetadataValue.int(change.inserted),
        "rows_updated": dg.MetadataValue.int(change.updated),
        "rows_deleted": dg.MetadataValue.int(change.deleted),
    }
    timestamps = spec.timestamp_columns
    if timestamps and rows:
        bounds = ", ".join(f'min("{c}"), max("{c}")' for c in timestamps)
        values = conn.execute(f"SELECT {bounds} FROM {table}").fetchone()
        firsts = [v for v in values[0::2] if v is not None]
        lasts = [v for v in values[1::2] if v is not None]
        if firsts:
            metadata["first_timestamp"] = dg.MetadataValue.text(str(min(firsts)))
            metadata["last_timestamp"] = dg.MetadataValue.text(str(max(lasts)))
    return metadata


def loaded_as_of(instance: dg.DagsterInstance) -> date | None:
    """The as-of date of the source the raw tables were last loaded from."""
    event = instance.get_latest_materialization_event(raw_asset_key("orders"))
    materialization = event.asset_materialization if event else None
    value = materialization.metadata.get("as_of_date") if materialization else None
    return date.fromisoformat(value.value) if value is not None else None


def _source_dates(
    conn: duckdb.DuckDBPyConnection, source: Path, settings: Settings, *, is_raw_dir: bool
) -> list[date]:
    """The reference dates this source can serve, up to its as-of date: the setting (for
    the export in raw/ only), else its `_SUCCESS` manifest, else the last purchase + 1."""
    first, last = conn.execute(
        f"SELECT min(order_purchase_timestamp), max(order_purchase_timestamp) "
        f"FROM {RAW_SCHEMA}.orders"
    ).fetchone()
    declared = (settings.raw_as_of if is_raw_dir else None) or (
        declared_as_of(source) if source.is_dir() else None
    )
    as_of = resolve_as_of(last.date(), declared)
    return reference_dates(
        first.date(),
        as_of,
        window_days=settings.feature_window_days,
        start=settings.partition_start,
    )


def _rollback_refused(loaded: date | None, as_of: date) -> dg.Failure:
    """The failure of a source older than the raw tables: never retried, it would not pass."""
    return dg.Failure(
        f"the raw tables hold data as of {loaded}, newer than this source ({as_of}): loading "
        f"it would roll them back. The features and scores of {as_of} need no reload (only "
        "data before a date is used): run the score_sellers job for that partition instead.",
        allow_retries=False,
    )


def _change_text(change: TableChange) -> str:
    return (
        f"{change.mode}, {change.inserted} inserted, {change.updated} updated, "
        f"{change.deleted} deleted"
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            key=raw_asset_key(name),
            group_name=RAW_GROUP,
            description=f"`{spec.file_name}` as loaded, typed and validated.",
            kinds={"duckdb", "polars"},
            skippable=False,
        )
        for name, spec in TABLES.items()
    ],
    pool=WAREHOUSE_POOL,
)
def raw_tables(
    context: dg.AssetExecutionContext,
    config: RawSourceConfig,
    warehouse: WarehouseResource,
    settings: ChurnSettings,
):
    """Read and check the source, then bring every raw table to it in one transaction: bad
    input is refused whole, and a run stopped halfway (killed, out of memory) leaves every
    table as it was, never some tables new and some old. A snapshot (a `source` in the
    config) is applied as the rows that changed since the last load (`lib.ingest.delta`),
    with the same checks; the export in raw/, a first load or `full_reload` replace the
    tables. Once committed, the source's reference dates get their partitions."""
    core = settings.to_settings()
    source = Path(config.source) if config.source else core.raw_dir
    full = config.full_reload or not config.source
    context.log.info(f"loading source tables from {source} ({'whole' if full else 'changes'})")
    loaded = loaded_as_of(context.instance)
    with warehouse.transaction() as conn:
        plan = plan_load(conn, source, full=full)
        changes = apply_load(conn, plan)  # logs the sellers whose sales changed
        dates = _source_dates(conn, source, core, is_raw_dir=not config.source)
        if config.source and rolls_back(dates[-1], loaded):  # the sensor refuses it first
            raise _rollback_refused(loaded, dates[-1])  # inside the transaction: no write
        metadata = {name: _table_metadata(conn, TABLES[name], changes[name]) for name in TABLES}
    for name, change in changes.items():
        context.log.info(f"raw.{name}: {_change_text(change)}")
    new = register_reference_dates(context.instance, dates)
    context.log.info(f"reference dates {dates[0]} .. {dates[-1]}: {len(new)} new partition(s)")
    served = {
        "as_of_date": dg.MetadataValue.text(dates[-1].isoformat()),
        "reference_dates": dg.MetadataValue.text(f"{dates[0]} .. {dates[-1]} ({len(dates)})"),
    }
    for name in TABLES:
        extra = served if name == "orders" else {}
        yield dg.MaterializeResult(asset_key=raw_asset_key(name), metadata=metadata[name] | extra)
