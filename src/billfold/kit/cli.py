"""CLI plumbing shared by every domain's commands: one transaction per command, output."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from billfold.config import Settings, get_settings
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.kit.db import transaction as db_transaction
from billfold.kit.errors import BillfoldError
from billfold.kit.schemas import WireModel

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# Ids must never be cut with an ellipsis: off a terminal (pipes, CI) the table is laid out wide.
console = Console(width=None if sys.stdout.isatty() else 240)


@contextmanager
def transaction(settings: Settings | None = None) -> Iterator[Session]:
    """One transaction for one CLI command, like one request of the API."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url, pool_size=2)
    try:
        with db_transaction(make_sessionmaker(engine)) as session:
            yield session
    except BillfoldError as exc:
        console.print(f"[red]error[/red] ({exc.code}): {exc.message}")
        raise typer.Exit(code=1) from None
    finally:
        engine.dispose()


def emit(model: WireModel | Sequence[WireModel], as_json: bool, columns: Sequence[str]) -> None:
    rows: list[dict[str, Any]] = [
        m.model_dump(mode="json", by_alias=True, exclude_none=True)
        for m in (model if isinstance(model, Sequence) else [model])
    ]
    if as_json:
        payload: Any = rows if isinstance(model, Sequence) else rows[0]
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict) and "val" in value:
        return str(value["val"])
    return "" if value is None else str(value)


def parse_team_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a UUID") from None
