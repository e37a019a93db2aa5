"""The snapshot sensor's pure core: what a tick launches, refuses once, and reports."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from olist_churn_dagster.lib.ingest.feed import (
    FeedCursor,
    decide,
    report_failures,
    rolls_back,
)
from olist_churn_dagster.lib.ingest.snapshots import cut_as_of, write_snapshot
from olist_churn_dagster_tests.lib.ingest.test_snapshots import _tables

DAY = date(2024, 1, 15)


def _write(root: Path, *days: date) -> None:
    for day in days:
        write_snapshot(cut_as_of(_tables(), day), root, day)


def test_rolls_back_only_for_an_older_source() -> None:
    assert rolls_back(DAY, DAY + timedelta(days=1))
    assert not rolls_back(DAY, DAY)
    assert not rolls_back(DAY, None)


def test_snapshots_older_than_the_raw_tables_are_refused_once(tmp_path: Path) -> None:
    older, same, newer = DAY - timedelta(days=1), DAY, DAY + timedelta(days=1)
    _write(tmp_path, older, same, newer)
    first = decide(tmp_path, FeedCursor(), raw_as_of=DAY)
    # The raw tables' own date is loaded: it may correct them (changes only).
    assert [launch.as_of for launch in first.launches] == [same, newer]
    (refusal,) = first.refused
    assert refusal.as_of == older
    assert f"raw tables, which hold data as of {DAY}" in refusal.text()
    assert "score_sellers" in refusal.text()  # what to do instead
    assert "refused " in first.summary()

    again = decide(tmp_path, first.cursor, raw_as_of=newer)
    assert not again.launches and not again.refused  # refused once only
    assert again.summary() == "1 snapshot(s) refused earlier (alerts: snapshot_refused)"


def test_a_correction_of_the_loaded_snapshot_is_launched_again(tmp_path: Path) -> None:
    _write(tmp_path, DAY)
    first = decide(tmp_path, FeedCursor(), raw_as_of=DAY - timedelta(days=1))
    (launch,) = first.launches
    tables = cut_as_of(_tables(), DAY)
    tables["sellers"] = tables["sellers"].head(1)
    write_snapshot(tables, tmp_path, DAY)  # new content, same date as the raw tables now
    corrected = decide(tmp_path, first.cursor, raw_as_of=DAY)
    (again,) = corrected.launches
    assert again.fingerprint != launch.fingerprint and not corrected.refused


def test_snapshots_older_than_the_newest_launched_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, DAY)
    first = decide(tmp_path, FeedCursor(), limit=1)
    _write(tmp_path, DAY - timedelta(days=3))
    tick = decide(tmp_path, first.cursor, limit=0)
    (refusal,) = tick.refused
    assert refusal.reason == f"older than {DAY} already loaded (no roll-back)"
    assert not tick.launches


def test_failed_runs_are_named_once_with_the_fix_that_works() -> None:
    cursor = FeedCursor()
    failed = [(DAY, "a" * 32), (DAY + timedelta(days=2), "b" * 32)]
    notes = report_failures(failed, cursor, raw_as_of=DAY + timedelta(days=1))
    assert notes[0].startswith(f"snapshot {DAY}: run aaaaaaaa failed, and the raw tables now")
    assert "score_sellers" in notes[0] and "re-execute" not in notes[0]
    assert notes[1] == (
        f"snapshot {DAY + timedelta(days=2)}: run bbbbbbbb failed; re-execute it from the UI"
    )
    later = report_failures(failed, cursor, raw_as_of=DAY + timedelta(days=1))
    assert later == ["2 failed snapshot run(s) named earlier (see Runs)"]
    assert report_failures([], cursor, raw_as_of=None) == [] and cursor.reported == []


def test_the_cursor_round_trips_and_reads_an_older_cursor() -> None:
    cursor = FeedCursor(DAY, {"2024-01-15": "f1"}, {"2024-01-10": "f0"}, ["run"])
    assert FeedCursor.parse(cursor.dump()) == cursor
    old = FeedCursor.parse('{"newest": "2024-01-15", "launched": {"2024-01-15": "f1"}}')
    assert old == FeedCursor(DAY, {"2024-01-15": "f1"})
