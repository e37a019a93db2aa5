"""Dagster's Postgres storage with its connections kept open, for the stack's instance.

`dagster_postgres` opens a new connection for every statement it runs (SQLAlchemy's
NullPool) in every process but the webserver: each event a run or the daemon records (a
planned and a materialization event per partition and asset, each written in two
transactions) pays a TCP connection, a SCRAM password exchange and a Postgres backend
started for it, some 15-25 ms where the statement takes 0.3 ms. The webserver instead
keeps one connection per storage open (`optimize_for_webserver`); this class does the same
in every process that loads the instance (daemon, code server, run workers), with no
statement timeout there (the webserver sets its own when it loads the instance).
Statements still commit one by one, as before: nothing recorded waits in a buffer.

A kept connection dies with a Postgres restart; each one is pinged when the pool hands it
out and replaced if Postgres closed it (SQLAlchemy's pessimistic disconnect handling), so
a run's next event goes to the restarted server instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config
from sqlalchemy import event, exc, pool

# As `dagster-webserver`'s defaults: connections renewed after an hour, and up to 20 more
# than the pooled one while threads of the process use the storage at once.
POOL_RECYCLE_SECONDS = 3600
POOL_MAX_OVERFLOW = 20
NO_STATEMENT_TIMEOUT = 0


def _replace_if_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Before a pooled connection is used: one round trip; a connection Postgres closed
    (restarted, say) is discarded and the pool connects anew."""
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        raise exc.DisconnectionError("the pooled connection was closed by Postgres") from error


# Every pool of the kind the storages below keep (Dagster's other engines use NullPool: a
# new connection each time, nothing to ping).
if not event.contains(pool.QueuePool, "checkout", _replace_if_closed):
    event.listen(pool.QueuePool, "checkout", _replace_if_closed)


class PooledPostgresStorage(DagsterPostgresStorage):
    """`DagsterPostgresStorage` (same configuration, tables and semantics) whose run, event
    log and schedule storages each keep a connection open instead of one per statement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
            storage.optimize_for_webserver(
                statement_timeout=NO_STATEMENT_TIMEOUT,
                pool_recycle=POOL_RECYCLE_SECONDS,
                max_overflow=POOL_MAX_OVERFLOW,
            )

    @classmethod
    def from_config_value(
        cls, inst_data: Any, config_value: Mapping[str, Any]
    ) -> PooledPostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
