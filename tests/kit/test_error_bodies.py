"""Validation error bodies (kit.errors): one sentence per field, in the caller's own names,
without pydantic's internal prefixes."""

from __future__ import annotations

import json

from billfold.kit.errors import ErrorResponse
from tests.conftest import Api


def test_a_validator_message_reads_as_a_sentence(api: Api) -> None:
    team_id, headers = api.team_with_key()
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/postpaid/spending-limits",
        json={"desiredSoftSpendingLimit": {"val": "12.5"}},
        headers=headers,
    )
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_argument",
        "error": 'desiredSoftSpendingLimit.val: must be an integer string such as "1250"',
        "field": "desiredSoftSpendingLimit.val",
    }
    url = f"/v1/billing/teams/{team_id}/postpaid/spending-limits"
    limits = api.client.get(url, headers=headers)
    assert limits.json()["spendingLimits"]["softSl"] == {"val": "0"}


def test_every_wrong_field_is_listed_in_details(api: Api) -> None:
    team_id, headers = api.team_with_key()
    info = {"name": "", "email": "nope", "address": {"country": "XX"}}
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/billing-info", json={"billingInfo": info}, headers=headers
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    fields = {d["field"]: d["error"] for d in body["details"]}
    assert set(fields) == {"billingInfo.name", "billingInfo.email", "billingInfo.address.country"}
    assert body["field"] in fields
    assert body["error"] == f"{body['field']}: {fields[body['field']]}"
    for error in fields.values():
        assert error and not error.startswith("Value error"), error
    assert fields["billingInfo.address.country"].startswith("must be an ISO 3166-1 alpha-2")
    after = api.client.get(f"/v1/billing/teams/{team_id}/billing-info", headers=headers).json()
    assert after["billingInfo"]["name"] == "" and after["billingInfo"]["email"] == ""


def test_an_error_body_writes_a_lone_surrogate_as_its_json_escape() -> None:
    # A message may quote what the client sent, and JSON can escape a lone surrogate, which UTF-8
    # cannot encode: the body writes it back as the escape instead of failing with a 500.
    response = ErrorResponse({"code": "bad_request", "error": "x \ud800 é"}, status_code=400)
    assert response.body == b'{"code":"bad_request","error":"x \\ud800 \xc3\xa9"}'
    assert json.loads(response.body) == {"code": "bad_request", "error": "x \ud800 é"}
