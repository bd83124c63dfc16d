"""One VEE run, end to end and pure: register reads -> validated, estimated interval versions.

::

    reads ──register_intervals──▶ interval energy (flags: rollover, meter_reset, glitch, ...)
          ──validate──▶ + missing rows, suspect status, rule flags
          ──estimate_intervals──▶ missing / register-bounded intervals estimated
          ──new_versions──▶ only what changed since the stored versions, with the run id

The caller (``meterlake vee``) scans the lake for the reads and stored intervals of a range and
writes what this returns; nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final

import polars as pl

from meterlake.analytics.deltas import register_intervals
from meterlake.analytics.estimation import EstimationRules, estimate_intervals
from meterlake.analytics.validation import validate
from meterlake.analytics.versions import new_versions
from meterlake.config.schemas import READINGS, IntervalStatus
from meterlake.config.vee import VeeSettings

DEFAULT_GROUP: Final = "default"


@dataclass(frozen=True)
class VeeRun:
    """The parameters of one run (everything but the data)."""

    run_id: str
    start: dt.datetime
    """First interval start the run may write (UTC)."""
    end: dt.datetime
    """End of the range, excluded (UTC)."""
    interval_minutes: int = 15
    validation: VeeSettings = field(default_factory=VeeSettings)
    estimation: EstimationRules = field(default_factory=EstimationRules)
    holidays: tuple[dt.date, ...] = ()


def current_readings(readings: pl.LazyFrame) -> pl.LazyFrame:
    """One reading per (meter, quantity, ts): the latest received, as ``readings_current``."""
    return readings.sort(["received_at", "source"], descending=True, nulls_last=True).unique(
        list(READINGS.dedup_key), keep="first", maintain_order=True
    )


def default_meters(readings: pl.LazyFrame, timezone: str) -> pl.DataFrame:
    """Meter parameters when no meter table exists: every meter in ``readings``, in the site's
    ``timezone``, group ``default``, import-only unless it has an export register."""
    return (
        readings.group_by("meter_id")
        .agg((pl.col("quantity") == "energy_export_kwh").any().not_().alias("import_only"))
        .with_columns(
            pl.lit(DEFAULT_GROUP).alias("group"),
            pl.lit(timezone).alias("timezone"),
            pl.lit(None, pl.Float64).alias("max_power_kw"),
        )
        .sort("meter_id")
        .collect()
    )


def vee_versions(
    readings: pl.LazyFrame, stored: pl.LazyFrame, meters: pl.DataFrame, run: VeeRun
) -> pl.LazyFrame:
    """The interval rows a VEE run appends for ``run``'s range (see the module docstring).

    Parameters
    ----------
    readings
        Readings covering the range and some margin around it (the reads before the range
        give its first intervals their baseline); any duplicates are resolved here.
    stored
        Intervals already in the lake for the range (any versions).
    meters
        ``meter_id``, ``group``, ``timezone``, ``import_only``, ``max_power_kw`` [kW].
    run
        The run's id, range and rules.
    """
    # Each stage reads its input several times (self-joins, windows): without a materialised
    # boundary Polars recomputes the whole upstream plan for every reference, which made a
    # 20-meter, 4-day run take minutes instead of a second.
    reads = current_readings(readings).collect()
    span = reads.group_by("meter_id").agg(
        pl.col("ts").min().alias("first_read"), pl.col("ts").max().alias("last_read")
    )
    energy = register_intervals(reads.lazy(), interval_minutes=run.interval_minutes).filter(
        pl.col("interval_start").is_between(run.start, run.end, closed="left")
    )
    intervals = energy.select(
        "meter_id",
        "interval_start",
        "interval_minutes",
        "energy_import_kwh",
        "energy_export_kwh",
        pl.when(pl.col("energy_import_kwh").is_null())
        .then(pl.lit(IntervalStatus.MISSING.value))
        .otherwise(pl.lit(IntervalStatus.ACTUAL.value))
        .alias("status"),
        "flags",
        pl.lit(None, pl.String).alias("method"),
    ).collect()
    validated = validate(intervals.lazy(), meters, run.validation).collect()
    estimated = estimate_intervals(
        validated.lazy(), meters, rules=run.estimation, holidays=run.holidays
    ).collect()
    # never extrapolate: no interval before a meter's first read or after its last one
    step = dt.timedelta(minutes=run.interval_minutes)
    within = (
        estimated.join(span, on="meter_id", how="inner")
        .filter(
            (pl.col("interval_start") + step > pl.col("first_read"))
            & (pl.col("interval_start") < pl.col("last_read"))
        )
        .drop("first_read", "last_read")
    )
    return new_versions(within.lazy(), stored, run.run_id)
