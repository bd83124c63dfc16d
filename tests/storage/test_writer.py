"""The atomic, partitioned writer: round trips, refusals, crashes and concurrent writers."""

from __future__ import annotations

import datetime as dt
import json
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from meterlake.config.errors import SchemaError, UnsafeIdentifierError
from meterlake.config.schemas import INTERVALS, READINGS, TABLES, TableSpec
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.layout import (
    TMP_DIR,
    list_partitions,
    partition_dir,
    partition_files,
    sweep_tmp,
)
from meterlake.storage.scan import scan
from meterlake.storage.writer import conform, write_table

ALL_TABLES = pytest.mark.parametrize("table", list(TABLES.values()), ids=list(TABLES))
UTC = dt.UTC


def data_files(root: Path) -> list[Path]:
    """Every ``*.parquet`` anywhere under the lake (visible or not)."""
    return sorted(root.rglob("*.parquet"))


def tmp_files(root: Path) -> list[Path]:
    return sorted((root / TMP_DIR).iterdir()) if (root / TMP_DIR).is_dir() else []


def visible_files(root: Path) -> list[Path]:
    """The data files readers see: ``*.parquet`` directly in a valid partition directory."""
    return [
        f
        for table in TABLES.values()
        for value in list_partitions(root, table)
        for f in partition_files(root, table, value)
    ]


def by_key(frame: pl.DataFrame, table: TableSpec) -> pl.DataFrame:
    return frame.sort(list(table.dedup_key))


# --- round trip ---------------------------------------------------------------------------------


@ALL_TABLES
def test_round_trip_through_scan(
    lake: Path, table: TableSpec, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    frame = table_sample(table)
    written = write_table(lake, table, frame)
    expected_parts = frame.select(table.partition_expr().alias("p"))["p"].unique().sort()
    assert len(written) == len(expected_parts) >= 2
    assert list_partitions(lake, table) == expected_parts.to_list()
    assert all(f.parent.parent.name == table.name for f in written)

    back = scan(lake, table).collect()
    assert back.schema == table.schema
    assert_frame_equal(by_key(back, table), by_key(frame, table))


@ALL_TABLES
def test_round_trip_through_the_catalogue(
    lake: Path, table: TableSpec, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    frame = table_sample(table)
    write_table(lake, table, frame)
    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        con.execute("SET TimeZone = 'UTC'")
        columns = ", ".join(table.schema)
        back = con.sql(f"SELECT {columns} FROM {table.name}").pl()
        partitions = con.sql(f"SELECT DISTINCT {table.partition}::VARCHAR FROM {table.name}")
        partition_values = sorted(v for (v,) in partitions.fetchall())
    finally:
        con.close()
    assert back.schema == table.schema
    assert_frame_equal(by_key(back, table), by_key(frame, table))
    assert partition_values == list_partitions(lake, table)


def test_round_trip_of_every_file_with_pyarrow(
    lake: Path, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    """Files are plain Parquet: another reader sees the same rows and UTC timestamps."""
    frame = table_sample(READINGS)
    files = write_table(lake, READINGS, frame)
    arrow = pl.concat([pl.from_arrow(pq.read_table(f)) for f in files])  # type: ignore[misc]
    assert isinstance(arrow, pl.DataFrame)
    assert arrow.schema == READINGS.schema
    assert_frame_equal(by_key(arrow, READINGS), by_key(frame, READINGS))


def test_timestamps_in_another_zone_are_stored_as_utc(
    lake: Path, readings_factory: Callable[..., pl.DataFrame]
) -> None:
    frame = readings_factory(["m-1"], days=1, step=dt.timedelta(hours=6))
    local = frame.with_columns(
        pl.col("ts", "received_at").dt.convert_time_zone("Asia/Shanghai"),
    )
    files = write_table(lake, READINGS, local)
    back = scan(lake, READINGS).collect()
    assert_frame_equal(by_key(back, READINGS), by_key(frame, READINGS))
    # the partition is the UTC day, not the local one (local 08:00 on 10-01 is 00:00 UTC)
    assert {f.parent.name for f in files} == {"date=2026-10-01"}


def test_other_time_units_are_conformed(
    lake: Path, readings_factory: Callable[..., pl.DataFrame]
) -> None:
    frame = readings_factory(["m-1"], days=1, step=dt.timedelta(hours=6))
    nanos = frame.with_columns(pl.col("ts").dt.cast_time_unit("ns"))
    write_table(lake, READINGS, nanos.select(reversed(nanos.columns)))
    assert_frame_equal(by_key(scan(lake, READINGS).collect(), READINGS), frame)


def test_empty_frame_writes_nothing(lake: Path) -> None:
    assert write_table(lake, READINGS, pl.DataFrame(schema=READINGS.schema)) == []
    assert data_files(lake) == []


# --- refusals -----------------------------------------------------------------------------------


def test_naive_timestamps_are_refused(
    lake: Path, readings_factory: Callable[..., pl.DataFrame]
) -> None:
    frame = readings_factory().with_columns(pl.col("ts").dt.replace_time_zone(None))
    with pytest.raises(SchemaError, match=r"readings\.ts: naive timestamps"):
        write_table(lake, READINGS, frame)
    assert data_files(lake) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop("source"), "missing: source"),
        (lambda f: f.with_columns(pl.lit(1).alias("extra")), "unknown: extra"),
        (lambda f: f.with_columns(pl.lit("high").alias("value")), "wrong type"),
        (
            lambda f: f.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.col("ts"))),
            "key columns hold null values: ts",
        ),
        (
            lambda f: f.with_columns(pl.lit(None, pl.String).alias("quantity")),
            "key columns hold null values: quantity",
        ),
    ],
)
def test_frames_that_break_the_contract_are_refused(
    lake: Path,
    readings_factory: Callable[..., pl.DataFrame],
    change: Callable[[pl.DataFrame], pl.DataFrame],
    message: str,
) -> None:
    with pytest.raises(SchemaError, match=message):
        write_table(lake, READINGS, change(readings_factory(days=2)))
    assert data_files(lake) == []
    assert tmp_files(lake) == []


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "x\x00y", "", " lead", "a" * 65, ".."])
def test_unsafe_meter_id_writes_nothing(
    lake: Path, readings_factory: Callable[..., pl.DataFrame], bad_id: str
) -> None:
    frame = readings_factory(["m-1", "m-2", "m-3"], days=3)
    # one bad row, in the last partition, after many good ones
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == pl.len() - 1)
        .then(pl.lit(bad_id))
        .otherwise(pl.col("meter_id"))
        .alias("meter_id")
    )
    with pytest.raises(UnsafeIdentifierError, match="unsafe meter id") as info:
        write_table(lake, READINGS, bad)
    assert repr(bad_id) in str(info.value)
    assert data_files(lake) == []
    assert tmp_files(lake) == []
    assert [p for p in lake.rglob("*") if p.is_dir() and "=" in p.name] == []


def test_null_meter_id_is_refused(lake: Path, table_sample: Callable[..., pl.DataFrame]) -> None:
    bills = table_sample(TABLES["bills"]).with_columns(pl.lit(None, pl.String).alias("meter_id"))
    with pytest.raises(UnsafeIdentifierError):
        write_table(lake, TABLES["bills"], bills)
    assert data_files(lake) == []


def test_unsafe_period_value_writes_nothing(
    lake: Path, table_sample: Callable[..., pl.DataFrame]
) -> None:
    bills = TABLES["bills"]
    frame = table_sample(bills)
    bad = frame.with_columns(
        pl.when(pl.col("bill_id") == frame["bill_id"][-1])
        .then(pl.lit("../2026-10"))
        .otherwise(pl.col("period"))
        .alias("period")
    )
    with pytest.raises(UnsafeIdentifierError, match=r"\.\./2026-10"):
        write_table(lake, bills, bad)
    assert data_files(lake) == []
    assert not (lake.parent / "2026-10").exists()


def test_conform_orders_and_casts_columns(readings_factory: Callable[..., pl.DataFrame]) -> None:
    frame = readings_factory()
    shuffled = frame.select(reversed(frame.columns)).with_columns(pl.col("value").cast(pl.Float32))
    out = conform(shuffled, READINGS)
    assert out.schema == READINGS.schema
    assert_frame_equal(out, frame)


@pytest.mark.parametrize(
    "value",
    ["../2026-10-01", "2026-13-01", "2026-10", "2026-10-01/../../x"],
)
def test_partition_dir_refuses_unsafe_values(lake: Path, value: str) -> None:
    with pytest.raises(UnsafeIdentifierError):
        partition_dir(lake, READINGS, value)
    assert partition_dir(lake, READINGS, "2026-10-01") == lake / "readings" / "date=2026-10-01"
    assert partition_dir(lake, INTERVALS, "2026-10") == lake / "intervals" / "month=2026-10"


# --- failures while writing ---------------------------------------------------------------------


def test_failed_write_leaves_nothing(
    lake: Path, readings_factory: Callable[..., pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that dies half-way publishes nothing and removes its temporary file."""
    real_write = pl.DataFrame.write_parquet
    seen: list[Path] = []

    def write_half_then_fail(self: pl.DataFrame, file: Any, **kwargs: Any) -> None:
        real_write(self, file, **kwargs)
        path = Path(file)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        seen.append(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_table(lake, READINGS, readings_factory())
    assert len(seen) == 1
    assert not seen[0].exists(), "the temporary file was left behind"
    assert seen[0].parent == lake / TMP_DIR
    assert data_files(lake) == []
    assert tmp_files(lake) == []
    assert scan(lake, READINGS).collect().height == 0


def test_failed_publish_leaves_nothing(
    lake: Path, readings_factory: Callable[..., pl.DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    import meterlake.storage.writer as writer_module

    def no_rename(tmp: Path, final: Path) -> None:
        raise PermissionError(13, "Permission denied", str(final))

    monkeypatch.setattr(writer_module, "publish", no_rename)
    with pytest.raises(PermissionError):
        write_table(lake, READINGS, readings_factory())
    assert data_files(lake) == []
    assert tmp_files(lake) == []


WRITER_LOOP = """
import datetime as dt, sys
from pathlib import Path
import numpy as np, polars as pl
from meterlake.storage.writer import write_table
from meterlake.config.schemas import READINGS

root, tag = Path(sys.argv[1]), sys.argv[2]
n = 300_000
rng = np.random.default_rng(7)
start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
frame = pl.select(
    meter_id=pl.format("m-{}", pl.int_range(n) % 997),
    ts=pl.datetime_range(start, start + dt.timedelta(seconds=(n - 1) / 4), "250ms"),
    quantity=pl.lit("power_w"),
    value=pl.Series(rng.normal(1000, 300, n)),
    quality=pl.lit([], dtype=pl.List(pl.String)),
    source=pl.lit(tag),
    received_at=pl.lit(start),
)

# announce each file write, so the test can aim its SIGKILL at one; the write itself is real
real_write = pl.DataFrame.write_parquet
def announced_write(self, file, **kwargs):
    print("writing", flush=True)
    return real_write(self, file, **kwargs)
pl.DataFrame.write_parquet = announced_write

while True:
    write_table(root, READINGS, frame)
"""


def test_killed_writer_leaves_no_partial_file(lake: Path, python_popen: Callable[..., Any]) -> None:
    """SIGKILL a writer in the middle of its loop, several times: readers only see whole files."""
    rng = random.Random(20261001)
    half_written = 0
    for run in range(4):
        proc = python_popen(WRITER_LOOP, str(lake), f"writer-{run}")
        assert proc.stdout is not None
        for _ in range(rng.randint(2, 3)):
            assert proc.stdout.readline().strip() == "writing", proc.stderr and proc.stderr.read()
        # a file of this size takes tens of milliseconds to write
        time.sleep(rng.uniform(0.01, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        left = set((lake / TMP_DIR).glob("*.part"))
        for part in left:
            # what a writer without the rename would have left in the partition
            try:
                pq.read_table(part)
            except pa.ArrowInvalid:
                half_written += 1
        # the dead writer's temporary files are swept; nothing else is touched
        assert set(sweep_tmp(lake)) == left
        assert not list((lake / TMP_DIR).glob("*.part"))

        visible = visible_files(lake)
        assert len(visible) >= run + 1
        rows = 0
        for f in visible:
            table = pq.read_table(f)  # the whole file, every column
            assert table.num_rows == 300_000, f
            rows += table.num_rows
        assert scan(lake, READINGS).select(pl.len()).collect().item() == rows
    # the kills did land in the middle of writes: their unreadable files stayed in .tmp
    assert half_written >= 1
    assert set(data_files(lake)) == set(visible_files(lake))


def test_sweep_keeps_the_temporary_files_of_live_writers(lake: Path) -> None:
    from meterlake.storage.layout import new_file_name, tmp_path

    mine = tmp_path(lake, new_file_name())  # this process is alive
    mine.write_bytes(b"being written")
    foreign = lake / TMP_DIR / "other-host-4242-000001-0123abcd.parquet.part"
    foreign.write_bytes(b"someone else's")
    assert sweep_tmp(lake) == []
    assert mine.exists() and foreign.exists()


CONCURRENT_WRITER = """
import datetime as dt, json, sys, time
from pathlib import Path
import polars as pl
from meterlake.storage.writer import write_table
from meterlake.config.schemas import READINGS

root, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
frames = []
for batch in range(40):
    ts = [start + dt.timedelta(hours=7 * k + batch % 7, minutes=batch) for k in range(12)]
    frames.append(pl.DataFrame(
        {
            "meter_id": [f"m-{k % 3}" for k in range(12)],
            "ts": ts,
            "quantity": "energy_import_kwh",
            "value": [batch * 100.0 + k for k in range(12)],
            "quality": [[]] * 12,
            "source": tag,
            "received_at": [t + dt.timedelta(seconds=1) for t in ts],
        },
        schema=READINGS.schema,
    ))
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
written = []
for frame in frames:
    written += [str(p) for p in write_table(root, READINGS, frame)]
print(json.dumps(written), flush=True)
"""


def test_two_concurrent_writers_lose_nothing(lake: Path, python_popen: Callable[..., Any]) -> None:
    go = lake.parent / "go"
    procs = [python_popen(CONCURRENT_WRITER, str(lake), tag, str(go)) for tag in ("gw-a", "gw-b")]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    reported: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        reported += json.loads(out)

    # every file each writer published is there, none was overwritten by the other
    assert len(reported) == len(set(reported))
    assert sorted(reported) == sorted(str(f) for f in visible_files(lake))
    assert len(list_partitions(lake, READINGS)) == 4

    rows = scan(lake, READINGS).collect()
    assert rows.height == 2 * 40 * 12
    per_writer = rows.group_by("source").agg(
        pl.len(), pl.struct("meter_id", "ts", "value").n_unique().alias("distinct")
    )
    assert sorted(per_writer.rows()) == [("gw-a", 480, 480), ("gw-b", 480, 480)]
    # both wrote identical content: each row of one writer has its twin from the other
    a = rows.filter(pl.col("source") == "gw-a").drop("source").sort("meter_id", "ts", "value")
    b = rows.filter(pl.col("source") == "gw-b").drop("source").sort("meter_id", "ts", "value")
    assert_frame_equal(a, b)
    assert duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{lake}/readings/*/*.parquet')"
    ).fetchall() == [(960,)]
