"""Scans: exact time ranges, and partition pruning that never opens another day's files."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from meterlake.config.schemas import BILLS, INTERVALS, READINGS, TableSpec
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.layout import partition_files
from meterlake.storage.scan import (
    files_in_range,
    latest_versions,
    partition_bounds,
    scan,
    scan_current_intervals,
)
from meterlake.storage.writer import write_table

UTC = dt.UTC
DAY = dt.timedelta(days=1)
T0 = dt.datetime(2026, 10, 1, tzinfo=UTC)
DAYS = ["2026-10-01", "2026-10-02", "2026-10-03", "2026-10-04"]
KEEP = "2026-10-03"


@pytest.fixture
def four_days(lake: Path, readings_factory: Callable[..., pl.DataFrame]) -> pl.DataFrame:
    """Four days of readings in the lake, two files per day; returns what was written."""
    frame = readings_factory(["m-1", "m-2"], days=4, step=dt.timedelta(minutes=30))
    half = frame.height // 2
    write_table(lake, READINGS, frame.head(half))
    write_table(lake, READINGS, frame.tail(frame.height - half))
    assert all(len(partition_files(lake, READINGS, day)) == 2 for day in DAYS)
    return frame


def corrupt_all_days_but(lake: Path, keep: str) -> None:
    for day in DAYS:
        if day != keep:
            for f in partition_files(lake, READINGS, day):
                f.write_bytes(b"not parquet at all " * 50)


def sort_readings(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(list(READINGS.dedup_key))


def test_scan_reads_only_the_requested_day(lake: Path, four_days: pl.DataFrame) -> None:
    corrupt_all_days_but(lake, KEEP)
    start = dt.datetime.fromisoformat(KEEP).replace(tzinfo=UTC)
    got = scan(lake, READINGS, start, start + DAY).collect()
    expected = four_days.filter(pl.col("ts").dt.date() == start.date())
    assert got.height == 2 * 2 * 48
    assert_frame_equal(sort_readings(got), sort_readings(expected))
    with pytest.raises(pl.exceptions.PolarsError):
        scan(lake, READINGS).collect()
    with pytest.raises(pl.exceptions.PolarsError):
        scan(lake, READINGS, start, start + DAY + dt.timedelta(microseconds=1)).collect()


def test_files_in_range_names_only_that_days_files(lake: Path, four_days: pl.DataFrame) -> None:
    start = dt.datetime.fromisoformat(KEEP).replace(tzinfo=UTC)
    files = files_in_range(lake, READINGS, start, start + DAY)
    assert files == partition_files(lake, READINGS, KEEP)
    assert len(files) == 2
    assert len(files_in_range(lake, READINGS)) == 8
    assert files_in_range(lake, READINGS, start) == [
        *partition_files(lake, READINGS, "2026-10-03"),
        *partition_files(lake, READINGS, "2026-10-04"),
    ]
    assert files_in_range(lake, READINGS, None, start) == [
        *partition_files(lake, READINGS, "2026-10-01"),
        *partition_files(lake, READINGS, "2026-10-02"),
    ]


def test_duckdb_prunes_hive_partitions(lake: Path, four_days: pl.DataFrame) -> None:
    """A query on one ``date`` never opens the corrupt files of the other days."""
    refresh_catalog(lake)
    corrupt_all_days_but(lake, KEEP)
    con = connect_catalog(lake)
    try:
        with pytest.raises(duckdb.Error):
            con.sql("SELECT count(*) FROM readings").fetchall()
        rows = con.sql(f"SELECT count(*) FROM readings WHERE date = DATE '{KEEP}'").fetchall()
    finally:
        con.close()
    assert rows == [(2 * 2 * 48,)]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (T0 + dt.timedelta(hours=5), T0 + dt.timedelta(hours=29, minutes=30)),
        (T0 + dt.timedelta(hours=5, minutes=1), T0 + dt.timedelta(hours=5, minutes=31)),
        (T0, T0 + 4 * DAY),
        (T0 - DAY, T0 + dt.timedelta(microseconds=1)),
        (T0 + DAY, T0 + DAY),
        (T0 + 3 * DAY, T0 + DAY),
        (T0 + 10 * DAY, None),
        (None, T0 + dt.timedelta(hours=12)),
    ],
)
def test_scan_range_is_exact_and_half_open(
    lake: Path, four_days: pl.DataFrame, start: dt.datetime | None, end: dt.datetime | None
) -> None:
    got = scan(lake, READINGS, start, end).collect()
    keep = pl.lit(value=True)
    if start is not None:
        keep &= pl.col("ts") >= start
    if end is not None:
        keep &= pl.col("ts") < end
    assert_frame_equal(sort_readings(got), sort_readings(four_days.filter(keep)))


def test_scan_is_exact_at_every_partition_edge(lake: Path, four_days: pl.DataFrame) -> None:
    """Partitions wholly inside the range are read without a row filter, those at its ends with
    one: every pair of bounds on, just before and just after a day's edge gives the rows a
    filter of everything gives."""
    tick = dt.timedelta(microseconds=1)
    edges: list[dt.datetime | None] = [None]
    for day in range(5):
        edges += [T0 + day * DAY - tick, T0 + day * DAY, T0 + day * DAY + tick]
    edges.append(T0 + 2 * DAY + dt.timedelta(hours=7))
    for start in edges:
        for end in edges:
            keep = pl.lit(value=True)
            if start is not None:
                keep &= pl.col("ts") >= start
            if end is not None:
                keep &= pl.col("ts") < end
            got = scan(lake, READINGS, start, end).collect()
            assert_frame_equal(sort_readings(got), sort_readings(four_days.filter(keep)))


def test_scan_bounds_in_a_local_zone(lake: Path, four_days: pl.DataFrame) -> None:
    shanghai = ZoneInfo("Asia/Shanghai")  # UTC+8: the local day 10-02 is 10-01 16:00..10-02 16:00
    start = dt.datetime(2026, 10, 2, tzinfo=shanghai)
    end = dt.datetime(2026, 10, 3, tzinfo=shanghai)
    assert [f.parent.name for f in files_in_range(lake, READINGS, start, end)] == [
        "date=2026-10-01",
        "date=2026-10-01",
        "date=2026-10-02",
        "date=2026-10-02",
    ]
    got = scan(lake, READINGS, start, end).collect()
    assert got.height == 2 * 2 * 48
    assert got["ts"].min() == dt.datetime(2026, 10, 1, 16, tzinfo=UTC)
    assert got["ts"].max() == dt.datetime(2026, 10, 2, 15, 30, tzinfo=UTC)


def test_naive_bounds_are_refused(lake: Path) -> None:
    with pytest.raises(ValueError, match="naive"):
        scan(lake, READINGS, dt.datetime(2026, 10, 1))


def test_period_tables_are_not_range_scanned(lake: Path) -> None:
    with pytest.raises(ValueError, match="partitioned by period"):
        scan(lake, BILLS, T0)
    assert scan(lake, BILLS).collect().schema == BILLS.schema


@pytest.mark.parametrize("table", [READINGS, INTERVALS, BILLS], ids=lambda t: t.name)
def test_scan_of_an_empty_table_is_typed(lake: Path, table: TableSpec) -> None:
    frame = scan(lake, table).collect()
    assert frame.height == 0
    assert frame.schema == table.schema


def test_month_partitions_are_pruned(
    lake: Path, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    intervals = table_sample(INTERVALS)
    write_table(lake, INTERVALS, intervals)
    october = (T0, dt.datetime(2026, 11, 1, tzinfo=UTC))
    files = files_in_range(lake, INTERVALS, *october)
    assert [f.parent.name for f in files] == ["month=2026-10"]
    got = scan(lake, INTERVALS, *october).collect()
    assert_frame_equal(
        got.sort("meter_id", "interval_start"),
        intervals.filter(pl.col("interval_start").dt.month() == 10).sort(
            "meter_id", "interval_start"
        ),
    )


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (T0, T0 + DAY, ("2026-10-01", "2026-10-01")),
        (T0, T0 + DAY + dt.timedelta(microseconds=1), ("2026-10-01", "2026-10-02")),
        (T0 - dt.timedelta(microseconds=1), None, ("2026-09-30", None)),
        (None, None, (None, None)),
    ],
)
def test_partition_bounds(
    start: dt.datetime | None, end: dt.datetime | None, expected: tuple[str | None, str | None]
) -> None:
    assert partition_bounds(READINGS, start, end) == expected


def test_partition_bounds_of_month_tables() -> None:
    assert partition_bounds(INTERVALS, T0, dt.datetime(2027, 1, 1, tzinfo=UTC)) == (
        "2026-10",
        "2026-12",
    )


def _intervals(meter: str, starts: list[dt.datetime], versions: list[int], kwh: list[float]):
    n = len(starts)
    return pl.DataFrame(
        {
            "meter_id": [meter] * n,
            "interval_start": starts,
            "interval_minutes": [15] * n,
            "energy_import_kwh": kwh,
            "energy_export_kwh": [0.0] * n,
            "status": ["actual"] * n,
            "flags": [[] for _ in range(n)],
            "method": [None] * n,
            "version": versions,
            "run_id": [f"run-{v}" for v in versions],
        },
        schema=INTERVALS.schema,
    )


def test_current_intervals_take_each_keys_highest_version(lake: Path) -> None:
    quarter = dt.timedelta(minutes=15)
    starts = [T0, T0 + quarter, T0 + 2 * quarter]
    write_table(lake, INTERVALS, _intervals("m-1", starts, [1, 1, 1], [1.0, 2.0, 3.0]))
    write_table(lake, INTERVALS, _intervals("m-1", starts[1:2], [2], [20.0]))
    write_table(lake, INTERVALS, _intervals("m-1", starts[1:2], [3], [200.0]))
    write_table(lake, INTERVALS, _intervals("m-2", starts[:1], [1], [5.0]))

    current = (
        scan_current_intervals(lake, T0, T0 + DAY).collect().sort("meter_id", "interval_start")
    )

    assert current["energy_import_kwh"].to_list() == [1.0, 200.0, 3.0, 5.0]
    assert current["version"].to_list() == [1, 3, 1, 1]
    assert_frame_equal(current, latest_versions(scan(lake, INTERVALS)).collect().sort(
        "meter_id", "interval_start"))  # fmt: skip


def test_current_intervals_of_a_range_with_only_first_versions_are_the_rows(lake: Path) -> None:
    starts = [T0 + dt.timedelta(minutes=15 * i) for i in range(4)]
    written = _intervals("m-1", starts, [1] * 4, [0.5] * 4)
    write_table(lake, INTERVALS, written)

    current = scan_current_intervals(lake, T0, T0 + DAY).collect().sort("interval_start")

    assert_frame_equal(current, written)
