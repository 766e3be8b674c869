"""kill -9 between the provider's refund and the ledger booking: one refund, one REFUND entry.

The server runs as a real process and ends itself at the crash point ``refund_after_provider``
(payments/faults.py) after localstripe has made the refund and before the REFUND entry is booked.
The refund row stays PENDING. After a restart, a retry with the same ``idempotencyKey`` -- or
reconciliation -- finds the refund at localstripe by its metadata and books it; localstripe (which
keeps no idempotency keys) holds exactly one refund, the ledger exactly one REFUND entry.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from billfold.kit.db import make_engine
from billfold.ledger.models import LedgerEntry
from billfold.payments.stripe_provider import StripeProvider
from billfold.settlement.reconcile import reconcile
from billfold.topups.models import Refund
from tests.stripe_provider.conftest import SECRET_KEY
from tests.stripe_provider.test_crashes import TOKEN, database, serve, stop, team_with_card

__all__ = ["database"]  # the fixture, on SQLite and PostgreSQL


@pytest.mark.parametrize("resolution", ["retry", "reconcile"])
def test_kill_9_between_the_refund_and_its_entry_refunds_once(
    database: str, localstripe: str, tmp_path: Path, resolution: str
) -> None:
    client = stripe.StripeClient(SECRET_KEY, base_addresses={"api": localstripe})
    operator = {"Authorization": f"Bearer {TOKEN}"}
    body = {"amount": "1000", "reason": "unused", "idempotencyKey": "refund-crash-1"}
    process, base = serve(database, localstripe, tmp_path, TEST_CRASH_AT="refund_after_provider")
    try:
        with httpx.Client(base_url=base, headers=operator, timeout=30) as http:
            team_id, headers = team_with_card(http, client, "crash")
            bought = http.post(
                f"/v1/billing/teams/{team_id}/prepaid/top-up",
                headers={**headers, "Idempotency-Key": "buy-1"},
                json={"amount": {"val": "2500"}},
            )
            assert bought.status_code == 200, bought.text
            invoice_id = bought.json()["change"]["invoiceId"]
            intent_id = bought.json()["change"]["paymentProcessor"]["externalInvoiceId"]
            path = f"/admin/v1/teams/{team_id}/purchases/{invoice_id}/refund"
            with pytest.raises(httpx.HTTPError):
                http.post(path, json=body)
        assert process.wait(timeout=30) == 9  # it died at the crash point
    finally:
        stop(process)

    def at_stripe() -> list[tuple[int, dict[str, str]]]:
        return [
            (int(r.amount), dict(r.metadata.to_dict()) if r.metadata else {})
            for r in client.v1.refunds.list(
                params={"payment_intent": intent_id, "limit": 100}
            ).auto_paging_iter()
        ]

    def refund_entries(session: Session) -> list[LedgerEntry]:
        return list(
            session.scalars(
                select(LedgerEntry).where(
                    LedgerEntry.team_id == uuid.UUID(team_id), LedgerEntry.kind == "refund"
                )
            )
        )

    engine = make_engine(database)
    try:
        with Session(engine) as session:
            (row,) = session.scalars(select(Refund).where(Refund.team_id == uuid.UUID(team_id)))
            assert (row.status, row.amount_cents, row.provider_charge_id) == (
                "PENDING",
                1000,
                intent_id,
            )
            assert refund_entries(session) == []
        # The refund was made at localstripe, naming the row: that is how it is found again.
        assert at_stripe() == [(1000, {"billfold_refund": str(row.id), "billfold_team": team_id})]

        if resolution == "reconcile":
            provider = StripeProvider(SECRET_KEY, api_base=localstripe)
            sessions = sessionmaker(engine, expire_on_commit=False)
            report = reconcile(sessions, provider, timedelta(0), team_id=uuid.UUID(team_id))
            assert report.settled == [f"refund {row.id}: SUCCEEDED"]
            assert report.still_pending == []

        process, base = serve(database, localstripe, tmp_path)
        try:
            with httpx.Client(base_url=base, headers=operator, timeout=30) as http:
                again = http.post(path, json=body)
                # After reconciliation the retry is a replay; otherwise the retry books it.
                assert again.status_code == (200 if resolution == "reconcile" else 201), again.text
                assert again.json()["changeOrigin"] == "REFUND"
                assert again.json()["amount"] == {"val": "1000"}
                processor = again.json()["paymentProcessor"]
                assert (processor["kind"], processor["externalInvoiceId"]) == ("STRIPE", intent_id)
                replay = http.post(path, json=body)
                assert replay.status_code == 200, replay.text
                rest = http.post(path, json={"amount": "1501", "idempotencyKey": "refund-2"})
                assert rest.status_code == 400
                assert rest.json()["code"] == "refund_exceeds_purchase"
        finally:
            stop(process)

        assert at_stripe() == [(1000, {"billfold_refund": str(row.id), "billfold_team": team_id})]
        with Session(engine) as session:
            entries = refund_entries(session)
            assert [(e.credit_cents, e.reference) for e in entries] == [(-1000, intent_id)]
            settled = session.get(Refund, row.id)
            assert settled is not None and settled.status == "SUCCEEDED"
            assert settled.ledger_entry_id == entries[0].id
            assert settled.provider_refund_id.startswith("re_")
    finally:
        engine.dispose()
