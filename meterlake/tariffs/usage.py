"""What a meter's tariff says about its usage: the class of each interval's TOU period
(peak / flat / valley / critical) and the meter's progress through its tiers.

Classes of periods
    Tariffs name their periods freely (``peak``, ``valley``, ``summer_on_peak``,
    ``super_off_peak``, ``critical``, ``尖峰`` ...). :func:`tou_class_of` maps a name to the class
    the customer app shows: ``critical`` (critical or sharp peak, 尖峰), ``valley`` (off-peak,
    super off-peak, 谷), ``flat`` (mid-peak, shoulder, 平, and the one period of a tariff without
    time of use), ``peak`` (峰, on-peak); a name matching none is ``flat``. A tariff without
    time of use gives no class (its meters' split stays null).
Tier progress
    Import counted in the meter's current tier window (tier year, month or billing cycle, as the
    tariff's tiers reset), the tier it is in, the next threshold and, from the recent daily
    import, the day it is projected to cross it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Final

import polars as pl

from meterlake.config.months import add_months
from meterlake.config.schemas import TOU_CLASSES
from meterlake.tariffs.engine import (
    STEP_MINUTES,
    _local_steps,
    _meter_combos,
    _window_start,
    step_since,
)
from meterlake.tariffs.model import Tariff

RECENT_DAYS: Final = 14
"""Days of recent import the tier-crossing projection averages."""
_CLASS_WORDS: Final = (
    ("critical", ("critical", "sharp", "尖")),
    ("valley", ("super_off", "off_peak", "offpeak", "off-peak", "valley", "谷")),
    ("flat", ("mid", "shoulder", "partial", "flat", "平")),
    ("peak", ("peak", "峰")),
)


def tou_class_of(period: str) -> str:
    """The class of a TOU period name.

    >>> [tou_class_of(p) for p in ("peak", "summer_off_peak", "尖峰", "mid_peak", "all")]
    ['peak', 'valley', 'critical', 'flat', 'flat']
    """
    name = period.lower()
    for cls, words in _CLASS_WORDS:
        if any(word in name for word in words):
            return cls
    return "flat"


def with_tou_class(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    tariffs: Mapping[str, Tariff],
    start: dt.datetime,
    end: dt.datetime,
) -> pl.LazyFrame:
    """``intervals`` with ``tou_class``: the class of the TOU period each interval starts in,
    under its meter's tariff (null for meters without a loaded tariff or outside ``[start,
    end)``).

    One small table per tariff gives every 5-minute step of the range its class; one gather
    classes the intervals (a join on ``meter_id`` first only when meters are on several
    tariffs).
    """
    # steps start on a 5-minute boundary, so an interval falls in the step it starts in
    t0 = dt.datetime.fromtimestamp(
        start.timestamp() // (STEP_MINUTES * 60) * STEP_MINUTES * 60, tz=dt.UTC
    )
    n_steps = max(1, math.ceil((end - t0) / dt.timedelta(minutes=STEP_MINUTES)))
    known = meters.filter(pl.col("tariff_id").is_in(list(tariffs))).select("meter_id", "tariff_id")
    used = sorted(known["tariff_id"].unique())
    if not used:
        return intervals.with_columns(tou_class=pl.lit(None, dtype=pl.String))
    classes = pl.Enum(TOU_CLASSES)
    tables = [_step_classes(tariffs[tariff_id], t0, n_steps) for tariff_id in used]
    lookup = pl.concat(tables).cast(classes)
    step = step_since(t0)
    inside = pl.col("interval_start").is_between(start, end, closed="left")
    if len(used) == 1:
        on_tariff = pl.col("meter_id").is_in(known["meter_id"].to_list())
        index = pl.when(inside & on_tariff).then(step)
        return intervals.with_columns(tou_class=pl.lit(lookup).gather(index).cast(pl.String))
    codes = known.with_columns(
        tariff_idx=pl.col("tariff_id").replace_strict(used, list(range(len(used))))
    ).select("meter_id", pl.col("tariff_idx").cast(pl.Int64))
    index = pl.when(inside).then(pl.col("tariff_idx") * n_steps + step)
    return (
        intervals.join(codes.lazy(), on="meter_id", how="left")
        .with_columns(tou_class=pl.lit(lookup).gather(index).cast(pl.String))
        .drop("tariff_idx")
    )


def _step_classes(tariff: Tariff, t0: dt.datetime, n_steps: int) -> pl.Series:
    """The class of every 5-minute step from ``t0`` under ``tariff``: all null for a tariff
    without time of use (one period), whose split would say nothing."""
    if all(len(v.periods) <= 1 for v in tariff.versions):
        return pl.Series("tou", [None] * n_steps, dtype=pl.String)
    steps = _local_steps(tariff, t0, n_steps).sort("step")
    names = steps["tou"].unique()
    mapping = {name: tou_class_of(name) for name in names}
    return steps["tou"].replace_strict(mapping, return_dtype=pl.String)


def tier_windows(
    meters: pl.DataFrame, tariffs: Mapping[str, Tariff], as_of: dt.date
) -> pl.DataFrame:
    """Each tiered meter's tier window on local day ``as_of``: ``meter_id, tariff_id,
    tier_reset, window_start, window_end`` (local dates, end exclusive) and its
    ``thresholds`` [kWh] (the tier bounds in force on ``as_of``).

    ``meters``: ``meter_id, tariff_id`` and optionally ``billing_day`` and ``tier_year_start``
    (``MM-DD``). Meters without a loaded tariff, or whose tariff has no tiers, are left out.
    """
    # the bill engine's parsing and checks of billing day and tier-year start, per combo
    loaded = meters.filter(pl.col("tariff_id").is_in(list(tariffs)))
    params = _meter_combos(loaded, tariffs)
    keys = ["tariff_id", "billing_day", "ty_month", "ty_day"]
    rows = []
    # one window per combination of tariff, billing day and tier-year start, not per meter
    for combo in params.select(keys).unique().iter_rows(named=True):
        tariff = tariffs[combo["tariff_id"]]
        version = tariff.versions[tariff.version_at(as_of)]
        bounds = sorted({b for per in version.energy.tiers_kwh.values() for b in per})
        if not bounds:
            continue
        cycle_start = as_of.replace(day=combo["billing_day"])
        if as_of.day < combo["billing_day"]:
            cycle_start = add_months(cycle_start, -1)
        start = _window_start(version, as_of, cycle_start, combo["ty_month"], combo["ty_day"])
        reset = version.energy.tier_reset
        end = add_months(start, 12 if reset == "annual" else 1)
        rows.append(
            {
                **combo,
                "tier_reset": reset,
                "window_start": start,
                "window_end": end,
                "thresholds": bounds,
            }
        )
    schema = pl.Schema(
        {
            "tariff_id": pl.String(),
            "billing_day": pl.Int64(),
            "ty_month": pl.Int64(),
            "ty_day": pl.Int64(),
            "tier_reset": pl.String(),
            "window_start": pl.Date(),
            "window_end": pl.Date(),
            "thresholds": pl.List(pl.Float64()),
        }
    )
    windows = pl.DataFrame(rows, schema=schema)
    return params.join(windows, on=keys).select(
        "meter_id", "tariff_id", "tier_reset", "window_start", "window_end", "thresholds"
    )


def tier_progress(
    daily: pl.DataFrame, windows: pl.DataFrame, as_of: dt.date, *, recent_days: int = RECENT_DAYS
) -> pl.DataFrame:
    """Tier progress per meter on ``as_of`` (the columns of the ``tier_progress`` table but
    the run's).

    Parameters
    ----------
    daily
        ``meter_id, day, energy_kwh``: import per local day [kWh], covering at least each
        meter's window up to ``as_of`` (days absent count 0).
    windows
        From :func:`tier_windows`.

    >>> w = pl.DataFrame({"meter_id": ["m1"], "tariff_id": ["t"], "tier_reset": ["annual"],
    ...     "window_start": [dt.date(2026, 1, 1)], "window_end": [dt.date(2027, 1, 1)],
    ...     "thresholds": [[2760.0, 4800.0]]})
    >>> d = pl.DataFrame({"meter_id": ["m1"] * 2, "energy_kwh": [2600.0, 10.0],
    ...     "day": [dt.date(2026, 1, 5), dt.date(2026, 11, 30)]})
    >>> row = tier_progress(d, w, dt.date(2026, 11, 30)).row(0, named=True)
    >>> row["tier"], row["next_threshold_kwh"], round(row["threshold_share"], 3)
    (1, 2760.0, 0.946)
    >>> row["daily_kwh"], row["days_to_crossing"], row["projected_crossing"]
    (0.7142857142857143, 210, None)
    """
    recent_from = as_of - dt.timedelta(days=recent_days - 1)
    counted = (
        daily.join(windows.select("meter_id", "window_start"), on="meter_id")
        .filter(pl.col("day").is_between(pl.col("window_start"), pl.lit(as_of)))
        .group_by("meter_id")
        .agg(
            pl.col("energy_kwh").sum().alias("energy_kwh"),
            pl.col("energy_kwh")
            .filter(pl.col("day") >= pl.max_horizontal(pl.lit(recent_from), "window_start"))
            .sum()
            .alias("recent_kwh"),
        )
    )
    recent_span = (
        pl.lit(as_of) - pl.max_horizontal(pl.lit(recent_from), pl.col("window_start"))
    ).dt.total_days() + 1
    energy = pl.col("energy_kwh")
    frame = windows.join(counted, on="meter_id", how="left").with_columns(
        pl.col("energy_kwh", "recent_kwh").fill_null(0.0),
        daily_kwh=pl.col("recent_kwh").fill_null(0.0) / recent_span,
    )
    bounds = (
        frame.select("meter_id", "energy_kwh", "thresholds")
        .explode("thresholds")
        .group_by("meter_id")
        .agg(
            (pl.col("thresholds") <= energy).sum().alias("passed"),
            pl.col("thresholds").filter(pl.col("thresholds") > energy).min().alias("next"),
        )
    )
    frame = frame.join(bounds, on="meter_id").with_columns(
        tier=pl.col("passed") + 1, next_threshold_kwh=pl.col("next")
    )
    days_to = pl.when(pl.col("daily_kwh") > 0).then(
        ((pl.col("next_threshold_kwh") - energy) / pl.col("daily_kwh")).ceil()
    )
    crossing = pl.lit(as_of) + pl.duration(days=days_to.cast(pl.Int64))
    return frame.select(
        "meter_id",
        pl.lit(as_of).alias("as_of"),
        "tariff_id",
        "tier_reset",
        "window_start",
        "window_end",
        "energy_kwh",
        pl.col("tier").cast(pl.Int16),
        "next_threshold_kwh",
        (energy / pl.col("next_threshold_kwh")).alias("threshold_share"),
        "daily_kwh",
        pl.when(crossing < pl.col("window_end")).then(crossing).alias("projected_crossing"),
        days_to.cast(pl.Int32).alias("days_to_crossing"),
    )
