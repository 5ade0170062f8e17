"""What commands print: Rich tables on a terminal, full-width Markdown tables when piped, and the same last lines.

Piped output (`make demo > log`, CI, `tee`, a notebook) gets one table row per line at its full width: nothing is
wrapped at 80 columns. Every command ends with `done: <what it did and its headline numbers>` and
`run directory: <path>`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

SHORT = {"cached_steps": "cached", "baseline_nfe": "nfe0", "ideal_speedup": "ideal", "predicted_speedup": "pred.",
         "holdout_mse": "heldout mse", "gain_vs_plain": "gain"}
"""Column names shortened for the terminal (files keep the full names)."""


def interactive(stream=None) -> bool:
    """Whether `stream` (default stdout) is a terminal; ERTACACHE_PLAIN=1 forces plain output."""
    if os.environ.get("ERTACACHE_PLAIN") == "1":
        return False
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def say(text: str, style: str | None = None, stderr: bool = False) -> None:
    """One line, never wrapped; styled only on a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    if interactive(stream) and style:
        from rich.text import Text

        _console(stderr).print(Text(str(text), style=style))  # user text (prompts, paths) is never Rich markup
    else:
        print(text, file=stream, flush=True)


def show(df_or_rows: Any, title: str) -> None:
    """A table: Rich on a terminal, Markdown at full width when piped; missing-metric reasons once, below."""
    import pandas as pd

    from .tables import markdown, rich_table, split_missing

    df = df_or_rows if isinstance(df_or_rows, pd.DataFrame) else pd.DataFrame(df_or_rows)
    df, notes = split_missing(df)
    df = df.rename(columns=SHORT)
    if interactive():
        _console().print(rich_table(df, title))
    else:
        print(f"\n{title}\n\n{markdown(df)}\n", flush=True)
    for note in notes:
        say(note, "yellow")


def finish(summary: str, path: Path | str | None = None) -> None:
    """The last lines of every command: what it did with its headline numbers, and where the run is."""
    say(f"done: {summary}", "bold")
    if path is not None:
        say(f"run directory: {path}", "bold")
