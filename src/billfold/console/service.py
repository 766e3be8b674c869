"""Console sign-in: one-time links, sessions, CSRF tokens and flash messages.

A session is a server-side row behind a random cookie (only its SHA-256 is stored, as for
management keys). It is checked on every request: ended, idle for ``IDLE`` or opened with a key
since revoked, it is over. Its ACLs are the key's, read on every request (a key's ACLs cannot
change today, but nothing here would go stale if they could); a one-time link grants both.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from billfold.console.models import ConsoleLink, ConsoleSession
from billfold.kit.clock import utc_now
from billfold.kit.db import transaction
from billfold.kit.errors import InvalidField
from billfold.teams.models import ManagementKey, Team
from billfold.teams.schemas import ACL_BILLING_READ, ACL_BILLING_WRITE
from billfold.teams.service import KeyService, hash_secret, team_service

IDLE = timedelta(hours=12)
# last_seen_at is written at most this often: a page view is then a read, not a write.
TOUCH_EVERY = timedelta(minutes=1)
LINK_TTL_MAX_MINUTES = 7 * 24 * 60
TOKEN_BYTES = 32
LINK_PREFIX = "bfcl_"
SESSION_PREFIX = "bfcs_"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the team a console session sees, and what its key may do."""

    session_id: uuid.UUID
    team_id: uuid.UUID
    team_name: str
    acls: tuple[str, ...]
    csrf_token: str
    signed_in_with: str  # the key's redacted form, or "one-time link"
    flash: dict[str, Any] | None = None

    @property
    def can_read(self) -> bool:
        return ACL_BILLING_READ in self.acls

    @property
    def can_write(self) -> bool:
        return ACL_BILLING_WRITE in self.acls


class SignInRefused(Exception):
    """A sign-in that did not succeed; the message is shown on the login page."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class IssuedLink:
    link: ConsoleLink
    token: str

    @property
    def url(self) -> str:
        return f"/console/login?token={self.token}"


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class ConsoleService:
    # --- one-time links (the operator) --------------------------------------------------------

    def issue_link(self, session: Session, team_id: uuid.UUID, ttl_minutes: int) -> IssuedLink:
        if not 1 <= ttl_minutes <= LINK_TTL_MAX_MINUTES:
            raise InvalidField(
                "ttlMinutes", f"must be between 1 and {LINK_TTL_MAX_MINUTES} (7 days)"
            )
        team_service.get(session, team_id)  # 404 for an unknown team
        token = LINK_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        now = utc_now()
        link = ConsoleLink(
            id=uuid.uuid4(),
            token_hash=hash_secret(token),
            team_id=team_id,
            created_at=now,
            expires_at=now + timedelta(minutes=ttl_minutes),
            used_at=None,
        )
        session.add(link)
        session.flush()
        return IssuedLink(link, token)

    def link_team(self, session: Session, token: str) -> Team | None:
        """The team of a link that can still be used (for the page that asks to continue)."""
        link = session.scalars(
            select(ConsoleLink).where(ConsoleLink.token_hash == hash_secret(token))
        ).one_or_none()
        if link is None or link.used_at is not None or link.expires_at <= utc_now():
            return None
        return session.get(Team, link.team_id)

    def redeem_link(self, session: Session, token: str) -> tuple[ConsoleSession, str]:
        """Use a link (once: a conditional UPDATE, so two tabs racing get one session)."""
        now = utc_now()
        team_id = session.execute(
            update(ConsoleLink)
            .where(
                ConsoleLink.token_hash == hash_secret(token),
                ConsoleLink.used_at.is_(None),
                ConsoleLink.expires_at > now,
            )
            .values(used_at=now)
            .returning(ConsoleLink.team_id)
        ).scalar_one_or_none()
        if team_id is None:
            raise SignInRefused(
                "This sign-in link has expired or has already been used. Ask for a new one, "
                "or sign in with a management key."
            )
        return self._open(session, team_id, None, [ACL_BILLING_READ, ACL_BILLING_WRITE])

    # --- sign-in with a management key ------------------------------------------------------

    def sign_in_with_key(
        self, session: Session, keys: KeyService, plaintext: str
    ) -> tuple[ConsoleSession, str]:
        plaintext = plaintext.strip()
        key = keys.authenticate(session, plaintext) if plaintext else None
        if key is None:
            raise SignInRefused("This management key is unknown or has been revoked.")
        if ACL_BILLING_READ not in key.acls:
            raise SignInRefused(
                "This management key lacks BillingRead, which the console needs to show "
                "billing. Use a key with BillingRead."
            )
        return self._open(session, key.team_id, key.id, [])

    def _open(
        self,
        session: Session,
        team_id: uuid.UUID,
        key_id: uuid.UUID | None,
        acls: list[str],
    ) -> tuple[ConsoleSession, str]:
        secret = SESSION_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        now = utc_now()
        row = ConsoleSession(
            id=uuid.uuid4(),
            token_hash=hash_secret(secret),
            team_id=team_id,
            key_id=key_id,
            acls=acls,
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            flash=None,
            created_at=now,
            last_seen_at=now,
            ended_at=None,
        )
        session.add(row)
        session.flush()
        return row, secret

    # --- every request ----------------------------------------------------------------------

    def viewer(self, session: Session, secret: str, *, take_flash: bool = True) -> Viewer | None:
        """The session's viewer, or None when there is no live session for this cookie; reads
        and records (last seen, ended, flash shown) in ``session``.
        ``take_flash``: the page being answered shows (and so clears) the flash message."""
        viewer, change = self._judge(session, secret, take_flash)
        if change:
            self._record(session, change)
        return viewer

    def resolve(
        self,
        reads: sessionmaker[Session],
        writes: sessionmaker[Session],
        secret: str,
        *,
        take_flash: bool = True,
    ) -> Viewer | None:
        """:meth:`viewer` in transactions of its own: a read (deferred on SQLite, READ ONLY on
        PostgreSQL), and a short write only when there is something to record -- at most once
        a minute per session, or when it ends. So a page view takes no write lock, and the page
        may run in a read-only transaction."""
        with transaction(reads) as session:
            viewer, change = self._judge(session, secret, take_flash)
        if change:
            with transaction(writes) as session:
                self._record(session, change)
        return viewer

    def _judge(
        self, session: Session, secret: str, take_flash: bool
    ) -> tuple[Viewer | None, dict[str, Any]]:
        if not secret:
            return None, {}
        found = session.execute(
            select(ConsoleSession, ManagementKey, Team.name)
            .join(Team, Team.id == ConsoleSession.team_id)
            .outerjoin(ManagementKey, ManagementKey.id == ConsoleSession.key_id)
            .where(ConsoleSession.token_hash == hash_secret(secret))
        ).one_or_none()
        if found is None:
            return None, {}
        row, key, team_name = found
        now = utc_now()
        if row.ended_at is not None:
            return None, {}
        ended = {"id": row.id, "ended_at": now}
        if now - row.last_seen_at >= IDLE:
            return None, ended
        if row.key_id is not None and (key is None or key.revoked_at is not None):
            return None, ended
        acls = tuple(key.acls if key is not None else row.acls)
        if ACL_BILLING_READ not in acls:
            return None, ended
        change: dict[str, Any] = {}
        if now - row.last_seen_at >= TOUCH_EVERY:
            change["last_seen_at"] = now
        flash = row.flash if take_flash else None
        if flash is not None:
            change["flash"] = None
        if change:
            change["id"] = row.id
        viewer = Viewer(
            session_id=row.id,
            team_id=row.team_id,
            team_name=team_name,
            acls=acls,
            csrf_token=row.csrf_token,
            signed_in_with=key.redacted if key is not None else "one-time link",
            flash=flash,
        )
        return viewer, change

    def _record(self, session: Session, change: dict[str, Any]) -> None:
        values = {name: value for name, value in change.items() if name != "id"}
        session.execute(
            update(ConsoleSession).where(ConsoleSession.id == change["id"]).values(**values)
        )

    def set_flash(self, session: Session, viewer: Viewer, kind: str, text: str) -> None:
        """A message for the next page this session shows (after a redirect)."""
        session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id == viewer.session_id)
            .values(flash={"kind": kind, "text": text})
        )

    def sign_out(self, session: Session, viewer: Viewer) -> None:
        session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id == viewer.session_id)
            .values(ended_at=utc_now())
        )


console_service = ConsoleService()
