"""One VEE run, end to end and pure: register reads -> validated, estimated interval versions.

::

    reads ──register_intervals──▶ interval energy (flags: rollover, meter_reset, glitch, ...)
          ──validate──▶ + missing rows, suspect status, rule flags
          ──without_negative──▶ negative intervals become missing
          ──estimate_intervals──▶ missing / register-bounded intervals estimated
          ──new_versions──▶ only what changed since the stored versions, with the run id

The caller (:mod:`meterlake.analytics.vee_job`) scans the lake for the reads, meters, events,
history and stored intervals of a range and writes what this returns; nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final

import polars as pl

from meterlake.analytics.deltas import EXPORT, IMPORT, DeltaFlag, register_intervals
from meterlake.analytics.estimation import EstimationRules, estimate_intervals
from meterlake.analytics.validation import validate
from meterlake.analytics.versions import new_versions
from meterlake.config.localtime import local_date
from meterlake.config.schemas import READINGS, IntervalStatus, Quality
from meterlake.config.vee import VeeSettings

DEFAULT_GROUP: Final = "default"
METER_COLUMNS: Final = ("meter_id", "group", "timezone", "import_only", "max_power_kw", "wrap_kwh")
"""The meter parameters VEE reads (see :func:`meter_parameters`)."""
_BAD_READ: Final = [
    Quality.INVALID_VALUE.value,
    Quality.OUT_OF_RANGE.value,
    Quality.TOTAL_UNRELIABLE.value,
]


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


def meter_parameters(
    readings: pl.LazyFrame, master: pl.LazyFrame | None, timezone: str
) -> pl.DataFrame:
    """The VEE parameters (:data:`METER_COLUMNS`) of every meter in ``readings``.

    From the meter's current record in ``master`` (``meters_current``: ``meter_group``,
    ``timezone``, ``import_only``, ``pv``, ``max_power_kw``, ``wrap_kwh``) where it has one;
    what it leaves empty is the default: group ``default``, the site's ``timezone``, no power or
    register limit of its own (the register rules' defaults), and import-only unless the meter
    has PV or an export register.

    >>> import datetime as dt
    >>> reads = pl.LazyFrame({"meter_id": ["a", "b", "b"],
    ...     "quantity": ["energy_import_kwh", "energy_import_kwh", "energy_export_kwh"]})
    >>> master = pl.LazyFrame({"meter_id": ["a"], "meter_group": ["shop"], "timezone": [None],
    ...     "import_only": [None], "pv": [True], "max_power_kw": [30.0], "wrap_kwh": [None]},
    ...     schema_overrides={"timezone": pl.String, "import_only": pl.Boolean,
    ...                       "wrap_kwh": pl.Float64})
    >>> meter_parameters(reads, master, "Asia/Shanghai").rows()  # doctest: +NORMALIZE_WHITESPACE
    [('a', 'shop', 'Asia/Shanghai', False, 30.0, None),
     ('b', 'default', 'Asia/Shanghai', False, None, None)]
    """
    seen = readings.group_by("meter_id").agg(
        (pl.col("quantity") == EXPORT).any().alias("_has_export")
    )
    if master is None:
        records = pl.LazyFrame(
            schema={
                "meter_id": pl.String,
                "meter_group": pl.String,
                "timezone": pl.String,
                "import_only": pl.Boolean,
                "pv": pl.Boolean,
                "max_power_kw": pl.Float64,
                "wrap_kwh": pl.Float64,
            }
        )
    else:
        records = master.select(
            "meter_id", "meter_group", "timezone", "import_only", "pv", "max_power_kw", "wrap_kwh"
        )
    exports = pl.col("pv").fill_null(value=False) | pl.col("_has_export")
    return (
        seen.join(records, on="meter_id", how="left")
        .select(
            "meter_id",
            pl.col("meter_group").fill_null(DEFAULT_GROUP).alias("group"),
            pl.col("timezone").fill_null(timezone),
            pl.col("import_only").fill_null(~exports),
            "max_power_kw",
            "wrap_kwh",
        )
        .sort("meter_id")
        .collect()
    )


def daily_history(intervals: pl.LazyFrame, meters: pl.DataFrame) -> pl.LazyFrame:
    """Daily import totals [kWh] per meter and local day, for the high/low usage rule.

    ``intervals`` are current stored intervals before a run's range; missing intervals do
    not count and a day with any missing interval is left out (a partial day is not a day's use).
    """
    zones = meters["timezone"].unique().to_list()
    return (
        intervals.join(meters.lazy().select("meter_id", "timezone"), on="meter_id", how="inner")
        .with_columns(local_date(pl.col("interval_start"), pl.col("timezone"), zones).alias("day"))
        .group_by("meter_id", "day")
        .agg(
            pl.col(IMPORT).sum(),
            (pl.col("status") == IntervalStatus.MISSING.value).any().alias("_partial"),
        )
        .filter(~pl.col("_partial"))
        .select("meter_id", "day", IMPORT)
    )


def register_reads(
    reads: pl.LazyFrame, energy: pl.LazyFrame, interval_minutes: int
) -> pl.LazyFrame:
    """The import register reads the sum check compares intervals with: ``meter_id``, ``ts``,
    ``energy_import_kwh``.

    Left out: reads the meter marked unusable, and reads on or inside an interval that a
    register rule already judged (``energy``'s flags other than ``gap_apportioned``: a rollover,
    reset, glitch, implausible step, ...). The intervals and the reads come from the same
    register, so there the check would only repeat that verdict; a span between the
    remaining reads still compares everything in it.
    """
    judged = [f.value for f in DeltaFlag if f is not DeltaFlag.GAP_APPORTIONED]
    flagged = energy.filter(pl.col("flags").list.eval(pl.element().is_in(judged)).list.any())
    flagged = flagged.select("meter_id", pl.col("interval_start").alias("_in"))
    ts = pl.col("ts")
    inside = ts.dt.truncate(f"{interval_minutes}m")
    ending = pl.when(ts == inside).then(inside - dt.timedelta(minutes=interval_minutes))
    bad = pl.col("quality").list.eval(pl.element().is_in(_BAD_READ)).list.any()
    usable = reads.filter(
        (pl.col("quantity") == IMPORT) & pl.col("value").is_finite() & ~bad.fill_null(value=False)
    ).with_columns(inside.alias("_in"), ending.otherwise(inside).alias("_end"))
    return (
        usable.join(flagged, on=["meter_id", "_in"], how="anti")
        .join(flagged.rename({"_in": "_end"}), on=["meter_id", "_end"], how="anti")
        .select("meter_id", "ts", pl.col("value").alias(IMPORT))
    )


def without_negative(validated: pl.LazyFrame) -> pl.LazyFrame:
    """Validated intervals whose import or export is negative, made ``missing`` for estimation.

    A register never runs backwards, so a negative interval (a fall the register rules could
    not explain as a rollover, reset or glitch, e.g. at the last read, where nothing confirms it
    yet) is no consumption to keep: it keeps its flags (``negative_delta``, ``negative``) and is
    estimated like a gap; the next run, with more reads, may explain it.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    >>> rows = pl.LazyFrame({"energy_import_kwh": [0.5, -3.0], "energy_export_kwh": [0.0, 0.0],
    ...                      "status": ["actual", "suspect"]})
    >>> without_negative(rows).collect().rows()
    [(0.5, 0.0, 'actual'), (None, None, 'missing')]
    """
    negative = (pl.col(IMPORT) < 0).fill_null(value=False) | (pl.col(EXPORT) < 0).fill_null(
        value=False
    )
    return validated.with_columns(
        pl.when(negative).then(None).otherwise(pl.col(IMPORT)).alias(IMPORT),
        pl.when(negative).then(None).otherwise(pl.col(EXPORT)).alias(EXPORT),
        pl.when(negative)
        .then(pl.lit(IntervalStatus.MISSING.value))
        .otherwise(pl.col("status"))
        .alias("status"),
    )


def vee_versions(
    readings: pl.LazyFrame,
    stored: pl.LazyFrame,
    meters: pl.DataFrame,
    run: VeeRun,
    *,
    events: pl.LazyFrame | None = None,
    history: pl.LazyFrame | None = None,
    windows: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """The interval rows a VEE run appends for ``run``'s range (see the module docstring).

    Parameters
    ----------
    readings
        Readings covering the range and some context around it: the reads before the range
        give its first intervals their baseline, the days around it the like days of its
        estimates. Any duplicates are resolved here.
    stored
        Intervals already in the lake for the range (any versions).
    meters
        :data:`METER_COLUMNS` of every meter (:func:`meter_parameters`).
    run
        The run's id, range and rules.
    events
        Recorded register restarts (``meter_events``: ``meter_id``, ``ts``, ``kind``).
    history
        Daily import totals before the range (:func:`daily_history`) for the usage rule.
    windows
        Only intervals inside each meter's ``[window_start, window_end)`` (UTC) are written
        (an incremental run: the days late reads touched); default ``[run.start, run.end)``.
    """
    # Each stage reads its input several times (self-joins, windows): without a materialised
    # boundary Polars recomputes the whole upstream plan for every reference, which made a
    # 20-meter, 4-day run take minutes instead of a second.
    reads = current_readings(readings).collect()
    span = reads.group_by("meter_id").agg(
        pl.col("ts").min().alias("first_read"), pl.col("ts").max().alias("last_read")
    )
    energy = register_intervals(
        reads.lazy(),
        interval_minutes=run.interval_minutes,
        meters=meters.lazy().select("meter_id", "wrap_kwh", "max_power_kw"),
        events=events,
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
    validated = validate(
        intervals.lazy(),
        meters,
        run.validation,
        reads=register_reads(reads.lazy(), intervals.lazy(), run.interval_minutes),
        history=history,
    ).collect()
    estimated = estimate_intervals(
        without_negative(validated.lazy()), meters, rules=run.estimation, holidays=run.holidays
    ).collect()
    if windows is None:
        windows = meters.select(
            "meter_id",
            pl.lit(run.start).dt.convert_time_zone("UTC").alias("window_start"),
            pl.lit(run.end).dt.convert_time_zone("UTC").alias("window_end"),
        )
    # never extrapolate: no interval before a meter's first read or after its last one
    step = dt.timedelta(minutes=run.interval_minutes)
    within = (
        estimated.join(span, on="meter_id", how="inner")
        .join(windows, on="meter_id", how="inner")
        .filter(
            (pl.col("interval_start") + step > pl.col("first_read"))
            & (pl.col("interval_start") < pl.col("last_read"))
            & pl.col("interval_start").is_between(
                pl.col("window_start"), pl.col("window_end"), closed="left"
            )
        )
        .drop("first_read", "last_read", "window_start", "window_end")
    )
    return new_versions(within.lazy(), stored, run.run_id)
