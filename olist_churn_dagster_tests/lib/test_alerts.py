from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

from olist_churn_dagster.lib.alerts import (
    Alert,
    alerted,
    post_to_webhook,
    read_alerts,
    record_alert,
    scores_freshness,
)

DEADLINE = time(4, 0)


def _alert() -> Alert:
    return Alert(
        kind="run_failure",
        title="Run of load_snapshot failed (abc)",
        detail="warehouse is locked",
        fields={"run_id": "abc", "olist/snapshot": "2018-10-20"},
    )


def test_alerts_are_appended_to_the_file_and_posted_nowhere_by_default(tmp_path: Path):
    path = tmp_path / "alerts" / "alerts.jsonl"
    assert record_alert(_alert(), path) is None
    assert record_alert(Alert("scores_stale", "late", "missing"), path) is None
    alerts = read_alerts(path)
    assert [a["kind"] for a in alerts] == ["run_failure", "scores_stale"]
    assert alerts[0]["fields"]["olist/snapshot"] == "2018-10-20"
    assert datetime.fromisoformat(alerts[0]["at"]).tzinfo is not None


def test_a_webhook_receives_the_alert_text(tmp_path: Path, webhook):
    url, received = webhook
    assert record_alert(_alert(), tmp_path / "alerts.jsonl", url) is None
    (body,) = received
    assert body["text"].startswith("Run of load_snapshot failed (abc)\nwarehouse is locked")
    assert "olist/snapshot: 2018-10-20" in body["text"]


def test_an_unreachable_webhook_keeps_the_alert_on_file(tmp_path: Path, webhook):
    url, _ = webhook
    dead = url.rsplit(":", 1)[0] + ":9/hook"  # nothing listens on the discard port
    problem = record_alert(_alert(), tmp_path / "alerts.jsonl", dead)
    assert problem is not None and "did not take the alert" in problem
    assert len(read_alerts(tmp_path / "alerts.jsonl")) == 1


def test_alerted_names_what_was_alerted_of_a_kind(tmp_path: Path):
    path = tmp_path / "alerts.jsonl"
    assert alerted(path, "drift", "reference_date") == set()  # no file yet
    for day in ("2018-10-20", "2018-10-21", "2018-10-20"):
        record_alert(Alert("drift", "drifted", "psi", {"reference_date": day}), path)
    record_alert(Alert("scores_stale", "late", "x", {"reference_date": "2018-10-22"}), path)
    record_alert(Alert("drift", "no date", "x"), path)
    assert alerted(path, "drift", "reference_date") == {"2018-10-20", "2018-10-21"}
    assert alerted(path, "scores_stale", "reference_date") == {"2018-10-22"}


def test_a_message_is_posted_without_being_recorded_as_an_alert(tmp_path: Path, webhook):
    url, received = webhook
    assert post_to_webhook(url, "Churn risk digest for 2018-10-20") is None
    assert received == [{"text": "Churn risk digest for 2018-10-20"}]
    assert not list(tmp_path.iterdir())
    dead = url.rsplit(":", 1)[0] + ":9/hook"
    assert "did not take the digest" in post_to_webhook(dead, "x", what="the digest")


@pytest.mark.parametrize(
    ("now", "scored", "expected", "passed"),
    [
        (datetime(2018, 10, 20, 4, 0, tzinfo=UTC), ["2018-10-20"], date(2018, 10, 20), True),
        (datetime(2018, 10, 20, 4, 0, tzinfo=UTC), ["2018-10-19"], date(2018, 10, 20), False),
        (datetime(2018, 10, 20, 3, 59, tzinfo=UTC), ["2018-10-19"], date(2018, 10, 19), True),
        (datetime(2018, 10, 20, 3, 59, tzinfo=UTC), ["2018-10-18"], date(2018, 10, 19), False),
        (datetime(2018, 10, 20, 12, 0, tzinfo=UTC), [], date(2018, 10, 20), False),
    ],
)
def test_freshness_expects_today_after_the_deadline(now, scored, expected, passed):
    freshness = scores_freshness(now, DEADLINE, scored)
    assert (freshness.expected, freshness.passed) == (expected, passed)
    assert ("are there" if passed else "are missing") in freshness.describe()


def test_scores_are_due_for_the_feeds_newest_date_and_the_feed_for_the_day() -> None:
    from olist_churn_dagster.lib.alerts import feed_freshness

    now = datetime(2018, 10, 20, 12, 0, tzinfo=UTC)
    delivered = date(2018, 10, 13)  # the feed is a week late
    scores = scores_freshness(now, DEADLINE, ["2018-10-13"], delivered)
    assert scores.passed and scores.expected == delivered
    assert not scores_freshness(now, DEADLINE, ["2018-10-12"], delivered).passed
    feed = feed_freshness(now, DEADLINE, delivered)
    assert not feed.passed and (feed.expected, feed.days_behind) == (date(2018, 10, 20), 7)
    assert feed_freshness(now, DEADLINE, date(2018, 10, 20)).passed
    assert (
        "the feed has delivered the data for 2018-10-20"
        in feed_freshness(now, DEADLINE, date(2018, 10, 21)).describe()
    )
