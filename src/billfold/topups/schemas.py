"""The wire of a top-up (spec section 12)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import StringConstraints

from billfold.kit.schemas import Cent, Int64, WireModel, cent
from billfold.ledger.schemas import (
    Change,
    PaymentProcessor,
)
from billfold.topups.models import Topup


class TopUpRequest(WireModel):
    amount: Cent


class TopUpResponse(WireModel):
    change: Change


def topup_change(topup: Topup, invoice_number: str | None) -> Change:
    """A top-up on the wire, in whatever state it is; its time is when it was asked for."""
    return Change(
        team_id=str(topup.team_id),
        change_origin=topup.origin,  # PURCHASE, or AUTO_PURCHASE for an auto top-up
        topup_status=topup.status,
        amount=cent(-topup.amount_cents),
        invoice_id=topup.invoice_id,
        invoice_number=invoice_number if topup.invoice_id else None,
        create_time=topup.created_at,
        create_ts=topup.created_at,
        payment_processor=PaymentProcessor(
            # The sandbox (and any processor without its own kind) is EXTERNAL.
            kind="STRIPE" if topup.provider == "stripe" else "EXTERNAL",
            external_party=topup.provider,
            external_invoice_id=topup.provider_charge_id,
        ),
    )


class RefundRequest(WireModel):
    """``amount`` in cents (left out: all that is left of the purchase)."""

    amount: Int64 | None = None
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] = ""
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)]


def topup_event(topup: Topup, invoice_number: str | None = None) -> dict[str, Any]:
    """``data`` of ``topup.succeeded`` / ``topup.failed`` (and ``auto_topup.succeeded`` /
    ``auto_topup.failed``): the top-up's id, its amount in cents
    and the balance change as the prepaid balance lists it (``teamId`` is added by enqueue)."""
    change = topup_change(topup, invoice_number)
    return {
        "topupId": str(topup.id),
        "amount": str(topup.amount_cents),
        "change": change.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
