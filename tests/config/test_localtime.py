"""Local dates, times and midnights of UTC instants in each row's own time zone."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from meterlake.config.errors import ConfigError
from meterlake.config.localtime import (
    check_timezone,
    fixed_offset,
    local_date,
    local_midnight,
    local_time,
)

UTC = dt.UTC
ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/New_York"]


def test_each_row_is_read_in_its_own_zone() -> None:
    t = dt.datetime(2026, 7, 1, 23, 30, tzinfo=UTC)
    frame = pl.DataFrame({"t": [t] * 3, "tz": ZONES})
    out = frame.select(
        time=local_time(pl.col("t"), pl.col("tz"), ZONES),
        day=local_date(pl.col("t"), pl.col("tz"), ZONES),
    )
    assert out["time"].to_list() == [
        dt.datetime(2026, 7, 2, 7, 30),
        dt.datetime(2026, 7, 2, 1, 30),
        dt.datetime(2026, 7, 1, 19, 30),
    ]
    assert out["day"].to_list() == [dt.date(2026, 7, 2), dt.date(2026, 7, 2), dt.date(2026, 7, 1)]


def test_a_row_in_a_zone_not_listed_gets_null() -> None:
    frame = pl.DataFrame({"t": [dt.datetime(2026, 7, 1, tzinfo=UTC)], "tz": ["Asia/Tokyo"]})
    assert frame.select(local_date(pl.col("t"), pl.col("tz"), ["Asia/Shanghai"])).item() is None


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("Asia/Shanghai", dt.date(2026, 3, 29), 24),
        ("Europe/Berlin", dt.date(2026, 3, 29), 23),
        ("Europe/Berlin", dt.date(2026, 10, 25), 25),
        ("America/New_York", dt.date(2026, 3, 8), 23),
        ("America/New_York", dt.date(2026, 11, 1), 25),
    ],
)
def test_local_days_last_23_24_or_25_hours(tz: str, day: dt.date, hours: int) -> None:
    frame = pl.DataFrame({"d": [day, day + dt.timedelta(days=1)], "tz": [tz, tz]})
    starts = frame.select(local_midnight(pl.col("d"), pl.col("tz"), ZONES))["d"].to_list()
    assert starts[1] - starts[0] == dt.timedelta(hours=hours)
    # and the UTC midnight maps back onto the local date
    back = pl.DataFrame({"t": starts, "tz": [tz, tz]}).select(
        local_date(pl.col("t"), pl.col("tz"), ZONES)
    )
    assert back["t"].to_list() == frame["d"].to_list()


def test_unknown_zones_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        check_timezone("Mars/Olympus")
    with pytest.raises(ConfigError, match="IANA"):
        local_date(pl.col("t"), pl.col("tz"), ["UTC", "Mars/Olympus"])


SPRING = (dt.datetime(2026, 3, 1, tzinfo=UTC), dt.datetime(2026, 4, 15, tzinfo=UTC))
SUMMER = (dt.datetime(2026, 6, 1, tzinfo=UTC), dt.datetime(2026, 7, 15, tzinfo=UTC))


@pytest.mark.parametrize(
    ("zone", "span", "fast"),
    [
        ("Asia/Shanghai", SPRING, True),
        ("UTC", SPRING, True),
        ("Europe/Berlin", SPRING, False),  # summer time starts inside the span
        ("America/New_York", SPRING, False),
        ("Europe/Berlin", SUMMER, True),  # a zone with summer time, but no change in the span
        ("America/New_York", SUMMER, True),
    ],
)
def test_local_date_with_a_span_equals_the_conversion_per_row(
    zone: str, span: tuple[dt.datetime, dt.datetime], fast: bool
) -> None:
    start, end = span
    # the fixed-offset path is taken exactly when the zone keeps its offset in the span
    assert (fixed_offset(zone, start, end) is not None) == fast
    frame = pl.DataFrame(
        {"t": pl.datetime_range(start, end, "15m", closed="left", time_zone="UTC", eager=True)}
    ).with_columns(tz=pl.lit(zone))
    plain = frame.select(local_date(pl.col("t"), pl.col("tz"), [zone]))
    spanned = frame.select(local_date(pl.col("t"), pl.col("tz"), [zone], (start, end)))
    assert plain.equals(spanned)


def test_fixed_offset_sees_a_change_inside_the_span() -> None:
    utc = dt.UTC
    assert fixed_offset("Europe/Berlin", dt.datetime(2026, 4, 1, tzinfo=utc),
                        dt.datetime(2026, 10, 1, tzinfo=utc)) == dt.timedelta(hours=2)  # fmt: skip
    assert fixed_offset("Europe/Berlin", dt.datetime(2026, 10, 24, 12, tzinfo=utc),
                        dt.datetime(2026, 10, 25, 12, tzinfo=utc)) is None  # fmt: skip
