"""Faults injected on the deployed stack while work is in flight.

One stack (`make stack`'s code, DuckLake warehouse, the stack test's scale) for the module,
its raw tables loaded once. Each test injects one fault: SIGKILL to the daemon or the code
server during a feature backfill, a fast shutdown of Postgres or a SIGKILL to the run
worker inside a feature table's DuckLake write, MLflow's server stopped during training.
Each checks that supervisord brought the server back, that Dagster got over it without
an operator (runs complete or are retried to completion, every partition whole in the
DuckLake, one alert per failed run) and how long the recovery took (printed;
docs/reliability.md keeps the figures).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from olist_churn_dagster.lib.features import FEATURE_FAMILIES
from olist_churn_dagster.stack import postgres, servers, supervision
from olist_churn_dagster.stack.launcher import STARTED_PROCESS
from olist_churn_dagster_tests.e2e.conftest import running_stack
from olist_churn_dagster_tests.e2e.server import (
    GraphQL,
    GraphQLError,
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


# fault_hook/sitecustomize.py, on every server's PYTHONPATH: holds a run worker inside a
# DuckLake write of the features when the test asks (a `hold` file in the hook folder).
FAULT_HOOK = Path(__file__).resolve().parent / "fault_hook"


@dataclass(frozen=True)
class Stack:
    config: servers.StackConfig
    gql: GraphQL
    keys: list[str]  # the reference dates the raw load registered
    hook: Path  # the folder of the write hook's files (hold, held, release)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with its raw tables loaded and the write hook in its servers; this
    process reads its warehouse as the servers do, with the Postgres password in
    PGPASSWORD."""
    hook = tmp_path_factory.mktemp("write-hook")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(FAULT_HOOK))
        patch.setenv("STACK_FAULT_HOOK_DIR", str(hook))
        with running_stack("stack-faults") as config:
            patch.setenv(postgres.PASSWORD_ENV, config.postgres.password)
            gql = GraphQL(config.webserver_url, timeout=60)
            (load,) = wait_runs_finished(
                gql, "load_raw_tables", timeout=300, runIds=[launch_job(gql, "load_raw_tables")]
            )
            assert_succeeded(gql, load)
            yield Stack(config, gql, partition_keys(gql, FEATURE_ASSETS[0]), hook)


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


def _each_family(
    config: servers.StackConfig, keys: list[str], sql: str, fetch: Callable[[Any], Any]
) -> dict[str, Any]:
    """`sql` (a `{family}` table, the keys as its one parameter) run on each feature table
    of the stack's DuckLake, its result taken by `fetch`."""
    from olist_churn_dagster.lib.warehouse import close_ducklakes, open_warehouse

    conn = open_warehouse(config.warehouse_setting, read_only=True, data_path=config.lake_dir)
    try:
        return {
            family: fetch(conn.execute(sql.format(family=family), [keys]))
            for family in FEATURE_FAMILIES
        }
    finally:
        conn.close()
        close_ducklakes()


def _rows_per_date(config: servers.StackConfig, keys: list[str]) -> dict[str, list[tuple]]:
    sql = (
        "SELECT reference_date::VARCHAR, count(*) FROM features.seller_{family} "
        "WHERE reference_date::VARCHAR IN (SELECT unnest(?)) GROUP BY 1 ORDER BY 1"
    )
    return _each_family(config, keys, sql, lambda result: result.fetchall())


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


# ----------------------------------------------- Postgres, MLflow, a run worker (its write held)


def _dagster_rows(config: servers.StackConfig, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of a query on Dagster's database of the stack (runs, events)."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(config.postgres.libpq(servers.DAGSTER_DB))) as conn:
        cursor = conn.cursor()
        cursor.execute(sql, params)
        return cursor.fetchall()


def _arm(hook: Path, table: str = "") -> None:
    """The next feature write of a run worker (into `table`, or any) holds inside its
    transaction."""
    for leftover in hook.iterdir():
        leftover.unlink()
    (hook / "hold").write_text(table)


def _held(hook: Path) -> tuple[int, str]:
    """The pid of the run worker holding inside its write, and the table it writes."""
    held = wait_until("a worker holding in its write", lambda: _read(hook / "held"), timeout=300)
    pid, table = held.split()
    return int(pid), table


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _announced_worker(config: servers.StackConfig, run_id: str) -> int:
    """The pid the run's worker announced in the run's event log."""
    announced = [
        message
        for _, message in _events(config, run_id, "ENGINE_EVENT")
        if message.startswith(STARTED_PROCESS)
    ]
    assert len(announced) == 1, announced
    return int(re.search(r"pid: (\d+)", announced[0]).group(1))


def _events(config: servers.StackConfig, run_id: str, kind: str) -> list[tuple[str, str]]:
    """(step key, message) of the run's events of one type."""
    return _dagster_rows(
        config,
        "SELECT coalesce(step_key, ''), coalesce(event::json->'dagster_event'->>'message', "
        "event::json->>'user_message') FROM event_logs "
        "WHERE run_id = %s AND dagster_event_type = %s ORDER BY id",
        (run_id, kind),
    )


SERVING = """
query Serving($runId: ID!) {
  runsOrError(limit: 1) { __typename }
  logsForRun(runId: $runId, limit: 1) { __typename }
  instance { daemonHealth { allDaemonStatuses { daemonType } } }
  repositoriesOrError { ... on RepositoryConnection { nodes { sensors {
    sensorState { ticks(limit: 1) { id } }
  } } } }
}
"""


def _webserver_serving(stack: Stack, run_id: str, failures: list[str]) -> bool | None:
    """True once one request reads runs, events, daemons and sensor ticks (the run,
    event-log and schedule storages) without an error; each error is kept in `failures`."""
    try:
        answer = stack.gql(SERVING, {"runId": run_id})
    except (GraphQLError, OSError) as exc:
        failures.append(str(exc)[:200])
        return None
    if "PythonError" in json.dumps(answer):
        failures.append(json.dumps(answer)[:200])
        return None
    return True


def _alerts_of(config: servers.StackConfig, run_id: str) -> list[dict]:
    path = config.root / "alerts" / "alerts.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [a for a in map(json.loads, lines) if a.get("fields", {}).get("run_id") == run_id]


def _wait_alerted(config: servers.StackConfig, run_id: str) -> list[dict]:
    """The run's failure alerts, once the failure sensor (every 15 s) recorded one."""
    return wait_until(
        f"the failure alert of run {run_id}", lambda: _alerts_of(config, run_id) or None, timeout=90
    )


def _dates_per_table(config: servers.StackConfig, keys: list[str]) -> dict[str, set[str]]:
    """The dates of `keys` each feature table holds (none before the first backfill)."""
    import duckdb

    try:
        per_table = _rows_per_date(config, keys)
    except duckdb.CatalogException:  # the tables are created by the first feature run
        return {family: set() for family in FEATURE_FAMILIES}
    return {family: {day for day, _ in rows} for family, rows in per_table.items()}


def _feature_frames(config: servers.StackConfig, keys: list[str]) -> dict[str, pl.DataFrame]:
    """Every row of the six feature tables for `keys`, in one canonical order."""
    sql = (
        "SELECT * FROM features.seller_{family} "
        "WHERE reference_date::VARCHAR IN (SELECT unnest(?)) ORDER BY ALL"
    )
    return _each_family(config, keys, sql, lambda result: result.pl())


def test_postgres_restarted_during_a_backfills_commit_the_step_retries_and_the_result_is_whole(
    stack: Stack,
) -> None:
    """Postgres holds the DuckLake's catalog and Dagster's runs and events. A fast shutdown
    (what `pg_ctl restart -m fast` sends: SIGINT) while a run worker is inside a feature
    table's write, before its commit: supervisord starts Postgres again, the commit fails
    on the lost catalog session, the step is retried by Dagster in the same run, and the
    tables hold what an undisturbed backfill of the same dates writes."""
    keys = stack.keys[2 * DATES_PER_BACKFILL : 2 * DATES_PER_BACKFILL + 30]
    _arm(stack.hook)
    backfill_id = launch_asset_backfill(stack.gql, FEATURE_ASSETS, keys, title="postgres restart")
    pid, table = _held(stack.hook)
    run = _started_run(stack.gql, backfill_id)

    old = _server(stack.config, "postgres").pid
    os.kill(old, signal.SIGINT)  # fast shutdown: sessions ended, no crash recovery needed
    restarted_at = time.time()
    wait_until(
        "postgres accepting again",
        lambda: (_server(stack.config, "postgres").pid not in (0, old)
                 and postgres.accepting(stack.config.ports.postgres)) or None,
        timeout=RECOVERY_LIMIT,
    )  # fmt: skip
    accepting = time.time() - restarted_at
    (stack.hook / "release").touch()
    failures: list[str] = []
    wait_until(
        "the webserver serving again",
        lambda: _webserver_serving(stack, run["runId"], failures),
        timeout=RECOVERY_LIMIT,
    )
    recovery = time.time() - restarted_at
    _say(
        f"postgres restarted (fast shutdown of pid {old}) while run {run['runId']} held "
        f"inside its write of features.{table} (worker pid {pid}): accepting again "
        f"{accepting:.1f} s after the shutdown, the webserver serving every storage after "
        f"{recovery:.1f} s and {len(failures)} failed requests {failures}"
    )
    assert len(failures) <= 5, failures  # one per pooled connection the restart broke

    found = _assert_backfill_whole(stack, backfill_id, keys)
    assert [r["status"] for r in found] == ["SUCCESS"], found  # no run retried or failed
    retried = _events(stack.config, run["runId"], "STEP_UP_FOR_RETRY")
    assert retried, "no step was retried: the restart did not reach a write"
    _say(
        f"backfill of {len(keys)} dates complete {time.time() - restarted_at:.1f} s after the "
        f"shutdown; steps retried: {[step for step, _ in retried]}: {retried[0][1][:300]}"
    )
    disturbed = _feature_frames(stack.config, keys)

    undisturbed = launch_asset_backfill(stack.gql, FEATURE_ASSETS, keys, title="undisturbed")
    _assert_backfill_whole(stack, undisturbed, keys)
    reference = _feature_frames(stack.config, keys)
    for family, frame in reference.items():
        assert frame.height > 0, family
        assert disturbed[family].equals(frame), f"features.seller_{family} differs"
    assert not _alerts_of(stack.config, run["runId"])
    assert recovery < RECOVERY_LIMIT


def _champion(config: servers.StackConfig) -> str | None:
    from olist_churn_dagster.lib.ml.tracking import champion_version

    return champion_version(config.mlflow_url)


def _step_started_after_the_abt(config: servers.StackConfig, run_id: str) -> str | None:
    started = [step for step, _ in _events(config, run_id, "STEP_START")]
    later = [step for step in started if "abt" not in step]
    return later[0] if later else None


def _mlflow_answers(config: servers.StackConfig) -> bool | None:
    try:
        with urllib.request.urlopen(f"{config.mlflow_url}/health", timeout=5) as answer:
            return answer.status == 200 or None
    except OSError:
        return None


def test_mlflow_stopped_during_training_fails_the_run_once_and_a_later_run_succeeds(
    stack: Stack,
) -> None:
    """MLflow's server stopped (`supervisorctl stop mlflow`) once training reached its
    MLflow steps: the run fails with an error naming the server, one alert, no retry
    (a failed step is not retried by run retries), no model registered or promoted; the
    next training run, with the server started again, succeeds."""
    cohorts = [key for key in stack.keys if key.endswith("-01")]
    features = launch_asset_backfill(stack.gql, FEATURE_ASSETS, cohorts, title="cohorts")
    _assert_backfill_whole(stack, features, cohorts)
    before = _champion(stack.config)

    run_id = launch_job(stack.gql, "train_churn_model")
    step = wait_until(
        "training past its ABT",
        lambda: _step_started_after_the_abt(stack.config, run_id),
        timeout=600,
    )
    supervision.rpc(stack.config.supervisor).stopProcess("mlflow", True)
    stopped_at = time.time()
    (run,) = wait_runs_finished(stack.gql, "the training run", timeout=300, runIds=[run_id])
    failed_after = time.time() - stopped_at
    assert run["status"] == "FAILURE", run
    alerts = _wait_alerted(stack.config, run_id)
    # The alert names the failed step's own error: the server's URL, refused.
    detail = alerts[0]["detail"]
    assert stack.config.mlflow_url in detail and "Connection refused" in detail, detail
    _say(
        f"mlflow stopped when step {step} of run {run_id} started: the run failed "
        f"{failed_after:.1f} s later, alerted: {detail[:400]}"
    )

    supervision.rpc(stack.config.supervisor).startProcess("mlflow", True)
    wait_until("mlflow answering", lambda: _mlflow_answers(stack.config), timeout=120)
    assert _champion(stack.config) == before, "the failed run changed the champion"
    assert not runs(stack.gql, tags={"dagster/parent_run_id": run_id}), "a failed step was retried"
    later_id = launch_job(stack.gql, "train_churn_model")
    (later,) = wait_runs_finished(stack.gql, "the later training", timeout=600, runIds=[later_id])
    assert_succeeded(stack.gql, later)
    champion = _champion(stack.config)
    assert champion is not None
    assert len(alerts) == len(_alerts_of(stack.config, run_id)) == 1, alerts
    assert not _alerts_of(stack.config, later_id)
    _say(f"mlflow started again; a later training run succeeded, champion {before} -> {champion}")


def test_a_run_worker_killed_inside_a_ducklake_write_is_retried_to_a_whole_backfill(
    stack: Stack,
) -> None:
    """The run worker (a subprocess of the code server, started by the stack's launcher)
    SIGKILLed inside a feature table's DuckLake write, before its commit: nothing of that
    write is in the lake, every table holds all of the backfill's dates or none; the run
    is failed once (one alert), run retries start it again from the failure, and the
    backfill completes."""
    keys = stack.keys[2 * DATES_PER_BACKFILL + 30 : 3 * DATES_PER_BACKFILL + 30]
    before = _dates_per_table(stack.config, keys)  # the cohort dates of the training test
    _arm(stack.hook, f"seller_{FEATURE_FAMILIES[3]}")  # after three tables of the range
    backfill_id = launch_asset_backfill(stack.gql, FEATURE_ASSETS, keys, title="worker killed")
    pid, table = _held(stack.hook)
    run = _started_run(stack.gql, backfill_id)
    assert pid == _announced_worker(stack.config, run["runId"])
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    after_kill = _dates_per_table(stack.config, keys)
    held = table.removeprefix("seller_")
    assert after_kill[held] == before[held], "the killed write is in the lake"
    for family, dates in after_kill.items():  # each table as before, or the whole range
        assert dates in (before[family], set(keys)), f"features.seller_{family}: partial"

    (failed,) = wait_runs_finished(stack.gql, "the killed run", timeout=120, runIds=[run["runId"]])
    detected = time.time() - killed_at
    assert failed["status"] == "FAILURE", failed
    (retry,) = wait_runs_finished(
        stack.gql, "its retry", timeout=300, tags={"dagster/parent_run_id": run["runId"]}
    )
    assert_succeeded(stack.gql, retry)
    # Failed once (the code server that started the worker, or run monitoring through the
    # stack's launcher for an orphan), so alerted once.
    (failure,) = _events(stack.config, run["runId"], "PIPELINE_FAILURE")
    # Dagster's recovery: the dead worker's run failed and its retry launched. The new
    # worker's start (it loads the code location) and the rest of the backfill take what
    # the machine's load and the backfill's size make them.
    recovery = retry["creationTime"] - killed_at
    _say(
        f"run worker SIGKILLed (pid {pid}) inside its write of features.{table}: "
        f"{sum(d == set(keys) for d in after_kill.values())} of 6 tables committed before; run "
        f"{run['runId']} failed {detected:.1f} s after the kill ({failure[1][:90]}), its retry "
        f"{retry['runId']} launched {recovery:.1f} s, executing "
        f"{retry['startTime'] - killed_at:.1f} s and done {retry['endTime'] - killed_at:.1f} s "
        "after it"
    )
    found = _assert_backfill_whole(stack, backfill_id, keys)
    assert sorted(r["status"] for r in found) == ["FAILURE", "SUCCESS"], found
    assert len(_wait_alerted(stack.config, run["runId"])) == 1
    assert not _alerts_of(stack.config, retry["runId"])
    assert recovery < RECOVERY_LIMIT
