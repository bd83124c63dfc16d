"""Compaction: dedup rules, nothing distinct is ever lost, and a crash at any step is harmless."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from meterlake.config.errors import LakeBusyError
from meterlake.config.schemas import INTERVALS, READINGS, TABLES, Quality, TableSpec
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.compaction import (
    JOURNAL_DIR,
    compact_lake,
    compact_partition,
    compaction_lock,
    dedup_readings,
    deduplicate,
    partitions_to_compact,
    recover,
    recover_if_idle,
)
from meterlake.storage.layout import TMP_DIR, list_partitions, partition_files
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table

UTC = dt.UTC
T0 = dt.datetime(2026, 10, 1, tzinfo=UTC)
CONFLICT = Quality.DUPLICATE_CONFLICT.value
KEY = list(READINGS.dedup_key)


def readings(*rows: tuple[Any, ...]) -> pl.DataFrame:
    """Readings from ``(meter, minute, quantity, value, quality, source, received second)``."""
    return pl.DataFrame(
        {
            "meter_id": [r[0] for r in rows],
            "ts": [T0 + dt.timedelta(minutes=r[1]) for r in rows],
            "quantity": [r[2] for r in rows],
            "value": [r[3] for r in rows],
            "quality": [r[4] for r in rows],
            "source": [r[5] for r in rows],
            "received_at": [T0 + dt.timedelta(seconds=r[6]) for r in rows],
        },
        schema=READINGS.schema,
    )


def dedup(frame: pl.DataFrame) -> pl.DataFrame:
    return dedup_readings(frame.lazy()).collect().sort([*KEY, "value"], nulls_last=True)


def query_views(con: duckdb.DuckDBPyConnection, *views: str) -> dict[str, pl.DataFrame]:
    """The rows of each view, sorted, through ``con``."""
    con.execute("SET TimeZone = 'UTC'")
    out = {}
    for view in views:
        frame = con.sql(f"SELECT * FROM {view}").pl()
        sortable = [c for c, t in frame.schema.items() if not isinstance(t, pl.List)]
        out[view] = frame.sort(sortable, nulls_last=True)
    return out


def views_now(lake: Path, *views: str) -> dict[str, pl.DataFrame]:
    """The rows of each view, sorted, through a new read-only connection to the catalogue."""
    con = connect_catalog(lake)
    try:
        return query_views(con, *views)
    finally:
        con.close()


def current(lake: Path, view: str) -> pl.DataFrame:
    return views_now(lake, view)[view]


def distinct_readings(lake: Path) -> pl.DataFrame:
    return (
        scan(lake, READINGS)
        .select(*KEY, "value")
        .unique()
        .sort([*KEY, "value"], nulls_last=True)
        .collect()
    )


# --- dedup rules of readings --------------------------------------------------------------------


def test_exact_duplicates_collapse_to_the_latest_received_copy() -> None:
    frame = readings(
        ("m-1", 0, "power_w", 5.0, [], "mqtt:a", 10),
        ("m-1", 0, "power_w", 5.0, ["estimated"], "mqtt:b", 30),  # latest copy
        ("m-1", 0, "power_w", 5.0, [], "mqtt:a", 10),
        ("m-1", 0, "power_w", 5.0, [], "mqtt:c", 20),
        ("m-1", 15, "power_w", 5.0, [], "mqtt:a", 10),  # another ts: another reading
        ("m-2", 0, "power_w", 5.0, [], "mqtt:a", 10),  # another meter
        ("m-1", 0, "voltage_v", 5.0, [], "mqtt:a", 10),  # another quantity
    )
    out = dedup(frame)
    assert out.height == 4
    kept = out.filter((pl.col("meter_id") == "m-1") & (pl.col("quantity") == "power_w"))
    assert kept.filter(pl.col("ts") == T0).rows() == [
        ("m-1", T0, "power_w", 5.0, ["estimated"], "mqtt:b", T0 + dt.timedelta(seconds=30))
    ]
    assert not out["quality"].list.contains(CONFLICT).any()


def test_latest_copy_ties_are_broken_by_source() -> None:
    frame = readings(
        ("m-1", 0, "power_w", 5.0, [], "gw-a", 10),
        ("m-1", 0, "power_w", 5.0, ["estimated"], "gw-b", 10),
    )
    assert dedup(frame)["source"].to_list() == ["gw-b"]


def test_conflicting_values_are_all_kept_and_flagged() -> None:
    frame = readings(
        ("m-1", 0, "energy_import_kwh", 100.0, [], "gw", 10),
        ("m-1", 0, "energy_import_kwh", 100.5, ["clock_invalid"], "gw", 20),
        ("m-1", 0, "energy_import_kwh", 100.5, [], "gw", 5),  # exact duplicate of a value
        ("m-1", 0, "energy_import_kwh", 99.0, [CONFLICT], "gw", 1),  # already flagged
        ("m-1", 15, "energy_import_kwh", 101.0, [], "gw", 900),  # no conflict
    )
    out = dedup(frame)
    assert out.select("value", "quality").rows() == [
        (99.0, [CONFLICT]),
        (100.0, [CONFLICT]),
        (100.5, ["clock_invalid", CONFLICT]),
        (101.0, []),
    ]
    # the surviving copy of 100.5 is the latest received one
    assert out.filter(pl.col("value") == 100.5)["received_at"].item() == T0 + dt.timedelta(
        seconds=20
    )


def test_conflict_with_null_quality_is_flagged() -> None:
    frame = readings(
        ("m-1", 0, "power_w", 1.0, None, "gw", 10),
        ("m-1", 0, "power_w", 2.0, None, "gw", 20),
    )
    assert dedup(frame)["quality"].to_list() == [[CONFLICT], [CONFLICT]]


def test_null_and_nan_values_are_values() -> None:
    frame = readings(
        ("m-1", 0, "power_w", None, [], "gw", 10),
        ("m-1", 0, "power_w", None, [], "gw", 11),
        ("m-1", 15, "power_w", math.nan, ["invalid_value"], "gw", 10),
        ("m-1", 15, "power_w", math.nan, ["invalid_value"], "gw", 12),
        ("m-1", 30, "power_w", None, [], "gw", 10),
        ("m-1", 30, "power_w", 3.0, [], "gw", 12),
    )
    out = dedup(frame)
    assert out.height == 4
    assert out.filter(pl.col("ts") < T0 + dt.timedelta(minutes=30))["quality"].to_list() == [
        [],
        ["invalid_value"],
    ]
    assert out.filter(pl.col("ts") == T0 + dt.timedelta(minutes=30))["quality"].to_list() == [
        [CONFLICT],
        [CONFLICT],
    ]


@pytest.mark.parametrize("table", [t for t in TABLES.values() if t is not READINGS], ids=str)
def test_other_tables_drop_only_exact_duplicates(
    table: TableSpec, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    sample = table_sample(table)
    # change one column of the first row at a time: each variant differs from it in one place
    variants = []
    for name, dtype in table.schema.items():
        first = sample.head(1)
        if dtype == pl.String:
            variants.append(first.with_columns(pl.lit("changed", dtype).alias(name)))
        elif dtype.is_numeric():
            variants.append(first.with_columns((pl.col(name).fill_null(0) + 1).alias(name)))
    assert variants
    doubled = pl.concat([sample, *variants, sample, variants[0], sample.reverse()])
    out = deduplicate(doubled.lazy(), table).collect()
    expected = pl.concat([sample, *variants]).unique()
    assert out.height == expected.height == sample.height + len(variants)
    assert_frame_equal(out, expected, check_row_order=False)


# --- compacting a partition ---------------------------------------------------------------------


@pytest.fixture
def messy_day(lake: Path) -> Path:
    """One day of readings in three files with exact duplicates and one conflict; the lake."""
    write_table(
        lake,
        READINGS,
        readings(
            ("m-1", 0, "power_w", 1.0, [], "gw", 10),
            ("m-1", 15, "power_w", 2.0, [], "gw", 910),
            ("m-2", 0, "energy_import_kwh", 50.0, [], "gw", 10),
        ),
    )
    write_table(
        lake,
        READINGS,
        readings(
            ("m-1", 0, "power_w", 1.0, [], "gw", 10),  # spool replay: exact duplicate
            ("m-1", 15, "power_w", 2.0, [], "gw", 910),
            ("m-2", 0, "energy_import_kwh", 50.0, [], "gw", 10),
        ),
    )
    write_table(
        lake,
        READINGS,
        readings(
            ("m-2", 0, "energy_import_kwh", 51.0, [], "gw", 3600),  # corrected later: conflict
            ("m-2", 15, "energy_import_kwh", 52.0, [], "gw", 3600),
        ),
    )
    return lake


def test_compact_partition_merges_and_deduplicates(messy_day: Path) -> None:
    lake = messy_day
    inputs = partition_files(lake, READINGS, "2026-10-01")
    refresh_catalog(lake)
    before = current(lake, "readings_current")
    result = compact_partition(lake, READINGS, "2026-10-01")
    assert result is not None
    assert (result.files_in, result.files_out) == (3, 1)
    assert (result.rows_in, result.rows_out, result.conflicts) == (8, 5, 2)
    outputs = partition_files(lake, READINGS, "2026-10-01")
    assert len(outputs) == 1
    assert not set(outputs) & set(inputs)
    assert all(not p.exists() for p in inputs)
    assert list((lake / JOURNAL_DIR).glob("*.json")) == []
    assert list((lake / TMP_DIR).glob("*.part")) == []

    rows = scan(lake, READINGS).collect()
    assert rows.height == 5
    conflicts = rows.filter(pl.col("quality").list.contains(CONFLICT))
    assert sorted(conflicts["value"].to_list()) == [50.0, 51.0]
    # the current view: one row per key, the latest received value, flagged when contested
    after = current(lake, "readings_current")
    assert_frame_equal(after, before)
    picked = after.filter((pl.col("meter_id") == "m-2") & (pl.col("ts") == T0))
    assert picked.select("value", "quality").rows() == [(51.0, [CONFLICT])]
    assert after.height == 4


def test_readings_current_before_compaction_picks_latest(messy_day: Path) -> None:
    refresh_catalog(messy_day)
    cur = current(messy_day, "readings_current")
    assert cur.height == 4
    assert cur.filter(pl.col("meter_id") == "m-2").select("value", "quality").rows() == [
        (51.0, [CONFLICT]),
        (52.0, []),
    ]
    assert current(messy_day, "readings").height == 8


def test_readings_current_flags_conflicts_with_null_quality(lake: Path) -> None:
    write_table(
        lake,
        READINGS,
        readings(
            ("m-1", 0, "power_w", 1.0, None, "gw", 10), ("m-1", 0, "power_w", 2.0, None, "gw", 20)
        ),
    )
    refresh_catalog(lake)
    assert current(lake, "readings_current").select("value", "quality").rows() == [
        (2.0, [CONFLICT])
    ]


def test_readings_current_treats_null_as_a_conflicting_value(lake: Path) -> None:
    write_table(
        lake,
        READINGS,
        readings(
            ("m-1", 0, "power_w", 1.0, [], "gw", 10), ("m-1", 0, "power_w", None, [], "gw", 20)
        ),
    )
    refresh_catalog(lake)
    before = current(lake, "readings_current")
    assert before.select("value", "quality").rows() == [(None, [CONFLICT])]
    assert compact_partition(lake, READINGS, "2026-10-01", min_files=1) is not None
    assert_frame_equal(current(lake, "readings_current"), before)


def test_partition_with_too_few_files_is_skipped(lake: Path) -> None:
    write_table(lake, READINGS, readings(("m-1", 0, "power_w", 1.0, [], "gw", 10)))
    files = partition_files(lake, READINGS, "2026-10-01")
    assert compact_partition(lake, READINGS, "2026-10-01", min_files=2) is None
    assert partition_files(lake, READINGS, "2026-10-01") == files
    assert partitions_to_compact(lake, READINGS, 2) == []
    assert partitions_to_compact(lake, READINGS, 1) == ["2026-10-01"]


def test_target_rows_splits_the_output(
    lake: Path, readings_factory: Callable[..., pl.DataFrame]
) -> None:
    frame = readings_factory(["m-1", "m-2", "m-3"], step=dt.timedelta(minutes=15))  # 576 rows
    write_table(lake, READINGS, frame.head(300))
    write_table(lake, READINGS, frame.tail(276))
    result = compact_partition(lake, READINGS, "2026-10-01", target_rows=100)
    assert result is not None
    assert (result.files_out, result.rows_out) == (6, 576)
    files = partition_files(lake, READINGS, "2026-10-01")
    assert sorted(pl.read_parquet(f).height for f in files) == [76, 100, 100, 100, 100, 100]
    assert_frame_equal(scan(lake, READINGS).collect().sort(KEY), frame.sort(KEY))


def test_compact_lake_compacts_every_table_and_reports_progress(
    lake: Path, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    for table in TABLES.values():
        write_table(lake, table, table_sample(table))
        write_table(lake, table, table_sample(table))
    expected_todo = sum(len(list_partitions(lake, t)) for t in TABLES.values())
    progress = list(compact_lake(lake, list(TABLES.values())))
    assert [total for total, _ in progress] == [expected_todo] * expected_todo
    assert all(result is not None and result.files_in == 2 for _, result in progress)
    for table in TABLES.values():
        assert_frame_equal(
            scan(lake, table).collect(),
            table_sample(table),
            check_row_order=False,
        )
        for value in list_partitions(lake, table):
            assert len(partition_files(lake, table, value)) == 1
    assert list(compact_lake(lake, list(TABLES.values()))) == []


# --- property: compaction never loses a distinct reading ----------------------------------------

VALUES = st.sampled_from([0.0, 1.5, 2.0, 1e9, -3.25, None, math.nan])
QUALITIES = st.sampled_from([[], ["estimated"], None, [CONFLICT], ["clock_invalid", "estimated"]])
ROW = st.tuples(
    st.sampled_from(["m-1", "m-2"]),
    st.sampled_from([0, 15, 30, 24 * 60 + 15]),  # two days
    st.sampled_from(["power_w", "energy_import_kwh"]),
    VALUES,
    QUALITIES,
    st.sampled_from(["gw-1", "gw-2"]),
)


@st.composite
def messy_batches(draw: st.DrawFn) -> list[pl.DataFrame]:
    """Readings with repeats and conflicts, spread over up to four files."""
    facts = draw(st.lists(ROW, min_size=1, max_size=30))
    # each fact was received at its own moment; a replay repeats a row exactly
    received = draw(
        st.lists(st.integers(0, 10_000), min_size=len(facts), max_size=len(facts), unique=True)
    )
    rows = [(*f, r) for f, r in zip(facts, received, strict=True)]
    replays = draw(st.lists(st.sampled_from(rows), max_size=10))
    all_rows = rows + replays
    files = draw(st.lists(st.integers(0, 3), min_size=len(all_rows), max_size=len(all_rows)))
    batches = [
        readings(*[row for row, f in zip(all_rows, files, strict=True) if f == n])
        for n in sorted(set(files))
    ]
    return batches


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(batches=messy_batches())
def test_compaction_keeps_every_distinct_reading(
    tmp_path_factory: pytest.TempPathFactory, batches: list[pl.DataFrame]
) -> None:
    from meterlake.storage.layout import init_lake

    lake = init_lake(tmp_path_factory.mktemp("prop") / "lake")
    for batch in batches:
        write_table(lake, READINGS, batch)
    refresh_catalog(lake)
    distinct_before = distinct_readings(lake)
    con = connect_catalog(lake)  # the views read the files at query time
    try:
        current_before = query_views(con, "readings_current")["readings_current"]
        results = [r for _, r in compact_lake(lake, [READINGS], min_files=1)]
        current_after = query_views(con, "readings_current")["readings_current"]
    finally:
        con.close()
    assert results
    assert all(
        len(partition_files(lake, READINGS, v)) == 1 for v in list_partitions(lake, READINGS)
    )
    assert_frame_equal(distinct_readings(lake), distinct_before)
    assert_frame_equal(current_after, current_before)
    # after compaction the raw table holds exactly one row per distinct reading
    raw = scan(lake, READINGS).collect().sort([*KEY, "value"], nulls_last=True)
    assert raw.height == distinct_before.height
    # and compacting again changes nothing
    list(compact_lake(lake, [READINGS], min_files=1))
    assert_frame_equal(scan(lake, READINGS).collect().sort([*KEY, "value"], nulls_last=True), raw)


# --- crash safety -------------------------------------------------------------------------------

STEPS = ["outputs_written", "journaled", "published", "inputs_removed"]

CRASHING_COMPACTION = """
import os, sys
from pathlib import Path
from meterlake.config.schemas import TABLES
from meterlake.storage.compaction import compact_partition

root, table, value, crash_at = Path(sys.argv[1]), TABLES[sys.argv[2]], sys.argv[3], sys.argv[4]

def hook(step):
    if step == crash_at:
        os._exit(17)  # a real crash: no cleanup, no finally, no atexit

compact_partition(root, table, value, on_step=hook)
sys.exit(3)  # the hook was never called with that step
"""


def write_messy_intervals(lake: Path) -> None:
    """One month of intervals in three files: re-runs, new versions and exact duplicates."""

    def intervals(version: int, run: str, kwh: float) -> pl.DataFrame:
        starts = [T0 + dt.timedelta(minutes=15 * k) for k in range(8)]
        return pl.DataFrame(
            {
                "meter_id": ["m-1"] * 4 + ["m-2"] * 4,
                "interval_start": starts,
                "interval_minutes": [15] * 8,
                "energy_import_kwh": [kwh + k for k in range(8)],
                "energy_export_kwh": [0.0] * 8,
                "status": ["actual"] * 7 + ["estimated"],
                "flags": [[]] * 7 + [["gap_fill_linear"]],
                "method": [None] * 7 + ["linear"],
                "version": [version] * 8,
                "run_id": [run] * 8,
            },
            schema=INTERVALS.schema,
        )

    write_table(lake, INTERVALS, intervals(1, "run-1", 0.25))
    write_table(lake, INTERVALS, intervals(1, "run-1", 0.25))  # the same run, twice
    write_table(lake, INTERVALS, intervals(2, "run-2", 0.5).head(5))  # a newer version of some


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize(
    ("table", "value"),
    [
        pytest.param(READINGS, "2026-10-01", id="readings"),
        pytest.param(INTERVALS, "2026-10", id="intervals"),
    ],
)
def test_crash_at_any_step_keeps_current_views(
    messy_day: Path,
    python_runner: Callable[..., Any],
    table: TableSpec,
    value: str,
    step: str,
) -> None:
    lake = messy_day
    write_messy_intervals(lake)
    refresh_catalog(lake)
    views = ["readings_current", "intervals_current"]
    before = views_now(lake, *views, table.name)
    raw_before = before.pop(table.name)
    inputs = set(partition_files(lake, table, value))
    assert len(inputs) == 3

    crash = python_runner(CRASHING_COMPACTION, str(lake), table.name, value, step, check=False)
    assert crash.returncode == 17, crash.stderr

    journals = list((lake / JOURNAL_DIR).glob("*.json"))
    visible = set(partition_files(lake, table, value))
    if step == "outputs_written":
        assert journals == []
        assert visible == inputs
    else:
        assert len(journals) == 1
        record = json.loads(journals[0].read_text())
        assert sorted(record["inputs"]) == sorted(p.name for p in inputs)
        outputs = {p.parent / name for p in inputs for name in record["outputs"]}
        assert visible == {"journaled": inputs, "published": inputs | outputs}.get(step, outputs)

    # the crashed state, seen through the existing catalogue and through a fresh one
    _same(views_now(lake, *views), before)
    (lake / "catalog.duckdb").unlink()
    with compaction_lock(lake):  # so that the refresh cannot recover first
        refresh_catalog(lake)
    _same(views_now(lake, *views), before)

    with compaction_lock(lake):
        assert recover(lake) == len(journals)
        assert recover(lake) == 0
    assert list((lake / JOURNAL_DIR).glob("*.json")) == []
    final = set(partition_files(lake, table, value))
    after = views_now(lake, *views, table.name)
    raw = after.pop(table.name)
    if step in ("outputs_written", "journaled"):
        assert final == inputs
        assert_frame_equal(raw, raw_before)
    else:
        assert not final & inputs
        assert len(final) == 1
        # no row is there twice any more (readings: only conflicting values share a key)
        same = [*table.dedup_key, "value"] if table is READINGS else list(table.dedup_key)
        assert raw.height == raw.unique(subset=same).height < raw_before.height
    if step == "journaled":
        assert list((lake / TMP_DIR).glob("c-*.part")) == []
    _same(after, before)

    # and a later compaction finishes the job
    list(compact_lake(lake, [table]))
    assert len(partition_files(lake, table, value)) == 1
    _same(views_now(lake, *views), before)


def _same(got: dict[str, pl.DataFrame], expected: dict[str, pl.DataFrame]) -> bool:
    assert got.keys() == expected.keys()
    for view, frame in expected.items():
        assert_frame_equal(got[view], frame)
    return True


def test_second_compactor_is_refused(messy_day: Path) -> None:
    lake = messy_day
    files = partition_files(lake, READINGS, "2026-10-01")
    with compaction_lock(lake):
        with pytest.raises(LakeBusyError, match="another compaction is running"):
            next(compact_lake(lake, [READINGS]))
        with pytest.raises(LakeBusyError), compaction_lock(lake):
            pass
        assert recover_if_idle(lake) == 0
    assert partition_files(lake, READINGS, "2026-10-01") == files
    assert len(list(compact_lake(lake, [READINGS]))) == 1


def test_recover_if_idle_recovers_a_crashed_compaction(
    messy_day: Path, python_runner: Callable[..., Any]
) -> None:
    lake = messy_day
    crash = python_runner(
        CRASHING_COMPACTION, str(lake), "readings", "2026-10-01", "published", check=False
    )
    assert crash.returncode == 17, crash.stderr
    assert len(partition_files(lake, READINGS, "2026-10-01")) == 4
    assert recover_if_idle(lake) == 1
    assert len(partition_files(lake, READINGS, "2026-10-01")) == 1
