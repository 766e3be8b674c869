"""Top-ups: the state machine of a purchase that waits on the payment provider.

Two-phase, as TigerBeetle's pending transfers: a top-up is committed as ``TO_CHARGE`` before
the card is charged, with its id as the provider's idempotency key, then settled: ``SUCCEEDED``
appends the PURCHASE ledger entry; ``FAILED_TO_CHARGE`` appends nothing. A crash or a provider
timeout leaves ``TO_CHARGE``, which is resolved by asking the provider, never by charging again.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base
from billfold.kit.money import Cents
from billfold.ledger.schemas import AUTO_PURCHASE, PURCHASE


class Topup(Base):
    __tablename__ = "topups"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key"),
        Index("ix_topups_team_status", "team_id", "status"),
        Index("ix_topups_provider_charge_id", "provider_charge_id"),
        # At most one pending auto top-up per team (autotopup/service.py enqueues them).
        Index(
            "uq_topups_one_pending_auto",
            "team_id",
            unique=True,
            postgresql_where=text(f"status = 'TO_CHARGE' AND origin = '{AUTO_PURCHASE}'"),
            sqlite_where=text(f"status = 'TO_CHARGE' AND origin = '{AUTO_PURCHASE}'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    amount_cents: Mapped[Cents]
    # TO_CHARGE | SUCCEEDED | FAILED_TO_CHARGE (the spec's topupStatus names)
    status: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    payment_method_id: Mapped[str] = mapped_column(String(40))
    provider: Mapped[str] = mapped_column(String(32))
    provider_charge_id: Mapped[str] = mapped_column(String(200))
    failure_code: Mapped[str] = mapped_column(String(64))
    failure_message: Mapped[str] = mapped_column(String(500))
    ledger_entry_id: Mapped[uuid.UUID | None]
    invoice_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime]
    settled_at: Mapped[datetime | None]
    # What asked for the purchase, the wire's changeOrigin: PURCHASE (a top-up through the API)
    # or AUTO_PURCHASE (enqueued by a write that took the credit below the team's auto top-up
    # threshold, charged by a serving process: autotopup/).
    origin: Mapped[str] = mapped_column(String(16), server_default=PURCHASE, default=PURCHASE)
    # An auto top-up claimed by a serving process's charger: no other claims it before then
    # (wall clock). None: never claimed. Top-ups asked through the API never have one.
    lease_until: Mapped[datetime | None]


class Refund(Base):
    """A refund of a purchase, committed ``PENDING`` before the provider is asked (its id is the
    provider's idempotency key and is named in the refund's metadata), then ``SUCCEEDED`` with its
    REFUND ledger entry, or ``FAILED``. A pending refund reserves its amount: it counts against
    what is left of the purchase and against the team's credit left (topups/refunds.py)."""

    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key"),
        Index("ix_refunds_team_invoice", "team_id", "invoice_id"),
        Index("ix_refunds_status_created", "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"))
    invoice_id: Mapped[str] = mapped_column(String(40))
    amount_cents: Mapped[Cents]
    reason: Mapped[str] = mapped_column(String(500))
    # PENDING | SUCCEEDED | FAILED
    status: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(32))
    provider_charge_id: Mapped[str] = mapped_column(String(200))
    provider_refund_id: Mapped[str] = mapped_column(String(200))
    failure_code: Mapped[str] = mapped_column(String(64))
    failure_message: Mapped[str] = mapped_column(String(500))
    ledger_entry_id: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime]
    settled_at: Mapped[datetime | None]
