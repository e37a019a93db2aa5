import polars as pl
from matplotlib.figure import Figure

from olist_churn_dagster.lib.markdown import frame_to_markdown, png_markdown


def test_markdown_table_escapes_and_truncates():
    frame = pl.DataFrame({"a": ["x|y", "line\nbreak", None], "b": [1.23456, 2.0, None]})
    text = frame_to_markdown(frame, max_rows=2)
    lines = text.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[2] == "| x\\|y | 1.235 |"
    assert lines[3] == "| line break | 2 |"
    assert "_2 of 3 rows_" in text


def test_png_markdown_inlines_each_figure_under_its_name():
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    text = png_markdown({"first": figure, "second": figure})
    assert text.startswith("**first**\n\n![first](data:image/png;base64,iVBOR")
    assert "**second**" in text and text.count("data:image/png;base64,") == 2
