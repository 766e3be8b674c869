"""A process works on at most BILLFOLD_INGEST_CONCURRENCY batches at once (bounded memory)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from billfold.app import create_app
from billfold.config import Settings
from billfold.metering import service as metering
from tests.conftest import OPERATOR_TOKEN, event


def test_batches_in_flight_are_bounded(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()
    real_ingest = metering.metering_service.ingest

    def counting_ingest(*args: Any, **kwargs: Any) -> Any:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            time.sleep(0.2)  # hold the slot long enough for the others to queue up
            return real_ingest(*args, **kwargs)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(metering.metering_service, "ingest", counting_ingest)
    settings = Settings(database_url=sqlite_url, admin_token=OPERATOR_TOKEN, ingest_concurrency=1)
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    with TestClient(create_app(settings)) as client:
        team = client.post("/admin/v1/teams", json={"name": "slots"}, headers=headers).json()
        batch = {"events": [event(team["teamId"], "no-such-sku", 1, "2026-11-20T10:00:00Z")]}

        def send(_: int) -> int:
            return client.post("/admin/v1/usage-events", json=batch, headers=headers).status_code

        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(send, range(4)))
    assert statuses == [200] * 4
    assert peak == 1
