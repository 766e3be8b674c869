from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base, JSONType
from billfold.kit.money import Cents


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    # Spending limits (cents). None: not set (the team falls back to the operator default /
    # has not chosen a soft limit).
    hard_limit_override_cents: Mapped[Cents | None]
    soft_limit_cents: Mapped[Cents | None]
    default_payment_method_id: Mapped[str | None] = mapped_column(String(40))
    # The team's customer at the payment provider, created with its first card and reused after.
    payment_customer_ref: Mapped[str | None] = mapped_column(String(200))
    # The team's Stripe Customer (BILLFOLD_PAYMENT_PROVIDER=stripe), created on first need.
    stripe_customer_id: Mapped[str | None] = mapped_column(String(200))


class BillingInfo(Base):
    __tablename__ = "billing_info"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(200))
    line1: Mapped[str] = mapped_column(String(200))
    line2: Mapped[str] = mapped_column(String(200))
    city: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    postal_code: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254))
    tax_id_type: Mapped[str] = mapped_column(String(16))
    tax_number: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]


class ManagementKey(Base):
    __tablename__ = "management_keys"
    __table_args__ = (Index("ix_management_keys_team_id", "team_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    # SHA-256 of the key: the key is 32 random bytes, so a fast hash is as safe as a slow one
    # and keeps the lookup a single indexed read.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    redacted: Mapped[str] = mapped_column(String(64))
    acls: Mapped[list[str]]
    owner_user_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    modified_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class OperatorToken(Base):
    """A generated operator token (hash only); ``BILLFOLD_ADMIN_TOKEN`` is never stored."""

    __tablename__ = "operator_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class TeamAlertSettings(Base):
    """A team's alert settings (operator-api.md, "Alert settings per team"); no row: defaults.

    Here, in the lowest domain, so that whoever detects a crossing (spend/, ledger/, inside the
    ingestion transaction) can read them without importing upward; ``notifications/`` reads the
    e-mail addresses when it makes e-mail deliveries."""

    __tablename__ = "team_alert_settings"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    spend_thresholds_percent: Mapped[list[int]] = mapped_column(JSONType)
    low_credit_cents: Mapped[Cents | None]
    emails: Mapped[list[str]]
    updated_at: Mapped[datetime]
