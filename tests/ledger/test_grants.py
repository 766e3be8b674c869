"""Operator credit grants and adjustments (POST /admin/v1/teams/{team_id}/credits) and the CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from billfold.cli import app
from billfold.config import get_settings
from tests.conftest import Api, event, unique_sku
from tests.ledger.conftest import (
    assert_consistent,
    assert_nothing_happened,
    assert_posted_and_live,
    balance,
    entries,
    frozen_at,
    grant,
)


def test_grant_is_201_and_idempotent(api: Api) -> None:
    team_id, headers = api.team_with_key()
    first = grant(api, team_id, 5000, key="grant-1")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["teamId"] == team_id
    assert (body["kind"], body["amount"], body["reason"], body["idempotencyKey"]) == (
        "grant",
        "5000",
        "promo",
        "grant-1",
    )
    assert body["createTime"].endswith("Z") and "expiresAt" not in body
    assert "idempotent-replayed" not in first.headers

    again = grant(api, team_id, 5000, key="grant-1")
    assert again.status_code == 201
    assert again.json() == body
    assert again.headers["idempotent-replayed"] == "true"

    for changed in (
        {"amount": "6000", "reason": "promo"},
        {"amount": "5000", "reason": "other"},
        {"amount": "5000", "reason": "promo", "expiresAt": "2099-01-01T00:00:00Z"},
    ):
        conflict = api.admin(
            "POST",
            f"/admin/v1/teams/{team_id}/credits",
            json={**changed, "idempotencyKey": "grant-1"},
        )
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["code"] == "idempotency_key_reused"

    listing = balance(api, team_id, headers)
    (change,) = listing["changes"]
    assert (change["changeOrigin"], change["amount"]) == ("MANUAL", {"val": "-5000"})
    assert change["paymentProcessor"] == {
        "kind": "MANUAL",
        "externalParty": "",
        "externalInvoiceId": "",
    }
    assert "topupStatus" not in change and "invoiceId" not in change
    assert listing["total"] == {"val": "-5000"}
    assert len(entries(api, team_id)) == 1
    assert assert_consistent(api, team_id) == 5000


def test_grant_without_a_key_is_a_new_grant_each_time(api: Api) -> None:
    team_id, headers = api.team_with_key()
    for _ in range(2):
        response = api.admin("POST", f"/admin/v1/teams/{team_id}/credits", json={"amount": 100})
        assert response.status_code == 201, response.text
        assert response.json()["idempotencyKey"].startswith("auto-")
    assert balance(api, team_id, headers)["total"] == {"val": "-200"}


BAD_GRANTS: list[tuple[str, dict[str, Any], str]] = [
    ("zero", {"amount": "0"}, "invalid_argument"),
    ("decimal", {"amount": "12.5"}, "invalid_argument"),
    ("float", {"amount": 12.5}, "invalid_argument"),
    ("text", {"amount": "lots"}, "invalid_argument"),
    ("missing", {}, "invalid_argument"),
    ("too large", {"amount": str(10**12 + 1)}, "amount_out_of_range"),
    (
        "expiry in the past",
        {"amount": "100", "expiresAt": "2001-01-01T00:00:00Z"},
        "invalid_argument",
    ),
    (
        "expiry without zone",
        {"amount": "100", "expiresAt": "2099-01-01T00:00:00"},
        "invalid_argument",
    ),
    ("expiry not a time", {"amount": "100", "expiresAt": "soon"}, "invalid_argument"),
    ("expiry as Unix seconds", {"amount": "100", "expiresAt": 4070908800}, "invalid_argument"),
    ("expiry as their text", {"amount": "100", "expiresAt": "4070908800"}, "invalid_argument"),
    (
        "negative with expiry",
        {"amount": "-1", "expiresAt": "2099-01-01T00:00:00Z"},
        "invalid_argument",
    ),
    ("empty key", {"amount": "100", "idempotencyKey": ""}, "invalid_argument"),
    ("long key", {"amount": "100", "idempotencyKey": "k" * 201}, "invalid_argument"),
    ("adjustment beyond credit", {"amount": "-1"}, "insufficient_credit"),
]


@pytest.mark.parametrize(("case", "body", "code"), BAD_GRANTS, ids=[b[0] for b in BAD_GRANTS])
def test_bad_grants_are_400_and_change_nothing(
    api: Api, case: str, body: dict[str, Any], code: str
) -> None:
    team_id = api.create_team()
    response = api.admin("POST", f"/admin/v1/teams/{team_id}/credits", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code
    assert_nothing_happened(api, team_id)


def test_unknown_team_is_404_and_bad_id_400(api: Api) -> None:
    missing = str(uuid.uuid4())
    response = grant(api, missing, 100)
    assert response.status_code == 404
    assert response.json()["code"] == "team_not_found"
    assert entries(api, missing) == []
    assert grant(api, "not-a-uuid", 100).json()["code"] == "invalid_uuid"
    team_id, headers = api.team_with_key()
    # The operator API refuses a management key.
    refused = api.client.post(
        f"/admin/v1/teams/{team_id}/credits", headers=headers, json={"amount": "100"}
    )
    assert refused.status_code == 401
    assert_nothing_happened(api, team_id)


def test_adjustment_takes_back_at_most_the_credit_left(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.000003")
    team_id, headers = api.team_with_key()
    with frozen_at("2035-07-10T12:00:00"):
        assert grant(api, team_id, 1000).status_code == 201
        api.ingest([event(team_id, sku, 2_000_000, "2035-07-10T11:00:00Z")])  # $6.00 used
        # 400 left: the 600 open-cycle usage already drew cannot be taken back.
        too_much = grant(api, team_id, -401, key="adj")
        assert too_much.status_code == 400
        assert too_much.json()["code"] == "insufficient_credit"
        assert len(entries(api, team_id)) == 1
        adjusted = grant(api, team_id, -400, key="adj", reason="correction")
        assert adjusted.status_code == 201, adjusted.text
        assert (adjusted.json()["kind"], adjusted.json()["amount"]) == ("adjustment", "-400")
        # The posted ledger keeps the 600 the open cycle drew (posted at close); none is left.
        listing = assert_posted_and_live(api, team_id, headers, posted=600, left=0)
    assert listing["total"] == {"val": "-600"}
    assert [(c["changeOrigin"], c["amount"]["val"]) for c in listing["changes"]] == [
        ("MANUAL", "400"),
        ("MANUAL", "-1000"),
    ]
    assert assert_consistent(api, team_id) == 600


@pytest.fixture
def cli_env(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_grant_and_balance(api: Api, cli_env: None) -> None:
    team_id, headers = api.team_with_key()
    args = ["credits", "grant", team_id, "--amount", "2500", "--reason", "welcome"]
    args += ["--idempotency-key", "cli-1", "--expires-at", "2099-01-01T00:00:00Z", "--json"]
    out = json.loads(run(*args))
    assert (out["kind"], out["amount"], out["expiresAt"]) == (
        "grant",
        "2500",
        "2099-01-01T00:00:00Z",
    )
    assert json.loads(run(*args)) == out
    summary = json.loads(run("credits", "balance", team_id, "--json"))
    assert summary["creditLeft"] == "2500" and summary["total"] == {"val": "-2500"}
    assert summary["changes"] == balance(api, team_id, headers)["changes"]
    assert "2500" in run("credits", "balance", team_id)

    conflict = CliRunner().invoke(
        app, ["credits", "grant", team_id, "--amount", "1", "--idempotency-key", "cli-1"]
    )
    assert conflict.exit_code == 1 and "idempotency_key_reused" in conflict.output
    missing = CliRunner().invoke(app, ["credits", "balance", str(uuid.uuid4())])
    assert missing.exit_code == 1 and "team_not_found" in missing.output
    assert len(entries(api, team_id)) == 1
