"""Local time of UTC instants, per meter time zone: the one place VEE turns UTC into local days.

Every stored timestamp is UTC; local time appears where the world is local (a meter's day, its
weekday, the minute of the day). Polars takes a time zone only as a literal, so an expression
for rows in several zones is one branch per zone, selected by the row's zone column; the few
distinct zone names of a meter table are read eagerly to build it, the rows stay lazy.

>>> import datetime as dt
>>> t = dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)
>>> frame = pl.DataFrame({"t": [t, t], "tz": ["Asia/Shanghai", "Europe/Berlin"]})
>>> zones = ["Asia/Shanghai", "Europe/Berlin"]
>>> frame.select(local_time(pl.col("t"), pl.col("tz"), zones))["t"].dt.hour().to_list()
[9, 3]
>>> frame.select(local_date(pl.col("t"), pl.col("tz"), zones))["t"].to_list()
[datetime.date(2026, 3, 29), datetime.date(2026, 3, 29)]
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Collection

import polars as pl

from meterlake.config.timezones import check_timezone


def per_zone(
    timezone: pl.Expr, zones: Collection[str], branch: Callable[[str], pl.Expr]
) -> pl.Expr:
    """``branch(zone)`` for the rows whose ``timezone`` is ``zone``; null for other zones.

    Raises
    ------
    ConfigError
        One of ``zones`` is not an IANA time zone.
    """
    names = sorted({check_timezone(z) for z in zones})
    if len(names) == 1:  # the common case: one site zone, no per-row selection needed
        (only,) = names
        return pl.when(timezone == only).then(branch(only))
    result: pl.Expr = pl.lit(None)
    for zone in reversed(names):
        result = pl.when(timezone == zone).then(branch(zone)).otherwise(result)
    return result


def local_time(utc: pl.Expr, timezone: pl.Expr, zones: Collection[str]) -> pl.Expr:
    """Naive local wall-clock time of the UTC instants ``utc``, each in its row's ``timezone``
    (one of ``zones``; a row in another zone gets null)."""
    return per_zone(
        timezone, zones, lambda zone: utc.dt.convert_time_zone(zone).dt.replace_time_zone(None)
    )


def local_date(
    utc: pl.Expr,
    timezone: pl.Expr,
    zones: Collection[str],
    span: tuple[dt.datetime, dt.datetime] | None = None,
) -> pl.Expr:
    """The local date of the UTC instants ``utc``, each in its row's ``timezone``.

    On ``interval_start`` it puts an interval on its local day: a day has 96 quarter-hours in
    Asia/Shanghai, and 92 or 100 on the days Europe/Berlin or America/New_York switch to or from
    summer time. Given the ``span`` the instants lie in, a zone whose offset does not change in
    it is applied as that fixed offset (several times faster than a zone conversion per row).
    """

    def branch(zone: str) -> pl.Expr:
        offset = fixed_offset(zone, *span) if span is not None else None
        if offset is not None:
            return (utc + pl.lit(offset)).dt.date()
        return utc.dt.convert_time_zone(zone).dt.date()

    return per_zone(timezone, zones, branch)


def fixed_offset(zone: str, start: dt.datetime, end: dt.datetime) -> dt.timedelta | None:
    """The UTC offset of ``zone`` if it is the same from ``start`` to ``end``, else None.

    The offset is compared at every UTC midnight of the span (and its ends): a zone changes its
    offset at most a few times a year, never twice in a day, so a change shows between two
    neighbouring samples.

    >>> utc = dt.UTC
    >>> fixed_offset("Asia/Shanghai", dt.datetime(2026, 1, 1, tzinfo=utc),
    ...              dt.datetime(2027, 1, 1, tzinfo=utc))
    datetime.timedelta(seconds=28800)
    >>> print(fixed_offset("Europe/Berlin", dt.datetime(2026, 3, 1, tzinfo=utc),
    ...                    dt.datetime(2026, 4, 1, tzinfo=utc)))
    None
    """
    info = zoneinfo.ZoneInfo(check_timezone(zone))
    days = max(0, (end - start).days)
    moments = [start + dt.timedelta(days=i) for i in range(days + 1)] + [end]
    offsets = {m.astimezone(info).utcoffset() for m in moments}
    if len(offsets) != 1:
        return None
    (offset,) = offsets
    return offset


def local_midnight(day: pl.Expr, timezone: pl.Expr, zones: Collection[str]) -> pl.Expr:
    """The UTC instant at which the local date ``day`` begins in each row's ``timezone``.

    A midnight that a DST change skips is null (no IANA zone in use does that today); a
    repeated one is the earlier instant.

    >>> import datetime as dt
    >>> frame = pl.DataFrame({"d": [dt.date(2026, 3, 29)] * 2, "tz": ["Europe/Berlin", "UTC"]})
    >>> frame.select(local_midnight(pl.col("d"), pl.col("tz"), ["Europe/Berlin", "UTC"]))[
    ...     "d"].dt.hour().to_list()
    [23, 0]
    """
    naive = day.cast(pl.Datetime("us"))
    return per_zone(
        timezone,
        zones,
        lambda zone: naive.dt.replace_time_zone(
            zone, ambiguous="earliest", non_existent="null"
        ).dt.convert_time_zone("UTC"),
    )
