"""Daily load curves and load statistics per meter and local day, from current intervals.

One row per meter and local day (the meter's time zone: 96 quarter hours, 92 or 100 on a day a
DST zone changes its clocks), computed in one group-by over the intervals:

energy_kwh, export_kwh
    Import and export of the day [kWh] (null when no interval of the day has a value).
peak_kw, min_kw, mean_kw
    Highest, lowest and mean interval demand [kW]: an interval's import over its length.
load_factor
    ``mean_kw / peak_kw`` (null when the peak is 0).
peak_valley_diff_kw, peak_valley_ratio
    ``peak_kw - min_kw`` and that over ``peak_kw`` (峰谷差率).
base_load_kw
    The day's 10th-percentile demand [kW]: what runs all the time (fridge, standby), robust to a
    single quiet interval.
energy_peak_kwh, energy_flat_kwh, energy_valley_kwh, energy_critical_kwh
    Import per class of the meter's tariff periods, when the intervals carry a ``tou_class``
    (see :data:`~meterlake.config.schemas.TOU_CLASSES`; the tariffs stage adds it); null
    otherwise.
intervals, intervals_estimated, intervals_missing, actual_share
    VEE's figures: rows of the day, how many were estimated or missing, the share ``actual``.
curve_kw
    The day's demand curve [kW], one value per interval in time order (null where missing).

>>> import datetime as dt
>>> t = dt.datetime(2026, 10, 1, 16, tzinfo=dt.UTC)  # local midnight of 2 October, UTC+8
>>> q = dt.timedelta(minutes=15)
>>> rows = pl.LazyFrame({
...     "meter_id": ["m1"] * 4, "interval_start": [t, t + q, t + 2 * q, t + 3 * q],
...     "interval_minutes": [15] * 4, "energy_import_kwh": [0.1, 0.5, None, 0.1],
...     "energy_export_kwh": [0.0] * 4,
...     "status": ["actual", "actual", "missing", "estimated"]})
>>> meters = pl.DataFrame({"meter_id": ["m1"], "timezone": ["Asia/Shanghai"]})
>>> day = daily_usage(rows, meters).collect().row(0, named=True)
>>> day["day"], day["energy_kwh"], day["peak_kw"], day["curve_kw"]
(datetime.date(2026, 10, 2), 0.7, 2.0, [0.4, 2.0, None, 0.4])
>>> round(day["load_factor"], 3), day["intervals_missing"], day["actual_share"]
(0.467, 1, 0.5)
"""

from __future__ import annotations

import datetime as dt
from typing import Final

import polars as pl

from meterlake.config.localtime import local_date
from meterlake.config.schemas import DAILY_USAGE, TOU_CLASSES, IntervalStatus

BASE_LOAD_QUANTILE: Final = 0.1
STAT_COLUMNS: Final = tuple(
    c for c in DAILY_USAGE.schema if c not in ("profile", "run_id", "computed_at")
)
"""The columns :func:`daily_usage` computes (the rest: clustering and the run)."""


def daily_usage(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    *,
    default_timezone: str = "Asia/Shanghai",
    span: tuple[dt.datetime, dt.datetime] | None = None,
) -> pl.LazyFrame:
    """One row per meter and local day: the figures of the module docstring.

    Parameters
    ----------
    intervals
        Current intervals: ``meter_id, interval_start, interval_minutes, energy_import_kwh,
        energy_export_kwh, status`` and optionally ``tou_class`` (one of :data:`TOU_CLASSES`).
    meters
        ``meter_id, timezone`` (null: ``default_timezone``); meters not listed are in
        ``default_timezone`` too.
    span
        The UTC instants the intervals lie in, if known: zones with one offset in it (no DST
        change) then place intervals on their days without a conversion per row.
    """
    zones = meters.select(
        "meter_id", pl.col("timezone").cast(pl.String).fill_null(default_timezone)
    )
    names = sorted(set(zones["timezone"].unique()) | {default_timezone})
    if names == [default_timezone]:
        located = intervals.with_columns(timezone=pl.lit(default_timezone))
    else:
        located = intervals.join(zones.lazy(), on="meter_id", how="left").with_columns(
            pl.col("timezone").fill_null(default_timezone)
        )
    has_class = "tou_class" in intervals.collect_schema().names()
    imported = pl.col("energy_import_kwh")
    kw = imported * 60.0 / pl.col("interval_minutes")
    status = pl.col("status")
    valued = imported.is_not_null().sum()
    classed = pl.col("tou_class").is_not_null().any() if has_class else pl.lit(value=False)
    split = [
        pl.when((valued > 0) & classed)
        .then(imported.filter(pl.col("tou_class") == name).sum())
        .alias(f"energy_{name}_kwh")
        if has_class
        else pl.lit(None, dtype=pl.Float64).alias(f"energy_{name}_kwh")
        for name in TOU_CLASSES
    ]
    daily = (
        located.with_columns(
            day=local_date(pl.col("interval_start"), pl.col("timezone"), names, span), kw=kw
        )
        .group_by("meter_id", "day")
        .agg(
            pl.col("timezone").first(),
            pl.col("interval_minutes").first(),
            pl.when(valued > 0).then(imported.sum()).alias("energy_kwh"),
            pl.when(pl.col("energy_export_kwh").is_not_null().sum() > 0)
            .then(pl.col("energy_export_kwh").sum())
            .alias("export_kwh"),
            pl.col("kw").max().alias("peak_kw"),
            pl.col("kw").min().alias("min_kw"),
            pl.col("kw").mean().alias("mean_kw"),
            *split,
            pl.len().alias("intervals"),
            (status == IntervalStatus.ESTIMATED.value).sum().alias("intervals_estimated"),
            (status == IntervalStatus.MISSING.value).sum().alias("intervals_missing"),
            (status == IntervalStatus.ACTUAL.value).mean().alias("actual_share"),
            pl.col("kw").sort_by("interval_start").alias("curve_kw"),
        )
    )
    peak = pl.col("peak_kw")
    return daily.with_columns(
        # on the day's list, not in the group-by: a quantile per group is many times slower
        pl.col("curve_kw")
        .list.eval(pl.element().quantile(BASE_LOAD_QUANTILE, "lower"))
        .list.first()
        .alias("base_load_kw"),
        pl.when(peak > 0).then(pl.col("mean_kw") / peak).alias("load_factor"),
        (peak - pl.col("min_kw")).alias("peak_valley_diff_kw"),
        pl.when(peak > 0).then((peak - pl.col("min_kw")) / peak).alias("peak_valley_ratio"),
    ).select([pl.col(c).cast(DAILY_USAGE.schema[c]) for c in STAT_COLUMNS])
