from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base


class PaymentMethod(Base):
    """A card as Billfold knows it: the provider's reference and what may be shown of it."""

    __tablename__ = "payment_methods"
    __table_args__ = (
        Index("ix_payment_methods_team_id", "team_id"),
        Index("ix_payment_methods_provider_ref", "provider_ref"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # pm_...
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    provider_ref: Mapped[str] = mapped_column(String(200))
    # The provider's customer the card is attached to (Stripe charges need both).
    provider_customer_ref: Mapped[str] = mapped_column(String(200), server_default="")
    payment_type: Mapped[str] = mapped_column(String(16))
    brand: Mapped[str] = mapped_column(String(16))
    last4: Mapped[str] = mapped_column(String(4))
    exp_month: Mapped[int]
    exp_year: Mapped[int]
    # The billing details on the method, as the provider holds them (a copy of the team's billing
    # info at the time the method was added).
    billing_info: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class StripeEvent(Base):
    """A Stripe webhook event, processed once (its id is the key): replays are no-ops."""

    __tablename__ = "stripe_events"
    __table_args__ = (Index("ix_stripe_events_type", "type", "received_at"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # evt_...
    type: Mapped[str] = mapped_column(String(100))
    object_id: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(500))
    payload: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime]
