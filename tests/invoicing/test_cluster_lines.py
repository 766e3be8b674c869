"""Invoice lines per SKU, price version and cluster (``clusterName``), as upstream's lines.

Each test closes or uses months no other test uses (closing is global to a database).
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, text

from billfold.migrate import upgrade
from tests.conftest import Api, downgrade, event, unique_sku
from tests.invoicing.conftest import (
    close,
    frozen_at,
    invoices,
    preview,
    spend_status,
    use_settings,
)
from tests.metering.test_event_migrations import migrated_app

# $0.001 a unit: 15 units are 1.5 cents, rounded half up to 2 on each line (three lines of 15
# units: 6 cents, where one line of 45 units would be 4.5 -> 5).
PRICE = "0.001"


def _lines(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (line["clusterName"], line["numUnits"], line["amount"])
        for line in body["coreInvoice"]["lines"]
    ]


def _clustered(team_id: str, sku: str, day: str, prefix: str) -> list[dict[str, Any]]:
    """15 units in us-east-1, 15 in eu-west-1 (in two events), 15 without a cluster (one event
    with no properties, one whose clusterName is a number: no cluster name)."""
    numeric = event(team_id, sku, 5, f"{day}T11:00:00Z", f"{prefix}-num", model="m")
    numeric["properties"]["clusterName"] = 7
    return [
        event(team_id, sku, 15, f"{day}T10:00:00Z", f"{prefix}-us", clusterName="us-east-1"),
        event(team_id, sku, 10, f"{day}T10:05:00Z", f"{prefix}-eu1", clusterName="eu-west-1"),
        event(
            team_id, sku, 5, f"{day}T23:59:00Z", f"{prefix}-eu2", clusterName="eu-west-1", model="x"
        ),
        event(team_id, sku, 10, f"{day}T10:00:00Z", f"{prefix}-none"),
        numeric,
    ]


@pytest.mark.parametrize("groupable", ["apiKeyId,model,clusterName", "model"])
def test_a_line_per_cluster_rounded_per_line_preview_is_the_invoice(
    api: Api, monkeypatch: pytest.MonkeyPatch, groupable: str
) -> None:
    """The line's cluster is the events' clusterName whether or not it is groupable."""
    use_settings(api, monkeypatch, groupable_properties=groupable)
    year = 2051 if groupable == "model" else 2052  # months no other test closes
    sku = unique_sku("cl")
    api.set_price(sku, PRICE, f"{year}-01-01T00:00:00Z", description=f"Chat {sku}")
    team_id, headers = api.team_with_key()
    batch = _clustered(team_id, sku, f"{year}-03-10", "e")
    with frozen_at(f"{year}-03-20T12:00:00"):
        assert api.ingest(batch)["accepted"] == 5
        # Re-sent: all duplicates, nothing changes.
        again = api.ingest(batch)
        assert (again["accepted"], again["duplicates"]) == (0, 5)
        running = preview(api, headers, team_id)
        status = spend_status(api, team_id)

    # "" (no cluster) first, then by name; each line rounded once.
    assert _lines(running) == [
        ("", "15", "2"),
        ("eu-west-1", "15", "2"),
        ("us-east-1", "15", "2"),
    ]
    assert running["coreInvoice"]["amountBeforeVat"] == "6"
    assert status["cycleSpend"] == {"val": "6"}

    with frozen_at(f"{year}-04-02T00:00:00"):
        [closed] = close(api, year, 3)["invoices"]
        [invoice] = invoices(api, headers, team_id)
    assert closed["usage"] == "6"
    assert invoice["lines"] == running["coreInvoice"]["lines"]


def test_canceling_a_clustered_event_takes_back_from_its_own_line(api: Api) -> None:
    sku = unique_sku("cl")
    api.set_price(sku, PRICE, "2049-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    with frozen_at("2049-03-20T12:00:00"):
        assert api.ingest(_clustered(team_id, sku, "2049-03-10", "c"))["accepted"] == 5
        body = {"events": [{"teamId": team_id, "eventId": "c-eu1"}], "reason": "refund"}
        response = api.admin("POST", "/admin/v1/usage-events/cancel", json=body)
        assert response.json()["canceled"] == 1, response.text
        after_one = preview(api, headers, team_id)
        status = spend_status(api, team_id)
        body = {"events": [{"teamId": team_id, "eventId": "c-us"}], "reason": "refund"}
        assert api.admin("POST", "/admin/v1/usage-events/cancel", json=body).json()["canceled"] == 1
        after_two = preview(api, headers, team_id)
        status_two = spend_status(api, team_id)

    assert _lines(after_one) == [("", "15", "2"), ("eu-west-1", "5", "1"), ("us-east-1", "15", "2")]
    assert (
        status["cycleSpend"] == {"val": "5"} and after_one["coreInvoice"]["amountBeforeVat"] == "5"
    )
    # A line left with no events is gone.
    assert _lines(after_two) == [("", "15", "2"), ("eu-west-1", "5", "1")]
    assert status_two["cycleSpend"] == {"val": "3"}


def _stored_lines(engine: Engine) -> list[tuple[int, str, int, int, int]]:
    """(month, cluster, quantity, events, amount) of every line; cluster "-" before 0013."""
    columns = {c["name"] for c in sa.inspect(engine).get_columns("cycle_lines")}
    cluster = "cluster_name" if "cluster_name" in columns else "'-'"
    with engine.connect() as connection:
        rows = connection.execute(
            text(f"SELECT month, {cluster}, quantity, events, amount_cents FROM cycle_lines")
        )
        return sorted((int(m), str(c), int(q), int(n), int(a)) for m, c, q, n, a in rows)


def _spend(engine: Engine) -> dict[int, int]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT month, spend_cents FROM billing_cycles"))
        return {int(month): int(spend) for month, spend in rows}


def test_lines_split_by_cluster_when_migrating_and_merge_back(fresh_url: str) -> None:
    """0013 down: a line per version again (an open cycle's amount rounded once more from the
    summed quantity, its spend moved by the difference; a closed cycle's amounts summed, as
    invoiced). Up: an open cycle's lines split by cluster from its raw events, and canceling an
    event then takes from its own cluster's line."""
    with migrated_app(fresh_url) as (engine, api):  # frozen at 2036-03-20 12:00
        sku = unique_sku("cl")
        api.set_price(sku, PRICE, "2036-01-01T00:00:00Z")
        team_id = api.create_team()
        assert api.ingest(_clustered(team_id, sku, "2036-02-10", "feb"))["accepted"] == 5
        assert api.ingest(_clustered(team_id, sku, "2036-03-10", "mar"))["accepted"] == 5
        close(api, 2036, 2)
        clustered = [(c, 15, n, 2) for c, n in (("", 2), ("eu-west-1", 2), ("us-east-1", 1))]
        assert _stored_lines(engine) == [(m, *line) for m in (2, 3) for line in clustered]
        assert _spend(engine) == {2: 6, 3: 6}

        downgrade(engine, "0012")
        # February (closed): summed as invoiced; March (open): 45 units are 4.5 -> 5 cents.
        assert _stored_lines(engine) == [(2, "-", 45, 5, 6), (3, "-", 45, 5, 5)]
        assert _spend(engine) == {2: 6, 3: 5}

        upgrade(engine)
        assert _stored_lines(engine) == [(2, "", 45, 5, 6), *[(3, *line) for line in clustered]]
        assert _spend(engine) == {2: 6, 3: 6}
        body = {"events": [{"teamId": team_id, "eventId": "mar-us"}], "reason": "refund"}
        assert api.admin("POST", "/admin/v1/usage-events/cancel", json=body).json()["canceled"] == 1
        assert [line for line in _stored_lines(engine) if line[0] == 3] == [
            (3, *line) for line in clustered[:2]
        ]
        assert _spend(engine) == {2: 6, 3: 4}
