"""Hypothesis state machine over the ledger service on a real database (SQLite file, PostgreSQL).

Random sequences of grants (some expiring), card top-ups, adjustments, posted spend, rated usage,
time passing and reads. After every step: the cached balance equals the sum of the entries, the
booking order is gapless, and entries never change (the database refuses UPDATE and DELETE). On
every read: ``-total`` of the balance equals the posted credit, the changes add up to ``total``, and
posted credit and every expiry equal an independent model of the rules (soonest-expiring credit
first; a grant expires with what usage before its expiry instant left of it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from billfold.config import Settings
from billfold.kit.clock import frozen
from billfold.kit.db import make_engine, make_sessionmaker, transaction
from billfold.kit.errors import BadRequest
from billfold.ledger.models import CreditAccount, LedgerEntry
from billfold.ledger.service import ledger_service
from billfold.metering.service import metering_service
from billfold.payments.provider import CardInput
from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS, SandboxProvider
from billfold.payments.service import payment_method_service
from billfold.pricing.service import pricing_service
from billfold.teams.service import team_service
from billfold.topups.balance import prepaid_balance_service
from billfold.topups.service import topup_service

START = datetime(2036, 1, 20, tzinfo=UTC)
PRICE = "0.0000003"  # USD per unit: 300,000 pico-dollars
PICO_PER_UNIT = 300_000
NEVER = datetime.max.replace(tzinfo=UTC)


def round_half_up_cents(pico: int) -> int:
    whole, rest = divmod(pico, 10**10)
    return whole + (1 if rest * 2 >= 10**10 else 0)


@dataclass
class ModelLot:
    entry_id: uuid.UUID
    seq: int
    expires_at: datetime | None
    remaining: int
    expired: bool = False

    def order(self) -> tuple[datetime, int]:
        return (self.expires_at or NEVER, self.seq)


@dataclass
class Model:
    """The rules, written out independently of billfold.ledger.lots."""

    posted: int = 0
    lots: list[ModelLot] = field(default_factory=list)
    usage: list[tuple[datetime, int]] = field(default_factory=list)
    expired_rest: dict[uuid.UUID, int] = field(default_factory=dict)

    def spend(self, before: datetime | None = None) -> int:
        """Open cycles' spend (usage with event time before ``before``), one rounding a month."""
        months: dict[tuple[int, int], int] = {}
        for ts, quantity in self.usage:
            if before is None or ts < before:
                months[(ts.year, ts.month)] = months.get((ts.year, ts.month), 0) + quantity
        return sum(round_half_up_cents(q * PICO_PER_UNIT) for q in months.values())

    def credit_left(self) -> int:
        return self.posted - min(max(self.posted, 0), self.spend())

    def expire_due(self, now: datetime) -> None:
        due = sorted(
            (
                lot
                for lot in self.lots
                if lot.expires_at and lot.expires_at <= now and not lot.expired
            ),
            key=ModelLot.order,
        )
        for grant in due:
            assert grant.expires_at is not None
            used = min(max(self.posted, 0), self.spend(before=grant.expires_at))
            ahead = sum(
                lot.remaining
                for lot in self.lots
                if lot.remaining > 0 and lot.order() < grant.order()
            )
            rest = grant.remaining - min(grant.remaining, max(used - ahead, 0))
            grant.remaining -= rest
            grant.expired = True
            self.posted -= rest
            self.expired_rest[grant.entry_id] = rest

    def add(self, entry: LedgerEntry) -> None:
        self.posted += entry.credit_cents
        self.lots.append(ModelLot(entry.id, entry.seq, entry.expires_at, entry.credit_cents))

    def debit(self, amount: int, kind: str) -> None:
        self.posted -= amount
        need = amount
        for lot in sorted(self.lots, key=ModelLot.order):
            if lot.remaining <= 0 or (lot.expired and kind != "spend"):
                continue
            taken = min(lot.remaining, need)
            lot.remaining -= taken
            need -= taken
        assert need == 0, "the service let a debit exceed the credit"


@dataclass
class Backend:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    provider: SandboxProvider
    settings: Settings
    sku: str


class LedgerMachine(RuleBasedStateMachine):
    backend: Backend

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.model = Model()
        self.keys = 0
        with frozen(self.now), transaction(self.backend.sessions) as session:
            team = team_service.create(session, "property")
            payment_method_service.add_card(
                session,
                self.backend.provider,
                team,
                CardInput(CARD_ALWAYS_SUCCEEDS, 12, 2040),
                make_default=True,
            )
            self.team_id = team.id

    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def credit_left(self) -> int:
        with frozen(self.now), transaction(self.backend.sessions) as session:
            return int(ledger_service.credit_position(session, self.team_id, self.now).credit_left)

    # --- steps ------------------------------------------------------------------------------------

    @rule(
        amount=st.integers(1, 3000),
        # Mostly expiring grants: expiries are where the rules are subtle.
        expires_in=st.one_of(
            st.none(), *[st.integers(1, 24 * 8).map(lambda h: timedelta(hours=h))] * 3
        ),
    )
    def grant(self, amount: int, expires_in: timedelta | None) -> None:
        expires_at = self.now + expires_in if expires_in else None
        with frozen(self.now), transaction(self.backend.sessions) as session:
            entry, created = ledger_service.grant(
                session,
                self.team_id,
                amount=amount,
                reason="prop",
                idempotency_key=self.key(),
                expires_at=expires_at,
            )
        assert created
        self.model.expire_due(self.now)
        self.model.add(entry)

    @rule(amount=st.integers(500, 3000))
    def top_up(self, amount: int) -> None:
        b = self.backend
        with frozen(self.now):
            outcome = topup_service.top_up(
                b.sessions, b.provider, b.settings, self.team_id, amount, self.key()
            )
        assert outcome.status == "SUCCEEDED"
        with transaction(b.sessions) as session:
            entry = session.scalars(
                select(LedgerEntry).where(
                    LedgerEntry.team_id == self.team_id,
                    LedgerEntry.invoice_id == outcome.change.invoice_id,
                )
            ).one()
        assert (entry.kind, entry.credit_cents) == ("purchase", amount)
        self.model.expire_due(self.now)
        self.model.add(entry)

    @rule(fraction=st.fractions(0, 1))
    def adjust(self, fraction: Any) -> None:
        self.model.expire_due(self.now)  # reading the credit left books due expiries
        take = int(self.credit_left() * fraction)
        if take == 0:
            return
        with frozen(self.now), transaction(self.backend.sessions) as session:
            entry, _ = ledger_service.grant(
                session,
                self.team_id,
                amount=-take,
                reason="adj",
                idempotency_key=self.key(),
                expires_at=None,
            )
        assert entry.kind == "adjustment"
        self.model.debit(take, "adjustment")

    @rule()
    def adjust_too_much(self) -> None:
        with frozen(self.now), transaction(self.backend.sessions) as session:
            left = int(ledger_service.credit_position(session, self.team_id, self.now).credit_left)
            session.rollback()  # leave the state exactly as it was (the expiry too)
        with (
            pytest.raises(BadRequest),
            frozen(self.now),
            transaction(self.backend.sessions) as session,
        ):
            ledger_service.grant(
                session,
                self.team_id,
                amount=-(left + 1),
                reason="adj",
                idempotency_key=self.key(),
                expires_at=None,
            )

    @rule(fraction=st.fractions(0, 1))
    def post_spend(self, fraction: Any) -> None:
        """A SPEND entry as cycle close books it (here without a cycle), within the credit left."""
        self.model.expire_due(self.now)
        amount = int(self.credit_left() * fraction)
        if amount == 0:
            return
        with frozen(self.now), transaction(self.backend.sessions) as session:
            ledger_service.append(
                session,
                self.team_id,
                kind="spend",
                credit_cents=-amount,
                idempotency_key=f"spend:{self.key()}",
            )
        self.model.debit(amount, "spend")

    @rule(quantity=st.integers(0, 30_000_000), minutes_ago=st.integers(0, 600))
    def usage(self, quantity: int, minutes_ago: int) -> None:
        ts = self.now - timedelta(minutes=minutes_ago)
        raw = {
            "eventId": f"e-{uuid.uuid4().hex}",
            "teamId": str(self.team_id),
            "sku": self.backend.sku,
            "quantity": str(quantity),
            "timestamp": ts.isoformat(),
        }
        with frozen(self.now), transaction(self.backend.sessions) as session:
            result = metering_service.ingest(session, self.backend.settings, [raw])
        assert result.accepted == 1, result
        self.model.usage.append((ts, quantity))

    @rule(hours=st.integers(1, 24 * 4), minutes=st.integers(0, 59))
    def time_passes(self, hours: int, minutes: int) -> None:
        self.now += timedelta(hours=hours, minutes=minutes)

    @rule()
    def read_balance(self) -> None:
        self.model.expire_due(self.now)
        with frozen(self.now), transaction(self.backend.sessions) as session:
            listing = prepaid_balance_service.balance(session, self.team_id)
            position = ledger_service.credit_position(session, self.team_id, self.now)
            spends = [e for e in ledger_service.entries(session, self.team_id) if e.kind == "spend"]
        total = int(listing.total.val)
        # The posted ledger (spec §11): open cycles' usage is not in it, no SPEND change for it;
        # the SPEND changes are the posted SPEND entries.
        assert total == -position.posted_credit
        assert [c.amount.val for c in listing.changes if c.change_origin == "SPEND"] == [
            -e.credit_cents for e in reversed(spends)
        ]
        counted = [c for c in listing.changes if c.topup_status in (None, "SUCCEEDED")]
        assert sum(c.amount.val for c in counted) == total
        assert position.posted_credit == self.model.posted
        assert position.credit_left == self.model.credit_left()

    @precondition(lambda self: len(self.model.lots) > 0)
    @rule()
    def tamper(self) -> None:
        """The database itself refuses to change or remove an entry."""
        mine = LedgerEntry.team_id == self.team_id
        for statement in (
            update(LedgerEntry).where(mine).values(credit_cents=LedgerEntry.credit_cents + 1),
            delete(LedgerEntry).where(mine),
        ):
            with (
                pytest.raises(DBAPIError, match="append-only"),
                transaction(self.backend.sessions) as session,
            ):
                session.execute(statement.execution_options(synchronize_session=False))

    # --- after every step -------------------------------------------------------------------------

    def entries(self) -> list[LedgerEntry]:
        with transaction(self.backend.sessions) as session:
            return ledger_service.entries(session, self.team_id)

    @invariant()
    def cached_balance_is_the_sum_of_the_entries(self) -> None:
        with transaction(self.backend.sessions) as session:
            account = session.get(CreditAccount, self.team_id)
            derived = ledger_service.derived_balance(session, self.team_id)
            rows = ledger_service.entries(session, self.team_id)
        balance = account.balance_cents if account else 0
        assert balance == derived == sum(e.credit_cents for e in rows)
        assert [e.seq for e in rows] == list(range(1, len(rows) + 1))
        assert balance >= 0

    @invariant()
    def ledger_follows_the_rules(self) -> None:
        # The service books due expiries exactly when the model does (every step that reads or
        # writes the ledger), so posted credit and expiries agree after every step.
        rows = self.entries()
        assert sum(e.credit_cents for e in rows) == self.model.posted
        expiries = {uuid.UUID(e.reference): -e.credit_cents for e in rows if e.kind == "expiry"}
        assert expiries == self.model.expired_rest


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_ledger_state_machine(backend: str, request: pytest.FixtureRequest) -> None:
    url: str = request.getfixturevalue(f"{backend}_url")
    engine = make_engine(url)
    provider = SandboxProvider.for_database(url)
    provider.install()
    sku = f"prop-{uuid.uuid4().hex[:10]}"
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        pricing_service.set_price(
            session,
            sku,
            description="property",
            unit_type="units",
            unit_price=PRICE,
            effective_from=datetime(2035, 1, 1, tzinfo=UTC),
        )
    LedgerMachine.backend = Backend(
        url, engine, sessions, provider, Settings(database_url=url), sku
    )
    try:
        run_state_machine_as_test(
            LedgerMachine,
            settings=settings(
                max_examples=40,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        engine.dispose()
        provider.engine.dispose()
