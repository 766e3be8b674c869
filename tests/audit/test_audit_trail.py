"""The audit trail (kit/audit.py, audit/): every write through either API and the CLI leaves
exactly one row, in its own transaction, with its actor and request id; a refused write leaves
none; ``GET /admin/v1/audit-events`` filters and pages; the table refuses UPDATE and DELETE."""

from __future__ import annotations

import getpass
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from billfold.cli import app as cli_app
from billfold.config import get_settings
from billfold.kit.audit import CONTEXT
from billfold.kit.db import make_engine
from billfold.payments.sandbox import CARD_DECLINED
from tests.conftest import Api, event, unique_sku

EVENTS = "/admin/v1/audit-events"


def trail(api: Api, **params: str) -> list[dict[str, Any]]:
    """Every event the endpoint lists for ``params``, following the pages."""
    events: list[dict[str, Any]] = []
    token = ""
    while True:
        query = {**params, **({"pageToken": token} if token else {})}
        response = api.admin("GET", EVENTS, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        events += body["events"]
        token = body["nextPageToken"]
        if not token:
            return events


def of_request(api: Api, request_id: str) -> list[dict[str, Any]]:
    return [e for e in trail(api) if e.get("requestId") == request_id]


def rid() -> str:
    return "aud-" + uuid.uuid4().hex[:16]


def test_each_kind_of_write_leaves_one_row_with_its_actor_and_request_id(api: Api) -> None:
    ids: dict[str, str] = {}

    def write(name: str, method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
        ids[name] = rid()
        response = api.client.request(
            method, path, headers={**headers, "X-Request-Id": ids[name]}, **kw
        )
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    op = api.operator
    team = write("team", "POST", "/admin/v1/teams", op, json={"name": "Audited"})["teamId"]
    key = write("key", "POST", f"/admin/v1/teams/{team}/management-keys", op, json={"name": "k"})
    customer = {"Authorization": f"Bearer {key['apiKey']}"}
    sku = unique_sku()
    price = {"description": "d", "unitType": "tokens", "unitPrice": "0.000001",
             "effectiveFrom": "2026-01-01T00:00:00Z"}  # fmt: skip
    write("price", "PUT", f"/admin/v1/prices/{sku}", op, json=price)
    write("grant", "POST", f"/admin/v1/teams/{team}/credits", op,
          json={"amount": "500", "reason": "welcome"})  # fmt: skip
    batch = [event(team, sku, 10, "2026-06-01T00:00:00Z") for _ in range(3)]
    write("batch", "POST", "/admin/v1/usage-events", op, json={"events": batch})
    write("limit", "POST", f"/v1/billing/teams/{team}/postpaid/spending-limits", customer,
          json={"desiredSoftSpendingLimit": {"val": "700"}})  # fmt: skip
    hook = write("hook", "POST", "/admin/v1/webhook-endpoints", op,
                 json={"url": "http://127.0.0.1:9/hook", "eventTypes": ["*"]})  # fmt: skip
    write("revoke", "DELETE", f"/admin/v1/management-keys/{key['keyId']}", op)

    events = trail(api)
    # Webhook endpoints are global: this one (unreachable, every event type) would take a
    # delivery of every later test's events in this database.
    assert api.admin("DELETE", f"/admin/v1/webhook-endpoints/{hook['id']}").status_code == 204
    by_request: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_request.setdefault(e.get("requestId"), []).append(e)
    rows = {name: by_request.get(request_id, []) for name, request_id in ids.items()}
    assert {name: len(found) for name, found in rows.items()} == dict.fromkeys(ids, 1)
    row = {name: found[0] for name, found in rows.items()}

    assert row["team"]["action"] == "POST /admin/v1/teams"
    assert row["team"]["teamId"] == team and row["team"]["status"] == 201
    assert row["key"]["targets"] == {"keyId": key["keyId"]}
    assert row["price"]["action"] == "PUT /admin/v1/prices/{sku}"
    assert row["price"]["targets"] == {"sku": sku}
    assert row["grant"]["action"] == "POST /admin/v1/teams/{team_id}/credits"
    assert row["grant"]["teamId"] == team
    assert row["batch"]["action"] == "POST /admin/v1/usage-events"
    assert row["batch"]["targets"] == {"events": "3"}  # one row a batch, not one an event
    assert row["hook"]["targets"] == {"endpointId": hook["id"]}
    assert row["revoke"]["status"] == 204 and row["revoke"]["teamId"] == team
    for name in ids:
        if name != "limit":
            assert (row[name]["actorKind"], row[name]["actorId"]) == ("operator", "operator")
    limit = row["limit"]
    assert (limit["actorKind"], limit["actorId"]) == ("management_key", key["keyId"])
    assert limit["teamId"] == team and limit["status"] == 200
    # Nothing a caller sent in a body or a header: never a key, a token or a secret.
    dumped = json.dumps(events)
    assert key["apiKey"] not in dumped and hook["secret"] not in dumped


def test_reads_and_refused_writes_leave_no_row(api: Api) -> None:
    team, headers = api.team_with_key()
    request_ids = []
    for method, path, hdrs, body in [
        ("GET", f"/admin/v1/teams/{team}", api.operator, None),
        ("GET", f"/v1/billing/teams/{team}/postpaid/spending-limits", headers, None),
        ("GET", f"/admin/v1/teams/{team}/spend-status", api.operator, None),  # the hot path
        ("POST", "/admin/v1/teams", api.operator, {"name": ""}),  # 400
        ("POST", f"/admin/v1/teams/{team}/credits", {"Authorization": "Bearer xai-no"}, {}),
        ("POST", f"/admin/v1/teams/{uuid.uuid4()}/management-keys", api.operator, {"name": "k"}),
        ("POST", f"/v1/billing/teams/{team}/postpaid/spending-limits", headers,
         {"desiredSoftSpendingLimit": {"val": "-5"}}),
    ]:  # fmt: skip
        request_ids.append(rid())
        api.client.request(
            method, path, headers={**hdrs, "X-Request-Id": request_ids[-1]}, json=body
        )
    listed = {e.get("requestId") for e in trail(api)}
    assert listed.isdisjoint(request_ids)


def test_the_listing_filters_by_team_and_time_and_pages(api: Api) -> None:
    team_a = api.create_team("A")
    team_b = api.create_team("B")
    for n in range(3):
        grant = {"amount": str(10 + n), "reason": "r"}
        for team in (team_a, team_b):
            response = api.admin("POST", f"/admin/v1/teams/{team}/credits", json=grant)
            assert response.status_code == 201, response.text
    of_a = trail(api, teamId=team_a, pageSize="2")
    assert [e["action"] for e in of_a] == ["POST /admin/v1/teams"] + [
        "POST /admin/v1/teams/{team_id}/credits"
    ] * 3
    assert {e["teamId"] for e in of_a} == {team_a}
    assert [e["time"] for e in of_a] == sorted(e["time"] for e in of_a)  # oldest first
    since = of_a[2]["time"]
    later = trail(api, teamId=team_a, since=since)
    assert [e["eventId"] for e in later] == [e["eventId"] for e in of_a if e["time"] >= since]
    assert of_a[2]["eventId"] in [e["eventId"] for e in later]  # since is inclusive


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"teamId": "nope"}, "teamId"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no zone
        ({"pageSize": "0"}, "pageSize"),
        ({"pageSize": "1001"}, "pageSize"),
        ({"pageToken": "garbage!"}, "pageToken"),
    ],
)
def test_bad_listing_parameters_are_400(api: Api, params: dict[str, str], field: str) -> None:
    response = api.admin("GET", EVENTS, params=params)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


def test_the_listing_is_the_operators(api: Api) -> None:
    _, headers = api.team_with_key()
    assert api.client.get(EVENTS, headers=headers).status_code == 401
    assert api.client.get(EVENTS).status_code == 401


@pytest.fixture(params=["sqlite", "postgres"])
def cli_db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    api: Api = request.getfixturevalue(f"{request.param}_api")
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", api.url)
    monkeypatch.delenv("BILLFOLD_ADMIN_TOKEN", raising=False)
    get_settings.cache_clear()
    yield api
    get_settings.cache_clear()


def run(*args: str) -> str:
    result = CliRunner().invoke(cli_app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_cli_write_is_recorded_with_the_os_user_and_a_read_is_not(cli_db: Api) -> None:
    api = cli_db
    team = json.loads(run("team", "create", "CLI audited", "--json"))["teamId"]
    key = json.loads(run("key", "create", team, "--name", "ci", "--json"))
    run("key", "list", team, "--json")  # a read: no row
    rows = trail(api, teamId=team)
    assert [r["action"] for r in rows] == ["billfold team create", "billfold key create"]
    assert {(r["actorKind"], r["actorId"]) for r in rows} == {("cli", getpass.getuser())}
    assert rows[1]["targets"] == {"keyId": key["keyId"]}
    assert all(r["requestId"].startswith("cli-") for r in rows)
    assert rows[0]["requestId"] != rows[1]["requestId"]  # one run id per command
    listed = json.loads(run("audit", "list", "--team", team, "--json"))
    assert [e["eventId"] for e in listed["events"]] == [r["eventId"] for r in rows]
    failed = CliRunner().invoke(cli_app, ["audit", "list", "--team", "x", "--json"])
    assert failed.exit_code == 2


def test_the_table_is_append_only(api: Api) -> None:
    api.create_team("append-only")
    engine = make_engine(api.url)
    try:
        for statement in ("UPDATE audit_events SET actor_id = 'x'", "DELETE FROM audit_events"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement))
        if api.backend != "sqlite":
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text("TRUNCATE audit_events"))
    finally:
        engine.dispose()


def test_a_write_in_steps_is_recorded_once_with_its_first_committed_step(api: Api) -> None:
    """A top-up commits its pending purchase, charges, then settles (kit.http.Steps): one row,
    committed with the pending purchase; a declined card is a write too (the failed purchase
    is kept), so it has its row; the 402 is in the access log under the same request id."""
    team, headers = api.team_with_key()
    top_up = f"/v1/billing/teams/{team}/prepaid/top-up"
    api.add_card(team)
    paid, declined = rid(), rid()
    body = {"amount": {"val": "900"}}
    response = api.client.post(top_up, headers={**headers, "X-Request-Id": paid}, json=body)
    assert response.status_code == 200, response.text
    api.add_card(team, CARD_DECLINED)
    response = api.client.post(top_up, headers={**headers, "X-Request-Id": declined}, json=body)
    assert response.status_code == 402, response.text
    for request_id in (paid, declined):
        rows = of_request(api, request_id)
        assert len(rows) == 1, rows
        assert rows[0]["action"] == "POST /v1/billing/teams/{team_id}/prepaid/top-up"
        assert rows[0]["actorKind"] == "management_key" and rows[0]["teamId"] == team
        assert "status" not in rows[0]  # known after the provider answered: not yet then
    # Refused before any step committed: no row.
    refused = rid()
    bad = {"amount": {"val": "-1"}}
    response = api.client.post(top_up, headers={**headers, "X-Request-Id": refused}, json=bad)
    assert response.status_code == 400
    assert of_request(api, refused) == []
    # A read in steps (the balance settles pending purchases) is not a write of its caller.
    balance = rid()
    response = api.client.get(
        f"/v1/billing/teams/{team}/prepaid/balance", headers={**headers, "X-Request-Id": balance}
    )
    assert response.status_code == 200
    assert of_request(api, balance) == []


def test_a_write_whose_commit_fails_leaves_neither_the_write_nor_its_row(api: Api) -> None:
    """The row is in the write's transaction: a commit that fails after the row was added (a
    listener that raises after the audit's, standing for a lost connection or a failed
    constraint) keeps neither; the same write committed has both."""
    doomed = rid()

    def fail_commit(session: Session) -> None:
        audit = session.info.get(CONTEXT)
        if audit is not None and audit.request_id == doomed:
            assert session.new, "the audit row is added before this listener runs"
            raise RuntimeError("commit failed")

    team_id = str(uuid.uuid4())
    body = {"name": "doomed", "teamId": team_id}
    sa_event.listen(Session, "before_commit", fail_commit)
    try:
        response = api.admin(
            "POST", "/admin/v1/teams", json=body, headers={**api.operator, "X-Request-Id": doomed}
        )
    finally:
        sa_event.remove(Session, "before_commit", fail_commit)
    assert response.status_code == 500
    assert of_request(api, doomed) == []
    assert api.admin("GET", f"/admin/v1/teams/{team_id}").status_code == 404
    kept = rid()
    response = api.admin(
        "POST", "/admin/v1/teams", json=body, headers={**api.operator, "X-Request-Id": kept}
    )
    assert response.status_code == 201
    assert [r["teamId"] for r in of_request(api, kept)] == [team_id]
