"""Errors of the HTTP API and how every failure becomes a JSON answer.

::

    PermanentError (meterlake.config.errors)
    └── ApiError              a request the API refuses: 400, 401, 403, 404, 405
        └── CursorError       a page cursor that was changed, truncated or is for another query
    RetryableError            (LakeBusyError, ...) answered 503 with ``Retry-After``

Every error answer is an RFC 9457 problem document (``application/problem+json``)::

    {"type": "about:blank", "title": "Bad Request", "status": 400,
     "detail": "period: must be a month YYYY-MM (got '2026-13')", "parameter": "period"}

An :class:`~meterlake.config.errors.UnsafeIdentifierError` is the client's bad id: 400. Bad input
is never a 500: a request that fails in an unexpected way (a broken lake file, a bug) gets a 500
without any detail; the traceback goes to the server's log only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from meterlake.config.errors import PermanentError, RetryableError, UnsafeIdentifierError

PROBLEM_TYPE: Final = "application/problem+json"
RETRY_AFTER_S: Final = 1
_SHOWN_INPUT: Final = 60
log = logging.getLogger("meterlake.api")


class ApiError(PermanentError):
    """A request the API refuses, with the HTTP status and a message that says what to change.

    Parameters
    ----------
    status
        The HTTP status (4xx).
    detail
        What was wrong and how to fix it.
    parameter
        The query or path parameter at fault, if one is.
    headers
        Extra response headers (``WWW-Authenticate`` ...).
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        parameter: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.parameter = parameter
        self.headers = dict(headers or {})


class CursorError(ApiError):
    """A page cursor that does not verify, or belongs to another query."""

    def __init__(self, detail: str) -> None:
        super().__init__(400, detail, parameter="after")


def problem(
    status: int,
    detail: str,
    *,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An RFC 9457 problem response.

    >>> problem(404, "no bill b-1").body
    b'{"type":"about:blank","title":"Not Found","status":404,"detail":"no bill b-1"}'
    """
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if parameter is not None:
        body["parameter"] = parameter
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_TYPE, headers=headers
    )


def shown(value: object) -> str:
    """A value as an error message quotes it: ``repr``, cut to a readable length.

    >>> shown("x" * 100)[-6:], len(shown("x" * 100))
    ("xx...'", 60)
    """
    text = repr(value)
    return text if len(text) <= _SHOWN_INPUT else text[: _SHOWN_INPUT - 4] + "...'"


def validation_detail(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first problem of a FastAPI validation error as a sentence, and the parameter."""
    errors = exc.errors()
    if not errors:
        return "the request is not valid", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body")]
    parameter = loc[0] if loc else None
    message = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        return f"{parameter}: required parameter is missing", parameter
    got = f" (got {shown(first.get('input'))})" if "input" in first else ""
    return f"{parameter}: {message[:1].lower()}{message[1:]}{got}", parameter


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure of ``app`` with a problem document (see the module docstring)."""

    async def api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return problem(exc.status, exc.detail, parameter=exc.parameter, headers=exc.headers)

    async def invalid_request(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        detail, parameter = validation_detail(exc)
        return problem(400, detail, parameter=parameter)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = {404: "no such endpoint: see /openapi.json", 405: "method not allowed: use GET"}
        headers = dict(exc.headers or {})
        return problem(
            exc.status_code, detail.get(exc.status_code, str(exc.detail)), headers=headers
        )

    async def unsafe_id(_request: Request, exc: Exception) -> Response:
        return problem(400, str(exc))

    async def retryable(_request: Request, exc: Exception) -> Response:
        log.warning("answered 503: %s", exc)
        return problem(
            503, f"{exc}; try again shortly", headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc)
        return problem(500, "internal error; the server's log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(UnsafeIdentifierError, unsafe_id)
    app.add_exception_handler(RetryableError, retryable)
    app.add_exception_handler(Exception, unexpected)
