"""Inserting a price version between two others, and re-sending one after its month closed.

A version at T rates the events from T until the next version's effectiveFrom: it conflicts
only with usage already rated in that interval (docs/api-decisions.md, "Prices"). Months of
2053 are used by no other test.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from billfold.cycles.models import BillingCycle
from billfold.metering.models import UsageEvent
from tests.conftest import Api, event, frozen_at, unique_sku
from tests.invoicing.conftest import close


def _put(api: Api, sku: str, price: str, effective_from: str) -> Any:
    return api.admin(
        "PUT",
        f"/admin/v1/prices/{sku}",
        json={
            "description": f"Chat {sku}",
            "unitType": "Prompt text tokens",
            "unitPrice": price,
            "effectiveFrom": effective_from,
        },
    )


def _versions(api: Api, sku: str) -> list[tuple[str, str]]:
    listed = api.admin("GET", "/admin/v1/prices").json()
    (entry,) = [s for s in listed["skus"] if s["sku"] == sku]
    return [(v["effectiveFrom"], v["unitPrice"]) for v in entry["versions"]]


def _rated(api: Api, team_id: str) -> dict[str, int]:
    """Each stored event's price version."""
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        rows = session.execute(
            select(UsageEvent.event_id, UsageEvent.price_version_id).where(
                UsageEvent.team_id == uuid.UUID(team_id)
            )
        )
        return {event_id: int(version) for event_id, version in rows}


def _spend(api: Api, team_id: str, year: int, month: int) -> int:
    with api.client.app.state.sessionmaker() as session:  # type: ignore[attr-defined]
        cycle = session.get(BillingCycle, (uuid.UUID(team_id), year, month))
        return 0 if cycle is None else int(cycle.spend_cents)


def test_a_version_in_a_gap_without_rated_usage_is_added_and_rates_the_gap(api: Api) -> None:
    sku = unique_sku()
    team_id = api.create_team()
    with frozen_at("2053-03-20T12:00:00"):
        v1 = api.set_price(sku, "0.01", "2053-02-01T00:00:00Z")
        v3 = api.set_price(sku, "0.03", "2053-03-01T00:00:00Z")
        result = api.ingest(
            [
                event(team_id, sku, 100, "2053-02-02T10:00:00Z", "early"),  # v1
                event(team_id, sku, 100, "2053-03-05T10:00:00Z", "late"),  # v3
            ]
        )
        assert result["accepted"] == 2, result
        # [Feb 15, Mar 1) holds no rated usage: a version there re-prices nothing (it used to be
        # a 409 naming the time after v3's usage)
        added = _put(api, sku, "0.02", "2053-02-15T00:00:00Z")
        assert added.status_code == 201, added.text
        v2 = added.json()
        # the gap's events are rated with it
        gap = api.ingest([event(team_id, sku, 100, "2053-02-20T10:00:00Z", "gap")])
        assert gap["accepted"] == 1, gap
        assert _rated(api, team_id) == {
            "early": int(v1["versionId"]),
            "gap": int(v2["versionId"]),
            "late": int(v3["versionId"]),
        }
        assert _spend(api, team_id, 2053, 2) == 100 + 200  # $1 at v1, $2 at v2
        assert _spend(api, team_id, 2053, 3) == 300
        # a version before every other one covers no rated usage either
        assert _put(api, sku, "0.05", "2053-01-10T00:00:00Z").status_code == 201
        assert _versions(api, sku) == [
            ("2053-01-10T00:00:00Z", "0.05"),
            ("2053-02-01T00:00:00Z", "0.01"),
            ("2053-02-15T00:00:00Z", "0.02"),
            ("2053-03-01T00:00:00Z", "0.03"),
        ]


def test_a_version_over_rated_usage_names_that_usage_and_its_version(api: Api) -> None:
    sku = unique_sku()
    team_id = api.create_team()
    with frozen_at("2053-03-20T12:00:00"):
        v1 = api.set_price(sku, "0.01", "2053-02-01T00:00:00Z")
        v3 = api.set_price(sku, "0.03", "2053-03-01T00:00:00Z")
        api.ingest(
            [
                event(team_id, sku, 100, "2053-02-10T10:05:00Z", "feb"),  # v1
                event(team_id, sku, 100, "2053-03-05T10:00:00Z", "mar"),  # v3
            ]
        )
        before = _versions(api, sku)
        refused = _put(api, sku, "0.02", "2053-02-05T00:00:00Z")
        assert refused.status_code == 409, refused.text
        error = refused.json()
        assert (error["code"], error["field"]) == ("usage_already_rated", "effectiveFrom")
        message = error["error"]
        assert f"version {v1['versionId']} " in message  # the version whose usage it would re-price
        assert f"version {v3['versionId']} " not in message
        assert "until 2053-03-01T00:00:00Z" in message  # the new version's interval
        assert "from 2053-02-10T10:00:00Z to 2053-02-10T10:15:00Z" in message  # the rated usage
        assert "at or after 2053-02-10T10:15:00Z" in message
        # what it names is right: from there on, the version is added
        assert _put(api, sku, "0.02", "2053-02-10T10:15:00Z").status_code == 201
        # after the newest version: its rated usage is in the way, up to the end of time
        late = _put(api, sku, "0.04", "2053-03-02T00:00:00Z").json()
        assert late["code"] == "usage_already_rated"
        assert f"version {v3['versionId']} " in late["error"]
        assert "from then on" in late["error"]
        assert _versions(api, sku) == [*before[:1], ("2053-02-10T10:15:00Z", "0.02"), before[1]]
        assert _rated(api, team_id) == {
            "feb": int(v1["versionId"]),
            "mar": int(v3["versionId"]),
        }


def test_an_identical_version_sent_again_after_its_month_closed_is_a_200(api: Api) -> None:
    sku = unique_sku()
    team_id = api.create_team()
    with frozen_at("2053-05-20T12:00:00"):
        first = api.set_price(sku, "0.01", "2053-05-10T00:00:00Z")
        assert api.ingest([event(team_id, sku, 100, "2053-05-11T00:00:00Z")])["accepted"] == 1
    with frozen_at("2053-06-02T12:00:00"):
        close(api, 2053, 5)
        again = _put(api, sku, "0.010", "2053-05-10T00:00:00Z")  # the same price, written apart
        assert again.status_code == 200, again.text
        assert again.json() == first  # the same version, unchanged
        different = _put(api, sku, "0.02", "2053-05-10T00:00:00Z")
        assert different.status_code == 409
        assert different.json()["code"] == "price_version_exists"
        inside = _put(api, sku, "0.02", "2053-05-20T00:00:00Z")
        assert inside.status_code == 409 and inside.json()["code"] == "cycle_closed"
        assert _versions(api, sku) == [("2053-05-10T00:00:00Z", "0.01")]
        assert _spend(api, team_id, 2053, 5) == 100
