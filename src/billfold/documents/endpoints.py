"""Downloading invoice documents: ``GET /teams/{team}/billing/{yyyy}-{mm}-{invoiceId}.{pdf|csv}``,
the paths that ``invoicePdfAssetKeySuffix`` and ``billingItemsCsvAssetKeySuffix`` name."""

from __future__ import annotations

import re

from fastapi import Response

from billfold.documents.service import document_service
from billfold.kit.errors import ResourceNotFound
from billfold.kit.http import DbSession
from billfold.kit.openapi import error_responses
from billfold.kit.schemas import WireRouter
from billfold.teams.auth import BillingRead

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
def download(scope: BillingRead, session: DbSession, name: str) -> Response:
    """An invoice's PDF (or a monthly invoice's lines as CSV), exactly as rendered at
    finalization."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ResourceNotFound(f"no invoice document {name!r}", code="invoice_document_not_found")
    document = document_service.document(
        session,
        scope.team_id,
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
