from datetime import date

from olist_churn_dagster.lib.calendar import reference_date_range

TODAY = date(2026, 11, 24)


def test_live_feed_is_open_ended():
    first, end = reference_date_range(
        date(2024, 10, 1), date(2026, 11, 23), window_days=180, today=TODAY
    )
    assert first == date(2025, 3, 30)
    assert end is None


def test_historic_data_ends_the_day_after_the_last_purchase():
    first, end = reference_date_range(
        date(2016, 9, 4), date(2018, 10, 17), window_days=180, today=TODAY
    )
    assert first == date(2017, 3, 3)
    assert end == date(2018, 10, 19)  # exclusive: the last reference date is 2018-10-18


def test_settings_win():
    first, end = reference_date_range(
        date(2016, 9, 4),
        date(2018, 10, 17),
        window_days=180,
        today=TODAY,
        start=date(2018, 1, 1),
        end=date(2018, 2, 1),
    )
    assert (first, end) == (date(2018, 1, 1), date(2018, 2, 1))


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
