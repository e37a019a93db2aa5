from pathlib import Path

import pytest

from olist_churn_dagster.lib.settings import SettingsError, load_settings

VARIABLES = (
    "DATA_DIR",
    "HORIZON_DAYS",
    "WINDOW_DAYS",
    "PARTITION_START",
    "RAW_AS_OF",
    "COHORT_DAY",
    "RESCORE_DAYS",
    "FEATURE_BATCH_ROWS",
    "WAREHOUSE",
    "WAREHOUSE_DATA_PATH",
    "MLFLOW_TRACKING_URI",
    "EXECUTOR",
    "LOCK_RETRIES",
    "LOCK_BACKOFF_SECONDS",
    "ALERT_WEBHOOK_URL",
    "SCORES_DEADLINE_UTC",
    "BACKTEST_CUTOFFS",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean environment and a working directory without a .env file."""
    for name in VARIABLES:
        monkeypatch.delenv(f"OLIST_CHURN_{name}", raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_keep_all_state_under_the_data_directory(env, tmp_path: Path):
    env.setenv("OLIST_CHURN_DATA_DIR", str(tmp_path / "state"))
    settings = load_settings()
    assert settings.warehouse == str(tmp_path / "state" / "warehouse.duckdb")
    assert (
        settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'state' / 'mlflow' / 'mlflow.db'}"
    )
    assert settings.executor == "in_process"
    assert (settings.churn_horizon_days, settings.feature_window_days) == (45, 180)
    assert settings.alerts_file == tmp_path / "state" / "alerts" / "alerts.jsonl"
    assert settings.alert_webhook_url is None  # alerts post nowhere unless configured
    assert (settings.lock_retries, settings.lock_backoff_seconds) == (6, 5)
    assert settings.scores_deadline_utc.isoformat() == "04:00:00"
    assert settings.raw_as_of is None


def test_deployment_settings_point_at_servers(env):
    env.setenv("OLIST_CHURN_WAREHOUSE", "md:olist_churn")
    env.setenv("OLIST_CHURN_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    env.setenv("OLIST_CHURN_EXECUTOR", "multiprocess")
    settings = load_settings()
    assert settings.warehouse == "md:olist_churn"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.executor == "multiprocess"


def test_a_ducklake_warehouse_keeps_its_catalog_string_and_files_under_the_data_dir(
    env, tmp_path: Path
):
    lake = "ducklake:postgres:dbname=lake host=127.0.0.1 port=5432 user=postgres"
    env.setenv("OLIST_CHURN_DATA_DIR", str(tmp_path / "state"))
    env.setenv("OLIST_CHURN_WAREHOUSE", lake)
    settings = load_settings()
    assert settings.warehouse == lake
    assert settings.warehouse_data_path == str(tmp_path / "state" / "lake")
    env.setenv("OLIST_CHURN_WAREHOUSE_DATA_PATH", "shared/lake")
    assert load_settings().warehouse_data_path == str(tmp_path / "shared" / "lake")
    env.setenv("OLIST_CHURN_WAREHOUSE_DATA_PATH", "s3://bucket/lake/")
    assert load_settings().warehouse_data_path == "s3://bucket/lake/"


def test_a_ducklake_without_its_catalog_is_refused(env):
    env.setenv("OLIST_CHURN_WAREHOUSE", "ducklake:")
    with pytest.raises(SettingsError, match="a DuckLake names its catalog"):
        load_settings()


def test_a_relative_warehouse_file_is_made_absolute(env, tmp_path: Path):
    env.setenv("OLIST_CHURN_WAREHOUSE", "other/wh.duckdb")
    assert load_settings().warehouse == str(tmp_path / "other" / "wh.duckdb")


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("EXECUTOR", "k8s", "OLIST_CHURN_EXECUTOR='k8s': expected one of in_process"),
        ("HORIZON_DAYS", "forty", "OLIST_CHURN_HORIZON_DAYS='forty': expected an integer"),
        ("PARTITION_START", "2026-02-30", "expected a date YYYY-MM-DD"),
        ("COHORT_DAY", "31", "COHORT_DAY must be between 1 and 28"),
        ("FEATURE_BATCH_ROWS", "0", "FEATURE_BATCH_ROWS must be at least 1"),
        ("RAW_AS_OF", "2018-10-32", "expected a date YYYY-MM-DD"),
        ("SCORES_DEADLINE_UTC", "4am", "expected a time of day HH:MM"),
        ("LOCK_BACKOFF_SECONDS", "0", "LOCK_BACKOFF_SECONDS at least 1"),
        ("ALERT_WEBHOOK_URL", "chat.example", "ALERT_WEBHOOK_URL must be an http"),
    ],
)
def test_bad_values_are_named(env, name: str, value: str, expected: str):
    env.setenv(f"OLIST_CHURN_{name}", value)
    with pytest.raises(SettingsError, match=expected.replace("(", r"\(")):
        load_settings()


def test_a_dotenv_file_is_read_without_overriding_the_environment(env, tmp_path: Path):
    (tmp_path / ".env").write_text("OLIST_CHURN_EXECUTOR=multiprocess\nOLIST_CHURN_COHORT_DAY=5\n")
    env.setenv("OLIST_CHURN_COHORT_DAY", "3")
    settings = load_settings()
    assert (settings.executor, settings.cohort_day) == ("multiprocess", 3)


def test_backtest_cutoffs_default_and_validation(env):
    assert load_settings().backtest_cutoffs == 6
    env.setenv("OLIST_CHURN_BACKTEST_CUTOFFS", "9")
    assert load_settings().backtest_cutoffs == 9
    env.setenv("OLIST_CHURN_BACKTEST_CUTOFFS", "0")
    with pytest.raises(SettingsError, match="BACKTEST_CUTOFFS"):
        load_settings()
