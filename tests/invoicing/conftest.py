"""Helpers of the postpaid tests.

Closing a month closes it for every test that shares the database, so each test that closes uses
months of its own (years 2030+, under ``clock.frozen``) and teams of its own.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from billfold.config import Settings
from billfold.ledger.models import LedgerEntry
from billfold.ledger.service import ledger_service
from tests.conftest import Api, at, frozen_at  # noqa: F401 (the tests import them from here)


def grant(api: Api, team_id: str, cents: int, key: str | None = None) -> None:
    """Credit through the operator API; until the ledger work has added that endpoint, the same
    grant through ledger_service (one transaction, as a request would)."""
    key = key or f"grant-{uuid.uuid4().hex}"
    response = api.admin(
        "POST",
        f"/admin/v1/teams/{team_id}/credits",
        json={"amount": str(cents), "reason": "t", "idempotencyKey": key},
    )
    if response.status_code in (200, 201):
        return
    route_missing = response.status_code in (404, 405) and response.json().get("error") in (
        "Not Found",
        "Method Not Allowed",
    )
    assert route_missing, response.text
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        ledger_service.append(
            session, uuid.UUID(team_id), kind="grant", credit_cents=cents, idempotency_key=key
        )
        session.commit()


def set_country(api: Api, headers: dict[str, str], team_id: str, country: str) -> None:
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info",
        headers=headers,
        json={
            "billingInfo": {
                "name": "Acme",
                "address": {"country": country},
                "email": "billing@example.com",
            }
        },
    )
    assert response.status_code == 200, response.text


def use_settings(api: Api, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> Settings:
    """Run the app with some settings changed for this test (restored afterwards)."""
    app: Any = api.client.app
    settings: Settings = app.state.settings.model_copy(update=changes)
    # setitem on State's dict: monkeypatch.setattr cannot restore a State attribute.
    monkeypatch.setitem(app.state._state, "settings", settings)
    return settings


def get(api: Api, headers: dict[str, str], path: str, **params: Any) -> dict[str, Any]:
    response = api.client.get(path, headers=headers, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def preview(api: Api, headers: dict[str, str], team_id: str) -> dict[str, Any]:
    return get(api, headers, f"/v1/billing/teams/{team_id}/postpaid/invoice/preview")


def limits(api: Api, headers: dict[str, str], team_id: str) -> dict[str, Any]:
    body = get(api, headers, f"/v1/billing/teams/{team_id}/postpaid/spending-limits")
    return dict(body["spendingLimits"])


def set_soft_limit(api: Api, headers: dict[str, str], team_id: str, value: Any) -> Any:
    return api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
        headers=headers,
        json={"desiredSoftSpendingLimit": {"val": value}},
    )


def spend_status(api: Api, team_id: str) -> dict[str, Any]:
    response = api.admin("GET", f"/admin/v1/teams/{team_id}/spend-status")
    assert response.status_code == 200, response.text
    return dict(response.json())


def close(api: Api, year: int, month: int) -> dict[str, Any]:
    response = api.admin(
        "POST", "/admin/v1/billing-cycles/close", json={"year": year, "month": month}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def invoices(api: Api, headers: dict[str, str], team_id: str, **params: Any) -> list[Any]:
    body = get(api, headers, f"/v1/billing/teams/{team_id}/invoices", **params)
    return list(body["invoices"])


def spend_entries(api: Api, team_id: str) -> list[LedgerEntry]:
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        return list(
            session.scalars(
                select(LedgerEntry).where(
                    LedgerEntry.team_id == uuid.UUID(team_id), LedgerEntry.kind == "spend"
                )
            )
        )


def cents(value: Any) -> int:
    """A cent object or a bare cent string as an int."""
    return int(value["val"] if isinstance(value, dict) else value)
