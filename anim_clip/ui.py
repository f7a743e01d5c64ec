"""Console output shared by every command: one console, one progress-bar style, result tables."""

from __future__ import annotations

from typing import Iterable, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    ProgressColumn,
    Task,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console()


class RateColumn(ProgressColumn):
    """Items per second (or per minute, for slow work such as LLM calls), e.g. ``12.3 clips/s``;
    with ``per_item``, the rate of a sub-unit: the task's field of that name counts them per item
    (frames per clip gives ``98.4 frames/s``)."""

    def __init__(self, unit: str, per: str = "s", per_item: str | None = None):
        super().__init__()
        self.unit, self.per, self.per_item = unit, per, per_item
        self.scale = {"s": 1, "min": 60}[per]

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is not None and self.per_item:
            speed *= task.fields.get(self.per_item, 1)
        rate = "     ?" if speed is None else f"{speed * self.scale:>6.1f}"
        return Text(f"{rate} {self.unit}/{self.per}", style="cyan")


def progress_bar(unit: str = "clips", *extra: ProgressColumn, per: str = "s", disable: bool = False) -> Progress:
    """A bar with count, rate (``unit`` per second or minute) and ETA; ``extra`` columns show live figures."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(unit, per),
        *extra,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    out = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*(str(v) for v in row))
    return out
