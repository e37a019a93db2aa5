"""Monitoring over time: per scored date, the drift of every model feature and of the
scores against the training ABT's newest cohorts, the share of sellers per band, and the
performance expected from the probabilities beside the realized one once labels mature.
A date that drifted raises one alert (the alerts file and the webhook)."""

from collections.abc import Iterator
from datetime import date, timedelta

import dagster as dg
import duckdb
import polars as pl
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.alerts.sensors import send_alert
from olist_churn_dagster.defs.features.assets import partition_dates
from olist_churn_dagster.defs.metadata import table_value
from olist_churn_dagster.defs.ml.assets import ABT_KEY, FEATURE_KEYS, SCORES_KEY, SCORING_GROUP
from olist_churn_dagster.defs.ml.resources import MlflowTracking
from olist_churn_dagster.defs.partitions import PARTITION_METADATA, reference_date_partitions
from olist_churn_dagster.defs.raw.assets import raw_asset_key
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL
from olist_churn_dagster.lib.alerts import Alert, alerted
from olist_churn_dagster.lib.features.store import read_feature_tables
from olist_churn_dagster.lib.markdown import png_markdown
from olist_churn_dagster.lib.ml.labels import churn_labels
from olist_churn_dagster.lib.ml.model import predict
from olist_churn_dagster.lib.ml.monitoring import (
    PSI_WARN,
    REFERENCE_COHORTS,
    drift_report,
    monitoring_table,
    performance_by_date,
    performance_figure,
    reference_cohorts,
)
from olist_churn_dagster.lib.ml.rhythm import model_frame
from olist_churn_dagster.lib.ml.tracking import load_model_version
from olist_churn_dagster.lib.tables import ABT_TABLE, KEYS, RAW_SCHEMA, SCORES_TABLE

MONITORING_KEY = dg.AssetKey(["ml", "model_monitoring"])
DRIFT_CHECK = "feature_drift_psi"
DRIFT_ALERT = "drift"


def read_label_inputs(
    conn: duckdb.DuckDBPyConnection, first: date | None, horizon_days: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Only the columns and rows labels read: a scored seller is active, so its last sale
    before D is at most the horizon before D, and no sale before the first scored date
    minus the horizon changes a label; the latest purchase is kept."""
    since = "TRUE" if first is None else "order_purchase_timestamp >= ?"
    params = [] if first is None else [first - timedelta(days=horizon_days)]
    orders_sql = (
        "SELECT order_id, order_status, order_purchase_timestamp "
        f"FROM {RAW_SCHEMA}.orders WHERE {since}"
    )
    orders = conn.execute(orders_sql, params).pl()
    items = conn.execute(
        f"SELECT order_id, seller_id FROM {RAW_SCHEMA}.order_items "
        f"SEMI JOIN ({orders_sql}) USING (order_id)",
        params,
    ).pl()
    return orders, items


def drift_per_version(
    uri: str, reference: pl.DataFrame, current: pl.DataFrame, scores: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`drift_report` of the dates each model version scored (one version, unless the run
    covers dates scored before a new champion): every version is judged on its own
    features and on its own scores for the reference cohorts."""
    psi, summary = [], []
    for (version,), rows in scores.group_by("model_version"):  # one or two versions
        model = load_model_version(uri, str(version))
        reference_scores = model.calibrator.apply(
            predict(model.booster, reference, model.feature_names)
        )
        days = rows.get_column("reference_date").unique().implode()
        parts = drift_report(
            reference,
            reference_scores,
            current.filter(pl.col("reference_date").is_in(days)),
            rows,
            model.feature_names,
        )
        psi.append(parts[0])
        summary.append(parts[1])
    return pl.concat(psi), pl.concat(summary)


def alert_drift(
    table: pl.DataFrame, log: dg.DagsterLogManager, settings: ChurnSettings
) -> list[str]:
    """One `drift` alert per date that drifted and was not alerted before (a rescore or a
    rerun of the date stays quiet); returns the dates alerted now."""
    done = alerted(settings.to_settings().alerts_file, DRIFT_ALERT, "reference_date")
    fresh = table.filter(pl.col("drift") & ~pl.col("reference_date").cast(pl.String).is_in(done))
    for row in fresh.iter_rows(named=True):  # the drifted dates of one run: a few
        day = row["reference_date"].isoformat()
        features = row["drifted"] or "none"
        auc = row["expected_roc_auc"]
        send_alert(
            Alert(
                kind=DRIFT_ALERT,
                title=f"The scored sellers of {day} drifted from the training data",
                detail=f"PSI above {row['psi_threshold']:.2f} against the training ABT's "
                f"newest {REFERENCE_COHORTS} cohorts: scores {row['score_psi']:.3f}; "
                f"features {features}. Expected ROC AUC "
                f"{'n/a' if auc is None else f'{auc:.3f}'}.",
                fields={"reference_date": day, "model_version": str(row["model_version"])},
            ),
            log,
            settings,
        )
    return [d.isoformat() for d in fresh.get_column("reference_date")]


def _number(value: float | int | None) -> dg.MetadataValue:
    if value is None:
        return dg.MetadataValue.null()
    return dg.MetadataValue.int(value) if isinstance(value, int) else dg.MetadataValue.float(value)


def partition_metadata(row: dict, psi: pl.DataFrame) -> dict[str, object]:
    """One date's figures under stable keys, numbers as numbers, so the UI plots each
    across partitions: the table's row, and `psi_<feature>` for every model feature (`psi`:
    the date's rows of `drift_by_date`)."""
    numbers = {
        k: _number(v)
        for k, v in row.items()
        if v is None or (isinstance(v, int | float) and not isinstance(v, bool))
    }
    return {
        **numbers,
        "drift": bool(row["drift"]),
        "worst_feature": str(row["worst_feature"]),
        "model_version": str(row["model_version"]),
        **{f"psi_{f}": _number(v) for f, v in psi.select("feature", "psi").iter_rows()},
    }


def drift_check(table: pl.DataFrame) -> dg.AssetCheckResult:
    """The run's dates judged at once: passed when none drifted."""
    drifted = table.filter(pl.col("drift"))
    return dg.AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=drifted.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "dates": table.height,
            "drifted_dates": drifted.height,
            "max_score_psi": float(table.get_column("score_psi").max() or 0.0),
            "max_feature_psi": float(table.get_column("max_feature_psi").max() or 0.0),
            "drifted": table_value(
                drifted.select("reference_date", "score_psi", "drifted"), max_rows=20
            ),
        },
    )


def _monitoring_inputs(
    conn: duckdb.DuckDBPyConnection, dates: list[date], settings: ChurnSettings
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Every score so far, the model features of the run's dates, the ABT's reference
    cohorts and the labels of the scores as far as they have matured."""
    history = conn.execute(
        "SELECT reference_date, seller_id, churn_probability, risk_band, model_version "
        f"FROM {SCORES_TABLE}"
    ).pl()
    current = model_frame(
        read_feature_tables(conn, dates),
        horizon_days=settings.churn_horizon_days,
        window_days=settings.feature_window_days,
    )
    newest = (  # the cohorts `reference_cohorts` keeps, read alone
        f"SELECT DISTINCT reference_date FROM {ABT_TABLE} "
        f"ORDER BY reference_date DESC LIMIT {REFERENCE_COHORTS}"
    )
    abt = conn.execute(f"SELECT * FROM {ABT_TABLE} SEMI JOIN ({newest}) USING (reference_date)")
    reference = reference_cohorts(abt.pl())
    first = history.get_column("reference_date").min()
    orders, items = read_label_inputs(conn, first, settings.churn_horizon_days)
    labels = churn_labels(
        orders, items, history.select(KEYS), horizon_days=settings.churn_horizon_days
    )
    return history, current, reference, labels


@dg.asset(
    key=MONITORING_KEY,
    group_name=SCORING_GROUP,
    description="Per scored date: the PSI of every model feature and of the scores against "
    f"the ABT's newest {REFERENCE_COHORTS} cohorts (tenure and lifetime totals made "
    "comparable over time), the share of sellers per band, the ROC AUC and top-decile "
    "precision expected from the probabilities and, once labels mature, realized. A date "
    f"past PSI {PSI_WARN} (higher where few sellers make PSI noisy) raises one drift alert.",
    partitions_def=reference_date_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[
        SCORES_KEY,
        ABT_KEY,
        *FEATURE_KEYS,
        raw_asset_key("orders"),
        raw_asset_key("order_items"),
    ],
    metadata=PARTITION_METADATA,
    check_specs=[
        dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset=MONITORING_KEY,
            description=f"No scored date of the run drifted: every model feature's PSI and "
            f"the scores' PSI against the ABT's newest cohorts at most {PSI_WARN} (or the "
            "noise of small samples).",
        )
    ],
    kinds={"duckdb", "polars"},
    pool=WAREHOUSE_POOL,
)
def model_monitoring(
    context: dg.AssetExecutionContext,
    warehouse: DuckDBResource,
    mlflow: MlflowTracking,
    settings: ChurnSettings,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    dates = partition_dates(context)
    with warehouse.get_connection() as conn:
        history, current, reference, labels = _monitoring_inputs(conn, dates, settings)
    performance = performance_by_date(history, labels)
    scores = history.filter(pl.col("reference_date").is_in(dates))
    feature_psi, drift = drift_per_version(mlflow.ready_uri(), reference, current, scores)
    table = monitoring_table(drift, scores, performance)
    alerted_now = alert_drift(table, context.log, settings)
    by_date = feature_psi.partition_by("reference_date", as_dict=True)
    for row in table.iter_rows(named=True):  # the run's dates: per-partition metadata
        day = row["reference_date"]
        context.add_asset_metadata(
            partition_metadata(row, by_date[(day,)]), partition_key=day.isoformat()
        )
    context.add_asset_metadata(
        {
            "alerted_dates": dg.MetadataValue.json(alerted_now),
            "by_date": table_value(
                performance.sort("reference_date", descending=True), max_rows=40
            ),
            "plot": dg.MetadataValue.md(
                png_markdown({"performance": performance_figure(performance)})
            ),
        },
        partition_key=table.get_column("reference_date").max().isoformat(),
    )
    yield dg.Output(table)
    yield drift_check(table)
