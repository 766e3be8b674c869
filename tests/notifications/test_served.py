"""kill -9 of the server mid-delivery loses nothing: the claimed delivery's lease runs out and the
restarted server sends the same message again (same ``webhook-id``)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from billfold.payments.sandbox import CARD_ALWAYS_SUCCEEDS
from tests.notifications.conftest import BASE
from tests.notifications.receiver import receiver
from tests.served import start_serve, wait_healthy

TOKEN = "served-webhook-token"
SETTINGS = {
    "ADMIN_TOKEN": TOKEN,
    "WEBHOOKS_ALLOW_HTTP": "true",
    "WEBHOOK_POLL_SECONDS": "0.1",
    "WEBHOOK_LEASE_SECONDS": "2",
    "WEBHOOK_TIMEOUT_SECONDS": "60",
}


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_kill_9_mid_delivery_loses_nothing(fresh_url: str, tmp_path: Path) -> None:
    operator = {"Authorization": f"Bearer {TOKEN}"}
    with receiver() as rx:
        rx.delay = 30.0  # the first send hangs until the server is killed
        process, base = start_serve(fresh_url, 1, tmp_path, **SETTINGS)
        try:
            wait_healthy(base, process)
            with httpx.Client(base_url=base, headers=operator, timeout=10) as http:
                endpoint = http.post(BASE, json={"url": rx.url, "eventTypes": ["*"]}).json()
                team = http.post("/admin/v1/teams", json={"name": "killed"}).json()["teamId"]
                http.post(
                    f"/admin/v1/teams/{team}/payment-methods",
                    json={"cardNumber": CARD_ALWAYS_SUCCEEDS, "expMonth": 12, "expYear": 2035},
                ).raise_for_status()
                key = http.post(f"/admin/v1/teams/{team}/management-keys", json={"name": "k"})
                headers = {"Authorization": f"Bearer {key.json()['apiKey']}"}
                http.post(
                    f"/v1/billing/teams/{team}/prepaid/top-up",
                    headers=headers,
                    json={"amount": {"val": "1000"}},
                ).raise_for_status()
            wait_for(lambda: len(rx.arrivals) == 1)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        first = rx.arrivals[0]["webhook-id"]
        rx.delay = 0.0

        process, base = start_serve(fresh_url, 1, tmp_path, **SETTINGS)
        try:
            wait_healthy(base, process)
            wait_for(lambda: any(r.headers["webhook-id"] == first for r in rx.messages()))
            with httpx.Client(base_url=base, headers=operator, timeout=10) as http:
                deadline = time.monotonic() + 10
                while True:
                    (delivery,) = http.get(f"{BASE}/{endpoint['id']}/deliveries").json()[
                        "deliveries"
                    ]
                    if delivery["state"] == "succeeded" or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            assert delivery["id"] == first
            assert delivery["type"] == "topup.succeeded"
            assert delivery["state"] == "succeeded"
            # the killed send never came back: only the attempt whose outcome was recorded counts
            assert delivery["attempts"] == 1
        finally:
            process.terminate()
            process.wait(30)
