"""The model path end to end, in process: raw -> all feature partitions -> ABT -> model
(MLflow run, registered version, champion) -> scores for recent partitions."""

from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from olist_churn_dagster.defs.tags import range_tags
from olist_churn_dagster.lib.tracking import CHAMPION_ALIAS, MODEL_NAME, champion_version

SMALL_SPLIT = {"n_test_cohorts": 2, "n_valid_cohorts": 1, "gap_cohorts": 1, "min_child_weight": 1.0}


@pytest.fixture(scope="module")
def trained(definitions: dg.Definitions, instance_with_raw: dg.DagsterInstance):
    instance = instance_with_raw
    features = definitions.resolve_job_def("build_feature_store")
    keys = features.partitions_def.get_partition_keys()
    assert features.execute_in_process(
        instance=instance, tags=range_tags(keys[0], keys[-1])
    ).success
    result = definitions.resolve_job_def("train_churn_model").execute_in_process(
        instance=instance,
        run_config={"ops": {"ml__churn_model": {"config": SMALL_SPLIT}}},
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
    assert "recency_rule" in metadata["oot_metrics_vs_baselines"].value
    assert "data:image/png;base64" in metadata["plots"].value
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    assert champion_version(uri) == "1"
    assert (data_dir / "mlflow" / "artifacts").is_dir()
    assert not Path("mlflow.db").exists() and not Path("mlruns").exists()
    assert MODEL_NAME and CHAMPION_ALIAS


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
    assert scores.get_column("churn_probability").is_between(0, 1).all()
    assert scores.get_column("risk_band").is_in(["high", "medium", "low"]).all()
    for day, frame in scores.group_by("reference_date"):
        ranks = frame.get_column("risk_rank").unique().sort().to_list()
        assert ranks == list(range(1, len(ranks) + 1)), day  # dense ranks
    assert scores.get_column("model_version").unique().to_list() == ["1"]
    assert scores.filter(pl.col("reason_1").is_null()).height < scores.height
    exported = data_dir / "exports" / "churn_scores" / f"{recent[-1]}.csv"
    assert (
        pl.read_csv(exported).height
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


def test_snapshots_flow_through_the_sensor_to_scores(trained, definitions, data_dir: Path):
    """Generate -> replay three snapshots -> sensor -> its runs -> score partitions."""
    from datetime import date, timedelta

    from olist_churn_dagster.cli import main as cli

    instance, keys, _ = trained
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
        with dg.instance_for_test() as sensor_instance:
            evaluation = sensor(dg.build_sensor_context(instance=sensor_instance))
        assert [r.partition_key for r in evaluation.run_requests] == [str(d) for d in days]
        job = definitions.resolve_job_def(sensor.job_name)
        for request in evaluation.run_requests:
            result = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                run_config=request.run_config,
                tags=request.tags,
            )
            assert result.success, request.partition_key
    finally:
        import shutil

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


def test_schedules_target_the_right_partitions_and_jobs(definitions):
    from datetime import datetime

    daily = definitions.resolve_schedule_def("daily_scoring")
    assert daily.job_name == "score_sellers"
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime.now().replace(hour=3, minute=0)
        )
        (request,) = daily.evaluate_tick(context).run_requests
    keys = definitions.resolve_job_def("score_sellers").partitions_def.get_partition_keys()
    assert request.partition_key in keys[-2:]
    monthly = definitions.resolve_schedule_def("monthly_retraining")
    assert monthly.job_name == "train_churn_model" and monthly.cron_schedule == "0 4 2 * *"


def test_monitoring_reports_realized_performance_and_drift(trained, definitions, data_dir):
    instance, keys, _ = trained
    matured = keys[-80:-76]  # labels of these dates have matured by the end of the data
    result = definitions.resolve_job_def("rescore_with_champion").execute_in_process(
        instance=instance, tags=range_tags(matured[0], matured[-1])
    )
    assert result.success
    (monitoring,) = result.asset_materializations_for_node("ml__model_monitoring")
    assert monitoring.metadata["matured_dates"].value >= len(matured)
    assert "data:image/png;base64" in monitoring.metadata["plot"].value
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        table = conn.execute("SELECT * FROM ml.model_monitoring").pl()
    assert table.get_column("roc_auc").is_between(0, 1).all()
    (drift,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "feature_drift_psi"
    ]
    assert drift.metadata["features"].value > 50
    assert drift.severity == dg.AssetCheckSeverity.WARN


def test_backtest_asset_reports_every_cutoff_with_baselines(trained, data_dir: Path):
    from mlflow.tracking import MlflowClient

    _, _, result = trained
    (materialization,) = result.asset_materializations_for_node("ml__backtest")
    metadata = materialization.metadata
    cutoffs = metadata["cutoffs"].value
    assert cutoffs >= 3
    per_cutoff = metadata["roc_auc_per_cutoff"].value
    assert "simple_gbm" in per_cutoff and "recency_rule" in per_cutoff
    assert per_cutoff.count("\n| 20") == cutoffs  # one table row per cutoff date
    assert metadata["plots"].value.count("data:image/png;base64") == 2
    low, high = metadata["gap_vs_simple_gbm_ci95"].value
    assert low <= metadata["gap_vs_simple_gbm"].value <= high
    assert metadata["calibration"].value in {"none", "platt", "isotonic"}
    (check,) = [
        e for e in result.get_asset_check_evaluations() if e.asset_key.path[-1] == "backtest"
    ]
    assert check.check_name == "model_beats_simple_baseline"
    assert check.metadata["gap_mean"].value == pytest.approx(metadata["gap_vs_simple_gbm"].value)
    assert check.passed == (metadata["gap_vs_simple_gbm"].value > 0)
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        table = conn.execute("SELECT * FROM ml.backtest").pl()
    assert table.height == cutoffs * 5
    assert table.get_column("roc_auc").is_between(0, 1).all()
    assert table.filter(pl.col("scorer") == "model")["model_params"].null_count() == 0
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as conn:
        abt_columns = conn.execute("SELECT * FROM ml.abt LIMIT 1").pl().columns
    assert "rhythm_p_no_sale_left" in abt_columns  # the model reads the rhythm features
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    from olist_churn_dagster.lib.tracking import load_champion

    assert "rhythm_recency_over_gap" in load_champion(uri).feature_names
    client = MlflowClient(uri)
    run = client.get_run(metadata["mlflow_run_id"].value)
    assert run.data.tags["kind"] == "backtest"
    assert "gap_vs_simple_gbm" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "backtest_model_roc_auc")
    assert len(history) == cutoffs


def test_champion_gate_compares_mean_backtest_auc(trained, definitions, data_dir: Path):
    """The first model was promoted on the backtest; a crippled recipe backtests worse on
    the same cutoffs and is registered but not promoted, with both tables shown."""
    instance, _, first = trained
    (model,) = first.asset_materializations_for_node("ml__churn_model")
    assert "gate_candidate_backtest" in model.metadata
    method = model.metadata["calibration"].value
    assert method in {"none", "platt", "isotonic"}
    assert "data:image/png;base64" in model.metadata["reliability"].value
    uri = f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}"
    from olist_churn_dagster.lib.tracking import load_champion

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
        assert metadata[table].value.count("\n| 20") >= 3
    assert champion_version(uri) == "1"
