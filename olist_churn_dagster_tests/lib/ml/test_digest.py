from datetime import date

import duckdb
import polars as pl
import pytest

from olist_churn_dagster.lib.ml.digest import (
    COLUMNS,
    previous_scored_dates,
    read_scores,
    risk_digest,
)
from olist_churn_dagster.lib.warehouse import write_frame

D1, D2, D3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 5)
BAND = {"low": 0.1, "medium": 0.3, "high": 0.6}
REASONS = "no sale for 31 days; 12.5% of its orders canceled"


def _scores(day: date, rows: list[tuple[str, str, float]]) -> pl.DataFrame:
    """Score rows of `day`: (seller, band, sales at risk); the same reasons each."""
    return pl.DataFrame(
        {
            "reference_date": [day] * len(rows),
            "seller_id": [r[0] for r in rows],
            "churn_probability": [BAND[r[1]] for r in rows],
            "risk_band": [r[1] for r in rows],
            "sales_at_risk": [r[2] for r in rows],
            "reasons": [REASONS] * len(rows),
        },
    )


@pytest.fixture()
def scores() -> pl.DataFrame:
    """D1: a medium, b high, c low, e low. D2: a high (up, newly high), b medium (down),
    c low, d new and high, e gone. D3 (D2 + 3 days): the same as D2 but c is medium."""
    return pl.concat(
        [
            _scores(
                D1,
                [("a", "medium", 100.0), ("b", "high", 50.0), ("c", "low", 5.0), ("e", "low", 1.0)],
            ),
            _scores(
                D2,
                [
                    ("a", "high", 300.0),
                    ("b", "medium", 20.0),
                    ("c", "low", 4.0),
                    ("d", "high", 7.0),
                ],
            ),
            _scores(
                D3,
                [
                    ("a", "high", 300.0),
                    ("b", "medium", 20.0),
                    ("c", "medium", 9.0),
                    ("d", "high", 7.0),
                ],
            ),
        ]
    )


def _row(frame: pl.DataFrame, day: date, seller: str) -> dict:
    return frame.filter((pl.col("reference_date") == day) & (pl.col("seller_id") == seller)).row(
        0, named=True
    )


def test_each_date_is_compared_with_the_newest_scored_date_before_it():
    pairs = previous_scored_dates([D1, D2, D3], [D3, D1, D2])
    assert pairs.rows() == [(D1, None), (D2, D1), (D3, D2)]  # D3's is D2, not D3 - 1
    assert previous_scored_dates([], [D2]).rows() == [(D2, None)]


def test_a_seller_moving_from_medium_to_high_is_newly_high_and_an_up_move(scores):
    digest = risk_digest(scores, [D2])
    a = _row(digest.sellers, D2, "a")
    assert (a["risk_band_before"], a["risk_band"], a["move"], a["newly_high"]) == (
        "medium",
        "high",
        "up",
        True,
    )
    assert a["previous_date"] == D1 and a["probability_before"] == BAND["medium"]
    b = _row(digest.sellers, D2, "b")
    assert (b["move"], b["newly_high"]) == ("down", False)
    d = _row(digest.sellers, D2, "d")  # not scored at D1: newly high, but no band move
    assert (d["risk_band_before"], d["move"], d["newly_high"]) == (None, None, True)
    assert set(digest.sellers.get_column("seller_id")) == {"a", "b", "c", "d"}  # c: top 10
    assert digest.moves.rows() == [
        (D2, "up", "medium", "high", 1),
        (D2, "down", "high", "medium", 1),
    ]
    assert tuple(digest.sellers.columns) == COLUMNS


def test_totals_and_their_change_equal_the_difference_of_the_dates(scores):
    summary = risk_digest(scores, [D2]).summary.row(0, named=True)
    assert summary["sales_at_risk"] == pytest.approx(331.0)
    assert summary["sales_at_risk_before"] == pytest.approx(156.0)
    assert summary["sales_at_risk_change"] == pytest.approx(331.0 - 156.0)
    assert (summary["newly_high"], summary["moved_up"], summary["moved_down"]) == (2, 1, 1)
    assert summary["sellers"] == 4


def test_top_sellers_by_sales_at_risk_carry_their_reasons_in_words(scores):
    sellers = risk_digest(scores, [D2], top_n=2).sellers
    top = sellers.filter(pl.col("top_at_risk").is_not_null()).sort("top_at_risk")
    assert top.get_column("seller_id").to_list() == ["a", "b"]
    assert top.get_column("reasons").to_list() == [REASONS, REASONS]
    # c (low, unmoved) is neither top 2 nor changed: not in the digest.
    assert "c" not in sellers.get_column("seller_id").to_list()


def test_with_no_earlier_scored_date_everything_is_new(scores):
    digest = risk_digest(scores, [D1])
    summary = digest.summary.row(0, named=True)
    assert summary["previous_date"] is None
    assert summary["newly_high"] == 1  # b, the one high seller
    assert summary["sales_at_risk_change"] == pytest.approx(summary["sales_at_risk"])
    assert digest.moves.height == 0
    assert "no earlier scored date: every seller counts as new" in summary["text"]


def test_a_range_compares_each_date_with_its_own_previous_one(scores):
    """D1..D3 at once equals each date alone against the same table."""
    together = risk_digest(scores, [D1, D2, D3])
    for day in (D1, D2, D3):
        alone = risk_digest(scores, [day])
        assert together.sellers.filter(pl.col("reference_date") == day).equals(alone.sellers)
        assert together.summary.filter(pl.col("reference_date") == day).equals(alone.summary)
    d3 = together.summary.filter(pl.col("reference_date") == D3).row(0, named=True)
    assert d3["previous_date"] == D2
    assert (d3["newly_high"], d3["moved_up"], d3["moved_down"]) == (0, 1, 0)  # c low->medium
    assert d3["sales_at_risk_change"] == pytest.approx(5.0)


def test_the_summary_text_names_the_change_moves_and_top_sellers(scores):
    text = risk_digest(scores, [D2]).summary.item(0, "text")
    lines = text.splitlines()
    assert lines[0] == "Churn risk digest for 2026-03-02 (compared with 2026-03-01)"
    assert lines[1] == "Sales at risk: R$ 331.00, up R$ 175.00"
    assert lines[2] == (
        "Sellers newly at high risk: 2. Band moves: 1 up, 1 down (medium->high 1, high->medium 1)"
    )
    assert lines[4] == f"1. a (high, R$ 300.00): {REASONS}"
    assert len(lines) == 3 + 1 + 3  # three lines, a heading, the top three


def test_read_scores_reads_the_dates_and_their_previous_ones(scores, tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        write_frame(conn, "ml", "churn_scores", scores.with_columns(extra=pl.lit(1)))
        read = read_scores(conn, [D3])
    assert sorted(read.get_column("reference_date").unique()) == [D2, D3]
    assert "extra" not in read.columns
    assert risk_digest(read, [D3]).summary.equals(risk_digest(scores, [D3]).summary)
