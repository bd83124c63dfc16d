"""The application: :func:`create_app` wires the lake reader, tokens, routes and metrics.

::

    GET /v1/bills?period=&status=&account=&after=&limit=   bills:read  a period's bills, paged
    GET /v1/bills/{bill_id}?status=                        bills:read  one bill and its lines
    GET /v1/meters/{meter_id}/usage?from=&to=&resolution=  usage:read  energy with status
    GET /v1/meters/{meter_id}/curve?date=                  usage:read  a day's load curve
    GET /v1/meters/{meter_id}/tier-progress                usage:read  tier progress
    GET /v1/alerts?since=&meter_id=&state=&after=&limit=   usage:read  alerts, paged
    GET /healthz                                           no token    liveness
    GET /metrics                                           any token   Prometheus text
    GET /openapi.json, /docs                               any token   (none with public_docs)

Every ``/v1`` endpoint answers JSON with an ``ETag`` (``If-None-Match`` gives 304), errors as
problem documents (:mod:`meterlake.api.errors`); the token is checked first, then the query
parameters (unknown ones are refused).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and some name types local to the function that builds the routes.

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, JSONResponse, Response

from meterlake import __version__
from meterlake.api.auth import Principal, TokenTable
from meterlake.api.bills import bills_router
from meterlake.api.cursor import load_cursor_key
from meterlake.api.errors import PROBLEM_TYPE, install_error_handlers, problem
from meterlake.api.lake import LakeReader
from meterlake.api.metrics import CONTENT_TYPE, Metrics, RequestLog
from meterlake.api.models import Health, Problem
from meterlake.api.service import Clock, Service
from meterlake.api.usage import alerts_router, meters_router
from meterlake.config.settings import Settings
from meterlake.storage.layout import LAKE_MARKER

DESCRIPTION = """\
Bills with their lines for a billing system to pull, and usage for a customer app, from a
meterlake lake. Every endpoint but `/healthz` takes a bearer token (`Authorization: Bearer
TOKEN`) with the scope it names. Errors are RFC 9457 problem documents. Money is a decimal
string, days are `YYYY-MM-DD`, instants UTC RFC 3339.
"""
_ERRORS = {
    400: "A parameter is malformed, out of range or unknown",
    401: "No bearer token, or not a valid one",
    403: "The token lacks the scope, or may not read the account",
    404: "Not found (also: of an account the token may not read)",
    503: "The lake is busy; try again after `Retry-After` seconds",
}


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_app(root: Path, settings: Settings, *, clock: Clock = _utc_now) -> FastAPI:
    """The HTTP API over the lake at ``root``.

    Parameters
    ----------
    root
        The lake.
    settings
        Tokens and server options come from ``settings.api``; the site time zone from
        ``settings.site``.
    clock
        The current UTC time (default ranges, metrics ages).

    Raises
    ------
    ConfigError
        ``[api] cursor_key_file`` cannot be read or is too short.
    """
    api = settings.api
    reader = LakeReader(
        root,
        site_timezone=settings.site.timezone,
        poll_s=api.lake_poll_s,
        cache_periods=api.cache_periods,
    )
    service = Service(
        reader=reader,
        tokens=TokenTable.from_settings(api.tokens),
        cursor_key=load_cursor_key(api.cursor_key_file),
        clock=clock,
    )
    metrics = Metrics(reader, clock)
    app = FastAPI(
        title="meterlake",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # /v1/bills/ is not /v1/bills: 404, not a redirect
        responses={
            status: {"model": Problem, "description": text} for status, text in _ERRORS.items()
        },
    )
    app.state.reader = reader
    install_error_handlers(app)
    app.include_router(bills_router(service))
    app.include_router(meters_router(service))
    app.include_router(alerts_router(service))
    app.include_router(_operations(service, metrics, root))
    _documentation(app, service, public=api.public_docs)
    app.add_middleware(RequestLog, metrics=metrics)
    return app


def _operations(service: Service, metrics: Metrics, root: Path) -> APIRouter:
    router = APIRouter(tags=["operations"])
    any_token = service.require(None)

    @router.get("/healthz", summary="Liveness (no token)", responses={200: {"model": Health}})
    async def healthz() -> Response:
        """``ok`` while the lake is there (no token needed); 503 when it is not."""
        if not (root / LAKE_MARKER).is_file():
            return problem(503, "the lake is not readable", headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok"})

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    def prometheus(_principal: Annotated[Principal, Depends(any_token)]) -> Response:
        """Requests, latencies and lake freshness, in the Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return router


def _documentation(app: FastAPI, service: Service, *, public: bool) -> None:
    """``/openapi.json`` and the interactive ``/docs``: behind any token unless ``public``."""
    guard = [] if public else [Depends(service.require(None))]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    def openapi() -> Response:
        return JSONResponse(openapi_document(app))

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="meterlake API")


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with errors as ``application/problem+json`` and without
    FastAPI's 422 (a bad parameter is answered 400)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = app.openapi()
    for path in document.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for status, response in responses.items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[PROBLEM_TYPE] = content.pop("application/json")
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    app.openapi_schema = document
    return document
