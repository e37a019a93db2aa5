"""Reference-date partitions that follow the feed.

Dynamic partitions, registered as data arrives rather than derived from the files when the
code location loads:
- a raw load registers every date from the first with a full feature window behind it to
  its source's as-of date (an old extract gets its own range, not thousands of days up to
  today; an export with a quiet tail still gets its as-of date);
- the snapshot sensor registers a snapshot's date before it launches the snapshot's run,
  so a snapshot dated D always has its partition D, with no reload of the code location.

A time-window definition is fixed when the code location loads: open to today it would
fill the UI with empty days for an old extract, closed it would refuse tomorrow's snapshot.

Keys are only ever added: deleting one, even to re-add it at once, leaves its partition
unknown meanwhile to any run, sensor or UI reading the instance. Dagster keeps the keys in
the order they were added, which is date order unless an older date is registered after
newer ones (a snapshot before its history, a filled gap): code that needs the newest dates
reads `registered_dates` (sorted), a range run takes its bounds from `covering_range`
(Dagster's order), and the UI lists such a key last.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

import dagster as dg

from olist_churn_dagster.lib import calendar

REFERENCE_DATES = "reference_date"
# Metadata of a partitioned asset: the warehouse column its partition key is stored in (the
# IO manager deletes and rewrites a partition by it).
PARTITION_METADATA = {"partition_expr": "reference_date"}

reference_date_partitions = dg.DynamicPartitionsDefinition(name=REFERENCE_DATES)


def registered_keys(instance: dg.DagsterInstance) -> list[str]:
    """The reference dates that have a partition, in Dagster's order (the order they were
    added), which its partition ranges follow."""
    return list(instance.get_dynamic_partitions(REFERENCE_DATES))


def registered_dates(instance: dg.DagsterInstance) -> list[str]:
    """The reference dates that have a partition, oldest first (ISO keys sort as dates)."""
    return sorted(registered_keys(instance))


def covering_range(instance: dg.DagsterInstance, keys: Sequence[str]) -> tuple[str, str]:
    """Bounds of a partition range whose run covers every one of `keys`."""
    return calendar.covering_range(registered_keys(instance), keys)


def register_reference_dates(instance: dg.DagsterInstance, dates: Iterable[date]) -> list[str]:
    """Give each date its partition (idempotent, adds only); returns the new keys."""
    fresh = calendar.keys_to_add(registered_keys(instance), [d.isoformat() for d in dates])
    if fresh:
        instance.add_dynamic_partitions(REFERENCE_DATES, fresh)
    return fresh
