"""Raw tables: one asset per source file, loaded together so a bad file changes nothing."""

from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL
from olist_churn_dagster.lib.loader import load_dataset
from olist_churn_dagster.lib.markdown import frame_to_markdown
from olist_churn_dagster.lib.schema import TABLES, TableSpec
from olist_churn_dagster.lib.settings import load_settings

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
    return dg.AssetKey(["raw", table])


def _table_metadata(frame: pl.DataFrame, spec: TableSpec) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "source_file": dg.MetadataValue.text(spec.file_name),
        "preview": dg.MetadataValue.md(frame_to_markdown(frame)),
    }
    timestamps = spec.timestamp_columns
    if timestamps and frame.height:
        first = frame.select(pl.min_horizontal(pl.col(timestamps).min())).item()
        last = frame.select(pl.max_horizontal(pl.col(timestamps).max())).item()
        metadata["first_timestamp"] = dg.MetadataValue.text(str(first))
        metadata["last_timestamp"] = dg.MetadataValue.text(str(last))
    return metadata


@dg.multi_asset(
    outs={
        name: dg.AssetOut(
            key=raw_asset_key(name),
            group_name=RAW_GROUP,
            description=f"`{spec.file_name}` as loaded, typed and validated.",
            kinds={"duckdb", "polars"},
            is_required=True,
        )
        for name, spec in TABLES.items()
    },
    pool=WAREHOUSE_POOL,
)
def raw_tables(context: dg.AssetExecutionContext, config: RawSourceConfig):
    """Load and validate every source file before writing any table, so bad input is
    refused whole and the tables loaded before stay as they were."""
    source = Path(config.source) if config.source else load_settings().raw_dir
    context.log.info(f"loading source tables from {source}")
    tables = load_dataset(source)
    for name, spec in TABLES.items():
        frame = tables.get(name)
        if frame is None:  # an optional file that is absent: an empty table, same schema
            frame = pl.DataFrame(schema=spec.schema)
        yield dg.Output(frame, output_name=name, metadata=_table_metadata(frame, spec))
