"""A feed that looks like the real extract, against its own real `dg dev`: an as-of
export whose last sale lies ten days before its date, then two later snapshots landing
together. Every date is scored, in order; a snapshot older than the newest loaded is
refused with its reason; nothing is skipped silently."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import date, timedelta

import pytest

from olist_churn_dagster.lib.alerts import read_alerts
from olist_churn_dagster.lib.ingest.loader import load_dataset
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, write_snapshot
from olist_churn_dagster_tests.e2e.conftest import E2E_END, Server, generate_demo, serve
from olist_churn_dagster_tests.e2e.server import GraphQL, query_warehouse, runs, wait_until
from olist_churn_dagster_tests.e2e.test_dagster_dev import (
    FEATURE_ASSETS,
    assert_succeeded,
    partition_keys,
)

pytestmark = pytest.mark.e2e

AS_OF = E2E_END - timedelta(days=30)  # the export's date
QUIET_DAYS = 10  # no sale in the export's last ten days
LATER = [AS_OF + timedelta(days=5), AS_OF + timedelta(days=10)]  # the snapshots that land

SENSOR_TICKS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { sensors {
    name sensorState { ticks(limit: 20) { status skipReason timestamp } }
} } } } }
"""


def _quiet_tail_export(bootstrap: Server) -> None:
    full = bootstrap.data_dir.parent / "full"
    generate_demo(bootstrap, full)
    tables = cut_as_of(load_dataset(full), AS_OF - timedelta(days=QUIET_DAYS))
    # Written like a snapshot: its `_SUCCESS` manifest declares the export's date.
    export = write_snapshot(tables, bootstrap.data_dir.parent / "export", AS_OF)
    shutil.copytree(export, bootstrap.data_dir / "raw")
    bootstrap.cli("prepare")


@pytest.fixture(scope="module")
def feed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("quiet-tail"), _quiet_tail_export) as server:
        yield server


def _scores(server: Server, day: date) -> int:
    (rows,) = query_warehouse(
        server.warehouse,
        "SELECT count(*) FROM ml.churn_scores WHERE reference_date = ?",
        [day],
    )
    return int(rows)


def _snapshot_skip_reasons(gql: GraphQL) -> list[str]:
    nodes = gql(SENSOR_TICKS)["repositoriesOrError"]["nodes"]
    (sensor,) = [s for n in nodes for s in n["sensors"] if s["name"] == "snapshot_sensor"]
    return [t["skipReason"] or "" for t in sensor["sensorState"]["ticks"]]


def test_quiet_tail_export_then_later_snapshots_are_all_scored(feed_server: Server) -> None:
    gql = feed_server.gql
    last_purchase = query_warehouse(
        feed_server.warehouse, "SELECT max(order_purchase_timestamp) FROM raw.orders", []
    )[0]
    assert (AS_OF - last_purchase.date()).days > QUIET_DAYS  # the tail really is quiet
    keys = partition_keys(gql, FEATURE_ASSETS[0])
    assert keys[-1] == AS_OF.isoformat(), "the export's own date has its partition"
    assert len(keys) < 400, "no partitions past the export's date"
    assert _scores(feed_server, AS_OF) > 0, "the export's as-of date was scored"

    marker_written = time.time()
    feed_server.cli(
        "replay",
        str(feed_server.data_dir.parent / "full"),
        "--start",
        LATER[0].isoformat(),
        "--end",
        LATER[1].isoformat(),
        "--every",
        "5d",
        "--out",
        str(feed_server.snapshots),
    )

    def both_finished() -> list[dict] | None:
        found = runs(gql, pipelineName="load_snapshot")
        done = [r for r in found if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return found if len(done) == 2 else None

    snapshot_runs = wait_until("both snapshot runs", both_finished, timeout=420, interval=2)
    ordered = sorted(snapshot_runs, key=lambda r: r["creationTime"])
    assert [dict((t["key"], t["value"]) for t in r["tags"])["olist/snapshot"] for r in ordered] == [
        d.isoformat() for d in LATER
    ]
    for run in ordered:
        assert_succeeded(gql, run)
    # One at a time, in date order: the second was launched after the first had finished.
    assert ordered[1]["creationTime"] >= ordered[0]["endTime"]
    for day, run in zip(LATER, ordered, strict=True):
        assert _scores(feed_server, day) > 0, f"no scores for {day}"
        latency = run["endTime"] - marker_written
        print(f"\n[e2e] snapshot {day}: marker to scores committed {latency:.1f} s")

    keys = partition_keys(gql, FEATURE_ASSETS[0])
    assert keys[-1] == LATER[1].isoformat()
    assert keys == sorted(keys) and len(keys) == len(set(keys))

    older = AS_OF + timedelta(days=7)
    feed_server.cli(
        "replay",
        str(feed_server.data_dir.parent / "full"),
        "--start",
        older.isoformat(),
        "--end",
        older.isoformat(),
        "--out",
        str(feed_server.snapshots),
    )
    refusal = f"{older.isoformat()}: older than {LATER[1].isoformat()} already loaded"
    wait_until(
        "the sensor's refusal of the older snapshot",
        lambda: True if any(refusal in r for r in _snapshot_skip_reasons(gql)) else None,
        timeout=120,
        interval=3,
        detail=lambda: "\n".join(_snapshot_skip_reasons(gql)[:5]),
    )
    assert len(runs(gql, pipelineName="load_snapshot")) == 2, "the older snapshot was not launched"
    alerts = read_alerts(feed_server.data_dir / "alerts" / "alerts.jsonl")
    assert not [a for a in alerts if a["kind"] == "run_failure"], alerts
