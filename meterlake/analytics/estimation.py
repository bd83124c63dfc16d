"""Estimation, the "E" of VEE: fill the intervals validation could not trust, and say how.

What goes in
------------
``intervals``: one row per meter and grid interval with ``meter_id`` · ``interval_start`` (UTC)
· ``interval_minutes`` · ``energy_import_kwh`` · ``energy_export_kwh`` · ``status`` · ``flags``
· ``method``. Intervals without data are rows with status ``missing`` and null energy.
Intervals flagged ``gap_apportioned`` (:mod:`meterlake.analytics.deltas`) carry energy that two
register reads bound exactly, spread flat over the gap: the sum is right, the shape is not.
``meters`` (``meter_id``, ``timezone``, ``group``) puts intervals on local days and slots; an
optional holiday calendar makes day types, and optional explicit register totals
(``register_totals``) bound further gaps.

What is estimated
-----------------
*Targets* are intervals with status ``missing`` and intervals flagged ``gap_apportioned``
(status ``actual``). *Reference* intervals are ``actual`` or ``edited`` and carry none of the
flags of untrusted energy (``gap_apportioned``, ``meter_reset``, ``negative_delta``,
``implausible_delta``). ``suspect`` intervals are neither: they keep their value and flag until
someone edits them (data quality is data; nothing is silently fixed). Each channel
(``energy_import_kwh``, ``energy_export_kwh``) is estimated on its own; the export channel is
only required of meters that report export at all.

The methods, in order
---------------------
``linear`` (flag ``estimated_linear``)
    A run of targets no longer than :attr:`EstimationRules.max_linear_gap_h` with reference
    intervals right before and right after it: a straight line between them, excluding both
    ends (75, _, _, _, _, 100 becomes 75, 80, 85, 90, 95, 100).
``like_day`` (flag ``estimated_like_day``)
    Otherwise: the average of the same local time slot on the nearest
    :attr:`EstimationRules.like_days` days of the same day type (weekday / weekend / holiday)
    of the same meter within :attr:`EstimationRules.like_day_window_days`, before or after,
    nearest first and earlier first on a tie. Only *clean* days count: every interval of the
    local day is a reference interval (no outage, no estimate, no suspect).
``class_profile`` (flag ``estimated_class_profile``)
    Otherwise (a meter without usable history): the share of the day's energy of the local
    slot in the meter's group and day type (:func:`class_load_profiles`, computed from the
    fleet's clean days unless given) times the group's average daily energy.
``scaled`` (flag ``estimated_scaled``, plus the flag of the shape used)
    Where a register difference bounds the targets -- a run of ``gap_apportioned`` intervals,
    or the targets inside an explicit ``register_totals`` window (less the intervals of the
    window that are not targets) -- the shape is, for the whole run: ``linear`` for short runs
    that have it, else ``like_day``, else ``class_profile``, else ``linear``, else ``flat``
    (``estimated_flat``). It is scaled so the run sums exactly to the register difference;
    ``method`` is ``scaled`` and the flags say the shape. A negative or unknown remainder is
    not scaled (``scaling_skipped``; ``gap_apportioned`` intervals then keep their energy).

Anything still unfilled stays ``missing`` with null energy, never 0. An interval is only
marked ``estimated`` when every channel it needs has a value; estimates are never negative
(both registers count up). ``method`` names the last method that set the value, ``flags``
keeps the flags the interval had and adds every method used.

Local days come from each meter's IANA time zone (DST days have 92 or 100 quarter hours; a
slot is the local minute of the day, so the repeated hour of the autumn day shares its slot).

Sources: the CPUC "CA interval data VEE rules" (MDMA, D.97-12-048): linear interpolation for
gaps up to 2 hours, like days for longer ones, days with outages or estimates excluded from
reference; Itron IEE MDM's Linear Interpolation (the 75 ... 100 example), Historical (nearest
like days of the same day type, holidays as their own type; estimated or outage days are
not eligible) and Scale Unscaled Estimates (estimates scaled to match boundary register
reads exactly); Oracle Utilities MDM's Interval Interpolation, Proxy Day and Profile
Estimation rules (class/profile shapes where the meter has no history).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import polars as pl

from meterlake.config.errors import ConfigError
from meterlake.config.localtime import local_time, per_zone
from meterlake.config.schemas import IntervalStatus
from meterlake.config.timezones import is_timezone

IMPORT: Final = "energy_import_kwh"
EXPORT: Final = "energy_export_kwh"
CHANNELS: Final = (IMPORT, EXPORT)
KEY: Final = ("meter_id", "interval_start")

# Flags of pkg deltas (meterlake.analytics.deltas.DeltaFlag) whose energy is not a reference.
GAP_APPORTIONED: Final = "gap_apportioned"
UNTRUSTED_FLAGS: Final = (GAP_APPORTIONED, "meter_reset", "negative_delta", "implausible_delta")

DAY_TYPES: Final = ("weekday", "weekend", "holiday")


class EstimationMethod(StrEnum):
    """The ``method`` of an estimated interval."""

    LINEAR = "linear"
    LIKE_DAY = "like_day"
    CLASS_PROFILE = "class_profile"
    FLAT = "flat"
    SCALED = "scaled"


class EstimationFlag(StrEnum):
    """The flags estimation adds to an interval (in this order)."""

    ESTIMATED_LINEAR = "estimated_linear"
    ESTIMATED_LIKE_DAY = "estimated_like_day"
    ESTIMATED_CLASS_PROFILE = "estimated_class_profile"
    ESTIMATED_FLAT = "estimated_flat"
    ESTIMATED_SCALED = "estimated_scaled"
    SCALING_SKIPPED = "scaling_skipped"


_FLAG_OF: Final = {
    EstimationMethod.LINEAR: EstimationFlag.ESTIMATED_LINEAR,
    EstimationMethod.LIKE_DAY: EstimationFlag.ESTIMATED_LIKE_DAY,
    EstimationMethod.CLASS_PROFILE: EstimationFlag.ESTIMATED_CLASS_PROFILE,
    EstimationMethod.FLAT: EstimationFlag.ESTIMATED_FLAT,
}

PROFILE_SCHEMA: Final = pl.Schema(
    {
        "group": pl.String(),
        "day_type": pl.String(),
        "slot_minute": pl.Int32(),
        "share_import": pl.Float64(),
        "share_export": pl.Float64(),
        "daily_import_kwh": pl.Float64(),
        "daily_export_kwh": pl.Float64(),
    }
)
"""Class load profiles: per group, day type and local slot (minute of the day), the slot's
share of the day's energy [1] per channel, and the group's average daily energy [kWh]."""

_SHARE: Final = {IMPORT: "share_import", EXPORT: "share_export"}
_DAILY: Final = {IMPORT: "daily_import_kwh", EXPORT: "daily_export_kwh"}
_REFERENCE_STATUS: Final = (IntervalStatus.ACTUAL.value, IntervalStatus.EDITED.value)


@dataclass(frozen=True)
class EstimationRules:
    """The parameters of estimation (see the module docstring).

    Parameters
    ----------
    max_linear_gap_h
        Longest run of targets filled by linear interpolation [h] (CA VEE rules: 2 h).
    like_days
        How many like days are averaged (Itron IEE Historical uses 3; 4 here, one a week of a
        28-day window).
    like_day_window_days
        How far like days may lie from the estimated day, before or after [days].
    weekend_days
        ISO weekdays (1 = Monday ... 7 = Sunday) of day type ``weekend``.
    default_timezone
        IANA time zone of meters missing from the ``meters`` frame (DESIGN: Asia/Shanghai).
    """

    max_linear_gap_h: float = 2.0
    like_days: int = 4
    like_day_window_days: int = 28
    weekend_days: tuple[int, ...] = (6, 7)
    default_timezone: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        if not self.max_linear_gap_h >= 0:
            raise ConfigError(f"max_linear_gap_h={self.max_linear_gap_h!r}: use hours >= 0")
        if self.like_days < 1:
            raise ConfigError(f"like_days={self.like_days!r}: use at least 1 day")
        if self.like_day_window_days < 1:
            raise ConfigError(
                f"like_day_window_days={self.like_day_window_days!r}: use at least 1 day"
            )
        if not all(1 <= d <= 7 for d in self.weekend_days):
            raise ConfigError(f"weekend_days={self.weekend_days!r}: use ISO weekdays 1..7")
        if not is_timezone(self.default_timezone):
            raise ConfigError(
                f"default_timezone={self.default_timezone!r}: use an IANA time zone such as "
                "Asia/Shanghai"
            )


def day_type(
    local_date: pl.Expr,
    holidays: Collection[dt.date] = (),
    weekend_days: tuple[int, ...] = (6, 7),
) -> pl.Expr:
    """``holiday``, ``weekend`` or ``weekday`` of local dates.

    >>> dates = pl.DataFrame({"d": [dt.date(2026, 10, 1), dt.date(2026, 10, 10),
    ...                             dt.date(2026, 10, 12)]})
    >>> dates.select(day_type(pl.col("d"), holidays=[dt.date(2026, 10, 1)]))[
    ...     "literal"].to_list()
    ['holiday', 'weekend', 'weekday']
    """
    return (
        pl.when(local_date.is_in(pl.Series(sorted(holidays), dtype=pl.Date).implode()))
        .then(pl.lit("holiday"))
        .when(local_date.dt.weekday().is_in(list(weekend_days)))
        .then(pl.lit("weekend"))
        .otherwise(pl.lit("weekday"))
    )


def local_slots(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    *,
    rules: EstimationRules | None = None,
    holidays: Collection[dt.date] = (),
) -> pl.LazyFrame:
    """Add each interval's local ``local_date``, ``slot_minute``, ``day_type`` and ``group``.

    Parameters
    ----------
    intervals
        Rows with ``meter_id`` and ``interval_start`` (UTC).
    meters
        ``meter_id``, ``timezone`` (IANA) and ``group`` of each meter: a small parameter table
        whose time zones become expression literals, hence eager. Meters missing from it get
        :attr:`EstimationRules.default_timezone` and a null group.
    rules
        Parameters (:class:`EstimationRules` defaults when None).
    holidays
        Local dates of day type ``holiday``.

    Returns
    -------
    pl.LazyFrame
        ``intervals`` with the four columns added, row order kept.

    >>> t = dt.datetime(2026, 10, 1, 15, 45, tzinfo=dt.UTC)
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "timezone": ["Asia/Shanghai"],
    ...                        "group": ["residential"]})
    >>> rows = pl.LazyFrame({"meter_id": ["m1"], "interval_start": [t]})
    >>> local_slots(rows, meters).collect().row(0)[2:]
    (datetime.date(2026, 10, 1), 1425, 'weekday', 'residential')
    """
    rules = rules or EstimationRules()
    meta, zones = _meter_columns(meters, rules)
    return _with_local(intervals.with_columns(meta), zones, rules, holidays).select(
        pl.exclude("_tz", "group"), pl.col("group")
    )


def _meter_columns(meters: pl.DataFrame, rules: EstimationRules) -> tuple[list[pl.Expr], list[str]]:
    """Each row's ``_tz`` and ``group`` by its ``meter_id`` (first row of ``meters`` wins; null
    for meters missing from it), and the zones in use."""
    meta = meters.select(
        pl.col("meter_id").cast(pl.String),
        pl.col("timezone").cast(pl.String).alias("_tz"),
        pl.col("group").cast(pl.String),
    ).unique("meter_id", keep="first", maintain_order=True)
    zones = sorted({rules.default_timezone, *meta["_tz"].drop_nulls().to_list()})
    # a lookup of a small table, cheaper than a join that carries every column along
    lookup = [
        pl.col("meter_id")
        .cast(pl.String)
        .replace_strict(meta["meter_id"], meta[c], default=None, return_dtype=pl.String)
        .alias(c)
        for c in ("_tz", "group")
    ]
    return lookup, zones


def _with_local(
    frame: pl.LazyFrame, zones: list[str], rules: EstimationRules, holidays: Collection[dt.date]
) -> pl.LazyFrame:
    """Add ``local_date``, ``slot_minute`` and ``day_type`` to rows with ``interval_start`` and
    ``_tz`` (null: :attr:`EstimationRules.default_timezone`), row order kept.

    A fleet has few distinct instants (one per grid interval) but many rows: the local fields
    are computed once per instant and zone, then joined to the rows by instant.
    """
    per_instant = frame.select("interval_start").unique()
    for i, zone in enumerate(zones):
        local = local_time(pl.col("interval_start"), pl.lit(zone), [zone])
        date = local.dt.date()
        per_instant = per_instant.with_columns(
            pl.struct(
                date.alias("local_date"),
                (local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32)).alias(
                    "slot_minute"
                ),
                day_type(date, holidays, rules.weekend_days).alias("day_type"),
            ).alias(f"_local{i}")
        )
    column = {zone: f"_local{i}" for i, zone in enumerate(zones)}
    tz = pl.col("_tz").fill_null(rules.default_timezone)
    return (
        frame.join(per_instant, on="interval_start", how="left", maintain_order="left")
        .with_columns(per_zone(tz, zones, lambda zone: pl.col(column[zone])).alias("_local"))
        .drop(*column.values())
        .unnest("_local")
    )


def reference_expr() -> pl.Expr:
    """True for intervals whose energy may serve as reference (see the module docstring)."""
    untrusted = pl.any_horizontal(pl.col("flags").list.contains(f) for f in UNTRUSTED_FLAGS)
    return pl.col("status").is_in(list(_REFERENCE_STATUS)) & ~untrusted.fill_null(value=False)


def class_load_profiles(local: pl.LazyFrame) -> pl.LazyFrame:
    """Class load profiles from the fleet's clean days (:data:`PROFILE_SCHEMA`).

    Parameters
    ----------
    local
        Intervals with the columns of :func:`local_slots`.

    Returns
    -------
    pl.LazyFrame
        Per group, day type and slot: the slot's share of the day's energy over all clean
        meter-days of the group and day type [1], and their average daily energy [kWh].

    >>> t = dt.datetime(2026, 10, 5, 16, tzinfo=dt.UTC)  # local midnight in Shanghai
    >>> rows = pl.LazyFrame({"meter_id": ["m1"] * 24,
    ...     "interval_start": [t + dt.timedelta(hours=h) for h in range(24)],
    ...     "interval_minutes": [60] * 24, "energy_import_kwh": [1.0] * 12 + [3.0] * 12,
    ...     "energy_export_kwh": [None] * 24, "status": ["actual"] * 24, "flags": [[]] * 24})
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "timezone": ["Asia/Shanghai"],
    ...                        "group": ["res"]})
    >>> p = class_load_profiles(local_slots(rows, meters)).collect()
    >>> p.filter(pl.col("slot_minute").is_in([0, 720])).select("share_import",
    ...     "daily_import_kwh").rows()
    [(0.020833333333333332, 48.0), (0.0625, 48.0)]
    """
    day = ("meter_id", "local_date")
    local = local.with_columns(reference_expr().all().over(day).alias("_clean"))
    return _profiles(local, day)


def _profiles(local: pl.LazyFrame, day: str | tuple[str, ...]) -> pl.LazyFrame:
    """:func:`class_load_profiles` of rows with ``_clean`` (their meter-day is clean), ``day``
    naming the meter-day."""
    rows = local.filter(pl.col("_clean"))
    per_day = rows.group_by(day).agg(
        pl.col("group").first(),
        pl.col("day_type").first(),
        *(pl.col(c).sum() for c in CHANNELS),
    )
    level = per_day.group_by("group", "day_type").agg(
        *(pl.col(c).sum().alias(f"_total_{c}") for c in CHANNELS),
        *(pl.col(c).mean().alias(_DAILY[c]) for c in CHANNELS),
    )
    slots = rows.group_by("group", "day_type", "slot_minute").agg(
        pl.col(c).sum().alias(f"_slot_{c}") for c in CHANNELS
    )
    share = {
        c: pl.when(pl.col(f"_total_{c}") > 0).then(pl.col(f"_slot_{c}") / pl.col(f"_total_{c}"))
        for c in CHANNELS
    }
    return (
        slots.join(level, on=["group", "day_type"], how="inner")
        .select(
            "group",
            "day_type",
            pl.col("slot_minute").cast(pl.Int32),
            *(share[c].alias(_SHARE[c]) for c in CHANNELS),
            *(pl.col(_DAILY[c]) for c in CHANNELS),
        )
        .sort("group", "day_type", "slot_minute")
    )


def _like_day_values(
    frame: pl.LazyFrame, work: pl.LazyFrame, rules: EstimationRules
) -> pl.LazyFrame:
    """(_mid, local_date, slot_minute) -> like-day average per channel, for the target days of
    ``work``; ``frame`` holds all intervals with ``_clean``."""
    clean = (
        frame.filter(pl.col("_clean") & _first_of("_day"))
        .select("_mid", pl.col("local_date").alias("_ref_date"), "day_type")
        .unique()
    )
    targets = work.filter(pl.col("_target")).select("_mid", "local_date", "day_type").unique()
    distance = (pl.col("_ref_date") - pl.col("local_date")).dt.total_days().abs()
    chosen = (
        targets.join(clean, on=["_mid", "day_type"], how="inner")
        .with_columns(distance.alias("_dist"))
        .filter(pl.col("_dist") <= rules.like_day_window_days)
        .sort("_mid", "local_date", "_dist", "_ref_date")
        .filter(pl.int_range(pl.len()).over("_mid", "local_date") < rules.like_days)
        .select("_mid", "local_date", "_ref_date")
    )
    reference = frame.select(
        "_mid",
        pl.col("local_date").alias("_ref_date"),
        "slot_minute",
        *(pl.col(c) for c in CHANNELS),
    )
    return (
        chosen.join(reference, on=["_mid", "_ref_date"], how="inner")
        .group_by("_mid", "local_date", "slot_minute")
        .agg(pl.col(c).mean().alias(f"_like_{c}") for c in CHANNELS)
    )


def _register_windows(
    frame: pl.LazyFrame, meter_ids: pl.LazyFrame, register_totals: pl.LazyFrame
) -> pl.LazyFrame:
    """(_row, _win, _wtotal_<channel>): the earliest explicit window holding each interval."""
    windows = register_totals.join(meter_ids, on="meter_id", how="inner").select(
        pl.col("_mid").alias("_wmid"),
        pl.col("window_start").alias("_win"),
        pl.col("window_end").alias("_wend"),
        *(pl.col(c).alias(f"_wtotal_{c}") for c in CHANNELS),
    )
    return (
        frame.select("_row", "_mid", "interval_start")
        .join_where(
            windows,
            pl.col("_mid") == pl.col("_wmid"),
            pl.col("interval_start") >= pl.col("_win"),
            pl.col("interval_start") < pl.col("_wend"),
        )
        .sort("_row", "_win")
        .unique("_row", keep="first")
        .select("_row", "_win", *(f"_wtotal_{c}" for c in CHANNELS))
    )


def estimate_intervals(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    *,
    rules: EstimationRules | None = None,
    holidays: Collection[dt.date] = (),
    register_totals: pl.LazyFrame | None = None,
    class_profiles: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """Fill missing and register-bounded intervals by the methods of the module docstring.

    Parameters
    ----------
    intervals
        One row per meter and grid interval: ``meter_id``, ``interval_start`` (UTC),
        ``interval_minutes``, ``energy_import_kwh`` and ``energy_export_kwh`` [kWh],
        ``status``, ``flags``, ``method``; other columns are kept unchanged.
    meters
        ``meter_id``, ``timezone``, ``group`` (see :func:`local_slots`).
    rules
        Parameters (:class:`EstimationRules` defaults when None).
    holidays
        Local dates of day type ``holiday``.
    register_totals
        Optional explicit register differences: ``meter_id``, ``window_start``,
        ``window_end`` (UTC, end exclusive) and ``energy_import_kwh`` /
        ``energy_export_kwh`` [kWh] (null: that register is not known). All intervals of a
        window sum to it after estimation; the earliest window wins where they overlap.
    class_profiles
        Optional :data:`PROFILE_SCHEMA` rows; computed by :func:`class_load_profiles` from
        ``intervals`` when None (null daily energies are taken from the fleet too).

    Returns
    -------
    pl.LazyFrame
        ``intervals`` with estimated rows set to status ``estimated`` with their ``method``
        and flags, sorted by ``meter_id`` and ``interval_start``; every other row unchanged.

    >>> t = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    >>> rows = pl.LazyFrame({"meter_id": ["m1"] * 6,
    ...     "interval_start": [t + dt.timedelta(minutes=15 * i) for i in range(6)],
    ...     "interval_minutes": [15] * 6,
    ...     "energy_import_kwh": [0.75, None, None, None, None, 1.0],
    ...     "energy_export_kwh": [None] * 6,
    ...     "status": ["actual"] + ["missing"] * 4 + ["actual"],
    ...     "flags": [[]] * 6, "method": [None] * 6})
    >>> meters = pl.DataFrame({"meter_id": ["m1"], "timezone": ["Asia/Shanghai"],
    ...                        "group": ["res"]})
    >>> out = estimate_intervals(rows, meters).collect()
    >>> out["energy_import_kwh"].to_list()
    [0.75, 0.8, 0.85, 0.9, 0.95, 1.0]
    >>> out.row(1)[5:]
    ('estimated', ['estimated_linear'], 'linear')
    """
    rules = rules or EstimationRules()
    columns = intervals.collect_schema().names()
    # All intervals, sorted once; every later step reads this one cached frame. A meter's rows
    # are consecutive, so "per meter" is a shift guarded by ``_mid`` (an integer meter id) and
    # a run of rows is a cumulative sum, not a window over string keys.
    frame = _prepare(intervals, meters, rules, holidays).cache()
    meter_ids = frame.filter(_first_of("_mid")).select("_mid", "meter_id")

    # Only targets and the intervals of register windows are estimated or bound a remainder:
    # a few percent of the rows, on which the per-run and per-window work is done.
    if register_totals is None:
        work = frame.filter(pl.col("_target")).with_columns(
            pl.lit(None, dtype=pl.Datetime("us", "UTC")).alias("_win"),
            *(pl.lit(None, dtype=pl.Float64).alias(f"_wtotal_{c}") for c in CHANNELS),
        )
    else:
        windows = _register_windows(frame, meter_ids, register_totals)
        work = frame.join(windows, on="_row", how="left", maintain_order="left").filter(
            pl.col("_target") | pl.col("_win").is_not_null()
        )
    has_export = frame.group_by("_mid").agg(pl.col(EXPORT).is_not_null().any().alias("_has_export"))
    work = work.join(has_export, on="_mid", how="left", maintain_order="left")

    # 1. linear: the reference neighbours right before and after each run of targets
    k = pl.int_range(1, pl.len() + 1).over("_run")
    n = pl.len().over("_run")
    work = work.with_columns(
        *(
            (
                pl.col(f"_prev_{c}").first().over("_run")
                + (
                    pl.col(f"_next_{c}").last().over("_run")
                    - pl.col(f"_prev_{c}").first().over("_run")
                )
                * k
                / (n + 1)
            )
            .clip(lower_bound=0.0)
            .alias(f"_lin_{c}")
            for c in CHANNELS
        ),
        (n * pl.col("interval_minutes") <= rules.max_linear_gap_h * 60).alias("_short"),
    )

    # 2. like days
    like = _like_day_values(frame, work, rules)
    work = work.join(
        like, on=["_mid", "local_date", "slot_minute"], how="left", maintain_order="left"
    ).with_columns(pl.col(f"_like_{c}").clip(lower_bound=0.0) for c in CHANNELS)

    # 4. class profiles (computed before scaling, which may use their shape)
    fleet = _profiles(frame, "_day")
    if class_profiles is None:
        profiles = fleet
    else:
        profiles = (
            class_profiles.cast(PROFILE_SCHEMA)
            .join(
                fleet.select("group", "day_type", "slot_minute", *_DAILY.values()),
                on=["group", "day_type", "slot_minute"],
                how="left",
                suffix="_fleet",
            )
            .with_columns(pl.col(d).fill_null(pl.col(f"{d}_fleet")) for d in _DAILY.values())
            .select(PROFILE_SCHEMA.names())
        )
    work = work.join(
        profiles.select(
            "group",
            "day_type",
            "slot_minute",
            *(pl.col(_SHARE[c]).clip(lower_bound=0.0).alias(f"_share_{c}") for c in CHANNELS),
            *(pl.col(_DAILY[c]).clip(lower_bound=0.0).alias(f"_daily_{c}") for c in CHANNELS),
        ),
        on=["group", "day_type", "slot_minute"],
        how="left",
        maintain_order="left",
    )

    # 3. scaled: the bounded runs and their remainders
    work = _resolve(_bounded(work))
    new = {c: f"_new_{c}" for c in (*CHANNELS, "status", "flags", "method")}
    updates = work.filter(pl.col("_filled")).select(
        "_row", *(pl.col(c).alias(alias) for c, alias in new.items())
    )
    updated = pl.col("_new_status").is_not_null()
    return (
        frame.join(updates, on="_row", how="left", maintain_order="left")
        .with_columns(
            pl.when(updated).then(pl.col(alias)).otherwise(pl.col(c)).alias(c)
            for c, alias in new.items()
        )
        .select(columns)
    )


def _first_of(key: str) -> pl.Expr:
    """True on the first row of each run of equal ``key`` values."""
    return (pl.col(key) != pl.col(key).shift(1)).fill_null(value=True)


def _prepare(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    rules: EstimationRules,
    holidays: Collection[dt.date],
) -> pl.LazyFrame:
    """All intervals sorted by meter and time, with the row-level columns estimation uses.

    ``_row`` (position), ``_mid`` (meter number), the :func:`local_slots` columns, ``_ref``,
    ``_gapp``, ``_target``, ``_contig`` (the row follows its meter's previous row by one
    interval), ``_run`` / ``_grun`` (runs of equal ``_target`` / ``_gapp`` over contiguous
    rows, numbered over the whole frame), ``_day`` (meter-day key), ``_clean`` (every
    interval of the meter-day is a reference) and the reference neighbours ``_prev_<c>`` and
    ``_next_<c>`` [kWh].
    """
    meta, zones = _meter_columns(meters, rules)
    frame = (
        intervals.sort(*KEY)
        .with_columns(pl.col(c).cast(pl.Float64) for c in CHANNELS)
        .with_row_index("_row")
        .with_columns(
            pl.col("meter_id").rle_id().alias("_mid"), reference_expr().alias("_ref"), *meta
        )
    )
    frame = _with_local(frame, zones, rules, holidays).drop("_tz")
    gap_app = (pl.col("status") == IntervalStatus.ACTUAL.value) & pl.col("flags").list.contains(
        GAP_APPORTIONED
    ).fill_null(value=False)
    step_us = pl.col("interval_minutes").cast(pl.Int64) * 60_000_000
    contiguous = (
        (pl.col("interval_start").diff().dt.total_microseconds() == step_us) & ~_first_of("_mid")
    ).fill_null(value=False)
    frame = frame.with_columns(
        gap_app.alias("_gapp"),
        ((pl.col("status") == IntervalStatus.MISSING.value) | gap_app).alias("_target"),
        contiguous.alias("_contig"),
        # one integer per meter-day: cheaper to group by than (meter, date)
        (pl.col("_mid").cast(pl.Int64) * (1 << 32) + pl.col("local_date").cast(pl.Int64)).alias(
            "_day"
        ),
    )
    return frame.with_columns(
        _run_id("_target").alias("_run"),
        _run_id("_gapp").alias("_grun"),
        pl.col("_ref").all().over("_day").alias("_clean"),
        *(
            pl.when(pl.col("_contig"))
            .then(pl.when(pl.col("_ref")).then(pl.col(c)).shift(1))
            .alias(f"_prev_{c}")
            for c in CHANNELS
        ),
        *(
            pl.when(pl.col("_contig").shift(-1))
            .then(pl.when(pl.col("_ref")).then(pl.col(c)).shift(-1))
            .alias(f"_next_{c}")
            for c in CHANNELS
        ),
    )


def _run_id(flag: str) -> pl.Expr:
    """Numbers the runs of consecutive, contiguous rows with equal ``flag`` (rows sorted by
    meter and time; a meter's first row starts a run)."""
    change = (pl.col(flag) != pl.col(flag).shift(1)) | ~pl.col("_contig")
    return change.fill_null(value=True).cum_sum()


def _bounded(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``_bounded`` (the target lies in a bounded run), per channel its ``_rem_<c>``
    (register total less the known intervals [kWh]) and ``_shape_<c>`` / ``_shape_m_<c>``
    (the shape and the method that made it)."""
    in_window = pl.col("_win").is_not_null()
    # a bounded run: the window, else the run of gap-apportioned intervals
    frame = frame.with_columns(
        (in_window | pl.col("_gapp")).alias("_bounded"),
        pl.when(~in_window & pl.col("_gapp")).then(pl.col("_grun")).alias("_gkey"),
    )
    grp = ("_mid", "_win", "_gkey")
    target = pl.col("_target")
    exprs: list[pl.Expr] = []
    for c in CHANNELS:
        # a non-target interval of the window without energy leaves the remainder unknown
        unknown = (~target & pl.col(c).is_null()).any().over(grp)
        known_sum = pl.when(~unknown).then(pl.when(~target).then(pl.col(c)).sum().over(grp))
        window_rem = pl.col(f"_wtotal_{c}").first().over(grp) - known_sum
        gap_rem = pl.when(target).then(pl.col(c)).sum().over(grp)
        gap_rem = pl.when(pl.col(c).is_null().any().over(grp)).then(None).otherwise(gap_rem)
        rem = pl.when(in_window).then(window_rem).otherwise(gap_rem)
        exprs.append(pl.when(pl.col("_bounded")).then(rem).alias(f"_rem_{c}"))
    frame = frame.with_columns(exprs)

    tgrp = (*grp, "_target")
    shapes: list[pl.Expr] = []
    for c in CHANNELS:
        lin, like, share = pl.col(f"_lin_{c}"), pl.col(f"_like_{c}"), pl.col(f"_share_{c}")
        all_lin = lin.is_not_null().all().over(tgrp)
        all_like = like.is_not_null().all().over(tgrp)
        all_share = share.is_not_null().all().over(tgrp)
        short_ok = pl.col("_short").all().over(tgrp) & all_lin
        choice = (
            pl.when(short_ok)
            .then(pl.lit(EstimationMethod.LINEAR.value))
            .when(all_like)
            .then(pl.lit(EstimationMethod.LIKE_DAY.value))
            .when(all_share)
            .then(pl.lit(EstimationMethod.CLASS_PROFILE.value))
            .when(all_lin)
            .then(pl.lit(EstimationMethod.LINEAR.value))
            .otherwise(pl.lit(EstimationMethod.FLAT.value))
        )
        shapes.append(choice.alias(f"_shape_m_{c}"))
    frame = frame.with_columns(shapes)
    values: list[pl.Expr] = []
    for c in CHANNELS:
        m = pl.col(f"_shape_m_{c}")
        shape = (
            pl.when(m == EstimationMethod.LINEAR.value)
            .then(pl.col(f"_lin_{c}"))
            .when(m == EstimationMethod.LIKE_DAY.value)
            .then(pl.col(f"_like_{c}"))
            .when(m == EstimationMethod.CLASS_PROFILE.value)
            .then(pl.col(f"_share_{c}"))
            .otherwise(pl.lit(1.0))
        )
        total = shape.sum().over(tgrp)
        rem = pl.col(f"_rem_{c}")
        scaled = pl.when(total > 0).then(shape / total * rem).otherwise(rem / pl.len().over(tgrp))
        ok = pl.col("_bounded") & target & rem.is_not_null() & (rem >= 0)
        values.append(pl.when(ok).then(scaled).alias(f"_scaled_{c}"))
    return frame.with_columns(values)


def _resolve(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Pick each target's value per channel, then status, method and flags per row."""
    target = pl.col("_target")
    exprs: list[pl.Expr] = []
    for c in CHANNELS:
        scaled = pl.col(f"_scaled_{c}")
        lin = pl.when(pl.col("_short")).then(pl.col(f"_lin_{c}"))
        like = pl.col(f"_like_{c}")
        cls = pl.col(f"_share_{c}") * pl.col(f"_daily_{c}")
        missing = pl.col("status") == IntervalStatus.MISSING.value
        chain: list[tuple[pl.Expr, str]] = [
            (scaled, EstimationMethod.SCALED.value),
            (pl.when(missing).then(lin), EstimationMethod.LINEAR.value),
            (pl.when(missing).then(like), EstimationMethod.LIKE_DAY.value),
            (pl.when(missing).then(cls), EstimationMethod.CLASS_PROFILE.value),
        ]
        value = pl.coalesce(*(v for v, _ in chain))
        method: pl.Expr = pl.lit(None, dtype=pl.String)
        for v, name in reversed(chain):
            method = pl.when(v.is_not_null()).then(pl.lit(name)).otherwise(method)
        exprs += [
            pl.when(target).then(value).alias(f"_est_{c}"),
            pl.when(target).then(method).alias(f"_m_{c}"),
        ]
    frame = frame.with_columns(exprs)

    need_export = pl.col("_has_export")
    import_ok = pl.col(f"_est_{IMPORT}").is_not_null() | (
        pl.col("_gapp") & pl.col(IMPORT).is_not_null()
    )
    export_ok = (
        ~need_export
        | pl.col(f"_est_{EXPORT}").is_not_null()
        | (pl.col("_gapp") & pl.col(EXPORT).is_not_null())
    )
    any_est = pl.any_horizontal(pl.col(f"_m_{c}").is_not_null() for c in CHANNELS)
    filled = target & import_ok & export_ok & any_est

    new_flags: list[pl.Expr] = []
    for flag in EstimationFlag:
        if flag is EstimationFlag.ESTIMATED_SCALED:
            used = pl.any_horizontal(
                pl.col(f"_m_{c}") == EstimationMethod.SCALED.value for c in CHANNELS
            )
        elif flag is EstimationFlag.SCALING_SKIPPED:
            used = pl.any_horizontal(pl.col(f"_rem_{c}") < 0 for c in CHANNELS)
        else:
            source = next(m for m, f in _FLAG_OF.items() if f is flag)
            used = pl.any_horizontal(
                (pl.col(f"_m_{c}") == source.value)
                | (
                    (pl.col(f"_m_{c}") == EstimationMethod.SCALED.value)
                    & (pl.col(f"_shape_m_{c}") == source.value)
                )
                for c in CHANNELS
            )
        new_flags.append(pl.when(used.fill_null(value=False)).then(pl.lit(flag.value)))
    added = pl.concat_list(new_flags).list.drop_nulls()
    row_method = pl.coalesce(pl.col(f"_m_{IMPORT}"), pl.col(f"_m_{EXPORT}"))

    def energy(c: str) -> pl.Expr:
        keep = pl.col(c) if c == IMPORT else pl.when(need_export).then(pl.col(c))
        return pl.coalesce(pl.col(f"_est_{c}"), pl.when(pl.col("_gapp")).then(keep))

    return frame.with_columns(
        filled.alias("_filled"),
        *(pl.when(filled).then(energy(c)).otherwise(pl.col(c)).alias(c) for c in CHANNELS),
        pl.when(filled)
        .then(pl.lit(IntervalStatus.ESTIMATED.value))
        .otherwise(pl.col("status"))
        .alias("status"),
        pl.when(filled)
        .then(pl.concat_list(pl.col("flags").fill_null([]), added))
        .otherwise(pl.col("flags"))
        .alias("flags"),
        pl.when(filled).then(row_method).otherwise(pl.col("method")).alias("method"),
    )
