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
