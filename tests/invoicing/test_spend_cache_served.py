"""The spend cache in a real deployment: ``billfold serve --workers 2`` on PostgreSQL, over HTTP.

Each write goes through the API, then the check is asked at once on a new connection, so either
worker may answer it; none may answer from before the write (gateway.py's barrier). On an idle
machine the notifications alone usually win that race too; the case where they do not (a slow
listening connection) is test_spend_cache.py's.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.served import start_serve, wait_healthy

TOKEN = "served-spend-token"


def test_every_worker_shows_a_write_once_it_has_answered(postgres_url: str, tmp_path: Path) -> None:
    process, base = start_serve(postgres_url, 2, tmp_path, ADMIN_TOKEN=TOKEN)
    operator = {"Authorization": f"Bearer {TOKEN}"}
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection, any worker, each time
    try:
        wait_healthy(base, process)
        with httpx.Client(base_url=base, headers=operator, limits=fresh, timeout=10) as http:
            team = http.post("/admin/v1/teams", json={"name": "served"}).json()["teamId"]
            stale = []
            for limit in range(1000, 1040):
                for _ in range(3):  # answers cached in both workers before the write
                    http.get(f"/admin/v1/teams/{team}/spend-status").raise_for_status()
                http.put(
                    f"/admin/v1/teams/{team}/hard-spending-limit", json={"amount": str(limit)}
                ).raise_for_status()
                answer = http.get(f"/admin/v1/teams/{team}/spend-status").json()
                if answer["effectiveSpendingLimit"] != {"val": str(limit)}:
                    stale.append((limit, answer["effectiveSpendingLimit"]))
            assert stale == []
    finally:
        process.terminate()
        process.wait(timeout=30)
