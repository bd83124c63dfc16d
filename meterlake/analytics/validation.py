"""VEE validation: rules that judge interval data and say so in each interval's flags.

Pure and vectorised over all meters: every function takes lazy frames and returns one, with no
Python loop per meter or interval and no I/O. Data quality is data: a rule never drops a row or
changes an energy value; it adds its flag name to the interval's ``flags`` and, where the rule
says the value is doubtful, turns an ``actual`` interval ``suspect`` (``estimated``, ``edited``
and ``missing`` intervals keep their status). The only rows added are the absent grid intervals,
as ``missing`` rows with null energy for estimation to fill; the only rows removed are extra
copies of one (meter, interval), and the kept copy is flagged ``duplicate``.

Input
-----
``intervals``
    The :data:`~meterlake.config.schemas.INTERVALS` columns without ``version``/``run_id``
    (``meter_id``, ``interval_start`` UTC, ``interval_minutes``, ``energy_import_kwh``,
    ``energy_export_kwh``, ``status``, ``flags``, ``method``) for a range of whole local days.
    One interval length per meter and run.
``meters``
    ``meter_id``, ``group`` (selects ``[vee.groups.<group>]``; null or unknown: the defaults),
    ``timezone`` (IANA), ``import_only`` (bool), ``max_power_kw`` [kW] (null: not checked).
    A meter absent from ``meters`` is validated with the default rules on UTC days.
``reads`` (sum check)
    Register reads ``meter_id``, ``ts`` (UTC), ``energy_import_kwh`` (cumulative [kWh], already
    unwrapped across rollovers and resets, as :mod:`meterlake.analytics.deltas` sees them).
``history`` (high/low usage)
    Daily totals of earlier days ``meter_id``, ``day`` (local date), ``energy_import_kwh`` [kWh],
    only of days fit to compare against (not estimated, no outage). Days on or after a meter's
    first validated day are ignored.

Output
------
The same eight columns, one row per (meter, interval), sorted by ``meter_id`` and
``interval_start``; ``flags`` de-duplicated and sorted. See :class:`VeeFlag` for the rules and
:mod:`meterlake.config.vee` for their settings and defaults.

>>> import datetime as dt
>>> from meterlake.config.vee import VeeSettings
>>> t0 = dt.datetime(2026, 3, 28, 16, tzinfo=dt.UTC)  # 2026-03-29 00:00 Asia/Shanghai
>>> day = [t0 + dt.timedelta(minutes=15 * i) for i in range(96) if i != 10]
>>> intervals = pl.LazyFrame({
...     "meter_id": "m1", "interval_start": day, "interval_minutes": 15,
...     "energy_import_kwh": [5.0 if i == 40 else 0.1 for i in range(95)],
...     "energy_export_kwh": 0.0, "status": "actual", "flags": [[]] * 95, "method": None})
>>> meters = pl.LazyFrame({"meter_id": ["m1"], "group": [None], "timezone": ["Asia/Shanghai"],
...                        "import_only": [True], "max_power_kw": [13.8]})
>>> out = validate(intervals, meters, VeeSettings()).collect()
>>> out.height, out.filter(pl.col("status") == "missing")["flags"].to_list()
(96, [['gap', 'interval_count']])
>>> out.filter(pl.col("flags").list.contains("spike"))["status"].to_list()
['suspect']
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final

import polars as pl

from meterlake.analytics.localtime import local_date, local_midnight
from meterlake.config.errors import ConfigError
from meterlake.config.schemas import INTERVALS, IntervalStatus
from meterlake.config.timezones import check_timezone
from meterlake.config.vee import VeeRules, VeeSettings


class VeeFlag(StrEnum):
    """The flag each validation rule adds to an interval's ``flags``."""

    INTERVAL_COUNT = "interval_count"
    """The interval's local day holds more or fewer intervals than it should (DST-aware)."""
    GAP = "gap"
    """The interval was absent from the input and is materialised as ``missing``."""
    DUPLICATE = "duplicate"
    """The input held several rows for this (meter, interval); this one was kept."""
    SPIKE = "spike"
    """Highest interval of the local day, far above the day's third-highest."""
    HIGH_USAGE = "high_usage"
    """The local day's import is far above the meter's historical average daily use."""
    LOW_USAGE = "low_usage"
    """The (complete) local day's import is far below the historical average daily use."""
    ZERO_RUN = "zero_run"
    """Part of a run of zero consumption longer than allowed."""
    NEGATIVE = "negative"
    """Negative energy, or export on an import-only meter."""
    SUM_CHECK = "sum_check"
    """The intervals between two register reads do not add up to the register difference."""
    OVER_MAX_POWER = "over_max_power"
    """The interval's mean power exceeds what the meter can physically carry."""
    PROLONGED_ESTIMATION = "prolonged_estimation"
    """Part of a run of estimated intervals longer than allowed."""


COLUMNS: Final = (
    "meter_id",
    "interval_start",
    "interval_minutes",
    "energy_import_kwh",
    "energy_export_kwh",
    "status",
    "flags",
    "method",
)
"""The columns :func:`validate` reads and returns (``INTERVALS`` without version and run_id)."""

SCHEMA: Final = pl.Schema({c: INTERVALS.schema[c] for c in COLUMNS})

KEEP_ORDER: Final = (
    IntervalStatus.EDITED,
    IntervalStatus.ACTUAL,
    IntervalStatus.ESTIMATED,
    IntervalStatus.SUSPECT,
    IntervalStatus.MISSING,
)
"""Which copy of a duplicated interval is kept: the first status in this order (a human edit is
a deliberate override), then the larger import, the larger export, then method, interval length
and flags, so the choice never depends on the input's row order."""

_KEY: Final = ["meter_id", "interval_start"]
_DAY: Final = ["meter_id", "_day"]
_IMPORT: Final = "energy_import_kwh"
_EXPORT: Final = "energy_export_kwh"
_US_PER_MINUTE: Final = 60_000_000
_ONE_US: Final = dt.timedelta(microseconds=1)


# ----------------------------------------------------------------------------------------------
# Entry point


def validate(
    intervals: pl.LazyFrame,
    meters: pl.LazyFrame | pl.DataFrame,
    config: VeeSettings,
    *,
    reads: pl.LazyFrame | None = None,
    history: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Apply every enabled validation rule to ``intervals`` (see the module docstring).

    Parameters
    ----------
    intervals
        Interval energy [kWh] in the :data:`COLUMNS`, whole local days.
    meters
        ``meter_id``, ``group``, ``timezone``, ``import_only``, ``max_power_kw`` [kW].
    config
        The ``[vee]`` settings; each meter gets the rules of its group.
    reads
        Cumulative import register reads [kWh] for the sum check (none: not checked).
    history
        Earlier daily import totals [kWh] for the high/low usage check (none: not checked).

    Returns
    -------
    pl.LazyFrame
        :data:`COLUMNS`, one row per (meter, interval) incl. materialised gaps, sorted.

    Raises
    ------
    ConfigError
        A meter's ``timezone`` is not an IANA time zone (raised when the plan is built).
    """
    frame, zones = _prepare(intervals, meters, config)
    frame = _duplicates(frame)
    frame = _gaps(frame, zones)
    frame = _interval_count(frame)
    frame = _spikes(frame)
    if history is not None:
        frame = _usage(frame, history)
    frame = _zero_runs(frame)
    frame = _negative(frame)
    if reads is not None:
        frame = _sum_check(frame, reads)
    frame = _over_max_power(frame)
    frame = _prolonged_estimation(frame)
    return _finish(frame)


# ----------------------------------------------------------------------------------------------
# One public function per rule (each usable alone; validate() composes the private cores)


def flag_duplicates(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Keep one row per (meter, interval) by :data:`KEEP_ORDER`; flag it ``duplicate``.

    A kept ``actual`` row whose copies had different energies becomes ``suspect``
    (``duplicate.suspect_on_conflict``).

    >>> import datetime as dt
    >>> from meterlake.config.vee import VeeSettings
    >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> rows = pl.LazyFrame({"meter_id": ["m", "m"], "interval_start": [t, t],
    ...     "interval_minutes": 15, "energy_import_kwh": [0.2, 0.3], "energy_export_kwh": 0.0,
    ...     "status": "actual", "flags": [[], []], "method": None})
    >>> meters = pl.LazyFrame({"meter_id": ["m"], "timezone": ["UTC"]})
    >>> flag_duplicates(rows, meters, VeeSettings()).collect().select(
    ...     "energy_import_kwh", "status", "flags").row(0)
    (0.3, 'suspect', ['duplicate'])
    """
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_duplicates(frame))


def materialise_gaps(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Add a ``missing`` row (null energy, flag ``gap``) for every absent grid interval.

    The grid of a meter runs on its interval length from local midnight of its first day to
    local midnight after its last day in ``intervals``.
    """
    frame, zones = _prepare(intervals, meters, config)
    return _finish(_gaps(frame, zones))


def flag_interval_count(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``interval_count`` on the intervals of each local day whose count of non-missing
    intervals differs from the day's length / interval length (DST days: 23 h or 25 h)."""
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_interval_count(frame))


def flag_spikes(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``spike`` on the highest interval of a local day (import or export) when it is at
    least ``spike.min_peak_kwh`` [kWh] and more than ``spike.ratio`` times the day's
    third-highest interval."""
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_spikes(frame))


def flag_usage(
    intervals: pl.LazyFrame,
    meters: pl.LazyFrame | pl.DataFrame,
    config: VeeSettings,
    history: pl.LazyFrame,
) -> pl.LazyFrame:
    """Flag ``high_usage``/``low_usage`` on local days whose import [kWh] is above
    ``usage.high_multiple`` or (complete days only) below ``usage.low_multiple`` times the
    meter's average daily use in ``history`` (same weekday/weekend type when it has
    ``usage.min_history_days`` such days, else all days; fewer days in all: not judged)."""
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_usage(frame, history))


def flag_zero_runs(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``zero_run`` on contiguous runs of zero import (export zero or null) longer than
    ``zero_run.max_hours`` [h]; a missing interval ends a run."""
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_zero_runs(frame))


def flag_negative(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``negative`` on negative import or export [kWh], and on any export of an
    ``import_only`` meter (reverse energy)."""
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_negative(frame))


def flag_sum_check(
    intervals: pl.LazyFrame,
    meters: pl.LazyFrame | pl.DataFrame,
    config: VeeSettings,
    reads: pl.LazyFrame,
) -> pl.LazyFrame:
    """Flag ``sum_check`` on the intervals between two consecutive register reads whose import
    sum [kWh] differs from the reads' difference by more than
    ``max(sum_check.tolerance_kwh, sum_check.tolerance_pct % of the difference)``.

    Intervals that straddle a read count with the share of their time inside the span (linear
    apportionment, as the register deltas make them). A span not covered by intervals, or with a
    missing interval in it, is not judged.
    """
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_sum_check(frame, reads))


def flag_over_max_power(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``over_max_power`` where import or export / interval length [kW] exceeds the meter's
    ``max_power_kw`` times ``max_power.safety_factor``."""
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_over_max_power(frame))


def flag_prolonged_estimation(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``prolonged_estimation`` on contiguous runs of ``estimated`` intervals longer than
    ``prolonged_estimation.max_hours`` [h]."""
    frame, _ = _prepare(intervals, meters, config)
    return _finish(_prolonged_estimation(frame))


# ----------------------------------------------------------------------------------------------
# Preparation: normalise, attach each meter's attributes and rule parameters, local days


def _flatten(rules: VeeRules) -> dict[str, Any]:
    """``{"_spike__ratio": 2.0, ...}``: every rule parameter as a column name and value."""
    return {
        f"_{rule}__{field}": value
        for rule, params in rules.model_dump().items()
        for field, value in params.items()
    }


def _param(rule: str, field: str) -> pl.Expr:
    return pl.col(f"_{rule}__{field}")


def _meter_params(meters: pl.LazyFrame, config: VeeSettings) -> pl.LazyFrame:
    """``meters`` with one column per rule parameter of the meter's group."""
    defaults = _flatten(config.rules_for(None))
    dtypes = {
        name: pl.Boolean()
        if isinstance(v, bool)
        else pl.Int64()
        if isinstance(v, int)
        else pl.Float64()
        for name, v in defaults.items()
    }
    groups = pl.DataFrame(
        [{"group": name, **_flatten(rules)} for name, rules in sorted(config.groups.items())],
        schema={"group": pl.String(), **dtypes},
        orient="row",
    )
    return meters.join(groups.lazy(), on="group", how="left").with_columns(
        pl.coalesce(pl.col(name), pl.lit(value, dtype=dtypes[name])).alias(name)
        for name, value in defaults.items()
    )


def _zones(meters: pl.LazyFrame) -> list[str]:
    """The meters' distinct time zones (plus UTC), checked: Polars takes a time zone only as a
    literal, so the handful of zone names is read eagerly; the intervals stay lazy."""
    names = meters.select(pl.col("timezone").drop_nulls().unique()).collect().to_series()
    try:
        return sorted({"UTC", *(check_timezone(z) for z in names.to_list())})
    except ConfigError as exc:
        raise ConfigError(f"meters: {exc}") from exc


def _with_days(frame: pl.LazyFrame, zones: Sequence[str]) -> pl.LazyFrame:
    """Add ``_day`` (local date), ``_day_start``/``_day_end`` (UTC) and ``_day_minutes``."""
    tz = pl.col("_tz")
    frame = frame.with_columns(local_date(pl.col("interval_start"), tz, zones).alias("_day"))
    return frame.with_columns(
        local_midnight(pl.col("_day"), tz, zones).alias("_day_start"),
        local_midnight(pl.col("_day") + dt.timedelta(days=1), tz, zones).alias("_day_end"),
    ).with_columns(
        ((pl.col("_day_end") - pl.col("_day_start")).dt.total_minutes()).alias("_day_minutes")
    )


def _prepare(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> tuple[pl.LazyFrame, list[str]]:
    meters = meters.lazy()
    names = meters.collect_schema().names()
    meters = meters.select(
        pl.col("meter_id").cast(pl.String),
        (pl.col("group") if "group" in names else pl.lit(None)).cast(pl.String).alias("group"),
        pl.col("timezone").cast(pl.String).alias("_tz"),
        (pl.col("import_only") if "import_only" in names else pl.lit(None))
        .cast(pl.Boolean)
        .fill_null(value=False)
        .alias("_import_only"),
        (pl.col("max_power_kw") if "max_power_kw" in names else pl.lit(None))
        .cast(pl.Float64)
        .alias("_max_power_kw"),
    ).unique(subset="meter_id", keep="first", maintain_order=True)
    zones = _zones(meters.rename({"_tz": "timezone"}))
    params = _meter_params(meters, config)
    frame = (
        intervals.select(pl.col(c).cast(SCHEMA[c]) for c in COLUMNS)
        .with_columns(pl.col("flags").fill_null(pl.lit([], dtype=SCHEMA["flags"])))
        .join(params, on="meter_id", how="left")
        .with_columns(
            pl.col("_tz").fill_null("UTC"),
            pl.col("_import_only").fill_null(value=False),
            pl.col("interval_minutes").min().over("meter_id").alias("_step"),
        )
    )
    frame = _with_days(frame, zones)
    return _sorted(frame), zones


def _sorted(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.sort(
        "meter_id",
        "interval_start",
        _status_rank(),
        _IMPORT,
        _EXPORT,
        "method",
        "interval_minutes",
        pl.col("flags").list.join(","),
        descending=[False, False, False, True, True, False, False, False],
        nulls_last=True,
    )


def _status_rank() -> pl.Expr:
    ranks = {status.value: i for i, status in enumerate(KEEP_ORDER)}
    return pl.col("status").replace_strict(ranks, default=len(KEEP_ORDER), return_dtype=pl.Int32)


def _mark(frame: pl.LazyFrame, condition: pl.Expr, flag: VeeFlag, suspect: pl.Expr) -> pl.LazyFrame:
    """Add ``flag`` where ``condition``; turn ``actual`` into ``suspect`` where also ``suspect``."""
    hit = condition.fill_null(value=False)
    return (
        frame.with_columns(hit.alias("_hit"))
        .with_columns(
            pl.when(pl.col("_hit"))
            .then(pl.concat_list(pl.col("flags"), pl.lit(flag.value)))
            .otherwise(pl.col("flags"))
            .alias("flags"),
            pl.when(pl.col("_hit") & suspect & (pl.col("status") == IntervalStatus.ACTUAL.value))
            .then(pl.lit(IntervalStatus.SUSPECT.value))
            .otherwise(pl.col("status"))
            .alias("status"),
        )
        .drop("_hit")
    )


def _finish(frame: pl.LazyFrame) -> pl.LazyFrame:
    return (
        frame.with_columns(pl.col("flags").list.unique().list.sort())
        .select(pl.col(c).cast(SCHEMA[c]) for c in COLUMNS)
        .sort(_KEY)
    )


def _end() -> pl.Expr:
    return pl.col("interval_start") + pl.duration(minutes=pl.col("interval_minutes"))


def _run_hours(condition: pl.Expr) -> pl.Expr:
    """Length [h] of the contiguous run of ``condition`` each row belongs to (0 outside runs).

    Rows must be sorted by meter and ``interval_start``; a break in time ends a run.
    """
    cond = condition.fill_null(value=False)
    prev_end = _end().shift(1).over("meter_id")
    new_run = (cond != cond.shift(1).over("meter_id")) | (pl.col("interval_start") != prev_end)
    run = new_run.fill_null(value=True).cum_sum().over("meter_id")
    hours = pl.col("interval_minutes").cast(pl.Float64).sum().over("meter_id", run) / 60.0
    return pl.when(cond).then(hours).otherwise(0.0)


# ----------------------------------------------------------------------------------------------
# The rules' cores (on a prepared, sorted frame)


def _duplicates(frame: pl.LazyFrame) -> pl.LazyFrame:
    enabled = _param("duplicate", "enabled")
    copies = pl.len().over(_KEY)
    first = pl.int_range(pl.len()).over(_KEY) == 0
    conflict = (pl.col(_IMPORT).n_unique().over(_KEY) > 1) | (
        pl.col(_EXPORT).n_unique().over(_KEY) > 1
    )
    frame = frame.with_columns(
        (enabled & (copies > 1)).alias("_dup"),
        (enabled & conflict).alias("_conflict"),
        (~enabled | first).alias("_keep"),
    ).filter(pl.col("_keep"))
    frame = _mark(
        frame,
        pl.col("_dup"),
        VeeFlag.DUPLICATE,
        pl.col("_conflict") & _param("duplicate", "suspect_on_conflict"),
    )
    return frame.drop("_dup", "_conflict", "_keep")


def _gaps(frame: pl.LazyFrame, zones: Sequence[str]) -> pl.LazyFrame:
    meter_columns = [
        c
        for c in frame.collect_schema().names()
        if c.startswith("_") and not c.startswith("_day") and c != "_step"
    ]
    meter_columns = ["group", *meter_columns]
    grid = (
        frame.group_by("meter_id")
        .agg(
            pl.col("_day_start").min().alias("_from"),
            pl.col("_day_end").max().alias("_to"),
            pl.col("_step").first(),
            *(pl.col(c).first() for c in meter_columns),
        )
        .filter(
            pl.col("_gap__enabled") & pl.col("_from").is_not_null() & pl.col("_to").is_not_null()
        )
        .with_columns(
            pl.int_ranges(
                pl.col("_from").dt.epoch("us"),
                pl.col("_to").dt.epoch("us"),
                pl.col("_step").cast(pl.Int64) * _US_PER_MINUTE,
            ).alias("_us")
        )
        .explode("_us")
        .filter(pl.col("_us").is_not_null())
        .with_columns(
            pl.from_epoch(pl.col("_us"), time_unit="us")
            .dt.replace_time_zone("UTC")
            .alias("interval_start")
        )
        .drop("_us", "_from", "_to")
    )
    missing = grid.join(frame.select(_KEY), on=_KEY, how="anti").with_columns(
        pl.col("_step").cast(SCHEMA["interval_minutes"]).alias("interval_minutes"),
        pl.lit(None, dtype=pl.Float64).alias(_IMPORT),
        pl.lit(None, dtype=pl.Float64).alias(_EXPORT),
        pl.lit(IntervalStatus.MISSING.value).alias("status"),
        pl.lit([VeeFlag.GAP.value], dtype=SCHEMA["flags"]).alias("flags"),
        pl.lit(None, dtype=pl.String).alias("method"),
    )
    missing = _with_days(missing, zones)
    return _sorted(pl.concat([frame, missing], how="diagonal_relaxed"))


def _interval_count(frame: pl.LazyFrame) -> pl.LazyFrame:
    present = (pl.col("status") != IntervalStatus.MISSING.value).sum().over(_DAY)
    expected = pl.col("_day_minutes") / pl.col("_step")
    condition = _param("interval_count", "enabled") & (present != expected)
    return _mark(frame, condition, VeeFlag.INTERVAL_COUNT, pl.lit(value=False))


def _spike_on(column: str) -> pl.Expr:
    value = pl.col(column)
    top = value.max().over(_DAY)
    third = value.drop_nulls().top_k(3).min().over(_DAY)
    return (
        (value.count().over(_DAY) >= 3)
        & (value == top)
        & (top >= _param("spike", "min_peak_kwh"))
        & (top > _param("spike", "ratio") * third)
    ).fill_null(value=False)


def _spikes(frame: pl.LazyFrame) -> pl.LazyFrame:
    condition = _param("spike", "enabled") & (_spike_on(_IMPORT) | _spike_on(_EXPORT))
    return _mark(frame, condition, VeeFlag.SPIKE, _param("spike", "suspect"))


def _usage(frame: pl.LazyFrame, history: pl.LazyFrame) -> pl.LazyFrame:
    weekend = pl.col("day").dt.weekday() >= 6
    first_day = frame.group_by("meter_id").agg(pl.col("_day").min().alias("_first"))
    past = (
        history.select(
            pl.col("meter_id").cast(pl.String),
            pl.col("day").cast(pl.Date),
            pl.col(_IMPORT).cast(pl.Float64),
        )
        .join(first_day, on="meter_id", how="inner")
        .filter((pl.col("day") < pl.col("_first")) & pl.col(_IMPORT).is_not_null())
        .with_columns(weekend.alias("_weekend"))
    )
    by_type = past.group_by("meter_id", "_weekend").agg(
        pl.col(_IMPORT).mean().alias("_type_mean"), pl.len().alias("_type_days")
    )
    overall = past.group_by("meter_id").agg(
        pl.col(_IMPORT).mean().alias("_all_mean"), pl.len().alias("_all_days")
    )
    frame = (
        frame.with_columns((pl.col("_day").dt.weekday() >= 6).alias("_weekend"))
        .join(by_type, on=["meter_id", "_weekend"], how="left")
        .join(overall, on="meter_id", how="left")
    )
    need = _param("usage", "min_history_days")
    average = (
        pl.when(pl.col("_type_days") >= need)
        .then(pl.col("_type_mean"))
        .when(pl.col("_all_days") >= need)
        .then(pl.col("_all_mean"))
        .otherwise(None)
    )
    total = pl.col(_IMPORT).sum().over(_DAY)
    complete = pl.col(_IMPORT).count().over(_DAY) == pl.col("_day_minutes") / pl.col("_step")
    enabled = _param("usage", "enabled") & (average > 0)
    suspect = _param("usage", "suspect")
    frame = frame.with_columns(average.alias("_average"))
    frame = _mark(
        frame,
        enabled & (total > _param("usage", "high_multiple") * pl.col("_average")),
        VeeFlag.HIGH_USAGE,
        suspect,
    )
    frame = _mark(
        frame,
        enabled & complete & (total < _param("usage", "low_multiple") * pl.col("_average")),
        VeeFlag.LOW_USAGE,
        suspect,
    )
    return frame.drop("_weekend", "_type_mean", "_type_days", "_all_mean", "_all_days", "_average")


def _zero_runs(frame: pl.LazyFrame) -> pl.LazyFrame:
    zero = (pl.col(_IMPORT) == 0) & (pl.col(_EXPORT).is_null() | (pl.col(_EXPORT) == 0))
    condition = _param("zero_run", "enabled") & (_run_hours(zero) > _param("zero_run", "max_hours"))
    return _mark(frame, condition, VeeFlag.ZERO_RUN, _param("zero_run", "suspect"))


def _negative(frame: pl.LazyFrame) -> pl.LazyFrame:
    imp, exp = pl.col(_IMPORT), pl.col(_EXPORT)
    wrong = (imp < 0).fill_null(value=False) | (exp < 0).fill_null(value=False)
    reverse = pl.col("_import_only") & (exp > 0).fill_null(value=False)
    condition = _param("negative", "enabled") & (wrong | reverse)
    return _mark(frame, condition, VeeFlag.NEGATIVE, _param("negative", "suspect"))


def _over_max_power(frame: pl.LazyFrame) -> pl.LazyFrame:
    hours = pl.col("interval_minutes").cast(pl.Float64) / 60.0
    limit = pl.col("_max_power_kw") * _param("max_power", "safety_factor")
    over = ((pl.col(_IMPORT) / hours) > limit).fill_null(value=False) | (
        (pl.col(_EXPORT) / hours) > limit
    ).fill_null(value=False)
    condition = _param("max_power", "enabled") & over
    return _mark(frame, condition, VeeFlag.OVER_MAX_POWER, _param("max_power", "suspect"))


def _prolonged_estimation(frame: pl.LazyFrame) -> pl.LazyFrame:
    estimated = pl.col("status") == IntervalStatus.ESTIMATED.value
    condition = _param("prolonged_estimation", "enabled") & (
        _run_hours(estimated) > _param("prolonged_estimation", "max_hours")
    )
    return _mark(frame, condition, VeeFlag.PROLONGED_ESTIMATION, pl.lit(value=False))


def _sum_check(frame: pl.LazyFrame, reads: pl.LazyFrame) -> pl.LazyFrame:
    """Compare interval sums with register differences between consecutive reads.

    The intervals of a meter define a cumulative curve ``E(t)`` (linear inside an interval);
    each read looks up ``E`` at its time with an as-of join, and a span's interval sum is
    ``E(b) - E(a)``. Missing intervals are counted the same way so such spans are skipped.
    """
    # The as-of joins below sort both sides by their key over all meters, which is what the
    # join needs; Polars cannot verify that per ``by`` group, hence check_sortedness=False.
    imp = pl.col(_IMPORT)
    null = imp.is_null().cast(pl.Int64)
    curve = frame.select(
        "meter_id",
        "interval_start",
        _end().alias("_end"),
        imp.fill_null(0.0).alias("_e"),
        (imp.fill_null(0.0).cum_sum().over("meter_id") - imp.fill_null(0.0)).alias("_cum0"),
        (null.cum_sum().over("meter_id") - null).alias("_miss0"),
        null.alias("_null"),
        _param("sum_check", "enabled").alias("_on"),
        _param("sum_check", "tolerance_pct").alias("_pct"),
        _param("sum_check", "tolerance_kwh").alias("_tol"),
    ).sort("interval_start")
    ts = pl.col("ts")
    span_us = (pl.col("_end") - pl.col("interval_start")).dt.total_microseconds()
    into_us = (ts - pl.col("interval_start")).dt.total_microseconds()
    share = (into_us.cast(pl.Float64) / span_us.cast(pl.Float64)).clip(0.0, 1.0)
    at_read = (
        reads.select(
            pl.col("meter_id").cast(pl.String),
            pl.col("ts").cast(SCHEMA["interval_start"]),
            pl.col(_IMPORT).cast(pl.Float64).alias("_reg"),
        )
        .filter(pl.col("_reg").is_not_null())
        .unique(subset=["meter_id", "ts"], keep="any")
        .sort("ts")
        .join_asof(
            curve, left_on="ts", right_on="interval_start", by="meter_id", check_sortedness=False
        )
        .with_columns(
            (pl.col("_cum0") + pl.col("_e") * share).alias("_E"),
            # missing intervals that start before / end by the read
            (
                pl.col("_miss0")
                + pl.when(ts > pl.col("interval_start")).then(pl.col("_null")).otherwise(0)
            ).alias("_ms"),
            (
                pl.col("_miss0") + pl.when(ts >= pl.col("_end")).then(pl.col("_null")).otherwise(0)
            ).alias("_me"),
            (ts <= pl.col("_end")).alias("_covered"),
        )
        .sort("meter_id", "ts")
    )
    prev = {c: pl.col(c).shift(1).over("meter_id") for c in ("ts", "_reg", "_E", "_me", "_covered")}
    diff = pl.col("_reg") - prev["_reg"]
    got = pl.col("_E") - prev["_E"]
    tolerance = pl.max_horizontal(pl.col("_tol"), pl.col("_pct") / 100.0 * diff.abs())
    failed = (
        at_read.with_columns(
            (
                pl.col("_on")
                & pl.col("_covered")
                & prev["_covered"]
                & ((pl.col("_ms") - prev["_me"]) == 0)
                & ((got - diff).abs() > tolerance)
            )
            .fill_null(value=False)
            .alias("_fail"),
            prev["ts"].alias("_a"),
        )
        .filter(pl.col("_fail"))
        .select("meter_id", "_a", pl.col("ts").alias("_b"))
        .sort("_a")
    )
    flagged = (
        frame.with_columns((_end() - _ONE_US).alias("_last_us"))
        .sort("_last_us")
        .join_asof(failed, left_on="_last_us", right_on="_a", by="meter_id", check_sortedness=False)
    )
    condition = pl.col("_b").is_not_null() & (pl.col("_b") > pl.col("interval_start"))
    flagged = _mark(flagged, condition, VeeFlag.SUM_CHECK, _param("sum_check", "suspect"))
    return _sorted(flagged.drop("_last_us", "_a", "_b"))
