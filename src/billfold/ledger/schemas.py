"""Wire models of the prepaid ledger: the balance and top-up of the Billing Management API (spec
§11, §12) and the operator's credit grants.

Signs: the customer API shows the ledger with the spec's inverted sign (credit negative, spend
positive); the operator API speaks in credit (a grant of ``"5000"`` adds $50). Internally every
amount is signed credit (see models.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from billfold.kit.schemas import AwareUtc, Cent, Int64, UtcDateTime, WireModel
from billfold.ledger.models import CREDIT_KEY_PREFIX, LedgerEntry

# changeOrigin
PURCHASE = "PURCHASE"
AUTO_PURCHASE = "AUTO_PURCHASE"  # a purchase made by auto top-up (autotopup/)
SPEND = "SPEND"
REFUND = "REFUND"
MANUAL = "MANUAL"

# topupStatus (the values Billfold uses; the spec lists two more for invoice generation)
TO_CHARGE = "TO_CHARGE"
FAILED_TO_CHARGE = "FAILED_TO_CHARGE"
SUCCEEDED = "SUCCEEDED"


class PaymentProcessor(WireModel):
    kind: str  # UNKNOWN | STRIPE | CHECKOUT | EXTERNAL | MANUAL
    external_party: str = ""
    external_invoice_id: str = ""


class Change(WireModel):
    """One change of the prepaid balance (spec §11). Unset optional fields are left out."""

    team_id: str
    change_origin: str
    topup_status: str | None = None  # purchases only
    amount: Cent  # wire sign: credit negative, spend positive
    invoice_id: str | None = None  # purchases with a receipt invoice
    invoice_number: str | None = None
    create_time: UtcDateTime
    create_ts: UtcDateTime  # the same instant as createTime (RFC 3339)
    spend_bp_key_year: int | None = None  # SPEND only
    spend_bp_key_month: int | None = None
    payment_processor: PaymentProcessor | None = None  # left out on SPEND (no payment)

    def wire(self) -> dict[str, object]:
        """As sent: camelCase, unset fields left out (for bodies built by hand, e.g. a 402)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class PrepaidBalance(WireModel):
    changes: list[Change]
    # -(posted credit): negative while the team has credit. Open cycles' spend is not in it
    # (posted at cycle close); the live credit is the preview's (spec §8, §11).
    total: Cent


# --- operator API -----------------------------------------------------------------------------


class GrantCreditsRequest(WireModel):
    """``amount`` > 0 grants credit (optionally expiring); < 0 is an adjustment that takes credit
    back (never more than the team has left)."""

    amount: Int64
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] = ""
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    expires_at: AwareUtc | None = None


class CreditEntryOut(WireModel):
    """A ledger entry as the operator sees it: ``amount`` in credit (grant positive)."""

    entry_id: str
    team_id: str
    kind: str  # grant | adjustment | purchase | spend | refund | expiry
    amount: Int64
    reason: str
    idempotency_key: str
    expires_at: UtcDateTime | None = None
    create_time: UtcDateTime


def entry_out(entry: LedgerEntry) -> CreditEntryOut:
    return CreditEntryOut(
        entry_id=str(entry.id),
        team_id=str(entry.team_id),
        kind=entry.kind,
        amount=entry.credit_cents,
        reason=entry.description,
        idempotency_key=entry.idempotency_key.removeprefix(CREDIT_KEY_PREFIX),
        expires_at=entry.expires_at,
        create_time=entry.created_at,
    )


class CreditSummary(WireModel):
    """``billfold credits balance``: the position and the listing the team sees."""

    team_id: str
    posted_credit: Int64
    credit_left: Int64
    changes: list[Change]
    total: Cent
