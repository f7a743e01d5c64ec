"""``anim-clip cache``: thin typer commands over :mod:`anim_clip.cache.inspect`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from anim_clip.ui import console

cache_app = typer.Typer(help="Inspect and check a feature cache.", no_args_is_help=True)


@cache_app.command("info")
def cache_info_cmd(
    path: Annotated[Path, typer.Argument(help="The cache folder.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the summary as JSON here.")] = None,
) -> None:
    """Summarise a cache: splits, shapes, done and failed clips, sizes on disk, how it was built."""
    from anim_clip.cache.inspect import cache_info, cache_info_tables
    from anim_clip.io import atomic_write_json

    info = cache_info(path)
    for t in cache_info_tables(info):
        console.print(t)
    if json_out is not None:
        atomic_write_json(json_out, info)


@cache_app.command("verify")
def cache_verify_cmd(path: Annotated[Path, typer.Argument(help="The cache folder.")]) -> None:
    """Check a cache: shapes, finite values of every done clip, done flags, metadata. Exit code 0 = sound."""
    from anim_clip.cache.inspect import cache_warnings, verify_cache

    problems = verify_cache(path)
    for problem in problems:
        console.print(f"[red]problem:[/] {problem}", soft_wrap=True, highlight=False)
    if problems:
        raise typer.Exit(1)
    for warning in cache_warnings(path):  # a mixed cache is sound: said, exit code 0
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
    console.print(f"[green]{path}: OK[/]")
