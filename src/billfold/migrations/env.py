"""Alembic environment: runs on the connection Billfold hands it (see billfold.migrate)."""

from __future__ import annotations

from alembic import context

import billfold.models  # noqa: F401  (registers every table on Base.metadata)
from billfold.kit.db import Base
from billfold.migrate import include_object

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=include_object,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
