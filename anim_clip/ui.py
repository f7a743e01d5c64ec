"""Console output shared by every command: one console, one progress-bar style, result tables."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Column, Table
from rich.text import Text

# How wide output is where stdout is no terminal (a cluster job's or nohup's log) and COLUMNS is unset:
# rich would assume 80 columns and squeeze a wide table into them. A log is read later, on any screen:
# 120 columns fit most tables without wrapping and still fit a common terminal or editor window.
LOG_WIDTH = 120


def _console() -> Console:
    """The one console: a terminal's width, COLUMNS, else LOG_WIDTH for a log."""
    out = Console()
    if not out.is_terminal and not out.is_jupyter and "COLUMNS" not in os.environ:
        out.width = LOG_WIDTH
    return out


console = _console()

# A bar is one line of a log or an 80-column terminal: every column but the bar keeps its text on one
# line, a long description ends in an ellipsis, and the bar takes what is left.
DESCRIPTION_WIDTH = 36


def _one_line() -> Column:
    return Column(no_wrap=True)


def _rate(task: Task) -> float | None:
    """Items per second over the task's whole time: rich's windowed speed reads work that advances in
    bursts (a batch of clips stored at once) as the burst's own rate, hundreds of times too high."""
    elapsed = task.finished_time if task.finished else task.elapsed
    return task.completed / elapsed if task.completed and elapsed else None


class RateColumn(ProgressColumn):
    """Items per second (or per minute, for slow work such as LLM calls), e.g. ``12.3 clips/s``;
    with ``per_item``, the rate of a sub-unit: the task's field of that name counts them per item
    (frames per clip gives ``98.4 frames/s``)."""

    def __init__(self, unit: str, per: str = "s", per_item: str | None = None):
        super().__init__(table_column=_one_line())
        self.unit, self.per, self.per_item = unit, per, per_item
        self.scale = {"s": 1, "min": 60}[per]

    def render(self, task: Task) -> Text:
        speed = _rate(task)
        if speed is not None and self.per_item:
            speed *= task.fields.get(self.per_item, 1)
        rate = "     ?" if speed is None else f"{speed * self.scale:>6.1f}"
        return Text(f"{rate} {self.unit}/{self.per}", style="cyan")


class TimeColumn(ProgressColumn):
    """``ETA 0:01:05`` while running, ``took 0:00:11`` once finished: one short column for both."""

    def __init__(self) -> None:
        super().__init__(table_column=_one_line())

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text(f"took {timedelta(seconds=int(task.finished_time))}", style="progress.elapsed")
        rate = _rate(task)
        left = None if rate is None or task.total is None else (task.total - task.completed) / rate
        return Text(f"ETA {'-:--:--' if left is None else timedelta(seconds=int(left))}", style="progress.remaining")


def progress_bar(unit: str = "clips", *extra: ProgressColumn, per: str = "s", disable: bool = False) -> Progress:
    """A one-line bar with count, rate (``unit`` per second or minute) and ETA; ``extra`` columns show
    live figures."""
    return Progress(
        TextColumn("[bold]{task.description}", table_column=Column(
            no_wrap=True, overflow="ellipsis", max_width=DESCRIPTION_WIDTH)),
        BarColumn(bar_width=None, table_column=Column(max_width=40)),
        MofNCompleteColumn(table_column=_one_line()),
        RateColumn(unit, per),
        *extra,
        TimeColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A result table whose every name and header is shown whole at any width: a cell too wide for
    its column wraps (between words, else within one), where rich's default would cut it with "…"."""
    out = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        out.add_row(*(str(v) for v in row))
    return out
