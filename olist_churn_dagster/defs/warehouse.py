"""The warehouse IO manager: dagster-duckdb-pandas with a polars handler beside it, and
every write (delete the partition, insert the new rows) in one DuckDB transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

# Dagster has no public export of the DB IO manager's building blocks (`DbTypeHandler`,
# `TableSlice`, `DbIOManager`): they live in the private `dagster._core.storage.db_io_manager`,
# and Dagster's own type handlers (dagster-duckdb-pandas, -polars) import them from there.
# We take them from `dagster_duckdb.io_manager`, the module of the public `DuckDBIOManager`
# whose `type_handlers()` hook they serve; `DbIOManager` is needed because the only way to
# give the IO manager a transactional client is to override `create_io_manager`.
from dagster_duckdb.io_manager import DbIOManager, DbTypeHandler, DuckDbClient, TableSlice
from dagster_duckdb_pandas import DuckDBPandasIOManager, DuckDBPandasTypeHandler

from olist_churn_dagster.lib.settings import load_settings
from olist_churn_dagster.lib.warehouse import (
    WarehouseLockedError,
    in_transaction,
    lock_backoff_seconds,
    open_warehouse,
    write_frame,
)

WAREHOUSE_POOL = "warehouse"


def warehouse_check(
    asset: dg.AssetKey, *, name: str, description: str, **kwargs: object
) -> Callable[[Callable[..., dg.AssetCheckResult]], dg.AssetChecksDefinition]:
    """`dg.asset_check` for a check that queries the warehouse: it runs in the warehouse's pool."""
    return dg.asset_check(
        asset=asset, name=name, description=description, pool=WAREHOUSE_POOL, **kwargs
    )


def table_asset_key(table: str) -> dg.AssetKey:
    """The asset stored in `schema.name` (the IO manager writes key `[schema, name]` there)."""
    return dg.AssetKey(table.split("."))


@contextmanager
def retry_when_locked() -> Iterator[None]:
    """A warehouse file locked by another process (a reader such as a notebook blocks
    writers too) fails the step with Dagster's own retry: the step runs again after a
    doubling wait, up to OLIST_CHURN_LOCK_RETRIES times, with no operator action. Every
    other warehouse error (a damaged file, a missing folder) still fails at once."""
    try:
        yield
    except WarehouseLockedError as exc:
        settings = load_settings()
        try:
            attempt = dg.OpExecutionContext.get().retry_number
        except dg.DagsterInvariantViolationError:  # outside a step: nothing to retry
            raise exc from None
        wait = lock_backoff_seconds(attempt, settings.lock_backoff_seconds)
        dg.OpExecutionContext.get().log.warning(f"{exc} Retrying in {wait} s.")
        raise dg.RetryRequested(max_retries=settings.lock_retries, seconds_to_wait=wait) from exc


@contextmanager
def warehouse_transaction(database: str) -> Iterator:
    """A connection inside one transaction (`lib.warehouse.in_transaction`), opened with
    the lock retry."""
    with retry_when_locked():
        conn = open_warehouse(database)
    with in_transaction(conn):
        yield conn


class TransactionalDuckDbClient(DuckDbClient):
    """Opens each IO-manager connection inside a transaction, so the delete of a partition
    and the insert of its new rows commit together or not at all."""

    @staticmethod
    @contextmanager
    def connect(context, _table_slice) -> Iterator:
        with warehouse_transaction(context.resource_config["database"]) as conn:
            yield conn


def _row_count_metadata(context, partitioned: bool, rows: int) -> dict[str, int]:
    """Row count under the key the UI shows: a single partition's own count, a whole
    table's count, or for a run over a range the rows written for the whole range."""
    if not partitioned:
        return {"dagster/row_count": rows}
    if context.has_partition_key:
        return {"dagster/partition_row_count": rows}
    return {
        "rows_written_for_range": rows,
        "partitions_in_range": len(context.asset_partition_keys),
    }


@dataclass
class FrameBatches:
    """An output written as consecutive frames into one table slice, inside the same
    transaction as the slice's delete: large backfills never hold all rows at once.
    `metadata` is recorded with the write's own (see `RangeMetadataDbIOManager`)."""

    batches: Iterable[pl.DataFrame]
    metadata: Mapping[str, object] = field(default_factory=dict)


class PolarsTableHandler(DbTypeHandler[pl.DataFrame | FrameBatches]):
    """Stores polars frames: whole tables are replaced (so their schema follows the code),
    partitions are inserted by column name into the table the partition was deleted from."""

    def handle_output(
        self, context, table_slice: TableSlice, obj: pl.DataFrame | FrameBatches, connection
    ):
        partitioned = bool(table_slice.partition_dimensions)
        batches = obj.batches if isinstance(obj, FrameBatches) else [obj]
        extra = obj.metadata if isinstance(obj, FrameBatches) else {}
        row_count, schema = 0, None
        for batch in batches:
            # Later batches always append: the first one created or replaced the table.
            append = partitioned or schema is not None
            write_frame(connection, table_slice.schema, table_slice.table, batch, append=append)
            row_count += batch.height
            schema = schema or batch.schema
        if schema is None:
            raise ValueError(f"no rows nor schema to write to {table_slice.table}")
        context.add_output_metadata(
            {
                **extra,
                **_row_count_metadata(context, partitioned, row_count),
                "dagster/column_schema": dg.TableSchema(
                    columns=[
                        dg.TableColumn(name=name, type=str(dtype)) for name, dtype in schema.items()
                    ]
                ),
                "dagster/table_name": f"{table_slice.schema}.{table_slice.table}",
            },
        )

    def load_input(self, context, table_slice: TableSlice, connection) -> pl.DataFrame:
        if table_slice.partition_dimensions and len(context.asset_partition_keys) == 0:
            return pl.DataFrame()
        return connection.execute(DuckDbClient.get_select_statement(table_slice)).pl()

    @property
    def supported_types(self):
        return [pl.DataFrame, FrameBatches]


class RangeMetadataDbIOManager(DbIOManager):
    """Records the metadata of a write over a range of partitions once. A run over a range
    logs one materialization per partition, and Dagster copies an output's metadata onto
    every one of them: at scale 1 a feature backfill wrote 3,492 copies of the column
    schema, the preview and the IO manager's query (which names every date of the range),
    about 19 KB each, each stored and committed twice in the event log. Here it goes on one
    partition only, the one whose materialization Dagster records last (it follows
    `asset_partition_keys`), so the UI shows it as the asset's latest materialization."""

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        super().handle_output(context, obj)
        if context.has_asset_partitions and not context.has_partition_key:
            context.step_context.add_asset_metadata(
                context.consume_logged_metadata(),
                asset_key=context.asset_key,
                partition_key=context.asset_partition_keys[-1],
            )


class WarehouseIOManager(DuckDBPandasIOManager):
    """The DuckDB pandas IO manager with a polars handler and transactional writes."""

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [PolarsTableHandler(), DuckDBPandasTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pl.DataFrame

    def create_io_manager(self, context) -> DbIOManager:
        return RangeMetadataDbIOManager(
            db_client=TransactionalDuckDbClient(),
            database=self.database,
            schema=self.schema_,
            type_handlers=self.type_handlers(),
            default_load_type=self.default_load_type(),
            io_manager_name="WarehouseIOManager",
        )


class WarehouseResource(DuckDBResource):
    """SQL access to the warehouse for checks and assets, opened like every other path in
    (clear errors at once for a damaged or locked file, not minutes of blind retries)."""

    @contextmanager
    def transaction(self) -> Iterator:
        with warehouse_transaction(self.database) as conn:
            yield conn

    @contextmanager
    def get_connection(self) -> Iterator:
        with retry_when_locked():
            conn = open_warehouse(self.database)
        try:
            yield conn
        finally:
            conn.close()


def warehouse_resources(database: str | Path) -> dict[str, dg.ConfigurableResource | object]:
    """The IO manager and the query resource, both on the same DuckDB database: a local
    file, or a server database (MotherDuck `md:<name>`) when deployed."""
    return {
        "io_manager": WarehouseIOManager(database=str(database)),
        "warehouse": WarehouseResource(database=str(database)),
    }
