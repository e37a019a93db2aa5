"""Small markdown renderings of frames for asset metadata in the Dagster UI."""

from __future__ import annotations

import polars as pl


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("|", "\\|").replace("\n", " ").replace("\r", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def frame_to_markdown(frame: pl.DataFrame, *, max_rows: int = 10) -> str:
    """A markdown table of the first rows (values shortened so the table stays readable)."""
    head = frame.head(max_rows)
    lines = [
        "| " + " | ".join(head.columns) + " |",
        "| " + " | ".join("---" for _ in head.columns) + " |",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in head.iter_rows()]
    if frame.height > max_rows:
        lines.append(f"\n_{max_rows} of {frame.height:,} rows_")
    return "\n".join(lines)
