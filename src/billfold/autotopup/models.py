"""Auto top-up settings, one row per team that ever set them.

The row is also the lock that serializes a team's auto top-up decisions: the write that takes
the credit below the threshold locks it (``FOR UPDATE`` on PostgreSQL; SQLite's one write lock
does the same) before it counts the month's auto top-ups against the cap and enqueues one. The
auto top-ups themselves are ``topups`` rows of origin ``AUTO_PURCHASE`` (topups/models.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base
from billfold.kit.money import Cents


class AutoTopupSettings(Base):
    __tablename__ = "auto_topup_settings"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="RESTRICT"), primary_key=True
    )
    enabled: Mapped[bool]
    threshold_cents: Mapped[Cents | None]
    # Exactly one of the two when enabled: a fixed amount, or the level to top up to.
    amount_cents: Mapped[Cents | None]
    target_cents: Mapped[Cents | None]
    monthly_limit_cents: Mapped[Cents | None]
    consecutive_failures: Mapped[int]
    # Why auto top-up was turned off by Billfold ("" when on, or turned off by the operator).
    disabled_reason: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]
