"""Raw tables: one asset per source file, loaded together so a bad file changes nothing."""

from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from olist_churn_dagster.defs.partitions import register_reference_dates
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL, WarehouseResource
from olist_churn_dagster.lib.calendar import reference_dates, resolve_as_of
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.ingest.schema import TABLES, TableSpec
from olist_churn_dagster.lib.ingest.snapshots import declared_as_of
from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.settings import Settings, load_settings
from olist_churn_dagster.lib.tables import RAW_SCHEMA
from olist_churn_dagster.lib.warehouse import write_frame

RAW_GROUP = "raw"


class RawSourceConfig(dg.Config):
    source: str = Field(
        default="",
        description=(
            "Folder with the nine Olist CSV files, or the Kaggle zip. "
            "Empty: $OLIST_CHURN_DATA_DIR/raw."
        ),
    )


def raw_asset_key(table: str) -> dg.AssetKey:
    return dg.AssetKey([RAW_SCHEMA, table])


def _table_metadata(frame: pl.DataFrame, spec: TableSpec) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "source_file": dg.MetadataValue.text(spec.file_name),
        "preview": dg.MetadataValue.md(frame_to_markdown(frame)),
        "dagster/row_count": dg.MetadataValue.int(frame.height),
        "dagster/table_name": dg.MetadataValue.text(f"{RAW_SCHEMA}.{spec.name}"),
        "dagster/column_schema": dg.MetadataValue.table_schema(
            dg.TableSchema(
                columns=[dg.TableColumn(name=n, type=str(t)) for n, t in frame.schema.items()]
            )
        ),
    }
    timestamps = spec.timestamp_columns
    if timestamps and frame.height:
        first = frame.select(pl.min_horizontal(pl.col(timestamps).min())).item()
        last = frame.select(pl.max_horizontal(pl.col(timestamps).max())).item()
        metadata["first_timestamp"] = dg.MetadataValue.text(str(first))
        metadata["last_timestamp"] = dg.MetadataValue.text(str(last))
    return metadata


def loaded_as_of(instance: dg.DagsterInstance) -> date | None:
    """The as-of date of the source the raw tables were last loaded from."""
    event = instance.get_latest_materialization_event(raw_asset_key("orders"))
    materialization = event.asset_materialization if event else None
    value = materialization.metadata.get("as_of_date") if materialization else None
    return date.fromisoformat(value.value) if value is not None else None


def _source_dates(
    orders: pl.DataFrame, source: Path, settings: Settings, *, is_raw_dir: bool
) -> list[date]:
    """The reference dates this source can serve, up to its as-of date: the setting (for
    the export in raw/ only), else its `_SUCCESS` manifest, else the last purchase + 1."""
    stamps = orders.get_column("order_purchase_timestamp")
    declared = (settings.raw_as_of if is_raw_dir else None) or (
        declared_as_of(source) if source.is_dir() else None
    )
    as_of = resolve_as_of(stamps.max().date(), declared)
    return reference_dates(
        stamps.min().date(),
        as_of,
        window_days=settings.feature_window_days,
        start=settings.partition_start,
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
    context: dg.AssetExecutionContext, config: RawSourceConfig, warehouse: WarehouseResource
):
    """Load and validate every source file before writing any table, then replace all the
    raw tables in one transaction: bad input is refused whole, and a run stopped halfway
    (killed, out of memory) leaves every table as it was, never some tables new and some
    old. Once they are committed, the source's reference dates get their partitions."""
    settings = load_settings()
    source = Path(config.source) if config.source else settings.raw_dir
    context.log.info(f"loading source tables from {source}")
    tables = load_dataset(source)
    dates = _source_dates(tables["orders"], source, settings, is_raw_dir=not config.source)
    loaded = loaded_as_of(context.instance)
    if config.source and loaded and loaded > dates[-1]:
        raise dg.Failure(
            f"the raw tables hold data as of {loaded}, newer than this source ({dates[-1]}): "
            "loading it would roll them back. The features and scores of "
            f"{dates[-1]} need no reload (only data before a date is used): run the "
            "score_sellers job for that partition instead.",
            allow_retries=False,
        )
    frames = {
        # an optional file that is absent: an empty table, same schema
        name: tables[name] if tables.get(name) is not None else pl.DataFrame(schema=spec.schema)
        for name, spec in TABLES.items()
    }
    with warehouse.transaction() as conn:
        for name, frame in frames.items():
            write_frame(conn, RAW_SCHEMA, name, frame)
    new = register_reference_dates(context.instance, dates)
    context.log.info(f"reference dates {dates[0]} .. {dates[-1]}: {len(new)} new partition(s)")
    served = {
        "as_of_date": dg.MetadataValue.text(dates[-1].isoformat()),
        "reference_dates": dg.MetadataValue.text(f"{dates[0]} .. {dates[-1]} ({len(dates)})"),
    }
    for name, frame in frames.items():
        metadata = _table_metadata(frame, TABLES[name]) | (served if name == "orders" else {})
        yield dg.MaterializeResult(asset_key=raw_asset_key(name), metadata=metadata)
