"""Expiry of promotional credit: lazy, exact, soonest-expiring credit consumed first."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from billfold.cli import app
from billfold.config import get_settings
from tests.conftest import Api, event, unique_sku
from tests.ledger.conftest import (
    assert_consistent,
    assert_posted_and_live,
    balance,
    entries,
    frozen_at,
    grant,
    posted_sum,
    top_up,
)


def expiries(api: Api, team_id: str) -> list[int]:
    return [e.credit_cents for e in entries(api, team_id) if e.kind == "expiry"]


def origins(listing: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["changeOrigin"], c["amount"]["val"]) for c in listing["changes"]]


def test_unused_grant_expires_at_its_time_and_only_once(api: Api) -> None:
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    with frozen_at("2035-03-01T00:00:00"):
        assert grant(api, team_id, 5000, expires_at="2035-03-10T00:00:00Z").status_code == 201
        assert top_up(api, team_id, headers, 2000).status_code == 200  # purchases never expire
    with frozen_at("2035-03-09T23:59:59"):
        assert balance(api, team_id, headers)["total"] == {"val": "-7000"}
    assert expiries(api, team_id) == []
    with frozen_at("2035-03-10T00:00:00"):  # at the expiry instant it is gone
        listing = balance(api, team_id, headers)
    assert listing["total"] == {"val": "-2000"}
    newest = listing["changes"][0]
    assert (newest["changeOrigin"], newest["amount"]) == ("MANUAL", {"val": "5000"})
    assert newest["createTime"] == "2035-03-10T00:00:00Z"
    assert posted_sum(listing) == -2000
    with frozen_at("2035-04-01T00:00:00"):
        for _ in range(3):
            assert balance(api, team_id, headers)["total"] == {"val": "-2000"}
    assert expiries(api, team_id) == [-5000]
    (expiry,) = [e for e in entries(api, team_id) if e.kind == "expiry"]
    (granted,) = [e for e in entries(api, team_id) if e.kind == "grant"]
    assert expiry.idempotency_key == f"expiry:{granted.id}"
    assert expiry.reference == str(granted.id)
    assert assert_consistent(api, team_id) == 2000


def test_soonest_expiring_credit_is_consumed_first(api: Api) -> None:
    team_id, headers = api.team_with_key()
    with frozen_at("2035-03-01T00:00:00"):
        grant(api, team_id, 3000, key="late", expires_at="2035-03-20T00:00:00Z")
        grant(api, team_id, 3000, key="soon", expires_at="2035-03-10T00:00:00Z")
        grant(api, team_id, 3000, key="forever")
    with frozen_at("2035-03-05T00:00:00"):
        # Takes "soon" whole, then 1000 of "late"; "forever" stays untouched.
        assert grant(api, team_id, -4000, key="adj").status_code == 201
        assert balance(api, team_id, headers)["total"] == {"val": "-5000"}
    with frozen_at("2035-03-15T00:00:00"):
        assert balance(api, team_id, headers)["total"] == {"val": "-5000"}  # "soon": 0 left
    with frozen_at("2035-03-25T00:00:00"):
        listing = balance(api, team_id, headers)
    assert listing["total"] == {"val": "-3000"}  # "late" lost its unused 2000
    assert expiries(api, team_id) == [0, -2000]
    # A grant that expired fully used shows no change.
    assert origins(listing) == [
        ("MANUAL", "2000"),
        ("MANUAL", "4000"),
        ("MANUAL", "-3000"),
        ("MANUAL", "-3000"),
        ("MANUAL", "-3000"),
    ]
    assert assert_consistent(api, team_id) == 3000


def _usage_across_an_expiry(api: Api, read_in_between: bool) -> tuple[str, dict[str, Any]]:
    sku = unique_sku()
    api.set_price(sku, "0.000001")  # 1,000,000 units = $1.00
    team_id, headers = api.team_with_key()
    with frozen_at("2035-04-01T00:00:00"):
        grant(api, team_id, 5000, expires_at="2035-04-15T12:07:00Z")
    with frozen_at("2035-04-15T12:20:00"):
        api.ingest(
            [
                event(team_id, sku, 20_000_000, "2035-04-10T08:00:00Z"),  # $20, before
                event(team_id, sku, 10_000_000, "2035-04-15T12:06:59Z"),  # $10, before
                event(team_id, sku, 5_000_000, "2035-04-15T12:07:00Z"),  # $5, at: after
            ]
        )
        if read_in_between:
            # Posted: the grant less its unused rest at expiry (5000 - 2000); the $30 drawn before
            # the expiry posts at cycle close. Live: nothing left.
            assert_posted_and_live(api, team_id, headers, posted=3000, left=0)
        # More usage after the expiry (and possibly after it was booked).
        api.ingest([event(team_id, sku, 8_000_000, "2035-04-15T12:10:00Z")])
    with frozen_at("2035-04-20T00:00:00"):
        listing = assert_posted_and_live(api, team_id, headers, posted=3000, left=0)
    return team_id, listing


def test_usage_before_the_expiry_keeps_its_credit_whenever_the_expiry_is_booked(
    api: Api,
) -> None:
    for read_in_between in (True, False):
        team_id, listing = _usage_across_an_expiry(api, read_in_between)
        # $30 of usage came before the expiry: the grant paid it; $20 unused expired; the $13
        # after the expiry is postpaid. The same whether a read booked the expiry early or not.
        assert expiries(api, team_id) == [-2000]
        # No SPEND change while the cycle is open: the ledger shows the grant and its expiry.
        assert listing["total"] == {"val": "-3000"}
        assert origins(listing) == [("MANUAL", "2000"), ("MANUAL", "-5000")]
        assert assert_consistent(api, team_id) == 3000


def test_expire_command_books_due_grants_of_idle_teams(api: Api, monkeypatch: Any) -> None:
    team_id, headers = api.team_with_key()
    other_id = api.create_team()
    with frozen_at("2035-05-01T00:00:00"):
        grant(api, team_id, 700, expires_at="2035-05-02T00:00:00Z")
        grant(api, other_id, 800, expires_at="2035-06-02T00:00:00Z")
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    get_settings.cache_clear()
    try:
        with frozen_at("2035-05-03T00:00:00"):
            result = CliRunner().invoke(app, ["credits", "expire"])
            assert result.exit_code == 0, result.output
            single = CliRunner().invoke(app, ["credits", "expire", "--team", team_id])
            assert single.exit_code == 0 and "0 grant(s)" in single.output
    finally:
        get_settings.cache_clear()
    assert expiries(api, team_id) == [-700]
    assert expiries(api, other_id) == []
    with frozen_at("2035-05-03T00:00:00"):
        assert balance(api, team_id, headers)["total"] == {"val": "0"}
    assert expiries(api, team_id) == [-700]


def test_an_expired_grant_keeps_what_usage_drew_and_later_grants_pay_the_rest(api: Api) -> None:
    """Two expiring grants: the first pays the usage before its expiry; the second pays only the
    usage the first did not (soonest-expiring first), and loses the rest."""
    sku = unique_sku()
    api.set_price(sku, "0.000001")  # 1,000,000 units = $1.00
    team_id, headers = api.team_with_key()
    with frozen_at("2035-05-01T00:00:00"):
        grant(api, team_id, 1000, key="a", expires_at="2035-05-10T00:00:00Z")
        grant(api, team_id, 1000, key="b", expires_at="2035-05-20T00:00:00Z")
    with frozen_at("2035-05-05T00:00:00"):
        api.ingest([event(team_id, sku, 6_000_000, "2035-05-05T00:00:00Z")])  # $6
    with frozen_at("2035-05-15T00:00:00"):
        # "a" lost $4 (posted 2000 - 400); of the 1600, the open cycle's $6 leaves 1000 live.
        assert_posted_and_live(api, team_id, headers, posted=1600, left=1000)
        api.ingest([event(team_id, sku, 3_000_000, "2035-05-15T00:00:00Z")])  # $3
    with frozen_at("2035-05-25T00:00:00"):
        listing = assert_posted_and_live(api, team_id, headers, posted=900, left=0)
    # "a" paid $6 and lost $4; "b" paid the other $3 and lost $7. Nothing left, nothing postpaid;
    # the $9 the open cycle drew is posted (one SPEND change) when the cycle closes.
    assert expiries(api, team_id) == [-400, -700]
    assert listing["total"] == {"val": "-900"}
    assert origins(listing) == [
        ("MANUAL", "700"),
        ("MANUAL", "400"),
        ("MANUAL", "-1000"),
        ("MANUAL", "-1000"),
    ]
    assert assert_consistent(api, team_id) == 900
