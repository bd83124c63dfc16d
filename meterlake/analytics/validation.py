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

from meterlake.config.errors import ConfigError
from meterlake.config.localtime import local_date, local_midnight
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


_RULE_OF: Final = {
    VeeFlag.INTERVAL_COUNT: "interval_count",
    VeeFlag.GAP: "gap",
    VeeFlag.DUPLICATE: "duplicate",
    VeeFlag.SPIKE: "spike",
    VeeFlag.HIGH_USAGE: "usage",
    VeeFlag.LOW_USAGE: "usage",
    VeeFlag.ZERO_RUN: "zero_run",
    VeeFlag.NEGATIVE: "negative",
    VeeFlag.SUM_CHECK: "sum_check",
    VeeFlag.OVER_MAX_POWER: "max_power",
    VeeFlag.PROLONGED_ESTIMATION: "prolonged_estimation",
}
"""The ``[vee]`` table of each flag's rule."""

_BIT: Final = {flag: 1 << i for i, flag in enumerate(sorted(VeeFlag, key=lambda f: f.value))}
"""One bit per flag, in the flags' sort order: a row's rule results are one integer."""

_FLAG_LISTS: Final = pl.Series(
    [sorted(f.value for f, bit in _BIT.items() if mask & bit) for mask in range(1 << len(_BIT))],
    dtype=SCHEMA["flags"],
)
"""The sorted flag names of every bit mask, looked up by mask."""

_SUSPECT: Final = (
    VeeFlag.SPIKE,
    VeeFlag.HIGH_USAGE,
    VeeFlag.LOW_USAGE,
    VeeFlag.ZERO_RUN,
    VeeFlag.NEGATIVE,
    VeeFlag.SUM_CHECK,
    VeeFlag.OVER_MAX_POWER,
)
"""The rules whose ``suspect`` setting turns a flagged ``actual`` interval ``suspect``
(``duplicate`` has ``suspect_on_conflict``; the others never do)."""

_ALWAYS: Final = (VeeFlag.DUPLICATE, VeeFlag.GAP)
"""Flags whose row columns every plan has (false where the rule did not run)."""


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
    rules = set(VeeFlag) - {VeeFlag.SUM_CHECK, VeeFlag.HIGH_USAGE, VeeFlag.LOW_USAGE}
    if reads is not None:
        rules.add(VeeFlag.SUM_CHECK)
    if history is not None:
        rules |= {VeeFlag.HIGH_USAGE, VeeFlag.LOW_USAGE}
    return _validate(intervals, meters, config, rules, reads=reads, history=history)


# ----------------------------------------------------------------------------------------------
# One public function per rule (each usable alone; validate() runs them all in one plan)


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
    return _validate(intervals, meters, config, {VeeFlag.DUPLICATE})


def materialise_gaps(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Add a ``missing`` row (null energy, flag ``gap``) for every absent grid interval.

    The grid of a meter runs on its interval length from local midnight of its first day to
    local midnight after its last day in ``intervals``.
    """
    return _validate(intervals, meters, config, {VeeFlag.GAP})


def flag_interval_count(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``interval_count`` on the intervals of each local day whose count of non-missing
    intervals differs from the day's length / interval length (DST days: 23 h or 25 h)."""
    return _validate(intervals, meters, config, {VeeFlag.INTERVAL_COUNT})


def flag_spikes(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``spike`` on the highest interval of a local day (import or export) when it is at
    least ``spike.min_peak_kwh`` [kWh] and more than ``spike.ratio`` times the day's
    third-highest interval."""
    return _validate(intervals, meters, config, {VeeFlag.SPIKE})


def flag_usage(
    intervals: pl.LazyFrame,
    meters: pl.LazyFrame | pl.DataFrame,
    config: VeeSettings,
    history: pl.LazyFrame,
) -> pl.LazyFrame:
    """Flag ``high_usage``/``low_usage`` on local days whose import [kWh] is above
    ``usage.high_multiple`` or (complete days only) below ``usage.low_multiple`` times the
    meter's average daily use over the ``history_days`` before the day: complete days of
    ``history`` and of ``intervals`` (same weekday/weekend type when it has
    ``usage.min_history_days`` such days, else all days; fewer days in all: not judged)."""
    rules = {VeeFlag.HIGH_USAGE, VeeFlag.LOW_USAGE}
    return _validate(intervals, meters, config, rules, history=history)


def flag_zero_runs(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``zero_run`` on contiguous runs of zero import (export zero or null) longer than
    ``zero_run.max_hours`` [h]; a missing interval ends a run."""
    return _validate(intervals, meters, config, {VeeFlag.ZERO_RUN})


def flag_negative(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``negative`` on negative import or export [kWh], and on any export of an
    ``import_only`` meter (reverse energy)."""
    return _validate(intervals, meters, config, {VeeFlag.NEGATIVE})


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
    return _validate(intervals, meters, config, {VeeFlag.SUM_CHECK}, reads=reads)


def flag_over_max_power(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``over_max_power`` where import or export / interval length [kW] exceeds the meter's
    ``max_power_kw`` times ``max_power.safety_factor``."""
    return _validate(intervals, meters, config, {VeeFlag.OVER_MAX_POWER})


def flag_prolonged_estimation(
    intervals: pl.LazyFrame, meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings
) -> pl.LazyFrame:
    """Flag ``prolonged_estimation`` on contiguous runs of ``estimated`` intervals longer than
    ``prolonged_estimation.max_hours`` [h]."""
    return _validate(intervals, meters, config, {VeeFlag.PROLONGED_ESTIMATION})


# ----------------------------------------------------------------------------------------------
# The plan
#
# One pass over the rows sorted by meter and interval_start. Each rule yields one boolean per row;
# the flags and the status are built once at the end from a bit mask of them. Two things keep it
# fast: per-meter and per-day values are computed on small tables and looked up by integer ids
# (``_mid`` per meter, ``_gid`` per local day, both runs of the sorted rows) with joins of the id
# column alone (:func:`_attach`), so the wide frame is never copied by a join; and the input's
# ``flags`` list column stays out of the pass (looked up by the input row number ``_j`` where a
# row has any).


def _validate(
    intervals: pl.LazyFrame,
    meters: pl.LazyFrame | pl.DataFrame,
    config: VeeSettings,
    rules: set[VeeFlag],
    *,
    reads: pl.LazyFrame | None = None,
    history: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Run ``rules`` (``HIGH_USAGE``/``LOW_USAGE`` stand for the usage rule) in one plan."""
    meter_table, zones = _meter_table(meters, config, intervals)
    source = (
        intervals.select(pl.col(c).cast(SCHEMA[c]) for c in COLUMNS)
        .with_columns(pl.col("flags").fill_null(pl.lit([], dtype=SCHEMA["flags"])))
        .with_row_index("_j")
        .with_columns((pl.col("flags").list.len() > 0).alias("_given"))
        .cache()
    )
    # Only copies of one (meter, interval) tie on the first two keys. Where every meter drops
    # its copies, the kept copy is chosen among the copies alone; where a group keeps them, all
    # rows are sorted by the full keep order as the copies stay in the output in that order.
    dedupe = VeeFlag.DUPLICATE in rules
    keeps_copies = not all(
        r.duplicate.enabled for r in (config.rules_for(None), *config.groups.values())
    )
    if dedupe and not keeps_copies:
        frame = source.drop("flags").sort(_KEY, nulls_last=True, maintain_order=True)
    else:
        frame = _keep_order_sort(source).drop("flags")
    frame = frame.with_columns(_first(pl.col("meter_id")).alias("_first"))
    frame = frame.with_columns(
        (pl.col("_first").cum_sum() - 1).alias("_mid"),
    ).with_columns(pl.col("interval_minutes").min().over("_mid").alias("_step"))
    if dedupe:
        frame = _duplicates(frame.cache(), source, meter_table)
    else:
        frame = frame.with_columns(
            pl.lit(value=False).alias("_dup"), pl.lit(value=False).alias("_dup_suspect")
        )
    frame = frame.cache()
    per_meter = _per_meter(frame, meter_table).cache()
    # the time zone first, the rest after the gap rows are in (fewer columns to move)
    frame = _attach(frame, per_meter.select("_mid", "_tz", "_gap_on"), "_mid")
    frame = frame.with_columns(
        local_date(pl.col("interval_start"), pl.col("_tz"), zones).alias("_day")
    )
    if VeeFlag.GAP in rules:
        frame = _gaps(frame, zones)
    else:
        frame = frame.with_columns(pl.lit(value=False).alias("_gap"))
    frame = _attach(frame.drop("_gap_on").cache(), per_meter.drop("_tz", "_gap_on"), "_mid")
    frame = frame.with_columns(pl.col("_import_only").fill_null(value=False))
    frame = frame.with_columns(_first(pl.col("_mid")).alias("_first"))
    frame = frame.with_columns(
        ((pl.col("_first") | pl.col("_day").ne_missing(pl.col("_day").shift(1))).cum_sum()).alias(
            "_gid"
        )
    )

    frame = frame.cache()
    days = _day_results(frame, meter_table, zones, rules, history, config.history_days)
    frame = _attach(frame, days, "_gid")
    hits = _row_hits(rules)
    if VeeFlag.SUM_CHECK in rules and reads is not None:
        frame = _sum_check(frame.cache(), reads)
        hits[VeeFlag.SUM_CHECK] = pl.col("_sum_check")
    mask = pl.sum_horizontal(
        pl.when(hit.fill_null(value=False)).then(pl.lit(_BIT[f], pl.Int64)).otherwise(0)
        for f, hit in hits.items()
    )
    frame = frame.with_columns(mask.alias("_mask"))
    return _finish(frame, source)


def _row_hits(rules: set[VeeFlag]) -> dict[VeeFlag, pl.Expr]:
    """Each rule's condition on a row of the prepared frame (the sum check is joined in)."""
    hits: dict[VeeFlag, pl.Expr] = {
        VeeFlag.DUPLICATE: pl.col("_dup"),
        VeeFlag.GAP: pl.col("_gap"),
    }
    for flag in (VeeFlag.INTERVAL_COUNT, VeeFlag.HIGH_USAGE, VeeFlag.LOW_USAGE):
        hits[flag] = (pl.col("_day_mask") & _BIT[flag]) != 0
    # a day's top value is null unless the interval(s) holding it are spikes
    hits[VeeFlag.SPIKE] = (pl.col(_IMPORT) == pl.col("_import_top")).fill_null(value=False) | (
        pl.col(_EXPORT) == pl.col("_export_top")
    ).fill_null(value=False)
    zero = (pl.col(_IMPORT) == 0) & (pl.col(_EXPORT).is_null() | (pl.col(_EXPORT) == 0))
    hits[VeeFlag.ZERO_RUN] = _run_hours(zero) > pl.col("_zero_max_h")
    hits[VeeFlag.NEGATIVE] = _negative()
    hits[VeeFlag.OVER_MAX_POWER] = _over_max_power()
    estimated = pl.col("status") == IntervalStatus.ESTIMATED.value
    hits[VeeFlag.PROLONGED_ESTIMATION] = _run_hours(estimated) > pl.col("_estimated_max_h")
    return {flag: hit for flag, hit in hits.items() if flag in rules or flag in _ALWAYS}


def _first(key: pl.Expr) -> pl.Expr:
    """The first row of each run of equal ``key`` values (null equals null)."""
    return (pl.int_range(pl.len()) == 0) | key.ne_missing(key.shift(1))


def _attach(frame: pl.LazyFrame, table: pl.LazyFrame, on: str) -> pl.LazyFrame:
    """``frame`` with the other columns of ``table`` (unique on ``on``) looked up by ``on``.

    Only the key column goes through the join, and the result is put beside ``frame``: a left
    join of the whole frame would copy every column of it.
    """
    looked_up = frame.select(on).join(table, on=on, how="left", maintain_order="left")
    return _attach_rows(frame, looked_up.drop(on))


def _attach_rows(frame: pl.LazyFrame, columns: pl.LazyFrame) -> pl.LazyFrame:
    """``frame`` with ``columns``, computed from ``frame`` row for row, beside it."""
    return pl.concat([frame, columns], how="horizontal")


def _keep_order_sort(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Sorted by meter, interval_start, then the copies of one interval by :data:`KEEP_ORDER`."""
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
        maintain_order=True,
    )


def _status_rank() -> pl.Expr:
    ranks = {status.value: i for i, status in enumerate(KEEP_ORDER)}
    return pl.col("status").replace_strict(ranks, default=len(KEEP_ORDER), return_dtype=pl.Int32)


def _finish(frame: pl.LazyFrame, source: pl.LazyFrame) -> pl.LazyFrame:
    """The output columns: flags from the bit mask and the input flags, suspect status."""
    names = pl.lit(_FLAG_LISTS).gather(pl.col("_mask"))
    suspect_bits = pl.col("_mask") & pl.col("_suspect_mask").fill_null(0)
    status = (
        pl.when(
            (pl.col("status") == IntervalStatus.ACTUAL.value)
            & ((suspect_bits != 0) | pl.col("_dup_suspect"))
        )
        .then(pl.lit(IntervalStatus.SUSPECT.value))
        .otherwise(pl.col("status"))
    )
    frame = frame.with_columns(names.alias("flags"), status.alias("status"))
    # The few rows that came with flags of their own: the union, de-duplicated and sorted.
    frame = frame.with_row_index("_r").cache()
    merged = (
        frame.filter(pl.col("_given"))
        .select("_r", "_j", "flags")
        .join(source.filter(pl.col("_given")).select("_j", pl.col("flags").alias("_in")), on="_j")
        .select("_r", pl.concat_list("_in", "flags").list.unique().list.sort().alias("_merged"))
    )
    return _attach(frame, merged, "_r").select(
        pl.coalesce("_merged", "flags").cast(SCHEMA["flags"]).alias("flags")
        if c == "flags"
        else pl.col(c).cast(SCHEMA[c])
        for c in COLUMNS
    )


def _end() -> pl.Expr:
    return pl.col("interval_start") + pl.duration(minutes=pl.col("interval_minutes"))


def _run_hours(condition: pl.Expr) -> pl.Expr:
    """Length [h] of the contiguous run of ``condition`` each row belongs to (0 outside runs).

    Rows must be sorted by meter (``_first`` marks a meter's first row) and ``interval_start``;
    a break in time ends a run. A run's length is the difference of a cumulative sum of minutes
    at its ends, exact in integers.
    """
    cond = condition.fill_null(value=False)
    new_run = (
        pl.col("_first") | (cond != cond.shift(1)) | (pl.col("interval_start") != _end().shift(1))
    ).fill_null(value=True)
    minutes = pl.col("interval_minutes").cast(pl.Int64).fill_null(0)
    total = minutes.cum_sum()
    before = pl.when(new_run).then(total - minutes).forward_fill()
    through = pl.when(new_run.shift(-1).fill_null(value=True)).then(total).backward_fill()
    hours = (through - before).cast(pl.Float64) / 60.0
    return pl.when(cond).then(hours).otherwise(0.0)


# ----------------------------------------------------------------------------------------------
# Meters: attributes and rule parameters


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


def _meter_table(
    meters: pl.LazyFrame | pl.DataFrame, config: VeeSettings, intervals: pl.LazyFrame
) -> tuple[pl.LazyFrame, list[str]]:
    """One row per meter id of ``meters`` and ``intervals``: ``_tz``, ``_import_only``,
    ``_max_power_kw`` and the parameters of the meter's group (a meter absent from ``meters``:
    the defaults, on UTC days); and the checked time zones."""
    meters = meters.lazy()
    names = meters.collect_schema().names()
    zones = _zones(meters.select(pl.col("timezone").cast(pl.String)))  # absent meters: UTC
    meters = intervals.select(pl.col("meter_id").cast(pl.String).unique()).join(
        meters.with_columns(pl.col("meter_id").cast(pl.String)), on="meter_id", how="left"
    )
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
    return _meter_params(meters, config), zones


def _per_meter(frame: pl.LazyFrame, meter_table: pl.LazyFrame) -> pl.LazyFrame:
    """Per ``_mid``: what the row rules need of the meter (every meter is in ``meter_table``)."""
    enabled = {
        rule: _param(rule, "enabled") for rule in ("max_power", "zero_run", "prolonged_estimation")
    }
    suspect_mask = pl.sum_horizontal(
        pl.when(_param(_RULE_OF[f], "suspect")).then(pl.lit(_BIT[f], pl.Int64)).otherwise(0)
        for f in _SUSPECT
    )
    return (
        frame.filter(pl.col("_first"))
        .select("_mid", "meter_id")
        .join(meter_table, on="meter_id", how="left", maintain_order="left")
        .select(
            "_mid",
            pl.col("_tz").fill_null("UTC"),
            "_import_only",
            _param("gap", "enabled").alias("_gap_on"),
            _param("negative", "enabled").alias("_negative_on"),
            pl.when(enabled["max_power"])
            .then(pl.col("_max_power_kw") * _param("max_power", "safety_factor"))
            .alias("_max_power_limit"),
            pl.when(enabled["zero_run"]).then(_param("zero_run", "max_hours")).alias("_zero_max_h"),
            pl.when(enabled["prolonged_estimation"])
            .then(_param("prolonged_estimation", "max_hours"))
            .alias("_estimated_max_h"),
            _param("sum_check", "enabled").alias("_sum_check_on"),
            _param("sum_check", "tolerance_pct").alias("_sum_check_pct"),
            _param("sum_check", "tolerance_kwh").alias("_sum_check_kwh"),
            suspect_mask.alias("_suspect_mask"),
        )
    )


# ----------------------------------------------------------------------------------------------
# The rules' cores


def _duplicates(
    frame: pl.LazyFrame, source: pl.LazyFrame, meter_table: pl.LazyFrame
) -> pl.LazyFrame:
    """Keep one row per (meter, interval); ``_dup``/``_dup_suspect`` on the kept copy.

    ``frame`` is sorted by the key; the copies, rows equal to a neighbour on it, are few, and
    only they are ordered by :data:`KEEP_ORDER` to choose the kept one.
    """
    row = pl.int_range(pl.len())

    def same(offset: int) -> pl.Expr:
        return pl.all_horizontal(pl.col(c).eq_missing(pl.col(c).shift(offset)) for c in _KEY)

    frame = frame.with_columns(
        (((row > 0) & same(1)) | ((row < pl.len() - 1) & same(-1))).alias("_copy")
    )
    enabled = _param("duplicate", "enabled")
    first = pl.int_range(pl.len()).over(_KEY) == 0
    conflict = (pl.col(_IMPORT).n_unique().over(_KEY) > 1) | (
        pl.col(_EXPORT).n_unique().over(_KEY) > 1
    )
    copies = _keep_order_sort(
        source.join(frame.filter(pl.col("_copy")).select("_j"), on="_j", how="semi").join(
            meter_table.select(
                "meter_id",
                _param("duplicate", "enabled"),
                _param("duplicate", "suspect_on_conflict"),
            ),
            on="meter_id",
            how="left",
        )
    ).select(
        "_j",
        # as a filter on ``~enabled | first``: a null setting (meter not in ``meters``) keeps
        # only the first copy, unflagged
        (~enabled | first).fill_null(value=False).alias("_keep"),
        enabled.fill_null(value=False).alias("_dup"),
        (enabled & conflict & _param("duplicate", "suspect_on_conflict"))
        .fill_null(value=False)
        .alias("_dup_suspect"),
    )
    return (
        _attach(frame, copies, "_j")
        .filter(pl.col("_keep").fill_null(value=True))
        .with_columns(
            pl.col("_dup", "_dup_suspect").fill_null(value=False),
            _first(pl.col("_mid")).alias("_first"),  # a meter's first row may have gone
        )
        .drop("_copy", "_keep")
    )


def _gaps(frame: pl.LazyFrame, zones: Sequence[str]) -> pl.LazyFrame:
    """Insert a ``missing`` row (``_gap``) at every absent point of each meter's grid.

    The grid runs on ``_step`` from the earliest local midnight of the meter's days to the
    latest local midnight after them. Each row gets one slot per absent grid point up to the
    next row (a meter's first row also those before it) and is exploded in place, so the rows
    stay sorted without a sort.
    """
    tz = pl.col("_tz")
    frame = frame.cache()
    bounds = (
        frame.filter(pl.col("_first") | pl.col("_day").ne_missing(pl.col("_day").shift(1)))
        .select(
            "_mid",
            local_midnight(pl.col("_day"), tz, zones).alias("_from"),
            local_midnight(pl.col("_day") + dt.timedelta(days=1), tz, zones).alias("_to"),
        )
        .group_by("_mid")
        .agg(
            pl.col("_from").min().dt.epoch("us"),
            pl.col("_to").max().dt.epoch("us"),
        )
    )
    frame = _attach(frame, bounds, "_mid")
    start = pl.col("interval_start").dt.epoch("us")
    step = pl.col("_step").cast(pl.Int64) * _US_PER_MINUTE
    lo, hi = pl.col("_from"), pl.col("_to")
    on = pl.col("_gap_on") & lo.is_not_null() & hi.is_not_null()
    last = pl.col("_mid").ne_missing(pl.col("_mid").shift(-1)).fill_null(value=True)
    after_from = pl.max_horizontal(lo + step * ((start - lo) // step + 1), lo)
    after_to = pl.min_horizontal(pl.when(last).then(hi).otherwise(start.shift(-1)), hi)

    def count(first: pl.Expr, end: pl.Expr) -> pl.Expr:  # grid points in [first, end)
        return pl.max_horizontal((end - first + step - 1) // step, 0)

    before = pl.when(on & pl.col("_first")).then(count(lo, pl.min_horizontal(start, hi)))
    after = pl.when(on).then(count(after_from, after_to))
    k, n_before = pl.col("_k"), pl.col("_before")
    gap = k != n_before
    slot = (
        pl.when(k < n_before)
        .then(lo + k * step)
        .otherwise(pl.col("_after") + (k - n_before - 1) * step)
    )
    missing: dict[str, pl.Expr] = {
        "interval_start": pl.from_epoch(slot, time_unit="us").dt.replace_time_zone("UTC"),
        "interval_minutes": pl.col("_step").cast(SCHEMA["interval_minutes"]),
        _IMPORT: pl.lit(None, pl.Float64),
        _EXPORT: pl.lit(None, pl.Float64),
        "status": pl.lit(IntervalStatus.MISSING.value),
        "method": pl.lit(None, pl.String),
        "_j": pl.lit(None, pl.UInt32),
        "_dup": pl.lit(value=False),
        "_dup_suspect": pl.lit(value=False),
        "_given": pl.lit(value=False),
    }
    return (
        frame.with_columns(
            before.fill_null(0).alias("_before"),
            after.fill_null(0).alias("_n_after"),
            after_from.alias("_after"),
        )
        .with_columns(
            pl.int_ranges(0, pl.col("_before") + 1 + pl.col("_n_after"), dtype=pl.Int64).alias("_k")
        )
        .explode("_k")
        .with_columns(gap.alias("_gap"))
        .with_columns(
            pl.when(pl.col("_gap")).then(value).otherwise(pl.col(name)).alias(name)
            for name, value in missing.items()
        )
        .with_columns(
            pl.when(pl.col("_gap"))
            .then(local_date(pl.col("interval_start"), tz, zones))
            .otherwise(pl.col("_day"))
            .alias("_day")
        )
        .drop("_from", "_to", "_before", "_n_after", "_after", "_k")
    )


def _day_results(
    frame: pl.LazyFrame,
    meter_table: pl.LazyFrame,
    zones: Sequence[str],
    rules: set[VeeFlag],
    history: pl.LazyFrame | None,
    window_days: int,
) -> pl.LazyFrame:
    """Per local day ``_gid``: ``_day_mask`` (interval count, high/low usage) and the day's top
    import/export where that interval is a spike (else null)."""
    imp, exp = pl.col(_IMPORT), pl.col(_EXPORT)
    days = frame.group_by("_gid").agg(
        pl.col("meter_id", "_day", "_tz", "_step").first(),
        (pl.col("status") != IntervalStatus.MISSING.value).sum().alias("_present"),
        imp.max().alias("_import_max"),
        imp.drop_nulls().top_k(3).min().alias("_import_third"),
        imp.count().alias("_import_count"),
        exp.max().alias("_export_max"),
        exp.drop_nulls().top_k(3).min().alias("_export_third"),
        exp.count().alias("_export_count"),
        imp.sum().alias("_total"),
    )
    tz = pl.col("_tz")
    days = days.join(meter_table.drop("_tz"), on="meter_id", how="left").with_columns(
        (
            local_midnight(pl.col("_day") + dt.timedelta(days=1), tz, zones)
            - local_midnight(pl.col("_day"), tz, zones)
        )
        .dt.total_minutes()
        .alias("_day_minutes")
    )
    expected = pl.col("_day_minutes") / pl.col("_step")
    bits: list[pl.Expr] = []
    if VeeFlag.INTERVAL_COUNT in rules:
        count = _param("interval_count", "enabled") & (pl.col("_present") != expected)
        bits.append(_bit(count, VeeFlag.INTERVAL_COUNT))
    if history is not None and VeeFlag.HIGH_USAGE in rules:
        days, high, low = _usage(days, history, expected, window_days)
        bits += [_bit(high, VeeFlag.HIGH_USAGE), _bit(low, VeeFlag.LOW_USAGE)]
    spike = VeeFlag.SPIKE in rules
    return days.select(
        "_gid",
        pl.sum_horizontal(bits or [pl.lit(0, pl.Int64)]).alias("_day_mask"),
        _spike_top("_import", enabled=spike).alias("_import_top"),
        _spike_top("_export", enabled=spike).alias("_export_top"),
    )


def _bit(condition: pl.Expr, flag: VeeFlag) -> pl.Expr:
    return pl.when(condition.fill_null(value=False)).then(pl.lit(_BIT[flag], pl.Int64)).otherwise(0)


def _spike_top(prefix: str, *, enabled: bool) -> pl.Expr:
    """A day's highest value when the interval(s) holding it are spikes: at least three values,
    the highest at least ``min_peak_kwh`` and above ``ratio`` times the third-highest."""
    top = pl.col(f"{prefix}_max")
    spike = (
        _param("spike", "enabled")
        & (pl.col(f"{prefix}_count") >= 3)
        & (top >= _param("spike", "min_peak_kwh"))
        & (top > _param("spike", "ratio") * pl.col(f"{prefix}_third"))
    ).fill_null(value=False)
    return pl.when(pl.lit(enabled) & spike).then(top).otherwise(pl.lit(None, pl.Float64))


def _usage(
    days: pl.LazyFrame, history: pl.LazyFrame, expected: pl.Expr, window_days: int
) -> tuple[pl.LazyFrame, pl.Expr, pl.Expr]:
    """``days`` with the meter's average daily use, and the high/low usage conditions.

    A day's average daily use is the mean import of the meter's complete days in the
    ``window_days`` before it: days of ``history`` before the frame's first day, and the frame's
    own complete days before it. So a day is judged the same whether a run covers the month or
    only that day with the month before it as history.
    """
    first_day = days.group_by("meter_id").agg(pl.col("_day").min().alias("_first"))
    past = (
        history.select(
            pl.col("meter_id").cast(pl.String),
            pl.col("day").cast(pl.Date).alias("_day"),
            pl.col(_IMPORT).cast(pl.Float64).alias("_use"),
        )
        .join(first_day, on="meter_id", how="inner")
        .filter(pl.col("_day") < pl.col("_first"))
        .drop("_first")
    )
    complete = pl.col("_import_count") == expected
    own = days.select("meter_id", "_day", pl.when(complete).then(pl.col("_total")).alias("_use"))
    daily = (
        pl.concat([past, own], how="vertical_relaxed")
        .with_columns((pl.col("_day").dt.weekday() >= 6).alias("_weekend"))
        .sort("meter_id", "_day")
    )

    def trailing(keys: list[str], name: str) -> pl.LazyFrame:
        return daily.rolling(
            index_column="_day", period=f"{window_days}d", closed="left", group_by=keys
        ).agg(
            pl.col("_use").mean().alias(f"_{name}_mean"),
            pl.col("_use").count().alias(f"_{name}_days"),
        )

    by_type = trailing(["meter_id", "_weekend"], "type").drop("_weekend")
    overall = trailing(["meter_id"], "all")
    need = _param("usage", "min_history_days")
    average = (
        pl.when(pl.col("_type_days") >= need)
        .then(pl.col("_type_mean"))
        .when(pl.col("_all_days") >= need)
        .then(pl.col("_all_mean"))
        .otherwise(None)
    )
    days = (
        days.join(by_type, on=["meter_id", "_day"], how="left")
        .join(overall, on=["meter_id", "_day"], how="left")
        .with_columns(average.alias("_average"))
    )
    total = pl.col("_total")
    enabled = _param("usage", "enabled") & (pl.col("_average") > 0)
    high = enabled & (total > _param("usage", "high_multiple") * pl.col("_average"))
    low = enabled & complete & (total < _param("usage", "low_multiple") * pl.col("_average"))
    return days, high, low


def _negative() -> pl.Expr:
    imp, exp = pl.col(_IMPORT), pl.col(_EXPORT)
    wrong = (imp < 0).fill_null(value=False) | (exp < 0).fill_null(value=False)
    reverse = pl.col("_import_only") & (exp > 0).fill_null(value=False)
    return pl.col("_negative_on") & (wrong | reverse)


def _over_max_power() -> pl.Expr:
    hours = pl.col("interval_minutes").cast(pl.Float64) / 60.0
    limit = pl.col("_max_power_limit")
    return ((pl.col(_IMPORT) / hours) > limit).fill_null(value=False) | (
        (pl.col(_EXPORT) / hours) > limit
    ).fill_null(value=False)


def _sum_check(frame: pl.LazyFrame, reads: pl.LazyFrame) -> pl.LazyFrame:
    """``frame`` with ``_sum_check``: compare interval sums with register differences between
    consecutive reads.

    The intervals of a meter define a cumulative curve ``E(t)`` (linear inside an interval);
    each read looks up ``E`` at its time with an as-of join, and a span's interval sum is
    ``E(b) - E(a)``. Missing intervals are counted the same way so such spans are skipped, and
    so are spans over which the register fell (a rollover, reset or replacement: the register
    rules judge those).
    An interval is flagged when the last failed span ``(a, b]`` with ``a`` before its end ends
    after its start.
    """
    # The as-of joins need each side sorted by its key within each ``by`` group: the rows are
    # sorted by meter and interval_start, the reads by ts; Polars cannot verify that per
    # group, hence check_sortedness=False.
    imp = pl.col(_IMPORT)
    null = imp.is_null().cast(pl.Int64)
    curve = frame.select(
        "_mid",
        "interval_start",
        _end().alias("_end"),
        imp.fill_null(0.0).alias("_e"),
        (imp.fill_null(0.0).cum_sum().over("_mid") - imp.fill_null(0.0)).alias("_cum0"),
        (null.cum_sum().over("_mid") - null).alias("_miss0"),
        null.alias("_null"),
        pl.col("_sum_check_on").alias("_on"),
        pl.col("_sum_check_pct").alias("_pct"),
        pl.col("_sum_check_kwh").alias("_tol"),
    )
    ts = pl.col("ts")
    span_us = (pl.col("_end") - pl.col("interval_start")).dt.total_microseconds()
    into_us = (ts - pl.col("interval_start")).dt.total_microseconds()
    share = (into_us.cast(pl.Float64) / span_us.cast(pl.Float64)).clip(0.0, 1.0)
    # Reads of meters without intervals are never covered: they are dropped, and the others
    # get the integer meter id of the rows.
    meter_ids = frame.filter(pl.col("_first")).select("meter_id", "_mid")
    at_read = (
        reads.select(
            pl.col("meter_id").cast(pl.String),
            pl.col("ts").cast(SCHEMA["interval_start"]),
            pl.col(_IMPORT).cast(pl.Float64).alias("_reg"),
        )
        .filter(pl.col("_reg").is_not_null())
        .join(meter_ids, on="meter_id", how="inner")
        .drop("meter_id")
        .sort("ts")
        # one read per (meter, ts), any of them (reads without ts are never covered)
        .filter((pl.col("ts") != pl.col("ts").shift(1).over("_mid")).fill_null(value=True))
        .join_asof(
            curve,
            left_on="ts",
            right_on="interval_start",
            by="_mid",
            check_sortedness=False,
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
    )
    prev = {c: pl.col(c).shift(1).over("_mid") for c in ("ts", "_reg", "_E", "_me", "_covered")}
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
                & (diff >= 0)
                & ((got - diff).abs() > tolerance)
            )
            .fill_null(value=False)
            .alias("_fail"),
            prev["ts"].alias("_a"),
        )
        .filter(pl.col("_fail"))
        .select("_mid", "_a", pl.col("ts").alias("_b"))
        .sort("_mid", "_a")
    )
    # Failed spans of a meter are disjoint and ordered, so the last one starting by an
    # interval's last microsecond is either the last one starting by its start (P) or, if one
    # starts inside the interval, one that ends after its start anyway (Q).
    start = pl.col("interval_start")
    last_us = _end() - _ONE_US
    rows = frame.with_columns(last_us.alias("_last_us"), (start + _ONE_US).alias("_after"))
    by_start = rows.join_asof(
        failed.rename({"_a": "_a_p", "_b": "_b_p"}),
        left_on="interval_start",
        right_on="_a_p",
        by="_mid",
        check_sortedness=False,
    )
    inside = by_start.join_asof(
        failed.select("_mid", pl.col("_a").alias("_a_q")),
        left_on="_after",
        right_on="_a_q",
        by="_mid",
        strategy="forward",
        check_sortedness=False,
    )
    return inside.with_columns(
        (
            ((pl.col("_a_p") <= pl.col("_last_us")) & (pl.col("_b_p") > start)).fill_null(
                value=False
            )
            | (pl.col("_a_q") <= pl.col("_last_us")).fill_null(value=False)
        ).alias("_sum_check")
    ).drop("_last_us", "_after", "_a_p", "_b_p", "_a_q")
