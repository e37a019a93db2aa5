"""CSV files for people: the score and digest exports, the model's evaluation tables.

A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` as a formula, and one that
starts with a tab or a carriage return can hide one (CSV injection). Seller ids and the
reasons' texts come from input data, so every CSV written for people goes through
`write_csv_for_people`, which applies OWASP's rule: such a text cell gets a leading single
quote and shows as text. Numbers, dates and booleans are written as they are: a negative
number stays a number.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

# OWASP's "CSV Injection" characters: = + - @, tab (0x09) and carriage return (0x0D).
FORMULA_START = r"^([=+\-@\t\r])"


def neutralise_formulas(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with every text cell that a spreadsheet would take for a formula prefixed
    with `'`; categorical columns become text, other columns are unchanged."""
    text = [
        name
        for name, dtype in frame.schema.items()
        if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)
    ]
    if not text:
        return frame
    return frame.with_columns(pl.col(text).cast(pl.String).str.replace(FORMULA_START, "'$1"))


def write_csv_for_people(frame: pl.DataFrame, path: Path) -> None:
    """`frame` as a formula-safe CSV at `path`, replaced atomically (a reader sees the old
    file or the new one, never half of one)."""
    tmp = path.with_name(f"{path.name}.tmp")
    neutralise_formulas(frame).write_csv(tmp)
    tmp.replace(path)
