"""Result tables: CSV + Markdown files and Rich tables for the terminal."""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd


def format_cell(value: Any) -> str:
    """A cell as text: ints as ints, floats to 4 significant digits, None/NaN as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        if math.isnan(f):
            return "-"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        if f.is_integer() and abs(f) < 1e15:
            return str(int(f))
        if 1e4 <= abs(f) < 1e12:
            return f"{f:.0f}"
        return f"{f:.4g}"
    import pandas as pd

    try:
        if pd.isna(value):
            return "-"
    except (TypeError, ValueError):
        pass
    return str(value)


def split_missing(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Cells holding a 'missing: <reason>' note become 'missing (below)'; returns the frame and each reason once."""
    notes = sorted({v for v in df.to_numpy().ravel() if isinstance(v, str) and v.startswith("missing:")})
    short = df.map(lambda v: "missing (below)" if isinstance(v, str) and v.startswith("missing:") else v)
    return short, notes


def md_escape(text: Any) -> str:
    """A Markdown table cell: `|` escaped, line breaks and tabs as spaces, so a cell never shifts the columns."""
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").split())


def markdown(df: pd.DataFrame) -> str:
    """The frame as a GitHub Markdown table, cells formatted as on the terminal (one row per line, `|` escaped)."""
    cells = df.map(lambda v: md_escape(format_cell(v))) if len(df) else df.astype(str)
    cells.columns = [md_escape(c) for c in cells.columns]
    return cells.to_markdown(index=False, disable_numparse=True)


PATH_COLUMNS = ("run", "plan", "baseline")
"""Columns holding run-directory paths: kept in the CSV, left out of the Markdown table."""


def save_table(df: pd.DataFrame, rundir_path: str | Path, stem: str) -> tuple[Path, Path]:
    """Write <stem>.csv (full cells) and <stem>.md (formatted, no path columns, missing reasons once, below)."""
    from .guard import target

    folder = Path(rundir_path)
    csv_path, md_path = target(folder / f"{stem}.csv"), target(folder / f"{stem}.md")
    df.to_csv(csv_path, index=False)
    short, notes = split_missing(df.drop(columns=[c for c in PATH_COLUMNS if c in df.columns]))
    md_path.write_text(markdown(short) + "\n" + "".join(f"\n{n}\n" for n in notes), encoding="utf-8")
    return csv_path, md_path


def rich_table(df: pd.DataFrame, title: str | None = None) -> Table:
    """A Rich table of the frame: numbers right-aligned and formatted for reading."""
    import pandas as pd

    from rich.text import Text

    table = Table(title=Text(title) if title is not None else None)
    for col in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])
        table.add_column(Text(str(col)), justify="right" if numeric else "left", overflow="fold")
    for row in df.itertuples(index=False, name=None):
        table.add_row(*(Text(format_cell(v)) for v in row))  # cells are data, never Rich markup
    return table
