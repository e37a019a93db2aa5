from datetime import date

import pytest

from olist_churn_dagster.lib.calendar import (
    AsOfError,
    covering_range,
    keys_to_add,
    reference_dates,
    resolve_as_of,
)


def test_as_of_is_the_day_after_the_last_purchase_unless_declared():
    assert resolve_as_of(date(2018, 10, 17)) == date(2018, 10, 18)
    # A quiet tail: the export is dated ten days after its last sale.
    assert resolve_as_of(date(2018, 10, 17), date(2018, 10, 27)) == date(2018, 10, 27)
    with pytest.raises(AsOfError, match="2018-10-17 is not after the last purchase"):
        resolve_as_of(date(2018, 10, 17), date(2018, 10, 17))


def test_reference_dates_run_from_a_full_window_to_the_as_of_date():
    dates = reference_dates(date(2016, 9, 4), date(2018, 10, 18), window_days=180)
    assert dates[0] == date(2017, 3, 3)
    assert dates[-1] == date(2018, 10, 18)  # the as-of date itself, not today
    assert len(dates) == len(set(dates)) == (date(2018, 10, 18) - date(2017, 3, 3)).days + 1
    started = reference_dates(
        date(2016, 9, 4), date(2018, 10, 18), window_days=180, start=date(2018, 10, 1)
    )
    assert (started[0], len(started)) == (date(2018, 10, 1), 18)
    # Less history than a window: the as-of date alone, never an empty range.
    assert reference_dates(date(2018, 10, 1), date(2018, 10, 18), window_days=180) == [
        date(2018, 10, 18)
    ]


def test_keys_to_add_are_the_missing_ones_oldest_first():
    assert keys_to_add([], ["2018-01-02", "2018-01-01"]) == ["2018-01-01", "2018-01-02"]
    assert keys_to_add(["2018-01-01"], ["2018-01-01"]) == []
    assert keys_to_add(["2018-01-01"], ["2018-01-03", "2018-01-01"]) == ["2018-01-03"]
    # A snapshot registered first, its history after: only the history is added.
    assert keys_to_add(["2018-01-05"], ["2018-01-04", "2018-01-05"]) == ["2018-01-04"]


def test_covering_range_follows_the_registration_order():
    order = ["2018-01-03", "2018-01-04", "2018-01-05", "2018-01-01", "2018-01-02"]
    assert covering_range(order, ["2018-01-04", "2018-01-05"]) == ("2018-01-04", "2018-01-05")
    # Keys registered after newer ones: the range ends on the last one registered.
    assert covering_range(order, ["2018-01-01", "2018-01-05"]) == ("2018-01-05", "2018-01-01")
    assert covering_range(order, ["2018-01-02"]) == ("2018-01-02", "2018-01-02")
    with pytest.raises(ValueError):
        covering_range(order, [])


def test_date_batches_bound_the_rows_and_keep_every_date():
    from datetime import timedelta

    from olist_churn_dagster.lib.calendar import date_batches

    dates = [date(2025, 1, 1) + timedelta(days=i) for i in range(100)]
    batches = date_batches(dates, rows_per_date=1000, max_rows=30_000)
    assert [len(b) for b in batches] == [30, 30, 30, 10]
    assert [d for b in batches for d in b] == dates
    assert date_batches(dates, rows_per_date=10**9, max_rows=1) == [
        dates[i : i + 7] for i in range(0, 100, 7)
    ]
    assert date_batches(dates, rows_per_date=1, max_rows=10**6) == [dates]


def test_keys_through_a_day_fill_the_gap_after_the_newest_in_date_order():
    from olist_churn_dagster.lib.calendar import keys_through

    existing = ["2018-10-01", "2018-10-03", "2018-10-02"]
    assert keys_through(existing, date(2018, 10, 6)) == ["2018-10-04", "2018-10-05", "2018-10-06"]
    assert keys_through(existing, date(2018, 10, 4)) == ["2018-10-04"]
    assert keys_through(existing, date(2018, 10, 2)) == []  # registered already
    assert keys_through(existing, date(2018, 9, 30)) == ["2018-09-30"]  # before: itself only
    assert keys_through([], date(2018, 10, 6)) == ["2018-10-06"]
