"""Teams, management keys, billing info and operator tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billfold.kit.audit import note
from billfold.kit.clock import utc_now
from billfold.kit.errors import Conflict, InvalidField, ResourceNotFound
from billfold.teams.models import BillingInfo, ManagementKey, OperatorToken, Team
from billfold.teams.schemas import KNOWN_ACLS, BillingInfoBody, BillingInfoInput

KEY_ENTROPY_BYTES = 32


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def redact(key: str, prefix: str) -> str:
    return f"{prefix}...{key[-4:]}"


@dataclass(frozen=True)
class IssuedKey:
    key: ManagementKey
    plaintext: str


class TeamService:
    def create(self, session: Session, name: str, team_id: uuid.UUID | None = None) -> Team:
        team = Team(id=team_id or uuid.uuid4(), name=name, created_at=utc_now())
        if team_id is not None and session.get(Team, team_id) is not None:
            raise Conflict(f"team {team_id} already exists", code="team_exists")
        session.add(team)
        try:
            with session.begin_nested():
                session.flush()
        except IntegrityError:
            raise Conflict(f"team {team.id} already exists", code="team_exists") from None
        note(session, team_id=team.id)  # the audit trail's team (kit/audit.py)
        return team

    def get(self, session: Session, team_id: uuid.UUID, *, for_update: bool = False) -> Team:
        stmt = select(Team).where(Team.id == team_id)
        if for_update:
            stmt = stmt.with_for_update()
        team = session.scalars(stmt).one_or_none()
        if team is None:
            raise ResourceNotFound(f"team {team_id} not found", code="team_not_found")
        return team

    def list(self, session: Session, *, limit: int, after: uuid.UUID | None) -> list[Team]:
        stmt = select(Team).order_by(Team.id).limit(limit)
        if after is not None:
            stmt = stmt.where(Team.id > after)
        return list(session.scalars(stmt))

    def count(self, session: Session) -> int:
        return session.scalar(select(func.count()).select_from(Team)) or 0

    # --- billing info -----------------------------------------------------------------------

    def get_billing_info(self, session: Session, team_id: uuid.UUID) -> BillingInfoBody:
        info = session.get(BillingInfo, team_id)
        if info is None:
            return BillingInfoBody()
        return BillingInfoBody.model_validate(
            {
                "name": info.name,
                "address": {
                    "line1": info.line1,
                    "line2": info.line2,
                    "city": info.city,
                    "country": info.country,
                    "postalCode": info.postal_code,
                    "state": info.state,
                },
                "email": info.email,
                "taxIdType": info.tax_id_type,
                "taxNumber": info.tax_number,
            }
        )

    def set_billing_info(
        self, session: Session, team_id: uuid.UUID, value: BillingInfoInput
    ) -> None:
        if bool(value.tax_id_type) != bool(value.tax_number):
            field = "billingInfo.taxNumber" if value.tax_id_type else "billingInfo.taxIdType"
            raise InvalidField(field, "taxIdType and taxNumber are set together or not at all")
        info = session.get(BillingInfo, team_id, with_for_update=True)
        if info is None:
            info = BillingInfo(team_id=team_id)
            session.add(info)
        info.name = value.name
        info.line1 = value.address.line1
        info.line2 = value.address.line2
        info.city = value.address.city
        info.country = value.address.country
        info.postal_code = value.address.postal_code
        info.state = value.address.state
        info.email = value.email
        info.tax_id_type = value.tax_id_type
        info.tax_number = value.tax_number
        info.updated_at = utc_now()


class KeyService:
    def __init__(self, prefix: str = "xai-") -> None:
        self.prefix = prefix

    def issue(
        self, session: Session, team: Team, name: str, acls: list[str], owner: str = ""
    ) -> IssuedKey:
        if not acls:  # a key that can do nothing is a caller's mistake
            raise InvalidField(
                "acls", f"must name at least one ACL; known: {', '.join(KNOWN_ACLS)}"
            )
        for index, acl in enumerate(acls):
            if acl not in KNOWN_ACLS:
                raise InvalidField(
                    f"acls.{index}", f"unknown ACL {acl!r}; known: {', '.join(KNOWN_ACLS)}"
                )
        plaintext = self.prefix + secrets.token_urlsafe(KEY_ENTROPY_BYTES)
        now = utc_now()
        key = ManagementKey(
            id=uuid.uuid4(),
            team_id=team.id,
            name=name,
            key_hash=hash_secret(plaintext),
            redacted=redact(plaintext, self.prefix),
            acls=sorted(set(acls), key=KNOWN_ACLS.index),
            owner_user_id=owner,
            created_at=now,
            modified_at=now,
            revoked_at=None,
        )
        session.add(key)
        session.flush()
        note(session, team_id=team.id, keyId=key.id)  # the audit trail (kit/audit.py)
        return IssuedKey(key=key, plaintext=plaintext)

    def authenticate(self, session: Session, plaintext: str) -> ManagementKey | None:
        key = session.scalars(
            select(ManagementKey).where(ManagementKey.key_hash == hash_secret(plaintext))
        ).one_or_none()
        if key is None or key.revoked_at is not None:
            return None
        return key

    def get(self, session: Session, key_id: uuid.UUID) -> ManagementKey:
        key = session.get(ManagementKey, key_id)
        if key is None:
            raise ResourceNotFound(f"management key {key_id} not found", code="key_not_found")
        return key

    def list(self, session: Session, team_id: uuid.UUID) -> list[ManagementKey]:
        return list(
            session.scalars(
                select(ManagementKey)
                .where(ManagementKey.team_id == team_id)
                .order_by(ManagementKey.created_at)
            )
        )

    def revoke(self, session: Session, key_id: uuid.UUID) -> ManagementKey:
        key = self.get(session, key_id)
        note(session, team_id=key.team_id, keyId=key.id)  # the audit trail (kit/audit.py)
        if key.revoked_at is None:
            key.revoked_at = utc_now()
            key.modified_at = key.revoked_at
        return key


class OperatorTokenService:
    """The operator token: ``BILLFOLD_ADMIN_TOKEN`` when set, else a generated one (hash stored)."""

    def __init__(self, configured: str | None) -> None:
        self.configured = configured

    def check(self, session: Session, token: str) -> bool:
        if self.configured:
            return hmac.compare_digest(token.encode(), self.configured.encode())
        found = session.scalar(
            select(OperatorToken.id).where(
                OperatorToken.token_hash == hash_secret(token), OperatorToken.revoked_at.is_(None)
            )
        )
        return found is not None

    def has_generated(self, session: Session) -> bool:
        found = session.scalar(select(OperatorToken.id).where(OperatorToken.revoked_at.is_(None)))
        return found is not None

    def generate(self, session: Session) -> str:
        """Revoke every generated token and create a new one; return it (shown once)."""
        now = utc_now()
        for old in session.scalars(select(OperatorToken).where(OperatorToken.revoked_at.is_(None))):
            old.revoked_at = now
        token = "bfop_" + secrets.token_urlsafe(KEY_ENTROPY_BYTES)
        session.add(OperatorToken(id=uuid.uuid4(), token_hash=hash_secret(token), created_at=now))
        session.flush()
        return token


team_service = TeamService()
