"""The settings resource (`settings`): the code location's settings, read from the
OLIST_CHURN_* environment (and .env) by `lib.settings.load_settings` here and nowhere else
in defs/, so every asset, check and sensor takes them as a resource and the UI's resource
page shows the values the code location runs with. Definition-time needs (code versions,
executor, the other resources) read the same object through `churn_settings`."""

from __future__ import annotations

import os
from dataclasses import fields
from datetime import date, time
from functools import lru_cache
from pathlib import Path

import dagster as dg
from pydantic import Field

from olist_churn_dagster.lib.settings import ENV_PREFIX, Settings, load_settings


def _env(name: str, meaning: str) -> str:
    return f"{ENV_PREFIX}{name}: {meaning}"


WEBHOOK = "alert_webhook_url"
WEBHOOK_ENV = f"{ENV_PREFIX}ALERT_WEBHOOK_URL"


class ChurnSettings(dg.ConfigurableResource):
    """The settings of `lib.settings.Settings`, as config values (paths, dates and times as
    text); `to_settings` gives them back typed for the core."""

    data_dir: str = Field(description=_env("DATA_DIR", "all state"))
    churn_horizon_days: int = Field(description=_env("HORIZON_DAYS", "silence that is churn"))
    feature_window_days: int = Field(description=_env("WINDOW_DAYS", "feature window"))
    partition_start: str | None = Field(
        description=_env("PARTITION_START", "first reference date a raw load registers")
    )
    raw_as_of: str | None = Field(description=_env("RAW_AS_OF", "as-of date of data/raw"))
    cohort_day: int = Field(description=_env("COHORT_DAY", "day of month of ABT cohorts"))
    rescore_days: int = Field(description=_env("RESCORE_DAYS", "dates a new champion rescores"))
    feature_batch_rows: int = Field(description=_env("FEATURE_BATCH_ROWS", "rows per batch"))
    warehouse: str = Field(description=_env("WAREHOUSE", "DuckDB file or DuckLake"))
    warehouse_data_path: str = Field(description=_env("WAREHOUSE_DATA_PATH", "DuckLake files"))
    mlflow_tracking_uri: str = Field(description=_env("MLFLOW_TRACKING_URI", "MLflow store"))
    executor: str = Field(description=_env("EXECUTOR", "in_process or multiprocess"))
    lock_retries: int = Field(description=_env("LOCK_RETRIES", "retries of a locked step"))
    lock_backoff_seconds: int = Field(
        description=_env("LOCK_BACKOFF_SECONDS", "first wait before such a retry")
    )
    alert_webhook_url: str | None = Field(description=_env("ALERT_WEBHOOK_URL", "chat webhook"))
    scores_deadline_utc: str = Field(
        description=_env("SCORES_DEADLINE_UTC", "time of day the scores are due (UTC)")
    )
    backtest_cutoffs: int = Field(description=_env("BACKTEST_CUTOFFS", "backtest cutoffs"))

    @classmethod
    def from_settings(cls, settings: Settings) -> ChurnSettings:
        values = {f.name: _config_value(getattr(settings, f.name)) for f in fields(Settings)}
        if settings.alert_webhook_url and os.environ.get(WEBHOOK_ENV) == values[WEBHOOK]:
            # A webhook URL is a credential: the UI shows the variable's name, not its value.
            values[WEBHOOK] = dg.EnvVar(WEBHOOK_ENV)
        return cls(**values)

    @property
    def webhook_url(self) -> str | None:
        """The chat webhook, read from its variable when the field names one."""
        return _resolved(self.alert_webhook_url)  # type: ignore[return-value]

    def to_settings(self) -> Settings:
        """The typed settings the core's functions take (and their derived paths)."""
        values = {f.name: _resolved(getattr(self, f.name)) for f in fields(Settings)}
        return Settings(
            **{
                **values,
                "data_dir": Path(self.data_dir),
                "partition_start": _date(self.partition_start),
                "raw_as_of": _date(self.raw_as_of),
                "scores_deadline_utc": time.fromisoformat(self.scores_deadline_utc),
            }
        )


def _resolved(value: object) -> object:
    """A field's value; an `EnvVar` (set outside a run, where Dagster has not resolved it)
    read from the environment."""
    return value.get_value() if isinstance(value, dg.EnvVar) else value


def _config_value(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    return value.isoformat() if isinstance(value, date | time) else value


def _date(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def _environment() -> tuple[str, ...]:
    """What the settings are read from: the working directory (a relative data dir, the
    .env file) and the OLIST_CHURN_* variables."""
    return (
        os.getcwd(),
        *sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(ENV_PREFIX)),
    )


@lru_cache(maxsize=8)
def _read(environment: tuple[str, ...]) -> ChurnSettings:
    """The settings of `environment` (the cache key; `load_settings` reads the same)."""
    return ChurnSettings.from_settings(load_settings())


def churn_settings() -> ChurnSettings:
    """The settings resource for the environment as it is now. Read once per environment,
    so the code versions, executor and resources of a code location come from one read,
    while a test that points OLIST_CHURN_* elsewhere gets its new values."""
    return _read(_environment())
