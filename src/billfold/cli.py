"""The ``billfold`` command: serve, migrate, and the operator's everyday tasks.

Each domain contributes its own command group (``billfold price``, ``billfold usage``, ...) from
its ``cli.py``; this module holds serving, the schema, the demo, teams and keys.
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated

import typer

from billfold.config import Settings, get_settings
from billfold.invoicing.cli import cycle_app, limit_app
from billfold.kit.cli import JsonOpt, console, emit, parse_team_id, transaction
from billfold.kit.db import make_engine
from billfold.kit.errors import BillfoldError
from billfold.ledger.cli import credits_app
from billfold.metering.cli import usage_app
from billfold.pricing.cli import price_app
from billfold.teams.schemas import KNOWN_ACLS

app = typer.Typer(no_args_is_help=True, help="Billfold: usage billing for API platforms.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
team_app = typer.Typer(no_args_is_help=True, help="Teams.")
key_app = typer.Typer(no_args_is_help=True, help="Management keys of teams.")
token_app = typer.Typer(no_args_is_help=True, help="The operator token.")
app.add_typer(db_app, name="db")
app.add_typer(team_app, name="team")
app.add_typer(key_app, name="key")
app.add_typer(token_app, name="operator-token")
app.add_typer(price_app, name="price")
app.add_typer(usage_app, name="usage")
app.add_typer(credits_app, name="credits")
app.add_typer(cycle_app, name="cycle")
app.add_typer(limit_app, name="limit")


def main() -> None:
    app()


def migrate(settings: Settings) -> None:
    from billfold.migrate import upgrade

    engine = make_engine(settings.database_url, pool_size=1)
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
) -> None:
    """Serve the Billing Management API, the operator API and /healthz."""
    import uvicorn

    settings = get_settings()
    if migrate_first:
        migrate(settings)
    _ensure_operator_token(settings)
    uvicorn.run(
        "billfold.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level,
    )


def _ensure_operator_token(settings: Settings) -> None:
    """Generate and print an operator token once, when none is configured or stored."""
    from billfold.teams.service import OperatorTokenService

    if settings.admin_token:
        return
    with transaction(settings) as session:
        tokens = OperatorTokenService(None)
        if tokens.has_generated(session):
            return
        token = tokens.generate(session)
    console.print(
        f"[bold]Operator token[/bold] (shown once; set BILLFOLD_ADMIN_TOKEN to choose your own): "
        f"{token}"
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema up to date."""
    migrate(get_settings())
    console.print("schema is up to date")


@token_app.command("rotate")
def rotate_operator_token() -> None:
    """Replace the generated operator token (unused when BILLFOLD_ADMIN_TOKEN is set)."""
    from billfold.teams.service import OperatorTokenService

    settings = get_settings()
    if settings.admin_token:
        console.print("BILLFOLD_ADMIN_TOKEN is set; it is the operator token")
        raise typer.Exit(code=1)
    with transaction(settings) as session:
        token = OperatorTokenService(None).generate(session)
    typer.echo(token)


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    run_server: bool = typer.Option(True, "--serve/--no-serve", help="Start serving afterwards."),
) -> None:
    """Set up a demo team with a key and a sandbox card, print them, and serve."""
    from billfold.payments.provider import CardInput
    from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS, SandboxProvider
    from billfold.payments.service import payment_method_service
    from billfold.teams.schemas import BillingInfoInput
    from billfold.teams.service import KeyService, OperatorTokenService, team_service

    settings = get_settings()
    migrate(settings)
    demo_team_id = uuid.UUID("00000000-0000-4000-8000-00000000d3a0")
    with transaction(settings) as session:
        try:
            team = team_service.get(session, demo_team_id)
        except BillfoldError:
            team = team_service.create(session, "Demo team", demo_team_id)
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
            provider = SandboxProvider.for_database(settings.database_url)
            provider.install()
            payment_method_service.add_card(
                session,
                provider,
                team,
                CardInput(CARD_ALWAYS_SUCCEEDS, 12, 2035),
                make_default=True,
            )
        issued = KeyService(settings.key_prefix).issue(session, team, "demo", list(KNOWN_ACLS))
        operator_token = settings.admin_token or OperatorTokenService(None).generate(session)
    _seed_demo_usage(settings, team.id)
    base = f"http://{host}:{port}"
    console.print("[bold green]Billfold demo[/bold green]")
    console.print(f"  database         {settings.database_url}")
    console.print(f"  demo team id     {team.id}")
    console.print(f"  management key   {issued.plaintext}")
    console.print(f"  operator token   {operator_token}")
    console.print(
        f"  try: curl -H 'Authorization: Bearer {issued.plaintext}' "
        f"{base}/auth/management-keys/validation"
    )
    if run_server:
        os.environ.setdefault("BILLFOLD_LOG_LEVEL", settings.log_level)
        serve(host=host, port=port, workers=1, migrate_first=False)


def _seed_demo_usage(settings: Settings, team_id: uuid.UUID) -> None:
    """Prices and a week of usage for the demo team, so every endpoint has something to show.

    Event ids are fixed, so running the demo again adds nothing (they are duplicates).
    """
    from datetime import timedelta

    from billfold.kit.clock import utc_now
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


# --- teams and keys ---------------------------------------------------------------------------


@team_app.command("create")
def team_create(
    name: str,
    team_id: Annotated[str | None, typer.Option("--team-id", help="Explicit UUID.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a team."""
    from billfold.teams.endpoints import team_out
    from billfold.teams.service import team_service

    explicit = parse_team_id(team_id) if team_id else None
    with transaction() as session:
        team = team_service.create(session, name, explicit)
        out = team_out(team)
    emit(out, as_json, ["teamId", "name", "createTime"])


@team_app.command("list")
def team_list(as_json: JsonOpt = False) -> None:
    """List teams."""
    from billfold.teams.endpoints import team_out
    from billfold.teams.service import team_service

    with transaction() as session:
        teams = [team_out(t) for t in team_service.list(session, limit=10_000, after=None)]
    emit(teams, as_json, ["teamId", "name", "createTime"])


@key_app.command("create")
def key_create(
    team_id: str,
    name: Annotated[str, typer.Option("--name", help="A name for the key.")] = "key",
    acl: Annotated[
        list[str] | None, typer.Option("--acl", help="Repeatable; default: read and write.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue a management key for a team (the key is shown once)."""
    from billfold.teams.endpoints import key_out
    from billfold.teams.schemas import CreatedKey
    from billfold.teams.service import KeyService, team_service

    settings = get_settings()
    with transaction(settings) as session:
        team = team_service.get(session, parse_team_id(team_id))
        issued = KeyService(settings.key_prefix).issue(session, team, name, acl or list(KNOWN_ACLS))
        out = CreatedKey(**key_out(issued.key).model_dump(), api_key=issued.plaintext)
    emit(out, as_json, ["keyId", "name", "acls", "apiKey"])


@key_app.command("list")
def key_list(team_id: str, as_json: JsonOpt = False) -> None:
    """List a team's management keys (redacted)."""
    from billfold.teams.endpoints import key_out
    from billfold.teams.service import KeyService

    settings = get_settings()
    with transaction(settings) as session:
        keys = [
            key_out(k)
            for k in KeyService(settings.key_prefix).list(session, parse_team_id(team_id))
        ]
    emit(keys, as_json, ["keyId", "name", "acls", "redactedApiKey", "revoked"])


@key_app.command("revoke")
def key_revoke(key_id: str) -> None:
    """Revoke a management key; it stops working at once."""
    from billfold.teams.service import KeyService

    settings = get_settings()
    with transaction(settings) as session:
        KeyService(settings.key_prefix).revoke(session, parse_team_id(key_id))
    console.print(f"revoked {key_id}")
