"""The prepaid ledger.

``ledger_entries`` is append-only: a row is inserted once and never updated or deleted (on
PostgreSQL a trigger enforces it). Amounts are signed *credit* in cents: a purchase or grant is
positive, spend and expiry are negative. The wire shows the opposite sign (spec: credit negative).

``credit_accounts`` caches each team's posted credit (the sum of its entries) and is updated in the
same transaction as every entry, under a row lock; tests re-derive it from the entries. Under the
same lock each entry gets the team's next ``seq`` (1, 2, 3, ...): the order in which entries were
booked, which the expiry of promotional credit replays (timestamps can tie; ``seq`` never does).
The account also caches ``next_expiry_at``, the earliest expiry of a grant not yet expired, so
readers of the position learn with the one read they already do whether a grant has fallen due.

``topups`` is the state machine of a purchase that waits on the payment provider (two-phase, as
TigerBeetle's pending transfers): it is committed as ``TO_CHARGE`` before the card is charged, with
its id as the provider's idempotency key, then settled: ``SUCCEEDED`` appends the PURCHASE entry;
``FAILED_TO_CHARGE`` appends nothing. A crash or a provider timeout leaves ``TO_CHARGE``, which is
resolved by asking the provider, never by charging again.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base
from billfold.kit.money import Cents

# Idempotency-key namespaces inside a team's ledger, so that an operator's key can never collide
# with a key Billfold derives itself ("topup:<id>", "spend:YYYY-MM", "expiry:<grant id>").
CREDIT_KEY_PREFIX = "credit:"


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key"),
        Index("ix_ledger_entries_team_created", "team_id", "created_at"),
        Index("ux_ledger_entries_team_seq", "team_id", "seq", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    # purchase | grant | spend | refund | expiry | adjustment
    kind: Mapped[str] = mapped_column(String(16))
    credit_cents: Mapped[Cents]  # signed: + adds credit, - consumes it
    idempotency_key: Mapped[str] = mapped_column(String(255))
    reference: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(500))
    cycle_year: Mapped[int | None]
    cycle_month: Mapped[int | None]
    expires_at: Mapped[datetime | None]
    topup_id: Mapped[uuid.UUID | None]
    invoice_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
    seq: Mapped[int]  # the team's booking order: 1, 2, 3, ... (assigned under the account lock)


class CreditAccount(Base):
    __tablename__ = "credit_accounts"
    __table_args__ = (Index("ix_credit_accounts_next_expiry", "next_expiry_at"),)

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="RESTRICT"), primary_key=True
    )
    balance_cents: Mapped[Cents]  # sum of credit_cents of the team's ledger entries
    entries: Mapped[int]
    updated_at: Mapped[datetime]
    # Earliest ``expires_at`` of a grant that has no expiry entry yet; None when there is none.
    next_expiry_at: Mapped[datetime | None]
