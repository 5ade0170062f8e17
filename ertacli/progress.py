"""Progress bars for long loops (Rich; nothing when quiet)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator


def progress_bar(quiet: bool = False):
    """A Rich progress bar for long loops (disabled when quiet)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=quiet, transient=True)


@contextlib.contextmanager
def task(label: str, total: int | None, quiet: bool = False) -> Iterator[Callable[[], None]]:
    """One loop's progress bar; yields the function that advances it by one."""
    if quiet:
        yield lambda: None
        return
    with progress_bar() as bar:
        tid = bar.add_task(label, total=total)
        yield lambda: bar.advance(tid)
