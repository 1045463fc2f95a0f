"""The progress bar every long command shows: done/total, elapsed, ETA, plus named fields."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(*fields: str, console: Console | None = None, disable: bool = False) -> Progress:
    """A rich Progress; each name in ``fields`` adds a text column shown from ``task.fields``."""
    columns = [
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        *(TextColumn(f"{{task.fields[{name}]}}") for name in fields),
    ]
    return Progress(*columns, console=console, disable=disable)
