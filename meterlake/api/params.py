"""Query and path parameters: their patterns, and parsing that answers bad values with a 400.

Values are only ever compared with data in memory or used to choose partitions by validated
name; none reaches SQL or a path as text.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Final

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from meterlake.api.errors import ApiError, shown
from meterlake.config.ids import METER_ID_PATTERN, is_safe_meter_id

ID_PATTERN: Final = METER_ID_PATTERN
"""Meter, bill and alert ids: 1 to 64 letters, digits or ``._-:``, starting alphanumeric."""
PERIOD_PATTERN: Final = r"^\d{4}-(0[1-9]|1[0-2])$"
DAY_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}$"
MOMENT_PATTERN: Final = (
    r"^\d{4}-\d{2}-\d{2}"
    r"(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2}))?$"
)
MOMENT_HELP: Final = (
    "a local day YYYY-MM-DD (midnight in the meter's time zone) or an instant with its offset, "
    "e.g. 2026-10-01T00:00:00Z or 2026-10-01T08:00:00+08:00"
)
FIRST_YEAR: Final = 1970
LAST_YEAR: Final = 2200
_MOMENT_RE: Final = re.compile(MOMENT_PATTERN)


def check_id(value: str, parameter: str) -> str:
    """``value`` if it is a safe id (see :mod:`meterlake.config.ids`), else a 400."""
    if not is_safe_meter_id(value):
        raise ApiError(
            400,
            f"{parameter}: {shown(value)} is not an id: use 1 to 64 letters, digits or '._-:', "
            "starting with a letter or digit",
            parameter=parameter,
        )
    return value


def parse_day(value: str, parameter: str) -> dt.date:
    """A calendar day ``YYYY-MM-DD`` between the years 1970 and 2200, else a 400.

    >>> parse_day("2026-10-01", "date")
    datetime.date(2026, 10, 1)
    """
    try:
        day = dt.date.fromisoformat(value) if re.fullmatch(DAY_PATTERN, value) else None
    except ValueError:
        day = None
    if day is None:
        raise ApiError(
            400, f"{parameter}: {shown(value)} is not a day YYYY-MM-DD", parameter=parameter
        )
    return _in_range(day, value, parameter)


def parse_moment(value: str, zone: dt.tzinfo, parameter: str) -> dt.datetime:
    """A UTC instant from a local day (its midnight in ``zone``) or an RFC 3339 time with an
    offset; else a 400.

    >>> import zoneinfo
    >>> parse_moment("2026-10-01", zoneinfo.ZoneInfo("Asia/Shanghai"), "from").isoformat()
    '2026-09-30T16:00:00+00:00'
    """
    if re.fullmatch(DAY_PATTERN, value):
        day = parse_day(value, parameter)
        return dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(value) if _MOMENT_RE.fullmatch(value) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ApiError(
            400, f"{parameter}: {shown(value)} is not {MOMENT_HELP}", parameter=parameter
        )
    _in_range(moment.date(), value, parameter)
    return moment.astimezone(dt.UTC)


def _in_range(day: dt.date, value: str, parameter: str) -> dt.date:
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise ApiError(
            400,
            f"{parameter}: {shown(value)} is outside the years {FIRST_YEAR}-{LAST_YEAR}",
            parameter=parameter,
        )
    return day


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_params(request: Request) -> None:
    """A 400 for a query parameter the request's route does not take (a typo would be
    ignored else)."""
    route = request.scope.get("route")
    names = _query_names(route.dependant) if isinstance(route, APIRoute) else set()
    unknown = sorted(set(request.query_params) - names)
    if unknown:
        takes = ", ".join(sorted(names)) or "none"
        raise ApiError(
            400,
            f"unknown query parameter {shown(unknown[0])}; this endpoint takes: {takes}",
            parameter=unknown[0][:64],
        )
