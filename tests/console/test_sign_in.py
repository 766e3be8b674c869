"""Signing in to the console: by key and by one-time link, the session cookie, CSRF, sign-out,
idle expiry, revoked keys and the isolation of teams."""

from __future__ import annotations

import uuid
from datetime import timedelta

from billfold.kit.clock import frozen, utc_now
from tests.conftest import Api
from tests.console.helpers import (
    browser,
    console_link,
    csrf_of,
    on_app_loop,
    sign_in_with_key,
    sign_in_with_link,
    signed_in,
)

READ = "team-token:endpoint:BillingRead"
WRITE = "team-token:endpoint:BillingWrite"


def test_pages_redirect_to_sign_in_without_a_session(api: Api) -> None:
    client = browser(api)
    for path in ("/console", "/console/invoices", "/console/invoices/inv_x"):
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/console/login?next=")
    page = client.get("/console/login")
    assert page.status_code == 200
    assert 'name="key"' in page.text and '<label for="f-key">' in page.text


def test_sign_in_with_a_key_sets_a_strict_http_only_cookie(api: Api) -> None:
    team_id = api.create_team("Cookie Co")
    key = api.create_key(team_id)["apiKey"]
    client = browser(api)
    response = sign_in_with_key(client, key)
    assert response.status_code == 303
    cookie = [
        c for c in response.headers.get_list("set-cookie") if c.startswith("billfold_console=")
    ]
    assert cookie, response.headers
    attributes = cookie[0].lower()
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # plain HTTP here; HTTPS gets Secure (below)
    assert key not in cookie[0]  # the cookie is a session secret, never the key
    overview = client.get("/console")
    assert overview.status_code == 200
    assert "Cookie Co" in overview.text
    assert overview.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in overview.headers["content-security-policy"]


def test_secure_cookie_over_https(api: Api) -> None:
    team_id = api.create_team()
    key = api.create_key(team_id)["apiKey"]
    from fastapi.testclient import TestClient

    client = on_app_loop(
        api, TestClient(api.client.app, base_url="https://testserver", follow_redirects=False)
    )
    response = sign_in_with_key(client, key)
    assert response.status_code == 303
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("billfold_console=")
    )
    assert "secure" in cookie.lower()


def test_bad_keys_are_refused_with_a_message(api: Api) -> None:
    team_id = api.create_team()
    write_only = api.create_key(team_id, [WRITE])["apiKey"]
    client = browser(api)
    unknown = sign_in_with_key(client, "xai-not-a-key")
    assert unknown.status_code == 400
    assert "unknown or has been revoked" in unknown.text
    lacking = sign_in_with_key(client, write_only)
    assert lacking.status_code == 400
    assert "lacks BillingRead" in lacking.text
    assert client.get("/console").status_code == 303


def test_a_read_only_key_signs_in_and_is_told_it_cannot_change_things(api: Api) -> None:
    team_id = api.create_team()
    client = signed_in(api, api.create_key(team_id, [READ])["apiKey"])
    page = client.get("/console")
    assert page.status_code == 200
    assert "view only (BillingRead)" in page.text


def test_sign_in_form_without_its_csrf_field_is_refused(api: Api) -> None:
    team_id = api.create_team()
    key = api.create_key(team_id)["apiKey"]
    client = browser(api)
    client.get("/console/login")  # the CSRF cookie
    missing = client.post("/console/login", data={"key": key})
    assert missing.status_code == 403
    wrong = client.post("/console/login", data={"key": key, "csrf_token": "forged"})
    assert wrong.status_code == 403
    # A cross-site form has no cookie at all (SameSite=Strict): refused too.
    stranger = browser(api)
    assert stranger.post("/console/login", data={"key": key, "csrf_token": "x"}).status_code == 403
    assert "billfold_console=" not in str(missing.headers.get_list("set-cookie"))
    assert client.get("/console").status_code == 303


def test_session_forms_need_the_session_csrf_token(api: Api) -> None:
    team_id = api.create_team()
    client = signed_in(api, api.create_key(team_id)["apiKey"])
    refused = client.post("/console/logout", data={"csrf_token": "nope"})
    assert refused.status_code == 403
    assert "Form expired" in refused.text
    assert client.get("/console").status_code == 200  # still signed in
    token = csrf_of(client.get("/console").text)
    out = client.post("/console/logout", data={"csrf_token": token})
    assert out.status_code == 303
    assert out.headers["location"] == "/console/login?signed_out=1"
    assert client.get("/console").status_code == 303


def test_signed_out_session_cookie_is_dead_even_if_replayed(api: Api) -> None:
    team_id = api.create_team()
    client = signed_in(api, api.create_key(team_id)["apiKey"])
    secret = client.cookies.get("billfold_console")
    client.post("/console/logout", data={"csrf_token": csrf_of(client.get("/console").text)})
    replay = browser(api)
    replay.cookies.set("billfold_console", secret or "")
    assert replay.get("/console").status_code == 303


def test_one_time_link_signs_in_once(api: Api) -> None:
    team_id = api.create_team("Linked")
    url = console_link(api, team_id)
    first = browser(api)
    landing = first.get(url)
    assert landing.status_code == 200
    assert "Continue to Linked" in landing.text
    assert landing.headers["referrer-policy"] == "no-referrer"
    # Visiting the link does not spend it (a mail scanner's GET); the button's POST does.
    assert first.get(url).status_code == 200
    response = sign_in_with_link(first, url)
    assert response.status_code == 303
    page = first.get("/console")
    assert page.status_code == 200 and "Linked" in page.text
    assert "one-time link" in page.text
    second = browser(api)
    again = sign_in_with_link(second, url)
    assert again.status_code == 400
    assert "expired or has already been used" in again.text
    assert second.get("/console").status_code == 303


def test_one_time_link_expires(api: Api) -> None:
    team_id = api.create_team()
    url = console_link(api, team_id, ttl=5)
    client = browser(api)
    with frozen(utc_now() + timedelta(minutes=5, seconds=1)):
        assert client.get(url).status_code == 400
        landing_token = url.split("token=", 1)[1]
        form = client.get("/console/login")
        refused = client.post(
            "/console/login",
            data={"csrf_token": csrf_of(form.text), "token": landing_token},
        )
        assert refused.status_code == 400
    assert client.get("/console").status_code == 303


def test_console_links_endpoint_validation(api: Api) -> None:
    team_id = api.create_team()
    for ttl in (0, -1, 10081):
        bad = api.admin(
            "POST", f"/admin/v1/teams/{team_id}/console-links", json={"ttlMinutes": ttl}
        )
        assert bad.status_code == 400, bad.text
        assert bad.json()["field"] == "ttlMinutes"
    wrong_type = api.admin(
        "POST", f"/admin/v1/teams/{team_id}/console-links", json={"ttlMinutes": "soon"}
    )
    assert wrong_type.status_code == 400
    unknown = api.admin(
        "POST", f"/admin/v1/teams/{uuid.uuid4()}/console-links", json={"ttlMinutes": 60}
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "team_not_found"
    not_uuid = api.admin("POST", "/admin/v1/teams/nope/console-links", json={})
    assert not_uuid.status_code == 400
    default = api.admin("POST", f"/admin/v1/teams/{team_id}/console-links", json={})
    assert default.status_code == 201
    assert default.json()["expireTime"].endswith("Z")
    key = api.create_key(team_id)["apiKey"]
    as_key = api.client.post(
        f"/admin/v1/teams/{team_id}/console-links",
        json={},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert as_key.status_code == 401


def test_link_token_is_stored_hashed(api: Api) -> None:
    from sqlalchemy import create_engine, text

    team_id = api.create_team()
    url = console_link(api, team_id)
    token = url.split("token=", 1)[1]
    engine = create_engine(api.url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as connection:
            hashes = (
                connection.execute(
                    text("SELECT token_hash FROM console_links WHERE team_id = :t"),
                    {
                        "t": uuid.UUID(team_id)
                        if api.backend != "sqlite"
                        else uuid.UUID(team_id).hex
                    },
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert hashes and token not in hashes
    import hashlib

    assert hashlib.sha256(token.encode()).hexdigest() in hashes


def test_revoking_the_key_ends_the_session(api: Api) -> None:
    team_id = api.create_team()
    key = api.create_key(team_id)
    client = signed_in(api, key["apiKey"])
    assert client.get("/console").status_code == 200
    assert api.admin("DELETE", f"/admin/v1/management-keys/{key['keyId']}").status_code == 204
    response = client.get("/console")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/console/login")


def test_twelve_hours_idle_ends_the_session(api: Api) -> None:
    team_id = api.create_team()
    client = signed_in(api, api.create_key(team_id)["apiKey"])
    start = utc_now()
    with frozen(start + timedelta(hours=11, minutes=59)):
        assert client.get("/console").status_code == 200  # activity resets the idle clock
    with frozen(start + timedelta(hours=23, minutes=58)):
        assert client.get("/console").status_code == 200
    with frozen(start + timedelta(hours=36)):
        assert client.get("/console").status_code == 303
    assert client.get("/console").status_code == 303  # ended for good


def test_a_session_sees_only_its_team(api: Api) -> None:
    team_a = api.create_team("Alpha Team")
    team_b = api.create_team("Beta Team")
    alpha = signed_in(api, api.create_key(team_a)["apiKey"])
    beta = signed_in(api, api.create_key(team_b)["apiKey"])
    assert "Alpha Team" in alpha.get("/console").text
    page_b = beta.get("/console").text
    assert "Beta Team" in page_b and "Alpha Team" not in page_b


def test_unknown_console_page_is_an_html_404(api: Api) -> None:
    team_id = api.create_team()
    client = signed_in(api, api.create_key(team_id)["apiKey"])
    missing = client.get("/console/no-such-page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    # The API keeps its JSON errors.
    assert api.client.get("/v1/no-such").json()["code"] == "not_found"


def test_next_never_leaves_the_console(api: Api) -> None:
    team_id = api.create_team()
    key = api.create_key(team_id)["apiKey"]
    for target, expected in (
        ("https://evil.example/", "/console"),
        ("//evil.example/", "/console"),
        ("/console/invoices", "/console/invoices"),
        ("/console//evil.example", "/console"),
    ):
        client = browser(api)
        form = client.get("/console/login")
        response = client.post(
            "/console/login",
            data={"csrf_token": csrf_of(form.text), "key": key, "next": target},
        )
        assert response.headers["location"] == expected, target
