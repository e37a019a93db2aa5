"""The model path end to end, in process: raw -> all feature partitions -> ABT -> model
(MLflow run, registered version, champion) -> scores for recent partitions."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import polars as pl
import polars.selectors as cs
import pytest
from mlflow import MlflowClient

from olist_churn_dagster.defs.partitions import registered_dates
from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.alerts import read_alerts
from olist_churn_dagster.lib.ml.calibration import METHODS, PROBABILITY_FLOOR
from olist_churn_dagster.lib.ml.labels import churn_labels
from olist_churn_dagster.lib.ml.monitoring import realized_performance
from olist_churn_dagster.lib.ml.scoring import EXPORT_COLUMNS
from olist_churn_dagster.lib.ml.tracking import (
    CHAMPION_ALIAS,
    MODEL_NAME,
    champion_version,
    load_champion,
)
from olist_churn_dagster.lib.tables import KEYS, SCORES_TABLE
from olist_churn_dagster_tests.conftest import free_port, sensor_context

SMALL_SPLIT = {"n_test_cohorts": 2, "n_valid_cohorts": 1, "gap_cohorts": 1, "min_child_weight": 1.0}
# The backtest of the same recipe (so the gate takes the candidate's rows from it, as a
# scheduled training does, instead of backtesting it again) on four cutoffs.
SMALL_BACKTEST = {**SMALL_SPLIT, "n_cutoffs": 4}
TRAINING_CONFIG = {
    "ops": {
        "ml__churn_model": {"config": SMALL_SPLIT},
        "ml__backtest": {"config": SMALL_BACKTEST},
    }
}


@pytest.fixture(scope="module")
def trained(definitions: dg.Definitions, instance_with_raw: dg.DagsterInstance):
    instance = instance_with_raw
    features = definitions.resolve_job_def("build_feature_store")
    keys = registered_dates(instance)
    assert features.execute_in_process(
        instance=instance, tags=range_tags(keys[0], keys[-1])
    ).success
    result = definitions.resolve_job_def("train_churn_model").execute_in_process(
        instance=instance, run_config=TRAINING_CONFIG
    )
    assert result.success
    return instance, keys, result


def test_abt_has_mature_monthly_cohorts(trained, data_dir: Path):
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        abt = conn.execute("SELECT * FROM ml.abt").pl()
    dates = abt.get_column("reference_date").unique().to_list()
    assert len(dates) >= 5 and all(d.day == 1 for d in dates)
    assert abt.select("reference_date", "seller_id").is_duplicated().sum() == 0
    assert set(abt.get_column("churned").unique().to_list()) == {0, 1}


def test_model_is_logged_registered_and_promoted(trained, data_dir: Path):
    _, _, result = trained
    (materialization,) = result.asset_materializations_for_node("ml__churn_model")
    metadata = materialization.metadata
    assert metadata["promoted"].value is True
    assert metadata["model_version"].value == "1"
    scorers = [r.data["scorer"] for r in metadata["oot_metrics_vs_baselines"].records]
    assert scorers[0] == "model" and "recency_rule" in scorers
    assert "data:image/png;base64" in metadata["plots"].value
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    assert champion_version(uri) == "1"
    assert (data_dir / "mlflow" / "artifacts").is_dir()
    assert not Path("mlflow.db").exists() and not Path("mlruns").exists()
    # The registry itself: the model is registered under its name, the alias points at the
    # version this run logged, and that version belongs to this run.
    client = MlflowClient(tracking_uri=uri)
    registered = client.get_registered_model(MODEL_NAME)
    assert {alias: str(v) for alias, v in registered.aliases.items()} == {CHAMPION_ALIAS: "1"}
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    assert str(champion.version) == "1"
    assert champion.run_id == metadata["mlflow_run_id"].value
    assert metadata["model_uri"].value == f"models:/{MODEL_NAME}/1"
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    # What reproduces it: the raw load it was trained on, the catalogue, the code.
    from olist_churn_dagster.lib.features import FEATURE_CATALOGUE
    from olist_churn_dagster.lib.ingest.delta import loaded_fingerprint
    from olist_churn_dagster.lib.versions import catalogue_hash, git_commit

    params = client.get_run(champion.run_id).data.params
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        assert params["raw_fingerprint"] == loaded_fingerprint(conn)
    assert params["feature_catalogue_sha256"] == catalogue_hash(FEATURE_CATALOGUE)
    assert params.get("code_git_commit") == git_commit()
    assert "tuning_candidates" not in params  # no grid configured: no tuning


def trailing_revenue_from_raw(raw_dir: Path, days: list[date], window_days: int) -> pl.DataFrame:
    """Each seller's revenue over the `window_days` days before each reference date,
    computed straight from the source CSVs: the sum of the item prices of orders that were
    not canceled or unavailable, purchased on a day in [D - window, D - 1]."""
    orders = pl.read_csv(raw_dir / "olist_orders_dataset.csv", infer_schema=False).select(
        "order_id",
        "order_status",
        pl.col("order_purchase_timestamp").str.to_datetime("%Y-%m-%d %H:%M:%S").dt.date(),
    )
    items = pl.read_csv(raw_dir / "olist_order_items_dataset.csv", infer_schema=False).select(
        "order_id", "seller_id", pl.col("price").cast(pl.Float64)
    )
    sold = items.join(
        orders.filter(~pl.col("order_status").is_in(["canceled", "unavailable"])), on="order_id"
    )
    per_day = []
    for day in days:
        start = day - timedelta(days=window_days)
        per_day.append(
            sold.filter(pl.col("order_purchase_timestamp").is_between(start, day, closed="left"))
            .group_by("seller_id")
            .agg(pl.col("price").sum().alias("expected_revenue"))
            .with_columns(pl.lit(day).alias("reference_date"))
        )
    return pl.concat(per_day)


def assert_sales_at_risk_from_raw_revenue(scores: pl.DataFrame, raw_dir: Path) -> None:
    """Sales at risk = the seller's trailing-window revenue in the input x probability."""
    days = scores.get_column("reference_date").unique().sort().to_list()
    window = int(os.environ["OLIST_CHURN_WINDOW_DAYS"])
    expected = trailing_revenue_from_raw(raw_dir, days, window)
    joined = scores.join(expected, on=["reference_date", "seller_id"], how="left")
    # Every scored seller is active (sold in the last 45 days), so it has revenue.
    assert joined.get_column("expected_revenue").null_count() == 0
    assert (joined.get_column("expected_revenue") > 0).all()
    revenue = joined.get_column("expected_revenue").to_numpy()
    probability = joined.get_column("churn_probability").to_numpy()
    assert np.allclose(joined.get_column("trailing_revenue").to_numpy(), revenue, atol=1e-6)
    assert np.allclose(
        joined.get_column("sales_at_risk").to_numpy(), revenue * probability, atol=1e-6
    )


def test_scores_for_recent_partitions(trained, definitions, data_dir: Path):
    instance, keys, _ = trained
    recent = keys[-3:]
    result = definitions.resolve_job_def("rescore_with_champion").execute_in_process(
        instance=instance, tags=range_tags(recent[0], recent[-1])
    )
    assert result.success
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        scores = conn.execute("SELECT * FROM ml.churn_scores").pl()
    assert sorted(str(d) for d in scores.get_column("reference_date").unique()) == recent
    # The range's write metadata goes on the partition recorded last, not on each one.
    events = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["ml", "churn_scores"])
    ]
    assert sorted(e.partition for e in events) == recent
    assert all("dagster/table_name" not in e.metadata for e in events[:-1])
    assert events[-1].metadata["partitions_in_range"].value == len(recent)
    assert "dagster/column_schema" in events[-1].metadata
    floor = PROBABILITY_FLOOR
    assert scores.get_column("churn_probability").is_between(floor, 1 - floor).all()
    assert scores.get_column("risk_band").is_in(["high", "medium", "low"]).all()
    for day, frame in scores.group_by("reference_date"):
        ranks = frame.get_column("risk_rank").unique().sort().to_list()
        assert ranks == list(range(1, len(ranks) + 1)), day  # dense ranks
        # ... of the model's score: a rank is shared by equal scores only
        assert len(ranks) == frame.get_column("model_score").n_unique(), day
    # The scores carry the version the registry's champion alias points at.
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    champion = MlflowClient(tracking_uri=uri).get_model_version_by_alias(MODEL_NAME, CHAMPION_ALIAS)
    assert scores.get_column("model_version").unique().to_list() == [str(champion.version)]
    assert scores.get_column("model_alias").unique().to_list() == [CHAMPION_ALIAS]
    assert scores.filter(pl.col("reason_1").is_null()).height < scores.height
    assert_sales_at_risk_from_raw_revenue(scores, data_dir / "raw")
    exported = pl.read_csv(data_dir / "exports" / "churn_scores" / f"{recent[-1]}.csv")
    assert tuple(exported.columns) == EXPORT_COLUMNS
    assert (
        exported.height
        == scores.filter(pl.col("reference_date").cast(pl.String) == recent[-1]).height
    )


def test_abt_checks_pass_including_the_as_of_audit(trained):
    _, _, result = trained
    checks = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[-1] == "abt"
    }
    assert set(checks) == {
        "one_row_per_seller_and_cohort",
        "labels_mature",
        "features_match_as_of_snapshot",
    }
    assert all(e.passed for e in checks.values())
    audit = checks["features_match_as_of_snapshot"].metadata
    assert audit["sellers_checked"].value > 0 and audit["mismatches"].value == 0


@pytest.mark.slow
def test_snapshots_flow_through_the_sensor_to_scores(trained, definitions, data_dir: Path):
    """Generate -> replay three snapshots -> sensor -> its runs -> score partitions."""
    from olist_churn_dagster.cli import main as cli

    _, keys, _ = trained
    last = date.fromisoformat(keys[-1])
    days = [last - timedelta(days=2), last - timedelta(days=1), last]
    snapshots = data_dir / "snapshots"
    assert (
        cli(
            [
                "replay",
                str(data_dir / "raw"),
                "--start",
                str(days[0]),
                "--end",
                str(days[-1]),
                "--out",
                str(snapshots),
            ]
        )
        == 0
    )
    try:
        sensor = definitions.resolve_sensor_def("snapshot_sensor")
        job = definitions.resolve_job_def(sensor.job_name)
        launched, cursor = [], None
        with dg.instance_for_test() as feed:
            for _ in days:  # one snapshot a tick, each after the previous one's run
                evaluation = sensor(sensor_context(definitions, instance=feed, cursor=cursor))
                (request,) = evaluation.run_requests
                (partitions,) = evaluation.dynamic_partitions_requests
                assert partitions.partition_keys == [request.partition_key]
                feed.add_dynamic_partitions(partitions.partitions_def_name, [request.partition_key])
                result = job.execute_in_process(
                    instance=feed,
                    partition_key=request.partition_key,
                    run_config=request.run_config,
                    tags=request.tags,
                )
                assert result.success, request.partition_key
                launched.append(request.partition_key)
                cursor = evaluation.cursor
            assert launched == [str(d) for d in days]
            # An older snapshot landing once a newer one is loaded would roll the raw
            # tables back: the tick refuses it, and no run is launched.
            written = cli(
                [
                    "replay",
                    str(data_dir / "raw"),
                    "--start",
                    str(days[0] - timedelta(days=1)),
                    "--end",
                    str(days[0] - timedelta(days=1)),
                    "--out",
                    str(snapshots),
                ]
            )
            assert written == 0
            tick = sensor(sensor_context(definitions, instance=feed, cursor=cursor))
            assert not tick.run_requests
            assert "older than" in tick.skip_reason.skip_message
            assert len(feed.get_runs()) == len(days)
    finally:
        shutil.rmtree(snapshots)
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        scored = conn.execute(
            "SELECT reference_date, count(*) FROM ml.churn_scores "
            "WHERE reference_date >= ? GROUP BY 1 ORDER BY 1",
            [days[0]],
        ).fetchall()
        last_loaded = conn.execute(
            "SELECT max(order_purchase_timestamp) FROM raw.orders"
        ).fetchone()
    assert [d for d, n in scored if n > 0] == days
    assert last_loaded[0].date() < last  # raw tables hold the newest snapshot's content


def materialize_monitoring(warehouse: Path, day: str, data_dir: Path) -> dg.ExecuteInProcessResult:
    """ml/model_monitoring of one date on the warehouse file `warehouse`, with the session's
    MLflow store (its champion scored the date)."""
    from olist_churn_dagster.defs.ml.monitoring import model_monitoring
    from olist_churn_dagster.defs.ml.resources import MlflowTracking
    from olist_churn_dagster.defs.partitions import REFERENCE_DATES
    from olist_churn_dagster.defs.settings import churn_settings
    from olist_churn_dagster.defs.warehouse import warehouse_resources

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(REFERENCE_DATES, [day])
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    return dg.materialize(
        [model_monitoring],
        partition_key=day,
        instance=instance,
        resources={
            **warehouse_resources(warehouse),
            "mlflow": MlflowTracking(tracking_uri=uri),
            "settings": churn_settings(),  # as the environment is now (the alerts file)
        },
    )


def test_a_drifted_date_raises_one_alert_and_a_steady_one_none(
    trained, definitions, data_dir: Path, tmp_path: Path, webhook, monkeypatch
):
    """On a copy of the warehouse whose ABT is made of the newest scored date's own rows,
    the date does not drift: no alert, the check passes. Then two sales features of that
    date move: it drifts, one alert goes to the file and the webhook, the check warns,
    naming them; monitoring the date again raises no second alert."""
    from olist_churn_dagster.defs.ml.monitoring import DRIFT_CHECK
    from olist_churn_dagster.lib.features.store import read_feature_tables
    from olist_churn_dagster.lib.ml.rhythm import model_frame
    from olist_churn_dagster.lib.warehouse import write_frame

    instance, keys, _ = trained
    day = keys[-1]
    rescore = definitions.resolve_job_def("rescore_with_champion")
    assert rescore.execute_in_process(instance=instance, partition_key=day).success
    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(data_dir / "warehouse.duckdb", copy)
    with duckdb.connect(str(copy)) as conn:
        current = model_frame(read_feature_tables(conn, [date.fromisoformat(day)]))
        assert current.height > 20
        write_frame(conn, "ml", "abt", current.with_columns(churned=pl.lit(0, pl.Int8)))
    url, received = webhook
    monkeypatch.setenv("OLIST_CHURN_DATA_DIR", str(tmp_path))  # the alerts file
    monkeypatch.setenv("OLIST_CHURN_ALERT_WEBHOOK_URL", url)

    def monitor() -> tuple[dict, dg.AssetCheckEvaluation]:
        result = materialize_monitoring(copy, day, data_dir)
        assert result.success
        (materialization,) = result.asset_materializations_for_node("ml__model_monitoring")
        (check,) = result.get_asset_check_evaluations()
        assert check.check_name == DRIFT_CHECK
        return materialization.metadata, check

    same, check = monitor()
    assert check.passed is True
    assert same["drift"].value is False
    assert same["score_psi"].value == pytest.approx(0.0, abs=1e-9)
    assert same["max_feature_psi"].value == pytest.approx(0.0, abs=1e-9)
    assert read_alerts(tmp_path / "alerts" / "alerts.jsonl") == [] and received == []

    with duckdb.connect(str(copy)) as conn:
        conn.execute(
            "UPDATE features.seller_sales SET sales_revenue = sales_revenue * 10 + 10000, "
            "sales_orders = sales_orders + 50 WHERE reference_date = ?",
            [day],
        )
    shifted, check = monitor()
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    assert shifted["drift"].value is True
    assert shifted["psi_sales_revenue"].value > shifted["psi_threshold"].value
    assert shifted["psi_sales_orders"].value > shifted["psi_threshold"].value
    assert shifted["psi_sales_avg_ticket"].value == pytest.approx(0.0, abs=1e-9)
    (report,) = [r.data["drifted"] for r in check.metadata["drifted"].records]
    assert "sales_revenue" in report and "sales_orders" in report
    assert "sales_avg_ticket" not in report
    (alert,) = read_alerts(tmp_path / "alerts" / "alerts.jsonl")
    assert alert["kind"] == "drift" and alert["fields"]["reference_date"] == day
    assert len(received) == 1 and day in received[0]["text"]
    assert "sales_revenue" in received[0]["text"]

    again, _ = monitor()
    assert again["drift"].value is True
    assert len(read_alerts(tmp_path / "alerts" / "alerts.jsonl")) == 1 and len(received) == 1


def test_monitoring_plots_each_date_and_shows_realized_beside_expected(
    trained, definitions, data_dir
):
    """Four dates whose labels have matured, monitored as one range: one materialization
    per date with the same numeric keys (what the UI plots across partitions), the PSI of
    every model feature, the expected figures beside the realized ones; the table holds
    the same rows, and its realized figures equal labels computed from all history."""
    from olist_churn_dagster.defs.ml.monitoring import DRIFT_CHECK

    instance, keys, _ = trained
    matured = keys[-80:-76]  # labels of these dates have matured by the end of the data
    result = definitions.resolve_job_def("rescore_with_champion").execute_in_process(
        instance=instance, tags=range_tags(matured[0], matured[-1])
    )
    assert result.success
    events = result.asset_materializations_for_node("ml__model_monitoring")
    assert sorted(m.partition for m in events) == matured
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    from olist_churn_dagster.lib.ml.tracking import load_champion

    features = load_champion(uri).feature_names
    numeric = (dg.FloatMetadataValue, dg.IntMetadataValue)
    writes = {"partitions_in_range", "rows_written_for_range"}  # the range's, on its last date

    def plotted_keys(event: dg.AssetMaterialization) -> set[str]:
        return {k for k, v in event.metadata.items() if isinstance(v, numeric)} - writes

    plotted = plotted_keys(events[0])
    assert {f"psi_{f}" for f in features} <= plotted
    for name in ("score_psi", "share_high", "expected_roc_auc", "realized_roc_auc", "sellers"):
        assert name in plotted
    for event in events:
        assert plotted_keys(event) == plotted, event.partition
        metadata = event.metadata
        shares = [metadata[f"share_{b}"].value for b in ("high", "medium", "low")]
        assert sum(shares) == pytest.approx(1.0)
        assert 0.5 < metadata["expected_roc_auc"].value < 1.0
        assert 0.0 <= metadata["realized_roc_auc"].value <= 1.0
    newest = next(e for e in events if e.partition == matured[-1])
    assert "data:image/png;base64" in newest.metadata["plot"].value
    assert all("plot" not in e.metadata for e in events if e.partition != matured[-1])
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        table = conn.execute(
            "SELECT * FROM ml.model_monitoring WHERE reference_date IN "
            "(SELECT unnest(?::DATE[])) ORDER BY reference_date",
            [matured],
        ).pl()
        scores = conn.execute(f"SELECT * FROM {SCORES_TABLE}").pl()
        orders = conn.execute("SELECT * FROM raw.orders").pl()
        items = conn.execute("SELECT * FROM raw.order_items").pl()
    assert [str(d) for d in table.get_column("reference_date")] == matured
    labels = churn_labels(orders, items, scores.select(KEYS), horizon_days=45)
    realized = realized_performance(scores, labels).filter(
        pl.col("reference_date").is_in(table.get_column("reference_date").implode())
    )
    assert table.get_column("realized_roc_auc").to_list() == pytest.approx(
        realized.get_column("roc_auc").to_list()
    )
    (drift,) = [e for e in result.get_asset_check_evaluations() if e.check_name == DRIFT_CHECK]
    assert drift.severity == dg.AssetCheckSeverity.WARN
    assert drift.metadata["dates"].value == len(matured)
    # Its verdict is the drift it measured: passed exactly when no date drifted.
    assert drift.passed == (not table.get_column("drift").any())
    assert drift.metadata["drifted_dates"].value == table.get_column("drift").sum()


def test_backtest_asset_reports_every_cutoff_with_baselines(trained, data_dir: Path):
    from mlflow.tracking import MlflowClient

    _, _, result = trained
    (materialization,) = result.asset_materializations_for_node("ml__backtest")
    metadata = materialization.metadata
    cutoffs = metadata["cutoffs"].value
    assert cutoffs >= 3
    per_cutoff = metadata["roc_auc_per_cutoff"]
    assert isinstance(per_cutoff, dg.TableMetadataValue)
    columns = [c.name for c in per_cutoff.schema.columns]
    assert {"cutoff", "simple_gbm", "original_recipe_gbm", "recency_rule"} <= set(columns)
    assert len(per_cutoff.records) == cutoffs  # one table row per cutoff date
    assert metadata["plots"].value.count("data:image/png;base64") == 2
    low, high = metadata["gap_vs_simple_gbm_ci95"].value
    assert low <= metadata["gap_vs_simple_gbm"].value <= high
    assert metadata["calibration"].value in METHODS
    checks = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[-1] == "backtest"
    }
    assert set(checks) == {"model_beats_simple_baseline", "model_beats_original_recipe"}
    for name, baseline in (
        ("model_beats_simple_baseline", "simple_gbm"),
        ("model_beats_original_recipe", "original_recipe_gbm"),
    ):
        value = metadata[f"gap_vs_{baseline}"].value
        assert checks[name].metadata["gap_mean"].value == pytest.approx(value)
        assert checks[name].passed == (value > 0)
    for scorer in ("model", "simple_gbm", "original_recipe_gbm", "recency_rule"):
        assert 0 <= metadata[f"mean_precision_top_decile_{scorer}"].value <= 1
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        table = conn.execute("SELECT * FROM ml.backtest").pl()
    # 4 scorers per cutoff, and 3 calibrations per cutoff with an earlier matured one
    judged = table.filter(pl.col("scorer") == "model_beta").height
    assert 0 < judged < cutoffs
    assert table.height == cutoffs * 4 + judged * 3
    assert table.get_column("roc_auc").is_between(0, 1).all()
    assert table.filter(pl.col("scorer") == "model")["model_params"].null_count() == 0
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        abt_columns = conn.execute("SELECT * FROM ml.abt LIMIT 1").pl().columns
    assert "rhythm_p_no_sale_left" in abt_columns  # the model reads the rhythm features
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    from olist_churn_dagster.lib.ml.tracking import load_champion

    assert "rhythm_recency_over_gap" in load_champion(uri).feature_names
    client = MlflowClient(uri)
    run = client.get_run(metadata["mlflow_run_id"].value)
    assert run.data.tags["kind"] == "backtest"
    assert {"gap_vs_simple_gbm", "gap_vs_original_recipe_gbm"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "backtest_model_roc_auc")
    assert len(history) == cutoffs


@pytest.mark.slow
def test_champion_gate_compares_mean_backtest_auc(trained, definitions, data_dir: Path):
    """The first model was promoted on the backtest; a crippled recipe backtests worse on
    the same cutoffs and is registered but not promoted, with both tables shown."""
    instance, _, first = trained
    (model,) = first.asset_materializations_for_node("ml__churn_model")
    assert "gate_candidate_backtest" in model.metadata
    method = model.metadata["calibration"].value
    assert method in METHODS
    assert 0 <= model.metadata["backtest_ece_unseen_cutoffs"].value < 0.5
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    from olist_churn_dagster.lib.ml.tracking import load_champion

    assert load_champion(uri).calibrator.method == method  # scoring applies the same map
    crippled = {
        **SMALL_SPLIT,
        "max_depth": 1,
        "n_estimators": 2,
        "learning_rate": 0.01,
        "colsample_bytree": 0.1,
    }
    result = definitions.resolve_job_def("train_churn_model").execute_in_process(
        instance=instance,
        run_config={"ops": {"ml__churn_model": {"config": crippled}}},
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("ml__churn_model")
    metadata = materialization.metadata
    assert metadata["promoted"].value is False
    assert "mean backtest roc_auc" in metadata["promotion_decision"].value
    assert metadata["candidate_score"].value < metadata["champion_score"].value
    for table in ("gate_candidate_backtest", "gate_champion_backtest"):
        assert len(metadata[table].records) >= 3  # one row per cutoff
    assert champion_version(uri) == "1"


def test_risk_digest_follows_the_scores_of_each_date(
    trained, definitions, data_dir: Path, webhook, monkeypatch
):
    """Two dates scored as one range, then the next date alone (the daily run): each digest
    partition compares with its own previous scored date, is stored and exported, shows as
    native tables, and the run's newest date is posted to the webhook, not filed as an alert."""
    from olist_churn_dagster.defs.ml.digest import DIGEST_KEY
    from olist_churn_dagster.defs.settings import churn_settings
    from olist_churn_dagster.lib.ml.digest import COLUMNS

    url, received = webhook
    monkeypatch.setenv("OLIST_CHURN_ALERT_WEBHOOK_URL", url)
    settings = churn_settings()  # as a code location loaded with the webhook set
    assert settings.webhook_url == url
    instance, keys, _ = trained
    first, second, third = keys[-12:-9]
    rescore = definitions.resolve_job_def("rescore_with_champion")
    pair = rescore.execute_in_process(
        instance=instance, tags=range_tags(first, second), resources={"settings": settings}
    )
    assert pair.success
    digests = pair.asset_materializations_for_node("ml__risk_digest")
    assert sorted(m.partition for m in digests) == [first, second]
    (scores,) = [  # a range's metadata is on its last partition
        m for m in pair.asset_materializations_for_node("ml__churn_scores") if m.partition == second
    ]
    assert isinstance(scores.metadata["top_20"], dg.TableMetadataValue)
    assert "reasons" in {c.name for c in scores.metadata["top_20"].schema.columns}
    assert isinstance(scores.metadata["sellers_per_band"], dg.TableMetadataValue)
    assert len(received) == 1  # one post per run: its newest date
    assert received[0]["text"].startswith(f"Churn risk digest for {second} (compared with {first})")

    daily = rescore.execute_in_process(
        instance=instance, partition_key=third, resources={"settings": settings}
    )
    assert daily.success
    latest = instance.get_latest_materialization_event(DIGEST_KEY).asset_materialization
    assert latest.partition == third
    metadata = latest.metadata
    for name in ("top_sales_at_risk", "newly_high_sellers", "band_moves", "moved_sellers"):
        assert isinstance(metadata[name], dg.TableMetadataValue), name
    top = metadata["top_sales_at_risk"].records
    assert [r.data["top_at_risk"] for r in top] == list(range(1, len(top) + 1))
    assert metadata["previous_date"].value == second
    assert metadata["webhook"].value == "posted"
    assert received[-1]["text"] == metadata["summary"].value
    assert received[-1]["text"].startswith(
        f"Churn risk digest for {third} (compared with {second})"
    )

    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        digest = conn.execute("SELECT * FROM ml.risk_digest").pl()
        totals = dict(
            conn.execute(
                f"SELECT reference_date::VARCHAR, sum(sales_at_risk) FROM {SCORES_TABLE} GROUP BY 1"
            ).fetchall()
        )
    previous = dict(
        digest.select(pl.col("reference_date", "previous_date").cast(pl.String)).unique().rows()
    )
    assert previous[second] == first and previous[third] == second
    assert metadata["sales_at_risk_change"].value == pytest.approx(totals[third] - totals[second])
    exports = data_dir / "exports" / "risk_digest"
    for day in (first, second, third):
        exported = pl.read_csv(exports / f"{day}.csv", try_parse_dates=True)
        assert tuple(exported.columns) == COLUMNS
        assert (
            exported.height == digest.filter(pl.col("reference_date").cast(pl.String) == day).height
        )
    assert not any("digest" in a["title"] for a in read_alerts(settings.to_settings().alerts_file))


@contextmanager
def serving_champion(uri: str, log: Path) -> Iterator[str]:
    """`mlflow models serve` of the champion on a free loopback port, as a user starts it
    (the project's environment, no network); its base URL once /ping answers. Stopped (its
    process group) on the way out."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        *("models", "serve", "-m", f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"),
        *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"),
    ]
    # As in an activated environment: MLflow starts the server as `uvicorn` from PATH.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    with log.open("w") as out:
        server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, f"mlflow models serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no /ping answer in 180 s:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        stop_group(server)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group `process` leads (a server and its workers), SIGKILL
    after 20 s; a group already gone is fine."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def invoke(url: str, rows: pl.DataFrame) -> tuple[int, Any]:
    """POST `rows` to /invocations as MLflow's `dataframe_split`: status and parsed body."""
    body = json.dumps({"dataframe_split": {"columns": rows.columns, "data": rows.rows()}})
    request = urllib.request.Request(
        f"{url}/invocations", body.encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


SERVED_SELLERS = 50


@pytest.mark.slow
def test_the_served_champion_scores_50_sellers_as_the_score_table(
    trained, definitions, data_dir: Path, tmp_path: Path
):
    """A real `mlflow models serve` of models:/...@champion, sent the feature rows of 50
    sellers the table explains (riskiest first over the three newest dates), returns the
    table's probability, model score, band, sales at risk and reasons for each; a row
    without a feature is refused with the feature's name."""
    from olist_churn_dagster.lib.features.store import read_feature_tables
    from olist_churn_dagster.lib.ml.rhythm import model_frame

    instance, keys, _ = trained
    days = keys[-3:]
    result = definitions.resolve_job_def("rescore_with_champion").execute_in_process(
        instance=instance, tags=range_tags(days[0], days[-1])
    )
    assert result.success
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    settings = definitions.resources["settings"]
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        table = conn.execute("SELECT * FROM ml.churn_scores").pl()
        features = model_frame(
            read_feature_tables(conn, [date.fromisoformat(d) for d in days]),
            horizon_days=settings.churn_horizon_days,
            window_days=settings.feature_window_days,
        )
    explained = table.filter(
        pl.col("reference_date").cast(pl.String).is_in(days) & pl.col("reasons").is_not_null()
    )
    chosen = explained.sort("reference_date", "risk_rank", descending=[True, False])
    chosen = chosen.head(SERVED_SELLERS)
    assert chosen.height == SERVED_SELLERS
    names = load_champion(uri).feature_names
    rows = (
        chosen.select(KEYS)
        .join(features, on=KEYS, how="left", maintain_order="left")
        .select(pl.col(KEYS).cast(pl.String), pl.col(names).cast(pl.Float64))
    )
    with serving_champion(uri, tmp_path / "serve.log") as url:
        status, body = invoke(url, rows)
        refused, error = invoke(url, rows.drop(names[0]))
    assert status == 200, body
    served = pl.DataFrame(body["predictions"], infer_schema_length=None).with_columns(
        cs.float().fill_nan(None)  # JSON's NaN: the table's null
    )
    both = chosen.with_columns(pl.col(KEYS).cast(pl.String)).join(
        served, on=KEYS, how="left", suffix="_served"
    )
    difference = (both["churn_probability"] - both["churn_probability_served"]).abs()
    print(f"\n[serve] {both.height} sellers, max probability difference {difference.max()}")
    assert difference.max() <= 1e-6
    for column in ["model_score", "risk_band", "sales_at_risk"]:
        assert both[column].equals(both[f"{column}_served"]), column
    reasons = [c for c in served.columns if c.startswith("reason")]
    for column in reasons:
        assert both[column].equals(both[f"{column}_served"], check_dtypes=False), column
    print(f"[serve] reasons equal for {both.height} of {SERVED_SELLERS}: {reasons}")
    assert refused == 400 and names[0] in error["message"], error


@pytest.mark.slow
def test_training_with_a_grid_logs_each_candidate_as_a_child_run(
    trained, definitions, data_dir: Path
):
    """With a tuning grid, the candidates are judged on the cutoffs before the backtest's,
    the best is trained, and each is a child run of the training run with its figures.
    (Last in the module: the model it trains may become the champion.)"""
    instance, _, _ = trained
    result = definitions.resolve_job_def("train_churn_model").execute_in_process(
        instance=instance,
        run_config={
            "ops": {
                "ml__backtest": {"config": {**SMALL_SPLIT, "n_cutoffs": 3}},
                "ml__churn_model": {
                    "config": {
                        **SMALL_SPLIT,
                        "tuning_grid": {"max_depth": [2, 4]},
                        "tuning_cutoffs": 2,
                    }
                },
            }
        },
    )
    assert result.success
    (model,) = result.asset_materializations_for_node("ml__churn_model")
    (backtest,) = result.asset_materializations_for_node("ml__backtest")
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(model.metadata["mlflow_run_id"].value)
    assert run.data.params["tuning_candidates"] == "2"
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
    )
    assert sorted(c.data.params["max_depth"] for c in children) == ["2", "4"]
    (chosen,) = [c for c in children if c.data.tags["chosen"] == "true"]
    assert run.data.params["max_depth"] == chosen.data.params["max_depth"]
    assert chosen.data.metrics["mean_roc_auc"] == max(
        c.data.metrics["mean_roc_auc"] for c in children
    )
    # Judged before the backtest's cutoffs, so the backtest judges the choice afresh.
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        first = conn.execute("SELECT min(cutoff) FROM ml.backtest").fetchone()[0]
    assert backtest.metadata["cutoffs"].value == 3
    for child in children:
        cutoffs = [date.fromisoformat(c) for c in child.data.params["cutoffs"].split(",")]
        assert len(cutoffs) == 2 and max(cutoffs) < first
        history = client.get_metric_history(child.info.run_id, "backtest_roc_auc")
        assert len(history) == 2
