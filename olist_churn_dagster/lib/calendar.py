"""Reference dates: which days get a partition, and what date a data source is as of."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta


class AsOfError(ValueError):
    """A declared as-of date contradicts the data it describes."""


def resolve_as_of(last_purchase: date, declared: date | None = None) -> date:
    """The day a source was exported: declared (a setting or the `_SUCCESS` manifest) or,
    by default, the day after its last purchase. A quiet tail (no sales in the last days
    before the export) is only visible through a declaration."""
    if declared is None:
        return last_purchase + timedelta(days=1)
    if declared <= last_purchase:
        raise AsOfError(
            f"as-of date {declared} is not after the last purchase ({last_purchase}): "
            "a source as of D holds only what happened before D 00:00"
        )
    return declared


def reference_dates(
    first_purchase: date, as_of: date, *, window_days: int, start: date | None = None
) -> list[date]:
    """Every reference date worth a partition: from the first with a full feature window
    behind it (or `start`) to the as-of date, inclusive. Nothing past the data's as-of
    date, so an old extract gets its own range and not one that runs on to today."""
    first = start or min(first_purchase + timedelta(days=window_days), as_of)
    if first > as_of:
        raise AsOfError(f"the first reference date {first} is after the as-of date {as_of}")
    return day_range(first, as_of)


def day_range(first: date, last: date) -> list[date]:
    """Every day from `first` to `last`, both included."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def keys_to_add(existing: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """The wanted keys not registered yet, oldest first. Registered keys are not deleted to
    re-sort them: meanwhile their partitions would be unknown to runs reading the instance."""
    return sorted(set(wanted) - set(existing))


def keys_through(existing: Sequence[str], day: date) -> list[str]:
    """The keys to add so that `day` has its partition and the keys stay in date order:
    every day after the newest registered one through `day` (reference dates that a load
    as of `day` registers anyway), or `day` alone when it falls before the newest."""
    newest = max(existing, default=None)
    if newest is None or day.isoformat() <= newest:
        return keys_to_add(existing, [day.isoformat()])
    after = date.fromisoformat(newest) + timedelta(days=1)
    return [d.isoformat() for d in day_range(after, day)]


def covering_range(order: Sequence[str], keys: Iterable[str]) -> tuple[str, str]:
    """The first and last of `keys` in `order`, the order Dagster holds the keys in: a run
    over the range between them covers every one of `keys` (and any key registered out of
    date order between them), whatever order the keys were registered in."""
    position = {key: i for i, key in enumerate(order)}
    ranked = sorted(keys, key=position.__getitem__)
    if not ranked:
        raise ValueError("covering_range needs at least one key")
    return ranked[0], ranked[-1]


def date_batches(dates: list[date], *, rows_per_date: int, max_rows: int) -> list[list[date]]:
    """Consecutive runs of `dates` of about `max_rows` output rows each (at least 7 dates
    a batch), so a long backfill is a few vectorised passes with bounded memory."""
    size = max(7, max_rows // max(rows_per_date, 1))
    return [dates[i : i + size] for i in range(0, len(dates), size)]
