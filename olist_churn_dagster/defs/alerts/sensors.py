"""Operators are told: every failed run of the project's jobs, and scores that missed
their deadline, become alerts (the log, $OLIST_CHURN_DATA_DIR/alerts/alerts.jsonl, and a
chat webhook when OLIST_CHURN_ALERT_WEBHOOK_URL is set)."""

import dagster as dg

from olist_churn_dagster.defs.alerts.checks import (
    FRESHNESS_CHECK,
    current_freshness,
    freshness_metadata,
)
from olist_churn_dagster.defs.ml.assets import SCORES_KEY
from olist_churn_dagster.lib.alerts import Alert, record_alert
from olist_churn_dagster.lib.settings import load_settings


def send_alert(alert: Alert, log) -> None:
    """To the log, the alerts file and the webhook when one is set."""
    settings = load_settings()
    log.error(alert.text())
    problem = record_alert(alert, settings.alerts_file, settings.alert_webhook_url)
    if problem:
        log.warning(problem)


@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Records every failed run of this code location's jobs as an alert.",
)
def run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    tags = {k: v for k, v in run.tags.items() if k.startswith(("dagster/partition", "olist/"))}
    send_alert(
        Alert(
            kind="run_failure",
            title=f"Run of {run.job_name} failed ({run.run_id})",
            detail=context.failure_event.message or "no message",
            fields={"run_id": run.run_id, "job": run.job_name, **tags},
        ),
        context.log,
    )


@dg.sensor(
    name="scores_freshness",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the scores_fresh check on ml/churn_scores from the instance (no "
    "run, no warehouse) whenever its verdict changes, and alerts once per missed date.",
)
def scores_freshness_sensor(context: dg.SensorEvaluationContext):
    freshness = current_freshness(context.instance)
    state = f"{freshness.expected}:{'pass' if freshness.passed else 'fail'}"
    if state == context.cursor:
        return dg.SkipReason(f"unchanged: {freshness.describe()}")
    if not freshness.passed:
        send_alert(
            Alert(
                kind="scores_stale",
                title="Churn scores are late",
                detail=freshness.describe(),
                fields={"expected": freshness.expected.isoformat()},
            ),
            context.log,
        )
    evaluation = dg.AssetCheckEvaluation(
        asset_key=SCORES_KEY,
        check_name=FRESHNESS_CHECK,
        passed=freshness.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=freshness.describe(),
        metadata=freshness_metadata(freshness),
    )
    return dg.SensorResult(asset_events=[evaluation], cursor=state)
