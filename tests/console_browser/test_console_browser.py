"""The console in headless chromium, on SQLite and PostgreSQL (spec: console.md, quality bar).

Every case signs in through the real forms, reads what the page shows and compares it with what
the Billing Management API answers for the same team at the same moment. The screenshots of every
page at 375 px and 1440 px are written by ``test_every_page_signed_in_with_a_key`` (under
``.artifacts/screenshots/<db>/``).

All browser cases live in this one file: ``--dist loadfile`` then runs them on one xdist worker,
with one browser and one served app per database.
"""

from __future__ import annotations

import re
from typing import Any

from tests.console_browser.conftest import Served, Tab, unique

READ = "team-token:endpoint:BillingRead"
WRITE = "team-token:endpoint:BillingWrite"
DECLINED = "4000000000000002"
INSUFFICIENT = "4000000000009995"


# --- helpers ----------------------------------------------------------------------------------


def team_with_key(served: Served, acls: list[str] | None = None) -> tuple[str, str, str]:
    """A new team (a name of its own) and a management key: (team id, name, key)."""
    name = unique("Team")
    team = served.create_team(name)
    return team, name, str(served.create_key(team, acls)["apiKey"])


def sign_in(tab: Tab, key: str) -> None:
    """With the keyboard alone: the key field has focus, the key is typed, Enter submits."""
    tab.go("/console/login")
    focused = tab.page.evaluate("document.activeElement && document.activeElement.name")
    assert focused == "key", "the key field should have focus on arrival"
    tab.page.keyboard.type(key)
    tab.page.keyboard.press("Enter")
    tab.page.wait_for_url(re.compile(r"/console$"))


def text(tab: Tab, selector: str) -> str:
    return " ".join(tab.page.locator(selector).inner_text().split())


def flash(tab: Tab) -> str:
    return text(tab, ".flash")


def money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}${whole:,}.{part:02d}"


def api(served: Served, key: str, path: str, team: str) -> Any:
    response = served.customer(key, "GET", f"/v1/billing/teams/{team}{path}")
    assert response.status_code == 200, response.text
    return response.json()


def top_up_by_api(served: Served, key: str, team: str, cents: int) -> dict[str, Any]:
    response = served.customer(
        key, "POST", f"/v1/billing/teams/{team}/prepaid/top-up", json={"amount": {"val": cents}}
    )
    assert response.status_code == 200, response.text
    return dict(response.json()["change"])


def credits_remaining(served: Served, key: str, team: str) -> int:
    core = api(served, key, "/postpaid/invoice/preview", team)["coreInvoice"]
    return -int(core["prepaidCredits"]["val"]) - abs(int(core["prepaidCreditsUsed"]["val"]))


def submit(tab: Tab, button: str) -> None:
    """Click a form's submit button and wait for the page the post leads to."""
    with tab.page.expect_navigation():
        tab.page.click(button)


# --- sign-in, every page, sign-out --------------------------------------------------------------


def test_every_page_signed_in_with_a_key(served: Served, tab: Tab) -> None:
    """Sign in with a key (keyboard only), open every page -- each at 375 px (nothing wider than
    the screen) and 1440 px, screenshotted -- with its figures equal to the API's; sign out."""
    team, name, key = team_with_key(served)
    served.add_card(team)
    change = top_up_by_api(served, key, team, 4_200)
    invoice = change["invoiceId"]

    sign_in(tab, key)
    assert name in text(tab, ".topbar")
    remaining = credits_remaining(served, key, team)
    assert remaining == 4_200
    assert text(tab, "#credits-remaining") == money(remaining)
    tab.screenshots("overview")

    pages = {
        "credits": "/console/credits",
        "payment-methods": "/console/payment-methods",
        "billing-info": "/console/billing-info",
        "limits": "/console/limits",
        "usage": "/console/usage",
        "invoices": "/console/invoices",
        "invoice": f"/console/invoices/{invoice}",
    }
    for page_name, path in pages.items():
        response = tab.go(path)
        assert response.status == 200, (path, response.status)
        assert tab.path() == path
        tab.screenshots(page_name)
        if page_name == "credits":
            balance = api(served, key, "/prepaid/balance", team)
            assert text(tab, "#posted-credit") == money(-int(balance["total"]["val"]))
            rows = tab.page.locator("#ledger tbody tr")
            assert rows.count() == len(balance["changes"]) == 1
            assert rows.first.get_attribute("data-status") == "SUCCEEDED"
            assert rows.first.get_attribute("data-cents") == "4200"
        elif page_name == "payment-methods":
            listed = api(served, key, "/payment-method", team)["paymentMethods"]
            shown = tab.page.locator("#cards tbody tr")
            assert [shown.nth(i).get_attribute("data-method") for i in range(shown.count())] == [
                m["paymentMethodId"] for m in listed
            ]
        elif page_name == "limits":
            limits = api(served, key, "/postpaid/spending-limits", team)["spendingLimits"]
            assert text(tab, "#hard-limit") == money(int(limits["effectiveHardSl"]["val"]))
            assert text(tab, "#effective-limit") == money(int(limits["effectiveSl"]["val"]))
        elif page_name == "billing-info":
            info = api(served, key, "/billing-info", team)["billingInfo"]
            assert tab.page.input_value("#f-name") == info["name"] == ""

    # Every page is reachable from the navigation, keyboard first: the first Tab reaches the
    # skip link.
    tab.go("/console")
    tab.page.keyboard.press("Tab")
    assert tab.page.evaluate("document.activeElement.className") == "skip"
    nav = tab.page.locator("nav.nav a")
    assert [nav.nth(i).get_attribute("href") for i in range(nav.count())] == [
        "/console",
        "/console/usage",
        "/console/invoices",
        "/console/credits",
        "/console/payment-methods",
        "/console/billing-info",
        "/console/limits",
    ]

    submit(tab, "form.signout button")
    assert tab.path() == "/console/login"
    tab.go("/console/credits")
    assert tab.path() == "/console/login", "signed out: every page sends to the sign-in page"


def test_sign_in_with_a_one_time_link(served: Served, tab: Tab) -> None:
    team, name, _ = team_with_key(served)
    response = served.admin(
        "POST", f"/admin/v1/teams/{team}/console-links", json={"ttlMinutes": 10}
    )
    assert response.status_code == 201, response.text
    url = response.json()["url"]
    tab.go(url)
    assert name in text(tab, "main")
    submit(tab, "main form button[type=submit]")
    assert tab.path() == "/console"
    assert name in text(tab, ".topbar")
    tab.go("/console/limits")  # a link session may change billing (BillingWrite)
    assert tab.page.locator("#soft-limit-submit").is_enabled()

    other = tab.context.browser.new_context()
    try:  # the link is used up: another browser is told so, and offered no way in
        again = other.new_page()
        response = again.goto(served.base + url)
        assert response is not None and response.status == 400
        assert "already been used" in again.locator("#login-error").inner_text()
        assert again.locator("input[name=token]").count() == 0
    finally:
        other.close()


# --- credits: top-ups, cards ------------------------------------------------------------------


def test_top_up_succeeds_then_is_declined(served: Served, tab: Tab) -> None:
    """Cards added in the page's test-card form; a top-up that succeeds, then one declined by
    the sandbox's decline card, each outcome shown and each equal to the API's balance."""
    team, _, key = team_with_key(served)
    sign_in(tab, key)

    tab.go("/console/payment-methods")
    assert tab.page.locator("#no-cards").count() == 1
    tab.page.fill("#f-cardNumber", "4242 4242 4242 4242")
    tab.page.fill("#f-expMonth", "12")
    tab.page.fill("#f-expYear", "2034")
    tab.page.fill("#f-cvc", "123")
    submit(tab, "#add-card-submit")
    assert "ending 4242" in flash(tab)

    tab.go("/console/credits")
    tab.page.fill("#f-amount", "50")
    submit(tab, "#top-up-submit")
    assert tab.path() == "/console/credits"
    assert "Added $50.00 of credit" in flash(tab)
    balance = api(served, key, "/prepaid/balance", team)
    assert balance["changes"][0]["topupStatus"] == "SUCCEEDED"
    assert text(tab, "#posted-credit") == money(-int(balance["total"]["val"])) == "$50.00"
    number = balance["changes"][0]["invoiceNumber"]
    assert number in flash(tab)
    tab.go("/console")
    assert text(tab, "#credits-remaining") == money(credits_remaining(served, key, team))

    # The decline card becomes the default; the next top-up is declined, with the reason.
    tab.go("/console/payment-methods")
    tab.page.fill("#f-cardNumber", DECLINED)
    tab.page.fill("#f-expMonth", "1")
    tab.page.fill("#f-expYear", "2033")
    submit(tab, "#add-card-submit")
    rows = tab.page.locator("#cards tbody tr")
    assert "0002" in rows.first.inner_text() and rows.first.get_attribute("data-default")
    tab.go("/console/credits")
    tab.page.fill("#f-amount", "20.00")
    submit(tab, "#top-up-submit")
    message = flash(tab)
    assert "declined" in message and "card_declined" in message, message
    assert "flash-error" in (tab.page.locator(".flash").get_attribute("class") or "")
    balance = api(served, key, "/prepaid/balance", team)
    assert [c["topupStatus"] for c in balance["changes"]] == ["FAILED_TO_CHARGE", "SUCCEEDED"]
    assert text(tab, "#posted-credit") == "$50.00"
    ledger = tab.page.locator("#ledger tbody tr")
    assert ledger.first.get_attribute("data-status") == "FAILED_TO_CHARGE"
    assert "Declined" in ledger.first.inner_text()

    # "Make default" puts the good card first again (the API lists it first too).
    tab.go("/console/payment-methods")
    submit(tab, "#cards tbody tr:not([data-default]) button")
    listed = api(served, key, "/payment-method", team)["paymentMethods"]
    assert listed[0]["cardDetails"]["last4"] == "4242"
    assert (
        tab.page.locator("#cards tbody tr").first.get_attribute("data-method")
        == (listed[0]["paymentMethodId"])
    )

    # A bad amount is a field error, and nothing is charged.
    tab.go("/console/credits")
    tab.page.fill("#f-amount", "12.345")
    submit(tab, "#top-up-submit")
    assert tab.page.get_attribute("#f-amount", "aria-invalid") == "true"
    assert "dollars and cents" in text(tab, "#f-amount-error")
    assert len(api(served, key, "/prepaid/balance", team)["changes"]) == 2


# --- limits and billing info ------------------------------------------------------------------


def test_soft_limit_with_a_field_error(served: Served, tab: Tab) -> None:
    team, _, key = team_with_key(served)
    sign_in(tab, key)
    tab.go("/console/limits")
    hard = int(
        api(served, key, "/postpaid/spending-limits", team)["spendingLimits"]["effectiveHardSl"][
            "val"
        ]
    )
    tab.page.fill("#f-softLimit", str(hard // 100 + 1))
    submit(tab, "#soft-limit-submit")
    assert tab.page.get_attribute("#f-softLimit", "aria-invalid") == "true"
    assert money(hard) in text(tab, "#f-softLimit-error")
    limits = api(served, key, "/postpaid/spending-limits", team)["spendingLimits"]
    assert limits["softSl"]["val"] == "0", "a refused limit changes nothing"

    tab.page.fill("#f-softLimit", "12.34")
    submit(tab, "#soft-limit-submit")
    assert "$12.34" in flash(tab)
    limits = api(served, key, "/postpaid/spending-limits", team)["spendingLimits"]
    assert limits["softSl"]["val"] == limits["effectiveSl"]["val"] == "1234"
    assert text(tab, "#soft-limit") == text(tab, "#effective-limit") == "$12.34"

    tab.page.fill("#f-spendThresholdsPercent", "90, 50")
    tab.page.fill("#f-lowCredit", "5")
    submit(tab, "#alerts-submit")
    assert "ascending" in text(tab, "#f-spendThresholdsPercent-error")
    tab.page.fill("#f-spendThresholdsPercent", "50, 90")
    tab.page.fill("#f-emails", "alerts@example.com")
    submit(tab, "#alerts-submit")
    assert "saved" in flash(tab)
    alerts = served.admin("GET", f"/admin/v1/teams/{team}/alerts").json()
    assert alerts["spendThresholdsPercent"] == [50, 90]
    assert alerts["lowCreditCents"] == "500"
    assert alerts["emails"] == ["alerts@example.com"]


def test_billing_info_field_errors_then_saved(served: Served, tab: Tab) -> None:
    team, _, key = team_with_key(served)
    sign_in(tab, key)
    tab.go("/console/billing-info")
    tab.page.fill("#f-name", "Acme GmbH")
    tab.page.fill("#f-email", "not-an-address")
    tab.page.fill("#f-line1", "Hauptstr. 1")
    tab.page.fill("#f-city", "Berlin")
    tab.page.select_option("#f-country", "DE")
    tab.page.select_option("#f-taxIdType", "eu_vat")
    submit(tab, "#save-billing-info")
    assert tab.page.get_attribute("#f-email", "aria-invalid") == "true"
    assert "valid email" in text(tab, "#f-email-error")
    assert tab.page.locator(".field-error").count() == 1, "only the bad field is marked"
    assert tab.page.input_value("#f-name") == "Acme GmbH", "the form keeps what was typed"
    assert api(served, key, "/billing-info", team)["billingInfo"]["name"] == ""

    tab.page.fill("#f-email", "billing@acme.example")
    submit(tab, "#save-billing-info")  # a tax id type needs its number (the API's rule)
    assert "together" in text(tab, "#f-taxNumber-error")
    tab.page.fill("#f-taxNumber", "DE123456789")
    submit(tab, "#save-billing-info")
    assert "saved" in flash(tab)
    info = api(served, key, "/billing-info", team)["billingInfo"]
    assert info["email"] == "billing@acme.example"
    assert info["address"]["country"] == "DE"
    assert (info["taxIdType"], info["taxNumber"]) == ("eu_vat", "DE123456789")
    assert tab.page.input_value("#f-email") == info["email"]


def test_read_only_key_is_told_it_needs_billing_write(served: Served, tab: Tab) -> None:
    team, _, key = team_with_key(served, [READ])
    sign_in(tab, key)
    for path, button in (
        ("/console/credits", "#top-up-submit"),
        ("/console/limits", "#soft-limit-submit"),
        ("/console/billing-info", "#save-billing-info"),
        ("/console/payment-methods", "#add-card-submit"),
    ):
        tab.go(path)
        assert "BillingWrite" in text(tab, ".notice-warn")
        assert tab.page.locator(button).is_disabled()
    # Posting anyway (the form's own CSRF token) is refused with a page that says why.
    tab.go("/console/limits")
    tab.page.eval_on_selector("#soft-limit-submit", "b => b.disabled = false")
    tab.page.fill("#f-softLimit", "10")
    with tab.page.expect_navigation() as navigation:
        tab.page.click("#soft-limit-submit")
    assert navigation.value.status == 403
    assert "BillingWrite" in text(tab, "main")
    limits = api(served, key, "/postpaid/spending-limits", team)["spendingLimits"]
    assert limits["softSl"]["val"] == "0"


# --- documents and isolation ------------------------------------------------------------------


def test_invoice_pdf_downloads(served: Served, tab: Tab) -> None:
    team, _, key = team_with_key(served)
    served.add_card(team)
    change = top_up_by_api(served, key, team, 2_500)
    sign_in(tab, key)
    tab.go("/console/invoices")
    with tab.page.expect_navigation():
        tab.page.click(f"a[href='/console/invoices/{change['invoiceId']}']")
    with tab.page.expect_download() as download:
        tab.page.click("#pdf-link")
    path = download.value.path()
    with open(path, "rb") as pdf:
        assert pdf.read(5) == b"%PDF-"
    assert download.value.suggested_filename.endswith(".pdf")


def test_second_team_never_sees_the_first(served: Served, new_tab: Any) -> None:
    first_team, first_name, first_key = team_with_key(served)
    served.add_card(first_team)
    change = top_up_by_api(served, first_key, first_team, 7_700)
    _, second_name, second_key = team_with_key(served)

    first, second = new_tab(), new_tab()
    sign_in(first, first_key)
    sign_in(second, second_key)
    first.go(f"/console/invoices/{change['invoiceId']}")
    pdf = first.page.get_attribute("#pdf-link", "href")
    assert pdf

    for path in ("/console", "/console/invoices", "/console/credits", "/console/payment-methods"):
        second.go(path)
        shown = text(second, "body")
        assert second_name in shown
        assert first_name not in shown and change["invoiceNumber"] not in shown
        assert "$77.00" not in shown
    response = second.go(f"/console/invoices/{change['invoiceId']}")
    assert response.status == 404
    assert change["invoiceNumber"] not in text(second, "body")
    downloaded = second.page.request.get(served.base + pdf)
    assert downloaded.status == 404
    # Still the first team's, in its own session.
    first.go("/console")
    assert text(first, "#credits-remaining") == "$77.00"


# --- Stripe: the card element --------------------------------------------------------------------


def test_stripe_card_element_adds_a_card(served_stripe: Served, stripe_tab: Tab) -> None:
    """With Stripe, the page loads Stripe.js (here localstripe's, from its own address: the only
    origin besides the app the page may reach) and its card element; submitting makes a
    SetupIntent, confirms it in the browser and attaches the PaymentMethod -- no card number is
    ever posted to Billfold."""
    tab = stripe_tab
    team, _, key = team_with_key(served_stripe)
    sign_in(tab, key)
    posted: list[str] = []
    tab.page.on(
        "request",
        lambda request: (
            posted.append(request.post_data or "")
            if request.url.startswith(served_stripe.base) and request.method == "POST"
            else None
        ),
    )
    response = tab.go("/console/payment-methods")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self' http://127.0.0.1" in policy
    assert tab.page.locator("#f-cardNumber").count() == 0, "no raw card form with Stripe"
    card = tab.page.locator("#card-element input")
    card.first.wait_for()
    for placeholder, value in (
        ("number", "4242424242424242"),
        ("exp_month", "12"),
        ("exp_year", "34"),
        ("cvc", "123"),
        ("postal_code", "10001"),
    ):
        tab.page.fill(f"#card-element input[placeholder={placeholder}]", value)
    with tab.page.expect_navigation(url=re.compile(r"/console/payment-methods$")):
        tab.page.click("#stripe-card-form button[type=submit]")
    assert "ending 4242" in flash(tab)
    listed = api(served_stripe, key, "/payment-method", team)["paymentMethods"]
    assert [m["cardDetails"]["last4"] for m in listed] == ["4242"]
    assert not any("4242424242424242" in body for body in posted)
