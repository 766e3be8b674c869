"""The browser harness itself: chromium runs, reaches the served app, and takes screenshots."""

from __future__ import annotations

from tests.console_browser.conftest import Tab


def test_served_docs_render_offline(tab: Tab) -> None:
    """/docs (Swagger UI shipped in the package) renders in chromium with no request beyond the
    served app (the tab fixture fails the test otherwise)."""
    response = tab.go("/docs")
    assert response.status == 200
    tab.page.wait_for_selector(".swagger-ui .info", timeout=15_000)
    assert "Billfold" in tab.page.title() or tab.page.locator(".info .title").count() == 1
