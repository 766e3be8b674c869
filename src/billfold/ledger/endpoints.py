"""HTTP surface of the prepaid ledger: balance and top-up (customer), credit grants (operator)."""

from __future__ import annotations

from fastapi import Response

from billfold.kit.errors import Conflict, ResourceNotFound
from billfold.kit.http import (
    REPLAYED_HEADER,
    DbSession,
    parse_uuid,
)
from billfold.kit.money import Cents
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.ledger.schemas import (
    CreditEntryOut,
    GrantCreditsRequest,
    entry_out,
)
from billfold.ledger.service import ledger_service
from billfold.teams.auth import Operator

# Each route repeats ``response_model_exclude_none=True``: WireRouter's default does not reach
# routes added through the decorators (they pass the flag explicitly as False).
billing_router = WireRouter()
admin_router = WireRouter(dependencies=[Operator])


@admin_router.post(
    "/admin/v1/teams/{team_id}/credits",
    status_code=201,
    response_model=CreditEntryOut,
    responses=error_responses(ResourceNotFound, Conflict),
)
def grant_credits(
    team_id: str, body: GrantCreditsRequest, session: DbSession, response: Response
) -> CreditEntryOut:
    """201 with the entry; a repeated idempotencyKey answers 201 with the first entry again (and
    ``Idempotent-Replayed: true``); the same key with another request is a 409."""
    entry, created = ledger_service.grant(
        session,
        parse_uuid(team_id),
        amount=Cents(body.amount),
        reason=body.reason,
        idempotency_key=body.idempotency_key,
        expires_at=body.expires_at,
    )
    if not created:
        response.headers[REPLAYED_HEADER] = "true"
    return entry_out(entry)
