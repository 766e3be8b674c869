"""CLI plumbing shared by every domain's commands: one transaction per command, output.

One output style for every command: a table (or a line) for people; with ``--json``, pretty JSON
(indent 2) on stdout, in the API's own shapes (camelCase, int64 money as strings, times RFC 3339
with ``Z``). An error under ``--json`` is the API's error body ``{"code", "error"[, "field"]}`` on
stdout, with a non-zero exit status (1 an error, 2 bad input).
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from billfold.config import Settings, get_settings
from billfold.kit.audit import end_cli_run, name_cli_subcommand, start_cli_run
from billfold.kit.db import make_engine, make_sessionmaker
from billfold.kit.db import transaction as db_transaction
from billfold.kit.errors import BillfoldError
from billfold.kit.schemas import WireModel

_json_mode: ContextVar[bool] = ContextVar("json_mode", default=False)


def _remember_json(value: bool) -> bool:
    _json_mode.set(bool(value))
    return value


# Every command takes it; its callback records it (click calls it while parsing, before the
# command runs), so that errors raised anywhere in the command know how to report themselves.
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print JSON instead of a table.", callback=_remember_json),
]

EXIT_ERROR = 1
EXIT_BAD_INPUT = 2

# Ids must never be cut with an ellipsis: off a terminal (pipes, CI) the table is laid out wide.
console = Console(width=None if sys.stdout.isatty() else 240)


def json_mode() -> bool:
    """Whether the running command was given ``--json``."""
    return _json_mode.get()


def print_json(payload: Any) -> None:
    """The one JSON style of the CLI: pretty-printed, keys as the API sends them."""
    typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def fail(
    code: str, message: str, *, field: str | None = None, exit_code: int = EXIT_ERROR
) -> NoReturn:
    """Report an error the way the command's output asks for, and stop with ``exit_code``."""
    if json_mode():
        body: dict[str, str] = {"code": code, "error": message}
        if field is not None:
            body["field"] = field
        print_json(body)
    else:
        where = f" {field}:" if field is not None else ""
        console.print(f"[red]error[/red] ({code}):{where} {message}", highlight=False)
    raise typer.Exit(code=exit_code)


def report(exc: BillfoldError) -> NoReturn:
    """A service's error, as the API would answer it (its body under ``--json``); exit 1."""
    if json_mode():
        print_json(exc.body())
        raise typer.Exit(code=EXIT_ERROR)
    fail(exc.code, exc.message)


def bad_input(message: str, *, field: str | None = None) -> NoReturn:
    """Bad input on the command line: exit status 2, as for a bad option."""
    if json_mode():
        fail("invalid_argument", message, field=field, exit_code=EXIT_BAD_INPUT)
    raise typer.BadParameter(message, param_hint=field)


def validated(model: type[WireModel], data: dict[str, Any], fields: dict[str, str]) -> Any:
    """``data`` checked by the API's own request model; a bad field is bad input naming the
    command-line option (``fields`` maps the wire name to it)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        wire = ".".join(str(part) for part in error["loc"])
        message = "is required" if error["type"] == "missing" else error["msg"]
        bad_input(message.removeprefix("Value error, "), field=fields.get(wire, wire))


def audited_command(ctx: typer.Context) -> None:
    """The callback of the ``billfold`` command and of each of its groups: names the command being
    run for the audit trail (kit/audit.py), so each transaction of it that writes is recorded
    with the OS user and the command path (``billfold team create``)."""
    name = ctx.invoked_subcommand
    if name is None:
        return
    if ctx.parent is not None:
        name_cli_subcommand(name)
    else:
        token = start_cli_run(f"billfold {name}")
        ctx.call_on_close(lambda: end_cli_run(token))


@contextmanager
def transaction(settings: Settings | None = None) -> Iterator[Session]:
    """One transaction for one CLI command, like one request of the API."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url, pool_size=2, pool_mode=settings.database_pool_mode)
    try:
        with db_transaction(make_sessionmaker(engine, settings=settings)) as session:
            yield session
    except BillfoldError as exc:
        report(exc)
    finally:
        engine.dispose()


def emit(model: WireModel | Sequence[WireModel], as_json: bool, columns: Sequence[str]) -> None:
    rows: list[dict[str, Any]] = [
        m.model_dump(mode="json", by_alias=True, exclude_none=True)
        for m in (model if isinstance(model, Sequence) else [model])
    ]
    if as_json:
        print_json(rows if isinstance(model, Sequence) else rows[0])
        return
    table = Table()
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def show(model: WireModel, as_json: bool, *, omit: Sequence[str] = ()) -> None:
    """One object: its JSON, or a table of its fields (nested ones dotted, ``omit`` left out of
    the table only)."""
    if as_json:
        print_json(dump(model))
        return
    table = Table("field", "value")
    for name, value in _flatten(dump(model)):
        if name.split(".")[0] not in omit:
            table.add_row(name, value)
    console.print(table)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in data.items():
        name = prefix + key
        if isinstance(value, dict) and value and set(value) != {"val"}:
            yield from _flatten(value, name + ".")
        else:
            yield name, _cell(value)


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as the API sends it (JSON types, camelCase, unset fields left out)."""
    data: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return data


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict) and "val" in value:
        return str(value["val"])
    return "" if value is None else str(value)


def parse_team_id(value: str, field: str = "TEAM_ID") -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        bad_input(f"{value!r} is not a UUID", field=field)
