"""The Dagster UI of the running server, rendered by a real headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver

from olist_churn_dagster_tests.e2e.browser import chromium, open_and_wait
from olist_churn_dagster_tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

FEATURES = [f"seller_{f}" for f in ("sales", "reviews", "customers", "delivery", "payments")]
FEATURES.append("seller_products")
RAW_TABLES = ("orders", "order_items", "order_payments", "order_reviews", "customers")
RAW_TABLES += ("products", "sellers", "category_translation")


@pytest.fixture(scope="module")
def browser(dagster_server: Server) -> Iterator[webdriver.Chrome]:
    with chromium(dagster_server.url) as driver:
        yield driver


def test_asset_catalog_and_lineage_render(browser: webdriver.Chrome, dagster_server: Server):
    names = [f"features / {name}" for name in FEATURES]
    names += ["ml / abt", "ml / churn_model", "ml / churn_scores", "ml / model_monitoring"]
    names += [f"raw / {name}" for name in RAW_TABLES]
    # The partition counts load after the names: wait for them too, not just the names.
    partitions = f"{len(_reference_dates(dagster_server))} partitions"
    open_and_wait(browser, f"{dagster_server.url}/assets", [*names, partitions], "assets-catalog")

    groups = ["raw", "feature_store", "model", "scoring"]
    text = open_and_wait(
        browser,
        f"{dagster_server.url}/asset-groups",
        ["Global asset lineage", *groups],
        "asset-lineage",
    )
    assert "Join the Dagster community" not in text

    location = "olist_churn_dagster"
    open_and_wait(
        browser,
        f"{dagster_server.url}/locations/{location}/asset-groups/feature_store",
        ["feature_store", "churn_scores", "abt", "Partitions"],
        "feature-store-group",
    )


def _reference_dates(server: Server) -> list[str]:
    answer = server.gql(
        """{ assetNodeOrError(assetKey: {path: ["features", "seller_sales"]}) {
               ... on AssetNode { partitionKeys } } }"""
    )
    return answer["assetNodeOrError"]["partitionKeys"]


def _partition_stats(server: Server, path: list[str]) -> dict[str, int]:
    answer = server.gql(
        """query Stats($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) {
             ... on AssetNode { partitionStats {
               numMaterialized numPartitions numFailed numMaterializing } } } }""",
        {"path": path},
    )
    return answer["assetNodeOrError"]["partitionStats"]


@pytest.mark.parametrize(
    ("path", "shot"),
    [
        (["features", "seller_sales"], "seller-sales-partitions"),
        (["ml", "churn_scores"], "churn-scores-partitions"),
    ],
)
def test_partition_status_renders(
    browser: webdriver.Chrome, dagster_server: Server, path: list[str], shot: str
) -> None:
    stats = _partition_stats(dagster_server, path)
    assert stats["numPartitions"] == len(_reference_dates(dagster_server))
    assert stats["numMaterialized"] > 0, f"{path}: prepare should have materialized partitions"
    assert stats["numFailed"] == 0
    # Dynamic partitions are listed in the order they were registered: oldest date first.
    oldest = _reference_dates(dagster_server)[0]
    expected = [
        path[-1],
        f"{stats['numPartitions']} Partitions Selected",
        f"Materialized ({stats['numMaterialized']})",
        "Failed (0)",
        oldest,
    ]
    url = f"{dagster_server.url}/assets/{'/'.join(path)}?view=partitions"
    open_and_wait(browser, url, expected, shot)
