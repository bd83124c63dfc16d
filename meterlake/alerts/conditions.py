"""What is true now: one function per rule kind, from lake data to the conditions that hold.

A condition is one row: the ``meter_id`` it is about (``feeder:<name>`` for an outage), a
``message`` in plain language with its numbers and units, and ``values_json``, the figures behind
the message. The core functions take lazy frames and the rule and return a lazy frame of
:data:`CONDITION_SCHEMA`; they do no I/O and read no clock (``now`` is given). :func:`evaluate`
is the edge: it scans the bounded part of the lake a rule needs and calls the core.

========================  =====================================================================
kind                      reads
========================  =====================================================================
``tier_threshold``        ``tier_progress``: each meter's latest row (``tier_progress_current``)
``surge``, ``anomaly``    ``anomaly_scores``: each day's latest run (the ``anomalies`` view)
``meter_offline``         ``readings`` of ``lookback`` (any quantity), ``meters_current``
``outage``                ``readings`` of the last ``minutes``, ``meters_current`` (``feeder``)
``prepaid_low``           ``readings`` (``balance``) of ``lookback``, ``meters_current``
``data_quality``          ``intervals_current`` of the last ``days``
========================  =====================================================================
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import polars as pl

from meterlake.alerts.rules import (
    AlertRule,
    AnomalyRule,
    DataQualityRule,
    MeterOfflineRule,
    OutageRule,
    PrepaidLowRule,
    SurgeRule,
    TierThresholdRule,
    format_timedelta,
)
from meterlake.config.schemas import (
    ANOMALY_SCORES,
    READINGS,
    TIER_PROGRESS,
    IntervalStatus,
    TableSpec,
)
from meterlake.storage.scan import (
    latest_daily,
    latest_rows,
    scan,
    scan_current_intervals,
    scan_current_meters,
    scan_days,
)

CONDITION_SCHEMA: Final = pl.Schema(
    {
        "rule": pl.String(),
        "meter_id": pl.String(),
        "message": pl.String(),
        "values_json": pl.String(),
    }
)
VOLTAGE_QUANTITIES: Final = ("voltage_v", "voltage_l1_v", "voltage_l2_v", "voltage_l3_v")
"""The quantities an outage rule's ``voltage_below`` is compared with (any phase low: down)."""
FEEDER_PREFIX: Final = "feeder:"
_DAY: Final = dt.timedelta(days=1)
UTC_MINUTE: Final = "%Y-%m-%d %H:%M UTC"
"""How a message writes a time (``2026-10-01 12:05 UTC``): strftime/``dt.to_string`` format."""


# --- message helpers ------------------------------------------------------------------------


def number_text(expr: pl.Expr, decimals: int = 1) -> pl.Expr:
    """A number as a message shows it: rounded, without trailing zeros.

    >>> pl.select(number_text(pl.lit(2760.0)), number_text(pl.lit(8.126), 2).alias("b")).row(0)
    ('2760', '8.13')
    """
    return (
        expr.round(decimals)
        .cast(pl.String)
        .str.replace(r"(\.\d*?)0+$", "${1}")
        .str.replace(r"\.$", "")
    )


def percent_text(share: pl.Expr) -> pl.Expr:
    """A share [1] as a whole percentage: ``0.906`` -> ``91%``."""
    return pl.format("{}%", (share * 100).round(0).cast(pl.Int64))


def elapsed_text(minutes: pl.Expr) -> pl.Expr:
    """A number of minutes as ``2 d 3 h``, ``2 h 15 min``, ``1 h`` or ``45 min``.

    >>> pl.select(elapsed_text(pl.lit(135)), elapsed_text(pl.lit(60)).alias("b")).row(0)
    ('2 h 15 min', '1 h')
    """
    days, hours, rest = minutes // 1440, (minutes % 1440) // 60, minutes % 60

    def part(value: pl.Expr, unit: str) -> pl.Expr:
        return pl.when(value > 0).then(pl.format("{} " + unit, value))

    parts = pl.concat_str(
        [part(days, "d"), part(hours, "h"), pl.when(days == 0).then(part(rest, "min"))],
        separator=" ",
        ignore_nulls=True,
    )
    return pl.when(parts == "").then(pl.lit("0 min")).otherwise(parts)


def _values(*columns: str | pl.Expr) -> pl.Expr:
    return pl.struct(*columns).struct.json_encode().alias("values_json")


def _conditions(frame: pl.LazyFrame, message: pl.Expr, values: pl.Expr) -> pl.LazyFrame:
    """The condition columns (``rule`` is added by :func:`evaluate`)."""
    return frame.select(pl.col("meter_id"), message.alias("message"), values)


def _days_text(days: int) -> str:
    return "day" if days == 1 else f"{days} days"


def _whole_days(span: dt.timedelta) -> int:
    return max(1, math.ceil(span / _DAY))


# --- the core: one function per kind ---------------------------------------------------------


def tier_threshold_conditions(
    progress: pl.LazyFrame, rule: TierThresholdRule, today: dt.date
) -> pl.LazyFrame:
    """Meters near their next tier threshold, from ``tier_progress`` rows.

    Each meter's latest row (by ``as_of``, then ``computed_at``) of the last ``rule.lookback``
    counts; it holds when ``threshold_share >= at_share`` or ``days_to_crossing <= within_days``.
    A meter in its last tier (no ``next_threshold_kwh``) never holds.
    """
    first = today - dt.timedelta(days=_whole_days(rule.lookback))
    latest = latest_rows(
        progress.filter(pl.col("as_of").is_between(first, today + _DAY)),
        ["meter_id"],
        ["as_of", "computed_at", "run_id"],
    ).with_columns(
        pl.coalesce("threshold_share", pl.col("energy_kwh") / pl.col("next_threshold_kwh")).alias(
            "threshold_share"
        )
    )
    near = pl.lit(value=False)
    if rule.at_share is not None:
        near = near | (pl.col("threshold_share") >= rule.at_share).fill_null(value=False)
    if rule.within_days is not None:
        near = near | (pl.col("days_to_crossing") <= rule.within_days).fill_null(value=False)
    start, end = pl.col("window_start"), pl.col("window_end")
    window = (
        pl.when((start.dt.month() == 1) & (start.dt.day() == 1) & (start.dt.offset_by("1y") == end))
        .then(start.dt.year().cast(pl.String))
        .when((start.dt.day() == 1) & (start.dt.offset_by("1mo") == end))
        .then(start.dt.strftime("%Y-%m"))
        .when(start.is_not_null() & end.is_not_null())
        .then(pl.format("{} to {}", start, end - _DAY))
        .otherwise(pl.lit("the current tier window"))
    )
    daily = pl.col("daily_kwh")
    rate = number_text(daily)
    crossing = (
        pl.when(daily.is_null())
        .then(pl.lit(""))
        .when(pl.col("projected_crossing").is_not_null())
        .then(pl.format("; at {} kWh/day it crosses on {}", rate, "projected_crossing"))
        .otherwise(pl.format("; at {} kWh/day it does not cross this window", rate))
    )
    message = pl.format(
        "used {} of the {} kWh tier-{} allowance for {}{}",
        percent_text(pl.col("threshold_share")),
        number_text(pl.col("next_threshold_kwh")),
        pl.col("tier"),
        window,
        crossing,
    )
    values = _values(
        "as_of",
        "tariff_id",
        "tier",
        "energy_kwh",
        "next_threshold_kwh",
        "threshold_share",
        "daily_kwh",
        "projected_crossing",
        "days_to_crossing",
        "window_start",
        "window_end",
    )
    return _conditions(
        latest.filter(pl.col("next_threshold_kwh").is_not_null() & near), message, values
    )


def surge_conditions(scores: pl.LazyFrame, rule: SurgeRule, today: dt.date) -> pl.LazyFrame:
    """Meters whose most recent scored day of the last ``rule.lookback`` is a ``surge`` with a
    score of at least ``rule.min_score``; a newer day without one clears it."""
    first = today - dt.timedelta(days=_whole_days(rule.lookback))
    days = latest_daily(scores.filter(pl.col("day").is_between(first, today + _DAY)))
    last_day = latest_rows(days, ["meter_id"], ["day"])
    hit = last_day.filter(
        pl.col("kinds").list.contains("surge") & (pl.col("score") >= rule.min_score)
    )
    energy, baseline = pl.col("energy_kwh"), pl.col("baseline_kwh")
    message = (
        pl.when(baseline > 0)
        .then(
            pl.format(
                "usage surge on {}: {} kWh, {}x the usual {} kWh (anomaly score {})",
                "day",
                number_text(energy),
                number_text(energy / baseline),
                number_text(baseline),
                number_text(pl.col("score"), 2),
            )
        )
        .otherwise(
            pl.format(
                "usage surge on {}: {} kWh (anomaly score {})",
                "day",
                number_text(energy),
                number_text(pl.col("score"), 2),
            )
        )
    )
    values = _values("day", "score", "energy_kwh", "baseline_kwh", "robust_z", "kinds", "reasons")
    return _conditions(hit, message, values)


def anomaly_conditions(scores: pl.LazyFrame, rule: AnomalyRule, today: dt.date) -> pl.LazyFrame:
    """Meters with a day in the last ``rule.lookback`` scored at least ``rule.min_score`` and,
    when ``rule.kinds`` is given, with one of those kinds; the latest such day is reported."""
    lookback_days = _whole_days(rule.lookback)
    first = today - dt.timedelta(days=lookback_days)
    days = latest_daily(scores.filter(pl.col("day").is_between(first, today + _DAY)))
    kinds = pl.col("kinds")
    if rule.kinds is not None:
        kinds = kinds.list.eval(pl.element().filter(pl.element().is_in(list(rule.kinds))))
    flagged = days.with_columns(kinds.alias("matched")).filter(
        (pl.col("score") >= rule.min_score)
        & (pl.col("matched").list.len() > 0 if rule.kinds is not None else pl.lit(value=True))
    )
    per_meter = flagged.sort("day").group_by("meter_id").agg(pl.all().last(), pl.len().alias("n"))
    matched = pl.col("matched").list.join(", ")
    message = pl.format(
        "suspicious use on {}: {} (anomaly score {}; {} flagged day(s) in the last {}){}",
        "day",
        pl.when(matched != "").then(matched).otherwise(pl.lit("high anomaly score")),
        number_text(pl.col("score"), 2),
        "n",
        pl.lit(_days_text(lookback_days)),
        pl.when(pl.col("reasons").list.len() > 0)
        .then(pl.format(": {}", pl.col("reasons").list.first()))
        .otherwise(pl.lit("")),
    )
    values = _values(
        "day",
        "score",
        "kinds",
        "reasons",
        "energy_kwh",
        "baseline_kwh",
        pl.col("n").alias("flagged_days"),
    )
    return _conditions(per_meter, message, values)


def meter_offline_conditions(
    meters: pl.LazyFrame, readings: pl.LazyFrame, rule: MeterOfflineRule, now: dt.datetime
) -> pl.LazyFrame:
    """Meters without any reading for ``rule.intervals`` x ``rule.interval_minutes`` before
    ``now``.

    Parameters
    ----------
    meters
        ``meter_id`` of the meters that should report (the current master data).
    readings
        ``meter_id, ts`` of the readings of the lookback window; a meter seen there is judged
        even if the master data does not list it.
    """
    last = (
        readings.filter(pl.col("ts") <= now)
        .group_by("meter_id")
        .agg(pl.col("ts").max().alias("last_reading"))
    )
    judged = pl.concat([meters.select("meter_id"), last.select("meter_id")]).unique()
    silent_min = (pl.lit(now) - pl.col("last_reading")).dt.total_minutes()
    offline = judged.join(last, on="meter_id", how="left").with_columns(
        silent_min.alias("silent_minutes")
    )
    limit = int(rule.silence / dt.timedelta(minutes=1))
    rule_text = pl.format(
        "offline after {} ({} x {} min)",
        elapsed_text(pl.lit(limit)),
        pl.lit(rule.intervals),
        pl.lit(rule.interval_minutes),
    )
    message = (
        pl.when(pl.col("last_reading").is_null())
        .then(
            pl.format(
                "no reading in the last {} ({})", pl.lit(format_timedelta(rule.lookback)), rule_text
            )
        )
        .otherwise(
            pl.format(
                "no reading for {} (last at {}); {}",
                elapsed_text(pl.col("silent_minutes")),
                pl.col("last_reading").dt.to_string(UTC_MINUTE),
                rule_text,
            )
        )
    )
    values = _values("last_reading", "silent_minutes", pl.lit(limit).alias("limit_minutes"))
    down = pl.col("last_reading").is_null() | (pl.col("last_reading") < now - rule.silence)
    return _conditions(offline.filter(down), message, values)


def outage_conditions(
    meters: pl.LazyFrame, readings: pl.LazyFrame, rule: OutageRule, now: dt.datetime
) -> pl.LazyFrame:
    """Feeders with many meters down at once: silent in the last ``rule.minutes`` or with a
    latest voltage below ``rule.voltage_below``.

    Parameters
    ----------
    meters
        ``meter_id, feeder`` of the current master data (meters without a feeder are ignored).
    readings
        ``meter_id, ts, quantity, value`` of at least the last ``rule.minutes``.
    """
    start = now - dt.timedelta(minutes=rule.minutes)
    recent = readings.filter(pl.col("ts").is_between(start, now))
    seen = recent.group_by("meter_id").agg(pl.len().alias("reads"))
    voltages = latest_rows(
        recent.filter(pl.col("quantity").is_in(VOLTAGE_QUANTITIES) & pl.col("value").is_not_nan()),
        ["meter_id", "quantity"],
        ["ts"],
    )
    threshold = rule.voltage_below
    low = (
        voltages.group_by("meter_id")
        .agg(pl.col("value").min().alias("min_voltage_v"))
        .with_columns(
            (pl.col("min_voltage_v") < threshold).alias("low")
            if threshold is not None
            else pl.lit(value=False).alias("low")
        )
    )
    per_meter = (
        meters.filter(pl.col("feeder").is_not_null())
        .join(seen, on="meter_id", how="left")
        .join(low, on="meter_id", how="left")
        .with_columns(
            pl.col("reads").is_null().alias("silent"),
            (pl.col("reads").is_not_null() & pl.col("low").fill_null(value=False)).alias("low"),
        )
    )
    feeders = (
        per_meter.group_by("feeder")
        .agg(
            pl.len().alias("meters"),
            pl.col("silent").sum().alias("silent"),
            pl.col("low").sum().alias("low_voltage"),
        )
        .with_columns(down=pl.col("silent") + pl.col("low_voltage"))
        .with_columns(share=pl.col("down") / pl.col("meters"))
        .filter((pl.col("down") >= rule.min_meters) & (pl.col("share") >= rule.share))
        .with_columns(pl.format("{}{}", pl.lit(FEEDER_PREFIX), "feeder").alias("meter_id"))
    )
    head = pl.format(
        "feeder {}: {} of {} meters ({}) down at once",
        "feeder",
        "down",
        "meters",
        percent_text(pl.col("share")),
    )
    if threshold is None:
        message = pl.format("{}: silent for the last {} min", head, pl.lit(rule.minutes))
    else:
        message = pl.format(
            "{}: {} silent for the last {} min, {} below {} V",
            head,
            "silent",
            pl.lit(rule.minutes),
            "low_voltage",
            number_text(pl.lit(threshold)),
        )
    values = _values("feeder", "meters", "down", "silent", "low_voltage", "share")
    return _conditions(feeders, message, values)


def prepaid_low_conditions(
    meters: pl.LazyFrame, readings: pl.LazyFrame, rule: PrepaidLowRule, now: dt.datetime
) -> pl.LazyFrame:
    """Prepaid meters whose latest ``balance`` reading is below ``rule.below``.

    Parameters
    ----------
    meters
        ``meter_id, prepaid`` of the current master data.
    readings
        ``meter_id, ts, quantity, value`` of the lookback window.
    """
    balances = latest_rows(
        readings.filter(
            (pl.col("quantity") == "balance")
            & (pl.col("ts") <= now)
            & pl.col("value").is_not_null()
            & pl.col("value").is_not_nan()
        ),
        ["meter_id"],
        ["ts"],
    )
    prepaid = meters.filter(pl.col("prepaid").fill_null(value=False)).select("meter_id")
    low = balances.join(prepaid, on="meter_id", how="semi").filter(pl.col("value") < rule.below)

    def money(expr: pl.Expr) -> pl.Expr:
        return expr.round(2).cast(pl.Decimal(38, 2)).cast(pl.String)

    message = pl.format(
        "prepaid balance {} is below the alert level {} (read {})",
        money(pl.col("value")),
        money(pl.lit(rule.below)),
        pl.col("ts").dt.to_string(UTC_MINUTE),
    )
    values = _values(
        pl.col("value").alias("balance"),
        pl.lit(rule.below).alias("below"),
        pl.col("ts").alias("read_at"),
    )
    return _conditions(low, message, values)


def data_quality_conditions(intervals: pl.LazyFrame, rule: DataQualityRule) -> pl.LazyFrame:
    """Meters whose share of ``actual`` intervals is below ``rule.min_actual_share``.

    ``intervals`` are the current interval versions of the window (the last ``rule.days``);
    the share is of the meter's intervals in it, gaps included (VEE materialises them as
    ``missing``).
    """
    status = pl.col("status")
    statuses = [s.value for s in IntervalStatus]
    counts = (
        intervals.group_by("meter_id")
        .agg(pl.len().alias("intervals"), *((status == s).sum().alias(s) for s in statuses))
        .with_columns(actual_share=pl.col("actual") / pl.col("intervals"))
        .filter(pl.col("actual_share") < rule.min_actual_share)
    )
    others = pl.concat_str(
        [
            pl.when(pl.col(s) > 0).then(pl.format("{} {}", pl.col(s), pl.lit(s)))
            for s in statuses
            if s != IntervalStatus.ACTUAL
        ],
        separator=", ",
        ignore_nulls=True,
    )
    message = pl.format(
        "only {} of {} intervals of the last {} are actual readings (at least {} expected); {}",
        percent_text(pl.col("actual_share")),
        "intervals",
        pl.lit(_days_text(rule.days)),
        percent_text(pl.lit(rule.min_actual_share)),
        others,
    )
    values = _values("intervals", *statuses, "actual_share")
    return _conditions(counts, message, values)


# --- the edge: read the lake a rule needs ----------------------------------------------------


def evaluate(root: Path, rule: AlertRule, now: dt.datetime) -> pl.LazyFrame:
    """The conditions of ``rule`` that hold at ``now`` (UTC), from the lake at ``root``.

    Only the part of the lake the rule needs is scanned (its window before ``now``).
    """
    today = now.astimezone(dt.UTC).date()
    until = now + dt.timedelta(microseconds=1)  # readings at ``now`` count
    found: pl.LazyFrame

    def recent_days(table: TableSpec, lookback: dt.timedelta) -> pl.LazyFrame:
        first = today - dt.timedelta(days=_whole_days(lookback))
        return scan_days(root, table, first, today + 2 * _DAY)  # days ahead of UTC too

    if isinstance(rule, TierThresholdRule):
        progress = recent_days(TIER_PROGRESS, rule.lookback)
        found = tier_threshold_conditions(progress, rule, today)
    elif isinstance(rule, SurgeRule | AnomalyRule):
        scores = recent_days(ANOMALY_SCORES, rule.lookback)
        found = (
            surge_conditions(scores, rule, today)
            if isinstance(rule, SurgeRule)
            else anomaly_conditions(scores, rule, today)
        )
    elif isinstance(rule, MeterOfflineRule):
        readings = scan(root, READINGS, now - rule.lookback, until).select("meter_id", "ts")
        found = meter_offline_conditions(scan_current_meters(root), readings, rule, now)
    elif isinstance(rule, OutageRule):
        readings = scan(root, READINGS, now - dt.timedelta(minutes=rule.minutes), until)
        meters = scan_current_meters(root).select("meter_id", "feeder")
        found = outage_conditions(meters, readings, rule, now)
    elif isinstance(rule, PrepaidLowRule):
        readings = scan(root, READINGS, now - rule.lookback, until)
        meters = scan_current_meters(root).select("meter_id", "prepaid")
        found = prepaid_low_conditions(meters, readings, rule, now)
    else:
        intervals = scan_current_intervals(root, now - dt.timedelta(days=rule.days), now)
        found = data_quality_conditions(intervals, rule)
    return found.select(pl.lit(rule.name).alias("rule"), pl.all()).cast(CONDITION_SCHEMA)


def evaluate_rules(root: Path, rules: Sequence[AlertRule], now: dt.datetime) -> pl.DataFrame:
    """The conditions of every rule that hold at ``now``, one row per (rule, meter_id)."""
    frames = pl.collect_all([evaluate(root, rule, now) for rule in rules])
    if not frames:
        return pl.DataFrame(schema=CONDITION_SCHEMA)
    return pl.concat(frames).unique(["rule", "meter_id"], keep="first", maintain_order=True)
