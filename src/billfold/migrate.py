"""Schema migrations, run programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from billfold.kit.db import Base

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed 64-bit number: every Billfold process migrating the same PostgreSQL database waits here.
_MIGRATION_LOCK = 0x42_696C_6C66_6F6C


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # The sandbox payment provider keeps its own tables; they are not Billfold's schema.
    return not (type_ == "table" and name is not None and name.startswith("sandbox_"))


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def pending_model_changes(engine: Engine) -> list[object]:
    """What the models have that the migrated schema lacks (empty when they agree)."""
    import billfold.models  # noqa: F401

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_object": include_object, "compare_type": True}
        )
        return list(compare_metadata(context, Base.metadata))
