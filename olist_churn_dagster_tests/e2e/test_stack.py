"""The deployed stack started for real (`make stack`'s code) and driven like production:
Postgres, MLflow's tracking server, the code location as a gRPC code server, and the
Dagster webserver and daemon, each its own process on free loopback ports.

Everything goes through the servers: runs are submitted to the webserver's GraphQL API and
started by the daemon, the model is logged to and read back from MLflow's server, a
snapshot is picked up by the sensor in the daemon. The assertions read what the servers
hold: Dagster's runs and events in Postgres, the registry of MLflow's server, the rows in
the warehouse.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from olist_churn_dagster.lib.warehouse import close_ducklakes
from olist_churn_dagster.stack import postgres, servers
from olist_churn_dagster_tests.conftest import REPO_ROOT
from olist_churn_dagster_tests.ducklake import assert_same_tables, warehouse_tables
from olist_churn_dagster_tests.e2e.conftest import running_stack
from olist_churn_dagster_tests.e2e.server import (
    GraphQL,
    launch_asset_backfills,
    launch_job,
    query_warehouse,
    runs,
    wait_backfill,
    wait_runs_finished,
)
from olist_churn_dagster_tests.e2e.test_concurrency import overlaps, step_intervals
from olist_churn_dagster_tests.e2e.test_dagster_dev import (
    FEATURE_ASSETS,
    assert_succeeded,
    partition_keys,
)

pytestmark = pytest.mark.e2e

MODEL_NAME = "olist-seller-churn"
# The deployed warehouse: DuckLake, whose `warehouse` pool lets both backfills write at once.
WAREHOUSE = "ducklake"


def _timed(label: str, started: float) -> None:
    print(f"\n[stack] {label}: {time.perf_counter() - started:.1f} s", file=sys.stderr)


@pytest.fixture(scope="module")
def stack() -> Iterator[servers.StackConfig]:
    with running_stack("stack", WAREHOUSE) as config:
        yield config


def _postgres(
    config: servers.StackConfig, sql: str, params: tuple = (), database: str = servers.DAGSTER_DB
) -> list[tuple]:
    """Rows of a query on one of the stack's Postgres databases (Dagster's by default)."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(config.postgres.libpq(database))) as conn:
        cursor = conn.cursor()
        cursor.execute(sql, params)
        return cursor.fetchall()


def _wait_run(gql: GraphQL, run_id: str, timeout: float) -> dict:
    (run,) = wait_runs_finished(gql, f"run {run_id}", timeout=timeout, runIds=[run_id])
    assert_succeeded(gql, run)
    return run


@pytest.mark.slow
def test_the_deployed_stack_end_to_end(
    stack: servers.StackConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gql = GraphQL(stack.webserver_url, timeout=60)
    # This test reads Postgres and the DuckLake as the servers do: password in PGPASSWORD.
    monkeypatch.setenv(postgres.PASSWORD_ENV, stack.postgres.password)
    down = [state.name for state in servers.status(stack.root) if not state.running]
    assert not down, f"servers not running after `up`: {down}"

    # Load: a run of load_raw_tables submitted to the webserver, started by the daemon
    # through the run queue, executed as a subprocess of the code server.
    started = time.perf_counter()
    load_run = _wait_run(gql, launch_job(gql, "load_raw_tables"), timeout=300)
    _timed("load_raw_tables", started)

    # Features for every reference date the load registered, as two backfills over
    # disjoint ranges submitted at once.
    keys = partition_keys(gql, FEATURE_ASSETS[0])
    assert len(keys) > 100, f"expected a year of reference dates, got {len(keys)}"
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    started = time.perf_counter()
    backfill_ids = launch_asset_backfills(gql, FEATURE_ASSETS, halves, title="stack features")
    states = [wait_backfill(gql, backfill_id, timeout=600) for backfill_id in backfill_ids]
    _timed(f"2 feature backfills of {len(halves[0])} and {len(halves[1])} dates", started)
    backfill_runs = []
    for backfill_id, state in zip(backfill_ids, states, strict=True):
        found = runs(gql, tags={"dagster/backfill": backfill_id})
        assert len(found) == 1, f"backfill {backfill_id}: one run expected, got {found}"
        assert_succeeded(gql, found[0])
        assert state["status"] == "COMPLETED_SUCCESS", state
        backfill_runs.append(found[0])
    _assert_pool_respected(stack, backfill_runs)
    started = time.perf_counter()
    _assert_features_equal_the_embedded_paths(stack, keys, tmp_path)
    _timed("the embedded path's features, compared cell for cell", started)

    # Training, logged to MLflow's server: the first version becomes the champion.
    started = time.perf_counter()
    train_run = _wait_run(gql, launch_job(gql, "train_churn_model"), timeout=600)
    _timed("train_churn_model", started)
    champion = _assert_model_in_the_registry(stack, tmp_path)

    # A snapshot of the newest date: the sensor in the daemon loads and scores it.
    newest = keys[-1]
    from olist_churn_dagster.lib.ingest.snapshots import inspect_snapshot, replay

    started = time.perf_counter()
    replay(stack.root / "raw", *[date.fromisoformat(newest)] * 2, out_root=stack.root / "snapshots")
    fingerprint = inspect_snapshot(stack.root / "snapshots", newest).fingerprint
    tags = {"olist/snapshot": newest, "olist/snapshot_fingerprint": fingerprint}
    (snapshot_run,) = wait_runs_finished(gql, "the snapshot sensor's run", timeout=600, tags=tags)
    assert_succeeded(gql, snapshot_run)
    assert snapshot_run["jobName"] == "load_snapshot"
    _timed(f"snapshot {newest} loaded and scored by the sensor's run", started)

    # What Postgres holds: every run above, finished, and their materializations.
    ours = {r["runId"]: r["jobName"] for r in [load_run, *backfill_runs, train_run, snapshot_run]}
    stored = dict(
        _postgres(stack, "SELECT run_id, status FROM runs WHERE run_id = ANY(%s)", (list(ours),))
    )
    assert stored == dict.fromkeys(ours, "SUCCESS"), (stored, ours)
    materialized = _postgres(
        stack,
        "SELECT asset_key, partition FROM event_logs "
        "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND run_id = ANY(%s)",
        ([r["runId"] for r in backfill_runs],),
    )
    pairs = {(tuple(json.loads(key)), partition) for key, partition in materialized}
    expected = {(tuple(path), key) for path in FEATURE_ASSETS for key in keys}
    assert pairs == expected, (
        f"{len(expected - pairs)} feature partitions missing from the event log, "
        f"{len(pairs - expected)} unexpected"
    )
    registered = _postgres(
        stack,
        "SELECT count(*) FROM dynamic_partitions WHERE partitions_def_name = 'reference_date'",
    )
    assert registered[0][0] == len(keys)

    # What the warehouse holds.
    dates, sellers = _warehouse_row(
        stack,
        "SELECT count(DISTINCT reference_date), count(DISTINCT seller_id) "
        "FROM features.seller_sales",
    )
    assert dates == len(keys), f"feature dates in the warehouse: {dates}, expected {len(keys)}"
    assert sellers > 0
    scored, versions = _warehouse_row(
        stack,
        "SELECT count(*), list(DISTINCT model_version) FROM ml.churn_scores "
        "WHERE reference_date = ?",
        [date.fromisoformat(newest)],
    )
    assert scored > 0, f"no scores for the snapshot's date {newest}"
    assert versions == [champion], f"scores of {newest} by {versions}, champion is {champion}"
    if stack.warehouse == "ducklake":
        (commits,) = _postgres(
            stack, "SELECT count(*) FROM ducklake_snapshot", database=servers.CATALOG_DB
        )[0]
        assert commits > len(FEATURE_ASSETS), "DuckLake's catalog lacks the commits"
        assert list(stack.lake_dir.rglob("*.parquet")), f"no Parquet files in {stack.lake_dir}"
    _assert_the_password_is_nowhere(stack, gql)


def _embedded_features(stack: servers.StackConfig, keys: list[str], folder: Path) -> dict:
    """The feature tables the embedded path builds from the stack's raw files with the
    stack's settings: the CLI's raw load and one backfill of `keys` on a SQLite instance,
    into one DuckDB file."""
    home = folder / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "instance" / "dagster.yaml", home / "dagster.yaml")
    (folder / "raw").symlink_to(stack.root / "raw")
    warehouse = folder / "warehouse.duckdb"
    env = servers.server_environment(stack) | servers.code_location_settings(stack)
    env.pop("OLIST_CHURN_WAREHOUSE_DATA_PATH")
    env.update(
        OLIST_CHURN_DATA_DIR=str(folder), OLIST_CHURN_WAREHOUSE=str(warehouse),
        DAGSTER_HOME=str(home),
    )  # fmt: skip
    materialize = [str(REPO_ROOT / ".venv/bin/dagster"), "asset", "materialize"]
    module = ["-m", "olist_churn_dagster.definitions"]
    for selection in (["--select", "group:raw"], [
        "--select", ",".join("/".join(path) for path in FEATURE_ASSETS),
        "--partition-range", f"{keys[0]}...{keys[-1]}",
    ]):  # fmt: skip
        subprocess.run([*materialize, *module, *selection], env=env, cwd=REPO_ROOT,
                       check=True, capture_output=True)  # fmt: skip
    return warehouse_tables(str(warehouse), schemas=("features",))


def _assert_features_equal_the_embedded_paths(
    stack: servers.StackConfig, keys: list[str], folder: Path
) -> None:
    """The feature tables the stack's two concurrent backfills wrote to its DuckLake (run
    workers of the code server, events batched, storage pooled) equal the embedded path's,
    cell for cell."""
    try:
        lake = warehouse_tables(stack.warehouse_setting, schemas=("features",))
    finally:
        close_ducklakes()
    assert len(lake) >= len(FEATURE_ASSETS), sorted(lake)
    assert_same_tables(_embedded_features(stack, keys, folder / "embedded"), lake)


RUN_SETTINGS = """
{ runsOrError { ... on Runs { results { runId runConfigYaml tags { key value } } } } }
"""


def _assert_the_password_is_nowhere(stack: servers.StackConfig, gql: GraphQL) -> None:
    """The Postgres password is in no file of the stack but its secret (configuration,
    logs, compute logs), no database (runs with their tags and run config, events, ticks,
    MLflow's runs, the catalog), and not in the UI's run configuration or instance page."""
    password = stack.postgres.password
    files = [f for f in stack.root.rglob("*") if f.is_file() and f != stack.password_file]
    holding = [str(f) for f in files if password.encode() in f.read_bytes()]
    assert not holding, f"the password is written in {holding}"
    assert len([f for f in files if f.suffix == ".log"]) >= len(servers.SERVICES)
    for database in servers.DATABASES:
        dump = subprocess.run(
            [str(postgres.bin_dir() / "pg_dump"), "-h", postgres.HOST, "-p",
             str(stack.ports.postgres), "-U", postgres.SUPERUSER, database],
            capture_output=True, check=True, env={**os.environ, **stack.postgres.client_env},
        ).stdout  # fmt: skip
        assert b"CREATE TABLE" in dump, database
        assert password.encode() not in dump, f"the password is stored in database {database}"
    shown = gql(RUN_SETTINGS)["runsOrError"]["results"]
    assert len(shown) >= 5, shown
    assert password not in json.dumps(shown), "the password shows in a run's config or tags"
    assert password not in gql("{ instance { info } }")["instance"]["info"]


def _warehouse_row(stack: servers.StackConfig, sql: str, params: list | None = None) -> tuple:
    """One row from the stack's warehouse, read as its runs write it."""
    if stack.warehouse == "duckdb":
        return query_warehouse(stack.root / "warehouse.duckdb", sql, params or [])
    from olist_churn_dagster.lib.warehouse import close_ducklakes, open_warehouse

    conn = open_warehouse(stack.warehouse_setting, read_only=True, data_path=stack.lake_dir)
    try:
        return conn.execute(sql, params or []).fetchone()
    finally:
        conn.close()
        close_ducklakes()


def _assert_model_in_the_registry(stack: servers.StackConfig, tmp_path: Path) -> str:
    """The champion is in the registry of MLflow's server, and its artifacts come back
    through the server (stored in its artifacts folder, not on the client's side)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    run = client.get_run(champion.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    downloaded = Path(client.download_artifacts(champion.run_id, "calibration.json", str(tmp_path)))
    assert json.loads(downloaded.read_text()), "empty calibration artifact"
    stored = list(stack.artifacts_dir.rglob("calibration.json"))
    assert stored, f"no artifact under the server's folder {stack.artifacts_dir}"
    model_files = [p.name for p in stack.artifacts_dir.rglob("MLmodel")]
    assert model_files, "the logged model is not in the server's artifact store"
    return champion.version


def _assert_pool_respected(stack: servers.StackConfig, backfill_runs: list[dict]) -> None:
    """One `warehouse` slot (a DuckDB file): no two warehouse steps of the runs overlap.
    Several (DuckLake): the two runs wrote at the same time."""
    intervals = [step_intervals(run) for run in backfill_runs]
    assert all(intervals), "backfill runs without timed steps"
    at_once = [
        (step_a, step_b)
        for (step_a, *span_a), (step_b, *span_b) in itertools.product(*intervals)
        if overlaps(tuple(span_a), tuple(span_b))
    ]
    spans = [(run["startTime"], run["endTime"]) for run in backfill_runs]
    shared = max(0.0, min(end for _, end in spans) - max(start for start, _ in spans))
    print(
        f"\n[stack] backfill runs {[round(end - start, 1) for start, end in spans]} s, "
        f"both running for {shared:.1f} s; {len(at_once)} pairs of steps at once",
        file=sys.stderr,
    )
    if stack.pool_limit == 1:
        assert not at_once, f"steps of the one-slot pool ran at once: {at_once}"
    else:
        assert at_once, f"the two backfills never wrote at the same time: {intervals}"
