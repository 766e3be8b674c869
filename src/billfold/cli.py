"""The ``billfold`` command: serve, migrate, and the operator's everyday tasks.

Each domain contributes its own command group (``billfold price``, ``billfold usage``, ...) from
its ``cli.py``; this module holds serving, the schema and the demo, and wires the groups.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from sqlalchemy.engine import make_url

from billfold import wiring  # noqa: F401 (hands lower domains what they need)
from billfold.audit.cli import audit_app
from billfold.autotopup.cli import auto_topup_app
from billfold.config import Settings, get_settings
from billfold.documents import cli as documents_cli  # noqa: F401 (invoices backfill-documents)
from billfold.invoicing.cli import cycle_app, invoices_app
from billfold.kit.audit import cli_run_suspended
from billfold.kit.cli import (
    JsonOpt,
    audited_command,
    console,
    fail,
    print_json,
    transaction,
)
from billfold.kit.clock import utc_now
from billfold.kit.db import make_engine, normalize_database_url
from billfold.kit.errors import BillfoldError
from billfold.ledger.cli import credits_app
from billfold.metering.cli import usage_app
from billfold.payments.cli import card_app
from billfold.pricing.cli import price_app
from billfold.settlement.cli import payments_app
from billfold.spend.cli import limit_app, spend_status
from billfold.teams.cli import billing_info_app, key_app, team_app, token_app
from billfold.teams.schemas import KNOWN_ACLS

# registers ``credits balance`` and ``credits resolve-pending`` on credits_app
from billfold.topups import cli as topups_cli  # noqa: F401

app = typer.Typer(
    no_args_is_help=True,
    help="Billfold: usage billing for API platforms.",
    callback=audited_command,  # the audit trail's record of the command (kit/cli.py)
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db", callback=audited_command)
app.add_typer(team_app, name="team", callback=audited_command)
app.add_typer(key_app, name="key", callback=audited_command)
app.add_typer(token_app, name="operator-token", callback=audited_command)
app.add_typer(price_app, name="price", callback=audited_command)
app.add_typer(usage_app, name="usage", callback=audited_command)
app.add_typer(credits_app, name="credits", callback=audited_command)
app.add_typer(cycle_app, name="cycle", callback=audited_command)
app.add_typer(limit_app, name="limit", callback=audited_command)
app.add_typer(invoices_app, name="invoices", callback=audited_command)
app.add_typer(card_app, name="card", callback=audited_command)
app.add_typer(payments_app, name="payments", callback=audited_command)
app.add_typer(billing_info_app, name="billing-info", callback=audited_command)
app.add_typer(audit_app, name="audit", callback=audited_command)
app.add_typer(auto_topup_app, name="auto-top-up", callback=audited_command)
app.command("spend-status")(spend_status)


def main() -> None:
    app()


def migrate(settings: Settings) -> None:
    from billfold.migrate import upgrade

    engine = make_engine(settings.database_url, pool_size=1, pool_mode=settings.database_pool_mode)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


# --- serve and the schema ---------------------------------------------------------------------


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Worker processes (stateless; share the database)."),
    migrate_first: bool = typer.Option(True, "--migrate/--no-migrate", help="Migrate on start."),
    as_json: JsonOpt = False,
) -> None:
    """Serve the Billing Management API, the operator API and /healthz.

    With --json, a generated operator token is printed as JSON; the server's log stays text.
    """
    import uvicorn

    settings = get_settings()
    problem = settings.provider_problem()
    if problem is not None:
        fail("provider_misconfigured", problem, exit_code=2)
    problem = settings.database_problem()
    if problem is not None:
        fail("database_misconfigured", problem, exit_code=2)
    if migrate_first:
        migrate(settings)
    _ensure_operator_token(settings, as_json)
    from billfold.kit.logs import log_config

    # JSON: every logger writes JSON lines; the app's own access line (route template, duration,
    # team, request id) replaces uvicorn's. Text: uvicorn's own configuration, as before.
    logging: dict[str, Any] = (
        {"log_config": log_config(settings.log_level, json=True), "access_log": False}
        if settings.log_format == "json"
        else {}
    )
    from billfold.kit.metrics import multiprocess_dir

    # /metrics sums every worker's values: with --workers N they write them to one directory,
    # named before uvicorn spawns them (kit/metrics.py). Requests are audited as requests, not
    # as this command.
    with multiprocess_dir(workers if settings.metrics else 1), cli_run_suspended():
        uvicorn.run(
            "billfold.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # uvicorn restarts a worker that has not answered its supervisor within this many
            # seconds; its 5 s default restarted slow-starting workers in a loop on a loaded host.
            timeout_worker_healthcheck=30,
            log_level=settings.log_level,
            **logging,
        )


def _ensure_operator_token(settings: Settings, as_json: bool = False) -> None:
    """Generate and print an operator token once, when none is configured or stored."""
    from billfold.teams.service import OperatorTokenService

    if settings.admin_token:
        return
    with transaction(settings) as session:
        tokens = OperatorTokenService(None)
        if tokens.has_generated(session):
            return
        token = tokens.generate(session)
    if as_json:
        print_json({"operatorToken": token})
        return
    console.print(
        f"[bold]Operator token[/bold] (shown once; set BILLFOLD_ADMIN_TOKEN to choose your own): "
        f"{token}"
    )


@db_app.command("upgrade")
def db_upgrade(as_json: JsonOpt = False) -> None:
    """Bring the database schema up to date."""
    migrate(get_settings())
    if as_json:
        print_json({"upToDate": True})
    else:
        console.print("schema is up to date")


DEMO_TEAM_ID = uuid.UUID("00000000-0000-4000-8000-00000000d3a0")
DEMO_KEY_NAME = "demo"


def demo_credentials_path(settings: Settings) -> Path:
    """Where the demo keeps its plaintext credentials: beside a SQLite database
    (``billfold.db-demo.json``), else ``billfold-demo.json`` in the working directory."""
    url = make_url(normalize_database_url(settings.database_url))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(f"{url.database}-demo.json")
    return Path("billfold-demo.json")


def _read_credentials(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def _write_credentials(path: Path, credentials: dict[str, str]) -> None:
    """Owner-only (0600) from the first byte: the file holds a key and maybe the operator token."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        json.dump(credentials, handle, indent=2)
        handle.write("\n")


@dataclass
class DemoSetup:
    team_id: uuid.UUID
    management_key: str | None
    operator_token: str | None
    notes: list[str] = field(default_factory=list)


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1", help="Interface to serve on."),
    port: int = typer.Option(8000, help="Port to serve on."),
    run_server: bool = typer.Option(True, "--serve/--no-serve", help="Start serving afterwards."),
    as_json: JsonOpt = False,
) -> None:
    """Set up a demo team with a key, a sandbox card, prices and this month's usage; print the
    credentials and ready-to-use shell variables; serve.

    Running it again reuses what exists: the same team, key and operator token (their plaintext is
    kept in a 0600 file beside the database, as the database stores only hashes). It never issues
    a second demo key nor replaces the operator token: when their plaintext is gone, it says how to
    make new ones.
    """
    settings = get_settings()
    migrate(settings)
    path = demo_credentials_path(settings)
    setup = _demo_setup(settings, path)
    _seed_demo_usage(settings, setup.team_id)
    base = f"http://{host}:{port}"
    shell = _demo_shell(base, setup, utc_now())
    if as_json:
        out: dict[str, object] = {
            "database": settings.database_url,
            "teamId": str(setup.team_id),
            "credentialsFile": str(path),
            "baseUrl": base,
        }
        if setup.management_key is not None:
            out["managementKey"] = setup.management_key
        if setup.operator_token is not None:
            out["operatorToken"] = setup.operator_token
        out["shell"] = shell
        out["notes"] = setup.notes
        print_json(out)
    else:
        unknown = "[yellow](not known, see below)[/yellow]"
        console.print("[bold green]Billfold demo[/bold green]")
        console.print(f"  database         {settings.database_url}", highlight=False)
        console.print(f"  demo team id     {setup.team_id}", highlight=False)
        console.print(f"  management key   {setup.management_key or unknown}", highlight=False)
        console.print(f"  operator token   {setup.operator_token or unknown}", highlight=False)
        console.print(f"  credentials file {path}", highlight=False)
        for note in setup.notes:
            console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
        console.print("Paste into a shell for the README's examples:")
        for line in shell:
            console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
    if run_server:
        os.environ.setdefault("BILLFOLD_LOG_LEVEL", settings.log_level)
        serve(host=host, port=port, workers=1, migrate_first=False, as_json=as_json)


def _demo_setup(settings: Settings, path: Path) -> DemoSetup:
    from billfold.payments.provider import CardInput
    from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS, SandboxProvider
    from billfold.payments.service import payment_method_service
    from billfold.teams.schemas import BillingInfoInput
    from billfold.teams.service import KeyService, OperatorTokenService, team_service

    saved = _read_credentials(path)
    with transaction(settings) as session:
        try:
            team = team_service.get(session, DEMO_TEAM_ID)
        except BillfoldError:
            team = team_service.create(session, "Demo team", DEMO_TEAM_ID)
            team_service.set_billing_info(
                session,
                team.id,
                BillingInfoInput.model_validate(
                    {
                        "name": "Demo team",
                        "email": "billing@demo.example",
                        "address": {"country": "US"},
                    }
                ),
            )
            provider = SandboxProvider.for_database(
                settings.database_url, pool_mode=settings.database_pool_mode
            )
            try:
                provider.install()
                payment_method_service.add_card(
                    session,
                    provider,
                    team,
                    CardInput(CARD_ALWAYS_SUCCEEDS, 12, utc_now().year + 9),
                    make_default=True,
                )
            finally:
                provider.engine.dispose()
        setup = DemoSetup(team_id=team.id, management_key=None, operator_token=None)

        # The management key: the saved one while it works; a new one only when the team has no
        # working demo key at all.
        keys = KeyService(settings.key_prefix)
        plaintext = saved.get("managementKey")
        known = keys.authenticate(session, plaintext) if plaintext else None
        if known is not None and known.team_id == team.id:
            setup.management_key = plaintext
        else:
            active = [
                k
                for k in keys.list(session, team.id)
                if k.name == DEMO_KEY_NAME and k.revoked_at is None
            ]
            if active:
                setup.notes.append(
                    f"the demo key {active[0].redacted} exists, but its plaintext is not in {path} "
                    "(only a hash is stored). Issue another with "
                    f"`billfold key create {team.id} --name NAME`, or revoke it "
                    f"(`billfold key revoke {active[0].id}`) and run the demo again."
                )
            else:
                setup.management_key = keys.issue(
                    session, team, DEMO_KEY_NAME, list(KNOWN_ACLS)
                ).plaintext

        # The operator token: BILLFOLD_ADMIN_TOKEN, else the saved one while it works; a new one
        # only when none was ever generated.
        tokens = OperatorTokenService(None)
        token = saved.get("operatorToken")
        if settings.admin_token:
            setup.operator_token = settings.admin_token
        elif token and tokens.check(session, token):
            setup.operator_token = token
        elif tokens.has_generated(session):
            setup.notes.append(
                f"an operator token exists, but its plaintext is not in {path} (only a hash is "
                "stored). `billfold operator-token rotate` makes a new one (the old one stops "
                "working at once), or set BILLFOLD_ADMIN_TOKEN."
            )
        else:
            setup.operator_token = tokens.generate(session)

        credentials = {"teamId": str(team.id)}
        if setup.management_key is not None:
            credentials["managementKey"] = setup.management_key
        if setup.operator_token is not None and not settings.admin_token:
            credentials["operatorToken"] = setup.operator_token
        if credentials != saved:
            _write_credentials(path, credentials)  # before the commit: never a lost plaintext
    return setup


def _demo_shell(base: str, setup: DemoSetup, now: datetime) -> list[str]:
    """Shell variables the README's examples use, with this month's and last month's dates."""
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (this_month + timedelta(days=32)).replace(day=1)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    lines = [
        f"export B={base}",
        f"export TEAM={setup.team_id}",
        f"export KEY={setup.management_key or 'xai-...'}",
        f"export OP_TOKEN={setup.operator_token or 'bfop_...'}",
        f"export MONTH_START='{this_month:%Y-%m-%d %H:%M:%S}' "
        f"NEXT_MONTH_START='{next_month:%Y-%m-%d %H:%M:%S}'",
        f"export YEAR={this_month.year} MONTH={this_month.month} "
        f"LAST_YEAR={last_month.year} LAST_MONTH={last_month.month}",
        'H="Authorization: Bearer $KEY"; OP="Authorization: Bearer $OP_TOKEN"',
    ]
    return lines


def _seed_demo_usage(settings: Settings, team_id: uuid.UUID) -> None:
    """Prices and a week of usage for the demo team, so every endpoint has something to show.

    Event ids are fixed, so running the demo again adds nothing (they are duplicates).
    """
    from billfold.metering.service import metering_service
    from billfold.pricing.service import pricing_service

    now = utc_now()
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    skus = {
        "grok-4-prompt": ("Chat grok-4-0709", "Prompt text tokens", "0.000003"),
        "grok-4-completion": ("Chat grok-4-0709", "Completion text tokens", "0.000015"),
    }
    with transaction(settings) as session:
        for sku, (description, unit_type, price) in skus.items():
            if not pricing_service.book_for(session, [sku]).versions:
                pricing_service.set_price(
                    session,
                    sku,
                    description=description,
                    unit_type=unit_type,
                    unit_price=price,
                    effective_from=month_start,
                )
    events = []
    for hours_ago in range(0, 24 * 7, 3):
        at = now - timedelta(hours=hours_ago)
        if at < month_start:
            break
        for sku, quantity in (
            ("grok-4-prompt", 12_000 + hours_ago * 37),
            ("grok-4-completion", 900),
        ):
            events.append(
                {
                    "eventId": f"demo-{sku}-{at:%Y%m%d%H}",
                    "teamId": str(team_id),
                    "sku": sku,
                    "quantity": str(quantity),
                    "timestamp": at.isoformat(),
                    "properties": {"model": "grok-4", "apiKeyId": "demo"},
                }
            )
    with transaction(settings) as session:
        metering_service.ingest(session, settings, events)
