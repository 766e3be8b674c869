"""The prepaid ledger: entries, grants, the expiry of promotional credit, top-ups and the balance.

Every entry goes through :meth:`LedgerService.append`: it locks the team's credit account row, books
due expiries first, and moves the cached balance in the same transaction as the entry. Services take
the session and never commit, except :class:`TopupService`, which waits on the payment provider and
so commits in steps (see its docstring).

Lock order (PostgreSQL row locks), the same in every flow so two flows never wait on each other in a
cycle: a top-up row, then the team's credit account, then the invoice counter.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.cycles.models import BillingCycle
from billfold.cycles.periods import month_end, month_start
from billfold.invoicing.models import Invoice, InvoiceLine
from billfold.invoicing.numbers import next_invoice_number
from billfold.kit.clock import rfc3339, utc_now
from billfold.kit.db import dialect_insert, transaction
from billfold.kit.errors import BadRequest, Conflict, InvalidField
from billfold.kit.money import Cents, Pico, cents_to_pico, round_to_cents
from billfold.kit.schemas import cent
from billfold.ledger.lots import replay, unexpired_grants
from billfold.ledger.models import CreditAccount, LedgerEntry, Topup
from billfold.ledger.position import credit_position, posted_credit
from billfold.ledger.schemas import (
    FAILED_TO_CHARGE,
    MANUAL,
    PURCHASE,
    REFUND,
    SPEND,
    SUCCEEDED,
    TO_CHARGE,
    Change,
    PaymentProcessor,
    PrepaidBalance,
)
from billfold.metering.models import UsageEvent, UsageRollupByVersion
from billfold.payments.models import PaymentMethod
from billfold.payments.provider import (
    ChargeResult,
    ChargeStatus,
    PaymentProvider,
    ProviderError,
    ProviderUnavailable,
)
from billfold.payments.service import payment_method_service
from billfold.pricing.models import PriceVersion
from billfold.teams.service import team_service

log = logging.getLogger("billfold.ledger")

ENTRY_KINDS = ("purchase", "grant", "spend", "refund", "expiry", "adjustment")

# Idempotency-key namespaces inside a team's ledger, so that an operator's key can never collide
# with a key Billfold derives itself ("topup:<id>", "spend:YYYY-MM", "expiry:<grant id>").
CREDIT_KEY_PREFIX = "credit:"
# Largest single grant or adjustment: $10 billion. Keeps sums far inside int64.
MAX_GRANT_CENTS = 10**12


class LedgerService:
    def lock_account(self, session: Session, team_id: uuid.UUID) -> CreditAccount:
        """The team's credit account, created if needed, locked until the transaction ends.

        Every writer of a team's ledger goes through this lock (pgledger's pattern), so the cached
        balance never loses an update and checks against it hold until commit.
        """
        insert = dialect_insert(session)
        session.execute(
            insert(CreditAccount)
            .values(team_id=team_id, balance_cents=0, entries=0, updated_at=utc_now())
            .on_conflict_do_nothing(index_elements=["team_id"])
        )
        account = session.scalars(
            select(CreditAccount)
            .where(CreditAccount.team_id == team_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        return account

    def find(
        self, session: Session, team_id: uuid.UUID, idempotency_key: str
    ) -> LedgerEntry | None:
        return session.scalars(
            select(LedgerEntry).where(
                LedgerEntry.team_id == team_id, LedgerEntry.idempotency_key == idempotency_key
            )
        ).one_or_none()

    def entries(self, session: Session, team_id: uuid.UUID) -> list[LedgerEntry]:
        """The team's entries in booking order."""
        return list(
            session.scalars(
                select(LedgerEntry).where(LedgerEntry.team_id == team_id).order_by(LedgerEntry.seq)
            )
        )

    def derived_balance(self, session: Session, team_id: uuid.UUID) -> Cents:
        """The posted credit re-derived from the entries (must equal the cached balance)."""
        total = session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.credit_cents), 0)).where(
                LedgerEntry.team_id == team_id
            )
        )
        return Cents(int(total or 0))

    def append(
        self,
        session: Session,
        team_id: uuid.UUID,
        *,
        kind: str,
        credit_cents: int,
        idempotency_key: str,
        reference: str = "",
        description: str = "",
        cycle: tuple[int, int] | None = None,
        expires_at: datetime | None = None,
        topup_id: uuid.UUID | None = None,
        invoice_id: str | None = None,
    ) -> tuple[LedgerEntry, bool]:
        """Append one entry; a repeated ``idempotency_key`` returns the first entry unchanged.

        Grants that fell due are expired first, in the same locked transaction, so a new entry
        (a SPEND at cycle close included) never draws on expired credit. Only grants may carry
        ``expires_at``; expiry entries are booked by :meth:`expire_due` alone.

        Returns ``(entry, created)``.
        """
        if kind not in ENTRY_KINDS:
            raise ValueError(f"unknown ledger entry kind {kind!r}")
        if kind == "expiry":
            raise ValueError("expiry entries are booked by expire_due, never appended directly")
        if expires_at is not None and (kind != "grant" or credit_cents <= 0):
            raise ValueError("only a grant of positive credit may expire")
        account = self.lock_account(session, team_id)
        existing = self.find(session, team_id, idempotency_key)
        if existing is not None:
            return existing, False
        now = utc_now()
        self._expire_locked(session, account, now)
        entry = self._book(
            session,
            account,
            now,
            kind=kind,
            credit_cents=credit_cents,
            idempotency_key=idempotency_key,
            reference=reference,
            description=description,
            cycle=cycle,
            expires_at=expires_at,
            topup_id=topup_id,
            invoice_id=invoice_id,
        )
        return entry, True

    def _book(
        self,
        session: Session,
        account: CreditAccount,
        now: datetime,
        *,
        kind: str,
        credit_cents: int,
        idempotency_key: str,
        reference: str = "",
        description: str = "",
        cycle: tuple[int, int] | None = None,
        expires_at: datetime | None = None,
        topup_id: uuid.UUID | None = None,
        invoice_id: str | None = None,
    ) -> LedgerEntry:
        """Insert an entry under the (held) account lock and move the cached figures with it."""
        account.entries += 1
        entry = LedgerEntry(
            id=uuid.uuid4(),
            team_id=account.team_id,
            kind=kind,
            credit_cents=credit_cents,
            idempotency_key=idempotency_key,
            reference=reference,
            description=description,
            cycle_year=cycle[0] if cycle else None,
            cycle_month=cycle[1] if cycle else None,
            expires_at=expires_at,
            topup_id=topup_id,
            invoice_id=invoice_id,
            created_at=now,
            seq=account.entries,
        )
        session.add(entry)
        account.balance_cents += credit_cents
        account.updated_at = now
        if expires_at is not None and (
            account.next_expiry_at is None or expires_at < account.next_expiry_at
        ):
            account.next_expiry_at = expires_at
        session.flush()
        return entry

    # --- expiry of promotional credit -----------------------------------------------------------

    def expire_due(
        self, session: Session, team_id: uuid.UUID, now: datetime | None = None
    ) -> list[LedgerEntry]:
        """Book the expiry of every grant of the team due at ``now``; returns the new entries.

        Lazy and cheap: one read of the account's cached ``next_expiry_at`` decides; only when a
        grant is due is the account locked. Called by every reader of the credit position
        (position.credit_position) and every writer (append), so no balance a client sees ever
        includes expired credit, and no background job is needed.
        """
        now = now or utc_now()
        due = session.scalar(
            select(CreditAccount.next_expiry_at).where(CreditAccount.team_id == team_id)
        )
        if due is None or due > now:
            return []
        account = self.lock_account(session, team_id)
        return self._expire_locked(session, account, now)

    def teams_with_due_expiries(self, session: Session, now: datetime) -> list[uuid.UUID]:
        return list(
            session.scalars(
                select(CreditAccount.team_id)
                .where(CreditAccount.next_expiry_at <= now)
                .order_by(CreditAccount.team_id)
            )
        )

    def _expire_locked(
        self, session: Session, account: CreditAccount, now: datetime
    ) -> list[LedgerEntry]:
        """Expire due grants, soonest first; each loses exactly its unused rest at its expiry.

        The rest is decided by what happened *before* the expiry instant, whenever this runs:
        booked entries (nothing can be booked after the instant without passing through here
        first), and the credit that open cycles' usage with event times before the instant drew
        (:meth:`credit_used_before`). A grant with nothing left still gets its (zero) expiry entry:
        it marks the grant done and makes the expiry idempotent ("expiry:<grant id>").
        """
        if account.next_expiry_at is None or account.next_expiry_at > now:
            return []
        lots = replay(self.entries(session, account.team_id))
        booked: list[LedgerEntry] = []
        for grant in unexpired_grants(lots):
            assert grant.expires_at is not None
            if grant.expires_at > now:
                break
            used = self.credit_used_before(
                session, account.team_id, grant.expires_at, Cents(account.balance_cents)
            )
            rest = lots.unused_at_expiry(grant.entry_id, used)
            booked.append(
                self._book(
                    session,
                    account,
                    now,
                    kind="expiry",
                    credit_cents=-rest,
                    idempotency_key=f"expiry:{grant.entry_id}",
                    reference=str(grant.entry_id),
                    description=f"unused promotional credit expired at {rfc3339(grant.expires_at)}",
                )
            )
            grant.remaining -= rest
            grant.expired = True
        remaining = unexpired_grants(lots)
        account.next_expiry_at = remaining[0].expires_at if remaining else None
        session.flush()
        return booked

    def credit_used_before(
        self, session: Session, team_id: uuid.UUID, at: datetime, posted: Cents
    ) -> Cents:
        """Credit that open cycles' usage with event time before ``at`` draws, by the position's
        rule (posted credit pays open cycles' spend) restricted to that usage.

        A cycle that ended by ``at`` counts whole; the cycle containing ``at`` counts the usage of
        its events before ``at``, rated as its lines are (one rounding per price version, half up);
        later cycles count nothing.
        """
        spend = 0
        cycles = session.execute(
            select(BillingCycle.year, BillingCycle.month, BillingCycle.spend_cents).where(
                BillingCycle.team_id == team_id, BillingCycle.closed_at.is_(None)
            )
        ).all()
        for year, month, spend_cents in cycles:
            if month_end(year, month) <= at:
                spend += spend_cents
            elif month_start(year, month) < at:
                spend += self._spend_before(session, team_id, month_start(year, month), at)
        return Cents(min(max(posted, 0), spend))

    def _spend_before(
        self, session: Session, team_id: uuid.UUID, start: datetime, at: datetime
    ) -> int:
        # Whole 15-minute rollup buckets (by version) before the one holding ``at``, then the raw
        # events of that last partial bucket (still within retention: the cycle is open).
        bucket = at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)
        quantities: dict[int, int] = defaultdict(int)
        rollups = session.execute(
            select(UsageRollupByVersion.price_version_id, func.sum(UsageRollupByVersion.quantity))
            .where(
                UsageRollupByVersion.team_id == team_id,
                UsageRollupByVersion.bucket_start >= start,
                UsageRollupByVersion.bucket_start < bucket,
            )
            .group_by(UsageRollupByVersion.price_version_id)
        ).all()
        events = session.execute(
            select(UsageEvent.price_version_id, func.sum(UsageEvent.quantity))
            .where(
                UsageEvent.team_id == team_id,
                UsageEvent.ts >= bucket,
                UsageEvent.ts < at,
                UsageEvent.canceled_at.is_(None),  # as the rollups: metering/cancellation.py
            )
            .group_by(UsageEvent.price_version_id)
        ).all()
        for version_id, quantity in (*rollups, *events):
            quantities[int(version_id)] += int(quantity or 0)
        if not quantities:
            return 0
        rows = session.execute(
            select(PriceVersion.id, PriceVersion.unit_price_pico).where(
                PriceVersion.id.in_(list(quantities))
            )
        ).all()
        prices = {int(version_id): int(price) for version_id, price in rows}
        return sum(
            round_to_cents(Pico(quantity * prices[version_id]))
            for version_id, quantity in quantities.items()
        )

    # --- operator grants ------------------------------------------------------------------------

    def grant(
        self,
        session: Session,
        team_id: uuid.UUID,
        *,
        amount: int,
        reason: str,
        idempotency_key: str | None,
        expires_at: datetime | None,
    ) -> tuple[LedgerEntry, bool]:
        """Grant credit (``amount`` > 0, optionally expiring) or take it back (``amount`` < 0, an
        adjustment, at most the credit the team has left). Returns ``(entry, created)``.

        A repeated ``idempotency_key`` returns the first entry if the request is the same, and is a
        409 if it differs; nothing changes either way.
        """
        if amount == 0:
            raise InvalidField("amount", "must not be zero")
        if abs(amount) > MAX_GRANT_CENTS:
            raise InvalidField(
                "amount", f"must be at most {MAX_GRANT_CENTS} cents", code="amount_out_of_range"
            )
        if expires_at is not None and amount < 0:
            raise InvalidField("expiresAt", "only a grant (a positive amount) can expire")
        team_service.get(session, team_id)
        key = CREDIT_KEY_PREFIX + (idempotency_key or f"auto-{uuid.uuid4().hex}")
        self.lock_account(session, team_id)
        existing = self.find(session, team_id, key)
        if existing is not None:
            if (existing.credit_cents, existing.description, existing.expires_at) != (
                amount,
                reason,
                expires_at,
            ):
                raise Conflict(
                    "this idempotencyKey was used with a different request",
                    code="idempotency_key_reused",
                    field="idempotencyKey",
                )
            return existing, False
        now = utc_now()
        if expires_at is not None and expires_at <= now:
            raise InvalidField("expiresAt", "must be in the future")
        if amount < 0:
            # What may be taken back is what the team still has: posted credit less what open
            # cycles already used (taking that would turn paid usage into postpaid usage).
            left = credit_position(session, team_id, now).credit_left
            if left + amount < 0:
                raise BadRequest(
                    f"the adjustment exceeds the team's credit left ({left} cents)",
                    code="insufficient_credit",
                    field="amount",
                )
        return self.append(
            session,
            team_id,
            kind="grant" if amount > 0 else "adjustment",
            credit_cents=amount,
            idempotency_key=key,
            description=reason,
            expires_at=expires_at,
        )

    # --- the balance (spec §11) -----------------------------------------------------------------

    def balance(self, session: Session, team_id: uuid.UUID) -> PrepaidBalance:
        """The prepaid balance of spec §11: the *posted* ledger, as upstream. Newest first.

        ``changes`` are the ledger entries (purchases, grants, adjustments, expiries, refunds and
        the SPEND entry of each closed cycle, booked by cycle close) plus the failed and pending
        purchases, which are listed but do not count; ``total`` = -(posted credit). An open
        cycle's spend is not in it: credit that open cycles draw is posted only when the cycle
        closes, as one SPEND entry. The live figure (credit left now) is the preview's and the
        spend check's (ledger/position.py), never this one.
        """
        self.expire_due(session, team_id)  # so the posted credit holds no expired credit
        posted = posted_credit(session, team_id)
        topups = {t.id: t for t in session.scalars(select(Topup).where(Topup.team_id == team_id))}
        numbers = invoice_numbers(
            session, [t.invoice_id for t in topups.values() if t.invoice_id is not None]
        )
        dated: list[tuple[datetime, int, Change]] = []
        for entry in self.entries(session, team_id):
            if entry.credit_cents == 0:
                continue  # a grant that expired fully used: no change to show
            topup = topups.get(entry.topup_id) if entry.topup_id else None
            if topup is not None:
                change = topup_change(topup, numbers.get(topup.invoice_id or ""))
            else:
                change = entry_change(entry)
            dated.append((change.create_time, entry.seq, change))
        for topup in topups.values():
            if topup.status != SUCCEEDED:
                change = topup_change(topup, None)
                dated.append((change.create_time, 0, change))
        dated.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return PrepaidBalance(changes=[change for _, _, change in dated], total=cent(-posted))


def invoice_numbers(session: Session, invoice_ids: Sequence[str]) -> dict[str, str]:
    if not invoice_ids:
        return {}
    rows = session.execute(
        select(Invoice.id, Invoice.number).where(Invoice.id.in_(list(invoice_ids)))
    ).all()
    return {invoice_id: number for invoice_id, number in rows}


_ORIGINS = {"purchase": PURCHASE, "spend": SPEND, "refund": REFUND}


def entry_change(entry: LedgerEntry) -> Change:
    """An entry on the wire. Grants, adjustments and expiries are MANUAL (operator-made)."""
    origin = _ORIGINS.get(entry.kind, MANUAL)
    spend = origin == SPEND
    processor = None
    if origin == PURCHASE:
        processor = PaymentProcessor(kind="EXTERNAL", external_invoice_id=entry.reference)
    elif not spend:
        processor = PaymentProcessor(kind=MANUAL)
    return Change(
        team_id=str(entry.team_id),
        change_origin=origin,
        topup_status=SUCCEEDED if origin == PURCHASE else None,
        amount=cent(-entry.credit_cents),
        invoice_id=entry.invoice_id if origin == PURCHASE else None,
        create_time=entry.created_at,
        create_ts=entry.created_at,
        spend_bp_key_year=entry.cycle_year if spend else None,
        spend_bp_key_month=entry.cycle_month if spend else None,
        payment_processor=processor,
    )


def topup_change(topup: Topup, invoice_number: str | None) -> Change:
    """A top-up on the wire, in whatever state it is; its time is when it was asked for."""
    return Change(
        team_id=str(topup.team_id),
        change_origin=PURCHASE,
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


# --- top-ups ------------------------------------------------------------------------------------

# A pending top-up younger than this may still be in its first request's hands (between commit and
# the provider's answer); only older ones are charged again (same key) when the provider has no
# record of them. Finding a charge the provider already made never waits.
PENDING_RETRY_AFTER = timedelta(seconds=60)
# Pending top-ups resolved per call (oldest first), so one call's latency stays bounded.
RESOLVE_BATCH = 20


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
    """

    def top_up(
        self,
        sessions: sessionmaker[Session],
        provider: PaymentProvider,
        settings: Settings,
        team_id: uuid.UUID,
        amount: int,
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
            return ledger_service.balance(session, team_id)

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

    @staticmethod
    def _stale(topup: Topup) -> bool:
        return utc_now() - topup.created_at >= PENDING_RETRY_AFTER

    def _begin(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        team_id: uuid.UUID,
        cents: int,
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
        cents: int,
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
                .where(Topup.team_id == team_id, Topup.status == TO_CHARGE)
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
        try:
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
            now = utc_now()
            topup.provider_charge_id = result.charge_id
            topup.settled_at = now
            if not result.succeeded:
                topup.status = FAILED_TO_CHARGE
                topup.failure_code = result.failure_code or "card_declined"
                topup.failure_message = result.failure_message or "the card was declined"
                return topup
            if result.amount != topup.amount_cents:
                log.error(
                    "top-up %s: provider charged %s cents, %s asked; crediting what was charged",
                    topup.id,
                    result.amount,
                    topup.amount_cents,
                )
            ledger_service.lock_account(session, topup.team_id)  # before the invoice counter
            invoice = self._receipt_invoice(session, topup, result, now)
            entry, _ = ledger_service.append(
                session,
                topup.team_id,
                kind="purchase",
                credit_cents=result.amount,
                idempotency_key=f"topup:{topup.id}",
                reference=result.charge_id,
                description="prepaid credits top-up",
                topup_id=topup.id,
                invoice_id=invoice.id,
            )
            topup.status = SUCCEEDED
            topup.ledger_entry_id = entry.id
            topup.invoice_id = invoice.id
            session.flush()
            return topup

    @staticmethod
    def _receipt_invoice(
        session: Session, topup: Topup, result: ChargeResult, now: datetime
    ) -> Invoice:
        """The receipt of a paid top-up: a PAID invoice of kind "prepaid" with one line.

        Prepaid credit carries no VAT here (VAT applies to postpaid usage, spec §8). The number is
        drawn in this transaction, so a rollback gives it back (numbers stay gapless).
        """
        dedupe_key = f"prepaid:{topup.id}"
        existing = session.scalars(
            select(Invoice).where(Invoice.dedupe_key == dedupe_key)
        ).one_or_none()
        if existing is not None:
            return existing
        amount = int(result.amount)
        invoice = Invoice(
            id="inv_" + secrets.token_hex(12),
            team_id=topup.team_id,
            number=next_invoice_number(session),
            kind="prepaid",
            dedupe_key=dedupe_key,
            status="PAID",
            cycle_year=now.year,
            cycle_month=now.month,
            topup_id=topup.id,
            subtotal_cents=amount,
            tax_cents=0,
            total_cents=amount,
            usage_cents=0,
            credits_applied_cents=0,
            vat_rate="0",
            charge_attempts=[
                {"ticket": 0, "successful": True, "paymentMethodId": topup.payment_method_id}
            ],
            due_at=now,
            created_at=now,
        )
        session.add(invoice)
        session.flush()
        session.add(
            InvoiceLine(
                invoice_id=invoice.id,
                position=0,
                sku="prepaid-credits",
                price_version_id=None,
                cluster_name="",
                description="Prepaid credits",
                unit_type="",
                unit_price_pico=cents_to_pico(Cents(amount)),
                num_units=1,
                amount_cents=amount,
            )
        )
        session.flush()
        return invoice


ledger_service = LedgerService()
topup_service = TopupService()
