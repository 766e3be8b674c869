"""The usage page: its table and CSV are the usage analytics API's numbers, to the cent, for the
same range, unit, grouping and time zone; bad choices are field errors; teams never mix."""

from __future__ import annotations

import csv
import io
from typing import Any

from billfold.console.usage import UsageForm, analytics_request
from billfold.console.web import usd
from tests.conftest import Api, event, frozen_at, unique_sku
from tests.console.helpers import signed_in as _signed_in
from tests.console.helpers import table_rows

NOW = "2066-05-20T15:00:00"


def signed_in(api: Api, key: str) -> Any:
    """Signed in at NOW (a session opened at the real time would be idle for decades then)."""
    with frozen_at(NOW):
        return _signed_in(api, key)


def usage_team(api: Api) -> tuple[str, dict[str, str], str, list[str]]:
    chat, image = unique_sku("chat"), unique_sku("image")
    api.set_price(chat, "0.0000031", "2030-01-01T00:00:00Z", description=f"Chat {chat}")
    api.set_price(image, "0.07", "2030-01-01T00:00:00Z", description=f"Images {image}")
    team_id = api.create_team("Usage Co")
    key = api.create_key(team_id)["apiKey"]
    events = []
    for day in range(1, 20):
        for hour in (1, 4, 13, 23):
            events.append(
                event(
                    team_id,
                    chat,
                    1000 * day + 7 * hour,
                    f"2066-05-{day:02d}T{hour:02d}:10:00Z",
                    model="grok-4" if hour % 2 else "grok-3",
                )
            )
        events.append(event(team_id, image, day % 3, f"2066-05-{day:02d}T03:30:00Z"))
    with frozen_at(NOW):
        result = api.ingest(events)
    assert result["accepted"] == len(events)
    return team_id, {"Authorization": f"Bearer {key}"}, key, [chat, image]


def request_body(form: UsageForm) -> dict[str, Any]:
    from datetime import date

    request = analytics_request(form, date.fromisoformat(form.start), date.fromisoformat(form.end))
    return dict(request.model_dump(by_alias=True))


def api_usage(
    api: Api, headers: dict[str, str], team_id: str, form: UsageForm, first: str, last: str
) -> Any:
    from datetime import date

    request = analytics_request(form, date.fromisoformat(first), date.fromisoformat(last))
    response = api.client.post(
        f"/v1/billing/teams/{team_id}/usage",
        headers=headers,
        json={"analyticsRequest": request.model_dump(by_alias=True)},
    )
    assert response.status_code == 200, response.text
    return response.json()


def check_table_against_api(page: str, answer: Any) -> list[list[str]]:
    rows = table_rows(page, "usage-table")
    header, body, footer = rows[0], rows[1:-1], rows[-1]
    series = answer["timeSeries"]
    labels = [s["groupLabels"][0] or "(no model)" for s in series]
    assert header[1:-1] == labels
    assert len(body) == len(series[0]["dataPoints"])
    for index, row in enumerate(body):
        for column, one in enumerate(series):
            assert row[1 + column] == usd(one["dataPoints"][index]["values"][0]), (index, column)
    assert footer[0] == "Total"
    return rows


def query(form: UsageForm) -> dict[str, str]:
    """The page's query string for these choices (the test's form is also the API request)."""
    return {name: getattr(form, name) for name in ("range", "start", "end", "unit", "by", "tz")}


def test_usage_table_and_csv_equal_the_analytics_api(api: Api) -> None:
    team_id, headers, key, _ = usage_team(api)
    client = signed_in(api, key)
    form = UsageForm(
        range="custom",
        start="2066-05-01",
        end="2066-05-20",
        unit="day",
        by="model",
        tz="America/New_York",
    )
    params = query(form)
    with frozen_at(NOW):
        page = client.get("/console/usage", params=params)
        assert page.status_code == 200, page.text
        answer = api_usage(api, headers, team_id, form, "2066-05-01", "2066-05-20")
        rows = check_table_against_api(page.text, answer)
        assert rows[1][0] == "2066-05-01" and rows[-2][0] == "2066-05-20"
        # The Total column is the API's ungrouped answer per day, not a sum of rounded cells.
        ungrouped = api.client.post(
            f"/v1/billing/teams/{team_id}/usage",
            headers=headers,
            json={"analyticsRequest": {**request_body(form), "groupBy": []}},
        ).json()["timeSeries"][0]["dataPoints"]
        assert [row[-1] for row in rows[1:-1]] == [usd(p["values"][0]) for p in ungrouped]
        assert 'id="usage-data"' in page.text and 'id="usage-chart"' in page.text

        download = client.get("/console/usage.csv", params=params)
        assert download.status_code == 200
        assert download.headers["content-type"].startswith("text/csv")
        lines = list(csv.reader(io.StringIO(download.text)))
    # CSV = table: same rows, columns and numbers ($ and thousands separators dropped).
    assert lines[0][1:-1] == rows[0][1:-1] and lines[0][-1] == "total"
    assert len(lines) == len(rows)
    for table_row, csv_row in zip(rows[1:-1], lines[1:-1], strict=True):
        assert csv_row[0].startswith(table_row[0])  # 2066-05-01T00:00:00-04:00
        assert [c.replace("$", "").replace(",", "") for c in table_row[1:]] == csv_row[1:]
    assert [c.replace("$", "").replace(",", "") for c in rows[-1][1:]] == lines[-1][1:]


def test_hourly_by_description_in_utc(api: Api) -> None:
    team_id, headers, key, _ = usage_team(api)
    client = signed_in(api, key)
    with frozen_at(NOW):
        form = UsageForm(
            range="custom",
            start="2066-05-03",
            end="2066-05-04",
            unit="hour",
            by="description",
            tz="UTC",
        )
        page = client.get("/console/usage", params=query(form))
        assert page.status_code == 200, page.text
        answer = api_usage(api, headers, team_id, form, "2066-05-03", "2066-05-04")
    rows = check_table_against_api(page.text, answer)
    assert len(rows) == 2 + 48
    assert rows[1][0] == "2066-05-03 00:00 UTC"


def test_preset_ranges_and_the_grand_total(api: Api) -> None:
    team_id, headers, key, _ = usage_team(api)
    client = signed_in(api, key)
    with frozen_at(NOW):
        month = client.get("/console/usage", params={"tz": "UTC"})
        week = client.get("/console/usage", params={"range": "7d", "tz": "UTC"})
        answer = api_usage(
            api,
            headers,
            team_id,
            UsageForm(tz="UTC", unit="day", by="description"),
            "2066-05-01",
            "2066-05-20",
        )
    assert month.status_code == 200 and week.status_code == 200
    month_rows = check_table_against_api(month.text, answer)
    assert month_rows[1][0] == "2066-05-01" and month_rows[-2][0] == "2066-05-20"
    week_rows = table_rows(week.text, "usage-table")
    assert week_rows[1][0] == "2066-05-14" and len(week_rows) == 2 + 7
    # The grand total is the API's total of the range (TIME_UNIT_NONE), to the cent.
    total = api.client.post(
        f"/v1/billing/teams/{team_id}/usage",
        headers=headers,
        json={
            "analyticsRequest": {
                "timeRange": {
                    "startTime": "2066-05-01 00:00:00",
                    "endTime": "2066-05-21 00:00:00",
                    "timezone": "UTC",
                },
                "timeUnit": "TIME_UNIT_NONE",
                "values": [{"name": "usd", "aggregation": "AGGREGATION_SUM"}],
            }
        },
    ).json()["timeSeries"][0]["dataPoints"][0]["values"][0]
    assert month_rows[-1][-1] == usd(total)


def test_bad_choices_are_field_errors(api: Api) -> None:
    team_id = api.create_team()
    client = signed_in(api, api.create_key(team_id)["apiKey"])
    with frozen_at(NOW):
        bad_date = client.get(
            "/console/usage", params={"range": "custom", "start": "May 1", "end": "2066-05-02"}
        )
        assert bad_date.status_code == 400
        assert 'id="f-start-error"' in bad_date.text and 'aria-invalid="true"' in bad_date.text
        backwards = client.get(
            "/console/usage", params={"range": "custom", "start": "2066-05-09", "end": "2066-05-02"}
        )
        assert backwards.status_code == 400 and 'id="f-end-error"' in backwards.text
        too_long = client.get(
            "/console/usage",
            params={"range": "custom", "start": "2066-01-01", "end": "2066-05-02", "unit": "hour"},
        )
        assert too_long.status_code == 400 and "At most 31 days" in too_long.text
        zone = client.get("/console/usage", params={"tz": "Mars/Olympus"})
        assert zone.status_code == 400 and 'id="f-tz-error"' in zone.text
        csv_bad = client.get("/console/usage.csv", params={"tz": "Mars/Olympus"})
        assert csv_bad.status_code == 400


def test_usage_of_another_team_never_shows(api: Api) -> None:
    _, _, _, _ = usage_team(api)
    other = api.create_team("Quiet")
    client = signed_in(api, api.create_key(other)["apiKey"])
    with frozen_at(NOW):
        page = client.get("/console/usage", params={"tz": "UTC"})
    assert page.status_code == 200
    assert 'id="no-usage"' in page.text
    assert table_rows(page.text, "usage-table")[-1][-1] == "$0.00"
