"""Helpers of the prepaid-ledger tests.

Months closed by other tests are closed for everyone sharing the database, so usage here lives in
years 2035+ (under ``clock.frozen``); every test makes its own teams.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from billfold.ledger.models import CreditAccount, LedgerEntry
from billfold.ledger.service import ledger_service
from billfold.payments.models import PaymentMethod
from billfold.payments.sandbox import SandboxProvider, sandbox_charges
from billfold.topups.models import Topup
from tests.conftest import Api, at, frozen_at  # noqa: F401 (the tests import them from here)


def session_of(api: Api) -> Session:
    session: Session = api.client.app.state.sessionmaker()  # type: ignore[attr-defined]
    return session


def provider_of(api: Api) -> SandboxProvider:
    provider: SandboxProvider = api.client.app.state.payment_provider  # type: ignore[attr-defined]
    return provider


def entries(api: Api, team_id: str) -> list[LedgerEntry]:
    with session_of(api) as session:
        return ledger_service.entries(session, uuid.UUID(team_id))


def topups(api: Api, team_id: str) -> list[Topup]:
    with session_of(api) as session:
        return list(
            session.scalars(
                select(Topup)
                .where(Topup.team_id == uuid.UUID(team_id))
                .order_by(Topup.created_at, Topup.id)
            )
        )


@dataclass(frozen=True)
class Charge:
    idempotency_key: str
    amount: int
    status: str


def charges(api: Api, team_id: str) -> list[Charge]:
    """Every charge the sandbox holds for the team's cards (successful or declined)."""
    with session_of(api) as session:
        cards = list(
            session.scalars(
                select(PaymentMethod.provider_ref).where(
                    PaymentMethod.team_id == uuid.UUID(team_id)
                )
            )
        )
    if not cards:
        return []
    with provider_of(api).engine.connect() as connection:
        rows = connection.execute(
            select(
                sandbox_charges.c.idempotency_key,
                sandbox_charges.c.amount,
                sandbox_charges.c.status,
            ).where(sandbox_charges.c.card_id.in_(cards))
        ).all()
    return [Charge(r.idempotency_key, int(r.amount), str(r.status)) for r in rows]


def charged(api: Api, team_id: str) -> int:
    return sum(c.amount for c in charges(api, team_id) if c.status == "succeeded")


def assert_consistent(api: Api, team_id: str) -> int:
    """Cached balance == sum of entries, booking order gapless; returns the posted credit."""
    team = uuid.UUID(team_id)
    with session_of(api) as session:
        account = session.get(CreditAccount, team)
        rows = ledger_service.entries(session, team)
        derived = ledger_service.derived_balance(session, team)
    assert derived == sum(e.credit_cents for e in rows)
    if account is None:
        assert rows == []
        return 0
    assert account.balance_cents == derived
    assert account.entries == len(rows)
    assert [e.seq for e in rows] == list(range(1, len(rows) + 1))
    return int(derived)


def assert_nothing_happened(api: Api, team_id: str) -> None:
    assert entries(api, team_id) == []
    assert topups(api, team_id) == []
    assert charges(api, team_id) == []


def balance(api: Api, team_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = api.client.get(f"/v1/billing/teams/{team_id}/prepaid/balance", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def top_up(
    api: Api,
    team_id: str,
    headers: dict[str, str],
    cents: int | str,
    key: str | None = None,
) -> Any:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return api.client.post(
        f"/v1/billing/teams/{team_id}/prepaid/top-up",
        headers={**headers, **extra},
        json={"amount": {"val": str(cents)}},
    )


def grant(
    api: Api,
    team_id: str,
    cents: int,
    key: str | None = None,
    expires_at: str | None = None,
    reason: str = "promo",
) -> Any:
    body: dict[str, Any] = {
        "amount": str(cents),
        "reason": reason,
        "idempotencyKey": key or f"grant-{uuid.uuid4().hex}",
    }
    if expires_at is not None:
        body["expiresAt"] = expires_at
    return api.admin("POST", f"/admin/v1/teams/{team_id}/credits", json=body)


def assert_no_nulls(value: Any) -> None:
    """Optional fields are left out, never sent as null (spec §1)."""
    if isinstance(value, dict):
        for item in value.values():
            assert item is not None
            assert_no_nulls(item)
    elif isinstance(value, list):
        for item in value:
            assert_no_nulls(item)


def posted_sum(body: dict[str, Any]) -> int:
    """The sum of the changes that count in ``total`` (failed and pending purchases do not)."""
    return sum(
        int(c["amount"]["val"])
        for c in body["changes"]
        if c.get("topupStatus") in (None, "SUCCEEDED")
    )


def preview(api: Api, team_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """The running invoice of the current cycle (spec §8): its ``coreInvoice``."""
    response = api.client.get(
        f"/v1/billing/teams/{team_id}/postpaid/invoice/preview", headers=headers
    )
    assert response.status_code == 200, response.text
    core: dict[str, Any] = response.json()["coreInvoice"]
    return core


def assert_posted_and_live(
    api: Api, team_id: str, headers: dict[str, str], *, posted: int, left: int
) -> dict[str, Any]:
    """The balance is the posted ledger and the preview the live credit (spec §8, §11), and a
    client's ``|total| - |prepaidCreditsUsed|`` is the live credit (one open cycle). Returns the
    balance."""
    listing = balance(api, team_id, headers)
    core = preview(api, team_id, headers)
    total = int(listing["total"]["val"])
    credits = int(core["prepaidCredits"]["val"])
    used = int(core["prepaidCreditsUsed"]["val"])
    assert total == -posted
    assert posted_sum(listing) == total
    assert -total == -credits
    assert -credits - abs(used) == left
    assert abs(total) - abs(used) == left
    return listing
