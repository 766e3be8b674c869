"""What the crossing detection remembers per team (spend/crossings.py)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base, JSONType


class TeamAlertState(Base):
    """One row per team that ever had a crossing event: which side of each line the team was on
    when the last event fired, so each event fires once per crossing whatever the order and
    concurrency of the writes. Locked (``FOR UPDATE``) by the transaction that fires; no row:
    the team's figures before the write say where it was."""

    __tablename__ = "team_alert_states"

    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    blocked: Mapped[bool]  # spend.blocked fired, no spend.unblocked since
    credit_low: Mapped[bool]  # credit.low fired, not re-armed (credit rose above the threshold)
    depleted: Mapped[bool]  # credit.depleted fired, not re-armed (credit above zero)
    # the cycle whose spend thresholds ``thresholds_fired`` lists (percents that fired in it)
    cycle_year: Mapped[int]
    cycle_month: Mapped[int]
    thresholds_fired: Mapped[list[int]] = mapped_column(JSONType)
    updated_at: Mapped[datetime]
