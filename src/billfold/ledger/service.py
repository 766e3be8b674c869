"""The prepaid ledger: entries, grants, the expiry of promotional credit, top-ups and the balance.

Every entry goes through :meth:`LedgerService.append`: it locks the team's credit account row, books
due expiries first, and moves the cached balance in the same transaction as the entry. Services take
the session and never commit, except :class:`TopupService`, which waits on the payment provider and
so commits in steps (see its docstring).

Lock order (PostgreSQL row locks), the same in every flow so two flows never wait on each other in a
cycle: a top-up row, then the team's credit account, then the invoice counter.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billfold.cycles.models import BillingCycle
from billfold.cycles.periods import month_end, month_start
from billfold.figures.watch import watch
from billfold.kit.clock import rfc3339, utc_now
from billfold.kit.db import dialect_insert
from billfold.kit.errors import BadRequest, Conflict, InvalidField
from billfold.kit.money import Cents, Pico, round_to_cents
from billfold.kit.schemas import cent
from billfold.ledger.lots import replay, unexpired_grants
from billfold.ledger.models import CREDIT_KEY_PREFIX, CreditAccount, LedgerEntry
from billfold.ledger.position import CreditPosition, allocate_credit
from billfold.ledger.schemas import (
    MANUAL,
    PURCHASE,
    REFUND,
    SPEND,
    SUCCEEDED,
    Change,
    PaymentProcessor,
)
from billfold.metering.models import UsageEvent, UsageRollupByVersion
from billfold.pricing.models import PriceVersion
from billfold.teams.service import team_service

log = logging.getLogger("billfold.ledger")

ENTRY_KINDS = ("purchase", "grant", "spend", "refund", "expiry", "adjustment")

# Largest single grant or adjustment: $10 billion. Keeps sums far inside int64.
MAX_GRANT_CENTS = 10**12


class LedgerService:
    # --- the credit position ------------------------------------------------------------------

    def posted_credit(self, session: Session, team_id: uuid.UUID) -> Cents:
        balance = session.scalar(
            select(CreditAccount.balance_cents).where(CreditAccount.team_id == team_id)
        )
        return Cents(balance or 0)

    def _posted_credit_at(self, session: Session, team_id: uuid.UUID, now: datetime) -> Cents:
        """The posted credit at ``now``, after booking the expiry of grants due by then."""
        row = session.execute(
            select(CreditAccount.balance_cents, CreditAccount.next_expiry_at).where(
                CreditAccount.team_id == team_id
            )
        ).one_or_none()
        if row is None:
            return Cents(0)
        if row.next_expiry_at is not None and row.next_expiry_at <= now:
            self.expire_due(session, team_id, now)
            return self.posted_credit(session, team_id)
        return Cents(row.balance_cents)

    def credit_position(
        self, session: Session, team_id: uuid.UUID, now: datetime
    ) -> CreditPosition:
        """The team's credit position now (position.py states the rule), after booking the
        expiry of grants due by ``now``: no position ever counts expired credit."""
        credit = self._posted_credit_at(session, team_id, now)
        rows = session.execute(
            select(BillingCycle.year, BillingCycle.month, BillingCycle.spend_cents)
            .where(BillingCycle.team_id == team_id, BillingCycle.closed_at.is_(None))
            .order_by(BillingCycle.year, BillingCycle.month)
        ).all()
        return allocate_credit(
            team_id, credit, {(r.year, r.month): r.spend_cents for r in rows}, now
        )

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
        credit_cents: Cents,
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
        credit_cents: Cents,
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
        # A cycle close's SPEND entry moves posted credit by what the closing cycle used of it:
        # live credit is unchanged (the close notes the team itself).
        watch.moved(session, account.team_id, credit_delta=0 if kind == "spend" else credit_cents)
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
        spend = Cents(0)
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
        return min(max(posted, Cents(0)), spend)

    def _spend_before(
        self, session: Session, team_id: uuid.UUID, start: datetime, at: datetime
    ) -> Cents:
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
            return Cents(0)
        rows = session.execute(
            select(PriceVersion.id, PriceVersion.unit_price_pico).where(
                PriceVersion.id.in_(list(quantities))
            )
        ).all()
        prices = {int(version_id): Pico(int(price)) for version_id, price in rows}
        return sum(
            (
                round_to_cents(quantity * prices[version_id])
                for version_id, quantity in quantities.items()
            ),
            Cents(0),
        )

    # --- operator grants ------------------------------------------------------------------------

    # --- for usage cancellation (metering.cancellation.BookedExpiries) ------------------------

    def booked_expiries(
        self, session: Session, team_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[tuple[datetime, datetime]]]:
        """Per team, the (expiry instant, booked at) of each grant whose expiry is booked, with the
        team's credit account locked (teams in id order), so that none is booked meanwhile."""
        expiries: dict[uuid.UUID, list[tuple[datetime, datetime]]] = {}
        for team_id in sorted(team_ids):
            account = session.scalar(
                select(CreditAccount.team_id)
                .where(CreditAccount.team_id == team_id)
                .with_for_update()
            )
            if account is None:
                continue  # no ledger: no grant
            booked = dict(
                session.execute(
                    select(LedgerEntry.reference, LedgerEntry.created_at).where(
                        LedgerEntry.team_id == team_id, LedgerEntry.kind == "expiry"
                    )
                ).all()
            )
            if not booked:
                continue
            grants = session.execute(
                select(LedgerEntry.id, LedgerEntry.expires_at).where(
                    LedgerEntry.team_id == team_id,
                    LedgerEntry.kind == "grant",
                    LedgerEntry.expires_at.is_not(None),
                )
            ).all()
            expiries[team_id] = [
                (expires_at, booked[str(grant_id)])
                for grant_id, expires_at in grants
                if expires_at is not None and str(grant_id) in booked
            ]
        return expiries

    def grant(
        self,
        session: Session,
        team_id: uuid.UUID,
        *,
        amount: Cents,
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
            left = self.credit_position(session, team_id, now).credit_left
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


_ORIGINS = {"purchase": PURCHASE, "spend": SPEND, "refund": REFUND}


def entry_change(entry: LedgerEntry) -> Change:
    """An entry on the wire. Purchases and refunds name their payment processor (STRIPE or
    EXTERNAL); grants, adjustments and expiries are MANUAL (operator-made)."""
    origin = _ORIGINS.get(entry.kind, MANUAL)
    spend = origin == SPEND
    processor = None
    if origin in (PURCHASE, REFUND):
        # A Stripe charge is a PaymentIntent (pi_...); the sandbox's charges are EXTERNAL. A
        # refund names the charge it went back to (topups/refunds.py).
        stripe = (entry.reference or "").startswith("pi_")
        processor = PaymentProcessor(
            kind="STRIPE" if stripe else "EXTERNAL", external_invoice_id=entry.reference
        )
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


# --- top-ups ------------------------------------------------------------------------------------


ledger_service = LedgerService()
