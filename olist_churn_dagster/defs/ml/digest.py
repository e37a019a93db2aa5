"""The risk digest: per scored date, what changed for the account managers."""

from datetime import date

import dagster as dg
import polars as pl
from dagster_duckdb import DuckDBResource

from olist_churn_dagster.defs.features.assets import partition_dates
from olist_churn_dagster.defs.metadata import table_value
from olist_churn_dagster.defs.ml.assets import SCORES_KEY, SCORING_GROUP
from olist_churn_dagster.defs.partitions import PARTITION_METADATA, reference_date_partitions
from olist_churn_dagster.defs.settings import ChurnSettings
from olist_churn_dagster.defs.versions import DIGEST_VERSION
from olist_churn_dagster.defs.warehouse import WAREHOUSE_POOL, table_asset_key
from olist_churn_dagster.lib.alerts import post_to_webhook
from olist_churn_dagster.lib.ml.digest import Digest, read_scores, risk_digest
from olist_churn_dagster.lib.ml.scoring import export_per_date
from olist_churn_dagster.lib.tables import RISK_DIGEST_TABLE

DIGEST_KEY = table_asset_key(RISK_DIGEST_TABLE)
EXPORT_FOLDER = "risk_digest"


def digest_metadata(digest: Digest, day: date) -> dict[str, object]:
    """What the UI shows of the digest of `day` (the run's newest date), as native tables;
    `per_date` has every date of the run."""
    summary = digest.summary.filter(pl.col("reference_date") == day).row(0, named=True)
    previous = summary["previous_date"]
    counts = ("newly_high", "moved_up", "moved_down")
    return {
        "reference_date": day.isoformat(),
        "previous_date": previous.isoformat() if previous else "none: every seller counts as new",
        "sales_at_risk": float(summary["sales_at_risk"]),
        "sales_at_risk_change": float(summary["sales_at_risk_change"]),
        **{name: int(summary[name]) for name in counts},
        "summary": dg.MetadataValue.text(summary["text"]),
        **{name: table_value(frame) for name, frame in digest.lists(day).items()},
        "per_date": table_value(
            digest.summary.drop("text").sort("reference_date", descending=True), max_rows=31
        ),
    }


@dg.asset(
    key=DIGEST_KEY,
    group_name=SCORING_GROUP,
    code_version=DIGEST_VERSION,
    description="What changed since the previous scored date, for the account managers: "
    "sellers newly at high risk, band moves, the top sellers by sales at risk with their "
    "reasons, and the total sales at risk with its change. A CSV per date in "
    "exports/risk_digest/; the newest date's summary goes to the chat webhook when one is set.",
    partitions_def=reference_date_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[SCORES_KEY],
    metadata=PARTITION_METADATA,
    kinds={"duckdb", "polars"},
    pool=WAREHOUSE_POOL,
)
def risk_digest_asset(
    context: dg.AssetExecutionContext, warehouse: DuckDBResource, settings: ChurnSettings
) -> pl.DataFrame:
    dates = partition_dates(context)
    with warehouse.get_connection() as conn:
        scores = read_scores(conn, dates)
    digest = risk_digest(scores, dates)
    exports = export_per_date(digest.sellers, settings.to_settings().exports_dir / EXPORT_FOLDER)
    newest = dates[-1]
    metadata = digest_metadata(digest, newest)
    metadata["exports"] = dg.MetadataValue.json([str(p) for p in exports[-10:]])
    if settings.webhook_url:
        # One post per run, the newest date's: a backfill does not flood the chat.
        text = digest.summary.filter(pl.col("reference_date") == newest).item(0, "text")
        problem = post_to_webhook(settings.webhook_url, text, what="the digest")
        if problem:
            context.log.warning(problem)
        metadata["webhook"] = problem or "posted"
    context.add_output_metadata(metadata)
    return digest.sellers
