"""HTTP surface of teams: key validation, billing info, and the operator's teams and keys."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Query, Response

from billfold.kit.errors import Conflict, InvalidField, ResourceNotFound
from billfold.kit.http import DbSession, parse_uuid, read_only
from billfold.kit.money import Cents
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.teams.alerts import (
    AlertSettings,
    effective_emails,
    read_alert_settings,
    set_alert_settings,
)
from billfold.teams.auth import AuthenticatedKey, BillingRead, BillingWrite, Keys, Operator
from billfold.teams.schemas import (
    AlertSettingsOut,
    AlertSettingsRequest,
    CreatedKey,
    CreateKeyRequest,
    CreateTeamRequest,
    Empty,
    GetBillingInfoResponse,
    KeyList,
    SetBillingInfoRequest,
    TeamList,
    TeamOut,
    ValidateKeyResponse,
    key_out,
    key_validation_out,
    team_out,
    team_page_out,
)
from billfold.teams.service import team_service

billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


@billing_router.get("/auth/management-keys/validation", response_model=ValidateKeyResponse)
@read_only
def validate_management_key(key: AuthenticatedKey) -> ValidateKeyResponse:
    return key_validation_out(key)


@billing_router.get(
    "/v1/billing/teams/{team_id}/billing-info", response_model=GetBillingInfoResponse
)
@read_only
def get_billing_info(scope: BillingRead, session: DbSession) -> GetBillingInfoResponse:
    return GetBillingInfoResponse(
        billing_info=team_service.get_billing_info(session, scope.team_id)
    )


@billing_router.post("/v1/billing/teams/{team_id}/billing-info", response_model=Empty)
def set_billing_info(body: SetBillingInfoRequest, scope: BillingWrite, session: DbSession) -> Empty:
    team_service.set_billing_info(session, scope.team_id, body.billing_info)
    return Empty()


# --- operator ------------------------------------------------------------------------------


@admin_router.post(
    "/admin/v1/teams",
    status_code=201,
    response_model=TeamOut,
    responses=error_responses(Conflict),
)
def create_team(body: CreateTeamRequest, session: DbSession) -> TeamOut:
    return team_out(team_service.create(session, body.name, body.team_id))


@admin_router.get("/admin/v1/teams", response_model=TeamList)
@read_only
def list_teams(
    session: DbSession,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 100,
    page_token: Annotated[str, Query(alias="pageToken")] = "",
) -> TeamList:
    after: uuid.UUID | None = None
    if page_token:
        try:
            after = uuid.UUID(page_token)
        except ValueError:
            raise InvalidField("pageToken", "is not a token this API issued") from None
    return team_page_out(team_service.list(session, limit=page_size + 1, after=after), page_size)


@admin_router.post(
    "/admin/v1/teams/{team_id}/management-keys",
    status_code=201,
    response_model=CreatedKey,
    responses=error_responses(ResourceNotFound),
)
def create_management_key(
    team_id: str, body: CreateKeyRequest, session: DbSession, keys: Keys
) -> CreatedKey:
    team = team_service.get(session, parse_uuid(team_id))
    issued = keys.issue(session, team, body.name, body.acls)
    return CreatedKey(**key_out(issued.key).model_dump(), api_key=issued.plaintext)


@admin_router.get(
    "/admin/v1/teams/{team_id}/management-keys",
    response_model=KeyList,
    responses=error_responses(ResourceNotFound),
)
@read_only
def list_management_keys(team_id: str, session: DbSession, keys: Keys) -> KeyList:
    team = team_service.get(session, parse_uuid(team_id))
    return KeyList(keys=[key_out(k) for k in keys.list(session, team.id)])


@admin_router.delete(
    "/admin/v1/management-keys/{key_id}",
    status_code=204,
    responses=error_responses(ResourceNotFound),
)
def revoke_management_key(key_id: str, session: DbSession, keys: Keys) -> Response:
    keys.revoke(session, parse_uuid(key_id, "key_id"))
    return Response(status_code=204)


# --- alert settings --------------------------------------------------------------------------


def _alerts_out(session: DbSession, team_id: uuid.UUID, alerts: AlertSettings) -> AlertSettingsOut:
    return AlertSettingsOut(
        spend_thresholds_percent=list(alerts.spend_thresholds_percent),
        low_credit_cents=alerts.low_credit_cents,
        emails=list(alerts.emails),
        effective_emails=list(effective_emails(session, team_id)),
    )


@admin_router.get(
    "/admin/v1/teams/{team_id}/alerts",
    response_model=AlertSettingsOut,
    responses=error_responses(ResourceNotFound),
)
@read_only
def get_alert_settings(team_id: str, session: DbSession) -> AlertSettingsOut:
    team = team_service.get(session, parse_uuid(team_id))
    return _alerts_out(session, team.id, read_alert_settings(session, team.id))


@admin_router.put(
    "/admin/v1/teams/{team_id}/alerts",
    response_model=AlertSettingsOut,
    responses=error_responses(ResourceNotFound),
)
def put_alert_settings(
    team_id: str, body: AlertSettingsRequest, session: DbSession
) -> AlertSettingsOut:
    team_uuid = parse_uuid(team_id)
    alerts = set_alert_settings(
        session,
        team_uuid,
        body.spend_thresholds_percent,
        Cents(body.low_credit_cents) if body.low_credit_cents is not None else None,
        body.emails,
    )
    return _alerts_out(session, team_uuid, alerts)
