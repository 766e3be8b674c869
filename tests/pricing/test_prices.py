"""The price book through the operator API."""

from __future__ import annotations

import pytest

from tests.conftest import Api, unique_sku


def test_set_and_list_versions(api: Api) -> None:
    sku = unique_sku("grok")
    first = api.set_price(sku, "0.000003", "2026-01-01T00:00:00Z")
    assert first["unitPrice"] == "0.000003"
    assert first["effectiveFrom"] == "2026-01-01T00:00:00Z"
    second = api.set_price(sku, "0.0000025", "2026-06-01T00:00:00+02:00")
    assert second["effectiveFrom"] == "2026-05-31T22:00:00Z"
    listed = api.admin("GET", "/admin/v1/prices").json()
    (entry,) = [s for s in listed["skus"] if s["sku"] == sku]
    assert [v["unitPrice"] for v in entry["versions"]] == ["0.000003", "0.0000025"]


def test_same_version_twice_is_idempotent_and_a_different_one_conflicts(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "1.5", "2026-01-01T00:00:00Z")
    again = api.admin(
        "PUT",
        f"/admin/v1/prices/{sku}",
        json={
            "description": f"Chat {sku}",
            "unitType": "Prompt text tokens",
            "unitPrice": "1.50",
            "effectiveFrom": "2026-01-01T00:00:00Z",
        },
    )
    assert again.status_code == 200
    other = api.admin(
        "PUT",
        f"/admin/v1/prices/{sku}",
        json={
            "description": "x",
            "unitType": "y",
            "unitPrice": "2",
            "effectiveFrom": "2026-01-01T00:00:00Z",
        },
    )
    assert other.status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"unitPrice": "0.0000000000001"}, "unitPrice"),  # 13 decimals
        ({"unitPrice": "-1"}, "unitPrice"),
        ({"unitPrice": "abc"}, "unitPrice"),
        ({"unitPrice": "1e-6"}, "unitPrice"),
        ({"unitPrice": "1_000"}, "unitPrice"),  # Decimal() reads it as 1000
        ({"unitPrice": "\u0663"}, "unitPrice"),  # Arabic-Indic 3, which Decimal() reads as 3
        ({"unitPrice": "+1"}, "unitPrice"),
        ({"unitPrice": ".5"}, "unitPrice"),
        ({"unitPrice": "NaN"}, "unitPrice"),
        ({"unitPrice": 0.5}, "unitPrice"),  # floats are refused: money is never a float
        ({"description": ""}, "description"),
        ({"effectiveFrom": "yesterday"}, "effectiveFrom"),
        ({"effectiveFrom": 1767225600}, "effectiveFrom"),  # pydantic would read Unix seconds
        ({"effectiveFrom": 1767225600000.0}, "effectiveFrom"),  # ... or milliseconds
        ({"effectiveFrom": "1767225600"}, "effectiveFrom"),  # ... also from a string
        ({"effectiveFrom": "1767225600000.5"}, "effectiveFrom"),
        ({"effectiveFrom": True}, "effectiveFrom"),
    ],
)
def test_bad_price_is_400(api: Api, body: dict[str, object], field: str) -> None:
    sku = unique_sku()
    full = {
        "description": "d",
        "unitType": "u",
        "unitPrice": "1",
        "effectiveFrom": "2026-01-01T00:00:00Z",
    }
    response = api.admin("PUT", f"/admin/v1/prices/{sku}", json={**full, **body})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    listed = api.admin("GET", "/admin/v1/prices").json()
    assert sku not in {s["sku"] for s in listed["skus"]}


def test_version_may_not_reprice_rated_usage(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.001", "2026-01-01T00:00:00Z")
    team_id = api.create_team()
    from tests.conftest import event

    api.ingest([event(team_id, sku, 10, "2026-11-10T12:00:00Z")])
    response = api.admin(
        "PUT",
        f"/admin/v1/prices/{sku}",
        json={
            "description": "d",
            "unitType": "u",
            "unitPrice": "1",
            "effectiveFrom": "2026-11-01T00:00:00Z",
        },
    )
    assert response.status_code == 409
    assert response.json()["code"] == "usage_already_rated"


def test_trailing_zeros_are_not_decimal_places(api: Api) -> None:
    sku = unique_sku()
    # 18 places written, 6 of them significant: $3 per million units
    version = api.set_price(sku, "0.000003000000000000", "2026-01-01T00:00:00Z")
    assert version["unitPrice"] == "0.000003"
    assert api.set_price(unique_sku(), " 12.500 ", "2026-01-01T00:00:00Z")["unitPrice"] == "12.5"
