"""Raw tables: one asset per source file, loaded together so a bad file changes nothing."""

from pathlib import Path

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource
from pydantic import Field

from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL
from olist_churn_dagster.lib.loader import load_dataset
from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.schema import TABLES, TableSpec
from olist_churn_dagster.lib.settings import load_settings
from olist_churn_dagster.lib.warehouse import transaction, write_frame

RAW_GROUP = "raw"
RAW_SCHEMA = "raw"


class RawSourceConfig(dg.Config):
    source: str = Field(
        default="",
        description=(
            "Folder with the nine Olist CSV files, or the Kaggle zip. "
            "Empty: $OLIST_CHURN_DATA_DIR/raw."
        ),
    )


def raw_asset_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", table])


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
    context: dg.AssetExecutionContext, config: RawSourceConfig, warehouse: DuckDBResource
):
    """Load and validate every source file before writing any table, then replace all the
    raw tables in one transaction: bad input is refused whole, and a run stopped halfway
    (killed, out of memory) leaves every table as it was, never some tables new and some
    old."""
    source = Path(config.source) if config.source else load_settings().raw_dir
    context.log.info(f"loading source tables from {source}")
    tables = load_dataset(source)
    frames = {
        # an optional file that is absent: an empty table, same schema
        name: tables[name] if tables.get(name) is not None else pl.DataFrame(schema=spec.schema)
        for name, spec in TABLES.items()
    }
    with transaction(warehouse.database) as conn:
        for name, frame in frames.items():
            write_frame(conn, RAW_SCHEMA, name, frame)
    for name, frame in frames.items():
        yield dg.MaterializeResult(
            asset_key=raw_asset_key(name), metadata=_table_metadata(frame, TABLES[name])
        )
