"""``/v1/meters/{meter_id}/...`` and ``/v1/alerts``: what the customer app shows.

Usage per interval, local day or local month with how much of it was measured, the daily
curve, tier progress, and alerts. Days and months are local to the meter's time zone (its
master record's, else the site's). A token limited to accounts reads only their meters (a
meter without a master record belongs to no account) and their meters' alerts.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and some name types local to the function that builds the routes.

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo

import orjson
import polars as pl
from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from meterlake.api.auth import Principal
from meterlake.api.cursor import signed_page
from meterlake.api.errors import ApiError
from meterlake.api.lake import ALERT_COLUMNS, LakeReader, Meter, Resolution
from meterlake.api.models import AlertPage, Curve, TierProgress, Usage
from meterlake.api.params import (
    DAY_PATTERN,
    ID_PATTERN,
    MOMENT_HELP,
    MOMENT_PATTERN,
    check_id,
    parse_day,
    parse_moment,
)
from meterlake.api.render import json_ready, json_response, json_row, json_rows
from meterlake.api.service import Service

MAX_SPAN: Final[dict[str, dt.timedelta]] = {
    "interval": dt.timedelta(days=92),
    "day": dt.timedelta(days=3 * 366),
    "month": dt.timedelta(days=5 * 366),
}
"""The longest ``to - from`` per resolution."""
DEFAULT_SPAN: Final[dict[str, dt.timedelta]] = {
    "interval": dt.timedelta(days=1),
    "day": dt.timedelta(days=31),
    "month": dt.timedelta(days=365),
}
"""``to - from`` when ``from`` is not given."""
MAX_ALERTS: Final = 10_000
INTERVAL_COLUMNS: Final = (
    "start",
    "minutes",
    "energy_import_kwh",
    "energy_export_kwh",
    "status",
    "flags",
    "method",
)
CURVE_FIGURES: Final = (
    "timezone",
    "interval_minutes",
    "energy_kwh",
    "export_kwh",
    "peak_kw",
    "min_kw",
    "mean_kw",
    "base_load_kw",
    "load_factor",
    "energy_peak_kwh",
    "energy_flat_kwh",
    "energy_valley_kwh",
    "energy_critical_kwh",
    "intervals",
    "intervals_estimated",
    "intervals_missing",
    "actual_share",
    "computed_at",
)
TIER_COLUMNS: Final = (
    "meter_id",
    "as_of",
    "tariff_id",
    "tier_reset",
    "window_start",
    "window_end",
    "energy_kwh",
    "tier",
    "next_threshold_kwh",
    "threshold_share",
    "daily_kwh",
    "projected_crossing",
    "days_to_crossing",
    "computed_at",
)
AlertState = Literal["open", "resolved", "all"]
MeterIdParam = Annotated[
    str, Path(pattern=ID_PATTERN, max_length=64, description="The meter.", examples=["m-1"])
]


def usage_range(
    meter: Meter,
    resolution: Resolution,
    start: str | None,
    end: str | None,
    now: dt.datetime,
) -> tuple[dt.datetime, dt.datetime]:
    """``[from, to)`` in UTC; by default ``to`` is the next local midnight after ``now`` and
    ``from`` lies :data:`DEFAULT_SPAN` before it.

    Raises
    ------
    ApiError
        A bound is malformed, ``to`` is not after ``from``, or the range is too long.
    """
    zone = ZoneInfo(meter.timezone)
    if end is not None:
        upper = parse_moment(end, zone, "to")
    else:
        tomorrow = now.astimezone(zone).date() + dt.timedelta(days=1)
        upper = dt.datetime.combine(tomorrow, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    if start is not None:
        lower = parse_moment(start, zone, "from")
    else:
        back = (upper - DEFAULT_SPAN[resolution]).astimezone(zone).date()
        lower = dt.datetime.combine(back, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    if upper <= lower:
        raise ApiError(400, "to: must be after from", parameter="to")
    if upper - lower > MAX_SPAN[resolution]:
        days = MAX_SPAN[resolution].days
        raise ApiError(
            400,
            f"to: at resolution={resolution} a range spans {days} days at most; "
            "ask for a coarser resolution or several ranges",
            parameter="to",
        )
    return lower, upper


def curve_points(
    day: dt.date, timezone: str, minutes: int, curve: list[float | None]
) -> list[dict[str, Any]]:
    """The curve's points with their local start times (a DST day has 23 or 25 hours).

    >>> curve_points(dt.date(2026, 10, 1), "Asia/Shanghai", 720, [0.5, 1.5])[1]
    {'start': '2026-10-01T12:00:00+08:00', 'power_kw': 1.5}
    """
    zone = ZoneInfo(timezone)
    midnight = dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    step = dt.timedelta(minutes=minutes)
    return [
        {"start": (midnight + i * step).astimezone(zone).isoformat(), "power_kw": power}
        for i, power in enumerate(curve)
    ]


def alert_values(text: str | None) -> dict[str, Any] | None:
    """An alert's ``values_json`` as an object (None when absent or not an object).

    >>> alert_values('{"ratio": 3.2}'), alert_values("[1]"), alert_values("{oops")
    ({'ratio': 3.2}, None, None)
    """
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def alerts_kept(
    since: dt.datetime | None,
    meter_id: str | None,
    state: AlertState,
    meters: Sequence[str] | None,
) -> pl.Expr:
    """Which :func:`~meterlake.api.lake.alert_summaries` rows the filters keep (``meters``:
    the meters the token may read, None: all)."""
    keep = pl.lit(True)
    if since is not None:
        keep &= pl.col("updated_at") >= since
    if meter_id is not None:
        keep &= pl.col("meter_id") == meter_id
    if state == "open":
        keep &= pl.col("state") != "resolved"
    elif state == "resolved":
        keep &= pl.col("state") == "resolved"
    if meters is not None:
        keep &= pl.col("meter_id").is_in(sorted(meters))
    return keep


def readable_meter(reader: LakeReader, principal: Principal, meter_id: str) -> Meter:
    """The meter ``meter_id``; a 404 when ``principal`` may not read its account."""
    check_id(meter_id, "meter_id")
    meter = reader.meter(meter_id)
    if not principal.may_read(meter.account):
        raise ApiError(404, f"no meter {meter_id}", parameter="meter_id")
    return meter


def meters_router(service: Service) -> APIRouter:
    """The ``/v1/meters`` endpoints (scope ``usage:read``)."""
    router = APIRouter(prefix="/v1/meters", tags=["usage"])
    usage_reader = service.require("usage:read")
    reader = service.reader

    @router.get(
        "/{meter_id}/usage",
        summary="Energy per interval, local day or local month",
        responses={200: {"model": Usage}},
    )
    def usage(
        request: Request,
        principal: Annotated[Principal, Depends(usage_reader)],
        meter_id: MeterIdParam,
        start: Annotated[
            str | None,
            Query(alias="from", pattern=MOMENT_PATTERN, description=f"Start: {MOMENT_HELP}."),
        ] = None,
        end: Annotated[
            str | None,
            Query(alias="to", pattern=MOMENT_PATTERN, description="End (exclusive), the same."),
        ] = None,
        resolution: Annotated[
            Resolution, Query(description="`interval`, `day` (the default) or `month`.")
        ] = "day",
    ) -> Response:
        """The meter's import and export [kWh] per step with its status: per interval as
        validated (actual, estimated, edited, missing, suspect), per local day or month with
        the count of intervals of each status. Default range: up to the next local midnight,
        from 1 day (interval), 31 days (day) or 12 months (month) before it."""
        meter = readable_meter(reader, principal, meter_id)
        lower, upper = usage_range(meter, resolution, start, end, service.clock())
        rows = reader.usage(meter, resolution, lower, upper)
        if resolution == "interval":
            rows = rows.select(
                pl.col("interval_start").alias("start"),
                pl.col("interval_minutes").alias("minutes"),
                *INTERVAL_COLUMNS[2:],
            )
        return json_response(
            request,
            {
                "meter_id": meter_id,
                "resolution": resolution,
                "timezone": meter.timezone,
                "from": lower.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "to": upper.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "steps": json_rows(rows),
            },
        )

    @router.get(
        "/{meter_id}/curve",
        summary="The load curve of a local day",
        responses={200: {"model": Curve}},
    )
    def curve(
        request: Request,
        principal: Annotated[Principal, Depends(usage_reader)],
        meter_id: MeterIdParam,
        date: Annotated[
            str | None,
            Query(
                pattern=DAY_PATTERN,
                description="The local day; default: yesterday.",
                examples=["2026-10-01"],
            ),
        ] = None,
    ) -> Response:
        """The day's mean power per interval [kW] from the latest analysis run, with the
        day's figures (energy, peak, base load, load factor, time-of-use split)."""
        meter = readable_meter(reader, principal, meter_id)
        if date is None:
            day = service.clock().astimezone(ZoneInfo(meter.timezone)).date()
            day -= dt.timedelta(days=1)
        else:
            day = parse_day(date, "date")
        row = reader.daily(meter_id, day)
        if row is None or not row.get("curve_kw"):
            raise ApiError(
                404, f"no curve of meter {meter_id} for {day}: not analysed (yet)", parameter="date"
            )
        zone = row["timezone"] if row["timezone"] else meter.timezone
        figures = json_ready(pl.DataFrame([row]), CURVE_FIGURES).row(0, named=True)
        body = {"meter_id": meter_id, "date": day.isoformat(), **figures}
        body["points"] = curve_points(day, zone, row["interval_minutes"] or 15, row["curve_kw"])
        return json_response(request, body)

    @router.get(
        "/{meter_id}/tier-progress",
        summary="Where the meter stands in its tariff's tiers",
        responses={200: {"model": TierProgress}},
    )
    def tier_progress(
        request: Request,
        principal: Annotated[Principal, Depends(usage_reader)],
        meter_id: MeterIdParam,
    ) -> Response:
        """Energy counted in the tier window so far, the tier, the next threshold and when it
        will be crossed at the recent daily use (from the latest analysis run)."""
        readable_meter(reader, principal, meter_id)
        rows = reader.tier_progress()
        mine = rows.filter(pl.col("meter_id") == meter_id)
        if not mine.height:
            raise ApiError(
                404,
                f"no tier progress of meter {meter_id}: its tariff has no tiers, or it was not "
                "analysed (yet)",
                parameter="meter_id",
            )
        return json_response(request, json_row(mine, 0, TIER_COLUMNS))

    return router


def alerts_router(service: Service) -> APIRouter:
    """The ``/v1/alerts`` endpoint (scope ``usage:read``)."""
    router = APIRouter(prefix="/v1", tags=["usage"])
    usage_reader = service.require("usage:read")
    reader = service.reader

    @router.get("/alerts", summary="Alerts, page by page", responses={200: {"model": AlertPage}})
    def alerts(
        request: Request,
        principal: Annotated[Principal, Depends(usage_reader)],
        since: Annotated[
            str | None,
            Query(
                pattern=MOMENT_PATTERN,
                description="Only alerts with an event at or after this instant (a day: its "
                "midnight in the site's time zone).",
            ),
        ] = None,
        meter_id: Annotated[
            str | None,
            Query(pattern=ID_PATTERN, max_length=64, description="Only this meter's alerts."),
        ] = None,
        state: Annotated[
            AlertState,
            Query(description="`open` (not resolved), `resolved`, or `all` (the default)."),
        ] = "all",
        after: Annotated[
            str | None,
            Query(min_length=1, max_length=512, description="The `next` cursor of a page."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_ALERTS, description="Alerts per page.")] = 1000,
    ) -> Response:
        """Alerts by their latest event, oldest change first (``updated_at``, ``alert_id``)."""
        if meter_id is not None:
            readable_meter(reader, principal, meter_id)
        moment = (
            None if since is None else parse_moment(since, ZoneInfo(reader.site_timezone), "since")
        )
        readable = None
        if principal.accounts is not None:
            readable = [m for m, a in reader.accounts().items() if principal.may_read(a)]
        shown, following = signed_page(
            reader.alerts(),
            key=service.cursor_key,
            query=f"alerts|{since or ''}|{meter_id or ''}|{state}",
            after=after,
            keep=alerts_kept(moment, meter_id, state, readable),
            limit=limit,
            id_column="alert_id",
        )
        items = json_ready(shown, ALERT_COLUMNS).to_dicts()
        for item, text in zip(items, shown["values_json"], strict=True):
            item["values"] = alert_values(text)
        return json_response(
            request,
            {
                "since": since,
                "state": state,
                "meter_id": meter_id,
                "limit": limit,
                "count": len(items),
                "alerts": items,
                "next": following,
            },
        )

    return router
