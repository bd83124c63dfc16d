"""Interval versions: only what changed is appended, and re-running writes nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from meterlake.analytics.versions import new_versions
from meterlake.config.schemas import INTERVALS
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import latest_versions, scan
from meterlake.storage.writer import write_table

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
QUARTER = dt.timedelta(minutes=15)


def computed(values: list[float], status: str = "actual", meter: str = "m1") -> pl.LazyFrame:
    n = len(values)
    return pl.LazyFrame(
        {
            "meter_id": [meter] * n,
            "interval_start": [T0 + i * QUARTER for i in range(n)],
            "interval_minutes": [15] * n,
            "energy_import_kwh": values,
            "energy_export_kwh": [0.0] * n,
            "status": [status] * n,
            "flags": [[] for _ in range(n)],
            "method": [None] * n,
        },
        schema={k: v for k, v in INTERVALS.schema.items() if k not in ("version", "run_id")},
    )


def run(lake: Path, frame: pl.LazyFrame, run_id: str) -> pl.DataFrame:
    appended = new_versions(frame, scan(lake, INTERVALS), run_id).collect()
    write_table(lake, INTERVALS, appended)
    return appended


def test_first_run_writes_version_1_then_nothing(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    first = run(lake, computed([0.1, 0.2, 0.3]), "run-1")
    assert first["version"].to_list() == [1, 1, 1]
    assert set(first["run_id"]) == {"run-1"}
    assert run(lake, computed([0.1, 0.2, 0.3]), "run-2").height == 0  # idempotent


def test_only_changed_intervals_get_a_new_version(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    run(lake, computed([0.1, 0.2, 0.3]), "run-1")
    second = run(lake, computed([0.1, 0.25, 0.3]), "run-2")  # a late read corrected one
    assert second["interval_start"].to_list() == [T0 + QUARTER]
    assert second["version"].to_list() == [2]
    third = run(lake, computed([0.1, 0.25, 0.3], status="estimated"), "run-3")  # status only
    assert third["version"].to_list() == [2, 3, 2]
    current = latest_versions(scan(lake, INTERVALS)).sort("interval_start").collect()
    assert current["energy_import_kwh"].to_list() == [0.1, 0.25, 0.3]
    assert current["run_id"].to_list() == ["run-3", "run-3", "run-3"]


def test_float_noise_is_not_a_change(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    run(lake, computed([0.1 + 0.2]), "run-1")
    assert run(lake, computed([0.3]), "run-2").height == 0  # 0.30000000000000004 vs 0.3


def test_null_export_compares_equal_to_null(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    frame = computed([0.1]).with_columns(pl.lit(None, pl.Float64).alias("energy_export_kwh"))
    run(lake, frame, "run-1")
    assert run(lake, frame, "run-2").height == 0


@given(
    st.lists(
        st.lists(st.floats(0, 5, allow_nan=False), min_size=4, max_size=4), min_size=1, max_size=4
    )
)
def test_current_is_always_the_last_computation(runs: list[list[float]]) -> None:
    stored = pl.LazyFrame(schema=INTERVALS.schema)
    for i, values in enumerate(runs):
        appended = new_versions(computed(values), stored, f"run-{i}").collect()
        stored = pl.concat([stored, appended.lazy()])
    current = latest_versions(stored).sort("interval_start").collect()
    got = current["energy_import_kwh"].to_list()
    assert all(abs(a - b) <= 1e-9 for a, b in zip(got, runs[-1], strict=True))
    versions = stored.collect()["version"]
    assert versions.max() <= len(runs)
