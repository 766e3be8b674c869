"""The OpenAPI document (``/openapi.json``) and the pages that show it (``/docs``, ``/redoc``).

FastAPI's generated document is corrected here, once per process, to say what the app does:

* **Errors** are the house body (``ErrorBody``: ``{"code", "error", "field"?, "details"?}``),
  described per status by the error classes of kit/errors.py, each followed by the codes the
  catalogue (kit/error_codes.py) lists for that status; ``ErrorBody.code`` names what any request
  may be answered (405, 500): every operation with input may
  answer 400; a body may be 413; an operation guarded by a bearer scheme lists that scheme's
  errors (401, 429) and a guard's own (403 for a key of another team or without the ACL). What only
  some routes answer (404, 409) they declare with ``responses=error_responses(...)``. FastAPI's
  422 is never sent (kit/errors.py answers 400), so it is removed with its schemas.
* **Security**: each bearer scheme is attached to the operations whose dependencies include its
  check (or that declare it in ``openapi_extra``, when they check it without a dependency), so
  ``/docs`` offers Authorize.
* **No null**: responses leave unset fields out (``WireRouter``) and requests read ``null`` as
  the default (``WireModel``), so ``anyOf [X, null]`` is documented as ``X``; only models whose
  null means something (``keep_nulls``) keep it.
* **Request bodies read by hand** (usage ingestion parses its raw body for speed) are declared
  with ``openapi_extra=request_body(Model)``.

The pages load Swagger UI and ReDoc from the package fastapi-offline (which ships their
``dist`` files), not from a CDN: they work without internet access.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, routing
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse

from billfold.kit.error_codes import codes_of_status
from billfold.kit.errors import (
    BadRequest,
    BillfoldError,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
)
from billfold.kit.schemas import WireModel

ERROR_BODY = "ErrorBody"
_ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_BODY}"}


def _code_list(status: int) -> str:
    return ", ".join(f"`{code}`" for code in codes_of_status(status))


_ERROR_SCHEMA: dict[str, Any] = {
    "title": ERROR_BODY,
    "type": "object",
    "description": "The body of every 4xx and 5xx answer.",
    "required": ["code", "error"],
    "properties": {
        "code": {
            "type": "string",
            "description": (
                "A stable machine code, e.g. invalid_argument: each response lists those of its "
                "status (every code, its status and meaning: docs/errors.md). Any request may "
                "also be answered 404 `not_found` (no such route), "
                + " or ".join(f"{status} {_code_list(status)}" for status in (405, 500))
                + "."
            ),
        },
        "error": {"type": "string", "description": "What went wrong, in a sentence."},
        "field": {
            "type": "string",
            "description": "The request field at fault (dotted path), for bad input.",
        },
        "details": {
            "type": "array",
            "description": "Every bad field, when there are several.",
            "items": {
                "type": "object",
                "required": ["field", "error"],
                "properties": {"field": {"type": "string"}, "error": {"type": "string"}},
            },
        },
    },
}
_FASTAPI_422_SCHEMAS = ("HTTPValidationError", "ValidationError")

ASSETS = "/docs/assets"
_ASSET_DIR = Path(fastapi_offline.__file__).parent / "static"


@dataclass(frozen=True)
class Bearer:
    """A bearer-token security scheme and the errors of the operations it guards."""

    name: str
    description: str
    errors: tuple[type[BillfoldError], ...] = (Unauthorized, RateLimited)


def error_responses(*errors: type[BillfoldError]) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of the given error classes: one per status, with the error body, described
    by the classes' docstrings and the codes of that status (kit/error_codes.py)."""
    lines: dict[int, list[str]] = {}
    for error in errors:
        line = " ".join((error.__doc__ or error.code).strip().split("\n\n")[0].split())
        if line not in lines.setdefault(error.status_code, []):
            lines[error.status_code].append(line)
    return {
        status: {
            "description": " ".join([*described, f"Codes: {_code_list(status)}."]),
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
        for status, described in lines.items()
    }


_DOCUMENTED_BODIES: dict[str, type[BaseModel]] = {}


def request_body(model: type[BaseModel], description: str = "") -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON body of a route that reads its body itself.

    The model only documents the shape (its JSON schema joins the document's components); the
    route's handler is unchanged.
    """
    _DOCUMENTED_BODIES[model.__name__] = model
    body: dict[str, Any] = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }
    if description:
        body["description"] = description
    return {"requestBody": body}


def install_openapi(
    app: FastAPI,
    *,
    bearers: Mapping[Callable[..., Any], Bearer],
    guards: Mapping[Callable[..., Any], tuple[type[BillfoldError], ...]],
) -> None:
    """Correct ``app``'s OpenAPI document (see the module's docstring) and serve ``/docs`` and
    ``/redoc`` from the package.

    ``bearers``: the dependency that checks each scheme's token. ``guards``: dependencies that may
    answer errors of their own. ``keep_nulls``: component names whose ``null`` is meaningful. The
    app must be created with ``docs_url=None, redoc_url=None``.
    """

    corrected: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        document = FastAPI.openapi(app)  # cached by FastAPI until the routes change
        if not corrected or corrected[0] is not document:
            _correct(document, app, bearers, guards)
            corrected[:] = [document]
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    _serve_pages(app)


def _correct(
    document: dict[str, Any],
    app: FastAPI,
    bearers: Mapping[Callable[..., Any], Bearer],
    guards: Mapping[Callable[..., Any], tuple[type[BillfoldError], ...]],
) -> None:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in _FASTAPI_422_SCHEMAS:
        schemas.pop(name, None)
    schemas[ERROR_BODY] = _ERROR_SCHEMA
    if _DOCUMENTED_BODIES:
        _, definitions = models_json_schema(
            [(model, "validation") for model in _DOCUMENTED_BODIES.values()],
            ref_template="#/components/schemas/{model}",
        )
        for name, schema in definitions.get("$defs", {}).items():
            schemas.setdefault(name, schema)
    by_scheme = {bearer.name: bearer for bearer in bearers.values()}
    components["securitySchemes"] = {
        bearer.name: {"type": "http", "scheme": "bearer", "description": bearer.description}
        for bearer in by_scheme.values()
    }
    for route in routing.iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        calls = set(_dependency_calls(route.dependant))
        for method in route.methods or ():
            operation = document["paths"][route.path_format][method.lower()]
            _correct_operation(operation, calls, bearers, by_scheme, guards)
    keep_nulls = {model.__name__ for model in _subclasses(WireModel) if model.keep_nulls}
    for name, schema in schemas.items():
        if name.removesuffix("-Input").removesuffix("-Output") not in keep_nulls:
            _drop_nulls(schema)
    for path_item in document["paths"].values():
        _drop_nulls(path_item)


def _correct_operation(
    operation: dict[str, Any],
    calls: set[Callable[..., Any]],
    bearers: Mapping[Callable[..., Any], Bearer],
    by_scheme: Mapping[str, Bearer],
    guards: Mapping[Callable[..., Any], tuple[type[BillfoldError], ...]],
) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    schemes = [bearer.name for call, bearer in bearers.items() if call in calls]
    if schemes:
        operation["security"] = [{name: []} for name in schemes]
    declared = [name for requirement in operation.get("security", []) for name in requirement]
    errors: list[type[BillfoldError]] = []
    if operation.get("parameters") or "requestBody" in operation:
        errors.append(BadRequest)
    if "requestBody" in operation:
        errors.append(PayloadTooLarge)
    for name in declared:
        errors.extend(by_scheme[name].errors)
    for call, guarded in guards.items():
        if call in calls:
            errors.extend(guarded)
    for status, response in error_responses(*errors).items():
        responses.setdefault(str(status), response)
    operation["responses"] = dict(sorted(responses.items()))


def _dependency_calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _dependency_calls(dependency)


def _subclasses(cls: type[WireModel]) -> Iterator[type[WireModel]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _drop_nulls(node: Any) -> None:
    """``anyOf [X, {"type": "null"}]`` becomes ``X`` (and a ``null`` default goes), in place."""
    if isinstance(node, list):
        for item in node:
            _drop_nulls(item)
        return
    if not isinstance(node, dict):
        return
    for value in node.values():
        _drop_nulls(value)
    variants = node.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants:
        rest = [variant for variant in variants if variant != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1:
            node.update({k: v for k, v in rest[0].items() if k not in node})
        else:
            node["anyOf"] = rest
        if node.get("default", 0) is None:
            del node["default"]


def _serve_pages(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=_ASSET_DIR), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    favicon = f"{ASSETS}/favicon.png"
    # As FastAPI serves it with its own docs: the page Swagger UI's OAuth2 flow returns to (a
    # constant page, which bench/spend_check.py also takes as the server stack's floor).
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=favicon,
            oauth2_redirect_url=oauth2_redirect,
            # No badge that sends the document to swagger.io's online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
