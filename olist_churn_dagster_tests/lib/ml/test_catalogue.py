import re

import polars as pl

from olist_churn_dagster.lib.features import FEATURE_FAMILIES, feature_schema
from olist_churn_dagster.lib.ml.abt import feature_columns
from olist_churn_dagster.lib.ml.catalogue import (
    DIRECTIONS,
    MISSING_REASONS,
    MODEL_CATALOGUE,
    REASON_TEMPLATES,
    RISK_DIRECTION,
    SPECS,
    catalogue_markdown,
    undocumented,
)
from olist_churn_dagster.lib.ml.rhythm import RHYTHM_FEATURES, model_frame


def _model_features() -> list[str]:
    """What the model reads: the columns of the frame it trains and scores on, built from
    the feature tables' own schemas."""
    empty = {family: pl.DataFrame(schema=feature_schema(family)) for family in FEATURE_FAMILIES}
    return feature_columns(model_frame(empty))


def test_every_feature_the_model_reads_has_a_meaning_a_unit_and_a_direction():
    names = _model_features()
    assert set(RHYTHM_FEATURES) <= set(names)
    assert undocumented(names) == []
    assert sorted(names) == sorted(SPECS)  # and the catalogue holds nothing else
    assert set(RISK_DIRECTION.values()) <= set(DIRECTIONS)


def test_a_feature_without_an_entry_or_a_direction_is_undocumented(monkeypatch):
    assert undocumented(["sales_orders", "sales_orders_7d"]) == ["sales_orders_7d"]
    monkeypatch.delitem(RISK_DIRECTION, "rhythm_recency_z")
    assert undocumented(["rhythm_recency_z", "rhythm_recency_over_gap"]) == ["rhythm_recency_z"]
    monkeypatch.setitem(RISK_DIRECTION, "sales_orders", "sideways")
    assert undocumented(["sales_orders"]) == ["sales_orders"]


def test_reason_sentences_name_catalogued_features_only():
    for feature, template in REASON_TEMPLATES.items():
        assert feature in SPECS, feature
        named = set(re.findall(r"\{(\w+)(?::percent)?\}", template))
        assert "value" in named, feature
        assert named - {"value"} <= set(SPECS), (feature, named - set(SPECS))
    assert set(MISSING_REASONS) <= set(SPECS)


def test_the_markdown_has_a_table_per_family_with_each_direction():
    text = catalogue_markdown()
    families = list(dict.fromkeys(spec.family for spec in MODEL_CATALOGUE))
    assert families[-1] == "rhythm"
    assert text.count("### ") == len(families)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(MODEL_CATALOGUE)
    recency = next(r for r in rows if r.startswith("| `sales_recency_days` |"))
    assert recency.endswith("| days | a higher value |")
    gap = next(r for r in rows if r.startswith("| `rhythm_orders_30d_vs_window` |"))
    assert gap.endswith("| ratio | a lower value |")
