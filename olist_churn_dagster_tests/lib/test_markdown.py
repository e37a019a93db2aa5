import polars as pl

from olist_churn_dagster.lib.markdown import frame_to_markdown


def test_markdown_table_escapes_and_truncates():
    frame = pl.DataFrame({"a": ["x|y", "line\nbreak", None], "b": [1.23456, 2.0, None]})
    text = frame_to_markdown(frame, max_rows=2)
    lines = text.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[2] == "| x\\|y | 1.235 |"
    assert lines[3] == "| line break | 2 |"
    assert "_2 of 3 rows_" in text
