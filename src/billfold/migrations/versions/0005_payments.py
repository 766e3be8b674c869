"""payments: the provider's customer of a team and of each card

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch_op:
        batch_op.add_column(sa.Column("payment_customer_ref", sa.String(length=200), nullable=True))
    with op.batch_alter_table("payment_methods") as batch_op:
        batch_op.add_column(
            sa.Column(
                "provider_customer_ref", sa.String(length=200), nullable=False, server_default=""
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("payment_methods") as batch_op:
        batch_op.drop_column("provider_customer_ref")
    with op.batch_alter_table("teams") as batch_op:
        batch_op.drop_column("payment_customer_ref")
