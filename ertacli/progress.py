"""Progress for long loops: a Rich bar with ETA on a terminal, a plain line at a steady interval when piped."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator

INTERVAL_S = float(os.environ.get("ERTACACHE_PROGRESS_SECONDS", "30"))
"""Seconds between progress lines when stderr is not a terminal (first and last lines always print)."""


def progress_bar(quiet: bool = False):
    """A Rich progress bar with elapsed time and ETA (disabled when quiet)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=quiet, transient=True)


class LineProgress:
    """`label: i/N, elapsed, ETA` on stderr at most every `interval` seconds, and once when the loop ends."""

    def __init__(self, label: str, total: int | None, interval: float = INTERVAL_S, stream=None):
        self.label, self.total, self.interval = label, total, interval
        self.stream = stream or sys.stderr
        self.done, self.start = 0, time.monotonic()
        self.last = self.start

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        of = f"/{self.total}" if self.total else ""
        eta = ""
        if self.total and self.done:
            eta = f", ETA {elapsed / self.done * (self.total - self.done):.0f} s"
        return f"[progress] {self.label}: {self.done}{of}, {elapsed:.0f} s{eta}"

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if time.monotonic() - self.start >= self.interval:
            print(self.line(), file=self.stream, flush=True)


def _terminal() -> bool:
    return os.environ.get("ERTACACHE_PLAIN") != "1" and sys.stderr.isatty()


@contextlib.contextmanager
def task(label: str, total: int | None, quiet: bool = False) -> Iterator[Callable[[], None]]:
    """One loop's progress; yields the function that advances it by one."""
    if quiet:
        yield lambda: None
        return
    if not _terminal():
        line = LineProgress(label, total)
        try:
            yield line.advance
        finally:
            line.close()
        return
    with progress_bar() as bar:
        tid = bar.add_task(label, total=total)
        yield lambda: bar.advance(tid)
