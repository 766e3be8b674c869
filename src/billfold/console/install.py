"""Mounting the console on the app (app.py calls :func:`install_console`)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from billfold.console import billing_info, credits, endpoints, limits, pages, payment_methods
from billfold.console.errors import install_error_pages
from billfold.console.web import STATIC, STATIC_PATH


def install_console(app: FastAPI) -> None:
    """The pages under /console, their static files (from the package: no CDN, no build step),
    the operator's console-links route, and HTML error pages for console paths. Call after
    ``install_error_handlers``: the console wraps the API's handlers."""
    app.include_router(pages.router)
    for write_page in (credits, payment_methods, billing_info, limits):
        app.include_router(write_page.router)
    app.include_router(endpoints.admin_router, tags=["operator"])
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC), name="console-static")
    install_error_pages(app)
