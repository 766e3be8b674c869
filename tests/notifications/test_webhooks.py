"""Webhooks through HTTP on both databases, to a real loopback receiver: signed per Standard
Webhooks (verified with the ``standardwebhooks`` package), one delivery per event, a stable
``webhook-id`` across retries, retries then ``failed``, manual retry, secret rotation."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import WebhookVerificationError

from billfold.app import create_app
from billfold.config import Settings
from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS, CARD_DECLINED
from tests.conftest import OPERATOR_TOKEN, Api
from tests.notifications.conftest import BASE, Hooks, of_team, top_up, verify
from tests.notifications.receiver import receiver


def test_topup_events_are_delivered_once_and_signed(api: Api, hooks: Hooks) -> None:
    with receiver() as rx:
        endpoint = hooks.create(rx.url, ["topup.succeeded", "topup.failed"])
        assert endpoint["id"].startswith("we_")
        assert endpoint["secret"].startswith("whsec_")
        assert endpoint["eventTypes"] == ["topup.succeeded", "topup.failed"]
        team_id, headers = api.team_with_key()
        api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
        assert top_up(api, team_id, headers, 2500).status_code == 200
        (paid,) = rx.wait(1, of_team(team_id))
        body = verify(endpoint["secret"], paid)
        assert body["type"] == "topup.succeeded"
        assert body["timestamp"].endswith("Z")
        assert body["data"]["teamId"] == team_id
        assert body["data"]["amount"] == "2500"
        change = body["data"]["change"]
        assert change["topupStatus"] == "SUCCEEDED"
        assert change["amount"] == {"val": "-2500"}
        assert change["invoiceNumber"]
        assert paid.headers["webhook-id"].startswith("msg_")
        with pytest.raises(WebhookVerificationError):
            verify(hooks.create(rx.url, ["invoice.paid"])["secret"], paid)

        api.add_card(team_id, CARD_DECLINED)
        assert top_up(api, team_id, headers, 700).status_code == 402
        both = rx.wait(2, of_team(team_id))
        failed = verify(endpoint["secret"], both[1])
        assert failed["type"] == "topup.failed"
        assert failed["data"]["change"]["topupStatus"] == "FAILED_TO_CHARGE"
        time.sleep(0.5)  # nothing more comes: one delivery per event
        assert len(rx.messages(of_team(team_id))) == 2
        (listed_failed, listed_paid) = hooks.deliveries(endpoint["id"])[:2]
        assert listed_paid["id"] == paid.headers["webhook-id"]
        assert listed_paid["type"] == "topup.succeeded"
        assert listed_paid["state"] == "succeeded"
        assert listed_paid["attempts"] == 1
        assert listed_paid["lastStatusCode"] == 200
        assert "nextAttemptTime" not in listed_paid
        assert listed_failed["type"] == "topup.failed"


def test_an_endpoint_gets_only_its_event_types(api: Api, hooks: Hooks) -> None:
    with receiver() as everything, receiver() as invoices:
        hooks.create(everything.url)  # eventTypes left out: ["*"]
        hooks.create(invoices.url, ["invoice.paid"])
        team_id, headers = api.team_with_key()
        api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
        assert top_up(api, team_id, headers, 1000).status_code == 200
        (message,) = everything.wait(1, of_team(team_id))
        assert message.json["type"] == "topup.succeeded"
        time.sleep(0.5)
        assert invoices.messages() == []


def test_a_failed_attempt_is_retried_with_the_same_webhook_id(api: Api, hooks: Hooks) -> None:
    with receiver() as rx:
        rx.statuses = [500]
        endpoint = hooks.create(rx.url, ["topup.succeeded"])
        team_id, headers = api.team_with_key()
        api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
        assert top_up(api, team_id, headers, 1000).status_code == 200
        first, second = rx.wait(2, of_team(team_id))
        assert (first.status, second.status) == (500, 200)
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.body == second.body  # the same message, byte for byte
        verify(endpoint["secret"], second)
        delivery = hooks.wait_delivery(endpoint["id"], first.headers["webhook-id"], "succeeded")
        assert delivery["attempts"] == 2  # real attempts, not scheduler rounds
        log = delivery["attemptLog"]
        assert [a["statusCode"] for a in log] == [500, 200]
        assert [a["attempt"] for a in log] == [1, 2]
        assert log[0]["error"] == "HTTP 500"
        assert len(log[0]["responseBody"]) == 2048 - 1  # cut to 2 KB, the NUL stripped
        assert "\x00" not in log[0]["responseBody"]


def test_a_dead_endpoint_is_retried_then_failed_then_retried_by_hand(
    api: Api, hooks: Hooks
) -> None:
    with receiver() as rx, receiver() as watcher:
        rx.always = 503
        endpoint = hooks.create(rx.url, ["topup.succeeded"])
        watch = hooks.create(watcher.url, ["webhook.failed"])
        team_id, headers = api.team_with_key()
        api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
        assert top_up(api, team_id, headers, 1000).status_code == 200
        tries = rx.wait(3, of_team(team_id))  # the first attempt and the schedule's two retries
        message_id = tries[0].headers["webhook-id"]
        delivery = hooks.wait_delivery(endpoint["id"], message_id, "failed")
        assert delivery["attempts"] == 3
        assert delivery["lastStatusCode"] == 503
        assert "nextAttemptTime" not in delivery
        # the permanent failure is an event of its own, not sent to the failing endpoint
        (notice,) = watcher.wait(1, lambda r: r.json["data"].get("messageId") == message_id)
        data = verify(watch["secret"], notice)["data"]
        assert data["endpointId"] == endpoint["id"]
        assert data["messageType"] == "topup.succeeded"
        assert data["attempts"] == 3
        assert data["teamId"] == team_id
        time.sleep(1.5)
        assert len(rx.messages(of_team(team_id))) == 3  # failed: no more attempts

        rx.always = 200
        retried = api.admin("POST", f"{BASE}/{endpoint['id']}/deliveries/{message_id}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["state"] == "pending"
        again = rx.wait(4, of_team(team_id))
        assert again[3].headers["webhook-id"] == message_id
        verify(endpoint["secret"], again[3])
        delivery = hooks.wait_delivery(endpoint["id"], message_id, "succeeded")
        assert delivery["attempts"] == 4


def test_rotated_secret_both_sign_during_the_grace_period(api: Api, hooks: Hooks) -> None:
    with receiver() as rx:
        endpoint = hooks.create(rx.url, ["topup.succeeded"])
        rotated = api.admin("POST", f"{BASE}/{endpoint['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()
        assert new["secret"].startswith("whsec_") and new["secret"] != endpoint["secret"]
        assert new["previousSecretExpireTime"]
        team_id, headers = api.team_with_key()
        api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
        assert top_up(api, team_id, headers, 1000).status_code == 200
        (message,) = rx.wait(1, of_team(team_id))
        signatures = message.headers["webhook-signature"].split(" ")
        assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
        assert verify(endpoint["secret"], message)["type"] == "topup.succeeded"
        assert verify(new["secret"], message)["type"] == "topup.succeeded"
        listed = api.admin("GET", BASE).json()["webhookEndpoints"]
        (mine,) = [e for e in listed if e["id"] == endpoint["id"]]
        assert "secret" not in mine  # shown once, when made or rotated


def test_a_slow_endpoint_does_not_delay_another(api: Api, hooks: Hooks) -> None:
    with receiver() as slow, receiver() as fast:
        slow.delay = 4.0
        hooks.create(slow.url, ["topup.succeeded"])
        hooks.create(fast.url, ["topup.succeeded"])
        team_id, headers = api.team_with_key()
        api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
        started = time.monotonic()
        assert top_up(api, team_id, headers, 1000).status_code == 200
        assert time.monotonic() - started < 3.0  # never in the request path
        fast.wait(1, of_team(team_id), timeout=3.0)
        assert time.monotonic() - started < 3.5
        slow.wait(1, of_team(team_id), timeout=10.0)


def test_deleted_endpoint_is_gone_and_gets_nothing(api: Api) -> None:
    hooks = Hooks(api)
    with receiver() as rx:
        endpoint = hooks.create(rx.url, ["topup.succeeded"])
        deleted = api.admin("DELETE", f"{BASE}/{endpoint['id']}")
        assert deleted.status_code == 204
        ids = [e["id"] for e in api.admin("GET", BASE).json()["webhookEndpoints"]]
        assert endpoint["id"] not in ids
        team_id, headers = api.team_with_key()
        api.add_card(team_id, CARD_ALWAYS_SUCCEEDS)
        assert top_up(api, team_id, headers, 1000).status_code == 200
        time.sleep(0.7)
        assert rx.messages() == []
        assert api.admin("DELETE", f"{BASE}/{endpoint['id']}").status_code == 404


def listing(api: Api) -> Any:
    return api.admin("GET", BASE).json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "https://"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://example.com/a b"}, "url"),
        ({"url": "https://example.com:99999/hook"}, "url"),
        ({"url": "https://example.com/" + "a" * 2048}, "url"),
        ({"url": "https://example.com/\x00"}, "url"),
        ({"url": "https://example.com/hook", "eventTypes": []}, "eventTypes"),
        ({"url": "https://example.com/hook", "eventTypes": ["topup.nope"]}, "eventTypes"),
        ({"url": "https://example.com/hook", "eventTypes": "*"}, "eventTypes"),
        ({"url": "https://example.com/hook", "description": "d" * 501}, "description"),
        ({"eventTypes": ["*"]}, "url"),
        ({"url": 5}, "url"),
    ],
)
def test_bad_endpoint_input_is_a_400_that_changes_nothing(
    api: Api, body: dict[str, Any], field: str
) -> None:
    before = listing(api)
    response = api.admin("POST", BASE, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert listing(api) == before


def test_http_urls_need_the_setting(api: Api) -> None:
    settings = Settings(database_url=api.url, admin_token=OPERATOR_TOKEN, webhooks_deliver=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        before = client.get(BASE, headers=headers).json()
        response = client.post(BASE, headers=headers, json={"url": "http://127.0.0.1:9/hook"})
        assert response.status_code == 400
        assert response.json()["field"] == "url"
        assert "BILLFOLD_WEBHOOKS_ALLOW_HTTP" in response.json()["error"]
        assert client.get(BASE, headers=headers).json() == before


def test_unknown_endpoint_or_message_is_a_404_that_changes_nothing(api: Api, hooks: Hooks) -> None:
    endpoint = hooks.create("https://example.com/hook", ["invoice.paid"])
    before = listing(api)
    for method, path in [
        ("DELETE", f"{BASE}/we_nope"),
        ("POST", f"{BASE}/we_nope/rotate-secret"),
        ("GET", f"{BASE}/we_nope/deliveries"),
        ("POST", f"{BASE}/we_nope/deliveries/msg_nope/retry"),
        ("POST", f"{BASE}/{endpoint['id']}/deliveries/msg_nope/retry"),
    ]:
        response = api.admin(method, path)
        assert response.status_code == 404, (method, path, response.text)
    assert listing(api) == before
    bad_limit = api.admin("GET", f"{BASE}/{endpoint['id']}/deliveries?limit=0")
    assert bad_limit.status_code == 400


def test_webhook_endpoints_need_the_operator_token(api: Api) -> None:
    _, headers = api.team_with_key()
    assert api.client.get(BASE).status_code == 401
    assert api.client.get(BASE, headers=headers).status_code == 401
    assert (
        api.client.post(BASE, headers=headers, json={"url": "https://x.example"}).status_code == 401
    )
