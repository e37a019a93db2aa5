"""Deciding what to do with the snapshots on disk: the pure core of the snapshot sensor.

The state carried between ticks is small: the newest snapshot date launched, the
fingerprint launched (or refused) for each date, and the failed runs already reported. A
run key is built from date *and* fingerprint, so a corrected snapshot (new content) is
picked up again while an unchanged one never is.

A snapshot that would roll the raw tables back is refused on the tick, never launched: a
run would only fail, and mark its partitions failed although their data is fine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from olist_churn_dagster.lib.ingest.snapshots import SnapshotError, scan_snapshots, verify_snapshot


def rolls_back(as_of: date, raw_as_of: date | None) -> bool:
    """Whether loading a source as of `as_of` would roll back raw tables as of `raw_as_of`:
    the one rule behind both the sensor's refusal and the raw load's own guard."""
    return raw_as_of is not None and as_of < raw_as_of


def score_instead(day: date) -> str:
    """What an operator does with a date whose snapshot is refused: its features and
    scores need no reload, since a date's features use only data from before it."""
    return (
        f"to score {day} from the loaded tables, run the score_sellers job for partition "
        f"{day} (Jobs > score_sellers > Materialize)"
    )


@dataclass
class FeedCursor:
    newest: date | None = None
    launched: dict[str, str] = field(default_factory=dict)  # as_of ISO -> fingerprint
    refused: dict[str, str] = field(default_factory=dict)  # as_of ISO -> fingerprint
    reported: list[str] = field(default_factory=list)  # failed run ids already named

    @classmethod
    def parse(cls, text: str | None) -> FeedCursor:
        if not text:
            return cls()
        data = json.loads(text)
        newest = data.get("newest")
        return cls(
            date.fromisoformat(newest) if newest else None,
            dict(data.get("launched", {})),
            dict(data.get("refused", {})),
            list(data.get("reported", [])),
        )

    def dump(self) -> str:
        newest = self.newest.isoformat() if self.newest else None
        state = {
            "newest": newest,
            "launched": self.launched,
            "refused": self.refused,
            "reported": self.reported,
        }
        return json.dumps(state, sort_keys=True)


@dataclass(frozen=True)
class SnapshotLaunch:
    as_of: date
    path: Path
    fingerprint: str

    @property
    def run_key(self) -> str:
        return f"snapshot-{self.as_of.isoformat()}-{self.fingerprint[:16]}"


@dataclass(frozen=True)
class Refusal:
    """A complete snapshot that is not loaded, with why and what to do instead."""

    as_of: date
    fingerprint: str
    reason: str

    def text(self) -> str:
        return f"{self.as_of}: {self.reason}; {score_instead(self.as_of)}"


@dataclass
class FeedDecision:
    launches: list[SnapshotLaunch]
    waiting: list[str]
    skipped: list[str]
    cursor: FeedCursor
    queued: list[str] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)  # refused on this tick, first time

    def summary(self) -> str:
        parts = []
        if self.queued:
            parts.append("queued behind the snapshot being loaded: " + ", ".join(self.queued))
        if self.waiting:
            parts.append("waiting for the marker of " + ", ".join(self.waiting))
        if self.refused:
            parts.append("refused " + "; ".join(r.text() for r in self.refused))
        if self.skipped:
            parts.append("skipped " + "; ".join(self.skipped))
        earlier = len(self.cursor.refused) - len(self.refused)
        if earlier:
            parts.append(f"{earlier} snapshot(s) refused earlier (alerts: snapshot_refused)")
        return ". ".join(parts) or "no new complete snapshot"


def _refusal(info_as_of: date, newest: date | None, raw_as_of: date | None) -> str | None:
    """Why a complete snapshot is not loaded, or None when it is: older than the newest
    snapshot launched, or than the raw tables. One of the raw tables' own date is loaded:
    it may correct what they hold, and dropping it would lose those corrections."""
    if newest and info_as_of < newest:
        return f"older than {newest} already loaded (no roll-back)"
    if rolls_back(info_as_of, raw_as_of):
        return f"older than the raw tables, which hold data as of {raw_as_of} (no roll-back)"
    return None


def decide(
    root: Path,
    cursor: FeedCursor,
    *,
    limit: int | None = None,
    raw_as_of: date | None = None,
) -> FeedDecision:
    """What to launch now, oldest first, at most `limit` snapshots (the rest wait for a
    later tick, so one load finishes before the next starts). A snapshot that would roll
    back the raw tables (as of `raw_as_of`) or the newest launched one is refused, once;
    every other complete, valid snapshot is launched, whatever its date (its partition is
    registered with it)."""
    state = FeedCursor(
        cursor.newest, dict(cursor.launched), dict(cursor.refused), list(cursor.reported)
    )
    decision = FeedDecision([], [], [], state)
    for info in scan_snapshots(root):
        name = info.path.name
        if info.problem:
            decision.skipped.append(f"{name}: {info.problem}")
            continue
        if not info.complete:
            decision.waiting.append(name)
            continue
        key = info.as_of.isoformat()
        if info.fingerprint in (cursor.launched.get(key), cursor.refused.get(key)):
            continue
        assert info.fingerprint is not None
        reason = _refusal(info.as_of, state.newest, raw_as_of)
        if reason:
            decision.refused.append(Refusal(info.as_of, info.fingerprint, reason))
            state.refused[key] = info.fingerprint
            continue
        if limit is not None and len(decision.launches) >= limit:
            decision.queued.append(name)
            continue
        try:
            verify_snapshot(info)
        except SnapshotError as exc:
            decision.skipped.append(str(exc))
            continue
        decision.launches.append(SnapshotLaunch(info.as_of, info.path, info.fingerprint))
        decision.cursor.launched[key] = info.fingerprint
        decision.cursor.newest = info.as_of
    return decision


def report_failures(
    failed: list[tuple[date, str]], cursor: FeedCursor, raw_as_of: date | None
) -> list[str]:
    """Notes on the snapshot runs that failed (snapshot date, run id): each is named once,
    with what fixes it (a re-execution, unless the raw tables have moved past its date
    since, when a re-execution would be refused too); later ticks only count them."""
    fresh = [(day, run_id) for day, run_id in failed if run_id not in cursor.reported]
    notes = []
    for day, run_id in fresh:
        if rolls_back(day, raw_as_of):
            notes.append(
                f"snapshot {day}: run {run_id[:8]} failed, and the raw tables now hold data "
                f"as of {raw_as_of}, so a re-execution would be refused; {score_instead(day)}"
            )
        else:
            notes.append(f"snapshot {day}: run {run_id[:8]} failed; re-execute it from the UI")
    earlier = len(failed) - len(fresh)
    if earlier:
        notes.append(f"{earlier} failed snapshot run(s) named earlier (see Runs)")
    cursor.reported = [run_id for _, run_id in failed]
    return notes
