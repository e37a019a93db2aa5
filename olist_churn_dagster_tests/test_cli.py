from pathlib import Path

import polars as pl
import pytest

from olist_churn_dagster.cli import FEATURES_DOC, main, replace_section
from olist_churn_dagster.lib.ml.catalogue import catalogue_markdown
from olist_churn_dagster_tests.conftest import REPO_ROOT


def test_feature_catalogue_doc_matches_the_code():
    doc = (REPO_ROOT / FEATURES_DOC).read_text()
    assert replace_section(doc, "catalogue", catalogue_markdown()) == doc, (
        f"the feature catalogue is stale: run `olist-churn catalogue --write {FEATURES_DOC}`"
    )


def test_catalogue_write_rewrites_only_its_section(tmp_path: Path, capsys):
    doc = tmp_path / "features.md"
    doc.write_text("# Title\n\n<!-- catalogue:start -->\nstale\n<!-- catalogue:end -->\n\nafter\n")
    assert main(["catalogue", "--write", str(doc)]) == 0
    text = doc.read_text()
    assert "stale" not in text
    assert text.startswith("# Title\n\n<!-- catalogue:start -->\n")
    assert text.endswith("<!-- catalogue:end -->\n\nafter\n")
    assert "`sales_recency_days`" in text


def test_replace_section_needs_both_markers():
    with pytest.raises(ValueError, match="section"):
        replace_section("no markers", "catalogue", "x")


def test_generate_and_replay_commands(tmp_path: Path, capsys):
    raw = tmp_path / "raw"
    assert (
        main(
            [
                "generate",
                str(raw),
                "--scale",
                "0.02",
                "--start",
                "2025-01-01",
                "--end",
                "2025-12-31",
                "--no-real",
            ]
        )
        == 0
    )
    assert (raw / "olist_orders_dataset.csv").exists()
    out = tmp_path / "snapshots"
    assert (
        main(
            [
                "replay",
                str(raw),
                "--start",
                "2025-12-01",
                "--end",
                "2025-12-07",
                "--every",
                "3d",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["2025-12-01", "2025-12-04", "2025-12-07"]
    orders = pl.read_csv(out / "2025-12-04" / "olist_orders_dataset.csv", infer_schema=False)
    assert orders.get_column("order_purchase_timestamp").max() < "2025-12-04"


def test_bad_arguments_give_a_clear_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        main(["replay", str(tmp_path), "--start", "2025-13-01", "--end", "2025-12-07"])
    assert "not a date" in capsys.readouterr().err
    assert (
        main(["replay", str(tmp_path / "missing"), "--start", "2025-12-01", "--end", "2025-12-07"])
        == 2
    )
    assert "olist-churn replay:" in capsys.readouterr().err
