"""The ledger: append an entry and move the cached balance in the same transaction."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.kit.clock import utc_now
from billfold.kit.db import dialect_insert
from billfold.ledger.models import CreditAccount, LedgerEntry

ENTRY_KINDS = ("purchase", "grant", "spend", "refund", "expiry", "adjustment")


class LedgerService:
    def lock_account(self, session: Session, team_id: uuid.UUID) -> CreditAccount:
        """The team's credit account, created if needed, locked until the transaction ends.

        Every writer of a team's ledger goes through this lock (pgledger's pattern), so the cached
        balance never loses an update and checks against it hold until commit.
        """
        insert = dialect_insert(session)
        session.execute(
            insert(CreditAccount)
            .values(team_id=team_id, balance_cents=0, entries=0, updated_at=utc_now())
            .on_conflict_do_nothing(index_elements=["team_id"])
        )
        account = session.scalars(
            select(CreditAccount)
            .where(CreditAccount.team_id == team_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        return account

    def find(
        self, session: Session, team_id: uuid.UUID, idempotency_key: str
    ) -> LedgerEntry | None:
        return session.scalars(
            select(LedgerEntry).where(
                LedgerEntry.team_id == team_id, LedgerEntry.idempotency_key == idempotency_key
            )
        ).one_or_none()

    def append(
        self,
        session: Session,
        team_id: uuid.UUID,
        *,
        kind: str,
        credit_cents: int,
        idempotency_key: str,
        reference: str = "",
        description: str = "",
        cycle: tuple[int, int] | None = None,
        expires_at: datetime | None = None,
        topup_id: uuid.UUID | None = None,
        invoice_id: str | None = None,
    ) -> tuple[LedgerEntry, bool]:
        """Append one entry; a repeated ``idempotency_key`` returns the first entry unchanged.

        Returns ``(entry, created)``.
        """
        if kind not in ENTRY_KINDS:
            raise ValueError(f"unknown ledger entry kind {kind!r}")
        account = self.lock_account(session, team_id)
        existing = self.find(session, team_id, idempotency_key)
        if existing is not None:
            return existing, False
        now = utc_now()
        entry = LedgerEntry(
            id=uuid.uuid4(),
            team_id=team_id,
            kind=kind,
            credit_cents=credit_cents,
            idempotency_key=idempotency_key,
            reference=reference,
            description=description,
            cycle_year=cycle[0] if cycle else None,
            cycle_month=cycle[1] if cycle else None,
            expires_at=expires_at,
            topup_id=topup_id,
            invoice_id=invoice_id,
            created_at=now,
        )
        session.add(entry)
        account.balance_cents += credit_cents
        account.entries += 1
        account.updated_at = now
        session.flush()
        return entry, True


ledger_service = LedgerService()
