"""The DuckDB catalogue: a view per table, typed when empty, reference tables, and locking."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from meterlake.config.errors import LakeBusyError
from meterlake.config.schemas import (
    INTERVALS,
    METERS,
    QUALITY_MEANINGS,
    QUANTITIES,
    READINGS,
    TABLES,
    TableSpec,
)
from meterlake.storage.catalog import (
    catalog_path,
    connect_catalog,
    refresh_catalog,
)
from meterlake.storage.writer import write_table

CURRENT_VIEWS = ["readings_current", "intervals_current", "meters_current"]
HIVE_TYPES = {"date": "DATE", "month": "VARCHAR", "period": "VARCHAR"}

HOLD_CATALOG = """
import sys, time
import duckdb

con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
print("holding", flush=True)
time.sleep(60)
"""


def view_columns(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, str]:
    rows = con.sql(f"DESCRIBE {name}").fetchall()
    return {column: type_ for column, type_, *_ in rows}


def duckdb_type(dtype: Any) -> str:
    """The DuckDB type a contract column must have in the catalogue."""
    if isinstance(dtype, pl.Datetime):
        return "TIMESTAMPTZ" if dtype.time_zone else "TIMESTAMP"
    if isinstance(dtype, pl.Decimal):
        return f"DECIMAL({dtype.precision},{dtype.scale})"
    if isinstance(dtype, pl.List):
        return f"{duckdb_type(dtype.inner)}[]"
    simple = {
        pl.String: "VARCHAR",
        pl.Float64: "DOUBLE",
        pl.Int8: "TINYINT",
        pl.Int16: "SMALLINT",
        pl.Int32: "INTEGER",
        pl.Int64: "BIGINT",
        pl.Boolean: "BOOLEAN",
        pl.Date: "DATE",
        pl.Binary: "BLOB",
    }
    return next(name for type_, name in simple.items() if dtype == type_)


def expected_columns(table: TableSpec) -> dict[str, str]:
    columns = {name: duckdb_type(dtype) for name, dtype in table.schema.items()}
    columns.setdefault(table.partition, HIVE_TYPES[table.partition])
    return columns


def normalise(type_: str) -> str:
    return type_.replace(" ", "").replace("TIMESTAMPWITHTIMEZONE", "TIMESTAMPTZ")


def test_refresh_creates_every_view(lake: Path) -> None:
    path = refresh_catalog(lake)
    assert path == catalog_path(lake) == lake / "catalog.duckdb"
    con = duckdb.connect(str(path), read_only=True)
    try:
        views = {name for (name,) in con.sql("SELECT view_name FROM duckdb_views()").fetchall()}
        tables = {name for (name,) in con.sql("SELECT table_name FROM duckdb_tables()").fetchall()}
    finally:
        con.close()
    assert views >= set(TABLES) | set(CURRENT_VIEWS)
    assert tables >= {"quantities", "quality_flags"}


@pytest.mark.parametrize("table", list(TABLES.values()), ids=list(TABLES))
def test_empty_tables_give_typed_empty_views(lake: Path, table: TableSpec) -> None:
    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        assert con.sql(f"SELECT count(*) FROM {table.name}").fetchall() == [(0,)]
        columns = view_columns(con, table.name)
    finally:
        con.close()
    expected = expected_columns(table)
    assert list(columns) == list(expected)
    assert {c: normalise(t) for c, t in columns.items()} == {
        c: normalise(t) for c, t in expected.items()
    }


@pytest.mark.parametrize("table", list(TABLES.values()), ids=list(TABLES))
def test_views_with_files_have_the_same_types(
    lake: Path, table: TableSpec, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    """A view keeps its column types when the table gets its first file."""
    write_table(lake, table, table_sample(table))
    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        columns = view_columns(con, table.name)
    finally:
        con.close()
    expected = expected_columns(table)
    assert {c: normalise(t) for c, t in columns.items()} == {
        c: normalise(t) for c, t in expected.items()
    }


def test_current_views_work_on_an_empty_lake(lake: Path) -> None:
    con = connect_catalog(lake)  # creates the catalogue first
    try:
        for view in CURRENT_VIEWS:
            assert con.sql(f"SELECT count(*) FROM {view}").fetchall() == [(0,)]
    finally:
        con.close()


def test_reference_tables(lake: Path) -> None:
    refresh_catalog(lake)
    refresh_catalog(lake)  # a second refresh replaces, it does not append
    con = connect_catalog(lake)
    try:
        quantities = dict(con.sql("SELECT quantity, unit FROM quantities").fetchall())
        flags = dict(con.sql("SELECT flag, meaning FROM quality_flags").fetchall())
    finally:
        con.close()
    assert quantities == QUANTITIES
    assert flags == {q.value: meaning for q, meaning in QUALITY_MEANINGS.items()}


def test_new_files_show_up_without_a_refresh(
    lake: Path, readings_factory: Callable[..., pl.DataFrame]
) -> None:
    write_table(lake, READINGS, readings_factory(["m-1"]))
    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        assert con.sql("SELECT count(*) FROM readings").fetchall() == [(48,)]
        write_table(lake, READINGS, readings_factory(["m-2"], days=2))
        assert con.sql("SELECT count(*) FROM readings").fetchall() == [(48 + 96,)]
    finally:
        con.close()


def test_a_table_with_its_first_file_appears_after_refresh(
    lake: Path, readings_factory: Callable[..., pl.DataFrame]
) -> None:
    refresh_catalog(lake)
    write_table(lake, READINGS, readings_factory(["m-1"]))
    con = connect_catalog(lake)
    try:
        assert con.sql("SELECT count(*) FROM readings").fetchall() == [(0,)]
    finally:
        con.close()
    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        assert con.sql("SELECT count(*) FROM readings").fetchall() == [(48,)]
    finally:
        con.close()


def test_intervals_current_picks_the_highest_version(lake: Path) -> None:
    t0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)

    def row(version: int, kwh: float) -> dict[str, Any]:
        return {
            "meter_id": "m-1",
            "interval_start": t0,
            "interval_minutes": 15,
            "energy_import_kwh": kwh,
            "energy_export_kwh": 0.0,
            "status": "actual",
            "flags": [],
            "method": None,
            "version": version,
            "run_id": f"run-{version}",
        }

    write_table(lake, INTERVALS, pl.DataFrame([row(1, 0.5), row(3, 0.7)], schema=INTERVALS.schema))
    write_table(lake, INTERVALS, pl.DataFrame([row(2, 0.6)], schema=INTERVALS.schema))
    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        rows = con.sql("SELECT version, energy_import_kwh FROM intervals_current").fetchall()
        everything = con.sql("SELECT count(*) FROM intervals").fetchall()
    finally:
        con.close()
    assert rows == [(3, 0.7)]
    assert everything == [(3,)]


def test_meters_current_is_each_meters_latest_import(lake: Path) -> None:
    t0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)

    def meters(*rows: tuple[str, str, int]) -> pl.DataFrame:
        frame = pl.DataFrame(
            [
                {"meter_id": m, "tariff_id": t, "updated_at": t0 + dt.timedelta(d)}
                for m, t, d in rows
            ]
        )
        return frame.select(
            pl.col(c) if c in frame.columns else pl.lit(None, dtype).alias(c)
            for c, dtype in METERS.schema.items()
        )

    # the newer record of m-1 lands first and in another partition: order must not matter
    write_table(lake, METERS, meters(("m-1", "new", 40)))
    write_table(lake, METERS, meters(("m-1", "old", 0), ("m-2", "b", 0)))
    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        rows = con.sql("SELECT meter_id, tariff_id FROM meters_current ORDER BY 1").fetchall()
    finally:
        con.close()
    assert rows == [("m-1", "new"), ("m-2", "b")]


def test_read_only_connections_read_and_cannot_write(
    lake: Path, readings_factory: Callable[..., pl.DataFrame]
) -> None:
    write_table(lake, READINGS, readings_factory(["m-1"]))
    refresh_catalog(lake)
    first = connect_catalog(lake)
    second = connect_catalog(lake, read_only=True)
    try:
        assert first.sql("SELECT count(*) FROM readings_current").fetchall() == [(48,)]
        assert second.sql("SELECT count(DISTINCT meter_id) FROM readings").fetchall() == [(1,)]
        with pytest.raises(duckdb.Error, match="read-only"):
            first.execute("CREATE TABLE scratch (x INTEGER)")
    finally:
        first.close()
        second.close()


def test_read_only_connection_beside_another_reader_process(
    lake: Path, python_popen: Callable[..., Any]
) -> None:
    path = refresh_catalog(lake)
    reader = python_popen(HOLD_CATALOG, str(path), "ro")
    assert reader.stdout is not None
    assert reader.stdout.readline().strip() == "holding"
    con = connect_catalog(lake)
    try:
        assert con.sql("SELECT count(*) FROM quantities").fetchall() == [(len(QUANTITIES),)]
    finally:
        con.close()


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_refresh_while_another_process_has_the_catalogue_open_is_lake_busy(
    lake: Path, python_popen: Callable[..., Any], mode: str
) -> None:
    """A write connection elsewhere blocks everything; a read-only one (an analyst's shell)
    still blocks a refresh, which needs to write."""
    path = refresh_catalog(lake)
    holder = python_popen(HOLD_CATALOG, str(path), mode)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "holding"

    with pytest.raises(LakeBusyError, match=r"catalog\.duckdb is open in another process"):
        refresh_catalog(lake)
    if mode == "rw":
        with pytest.raises(LakeBusyError, match="try again"):
            connect_catalog(lake)

    holder.kill()
    holder.communicate(timeout=30)
    assert refresh_catalog(lake) == path
    con = connect_catalog(lake)
    try:
        assert con.sql("SELECT count(*) FROM readings").fetchall() == [(0,)]
    finally:
        con.close()
