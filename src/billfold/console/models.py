"""The console's two tables: signed-in sessions and the operator's one-time sign-in links.

Neither grows with usage: a session row per sign-in (ended ones are kept small and can be
pruned), a link row per link the operator asks for.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from billfold.kit.db import Base, JSONType


class ConsoleSession(Base):
    """A signed-in browser: the cookie holds a random secret, this row its SHA-256.

    ``key_id`` is the management key pasted at sign-in (the session ends when it is revoked, and
    its ACLs are read from the key on every request); a session opened by a one-time link has no
    key and the ACLs the link granted (``acls``)."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_team_id", "team_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("management_keys.id", ondelete="CASCADE")
    )
    acls: Mapped[list[str]]
    # The synchronizer token every form of this session carries (compared in constant time).
    csrf_token: Mapped[str] = mapped_column(String(64))
    # One message for the next page (post/redirect/get): {"kind": ..., "text": ...}.
    flash: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class ConsoleLink(Base):
    """A one-time sign-in link (``POST /admin/v1/teams/{id}/console-links``): the token's
    SHA-256, when it expires, and when it was used (once)."""

    __tablename__ = "console_links"
    __table_args__ = (Index("ix_console_links_team_id", "team_id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
