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
Keys are kept in date order (see `registration_plan`), so a range in the UI or a backfill
covers consecutive days.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import dagster as dg

from olist_churn_dagster.lib.calendar import registration_plan

REFERENCE_DATES = "reference_date"
# Metadata of a partitioned asset: the warehouse column its partition key is stored in (the
# IO manager deletes and rewrites a partition by it).
PARTITION_METADATA = {"partition_expr": "reference_date"}

reference_date_partitions = dg.DynamicPartitionsDefinition(name=REFERENCE_DATES)


def registered_dates(instance: dg.DagsterInstance) -> list[str]:
    """The reference dates that have a partition, oldest first."""
    return list(instance.get_dynamic_partitions(REFERENCE_DATES))


def register_reference_dates(instance: dg.DagsterInstance, dates: Iterable[date]) -> list[str]:
    """Give each date its partition (idempotent); returns the keys that were new."""
    existing = registered_dates(instance)
    stale, fresh = registration_plan(existing, [d.isoformat() for d in dates])
    for key in stale:
        instance.delete_dynamic_partition(REFERENCE_DATES, key)
    if fresh:
        instance.add_dynamic_partitions(REFERENCE_DATES, fresh)
    return sorted(set(fresh) - set(existing))
