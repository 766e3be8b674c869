"""``billfold team ...``, ``billfold key ...``, ``billfold operator-token ...`` and
``billfold billing-info ...``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from billfold.config import get_settings
from billfold.kit.cli import (
    JsonOpt,
    bad_input,
    console,
    dump,
    emit,
    fail,
    parse_team_id,
    print_json,
    show,
    transaction,
    validated,
)
from billfold.teams.schemas import KNOWN_ACLS

team_app = typer.Typer(no_args_is_help=True, help="Teams.")


key_app = typer.Typer(no_args_is_help=True, help="Management keys of teams.")


token_app = typer.Typer(no_args_is_help=True, help="The operator token.")


billing_info_app = typer.Typer(no_args_is_help=True, help="Billing info of teams.")


@token_app.command("rotate")
def rotate_operator_token(as_json: JsonOpt = False) -> None:
    """Replace the generated operator token (unused when BILLFOLD_ADMIN_TOKEN is set)."""
    from billfold.teams.service import OperatorTokenService

    settings = get_settings()
    if settings.admin_token:
        fail("admin_token_configured", "BILLFOLD_ADMIN_TOKEN is set; it is the operator token")
    with transaction(settings) as session:
        token = OperatorTokenService(None).generate(session)
    if as_json:
        print_json({"operatorToken": token})
    else:
        typer.echo(token)


@team_app.command("create")
def team_create(
    name: str,
    team_id: Annotated[str | None, typer.Option("--team-id", help="Explicit UUID.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a team (the name is checked as the API checks it: 1 to 200 characters)."""
    from billfold.teams.schemas import CreateTeamRequest, team_out
    from billfold.teams.service import team_service

    if not name.strip():
        bad_input("a team needs a name; an empty one is refused, as by the API", field="NAME")
    explicit = parse_team_id(team_id, "--team-id") if team_id else None
    body: CreateTeamRequest = validated(CreateTeamRequest, {"name": name}, {"name": "NAME"})
    with transaction() as session:
        team = team_service.create(session, body.name, explicit)
        out = team_out(team)
    emit(out, as_json, ["teamId", "name", "createTime"])


@team_app.command("list")
def team_list(as_json: JsonOpt = False) -> None:
    """List teams."""
    from billfold.teams.schemas import team_out
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
    from billfold.teams.schemas import CreatedKey, key_out
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
    from billfold.teams.schemas import key_out
    from billfold.teams.service import KeyService

    settings = get_settings()
    with transaction(settings) as session:
        keys = [
            key_out(k)
            for k in KeyService(settings.key_prefix).list(session, parse_team_id(team_id))
        ]
    emit(keys, as_json, ["keyId", "name", "acls", "redactedApiKey", "revoked"])


@key_app.command("revoke")
def key_revoke(key_id: str, as_json: JsonOpt = False) -> None:
    """Revoke a management key; it stops working at once."""
    from billfold.teams.schemas import key_out
    from billfold.teams.service import KeyService

    settings = get_settings()
    with transaction(settings) as session:
        key = KeyService(settings.key_prefix).revoke(session, parse_team_id(key_id, "KEY_ID"))
        out = key_out(key)
    if as_json:
        print_json(dump(out))
    else:
        console.print(f"revoked {key_id}")


@billing_info_app.command("show")
def billing_info_show(team_id: str, as_json: JsonOpt = False) -> None:
    """A team's billing info, as ``GET /v1/billing/teams/{team_id}/billing-info`` shows it."""
    from billfold.teams.schemas import GetBillingInfoResponse
    from billfold.teams.service import team_service

    team = parse_team_id(team_id)
    with transaction() as session:
        team_service.get(session, team)
        out = GetBillingInfoResponse(billing_info=team_service.get_billing_info(session, team))
    show(out, as_json)
