"""Driving the console without a browser: a TestClient of its own per signed-in person (its own
cookie jar), sign-in through the real forms, and reading figures out of the HTML by element id."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import Api

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def browser(api: Api) -> TestClient:
    """A new 'browser' on the same app: its own cookies, no redirects followed."""
    return on_app_loop(
        api, TestClient(api.client.app, raise_server_exceptions=False, follow_redirects=False)
    )


def on_app_loop(api: Api, client: TestClient) -> TestClient:
    """Requests of ``client`` run on the event loop of the app's running TestClient (its
    lifespan started the spend cache's listener there, which GatewayMiddleware awaits)."""
    client.portal = api.client.portal
    return client


def csrf_of(page: str) -> str:
    match = CSRF.search(page)
    assert match, "no CSRF field on the page"
    return html.unescape(match.group(1))


def sign_in_with_key(client: TestClient, key: str) -> Any:
    form = client.get("/console/login")
    assert form.status_code == 200, form.text
    return client.post(
        "/console/login", data={"csrf_token": csrf_of(form.text), "key": key, "next": "/console"}
    )


def console_link(api: Api, team_id: str, ttl: int = 60) -> str:
    response = api.admin(
        "POST", f"/admin/v1/teams/{team_id}/console-links", json={"ttlMinutes": ttl}
    )
    assert response.status_code == 201, response.text
    url = str(response.json()["url"])
    assert url.startswith("/console/login?token=")
    return url


def sign_in_with_link(client: TestClient, url: str) -> Any:
    landing = client.get(url)
    if landing.status_code != 200:
        return landing
    token = url.split("token=", 1)[1]
    return client.post(
        "/console/login",
        data={"csrf_token": csrf_of(landing.text), "token": token, "next": "/console"},
    )


def signed_in(api: Api, key: str) -> TestClient:
    client = browser(api)
    response = sign_in_with_key(client, key)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console"
    return client


def text_of(page: str, element_id: str) -> str:
    """The text inside the element with this id (tags dropped, whitespace squeezed)."""
    match = re.search(
        rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', page, re.DOTALL
    )
    assert match, f"no element #{element_id}"
    inner = re.sub(r"<[^>]+>", " ", match.group(2))
    return " ".join(html.unescape(inner).split())


class _Table(HTMLParser):
    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.depth = 0  # > 0 inside the table
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.table_id):
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table_rows(page: str, table_id: str) -> list[list[str]]:
    """The cells' text of the table with this id, row by row (header and footer included)."""
    parser = _Table(table_id)
    parser.feed(page)
    assert parser.rows, f"no table #{table_id}"
    return parser.rows
