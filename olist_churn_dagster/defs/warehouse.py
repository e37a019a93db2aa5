"""The warehouse IO manager: dagster-duckdb-pandas with a polars handler beside it, and
every write (delete the partition, insert the new rows) in one DuckDB transaction.

Every connection, the IO manager's and the resource's, is opened by
`lib.warehouse.open_warehouse` (dagster-duckdb's own `duckdb.connect` is never called), so
the same two resources work on the local DuckDB file and on a DuckLake."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBIOManager, DuckDBResource

# Dagster has no public export of the DB IO manager's building blocks (`DbTypeHandler`,
# `TableSlice`, `DbIOManager`): they live in the private `dagster._core.storage.db_io_manager`,
# and Dagster's own type handlers (dagster-duckdb-pandas, -polars) import them from there.
# We take them from `dagster_duckdb.io_manager`, the module of the public `DuckDBIOManager`
# whose `type_handlers()` hook they serve; `DbIOManager` is needed because the only way to
# give the IO manager a transactional client is to override `create_io_manager`.
from dagster_duckdb.io_manager import DbIOManager, DbTypeHandler, DuckDbClient, TableSlice
from pydantic import Field

from olist_churn_dagster.defs.settings import ChurnSettings, churn_settings
from olist_churn_dagster.lib.warehouse import (
    WarehouseConflictError,
    WarehouseLockedError,
    WarehouseUnreachableError,
    in_transaction,
    is_ducklake,
    lock_backoff_seconds,
    open_warehouse,
    write_frames,
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
def retry_when_contended(retries: int, backoff_seconds: int) -> Iterator[None]:
    """A step that meets another process in the warehouse fails with Dagster's own retry
    (`RetryRequested`), up to `retries` times (OLIST_CHURN_LOCK_RETRIES), with no operator
    action:

    - a local file locked by another process (a reader such as a notebook blocks writers
      too): the step runs again after a doubling wait from `backoff_seconds`
      (OLIST_CHURN_LOCK_BACKOFF_SECONDS);
    - a DuckLake commit refused for a concurrent writer of the same table: nothing was
      committed and the other writer is done, so the step runs again after a short doubling
      wait (1 s, 2 s, ...) on the new snapshot;
    - a DuckLake's catalog session lost in the middle of the step (Postgres restarted):
      nothing was committed, and the step runs again after the same short doubling wait
      (1 s, 2 s, ... about a minute in all by default) on a new session, once the server is
      back.

    Every other warehouse error (a damaged file, a missing folder, a catalog that refuses
    the login) still fails at once."""
    try:
        yield
    except (WarehouseLockedError, WarehouseConflictError, WarehouseUnreachableError) as exc:
        try:
            attempt = dg.OpExecutionContext.get().retry_number
        except dg.DagsterInvariantViolationError:  # outside a step: nothing to retry
            raise exc from None
        base = backoff_seconds if isinstance(exc, WarehouseLockedError) else 1
        wait = lock_backoff_seconds(attempt, base, cap_seconds=120)
        dg.OpExecutionContext.get().log.warning(f"{exc} Retrying in {wait} s.")
        raise dg.RetryRequested(max_retries=retries, seconds_to_wait=wait) from exc


@contextmanager
def warehouse_transaction(
    database: str, data_path: str | None, *, retries: int, backoff_seconds: int
) -> Iterator:
    """A connection inside one transaction (`lib.warehouse.in_transaction`), opened and
    committed with the retry of `retry_when_contended`."""
    with retry_when_contended(retries, backoff_seconds):
        conn = open_warehouse(database, data_path=data_path)
        with in_transaction(conn):
            yield conn


class TransactionalDuckDbClient(DuckDbClient):
    """Opens each IO-manager connection inside a transaction, so the delete of a partition
    and the insert of its new rows commit together or not at all."""

    @staticmethod
    @contextmanager
    def connect(context, _table_slice) -> Iterator:
        config = context.resource_config
        with warehouse_transaction(
            config["database"],
            config.get("data_path"),
            retries=config["lock_retries"],
            backoff_seconds=config["lock_backoff_seconds"],
        ) as conn:
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


def write_output(
    conn, schema: str, table: str, frame: pl.DataFrame, *, partitioned: bool
) -> tuple[int, dict[str, object]]:
    """Writes a frame into `schema.table` on the caller's transaction: a whole table is
    replaced (so its schema follows the code), a partition is inserted by column name.
    Returns the rows written and the metadata to record (the column schema, the table)."""
    rows, columns = write_frames(conn, schema, table, [frame], append=partitioned)
    return rows, {
        "dagster/column_schema": column_schema(columns),
        "dagster/table_name": f"{schema}.{table}",
    }


def column_schema(
    columns: Mapping[str, pl.DataType], descriptions: Mapping[str, str] | None = None
) -> dg.TableSchema:
    """A table's columns as the UI shows them, with a description where one is given."""
    described = descriptions or {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=name, type=str(dtype), description=described.get(name))
            for name, dtype in columns.items()
        ]
    )


class PolarsTableHandler(DbTypeHandler[pl.DataFrame]):
    """Stores polars frames: whole tables are replaced (so their schema follows the code),
    partitions are inserted by column name into the table the partition was deleted from."""

    def handle_output(self, context, table_slice: TableSlice, obj: pl.DataFrame, connection):
        partitioned = bool(table_slice.partition_dimensions)
        rows, metadata = write_output(
            connection, table_slice.schema, table_slice.table, obj, partitioned=partitioned
        )
        context.add_output_metadata({**metadata, **_row_count_metadata(context, partitioned, rows)})

    def load_input(self, context, table_slice: TableSlice, connection) -> pl.DataFrame:
        if table_slice.partition_dimensions and len(context.asset_partition_keys) == 0:
            return pl.DataFrame()
        return connection.execute(DuckDbClient.get_select_statement(table_slice)).pl()

    @property
    def supported_types(self):
        return [pl.DataFrame]


_DATA_PATH_FIELD = Field(
    default=None,
    description="Where a DuckLake warehouse keeps its Parquet files (ignored for a file).",
)
_LOCK_RETRIES_FIELD = Field(description="Retries of a step that met another process.")
_LOCK_BACKOFF_FIELD = Field(description="First wait before such a retry, doubled each time.")


class RangeMetadataDbIOManager(DbIOManager):
    """Records the metadata of a write over a range of partitions once. A run over a range
    logs one materialization per partition, and Dagster copies an output's metadata onto
    every one of them: a feature backfill wrote a copy of the column schema, the preview
    and the IO manager's query (which names every date of the range) per partition, each
    stored and committed twice in the event log. Here it goes on one
    partition only, the one whose materialization Dagster records last (it follows
    `asset_partition_keys`), so the UI shows it as the asset's latest materialization."""

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if not context.has_asset_partitions or context.has_partition_key:
            super().handle_output(context, obj)
            return
        collecting = _CollectingOutputContext(context)
        super().handle_output(collecting, obj)  # type: ignore[arg-type]
        # The step's own context records metadata for one partition; an OutputContext can
        # only record it for all of them.
        dg.AssetExecutionContext.get().add_asset_metadata(
            collecting.metadata,
            asset_key=context.asset_key,
            partition_key=context.asset_partition_keys[-1],
        )


class _CollectingOutputContext:
    """An OutputContext whose `add_output_metadata` keeps the metadata instead of recording
    it on the output (which would copy it onto every partition of a range). A key added
    twice keeps its first value, as Dagster's DbIOManager expects of the table name it adds
    after the handler's."""

    def __init__(self, context: dg.OutputContext) -> None:
        self._context = context
        self.metadata: dict[str, object] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self._context, name)

    def add_output_metadata(self, metadata: Mapping[str, object]) -> None:
        self.metadata = {**metadata, **self.metadata}


class _CreatedOnFirstUse(dg.IOManager):
    """An IO manager built when a step first stores or loads a value through it. Dagster
    opens the IO manager for every asset step, also for one whose outputs it never handles
    (the feature tables, which write their own); this way such a step does not import
    pandas for the pandas handler (about a second of CPU) before its compute starts."""

    def __init__(self, create: Callable[[], dg.IOManager]) -> None:
        self._create = create
        self._manager: dg.IOManager | None = None

    def _get(self) -> dg.IOManager:
        if self._manager is None:
            self._manager = self._create()
        return self._manager

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        self._get().handle_output(context, obj)

    def load_input(self, context: dg.InputContext) -> object:
        return self._get().load_input(context)


class WarehouseIOManager(DuckDBIOManager):
    """dagster-duckdb-pandas's IO manager (its pandas handler; polars frames by default)
    with a polars handler and transactional writes. Built on `DuckDBIOManager`, not on
    `DuckDBPandasIOManager`, which only adds that handler: pandas is then imported by the
    first step that stores or loads a value through the IO manager (`_CreatedOnFirstUse`),
    not each time the code location loads."""

    data_path: str | None = _DATA_PATH_FIELD
    lock_retries: int = _LOCK_RETRIES_FIELD
    lock_backoff_seconds: int = _LOCK_BACKOFF_FIELD

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        from dagster_duckdb_pandas import DuckDBPandasTypeHandler

        return [PolarsTableHandler(), DuckDBPandasTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pl.DataFrame

    def create_io_manager(self, context) -> dg.IOManager:
        return _CreatedOnFirstUse(
            lambda: RangeMetadataDbIOManager(
                db_client=TransactionalDuckDbClient(),
                database=self.database,
                schema=self.schema_,
                type_handlers=self.type_handlers(),
                default_load_type=self.default_load_type(),
                io_manager_name="WarehouseIOManager",
            )
        )


class WarehouseResource(DuckDBResource):
    """SQL access to the warehouse for checks and assets, opened like every other path in
    (clear errors at once for a damaged or locked file, not minutes of blind retries)."""

    data_path: str | None = _DATA_PATH_FIELD
    lock_retries: int = _LOCK_RETRIES_FIELD
    lock_backoff_seconds: int = _LOCK_BACKOFF_FIELD

    @contextmanager
    def transaction(self) -> Iterator:
        with warehouse_transaction(
            self.database,
            self.data_path,
            retries=self.lock_retries,
            backoff_seconds=self.lock_backoff_seconds,
        ) as conn:
            yield conn

    @contextmanager
    def get_connection(self) -> Iterator:
        with retry_when_contended(self.lock_retries, self.lock_backoff_seconds):
            conn = open_warehouse(self.database, data_path=self.data_path)
        try:
            yield conn
        finally:
            conn.close()


def warehouse_resources(
    database: str | Path,
    data_path: str | Path | None = None,
    settings: ChurnSettings | None = None,
) -> dict[str, dg.ConfigurableResource | object]:
    """The IO manager and the query resource, both on the same warehouse: a local DuckDB
    file, or when deployed a DuckLake (whose files go under `data_path`, by default the
    OLIST_CHURN_WAREHOUSE_DATA_PATH setting) or a server database (`md:<name>`). Their lock
    retries come from `settings` (by default the environment's)."""
    settings = settings or churn_settings()
    if data_path is None and is_ducklake(database):
        data_path = settings.warehouse_data_path
    config = {
        "database": str(database),
        "data_path": str(data_path) if data_path is not None else None,
        "lock_retries": settings.lock_retries,
        "lock_backoff_seconds": settings.lock_backoff_seconds,
    }
    return {"io_manager": WarehouseIOManager(**config), "warehouse": WarehouseResource(**config)}
