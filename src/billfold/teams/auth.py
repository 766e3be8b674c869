"""Typed auth dependencies: ``BillingRead`` / ``BillingWrite`` for team keys, ``Operator``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from billfold.config import Settings
from billfold.kit.audit import ACTOR_MANAGEMENT_KEY, ACTOR_OPERATOR
from billfold.kit.errors import Forbidden, Unauthorized
from billfold.kit.http import (
    DbSession,
    credentials_accepted,
    credentials_failed,
    parse_uuid,
    screened_bearer,
)
from billfold.teams.models import ManagementKey
from billfold.teams.schemas import ACL_BILLING_READ, ACL_BILLING_WRITE
from billfold.teams.service import KeyService, OperatorTokenService


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(get_settings_dep)]


def get_key_service(settings: AppSettings) -> KeyService:
    return KeyService(settings.key_prefix)


Keys = Annotated[KeyService, Depends(get_key_service)]


def authenticated_key(request: Request, session: DbSession, keys: Keys) -> ManagementKey:
    token = screened_bearer(request)  # rate limits: before any database work
    key = keys.authenticate(session, token)
    if key is None:
        credentials_failed(request)
        raise Unauthorized("unknown or revoked management key", code="invalid_api_key")
    credentials_accepted(request, token, "key", key.id)
    request.state.team_id = key.team_id  # for the access log (kit/logs.py)
    request.state.audit_actor = (ACTOR_MANAGEMENT_KEY, str(key.id))  # kit/audit.py
    return key


AuthenticatedKey = Annotated[ManagementKey, Depends(authenticated_key)]


@dataclass(frozen=True)
class TeamScope:
    """A request authorized for one team by one of that team's management keys."""

    team_id: uuid.UUID
    key: ManagementKey


def _team_scope(acl: str, team_id: str, key: ManagementKey) -> TeamScope:
    if acl not in key.acls:
        raise Forbidden(f"this management key lacks the ACL {acl}", code="missing_acl")
    wanted = parse_uuid(team_id)
    # Another team's resources are a 403 whether the team exists or not: never a hint, never data.
    if wanted != key.team_id:
        raise Forbidden("this management key belongs to another team", code="wrong_team")
    return TeamScope(team_id=wanted, key=key)


def billing_read(team_id: str, key: AuthenticatedKey) -> TeamScope:
    return _team_scope(ACL_BILLING_READ, team_id, key)


def billing_write(team_id: str, key: AuthenticatedKey) -> TeamScope:
    return _team_scope(ACL_BILLING_WRITE, team_id, key)


BillingRead = Annotated[TeamScope, Depends(billing_read)]
BillingWrite = Annotated[TeamScope, Depends(billing_write)]


def operator(request: Request, session: DbSession, settings: AppSettings) -> None:
    token = screened_bearer(request)  # rate limits: before any database work
    if not OperatorTokenService(settings.admin_token).check(session, token):
        credentials_failed(request)
        raise Unauthorized("unknown operator token", code="invalid_operator_token")
    credentials_accepted(request, token, "operator", token)
    request.state.audit_actor = (ACTOR_OPERATOR, "operator")  # kit/audit.py


Operator = Depends(operator)
