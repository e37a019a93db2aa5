"""Operators are told: every failed run of the project's jobs, and a feed or scores that
missed their deadline, become alerts (the log, $OLIST_CHURN_DATA_DIR/alerts/alerts.jsonl, and a
chat webhook when OLIST_CHURN_ALERT_WEBHOOK_URL is set)."""

from dataclasses import dataclass

import dagster as dg

from olist_churn_dagster.defs.alerts.checks import (
    FEED_CHECK,
    FEED_KEY,
    FRESHNESS_CHECK,
    current_feed_freshness,
    current_freshness,
    freshness_metadata,
)
from olist_churn_dagster.defs.ml.assets import SCORES_KEY
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.lib.alerts import Alert, Freshness, record_alert


def send_alert(alert: Alert, log, settings: ChurnSettings) -> None:
    """To the log, the alerts file and the webhook when one is set."""
    log.error(alert.text())
    alerts_file = settings.to_settings().alerts_file
    problem = record_alert(alert, alerts_file, settings.webhook_url)
    if problem:
        log.warning(problem)


# How much of each failed step's error an alert carries (the UI has the rest).
STEP_ERROR_CHARS = 600


def failure_detail(context: dg.RunFailureSensorContext) -> str:
    """The run's failure message and each failed step's own error: "Steps failed:
    ['ml__backtest']" alone does not say what to do (a server down, a bad input)."""
    lines = [context.failure_event.message or "no message"]
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error
        # Dagster wraps the step's own exception ("Error occurred while executing op").
        while error and error.cause and error.cls_name.startswith("Dagster"):
            error = error.cause
        if error is not None:
            lines.append(f"{event.step_key}: {error.message.strip()[:STEP_ERROR_CHARS]}")
    return "\n".join(lines)


@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Records every failed run of this code location's jobs as an alert.",
)
def run_failure_alerts(context: dg.RunFailureSensorContext, settings: ChurnSettings) -> None:
    run = context.dagster_run
    tags = {k: v for k, v in run.tags.items() if k.startswith(("dagster/partition", "olist/"))}
    send_alert(
        Alert(
            kind="run_failure",
            title=f"Run of {run.job_name} failed ({run.run_id})",
            detail=failure_detail(context),
            fields={"run_id": run.run_id, "job": run.job_name, **tags},
        ),
        context.log,
        settings,
    )


@dataclass(frozen=True)
class _Expectation:
    """One freshness check the sensor evaluates, and the alert it raises when it fails."""

    asset_key: dg.AssetKey
    check_name: str
    severity: dg.AssetCheckSeverity
    alert_kind: str
    alert_title: str


_SCORES = _Expectation(
    SCORES_KEY,
    FRESHNESS_CHECK,
    dg.AssetCheckSeverity.ERROR,
    "scores_stale",
    "Churn scores are late",
)
_FEED = _Expectation(
    FEED_KEY, FEED_CHECK, dg.AssetCheckSeverity.WARN, "feed_late", "The source feed is late"
)


def _verdict(freshness: Freshness) -> str:
    return f"{freshness.expected}:{'pass' if freshness.passed else 'fail'}"


@dg.sensor(
    name="scores_freshness",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the feed_fresh check on raw/orders and the scores_fresh check on "
    "ml/churn_scores from the instance (no run, no warehouse) whenever a verdict changes, "
    "and alerts once per late date (feed_late, scores_stale).",
)
def scores_freshness_sensor(context: dg.SensorEvaluationContext, settings: ChurnSettings):
    deadline = settings.to_settings().scores_deadline_utc
    current = {
        _SCORES: current_freshness(context.instance, deadline),
        _FEED: current_feed_freshness(context.instance, deadline),
    }
    seen = dict(zip(current, (context.cursor or "").split("|"), strict=False))
    changed = [(e, f) for e, f in current.items() if _verdict(f) != seen.get(e)]
    if not changed:
        return dg.SkipReason("unchanged: " + "; ".join(f.describe() for f in current.values()))
    events = []
    for expectation, freshness in changed:
        if not freshness.passed:
            send_alert(
                Alert(
                    kind=expectation.alert_kind,
                    title=expectation.alert_title,
                    detail=freshness.describe(),
                    fields={"expected": freshness.expected.isoformat()},
                ),
                context.log,
                settings,
            )
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=expectation.asset_key,
                check_name=expectation.check_name,
                passed=freshness.passed,
                severity=expectation.severity,
                description=freshness.describe(),
                metadata=freshness_metadata(freshness, deadline),
            )
        )
    return dg.SensorResult(asset_events=events, cursor="|".join(map(_verdict, current.values())))
