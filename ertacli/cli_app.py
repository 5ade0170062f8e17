"""The Typer app every `ertacache` command registers on, and the helpers the commands share (job, show, say, finish)."""

from __future__ import annotations

from typing import List, Optional

import typer

app = typer.Typer(name="ertacache", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
                  help="Calibrated feature caching (ERTACache) for diffusion transformers: "
                       "profile -> search -> fit -> generate -> eval.")


def print_version(value: bool) -> None:
    """`--version`: the package version, exit 0."""
    if value:
        from . import __version__

        print(f"ertacache {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", is_eager=True, callback=print_version,
                                      help="Print the version and exit.")) -> None:
    pass


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
