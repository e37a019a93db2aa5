"""Settings from environment variables (a `.env` file in the working directory is read too).

One module owns every knob, so the README's settings table and the code cannot drift.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, time
from pathlib import Path

from dotenv import find_dotenv, load_dotenv

from olist_churn_dagster.lib.warehouse import DUCKLAKE_PREFIX, is_ducklake, is_file_database

ENV_PREFIX = "OLIST_CHURN_"
# How each run executes its steps: one process (the default; a local DuckDB file has one
# writer process), or a process per step (a server warehouse takes several writers).
EXECUTORS = ("in_process", "multiprocess")


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return default if value is None or value.strip() == "" else value.strip()


def _env_int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: expected an integer") from exc


def _env_time(name: str, default: str) -> time:
    raw = _env(name, default) or default
    try:
        return time.fromisoformat(raw)
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: expected a time of day HH:MM") from exc


def _env_date(name: str) -> date | None:
    raw = _env(name)
    if raw is None:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise SettingsError(f"{ENV_PREFIX}{name}={raw!r}: expected a date YYYY-MM-DD") from exc


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    churn_horizon_days: int
    feature_window_days: int
    partition_start: date | None
    raw_as_of: date | None  # the as-of date of the export in raw/, when its tail is quiet
    cohort_day: int
    rescore_days: int
    feature_batch_rows: int
    warehouse: str  # a DuckDB file path, a DuckLake "ducklake:postgres:<libpq>", or "md:<name>"
    warehouse_data_path: str  # a DuckLake's Parquet files: a folder, or an object-store URL
    mlflow_tracking_uri: str
    executor: str
    lock_retries: int  # retries of a step that found the warehouse file locked
    lock_backoff_seconds: int  # first wait; doubled each retry, at most LOCK_BACKOFF_CAP
    alert_webhook_url: str | None  # chat webhook for failed runs and missed freshness
    scores_deadline_utc: time  # the newest reference date's scores exist by then (UTC)
    backtest_cutoffs: int = 6  # mature monthly cohorts the walk-forward backtest scores

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def alerts_file(self) -> Path:
        return self.data_dir / "alerts" / "alerts.jsonl"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"


def _warehouse(raw: str | None, data_dir: Path) -> str:
    """The configured database; a file path is made absolute, a server name kept as is."""
    if raw is None:
        return str(data_dir / "warehouse.duckdb")
    return raw if not is_file_database(raw) else str(Path(raw).expanduser().resolve())


def _warehouse_data_path(raw: str | None, data_dir: Path) -> str:
    """Where a DuckLake keeps its files: a local folder made absolute, a URL kept as is."""
    if raw is None:
        return str(data_dir / "lake")
    return raw if "://" in raw else str(Path(raw).expanduser().resolve())


def load_settings() -> Settings:
    """Read the settings now (not at import), so tests can point them elsewhere."""
    load_dotenv(find_dotenv(usecwd=True), override=False)
    data_dir = Path(_env("DATA_DIR", "data") or "data").expanduser().resolve()
    settings = Settings(
        data_dir=data_dir,
        churn_horizon_days=_env_int("HORIZON_DAYS", 45),
        feature_window_days=_env_int("WINDOW_DAYS", 180),
        partition_start=_env_date("PARTITION_START"),
        raw_as_of=_env_date("RAW_AS_OF"),
        cohort_day=_env_int("COHORT_DAY", 1),
        rescore_days=_env_int("RESCORE_DAYS", 7),
        feature_batch_rows=_env_int("FEATURE_BATCH_ROWS", 1_500_000),
        warehouse=_warehouse(_env("WAREHOUSE"), data_dir),
        warehouse_data_path=_warehouse_data_path(_env("WAREHOUSE_DATA_PATH"), data_dir),
        mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI")
        or f"sqlite:///{data_dir / 'mlflow' / 'mlflow.db'}",
        executor=_env("EXECUTOR", "in_process") or "in_process",
        lock_retries=_env_int("LOCK_RETRIES", 6),
        lock_backoff_seconds=_env_int("LOCK_BACKOFF_SECONDS", 5),
        alert_webhook_url=_env("ALERT_WEBHOOK_URL"),
        scores_deadline_utc=_env_time("SCORES_DEADLINE_UTC", "04:00"),
        backtest_cutoffs=_env_int("BACKTEST_CUTOFFS", 6),
    )
    if settings.executor not in EXECUTORS:
        raise SettingsError(
            f"{ENV_PREFIX}EXECUTOR={settings.executor!r}: expected one of {', '.join(EXECUTORS)}"
        )
    if is_ducklake(settings.warehouse) and not settings.warehouse[len(DUCKLAKE_PREFIX) :].strip():
        raise SettingsError(
            f"{ENV_PREFIX}WAREHOUSE={settings.warehouse!r}: a DuckLake names its catalog, "
            "e.g. 'ducklake:postgres:dbname=lake host=127.0.0.1 port=5432 user=postgres'"
        )
    if settings.churn_horizon_days < 1:
        raise SettingsError(f"{ENV_PREFIX}HORIZON_DAYS must be at least 1")
    if settings.feature_window_days < 1:
        raise SettingsError(f"{ENV_PREFIX}WINDOW_DAYS must be at least 1")
    if settings.feature_batch_rows < 1:
        raise SettingsError(f"{ENV_PREFIX}FEATURE_BATCH_ROWS must be at least 1")
    if settings.backtest_cutoffs < 1:
        raise SettingsError(f"{ENV_PREFIX}BACKTEST_CUTOFFS must be at least 1")
    if settings.rescore_days < 1:
        raise SettingsError(f"{ENV_PREFIX}RESCORE_DAYS must be at least 1")
    if not 1 <= settings.cohort_day <= 28:
        raise SettingsError(f"{ENV_PREFIX}COHORT_DAY must be between 1 and 28")
    if settings.lock_retries < 0 or settings.lock_backoff_seconds < 1:
        raise SettingsError(
            f"{ENV_PREFIX}LOCK_RETRIES must be at least 0 and LOCK_BACKOFF_SECONDS at least 1"
        )
    if settings.alert_webhook_url and not settings.alert_webhook_url.startswith(
        ("http://", "https://")
    ):
        raise SettingsError(f"{ENV_PREFIX}ALERT_WEBHOOK_URL must be an http(s) URL")
    return settings
