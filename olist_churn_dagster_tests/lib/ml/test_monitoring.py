import io
from datetime import date

import numpy as np
import polars as pl
import pytest

from olist_churn_dagster.lib.ml.monitoring import (
    PSI_WARN,
    drifted,
    performance_figure,
    population_stability,
    realized_performance,
)


def feature_frame(n: int, *, shift: float = 0.0, null_share: float = 0.0, seed: int = 0):
    """Features with a continuous, a count, a constant and a null-prone column."""
    rng = np.random.default_rng(seed)
    gone = rng.random(n) < null_share
    return pl.DataFrame(
        {
            "ticket": rng.normal(100.0 + shift, 20.0, n),
            "orders": rng.poisson(5.0, n).astype(np.int64),
            "constant": np.full(n, 3.0),
            "review": pl.Series(rng.normal(4.0, 0.5, n)).set(pl.Series(gone), None),
        }
    )


COLUMNS = ["ticket", "orders", "constant", "review"]


def psi_of(table: pl.DataFrame, feature: str) -> float:
    return table.filter(pl.col("feature") == feature).get_column("psi").item()


# --------------------------------------------------------------------------- drift


def test_identical_distributions_have_near_zero_psi():
    table = population_stability(feature_frame(5000), feature_frame(5000, seed=1), COLUMNS)
    assert table.columns == [
        "feature",
        "psi",
        "reference_rows",
        "current_rows",
        "null_share_reference",
        "null_share_current",
    ]
    assert table.get_column("feature").to_list() == COLUMNS
    assert (table.get_column("psi") < 0.01).all()
    assert table.get_column("reference_rows").to_list() == [5000] * 4
    assert drifted(table).is_empty()


def test_same_frame_gives_exactly_zero():
    frame = feature_frame(1000, null_share=0.3)
    table = population_stability(frame, frame, COLUMNS)
    assert table.get_column("psi").to_list() == pytest.approx([0.0] * 4)


def test_shifted_distribution_drifts_and_is_reported_worst_first():
    reference = feature_frame(4000)
    current = feature_frame(3000, shift=20.0, seed=1).with_columns(pl.col("orders") + 3)
    table = population_stability(reference, current, COLUMNS)
    assert psi_of(table, "ticket") > PSI_WARN
    assert psi_of(table, "orders") > PSI_WARN
    assert psi_of(table, "review") < 0.01
    report = drifted(table)
    assert set(report.get_column("feature")) == {"ticket", "orders"}
    psi = report.get_column("psi").to_list()
    assert psi == sorted(psi, reverse=True)
    assert table.get_column("current_rows").to_list() == [3000] * 4


def test_column_that_becomes_mostly_null_drifts():
    table = population_stability(
        feature_frame(4000), feature_frame(4000, null_share=0.8, seed=1), COLUMNS
    )
    review = table.filter(pl.col("feature") == "review").row(0, named=True)
    assert review["psi"] > PSI_WARN
    assert review["null_share_reference"] == 0.0
    assert review["null_share_current"] == pytest.approx(0.8, abs=0.03)
    assert "review" in drifted(table).get_column("feature").to_list()


def test_nan_counts_as_missing():
    reference = pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    current = pl.DataFrame({"x": [1.0, float("nan"), None, 4.0]})
    row = population_stability(reference, current, ["x"], bins=2).row(0, named=True)
    assert row["null_share_current"] == 0.5
    assert row["psi"] > PSI_WARN


def test_constant_column_gives_zero_and_all_psi_finite():
    reference = pl.DataFrame({"c": [7.0] * 100, "empty": pl.Series([None] * 100, dtype=pl.Int64)})
    current = pl.DataFrame({"c": [7.0] * 50, "empty": pl.Series([None] * 50, dtype=pl.Int64)})
    table = population_stability(reference, current, ["c", "empty"])
    assert table.get_column("psi").to_list() == [0.0, 0.0]
    for value in (5.0, 9.0):  # a constant that moves, either way, lands in a tail bin
        moved = population_stability(reference, current.with_columns(c=pl.lit(value)), ["c"])
        assert np.isfinite(psi_of(moved, "c"))
        assert psi_of(moved, "c") > PSI_WARN


def test_empty_current_gives_null_psi_and_is_not_drifted():
    reference = feature_frame(100)
    table = population_stability(reference, reference.clear(), COLUMNS)
    assert table.get_column("psi").null_count() == 4
    assert table.get_column("current_rows").to_list() == [0] * 4
    assert drifted(table).is_empty()


def test_missing_column_and_bad_bins_are_rejected():
    frame = feature_frame(10)
    with pytest.raises(ValueError, match="nope"):
        population_stability(frame, frame, ["ticket", "nope"])
    with pytest.raises(ValueError, match="bins"):
        population_stability(frame, frame, ["ticket"], bins=1)


def test_drifted_threshold_is_strict_and_configurable():
    table = pl.DataFrame({"feature": ["a", "b", "c"], "psi": [0.2, 0.5, 0.05]})
    assert drifted(table).get_column("feature").to_list() == ["b"]
    assert drifted(table, 0.01).get_column("feature").to_list() == ["b", "a", "c"]


# --------------------------------------------------------------------------- performance

D1, D2, D3, D4 = date(2018, 1, 1), date(2018, 2, 1), date(2018, 3, 1), date(2018, 4, 1)


def hand_made():
    """D1 perfect ranking, D2 reversed, D3 one class only, D4 partly immature."""
    rows = [
        # date, seller, probability, churned, mature
        (D1, "a", 0.9, 1, True),
        (D1, "b", 0.8, 1, True),
        (D1, "c", 0.2, 0, True),
        (D1, "d", 0.1, 0, True),
        (D1, "e", 0.5, None, False),  # not an active seller: no label, ignored
        (D2, "a", 0.1, 1, True),
        (D2, "b", 0.9, 0, True),
        (D2, "c", 0.8, 0, True),
        (D3, "a", 0.3, 0, True),
        (D3, "b", 0.6, 0, True),
        (D4, "a", 0.9, 1, True),
        (D4, "b", 0.1, 0, False),
    ]
    dates, sellers, prob, churned, mature = zip(*rows, strict=True)
    scores = pl.DataFrame(
        {
            "reference_date": dates,
            "seller_id": sellers,
            "churn_probability": prob,
            "model_version": ["3"] * len(rows),
        }
    )
    labels = pl.DataFrame(
        {
            "reference_date": dates,
            "seller_id": sellers,
            "churned": pl.Series(churned, dtype=pl.Int8),
            "label_mature": mature,
        }
    )
    return scores, labels


def test_realized_performance_on_hand_made_example():
    scores, labels = hand_made()
    table = realized_performance(scores, labels)
    assert table.columns == [
        "reference_date",
        "sellers",
        "churn_rate",
        "roc_auc",
        "pr_auc",
        "precision_top_decile",
        "lift_top_decile",
        "brier",
    ]
    assert table.get_column("reference_date").to_list() == [D1, D2]
    perfect, reversed_ = table.rows(named=True)
    assert perfect["sellers"] == 4
    assert perfect["churn_rate"] == 0.5
    assert perfect["roc_auc"] == 1.0
    assert perfect["pr_auc"] == 1.0
    assert perfect["precision_top_decile"] == 1.0
    assert perfect["lift_top_decile"] == 2.0
    assert perfect["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert reversed_["roc_auc"] == 0.0
    assert reversed_["precision_top_decile"] == 0.0


def test_realized_performance_ignores_unscored_labels_and_unlabelled_scores():
    scores, labels = hand_made()
    extra_label = labels.head(1).with_columns(seller_id=pl.lit("zz"), churned=pl.lit(0, pl.Int8))
    table = realized_performance(
        scores.filter(pl.col("seller_id") != "d"), pl.concat([labels, extra_label])
    )
    assert table.filter(pl.col("reference_date") == D1).get_column("sellers").item() == 3


def test_realized_performance_empty_when_nothing_is_mature():
    scores, labels = hand_made()
    table = realized_performance(scores, labels.with_columns(label_mature=pl.lit(False)))
    assert table.is_empty()
    assert table.schema["reference_date"] == pl.Date
    assert table.schema["roc_auc"] == pl.Float64


def test_realized_performance_requires_columns():
    scores, labels = hand_made()
    with pytest.raises(ValueError, match="label_mature"):
        realized_performance(scores, labels.drop("label_mature"))


# --------------------------------------------------------------------------- figure


@pytest.mark.parametrize("empty", [False, True])
def test_performance_figure_builds(empty):
    scores, labels = hand_made()
    table = realized_performance(scores, labels)
    fig = performance_figure(table.clear() if empty else table)
    assert len(fig.axes) == 2
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
