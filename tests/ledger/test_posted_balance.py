"""The prepaid balance is the *posted* ledger (spec §11, revised), the preview the live credit (§8).

Mid-cycle, ``total`` is minus the posted credit and lists no SPEND change for the open cycle; a
client's ``|total| - |prepaidCreditsUsed|`` is the live credit. Cycle close posts the part of the
cycle's spend that credit paid as one SPEND change, and ``total`` moves by it.

Cycle close closes a month for every team of the database: each test closes months of 2047 that
no other test uses.
"""

from __future__ import annotations

from typing import Any

from billfold.payments.sandbox import CARD_DECLINED
from tests.conftest import Api, event, unique_sku
from tests.invoicing.conftest import close, invoices
from tests.ledger.conftest import (
    assert_consistent,
    assert_posted_and_live,
    balance,
    entries,
    frozen_at,
    grant,
    preview,
    top_up,
)


def origins(listing: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["changeOrigin"], c["amount"]["val"]) for c in listing["changes"]]


def test_mid_cycle_then_close_posts_one_spend_change(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.000001", "2046-01-01T00:00:00Z")  # 1,000,000 units = $1.00
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    with frozen_at("2047-01-10T12:00:00"):
        assert top_up(api, team_id, headers, 2500).status_code == 200
        api.ingest([event(team_id, sku, 3_000_000, "2047-01-10T11:00:00Z")])  # $3.00
        listing = assert_posted_and_live(api, team_id, headers, posted=2500, left=2200)
    assert origins(listing) == [("PURCHASE", "-2500")]
    with frozen_at("2047-01-20T12:00:00"):
        api.ingest([event(team_id, sku, 4_000_000, "2047-01-20T11:00:00Z")])  # $4.00
        assert_posted_and_live(api, team_id, headers, posted=2500, left=1800)

    with frozen_at("2047-02-02T00:00:00"):
        close(api, 2047, 1)
        # The new cycle draws nothing yet: total = prepaidCredits = -(credit left).
        listing = assert_posted_and_live(api, team_id, headers, posted=1800, left=1800)
        assert preview(api, team_id, headers)["prepaidCreditsUsed"] == {"val": "0"}
    assert listing["total"] == {"val": "-1800"}  # moved by the 700 the cycle drew
    spend, purchase = listing["changes"]
    assert (spend["changeOrigin"], spend["amount"]) == ("SPEND", {"val": "700"})
    assert (spend["spendBpKeyYear"], spend["spendBpKeyMonth"]) == (2047, 1)
    assert spend["createTime"] == "2047-02-02T00:00:00Z"  # posted at close
    assert "topupStatus" not in spend and "paymentProcessor" not in spend
    assert purchase["changeOrigin"] == "PURCHASE"
    [invoice] = [i for i in invoices(api, headers, team_id) if "monthly" in i]
    assert invoice["monthly"]["prepaidTokensToSpend"] == {"val": "700"}
    assert assert_consistent(api, team_id) == 1800

    # Later reads (and another close run) post nothing again.
    with frozen_at("2047-02-10T00:00:00"):
        close(api, 2047, 1)
        again = balance(api, team_id, headers)
    assert again["changes"] == listing["changes"] and again["total"] == listing["total"]


def test_only_the_credit_paid_part_is_posted(api: Api) -> None:
    """Usage beyond the credit: the SPEND change is what credit paid; the rest is invoiced."""
    sku = unique_sku()
    api.set_price(sku, "0.000001", "2046-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    api.add_card(team_id)
    postpaid_id, postpaid_headers = api.team_with_key()
    with frozen_at("2047-02-10T12:00:00"):
        assert grant(api, team_id, 1000).status_code == 201
        api.ingest(
            [
                event(team_id, sku, 30_000_000, "2047-02-10T11:00:00Z"),  # $30.00
                event(postpaid_id, sku, 5_000_000, "2047-02-10T11:00:00Z"),  # $5.00, no credit
            ]
        )
        assert_posted_and_live(api, team_id, headers, posted=1000, left=0)
    with frozen_at("2047-03-02T00:00:00"):
        close(api, 2047, 2)
        listing = assert_posted_and_live(api, team_id, headers, posted=0, left=0)
        postpaid = balance(api, postpaid_id, postpaid_headers)
    assert origins(listing) == [("SPEND", "1000"), ("MANUAL", "-1000")]
    assert listing["total"] == {"val": "0"}
    [invoice] = invoices(api, headers, team_id)
    assert (invoice["subtotal"], invoice["monthly"]["prepaidTokensToSpend"]) == (
        "2000",
        {"val": "1000"},
    )
    # A postpaid-only team's close posts nothing to its (empty) prepaid ledger.
    assert postpaid == {"changes": [], "total": {"val": "0"}}


def test_with_an_expiry_the_balance_posts_the_expiry_then_the_spend(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.000001", "2046-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    with frozen_at("2047-03-01T00:00:00"):
        assert grant(api, team_id, 5000, expires_at="2047-03-15T00:00:00Z").status_code == 201
        assert grant(api, team_id, 1000).status_code == 201  # never expires
    with frozen_at("2047-03-10T00:00:00"):
        api.ingest([event(team_id, sku, 20_000_000, "2047-03-09T00:00:00Z")])  # $20, before
        assert_posted_and_live(api, team_id, headers, posted=6000, left=4000)
    with frozen_at("2047-03-20T00:00:00"):
        # The expiring grant paid the $20 and lost its unused $30 at its expiry.
        api.ingest([event(team_id, sku, 5_000_000, "2047-03-19T00:00:00Z")])  # $5, after
        listing = assert_posted_and_live(api, team_id, headers, posted=3000, left=500)
    assert origins(listing) == [("MANUAL", "3000"), ("MANUAL", "-1000"), ("MANUAL", "-5000")]
    assert [e.kind for e in entries(api, team_id)] == ["grant", "grant", "expiry"]
    with frozen_at("2047-04-02T00:00:00"):
        close(api, 2047, 3)
        listing = assert_posted_and_live(api, team_id, headers, posted=500, left=500)
    assert origins(listing)[0] == ("SPEND", "2500")
    assert listing["total"] == {"val": "-500"}
    assert assert_consistent(api, team_id) == 500


def test_a_failed_top_up_is_listed_and_never_counts(api: Api) -> None:
    sku = unique_sku()
    api.set_price(sku, "0.000001", "2046-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    api.add_card(team_id, CARD_DECLINED)
    with frozen_at("2047-05-05T00:00:00"):
        assert top_up(api, team_id, headers, 5000).status_code == 402
        assert grant(api, team_id, 1000).status_code == 201
    with frozen_at("2047-05-10T00:00:00"):
        api.ingest([event(team_id, sku, 4_000_000, "2047-05-09T00:00:00Z")])  # $4
        listing = assert_posted_and_live(api, team_id, headers, posted=1000, left=600)
    assert [
        (c["changeOrigin"], c.get("topupStatus"), c["amount"]["val"]) for c in listing["changes"]
    ] == [("MANUAL", None, "-1000"), ("PURCHASE", "FAILED_TO_CHARGE", "-5000")]
    with frozen_at("2047-06-02T00:00:00"):
        close(api, 2047, 5)
        listing = assert_posted_and_live(api, team_id, headers, posted=600, left=600)
    assert [
        (c["changeOrigin"], c.get("topupStatus"), c["amount"]["val"]) for c in listing["changes"]
    ] == [
        ("SPEND", None, "400"),
        ("MANUAL", None, "-1000"),
        ("PURCHASE", "FAILED_TO_CHARGE", "-5000"),
    ]


def test_between_month_end_and_close_the_total_still_holds_the_last_month(api: Api) -> None:
    """Two open cycles (the last month not closed yet): ``total`` is still the posted credit, so
    it also holds what the last month drew; the preview's ``prepaidCredits`` is the credit left
    for the current cycle. At close the two agree again."""
    sku = unique_sku()
    api.set_price(sku, "0.000001", "2046-01-01T00:00:00Z")
    team_id, headers = api.team_with_key()
    with frozen_at("2047-07-10T00:00:00"):
        assert grant(api, team_id, 1000).status_code == 201
        api.ingest([event(team_id, sku, 3_000_000, "2047-07-10T00:00:00Z")])  # $3 in July
    with frozen_at("2047-08-01T06:00:00"):
        api.ingest([event(team_id, sku, 2_000_000, "2047-08-01T05:00:00Z")])  # $2 in August
        listing = balance(api, team_id, headers)
        core = preview(api, team_id, headers)
    assert listing["total"] == {"val": "-1000"}
    assert origins(listing) == [("MANUAL", "-1000")]
    assert (core["prepaidCredits"], core["prepaidCreditsUsed"]) == (
        {"val": "-700"},
        {"val": "-200"},
    )
    with frozen_at("2047-08-02T00:00:00"):
        close(api, 2047, 7)
        listing = assert_posted_and_live(api, team_id, headers, posted=700, left=500)
    assert origins(listing) == [("SPEND", "300"), ("MANUAL", "-1000")]
