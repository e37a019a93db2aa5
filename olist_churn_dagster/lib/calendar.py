"""The range of reference dates worth computing, derived from the data itself."""

from __future__ import annotations

from datetime import date, timedelta

# Data whose last purchase is this recent is treated as a live feed: the partitions stay
# open-ended so each new day (and each new snapshot) gets its partition.
LIVE_FEED_DAYS = 7


def reference_date_range(
    first_purchase: date,
    last_purchase: date,
    *,
    window_days: int,
    today: date,
    start: date | None = None,
    end: date | None = None,
) -> tuple[date, date | None]:
    """First reference date and exclusive end (None = open-ended, follows the calendar).

    The first date is the first one with a full feature window behind it; the last is the
    day after the last purchase, when all data is in the past. Explicit settings win.
    """
    first = start or min(first_purchase + timedelta(days=window_days), last_purchase)
    if end is not None:
        return first, end
    if last_purchase >= today - timedelta(days=LIVE_FEED_DAYS):
        return first, None
    return first, last_purchase + timedelta(days=2)


def date_batches(dates: list[date], *, rows_per_date: int, max_rows: int) -> list[list[date]]:
    """Consecutive runs of `dates` of about `max_rows` output rows each (at least 7 dates
    a batch), so a long backfill is a few vectorised passes with bounded memory."""
    size = max(7, max_rows // max(rows_per_date, 1))
    return [dates[i : i + size] for i in range(0, len(dates), size)]
