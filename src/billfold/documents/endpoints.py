"""Downloading invoice documents: ``GET /teams/{team}/billing/{yyyy}-{mm}-{invoiceId}.{pdf|csv}``,
the paths that ``invoicePdfAssetKeySuffix`` and ``billingItemsCsvAssetKeySuffix`` name."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Protocol

from fastapi import Depends, Request, Response
from sqlalchemy.orm import Session

from billfold.documents.service import document_service
from billfold.kit.errors import ResourceNotFound
from billfold.kit.http import DbSession, parse_uuid
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.teams.auth import Keys, authenticated_key, billing_read


class ConsoleSessions(Protocol):
    """The team a browser's console session sees (the console, above this package, implements
    it; billfold/wiring.py hands it in), so a signed-in person downloads documents by the same
    links the API names."""

    def team_of(self, session: Session, request: Request) -> uuid.UUID | None:
        """The team of the request's live console session, or None without one."""
        ...


class _Readers:
    console: ConsoleSessions | None = None

    def use(self, console: ConsoleSessions | None) -> None:
        self.console = console


readers = _Readers()


def document_reader(request: Request, team_id: str, session: DbSession, keys: Keys) -> uuid.UUID:
    """The team whose documents the request may read: a management key with BillingRead (as
    every route of the Billing Management API), or, without an Authorization header, the
    console session's team. A console session asking for another team's document gets a 404,
    as every console page does."""
    if readers.console is not None and "authorization" not in request.headers:
        team = readers.console.team_of(session, request)
        if team is not None:
            if parse_uuid(team_id) != team:
                raise ResourceNotFound(
                    "no such invoice document", code="invoice_document_not_found"
                )
            return team
    return billing_read(team_id, authenticated_key(request, session, keys)).team_id


DocumentReader = Annotated[uuid.UUID, Depends(document_reader)]

billing_router = WireRouter()
admin_router = WireRouter()

_NAME = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<invoice>inv_[A-Za-z0-9_-]+)\.(?P<kind>pdf|csv)"
)


@billing_router.get(
    "/teams/{team_id}/billing/{name}",
    response_class=Response,
    responses={
        200: {"content": {"application/pdf": {}, "text/csv": {}}},
        **error_responses(ResourceNotFound),
    },
)
def download(team: DocumentReader, session: DbSession, name: str) -> Response:
    """An invoice's PDF (or a monthly invoice's lines as CSV), exactly as rendered at
    finalization."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ResourceNotFound(f"no invoice document {name!r}", code="invoice_document_not_found")
    document = document_service.document(
        session,
        team,
        int(match["year"]),
        int(match["month"]),
        match["invoice"],
        match["kind"],
    )
    return Response(
        content=document.content,
        media_type=document.media_type,
        headers={"Content-Disposition": f'attachment; filename="{document.filename}"'},
    )
