"""Top-ups: buying prepaid credit with the team's default card, two-phase (see TopupService)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.invoicing.numbers import invoice_numbers
from billfold.invoicing.service import invoicing_service
from billfold.kit.clock import utc_now
from billfold.kit.db import transaction
from billfold.kit.errors import BadRequest, Conflict, InvalidField
from billfold.kit.money import Cents
from billfold.ledger.schemas import (
    AUTO_PURCHASE,
    FAILED_TO_CHARGE,
    PURCHASE,
    SUCCEEDED,
    TO_CHARGE,
    Change,
    PrepaidBalance,
)
from billfold.ledger.service import ledger_service
from billfold.outbox.events import (
    AUTO_TOPUP_FAILED,
    AUTO_TOPUP_SUCCEEDED,
    TOPUP_FAILED,
    TOPUP_SUCCEEDED,
)
from billfold.outbox.writer import enqueue
from billfold.payments.faults import crash_point
from billfold.payments.models import PaymentMethod
from billfold.payments.provider import (
    ChargeResult,
    ChargeStatus,
    PaymentProvider,
    ProviderError,
    ProviderUnavailable,
)
from billfold.payments.service import payment_method_service
from billfold.teams.service import team_service
from billfold.topups.balance import prepaid_balance_service
from billfold.topups.models import Topup
from billfold.topups.schemas import topup_change, topup_event

log = logging.getLogger("billfold.topups")


# A pending top-up younger than this may still be in its first request's hands (between commit and
# the provider's answer); only older ones are charged again (same key) when the provider has no
# record of them. Finding a charge the provider already made never waits.
PENDING_RETRY_AFTER = timedelta(seconds=60)


# Pending top-ups resolved per call (oldest first), so one call's latency stays bounded.
RESOLVE_BATCH = 20


class AutoTopupOutcomes(Protocol):
    """Told, in the transaction that settles it, how an auto top-up ended (SUCCEEDED or
    FAILED_TO_CHARGE): the failures-in-a-row count and turning auto top-up off live above
    (``autotopup.service.AutoTopupService``, handed in by wiring.py). Whoever settles an auto
    top-up -- the charger, a webhook, reconciliation, the team's next call -- settles it here."""

    def auto_topup_settled(self, session: Session, topup: Topup) -> None: ...


@dataclass(frozen=True)
class TopupOutcome:
    change: Change
    status: str  # TO_CHARGE | SUCCEEDED | FAILED_TO_CHARGE
    failure_code: str
    failure_message: str
    replayed: bool  # the answer of an earlier request (same Idempotency-Key, or the pending one)


class TopupService:
    """Top-ups are two-phase (TigerBeetle's pending transfers), the one flow that commits in steps:

    1. a short transaction commits the top-up as ``TO_CHARGE`` (after every validation);
    2. the card is charged *outside* any transaction, with the top-up's id as the provider's
       idempotency key -- holding a transaction (and the account lock) across a network call would
       stall every writer of the team's ledger;
    3. a second short transaction settles it: ``SUCCEEDED`` appends the purchase entry and the
       receipt invoice, ``FAILED_TO_CHARGE`` appends nothing.

    A crash or a provider timeout between 1 and 3 leaves ``TO_CHARGE``; it is resolved by asking
    the provider (``find_charge`` with the same key) on the team's next top-up or balance call and
    by ``billfold credits resolve-pending``. A charge is only ever repeated with the same key, which
    the provider answers with the first charge: a top-up can never be charged twice.

    The methods take a ``sessionmaker`` and open their own transactions (kit.db.transaction).

    Auto top-ups (``origin`` AUTO_PURCHASE) are top-ups whose phase 1 is done by the write that
    took the credit below the team's threshold (autotopup/service.py), and whose phase 2 runs in
    a serving process (autotopup/charger.py) through :meth:`resolve`; they settle here like any
    other, with ``auto_topup.*`` events and the outcome handed to :class:`AutoTopupOutcomes`.
    """

    def __init__(self) -> None:
        self._auto: AutoTopupOutcomes | None = None

    def use(self, outcomes: AutoTopupOutcomes | None) -> None:
        """Who is told how auto top-ups end (wiring.py)."""
        self._auto = outcomes

    def top_up(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        settings: Settings,
        team_id: uuid.UUID,
        amount: Cents,
        idempotency_key: str | None,
    ) -> TopupOutcome:
        cents = abs(amount)  # the sign is ignored (spec §12)
        if cents == 0:
            raise InvalidField("amount.val", "must not be zero")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise InvalidField(
                "Idempotency-Key",
                "must be 1 to 255 characters",
                code="invalid_idempotency_key",
            )
        fingerprint = hashlib.sha256(f"top-up amount={cents}".encode()).hexdigest()
        if idempotency_key is not None:
            # A keyed call is a new top-up whatever else is pending: settle what the provider
            # already answered first. (A keyless call must see the pending one as it is.)
            self.resolve_pending(sessions, provider, team_id)
        topup, existing = self._begin(
            sessions, settings, team_id, cents, idempotency_key, fingerprint
        )
        if existing:
            # Same key: charging again with the same key is safe and gives the first answer.
            # The pending purchase of a keyless call: charge again only if it is stale.
            retry = idempotency_key is not None or self._stale(topup)
            if topup.status == TO_CHARGE:
                topup = self._resolve(sessions, provider, topup, retry=retry)
        else:
            topup = self._settle_attempt(sessions, provider, topup)
        with transaction(sessions) as session:
            number = invoice_numbers(session, [topup.invoice_id] if topup.invoice_id else [])
        return TopupOutcome(
            change=topup_change(topup, number.get(topup.invoice_id or "")),
            status=topup.status,
            failure_code=topup.failure_code,
            failure_message=topup.failure_message,
            replayed=existing,
        )

    def balance(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, team_id: uuid.UUID
    ) -> PrepaidBalance:
        """The balance of spec §11, after resolving the team's pending top-ups."""
        self.resolve_pending(sessions, provider, team_id)
        with transaction(sessions) as session:
            return prepaid_balance_service.balance(session, team_id)

    def resolve_pending(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        team_id: uuid.UUID | None = None,
        *,
        limit: int = RESOLVE_BATCH,
    ) -> list[Topup]:
        """Resolve pending top-ups (of one team, or all), oldest first; returns them as they end."""
        with transaction(sessions) as session:
            stmt = select(Topup).where(Topup.status == TO_CHARGE)
            if team_id is not None:
                stmt = stmt.where(Topup.team_id == team_id)
            pending = list(session.scalars(stmt.order_by(Topup.created_at, Topup.id).limit(limit)))
        return [
            self._resolve(sessions, provider, topup, retry=self._stale(topup)) for topup in pending
        ]

    def resolve(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, topup: Topup
    ) -> Topup:
        """Resolve one pending top-up now (reconciliation: it is old enough to be retried)."""
        return self._resolve(sessions, provider, topup, retry=True)

    def settle_charge(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, charge_id: str
    ) -> Topup | None:
        """Settle the pending top-up whose provider charge (a PaymentIntent) this is, from what the
        provider says of it now (a webhook, reconciliation); None when no pending top-up has it."""
        with transaction(sessions) as session:
            topup = session.scalars(
                select(Topup).where(
                    Topup.provider_charge_id == charge_id, Topup.status == TO_CHARGE
                )
            ).first()
        if topup is None:
            return None
        return self._resolve(sessions, provider, topup, retry=True)

    @staticmethod
    def _stale(topup: Topup) -> bool:
        return utc_now() - topup.created_at >= PENDING_RETRY_AFTER

    def _begin(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        team_id: uuid.UUID,
        cents: Cents,
        idempotency_key: str | None,
        fingerprint: str,
    ) -> tuple[Topup, bool]:
        """Phase 1: the existing top-up to answer with, or a new ``TO_CHARGE`` one, committed."""
        try:
            with transaction(sessions) as session:
                return self._begin_in(
                    session, settings, team_id, cents, idempotency_key, fingerprint
                )
        except IntegrityError:
            # Another request with the same key inserted first (the unique constraint on
            # (team_id, idempotency_key) is the last line; the account lock makes this rare).
            if idempotency_key is None:
                raise
            with transaction(sessions) as session:
                found = self._by_key(session, team_id, idempotency_key)
                if found is None:
                    raise
                self._same_request(found, fingerprint)
                return found, True

    def _begin_in(
        self,
        session: Session,
        settings: Settings,
        team_id: uuid.UUID,
        cents: Cents,
        idempotency_key: str | None,
        fingerprint: str,
    ) -> tuple[Topup, bool]:
        # The account lock serializes the starts of one team's top-ups: a keyless call sees a
        # purchase that a concurrent call has just begun, and two calls with one key see each other.
        ledger_service.lock_account(session, team_id)
        if idempotency_key is not None:
            found = self._by_key(session, team_id, idempotency_key)
            if found is not None:
                self._same_request(found, fingerprint)
                return found, True
        else:
            pending = session.scalars(
                select(Topup)
                .where(
                    Topup.team_id == team_id,
                    Topup.status == TO_CHARGE,
                    Topup.origin == PURCHASE,  # a pending auto top-up is not this call's
                )
                .order_by(Topup.created_at, Topup.id)
                .limit(1)
            ).first()
            if pending is not None:
                return pending, True
        if not settings.topup_min_cents <= cents <= settings.topup_max_cents:
            raise BadRequest(
                f"amount.val: a top-up is between {settings.topup_min_cents} and "
                f"{settings.topup_max_cents} cents",
                code="amount_out_of_range",
                field="amount.val",
            )
        team = team_service.get(session, team_id)
        method = payment_method_service.default_for(session, team)
        if method is None:
            raise BadRequest(
                "the team has no default payment method to charge",
                code="no_default_payment_method",
            )
        topup = Topup(
            id=uuid.uuid4(),
            team_id=team_id,
            amount_cents=cents,
            status=TO_CHARGE,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            payment_method_id=method.id,
            provider=method.provider,
            provider_charge_id="",
            failure_code="",
            failure_message="",
            ledger_entry_id=None,
            invoice_id=None,
            created_at=utc_now(),
            settled_at=None,
        )
        session.add(topup)
        session.flush()
        return topup, False

    @staticmethod
    def _by_key(session: Session, team_id: uuid.UUID, idempotency_key: str) -> Topup | None:
        return session.scalars(
            select(Topup).where(Topup.team_id == team_id, Topup.idempotency_key == idempotency_key)
        ).one_or_none()

    @staticmethod
    def _same_request(topup: Topup, fingerprint: str) -> None:
        if topup.request_fingerprint != fingerprint:
            raise Conflict(
                "this Idempotency-Key was used with a different request body",
                code="idempotency_key_reused",
            )

    def _charge(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, topup: Topup
    ) -> ChargeResult | None:
        """Phase 2: charge the card, outside any transaction. None: the outcome is unknown."""
        with transaction(sessions) as session:
            method = session.get(PaymentMethod, topup.payment_method_id)
            card = method.provider_ref if method is not None else ""
            customer = method.provider_customer_ref if method is not None else ""
            stored = session.scalars(
                select(Topup.provider_charge_id).where(Topup.id == topup.id)
            ).one()
        try:
            if provider.two_step:
                return self._charge_two_step(sessions, provider, topup, customer, card, stored)
            return provider.charge(
                customer,
                card,
                Cents(topup.amount_cents),
                idempotency_key=str(topup.id),
                description=f"Billfold prepaid credits (top-up {topup.id})",
            )
        except ProviderUnavailable as exc:
            log.warning("top-up %s: provider unavailable, left pending: %s", topup.id, exc)
            return None
        except ProviderError as exc:
            # The provider refused the request: nothing was charged.
            return ChargeResult(
                ChargeStatus.DECLINED, "", Cents(topup.amount_cents), exc.code, exc.message
            )

    def _charge_two_step(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        topup: Topup,
        customer: str,
        card: str,
        stored: str,
    ) -> ChargeResult | None:
        """Phase 2 with a two-step provider (Stripe): create the PaymentIntent, commit its id on
        the top-up, then confirm it. A retry finds the stored id and never creates a second."""
        charge_id: str | None = stored
        if not charge_id:
            created = provider.create_charge(
                customer,
                card,
                Cents(topup.amount_cents),
                idempotency_key=str(topup.id),
                description=f"Billfold prepaid credits (top-up {topup.id})",
                metadata={"billfold_team": str(topup.team_id), "billfold_topup": str(topup.id)},
            )
            charge_id = self._store_charge_id(sessions, topup.id, created)
            if charge_id is None:
                return None  # settled meanwhile by another request
            crash_point("topup_after_create")
        result = provider.confirm_charge(charge_id)
        crash_point("topup_after_confirm")
        return result

    @staticmethod
    def _store_charge_id(
        sessions: sessionmaker[Session], topup_id: uuid.UUID, charge_id: str
    ) -> str | None:
        """Commit the provider's charge id on the pending top-up; the id to confirm (the one a
        concurrent request stored first wins; ours is then never confirmed), or None when the
        top-up is no longer pending."""
        with transaction(sessions) as session:
            topup = session.scalars(
                select(Topup)
                .where(Topup.id == topup_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).one()
            if topup.status != TO_CHARGE:
                return None
            if not topup.provider_charge_id:
                topup.provider_charge_id = charge_id
            return topup.provider_charge_id

    def _settle_attempt(
        self, sessions: sessionmaker[Session], provider: PaymentProvider, topup: Topup
    ) -> Topup:
        result = self._charge(sessions, provider, topup)
        return topup if result is None else self._settle(sessions, topup.id, result)

    def _resolve(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        topup: Topup,
        *,
        retry: bool,
    ) -> Topup:
        """Ask the provider what became of a pending top-up; settle it if it knows."""
        if provider.two_step:
            # The stored PaymentIntent says it all: confirming it again is never a second charge
            # (the provider answers a confirmed one as it stands). Without one, the first request
            # may still be creating it: only a stale top-up gets one here.
            if not topup.provider_charge_id and not retry:
                return topup
            return self._settle_attempt(sessions, provider, topup)
        try:
            result = provider.find_charge(str(topup.id))
        except ProviderUnavailable:
            return topup
        if result is None:
            if not retry:
                return topup
            return self._settle_attempt(sessions, provider, topup)
        return self._settle(sessions, topup.id, result)

    def _settle(
        self, sessions: sessionmaker[Session], topup_id: uuid.UUID, result: ChargeResult
    ) -> Topup:
        """Phase 3, idempotent: whoever settles first under the row lock decides; others read."""
        with transaction(sessions) as session:
            topup = session.scalars(
                select(Topup)
                .where(Topup.id == topup_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            ).one()
            if topup.status != TO_CHARGE:
                return topup
            if result.pending:
                # requires_action / processing: the webhook or reconciliation settles it later.
                topup.provider_charge_id = result.charge_id or topup.provider_charge_id
                return topup
            now = utc_now()
            topup.provider_charge_id = result.charge_id or topup.provider_charge_id
            topup.settled_at = now
            if not result.succeeded:
                topup.status = FAILED_TO_CHARGE
                topup.failure_code = result.failure_code or "card_declined"
                topup.failure_message = result.failure_message or "the card was declined"
                auto = topup.origin == AUTO_PURCHASE
                event = AUTO_TOPUP_FAILED if auto else TOPUP_FAILED
                enqueue(session, event, topup.team_id, topup_event(topup))
                if auto and self._auto is not None:
                    self._auto.auto_topup_settled(session, topup)
                return topup
            if result.amount != topup.amount_cents:
                log.error(
                    "top-up %s: provider charged %s cents, %s asked; crediting what was charged",
                    topup.id,
                    result.amount,
                    topup.amount_cents,
                )
            ledger_service.lock_account(session, topup.team_id)  # before the invoice counter
            invoice = invoicing_service.issue_receipt(
                session,
                team_id=topup.team_id,
                topup_id=topup.id,
                amount=result.amount,
                payment_method_id=topup.payment_method_id,
                at=now,
            )
            entry, _ = ledger_service.append(
                session,
                topup.team_id,
                kind="purchase",
                credit_cents=result.amount,
                idempotency_key=f"topup:{topup.id}",
                reference=result.charge_id,
                description=(
                    "prepaid credits auto top-up"
                    if topup.origin == AUTO_PURCHASE
                    else "prepaid credits top-up"
                ),
                topup_id=topup.id,
                invoice_id=invoice.id,
            )
            topup.status = SUCCEEDED
            topup.ledger_entry_id = entry.id
            topup.invoice_id = invoice.id
            session.flush()
            auto = topup.origin == AUTO_PURCHASE
            event = AUTO_TOPUP_SUCCEEDED if auto else TOPUP_SUCCEEDED
            enqueue(session, event, topup.team_id, topup_event(topup, invoice.number))
            if auto and self._auto is not None:
                self._auto.auto_topup_settled(session, topup)
            return topup


topup_service = TopupService()
