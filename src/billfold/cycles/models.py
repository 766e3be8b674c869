"""Billing cycles: one row per team and UTC month with usage, its lines, and the closed months.

``billing_cycles.spend_cents`` is the sum of the cycle's line amounts (``cycle_lines``), kept
current in the same transaction as the events, which is what makes the spend check exact within
one batch and a single read. ``closed_periods`` records each month the operator closed; usage
and price versions inside a closed month are rejected.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base
from billfold.kit.money import Cents


class BillingCycle(Base):
    __tablename__ = "billing_cycles"
    # Cycle close walks one month's cycles of every team; the primary key leads with the team.
    __table_args__ = (Index("ix_billing_cycles_month", "year", "month"),)

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="RESTRICT"), primary_key=True
    )
    year: Mapped[int] = mapped_column(primary_key=True)
    month: Mapped[int] = mapped_column(primary_key=True)
    spend_cents: Mapped[Cents]
    closed_at: Mapped[datetime | None]
    invoice_id: Mapped[str | None] = mapped_column(String(40))


class ClosedPeriod(Base):
    __tablename__ = "closed_periods"

    year: Mapped[int] = mapped_column(primary_key=True)
    month: Mapped[int] = mapped_column(primary_key=True)
    closed_at: Mapped[datetime]
    summary: Mapped[dict[str, Any]]


class CycleLine(Base):
    """Usage of one team in one billing cycle at one price version in one cluster: a future
    invoice line (upstream's lines carry ``clusterName``; migration 0013).

    ``cluster_name`` is the events' ``clusterName`` property (:func:`metering.service.cluster_of`),
    ``""`` for events without one -- whether or not the property is groupable.
    ``amount_cents`` is ``round_to_cents(quantity * unit_price)``, kept current in the same
    transaction as the events, so the preview and the spend check read it without summing events.
    """

    __tablename__ = "cycle_lines"

    team_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    year: Mapped[int] = mapped_column(primary_key=True)
    month: Mapped[int] = mapped_column(primary_key=True)
    price_version_id: Mapped[int] = mapped_column(ForeignKey("price_versions.id"), primary_key=True)
    cluster_name: Mapped[str] = mapped_column(String(200), primary_key=True, server_default="")
    quantity: Mapped[int]
    events: Mapped[int]
    amount_cents: Mapped[Cents]
