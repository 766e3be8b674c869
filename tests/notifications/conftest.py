"""Helpers of the webhook tests: endpoints made by a test and removed after it, a top-up, and
Standard Webhooks verification (the ``standardwebhooks`` package, as a receiver would)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.db import make_engine
from billfold.migrate import upgrade
from tests.conftest import OPERATOR_TOKEN, Api
from tests.notifications.receiver import Received
from tests.notifications.smtp import Mailbox, smtp_server

BASE = "/admin/v1/webhook-endpoints"


class Hooks:
    """Endpoints made by one test, deleted when it ends (endpoints are global)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.ids: list[str] = []

    def create(self, url: str, event_types: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url, "description": "test"}
        if event_types is not None:
            body["eventTypes"] = event_types
        response = self.api.admin("POST", BASE, json=body)
        assert response.status_code == 201, response.text
        created = dict(response.json())
        self.ids.append(created["id"])
        return created

    def deliveries(self, endpoint_id: str) -> list[dict[str, Any]]:
        response = self.api.admin("GET", f"{BASE}/{endpoint_id}/deliveries")
        assert response.status_code == 200, response.text
        return list(response.json()["deliveries"])

    def wait_delivery(
        self, endpoint_id: str, message_id: str, state: str, timeout: float = 15.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = [d for d in self.deliveries(endpoint_id) if d["id"] == message_id]
            if found and found[0]["state"] == state:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"delivery {message_id} not {state}: {found}")
            time.sleep(0.1)


@pytest.fixture
def hooks(api: Api) -> Iterator[Hooks]:
    made = Hooks(api)
    yield made
    for endpoint_id in made.ids:
        api.admin("DELETE", f"{BASE}/{endpoint_id}")


@pytest.fixture
def mail(fresh_url: str) -> Iterator[tuple[Api, Mailbox]]:
    """An app of its own (a database of its own: no other deliverer fans its messages out)
    configured with a loopback SMTP server."""
    engine = make_engine(fresh_url)
    upgrade(engine)
    engine.dispose()
    with smtp_server() as (mailbox, url):
        settings = Settings(
            database_url=fresh_url,
            admin_token=OPERATOR_TOKEN,
            smtp_url=url,
            email_from="Billfold <billing@billfold.example>",
            webhook_retry_schedule="1,1",
            webhook_poll_seconds=0.1,
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield Api(client, "sqlite" if "sqlite" in fresh_url else "postgres", fresh_url), mailbox


def of_team(team_id: str) -> Any:
    return lambda r: r.json["data"].get("teamId") == team_id


def top_up(api: Api, team_id: str, headers: dict[str, str], cents: int) -> Any:
    return api.client.post(
        f"/v1/billing/teams/{team_id}/prepaid/top-up",
        headers=headers,
        json={"amount": {"val": str(cents)}},
    )


def verify(secret: str, message: Received) -> Any:
    return Webhook(secret).verify(message.body, message.headers)
