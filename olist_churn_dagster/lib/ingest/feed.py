"""Deciding what to do with the snapshots on disk: the pure core of the snapshot sensor.

The state carried between ticks is small: the newest snapshot date launched and the
fingerprint launched for each date. A run key is built from date *and* fingerprint, so a
corrected snapshot (new content) is picked up again while an unchanged one never is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from olist_churn_dagster.lib.ingest.snapshots import SnapshotError, scan_snapshots, verify_snapshot


@dataclass
class FeedCursor:
    newest: date | None = None
    launched: dict[str, str] = field(default_factory=dict)  # as_of ISO -> fingerprint

    @classmethod
    def parse(cls, text: str | None) -> FeedCursor:
        if not text:
            return cls()
        data = json.loads(text)
        newest = data.get("newest")
        return cls(date.fromisoformat(newest) if newest else None, dict(data.get("launched", {})))

    def dump(self) -> str:
        newest = self.newest.isoformat() if self.newest else None
        return json.dumps({"newest": newest, "launched": self.launched}, sort_keys=True)


@dataclass(frozen=True)
class SnapshotLaunch:
    as_of: date
    path: Path
    fingerprint: str

    @property
    def run_key(self) -> str:
        return f"snapshot-{self.as_of.isoformat()}-{self.fingerprint[:16]}"


@dataclass
class FeedDecision:
    launches: list[SnapshotLaunch]
    waiting: list[str]
    skipped: list[str]
    cursor: FeedCursor
    queued: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.queued:
            parts.append("queued behind the snapshot being loaded: " + ", ".join(self.queued))
        if self.waiting:
            parts.append("waiting for the marker of " + ", ".join(self.waiting))
        if self.skipped:
            parts.append("skipped " + "; ".join(self.skipped))
        return ". ".join(parts) or "no new complete snapshot"


def decide(root: Path, cursor: FeedCursor, *, limit: int | None = None) -> FeedDecision:
    """What to launch now, oldest first, at most `limit` snapshots (the rest wait for a
    later tick, so one load finishes before the next starts). Snapshots older than the
    newest launched are skipped, so the raw tables never roll back; every other complete,
    valid snapshot is launched, whatever its date (its partition is registered with it)."""
    decision = FeedDecision([], [], [], FeedCursor(cursor.newest, dict(cursor.launched)))
    for info in scan_snapshots(root):
        name = info.path.name
        if info.problem:
            decision.skipped.append(f"{name}: {info.problem}")
            continue
        if not info.complete:
            decision.waiting.append(name)
            continue
        key = info.as_of.isoformat()
        if cursor.launched.get(key) == info.fingerprint:
            continue
        if decision.cursor.newest and info.as_of < decision.cursor.newest:
            decision.skipped.append(
                f"{name}: older than {decision.cursor.newest} already loaded (no roll-back)"
            )
            continue
        if limit is not None and len(decision.launches) >= limit:
            decision.queued.append(name)
            continue
        try:
            verify_snapshot(info)
        except SnapshotError as exc:
            decision.skipped.append(str(exc))
            continue
        assert info.fingerprint is not None
        decision.launches.append(SnapshotLaunch(info.as_of, info.path, info.fingerprint))
        decision.cursor.launched[key] = info.fingerprint
        decision.cursor.newest = info.as_of
    return decision
