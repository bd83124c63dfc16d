"""The customer's monthly usage report: one self-contained HTML page per meter and month.

What a household sees in its utility's app (State Grid's 电e宝 and the like), on one page:

- the month's use beside the last 12 months and the same months a year earlier;
- each day of the month, and the curve of one day (by default the month's highest-use day) over
  the month's typical day;
- the peak/flat/valley split (when the tariff has time-of-use periods);
- progress through the tier blocks (阶梯) and when the next one is reached;
- the month's bill with its lines, marked when it is held for review;
- the alerts still open at the end of the month;
- a few plain-language observations computed from these figures.

Three steps, each usable alone::

    gather_report(root, meter_id, period)       lake -> ReportData (small frames; reads only)
    render_report(data, lang="zh")              ReportData -> HTML text (no I/O)
    write_report(root, meter_id, period, out)   both, into a file

Everything is read from lake tables through ``storage``, with the semantics of the catalogue's
views (``daily_stats``, ``monthly_usage``, ``bills_current``, ``tier_progress_current``,
``load_profiles_current``, ``alerts_open``), so the page shows what an analyst's SQL shows. The
charts are plotly figures with plotly.js embedded once, inline: the file opens offline and
loads nothing from the network. A missing piece (no bill yet, no tiers, a few days of data, no
last year) is a short sentence, never an empty chart.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import jinja2
import plotly.graph_objects as go  # type: ignore[import-untyped,unused-ignore]
import plotly.io as pio  # type: ignore[import-untyped,unused-ignore]
import polars as pl
from markupsafe import Markup
from plotly.offline import get_plotlyjs  # type: ignore[import-untyped,unused-ignore]

from meterlake.config.errors import ConfigError, PermanentError
from meterlake.config.ids import validate_meter_id, validate_partition_value
from meterlake.config.months import add_months
from meterlake.config.schemas import (
    ALERTS,
    BILL_LINES,
    BILL_REVIEWS,
    BILLS,
    DAILY_USAGE,
    LOAD_PROFILES,
    TIER_PROGRESS,
    TOU_CLASSES,
    TableSpec,
    empty_frame,
)
from meterlake.config.settings import SiteSettings
from meterlake.config.timezones import is_timezone
from meterlake.storage.layout import list_partitions, partition_files
from meterlake.storage.scan import (
    current_bill_versions,
    latest_daily,
    open_alerts,
    scan,
    scan_current_meters,
    scan_days,
    scan_files,
)

Language = Literal["zh", "en"]
LANGUAGES: Final[tuple[Language, ...]] = ("zh", "en")

HISTORY_MONTHS: Final = 12
"""Months in the monthly chart (the report's month and the 11 before it)."""
MIN_COMPARE_DAYS: Final = 7
"""Days of data a month needs before its daily average is compared with another month's or
with similar homes' (fewer days say more about the weekday mix than about the household)."""
MIN_TYPICAL_DAYS: Final = 3
"""Days of curves the month needs for its mean curve to stand for a typical day."""
MIN_PEERS: Final = 5
"""Other meters of the same ``meter_group`` needed before a household is ranked among them."""
ALERT_LOOKBACK: Final = dt.timedelta(days=92)
"""How far before the month's end alert events are read. A condition that still holds is
renotified by its rule well within this (cooldowns are hours to days), so an open alert always
has a recent event."""
TIER_LOOKBACK_DAYS: Final = 366
"""Tier progress older than a tier year before the month's end is not shown."""
SAME_WITHIN_PCT: Final = 3.0
"""Changes smaller than this [%] are described as "about the same"."""
BASE_LOAD_HINT_PCT: Final = 75.0
"""A base load above this share of similar homes' [%] comes with a hint of what to check."""
TOP_DAY_RATIO: Final = 1.5
"""The month's top day is pointed out when it used this many times the daily mean or more."""
ESTIMATED_NOTE_SHARE: Final = 0.1
"""Above this share of estimated (or missing) intervals the observations say so first."""
HOURS_PER_DAY: Final = 24.0
_NEWEST_CHUNK: Final = 8
_TEMPLATE: Final = "report.html.j2"

_DAILY_SCALARS: Final = (
    "meter_id",
    "day",
    "timezone",
    "interval_minutes",
    "energy_kwh",
    "export_kwh",
    "peak_kw",
    "base_load_kw",
    "energy_peak_kwh",
    "energy_flat_kwh",
    "energy_valley_kwh",
    "energy_critical_kwh",
    "actual_share",
    "profile",
    "run_id",
    "computed_at",
)
_ENERGY_LINE: Final = re.compile(r"^energy(?:_tier(?P<tier>\d+))?_(?P<tou>peak|valley)$")


class ReportError(PermanentError):
    """A report cannot be made as asked: an unknown meter, a malformed period or day."""


@dataclass(frozen=True)
class ReportData:
    """Everything one report page shows, as small frames and values (no lake access needed).

    Attributes
    ----------
    meter_id, period
        The meter and the report's month ``YYYY-MM`` (local dates ``period_start`` to
        ``period_end``, exclusive).
    account, meter_group, timezone
        From the meter's current master record (``timezone``: its daily figures' zone first).
    monthly
        The 12 months up to ``period``, oldest first: ``month`` (``YYYY-MM``), ``energy_kwh``
        [kWh] and ``days``, with ``last_year_kwh`` [kWh] and ``last_year_days`` of the same
        month a year earlier (null where there is no data).
    daily
        The meter's days of the month (``daily_stats`` rows: energy [kWh], demand [kW], the
        ``energy_<class>_kwh`` split, ``actual_share``, ``profile``, ``curve_kw``), by day.
    day, day_is_default
        The day whose curve is shown; ``day_is_default``: it is the highest-use day (chosen by
        the report, not asked for).
    curve, typical
        ``hour`` (of the local day, 0-24) and ``power_kw`` [kW] of ``day``'s curve and of the
        month's typical day.
    typical_source
        ``profile`` (the meter's own typical-profile centroid of the month's commonest cluster,
        scaled to the month's mean power), ``month_mean`` (the mean of the month's curves), or
        ``None`` (too few days).
    peers
        The meters of the same ``meter_group`` with data in the month, this one included:
        ``meter_id``, ``days``, ``energy_kwh_per_day`` [kWh] and ``base_load_kw`` [kW] (the
        median of the daily base loads).
    tier
        The latest ``tier_progress`` row as of the month's last day (0 or 1 row).
    bill, bill_lines
        The current version of the month's bill (0 or 1 row; ``status`` ``released`` once a
        ``bill_reviews`` row released it) and its lines in ``line_no`` order.
    alerts
        Alerts open at the end of the month (latest event not ``resolved``), with ``raised_at``.
    """

    meter_id: str
    period: str
    period_start: dt.date
    period_end: dt.date
    account: str | None
    meter_group: str | None
    timezone: str
    monthly: pl.DataFrame
    daily: pl.DataFrame
    day: dt.date | None
    day_is_default: bool
    curve: pl.DataFrame
    typical: pl.DataFrame
    typical_source: Literal["profile", "month_mean"] | None
    peers: pl.DataFrame
    tier: pl.DataFrame
    bill: pl.DataFrame
    bill_lines: pl.DataFrame
    alerts: pl.DataFrame


ObservationValue = float | int | str | dt.date


@dataclass(frozen=True)
class Observation:
    """One plain-language finding: its ``kind`` and the figures its sentence is made of.

    The sentence itself is written per language by :func:`observation_text`.
    """

    kind: str
    values: Mapping[str, ObservationValue] = field(default_factory=dict)


# --- the vectorised core: the catalogue's views, in Polars -----------------------------------


def monthly_usage(daily_stats: pl.LazyFrame) -> pl.LazyFrame:
    """Energy per meter and local month with the same month a year earlier: ``monthly_usage``.

    Columns: ``meter_id``, ``month`` (``YYYY-MM``), ``energy_kwh``, ``export_kwh`` [kWh],
    ``days``, ``peak_kw`` [kW], ``last_year_kwh`` [kWh], ``last_year_days`` and
    ``change_vs_last_year`` (a fraction; null without last year).

    >>> rows = pl.LazyFrame({"meter_id": ["m1"] * 3, "energy_kwh": [3.0, 4.0, 5.0],
    ...     "day": [dt.date(2025, 10, 1), dt.date(2026, 10, 1), dt.date(2026, 10, 2)],
    ...     "export_kwh": [0.0] * 3, "peak_kw": [1.0] * 3})
    >>> monthly_usage(rows).sort("month").collect().select("month", "energy_kwh",
    ...     "last_year_kwh", "change_vs_last_year").rows()
    [('2025-10', 3.0, None, None), ('2026-10', 9.0, 3.0, 2.0)]
    """
    months = daily_stats.group_by("meter_id", pl.col("day").dt.truncate("1mo").alias("start")).agg(
        pl.col("energy_kwh").sum(),
        pl.col("export_kwh").sum(),
        pl.len().alias("days"),
        pl.col("peak_kw").max(),
    )
    last_year = months.select(
        "meter_id",
        pl.col("start").dt.offset_by("1y"),
        pl.col("energy_kwh").alias("last_year_kwh"),
        pl.col("days").alias("last_year_days"),
    )
    return (
        months.join(last_year, on=["meter_id", "start"], how="left")
        .with_columns(
            pl.col("start").dt.strftime("%Y-%m").alias("month"),
            (
                (pl.col("energy_kwh") - pl.col("last_year_kwh"))
                / pl.when(pl.col("last_year_kwh") != 0).then(pl.col("last_year_kwh"))
            ).alias("change_vs_last_year"),
        )
        .drop("start")
        .select("meter_id", "month", pl.exclude("meter_id", "month"))
    )


def peer_figures(daily_stats: pl.LazyFrame) -> pl.LazyFrame:
    """Per meter: ``days``, mean daily ``energy_kwh_per_day`` [kWh] and the median of its daily
    ``base_load_kw`` [kW] -- the figures households are compared on."""
    return daily_stats.group_by("meter_id").agg(
        pl.len().alias("days"),
        pl.col("energy_kwh").mean().alias("energy_kwh_per_day"),
        pl.col("base_load_kw").median().alias("base_load_kw"),
    )


def mean_curve(daily_stats: pl.LazyFrame) -> pl.LazyFrame:
    """The mean curve of the days whose ``curve_kw`` has the commonest length: ``slot``,
    ``hour`` (its start in the day [h]) and ``power_kw`` [kW].

    Days of another length (a DST day, a changed interval) are left out rather than stretched.

    >>> rows = pl.LazyFrame({"curve_kw": [[1.0, 3.0], [3.0, 5.0], [9.0]]})
    >>> mean_curve(rows).collect().rows()
    [(0, 0.0, 2.0), (1, 12.0, 4.0)]
    """
    length = pl.col("curve_kw").list.len()
    return (
        daily_stats.select("curve_kw")
        .filter(length == length.mode().min())
        .with_columns(pl.int_ranges(0, length).alias("slot"), length.alias("slots"))
        .explode("curve_kw", "slot")
        .group_by("slot")
        .agg(
            (pl.col("slot").first() * HOURS_PER_DAY / pl.col("slots").first()).alias("hour"),
            pl.col("curve_kw").mean().alias("power_kw"),
        )
        .sort("slot")
    )


# --- reading the lake --------------------------------------------------------------------------


def period_bounds(period: str) -> tuple[dt.date, dt.date]:
    """The first local day of ``period`` (``YYYY-MM``) and the first day after it.

    >>> period_bounds("2026-12")
    (datetime.date(2026, 12, 1), datetime.date(2027, 1, 1))

    Raises
    ------
    ReportError
        ``period`` is not a month ``YYYY-MM``.
    """
    try:
        validate_partition_value("period", period)
    except PermanentError:
        raise ReportError(f"period {period!r} is not a month YYYY-MM (e.g. 2026-10)") from None
    start = dt.date.fromisoformat(f"{period}-01")
    return start, add_months(start, 1)


def _newest_rows(
    root: Path, table: TableSpec, predicate: pl.Expr, *, until: str | None = None
) -> pl.DataFrame:
    """The rows matching ``predicate`` in the newest partitions (values up to ``until``) that
    hold any: looked for a few partitions at a time, newest first, so a daily table is not read
    whole to find one meter's latest row."""
    values = [v for v in list_partitions(root, table) if until is None or v <= until]
    while values:
        chunk, values = values[-_NEWEST_CHUNK:], values[:-_NEWEST_CHUNK]
        files = [f for v in chunk for f in partition_files(root, table, v)]
        rows = scan_files(files, table).filter(predicate).collect()
        if rows.height:
            return rows
    return empty_frame(table)


def _period_table(root: Path, table: TableSpec, period: str) -> pl.LazyFrame:
    return scan_files(partition_files(root, table, period), table)


def gather_report(
    root: Path, meter_id: str, period: str, *, day: dt.date | None = None
) -> ReportData:
    """Read what one meter's report for ``period`` shows from the lake at ``root``.

    Parameters
    ----------
    root
        The lake.
    meter_id
        The meter.
    period
        The month, ``YYYY-MM`` (local days).
    day
        The day whose curve is shown; default: the month's highest-use day.

    Raises
    ------
    ReportError
        ``period`` or ``day`` is malformed, ``day`` is outside ``period``, or the lake knows
        nothing of ``meter_id`` (no master record, no daily figures, no bill).
    UnsafeIdentifierError
        ``meter_id`` is not a valid meter id.
    """
    validate_meter_id(meter_id)
    start, end = period_bounds(period)
    if day is not None and not start <= day < end:
        raise ReportError(f"day {day} is not in period {period}: give a day of that month")
    this_meter = pl.col("meter_id") == meter_id
    meter = scan_current_meters(root).filter(this_meter).collect()
    info = meter.row(0, named=True) if meter.height else {}

    history_start = add_months(start, -(2 * HISTORY_MONTHS - 1))
    history = latest_daily(
        scan_days(root, DAILY_USAGE, history_start, end).select(_DAILY_SCALARS).filter(this_meter)
    ).collect()
    daily = (
        latest_daily(
            scan_days(root, DAILY_USAGE, start, end)
            .select(*_DAILY_SCALARS, "curve_kw")
            .filter(this_meter)
        )
        .sort("day")
        .collect()
    )
    bills, bill_lines = _read_bill(root, meter_id, period)
    if not meter.height and not history.height and not bills.height:
        raise ReportError(
            f"meter {meter_id!r} is unknown to this lake: no master record in `meters`, no daily "
            f"usage in the {2 * HISTORY_MONTHS} months up to {period} and no bill for {period}; "
            'check the id (`meterlake sql "SELECT meter_id FROM meters_current"`)'
        )
    zones = [
        *history.sort("day")["timezone"].drop_nulls().to_list()[-1:],
        info.get("timezone"),
        SiteSettings().timezone,
    ]
    timezone = next(z for z in zones if isinstance(z, str) and is_timezone(z))
    group = info.get("meter_group")
    shown_day, is_default = _chosen_day(daily, day)
    typical, source = _typical_day(root, meter_id, daily)
    feeder = info.get("feeder")
    subjects = [meter_id, *([f"feeder:{feeder}"] if feeder else [])]
    return ReportData(
        meter_id=meter_id,
        period=period,
        period_start=start,
        period_end=end,
        account=info.get("account") or _first(bills, "account"),
        meter_group=group,
        timezone=timezone,
        monthly=_last_months(monthly_usage(history.lazy()).collect(), start),
        daily=daily,
        day=shown_day,
        day_is_default=is_default,
        curve=_day_curve(daily, shown_day),
        typical=typical,
        typical_source=source,
        peers=_read_peers(root, group, start, end),
        tier=_read_tier(root, meter_id, end),
        bill=bills,
        bill_lines=bill_lines,
        alerts=_read_alerts(root, subjects, _local_midnight_utc(end, timezone)),
    )


def _read_bill(root: Path, meter_id: str, period: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The meter's current bill of ``period`` (0 or 1 row) and its lines in order."""
    bills = current_bill_versions(
        _period_table(root, BILLS, period).filter(pl.col("meter_id") == meter_id),
        _period_table(root, BILL_REVIEWS, period),
    ).collect()
    lines = (
        _period_table(root, BILL_LINES, period)
        .filter(pl.col("bill_id").is_in(bills["bill_id"].implode()))
        .unique("line_id", keep="first", maintain_order=True)
        .sort("line_no")
        .collect()
    )
    return bills, lines


_PEERS_SCHEMA: Final = {
    "meter_id": pl.String(),
    "days": pl.UInt32(),
    "energy_kwh_per_day": pl.Float64(),
    "base_load_kw": pl.Float64(),
}


def _read_peers(root: Path, group: str | None, start: dt.date, end: dt.date) -> pl.DataFrame:
    """:func:`peer_figures` of the current members of ``group`` over ``[start, end)``."""
    if group is None:
        return pl.DataFrame(schema=_PEERS_SCHEMA)
    members = scan_current_meters(root).filter(pl.col("meter_group") == group)
    days = (
        scan_days(root, DAILY_USAGE, start, end)
        .select("meter_id", "day", "run_id", "computed_at", "energy_kwh", "base_load_kw")
        .join(members.select("meter_id"), on="meter_id", how="semi")
    )
    return peer_figures(latest_daily(days)).collect()


def _read_tier(root: Path, meter_id: str, end: dt.date) -> pl.DataFrame:
    """The meter's latest ``tier_progress`` row as of the day before ``end`` (0 or 1 row):
    ``tier_progress_current`` at the end of the month."""
    last_day = (end - dt.timedelta(days=1)).isoformat()
    rows = _newest_rows(root, TIER_PROGRESS, pl.col("meter_id") == meter_id, until=last_day)
    recent = pl.col("as_of") > end - dt.timedelta(days=TIER_LOOKBACK_DAYS + 1)
    complete = pl.col("tier").is_not_null() & pl.col("energy_kwh").is_not_null()
    return rows.filter(recent & complete).sort("as_of", "computed_at", nulls_last=False)[-1:]


def _read_alerts(root: Path, subjects: Sequence[str], until: dt.datetime) -> pl.DataFrame:
    """The alerts of ``subjects`` (the meter, its feeder) open at ``until``, newest first."""
    events = scan(root, ALERTS, until - ALERT_LOOKBACK, until)
    return (
        open_alerts(events.filter(pl.col("meter_id").is_in(list(subjects))))
        .sort("raised_at", descending=True)
        .collect()
    )


def _first(frame: pl.DataFrame, column: str) -> Any:
    return frame[column][0] if frame.height else None


def _local_midnight_utc(day: dt.date, timezone: str) -> dt.datetime:
    local = dt.datetime(day.year, day.month, day.day, tzinfo=zoneinfo.ZoneInfo(timezone))
    return local.astimezone(dt.UTC)


def _last_months(monthly: pl.DataFrame, start: dt.date) -> pl.DataFrame:
    """The :data:`HISTORY_MONTHS` months up to ``start``'s, each with its figures or nulls."""
    labels = [f"{add_months(start, -i):%Y-%m}" for i in reversed(range(HISTORY_MONTHS))]
    return (
        pl.DataFrame({"month": labels})
        .join(monthly, on="month", how="left")
        .select("month", "energy_kwh", "days", "last_year_kwh", "last_year_days")
    )


def _chosen_day(daily: pl.DataFrame, day: dt.date | None) -> tuple[dt.date | None, bool]:
    if day is not None:
        return day, False
    measured = daily.filter(pl.col("energy_kwh").is_not_null())
    if not measured.height:
        return None, True
    return measured.sort("energy_kwh", "day", descending=[True, False])["day"][0], True


_CURVE_SCHEMA: Final = {"hour": pl.Float64(), "power_kw": pl.Float64()}


def _day_curve(daily: pl.DataFrame, day: dt.date | None) -> pl.DataFrame:
    if day is None:
        return pl.DataFrame(schema=_CURVE_SCHEMA)
    row = daily.filter((pl.col("day") == day) & (pl.col("curve_kw").list.len() > 0))
    if not row.height:
        return pl.DataFrame(schema=_CURVE_SCHEMA)
    values = row["curve_kw"][0].to_list()
    minutes = row["interval_minutes"][0]
    step = minutes / 60 if minutes else HOURS_PER_DAY / len(values)
    return pl.DataFrame(
        {"hour": [i * step for i in range(len(values))], "power_kw": values}, schema=_CURVE_SCHEMA
    )


def _typical_day(
    root: Path, meter_id: str, daily: pl.DataFrame
) -> tuple[pl.DataFrame, Literal["profile", "month_mean"] | None]:
    """The meter's profile centroid of the month's commonest cluster, scaled to the month's
    mean power; else the month's mean curve; else nothing (too few days)."""
    with_curves = daily.filter(pl.col("curve_kw").list.len() > 0)
    if with_curves.height < MIN_TYPICAL_DAYS:
        return pl.DataFrame(schema=_CURVE_SCHEMA), None
    mean_kwh = with_curves["energy_kwh"].mean()
    clusters = with_curves["profile"].drop_nulls()
    if clusters.len() and isinstance(mean_kwh, float):
        cluster = clusters.mode().sort()[0]
        centroid = _profile_centroid(root, meter_id, cluster)
        if centroid:
            step = HOURS_PER_DAY / len(centroid)
            scale = mean_kwh / HOURS_PER_DAY
            frame = pl.DataFrame(
                {
                    "hour": [i * step for i in range(len(centroid))],
                    "power_kw": [v * scale for v in centroid],
                },
                schema=_CURVE_SCHEMA,
            )
            return frame, "profile"
    return mean_curve(with_curves.lazy()).select("hour", "power_kw").collect(), "month_mean"


def _profile_centroid(root: Path, meter_id: str, cluster: int) -> list[float]:
    """The centroid (mean 1) of ``meter_id``'s own ``cluster`` in the latest profile run that
    profiled the meter (``load_profiles_current`` narrowed to the meter's scope)."""
    rows = _newest_rows(root, LOAD_PROFILES, pl.col("scope") == meter_id)
    if not rows.height:
        return []
    run = rows.sort("computed_at", "run_id", nulls_last=False)["run_id"][-1]
    chosen = rows.filter((pl.col("run_id") == run) & (pl.col("cluster") == cluster))
    if not chosen.height or chosen["centroid"][0] is None:
        return []
    return [float(v) for v in chosen["centroid"][0].to_list()]


# --- observations ------------------------------------------------------------------------------


def observations(data: ReportData, *, limit: int = 5) -> tuple[Observation, ...]:
    """The plain-language findings the data supports, most useful first, at most ``limit``.

    Each is made only when its figures are there and meaningful: an ``estimated`` warning when
    over 10 % of the month is estimated; the change against the same month last year
    (``yoy``) and the rank among similar homes (``peers_usage``, ``base_load``) when the
    months compared have :data:`MIN_COMPARE_DAYS` days and the group :data:`MIN_PEERS` other
    homes; the peak share (``peak_share``, with the saving of moving 1 kWh a day to the valley
    when the bill gives both rates); the tier outlook (``tier``); the month's top day
    (``top_day``) when it stands out (:data:`TOP_DAY_RATIO`).
    """
    found = [
        _estimated(data),
        _year_on_year(data),
        _peers_usage(data),
        _base_load(data),
        _peak_share(data),
        _tier_outlook(data),
        _top_day(data),
    ]
    return tuple(o for o in found if o is not None)[:limit]


def _estimated(data: ReportData) -> Observation | None:
    share = data.daily["actual_share"].drop_nulls()
    if not share.len():
        return None
    estimated = 1.0 - float(share.mean())  # type: ignore[arg-type]
    if estimated <= ESTIMATED_NOTE_SHARE:
        return None
    return Observation("estimated", {"pct": 100 * estimated})


def _year_on_year(data: ReportData) -> Observation | None:
    this = data.monthly.filter(pl.col("month") == data.period).row(0, named=True)
    days, last_days = this["days"] or 0, this["last_year_days"] or 0
    if days < MIN_COMPARE_DAYS or last_days < MIN_COMPARE_DAYS or not this["last_year_kwh"]:
        return None
    per_day, last_per_day = this["energy_kwh"] / days, this["last_year_kwh"] / last_days
    return Observation(
        "yoy",
        {
            "kwh_per_day": per_day,
            "last_kwh_per_day": last_per_day,
            "change_pct": 100 * (per_day - last_per_day) / last_per_day,
            "last_period": f"{add_months(data.period_start, -12):%Y-%m}",
        },
    )


def _comparable_peers(data: ReportData, column: str) -> tuple[float, pl.Series] | None:
    usable = data.peers.filter((pl.col("days") >= MIN_COMPARE_DAYS) & pl.col(column).is_not_null())
    mine = usable.filter(pl.col("meter_id") == data.meter_id)[column]
    others = usable.filter(pl.col("meter_id") != data.meter_id)[column]
    if not mine.len() or others.len() < MIN_PEERS:
        return None
    return float(mine[0]), others


def _peers_usage(data: ReportData) -> Observation | None:
    compared = _comparable_peers(data, "energy_kwh_per_day")
    if compared is None:
        return None
    mine, others = compared
    median = float(others.median())  # type: ignore[arg-type]
    if median <= 0:
        return None
    return Observation(
        "peers_usage",
        {
            "kwh_per_day": mine,
            "median_kwh_per_day": median,
            "change_pct": 100 * (mine - median) / median,
            "homes": others.len(),
        },
    )


def _base_load(data: ReportData) -> Observation | None:
    """The base load [W] and the share of similar homes with a lower (``below_pct``) and a
    higher (``above_pct``) one [%]."""
    compared = _comparable_peers(data, "base_load_kw")
    if compared is None:
        return None
    mine, others = compared
    return Observation(
        "base_load",
        {
            "watts": 1000 * mine,
            "below_pct": 100 * float((others < mine).mean()),  # type: ignore[arg-type]
            "above_pct": 100 * float((others > mine).mean()),  # type: ignore[arg-type]
            "homes": others.len(),
        },
    )


def tou_split(daily: pl.DataFrame) -> dict[str, float]:
    """The month's import per tariff period class [kWh], classes with energy only; empty when
    the month has no time-of-use split (a flat tariff puts everything in ``flat`` or nowhere).

    >>> tou_split(pl.DataFrame({"energy_peak_kwh": [3.0], "energy_flat_kwh": [None],
    ...     "energy_valley_kwh": [1.0], "energy_critical_kwh": [0.0]}))
    {'peak': 3.0, 'valley': 1.0}
    """
    sums = daily.select(pl.col(f"energy_{c}_kwh").sum().alias(c) for c in TOU_CLASSES)
    split = {c: float(v) for c, v in sums.row(0, named=True).items() if v and v > 0}
    return split if set(split) - {"flat"} else {}


def shift_saving(lines: pl.DataFrame) -> tuple[float, float] | None:
    """The peak and valley energy rates of a bill [currency/kWh], from its ``energy_..._peak``
    and ``..._valley`` charge lines of the highest tier that has both; None without them."""
    rates: dict[tuple[int, str], float] = {}
    for code, kind, rate in lines.select("code", "kind", "rate").iter_rows():
        match = _ENERGY_LINE.match(code or "")
        if match and kind == "charge" and rate is not None:
            rates[(int(match["tier"] or 1), match["tou"])] = float(rate)
    tiers = sorted({t for t, _ in rates if (t, "peak") in rates and (t, "valley") in rates})
    if not tiers:
        return None
    return rates[(tiers[-1], "peak")], rates[(tiers[-1], "valley")]


def _peak_share(data: ReportData) -> Observation | None:
    split = tou_split(data.daily)
    if "peak" not in split:
        return None
    total = sum(split.values())
    values: dict[str, ObservationValue] = {
        "pct": 100 * (split["peak"] + split.get("critical", 0)) / total
    }
    rates = shift_saving(data.bill_lines)
    peak_per_day = split["peak"] / data.daily.height
    if rates is not None and rates[0] > rates[1] and peak_per_day >= 1.0:
        days = (data.period_end - data.period_start).days
        values |= {
            "saving": days * (rates[0] - rates[1]),
            "currency": str(_first(data.bill, "currency") or ""),
        }
    return Observation("peak_share", values)


def _tier_outlook(data: ReportData) -> Observation | None:
    if not data.tier.height:
        return None
    row = data.tier.row(0, named=True)
    if row["next_threshold_kwh"] is None:
        return Observation("tier_top", {"tier": row["tier"]})
    values: dict[str, ObservationValue] = {
        "tier": row["tier"],
        "next_tier": row["tier"] + 1,
        "threshold_kwh": row["next_threshold_kwh"],
    }
    if row["projected_crossing"] is not None and row["daily_kwh"]:
        values |= {"date": row["projected_crossing"], "kwh_per_day": row["daily_kwh"]}
        return Observation("tier_crossing", values)
    return Observation("tier_safe", values)


def _top_day(data: ReportData) -> Observation | None:
    measured = data.daily.filter(pl.col("energy_kwh").is_not_null())
    if measured.height < MIN_TYPICAL_DAYS:
        return None
    top = measured.sort("energy_kwh", "day", descending=[True, False]).row(0, named=True)
    mean = float(measured["energy_kwh"].mean())  # type: ignore[arg-type]
    if mean <= 0 or top["energy_kwh"] < TOP_DAY_RATIO * mean:
        return None
    return Observation(
        "top_day", {"date": top["day"], "kwh": top["energy_kwh"], "ratio": top["energy_kwh"] / mean}
    )


# --- words -------------------------------------------------------------------------------------

WORDS_FILE: Final = "report_words.toml"
"""The page's words per language, in ``templates/`` beside the page template (data, so a
translation is an edit of that file)."""


@dataclass(frozen=True)
class Words:
    """The words of the page in one language: ``labels`` of the page, the observations'
    ``sentences`` and the names of bill line ``units``; ``{names}`` in braces are filled in."""

    labels: Mapping[str, str]
    sentences: Mapping[str, str]
    units: Mapping[str, str]


@functools.cache
def report_words(lang: Language) -> Words:
    """The words of the page in ``lang``, read once from :data:`WORDS_FILE`.

    >>> report_words("zh").labels["kwh"], report_words("en").labels["kwh"]
    ('度', 'kWh')

    Raises
    ------
    ConfigError
        The file lacks the language, or a key another language has.
    """
    path = resources.files("meterlake.analytics") / "templates" / WORDS_FILE
    tables = tomllib.loads(path.read_text(encoding="utf-8"))
    sections = {}
    for section in ("labels", "sentences", "units"):
        reference = set(tables.get(LANGUAGES[0], {}).get(section, {}))
        found = tables.get(lang, {}).get(section, {})
        missing = sorted(reference - set(found)) or ([] if found else [f"[{lang}.{section}]"])
        if missing:
            raise ConfigError(f"{WORDS_FILE}: [{lang}.{section}] lacks {', '.join(missing)}")
        sections[section] = dict(found)
    return Words(**sections)


_CURRENCY_SYMBOLS: Final = {"CNY": "¥", "EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"}
_MONTHS_EN: Final = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def _num(value: float | int | Decimal, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _pct(value: float) -> str:
    return f"{abs(value):.0f}%"


def _money(amount: float | Decimal | None, currency: str | None) -> str:
    if amount is None:
        return "—"
    symbol = _CURRENCY_SYMBOLS.get(currency or "")
    text = f"{abs(amount):,.2f}"
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency or ''}".rstrip()


def _date(day: dt.date, lang: Language, *, year: bool = False) -> str:
    if lang == "zh":
        return f"{day.year}年{day.month}月{day.day}日" if year else f"{day.month}月{day.day}日"
    text = f"{day.day} {_MONTHS_EN[day.month - 1][:3]}"
    return f"{text} {day.year}" if year else text


def _month(period: str, lang: Language, *, year: bool = True) -> str:
    first = dt.date.fromisoformat(f"{period}-01")
    if lang == "zh":
        return f"{first.year}年{first.month}月" if year else f"{first.month}月"
    name = _MONTHS_EN[first.month - 1]
    return f"{name} {first.year}" if year else name[:3]


def _join(lang: Language, *sentences: str) -> str:
    """Sentences one after the other: Chinese puts no space between them."""
    return ("" if lang == "zh" else " ").join(sentences)


def observation_text(observation: Observation, lang: Language) -> str:
    """The sentence(s) of one observation in ``lang``.

    >>> observation_text(Observation("tier_top", {"tier": 3}), "en")
    'You are in the highest tier (tier 3).'
    """
    words = report_words(lang).sentences
    keys, fields = _sentence_parts(observation, lang)
    return _join(lang, *(words[key].format(**fields) for key in keys))


def _figure(values: Mapping[str, ObservationValue], name: str) -> float:
    """A number of an observation (0 when it has none of that name)."""
    value = values.get(name, 0.0)
    if not isinstance(value, int | float):
        raise TypeError(f"observation figure {name!r} is {value!r}, not a number")
    return float(value)


def _direction(change_pct: float) -> str:
    if abs(change_pct) < SAME_WITHIN_PCT:
        return "same"
    return "more" if change_pct > 0 else "less"


def _sentence_parts(observation: Observation, lang: Language) -> tuple[list[str], dict[str, Any]]:
    """The sentence keys of an observation and the formatted figures they are filled with."""
    v, kind = observation.values, observation.kind
    keys = [kind]
    if kind == "estimated":
        fields: dict[str, Any] = {"pct": _pct(_figure(v, "pct"))}
    elif kind in ("yoy", "peers_usage"):
        change = _figure(v, "change_pct")
        keys = [f"{kind}_{_direction(change)}"]
        fields = {"kwh": _num(_figure(v, "kwh_per_day")), "pct": _pct(change)}
        if kind == "yoy":
            fields |= {
                "last": _num(_figure(v, "last_kwh_per_day")),
                "last_month": _month(str(v["last_period"]), lang),
            }
        else:
            fields |= {"median": _num(_figure(v, "median_kwh_per_day")), "homes": v["homes"]}
    elif kind == "base_load":
        below, above = _figure(v, "below_pct"), _figure(v, "above_pct")
        high = below >= above
        share = below if high else above
        extreme = share >= 100
        keys = [f"base_load_{'high' if high else 'low'}{'est' if extreme else ''}"]
        if high and below >= BASE_LOAD_HINT_PCT:
            keys.append("base_load_high_hint")
        fields = {"watts": _num(_figure(v, "watts"), 0), "pct": _pct(share), "homes": v["homes"]}
    elif kind == "peak_share":
        keys = ["peak_share", "peak_saving"] if "saving" in v else keys
        fields = {"pct": _pct(_figure(v, "pct"))}
        if "saving" in v:
            fields["money"] = _money(_figure(v, "saving"), str(v["currency"]))
    elif kind in ("tier_crossing", "tier_safe", "tier_top"):
        date = v.get("date")
        fields = {
            "tier": v["tier"],
            "next": v.get("next_tier", ""),
            "threshold": _num(_figure(v, "threshold_kwh"), 0),
            "kwh": _num(_figure(v, "kwh_per_day")),
            "date": _date(date, lang, year=True) if isinstance(date, dt.date) else "",
        }
    elif kind == "top_day" and isinstance(v["date"], dt.date):
        fields = {
            "date": _date(v["date"], lang),
            "kwh": _num(_figure(v, "kwh")),
            "ratio": _num(_figure(v, "ratio")),
        }
    else:
        raise ValueError(f"unknown observation kind {kind!r}")
    return keys, fields


# --- charts ------------------------------------------------------------------------------------

_FONT: Final = (
    '-apple-system, BlinkMacSystemFont, "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", '
    '"Noto Sans CJK SC", "Noto Sans SC", "Segoe UI", Roboto, Helvetica, Arial, sans-serif'
)
COLORS: Final = {
    "this": "#10896b",
    "last": "#b7d8cd",
    "highlight": "#f08c2e",
    "typical": "#f08c2e",
    "critical": "#9b2335",
    "peak": "#e4572e",
    "flat": "#f3b33d",
    "valley": "#3a8fb7",
    "projected": "#cfe6de",
    "threshold": "#c0392b",
    "grid": "#e7eeeb",
    "text": "#33413d",
}


def _layout(**extra: Any) -> dict[str, Any]:
    axis = {"fixedrange": True, "gridcolor": COLORS["grid"], "zeroline": False, "automargin": True}
    layout: dict[str, Any] = {
        "template": "none",
        "font": {"family": _FONT, "size": 13, "color": COLORS["text"]},
        "margin": {"l": 8, "r": 8, "t": 8, "b": 8},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        "hoverlabel": {"font": {"family": _FONT}},
        "xaxis": dict(axis, showgrid=False),
        "yaxis": dict(axis),
    }
    for key, value in extra.items():
        layout[key] = dict(layout[key], **value) if isinstance(layout.get(key), dict) else value
    return layout


@dataclass(frozen=True)
class Chart:
    """A chart of the page: where it goes (``div_id``, ``height`` [px]) and its plotly figure
    as JSON. The page draws all its charts with one script once the layout is known."""

    div_id: str
    height: int
    figure_json: str


def _unit_axis(unit: str) -> dict[str, Any]:
    return {"title": {"text": unit, "font": {"size": 12}, "standoff": 6}}


def _chart(figure: Any, div_id: str, height: int) -> Chart:
    return Chart(div_id, height, str(pio.to_json(figure, validate=True)))


def charts_script_data(charts: Sequence[Chart]) -> str:
    """The charts as a JavaScript array literal, safe inside a ``<script>`` element (no ``<``
    left to end it early, no line separators that old parsers choke on)."""
    items = ",".join(f'{{"id":{json.dumps(c.div_id)},"figure":{c.figure_json}}}' for c in charts)
    return (
        f"[{items}]".replace("<", "\\u003c")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _monthly_chart(data: ReportData, lang: Language, t: Mapping[str, str]) -> Chart | None:
    monthly = data.monthly
    if monthly["energy_kwh"].drop_nulls().len() < 2:
        return None
    labels = [_month(m, lang, year=False) for m in monthly["month"]]
    unit = t["kwh"]
    last_year = [f"{int(m[:4]) - 1}{m[4:]}" for m in monthly["month"]]
    traces = [
        go.Bar(
            name=t["last_year"],
            x=labels,
            y=monthly["last_year_kwh"].to_list(),
            customdata=[_month(m, lang) for m in last_year],
            marker_color=COLORS["last"],
            hovertemplate=f"%{{customdata}}: %{{y:,.0f}} {unit}<extra></extra>",
        ),
        go.Bar(
            name=t["this_year"],
            x=labels,
            y=monthly["energy_kwh"].to_list(),
            customdata=[_month(m, lang) for m in monthly["month"]],
            marker_color=COLORS["this"],
            hovertemplate=f"%{{customdata}}: %{{y:,.0f}} {unit}<extra></extra>",
        ),
    ]
    if monthly["last_year_kwh"].drop_nulls().len() == 0:
        traces = traces[1:]
    figure = go.Figure(
        traces,
        _layout(
            barmode="group",
            bargap=0.25,
            bargroupgap=0.05,
            xaxis={"tickangle": 0, "tickfont": {"size": 11}},
            yaxis=_unit_axis(unit),
        ),
    )
    return _chart(figure, "chart-monthly", 280)


def _daily_chart(data: ReportData, lang: Language, t: Mapping[str, str]) -> Chart | None:
    daily = data.daily.filter(pl.col("energy_kwh").is_not_null())
    if daily.height < MIN_TYPICAL_DAYS:
        return None
    days = daily["day"].to_list()
    colors = [COLORS["highlight"] if d == data.day else COLORS["this"] for d in days]
    figure = go.Figure(
        go.Bar(
            x=[d.day for d in days],
            y=daily["energy_kwh"].to_list(),
            marker_color=colors,
            customdata=[_date(d, lang) for d in days],
            hovertemplate=f"%{{customdata}}: %{{y:,.1f}} {t['kwh']}<extra></extra>",
        ),
        _layout(
            bargap=0.2, xaxis={"dtick": 5 if len(days) > 10 else 1}, yaxis=_unit_axis(t["kwh"])
        ),
    )
    return _chart(figure, "chart-daily", 220)


def _curve_chart(data: ReportData, lang: Language, t: Mapping[str, str]) -> Chart | None:
    if not data.curve.height or data.day is None:
        return None
    traces = []
    if data.typical.height:
        traces.append(
            go.Scatter(
                name=t["typical"],
                x=data.typical["hour"].to_list(),
                y=data.typical["power_kw"].to_list(),
                mode="lines",
                line={"color": COLORS["typical"], "dash": "dash", "width": 2, "shape": "spline"},
                hovertemplate="%{y:.2f} kW<extra></extra>",
            )
        )
    traces.append(
        go.Scatter(
            name=_date(data.day, lang),
            x=data.curve["hour"].to_list(),
            y=data.curve["power_kw"].to_list(),
            mode="lines",
            line={"color": COLORS["this"], "width": 2},
            fill="tozeroy",
            fillcolor="rgba(16,137,107,0.12)",
            hovertemplate="%{y:.2f} kW<extra></extra>",
        )
    )
    figure = go.Figure(
        traces,
        _layout(
            hovermode="x unified",
            xaxis={
                "range": [0, 24],
                "tickvals": [0, 6, 12, 18, 24],
                "ticktext": [f"{h}:00" for h in range(0, 25, 6)],
            },
            yaxis=dict(_unit_axis(t["power_kw"]), rangemode="tozero"),
        ),
    )
    return _chart(figure, "chart-curve", 280)


def _tou_chart(split: Mapping[str, float], t: Mapping[str, str]) -> Chart | None:
    if not split:
        return None
    classes = [c for c in TOU_CLASSES if c in split]
    figure = go.Figure(
        go.Pie(
            labels=[t[c] for c in classes],
            values=[split[c] for c in classes],
            marker={"colors": [COLORS[c] for c in classes], "line": {"color": "#fff", "width": 2}},
            hole=0.55,
            sort=False,
            direction="clockwise",
            textinfo="label+percent",
            texttemplate="%{label}<br>%{percent:.0%}",
            hovertemplate=f"%{{label}}: %{{value:,.1f}} {t['kwh']}<extra></extra>",
        ),
        _layout(showlegend=False, margin={"t": 4, "b": 4}),
    )
    return _chart(figure, "chart-tou", 240)


def _tier_chart(row: Mapping[str, Any], t: Mapping[str, str]) -> Chart:
    used = float(row["energy_kwh"] or 0.0)
    projected = used
    if row["daily_kwh"] and row["window_end"] and row["as_of"]:
        remaining = max((row["window_end"] - row["as_of"]).days - 1, 0)
        projected = used + float(row["daily_kwh"]) * remaining
    threshold = row["next_threshold_kwh"]
    traces = [
        go.Bar(
            name=t["tier_bar_used"],
            y=[""],
            x=[used],
            orientation="h",
            marker_color=COLORS["this"],
            hovertemplate=f"%{{x:,.0f}} {t['kwh']}<extra></extra>",
        )
    ]
    if projected > used:
        traces.append(
            go.Bar(
                name=t["tier_bar_projected"],
                y=[""],
                x=[projected - used],
                orientation="h",
                marker_color=COLORS["projected"],
                hovertemplate=f"{_num(projected, 0)} {t['kwh']}<extra></extra>",
            )
        )
    top = max(projected, float(threshold or 0.0)) * 1.08 or 1.0
    shapes, annotations = [], []
    if threshold is not None:
        label = t["tier_threshold"].format(next=row["tier"] + 1)
        shapes.append(
            {
                "type": "line",
                "x0": threshold,
                "x1": threshold,
                "y0": -0.6,
                "y1": 0.6,
                "line": {"color": COLORS["threshold"], "width": 2, "dash": "dot"},
            }
        )
        annotations.append(
            {
                "x": threshold,
                "y": 0.62,
                "text": f"{label} {_num(float(threshold), 0)}",
                "showarrow": False,
                "yanchor": "bottom",
                "xanchor": "right" if threshold > top * 0.6 else "left",
                "font": {"size": 12, "color": COLORS["threshold"]},
            }
        )
    figure = go.Figure(
        traces,
        _layout(
            barmode="stack",
            bargap=0.35,
            shapes=shapes,
            annotations=annotations,
            xaxis={"range": [0, top], "showgrid": True, "ticksuffix": f" {t['kwh']}"},
            yaxis={"showticklabels": False, "range": [-0.6, 1.1]},
            legend={"y": -0.25, "yanchor": "top", "traceorder": "normal"},
            margin={"t": 4, "b": 4},
        ),
    )
    return _chart(figure, "chart-tier", 150)


# --- the page ----------------------------------------------------------------------------------


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("meterlake.analytics", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@functools.cache
def _plotly_js() -> Markup:
    return Markup(str(get_plotlyjs()))  # noqa: S704 -- the plotly.js bundle shipped by plotly


def render_report(data: ReportData, *, lang: Language = "zh") -> str:
    """The report page of ``data`` in ``lang`` (``zh`` or ``en``): one self-contained HTML
    document (inline CSS and plotly.js, no network access needed to view it)."""
    if lang not in LANGUAGES:
        raise ReportError(f"language {lang!r} is not available: use one of {', '.join(LANGUAGES)}")
    t = report_words(lang).labels
    tier = _tier_context(data, lang, t)
    charts = {
        "monthly": _monthly_chart(data, lang, t),
        "daily": _daily_chart(data, lang, t),
        "curve": _curve_chart(data, lang, t),
        "tou": _tou_chart(tou_split(data.daily), t),
        "tier": tier["chart"] if tier else None,
    }
    drawn = [c for c in charts.values() if c is not None]
    context: dict[str, Any] = {
        "lang": lang,
        "t": t,
        "data": data,
        # the bundle only when there is something to draw
        "plotly_js": _plotly_js() if drawn else None,
        "charts_data": Markup(charts_script_data(drawn)),  # noqa: S704 -- escaped JSON
        "charts": charts,
        "month": _month(data.period, lang),
        "observations": [observation_text(o, lang) for o in observations(data)],
        "kpis": _kpis(data, lang, t),
        "no_last_year": data.monthly["last_year_kwh"].drop_nulls().len() == 0,
        "partial_months": _partial_months(data, lang, t),
        "days": data.daily.filter(pl.col("energy_kwh").is_not_null()).height,
        "curve_note": _curve_note(data, lang, t),
        "tou_rows": _tou_rows(data, t),
        "tier": tier,
        "bill": _bill_context(data, lang, t),
        "alerts": _alert_rows(data, lang, t),
    }
    return _environment().get_template(_TEMPLATE).render(context)


def _kpis(data: ReportData, lang: Language, t: Mapping[str, str]) -> list[dict[str, str]]:
    kpis = []
    days = data.daily.filter(pl.col("energy_kwh").is_not_null())
    if days.height:
        total = float(days["energy_kwh"].sum())
        month_days = (data.period_end - data.period_start).days
        note = t["kpi_days"].format(days=days.height) if days.height < month_days else ""
        kpis.append({"label": t["kpi_energy"], "value": f"{_num(total)} {t['kwh']}", "note": note})
    yoy = _year_on_year(data)
    if yoy is not None:
        change = _figure(yoy.values, "change_pct")
        same = abs(change) < SAME_WITHIN_PCT
        kpis.append(
            {
                "label": t["kpi_yoy"],
                "value": t["kpi_same"] if same else f"{'+' if change > 0 else '-'}{_pct(change)}",
                "note": _month(str(yoy.values["last_period"]), lang),
                "tone": "up" if change >= SAME_WITHIN_PCT else "",
            }
        )
    if data.bill.height:
        bill = data.bill.row(0, named=True)
        kpis.append(
            {
                "label": t["kpi_bill"],
                "value": _money(bill["total_amount"], bill["currency"]),
                "note": "",
            }
        )
    if data.tier.height:
        tier = data.tier.row(0, named=True)
        share = tier["threshold_share"]
        pct = f"{100 * share:.0f}%" if share is not None else "—"
        kpis.append(
            {
                "label": t["kpi_tier"],
                "value": t["kpi_tier_value"].format(tier=tier["tier"], pct=pct),
                "note": "",
            }
        )
    for kpi in kpis:
        kpi.setdefault("tone", "")
    return kpis


def _partial_months(data: ReportData, lang: Language, t: Mapping[str, str]) -> str:
    """A note naming the chart's months that have fewer days of data than days."""
    items = []
    for month, days in data.monthly.drop_nulls("days").select("month", "days").iter_rows():
        first = dt.date.fromisoformat(f"{month}-01")
        if days < (add_months(first, 1) - first).days:
            items.append(t["month_days"].format(month=_month(month, lang), days=days))
    separator = "、" if lang == "zh" else ", "
    return t["partial_months"].format(months=separator.join(items)) if items else ""


def _curve_note(data: ReportData, lang: Language, t: Mapping[str, str]) -> dict[str, str]:
    notes: dict[str, str] = {"day": "", "typical": "", "missing": ""}
    if data.day is None:
        notes["missing"] = t["no_curve_month"]
        return notes
    row = data.daily.filter(pl.col("day") == data.day)
    kwh = row["energy_kwh"][0] if row.height else None
    if kwh is not None:
        key = "curve_default" if data.day_is_default else "curve_chosen"
        notes["day"] = t[key].format(date=_date(data.day, lang, year=True), kwh=_num(kwh))
    if not data.curve.height:
        notes["missing"] = t["no_curve"].format(date=_date(data.day, lang, year=True))
    elif data.typical_source is None:
        notes["typical"] = t["no_typical"]
    else:
        notes["typical"] = t[
            f"curve_typical_{'profile' if data.typical_source == 'profile' else 'mean'}"
        ]
    return notes


def _tou_rows(data: ReportData, t: Mapping[str, str]) -> list[dict[str, str]]:
    split = tou_split(data.daily)
    total = sum(split.values())
    return [
        {
            "label": t[c],
            "kwh": f"{_num(split[c])} {t['kwh']}",
            "pct": f"{100 * split[c] / total:.0f}%",
            "color": COLORS[c],
        }
        for c in TOU_CLASSES
        if c in split
    ]


def _tier_context(data: ReportData, lang: Language, t: Mapping[str, str]) -> dict[str, Any] | None:
    if not data.tier.height:
        return None
    row = data.tier.row(0, named=True)
    title = t["sec_tier_annual"] if row["tier_reset"] == "annual" else t["sec_tier"]
    lines = [t["tier_used"].format(kwh=_num(float(row["energy_kwh"] or 0.0)), tier=row["tier"])]
    threshold = row["next_threshold_kwh"]
    nxt = row["tier"] + 1
    if threshold is None:
        lines.append(t["tier_top"])
    else:
        share = row["threshold_share"]
        if share is None:
            share = (row["energy_kwh"] or 0.0) / threshold if threshold else 0.0
        left = max(threshold - (row["energy_kwh"] or 0.0), 0.0)
        lines.append(
            t["tier_share"].format(
                pct=f"{100 * share:.0f}%", next=nxt, threshold=_num(threshold, 0), left=_num(left)
            )
        )
        if row["projected_crossing"] is not None and row["daily_kwh"]:
            lines.append(
                t["tier_crossing"].format(
                    kwh=_num(row["daily_kwh"]),
                    date=_date(row["projected_crossing"], lang, year=True),
                    next=nxt,
                )
            )
        else:
            lines.append(t["tier_safe"].format(next=nxt))
    window = ""
    if row["window_start"] and row["window_end"]:
        window = t["tier_window"].format(
            start=_date(row["window_start"], lang, year=True),
            end=_date(row["window_end"] - dt.timedelta(days=1), lang, year=True),
            as_of=_date(row["as_of"], lang, year=True),
        )
    return {"title": title, "lines": lines, "window": window, "chart": _tier_chart(row, t)}


def _bill_context(data: ReportData, lang: Language, t: Mapping[str, str]) -> dict[str, Any] | None:
    if not data.bill.height:
        return None
    bill = data.bill.row(0, named=True)
    currency = bill["currency"]
    units = report_words(lang).units
    rows = []
    for line in data.bill_lines.iter_rows(named=True):
        tag = {"carry": t["bill_carry"], "adjustment": t["bill_adjustment"]}.get(line["kind"], "")
        quantity, unit = line["quantity"], line["unit"] or ""
        if quantity is not None:
            digits = 0 if float(quantity).is_integer() else 2
            quantity = f"{_num(quantity, digits)} {units.get(unit, unit)}".rstrip()
        rows.append(
            {
                "item": _line_label(line["code"], line["description"], lang),
                "tag": tag,
                "quantity": quantity or "",
                "rate": "" if line["rate"] is None else _rate(line["rate"]),
                "amount": "" if line["amount"] is None else _money(line["amount"], currency),
                "kind": line["kind"] or "",
            }
        )
    notes = []
    if bill["period_start"] and bill["period_end"] and bill["billed_import_kwh"] is not None:
        notes.append(
            t["bill_energy"].format(
                kwh=_num(bill["billed_import_kwh"]),
                start=_date(bill["period_start"], lang),
                end=_date(bill["period_end"] - dt.timedelta(days=1), lang),
            )
        )
    if (bill["estimated_share"] or 0.0) >= 0.005:  # shown as at least 1 %
        notes.append(t["bill_estimated"].format(pct=f"{100 * bill['estimated_share']:.0f}%"))
    if (bill["version"] or 1) > 1 and bill["adjustment_amount"] is not None:
        notes.append(
            t["bill_correction"].format(
                version=bill["version"], amount=_money(bill["adjustment_amount"], currency)
            )
        )
    held = ""
    if bill["status"] == "held":
        reasons = [r for r in (bill["hold_reasons"] or []) if r]
        separator = "；" if lang == "zh" else "; "
        held = (
            t["bill_held"].format(reasons=separator.join(reasons))
            if reasons
            else t["bill_held_plain"]
        )
    elif bill.get("released_at") is not None:
        notes.append(t["bill_released_review"])
    return {
        "total": _money(bill["total_amount"], currency),
        "rows": rows,
        "notes": notes,
        "held": held,
    }


_ENERGY_CODE: Final = re.compile(
    r"^energy(?:_tier(?P<tier>\d+))?(?:_(?P<tou>critical(?:_peak)?|peak|flat|valley))?$"
)


def _line_label(code: str | None, description: str | None, lang: Language) -> str:
    """A bill line's name: energy lines in the page's words (the engine describes them in
    English), other lines by the tariff's own description."""
    match = _ENERGY_CODE.match(code or "")
    if match is None:
        return description or code or ""
    labels = report_words(lang).labels
    tier, tou = match["tier"], (match["tou"] or "").removesuffix("_peak") or None
    key = "line_energy" + ("_tier" if tier else "") + ("_tou" if tou else "")
    return labels[key].format(tier=tier, tou=labels[tou] if tou else "")


def _rate(rate: Decimal) -> str:
    text = f"{rate:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _alert_rows(data: ReportData, lang: Language, t: Mapping[str, str]) -> list[dict[str, str]]:
    zone = zoneinfo.ZoneInfo(data.timezone)
    rows = []
    for alert in data.alerts.iter_rows(named=True):
        severity = (alert["severity"] or "info").lower()
        since = alert["raised_at"].astimezone(zone)
        when = f"{_date(since.date(), lang, year=True)} {since:%H:%M}"
        rows.append(
            {
                "severity": severity if severity in ("critical", "warning") else "info",
                "severity_label": t.get(f"severity_{severity}", severity),
                "message": alert["message"] or alert["rule"] or "",
                "since": t["alert_since"].format(ts=when),
            }
        )
    return rows


def write_report(
    root: Path,
    meter_id: str,
    period: str,
    out: Path,
    *,
    lang: Language = "zh",
    day: dt.date | None = None,
) -> Path:
    """Gather, render and write one meter's report for ``period`` to ``out``; return ``out``.

    Raises
    ------
    ReportError
        See :func:`gather_report`; or ``lang`` is not one of :data:`LANGUAGES`.
    """
    if lang not in LANGUAGES:
        raise ReportError(f"language {lang!r} is not available: use one of {', '.join(LANGUAGES)}")
    page = render_report(gather_report(root, meter_id, period, day=day), lang=lang)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
