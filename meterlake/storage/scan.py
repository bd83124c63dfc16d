"""Lazy scans of lake tables with partition pruning.

Pruning happens before any file is opened: the partition directories are chosen by name from the
requested time range, and only their files are handed to Polars. A query for one day never opens
another day's files.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import polars as pl

from meterlake.config.schemas import INTERVALS, METERS, TableSpec
from meterlake.storage.layout import list_partitions, partition_files

INTERVAL_KEY: Final = ("meter_id", "interval_start")
"""The key of an interval; ``version`` tells its versions apart."""


def partition_bounds(
    table: TableSpec, start: dt.datetime | None, end: dt.datetime | None
) -> tuple[str | None, str | None]:
    """The lowest and highest partition values that can hold rows in ``[start, end)`` (UTC).

    >>> from meterlake.config.schemas import READINGS
    >>> utc = dt.timezone.utc
    >>> partition_bounds(READINGS, dt.datetime(2026, 10, 1, tzinfo=utc),
    ...                  dt.datetime(2026, 10, 2, tzinfo=utc))
    ('2026-10-01', '2026-10-01')
    """
    fmt = "%Y-%m-%d" if table.partition == "date" else "%Y-%m"
    lo = _utc(start).strftime(fmt) if start is not None else None
    hi = (_utc(end) - dt.timedelta(microseconds=1)).strftime(fmt) if end is not None else None
    return lo, hi


def files_in_range(
    root: Path, table: TableSpec, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> list[Path]:
    """The data files of the partitions that can hold rows in ``[start, end)``."""
    return [
        path
        for value in _partitions_in_range(root, table, start, end)
        for path in partition_files(root, table, value)
    ]


def _partitions_in_range(
    root: Path, table: TableSpec, start: dt.datetime | None, end: dt.datetime | None
) -> list[str]:
    lo, hi = partition_bounds(table, start, end)
    return [
        value
        for value in list_partitions(root, table)
        if (lo is None or value >= lo) and (hi is None or value <= hi)
    ]


def partition_span(table: TableSpec, value: str) -> tuple[dt.datetime, dt.datetime]:
    """The UTC time ``[start, end)`` that a ``date`` or ``month`` partition holds rows of.

    >>> from meterlake.config.schemas import INTERVALS
    >>> [t.isoformat() for t in partition_span(INTERVALS, "2026-12")]
    ['2026-12-01T00:00:00+00:00', '2027-01-01T00:00:00+00:00']
    """
    if table.partition == "date":
        first = dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC)
        return first, first + dt.timedelta(days=1)
    if table.partition == "month":
        first = dt.datetime.strptime(value, "%Y-%m").replace(tzinfo=dt.UTC)
        year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
        return first, first.replace(year=year, month=month)
    raise ValueError(f"{table.name} is partitioned by {table.partition}, not by time")


def scan_files(files: list[Path], table: TableSpec) -> pl.LazyFrame:
    """A lazy frame over ``files`` with ``table``'s columns (empty when there are none)."""
    if not files:
        return pl.LazyFrame(schema=table.schema)
    return pl.scan_parquet(files, schema=table.schema, hive_partitioning=False)


def scan(
    root: Path, table: TableSpec, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> pl.LazyFrame:
    """Rows of ``table`` whose time column lies in ``[start, end)``; open bounds when ``None``.

    Only the partitions that can hold such rows are read. Rows are filtered exactly, but only
    in the partitions at the ends of the range: a partition holds only rows of its own day or
    month (the writer puts them there), so one wholly inside the range needs no test of every
    row. Tables partitioned by billing ``period`` are not range-pruned (pass no bounds).
    """
    if table.partition == "period" and (start is not None or end is not None):
        raise ValueError(f"{table.name} is partitioned by period; scan it without a time range")
    col = pl.col(table.time_column)
    predicates = []
    if start is not None:
        predicates.append(col >= _utc(start))
    if end is not None:
        predicates.append(col < _utc(end))
    if not predicates:
        return scan_files(files_in_range(root, table), table)
    frames = []
    # partitions in order, in runs that lie wholly inside the range or not
    for inside, values in itertools.groupby(
        _partitions_in_range(root, table, start, end),
        key=lambda value: _wholly_inside(table, value, start, end),
    ):
        files = [path for value in values for path in partition_files(root, table, value)]
        if files:
            frame = scan_files(files, table)
            frames.append(frame if inside else frame.filter(*predicates))
    if len(frames) == 1:
        return frames[0]
    return pl.concat(frames, how="vertical") if frames else scan_files([], table)


def _wholly_inside(
    table: TableSpec, value: str, start: dt.datetime | None, end: dt.datetime | None
) -> bool:
    first, after = partition_span(table, value)
    return (start is None or first >= _utc(start)) and (end is None or after <= _utc(end))


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} is naive; give scan bounds in UTC or with a time zone")
    return moment.astimezone(dt.UTC)


def latest_rows(frame: pl.LazyFrame, key: Sequence[str], order: Sequence[str]) -> pl.LazyFrame:
    """The last row of ``frame`` per ``key`` by ``order`` (nulls first), as the catalogue's
    ``*_current`` views pick it."""
    return frame.sort(list(order), nulls_last=False).group_by(list(key), maintain_order=True).last()


def latest_daily(daily: pl.LazyFrame) -> pl.LazyFrame:
    """The latest row of each (meter, day) by ``computed_at``, then ``run_id``: how the
    catalogue's ``daily_stats`` and ``anomalies`` views pick an analysis run's rows.

    >>> t = dt.datetime(2026, 10, 2, tzinfo=dt.UTC)
    >>> rows = pl.LazyFrame({"meter_id": ["m1", "m1"], "day": [dt.date(2026, 10, 1)] * 2,
    ...                      "computed_at": [t, t + dt.timedelta(hours=1)], "run_id": ["a", "b"],
    ...                      "energy_kwh": [7.0, 7.5]})
    >>> latest_daily(rows).collect()["energy_kwh"].to_list()
    [7.5]
    """
    return latest_rows(daily, ["meter_id", "day"], ["computed_at", "run_id"])


def scan_days(root: Path, table: TableSpec, first: dt.date, end: dt.date) -> pl.LazyFrame:
    """Rows of a table whose time column is a local day (``daily_usage``, ...) from ``first``
    up to ``end`` (exclusive); only the partitions that can hold them are read."""
    if table.schema[table.time_column] != pl.Date():
        raise ValueError(f"{table.name}.{table.time_column} is not a day; use scan()")
    lo = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
    hi = dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC)
    files = files_in_range(root, table, lo, hi)
    return scan_files(files, table).filter(
        pl.col(table.time_column).is_between(first, end, closed="left")
    )


def current_meters(meters: pl.LazyFrame) -> pl.LazyFrame:
    """Each meter's current master record: its row of ``meters`` with the latest ``updated_at``
    (what the catalogue's ``meters_current`` view shows)."""
    return latest_rows(meters, ["meter_id"], ["updated_at"])


def scan_current_meters(root: Path) -> pl.LazyFrame:
    """:func:`current_meters` of the whole of ``meters``."""
    return current_meters(scan(root, METERS))


def latest_versions(intervals: pl.LazyFrame) -> pl.LazyFrame:
    """The highest version of each (meter, interval) -- what ``intervals_current`` shows.

    Most intervals only ever have version 1, so the plan picks the latest of the few keys with
    later versions (a small group-by) and takes every other key's version 1 as it is, instead of
    grouping every row. It relies on the table's dedup key: a (meter, interval, version) is
    stored once (writers append only new versions; compaction removes exact copies).

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    >>> rows = pl.LazyFrame({"meter_id": ["m1", "m1", "m2"], "interval_start": [t, t, t],
    ...                      "version": [1, 2, 1], "energy_import_kwh": [0.5, 0.6, 0.7]})
    >>> latest_versions(rows).collect().sort("meter_id")["energy_import_kwh"].to_list()
    [0.6, 0.7]
    """
    key = list(INTERVAL_KEY)
    later = (
        intervals.filter(pl.col("version") > 1)
        .sort("version")
        .group_by(key, maintain_order=True)
        .last()
    )
    first = intervals.filter(pl.col("version") <= 1).join(later.select(key), on=key, how="anti")
    return pl.concat([first, later], how="vertical")


def scan_current_intervals(
    root: Path, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> pl.LazyFrame:
    """The current version of every interval in ``[start, end)``: :func:`latest_versions`,
    after one cheap look at whether the range holds any later version at all (most ranges do
    not, and then every row is current as it is)."""
    intervals = scan(root, INTERVALS, start, end)
    later = intervals.filter(pl.col("version") > 1).select(INTERVAL_KEY).head(1).collect()
    return latest_versions(intervals) if later.height else intervals


def released_bills(bills: pl.LazyFrame, reviews: pl.LazyFrame) -> pl.LazyFrame:
    """Every bill version once, with its release applied: one row per ``bill_id`` (the first
    copy; copies are exact, the dedup key) and ``released_by``, ``released_at`` of its first
    ``released`` review. A bill issued ``held`` counts as ``released`` once such a review exists.

    >>> t = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    >>> bills = pl.LazyFrame({"bill_id": ["b-1", "b-1", "b-2"], "status": ["held"] * 3})
    >>> reviews = pl.LazyFrame({"bill_id": ["b-2"], "action": ["released"],
    ...     "reviewer": ["li.wei"], "reviewed_at": [t]})
    >>> released_bills(bills, reviews).collect().select("bill_id", "status", "released_by").rows()
    [('b-1', 'held', None), ('b-2', 'released', 'li.wei')]
    """
    return (
        bills.filter(pl.col("bill_id").is_first_distinct())
        .join(bill_releases(reviews), on="bill_id", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("released_at").is_not_null())
            .then(pl.lit("released"))
            .otherwise(pl.col("status"))
            .alias("status")
        )
    )


def current_bill_versions(bills: pl.LazyFrame, reviews: pl.LazyFrame) -> pl.LazyFrame:
    """The highest version of each (meter, period)'s bill, released by reviews: ``bills_current``
    (:func:`latest_rows` of :func:`released_bills`)."""
    return latest_rows(
        released_bills(bills, reviews), ["meter_id", "period"], ["version", "issued_at"]
    )


def open_alerts(events: pl.LazyFrame) -> pl.LazyFrame:
    """Alerts whose latest event is not ``resolved``, with their first event's ``raised_at``:
    ``alerts_open``.

    >>> t = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    >>> events = pl.LazyFrame({"alert_id": ["a", "a", "b"], "state": ["raised", "resolved",
    ...     "raised"], "ts": [t, t + dt.timedelta(hours=1), t]})
    >>> open_alerts(events).collect()["alert_id"].to_list()
    ['b']
    """
    return alert_states(events).filter(pl.col("state") != "resolved")


def alert_states(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per alert: its latest event (by ``ts``, then ``state``, so a ``resolved`` at the
    same instant wins) and its first event's time as ``raised_at``."""
    raised = events.group_by("alert_id").agg(pl.col("ts").min().alias("raised_at"))
    return latest_rows(events, ["alert_id"], ["ts", "state"]).join(raised, on="alert_id")


def bill_releases(reviews: pl.LazyFrame) -> pl.LazyFrame:
    """The first ``released`` review of each bill: ``bill_id, released_by, released_at``."""
    return (
        reviews.filter(pl.col("action") == "released")
        .sort("reviewed_at")
        .group_by("bill_id", maintain_order=True)
        .first()
        .select("bill_id", released_by="reviewer", released_at="reviewed_at")
    )
