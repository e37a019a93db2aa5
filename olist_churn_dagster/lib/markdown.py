"""Small markdown renderings of frames and figures for asset metadata in the Dagster UI."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def png_markdown(figures: Mapping[str, Figure]) -> str:
    """Figures as inline PNG images under their names, for metadata the UI renders."""
    parts = []
    for name, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        encoded = base64.b64encode(buffer.getvalue()).decode()
        parts.append(f"**{name}**\n\n![{name}](data:image/png;base64,{encoded})")
    return "\n\n".join(parts)
