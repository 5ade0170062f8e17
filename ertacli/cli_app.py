"""The Typer app every `ertacache` command registers on, and the helpers the commands share (job, show, say, finish)."""

from __future__ import annotations

from typing import List, Optional

import typer

app = typer.Typer(name="ertacache", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Calibrated feature caching (ERTACache) for diffusion transformers: "
                       "profile -> search -> fit -> generate -> eval.")


def make_job(model: str, sets: Optional[List[str]], device: Optional[str], quiet: bool = False, compile_: bool = False,
         method: Optional[str] = None):
    from .runs.job import Job

    job = Job.make(model, sets, device, quiet=quiet, method=method)
    job.compile = compile_  # every session on this pipeline runs its blocks compiled (baseline included)
    return job


def show(df_or_rows, title: str) -> None:
    from .runs.console import show as render
    from .runs.headlines import with_spread

    import pandas as pd

    df = df_or_rows if isinstance(df_or_rows, pd.DataFrame) else pd.DataFrame(df_or_rows)
    render(with_spread(df), title)


def finish(summary: str, path=None) -> None:
    from .runs.console import finish as render

    render(summary, path)


def say(text: str, style: str | None = None, stderr: bool = False) -> None:
    from .runs.console import say as render

    render(text, style, stderr)
