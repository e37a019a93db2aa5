"""Daily reference-date partitions over the range the configured data covers."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from olist_churn_dagster.lib.calendar import reference_date_range
from olist_churn_dagster.lib.settings import Settings, load_settings


def _data_source(settings: Settings) -> Path | None:
    """The raw folder when it holds data, else the newest complete snapshot."""
    raw = settings.raw_dir
    if raw.is_dir() and any(raw.iterdir()):
        return raw
    from olist_churn_dagster.lib.snapshots import scan_snapshots

    complete = [s for s in scan_snapshots(settings.snapshots_dir) if s.complete and not s.problem]
    return complete[-1].path if complete else None


def _purchase_range(settings: Settings) -> tuple[date, date] | None:
    source = _data_source(settings)
    if source is None:
        return None
    from olist_churn_dagster.lib.loader import InputDataError, purchase_date_range

    try:
        return purchase_date_range(source)
    except InputDataError:
        # A bad file must not stop the code location from loading; the raw assets report it.
        return None


def build_reference_partitions(settings: Settings, today: date) -> dg.DailyPartitionsDefinition:
    span = _purchase_range(settings)
    if span is None:
        # No data yet: a year of dates ending today, until data is generated or dropped in.
        span = (today - timedelta(days=365 + settings.feature_window_days), today)
    first, end = reference_date_range(
        *span,
        window_days=settings.feature_window_days,
        today=today,
        start=settings.partition_start,
        end=settings.partition_end,
    )
    if end is None:
        return dg.DailyPartitionsDefinition(start_date=first.isoformat(), end_offset=1)
    return dg.DailyPartitionsDefinition(start_date=first.isoformat(), end_date=end.isoformat())


reference_date_partitions = build_reference_partitions(load_settings(), date.today())
