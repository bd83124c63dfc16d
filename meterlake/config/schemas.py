"""The column contract of every lake table, defined once.

Every stored timestamp is UTC (``Datetime("us", "UTC")``); energy is Float64 kWh; money is
Decimal. Column names end in their unit. Each table is hive-partitioned by one key derived from
one of its time columns (``date=YYYY-MM-DD`` or ``month=YYYY-MM``) or carried as a column
(``period=YYYY-MM``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

import polars as pl

from meterlake.config.errors import PermanentError

UTC_TS: Final = pl.Datetime("us", "UTC")
FLAGS: Final = pl.List(pl.String)
MONEY: Final = pl.Decimal(18, 4)
RATE: Final = pl.Decimal(18, 8)

PartitionKind = Literal["date", "month", "period"]


class Quality(StrEnum):
    """Flags a reading may carry in its ``quality`` list (an empty list: a good reading)."""

    CLOCK_INVALID = "clock_invalid"
    TOTAL_UNRELIABLE = "total_unreliable"
    DUPLICATE_CONFLICT = "duplicate_conflict"
    INVALID_VALUE = "invalid_value"
    OUT_OF_RANGE = "out_of_range"
    ESTIMATED = "estimated"


QUALITY_MEANINGS: Final[dict[Quality, str]] = {
    Quality.CLOCK_INVALID: "the device clock was not trusted; ts is the gateway's read time",
    Quality.TOTAL_UNRELIABLE: "the device reported its cumulative total as unreliable",
    Quality.DUPLICATE_CONFLICT: "another reading with the same meter_id, quantity and ts "
    "has a different value",
    Quality.INVALID_VALUE: "the value was NaN or infinite as read; kept, never turned into 0",
    Quality.OUT_OF_RANGE: "the value is outside what the quantity can physically be",
    Quality.ESTIMATED: "the value was not measured but estimated upstream",
}


class IntervalStatus(StrEnum):
    """The ``status`` of an interval."""

    ACTUAL = "actual"
    ESTIMATED = "estimated"
    EDITED = "edited"
    MISSING = "missing"
    SUSPECT = "suspect"


# Canonical quantities and their units. Names end in their unit; per-TOU-register energies follow
# ENERGY_TOU_PATTERN (``energy_import_t1_kwh`` ...).
QUANTITIES: Final[dict[str, str]] = {
    "energy_import_kwh": "kWh",
    "energy_export_kwh": "kWh",
    "energy_reactive_import_kvarh": "kvarh",
    "energy_reactive_export_kvarh": "kvarh",
    "power_w": "W",
    "power_l1_w": "W",
    "power_l2_w": "W",
    "power_l3_w": "W",
    "reactive_power_var": "var",
    "apparent_power_va": "VA",
    "voltage_v": "V",
    "voltage_l1_v": "V",
    "voltage_l2_v": "V",
    "voltage_l3_v": "V",
    "current_a": "A",
    "current_l1_a": "A",
    "current_l2_a": "A",
    "current_l3_a": "A",
    "frequency_hz": "Hz",
    "power_factor": "1",
    "balance": "currency",
}
ENERGY_TOU_PATTERN: Final = r"^energy_(import|export)_t[1-9][0-9]?_kwh$"
_ENERGY_TOU_RE: Final = re.compile(ENERGY_TOU_PATTERN)


def is_known_quantity(name: str) -> bool:
    """True if ``name`` is a canonical quantity.

    >>> is_known_quantity("energy_import_t2_kwh"), is_known_quantity("kwh")
    (True, False)
    """
    return name in QUANTITIES or _ENERGY_TOU_RE.fullmatch(name) is not None


def canonical_unit(quantity: str) -> str:
    """The unit a canonical quantity is stored in.

    >>> canonical_unit("power_w"), canonical_unit("energy_export_t2_kwh")
    ('W', 'kWh')

    Raises
    ------
    PermanentError
        ``quantity`` is not a canonical quantity.
    """
    if quantity in QUANTITIES:
        return QUANTITIES[quantity]
    if _ENERGY_TOU_RE.fullmatch(quantity):
        return "kWh"
    raise PermanentError(f"{quantity!r} is not a canonical quantity (e.g. energy_import_kwh)")


def known_quantity(column: str = "quantity") -> pl.Expr:
    """A boolean expression: true where ``column`` holds a canonical quantity."""
    col = pl.col(column)
    return (col.is_in(list(QUANTITIES)) | col.str.contains(ENERGY_TOU_PATTERN)).fill_null(
        value=False
    )


@dataclass(frozen=True)
class TableSpec:
    """One lake table: its columns, how it is partitioned and what identifies a row.

    Parameters
    ----------
    name
        Directory name under the lake root.
    schema
        The column contract (partition column not included: it lives in the path).
    partition
        The partition key name, as it appears in the path (``date=...``).
    partition_from
        The column the partition value is derived from (a UTC timestamp column), or the column
        that carries it (``period``: a ``YYYY-MM`` string).
    dedup_key
        Columns that identify one fact; rows equal on all columns are exact duplicates.
    time_column
        The column that places a row in time (for ``info`` and range scans).
    """

    name: str
    schema: pl.Schema
    partition: PartitionKind
    partition_from: str
    dedup_key: tuple[str, ...]
    time_column: str

    def partition_expr(self) -> pl.Expr:
        """The expression that computes this table's partition value from a row."""
        col = pl.col(self.partition_from)
        if self.partition == "date":
            return col.dt.strftime("%Y-%m-%d")
        if self.partition == "month":
            return col.dt.strftime("%Y-%m")
        return col


READINGS: Final = TableSpec(
    name="readings",
    schema=pl.Schema(
        {
            "meter_id": pl.String(),
            "ts": UTC_TS,
            "quantity": pl.String(),
            "value": pl.Float64(),
            "quality": FLAGS,
            "source": pl.String(),
            "received_at": UTC_TS,
        }
    ),
    partition="date",
    partition_from="ts",
    dedup_key=("meter_id", "quantity", "ts"),
    time_column="ts",
)

INTERVALS: Final = TableSpec(
    name="intervals",
    schema=pl.Schema(
        {
            "meter_id": pl.String(),
            "interval_start": UTC_TS,
            "interval_minutes": pl.Int16(),
            "energy_import_kwh": pl.Float64(),
            "energy_export_kwh": pl.Float64(),
            "status": pl.String(),
            "flags": FLAGS,
            "method": pl.String(),
            "version": pl.Int32(),
            "run_id": pl.String(),
        }
    ),
    partition="month",
    partition_from="interval_start",
    dedup_key=("meter_id", "interval_start", "version"),
    time_column="interval_start",
)

BILLS: Final = TableSpec(
    name="bills",
    schema=pl.Schema(
        {
            "bill_id": pl.String(),
            "meter_id": pl.String(),
            "account": pl.String(),
            "period": pl.String(),
            "period_start": pl.Date(),
            "period_end": pl.Date(),
            "tariff_id": pl.String(),
            "tariff_version": pl.String(),
            "interval_version": pl.String(),
            "energy_import_kwh": pl.Float64(),
            "energy_export_kwh": pl.Float64(),
            "billed_import_kwh": pl.Float64(),
            "export_carry_kwh": pl.Float64(),
            "estimated_share": pl.Float64(),
            "intervals": pl.Int64(),
            "intervals_estimated": pl.Int64(),
            "intervals_missing": pl.Int64(),
            "total_amount": MONEY,
            "adjustment_amount": MONEY,
            "currency": pl.String(),
            "version": pl.Int32(),
            "supersedes": pl.String(),
            "status": pl.String(),
            "hold_reasons": pl.List(pl.String()),
            "run_id": pl.String(),
            "issued_at": UTC_TS,
        }
    ),
    partition="period",
    partition_from="period",
    dedup_key=("bill_id",),
    time_column="issued_at",
)
"""One row per bill version: a meter's charges for a billing ``period`` (``YYYY-MM``; local dates
``period_start`` to ``period_end`` exclusive). ``bill_id`` hashes meter, period, tariff and its
version, the interval data version and the bill version. A corrected bill is a new row with
``version`` + 1 naming the one it ``supersedes``; ``adjustment_amount`` is its total minus the
superseded total. ``export_carry_kwh`` is the net-metering credit carried to the next period.
``status`` is ``released`` (passed the pre-release checks) or ``held`` for review, with the
``hold_reasons``; a held bill is released by a ``bill_reviews`` row, never by rewriting it."""

BILL_LINES: Final = TableSpec(
    name="bill_lines",
    schema=pl.Schema(
        {
            "line_id": pl.String(),
            "bill_id": pl.String(),
            "period": pl.String(),
            "line_no": pl.Int32(),
            "kind": pl.String(),
            "code": pl.String(),
            "description": pl.String(),
            "quantity": pl.Float64(),
            "unit": pl.String(),
            "rate": RATE,
            "amount": MONEY,
            "currency": pl.String(),
        }
    ),
    partition="period",
    partition_from="period",
    dedup_key=("line_id",),
    time_column="period",
)
"""The lines of a bill, in ``line_no`` order. ``kind`` ``charge`` lines add up to the bill's
``total_amount`` (each ``amount`` is ``quantity x rate`` rounded once); ``adjustment`` lines of a
corrected bill give, per code, the change against the superseded version and add up to its
``adjustment_amount``."""

ALERTS: Final = TableSpec(
    name="alerts",
    schema=pl.Schema(
        {
            "alert_id": pl.String(),
            "rule": pl.String(),
            "severity": pl.String(),
            "meter_id": pl.String(),
            "ts": UTC_TS,
            "state": pl.String(),
            "message": pl.String(),
            "values_json": pl.String(),
        }
    ),
    partition="date",
    partition_from="ts",
    dedup_key=("alert_id", "state", "ts"),
    time_column="ts",
)
"""Alert events: ``state`` ``raised`` (the condition became true), ``renotified`` (still true
after the rule's cooldown) or ``resolved`` (it cleared), at ``ts``. ``alert_id`` is stable for
one rule, meter (or feeder: ``meter_id`` then names the feeder as ``feeder:<name>``) and
occurrence; ``values_json`` holds the figures behind the message."""

ALERT_DELIVERIES: Final = TableSpec(
    name="alert_deliveries",
    schema=pl.Schema(
        {
            "alert_id": pl.String(),
            "state": pl.String(),
            "ts": UTC_TS,
            "sink": pl.String(),
            "delivered_at": UTC_TS,
        }
    ),
    partition="date",
    partition_from="delivered_at",
    dedup_key=("alert_id", "state", "ts", "sink"),
    time_column="delivered_at",
)
"""One row per alert event (``alert_id, state, ts`` of ``alerts``) a sink accepted. An event a
sink has no row for is still to be delivered to it: a sink that is down gets it on a later run."""

TOU_CLASSES: Final = ("peak", "flat", "valley", "critical")
"""The classes a tariff's TOU periods fall into, in the order the usage split shows them: the
``energy_<class>_kwh`` columns of :data:`DAILY_USAGE`."""

DAILY_USAGE: Final = TableSpec(
    name="daily_usage",
    schema=pl.Schema(
        {
            "meter_id": pl.String(),
            "day": pl.Date(),
            "timezone": pl.String(),
            "interval_minutes": pl.Int16(),
            "energy_kwh": pl.Float64(),
            "export_kwh": pl.Float64(),
            "peak_kw": pl.Float64(),
            "min_kw": pl.Float64(),
            "mean_kw": pl.Float64(),
            "load_factor": pl.Float64(),
            "peak_valley_diff_kw": pl.Float64(),
            "peak_valley_ratio": pl.Float64(),
            "base_load_kw": pl.Float64(),
            "energy_peak_kwh": pl.Float64(),
            "energy_flat_kwh": pl.Float64(),
            "energy_valley_kwh": pl.Float64(),
            "energy_critical_kwh": pl.Float64(),
            "intervals": pl.Int32(),
            "intervals_estimated": pl.Int32(),
            "intervals_missing": pl.Int32(),
            "actual_share": pl.Float64(),
            "curve_kw": pl.List(pl.Float64()),
            "profile": pl.Int16(),
            "run_id": pl.String(),
            "computed_at": UTC_TS,
        }
    ),
    partition="month",
    partition_from="day",
    dedup_key=("meter_id", "day", "run_id"),
    time_column="day",
)
"""Per meter and local ``day``: import ``energy_kwh`` and ``export_kwh`` [kWh], demand figures
[kW] from the interval import (``peak_kw``, ``min_kw``, ``mean_kw``, ``base_load_kw`` a low
percentile), ``load_factor`` (mean / peak), ``peak_valley_diff_kw`` and ``peak_valley_ratio``
((peak - min) / peak, 峰谷差率), import per class of the meter's tariff periods, VEE counts,
the day's curve (one mean power [kW] per interval, local order) and its typical-profile cluster.
A later analysis run adds new rows; the ``daily_stats`` view shows each day's latest."""

ANOMALY_SCORES: Final = TableSpec(
    name="anomaly_scores",
    schema=pl.Schema(
        {
            "meter_id": pl.String(),
            "day": pl.Date(),
            "score": pl.Float64(),
            "kinds": pl.List(pl.String()),
            "reasons": pl.List(pl.String()),
            "energy_kwh": pl.Float64(),
            "baseline_kwh": pl.Float64(),
            "robust_z": pl.Float64(),
            "isolation": pl.Float64(),
            "run_id": pl.String(),
            "computed_at": UTC_TS,
        }
    ),
    partition="month",
    partition_from="day",
    dedup_key=("meter_id", "day", "run_id"),
    time_column="day",
)
"""Per meter and local ``day``: an anomaly ``score`` between 0 and 1 (higher: more suspicious),
the ``kinds`` that fired (``surge``, ``drop``, ``sustained_drop``, ``zero_with_voltage``,
``reverse_energy``, ``flat_line``, ``vacant_use``, ``isolation``) with a sentence each in
``reasons``, the day's import against the meter's ``baseline_kwh`` (median of like days),
``robust_z`` ((energy - median) / (1.4826 MAD)) and the IsolationForest ``isolation`` score
(0-1). The ``anomalies`` view shows each day's latest run."""

LOAD_PROFILES: Final = TableSpec(
    name="load_profiles",
    schema=pl.Schema(
        {
            "scope": pl.String(),
            "cluster": pl.Int16(),
            "days": pl.Int64(),
            "share": pl.Float64(),
            "weekday_days": pl.Int64(),
            "weekend_days": pl.Int64(),
            "mean_energy_kwh": pl.Float64(),
            "centroid": pl.List(pl.Float64()),
            "silhouette": pl.Float64(),
            "range_start": pl.Date(),
            "range_end": pl.Date(),
            "run_id": pl.String(),
            "computed_at": UTC_TS,
        }
    ),
    partition="date",
    partition_from="computed_at",
    dedup_key=("scope", "cluster", "run_id"),
    time_column="computed_at",
)
"""Typical daily profiles: k-means clusters of normalised daily curves (``centroid``: mean 1
over the day, 96 points for 15 minutes). ``scope`` ``portfolio`` holds the fleet's clusters (k
chosen by ``silhouette``); ``scope`` = a meter id holds that meter's own mean curve per cluster
its days fall in. ``share`` is the cluster's share of the scope's days."""

TIER_PROGRESS: Final = TableSpec(
    name="tier_progress",
    schema=pl.Schema(
        {
            "meter_id": pl.String(),
            "as_of": pl.Date(),
            "tariff_id": pl.String(),
            "tier_reset": pl.String(),
            "window_start": pl.Date(),
            "window_end": pl.Date(),
            "energy_kwh": pl.Float64(),
            "tier": pl.Int16(),
            "next_threshold_kwh": pl.Float64(),
            "threshold_share": pl.Float64(),
            "daily_kwh": pl.Float64(),
            "projected_crossing": pl.Date(),
            "days_to_crossing": pl.Int32(),
            "run_id": pl.String(),
            "computed_at": UTC_TS,
        }
    ),
    partition="date",
    partition_from="as_of",
    dedup_key=("meter_id", "as_of", "run_id"),
    time_column="as_of",
)
"""Tier progress per meter ``as_of`` a local day: import ``energy_kwh`` counted in the tier
window (``window_start`` to ``window_end`` exclusive: the tier year, month or billing cycle),
the ``tier`` it is in (1 = the first), the ``next_threshold_kwh`` and the share of it used,
recent ``daily_kwh`` and, from it, the ``projected_crossing`` day (null: not within the
window). Meters whose tariff has no tiers have no row."""

BILL_REVIEWS: Final = TableSpec(
    name="bill_reviews",
    schema=pl.Schema(
        {
            "bill_id": pl.String(),
            "period": pl.String(),
            "action": pl.String(),
            "note": pl.String(),
            "reviewer": pl.String(),
            "reviewed_at": UTC_TS,
        }
    ),
    partition="period",
    partition_from="period",
    dedup_key=("bill_id", "action", "reviewed_at"),
    time_column="reviewed_at",
)
"""Review decisions on held bills: ``action`` ``released`` by a person or rule (``reviewer``)
at ``reviewed_at``. A bill issued ``held`` counts as released once it has such a row."""

QUARANTINE: Final = TableSpec(
    name="quarantine",
    schema=pl.Schema(
        {
            "received_at": UTC_TS,
            "source": pl.String(),
            "reason": pl.String(),
            "payload": pl.Binary(),
        }
    ),
    partition="date",
    partition_from="received_at",
    dedup_key=("source", "reason", "payload"),
    time_column="received_at",
)

METERS: Final = TableSpec(
    name="meters",
    schema=pl.Schema(
        {
            "meter_id": pl.String(),
            "account": pl.String(),
            "meter_group": pl.String(),
            "timezone": pl.String(),
            "import_only": pl.Boolean(),
            "max_power_kw": pl.Float64(),
            "wrap_kwh": pl.Float64(),
            "tariff_id": pl.String(),
            "billing_day": pl.Int8(),
            "tier_year_start": pl.String(),
            "pv": pl.Boolean(),
            "prepaid": pl.Boolean(),
            "vacant": pl.Boolean(),
            "feeder": pl.String(),
            "updated_at": UTC_TS,
        }
    ),
    partition="date",
    partition_from="updated_at",
    dedup_key=("meter_id", "updated_at"),
    time_column="updated_at",
)
"""Meter master data, one row per meter and import: the latest ``updated_at`` of a meter is its
current record (``meters_current``). Nulls mean "the default" (see ``meterlake meters import``)."""

METER_EVENTS: Final = TableSpec(
    name="meter_events",
    schema=pl.Schema(
        {
            "meter_id": pl.String(),
            "ts": UTC_TS,
            "kind": pl.String(),
            "note": pl.String(),
            "recorded_at": UTC_TS,
        }
    ),
    partition="date",
    partition_from="ts",
    dedup_key=("meter_id", "ts", "kind"),
    time_column="ts",
)
"""Register restarts a person recorded: ``kind`` ``replacement`` (a new meter under the same id)
or ``reset`` (the register was cleared) at ``ts``; VEE starts a new baseline there."""

VEE_RUNS: Final = TableSpec(
    name="vee_runs",
    schema=pl.Schema(
        {
            "run_id": pl.String(),
            "started_at": UTC_TS,
            "mode": pl.String(),
            "range_start": UTC_TS,
            "range_end": UTC_TS,
            "meters": pl.Int64(),
            "read_watermark": UTC_TS,
            "rows_written": pl.Int64(),
        }
    ),
    partition="date",
    partition_from="started_at",
    dedup_key=("run_id",),
    time_column="started_at",
)
"""One row per VEE run (the audit of ``intervals.run_id``): what it covered and the latest
``received_at`` of the readings it saw, from which the next incremental run starts."""

TABLES: Final[dict[str, TableSpec]] = {
    t.name: t
    for t in (
        READINGS,
        INTERVALS,
        BILLS,
        BILL_LINES,
        ALERTS,
        ALERT_DELIVERIES,
        DAILY_USAGE,
        ANOMALY_SCORES,
        LOAD_PROFILES,
        TIER_PROGRESS,
        BILL_REVIEWS,
        QUARANTINE,
        METERS,
        METER_EVENTS,
        VEE_RUNS,
    )
}


def empty_frame(table: TableSpec) -> pl.DataFrame:
    """An empty frame with ``table``'s columns."""
    return pl.DataFrame(schema=table.schema)
