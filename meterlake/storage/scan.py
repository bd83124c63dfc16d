"""Lazy scans of lake tables with partition pruning.

Pruning happens before any file is opened: the partition directories are chosen by name from the
requested time range, and only their files are handed to Polars. A query for one day never opens
another day's files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from meterlake.config.schemas import METERS, TableSpec
from meterlake.storage.layout import list_partitions, partition_files


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
    lo, hi = partition_bounds(table, start, end)
    files: list[Path] = []
    for value in list_partitions(root, table):
        if (lo is None or value >= lo) and (hi is None or value <= hi):
            files.extend(partition_files(root, table, value))
    return files


def scan_files(files: list[Path], table: TableSpec) -> pl.LazyFrame:
    """A lazy frame over ``files`` with ``table``'s columns (empty when there are none)."""
    if not files:
        return pl.LazyFrame(schema=table.schema)
    return pl.scan_parquet(files, schema=table.schema, hive_partitioning=False)


def scan(
    root: Path, table: TableSpec, start: dt.datetime | None = None, end: dt.datetime | None = None
) -> pl.LazyFrame:
    """Rows of ``table`` whose time column lies in ``[start, end)``; open bounds when ``None``.

    Only the partitions that can hold such rows are read; the rows are then filtered exactly.
    Tables partitioned by billing ``period`` are not range-pruned (pass no bounds).
    """
    if table.partition == "period" and (start is not None or end is not None):
        raise ValueError(f"{table.name} is partitioned by period; scan it without a time range")
    frame = scan_files(files_in_range(root, table, start, end), table)
    col = pl.col(table.time_column)
    if start is not None:
        frame = frame.filter(col >= _utc(start))
    if end is not None:
        frame = frame.filter(col < _utc(end))
    return frame


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} is naive; give scan bounds in UTC or with a time zone")
    return moment.astimezone(dt.UTC)


def scan_current_meters(root: Path) -> pl.LazyFrame:
    """Each meter's current master record: its row of ``meters`` with the latest ``updated_at``
    (what the catalogue's ``meters_current`` view shows)."""
    return (
        scan(root, METERS)
        .sort("updated_at", nulls_last=False)
        .group_by("meter_id", maintain_order=True)
        .last()
    )
