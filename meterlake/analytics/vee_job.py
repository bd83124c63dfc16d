"""A VEE job on a lake: what to compute, in meter shards, and the audit row of the run.

Two modes:

range
    ``--from/--to`` (local days of the site) and/or ``--meters``: every interval of those days
    and meters is recomputed; only what changed is appended.
incremental
    no range given: only the days that new data touched. The lake files of ``readings`` and
    ``meter_events`` written since the last incremental run (by file time, with
    :data:`CLOCK_SLACK` of overlap) name the meters and times that got data; each meter's
    window reaches back to its read before the earliest new read and on to its read after
    the latest (a late read in a gap changes the whole gap), widened to whole local days. The
    first incremental run of a lake sees every file, so it is a full run.

Each shard of meters is computed with :data:`CONTEXT` extra days of reads on both sides of its
range, so a re-run of a few days estimates them from the same like days as the run that covered
the whole month (the like-day search looks that far), and their first intervals get their
baseline read. The rows written are only those inside the range (or window).

Every run that appended intervals records itself in ``vee_runs`` (range, meters, rows, and the
time the next incremental run starts from). A run that changed nothing writes nothing at all;
the next incremental run then looks at the same new files again.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import polars as pl

from meterlake.analytics.deltas import REGISTER_QUANTITIES
from meterlake.analytics.estimation import EstimationRules
from meterlake.analytics.vee import VeeRun, daily_history, meter_parameters, vee_versions
from meterlake.config.localtime import local_date, local_midnight
from meterlake.config.schemas import INTERVALS, METER_EVENTS, READINGS, VEE_RUNS, TableSpec
from meterlake.config.settings import Settings
from meterlake.storage.layout import list_partitions, partition_files
from meterlake.storage.scan import latest_versions, scan, scan_current_meters, scan_files
from meterlake.storage.writer import write_table

CLOCK_SLACK: Final = dt.timedelta(minutes=10)
"""Files whose time is this much before the last incremental run are read again: a file
being written while that run listed the lake is not missed."""
NEIGHBOUR_LOOKBACK: Final = dt.timedelta(days=35)
"""How far an incremental run looks for the reads around new reads."""
CONTEXT: Final = dt.timedelta(days=EstimationRules().like_day_window_days + 1)


@dataclass(frozen=True)
class VeeJobResult:
    """What a job did."""

    run_id: str
    mode: str
    meters: int
    """Meters computed."""
    written: pl.DataFrame
    """Interval versions appended (all shards)."""
    start: dt.datetime | None
    end: dt.datetime | None


def run_vee(
    root: Path,
    settings: Settings,
    *,
    run_id: str,
    now: dt.datetime,
    first_day: dt.date | None = None,
    last_day: dt.date | None = None,
    meter_ids: Sequence[str] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> VeeJobResult:
    """Run VEE on the lake at ``root`` (see the module docstring for the two modes).

    Parameters
    ----------
    root, settings
        The lake and the settings (site zone, ``[vee]``).
    run_id, now
        The run's id and its start on the wall clock (UTC): stamped on what it writes, and the
        next incremental run compares lake file times with it.
    first_day, last_day, meter_ids
        A range run's local days (inclusive; default: the first/last read) and meters
        (default: all); all None: an incremental run.
    on_shard
        Called with (shards done, shards) after each shard.
    """
    zone = settings.site.timezone
    incremental = first_day is None and last_day is None and not meter_ids
    if incremental:
        windows = _incremental_windows(root, settings)
    else:
        windows = _range_windows(root, zone, first_day, last_day, meter_ids)
    mode = "incremental" if incremental else "range"
    if windows is None:
        return VeeJobResult(run_id, mode, 0, pl.DataFrame(schema=INTERVALS.schema), None, None)
    ids = windows["meter_id"].unique().sort()
    written = []
    shard = settings.vee.shard_meters
    shards = max(1, -(-ids.len() // shard))
    for i in range(shards):
        part = windows.filter(pl.col("meter_id").is_in(ids.slice(i * shard, shard).implode()))
        if part.height:
            appended = _shard(root, settings, run_id, part)
            write_table(root, INTERVALS, appended)
            written.append(appended)
        if on_shard is not None:
            on_shard(i + 1, shards)
    result = pl.concat(written) if written else pl.DataFrame(schema=INTERVALS.schema)
    start, end = windows["window_start"].min(), windows["window_end"].max()
    assert isinstance(start, dt.datetime)
    assert isinstance(end, dt.datetime)
    record = pl.DataFrame(
        {
            "run_id": [run_id],
            "started_at": [now],
            "mode": [mode],
            "range_start": [start],
            "range_end": [end],
            "meters": [ids.len()],
            "read_watermark": [now],
            "rows_written": [result.height],
        },
        schema=VEE_RUNS.schema,
    )
    if result.height:
        write_table(root, VEE_RUNS, record)
    return VeeJobResult(run_id, mode, ids.len(), result, start, end)


def _shard(root: Path, settings: Settings, run_id: str, windows: pl.DataFrame) -> pl.DataFrame:
    """The interval versions one shard of meters appends."""
    start = windows["window_start"].min()
    end = windows["window_end"].max()
    assert isinstance(start, dt.datetime)
    assert isinstance(end, dt.datetime)
    ids = windows["meter_id"].implode()
    mine = pl.col("meter_id").is_in(ids)
    readings = scan(root, READINGS, start - CONTEXT, end + CONTEXT).filter(
        mine & pl.col("quantity").is_in(REGISTER_QUANTITIES)
    )
    meters = meter_parameters(
        readings, scan_current_meters(root).filter(mine), settings.site.timezone
    )
    past = dt.timedelta(days=settings.vee.history_days)
    history = daily_history(
        latest_versions(scan(root, INTERVALS, start - past, start).filter(mine)), meters
    )
    run = VeeRun(
        run_id=run_id,
        start=start,
        end=end,
        interval_minutes=settings.vee.interval_minutes,
        validation=settings.vee,
    )
    return vee_versions(
        readings,
        scan(root, INTERVALS, start, end).filter(mine),
        meters,
        run,
        events=scan(root, METER_EVENTS).filter(mine),
        history=history,
        windows=windows,
    ).collect()


def _range_windows(
    root: Path,
    zone: str,
    first_day: dt.date | None,
    last_day: dt.date | None,
    meter_ids: Sequence[str] | None,
) -> pl.DataFrame | None:
    """One window per meter: the local days ``first_day..last_day`` of the site."""

    def registers(start: dt.datetime | None = None, end: dt.datetime | None = None) -> pl.LazyFrame:
        reads = scan(root, READINGS, start, end).filter(
            pl.col("quantity").is_in(REGISTER_QUANTITIES)
        )
        return reads.filter(pl.col("meter_id").is_in(list(meter_ids))) if meter_ids else reads

    site = zoneinfo.ZoneInfo(zone)
    if first_day is None or last_day is None:
        bounds = registers().select(pl.col("ts").min().alias("a"), pl.col("ts").max().alias("b"))
        first_ts, last_ts = bounds.collect().row(0)
        if first_ts is None:
            return None
        first_day = first_day or first_ts.astimezone(site).date()
        last_day = last_day or last_ts.astimezone(site).date()
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=site).astimezone(dt.UTC)
    end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), tzinfo=site).astimezone(
        dt.UTC
    )
    ids = registers(start - CONTEXT, end + CONTEXT).select(pl.col("meter_id").unique()).collect()
    if ids.height == 0:
        return None
    return ids.with_columns(
        pl.lit(start).dt.convert_time_zone("UTC").alias("window_start"),
        pl.lit(end).dt.convert_time_zone("UTC").alias("window_end"),
    )


def _new_files(root: Path, table: TableSpec, since: dt.datetime | None) -> list[Path]:
    """Data files of ``table`` whose file time is at or after ``since`` (all when None)."""
    files = [f for v in list_partitions(root, table) for f in partition_files(root, table, v)]
    if since is None:
        return files
    cutoff = (since - CLOCK_SLACK).timestamp()
    return [f for f in files if f.stat().st_mtime >= cutoff]


def _incremental_windows(root: Path, settings: Settings) -> pl.DataFrame | None:
    """Per meter, the whole local days new reads and events touched (see the module docstring)."""
    runs = scan(root, VEE_RUNS).filter(pl.col("mode") == "incremental")
    since = runs.select(pl.col("read_watermark").max()).collect().item()
    read_files = _new_files(root, READINGS, since)
    event_files = _new_files(root, METER_EVENTS, since)
    if not read_files and not event_files:
        return None
    touched = [
        scan_files(read_files, READINGS)
        .filter(pl.col("quantity").is_in(REGISTER_QUANTITIES))
        .select("meter_id", "ts"),
        scan_files(event_files, METER_EVENTS).select("meter_id", "ts"),
    ]
    spans = (
        pl.concat(touched)
        .group_by("meter_id")
        .agg(pl.col("ts").min().alias("lo"), pl.col("ts").max().alias("hi"))
        .collect()
    )
    if spans.height == 0:
        return None
    lo, hi = spans["lo"].min(), spans["hi"].max()
    assert isinstance(lo, dt.datetime)
    assert isinstance(hi, dt.datetime)
    around = (
        scan(root, READINGS, lo - NEIGHBOUR_LOOKBACK, hi + NEIGHBOUR_LOOKBACK)
        .filter(pl.col("quantity").is_in(REGISTER_QUANTITIES))
        .join(spans.lazy(), on="meter_id", how="inner")
        .group_by("meter_id")
        .agg(
            pl.col("ts").filter(pl.col("ts") < pl.col("lo")).max().alias("before"),
            pl.col("ts").filter(pl.col("ts") > pl.col("hi")).min().alias("after"),
        )
    )
    tz = pl.col("timezone")
    zone_of = (
        spans.lazy()
        .select("meter_id")
        .join(scan_current_meters(root).select("meter_id", "timezone"), on="meter_id", how="left")
        .with_columns(tz.fill_null(settings.site.timezone))
        .collect()
    )
    zones = zone_of["timezone"].unique().to_list()
    first = local_date(pl.coalesce("before", "lo"), tz, zones)
    last = local_date(pl.coalesce("after", "hi"), tz, zones)
    return (
        spans.lazy()
        .join(around, on="meter_id", how="left")
        .join(zone_of.lazy(), on="meter_id", how="left")
        .select(
            "meter_id",
            local_midnight(first, tz, zones).alias("window_start"),
            local_midnight(last + dt.timedelta(days=1), tz, zones).alias("window_end"),
        )
        .collect()
    )
