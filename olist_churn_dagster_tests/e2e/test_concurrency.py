"""Backfills and a sensor run at the same time against one DuckDB file: the `warehouse`
pool of the running instance makes them take turns instead of failing on the file lock."""

from __future__ import annotations

import itertools
import time
from datetime import date

import polars as pl
import pytest

from olist_churn_dagster.defs.features.assets import feature_tables
from olist_churn_dagster_tests.e2e.conftest import Server
from olist_churn_dagster_tests.e2e.server import (
    GraphQL,
    backfill,
    launch_asset_backfills,
    run_failure_text,
    runs,
    wait_backfill,
    wait_until,
)
from olist_churn_dagster_tests.e2e.test_dagster_dev import FEATURE_ASSETS, partition_keys

pytestmark = pytest.mark.e2e

POOL = "warehouse"
INSTANCE = """
query Instance($pool: String!) {
  instance {
    runQueuingSupported
    runQueueConfig { maxConcurrentRuns isOpConcurrencyAware }
    poolConfig { poolGranularity defaultPoolLimit }
    concurrencyLimit(concurrencyKey: $pool) { limit slotCount usingDefaultLimit }
    daemonHealth { allDaemonStatuses { daemonType healthy required } }
  }
}
"""


def test_server_enforces_the_warehouse_pool(dagster_server: Server) -> None:
    instance = dagster_server.gql(INSTANCE, {"pool": POOL})["instance"]
    assert instance["runQueuingSupported"], "runs must go through the queue"
    assert instance["runQueueConfig"]["maxConcurrentRuns"] == 4
    assert instance["poolConfig"]["defaultPoolLimit"] == 1
    assert instance["poolConfig"]["poolGranularity"] in (None, "op")  # op is the default
    limit = instance["concurrencyLimit"]
    assert limit["limit"] == 1 and limit["slotCount"] == 1, limit
    daemons = {d["daemonType"]: d for d in instance["daemonHealth"]["allDaemonStatuses"]}
    for needed in ("SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR"):
        assert needed in daemons and daemons[needed]["healthy"], daemons.get(needed)


def write_corrected_snapshot(server: Server, as_of: date) -> str:
    """A snapshot of `as_of` whose content differs from a plain replay (one review comment
    corrected at the source), so the sensor loads it whatever ran before; returns its
    fingerprint."""
    from olist_churn_dagster.lib.ingest.loader import load_dataset
    from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, inspect_snapshot, write_snapshot

    tables = cut_as_of(load_dataset(server.data_dir / "raw"), as_of)
    reviews = tables["order_reviews"]
    first = reviews["review_id"][0]
    tables["order_reviews"] = reviews.with_columns(
        pl.when(pl.col("review_id") == first)
        .then(pl.lit(f"corrected at the source {time.time_ns()}"))
        .otherwise(pl.col("review_comment_message"))
        .alias("review_comment_message")
    )
    write_snapshot(tables, server.snapshots, as_of)
    fingerprint = inspect_snapshot(server.snapshots, as_of.isoformat()).fingerprint
    assert fingerprint
    return fingerprint


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def step_intervals(run: dict) -> list[tuple[str, float, float]]:
    return [
        (step["stepKey"], step["startTime"], step["endTime"])
        for step in run["stepStats"]
        if step["startTime"] is not None and step["endTime"] is not None
    ]


LOCK_SIGNS = ("Could not set lock", "is locked by another process")


def is_lock_failure(text: str) -> bool:
    """A failure text of DuckDB's file lock (raw, or as the warehouse explains it)."""
    return any(sign in text for sign in LOCK_SIGNS)


def format_failures(failures: dict[str, tuple[str, str, str]]) -> str:
    return "".join(
        f"\n- run {run_id} of {job} ended {status}:\n  {text}"
        for run_id, (job, status, text) in failures.items()
    )


def test_failure_report_tells_lock_failures_apart() -> None:
    """The helpers the run assertions rely on, checked without a server."""
    raw = 'IOException: Could not set lock on file "warehouse.duckdb": Conflicting lock'
    explained = "WarehouseError: warehouse /d/warehouse.duckdb is locked by another process"
    assert is_lock_failure(raw) and is_lock_failure(explained)
    assert not is_lock_failure("KeyError: 'seller_id'")
    report = format_failures({"abc": ("build_feature_store", "FAILURE", raw)})
    assert "run abc of build_feature_store ended FAILURE" in report and raw in report
    assert overlaps((0.0, 2.0), (1.0, 3.0)) and not overlaps((0.0, 1.0), (1.0, 2.0))
    run = {
        "stepStats": [
            {"stepKey": "a", "startTime": 1.0, "endTime": 2.0},
            {"stepKey": "skipped", "startTime": None, "endTime": None},
        ]
    }
    assert step_intervals(run) == [("a", 1.0, 2.0)]


def test_backfills_and_sensor_run_share_the_warehouse(dagster_server: Server) -> None:
    gql: GraphQL = dagster_server.gql
    keys = partition_keys(gql, FEATURE_ASSETS[0])
    ranges = [keys[-50:-40], keys[-40:-30]]
    newest = date.fromisoformat(keys[-1])

    started = time.perf_counter()
    backfill_ids = launch_asset_backfills(gql, FEATURE_ASSETS, ranges, title="e2e concurrent")
    fingerprint = write_corrected_snapshot(dagster_server, newest)
    snapshot_tags = {
        "olist/snapshot": newest.isoformat(),
        "olist/snapshot_fingerprint": fingerprint,
    }

    states = [wait_backfill(gql, backfill_id, timeout=240) for backfill_id in backfill_ids]

    def snapshot_run() -> dict | None:
        found = runs(gql, tags=snapshot_tags)
        return found[0] if found and found[0]["status"] in ("SUCCESS", "FAILURE") else None

    sensor_run = wait_until("the snapshot sensor's run", snapshot_run, timeout=180)
    total = time.perf_counter() - started

    all_runs = [sensor_run]
    for backfill_id in backfill_ids:
        found = runs(gql, tags={"dagster/backfill": backfill_id})
        assert len(found) == 1, f"backfill {backfill_id}: expected one run, got {len(found)}"
        all_runs.extend(found)
    failures = {
        r["runId"]: (r["jobName"], r["status"], run_failure_text(gql, r["runId"]))
        for r in all_runs
        if r["status"] != "SUCCESS"
    }
    # A run that failed on the file lock means the pool did not make the runs take turns:
    # say so first, with the runs concerned; any other failure is reported after it.
    lock_failures = {
        run_id: failure for run_id, failure in failures.items() if is_lock_failure(failure[2])
    }
    assert not lock_failures, (
        f"{len(lock_failures)} run(s) failed on the warehouse file lock, so the {POOL} pool "
        f"did not serialise them: {format_failures(lock_failures)}"
    )
    assert not failures, f"{len(failures)} run(s) failed: {format_failures(failures)}"
    assert [s["status"] for s in states] == ["COMPLETED_SUCCESS"] * 2, [
        backfill(gql, i) for i in backfill_ids
    ]

    # Contention: a run was submitted while another was queued or running. The queue is
    # op-concurrency aware, so it may hold such a run back until the pool's slot is free;
    # either way no two warehouse steps may overlap.
    spans = {r["runId"]: (r["creationTime"], r["endTime"]) for r in all_runs}
    concurrent = [
        (a, b) for a, b in itertools.combinations(spans, 2) if overlaps(spans[a], spans[b])
    ]
    assert concurrent, f"no run was submitted while another was pending: {spans}"

    # The overlap check below is only worth something if it saw the steps: every run
    # reports timed steps, each backfill run the feature tables' step (one multi-asset),
    # the snapshot run its raw load and its scores too.
    intervals = {r["runId"]: step_intervals(r) for r in all_runs}
    untimed = {
        r["runId"]: [s["stepKey"] for s in r["stepStats"]]
        for r in all_runs
        if not intervals[r["runId"]]
    }
    assert not untimed, f"runs without timed steps (stepKey lists): {untimed}"
    feature_steps = {feature_tables.node_def.name}
    for r in all_runs[1:]:
        keys = {key for key, _, _ in intervals[r["runId"]]}
        assert feature_steps <= keys, (
            f"backfill run {r['runId']} lacks steps {feature_steps - keys}"
        )
    sensor_steps = {key for key, _, _ in intervals[sensor_run["runId"]]}
    assert {"raw_tables", "ml__churn_scores"} <= sensor_steps, sensor_steps
    for step_key, start, end in itertools.chain.from_iterable(intervals.values()):
        assert start <= end, f"{step_key} ended ({end}) before it started ({start})"

    for a, b in itertools.combinations(all_runs, 2):
        for step_a, start_a, end_a in intervals[a["runId"]]:
            for step_b, start_b, end_b in intervals[b["runId"]]:
                assert not overlaps((start_a, end_a), (start_b, end_b)), (
                    f"steps in the {POOL} pool ran at once: {step_a} of {a['runId']} "
                    f"({start_a:.2f}-{end_a:.2f}) and {step_b} of {b['runId']} "
                    f"({start_b:.2f}-{end_b:.2f})"
                )
    steps = sum(len(found) for found in intervals.values())
    print(
        f"\n[e2e] 2 feature backfills x 10 dates + 1 snapshot run: all {len(all_runs)} runs "
        f"succeeded in {total:.1f} s; {len(concurrent)} pair(s) of runs were pending at "
        f"once, their {steps} steps took turns"
    )
