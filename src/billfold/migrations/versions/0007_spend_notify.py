"""invoicing: notify spend-check caches when a team's spend inputs change (PostgreSQL)

Revision ID: 0007
Revises: 0006

Every worker process keeps the answers of the spend check in memory (invoicing/gateway.py) and
listens on the channel ``billfold_spend``. These triggers announce, in the writing transaction,
every change to the three tables the check reads -- ``teams`` (the limits), ``credit_accounts``
(posted credit and the next expiry) and ``billing_cycles`` (spend, closing) -- with the team id as
the payload. PostgreSQL delivers a notification only when its transaction commits and folds
identical ones of a transaction into one, so a 10,000-event batch announces each team it touched
once. Triggers rather than calls in the services: no write path, present or future (a migration,
an operator's manual fix in psql), can forget to invalidate. ``TRUNCATE`` announces ``*``: every
team.

SQLite has no notifications and no cache: the check reads the database every time there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One function for the three tables: teams are keyed by ``id``, the others by ``team_id`` (PL/pgSQL
# prepares each branch when it first runs, per table, so the other branch's column never matters).
_FUNCTION = """
CREATE FUNCTION billfold_spend_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed record;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN  -- TRUNCATE
        PERFORM pg_notify('billfold_spend', '*');
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    IF TG_TABLE_NAME = 'teams' THEN
        PERFORM pg_notify('billfold_spend', changed.id::text);
    ELSE
        PERFORM pg_notify('billfold_spend', changed.team_id::text);
    END IF;
    RETURN NULL;
END $$;
"""

_TRIGGERS = """
CREATE TRIGGER billing_cycles_spend_changed AFTER INSERT OR UPDATE OR DELETE ON billing_cycles
    FOR EACH ROW EXECUTE FUNCTION billfold_spend_changed();
CREATE TRIGGER credit_accounts_spend_changed AFTER INSERT OR UPDATE OR DELETE ON credit_accounts
    FOR EACH ROW EXECUTE FUNCTION billfold_spend_changed();
-- Only the columns the check reads: renaming a team or changing its default card does not count.
CREATE TRIGGER teams_spend_changed AFTER UPDATE ON teams FOR EACH ROW
    WHEN (OLD.soft_limit_cents IS DISTINCT FROM NEW.soft_limit_cents
          OR OLD.hard_limit_override_cents IS DISTINCT FROM NEW.hard_limit_override_cents)
    EXECUTE FUNCTION billfold_spend_changed();
CREATE TRIGGER teams_spend_inserted_or_deleted AFTER INSERT OR DELETE ON teams
    FOR EACH ROW EXECUTE FUNCTION billfold_spend_changed();
CREATE TRIGGER billing_cycles_spend_truncated AFTER TRUNCATE ON billing_cycles
    FOR EACH STATEMENT EXECUTE FUNCTION billfold_spend_changed();
CREATE TRIGGER credit_accounts_spend_truncated AFTER TRUNCATE ON credit_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION billfold_spend_changed();
CREATE TRIGGER teams_spend_truncated AFTER TRUNCATE ON teams
    FOR EACH STATEMENT EXECUTE FUNCTION billfold_spend_changed();
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    op.execute(_TRIGGERS)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("billing_cycles", "credit_accounts", "teams"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_spend_changed ON {table}")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_spend_truncated ON {table}")
    op.execute("DROP TRIGGER IF EXISTS teams_spend_inserted_or_deleted ON teams")
    op.execute("DROP FUNCTION IF EXISTS billfold_spend_changed()")
