"""The migrated schema and the models agree (the equivalent of ``alembic check``)."""

from __future__ import annotations

from billfold.kit.db import make_engine
from billfold.migrate import pending_model_changes
from tests.conftest import Api


def test_models_match_migrations(api: Api) -> None:
    engine = make_engine(api.url)
    try:
        assert pending_model_changes(engine) == []
    finally:
        engine.dispose()
