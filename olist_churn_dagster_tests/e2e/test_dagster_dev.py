"""The code location served by a real `dg dev`, driven through its GraphQL API."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import pytest

from olist_churn_dagster_tests.e2e.conftest import Server
from olist_churn_dagster_tests.e2e.server import (
    GraphQL,
    launch_asset_backfill,
    query_warehouse,
    run_failure_text,
    runs,
    tags_of,
    wait_backfill,
    wait_until,
)

pytestmark = pytest.mark.e2e

FEATURE_FAMILIES = ("sales", "reviews", "customers", "delivery", "payments", "products")
FEATURE_ASSETS = [["features", f"seller_{family}"] for family in FEATURE_FAMILIES]
SCORES = ["ml", "churn_scores"]
MODEL = ["ml", "churn_model"]

ASSET_GRAPH = """
{
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    groupName
    isPartitioned
  }
}
"""

PARTITION_KEYS = """
query Keys($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    __typename
    ... on AssetNode { partitionKeys }
  }
}
"""


def partition_keys(gql: GraphQL, path: list[str]) -> list[str]:
    answer = gql(PARTITION_KEYS, {"path": path})["assetNodeOrError"]
    assert answer["__typename"] == "AssetNode", answer
    return answer["partitionKeys"]


def assert_succeeded(gql: GraphQL, run: dict) -> None:
    assert run["status"] == "SUCCESS", (
        f"run {run['runId']} ({run['jobName']}) ended {run['status']}:\n"
        + run_failure_text(gql, run["runId"])
    )


def materialized_pairs(gql: GraphQL, run_id: str) -> set[tuple[str, str]]:
    """(asset path, partition) of every materialization the run reported."""
    query = """
    query Mats($runId: ID!) {
      runOrError(runId: $runId) {
        ... on Run { assetMaterializations { assetKey { path } partition } }
      }
    }
    """
    events = gql(query, {"runId": run_id})["runOrError"]["assetMaterializations"]
    return {("/".join(e["assetKey"]["path"]), e["partition"]) for e in events}


def test_feature_backfill_runs_as_one_run(dagster_server: Server) -> None:
    gql = dagster_server.gql
    keys = partition_keys(gql, FEATURE_ASSETS[0])
    assert len(keys) > 100, f"expected a year of reference dates, got {len(keys)}"
    chosen = keys[-25:-15]
    assert len(chosen) == 10

    started = time.perf_counter()
    backfill_id = launch_asset_backfill(gql, FEATURE_ASSETS, chosen, title="e2e feature backfill")
    state = wait_backfill(gql, backfill_id, timeout=180)
    seconds = time.perf_counter() - started
    print(f"\n[e2e] backfill of 6 feature assets x {len(chosen)} dates: {seconds:.1f} s")

    backfill_runs = runs(gql, tags={"dagster/backfill": backfill_id})
    assert len(backfill_runs) == 1, (
        f"single-run backfill policy: expected one run, got {len(backfill_runs)}: "
        f"{[(r['runId'], r['status']) for r in backfill_runs]}"
    )
    (run,) = backfill_runs
    assert_succeeded(gql, run)
    assert state["status"] == "COMPLETED_SUCCESS", state
    tags = tags_of(run)
    assert tags.get("dagster/asset_partition_range_start") == chosen[0], tags
    assert tags.get("dagster/asset_partition_range_end") == chosen[-1], tags
    assert sorted(a["path"] for a in run["assetSelection"]) == sorted(FEATURE_ASSETS)
    expected = {("/".join(path), key) for path in FEATURE_ASSETS for key in chosen}
    assert materialized_pairs(gql, run["runId"]) == expected


def test_asset_graph_served(dagster_server: Server) -> None:
    nodes = dagster_server.gql(ASSET_GRAPH)["assetNodes"]
    deps = {
        "/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]}
        for n in nodes
    }
    partitioned = {"/".join(n["assetKey"]["path"]) for n in nodes if n["isPartitioned"]}
    features = {"/".join(path) for path in FEATURE_ASSETS}
    raw = {key for key in deps if key.startswith("raw/")}

    assert features <= set(deps), f"feature assets missing from the server: {sorted(deps)}"
    assert {"ml/abt", "ml/churn_model", "ml/churn_scores", "ml/model_monitoring"} <= set(deps)
    assert len(raw) >= 8, f"expected one raw asset per source file, got {sorted(raw)}"
    assert deps["ml/churn_scores"] >= features | {"ml/churn_model"}, deps["ml/churn_scores"]
    for feature in features:
        assert deps[feature], f"{feature} has no upstream"
        assert deps[feature] <= raw, f"{feature} depends on non-raw {deps[feature] - raw}"
    assert deps["ml/abt"] >= features
    assert "ml/abt" in deps["ml/churn_model"]
    assert features | {"ml/churn_scores"} <= partitioned
    assert not raw & partitioned


def test_snapshot_sensor_scores_new_date(dagster_server: Server) -> None:
    gql = dagster_server.gql
    newest = partition_keys(gql, FEATURE_ASSETS[0])[-1]
    # Live data (ends yesterday): the partitions are open-ended and end with today (UTC).
    assert abs((date.fromisoformat(newest) - date.today()).days) <= 1, newest

    written_at = datetime.now(UTC).replace(tzinfo=None)
    started = time.perf_counter()
    dagster_server.cli(
        "replay",
        str(dagster_server.data_dir / "raw"),
        "--start",
        newest,
        "--end",
        newest,
        "--out",
        str(dagster_server.snapshots),
    )
    marker_seconds = time.perf_counter() - started
    marker_written = time.time()
    assert (dagster_server.snapshots / newest / "_SUCCESS").is_file()

    from olist_churn_dagster.lib.ingest.snapshots import inspect_snapshot

    fingerprint = inspect_snapshot(dagster_server.snapshots, newest).fingerprint
    assert fingerprint
    run_tags = {"olist/snapshot": newest, "olist/snapshot_fingerprint": fingerprint}

    def finished_run() -> dict | None:
        found = runs(gql, tags=run_tags)
        done = [r for r in found if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
        return done[0] if done else None

    run = wait_until(
        f"the snapshot sensor's run for {newest}",
        finished_run,
        timeout=120,
        detail=lambda: f"runs with the tag: {runs(gql, tags={'olist/snapshot': newest})}",
    )
    assert_succeeded(gql, run)
    latency = run["endTime"] - marker_written
    to_launch = run["creationTime"] - marker_written
    run_seconds = run["endTime"] - run["startTime"]
    print(
        f"\n[e2e] snapshot {newest}: replay wrote it in {marker_seconds:.1f} s; marker to "
        f"run success {latency:.1f} s (to the sensor's launch {to_launch:.1f} s, "
        f"run {run_seconds:.1f} s)"
    )
    assert run["jobName"] == "load_snapshot"
    assert tags_of(run).get("dagster/partition") == newest
    assert len(runs(gql, tags=run_tags)) == 1, "one snapshot, one run"

    rows, scored_at = query_warehouse(
        dagster_server.warehouse,
        "SELECT count(*), min(scored_at) FROM ml.churn_scores WHERE reference_date = ?",
        [date.fromisoformat(newest)],
    )
    assert rows > 0, f"no scores for {newest}"
    assert scored_at >= written_at, f"scores of {newest} are older ({scored_at}) than the snapshot"
