import io
from datetime import date

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from olist_churn_dagster.lib.ml.model import evaluate_scores
from olist_churn_dagster.lib.ml.monitoring import (
    GROWING,
    PSI_WARN,
    TENURE,
    band_shares,
    comparable_over_time,
    drift_by_date,
    drift_report,
    drift_summary,
    expected_performance,
    monitoring_table,
    performance_by_date,
    performance_figure,
    population_stability,
    psi_threshold,
    realized_performance,
    reference_cohorts,
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


def test_same_frame_gives_exactly_zero():
    frame = feature_frame(1000, null_share=0.3)
    table = population_stability(frame, frame, COLUMNS)
    assert table.get_column("psi").to_list() == pytest.approx([0.0] * 4)


def test_shifted_distribution_drifts():
    reference = feature_frame(4000)
    current = feature_frame(3000, shift=20.0, seed=1).with_columns(pl.col("orders") + 3)
    table = population_stability(reference, current, COLUMNS)
    assert psi_of(table, "ticket") > PSI_WARN
    assert psi_of(table, "orders") > PSI_WARN
    assert psi_of(table, "review") < 0.01
    assert table.get_column("current_rows").to_list() == [3000] * 4


def test_column_that_becomes_mostly_null_drifts():
    table = population_stability(
        feature_frame(4000), feature_frame(4000, null_share=0.8, seed=1), COLUMNS
    )
    review = table.filter(pl.col("feature") == "review").row(0, named=True)
    assert review["psi"] > PSI_WARN
    assert review["null_share_reference"] == 0.0
    assert review["null_share_current"] == pytest.approx(0.8, abs=0.03)


def test_nan_counts_as_missing():
    reference = pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    current = pl.DataFrame({"x": [1.0, float("nan"), None, 4.0]})
    row = population_stability(reference, current, ["x"], bins=2).row(0, named=True)
    assert row["null_share_current"] == 0.5
    assert row["psi"] > PSI_WARN


def test_constant_column_gives_near_zero_and_all_psi_finite():
    reference = pl.DataFrame({"c": [7.0] * 100, "empty": pl.Series([None] * 100, dtype=pl.Int64)})
    current = pl.DataFrame({"c": [7.0] * 50, "empty": pl.Series([None] * 50, dtype=pl.Int64)})
    table = population_stability(reference, current, ["c", "empty"])
    # Not exactly 0: half a row in every bin weighs more in 50 rows than in 100.
    assert table.get_column("psi").to_list() == pytest.approx([0.0, 0.0], abs=0.02)
    for value in (5.0, 9.0):  # a constant that moves, either way, lands in a tail bin
        moved = population_stability(reference, current.with_columns(c=pl.lit(value)), ["c"])
        assert np.isfinite(psi_of(moved, "c"))
        assert psi_of(moved, "c") > PSI_WARN


def test_empty_current_gives_null_psi_and_is_not_drifted():
    reference = feature_frame(100)
    table = population_stability(reference, reference.clear(), COLUMNS)
    assert table.get_column("psi").null_count() == 4
    assert table.get_column("current_rows").to_list() == [0] * 4


def test_missing_column_and_bad_bins_are_rejected():
    frame = feature_frame(10)
    with pytest.raises(ValueError, match="nope"):
        population_stability(frame, frame, ["ticket", "nope"])
    with pytest.raises(ValueError, match="bins"):
        population_stability(frame, frame, ["ticket"], bins=1)


def test_the_threshold_rises_above_psi_warn_only_where_samples_are_small():
    from scipy.stats import chi2

    rows = pl.DataFrame({"reference": [7000, 1400, 600], "current": [1300, 300, 90]})
    got = rows.select(psi_threshold(pl.col("reference"), pl.col("current"))).to_series()
    assert got[:2].to_list() == [PSI_WARN, PSI_WARN]  # make run's scale, and 0.3 of it
    assert got[2] == pytest.approx(chi2.ppf(1 - 1e-4, 12) * (1 / 600 + 1 / 90))
    assert got[2] > 0.4
    # Identical distributions of 90 rows against 600: no feature of 130 gets past it.
    rng = np.random.default_rng(0)
    reference = pl.DataFrame({f"x{i}": rng.gamma(2.0, 1.0, 600) for i in range(130)})
    current = pl.DataFrame({f"x{i}": rng.gamma(2.0, 1.0, 90) for i in range(130)})
    psi = population_stability(reference, current, reference.columns).get_column("psi")
    assert psi.max() > PSI_WARN / 2 and psi.max() < got[2]


def dated(frames: dict[date, pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(f.with_columns(reference_date=pl.lit(d)) for d, f in frames.items())


def test_drift_by_date_equals_each_date_on_its_own():
    reference = feature_frame(3000, null_share=0.1)
    parts = {
        date(2020, 1, 1): feature_frame(800, seed=1, null_share=0.1),
        date(2020, 1, 2): feature_frame(500, shift=15.0, seed=2, null_share=0.5),
        date(2020, 1, 3): feature_frame(0, seed=3),  # a date with no rows is no date
        date(2019, 12, 31): feature_frame(700, seed=4).with_columns(pl.col("orders") + 4),
    }
    table = drift_by_date(reference, dated(parts), COLUMNS)
    assert table.columns == [
        "reference_date",
        *population_stability(reference, reference, []).columns,
    ]
    assert table.get_column("reference_date").unique().sort().to_list() == sorted(
        d for d, f in parts.items() if f.height
    )
    for day, frame in parts.items():
        if frame.height == 0:
            continue
        alone = population_stability(reference, frame, COLUMNS)
        mine = table.filter(pl.col("reference_date") == day).drop("reference_date")
        assert_frame_equal(mine, alone, check_exact=False, abs_tol=1e-12)


def aging_marketplace(day: date, sellers: int, *, age: int, seed: int) -> pl.DataFrame:
    """Sellers of a steady marketplace `age` days old at `day`: entries spread evenly over
    its life, a sale rate of their own, lifetime totals that grow with tenure."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, age, sellers)
    rate = rng.gamma(2.0, 0.2, sellers)
    orders = rng.poisson(rate * tenure)
    return pl.DataFrame(
        {
            "reference_date": [day] * sellers,
            TENURE: tenure,
            "sales_lifetime_orders": orders,
            "sales_lifetime_revenue": orders * rng.normal(100.0, 10.0, sellers),
            "sales_orders": rng.poisson(rate * 180),
        }
    )


def test_features_that_grow_by_design_do_not_drift_on_a_steady_marketplace():
    assert set(GROWING) == {TENURE, "sales_lifetime_orders", "sales_lifetime_revenue"}
    reference = pl.concat(
        aging_marketplace(date(2020, m, 1), 1500, age=400 + 30 * m, seed=m) for m in (1, 2, 3)
    )
    current = aging_marketplace(date(2020, 9, 1), 1500, age=700, seed=9)
    columns = [*GROWING, "sales_orders"]
    raw = population_stability(reference, current, columns)
    assert psi_of(raw, TENURE) > PSI_WARN  # older sellers than any in training
    assert psi_of(raw, "sales_lifetime_orders") > 0.1
    judged = population_stability(
        comparable_over_time(reference), comparable_over_time(current), columns
    )
    assert judged.get_column("psi").max() < 0.05, judged
    assert psi_of(judged, "sales_orders") == psi_of(raw, "sales_orders")  # left as it is
    # The same sellers selling at a third of their pace do drift.
    slower = current.with_columns(pl.col(c) // 3 for c in ("sales_lifetime_orders",))
    slow = population_stability(
        comparable_over_time(reference), comparable_over_time(slower), columns
    )
    assert psi_of(slow, "sales_lifetime_orders") > PSI_WARN


def test_comparable_over_time_scales_by_date_and_needs_the_tenure():
    frame = pl.DataFrame(
        {
            "reference_date": [date(2020, 1, 1)] * 2 + [date(2020, 2, 1)] * 2,
            TENURE: [10, 40, 20, 100],
            "sales_lifetime_orders": [11, 82, 42, 101],
            "other": [1, 2, 3, 4],
        }
    )
    out = comparable_over_time(frame)
    assert out.get_column(TENURE).to_list() == [0.25, 1.0, 0.2, 1.0]
    assert out.get_column("sales_lifetime_orders").to_list() == [1.0, 2.0, 2.0, 1.0]
    assert out.get_column("other").to_list() == [1, 2, 3, 4]
    assert comparable_over_time(frame.select("reference_date", "other")).equals(
        frame.select("reference_date", "other")
    )
    with pytest.raises(ValueError, match=TENURE):
        comparable_over_time(frame.drop(TENURE))


def test_reference_cohorts_are_the_newest_ones():
    abt = pl.DataFrame({"reference_date": [date(2020, m, 1) for m in (3, 1, 2, 4, 4)]})
    kept = reference_cohorts(abt, 2).get_column("reference_date").to_list()
    assert kept == [date(2020, 3, 1), date(2020, 4, 1), date(2020, 4, 1)]


def psi_rows(rows: list[tuple[date, str, float | None]], n: int = 10_000) -> pl.DataFrame:
    """`drift_by_date` rows of samples of `n` rows each (threshold: PSI_WARN)."""
    schema = {"reference_date": pl.Date, "feature": pl.String, "psi": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(
        reference_rows=pl.lit(n), current_rows=pl.lit(n)
    )


def test_drift_summary_flags_a_date_by_its_scores_or_any_feature():
    a, b, c = date(2020, 1, 1), date(2020, 1, 2), date(2020, 1, 3)
    features = psi_rows(
        [
            (a, "x", 0.05),
            (a, "y", 0.01),
            (b, "x", 0.4),
            (b, "y", 0.3),
            (c, "x", None),
            (c, "y", 0.1),
        ]
    )
    scores = psi_rows([(a, "p", PSI_WARN + 0.01), (b, "p", 0.02), (c, "p", PSI_WARN)])
    table = drift_summary(features, scores)
    assert table.get_column("reference_date").to_list() == [a, b, c]
    assert table.get_column("drift").to_list() == [True, True, False]
    assert table.get_column("drifted_features").to_list() == [0, 2, 0]
    assert table.get_column("worst_feature").to_list() == ["x", "x", "y"]
    assert table.get_column("max_feature_psi").to_list() == [0.05, 0.4, 0.1]
    assert table.row(1, named=True)["drifted"] == "x (0.4), y (0.3)"
    assert table.get_column("psi_threshold").to_list() == [PSI_WARN] * 3
    small = drift_summary(psi_rows([(b, "x", 0.4)], n=60), psi_rows([(b, "p", 0.3)], n=60))
    assert small.row(0, named=True)["drift"] is False  # within 60 rows' noise
    assert small.row(0, named=True)["psi_threshold"] > 0.4


def test_drift_report_judges_features_over_time_and_the_scores():
    rng = np.random.default_rng(3)
    reference = aging_marketplace(date(2020, 1, 1), 2000, age=400, seed=1)
    current = aging_marketplace(date(2020, 3, 1), 1000, age=460, seed=2)
    reference_scores = rng.beta(1, 4, reference.height)
    scores = current.select("reference_date").with_columns(
        churn_probability=pl.Series(rng.beta(1, 4, current.height))
    )
    psi, summary = drift_report(reference, reference_scores, current, scores, [*GROWING])
    assert set(psi.get_column("feature")) == set(GROWING)
    assert summary.row(0, named=True)["drift"] is False
    riskier = scores.with_columns(pl.col("churn_probability").sqrt())
    _, summary = drift_report(reference, reference_scores, current, riskier, [*GROWING])
    assert summary.row(0, named=True)["drift"] is True
    assert summary.row(0, named=True)["score_psi"] > PSI_WARN
    assert summary.row(0, named=True)["drifted_features"] == 0


def test_band_shares_per_date():
    scores = pl.DataFrame(
        {
            "reference_date": [date(2020, 1, 1)] * 4 + [date(2020, 1, 2)],
            "risk_band": ["high", "low", "low", "medium", "low"],
        }
    )
    table = band_shares(scores)
    assert table.columns == ["reference_date", "share_high", "share_medium", "share_low"]
    assert table.row(0) == (date(2020, 1, 1), 0.25, 0.25, 0.5)
    assert table.row(1) == (date(2020, 1, 2), 0.0, 0.0, 1.0)


# --------------------------------------------------------------------------- estimated


def pairwise_expected_auc(p: np.ndarray) -> float:
    """The definition, pair by pair: sum over i != j of p_i (1 - p_j) [p_i > p_j] (ties
    half) over sum over i != j of p_i (1 - p_j)."""
    weight = np.outer(p, 1 - p)
    np.fill_diagonal(weight, 0.0)
    order = (p[:, None] > p[None, :]) + 0.5 * (p[:, None] == p[None, :])
    return float((weight * order).sum() / weight.sum())


def test_expected_performance_is_the_expectation_of_the_realized_figures():
    rng = np.random.default_rng(11)
    p = np.round(rng.beta(1.0, 3.0, 400), 2)  # rounded: many ties
    day = date(2020, 1, 1)
    table = expected_performance(
        pl.DataFrame({"reference_date": [day] * p.size, "churn_probability": p})
    )
    row = table.row(0, named=True)
    assert row["sellers"] == 400
    assert row["expected_churn_rate"] == pytest.approx(p.mean())
    assert row["expected_roc_auc"] == pytest.approx(pairwise_expected_auc(p), abs=1e-12)
    # Labels drawn with the probabilities: the realized figures average to the expected.
    draws = [evaluate_scores((rng.random(p.size) < p).astype(float), p) for _ in range(600)]
    auc = np.mean([d["roc_auc"] for d in draws])
    precision = np.mean([d["precision_top_decile"] for d in draws])
    assert row["expected_roc_auc"] == pytest.approx(auc, abs=0.004)
    assert row["expected_precision_top_decile"] == pytest.approx(precision, abs=0.01)


def test_expected_performance_per_date_and_edge_cases():
    a, b, c = date(2020, 1, 1), date(2020, 1, 2), date(2020, 1, 3)
    scores = pl.DataFrame(
        {
            "reference_date": [a, a, a, a, b, b, c],
            "churn_probability": [0.9, 0.9, 0.1, 0.1, 0.3, 0.3, 0.5],
        }
    )
    table = expected_performance(scores)
    assert table.get_column("reference_date").to_list() == [a, b, c]
    first, tied, single = table.rows(named=True)
    assert first["expected_roc_auc"] == pytest.approx(
        pairwise_expected_auc(np.array([0.9, 0.9, 0.1, 0.1]))
    )
    assert first["expected_precision_top_decile"] == pytest.approx(0.9)
    assert tied["expected_roc_auc"] == pytest.approx(0.5)  # one score: every pair a tie
    assert single["expected_roc_auc"] is None  # one seller: no pair to rank
    assert single["expected_precision_top_decile"] == pytest.approx(0.5)


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


def test_performance_by_date_puts_the_realized_beside_the_expected():
    scores, labels = hand_made()
    table = performance_by_date(scores, labels)
    assert table.get_column("reference_date").to_list() == [D1, D2, D3, D4]
    realized = realized_performance(scores, labels)
    for row in table.rows(named=True):
        mature = realized.filter(pl.col("reference_date") == row["reference_date"])
        if mature.is_empty():  # one class only, or immature labels: nothing realized yet
            assert row["realized_roc_auc"] is None and row["realized_churn_rate"] is None
        else:
            assert row["realized_roc_auc"] == mature.item(0, "roc_auc")
            assert row["realized_precision_top_decile"] == mature.item(0, "precision_top_decile")
    assert table.row(0, named=True)["expected_churn_rate"] == pytest.approx(0.5)


def test_monitoring_table_joins_drift_bands_and_performance():
    scores, labels = hand_made()
    scores = scores.with_columns(
        risk_band=pl.when(pl.col("churn_probability") >= 0.5)
        .then(pl.lit("high"))
        .otherwise(pl.lit("low"))
    )
    features = psi_rows([(D1, "x", 0.3), (D2, "x", 0.01)])
    drift = drift_summary(features, psi_rows([(D1, "p", 0.0), (D2, "p", 0.0)]))
    table = monitoring_table(drift, scores, performance_by_date(scores, labels))
    assert table.get_column("reference_date").to_list() == [D1, D2]
    first = table.row(0, named=True)
    assert first["model_version"] == "3" and first["drift"] is True
    assert first["share_high"] == pytest.approx(0.6) and first["share_medium"] == 0.0
    assert first["realized_roc_auc"] == 1.0
    assert first["sellers"] == 5


@pytest.mark.parametrize("empty", [False, True])
def test_performance_figure_builds(empty):
    scores, labels = hand_made()
    table = performance_by_date(scores, labels)
    fig = performance_figure(table.clear() if empty else table)
    assert len(fig.axes) == 2
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
