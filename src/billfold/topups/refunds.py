"""Refunds of purchases: money back to the card, the credit taken back (a REFUND change).

Three steps, as top-ups: (1) under the team's account lock, validate -- the purchase is the team's
paid top-up receipt, the amount is at most what is left of the purchase and at most the credit
left -- and commit nothing; (2) refund at the provider, outside any transaction, with an
idempotency key made of the team and the caller's ``idempotencyKey``; (3) under the lock again,
book the ``refund`` entry (``credit_cents = -amount``) with that same key in the ledger, so a
replay returns the first entry. A replay after a crash between (2) and (3) repeats (2) with the
same key: the sandbox and Stripe (for 24 hours) answer it with the first refund.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from billfold.invoicing.models import Invoice
from billfold.kit.clock import utc_now
from billfold.kit.db import transaction
from billfold.kit.errors import BadRequest, Conflict, ResourceNotFound, ServiceUnavailable
from billfold.kit.money import Cents
from billfold.ledger.models import LedgerEntry
from billfold.ledger.schemas import SUCCEEDED
from billfold.ledger.service import ledger_service
from billfold.payments.provider import PaymentProvider, ProviderError, ProviderUnavailable
from billfold.teams.service import team_service
from billfold.topups.models import Topup


class RefundService:
    def refund(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        team_id: uuid.UUID,
        invoice_id: str,
        amount: int | None,
        reason: str,
        idempotency_key: str,
    ) -> tuple[LedgerEntry, bool]:
        """The REFUND entry and whether it is new (False: a replay of the same key)."""
        key = f"refund:{idempotency_key}"
        with transaction(sessions) as session:
            team_service.get(session, team_id)  # 404 for an unknown team
            ledger_service.lock_account(session, team_id)
            existing = ledger_service.find(session, team_id, key)
            if existing is not None:
                self._same_request(existing, invoice_id, amount)
                return existing, False
            topup = self._purchase(session, team_id, invoice_id)
            left = topup.amount_cents - self._refunded(session, team_id, invoice_id)
            cents = left if amount is None else amount
            if cents <= 0:
                raise BadRequest(
                    "amount: a refund is a positive number of cents"
                    if amount is not None
                    else "the purchase is already refunded in full",
                    code="invalid_refund_amount",
                    field="amount",
                )
            if cents > left:
                raise BadRequest(
                    f"amount: {cents} is more than the {left} cents left of the purchase",
                    code="refund_exceeds_purchase",
                    field="amount",
                )
            credit_left = ledger_service.credit_position(session, team_id, utc_now()).credit_left
            if cents > credit_left:
                raise BadRequest(
                    f"amount: {cents} is more than the {credit_left} cents of credit left",
                    code="refund_exceeds_credit",
                    field="amount",
                )
            charge_id = topup.provider_charge_id
        try:
            refund = provider.refund(
                charge_id, Cents(cents), idempotency_key=f"refund:{team_id}:{idempotency_key}"
            )
        except ProviderError as exc:
            raise BadRequest(exc.message, code=exc.code, field="amount") from None
        except ProviderUnavailable as exc:
            raise ServiceUnavailable(
                f"the payment provider did not answer; retry with the same idempotencyKey ({exc})",
                code="provider_unavailable",
            ) from None
        with transaction(sessions) as session:
            return ledger_service.append(
                session,
                team_id,
                kind="refund",
                credit_cents=Cents(-refund.amount),
                idempotency_key=key,
                reference=refund.refund_id,
                description=reason[:500],
                invoice_id=invoice_id,
            )

    @staticmethod
    def _purchase(session: Session, team_id: uuid.UUID, invoice_id: str) -> Topup:
        invoice = session.get(Invoice, invoice_id)
        topup = (
            session.get(Topup, invoice.topup_id)
            if invoice is not None and invoice.topup_id is not None
            else None
        )
        if invoice is None or invoice.team_id != team_id or topup is None:
            raise ResourceNotFound(
                f"purchase {invoice_id!r} not found for this team", code="purchase_not_found"
            )
        if topup.status != SUCCEEDED or not topup.provider_charge_id:
            raise BadRequest("only a paid purchase can be refunded", code="purchase_not_refundable")
        return topup

    @staticmethod
    def _refunded(session: Session, team_id: uuid.UUID, invoice_id: str) -> int:
        taken = session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.credit_cents), 0)).where(
                LedgerEntry.team_id == team_id,
                LedgerEntry.kind == "refund",
                LedgerEntry.invoice_id == invoice_id,
            )
        )
        return -int(taken or 0)

    @staticmethod
    def _same_request(entry: LedgerEntry, invoice_id: str, amount: int | None) -> None:
        """A replay names the same purchase and, when it names an amount, the same amount."""
        if entry.invoice_id != invoice_id or (amount is not None and -entry.credit_cents != amount):
            raise Conflict(
                "this idempotencyKey was used with a different refund",
                code="idempotency_key_reused",
            )


refund_service = RefundService()
