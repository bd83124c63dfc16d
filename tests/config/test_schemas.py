"""The column contract: every table is self-consistent and follows the lake's conventions."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterlake.config.schemas import (
    MONEY,
    QUALITY_MEANINGS,
    QUANTITIES,
    TABLES,
    UTC_TS,
    IntervalStatus,
    Quality,
    TableSpec,
    empty_frame,
    is_known_quantity,
    known_quantity,
)

ALL_TABLES = pytest.mark.parametrize("table", list(TABLES.values()), ids=list(TABLES))


@ALL_TABLES
def test_table_keys_name_real_columns(table: TableSpec) -> None:
    columns = set(table.schema)
    assert set(table.dedup_key) <= columns
    assert table.time_column in columns
    assert table.partition_from in columns
    assert TABLES[table.name] is table


@ALL_TABLES
def test_partition_source_has_the_right_type(table: TableSpec) -> None:
    source = table.schema[table.partition_from]
    if table.partition == "period":
        assert source == pl.String
    else:
        # a UTC timestamp, or a local day (analytics are per local day)
        assert source in (UTC_TS, pl.Date)
        assert table.partition not in table.schema, "a derived partition must not be a column"


@ALL_TABLES
def test_every_timestamp_is_utc_microseconds(table: TableSpec) -> None:
    for name, dtype in table.schema.items():
        if isinstance(dtype, pl.Datetime):
            assert dtype == pl.Datetime("us", "UTC"), name


@ALL_TABLES
def test_energy_is_float_kwh_and_money_is_decimal(table: TableSpec) -> None:
    for name, dtype in table.schema.items():
        if name.endswith("_kwh"):
            assert dtype == pl.Float64, name
        if name in ("amount", "total_amount"):
            assert dtype == MONEY, name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name


@ALL_TABLES
def test_empty_frame_has_the_contract(table: TableSpec) -> None:
    frame = empty_frame(table)
    assert frame.height == 0
    assert frame.schema == table.schema


@ALL_TABLES
def test_partition_expr_gives_valid_values(
    table: TableSpec, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    frame = table_sample(table)
    values = frame.select(table.partition_expr())[table.partition_from].to_list()
    source = frame[table.partition_from].to_list()
    for value, raw in zip(values, source, strict=True):
        moment = raw.astimezone(dt.UTC) if isinstance(raw, dt.datetime) else raw
        if table.partition == "date":
            assert value == moment.strftime("%Y-%m-%d")
        elif table.partition == "month":
            assert value == moment.strftime("%Y-%m")
        else:
            assert value == moment


def test_partition_expr_uses_the_utc_day() -> None:
    readings = TABLES["readings"]
    late = dt.datetime(2026, 10, 1, 23, 30, tzinfo=dt.UTC)
    frame = pl.DataFrame({"ts": [late]}, schema={"ts": UTC_TS})
    assert frame.select(readings.partition_expr()).item() == "2026-10-01"


def test_every_quality_flag_is_documented() -> None:
    assert set(QUALITY_MEANINGS) == set(Quality)
    assert all(meaning.strip() for meaning in QUALITY_MEANINGS.values())
    assert Quality.DUPLICATE_CONFLICT.value == "duplicate_conflict"


def test_interval_statuses() -> None:
    assert {s.value for s in IntervalStatus} == {
        "actual",
        "estimated",
        "edited",
        "missing",
        "suspect",
    }


def test_quantity_names_end_in_their_unit() -> None:
    suffix = {"kWh": "_kwh", "kvarh": "_kvarh", "W": "_w", "var": "_var", "VA": "_va"}
    suffix |= {"V": "_v", "A": "_a", "Hz": "_hz"}
    for name, unit in QUANTITIES.items():
        if unit in suffix:
            assert name.endswith(suffix[unit]), name


@pytest.mark.parametrize(
    ("name", "known"),
    [
        ("energy_import_kwh", True),
        ("energy_import_t1_kwh", True),
        ("energy_export_t12_kwh", True),
        ("energy_import_t0_kwh", False),
        ("energy_import_t100_kwh", False),
        ("energy_import_t1_wh", False),
        ("kwh", False),
        ("power_w ", False),
        ("", False),
        ("balance", True),
    ],
)
def test_is_known_quantity(name: str, known: bool) -> None:
    assert is_known_quantity(name) is known


@given(
    st.sampled_from(list(QUANTITIES))
    | st.from_regex(r"energy_(import|export)_t[0-9]{1,3}_kwh\n?", fullmatch=True)
    | st.text(max_size=25)
)
def test_quantity_expression_agrees_with_python(name: str) -> None:
    frame = pl.DataFrame({"quantity": [name, None]}, schema={"quantity": pl.String})
    assert frame.select(known_quantity())["quantity"].to_list() == [
        is_known_quantity(name),
        False,
    ]
