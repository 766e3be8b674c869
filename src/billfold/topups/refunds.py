"""Refunds of purchases: money back to the card, the credit taken back (a REFUND change).

Two-phase, as top-ups, so that a crash never refunds twice and never loses a refund:

1. under the team's account lock, validate -- the purchase is the team's paid top-up receipt, the
   amount is at most what is left of the purchase and at most the credit left -- and commit a
   ``refunds`` row ``PENDING``. A pending refund *reserves* its amount: it counts as refunded
   when the next refund of the purchase is validated, and as spent when the next refund is held
   against the credit left, so two concurrent refunds can never together exceed either;
2. refund at the provider, outside any transaction, with the row's id as the idempotency key
   and in the refund's metadata (``billfold_refund``), and keep the provider's refund;
3. under the lock again, book the ``refund`` ledger entry (``credit_cents = -amount``, the
   purchase's charge as reference) and mark the row ``SUCCEEDED`` in one transaction; a refusal
   by the provider marks it ``FAILED`` instead, which releases the reservation.

A crash between the steps leaves the row ``PENDING``. It is resolved by a retry with the same
``idempotencyKey`` or by reconciliation (settlement/reconcile.py, :meth:`RefundService.resolve`),
both of which first *look the refund up* at the provider (Stripe: the refunds of the
PaymentIntent, the one whose metadata names the row; the sandbox: by its key), and book the one
found. Only a retry that finds none asks the provider again, with the same key; reconciliation
never does: a refund pending longer than its threshold that the provider does not know was never
made, and is marked ``FAILED`` (``refund_not_made``).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

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
from billfold.payments.faults import crash_point
from billfold.payments.provider import (
    PaymentProvider,
    ProviderError,
    ProviderUnavailable,
    RefundResult,
)
from billfold.teams.service import team_service
from billfold.topups.models import Refund, Topup

PENDING = "PENDING"
FAILED = "FAILED"


def fingerprint(invoice_id: str, amount: int | None) -> str:
    return hashlib.sha256(f"{invoice_id}\n{'' if amount is None else amount}".encode()).hexdigest()


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
            row = session.scalars(
                select(Refund).where(
                    Refund.team_id == team_id, Refund.idempotency_key == idempotency_key
                )
            ).one_or_none()
            if row is None:
                existing = ledger_service.find(session, team_id, key)
                if existing is not None:  # booked before refunds had rows
                    self._same_request(
                        existing.invoice_id, -existing.credit_cents, invoice_id, amount
                    )
                    return existing, False
                row = self._reserve(
                    session, team_id, invoice_id, amount, reason, idempotency_key, provider.name
                )
                new = True
            else:
                self._same_request(row.invoice_id, row.amount_cents, invoice_id, amount)
                new = False
                if row.status == SUCCEEDED:
                    entry = session.get(LedgerEntry, row.ledger_entry_id)
                    assert entry is not None
                    return entry, False
                if row.status == FAILED:
                    raise BadRequest(row.failure_message, code=row.failure_code, field="amount")
            refund_id, charge_id, cents = row.id, row.provider_charge_id, row.amount_cents
        # A retry of a pending refund first looks for the refund a crashed request made.
        found = None if new else self._find(provider, charge_id, refund_id)
        if found is None:
            try:
                found = provider.refund(
                    charge_id,
                    cents,
                    idempotency_key=str(refund_id),
                    metadata={"billfold_refund": str(refund_id), "billfold_team": str(team_id)},
                )
            except ProviderError as exc:
                self._fail(sessions, refund_id, exc.code, exc.message)
                raise BadRequest(exc.message, code=exc.code, field="amount") from None
            except ProviderUnavailable as exc:
                raise ServiceUnavailable(
                    "the payment provider did not answer; retry with the same idempotencyKey "
                    f"({exc})",
                    code="provider_unavailable",
                ) from None
        crash_point("refund_after_provider")
        entry, booked = self._book(sessions, refund_id, found)
        return entry, booked

    def resolve(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, refund_id: uuid.UUID
    ) -> str:
        """Settle a pending refund from what the provider knows (reconciliation): book the refund
        found, or mark the row FAILED when there is none. Never refunds. Returns the status."""
        with transaction(sessions) as session:
            row = session.get(Refund, refund_id)
            if row is None or row.status != PENDING:
                return row.status if row is not None else FAILED
            charge_id = row.provider_charge_id
        found = provider.find_refund(charge_id, str(refund_id))
        if found is None:
            self._fail(
                sessions,
                refund_id,
                "refund_not_made",
                "the refund was not made at the payment provider (found pending by reconciliation)",
            )
            return FAILED
        self._book(sessions, refund_id, found)
        return SUCCEEDED

    @staticmethod
    def pending(
        session: Session, cutoff: datetime, provider: str, team_id: uuid.UUID | None
    ) -> list[uuid.UUID]:
        """The ids of the provider's refunds pending since before ``cutoff``."""
        stmt = select(Refund.id).where(
            Refund.status == PENDING,
            Refund.provider == provider,
            Refund.created_at <= cutoff,
        )
        if team_id is not None:
            stmt = stmt.where(Refund.team_id == team_id)
        return list(session.scalars(stmt.order_by(Refund.created_at)))

    def _reserve(
        self,
        session: Session,
        team_id: uuid.UUID,
        invoice_id: str,
        amount: int | None,
        reason: str,
        idempotency_key: str,
        provider: str,
    ) -> Refund:
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
        position = ledger_service.credit_position(session, team_id, utc_now())
        credit_left = position.credit_left - self._pending(session, team_id)
        if cents > credit_left:
            raise BadRequest(
                f"amount: {cents} is more than the {credit_left} cents of credit left",
                code="refund_exceeds_credit",
                field="amount",
            )
        row = Refund(
            id=uuid.uuid4(),
            team_id=team_id,
            invoice_id=invoice_id,
            amount_cents=Cents(cents),
            reason=reason[:500],
            status=PENDING,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint(invoice_id, amount),
            provider=provider,
            provider_charge_id=topup.provider_charge_id,
            provider_refund_id="",
            failure_code="",
            failure_message="",
            ledger_entry_id=None,
            created_at=utc_now(),
            settled_at=None,
        )
        session.add(row)
        return row

    @staticmethod
    def _find(
        provider: PaymentProvider, charge_id: str, refund_id: uuid.UUID
    ) -> RefundResult | None:
        try:
            return provider.find_refund(charge_id, str(refund_id))
        except ProviderUnavailable as exc:
            raise ServiceUnavailable(
                f"the payment provider did not answer; retry with the same idempotencyKey ({exc})",
                code="provider_unavailable",
            ) from None

    @staticmethod
    def _book(
        sessions: sessionmaker[Session], refund_id: uuid.UUID, found: RefundResult
    ) -> tuple[LedgerEntry, bool]:
        """Step 3: the REFUND entry and the row SUCCEEDED, in one transaction (idempotent)."""
        with transaction(sessions) as session:
            row = session.get(Refund, refund_id)
            assert row is not None
            ledger_service.lock_account(session, row.team_id)
            session.refresh(row)
            if row.status == SUCCEEDED:
                entry = session.get(LedgerEntry, row.ledger_entry_id)
                assert entry is not None
                return entry, False
            entry, created = ledger_service.append(
                session,
                row.team_id,
                kind="refund",
                credit_cents=Cents(-found.amount),
                idempotency_key=f"refund:{row.idempotency_key}",
                # The purchase's charge (a Stripe PaymentIntent): the change's externalInvoiceId.
                reference=row.provider_charge_id,
                description=row.reason,
                invoice_id=row.invoice_id,
            )
            row.status = SUCCEEDED
            row.amount_cents = Cents(found.amount)
            row.provider_refund_id = found.refund_id
            row.ledger_entry_id = entry.id
            row.settled_at = utc_now()
            return entry, created

    @staticmethod
    def _fail(
        sessions: sessionmaker[Session], refund_id: uuid.UUID, code: str, message: str
    ) -> None:
        """The provider refused (or never made) the refund: FAILED releases the reservation."""
        with transaction(sessions) as session:
            row = session.get(Refund, refund_id)
            assert row is not None
            ledger_service.lock_account(session, row.team_id)
            session.refresh(row)
            if row.status != PENDING:
                return
            row.status = FAILED
            row.failure_code = code[:64]
            row.failure_message = message[:500]
            row.settled_at = utc_now()

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
        """What is taken of the purchase: the booked refunds and the pending reservations."""
        taken = session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.credit_cents), 0)).where(
                LedgerEntry.team_id == team_id,
                LedgerEntry.kind == "refund",
                LedgerEntry.invoice_id == invoice_id,
            )
        )
        reserved = session.scalar(
            select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
                Refund.team_id == team_id,
                Refund.invoice_id == invoice_id,
                Refund.status == PENDING,
            )
        )
        return -int(taken or 0) + int(reserved or 0)

    @staticmethod
    def _pending(session: Session, team_id: uuid.UUID) -> int:
        """The team's pending refunds, reserved against its credit left."""
        reserved = session.scalar(
            select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
                Refund.team_id == team_id, Refund.status == PENDING
            )
        )
        return int(reserved or 0)

    @staticmethod
    def _same_request(
        booked_invoice: str | None, booked_amount: int, invoice_id: str, amount: int | None
    ) -> None:
        """A replay names the same purchase and, when it names an amount, the same amount."""
        if booked_invoice != invoice_id or (amount is not None and booked_amount != amount):
            raise Conflict(
                "this idempotencyKey was used with a different refund",
                code="idempotency_key_reused",
            )


refund_service = RefundService()
