"""Alerts for operators: failed runs, refused snapshots, scores that missed their
deadline and scored sellers that drifted from the training data.

Every alert is appended to a JSON-lines file under the data directory (the record that
survives), and posted to a chat webhook when one is configured (off by default). The same
poster carries the daily risk digest, which is no alert and is not on file.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path


@dataclass(frozen=True)
class Alert:
    kind: str  # "run_failure", "scores_stale", "feed_late", "snapshot_refused" or "drift"
    title: str
    detail: str
    fields: dict[str, str] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def text(self) -> str:
        extra = "".join(f"\n{k}: {v}" for k, v in self.fields.items())
        return f"{self.title}\n{self.detail}{extra}"


def record_alert(alert: Alert, alerts_file: Path, webhook_url: str | None = None) -> str | None:
    """Append the alert to `alerts_file`, then post it to the webhook if one is set.
    Returns why the post failed (the alert is on file all the same), else None."""
    alerts_file.parent.mkdir(parents=True, exist_ok=True)
    with alerts_file.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(alert), sort_keys=True) + "\n")
    if not webhook_url:
        return None
    return post_to_webhook(webhook_url, alert.text(), what="the alert")


def post_to_webhook(webhook_url: str, text: str, *, what: str = "the message") -> str | None:
    """Post `text` to a chat webhook as `{"text": ...}` (what Slack's and Mattermost's
    incoming webhooks take). Returns why the post failed (`what` names the message), else
    None: a chat that is down never fails the run that posts."""
    body = json.dumps({"text": text}).encode("utf-8")
    request = urllib.request.Request(
        webhook_url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        return f"webhook {webhook_url} did not take {what}: {exc}"
    return None


def read_alerts(alerts_file: Path) -> list[dict]:
    """The alerts on file, oldest first (an absent file: none)."""
    if not alerts_file.exists():
        return []
    lines = alerts_file.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def alerted(alerts_file: Path, kind: str, field_name: str) -> set[str]:
    """The values of `field_name` among the alerts of `kind` on file: what has been
    alerted already, for alerts raised once per date (or per anything else)."""
    return {
        a["fields"][field_name]
        for a in read_alerts(alerts_file)
        if a.get("kind") == kind and field_name in a.get("fields", {})
    }


@dataclass(frozen=True)
class Freshness:
    """Whether what an operator expects by now is there: the scores of the date due, or
    (`feed=True`) the source's data for it."""

    expected: date
    newest_scored: date | None  # for the feed: the newest date its data serves
    feed: bool = False

    @property
    def passed(self) -> bool:
        return self.newest_scored is not None and self.newest_scored >= self.expected

    @property
    def days_behind(self) -> int | None:
        if self.newest_scored is None:
            return None
        return max(0, (self.expected - self.newest_scored).days)  # ahead of the due date: 0

    def describe(self) -> str:
        newest = self.newest_scored or "none"
        if self.feed:
            if self.passed:
                return f"the feed has delivered the data for {self.expected}"
            return f"the feed's data for {self.expected} is missing (data as of {newest})"
        if self.passed:
            return f"scores for {self.expected} are there"
        return f"scores for {self.expected} are missing (newest scored: {newest})"


def due_date(now: datetime, deadline_utc: time) -> date:
    """The reference date due by `now`: after today's deadline (UTC) today, before it
    yesterday (whose deadline has passed)."""
    now_utc = now.astimezone(UTC)
    today = now_utc.date()
    return today if now_utc.time() >= deadline_utc else today - timedelta(days=1)


def scores_freshness(
    now: datetime, deadline_utc: time, scored_dates: list[str], delivered: date | None = None
) -> Freshness:
    """The date due by the deadline must be scored, once the feed has delivered its data
    (`delivered`, the raw tables' as-of date): a late feed is the feed's failure
    (`feed_freshness`), not the scoring's, so it does not also fail the scores."""
    due = due_date(now, deadline_utc)
    expected = min(due, delivered) if delivered else due
    newest = max((date.fromisoformat(d) for d in scored_dates), default=None)
    return Freshness(expected=expected, newest_scored=newest)


def feed_freshness(now: datetime, deadline_utc: time, delivered: date | None) -> Freshness:
    """The source's data for the date due by the deadline must have been loaded."""
    return Freshness(expected=due_date(now, deadline_utc), newest_scored=delivered, feed=True)
