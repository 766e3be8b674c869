"""The latency a payment provider adds to a top-up: sandbox vs Stripe (localstripe on loopback).

    .venv/bin/python -m bench.topup_latency [--n 200]

Starts localstripe (tests/localstripe_server.py) on a free loopback port, builds the app twice on
a fresh SQLite file (sandbox, then Stripe pointed at localstripe) and times each
``POST .../prepaid/top-up`` through the in-process ASGI client, each with a new Idempotency-Key.
Stripe's two steps are three round trips (create, retrieve, confirm) plus the commit between them.
Numbers are for loopback and a fake; real Stripe adds its own latency per round trip.

Measured once (2 shared cores, n=200): sandbox median 20.0 ms, p90 68.5 ms; Stripe via
localstripe median 44.1 ms, p90 125.9 ms: about +24 ms at the median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import stripe
from fastapi.testclient import TestClient
from tests.served import free_port

from billfold.app import create_app
from billfold.config import Settings
from billfold.kit.db import make_engine
from billfold.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def measure(client: TestClient, attach: dict[str, object], n: int) -> list[float]:
    operator = {"Authorization": f"Bearer {TOKEN}"}
    team = client.post("/admin/v1/teams", json={"name": "bench"}, headers=operator).json()["teamId"]
    key = client.post(
        f"/admin/v1/teams/{team}/management-keys", json={"name": "b"}, headers=operator
    ).json()["apiKey"]
    added = client.post(f"/admin/v1/teams/{team}/payment-methods", json=attach, headers=operator)
    assert added.status_code == 201, added.text
    headers = {"Authorization": f"Bearer {key}"}
    times = []
    for i in range(n + 5):
        started = time.perf_counter()
        response = client.post(
            f"/v1/billing/teams/{team}/prepaid/top-up",
            headers={**headers, "Idempotency-Key": f"bench-{i}"},
            json={"amount": {"val": "500"}},
        )
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        if i >= 5:  # warm-up left out
            times.append(elapsed * 1000)
    return times


def summary(name: str, times: list[float]) -> str:
    times = sorted(times)
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return (
        f"{name:8} n={len(times)} median {statistics.median(times):6.1f} ms  "
        f"p90 {p(0.9):6.1f} ms  p99 {p(0.99):6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "localstripe_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(base + "/v1/customers", headers={"Authorization": "Bearer sk_test_b"})
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()
            sandbox = Settings(database_url=url, admin_token=TOKEN)
            with TestClient(create_app(sandbox)) as client:
                card = {"cardNumber": "4242424242424242", "expMonth": 12, "expYear": 2035}
                print(summary("sandbox", measure(client, card, args.n)))
            with_stripe = Settings(
                database_url=url,
                admin_token=TOKEN,
                payment_provider="stripe",
                stripe_secret_key="sk_test_bench",
                stripe_webhook_secret="whsec_bench",
                stripe_api_base=base,
            )
            fake = stripe.StripeClient("sk_test_bench", base_addresses={"api": base})
            method = fake.v1.payment_methods.create(
                params={
                    "type": "card",
                    "card": {
                        "number": "4242424242424242",
                        "exp_month": 12,
                        "exp_year": 2035,
                        "cvc": "123",
                    },
                }
            )
            with TestClient(create_app(with_stripe)) as client:
                print(
                    summary(
                        "stripe", measure(client, {"providerPaymentMethodId": method.id}, args.n)
                    )
                )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
