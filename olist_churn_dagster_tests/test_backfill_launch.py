"""The partition backfill that `bench/stack_backfill.py` and the end-to-end tests launch
through the webserver, checked against Dagster's own GraphQL schema without a server: a
mutation or parameters the webserver would refuse fail here, not an hour into a bench."""

from __future__ import annotations

from typing import Any

import pytest
from dagster_graphql.schema import create_schema
from graphql import GraphQLSchema, OperationDefinitionNode, parse, validate
from graphql.execution.values import get_variable_values

from olist_churn_dagster_tests.e2e.server import LAUNCH_BACKFILL, asset_backfill_params

ASSETS = [["features", "seller_sales"], ["features", "seller_reviews"]]
KEYS = ["2024-01-01", "2024-01-02", "2024-01-03"]


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    return create_schema().graphql_schema


def _coerce(schema: GraphQLSchema, params: dict[str, Any]) -> dict[str, Any]:
    """The launch mutation's variables as the webserver coerces them (errors raise)."""
    document = parse(LAUNCH_BACKFILL)
    assert validate(schema, document) == []
    (operation,) = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    coerced = get_variable_values(schema, operation.variable_definitions, {"params": params})
    assert not isinstance(coerced, list), [error.message for error in coerced]
    return coerced["params"]


def test_the_backfill_is_the_uis_materialize_of_every_partition(schema: GraphQLSchema) -> None:
    params = _coerce(schema, asset_backfill_params(ASSETS, KEYS))
    assert [key["path"] for key in params["assetSelection"]] == ASSETS
    assert params["partitionNames"] == KEYS
    # As the UI sends it for assets: no job selector, not a re-execution, no tags or title.
    assert "selector" not in params and "title" not in params
    assert params["fromFailure"] is False and params["tags"] == []


def test_a_title_goes_with_the_backfill_when_given(schema: GraphQLSchema) -> None:
    params = _coerce(schema, asset_backfill_params(ASSETS, KEYS[:1], title="features 0"))
    assert params["title"] == "features 0"
    assert params["partitionNames"] == KEYS[:1]


def test_parameters_the_schema_refuses_are_caught(schema: GraphQLSchema) -> None:
    params = asset_backfill_params(ASSETS, KEYS)
    params["assetSelection"] = [{"key": path} for path in ASSETS]  # AssetKeyInput has `path`
    with pytest.raises(AssertionError):
        _coerce(schema, params)
