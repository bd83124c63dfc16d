"""A tier-progress run: every tiered meter's progress through its tiers on a day, from the
lake's daily figures, appended to ``tier_progress`` (the computation is
:func:`~meterlake.tariffs.usage.tier_progress`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from meterlake.config.schemas import DAILY_USAGE, TIER_PROGRESS
from meterlake.storage.scan import latest_daily, scan_current_meters, scan_days
from meterlake.storage.writer import write_table
from meterlake.tariffs.model import Tariff
from meterlake.tariffs.usage import tier_progress, tier_windows


def run_tier_progress(
    root: Path, tariffs: Mapping[str, Tariff], as_of: dt.date, *, run_id: str, now: dt.datetime
) -> pl.DataFrame:
    """Tier progress of every tiered meter on local day ``as_of``, from the lake's daily
    figures (``daily_stats``: an analysis run must have covered the tier window for the count
    to be whole), appended to ``tier_progress``; returns the rows written."""
    windows = tier_windows(scan_current_meters(root).collect(), tariffs, as_of)
    if windows.height == 0:
        return pl.DataFrame(schema=TIER_PROGRESS.schema)
    first = windows["window_start"].min()
    assert isinstance(first, dt.date)
    daily = latest_daily(
        scan_days(root, DAILY_USAGE, first, as_of + dt.timedelta(days=1)).select(
            "meter_id", "day", "energy_kwh", "computed_at", "run_id"
        )
    ).collect()
    daily = daily.with_columns(pl.col("energy_kwh").fill_null(0.0))
    rows = tier_progress(daily, windows, as_of).with_columns(
        run_id=pl.lit(run_id), computed_at=pl.lit(now.astimezone(dt.UTC))
    )
    rows = rows.select(list(TIER_PROGRESS.schema))
    write_table(root, TIER_PROGRESS, rows)
    return rows
