"""Servers of the deployed stack killed (SIGKILL) while work is in flight.

One stack (`make stack`'s code, DuckLake warehouse, the stack test's scale) for the module,
its raw tables loaded once. Each test kills one server while a feature backfill's run
executes, then checks that supervisord started it again, that Dagster got over it without
an operator (the backfill completes, every partition of it whole in the DuckLake) and how
long the recovery took (printed; docs/reliability.md keeps the figures).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.stack import postgres, servers
from olist_churn_dagster_tests.e2e.conftest import running_stack
from olist_churn_dagster_tests.e2e.server import (
    GraphQL,
    launch_asset_backfill,
    launch_job,
    runs,
    wait_backfill,
    wait_runs_finished,
    wait_until,
)
from olist_churn_dagster_tests.e2e.test_dagster_dev import (
    FEATURE_ASSETS,
    assert_succeeded,
    materialized_pairs,
    partition_keys,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The goal: a killed server is back and serving within a minute.
RECOVERY_LIMIT = 60.0
DATES_PER_BACKFILL = 60


@dataclass(frozen=True)
class Stack:
    config: servers.StackConfig
    gql: GraphQL
    keys: list[str]  # the reference dates the raw load registered


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The stack with its raw tables loaded; this process reads its warehouse as the
    servers do, with the Postgres password in PGPASSWORD."""
    with running_stack("stack-faults") as config, pytest.MonkeyPatch.context() as patch:
        patch.setenv(postgres.PASSWORD_ENV, config.postgres.password)
        gql = GraphQL(config.webserver_url, timeout=60)
        (load,) = wait_runs_finished(
            gql, "load_raw_tables", timeout=300, runIds=[launch_job(gql, "load_raw_tables")]
        )
        assert_succeeded(gql, load)
        yield Stack(config, gql, partition_keys(gql, FEATURE_ASSETS[0]))


def _say(line: str) -> None:
    print(f"\n[stack-faults] {line}", file=sys.stderr)


def _server(config: servers.StackConfig, name: str) -> servers.ServiceStatus:
    return {state.name: state for state in servers.status(config.root)}[name]


def _started_run(gql: GraphQL, backfill_id: str) -> dict:
    """The backfill's run, once it executes (its worker started)."""

    def probe() -> dict | None:
        found = runs(gql, tags={"dagster/backfill": backfill_id})
        return next((r for r in found if r["status"] == "STARTED"), None)

    return wait_until(f"a started run of backfill {backfill_id}", probe, timeout=300)


def _kill(config: servers.StackConfig, name: str) -> tuple[int, float]:
    """SIGKILL the server's process (only it, as the kernel's OOM killer would): its pid
    and the wall-clock time of the kill."""
    pid = _server(config, name).pid
    assert pid, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)
    return pid, time.time()


def _restarted(config: servers.StackConfig, name: str, old_pid: int) -> servers.ServiceStatus:
    def probe() -> servers.ServiceStatus | None:
        state = _server(config, name)
        return state if state.running and state.pid != old_pid else None

    state = wait_until(f"{name} restarted", probe, timeout=RECOVERY_LIMIT, interval=0.5)
    assert state.restarts == 1, state
    return state


LOCATION = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus updatedTimestamp locationOrLoadError { __typename }
} } } }
"""


def _location_reloaded_since(gql: GraphQL, since: float) -> bool | None:
    """The webserver's code location loaded again from a code server, after `since`."""
    try:
        (entry,) = gql(LOCATION)["workspaceOrError"]["locationEntries"]
    except OSError:
        return None
    loaded = entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
    return True if loaded and entry["updatedTimestamp"] > since else None


def _assert_backfill_whole(stack: Stack, backfill_id: str, keys: list[str]) -> list[dict]:
    """The backfill completed; its successful runs materialized every (feature, date), and
    the DuckLake holds every date of every feature table with the same sellers per date:
    no partition missing or partly written."""
    state = wait_backfill(stack.gql, backfill_id, timeout=600)
    assert state["status"] == "COMPLETED_SUCCESS", state
    found = runs(stack.gql, tags={"dagster/backfill": backfill_id})
    succeeded = [run for run in found if run["status"] == "SUCCESS"]
    assert succeeded, found
    pairs = set().union(*(materialized_pairs(stack.gql, run["runId"]) for run in succeeded))
    expected = {("/".join(path), key) for path in FEATURE_ASSETS for key in keys}
    assert pairs >= expected, f"{len(expected - pairs)} (feature, date) never materialized"

    per_table = _rows_per_date(stack.config, keys)
    for table, rows in per_table.items():
        assert [day for day, _ in rows] == sorted(keys), f"features.{table}: dates missing"
    assert len({tuple(rows) for rows in per_table.values()}) == 1, "sellers per date differ"
    return found


def _rows_per_date(config: servers.StackConfig, keys: list[str]) -> dict[str, list[tuple]]:
    from olist_churn_dagster.lib.warehouse import close_ducklakes, open_warehouse

    conn = open_warehouse(config.warehouse_setting, read_only=True, data_path=config.lake_dir)
    try:
        return {
            family: conn.execute(
                f"SELECT reference_date::VARCHAR, count(*) FROM features.seller_{family} "
                "WHERE reference_date::VARCHAR IN (SELECT unnest(?)) GROUP BY 1 ORDER BY 1",
                [keys],
            ).fetchall()
            for family in FEATURE_FAMILIES
        }
    finally:
        conn.close()
        close_ducklakes()


def test_the_daemon_killed_during_a_feature_backfill_comes_back_and_the_backfill_completes(
    stack: Stack,
) -> None:
    keys = stack.keys[:DATES_PER_BACKFILL]
    backfill_id = launch_asset_backfill(stack.gql, FEATURE_ASSETS, keys, title="daemon killed")
    run = _started_run(stack.gql, backfill_id)

    pid, killed_at = _kill(stack.config, "daemon")
    daemons = wait_until(
        "every daemon beating again",
        lambda: servers.daemons_beating_since(stack.config, killed_at),
        timeout=RECOVERY_LIMIT,
    )
    recovery = time.time() - killed_at
    restarted = _restarted(stack.config, "daemon", pid)
    assert "MONITORING" in daemons and "EVENT_LOG_CONSUMER" in daemons, daemons
    _say(
        f"daemon SIGKILLed (pid {pid}) during run {run['runId']}: restarted by supervisord "
        f"as pid {restarted.pid}, every daemon ({len(daemons)}) beating again "
        f"{recovery:.1f} s after the kill"
    )

    found = _assert_backfill_whole(stack, backfill_id, keys)
    (finished,) = [r for r in found if r["runId"] == run["runId"]]
    retries = [r for r in found if r["runId"] != run["runId"]]
    _say(
        f"backfill of {len(keys)} dates complete: the run in flight ended {finished['status']}"
        f", {len(retries)} retries, done {time.time() - killed_at:.1f} s after the kill"
    )
    # The run worker is the code server's child, not the daemon's: it runs on; the
    # daemon's monitoring thread, back with it, watched the run until it ended.
    daemon_log = servers.log_file(stack.config, "daemon").read_text(errors="replace")
    since_restart = daemon_log.rpartition("Instance is configured with the following daemons")[2]
    if finished["endTime"] > killed_at + recovery:
        assert f"Checking run {run['runId']}" in since_restart, "run monitoring did not see it"
    assert recovery < RECOVERY_LIMIT


def test_the_code_server_killed_during_a_run_comes_back_and_the_ui_reloads_it(
    stack: Stack,
) -> None:
    keys = stack.keys[DATES_PER_BACKFILL : 2 * DATES_PER_BACKFILL]
    backfill_id = launch_asset_backfill(stack.gql, FEATURE_ASSETS, keys, title="code killed")
    run = _started_run(stack.gql, backfill_id)

    pid, killed_at = _kill(stack.config, "code_server")
    wait_until(
        "the webserver's code location reloaded",
        lambda: _location_reloaded_since(stack.gql, killed_at),
        timeout=RECOVERY_LIMIT,
    )
    recovery = time.time() - killed_at
    restarted = _restarted(stack.config, "code_server", pid)
    _say(
        f"code server SIGKILLed (pid {pid}) during run {run['runId']}: restarted by "
        f"supervisord as pid {restarted.pid}, code location LOADED in the webserver again "
        f"{recovery:.1f} s after the kill"
    )

    # New work goes through the restarted code server: a run submitted to the webserver,
    # launched by the daemon, executed as the new code server's subprocess.
    after = stack.keys[-1:]
    new_backfill = launch_asset_backfill(stack.gql, FEATURE_ASSETS, after, title="after")

    found = _assert_backfill_whole(stack, backfill_id, keys)
    (finished,) = [r for r in found if r["runId"] == run["runId"]]
    _say(
        f"backfill of {len(keys)} dates complete: the run in flight ended {finished['status']}"
        f", {len(found) - 1} retries, done {time.time() - killed_at:.1f} s after the kill"
    )
    (new_run,) = _assert_backfill_whole(stack, new_backfill, after)
    assert new_run["status"] == "SUCCESS", new_run
    _say(f"a run submitted after the recovery: done {time.time() - killed_at:.1f} s after the kill")
    assert recovery < RECOVERY_LIMIT
