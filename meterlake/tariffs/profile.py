"""One load profile billed month by month under one tariff (``meterlake bill --load``).

The profile is a CSV with ``timestamp,kwh``: hourly or 15-minute energy, negative kWh is export.
Naive timestamps are the tariff's local time (a time that local time skips or repeats at a DST
change is refused or taken as its first occurrence); timestamps with an offset are taken as given.
It goes through the same engine as the lake's bill runs, as the intervals of one meter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import polars as pl

from meterlake.config.errors import InputFileError
from meterlake.tariffs.engine import compute_bills
from meterlake.tariffs.model import Tariff

METER: Final = "load"
"""The meter id the profile is billed under."""
_GROUPS: Final = {
    "energy_charge": ("energy",),
    "demand_charge": ("demand",),
    "fixed_charge": ("fixed",),
    "minimum_charge_adjustment": ("min_adjustment",),
    "levies": ("levy",),
    "export_credit": ("export_credit", "export_true_up"),
    "tax": ("tax",),
}
"""Summary fields of a month and the line codes (prefixes) they add up."""


def read_load_profile(path: Path, tariff: Tariff) -> pl.DataFrame:
    """The CSV's rows as intervals of meter ``load`` in UTC.

    Raises
    ------
    InputFileError
        The file cannot be read, lacks ``timestamp``/``kwh``, has unparseable or repeated
        timestamps, a non-finite kWh, steps that are not one fixed 5/15/30/60-minute grid, or a
        naive local time that the tariff's zone skips.
    """
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputFileError(f"{path}: cannot read the load profile: {exc}") from exc
    missing = {"timestamp", "kwh"} - set(raw.columns)
    if missing:
        raise InputFileError(
            f"{path}: a load profile needs the columns timestamp,kwh; missing {sorted(missing)}"
        )
    frame = raw.select(
        pl.col("timestamp").str.strip_chars(),
        pl.col("kwh").str.strip_chars().cast(pl.Float64, strict=False).alias("kwh"),
        pl.col("kwh").alias("kwh_text"),
    ).with_row_index("row", offset=2)
    bad_kwh = frame.filter(pl.col("kwh").is_null() | ~pl.col("kwh").is_finite())
    if bad_kwh.height:
        row = bad_kwh.row(0, named=True)
        raise InputFileError(f"{path}:{row['row']}: kwh {row['kwh_text']!r} is not a number")
    starts = _utc_starts(frame, tariff, path)
    frame = frame.with_columns(interval_start=starts).sort("interval_start")
    repeated = frame.filter(pl.col("interval_start").is_duplicated())
    if repeated.height:
        raise InputFileError(
            f"{path}:{repeated['row'][0]}: timestamp {repeated['timestamp'][0]} is given twice"
        )
    minutes = _interval_minutes(frame, tariff, path)
    return frame.select(
        pl.lit(METER).alias("meter_id"),
        "interval_start",
        pl.lit(minutes, dtype=pl.Int32).alias("interval_minutes"),
        pl.col("kwh").clip(lower_bound=0.0).alias("energy_import_kwh"),
        (-pl.col("kwh")).clip(lower_bound=0.0).alias("energy_export_kwh"),
        pl.lit("actual").alias("status"),
    )


def _utc_starts(frame: pl.DataFrame, tariff: Tariff, path: Path) -> pl.Series:
    text = frame["timestamp"]
    aware = text.str.contains(r"(Z|[+-]\d{2}:?\d{2})$")
    if aware.all():
        parsed = text.str.to_datetime(time_unit="us", strict=False, time_zone="UTC")
    elif not aware.any():
        naive = text.str.to_datetime(time_unit="us", strict=False)
        parsed = naive.dt.replace_time_zone(
            tariff.timezone, ambiguous="earliest", non_existent="null"
        ).dt.convert_time_zone("UTC")
        skipped = frame.filter(naive.is_not_null() & parsed.is_null())
        if skipped.height:
            raise InputFileError(
                f"{path}:{skipped['row'][0]}: {skipped['timestamp'][0]} does not exist in "
                f"{tariff.timezone} (a DST change skips it); give timestamps with an offset"
            )
    else:
        raise InputFileError(f"{path}: mix of timestamps with and without a UTC offset")
    unparsed = frame.filter(parsed.is_null())
    if unparsed.height:
        raise InputFileError(
            f"{path}:{unparsed['row'][0]}: timestamp {unparsed['timestamp'][0]!r} is not a date "
            "and time such as 2018-01-01 00:00"
        )
    return parsed


def _interval_minutes(frame: pl.DataFrame, tariff: Tariff, path: Path) -> int:
    steps = frame["interval_start"].diff().drop_nulls().dt.total_minutes()
    if steps.is_empty():
        raise InputFileError(f"{path}: a load profile needs at least two rows")
    minutes = int(steps.min())  # type: ignore[arg-type]
    if minutes not in (5, 15, 30, 60):
        raise InputFileError(
            f"{path}: rows are {minutes} minutes apart; use 5, 15, 30 or 60-minute energy"
        )
    # on the grid of local clock time: an hourly profile in a UTC+05:30 zone starts at :30 UTC
    local = pl.col("interval_start").dt.convert_time_zone(tariff.timezone)
    off_grid = frame.filter(
        (local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute()) % minutes != 0
    )
    if off_grid.height:
        raise InputFileError(
            f"{path}:{off_grid['row'][0]}: {off_grid['timestamp'][0]} is not on the "
            f"{minutes}-minute grid"
        )
    return minutes


def bill_load_profile(intervals: pl.DataFrame, tariff: Tariff) -> dict[str, Any]:
    """Every month the profile touches, billed under ``tariff`` (calendar months, local time)."""
    local = intervals["interval_start"].dt.convert_time_zone(tariff.timezone)
    periods = sorted(local.dt.strftime("%Y-%m").unique())
    meters = pl.DataFrame({"meter_id": [METER], "tariff_id": [tariff.id]})
    frames = compute_bills(intervals.lazy(), meters, {tariff.id: tariff}, periods)
    months = []
    for bill in frames.bills.iter_rows(named=True):
        lines = frames.lines.filter(pl.col("period") == bill["period"])
        month: dict[str, Any] = {"month": bill["period"]}
        for field, prefixes in _GROUPS.items():
            picked = lines.filter(
                pl.any_horizontal(pl.col("code").str.starts_with(p) for p in prefixes)
            )
            month[field] = float(picked["amount"].sum())
        month["total"] = float(bill["total_amount"])
        month["energy_import_kwh"] = round(bill["energy_import_kwh"], 6)
        month["energy_export_kwh"] = round(bill["energy_export_kwh"], 6)
        month["lines"] = [
            {**line, "rate": float(line["rate"]), "amount": float(line["amount"])}
            for line in lines.select(
                "kind", "code", "description", "quantity", "unit", "rate", "amount"
            ).iter_rows(named=True)
        ]
        months.append(month)
    total = frames.bills["total_amount"].sum() if frames.bills.height else 0
    return {
        "tariff": tariff.id,
        "tariff_version": tariff.fingerprint,
        "currency": tariff.currency,
        "months": months,
        "total": float(total),
    }
