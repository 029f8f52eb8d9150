"""How every command prints: `-o table|json|yaml|id` (and `--json`, an alias of `-o json`).

Scripts read stdout, people read the rest. So stdout carries only the result in the
format asked for; human lines (progress, "created ...", notes) go to stderr whenever
stdout is not a terminal or the format is machine-readable. Tables are plain ASCII when
piped, and colour follows `NO_COLOR` (rich honours it) and the terminal.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table


class Format(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"
    id = "id"


OutputOpt = Annotated[Format | None, typer.Option(
    "-o", "--output", case_sensitive=False, show_default=False,
    help="table (default), json, yaml, or id (only the id, for scripts).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as -o json.")]


def stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def make_out() -> Console:
    # Piped output (scripts, logs, grep) is never wrapped: a row stays one line.
    return Console(highlight=False, soft_wrap=True, width=None if stdout_is_tty() else 100_000,
                   no_color=_no_color())


def make_err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True, no_color=_no_color())


def usage(message: str) -> NoReturn:
    make_err().print(f"error [invalid_request]: {message}", markup=False)
    raise typer.Exit(2)


def resolve(output: Format | None, as_json: bool = False) -> Format:
    if as_json:
        if output not in (None, Format.json):
            usage("--json is -o json; give one of them")
        return Format.json
    return output or Format.table


def human(fmt: Format, out: Console, err: Console) -> Console:
    """Where human lines go: stdout only for a table on a terminal."""
    return out if fmt is Format.table and stdout_is_tty() else err


def table(*columns: str) -> Table:
    """A table: box drawing on a terminal, plain ASCII when piped (or NO_COLOR)."""
    ascii_only = not stdout_is_tty() or _no_color()
    return Table(*columns, box=box.ASCII if ascii_only else box.HEAVY_HEAD, safe_box=True)


def dump(data: Any, fmt: Format) -> str:
    if fmt is Format.yaml:
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=False))
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def emit(data: Any, fmt: Format, *, ids: Iterable[str] | str | None = None,
         render: Callable[[], None] | None = None) -> None:
    """Print a result: structured for json/yaml, only the id(s) for id, else `render()`."""
    if fmt in (Format.json, Format.yaml):
        sys.stdout.write(dump(data, fmt))
        sys.stdout.flush()
        return
    if fmt is Format.id:
        if ids is None:
            usage("this command has no id to print; use -o json")
        for i in [ids] if isinstance(ids, str) else ids:
            sys.stdout.write(f"{i}\n")
        sys.stdout.flush()
        return
    if render is not None:
        render()
